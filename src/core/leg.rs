//! One leg (one direction of a call) on the recording's wall-clock timeline.
//!
//! The placement rule, in full (docs/timeline.md explains it with examples):
//! - Samples are placed by RTP timestamp, relative to an *anchor* (a timestamp ↔ position pair).
//! - The first packet's arrival time sets the first anchor (rounded to a whole millisecond, so a
//!   leg's start offset is exact in every sample rate).
//! - The anchor moves only at a discontinuity, judged against the newest in-order audio packet:
//!   the timestamp steps backwards, jumps forward by more than the arrival gap plus a tolerance,
//!   or stands still (advances by less than the arrival gap minus the tolerance: a sender that
//!   froze its clock during hold) — and at an SSRC change. The new anchor is placed by arrival time.
//! - Packets arriving out of order are placed by timestamp while their position is still open
//!   (inside the reorder window); later ones are counted late and dropped. Duplicates are dropped.
//! - Nothing is written for lost packets, DTX or hold: those positions stay zero, so gaps keep
//!   their wall-clock length and are never collapsed. Comfort noise fills its period with noise
//!   at the signalled level (when configured); Opus concealment arrives as a lead before a packet.
//! - Clock skew: the offset between arrival position and timestamp position is tracked as a
//!   windowed low percentile (robust against jitter); once it drifts by more than one frame from its
//!   baseline, the anchor is shifted by the drift at the next quiet moment (silence is inserted
//!   into or dropped from a gap or a quiet frame), and the correction is counted.

use super::payload::PayloadFormat;
use super::seq::{SeqClass, SeqTracker};

/// Timeline tuning, shared by all legs of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineConfig {
    /// Output sample rate in Hz (a multiple of 1000).
    pub sample_rate: u32,
    /// How long a position stays open for late (reordered) packets.
    pub reorder_window_ms: u32,
    /// Slack between a timestamp step and the arrival gap before it counts as a discontinuity.
    pub jump_tolerance_ms: u32,
    /// How far past its arrival a packet may be placed before the leg is re-anchored.
    pub max_ahead_ms: u32,
    /// Length of the windows over which clock drift is measured.
    pub drift_window_ms: u32,
    /// Peak level at or below which a frame counts as quiet (drift is corrected there).
    pub quiet_peak: i16,
    /// Fill comfort-noise periods (RFC 3389) with noise at the signalled level; else silence.
    pub comfort_noise: bool,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        TimelineConfig {
            sample_rate: 8000,
            reorder_window_ms: 200,
            jump_tolerance_ms: 2000,
            max_ahead_ms: 5000,
            drift_window_ms: 5000,
            quiet_peak: 1024,
            comfort_noise: true,
        }
    }
}

impl TimelineConfig {
    pub(crate) fn ms_to_samples(&self, ms: u32) -> i64 {
        i64::from(ms) * i64::from(self.sample_rate) / 1000
    }

    /// Nanoseconds → sample positions at the output rate (floor).
    pub fn ns_to_samples(&self, ns: i64) -> i64 {
        mul_div_floor(ns, i64::from(self.sample_rate), 1_000_000_000)
    }
}

/// The header fields that place a packet, with its payload format's clock rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketId {
    /// Synchronisation source.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// Clock rate of the packet's payload format, in Hz.
    pub clock_rate: u32,
}

/// The audio one packet contributes.
#[derive(Debug, Clone, Copy)]
pub enum Media<'a> {
    /// Decoded samples at the output rate.
    Samples(&'a [i16]),
    /// Decoded samples whose first `lead` samples fill lost packets just before this one
    /// (Opus FEC and concealment): written from `lead` samples before the packet's position.
    Concealed { samples: &'a [i16], lead: usize },
    /// A frame that could not be decoded: its time is kept as silence.
    Undecodable,
    /// Comfort noise: silence starts here, at this level (RFC 3389: −dBov, 0–127); the packet
    /// occupies no samples itself.
    ComfortNoise { level_dbov: u8 },
}

/// One telephone-event (RFC 4733) as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtmfEvent {
    /// Start, in samples from the recording's origin.
    pub start: i64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// The digit; only kept when configured (digits may be card numbers).
    pub digit: Option<char>,
}

