//! Crash-recoverable 16-bit PCM WAV writer that switches to RF64 (EBU Tech 3306) past 4 GiB.
//!
//! Why this shape:
//! * Calls can last hours and the appliance can be killed at any moment, so samples are streamed
//!   to disk as they arrive and the header sizes are only patched by an explicit [`WavWriter::finalize`].
//!   A file that was never finalised still has a complete, parseable header (written and flushed
//!   at creation), so [`repair`] can recover every flushed frame from the file length alone.
//! * RIFF sizes are 32-bit. The header reserves a 28-byte `JUNK` chunk right after `WAVE`, exactly
//!   the size of a `ds64` payload, so a file that outgrows 4 GiB is converted to RF64 by rewriting
//!   the 80-byte header in place instead of moving gigabytes of audio.
//! * A call that produced minutes of audio must never end up as a bare header without anybody
//!   noticing: `finalize` measures the bytes actually in the stream and compares them with what the
//!   timeline says it produced.
//!
//! Layout written by [`WavWriter`] (all little-endian):
//!
//! | offset | bytes | content                                                        |
//! |-------:|------:|----------------------------------------------------------------|
//! | 0      | 12    | `RIFF` riff-size `WAVE` (or `RF64` 0xFFFFFFFF `WAVE`)          |
//! | 12     | 36    | `JUNK` 28 + 28 zero bytes (or `ds64` 28 + riff/data/frames/0)  |
//! | 48     | 24    | `fmt ` 16 + tag (1 PCM, 7 µ-law, 6 A-law), channels, rate, byte rate, align, bits |
//! | 72     | 8     | `data` data-size (0 until finalised; 0xFFFFFFFF in RF64)        |
//! | 80     | ...   | interleaved i16 samples                                        |

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes before the first sample in files written by [`WavWriter`] (44 canonical + 36 `JUNK`).
pub const HEADER_LEN: u64 = 80;

/// Largest RIFF size we write as a plain 32-bit value; 0xFFFFFFFF itself is the RF64
/// "look in ds64" marker, so it must never appear as a real size.
pub const MAX_RIFF_SIZE: u64 = 0xFFFF_FFFE;

/// Default data-chunk size (bytes) above which the file is written as RF64: the most a plain
/// RIFF file with our 80-byte header can hold.
pub const DEFAULT_RF64_THRESHOLD: u64 = MAX_RIFF_SIZE - (HEADER_LEN - 8);

/// Payload size of the reserved `JUNK` chunk, equal to a `ds64` payload without a table
/// (riff size u64, data size u64, sample count u64, table length u32).
const DS64_PAYLOAD_LEN: u32 = 28;
/// Offset of the `JUNK`/`ds64` chunk header.
const DS64_CHUNK_OFFSET: u64 = 12;
/// 32-bit size value meaning "the real size is in ds64".
const SIZE_IN_DS64: u32 = u32::MAX;
/// Buffer size for [`create_file`]: large enough that 20 ms packets are coalesced into few
/// syscalls (a stereo 8 kHz call fills it every 0.25 s), small enough that a crash loses little
/// unflushed audio and that thousands of calls' buffers stay in cache until they are written:
/// 64 KiB cost 28 KiB more RSS per stream and ~15 % more CPU per packet at 1,000 calls.
const FILE_BUFFER_BYTES: usize = 8 * 1024;

/// How samples are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SampleEncoding {
    /// 16-bit signed little-endian PCM (format tag 1).
    #[default]
    Pcm16,
    /// G.711 µ-law, one byte per sample (format tag 7).
    Ulaw,
    /// G.711 A-law, one byte per sample (format tag 6).
    Alaw,
}

impl SampleEncoding {
    fn tag(self) -> u16 {
        match self {
            SampleEncoding::Pcm16 => 1,
            SampleEncoding::Ulaw => 7,
            SampleEncoding::Alaw => 6,
        }
    }

    fn bytes(self) -> u16 {
        match self {
            SampleEncoding::Pcm16 => 2,
            SampleEncoding::Ulaw | SampleEncoding::Alaw => 1,
        }
    }
}

/// Format of the recording: 16-bit PCM, or G.711 for compact archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavSpec {
    pub sample_rate: u32,
    pub channels: u16,
    pub encoding: SampleEncoding,
}

impl WavSpec {
    /// 16-bit PCM at `sample_rate` with `channels`.
    pub const fn pcm(sample_rate: u32, channels: u16) -> Self {
        WavSpec { sample_rate, channels, encoding: SampleEncoding::Pcm16 }
    }

    /// Bytes per interleaved frame.
    pub(crate) fn block_align(&self) -> u16 {
        // validate() guarantees this does not overflow.
        self.channels * self.encoding.bytes()
    }

    /// Appends `interleaved` in this spec's sample encoding.
    pub(crate) fn encode_into(&self, interleaved: &[i16], out: &mut Vec<u8>) {
        match self.encoding {
            SampleEncoding::Pcm16 => {
                // Sized once and filled in place: this is on the per-packet path.
                let start = out.len();
                out.resize(start + interleaved.len() * 2, 0);
                for (dst, s) in out[start..].chunks_exact_mut(2).zip(interleaved) {
                    dst.copy_from_slice(&s.to_le_bytes());
                }
            }
            SampleEncoding::Ulaw => out.extend(interleaved.iter().map(|&s| crate::core::g711::linear_to_ulaw(s))),
            SampleEncoding::Alaw => out.extend(interleaved.iter().map(|&s| crate::core::g711::linear_to_alaw(s))),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), WavError> {
        if self.channels == 0 || self.channels > u16::MAX / 2 {
            return Err(WavError::InvalidSpec {
                reason: format!("channel count {} must be 1..={}", self.channels, u16::MAX / 2),
            });
        }
        if self.sample_rate == 0 {
            return Err(WavError::InvalidSpec { reason: "sample rate must be non-zero".to_string() });
        }
        if self.sample_rate.checked_mul(u32::from(self.block_align())).is_none() {
            return Err(WavError::InvalidSpec {
                reason: format!(
                    "byte rate {} Hz x {} channels x 2 bytes does not fit in 32 bits",
                    self.sample_rate, self.channels
                ),
            });
        }
        Ok(())
    }
}

/// What a finalised (or inspected/recoverable) file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// Interleaved frames (samples per channel).
    pub frames: u64,
    /// Size of the audio payload in bytes (`frames * channels * 2`).
    pub data_bytes: u64,
    /// Whether the header is RF64 rather than RIFF.
    pub rf64: bool,
    pub sample_rate: u32,
    pub channels: u16,
}

/// Result of [`inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavStatus {
    /// The audio the file actually holds: the declared sizes for a finalised file, otherwise the
    /// whole frames present on disk (what [`repair`] would keep). `rf64` is the current on-disk form.
    pub info: WavInfo,
    /// The header sizes are consistent with the file length.
    pub finalised: bool,
    /// Data-chunk size as declared in the header (resolved through `ds64` for RF64).
    pub declared_data_bytes: u64,
    /// Offset of the first sample byte.
    pub data_offset: u64,
    /// File length in bytes.
    pub file_len: u64,
}

