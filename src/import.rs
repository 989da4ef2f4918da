//! `callvault import`: a packet capture in, one recording per call out.
//!
//! Two passes over the capture. The first finds the calls: SIP/SDP gives Call-IDs, payload maps
//! and which streams belong together; streams without signalling are paired A→B with B→A. The
//! second pass drives one [`Recording`] per call with the capture's own timestamps, so the same
//! capture always gives the same audio. A call's file is opened at its first packet and
//! finalised right after its last, so open files track concurrent calls, not all calls.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::capture::sip::{self, Sdp, SipKind};
use crate::capture::{CaptureError, CaptureReader, Datagram};
use crate::core::leg::TimelineConfig;
use crate::core::mixer::{self, Layout};
use crate::core::payload::{PayloadFormat, PayloadMap};
use crate::core::recording::{LegSpec, Recording, RecordingConfig};
use crate::core::rtp::{self, Packet};
use crate::output::sealed::{self, AudioFile};
use crate::output::wav::{WavError, WavSpec};

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The pcap or pcapng file.
    pub capture: PathBuf,
    /// Directory for the recordings (created if missing).
    pub out_dir: PathBuf,
    /// Channel layout.
    pub layout: Layout,
    /// Operator payload mappings; they override SDP and the static table.
    pub payload_overrides: Vec<(u8, PayloadFormat)>,
    /// Keep DTMF digit values.
    pub keep_dtmf_digits: bool,
    /// Seal the recordings (and write sealed metadata beside them), as `serve` does.
    pub sealing: Option<std::sync::Arc<crate::output::sealed::Sealing>>,
    /// Sample rate of every recording; `None`: per recording, the highest audio rate among the
    /// codecs its legs sent.
    pub sample_rate: Option<u32>,
    /// Fill comfort-noise periods with noise at the signalled level (else silence).
    pub comfort_noise: bool,
    /// File format of the recordings.
    pub format: crate::output::encode::Format,
}

/// Progress callback: `(bytes read, total bytes, pass 1 or 2)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>, u8);

/// A failure that stops the import before anything could be written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The capture cannot be read at all (missing, not a capture, unsupported link type).
    #[error("{0}")]
    Capture(#[from] CaptureError),
    /// The output directory cannot be created or used.
    #[error("cannot use output directory {path}: {source}")]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The JSON report: one object for the whole import.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ImportReport {
    /// Recordings written.
    pub recordings: Vec<RecordingReport>,
    /// Problems: unreadable parts of the capture, recordings that failed to write.
    pub errors: Vec<ImportIssue>,
    /// What the capture reader passed over.
    pub capture: CaptureSummary,
}

impl ImportReport {
    /// The process exit code: 0 all written, 3 capture partly unreadable, 1 a recording failed.
    pub fn exit_code(&self) -> i32 {
        if self.errors.iter().any(|e| e.kind == IssueKind::Write) {
            1
        } else if self.errors.is_empty() {
            0
        } else {
            3
        }
    }
}

/// Counters from reading the capture.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CaptureSummary {
    /// Packet records read.
    pub frames: u64,
    /// UDP datagrams found.
    pub udp_datagrams: u64,
    /// Frames that were not UDP over IP (or were IP fragments) and were passed over.
    pub frames_skipped: u64,
    /// Frames with broken headers or lengths.
    pub bad_frames: u64,
    /// UDP datagrams that were neither SIP nor part of an RTP stream.
    pub other_udp: u64,
    /// SIP messages read.
    pub sip_messages: u64,
}

/// Kinds of problem in [`ImportIssue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// Part of the capture could not be read.
    Capture,
    /// A recording could not be written.
    Write,
}

/// One problem, with where it happened.
#[derive(Debug, Clone, Serialize)]
pub struct ImportIssue {
    /// What kind of problem.
    pub kind: IssueKind,
    /// Byte offset in the capture, for capture problems.
    pub offset: Option<u64>,
    /// The call concerned, for write problems.
    pub call_id: Option<String>,
    /// What happened and what to do.
    pub message: String,
}

