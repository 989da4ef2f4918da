//! Opening sealed files: random access to the plaintext (only the chunks a range needs are
//! decrypted), full verification, and recovery of the authenticated prefix of an unfinished file.

use std::io::{Read, Seek, SeekFrom, Write};

use aws_lc_rs::digest::{Context, SHA256};

use super::format::{
    CHUNK_OVERHEAD, FINAL_HEAD_INDEX, HEADER_TAG_COUNTER, Header, NonceKind, PROVISIONAL_HEAD_INDEX, SEAL_RECORD_LEN,
    SealRecord, TAG_LEN, hex,
};
use super::keys::{Keyring, PublicKey};
use super::writer::FileKey;
use super::{SealError, sha256};

/// Where a file's records are.
#[derive(Debug, Clone)]
enum Geometry {
    Finalised {
        /// Body chunk records (the last one is short).
        chunks: u64,
        last_plain: u64,
        final_head_at: u64,
        record: Box<SealRecord>,
    },
    /// A seal record's magic at the end, but the record does not parse: the body's end is known.
    SealDamaged { final_head_at: u64, error: String },
    /// No seal record at the end: a crash, or the end was cut off.
    Unfinished,
}

/// An opened sealed file.
pub struct SealedReader<R: Read + Seek> {
    r: R,
    header: Header,
    header_len: u64,
    key: FileKey,
    file_len: u64,
    geometry: Geometry,
    /// The last chunk decrypted (index, plaintext), so sequential small reads decrypt each once.
    cached: Option<(u64, Vec<u8>)>,
}

/// What a full verification established.
#[derive(Debug, Clone)]
pub struct Verified {
    pub record: SealRecord,
    /// The trusted key that signed.
    pub signer: PublicKey,
    /// SHA-256 of the whole plaintext file (head then body), as `sha256sum` of the decrypted file
    /// would print.
    pub plaintext_sha256: [u8; 32],
    pub chunks: u64,
}

/// What an unfinished (or damaged) file still holds.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The container head that authenticates (final if the file was finalised, else the
    /// provisional one written at creation).
    pub head: Option<Vec<u8>>,
    /// Body chunks that authenticate, in order from the first.
    pub chunks: u64,
    /// Their plaintext bytes.
    pub body_len: u64,
    /// The body ended with the last-chunk mark (nothing of the body is missing).
    pub body_complete: bool,
    /// Why recovery stopped where it did, if not at a complete body.
    pub stopped_by: Option<String>,
    /// Bytes that do not authenticate follow the prefix (not just the tail a crash cut short):
    /// whoever recovers must keep the file, not replace it.
    pub damaged: bool,
    /// Length of the record holding the last chunk, when found.
    last_record_len: Option<u64>,
}

fn read_exact_at<R: Read + Seek>(r: &mut R, at: u64, buf: &mut [u8]) -> Result<(), SealError> {
    r.seek(SeekFrom::Start(at)).and_then(|_| r.read_exact(buf)).map_err(|e| SealError::Io {
        action: "read sealed file",
        path: Default::default(),
        source: e,
    })
}

fn file_len<R: Seek>(r: &mut R) -> Result<u64, SealError> {
    r.seek(SeekFrom::End(0)).map_err(|e| SealError::Io {
        action: "seek in sealed file",
        path: Default::default(),
        source: e,
    })
}

/// Reads and parses a sealed file's clear header (no key needed): the header, its bytes (tag
/// included) and the file's length.
pub fn read_header<R: Read + Seek>(r: &mut R) -> Result<(Header, Vec<u8>, u64), SealError> {
    let file_len = file_len(r)?;
    if file_len < 12 {
        let mut some = vec![0u8; file_len as usize];
        read_exact_at(r, 0, &mut some)?;
        return Err(if !some.is_empty() && super::format::MAGIC.starts_with(&some[..some.len().min(8)]) {
            SealError::Truncated(format!("{file_len} bytes: not even a header"))
        } else {
            SealError::NotSealed
        });
    }
    let mut first = [0u8; 12];
    read_exact_at(r, 0, &mut first)?;
    let header_len = Header::peek_len(&first)?;
    if header_len as u64 > file_len {
        return Err(SealError::Truncated(format!("{file_len} bytes, shorter than its {header_len}-byte header")));
    }
    let mut hbytes = vec![0u8; header_len];
    read_exact_at(r, 0, &mut hbytes)?;
    let (header, _) = Header::decode(&hbytes)?;
    Ok((header, hbytes, file_len))
}

