//! Wideband codecs on the timeline: Opus loss concealment judged against the loss-free decode,
//! a mid-call codec change, and legs at different rates in one recording.

mod captures;
mod common;

use callvault::capture::CaptureReader;
use callvault::core::leg::TimelineConfig;
use callvault::core::payload::{PayloadFormat, PayloadMap};
use callvault::core::recording::{LegSpec, Recording, RecordingConfig};
use common::rtp;

fn recording(rate: u32, maps: Vec<PayloadMap>) -> Recording {
    let cfg =
        RecordingConfig { timeline: TimelineConfig { sample_rate: rate, ..Default::default() }, ..Default::default() };
    let legs = maps.into_iter().enumerate().map(|(i, m)| LegSpec { label: format!("l{i}"), payload_map: m }).collect();
    Recording::new(cfg, legs, Some(0))
}

/// Feeds `(time, leg, datagram)` in order and returns each leg's samples.
fn run(mut rec: Recording, input: &[(u64, usize, Vec<u8>)]) -> (Recording, Vec<Vec<i16>>) {
    let mut planes = vec![Vec::new(); rec.legs().len()];
    for (t, leg, d) in input {
        rec.handle_datagram(*t, *leg, d);
        while rec.poll_audio(*t, 4096, &mut planes) > 0 {}
    }
    rec.finish();
    while rec.poll_audio(u64::MAX, 4096, &mut planes) > 0 {}
    (rec, planes)
}

fn snr_db(reference: &[i16], got: &[i16]) -> f64 {
    let n = reference.len().min(got.len());
    let (mut sig, mut err) = (0f64, 0f64);
    for i in 0..n {
        let (r, g) = (f64::from(reference[i]), f64::from(got[i]));
        sig += r * r;
        err += (r - g) * (r - g);
    }
    10.0 * (sig / err.max(1.0)).log10()
}

#[test]
fn opus_loss_is_concealed_closer_to_the_loss_free_decode_than_silence() {
    let Some(dir) = captures::dir() else { return };
    let mut reader = CaptureReader::open(&dir.join("asterisk_opus_fec_full.pcapng")).unwrap();
    let mut packets = Vec::new();
    while let Ok(Some(d)) = reader.next_datagram() {
        packets.push((d.time_ns, 0usize, d.payload.to_vec()));
    }
    assert_eq!(packets.len(), 3000);
    let origin = packets[0].0;
    for p in &mut packets {
        p.0 -= origin;
    }
    let mut map = PayloadMap::with_static_types();
    map.insert(107, PayloadFormat::new("opus", 48000, Some(2)));
    let (_, clean) = run(recording(48000, vec![map.clone()]), &packets);
    // Drop one packet in 25 and, every 400, two in a row: 135 of 3000, single and double losses.
    let dropped: Vec<usize> = (100..2900).filter(|i| i % 25 == 0 || (i % 400 == 1)).collect();
    let lossy: Vec<_> =
        packets.iter().enumerate().filter(|(i, _)| !dropped.contains(i)).map(|(_, p)| p.clone()).collect();
    let (rec, concealed) = run(recording(48000, vec![map]), &lossy);
    let leg = &rec.legs()[0];
    assert_eq!(leg.lost(), dropped.len() as u64);
    assert_eq!(leg.stats().concealed, dropped.len() as u64, "every lost packet was filled");
    assert_eq!(clean[0].len(), concealed[0].len(), "loss does not change the length");
    // Silence fill: the loss-free decode with the lost packets' 20 ms zeroed.
    let first_pos = leg.start().unwrap() as usize;
    let mut silent = clean[0].clone();
    for &i in &dropped {
        let at = first_pos + i * 960;
        silent[at..at + 960].iter_mut().for_each(|s| *s = 0);
    }
    let (with_fec, with_silence) = (snr_db(&clean[0], &concealed[0]), snr_db(&clean[0], &silent));
    eprintln!(
        "Opus, {} of 3000 packets lost: SNR against the loss-free decode {with_fec:.1} dB with FEC/PLC, {with_silence:.1} dB with silence",
        dropped.len()
    );
    assert!(with_fec > with_silence + 3.0, "FEC/PLC {with_fec:.1} dB vs silence {with_silence:.1} dB");
}

