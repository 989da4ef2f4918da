//! `callvault replay`: sends the RTP streams of a capture to live addresses at the capture's own
//! pacing, to feed a recorder (callvault's own live engine, an SBC, a test rig) from a file.
//!
//! Two passes over the capture. The first finds the RTP streams with the same rule as `import`
//! (a UDP flow of at least two RTP version 2 packets of one SSRC, at least half of its datagrams
//! RTP), the RTCP that goes with each, and per SSRC the sequence and timestamp span used to
//! continue the stream across `--loop` repeats. The second pass (once per repeat) reads the
//! capture again and sends every datagram of a chosen stream at
//! `start + (capture time − first packet + repeat × period) / speed`: an absolute schedule from
//! one monotonic start, so sleeping late never accumulates into drift.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::capture::{CaptureError, CaptureReader, sip};
use crate::core::rtp::{self, Packet};

/// What to replay, where, and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The pcap or pcapng file.
    pub capture: PathBuf,
    /// Stream `i` (in order of first packet) goes to `destinations[i]`.
    pub destinations: Vec<SocketAddr>,
    /// Playback speed: 2.0 sends twice as fast as captured. Finite and above 0.
    pub speed: f64,
    /// How many times to play the capture back to back (at least 1).
    pub loops: u32,
    /// Also send each stream's RTCP (to the destination port + 1, or the same port when muxed).
    pub rtcp: bool,
}

impl ReplayOptions {
    /// Plays `capture` once at its original speed, without RTCP.
    pub fn new(capture: impl Into<PathBuf>, destinations: Vec<SocketAddr>) -> Self {
        ReplayOptions { capture: capture.into(), destinations, speed: 1.0, loops: 1, rtcp: false }
    }
}

/// Progress callback: `(datagrams sent, datagrams to send in all)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A failure that stops the replay before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The capture cannot be read at all (missing, not a capture, unsupported link type).
    #[error("{0}")]
    Capture(#[from] CaptureError),
    /// No destination address.
    #[error("no destination: give at least one --to HOST:PORT")]
    NoDestinations,
    /// The speed is zero, negative or not a number.
    #[error("--speed must be a number above 0, not {0}")]
    BadSpeed(f64),
    /// Zero repeats.
    #[error("--loop must be at least 1")]
    BadLoops,
    /// More destinations than the capture has streams.
    #[error(
        "the capture has {streams} RTP stream(s) but {destinations} destination(s) were given: \
         give at most {streams} --to address(es){}",
        capture_error.as_deref().map(|e| format!(" (the capture is partly unreadable: {e})")).unwrap_or_default()
    )]
    TooFewStreams {
        /// RTP streams found.
        streams: usize,
        /// Addresses given.
        destinations: usize,
        /// Where the capture stopped being readable, if it did.
        capture_error: Option<String>,
    },
    /// `--rtcp` with a stream whose RTCP needs port + 1 of a destination on port 65535.
    #[error("cannot send RTCP of stream {index} to port {dst} + 1: {dst} is the last port")]
    RtcpPort {
        /// The stream.
        index: usize,
        /// Its destination.
        dst: SocketAddr,
    },
    /// A sending socket could not be opened.
    #[error("cannot open a UDP socket to send stream {index} to {dst}: {source}")]
    Socket {
        /// The stream.
        index: usize,
        /// Its destination.
        dst: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
}

impl ReplayError {
    /// The process exit code: 2 for a bad option value, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NoDestinations | Self::BadSpeed(_) | Self::BadLoops | Self::RtcpPort { .. } => 2,
            Self::Capture(_) | Self::TooFewStreams { .. } | Self::Socket { .. } => 1,
        }
    }
}

/// The JSON report of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    /// Streams sent, in order of first packet (stream `i` went to the `i`-th destination).
    pub streams: Vec<StreamReport>,
    /// Streams found but not sent because fewer destinations were given.
    pub skipped_streams: Vec<SkippedStream>,
    /// Datagrams sent in all (RTP, RTCP, every repeat).
    pub packets_sent: u64,
    /// Wall-clock time from the first send to the last, in ms.
    pub duration_ms: u64,
    /// Times the capture was played.
    pub loops: u32,
    /// Problems: the capture unreadable from some offset, a send that failed.
    pub errors: Vec<ReplayIssue>,
}

impl ReplaySummary {
    /// The process exit code: 0 all sent, 3 capture partly unreadable, 1 a send failed.
    pub fn exit_code(&self) -> u8 {
        if self.errors.iter().any(|e| e.kind == IssueKind::Send) {
            1
        } else if self.errors.is_empty() {
            0
        } else {
            3
        }
    }
}

