//! Shared test harness: synthetic RTP streams and a driver that runs a `Recording` to the end.
#![allow(dead_code)]

pub mod pcapgen;

use callvault::core::leg::TimelineConfig;
use callvault::core::payload::PayloadMap;
use callvault::core::recording::{LegSpec, Recording, RecordingConfig};

pub const MS: u64 = 1_000_000;

/// Builds one RTP packet.
pub fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, pt & 0x7f];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A deterministic pseudo-random generator (xorshift), so failures reproduce.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One packet of a synthetic stream: arrival time (ns) and datagram.
#[derive(Clone, Debug)]
pub struct Sent {
    pub at: u64,
    pub bytes: Vec<u8>,
}

/// µ-law payload bytes whose every frame differs (so a misplaced packet shows), with a quiet
/// stretch (bytes 0xff decode to 0) for `quiet` frames out of every `period`.
pub fn payload(rng: &mut Rng, index: u64, samples: usize, period: u64, quiet: u64) -> Vec<u8> {
    if period > 0 && index % period < quiet {
        return vec![0xff; samples];
    }
    (0..samples).map(|_| (rng.next() & 0x7f) as u8).collect()
}

/// A paced PCMU stream: `count` packets of 20 ms starting at `start_ns`, from `seq0`/`ts0`.
pub fn pcmu_stream(count: u64, start_ns: u64, seq0: u16, ts0: u32, ssrc: u32, seed: u64) -> Vec<Sent> {
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|i| Sent {
            at: start_ns + i * 20 * MS,
            bytes: rtp(
                0,
                seq0.wrapping_add(i as u16),
                ts0.wrapping_add(160 * i as u32),
                ssrc,
                &payload(&mut rng, i, 160, 0, 0),
            ),
        })
        .collect()
}

/// Output of a finished recording.
pub struct Output {
    pub planes: Vec<Vec<i16>>,
    pub rec: Recording,
}

pub fn config() -> RecordingConfig {
    RecordingConfig { timeline: TimelineConfig::default(), keep_dtmf_digits: true }
}

/// Runs legs (each a list of arrivals) through a recording, interleaving by arrival time and
/// polling after every datagram the way a live driver does.
pub fn run(cfg: RecordingConfig, legs: &[Vec<Sent>], origin: Option<u64>) -> Output {
    run_with_map(cfg, &PayloadMap::default(), legs, origin)
}

/// [`run`] with every leg using `map`.
pub fn run_with_map(cfg: RecordingConfig, map: &PayloadMap, legs: &[Vec<Sent>], origin: Option<u64>) -> Output {
    let specs = (0..legs.len()).map(|i| LegSpec { label: format!("leg{i}"), payload_map: map.clone() }).collect();
    let mut rec = Recording::new(cfg, specs, origin);
    let mut all: Vec<(u64, usize, usize)> = Vec::new();
    for (l, sent) in legs.iter().enumerate() {
        for (i, s) in sent.iter().enumerate() {
            all.push((s.at, l, i));
        }
    }
    all.sort();
    let mut planes = vec![Vec::new(); legs.len()];
    for (at, l, i) in all {
        rec.handle_datagram(at, l, &legs[l][i].bytes);
        while rec.poll_audio(at, 4096, &mut planes) > 0 {}
    }
    rec.finish();
    while rec.poll_audio(0, 4096, &mut planes) > 0 {}
    Output { planes, rec }
}

/// The decoded µ-law payloads of a stream, concatenated (what a loss-free leg must contain).
pub fn decoded(sent: &[Sent]) -> Vec<i16> {
    sent.iter().flat_map(|s| s.bytes[12..].iter().map(|&b| callvault::core::g711::ULAW_TABLE[b as usize])).collect()
}
