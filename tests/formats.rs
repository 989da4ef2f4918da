//! Every output format, read back by independent tools from Debian's packages: `soxi` (sox) for
//! WAV and MP3, `ffprobe` (ffmpeg) for all, `opusinfo` (opus-tools) for Ogg/Opus. Rate, channels
//! and duration must match the recording (within one frame of the format; for MP3, what ffmpeg
//! plays, while the header figures also count the Info frame, delay and padding, see
//! docs/codecs.md). Sealed recordings of each format decrypt to the same.
//! Under CI a missing tool is a failure; elsewhere the test says so and skips.

mod captures;
mod live;

use std::path::Path;
use std::process::Command;

use live::{Daemon, Options};
use serde_json::{Value, json};

fn tool(name: &str) -> bool {
    let ok = Command::new(name).arg("-h").output().is_ok();
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but {name} is missing (apt-get install sox ffmpeg opus-tools)");
        }
        eprintln!("skipping: {name} not installed");
    }
    ok
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// (codec, rate, channels, duration s) as ffprobe sees the file.
fn ffprobe(path: &Path) -> (String, u32, u16, f64) {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels:format=duration",
            "-of",
            "json",
            path.to_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let s = &v["streams"][0];
    (
        s["codec_name"].as_str().unwrap().to_string(),
        s["sample_rate"].as_str().unwrap().parse().unwrap(),
        s["channels"].as_u64().unwrap() as u16,
        v["format"]["duration"].as_str().unwrap().parse().unwrap(),
    )
}

/// Checks one file of `format` against the recording's rate, channels and duration.
fn check(format: &str, path: &Path, rate: u32, channels: u16, duration_ms: u64) {
    let want = duration_ms as f64 / 1000.0;
    let (codec, got_rate, got_ch, got_dur) = ffprobe(path);
    let what = format!("{format} {}", path.display());
    assert_eq!(got_ch, channels, "{what}: channels");
    match format {
        "wav" | "wav-ulaw" | "wav-alaw" => {
            let codec_want = match format {
                "wav" => "pcm_s16le",
                "wav-ulaw" => "pcm_mulaw",
                _ => "pcm_alaw",
            };
            assert_eq!(codec, codec_want, "{what}");
            assert_eq!(got_rate, rate, "{what}: rate");
            assert!((got_dur - want).abs() <= 0.001, "{what}: ffprobe {got_dur} s, recorded {want} s");
            let soxi = |flag: &str| run("soxi", &[flag, path.to_str().unwrap()]).trim().to_string();
            assert_eq!(soxi("-r"), rate.to_string(), "{what}: soxi rate");
            assert_eq!(soxi("-c"), channels.to_string(), "{what}: soxi channels");
            let d: f64 = soxi("-D").parse().unwrap();
            assert!((d - want).abs() <= 0.001, "{what}: soxi {d} s");
        }
        "opus" => {
            assert_eq!(codec, "opus", "{what}");
            // Opus always decodes at 48 kHz; the OpusHead keeps the recording's rate.
            let info = run("opusinfo", &[path.to_str().unwrap()]);
            assert!(info.contains(&format!("Original sample rate: {rate} Hz")), "{what}: {info}");
            assert!(info.contains(&format!("Channels: {channels}")), "{what}: {info}");
            if channels > 1 {
                assert!(
                    info.contains(&format!("Streams: {channels}, Coupled: 0")),
                    "{what}: channels kept apart: {info}"
                );
            }
            let line = info.lines().find(|l| l.contains("Playback length")).expect("playback length");
            // "Playback length: 0m:10.020s"
            let t = line.rsplit(':').next().unwrap().trim().trim_end_matches('s');
            let mins: f64 = line.split("length:").nth(1).unwrap().trim().split('m').next().unwrap().parse().unwrap();
            let secs = mins * 60.0 + t.parse::<f64>().unwrap();
            assert!((secs - want).abs() <= 0.020, "{what}: opusinfo {secs} s, recorded {want} s");
            // ffprobe's duration includes the pre-skip: within a frame.
            assert!((got_dur - want).abs() <= 0.020, "{what}: ffprobe {got_dur} s");
        }
        "mp3" => {
            assert_eq!(codec, "mp3", "{what}");
            assert_eq!(got_rate, rate, "{what}: rate");
            let frame = if rate >= 32000 { 1152.0 } else { 576.0 } / f64::from(rate);
            // What a player plays: ffmpeg honours the Info frame's delay and padding.
            let o = Command::new("ffmpeg")
                .args(["-v", "error", "-i", path.to_str().unwrap(), "-f", "s16le", "-"])
                .output()
                .unwrap();
            let played = o.stdout.len() as f64 / 2.0 / f64::from(channels) / f64::from(rate);
            assert!((played - want).abs() <= frame, "{what}: ffmpeg plays {played} s of {want} s recorded");
            // The tools' header figures count whole frames (the Info frame, the encoder's delay
            // and the last frame's padding, about three frames at most).
            let d: f64 = run("soxi", &["-D", path.to_str().unwrap()]).trim().parse().unwrap();
            for (by, got) in [("ffprobe", got_dur), ("soxi", d)] {
                assert!(
                    got >= want - frame && got <= want + 1105.0 / f64::from(rate) + 2.0 * frame,
                    "{what}: {by} {got} s for {want} s recorded (frame {frame} s)"
                );
            }
        }
        other => panic!("unknown format {other}"),
    }
}