/// One stream that was sent.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    /// Position in order of first packet.
    pub index: usize,
    /// Source address in the capture.
    pub src: String,
    /// Destination address in the capture.
    pub dst: String,
    /// The stream's first SSRC, `0x` + 8 lowercase hex digits.
    pub ssrc: String,
    /// Datagrams of the RTP flow sent (muxed RTCP not included), over all repeats.
    pub packets: u64,
    /// RTCP datagrams sent (port + 1 or muxed), over all repeats; 0 without `--rtcp`.
    pub rtcp_packets: u64,
    /// Where the stream went.
    pub sent_to: String,
    /// Where its RTCP went (`null` without `--rtcp` or when the stream has no RTCP).
    pub rtcp_sent_to: Option<String>,
    /// The local UDP port the stream was sent from.
    pub source_port: u16,
    /// Capture time of the stream's first packet after the replay's first packet, in ms (divide
    /// by `--speed` for the wall-clock offset).
    pub first_offset_ms: u64,
}

/// A stream found but not sent (more streams than destinations).
#[derive(Debug, Clone, Serialize)]
pub struct SkippedStream {
    /// Position in order of first packet.
    pub index: usize,
    /// Source address in the capture.
    pub src: String,
    /// Destination address in the capture.
    pub dst: String,
    /// The stream's first SSRC.
    pub ssrc: String,
    /// Datagrams of its RTP flow in the capture.
    pub packets: u64,
}

/// Kinds of problem in [`ReplayIssue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// Part of the capture could not be read: what came before was sent.
    Capture,
    /// A datagram could not be sent: the replay stopped there.
    Send,
}

/// One problem, with where it happened.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayIssue {
    /// What kind of problem.
    pub kind: IssueKind,
    /// Byte offset in the capture: where it stops being readable, or of the datagram not sent.
    pub offset: Option<u64>,
    /// The stream concerned, for send problems.
    pub stream: Option<usize>,
    /// What happened.
    pub message: String,
}

type FlowKey = (SocketAddr, SocketAddr);

/// At most this many SSRCs per flow get their own repeat offsets (junk that happens to parse as
/// RTP could otherwise make one entry per datagram).
const MAX_SSRCS_PER_FLOW: usize = 64;
/// Distinct timestamp steps remembered per SSRC to find the usual one.
const MAX_STEPS: usize = 32;

/// Sequence and timestamp extent of one SSRC, for continuing it across repeats.
#[derive(Debug, Clone)]
struct SsrcSpan {
    last_seq: u16,
    seq: i64,
    seq_min: i64,
    seq_max: i64,
    last_ts: u32,
    ts: i64,
    ts_min: i64,
    ts_max: i64,
    /// Positive timestamp steps between consecutive packets and how often each occurred.
    steps: Vec<(u32, u64)>,
}

impl SsrcSpan {
    fn new(seq: u16, ts: u32) -> Self {
        SsrcSpan {
            last_seq: seq,
            seq: 0,
            seq_min: 0,
            seq_max: 0,
            last_ts: ts,
            ts: 0,
            ts_min: 0,
            ts_max: 0,
            steps: Vec::new(),
        }
    }

    fn add(&mut self, seq: u16, ts: u32) {
        self.seq += i64::from(seq.wrapping_sub(self.last_seq) as i16);
        self.last_seq = seq;
        self.seq_min = self.seq_min.min(self.seq);
        self.seq_max = self.seq_max.max(self.seq);
        let step = ts.wrapping_sub(self.last_ts) as i32;
        self.ts += i64::from(step);
        self.last_ts = ts;
        self.ts_min = self.ts_min.min(self.ts);
        self.ts_max = self.ts_max.max(self.ts);
        if step > 0 {
            let step = step as u32;
            if let Some(e) = self.steps.iter_mut().find(|e| e.0 == step) {
                e.1 += 1;
            } else if self.steps.len() < MAX_STEPS {
                self.steps.push((step, 1));
            }
        }
    }

    /// What one repeat adds: the span plus one packet (sequence), the span plus the usual
    /// step (timestamp), so the next repeat's first packet follows this one's last.
    fn repeat_offset(&self) -> (u16, u32) {
        let step = self.steps.iter().max_by_key(|(s, n)| (*n, std::cmp::Reverse(*s))).map_or(0, |e| e.0);
        let seq = (self.seq_max - self.seq_min + 1) as u16;
        let ts = (self.ts_max - self.ts_min + i64::from(step)) as u32;
        (seq, ts)
    }
}

