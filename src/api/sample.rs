//! QA sampling: draw N recordings per agent (or queue, or team) from a filter, reproducibly.
//!
//! Each candidate's rank is SHA-256(seed ‖ recording id): the same seed over the same
//! recordings draws the same sample whatever order the catalog returns them in, and no one can
//! steer the draw without choosing the seed in the open (it is recorded with the sample).
//! Recordings drawn before are left out unless asked, so evaluators never score a call twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::catalog::{self, Query, ScopeFilter};

/// Why a sample cannot be drawn.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The request is wrong.
    #[error("{0}")]
    Query(String),
    /// The sampling database.
    #[error("QA sampling store {path}: {message}")]
    Store { path: String, message: String },
}

/// What a sample groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Agent,
    Queue,
    Team,
    /// One group: N recordings in all.
    All,
}

/// A draw.
#[derive(Debug, Clone)]
pub struct Request {
    pub query: Query,
    pub per: Per,
    pub count: u32,
    pub seed: String,
    pub include_sampled: bool,
    pub dry_run: bool,
    pub purpose: String,
}

/// Most recordings a draw looks through.
const MAX_CANDIDATES: usize = 200_000;
/// The catalog filters a draw takes (its `limit` and `cursor` are the draw's own business).
const FILTER_KEYS: [&str; 9] = ["call_id", "agent", "queue", "caller", "called", "direction", "from", "to", "metadata"];
/// Most metadata keys a filter may name.
const MAX_META_KEYS: usize = 20;

impl Request {
    /// From the API's JSON body: `{"filter": {…catalog filters…}, "per": "agent", "count": 5,
    /// "seed": "…", "include_sampled": false, "dry_run": false, "purpose": "…"}`.
    pub fn from_json(v: &Value) -> Result<Request, String> {
        for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
            if !["filter", "per", "count", "seed", "include_sampled", "dry_run", "purpose"].contains(&k.as_str()) {
                return Err(format!(
                    "unknown field {k:?}: filter, per, count, seed, include_sampled, dry_run, purpose"
                ));
            }
        }
        let mut filter = v["filter"].clone();
        if filter.is_null() {
            filter = json!({});
        }
        if !filter.is_object() {
            return Err("filter must be an object of catalog filters (agent, queue, from, to, metadata, …)".into());
        }
        if filter.get("limit").is_some() || filter.get("cursor").is_some() {
            return Err("filter takes no limit or cursor: count says how many are drawn".into());
        }
        // A mistyped key must not silently widen the draw to every recording.
        for k in filter.as_object().into_iter().flat_map(|o| o.keys()) {
            if !FILTER_KEYS.contains(&k.as_str()) {
                return Err(format!("unknown filter key {k:?}: the filter takes {}", FILTER_KEYS.join(", ")));
            }
        }
        if let Some(m) = filter["metadata"].as_object()
            && m.len() > MAX_META_KEYS
        {
            return Err(format!(
                "filter.metadata names {} keys: at most {MAX_META_KEYS} can be matched at once",
                m.len()
            ));
        }
        let query = Query::from_json(&filter).map_err(|e| e.to_string())?;
        let per = match v["per"].as_str() {
            None if v["per"].is_null() => Per::All,
            Some("agent") => Per::Agent,
            Some("queue") => Per::Queue,
            Some("team") => Per::Team,
            Some("all") => Per::All,
            _ => return Err(format!("per must be \"agent\", \"queue\", \"team\" or \"all\", not {}", v["per"])),
        };
        let count = v["count"]
            .as_u64()
            .filter(|c| (1..=1000).contains(c))
            .ok_or_else(|| format!("count must be 1 to 1000, not {}", v["count"]))? as u32;
        let seed = match &v["seed"] {
            Value::Null => ulid::Ulid::new().to_string(),
            Value::String(s) if !s.is_empty() && s.len() <= 128 => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("seed must be a string (1-128 characters) or a number, not {other}")),
        };
        let flag = |k: &str| -> Result<bool, String> {
            match &v[k] {
                Value::Null => Ok(false),
                Value::Bool(b) => Ok(*b),
                other => Err(format!("{k} must be true or false, not {other}")),
            }
        };
        let purpose = match &v["purpose"] {
            Value::Null => String::new(),
            Value::String(s) if s.len() <= 200 => s.clone(),
            _ => return Err("purpose must be a string of at most 200 characters".into()),
        };
        Ok(Request {
            query,
            per,
            count,
            seed,
            include_sampled: flag("include_sampled")?,
            dry_run: flag("dry_run")?,
            purpose,
        })
    }
}