/// Checks a seal record's signature and that its signer is trusted; the trusted key on success.
/// Checked before the digests, so a record re-signed by another key is named as such.
fn check_signature(record: &SealRecord, trusted: &[PublicKey]) -> Result<PublicKey, SealError> {
    let signer = PublicKey { id: String::new(), key: record.signer, source: Default::default() };
    if !signer.verify(&record.signed_message(), &record.signature) {
        return Err(SealError::SignatureInvalid);
    }
    trusted.iter().find(|t| t.key == record.signer).cloned().ok_or_else(|| SealError::SignatureUntrusted {
        signer: format!("public key {}", hex(&record.signer)),
        trusted: trusted.iter().map(|t| format!("{} ({})", t.id, &hex(&t.key)[..16])).collect(),
    })
}

impl<R: Read + Seek> SealedReader<R> {
    /// Reads the header, unwraps the data key and checks the header's tag. A wrong key, an
    /// unknown key and a damaged header are told apart.
    pub fn open(mut r: R, keys: &Keyring) -> Result<Self, SealError> {
        let (header, hbytes, file_len) = read_header(&mut r)?;
        let header_len = hbytes.len();
        let kek = keys.kek(&header.key_id)?;
        let Some(data_key) = kek.unwrap(&header.wrapped_key) else {
            return Err(if kek.fingerprint != header.kek_fingerprint {
                SealError::WrongKek { id: header.key_id.clone() }
            } else {
                SealError::HeaderAltered
            });
        };
        let mut key = FileKey::new(&data_key, header.nonce_prefix);
        let (untagged, tag) = hbytes.split_at(header_len - TAG_LEN);
        if kek.fingerprint != header.kek_fingerprint || !key.check_header_tag(untagged, tag) {
            return Err(SealError::HeaderAltered);
        }
        key.header_hash = sha256(&[&hbytes]);
        let geometry = Self::geometry(&mut r, &header, header_len as u64, file_len)?;
        Ok(SealedReader { r, header, header_len: header_len as u64, key, file_len, geometry, cached: None })
    }

