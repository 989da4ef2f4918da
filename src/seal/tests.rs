//! Sealing round trips and every kind of damage, on in-memory files.

use std::io::Cursor;

use super::*;

struct Fixture {
    ring: Keyring,
    params: SealParams,
}

fn fixture() -> Fixture {
    let kek = Kek::generate("kek-test").unwrap();
    let signing = SigningKey::generate("sign-test").unwrap();
    Fixture {
        ring: Keyring::from_keys(vec![kek], Some(signing)),
        params: SealParams {
            content: Content::Audio,
            container: Container::Wav,
            chunk_size: 1024,
            recording_id: ulid::Ulid(42),
            created_ms: 1_000,
            index: "{\"recording_id\":\"x\"}".into(),
        },
    }
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// head(8 bytes) ‖ body, sealed; the provisional head is zeros.
fn seal(f: &Fixture, body: &[u8], pieces: usize) -> Vec<u8> {
    let kek = f.ring.active_kek().unwrap();
    let mut w = SealWriter::create(Vec::new(), &f.params, kek, &[0u8; 8]).unwrap();
    for part in body.chunks(pieces.max(1)) {
        w.write(part).unwrap();
    }
    let (out, _) = w.finish(b"HEAD0001", 0, f.ring.signing().unwrap(), 2_000).unwrap();
    out
}

fn open(f: &Fixture, bytes: &[u8]) -> Result<SealedReader<Cursor<Vec<u8>>>, SealError> {
    SealedReader::open(Cursor::new(bytes.to_vec()), &f.ring)
}

fn verify(f: &Fixture, bytes: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut r = open(f, bytes)?;
    let mut out = Vec::new();
    r.verify(f.ring.trusted(), Some(&mut out))?;
    Ok(out)
}

#[test]
fn round_trip_is_bit_identical_for_every_length() {
    let f = fixture();
    for len in [0, 1, 1023, 1024, 1025, 4096, 5000] {
        let b = body(len, 3);
        for pieces in [1, 7, 160, 5000] {
            let sealed = seal(&f, &b, pieces);
            let plain = verify(&f, &sealed).unwrap_or_else(|e| panic!("len {len}: {e}"));
            assert_eq!(&plain[..8], b"HEAD0001");
            assert_eq!(&plain[8..], &b[..], "len {len} pieces {pieces}");
        }
    }
}

#[test]
fn random_access_decrypts_any_range() {
    let f = fixture();
    let b = body(5000, 9);
    let sealed = seal(&f, &b, 333);
    let mut whole = b"HEAD0001".to_vec();
    whole.extend_from_slice(&b);
    let mut r = open(&f, &sealed).unwrap();
    assert_eq!(r.plaintext_len(), Some(whole.len() as u64));
    for (at, len) in [(0, 1), (0, 8), (5, 10), (8, 1024), (1000, 100), (1031, 2), (4990, 100), (5008, 10), (9000, 4)] {
        let mut buf = vec![0u8; len];
        let n = r.read_at(at, &mut buf).unwrap();
        let want = &whole[(at as usize).min(whole.len())..(at as usize + len).min(whole.len())];
        assert_eq!(&buf[..n], want, "at {at} len {len}");
    }
}

#[test]
fn digests_are_what_sha256sum_would_say() {
    let f = fixture();
    let b = body(3000, 1);
    let sealed = seal(&f, &b, 100);
    let mut r = open(&f, &sealed).unwrap();
    let v = r.verify(f.ring.trusted(), None).unwrap();
    let mut whole = b"HEAD0001".to_vec();
    whole.extend_from_slice(&b);
    assert_eq!(v.plaintext_sha256, sha256(&[&whole]));
    assert_eq!(v.record.body_sha256, sha256(&[&b]));
    assert_eq!(v.record.sealed_sha256, sha256(&[&sealed[..sealed.len() - format::SEAL_RECORD_LEN]]));
    assert_eq!(v.chunks, 3);
}

#[test]
fn a_wrong_or_missing_key_is_named() {
    let f = fixture();
    let sealed = seal(&f, &body(100, 0), 10);
    // Same id, different key.
    let other = Keyring::from_keys(vec![Kek::generate("kek-test").unwrap()], None);
    let e = SealedReader::open(Cursor::new(sealed.clone()), &other).err().unwrap();
    assert!(matches!(e, SealError::WrongKek { ref id } if id == "kek-test"), "{e}");
    let none = Keyring::from_keys(vec![Kek::generate("kek-other").unwrap()], None);
    let e = SealedReader::open(Cursor::new(sealed), &none).err().unwrap();
    assert!(matches!(e, SealError::UnknownKek { ref id, .. } if id == "kek-test"), "{e}");
    assert!(e.to_string().contains("kek-other"), "names the keys it has: {e}");
}

/// One bit flipped anywhere in the file is always detected, and reported for the region it
/// is in.
#[test]
fn a_flipped_bit_anywhere_is_detected() {
    let f = fixture();
    let sealed = seal(&f, &body(2500, 5), 100);
    let header_len = Header::peek_len(&sealed).unwrap();
    let head_rec = 8 + format::CHUNK_OVERHEAD;
    let body_start = header_len + head_rec;
    let seal_at = sealed.len() - format::SEAL_RECORD_LEN;
    let final_head_at = seal_at - head_rec;
    for at in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[at] ^= 0x10;
        let e = match verify(&f, &bad) {
            Ok(_) => panic!("a flipped bit at {at} of {} went unnoticed", sealed.len()),
            Err(e) => e,
        };
        let kind = e.kind();
        let ok = if at < header_len {
            matches!(
                kind,
                "not_sealed"
                    | "unsupported_version"
                    | "header_damaged"
                    | "header_altered"
                    | "unknown_kek"
                    | "wrong_kek"
                    | "truncated"
            )
        } else if at < body_start {
            kind == "head_altered"
        } else if at < final_head_at {
            matches!(kind, "chunk_altered" | "chunk_out_of_order" | "chunk_from_other_file")
        } else if at < seal_at {
            kind == "head_altered"
        } else if at < seal_at + 8 {
            // The seal record's magic: then the file no longer looks finalised.
            kind == "not_finalised"
        } else {
            matches!(kind, "signature_invalid" | "signature_untrusted" | "seal_record_damaged")
        };
        assert!(ok, "bit flipped at {at}: unexpected {kind}: {e}");
    }
}

