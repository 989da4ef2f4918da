//! The shipper: moves finished recordings from the spool to the storage targets.
//!
//! The spool is the queue. Every cycle it is scanned for recordings whose sidecar says
//! `finished` and that have no `.partial` file left; each is uploaded to every target (audio
//! first, the metadata object last, so a metadata object in the store means the recording is
//! complete there), each object is verified against the spool's SHA-256, and only when every
//! target holds every file are the spool's copies removed (audio first, the sidecar last). What
//! each target has confirmed is kept in `<recording id>.ship` beside them, so a restart resumes
//! where it stopped; object names are fixed by the recording id, so sending again after a crash
//! replaces an object with the same bytes and never makes a second copy.
//!
//! A target that fails is left alone for a backoff (doubling to `[storage] retry_max_s`) while
//! the spool buffers; the other target goes on independently.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Role, Storage, StorageError, Target, file_sha256};
use crate::output::encode::strip_audio_ext;
use crate::seal::format::hex;

/// Counters and gauges for `/metrics`, updated by the shipper's thread only.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Finished recordings in the spool not yet in every target.
    pub backlog_recordings: AtomicU64,
    /// Their bytes.
    pub backlog_bytes: AtomicU64,
    /// When the oldest of them finished (ms since the epoch; 0: none).
    pub oldest_finished_ms: AtomicI64,
    /// Per role (primary, backup): files uploaded, bytes, failures.
    pub uploads: [AtomicU64; 2],
    pub bytes: [AtomicU64; 2],
    pub failures: [AtomicU64; 2],
    pub verify_failures: [AtomicU64; 2],
    /// Recordings released from the spool (in every target).
    pub released: AtomicU64,
    /// 1 while a target is in backoff after a failure.
    pub target_down: [AtomicU64; 2],
    /// Recordings deleted by retention.
    pub retention_deleted: AtomicU64,
    /// Whether a backup target is configured (its series are shown only then).
    pub has_backup: std::sync::atomic::AtomicBool,
}

fn slot(role: Role) -> usize {
    match role {
        Role::Primary => 0,
        Role::Backup => 1,
    }
}

/// A finished recording waiting in the spool.
#[derive(Debug, Clone)]
pub struct Pending {
    pub recording_id: String,
    pub started_at: String,
    /// Audio files then the sidecar: (spool path, object name).
    pub files: Vec<(PathBuf, String)>,
    pub bytes: u64,
    pub finished_ms: i64,
}

/// What a recording's `.ship` file records: per target, the objects confirmed (by name).
type Confirmed = BTreeMap<String, BTreeMap<String, Landed>>;

/// One object a target confirmed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Landed {
    sha256: String,
    bytes: u64,
}

/// What a sidecar said, by name, with the size and mtime it had then: a pass reads again only
/// the sidecars that changed (a busy spool holds one per active call).
type SidecarCache = HashMap<String, (u64, std::time::SystemTime, Option<(String, String, String, String)>)>;

/// What the scans remember between passes: sidecar states, and what was warned of once.
#[derive(Default)]
pub struct ScanState {
    cache: SidecarCache,
    warned: std::collections::HashSet<String>,
    /// `.ship` files left without their recording: a crash after the sidecar's removal, before
    /// the catalog heard (recording ids).
    orphans: Vec<String>,
}

impl ScanState {
    fn warn_once(&mut self, key: String, message: impl FnOnce() -> String) {
        if self.warned.insert(key) {
            crate::log::warn(&message());
        }
    }
}

/// What a spool file is to recording `rid`, by the names serve gives: sealed `<rid>.wav.cvs`,
/// `<rid>-<n>.wav.cvs`, `<rid>.meta.cvs`; plain `<call>-<rid>.wav`,
/// `<call>-<rid>-<n>-<label>.wav`, `<call>-<rid>.json` (`.opus` or `.mp3` for those formats).
/// Anything else is not the recording's, whatever it contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    Audio,
    Sidecar,
}

