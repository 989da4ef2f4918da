//! Bodies of the fuzz targets in `fuzz/`, kept in the library so a test can replay the corpora
//! on every run (`tests/fuzz_corpus.rs`) without a fuzzing toolchain. Each asserts invariants,
//! not just "no panic".
#![doc(hidden)]

use std::io::Cursor;

use crate::capture::{CaptureReader, sip};
use crate::core::payload::{PayloadFormat, PayloadMap};
use crate::core::recording::{LegSpec, Recording, RecordingConfig};
use crate::core::rtp::{self, Packet};

/// RTP/RTCP parser: any bytes; a parsed packet's parts lie inside the datagram.
pub fn rtp_parse(data: &[u8]) {
    match rtp::parse(data) {
        Ok(Packet::Rtp(p)) => {
            assert!(data.len() >= 12 + p.csrc.len() + p.payload.len());
            assert_eq!(p.csrc.len() % 4, 0);
            assert_eq!(data[0] >> 6, 2);
            assert!(!(192..=223).contains(&data[1]), "RTCP range parsed as RTP");
            if let Some((_, ext)) = p.extension {
                assert_eq!(ext.len() % 4, 0);
            }
        }
        Ok(Packet::Rtcp(r)) => {
            let total: usize = r.items().map(|i| i.body.len() + 4).sum();
            assert_eq!(total, data.len(), "RTCP items cover the datagram exactly");
            let _ = r.sender_report();
        }
        Err(_) => {}
    }
}

/// The timeline: a structured stream of packets on two legs (8 bytes of fuzz input each) through
/// a recording, polled like a live driver. Every leg yields the same number of frames, and after
/// `finish` the recording hands out exactly its end position.
pub fn timeline(data: &[u8]) {
    let mut map = PayloadMap::default();
    map.insert(101, PayloadFormat::new("telephone-event", 8000, None));
    map.insert(96, PayloadFormat::new("opus", 48000, Some(2)));
    let specs =
        vec![LegSpec { label: "a".into(), payload_map: map.clone() }, LegSpec { label: "b".into(), payload_map: map }];
    // The recording's rate from the input's length: every rate, and so every resampler, is run.
    let mut cfg = RecordingConfig::default();
    cfg.timeline.sample_rate = crate::core::decode::RECORDING_RATES[data.len() / 8 % 3];
    let cfg_rate = cfg.timeline.sample_rate;
    let mut rec = Recording::new(cfg, specs, Some(0));
    let mut planes = vec![Vec::new(), Vec::new()];
    let mut now: u64 = 0;
    let mut seq = [0u16; 8];
    let mut ts = [0u32; 8];
    let mut handed = 0usize;
    for r in data.chunks_exact(8) {
        let leg = usize::from(r[0] & 1);
        let src = usize::from((r[0] >> 1) & 3) + 4 * leg;
        let kind = (r[0] >> 3) & 7;
        seq[src] = seq[src].wrapping_add(i16::from(r[1] as i8) as u16);
        let step = i32::from(i16::from_be_bytes([r[2], r[3]]));
        ts[src] = if r[6] & 0x80 != 0 {
            u32::from_be_bytes([r[2], r[3], r[6], r[7]])
        } else {
            ts[src].wrapping_add((step * 8) as u32)
        };
        // Steps of 0-254 ms; 0xff is a hold well past every tolerance, yet cheap to run: 2 minutes
        // at 8 kHz, as many samples at the higher rates (20 s at 48 kHz), since every sample of it
        // is rendered (comfort noise included).
        let hold_ns = 120_000_000_000 * 8000 / u64::from(cfg_rate);
        now += if r[4] == 0xff { hold_ns } else { u64::from(r[4]) * 1_000_000 };
        let len = usize::from(r[5]);
        let pt = match kind {
            0 | 1 => 0,
            // Opus: arbitrary payloads, mostly not valid Opus (the decoder must refuse or conceal).
            2 => 96,
            3 => 8,
            4 => 101,
            5 => 13,
            6 => 9,
            _ => 77,
        };
        let mut pkt = vec![0x80, pt];
        pkt.extend_from_slice(&seq[src].to_be_bytes());
        pkt.extend_from_slice(&ts[src].to_be_bytes());
        pkt.extend_from_slice(&(src as u32 + 1).to_be_bytes());
        pkt.extend(std::iter::repeat_n(r[7], len));
        if kind == 7 && r[7] & 1 == 1 {
            pkt.truncate(usize::from(r[7] % 12));
        }
        rec.handle_datagram(now, leg, &pkt);
        loop {
            let n = rec.poll_audio(now, 1 << 16, &mut planes);
            assert_eq!(planes[0].len(), planes[1].len());
            handed += n;
            // Keep memory flat in long runs: only the count matters here.
            planes[0].clear();
            planes[1].clear();
            if n == 0 {
                break;
            }
        }
    }
    rec.finish();
    let end = rec.end_position();
    while rec.poll_audio(0, 1 << 16, &mut planes) > 0 {
        handed += planes[0].len();
        assert_eq!(planes[0].len(), planes[1].len());
        planes[0].clear();
        planes[1].clear();
    }
    assert_eq!(handed as i64, end);
    assert_eq!(rec.frames_emitted() as i64, end);
    for leg in rec.legs() {
        let s = leg.stats();
        assert!(s.audio_packets <= s.packets);
        assert!(leg.written_end() <= end);
    }
}