/// Result of [`repair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairReport {
    /// Frames in the file after repair.
    pub frames: u64,
    /// The file was already consistent and was left untouched.
    pub was_finalised: bool,
    /// Bytes of a trailing partial frame that were cut off.
    pub truncated_bytes: u64,
    /// The repaired file is RF64.
    pub rf64: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// I/O failure on a stream whose path is unknown (e.g. an in-memory or caller-supplied writer).
    #[error("I/O error on WAV stream: {0}")]
    Io(#[from] io::Error),
    /// Repairing `X.partial` would replace an existing `X`.
    #[error("{} already exists: not replacing it; the unfinished recording stays in {}.partial", path.display(), path.display())]
    WouldReplace {
        /// The existing file.
        path: PathBuf,
    },
    /// I/O failure on a named file.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "write_samples got {samples} samples, not a multiple of {channels} channels; \
         pass whole interleaved frames"
    )]
    PartialFrame { samples: usize, channels: u16 },
    #[error(
        "WAV holds {written_frames} frames but the timeline produced {expected_frames}; \
         the recording is incomplete (header was patched to the frames actually present)"
    )]
    LengthMismatch { expected_frames: u64, written_frames: u64 },
    #[error("{} is not a usable WAV file: {reason}", path.display())]
    NotWav { path: PathBuf, reason: String },
    /// A valid WAV that this module cannot handle (not 16-bit PCM, or cannot be repaired in place).
    #[error("{} is not supported: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error("invalid WAV spec: {reason}")]
    InvalidSpec { reason: String },
    /// An earlier write failed part-way, so the stream may end in a partial frame; writing on would
    /// shift every later sample (swapping stereo channels), so the writer refuses.
    #[error("an earlier write to this WAV failed; stop writing, then finalize or run repair on the file")]
    WriterFailed,
    /// Sealing (encryption at rest) failed.
    #[error("{}: {source}", path.display())]
    Seal {
        path: PathBuf,
        #[source]
        source: crate::seal::SealError,
    },
}

/// Hook run at the end of `finalize` to make the data durable (fsync for files).
type SyncFn<W> = fn(&mut W) -> io::Result<()>;

/// Streaming 16-bit PCM WAV writer. The header is only patched by [`WavWriter::finalize`];
/// dropping the writer without finalising deliberately leaves the "unfinished" header so the
/// file is recognisably incomplete and [`repair`] can fix it.
pub struct WavWriter<W: Write + Seek> {
    inner: W,
    spec: WavSpec,
    /// Stream position of the `RIFF` id (0 for files).
    base: u64,
    threshold: u64,
    frames: u64,
    /// Reused little-endian conversion buffer, so each call is a single write.
    buf: Vec<u8>,
    failed: bool,
    /// For error messages, when the writer targets a named file.
    path: Option<PathBuf>,
    sync: Option<SyncFn<W>>,
}

impl<W: Write + Seek> std::fmt::Debug for WavWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavWriter")
            .field("spec", &self.spec)
            .field("base", &self.base)
            .field("threshold", &self.threshold)
            .field("frames", &self.frames)
            .field("failed", &self.failed)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Seek> WavWriter<W> {
    /// Starts a WAV at the current stream position, switching to RF64 only when the audio would
    /// not fit in a plain RIFF file.
    pub fn new(inner: W, spec: WavSpec) -> Result<Self, WavError> {
        Self::with_rf64_threshold(inner, spec, DEFAULT_RF64_THRESHOLD)
    }

    /// Like [`WavWriter::new`], but data chunks larger than `threshold_bytes` are written as RF64.
    /// Values above [`DEFAULT_RF64_THRESHOLD`] are clamped to it (a RIFF file cannot hold more);
    /// smaller values exist so tests can exercise RF64 without writing 4 GiB.
    pub fn with_rf64_threshold(inner: W, spec: WavSpec, threshold_bytes: u64) -> Result<Self, WavError> {
        Self::build(inner, spec, threshold_bytes, None, None)
    }

    fn build(
        mut inner: W,
        spec: WavSpec,
        threshold_bytes: u64,
        path: Option<PathBuf>,
        sync: Option<SyncFn<W>>,
    ) -> Result<Self, WavError> {
        spec.validate()?;
        let base = inner.stream_position().map_err(|e| path_err(path.as_deref(), "get stream position of", e))?;
        // Flushed immediately so that even a crash before the first sample flush leaves a
        // header that `repair` can parse.
        inner
            .write_all(&build_header(&spec, 0, false))
            .and_then(|()| inner.flush())
            .map_err(|e| path_err(path.as_deref(), "write WAV header to", e))?;
        Ok(WavWriter {
            inner,
            spec,
            base,
            threshold: threshold_bytes.min(DEFAULT_RF64_THRESHOLD),
            frames: 0,
            buf: Vec::new(),
            failed: false,
            path,
            sync,
        })
    }

    /// Appends interleaved frames. `interleaved.len()` must be a multiple of the channel count,
    /// otherwise nothing is written and [`WavError::PartialFrame`] is returned.
    pub fn write_samples(&mut self, interleaved: &[i16]) -> Result<(), WavError> {
        if self.failed {
            return Err(WavError::WriterFailed);
        }
        let channels = usize::from(self.spec.channels);
        if !interleaved.len().is_multiple_of(channels) {
            return Err(WavError::PartialFrame { samples: interleaved.len(), channels: self.spec.channels });
        }
        if interleaved.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        self.spec.encode_into(interleaved, &mut self.buf);
        if let Err(e) = self.inner.write_all(&self.buf) {
            self.failed = true;
            return Err(self.io_err("write samples to", e));
        }
        self.frames += (interleaved.len() / channels) as u64;
        Ok(())
    }

    /// Pushes buffered samples to the OS, so a process crash after this loses none of them.
    /// (Durability against power loss comes from the fsync in `finalize`.)
    pub fn flush(&mut self) -> Result<(), WavError> {
        self.inner.flush().map_err(|e| self.io_err("flush", e))
    }

    /// Frames accepted by `write_samples` so far.
    pub fn frames_written(&self) -> u64 {
        self.frames
    }

    pub fn spec(&self) -> WavSpec {
        self.spec
    }

    /// Effective RF64 threshold (after clamping).
    pub fn rf64_threshold(&self) -> u64 {
        self.threshold
    }

    /// Flushes, patches the header from the bytes actually in the stream (RIFF, or RF64 above the
    /// threshold) and fsyncs files.
    ///
    /// The header is patched even when the length does not match `expected_frames`, so whatever
    /// audio exists is durable and playable; the mismatch is still reported as
    /// [`WavError::LengthMismatch`] so the caller can flag the recording.
    pub fn finalize(mut self, expected_frames: u64) -> Result<WavInfo, WavError> {
        let (info, raw) = self.patch_header()?;
        // A trailing partial frame (only possible after a failed write) also counts as a mismatch.
        if info.frames != expected_frames || raw != info.data_bytes {
            return Err(WavError::LengthMismatch { expected_frames, written_frames: info.frames });
        }
        Ok(info)
    }

    /// Returns the info written and the raw byte count found after the header.
    fn patch_header(&mut self) -> Result<(WavInfo, u64), WavError> {
        self.inner.flush().map_err(|e| self.io_err("flush", e))?;
        // Measure the stream itself rather than trusting the frame counter: the counter cannot
        // see bytes that never reached the stream.
        let end = self.inner.seek(SeekFrom::End(0)).map_err(|e| self.io_err("seek to end of", e))?;
        let raw = end.saturating_sub(self.base + HEADER_LEN);
        let block_align = u64::from(self.spec.block_align());
        let data_bytes = raw - raw % block_align;
        let rf64 = data_bytes > self.threshold;
        let header = build_header(&self.spec, data_bytes, rf64);
        // The whole header goes out in one write so a crash cannot leave RIFF/RF64 fields mixed.
        let res = self
            .inner
            .seek(SeekFrom::Start(self.base))
            .and_then(|_| self.inner.write_all(&header))
            .and_then(|()| self.inner.flush())
            .and_then(|()| self.inner.seek(SeekFrom::End(0)).map(|_| ()));
        res.map_err(|e| self.io_err("patch WAV header of", e))?;
        if let Some(sync) = self.sync {
            sync(&mut self.inner).map_err(|e| self.io_err("fsync", e))?;
        }
        let info = WavInfo {
            frames: data_bytes / block_align,
            data_bytes,
            rf64,
            sample_rate: self.spec.sample_rate,
            channels: self.spec.channels,
        };
        Ok((info, raw))
    }

    fn io_err(&self, action: &'static str, e: io::Error) -> WavError {
        path_err(self.path.as_deref(), action, e)
    }
}

