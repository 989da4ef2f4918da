//! Micro-benchmark of the per-packet path of the recording core, with no I/O:
//! parse → sequence/timeline → G.711 decode → mix → WAV bytes (into memory), plain or sealed
//! (AES-256-GCM chunks, as `serve` writes by default).
//!
//! `cargo bench --bench core_path` prints ns per packet for each stage cumulatively, and the
//! whole path as a ratio to parsing alone (ratios from one run; the machines are noisy).

use std::hint::black_box;
use std::io::{self, Seek, SeekFrom, Write};
use std::time::Instant;

use callvault::core::mixer::{self, Layout};
use callvault::core::payload::PayloadMap;
use callvault::core::recording::{LegSpec, Recording, RecordingConfig};
use callvault::core::rtp;
use callvault::output::wav::{WavSpec, WavWriter};
use callvault::seal::{Container, Content, Kek, SealParams, SealWriter, SigningKey};

#[derive(Clone, Copy, PartialEq)]
enum Sink {
    None,
    Wav,
    Sealed,
}

const CALL_SECONDS: u64 = 600; // one 10-minute two-leg call: 60,000 packets

/// A seekable writer that keeps nothing: measures the encoding work, not page faults of a growing
/// in-memory buffer (the file system's cost belongs to the end-to-end benchmark).
#[derive(Default)]
struct Discard {
    pos: u64,
    len: u64,
}

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        black_box(buf);
        self.pos += buf.len() as u64;
        self.len = self.len.max(self.pos);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Discard {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.len.saturating_add_signed(d),
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

fn packets() -> Vec<(u64, usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut x = 0x1234_5678u32;
    for i in 0..CALL_SECONDS * 50 {
        for leg in 0..2usize {
            let mut p = vec![0x80, 0];
            p.extend_from_slice(&(i as u16).wrapping_add(leg as u16 * 7000).to_be_bytes());
            p.extend_from_slice(&((i * 160) as u32).wrapping_add(leg as u32 * 99_999).to_be_bytes());
            p.extend_from_slice(&(0xabc0 + leg as u32).to_be_bytes());
            for _ in 0..160 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                p.push(x as u8);
            }
            // Leg b arrives 3 ms after leg a, both with a little jitter.
            let at = i * 20_000_000 + leg as u64 * 3_000_000 + u64::from(x % 2_000_000);
            out.push((at, leg, p));
        }
    }
    out.sort_by_key(|(at, _, _)| *at);
    out
}

fn run_parse(pkts: &[(u64, usize, Vec<u8>)]) -> u64 {
    let mut sum = 0u64;
    for (_, _, p) in pkts {
        if let Ok(rtp::Packet::Rtp(r)) = rtp::parse(p) {
            sum += u64::from(r.sequence) + r.payload.len() as u64;
        }
    }
    sum
}

fn run_core(pkts: &[(u64, usize, Vec<u8>)], sink: Sink) -> u64 {
    let specs = vec![
        LegSpec { label: "customer".into(), payload_map: PayloadMap::default() },
        LegSpec { label: "agent".into(), payload_map: PayloadMap::default() },
    ];
    let mut rec = Recording::new(RecordingConfig::default(), specs, Some(0));
    let mut planes = vec![Vec::new(), Vec::new()];
    let mut mixed = Vec::new();
    let mut wav = WavWriter::new(Discard::default(), WavSpec { sample_rate: 8000, channels: 2 }).expect("writer");
    let kek = Kek::generate("bench").expect("kek");
    let params = SealParams {
        content: Content::Audio,
        container: Container::Wav,
        chunk_size: callvault::seal::format::DEFAULT_CHUNK,
        recording_id: ulid::Ulid(1),
        created_ms: 0,
        index: String::new(),
    };
    let mut sealed = SealWriter::create(Discard::default(), &params, &kek, &[0u8; 80]).expect("sealer");
    let mut bytes = Vec::new();
    let mut frames = 0u64;
    let mut drain = |rec: &mut Recording, now: u64, planes: &mut Vec<Vec<i16>>, mixed: &mut Vec<i16>| loop {
        planes.iter_mut().for_each(Vec::clear);
        let n = rec.poll_audio(now, 4096, planes);
        if n == 0 {
            break;
        }
        frames += n as u64;
        if sink != Sink::None {
            mixed.clear();
            let p: Vec<&[i16]> = planes.iter().map(Vec::as_slice).collect();
            mixer::mix(Layout::Stereo, &p, mixed);
            if sink == Sink::Wav {
                wav.write_samples(mixed).expect("write");
            } else {
                bytes.clear();
                mixed.iter().for_each(|s| bytes.extend_from_slice(&s.to_le_bytes()));
                sealed.write(&bytes).expect("seal");
            }
        }
    };
    for (at, leg, p) in pkts {
        rec.handle_datagram(*at, *leg, p);
        drain(&mut rec, *at, &mut planes, &mut mixed);
    }
    rec.finish();
    drain(&mut rec, 0, &mut planes, &mut mixed);
    if sink == Sink::Sealed {
        let signer = SigningKey::generate("bench").expect("signer");
        black_box(sealed.finish(&[0u8; 80], 0, &signer, 0).expect("finish"));
    }
    frames
}

fn time<F: FnMut() -> u64>(label: &str, n: usize, mut f: F) -> f64 {
    // Best of 5: the least disturbed run on a shared machine.
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        black_box(f());
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    println!("{label:<48} {best:>8.1} ns/packet");
    best
}

fn main() {
    let pkts = packets();
    let n = pkts.len();
    println!("core path, {} packets (one {}-minute two-leg G.711 call, 20 ms)", n, CALL_SECONDS / 60);
    let parse = time("parse (RTP header)", n, || run_parse(&pkts));
    let core = time("parse + timeline + G.711 decode + render", n, || run_core(&pkts, Sink::None));
    let all = time("… + stereo mix + WAV encoding", n, || run_core(&pkts, Sink::Wav));
    let sealed = time("… + stereo mix + sealed WAV (AES-256-GCM)", n, || run_core(&pkts, Sink::Sealed));
    println!(
        "whole path / parse alone: {:.1}x; timeline+decode+render: {:.0} ns; mix+write: {:.0} ns",
        all / parse,
        core - parse,
        all - core
    );
    println!(
        "sealing: {:.0} ns per packet over plain WAV ({:.1} % of the sealed path); sealed / plain path: {:.2}x",
        sealed - all,
        100.0 * (sealed - all) / sealed,
        sealed / all
    );
    let per_core_streams = 1e9 / (all * 50.0);
    println!("one core could record ~{per_core_streams:.0} streams (50 packets/s each) on this path alone");
}
