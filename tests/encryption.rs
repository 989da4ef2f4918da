//! Encryption at rest against a real `callvault serve` and the `callvault` tools: nothing in
//! the clear on disk during a call, keys generated on first start, key files, systemd
//! credentials, rotation, and verify/decrypt (with --recover after kill -9) from the command line.

mod live;

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use live::{Daemon, Options, read_wav, send_pcmu};
use serde_json::{Value, json};

const CALLER: &str = "+4915112345678";
const AGENT: &str = "Alice Example";
const QUEUE: &str = "card-payments";

fn start_call(c: &mut live::Client, call_id: &str) -> (u16, String) {
    let r = c.request(json!({"cmd": "start", "call_id": call_id,
        "metadata": {"agent": AGENT, "caller_number": CALLER, "queue": QUEUE},
        "legs": [{"label": "customer"}, {"label": "agent"}]}));
    assert_eq!(r["ok"], true, "{r}");
    (r["legs"][0]["port"].as_u64().unwrap() as u16, r["recording_id"].as_str().unwrap().to_string())
}

fn callvault(args: &[&str]) -> Output {
    Command::new(live::bin()).args(args).output().unwrap()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn entropy_bits_per_byte(b: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &x in b {
        counts[usize::from(x)] += 1;
    }
    let n = b.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_spool_holds_no_plaintext_audio_or_metadata_during_a_call() {
    let d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let (p0, rid) = start_call(&mut c, "scan-1");
    let sender = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_pcmu(&s, ("127.0.0.1", p0), 1, 150, 0x80);
    });
    // Mid-call: 2 s of audio sent, the call still running.
    std::thread::sleep(Duration::from_millis(2000));
    let status = c.request(json!({"cmd": "status", "call_id": "scan-1"}));
    assert_eq!(status["state"], "recording", "{status}");
    let spool = d.spool();
    let files = files_in(&spool);
    let audio = spool.join(format!("{rid}.wav.cvs.partial"));
    assert!(files.contains(&audio) && files.contains(&spool.join(format!("{rid}.meta.cvs"))), "{files:?}");
    let mut scanned = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let name = f.display();
        assert!(bytes.starts_with(b"CVLTSEAL"), "{name} is not sealed");
        for magic in [&b"RIFF"[..], b"RF64", b"WAVE", b"fmt ", b"OggS", b"OpusHead", b"ID3\x03", b"ID3\x04"] {
            assert!(!contains(&bytes, magic), "{name} holds {:?}", String::from_utf8_lossy(magic));
        }
        for text in [CALLER, "4915112345678", AGENT, QUEUE, "scan-1", "customer", "caller_number"] {
            assert!(!contains(&bytes, text.as_bytes()), "{name} holds {text:?} in the clear");
        }
        // The µ-law 0x80 tone is the sample 32124 (7c 7d) again and again.
        assert!(!contains(&bytes, &[0x7c, 0x7d, 0x7c, 0x7d, 0x7c, 0x7d]), "{name} holds the samples in the clear");
        scanned += bytes.len();
    }
    let bytes = std::fs::read(&audio).unwrap();
    assert!(bytes.len() > 16 * 1024, "{} bytes of audio so far", bytes.len());
    let e = entropy_bits_per_byte(&bytes[512..]);
    assert!(e > 7.9, "audio bytes have {e:.3} bits of entropy per byte: not ciphertext");
    // Neither the file names nor the log carry the caller or the metadata.
    let log = d.log();
    for text in [CALLER, AGENT, QUEUE] {
        assert!(!log.contains(text), "the log holds {text:?}: {log}");
    }
    assert!(files.iter().all(|f| !f.to_string_lossy().contains("scan")), "{files:?}");
    sender.join().unwrap();
    assert!(scanned > 0);
    let stop = c.request(json!({"cmd": "stop", "call_id": "scan-1"}));
    assert_eq!(stop["metadata"]["caller_number"], CALLER, "the ACD still gets its metadata back: {stop}");
    for f in files_in(&spool) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, b"RIFF") && !contains(&bytes, CALLER.as_bytes()), "{}", f.display());
    }
}

