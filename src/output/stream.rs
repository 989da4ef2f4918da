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
                let mut w = BufWriter::with_capacity(8 * 1024, file);
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

/// How many whole sample frames (per channel, at the stream's own rate) a prefix of an Ogg/Opus
/// or MP3 file holds, and how many of its bytes are whole pages or frames.
pub fn playable_frames(container: Container, bytes: &[u8]) -> (u64, usize) {
    match container {
        Container::Ogg => ogg_playable(bytes),
        Container::Mp3 => mp3_playable(bytes),
        _ => (0, 0),
    }
}

/// Walks whole Ogg pages: the last one's granule position less the pre-skip is the length, at
/// 48 kHz; the OpusHead's input rate scales it back.
fn ogg_playable(b: &[u8]) -> (u64, usize) {
    let (mut at, mut granule, mut pre_skip, mut rate) = (0usize, 0u64, 0u64, 48_000u64);
    while b.len() >= at + 27 && &b[at..at + 4] == b"OggS" {
        let nseg = usize::from(b[at + 26]);
        if b.len() < at + 27 + nseg {
            break;
        }
        let body: usize = b[at + 27..at + 27 + nseg].iter().map(|&l| usize::from(l)).sum();
        let end = at + 27 + nseg + body;
        if b.len() < end {
            break;
        }
        let page = &b[at + 27 + nseg..end];
        if page.starts_with(b"OpusHead") && page.len() >= 16 {
            pre_skip = u64::from(u16::from_le_bytes([page[10], page[11]]));
            rate = u64::from(u32::from_le_bytes([page[12], page[13], page[14], page[15]])).max(1);
        }
        let g = u64::from_le_bytes(b[at + 6..at + 14].try_into().expect("8 bytes"));
        if g != u64::MAX {
            granule = granule.max(g);
        }
        at = end;
    }
    (granule.saturating_sub(pre_skip) * rate / 48_000, at)
}

/// Walks whole MPEG audio layer III frames from the start.
fn mp3_playable(b: &[u8]) -> (u64, usize) {
    // Kbit/s by bitrate index: MPEG-1 layer III, and MPEG-2/2.5 layer III.
    const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let (mut at, mut frames) = (0usize, 0u64);
    while b.len() >= at + 4 {
        let h = &b[at..at + 4];
        if h[0] != 0xff || h[1] & 0xe0 != 0xe0 || (h[1] >> 1) & 3 != 1 {
            break; // not a layer III frame header
        }
        let version = (h[1] >> 3) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
        let (bi, si, pad) = (usize::from(h[2] >> 4), usize::from((h[2] >> 2) & 3), usize::from((h[2] >> 1) & 1));
        if version == 1 || bi == 0 || bi == 15 || si == 3 {
            break;
        }
        let base = [44_100u32, 48_000, 32_000][si];
        let (rate, kbps, per_frame) = match version {
            3 => (base, V1[bi], 1152u32),
            2 => (base / 2, V2[bi], 576),
            _ => (base / 4, V2[bi], 576),
        };
        let len = (per_frame / 8 * kbps * 1000 / rate) as usize + pad;
        if len < 4 || b.len() < at + len {
            break;
        }
        frames += u64::from(per_frame);
        at += len;
    }
    (frames, at)
}

/// What [`reseal_stream_unfinished`] did.
#[derive(Debug, Clone)]
pub struct ResealedStream {
    pub frames: u64,
    pub record: SealRecord,
    pub stopped_by: Option<String>,
}