#[derive(Debug, Default)]
struct Flow {
    order: usize,
    first_ns: u64,
    last_ns: u64,
    datagrams: u64,
    rtp: u64,
    rtcp: u64,
    first_ssrc: Option<u32>,
    ssrc_counts: HashMap<u32, u64>,
    spans: HashMap<u32, SsrcSpan>,
}

impl Flow {
    /// The rule `import` uses for an RTP stream.
    fn looks_like_rtp(&self) -> bool {
        let top_ssrc = self.ssrc_counts.values().copied().max().unwrap_or(0);
        self.rtp >= 2 && self.rtp * 2 >= self.datagrams && top_ssrc >= 2
    }
}

/// One RTP stream found in the capture.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Position in order of first packet.
    pub index: usize,
    /// Source address in the capture.
    pub src: SocketAddr,
    /// Destination address in the capture.
    pub dst: SocketAddr,
    /// The first SSRC of the flow.
    pub ssrc: u32,
    /// Capture time of its first datagram (ns since the epoch).
    pub first_ns: u64,
    /// Datagrams of the flow that are not RTCP (sent as the stream).
    pub packets: u64,
    /// RTCP multiplexed on the flow.
    pub rtcp_muxed: u64,
    /// The RTCP flow from source port + 1 to destination port + 1, if the capture has one.
    pub rtcp_flow: Option<RtcpFlow>,
    last_ns: u64,
    step_ns: u64,
    offsets: HashMap<u32, (u16, u32)>,
}

/// A stream's RTCP on its own ports (source port + 1 to destination port + 1).
#[derive(Debug, Clone, Copy)]
pub struct RtcpFlow {
    /// Source address in the capture.
    pub src: SocketAddr,
    /// Destination address in the capture.
    pub dst: SocketAddr,
    /// Its datagrams.
    pub packets: u64,
    first_ns: u64,
    last_ns: u64,
}

impl StreamInfo {
    fn ssrc_hex(&self) -> String {
        format!("0x{:08x}", self.ssrc)
    }
}

/// What the first pass found: every RTP stream, in order of first packet.
#[derive(Debug)]
pub struct ReplayPlan {
    /// All RTP streams in the capture, in order of first packet (ties: capture order).
    pub streams: Vec<StreamInfo>,
    /// Where the capture stops being readable, if it does.
    pub capture_error: Option<ReplayIssue>,
}

/// First pass: finds the capture's RTP streams, their RTCP and their repeat offsets.
pub fn plan(opts: &ReplayOptions) -> Result<ReplayPlan, ReplayError> {
    let mut reader = CaptureReader::open(&opts.capture)?;
    let mut flows: HashMap<FlowKey, Flow> = HashMap::new();
    let mut capture_error = None;
    loop {
        let d = match reader.next_datagram() {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                capture_error = Some(ReplayIssue {
                    kind: IssueKind::Capture,
                    offset: e.offset(),
                    stream: None,
                    message: e.to_string(),
                });
                break;
            }
        };
        if sip::parse_sip(&d.payload).is_some() {
            continue;
        }
        let order = flows.len();
        let f = flows.entry((d.src, d.dst)).or_insert_with(|| Flow { order, first_ns: d.time_ns, ..Flow::default() });
        f.datagrams += 1;
        f.last_ns = f.last_ns.max(d.time_ns);
        match rtp::parse(&d.payload) {
            Ok(Packet::Rtp(p)) => {
                f.rtp += 1;
                f.first_ssrc.get_or_insert(p.ssrc);
                *f.ssrc_counts.entry(p.ssrc).or_default() += 1;
                if let Some(s) = f.spans.get_mut(&p.ssrc) {
                    s.add(p.sequence, p.timestamp);
                } else if f.spans.len() < MAX_SSRCS_PER_FLOW {
                    f.spans.insert(p.ssrc, SsrcSpan::new(p.sequence, p.timestamp));
                }
            }
            Ok(Packet::Rtcp(_)) => f.rtcp += 1,
            Err(_) => {}
        }
    }
    let mut rtp_flows: Vec<(&FlowKey, &Flow)> = flows.iter().filter(|(_, f)| f.looks_like_rtp()).collect();
    rtp_flows.sort_by_key(|(_, f)| (f.first_ns, f.order));
    let streams = rtp_flows
        .into_iter()
        .enumerate()
        .map(|(index, (&(src, dst), f))| {
            let rtcp_flow = match (src.port().checked_add(1), dst.port().checked_add(1)) {
                (Some(sp), Some(dp)) => {
                    let k = (SocketAddr::new(src.ip(), sp), SocketAddr::new(dst.ip(), dp));
                    flows.get(&k).filter(|r| r.rtp == 0 && r.rtcp > 0).map(|r| RtcpFlow {
                        src: k.0,
                        dst: k.1,
                        packets: r.datagrams,
                        first_ns: r.first_ns,
                        last_ns: r.last_ns,
                    })
                }
                _ => None,
            };
            StreamInfo {
                index,
                src,
                dst,
                ssrc: f.first_ssrc.unwrap_or(0),
                first_ns: f.first_ns,
                packets: f.datagrams - f.rtcp,
                rtcp_muxed: f.rtcp,
                rtcp_flow,
                last_ns: f.last_ns,
                step_ns: (f.last_ns - f.first_ns) / (f.datagrams - 1).max(1),
                offsets: f.spans.iter().map(|(ssrc, s)| (*ssrc, s.repeat_offset())).collect(),
            }
        })
        .collect();
    Ok(ReplayPlan { streams, capture_error })
}

