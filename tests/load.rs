//! Bounded load test, run by `.ci/run` (it is `#[ignore]`d in a plain `cargo test`): a debug
//! build of the daemon records 150 concurrent two-leg calls of generated audio for ~20 s on
//! loopback, and every recording must be complete. Losses are split into what the kernel
//! dropped (socket buffers full, SO_RXQ_OVFL) and what callvault lost after receiving.
//!
//! The metrics endpoint is scraped at the end: its counters must say what the traffic did
//! (packets received = packets sent; lost = the packets the test left out on purpose).
//!
//! `CALLVAULT_LOAD_CALLS` and `CALLVAULT_LOAD_SECONDS` change the size.

mod live;

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use live::{Daemon, Options, channel, read_wav};
use serde_json::json;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A recognisable µ-law byte per call and leg, so a packet in the wrong channel or call shows.
fn fill(call: usize, leg: usize) -> u8 {
    // Bytes 0x01..0x7e decode to distinct negative values, 0x81..0xfe to positive ones; avoid
    // 0x7f/0xff (zero) so silence is never mistaken for audio.
    let b = 1 + ((call * 2 + leg) % 126) as u8;
    if leg == 0 { b } else { b | 0x80 }
}

/// Packets the sender leaves out on purpose: ten in the middle of call 0's first leg.
const DROPPED_ON_PURPOSE: u16 = 10;
fn is_dropped_on_purpose(call: usize, leg: usize, seq: u16) -> bool {
    call == 0 && leg == 0 && (100..100 + DROPPED_ON_PURPOSE).contains(&seq)
}