/// Recovers a sealed Ogg/Opus or MP3 file left unfinished by a crash: its authenticated prefix,
/// cut to whole pages or frames, is re-sealed under a new data key into `dest` (which must not
/// exist) with the recovered flag; then `partial` is removed.
pub fn reseal_stream_unfinished(
    partial: &Path,
    dest: &Path,
    sealing: &Arc<Sealing>,
) -> Result<ResealedStream, WavError> {
    let file = File::open(partial).map_err(|source| WavError::File { path: partial.into(), action: "open", source })?;
    let mut reader = SealedReader::open(file, &sealing.keys).map_err(|e| seal_err(partial, e))?;
    let header = reader.header().clone();
    if !matches!(header.container, Container::Ogg | Container::Mp3) {
        return Err(seal_err(partial, SealError::Invalid("not a sealed Ogg/Opus or MP3 recording".into())));
    }
    if dest.exists() {
        return Err(WavError::WouldReplace { path: dest.to_path_buf() });
    }
    let rec = reader.recover();
    let head = rec.head.clone().unwrap_or_default();
    let mut body = Vec::new();
    reader.write_body_prefix(&rec, rec.body_len, &mut body).map_err(|e| seal_err(partial, e))?;
    let mut whole = head.clone();
    whole.extend_from_slice(&body);
    let (frames, keep) = playable_frames(header.container, &whole);
    let body_keep = keep.saturating_sub(head.len());
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
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| WavError::File { path: p, action, source }
    };
    let out = File::options().write(true).create_new(true).open(&tmp).map_err(io("create", &tmp))?;
    let kek = sealing.keys.active_kek().map_err(|e| seal_err(&tmp, e))?;
    let mut w = SealWriter::create(out, &params, kek, &head).map_err(|e| seal_err(&tmp, e))?;
    w.write(&body[..body_keep]).map_err(|e| seal_err(&tmp, e))?;
    let signer = sealing.keys.signing().map_err(|e| seal_err(&tmp, e))?;
    let (out, record) =
        w.finish(&head, FLAG_RECOVERED, signer, crate::seal::now_ms()).map_err(|e| seal_err(&tmp, e))?;
    out.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, dest).map_err(io("rename into", dest))?;
    wav::sync_parent_dir(dest)?;
    fs::remove_file(partial).map_err(io("remove", partial))?;
    Ok(ResealedStream { frames, record, stopped_by: rec.stopped_by })
}

/// Recovers a plain Ogg/Opus or MP3 file left unfinished: cut to whole pages or frames and
/// renamed to `dest`. Returns the frames it holds.
pub fn recover_plain_stream(partial: &Path, dest: &Path, format: Format) -> Result<u64, WavError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| WavError::File { path: p, action, source }
    };
    if dest.exists() {
        return Err(WavError::WouldReplace { path: dest.to_path_buf() });
    }
    let bytes = fs::read(partial).map_err(io("read", partial))?;
    let (frames, keep) = playable_frames(container(format), &bytes);
    let f = File::options().write(true).open(partial).map_err(io("open", partial))?;
    f.set_len(keep as u64).map_err(io("truncate", partial))?;
    f.sync_all().map_err(io("fsync", partial))?;
    fs::rename(partial, dest).map_err(io("rename into", dest))?;
    wav::sync_parent_dir(dest)?;
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let (frames, keep) = playable_frames(container(format), &bytes);
            assert_eq!(keep, bytes.len(), "{format}: the whole file walks");
            match format {
                Format::Opus => assert_eq!(frames, 48000, "the granule gives the exact length"),
                _ => assert!((48000..48000 + 1105 + 2 * 576).contains(&frames), "{frames}"),
            }
            // Cut in the middle: whole pages/frames only, fewer samples, and it still walks.
            let cut = &bytes[..bytes.len() * 2 / 3 + 5];
            let (frames2, keep2) = playable_frames(container(format), cut);
            assert!(keep2 <= cut.len() && keep2 > bytes.len() / 4, "{format}: {keep2}");
            assert!(frames2 < frames && frames2 > 15000, "{format}: {frames2}");
            let partial = dir.path().join("cut.partial");
            fs::write(&partial, cut).unwrap();
            let dest = dir.path().join(format!("cut.{}", format.ext()));
            assert_eq!(recover_plain_stream(&partial, &dest, format).unwrap(), frames2);
            assert_eq!(fs::metadata(&dest).unwrap().len(), keep2 as u64);
        }
    }
}
