//! The recording catalog: a SQLite database (WAL) in the data directory, filled as recordings
//! finish, searched by call id, agent, queue, numbers, direction, time range and free metadata
//! keys. One writer thread owns the writing connection; searches open their own read-only
//! connections (WAL lets them read while it writes).
//!
//! The catalog holds personal data in the clear (caller numbers, agent names, the ACD's
//! metadata): the file is created 0600 in the data directory, and `docs/catalog.md` says how to
//! protect it. It can always be rebuilt from the recordings' sealed metadata
//! (`callvault catalog rebuild`), so it is an index, never the only copy of anything.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};

/// Schema version written in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// Why the catalog cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {}: {source}", path.display())]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("catalog {}: schema version {found} is newer than this callvault's ({SCHEMA_VERSION}); upgrade callvault or `callvault catalog rebuild` into a new file", path.display())]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("catalog {}: cannot set its mode to 0600: {source}", path.display())]
    Mode { path: PathBuf, source: std::io::Error },
    #[error("invalid search: {0}")]
    Query(String),
}

/// The catalog's file in a data directory.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("catalog.sqlite")
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
    move |source| CatalogError::Sqlite { path: path.to_path_buf(), source }
}

/// The writing side.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl Catalog {
    /// Opens (creating if need be, mode 0600) the catalog for writing.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let existed = path.exists();
        let conn = Connection::open(path).map_err(sql(path))?;
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| CatalogError::Mode { path: path.to_path_buf(), source })?;
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql(path))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql(path))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql(path))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql(path))?;
        if version > SCHEMA_VERSION {
            return Err(CatalogError::NewerSchema { path: path.to_path_buf(), found: version });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS recordings (
                recording_id TEXT PRIMARY KEY,
                call_id TEXT,
                started_at TEXT NOT NULL,
                duration_ms INTEGER,
                state TEXT,
                end_reason TEXT,
                agent TEXT,
                queue TEXT,
                caller TEXT,
                called TEXT,
                direction TEXT,
                encrypted INTEGER,
                summary TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS recordings_time ON recordings (started_at, recording_id);
            CREATE INDEX IF NOT EXISTS recordings_call ON recordings (call_id);
            CREATE INDEX IF NOT EXISTS recordings_agent ON recordings (agent, started_at);
            CREATE INDEX IF NOT EXISTS recordings_queue ON recordings (queue, started_at);
            CREATE INDEX IF NOT EXISTS recordings_caller ON recordings (caller);
            CREATE INDEX IF NOT EXISTS recordings_called ON recordings (called);
            CREATE TABLE IF NOT EXISTS metadata (
                recording_id TEXT NOT NULL REFERENCES recordings (recording_id) ON DELETE CASCADE,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (recording_id, key)
            );
            CREATE INDEX IF NOT EXISTS metadata_kv ON metadata (key, value);",
        )
        .map_err(sql(path))?;
        if version < 2 {
            // Version 2: where each recording landed (`stored`, JSON per target) and its
            // metadata object's key, which the store's poller looks up.
            let cols: Vec<String> = conn
                .prepare("SELECT name FROM pragma_table_info('recordings')")
                .and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect())
                .map_err(sql(path))?;
            for (col, ty) in [("stored", "TEXT"), ("meta_key", "TEXT")] {
                if !cols.iter().any(|c| c == col) {
                    conn.execute_batch(&format!("ALTER TABLE recordings ADD COLUMN {col} {ty}")).map_err(sql(path))?;
                }
            }
            conn.execute_batch(
                "CREATE INDEX IF NOT EXISTS recordings_meta_key ON recordings (meta_key);
                 PRAGMA user_version = 2;",
            )
            .map_err(sql(path))?;
        }
        Ok(Catalog { conn, path: path.to_path_buf() })
    }

    /// Records where a recording landed (`stored`: per target, its objects; the primary's
    /// last object is the metadata object). `false` when the catalog does not have it yet.
    pub fn set_stored(&mut self, recording_id: &str, stored: &Value) -> Result<bool, CatalogError> {
        let meta_key = stored["primary"]["objects"].as_array().and_then(|o| o.last()).and_then(|o| o["key"].as_str());
        let n = self
            .conn
            .execute(
                "UPDATE recordings SET stored = ?2, meta_key = ?3 WHERE recording_id = ?1",
                params![recording_id, stored.to_string(), meta_key],
            )
            .map_err(sql(&self.path))?;
        Ok(n > 0)
    }

    /// Removes a recording (deleted by retention or erasure).
    pub fn remove(&mut self, recording_id: &str) -> Result<(), CatalogError> {
        self.conn
            .execute("DELETE FROM metadata WHERE recording_id = ?1", params![recording_id])
            .map_err(sql(&self.path))?;
        self.conn
            .execute("DELETE FROM recordings WHERE recording_id = ?1", params![recording_id])
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Adds or replaces a recording from its summary (the sidecar's content). A summary without
    /// a recording id or start time is refused.
    pub fn upsert(&mut self, summary: &Value) -> Result<(), CatalogError> {
        let rid = summary["recording_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CatalogError::Query("summary without recording_id".into()))?;
        let started = summary["started_at"].as_str().unwrap_or_default();
        let meta = summary["metadata"].as_object().cloned().unwrap_or_default();
        let text = |v: Option<&Value>| v.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
        let well_known = |keys: &[&str]| keys.iter().find_map(|k| text(meta.get(*k)));
        let tx = self.conn.transaction().map_err(sql(&self.path))?;
        tx.execute(
            "INSERT INTO recordings (recording_id, call_id, started_at, duration_ms, state, end_reason, agent, queue,
                caller, called, direction, encrypted, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (recording_id) DO UPDATE SET call_id = excluded.call_id, started_at = excluded.started_at,
                duration_ms = excluded.duration_ms, state = excluded.state, end_reason = excluded.end_reason,
                agent = excluded.agent, queue = excluded.queue, caller = excluded.caller, called = excluded.called,
                direction = excluded.direction, encrypted = excluded.encrypted, summary = excluded.summary",
            params![
                rid,
                summary["call_id"].as_str(),
                started,
                summary["duration_ms"].as_u64().map(|d| d as i64),
                summary["state"].as_str(),
                summary["end_reason"].as_str(),
                well_known(&["agent", "agent_id"]),
                well_known(&["queue"]),
                well_known(&["caller", "caller_number", "from"]),
                well_known(&["called", "called_number", "to"]),
                well_known(&["direction"]),
                summary["encrypted"].as_bool().map(i64::from),
                summary.to_string(),
            ],
        )
        .map_err(sql(&self.path))?;
        tx.execute("DELETE FROM metadata WHERE recording_id = ?1", params![rid]).map_err(sql(&self.path))?;
        for (k, v) in &meta {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            tx.execute("INSERT INTO metadata (recording_id, key, value) VALUES (?1, ?2, ?3)", params![rid, k, v])
                .map_err(sql(&self.path))?;
        }
        tx.commit().map_err(sql(&self.path))
    }

    /// Recordings in the catalog.
    pub fn count(&self) -> Result<u64, CatalogError> {
        self.conn
            .query_row("SELECT count(*) FROM recordings", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(sql(&self.path))
    }
}

/// A search. Every filter given must match; text filters are exact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub call_id: Option<String>,
    pub agent: Option<String>,
    pub queue: Option<String>,
    pub caller: Option<String>,
    pub called: Option<String>,
    pub direction: Option<String>,
    /// `started_at >= from` (RFC 3339 UTC, as the summaries write it; a date alone is its midnight).
    pub from: Option<String>,
    /// `started_at < to`.
    pub to: Option<String>,
    /// Free metadata keys: `key = value`.
    pub meta: Vec<(String, String)>,
    /// Page size (1-1000; default 50).
    pub limit: Option<u32>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
    /// Only recordings of these queues or teams (metadata `queue`, `team`): what an API
    /// caller may see. `None`: every recording.
    pub scope: Option<ScopeFilter>,
}

/// The recordings a caller may see: those whose queue is one of `queues` or whose metadata
/// `team` is one of `teams` (both empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeFilter {
    pub queues: Vec<String>,
    pub teams: Vec<String>,
}

impl Query {
    /// Reads a query from the control protocol's JSON (`find`).
    pub fn from_json(v: &Value) -> Result<Query, CatalogError> {
        let s = |k: &str| -> Result<Option<String>, CatalogError> {
            match &v[k] {
                Value::Null => Ok(None),
                Value::String(x) => Ok(Some(x.clone())),
                other => Err(CatalogError::Query(format!("{k} must be a string, not {other}"))),
            }
        };
        let mut meta = Vec::new();
        match &v["metadata"] {
            Value::Null => {}
            Value::Object(m) => {
                for (k, val) in m {
                    let val = val.as_str().map_or_else(|| val.to_string(), str::to_string);
                    meta.push((k.clone(), val));
                }
            }
            other => return Err(CatalogError::Query(format!("metadata must be an object, not {other}"))),
        }
        let limit = match &v["limit"] {
            Value::Null => None,
            Value::Number(n) => Some(
                n.as_u64()
                    .filter(|&n| (1..=1000).contains(&n))
                    .ok_or_else(|| CatalogError::Query(format!("limit must be 1 to 1000, not {n}")))?
                    as u32,
            ),
            other => return Err(CatalogError::Query(format!("limit must be a number, not {other}"))),
        };
        let q = Query {
            call_id: s("call_id")?,
            agent: s("agent")?,
            queue: s("queue")?,
            caller: s("caller")?,
            called: s("called")?,
            direction: s("direction")?,
            from: s("from")?,
            to: s("to")?,
            meta,
            limit,
            cursor: s("cursor")?,
            scope: None,
        };
        q.check()?;
        Ok(q)
    }

    fn check(&self) -> Result<(), CatalogError> {
        for (name, t) in [("from", &self.from), ("to", &self.to)] {
            if let Some(t) = t
                && !valid_utc_time(t)
            {
                return Err(CatalogError::Query(format!(
                    "{name} {t:?} is not a UTC time like 2026-12-04 or 2026-12-04T10:00:00Z (a real date, \
                     hours 00-23, minutes and seconds 00-59)"
                )));
            }
        }
        // Each key is a subquery: thousands of them exceed what SQLite can plan.
        if self.meta.len() > MAX_META_KEYS {
            return Err(CatalogError::Query(format!(
                "{} metadata keys given: a search matches at most {MAX_META_KEYS} at once",
                self.meta.len()
            )));
        }
        if let Some(c) = &self.cursor
            && decode_cursor(c).is_none()
        {
            return Err(CatalogError::Query(format!("cursor {c:?} is not one a search returned")));
        }
        if self.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
            return Err(CatalogError::Query("limit must be 1 to 1000".into()));
        }
        Ok(())
    }
}

