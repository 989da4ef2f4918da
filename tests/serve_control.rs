//! The live daemon's control socket and call handling, against a real `callvault serve` on
//! loopback: every bad input gets an error reply and leaves the daemon running; legs join and
//! leave; pauses mask or cut; SIGTERM finalises active recordings.

mod live;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

use live::{Daemon, Options, channel, read_wav, send_pcmu};
use serde_json::{Value, json};

fn start_two_legs(c: &mut live::Client, call_id: &str) -> (u16, u16, String) {
    let r = c.request(json!({"id": 1, "cmd": "start", "call_id": call_id,
        "metadata": {"agent": "1001"},
        "legs": [{"label": "customer"}, {"label": "agent", "payload_types": {"8": "PCMA/8000"}}]}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["id"], 1);
    assert_eq!(r["legs"][0]["host"], "127.0.0.1");
    let p0 = r["legs"][0]["port"].as_u64().unwrap() as u16;
    let p1 = r["legs"][1]["port"].as_u64().unwrap() as u16;
    assert_eq!(r["legs"][0]["rtcp_port"], p0 + 1);
    (p0, p1, r["recording_id"].as_str().unwrap().to_string())
}

#[test]
fn bad_requests_get_error_replies_and_the_connection_lives_on() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    c.send_line(b"{this is not json");
    let r = c.reply();
    assert_eq!((r["ok"].clone(), r["error"]["code"].clone()), (json!(false), json!("bad_json")));
    c.send_line(&vec![b'x'; 70 * 1024]);
    assert_eq!(c.reply()["error"]["code"], "line_too_long");
    let r = c.request(json!({"id": "abc", "cmd": "teleport"}));
    assert_eq!((r["id"].clone(), r["error"]["code"].clone()), (json!("abc"), json!("unknown_command")));
    let r = c.request(json!({"id": [1, 2], "cmd": "stop", "call_id": "nope"}));
    assert_eq!((r["id"].clone(), r["error"]["code"].clone()), (json!([1, 2]), json!("unknown_call")));
    assert_eq!(c.request(json!({"cmd": "start", "call_id": "x", "legs": []}))["error"]["code"], "bad_request");
    assert_eq!(
        c.request(json!({"cmd": "start", "call_id": "x", "format": "flac", "legs": [{"label": "a"}]}))["error"]["code"],
        "unsupported_format"
    );
    assert_eq!(c.request(json!({"cmd": "pause", "call_id": "nope"}))["error"]["code"], "unknown_call");
    // Still alive and serving on the same connection.
    let h = c.request(json!({"id": 9, "cmd": "health"}));
    assert_eq!(h["ok"], true);
    assert_eq!(h["protocol_version"], 1);
    assert_eq!(h["backend"], "epoll");
}

