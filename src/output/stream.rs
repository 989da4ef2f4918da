//! Files of the compressed formats (Ogg/Opus, MP3), plain or sealed, and what a crash leaves of
//! them.
//!
//! The encoder's bytes are appended as they come; nothing is rewritten, so a sealed file's head
//! (the Ogg heads) is sealed once at creation and again, identical, at the end. What a crash
//! leaves is a prefix that plays: whole Ogg pages and MP3 frames are self-contained. Recovery
//! keeps the whole pages or frames and counts their samples ([`playable_frames`]).

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::encode::{Format, StreamEncoder};
use super::sealed::Sealing;
use super::wav::{self, WavError, WavInfo, WavSpec};
use crate::seal::format::FLAG_RECOVERED;
use crate::seal::{Container, Content, SealError, SealParams, SealRecord, SealWriter, SealedReader};

/// Plaintext bytes per sealed chunk, and per write of a plain file, for the compressed formats:
/// about a quarter of a second of a stereo call at their bitrates (a whole chunk is the most a
/// crash can lose, beyond the page being filled).
pub const STREAM_CHUNK: u32 = 1024;

/// The sealed container of a stream format.
pub fn container(format: Format) -> Container {
    match format {
        Format::Mp3 => Container::Mp3,
        _ => Container::Ogg,
    }
}

fn codec_err(path: &Path, e: super::encode::EncodeError) -> WavError {
    WavError::File { path: path.to_path_buf(), action: "encode", source: std::io::Error::other(e.to_string()) }
}

fn seal_err(path: &Path, e: SealError) -> WavError {
    WavError::File { path: path.to_path_buf(), action: "seal", source: std::io::Error::other(e.to_string()) }
}

/// An Ogg/Opus or MP3 file being written, plain or sealed.
pub struct StreamFile {
    enc: StreamEncoder,
    out: Sink,
    buf: Vec<u8>,
    path: PathBuf,
    bytes: u64,
}

enum Sink {
    Plain(BufWriter<File>),
    Sealed { w: Box<SealWriter<File>>, sealing: Arc<Sealing> },
}

impl std::fmt::Debug for StreamFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamFile").field("path", &self.path).field("bytes", &self.bytes).finish()
    }
}

impl StreamFile {
    /// Creates `path` (which must not exist) and writes the format's head.
    pub fn create(
        path: &Path,
        format: Format,
        spec: WavSpec,
        sealing: Option<(&Arc<Sealing>, SealParams)>,
    ) -> Result<Self, WavError> {
        let enc = StreamEncoder::new(format, spec.sample_rate, spec.channels).map_err(|e| codec_err(path, e))?;
        let file = File::options().write(true).create_new(true).open(path).map_err(|source| WavError::File {
            path: path.to_path_buf(),
            action: "create",
            source,
        })?;
        let head = enc.head().to_vec();
        let out = match sealing {
            None => {
                let mut w = BufWriter::with_capacity(STREAM_CHUNK as usize, file);
                w.write_all(&head).map_err(|source| WavError::File { path: path.into(), action: "write", source })?;
                w.flush().map_err(|source| WavError::File { path: path.into(), action: "write", source })?;
                Sink::Plain(w)
            }
            Some((sealing, params)) => {
                let kek = sealing.keys.active_kek().map_err(|e| seal_err(path, e))?;
                let w = SealWriter::create(file, &params, kek, &head).map_err(|e| seal_err(path, e))?;
                Sink::Sealed { w: Box::new(w), sealing: sealing.clone() }
            }
        };
        Ok(StreamFile { enc, out, buf: Vec::new(), path: path.to_path_buf(), bytes: head.len() as u64 })
    }

