//! Compressed output formats: Ogg/Opus and MP3, encoded as the audio arrives.
//!
//! An encoder takes interleaved 16-bit PCM in pieces of any size and appends the file's bytes to
//! a buffer the writer drains: the head first ([`StreamEncoder::head`], known at creation), then
//! the body as frames complete, then the tail at [`StreamEncoder::finish`]. Nothing is ever
//! rewritten, so the same bytes go to a plain file or into a sealed one, and the prefix a crash
//! leaves is itself a playable file (Ogg pages and MP3 frames stand alone).
//!
//! Ogg/Opus (RFC 7845): every channel is its own mono Opus stream (channel mapping family 0 for
//! one channel, 1 with no coupled streams for 2–8), so the customer and the agent are never mixed
//! into each other by stereo coding. 20 ms frames, VoIP application tuned for speech, a voice
//! bitrate by rate; pre-skip is the encoder's look-ahead and the last page's granule position
//! trims the padding of the final frame, so decoders give back exactly the samples recorded.
//!
//! MP3 (LAME 3.100, LGPL-3.0: see `docs/codecs.md`): constant bitrate, stereo (never joint
//! stereo, which codes the channels' sum and difference). The head is an Info (Xing/LAME) frame
//! written by callvault: provisional at creation (the encoder delay only), final at the end
//! (frames, bytes, delay, padding), so players that read it (ffmpeg and everything built on it)
//! play exactly the samples given, at their positions.

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// A recording's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// 16-bit PCM WAV.
    #[default]
    Wav,
    /// G.711 µ-law WAV, 8 kHz.
    WavUlaw,
    /// G.711 A-law WAV, 8 kHz.
    WavAlaw,
    /// Ogg/Opus.
    Opus,
    /// MP3.
    Mp3,
}

impl Format {
    /// Every format, in the order the docs list them.
    pub const ALL: [Format; 5] = [Format::Wav, Format::WavUlaw, Format::WavAlaw, Format::Opus, Format::Mp3];

    /// The format's name in `start`, `--format` and the sidecar.
    pub fn name(self) -> &'static str {
        match self {
            Format::Wav => "wav",
            Format::WavUlaw => "wav-ulaw",
            Format::WavAlaw => "wav-alaw",
            Format::Opus => "opus",
            Format::Mp3 => "mp3",
        }
    }

    /// Parses a format name.
    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The file extension (before `.cvs` when sealed).
    pub fn ext(self) -> &'static str {
        match self {
            Format::Wav | Format::WavUlaw | Format::WavAlaw => "wav",
            Format::Opus => "opus",
            Format::Mp3 => "mp3",
        }
    }

    /// The sample rate the format imposes: G.711 is 8 kHz.
    pub fn fixed_rate(self) -> Option<u32> {
        matches!(self, Format::WavUlaw | Format::WavAlaw).then_some(8000)
    }

    /// Whether the audio is written through a [`StreamEncoder`] (else by the WAV writer).
    pub fn is_stream(self) -> bool {
        matches!(self, Format::Opus | Format::Mp3)
    }

    /// The most channels one file of this format can hold.
    pub fn max_channels(self) -> u16 {
        match self {
            Format::Opus => 8,
            Format::Mp3 => 2,
            _ => u16::MAX / 2,
        }
    }

    /// Checks that a recording of `channels` at `rate` can be written in this format.
    pub fn check(self, rate: u32, channels: u16) -> Result<(), EncodeError> {
        if let Some(r) = self.fixed_rate()
            && r != rate
        {
            return Err(EncodeError::Unsupported(format!(
                "{} is 8 kHz only; the recording is {rate} Hz (ask for sample_rate 8000, or leave it to the format)",
                self.name()
            )));
        }
        if channels > self.max_channels() {
            return Err(EncodeError::Unsupported(format!(
                "{} holds at most {} channels per file, the recording has {channels}; use layout \"separate\" or fewer channels",
                self.name(),
                self.max_channels()
            )));
        }
        Ok(())
    }
}

/// The extensions of audio files, in every format.
pub const AUDIO_EXTS: [&str; 3] = ["wav", "opus", "mp3"];

/// `name` without its audio extension (`.wav`, `.opus`, `.mp3`), if it has one.
pub fn strip_audio_ext(name: &str) -> Option<&str> {
    AUDIO_EXTS.iter().find_map(|e| name.strip_suffix(e)?.strip_suffix('.'))
}