/// Where a datagram of the capture goes in the second pass.
#[derive(Clone, Copy)]
enum Route {
    /// The stream's own flow (RTP, and RTCP when muxed).
    Stream(usize),
    /// The stream's RTCP flow on port + 1.
    Rtcp(usize),
}

/// A stream being sent.
struct Sender {
    socket: UdpSocket,
    rtcp_socket: Option<UdpSocket>,
    dst: SocketAddr,
    rtcp_dst: Option<SocketAddr>,
    packets: u64,
    rtcp_packets: u64,
}

/// Binds a socket on an ephemeral port of `dst`'s address family and, when `pair`, a second one
/// on the port above it (so RTCP leaves from RTP port + 1, as receivers expect); if no such pair
/// is free after a few tries, the RTCP socket gets any ephemeral port.
fn bind_for(dst: SocketAddr, pair: bool) -> io::Result<(UdpSocket, Option<UdpSocket>)> {
    let any = match dst.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    if !pair {
        return Ok((UdpSocket::bind(SocketAddr::new(any, 0))?, None));
    }
    for _ in 0..32 {
        let rtp = UdpSocket::bind(SocketAddr::new(any, 0))?;
        let Some(next) = rtp.local_addr()?.port().checked_add(1) else { continue };
        if let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(any, next)) {
            return Ok((rtp, Some(rtcp)));
        }
    }
    Ok((UdpSocket::bind(SocketAddr::new(any, 0))?, Some(UdpSocket::bind(SocketAddr::new(any, 0))?)))
}

