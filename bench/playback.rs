//! Playback: what a seek costs against the size of the recording, and what each view of the
//! audio costs per byte. Writes sealed stereo 8 kHz WAVs of 1 and 60 minutes (the daemon's
//! writer, 8 KiB chunks) and a plain one, then times through the API's `media` layer:
//!
//! - a 4 KiB Range in the middle of each (what a browser asks for when the user seeks): the
//!   cost should not grow with the file, since only the chunks touched are decrypted;
//! - reading the whole file: plain, sealed (decrypt and authenticate), G.711 seen as PCM.
//!
//! `cargo bench --bench playback`. Figures are ratios measured in one run (bench/RESULTS.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use callvault::api::media::{self, AudioFile, Location, ReadAt};
use callvault::output::encode::Format;
use callvault::output::sealed::{SealedWavWriter, Sealing};
use callvault::output::wav::{SampleEncoding, WavSpec};
use callvault::seal::{Kek, Keyring, SigningKey};

fn sealing() -> Arc<Sealing> {
    let keys = Keyring::from_keys(
        vec![Kek::generate("kek-bench").unwrap()],
        Some(SigningKey::generate("sign-bench").unwrap()),
    );
    Sealing::new(keys, 8 * 1024).unwrap()
}

fn write_sealed(path: &Path, sealing: &Arc<Sealing>, minutes: u64, encoding: SampleEncoding) {
    let spec = WavSpec { encoding, ..WavSpec::pcm(8000, 2) };
    let rid = ulid::Ulid::new().to_string();
    let mut w = SealedWavWriter::create(path, spec, sealing, &rid, String::new()).unwrap();
    let frames = minutes * 60 * 8000;
    let block: Vec<i16> = (0..1600).map(|i| ((i * 37) % 2000) as i16 - 1000).collect();
    let mut done = 0;
    while done < frames {
        w.write_samples(&block).unwrap();
        done += 800;
    }
    w.finalize(done).unwrap();
}

fn open(path: &Path, sealed: bool, sealing: &Arc<Sealing>) -> Box<dyn ReadAt> {
    let file = AudioFile {
        location: Location::Local(path.to_path_buf()),
        format: Format::Wav,
        sealed,
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
    };
    media::open(&file, Some(&sealing.keys), &|_, _, _| unreachable!("local files only")).unwrap()
}

/// Mean time of a 4 KiB read at the middle, each from a freshly opened file (as each HTTP
/// request opens it), in microseconds.
fn seek_us(path: &Path, sealed: bool, sealing: &Arc<Sealing>, rounds: u32) -> f64 {
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    for i in 0..rounds {
        let mut r = open(path, sealed, sealing);
        let at = r.len() / 2 + u64::from(i % 64) * 4096;
        assert_eq!(r.read_at(at, &mut buf).unwrap(), 4096);
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

/// Whole-file read rate in MB/s, 64 KiB at a time as the API streams it.
fn read_mb_s(mut r: Box<dyn ReadAt>) -> f64 {
    let len = r.len();
    let t = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0;
    while pos < len {
        let n = r.read_at(pos, &mut buf).unwrap();
        assert!(n > 0);
        pos += n as u64;
    }
    len as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let s = sealing();
    let short = dir.path().join("short.wav.cvs");
    let long = dir.path().join("long.wav.cvs");
    let ulaw = dir.path().join("ulaw.wav.cvs");
    let plain = dir.path().join("plain.wav");
    write_sealed(&short, &s, 1, SampleEncoding::Pcm16);
    write_sealed(&long, &s, 60, SampleEncoding::Pcm16);
    write_sealed(&ulaw, &s, 60, SampleEncoding::Ulaw);
    // The plain copy: the long file's plaintext.
    {
        let mut r = open(&long, true, &s);
        let mut out = vec![0u8; r.len() as usize];
        r.read_at(0, &mut out).unwrap();
        std::fs::write(&plain, out).unwrap();
    }
    let mb = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / 1e6;
    println!(
        "files: 1 min sealed {:.1} MB, 60 min sealed {:.1} MB, 60 min µ-law sealed {:.1} MB",
        mb(&short),
        mb(&long),
        mb(&ulaw)
    );
    let rounds = 2000;
    let seek_short = seek_us(&short, true, &s, rounds);
    let seek_long = seek_us(&long, true, &s, rounds);
    let seek_plain = seek_us(&plain, false, &s, rounds);
    println!(
        "seek (open + 4 KiB at the middle): 1 min sealed {seek_short:.1} µs, 60 min sealed {seek_long:.1} µs, 60 min plain {seek_plain:.1} µs"
    );
    println!(
        "  ratios: 60 min / 1 min sealed {:.2}x; sealed / plain (60 min) {:.2}x",
        seek_long / seek_short,
        seek_long / seek_plain
    );
    let plain_rate = read_mb_s(open(&plain, false, &s));
    let sealed_rate = read_mb_s(open(&long, true, &s));
    let mut src = open(&ulaw, true, &s);
    let layout = media::wav_layout(&mut *src).unwrap();
    let pcm_rate = read_mb_s(Box::new(media::G711AsPcm::new(src, layout)));
    println!(
        "whole file, 64 KiB reads: plain {plain_rate:.0} MB/s, sealed {sealed_rate:.0} MB/s ({:.2}x plain), µ-law as PCM {pcm_rate:.0} MB/s of PCM ({:.2}x plain)",
        sealed_rate / plain_rate,
        pcm_rate / plain_rate
    );
    // 60 minutes of 8 kHz stereo PCM is 115 MB: how many real-time listeners one core feeds.
    let per_listener = 8000.0 * 2.0 * 2.0 / 1e6;
    println!(
        "  one core streams {:.0} sealed listeners in real time (8 kHz stereo, {per_listener:.3} MB/s each)",
        sealed_rate / per_listener
    );
}