fn own_file(name: &str, rid: &str) -> Option<Own> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = name.strip_prefix(rid) {
        return match rest {
            ".meta.cvs" => Some(Own::Sidecar),
            _ if rest.strip_suffix(".cvs").and_then(strip_audio_ext) == Some("") => Some(Own::Audio),
            _ => rest
                .strip_prefix('-')
                .and_then(|r| r.strip_suffix(".cvs"))
                .and_then(strip_audio_ext)
                .filter(|n| digits(n))
                .map(|_| Own::Audio),
        };
    }
    let at = name.find(&format!("-{rid}"))?;
    let rest = &name[at + 1 + rid.len()..];
    match rest {
        ".json" => Some(Own::Sidecar),
        _ if strip_audio_ext(rest) == Some("") => Some(Own::Audio),
        _ => {
            let leg = strip_audio_ext(rest.strip_prefix('-')?)?;
            let (n, label) = leg.split_once('-')?;
            (digits(n) && !label.is_empty()).then_some(Own::Audio)
        }
    }
}

/// Lists the finished recordings in a spool that are ready to ship. A recording with any
/// `.partial` or temporary file is not (it is still being written, or waits for recovery).
pub fn scan(spool: &Path, st: &mut ScanState) -> std::io::Result<Vec<Pending>> {
    let mut names: Vec<String> =
        std::fs::read_dir(spool)?.filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok())).collect();
    names.sort();
    st.cache.retain(|k, _| names.binary_search(k).is_ok());
    let mut out = Vec::new();
    let mut with_sidecar = std::collections::HashSet::new();
    for sidecar in &names {
        if !(sidecar.ends_with(".meta.cvs") || sidecar.ends_with(".json")) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(spool.join(sidecar)) else { continue };
        let (len, mtime) = (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
        let state = match st.cache.get(sidecar) {
            Some((l, m, s)) if *l == len && *m == mtime => s.clone(),
            _ => {
                let s = sidecar_state(spool, sidecar);
                st.cache.insert(sidecar.clone(), (len, mtime, s.clone()));
                s
            }
        };
        let Some((rid, state, started_at, stem)) = state else { continue };
        // Named exactly as serve names it: a plain sidecar after its own call id, so a copy or
        // an export that merely mentions the recording is never taken for it.
        let named = own_file(sidecar, &rid) == Some(Own::Sidecar)
            && (sidecar.ends_with(".meta.cvs") || *sidecar == format!("{stem}.json"));
        if !named {
            // A file that says it is a recording's summary but is not named as serve names one.
            st.warn_once(sidecar.clone(), || {
                format!(
                    "shipper: {} names recording {rid} but is not its sidecar; left alone",
                    spool.join(sidecar).display()
                )
            });
            continue;
        }
        with_sidecar.insert(rid.clone());
        if state != "finished" {
            continue;
        }
        let mine: Vec<&String> = names.iter().filter(|n| n.contains(&rid)).collect();
        // Still being written, or waiting for the next start's recovery. A `.damaged` file
        // (what recovery could not authenticate, kept as evidence) stays in the spool and does
        // not hold up the recovered recording; an interrupted `.ship` write is only progress.
        let busy = |n: &str| n.ends_with(".partial") || (n.ends_with(".tmp") && !n.ends_with(".ship.tmp"));
        if mine.iter().any(|n| busy(n)) {
            continue;
        }
        let mut files = Vec::new();
        let mut bytes = 0;
        for n in mine.iter().filter(|n| **n != sidecar && n.starts_with(&stem) && own_file(n, &rid) == Some(Own::Audio))
        {
            let p = spool.join(n);
            bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            files.push((p, object_name(n, &rid)));
        }
        let sp = spool.join(sidecar);
        let meta = std::fs::metadata(&sp).ok();
        bytes += meta.as_ref().map_or(0, |m| m.len());
        let finished_ms = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        files.push((sp, object_name(sidecar, &rid)));
        let mut objects: Vec<&String> = files.iter().map(|(_, o)| o).collect();
        objects.sort();
        if objects.windows(2).any(|w| w[0] == w[1]) {
            st.warn_once(format!("dup {rid}"), || {
                format!("shipper: recording {rid} has two spool files for one object name ({objects:?}); not shipped until one is moved away")
            });
            continue;
        }
        out.push(Pending { recording_id: rid, started_at, files, bytes, finished_ms });
    }
    st.orphans = names
        .iter()
        .filter_map(|n| n.strip_suffix(".ship"))
        .filter(|rid| rid.len() == 26 && !with_sidecar.contains(*rid))
        .filter(|rid| !names.iter().any(|n| n.starts_with(*rid) && own_file(n, rid) == Some(Own::Audio)))
        .map(str::to_string)
        .collect();
    // Sealed audio whose sidecar is gone (deleted by hand?) would wait for ever unseen.
    for n in &names {
        let Some(rid) = n.get(..26).filter(|r| ulid::Ulid::from_string(r).is_ok()) else { continue };
        if own_file(n, rid) == Some(Own::Audio) && !with_sidecar.contains(rid) {
            st.warn_once(n.clone(), || {
                format!(
                    "shipper: {} has no sidecar ({rid}.meta.cvs): not shipped; restore the sidecar, or `callvault verify` and move the file by hand",
                    spool.join(n).display()
                )
            });
        }
    }
    Ok(out)
}