/// The sampling store: `<data_dir>/qa.db` (which recordings were drawn, by whom, with what seed).
pub struct Samples {
    conn: Mutex<Connection>,
    path: String,
}

impl Samples {
    pub fn open(data_dir: &Path) -> Result<Samples, SampleError> {
        let path = data_dir.join("qa.db");
        let ps = path.display().to_string();
        let err = |e: rusqlite::Error| SampleError::Store { path: ps.clone(), message: e.to_string() };
        let existed = path.exists();
        let conn = Connection::open(&path).map_err(err)?;
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| SampleError::Store { path: ps.clone(), message: e.to_string() })?;
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS samples (
                sample_id TEXT PRIMARY KEY, drawn_at TEXT NOT NULL, drawn_by TEXT NOT NULL,
                seed TEXT NOT NULL, request TEXT NOT NULL, result TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS sampled (
                recording_id TEXT PRIMARY KEY, sample_id TEXT NOT NULL REFERENCES samples (sample_id));",
        )
        .map_err(err)?;
        // Added later: which user of that name drew it (stores from before have none, so their
        // samples match nobody).
        let has_uid: bool = conn
            .query_row("SELECT COUNT(*) FROM pragma_table_info('samples') WHERE name = 'drawn_by_uid'", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        if !has_uid {
            match conn.execute_batch("ALTER TABLE samples ADD COLUMN drawn_by_uid TEXT") {
                Ok(()) => {}
                // Another process added it in the meantime.
                Err(e) if e.to_string().contains("duplicate column") => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(Samples { conn: Mutex::new(conn), path: ps })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> SampleError + '_ {
        |e| SampleError::Store { path: self.path.clone(), message: e.to_string() }
    }

    /// Draws (and, unless a dry run, records) a sample from the catalog at `catalog_path`,
    /// within `scope`, for the user named `by` whose [`User::uid`](super::access::User::uid)
    /// is `by_uid` (which tells them from a later user of the same name).
    pub fn draw(
        &self,
        catalog_path: &Path,
        req: &Request,
        scope: Option<ScopeFilter>,
        by: &str,
        by_uid: &str,
    ) -> Result<Value, SampleError> {
        let mut q = req.query.clone();
        q.scope = scope;
        q.limit = Some(1000);
        let mut candidates = Vec::new();
        loop {
            let page = catalog::search(catalog_path, &q).map_err(|e| SampleError::Query(e.to_string()))?;
            candidates.extend(page.recordings.into_iter().filter(|s| s["state"] == "finished"));
            if candidates.len() > MAX_CANDIDATES {
                return Err(SampleError::Query(format!(
                    "the filter matches more than {MAX_CANDIDATES} recordings: narrow it (from, to, queue)"
                )));
            }
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut excluded = 0u64;
        if !req.include_sampled {
            let mut st = conn.prepare("SELECT 1 FROM sampled WHERE recording_id = ?1").map_err(self.err())?;
            let before = candidates.len();
            let mut kept = Vec::with_capacity(before);
            for c in candidates {
                if !st.exists(params![c["recording_id"].as_str().unwrap_or_default()]).map_err(self.err())? {
                    kept.push(c);
                }
            }
            excluded = (before - kept.len()) as u64;
            candidates = kept;
        }
        let considered = candidates.len();
        let mut groups: BTreeMap<String, Vec<([u8; 32], Value)>> = BTreeMap::new();
        for c in candidates {
            let key = group_key(&c, req.per);
            let rank = crate::seal::sha256(&[
                req.seed.as_bytes(),
                b"\n",
                c["recording_id"].as_str().unwrap_or_default().as_bytes(),
            ]);
            groups.entry(key).or_default().push((rank, c));
        }
        let sample_id = ulid::Ulid::new().to_string();
        let mut out_groups = Vec::new();
        let mut drawn_ids = Vec::new();
        for (key, mut members) in groups {
            let available = members.len();
            members.sort_by_key(|m| m.0);
            members.truncate(req.count as usize);
            let recs: Vec<Value> = members
                .iter()
                .map(|(_, s)| {
                    drawn_ids.push(s["recording_id"].as_str().unwrap_or_default().to_string());
                    json!({"recording_id": s["recording_id"], "call_id": s["call_id"], "started_at": s["started_at"],
                        "duration_ms": s["duration_ms"], "metadata": s["metadata"]})
                })
                .collect();
            out_groups.push(json!({"key": key, "available": available, "recordings": recs}));
        }
        let per = match req.per {
            Per::Agent => "agent",
            Per::Queue => "queue",
            Per::Team => "team",
            Per::All => "all",
        };
        let drawn_at = crate::engine::call::rfc3339(std::time::SystemTime::now());
        let result = json!({
            "sample_id": if req.dry_run { Value::Null } else { json!(sample_id) },
            "seed": req.seed, "per": per, "count": req.count, "dry_run": req.dry_run, "purpose": req.purpose,
            "drawn_at": drawn_at, "drawn_by": by, "considered": considered, "excluded_already_sampled": excluded,
            "groups": out_groups,
        });
        if !req.dry_run {
            let tx = conn.unchecked_transaction().map_err(self.err())?;
            tx.execute(
                "INSERT INTO samples (sample_id, drawn_at, drawn_by, drawn_by_uid, seed, request, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![sample_id, drawn_at, by, by_uid, req.seed, per, result.to_string()],
            )
            .map_err(self.err())?;
            for rid in &drawn_ids {
                tx.execute(
                    "INSERT OR IGNORE INTO sampled (recording_id, sample_id) VALUES (?1, ?2)",
                    params![rid, sample_id],
                )
                .map_err(self.err())?;
            }
            tx.commit().map_err(self.err())?;
        }
        Ok(result)
    }

    /// Who drew a sample: the user's name and uid, as given to [`Samples::draw`] (the uid is
    /// empty for samples drawn before it was recorded). `None`: no such sample. A caller hands
    /// a stored sample back only to the same name *and* uid.
    pub fn drawn_by_identity(&self, sample_id: &str) -> Result<Option<(String, String)>, SampleError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT drawn_by, drawn_by_uid FROM samples WHERE sample_id = ?1", params![sample_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default()))
        })
        .optional()
        .map_err(self.err())
    }

