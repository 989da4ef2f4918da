//! Storage against a real `callvault serve` and a real Garage on 127.0.0.1: the local archive
//! (the embedded default), upload and read-back, multipart, a storage outage, the daemon killed
//! mid-upload, the catalog rebuilt from the bucket and kept current from it, retention with
//! legal holds and erasure, and a three-node cluster losing a node.

mod garage;
mod live;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use callvault::config::Config;
use callvault::storage::Storage;
use garage::Garage;
use live::{Daemon, Options, send_pcmu};
use serde_json::{Value, json};

/// Starts a two-leg call with metadata, sends `packets` 20 ms packets on its first leg and stops
/// it. Returns the recording id.
fn record(c: &mut live::Client, call_id: &str, meta: Value, packets: u16) -> String {
    let r = c.request(json!({"cmd": "start", "call_id": call_id, "metadata": meta,
        "legs": [{"label": "customer"}, {"label": "agent"}]}));
    assert_eq!(r["ok"], true, "{r}");
    let port = r["legs"][0]["port"].as_u64().unwrap() as u16;
    send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", port), 7, packets, 0x55);
    let stop = c.request(json!({"cmd": "stop", "call_id": call_id}));
    assert_eq!(stop["ok"], true, "{stop}");
    r["recording_id"].as_str().unwrap().to_string()
}

fn subscribe(d: &Daemon) -> live::Client {
    let mut c = d.client().unwrap();
    let r = c.request(json!({"cmd": "subscribe"}));
    assert_eq!(r["ok"], true, "{r}");
    c
}

fn config_of(d: &Daemon) -> PathBuf {
    d.dir.path().join("callvault.toml")
}

fn storage_of(d: &Daemon) -> (Config, Storage) {
    let cfg = Config::load(&config_of(d)).unwrap();
    let s = Storage::open(&cfg).unwrap();
    (cfg, s)
}

/// Every object under the primary (keys, sizes).
/// The primary's objects, less the audit trail's anchors (`_audit/`, docs/audit.md), which the
/// daemon writes beside the recordings.
fn objects(s: &Storage) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = s
        .block_on(s.primary.list(""))
        .unwrap()
        .into_iter()
        .map(|m| (m.location.to_string(), m.size))
        .filter(|(k, _)| !is_anchor(k))
        .collect();
    v.sort();
    v
}

fn is_anchor(key: &str) -> bool {
    key.split('/').take(2).any(|part| part == "_audit")
}