#[test]
fn many_clients_at_once() {
    let d = Daemon::start(Options::default());
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = live::Client::connect(&socket).unwrap();
                for j in 0..10 {
                    let call = format!("c-{i}-{j}");
                    let r = c.request(
                        json!({"id": j, "cmd": "start", "call_id": call, "legs": [{"label": "a", "rtcp_mux": true}]}),
                    );
                    assert_eq!(r["ok"], true, "{r}");
                    assert_eq!(r["legs"][0]["rtcp_mux"], true);
                    let r = c.request(json!({"id": j, "cmd": "stop", "call_id": call}));
                    assert_eq!(r["ok"], true, "{r}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut c = d.client().unwrap();
    let s = c.request(json!({"cmd": "stats"}));
    assert_eq!(s["calls_active"], 0, "{s}");
    assert_eq!(c.request(json!({"cmd": "list"}))["calls"], json!([]));
}

#[test]
fn a_two_leg_call_is_recorded_in_stereo_with_its_metadata() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let (p0, p1, rid) = start_two_legs(&mut c, "call/1");
    assert_eq!(
        c.request(json!({"cmd": "start", "call_id": "call/1", "legs": [{"label": "a"}]}))["error"]["code"],
        "call_exists"
    );
    let customer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = std::thread::spawn(move || send_pcmu(&agent, ("127.0.0.1", p1), 2, 50, 0x00));
    send_pcmu(&customer, ("127.0.0.1", p0), 1, 50, 0x80);
    t.join().unwrap();
    let status = c.request(json!({"cmd": "status", "call_id": "call/1"}));
    assert_eq!(status["state"], "recording");
    assert_eq!(status["legs"][0]["packets"], 50);
    assert!(status["legs"][0]["last_packet_age_ms"].as_u64().unwrap() < 5000);
    assert_eq!(c.request(json!({"cmd": "list"}))["calls"][0]["call_id"], "call/1");
    let r = c.request(json!({"cmd": "update", "call_id": "call/1", "metadata": {"queue": "sales"}}));
    assert_eq!(r["metadata"], json!({"agent": "1001", "queue": "sales"}));
    let stop = c.request(json!({"cmd": "stop", "call_id": "call/1"}));
    assert_eq!(stop["ok"], true, "{stop}");
    assert_eq!(stop["recording_id"], rid.as_str());
    let file = PathBuf::from(stop["file"].as_str().unwrap());
    assert!(file.is_absolute() && file.exists(), "{stop}");
    // Sealed by default: named by recording id only (a call id may hold a number).
    assert_eq!(file.file_name().unwrap().to_str().unwrap(), format!("{rid}.wav.cvs"), "{file:?}");
    assert_eq!(stop["encrypted"], true);
    assert_eq!(stop["seals"][0]["file"], file.display().to_string(), "{stop}");
    assert_eq!(stop["seals"][0]["audio_sha256"].as_str().map(str::len), Some(64), "{stop}");
    let (channels, samples) = read_wav(&file);
    assert_eq!(channels, 2);
    let left = channel(&samples, 2, 0);
    let right = channel(&samples, 2, 1);
    // µ-law 0x80 is +32124, A-law is not mapped on the agent leg's PT 0 … the agent sent PT 0
    // (PCMU, static) with 0x00 = -32124.
    assert!(left.iter().filter(|&&s| s == 32124).count() >= 49 * 160, "customer audio on the left");
    assert!(right.iter().filter(|&&s| s == -32124).count() >= 49 * 160, "agent audio on the right");
    let sidecar_path = file.with_file_name(format!("{rid}.meta.cvs"));
    let sidecar: Value = serde_json::from_slice(&live::decrypt(&sidecar_path)).unwrap();
    assert_eq!(sidecar["metadata"]["queue"], "sales");
    assert_eq!(sidecar["end_reason"], "stopped");
    assert!(sidecar["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(sidecar["legs"][1]["label"], "agent");
    // Starting the same call id again makes a new recording.
    let (_, _, rid2) = start_two_legs(&mut c, "call/1");
    assert_ne!(rid, rid2);
    // No partial files are left for finished recordings.
    let stop = c.request(json!({"cmd": "stop", "call_id": "call/1"}));
    assert_eq!(stop["ok"], true);
    let partials = std::fs::read_dir(d.spool())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "partial"));
    assert_eq!(partials.count(), 0);
}

#[test]
fn wrong_sources_garbage_and_unknown_ports_are_counted_not_recorded() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let r = c.request(json!({"cmd": "start", "call_id": "c", "legs": [
        {"label": "customer", "source": "127.0.0.9"}, {"label": "agent"}]}));
    let p0 = r["legs"][0]["port"].as_u64().unwrap() as u16;
    let p1 = r["legs"][1]["port"].as_u64().unwrap() as u16;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_pcmu(&s, ("127.0.0.1", p0), 1, 10, 0x80);
    for junk in [&b""[..], b"\x00", b"\x80", &[0xffu8; 300], b"GET / HTTP/1.1\r\n\r\n"] {
        s.send_to(junk, ("127.0.0.1", p1)).unwrap();
    }
    // A port nobody was given.
    s.send_to(&[0x80; 172], ("127.0.0.1", p1 + 10)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let st = c.request(json!({"cmd": "status", "call_id": "c"}));
    assert_eq!(st["legs"][0]["wrong_source"], 10, "{st}");
    assert_eq!(st["legs"][0]["packets"], 0);
    assert!(st["legs"][1]["malformed"].as_u64().unwrap() >= 4, "{st}");
    let stop = c.request(json!({"cmd": "stop", "call_id": "c"}));
    let (ch, samples) = read_wav(std::path::Path::new(stop["file"].as_str().unwrap()));
    assert!(channel(&samples, ch, 0).iter().all(|&x| x == 0), "refused packets are not recorded");
    assert_eq!(stop["legs"][0]["silent"], true);
    assert_eq!(c.request(json!({"cmd": "health"}))["status"], "ok");
}

#[test]
fn transfer_and_conference_legs_join_and_leave() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let (p0, p1, _) = start_two_legs(&mut c, "t");
    let s0 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s1 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = std::thread::spawn(move || send_pcmu(&s1, ("127.0.0.1", p1), 2, 25, 0x00));
    send_pcmu(&s0, ("127.0.0.1", p0), 1, 25, 0x80);
    t.join().unwrap();
    // The first agent leaves; a second joins on the freed channel; a supervisor is mixed in.
    let r = c.request(json!({"cmd": "remove_leg", "call_id": "t", "label": "agent"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        c.request(json!({"cmd": "remove_leg", "call_id": "t", "label": "agent"}))["error"]["code"],
        "unknown_leg"
    );
    let r = c.request(json!({"cmd": "add_leg", "call_id": "t", "leg": {"label": "agent2"}}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["leg"]["channel"], 1);
    let p2 = r["leg"]["port"].as_u64().unwrap() as u16;
    assert_eq!(
        c.request(json!({"cmd": "add_leg", "call_id": "t", "leg": {"label": "agent2"}}))["error"]["code"],
        "leg_exists"
    );
    let s2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_pcmu(&s2, ("127.0.0.1", p2), 3, 25, 0x00);
    // The old agent's port is closed: what it sends now is not recorded.
    let old = UdpSocket::bind("127.0.0.1:0").unwrap();
    old.send_to(&[0x80; 172], ("127.0.0.1", p1)).unwrap();
    let stop = c.request(json!({"cmd": "stop", "call_id": "t"}));
    assert_eq!(stop["ok"], true, "{stop}");
    let legs = stop["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 3);
    assert_eq!(legs[1]["packets"], 25);
    assert!(legs[1]["left_ms"].as_u64().is_some());
    assert_eq!(legs[2]["label"], "agent2");
    assert_eq!(legs[2]["packets"], 25);
    let (ch, samples) = read_wav(std::path::Path::new(stop["file"].as_str().unwrap()));
    assert_eq!(ch, 2);
    let right = channel(&samples, 2, 1);
    assert!(right.iter().filter(|&&x| x == -32124).count() >= 48 * 160, "both agents on the right channel");
}

#[test]
fn pause_masks_or_cuts_and_dtmf_in_a_pause_is_not_kept() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    for (call, mode) in [("m", "mask"), ("k", "cut")] {
        let r = c.request(json!({"cmd": "start", "call_id": call, "legs": [{"label": "a"}], "layout": "mono"}));
        let port = r["legs"][0]["port"].as_u64().unwrap() as u16;
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = std::thread::spawn(move || send_pcmu(&s, ("127.0.0.1", port), 1, 100, 0x80));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(c.request(json!({"cmd": "pause", "call_id": call, "mode": mode}))["ok"], true);
        assert_eq!(c.request(json!({"cmd": "pause", "call_id": call}))["error"]["code"], "invalid_state");
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(c.request(json!({"cmd": "resume", "call_id": call}))["ok"], true);
        sender.join().unwrap();
        let stop = c.request(json!({"cmd": "stop", "call_id": call}));
        let (_, samples) = read_wav(std::path::Path::new(stop["file"].as_str().unwrap()));
        let pause = &stop["pauses"][0];
        let paused_ms = pause["end_ms"].as_u64().unwrap() - pause["start_ms"].as_u64().unwrap();
        assert!((700..=1000).contains(&paused_ms), "{pause}");
        let loud = samples.iter().filter(|&&x| x == 32124).count();
        let sent = 100 * 160;
        let paused = (paused_ms * 8) as usize;
        // Either way the paused audio is gone; a cut also leaves the time out of the file.
        assert!(loud <= sent - paused + 160, "{mode}: {loud} loud samples");
        if mode == "cut" {
            assert!(samples.len() <= sent - paused + 4000, "{mode}: {} samples", samples.len());
        } else {
            assert!(samples.len() >= sent, "{mode}: {} samples", samples.len());
        }
    }
}

#[test]
fn port_exhaustion_is_refused_with_the_range_and_ports_come_back() {
    let d = Daemon::start(Options { pairs: 2, ..Options::default() });
    let mut c = d.client().unwrap();
    let r = c.request(json!({"cmd": "start", "call_id": "a", "legs": [{"label": "x"}, {"label": "y"}]}));
    assert_eq!(r["ok"], true, "{r}");
    let r = c.request(json!({"cmd": "start", "call_id": "b", "legs": [{"label": "x"}]}));
    assert_eq!(r["error"]["code"], "ports_exhausted", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exhausted: 1 calls active") && msg.contains("port_max"), "{msg}");
    assert_eq!(c.request(json!({"cmd": "stop", "call_id": "a"}))["ok"], true);
    let r = c.request(json!({"cmd": "start", "call_id": "b", "legs": [{"label": "x"}]}));
    assert_eq!(r["ok"], true, "ports are returned at stop: {r}");
}

#[test]
fn silent_calls_are_finalised_and_reported() {
    let d = Daemon::start(Options {
        extra: "[limits]\nsilence_timeout_s = 2\nleg_silent_event_s = 1\n".into(),
        ..Options::default()
    });
    let mut events = d.client().unwrap();
    assert_eq!(events.request(json!({"cmd": "subscribe"}))["subscribed"], true);
    let mut c = d.client().unwrap();
    let r = c.request(json!({"cmd": "start", "call_id": "quiet", "legs": [{"label": "a"}]}));
    assert_eq!(r["ok"], true);
    let silent = events.wait_event("leg_silent", Some("quiet"), Duration::from_secs(10));
    assert_eq!(silent["label"], "a");
    let done = events.wait_event("recording_finished", Some("quiet"), Duration::from_secs(10));
    assert_eq!(done["end_reason"], "silence_timeout");
    assert!(done["seq"].as_u64().unwrap() >= 2);
    assert_eq!(c.request(json!({"cmd": "status", "call_id": "quiet"}))["error"]["code"], "unknown_call");
    // A late subscriber can replay what it missed.
    let mut late = d.client().unwrap();
    let r = late.request(json!({"cmd": "subscribe", "since": 0}));
    assert_eq!(r["replayed"], 2, "{r}");
    assert_eq!(late.next_line().unwrap()["event"], "leg_silent");
}

#[test]
fn drain_refuses_new_calls() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    start_two_legs(&mut c, "before");
    assert_eq!(c.request(json!({"cmd": "drain"}))["draining"], true);
    let r = c.request(json!({"cmd": "start", "call_id": "after", "legs": [{"label": "a"}]}));
    assert_eq!(r["error"]["code"], "draining");
    assert_eq!(c.request(json!({"cmd": "health"}))["status"], "draining");
    std::thread::sleep(Duration::from_millis(500));
    let stop = c.request(json!({"cmd": "stop", "call_id": "before"}));
    assert_eq!(stop["ok"], true);
    // A call that sent nothing still lasts from start to stop.
    let ms = stop["duration_ms"].as_u64().unwrap();
    assert!((450..3000).contains(&ms), "{ms}");
    let (_, samples) = read_wav(std::path::Path::new(stop["file"].as_str().unwrap()));
    // duration_ms is the file's length rounded down to the millisecond: a live recording ends
    // on a sample, not on a millisecond (this compared `ms * 8` once and failed 2 runs in 3).
    let frames = samples.len() as u64 / 2;
    assert_eq!(frames * 1000 / 8000, ms, "{frames} frames");
}

#[test]
fn sigterm_finalises_active_recordings() {
    let mut d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let (p0, _, rid) = start_two_legs(&mut c, "mid-call");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_pcmu(&s, ("127.0.0.1", p0), 1, 50, 0x80);
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    let spool = d.spool();
    let names: Vec<String> =
        std::fs::read_dir(&spool).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
    let wav = names.iter().find(|n| n.ends_with(".wav.cvs") && n.contains(&rid)).expect("finished recording");
    let (_, samples) = read_wav(&spool.join(wav));
    assert!(samples.iter().filter(|&&x| x == 32124).count() >= 49 * 160);
    let sidecar: Value = serde_json::from_slice(&live::decrypt(&spool.join(format!("{rid}.meta.cvs")))).unwrap();
    assert_eq!(sidecar["end_reason"], "shutdown");
    assert!(!d.socket.exists(), "the socket file is removed at exit");
    assert!(d.log().contains("finalising 1 active recording"), "{}", d.log());
}

#[test]
fn a_quick_restart_gets_the_same_ports_and_socket() {
    let mut d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let (p0, _, _) = start_two_legs(&mut c, "x");
    assert_eq!(d.terminate(), Some(0));
    // Immediately: the control socket and the RTP ports are free again.
    let d2 = d.respawn();
    let mut c = d2.client().unwrap();
    let (q0, _, _) = start_two_legs(&mut c, "x");
    assert_eq!(p0, q0, "the first port of the range binds again at once");
}

#[test]
fn invalid_config_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[rtp]\nport_min = 16385\n").unwrap();
    let o =
        std::process::Command::new(live::bin()).args(["serve", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rtp.port_min") && err.contains("even"), "{err}");
    std::fs::write(&cfg, "[engine]\nbakend = \"epoll\"\n").unwrap();
    let o = std::process::Command::new(live::bin())
        .args(["serve", "--check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bakend"));
}

#[test]
fn ctl_reports_and_exit_codes() {
    let d = Daemon::start(Options::default());
    let sock = d.socket.to_str().unwrap().to_string();
    let ctl = |args: &[&str]| {
        std::process::Command::new(live::bin()).args(["ctl", "--socket", &sock]).args(args).output().unwrap()
    };
    let o = ctl(&["start", "k-1", "--leg", "customer", "--leg", "agent,mux", "--meta", "agent=7"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["legs"][1]["rtcp_mux"], true);
    let o = ctl(&["stop", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown_call"));
    let o = ctl(&["raw", r#"{"id":5,"cmd":"status","call_id":"k-1"}"#]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"], 5);
    let o = ctl(&["stop", "k-1"]);
    assert_eq!(o.status.code(), Some(0));
    // Format and rate from the command line; the daemon judges the values.
    let o = ctl(&["start", "k-2", "--leg", "a", "--format", "opus", "--sample-rate", "16000"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let stop: Value = serde_json::from_slice(&ctl(&["stop", "k-2"]).stdout).unwrap();
    assert_eq!((stop["format"].as_str(), stop["sample_rate"].as_u64()), (Some("opus"), Some(16000)), "{stop}");
    let o = ctl(&["start", "k-3", "--leg", "a", "--sample-rate", "auto", "--format", "wav-alaw"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let stop: Value = serde_json::from_slice(&ctl(&["stop", "k-3"]).stdout).unwrap();
    assert_eq!((stop["format"].as_str(), stop["sample_rate"].as_u64()), (Some("wav-alaw"), Some(8000)), "{stop}");
    let o = ctl(&["start", "k-4", "--leg", "a", "--sample-rate", "fast"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("sample_rate"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(live::bin())
        .args(["ctl", "--socket", "/nonexistent/control.sock", "health"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stderr).contains("callvault serve"));
    let o = ctl(&["start", "x"]);
    assert_eq!(o.status.code(), Some(2), "a start without legs is a usage error");
}

#[test]
fn systemd_is_told_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut d = Daemon::start(Options {
        env: vec![("NOTIFY_SOCKET".into(), path.to_str().unwrap().into()), ("WATCHDOG_USEC".into(), "400000".into())],
        ..Options::default()
    });
    let mut buf = [0u8; 512];
    let mut seen = Vec::new();
    let mut recv = |seen: &mut Vec<String>| {
        let n = notify.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    };
    recv(&mut seen);
    assert!(seen[0].starts_with("READY=1"), "{seen:?}");
    recv(&mut seen);
    assert_eq!(seen[1], "WATCHDOG=1");
    assert_eq!(d.terminate(), Some(0));
    while !seen.last().unwrap().starts_with("STOPPING=1") {
        recv(&mut seen);
    }
}

#[test]
fn after_kill_9_the_next_start_recovers_the_unfinished_recording() {
    let mut d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let (p0, _, rid) = start_two_legs(&mut c, "crash");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_pcmu(&s, ("127.0.0.1", p0), 1, 100, 0x80);
    std::thread::sleep(Duration::from_millis(600));
    let mut child = d.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no chance to finalise
    child.wait().unwrap();
    let spool = d.spool();
    let partial = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".wav.cvs.partial"))
        .expect("an unfinished recording");
    assert!(partial.to_string_lossy().contains(&rid));
    // Restart on the same data directory: the file is repaired and reported.
    let d2 = d.respawn();
    let mut c = d2.client().unwrap();
    let r = c.request(json!({"cmd": "subscribe", "since": 0}));
    assert_eq!(r["replayed"], 1, "{r}");
    let e = c.next_line().unwrap();
    assert_eq!(e["event"], "recording_recovered", "{e}");
    assert_eq!(e["recording_id"], rid.as_str());
    assert_eq!(e["end_reason"], "crash_recovered");
    assert_eq!(e["metadata"]["agent"], "1001", "the sidecar written at start keeps the metadata");
    assert_eq!(e["recovered"], true, "{e}");
    let wav = partial.with_extension("");
    assert!(!partial.exists() && wav.exists());
    // Re-sealed: it verifies (read_wav checks the signature), flagged as recovered.
    let (_, samples) = read_wav(&wav);
    // What was written before the kill is kept: at most one sealed chunk (8 KiB, 2,048 stereo
    // frames, 0.26 s) is lost. (With a 64 KiB buffer a kill -9 once lost 3 s of a 7 s call.)
    let loud = samples.iter().filter(|&&x| x == 32124).count();
    assert!(loud >= 100 * 160 - 2048, "{loud} samples of the 100 packets (16,000) survived");
}

/// Runs `callvault serve` on `cfg` that is expected to refuse to start; kills it (and fails) if
/// it is still running after 20 s.
fn serve_refused(cfg: &std::path::Path) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(live::bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("serve did not refuse to start: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn spool_names(spool: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(spool).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused_before_it_touches_the_spool() {
    let d = Daemon::start(Options::default());
    let pid = d.child.as_ref().unwrap().id();
    let mut c = d.client().unwrap();
    let (p0, _, rid) = start_two_legs(&mut c, "live");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_pcmu(&s, ("127.0.0.1", p0), 1, 50, 0x80);
    let before = spool_names(&d.spool());
    assert!(before.iter().any(|n| n.ends_with(".wav.cvs.partial") && n.contains(&rid)), "{before:?}");
    // B: the same data_dir with its own socket and ports; then A's own config again.
    let (min, max) = live::port_range(5);
    let data = d.dir.path().join("data");
    let b = d.dir.path().join("b.toml");
    std::fs::write(
        &b,
        format!(
            "data_dir = \"{}\"\n[control]\nsocket = \"{}\"\n[rtp]\nport_min = {min}\nport_max = {max}\n\
             [engine]\nbackend = \"epoll\"\nworkers = 1\npin_threads = false\n[metrics]\nlisten = \"\"\n[api]\nlisten = \"\"\n",
            data.display(),
            d.dir.path().join("b.sock").display()
        ),
    )
    .unwrap();
    for cfg in [b, d.dir.path().join("callvault.toml")] {
        let (code, err) = serve_refused(&cfg);
        assert_eq!(code, Some(1), "{err}");
        let want = format!(
            "data directory {} is in use by a running callvault (pid {pid}); each daemon needs its own data_dir",
            data.display()
        );
        assert!(err.contains(&want), "{err}");
        assert!(!err.contains("recovered"), "no recovery ran: {err}");
    }
    assert_eq!(spool_names(&d.spool()), before, "the running daemon's files are untouched");
    assert!(!d.dir.path().join("b.sock").exists());
    // A carries on: its recording finishes whole.
    let stop = c.request(json!({"cmd": "stop", "call_id": "live"}));
    assert_eq!(stop["ok"], true, "{stop}");
    assert_eq!(stop["end_reason"], "stopped");
    let (ch, samples) = read_wav(std::path::Path::new(stop["file"].as_str().unwrap()));
    assert!(channel(&samples, ch, 0).iter().filter(|&&x| x == 32124).count() >= 49 * 160);
    assert!(!d.log().contains("crash"), "{}", d.log());
}

#[test]
fn an_rtp_bind_address_of_another_host_is_refused_at_start() {
    // Binding only: nothing is ever sent to this address.
    if UdpSocket::bind(("10.255.255.1", 0)).is_ok() {
        eprintln!("skipping: 10.255.255.1 is an address of this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("callvault.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[rtp]\nbind = \"10.255.255.1\"\n[engine]\nbackend = \"epoll\"\nworkers = 1\n\
             [metrics]\nlisten = \"\"\n[api]\nlisten = \"\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let (code, err) = serve_refused(&cfg);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot bind RTP sockets on 10.255.255.1: Cannot assign requested address")
            && err.contains("set [rtp] bind to an address of this host"),
        "{err}"
    );
    assert!(!err.contains("serving"), "{err}");
}

#[test]
fn an_rtp_bind_error_other_than_port_in_use_is_reported_as_itself_not_as_exhaustion() {
    use callvault::engine::ports::{PortAllocator, PortError};
    // Binding only: nothing is ever sent to this address.
    if UdpSocket::bind(("10.255.255.1", 0)).is_ok() {
        eprintln!("skipping: 10.255.255.1 is an address of this host");
        return;
    }
    let mut a = PortAllocator::new([10, 255, 255, 1].into(), 40000, 40003, 65536);
    let e = a.allocate(false, 0).unwrap_err();
    assert!(matches!(e, PortError::Bind { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("10.255.255.1:40000") && msg.contains("Cannot assign requested address"), "{msg}");
    assert!(!msg.contains("exhausted") && !msg.contains("port_max"), "{msg}");
}

/// Writes an unfinished WAV (header and `frames` mono frames, never finalised) at `path`.
fn unfinished_wav(path: &std::path::Path, frames: usize) {
    use callvault::output::wav::{WavSpec, create_file};
    let mut w = create_file(path, WavSpec::pcm(8000, 1)).unwrap();
    w.write_samples(&vec![1000i16; frames]).unwrap();
    w.flush().unwrap();
}

#[test]
fn a_restart_cleans_up_after_failed_starts_and_never_reports_empty_ids() {
    let (u1, u2, u3, u4) = (
        "01KA0000000000000000000001",
        "01KA0000000000000000000002",
        "01KA0000000000000000000003",
        "01KA0000000000000000000004",
    );
    let mut d = Daemon::start(Options::default());
    assert_eq!(d.terminate(), Some(0));
    let spool = d.spool();
    let put = |name: &str, bytes: &[u8]| std::fs::write(spool.join(name), bytes).unwrap();
    // A start that failed on a full disk (before the fix): an empty file and a half-written sidecar.
    put(&format!("c-1-{u1}.wav.partial"), b"");
    put(&format!("c-1-{u1}.json.tmp"), b"{\"recording_id\": \"01KA");
    // Audio with no sidecar: recovered, its ids taken from the name.
    unfinished_wav(&spool.join(format!("c-2-{u2}.wav.partial")), 4000);
    // An empty file whose sidecar names it: reported once, as failed.
    put(&format!("c-3-{u3}.wav.partial"), b"");
    put(
        &format!("c-3-{u3}.json"),
        json!({"call_id": "c/3", "recording_id": u3, "state": "recording"}).to_string().as_bytes(),
    );
    // The sidecar of a start that failed, with no audio file at all.
    put(
        &format!("c-4-{u4}.json"),
        json!({"call_id": "c-4", "recording_id": u4, "state": "recording"}).to_string().as_bytes(),
    );
    // Not one of ours, and empty.
    put("junk.wav.partial", b"");
    let mut d2 = d.respawn();
    let mut c = d2.client().unwrap();
    let r = c.request(json!({"cmd": "subscribe", "since": 0}));
    assert_eq!(r["replayed"], 2, "{r}\n{}", d2.log());
    let events: Vec<Value> = (0..2).map(|_| c.next_line().unwrap()).collect();
    for e in &events {
        assert!(!e["call_id"].as_str().unwrap().is_empty() && !e["recording_id"].as_str().unwrap().is_empty(), "{e}");
    }
    let recovered = events.iter().find(|e| e["event"] == "recording_recovered").expect("recovered");
    assert_eq!((recovered["call_id"].as_str(), recovered["recording_id"].as_str()), (Some("c-2"), Some(u2)));
    assert_eq!(recovered["ids_from_file_name"], true);
    assert_eq!(recovered["duration_ms"], 500);
    let failed = events.iter().find(|e| e["event"] == "recording_failed").expect("failed");
    assert_eq!((failed["call_id"].as_str(), failed["recording_id"].as_str()), (Some("c/3"), Some(u3)));
    assert!(failed["error"].as_str().unwrap().contains("no audio"), "{failed}");
    assert!(!d2.log().contains("call \"\""), "{}", d2.log());
    let spool = d2.spool();
    assert_eq!(
        spool_names(&spool),
        vec![format!("c-2-{u2}.json"), format!("c-2-{u2}.wav"), format!("c-3-{u3}.json")],
        "{}",
        d2.log()
    );
    let (_, samples) = read_wav(&spool.join(format!("c-2-{u2}.wav")));
    assert_eq!(samples.len(), 4000);
    // The next restart has nothing left to report.
    assert_eq!(d2.terminate(), Some(0));
    let d3 = d2.respawn();
    let r = d3.client().unwrap().request(json!({"cmd": "subscribe", "since": 0}));
    assert_eq!(r["replayed"], 0, "{r}\n{}", d3.log());
}

/// Mounts a tmpfs of `bytes` on `dir` (root only); unmounted when dropped.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: &std::path::Path, bytes: usize) -> Option<TinyDisk> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", dir.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| TinyDisk(dir.to_path_buf()))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_start_that_fails_on_a_full_disk_leaves_no_file_behind() {
    // The free-space check off, so that the writes themselves fail.
    let d = Daemon::start(Options { extra: "[limits]\nmin_spool_free_mb = 0\n".into(), ..Options::default() });
    let spool = d.spool();
    // Two pages: a 4 KiB filler leaves room for a WAV header but not for the sidecar too.
    let Some(_disk) = TinyDisk::mount(&spool, 8192) else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let filler = spool.join("filler");
    std::fs::write(&filler, vec![0u8; 4096]).unwrap();
    let mut c = d.client().unwrap();
    for (round, names) in [("the sidecar cannot be written", ".meta.cvs"), ("the header cannot be written", "header")] {
        let r = c.request(json!({"cmd": "start", "call_id": "full", "legs": [{"label": "a"}, {"label": "b"}]}));
        assert_eq!(r["error"]["code"], "spool_failed", "{round}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(names), "{round}: {r}");
        assert_eq!(spool_names(&spool), vec!["filler".to_string()], "{round}");
        // Now not even a header fits.
        std::fs::write(&filler, vec![0u8; 8192]).unwrap();
    }
    assert_eq!(c.request(json!({"cmd": "health"}))["status"], "ok", "the daemon lives on");
    assert_eq!(c.request(json!({"cmd": "stats"}))["calls_active"], 0);
}

#[test]
fn idle_metrics_connections_do_not_delay_a_scrape() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d =
        Daemon::start(Options { extra: format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"), ..Options::default() });
    let idle: Vec<_> = (0..10).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let t = std::time::Instant::now();
    let mut http = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    let took = t.elapsed();
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("callvault_active_calls{worker=\"0\"} 0"), "{text}");
    assert!(took < Duration::from_secs(1), "a scrape behind 10 idle connections took {took:?}");
    // Beyond 64 open connections the newest is closed at once rather than kept waiting.
    let more: Vec<_> = (0..60).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let mut last = more.last().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 16];
    let closed = matches!(last.read(&mut buf), Ok(0)) || t.elapsed() > Duration::from_secs(2);
    assert!(closed, "the 71st connection was kept open");
    drop((idle, more));
    assert_eq!(d.client().unwrap().request(json!({"cmd": "health"}))["ok"], true);
    // A client that trickles its request a byte at a time is cut off after 2 s in all, not
    // after 2 s of silence (it once held its slot for as long as it kept trickling).
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t = std::time::Instant::now();
    let mut cut_off = false;
    for b in b"GET /metrics HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxx" {
        if slow.write_all(&[*b]).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if t.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    cut_off |= matches!(slow.read(&mut buf), Ok(0) | Err(_));
    assert!(cut_off && t.elapsed() < Duration::from_secs(6), "a trickling client kept its slot for {:?}", t.elapsed());
}

#[test]
fn ctl_gives_up_with_exit_code_4_when_the_daemon_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // Accepts and holds the connection, never replying.
    let _holder = std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(2).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    for args in [&["health"][..], &["raw", r#"{"cmd":"list"}"#]] {
        let t = std::time::Instant::now();
        let o = std::process::Command::new(live::bin())
            .args(["ctl", "--socket", path.to_str().unwrap(), "--timeout", "1"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {err}");
        assert!(err.contains("no reply from the daemon within 1 s"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}

/// A leg's `channel` at `start` is honoured, and one the recording does not have is refused
/// (it was once silently moved to channel 0); `channels` below 2 is refused for stereo.
#[test]
fn leg_channels_at_start_are_honoured_or_refused() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let r = c.request(json!({"cmd": "start", "call_id": "ch-bad", "channels": 2,
        "legs": [{"label": "customer"}, {"label": "agent", "channel": 5}]}));
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"agent\"") && msg.contains("channel 5") && msg.contains("2 channel"), "{msg}");
    let r = c.request(json!({"cmd": "start", "call_id": "ch-one", "channels": 1,
        "legs": [{"label": "customer"}, {"label": "agent"}]}));
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // Nothing was left behind by the refusals: the same ids start fine now.
    let r = c.request(json!({"cmd": "start", "call_id": "ch-bad",
        "legs": [{"label": "customer", "channel": 1}, {"label": "agent", "channel": 0}]}));
    assert_eq!(r["ok"], true, "{r}");
    let p0 = r["legs"][0]["port"].as_u64().unwrap() as u16;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_pcmu(&s, ("127.0.0.1", p0), 1, 25, 0x80);
    std::thread::sleep(Duration::from_millis(400));
    let stop = c.request(json!({"cmd": "stop", "call_id": "ch-bad"}));
    assert_eq!(stop["legs"][0]["channel"], 1, "{stop}");
    let (channels, samples) = read_wav(std::path::Path::new(stop["file"].as_str().unwrap()));
    let loud = |ch| channel(&samples, channels, ch).iter().filter(|&&x| x == 32124).count();
    assert_eq!((loud(0), loud(1)), (0, 25 * 160), "the customer is on the channel it asked for");
}

#[test]
fn a_g722_leg_and_a_pcmu_leg_record_at_16_khz_with_equal_channels() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    for bad in [json!(44100), json!("16000"), json!(0), json!(4_294_975_296u64), json!(8000.5)] {
        let r = c.request(json!({"cmd": "start", "call_id": "r", "sample_rate": bad, "legs": [{"label": "a"}]}));
        assert_eq!(r["error"]["code"], "bad_request", "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("8000, 16000, 48000 or \"auto\""), "{r}");
    }
    // Declared: G.722 on the customer leg, so the recording is 16 kHz ("auto").
    let r = c.request(json!({"cmd": "start", "call_id": "wb", "legs": [
        {"label": "customer", "payload_types": {"9": "G722/8000"}}, {"label": "agent"}]}));
    assert_eq!(r["ok"], true, "{r}");
    let p0 = r["legs"][0]["port"].as_u64().unwrap() as u16;
    let p1 = r["legs"][1]["port"].as_u64().unwrap() as u16;
    let customer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = std::thread::spawn(move || send_pcmu(&agent, ("127.0.0.1", p1), 2, 50, 0x80));
    let mut enc = ezk_g722::libg722::encoder::Encoder::new(ezk_g722::libg722::Bitrate::Mode1_64000, false, false);
    let tone: Vec<i16> = (0..320).map(|i| (8000.0 * (i as f64 * 0.2).sin()) as i16).collect();
    let start = std::time::Instant::now();
    for i in 0..50u16 {
        let mut p = vec![0x80, 9];
        p.extend_from_slice(&i.to_be_bytes());
        p.extend_from_slice(&(u32::from(i) * 160).to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&enc.encode(&tone));
        customer.send_to(&p, ("127.0.0.1", p0)).unwrap();
        if let Some(w) = (start + std::time::Duration::from_millis(20 * (u64::from(i) + 1)))
            .checked_duration_since(std::time::Instant::now())
        {
            std::thread::sleep(w);
        }
    }
    t.join().unwrap();
    let stop = c.request(json!({"cmd": "stop", "call_id": "wb"}));
    assert_eq!(stop["ok"], true, "{stop}");
    assert_eq!(stop["sample_rate"], 16000, "{stop}");
    assert_eq!(stop["legs"][0]["unsupported_codec"], Value::Null);
    let (channels, samples) = read_wav(Path::new(stop["file"].as_str().unwrap()));
    assert_eq!(channels, 2);
    let (left, right) = (channel(&samples, 2, 0), channel(&samples, 2, 1));
    assert_eq!(left.len(), right.len());
    assert_eq!(left.len() as u64 / 16, stop["duration_ms"].as_u64().unwrap());
    // Each leg's second of audio is there at 16 kHz: the G.722 tone, and µ-law 0x80 upsampled.
    assert!(left.iter().filter(|s| s.unsigned_abs() > 4000).count() > 8000, "G.722 tone on the left");
    assert!(right.iter().filter(|s| **s > 30000).count() > 45 * 320, "PCMU on the right, 16 kHz");
    // A fixed rate in the start wins over auto.
    let r = c.request(json!({"cmd": "start", "call_id": "nb", "sample_rate": 8000, "legs": [
        {"label": "customer", "payload_types": {"9": "G722/8000"}}]}));
    assert_eq!(r["ok"], true, "{r}");
    let stop = c.request(json!({"cmd": "stop", "call_id": "nb"}));
    assert_eq!(stop["sample_rate"], 8000, "{stop}");
}

/// Unmounts a test's tmpfs when dropped (after the daemon on it, declared later, is gone).
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

// Found when tried to break: a recording the recorder ended because its disk was full said
// `end_reason: "stopped"`, as if the ACD had stopped it.
#[test]
fn a_full_disk_ends_the_recording_as_write_failed_and_keeps_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs", data.to_str().unwrap()])
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Tmpfs(data.clone());
    let (min, max) = live::port_range(4);
    let cfg = dir.path().join("callvault.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[rtp]\nport_min = {min}\nport_max = {max}\n[engine]\nbackend = \"epoll\"\nworkers = 1\n\
             pin_threads = false\n[metrics]\nlisten = \"\"\n[api]\nlisten = \"\"\n[storage]\nship = false\n[limits]\nmin_spool_free_mb = 0\n\
             [recording]\nencryption = \"off\"\n",
            data.display()
        ),
    )
    .unwrap();
    let d = Daemon::spawn(dir, &cfg);
    let mut c = d.client().unwrap();
    assert_eq!(c.request(json!({"cmd": "subscribe"}))["ok"], true);
    // 48 kHz stereo WAV: 192 KB a second fills 600 KiB in about three.
    let r = c.request(json!({"cmd": "start", "call_id": "full", "sample_rate": 48000, "legs": [{"label": "a"}]}));
    assert_eq!(r["ok"], true, "{r}");
    let port = r["legs"][0]["port"].as_u64().unwrap() as u16;
    send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", port), 1, 250, 0x80);
    let failed = c.wait_event("recording_failed", Some("full"), Duration::from_secs(10));
    assert_eq!(failed["end_reason"], "write_failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("No space left"), "{failed}");
    let partials = failed["partial_files"].as_array().unwrap();
    assert_eq!(partials.len(), 1, "{failed}");
    let kept = std::fs::metadata(partials[0].as_str().unwrap()).unwrap().len();
    assert!(kept > 200_000, "what was written is kept: {kept} bytes");
}
