//! A recording's audio for playback: found where it is (local archive, object store or
//! spool), decrypted a chunk at a time, and offered as stored or converted. Every view answers
//! `read_at` on its own byte offsets, so an HTTP Range maps to the few chunks it touches.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::output::encode::Format;
use crate::seal::Keyring;
use crate::seal::reader::SealedReader;

/// Why audio cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Nothing of the recording is readable here (not stored, not in this spool).
    #[error("the recording's audio is not available on this recorder: {0}")]
    Unavailable(String),
    /// The requested conversion does not exist.
    #[error("{from} recordings cannot be served as {to}; ask for format=original or format=browser")]
    Conversion {
        /// The stored format.
        from: &'static str,
        /// What was asked.
        to: String,
    },
    /// The stored file cannot be decrypted or read.
    #[error("{0}")]
    Read(String),
    /// The recording is encrypted but this recorder has no keys.
    #[error("the recording is encrypted and this recorder has no keys to decrypt it ([keys])")]
    NoKeys,
}

/// Random access to bytes.
pub trait ReadAt: Send {
    /// Total length.
    fn len(&self) -> u64;
    /// Reads at `offset`; returns the bytes read (0 at the end).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, MediaError>;
    /// Whether there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fetches a byte range of a stored object (through the API's storage thread).
pub type FetchRange = Arc<dyn Fn(std::ops::Range<u64>) -> Result<Vec<u8>, String> + Send + Sync>;

/// Reads an object store's object by ranges, in blocks, through the storage thread.
pub struct RemoteObject {
    fetch: FetchRange,
    len: u64,
    pos: u64,
    block: Option<(u64, Vec<u8>)>,
}

const REMOTE_BLOCK: u64 = 256 * 1024;

impl RemoteObject {
    pub fn new(len: u64, fetch: FetchRange) -> RemoteObject {
        RemoteObject { fetch, len, pos: 0, block: None }
    }
}

impl Read for RemoteObject {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let index = self.pos / REMOTE_BLOCK;
        if self.block.as_ref().is_none_or(|(i, _)| *i != index) {
            let start = index * REMOTE_BLOCK;
            let end = (start + REMOTE_BLOCK).min(self.len);
            let bytes = (self.fetch)(start..end).map_err(std::io::Error::other)?;
            if bytes.len() as u64 != end - start {
                return Err(std::io::Error::other(format!(
                    "the store returned {} bytes for a range of {}",
                    bytes.len(),
                    end - start
                )));
            }
            self.block = Some((index, bytes));
        }
        let (_, data) = self.block.as_ref().expect("just filled");
        let within = (self.pos - index * REMOTE_BLOCK) as usize;
        let n = (data.len() - within).min(buf.len());
        buf[..n].copy_from_slice(&data[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RemoteObject {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if pos < 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

/// Any `Read + Seek` in the clear.
struct Plain<R: Read + Seek + Send> {
    r: R,
    len: u64,
}

impl<R: Read + Seek + Send> ReadAt for Plain<R> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, MediaError> {
        if offset >= self.len {
            return Ok(0);
        }
        self.r.seek(SeekFrom::Start(offset)).map_err(|e| MediaError::Read(e.to_string()))?;
        let want = ((self.len - offset) as usize).min(buf.len());
        let mut done = 0;
        while done < want {
            match self.r.read(&mut buf[done..want]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(MediaError::Read(e.to_string())),
            }
        }
        Ok(done)
    }
}

/// A sealed file, decrypted chunk by chunk.
struct Sealed<R: Read + Seek + Send> {
    r: SealedReader<R>,
    len: u64,
}

impl<R: Read + Seek + Send> ReadAt for Sealed<R> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, MediaError> {
        self.r.read_at(offset, buf).map_err(|e| MediaError::Read(e.to_string()))
    }
}

/// Where one audio file of a recording is.
#[derive(Debug, Clone)]
pub enum Location {
    /// A file on this host (local archive or spool).
    Local(PathBuf),
    /// An object in a store target (`primary` or `backup`), with its size.
    Remote { role: &'static str, key: String, bytes: u64 },
}

/// One audio file of a recording: its location, stored format and whether it is sealed.
#[derive(Debug, Clone)]
pub struct AudioFile {
    pub location: Location,
    pub format: Format,
    pub sealed: bool,
    /// The file's name (no directories), as stored.
    pub name: String,
}

/// The stored format of an audio file name (`<rid>.wav.cvs`, `<rid>.a.opus`), if audio.
pub fn format_of(name: &str) -> Option<(Format, bool)> {
    let (base, sealed) = match name.strip_suffix(".cvs") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let ext = base.rsplit('.').next()?;
    let format = match ext {
        "wav" => Format::Wav,
        "opus" => Format::Opus,
        "mp3" => Format::Mp3,
        _ => return None,
    };
    Some((format, sealed))
}

/// The recording's audio files, in leg order for separate layouts: from the store where it
/// landed (the local archive's files read directly), else from this recorder's spool. A spool
/// path is trusted only inside `spool` and only when its name is the recording's: a catalog
/// filled from a shared store names other recorders' spool paths too.
pub fn audio_files(
    summary: &Value,
    local_root: &dyn Fn(&'static str, &str) -> Option<PathBuf>,
    spool: &Path,
) -> Vec<AudioFile> {
    let rid = summary["recording_id"].as_str().unwrap_or_default();
    let mut out = Vec::new();
    for role in ["primary", "backup"] {
        let objects = summary["stored"][role]["objects"].as_array().cloned().unwrap_or_default();
        for o in &objects {
            let Some(key) = o["key"].as_str() else { continue };
            let name = key.rsplit('/').next().unwrap_or(key).to_string();
            let Some((format, sealed)) = format_of(&name) else { continue };
            if !name.starts_with(rid) {
                continue;
            }
            let location = match local_root(role, key) {
                Some(p) => Location::Local(p),
                None => Location::Remote { role, key: key.to_string(), bytes: o["bytes"].as_u64().unwrap_or(0) },
            };
            out.push(AudioFile { location, format, sealed, name });
        }
        if !out.is_empty() {
            return out;
        }
    }
    let mut paths: Vec<String> = Vec::new();
    if let Some(f) = summary["file"].as_str() {
        paths.push(f.to_string());
    }
    for leg in summary["legs"].as_array().into_iter().flatten() {
        if let Some(f) = leg["file"].as_str() {
            paths.push(f.to_string());
        }
    }
    let spool = std::fs::canonicalize(spool).unwrap_or_else(|_| spool.to_path_buf());
    for p in paths {
        let path = PathBuf::from(&p);
        let Ok(real) = std::fs::canonicalize(&path) else { continue };
        let name = real.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if !real.starts_with(&spool) || !name.starts_with(rid) {
            continue;
        }
        let Some((format, sealed)) = format_of(&name) else { continue };
        out.push(AudioFile { location: Location::Local(real), format, sealed, name });
    }
    out
}

/// Opens an audio file's plaintext for random access.
pub fn open(
    file: &AudioFile,
    keys: Option<&Keyring>,
    remote: &dyn Fn(&'static str, &str, u64) -> RemoteObject,
) -> Result<Box<dyn ReadAt>, MediaError> {
    match &file.location {
        Location::Local(path) => {
            // The file's name, not its path: the message may reach the client.
            let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let f = File::open(path).map_err(|e| MediaError::Read(format!("cannot open {name}: {e}")))?;
            let len = f.metadata().map_err(|e| MediaError::Read(e.to_string()))?.len();
            wrap(f, len, file.sealed, keys)
        }
        Location::Remote { role, key, bytes } => wrap(remote(role, key, *bytes), *bytes, file.sealed, keys),
    }
}

fn wrap<R: Read + Seek + Send + 'static>(
    r: R,
    len: u64,
    sealed: bool,
    keys: Option<&Keyring>,
) -> Result<Box<dyn ReadAt>, MediaError> {
    if !sealed {
        return Ok(Box::new(Plain { r, len }));
    }
    let keys = keys.ok_or(MediaError::NoKeys)?;
    let r = SealedReader::open(r, keys).map_err(|e| MediaError::Read(e.to_string()))?;
    let len = r
        .plaintext_len()
        .ok_or_else(|| MediaError::Read("the sealed file was not finalised (a crash's file awaits recovery)".into()))?;
    Ok(Box::new(Sealed { r, len }))
}

/// What a WAV file's header says, as far as playback needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavLayout {
    /// 1 PCM, 6 A-law, 7 µ-law.
    pub format_tag: u16,
    pub channels: u16,
    pub sample_rate: u32,
    pub bits: u16,
    /// Offset of the first sample.
    pub data_offset: u64,
    /// Sample bytes.
    pub data_len: u64,
}

/// Reads a WAV (RIFF or RF64) header from `r`.
pub fn wav_layout(r: &mut dyn ReadAt) -> Result<WavLayout, MediaError> {
    let bad = |why: &str| MediaError::Read(format!("not a WAV file this recorder wrote: {why}"));
    let mut head = vec![0u8; 4096.min(r.len() as usize)];
    let n = r.read_at(0, &mut head)?;
    head.truncate(n);
    if head.len() < 12 || !(head.starts_with(b"RIFF") || head.starts_with(b"RF64")) || &head[8..12] != b"WAVE" {
        return Err(bad("no RIFF/RF64 WAVE header"));
    }
    let mut at = 12usize;
    let (mut fmt, mut ds64_data) = (None, None);
    while at + 8 <= head.len() {
        let id = &head[at..at + 4];
        let size = u32::from_le_bytes(head[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = at + 8;
        match id {
            b"ds64" if body + 16 <= head.len() => {
                ds64_data = Some(u64::from_le_bytes(head[body + 8..body + 16].try_into().unwrap()));
            }
            b"fmt " if body + 16 <= head.len() => {
                let le16 = |o: usize| u16::from_le_bytes(head[body + o..body + o + 2].try_into().unwrap());
                let mut tag = le16(0);
                if tag == 0xFFFE && body + 26 <= head.len() {
                    tag = le16(24);
                }
                fmt = Some((tag, le16(2), u32::from_le_bytes(head[body + 4..body + 8].try_into().unwrap()), le16(14)));
            }
            b"data" => {
                let (tag, channels, sample_rate, bits) = fmt.ok_or_else(|| bad("data before fmt"))?;
                // What a recording can be: a header claiming more is damage (found by fuzzing:
                // it overflowed the PCM header's byte rate).
                if !(1..=64).contains(&channels) || !(1..=384_000).contains(&sample_rate) || ![8, 16].contains(&bits) {
                    return Err(bad(&format!("{channels} channels, {sample_rate} Hz, {bits}-bit")));
                }
                let available = r.len().saturating_sub(body as u64);
                let declared = if size == u32::MAX as usize { ds64_data.unwrap_or(available) } else { size as u64 };
                return Ok(WavLayout {
                    format_tag: tag,
                    channels,
                    sample_rate,
                    bits,
                    data_offset: body as u64,
                    data_len: declared.min(available),
                });
            }
            _ => {}
        }
        at = body + size + (size & 1);
    }
    Err(bad("no data chunk in its first 4 KiB"))
}

/// A G.711 WAV seen as 16-bit PCM WAV: every byte offset maps to the source's by arithmetic.
pub struct G711AsPcm {
    src: Box<dyn ReadAt>,
    layout: WavLayout,
    table: &'static [i16; 256],
    header: Vec<u8>,
}

impl G711AsPcm {
    pub fn new(src: Box<dyn ReadAt>, layout: WavLayout) -> G711AsPcm {
        let table =
            if layout.format_tag == 6 { &crate::core::g711::ALAW_TABLE } else { &crate::core::g711::ULAW_TABLE };
        let header = pcm_wav_header(layout.channels, layout.sample_rate, layout.data_len * 2);
        G711AsPcm { src, layout, table, header }
    }
}

/// A 44-byte PCM WAV header (sizes saturate at 4 GiB, which players read as "to the end").
pub fn pcm_wav_header(channels: u16, rate: u32, data_len: u64) -> Vec<u8> {
    let data = u32::try_from(data_len).unwrap_or(u32::MAX);
    let riff = u32::try_from(data_len + 36).unwrap_or(u32::MAX);
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&riff.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    h.extend_from_slice(&(channels * 2).to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data.to_le_bytes());
    h
}

impl ReadAt for G711AsPcm {
    fn len(&self) -> u64 {
        self.header.len() as u64 + self.layout.data_len * 2
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, MediaError> {
        let mut done = 0usize;
        let mut pos = offset;
        let hl = self.header.len() as u64;
        if pos < hl {
            let n = ((hl - pos) as usize).min(buf.len());
            buf[..n].copy_from_slice(&self.header[pos as usize..pos as usize + n]);
            done += n;
            pos += n as u64;
        }
        let end = self.len().min(pos + (buf.len() - done) as u64);
        let mut src = Vec::new();
        while pos < end {
            // Output bytes [pos, end) come from samples first..=last of the source.
            let first = (pos - hl) / 2;
            let last = ((end - 1 - hl) / 2).min(first + 32 * 1024);
            src.resize((last - first + 1) as usize, 0);
            let got = self.src.read_at(self.layout.data_offset + first, &mut src)?;
            if got == 0 {
                break;
            }
            let mut skip = ((pos - hl) % 2) as usize;
            for &b in &src[..got] {
                for &byte in &self.table[b as usize].to_le_bytes()[skip..] {
                    if pos == end {
                        break;
                    }
                    buf[done] = byte;
                    done += 1;
                    pos += 1;
                }
                skip = 0;
            }
        }
        Ok(done)
    }
}

/// Bytes held in memory (a transcode).
pub struct InMemory(pub Arc<Vec<u8>>);

impl ReadAt for InMemory {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, MediaError> {
        let data = &self.0;
        if offset >= data.len() as u64 {
            return Ok(0);
        }
        let n = (data.len() - offset as usize).min(buf.len());
        buf[..n].copy_from_slice(&data[offset as usize..offset as usize + n]);
        Ok(n)
    }
}

/// Encodes a WAV source (PCM or G.711) into Opus or MP3, whole, in memory.
pub fn transcode(src: &mut dyn ReadAt, to: Format) -> Result<Vec<u8>, MediaError> {
    let layout = wav_layout(src)?;
    let table: Option<&[i16; 256]> = match (layout.format_tag, layout.bits) {
        (1, 16) => None,
        (6, 8) => Some(&crate::core::g711::ALAW_TABLE),
        (7, 8) => Some(&crate::core::g711::ULAW_TABLE),
        (tag, bits) => return Err(MediaError::Read(format!("WAV format {tag} with {bits} bits is not transcoded"))),
    };
    let mut enc = crate::output::encode::StreamEncoder::new(to, layout.sample_rate, layout.channels)
        .map_err(|e| MediaError::Read(e.to_string()))?;
    let mut out = enc.head().to_vec();
    let bytes_per_sample = if table.is_some() { 1 } else { 2 };
    let frame_bytes = u64::from(layout.channels) * bytes_per_sample;
    let block = (frame_bytes * 4800) as usize;
    let mut buf = vec![0u8; block];
    let mut samples: Vec<i16> = Vec::with_capacity(block);
    let mut pos = 0u64;
    while pos < layout.data_len {
        let want = ((layout.data_len - pos) as usize).min(block);
        let got = src.read_at(layout.data_offset + pos, &mut buf[..want])?;
        if got == 0 {
            break;
        }
        let whole = got - got % frame_bytes as usize;
        samples.clear();
        match table {
            Some(t) => samples.extend(buf[..whole].iter().map(|&b| t[b as usize])),
            None => samples.extend(buf[..whole].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]))),
        }
        enc.write(&samples, &mut out).map_err(|e| MediaError::Read(e.to_string()))?;
        pos += whole as u64;
        if whole == 0 {
            break;
        }
    }
    let head = enc.finish(&mut out).map_err(|e| MediaError::Read(e.to_string()))?;
    // The final head replaces the provisional one (MP3's Info frame; Ogg's is unchanged).
    out[..head.len()].copy_from_slice(&head);
    Ok(out)
}

/// Transcodes kept for seeking, bounded in bytes (oldest dropped first).
pub struct TranscodeCache {
    max_bytes: usize,
    entries: Mutex<Vec<(String, Arc<Vec<u8>>)>>,
}

impl TranscodeCache {
    pub fn new(max_bytes: usize) -> TranscodeCache {
        TranscodeCache { max_bytes, entries: Mutex::new(Vec::new()) }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Vec<u8>>> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let i = e.iter().position(|(k, _)| k == key)?;
        let hit = e.remove(i);
        let data = hit.1.clone();
        e.push(hit);
        Some(data)
    }

    pub fn put(&self, key: String, data: Arc<Vec<u8>>) {
        if data.len() > self.max_bytes {
            return;
        }
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|(k, _)| *k != key);
        e.push((key, data));
        while e.iter().map(|(_, d)| d.len()).sum::<usize>() > self.max_bytes {
            e.remove(0);
        }
    }
}

/// The MIME type browsers expect for a format.
pub fn content_type(format: Format) -> &'static str {
    match format {
        Format::Wav | Format::WavUlaw | Format::WavAlaw => "audio/wav",
        Format::Opus => "audio/ogg",
        Format::Mp3 => "audio/mpeg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(b: Vec<u8>) -> Box<dyn ReadAt> {
        Box::new(InMemory(Arc::new(b)))
    }

    fn ulaw_wav(samples: &[u8], channels: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&(4 + 26 + 8 + samples.len() as u32).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&18u32.to_le_bytes());
        h.extend_from_slice(&7u16.to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&8000u32.to_le_bytes());
        h.extend_from_slice(&(8000 * u32::from(channels)).to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&8u16.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&(samples.len() as u32).to_le_bytes());
        h.extend_from_slice(samples);
        h
    }