    fn geometry(r: &mut R, h: &Header, header_len: u64, file_len: u64) -> Result<Geometry, SealError> {
        let body_start = header_len + h.head_record_len();
        let rec = h.chunk_record_len();
        if file_len >= body_start + h.head_record_len() + CHUNK_OVERHEAD as u64 + SEAL_RECORD_LEN as u64 {
            let mut tail = [0u8; SEAL_RECORD_LEN];
            read_exact_at(r, file_len - SEAL_RECORD_LEN as u64, &mut tail)?;
            if SealRecord::present(&tail) {
                let final_head_at = file_len - SEAL_RECORD_LEN as u64 - h.head_record_len();
                let record = match SealRecord::decode(&tail) {
                    Ok(r) => r,
                    Err(e) => return Ok(Geometry::SealDamaged { final_head_at, error: e.to_string() }),
                };
                let region = final_head_at - body_start;
                let (full, rem) = (region / rec, region % rec);
                if rem < CHUNK_OVERHEAD as u64 {
                    return Err(SealError::Truncated(format!(
                        "its body is {region} bytes, which is no whole number of chunks (cut or padded)"
                    )));
                }
                return Ok(Geometry::Finalised {
                    chunks: full + 1,
                    last_plain: rem - CHUNK_OVERHEAD as u64,
                    final_head_at,
                    record: Box::new(record),
                });
            }
        }
        Ok(Geometry::Unfinished)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn is_finalised(&self) -> bool {
        matches!(self.geometry, Geometry::Finalised { .. })
    }

    /// The seal record, when finalised (not yet verified).
    pub fn seal_record(&self) -> Option<&SealRecord> {
        match &self.geometry {
            Geometry::Finalised { record, .. } => Some(record),
            Geometry::SealDamaged { .. } | Geometry::Unfinished => None,
        }
    }

    fn body_start(&self) -> u64 {
        self.header_len + self.header.head_record_len()
    }

    /// Decrypts the record at `at` of `len` bytes as `(index, kind)`, telling reordering and
    /// splicing apart from alteration by the record's clear prefix.
    fn open_at(&mut self, at: u64, len: u64, index: u32, kind: NonceKind, pos: u64) -> Result<Vec<u8>, SealError> {
        let mut rec = vec![0u8; len as usize];
        read_exact_at(&mut self.r, at, &mut rec)?;
        self.open_bytes(rec, index, kind, pos, at)
    }

    fn open_bytes(&self, rec: Vec<u8>, index: u32, kind: NonceKind, pos: u64, at: u64) -> Result<Vec<u8>, SealError> {
        // Opening works in place and leaves garbage on failure: diagnose from the bytes as read.
        let mut work = rec.clone();
        match self.key.open_record(&mut work, index, kind) {
            Some(range) => Ok(work[range].to_vec()),
            None => Err(self.diagnose(&rec, index, pos, at)),
        }
    }

    fn diagnose(&self, rec: &[u8], index: u32, pos: u64, at: u64) -> SealError {
        if index >= HEADER_TAG_COUNTER {
            return SealError::HeadAltered { final_head: index == FINAL_HEAD_INDEX };
        }
        let declared = u32::from_be_bytes(rec[..4].try_into().unwrap());
        let tag: [u8; 4] = rec[4..8].try_into().unwrap();
        if tag != self.key.file_tag() {
            return SealError::ChunkFromOtherFile { index: pos };
        }
        if declared != index && declared < HEADER_TAG_COUNTER {
            // Believe the prefix only if the record authenticates where it says it belongs.
            let fits = [NonceKind::Body, NonceKind::LastBody]
                .iter()
                .any(|k| self.key.open_record(&mut rec.to_vec(), declared, *k).is_some());
            if fits {
                return SealError::ChunkOutOfOrder { index: pos, found: declared };
            }
        }
        SealError::ChunkAltered { index: pos, offset: at }
    }

    fn finalised(&mut self) -> Result<(u64, u64, u64, SealRecord), SealError> {
        match &self.geometry {
            Geometry::Finalised { chunks, last_plain, final_head_at, record } => {
                Ok((*chunks, *last_plain, *final_head_at, (**record).clone()))
            }
            Geometry::SealDamaged { error, .. } => Err(SealError::SealRecordDamaged(error.clone())),
            Geometry::Unfinished => {
                let r = self.recover();
                Err(SealError::NotFinalised {
                    recovered_bytes: r.head.map_or(0, |h| h.len() as u64) + r.body_len,
                    chunks: r.chunks,
                })
            }
        }
    }

    /// Plaintext length of a finalised file (head and body).
    pub fn plaintext_len(&self) -> Option<u64> {
        self.seal_record().map(|r| r.plaintext_len)
    }

    /// Body chunk `i` of a finalised file, decrypted and authenticated.
    fn body_chunk(&mut self, i: u64) -> Result<Vec<u8>, SealError> {
        if let Some((ci, data)) = &self.cached
            && *ci == i
        {
            return Ok(data.clone());
        }
        let (chunks, last_plain, _, _) = self.finalised()?;
        let rec = self.header.chunk_record_len();
        let last = i + 1 == chunks;
        let len = if last { last_plain + CHUNK_OVERHEAD as u64 } else { rec };
        let kind = if last { NonceKind::LastBody } else { NonceKind::Body };
        let at = self.body_start() + i * rec;
        let data = self.open_at(at, len, i as u32, kind, i)?;
        self.cached = Some((i, data.clone()));
        Ok(data)
    }

    /// The final container head of a finalised file.
    pub fn final_head(&mut self) -> Result<Vec<u8>, SealError> {
        let (_, _, at, _) = self.finalised()?;
        if self.header.head_len == 0 {
            return Ok(Vec::new());
        }
        self.open_at(at, self.header.head_record_len(), FINAL_HEAD_INDEX, NonceKind::Head, 0)
    }

    /// The provisional container head written when the file was created.
    pub fn provisional_head(&mut self) -> Result<Vec<u8>, SealError> {
        if self.header.head_len == 0 {
            return Ok(Vec::new());
        }
        if self.file_len < self.body_start() {
            return Err(SealError::Truncated("the provisional head is cut".into()));
        }
        self.open_at(self.header_len, self.header.head_record_len(), PROVISIONAL_HEAD_INDEX, NonceKind::Head, 0)
    }

    /// Reads plaintext bytes at `offset` of a finalised file, decrypting only the chunks the
    /// range touches. Returns the bytes read (0 at the end).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SealError> {
        let Some(total) = self.plaintext_len() else {
            return Err(self.finalised().expect_err("unfinished"));
        };
        let head_len = u64::from(self.header.head_len);
        let mut done = 0usize;
        let mut pos = offset;
        while done < buf.len() && pos < total {
            if pos < head_len {
                let head = self.final_head()?;
                let n = ((head_len - pos) as usize).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&head[pos as usize..pos as usize + n]);
                done += n;
                pos += n as u64;
                continue;
            }
            let b = pos - head_len;
            let cs = u64::from(self.header.chunk_size);
            let chunk = self.body_chunk(b / cs)?;
            let within = (b % cs) as usize;
            if within >= chunk.len() {
                break;
            }
            let n = (chunk.len() - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&chunk[within..within + n]);
            done += n;
            pos += n as u64;
        }
        Ok(done)
    }

    /// Checks everything: every record authenticates in place, the digests match the seal
    /// record, and its signature is valid and by a trusted key. Writes the plaintext to `out`
    /// as it goes when given (callers that must not emit unverified bytes verify first).
    pub fn verify(&mut self, trusted: &[PublicKey], mut out: Option<&mut dyn Write>) -> Result<Verified, SealError> {
        let (chunks, last_plain, final_head_at, record) = self.finalised()?;
        let mut sealed = Context::new(&SHA256);
        let mut whole = Context::new(&SHA256);
        let mut body = Context::new(&SHA256);
        // Everything before the seal record, in file order, hashed raw.
        let mut raw = vec![0u8; self.body_start() as usize];
        read_exact_at(&mut self.r, 0, &mut raw)?;
        sealed.update(&raw);
        self.provisional_head()?;
        let head = self.final_head()?;
        whole.update(&head);
        if let Some(o) = out.as_deref_mut() {
            o.write_all(&head).map_err(|e| SealError::Io { action: "write", path: Default::default(), source: e })?;
        }
        let rec_len = self.header.chunk_record_len();
        self.r.seek(SeekFrom::Start(self.body_start())).map_err(|e| SealError::Io {
            action: "seek in sealed file",
            path: Default::default(),
            source: e,
        })?;
        for i in 0..chunks {
            let last = i + 1 == chunks;
            let len = if last { last_plain + CHUNK_OVERHEAD as u64 } else { rec_len };
            let mut rec = vec![0u8; len as usize];
            self.r.read_exact(&mut rec).map_err(|e| SealError::Io {
                action: "read sealed file",
                path: Default::default(),
                source: e,
            })?;
            sealed.update(&rec);
            let at = self.body_start() + i * rec_len;
            let kind = if last { NonceKind::LastBody } else { NonceKind::Body };
            let plain = self.open_bytes(rec, i as u32, kind, i, at)?;
            body.update(&plain);
            whole.update(&plain);
            if let Some(o) = out.as_deref_mut() {
                o.write_all(&plain).map_err(|e| SealError::Io {
                    action: "write",
                    path: Default::default(),
                    source: e,
                })?;
            }
        }
        let mut tail = vec![0u8; self.header.head_record_len() as usize];
        read_exact_at(&mut self.r, final_head_at, &mut tail)?;
        sealed.update(&tail);
        let signer = check_signature(&record, trusted)?;
        let digest = |c: Context| -> [u8; 32] { c.finish().as_ref().try_into().unwrap() };
        let head_digest = if head.is_empty() { [0; 32] } else { sha256(&[&head]) };
        if digest(sealed) != record.sealed_sha256 {
            return Err(SealError::DigestMismatch { which: "sealed-file" });
        }
        if head_digest != record.head_sha256 {
            return Err(SealError::DigestMismatch { which: "container-head" });
        }
        if digest(body) != record.body_sha256 {
            return Err(SealError::DigestMismatch { which: "audio" });
        }
        let plain_len = head.len() as u64 + (chunks - 1) * u64::from(self.header.chunk_size) + last_plain;
        if plain_len != record.plaintext_len {
            return Err(SealError::DigestMismatch { which: "length" });
        }
        Ok(Verified { record, signer, plaintext_sha256: digest(whole), chunks })
    }

    /// Finds the authenticated prefix: the container head (final, else provisional) and the
    /// body chunks that open in order from the first. Works on finalised and unfinished files.
    pub fn recover(&mut self) -> Recovery {
        let mut out = Recovery {
            head: None,
            chunks: 0,
            body_len: 0,
            body_complete: false,
            stopped_by: None,
            damaged: false,
            last_record_len: None,
        };
        let seal_at = match &self.geometry {
            Geometry::Finalised { final_head_at, .. } | Geometry::SealDamaged { final_head_at, .. } => {
                Some(*final_head_at)
            }
            Geometry::Unfinished => None,
        };
        if self.header.head_len > 0 {
            let final_head = match seal_at {
                Some(at) => self.open_at(at, self.header.head_record_len(), FINAL_HEAD_INDEX, NonceKind::Head, 0).ok(),
                None => None,
            };
            match final_head {
                Some(h) => out.head = Some(h),
                None => match self.provisional_head() {
                    Ok(h) => out.head = Some(h),
                    Err(e) => {
                        out.stopped_by = Some(e.to_string());
                        out.damaged = self.file_len > self.body_start();
                        return out;
                    }
                },
            }
        }
        let rec_len = self.header.chunk_record_len();
        let start = self.body_start();
        let limit = seal_at.unwrap_or(self.file_len);
        let mut i = 0u64;
        loop {
            let at = start + i * rec_len;
            if at >= limit {
                out.stopped_by.get_or_insert_with(|| "the body ends without its last-chunk mark".into());
                break;
            }
            let index = i as u32;
            let len = rec_len.min(limit - at);
            let mut rec = vec![0u8; len as usize];
            if let Err(e) = read_exact_at(&mut self.r, at, &mut rec) {
                out.stopped_by = Some(e.to_string());
                out.damaged = true;
                break;
            }
            if len == rec_len
                && let Some(r) = self.key.open_record(&mut rec.clone(), index, NonceKind::Body)
            {
                out.chunks += 1;
                out.body_len += (r.end - r.start) as u64;
                i += 1;
                continue;
            }
            // The last chunk is short, and may be followed by the final head and (part of) the
            // seal record, or by bytes appended later: try the lengths that layout allows.
            if let Some((r, n)) = self.find_last_chunk(at, index, limit) {
                out.chunks += 1;
                out.body_len += r;
                out.body_complete = true;
                out.last_record_len = Some(n);
                out.stopped_by = None;
                break;
            }
            if at + len == limit && len < rec_len && seal_at.is_none() {
                // The tail a crash cut short: nothing after it.
                out.stopped_by = Some(format!("chunk {i} is cut short ({len} of {rec_len} bytes)"));
            } else {
                out.stopped_by = Some(if len < CHUNK_OVERHEAD as u64 {
                    format!("{len} stray bytes after chunk {i}")
                } else {
                    self.diagnose(&rec, index, i, at).to_string()
                });
                out.damaged = true;
            }
            break;
        }
        out
    }

    /// The last chunk at `at`: its plaintext length and record length, if some length the layout
    /// allows authenticates.
    fn find_last_chunk(&mut self, at: u64, index: u32, limit: u64) -> Option<(u64, u64)> {
        let rec_len = self.header.chunk_record_len();
        let avail = self.file_len.saturating_sub(at);
        let mut bytes =
            vec![0u8; avail.min(rec_len + self.header.head_record_len() + 2 * SEAL_RECORD_LEN as u64) as usize];
        read_exact_at(&mut self.r, at, &mut bytes).ok()?;
        // After the last chunk: the final head and the seal record, either possibly cut anywhere.
        let head = self.header.head_record_len();
        let mut candidates: Vec<u64> =
            (0..=head + SEAL_RECORD_LEN as u64).map(|j| (limit - at).saturating_sub(j)).collect();
        for m in bytes.windows(8).enumerate().filter(|(_, w)| *w == super::format::SEAL_MAGIC).map(|(m, _)| m as u64) {
            candidates.push(m.saturating_sub(head));
        }
        candidates.sort_unstable();
        candidates.dedup();
        for n in candidates.into_iter().rev() {
            if n < CHUNK_OVERHEAD as u64 || n > rec_len || n as usize > bytes.len() {
                continue;
            }
            let mut rec = bytes[..n as usize].to_vec();
            if let Some(r) = self.key.open_record(&mut rec, index, NonceKind::LastBody) {
                return Some(((r.end - r.start) as u64, n));
            }
        }
        None
    }

    /// Writes the first `len` body bytes of the authenticated prefix that [`Self::recover`] found.
    pub fn write_body_prefix(&mut self, rec: &Recovery, len: u64, out: &mut dyn Write) -> Result<(), SealError> {
        let rec_len = self.header.chunk_record_len();
        let mut written = 0u64;
        let mut i = 0u64;
        while written < len && i < rec.chunks {
            let at = self.body_start() + i * rec_len;
            let last = rec.body_complete && i + 1 == rec.chunks;
            let n = if last { rec.last_record_len.unwrap_or(rec_len) } else { rec_len };
            let mut buf = vec![0u8; n as usize];
            read_exact_at(&mut self.r, at, &mut buf)?;
            let kind = if last { NonceKind::LastBody } else { NonceKind::Body };
            let range = self
                .key
                .open_record(&mut buf, i as u32, kind)
                .ok_or(SealError::ChunkAltered { index: i, offset: at })?;
            let take = ((range.end - range.start) as u64).min(len - written);
            out.write_all(&buf[range.start..range.start + take as usize]).map_err(|e| SealError::Io {
                action: "write",
                path: Default::default(),
                source: e,
            })?;
            written += take;
            i += 1;
        }
        Ok(())
    }
}

