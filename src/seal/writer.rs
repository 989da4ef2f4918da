//! Streaming sealing: plaintext in, sealed records out, each written with one `write`.
//!
//! Nonce discipline (the reason for this shape): every file gets a fresh random data key, and
//! within a file each (counter, kind) pair is sealed exactly once by this writer — body chunks
//! count up from 0, the provisional head is sealed when the file is created and the final head
//! when it is finalised, each under its own counter. Nothing is ever rewritten in place; a file
//! left unfinished by a crash is not appended to but re-sealed under a new data key into a new
//! file (see `output::sealed`).

use std::io::Write;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest::{Context, SHA256};
use zeroize::Zeroizing;

use super::format::{
    self, CHUNK_PREFIX_LEN, Container, Content, FINAL_HEAD_INDEX, HEADER_TAG_COUNTER, Header, NonceKind,
    PROVISIONAL_HEAD_INDEX, SealRecord, TAG_LEN,
};
use super::keys::{Kek, SigningKey};
use super::{SealError, random};

/// What a new sealed file is.
#[derive(Debug, Clone)]
pub struct SealParams {
    pub content: Content,
    pub container: Container,
    /// Plaintext bytes per chunk ([`format::DEFAULT_CHUNK`] unless there is a reason).
    pub chunk_size: u32,
    pub recording_id: ulid::Ulid,
    pub created_ms: i64,
    /// Clear index fields (JSON; recording id and times only).
    pub index: String,
}

/// The AEAD key of one file and what every record of it authenticates.
pub(crate) struct FileKey {
    key: LessSafeKey,
    prefix: [u8; 7],
    /// SHA-256 of the whole header (tag included): every record's associated data starts with it.
    pub header_hash: [u8; 32],
}

impl FileKey {
    pub(crate) fn new(data_key: &[u8; 32], prefix: [u8; 7]) -> FileKey {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, data_key).expect("a 32-byte key"));
        FileKey { key, prefix, header_hash: [0; 32] }
    }

    /// The 4-byte tag a file's chunks carry in their clear prefix.
    pub(crate) fn file_tag(&self) -> [u8; 4] {
        self.header_hash[..4].try_into().unwrap()
    }

    fn aad(&self, chunk_prefix: &[u8; CHUNK_PREFIX_LEN]) -> [u8; 40] {
        let mut a = [0u8; 40];
        a[..32].copy_from_slice(&self.header_hash);
        a[32..].copy_from_slice(chunk_prefix);
        a
    }

    pub(crate) fn chunk_prefix(&self, index: u32) -> [u8; CHUNK_PREFIX_LEN] {
        let mut p = [0u8; CHUNK_PREFIX_LEN];
        p[..4].copy_from_slice(&index.to_be_bytes());
        p[4..].copy_from_slice(&self.file_tag());
        p
    }

    /// Header tag: authenticates the header's bytes under the data key.
    pub(crate) fn header_tag(&self, untagged: &[u8]) -> [u8; TAG_LEN] {
        let n = Nonce::assume_unique_for_key(format::nonce(&self.prefix, HEADER_TAG_COUNTER, NonceKind::Header));
        let tag = self.key.seal_in_place_separate_tag(n, Aad::from(untagged), &mut []).expect("sealing");
        tag.as_ref().try_into().unwrap()
    }

    pub(crate) fn check_header_tag(&self, untagged: &[u8], tag: &[u8]) -> bool {
        let n = Nonce::assume_unique_for_key(format::nonce(&self.prefix, HEADER_TAG_COUNTER, NonceKind::Header));
        let mut t = tag.to_vec();
        self.key.open_in_place(n, Aad::from(untagged), &mut t).is_ok()
    }

    /// Seals `record[8..len-16]` in place: `record` is prefix ‖ plaintext ‖ room for the tag.
    pub(crate) fn seal_record(&self, record: &mut [u8], index: u32, kind: NonceKind) {
        let prefix = self.chunk_prefix(index);
        record[..CHUNK_PREFIX_LEN].copy_from_slice(&prefix);
        let n = Nonce::assume_unique_for_key(format::nonce(&self.prefix, index, kind));
        let end = record.len() - TAG_LEN;
        let tag = self
            .key
            .seal_in_place_separate_tag(n, Aad::from(self.aad(&prefix)), &mut record[CHUNK_PREFIX_LEN..end])
            .expect("sealing");
        record[end..].copy_from_slice(tag.as_ref());
    }

    /// Opens a record in place; the plaintext's range within `record` on success.
    pub(crate) fn open_record(&self, record: &mut [u8], index: u32, kind: NonceKind) -> Option<std::ops::Range<usize>> {
        if record.len() < CHUNK_PREFIX_LEN + TAG_LEN {
            return None;
        }
        let prefix: [u8; CHUNK_PREFIX_LEN] = record[..CHUNK_PREFIX_LEN].try_into().unwrap();
        let n = Nonce::assume_unique_for_key(format::nonce(&self.prefix, index, kind));
        let len = self.key.open_in_place(n, Aad::from(self.aad(&prefix)), &mut record[CHUNK_PREFIX_LEN..]).ok()?.len();
        Some(CHUNK_PREFIX_LEN..CHUNK_PREFIX_LEN + len)
    }
}