#[test]
fn every_format_from_import_reads_back_with_the_right_rate_channels_and_duration() {
    let Some(dir) = captures::dir() else { return };
    if !(tool("soxi") && tool("ffprobe") && tool("opusinfo")) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // A two-leg G.711 call (stereo), and the G.722 capture at 16 kHz (mono, one leg).
    let cases: [(&str, &[&str]); 2] = [("pkts_sip_call_pcmu.pcap", &[]), ("projectrtp_g722_440hz.pcap", &[])];
    for format in ["wav", "wav-ulaw", "wav-alaw", "opus", "mp3"] {
        for (capture, extra) in cases {
            let out = work.path().join(format!("{format}-{capture}"));
            let mut args = vec![
                "import".to_string(),
                dir.join(capture).display().to_string(),
                "--out".into(),
                out.display().to_string(),
                "--json".into(),
                "--format".into(),
                format.into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let o = Command::new(live::bin()).args(&args).output().unwrap();
            assert_eq!(o.status.code(), Some(0), "{format} {capture}: {}", String::from_utf8_lossy(&o.stderr));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            for r in v["recordings"].as_array().unwrap() {
                assert_eq!(r["format"], format);
                let rate = r["sample_rate"].as_u64().unwrap() as u32;
                if format.starts_with("wav-") {
                    assert_eq!(rate, 8000, "G.711 WAV is 8 kHz");
                }
                let file = Path::new(r["file"].as_str().unwrap());
                let ext = if format.starts_with("wav") { "wav" } else { format };
                assert_eq!(file.extension().unwrap(), ext);
                check(format, file, rate, r["channels"].as_u64().unwrap() as u16, r["duration_ms"].as_u64().unwrap());
            }
        }
    }
    // A G.711 format cannot be another rate.
    let o = Command::new(live::bin())
        .args(["import", "x.pcap", "--out", "o", "--format", "wav-alaw", "--sample-rate", "16000"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("8000 Hz only"));
}

#[test]
fn live_recordings_in_each_format_are_sealed_and_decrypt_to_files_the_tools_read() {
    if !(tool("soxi") && tool("ffprobe") && tool("opusinfo")) {
        return;
    }
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    // Refused before anything is set up: a format that cannot hold the recording.
    let r = c.request(json!({"cmd": "start", "call_id": "x", "format": "mp3",
        "legs": [{"label": "a"}, {"label": "b"}, {"label": "c"}]}));
    assert_eq!(r["error"]["code"], "unsupported_format", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("at most 2 channels"), "{r}");
    let r = c.request(
        json!({"cmd": "start", "call_id": "x", "format": "wav-ulaw", "sample_rate": 16000, "legs": [{"label": "a"}]}),
    );
    assert_eq!(r["error"]["code"], "unsupported_format", "{r}");
    let r = c.request(json!({"cmd": "start", "call_id": "x", "format": "flac", "legs": [{"label": "a"}]}));
    assert_eq!(r["error"]["code"], "unsupported_format", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("\"opus\""), "{r}");
    let work = tempfile::tempdir().unwrap();
    for format in ["wav-ulaw", "opus", "mp3"] {
        let call = format!("call-{format}");
        let r = c.request(json!({"cmd": "start", "call_id": call, "format": format, "legs": [{"label": "customer"}, {"label": "agent"}]}));
        assert_eq!(r["ok"], true, "{r}");
        let (p0, p1) = (r["legs"][0]["port"].as_u64().unwrap() as u16, r["legs"][1]["port"].as_u64().unwrap() as u16);
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = std::thread::spawn(move || live::send_pcmu(&b, ("127.0.0.1", p1), 2, 50, 0x80));
        live::send_pcmu(&a, ("127.0.0.1", p0), 1, 50, 0x10);
        t.join().unwrap();
        let stop = c.request(json!({"cmd": "stop", "call_id": call}));
        assert_eq!(stop["ok"], true, "{stop}");
        assert_eq!(stop["format"], format);
        let file = Path::new(stop["file"].as_str().unwrap());
        let ext = if format.starts_with("wav") { "wav" } else { format };
        assert!(file.to_str().unwrap().ends_with(&format!(".{ext}.cvs")), "{file:?}");
        let plain = work.path().join(format!("out.{ext}"));
        std::fs::write(&plain, live::decrypt(file)).unwrap();
        check(format, &plain, 8000, 2, stop["duration_ms"].as_u64().unwrap());
    }
}

/// kill -9 mid-call in a compressed format: the next start re-seals the whole pages (Ogg) or
/// frames (MP3) that reached the disk, reports the recording as recovered with its duration,
/// and the recovered file decrypts to one the tools read.
#[test]
fn kill_9_mid_call_in_opus_or_mp3_is_recovered_to_a_playable_file() {
    if !(tool("ffprobe") && tool("opusinfo")) {
        return;
    }
    for format in ["opus", "mp3"] {
        // Small seal chunks, so most of what was encoded has reached the disk sealed.
        let mut d = Daemon::start(Options { extra: "[recording]\nseal_chunk_kib = 1\n".into(), ..Options::default() });
        let mut c = d.client().unwrap();
        let r = c.request(json!({"cmd": "start", "call_id": "crash", "format": format, "legs": [{"label": "a"}]}));
        assert_eq!(r["ok"], true, "{r}");
        let rid = r["recording_id"].as_str().unwrap().to_string();
        let port = r["legs"][0]["port"].as_u64().unwrap() as u16;
        // 3 s of audio (Ogg pages close every second).
        live::send_pcmu(&std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", port), 1, 150, 0x10);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut child = d.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let partial = d.spool().join(format!("{rid}.{format}.cvs.partial"));
        assert!(partial.exists(), "{format}: {partial:?}");
        let d2 = d.respawn();
        let mut c = d2.client().unwrap();
        assert_eq!(c.request(json!({"cmd": "subscribe", "since": 0}))["replayed"], 1);
        let e = c.next_line().unwrap();
        assert_eq!(e["event"], "recording_recovered", "{e}");
        assert_eq!(e["format"], format, "{e}");
        let file = Path::new(e["file"].as_str().unwrap());
        assert!(file.to_str().unwrap().ends_with(&format!("{rid}.{format}.cvs")), "{e}");
        assert!(!partial.exists());
        let ms = e["duration_ms"].as_u64().unwrap();
        assert!((1000..=3300).contains(&ms), "{format}: recovered {ms} ms of 3 s (whole pages/frames only): {e}");
        let plain = d2.dir.path().join(format!("rescued.{format}"));
        std::fs::write(&plain, live::decrypt(file)).unwrap();
        let (codec, _, channels, dur) = ffprobe(&plain);
        assert_eq!((codec.as_str(), channels), (format, 2), "stereo: at least two channels");
        assert!((dur - ms as f64 / 1000.0).abs() < 0.2, "{format}: ffprobe {dur} s, reported {ms} ms");
    }
}

/// MP3 carries an Info frame (frames, encoder delay, padding), so ffmpeg plays exactly the
/// samples given: a click stays at its sample, and the length is the recording's.
#[test]
fn mp3_plays_back_the_samples_given_at_their_positions() {
    if !tool("ffmpeg") {
        return;
    }
    use callvault::output::encode::{Format, StreamEncoder};
    let dir = tempfile::tempdir().unwrap();
    for (rate, channels) in [(8000u32, 1u16), (16000, 2), (48000, 2)] {
        let n = rate as usize * 2 + 123;
        let click = rate as usize / 2 + 17;
        let mut pcm = vec![0i16; n * usize::from(channels)];
        for c in 0..usize::from(channels) {
            pcm[click * usize::from(channels) + c] = 20000;
        }
        let mut e = StreamEncoder::new(Format::Mp3, rate, channels).unwrap();
        let mut out = e.head().to_vec();
        for piece in pcm.chunks(320 * usize::from(channels)) {
            e.write(piece, &mut out).unwrap();
        }
        let head = e.finish(&mut out).unwrap();
        out[..head.len()].copy_from_slice(&head);
        let path = dir.path().join(format!("c{rate}.mp3"));
        std::fs::write(&path, &out).unwrap();
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-i", path.to_str().unwrap(), "-f", "s16le", "-ac", "1", "-"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let decoded: Vec<i16> = o.stdout.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        let frame = if rate >= 32000 { 1152 } else { 576 };
        assert!(
            decoded.len().abs_diff(n) <= frame,
            "{rate} Hz: {} samples decoded for {n} given (one frame is {frame})",
            decoded.len()
        );
        let peak = (0..decoded.len()).max_by_key(|&i| decoded[i].unsigned_abs()).unwrap();
        assert!(peak.abs_diff(click) <= 4, "{rate} Hz: the click is at {peak}, was given at {click}");
    }
}