/// Counters for one leg. `packets` counts RTP packets (events included, RTCP not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegStats {
    /// RTP packets received, duplicates and events included.
    pub packets: u64,
    /// Audio packets placed on the timeline.
    pub audio_packets: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Arrived after their position closed (or too far from the rest to place): dropped.
    pub late: u64,
    /// Arrived out of order but in time: placed.
    pub reordered: u64,
    /// Dropped because even after re-anchoring they would sit more than `max_ahead_ms` ahead of
    /// their arrival: a sender faster than real time (a burst, a replay at speed). The
    /// recording follows the wall clock, so what cannot fit is not placed.
    pub ahead: u64,
    /// SSRC changes after the first.
    pub ssrc_changes: u64,
    /// Anchor moves caused by timestamp discontinuities.
    pub discontinuities: u64,
    /// Clock-drift corrections applied, and the samples they inserted or dropped.
    pub drift_corrections: u64,
    /// Samples of silence inserted by drift correction.
    pub drift_samples_inserted: u64,
    /// Samples dropped by drift correction.
    pub drift_samples_dropped: u64,
    /// RTCP packets seen on the leg (never decoded as audio).
    pub rtcp_packets: u64,
    /// Datagrams that were neither valid RTP nor valid RTCP.
    pub malformed: u64,
    /// Packets with a payload type missing from the leg's payload map.
    pub unknown_payload_type: u64,
    /// Telephone-event packets that were too short to read.
    pub bad_events: u64,
    /// Lost packets filled by the codec (Opus FEC or concealment) instead of silence.
    pub concealed: u64,
    /// Packets the codec could not decode (corrupt payloads): their time is kept as silence.
    pub decode_errors: u64,
    /// Comfort-noise packets received.
    pub comfort_noise_packets: u64,
}

struct Segment {
    ssrc: u32,
    seq: SeqTracker,
    clock_rate: u32,
    anchor_ext_ts: i64,
    anchor_pos: i64,
    reference: Option<Reference>,
    /// Extended timestamp used to extend events when no audio has set a reference yet.
    first_ts: u32,
    drift: Drift,
}

/// The newest in-order audio packet: the yardstick for discontinuities.
#[derive(Clone, Copy)]
struct Reference {
    ts: u32,
    ext_ts: i64,
    arrival_ns: i64,
    pos: i64,
    len: i64,
}

/// Drift measurement over windows of (arrival position − placed position). Jitter only delays
/// packets, so a low percentile of each window tracks the sender's clock against ours; a low
/// percentile rather than the minimum, so a few packets sent early (or reordered ahead) cannot
/// move it.
struct Drift {
    window_end_ns: i64,
    offsets: Vec<i64>,
    baseline: Option<i64>,
    pending: i64,
}

/// Fewer offsets than this in a window and it says nothing about drift.
const DRIFT_MIN_SAMPLES: usize = 20;

impl Drift {
    fn new(now_ns: i64, window_ns: i64) -> Self {
        Drift { window_end_ns: now_ns + window_ns, offsets: Vec::new(), baseline: None, pending: 0 }
    }

    /// The window's 5th-percentile offset, if it has enough packets.
    fn window_floor(&mut self) -> Option<i64> {
        if self.offsets.len() < DRIFT_MIN_SAMPLES {
            return None;
        }
        let k = self.offsets.len() / 20;
        Some(*self.offsets.select_nth_unstable(k).1)
    }
}

struct PendingFrame {
    pos: i64,
    samples: Vec<i16>,
}

/// A comfort-noise period: from a CN packet to the next audio written after it.
struct NoiseSpan {
    start: i64,
    /// `i64::MAX` while no audio has followed.
    end: i64,
    /// Peak of the uniform noise (its RMS is the signalled level).
    peak: f32,
}

struct ActiveEvent {
    ssrc: u32,
    ts: u32,
    start: i64,
    clock_rate: u32,
    duration: u32,
    code: u8,
}

/// Outcome of offering one RTP packet to a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Written to the timeline at this position.
    Placed(i64),
    /// Recorded as a telephone-event.
    Event,
    /// Counted and dropped (duplicate, late, unknown payload type…).
    Dropped,
    /// Comfort noise or similar: moved the clock, wrote nothing.
    Marker,
}

