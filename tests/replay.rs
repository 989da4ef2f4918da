//! `callvault replay` as a user runs it: streams found in order of first packet, sent
//! byte-identical and in order to UDP sockets bound here, paced, looped, with RTCP, and the exit
//! codes.

mod captures;
mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use callvault::capture::{CaptureReader, parse_sip};
use callvault::core::rtp::{self, Packet};
use common::pcapgen::PcapBuilder;
use common::{MS, rtp};
use serde_json::Value;

fn callvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callvault")).args(args).output().expect("run callvault")
}

/// What one socket received: (sender, datagram) in arrival order.
type Received = Vec<(SocketAddr, Vec<u8>)>;

/// UDP sockets on 127.0.0.1, each drained by a thread until [`Receivers::finish`].
struct Receivers {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Received>>,
}

impl Receivers {
    fn bind(sockets: Vec<UdpSocket>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let addrs = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let threads = sockets
            .into_iter()
            .map(|s| {
                let stop = stop.clone();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match s.recv_from(&mut buf) {
                            Ok((n, from)) => got.push((from, buf[..n].to_vec())),
                            // Everything sent is queued before the sender exits: once told to
                            // stop, an empty socket is done.
                            Err(_) if stop.load(Ordering::SeqCst) => return got,
                            Err(_) => {}
                        }
                    }
                })
            })
            .collect();
        Receivers { addrs, stop, threads }
    }

    fn new(n: usize) -> Self {
        Self::bind((0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect())
    }

    /// `n` pairs of sockets on ports p and p + 1 (RTP and RTCP): addresses 2i and 2i + 1.
    fn pairs(n: usize) -> Self {
        let mut sockets = Vec::new();
        while sockets.len() < 2 * n {
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = a.local_addr().unwrap().port();
            if let Some(b) = port.checked_add(1).and_then(|p| UdpSocket::bind(("127.0.0.1", p)).ok()) {
                sockets.push(a);
                sockets.push(b);
            }
        }
        Self::bind(sockets)
    }

    fn to_arg(&self) -> String {
        self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    /// What each socket received: (sender, datagram) in arrival order.
    fn finish(self) -> Vec<Received> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads.into_iter().map(|t| t.join().unwrap()).collect()
    }
}

/// Runs `callvault replay CAPTURE ARGS… --json`; returns exit code, JSON, stderr, wall time.
fn replay_json(capture: &Path, args: &[&str]) -> (i32, Value, String, Duration) {
    let mut all = vec!["replay", capture.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let t = Instant::now();
    let o = callvault(&all);
    let wall = t.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {}\nstderr: {stderr}", String::from_utf8_lossy(&o.stdout))
    });
    (o.status.code().unwrap(), v, stderr, wall)
}

/// The datagrams of flow src→dst in capture order, as the capture holds them (SIP left out;
/// RTCP kept only when `rtcp`).
fn flow_datagrams(capture: &Path, src: &str, dst: &str, rtcp: bool) -> Vec<Vec<u8>> {
    let mut r = CaptureReader::open(capture).unwrap();
    let mut out = Vec::new();
    while let Ok(Some(d)) = r.next_datagram() {
        if d.src.to_string() != src || d.dst.to_string() != dst || parse_sip(&d.payload).is_some() {
            continue;
        }
        if !rtcp && matches!(rtp::parse(&d.payload), Ok(Packet::Rtcp(_))) {
            continue;
        }
        out.push(d.payload);
    }
    out
}