/// Creates `path` (which must not exist: an existing recording is never clobbered) and starts a
/// buffered WAV writer on it; `finalize` fsyncs the file.
pub fn create_file(path: &Path, spec: WavSpec) -> Result<WavWriter<BufWriter<File>>, WavError> {
    create_file_with_rf64_threshold(path, spec, DEFAULT_RF64_THRESHOLD)
}

/// [`create_file`] with an explicit RF64 threshold (see [`WavWriter::with_rf64_threshold`]).
pub fn create_file_with_rf64_threshold(
    path: &Path,
    spec: WavSpec,
    threshold_bytes: u64,
) -> Result<WavWriter<BufWriter<File>>, WavError> {
    spec.validate()?;
    let file =
        File::options().write(true).create_new(true).open(path).map_err(|e| path_err(Some(path), "create", e))?;
    // Make the directory entry durable now, so that after a power cut the (repairable) file
    // still exists; the contents are fsynced in finalize.
    sync_parent_dir(path)?;
    WavWriter::build(
        BufWriter::with_capacity(FILE_BUFFER_BYTES, file),
        spec,
        threshold_bytes,
        Some(path.to_path_buf()),
        Some(sync_buffered_file),
    )
}

fn sync_buffered_file(w: &mut BufWriter<File>) -> io::Result<()> {
    w.flush()?;
    w.get_ref().sync_all()
}

#[cfg(unix)]
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), WavError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| path_err(Some(dir), "fsync directory", e))
}

#[cfg(not(unix))]
pub(crate) fn sync_parent_dir(_path: &Path) -> Result<(), WavError> {
    Ok(())
}

fn path_err(path: Option<&Path>, action: &'static str, source: io::Error) -> WavError {
    match path {
        Some(p) => WavError::File { path: p.to_path_buf(), action, source },
        None => WavError::Io(source),
    }
}

fn put(h: &mut [u8], at: usize, bytes: &[u8]) {
    h[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Builds our 80-byte header for `data_bytes` of audio, as RIFF (with the reserved `JUNK`) or RF64.
pub(crate) fn build_header(spec: &WavSpec, data_bytes: u64, rf64: bool) -> [u8; HEADER_LEN as usize] {
    let block_align = spec.block_align();
    let frames = data_bytes / u64::from(block_align);
    let riff_size = HEADER_LEN - 8 + data_bytes;
    let mut h = [0u8; HEADER_LEN as usize];
    if rf64 {
        put(&mut h, 0, b"RF64");
        put(&mut h, 4, &SIZE_IN_DS64.to_le_bytes());
    } else {
        debug_assert!(riff_size <= MAX_RIFF_SIZE, "RF64 threshold not clamped");
        put(&mut h, 0, b"RIFF");
        put(&mut h, 4, &(riff_size as u32).to_le_bytes());
    }
    put(&mut h, 8, b"WAVE");
    if rf64 {
        put(&mut h, 12, b"ds64");
        put(&mut h, 16, &DS64_PAYLOAD_LEN.to_le_bytes());
        put(&mut h, 20, &riff_size.to_le_bytes());
        put(&mut h, 28, &data_bytes.to_le_bytes());
        put(&mut h, 36, &frames.to_le_bytes());
        // 44..48: table length 0 (already zero).
    } else {
        put(&mut h, 12, b"JUNK");
        put(&mut h, 16, &DS64_PAYLOAD_LEN.to_le_bytes());
        // 20..48: reserved zeros.
    }
    put(&mut h, 48, b"fmt ");
    put(&mut h, 52, &16u32.to_le_bytes());
    put(&mut h, 56, &spec.encoding.tag().to_le_bytes()); // PCM, or G.711 µ-law/A-law
    put(&mut h, 58, &spec.channels.to_le_bytes());
    put(&mut h, 60, &spec.sample_rate.to_le_bytes());
    put(&mut h, 64, &(spec.sample_rate * u32::from(block_align)).to_le_bytes());
    put(&mut h, 68, &block_align.to_le_bytes());
    put(&mut h, 70, &(spec.encoding.bytes() * 8).to_le_bytes());
    put(&mut h, 72, b"data");
    let data32 = if rf64 { SIZE_IN_DS64 } else { data_bytes as u32 };
    put(&mut h, 76, &data32.to_le_bytes());
    h
}

// ---------------------------------------------------------------------------------------------
// Reading / repair
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Ds64 {
    /// File offset of the ds64 payload (riff size u64 first).
    payload_offset: u64,
    riff: u64,
    data: u64,
}

/// Header facts needed to judge and repair a file.
#[derive(Debug, Clone)]
struct Parsed {
    rf64: bool,
    /// Resolved RIFF size (through ds64 for RF64).
    riff_size: u64,
    ds64: Option<Ds64>,
    /// A 28-byte `JUNK` chunk sits right after `WAVE`, so RF64 conversion can happen in place.
    junk_reserved: bool,
    spec: WavSpec,
    block_align: u64,
    data_offset: u64,
    data32: u32,
    /// Resolved data size (through ds64 for RF64).
    declared_data: u64,
    file_len: u64,
}

impl Parsed {
    fn available(&self) -> u64 {
        self.file_len - self.data_offset
    }

    /// Sizes consistent with the file length.
    fn is_finalised(&self) -> bool {
        let data_end =
            self.data_offset.checked_add(self.declared_data).and_then(|e| e.checked_add(self.declared_data & 1));
        self.riff_size.checked_add(8) == Some(self.file_len)
            && self.declared_data.is_multiple_of(self.block_align)
            && data_end.is_some_and(|e| e <= self.file_len)
    }

    /// The header looks like an unfinished stream, so the audio runs to the end of the file:
    /// size still 0 (our writer), the "unknown" marker, larger than what is on disk, or followed
    /// only by less than one frame (left by a write that failed part-way before `finalize`).
    fn data_runs_to_eof(&self) -> bool {
        self.declared_data == 0
            || (!self.rf64 && self.data32 == SIZE_IN_DS64)
            || self.declared_data >= self.available()
            || self.available() - self.declared_data < self.block_align
    }

    fn recoverable_data(&self) -> u64 {
        let bytes = if self.is_finalised() {
            self.declared_data
        } else if self.data_runs_to_eof() {
            self.available()
        } else {
            self.declared_data
        };
        bytes - bytes % self.block_align
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn not_wav(path: &Path, reason: impl Into<String>) -> WavError {
    WavError::NotWav { path: path.to_path_buf(), reason: reason.into() }
}

fn unsupported(path: &Path, reason: impl Into<String>) -> WavError {
    WavError::Unsupported { path: path.to_path_buf(), reason: reason.into() }
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8], path: &Path, what: &str) -> Result<(), WavError> {
    r.seek(SeekFrom::Start(offset)).and_then(|_| r.read_exact(buf)).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            not_wav(path, format!("file ends inside the {what} at offset {offset}"))
        } else {
            path_err(Some(path), "read", e)
        }
    })
}