#[test]
fn a_codec_change_from_g722_to_pcma_keeps_the_channel_one_to_one_with_wall_clock_time() {
    // 2 s of G.722 then 2 s of PCMA on one SSRC, timestamps continuing (both clocks are 8 kHz).
    let mut enc = ezk_g722::libg722::encoder::Encoder::new(ezk_g722::libg722::Bitrate::Mode1_64000, false, false);
    let tone: Vec<i16> = (0..320).map(|i| (6000.0 * (i as f64 * 0.1).sin()) as i16).collect();
    let mut input = Vec::new();
    for i in 0..200u32 {
        let t = u64::from(i) * 20_000_000;
        let (pt, payload) = if i < 100 { (9, enc.encode(&tone)) } else { (8, vec![0xd5; 160]) };
        input.push((t, 0, rtp(pt, i as u16, i * 160, 0x1111, &payload)));
    }
    for rate in [8000u32, 16000, 48000] {
        let (rec, planes) = run(recording(rate, vec![PayloadMap::with_static_types()]), &input);
        let per_ms = rate as usize / 1000;
        assert_eq!(planes[0].len(), 4000 * per_ms, "4 s at {rate} Hz");
        assert_eq!(rec.legs()[0].stats().discontinuities, 0, "a codec change is not a clock jump");
        // The G.722 half carries the tone, the A-law half (0xd5 = silence) is quiet.
        let peak = |r: std::ops::Range<usize>| planes[0][r].iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak(500 * per_ms..1900 * per_ms) > 3000, "G.722 part at {rate} Hz");
        assert!(peak(2100 * per_ms..3900 * per_ms) < 100, "A-law part at {rate} Hz");
    }
}

#[test]
fn legs_at_different_rates_give_channels_of_equal_length() {
    // Leg 0 sends G.711 (8 kHz), leg 1 G.722 (16 kHz audio), leg 2 Opus (48 kHz clock), 3 s each.
    let mut g722 = ezk_g722::libg722::encoder::Encoder::new(ezk_g722::libg722::Bitrate::Mode1_64000, false, false);
    let mut opus = opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    let mut map = PayloadMap::with_static_types();
    map.insert(96, PayloadFormat::new("opus", 48000, Some(2)));
    let mut input = Vec::new();
    for i in 0..150u32 {
        let t = u64::from(i) * 20_000_000 + 5_000_000;
        input.push((t, 0, rtp(0, i as u16, i * 160, 1, &[0x7f; 160])));
        input.push((t, 1, rtp(9, i as u16, i * 160, 2, &g722.encode(&[100; 320]))));
        input.push((t, 2, rtp(96, i as u16, i * 960, 3, &opus.encode_vec(&[100; 960], 1500).unwrap())));
    }
    for rate in [8000u32, 16000, 48000] {
        let (_, planes) = run(recording(rate, vec![map.clone(); 3]), &input);
        let lens: Vec<usize> = planes.iter().map(Vec::len).collect();
        assert!(lens.iter().all(|l| *l == lens[0]), "{lens:?} at {rate}");
        // 5 ms start offset + 3 s.
        assert_eq!(lens[0], 3005 * rate as usize / 1000, "at {rate}");
    }
}

#[test]
fn comfort_noise_fills_the_silence_at_its_level_unless_turned_off() {
    // 1 s of PCMU, a CN packet at −40 dBov, 1 s without packets, 1 s of PCMU again.
    let mut input = Vec::new();
    let mut seq = 0u16;
    for i in 0..150u32 {
        if (50..100).contains(&i) {
            if i == 50 {
                input.push((u64::from(i) * 20_000_000, 0, rtp(13, seq, i * 160, 9, &[40])));
                seq += 1;
            }
            continue;
        }
        input.push((u64::from(i) * 20_000_000, 0, rtp(0, seq, i * 160, 9, &[0xff; 160])));
        seq += 1;
    }
    let rms = |s: &[i16]| (s.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / s.len() as f64).sqrt();
    for fill in [true, false] {
        let cfg = RecordingConfig {
            timeline: TimelineConfig { comfort_noise: fill, ..Default::default() },
            ..Default::default()
        };
        let spec = LegSpec { label: "a".into(), payload_map: PayloadMap::with_static_types() };
        let (rec, planes) = run(Recording::new(cfg, vec![spec], Some(0)), &input);
        assert_eq!(rec.legs()[0].stats().comfort_noise_packets, 1);
        let gap = &planes[0][8000 + 80..16000 - 80];
        assert_eq!(planes[0].len(), 24000);
        if fill {
            // −40 dBov: RMS 32767/√2 × 10^(−2) ≈ 232.
            let r = rms(gap);
            assert!((200.0..265.0).contains(&r), "noise RMS {r}");
        } else {
            assert!(gap.iter().all(|s| *s == 0));
        }
        assert!(rms(&planes[0][16000 + 80..]) < 1.0, "µ-law 0xff is silence: no noise once audio resumed");
    }
}