/// One recording in the report.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingReport {
    /// ULID of the recording.
    pub recording_id: String,
    /// SIP Call-ID, or the stream's addresses when the capture has no signalling.
    pub call_id: String,
    /// Absolute path of the file (null with `--layout separate`).
    pub file: Option<String>,
    /// `stereo`, `mono` or `separate`.
    pub layout: &'static str,
    /// `wav`, `wav-ulaw`, `wav-alaw`, `opus` or `mp3`.
    pub format: &'static str,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Channels per file.
    pub channels: u16,
    /// Length in milliseconds.
    pub duration_ms: u64,
    /// Legs in channel order.
    pub legs: Vec<LegReport>,
    /// The first packet's time (UTC, RFC 3339).
    pub started_at: String,
    /// With `--encrypt`: each file's signed digests.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seals: Vec<serde_json::Value>,
    /// With `--encrypt`: the sealed metadata file (this report, sealed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_file: Option<String>,
}

/// One leg in the report.
#[derive(Debug, Clone, Serialize)]
pub struct LegReport {
    /// `caller`/`callee` with SIP, else `a`/`b` in order of first packet.
    pub label: String,
    /// Channel index in the file (0 for mono and separate).
    pub channel: u16,
    /// Absolute path of the leg's own file (`--layout separate` only).
    pub file: Option<String>,
    /// Where the leg's first packet sits in the recording, in ms (null if it never sent).
    pub start_offset_ms: Option<u64>,
    /// Source address of the stream.
    pub src: Option<String>,
    /// Destination address of the stream.
    pub dst: Option<String>,
    /// SSRCs in order of appearance, lowercase `0x` + 8 hex digits.
    pub ssrcs: Vec<String>,
    /// Payload types seen and their formats.
    pub payload_types: BTreeMap<String, String>,
    /// RTP packets (events included, RTCP not).
    pub packets: u64,
    /// Expected − received (RFC 3550).
    pub lost: u64,
    /// Too late to place.
    pub late: u64,
    /// Too far ahead of arrival to place (a sender faster than real time).
    pub ahead: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Out of order but placed.
    pub reordered: u64,
    /// SSRC changes after the first SSRC.
    pub ssrc_changes: u64,
    /// Timestamp discontinuities (re-anchors).
    pub discontinuities: u64,
    /// Clock-drift corrections.
    pub drift_corrections: u64,
    /// RTCP packets seen for this leg.
    pub rtcp_packets: u64,
    /// Datagrams that were neither RTP nor RTCP.
    pub malformed: u64,
    /// RTP packets whose payload type is not mapped (pass `--pt` to map it).
    pub unknown_payload_type: u64,
    /// The leg sent no audio: its channel is silence.
    pub silent: bool,
    /// A codec callvault cannot decode yet (its time is kept as silence), or null.
    pub unsupported_codec: Option<String>,
    /// Lost packets filled by the codec (Opus FEC or concealment).
    pub concealed: u64,
    /// Packets the codec could not decode (kept as silence).
    pub decode_errors: u64,
    /// Comfort-noise packets (RFC 3389).
    pub comfort_noise_packets: u64,
    /// DTMF events.
    pub dtmf: Vec<DtmfReport>,
}

/// One DTMF event in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DtmfReport {
    /// Start, ms from the recording's start.
    pub offset_ms: u64,
    /// Duration in ms.
    pub duration_ms: u64,
    /// The digit, only with `--dtmf-digits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digit: Option<String>,
}

type FlowKey = (SocketAddr, SocketAddr);

/// What pass 1 found: RTP flows by address pair, and SIP calls by Call-ID.
type Discovered = (HashMap<FlowKey, Flow>, BTreeMap<String, SipCall>);

#[derive(Default)]
struct Flow {
    order: usize,
    first_ns: u64,
    last_ns: u64,
    datagrams: u64,
    rtp: u64,
    rtcp: u64,
    ssrc_counts: HashMap<u32, u64>,
    /// Per payload type: packets, and how many had exactly 4 payload bytes (telephone-event).
    pts: BTreeMap<u8, (u64, u64)>,
    /// Timestamp rate of the stream, measured against capture time (for unsignalled streams).
    clock: ClockEstimate,
}

