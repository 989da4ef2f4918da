//! A live recording as the appliance runs it: a [`Recording`] plus what the ACD can change while
//! the call runs — legs joining and leaving (transfer, consult, conference) and pauses (the
//! agent takes card details: the span is masked with silence, or cut out).
//!
//! Still sans-IO: times are passed in, audio comes out through a callback per output stream
//! (one mixed stream, or one per leg with [`Layout::Separate`]).

use super::leg::DtmfEvent;
use super::mixer::Layout;
use super::recording::{Handled, LegSpec, Recording, RecordingConfig};

/// What a pause does to the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// The paused time stays in the recording, as silence.
    Mask,
    /// The paused time is left out of the recording.
    Cut,
}

impl PauseMode {
    /// The protocol's name.
    pub fn name(self) -> &'static str {
        match self {
            PauseMode::Mask => "mask",
            PauseMode::Cut => "cut",
        }
    }
}

/// A paused span, in timeline positions `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseSpan {
    /// First paused position.
    pub start: i64,
    /// First position after the pause (`i64::MAX` while still paused).
    pub end: i64,
    /// Masked or cut.
    pub mode: PauseMode,
}

/// Why a session change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// `pause` while paused.
    #[error("the recording is already paused")]
    AlreadyPaused,
    /// `resume` while not paused.
    #[error("the recording is not paused")]
    NotPaused,
    /// No such leg, or it already left.
    #[error("no active leg {0}")]
    NoSuchLeg(usize),
    /// A channel outside the layout.
    #[error("channel {channel} does not exist: the recording has {channels} channels")]
    NoSuchChannel {
        /// Asked for.
        channel: u16,
        /// Channels the recording has.
        channels: u16,
    },
}

/// One leg's place in the output.
#[derive(Debug, Clone, Copy)]
struct LegSlot {
    channel: u16,
    joined_at: i64,
    left_at: Option<i64>,
}

/// A recording with live changes, owned by one worker.
pub struct Session {
    rec: Recording,
    layout: Layout,
    channels: u16,
    slots: Vec<LegSlot>,
    pauses: Vec<PauseSpan>,
    planes: Vec<Vec<i16>>,
    mixed: Vec<i16>,
    /// Frames written per output stream (one for mixed layouts, one per leg for separate).
    written: Vec<u64>,
}

impl Session {
    /// Starts a session whose position 0 is `now_ns`. `channels` is the mixed output's channel
    /// count (stereo: at least two, so an agent joining later has a side); ignored for mono
    /// (one) and separate (one file per leg).
    pub fn new(cfg: RecordingConfig, layout: Layout, legs: Vec<LegSpec>, channels: Option<u16>, now_ns: u64) -> Self {
        let count = legs.len();
        let channels = match layout {
            Layout::Stereo => channels.unwrap_or(count.max(2) as u16).max(1),
            Layout::Mono | Layout::Separate => 1,
        };
        let slots = (0..count)
            .map(|i| LegSlot {
                channel: if layout == Layout::Stereo { (i as u16).min(channels - 1) } else { 0 },
                joined_at: 0,
                left_at: None,
            })
            .collect();
        let outputs = if layout == Layout::Separate { count } else { 1 };
        Session {
            rec: Recording::new(cfg, legs, Some(now_ns)),
            layout,
            channels,
            slots,
            pauses: Vec::new(),
            planes: vec![Vec::new(); count],
            mixed: Vec::new(),
            written: vec![0; outputs],
        }
    }

    /// The recording underneath (legs, counters, events).
    pub fn recording(&self) -> &Recording {
        &self.rec
    }

    /// Puts each leg that names a channel on it (stereo; `None` keeps the default: leg `i` on
    /// channel `i`). A channel the recording does not have is an error, never moved silently.
    pub fn with_leg_channels(mut self, channels: &[Option<u16>]) -> Result<Self, SessionError> {
        if self.layout != Layout::Stereo {
            return Ok(self);
        }
        for (slot, c) in self.slots.iter_mut().zip(channels) {
            if let Some(c) = *c {
                if c >= self.channels {
                    return Err(SessionError::NoSuchChannel { channel: c, channels: self.channels });
                }
                slot.channel = c;
            }
        }
        Ok(self)
    }

