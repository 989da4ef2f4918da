//! The shipper against stores that misbehave: one that returns other bytes than it was sent,
//! and one that is down. What must hold: the spool keeps a recording until every target has
//! verified it, a target that already confirmed a file is not sent it again, and holds and the
//! spool keep erasure from deleting what it must not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use serde_json::json;

use super::ship::{Outcome, Shipper};
use super::{Role, Storage, StorageError, Target};

/// An in-memory store that can corrupt what it is given, or refuse everything.
#[derive(Debug, Default)]
struct Flaky {
    inner: InMemory,
    corrupt: AtomicBool,
    down: AtomicBool,
    puts: AtomicUsize,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky")
    }
}

impl Flaky {
    fn check(&self) -> object_store::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic { store: "flaky", source: "connection refused".into() });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check()?;
        self.puts.fetch_add(1, Ordering::SeqCst);
        let mut bytes: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
        if self.corrupt.load(Ordering::SeqCst)
            && let Some(last) = bytes.last_mut()
        {
            *last ^= 1;
        }
        self.inner.put_opts(location, PutPayload::from(bytes), opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> object_store::Result<GetResult> {
        self.check()?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> object_store::Result<ListResult> {
        self.check()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &ObjectPath, to: &ObjectPath, options: CopyOptions) -> object_store::Result<()> {
        self.check()?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// A plain finished recording in a spool; its id.
fn plant(spool: &std::path::Path, call: &str) -> String {
    let rid = ulid::Ulid::new().to_string();
    std::fs::write(spool.join(format!("{call}-{rid}.wav")), vec![7u8; 10_000]).unwrap();
    let summary = json!({"recording_id": rid, "call_id": call, "state": "finished",
        "started_at": "2026-12-04T10:00:00.000Z", "metadata": {}});
    std::fs::write(spool.join(format!("{call}-{rid}.json")), summary.to_string()).unwrap();
    rid
}

fn shipper(spool: &std::path::Path, primary: Arc<Flaky>, backup: Option<Arc<Flaky>>) -> Shipper {
    let storage = Storage::from_targets(
        Target::over(Role::Primary, primary, 8 << 20),
        backup.map(|b| Target::over(Role::Backup, b, 8 << 20)),
    );
    Shipper::new(spool.to_path_buf(), storage, &crate::config::StorageConfig::default(), None)
}

fn in_spool(spool: &std::path::Path, rid: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(rid))
        .collect();
    v.sort();
    v
}

#[test]
fn a_store_that_returns_other_bytes_never_gets_the_spools_copy_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky::default());
    store.corrupt.store(true, Ordering::SeqCst);
    let mut s = shipper(dir.path(), store.clone(), None);
    let rid = plant(dir.path(), "c-1");
    let pending = super::ship::scan(dir.path(), &mut Default::default()).unwrap();
    let outcome = s.storage().block_on(s.ship_one(&pending[0], &[Role::Primary]));
    assert!(matches!(outcome, Outcome::Failed(Role::Primary, StorageError::Mismatch { .. })), "{outcome:?}");
    let kept = in_spool(dir.path(), &rid);
    assert!(kept.iter().any(|n| n.ends_with(".wav")) && kept.iter().any(|n| n.ends_with(".json")), "{kept:?}");
    // Counted, and retried once the store behaves.
    assert_eq!(s.run_once(), (0, 1));
    assert!(s.stats().verify_failures[0].load(Ordering::SeqCst) >= 1);
    store.corrupt.store(false, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.run_once().0 == 0 {
        assert!(std::time::Instant::now() < deadline, "never released");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(in_spool(dir.path(), &rid).is_empty());
}

#[test]
fn a_backup_that_is_down_holds_the_spools_copy_and_the_primary_is_not_sent_it_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, backup) = (Arc::new(Flaky::default()), Arc::new(Flaky::default()));
    backup.down.store(true, Ordering::SeqCst);
    let mut s = shipper(dir.path(), primary.clone(), Some(backup.clone()));
    let rid = plant(dir.path(), "c-2");
    assert_eq!(s.run_once(), (0, 1));
    assert_eq!(primary.puts.load(Ordering::SeqCst), 2, "audio and metadata in the primary");
    assert!(in_spool(dir.path(), &rid).iter().any(|n| n.ends_with(".ship")), "{:?}", in_spool(dir.path(), &rid));
    assert_eq!(s.stats().target_down[1].load(Ordering::SeqCst), 1);
    // Passes while the backup is down send the primary nothing more.
    assert_eq!(s.run_once(), (0, 1));
    assert_eq!(primary.puts.load(Ordering::SeqCst), 2);
    backup.down.store(false, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(s.run_once(), (1, 0));
    assert_eq!(primary.puts.load(Ordering::SeqCst), 2, "the primary's copies were kept");
    assert_eq!(backup.puts.load(Ordering::SeqCst), 2);
    assert!(in_spool(dir.path(), &rid).is_empty());
    assert_eq!(s.stats().target_down[1].load(Ordering::SeqCst), 0);
}

#[test]
fn erasure_deletes_nothing_held_nothing_in_the_spool_and_nothing_when_holds_are_unreadable() {
    use super::retention::{Hold, HoldKind, Reason, delete_unless_held, place_hold};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky::default());
    let storage = Storage::from_targets(Target::over(Role::Primary, store.clone(), 8 << 20), None);
    let stored = |rid: &str| json!({"primary": {"objects": [{"key": format!("2026/12/04/{rid}.wav")}]}});
    for rid in ["A", "B"] {
        storage.block_on(storage.primary.put(&ObjectPath::from(format!("2026/12/04/{rid}.wav")), vec![1])).unwrap();
    }
    let a = json!({"recording_id": "A", "call_id": "ca", "stored": stored("A")});
    let b = json!({"recording_id": "B", "call_id": "cb", "stored": stored("B")});
    let c = json!({"recording_id": "C", "call_id": "cc", "stored": null});
    place_hold(
        &storage,
        &Hold {
            kind: HoldKind::Call,
            value: "cb".into(),
            reason: "case".into(),
            placed_at: String::new(),
            placed_by: String::new(),
        },
    )
    .unwrap();
    let why = || Reason { kind: "erasure", detail: "request 1".into() };
    let mut removed = Vec::new();
    // The store down: the holds cannot be read, so nothing at all is deleted.
    store.down.store(true, Ordering::SeqCst);
    let mut rm = |r: &str| removed.push(r.to_string());
    let all = vec![(a.clone(), why()), (b.clone(), why()), (c.clone(), why())];
    assert!(delete_unless_held(&storage, dir.path(), all.clone(), false, &mut rm).is_err());
    store.down.store(false, Ordering::SeqCst);
    let report = delete_unless_held(&storage, dir.path(), all, false, &mut rm).unwrap();
    assert_eq!(report.deleted.len(), 1);
    assert_eq!(report.held[0].0, "B");
    assert_eq!(report.pending, ["C"]);
    assert_eq!(removed, ["A"]);
    let left: Vec<String> =
        storage.block_on(storage.primary.list("2026")).unwrap().into_iter().map(|m| m.location.to_string()).collect();
    assert_eq!(left, ["2026/12/04/B.wav"]);
    // Stored in a target the configuration no longer names: refused, not reported deleted.
    let moved = json!({"recording_id": "D", "call_id": "cd",
        "stored": {"primary": {"target": "local /old/archive", "objects": [{"key": "2026/12/04/D.wav"}]}}});
    let report = delete_unless_held(&storage, dir.path(), vec![(moved, why())], false, &mut |_| {}).unwrap();
    assert!(report.deleted.is_empty());
    assert!(report.failed[0].1.contains("/old/archive"), "{:?}", report.failed);
    let log = std::fs::read_to_string(super::retention::deletion_log_path(dir.path())).unwrap();
    assert_eq!(log.lines().count(), 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(super::retention::deletion_log_path(dir.path())).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the deletion log names call ids");
    assert!(log.contains("\"recording_id\":\"A\"") && log.contains("request 1"));
}

#[test]
fn a_damaged_leftover_or_an_interrupted_progress_write_does_not_hold_a_recording_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky::default());
    let mut s = shipper(dir.path(), store.clone(), None);
    let rid = plant(dir.path(), "c-3");
    // What recovery could not authenticate stays as evidence; a crash mid-`.ship` write.
    let damaged = dir.path().join(format!("{rid}.wav.cvs.partial.damaged"));
    std::fs::write(&damaged, b"x").unwrap();
    std::fs::write(dir.path().join(format!("{rid}.ship.tmp")), b"{").unwrap();
    // But a `.partial` means it is still being written.
    let partial = dir.path().join(format!("c-3-{rid}-1-agent.wav.partial"));
    std::fs::write(&partial, b"x").unwrap();
    assert_eq!(s.run_once(), (0, 0));
    std::fs::remove_file(&partial).unwrap();
    // Files that merely mention the recording are not its files: an export, a decrypted copy.
    let copy = format!("backup-copy-{rid}.wav");
    std::fs::write(dir.path().join(&copy), b"RIFF").unwrap();
    let export = format!("notes-{rid}.json");
    let fake =
        json!({"recording_id": rid, "call_id": "c-3", "state": "finished", "started_at": "2026-12-04T10:00:00.000Z"});
    std::fs::write(dir.path().join(&export), fake.to_string()).unwrap();
    assert_eq!(s.run_once(), (1, 0));
    let mut left = vec![format!("{rid}.wav.cvs.partial.damaged"), copy, export];
    left.sort();
    assert_eq!(in_spool(dir.path(), &rid), left);
    assert_eq!(store.puts.load(Ordering::SeqCst), 2);
    // And a second pass leaves them alone too.
    assert_eq!(s.run_once(), (0, 0));
}

#[test]
fn a_release_cut_short_after_the_sidecar_went_is_reported_from_its_progress_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shipper(dir.path(), Arc::new(Flaky::default()), None);
    let rid = ulid::Ulid::new().to_string();
    let ship = json!({"recording_id": rid, "started_at": "2026-12-04T10:00:00.000Z", "confirmed": {"primary": {
        format!("{rid}.wav.cvs"): {"sha256": "aa", "bytes": 10}, format!("{rid}.meta.cvs"): {"sha256": "bb", "bytes": 5}}}});
    std::fs::write(dir.path().join(format!("{rid}.ship")), ship.to_string()).unwrap();
    let out = s.run_once_reporting();
    assert_eq!(out.len(), 1, "{out:?}");
    let keys: Vec<&str> = out[0].1["stored"]["primary"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [format!("2026/12/04/{rid}.wav.cvs"), format!("2026/12/04/{rid}.meta.cvs")]);
    assert!(in_spool(dir.path(), &rid).is_empty());
}
