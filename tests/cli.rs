//! `callvault import` and `callvault repair` as a user runs them: JSON shape, exit codes, files.

mod captures;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn callvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callvault")).args(args).output().expect("run callvault")
}

fn import_json(capture: &Path, out: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["import", capture.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let o = callvault(&args);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap(), v)
}

fn cap(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn sip_call_json_has_every_documented_field() {
    let Some(dir) = captures::dir() else { return };
    let out = tempfile::tempdir().unwrap();
    let (code, v) = import_json(&cap(&dir, "pkts_sip_call_pcmu.pcap"), out.path(), &[]);
    assert_eq!(code, 0);
    assert_eq!(v["errors"], serde_json::json!([]));
    let recs = v["recordings"].as_array().unwrap();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["call_id"], "1-7879@127.0.0.1");
    assert_eq!(r["recording_id"].as_str().unwrap().len(), 26, "a ULID");
    let file = r["file"].as_str().unwrap();
    assert!(Path::new(file).is_absolute() && Path::new(file).exists(), "{file}");
    assert!(file.contains("1-7879_127.0.0.1"), "file named from the sanitised call id: {file}");
    assert_eq!(
        (r["layout"].as_str(), r["sample_rate"].as_u64(), r["channels"].as_u64()),
        (Some("stereo"), Some(8000), Some(2))
    );
    let legs = r["legs"].as_array().unwrap();
    assert_eq!(legs[0]["label"], "caller");
    assert_eq!(legs[0]["channel"], 0);
    assert_eq!(legs[0]["src"], "127.0.0.1:6001");
    assert_eq!(legs[0]["dst"], "127.0.0.1:6000");
    assert_eq!(legs[0]["ssrcs"], serde_json::json!(["0xfebd6340"]));
    assert_eq!(legs[0]["payload_types"], serde_json::json!({"0": "PCMU/8000"}));
    assert_eq!(legs[0]["packets"], 501);
    assert_eq!(legs[0]["silent"], false);
    assert_eq!(legs[0]["unsupported_codec"], Value::Null);
    for key in ["start_offset_ms", "lost", "late", "ahead", "duplicates", "reordered", "dtmf", "file"] {
        assert!(legs[0].get(key).is_some(), "leg field {key}");
    }
    // The callee never sent: a silent channel, flagged.
    assert_eq!(legs[1]["label"], "callee");
    assert_eq!(legs[1]["channel"], 1);
    assert_eq!(legs[1]["silent"], true);
    assert_eq!(legs[1]["start_offset_ms"], Value::Null);
    let wav = hound::WavReader::open(file).unwrap();
    assert_eq!(wav.spec().channels, 2);
    assert_eq!(wav.duration() as u64 / 8, r["duration_ms"].as_u64().unwrap());
}

#[test]
fn dtmf_digits_only_with_the_flag() {
    let Some(dir) = captures::dir() else { return };
    let capture = cap(&dir, "asterisk_ulaw_rfc2833.pcap");
    let out = tempfile::tempdir().unwrap();
    let (_, v) = import_json(&capture, out.path(), &[]);
    let dtmf = v["recordings"][0]["legs"][0]["dtmf"].as_array().unwrap().clone();
    assert_eq!(dtmf.len(), 10);
    assert!(dtmf.iter().all(|e| e.get("digit").is_none() && e["duration_ms"].as_u64().unwrap() > 0));
    let (_, v) = import_json(&capture, out.path(), &["--dtmf-digits"]);
    let digits: String = v["recordings"][0]["legs"][0]["dtmf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, "2013785496");
    // Offsets increase and fall inside the recording.
    let dur = v["recordings"][0]["duration_ms"].as_u64().unwrap();
    let offsets: Vec<u64> = dtmf.iter().map(|e| e["offset_ms"].as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]) && *offsets.last().unwrap() < dur);
}