/// KSDATAFORMAT_SUBTYPE_PCM, for WAVE_FORMAT_EXTENSIBLE files.
const PCM_SUBFORMAT_GUID: [u8; 16] =
    [0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71];
/// Guard against walking millions of bogus chunks in a corrupt file.
const MAX_CHUNKS_BEFORE_DATA: usize = 4096;

/// Parses the RIFF/RF64 header up to the start of the `data` chunk.
fn parse_header<R: Read + Seek>(r: &mut R, file_len: u64, path: &Path) -> Result<Parsed, WavError> {
    if file_len < 12 {
        return Err(not_wav(
            path,
            format!("file is {file_len} bytes, too short for a RIFF header (was it ever written?)"),
        ));
    }
    let mut head = [0u8; 12];
    read_at(r, 0, &mut head, path, "RIFF header")?;
    let rf64 = match &head[0..4] {
        b"RIFF" => false,
        b"RF64" => true,
        other => {
            return Err(not_wav(
                path,
                format!("starts with {:?}, expected \"RIFF\" or \"RF64\"", other.escape_ascii().to_string()),
            ));
        }
    };
    if &head[8..12] != b"WAVE" {
        return Err(not_wav(
            path,
            format!("RIFF form type is {:?}, expected \"WAVE\"", head[8..12].escape_ascii().to_string()),
        ));
    }
    let riff32 = le_u32(&head, 4);

    let mut pos = 12u64;
    let mut fmt: Option<(WavSpec, u64)> = None;
    let mut ds64: Option<Ds64> = None;
    let mut junk_reserved = false;
    let mut chunks = 0usize;
    let (data_offset, data32) = loop {
        chunks += 1;
        if chunks > MAX_CHUNKS_BEFORE_DATA {
            return Err(not_wav(path, "too many chunks before the data chunk (corrupt header?)"));
        }
        if pos.checked_add(8).is_none_or(|end| end > file_len) {
            return Err(not_wav(path, format!("no data chunk before end of file ({file_len} bytes)")));
        }
        let mut ch = [0u8; 8];
        read_at(r, pos, &mut ch, path, "chunk header")?;
        let size = le_u32(&ch, 4);
        let payload = pos + 8;
        match &ch[0..4] {
            b"fmt " => fmt = Some(parse_fmt(r, payload, size, path)?),
            b"ds64" if rf64 => {
                if size < DS64_PAYLOAD_LEN {
                    return Err(not_wav(path, format!("ds64 chunk is {size} bytes, need at least 28")));
                }
                let mut d = [0u8; 24];
                read_at(r, payload, &mut d, path, "ds64 chunk")?;
                ds64 = Some(Ds64 { payload_offset: payload, riff: le_u64(&d, 0), data: le_u64(&d, 8) });
            }
            b"JUNK" if pos == DS64_CHUNK_OFFSET && size == DS64_PAYLOAD_LEN => junk_reserved = true,
            b"data" => break (payload, size),
            _ => {}
        }
        pos = payload + u64::from(size) + u64::from(size & 1);
    };

    let Some((spec, block_align)) = fmt else {
        return Err(not_wav(path, "no fmt chunk before the data chunk"));
    };
    let (riff_size, declared_data) = if rf64 {
        let Some(d) = ds64 else {
            return Err(not_wav(path, "RF64 file without a ds64 chunk before the data chunk"));
        };
        let riff = if riff32 == SIZE_IN_DS64 { d.riff } else { u64::from(riff32) };
        let data = if data32 == SIZE_IN_DS64 { d.data } else { u64::from(data32) };
        (riff, data)
    } else {
        (u64::from(riff32), u64::from(data32))
    };
    Ok(Parsed { rf64, riff_size, ds64, junk_reserved, spec, block_align, data_offset, data32, declared_data, file_len })
}

/// Reads a `fmt ` chunk and checks it is 16-bit integer PCM (plain or WAVE_FORMAT_EXTENSIBLE).
fn parse_fmt<R: Read + Seek>(r: &mut R, payload: u64, size: u32, path: &Path) -> Result<(WavSpec, u64), WavError> {
    if size < 16 {
        return Err(not_wav(path, format!("fmt chunk is {size} bytes, need at least 16")));
    }
    let mut f = [0u8; 40];
    let n = size.min(40) as usize;
    read_at(r, payload, &mut f[..n], path, "fmt chunk")?;
    let tag = le_u16(&f, 0);
    let channels = le_u16(&f, 2);
    let sample_rate = le_u32(&f, 4);
    let block_align = le_u16(&f, 12);
    let bits = le_u16(&f, 14);
    let encoding = match (tag, bits) {
        (1, 16) => SampleEncoding::Pcm16,
        (0xFFFE, 16) if n >= 40 && f[24..40] == PCM_SUBFORMAT_GUID => SampleEncoding::Pcm16,
        (7, 8) => SampleEncoding::Ulaw,
        (6, 8) => SampleEncoding::Alaw,
        (1 | 0xFFFE, _) => {
            return Err(unsupported(path, format!("{bits}-bit samples; only 16-bit PCM and 8-bit G.711 are handled")));
        }
        _ => return Err(unsupported(path, format!("format tag {tag:#06x} is neither integer PCM nor G.711"))),
    };
    let spec = WavSpec { sample_rate, channels, encoding };
    spec.validate().map_err(|e| not_wav(path, format!("bad fmt chunk: {e}")))?;
    if block_align != spec.block_align() {
        return Err(not_wav(
            path,
            format!("block align {block_align} does not match {channels} channels of {bits}-bit samples"),
        ));
    }
    Ok((spec, u64::from(block_align)))
}

fn status_from(p: &Parsed) -> WavStatus {
    let data_bytes = p.recoverable_data();
    WavStatus {
        info: WavInfo {
            frames: data_bytes / p.block_align,
            data_bytes,
            rf64: p.rf64,
            sample_rate: p.spec.sample_rate,
            channels: p.spec.channels,
        },
        finalised: p.is_finalised(),
        declared_data_bytes: p.declared_data,
        data_offset: p.data_offset,
        file_len: p.file_len,
    }
}

fn open_and_parse(path: &Path, write: bool) -> Result<(File, Parsed), WavError> {
    let mut file = File::options().read(true).write(write).open(path).map_err(|e| path_err(Some(path), "open", e))?;
    let file_len = file.metadata().map_err(|e| path_err(Some(path), "stat", e))?.len();
    let parsed = parse_header(&mut file, file_len, path)?;
    Ok((file, parsed))
}

