//! Property tests for the per-leg timeline: the right wall-clock length and the right samples
//! under reordering, duplicates, loss, SSRC changes, wraps, resets, hold and clock skew.

mod common;

use common::*;
use proptest::prelude::*;

fn one_leg(sent: Vec<Sent>) -> (Vec<i16>, Output) {
    let out = run(config(), &[sent], None);
    (out.planes[0].clone(), out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Sequence and timestamp start anywhere, wrapping at any point (also in the first packets):
    /// the leg is the payloads back to back, nothing lost or late.
    #[test]
    fn wraps_anywhere_change_nothing(seq0 in any::<u16>(), ts_back in 0u32..20_000, seed in any::<u64>()) {
        let ts0 = 0u32.wrapping_sub(ts_back);
        let sent = pcmu_stream(150, 1_000 * MS, seq0, ts0, 0x1111, seed);
        let (leg, out) = one_leg(sent.clone());
        prop_assert_eq!(&leg, &decoded(&sent));
        let s = out.rec.legs()[0].stats();
        prop_assert_eq!((s.late, s.duplicates, s.discontinuities, out.rec.legs()[0].lost()), (0, 0, 0, 0));
    }

    /// Packets swapped within the reorder window arrive at the same instants but out of order:
    /// the output is the in-order output.
    #[test]
    fn reordering_within_the_window_is_undone(seq0 in any::<u16>(), ts0 in any::<u32>(), seed in any::<u64>(), swaps in proptest::collection::vec((1usize..148, 1usize..4), 1..20)) {
        let sent = pcmu_stream(150, 0, seq0, ts0, 0x2222, seed);
        let mut shuffled = sent.clone();
        for (i, d) in swaps {
            let j = (i + d).min(149);
            let (a, b) = (shuffled[i].bytes.clone(), shuffled[j].bytes.clone());
            shuffled[i].bytes = b;
            shuffled[j].bytes = a;
        }
        let (leg, out) = one_leg(shuffled);
        prop_assert_eq!(&leg, &decoded(&sent));
        let s = out.rec.legs()[0].stats();
        prop_assert_eq!((s.late, out.rec.legs()[0].lost(), s.discontinuities), (0, 0, 0));
    }

    /// Duplicates are dropped and counted; loss becomes silence of the right length and counts.
    #[test]
    fn duplicates_dropped_loss_filled(seq0 in any::<u16>(), ts0 in any::<u32>(), seed in any::<u64>(), drop in proptest::collection::btree_set(1usize..149, 0..20), dup in proptest::collection::btree_set(0usize..150, 0..20)) {
        let sent = pcmu_stream(150, 0, seq0, ts0, 0x3333, seed);
        let mut expect = decoded(&sent);
        let mut fed = Vec::new();
        for (i, s) in sent.iter().enumerate() {
            if drop.contains(&i) {
                expect[i * 160..(i + 1) * 160].fill(0);
                continue;
            }
            fed.push(s.clone());
            if dup.contains(&i) {
                fed.push(Sent { at: s.at + MS, bytes: s.bytes.clone() });
            }
        }
        let dups = dup.difference(&drop).count() as u64;
        let (leg, out) = one_leg(fed);
        prop_assert_eq!(leg.len(), expect.len());
        prop_assert_eq!(&leg, &expect);
        let l = &out.rec.legs()[0];
        prop_assert_eq!((l.lost(), l.stats().duplicates), (drop.len() as u64, dups));
    }

    /// An SSRC change (new SSRC, new random sequence and timestamp) continues the same channel,
    /// re-anchored by arrival: with steady pacing nothing moves.
    #[test]
    fn ssrc_change_continues_the_channel(at in 1usize..149, seq1 in any::<u16>(), ts1 in any::<u32>(), seed in any::<u64>()) {
        let first = pcmu_stream(150, 0, 100, 5000, 0xaaaa, seed);
        let second = pcmu_stream(150, 0, seq1, ts1, 0xbbbb, seed ^ 0x55);
        let mut fed: Vec<Sent> = first[..at].to_vec();
        fed.extend(second[at..].iter().cloned());
        let expect = decoded(&fed);
        let (leg, out) = one_leg(fed);
        prop_assert_eq!(&leg, &expect);
        let l = &out.rec.legs()[0];
        prop_assert_eq!(l.stats().ssrc_changes, 1);
        prop_assert_eq!(l.ssrcs(), &[0xaaaa, 0xbbbb][..]);
        prop_assert_eq!(l.lost(), 0);
    }

    /// A timestamp reset (same SSRC, timestamp jumps to an unrelated value) is a discontinuity:
    /// re-anchored by arrival, so the wall-clock length is kept and nothing collapses.
    #[test]
    fn timestamp_reset_keeps_wall_clock(at in 1usize..149, ts1 in any::<u32>(), seed in any::<u64>()) {
        let sent = pcmu_stream(150, 0, 7, 90_000, 0xcccc, seed);
        let mut fed = sent.clone();
        for (k, s) in fed.iter_mut().enumerate().skip(at) {
            let ts = ts1.wrapping_add(160 * (k - at) as u32);
            s.bytes[4..8].copy_from_slice(&ts.to_be_bytes());
        }
        // Steps that happen to look like normal pacing are not discontinuities.
        let step = ts1.wrapping_sub(90_000u32.wrapping_add(160 * (at as u32 - 1))) as i32;
        let (leg, out) = one_leg(fed);
        prop_assert_eq!(&leg, &decoded(&sent));
        if !(0..=16_160).contains(&step) {
            prop_assert_eq!(out.rec.legs()[0].stats().discontinuities, 1);
        }
    }
}

/// A 30-minute hold with no packets: the channel keeps running as silence of the right length,
/// whether the sender's timestamps advanced during the hold or stood still.
#[test]
fn thirty_minute_hold_is_silence_of_the_right_length() {
    for frozen in [false, true] {
        let before = pcmu_stream(100, 0, 1, 1000, 0xdd, 1);
        let hold_ns = 30 * 60 * 1_000 * MS;
        let mut after = pcmu_stream(100, 2_000 * MS + hold_ns, 101, 1000 + 160 * 100, 0xdd, 2);
        if !frozen {
            for s in &mut after {
                let ts = u32::from_be_bytes(s.bytes[4..8].try_into().unwrap()).wrapping_add(8 * 1000 * 1800);
                s.bytes[4..8].copy_from_slice(&ts.to_be_bytes());
            }
        }
        let mut fed = before.clone();
        fed.extend(after.iter().cloned());
        let (leg, out) = one_leg(fed);
        let resume = (2_000 * MS + hold_ns) as usize / 125_000; // sample index of the first packet after hold
        assert_eq!(leg.len(), resume + 100 * 160, "frozen={frozen}");
        assert_eq!(&leg[..16_000], &decoded(&before)[..]);
        assert!(leg[16_000..resume].iter().all(|&s| s == 0));
        assert_eq!(&leg[resume..], &decoded(&after)[..]);
        assert_eq!(out.rec.legs()[0].stats().discontinuities, u64::from(frozen));
    }
}

/// Two legs over an hour, one sender's clock 100 ppm fast and the other's 100 ppm slow (both
/// against the recorder's clock). Without correction they would end 0.72 s apart; with it, each
/// channel keeps wall-clock length within one frame, and corrections land only in silence.
#[test]
fn clock_skew_of_100_ppm_over_an_hour_is_corrected_in_silence() {
    let packets: u64 = 180_000; // one hour of 20 ms frames by the sender's clock
    let mut legs = Vec::new();
    for (ppm, ssrc) in [(100i64, 1u32), (-100, 2)] {
        let mut rng = Rng(ssrc as u64 + 7);
        let period_ns = (20 * MS as i64 * 1_000_000 / (1_000_000 + ppm)) as u64;
        let sent: Vec<Sent> = (0..packets)
            .map(|i| Sent {
                at: i * period_ns,
                // 1 s of speech then 1 s of silence, repeating.
                bytes: rtp(0, i as u16, (160 * i) as u32, ssrc, &payload(&mut rng, i, 160, 100, 50)),
            })
            .collect();
        legs.push(sent);
    }
    let out = run(config(), &legs, Some(0));
    for (i, ppm) in [(0usize, 100i64), (1, -100)] {
        let leg = &out.rec.legs()[i];
        let s = leg.stats();
        let wall_end = legs[i].last().unwrap().at as i64 / 125_000 + 160;
        let placed_end = leg.written_end();
        assert!(
            (placed_end - wall_end).abs() <= 160,
            "leg {i} ({ppm} ppm): ends at {placed_end}, wall clock {wall_end}"
        );
        assert!(s.drift_corrections > 0);
        if ppm > 0 {
            assert!(s.drift_samples_dropped > 2000 && s.drift_samples_inserted == 0, "{s:?}");
        } else {
            assert!(s.drift_samples_inserted > 2000 && s.drift_samples_dropped == 0, "{s:?}");
        }
        // Speech frames are intact: every loud frame in the output is a frame that was sent.
        let plane = &out.planes[i];
        let loud_in = decoded(&legs[i]).iter().filter(|v| v.unsigned_abs() > 1024).count();
        let loud_out = plane.iter().filter(|v| v.unsigned_abs() > 1024).count();
        assert_eq!(loud_in, loud_out, "leg {i}: no speech sample dropped or duplicated");
    }
    assert_eq!(out.planes[0].len(), out.planes[1].len());
}

/// On a steady stream without skew, drift correction never fires.
#[test]
fn no_skew_no_correction() {
    let sent = pcmu_stream(3000, 0, 1, 1, 9, 3);
    let (leg, out) = one_leg(sent.clone());
    assert_eq!(leg, decoded(&sent));
    assert_eq!(out.rec.legs()[0].stats().drift_corrections, 0);
}

/// A packet too late for its position is counted late and dropped, not written over later audio.
#[test]
fn late_packet_is_counted_and_dropped() {
    let sent = pcmu_stream(50, 0, 1, 1, 9, 4);
    let mut fed = sent.clone();
    let late = fed.remove(10);
    fed.push(Sent { at: 40 * 20 * MS, bytes: late.bytes });
    fed.sort_by_key(|s| s.at);
    let (leg, out) = one_leg(fed);
    let mut expect = decoded(&sent);
    expect[1600..1760].fill(0);
    assert_eq!(leg, expect);
    let s = out.rec.legs()[0].stats();
    assert_eq!((s.late, s.reordered), (1, 1));
}

/// RTCP on the RTP port (rtcp-mux) and garbage are counted, never decoded as audio.
#[test]
fn rtcp_and_garbage_are_never_audio() {
    let sent = pcmu_stream(20, 0, 1, 1, 9, 5);
    let mut fed = sent.clone();
    let mut sr = vec![0x80, 200, 0, 6];
    sr.extend_from_slice(&[0u8; 24]);
    fed.insert(5, Sent { at: fed[4].at + 1, bytes: sr });
    fed.insert(7, Sent { at: fed[6].at + 1, bytes: vec![0x12, 0x34] });
    let (leg, out) = one_leg(fed);
    assert_eq!(leg, decoded(&sent));
    let s = out.rec.legs()[0].stats();
    assert_eq!((s.rtcp_packets, s.malformed, s.packets), (1, 1, 20));
}

/// DTMF events are recorded with offset and duration, never as audio; digits only when asked.
#[test]
fn telephone_events_are_recorded_not_decoded() {
    let mut map = callvault::core::payload::PayloadMap::default();
    map.insert(101, callvault::core::payload::PayloadFormat::new("telephone-event", 8000, None));
    let sent = pcmu_stream(50, 0, 1, 1, 9, 6);
    let mut fed = sent[..10].to_vec();
    // Digit 5 from ts 1+1600 for 3 packets, end packet sent three times (same seq each time).
    for (k, dur) in [(0u16, 160u16), (1, 320), (2, 480)] {
        let end = k == 2;
        let mut p = vec![5u8, if end { 0x80 } else { 0 } | 10];
        p.extend_from_slice(&dur.to_be_bytes());
        let pkt = rtp(101, 11 + k, 1 + 1600, 9, &p);
        let copies = if end { 3 } else { 1 };
        for c in 0..copies {
            fed.push(Sent { at: (10 + k as u64) * 20 * MS + c, bytes: pkt.clone() });
        }
    }
    // Audio resumes with the next sequence number (events and audio share one sequence space).
    fed.extend(sent[13..].iter().cloned());
    for keep in [true, false] {
        let cfg = callvault::core::recording::RecordingConfig { keep_dtmf_digits: keep, ..config() };
        let Output { planes, rec } = run_with_map(cfg, &map, &[fed.clone()], None);
        let leg = &rec.legs()[0];
        assert_eq!(leg.events().len(), 1);
        let e = &leg.events()[0];
        assert_eq!((e.start, e.duration_ms), (1600, 60));
        assert_eq!(e.digit, if keep { Some('5') } else { None });
        assert_eq!(leg.stats().duplicates, 2);
        assert_eq!(leg.lost(), 0);
        assert_eq!(leg.stats().packets, fed.len() as u64);
        // Event time is silence in the audio.
        assert!(planes[0][1600..2080].iter().all(|&v| v == 0));
        assert_eq!(planes[0].len(), 50 * 160);
    }
}

/// Found by the fuzzer: a telephone-event whose timestamp says it starts hours after it arrived
/// stretched the recording by those hours of silence. It is placed by arrival instead.
#[test]
fn an_event_timestamped_hours_ahead_cannot_stretch_the_recording() {
    let mut map = callvault::core::payload::PayloadMap::default();
    map.insert(101, callvault::core::payload::PayloadFormat::new("telephone-event", 8000, None));
    let sent = pcmu_stream(50, 0, 1, 1, 9, 6);
    let mut fed = sent[..25].to_vec();
    // Digit 1, its timestamp ten hours past the audio's, arriving with the 26th packet's time.
    let mut p = vec![1u8, 0x80 | 10];
    p.extend_from_slice(&160u16.to_be_bytes());
    fed.push(Sent { at: 25 * 20 * MS, bytes: rtp(101, 26, 1 + 10 * 3600 * 8000, 9, &p) });
    fed.extend(sent[25..].iter().map(|s| {
        // Audio continues with the next sequence numbers.
        let mut b = s.bytes.clone();
        let seq = u16::from_be_bytes([b[2], b[3]]) + 1;
        b[2..4].copy_from_slice(&seq.to_be_bytes());
        Sent { at: s.at, bytes: b }
    }));
    let Output { planes, rec } = run_with_map(config(), &map, &[fed], None);
    assert_eq!(planes[0].len(), 50 * 160, "the call's second, not ten hours");
    let e = &rec.legs()[0].events()[0];
    assert!((25 * 160..=26 * 160).contains(&e.start), "placed by arrival: {}", e.start);
}

/// A sender ten times faster than real time (a burst, a replay at speed) cannot stretch the
/// recording past the wall clock: what would sit more than 5 s ahead of its arrival is dropped
/// and counted in `ahead`. (Once, 200,000 packets sent in a second made a 66-minute file.)
#[test]
fn a_sender_faster_than_real_time_cannot_stretch_the_recording() {
    // 3,000 packets (60 s of audio) sent in 6 s.
    let sent: Vec<Sent> = pcmu_stream(3000, 0, 100, 1000, 0x7777, 7)
        .into_iter()
        .enumerate()
        .map(|(i, s)| Sent { at: i as u64 * 2 * MS, bytes: s.bytes })
        .collect();
    let expect = decoded(&sent);
    let (leg, out) = one_leg(sent);
    let s = out.rec.legs()[0].stats();
    let last_arrival = 2999 * 2 * 8; // samples
    assert!(leg.len() as u64 <= last_arrival + 5_000 * 8 + 160, "{} samples", leg.len());
    assert!(leg.len() as u64 >= last_arrival + 4_900 * 8, "placed up to 5 s ahead: {} samples", leg.len());
    assert_eq!(s.audio_packets + s.ahead, 3000, "every packet placed or counted: {s:?}");
    assert_eq!(out.rec.legs()[0].lost(), 0);
    // What was placed is the stream's own audio, in order, from the start.
    assert_eq!(&leg[..8000], &expect[..8000]);
}

/// Interarrival jitter (RFC 3550 A.8): none for a steady sender; about the spread of arrival
/// times for one whose packets arrive up to 10 ms late at random.
#[test]
fn jitter_follows_rfc_3550() {
    let steady = pcmu_stream(500, 0, 1, 1, 0x8888, 3);
    let (_, out) = one_leg(steady.clone());
    assert!(out.rec.legs()[0].jitter_s() < 1e-9, "{}", out.rec.legs()[0].jitter_s());
    let mut x = 12345u64;
    let jittery: Vec<Sent> = steady
        .into_iter()
        .map(|s| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            Sent { at: s.at + (x >> 33) % (10 * MS), bytes: s.bytes }
        })
        .collect();
    let (_, out) = one_leg(jittery);
    let j = out.rec.legs()[0].jitter_s();
    // Uniform 0-10 ms delays: the mean |D| of two independent delays is 10/3 ms.
    assert!((0.0015..0.005).contains(&j), "jitter {j} s");
}