/// Whether `name` ends in an audio extension followed by `suffix` (`""`, `".partial"`, `".cvs"`,
/// `".cvs.partial"`).
pub fn is_audio_name(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix).and_then(strip_audio_ext).is_some()
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an encoder could not be set up or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The format cannot hold this recording (rate, channels).
    #[error("{0}")]
    Unsupported(String),
    /// The codec library refused.
    #[error("{codec} encoder: {reason}")]
    Codec { codec: &'static str, reason: String },
}

fn opus_err(e: opus::Error) -> EncodeError {
    EncodeError::Codec { codec: "Opus", reason: e.to_string() }
}

/// Ogg/Opus granule positions count 48 kHz samples whatever the input rate.
const GRANULE_RATE: u64 = 48_000;
/// Pages are closed after this many packets (half a second): a page's packets reach the file
/// only when it closes, so this bounds what a crash can lose (about 2 % of overhead).
const PACKETS_PER_PAGE: u64 = 25;
/// The stream serial number: one logical stream per file, so any value will do.
const SERIAL: u32 = 0x6376_6f70; // "cvop"

/// Voice bitrate per channel, bit/s: transparent-for-speech at each bandwidth.
fn opus_bitrate(rate: u32) -> i32 {
    match rate {
        8000 => 12_000,
        16000 => 20_000,
        _ => 32_000,
    }
}

/// Kbit/s of one MP3 file: per channel 16 at 8 kHz (MPEG-2.5), 24 at 16 kHz (MPEG-2), 48 at 48 kHz.
fn mp3_bitrate(rate: u32, channels: u16) -> mp3lame_encoder::Bitrate {
    use mp3lame_encoder::Bitrate::*;
    match (rate, channels) {
        (8000, 1) => Kbps16,
        (8000, _) => Kbps32,
        (16000, 1) => Kbps24,
        (16000, _) => Kbps48,
        (_, 1) => Kbps48,
        _ => Kbps96,
    }
}

struct OggOpus {
    encoders: Vec<opus::Encoder>,
    pages: PacketWriter<'static, Vec<u8>>,
    frame: usize,
    pre_skip: u64,
    packets: u64,
    /// Per channel, samples waiting for a whole frame.
    pending: Vec<Vec<i16>>,
    packet: Vec<u8>,
    scratch: Vec<u8>,
}

struct Mp3 {
    lame: mp3lame_encoder::Encoder,
    info: InfoFrame,
    /// Bytes of the stream not yet walked as whole frames (at most one frame).
    tail: Vec<u8>,
    /// Audio frames LAME has produced.
    frames: u64,
    /// Bytes LAME has produced.
    bytes: u64,
}

/// LAME 3.100's encoder delay at constant bitrate without resampling, in samples: what a
/// decoder must skip (with its own 529) to start at the first sample given.
pub const MP3_ENCODER_DELAY: u32 = 576;

/// The Info (Xing/LAME) frame at the head of an MP3 file: how many frames and bytes follow, the
/// encoder delay and the padding, so players cut both and play exactly the samples recorded.
#[derive(Debug, Clone, Copy)]
struct InfoFrame {
    header: [u8; 4],
    len: usize,
    side_info: usize,
    samples_per_frame: u32,
}

impl InfoFrame {
    /// The frame layout for this rate, bitrate and channel count (matches LAME's frames).
    fn new(rate: u32, kbps: u32, channels: u16) -> Option<InfoFrame> {
        const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
        const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        let (version, table, base, spf): (u8, &[u32; 15], u32, u32) = match rate {
            32000 | 44100 | 48000 => (3, &V1, rate, 1152),
            16000 | 22050 | 24000 => (2, &V2, rate * 2, 576),
            _ => (0, &V2, rate * 4, 576),
        };
        let sr_index = [44_100u32, 48_000, 32_000].iter().position(|&b| b == base)? as u8;
        let br_index = table.iter().position(|&k| k == kbps).filter(|&i| i > 0)? as u8;
        let mono = channels == 1;
        let header = [
            0xff,
            0xe0 | (version << 3) | (1 << 1) | 1, // layer III, no CRC
            (br_index << 4) | (sr_index << 2),
            if mono { 0xc0 } else { 0x00 }, // single channel, or stereo (never joint)
        ];
        let side_info = match (version == 3, mono) {
            (true, true) => 17,
            (true, false) => 32,
            (false, true) => 9,
            (false, false) => 17,
        };
        let len = (spf / 8 * kbps * 1000 / rate) as usize;
        Some(InfoFrame { header, len, side_info, samples_per_frame: spf })
    }

