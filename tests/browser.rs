//! The web page in a real browser: Debian's chromium, headless, driven over W3C WebDriver by
//! chromedriver, against a live daemon. Logs in with a token, searches, opens a recording with
//! DTMF and a pause, plays it to its end through a signed link, seeks and plays on.
//!
//! Skipped with a notice when chromium or chromedriver is not installed, except under `CI`.

mod http;
mod live;

use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use callvault::api::access::{AccessStore, Role, Scope};
use http::{free_port, http, try_http};
use live::{Daemon, Options};
use serde_json::{Value, json};

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|f| f.is_file())
}

/// chromium and chromedriver, or `None` (with a notice) when either is missing outside CI.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    match (on_path("chromium"), on_path("chromedriver")) {
        (Some(b), Some(d)) => Some((b, d)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("the browser test needs chromium and chromedriver: apt-get install chromium chromium-driver")
        }
        _ => {
            eprintln!(
                "skipping the browser test: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// A running chromedriver, in a process group of its own so that the browsers it started go
/// with it when it is killed.
struct Driver {
    child: Option<Child>,
    addr: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Driver {
    fn start(program: &Path) -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let mut d = Driver { child: Some(child), addr: format!("127.0.0.1:{port}"), log, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(&d.addr).is_ok()
                && let Ok(r) = try_http(&d.addr, "GET", "/status", None, &[], None)
                && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["value"]["ready"] == true)
            {
                return d;
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("chromedriver exited at start ({status}): {}", d.log_tail());
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up in 20 s: {}", d.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// One WebDriver command; its `value`, or a panic with WebDriver's error.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = http(&self.addr, method, path, None, &[], body.as_ref());
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!("WebDriver {method} {path}: not JSON ({e}): {}", String::from_utf8_lossy(&r.body))
        });
        if r.status >= 400 {
            panic!("WebDriver {method} {path}: {} {}: {}", r.status, v["value"]["error"], v["value"]["message"]);
        }
        v["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The whole group: chromedriver and any browser it left behind. The `kill` tool
            // keeps the test free of unsafe.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A browser session; ended (the browser quit) when dropped.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl<'a> Browser<'a> {
    fn open(driver: &'a Driver, program: &Path) -> Browser<'a> {
        let profile = driver.dir.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": program,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                    "--mute-audio", "--disable-dev-shm-usage", "--no-first-run", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display())],
            },
            "timeouts": {"script": 20_000, "pageLoad": 20_000, "implicit": 0},
        }}});
        let v = driver.cmd("POST", "/session", Some(caps));
        let session = v["sessionId"].as_str().expect("a session id").to_string();
        Browser { driver, session }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver.cmd(method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element reference for {css}: {v}")).to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({"text": text})));
    }

    /// Runs a function body in the page (a returned promise is awaited).
    fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// Polls `script` until it returns something truthy; panics after `within` with the last
    /// value and what the page showed as an error.
    fn wait(&self, what: &str, script: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.js(script);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(_) => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.js(
                    "return {error: document.querySelector('#error').textContent,
                        whoami: document.querySelector('#whoami').textContent,
                        shown: [...document.querySelectorAll('main > section')].filter(s => !s.hidden).map(s => s.id)}",
                );
                panic!("waited {within:?} for {what}: last {v}; the page: {page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn number(&self, script: &str) -> f64 {
        let v = self.js(script);
        v.as_f64().unwrap_or_else(|| panic!("{script}: {v} is not a number"))
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = try_http(&self.driver.addr, "DELETE", &format!("/session/{}", self.session), None, &[], None);
    }
}

fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x0b0b_0b0bu32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// 150 packets of 20 ms (3 s) of PCMU at real pace, with DTMF (RFC 4733, payload type 101) in
/// place of the audio: `5` from packet 50 (1.0 s) and `9` from packet 100 (2.0 s), three
/// packets each, the end packet sent three times as senders do.
fn send_call(to: (&str, u16)) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    for i in 0..150u16 {
        let event = [(50u16, 5u8), (100, 9)].into_iter().find(|(at, _)| (*at..*at + 3).contains(&i));
        match event {
            Some((at, digit)) => {
                let k = i - at;
                let end = k == 2;
                let mut p = vec![digit, if end { 0x80 } else { 0 } | 10];
                p.extend_from_slice(&(160 * (k + 1)).to_be_bytes());
                let pkt = rtp(101, k == 0, i, u32::from(at) * 160, &p);
                for _ in 0..if end { 3 } else { 1 } {
                    s.send_to(&pkt, to).unwrap();
                }
            }
            None => {
                // A square wave, so that the audio is not silence.
                let payload: Vec<u8> = (0..160).map(|n| if (n / 10) % 2 == 0 { 0x20 } else { 0xa0 }).collect();
                s.send_to(&rtp(0, i == 0, i, u32::from(i) * 160, &payload), to).unwrap();
            }
        }
        let due = start + Duration::from_millis(20 * (u64::from(i) + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Half a second of PCMU on each of a separate-layout call's legs, at real pace.
fn send_legs(ports: &[u16]) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let payload: Vec<u8> = (0..160).map(|n| if (n / 10) % 2 == 0 { 0x20 } else { 0xa0 }).collect();
    for i in 0..25u16 {
        for &port in ports {
            s.send_to(&rtp(0, i == 0, i, u32::from(i) * 160, &payload), ("127.0.0.1", port)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn log_in_search_play_to_the_end_and_seek() {
    let Some((chromium, chromedriver)) = browser_tools() else { return };
    let began = Instant::now();
    let port = free_port();
    let d = Daemon::start(Options {
        // A shorter longest link than the page's usual 15 minutes: the page takes the server's default.
        extra: format!("[storage]\nship = true\n[api]\nlisten = \"127.0.0.1:{port}\"\nlink_max_ttl_s = 600\n"),
        ..Options::default()
    });
    let addr = format!("127.0.0.1:{port}");
    let mut events = d.client().unwrap();
    assert_eq!(events.request(json!({"cmd": "subscribe"}))["ok"], true);
    let mut c = d.client().unwrap();
    let r = c.request(json!({"cmd": "start", "call_id": "web-1", "format": "wav-ulaw", "dtmf_digits": true,
        "metadata": {"queue": "sales", "agent": "alice", "team": "south"},
        "legs": [{"label": "customer", "payload_types": {"0": "PCMU/8000", "101": "telephone-event/8000"}}, {"label": "agent"}]}));
    assert_eq!(r["ok"], true, "{r}");
    let rid = r["recording_id"].as_str().unwrap().to_string();
    let rtp_port = r["legs"][0]["port"].as_u64().unwrap() as u16;
    let sender = std::thread::spawn(move || send_call(("127.0.0.1", rtp_port)));
    // A pause from 2.3 s to 2.7 s, after both digits (DTMF inside a pause is not kept).
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(c.request(json!({"cmd": "pause", "call_id": "web-1", "mode": "mask"}))["ok"], true);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(c.request(json!({"cmd": "resume", "call_id": "web-1"}))["ok"], true);
    sender.join().unwrap();
    let stop = c.request(json!({"cmd": "stop", "call_id": "web-1"}));
    assert_eq!(stop["ok"], true, "{stop}");
    let digits: Vec<&str> =
        stop["legs"][0]["dtmf"].as_array().unwrap().iter().filter_map(|e| e["digit"].as_str()).collect();
    assert_eq!(digits, ["5", "9"], "{stop}");
    let duration_s = stop["duration_ms"].as_f64().unwrap() / 1000.0;
    events.wait_event("recording_stored", Some("web-1"), Duration::from_secs(30));
    // The catalog notes where it landed a moment after the event.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let r = c.request(json!({"cmd": "find", "call_id": "web-1"}));
        if r["recordings"].as_array().is_some_and(|a| a.len() == 1 && !a[0]["stored"].is_null()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A separate-layout call: one audio file per leg.
    let r = c.request(json!({"cmd": "start", "call_id": "web-2", "format": "wav-ulaw", "layout": "separate",
        "metadata": {"queue": "sales"},
        "legs": [{"label": "customer", "payload_types": {"0": "PCMU/8000"}}, {"label": "agent", "payload_types": {"0": "PCMU/8000"}}]}));
    assert_eq!(r["ok"], true, "{r}");
    let ports: Vec<u16> = r["legs"].as_array().unwrap().iter().map(|l| l["port"].as_u64().unwrap() as u16).collect();
    send_legs(&ports);
    assert_eq!(c.request(json!({"cmd": "stop", "call_id": "web-2"}))["ok"], true);
    events.wait_event("recording_stored", Some("web-2"), Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let r = c.request(json!({"cmd": "find", "call_id": "web-2"}));
        if r["recordings"].as_array().is_some_and(|a| a.len() == 1 && !a[0]["stored"].is_null()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let access = AccessStore::open(&d.dir.path().join("data")).unwrap();
    let sales = Scope { all: false, queues: vec!["sales".into()], teams: vec![] };
    access.add_user("sam", Role::Supervisor, sales).unwrap();
    access.add_user("otto", Role::Auditor, Scope::everything()).unwrap();
    let hour = Some(Duration::from_secs(3600));
    let (_, token) = access.create_token("sam", hour, SystemTime::now()).unwrap();
    let (_, auditor) = access.create_token("otto", hour, SystemTime::now()).unwrap();
    access.add_user("ada", Role::Admin, Scope::everything()).unwrap();
    let (_, admin) = access.create_token("ada", hour, SystemTime::now()).unwrap();
    let ready = began.elapsed();

    let driver = Driver::start(&chromedriver);
    let b = Browser::open(&driver, &chromium);
    b.go(&format!("http://{addr}/"));
    b.wait(
        "the page",
        "return document.readyState === 'complete' && !!document.querySelector('#login')",
        Duration::from_secs(10),
    );
    // The page works under its Content-Security-Policy: its style sheet applies, and nothing it
    // does later (markers placed, audio loaded) is refused.
    assert_eq!(b.js("return getComputedStyle(document.querySelector('#markers')).position"), "relative");
    b.js("window.cspRefused = []; document.addEventListener('securitypolicyviolation',
        e => window.cspRefused.push(e.violatedDirective + ' ' + e.blockedURI))");

    // A bad token is refused with the server's reason, and the login form stays.
    b.type_into("#token", "cvt_nope");
    b.click("#login");
    let err = b.wait("the 401 message", "return document.querySelector('#error').textContent", Duration::from_secs(10));
    assert!(err.as_str().unwrap().contains("401"), "{err}");
    assert_eq!(b.js("return document.querySelector('#search-section').hidden"), true);

    b.type_into("#token", &token);
    b.click("#login");
    let who = b.wait("#whoami", "return document.querySelector('#whoami').textContent", Duration::from_secs(10));
    assert!(who.as_str().unwrap().contains("sam") && who.as_str().unwrap().contains("supervisor"), "{who}");
    assert_eq!(b.js("return document.querySelector('#error').hidden"), true, "the old error is gone");
    assert_eq!(b.js("return sessionStorage.getItem('callvault.token') !== null && localStorage.length === 0"), true);
    // A supervisor searches and plays; the audit section is not theirs.
    assert_eq!(b.js("return document.querySelector('#search-section').hidden"), false);
    assert_eq!(b.js("return document.querySelector('#audit').hidden"), true);
    // Logging in lists the newest recordings in scope at once.
    let listed = b.wait(
        "the first page of results",
        "return document.querySelector('#results-note').textContent && [...document.querySelectorAll('#results tr[data-id]')].map(r => r.dataset.id)",
        Duration::from_secs(10),
    );
    assert!(listed.as_array().is_some_and(|ids| ids.contains(&json!(rid))), "{listed}");

    b.type_into("#search-agent", "alice");
    b.click("#search");
    let rows = b.wait(
        "a result row",
        "const ids = [...document.querySelectorAll('#results tr[data-id]')].map(r => r.dataset.id); return ids.length === 1 && ids",
        Duration::from_secs(10),
    );
    assert_eq!(rows, json!([rid]));
    b.click(&format!("#results tr[data-id=\"{rid}\"]"));
    b.wait(
        "the detail",
        &format!("const d = document.querySelector('#detail'); return !d.hidden && d.textContent.includes('{rid}')"),
        Duration::from_secs(10),
    );
    let detail = b.js("return document.querySelector('#detail').textContent").as_str().unwrap().to_string();
    for want in ["sales", "alice", "customer", "agent", "web-1"] {
        assert!(detail.contains(want), "{want} in the detail: {detail}");
    }
    // The markers: two digits on the customer leg, one pause, placed by offset / duration.
    let markers = b.js("return [...document.querySelectorAll('#markers .marker')].map(m => ({
            kind: m.classList.contains('pause') ? 'pause' : 'dtmf', title: m.title, text: m.textContent,
            at: Number(m.dataset.at), left: m.offsetLeft, width: m.offsetWidth, bar: m.parentElement.clientWidth}))");
    let markers = markers.as_array().unwrap();
    let dtmf: Vec<&Value> = markers.iter().filter(|m| m["kind"] == "dtmf").collect();
    let pauses: Vec<&Value> = markers.iter().filter(|m| m["kind"] == "pause").collect();
    assert_eq!(dtmf.len(), 2, "{markers:?}");
    assert_eq!(pauses.len(), 1, "{markers:?}");
    assert_eq!((dtmf[0]["text"].as_str(), dtmf[1]["text"].as_str()), (Some("5"), Some("9")));
    assert!(dtmf[0]["title"].as_str().unwrap().contains("customer"), "{markers:?}");
    let (at5, bar) = (dtmf[0]["at"].as_f64().unwrap(), dtmf[0]["bar"].as_f64().unwrap());
    assert!((900.0..1300.0).contains(&at5), "{markers:?}");
    let centre = dtmf[0]["left"].as_f64().unwrap() + dtmf[0]["width"].as_f64().unwrap() / 2.0;
    let want = at5 / 1000.0 / duration_s * bar;
    assert!((centre - want).abs() < 3.0, "the '5' marker at {centre}px, {want}px expected: {markers:?}");
    assert!(pauses[0]["width"].as_f64().unwrap() > bar * 0.08, "the pause is shaded over its time: {markers:?}");

    // The player has a signed link (no token in the URL) and its duration.
    let src = b.wait(
        "the audio's link",
        "return document.querySelector('#player').getAttribute('src')",
        Duration::from_secs(10),
    );
    let src = src.as_str().unwrap();
    assert!(src.contains("link=") && src.contains("format=browser") && !src.contains(&token), "{src}");
    let dur = b.wait(
        "the audio's metadata",
        "const a = document.querySelector('#player'); return a.readyState >= 1 && Number.isFinite(a.duration) && a.duration",
        Duration::from_secs(10),
    );
    let dur = dur.as_f64().unwrap();
    assert!((dur - duration_s).abs() < 0.1, "the browser's duration {dur} s, the recording's {duration_s} s");

    // Play to the end.
    let played = Instant::now();
    b.click("#play");
    b.wait("playback to start", "return !document.querySelector('#player').paused", Duration::from_secs(10));
    b.wait("the end of the recording", "return document.querySelector('#player').ended", Duration::from_secs(30));
    let took = played.elapsed();
    assert!(took.as_secs_f64() > duration_s * 0.8, "{duration_s} s of audio played in {took:?}");
    let end = b.number("return document.querySelector('#player').currentTime");
    assert!((end - dur).abs() < 0.1, "at the end: {end} of {dur}");
    assert!(
        b.js("return document.querySelector('#time').textContent").as_str().unwrap().contains(" / 0:0"),
        "the time shows"
    );

    // Seek with the bar to the middle: the audio goes there, and plays on from there.
    let mid = b.number(
        "const s = document.querySelector('#seek'); s.value = String(s.max / 2);
         s.dispatchEvent(new Event('input', {bubbles: true})); s.dispatchEvent(new Event('change', {bubbles: true}));
         return document.querySelector('#player').currentTime",
    );
    assert!((mid - dur / 2.0).abs() < 0.05, "seeked to {mid}, {} expected", dur / 2.0);
    b.wait("the seek to end", "return !document.querySelector('#player').seeking", Duration::from_secs(10));
    assert_eq!(b.js("return document.querySelector('#player').play().then(() => true)"), true);
    assert_eq!(b.js("return document.querySelector('#player').paused"), false);
    std::thread::sleep(Duration::from_millis(600));
    let later = b.number("return document.querySelector('#player').currentTime");
    assert!(later > mid + 0.2 && later < mid + 1.5, "playing on from {mid}: now {later}");
    let bar = b.number("return Number(document.querySelector('#seek').value) / 1000");
    assert!((bar - later).abs() < 0.5, "the seek bar follows: {bar} vs {later}");

    // A marker seeks to its event and plays from there.
    b.js("document.querySelector('#player').pause()");
    b.click("#markers .marker.dtmf");
    let at = b.number("return document.querySelector('#player').currentTime");
    assert!((at - at5 / 1000.0).abs() < 0.05, "the '5' marker seeks to {}: {at}", at5 / 1000.0);
    b.wait("playback from the marker", "return !document.querySelector('#player').paused", Duration::from_secs(10));
    b.js("document.querySelector('#player').pause()");

    // A one-file recording offers no choice of leg.
    assert_eq!(b.js("return document.querySelector('#leg-choice').hidden"), true);
    // A separate-layout one offers its legs by label, and plays the one chosen.
    b.type_into("#search-agent", "");
    b.type_into("#search-call-id", "web-2");
    b.click("#search");
    b.wait(
        "web-2's row",
        "return document.querySelectorAll('#results tr[data-id]').length === 1 && document.querySelector('#results').textContent.includes('web-2')",
        Duration::from_secs(10),
    );
    b.click("#results tr[data-id]");
    b.wait("web-2's leg choice", "return !document.querySelector('#leg-choice').hidden", Duration::from_secs(10));
    let options = b.js("return [...document.querySelectorAll('#leg option')].map(o => [o.value, o.textContent])");
    assert_eq!(options, json!([["0", "customer"], ["1", "agent"]]));
    let src =
        b.wait("leg 0's link", "return document.querySelector('#player').getAttribute('src')", Duration::from_secs(10));
    assert!(src.as_str().unwrap().contains("&leg=0"), "{src}");
    b.js("const s = document.querySelector('#leg'); s.value = '1'; s.dispatchEvent(new Event('change', {bubbles: true}))");
    let src = b.wait(
        "leg 1's link",
        "const a = document.querySelector('#player'); const s = a.getAttribute('src') || '';
         return s.includes('&leg=1') && a.readyState >= 1 && Number.isFinite(a.duration) && s",
        Duration::from_secs(10),
    );
    assert!(src.as_str().unwrap().contains("format=browser"), "{src}");
    assert_eq!(b.js("return document.querySelector('#error').hidden"), true, "leg 1 plays");

    // The server saw the browser's Range requests over the link, audited as the user's plays.
    let plays = http(&addr, "GET", "/api/audit?action=play&limit=1000", Some(&auditor), &[], None).json();
    let plays = plays["entries"].as_array().unwrap();
    assert!(
        plays.iter().any(|e| e["target"] == rid.as_str()
            && e["actor"] == "sam"
            && e["result"] == "ok"
            && e["detail"]["via"] == "link"
            && e["detail"]["range"].as_str().is_some_and(|r| r.starts_with("bytes="))),
        "{plays:?}"
    );

    // Log out: the token leaves the tab, the login form comes back.
    b.click("#logout");
    assert_eq!(b.js("return sessionStorage.getItem('callvault.token')"), Value::Null);
    assert_eq!(b.js("return document.querySelector('#login-section').hidden"), false);
    assert_eq!(b.js("return document.querySelector('#detail').hidden"), true);
    assert_eq!(b.js("return document.querySelector('#whoami').textContent"), "");

    // An auditor gets the audit section, with the chain verified, and no search.
    b.type_into("#token", &auditor);
    b.click("#login");
    b.wait(
        "the audit entries",
        "return document.querySelectorAll('#audit-entries tbody tr').length > 0",
        Duration::from_secs(10),
    );
    assert_eq!(b.js("return document.querySelector('#search-section').hidden"), true);
    assert_eq!(b.js("return document.querySelector('#search-none').hidden"), false);
    b.click("#verify-chain");
    let chain = b.wait(
        "the chain's verification",
        "const r = document.querySelector('#chain-result'); return !r.hidden && !r.textContent.startsWith('Verifying') && r.textContent",
        Duration::from_secs(10),
    );
    assert!(chain.as_str().unwrap().contains("intact"), "{chain}");
    b.click("#logout");

    // An admin searches, reads and verifies, but does not listen: no player, a note instead.
    b.type_into("#token", &admin);
    b.click("#login");
    b.wait("the admin's search", "return !document.querySelector('#search-section').hidden", Duration::from_secs(10));
    b.wait("the first page", "return document.querySelector('#results-note').textContent", Duration::from_secs(10));
    b.type_into("#search-call-id", "web-1");
    b.click("#search");
    b.wait(
        "a result row",
        "return document.querySelectorAll('#results tr[data-id]').length === 1",
        Duration::from_secs(10),
    );
    b.click("#results tr[data-id]");
    b.wait("the detail", "return !document.querySelector('#detail').hidden", Duration::from_secs(10));
    assert_eq!(b.js("return document.querySelector('#player-section').hidden"), true);
    assert_eq!(b.js("return document.querySelector('#no-play').hidden"), false);
    assert_eq!(b.js("return document.querySelector('#player').getAttribute('src')"), Value::Null);
    b.click("#verify");
    let verified = b.wait(
        "the recording's verification",
        "const r = document.querySelector('#verify-result'); return !r.hidden && !r.textContent.startsWith('Verifying') && r.textContent",
        Duration::from_secs(10),
    );
    assert!(verified.as_str().unwrap().starts_with("OK"), "{verified}");
    assert_eq!(b.js("return window.cspRefused"), json!([]), "refused by the page's policy");
    drop(b);
    eprintln!("browser test: daemon and recording {ready:?}, in the browser {:?}", began.elapsed() - ready);
}