/// One page of results, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    /// The recordings' summaries.
    pub recordings: Vec<Value>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

impl Page {
    pub fn to_json(&self) -> Value {
        json!({"recordings": self.recordings, "next_cursor": self.next_cursor})
    }
}

fn encode_cursor(started: &str, rid: &str) -> String {
    format!("{started}~{rid}")
}

fn decode_cursor(c: &str) -> Option<(String, String)> {
    let (t, r) = c.split_once('~')?;
    (r.len() == 26 && ulid::Ulid::from_string(r).is_ok()).then(|| (t.to_string(), r.to_string()))
}

/// Normalises a bound: `2026-12-04` is that day's midnight; `…Z` times compare as text.
/// A time [`valid_utc_time`] took, written as stored times are (`YYYY-MM-DDTHH:MM:SS.mmmZ`) so
/// that text order is time order.
fn bound(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (date_time, fraction) = t.split_once('.').unwrap_or((t, ""));
    let date_time = match date_time.len() {
        10 => format!("{date_time}T00:00:00"),
        16 => format!("{date_time}:00"),
        _ => date_time.to_string(),
    };
    // Stored times have milliseconds: a finer bound is cut to them.
    let ms: String = fraction.chars().chain("000".chars()).take(3).collect();
    format!("{date_time}.{ms}Z")
}