    /// The frame's bytes: with `frames` and `bytes` once known (0: not yet), and the padding
    /// the last frame carries.
    fn bytes(&self, frames: u32, bytes: u32, padding: u32) -> Vec<u8> {
        let mut f = vec![0u8; self.len];
        f[..4].copy_from_slice(&self.header);
        let mut at = 4 + self.side_info;
        f[at..at + 4].copy_from_slice(b"Info");
        let flags: u32 = if frames > 0 { 0x03 } else { 0 };
        f[at + 4..at + 8].copy_from_slice(&flags.to_be_bytes());
        at += 8;
        if frames > 0 {
            f[at..at + 4].copy_from_slice(&frames.to_be_bytes());
            f[at + 4..at + 8].copy_from_slice(&bytes.to_be_bytes());
            at += 8;
        }
        // The LAME extension: version, then (at +21) 12 bits of delay and 12 of padding.
        f[at..at + 9].copy_from_slice(b"LAME3.100");
        f[at + 9] = 0x01; // tag revision 0, constant bitrate
        let v = (MP3_ENCODER_DELAY.min(4095) << 12) | padding.min(4095);
        f[at + 21..at + 24].copy_from_slice(&v.to_be_bytes()[1..]);
        f
    }
}

enum Kind {
    Opus(Box<OggOpus>),
    Mp3(Box<Mp3>),
}

/// An encoder for one output file.
pub struct StreamEncoder {
    kind: Kind,
    rate: u32,
    channels: u16,
    frames_in: u64,
    head: Vec<u8>,
    finished: bool,
}

impl std::fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncoder").field("rate", &self.rate).field("channels", &self.channels).finish()
    }
}

