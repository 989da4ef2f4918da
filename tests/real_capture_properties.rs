//! Property tests on a real capture, permuted and re-stamped: the recorded leg must not change
//! (reordering within the window, duplicates, sequence/timestamp wrap anywhere), and an SSRC
//! change keeps every sample, shifted by at most the arrival jitter.

mod captures;

use callvault::capture::CaptureReader;
use callvault::core::payload::PayloadMap;
use callvault::core::recording::{LegSpec, Recording, RecordingConfig};
use proptest::prelude::*;

struct Pkt {
    at: u64,
    bytes: Vec<u8>,
}

fn load(name: &str) -> Option<Vec<Pkt>> {
    let dir = captures::dir()?;
    let mut r = CaptureReader::open(&dir.join(name)).unwrap();
    let mut v = Vec::new();
    while let Some(d) = r.next_datagram().unwrap() {
        v.push(Pkt { at: d.time_ns, bytes: d.payload });
    }
    Some(v)
}

fn record(pkts: &[Pkt]) -> (Vec<i16>, Recording) {
    let specs = vec![LegSpec { label: "a".into(), payload_map: PayloadMap::default() }];
    let mut rec = Recording::new(RecordingConfig::default(), specs, Some(pkts[0].at));
    let mut planes = vec![Vec::new()];
    for p in pkts {
        rec.handle_datagram(p.at, 0, &p.bytes);
        while rec.poll_audio(p.at, 4096, &mut planes) > 0 {}
    }
    rec.finish();
    while rec.poll_audio(0, 4096, &mut planes) > 0 {}
    (planes.pop().unwrap(), rec)
}

fn restamp(p: &mut Pkt, dseq: u16, dts: u32, ssrc: Option<u32>) {
    let seq = u16::from_be_bytes([p.bytes[2], p.bytes[3]]).wrapping_add(dseq);
    let ts = u32::from_be_bytes(p.bytes[4..8].try_into().unwrap()).wrapping_add(dts);
    p.bytes[2..4].copy_from_slice(&seq.to_be_bytes());
    p.bytes[4..8].copy_from_slice(&ts.to_be_bytes());
    if let Some(s) = ssrc {
        p.bytes[8..12].copy_from_slice(&s.to_be_bytes());
    }
}

const CAPTURE: &str = "asterisk_ulaw_seq_gap.pcap"; // 800 packets, 14 lost, real jitter

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn reorder_duplicate_and_wrap_change_nothing(
        delays in proptest::collection::vec((1usize..790, 1usize..8), 0..40),
        dups in proptest::collection::btree_set(0usize..800, 0..30),
        wrap_at in 0usize..800,
    ) {
        let Some(orig) = load(CAPTURE) else { return Ok(()) };
        let (base, _) = record(&orig);
        let mut pkts: Vec<Pkt> = orig.iter().map(|p| Pkt { at: p.at, bytes: p.bytes.clone() }).collect();
        // Shift numbering so both sequence and timestamp wrap exactly at packet `wrap_at`.
        let seq_w = u16::from_be_bytes([pkts[wrap_at].bytes[2], pkts[wrap_at].bytes[3]]);
        let ts_w = u32::from_be_bytes(pkts[wrap_at].bytes[4..8].try_into().unwrap());
        for p in &mut pkts {
            restamp(p, 0u16.wrapping_sub(seq_w), 0u32.wrapping_sub(ts_w), None);
        }
        // Delay packets past up to 7 later ones (within the 200 ms reorder window): genuine
        // reordering, as jitter makes it.
        let arrivals: Vec<u64> = pkts.iter().map(|p| p.at).collect();
        for (i, d) in delays {
            let mut j = (i + d).min(pkts.len() - 1);
            // Stay inside the reorder window, with margin for the arrival jitter.
            while j > i && arrivals[j] - arrivals[i] > 150_000_000 {
                j -= 1;
            }
            pkts[i].at = pkts[i].at.max(arrivals[j] + 1_000);
        }
        let mut fed = Vec::new();
        for (i, p) in pkts.into_iter().enumerate() {
            let again = dups.contains(&i).then(|| Pkt { at: p.at + 500_000, bytes: p.bytes.clone() });
            fed.push(p);
            fed.extend(again);
        }
        fed.sort_by_key(|p| p.at);
        let (got, rec) = record(&fed);
        prop_assert_eq!(got.len(), base.len());
        prop_assert!(got == base, "samples differ");
        let leg = &rec.legs()[0];
        prop_assert_eq!(leg.lost(), 14);
        prop_assert_eq!(leg.stats().duplicates, dups.len() as u64);
        prop_assert_eq!(leg.stats().late, 0);
    }

    #[test]
    fn ssrc_change_keeps_every_sample(at in 1usize..799, dseq in any::<u16>(), dts in any::<u32>(), ssrc in any::<u32>()) {
        let Some(orig) = load(CAPTURE) else { return Ok(()) };
        let (base, _) = record(&orig);
        let old_ssrc = u32::from_be_bytes(orig[0].bytes[8..12].try_into().unwrap());
        prop_assume!(ssrc != old_ssrc);
        let mut pkts: Vec<Pkt> = orig.iter().map(|p| Pkt { at: p.at, bytes: p.bytes.clone() }).collect();
        for p in &mut pkts[at..] {
            restamp(p, dseq, dts, Some(ssrc));
        }
        let (got, rec) = record(&pkts);
        let leg = &rec.legs()[0];
        prop_assert_eq!(leg.stats().ssrc_changes, 1);
        // Everything before the change is untouched.
        let ts0 = u32::from_be_bytes(orig[0].bytes[4..8].try_into().unwrap());
        let ts_at = u32::from_be_bytes(orig[at].bytes[4..8].try_into().unwrap());
        let change = ts_at.wrapping_sub(ts0) as usize;
        prop_assert!(got[..change] == base[..change]);
        // After it, the same samples follow, shifted by the re-anchoring (arrival jitter only).
        let tail = &base[change..];
        let shift = (0..=480usize).find(|&d| got.len() >= change + d + tail.len() && got[change + d..change + d + tail.len()] == *tail);
        prop_assert!(shift.is_some(), "tail not found within 60 ms of its place");
        prop_assert!(got[change..change + shift.unwrap()].iter().all(|&s| s == 0));
    }
}