/// Measures how fast a stream's RTP timestamps advance against capture time.
#[derive(Default)]
struct ClockEstimate {
    first: Option<(u32, u64)>,
    last_ts: u32,
    ext: i64,
    last_ns: u64,
}

impl ClockEstimate {
    fn add(&mut self, ts: u32, ns: u64) {
        match self.first {
            None => {
                self.first = Some((ts, ns));
                self.last_ts = ts;
            }
            Some(_) => {
                self.ext += i64::from(ts.wrapping_sub(self.last_ts) as i32);
                self.last_ts = ts;
            }
        }
        self.last_ns = ns;
    }

    /// The standard RTP clock (8, 16 or 48 kHz) nearest the measured rate, if within 10 %.
    fn standard_rate(&self) -> Option<u32> {
        let (_, first_ns) = self.first?;
        let secs = (self.last_ns.checked_sub(first_ns)? as f64) / 1e9;
        if secs < 0.5 {
            return None;
        }
        let rate = self.ext as f64 / secs;
        [8000u32, 16000, 48000].into_iter().find(|r| (rate / f64::from(*r) - 1.0).abs() < 0.1)
    }
}

impl Flow {
    fn looks_like_rtp(&self) -> bool {
        let top_ssrc = self.ssrc_counts.values().copied().max().unwrap_or(0);
        self.rtp >= 2 && self.rtp * 2 >= self.datagrams && top_ssrc >= 2
    }
}

/// Media description of one side of a SIP call.
#[derive(Default)]
struct SipSide {
    /// Signalling address of the side (where its requests came from).
    signalling: Option<SocketAddr>,
    /// Where it receives media (from its SDP).
    media: Vec<SocketAddr>,
    map: Vec<(u8, PayloadFormat)>,
}

#[derive(Default)]
struct SipCall {
    first_ns: u64,
    caller: SipSide,
    callee: SipSide,
}

struct CallPlan {
    call_id: String,
    legs: Vec<PlannedLeg>,
    first_ns: u64,
    datagrams: u64,
    /// The recording's sample rate, chosen once pass 1 knows what the legs sent.
    sample_rate: u32,
}

struct PlannedLeg {
    label: String,
    /// The leg's streams: usually one; more when a re-INVITE moved the media to a new port.
    flows: Vec<FlowKey>,
    map: PayloadMap,
}

fn sdp_media(sdp: &Sdp) -> (Vec<SocketAddr>, Vec<(u8, PayloadFormat)>) {
    let mut addrs = Vec::new();
    let mut map = Vec::new();
    for m in sdp.media.iter().filter(|m| m.kind.eq_ignore_ascii_case("audio")) {
        if let Some(ip) = m.connection.or(sdp.connection)
            && m.port != 0
        {
            addrs.push(SocketAddr::new(ip, m.port));
        }
        for r in &m.rtpmap {
            map.push((r.pt, PayloadFormat::new(&r.encoding, r.clock_rate, r.channels)));
        }
    }
    (addrs, map)
}

/// Pass 1: find SIP calls and RTP flows.
fn discover(
    opts: &ImportOptions,
    progress: &mut Option<Progress<'_>>,
    report: &mut ImportReport,
) -> Result<Discovered, ImportError> {
    let mut reader = CaptureReader::open(&opts.capture)?;
    let mut flows: HashMap<FlowKey, Flow> = HashMap::new();
    let mut calls: BTreeMap<String, SipCall> = BTreeMap::new();
    let mut n = 0u64;
    loop {
        let d = match reader.next_datagram() {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                report.errors.push(ImportIssue {
                    kind: IssueKind::Capture,
                    offset: e.offset(),
                    call_id: None,
                    message: e.to_string(),
                });
                break;
            }
        };
        n += 1;
        if n.is_multiple_of(4096)
            && let Some(p) = progress.as_mut()
        {
            p(reader.bytes_consumed(), reader.total_bytes(), 1);
        }
        if let Some(msg) = sip::parse_sip(&d.payload) {
            report.capture.sip_messages += 1;
            note_sip(&mut calls, &d, msg);
            continue;
        }
        let order = flows.len();
        let f = flows.entry((d.src, d.dst)).or_insert_with(|| Flow { order, first_ns: d.time_ns, ..Flow::default() });
        f.datagrams += 1;
        f.last_ns = f.last_ns.max(d.time_ns);
        match rtp::parse(&d.payload) {
            Ok(Packet::Rtp(p)) => {
                f.rtp += 1;
                *f.ssrc_counts.entry(p.ssrc).or_default() += 1;
                let e = f.pts.entry(p.payload_type).or_default();
                e.0 += 1;
                e.1 += u64::from(p.payload.len() == 4);
                if p.payload.len() != 4 {
                    f.clock.add(p.timestamp, d.time_ns);
                }
            }
            Ok(Packet::Rtcp(_)) => f.rtcp += 1,
            Err(_) => {}
        }
    }
    let stats = reader.stats();
    report.capture.frames = stats.frames_read;
    report.capture.udp_datagrams = stats.datagrams;
    report.capture.frames_skipped = stats.frames_skipped;
    report.capture.bad_frames = stats.bad_frames;
    Ok((flows, calls))
}