/// One leg's timeline state. Owned by exactly one recording; no interior sharing.
pub struct Leg {
    cfg: TimelineConfig,
    keep_digits: bool,
    segment: Option<Segment>,
    pending: Vec<PendingFrame>,
    spare: Vec<Vec<i16>>,
    written_end: i64,
    start: Option<i64>,
    ssrcs: Vec<u32>,
    seen_formats: Vec<(u8, String)>,
    unsupported: Option<String>,
    events: Vec<DtmfEvent>,
    active_event: Option<ActiveEvent>,
    last_closed_event: Option<(u32, u32)>,
    event_end: i64,
    closed_expected: u64,
    closed_received: u64,
    stats: LegStats,
    /// RFC 3550 A.8 interarrival jitter, seconds.
    jitter_s: f64,
    noise: Vec<NoiseSpan>,
    /// xorshift32 state: the noise is the same on every run (the core is deterministic).
    noise_state: u32,
}

impl Leg {
    /// A leg with nothing received yet.
    pub fn new(cfg: TimelineConfig, keep_digits: bool) -> Self {
        Leg {
            cfg,
            keep_digits,
            segment: None,
            pending: Vec::new(),
            spare: Vec::new(),
            written_end: 0,
            start: None,
            ssrcs: Vec::new(),
            seen_formats: Vec::new(),
            unsupported: None,
            events: Vec::new(),
            active_event: None,
            jitter_s: 0.0,
            last_closed_event: None,
            event_end: 0,
            closed_expected: 0,
            closed_received: 0,
            stats: LegStats::default(),
            noise: Vec::new(),
            noise_state: 0x9e37_79b9,
        }
    }

    /// Interarrival jitter so far (RFC 3550 A.8, smoothed over about 16 packets), seconds.
    pub fn jitter_s(&self) -> f64 {
        self.jitter_s
    }

    /// Counters so far.
    pub fn stats(&self) -> &LegStats {
        &self.stats
    }

    pub(crate) fn stats_mut(&mut self) -> &mut LegStats {
        &mut self.stats
    }

    /// Position of the leg's first packet (samples from the origin), if it sent any.
    pub fn start(&self) -> Option<i64> {
        self.start
    }

    /// SSRCs in the order they appeared.
    pub fn ssrcs(&self) -> &[u32] {
        &self.ssrcs
    }

    /// Payload types seen, with their formats, in the order they first appeared.
    pub fn seen_formats(&self) -> &[(u8, String)] {
        &self.seen_formats
    }

    /// The first codec met that could not be decoded, if any.
    pub fn unsupported_codec(&self) -> Option<&str> {
        self.unsupported.as_deref()
    }

    /// Events completed so far (an event still running is reported by [`Leg::finish_events`]).
    pub fn events(&self) -> &[DtmfEvent] {
        &self.events
    }

    /// End of the furthest sample written.
    pub fn written_end(&self) -> i64 {
        self.written_end
    }

    /// How far the leg reaches on the timeline: audio written, or the end of its last DTMF event
    /// (a call that only sent events still has a length).
    pub fn extent(&self) -> i64 {
        self.written_end.max(self.event_end)
    }

    /// Packets lost: expected − received over every source the leg had (RFC 3550).
    pub fn lost(&self) -> u64 {
        let (e, r) = self.expected_received();
        e.saturating_sub(r)
    }

    fn expected_received(&self) -> (u64, u64) {
        let (mut e, mut r) = (self.closed_expected, self.closed_received);
        if let Some(s) = &self.segment {
            e += s.seq.expected();
            r += s.seq.received();
        }
        (e, r)
    }

    pub(crate) fn note_format(&mut self, pt: u8, format: Option<&PayloadFormat>) {
        if !self.seen_formats.iter().any(|(p, _)| *p == pt) {
            let name = format.map_or_else(|| "unknown".to_string(), |f| f.to_string());
            self.seen_formats.push((pt, name));
        }
    }

    pub(crate) fn note_unsupported(&mut self, name: &str) {
        if self.unsupported.is_none() {
            self.unsupported = Some(name.to_string());
        }
    }

    fn scale_ts(&self, delta_ts: i64, clock_rate: u32) -> i64 {
        mul_div_floor(delta_ts, i64::from(self.cfg.sample_rate), i64::from(clock_rate))
    }