fn v4(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// An RTCP receiver report (8 bytes) from `ssrc`, with a marker byte to tell them apart.
fn rtcp_rr(ssrc: u32, mark: u8) -> Vec<u8> {
    let mut v = vec![0x81, 201, 0, 7];
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(&[mark; 24]);
    v
}

const T0: u64 = 1_700_000_000_000_000_000;

/// Three 50-packet, 20 ms streams: A 10.0.0.1:4000→10.0.0.2:5000 from 0 ms (sequence and
/// timestamp wrap; RTCP on 4001→5001), B the reverse from 100 ms (one RTCP muxed on the flow),
/// C 10.0.0.3:6000→10.0.0.4:7000 from 300 ms. Also SIP, a non-RTP UDP flow, and a few-packet
/// stream that is not RTP enough. The records are written out of flow order, the way a capture
/// interleaves them.
fn generated() -> (PcapBuilder, Vec<u64>) {
    let (a_src, a_dst) = (v4("10.0.0.1:4000"), v4("10.0.0.2:5000"));
    let (c_src, c_dst) = (v4("10.0.0.3:6000"), v4("10.0.0.4:7000"));
    let mut events: Vec<(u64, SocketAddrV4, SocketAddrV4, Vec<u8>)> = Vec::new();
    let sip = common::pcapgen::sip_with_sdp("INVITE sip:b@x SIP/2.0", "gen-1", "10.0.0.1", 4000, &[(0, "PCMU/8000")]);
    events.push((0, v4("10.0.0.1:5060"), v4("10.0.0.2:5060"), sip));
    for (i, s) in common::pcmu_stream(50, 0, 65_500, u32::MAX - 3_000, 0xaaaa_0001, 1).into_iter().enumerate() {
        events.push((s.at + 5 * MS, a_src, a_dst, s.bytes));
        if i % 20 == 10 {
            events.push((s.at + 6 * MS, v4("10.0.0.1:4001"), v4("10.0.0.2:5001"), rtcp_rr(0xaaaa_0001, i as u8)));
        }
    }
    for (i, s) in common::pcmu_stream(50, 0, 7, 1_000, 0xbbbb_0002, 2).into_iter().enumerate() {
        events.push((s.at + 105 * MS, a_dst, a_src, s.bytes));
        if i == 25 {
            events.push((s.at + 106 * MS, a_dst, a_src, rtcp_rr(0xbbbb_0002, 0xee)));
        }
    }
    for s in common::pcmu_stream(50, 0, 300, 48_000, 0xcccc_0003, 3) {
        events.push((s.at + 305 * MS, c_src, c_dst, s.bytes));
    }
    // Not RTP: a DNS-like flow, and a flow of version-2 packets with a new SSRC each time.
    for i in 0..5u64 {
        events.push((i * 40 * MS + 7 * MS, v4("10.0.0.9:53"), v4("10.0.0.1:3333"), vec![0x12, 0x34, 1, 0, 0, 1]));
        events.push((i * 40 * MS + 8 * MS, v4("10.0.0.9:9000"), v4("10.0.0.1:9000"), rtp(0, 1, 1, i as u32, &[0; 20])));
    }
    events.sort_by_key(|e| e.0);
    let mut b = PcapBuilder::default();
    let mut ends = Vec::new();
    for (at, src, dst, payload) in events {
        b.udp(T0 + at, src, dst, &payload);
        ends.push(b.bytes().len() as u64);
    }
    (b, ends)
}

fn write_generated(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("gen.pcap");
    std::fs::write(&path, generated().0.bytes()).unwrap();
    path
}

/// Every datagram of each sent stream arrived at its socket, byte-identical and in order, from
/// one source port per stream.
fn assert_streams_arrived(capture: &Path, v: &Value, addrs: &[SocketAddr], got: &[Received], what: &str) {
    for (i, s) in v["streams"].as_array().unwrap().iter().enumerate() {
        let (src, dst) = (s["src"].as_str().unwrap(), s["dst"].as_str().unwrap());
        let want = flow_datagrams(capture, src, dst, false);
        let recv: Vec<&Vec<u8>> = got[i].iter().map(|(_, d)| d).collect();
        assert_eq!(s["packets"].as_u64().unwrap(), want.len() as u64, "{what}: stream {i} packets");
        assert_eq!(recv.len(), want.len(), "{what}: stream {i} {src}->{dst}: datagrams received");
        if let Some(k) = recv.iter().zip(&want).position(|(a, b)| *a != b) {
            panic!("{what}: stream {i} {src}->{dst}: datagram {k} differs or is out of order");
        }
        let port = s["source_port"].as_u64().unwrap();
        assert!(got[i].iter().all(|(from, _)| u64::from(from.port()) == port), "{what}: one source port per stream");
        assert_eq!(s["sent_to"].as_str().unwrap(), addrs[i].to_string(), "{what}: stream {i} goes to address {i}");
    }
    let ports: Vec<u64> = v["streams"].as_array().unwrap().iter().map(|s| s["source_port"].as_u64().unwrap()).collect();
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ports.len(), "{what}: distinct source ports {ports:?}");
}