/// Keys lost while sealed recordings are in the spool: serve refuses to start rather than
/// generate keys that could never open them.
#[test]
fn lost_keys_are_not_replaced_while_the_spool_holds_sealed_recordings() {
    let mut d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let (p0, _) = start_call(&mut c, "k-1");
    send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", p0), 1, 10, 0x80);
    c.request(json!({"cmd": "stop", "call_id": "k-1"}));
    assert_eq!(d.terminate(), Some(0));
    let keys = d.dir.path().join("data/keys");
    std::fs::rename(&keys, d.dir.path().join("keys-elsewhere")).unwrap();
    let cfg = d.dir.path().join("callvault.toml");
    let o = Command::new(live::bin()).args(["serve", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("spool holds sealed recordings") && err.contains("Restore"), "{err}");
    assert!(!keys.exists(), "no new keys: {err}");
}

#[test]
fn first_start_generates_keys_and_says_to_back_them_up() {
    let mut d = Daemon::start(Options::default());
    let keys = d.dir.path().join("data/keys");
    let log = d.log();
    assert!(log.contains("generated KEK") && log.contains("Back it up"), "{log}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&keys), 0o700);
    let kek = files_in(&keys).into_iter().find(|p| p.extension().is_some_and(|e| e == "kek")).expect("a KEK");
    assert_eq!(mode(&kek), 0o600);
    assert_eq!(mode(&keys.join("signing.key")), 0o600);
    // The second start finds them and says nothing of generating.
    assert_eq!(d.terminate(), Some(0));
    let d2 = d.respawn();
    assert!(!d2.log().contains("generated KEK"), "{}", d2.log());
    assert!(d2.log().contains("sealing recordings with KEK"), "{}", d2.log());
}

#[test]
fn plain_output_needs_an_explicit_off_and_is_warned_about() {
    let d = Daemon::start(Options { extra: "[recording]\nencryption = \"off\"\n".into(), ..Options::default() });
    assert!(d.log().contains("in the clear"), "{}", d.log());
    assert!(!d.dir.path().join("data/keys").exists(), "no keys made when they are not used");
    let mut c = d.client().unwrap();
    let (p0, rid) = start_call(&mut c, "plain/1");
    send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", p0), 1, 20, 0x80);
    let stop = c.request(json!({"cmd": "stop", "call_id": "plain/1"}));
    assert_eq!(stop["encrypted"], false);
    let file = PathBuf::from(stop["file"].as_str().unwrap());
    assert_eq!(file.file_name().unwrap().to_str().unwrap(), format!("plain_1-{rid}.wav"));
    assert!(std::fs::read(&file).unwrap().starts_with(b"RIFF"));
    let sidecar: Value = serde_json::from_slice(&std::fs::read(file.with_extension("json")).unwrap()).unwrap();
    assert_eq!(sidecar["metadata"]["caller_number"], CALLER);
}

fn write_key(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn kek_text(id: &str, byte: u8) -> String {
    format!("callvault-kek v1 {id} {}\n", format!("{byte:02x}").repeat(32))
}

#[test]
fn a_key_file_others_can_read_is_refused_with_its_path_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek.txt");
    write_key(&kek, &kek_text("kek-loose", 7), 0o644);
    let (min, max) = live::port_range(2);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[rtp]\nport_min = {min}\nport_max = {max}\n[metrics]\nlisten = \"\"\n[api]\nlisten = \"\"\n[keys]\nkek_file = \"{}\"\n",
            dir.path().join("data").display(),
            kek.display()
        ),
    )
    .unwrap();
    let o = Command::new(live::bin()).args(["serve", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&kek.display().to_string()) && err.contains("0644") && err.contains("chmod 600"), "{err}");
    // `callvault key list` says the same.
    let o = callvault(&["key", "list", "--key", kek.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0644"));
}

#[test]
fn systemd_credentials_are_used_as_systemd_writes_them() {
    let creds = tempfile::tempdir().unwrap();
    write_key(&creds.path().join("callvault.kek"), &kek_text("kek-from-credentials", 9), 0o400);
    write_key(
        &creds.path().join("callvault.signing-key"),
        &format!("callvault-signing-key v1 sign-cred {}\n", "11".repeat(32)),
        0o400,
    );
    std::fs::set_permissions(creds.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let d = Daemon::start(Options {
        env: vec![("CREDENTIALS_DIRECTORY".into(), creds.path().display().to_string())],
        ..Options::default()
    });
    assert!(d.log().contains("kek-from-credentials") && d.log().contains("systemd credentials"), "{}", d.log());
    assert!(!d.dir.path().join("data/keys").exists(), "nothing generated: {}", d.log());
    let mut c = d.client().unwrap();
    let (p0, rid) = start_call(&mut c, "cred-1");
    send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", p0), 1, 20, 0x80);
    let stop = c.request(json!({"cmd": "stop", "call_id": "cred-1"}));
    assert_eq!(stop["seals"][0]["kek_id"], "kek-from-credentials", "{stop}");
    let file = stop["file"].as_str().unwrap();
    let o = Command::new(live::bin())
        .args(["verify", "--json", file])
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v[0]["recording_id"].as_str(), v[0]["signer_id"].as_str()), (Some(rid.as_str()), Some("sign-cred")));
    std::fs::set_permissions(creds.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Credentials without the active KEK (say, renamed during a rotation) are refused: keys are
/// never generated onto the storage instead.
#[test]
fn credentials_without_the_active_kek_refuse_to_start() {
    let creds = tempfile::tempdir().unwrap();
    write_key(&creds.path().join("callvault.kek.2026"), &kek_text("kek-old", 9), 0o400);
    let dir = tempfile::tempdir().unwrap();
    let (min, max) = live::port_range(2);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[rtp]\nport_min = {min}\nport_max = {max}\n[metrics]\nlisten = \"\"\n[api]\nlisten = \"\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let o = Command::new(live::bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("callvault.kek") && err.contains("LoadCredential"), "{err}");
    assert!(!dir.path().join("data/keys").exists(), "no keys generated: {err}");
    // `key rotate` says credentials are systemd's to write.
    let o = Command::new(live::bin())
        .args(["key", "rotate", "--config", cfg.to_str().unwrap()])
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("systemd-creds"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn after_rotation_old_and_new_recordings_both_decrypt() {
    let mut d = Daemon::start(Options::default());
    let keys = d.dir.path().join("data/keys");
    let mut c = d.client().unwrap();
    let record = |c: &mut live::Client, id: &str| {
        let (p0, _) = start_call(c, id);
        send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", p0), 1, 25, 0x80);
        let stop = c.request(json!({"cmd": "stop", "call_id": id}));
        (PathBuf::from(stop["file"].as_str().unwrap()), stop["seals"][0]["kek_id"].as_str().unwrap().to_string())
    };
    let (old_file, old_kek) = record(&mut c, "before");
    assert_eq!(d.terminate(), Some(0));
    let o = callvault(&["key", "rotate", "--dir", keys.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let new_kek = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"].as_str().unwrap().to_string();
    let d2 = d.respawn();
    let mut c = d2.client().unwrap();
    let (new_file, kek_used) = record(&mut c, "after");
    assert_eq!(kek_used, new_kek);
    assert_ne!(old_kek, new_kek);
    for (f, n) in [(&old_file, "old.wav"), (&new_file, "new.wav")] {
        let out = d2.dir.path().join(n);
        let o = callvault(&[
            "decrypt",
            f.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--key-dir",
            keys.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let (_, samples) = read_wav(&out);
        assert!(samples.iter().filter(|&&s| s == 32124).count() >= 24 * 160, "{n}");
    }
    // The old file was not touched by the rotation.
    let o = callvault(&["key", "list", "--key-dir", keys.to_str().unwrap(), "--json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list["keks"].as_array().unwrap().len(), 2, "{list}");
    assert!(list["keks"].as_array().unwrap().iter().any(|k| k["id"] == new_kek.as_str() && k["active"] == true));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("callvault-kek v1"), "no secret is printed");
}

fn sox_available() -> bool {
    Command::new("soxi").arg("--version").output().is_ok()
}

/// kill -9 mid-call: the unfinished file decrypts with --recover to within one chunk of what was
/// received, and say so; plain decrypt refuses it; verify names it.
#[test]
fn kill_9_leaves_a_file_whose_prefix_decrypt_recovers() {
    let mut d = Daemon::start(Options::default());
    let keys = d.dir.path().join("data/keys");
    let mut c = d.client().unwrap();
    let (p0, rid) = start_call(&mut c, "crash-1");
    send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", p0), 1, 150, 0x80);
    // A pause before the crash is in the sidecar, so recovery reports it.
    assert_eq!(c.request(json!({"cmd": "pause", "call_id": "crash-1"}))["ok"], true);
    assert_eq!(c.request(json!({"cmd": "resume", "call_id": "crash-1"}))["ok"], true);
    std::thread::sleep(Duration::from_millis(600));
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = d.spool().join(format!("{rid}.wav.cvs.partial"));
    let k = keys.to_str().unwrap();
    let p = partial.to_str().unwrap();
    let out = d.dir.path().join("rescued.wav");
    let o = callvault(&["verify", "--key-dir", k, "--json", p]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["error_kind"], "not_finalised", "{v}");
    let o = callvault(&["decrypt", "--key-dir", k, p, "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--recover"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.exists(), "nothing written for a file that does not verify");
    let o = callvault(&["decrypt", "--recover", "--key-dir", k, p, "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("not finalised") && err.contains("frames"), "{err}");
    let (channels, samples) = read_wav(&out);
    assert_eq!(channels, 2);
    // 150 packets of 160 samples were received; one 8 KiB chunk is 2,048 stereo frames.
    let loud = samples.iter().filter(|&&s| s == 32124).count();
    assert!(loud >= 150 * 160 - 2048, "{loud} of 24,000 samples recovered");
    if sox_available() {
        let o = Command::new("soxi").arg("-s").arg(&out).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), (samples.len() / 2).to_string(), "sox agrees");
    }
    // The next start re-seals it and reports it, pause included.
    let d2 = d.respawn();
    let mut c = d2.client().unwrap();
    assert_eq!(c.request(json!({"cmd": "subscribe", "since": 0}))["replayed"], 1);
    let e = c.next_line().unwrap();
    assert_eq!((e["event"].as_str(), e["recovered"].as_bool()), (Some("recording_recovered"), Some(true)), "{e}");
    assert_eq!(e["pauses"].as_array().map(Vec::len), Some(1), "{e}");
    assert_eq!(e["metadata"]["caller_number"], CALLER);
    let file = PathBuf::from(e["file"].as_str().unwrap());
    let o = callvault(&[
        "verify",
        "--json",
        "--key-dir",
        d2.dir.path().join("data/keys").to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v[0]["verified"].as_bool(), v[0]["recovered"].as_bool()), (Some(true), Some(true)), "{v}");
}

/// Each kind of damage to a finished recording is named by `verify` and refused by `decrypt`.
#[test]
fn verify_and_decrypt_name_each_kind_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let k = keys.to_str().unwrap();
    let rec = dir.path().join("rec");
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures/asterisk_ulaw_rfc2833.pcap");
    if !capture.exists() {
        eprintln!("skipping: {} not found", capture.display());
        return;
    }
    // An explicit key directory must exist: an import never invents one behind a typo.
    let o =
        callvault(&["import", capture.to_str().unwrap(), "--out", rec.to_str().unwrap(), "--encrypt", "--key-dir", k]);
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("key generate --dir"));
    assert_eq!(callvault(&["key", "generate", "--dir", k]).status.code(), Some(0));
    let o = callvault(&[
        "import",
        capture.to_str().unwrap(),
        "--out",
        rec.to_str().unwrap(),
        "--encrypt",
        "--key-dir",
        k,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let file = PathBuf::from(report["recordings"][0]["file"].as_str().unwrap());
    assert!(file.to_string_lossy().ends_with(".wav.cvs"));
    let meta = PathBuf::from(report["recordings"][0]["metadata_file"].as_str().unwrap());
    // Decrypted, it is a WAV that sox reads at the right length (19.48 s).
    let wav = dir.path().join("out.wav");
    let o = callvault(&["decrypt", file.to_str().unwrap(), "-o", wav.to_str().unwrap(), "--key-dir", k]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    if sox_available() {
        let o = Command::new("soxi").arg("-D").arg(&wav).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "19.480000");
    }
    let o = Command::new(live::bin())
        .args(["decrypt", meta.to_str().unwrap(), "-o", "-", "--key-dir", k])
        .output()
        .unwrap();
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["recording_id"], report["recordings"][0]["recording_id"]);
    let good = std::fs::read(&file).unwrap();
    let kind = |bytes: &[u8], extra: &[&str]| -> String {
        let f = dir.path().join("damaged.wav.cvs");
        std::fs::write(&f, bytes).unwrap();
        let mut args = vec!["verify", "--json", "--key-dir", k, f.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = callvault(&args);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let out = dir.path().join("never.wav");
        let d = callvault(&["decrypt", f.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-dir", k]);
        assert_ne!(d.status.code(), Some(0), "decrypt accepted a damaged file");
        assert!(!out.exists());
        v[0]["error_kind"].as_str().unwrap_or("verified").to_string()
    };
    let header_len = usize::from(u16::from_be_bytes([good[10], good[11]]));
    let body = header_len + 80 + 24;
    let rec_len = 8192 + 24;
    let mut flipped = good.clone();
    flipped[body + 100] ^= 1;
    assert_eq!(kind(&flipped, &[]), "chunk_altered");
    let mut swapped = good.clone();
    swapped[body..body + rec_len].copy_from_slice(&good[body + rec_len..body + 2 * rec_len]);
    swapped[body + rec_len..body + 2 * rec_len].copy_from_slice(&good[body..body + rec_len]);
    assert_eq!(kind(&swapped, &[]), "chunk_out_of_order");
    assert_eq!(kind(&good[..good.len() - 1000], &[]), "not_finalised");
    let mut header = good.clone();
    header[40] ^= 1; // its created-at time
    assert_eq!(kind(&header, &[]), "header_altered");
    // Another recording's chunk spliced in: import the capture again (same audio, new keys).
    let o = callvault(&[
        "import",
        capture.to_str().unwrap(),
        "--out",
        rec.to_str().unwrap(),
        "--encrypt",
        "--key-dir",
        k,
        "--json",
    ]);
    let other: Value = serde_json::from_slice(&o.stdout).unwrap();
    let other = std::fs::read(other["recordings"][0]["file"].as_str().unwrap()).unwrap();
    let mut spliced = good.clone();
    spliced[body + rec_len..body + 2 * rec_len].copy_from_slice(&other[body + rec_len..body + 2 * rec_len]);
    assert_eq!(kind(&spliced, &[]), "chunk_from_other_file");
    // A different key under the same id.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let id = std::fs::read_to_string(keys.join("active")).unwrap().trim().to_string();
    write_key(&wrong.join(format!("{id}.kek")), &kek_text(&id, 3), 0o600);
    let f = dir.path().join("good.wav.cvs");
    std::fs::write(&f, &good).unwrap();
    let o = callvault(&[
        "verify",
        "--json",
        "--key-dir",
        wrong.to_str().unwrap(),
        "--public-key",
        files_in(&keys).iter().find(|p| p.extension().is_some_and(|e| e == "pub")).unwrap().to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["error_kind"], "wrong_kek", "{v}");
    // An auditor with the public key only can check the signature.
    let public = files_in(&keys).into_iter().find(|p| p.extension().is_some_and(|e| e == "pub")).unwrap();
    let o = callvault(&[
        "verify",
        "--signature-only",
        "--key-dir",
        "/nonexistent",
        "--public-key",
        public.to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = callvault(&[
        "verify",
        "--signature-only",
        "--key-dir",
        "/nonexistent",
        "--public-key",
        public.to_str().unwrap(),
        dir.path().join("damaged.wav.cvs").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    // A file under another recording's name: intact, but named as what it is not.
    let renamed = dir.path().join(format!("{}.wav.cvs", "01M8YXH0ZYKXEV8NV6Y8M3A525"));
    std::fs::write(&renamed, &good).unwrap();
    let o = callvault(&["verify", "--json", "--key-dir", k, renamed.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["error_kind"], "name_mismatch", "{v}");
    let out = dir.path().join("renamed.wav");
    let o = callvault(&["decrypt", "--key-dir", k, renamed.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not under its own name") && !out.exists());
    let public = files_in(&keys).into_iter().find(|p| p.extension().is_some_and(|e| e == "pub")).unwrap();
    let o = callvault(&[
        "verify",
        "--signature-only",
        "--json",
        "--public-key",
        public.to_str().unwrap(),
        renamed.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["error_kind"], "name_mismatch", "auditors see it too: {v}");
    // Given --public-key, only those keys are trusted: not the key directory's own.
    let stranger = dir.path().join("stranger");
    assert_eq!(callvault(&["key", "generate", "--dir", stranger.to_str().unwrap()]).status.code(), Some(0));
    let stranger_pub = files_in(&stranger).into_iter().find(|p| p.extension().is_some_and(|e| e == "pub")).unwrap();
    let o = callvault(&[
        "verify",
        "--json",
        "--key-dir",
        k,
        "--public-key",
        stranger_pub.to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["error_kind"], "signature_untrusted", "{v}");
    // `repair` (for plain WAV) refuses to touch a sealed file, and says what does.
    let o = callvault(&["repair", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("sealed recording"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&f).unwrap(), good, "unchanged");
}