    /// Channels per output file.
    pub fn channels(&self) -> u16 {
        self.channels
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Output streams: one, or one per leg for [`Layout::Separate`].
    pub fn outputs(&self) -> usize {
        self.written.len()
    }

    /// The channel a leg is mixed into.
    pub fn leg_channel(&self, leg: usize) -> Option<u16> {
        self.slots.get(leg).map(|s| s.channel)
    }

    /// Whether a leg has left.
    pub fn leg_left(&self, leg: usize) -> bool {
        self.slots.get(leg).is_some_and(|s| s.left_at.is_some())
    }

    /// Position (samples from the start) at which a leg joined.
    pub fn leg_joined_at(&self, leg: usize) -> i64 {
        self.slots.get(leg).map_or(0, |s| s.joined_at)
    }

    /// Frames written to output stream `i` so far.
    pub fn frames_written(&self, output: usize) -> u64 {
        self.written.get(output).copied().unwrap_or(0)
    }

    /// The pauses so far.
    pub fn pauses(&self) -> &[PauseSpan] {
        &self.pauses
    }

    /// Whether the recording is paused now.
    pub fn is_paused(&self) -> bool {
        self.pauses.last().is_some_and(|p| p.end == i64::MAX)
    }

    /// Feeds a datagram that arrived on `leg`. A leg that left gets nothing more.
    pub fn handle_datagram(&mut self, now_ns: u64, leg: usize, datagram: &[u8]) -> Handled {
        if self.leg_left(leg) {
            return Handled::Malformed;
        }
        self.rec.handle_datagram(now_ns, leg, datagram)
    }

    /// A leg joins now. `channel` chooses its side; by default the first channel no active leg
    /// uses, else the last one (a third party in a two-channel recording is mixed with the agent).
    pub fn add_leg(&mut self, now_ns: u64, spec: LegSpec, channel: Option<u16>) -> Result<usize, SessionError> {
        let channel = match (self.layout, channel) {
            (Layout::Stereo, Some(c)) if c >= self.channels => {
                return Err(SessionError::NoSuchChannel { channel: c, channels: self.channels });
            }
            (Layout::Stereo, Some(c)) => c,
            (Layout::Stereo, None) => (0..self.channels)
                .find(|c| !self.slots.iter().any(|s| s.channel == *c && s.left_at.is_none()))
                .unwrap_or(self.channels - 1),
            _ => 0,
        };
        // Audio before the cursor is already written; the new leg's output starts at the cursor.
        let joined_at = (self.rec.frames_emitted() as i64).max(0);
        let _ = now_ns;
        let index = self.rec.add_leg(spec);
        self.slots.push(LegSlot { channel, joined_at, left_at: None });
        self.planes.push(Vec::new());
        if self.layout == Layout::Separate {
            self.written.push(0);
        }
        Ok(index)
    }

    /// A leg leaves now: it receives nothing more; packets it already sent are still placed.
    pub fn remove_leg(&mut self, now_ns: u64, leg: usize) -> Result<(), SessionError> {
        let pos = self.rec.position_at(now_ns);
        match self.slots.get_mut(leg) {
            Some(s) if s.left_at.is_none() => {
                s.left_at = Some(pos.max(s.joined_at));
                Ok(())
            }
            _ => Err(SessionError::NoSuchLeg(leg)),
        }
    }

    /// Pauses from now on.
    pub fn pause(&mut self, now_ns: u64, mode: PauseMode) -> Result<(), SessionError> {
        if self.is_paused() {
            return Err(SessionError::AlreadyPaused);
        }
        // Never before what is already written: that audio is on disk.
        let start = self.rec.position_at(now_ns).max(self.rec.frames_emitted() as i64);
        self.pauses.push(PauseSpan { start, end: i64::MAX, mode });
        Ok(())
    }

    /// Resumes recording now.
    pub fn resume(&mut self, now_ns: u64) -> Result<(), SessionError> {
        let pos = self.rec.position_at(now_ns);
        match self.pauses.last_mut() {
            Some(p) if p.end == i64::MAX => {
                p.end = pos.max(p.start);
                Ok(())
            }
            _ => Err(SessionError::NotPaused),
        }
    }

    /// Ends the session at `now_ns`: the recording lasts until then (a call that went quiet
    /// before its stop still has its full length), all audio becomes final, and a pause still
    /// open ends here.
    pub fn finish(&mut self, now_ns: u64) {
        let end = self.rec.position_at(now_ns);
        self.rec.extend_to(end);
        self.rec.finish();
        let end = self.rec.end_position();
        if let Some(p) = self.pauses.last_mut()
            && p.end == i64::MAX
        {
            p.end = end.max(p.start);
        }
    }

    /// Where timeline position `pos` lands in the output, or `None` if it is in a pause
    /// (masked: the audio there is silence; cut: it is not in the file).
    pub fn output_position(&self, pos: i64) -> Option<i64> {
        let mut cut = 0;
        for p in &self.pauses {
            if pos >= p.start && pos < p.end {
                return None;
            }
            if p.mode == PauseMode::Cut && p.end <= pos {
                cut += p.end - p.start;
            }
        }
        Some(pos - cut)
    }

    /// DTMF events of a leg as they appear in the output: those inside a pause are left out
    /// (a pause exists to keep card numbers out), offsets shifted past cut spans.
    pub fn leg_events(&self, leg: usize) -> Vec<DtmfEvent> {
        let Some(l) = self.rec.legs().get(leg) else { return Vec::new() };
        l.events().iter().filter_map(|e| self.output_position(e.start).map(|start| DtmfEvent { start, ..*e })).collect()
    }

    /// Hands out final audio: for each output stream with new frames, calls `sink(output,
    /// interleaved_samples)`. Returns the timeline frames consumed (0 when nothing is final).
    pub fn poll(&mut self, now_ns: u64, sink: &mut dyn FnMut(usize, &[i16])) -> usize {
        const CHUNK: usize = 4000;
        let mut total = 0;
        loop {
            for p in &mut self.planes {
                p.clear();
            }
            let from = self.rec.frames_emitted() as i64;
            let n = self.rec.poll_audio(now_ns, CHUNK, &mut self.planes);
            if n == 0 {
                return total;
            }
            total += n;
            self.emit(from, n, sink);
        }
    }

    fn emit(&mut self, from: i64, n: usize, sink: &mut dyn FnMut(usize, &[i16])) {
        let to = from + n as i64;
        // Split [from, to) at pause boundaries; each piece is kept, masked or cut whole.
        let mut at = from;
        while at < to {
            let (piece_end, mode) = self.piece(at, to);
            let range = (at - from) as usize..(piece_end - from) as usize;
            match mode {
                Some(PauseMode::Cut) => {}
                Some(PauseMode::Mask) => self.emit_range(at, range, true, sink),
                None => self.emit_range(at, range, false, sink),
            }
            at = piece_end;
        }
    }

    /// The run starting at `at` that is uniformly paused or not, ending before `to`.
    fn piece(&self, at: i64, to: i64) -> (i64, Option<PauseMode>) {
        let mut end = to;
        for p in &self.pauses {
            if at >= p.start && at < p.end {
                return (p.end.min(to), Some(p.mode));
            }
            if p.start > at {
                end = end.min(p.start);
            }
        }
        (end, None)
    }

    fn emit_range(
        &mut self,
        pos: i64,
        range: std::ops::Range<usize>,
        silent: bool,
        sink: &mut dyn FnMut(usize, &[i16]),
    ) {
        let frames = range.len();
        let end_pos = pos + frames as i64;
        if self.layout == Layout::Separate {
            for (leg, slot) in self.slots.iter().enumerate() {
                // A leg's own file covers the time it took part in the call.
                let lo = pos.max(slot.joined_at);
                let hi = slot.left_at.map_or(end_pos, |l| l.min(end_pos));
                if lo >= hi {
                    continue;
                }
                let part = range.start + (lo - pos) as usize..range.start + (hi - pos) as usize;
                self.mixed.clear();
                if silent {
                    self.mixed.resize(part.len(), 0);
                } else {
                    self.mixed.extend_from_slice(&self.planes[leg][part]);
                }
                self.written[leg] += self.mixed.len() as u64;
                sink(leg, &self.mixed);
            }
            return;
        }
        self.mixed.clear();
        let channels = usize::from(self.channels);
        if silent {
            self.mixed.resize(frames * channels, 0);
        } else if self.is_plain_pair() || self.layout == Layout::Mono {
            let planes: Vec<&[i16]> = self.planes.iter().map(|p| &p[range.clone()]).collect();
            super::mixer::mix(self.layout, &planes, &mut self.mixed);
        } else {
            self.mixed.resize(frames * channels, 0);
            for (leg, slot) in self.slots.iter().enumerate() {
                let c = usize::from(slot.channel);
                for (frame, &s) in self.mixed.chunks_exact_mut(channels).zip(&self.planes[leg][range.clone()]) {
                    frame[c] = frame[c].saturating_add(s);
                }
            }
        }
        self.written[0] += frames as u64;
        sink(0, &self.mixed);
    }

    /// Stereo with exactly one leg per channel in order: the mixer's fast path applies.
    fn is_plain_pair(&self) -> bool {
        self.layout == Layout::Stereo
            && self.slots.len() == usize::from(self.channels)
            && self.slots.iter().enumerate().all(|(i, s)| usize::from(s.channel) == i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::payload::PayloadMap;

    const MS: u64 = 1_000_000;

    fn spec(label: &str) -> LegSpec {
        LegSpec { label: label.into(), payload_map: PayloadMap::with_static_types() }
    }

    fn pcmu(seq: u16, ts: u32, ssrc: u32, byte: u8) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend(std::iter::repeat_n(byte, 160));
        p
    }

    /// Runs `secs` seconds of 20 ms packets on every leg in `legs` (tone 0x00 = loud µ-law),
    /// calling `at(ms)` before each tick; returns the outputs.
    fn run(s: &mut Session, t0: u64, ms: u64, legs: &[usize], mut at: impl FnMut(&mut Session, u64)) -> Vec<Vec<i16>> {
        let mut out = vec![Vec::new(); 8];
        for tick in 0..ms / 20 {
            let now = t0 + tick * 20 * MS;
            at(s, tick * 20);
            for &leg in legs {
                if !s.leg_left(leg) && leg < s.recording().legs().len() {
                    s.handle_datagram(now, leg, &pcmu(tick as u16, tick as u32 * 160, 7 + leg as u32, 0x00));
                }
            }
            s.poll(now, &mut |o, x| out[o].extend_from_slice(x));
        }
        s.finish(t0 + ms * MS);
        s.poll(u64::MAX, &mut |o, x| out[o].extend_from_slice(x));
        out
    }

    #[test]
    fn mask_keeps_the_length_and_silences_the_span() {
        let mut s = Session::new(RecordingConfig::default(), Layout::Stereo, vec![spec("c"), spec("a")], None, 0);
        let out = run(&mut s, 0, 2000, &[0, 1], |s, ms| match ms {
            500 => s.pause(ms * MS, PauseMode::Mask).unwrap(),
            1000 => s.resume(ms * MS).unwrap(),
            _ => {}
        });
        let frames = out[0].len() / 2;
        assert_eq!(frames, 16000);
        assert!(out[0][..4000 * 2].iter().all(|&x| x != 0));
        assert!(out[0][4000 * 2..8000 * 2].iter().all(|&x| x == 0));
        assert!(out[0][8000 * 2..].iter().all(|&x| x != 0));
        assert_eq!(s.frames_written(0), 16000);
    }

    #[test]
    fn cut_leaves_the_span_out() {
        let mut s = Session::new(RecordingConfig::default(), Layout::Mono, vec![spec("c"), spec("a")], None, 0);
        let out = run(&mut s, 0, 2000, &[0, 1], |s, ms| match ms {
            500 => s.pause(ms * MS, PauseMode::Cut).unwrap(),
            1500 => s.resume(ms * MS).unwrap(),
            _ => {}
        });
        assert_eq!(out[0].len(), 8000);
        assert!(out[0].iter().all(|&x| x != 0));
        assert_eq!(s.output_position(4000), None);
        assert_eq!(s.output_position(12000), Some(4000));
    }

    #[test]
    fn pause_twice_and_resume_unpaused_are_refused() {
        let mut s = Session::new(RecordingConfig::default(), Layout::Stereo, vec![spec("c")], None, 0);
        assert_eq!(s.resume(MS), Err(SessionError::NotPaused));
        s.pause(MS, PauseMode::Mask).unwrap();
        assert_eq!(s.pause(2 * MS, PauseMode::Cut), Err(SessionError::AlreadyPaused));
        s.finish(3 * MS);
        assert!(s.pauses()[0].end != i64::MAX, "an open pause is closed at finish");
    }

    #[test]
    fn a_transfer_puts_the_new_agent_on_the_freed_channel() {
        let mut s = Session::new(RecordingConfig::default(), Layout::Stereo, vec![spec("c"), spec("a1")], None, 0);
        let out = run(&mut s, 0, 2000, &[0, 1, 2], |s, ms| {
            if ms == 1000 {
                s.remove_leg(ms * MS, 1).unwrap();
                assert_eq!(s.add_leg(ms * MS, spec("a2"), None).unwrap(), 2);
            }
        });
        assert_eq!(s.leg_channel(2), Some(1));
        assert_eq!(out[0].len(), 16000 * 2);
        // The right channel has audio before and after the transfer (a1, then a2).
        let right: Vec<i16> = out[0].iter().skip(1).step_by(2).copied().collect();
        assert!(right[1000..7000].iter().all(|&x| x != 0));
        assert!(right[10000..15000].iter().all(|&x| x != 0));
        assert!(s.remove_leg(3000 * MS, 1).is_err(), "a leg leaves once");
    }

    #[test]
    fn a_conference_leg_is_mixed_into_the_last_channel() {
        let mut s = Session::new(RecordingConfig::default(), Layout::Stereo, vec![spec("c"), spec("a")], None, 0);
        let i = s.add_leg(0, spec("supervisor"), None).unwrap();
        assert_eq!(s.leg_channel(i), Some(1));
        assert!(matches!(
            s.add_leg(0, spec("x"), Some(2)),
            Err(SessionError::NoSuchChannel { channel: 2, channels: 2 })
        ));
    }

    #[test]
    fn separate_files_cover_each_legs_time_in_the_call() {
        let mut s = Session::new(RecordingConfig::default(), Layout::Separate, vec![spec("c"), spec("a1")], None, 0);
        run(&mut s, 0, 2000, &[0, 1, 2], |s, ms| {
            if ms == 1000 {
                s.remove_leg(ms * MS, 1).unwrap();
                s.add_leg(ms * MS, spec("a2"), None).unwrap();
            }
        });
        assert_eq!(s.outputs(), 3);
        assert_eq!(s.frames_written(0), 16000);
        assert_eq!(s.frames_written(1), 8000);
        // a2 joined at the cursor: at most a reorder window (plus a packet) before the join time.
        let joined = s.leg_joined_at(2);
        assert!((8000 - 1600 - 160..=8000).contains(&joined), "{joined}");
        assert_eq!(s.frames_written(2), 16000 - joined as u64);
    }

    #[test]
    fn a_leg_that_left_gets_no_more_audio() {
        let mut s = Session::new(RecordingConfig::default(), Layout::Stereo, vec![spec("c")], None, 0);
        s.remove_leg(0, 0).unwrap();
        assert_eq!(s.handle_datagram(MS, 0, &pcmu(1, 160, 1, 0)), Handled::Malformed);
    }
}
