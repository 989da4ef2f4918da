//! The sealed file's byte layout (see `docs/recording-format.md`): a plain header, chunk records
//! and, once finalised, a signed seal record. Encoding and decoding only; no keys, no I/O.

use super::SealError;

/// First bytes of every sealed file.
pub const MAGIC: &[u8; 8] = b"CVLTSEAL";
/// First bytes of the seal record (the last [`SEAL_RECORD_LEN`] bytes of a finalised file).
pub const SEAL_MAGIC: &[u8; 8] = b"CVLTDONE";
/// Format version written and read.
pub const VERSION: u16 = 1;
/// `cipher` byte: AES-256-GCM in the STREAM construction.
pub const CIPHER_AES256GCM_STREAM: u8 = 1;
/// `key_wrap` byte: AES-256 key wrap (RFC 3394 / NIST SP 800-38F KW).
pub const WRAP_AES256_KW: u8 = 1;
/// Length of the wrapped 32-byte data key (KW adds 8 bytes).
pub const WRAPPED_KEY_LEN: usize = 40;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Per-chunk clear prefix: the chunk's index and its file's tag (for diagnostics; also
/// authenticated).
pub const CHUNK_PREFIX_LEN: usize = 8;
/// Bytes a chunk record adds to its plaintext.
pub const CHUNK_OVERHEAD: usize = CHUNK_PREFIX_LEN + TAG_LEN;
/// Smallest and largest chunk sizes accepted.
pub const MIN_CHUNK: u32 = 1024;
pub const MAX_CHUNK: u32 = 1 << 20;
/// Default plaintext bytes per chunk: what a crash can lose at most (as the plain writer's
/// 8 KiB buffer), 0.26 s of stereo 8 kHz audio.
pub const DEFAULT_CHUNK: u32 = 8 * 1024;
/// Most container-head bytes a file may carry.
pub const MAX_HEAD: u32 = 4096;
/// Longest key id.
pub const MAX_KEY_ID: usize = 64;
/// Longest clear index.
pub const MAX_INDEX: usize = 4096;
/// Size of the seal record.
pub const SEAL_RECORD_LEN: usize = 224;
/// Bytes of the seal record covered by the signature.
pub const SIGNED_LEN: usize = 160;
/// Domain separation for the signature.
pub const SIGNATURE_CONTEXT: &[u8] = b"callvault seal record v1\0";

/// Chunk indices (and nonce counters) of the two container-head records; body chunks count from 0
/// and must stay below [`HEADER_TAG_COUNTER`].
pub const PROVISIONAL_HEAD_INDEX: u32 = 0xFFFF_FFFE;
pub const FINAL_HEAD_INDEX: u32 = 0xFFFF_FFFF;
/// Nonce counter of the header tag.
pub const HEADER_TAG_COUNTER: u32 = 0xFFFF_FFFD;

/// The last byte of a nonce: which kind of record it seals. Together with the counter this makes
/// every nonce of a file distinct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NonceKind {
    /// A body chunk that is not the last.
    Body = 0,
    /// The last body chunk.
    LastBody = 1,
    /// A container head (provisional or final; the counter tells them apart).
    Head = 2,
    /// The header tag.
    Header = 3,
}

/// nonce = prefix (7 bytes) ‖ counter (u32 BE) ‖ kind (1 byte).
pub fn nonce(prefix: &[u8; 7], counter: u32, kind: NonceKind) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = kind as u8;
    n
}

/// What a sealed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// A recording's audio file.
    Audio,
    /// A recording's metadata (JSON).
    Metadata,
}

impl Content {
    fn code(self) -> u8 {
        match self {
            Content::Audio => 1,
            Content::Metadata => 2,
        }
    }
    fn from_code(c: u8) -> Option<Content> {
        match c {
            1 => Some(Content::Audio),
            2 => Some(Content::Metadata),
            _ => None,
        }
    }
    /// For messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Content::Audio => "audio",
            Content::Metadata => "metadata",
        }
    }
}

/// The plaintext's container: how a reader completes it when recovering a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// callvault's 80-byte-header WAV (16-bit PCM, RIFF/RF64): the head is the WAV header.
    Wav,
    /// JSON text, no head.
    Json,
    /// Ogg/Opus: the head is the OpusHead and OpusTags pages; any prefix of whole pages plays.
    Ogg,
    /// MP3 frames, no head; any prefix of whole frames plays.
    Mp3,
}

