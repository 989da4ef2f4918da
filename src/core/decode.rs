//! Per-leg audio decoding: RTP payload in, samples at the recording's rate out.
//!
//! One [`LegDecoder`] per leg holds the decoder of the codec the leg is sending now; a codec or
//! SSRC change swaps it (G.722 and Opus carry state from packet to packet, so a new source must
//! start fresh). Audio at another rate than the recording's goes through a [`Resampler`]; Opus
//! decodes at the recording's rate directly, as libopus resamples internally.
//!
//! Opus loss: when packets are missing between two in-order packets of one source, the gap is
//! filled before the new packet is decoded: the last missing frame from the new packet's in-band
//! FEC (libopus falls back to concealment when it carries none), the ones before it by packet-loss
//! concealment. The filled audio is returned as a `lead` before the packet's own samples, so the
//! timeline writes it where the lost packets belonged. Gaps longer than [`MAX_CONCEAL_MS`] are
//! left silent: concealment that long only invents sound.

use super::g711;
use super::payload::{Codec, PayloadFormat};
use super::resample::Resampler;

/// The longest gap Opus concealment fills.
pub const MAX_CONCEAL_MS: u32 = 120;

/// How far behind the newest packet a sequence number still counts as reordered rather than a
/// restart of the numbering.
const REORDER_SPAN: u16 = 256;

/// What one decoded packet gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decoded {
    /// Samples at the start of the output that belong before the packet's own position (filled
    /// loss).
    pub lead: usize,
    /// Lost frames filled by FEC or concealment.
    pub concealed: u32,
    /// The packet itself was corrupt: its time was filled by concealment instead.
    pub corrupt: bool,
}

/// Why a packet gave no audio.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The codec has no decoder here: its time is kept as silence.
    #[error("no decoder for {0}")]
    Unsupported(String),
    /// The payload is not valid for its codec.
    #[error("{codec} payload not decodable: {reason}")]
    Corrupt { codec: &'static str, reason: String },
    /// The same packet again (a duplicate): decoding it twice would disturb the decoder's state.
    #[error("packet already decoded")]
    Repeat,
}

/// The audio sample rate a codec produces (not its RTP clock: G.722 is 16 kHz on an 8 kHz clock).
pub fn audio_rate(codec: Codec) -> Option<u32> {
    match codec {
        Codec::Pcmu | Codec::Pcma | Codec::G729 => Some(8000),
        Codec::G722 => Some(16000),
        Codec::Opus => Some(48000),
        Codec::ComfortNoise | Codec::TelephoneEvent | Codec::Other => None,
    }
}

/// The rates a recording can have.
pub const RECORDING_RATES: [u32; 3] = [8000, 16000, 48000];

/// The default recording rate for legs sending these formats: the highest audio rate among
/// them, 8 kHz when none is known.
pub fn default_rate<'a>(formats: impl IntoIterator<Item = &'a PayloadFormat>) -> u32 {
    formats.into_iter().filter_map(|f| audio_rate(f.codec)).max().unwrap_or(8000)
}

enum Active {
    G711(&'static [i16; 256]),
    G722(Box<ezk_g722::libg722::decoder::Decoder>),
    Opus(Box<opus::Decoder>),
}

#[derive(Clone, Copy)]
struct Last {
    seq: u16,
    ts: u32,
    /// The packet's length in RTP clock units.
    ts_len: u32,
}

/// One leg's decoder state.
pub struct LegDecoder {
    rate: u32,
    active: Option<(Codec, u32, Active)>,
    resampler: Option<Resampler>,
    last: Option<Last>,
    native: Vec<i16>,
    opus_buf: Vec<i16>,
    /// Sequence numbers of the last packets decoded from this source, to skip duplicates.
    recent: [Option<u16>; 16],
    recent_at: usize,
}

impl LegDecoder {
    /// A decoder producing audio at `rate` Hz (one of [`RECORDING_RATES`]).
    pub fn new(rate: u32) -> Self {
        LegDecoder {
            rate,
            active: None,
            resampler: None,
            last: None,
            native: Vec::new(),
            opus_buf: Vec::new(),
            recent: [None; 16],
            recent_at: 0,
        }
    }