// Found when tried to break: a codec change to another RTP clock on the same SSRC (PCMU, then
// Opus with its timestamps in 48 kHz units) dropped every Opus packet as late.
#[test]
fn a_change_to_a_codec_with_another_clock_on_one_ssrc_is_placed_by_arrival() {
    let mut opus = opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    let tone: Vec<i16> = (0..960).map(|i| (8000.0 * (i as f64 * 0.05).sin()) as i16).collect();
    let mut map = PayloadMap::with_static_types();
    map.insert(96, PayloadFormat::new("opus", 48000, Some(2)));
    let mut input = Vec::new();
    for i in 0..300u32 {
        let t = u64::from(i) * 20_000_000;
        let p = if i < 150 {
            rtp(0, i as u16, i * 160, 5, &[0xff; 160])
        } else {
            rtp(96, i as u16, 150 * 160 + (i - 150) * 960, 5, &opus.encode_vec(&tone, 1500).unwrap())
        };
        input.push((t, 0, p));
    }
    let (rec, planes) = run(recording(16000, vec![map]), &input);
    let s = rec.legs()[0].stats();
    assert_eq!((s.late, s.audio_packets), (0, 300), "{s:?}");
    assert_eq!(planes[0].len(), 6 * 16000, "6 s at 16 kHz");
    let loud = planes[0][3 * 16000 + 800..].iter().filter(|v| v.unsigned_abs() > 2000).count();
    assert!(loud > 2 * 16000, "the Opus half is there: {loud} loud samples");
}

// Found when tried to break: duplicates went through the decoder before the timeline dropped
// them, corrupting G.722's adaptive state (mirror ports often deliver every packet twice).
#[test]
fn duplicates_never_reach_the_decoder() {
    let mut enc = ezk_g722::libg722::encoder::Encoder::new(ezk_g722::libg722::Bitrate::Mode1_64000, false, false);
    let tone: Vec<i16> = (0..320).map(|i| (6000.0 * (i as f64 * 0.3).sin()) as i16).collect();
    let mut once = Vec::new();
    let mut twice = Vec::new();
    for i in 0..100u32 {
        let p = rtp(9, i as u16, i * 160, 3, &enc.encode(&tone));
        let t = u64::from(i) * 20_000_000;
        once.push((t, 0, p.clone()));
        twice.push((t, 0, p.clone()));
        twice.push((t + 1_000_000, 0, p));
    }
    let (_, a) = run(recording(16000, vec![PayloadMap::with_static_types()]), &once);
    let (rec, b) = run(recording(16000, vec![PayloadMap::with_static_types()]), &twice);
    assert_eq!(rec.legs()[0].stats().duplicates, 100);
    assert_eq!(a, b, "the same audio with and without duplicates");
}

// Found when tried to break: a corrupt Opus packet was silence and then counted as concealed.
#[test]
fn a_corrupt_opus_packet_is_concealed_and_counted_once() {
    let mut opus = opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    let tone: Vec<i16> = (0..960).map(|i| (8000.0 * (i as f64 * 0.05).sin()) as i16).collect();
    let mut map = PayloadMap::with_static_types();
    map.insert(96, PayloadFormat::new("opus", 48000, Some(2)));
    let input: Vec<_> = (0..100u32)
        .map(|i| {
            let payload = if i % 10 == 5 { vec![0x0b, 0x00] } else { opus.encode_vec(&tone, 1500).unwrap() };
            (u64::from(i) * 20_000_000, 0, rtp(96, i as u16, i * 960, 1, &payload))
        })
        .collect();
    let (rec, planes) = run(recording(48000, vec![map]), &input);
    let s = rec.legs()[0].stats();
    assert_eq!((s.decode_errors, s.concealed, rec.legs()[0].lost()), (10, 10, 0), "{s:?}");
    let slot = &planes[0][15 * 960..16 * 960];
    assert!(slot.iter().any(|v| v.unsigned_abs() > 500), "the corrupt packet's slot is concealed, not silent");
}