impl StreamEncoder {
    /// An encoder for `format` (Opus or MP3) at `rate` with `channels` channels.
    pub fn new(format: Format, rate: u32, channels: u16) -> Result<Self, EncodeError> {
        format.check(rate, channels)?;
        if channels == 0 {
            return Err(EncodeError::Unsupported("a recording needs at least one channel".into()));
        }
        let (kind, head) = match format {
            Format::Opus => {
                let mut encoders = Vec::new();
                for _ in 0..channels {
                    let mut e =
                        opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip).map_err(opus_err)?;
                    e.set_bitrate(opus::Bitrate::Bits(opus_bitrate(rate))).map_err(opus_err)?;
                    e.set_signal(opus::Signal::Voice).map_err(opus_err)?;
                    // Complexity 5 costs half of 10 for a difference in speech few can hear.
                    e.set_complexity(5).map_err(opus_err)?;
                    encoders.push(e);
                }
                let lookahead = encoders[0].get_lookahead().map_err(opus_err)?;
                let pre_skip = u64::try_from(lookahead).unwrap_or(0) * GRANULE_RATE / u64::from(rate);
                let mut pages = PacketWriter::new(Vec::new());
                let page = |w: &mut PacketWriter<'static, Vec<u8>>, data: Vec<u8>| {
                    w.write_packet(data, SERIAL, PacketWriteEndInfo::EndPage, 0)
                        .map_err(|e| EncodeError::Codec { codec: "Ogg", reason: e.to_string() })
                };
                page(&mut pages, opus_head(channels, pre_skip as u16, rate))?;
                page(&mut pages, opus_tags())?;
                let head = std::mem::take(pages.inner_mut());
                let frame = rate as usize / 50;
                let ogg = OggOpus {
                    encoders,
                    pages,
                    frame,
                    pre_skip,
                    packets: 0,
                    pending: vec![Vec::with_capacity(frame); usize::from(channels)],
                    packet: Vec::with_capacity(4000),
                    scratch: vec![0; 4000],
                };
                (Kind::Opus(Box::new(ogg)), head)
            }
            Format::Mp3 => {
                let mut b = mp3lame_encoder::Builder::new().ok_or_else(|| EncodeError::Codec {
                    codec: "MP3",
                    reason: "LAME could not be initialised".into(),
                })?;
                let lame_err =
                    |e: mp3lame_encoder::BuildError| EncodeError::Codec { codec: "MP3", reason: e.to_string() };
                b.set_num_channels(channels as u8).map_err(lame_err)?;
                b.set_sample_rate(rate).map_err(lame_err)?;
                // Else LAME picks its own output rate for the bitrate (48 kHz came out at 32).
                b.set_output_sample_rate(std::num::NonZeroU32::new(rate)).map_err(lame_err)?;
                b.set_brate(mp3_bitrate(rate, channels)).map_err(lame_err)?;
                b.set_mode(if channels == 1 { mp3lame_encoder::Mode::Mono } else { mp3lame_encoder::Mode::Stereo })
                    .map_err(lame_err)?;
                b.set_quality(mp3lame_encoder::Quality::Good).map_err(lame_err)?;
                // LAME's own Info tag would need its first frame rewritten, which a sealed file
                // never does: callvault writes the Info frame as the file's head instead, once
                // provisional (delay only) and once final.
                b.set_to_write_vbr_tag(false).map_err(lame_err)?;
                let kbps = mp3_bitrate(rate, channels) as u32;
                let info = InfoFrame::new(rate, kbps, channels).ok_or_else(|| EncodeError::Codec {
                    codec: "MP3",
                    reason: format!("no MP3 frame layout for {rate} Hz at {kbps} kbit/s"),
                })?;
                let head = info.bytes(0, 0, 0);
                let mp3 = Mp3 { lame: b.build().map_err(lame_err)?, info, tail: Vec::new(), frames: 0, bytes: 0 };
                (Kind::Mp3(Box::new(mp3)), head)
            }
            other => return Err(EncodeError::Unsupported(format!("{other} is not a stream format"))),
        };
        Ok(StreamEncoder { kind, rate, channels, frames_in: 0, head, finished: false })
    }

    /// The file's first bytes (Ogg: the OpusHead and OpusTags pages; MP3: none).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Frames (samples per channel) given so far.
    pub fn frames_in(&self) -> u64 {
        self.frames_in
    }

    pub fn channels(&self) -> u16 {
        self.channels
    }

    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Encodes interleaved samples (whole frames), appending the file's bytes to `out`.
    pub fn write(&mut self, interleaved: &[i16], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let ch = usize::from(self.channels);
        debug_assert!(interleaved.len().is_multiple_of(ch));
        if interleaved.is_empty() {
            return Ok(());
        }
        self.frames_in += (interleaved.len() / ch) as u64;
        match &mut self.kind {
            Kind::Opus(o) => {
                for frame in interleaved.chunks(ch) {
                    for (c, s) in frame.iter().enumerate() {
                        o.pending[c].push(*s);
                    }
                    if o.pending[0].len() == o.frame {
                        o.encode_frame(false, 0, out)?;
                    }
                }
                Ok(())
            }
            Kind::Mp3(m) => {
                // LAME writes past what it was given when the buffer is short (and crashes on an
                // empty one): always reserve its documented worst case.
                out.reserve(mp3lame_encoder::max_required_buffer_size(interleaved.len() / ch));
                let start = out.len();
                let r = if ch == 1 {
                    m.lame.encode_to_vec(mp3lame_encoder::MonoPcm(interleaved), out)
                } else {
                    m.lame.encode_to_vec(mp3lame_encoder::InterleavedPcm(interleaved), out)
                };
                r.map_err(|e| EncodeError::Codec { codec: "MP3", reason: e.to_string() })?;
                m.count(&out[start..]);
                Ok(())
            }
        }
    }

    /// Encodes what is left and ends the stream, appending the last bytes to `out`. Returns the
    /// final head, of the same length as [`StreamEncoder::head`], to write over it.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<Vec<u8>, EncodeError> {
        if self.finished {
            return Err(EncodeError::Codec { codec: "stream", reason: "finished twice".into() });
        }
        self.finished = true;
        let rate = u64::from(self.rate);
        match &mut self.kind {
            Kind::Opus(o) => {
                // The decoder gives back pre-skip samples first: feed zeros until every recorded
                // sample has come out, then mark the real end in the last granule position.
                let end = o.pre_skip + self.frames_in * GRANULE_RATE / rate;
                let per_packet = o.frame as u64 * GRANULE_RATE / rate;
                loop {
                    let after = (o.packets + 1) * per_packet;
                    let last = after >= end;
                    let fill = o.frame - o.pending[0].len();
                    for p in &mut o.pending {
                        p.extend(std::iter::repeat_n(0, fill));
                    }
                    o.encode_frame(last, end, out)?;
                    if last {
                        break;
                    }
                }
                Ok(self.head.clone())
            }
            // LAME complains on stderr when flushing a stream it was never given audio for.
            Kind::Mp3(_) if self.frames_in == 0 => Ok(self.head.clone()),
            Kind::Mp3(m) => {
                out.reserve(2 * 7200);
                let start = out.len();
                // FlushGap: pad and emit the last frame (FlushNoGap keeps it for a next file).
                m.lame
                    .flush_to_vec::<mp3lame_encoder::FlushGap>(out)
                    .map_err(|e| EncodeError::Codec { codec: "MP3", reason: e.to_string() })?;
                m.count(&out[start..]);
                let total = m.frames * u64::from(m.info.samples_per_frame);
                let padding = total.saturating_sub(self.frames_in + u64::from(MP3_ENCODER_DELAY));
                let bytes = m.bytes + self.head.len() as u64;
                Ok(m.info.bytes(
                    u32::try_from(m.frames).unwrap_or(u32::MAX),
                    u32::try_from(bytes).unwrap_or(u32::MAX),
                    padding as u32,
                ))
            }
        }
    }
}