#[test]
fn generated_capture_streams_in_order_of_first_packet_byte_identical_and_paced() {
    let tmp = tempfile::tempdir().unwrap();
    let capture = write_generated(tmp.path());
    let rx = Receivers::new(3);
    // One address given alone, two as a comma-separated list: both forms add up.
    let first = rx.addrs[0].to_string();
    let rest = format!("{},{}", rx.addrs[1], rx.addrs[2]);
    let (code, v, stderr, wall) = replay_json(&capture, &["--to", &first, "--to", &rest, "--speed", "10"]);
    let addrs = rx.addrs.clone();
    let got = rx.finish();
    assert_eq!(code, 0, "{stderr}");
    let streams = v["streams"].as_array().unwrap();
    let order: Vec<(&str, &str, &str, u64)> = streams
        .iter()
        .map(|s| {
            (
                s["src"].as_str().unwrap(),
                s["dst"].as_str().unwrap(),
                s["ssrc"].as_str().unwrap(),
                s["first_offset_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("10.0.0.1:4000", "10.0.0.2:5000", "0xaaaa0001", 0),
            ("10.0.0.2:5000", "10.0.0.1:4000", "0xbbbb0002", 100),
            ("10.0.0.3:6000", "10.0.0.4:7000", "0xcccc0003", 300),
        ],
        "RTP streams only, in order of first packet"
    );
    assert_eq!(v["skipped_streams"], serde_json::json!([]));
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["loops"], 1);
    assert_eq!(v["packets_sent"], 150, "RTCP (own port or muxed) only with --rtcp");
    assert_streams_arrived(&capture, &v, &addrs, &got, "generated");
    for s in streams {
        assert_eq!(s["rtcp_packets"], 0);
        assert_eq!(s["rtcp_sent_to"], Value::Null);
    }
    // Pacing: the capture spans 305..1285 ms, so 980 ms at speed 10 is 98 ms; an absolute
    // schedule can never finish early, and a loaded machine gets generous slack.
    let duration = v["duration_ms"].as_u64().unwrap();
    assert!((97..2_000).contains(&duration), "duration_ms {duration}");
    assert!(wall >= Duration::from_millis(97), "{wall:?}");
}

#[test]
fn rtcp_goes_to_port_plus_one_from_port_plus_one_and_muxed_rtcp_to_the_same_port() {
    let tmp = tempfile::tempdir().unwrap();
    let capture = write_generated(tmp.path());
    let rx = Receivers::pairs(2);
    let to = format!("{},{}", rx.addrs[0], rx.addrs[2]);
    let (code, v, stderr, _) = replay_json(&capture, &["--to", &to, "--speed", "10", "--rtcp", "--quiet"]);
    let addrs = rx.addrs.clone();
    let got = rx.finish();
    assert_eq!(code, 0, "{stderr}");
    let streams = &v["streams"];
    // Stream 0 (A): RTP on the first socket, its two RTCP reports on the socket above it.
    let a_rtp = flow_datagrams(&capture, "10.0.0.1:4000", "10.0.0.2:5000", true);
    let a_rtcp = flow_datagrams(&capture, "10.0.0.1:4001", "10.0.0.2:5001", true);
    assert_eq!(a_rtcp.len(), 2);
    assert_eq!(got[0].iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), a_rtp);
    assert_eq!(got[1].iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), a_rtcp);
    assert_eq!(streams[0]["rtcp_packets"], 2);
    assert_eq!(streams[0]["rtcp_sent_to"].as_str().unwrap(), addrs[1].to_string());
    let rtp_port = got[0][0].0.port();
    assert!(got[1].iter().all(|(from, _)| from.port() == rtp_port + 1), "RTCP leaves from the RTP port + 1");
    // Stream 1 (B): its muxed RTCP arrives on the same socket, in its place in the flow.
    let b_all = flow_datagrams(&capture, "10.0.0.2:5000", "10.0.0.1:4000", true);
    assert_eq!(b_all.len(), 51);
    assert_eq!(got[2].iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), b_all);
    assert!(got[3].is_empty());
    assert_eq!(streams[1]["packets"], 50);
    assert_eq!(streams[1]["rtcp_packets"], 1);
    assert_eq!(streams[1]["rtcp_sent_to"], streams[1]["sent_to"]);
    assert_eq!(v["packets_sent"], 50 + 2 + 51);
}