    /// A sample drawn before, as [`Samples::draw`] returned it. Its recordings are as they were
    /// at the draw: the caller checks each against the asker's scope now ([`retain_recordings`]).
    pub fn get(&self, sample_id: &str) -> Result<Option<Value>, SampleError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn.prepare("SELECT result FROM samples WHERE sample_id = ?1").map_err(self.err())?;
        let mut rows = st.query_map(params![sample_id], |r| r.get::<_, String>(0)).map_err(self.err())?;
        match rows.next() {
            Some(r) => Ok(serde_json::from_str(&r.map_err(self.err())?).ok()),
            None => Ok(None),
        }
    }
}

/// Keeps, in every group of a sample, only the recordings (`{recording_id, call_id, metadata, …}`)
/// for which `keep` is true, e.g. those still in the asker's scope; `available` is left as it
/// was at the draw.
pub fn retain_recordings(sample: &mut Value, mut keep: impl FnMut(&Value) -> bool) {
    for g in sample["groups"].as_array_mut().into_iter().flatten() {
        if let Some(recs) = g["recordings"].as_array_mut() {
            recs.retain(&mut keep);
        }
    }
}

fn group_key(s: &Value, per: Per) -> String {
    let m = &s["metadata"];
    let text = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| m.get(*k).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .unwrap_or_else(|| "(none)".into())
    };
    match per {
        Per::Agent => text(&["agent", "agent_id"]),
        Per::Queue => text(&["queue"]),
        Per::Team => text(&["team"]),
        Per::All => "all".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(dir: &Path, n: u32) {
        let mut c = catalog::Catalog::open(&catalog::path_in(dir)).unwrap();
        for i in 0..n {
            let rid = ulid::Ulid::from_parts(1_700_000_000_000 + u64::from(i), u128::from(i)).to_string();
            c.upsert(&json!({"recording_id": rid, "call_id": format!("c{i}"), "started_at": format!("2026-11-{:02}T10:00:00.000Z", 1 + i % 28),
                "state": if i == 0 { "recording" } else { "finished" },
                "metadata": {"agent": format!("agent{}", i % 3), "queue": if i % 2 == 0 { "sales" } else { "support" }}}))
            .unwrap();
        }
    }

    fn ids(v: &Value) -> Vec<String> {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| {
                g["recordings"].as_array().unwrap().iter().map(|r| r["recording_id"].as_str().unwrap().to_string())
            })
            .collect()
    }

    #[test]
    fn draws_per_agent_reproducibly_and_excludes_what_was_drawn() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 31);
        let s = Samples::open(dir.path()).unwrap();
        let cat = catalog::path_in(dir.path());
        let req = |body: Value| Request::from_json(&body).unwrap();
        let preview = s
            .draw(&cat, &req(json!({"per": "agent", "count": 2, "seed": "s1", "dry_run": true})), None, "q", "u1")
            .unwrap();
        assert_eq!(preview["groups"].as_array().unwrap().len(), 3);
        assert_eq!(ids(&preview).len(), 6);
        assert_eq!(preview["considered"], 30, "the unfinished recording is never drawn");
        let again = s
            .draw(&cat, &req(json!({"per": "agent", "count": 2, "seed": "s1", "dry_run": true})), None, "q", "u1")
            .unwrap();
        assert_eq!(ids(&preview), ids(&again), "same seed, same sample");
        let other = s
            .draw(&cat, &req(json!({"per": "agent", "count": 2, "seed": "s2", "dry_run": true})), None, "q", "u1")
            .unwrap();
        assert_ne!(ids(&preview), ids(&other));
        let real = s.draw(&cat, &req(json!({"per": "agent", "count": 2, "seed": "s1"})), None, "q", "u1").unwrap();
        assert_eq!(ids(&real), ids(&preview), "a dry run previews the real draw");
        let next = s.draw(&cat, &req(json!({"per": "agent", "count": 2, "seed": "s1"})), None, "q", "u1").unwrap();
        assert_eq!(next["excluded_already_sampled"], 6);
        assert!(ids(&next).iter().all(|id| !ids(&real).contains(id)), "nothing is drawn twice");
        let incl = s
            .draw(
                &cat,
                &req(json!({"per": "agent", "count": 2, "seed": "s1", "include_sampled": true, "dry_run": true})),
                None,
                "q",
                "u1",
            )
            .unwrap();
        assert_eq!(ids(&incl), ids(&real));
        let got = s.get(real["sample_id"].as_str().unwrap()).unwrap().unwrap();
        assert_eq!(ids(&got), ids(&real));
        // Scope and filters narrow the candidates.
        let scoped = s
            .draw(
                &cat,
                &req(json!({"count": 100, "dry_run": true, "include_sampled": true})),
                Some(ScopeFilter { queues: vec!["sales".into()], teams: vec![] }),
                "q",
                "u1",
            )
            .unwrap();
        assert_eq!(scoped["considered"], 15);
        let filtered = s
            .draw(
                &cat,
                &req(json!({"filter": {"agent": "agent1"}, "count": 100, "dry_run": true, "include_sampled": true})),
                None,
                "q",
                "u1",
            )
            .unwrap();
        assert!(ids(&filtered).len() == 10);
    }

    fn meta(n: usize) -> Value {
        Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect())
    }

    #[test]
    fn every_filter_key_and_twenty_metadata_keys_are_taken() {
        let mut filter = json!({"call_id": "c", "agent": "a", "queue": "q", "caller": "1", "called": "2",
            "direction": "inbound", "from": "2026-12-01", "to": "2026-12-02"});
        filter["metadata"] = meta(20);
        let r = Request::from_json(&json!({"count": 1, "filter": filter})).unwrap();
        assert_eq!(r.query.meta.len(), 20);
        assert_eq!(r.query.agent.as_deref(), Some("a"));
    }

    #[test]
    fn a_sample_remembers_which_user_of_a_name_drew_it() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 5);
        let s = Samples::open(dir.path()).unwrap();
        let cat = catalog::path_in(dir.path());
        let drawn =
            s.draw(&cat, &Request::from_json(&json!({"count": 2, "seed": "x"})).unwrap(), None, "quinn", "uid-a");
        let id = drawn.unwrap()["sample_id"].as_str().unwrap().to_string();
        assert_eq!(s.drawn_by_identity(&id).unwrap(), Some(("quinn".into(), "uid-a".into())));
        assert_eq!(s.drawn_by_identity("01NOSUCHSAMPLE").unwrap(), None);
        drop(s);
        // Reopened (the column already there), still known.
        let s = Samples::open(dir.path()).unwrap();
        assert_eq!(s.drawn_by_identity(&id).unwrap(), Some(("quinn".into(), "uid-a".into())));
        // Filtering the stored sample's recordings.
        let mut got = s.get(&id).unwrap().unwrap();
        let first = ids(&got)[0].clone();
        retain_recordings(&mut got, |r| r["recording_id"] == first.as_str());
        assert_eq!(ids(&got), [first]);
    }

    #[test]
    fn a_store_from_before_uids_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("qa.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE samples (sample_id TEXT PRIMARY KEY, drawn_at TEXT NOT NULL, drawn_by TEXT NOT NULL,
                    seed TEXT NOT NULL, request TEXT NOT NULL, result TEXT NOT NULL);
                 INSERT INTO samples VALUES ('01OLD', '2026-01-01T00:00:00.000Z', 'quinn', 's', 'all', '{}');",
            )
            .unwrap();
        }
        let s = Samples::open(dir.path()).unwrap();
        assert_eq!(s.drawn_by_identity("01OLD").unwrap(), Some(("quinn".into(), String::new())));
        fill(dir.path(), 3);
        let cat = catalog::path_in(dir.path());
        let drawn = s.draw(&cat, &Request::from_json(&json!({"count": 1})).unwrap(), None, "quinn", "uid-b").unwrap();
        let id = drawn["sample_id"].as_str().unwrap();
        assert_eq!(s.drawn_by_identity(id).unwrap(), Some(("quinn".into(), "uid-b".into())));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (body, says) in [
            (json!({"count": 0}), "count"),
            (json!({}), "count"),
            (json!({"count": 5, "per": "moon"}), "per"),
            (json!({"count": 5, "seed": ""}), "seed"),
            (json!({"count": 5, "filter": {"from": "yesterday"}}), "from"),
            (json!({"count": 5, "filter": {"limit": 3}}), "limit"),
            (json!({"count": 5, "colour": "red"}), "colour"),
            (json!({"count": 5, "dry_run": "yes"}), "dry_run"),
            (json!({"count": 5, "filter": {"agnet": "bob"}}), "\"agnet\""),
            (json!({"count": 5, "filter": {"agnet": "bob"}}), "call_id, agent, queue"),
            (json!({"count": 5, "filter": {"scope": {"all": true}}}), "scope"),
            (json!({"count": 5, "filter": {"metadata": meta(21)}}), "at most 20"),
        ] {
            let e = Request::from_json(&body).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
    }
}