fn send(socket: &UdpSocket, buf: &[u8], dst: SocketAddr) -> io::Result<()> {
    loop {
        match socket.send_to(buf, dst) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn check_options(opts: &ReplayOptions) -> Result<(), ReplayError> {
    if opts.destinations.is_empty() {
        return Err(ReplayError::NoDestinations);
    }
    if !(opts.speed.is_finite() && opts.speed > 0.0) {
        return Err(ReplayError::BadSpeed(opts.speed));
    }
    if opts.loops == 0 {
        return Err(ReplayError::BadLoops);
    }
    Ok(())
}

/// Reads the capture, finds its RTP streams and sends stream `i` to `opts.destinations[i]`.
///
/// An `Err` means nothing was sent. Problems while sending (a send error, the capture unreadable
/// from some offset) are in the summary's `errors`; see [`ReplaySummary::exit_code`].
pub fn replay(opts: &ReplayOptions, progress: Option<Progress<'_>>) -> Result<ReplaySummary, ReplayError> {
    check_options(opts)?;
    let plan = plan(opts)?;
    replay_plan(opts, &plan, progress)
}

/// Second pass: sends the streams of `plan` (from [`plan`] on the same options).
pub fn replay_plan(
    opts: &ReplayOptions,
    plan: &ReplayPlan,
    mut progress: Option<Progress<'_>>,
) -> Result<ReplaySummary, ReplayError> {
    check_options(opts)?;
    if plan.streams.len() < opts.destinations.len() {
        return Err(ReplayError::TooFewStreams {
            streams: plan.streams.len(),
            destinations: opts.destinations.len(),
            capture_error: plan.capture_error.as_ref().map(|e| e.message.clone()),
        });
    }
    let chosen = &plan.streams[..opts.destinations.len()];

    // Sockets and routes.
    let mut route: HashMap<FlowKey, Route> = HashMap::new();
    let mut senders = Vec::with_capacity(chosen.len());
    let mut total_per_loop = 0u64;
    for (s, &dst) in chosen.iter().zip(&opts.destinations) {
        let rtcp_flow = s.rtcp_flow.filter(|_| opts.rtcp);
        let rtcp_dst = match rtcp_flow {
            Some(_) => Some(SocketAddr::new(
                dst.ip(),
                dst.port().checked_add(1).ok_or(ReplayError::RtcpPort { index: s.index, dst })?,
            )),
            None if opts.rtcp && s.rtcp_muxed > 0 => Some(dst),
            None => None,
        };
        let (socket, rtcp_socket) =
            bind_for(dst, rtcp_flow.is_some()).map_err(|source| ReplayError::Socket { index: s.index, dst, source })?;
        route.insert((s.src, s.dst), Route::Stream(s.index));
        total_per_loop += s.packets;
        if opts.rtcp {
            total_per_loop += s.rtcp_muxed;
        }
        if let Some(r) = rtcp_flow {
            route.entry((r.src, r.dst)).or_insert(Route::Rtcp(s.index));
            total_per_loop += r.packets;
        }
        senders.push(Sender { socket, rtcp_socket, dst, rtcp_dst, packets: 0, rtcp_packets: 0 });
    }
    let total = total_per_loop * u64::from(opts.loops);

    // The schedule: capture time relative to the first datagram sent; repeats one period apart,
    // the period being the capture's span plus one packet interval of the stream that ends last.
    let mut origin = u64::MAX;
    let mut end = 0u64;
    let mut step = 0u64;
    for s in chosen {
        origin = origin.min(s.first_ns);
        if s.last_ns >= end {
            end = s.last_ns;
            step = s.step_ns;
        }
        if let Some(r) = s.rtcp_flow.filter(|_| opts.rtcp) {
            origin = origin.min(r.first_ns);
            end = end.max(r.last_ns);
        }
    }
    let mut errors: Vec<ReplayIssue> = plan.capture_error.iter().cloned().collect();
    let period = end.saturating_sub(origin) + step;

    let mut sent = 0u64;
    let start = Instant::now();
    let mut last_send = start;
    'loops: for rep in 0..opts.loops {
        let mut reader = match CaptureReader::open(&opts.capture) {
            Ok(r) => r,
            Err(e) => {
                // Read fine in the first pass; gone or changed since. Keep what was sent.
                errors.push(ReplayIssue {
                    kind: IssueKind::Capture,
                    offset: e.offset(),
                    stream: None,
                    message: e.to_string(),
                });
                break;
            }
        };
        loop {
            let mut d = match reader.next_datagram() {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => {
                    if errors.iter().all(|i| i.kind != IssueKind::Capture) {
                        errors.push(ReplayIssue {
                            kind: IssueKind::Capture,
                            offset: e.offset(),
                            stream: None,
                            message: e.to_string(),
                        });
                    }
                    break;
                }
            };
            let Some(&r) = route.get(&(d.src, d.dst)) else { continue };
            if sip::parse_sip(&d.payload).is_some() {
                continue; // as in the first pass: signalling is never part of a stream
            }
            let (index, rtcp) = match r {
                Route::Stream(i) => {
                    let rtcp = matches!(rtp::parse(&d.payload), Ok(Packet::Rtcp(_)));
                    if rtcp && !opts.rtcp {
                        continue;
                    }
                    if !rtcp && rep > 0 {
                        continue_stream(&mut d.payload, &chosen[i].offsets, rep);
                    }
                    (i, rtcp)
                }
                Route::Rtcp(i) => (i, true),
            };
            let rel = d.time_ns.saturating_sub(origin) as f64 + f64::from(rep) * period as f64;
            let due = start + Duration::from_nanos((rel / opts.speed) as u64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let s = &mut senders[index];
            // Muxed RTCP stays on the stream's own socket and destination.
            let (socket, dst) = match (r, &s.rtcp_socket, s.rtcp_dst) {
                (Route::Rtcp(_), Some(sock), Some(dst)) => (sock, dst),
                _ => (&s.socket, s.dst),
            };
            if let Err(e) = send(socket, &d.payload, dst) {
                errors.push(ReplayIssue {
                    kind: IssueKind::Send,
                    offset: Some(d.file_offset),
                    stream: Some(index),
                    message: format!(
                        "cannot send stream {index} to {dst} (datagram at byte {} of the capture): {e}",
                        d.file_offset
                    ),
                });
                break 'loops;
            }
            last_send = Instant::now();
            if rtcp {
                s.rtcp_packets += 1;
            } else {
                s.packets += 1;
            }
            sent += 1;
            if let Some(p) = progress.as_mut() {
                p(sent, total);
            }
        }
    }

    let ms = |ns: u64| ns / 1_000_000;
    let streams = chosen
        .iter()
        .zip(&senders)
        .map(|(s, tx)| StreamReport {
            index: s.index,
            src: s.src.to_string(),
            dst: s.dst.to_string(),
            ssrc: s.ssrc_hex(),
            packets: tx.packets,
            rtcp_packets: tx.rtcp_packets,
            sent_to: tx.dst.to_string(),
            rtcp_sent_to: tx.rtcp_dst.map(|d| d.to_string()),
            source_port: tx.socket.local_addr().map(|a| a.port()).unwrap_or(0),
            first_offset_ms: ms(s.first_ns.saturating_sub(origin)),
        })
        .collect();
    let skipped_streams = plan.streams[chosen.len()..]
        .iter()
        .map(|s| SkippedStream {
            index: s.index,
            src: s.src.to_string(),
            dst: s.dst.to_string(),
            ssrc: s.ssrc_hex(),
            packets: s.packets,
        })
        .collect();
    Ok(ReplaySummary {
        streams,
        skipped_streams,
        packets_sent: sent,
        duration_ms: last_send.duration_since(start).as_millis() as u64,
        loops: opts.loops,
        errors,
    })
}

/// Moves an RTP packet's sequence number and timestamp on by `rep` repeats of its SSRC's span, so
/// the receiver sees one continuous stream.
fn continue_stream(buf: &mut [u8], offsets: &HashMap<u32, (u16, u32)>, rep: u32) {
    let Ok(Packet::Rtp(p)) = rtp::parse(buf) else { return };
    let Some(&(seq_step, ts_step)) = offsets.get(&p.ssrc) else { return };
    let seq = p.sequence.wrapping_add(seq_step.wrapping_mul(rep as u16));
    let ts = p.timestamp.wrapping_add(ts_step.wrapping_mul(rep));
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_continues_across_wraps_and_dtmf() {
        let mut s = SsrcSpan::new(65534, u32::MAX - 159);
        for i in 1..10u16 {
            s.add(65534u16.wrapping_add(i), (u32::MAX - 159).wrapping_add(160 * u32::from(i)));
        }
        // A repeated timestamp (an RFC 4733 event) does not change the usual step.
        s.add(65534u16.wrapping_add(10), (u32::MAX - 159).wrapping_add(160 * 9));
        assert_eq!(s.repeat_offset(), (11, 160 * 9 + 160));
    }

    #[test]
    fn reordered_packets_use_the_extent_not_the_last() {
        let mut s = SsrcSpan::new(10, 1600);
        for seq in [11u16, 12, 13, 15, 14, 16] {
            s.add(seq, 1600 + 160 * u32::from(seq - 10));
        }
        assert_eq!(s.repeat_offset(), (7, 6 * 160 + 160));
    }

    #[test]
    fn continue_stream_rewrites_only_seq_and_ts() {
        let mut pkt = vec![0x80, 0, 0xff, 0xff, 0, 0, 0, 10, 0, 0, 0, 7, 1, 2, 3];
        let offsets = HashMap::from([(7u32, (5u16, 800u32))]);
        continue_stream(&mut pkt, &offsets, 2);
        assert_eq!(pkt, vec![0x80, 0, 0, 9, 0, 0, 6, 74, 0, 0, 0, 7, 1, 2, 3]);
        // Unknown SSRC: unchanged.
        let mut other = vec![0x80, 0, 0, 1, 0, 0, 0, 10, 0, 0, 0, 8];
        let before = other.clone();
        continue_stream(&mut other, &offsets, 1);
        assert_eq!(other, before);
    }

    #[test]
    fn bad_options_are_refused_before_reading() {
        let mut o = ReplayOptions::new("/nonexistent.pcap", vec![]);
        assert!(matches!(replay(&o, None), Err(ReplayError::NoDestinations)));
        o.destinations.push("127.0.0.1:9".parse().unwrap());
        o.speed = 0.0;
        assert!(matches!(replay(&o, None), Err(ReplayError::BadSpeed(_))));
        o.speed = 1.0;
        o.loops = 0;
        assert!(matches!(replay(&o, None), Err(ReplayError::BadLoops)));
    }
}