/// Writes one sealed file.
pub struct SealWriter<W: Write> {
    out: W,
    key: FileKey,
    chunk_size: usize,
    head_len: usize,
    /// The chunk being filled: prefix ‖ plaintext so far (‖ tag room when sealed).
    buf: Vec<u8>,
    next_index: u32,
    body_len: u64,
    body_hash: Context,
    sealed_hash: Context,
    failed: bool,
}

impl<W: Write> std::fmt::Debug for SealWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealWriter").field("next_index", &self.next_index).field("body_len", &self.body_len).finish()
    }
}

impl<W: Write> SealWriter<W> {
    /// Writes the header (and the provisional container head, which must be `head_len` bytes
    /// where the container has one) and returns a writer for the body.
    pub fn create(mut out: W, params: &SealParams, kek: &Kek, provisional_head: &[u8]) -> Result<Self, SealError> {
        let data_key = {
            let mut k = Zeroizing::new([0u8; 32]);
            random(&mut k[..]);
            k
        };
        let mut prefix = [0u8; 7];
        random(&mut prefix);
        let header = Header {
            content: params.content,
            container: params.container,
            chunk_size: params.chunk_size,
            head_len: provisional_head.len() as u32,
            recording_id: params.recording_id,
            created_ms: params.created_ms,
            nonce_prefix: prefix,
            kek_fingerprint: kek.fingerprint,
            wrapped_key: kek.wrap(&data_key),
            key_id: kek.id.clone(),
            index: params.index.clone(),
        };
        header.check()?;
        let mut key = FileKey::new(&data_key, prefix);
        let mut bytes = header.encode_untagged();
        let tag = key.header_tag(&bytes);
        bytes.extend_from_slice(&tag);
        key.header_hash = super::sha256(&[&bytes]);
        let mut sealed_hash = Context::new(&SHA256);
        sealed_hash.update(&bytes);
        if !provisional_head.is_empty() {
            let mut rec = vec![0u8; CHUNK_PREFIX_LEN + provisional_head.len() + TAG_LEN];
            rec[CHUNK_PREFIX_LEN..CHUNK_PREFIX_LEN + provisional_head.len()].copy_from_slice(provisional_head);
            key.seal_record(&mut rec, PROVISIONAL_HEAD_INDEX, NonceKind::Head);
            sealed_hash.update(&rec);
            bytes.extend_from_slice(&rec);
        }
        // One write, flushed: a crash right after creation still leaves a file whose header and
        // container head can be read.
        out.write_all(&bytes).and_then(|()| out.flush()).map_err(|e| SealError::Io {
            action: "write sealed header",
            path: Default::default(),
            source: e,
        })?;
        let chunk_size = params.chunk_size as usize;
        let mut buf = Vec::with_capacity(CHUNK_PREFIX_LEN + chunk_size + TAG_LEN);
        buf.resize(CHUNK_PREFIX_LEN, 0);
        Ok(SealWriter {
            out,
            key,
            chunk_size,
            head_len: provisional_head.len(),
            buf,
            next_index: 0,
            body_len: 0,
            body_hash: Context::new(&SHA256),
            sealed_hash,
            failed: false,
        })
    }

