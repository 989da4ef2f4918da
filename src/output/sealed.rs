//! Recordings sealed at rest: the WAV container inside a sealed file, sealed metadata, and
//! the recovery of what a crash left.
//!
//! The WAV header is the sealed file's container head: a provisional one (sizes zero) is
//! sealed when the file is created, the final one when it is finalised, each under its own nonce.
//! Neither is ever rewritten, so completing the header at the end reuses no nonce.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::encode::Format;
use super::wav::{self, HEADER_LEN, WavError, WavInfo, WavSpec, WavWriter};
use crate::seal::format::{self, FLAG_RECOVERED};
use crate::seal::{Container, Content, Keyring, SealError, SealParams, SealRecord, SealWriter, SealedReader};

/// Extension of a sealed audio file (`<recording id>.wav.cvs`).
pub const AUDIO_EXT: &str = "wav.cvs";
/// Extension of a sealed metadata file (`<recording id>.meta.cvs`).
pub const META_EXT: &str = "meta.cvs";

/// Everything a writer needs to seal: the keys and the chunk size.
#[derive(Debug)]
pub struct Sealing {
    pub keys: Keyring,
    pub chunk_size: u32,
}

impl Sealing {
    /// Checks that new files can be sealed and signed.
    pub fn new(keys: Keyring, chunk_size: u32) -> Result<Arc<Sealing>, SealError> {
        keys.active_kek()?;
        keys.signing()?;
        Ok(Arc::new(Sealing { keys, chunk_size }))
    }
}

/// The clear index of a recording's files: ids and times only.
pub fn clear_index(recording_id: &str, started_at: &str) -> String {
    serde_json::json!({"recording_id": recording_id, "started_at": started_at}).to_string()
}

/// The clear index of one audio file of a recording: which output it is (`None` unless the
/// layout is separate, where it is the leg's index), so that files swapped between legs, or a
/// leg's file passed off as the whole recording, are caught.
pub fn audio_index(recording_id: &str, started_at: &str, output: Option<usize>) -> String {
    let mut v = serde_json::json!({"recording_id": recording_id, "started_at": started_at});
    if let Some(n) = output {
        v["output"] = serde_json::json!(n);
    }
    v.to_string()
}

/// Whether a sealed file sits under a name that is not its own: the recording id a name starts
/// with, and the output index after it (`<id>-<n>.…`), against the header. `None` when they
/// agree (or the name says nothing).
pub fn name_mismatch(path: &Path, header: &crate::seal::Header) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let named = ulid::Ulid::from_string(name.get(..26)?).ok()?;
    if named != header.recording_id {
        return Some(format!("it is recording {} but named {named}", header.recording_id));
    }
    let rest = &name[26..];
    let named_meta = rest.ends_with(&format!(".{META_EXT}"));
    let named_audio = rest.contains(".wav.cvs");
    match header.content {
        Content::Audio if named_meta => return Some("it holds audio but is named as metadata".into()),
        Content::Metadata if named_audio => return Some("it holds metadata but is named as audio".into()),
        _ => {}
    }
    let index: Value = serde_json::from_str(&header.index).unwrap_or(Value::Null);
    let output = index["output"].as_u64();
    let named_output =
        rest.strip_prefix('-').and_then(|r| r.split(['-', '.']).next()).and_then(|n| n.parse::<u64>().ok());
    match (named_output, output) {
        (Some(n), Some(o)) if n != o => Some(format!("it is leg {o}'s file of its recording but named as leg {n}'s")),
        (None, Some(o)) if header.content == Content::Audio => {
            Some(format!("it is leg {o}'s file of its recording but named as the recording's only file"))
        }
        (Some(n), None) if header.content == Content::Audio => {
            Some(format!("it is its recording's only file but named as leg {n}'s"))
        }
        _ => None,
    }
}

fn seal_err(path: &Path, source: SealError) -> WavError {
    WavError::Seal { path: path.to_path_buf(), source }
}

/// Turns the writer's path-less I/O errors into ones naming the file.
fn named(path: &Path, e: SealError) -> WavError {
    match e {
        SealError::Io { action, source, .. } => WavError::File { path: path.to_path_buf(), action, source },
        other => seal_err(path, other),
    }
}