fn seq_ts(d: &[u8]) -> (u16, u32) {
    (u16::from_be_bytes([d[2], d[3]]), u32::from_be_bytes([d[4], d[5], d[6], d[7]]))
}

#[test]
fn loop_continues_sequence_numbers_and_timestamps_and_extra_streams_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let capture = write_generated(tmp.path());
    let rx = Receivers::new(1);
    let (code, v, stderr, wall) = replay_json(&capture, &["--to", &rx.to_arg(), "--speed", "20", "--loop", "2"]);
    let got = rx.finish();
    assert_eq!(code, 0, "{stderr}");
    // Three streams, one address: the first is sent, the others named on stderr and in the JSON.
    let skipped: Vec<u64> =
        v["skipped_streams"].as_array().unwrap().iter().map(|s| s["index"].as_u64().unwrap()).collect();
    assert_eq!(skipped, vec![1, 2]);
    assert_eq!(v["skipped_streams"][1]["src"], "10.0.0.3:6000");
    assert!(stderr.contains("stream 1 (10.0.0.2:5000 -> 10.0.0.1:4000"), "{stderr}");
    assert!(stderr.contains("3 stream(s) found, 1 --to address(es) given"), "{stderr}");
    assert_eq!(v["loops"], 2);
    assert_eq!(v["streams"][0]["packets"], 100);
    let want = flow_datagrams(&capture, "10.0.0.1:4000", "10.0.0.2:5000", false);
    let recv: Vec<&Vec<u8>> = got[0].iter().map(|(_, d)| d).collect();
    assert_eq!(recv.len(), 100);
    // First pass unchanged; the repeat is the same packets moved on by one span + one step.
    assert!(recv[..50].iter().zip(&want).all(|(a, b)| *a == b));
    for (a, b) in recv[50..].iter().zip(&want) {
        let ((sa, ta), (sb, tb)) = (seq_ts(a), seq_ts(b));
        assert_eq!(sa, sb.wrapping_add(50));
        assert_eq!(ta, tb.wrapping_add(50 * 160));
        assert_eq!((&a[..2], &a[8..]), (&b[..2], &b[8..]), "only sequence number and timestamp change");
    }
    // One continuous stream across the seam (and across both wraps).
    for w in recv.windows(2) {
        let ((s0, t0), (s1, t1)) = (seq_ts(w[0]), seq_ts(w[1]));
        assert_eq!(s1, s0.wrapping_add(1));
        assert_eq!(t1, t0.wrapping_add(160));
    }
    // Pacing continues: stream A alone spans 980 ms, so the repeat starts at 1000 ms and the
    // last packet goes at 1980 ms of capture time: 99 ms at speed 20.
    let duration = v["duration_ms"].as_u64().unwrap();
    assert!((98..2_000).contains(&duration), "duration_ms {duration}");
    assert!(wall >= Duration::from_millis(98));
}

