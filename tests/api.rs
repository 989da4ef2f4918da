//! The search and playback API against a live daemon: every role against every endpoint,
//! Range playback of sealed recordings, tokens revoked and expired, signed links, path tricks,
//! the audit entries and TLS.

mod garage;
mod http;
mod live;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use callvault::api::access::{AccessStore, Role, Scope};
use http::{Resp, free_port, http, parse_response};
use live::{Daemon, Options, send_pcmu};
use serde_json::{Value, json};

struct Setup {
    d: Daemon,
    addr: String,
    data: PathBuf,
    /// sales/south, billing/north, support (no team); a µ-law one in sales.
    sales: String,
    north: String,
    support: String,
    ulaw: String,
    tokens: std::collections::HashMap<&'static str, String>,
}

fn record(c: &mut live::Client, call_id: &str, meta: Value, format: &str, fill: u8) -> String {
    let r = c.request(json!({"cmd": "start", "call_id": call_id, "metadata": meta, "format": format,
        "legs": [{"label": "customer"}, {"label": "agent"}]}));
    assert_eq!(r["ok"], true, "{r}");
    let port = r["legs"][0]["port"].as_u64().unwrap() as u16;
    send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", port), 7, 50, fill);
    let stop = c.request(json!({"cmd": "stop", "call_id": call_id}));
    assert_eq!(stop["ok"], true, "{stop}");
    r["recording_id"].as_str().unwrap().to_string()
}

