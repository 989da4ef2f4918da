//! The load generator, run as its own process (`live send PLAN`): every stream of every call at
//! real pacing from one UDP socket with `sendmmsg`, on an absolute schedule (a late wake-up
//! never accumulates into drift). Loss, reordering, jitter and clock skew are applied here, on
//! purpose and counted, so the receiver's counts can be checked against them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::audio::{G711Encoder, Rng, speech};
use crate::sys;

/// Codecs the generator can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// G.711 µ-law, payload type 0.
    Pcmu,
    /// G.711 A-law, payload type 8.
    Pcma,
}

impl Codec {
    /// The static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }
}

/// What to send: written by the orchestrator as JSON, read by the sender process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// One entry per stream (two per call: legs 0 and 1 of call `i` are streams `2i`, `2i+1`).
    pub streams: Vec<SocketAddrV4>,
    /// How long each stream sends.
    pub seconds: f64,
    /// Packet interval.
    pub ptime_ms: u32,
    /// Codec of every stream.
    pub codec: Codec,
    /// Probability that a packet is dropped on purpose (never a stream's first or last).
    pub loss: f64,
    /// Probability that a packet is swapped with the next one.
    pub reorder: f64,
    /// Each packet leaves up to this much after its time (uniformly at random).
    pub jitter_ms: f64,
    /// Clock skew between the two legs of a call: leg 0 runs `+skew/2` ppm fast, leg 1 as slow.
    pub skew_ppm: f64,
    /// Seed of everything random (audio, loss, reordering, jitter).
    pub seed: u64,
    /// CPU to pin the sender to.
    pub cpu: Option<usize>,
    /// Where this sender's streams start in the whole load (several senders split one load):
    /// spreads their phases over the interval as one sender would.
    pub first_stream: usize,
    /// Streams in the whole load.
    pub total_streams: usize,
}

/// What was sent, printed as JSON by the sender process (several senders' reports merge).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendReport {
    /// Packets sent per stream.
    pub sent: Vec<u64>,
    /// Packets dropped on purpose per stream.
    pub dropped: Vec<u64>,
    /// Packet pairs sent in swapped order.
    pub reordered: u64,
    /// Packets whose send failed.
    pub send_errors: u64,
    /// The first send error, if any.
    pub first_error: Option<String>,
    /// Packets that left more than one packet interval after their time (the sender could not
    /// keep up: loss measured then says nothing about the receiver).
    pub late_packets: u64,
    /// The latest any packet left, in µs after its time.
    pub max_late_us: u64,
    /// The sender's own CPU time.
    pub cpu_ns: u64,
    /// Wall-clock time from the first packet to the last.
    pub wall_ms: u64,
}

/// The sender's wake-up interval: packets are sent up to this much after their time.
const TICK_NS: u64 = 1_000_000;

impl SendReport {
    /// Appends another sender's report (its streams follow this one's).
    pub fn merge(&mut self, other: SendReport) {
        self.sent.extend(other.sent);
        self.dropped.extend(other.dropped);
        self.reordered += other.reordered;
        self.send_errors += other.send_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.late_packets += other.late_packets;
        self.max_late_us = self.max_late_us.max(other.max_late_us);
        self.cpu_ns += other.cpu_ns;
        self.wall_ms = self.wall_ms.max(other.wall_ms);
    }
}

struct Stream {
    dst: SocketAddrV4,
    ssrc: u32,
    seq0: u16,
    ts0: u32,
    audio_offset: usize,
    /// Send-time factor from the clock skew (1 + ppm / 10^6).
    clock: f64,
    phase_ns: f64,
    next: u64,
    /// The previous packet was the first of a swapped pair: this slot carries it.
    swapped_from: Option<u64>,
    /// When its previous packet left (ns after the start).
    last_sent_ns: u64,
}