/// `<recording id>…` of a spool name: the call id a plain file's name starts with is dropped.
fn object_name(spool_name: &str, rid: &str) -> String {
    spool_name.find(rid).map_or(spool_name, |i| &spool_name[i..]).to_string()
}

/// (recording id, state, started_at, stem) of a sidecar, from a sealed one's clear index (no
/// key needed) or a plain one's JSON; `None` for anything else. The stem is what every file of
/// the recording is named from: the recording id (sealed), or `<sanitised call id>-<id>` (plain).
fn sidecar_state(spool: &Path, name: &str) -> Option<(String, String, String, String)> {
    let (v, plain): (Value, bool) = if name.ends_with(".meta.cvs") {
        let mut f = std::fs::File::open(spool.join(name)).ok()?;
        let (header, _, _) = crate::seal::reader::read_header(&mut f).ok()?;
        (serde_json::from_str(&header.index).ok()?, false)
    } else if name.ends_with(".json") && !name.ends_with(".summary.json") {
        (serde_json::from_slice(&std::fs::read(spool.join(name)).ok()?).ok()?, true)
    } else {
        return None;
    };
    let rid = v["recording_id"].as_str().filter(|r| r.len() == 26)?.to_string();
    let stem = if plain { format!("{}-{rid}", crate::import::sanitise(v["call_id"].as_str()?)) } else { rid.clone() };
    Some((rid, v["state"].as_str()?.to_string(), v["started_at"].as_str().unwrap_or_default().to_string(), stem))
}

fn ship_file(spool: &Path, rid: &str) -> PathBuf {
    spool.join(format!("{rid}.ship"))
}

fn read_confirmed(spool: &Path, rid: &str) -> Confirmed {
    std::fs::read(ship_file(spool, rid))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| serde_json::from_value(v["confirmed"].clone()).ok())
        .unwrap_or_default()
}

