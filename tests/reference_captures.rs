//! The recording of every G.711 stream in the shared captures matches the independent reference
//! decode sample for sample, and the reported counts match the reference summaries.

mod captures;

use std::collections::BTreeMap;

use callvault::core::mixer::Layout;
use callvault::import::{self, ImportOptions};

fn read_wav(path: &str) -> (u16, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let ch = r.spec().channels;
    (ch, r.samples::<i16>().map(|s| s.unwrap()).collect())
}

#[test]
fn every_g711_stream_matches_its_reference_decode() {
    let Some(dir) = captures::dir() else { return };
    let mut summaries: Vec<_> = std::fs::read_dir(dir.join("reference"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".summary.json"))
        .collect();
    summaries.sort();
    assert!(summaries.len() >= 8, "expected the reference summaries in {}", dir.display());
    let mut checked = 0;
    for summary_path in summaries {
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
        let capture = dir.join(summary["capture"].as_str().unwrap());
        for layout in [Layout::Stereo, Layout::Separate] {
            let out = tempfile::tempdir().unwrap();
            let opts = ImportOptions {
                capture: capture.clone(),
                out_dir: out.path().to_path_buf(),
                layout,
                payload_overrides: vec![],
                keep_dtmf_digits: false,
                sealing: None,
                sample_rate: None,
                comfort_noise: true,
                format: Default::default(),
            };
            let report = import::run(&opts, None).unwrap();
            assert_eq!(report.exit_code(), 0, "{}: {:?}", capture.display(), report.errors);
            for stream in summary["streams"].as_array().unwrap() {
                let (src, dst) = (stream["src"].as_str().unwrap(), stream["dst"].as_str().unwrap());
                let (rec, leg) = report
                    .recordings
                    .iter()
                    .flat_map(|r| r.legs.iter().map(move |l| (r, l)))
                    .find(|(_, l)| l.src.as_deref() == Some(src) && l.dst.as_deref() == Some(dst))
                    .unwrap_or_else(|| panic!("{}: no leg {src} -> {dst}", capture.display()));
                let what = format!("{} {src}->{dst} ({layout:?})", capture.display());
                // Counts against the summary.
                assert_eq!(leg.packets, stream["packets"].as_u64().unwrap(), "{what}: packets");
                assert_eq!(leg.lost, stream["seq_lost"].as_u64().unwrap(), "{what}: lost");
                assert_eq!(leg.duplicates, stream["duplicates"].as_u64().unwrap(), "{what}: duplicates");
                assert_eq!(leg.reordered, stream["reordered"].as_u64().unwrap(), "{what}: reordered");
                assert_eq!(leg.late, 0, "{what}: late");
                assert_eq!(leg.ssrcs, vec![stream["ssrc"].as_str().unwrap().to_string()], "{what}: ssrcs");
                let pts: BTreeMap<_, _> =
                    stream["payload_types"].as_object().unwrap().keys().cloned().map(|k| (k, ())).collect();
                let ours: BTreeMap<_, _> = leg.payload_types.keys().cloned().map(|k| (k, ())).collect();
                assert_eq!(ours, pts, "{what}: payload types");
                assert!(!leg.silent);
                // Samples against the reference decode.
                let g711 = &stream["g711"];
                let reference =
                    dir.join("reference").join(format!("{}.timeline.wav", g711["wav_basename"].as_str().unwrap()));
                let (_, want) = read_wav(reference.to_str().unwrap());
                assert_eq!(want.len() as u64, g711["timeline_samples"].as_u64().unwrap());
                let (channels, samples, channel) = match layout {
                    Layout::Separate => {
                        let (c, s) = read_wav(leg.file.as_deref().unwrap());
                        (c, s, 0)
                    }
                    _ => {
                        let (c, s) = read_wav(rec.file.as_deref().unwrap());
                        (c, s, leg.channel)
                    }
                };
                let plane: Vec<i16> =
                    samples.iter().skip(channel as usize).step_by(channels as usize).copied().collect();
                let start = (leg.start_offset_ms.unwrap() * 8) as usize;
                assert!(
                    plane.len() >= start + want.len(),
                    "{what}: channel too short ({} < {})",
                    plane.len(),
                    start + want.len()
                );
                assert!(plane[..start].iter().all(|&s| s == 0), "{what}: audio before the leg started");
                let got = &plane[start..start + want.len()];
                if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                    panic!(
                        "{what}: first difference at sample {i} of {}: got {}, want {}",
                        want.len(),
                        got[i],
                        want[i]
                    );
                }
                assert!(plane[start + want.len()..].iter().all(|&s| s == 0), "{what}: audio after the reference ends");
                assert_eq!(rec.duration_ms, plane.len() as u64 / 8, "{what}: duration");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 11, "every reference stream checked in both layouts");
}