    fn put(&mut self) -> Result<(), WavError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match &mut self.out {
            Sink::Plain(w) => w.write_all(&self.buf).map_err(|source| WavError::File {
                path: self.path.clone(),
                action: "write",
                source,
            })?,
            Sink::Sealed { w, .. } => w.write(&self.buf).map_err(|e| seal_err(&self.path, e))?,
        }
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Encodes and appends interleaved samples.
    pub fn write_samples(&mut self, interleaved: &[i16]) -> Result<(), WavError> {
        let ch = usize::from(self.enc.channels());
        if !interleaved.len().is_multiple_of(ch) {
            return Err(WavError::PartialFrame { samples: interleaved.len(), channels: self.enc.channels() });
        }
        self.enc.write(interleaved, &mut self.buf).map_err(|e| codec_err(&self.path, e))?;
        self.put()
    }

    pub fn flush(&mut self) -> Result<(), WavError> {
        match &mut self.out {
            Sink::Plain(w) => {
                w.flush().map_err(|source| WavError::File { path: self.path.clone(), action: "flush", source })
            }
            Sink::Sealed { w, .. } => w.flush().map_err(|e| seal_err(&self.path, e)),
        }
    }

    pub fn frames_written(&self) -> u64 {
        self.enc.frames_in()
    }

    /// Ends the stream, writes the final head, signs (sealed) and fsyncs. A frame count other
    /// than `expected_frames` is reported after the file is complete.
    pub fn finalize(mut self, expected_frames: u64) -> Result<(WavInfo, Option<SealRecord>), WavError> {
        let head = self.enc.finish(&mut self.buf).map_err(|e| codec_err(&self.path, e))?;
        self.put()?;
        let frames = self.enc.frames_in();
        let info = WavInfo {
            frames,
            data_bytes: self.bytes,
            rf64: false,
            sample_rate: self.enc.sample_rate(),
            channels: self.enc.channels(),
        };
        let path = self.path.clone();
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| WavError::File { path, action, source }
        };
        let record = match self.out {
            Sink::Plain(mut w) => {
                w.flush().map_err(io("flush"))?;
                let mut file = w.into_inner().map_err(|e| io("flush")(e.into_error()))?;
                if head != self.enc.head() {
                    file.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
                    file.write_all(&head).map_err(io("write"))?;
                }
                file.sync_all().map_err(io("fsync"))?;
                None
            }
            Sink::Sealed { w, sealing } => {
                let signer = sealing.keys.signing().map_err(|e| seal_err(&self.path, e))?;
                let (file, record) =
                    w.finish(&head, 0, signer, crate::seal::now_ms()).map_err(|e| seal_err(&self.path, e))?;
                file.sync_all().map_err(io("fsync"))?;
                Some(record)
            }
        };
        if frames != expected_frames {
            return Err(WavError::LengthMismatch { expected_frames, written_frames: frames });
        }
        Ok((info, record))
    }
}

/// What a walk over an Ogg/Opus or MP3 file (or a prefix of one) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Playable {
    /// Sample frames (per channel) in the whole pages or frames, at `rate`.
    pub frames: u64,
    /// Bytes up to the end of the last whole page or frame: what follows is a torn tail.
    pub keep: usize,
    /// The stream's rate (the OpusHead's input rate; the MP3 frames' rate), when seen.
    pub rate: Option<u32>,
    /// The stream's channels, when seen.
    pub channels: Option<u16>,
    /// Bytes skipped as damaged between whole pages or frames (a bad header or checksum).
    pub damaged_bytes: u64,
}

/// Walks the whole Ogg pages or MP3 frames of `bytes`, resynchronising past damage the way a
/// player does, so that one bad byte costs its page or frame, not the rest of the recording.
pub fn playable_frames(container: Container, bytes: &[u8]) -> Playable {
    match container {
        Container::Ogg => ogg_playable(bytes),
        Container::Mp3 => mp3_playable(bytes),
        _ => Playable::default(),
    }
}