    #[test]
    fn g711_as_pcm_reads_any_range_the_same() {
        let samples: Vec<u8> = (0..1001u32).map(|i| (i * 37 % 256) as u8).collect();
        let src = mem(ulaw_wav(&samples, 1));
        let mut src2 = mem(ulaw_wav(&samples, 1));
        let layout = wav_layout(&mut *src2).unwrap();
        assert_eq!((layout.format_tag, layout.channels, layout.data_len), (7, 1, 1001));
        let mut view = G711AsPcm::new(src, layout);
        assert_eq!(view.len(), 44 + 2002);
        let mut whole = vec![0u8; view.len() as usize];
        assert_eq!(view.read_at(0, &mut whole).unwrap(), whole.len());
        assert_eq!(&whole[..4], b"RIFF");
        for (i, &b) in samples.iter().enumerate() {
            let v = i16::from_le_bytes([whole[44 + 2 * i], whole[45 + 2 * i]]);
            assert_eq!(v, crate::core::g711::ULAW_TABLE[b as usize]);
        }
        // Odd offsets and lengths, across the header's end and at the very end.
        for (off, len) in [(0, 1), (43, 3), (45, 1), (100, 77), (2044, 2), (2045, 10), (2046, 5)] {
            let mut buf = vec![0u8; len];
            let n = view.read_at(off, &mut buf).unwrap();
            let end = (off as usize + len).min(whole.len());
            assert_eq!(&buf[..n], &whole[off as usize..end], "at {off} len {len}");
        }
    }