#[test]
fn human_summary_on_stderr_without_json() {
    let tmp = tempfile::tempdir().unwrap();
    let capture = write_generated(tmp.path());
    let rx = Receivers::new(2);
    let o = callvault(&["replay", capture.to_str().unwrap(), "--to", &rx.to_arg(), "--speed", "50"]);
    rx.finish();
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("stream 0  10.0.0.1:4000 -> 10.0.0.2:5000  ssrc 0xaaaa0001  50 packets -> 127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("stream 1  10.0.0.2:5000 -> 10.0.0.1:4000"), "{err}");
    assert!(err.contains("sent 100 packets"), "{err}");
}

#[test]
fn truncated_capture_sends_what_is_readable_and_exits_3_naming_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, ends) = generated();
    // Cut inside the record after the 60th: 60 records stay whole.
    let cut = ends[59] + 20;
    let path = tmp.path().join("cut.pcap");
    std::fs::write(&path, &b.bytes()[..cut as usize]).unwrap();
    let rx = Receivers::new(1);
    let (code, v, stderr, _) = replay_json(&path, &["--to", &rx.to_arg(), "--speed", "20"]);
    let got = rx.finish();
    assert_eq!(code, 3, "{stderr}");
    let err = &v["errors"][0];
    assert_eq!(err["kind"], "capture");
    assert_eq!(err["offset"].as_u64(), Some(ends[59]));
    assert!(err["message"].as_str().unwrap().contains(&format!("truncated at byte {}", ends[59])), "{err}");
    assert!(stderr.contains("truncated at byte"), "{stderr}");
    let want = flow_datagrams(&path, "10.0.0.1:4000", "10.0.0.2:5000", false);
    assert!(want.len() > 20, "{}", want.len());
    assert_eq!(got[0].iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), want);
}

#[test]
fn fewer_streams_than_addresses_is_exit_1_naming_both_counts_and_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let capture = write_generated(tmp.path());
    let rx = Receivers::new(4);
    let o = callvault(&["replay", capture.to_str().unwrap(), "--to", &rx.to_arg(), "--speed", "50"]);
    let got = rx.finish();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("3 RTP stream(s) but 4 destination(s)"), "{err}");
    assert!(got.iter().all(Vec::is_empty), "nothing sent");
    let (code, v, _, _) = replay_json(&capture, &["--to", &rx_list(5)]);
    assert_eq!(code, 1);
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("3 RTP stream(s) but 5 destination(s)"));
}

fn rx_list(n: usize) -> String {
    (0..n).map(|i| format!("127.0.0.1:{}", 9 + i)).collect::<Vec<_>>().join(",")
}