    fn ts_to_ns(delta_ts: i64, clock_rate: u32) -> i64 {
        mul_div_floor(delta_ts, 1_000_000_000, i64::from(clock_rate))
    }

    /// Starts a new segment for `ssrc` (first packet, or an SSRC change) anchored at `anchor_pos`.
    fn open_segment(&mut self, ssrc: u32, seq: u16, ts: u32, clock_rate: u32, now_ns: i64, anchor_pos: i64) {
        if let Some(old) = self.segment.take() {
            self.closed_expected += old.seq.expected();
            self.closed_received += old.seq.received();
            self.stats.ssrc_changes += 1;
        }
        if !self.ssrcs.contains(&ssrc) {
            self.ssrcs.push(ssrc);
        }
        let window_ns = i64::from(self.cfg.drift_window_ms) * 1_000_000;
        self.segment = Some(Segment {
            ssrc,
            seq: SeqTracker::new(seq),
            clock_rate,
            anchor_ext_ts: i64::from(ts),
            anchor_pos,
            reference: None,
            first_ts: ts,
            drift: Drift::new(now_ns, window_ns),
        });
        if self.start.is_none() {
            self.start = Some(anchor_pos);
        }
    }

    /// Where a new anchor goes when the clock cannot be trusted: by arrival, never over samples
    /// already written or positions already closed.
    fn arrival_anchor(&self, now_ns: i64, cursor: i64) -> i64 {
        let by_arrival = match self.segment.as_ref().and_then(|s| s.reference) {
            Some(r) => r.pos + self.cfg.ns_to_samples(now_ns - r.arrival_ns).max(0),
            None => self.cfg.ns_to_samples(now_ns),
        };
        by_arrival.max(self.written_end).max(cursor)
    }

    fn first_anchor(&self, now_ns: i64, cursor: i64) -> i64 {
        // Round to a whole millisecond so `start_offset_ms` locates the first sample exactly.
        let ms = (now_ns.max(0) + 500_000) / 1_000_000;
        (ms * i64::from(self.cfg.sample_rate) / 1000).max(cursor)
    }

    /// A packet whose payload type is not in the leg's map: not placed, but it still counts for
    /// the sequence bookkeeping, or its sequence numbers would show up as loss.
    /// It still marks where the leg starts and which SSRCs it used: the leg did send.
    pub fn on_unknown_payload_type(&mut self, now_ns: i64, cursor: i64, ssrc: u32, seq: u16) {
        self.stats.packets += 1;
        self.stats.unknown_payload_type += 1;
        if !self.ssrcs.contains(&ssrc) {
            self.ssrcs.push(ssrc);
        }
        if self.start.is_none() {
            self.start = Some(self.first_anchor(now_ns, cursor));
        }
        if let Some(seg) = self.segment.as_mut().filter(|s| s.ssrc == ssrc) {
            match seg.seq.classify(seq) {
                SeqClass::Duplicate => self.stats.duplicates += 1,
                SeqClass::Reordered { .. } => self.stats.reordered += 1,
                SeqClass::InOrder { .. } | SeqClass::Stray => {}
            }
        }
    }

