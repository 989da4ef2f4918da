//! Encryption at rest: sealed files, their keys, and tamper evidence.
//!
//! A sealed file is a plaintext file (a recording's audio container, or its metadata) cut into
//! chunks, each sealed with AES-256-GCM under a random per-file data key, STREAM-style: the
//! nonce is a random prefix, the chunk's counter and a byte saying which kind of record it is,
//! and every chunk authenticates the file's header. The data key is wrapped by a key-encryption
//! key (KEK) with an id. At finalisation a signed seal record (Ed25519) holds SHA-256 digests
//! of the plaintext and of the sealed bytes. `docs/recording-format.md` gives every byte.
//!
//! - [`format`]: the byte layout.
//! - [`keys`]: KEKs, signing keys, key files, key directories and systemd credentials.
//! - [`writer`]: [`SealWriter`], streaming.
//! - [`reader`]: [`SealedReader`]: random access, verification, recovery of a crash's prefix.
//!
//! Only sealing and opening live here; which plaintext container a file holds (WAV, JSON) is
//! the caller's business, except that a reader hands back the container head it finds.

#![forbid(unsafe_code)]

pub mod format;
pub mod keys;
pub mod reader;
pub mod setup;
pub mod writer;

use std::path::PathBuf;

pub use format::{Container, Content, Header, SealRecord};
pub use keys::{Kek, KeySource, Keyring, PublicKey, SigningKey};
pub use reader::{Recovery, SealedReader, Verified};
pub use writer::{SealParams, SealWriter};

/// Why a sealed file cannot be written, opened or trusted. Each kind of damage has its own
/// variant (and [`SealError::kind`] name), so an operator can tell a wrong key from tampering.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed callvault file (no CVLTSEAL magic)")]
    NotSealed,
    #[error("sealed format version {0} is not supported by this callvault (it reads version 1)")]
    UnsupportedVersion(u16),
    #[error("the header is damaged: {0}")]
    HeaderDamaged(String),
    #[error("the header was altered: it does not authenticate under its data key")]
    HeaderAltered,
    #[error("KEK '{id}' is not available (keys loaded: {}); add its key file to the key directory or credentials", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownKek { id: String, known: Vec<String> },
    #[error("wrong key: the KEK loaded as '{id}' is not the key this file was sealed with (fingerprints differ)")]
    WrongKek { id: String },
    #[error("chunk {index} (at byte {offset}) was altered: it does not authenticate")]
    ChunkAltered { index: u64, offset: u64 },
    #[error("chunk {index} is out of place: it is chunk {found} of this file (chunks reordered or swapped)")]
    ChunkOutOfOrder { index: u64, found: u32 },
    #[error("chunk {index} comes from another sealed file (spliced in)")]
    ChunkFromOtherFile { index: u64 },
    #[error("the {} container head was altered: it does not authenticate", if *final_head { "final" } else { "provisional" })]
    HeadAltered { final_head: bool },
    #[error(
        "not finalised (a crash, or the end was cut off): {recovered_bytes} bytes in {chunks} chunks authenticate; `callvault decrypt --recover` writes them"
    )]
    NotFinalised { recovered_bytes: u64, chunks: u64 },
    #[error("truncated or extended: {0}")]
    Truncated(String),
    #[error("the seal record is damaged: {0}")]
    SealRecordDamaged(String),
    #[error("the {which} digest does not match the signed seal record (altered after sealing)")]
    DigestMismatch { which: &'static str },
    #[error("the seal record's signature is invalid (record altered after signing)")]
    SignatureInvalid,
    #[error("signed by {signer}, which is not a trusted signing key; trusted: {}. Either it was re-signed by someone else, or it is an earlier signing key of this recorder: then trust its <id>.pub (--public-key FILE, [keys] trusted_public_keys, or a callvault.signing-public.<id> credential)", if trusted.is_empty() { "none".to_string() } else { trusted.join(", ") })]
    SignatureUntrusted { signer: String, trusted: Vec<String> },
    #[error("cannot {action}{}: {source}", if path.as_os_str().is_empty() { String::new() } else { format!(" {}", path.display()) })]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("key file {} has mode {mode:04o}: group or others may read it; run `chmod 600 {}`", path.display(), path.display())]
    KeyFileMode { path: PathBuf, mode: u32 },
    #[error("key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("no active KEK in {}: {reason}", dir.display())]
    NoActiveKek { dir: PathBuf, reason: String },
    #[error("no signing key: {0}")]
    NoSigningKey(String),
    #[error("the file is intact but not under its own name: {0} (files swapped or renamed)")]
    NameMismatch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the writer failed earlier and cannot continue")]
    WriterFailed,
}

impl SealError {
    /// A stable name for scripts (`--json`'s `error_kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            SealError::NotSealed => "not_sealed",
            SealError::UnsupportedVersion(_) => "unsupported_version",
            SealError::HeaderDamaged(_) => "header_damaged",
            SealError::HeaderAltered => "header_altered",
            SealError::UnknownKek { .. } => "unknown_kek",
            SealError::WrongKek { .. } => "wrong_kek",
            SealError::ChunkAltered { .. } => "chunk_altered",
            SealError::ChunkOutOfOrder { .. } => "chunk_out_of_order",
            SealError::ChunkFromOtherFile { .. } => "chunk_from_other_file",
            SealError::HeadAltered { .. } => "head_altered",
            SealError::NotFinalised { .. } => "not_finalised",
            SealError::Truncated(_) => "truncated",
            SealError::SealRecordDamaged(_) => "seal_record_damaged",
            SealError::DigestMismatch { .. } => "digest_mismatch",
            SealError::SignatureInvalid => "signature_invalid",
            SealError::SignatureUntrusted { .. } => "signature_untrusted",
            SealError::Io { .. } => "io",
            SealError::KeyFileMode { .. } => "key_file_mode",
            SealError::KeyFile { .. } => "key_file",
            SealError::NoActiveKek { .. } => "no_active_kek",
            SealError::NoSigningKey(_) => "no_signing_key",
            SealError::NameMismatch(_) => "name_mismatch",
            SealError::Invalid(_) => "invalid",
            SealError::WriterFailed => "writer_failed",
        }
    }

    pub fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> SealError {
        SealError::Io { action, path: path.to_path_buf(), source }
    }

    /// The reader of our output went away (a closed pipe).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, SealError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// SHA-256 of `parts`, in order.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        c.update(p);
    }
    c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Fills `buf` from the system's CSPRNG.
pub fn random(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("the system random number generator failed");
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