#[test]
#[ignore = "load test: run by .ci/run (cargo test --test load -- --ignored)"]
fn concurrent_calls_are_recorded_completely() {
    let calls = env_or("CALLVAULT_LOAD_CALLS", 150) as usize;
    let seconds = env_or("CALLVAULT_LOAD_SECONDS", 20);
    let backend = if std::env::var("CALLVAULT_LOAD_BACKEND").as_deref() == Ok("epoll") { "epoll" } else { "io_uring" };
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = Daemon::start(Options {
        backend: if backend == "epoll" { "epoll" } else { "auto" },
        pairs: (calls * 2 + 10) as u16,
        extra: format!("[limits]\nmax_calls = {}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n", calls + 10),
        env: Vec::new(),
    });
    let mut c = d.client().unwrap();
    let mut ports = Vec::new();
    for i in 0..calls {
        let r = c.request(json!({"cmd": "start", "call_id": format!("load-{i}"),
            "legs": [{"label": "customer", "rtcp_mux": true}, {"label": "agent", "rtcp_mux": true}]}));
        assert_eq!(r["ok"], true, "{r}");
        ports.push([r["legs"][0]["port"].as_u64().unwrap() as u16, r["legs"][1]["port"].as_u64().unwrap() as u16]);
    }
    let packets = (seconds * 50) as u16;
    // Two sender threads, each pacing half the calls on an absolute 20 ms schedule.
    let halves: Vec<Vec<(usize, [u16; 2])>> = {
        let all: Vec<_> = ports.iter().copied().enumerate().collect();
        all.chunks(calls.div_ceil(2)).map(|c| c.to_vec()).collect()
    };
    let started = Instant::now();
    let senders: Vec<_> = halves
        .into_iter()
        .map(|mine| {
            std::thread::spawn(move || {
                let socks: Vec<[UdpSocket; 2]> = mine
                    .iter()
                    .map(|_| [UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap()])
                    .collect();
                let mut late = Duration::ZERO;
                let t0 = Instant::now();
                for seq in 0..packets {
                    for ((call, p), s) in mine.iter().zip(&socks) {
                        for leg in 0..2 {
                            if is_dropped_on_purpose(*call, leg, seq) {
                                continue;
                            }
                            let mut pkt = vec![0x80, 0];
                            pkt.extend_from_slice(&seq.to_be_bytes());
                            pkt.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                            pkt.extend_from_slice(&(*call as u32 * 2 + leg as u32 + 1).to_be_bytes());
                            pkt.extend(std::iter::repeat_n(fill(*call, leg), 160));
                            s[leg].send_to(&pkt, ("127.0.0.1", p[leg])).unwrap();
                        }
                    }
                    let due = t0 + Duration::from_millis(20 * (u64::from(seq) + 1));
                    match due.checked_duration_since(Instant::now()) {
                        Some(w) => std::thread::sleep(w),
                        None => late = late.max(Instant::now() - due),
                    }
                }
                late
            })
        })
        .collect();
    let worst_late: Duration = senders.into_iter().map(|s| s.join().unwrap()).max().unwrap_or_default();
    std::thread::sleep(Duration::from_millis(500));
    let stats = c.request(json!({"cmd": "stats"}));
    let kernel_drops: u64 =
        stats["workers"].as_array().unwrap().iter().map(|w| w["kernel_drops"].as_u64().unwrap()).sum();
    let received: u64 = stats["workers"].as_array().unwrap().iter().map(|w| w["datagrams"].as_u64().unwrap()).sum();
    let sent = calls as u64 * 2 * u64::from(packets) - u64::from(DROPPED_ON_PURPOSE);
    let mut incomplete = Vec::new();
    let mut recorded_packets = 0;
    for i in 0..calls {
        let stop = c.request(json!({"cmd": "stop", "call_id": format!("load-{i}")}));
        assert_eq!(stop["ok"], true, "{stop}");
        let (ch, samples) = read_wav(Path::new(stop["file"].as_str().unwrap()));
        for leg in 0..2 {
            let l = &stop["legs"][leg];
            recorded_packets += l["packets"].as_u64().unwrap();
            let expected = callvault::core::g711::ULAW_TABLE[usize::from(fill(i, leg))];
            let audio = channel(&samples, ch, leg as u16).iter().filter(|&&s| s == expected).count();
            let left_out = if i == 0 && leg == 0 { DROPPED_ON_PURPOSE } else { 0 };
            let sent_here = packets - left_out;
            if l["packets"] != u64::from(sent_here)
                || l["lost"] != u64::from(left_out)
                || audio != usize::from(sent_here) * 160
            {
                incomplete.push(format!(
                    "load-{i} leg {leg}: packets {} lost {} samples {audio}/{} {}",
                    l["packets"],
                    l["lost"],
                    usize::from(sent_here) * 160,
                    l
                ));
            }
        }
    }
    let callvault_lost = received.saturating_sub(recorded_packets);
    eprintln!(
        "load: {calls} calls x 2 legs x {packets} packets on {}; sent {sent}, received {received}, kernel drops {kernel_drops}, \
         lost inside callvault {callvault_lost}; sender worst lateness {worst_late:?}; {:.1} s",
        stats["backend"],
        started.elapsed().as_secs_f64()
    );
    assert_eq!(callvault_lost, 0, "callvault lost datagrams it had received");
    assert!(
        incomplete.is_empty(),
        "{} incomplete legs (kernel drops {kernel_drops}): {:?}",
        incomplete.len(),
        &incomplete[..incomplete.len().min(10)]
    );
    // The metrics say the same: every packet sent was received, and lost are the ones left out.
    let scrape = {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).unwrap();
        text
    };
    let metric = |name: &str| -> u64 {
        scrape
            .lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(metric("callvault_packets_received_total"), sent - kernel_drops, "{scrape}");
    assert_eq!(metric("callvault_packets_lost_total"), u64::from(DROPPED_ON_PURPOSE) + kernel_drops);
    assert_eq!(metric("callvault_recordings_started_total"), calls as u64);
    assert_eq!(metric("callvault_active_calls"), 0);
    eprintln!("load: metrics agree: {} packets received, {} lost", sent - kernel_drops, DROPPED_ON_PURPOSE);
}