/// Runs the plan and reports what was sent.
pub fn run(plan: &Plan) -> std::io::Result<SendReport> {
    if let Some(cpu) = plan.cpu {
        let _ = sys::pin_self(&[cpu]);
    }
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let samples_per_packet = (plan.ptime_ms * 8) as usize;
    let packets_per_stream = ((plan.seconds * 1000.0) / f64::from(plan.ptime_ms)).floor().max(1.0) as u64;
    let period_ns = f64::from(plan.ptime_ms) * 1e6;
    let n = plan.total_streams.max(plan.streams.len()).max(1);

    // 20 s of audio, encoded once; each stream starts reading at its own offset.
    let encoder = G711Encoder::new(plan.codec == Codec::Pcma);
    let audio: Vec<u8> = speech(20.0, 8000, plan.seed).iter().map(|&s| encoder.encode(s)).collect();

    let mut rng = Rng::new(plan.seed ^ 0x5eed ^ plan.first_stream as u64);
    let mut streams: Vec<Stream> = plan
        .streams
        .iter()
        .enumerate()
        .map(|(i, &dst)| Stream {
            dst,
            ssrc: rng.next_u64() as u32,
            seq0: rng.next_u64() as u16,
            ts0: rng.next_u64() as u32,
            audio_offset: (rng.next_u64() as usize) % audio.len(),
            clock: 1.0
                + if (plan.first_stream + i).is_multiple_of(2) { plan.skew_ppm / 2.0 } else { -plan.skew_ppm / 2.0 }
                    * 1e-6,
            // Spread the streams over the interval so the load is smooth, as it is in the field.
            phase_ns: period_ns * (plan.first_stream + i) as f64 / n as f64,
            next: 0,
            swapped_from: None,
            last_sent_ns: 0,
        })
        .collect();

    let mut report = SendReport {
        sent: vec![0; streams.len()],
        dropped: vec![0; streams.len()],
        reordered: 0,
        send_errors: 0,
        first_error: None,
        late_packets: 0,
        max_late_us: 0,
        cpu_ns: 0,
        wall_ms: 0,
    };
    let due = |s: &Stream, k: u64, rng: &mut Rng| -> u64 {
        let jitter = if plan.jitter_ms > 0.0 { rng.range(0.0, plan.jitter_ms * 1e6) } else { 0.0 };
        (s.phase_ns + k as f64 * period_ns * s.clock + jitter) as u64
    };
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> =
        streams.iter().enumerate().map(|(i, s)| Reverse((due(s, 0, &mut rng), i))).collect();

    let cpu0 = sys::self_cpu_ns();
    let start = Instant::now();
    let mut last_send = start;
    let mut packets: Vec<(SocketAddrV4, Vec<u8>)> = Vec::new();
    let mut last_wake_ns = 0u64;
    let late_limit_ns = period_ns as u64;
    while let Some(&Reverse((first_due, _))) = heap.peek() {
        let now = start.elapsed().as_nanos() as u64;
        if first_due > now {
            // Wake at most once per tick and send all that is due then, as an SBC's media
            // thread does: per-packet wake-ups would make the sender, not the receiver, the limit.
            let wake = first_due.max(last_wake_ns + TICK_NS);
            std::thread::sleep(Duration::from_nanos(wake - now));
            continue;
        }
        last_wake_ns = now;
        let mut batch_len = 0;
        while let Some(&Reverse((due_ns, i))) = heap.peek() {
            if due_ns > now {
                break;
            }
            heap.pop();
            let s = &mut streams[i];
            // A stream's packets leave in order, so one held back by jitter holds back the
            // next: lateness counts from the later of its time and its predecessor's departure.
            let late = now.saturating_sub(due_ns.max(s.last_sent_ns));
            report.max_late_us = report.max_late_us.max(late / 1000);
            if late > late_limit_ns {
                report.late_packets += 1;
            }
            s.last_sent_ns = now;
            let k = s.next;
            s.next += 1;
            if s.next < packets_per_stream {
                let d = due(s, s.next, &mut rng);
                heap.push(Reverse((d, i)));
            }
            // Which packet this slot carries: itself, or one of a swapped pair.
            let carried = if let Some(prev) = s.swapped_from.take() {
                prev
            } else if k + 1 < packets_per_stream && k > 0 && rng.unit() < plan.reorder {
                s.swapped_from = Some(k);
                report.reordered += 1;
                k + 1
            } else {
                k
            };
            let is_edge = carried == 0 || carried + 1 == packets_per_stream;
            if !is_edge && s.swapped_from.is_none() && rng.unit() < plan.loss {
                report.dropped[i] += 1;
                continue;
            }
            if batch_len == packets.len() {
                packets.push((s.dst, Vec::with_capacity(12 + samples_per_packet)));
            }
            let (dst, buf) = &mut packets[batch_len];
            *dst = s.dst;
            buf.clear();
            buf.extend_from_slice(&[0x80, plan.codec.payload_type() | if carried == 0 { 0x80 } else { 0 }]);
            buf.extend_from_slice(&s.seq0.wrapping_add(carried as u16).to_be_bytes());
            buf.extend_from_slice(&s.ts0.wrapping_add((carried as usize * samples_per_packet) as u32).to_be_bytes());
            buf.extend_from_slice(&s.ssrc.to_be_bytes());
            let from = (s.audio_offset + carried as usize * samples_per_packet) % audio.len();
            for j in 0..samples_per_packet {
                buf.push(audio[(from + j) % audio.len()]);
            }
            batch_len += 1;
            report.sent[i] += 1;
        }
        if batch_len > 0 {
            let batch: Vec<(SocketAddrV4, &[u8])> =
                packets[..batch_len].iter().map(|(d, b)| (*d, b.as_slice())).collect();
            let (ok, err) = sys::send_batch(&socket, &batch);
            if let Some(e) = err {
                let failed = (batch_len - ok) as u64;
                report.send_errors += failed;
                report.first_error.get_or_insert_with(|| e.to_string());
                // Failed packets were counted as sent above: take them back from their streams.
                uncount_failed(&mut report, &plan.streams, &packets[ok..batch_len]);
            }
            last_send = Instant::now();
        }
    }
    report.cpu_ns = sys::self_cpu_ns().saturating_sub(cpu0);
    report.wall_ms = last_send.duration_since(start).as_millis() as u64;
    Ok(report)
}

/// Takes packets that failed to send off their streams' `sent` counts (rare: only on a send
/// error, so a linear search is fine).
fn uncount_failed(report: &mut SendReport, streams: &[SocketAddrV4], failed: &[(SocketAddrV4, Vec<u8>)]) {
    for (dst, _) in failed {
        if let Some(i) = streams.iter().position(|s| s == dst) {
            report.sent[i] = report.sent[i].saturating_sub(1);
        }
    }
}