impl Container {
    fn code(self) -> u8 {
        match self {
            Container::Wav => 1,
            Container::Json => 2,
            Container::Ogg => 3,
            Container::Mp3 => 4,
        }
    }
    fn from_code(c: u8) -> Option<Container> {
        match c {
            1 => Some(Container::Wav),
            2 => Some(Container::Json),
            3 => Some(Container::Ogg),
            4 => Some(Container::Mp3),
            _ => None,
        }
    }
    /// For messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Container::Wav => "wav",
            Container::Json => "json",
            Container::Ogg => "ogg",
            Container::Mp3 => "mp3",
        }
    }
}

/// The clear header of a sealed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub content: Content,
    pub container: Container,
    /// Plaintext bytes per body chunk.
    pub chunk_size: u32,
    /// Bytes of the container head (0: none).
    pub head_len: u32,
    /// The recording's ULID.
    pub recording_id: ulid::Ulid,
    /// When this file was sealed, ms since the Unix epoch.
    pub created_ms: i64,
    pub nonce_prefix: [u8; 7],
    /// Fingerprint of the KEK that wrapped the data key (tells a wrong key from damage).
    pub kek_fingerprint: [u8; 8],
    pub wrapped_key: [u8; WRAPPED_KEY_LEN],
    pub key_id: String,
    /// What an index may read without a key: recording id and times, never personal data.
    pub index: String,
}

/// Offsets of the header's variable part.
const FIXED_LEN: usize = 105;