    /// Offers one RTP packet. `now_ns` is its arrival relative to the recording's origin;
    /// `cursor` is the first position not yet handed out (positions before it are closed).
    pub fn on_rtp(&mut self, now_ns: i64, cursor: i64, id: PacketId, media: Media<'_>) -> Placement {
        let PacketId { ssrc, seq, ts, clock_rate } = id;
        self.stats.packets += 1;
        let clock_rate = clock_rate.max(1);
        match &self.segment {
            Some(s) if s.ssrc == ssrc && s.clock_rate == clock_rate => {}
            Some(s) if s.ssrc == ssrc => {
                // A codec change to another RTP clock (PCMU 8 kHz → Opus 48 kHz) on the same
                // source: the old anchor's timestamps are in other units, so place the new
                // codec by arrival, as after a discontinuity, keeping the sequence bookkeeping.
                let anchor = self.arrival_anchor(now_ns, cursor);
                let seg = self.segment.as_mut().expect("matched above");
                seg.clock_rate = clock_rate;
                seg.anchor_ext_ts = i64::from(ts);
                seg.first_ts = ts;
                seg.anchor_pos = anchor;
                seg.reference = None;
                seg.drift = Drift::new(now_ns, i64::from(self.cfg.drift_window_ms) * 1_000_000);
                self.stats.discontinuities += 1;
                if let SeqClass::Duplicate = seg.seq.classify(seq) {
                    self.stats.duplicates += 1;
                    return Placement::Dropped;
                }
                return self.place_new(now_ns, cursor, ts, media, true);
            }
            Some(_) => {
                let anchor = self.arrival_anchor(now_ns, cursor);
                self.open_segment(ssrc, seq, ts, clock_rate, now_ns, anchor);
                return self.place_new(now_ns, cursor, ts, media, true);
            }
            None => {
                let anchor = self.first_anchor(now_ns, cursor);
                self.open_segment(ssrc, seq, ts, clock_rate, now_ns, anchor);
                return self.place_new(now_ns, cursor, ts, media, true);
            }
        }
        let seg = self.segment.as_mut().expect("checked above");
        match seg.seq.classify(seq) {
            SeqClass::Duplicate => {
                self.stats.duplicates += 1;
                Placement::Dropped
            }
            SeqClass::Stray => {
                self.stats.late += 1;
                Placement::Dropped
            }
            SeqClass::Reordered { .. } => {
                self.stats.reordered += 1;
                self.place_reordered(cursor, ts, media)
            }
            SeqClass::InOrder { .. } => {
                // RFC 3550 A.8: the change in transit time against the previous packet, smoothed.
                if let Some(r) = seg.reference {
                    let arrival = (now_ns - r.arrival_ns) as f64 / 1e9;
                    let media_time = f64::from(ts.wrapping_sub(r.ts) as i32) / f64::from(clock_rate);
                    self.jitter_s += ((arrival - media_time).abs() - self.jitter_s) / 16.0;
                }
                self.place_new(now_ns, cursor, ts, media, false)
            }
        }
    }

    fn frame_len(&self, media: &Media<'_>) -> i64 {
        match media {
            Media::Samples(s) => s.len() as i64,
            Media::Concealed { samples, lead } => samples.len().saturating_sub(*lead) as i64,
            Media::ComfortNoise { .. } => 0,
            Media::Undecodable => {
                // Time of an undecodable frame: the timestamp step seen so far, else 20 ms.
                self.segment
                    .as_ref()
                    .and_then(|s| s.reference)
                    .map(|r| r.len)
                    .filter(|l| *l > 0)
                    .unwrap_or_else(|| self.cfg.ms_to_samples(20))
            }
        }
    }