/// The capture reader: any bytes as a pcap/pcapng file. Offsets stay inside the file; after an
/// error the reader is finished.
pub fn capture(data: &[u8]) {
    let Ok(mut reader) = CaptureReader::from_reader(Box::new(Cursor::new(data.to_vec())), Some(data.len() as u64))
    else {
        return;
    };
    loop {
        match reader.next_datagram() {
            Ok(Some(d)) => assert!(d.file_offset < data.len() as u64),
            Ok(None) => break,
            Err(e) => {
                if let Some(o) = e.offset() {
                    assert!(o <= data.len() as u64, "error offset {o} beyond the file");
                }
                assert!(matches!(reader.next_datagram(), Ok(None)), "reader must stop after an error");
                break;
            }
        }
    }
    assert!(reader.bytes_consumed() <= data.len() as u64);
}

/// SIP/SDP: any bytes; a message that parses has a Call-ID.
pub fn sip_parse(data: &[u8]) {
    if let Some(m) = sip::parse_sip(data) {
        assert!(!m.call_id.is_empty());
    }
}

/// The keys the `sealed_file` target's inputs are sealed with (fixed, so a corpus stays valid).
pub fn sealed_file_keys() -> crate::seal::Keyring {
    use crate::seal::{Kek, Keyring, SigningKey};
    let kek = Kek::new("fuzz-kek", [7; 32], Default::default()).expect("a KEK");
    let signing = SigningKey::from_seed("fuzz-sign", [9; 32], Default::default()).expect("a seed");
    Keyring::from_keys(vec![kek], Some(signing))
}

/// A small valid sealed WAV (1 KiB chunks, three and a bit chunks of audio) for seeding.
pub fn sealed_file_seed(finalised: bool) -> Vec<u8> {
    use crate::seal::{Container, Content, SealParams, SealWriter};
    let keys = sealed_file_keys();
    let params = SealParams {
        content: Content::Audio,
        container: Container::Wav,
        chunk_size: 1024,
        recording_id: ulid::Ulid(0x0196_0000_0000_0000_0000_0000_0000_0001),
        created_ms: 1,
        index: "{\"recording_id\":\"x\",\"output\":0}".into(),
    };
    let spec = crate::output::wav::WavSpec::pcm(8000, 1);
    let head = crate::output::wav::build_header(&spec, 0, false);
    let mut w = SealWriter::create(Vec::new(), &params, keys.active_kek().expect("kek"), &head).expect("writer");
    let body: Vec<u8> = (0..3300u32).map(|i| (i * 7) as u8).collect();
    w.write(&body).expect("write");
    if !finalised {
        return w.get_ref().clone();
    }
    let final_head = crate::output::wav::build_header(&spec, body.len() as u64, false);
    w.finish(&final_head, 0, keys.signing().expect("signing"), 2).expect("finish").0
}

/// Sealed files from an untrusted store: any bytes. Opening, verifying, recovering and random
/// reads never panic; whatever verifies decrypts to exactly the signed length, and recovery of a
/// verified file finds its whole body.
pub fn sealed_file(data: &[u8]) {
    use crate::seal::SealedReader;
    let keys = sealed_file_keys();
    let Ok(mut r) = SealedReader::open(Cursor::new(data.to_vec()), &keys) else { return };
    let mut plain = Vec::new();
    let verified = r.verify(keys.trusted(), Some(&mut plain));
    let rec = r.recover();
    if let Ok(v) = &verified {
        assert_eq!(plain.len() as u64, v.record.plaintext_len);
        assert!(rec.body_complete, "a verified file recovers whole");
        assert_eq!(rec.body_len + u64::from(r.header().head_len), v.record.plaintext_len);
        let mut buf = [0u8; 100];
        for at in [0, 1, 79, 80, 1000, 1104, v.record.plaintext_len.saturating_sub(3), v.record.plaintext_len + 5] {
            let n = r.read_at(at, &mut buf).expect("a verified file reads");
            let from = (at as usize).min(plain.len());
            assert_eq!(&buf[..n], &plain[from..(from + 100).min(plain.len())]);
        }
    }
    let mut out = Vec::new();
    let _ = r.write_body_prefix(&rec, rec.body_len, &mut out);
    assert!(out.len() as u64 <= rec.body_len);
}

/// The API's `Range` header parser: any header for any length; a range it grants lies inside
/// the body and is never empty.
pub fn range_header(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 40);
    let header = String::from_utf8_lossy(&data[8..]);
    match crate::api::range::parse(Some(&header), len) {
        crate::api::range::Wanted::Part { start, end } => {
            assert!(start <= end && end < len, "{header:?} on {len}: {start}-{end}");
        }
        crate::api::range::Wanted::Whole | crate::api::range::Wanted::Unsatisfiable => {}
    }
}

/// A stored WAV as the API reads it for playback: any bytes as the plaintext; the header
/// parser and the G.711-as-PCM view never read out of bounds and give the bytes they promise.
pub fn wav_view(data: &[u8]) {
    use crate::api::media::{self, ReadAt};
    let mut src: Box<dyn ReadAt> = Box::new(media::InMemory(std::sync::Arc::new(data.to_vec())));
    let Ok(layout) = media::wav_layout(&mut *src) else { return };
    assert!(layout.data_offset + layout.data_len <= data.len() as u64, "{layout:?} past {} bytes", data.len());
    if layout.format_tag != 6 && layout.format_tag != 7 {
        return;
    }
    let mut view = media::G711AsPcm::new(src, layout);
    let len = view.len();
    let mut whole = vec![0u8; len as usize];
    assert_eq!(view.read_at(0, &mut whole).unwrap(), len as usize);
    // Any window reads the same bytes as the whole.
    let at = (u64::from(data.first().copied().unwrap_or(0)) * 7) % (len + 1);
    let mut part = vec![0u8; 33];
    let n = view.read_at(at, &mut part).unwrap();
    assert_eq!(&part[..n], &whole[at as usize..(at as usize + n)]);
    assert_eq!(n as u64, 33.min(len - at));
}