/// Most metadata keys one search matches.
pub const MAX_META_KEYS: usize = 20;

/// Whether `s` is a UTC time as searches take it: a real calendar date `YYYY-MM-DD`, optionally
/// followed by `THH:MM`, `:SS` and a fraction `.f` (1-9 digits), then `Z`.
pub fn valid_utc_time(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = b.get(r)?;
        t.iter().all(u8::is_ascii_digit).then(|| t.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    if b[4] != b'-' || b[7] != b'-' || !(1..=12).contains(&m) {
        return false;
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=days).contains(&d) {
        return false;
    }
    if b.len() == 10 {
        return true;
    }
    if b[10] != b'T' || b.get(13) != Some(&b':') || num(11..13).is_none_or(|h| h >= 24) {
        return false;
    }
    if num(14..16).is_none_or(|mi| mi >= 60) {
        return false;
    }
    let mut i = 16;
    if b.get(i) == Some(&b':') {
        if num(17..19).is_none_or(|sec| sec >= 60) {
            return false;
        }
        i = 19;
        if b.get(i) == Some(&b'.') {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if !(1..=9).contains(&digits) {
                return false;
            }
            i += 1 + digits;
        }
    }
    b.get(i) == Some(&b'Z') && i + 1 == b.len()
}

/// Searches the catalog at `path` (read-only).
pub fn search(path: &Path, q: &Query) -> Result<Page, CatalogError> {
    q.check()?;
    if !path.exists() {
        return Ok(Page { recordings: Vec::new(), next_cursor: None });
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql(path))?;
    let mut clauses = Vec::new();
    let mut args: Vec<String> = Vec::new();
    for (col, v) in [
        ("call_id", &q.call_id),
        ("agent", &q.agent),
        ("queue", &q.queue),
        ("caller", &q.caller),
        ("called", &q.called),
        ("direction", &q.direction),
    ] {
        if let Some(v) = v {
            args.push(v.clone());
            clauses.push(format!("{col} = ?{}", args.len()));
        }
    }
    if let Some(f) = &q.from {
        args.push(bound(f));
        clauses.push(format!("started_at >= ?{}", args.len()));
    }
    if let Some(t) = &q.to {
        args.push(bound(t));
        clauses.push(format!("started_at < ?{}", args.len()));
    }
    for (k, v) in &q.meta {
        args.push(k.clone());
        args.push(v.clone());
        clauses.push(format!(
            "recording_id IN (SELECT recording_id FROM metadata WHERE key = ?{} AND value = ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    if let Some(scope) = &q.scope {
        let mut any = Vec::new();
        let list = |vals: &[String], args: &mut Vec<String>| {
            vals.iter()
                .map(|v| {
                    args.push(v.clone());
                    format!("?{}", args.len())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !scope.queues.is_empty() {
            any.push(format!("queue IN ({})", list(&scope.queues, &mut args)));
        }
        if !scope.teams.is_empty() {
            any.push(format!(
                "recording_id IN (SELECT recording_id FROM metadata WHERE key = 'team' AND value IN ({}))",
                list(&scope.teams, &mut args)
            ));
        }
        clauses.push(if any.is_empty() { "0".to_string() } else { format!("({})", any.join(" OR ")) });
    }
    if let Some((t, r)) = q.cursor.as_deref().and_then(decode_cursor) {
        args.push(t);
        args.push(r);
        clauses.push(format!("(started_at, recording_id) < (?{}, ?{})", args.len() - 1, args.len()));
    }
    let limit = q.limit.unwrap_or(50);
    let sql_text = format!(
        "SELECT started_at, recording_id, summary, stored FROM recordings {} ORDER BY started_at DESC, recording_id DESC LIMIT {}",
        if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) },
        limit + 1
    );
    let mut stmt = conn.prepare(&sql_text).map_err(sql(path))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, with_stored(r.get(2)?, r.get(3)?)))
        })
        .map_err(sql(path))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql(path))?);
    }
    let more = out.len() > limit as usize;
    out.truncate(limit as usize);
    let next_cursor = if more { out.last().map(|(t, r, _)| encode_cursor(t, r)) } else { None };
    let recordings = out.into_iter().map(|(_, _, s)| s).collect();
    Ok(Page { recordings, next_cursor })
}