#[test]
fn truncation_is_detected_at_every_length() {
    let f = fixture();
    let sealed = seal(&f, &body(2500, 5), 100);
    for cut in 0..sealed.len() {
        let e = verify(&f, &sealed[..cut]).expect_err("a truncated file verified");
        assert!(
            matches!(e.kind(), "not_finalised" | "truncated" | "not_sealed" | "header_damaged"),
            "cut at {cut}: {e}"
        );
    }
    // Cut inside the body but ending in a seal record copied from the original: geometry or
    // the last-chunk mark catches it.
    let rec = &sealed[sealed.len() - format::SEAL_RECORD_LEN..];
    let header_len = Header::peek_len(&sealed).unwrap();
    let mut spliced = sealed[..header_len + 32 + 1048].to_vec();
    spliced.extend_from_slice(
        &sealed[sealed.len() - format::SEAL_RECORD_LEN - 32..sealed.len() - format::SEAL_RECORD_LEN],
    );
    spliced.extend_from_slice(rec);
    let e = verify(&f, &spliced).expect_err("a shortened file verified");
    assert!(matches!(e.kind(), "chunk_altered" | "digest_mismatch" | "truncated"), "{e}");
}

#[test]
fn swapped_chunks_are_named_as_reordered() {
    let f = fixture();
    let sealed = seal(&f, &body(3500, 2), 100);
    let header_len = Header::peek_len(&sealed).unwrap();
    let start = header_len + 8 + format::CHUNK_OVERHEAD;
    let rec = 1024 + format::CHUNK_OVERHEAD;
    let mut bad = sealed.clone();
    let (a, b) = (start, start + rec);
    let chunk0 = sealed[a..a + rec].to_vec();
    bad.copy_within(b..b + rec, a);
    bad[b..b + rec].copy_from_slice(&chunk0);
    let e = verify(&f, &bad).unwrap_err();
    assert!(matches!(e, SealError::ChunkOutOfOrder { index: 0, found: 1 }), "{e}");
}

#[test]
fn a_chunk_from_another_recording_is_named_as_spliced() {
    let f = fixture();
    let one = seal(&f, &body(3500, 2), 100);
    let two = seal(&f, &body(3500, 7), 100);
    let header_len = Header::peek_len(&one).unwrap();
    let start = header_len + 8 + format::CHUNK_OVERHEAD;
    let rec = 1024 + format::CHUNK_OVERHEAD;
    let mut bad = one.clone();
    bad[start + rec..start + 2 * rec].copy_from_slice(&two[start + rec..start + 2 * rec]);
    let e = verify(&f, &bad).unwrap_err();
    assert!(matches!(e, SealError::ChunkFromOtherFile { index: 1 }), "{e}");
}