    #[test]
    fn a_header_claiming_impossible_audio_is_refused() {
        // Found by fuzzing: 60,000 channels at 4 GHz overflowed the PCM header's byte rate.
        let mut w = ulaw_wav(&[1, 2, 3, 4], 1);
        w[22..24].copy_from_slice(&60000u16.to_le_bytes());
        w[24..28].copy_from_slice(&4_000_000_000u32.to_le_bytes());
        let e = wav_layout(&mut *mem(w)).unwrap_err();
        assert!(e.to_string().contains("60000 channels"), "{e}");
    }

    #[test]
    fn audio_names_map_to_formats() {
        assert_eq!(format_of("01K.wav.cvs"), Some((Format::Wav, true)));
        assert_eq!(format_of("01K.a.opus"), Some((Format::Opus, false)));
        assert_eq!(format_of("01K.mp3.cvs"), Some((Format::Mp3, true)));
        assert_eq!(format_of("01K.json.cvs"), None);
        assert_eq!(format_of("01K.json"), None);
    }

    #[test]
    fn cache_is_bounded_and_keeps_recent() {
        let c = TranscodeCache::new(10);
        c.put("a".into(), Arc::new(vec![0; 4]));
        c.put("b".into(), Arc::new(vec![0; 4]));
        assert!(c.get("a").is_some());
        c.put("c".into(), Arc::new(vec![0; 4]));
        assert!(c.get("b").is_none(), "least recently used goes first");
        assert!(c.get("a").is_some() && c.get("c").is_some());
        c.put("huge".into(), Arc::new(vec![0; 11]));
        assert!(c.get("huge").is_none());
    }
}