    /// Decodes one packet's payload, appending samples at the recording's rate to `out`.
    pub fn decode(
        &mut self,
        format: &PayloadFormat,
        ssrc: u32,
        seq: u16,
        ts: u32,
        payload: &[u8],
        out: &mut Vec<i16>,
    ) -> Result<Decoded, DecodeError> {
        let codec = format.codec;
        let fresh = !matches!(&self.active, Some((c, s, _)) if *c == codec && *s == ssrc);
        if fresh {
            self.active = Some((codec, ssrc, self.build(codec, &format.encoding)?));
            self.last = None;
            // Nothing decoded from the new source yet.
            self.recent = [None; 16];
            let native = match codec {
                Codec::Opus => self.rate,
                other => audio_rate(other).unwrap_or(self.rate),
            };
            self.resampler = Some(
                Resampler::new(native, self.rate)
                    .map_err(|e| DecodeError::Corrupt { codec: "resampler", reason: e.to_string() })?,
            );
        }
        if self.recent.contains(&Some(seq)) {
            return Err(DecodeError::Repeat);
        }
        let in_order = self.last.is_some_and(|l| seq == l.seq.wrapping_add(1));
        let gap = self.last.map(|l| seq.wrapping_sub(l.seq).wrapping_sub(1)).filter(|g| *g < 0x8000);
        // Newer than the last, unless at most REORDER_SPAN behind it (a reordered packet): a
        // bigger step back is a sender that restarted its numbering, and becomes the new last.
        let newer = self.last.is_none_or(|l| l.seq.wrapping_sub(seq) > REORDER_SPAN);
        let Some((_, _, active)) = self.active.as_mut() else { unreachable!("built above") };
        let resampler = self.resampler.as_mut().expect("built with the decoder");
        if !in_order && !fresh {
            // A gap or a reordered packet: the filter's history is not this packet's past.
            resampler.reset();
        }
        let mut result = Decoded::default();
        self.native.clear();
        let ts_len = match active {
            // The common case, G.711 at 8 kHz: straight into the output, no copy.
            Active::G711(table) if resampler.is_identity() => {
                g711::decode(table, payload, out);
                self.note(seq, ts, payload.len() as u32, newer);
                return Ok(result);
            }
            Active::G711(table) => {
                g711::decode(table, payload, &mut self.native);
                payload.len() as u32
            }
            Active::G722(d) => {
                self.native.extend_from_slice(&d.decode(payload));
                payload.len() as u32
            }
            Active::Opus(d) => {
                let rate = self.rate;
                let max = rate as usize * 120 / 1000;
                self.opus_buf.resize(max, 0);
                let nb = match opus::packet::get_nb_samples(payload, 48000) {
                    Ok(nb) if nb > 0 => nb,
                    // A corrupt packet: conceal its time (the previous packet's length) rather
                    // than leave a hole in the middle of speech.
                    bad => {
                        let reason = bad.map_or_else(|e| e.to_string(), |_| "no audio frames".into());
                        let Some(l) = self.last.filter(|l| l.ts_len > 0 && l.ts_len <= 48 * 120) else {
                            return Err(DecodeError::Corrupt { codec: "Opus", reason });
                        };
                        let frame = (l.ts_len as usize * rate as usize) / 48000;
                        let n = d
                            .decode(&[], &mut self.opus_buf[..frame], false)
                            .map_err(|e| DecodeError::Corrupt { codec: "Opus", reason: e.to_string() })?;
                        out.extend_from_slice(&self.opus_buf[..n]);
                        self.note(seq, ts, l.ts_len, newer);
                        return Ok(Decoded { lead: 0, concealed: 1, corrupt: true });
                    }
                };
                // Fill a short gap of this source before the packet (see the module notes).
                if let (Some(l), Some(g)) = (self.last, gap)
                    && g > 0
                    && l.ts_len > 0
                    && u64::from(g) * u64::from(l.ts_len) <= u64::from(MAX_CONCEAL_MS) * 48
                    && ts.wrapping_sub(l.ts) == l.ts_len * (u32::from(g) + 1)
                {
                    let frame = (l.ts_len as usize * rate as usize) / 48000;
                    for i in 0..g {
                        let fec = i + 1 == g;
                        let input = if fec { payload } else { &[][..] };
                        let n = d
                            .decode(input, &mut self.opus_buf[..frame], fec)
                            .map_err(|e| DecodeError::Corrupt { codec: "Opus", reason: e.to_string() })?;
                        self.native.extend_from_slice(&self.opus_buf[..n]);
                        result.lead += n;
                        result.concealed += 1;
                    }
                }
                let n = d
                    .decode(payload, &mut self.opus_buf, false)
                    .map_err(|e| DecodeError::Corrupt { codec: "Opus", reason: e.to_string() })?;
                self.native.extend_from_slice(&self.opus_buf[..n]);
                nb as u32
            }
        };
        // Opus decodes at the recording's rate (its resampler is the identity), so the lead
        // counted above is already in output samples.
        resampler.process(&self.native, out);
        self.note(seq, ts, ts_len, newer);
        Ok(result)
    }