impl Mp3 {
    /// Counts the whole frames in LAME's output so far (for the Info frame).
    fn count(&mut self, new: &[u8]) {
        self.bytes += new.len() as u64;
        self.tail.extend_from_slice(new);
        let mut at = 0;
        while let Some((len, ..)) = super::stream::mp3_frame(&self.tail[at..]) {
            if at + len > self.tail.len() {
                break;
            }
            self.frames += 1;
            at += len;
        }
        self.tail.drain(..at);
    }
}

impl OggOpus {
    /// Encodes the pending frame of every channel into one packet and adds it to the stream.
    fn encode_frame(&mut self, last: bool, end_granule: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.packet.clear();
        let n = self.encoders.len();
        for c in 0..n {
            let len = self.encoders[c].encode(&self.pending[c], &mut self.scratch).map_err(opus_err)?;
            let p = &self.scratch[..len];
            if c + 1 < n {
                self_delimited(p, &mut self.packet)?;
            } else {
                self.packet.extend_from_slice(p);
            }
            self.pending[c].clear();
        }
        self.packets += 1;
        let granule = if last { end_granule } else { self.packets * GRANULE_RATE / 50 };
        let info = if last {
            PacketWriteEndInfo::EndStream
        } else if self.packets.is_multiple_of(PACKETS_PER_PAGE) {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        self.pages
            .write_packet(self.packet.clone(), SERIAL, info, granule)
            .map_err(|e| EncodeError::Codec { codec: "Ogg", reason: e.to_string() })?;
        out.append(self.pages.inner_mut());
        Ok(())
    }
}

/// Appends `packet` in self-delimiting framing (RFC 6716 Appendix B), as every stream but the
/// last of a multistream packet must be. Our encoder emits one 20 ms frame per packet (code 0),
/// whose self-delimited form is the TOC, the frame's length, then the frame.
fn self_delimited(packet: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let (&toc, frame) = packet
        .split_first()
        .ok_or_else(|| EncodeError::Codec { codec: "Opus", reason: "the encoder returned an empty packet".into() })?;
    if toc & 0x03 != 0 {
        return Err(EncodeError::Codec {
            codec: "Opus",
            reason: format!("expected a single-frame packet (code 0), got code {}", toc & 0x03),
        });
    }
    out.push(toc);
    let len = frame.len();
    if len < 252 {
        out.push(len as u8);
    } else {
        let first = 252 + (len & 3);
        out.push(first as u8);
        out.push(((len - first) >> 2) as u8);
    }
    out.extend_from_slice(frame);
    Ok(())
}

/// The identification header (RFC 7845 §5.1).
fn opus_head(channels: u16, pre_skip: u16, input_rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(19 + 2 + usize::from(channels));
    h.extend_from_slice(b"OpusHead");
    h.push(1); // version
    h.push(channels as u8);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&input_rate.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes()); // output gain
    if channels == 1 {
        h.push(0); // family 0: one mono stream
    } else {
        // Family 1 with every channel its own uncoupled stream: nothing is mixed between them.
        h.push(1);
        h.push(channels as u8); // streams
        h.push(0); // coupled streams
        h.extend((0..channels).map(|c| c as u8));
    }
    h
}