fn note_sip(calls: &mut BTreeMap<String, SipCall>, d: &Datagram, msg: sip::SipMessage) {
    let call =
        calls.entry(msg.call_id.clone()).or_insert_with(|| SipCall { first_ns: d.time_ns, ..SipCall::default() });
    // The side that sent the first request is the caller.
    let is_request = matches!(msg.kind, SipKind::Request { .. });
    if call.caller.signalling.is_none() && is_request {
        call.caller.signalling = Some(d.src);
        call.callee.signalling = Some(d.dst);
    }
    let Some(sdp) = &msg.sdp else { return };
    let from_caller = match call.caller.signalling {
        Some(c) => c == d.src,
        None => !is_request,
    };
    let side = if from_caller { &mut call.caller } else { &mut call.callee };
    let (addrs, map) = sdp_media(sdp);
    for a in addrs {
        if !side.media.contains(&a) {
            side.media.push(a);
        }
    }
    side.map.extend(map);
}

/// Builds the payload map for a flow: static types, then signalled ones, then inferred
/// telephone-event, then the operator's overrides.
fn leg_map(signalled: &[(u8, PayloadFormat)], flow: Option<&Flow>, overrides: &[(u8, PayloadFormat)]) -> PayloadMap {
    let mut map = PayloadMap::with_static_types();
    for (pt, f) in signalled {
        map.insert(*pt, f.clone());
    }
    if let Some(flow) = flow {
        // Events share the audio's clock (RFC 4733 §2.1); measure it when the audio is unmapped.
        let audio_clock = flow
            .pts
            .keys()
            .filter_map(|pt| map.get(*pt))
            .find(|f| f.codec.is_audio())
            .map(|f| f.clock_rate)
            .or_else(|| flow.clock.standard_rate())
            .unwrap_or(8000);
        for (&pt, &(count, four)) in &flow.pts {
            // Unsignalled dynamic type whose every payload is 4 bytes: RFC 4733 events. Guessing
            // is safe here: such a payload is far too small for any audio frame.
            if pt >= 96 && map.get(pt).is_none() && count > 0 && four == count {
                map.insert(pt, PayloadFormat::new("telephone-event", audio_clock, None));
            }
        }
    }
    for (pt, f) in overrides {
        map.insert(*pt, f.clone());
    }
    map
}