impl Header {
    /// The header's bytes, without its tag (the tag is computed over these).
    pub fn encode_untagged(&self) -> Vec<u8> {
        let total = self.encoded_len();
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&(total as u16).to_be_bytes());
        b.push(CIPHER_AES256GCM_STREAM);
        b.push(WRAP_AES256_KW);
        b.push(self.content.code());
        b.push(self.container.code());
        b.extend_from_slice(&self.chunk_size.to_be_bytes());
        b.extend_from_slice(&self.head_len.to_be_bytes());
        b.extend_from_slice(&self.recording_id.0.to_be_bytes());
        b.extend_from_slice(&self.created_ms.to_be_bytes());
        b.extend_from_slice(&self.nonce_prefix);
        b.push(0);
        b.extend_from_slice(&self.kek_fingerprint);
        b.extend_from_slice(&self.wrapped_key);
        b.push(self.key_id.len() as u8);
        b.extend_from_slice(self.key_id.as_bytes());
        b.extend_from_slice(&(self.index.len() as u16).to_be_bytes());
        b.extend_from_slice(self.index.as_bytes());
        debug_assert_eq!(b.len() + TAG_LEN, total);
        b
    }

    /// Total header length on disk, tag included.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.key_id.len() + 2 + self.index.len() + TAG_LEN
    }

    /// Checks what the writer is about to put in a header.
    pub fn check(&self) -> Result<(), SealError> {
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) {
            return Err(SealError::Invalid(format!(
                "chunk size {} is outside {MIN_CHUNK}..={MAX_CHUNK} bytes",
                self.chunk_size
            )));
        }
        if self.head_len > MAX_HEAD {
            return Err(SealError::Invalid(format!("container head of {} bytes exceeds {MAX_HEAD}", self.head_len)));
        }
        super::keys::check_key_id(&self.key_id)?;
        if self.index.len() > MAX_INDEX {
            return Err(SealError::Invalid(format!("clear index of {} bytes exceeds {MAX_INDEX}", self.index.len())));
        }
        Ok(())
    }

    /// Parses a header from the start of a file; returns it and its total length (tag included).
    /// `bytes` must hold at least the whole header (the caller reads [`Header::peek_len`] first).
    pub fn decode(bytes: &[u8]) -> Result<(Header, usize), SealError> {
        let damaged = |what: &str| SealError::HeaderDamaged(what.to_string());
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(SealError::NotSealed);
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(SealError::UnsupportedVersion(version));
        }
        let total = usize::from(u16::from_be_bytes([bytes[10], bytes[11]]));
        if total < FIXED_LEN + 2 + TAG_LEN || bytes.len() < total {
            return Err(damaged("its length field does not fit the file"));
        }
        let b = &bytes[..total];
        if b[12] != CIPHER_AES256GCM_STREAM {
            return Err(damaged(&format!("unknown cipher {}", b[12])));
        }
        if b[13] != WRAP_AES256_KW {
            return Err(damaged(&format!("unknown key wrap {}", b[13])));
        }
        let content = Content::from_code(b[14]).ok_or_else(|| damaged(&format!("unknown content {}", b[14])))?;
        let container = Container::from_code(b[15]).ok_or_else(|| damaged(&format!("unknown container {}", b[15])))?;
        let u32_at = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let chunk_size = u32_at(16);
        let head_len = u32_at(20);
        let recording_id = ulid::Ulid(u128::from_be_bytes(b[24..40].try_into().unwrap()));
        let created_ms = i64::from_be_bytes(b[40..48].try_into().unwrap());
        let nonce_prefix: [u8; 7] = b[48..55].try_into().unwrap();
        let kek_fingerprint: [u8; 8] = b[56..64].try_into().unwrap();
        let wrapped_key: [u8; WRAPPED_KEY_LEN] = b[64..104].try_into().unwrap();
        let id_len = usize::from(b[104]);
        let at = FIXED_LEN + id_len;
        if at + 2 + TAG_LEN > total {
            return Err(damaged("its key id runs past its end"));
        }
        let key_id =
            std::str::from_utf8(&b[FIXED_LEN..at]).map_err(|_| damaged("its key id is not UTF-8"))?.to_string();
        let index_len = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
        if at + 2 + index_len + TAG_LEN != total {
            return Err(damaged("its clear index does not end where the header does"));
        }
        let index = std::str::from_utf8(&b[at + 2..at + 2 + index_len])
            .map_err(|_| damaged("its index is not UTF-8"))?
            .to_string();
        let h = Header {
            content,
            container,
            chunk_size,
            head_len,
            recording_id,
            created_ms,
            nonce_prefix,
            kek_fingerprint,
            wrapped_key,
            key_id,
            index,
        };
        h.check().map_err(|e| damaged(&e.to_string()))?;
        Ok((h, total))
    }

    /// The total header length, from its first 12 bytes.
    pub fn peek_len(first: &[u8]) -> Result<usize, SealError> {
        if first.len() < 12 || &first[..8] != MAGIC {
            return Err(SealError::NotSealed);
        }
        let version = u16::from_be_bytes([first[8], first[9]]);
        if version != VERSION {
            return Err(SealError::UnsupportedVersion(version));
        }
        Ok(usize::from(u16::from_be_bytes([first[10], first[11]])))
    }

    /// Bytes of a head record (0 when the container has no head).
    pub fn head_record_len(&self) -> u64 {
        if self.head_len == 0 { 0 } else { u64::from(self.head_len) + CHUNK_OVERHEAD as u64 }
    }

    /// Bytes of a full body chunk record.
    pub fn chunk_record_len(&self) -> u64 {
        u64::from(self.chunk_size) + CHUNK_OVERHEAD as u64
    }
}

/// Flags in the seal record.
pub const FLAG_RECOVERED: u16 = 1;

/// The signed record that ends a finalised file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealRecord {
    pub flags: u16,
    pub finalised_ms: i64,
    /// Plaintext bytes (container head and body).
    pub plaintext_len: u64,
    /// SHA-256 of the container head as finalised (e.g. the WAV header; zeros when none).
    pub head_sha256: [u8; 32],
    /// SHA-256 of the body: the audio data after the head (for WAV, the samples), or the whole
    /// JSON text. Streamed while writing, so finalisation never reads the file back.
    pub body_sha256: [u8; 32],
    /// SHA-256 of every byte of the sealed file before this record.
    pub sealed_sha256: [u8; 32],
    /// The Ed25519 key that signed.
    pub signer: [u8; 32],
    pub signature: [u8; 64],
}

impl SealRecord {
    /// The bytes the signature covers (everything but the signature).
    pub fn signed_part(&self) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        b[..8].copy_from_slice(SEAL_MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        // 12..16 reserved
        b[16..24].copy_from_slice(&self.finalised_ms.to_be_bytes());
        b[24..32].copy_from_slice(&self.plaintext_len.to_be_bytes());
        b[32..64].copy_from_slice(&self.head_sha256);
        b[64..96].copy_from_slice(&self.body_sha256);
        b[96..128].copy_from_slice(&self.sealed_sha256);
        b[128..160].copy_from_slice(&self.signer);
        b
    }