/// A row's summary with `stored` (where it landed) set, or `null` while it is in the spool.
fn with_stored(summary: String, stored: Option<String>) -> Value {
    let mut v: Value = serde_json::from_str(&summary).unwrap_or(Value::Null);
    if v.is_object() {
        v["stored"] = stored.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
    }
    v
}

/// The metadata object keys of `keys` the catalog at `path` already has (read-only).
pub fn known_meta_keys(path: &Path, keys: &[String]) -> Result<std::collections::HashSet<String>, CatalogError> {
    let mut out = std::collections::HashSet::new();
    if !path.exists() || keys.is_empty() {
        return Ok(out);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql(path))?;
    let mut st = conn.prepare("SELECT 1 FROM recordings WHERE meta_key = ?1").map_err(sql(path))?;
    for k in keys {
        if st.exists(params![k]).map_err(sql(path))? {
            out.insert(k.clone());
        }
    }
    Ok(out)
}

/// Stored recordings that started before `before` (RFC 3339 UTC), oldest first, at most `limit`
/// after the `(started_at, recording_id)` given: a page of a retention sweep, so a catalog of
/// millions of recordings is never read into memory at once.
pub fn stored_before(
    path: &Path,
    before: &str,
    after: Option<&(String, String)>,
    limit: u32,
) -> Result<Vec<Value>, CatalogError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql(path))?;
    let (t, r) = after.cloned().unwrap_or_default();
    let mut st = conn
        .prepare(
            "SELECT summary, stored FROM recordings WHERE stored IS NOT NULL AND started_at < ?1
             AND (started_at, recording_id) > (?2, ?3) ORDER BY started_at, recording_id LIMIT ?4",
        )
        .map_err(sql(path))?;
    let rows =
        st.query_map(params![before, t, r, limit], |r| Ok(with_stored(r.get(0)?, r.get(1)?))).map_err(sql(path))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql(path))
}