/// The comment header (RFC 7845 §5.2).
fn opus_tags() -> Vec<u8> {
    let vendor = format!("callvault {}", env!("CARGO_PKG_VERSION"));
    let mut t = Vec::new();
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor.as_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, frames: usize, channels: u16) -> Vec<i16> {
        (0..frames)
            .flat_map(|i| {
                (0..channels).map(move |c| {
                    let hz = 300.0 * f64::from(c + 1);
                    (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()) as i16
                })
            })
            .collect()
    }

    pub(crate) fn encode(format: Format, rate: u32, channels: u16, frames: usize, piece: usize) -> Vec<u8> {
        let mut e = StreamEncoder::new(format, rate, channels).unwrap();
        let mut out = e.head().to_vec();
        let pcm = tone(rate, frames, channels);
        for c in pcm.chunks(piece * usize::from(channels)) {
            e.write(c, &mut out).unwrap();
        }
        let head = e.finish(&mut out).unwrap();
        out[..head.len()].copy_from_slice(&head);
        assert_eq!(e.frames_in(), frames as u64);
        out
    }

    #[test]
    fn ogg_opus_pages_carry_the_heads_and_a_final_granule_that_trims_the_padding() {
        let out = encode(Format::Opus, 16000, 2, 16000 * 3 + 123, 77);
        assert_eq!(&out[..4], b"OggS");
        // Head page: OpusHead with family 1, two streams, none coupled.
        let head = out.windows(8).position(|w| w == b"OpusHead").unwrap();
        assert_eq!(out[head + 9], 2, "channels");
        assert_eq!(out[head + 18], 1, "mapping family");
        assert_eq!((out[head + 19], out[head + 20]), (2, 0), "two streams, none coupled");
        let pre_skip = u64::from(u16::from_le_bytes([out[head + 10], out[head + 11]]));
        // The last page's granule position: pre-skip + the samples given, at 48 kHz.
        let last = out.windows(4).rposition(|w| w == b"OggS").unwrap();
        assert_eq!(out[last + 5] & 0x04, 0x04, "end of stream flag");
        let granule = u64::from_le_bytes(out[last + 6..last + 14].try_into().unwrap());
        assert_eq!(granule, pre_skip + (16000 * 3 + 123) * 3);
    }

    #[test]
    #[ignore = "writes samples to /tmp for a look with ffprobe"]
    fn write_samples_for_a_look() {
        for (f, rate, ch) in [
            (Format::Opus, 8000, 1),
            (Format::Opus, 16000, 2),
            (Format::Opus, 48000, 2),
            (Format::Mp3, 8000, 1),
            (Format::Mp3, 16000, 2),
            (Format::Mp3, 48000, 2),
        ] {
            let out = encode(f, rate, ch, rate as usize * 3 + 7, 160);
            std::fs::write(format!("/tmp/look-{rate}-{ch}.{}", f.ext()), out).unwrap();
        }
    }

    #[test]
    fn formats_refuse_what_they_cannot_hold() {
        assert!(StreamEncoder::new(Format::Mp3, 8000, 3).unwrap_err().to_string().contains("at most 2 channels"));
        assert!(StreamEncoder::new(Format::Opus, 16000, 9).unwrap_err().to_string().contains("at most 8 channels"));
        assert!(Format::WavUlaw.check(16000, 2).unwrap_err().to_string().contains("8 kHz only"));
        assert_eq!(Format::parse("wav-alaw"), Some(Format::WavAlaw));
        assert_eq!(Format::parse("ogg"), None);
    }

    #[test]
    fn an_empty_recording_still_ends_its_streams() {
        for f in [Format::Opus, Format::Mp3] {
            for ch in [1, 2] {
                let out = encode(f, 8000, ch, 0, 160);
                assert!(!out.is_empty() || f == Format::Mp3, "{f} {ch}");
            }
        }
    }
}