/// The Ogg page CRC (RFC 3533: polynomial 0x04c11db7, no reflection, computed with the CRC
/// field zeroed).
fn ogg_crc(page: &[u8]) -> u32 {
    let mut crc = 0u32;
    for (i, &b) in page.iter().enumerate() {
        let b = if (22..26).contains(&i) { 0 } else { b };
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    crc
}

/// Whole Ogg pages: the length is the highest granule position less the pre-skip, at 48 kHz,
/// scaled back to the OpusHead's input rate.
fn ogg_playable(b: &[u8]) -> Playable {
    let mut p = Playable::default();
    let (mut at, mut granule, mut pre_skip, mut rate) = (0usize, 0u64, 0u64, 48_000u64);
    let mut head_ok = false;
    // A page whose header or lacing is broken stops players there (libogg waits for a page that
    // never ends): what comes after it stays in the file but is not counted as playable. A page
    // with only a bad checksum is skipped by players, which play on.
    let mut counting = true;
    while at + 27 <= b.len() {
        if &b[at..at + 4] == b"OggS" && b[at + 4] == 0 {
            let nseg = usize::from(b[at + 26]);
            let end = b
                .get(at + 27..at + 27 + nseg)
                .map(|lacing| at + 27 + nseg + lacing.iter().map(|&l| usize::from(l)).sum::<usize>());
            match end {
                Some(end) if end <= b.len() => {
                    let stored = u32::from_le_bytes(b[at + 22..at + 26].try_into().expect("4 bytes"));
                    if ogg_crc(&b[at..end]) == stored {
                        let body = &b[at + 27 + nseg..end];
                        if body.starts_with(b"OpusHead") && body.len() >= 16 {
                            head_ok = true;
                            p.channels = Some(u16::from(body[9]));
                            pre_skip = u64::from(u16::from_le_bytes([body[10], body[11]]));
                            rate = u64::from(u32::from_le_bytes([body[12], body[13], body[14], body[15]])).max(1);
                            p.rate = Some(rate as u32);
                        }
                        let g = u64::from_le_bytes(b[at + 6..at + 14].try_into().expect("8 bytes"));
                        if g != u64::MAX && counting {
                            granule = granule.max(g);
                        }
                        at = end;
                        p.keep = end;
                        continue;
                    }
                    // A bad checksum on a page that ends where the next begins: skipped, no more.
                    if !(end == b.len() || b[end..].starts_with(b"OggS")) {
                        counting = false;
                    }
                }
                // Runs past the end with no page after it: the torn tail.
                _ if !b[at + 1..].windows(4).any(|w| w == b"OggS") => break,
                // Runs past a page that follows: a broken lacing, where players stop.
                _ => counting = false,
            }
        }
        // Damage (a bad header, length or checksum): resync at the next capture pattern. The
        // damaged bytes stay in the file; their samples are not counted.
        if &b[at..at + 4] != b"OggS" || b[at + 4] != 0 {
            counting = false;
        }
        match b[at + 1..].windows(4).position(|w| w == b"OggS") {
            Some(skip) => {
                p.damaged_bytes += skip as u64 + 1;
                at += skip + 1;
            }
            None => {
                // Bytes that are no page at all (not a torn page) count as damage.
                if &b[at..at + 4] != b"OggS" {
                    p.damaged_bytes += (b.len() - at) as u64;
                }
                break;
            }
        }
    }
    // Without a readable OpusHead nothing plays and no length can be known.
    p.frames = if head_ok { granule.saturating_sub(pre_skip) * rate / 48_000 } else { 0 };
    p
}

/// One MPEG audio layer III frame header at the start of `h`: (length, samples, rate, channels).
pub(crate) fn mp3_frame(h: &[u8]) -> Option<(usize, u64, u32, u16)> {
    // Kbit/s by bitrate index: MPEG-1 layer III, and MPEG-2/2.5 layer III.
    const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let h = h.get(..4)?;
    if h[0] != 0xff || h[1] & 0xe0 != 0xe0 || (h[1] >> 1) & 3 != 1 {
        return None;
    }
    let version = (h[1] >> 3) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    let (bi, si, pad) = (usize::from(h[2] >> 4), usize::from((h[2] >> 2) & 3), usize::from((h[2] >> 1) & 1));
    if version == 1 || bi == 0 || bi == 15 || si == 3 {
        return None;
    }
    let base = [44_100u32, 48_000, 32_000][si];
    let (rate, kbps, per_frame) = match version {
        3 => (base, V1[bi], 1152u32),
        2 => (base / 2, V2[bi], 576),
        _ => (base / 4, V2[bi], 576),
    };
    let len = (per_frame / 8 * kbps * 1000 / rate) as usize + pad;
    let channels = if h[3] >> 6 == 3 { 1 } else { 2 };
    (len >= 4).then_some((len, u64::from(per_frame), rate, channels))
}

/// Whole MP3 frames; past a bad header, the next sync whose frame is followed by another (a
/// player's resync, hardened against a stray 0xFF in the audio).
fn mp3_playable(b: &[u8]) -> Playable {
    let mut p = Playable::default();
    let mut at = 0usize;
    while at + 4 <= b.len() {
        match mp3_frame(&b[at..]) {
            Some((len, samples, rate, channels)) if at + len <= b.len() => {
                // The Info frame at the head carries no audio.
                let info = at == 0 && b[4..len.min(48)].windows(4).any(|w| w == b"Info" || w == b"Xing");
                if !info {
                    p.frames += samples;
                }
                p.rate.get_or_insert(rate);
                p.channels.get_or_insert(channels);
                at += len;
                p.keep = at;
            }
            Some(_) => break, // the torn tail
            None => {
                let next = (at + 1..b.len().saturating_sub(3)).find(|&i| {
                    mp3_frame(&b[i..]).is_some_and(|(len, ..)| {
                        i + len == b.len() || mp3_frame(&b[(i + len).min(b.len())..]).is_some()
                    })
                });
                match next {
                    Some(i) => {
                        p.damaged_bytes += (i - at) as u64;
                        at = i;
                    }
                    None => {
                        p.damaged_bytes += (b.len() - at) as u64;
                        break;
                    }
                }
            }
        }
    }
    p
}

/// What [`reseal_stream_unfinished`] did.
#[derive(Debug, Clone)]
pub struct ResealedStream {
    pub playable: Playable,
    pub stopped_by: Option<String>,
    /// Bytes after the recovered prefix did not authenticate: the unfinished file was kept
    /// under this name rather than removed.
    pub kept_damaged: Option<PathBuf>,
    /// Nothing playable was recovered (the heads at most): no file was made and the unfinished
    /// one is gone (kept if damaged).
    pub empty: bool,
    /// The re-sealed file was already in place (a crash during an earlier recovery).
    pub was_complete: bool,
}

/// Recovers a sealed Ogg/Opus or MP3 file left unfinished by a crash: its authenticated prefix
/// (whole pages or frames; a torn last one is cut) is re-sealed under a new data key into `dest`
/// (which must not exist) with the recovered flag; then `partial` is removed. A file with bytes
/// that do not authenticate is first renamed `….damaged` and kept; a finished `dest` from an
/// earlier recovery is verified and kept.
pub fn reseal_stream_unfinished(
    partial: &Path,
    dest: &Path,
    sealing: &Arc<Sealing>,
) -> Result<ResealedStream, WavError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| WavError::File { path: p, action, source }
    };
    let open = |p: &Path| -> Result<SealedReader<File>, WavError> {
        let file = File::open(p).map_err(io("open", p))?;
        SealedReader::open(file, &sealing.keys).map_err(|e| seal_err(p, e))
    };
    let mut reader = open(partial)?;
    let header = reader.header().clone();
    if !matches!(header.container, Container::Ogg | Container::Mp3) {
        return Err(seal_err(partial, SealError::Invalid("not a sealed Ogg/Opus or MP3 recording".into())));
    }
    let input_is_damaged = partial.to_string_lossy().ends_with(".damaged");
    let mut rec = reader.recover();
    let mut kept_damaged = input_is_damaged.then(|| partial.to_path_buf());
    if rec.damaged && !input_is_damaged {
        // Put aside first, so that a crash from here on finds it again and never deletes it.
        let kept = super::with_suffix(partial, ".damaged");
        fs::rename(partial, &kept).map_err(io("rename to", &kept))?;
        wav::sync_parent_dir(&kept)?;
        reader = open(&kept)?;
        rec = reader.recover();
        kept_damaged = Some(kept);
    }
    let source = kept_damaged.clone().unwrap_or_else(|| partial.to_path_buf());
    let done_with_source = |kept: &Option<PathBuf>| -> Result<(), WavError> {
        if kept.is_none() {
            fs::remove_file(partial).map_err(io("remove", partial))?;
        }
        Ok(())
    };
    if dest.exists() {
        // A crash during an earlier recovery, after the re-sealed file was in place.
        let complete = super::sealed::verified_audio(dest, &sealing.keys)
            .ok()
            .filter(|(h, ..)| h.recording_id == header.recording_id);
        let Some((_, frames, rate, _)) = complete else {
            return Err(WavError::WouldReplace { path: dest.to_path_buf() });
        };
        done_with_source(&kept_damaged)?;
        wav::sync_parent_dir(dest)?;
        let playable = Playable { frames, rate, ..Playable::default() };
        return Ok(ResealedStream { playable, stopped_by: None, kept_damaged, empty: false, was_complete: true });
    }
    let head = rec.head.clone().unwrap_or_default();
    let mut body = Vec::new();
    reader.write_body_prefix(&rec, rec.body_len, &mut body).map_err(|e| seal_err(&source, e))?;
    let mut whole = head.clone();
    whole.extend_from_slice(&body);
    let playable = playable_frames(header.container, &whole);
    if playable.frames == 0 {
        done_with_source(&kept_damaged)?;
        // Damaged before any audio authenticated: kept under a name recovery does not take up
        // again (`<rid>.<ext>.cvs.damaged`), so it is reported once.
        let kept_damaged = match kept_damaged {
            Some(k) => {
                let settled = super::with_suffix(dest, ".damaged");
                fs::rename(&k, &settled).map_err(io("rename to", &settled))?;
                wav::sync_parent_dir(&settled)?;
                Some(settled)
            }
            None => None,
        };
        return Ok(ResealedStream {
            playable,
            stopped_by: rec.stopped_by,
            kept_damaged,
            empty: true,
            was_complete: false,
        });
    }
    let body_keep = playable.keep.saturating_sub(head.len());
    let tmp = super::sealed::tmp_path(dest);
    let _ = fs::remove_file(&tmp);
    let params = SealParams {
        content: Content::Audio,
        container: header.container,
        chunk_size: header.chunk_size,
        recording_id: header.recording_id,
        created_ms: crate::seal::now_ms(),
        index: header.index.clone(),
    };
    let out = File::options().write(true).create_new(true).open(&tmp).map_err(io("create", &tmp))?;
    let kek = sealing.keys.active_kek().map_err(|e| seal_err(&tmp, e))?;
    let mut w = SealWriter::create(out, &params, kek, &head).map_err(|e| seal_err(&tmp, e))?;
    w.write(&body[..body_keep]).map_err(|e| seal_err(&tmp, e))?;
    let signer = sealing.keys.signing().map_err(|e| seal_err(&tmp, e))?;
    let (out, _) = w.finish(&head, FLAG_RECOVERED, signer, crate::seal::now_ms()).map_err(|e| seal_err(&tmp, e))?;
    out.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, dest).map_err(io("rename into", dest))?;
    wav::sync_parent_dir(dest)?;
    done_with_source(&kept_damaged)?;
    Ok(ResealedStream { playable, stopped_by: rec.stopped_by, kept_damaged, empty: false, was_complete: false })
}