/// One recording by id (read-only), with where it is stored.
pub fn get(path: &Path, recording_id: &str) -> Result<Option<Value>, CatalogError> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql(path))?;
    let mut st = conn.prepare("SELECT summary, stored FROM recordings WHERE recording_id = ?1").map_err(sql(path))?;
    let mut rows = st.query_map(params![recording_id], |r| Ok(with_stored(r.get(0)?, r.get(1)?))).map_err(sql(path))?;
    rows.next().transpose().map_err(sql(path))
}

/// Feeds the catalog from a thread of its own: the control plane hands it summaries and never
/// waits for the database.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

enum Op {
    Upsert(Value),
    Stored(String, Value),
    Remove(String),
}

impl Writer {
    /// Starts the writer thread on an opened catalog.
    pub fn spawn(mut catalog: Catalog) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new().name("catalog".into()).spawn(move || {
            // Where a recording landed can be told before its summary arrives (the shipper
            // may be quicker than the event): kept until then.
            let mut early: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
            for op in rx {
                let (rid, done) = match op {
                    Op::Upsert(summary) => {
                        let rid = summary["recording_id"].as_str().unwrap_or("?").to_string();
                        let mut done = catalog.upsert(&summary);
                        if done.is_ok()
                            && let Some(stored) = early.remove(&rid)
                        {
                            done = catalog.set_stored(&rid, &stored).map(drop);
                        }
                        (rid, done)
                    }
                    Op::Stored(rid, stored) => {
                        let done = catalog.set_stored(&rid, &stored).map(|found| {
                            if !found && early.len() < 100_000 {
                                early.insert(rid.clone(), stored);
                            }
                        });
                        (rid, done)
                    }
                    Op::Remove(rid) => {
                        early.remove(&rid);
                        let done = catalog.remove(&rid);
                        (rid, done)
                    }
                };
                if let Err(e) = done {
                    crate::log::warn(&format!(
                        "catalog: recording {rid} not updated: {e} (`callvault catalog rebuild` restores it)"
                    ));
                }
            }
        })?;
        Ok(Writer { tx })
    }

    /// Queues a finished (or failed, or recovered) recording's summary.
    pub fn record(&self, summary: &Value) {
        let _ = self.tx.send(Op::Upsert(summary.clone()));
    }

    /// Queues where a recording landed.
    pub fn stored(&self, recording_id: &str, stored: Value) {
        let _ = self.tx.send(Op::Stored(recording_id.to_string(), stored));
    }

    /// Queues a recording's removal (deleted from storage).
    pub fn remove(&self, recording_id: &str) {
        let _ = self.tx.send(Op::Remove(recording_id.to_string()));
    }
}