/// Turns SIP calls and flows into planned recordings.
fn plan(opts: &ImportOptions, flows: &HashMap<FlowKey, Flow>, sip_calls: &BTreeMap<String, SipCall>) -> Vec<CallPlan> {
    let mut claimed: HashMap<FlowKey, ()> = HashMap::new();
    let mut plans = Vec::new();
    let mut media_flows: Vec<(&FlowKey, &Flow)> = flows.iter().filter(|(_, f)| f.rtp > 0).collect();
    media_flows.sort_by_key(|(_, f)| f.order);
    for (call_id, call) in sip_calls {
        if call.caller.media.is_empty() && call.callee.media.is_empty() {
            continue;
        }
        // caller→callee flows are sent to one of the callee's media addresses (every address its
        // SDP ever gave, so a re-INVITE to a new port continues the same leg), or, failing that,
        // sent from one of the caller's.
        let find = |to: &SipSide, from: &SipSide, claimed: &HashMap<FlowKey, ()>| {
            let unclaimed = |k: &FlowKey| !claimed.contains_key(k);
            let by_dst: Vec<FlowKey> =
                media_flows.iter().map(|(k, _)| **k).filter(|k| to.media.contains(&k.1) && unclaimed(k)).collect();
            if by_dst.is_empty() {
                media_flows.iter().map(|(k, _)| **k).filter(|k| from.media.contains(&k.0) && unclaimed(k)).collect()
            } else {
                by_dst
            }
        };
        let mut legs = Vec::new();
        for (label, receiver, sender) in
            [("caller", &call.callee, &call.caller), ("callee", &call.caller, &call.callee)]
        {
            let leg_flows = find(receiver, sender, &claimed);
            for k in &leg_flows {
                claimed.insert(*k, ());
            }
            // The sender uses the receiver's payload numbers; fall back to its own.
            let mut signalled = sender.map.clone();
            signalled.extend(receiver.map.iter().cloned());
            let map = leg_map(&signalled, leg_flows.first().and_then(|k| flows.get(k)), &opts.payload_overrides);
            legs.push(PlannedLeg { label: label.to_string(), flows: leg_flows, map });
        }
        plans.push(CallPlan {
            call_id: call_id.clone(),
            legs,
            first_ns: call.first_ns,
            datagrams: 0,
            sample_rate: 8000,
        });
    }
    for (k, f) in &media_flows {
        if claimed.contains_key(*k) || !f.looks_like_rtp() {
            continue;
        }
        claimed.insert(**k, ());
        let reverse = (k.1, k.0);
        let mut legs = vec![PlannedLeg {
            label: "a".into(),
            flows: vec![**k],
            map: leg_map(&[], Some(f), &opts.payload_overrides),
        }];
        if let Some(rf) = flows.get(&reverse).filter(|rf| rf.looks_like_rtp() && !claimed.contains_key(&reverse)) {
            claimed.insert(reverse, ());
            legs.push(PlannedLeg {
                label: "b".into(),
                flows: vec![reverse],
                map: leg_map(&[], Some(rf), &opts.payload_overrides),
            });
        }
        plans.push(CallPlan {
            call_id: format!("{}-{}", k.0, k.1),
            legs,
            first_ns: f.first_ns,
            datagrams: 0,
            sample_rate: 8000,
        });
    }
    plans.sort_by(|a, b| a.first_ns.cmp(&b.first_ns).then_with(|| a.call_id.cmp(&b.call_id)));
    plans
}

/// Keeps a file name to safe characters and a sane length.
pub fn sanitise(call_id: &str) -> String {
    let s: String = call_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(80)
        .collect();
    let s = s.trim_matches('.').to_string();
    if s.is_empty() { "call".to_string() } else { s }
}

/// A call being written in pass 2.
struct ActiveCall {
    plan_index: usize,
    recording: Recording,
    recording_id: String,
    writers: Vec<(PathBuf, PathBuf, AudioFile)>,
    started_at: String,
    seals: Vec<serde_json::Value>,
    planes: Vec<Vec<i16>>,
    mixed: Vec<i16>,
    remaining: u64,
    failed: Option<String>,
}

const POLL_FRAMES: usize = 8192;

impl ActiveCall {
    fn drain(&mut self, now_ns: u64, layout: Layout) {
        loop {
            for p in &mut self.planes {
                p.clear();
            }
            if self.recording.poll_audio(now_ns, POLL_FRAMES, &mut self.planes) == 0 {
                return;
            }
            if self.failed.is_some() {
                continue;
            }
            let result = if layout == Layout::Separate {
                self.writers.iter_mut().zip(&self.planes).try_for_each(|(w, p)| w.2.write_samples(p))
            } else {
                self.mixed.clear();
                let planes: Vec<&[i16]> = self.planes.iter().map(Vec::as_slice).collect();
                mixer::mix(layout, &planes, &mut self.mixed);
                self.writers[0].2.write_samples(&self.mixed)
            };
            if let Err(e) = result {
                self.failed = Some(e.to_string());
            }
        }
    }
}