fn read_started(spool: &Path, rid: &str) -> String {
    std::fs::read(ship_file(spool, rid))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["started_at"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn write_confirmed(spool: &Path, rid: &str, started_at: &str, c: &Confirmed) -> std::io::Result<()> {
    let path = ship_file(spool, rid);
    let tmp = crate::output::with_suffix(&path, ".tmp");
    let body = serde_json::to_vec_pretty(&json!({"recording_id": rid, "started_at": started_at, "confirmed": c}))?;
    let done = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Where a recording landed, for the catalog: per target, its objects.
fn stored_json(storage: &Storage, p: &Pending, sums: &[(String, String, u64)]) -> Value {
    let mut out = serde_json::Map::new();
    for t in storage.targets() {
        let objects: Vec<Value> = sums
            .iter()
            .map(|(name, sha, len)| {
                let key = t.recording_key(&p.started_at, name);
                let mut o = json!({"key": key.to_string(), "sha256": sha, "bytes": len});
                if let Some(path) = t.local_path(&key) {
                    o["path"] = json!(path.display().to_string());
                }
                o
            })
            .collect();
        out.insert(t.role.name().into(), json!({"target": t.describe, "objects": objects}));
    }
    Value::Object(out)
}

/// Moves recordings from the spool to the targets.
pub struct Shipper {
    spool: PathBuf,
    storage: Storage,
    stats: Arc<ShipStats>,
    catalog: Option<crate::catalog::Writer>,
    concurrency: usize,
    retry_max: Duration,
    /// Per target: consecutive failures and when it may be tried again.
    down: HashMap<Role, (u32, Instant)>,
    /// Per recording: failures that were not the target's (a mismatch, a local read error).
    failing: HashMap<String, (u32, Instant)>,
    /// Released in the current pass.
    released_now: Vec<(String, Value)>,
    scan_state: ScanState,
    /// To read a sealed sidecar's call id for the `recording_stored` event.
    keys: Option<Arc<crate::output::sealed::Sealing>>,
}

/// What shipping one recording did.
#[derive(Debug)]
pub enum Outcome {
    /// In every target and gone from the spool: `{"call_id", "stored"}`.
    Released(Value),
    /// Some target still lacks it (that target is down or in backoff).
    Waiting,
    /// It failed; the error says why.
    Failed(Role, StorageError),
}

impl Shipper {
    pub fn new(
        spool: PathBuf,
        storage: Storage,
        cfg: &crate::config::StorageConfig,
        catalog: Option<crate::catalog::Writer>,
    ) -> Shipper {
        let stats = ShipStats::default();
        stats.has_backup.store(storage.backup.is_some(), Ordering::Relaxed);
        Shipper {
            spool,
            storage,
            stats: Arc::new(stats),
            catalog,
            concurrency: cfg.concurrency,
            retry_max: Duration::from_secs(cfg.retry_max_s),
            down: HashMap::new(),
            failing: HashMap::new(),
            released_now: Vec::new(),
            scan_state: ScanState::default(),
            keys: None,
        }
    }

    /// Keys to read sealed sidecars with (for the call id `recording_stored` names).
    pub fn with_keys(mut self, keys: Option<Arc<crate::output::sealed::Sealing>>) -> Shipper {
        self.keys = keys;
        self
    }

    pub fn stats(&self) -> Arc<ShipStats> {
        self.stats.clone()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// One pass, returning each recording released: (recording id, `{"call_id", "stored"}`).
    pub fn run_once_reporting(&mut self) -> Vec<(String, Value)> {
        self.run_once();
        std::mem::take(&mut self.released_now)
    }

    /// One pass over the spool: ships what is ready, as far as the targets allow. Returns
    /// (released, still waiting).
    pub fn run_once(&mut self) -> (usize, usize) {
        self.released_now.clear();
        let pending = match scan(&self.spool, &mut self.scan_state) {
            Ok(p) => p,
            Err(e) => {
                crate::log::warn(&format!("shipper: cannot read the spool {}: {e}", self.spool.display()));
                return (0, 0);
            }
        };
        // A release a crash cut short after the sidecar went: every target had confirmed every
        // object, so tell the catalog (and the ACD) what `.ship` says, then drop it.
        for rid in std::mem::take(&mut self.scan_state.orphans) {
            let confirmed = read_confirmed(&self.spool, &rid);
            let mut flat: Vec<(String, String, u64)> = confirmed
                .get(Role::Primary.name())
                .map(|m| m.iter().map(|(n, l)| (n.clone(), l.sha256.clone(), l.bytes)).collect())
                .unwrap_or_default();
            if flat.is_empty() {
                continue;
            }
            flat.sort_by_key(|(n, _, _)| (n.ends_with(".meta.cvs") || n.ends_with(".json"), n.clone()));
            let started = read_started(&self.spool, &rid);
            let p =
                Pending { recording_id: rid.clone(), started_at: started, files: Vec::new(), bytes: 0, finished_ms: 0 };
            let stored = stored_json(&self.storage, &p, &flat);
            if let Some(c) = &self.catalog {
                c.stored(&rid, stored.clone());
            }
            let _ = std::fs::remove_file(ship_file(&self.spool, &rid));
            crate::log::info(&format!("shipper: recording {rid} was stored before a crash; catalog told"));
            self.released_now.push((rid, json!({"call_id": null, "stored": stored})));
        }
        let uploads_before =
            [self.stats.uploads[0].load(Ordering::Relaxed), self.stats.uploads[1].load(Ordering::Relaxed)];
        // The gauges say what waits before the pass, which may take long against a slow store.
        self.set_backlog(&pending.iter().collect::<Vec<_>>());
        let now = Instant::now();
        let total = pending.len();
        let mut ready: Vec<Pending> = pending
            .iter()
            .filter(|p| self.failing.get(&p.recording_id).is_none_or(|(_, at)| *at <= now))
            .cloned()
            .collect();
        let up: Vec<Role> = self
            .storage
            .targets()
            .map(|t| t.role)
            .filter(|r| self.down.get(r).is_none_or(|(_, at)| *at <= now))
            .collect();
        // A target coming out of its backoff is probed with one recording, not the whole backlog.
        if up.iter().any(|r| self.down.contains_key(r)) {
            ready.truncate(1);
        }
        let results: Vec<(String, Outcome)> = {
            use futures::StreamExt;
            let this = &*self;
            let up = &up;
            self.storage.block_on(
                futures::stream::iter(ready)
                    .map(|p| async move {
                        let rid = p.recording_id.clone();
                        (rid, this.ship_one(&p, up).await)
                    })
                    .buffer_unordered(self.concurrency)
                    .collect(),
            )
        };
        let mut released = 0;
        let mut target_failed: Vec<(Role, StorageError)> = Vec::new();
        for (rid, outcome) in results {
            match outcome {
                Outcome::Released(v) => {
                    released += 1;
                    self.failing.remove(&rid);
                    self.released_now.push((rid, v));
                }
                Outcome::Waiting => {}
                Outcome::Failed(role, e) => {
                    let s = slot(role);
                    self.stats.failures[s].fetch_add(1, Ordering::Relaxed);
                    if matches!(e, StorageError::Store { .. }) {
                        // The store itself: back off the whole target, once per pass however
                        // many recordings it failed.
                        if !target_failed.iter().any(|(r, _)| *r == role) {
                            target_failed.push((role, e));
                        }
                    } else {
                        if matches!(e, StorageError::Mismatch { .. }) {
                            self.stats.verify_failures[s].fetch_add(1, Ordering::Relaxed);
                        }
                        let n = self.failing.get(&rid).map_or(0, |(n, _)| *n) + 1;
                        crate::log::warn(&format!("shipper: recording {rid}: {e}"));
                        self.failing.insert(rid, (n, Instant::now() + backoff(n, self.retry_max)));
                    }
                }
            }
        }
        for (role, e) in target_failed {
            let n = self.down.get(&role).map_or(0, |(n, _)| *n) + 1;
            let wait = backoff(n, self.retry_max);
            if n == 1 || n.is_power_of_two() {
                crate::log::warn(&format!(
                    "shipper: {e}; the spool keeps the recordings and {role} is tried again in {}s ({n} failed pass(es) in a row)",
                    wait.as_secs(),
                    role = role.name(),
                ));
            }
            self.down.insert(role, (n, Instant::now() + wait));
            self.stats.target_down[slot(role)].store(1, Ordering::Relaxed);
        }
        for role in up {
            // A target is up again once a pass sent it something without a store error (a pass
            // with nothing to send proves nothing).
            let sent = self.stats.uploads[slot(role)].load(Ordering::Relaxed) > uploads_before[slot(role)];
            let failed_now =
                self.down.get(&role).is_some_and(|(_, at)| *at > now) || (!sent && self.down.contains_key(&role));
            if !failed_now && self.down.remove(&role).is_some() {
                crate::log::info(&format!("shipper: {} target reachable again; shipping the backlog", role.name()));
            }
            if !failed_now {
                self.stats.target_down[slot(role)].store(0, Ordering::Relaxed);
            }
        }
        let done: std::collections::HashSet<&str> = self.released_now.iter().map(|(r, _)| r.as_str()).collect();
        let left: Vec<&Pending> = pending.iter().filter(|p| !done.contains(p.recording_id.as_str())).collect();
        self.set_backlog(&left);
        (released, total - released)
    }

    fn set_backlog(&self, left: &[&Pending]) {
        self.stats.backlog_recordings.store(left.len() as u64, Ordering::Relaxed);
        self.stats.backlog_bytes.store(left.iter().map(|p| p.bytes).sum(), Ordering::Relaxed);
        self.stats.oldest_finished_ms.store(left.iter().map(|p| p.finished_ms).min().unwrap_or(0), Ordering::Relaxed);
    }

    /// Ships one recording to every target in `up` that lacks it; releases it from the spool
    /// when every configured target has it.
    pub async fn ship_one(&self, p: &Pending, up: &[Role]) -> Outcome {
        let mut confirmed = read_confirmed(&self.spool, &p.recording_id);
        let mut sums = Vec::new();
        for (path, name) in &p.files {
            match file_sha256(path) {
                Ok((sha, len)) => sums.push((name.clone(), hex(&sha), len, sha)),
                Err(e) => return Outcome::Failed(Role::Primary, e),
            }
        }
        let mut complete = true;
        for t in self.storage.targets() {
            let role = t.role.name().to_string();
            let have = confirmed.get(&role).cloned().unwrap_or_default();
            let missing: Vec<usize> =
                (0..p.files.len()).filter(|&i| have.get(&sums[i].0).map(|l| &l.sha256) != Some(&sums[i].1)).collect();
            if missing.is_empty() {
                continue;
            }
            if !up.contains(&t.role) {
                complete = false;
                continue;
            }
            for i in missing {
                let (path, _) = &p.files[i];
                let (name, sha_hex, len, sha) = &sums[i];
                if let Err(e) = self.put_verified(t, p, path, name, *len, sha).await {
                    // What was confirmed so far stays confirmed.
                    let _ = write_confirmed(&self.spool, &p.recording_id, &p.started_at, &confirmed);
                    return Outcome::Failed(t.role, e);
                }
                confirmed
                    .entry(role.clone())
                    .or_default()
                    .insert(name.clone(), Landed { sha256: sha_hex.clone(), bytes: *len });
                // Recorded at once: a restart resumes after the last confirmed object.
                if let Err(e) = write_confirmed(&self.spool, &p.recording_id, &p.started_at, &confirmed) {
                    return Outcome::Failed(
                        t.role,
                        StorageError::Io {
                            action: "cannot record progress in",
                            path: ship_file(&self.spool, &p.recording_id),
                            source: e,
                        },
                    );
                }
            }
        }
        if !complete {
            return Outcome::Waiting;
        }
        // Read before the sidecar goes.
        let call_id = self.call_id(p);
        if let Err(e) = self.release(p) {
            return Outcome::Failed(Role::Primary, e);
        }
        // From what the primary confirmed, not from what the spool still holds: after a crash
        // in the middle of a release the audio is gone from the spool but not from storage.
        let mut flat: Vec<(String, String, u64)> = confirmed
            .get(Role::Primary.name())
            .map(|m| m.iter().map(|(n, l)| (n.clone(), l.sha256.clone(), l.bytes)).collect())
            .unwrap_or_default();
        flat.sort_by_key(|(n, _, _)| (n.ends_with(".meta.cvs") || n.ends_with(".json"), n.clone()));
        drop(sums);
        let stored = stored_json(&self.storage, p, &flat);
        if let Some(c) = &self.catalog {
            c.stored(&p.recording_id, stored.clone());
        }
        self.stats.released.fetch_add(1, Ordering::Relaxed);
        Outcome::Released(json!({"call_id": call_id, "stored": stored}))
    }

    fn call_id(&self, p: &Pending) -> Option<String> {
        let (sidecar, _) = p.files.last()?;
        let v = if sidecar.to_string_lossy().ends_with(".meta.cvs") {
            crate::output::sealed::read_sealed_json(sidecar, &self.keys.as_ref()?.keys).ok()?
        } else {
            serde_json::from_slice::<Value>(&std::fs::read(sidecar).ok()?).ok()?
        };
        v["call_id"].as_str().map(str::to_string)
    }

    async fn put_verified(
        &self,
        t: &Target,
        p: &Pending,
        path: &Path,
        name: &str,
        len: u64,
        sha: &[u8; 32],
    ) -> Result<(), StorageError> {
        let key = t.recording_key(&p.started_at, name);
        let sent = t.upload_file(path, &key).await?;
        if sent != len {
            return Err(StorageError::Mismatch {
                target: t.role.name().into(),
                key: key.to_string(),
                detail: format!("the spool's copy changed while it was sent ({len} then {sent} bytes)"),
            });
        }
        t.verify(&key, len, sha).await?;
        let s = slot(t.role);
        self.stats.uploads[s].fetch_add(1, Ordering::Relaxed);
        self.stats.bytes[s].fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Removes a recording from the spool: audio first, the sidecar and `.ship` last, the
    /// directory synced between, so a crash midway leaves a sidecar that resumes the release.
    fn release(&self, p: &Pending) -> Result<(), StorageError> {
        let (sidecar, audio) = p.files.split_last().expect("a sidecar");
        let rm = |path: &Path| match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Io { action: "cannot remove", path: path.to_path_buf(), source: e }),
        };
        let sync = || {
            std::fs::File::open(&self.spool).and_then(|d| d.sync_all()).map_err(|e| StorageError::Io {
                action: "cannot sync",
                path: self.spool.clone(),
                source: e,
            })
        };
        for (path, _) in audio {
            rm(path)?;
        }
        sync()?;
        rm(&sidecar.0)?;
        let ship = ship_file(&self.spool, &p.recording_id);
        rm(&crate::output::with_suffix(&ship, ".tmp"))?;
        rm(&ship)?;
        sync()
    }
}

fn backoff(failures: u32, max: Duration) -> Duration {
    let secs = 1u64.checked_shl(failures.saturating_sub(1).min(20)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let max = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn only_the_names_serve_gives_are_a_recordings_files() {
        let rid = "01KB0000000000000000000000";
        for (name, own) in [
            (format!("{rid}.wav.cvs"), Some(Own::Audio)),
            (format!("{rid}-3.wav.cvs"), Some(Own::Audio)),
            (format!("{rid}.opus.cvs"), Some(Own::Audio)),
            (format!("{rid}-1.mp3.cvs"), Some(Own::Audio)),
            (format!("c-1-{rid}.opus"), Some(Own::Audio)),
            (format!("c-1-{rid}-0-agent.mp3"), Some(Own::Audio)),
            (format!("{rid}.flac.cvs"), None),
            (format!("{rid}.opus.cvs.partial"), None),
            (format!("{rid}.meta.cvs"), Some(Own::Sidecar)),
            (format!("c-1-{rid}.wav"), Some(Own::Audio)),
            (format!("c-1-{rid}-0-customer.wav"), Some(Own::Audio)),
            (format!("c-1-{rid}.json"), Some(Own::Sidecar)),
            (format!("backup-copy-{rid}.wav.cvs"), None),
            (format!("{rid}-x.wav.cvs"), None),
            ("asterisk-export.json".to_string(), None),
            (format!("{rid}.wav.cvs.partial"), None),
            (format!("c-1-{rid}-0.wav"), None),
        ] {
            assert_eq!(own_file(&name, rid), own, "{name}");
        }
    }

    #[test]
    fn object_names_drop_a_plain_files_call_id() {
        let rid = "01KB0000000000000000000000";
        assert_eq!(object_name(&format!("call-7-{rid}.wav"), rid), format!("{rid}.wav"));
        assert_eq!(object_name(&format!("{rid}-1.wav.cvs"), rid), format!("{rid}-1.wav.cvs"));
    }
}