/// Rebuilds the catalog from the sidecars in a spool: sealed (`*.meta.cvs`, opened with `keys`)
/// and plain (`*.json`). Calls `progress(done, total)` as it goes. Returns (indexed, skipped
/// with why).
pub fn rebuild(
    catalog: &mut Catalog,
    spool: &Path,
    keys: Option<&crate::seal::Keyring>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, Vec<String>), CatalogError> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(spool) {
        Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => return Err(CatalogError::Query(format!("cannot read {}: {e}", spool.display()))),
    };
    names.retain(|p| {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        n.ends_with(".meta.cvs") || (n.ends_with(".json") && !n.ends_with(".summary.json"))
    });
    names.sort();
    let total = names.len() as u64;
    let (mut indexed, mut skipped) = (0u64, Vec::new());
    for (i, p) in names.iter().enumerate() {
        let v = if p.to_string_lossy().ends_with(".meta.cvs") {
            match keys {
                Some(k) => crate::output::sealed::read_sealed_json(p, k).map_err(|e| e.to_string()),
                None => Err("sealed, and no keys given".to_string()),
            }
        } else {
            std::fs::read(p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        };
        match v {
            Ok(v) if v["recording_id"].as_str().is_some_and(|r| !r.is_empty()) => {
                catalog.upsert(&v)?;
                indexed += 1;
            }
            Ok(_) => skipped.push(format!("{}: no recording_id", p.display())),
            Err(e) => skipped.push(format!("{}: {e}", p.display())),
        }
        progress(i as u64 + 1, total);
    }
    Ok((indexed, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rid: &str, started: &str, meta: Value) -> Value {
        json!({"recording_id": rid, "call_id": format!("c-{}", &rid[20..]), "started_at": started, "state": "finished",
            "duration_ms": 1000, "metadata": meta, "encrypted": true})
    }

    fn rid(n: u32) -> String {
        ulid::Ulid(0x0196_0000_0000_0000_0000_0000_0000_0000 + u128::from(n)).to_string()
    }

    #[test]
    fn utc_times_are_checked_in_full() {
        for good in [
            "2026-12-04",
            "2024-02-29",
            "2000-02-29",
            "2026-12-31T23:59Z",
            "2026-12-04T00:00:00Z",
            "2026-12-04T10:00:59.5Z",
            "2026-12-04T10:00:00.123456789Z",
            "0001-01-01",
        ] {
            assert!(valid_utc_time(good), "{good}");
        }
        for bad in [
            "",
            "2026",
            "2026-13-45",
            "2026-00-10",
            "2026-02-30",
            "2026-02-29",
            "1900-02-29",
            "2026-04-31",
            "2026-12-00",
            "9999-99-99",
            "2026-12-04T25:61:00Z",
            "2026-12-04T24:00Z",
            "2026-12-04T10:60Z",
            "2026-12-04T10:00:60Z",
            "2026-12-04T10:00",
            "2026-12-04T10:00:00",
            "2026-12-04T10:00:00.Z",
            "2026-12-04T10:00:00.1234567890Z",
            "2026-12-04T10:00:00+01:00",
            "2026-12-04t10:00:00z",
            "2026-12-04 10:00:00Z",
            "2026-12-04T10:00:00ZZ",
            "2026-12-04T1:00:00Z",
            "+026-12-04",
            "2026-1-04",
            "2026-12-04Z",
            "２026-12-04",
        ] {
            assert!(!valid_utc_time(bad), "{bad}");
            let e = Query::from_json(&json!({"from": bad})).unwrap_err().to_string();
            assert!(e.contains("from") && e.contains("UTC time"), "{e}");
            assert!(Query::from_json(&json!({"to": bad})).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_are_written_as_stored_times() {
        assert_eq!(bound("2026-12-04"), "2026-12-04T00:00:00.000Z");
        assert_eq!(bound("2026-12-04T10:05Z"), "2026-12-04T10:05:00.000Z");
        assert_eq!(bound("2026-12-04T10:05:07Z"), "2026-12-04T10:05:07.000Z");
        assert_eq!(bound("2026-12-04T10:05:07.5Z"), "2026-12-04T10:05:07.500Z");
        assert_eq!(bound("2026-12-04T10:05:07.123456Z"), "2026-12-04T10:05:07.123Z");
    }

    #[test]
    fn at_most_twenty_metadata_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        Catalog::open(&path).unwrap();
        let meta = |n: usize| Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect());
        assert!(Query::from_json(&json!({"metadata": meta(20)})).is_ok());
        let e = Query::from_json(&json!({"metadata": meta(3000)})).unwrap_err().to_string();
        assert!(e.contains("3000 metadata keys") && e.contains("at most 20"), "{e}");
        // Built directly (the CLI's way), the search refuses it before SQLite sees it, without
        // naming the catalog's path.
        let q = Query { meta: (0..3000).map(|i| (format!("k{i}"), "v".into())).collect(), ..Query::default() };
        let e = search(&path, &q).unwrap_err().to_string();
        assert!(e.contains("at most 20") && !e.contains(&dir.path().display().to_string()), "{e}");
        let q = Query { meta: (0..20).map(|i| (format!("k{i}"), "v".into())).collect(), ..Query::default() };
        assert!(search(&path, &q).unwrap().recordings.is_empty());
    }

    #[test]
    fn search_filters_and_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let mut c = Catalog::open(&path).unwrap();
        for n in 0..25u32 {
            let agent = if n % 2 == 0 { "alice" } else { "bob" };
            let started = format!("2026-12-{:02}T10:00:{:02}.000Z", 1 + n / 10, n % 60);
            c.upsert(&summary(
                &rid(n),
                &started,
                json!({"agent": agent, "queue": "sales", "caller_number": format!("+49{n}"), "ticket": n.to_string()}),
            ))
            .unwrap();
        }
        // Upserting again replaces, never duplicates.
        c.upsert(&summary(&rid(0), "2026-12-01T10:00:00.000Z", json!({"agent": "alice", "queue": "support"}))).unwrap();
        assert_eq!(c.count().unwrap(), 25);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let all = |q: Query| {
            let mut out = Vec::new();
            let mut q = q;
            loop {
                let p = search(&path, &q).unwrap();
                out.extend(p.recordings.iter().map(|r| r["recording_id"].as_str().unwrap().to_string()));
                match p.next_cursor {
                    Some(c) => q.cursor = Some(c),
                    None => return out,
                }
            }
        };
        let alice = all(Query { agent: Some("alice".into()), limit: Some(4), ..Query::default() });
        assert_eq!(alice.len(), 13, "{alice:?}");
        assert_eq!(alice[0], rid(24), "newest first");
        assert!(alice.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(all(Query { queue: Some("support".into()), ..Query::default() }), vec![rid(0)]);
        assert_eq!(all(Query { caller: Some("+497".into()), ..Query::default() }), vec![rid(7)]);
        assert_eq!(all(Query { meta: vec![("ticket".into(), "12".into())], ..Query::default() }), vec![rid(12)]);
        let day2 = all(Query { from: Some("2026-12-02".into()), to: Some("2026-12-03".into()), ..Query::default() });
        assert_eq!(day2.len(), 10);
        // To the minute: 2026-12-01T10:00:00-09 are ten recordings, 10:00:00 to 10:00:05 five.
        let minute = all(Query {
            from: Some("2026-12-01T10:00Z".into()),
            to: Some("2026-12-01T10:01Z".into()),
            ..Query::default()
        });
        assert_eq!(minute.len(), 10);
        let secs = all(Query {
            from: Some("2026-12-01T10:00:00Z".into()),
            to: Some("2026-12-01T10:00:05Z".into()),
            ..Query::default()
        });
        assert_eq!(secs.len(), 5);
        assert!(search(&path, &Query { from: Some("yesterday".into()), ..Query::default() }).is_err());
        assert!(search(&path, &Query { cursor: Some("garbage".into()), ..Query::default() }).is_err());
        let q = Query::from_json(&json!({"agent": "bob", "metadata": {"queue": "sales"}, "limit": 2})).unwrap();
        assert_eq!(search(&path, &q).unwrap().recordings.len(), 2);
        assert!(Query::from_json(&json!({"limit": 0})).is_err());
        assert!(Query::from_json(&json!({"agent": 5})).is_err());
        // Scope: queue or team; an empty scope sees nothing, and it pages like any filter.
        c.upsert(&summary(&rid(30), "2026-12-05T10:00:00.000Z", json!({"queue": "billing", "team": "north"}))).unwrap();
        let scoped = |queues: &[&str], teams: &[&str]| {
            let scope = Some(ScopeFilter {
                queues: queues.iter().map(|s| s.to_string()).collect(),
                teams: teams.iter().map(|s| s.to_string()).collect(),
            });
            all(Query { scope, limit: Some(3), ..Query::default() })
        };
        assert_eq!(scoped(&["support"], &[]), vec![rid(0)]);
        assert_eq!(scoped(&[], &["north"]), vec![rid(30)]);
        assert_eq!(scoped(&["support"], &["north"]), vec![rid(30), rid(0)]);
        assert_eq!(scoped(&["sales"], &[]).len(), 24);
        assert!(scoped(&[], &[]).is_empty());
        let q = Query {
            agent: Some("alice".into()),
            scope: Some(ScopeFilter { queues: vec!["support".into()], teams: vec![] }),
            ..Query::default()
        };
        assert_eq!(all(q), vec![rid(0)]);
    }

    #[test]
    fn stored_recordings_page_from_the_oldest_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let mut c = Catalog::open(&path).unwrap();
        for n in 0..2500u32 {
            let started = format!("2026-{:02}-01T00:00:{:02}.000Z", 1 + n % 12, n % 60);
            c.upsert(&summary(&rid(n), &started, json!({}))).unwrap();
            if n % 5 != 0 {
                c.set_stored(&rid(n), &json!({"primary": {"objects": [{"key": "k"}]}})).unwrap();
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut after = None;
        loop {
            let page = stored_before(&path, "2026-07-01", after.as_ref(), 1000).unwrap();
            let Some(last) = page.last() else { break };
            after = Some((
                last["started_at"].as_str().unwrap().to_string(),
                last["recording_id"].as_str().unwrap().to_string(),
            ));
            for r in &page {
                assert!(r["started_at"].as_str().unwrap() < "2026-07-01");
                assert!(!r["stored"].is_null());
                assert!(seen.insert(r["recording_id"].as_str().unwrap().to_string()), "repeated");
            }
        }
        // Months 1-6 of 12, four in five stored.
        assert_eq!(seen.len(), (0..2500u32).filter(|n| n % 12 < 6 && n % 5 != 0).count());
        assert_eq!(get(&path, &rid(7)).unwrap().unwrap()["recording_id"], rid(7));
        assert!(get(&path, "01M8ZZZZZZZZZZZZZZZZZZZZZZ").unwrap().is_none());
    }

    #[test]
    fn a_missing_catalog_is_an_empty_one_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert!(search(&path, &Query::default()).unwrap().recordings.is_empty());
        Catalog::open(&path).unwrap();
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 9).unwrap();
        assert!(matches!(Catalog::open(&path), Err(CatalogError::NewerSchema { found: 9, .. })));
    }
}