/// Runs the import. Capture problems after the start are reported in the result (exit code 3);
/// only a capture that cannot be opened, or an unusable output directory, is an `Err`.
pub fn run(opts: &ImportOptions, mut progress: Option<Progress<'_>>) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let (flows, sip_calls) = discover(opts, &mut progress, &mut report)?;
    crate::output::ensure_dir(&opts.out_dir)
        .map_err(|source| ImportError::OutputDir { path: opts.out_dir.clone(), source })?;
    let out_dir = fs::canonicalize(&opts.out_dir)
        .map_err(|source| ImportError::OutputDir { path: opts.out_dir.clone(), source })?;
    let mut plans = plan(opts, &flows, &sip_calls);

    // Flow → (plan, leg); RTCP flows on port+1 go to the leg whose RTP is on port.
    let mut route: HashMap<FlowKey, (usize, usize)> = HashMap::new();
    for (pi, p) in plans.iter_mut().enumerate() {
        for (li, l) in p.legs.iter().enumerate() {
            for &k in &l.flows {
                route.insert(k, (pi, li));
                p.datagrams += flows.get(&k).map_or(0, |f| f.datagrams);
                let (s, d) = (k.0, k.1);
                if let (Some(sp), Some(dp)) = (s.port().checked_add(1), d.port().checked_add(1)) {
                    let rtcp = (SocketAddr::new(s.ip(), sp), SocketAddr::new(d.ip(), dp));
                    if let Some(f) = flows.get(&rtcp).filter(|f| f.rtp == 0 && f.rtcp > 0) {
                        route.entry(rtcp).or_insert((pi, li));
                        p.datagrams += f.datagrams;
                    }
                }
            }
        }
        p.first_ns = p
            .legs
            .iter()
            .flat_map(|l| l.flows.iter())
            .filter_map(|k| flows.get(k))
            .map(|f| f.first_ns)
            .min()
            .unwrap_or(p.first_ns);
        p.sample_rate = opts.sample_rate.or(opts.format.fixed_rate()).unwrap_or_else(|| {
            let sent = p.legs.iter().flat_map(|l| {
                l.flows.iter().filter_map(|k| flows.get(k)).flat_map(|f| f.pts.keys().filter_map(|pt| l.map.get(*pt)))
            });
            crate::core::decode::default_rate(sent)
        });
    }

    let timeline = TimelineConfig { comfort_noise: opts.comfort_noise, ..TimelineConfig::default() };
    let cfg = RecordingConfig { timeline, keep_dtmf_digits: opts.keep_dtmf_digits };
    let mut active: HashMap<usize, ActiveCall> = HashMap::new();
    let mut reports: Vec<Option<RecordingReport>> = vec![None; plans.len()];
    let mut reader = CaptureReader::open(&opts.capture)?;
    let mut n = 0u64;
    let mut other_udp = 0u64;
    // Pass 1 already reported where the capture breaks; stop there again.
    while let Ok(Some(d)) = reader.next_datagram() {
        n += 1;
        if n.is_multiple_of(4096)
            && let Some(p) = progress.as_mut()
        {
            p(reader.bytes_consumed(), reader.total_bytes(), 2);
        }
        let Some(&(pi, li)) = route.get(&(d.src, d.dst)) else {
            if !d.payload.is_empty() && sip::parse_sip(&d.payload).is_none() {
                other_udp += 1;
            }
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(v) = active.entry(pi) {
            match open_call(opts, &out_dir, &cfg, &plans[pi], pi) {
                Ok(call) => {
                    v.insert(call);
                }
                Err(e) => {
                    report.errors.push(ImportIssue {
                        kind: IssueKind::Write,
                        offset: None,
                        call_id: Some(plans[pi].call_id.clone()),
                        message: e.to_string(),
                    });
                    route.retain(|_, r| r.0 != pi);
                    continue;
                }
            }
        }
        let call = active.get_mut(&pi).expect("inserted above");
        call.recording.handle_datagram(d.time_ns, li, &d.payload);
        call.drain(d.time_ns, opts.layout);
        call.remaining = call.remaining.saturating_sub(1);
        if call.remaining == 0 {
            let call = active.remove(&pi).expect("present");
            reports[pi] = close_call(opts, &plans, call, &mut report);
        }
    }
    // Calls cut short by a broken capture: write what was complete.
    let mut left: Vec<usize> = active.keys().copied().collect();
    left.sort_unstable();
    for pi in left {
        let call = active.remove(&pi).expect("present");
        reports[pi] = close_call(opts, &plans, call, &mut report);
    }
    report.capture.other_udp = other_udp;
    report.recordings = reports.into_iter().flatten().collect();
    if let Some(p) = progress.as_mut() {
        p(reader.bytes_consumed(), reader.total_bytes(), 2);
    }
    Ok(report)
}

fn open_call(
    opts: &ImportOptions,
    out_dir: &Path,
    cfg: &RecordingConfig,
    plan: &CallPlan,
    pi: usize,
) -> Result<ActiveCall, WavError> {
    let specs: Vec<LegSpec> =
        plan.legs.iter().map(|l| LegSpec { label: l.label.clone(), payload_map: l.map.clone() }).collect();
    let mut cfg = cfg.clone();
    cfg.timeline.sample_rate = plan.sample_rate;
    let recording = Recording::new(cfg.clone(), specs, Some(plan.first_ns));
    let started = UNIX_EPOCH + Duration::from_nanos(plan.first_ns);
    let id = ulid::Ulid::from_datetime(started).to_string();
    let started_at = crate::engine::call::rfc3339(started);
    // Sealed files are named by recording id only: a call id may hold a number.
    let base = match opts.sealing {
        Some(_) => id.clone(),
        None => format!("{}-{}", sanitise(&plan.call_id), id),
    };
    let ext = match opts.sealing {
        Some(_) => format!("{}.cvs", opts.format.ext()),
        None => opts.format.ext().to_string(),
    };
    let rate = cfg.timeline.sample_rate;
    let mut names = Vec::new();
    if opts.layout == Layout::Separate {
        for (i, l) in plan.legs.iter().enumerate() {
            // Sealed: the leg's index, not its label (which may be a number).
            let suffix = if opts.sealing.is_some() { i.to_string() } else { sanitise(&l.label) };
            names.push((format!("{base}-{suffix}"), 1));
        }
    } else {
        names.push((base, opts.layout.channels(plan.legs.len())));
    }
    let mut writers = Vec::new();
    for (output, (name, channels)) in names.into_iter().enumerate() {
        let final_path = out_dir.join(format!("{name}.{ext}"));
        let partial = out_dir.join(format!("{name}.{ext}.partial"));
        let spec = WavSpec::pcm(rate, channels);
        let output = (opts.layout == Layout::Separate).then_some(output);
        let index = || sealed::audio_index(&id, &started_at, output);
        let w = AudioFile::create(&partial, opts.format, spec, opts.sealing.as_ref(), &id, index)?;
        writers.push((partial, final_path, w));
    }
    Ok(ActiveCall {
        plan_index: pi,
        planes: vec![Vec::new(); plan.legs.len()],
        recording,
        recording_id: id,
        writers,
        started_at,
        seals: Vec::new(),
        mixed: Vec::new(),
        remaining: plan.datagrams,
        failed: None,
    })
}

fn close_call(
    opts: &ImportOptions,
    plans: &[CallPlan],
    mut call: ActiveCall,
    report: &mut ImportReport,
) -> Option<RecordingReport> {
    let plan = &plans[call.plan_index];
    call.recording.finish();
    call.drain(u64::MAX, opts.layout);
    let frames = call.recording.frames_emitted();
    let mut files = Vec::new();
    let mut failure = call.failed.take();
    for (partial, final_path, w) in call.writers {
        if failure.is_some() {
            // Keep the partial file: `callvault repair` can still recover what was written.
            continue;
        }
        let result = w.finalize(frames).and_then(|(_, record)| {
            fs::rename(&partial, &final_path).map_err(|source| WavError::File {
                path: final_path.clone(),
                action: "rename into place",
                source,
            })?;
            Ok(record)
        });
        match result {
            Ok(record) => {
                files.push(final_path.display().to_string());
                if let (Some(r), Some(s)) = (record, &opts.sealing) {
                    let mut v = sealed::seal_summary(&r, s.keys.active_kek().map_or("", |k| k.id.as_str()));
                    v["file"] = serde_json::json!(final_path.display().to_string());
                    call.seals.push(v);
                }
            }
            Err(e) => failure = Some(e.to_string()),
        }
    }
    // The renames are only durable once the directory itself is synced.
    if failure.is_none()
        && let Some(dir) = files.first().and_then(|f| Path::new(f).parent())
        && let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all())
    {
        failure = Some(format!("cannot sync directory {}: {e}", dir.display()));
    }
    if let Some(message) = failure {
        report.errors.push(ImportIssue {
            kind: IssueKind::Write,
            offset: None,
            call_id: Some(plan.call_id.clone()),
            message,
        });
        return None;
    }
    let rate = call.recording.sample_rate();
    let ms = |pos: i64| (pos.max(0) as u64) * 1000 / u64::from(rate);
    let legs = call
        .recording
        .legs()
        .iter()
        .zip(&plan.legs)
        .enumerate()
        .map(|(i, (leg, planned))| {
            let s = leg.stats();
            LegReport {
                label: planned.label.clone(),
                channel: if opts.layout == Layout::Stereo { i as u16 } else { 0 },
                file: if opts.layout == Layout::Separate { files.get(i).cloned() } else { None },
                start_offset_ms: leg.start().map(ms),
                src: planned.flows.first().map(|k| k.0.to_string()),
                dst: planned.flows.first().map(|k| k.1.to_string()),
                ssrcs: leg.ssrcs().iter().map(|s| format!("0x{s:08x}")).collect(),
                payload_types: leg.seen_formats().iter().map(|(pt, f)| (pt.to_string(), f.clone())).collect(),
                packets: s.packets,
                lost: leg.lost(),
                late: s.late,
                ahead: s.ahead,
                duplicates: s.duplicates,
                reordered: s.reordered,
                ssrc_changes: s.ssrc_changes,
                discontinuities: s.discontinuities,
                drift_corrections: s.drift_corrections,
                rtcp_packets: s.rtcp_packets,
                malformed: s.malformed,
                unknown_payload_type: s.unknown_payload_type,
                silent: s.audio_packets == 0,
                unsupported_codec: leg.unsupported_codec().map(str::to_string),
                concealed: leg.stats().concealed,
                decode_errors: leg.stats().decode_errors,
                comfort_noise_packets: leg.stats().comfort_noise_packets,
                dtmf: leg
                    .events()
                    .iter()
                    .map(|e| DtmfReport {
                        offset_ms: ms(e.start),
                        duration_ms: e.duration_ms,
                        digit: e.digit.map(String::from),
                    })
                    .collect(),
            }
        })
        .collect();
    let mut rep = RecordingReport {
        recording_id: call.recording_id,
        call_id: plan.call_id.clone(),
        file: if opts.layout == Layout::Separate { None } else { files.first().cloned() },
        layout: opts.layout.name(),
        format: opts.format.name(),
        sample_rate: rate,
        channels: opts.layout.channels(plan.legs.len()),
        duration_ms: frames * 1000 / u64::from(rate),
        legs,
        started_at: call.started_at,
        seals: call.seals,
        metadata_file: None,
    };
    if let Some(s) = &opts.sealing
        && let Some(dir) = files.first().and_then(|f| Path::new(f).parent())
    {
        let path = dir.join(format!("{}.{}", rep.recording_id, sealed::META_EXT));
        let value = serde_json::to_value(&rep).unwrap_or_default();
        let index = sealed::clear_index(&rep.recording_id, &rep.started_at);
        match sealed::write_sealed_json(&path, &value, s, &rep.recording_id, index) {
            Ok(()) => rep.metadata_file = Some(path.display().to_string()),
            Err(e) => {
                report.errors.push(ImportIssue {
                    kind: IssueKind::Write,
                    offset: None,
                    call_id: Some(plan.call_id.clone()),
                    message: format!("cannot write {}: {e}", path.display()),
                });
                return None;
            }
        }
    }
    Some(rep)
}