#[test]
fn layouts_mono_and_separate() {
    let Some(dir) = captures::dir() else { return };
    let capture = cap(&dir, "projectrtp_ulaw_2calls_rtcp_dtmf.pcap");
    let out = tempfile::tempdir().unwrap();
    let (code, v) = import_json(&capture, out.path(), &["--layout", "mono"]);
    assert_eq!(code, 0);
    assert_eq!(v["recordings"].as_array().unwrap().len(), 2, "two calls, paired by address");
    for r in v["recordings"].as_array().unwrap() {
        assert_eq!(r["channels"], 1);
        assert_eq!(hound::WavReader::open(r["file"].as_str().unwrap()).unwrap().spec().channels, 1);
        assert_eq!(r["legs"][0]["label"], "a");
        assert_eq!(r["legs"][1]["label"], "b");
    }
    let (code, v) = import_json(&capture, out.path(), &["--layout", "separate"]);
    assert_eq!(code, 0);
    for r in v["recordings"].as_array().unwrap() {
        assert_eq!(r["file"], Value::Null);
        for l in r["legs"].as_array().unwrap() {
            let f = l["file"].as_str().unwrap();
            let w = hound::WavReader::open(f).unwrap();
            assert_eq!(w.spec().channels, 1);
            assert_eq!(
                w.duration() as u64 / 8,
                r["duration_ms"].as_u64().unwrap(),
                "legs of one call have equal length"
            );
        }
    }
    // RTCP on port+1 is attributed to its leg, never decoded.
    let rtcp: u64 = v["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["legs"].as_array().unwrap().iter())
        .map(|l| l["rtcp_packets"].as_u64().unwrap())
        .sum();
    assert_eq!(rtcp, 5);
}

#[test]
fn same_capture_same_audio() {
    let Some(dir) = captures::dir() else { return };
    let capture = cap(&dir, "rtpproxy_g711a_30ms_reverse_rtcp.pcap");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, va) = import_json(&capture, a.path(), &[]);
    let (_, vb) = import_json(&capture, b.path(), &[]);
    let fa = std::fs::read(va["recordings"][0]["file"].as_str().unwrap()).unwrap();
    let fb = std::fs::read(vb["recordings"][0]["file"].as_str().unwrap()).unwrap();
    assert!(fa.len() > 80);
    assert_eq!(fa, fb);
    assert_ne!(va["recordings"][0]["recording_id"], vb["recordings"][0]["recording_id"]);
}