/// Checks a finalised file's seal record without any KEK: the SHA-256 of the sealed bytes and
/// the signature by a trusted key. For auditors who hold public keys only; it says nothing of
/// the plaintext beyond "these are the bytes that were signed".
pub fn verify_signature_only<R: Read + Seek>(mut r: R, trusted: &[PublicKey]) -> Result<SealRecord, SealError> {
    let (_, _, len) = read_header(&mut r)?;
    if len < SEAL_RECORD_LEN as u64 + 12 {
        return Err(SealError::NotFinalised { recovered_bytes: 0, chunks: 0 });
    }
    let mut tail = [0u8; SEAL_RECORD_LEN];
    read_exact_at(&mut r, len - SEAL_RECORD_LEN as u64, &mut tail)?;
    if !SealRecord::present(&tail) {
        return Err(SealError::NotFinalised { recovered_bytes: 0, chunks: 0 });
    }
    let record = SealRecord::decode(&tail)?;
    let mut c = Context::new(&SHA256);
    r.seek(SeekFrom::Start(0)).map_err(|e| SealError::Io {
        action: "seek in sealed file",
        path: Default::default(),
        source: e,
    })?;
    let mut left = len - SEAL_RECORD_LEN as u64;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        r.read_exact(&mut buf[..n]).map_err(|e| SealError::Io {
            action: "read sealed file",
            path: Default::default(),
            source: e,
        })?;
        c.update(&buf[..n]);
        left -= n as u64;
    }
    check_signature(&record, trusted)?;
    let digest: [u8; 32] = c.finish().as_ref().try_into().unwrap();
    if digest != record.sealed_sha256 {
        return Err(SealError::DigestMismatch { which: "sealed-file" });
    }
    Ok(record)
}