/// Recovers a plain Ogg/Opus or MP3 file left unfinished: renamed to `dest` with only its torn
/// last page or frame cut (bytes before it are never removed, damaged ones included: players
/// skip them). Returns what it holds; with nothing playable (the heads at most) the file is
/// removed and `frames` is 0.
pub fn recover_plain_stream(partial: &Path, dest: &Path, format: Format) -> Result<Playable, WavError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| WavError::File { path: p, action, source }
    };
    if dest.exists() {
        return Err(WavError::WouldReplace { path: dest.to_path_buf() });
    }
    let bytes = fs::read(partial).map_err(io("read", partial))?;
    let playable = playable_frames(container(format), &bytes);
    if playable.frames == 0 && playable.damaged_bytes == 0 {
        fs::remove_file(partial).map_err(io("remove", partial))?;
        return Ok(playable);
    }
    if playable.frames == 0 {
        // Bytes, but nothing that plays: kept aside for whoever can do better, never removed.
        let kept = super::with_suffix(partial, ".damaged");
        fs::rename(partial, &kept).map_err(io("rename to", &kept))?;
        wav::sync_parent_dir(&kept)?;
        return Err(WavError::File {
            path: kept.clone(),
            action: "recover",
            source: std::io::Error::other(format!(
                "no playable {} audio in it ({} damaged bytes); kept as {}",
                format.name(),
                playable.damaged_bytes,
                kept.display()
            )),
        });
    }
    if playable.keep < bytes.len() {
        let f = File::options().write(true).open(partial).map_err(io("open", partial))?;
        f.set_len(playable.keep as u64).map_err(io("truncate", partial))?;
        f.sync_all().map_err(io("fsync", partial))?;
    }
    fs::rename(partial, dest).map_err(io("rename into", dest))?;
    wav::sync_parent_dir(dest)?;
    Ok(playable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{Kek, Keyring, SigningKey};

    const RID: &str = "01M8YXH0ZYKXEV8NV6Y8M3A525";

    fn sealing() -> Arc<Sealing> {
        let ring = Keyring::from_keys(vec![Kek::generate("k1").unwrap()], Some(SigningKey::generate("s1").unwrap()));
        Sealing::new(ring, 1024).unwrap()
    }

    /// A stream file of `secs` seconds at 16 kHz stereo, left unfinished (flushed, never
    /// finalised), sealed or plain; returns its path.
    fn unfinished(dir: &Path, format: Format, sealed: Option<&Arc<Sealing>>, secs: usize) -> PathBuf {
        let ext = if sealed.is_some() { format!("{}.cvs", format.ext()) } else { format.ext().to_string() };
        let path = dir.join(format!("{RID}.{ext}.partial"));
        let params = sealed.map(|s| {
            (
                s,
                SealParams {
                    content: Content::Audio,
                    container: container(format),
                    chunk_size: STREAM_CHUNK,
                    recording_id: ulid::Ulid::from_string(RID).unwrap(),
                    created_ms: 0,
                    index: String::new(),
                },
            )
        });
        let mut f = StreamFile::create(&path, format, WavSpec::pcm(16000, 2), params).unwrap();
        let pcm: Vec<i16> = (0..16000 * secs * 2).map(|i| ((i % 89) * 250) as i16).collect();
        f.write_samples(&pcm).unwrap();
        f.flush().unwrap();
        std::mem::forget(f); // a crash: never finalised
        path
    }

    // Found when tried to break: one bad byte in a sealed Opus/MP3 file lost the rest of the
    // recording and the file itself.
    #[test]
    fn a_damaged_sealed_stream_keeps_its_prefix_and_the_file() {
        for format in [Format::Opus, Format::Mp3] {
            let dir = tempfile::tempdir().unwrap();
            let s = sealing();
            let partial = unfinished(dir.path(), format, Some(&s), 6);
            let mut bytes = fs::read(&partial).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 1;
            fs::write(&partial, &bytes).unwrap();
            let dest = dir.path().join(format!("{RID}.{}.cvs", format.ext()));
            let r = reseal_stream_unfinished(&partial, &dest, &s).unwrap();
            let kept = r.kept_damaged.clone().expect("kept as damaged");
            assert!(kept.exists() && !partial.exists(), "{format}");
            assert!(!r.empty && r.playable.frames > 16000, "{format}: {:?}", r.playable);
            assert!(crate::output::sealed::verified_audio(&dest, &s.keys).is_ok(), "{format}");
            // Run again (a crash after the re-seal): the finished file stands, the damaged one stays.
            let again = reseal_stream_unfinished(&kept, &dest, &s).unwrap();
            assert!(again.was_complete && kept.exists(), "{format}");
        }
    }

    // Found when tried to break: a crash between the re-sealed file's rename and the removal of
    // the unfinished one failed the recording at every later start.
    #[test]
    fn a_recovery_cut_short_after_its_rename_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealing();
        let partial = unfinished(dir.path(), Format::Opus, Some(&s), 3);
        let copy = fs::read(&partial).unwrap();
        let dest = dir.path().join(format!("{RID}.opus.cvs"));
        let first = reseal_stream_unfinished(&partial, &dest, &s).unwrap();
        fs::write(&partial, copy).unwrap();
        let r = reseal_stream_unfinished(&partial, &dest, &s).unwrap();
        assert!(r.was_complete && !partial.exists());
        assert_eq!(r.playable.frames, first.playable.frames);
    }

    // Found when tried to break: one bad byte in a plain Opus/MP3 file truncated everything
    // after it; and a page with a bad checksum was counted as good.
    #[test]
    fn a_damaged_plain_stream_is_walked_past_its_damage_and_nothing_before_the_torn_end_is_cut() {
        for format in [Format::Opus, Format::Mp3] {
            let dir = tempfile::tempdir().unwrap();
            let partial = unfinished(dir.path(), format, None, 6);
            let clean = playable_frames(container(format), &fs::read(&partial).unwrap());
            let mut bytes = fs::read(&partial).unwrap();
            // A header byte of a page or frame about a third in.
            let at = match format {
                Format::Opus => {
                    bytes.windows(4).enumerate().filter(|(_, w)| *w == b"OggS").map(|(i, _)| i).nth(3).unwrap() + 26
                }
                _ => {
                    // The 30th frame's header.
                    let mut at = 0;
                    for _ in 0..30 {
                        at += mp3_frame(&bytes[at..]).unwrap().0;
                    }
                    at + 1
                }
            };
            bytes[at] ^= 0xff;
            let len = bytes.len();
            fs::write(&partial, &bytes).unwrap();
            let dest = dir.path().join(format!("{RID}.{}", format.ext()));
            let p = recover_plain_stream(&partial, &dest, format).unwrap();
            assert!(p.damaged_bytes > 0, "{format}: {p:?}");
            match format {
                // A broken Ogg lacing stops players there (found on re-check): only what plays
                // before it counts; the bytes after it stay.
                Format::Opus => {
                    assert!(p.frames > 0 && p.frames < clean.frames / 2, "{} of {}", p.frames, clean.frames)
                }
                // MP3 decoders resync at the next frame and play on.
                _ => assert!(p.frames >= clean.frames * 2 / 3, "{format}: {} of {}", p.frames, clean.frames),
            }
            assert!(fs::metadata(&dest).unwrap().len() as usize >= len - 2048, "{format}: only a torn tail is cut");
        }
        // A flipped byte inside a page's audio: the page's checksum fails.
        let dir = tempfile::tempdir().unwrap();
        let partial = unfinished(dir.path(), Format::Opus, None, 3);
        let mut bytes = fs::read(&partial).unwrap();
        let clean = playable_frames(Container::Ogg, &bytes);
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        let damaged = playable_frames(Container::Ogg, &bytes);
        assert!(damaged.damaged_bytes > 0 && damaged.keep == clean.keep, "{damaged:?} vs {clean:?}");
    }

    // Found on re-check: damage in the OpusHead page made a wrong length (the rate unknown), a
    // file of garbage was removed as if empty, and a sealed file damaged in its first chunk was
    // reported "removed" (it was kept) and again at every start.
    #[test]
    fn what_cannot_play_is_kept_and_never_taken_for_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let partial = unfinished(dir.path(), Format::Opus, None, 3);
        let mut bytes = fs::read(&partial).unwrap();
        bytes[40] ^= 1; // inside the OpusHead page
        fs::write(&partial, &bytes).unwrap();
        let dest = dir.path().join(format!("{RID}.opus"));
        let e = recover_plain_stream(&partial, &dest, Format::Opus).unwrap_err().to_string();
        assert!(e.contains("no playable opus audio"), "{e}");
        let kept = super::super::with_suffix(&partial, ".damaged");
        assert_eq!(fs::read(&kept).unwrap(), bytes, "kept byte for byte");
        let garbage = dir.path().join(format!("{RID}-1.mp3.partial"));
        let noise: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        fs::write(&garbage, &noise).unwrap();
        let e = recover_plain_stream(&garbage, &dir.path().join(format!("{RID}-1.mp3")), Format::Mp3).unwrap_err();
        assert!(e.to_string().contains("damaged bytes"), "{e}");
        assert!(super::super::with_suffix(&garbage, ".damaged").exists());
        // Sealed, damaged in its first chunk: kept once under a name recovery leaves alone.
        let s = sealing();
        let sealed = unfinished(dir.path(), Format::Opus, Some(&s), 3);
        let mut b = fs::read(&sealed).unwrap();
        b[700] ^= 1;
        fs::write(&sealed, &b).unwrap();
        let dest = dir.path().join(format!("{RID}.opus.cvs"));
        let r = reseal_stream_unfinished(&sealed, &dest, &s).unwrap();
        assert!(r.empty && !dest.exists());
        let kept = r.kept_damaged.unwrap();
        assert!(kept.ends_with(format!("{RID}.opus.cvs.damaged")) && kept.exists(), "{kept:?}");
        assert!(!super::super::with_suffix(&sealed, ".damaged").exists(), "not taken up again at the next start");
    }

    // Found when tried to break: a recovery that found only the heads was reported as a
    // recording of 0 ms whose file no tool opens.
    #[test]
    fn a_stream_with_no_audio_is_no_recording() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealing();
        let partial = unfinished(dir.path(), Format::Opus, Some(&s), 0);
        let dest = dir.path().join(format!("{RID}.opus.cvs"));
        let r = reseal_stream_unfinished(&partial, &dest, &s).unwrap();
        assert!(r.empty && !dest.exists() && !partial.exists());
        let plain = unfinished(dir.path(), Format::Opus, None, 0);
        let dest = dir.path().join(format!("{RID}.opus"));
        assert_eq!(recover_plain_stream(&plain, &dest, Format::Opus).unwrap().frames, 0);
        assert!(!dest.exists() && !plain.exists());
    }

    #[test]
    fn a_cut_stream_keeps_its_whole_pages_and_frames() {
        for format in [Format::Opus, Format::Mp3] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("r.{}", format.ext()));
            let spec = WavSpec::pcm(16000, 2);
            let mut f = StreamFile::create(&path, format, spec, None).unwrap();
            let pcm: Vec<i16> = (0..16000 * 3 * 2).map(|i| ((i % 97) * 300) as i16).collect();
            f.write_samples(&pcm).unwrap();
            let (info, _) = f.finalize(48000).unwrap();
            assert_eq!(info.frames, 48000);
            let bytes = fs::read(&path).unwrap();
            let Playable { frames, keep, .. } = playable_frames(container(format), &bytes);
            assert_eq!(keep, bytes.len(), "{format}: the whole file walks");
            match format {
                Format::Opus => assert_eq!(frames, 48000, "the granule gives the exact length"),
                _ => assert!((48000..48000 + 1105 + 2 * 576).contains(&frames), "{frames}"),
            }
            // Cut in the middle: whole pages/frames only, fewer samples, and it still walks.
            let cut = &bytes[..bytes.len() * 2 / 3 + 5];
            let Playable { frames: frames2, keep: keep2, .. } = playable_frames(container(format), cut);
            assert!(keep2 <= cut.len() && keep2 > bytes.len() / 4, "{format}: {keep2}");
            assert!(frames2 < frames && frames2 > 15000, "{format}: {frames2}");
            let partial = dir.path().join("cut.partial");
            fs::write(&partial, cut).unwrap();
            let dest = dir.path().join(format!("cut.{}", format.ext()));
            assert_eq!(recover_plain_stream(&partial, &dest, format).unwrap().frames, frames2);
            assert_eq!(fs::metadata(&dest).unwrap().len(), keep2 as u64);
        }
    }
}
