//! Retention: policies by metadata, legal holds that override them, erasure on request, and the
//! deletion log.
//!
//! Holds live in the store (`PREFIX/_holds/<kind>/<hex of the value>.json`, in every target),
//! not in one recorder's catalog, so every recorder sharing the store honours them. A sweep or an
//! erasure reads the holds first and deletes nothing when it cannot. Every deletion is logged,
//! as one JSON line in `<data_dir>/deletions.log` (fsynced) and as an object
//! `PREFIX/_deletions/YYYY/MM/DD/<id>.json` in the primary; neither holds a caller's number.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{Role, Storage, StorageError, Target};
use crate::config::RetentionConfig;
use crate::seal::format::hex;

/// What a hold covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// One recording, by recording id.
    Recording,
    /// Every recording of a call, by call id (later ones too).
    Call,
}

impl HoldKind {
    pub fn name(self) -> &'static str {
        match self {
            HoldKind::Recording => "recording",
            HoldKind::Call => "call",
        }
    }

    pub fn parse(s: &str) -> Option<HoldKind> {
        match s {
            "recording" => Some(HoldKind::Recording),
            "call" => Some(HoldKind::Call),
            _ => None,
        }
    }
}

/// A legal hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub kind: HoldKind,
    pub value: String,
    pub reason: String,
    pub placed_at: String,
    pub placed_by: String,
}

impl Hold {
    pub fn to_json(&self) -> Value {
        json!({"kind": self.kind.name(), "value": self.value, "reason": self.reason,
            "placed_at": self.placed_at, "placed_by": self.placed_by})
    }