#[test]
fn usage_errors_are_exit_2_and_unreadable_captures_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let capture = write_generated(tmp.path());
    let c = capture.to_str().unwrap();
    for bad_to in ["nonsense", "127.0.0.1", "127.0.0.1:70000", ":5000", "127.0.0.1:5000,", "[::1]5000"] {
        let o = callvault(&["replay", c, "--to", bad_to]);
        assert_eq!(o.status.code(), Some(2), "--to {bad_to:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("--to"), "the message names the option");
    }
    assert_eq!(callvault(&["replay", c]).status.code(), Some(2), "--to is required");
    for bad_speed in ["0", "-2", "abc", "inf", "NaN"] {
        assert_eq!(callvault(&["replay", c, "--to", "127.0.0.1:9", "--speed", bad_speed]).status.code(), Some(2));
    }
    assert_eq!(callvault(&["replay", c, "--to", "127.0.0.1:9", "--loop", "0"]).status.code(), Some(2));
    let help = callvault(&["replay", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Examples:") && help.contains("--loop"), "{help}");
    // Not a capture, or missing: exit 1 with the reason.
    let junk = tmp.path().join("junk.pcap");
    std::fs::write(&junk, b"<html>not a capture</html>").unwrap();
    let o = callvault(&["replay", junk.to_str().unwrap(), "--to", "127.0.0.1:9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a pcap or pcapng file"));
    let o = callvault(&["replay", tmp.path().join("missing.pcap").to_str().unwrap(), "--to", "127.0.0.1:9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.pcap"));
}

#[test]
fn shared_captures_arrive_byte_identical_in_order_and_paced() {
    let Some(dir) = captures::dir() else { return };
    // Streams the reference decode found must be among those replayed, with their SSRC.
    let mut reference: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for e in std::fs::read_dir(dir.join("reference")).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".summary.json") {
            let s: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let streams = s["streams"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    let f = |k: &str| x[k].as_str().unwrap().to_string();
                    (f("src"), f("dst"), f("ssrc"))
                })
                .collect();
            reference.insert(s["capture"].as_str().unwrap().to_string(), streams);
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected the shared captures in {}", dir.display());
    let expected_streams =
        HashMap::from([("projectrtp_ulaw_2calls_rtcp_dtmf.pcap", 4), ("pkts_sip_call_pcmu.pcap", 1)]);
    let mut checked = 0;
    for capture in files {
        let name = capture.file_name().unwrap().to_str().unwrap().to_string();
        let opts = callvault::replay::ReplayOptions::new(&capture, vec![]);
        let plan = callvault::replay::plan(&opts).unwrap();
        let n = plan.streams.len();
        if let Some(&want) = expected_streams.get(name.as_str()) {
            assert_eq!(n, want, "{name}: streams");
        }
        assert!(n >= 1, "{name}: no RTP stream found");
        let rx = Receivers::new(n);
        let (code, v, stderr, wall) = replay_json(&capture, &["--to", &rx.to_arg(), "--speed", "20"]);
        let addrs = rx.addrs.clone();
        let got = rx.finish();
        assert_eq!(code, 0, "{name}: {stderr}");
        assert_streams_arrived(&capture, &v, &addrs, &got, &name);
        let streams = v["streams"].as_array().unwrap();
        let offsets: Vec<u64> = streams.iter().map(|s| s["first_offset_ms"].as_u64().unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{name}: order of first packet {offsets:?}");
        assert_eq!(offsets[0], 0, "{name}");
        for (src, dst, ssrc) in reference.get(&name).into_iter().flatten() {
            assert!(
                streams.iter().any(|s| s["src"] == *src && s["dst"] == *dst && s["ssrc"] == *ssrc),
                "{name}: reference stream {src}->{dst} {ssrc} not replayed"
            );
        }
        // Pacing: the capture's span between the first and last datagram sent, divided by 20
        // (muxed RTCP is not sent without --rtcp, so it does not count).
        let mut first = u64::MAX;
        let mut last = 0;
        let mut r = CaptureReader::open(&capture).unwrap();
        while let Ok(Some(d)) = r.next_datagram() {
            let flow = (d.src.to_string(), d.dst.to_string());
            if streams.iter().any(|s| s["src"] == flow.0 && s["dst"] == flow.1)
                && parse_sip(&d.payload).is_none()
                && !matches!(rtp::parse(&d.payload), Ok(Packet::Rtcp(_)))
            {
                first = first.min(d.time_ns);
                last = last.max(d.time_ns);
            }
        }
        let ideal_ms = (last - first) / 20 / 1_000_000;
        let duration = v["duration_ms"].as_u64().unwrap();
        assert!(
            duration + 2 >= ideal_ms && duration <= ideal_ms * 3 / 2 + 1_500,
            "{name}: took {duration} ms, capture paced at speed 20 is {ideal_ms} ms"
        );
        assert!(wall.as_millis() as u64 + 2 >= ideal_ms, "{name}: {wall:?}");
        checked += 1;
    }
    assert!(checked >= 10);
}