    /// A packet newer than any before it on this source.
    fn place_new(&mut self, now_ns: i64, cursor: i64, ts: u32, media: Media<'_>, fresh: bool) -> Placement {
        let tol_ns = i64::from(self.cfg.jump_tolerance_ms) * 1_000_000;
        let now_pos = self.cfg.ns_to_samples(now_ns);
        let mut len = self.frame_len(&media);
        let seg = self.segment.as_ref().expect("segment exists");
        let clock_rate = seg.clock_rate;
        let ext_ts = match seg.reference {
            Some(r) => r.ext_ts + i64::from(ts.wrapping_sub(r.ts) as i32),
            None => seg.anchor_ext_ts + i64::from(ts.wrapping_sub(seg.first_ts) as i32),
        };
        // Discontinuity check against the newest audio packet.
        let mut reanchor = false;
        if let (false, Some(r)) = (fresh, seg.reference) {
            let ts_delta = ext_ts - r.ext_ts;
            let ts_ns = Self::ts_to_ns(ts_delta, clock_rate);
            let arrival_ns = (now_ns - r.arrival_ns).max(0);
            reanchor = ts_delta < 0 || ts_ns > arrival_ns + tol_ns || ts_ns + tol_ns < arrival_ns;
        }
        let mut pos = seg.anchor_pos + self.scale_ts(ext_ts - seg.anchor_ext_ts, clock_rate);
        // Never let a packet sit far ahead of its arrival: that is a broken clock, not jitter.
        let max_ahead = self.cfg.ms_to_samples(self.cfg.max_ahead_ms);
        if !reanchor && pos + len > now_pos + max_ahead {
            reanchor = true;
        }
        if reanchor {
            let anchor = self.arrival_anchor(now_ns, cursor);
            // The anchor cannot go back over audio already written, so a sender far faster than
            // real time keeps landing ahead of its arrival. Drop what does not fit (the anchor
            // stays), or a burst would stretch the recording, and fill the disk, past the call.
            if anchor + len > now_pos + max_ahead {
                self.stats.ahead += 1;
                return Placement::Dropped;
            }
            let seg = self.segment.as_mut().expect("segment exists");
            seg.anchor_ext_ts = ext_ts;
            seg.anchor_pos = anchor;
            seg.drift = Drift::new(now_ns, i64::from(self.cfg.drift_window_ms) * 1_000_000);
            pos = anchor;
            self.stats.discontinuities += 1;
        }
        if pos < cursor {
            // Only possible when drift or a clock fault placed it behind the write cursor.
            self.stats.late += 1;
            return Placement::Dropped;
        }
        // Drift: measure, and correct at a quiet moment.
        let quiet = match media {
            Media::Samples(s) | Media::Concealed { samples: s, .. } => {
                s.iter().all(|v| v.unsigned_abs() <= self.cfg.quiet_peak.unsigned_abs())
            }
            Media::Undecodable | Media::ComfortNoise { .. } => true,
        };
        let gap = (pos - self.written_end).max(0);
        let mut skip = 0usize;
        let frame = len.max(self.cfg.ms_to_samples(10));
        let drift_window_ns = i64::from(self.cfg.drift_window_ms) * 1_000_000;
        {
            let seg = self.segment.as_mut().expect("segment exists");
            let d = &mut seg.drift;
            if now_ns >= d.window_end_ns {
                if let Some(floor) = d.window_floor() {
                    match d.baseline {
                        None => d.baseline = Some(floor),
                        Some(b) => {
                            let drift = floor - b;
                            d.pending = if drift.abs() > frame { drift } else { 0 };
                        }
                    }
                }
                d.offsets.clear();
                d.window_end_ns = now_ns + drift_window_ns;
            }
            let mut shift = 0i64;
            if d.pending > 0 && (quiet || gap > 0) {
                shift = d.pending;
                self.stats.drift_samples_inserted += shift as u64;
            } else if d.pending < 0 {
                let want = -d.pending;
                let from_gap = want.min(gap);
                let from_frame = if quiet { (want - from_gap).min(len) } else { 0 };
                skip = from_frame as usize;
                shift = -(from_gap + from_frame);
                self.stats.drift_samples_dropped += (from_gap + from_frame) as u64;
            }
            if shift != 0 {
                d.pending -= shift;
                seg.anchor_pos += shift;
                pos += shift;
                self.stats.drift_corrections += 1;
                // Measure afresh: the window so far mixes before and after the correction.
                d.offsets.clear();
                d.window_end_ns = now_ns + drift_window_ns;
            }
            d.offsets.push(now_pos - pos);
            seg.reference = Some(Reference { ts, ext_ts, arrival_ns: now_ns, pos, len });
        }
        len -= skip as i64;
        self.write(pos + skip as i64, len, media, skip)
    }

    /// A packet older than the newest: placed by timestamp if its position is still open.
    fn place_reordered(&mut self, cursor: i64, ts: u32, media: Media<'_>) -> Placement {
        let len = self.frame_len(&media);
        let seg = self.segment.as_ref().expect("segment exists");
        let Some(r) = seg.reference else {
            self.stats.late += 1;
            return Placement::Dropped;
        };
        let ext_ts = r.ext_ts + i64::from(ts.wrapping_sub(r.ts) as i32);
        let pos = seg.anchor_pos + self.scale_ts(ext_ts - seg.anchor_ext_ts, seg.clock_rate);
        if pos < cursor || pos > r.pos {
            // Closed already, or it belongs to an earlier anchor: too late to place honestly.
            self.stats.late += 1;
            return Placement::Dropped;
        }
        self.write(pos, len, media, 0)
    }