#[test]
fn g722_and_opus_captures_decode_at_their_own_rate_with_the_right_duration() {
    let Some(dir) = captures::dir() else { return };
    let out = tempfile::tempdir().unwrap();
    let (code, v) = import_json(&cap(&dir, "projectrtp_g722_440hz.pcap"), out.path(), &[]);
    assert_eq!(code, 0);
    let r = &v["recordings"][0];
    assert_eq!(r["legs"][0]["unsupported_codec"], serde_json::Value::Null);
    assert_eq!(r["sample_rate"], 16000, "G.722 is 16 kHz audio");
    let d = r["duration_ms"].as_u64().unwrap();
    assert!((7800..=7900).contains(&d), "G.722's 8 kHz RTP clock gives 7.8 s, not {d}");
    let w = hound::WavReader::open(r["file"].as_str().unwrap()).unwrap();
    assert_eq!((w.spec().sample_rate, w.duration() as u64), (16000, d * 16));
    // Forced to 8 kHz it is resampled, and keeps its length.
    let (_, v8) = import_json(&cap(&dir, "projectrtp_g722_440hz.pcap"), out.path(), &["--sample-rate", "8000"]);
    assert_eq!(
        (v8["recordings"][0]["sample_rate"].as_u64(), v8["recordings"][0]["duration_ms"].as_u64()),
        (Some(8000), Some(d))
    );
    // Opus needs its dynamic payload type mapped; events on 101 are recognised by shape and clock.
    let (code, v) = import_json(
        &cap(&dir, "asterisk_opus_rfc2833.pcap"),
        out.path(),
        &["--pt", "96=opus/48000/2", "--dtmf-digits"],
    );
    assert_eq!(code, 0);
    let r = &v["recordings"][0];
    let l = &r["legs"][0];
    assert_eq!(l["unsupported_codec"], serde_json::Value::Null);
    assert_eq!(r["sample_rate"], 48000);
    assert_eq!(l["payload_types"]["96"], "opus/48000/2");
    assert_eq!(l["payload_types"]["101"], "telephone-event/48000");
    assert_eq!(l["lost"], 0);
    assert_eq!(l["dtmf"].as_array().unwrap().len(), 10);
    let d = r["duration_ms"].as_u64().unwrap();
    assert!((15_200..=15_400).contains(&d), "{d}");
    let w = hound::WavReader::open(r["file"].as_str().unwrap()).unwrap();
    let peak = w.into_samples::<i16>().map(|s| s.unwrap().unsigned_abs()).max().unwrap();
    assert!(peak > 1000, "the Opus leg carries sound (peak {peak})");
    let e = callvault(&["import", "x.pcap", "--out", "o", "--sample-rate", "44100"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("use 8000, 16000, 48000 or auto"));
}

#[test]
fn truncated_capture_exit_3_names_the_offset_and_keeps_what_was_complete() {
    let Some(dir) = captures::dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let full = std::fs::read(cap(&dir, "asterisk_ulaw_seq_gap.pcap")).unwrap();
    let cut = tmp.path().join("cut.pcap");
    std::fs::write(&cut, &full[..full.len() / 2 + 7]).unwrap();
    let out = tmp.path().join("out");
    let (code, v) = import_json(&cut, &out, &[]);
    assert_eq!(code, 3);
    let err = &v["errors"][0];
    assert_eq!(err["kind"], "capture");
    let offset = err["offset"].as_u64().unwrap();
    assert!(offset > 0 && offset < full.len() as u64 / 2 + 7);
    assert!(err["message"].as_str().unwrap().contains(&format!("byte {offset}")), "{err}");
    let r = &v["recordings"][0];
    let w = hound::WavReader::open(r["file"].as_str().unwrap()).unwrap();
    assert!(w.duration() > 8000 * 7, "about half the call was recorded: {} samples", w.duration());
    assert!(r["legs"][0]["packets"].as_u64().unwrap() > 350);
    // Without --json the error goes to stderr, naming the offset.
    let o = callvault(&["import", cut.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("truncated at byte"));
}

#[test]
fn bad_input_gets_clear_errors_and_meaningful_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.pcap");
    std::fs::write(&junk, b"<html>not a capture</html>").unwrap();
    let o = callvault(&["import", junk.to_str().unwrap(), "--out", tmp.path().join("o").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a pcap or pcapng file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = callvault(&["import", tmp.path().join("missing.pcap").to_str().unwrap(), "--out", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.pcap"));
    // Usage errors: exit 2.
    assert_eq!(callvault(&["import", "x.pcap"]).status.code(), Some(2), "--out is required");
    let o = callvault(&["import", "x.pcap", "--out", "o", "--pt", "96=opus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("PT=NAME/RATE"));
    assert_eq!(callvault(&["import", "x.pcap", "--out", "o", "--layout", "quad"]).status.code(), Some(2));
    assert_eq!(callvault(&["frobnicate"]).status.code(), Some(2));
    let help = callvault(&["import", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
}

#[test]
fn unwritable_output_is_exit_1_with_the_path() {
    let Some(dir) = captures::dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o =
        callvault(&["import", cap(&dir, "sipp_g711a_30ms.pcap").to_str().unwrap(), "--out", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("a-file"));
}

#[test]
fn repair_recovers_an_unfinished_recording() {
    use callvault::output::wav::{WavSpec, create_file};
    let tmp = tempfile::tempdir().unwrap();
    let partial = tmp.path().join("call-1.wav.partial");
    let mut w = create_file(&partial, WavSpec::pcm(8000, 2)).unwrap();
    w.write_samples(&vec![1000i16; 2 * 8000]).unwrap();
    w.flush().unwrap();
    std::mem::forget(w); // as if killed: the header was never patched
    let o = callvault(&["repair", "--json", partial.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["frames"], 8000);
    assert_eq!(v[0]["was_finalised"], false);
    let fixed = tmp.path().join("call-1.wav");
    assert!(!partial.exists());
    assert_eq!(hound::WavReader::open(&fixed).unwrap().duration(), 8000);
    // A .partial whose finished name is taken is left alone: the finished file may be the good
    // copy (found when tried as a new user would: repair used to replace it).
    let mut w = create_file(&partial, WavSpec::pcm(8000, 2)).unwrap();
    w.write_samples(&[5i16; 20]).unwrap();
    w.flush().unwrap();
    std::mem::forget(w);
    let o = callvault(&["repair", partial.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hound::WavReader::open(&fixed).unwrap().duration(), 8000, "the finished file is untouched");
    assert!(partial.exists(), "the unfinished data is kept");
    // Repairing a non-WAV fails with exit 1 and the path.
    let junk = tmp.path().join("junk.wav");
    std::fs::write(&junk, b"nope").unwrap();
    let o = callvault(&["repair", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("junk.wav"));
}

/// `callvault import … --json | head -c0`: a reader that went away ends the command quietly with
/// 141 (as SIGPIPE would), never a panic with a backtrace; the recordings are still written.
#[test]
fn closed_stdout_ends_quietly_with_141_and_keeps_the_recordings() {
    let Some(dir) = captures::dir() else { return };
    let out = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_callvault"))
        .args(["import", cap(&dir, "pkts_sip_call_pcmu.pcap").to_str().unwrap(), "--out"])
        .arg(out.path())
        .arg("--json")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let wavs = std::fs::read_dir(out.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("wav".as_ref()));
    assert_eq!(wavs.count(), 1, "the recording is written before the report");
}
