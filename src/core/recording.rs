//! A recording: its legs on one wall-clock timeline, driven by `(time, datagram)` inputs.
//!
//! Sans-IO: nothing here reads a clock or a socket. The driver's loop is:
//! 1. `handle_datagram(now, leg, bytes)` for each datagram as it arrives;
//! 2. then call `poll_audio(now, …)` until it returns 0, writing what it yields;
//! 3. at the end, `finish()` and drain `poll_audio` again.
//!
//! Positions before `now − reorder window` are final and are handed out by `poll_audio`, so a
//! driver that polls after each input holds at most a reorder window of audio per leg.

use super::decode::{DecodeError, LegDecoder};
use super::leg::{Leg, Media, PacketId, Placement, TimelineConfig};
use super::payload::{Codec, PayloadMap};
use super::rtp::{self, Packet};

/// How to record.
#[derive(Debug, Clone, Default)]
pub struct RecordingConfig {
    /// Timeline tuning; its sample rate is the recording's.
    pub timeline: TimelineConfig,
    /// Keep DTMF digit values (they may be card numbers: off unless asked for).
    pub keep_dtmf_digits: bool,
}

/// One leg as the ACD (or the capture's signalling) describes it.
#[derive(Debug, Clone)]
pub struct LegSpec {
    /// Name such as `customer`, `agent`, `a`.
    pub label: String,
    /// Payload type → format for this leg.
    pub payload_map: PayloadMap,
}

/// What a datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// An RTP packet and what became of it.
    Rtp(Placement),
    /// RTCP: counted, never decoded as audio.
    Rtcp,
    /// Not RTP or RTCP: counted and dropped.
    Malformed,
}

/// A recording in progress. Exactly one owner drives it.
pub struct Recording {
    cfg: RecordingConfig,
    specs: Vec<LegSpec>,
    legs: Vec<Leg>,
    decoders: Vec<LegDecoder>,
    origin_ns: Option<u64>,
    cursor: i64,
    finished: bool,
    /// Arrival position of the latest RTP packet: the recording lasts at least until then, even
    /// if that packet carried nothing decodable.
    last_arrival: i64,
    decoded: Vec<i16>,
}

impl Recording {
    /// A recording whose position 0 is `origin_ns` (or, if `None`, the first datagram's time).
    pub fn new(cfg: RecordingConfig, legs: Vec<LegSpec>, origin_ns: Option<u64>) -> Self {
        let built = legs.iter().map(|_| Leg::new(cfg.timeline, cfg.keep_dtmf_digits)).collect();
        let decoders = legs.iter().map(|_| LegDecoder::new(cfg.timeline.sample_rate)).collect();
        Recording {
            cfg,
            specs: legs,
            legs: built,
            decoders,
            origin_ns,
            cursor: 0,
            finished: false,
            last_arrival: 0,
            decoded: Vec::new(),
        }
    }