/// Someone with the KEK (but not the signing key) decrypts, alters the audio, re-seals it and
/// signs the new digests with a key of their own: the signature is valid but untrusted.
#[test]
fn a_record_re_signed_by_another_key_is_untrusted() {
    let f = fixture();
    let original = seal(&f, &body(2000, 1), 100);
    let forger = SigningKey::generate("forger").unwrap();
    let kek = f.ring.active_kek().unwrap();
    let mut w = SealWriter::create(Vec::new(), &f.params, kek, &[0u8; 8]).unwrap();
    w.write(&body(2000, 99)).unwrap();
    let (forged, _) = w.finish(b"HEAD0001", 0, &forger, 2_000).unwrap();
    let e = verify(&f, &forged).unwrap_err();
    assert!(matches!(e, SealError::SignatureUntrusted { .. }), "{e}");
    assert!(e.to_string().contains("sign-test"), "names the trusted keys: {e}");
    // The forger's key copied over the real signer in the original's record: invalid.
    let mut bad = original.clone();
    let signer_at = original.len() - format::SEAL_RECORD_LEN + 128;
    bad[signer_at..signer_at + 32].copy_from_slice(&forger.public);
    assert!(matches!(verify(&f, &bad), Err(SealError::SignatureInvalid)));
    // A digest changed and re-signed by the forger: untrusted, not a mere mismatch.
    let mut rec = SealRecord::decode(&original[original.len() - format::SEAL_RECORD_LEN..]).unwrap();
    rec.body_sha256 = [0; 32];
    rec.signer = forger.public;
    rec.signature = forger.sign(&rec.signed_message());
    let mut bad = original[..original.len() - format::SEAL_RECORD_LEN].to_vec();
    bad.extend_from_slice(&rec.encode());
    assert!(matches!(verify(&f, &bad), Err(SealError::SignatureUntrusted { .. })));
    // Re-signed with the real key (which storage never holds) would verify: the digests are
    // what the trusted signature covers.
    rec.signer = f.ring.signing().unwrap().public;
    rec.signature = f.ring.signing().unwrap().sign(&rec.signed_message());
    let mut bad = original[..original.len() - format::SEAL_RECORD_LEN].to_vec();
    bad.extend_from_slice(&rec.encode());
    assert!(matches!(verify(&f, &bad), Err(SealError::DigestMismatch { which: "audio" })));
}

#[test]
fn an_unfinished_file_recovers_every_whole_chunk() {
    let f = fixture();
    let kek = f.ring.active_kek().unwrap();
    let b = body(3000, 4);
    let mut w = SealWriter::create(Vec::new(), &f.params, kek, b"PROVHEAD").unwrap();
    w.write(&b).unwrap();
    assert_eq!(w.durable_body_len(), 2048);
    // Dropped without finish, as by kill -9: two whole chunks are on "disk".
    let bytes = w.get_ref().clone();
    let mut r = open(&f, &bytes).unwrap();
    assert!(!r.is_finalised());
    let e = r.verify(f.ring.trusted(), None).unwrap_err();
    assert!(matches!(e, SealError::NotFinalised { recovered_bytes: 2056, chunks: 2 }), "{e}");
    let rec = r.recover();
    assert_eq!((rec.chunks, rec.body_len, rec.body_complete), (2, 2048, false));
    assert_eq!(rec.head.as_deref(), Some(&b"PROVHEAD"[..]));
    let mut out = Vec::new();
    r.write_body_prefix(&rec, rec.body_len, &mut out).unwrap();
    assert_eq!(out, &b[..2048]);
    // Half a chunk more on disk changes nothing.
    let more = [&bytes[..], &[0u8; 500][..]].concat();
    let rec = open(&f, &more).unwrap().recover();
    assert_eq!(rec.body_len, 2048);
    assert!(rec.stopped_by.unwrap().contains("cut short"));
}

#[test]
fn metadata_without_a_head_round_trips() {
    let mut f = fixture();
    f.params.content = Content::Metadata;
    f.params.container = Container::Json;
    let kek = f.ring.active_kek().unwrap();
    let text = br#"{"caller":"+4915112345678"}"#;
    let mut w = SealWriter::create(Vec::new(), &f.params, kek, &[]).unwrap();
    w.write(text).unwrap();
    let (sealed, _) = w.finish(&[], 0, f.ring.signing().unwrap(), 5).unwrap();
    assert!(!sealed.windows(8).any(|w| w == b"49151123"), "no plaintext in the sealed bytes");
    assert_eq!(verify(&f, &sealed).unwrap(), text);
}

/// A finalised file whose end was damaged (seal record altered, cut by a byte, bytes appended)
/// still gives up its whole body to recovery.
#[test]
fn recovery_finds_the_whole_body_despite_a_damaged_end() {
    let f = fixture();
    let b = body(2500, 6);
    let sealed = seal(&f, &b, 100);
    let seal_at = sealed.len() - format::SEAL_RECORD_LEN;
    let mut reserved = sealed.clone();
    reserved[seal_at + 13] = 1;
    let mut signature = sealed.clone();
    signature[seal_at + 200] ^= 1;
    let appended = [&sealed[..], b"garbage"].concat();
    for (what, bytes) in [
        ("reserved byte", reserved),
        ("signature", signature),
        ("one byte cut", sealed[..sealed.len() - 1].to_vec()),
        ("seal record cut", sealed[..seal_at + 10].to_vec()),
        ("final head cut", sealed[..seal_at - 30].to_vec()),
        ("bytes appended", appended),
    ] {
        let mut r = open(&f, &bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(r.verify(f.ring.trusted(), None).is_err(), "{what}");
        let rec = r.recover();
        assert!(rec.body_complete, "{what}: {rec:?}");
        assert_eq!(rec.body_len, 2500, "{what}");
        let mut out = Vec::new();
        r.write_body_prefix(&rec, rec.body_len, &mut out).unwrap();
        assert_eq!(out, b, "{what}");
    }
}