fn parse_ulid(path: &Path, id: &str) -> Result<ulid::Ulid, WavError> {
    ulid::Ulid::from_string(id)
        .map_err(|_| seal_err(path, SealError::Invalid(format!("recording id {id:?} is not a ULID"))))
}

/// A WAV recording being written sealed.
pub struct SealedWavWriter {
    w: SealWriter<File>,
    spec: WavSpec,
    /// PCM bytes written (whole frames once a write completes).
    data_bytes: u64,
    buf: Vec<u8>,
    path: PathBuf,
    sealing: Arc<Sealing>,
    flags: u16,
}

impl std::fmt::Debug for SealedWavWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedWavWriter").field("path", &self.path).field("data_bytes", &self.data_bytes).finish()
    }
}

impl SealedWavWriter {
    /// Creates `path` (which must not exist) with its header and provisional WAV header.
    pub fn create(
        path: &Path,
        spec: WavSpec,
        sealing: &Arc<Sealing>,
        recording_id: &str,
        index: String,
    ) -> Result<Self, WavError> {
        let params = SealParams {
            content: Content::Audio,
            container: Container::Wav,
            chunk_size: sealing.chunk_size,
            recording_id: parse_ulid(path, recording_id)?,
            created_ms: crate::seal::now_ms(),
            index,
        };
        Self::create_with(path, spec, sealing, &params, 0)
    }

    /// [`SealedWavWriter::create`] with the sealing parameters given, and seal-record `flags`.
    fn create_with(
        path: &Path,
        spec: WavSpec,
        sealing: &Arc<Sealing>,
        params: &SealParams,
        flags: u16,
    ) -> Result<Self, WavError> {
        spec.validate()?;
        let file = File::options().write(true).create_new(true).open(path).map_err(|source| WavError::File {
            path: path.to_path_buf(),
            action: "create",
            source,
        })?;
        let kek = sealing.keys.active_kek().map_err(|e| seal_err(path, e))?;
        let w =
            SealWriter::create(file, params, kek, &wav::build_header(&spec, 0, false)).map_err(|e| named(path, e))?;
        Ok(SealedWavWriter {
            w,
            spec,
            data_bytes: 0,
            buf: Vec::new(),
            path: path.to_path_buf(),
            sealing: sealing.clone(),
            flags,
        })
    }