    /// The message signed: a context string, then the signed part.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = SIGNATURE_CONTEXT.to_vec();
        m.extend_from_slice(&self.signed_part());
        m
    }

    pub fn encode(&self) -> [u8; SEAL_RECORD_LEN] {
        let mut b = [0u8; SEAL_RECORD_LEN];
        b[..SIGNED_LEN].copy_from_slice(&self.signed_part());
        b[SIGNED_LEN..].copy_from_slice(&self.signature);
        b
    }

    /// Whether `b` (the last [`SEAL_RECORD_LEN`] bytes of a file) looks like a seal record.
    pub fn present(b: &[u8]) -> bool {
        b.len() == SEAL_RECORD_LEN && &b[..8] == SEAL_MAGIC
    }

    pub fn decode(b: &[u8]) -> Result<SealRecord, SealError> {
        if !Self::present(b) {
            return Err(SealError::NotFinalised { recovered_bytes: 0, chunks: 0 });
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(SealError::SealRecordDamaged(format!("unknown version {version}")));
        }
        if b[12..16] != [0; 4] {
            return Err(SealError::SealRecordDamaged("its reserved bytes are not zero".into()));
        }
        Ok(SealRecord {
            flags: u16::from_be_bytes([b[10], b[11]]),
            finalised_ms: i64::from_be_bytes(b[16..24].try_into().unwrap()),
            plaintext_len: u64::from_be_bytes(b[24..32].try_into().unwrap()),
            head_sha256: b[32..64].try_into().unwrap(),
            body_sha256: b[64..96].try_into().unwrap(),
            sealed_sha256: b[96..128].try_into().unwrap(),
            signer: b[128..160].try_into().unwrap(),
            signature: b[160..224].try_into().unwrap(),
        })
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex of exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            content: Content::Audio,
            container: Container::Wav,
            chunk_size: DEFAULT_CHUNK,
            head_len: 80,
            recording_id: ulid::Ulid(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            created_ms: 1_796_332_977_123,
            nonce_prefix: [1, 2, 3, 4, 5, 6, 7],
            kek_fingerprint: [9; 8],
            wrapped_key: [7; WRAPPED_KEY_LEN],
            key_id: "kek-20261204-0001".into(),
            index: "{\"recording_id\":\"x\"}".into(),
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        let mut bytes = h.encode_untagged();
        bytes.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(bytes.len(), h.encoded_len());
        assert_eq!(Header::peek_len(&bytes).unwrap(), bytes.len());
        let (back, len) = Header::decode(&bytes).unwrap();
        assert_eq!((back, len), (h, bytes.len()));
    }

    #[test]
    fn nonces_of_a_file_are_distinct_by_kind_and_counter() {
        let p = [0; 7];
        assert_ne!(nonce(&p, 3, NonceKind::Body), nonce(&p, 3, NonceKind::LastBody));
        assert_ne!(nonce(&p, PROVISIONAL_HEAD_INDEX, NonceKind::Head), nonce(&p, FINAL_HEAD_INDEX, NonceKind::Head));
        assert_eq!(&nonce(&p, 0x0102_0304, NonceKind::Header)[7..], &[1, 2, 3, 4, 3]);
    }

    #[test]
    fn damaged_headers_are_refused_with_a_reason() {
        let h = header();
        let mut bytes = h.encode_untagged();
        bytes.extend_from_slice(&[0; TAG_LEN]);
        assert!(matches!(Header::decode(b"RIFF\0\0\0\0WAVEfmt "), Err(SealError::NotSealed)));
        let mut v = bytes.clone();
        v[9] = 9;
        assert!(matches!(Header::decode(&v), Err(SealError::UnsupportedVersion(9))));
        let mut v = bytes.clone();
        v[12] = 7;
        assert!(matches!(Header::decode(&v), Err(SealError::HeaderDamaged(m)) if m.contains("cipher")));
        let mut v = bytes.clone();
        v[104] = 200;
        assert!(matches!(Header::decode(&v), Err(SealError::HeaderDamaged(_))));
        assert!(matches!(Header::decode(&bytes[..40]), Err(SealError::HeaderDamaged(_))));
    }

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex::<4>("0001ABff"), Some(b));
        assert_eq!(unhex::<4>("0001ab"), None);
        assert_eq!(unhex::<1>("zz"), None);
    }
}