    /// Appends body bytes; every full chunk is sealed and written at once.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), SealError> {
        if self.failed {
            return Err(SealError::WriterFailed);
        }
        self.body_hash.update(data);
        self.body_len += data.len() as u64;
        while !data.is_empty() {
            let room = CHUNK_PREFIX_LEN + self.chunk_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_PREFIX_LEN + self.chunk_size {
                self.emit(NonceKind::Body)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, kind: NonceKind) -> Result<(), SealError> {
        if self.next_index >= HEADER_TAG_COUNTER {
            self.failed = true;
            return Err(SealError::Invalid("the file has reached the format's 4,294,967,292 chunks".into()));
        }
        self.buf.resize(self.buf.len() + TAG_LEN, 0);
        self.key.seal_record(&mut self.buf, self.next_index, kind);
        if let Err(e) = self.out.write_all(&self.buf) {
            self.failed = true;
            return Err(SealError::Io { action: "write sealed chunk", path: Default::default(), source: e });
        }
        self.sealed_hash.update(&self.buf);
        self.next_index += 1;
        self.buf.truncate(CHUNK_PREFIX_LEN);
        Ok(())
    }

    /// Body bytes accepted so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Body bytes already sealed and handed to the OS (what a process crash cannot lose).
    pub fn durable_body_len(&self) -> u64 {
        u64::from(self.next_index) * self.chunk_size as u64
    }

    /// Seals the last body chunk (possibly empty), the final container head and the signed seal
    /// record; returns the output (for the caller to fsync) and the record.
    pub fn finish(
        mut self,
        final_head: &[u8],
        flags: u16,
        signer: &SigningKey,
        finalised_ms: i64,
    ) -> Result<(W, SealRecord), SealError> {
        if self.failed {
            return Err(SealError::WriterFailed);
        }
        if final_head.len() != self.head_len {
            return Err(SealError::Invalid(format!(
                "final container head of {} bytes where the provisional one had {}",
                final_head.len(),
                self.head_len
            )));
        }
        self.emit(NonceKind::LastBody)?;
        let mut tail = Vec::with_capacity(self.head_len + 64 + format::SEAL_RECORD_LEN);
        if self.head_len > 0 {
            let mut rec = vec![0u8; CHUNK_PREFIX_LEN + self.head_len + TAG_LEN];
            rec[CHUNK_PREFIX_LEN..CHUNK_PREFIX_LEN + self.head_len].copy_from_slice(final_head);
            self.key.seal_record(&mut rec, FINAL_HEAD_INDEX, NonceKind::Head);
            self.sealed_hash.update(&rec);
            tail.extend_from_slice(&rec);
        }
        let mut record = SealRecord {
            flags,
            finalised_ms,
            plaintext_len: self.head_len as u64 + self.body_len,
            head_sha256: if self.head_len > 0 { super::sha256(&[final_head]) } else { [0; 32] },
            body_sha256: self.body_hash.finish().as_ref().try_into().unwrap(),
            sealed_sha256: self.sealed_hash.finish().as_ref().try_into().unwrap(),
            signer: signer.public,
            signature: [0; 64],
        };
        record.signature = signer.sign(&record.signed_message());
        tail.extend_from_slice(&record.encode());
        self.out.write_all(&tail).and_then(|()| self.out.flush()).map_err(|e| SealError::Io {
            action: "write seal record",
            path: Default::default(),
            source: e,
        })?;
        Ok((self.out, record))
    }

    /// Pushes the OS-level buffers of the output (whole chunks only: a partial chunk stays in
    /// memory until it is full, since sealing it would spend its counter).
    pub fn flush(&mut self) -> Result<(), SealError> {
        self.out.flush().map_err(|e| SealError::Io { action: "flush", path: Default::default(), source: e })
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }
}