/// Reads a WAV/RF64 header (ours or any 16-bit PCM one) without modifying the file; `finalised`
/// tells whether the sizes match the file length, i.e. whether the writer reached `finalize`.
pub fn inspect(path: &Path) -> Result<WavStatus, WavError> {
    let (_file, parsed) = open_and_parse(path, false)?;
    Ok(status_from(&parsed))
}

/// Repairs an unfinished file (e.g. after kill -9) using the default RF64 threshold.
/// See [`repair_with_rf64_threshold`].
pub fn repair(path: &Path) -> Result<RepairReport, WavError> {
    repair_with_rf64_threshold(path, DEFAULT_RF64_THRESHOLD)
}

/// Repairs an unfinished file: truncates a trailing partial frame, sets the sizes from the file
/// length (converting to RF64 in place, via the reserved `JUNK` chunk, when the audio exceeds
/// `threshold_bytes`), and fsyncs. Idempotent: a finalised file is left byte-for-byte unchanged.
pub fn repair_with_rf64_threshold(path: &Path, threshold_bytes: u64) -> Result<RepairReport, WavError> {
    let (mut file, p) = open_and_parse(path, true)?;
    if p.is_finalised() {
        return Ok(RepairReport {
            frames: p.declared_data / p.block_align,
            was_finalised: true,
            truncated_bytes: 0,
            rf64: p.rf64,
        });
    }
    if !p.data_runs_to_eof() {
        return Err(unsupported(
            path,
            format!(
                "header declares {} data bytes but {} bytes follow the data chunk, and the RIFF \
                 size {} does not match the file length {}; refusing to guess which is right",
                p.declared_data,
                p.available(),
                p.riff_size,
                p.file_len
            ),
        ));
    }
    let available = p.available();
    let partial = available % p.block_align;
    let data_bytes = available - partial;
    let new_len = p.file_len - partial;
    let riff_size = new_len - 8;
    let frames = data_bytes / p.block_align;
    let threshold = threshold_bytes.min(DEFAULT_RF64_THRESHOLD);
    let fits_riff = data_bytes <= threshold && riff_size <= MAX_RIFF_SIZE;

    let mut ds64_payload = [0u8; DS64_PAYLOAD_LEN as usize];
    put(&mut ds64_payload, 0, &riff_size.to_le_bytes());
    put(&mut ds64_payload, 8, &data_bytes.to_le_bytes());
    put(&mut ds64_payload, 16, &frames.to_le_bytes());

    // Decide before touching the file, so an unsupported case leaves it unmodified.
    let rf64 = if p.rf64 {
        true
    } else if fits_riff {
        false
    } else if p.junk_reserved {
        true
    } else {
        return Err(unsupported(
            path,
            format!(
                "{data_bytes} bytes of audio need RF64 (threshold {threshold}) but there is no \
                 28-byte JUNK chunk after the RIFF header to turn into ds64 in place; rewrite the \
                 file with a converter instead"
            ),
        ));
    };

    let write_at = |file: &mut File, offset: u64, bytes: &[u8]| -> Result<(), WavError> {
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(bytes))
            .map_err(|e| path_err(Some(path), "write repaired header to", e))
    };
    if partial > 0 {
        file.set_len(new_len).map_err(|e| path_err(Some(path), "truncate partial frame of", e))?;
    }
    let data_size_offset = p.data_offset - 4;
    if !rf64 {
        // fits_riff guarantees both values fit in 32 bits.
        write_at(&mut file, 4, &(riff_size as u32).to_le_bytes())?;
        write_at(&mut file, data_size_offset, &(data_bytes as u32).to_le_bytes())?;
    } else if let (true, Some(d)) = (p.rf64, p.ds64) {
        write_at(&mut file, d.payload_offset, &ds64_payload[..24])?;
        write_at(&mut file, 4, &SIZE_IN_DS64.to_le_bytes())?;
        write_at(&mut file, data_size_offset, &SIZE_IN_DS64.to_le_bytes())?;
    } else {
        // JUNK -> ds64 first (RIFF readers skip an unknown ds64 chunk), the RF64 id last, so an
        // interruption leaves a file that repair can still handle.
        let mut chunk = [0u8; 8 + DS64_PAYLOAD_LEN as usize];
        put(&mut chunk, 0, b"ds64");
        put(&mut chunk, 4, &DS64_PAYLOAD_LEN.to_le_bytes());
        put(&mut chunk, 8, &ds64_payload);
        write_at(&mut file, DS64_CHUNK_OFFSET, &chunk)?;
        write_at(&mut file, data_size_offset, &SIZE_IN_DS64.to_le_bytes())?;
        let mut id = [0u8; 8];
        put(&mut id, 0, b"RF64");
        put(&mut id, 4, &SIZE_IN_DS64.to_le_bytes());
        write_at(&mut file, 0, &id)?;
    }
    file.sync_all().map_err(|e| path_err(Some(path), "fsync", e))?;

    // Re-read what we wrote: a repair that does not produce a consistent header must not be
    // reported as success.
    let check = parse_header(&mut file, new_len, path)?;
    if !check.is_finalised() || check.declared_data != data_bytes {
        return Err(unsupported(
            path,
            format!(
                "repair did not produce a consistent header (declared {} bytes, expected {data_bytes})",
                check.declared_data
            ),
        ));
    }
    Ok(RepairReport { frames, was_finalised: false, truncated_bytes: partial, rf64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;
    use std::process::Command;

    fn spec(sample_rate: u32, channels: u16) -> WavSpec {
        WavSpec::pcm(sample_rate, channels)
    }

    /// Deterministic samples that include both extremes.
    fn samples(frames: usize, channels: u16, seed: u64) -> Vec<i16> {
        let n = frames * usize::from(channels);
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| match i {
                0 => i16::MIN,
                1 => i16::MAX,
                _ => {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 48) as i16
                }
            })
            .collect()
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        le_u32(b, at)
    }

    fn le64(b: &[u8], at: usize) -> u64 {
        le_u64(b, at)
    }

    fn to_le_bytes(s: &[i16]) -> Vec<u8> {
        s.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn write_mem(spec: WavSpec, s: &[i16], threshold: u64, expected: u64) -> (Vec<u8>, Result<WavInfo, WavError>) {
        let mut cur = Cursor::new(Vec::new());
        let mut w = WavWriter::with_rf64_threshold(&mut cur, spec, threshold).expect("new");
        // Several calls of uneven size, like packets.
        let frame = usize::from(spec.channels);
        for chunk in s.chunks(frame * 37) {
            w.write_samples(chunk).expect("write");
        }
        let res = w.finalize(expected);
        (cur.into_inner(), res)
    }

    fn hound_read(bytes: &[u8]) -> (hound::WavSpec, Vec<i16>) {
        let r = hound::WavReader::new(Cursor::new(bytes)).expect("hound parses header");
        let spec = r.spec();
        let s = r.into_samples::<i16>().collect::<Result<Vec<_>, _>>().expect("hound reads samples");
        (spec, s)
    }

    fn sox_available() -> bool {
        let ok = Command::new("sox").arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            println!("sox not installed: skipping sox cross-check");
        }
        ok
    }

    /// Cross-checks a file with an independent reader (sox understands RF64).
    fn sox_check(path: &Path, frames: u64, s: &[i16]) {
        if !sox_available() {
            return;
        }
        let out = Command::new("soxi").arg("-s").arg(path).output().expect("run soxi");
        assert!(out.status.success(), "soxi failed: {out:?}");
        let n: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("soxi -s prints a number");
        assert_eq!(n, frames, "soxi sample count");
        let out = Command::new("sox")
            .arg(path)
            .args(["-t", "raw", "-e", "signed-integer", "-b", "16", "-L", "-"])
            .output()
            .expect("run sox");
        assert!(out.status.success(), "sox failed: {out:?}");
        assert_eq!(out.stdout, to_le_bytes(s), "sox decoded samples");
    }

    /// Simulates kill -9: samples reach the OS, but neither finalize nor any destructor runs.
    fn crash_file(path: &Path, spec: WavSpec, s: &[i16]) {
        let mut w = create_file(path, spec).expect("create");
        for chunk in s.chunks(usize::from(spec.channels) * 160) {
            w.write_samples(chunk).expect("write");
        }
        w.flush().expect("flush");
        std::mem::forget(w);
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = File::options().append(true).open(path).expect("open");
        f.write_all(bytes).expect("append");
    }

    #[test]
    fn roundtrip_mono_in_memory_with_hound() {
        let sp = spec(8000, 1);
        let s = samples(1000, 1, 1);
        let (bytes, res) = write_mem(sp, &s, DEFAULT_RF64_THRESHOLD, 1000);
        let info = res.expect("finalize");
        assert_eq!(info, WavInfo { frames: 1000, data_bytes: 2000, rf64: false, sample_rate: 8000, channels: 1 });
        assert_eq!(bytes.len(), 80 + 2000);
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(le32(&bytes, 4) as usize, bytes.len() - 8);
        assert_eq!(&bytes[12..16], b"JUNK");
        assert_eq!(le32(&bytes, 16), 28);
        assert_eq!(&bytes[72..76], b"data");
        assert_eq!(le32(&bytes, 76), 2000);
        let (hs, hsamples) = hound_read(&bytes);
        assert_eq!(hs.channels, 1);
        assert_eq!(hs.sample_rate, 8000);
        assert_eq!(hs.bits_per_sample, 16);
        assert_eq!(hsamples, s);
    }

    #[test]
    fn roundtrip_stereo_file_with_hound_and_inspect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stereo.wav");
        let sp = spec(16000, 2);
        let s = samples(4801, 2, 2);
        let mut w = create_file(&path, sp).expect("create");
        for chunk in s.chunks(2 * 320) {
            w.write_samples(chunk).expect("write");
        }
        assert_eq!(w.frames_written(), 4801);
        let info = w.finalize(4801).expect("finalize");
        assert_eq!((info.frames, info.data_bytes, info.rf64), (4801, 4801 * 4, false));

        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(le32(&bytes, 4) as usize, bytes.len() - 8);
        assert_eq!(le32(&bytes, 76), 4801 * 4);
        let (hs, hsamples) = hound_read(&bytes);
        assert_eq!((hs.channels, hs.sample_rate), (2, 16000));
        assert_eq!(hsamples, s);

        let st = inspect(&path).expect("inspect");
        assert!(st.finalised);
        assert_eq!(st.info, info);
        assert_eq!(st.data_offset, 80);
        sox_check(&path, 4801, &s);

        // repair of a finalised file is a no-op.
        let rep = repair(&path).expect("repair");
        assert!(rep.was_finalised);
        assert_eq!(rep.frames, 4801);
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
    }

    #[test]
    fn empty_recording_is_valid_when_nothing_expected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.wav");
        let w = create_file(&path, spec(8000, 1)).expect("create");
        let info = w.finalize(0).expect("finalize");
        assert_eq!((info.frames, info.data_bytes), (0, 0));
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 80);
        assert_eq!(le32(&bytes, 4), 72);
        let (_, s) = hound_read(&bytes);
        assert!(s.is_empty());
        assert!(inspect(&path).expect("inspect").finalised);
    }

    #[test]
    fn header_only_file_is_an_error_when_audio_was_expected() {
        // Field bug: a 23-minute call ended as a bare header without any error.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lost.wav");
        let w = create_file(&path, spec(8000, 1)).expect("create");
        let err = w.finalize(23 * 60 * 8000).expect_err("must not succeed");
        assert!(matches!(err, WavError::LengthMismatch { expected_frames: 11_040_000, written_frames: 0 }), "{err:?}");
        assert!(err.to_string().contains("11040000"), "{err}");
        // What exists is still a valid (empty) WAV.
        assert!(inspect(&path).expect("inspect").finalised);
    }

    #[test]
    fn short_recording_reports_mismatch_but_keeps_audio() {
        let sp = spec(8000, 2);
        let s = samples(100, 2, 3);
        let (bytes, res) = write_mem(sp, &s, DEFAULT_RF64_THRESHOLD, 160);
        let err = res.expect_err("short");
        assert!(matches!(err, WavError::LengthMismatch { expected_frames: 160, written_frames: 100 }), "{err:?}");
        assert_eq!(hound_read(&bytes).1, s);
    }

    #[test]
    fn mismatch_is_measured_from_the_stream_not_the_counter() {
        // Bytes removed behind the writer's back (e.g. lost by a broken lower layer) must be
        // noticed even though write_samples reported success.
        let mut cur = Cursor::new(Vec::new());
        let mut w = WavWriter::new(&mut cur, spec(8000, 1)).expect("new");
        w.write_samples(&samples(100, 1, 4)).expect("write");
        assert_eq!(w.frames_written(), 100);
        w.inner.get_mut().truncate(80 + 50 * 2);
        let err = w.finalize(100).expect_err("must detect");
        assert!(matches!(err, WavError::LengthMismatch { expected_frames: 100, written_frames: 50 }), "{err:?}");
    }

    #[test]
    fn partial_frames_are_rejected_without_writing() {
        let mut cur = Cursor::new(Vec::new());
        let mut w = WavWriter::new(&mut cur, spec(8000, 2)).expect("new");
        let err = w.write_samples(&[1, 2, 3]).expect_err("partial");
        assert!(matches!(err, WavError::PartialFrame { samples: 3, channels: 2 }), "{err:?}");
        assert_eq!(w.frames_written(), 0);
        w.write_samples(&[]).expect("empty is fine");
        w.finalize(0).expect("finalize");
        assert_eq!(cur.get_ref().len(), 80);
    }

    #[test]
    fn invalid_specs_are_rejected() {
        for sp in [spec(8000, 0), spec(0, 1), spec(u32::MAX, 2)] {
            let err = WavWriter::new(Cursor::new(Vec::new()), sp).expect_err("invalid");
            assert!(matches!(err, WavError::InvalidSpec { .. }), "{err:?}");
        }
    }

    #[test]
    fn create_file_does_not_clobber_existing_recordings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exists.wav");
        std::fs::write(&path, b"precious").expect("write");
        let err = create_file(&path, spec(8000, 1)).expect_err("exists");
        assert!(matches!(&err, WavError::File { path: p, .. } if p == &path), "{err:?}");
        assert!(err.to_string().contains("exists.wav"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"precious");
    }

    #[test]
    fn drop_without_finalize_does_not_patch_header() {
        let mut cur = Cursor::new(Vec::new());
        {
            let mut w = WavWriter::new(&mut cur, spec(8000, 1)).expect("new");
            w.write_samples(&samples(10, 1, 5)).expect("write");
        }
        let bytes = cur.into_inner();
        assert_eq!(bytes.len(), 80 + 20);
        assert_eq!(le32(&bytes, 4), 72, "RIFF size still the creation value");
        assert_eq!(le32(&bytes, 76), 0, "data size still 0");
    }

    #[test]
    fn crash_then_repair_recovers_all_flushed_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crash.wav");
        let sp = spec(8000, 2);
        let s = samples(8000, 2, 6);
        crash_file(&path, sp, &s);

        let st = inspect(&path).expect("inspect");
        assert!(!st.finalised);
        assert_eq!(st.declared_data_bytes, 0);
        assert_eq!(st.info.frames, 8000, "inspect reports what is recoverable");
        assert!(hound::WavReader::open(&path).is_ok_and(|r| r.len() == 0));

        let rep = repair(&path).expect("repair");
        assert_eq!(rep, RepairReport { frames: 8000, was_finalised: false, truncated_bytes: 0, rf64: false });
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(hound_read(&bytes).1, s);
        assert!(inspect(&path).expect("inspect").finalised);

        // Idempotent.
        let again = repair(&path).expect("repair again");
        assert!(again.was_finalised);
        assert_eq!(again.frames, 8000);
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        sox_check(&path, 8000, &s);
    }

    #[test]
    fn repair_truncates_trailing_partial_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("partial.wav");
        let sp = spec(8000, 2);
        let s = samples(500, 2, 7);
        crash_file(&path, sp, &s);
        append(&path, &[0x11, 0x22, 0x33]); // 3 of a 4-byte frame

        let rep = repair(&path).expect("repair");
        assert_eq!((rep.frames, rep.truncated_bytes), (500, 3));
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 80 + 500 * 4);
        assert_eq!(hound_read(&bytes).1, s);
    }

    /// Checks the RF64 header fields of a file written/repaired by this module.
    fn assert_rf64_header(bytes: &[u8], data_bytes: u64, frames: u64) {
        assert_eq!(&bytes[0..4], b"RF64");
        assert_eq!(le32(bytes, 4), u32::MAX);
        assert_eq!(&bytes[8..12], b"WAVE");
        assert_eq!(&bytes[12..16], b"ds64");
        assert_eq!(le32(bytes, 16), 28);
        assert_eq!(le64(bytes, 20), bytes.len() as u64 - 8, "ds64 riff size");
        assert_eq!(le64(bytes, 28), data_bytes, "ds64 data size");
        assert_eq!(le64(bytes, 36), frames, "ds64 sample count");
        assert_eq!(le32(bytes, 44), 0, "ds64 table length");
        assert_eq!(&bytes[48..52], b"fmt ");
        assert_eq!(&bytes[72..76], b"data");
        assert_eq!(le32(bytes, 76), u32::MAX);
    }

    #[test]
    fn rf64_switch_with_tiny_threshold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sp = spec(8000, 2);

        // Exactly at the threshold stays RIFF.
        let at = dir.path().join("at.wav");
        let s = samples(1024, 2, 8);
        let mut w = create_file_with_rf64_threshold(&at, sp, 4096).expect("create");
        w.write_samples(&s).expect("write");
        assert!(!w.finalize(1024).expect("finalize").rf64);
        assert_eq!(&std::fs::read(&at).expect("read")[0..4], b"RIFF");

        // One frame more becomes RF64.
        let path = dir.path().join("big.wav");
        let s = samples(1025, 2, 9);
        let mut w = create_file_with_rf64_threshold(&path, sp, 4096).expect("create");
        assert_eq!(w.rf64_threshold(), 4096);
        w.write_samples(&s).expect("write");
        let info = w.finalize(1025).expect("finalize");
        assert!(info.rf64);
        assert_eq!(info.data_bytes, 4100);
        let bytes = std::fs::read(&path).expect("read");
        assert_rf64_header(&bytes, 4100, 1025);
        assert_eq!(&bytes[80..], to_le_bytes(&s));

        let st = inspect(&path).expect("inspect");
        assert!(st.finalised);
        assert_eq!(st.info, info);
        assert!(repair(&path).expect("repair").was_finalised);
        sox_check(&path, 1025, &s);
    }

    #[test]
    fn repair_past_threshold_yields_rf64() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crash-big.wav");
        let sp = spec(8000, 1);
        let s = samples(3000, 1, 10);
        crash_file(&path, sp, &s);
        append(&path, &[0x7f]);

        let rep = repair_with_rf64_threshold(&path, 4096).expect("repair");
        assert_eq!(rep, RepairReport { frames: 3000, was_finalised: false, truncated_bytes: 1, rf64: true });
        let bytes = std::fs::read(&path).expect("read");
        assert_rf64_header(&bytes, 6000, 3000);
        let st = inspect(&path).expect("inspect");
        assert!(st.finalised && st.info.rf64);
        assert_eq!(st.info.frames, 3000);
        let again = repair_with_rf64_threshold(&path, 4096).expect("again");
        assert!(again.was_finalised && again.rf64);
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        sox_check(&path, 3000, &s);
    }

    #[test]
    fn repair_extends_an_unfinished_rf64_file() {
        // A streaming RF64 writer (sizes in ds64 still 0, 32-bit sizes 0xFFFFFFFF) that crashed:
        // it stays RF64 and gets its ds64 sizes set.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rf64-stream.wav");
        let sp = spec(8000, 1);
        let s = samples(3000, 1, 11);
        let mut bytes = build_header(&sp, 0, true).to_vec();
        bytes.extend_from_slice(&to_le_bytes(&s));
        std::fs::write(&path, &bytes).expect("write");
        let st = inspect(&path).expect("inspect");
        assert!(!st.finalised && st.info.rf64);
        assert_eq!(st.info.frames, 3000);
        let rep = repair(&path).expect("repair");
        assert!(rep.rf64 && !rep.was_finalised);
        assert_eq!(rep.frames, 3000);
        assert_rf64_header(&std::fs::read(&path).expect("read"), 6000, 3000);
    }

    #[test]
    fn repair_refuses_to_guess_when_data_is_followed_by_unknown_bytes() {
        // Finalised file with bytes appended afterwards: the data size is plausible but the RIFF
        // size is not, so either could be wrong; repair must not fold the bytes into the audio.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("appended.wav");
        let mut w = create_file(&path, spec(8000, 1)).expect("create");
        w.write_samples(&samples(100, 1, 13)).expect("write");
        w.finalize(100).expect("finalize");
        append(&path, b"LIST\x04\x00\x00\x00abcd");
        let before = std::fs::read(&path).expect("read");
        let st = inspect(&path).expect("inspect");
        assert!(!st.finalised);
        assert_eq!(st.info.frames, 100);
        let err = repair(&path).expect_err("ambiguous");
        assert!(matches!(err, WavError::Unsupported { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).expect("read"), before);
    }

    #[test]
    fn repair_of_non_wav_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, b"this is not audio at all, just some text").expect("write");
        let err = repair(&path).expect_err("not wav");
        assert!(matches!(&err, WavError::NotWav { path: p, .. } if p == &path), "{err:?}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"this is not audio at all, just some text");

        let empty = dir.path().join("empty.wav");
        std::fs::write(&empty, b"").expect("write");
        let err = inspect(&empty).expect_err("empty");
        assert!(matches!(&err, WavError::NotWav { path: p, .. } if p == &empty), "{err:?}");

        // A header cut short (crash right at creation on a non-buffered path).
        let cut = dir.path().join("cut.wav");
        std::fs::write(&cut, &build_header(&spec(8000, 1), 0, false)[..60]).expect("write");
        let err = repair(&cut).expect_err("cut");
        assert!(matches!(err, WavError::NotWav { .. }), "{err:?}");

        let missing = dir.path().join("missing.wav");
        let err = inspect(&missing).expect_err("missing");
        assert!(matches!(&err, WavError::File { path: p, .. } if p == &missing), "{err:?}");
    }

    /// A canonical 44-byte header as other tools write it, sizes not yet patched.
    fn canonical_unfinished(sp: WavSpec, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&sp.channels.to_le_bytes());
        b.extend_from_slice(&sp.sample_rate.to_le_bytes());
        b.extend_from_slice(&(sp.sample_rate * u32::from(sp.block_align())).to_le_bytes());
        b.extend_from_slice(&sp.block_align().to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn foreign_canonical_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sp = spec(8000, 1);
        let s = samples(3000, 1, 12);

        // hound-written (finalised) file inspects as finalised.
        let hpath = dir.path().join("hound.wav");
        let mut hw = hound::WavWriter::create(
            &hpath,
            hound::WavSpec {
                channels: 1,
                sample_rate: 8000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            },
        )
        .expect("hound create");
        for v in &s {
            hw.write_sample(*v).expect("hound write");
        }
        hw.finalize().expect("hound finalize");
        let st = inspect(&hpath).expect("inspect");
        assert!(st.finalised);
        assert_eq!((st.info.frames, st.info.rf64), (3000, false));

        // Unfinished canonical file: repairable as RIFF, but it cannot become RF64 in place.
        let path = dir.path().join("canon.wav");
        let bytes = canonical_unfinished(sp, &to_le_bytes(&s));
        std::fs::write(&path, &bytes).expect("write");
        let err = repair_with_rf64_threshold(&path, 4096).expect_err("no room for ds64");
        assert!(matches!(err, WavError::Unsupported { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "left untouched");
        let rep = repair(&path).expect("repair");
        assert_eq!((rep.frames, rep.rf64), (3000, false));
        assert_eq!(hound_read(&std::fs::read(&path).expect("read")).1, s);

        // 24-bit PCM is recognised as WAV but not handled.
        let mut b24 = canonical_unfinished(sp, &[]);
        b24[34] = 24;
        let p24 = dir.path().join("24bit.wav");
        std::fs::write(&p24, &b24).expect("write");
        let err = inspect(&p24).expect_err("24-bit");
        assert!(matches!(err, WavError::Unsupported { .. }), "{err:?}");
    }

    #[test]
    fn writer_refuses_to_continue_after_a_failed_write() {
        /// Header writes (below offset 80) always succeed; sample writes fail after `budget` bytes.
        struct Flaky {
            inner: Cursor<Vec<u8>>,
            budget: usize,
        }
        impl Write for Flaky {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.inner.position() < 80 {
                    return self.inner.write(buf);
                }
                if self.budget == 0 {
                    return Err(io::Error::other("disk full"));
                }
                let n = buf.len().min(self.budget);
                self.budget -= n;
                self.inner.write(&buf[..n])
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl Seek for Flaky {
            fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
                self.inner.seek(pos)
            }
        }
        let mut f = Flaky { inner: Cursor::new(Vec::new()), budget: 6 };
        let mut w = WavWriter::new(&mut f, spec(8000, 2)).expect("new");
        let err = w.write_samples(&[1, 2, 3, 4]).expect_err("fails part-way");
        assert!(matches!(err, WavError::Io(_)), "{err:?}");
        let err = w.write_samples(&[5, 6]).expect_err("poisoned");
        assert!(matches!(err, WavError::WriterFailed), "{err:?}");
        // 6 bytes = 1 frame + half a frame: a mismatch even though the whole frames match.
        let err = w.finalize(1).expect_err("stray bytes");
        assert!(matches!(err, WavError::LengthMismatch { expected_frames: 1, written_frames: 1 }), "{err:?}");
        // The header covers the whole frame; repair cuts the half frame off.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("failed.wav");
        std::fs::write(&path, f.inner.get_ref()).expect("write");
        assert_eq!(le32(f.inner.get_ref(), 76), 4);
        assert!(!inspect(&path).expect("inspect").finalised);
        let rep = repair(&path).expect("repair");
        assert_eq!((rep.frames, rep.truncated_bytes), (1, 2));
        assert_eq!(hound_read(&std::fs::read(&path).expect("read")).1, [1, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn prop_roundtrip(channels in 1u16..=4, frames in 0usize..700, seed: u64, threshold in 0u64..4000) {
            let sp = spec(8000, channels);
            let s = samples(frames, channels, seed);
            let (bytes, res) = write_mem(sp, &s, threshold, frames as u64);
            let info = res.expect("finalize");
            let data_bytes = (s.len() * 2) as u64;
            prop_assert_eq!(info.data_bytes, data_bytes);
            prop_assert_eq!(info.rf64, data_bytes > threshold);
            prop_assert_eq!(&bytes[80..], &to_le_bytes(&s)[..]);
            let p = parse_header(&mut Cursor::new(&bytes), bytes.len() as u64, Path::new("mem"))
                .expect("parse");
            prop_assert!(p.is_finalised());
            prop_assert_eq!(status_from(&p).info, info);
            if info.rf64 {
                assert_rf64_header(&bytes, data_bytes, frames as u64);
            } else {
                prop_assert_eq!(hound_read(&bytes).1, s);
            }
        }

        #[test]
        fn prop_crash_at_any_byte_is_repairable(
            channels in 1u16..=3,
            frames in 0usize..400,
            cut_frac in 0.0f64..=1.0,
            seed: u64,
            threshold in 0u64..3000,
        ) {
            let sp = spec(8000, channels);
            let s = samples(frames, channels, seed);
            let mut cur = Cursor::new(Vec::new());
            {
                let mut w = WavWriter::new(&mut cur, sp).expect("new");
                w.write_samples(&s).expect("write");
            } // dropped without finalize
            let full = cur.into_inner();
            let k = ((full.len() - 80) as f64 * cut_frac) as usize;
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("c.wav");
            std::fs::write(&path, &full[..80 + k]).expect("write");

            let ba = usize::from(sp.block_align());
            let rep = repair_with_rf64_threshold(&path, threshold).expect("repair");
            prop_assert_eq!(rep.frames, (k / ba) as u64);
            prop_assert_eq!(rep.truncated_bytes, (k % ba) as u64);
            prop_assert_eq!(rep.was_finalised, k == 0); // bare header: already consistent
            let data_bytes = (k / ba * ba) as u64;
            prop_assert_eq!(rep.rf64, data_bytes > threshold);
            let st = inspect(&path).expect("inspect");
            prop_assert!(st.finalised);
            prop_assert_eq!(st.info.frames, rep.frames);
            let bytes = std::fs::read(&path).expect("read");
            prop_assert_eq!(&bytes[80..], &full[80..80 + k / ba * ba]);
            if !rep.rf64 {
                prop_assert_eq!(hound_read(&bytes).1.len(), k / ba * usize::from(channels));
            }
        }
    }
}