fn spool_files(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(d.spool()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn keys(d: &Daemon) -> callvault::seal::Keyring {
    callvault::seal::Keyring::load(&callvault::seal::KeySource::Dir(d.dir.path().join("data/keys")), None).unwrap()
}

/// Decrypts and verifies sealed bytes with a daemon's keys: the WAV inside.
fn open_sealed(bytes: Vec<u8>, keys: &callvault::seal::Keyring) -> Vec<u8> {
    let mut r = callvault::seal::SealedReader::open(std::io::Cursor::new(bytes), keys).unwrap();
    let mut out = Vec::new();
    r.verify(keys.trusted(), Some(&mut out)).unwrap();
    out
}

fn cli(args: &[&str]) -> (Option<i32>, Value, String) {
    let o = Command::new(live::bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code(), v, stderr)
}

/// A reason is one short line: `hold list` prints it on one, and a newline could fake a hold.
#[test]
fn hold_and_erase_reasons_must_be_one_short_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("callvault.toml");
    std::fs::write(&cfg, format!("data_dir = {:?}\n", dir.path().join("data").display().to_string())).unwrap();
    let cfg = cfg.to_str().unwrap();
    let long = "a".repeat(501);
    for (reason, says) in [
        ("case 1\nrecording 01FAKE  placed 2026-01-01 by root: fake", "one line"),
        ("case\u{1b}[2J", "one line"),
        (long.as_str(), "at most 500"),
        (" ", "must say why"),
    ] {
        for args in [
            &["hold", "place", "--config", cfg, "--call-id", "c-1", "--reason", reason][..],
            &["erase", "--config", cfg, "--call-id", "c-1", "--reason", reason],
        ] {
            let (code, _, err) = cli(args);
            assert_eq!(code, Some(2), "{args:?}: {err}");
            assert!(err.contains("--reason") && err.contains(says), "{args:?}: {err}");
        }
    }
}

#[test]
fn the_embedded_default_moves_recordings_to_the_local_archive() {
    let d = Daemon::start(Options { extra: "[storage]\nship = true\n".into(), ..Options::default() });
    let mut events = subscribe(&d);
    let mut c = d.client().unwrap();
    let rid = record(&mut c, "arch-1", json!({"agent": "1001"}), 10);
    let stored = events.wait_event("recording_stored", Some("arch-1"), Duration::from_secs(20));
    assert_eq!(stored["recording_id"], rid.as_str(), "{stored}");
    let objs = stored["stored"]["primary"]["objects"].as_array().unwrap();
    let keys_: Vec<&str> = objs.iter().map(|o| o["key"].as_str().unwrap()).collect();
    let date = callvault::storage::date_path(&callvault::engine::call::rfc3339(std::time::SystemTime::now()));
    assert_eq!(keys_, [format!("{date}/{rid}.wav.cvs"), format!("{date}/{rid}.meta.cvs")], "{stored}");
    let archive = d.dir.path().join("data/archive");
    let audio = archive.join(format!("{date}/{rid}.wav.cvs"));
    // The spool's copy is gone; the archive's is the same sealed file, still verifiable.
    assert!(!spool_files(&d).iter().any(|f| f.contains(&rid)), "{:?}", spool_files(&d));
    let wav = open_sealed(std::fs::read(&audio).unwrap(), &keys(&d));
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(objs[0]["sha256"], hex(&callvault::storage::file_sha256(&audio).unwrap().0));
    // `callvault verify` accepts the archived file under its name.
    let (code, _, err) =
        cli(&["verify", "--key-dir", d.dir.path().join("data/keys").to_str().unwrap(), audio.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    // The catalog says where it landed.
    wait_until("the catalog's stored", Duration::from_secs(5), || {
        let r = c.request(json!({"cmd": "find", "call_id": "arch-1"}));
        !r["recordings"][0]["stored"].is_null()
    });
    let log = d.log();
    assert!(log.contains("shipping finished recordings to primary local"), "{log}");
}

use callvault::seal::format::hex;

#[test]
fn recordings_land_in_garage_verified_and_read_back() {
    if !garage::available() {
        return;
    }
    let g = Garage::single();
    let d = Daemon::start(Options { extra: g.target_toml("primary", "cv"), ..Options::default() });
    let mut events = subscribe(&d);
    let mut c = d.client().unwrap();
    let rid = record(&mut c, "g-1", json!({"queue": "sales"}), 25);
    let stored = events.wait_event("recording_stored", Some("g-1"), Duration::from_secs(30));
    let (_, s) = storage_of(&d);
    let objs = objects(&s);
    assert_eq!(objs.len(), 2, "{objs:?}");
    assert!(objs.iter().all(|(k, _)| k.starts_with("cv/") && k.contains(&rid)), "{objs:?}");
    // What the store holds is what the stop event's summary described, byte for byte.
    for o in stored["stored"]["primary"]["objects"].as_array().unwrap() {
        let key = object_store::path::Path::from(o["key"].as_str().unwrap());
        let (sha, len) = s.block_on(s.primary.sha256(&key)).unwrap();
        assert_eq!(hex(&sha), o["sha256"].as_str().unwrap());
        assert_eq!(len, o["bytes"].as_u64().unwrap());
    }
    let audio = objs.iter().find(|(k, _)| k.ends_with(".wav.cvs")).unwrap();
    let bytes = s.block_on(s.primary.get(&object_store::path::Path::from(audio.0.as_str()))).unwrap();
    let wav = open_sealed(bytes, &keys(&d));
    let r = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
    assert_eq!(r.spec().channels, 2);
    assert!(r.duration() >= 8000 * 4 / 10, "{}", r.duration());
    assert!(!spool_files(&d).iter().any(|f| f.contains(&rid)));
    // `callvault fetch` brings it back from the bucket, checked against the catalog's SHA-256.
    let cfg = config_of(&d);
    wait_until("the catalog's stored", Duration::from_secs(5), || {
        let r = c.request(json!({"cmd": "find", "call_id": "g-1"}));
        !r["recordings"][0]["stored"].is_null()
    });
    let out = d.dir.path().join("fetched");
    let (code, v, err) =
        cli(&["fetch", &rid, "--config", cfg.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("storage: primary s3"), "says which store: {err}");
    assert_eq!(v["files"].as_array().unwrap().len(), 2, "{v}");
    let wav = open_sealed(std::fs::read(out.join(format!("{rid}.wav.cvs"))).unwrap(), &keys(&d));
    assert_eq!(&wav[..4], b"RIFF");
    // Again without --force: refused, the file kept.
    let (code, _, err) = cli(&["fetch", &rid, "--config", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = cli(&["fetch", "01M8ZZZZZZZZZZZZZZZZZZZZZZ", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
}

/// A plain recording of `bytes` audio bytes planted in a spool as serve leaves one (the shipper
/// does not look inside audio files).
fn plant(spool: &Path, call: &str, rid: &str, bytes: usize) -> String {
    let mut data = vec![0u8; bytes];
    callvault::seal::random(&mut data);
    std::fs::write(spool.join(format!("{call}-{rid}.wav")), &data).unwrap();
    let summary = json!({"recording_id": rid, "call_id": call, "state": "finished",
        "started_at": "2026-11-30T23:59:58.000Z", "metadata": {"queue": "big"}});
    std::fs::write(spool.join(format!("{call}-{rid}.json")), summary.to_string()).unwrap();
    hex(&callvault::storage::file_sha256(&spool.join(format!("{call}-{rid}.wav"))).unwrap().0)
}

#[test]
fn large_recordings_go_multipart_and_a_daemon_killed_mid_upload_resumes() {
    if !garage::available() {
        return;
    }
    let g = Garage::single();
    // A daemon to make the data directory and config; its spool then gets big recordings.
    let extra = format!(
        "{}[recording]\nencryption = \"off\"\n[storage]\npart_size_mib = 5\nconcurrency = 2\n",
        g.target_toml("primary", "")
    );
    let mut d = Daemon::start(Options { extra, ..Options::default() });
    assert_eq!(d.terminate(), Some(0));
    let spool = d.spool();
    let rids: Vec<String> = (0..4).map(|_| ulid::Ulid::new().to_string()).collect();
    let shas: Vec<String> =
        rids.iter().enumerate().map(|(i, r)| plant(&spool, &format!("big-{i}"), r, 12 * 1024 * 1024 + i)).collect();
    let cfg = config_of(&d);
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let mut d = Daemon::spawn(dir, &cfg);
    // Killed as soon as the first object lands: the others are mid-upload or not started.
    let (_, s) = storage_of(&d);
    wait_until("a first object", Duration::from_secs(60), || !objects(&s).is_empty());
    let _ = d.child.as_mut().unwrap().kill();
    let _ = d.child.take().unwrap().wait();
    let before = objects(&s).len();
    assert!(before < rids.len() * 2, "everything landed before the kill: {before}");
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let d = Daemon::spawn(dir, &cfg);
    wait_until("every recording to land", Duration::from_secs(120), || {
        !spool_files(&d).iter().any(|f| f.ends_with(".wav"))
    });
    let objs = objects(&s);
    // Exactly one audio and one metadata object per recording: nothing twice, nothing lost.
    assert_eq!(objs.len(), rids.len() * 2, "{objs:?}");
    for (i, rid) in rids.iter().enumerate() {
        let key = format!("2026/11/30/{rid}.wav");
        let (_, size) = objs.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("{key} missing: {objs:?}"));
        assert_eq!(*size, 12 * 1024 * 1024 + i as u64);
        let (sha, _) = s.block_on(s.primary.sha256(&object_store::path::Path::from(key.as_str()))).unwrap();
        assert_eq!(hex(&sha), shas[i]);
        assert!(objs.iter().any(|(k, _)| *k == format!("2026/11/30/{rid}.json")));
    }
    let files = spool_files(&d);
    assert!(files.iter().all(|f| !f.ends_with(".ship") && !f.ends_with(".json")), "{files:?}");
}

#[test]
fn a_storage_outage_is_buffered_and_everything_lands_once_after_it() {
    if !garage::available() {
        return;
    }
    let mut g = Garage::single();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!(
        "{}[storage]\nretry_max_s = 2\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        g.target_toml("primary", "")
    );
    let d = Daemon::start(Options { extra, ..Options::default() });
    let mut c = d.client().unwrap();
    g.nodes[0].kill();
    let mut rids = Vec::new();
    for i in 0..4 {
        rids.push(record(&mut c, &format!("out-{i}"), json!({"n": i}), 5));
    }
    // The spool keeps them, and the metrics say so.
    std::thread::sleep(Duration::from_secs(3));
    for r in &rids {
        assert!(spool_files(&d).iter().any(|f| f.starts_with(r.as_str()) && f.ends_with(".wav.cvs")), "{r}");
    }
    let text = scrape(port);
    assert!(text.contains("callvault_ship_backlog_recordings 4"), "{text}");
    assert!(text.contains("callvault_ship_target_down{target=\"primary\"} 1"), "{text}");
    assert!(!text.contains("callvault_ship_failures_total{target=\"primary\"} 0\n"), "{text}");
    // Still recording during the outage.
    rids.push(record(&mut c, "out-4", json!({}), 5));
    g.nodes[0].restart();
    let (_, s) = storage_of(&d);
    wait_until("the backlog to land", Duration::from_secs(60), || objects(&s).len() == rids.len() * 2);
    wait_until("the spool to empty", Duration::from_secs(10), || {
        !spool_files(&d).iter().any(|f| f.ends_with(".cvs") || f.ends_with(".ship"))
    });
    let objs = objects(&s);
    for r in &rids {
        assert_eq!(objs.iter().filter(|(k, _)| k.contains(r.as_str())).count(), 2, "{r}: {objs:?}");
    }
    let text = scrape(port);
    assert!(text.contains("callvault_ship_backlog_recordings 0"), "{text}");
    assert!(text.contains("callvault_ship_target_down{target=\"primary\"} 0"), "{text}");
    assert!(d.log().contains("tried again"), "{}", d.log());
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut http = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(http, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n").unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn a_backup_target_is_written_independently() {
    if !garage::available() {
        return;
    }
    let g = Garage::single();
    g.create_bucket("backup");
    let backup = g.target_toml("backup", "b").replace("bucket = \"recordings\"", "bucket = \"backup\"");
    // Verified by the store's own x-amz-checksum-sha256 check and a HEAD, not a read-back.
    let extra = format!("{}{backup}[storage]\nretry_max_s = 2\nverify = \"checksum\"\n", g.target_toml("primary", "p"));
    let d = Daemon::start(Options { extra, ..Options::default() });
    let mut events = subscribe(&d);
    let mut c = d.client().unwrap();
    let rid = record(&mut c, "bk-1", json!({}), 5);
    let stored = events.wait_event("recording_stored", Some("bk-1"), Duration::from_secs(30));
    assert_eq!(stored["stored"]["backup"]["objects"].as_array().unwrap().len(), 2, "{stored}");
    let (_, s) = storage_of(&d);
    let b = s.backup.as_ref().unwrap();
    let in_backup: Vec<String> =
        s.block_on(b.list("")).unwrap().into_iter().map(|m| m.location.to_string()).filter(|k| !is_anchor(k)).collect();
    assert_eq!(in_backup.len(), 2, "{in_backup:?}");
    assert!(in_backup.iter().all(|k| k.starts_with("b/") && k.contains(&rid)));
}

#[test]
fn the_catalog_is_rebuilt_from_the_bucket_and_kept_current_across_recorders() {
    if !garage::available() {
        return;
    }
    let g = Garage::single();
    let extra = format!("{}[storage]\ncatalog_poll_s = 1\n", g.target_toml("primary", "fleet"));
    let mut a = Daemon::start(Options { extra: extra.clone(), ..Options::default() });
    // A second recorder on the same bucket, with the fleet's keys.
    let keys_a = a.dir.path().join("data/keys");
    let extra_b = format!("{extra}[keys]\ndir = \"{}\"\n", keys_a.display());
    let b = Daemon::start(Options { extra: extra_b, ..Options::default() });
    let mut ea = subscribe(&a);
    let mut ca = a.client().unwrap();
    let r1 = record(&mut ca, "fl-1", json!({"agent": "alice", "caller_number": "+4930111"}), 5);
    let r2 = record(&mut ca, "fl-2", json!({"agent": "bob"}), 5);
    ea.wait_event("recording_stored", Some("fl-2"), Duration::from_secs(30));
    // Recorder b finds a's recordings within its poll.
    let mut cb = b.client().unwrap();
    wait_until("b to index a's recordings", Duration::from_secs(30), || {
        let r = cb.request(json!({"cmd": "find", "agent": "alice"}));
        r["recordings"].as_array().is_some_and(|v| v.len() == 1)
    });
    let r = cb.request(json!({"cmd": "find", "agent": "alice"}));
    assert_eq!(r["recordings"][0]["recording_id"], r1.as_str());
    assert!(r["recordings"][0]["stored"]["primary"]["objects"].as_array().is_some_and(|o| o.len() == 2), "{r}");
    // a's catalog lost: `catalog rebuild` restores it from the bucket, with where each landed.
    assert_eq!(a.terminate(), Some(0));
    let db = a.dir.path().join("data/catalog.sqlite");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let cfg = config_of(&a);
    let (code, v, err) = cli(&[
        "catalog",
        "rebuild",
        "--config",
        cfg.to_str().unwrap(),
        "--key-dir",
        keys_a.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["from_store"], 2, "{v}");
    let (code, v, err) =
        cli(&["catalog", "search", "--config", cfg.to_str().unwrap(), "--caller", "+4930111", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["recordings"][0]["recording_id"], r1.as_str(), "{v}");
    assert!(!v["recordings"][0]["stored"].is_null(), "{v}");
    let (_, v, _) = cli(&["catalog", "search", "--config", cfg.to_str().unwrap(), "--json"]);
    assert_eq!(v["recordings"].as_array().unwrap().len(), 2, "{v}");
    // A recorder on the same bucket without the prefix indexes none of the fleet's objects.
    let other = a.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("prefix = \"fleet\"", "prefix = \"\"");
    std::fs::write(&other, text.replace("/data\"", "/other-data\"")).unwrap();
    std::fs::create_dir_all(a.dir.path().join("other-data/spool")).unwrap();
    let (code, v, err) = cli(&[
        "catalog",
        "rebuild",
        "--config",
        other.to_str().unwrap(),
        "--key-dir",
        keys_a.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["from_store"], 0, "another prefix's objects were indexed: {v}");
    // An erasure on a reaches b's catalog through the deletion log, within b's poll.
    let (code, v, err) =
        cli(&["erase", "--config", cfg.to_str().unwrap(), "--caller", "+4930111", "--reason", "GDPR 1", "--json"]);
    assert_eq!(code, Some(0), "{err} {v}");
    wait_until("b to drop the erased recording", Duration::from_secs(30), || {
        let r = cb.request(json!({"cmd": "find", "agent": "alice"}));
        r["recordings"].as_array().is_some_and(|v| v.is_empty())
    });
    let r = cb.request(json!({"cmd": "find", "agent": "bob"}));
    assert_eq!(r["recordings"][0]["recording_id"], r2.as_str(), "the other recording stays: {r}");
}

#[test]
fn retention_and_erasure_delete_and_log_except_what_a_legal_hold_keeps() {
    if !garage::available() {
        return;
    }
    let g = Garage::single();
    let extra = format!(
        "{}[retention]\ndefault_days = 3650\n[[retention.policy]]\nname = \"sales\"\nmatch = {{ queue = \"sales\" }}\ndays = 30\n",
        g.target_toml("primary", "")
    );
    let d = Daemon::start(Options { extra, ..Options::default() });
    let mut events = subscribe(&d);
    let mut c = d.client().unwrap();
    let caller = "+4915100000001";
    let sales1 = record(&mut c, "rt-1", json!({"queue": "sales", "caller_number": caller}), 5);
    let sales2 = record(&mut c, "rt-2", json!({"queue": "sales"}), 5);
    let support = record(&mut c, "rt-3", json!({"queue": "support", "caller_number": caller}), 5);
    let other = record(&mut c, "rt-4", json!({"queue": "support", "caller_number": "+4930999"}), 5);
    for id in ["rt-1", "rt-2", "rt-3", "rt-4"] {
        events.wait_event("recording_stored", Some(id), Duration::from_secs(30));
    }
    let cfg = config_of(&d);
    let cfg_s = cfg.to_str().unwrap();
    wait_until("the catalog", Duration::from_secs(10), || {
        let (_, v, _) = cli(&["catalog", "search", "--config", cfg_s, "--json"]);
        v["recordings"].as_array().is_some_and(|r| r.len() == 4 && r.iter().all(|x| !x["stored"].is_null()))
    });
    // A hold on call rt-2 (a sales call) keeps it past its policy.
    let (code, _, err) = cli(&["hold", "place", "--config", cfg_s, "--call-id", "rt-2", "--reason", "case 117"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, v, _) = cli(&["hold", "list", "--config", cfg_s, "--json"]);
    assert_eq!(v["holds"][0]["value"], "rt-2", "{v}");
    // Today nothing has expired; in 31 days the sales calls have, but the held one stays.
    let (code, v, err) = cli(&["retention", "run", "--config", cfg_s, "--dry-run", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(v["deleted"].as_array().unwrap().is_empty(), "{v}");
    let later = callvault::engine::call::rfc3339(std::time::SystemTime::now() + Duration::from_secs(31 * 86_400));
    let later = &later[..10];
    let (_, v, _) = cli(&["retention", "run", "--config", cfg_s, "--dry-run", "--as-of", later, "--json"]);
    let would: Vec<&str> =
        v["deleted"].as_array().unwrap().iter().map(|x| x["recording_id"].as_str().unwrap()).collect();
    assert_eq!(would, [sales1.as_str()], "{v}");
    assert_eq!(v["held"][0]["recording_id"], sales2.as_str(), "{v}");
    // Erasure of every recording of one caller: both go, from the store and the catalog.
    let (code, v, err) = cli(&["erase", "--config", cfg_s, "--caller", caller, "--reason", "GDPR 2026-0815", "--json"]);
    assert_eq!(code, Some(0), "{err} {v}");
    let erased: Vec<&str> =
        v["deleted"].as_array().unwrap().iter().map(|x| x["recording_id"].as_str().unwrap()).collect();
    assert_eq!(erased.len(), 2, "{v}");
    assert!(erased.contains(&sales1.as_str()) && erased.contains(&support.as_str()));
    let (_, s) = storage_of(&d);
    let objs = objects(&s);
    for gone in [&sales1, &support] {
        assert!(!objs.iter().any(|(k, _)| k.contains(gone.as_str())), "{gone} still stored: {objs:?}");
    }
    for kept in [&sales2, &other] {
        assert_eq!(objs.iter().filter(|(k, _)| k.contains(kept.as_str()) && !k.starts_with("_")).count(), 2, "{kept}");
    }
    let (_, v, _) = cli(&["catalog", "search", "--config", cfg_s, "--caller", caller, "--json"]);
    assert!(v["recordings"].as_array().unwrap().is_empty(), "{v}");
    // Placing the hold again keeps the first one.
    let (code, v, err) = cli(&["hold", "place", "--config", cfg_s, "--call-id", "rt-2", "--reason", "another"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["reason"], "case 117", "{v}");
    assert!(err.contains("already on hold"), "{err}");
    // A call still being recorded is reported pending, not missed.
    let live = c.request(json!({"cmd": "start", "call_id": "rt-live", "metadata": {"caller_number": "+4930777"},
        "legs": [{"label": "customer"}]}));
    assert_eq!(live["ok"], true, "{live}");
    let (code, v, _) = cli(&["erase", "--config", cfg_s, "--caller", "+4930777", "--reason", "r", "--json"]);
    assert_eq!(code, Some(4), "{v}");
    assert_eq!(v["pending"][0], live["recording_id"], "{v}");
    let (code, _, err) = cli(&["erase", "--config", cfg_s, "--caller", "+4930000", "--reason", "r"]);
    assert_eq!(code, Some(0));
    assert!(err.contains("no recording matches"), "{err}");
    // Erasing the held call is refused for it (exit 4) and deletes nothing.
    let (code, v, _) = cli(&["erase", "--config", cfg_s, "--call-id", "rt-2", "--reason", "r", "--json"]);
    assert_eq!(code, Some(4), "{v}");
    assert_eq!(v["held"][0]["hold"]["reason"], "case 117", "{v}");
    assert_eq!(objects(&s).iter().filter(|(k, _)| k.contains(sales2.as_str())).count(), 2);
    // Every deletion is logged, locally and in the store, without the caller's number.
    let log = std::fs::read_to_string(d.dir.path().join("data/deletions.log")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(log.contains("GDPR 2026-0815") && !log.contains(caller), "{log}");
    assert_eq!(objects(&s).iter().filter(|(k, _)| k.starts_with("_deletions/")).count(), 2);
    // Released, the hold no longer keeps it.
    let (code, _, err) = cli(&["hold", "release", "--config", cfg_s, "--call-id", "rt-2"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, v, _) = cli(&["retention", "run", "--config", cfg_s, "--dry-run", "--as-of", later, "--json"]);
    let would: Vec<&str> =
        v["deleted"].as_array().unwrap().iter().map(|x| x["recording_id"].as_str().unwrap()).collect();
    assert_eq!(would, [sales2.as_str()], "{v}");
    // Bad input: a missing reason, nothing to match, a bad time.
    assert_eq!(cli(&["erase", "--config", cfg_s, "--reason", "x"]).0, Some(2));
    assert_eq!(cli(&["retention", "run", "--config", cfg_s, "--dry-run", "--as-of", "soon"]).0, Some(2));
}

#[test]
fn a_three_node_cluster_loses_a_node_and_every_recording_lands() {
    if !garage::available() {
        return;
    }
    let mut g = Garage::cluster(3);
    let extra = format!("{}[storage]\nretry_max_s = 2\n", g.target_toml("primary", ""));
    let d = Daemon::start(Options { extra, ..Options::default() });
    let mut c = d.client().unwrap();
    let mut rids = Vec::new();
    for i in 0..3 {
        rids.push(record(&mut c, &format!("c3-{i}"), json!({}), 5));
    }
    // kill -9 a node (not the one callvault talks to), record on, bring it back.
    g.nodes[2].kill();
    for i in 3..6 {
        rids.push(record(&mut c, &format!("c3-{i}"), json!({}), 5));
    }
    let (_, s) = storage_of(&d);
    wait_until("every recording to land with a node down", Duration::from_secs(60), || {
        objects(&s).len() == rids.len() * 2
    });
    g.nodes[2].restart();
    for i in 6..8 {
        rids.push(record(&mut c, &format!("c3-{i}"), json!({}), 5));
    }
    wait_until("every recording to land", Duration::from_secs(60), || objects(&s).len() == rids.len() * 2);
    let objs = objects(&s);
    for r in &rids {
        assert_eq!(objs.iter().filter(|(k, _)| k.contains(r.as_str())).count(), 2, "{r}");
    }
    assert!(!spool_files(&d).iter().any(|f| f.ends_with(".cvs")));
}