    fn note(&mut self, seq: u16, ts: u32, ts_len: u32, newer: bool) {
        if newer {
            self.last = Some(Last { seq, ts, ts_len });
        }
        self.recent[self.recent_at] = Some(seq);
        self.recent_at = (self.recent_at + 1) % self.recent.len();
    }

    fn build(&self, codec: Codec, name: &str) -> Result<Active, DecodeError> {
        Ok(match codec {
            Codec::Pcmu => Active::G711(&g711::ULAW_TABLE),
            Codec::Pcma => Active::G711(&g711::ALAW_TABLE),
            Codec::G722 => Active::G722(Box::new(ezk_g722::libg722::decoder::Decoder::new(
                ezk_g722::libg722::Bitrate::Mode1_64000,
                false,
                false,
            ))),
            Codec::Opus => Active::Opus(Box::new(
                opus::Decoder::new(self.rate, opus::Channels::Mono)
                    .map_err(|e| DecodeError::Corrupt { codec: "Opus", reason: e.to_string() })?,
            )),
            _ => return Err(DecodeError::Unsupported(name.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g722_packets(samples_16k: &[i16]) -> Vec<Vec<u8>> {
        let mut enc = ezk_g722::libg722::encoder::Encoder::new(ezk_g722::libg722::Bitrate::Mode1_64000, false, false);
        samples_16k.chunks(320).map(|c| enc.encode(c)).collect()
    }

    fn tone(rate: u32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    #[test]
    fn g722_gives_16k_audio_from_its_8k_clock_and_any_recording_rate() {
        let packets = g722_packets(&tone(16000, 3200));
        assert_eq!(packets[0].len(), 160, "20 ms of G.722 is 160 bytes");
        let f = PayloadFormat::new("G722", 8000, None);
        for (rate, per_packet) in [(16000, 320), (8000, 160), (48000, 960)] {
            let mut d = LegDecoder::new(rate);
            let mut out = Vec::new();
            for (i, p) in packets.iter().enumerate() {
                let got = d.decode(&f, 1, i as u16, (i * 160) as u32, p, &mut out).unwrap();
                assert_eq!(got, Decoded::default());
            }
            assert_eq!(out.len(), per_packet * packets.len(), "at {rate} Hz");
            let peak = out[out.len() / 2..].iter().map(|v| v.unsigned_abs()).max().unwrap();
            assert!(peak > 6000, "the tone survives decoding at {rate} Hz (peak {peak})");
        }
    }

    #[test]
    fn opus_loss_is_filled_by_fec_and_concealment_up_to_the_limit() {
        let mut enc = opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        enc.set_inband_fec(true).unwrap();
        enc.set_packet_loss_perc(20).unwrap();
        let pcm = tone(48000, 48000);
        let packets: Vec<Vec<u8>> = pcm.chunks(960).map(|c| enc.encode_vec(c, 4000).unwrap()).collect();
        let f = PayloadFormat::new("opus", 48000, Some(2));
        let mut d = LegDecoder::new(16000);
        let mut out = Vec::new();
        let feed = |d: &mut LegDecoder, i: usize, out: &mut Vec<i16>| {
            d.decode(&f, 7, i as u16, (i * 960) as u32, &packets[i], out).unwrap()
        };
        for i in 0..10 {
            assert_eq!(feed(&mut d, i, &mut out).lead, 0);
        }
        // Packets 10 and 11 lost: 11 from FEC in 12, 10 by concealment.
        let before = out.len();
        let got = feed(&mut d, 12, &mut out);
        assert_eq!(got, Decoded { lead: 640, concealed: 2, corrupt: false });
        assert_eq!(out.len() - before, 3 * 320);
        // A gap longer than the limit (packets 13..=19, 140 ms) is left to the timeline.
        let got = feed(&mut d, 20, &mut out);
        assert_eq!(got, Decoded::default());
    }

    // Found when tried to break: after a restart of the sequence numbers the decoder kept the
    // old last packet for minutes, so concealment was off and the resampler reset every packet.
    #[test]
    fn a_restarted_sequence_becomes_the_new_reference() {
        let mut enc = opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let pcm = tone(48000, 960);
        let f = PayloadFormat::new("opus", 48000, Some(2));
        let mut d = LegDecoder::new(48000);
        let mut out = Vec::new();
        let mut feed = |d: &mut LegDecoder, seq: u16, ts: u32| {
            let p = enc.encode_vec(&pcm, 1500).unwrap();
            d.decode(&f, 1, seq, ts, &p, &mut out).unwrap()
        };
        for i in 0..5u16 {
            feed(&mut d, 5000 + i, u32::from(i) * 960);
        }
        // Restart 4,000 back, then one packet lost: concealed.
        feed(&mut d, 1000, 10 * 960);
        feed(&mut d, 1001, 11 * 960);
        assert_eq!(feed(&mut d, 1003, 13 * 960).concealed, 1);
        // Two behind the newest is reordering: it does not become the reference.
        feed(&mut d, 1002, 12 * 960);
        assert_eq!(feed(&mut d, 1004, 14 * 960).concealed, 0);
    }

    #[test]
    fn a_codec_change_swaps_the_decoder_and_keeps_the_rate() {
        let mut d = LegDecoder::new(16000);
        let mut out = Vec::new();
        let g722 = PayloadFormat::new("G722", 8000, None);
        let pcma = PayloadFormat::new("PCMA", 8000, None);
        for (i, p) in g722_packets(&tone(16000, 1600)).iter().enumerate() {
            d.decode(&g722, 1, i as u16, (i * 160) as u32, p, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1600);
        d.decode(&pcma, 1, 5, 800, &[0xd5; 160], &mut out).unwrap();
        assert_eq!(out.len(), 1600 + 320, "160 A-law samples become 320 at 16 kHz");
        let e = d.decode(&PayloadFormat::new("G729", 8000, None), 1, 6, 960, &[0; 20], &mut out).unwrap_err();
        assert_eq!(e, DecodeError::Unsupported("G729".into()));
    }

    #[test]
    fn corrupt_opus_is_an_error_not_a_panic() {
        let mut d = LegDecoder::new(48000);
        let f = PayloadFormat::new("opus", 48000, Some(2));
        let mut out = Vec::new();
        // TOC code 3 with a frame count of 0 is invalid.
        assert!(matches!(d.decode(&f, 1, 0, 0, &[0x0b, 0x00], &mut out), Err(DecodeError::Corrupt { .. })));
        assert!(d.decode(&f, 1, 1, 960, &[], &mut out).is_err());
    }

    #[test]
    fn the_default_rate_is_the_highest_among_the_codecs() {
        let f = |n: &str, r| PayloadFormat::new(n, r, None);
        assert_eq!(default_rate([&f("PCMU", 8000), &f("telephone-event", 8000)]), 8000);
        assert_eq!(default_rate([&f("PCMU", 8000), &f("G722", 8000)]), 16000);
        assert_eq!(default_rate([&f("G722", 8000), &f("opus", 48000)]), 48000);
        assert_eq!(default_rate([]), 8000);
    }
}