    /// The output sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.cfg.timeline.sample_rate
    }

    /// The legs, in the order given.
    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// The leg descriptions, in the order given.
    pub fn leg_specs(&self) -> &[LegSpec] {
        &self.specs
    }

    /// Adds a leg mid-recording (transfer, consult, conference); returns its index. It is
    /// silent up to its first packet, like any leg.
    pub fn add_leg(&mut self, spec: LegSpec) -> usize {
        self.legs.push(Leg::new(self.cfg.timeline, self.cfg.keep_dtmf_digits));
        self.decoders.push(LegDecoder::new(self.cfg.timeline.sample_rate));
        self.specs.push(spec);
        self.legs.len() - 1
    }

    /// The time of position 0, once known.
    pub fn origin_ns(&self) -> Option<u64> {
        self.origin_ns
    }

    /// The timeline position (samples from the origin) of time `now_ns`; 0 before the origin.
    pub fn position_at(&self, now_ns: u64) -> i64 {
        match self.origin_ns {
            Some(o) => self.cfg.timeline.ns_to_samples(now_ns as i64 - o as i64).max(0),
            None => 0,
        }
    }

    /// Frames handed out so far.
    pub fn frames_emitted(&self) -> u64 {
        self.cursor as u64
    }

    fn relative_ns(&mut self, now_ns: u64) -> i64 {
        let origin = *self.origin_ns.get_or_insert(now_ns);
        now_ns as i64 - origin as i64
    }

    /// Feeds one datagram that arrived on `leg` at `now_ns`.
    pub fn handle_datagram(&mut self, now_ns: u64, leg: usize, datagram: &[u8]) -> Handled {
        let rel = self.relative_ns(now_ns);
        let cursor = self.cursor;
        let (Some(l), Some(spec), Some(decoder)) =
            (self.legs.get_mut(leg), self.specs.get(leg), self.decoders.get_mut(leg))
        else {
            return Handled::Malformed;
        };
        let packet = match rtp::parse(datagram) {
            Ok(Packet::Rtp(p)) => p,
            Ok(Packet::Rtcp(_)) => {
                l.stats_mut().rtcp_packets += 1;
                return Handled::Rtcp;
            }
            Err(_) => {
                l.stats_mut().malformed += 1;
                return Handled::Malformed;
            }
        };
        self.last_arrival = self.last_arrival.max(self.cfg.timeline.ns_to_samples(rel));
        let format = spec.payload_map.get(packet.payload_type);
        l.note_format(packet.payload_type, format);
        let Some(format) = format else {
            l.on_unknown_payload_type(rel, cursor, packet.ssrc, packet.sequence);
            return Handled::Rtp(Placement::Dropped);
        };
        let id =
            PacketId { ssrc: packet.ssrc, seq: packet.sequence, ts: packet.timestamp, clock_rate: format.clock_rate };
        let placement = match format.codec {
            Codec::TelephoneEvent => l.on_event(rel, cursor, id, packet.payload),
            Codec::ComfortNoise => {
                // RFC 3389 §3: the first byte is the noise level; a packet without one is quiet.
                let level_dbov = packet.payload.first().map_or(127, |b| b & 0x7f);
                l.on_rtp(rel, cursor, id, Media::ComfortNoise { level_dbov })
            }
            _ => {
                self.decoded.clear();
                match decoder.decode(
                    format,
                    packet.ssrc,
                    packet.sequence,
                    packet.timestamp,
                    packet.payload,
                    &mut self.decoded,
                ) {
                    Ok(d) if d.lead > 0 => {
                        l.stats_mut().concealed += u64::from(d.concealed);
                        l.on_rtp(rel, cursor, id, Media::Concealed { samples: &self.decoded, lead: d.lead })
                    }
                    Ok(d) => {
                        l.stats_mut().concealed += u64::from(d.concealed);
                        l.stats_mut().decode_errors += u64::from(d.corrupt);
                        l.on_rtp(rel, cursor, id, Media::Samples(&self.decoded))
                    }
                    // A duplicate: the leg counts and drops it.
                    Err(DecodeError::Repeat) => l.on_rtp(rel, cursor, id, Media::Undecodable),
                    Err(DecodeError::Unsupported(_)) => {
                        l.note_unsupported(&format.encoding);
                        l.on_rtp(rel, cursor, id, Media::Undecodable)
                    }
                    Err(DecodeError::Corrupt { .. }) => {
                        l.stats_mut().decode_errors += 1;
                        l.on_rtp(rel, cursor, id, Media::Undecodable)
                    }
                }
            }
        };
        Handled::Rtp(placement)
    }

    /// The recording lasts at least until position `pos` (a live call's stop time).
    pub fn extend_to(&mut self, pos: i64) {
        self.last_arrival = self.last_arrival.max(pos);
    }

    /// Ends the recording: everything written becomes final.
    pub fn finish(&mut self) {
        self.finished = true;
        for l in &mut self.legs {
            l.finish_events();
        }
    }

    /// Total frames once finished: up to the furthest sample any leg wrote.
    pub fn end_position(&self) -> i64 {
        self.legs.iter().map(Leg::extent).max().unwrap_or(0).max(self.cursor).max(self.last_arrival)
    }

    /// Hands out up to `max_frames` final frames: for each leg, its samples are appended to
    /// `planes[leg]`. Returns the frames handed out (0 when nothing is final yet).
    pub fn poll_audio(&mut self, now_ns: u64, max_frames: usize, planes: &mut [Vec<i16>]) -> usize {
        let target = if self.finished {
            self.end_position()
        } else {
            let rel = match self.origin_ns {
                Some(o) => now_ns as i64 - o as i64,
                None => return 0,
            };
            self.cfg.timeline.ns_to_samples(rel) - self.cfg.timeline.ms_to_samples(self.cfg.timeline.reorder_window_ms)
        };
        if target <= self.cursor {
            return 0;
        }
        let n = ((target - self.cursor) as usize).min(max_frames);
        for (leg, plane) in self.legs.iter_mut().zip(planes.iter_mut()) {
            let start = plane.len();
            plane.resize(start + n, 0);
            leg.render(self.cursor, &mut plane[start..]);
        }
        self.cursor += n as i64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::payload::PayloadMap;

    #[test]
    fn a_leg_sending_only_unmapped_payload_types_still_has_a_start_and_ssrcs() {
        // Found when tried as a new user would: an Opus capture without --pt reported
        // start_offset_ms null and no SSRCs, as if the leg had never sent.
        let spec = LegSpec { label: "a".into(), payload_map: PayloadMap::with_static_types() };
        let mut rec = Recording::new(RecordingConfig::default(), vec![spec], Some(0));
        let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        p.extend([0u8; 40]);
        assert_eq!(rec.handle_datagram(30_000_000, 0, &p), Handled::Rtp(Placement::Dropped));
        let leg = &rec.legs()[0];
        assert_eq!(leg.start(), Some(240));
        assert_eq!(leg.ssrcs(), &[0xdead_beef]);
        assert_eq!(leg.stats().unknown_payload_type, 1);
    }
}