fn setup() -> Setup {
    let port = free_port();
    let d = Daemon::start(Options {
        extra: format!("[storage]\nship = true\n[api]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Options::default()
    });
    let mut events = d.client().unwrap();
    assert_eq!(events.request(json!({"cmd": "subscribe"}))["ok"], true);
    let mut c = d.client().unwrap();
    let sales = record(&mut c, "api-sales", json!({"queue": "sales", "team": "south", "agent": "alice"}), "wav", 0x55);
    let north = record(&mut c, "api-north", json!({"queue": "billing", "team": "north", "agent": "bob"}), "wav", 0x33);
    let support = record(&mut c, "api-support", json!({"queue": "support", "agent": "carol"}), "wav", 0x44);
    let ulaw = record(&mut c, "api-ulaw", json!({"queue": "sales", "agent": "alice"}), "wav-ulaw", 0x22);
    for id in ["api-sales", "api-north", "api-support", "api-ulaw"] {
        events.wait_event("recording_stored", Some(id), Duration::from_secs(30));
    }
    let data = d.dir.path().join("data");
    // The catalog notes where each landed a moment after the event.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let r = c.request(json!({"cmd": "find", "limit": 10}));
        if r["recordings"].as_array().is_some_and(|a| a.len() == 4 && a.iter().all(|s| !s["stored"].is_null())) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let access = AccessStore::open(&data).unwrap();
    let scope = |queues: &[&str], teams: &[&str]| Scope {
        all: false,
        queues: queues.iter().map(|s| s.to_string()).collect(),
        teams: teams.iter().map(|s| s.to_string()).collect(),
    };
    access.add_user("ada", Role::Admin, Scope::everything()).unwrap();
    access.add_user("sam", Role::Supervisor, scope(&["sales"], &[])).unwrap();
    access.add_user("quinn", Role::Qa, scope(&[], &["north"])).unwrap();
    access.add_user("otto", Role::Auditor, Scope::everything()).unwrap();
    let mut tokens = std::collections::HashMap::new();
    for (role, user) in [("admin", "ada"), ("supervisor", "sam"), ("qa", "quinn"), ("auditor", "otto")] {
        let (_, t) = access.create_token(user, Some(Duration::from_secs(3600)), SystemTime::now()).unwrap();
        tokens.insert(role, t);
    }
    Setup { addr: format!("127.0.0.1:{port}"), d, data, sales, north, support, ulaw, tokens }
}

impl Setup {
    fn get(&self, role: &str, target: &str) -> Resp {
        http(&self.addr, "GET", target, self.tokens.get(role).map(String::as_str), &[], None)
    }
    fn call(&self, role: &str, method: &str, target: &str, body: Option<&Value>) -> Resp {
        http(&self.addr, method, target, self.tokens.get(role).map(String::as_str), &[], body)
    }
    fn range(&self, role: &str, target: &str, range: &str) -> Resp {
        http(&self.addr, "GET", target, self.tokens.get(role).map(String::as_str), &[("Range", range)], None)
    }
    /// The decrypted bytes of a recording's audio as stored in the archive.
    fn plaintext(&self, rid: &str) -> Vec<u8> {
        let file = find(&self.data.join("archive"), &format!("{rid}.wav.cvs")).expect("archived audio");
        let keys =
            callvault::seal::Keyring::load(&callvault::seal::KeySource::Dir(self.data.join("keys")), None).unwrap();
        let mut r = callvault::seal::SealedReader::open(std::fs::File::open(&file).unwrap(), &keys).unwrap();
        let mut out = Vec::new();
        r.verify(keys.trusted(), Some(&mut out)).unwrap();
        out
    }
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(f) = find(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

#[test]
fn every_role_against_every_endpoint() {
    let s = setup();
    let (sales, north, support) = (s.sales.as_str(), s.north.as_str(), s.support.as_str());
    let sample = json!({"count": 1, "dry_run": true});
    // (role, method, path, body, status expected). Scope: the supervisor sees queue sales, the
    // QA evaluator team north; out of scope is 404 like a missing recording.
    let cases: Vec<(&str, &str, String, Option<Value>, u16)> = vec![
        ("admin", "GET", "/api/recordings".into(), None, 200),
        ("supervisor", "GET", "/api/recordings".into(), None, 200),
        ("qa", "GET", "/api/recordings".into(), None, 200),
        ("auditor", "GET", "/api/recordings".into(), None, 403),
        ("admin", "GET", format!("/api/recordings/{sales}"), None, 200),
        ("supervisor", "GET", format!("/api/recordings/{sales}"), None, 200),
        ("supervisor", "GET", format!("/api/recordings/{north}"), None, 404),
        ("qa", "GET", format!("/api/recordings/{north}"), None, 200),
        ("qa", "GET", format!("/api/recordings/{sales}"), None, 404),
        ("auditor", "GET", format!("/api/recordings/{sales}"), None, 403),
        ("admin", "GET", format!("/api/recordings/{sales}/audio"), None, 403),
        ("supervisor", "GET", format!("/api/recordings/{sales}/audio"), None, 200),
        ("supervisor", "GET", format!("/api/recordings/{support}/audio"), None, 404),
        ("qa", "GET", format!("/api/recordings/{north}/audio"), None, 200),
        ("auditor", "GET", format!("/api/recordings/{north}/audio"), None, 403),
        ("supervisor", "GET", format!("/api/recordings/{sales}/audio?download=1"), None, 200),
        ("qa", "GET", format!("/api/recordings/{north}/audio?download=1"), None, 403),
        ("admin", "GET", format!("/api/recordings/{sales}/audio?download=1"), None, 403),
        ("supervisor", "POST", format!("/api/recordings/{sales}/link"), None, 200),
        ("qa", "POST", format!("/api/recordings/{north}/link"), None, 200),
        ("qa", "POST", format!("/api/recordings/{sales}/link"), None, 404),
        ("admin", "POST", format!("/api/recordings/{sales}/link"), None, 403),
        ("auditor", "POST", format!("/api/recordings/{sales}/link"), None, 403),
        ("admin", "GET", format!("/api/recordings/{sales}/verify"), None, 200),
        ("auditor", "GET", format!("/api/recordings/{north}/verify"), None, 200),
        ("supervisor", "GET", format!("/api/recordings/{sales}/verify"), None, 403),
        ("qa", "GET", format!("/api/recordings/{north}/verify"), None, 403),
        ("supervisor", "POST", "/api/samples".into(), Some(sample.clone()), 200),
        ("qa", "POST", "/api/samples".into(), Some(sample.clone()), 200),
        ("admin", "POST", "/api/samples".into(), Some(sample.clone()), 403),
        ("auditor", "POST", "/api/samples".into(), Some(sample.clone()), 403),
        ("supervisor", "PUT", format!("/api/recordings/{sales}/hold"), Some(json!({"reason": "x"})), 403),
        ("qa", "PUT", format!("/api/recordings/{north}/hold"), Some(json!({"reason": "x"})), 403),
        ("auditor", "PUT", format!("/api/recordings/{north}/hold"), Some(json!({"reason": "x"})), 403),
        ("admin", "PUT", format!("/api/recordings/{north}/hold"), Some(json!({"reason": "case 7"})), 201),
        ("admin", "PUT", format!("/api/recordings/{north}/hold"), Some(json!({"reason": "case 7"})), 200),
        ("supervisor", "DELETE", format!("/api/recordings/{sales}/hold"), None, 403),
        ("supervisor", "DELETE", format!("/api/recordings/{sales}"), Some(json!({"reason": "x"})), 403),
        ("qa", "DELETE", format!("/api/recordings/{north}"), Some(json!({"reason": "x"})), 403),
        ("auditor", "DELETE", format!("/api/recordings/{north}"), Some(json!({"reason": "x"})), 403),
        // Held: refused; released: deleted; gone: 404.
        ("admin", "DELETE", format!("/api/recordings/{north}"), Some(json!({"reason": "GDPR 12"})), 409),
        ("admin", "DELETE", format!("/api/recordings/{north}/hold"), None, 200),
        ("admin", "DELETE", format!("/api/recordings/{north}/hold"), None, 404),
        ("admin", "DELETE", format!("/api/recordings/{north}"), None, 400),
        ("admin", "DELETE", format!("/api/recordings/{north}"), Some(json!({"reason": "a\nfake line"})), 400),
        ("admin", "PUT", format!("/api/recordings/{north}/hold"), Some(json!({"reason": "x".repeat(501)})), 400),
        ("admin", "DELETE", format!("/api/recordings/{north}"), Some(json!({"reason": "GDPR 12"})), 200),
        ("admin", "GET", format!("/api/recordings/{north}"), None, 404),
        ("auditor", "GET", "/api/audit".into(), None, 200),
        ("auditor", "GET", "/api/audit/verify".into(), None, 200),
        ("admin", "GET", "/api/audit".into(), None, 403),
        ("supervisor", "GET", "/api/audit".into(), None, 403),
        ("qa", "GET", "/api/audit/verify".into(), None, 403),
        ("admin", "GET", "/api/me".into(), None, 200),
        ("auditor", "GET", "/api/me".into(), None, 200),
    ];
    let mut failures = Vec::new();
    for (role, method, path, body, want) in &cases {
        let r = s.call(role, method, path, body.as_ref());
        if r.status != *want {
            failures.push(format!(
                "{role} {method} {path}: {} (want {want}): {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        // Without a token, every API endpoint is 401.
        let anon = http(&s.addr, method, path, None, &[], body.as_ref());
        if anon.status != 401 || anon.header("www-authenticate").is_none() {
            failures.push(format!("anonymous {method} {path}: {}", anon.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Search returns only what the scope covers.
    let ids = |r: Resp| -> Vec<String> {
        r.json()["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["recording_id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut sup = ids(s.get("supervisor", "/api/recordings"));
    sup.sort();
    let mut want = vec![s.sales.clone(), s.ulaw.clone()];
    want.sort();
    assert_eq!(sup, want);
    assert_eq!(ids(s.get("qa", "/api/recordings")), Vec::<String>::new(), "north was deleted above");
    assert_eq!(ids(s.get("admin", "/api/recordings")).len(), 3);
    assert_eq!(ids(s.get("supervisor", "/api/recordings?queue=support")), Vec::<String>::new());
    assert_eq!(ids(s.get("admin", "/api/recordings?agent=carol")), vec![s.support.clone()]);
    assert_eq!(ids(s.get("admin", "/api/recordings?meta.team=south")), vec![s.sales.clone()]);
    let bad = s.get("admin", "/api/recordings?agnet=carol");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("agnet"));
    // Out of scope and missing read the same, byte for byte.
    let missing = ulid::Ulid::new().to_string();
    let a = s.get("supervisor", &format!("/api/recordings/{support}"));
    let b = s.get("supervisor", &format!("/api/recordings/{missing}"));
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    // The metadata has legs, quality counters, DTMF, pauses and digests, and no host paths.
    let m = s.get("supervisor", &format!("/api/recordings/{sales}")).json();
    assert_eq!(m["legs"].as_array().unwrap().len(), 2);
    assert!(m["legs"][0].get("lost").is_some() && m["legs"][0].get("dtmf").is_some(), "{m}");
    assert!(m.get("pauses").is_some() && m["seals"].as_array().is_some_and(|a| !a.is_empty()), "{m}");
    assert!(!m.to_string().contains(s.d.dir.path().to_str().unwrap()), "no paths of this host: {m}");
    // Verify reports signed digests.
    let v = s.get("auditor", &format!("/api/recordings/{sales}/verify")).json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["signed"], true, "{v}");
    assert_eq!(v["files"].as_array().unwrap().len(), 2, "audio and metadata: {v}");
}

#[test]
fn range_playback_decrypts_what_is_asked() {
    let s = setup();
    let plain = s.plaintext(&s.sales);
    let len = plain.len();
    let url = format!("/api/recordings/{}/audio", s.sales);
    let whole = s.get("supervisor", &url);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, plain);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.header("content-type"), Some("audio/wav"));
    assert_eq!(whole.header("content-length"), Some(len.to_string().as_str()));
    for (range, start, end) in [
        ("bytes=0-99".to_string(), 0, 99),
        (format!("bytes={}-{}", len / 2, len / 2 + 4095), len / 2, len / 2 + 4095),
        ("bytes=-100".to_string(), len - 100, len - 1),
        (format!("bytes={}-", len - 1), len - 1, len - 1),
        (format!("bytes=10-{}", len * 2), 10, len - 1),
    ] {
        let r = s.range("supervisor", &url, &range);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {start}-{end}/{len}").as_str()), "{range}");
        assert_eq!(r.body, plain[start..=end], "{range}");
    }
    assert_eq!(s.range("supervisor", &url, "lines=0-1").status, 200, "a unit other than bytes is ignored");
    // No validators are sent, so an If-Range never matches: the whole body.
    let r = http(
        &s.addr,
        "GET",
        &url,
        Some(&s.tokens["supervisor"]),
        &[("Range", "bytes=0-9"), ("If-Range", "\"x\"")],
        None,
    );
    assert_eq!((r.status, r.body.len()), (200, len), "If-Range");
    for bad in [format!("bytes={len}-"), "bytes=abc".into(), "bytes=5-1".into(), "bytes".into(), "bytes=-0".into()] {
        let r = s.range("supervisor", &url, &bad);
        assert_eq!(r.status, 416, "{bad}");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{len}").as_str()), "{bad}");
    }
    // HEAD gives the length without the body.
    let h = http(&s.addr, "HEAD", &url, Some(&s.tokens["supervisor"]), &[], None);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some(len.to_string().as_str()));
    // A G.711 WAV is served as 16-bit PCM for browsers, with ranges over the converted bytes.
    let ulaw_url = format!("/api/recordings/{}/audio", s.ulaw);
    let orig = s.get("supervisor", &ulaw_url);
    assert_eq!(orig.body, s.plaintext(&s.ulaw));
    let pcm = s.get("supervisor", &format!("{ulaw_url}?format=browser"));
    assert_eq!(pcm.status, 200);
    assert_eq!(&pcm.body[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([pcm.body[20], pcm.body[21]]), 1, "PCM");
    assert_eq!(u16::from_le_bytes([pcm.body[34], pcm.body[35]]), 16, "16-bit");
    let part = s.range("supervisor", &format!("{ulaw_url}?format=wav"), "bytes=101-300");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, pcm.body[101..=300]);
    // Transcoded to Opus on request: an Ogg stream, seekable by Range too.
    let opus = s.get("supervisor", &format!("{url}?format=opus"));
    assert_eq!(opus.status, 200, "{}", String::from_utf8_lossy(&opus.body));
    assert_eq!(&opus.body[..4], b"OggS");
    assert_eq!(opus.header("content-type"), Some("audio/ogg"));
    let tail = s.range("supervisor", &format!("{url}?format=opus"), "bytes=-10");
    assert_eq!(tail.body, opus.body[opus.body.len() - 10..]);
    let bad = s.get("supervisor", &format!("{url}?format=flac"));
    assert_eq!(bad.status, 400);
    // Download names the file.
    let dl = s.get("supervisor", &format!("{url}?download=1"));
    assert!(dl.header("content-disposition").unwrap().starts_with("attachment"), "{:?}", dl.headers);
}

#[test]
fn tokens_revoked_expired_or_bad_are_refused() {
    let s = setup();
    let access = AccessStore::open(&s.data).unwrap();
    let (info, t) = access.create_token("sam", Some(Duration::from_secs(3600)), SystemTime::now()).unwrap();
    assert_eq!(http(&s.addr, "GET", "/api/recordings", Some(&t), &[], None).status, 200);
    assert!(access.revoke_token(&info.id, SystemTime::now()).unwrap());
    let r = http(&s.addr, "GET", "/api/recordings", Some(&t), &[], None);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("revoked"), "{:?}", r.json());
    let (_, old) = access
        .create_token("sam", Some(Duration::from_secs(60)), SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let r = http(&s.addr, "GET", "/api/recordings", Some(&old), &[], None);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("expired"), "{:?}", r.json());
    let mut tampered = s.tokens["supervisor"].clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [tampered.as_str(), "cvt_nope", "", "Basic abc"] {
        assert_eq!(http(&s.addr, "GET", "/api/recordings", Some(bad), &[], None).status, 401, "{bad:?}");
    }
    // A disabled user's tokens stop at once.
    access.set_disabled("quinn", true).unwrap();
    assert_eq!(s.get("qa", "/api/recordings").status, 401);
}

#[test]
fn signed_links_play_one_recording_only() {
    let s = setup();
    let r = s.call("supervisor", "POST", &format!("/api/recordings/{}/link", s.sales), Some(&json!({"ttl_s": 60})));
    assert_eq!(r.status, 200);
    let url = r.json()["url"].as_str().unwrap().to_string();
    let played = http(&s.addr, "GET", &url, None, &[("Range", "bytes=0-9")], None);
    assert_eq!(played.status, 206);
    assert_eq!(played.body, s.plaintext(&s.sales)[..10]);
    // Not another recording, not the metadata, not a download, not tampered.
    let link = url.split("link=").nth(1).unwrap();
    let other = format!("/api/recordings/{}/audio?link={link}", s.ulaw);
    assert_eq!(http(&s.addr, "GET", &other, None, &[], None).status, 401);
    // Elsewhere a link is refused like a role without the permission (403), whatever it names.
    for elsewhere in [
        format!("/api/recordings/{}?link={link}", s.sales),
        format!("/api/recordings/{}/verify?link={link}", s.sales),
        format!("/api/recordings?agent=bob&link={link}"),
        "/api/me?LINK=x".to_string(),
    ] {
        let r = http(&s.addr, "GET", &elsewhere, None, &[], None);
        assert_eq!(r.status, 403, "{elsewhere}");
        assert!(String::from_utf8_lossy(&r.body).contains("audio only"), "{elsewhere}");
    }
    assert_eq!(http(&s.addr, "GET", &format!("{url}&download=1"), None, &[], None).status, 403);
    let mut bad = url.clone();
    let c = bad.pop().unwrap();
    bad.push(if c == 'A' { 'B' } else { 'A' });
    assert_eq!(http(&s.addr, "GET", &bad, None, &[], None).status, 401);
    let too_long =
        s.call("supervisor", "POST", &format!("/api/recordings/{}/link", s.sales), Some(&json!({"ttl_s": 10_000_000})));
    assert_eq!(too_long.status, 400);
    // Expired.
    let short = s.call("supervisor", "POST", &format!("/api/recordings/{}/link", s.sales), Some(&json!({"ttl_s": 1})));
    let short_url = short.json()["url"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let r = http(&s.addr, "GET", &short_url, None, &[], None);
    assert_eq!(r.status, 401);
    // The link dies with its user's access.
    AccessStore::open(&s.data).unwrap().set_disabled("sam", true).unwrap();
    assert_eq!(http(&s.addr, "GET", &url, None, &[], None).status, 401);
}

#[test]
fn path_tricks_in_ids_are_missing_recordings() {
    let s = setup();
    let rid = s.sales.clone();
    for target in [
        "/api/recordings/..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        "/api/recordings/%2e%2e/audio".into(),
        "/api/recordings/..%2f..%2fcatalog.db/audio".into(),
        format!("/api/recordings/{rid}%00/audio"),
        format!("/api/recordings/{rid}.wav.cvs/audio"),
        format!("/api/recordings/{}/audio", rid.to_lowercase()),
        format!("/api/recordings/{rid}%2F..%2F..%2Fkeys/audio"),
        format!("/api/recordings/{rid}/../../../etc/passwd"),
        "/../../etc/passwd".into(),
        "/api/recordings/*".into(),
        format!("/api/recordings/{}", "Z".repeat(26)),
    ] {
        let r = s.get("supervisor", &target);
        assert!(r.status == 404 || r.status == 400, "{target}: {}", r.status);
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("root:") && !text.contains("RIFF"), "{target}: {text}");
    }
    // The in-scope recording itself plays: the refusals above were about the ids.
    assert_eq!(s.get("supervisor", &format!("/api/recordings/{rid}/audio")).status, 200);
}

#[test]
fn every_request_and_control_command_is_in_the_audit_trail() {
    let s = setup();
    s.get("supervisor", &format!("/api/recordings/{}/audio", s.sales));
    s.get("qa", &format!("/api/recordings/{}", s.sales));
    http(&s.addr, "GET", "/api/recordings", Some("cvt_bad_token"), &[], None);
    let page = s.get("auditor", "/api/audit?limit=1000").json();
    let entries = page["entries"].as_array().unwrap();
    let has = |action: &str, actor: &str, target: &str, result: &str| {
        entries.iter().any(|e| {
            e["action"] == action
                && e["actor"].as_str().unwrap_or_default().contains(actor)
                && e["target"] == target
                && e["result"] == result
        })
    };
    assert!(has("play", "sam", &s.sales, "ok"), "{entries:?}");
    assert!(has("read", "quinn", &s.sales, "not_found"), "refusals are recorded too");
    assert!(has("search", "unauthenticated", "", "unauthorized"));
    // A range past the end is recorded by its error code, like any refusal.
    s.range("supervisor", &format!("/api/recordings/{}/audio", s.sales), "bytes=99999999-");
    // A link asked to download is refused, and the entry names whose link it was.
    let link = s.call("supervisor", "POST", &format!("/api/recordings/{}/link", s.sales), None).json();
    let dl = http(&s.addr, "GET", &format!("{}&download=1", link["url"].as_str().unwrap()), None, &[], None);
    assert_eq!(dl.status, 403);
    let entries: Vec<Value> = s.get("auditor", "/api/audit?limit=1000").json()["entries"].as_array().unwrap().clone();
    let has = |action: &str, actor: &str, target: &str, result: &str| {
        entries.iter().any(|e| {
            e["action"] == action
                && e["actor"].as_str().unwrap_or_default().contains(actor)
                && e["target"] == target
                && e["result"] == result
        })
    };
    assert!(has("play", "sam", &s.sales, "range_not_satisfiable"), "{entries:?}");
    assert!(has("download", "sam", &s.sales, "forbidden"), "{entries:?}");
    assert!(has("start", "control", "api-sales", "ok"), "control socket commands: {entries:?}");
    assert!(has("stop", "control", "api-sales", "ok"));
    assert!(entries.iter().all(|e| e["source"].as_str().is_some_and(|x| !x.is_empty())), "from where");
    let filtered = s.get("auditor", "/api/audit?action=play").json();
    assert!(filtered["entries"].as_array().unwrap().iter().all(|e| e["action"] == "play"));
    let v = s.get("auditor", "/api/audit/verify").json();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn the_web_page_and_the_openapi_file_are_served() {
    let s = setup();
    let page = http(&s.addr, "GET", "/", None, &[], None);
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.header("content-security-policy").is_some());
    let spec = http(&s.addr, "GET", "/api/openapi.json", None, &[], None).json();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."), "{spec}");
    // Every route the server has is documented.
    for path in [
        "/api/me",
        "/api/recordings",
        "/api/recordings/{id}",
        "/api/recordings/{id}/audio",
        "/api/recordings/{id}/link",
        "/api/recordings/{id}/verify",
        "/api/recordings/{id}/hold",
        "/api/samples",
        "/api/samples/{id}",
        "/api/audit",
        "/api/audit/verify",
    ] {
        assert!(spec["paths"].get(path).is_some(), "{path} missing from docs/openapi.json");
    }
    assert_eq!(http(&s.addr, "GET", "/api/nothing", None, &[], None).status, 404);
    // The icon every browser asks for is an empty answer, not a refused request in the trail.
    let icon = http(&s.addr, "GET", "/favicon.ico", None, &[], None);
    assert_eq!(icon.status, 204);
    let trail = s.get("auditor", "/api/audit?limit=1000").json();
    let targets: Vec<&str> = trail["entries"].as_array().unwrap().iter().filter_map(|e| e["target"].as_str()).collect();
    assert!(targets.contains(&"/api/nothing"), "unknown routes are audited: {targets:?}");
    assert!(!targets.contains(&"/favicon.ico"), "{targets:?}");
}

#[test]
fn qa_samples_are_reproducible_and_scoped() {
    let s = setup();
    let body = json!({"per": "agent", "count": 1, "seed": "november"});
    let first = s.call("supervisor", "POST", "/api/samples", Some(&body));
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    let first = first.json();
    let groups = first["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "the supervisor's scope has one agent (alice): {first}");
    assert_eq!(groups[0]["available"], 2);
    // The next draw leaves out what was drawn.
    let second = s.call("supervisor", "POST", "/api/samples", Some(&body)).json();
    assert_eq!(second["excluded_already_sampled"], 1);
    let id1 = &first["groups"][0]["recordings"][0]["recording_id"];
    let id2 = &second["groups"][0]["recordings"][0]["recording_id"];
    assert_ne!(id1, id2);
    let got = s.get("supervisor", &format!("/api/samples/{}", first["sample_id"].as_str().unwrap()));
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["groups"], first["groups"]);
    assert_eq!(s.get("qa", &format!("/api/samples/{}", first["sample_id"].as_str().unwrap())).status, 404);
    let bad = s.call("qa", "POST", "/api/samples", Some(&json!({"count": 0})));
    assert_eq!(bad.status, 400);
}

#[test]
fn an_address_other_than_loopback_needs_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("data_dir = \"{}\"\n[api]\nlisten = \"0.0.0.0:18443\"\n", dir.path().join("d").display()),
    )
    .unwrap();
    let o = Command::new(live::bin()).args(["serve", "--check", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("api.listen") && err.contains("TLS"), "{err}");
}

#[test]
fn tls_serves_and_plain_http_to_it_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    // `serve --check` loads the pair as serve would: a world-readable key is refused, and a key
    // that is not the certificate's.
    let check = |cert: &Path, key: &Path| {
        let cfg = dir.path().join("check.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                dir.path().join("d").display(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let o =
            Command::new(live::bin()).args(["serve", "--check", "--config", cfg.to_str().unwrap()]).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = check(&cert_path, &key_path);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("readable by every user"), "{err}");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(check(&cert_path, &key_path).0, Some(0));
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&other_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = check(&cert_path, &other_key);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("do not go together"), "{err}");
    let port = free_port();
    let d = Daemon::start(Options {
        extra: format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
        ..Options::default()
    });
    let data = d.dir.path().join("data");
    let access = AccessStore::open(&data).unwrap();
    access.add_user("otto", Role::Auditor, Scope::everything()).unwrap();
    let (_, token) = access.create_token("otto", None, SystemTime::now()).unwrap();
    // Plain HTTP to the TLS port gets no answer, and the listener carries on.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    plain.write_all(b"GET /api/me HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET /api/me HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let r = parse_response(&raw, false);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["role"], "auditor");
    drop(d);
}

/// Playback from an S3-compatible store (Garage): ranges are fetched from the object, not the
/// whole file, and decrypt to the same bytes.
#[test]
fn playback_and_verify_from_an_object_store() {
    if !garage::available() {
        return;
    }
    let g = garage::Garage::single();
    let port = free_port();
    let d = Daemon::start(Options {
        extra: format!("{}[api]\nlisten = \"127.0.0.1:{port}\"\n", g.target_toml("primary", "cv")),
        ..Options::default()
    });
    let mut events = d.client().unwrap();
    assert_eq!(events.request(json!({"cmd": "subscribe"}))["ok"], true);
    let mut c = d.client().unwrap();
    let rid = record(&mut c, "s3-1", json!({"queue": "sales"}), "wav", 0x61);
    let stored = events.wait_event("recording_stored", Some("s3-1"), Duration::from_secs(30));
    let data = d.dir.path().join("data");
    let access = AccessStore::open(&data).unwrap();
    access
        .add_user("sam", Role::Supervisor, Scope { all: false, queues: vec!["sales".into()], teams: vec![] })
        .unwrap();
    access.add_user("otto", Role::Auditor, Scope::everything()).unwrap();
    let (_, sup) = access.create_token("sam", None, SystemTime::now()).unwrap();
    let (_, aud) = access.create_token("otto", None, SystemTime::now()).unwrap();
    let addr = format!("127.0.0.1:{port}");
    // The catalog notes where it landed a moment after the event.
    let url = format!("/api/recordings/{rid}/audio");
    let deadline = Instant::now() + Duration::from_secs(10);
    let whole = loop {
        let r = http(&addr, "GET", &url, Some(&sup), &[], None);
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(whole.status, 200, "{}", String::from_utf8_lossy(&whole.body));
    assert_eq!(&whole.body[..4], b"RIFF");
    assert!(stored["stored"]["primary"]["target"].as_str().unwrap().starts_with("s3 "), "{stored}");
    let len = whole.body.len();
    let mid = http(&addr, "GET", &url, Some(&sup), &[("Range", &format!("bytes={}-{}", len / 3, len / 3 + 999))], None);
    assert_eq!(mid.status, 206);
    assert_eq!(mid.body, whole.body[len / 3..len / 3 + 1000]);
    let v = http(&addr, "GET", &format!("/api/recordings/{rid}/verify"), Some(&aud), &[], None).json();
    assert_eq!(v["ok"], true, "{v}");
    // The store down: playback fails with a clear error, the daemon stays up.
    drop(g);
    let r = http(&addr, "GET", &url, Some(&sup), &[], None);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(http(&addr, "GET", "/api/me", Some(&sup), &[], None).status, 200);
}

/// Verify through the API finds a stored file changed after shipping, and playback of it fails
/// rather than serving altered audio.
#[test]
fn verify_finds_a_tampered_recording() {
    let s = setup();
    let file = find(&s.data.join("archive"), &format!("{}.wav.cvs", s.sales)).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let v = s.get("auditor", &format!("/api/recordings/{}/verify", s.sales)).json();
    assert_eq!(v["ok"], false, "{v}");
    let audio = &v["files"][0];
    assert_eq!(audio["verified"], false, "{v}");
    assert!(audio["error"].as_str().unwrap().contains("SHA-256"), "{v}");
    // The untouched one still verifies.
    assert_eq!(s.get("auditor", &format!("/api/recordings/{}/verify", s.ulaw)).json()["ok"], true);
    // The altered chunk does not authenticate: the bytes around it are not served.
    let r = s.range("supervisor", &format!("/api/recordings/{}/audio", s.sales), &format!("bytes={}-{}", at - 200, at));
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("altered"), "{:?}", r.json());
}

/// Changes are recorded before they are made: with the audit trail unwritable (another process
/// holds it locked), a hold or a deletion is refused and not carried out.
#[test]
fn a_change_the_audit_trail_cannot_record_is_not_made() {
    let s = setup();
    let db = rusqlite::Connection::open(s.data.join("audit.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let hold = s.call("admin", "PUT", &format!("/api/recordings/{}/hold", s.north), Some(&json!({"reason": "case 9"})));
    assert_eq!(hold.status, 503, "{}", String::from_utf8_lossy(&hold.body));
    assert!(!String::from_utf8_lossy(&hold.body).contains(s.data.to_str().unwrap()), "no host paths");
    let del = s.call("admin", "DELETE", &format!("/api/recordings/{}", s.support), Some(&json!({"reason": "GDPR 1"})));
    assert_eq!(del.status, 503);
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    // Nothing was done: the hold is placed now for the first time, the recording still there.
    let again =
        s.call("admin", "PUT", &format!("/api/recordings/{}/hold", s.north), Some(&json!({"reason": "case 9"})));
    assert_eq!(again.status, 201, "{}", String::from_utf8_lossy(&again.body));
    assert_eq!(s.get("admin", &format!("/api/recordings/{}", s.support)).status, 200);
    // Each change: asked for, then done.
    let entries = s.get("auditor", "/api/audit?action=hold.place").json()["entries"].as_array().unwrap().clone();
    let results: Vec<&str> = entries.iter().map(|e| e["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["requested", "ok"], "{entries:?}");
}

/// Requests no handler takes (unknown routes, wrong methods, bodies too large) are audited too,
/// under the caller's name when its token says; a token put in a URL is not kept.
#[test]
fn unrouted_requests_are_audited_and_tokens_in_urls_are_not_kept() {
    let s = setup();
    assert_eq!(s.get("admin", "/api/nothing-here").status, 404);
    let patch = s.call("admin", "PATCH", &format!("/api/recordings/{}", s.sales), None);
    assert_eq!(patch.status, 405);
    assert_eq!(patch.json()["error"]["code"], "method_not_allowed", "the API's JSON error form");
    assert!(patch.header("allow").is_some(), "{:?}", patch.headers);
    let big = json!({"reason": "x".repeat(70 * 1024)});
    let too_big = s.call("admin", "DELETE", &format!("/api/recordings/{}", s.sales), Some(&big));
    assert_eq!(too_big.status, 413);
    assert_eq!(too_big.json()["error"]["code"], "payload_too_large");
    let leaked = s.tokens["supervisor"].clone();
    assert_eq!(http(&s.addr, "GET", &format!("/api/recordings?access_token={leaked}"), None, &[], None).status, 401);
    assert_eq!(s.get("supervisor", "/api/recordings?queue=sales&queue=billing").status, 400);
    let entries = s.get("auditor", "/api/audit?limit=1000").json()["entries"].as_array().unwrap().clone();
    let found = |target: &str, result: &str| {
        entries
            .iter()
            .any(|e| e["action"] == "request" && e["actor"] == "ada" && e["target"] == target && e["result"] == result)
    };
    assert!(found("/api/nothing-here", "not_found"), "{entries:?}");
    assert!(found(&format!("/api/recordings/{}", s.sales), "method_not_allowed"), "{entries:?}");
    assert!(found(&format!("/api/recordings/{}", s.sales), "payload_too_large"), "{entries:?}");
    // Nor in a parameter's name, nor in the path.
    http(&s.addr, "GET", &format!("/api/recordings?{leaked}=1"), None, &[], None);
    http(&s.addr, "GET", &format!("/api/recordings/{leaked}"), None, &[], None);
    http(&s.addr, "GET", &format!("/api/nothing/{leaked}"), None, &[], None);
    // Typos are refused, not taken for defaults: a parameter where none is taken too (a
    // `?dry_run=1` must not erase).
    let del =
        s.call("admin", "DELETE", &format!("/api/recordings/{}?dry_run=1", s.support), Some(&json!({"reason": "r"})));
    assert_eq!(del.status, 400);
    assert_eq!(s.get("admin", &format!("/api/recordings/{}", s.support)).status, 200, "not erased");
    assert_eq!(
        s.call("supervisor", "POST", &format!("/api/recordings/{}/link", s.sales), Some(&json!({"ttl": 900}))).status,
        400
    );
    assert_eq!(s.get("supervisor", &format!("/api/recordings/{}/audio?downlaod=1", s.sales)).status, 400);
    assert_eq!(
        s.call("admin", "PUT", &format!("/api/recordings/{}/hold", s.sales), Some(&json!({"reason": "r", "x": 1})))
            .status,
        400
    );
    // One token per request.
    let two = http(
        &s.addr,
        "GET",
        "/api/me",
        Some(&s.tokens["admin"]),
        &[("Authorization", &format!("Bearer {}", s.tokens["supervisor"]))],
        None,
    );
    assert_eq!(two.status, 401);
    let entries = s.get("auditor", "/api/audit?limit=1000").json()["entries"].as_array().unwrap().clone();
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains(&leaked[4..]), "a token in a URL is not kept in the audit trail: {text}");
    // The page's files are not recordings: not audited.
    http(&s.addr, "GET", "/app.js", None, &[], None);
    let after = s.get("auditor", "/api/audit?limit=1000").json()["entries"].as_array().unwrap().clone();
    assert!(!after.iter().any(|e| e["target"] == "/app.js"));
}

/// A sample is its drawer's: not a later user's of the same name, and only what the drawer's
/// scope still covers.
#[test]
fn samples_follow_their_user_and_scope() {
    let s = setup();
    let drawn = s.call("supervisor", "POST", "/api/samples", Some(&json!({"count": 5}))).json();
    let sid = drawn["sample_id"].as_str().unwrap().to_string();
    assert_eq!(s.get("supervisor", &format!("/api/samples/{sid}")).json()["groups"], drawn["groups"]);
    let access = AccessStore::open(&s.data).unwrap();
    access.set_scope("sam", Scope { all: false, queues: vec!["billing".into()], teams: vec![] }).unwrap();
    let narrowed = s.get("supervisor", &format!("/api/samples/{sid}")).json();
    assert_eq!(narrowed["groups"], json!([]), "not even the group's key is shown: {narrowed}");
    assert_eq!(narrowed["hidden_out_of_scope_or_deleted"], 2);
    access.remove_user("sam").unwrap();
    access
        .add_user("sam", Role::Supervisor, Scope { all: false, queues: vec!["sales".into()], teams: vec![] })
        .unwrap();
    let (_, t) = access.create_token("sam", None, SystemTime::now()).unwrap();
    assert_eq!(http(&s.addr, "GET", &format!("/api/samples/{sid}"), Some(&t), &[], None).status, 404);
}

/// One address cannot take every connection: past 16 at once it is closed at once, and
/// another address is still served.
#[test]
fn connections_per_address_are_bounded() {
    let s = setup();
    // A connection from another loopback address: a client on its own (127.0.0.1 is the
    // reverse proxy's, not limited).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let connect_from = |ip: &str| -> TcpStream {
        let c = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            sock.connect(s.addr.parse().unwrap()).await.unwrap().into_std().unwrap()
        });
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };
    let me = |mut c: TcpStream| -> Vec<u8> {
        write!(
            c,
            "GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            s.tokens["admin"]
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = c.read_to_end(&mut raw);
        raw
    };
    let held: Vec<TcpStream> = (0..16).map(|_| connect_from("127.0.0.2")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect_from("127.0.0.2");
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = extra.write_all(b"GET /api/me HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)), "the 17th connection is closed");
    // Another address is served meanwhile.
    let raw = me(connect_from("127.0.0.3"));
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    // And a reverse proxy on this host may hold more than 16.
    let proxy: Vec<TcpStream> = (0..24).map(|_| connect_from("127.0.0.1")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let raw = me(connect_from("127.0.0.1"));
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    drop((held, proxy));
    // A body announced and never sent does not hold its connection: 408 after 15 s, closed.
    let mut stuck = connect_from("127.0.0.4");
    stuck.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let asked = Instant::now();
    stuck
        .write_all(
            b"POST /api/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .unwrap();
    let mut raw = Vec::new();
    let _ = stuck.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408") && text.contains("request_timeout"), "{text}");
    assert!(asked.elapsed() < Duration::from_secs(25), "{:?}", asked.elapsed());
}
