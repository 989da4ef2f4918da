//! End to end: `callvault serve` records the real two-leg captures replayed into the ports it
//! hands out, and each leg's audio equals, sample for sample, what `callvault import` makes of
//! the same capture.
//!
//! Alignment: in the live recording, time 0 is the `start` command and a leg's first packet lands
//! at `start_offset_ms` (when the replay happened to deliver it); in the import, time 0 is the
//! capture's first packet. So each leg is compared from its own first sample on: live samples
//! `[live_start, live_start + n)` against imported samples `[import_start, import_start + n)`,
//! where `n` is everything the import has for that leg; after that the live leg must be silent.
//! Both runs use `--layout separate`/`"layout":"separate"`, one file per leg.
//!
//! The test runs with the io_uring back end and with the epoll fallback. Where io_uring is
//! unavailable the io_uring run is skipped, except under `CI`, where it fails.

mod captures;
mod live;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use callvault::capture::CaptureReader;
use callvault::core::rtp::{self, Packet};
use live::{Daemon, Options, read_wav};
use serde_json::{Value, json};

const CAPTURES: [&str; 2] = ["projectrtp_ulaw_2calls_rtcp_dtmf.pcap", "pkts_sip_call_pcmu.pcap"];

/// RTP flows in order of first packet: the order `callvault replay` sends them in.
fn rtp_flows(capture: &Path) -> Vec<(SocketAddr, SocketAddr)> {
    let mut r = CaptureReader::open(capture).unwrap();
    let mut order = Vec::new();
    while let Some(d) = r.next_datagram().unwrap() {
        let key = (d.src, d.dst);
        if !order.contains(&key) && matches!(rtp::parse(&d.payload), Ok(Packet::Rtp(_))) {
            order.push(key);
        }
    }
    order
}

fn import(capture: &Path, out: &Path) -> Value {
    let o = Command::new(live::bin())
        .args(["import", capture.to_str().unwrap(), "--out", out.to_str().unwrap(), "--layout", "separate", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn run(backend: &'static str) {
    let Some(dir) = captures::dir() else { return };
    let d = Daemon::start_or_skip(Options { backend, pairs: 40, ..Options::default() });
    let Some(d) = d else { return };
    let work = tempfile::tempdir().unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = d.client().unwrap();
    // (capture, call index in the import, leg index) → live call id and leg port.
    let mut replays = Vec::new();
    let mut expected = Vec::new();
    for (ci, name) in CAPTURES.iter().enumerate() {
        let capture = dir.join(name);
        let report = import(&capture, &work.path().join(format!("import-{ci}")));
        let mut port_of_flow: HashMap<(String, String), u16> = HashMap::new();
        for (ri, rec) in report["recordings"].as_array().unwrap().iter().enumerate() {
            let call_id = format!("e2e-{ci}-{ri}");
            let legs: Vec<Value> = rec["legs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| json!({"label": l["label"], "payload_types": l["payload_types"]}))
                .collect();
            let r = c.request(json!({"cmd": "start", "call_id": call_id, "layout": "separate", "legs": legs}));
            assert_eq!(r["ok"], true, "{r}");
            for (li, leg) in rec["legs"].as_array().unwrap().iter().enumerate() {
                let port = r["legs"][li]["port"].as_u64().unwrap() as u16;
                if let (Some(src), Some(dst)) = (leg["src"].as_str(), leg["dst"].as_str()) {
                    port_of_flow.insert((src.to_string(), dst.to_string()), port);
                }
                expected.push((call_id.clone(), li, leg.clone()));
            }
        }
        let to: Vec<String> = rtp_flows(&capture)
            .iter()
            .map(|(s, t)| match port_of_flow.get(&(s.to_string(), t.to_string())) {
                Some(p) => format!("127.0.0.1:{p}"),
                None => sink.local_addr().unwrap().to_string(),
            })
            .collect();
        replays.push(
            Command::new(live::bin())
                .args(["replay", capture.to_str().unwrap(), "--to", &to.join(","), "--json", "--quiet"])
                .output_async(),
        );
    }
    for r in replays {
        let o = r.join().unwrap();
        assert_eq!(o.status.code(), Some(0), "replay: {}", String::from_utf8_lossy(&o.stderr));
    }
    // Past the reorder window, then stop every call.
    std::thread::sleep(Duration::from_millis(400));
    let mut stops: HashMap<String, Value> = HashMap::new();
    for (call_id, _, _) in &expected {
        if !stops.contains_key(call_id) {
            let s = c.request(json!({"cmd": "stop", "call_id": call_id}));
            assert_eq!(s["ok"], true, "{s}");
            stops.insert(call_id.clone(), s);
        }
    }
    let mut compared = 0;
    for (call_id, li, imported) in &expected {
        let live_leg = &stops[call_id]["legs"][*li];
        let label = imported["label"].as_str().unwrap();
        let what = format!("{backend}: {call_id} leg {label}");
        for key in ["packets", "lost", "late", "duplicates", "ssrcs", "payload_types", "silent"] {
            assert_eq!(live_leg[key], imported[key], "{what}: {key}");
        }
        let (_, reference) = read_wav(Path::new(imported["file"].as_str().unwrap()));
        let (_, recorded) = read_wav(Path::new(live_leg["file"].as_str().unwrap()));
        let Some(import_start) = imported["start_offset_ms"].as_u64() else {
            assert!(recorded.iter().all(|&s| s == 0), "{what}: a leg that never sent is silent");
            continue;
        };
        let live_start = live_leg["start_offset_ms"].as_u64().expect("the live leg started") as usize * 8;
        let import_start = import_start as usize * 8;
        let n = reference.len() - import_start;
        assert!(recorded.len() >= live_start + n, "{what}: live {} samples, need {}", recorded.len(), live_start + n);
        let live_part = &recorded[live_start..live_start + n];
        let ref_part = &reference[import_start..];
        if let Some(i) = live_part.iter().zip(ref_part).position(|(a, b)| a != b) {
            panic!("{what}: first difference at sample {i} of {n} ({} vs {})", live_part[i], ref_part[i]);
        }
        assert!(recorded[live_start + n..].iter().all(|&s| s == 0), "{what}: nothing after the capture's end");
        // DTMF: same events, same durations, same offsets relative to the leg's start.
        let events = |v: &Value, start: usize| -> Vec<(i64, u64)> {
            v["dtmf"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["offset_ms"].as_i64().unwrap() - (start / 8) as i64, e["duration_ms"].as_u64().unwrap()))
                .collect()
        };
        let (le, ie) = (events(live_leg, live_start), events(imported, import_start));
        assert_eq!(le.len(), ie.len(), "{what}: DTMF events");
        for (a, b) in le.iter().zip(&ie) {
            assert!((a.0 - b.0).abs() <= 1 && a.1 == b.1, "{what}: DTMF {a:?} vs {b:?}");
        }
        compared += 1;
    }
    assert!(compared >= 5, "{backend}: compared {compared} legs");
}

trait OutputAsync {
    fn output_async(&mut self) -> std::thread::JoinHandle<std::process::Output>;
}

impl OutputAsync for Command {
    fn output_async(&mut self) -> std::thread::JoinHandle<std::process::Output> {
        let child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

#[test]
fn live_recording_equals_import_with_io_uring() {
    run("io_uring");
}

#[test]
fn live_recording_equals_import_with_epoll() {
    run("epoll");
}