    fn write(&mut self, pos: i64, len: i64, media: Media<'_>, skip: usize) -> Placement {
        // Where this packet's audio begins: concealed audio before it goes back over the gap,
        // but never over audio already written or positions already closed.
        let mut from = pos;
        match media {
            Media::ComfortNoise { level_dbov } => {
                self.stats.comfort_noise_packets += 1;
                if self.cfg.comfort_noise {
                    self.start_noise(pos, level_dbov);
                }
                return Placement::Marker;
            }
            Media::Samples(s) => self.pend(pos, &s[skip.min(s.len())..]),
            Media::Concealed { samples, lead } => {
                let lead = lead.min(samples.len());
                let back = (pos - lead as i64).max(self.written_end).min(pos);
                let cut = (lead as i64 - (pos - back)) as usize;
                self.pend(back, &samples[(cut + skip).min(samples.len())..]);
                from = back;
            }
            Media::Undecodable => {}
        }
        self.end_noise(from);
        self.stats.audio_packets += 1;
        self.written_end = self.written_end.max(pos + len.max(0));
        Placement::Placed(pos)
    }

    fn pend(&mut self, pos: i64, samples: &[i16]) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(samples);
        let at = self.pending.partition_point(|f| f.pos <= pos);
        self.pending.insert(at, PendingFrame { pos, samples: buf });
    }

    /// A CN packet at `pos`: noise from there until audio resumes.
    fn start_noise(&mut self, pos: i64, level_dbov: u8) {
        // RFC 3389 §3: the level is −dBov, 0–127; the RMS of a full-scale sine is 0 dBov.
        let rms = 32767.0 / 2f32.sqrt() * 10f32.powf(-f32::from(level_dbov.min(127)) / 20.0);
        // Uniform noise of that RMS; below 2 dBov it would pass full scale, so it is capped there.
        let peak = (rms * 3f32.sqrt()).min(32767.0);
        let start = pos.max(self.written_end);
        match self.noise.iter_mut().find(|s| s.end == i64::MAX) {
            // One period runs at a time: a CN update (or a late CN packet) only changes its
            // level, or moves its start earlier (found by the fuzzer: periods piling up made
            // rendering quadratic).
            Some(open) => {
                open.peak = peak;
                open.start = open.start.min(start);
            }
            None => self.noise.push(NoiseSpan { start, end: i64::MAX, peak }),
        }
    }

    /// Audio written from `pos` on ends a noise period that began before it.
    fn end_noise(&mut self, pos: i64) {
        if let Some(open) = self.noise.iter_mut().find(|s| s.end == i64::MAX)
            && open.start <= pos
        {
            open.end = pos;
        }
        self.noise.retain(|s| s.end > s.start);
    }

    /// Handles a telephone-event packet (RFC 4733). Events never touch the audio timeline; an
    /// event's timestamp is its start and stays put while its duration grows.
    pub fn on_event(&mut self, now_ns: i64, cursor: i64, id: PacketId, payload: &[u8]) -> Placement {
        let PacketId { ssrc, seq, ts, clock_rate } = id;
        self.stats.packets += 1;
        let clock_rate = clock_rate.max(1);
        match &mut self.segment {
            Some(s) if s.ssrc == ssrc => match s.seq.classify(seq) {
                SeqClass::Duplicate => {
                    self.stats.duplicates += 1;
                    return Placement::Dropped;
                }
                SeqClass::Stray => {
                    self.stats.late += 1;
                    return Placement::Dropped;
                }
                SeqClass::Reordered { .. } => self.stats.reordered += 1,
                SeqClass::InOrder { .. } => {}
            },
            Some(_) => {
                let anchor = self.arrival_anchor(now_ns, cursor);
                self.open_segment(ssrc, seq, ts, clock_rate, now_ns, anchor);
            }
            None => {
                let anchor = self.first_anchor(now_ns, cursor);
                self.open_segment(ssrc, seq, ts, clock_rate, now_ns, anchor);
            }
        }
        if payload.len() < 4 {
            self.stats.bad_events += 1;
            return Placement::Dropped;
        }
        let code = payload[0];
        let duration = u32::from(u16::from_be_bytes([payload[2], payload[3]]));
        if let Some(a) = &mut self.active_event
            && a.ssrc == ssrc
            && a.ts == ts
        {
            a.duration = a.duration.max(duration);
            let (start, duration) = (a.start, a.duration);
            let end = start + self.scale_ts(i64::from(duration), clock_rate);
            self.event_end = self.event_end.max(end);
            return Placement::Event;
        }
        // A new event: close the previous one, unless this is a stray repeat of an event already
        // closed (redundant end packets arrive after the next event started only if reordered).
        if self.last_closed_event == Some((ssrc, ts)) {
            return Placement::Event;
        }
        self.close_event();
        let seg = self.segment.as_ref().expect("segment exists");
        let (ref_ext_ts, ref_ts) = match seg.reference {
            Some(r) => (r.ext_ts, r.ts),
            None => (seg.anchor_ext_ts, seg.first_ts),
        };
        let ext_ts = ref_ext_ts + i64::from(ts.wrapping_sub(ref_ts) as i32);
        let mut start = seg.anchor_pos + self.scale_ts(ext_ts - seg.anchor_ext_ts, clock_rate);
        // An event cannot start far after it arrived: a timestamp that says so is a broken
        // clock, and believing it would stretch the recording by hours of silence (found by
        // the fuzzer). Placed by arrival instead, like audio that runs ahead.
        let now_pos = self.cfg.ns_to_samples(now_ns);
        if start > now_pos + self.cfg.ms_to_samples(self.cfg.max_ahead_ms) {
            start = now_pos.max(cursor);
        }
        self.active_event = Some(ActiveEvent { ssrc, ts, start, clock_rate, duration, code });
        self.event_end = self.event_end.max(start + self.scale_ts(i64::from(duration), clock_rate));
        Placement::Event
    }

    fn close_event(&mut self) {
        if let Some(a) = self.active_event.take() {
            self.last_closed_event = Some((a.ssrc, a.ts));
            let digit = if self.keep_digits { Some(event_digit(a.code)) } else { None };
            self.events.push(DtmfEvent {
                start: a.start,
                duration_ms: u64::from(a.duration) * 1000 / u64::from(a.clock_rate),
                digit,
            });
        }
    }

    /// Closes an event still running (end of recording).
    pub fn finish_events(&mut self) {
        self.close_event();
    }

    /// Adds this leg's samples for positions `[from, from + out.len())` into `out` (which the
    /// caller zeroed), then forgets every frame that ends before `from + out.len()`.
    pub fn render(&mut self, from: i64, out: &mut [i16]) {
        let to = from + out.len() as i64;
        for span in &self.noise {
            let (start, end) = (span.start.max(from), span.end.min(to));
            for v in out.iter_mut().take((end - from).max(0) as usize).skip((start - from).max(0) as usize) {
                // xorshift32 → uniform in [−1, 1).
                let mut x = self.noise_state;
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                self.noise_state = x;
                let unit = (x as f32 / u32::MAX as f32) * 2.0 - 1.0;
                *v = (unit * span.peak) as i16;
            }
        }
        self.noise.retain(|s| s.end > to);
        for f in &self.pending {
            if f.pos >= to {
                break;
            }
            let start = f.pos.max(from);
            let end = (f.pos + f.samples.len() as i64).min(to);
            if start < end {
                let src = &f.samples[(start - f.pos) as usize..(end - f.pos) as usize];
                out[(start - from) as usize..(end - from) as usize].copy_from_slice(src);
            }
        }
        let spare = &mut self.spare;
        self.pending.retain_mut(|f| {
            let done = f.pos + f.samples.len() as i64 <= to;
            if done {
                spare.push(std::mem::take(&mut f.samples));
            }
            !done
        });
    }
}

/// `a × b / c` rounded down, in 64-bit arithmetic when it cannot overflow (the per-packet case),
/// else in 128-bit. `c` must be positive.
fn mul_div_floor(a: i64, b: i64, c: i64) -> i64 {
    match a.checked_mul(b) {
        Some(p) => p.div_euclid(c),
        None => (i128::from(a) * i128::from(b)).div_euclid(i128::from(c)) as i64,
    }
}

/// RFC 4733 §3.2 event codes for DTMF.
fn event_digit(code: u8) -> char {
    match code {
        0..=9 => char::from(b'0' + code),
        10 => '*',
        11 => '#',
        12..=15 => char::from(b'A' + code - 12),
        _ => '?',
    }
}