    pub fn write_samples(&mut self, interleaved: &[i16]) -> Result<(), WavError> {
        let channels = usize::from(self.spec.channels);
        if !interleaved.len().is_multiple_of(channels) {
            return Err(WavError::PartialFrame { samples: interleaved.len(), channels: self.spec.channels });
        }
        self.buf.clear();
        self.spec.encode_into(interleaved, &mut self.buf);
        self.w.write(&self.buf).map_err(|e| named(&self.path, e))?;
        self.data_bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Appends little-endian PCM bytes as they are (re-sealing a recovered prefix).
    fn write_pcm(&mut self, bytes: &[u8]) -> Result<(), SealError> {
        self.w.write(bytes)?;
        self.data_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Whole chunks are written as they fill; the partial one cannot be (see the writer).
    pub fn flush(&mut self) -> Result<(), WavError> {
        self.w.flush().map_err(|e| named(&self.path, e))
    }

    pub fn frames_written(&self) -> u64 {
        self.data_bytes / u64::from(self.spec.block_align())
    }

    /// Seals the rest and the final WAV header, signs, fsyncs. A frame count other than
    /// `expected_frames` is reported after the file is complete, as with plain WAV.
    pub fn finalize(self, expected_frames: u64) -> Result<(WavInfo, SealRecord), WavError> {
        let frames = self.frames_written();
        let data_bytes = frames * u64::from(self.spec.block_align());
        let rf64 = data_bytes > wav::DEFAULT_RF64_THRESHOLD;
        let head = wav::build_header(&self.spec, data_bytes, rf64);
        let signer = self.sealing.keys.signing().map_err(|e| seal_err(&self.path, e))?;
        let (file, record) =
            self.w.finish(&head, self.flags, signer, crate::seal::now_ms()).map_err(|e| named(&self.path, e))?;
        file.sync_all().map_err(|source| WavError::File { path: self.path.clone(), action: "fsync", source })?;
        let info =
            WavInfo { frames, data_bytes, rf64, sample_rate: self.spec.sample_rate, channels: self.spec.channels };
        if frames != expected_frames {
            return Err(WavError::LengthMismatch { expected_frames, written_frames: frames });
        }
        Ok((info, record))
    }
}

/// A recording's audio file, plain or sealed, in its format.
#[derive(Debug)]
pub enum AudioFile {
    Plain(WavWriter<BufWriter<File>>),
    Sealed(Box<SealedWavWriter>),
    /// Ogg/Opus or MP3, plain or sealed.
    Stream(Box<super::stream::StreamFile>),
}

impl AudioFile {
    /// Creates the file at `path` in `format` (sealed when `sealing` is given). `spec` gives the
    /// rate and channels; a G.711 format sets its sample encoding.
    pub fn create(
        path: &Path,
        format: Format,
        spec: WavSpec,
        sealing: Option<&Arc<Sealing>>,
        recording_id: &str,
        index: impl FnOnce() -> String,
    ) -> Result<AudioFile, WavError> {
        format.check(spec.sample_rate, spec.channels).map_err(|e| WavError::InvalidSpec { reason: e.to_string() })?;
        let spec = WavSpec {
            encoding: match format {
                Format::WavUlaw => wav::SampleEncoding::Ulaw,
                Format::WavAlaw => wav::SampleEncoding::Alaw,
                _ => wav::SampleEncoding::Pcm16,
            },
            ..spec
        };
        if format.is_stream() {
            let params = match sealing {
                None => None,
                Some(s) => Some((
                    s,
                    SealParams {
                        content: Content::Audio,
                        container: super::stream::container(format),
                        // Compressed audio fills a chunk many times slower than PCM: smaller
                        // chunks keep what a crash can lose to a fraction of a second.
                        chunk_size: s.chunk_size.min(super::stream::STREAM_CHUNK),
                        recording_id: parse_ulid(path, recording_id)?,
                        created_ms: crate::seal::now_ms(),
                        index: index(),
                    },
                )),
            };
            return Ok(AudioFile::Stream(Box::new(super::stream::StreamFile::create(path, format, spec, params)?)));
        }
        Ok(match sealing {
            None => AudioFile::Plain(wav::create_file(path, spec)?),
            Some(s) => AudioFile::Sealed(Box::new(SealedWavWriter::create(path, spec, s, recording_id, index())?)),
        })
    }

    pub fn write_samples(&mut self, interleaved: &[i16]) -> Result<(), WavError> {
        match self {
            AudioFile::Plain(w) => w.write_samples(interleaved),
            AudioFile::Sealed(w) => w.write_samples(interleaved),
            AudioFile::Stream(w) => w.write_samples(interleaved),
        }
    }

    pub fn flush(&mut self) -> Result<(), WavError> {
        match self {
            AudioFile::Plain(w) => w.flush(),
            AudioFile::Sealed(w) => w.flush(),
            AudioFile::Stream(w) => w.flush(),
        }
    }

    /// Finalises; for a sealed file also returns its seal record (digests, signer).
    pub fn finalize(self, expected_frames: u64) -> Result<(WavInfo, Option<SealRecord>), WavError> {
        match self {
            AudioFile::Plain(w) => w.finalize(expected_frames).map(|i| (i, None)),
            AudioFile::Sealed(w) => w.finalize(expected_frames).map(|(i, r)| (i, Some(r))),
            AudioFile::Stream(w) => w.finalize(expected_frames),
        }
    }
}

/// The digests a seal record signs, as JSON for summaries.
pub fn seal_summary(r: &SealRecord, key_id: &str) -> Value {
    serde_json::json!({
        "kek_id": key_id,
        "plaintext_bytes": r.plaintext_len,
        "audio_sha256": format::hex(&r.body_sha256),
        "sealed_sha256": format::hex(&r.sealed_sha256),
        "signer": format::hex(&r.signer),
    })
}

/// Writes a JSON document sealed, atomically (temporary file, fsync, rename), under a fresh data
/// key each time: rewriting metadata never reuses a nonce.
pub fn write_sealed_json(
    path: &Path,
    value: &Value,
    sealing: &Sealing,
    recording_id: &str,
    index: String,
) -> io::Result<()> {
    let to_io = |e: SealError| io::Error::other(e.to_string());
    let rid = ulid::Ulid::from_string(recording_id).map_err(|_| io::Error::other("recording id is not a ULID"))?;
    let tmp = tmp_path(path);
    let text = serde_json::to_vec_pretty(value).unwrap_or_default();
    let written = (|| {
        let file = File::options().write(true).create(true).truncate(true).open(&tmp)?;
        let params = SealParams {
            content: Content::Metadata,
            container: Container::Json,
            chunk_size: sealing.chunk_size,
            recording_id: rid,
            created_ms: crate::seal::now_ms(),
            index,
        };
        let mut w = SealWriter::create(file, &params, sealing.keys.active_kek().map_err(to_io)?, &[]).map_err(to_io)?;
        w.write(&text).map_err(to_io)?;
        let (file, _) =
            w.finish(&[], 0, sealing.keys.signing().map_err(to_io)?, crate::seal::now_ms()).map_err(to_io)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The temporary name [`write_sealed_json`] writes first.
pub fn tmp_path(path: &Path) -> PathBuf {
    super::with_suffix(path, ".tmp")
}

/// Reads and fully verifies a sealed JSON document.
pub fn read_sealed_json(path: &Path, keys: &Keyring) -> Result<Value, SealError> {
    let file = File::open(path).map_err(|e| SealError::io("open", path, e))?;
    let mut r = SealedReader::open(file, keys)?;
    let mut out = Vec::new();
    r.verify(keys.trusted(), Some(&mut out))?;
    serde_json::from_slice(&out).map_err(|e| SealError::Invalid(format!("{}: not JSON inside: {e}", path.display())))
}

/// Reads and fully verifies a sealed JSON document held in memory (a metadata object).
pub fn read_sealed_json_bytes(bytes: Vec<u8>, keys: &Keyring) -> Result<Value, SealError> {
    let mut r = SealedReader::open(std::io::Cursor::new(bytes), keys)?;
    let mut out = Vec::new();
    r.verify(keys.trusted(), Some(&mut out))?;
    serde_json::from_slice(&out).map_err(|e| SealError::Invalid(format!("not JSON inside: {e}")))
}

/// The WAV spec of one of our WAV headers (provisional or final).
pub fn spec_of(head: &[u8]) -> Option<WavSpec> {
    if head.len() != HEADER_LEN as usize || &head[8..12] != b"WAVE" {
        return None;
    }
    let channels = u16::from_le_bytes([head[58], head[59]]);
    let sample_rate = u32::from_le_bytes(head[60..64].try_into().ok()?);
    let encoding = match (u16::from_le_bytes([head[56], head[57]]), u16::from_le_bytes([head[70], head[71]])) {
        (1, 16) => wav::SampleEncoding::Pcm16,
        (7, 8) => wav::SampleEncoding::Ulaw,
        (6, 8) => wav::SampleEncoding::Alaw,
        _ => return None,
    };
    let spec = WavSpec { sample_rate, channels, encoding };
    spec.validate().ok().map(|()| spec)
}

/// What was recovered from an unfinished (or damaged) sealed file.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Plaintext bytes written (head included).
    pub bytes: u64,
    /// Audio frames (WAV), 0 for other containers.
    pub frames: u64,
    pub spec: Option<WavSpec>,
    /// Why the rest is missing.
    pub stopped_by: Option<String>,
}

/// Writes the authenticated prefix of a sealed file as a usable plaintext file: for WAV, the
/// samples that authenticate (whole frames) under a header that says so.
pub fn write_recovered(reader: &mut SealedReader<File>, out: &mut dyn Write) -> Result<Recovered, SealError> {
    let rec = reader.recover();
    match reader.header().container {
        Container::Wav => {
            let Some(spec) = rec.head.as_deref().and_then(spec_of) else {
                return Err(SealError::Truncated(
                    rec.stopped_by.unwrap_or_else(|| "no readable WAV header in the file".into()),
                ));
            };
            let align = u64::from(spec.block_align());
            let data = rec.body_len - rec.body_len % align;
            let head = wav::build_header(&spec, data, data > wav::DEFAULT_RF64_THRESHOLD);
            out.write_all(&head).map_err(|e| SealError::Io { action: "write", path: Default::default(), source: e })?;
            reader.write_body_prefix(&rec, data, out)?;
            Ok(Recovered {
                bytes: HEADER_LEN + data,
                frames: data / align,
                spec: Some(spec),
                stopped_by: rec.stopped_by,
            })
        }
        Container::Json => {
            reader.write_body_prefix(&rec, rec.body_len, out)?;
            Ok(Recovered { bytes: rec.body_len, frames: 0, spec: None, stopped_by: rec.stopped_by })
        }
        container @ (Container::Ogg | Container::Mp3) => {
            // Whole pages or frames only: a torn last one would make some players stop there.
            let mut whole = rec.head.clone().unwrap_or_default();
            reader.write_body_prefix(&rec, rec.body_len, &mut whole)?;
            let super::stream::Playable { frames, keep, .. } = super::stream::playable_frames(container, &whole);
            out.write_all(&whole[..keep]).map_err(|e| SealError::Io {
                action: "write",
                path: Default::default(),
                source: e,
            })?;
            Ok(Recovered { bytes: keep as u64, frames, spec: None, stopped_by: rec.stopped_by })
        }
    }
}

/// Streams a recovered prefix into a [`SealedWavWriter`].
struct PcmSink<'a>(&'a mut SealedWavWriter);

impl Write for PcmSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_pcm(buf).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`reseal_unfinished`] did.
#[derive(Debug, Clone)]
pub struct Resealed {
    pub frames: u64,
    pub spec: WavSpec,
    pub record: SealRecord,
    pub stopped_by: Option<String>,
    /// Bytes after the recovered prefix did not authenticate: the unfinished file was kept
    /// under this name rather than removed.
    pub kept_damaged: Option<PathBuf>,
    /// The file had been finalised (the crash came before its rename): renamed, not re-sealed.
    pub was_complete: bool,
}

/// A finished sealed WAV, verified in full: its header, frames, format and seal record.
pub fn verified_wav(path: &Path, keys: &Keyring) -> Result<(crate::seal::Header, u64, WavSpec, SealRecord), SealError> {
    let mut r = SealedReader::open(File::open(path).map_err(|e| SealError::io("open", path, e))?, keys)?;
    if r.header().container != Container::Wav {
        return Err(SealError::Invalid(format!("{}: not a sealed WAV recording", path.display())));
    }
    let v = r.verify(keys.trusted(), None)?;
    let spec = spec_of(&r.final_head()?)
        .ok_or_else(|| SealError::Invalid(format!("{}: its WAV header is not callvault's", path.display())))?;
    let data = v.record.plaintext_len.saturating_sub(HEADER_LEN);
    Ok((r.header().clone(), data / u64::from(spec.block_align()), spec, v.record))
}

/// A finished sealed audio file of any format, verified in full: its header, frames, the rate
/// those frames are at where the file says (WAV, Ogg/Opus), and its seal record.
pub fn verified_audio(
    path: &Path,
    keys: &Keyring,
) -> Result<(crate::seal::Header, u64, Option<u32>, SealRecord), SealError> {
    let mut r = SealedReader::open(File::open(path).map_err(|e| SealError::io("open", path, e))?, keys)?;
    match r.header().container {
        Container::Wav => {
            drop(r);
            verified_wav(path, keys).map(|(h, frames, spec, record)| (h, frames, Some(spec.sample_rate), record))
        }
        c @ (Container::Ogg | Container::Mp3) => {
            let mut plain = Vec::new();
            let v = r.verify(keys.trusted(), Some(&mut plain))?;
            let p = super::stream::playable_frames(c, &plain);
            Ok((r.header().clone(), p.frames, p.rate, v.record))
        }
        Container::Json => Err(SealError::Invalid(format!("{}: not a sealed audio recording", path.display()))),
    }
}

/// [`verified_wav`] of recording `rid`, or `None`.
fn complete_wav(path: &Path, sealing: &Sealing, rid: ulid::Ulid) -> Option<(u64, WavSpec, SealRecord)> {
    let (header, frames, spec, record) = verified_wav(path, &sealing.keys).ok()?;
    (header.recording_id == rid).then_some((frames, spec, record))
}

/// Recovers a sealed WAV left unfinished by a crash: its authenticated prefix is re-sealed under
/// a new data key into `dest` (which must not exist), finalised and signed with the recovered
/// flag; then `partial` is removed. Nothing is appended to the crashed file: a chunk it was
/// writing when the process died may have used the very nonce a new last chunk would need.
pub fn reseal_unfinished(partial: &Path, dest: &Path, sealing: &Arc<Sealing>) -> Result<Resealed, WavError> {
    let open = |p: &Path| -> Result<SealedReader<File>, WavError> {
        let file = File::open(p).map_err(|source| WavError::File { path: p.into(), action: "open", source })?;
        SealedReader::open(file, &sealing.keys).map_err(|e| seal_err(p, e))
    };
    let mut reader = open(partial)?;
    if reader.header().container != Container::Wav {
        return Err(seal_err(partial, SealError::Invalid("not a sealed WAV recording".into())));
    }
    let rid = reader.header().recording_id;
    if let Some(name) = partial.file_name().and_then(|n| n.to_str())
        && name.get(..26).and_then(|p| ulid::Ulid::from_string(p).ok()).is_some_and(|named| named != rid)
    {
        return Err(seal_err(
            partial,
            SealError::Invalid(format!("its header says recording {rid}, its name another: not touching it")),
        ));
    }
    // Already kept as damaged by an earlier recovery: read from, never removed.
    let input_is_damaged = partial.to_string_lossy().ends_with(".damaged");
    let keep_damaged = |from: &Path| -> Result<PathBuf, WavError> {
        let kept = super::with_suffix(from, ".damaged");
        fs::rename(from, &kept).map_err(|source| WavError::File { path: kept.clone(), action: "rename to", source })?;
        wav::sync_parent_dir(&kept)?;
        Ok(kept)
    };
    if dest.exists() {
        // A crash during an earlier recovery, after the re-sealed file was in place: finish it,
        // keeping the unfinished file if it holds bytes that do not authenticate.
        if let Some((frames, spec, record)) = complete_wav(dest, sealing, rid) {
            let rec = reader.recover();
            let kept_damaged = if input_is_damaged {
                Some(partial.to_path_buf())
            } else if rec.damaged {
                Some(keep_damaged(partial)?)
            } else {
                fs::remove_file(partial).map_err(|source| WavError::File {
                    path: partial.into(),
                    action: "remove",
                    source,
                })?;
                None
            };
            wav::sync_parent_dir(dest)?;
            return Ok(Resealed { frames, spec, record, stopped_by: rec.stopped_by, kept_damaged, was_complete: true });
        }
        return Err(WavError::WouldReplace { path: dest.to_path_buf() });
    }
    if !input_is_damaged && let Some((frames, spec, record)) = complete_wav(partial, sealing, rid) {
        // Finalised and signed, but the crash came before its rename: it only needs the name.
        fs::hard_link(partial, dest).and_then(|()| fs::remove_file(partial)).map_err(|source| WavError::File {
            path: dest.into(),
            action: "rename into",
            source,
        })?;
        wav::sync_parent_dir(dest)?;
        return Ok(Resealed { frames, spec, record, stopped_by: None, kept_damaged: None, was_complete: true });
    }
    let mut rec = reader.recover();
    // Damaged: the file is put aside under its `.damaged` name *before* anything else, so that
    // a crash from here on finds it there (and recovers from it again), never deletes it.
    let mut kept_damaged = input_is_damaged.then(|| partial.to_path_buf());
    if rec.damaged && !input_is_damaged {
        drop(reader);
        let kept = keep_damaged(partial)?;
        reader = open(&kept)?;
        rec = reader.recover();
        kept_damaged = Some(kept);
    }
    let source_path = kept_damaged.clone().unwrap_or_else(|| partial.to_path_buf());
    let spec = rec
        .head
        .as_deref()
        .and_then(spec_of)
        .ok_or_else(|| seal_err(partial, SealError::Truncated("no readable WAV header".into())))?;
    let header = reader.header().clone();
    let align = u64::from(spec.block_align());
    let data = rec.body_len - rec.body_len % align;
    let tmp = tmp_path(dest);
    let _ = fs::remove_file(&tmp);
    let done = (|| {
        let params = SealParams {
            content: Content::Audio,
            container: Container::Wav,
            chunk_size: header.chunk_size,
            recording_id: header.recording_id,
            created_ms: crate::seal::now_ms(),
            index: header.index.clone(),
        };
        let mut w = SealedWavWriter::create_with(&tmp, spec, sealing, &params, FLAG_RECOVERED)?;
        reader.write_body_prefix(&rec, data, &mut PcmSink(&mut w)).map_err(|e| seal_err(&source_path, e))?;
        let frames = data / align;
        let (_, record) = w.finalize(frames)?;
        fs::rename(&tmp, dest).map_err(|source| WavError::File { path: dest.into(), action: "rename into", source })?;
        Ok(record)
    })();
    let record = match done {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // Bytes that did not authenticate (not merely a tail cut short) stay, under `.damaged`, for
    // an expert; a file that only ended early is replaced by its re-sealed prefix.
    if kept_damaged.is_none() {
        fs::remove_file(&source_path).map_err(|source| WavError::File {
            path: source_path.clone(),
            action: "remove",
            source,
        })?;
    }
    wav::sync_parent_dir(dest)?;
    Ok(Resealed { frames: data / align, spec, record, stopped_by: rec.stopped_by, kept_damaged, was_complete: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{Kek, SigningKey};

    fn sealing() -> Arc<Sealing> {
        let ring = Keyring::from_keys(vec![Kek::generate("k1").unwrap()], Some(SigningKey::generate("s1").unwrap()));
        Sealing::new(ring, 1024).unwrap()
    }

    const RID: &str = "01M8YXH0ZYKXEV8NV6Y8M3A525";

    #[test]
    fn a_sealed_wav_decrypts_to_the_plain_wav_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealing();
        let spec = WavSpec::pcm(8000, 2);
        let samples: Vec<i16> = (0..8000).map(|i| (i * 37 % 20000) as i16 - 10000).collect();
        let plain_path = dir.path().join("p.wav");
        let mut p = wav::create_file(&plain_path, spec).unwrap();
        let sealed_path = dir.path().join("s.wav.cvs");
        let mut w = SealedWavWriter::create(&sealed_path, spec, &s, RID, clear_index(RID, "t")).unwrap();
        for part in samples.chunks(320) {
            p.write_samples(part).unwrap();
            w.write_samples(part).unwrap();
        }
        p.finalize(4000).unwrap();
        let (info, _) = w.finalize(4000).unwrap();
        assert_eq!(info.frames, 4000);
        let mut r = SealedReader::open(File::open(&sealed_path).unwrap(), &s.keys).unwrap();
        let mut out = Vec::new();
        r.verify(s.keys.trusted(), Some(&mut out)).unwrap();
        assert_eq!(out, fs::read(&plain_path).unwrap());
    }

    #[test]
    fn an_unfinished_sealed_wav_is_resealed_with_every_whole_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealing();
        let spec = WavSpec::pcm(8000, 1);
        let partial = dir.path().join(format!("{RID}.wav.cvs.partial"));
        let mut w = SealedWavWriter::create(&partial, spec, &s, RID, clear_index(RID, "t")).unwrap();
        w.write_samples(&[7i16; 1500]).unwrap(); // 3000 bytes: two whole 1 KiB chunks on disk
        std::mem::forget(w);
        let dest = dir.path().join(format!("{RID}.wav.cvs"));
        let r = reseal_unfinished(&partial, &dest, &s).unwrap();
        assert_eq!(r.frames, 1024);
        assert!(!partial.exists());
        let mut reader = SealedReader::open(File::open(&dest).unwrap(), &s.keys).unwrap();
        let mut out = Vec::new();
        let v = reader.verify(s.keys.trusted(), Some(&mut out)).unwrap();
        assert_eq!(v.record.flags & FLAG_RECOVERED, FLAG_RECOVERED);
        let (h, samples) = {
            let mut rd = hound::WavReader::new(io::Cursor::new(out)).unwrap();
            (rd.spec(), rd.samples::<i16>().map(Result::unwrap).collect::<Vec<_>>())
        };
        assert_eq!((h.sample_rate, h.channels), (8000, 1));
        assert_eq!(samples, vec![7i16; 1024]);
    }

    fn partial_with(dir: &Path, s: &Arc<Sealing>, samples: usize) -> PathBuf {
        let partial = dir.join(format!("{RID}.wav.cvs.partial"));
        let mut w = SealedWavWriter::create(&partial, WavSpec::pcm(8000, 1), s, RID, clear_index(RID, "t")).unwrap();
        w.write_samples(&vec![7i16; samples]).unwrap();
        std::mem::forget(w);
        partial
    }

    /// A chunk that does not authenticate, with intact chunks after it: the prefix is recovered
    /// and the file is kept (as `.damaged`), never deleted.
    #[test]
    fn a_damaged_unfinished_file_is_kept_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealing();
        let partial = partial_with(dir.path(), &s, 2600); // five whole 1 KiB chunks
        let mut bytes = fs::read(&partial).unwrap();
        let header = usize::from(u16::from_be_bytes([bytes[10], bytes[11]]));
        let chunk2 = header + 80 + 24 + 2 * (1024 + 24);
        bytes[chunk2 + 100] ^= 0xff;
        fs::write(&partial, &bytes).unwrap();
        let dest = dir.path().join(format!("{RID}.wav.cvs"));
        let r = reseal_unfinished(&partial, &dest, &s).unwrap();
        assert_eq!(r.frames, 1024, "chunks 0 and 1");
        let kept = r.kept_damaged.expect("kept");
        assert_eq!(fs::read(&kept).unwrap(), bytes, "the damaged file is kept as it was");
        assert!(r.stopped_by.unwrap().contains("chunk 2"));
        // A crash after the re-sealed file's rename but before the damaged one was put aside:
        // the next recovery keeps it too, rather than taking the recovery as complete.
        fs::rename(&kept, &partial).unwrap();
        let r = reseal_unfinished(&partial, &dest, &s).unwrap();
        assert_eq!(r.kept_damaged.as_deref(), Some(kept.as_path()));
        assert_eq!(fs::read(&kept).unwrap(), bytes);
        // A crash after it was put aside but before the re-sealed file existed: recovered from
        // the `.damaged` file, which stays.
        fs::remove_file(&dest).unwrap();
        let r = reseal_unfinished(&kept, &dest, &s).unwrap();
        assert_eq!((r.frames, r.kept_damaged.as_deref()), (1024, Some(kept.as_path())));
        assert!(dest.exists() && kept.exists());
    }

    /// Finalised and signed, but killed before the rename: recovery renames it, whole.
    #[test]
    fn a_finalised_partial_is_renamed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealing();
        let partial = dir.path().join(format!("{RID}.wav.cvs.partial"));
        let mut w = SealedWavWriter::create(&partial, WavSpec::pcm(8000, 1), &s, RID, clear_index(RID, "t")).unwrap();
        w.write_samples(&[5i16; 1700]).unwrap();
        w.finalize(1700).unwrap();
        let before = fs::read(&partial).unwrap();
        let dest = dir.path().join(format!("{RID}.wav.cvs"));
        let r = reseal_unfinished(&partial, &dest, &s).unwrap();
        assert!(r.was_complete && r.frames == 1700, "{r:?}");
        assert_eq!(fs::read(&dest).unwrap(), before, "not rewritten");
        // And a crash after a re-seal's rename but before the partial's removal: finished.
        let partial = partial_with(dir.path(), &s, 2600);
        let dest2 = dir.path().join(format!("{RID}.wav.cvs"));
        fs::remove_file(&dest2).unwrap();
        let copy = dir.path().join("copy");
        fs::copy(&partial, &copy).unwrap();
        reseal_unfinished(&partial, &dest2, &s).unwrap();
        fs::rename(&copy, &partial).unwrap();
        let r = reseal_unfinished(&partial, &dest2, &s).unwrap();
        assert!(r.was_complete && !partial.exists(), "{r:?}");
        // A partial whose header names another recording is not touched.
        let other = dir.path().join("01M8YXH0ZYKXEV8NV6Y8M3A526.wav.cvs.partial");
        fs::write(&other, fs::read(&dest2).unwrap()).unwrap();
        assert!(reseal_unfinished(&other, &dir.path().join("x.wav.cvs"), &s).is_err());
        assert!(other.exists());
    }

    #[test]
    fn sealed_json_round_trips_and_leaves_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealing();
        let p = dir.path().join(format!("{RID}.{META_EXT}"));
        let v = serde_json::json!({"caller": "+4915112345678", "metadata": {"agent": "Alice"}});
        write_sealed_json(&p, &v, &s, RID, clear_index(RID, "t")).unwrap();
        write_sealed_json(&p, &v, &s, RID, clear_index(RID, "t")).unwrap();
        let bytes = fs::read(&p).unwrap();
        assert!(!bytes.windows(5).any(|w| w == b"Alice" || w == b"49151"));
        assert_eq!(read_sealed_json(&p, &s.keys).unwrap(), v);
        assert!(!tmp_path(&p).exists());
    }
}