    fn from_json(v: &Value) -> Option<Hold> {
        Some(Hold {
            kind: HoldKind::parse(v["kind"].as_str()?)?,
            value: v["value"].as_str()?.to_string(),
            reason: v["reason"].as_str().unwrap_or_default().to_string(),
            placed_at: v["placed_at"].as_str().unwrap_or_default().to_string(),
            placed_by: v["placed_by"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Whether it covers a recording (by its summary).
    pub fn covers(&self, summary: &Value) -> bool {
        let field = match self.kind {
            HoldKind::Recording => "recording_id",
            HoldKind::Call => "call_id",
        };
        summary[field].as_str() == Some(self.value.as_str())
    }
}

/// Most characters a hold's or an erasure's reason may have.
pub const MAX_REASON_CHARS: usize = 500;

/// Whether `r` can be a hold's or an erasure's reason: 1 to 500 characters, not only spaces, and
/// no control characters or line separators (it is printed on one line by `hold list` and kept
/// in the deletion log, where a newline could pass for another entry). The error says so.
pub fn check_reason(r: &str) -> Result<(), String> {
    let n = r.chars().count();
    if r.trim().is_empty() {
        return Err("the reason must say why (a case or ticket reference)".into());
    }
    if n > MAX_REASON_CHARS {
        return Err(format!("the reason has {n} characters: at most {MAX_REASON_CHARS}"));
    }
    if let Some(c) = r.chars().find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err(format!("the reason must be one line without control characters (it has {c:?})"));
    }
    Ok(())
}

fn hold_key(t: &Target, kind: HoldKind, value: &str) -> object_store::path::Path {
    // Hex: any call id is a valid object name, and none is read from the key.
    t.key(&format!("_holds/{}/{}.json", kind.name(), hex(value.as_bytes())))
}

/// What placing a hold did.
#[derive(Debug)]
pub enum Placed {
    /// Written to every target.
    Placed,
    /// One was already there (in the primary): kept as it was, never overwritten.
    AlreadyHeld(Hold),
    /// Written to the targets named, not to the others (their error): the hold is in force
    /// (holds are read from every target, and deleting needs them all readable).
    Partly { written: Vec<&'static str>, failed: Vec<(&'static str, String)> },
}

/// Places a hold in every target, unless one is already there.
pub fn place_hold(storage: &Storage, hold: &Hold) -> Result<Placed, StorageError> {
    let body = serde_json::to_vec_pretty(&hold.to_json()).unwrap_or_default();
    storage.block_on(async {
        let key = hold_key(&storage.primary, hold.kind, &hold.value);
        match storage.primary.get(&key).await {
            Ok(b) => {
                if let Some(h) = serde_json::from_slice::<Value>(&b).ok().as_ref().and_then(Hold::from_json) {
                    // Completed where an earlier placement could not reach (a backup that was down).
                    for t in storage.targets().skip(1) {
                        let k = hold_key(t, hold.kind, &hold.value);
                        let done = match t.exists(&k).await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => t.put(&k, b.clone()).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = done {
                            return Ok(Placed::Partly {
                                written: vec!["primary"],
                                failed: vec![(t.role.name(), e.to_string())],
                            });
                        }
                    }
                    return Ok(Placed::AlreadyHeld(h));
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let (mut written, mut failed) = (Vec::new(), Vec::new());
        for t in storage.targets() {
            match t.put(&hold_key(t, hold.kind, &hold.value), body.clone()).await {
                Ok(()) => written.push(t.role.name()),
                Err(e) if written.is_empty() => return Err(e),
                Err(e) => failed.push((t.role.name(), e.to_string())),
            }
        }
        Ok(if failed.is_empty() { Placed::Placed } else { Placed::Partly { written, failed } })
    })
}

/// Releases a hold from every target; `false` when there was none.
pub fn release_hold(storage: &Storage, kind: HoldKind, value: &str) -> Result<bool, StorageError> {
    storage.block_on(async {
        let key = hold_key(&storage.primary, kind, value);
        let existed = storage.primary.exists(&key).await?.is_some();
        for t in storage.targets() {
            t.delete(&hold_key(t, kind, value)).await?;
        }
        Ok(existed)
    })
}

/// Every hold: those of the primary and of the backup together (a hold written to one while
/// the other was down still counts).
pub fn list_holds(storage: &Storage) -> Result<Vec<Hold>, StorageError> {
    storage.block_on(async {
        let mut out: Vec<Hold> = Vec::new();
        for t in storage.targets() {
            for m in t.list("_holds").await? {
                let bytes = match t.get(&m.location).await {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                if let Some(h) = serde_json::from_slice::<Value>(&bytes).ok().as_ref().and_then(Hold::from_json)
                    && !out.iter().any(|o| o.kind == h.kind && o.value == h.value)
                {
                    out.push(h);
                }
            }
        }
        Ok(out)
    })
}

/// The policy that applies to a recording: (its name, days). `None`: kept forever.
pub fn policy_for(cfg: &RetentionConfig, summary: &Value) -> Option<(String, u64)> {
    let meta = &summary["metadata"];
    for p in &cfg.policy {
        let all = p.matches.iter().all(|(k, v)| {
            let got = &meta[k.as_str()];
            // A number or a boolean matches its text: `tier = "1"` matches `"tier": 1`.
            match got {
                Value::String(s) => s == v,
                Value::Null => false,
                other => serde_json::from_str::<Value>(v).is_ok_and(|want| want == *other),
            }
        });
        if all {
            return Some((p.name.clone(), p.days));
        }
    }
    (cfg.default_days > 0).then(|| ("default".to_string(), cfg.default_days))
}

/// Whether a recording's retention has run out at `now`: the policy that says so.
pub fn expired(cfg: &RetentionConfig, summary: &Value, now: SystemTime) -> Option<(String, u64)> {
    let (name, days) = policy_for(cfg, summary)?;
    let cutoff = crate::engine::call::rfc3339(now.checked_sub(Duration::from_secs(days * 86_400))?);
    let started = summary["started_at"].as_str()?;
    (started < cutoff.as_str()).then_some((name, days))
}

/// Why a recording was deleted.
#[derive(Debug, Clone)]
pub struct Reason {
    /// "retention" or "erasure".
    pub kind: &'static str,
    /// The policy (`sales: 90 days`) or the request's reference.
    pub detail: String,
}

/// Deletes a stored recording from every target (audio first, the metadata object last, so a
/// deletion cut short is found again by a rebuild and finished), then logs it. Returns the log
/// entry.
pub fn delete_recording(
    storage: &Storage,
    data_dir: &Path,
    summary: &Value,
    reason: &Reason,
) -> Result<Value, StorageError> {
    let rid = summary["recording_id"].as_str().unwrap_or_default();
    let started = summary["started_at"].as_str().unwrap_or_default();
    let mut deleted = serde_json::Map::new();
    // Where it landed must be where the configuration points: after a change of target, a
    // deletion against the new one would find nothing there and report success.
    for role in [Role::Primary, Role::Backup] {
        let Some(stored_in) = summary["stored"][role.name()]["target"].as_str() else { continue };
        let configured = storage.targets().find(|t| t.role == role).map(|t| t.describe.clone());
        if configured.as_deref() != Some(stored_in) {
            return Err(StorageError::Elsewhere {
                recording_id: rid.to_string(),
                role: role.name(),
                stored_in: stored_in.to_string(),
                configured: configured.unwrap_or_else(|| "not configured".into()),
            });
        }
    }
    // Where each target has it, decided first: the log entry names what is deleted, and is
    // written before anything goes, so a deletion cut short is known and finished by the next
    // `catalog rebuild` (never a deleted recording that no log shows).
    let mut plan: Vec<(&Target, Vec<object_store::path::Path>)> = Vec::new();
    storage.block_on(async {
        for t in storage.targets() {
            // What the catalog says landed, and what the summary says must be there: a catalog
            // entry made after a crash may name fewer objects than the store holds.
            let mut keys: Vec<object_store::path::Path> = summary["stored"][t.role.name()]["objects"]
                .as_array()
                .map(|o| o.iter().filter_map(|o| o["key"].as_str()).map(object_store::path::Path::from).collect())
                .unwrap_or_default();
            for name in expected_names(summary) {
                let k = t.recording_key(started, &name);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            // The metadata object last: while it is there, a rebuild finds the recording.
            keys.sort_by_key(|k| k.as_ref().ends_with(".meta.cvs") || k.as_ref().ends_with(".json"));
            deleted.insert(t.role.name().into(), json!(keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()));
            plan.push((t, keys));
        }
        Ok::<(), StorageError>(())
    })?;
    let entry = json!({
        "deleted_at": crate::engine::call::rfc3339(SystemTime::now()),
        "recording_id": rid,
        "call_id": summary["call_id"],
        "started_at": started,
        "reason": reason.kind,
        "detail": reason.detail,
        "objects": deleted,
        "by": actor(),
    });
    log_deletion(storage, data_dir, &entry)?;
    storage.block_on(async {
        for (t, keys) in &plan {
            for k in keys {
                t.delete(k).await?;
            }
        }
        Ok::<(), StorageError>(())
    })?;
    Ok(entry)
}

/// Who deletes: `user@host` (the daemon's, or the operator's running the command).
pub fn actor() -> String {
    use std::os::unix::fs::MetadataExt;
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// The object names a recording has, by its summary: its audio (one file, or one per leg with
/// the separate layout) and its metadata object.
fn expected_names(summary: &Value) -> Vec<String> {
    let rid = summary["recording_id"].as_str().unwrap_or_default();
    let sealed = summary["encrypted"].as_bool().unwrap_or(true);
    // Recordings from before formats existed say none: WAV.
    let ext = summary["format"].as_str().and_then(crate::output::encode::Format::parse).unwrap_or_default().ext();
    let mut out = Vec::new();
    if summary["layout"].as_str() == Some("separate") {
        for (i, leg) in summary["legs"].as_array().into_iter().flatten().enumerate() {
            out.push(if sealed {
                format!("{rid}-{i}.{ext}.cvs")
            } else {
                format!("{rid}-{i}-{}.{ext}", crate::import::sanitise(leg["label"].as_str().unwrap_or_default()))
            });
        }
    } else {
        out.push(if sealed { format!("{rid}.{ext}.cvs") } else { format!("{rid}.{ext}") });
    }
    out.push(format!("{rid}.{}", if sealed { "meta.cvs" } else { "json" }));
    out
}

/// Appends a deletion to `<data_dir>/deletions.log` (fsynced) and writes it to the primary.
pub fn log_deletion(storage: &Storage, data_dir: &Path, entry: &Value) -> Result<(), StorageError> {
    let path = deletion_log_path(data_dir);
    let io = |e| StorageError::Io { action: "cannot append to", path: path.clone(), source: e };
    use std::os::unix::fs::OpenOptionsExt;
    // It names call ids: readable by the daemon's user only, like the catalog.
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io)?;
    f.write_all(format!("{entry}\n").as_bytes()).and_then(|()| f.sync_all()).map_err(io)?;
    let at = entry["deleted_at"].as_str().unwrap_or_default();
    let key = storage.primary.key(&format!("_deletions/{}/{}.json", super::date_path(at), ulid::Ulid::new()));
    storage.block_on(storage.primary.put(&key, serde_json::to_vec_pretty(entry).unwrap_or_default()))
}

/// `<data_dir>/deletions.log`.
pub fn deletion_log_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("deletions.log")
}

/// What a sweep or an erasure did.
#[derive(Debug, Default)]
pub struct Report {
    /// Log entries of the recordings deleted (or that would be, with a dry run).
    pub deleted: Vec<Value>,
    /// (recording id, the hold) of those kept by a hold.
    pub held: Vec<(String, Hold)>,
    /// Recordings still in the spool, not yet stored: (recording id).
    pub pending: Vec<String>,
    /// (recording id, error) of those whose deletion failed.
    pub failed: Vec<(String, String)>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "deleted": self.deleted,
            "held": self.held.iter().map(|(r, h)| json!({"recording_id": r, "hold": h.to_json()})).collect::<Vec<_>>(),
            "pending": self.pending,
            "failed": self.failed.iter().map(|(r, e)| json!({"recording_id": r, "error": e})).collect::<Vec<_>>(),
        })
    }
}

/// Deletes `candidates` (summaries from the catalog) unless held, telling `removed` of each so
/// the catalog drops it. Recordings not yet stored are reported pending, never deleted here.
pub fn delete_unless_held(
    storage: &Storage,
    data_dir: &Path,
    candidates: Vec<(Value, Reason)>,
    dry_run: bool,
    removed: &mut dyn FnMut(&str),
) -> Result<Report, StorageError> {
    // Holds first: if they cannot be read, nothing is deleted.
    let holds = list_holds(storage)?;
    let mut report = Report::default();
    for (summary, reason) in candidates {
        let rid = summary["recording_id"].as_str().unwrap_or_default().to_string();
        if let Some(h) = holds.iter().find(|h| h.covers(&summary)) {
            report.held.push((rid, h.clone()));
            continue;
        }
        if summary["stored"].is_null() {
            report.pending.push(rid);
            continue;
        }
        if dry_run {
            report.deleted.push(json!({"recording_id": rid, "call_id": summary["call_id"],
                "started_at": summary["started_at"], "reason": reason.kind, "detail": reason.detail}));
            continue;
        }
        match delete_recording(storage, data_dir, &summary, &reason) {
            Ok(entry) => {
                removed(&rid);
                report.deleted.push(entry);
            }
            Err(e) => report.failed.push((rid, e.to_string())),
        }
    }
    Ok(report)
}

/// One retention sweep over the catalog at `catalog`: every stored recording whose policy has
/// run out, unless held. Read a page at a time, from the oldest, and only as far as the
/// shortest retention reaches.
pub fn sweep(
    cfg: &RetentionConfig,
    storage: &Storage,
    data_dir: &Path,
    catalog: &Path,
    now: SystemTime,
    dry_run: bool,
    removed: &mut dyn FnMut(&str),
) -> Result<Report, String> {
    let shortest = cfg.policy.iter().map(|p| p.days).chain((cfg.default_days > 0).then_some(cfg.default_days)).min();
    let Some(days) = shortest else { return Ok(Report::default()) };
    let Some(reach) = now.checked_sub(Duration::from_secs(days * 86_400)) else { return Ok(Report::default()) };
    let before = crate::engine::call::rfc3339(reach);
    let mut total = Report::default();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = crate::catalog::stored_before(catalog, &before, after.as_ref(), 1000).map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some((
            last["started_at"].as_str().unwrap_or_default().to_string(),
            last["recording_id"].as_str().unwrap_or_default().to_string(),
        ));
        let full = page.len() == 1000;
        let candidates: Vec<(Value, Reason)> = page
            .into_iter()
            .filter_map(|s| {
                let (name, days) = expired(cfg, &s, now)?;
                Some((s, Reason { kind: "retention", detail: format!("policy {name}: {days} days") }))
            })
            .collect();
        if !candidates.is_empty() {
            let r = delete_unless_held(storage, data_dir, candidates, dry_run, removed).map_err(|e| e.to_string())?;
            total.deleted.extend(r.deleted);
            total.held.extend(r.held);
            total.pending.extend(r.pending);
            total.failed.extend(r.failed);
        }
        if !full {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetentionPolicy;

    fn cfg() -> RetentionConfig {
        RetentionConfig {
            enforce: true,
            default_days: 365,
            interval_s: 3600,
            policy: vec![
                RetentionPolicy {
                    name: "sales".into(),
                    matches: [("queue".to_string(), "sales".to_string())].into(),
                    days: 90,
                },
                RetentionPolicy {
                    name: "vip".into(),
                    matches: [("queue".to_string(), "sales".to_string()), ("tier".to_string(), "1".to_string())].into(),
                    days: 3650,
                },
            ],
        }
    }

    #[test]
    fn the_first_matching_policy_wins_and_the_default_covers_the_rest() {
        let c = cfg();
        let s = |meta: Value| json!({"metadata": meta, "started_at": "2026-01-01T00:00:00.000Z"});
        assert_eq!(policy_for(&c, &s(json!({"queue": "sales"}))), Some(("sales".into(), 90)));
        // Policies are tried in order: the broader one first wins.
        assert_eq!(policy_for(&c, &s(json!({"queue": "sales", "tier": 1}))), Some(("sales".into(), 90)));
        assert_eq!(policy_for(&c, &s(json!({"queue": "support"}))), Some(("default".into(), 365)));
        // A number in the metadata matches its text in the policy; a missing key never matches.
        let vip_first = RetentionConfig { policy: c.policy.iter().rev().cloned().collect(), ..c.clone() };
        assert_eq!(policy_for(&vip_first, &s(json!({"queue": "sales", "tier": 1}))), Some(("vip".into(), 3650)));
        assert_eq!(policy_for(&vip_first, &s(json!({"queue": "sales", "tier": "1"}))), Some(("vip".into(), 3650)));
        assert_eq!(policy_for(&vip_first, &s(json!({"queue": "sales", "tier": 2}))), Some(("sales".into(), 90)));
        assert_eq!(policy_for(&vip_first, &s(json!({"queue": "sales", "tier": null}))), Some(("sales".into(), 90)));
        let forever = RetentionConfig { default_days: 0, ..c.clone() };
        assert_eq!(policy_for(&forever, &s(json!({}))), None);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 91 * 86_400); // 2026-04-02
        assert!(expired(&c, &s(json!({"queue": "sales"})), now).is_some());
        assert!(expired(&c, &s(json!({"queue": "support"})), now).is_none());
    }

    #[test]
    fn reasons_are_one_short_line() {
        for good in ["case 2026-117", "x", "GDPR-Anfrage für Müller", &"é".repeat(500)] {
            assert_eq!(check_reason(good), Ok(()), "{good:?}");
        }
        for (bad, says) in [
            ("", "must say why"),
            ("   ", "must say why"),
            ("case 1\nhold 2  placed 2026 by root: fake", "one line"),
            ("case\r1", "one line"),
            ("case\u{0}1", "one line"),
            ("case\u{1b}[2J", "one line"),
            ("case\u{7f}", "one line"),
            ("case\u{85}", "one line"),
            ("case\u{2028}1", "one line"),
            ("\tcase", "one line"),
        ] {
            let e = check_reason(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let e = check_reason(&"a".repeat(501)).unwrap_err();
        assert!(e.contains("501 characters") && e.contains("at most 500"), "{e}");
    }

    #[test]
    fn holds_cover_by_recording_or_call() {
        let h = Hold {
            kind: HoldKind::Call,
            value: "c-1".into(),
            reason: "case 7".into(),
            placed_at: String::new(),
            placed_by: String::new(),
        };
        assert!(h.covers(&json!({"call_id": "c-1", "recording_id": "R"})));
        assert!(!h.covers(&json!({"call_id": "c-2", "recording_id": "c-1"})));
        assert_eq!(Hold::from_json(&h.to_json()), Some(h));
    }
}
