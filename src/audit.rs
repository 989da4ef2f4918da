//! The audit trail: every access and change (who, what, when, from where, with what result),
//! append-only and hash-chained (`docs/audit.md`).
//!
//! Entries live in `<data_dir>/audit.db` (SQLite, WAL, `synchronous = FULL`: an entry is on disk
//! before `append` returns). Each entry carries `mac = HMAC-SHA256(audit.key, canonical(seq, at,
//! actor, action, target, source, result, detail, prev_mac))`, where `prev_mac` is the previous
//! entry's mac: editing an entry breaks its mac, removing one leaves a gap in `seq` and a
//! `prev_mac` that points at nothing. The key (`<data_dir>/audit.key`, 32 random bytes, 0600) is
//! held by the log's writer alone: whoever can write the database but not read the key cannot
//! make a chain that verifies.
//!
//! What a chain cannot show by itself is a cut-off tail: the last entries removed leave a shorter
//! chain that is still whole. So the head (seq and mac) is anchored periodically outside the log:
//! to every storage target (`_audit/anchors/<node>/<seq>.json`) and to the system journal. An
//! anchor beyond the log's end, or whose mac differs from the entry at its seq, shows the cut.
//! Entries cut off after the last anchor cannot be detected; the anchor interval bounds them.
//!
//! Both the daemon and CLI commands append at once: each append is one `BEGIN IMMEDIATE`
//! transaction that reads the head inside it, so two writers never fork the chain.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::seal::format::{hex, unhex};

/// The database file in the data directory.
pub const DB_FILE: &str = "audit.db";
/// The chain's key file in the data directory.
pub const KEY_FILE: &str = "audit.key";
/// Where anchors live in every storage target (`<prefix>/_audit/anchors/<node>/<seq>.json`).
pub const ANCHOR_DIR: &str = "_audit/anchors";

/// The `prev_mac` of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Domain tags: an entry's mac, an anchor's mac and the key check can never be mistaken for one
/// another.
const ENTRY_TAG: &[u8] = b"callvault-audit-entry-v1";
const ANCHOR_TAG: &[u8] = b"callvault-audit-anchor-v1";
const KEY_CHECK_TAG: &[u8] = b"callvault-audit-key-check-v1";
const CHAIN_TAG: &[u8] = b"callvault-audit-chain-id-v1";
/// Longest text kept in one field and longest detail (bytes of JSON): an entry stays small
/// whatever a client sends.
const MAX_FIELD: usize = 1024;
const MAX_DETAIL: usize = 8192;
/// `read` returns at most this many entries at once.
pub const MAX_READ: u32 = 10_000;
const DEFAULT_READ: u32 = 100;

/// One thing that happened: who did what to what, from where, and how it ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// Who: a user name, `token:<id>`, `link:<user>`, `control:uid=N`, `cli:<unix user>`.
    pub actor: String,
    /// What: `play`, `search`, `start`, `stop`, `token.create`, …
    pub action: String,
    /// To what: a recording id, a call id, a user, or empty.
    pub target: String,
    /// From where: a peer address, `control socket`, `cli`.
    pub source: String,
    /// How it ended: `ok`, `denied`, `not_found`, `error: …`.
    pub result: String,
    /// A small JSON object with what else matters (a recording id, a query).
    pub detail: Value,
}

/// Why the audit trail cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database could not be opened, read or written.
    #[error("audit log {}: {message}", path.display())]
    Db { path: PathBuf, message: String },
    /// A file (the key, the data directory) could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// The log has entries but its key is gone: appending with a new key would start a chain
    /// nobody could tell from a forgery.
    #[error(
        "audit key {} is missing but the audit log {} has {entries} entries: restore the key from its backup (docs/audit.md); a new key is not made over an existing log",
        key.display(), db.display()
    )]
    KeyMissing { key: PathBuf, db: PathBuf, entries: u64 },
    /// The key is not the one the log was written with.
    #[error(
        "audit key {} is not the key audit log {} was written with: restore the right key (docs/audit.md)",
        key.display(), db.display()
    )]
    WrongKey { key: PathBuf, db: PathBuf },
    /// The key file is not 32 bytes.
    #[error("audit key {}: {message}", path.display())]
    BadKey { path: PathBuf, message: String },
    /// There is no audit log to read.
    #[error("no audit log in {}: {DB_FILE} not found (is this the daemon's data_dir?)", dir.display())]
    NoLog { dir: PathBuf },
    /// A filter value is not usable.
    #[error("{0}")]
    BadQuery(String),
    /// An anchor could not be written or read.
    #[error("audit anchor: {0}")]
    Anchor(String),
}

/// What `read` returns: entries after `after_seq`, filtered, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ReadQuery {
    /// Only entries with a higher seq (paging: the last seq of the previous page).
    pub after_seq: Option<u64>,
    /// At most this many (0: 100; at most 10000).
    pub limit: u32,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only entries at or after this time (RFC 3339, or a date).
    pub since: Option<String>,
    /// Only entries before this time (RFC 3339, or a date).
    pub until: Option<String>,
}

/// The audit trail of one data directory, shared by every thread of a process.
pub struct AuditLog {
    conn: Mutex<Connection>,
    key: Zeroizing<[u8; 32]>,
    path: PathBuf,
    /// The seq last anchored by this process (0: none yet), so an idle log is not re-anchored.
    anchored: AtomicU64,
    /// Appends by [`AuditLog::record`] that failed (`callvault_audit_write_errors_total`).
    write_errors: AtomicU64,
    /// The log had no entries when it was opened (new, or wiped: [`earlier_anchors`] tells).
    started_empty: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({})", self.path.display())
    }
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
    move |e| AuditError::Db { path: path.to_path_buf(), message: e.to_string() }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AuditError + 'a {
    move |source| AuditError::Io { action, path: path.to_path_buf(), source }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_mac TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_at ON entries(at);
CREATE INDEX IF NOT EXISTS entries_actor ON entries(actor);
CREATE INDEX IF NOT EXISTS entries_target ON entries(target);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Append-only for every ordinary client: a mistake cannot change history. Someone who drops
-- the triggers can, which is what the chain is for.
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
";

impl AuditLog {
    /// Opens (creating if missing) `<data_dir>/audit.db` and its key `<data_dir>/audit.key`.
    /// A log with entries but no key, or with another key, is refused.
    pub fn open(data_dir: &Path) -> Result<AuditLog, AuditError> {
        crate::output::ensure_dir(data_dir).map_err(io_err("cannot create", data_dir))?;
        let path = data_dir.join(DB_FILE);
        let key_path = data_dir.join(KEY_FILE);
        if !path.exists() {
            // Made 0600 before SQLite opens it; its -wal and -shm files take the same mode.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io_err("cannot create", &path))?;
        }
        let conn = Connection::open(&path).map_err(db_err(&path))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db_err(&path))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err(&path))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db_err(&path))?;
        conn.execute_batch(SCHEMA).map_err(db_err(&path))?;
        let entries: u64 =
            conn.query_row("SELECT count(*) FROM entries", [], |r| r.get::<_, i64>(0)).map_err(db_err(&path))? as u64;
        let key = match read_key(&key_path)? {
            Some(k) => k,
            None if entries > 0 => return Err(AuditError::KeyMissing { key: key_path, db: path, entries }),
            None => create_key(&key_path)?,
        };
        let check = key_check(&key);
        let stored: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE name = 'key_check'", [], |r| r.get(0))
            .optional()
            .map_err(db_err(&path))?;
        match stored {
            Some(s) if s == check => {}
            Some(_) => return Err(AuditError::WrongKey { key: key_path, db: path }),
            None => {
                conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('key_check', ?1)", [&check])
                    .map_err(db_err(&path))?;
            }
        }
        Ok(AuditLog {
            conn: Mutex::new(conn),
            key,
            path,
            anchored: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            started_empty: entries == 0,
        })
    }

    /// Appends one entry, chained to the head; it is on disk when this returns. Returns its seq.
    pub fn append(&self, e: Entry) -> Result<u64, AuditError> {
        let at = crate::engine::call::rfc3339(SystemTime::now());
        let detail = detail_text(&e.detail);
        let (actor, action, target, source, result) =
            (clip(e.actor), clip(e.action), clip(e.target), clip(e.source), clip(e.result));
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let err = db_err(&self.path);
        // IMMEDIATE: the write lock is taken before the head is read, so another process's
        // append waits instead of chaining to the same head.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
        let last: Option<(i64, String)> = tx
            .query_row("SELECT seq, mac FROM entries ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(&err)?;
        let (seq, prev_mac) = match last {
            Some((s, m)) => (s as u64 + 1, m),
            None => (1, GENESIS.to_string()),
        };
        let fields = Fields {
            seq,
            at: &at,
            actor: &actor,
            action: &action,
            target: &target,
            source: &source,
            result: &result,
            detail: &detail,
            prev_mac: &prev_mac,
        };
        let mac = hex(mac_of(&self.key, &fields.canonical()).as_ref());
        tx.execute(
            "INSERT INTO entries(seq, at, actor, action, target, source, result, detail, prev_mac, mac)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![seq as i64, at, actor, action, target, source, result, detail, prev_mac, mac],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(seq)
    }

    /// Appends where the work it records must go on even if the audit trail cannot be written
    /// (a recording being started or stopped): a failure is logged and counted, not returned.
    pub fn record(&self, e: Entry) -> Option<u64> {
        match self.append(e.clone()) {
            Ok(seq) => Some(seq),
            Err(err) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                crate::log::warn(&format!(
                    "audit trail: not recorded ({} {} {:?} by {}: {}): {err}",
                    e.action, e.target, e.result, e.actor, e.source
                ));
                None
            }
        }
    }

    /// How many [`AuditLog::record`] calls failed since the log was opened.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Entries matching `q`, oldest first, as JSON objects (`seq`, `at`, `actor`, `action`,
    /// `target`, `source`, `result`, `detail`, `prev_mac`, `mac`).
    pub fn read(&self, q: &ReadQuery) -> Result<Vec<Value>, AuditError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        read_from(&conn, &self.path, q)
    }

    /// The head: the last entry's seq and mac (hex); `None` for an empty log.
    pub fn head(&self) -> Result<Option<(u64, String)>, AuditError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT seq, mac FROM entries ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })
        .optional()
        .map_err(db_err(&self.path))
    }

    /// Moves what the write-ahead log holds into the database file (at shutdown, so that a
    /// copy of `audit.db` alone is complete). A failure only leaves it in the WAL, as durable.
    pub fn checkpoint(&self) {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            crate::log::warn(&format!("audit trail {}: checkpoint: {e}", self.path.display()));
        }
    }

    /// Whether the log had no entries when it was opened.
    pub fn started_empty(&self) -> bool {
        self.started_empty
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An anchor of the current head, signed with the key; `None` when the log is empty or the
    /// head has not moved since this process last anchored it.
    fn next_anchor(&self, node: &str) -> Result<Option<Anchor>, AuditError> {
        let Some((seq, mac)) = self.head()? else { return Ok(None) };
        if self.anchored.load(Ordering::Relaxed) == seq {
            return Ok(None);
        }
        let at = crate::engine::call::rfc3339(SystemTime::now());
        Ok(Some(Anchor::sign(&self.key, seq, mac, at, node.to_string(), chain_id(&self.key))))
    }
}

/// The fields an entry's mac covers, in their order.
struct Fields<'a> {
    seq: u64,
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    source: &'a str,
    result: &'a str,
    detail: &'a str,
    prev_mac: &'a str,
}

impl Fields<'_> {
    /// Length-prefixed: no bytes can move from one field to the next without changing the mac.
    fn canonical(&self) -> Vec<u8> {
        canonical_entry(
            self.seq,
            [self.at, self.actor, self.action, self.target, self.source, self.result, self.detail, self.prev_mac]
                .map(str::as_bytes),
        )
    }
}

/// What an entry's mac covers: its seq and its fields (at, actor, action, target, source,
/// result, detail, prev_mac) as bytes, each with its length before it.
fn canonical_entry(seq: u64, fields: [&[u8]; 8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    put(&mut out, ENTRY_TAG);
    put(&mut out, &seq.to_be_bytes());
    for f in fields {
        put(&mut out, f);
    }
    out
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn mac_of(key: &[u8; 32], bytes: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), bytes)
}

/// Whether `mac_hex` is the mac of `bytes` (compared in constant time).
fn mac_ok(key: &[u8; 32], bytes: &[u8], mac_hex: &str) -> bool {
    match unhex::<32>(mac_hex) {
        Some(tag) => hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), bytes, &tag).is_ok(),
        None => false,
    }
}

/// Stored beside the entries: tells a wrong key from tampering, without revealing the key.
fn key_check(key: &[u8; 32]) -> String {
    hex(mac_of(key, KEY_CHECK_TAG).as_ref())
}

/// Which log an anchor belongs to, derived from the key (so it cannot be changed in the
/// database): recorders sharing a store, or a data directory made anew on the same host, each
/// have their own chain, and `verify` checks only its own log's anchors.
pub fn chain_id(key: &[u8; 32]) -> String {
    hex(&mac_of(key, CHAIN_TAG).as_ref()[..16])
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The detail as stored (and covered by the mac): always a JSON object.
fn detail_text(v: &Value) -> String {
    let obj = match v {
        Value::Object(_) => v.clone(),
        Value::Null => json!({}),
        other => json!({ "value": other }),
    };
    let text = obj.to_string();
    if text.len() > MAX_DETAIL { json!({"truncated": true, "bytes": text.len()}).to_string() } else { text }
}

fn read_key(path: &Path) -> Result<Option<Zeroizing<[u8; 32]>>, AuditError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::Io { action: "cannot read", path: path.to_path_buf(), source: e }),
    };
    if bytes.len() != 32 {
        return Err(AuditError::BadKey {
            path: path.to_path_buf(),
            message: format!("{} bytes, expected 32 (restore it from its backup)", bytes.len()),
        });
    }
    // Whoever can read the key can rewrite the chain unnoticed: it is the writer's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| AuditError::Io { action: "cannot read", path: path.to_path_buf(), source: e })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(AuditError::BadKey {
                path: path.to_path_buf(),
                message: format!(
                    "mode {:o}: others may read it, and whoever reads it can rewrite the trail unnoticed; chmod 600 it (and check who could have read it)",
                    mode & 0o777
                ),
            });
        }
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    Ok(Some(key))
}

/// Makes a new key: written to a temporary file (0600) and linked into place, so a reader never
/// sees half a key and two processes starting at once end up with one key.
fn create_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut key[..]).map_err(|_| AuditError::BadKey {
        path: path.to_path_buf(),
        message: "no random bytes to make a key".into(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&key[..])?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(AuditError::Io { action: "cannot write", path: tmp, source: e });
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            Ok(key)
        }
        // Another process made it first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(path)?
            .ok_or_else(|| AuditError::BadKey { path: path.to_path_buf(), message: "vanished while opening".into() }),
        Err(e) => Err(AuditError::Io { action: "cannot create", path: path.to_path_buf(), source: e }),
    }
}

fn read_from(conn: &Connection, path: &Path, q: &ReadQuery) -> Result<Vec<Value>, AuditError> {
    let mut sql = String::from(
        "SELECT seq, at, actor, action, target, source, result, detail, prev_mac, mac FROM entries WHERE 1 = 1",
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(after) = q.after_seq {
        sql.push_str(" AND seq > ?");
        args.push((after.min(i64::MAX as u64) as i64).into());
    }
    for (col, v) in [("actor", &q.actor), ("action", &q.action), ("target", &q.target)] {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(v.clone().into());
        }
    }
    if let Some(s) = &q.since {
        sql.push_str(" AND at >= ?");
        args.push(normalize_time(s).map_err(|e| AuditError::BadQuery(format!("since: {e}")))?.into());
    }
    if let Some(u) = &q.until {
        sql.push_str(" AND at < ?");
        args.push(normalize_time(u).map_err(|e| AuditError::BadQuery(format!("until: {e}")))?.into());
    }
    let limit = match q.limit {
        0 => DEFAULT_READ,
        n => n.min(MAX_READ),
    };
    sql.push_str(&format!(" ORDER BY seq LIMIT {limit}"));
    let err = db_err(path);
    let mut stmt = conn.prepare(&sql).map_err(&err)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |r| {
            // Whatever a tampered row holds (a blob, bytes that are not UTF-8) is shown, not a
            // reason to show nothing: `verify` says it was edited.
            let text = |i| column_bytes(r, i).map(|b| String::from_utf8_lossy(&b).into_owned());
            let detail = text(7)?;
            Ok(json!({
                "seq": r.get::<_, i64>(0)?,
                "at": text(1)?,
                "actor": text(2)?,
                "action": text(3)?,
                "target": text(4)?,
                "source": text(5)?,
                "result": text(6)?,
                "detail": serde_json::from_str::<Value>(&detail).unwrap_or(Value::String(detail)),
                "prev_mac": text(8)?,
                "mac": text(9)?,
            }))
        })
        .map_err(&err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(&err)
}

/// Reads entries from a data directory without opening it for writing (nor needing the key):
/// `callvault audit list`.
pub fn read_dir(data_dir: &Path, q: &ReadQuery) -> Result<Vec<Value>, AuditError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(AuditError::NoLog { dir: data_dir.to_path_buf() });
    }
    let conn = open_read_only(&path)?;
    read_from(&conn, &path, q)
}

fn open_read_only(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db_err(path))?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(db_err(path))?;
    Ok(conn)
}

/// A time given as RFC 3339 (any offset, fraction optional) or a date (`2026-12-04`: its
/// midnight UTC), in the form entries are stored in (`2026-12-04T10:00:00.000Z`), so that text
/// order is time order.
pub fn normalize_time(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a time: use RFC 3339 (2026-12-04T10:00:00Z) or a date (2026-12-04)");
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = b.get(r)?;
        if t.iter().all(u8::is_ascii_digit) { std::str::from_utf8(t).ok()?.parse().ok() } else { None }
    };
    let (y, mo, d) = (num(0..4).ok_or_else(bad)?, num(5..7).ok_or_else(bad)?, num(8..10).ok_or_else(bad)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    // A real calendar date (no 2026-02-30), checked as the catalog's searches check it.
    if !std::str::from_utf8(&b[..10]).is_ok_and(crate::catalog::valid_utc_time) {
        return Err(bad());
    }
    let (mut h, mut mi, mut sec, mut ms, mut offset_min) = (0, 0, 0, 0i64, 0i64);
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.get(13) != Some(&b':') {
            return Err(bad());
        }
        h = num(11..13).ok_or_else(bad)?;
        mi = num(14..16).ok_or_else(bad)?;
        let mut i = 16;
        if b.get(i) == Some(&b':') {
            sec = num(17..19).ok_or_else(bad)?;
            i = 19;
        }
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return Err(bad());
            }
            // Milliseconds: the first three digits, padded.
            let digits: String = std::str::from_utf8(&b[start..i.min(start + 3)]).map_err(|_| bad())?.into();
            ms = format!("{digits:0<3}").parse().map_err(|_| bad())?;
        }
        match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => {}
            Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
                let oh = num(i + 1..i + 3).ok_or_else(bad)?;
                let om = num(i + 4..i + 6).ok_or_else(bad)?;
                offset_min = (oh * 60 + om) * if *sign == b'-' { -1 } else { 1 };
            }
            _ => return Err(bad()),
        }
        if h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    let millis = secs.checked_mul(1000).and_then(|m| m.checked_add(ms)).filter(|m| *m >= 0).ok_or_else(bad)?;
    Ok(crate::engine::call::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(millis as u64)))
}

/// Days since 1970-01-01 of a civil date (the inverse of the calendar in `rfc3339`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The head of the chain as it was at a moment, kept outside the log, signed with the log's key
/// so that a made-up anchor is detected. Two anchors are the same whatever object they were read
/// from (`object` is left out of `==` and the hash).
#[derive(Debug, Clone)]
pub struct Anchor {
    /// The last entry's seq.
    pub seq: u64,
    /// Its mac (hex).
    pub mac: String,
    /// When it was anchored (RFC 3339).
    pub at: String,
    /// The recorder that anchored it (its host name).
    pub node: String,
    /// The log it belongs to ([`chain_id`]).
    pub chain: String,
    /// HMAC-SHA256 over the above (hex).
    pub anchor_mac: String,
    /// The object it was read from, when its body had to be read (a name of the first form, or
    /// one that does not hold an anchor): named in what `verify` reports.
    pub object: Option<String>,
}

impl PartialEq for Anchor {
    fn eq(&self, o: &Anchor) -> bool {
        (self.seq, &self.mac, &self.at, &self.node, &self.chain, &self.anchor_mac)
            == (o.seq, &o.mac, &o.at, &o.node, &o.chain, &o.anchor_mac)
    }
}

impl Eq for Anchor {}

impl std::hash::Hash for Anchor {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self.seq, &self.mac, &self.at, &self.node, &self.chain, &self.anchor_mac).hash(h)
    }
}

impl Anchor {
    fn canonical(seq: u64, mac: &str, at: &str, node: &str, chain: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        put(&mut out, ANCHOR_TAG);
        put(&mut out, &seq.to_be_bytes());
        for f in [mac, at, node, chain] {
            put(&mut out, f.as_bytes());
        }
        out
    }

    fn sign(key: &[u8; 32], seq: u64, mac: String, at: String, node: String, chain: String) -> Anchor {
        let anchor_mac = hex(mac_of(key, &Anchor::canonical(seq, &mac, &at, &node, &chain)).as_ref());
        Anchor { seq, mac, at, node, chain, anchor_mac, object: None }
    }

    fn signed_by(&self, key: &[u8; 32]) -> bool {
        mac_ok(key, &Anchor::canonical(self.seq, &self.mac, &self.at, &self.node, &self.chain), &self.anchor_mac)
    }

    /// Its JSON form, as stored.
    pub fn to_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "mac": self.mac,
            "at": self.at,
            "node": self.node,
            "chain": self.chain,
            "anchor_mac": self.anchor_mac,
        })
    }

    /// From its JSON form; missing fields are empty (and so fail the check of `anchor_mac`).
    pub fn from_json(v: &Value) -> Anchor {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Anchor {
            seq: v["seq"].as_u64().unwrap_or(0),
            mac: s("mac"),
            at: s("at"),
            node: s("node"),
            chain: s("chain"),
            anchor_mac: s("anchor_mac"),
            object: None,
        }
    }

    /// The line written to the system journal.
    pub fn journal_line(&self) -> String {
        format!(
            "audit anchor: seq {} head {} node {} at {} chain {} anchor_mac {}",
            self.seq, self.mac, self.node, self.at, self.chain, self.anchor_mac
        )
    }

    /// An anchor from a journal line (`journalctl -u callvault` output, any prefix), if it has one.
    pub fn from_journal_line(line: &str) -> Option<Anchor> {
        let rest = &line[line.find("audit anchor: ")? + "audit anchor: ".len()..];
        let words: Vec<&str> = rest.split_whitespace().collect();
        let field = |name: &str| words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)).copied();
        Some(Anchor {
            seq: field("seq")?.parse().ok()?,
            mac: field("head")?.to_string(),
            node: field("node")?.to_string(),
            at: field("at")?.to_string(),
            chain: field("chain").unwrap_or_default().to_string(),
            anchor_mac: field("anchor_mac")?.to_string(),
            object: None,
        })
    }
}

/// This host's name: the node an anchor is filed under.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String =
        host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    if host.is_empty() { "localhost".into() } else { host }
}

/// `PREFIX/_audit/anchors/<node>/<seq>.<chain>.<mac>.<anchor_mac>.<at>.json`: the name holds the
/// whole anchor (`:` in the time written `_`, which RFC 3339 never uses), so `verify` needs one
/// listing per thousand anchors, not one read each; at a minute's interval a year is over half a
/// million of them. The body, the same anchor as JSON, is for people.
fn anchor_key(t: &crate::storage::Target, a: &Anchor) -> object_store::path::Path {
    t.key(&format!(
        "{ANCHOR_DIR}/{}/{:020}.{}.{}.{}.{}.json",
        a.node,
        a.seq,
        a.chain,
        a.mac,
        a.anchor_mac,
        a.at.replace(':', "_")
    ))
}

/// The anchor an object's name holds ([`anchor_key`]); `None` for a name of another form (the
/// first anchors were `<seq>.json`, read whole).
fn anchor_from_key(key: &str) -> Option<Anchor> {
    let mut parts = key.rsplit('/');
    let file = parts.next()?.strip_suffix(".json")?;
    let node = parts.next()?;
    let mut fields = file.splitn(5, '.');
    let seq = fields.next()?;
    let (chain, mac, anchor_mac, at) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if seq.len() != 20 || !hex_of(chain, 32) || !hex_of(mac, 64) || !hex_of(anchor_mac, 64) || at.contains(':') {
        return None;
    }
    Some(Anchor {
        seq: seq.parse().ok()?,
        mac: mac.to_string(),
        at: at.replace('_', ":"),
        node: node.to_string(),
        chain: chain.to_string(),
        anchor_mac: anchor_mac.to_string(),
        object: None,
    })
}

/// Anchors the head to every storage target and to the journal; `None` when the log is empty or
/// its head has not moved since the last anchor. A target that cannot be written is an error
/// (after the others were tried; the journal line is written whatever happens), and the anchor
/// is tried again at the next call.
pub fn anchor_to_store(
    storage: &crate::storage::Storage,
    log: &AuditLog,
    node: &str,
) -> Result<Option<Anchor>, AuditError> {
    let Some(anchor) = log.next_anchor(node)? else { return Ok(None) };
    crate::log::info(&anchor.journal_line());
    let body = serde_json::to_vec_pretty(&anchor.to_json()).unwrap_or_default();
    let failed: Vec<String> = storage.block_on(async {
        let mut failed = Vec::new();
        for t in storage.targets() {
            if let Err(e) = t.put(&anchor_key(t, &anchor), body.clone()).await {
                failed.push(e.to_string());
            }
        }
        failed
    });
    if !failed.is_empty() {
        return Err(AuditError::Anchor(failed.join("; ")));
    }
    log.anchored.store(anchor.seq, Ordering::Relaxed);
    Ok(Some(anchor))
}

/// Anchors the head to the journal alone (no storage configured); `None` as for
/// [`anchor_to_store`].
pub fn anchor_to_journal(log: &AuditLog, node: &str) -> Result<Option<Anchor>, AuditError> {
    let Some(anchor) = log.next_anchor(node)? else { return Ok(None) };
    crate::log::info(&anchor.journal_line());
    log.anchored.store(anchor.seq, Ordering::Relaxed);
    Ok(Some(anchor))
}

/// What the anchor folders of the storage targets hold.
#[derive(Debug, Clone, Default)]
pub struct StoredAnchors {
    /// Every anchor (the same anchor in two targets counted once); an object named like an
    /// anchor whose body is not one comes back as an anchor that fails its check, naming the
    /// object.
    pub anchors: Vec<Anchor>,
    /// Objects whose names are not anchors' names at all (the first [`MAX_PROBLEMS`]).
    pub unknown_objects: Vec<String>,
    /// How many such objects there are in all.
    pub unknown_objects_total: u64,
}

impl StoredAnchors {
    /// The anchors to check, and what else the listing found, for [`verify_with`].
    pub fn split(self) -> (Vec<Anchor>, Findings) {
        let found = Findings {
            unknown_objects: self.unknown_objects,
            unknown_objects_total: self.unknown_objects_total,
            ..Findings::default()
        };
        (self.anchors, found)
    }
}

/// Every anchor in every target ([`load_anchor_objects`]), without the objects that are not
/// anchors.
pub fn load_anchors(storage: &crate::storage::Storage) -> Result<Vec<Anchor>, AuditError> {
    load_anchor_objects(storage).map(|s| s.anchors)
}

/// Every anchor in every target (the same anchor in two targets counted once), from the
/// listing's names; only objects named otherwise are read. An object named like an anchor that
/// is not one is returned as one that fails its check (naming the object), and an object whose
/// name is not an anchor's is listed apart, so tampering with anchors shows.
pub fn load_anchor_objects(storage: &crate::storage::Storage) -> Result<StoredAnchors, AuditError> {
    storage.block_on(async {
        let mut found = StoredAnchors::default();
        let mut seen: std::collections::HashSet<Anchor> = std::collections::HashSet::new();
        for t in storage.targets() {
            let listed = t.list(ANCHOR_DIR).await.map_err(|e| AuditError::Anchor(e.to_string()))?;
            for m in listed {
                let name = m.location.as_ref();
                if let Some(a) = anchor_from_key(name) {
                    if seen.insert(a.clone()) {
                        found.anchors.push(a);
                    }
                    continue;
                }
                let Some(seq) = seq_from_name(name) else {
                    // `.hidden`, `stray.txt`: not an anchor's name, not read.
                    found.unknown_objects_total += 1;
                    if found.unknown_objects.len() < MAX_PROBLEMS {
                        found.unknown_objects.push(m.location.to_string());
                    }
                    continue;
                };
                let bytes = match t.get(&m.location).await {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(AuditError::Anchor(e.to_string())),
                };
                let mut a = match serde_json::from_slice::<Value>(&bytes) {
                    Ok(v) => Anchor::from_json(&v),
                    Err(_) => Anchor::from_json(&Value::Null),
                };
                if a.seq == 0 {
                    a.seq = seq;
                }
                a.object = Some(m.location.to_string());
                if seen.insert(a.clone()) {
                    found.anchors.push(a);
                }
            }
        }
        found.anchors.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.node.cmp(&b.node)));
        Ok(found)
    })
}

/// The seq an object's name starts with (`<seq>.json`, `<seq>.<chain>….json`); `None` when the
/// name is not an anchor's at all.
fn seq_from_name(name: &str) -> Option<u64> {
    let file = name.rsplit('/').next()?.strip_suffix(".json")?;
    let seq = file.split('.').next()?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(seq.parse().unwrap_or(u64::MAX))
}

/// The anchors of this log that an earlier log left in storage, when this process began a new,
/// empty log ([`AuditLog::started_empty`]): what `serve` warns about (`None` when it did not
/// start empty or nothing of this node was found). Only the listing of this node's folder is
/// read.
pub fn earlier_anchors(
    storage: &crate::storage::Storage,
    log: &AuditLog,
    node: &str,
) -> Result<Option<EarlierAnchors>, AuditError> {
    if !log.started_empty {
        return Ok(None);
    }
    let ours = chain_id(&log.key);
    storage.block_on(async {
        let mut out = EarlierAnchors::default();
        for t in storage.targets() {
            let listed =
                t.list(&format!("{ANCHOR_DIR}/{node}")).await.map_err(|e| AuditError::Anchor(e.to_string()))?;
            for m in listed {
                let Some(a) = anchor_from_key(m.location.as_ref()) else { continue };
                if a.chain == ours {
                    if a.signed_by(&log.key) && out.this_chain.as_ref().is_none_or(|l| a.seq > l.seq) {
                        out.this_chain = Some(a);
                    }
                } else {
                    out.other_chains += 1;
                }
            }
        }
        Ok((out.this_chain.is_some() || out.other_chains > 0).then_some(out))
    })
}

/// What [`earlier_anchors`] found.
#[derive(Debug, Clone, Default)]
pub struct EarlierAnchors {
    /// The latest anchor of this log's chain (same key): its entries are gone.
    pub this_chain: Option<Anchor>,
    /// Anchors by this node of other chains (a log with another key: the key was made anew).
    pub other_chains: u64,
}

/// What `--journal` output held: its anchors and the `audit anchor: seq` lines that are not
/// anchors.
#[derive(Debug, Clone, Default)]
pub struct JournalAnchors {
    /// The anchors, each once.
    pub anchors: Vec<Anchor>,
    /// How many `audit anchor: seq …` lines could not be read as an anchor.
    pub unreadable: u64,
    /// The first of them ([`MAX_PROBLEMS`]): line number and text (clipped).
    pub examples: Vec<(u64, String)>,
}

/// Reads journal output (`journalctl -u callvault -o cat`; any prefix on a line). Bytes that are
/// not UTF-8 do not stop it: such a line is read as far as it goes.
pub fn read_journal(mut reader: impl std::io::BufRead) -> std::io::Result<JournalAnchors> {
    let mut out = JournalAnchors::default();
    let mut seen = std::collections::HashSet::new();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        n += 1;
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(a) = Anchor::from_journal_line(line) {
            if seen.insert(a.clone()) {
                out.anchors.push(a);
            }
        } else if line.contains(JOURNAL_MARK) {
            out.unreadable += 1;
            if out.examples.len() < MAX_PROBLEMS {
                out.examples.push((n, clip(line.to_string()).chars().take(300).collect()));
            }
        }
    }
    Ok(out)
}

/// What marks a journal line as meant to be an anchor.
const JOURNAL_MARK: &str = "audit anchor: seq ";

/// At most this many problems are listed by `verify`: the first in seq order; the rest are
/// counted (`problems_not_listed`). What `verify` holds stays bounded by the anchors and this.
pub const MAX_PROBLEMS: usize = 1000;

/// One thing `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The entry (or the anchor's seq) concerned, as stored (an entry's seq may have been made
    /// negative); `None` for the log as a whole, or an object that names no seq.
    pub seq: Option<i64>,
    /// `edited`, `removed`, `chain_broken`, `cut_off`, `anchor_mismatch`, `forged_anchor`,
    /// `unknown_object`, `bad_journal_line`, `damaged`, `wrong_key`.
    pub kind: &'static str,
    /// What it means, for a person.
    pub message: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Nothing wrong.
    pub ok: bool,
    /// Entries in the log.
    pub entries: u64,
    /// The first and last seq present.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Anchors compared with the log.
    pub anchors_checked: usize,
    /// Anchors of other logs (other recorders sharing the store, an earlier data directory),
    /// not compared.
    pub anchors_other_logs: usize,
    /// The latest genuine anchor.
    pub latest_anchor: Option<Anchor>,
    /// What is wrong, in seq order: the first [`MAX_PROBLEMS`].
    pub problems: Vec<Problem>,
    /// How many more problems there were than are listed.
    pub problems_not_listed: u64,
    /// `audit anchor: seq` lines of the journal output given that are not anchors; `None` when
    /// no journal was read.
    pub journal_lines_unreadable: Option<u64>,
}

impl VerifyReport {
    /// `{ok, entries, first_seq, last_seq, anchors_checked, anchors_other_logs, latest_anchor,
    /// problems, problems_not_listed}` (and `journal_lines_unreadable` when a journal was read).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "ok": self.ok,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "anchors_checked": self.anchors_checked,
            "anchors_other_logs": self.anchors_other_logs,
            "latest_anchor": self.latest_anchor.as_ref().map(|a| json!({"seq": a.seq, "at": a.at, "node": a.node})),
            "problems": self.problems.iter().map(|p| json!({"seq": p.seq, "kind": p.kind, "message": p.message})).collect::<Vec<_>>(),
            "problems_not_listed": self.problems_not_listed,
        });
        if let Some(n) = self.journal_lines_unreadable {
            v["journal_lines_unreadable"] = json!(n);
        }
        v
    }

    /// Every problem found, listed or not.
    pub fn problems_total(&self) -> u64 {
        self.problems.len() as u64 + self.problems_not_listed
    }
}

/// What was found beside the anchors, reported with the log's problems.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// From storage ([`load_anchor_objects`]).
    pub unknown_objects: Vec<String>,
    pub unknown_objects_total: u64,
    /// From the journal output given ([`read_journal`]): `None` when none was read.
    pub journal_unreadable: Option<u64>,
    pub journal_examples: Vec<(u64, String)>,
}

/// The first `cap` problems in seq order (then in the order found), and a count of the rest:
/// memory stays bounded however many there are.
struct Kept {
    cap: usize,
    heap: std::collections::BinaryHeap<Ranked>,
    found: u64,
    not_listed: u64,
}

struct Ranked(Option<i64>, u64, Problem);

impl PartialEq for Ranked {
    fn eq(&self, o: &Ranked) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Ranked) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked {
    fn cmp(&self, o: &Ranked) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

impl Kept {
    fn new(cap: usize) -> Kept {
        Kept { cap, heap: std::collections::BinaryHeap::new(), found: 0, not_listed: 0 }
    }

    fn push(&mut self, p: Problem) {
        let r = Ranked(p.seq, self.found, p);
        self.found += 1;
        if self.heap.len() < self.cap {
            self.heap.push(r);
        } else if self.heap.peek().is_some_and(|top| r < *top) {
            self.heap.pop();
            self.heap.push(r);
            self.not_listed += 1;
        } else {
            self.not_listed += 1;
        }
    }

    fn clear(&mut self) {
        self.heap.clear();
        self.not_listed = 0;
    }

    fn is_empty(&self) -> bool {
        self.heap.is_empty() && self.not_listed == 0
    }

    /// In seq order; the same problem found twice (the same cut by two anchors) kept once.
    fn into_problems(self) -> (Vec<Problem>, u64) {
        let mut out: Vec<Problem> = self.heap.into_sorted_vec().into_iter().map(|r| r.2).collect();
        out.dedup();
        (out, self.not_listed)
    }
}

/// What SQLite says when the file is not (or no longer) a sound database.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error { code: rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase, .. },
            _
        )
    )
}

/// How the log file was found.
enum LogState {
    /// With its tables (whatever they hold).
    Present,
    /// No file.
    Missing,
    /// A file without the entries table (0 bytes: truncated, or made anew by SQLite).
    NoTable { bytes: u64 },
    /// SQLite reports it damaged, after `read` entries were read.
    Damaged { message: String },
}

/// What streaming the log gathers.
struct Scan {
    kept: Kept,
    entries: u64,
    first_seq: Option<i64>,
    last_seq: Option<i64>,
    any_mac_ok: bool,
    stored_check: Option<String>,
    /// The previous entry's seq and mac.
    prev: Option<(i64, Vec<u8>)>,
    /// The macs of the entries anchors name, filled in as the log streams past.
    anchored: std::collections::HashMap<i64, Option<Vec<u8>>>,
}

/// One column as the bytes the mac covers: text or blob as stored, a number as its text, NULL as
/// nothing (so that whatever was put in a column is read, and fails its mac).
fn column_bytes(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
    })
}

/// Streams the whole log once, in seq order. A table missing is reported in `state`.
fn scan_log(conn: &Connection, key: &[u8; 32], s: &mut Scan) -> rusqlite::Result<bool> {
    // One read transaction: entries and key check from the same moment.
    conn.execute_batch("BEGIN")?;
    let mut tables = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
    let names: Vec<String> = tables.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    if names.iter().any(|n| n == "meta") {
        s.stored_check = conn
            .query_row("SELECT value FROM meta WHERE name = 'key_check'", [], |r| r.get::<_, String>(0))
            .optional()
            .unwrap_or(None);
    }
    if !names.iter().any(|n| n == "entries") {
        return Ok(false);
    }
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, target, source, result, detail, prev_mac, mac FROM entries ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let row = Row {
            seq: r.get::<_, i64>(0)?,
            fields: [
                column_bytes(r, 1)?,
                column_bytes(r, 2)?,
                column_bytes(r, 3)?,
                column_bytes(r, 4)?,
                column_bytes(r, 5)?,
                column_bytes(r, 6)?,
                column_bytes(r, 7)?,
                column_bytes(r, 8)?,
            ],
            mac: column_bytes(r, 9)?,
        };
        let mac_ok = row.mac_ok(key);
        s.any_mac_ok |= mac_ok;
        let seq = row.seq;
        s.entries += 1;
        s.first_seq.get_or_insert(seq);
        s.last_seq = Some(seq);
        if let Some(slot) = s.anchored.get_mut(&seq) {
            *slot = Some(row.mac.clone());
        }
        // Entries are numbered from 1: one moved below that is reported where it is, and
        // entry 1 is still expected after it.
        let expected = s.prev.as_ref().map_or(1, |(p, _)| p.saturating_add(1).max(1));
        let prev_mac = s.prev.as_ref().map_or(GENESIS.as_bytes(), |(_, m)| m.as_slice());
        if seq > expected {
            let n = seq - expected;
            let around = match &s.prev {
                Some((p, _)) => format!("the log goes from {p} to {seq}"),
                None => format!("the log starts at {seq}"),
            };
            s.kept.push(Problem {
                seq: Some(expected),
                kind: "removed",
                message: if n == 1 {
                    format!("entry {expected} was removed ({around})")
                } else {
                    format!("entries {expected} to {} ({n}) were removed ({around})", seq - 1)
                },
            });
        } else if row.fields[7] != prev_mac {
            s.kept.push(Problem {
                seq: Some(seq),
                kind: "chain_broken",
                message: format!(
                    "entry {seq} does not follow entry {}: an entry was replaced, inserted or moved here",
                    expected - 1
                ),
            });
        }
        if !mac_ok {
            s.kept.push(Problem {
                seq: Some(seq),
                kind: "edited",
                message: if seq < 1 {
                    format!("entry {seq} was changed after it was written (entries are numbered from 1; its mac does not match its content)")
                } else {
                    format!("entry {seq} was changed after it was written (its mac does not match its content)")
                },
            });
        }
        s.prev = Some((seq, row.mac));
    }
    Ok(true)
}

/// Checks the whole chain of `<data_dir>/audit.db` with `<data_dir>/audit.key`, and every anchor
/// against it. Load the anchors before calling (as `callvault audit verify` does): an anchor
/// written after the log was read would otherwise look like a cut.
pub fn verify(data_dir: &Path, anchors: &[Anchor]) -> Result<VerifyReport, AuditError> {
    verify_with(data_dir, anchors, &Findings::default())
}

/// [`verify`], with what was found beside the anchors (objects in the anchor folder that are
/// not anchors, journal lines that are not) reported as problems too.
pub fn verify_with(data_dir: &Path, anchors: &[Anchor], found: &Findings) -> Result<VerifyReport, AuditError> {
    verify_capped(data_dir, anchors, found, MAX_PROBLEMS)
}

fn verify_capped(
    data_dir: &Path,
    anchors: &[Anchor],
    found: &Findings,
    cap: usize,
) -> Result<VerifyReport, AuditError> {
    let path = data_dir.join(DB_FILE);
    let key_path = data_dir.join(KEY_FILE);
    let key = read_key(&key_path)?.ok_or_else(|| AuditError::Io {
        action: "cannot read",
        path: key_path.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the audit key is missing (restore it from its backup)",
        ),
    })?;
    let mut report = VerifyReport { journal_lines_unreadable: found.journal_unreadable, ..Default::default() };
    let ours = chain_id(&key);
    // What is held grows with the anchors, not with the log (a year of a busy API is millions
    // of entries), and with the problems up to `cap`.
    let mut s = Scan {
        kept: Kept::new(cap),
        entries: 0,
        first_seq: None,
        last_seq: None,
        any_mac_ok: false,
        stored_check: None,
        prev: None,
        anchored: anchors
            .iter()
            .filter(|a| a.chain.is_empty() || a.chain == ours)
            .map(|a| (i64::try_from(a.seq).unwrap_or(i64::MAX), None))
            .collect(),
    };
    let state = if path.exists() {
        let conn = open_read_only(&path)?;
        match scan_log(&conn, &key, &mut s) {
            Ok(true) => LogState::Present,
            Ok(false) => LogState::NoTable { bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) },
            Err(e) if is_damage(&e) => LogState::Damaged { message: e.to_string() },
            Err(e) => return Err(db_err(&path)(e)),
        }
    } else {
        LogState::Missing
    };
    report.entries = s.entries;
    report.first_seq = s.first_seq;
    report.last_seq = s.last_seq;

    let wrong_key = match &s.stored_check {
        Some(c) => *c != key_check(&key),
        None => s.entries > 0 && !s.any_mac_ok,
    };
    let mut kept = s.kept;
    if wrong_key {
        kept.clear();
        kept.push(Problem {
            seq: None,
            kind: "wrong_key",
            message: format!(
                "{} is not the key this log was written with (no entry verifies with it): restore the right key; nothing else can be checked",
                key_path.display()
            ),
        });
        (report.problems, report.problems_not_listed) = kept.into_problems();
        return Ok(report);
    }

    let last = s.last_seq.unwrap_or(0);
    let gone = match &state {
        LogState::Missing => Some(format!("{} is missing", path.display())),
        LogState::NoTable { bytes } => Some(format!("{} has no entries table ({bytes} bytes)", path.display())),
        LogState::Present | LogState::Damaged { .. } if s.entries == 0 => Some("the log is empty".to_string()),
        _ => None,
    };
    let damaged = matches!(state, LogState::Damaged { .. });
    let mut latest_beyond: Option<u64> = None;
    for a in anchors {
        // One without a chain is checked (and fails): made-up objects show.
        if !a.chain.is_empty() && a.chain != ours {
            report.anchors_other_logs += 1;
            continue;
        }
        report.anchors_checked += 1;
        let aseq = i64::try_from(a.seq).unwrap_or(i64::MAX);
        if !a.signed_by(&key) {
            kept.push(forged(a));
            continue;
        }
        if report.latest_anchor.as_ref().is_none_or(|l| a.seq > l.seq) {
            report.latest_anchor = Some(a.clone());
        }
        if aseq > last {
            if damaged {
                // Past what could be read: the damage is the problem, not a cut.
                latest_beyond = latest_beyond.max(Some(a.seq));
                continue;
            }
            kept.push(Problem {
                seq: Some(aseq),
                kind: "cut_off",
                message: match &gone {
                    Some(what) => format!(
                        "{what} but {} anchored seq {} at {}: every entry (1 to {}) was cut off",
                        a.node, a.seq, a.at, a.seq
                    ),
                    None => format!(
                        "the log ends at seq {last} but {} anchored seq {} at {}: entries {} to {} were cut off",
                        a.node,
                        a.seq,
                        a.at,
                        last + 1,
                        a.seq
                    ),
                },
            });
            continue;
        }
        match s.anchored.get(&aseq) {
            Some(Some(mac)) if *mac == a.mac.as_bytes() => {}
            Some(Some(_)) => kept.push(Problem {
                seq: Some(aseq),
                kind: "anchor_mismatch",
                message: format!(
                    "entry {} is not the one {} anchored at {}: the log was rewritten from there",
                    a.seq, a.node, a.at
                ),
            }),
            _ => kept.push(Problem {
                seq: Some(aseq),
                kind: "anchor_mismatch",
                message: format!("entry {} that {} anchored at {} is missing", a.seq, a.node, a.at),
            }),
        }
    }
    if let LogState::Damaged { message } = &state {
        kept.push(Problem {
            seq: None,
            kind: "damaged",
            message: format!(
                "{} is damaged (SQLite: {message}): {}{}; the file was changed outside SQLite or the disk failed",
                path.display(),
                match s.last_seq {
                    Some(l) => format!("entries after seq {l} cannot be read"),
                    None => "no entry can be read".to_string(),
                },
                match latest_beyond {
                    Some(n) => format!(" (anchors name entries up to seq {n})"),
                    None => String::new(),
                }
            ),
        });
    }
    for name in &found.unknown_objects {
        kept.push(Problem {
            seq: None,
            kind: "unknown_object",
            message: format!(
                "{name} in the anchor folder is not an anchor (its name is not an anchor's): someone wrote into {ANCHOR_DIR}"
            ),
        });
    }
    for _ in found.unknown_objects.len() as u64..found.unknown_objects_total {
        kept.not_listed += 1;
    }
    for (n, line) in &found.journal_examples {
        kept.push(Problem {
            seq: None,
            kind: "bad_journal_line",
            message: format!(
                "journal line {n} is marked as an anchor but is not one (a field missing or changed): {:?}",
                line
            ),
        });
    }
    kept.not_listed += found.journal_unreadable.unwrap_or(0).saturating_sub(found.journal_examples.len() as u64);
    if gone.is_some() && !matches!(state, LogState::Present | LogState::Damaged { .. }) && report.anchors_checked == 0 {
        // No anchor of this log: nothing says what it held.
        return Err(match state {
            LogState::Missing => AuditError::NoLog { dir: data_dir.to_path_buf() },
            _ => AuditError::Db {
                path: path.clone(),
                message: format!(
                    "no entries table in it ({} bytes), and no anchor of this log was found to tell what it held: the log was wiped, or this is not the daemon's data_dir",
                    std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
                ),
            },
        });
    }
    report.ok = kept.is_empty();
    (report.problems, report.problems_not_listed) = kept.into_problems();
    Ok(report)
}

/// An anchor that is not signed with this log's key, named by its object where it was read from
/// one.
fn forged(a: &Anchor) -> Problem {
    let seq = (a.seq > 0).then(|| i64::try_from(a.seq).unwrap_or(i64::MAX));
    let missing: Vec<&str> = [("mac", &a.mac), ("at", &a.at), ("node", &a.node), ("anchor_mac", &a.anchor_mac)]
        .into_iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(k, _)| k)
        .collect();
    let message = match &a.object {
        Some(object) if !missing.is_empty() => format!(
            "anchor object {object} is not an anchor (no {} in it): it was made or changed by someone else",
            missing.join(", ")
        ),
        Some(object) => format!(
            "anchor object {object} (seq {} from {:?} at {}) is not signed with this log's key: it was made or changed by someone else",
            a.seq, a.node, a.at
        ),
        None => format!(
            "anchor of seq {} from {:?} at {} is not signed with this log's key: it was made or changed by someone else",
            a.seq, a.node, a.at
        ),
    };
    Problem { seq, kind: "forged_anchor", message }
}

struct Row {
    seq: i64,
    /// at, actor, action, target, source, result, detail, prev_mac: the bytes stored.
    fields: [Vec<u8>; 8],
    mac: Vec<u8>,
}

impl Row {
    fn mac_ok(&self, key: &[u8; 32]) -> bool {
        if self.seq < 1 {
            return false;
        }
        let f = &self.fields;
        let bytes = canonical_entry(self.seq as u64, [&f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7]]);
        std::str::from_utf8(&self.mac).is_ok_and(|m| mac_ok(key, &bytes, m))
    }
}

/// A text field as `callvault audit list` prints it, its columns two spaces apart. Fields come
/// from clients (a request's path): control characters are escaped (a newline cannot forge a
/// line, an escape sequence cannot drive the terminal), and a field that could pass for more or
/// fewer columns is quoted (`"…"`, `"` and `\` escaped inside): one that is empty, is `-`,
/// starts with `"`, starts or ends with whitespace, or holds whitespace other than single
/// spaces.
pub fn list_field(s: &str) -> String {
    let escaped = escape_blanks(&s.escape_debug().to_string());
    let ambiguous = s.is_empty()
        || s == "-"
        || s.starts_with('"')
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace)
        || s.contains("  ")
        || s.chars().any(|c| (c.is_whitespace() && c != ' ') || looks_blank(c));
    if ambiguous { format!("\"{escaped}\"") } else { escaped }
}

/// An entry's detail for `audit list`'s text: its JSON, with characters that show as nothing
/// or as blanks escaped, quoted (as [`list_field`]) where it could pass for more columns.
pub fn list_detail(detail: &Value) -> String {
    let text = detail.to_string();
    if text.contains("  ") || text.chars().any(|c| c.is_whitespace() && c != ' ') {
        return list_field(&text);
    }
    // JSON escapes control characters already; not the invisible ones.
    escape_blanks(&text)
}

/// Characters a terminal shows as a blank or as nothing that are not whitespace (or that
/// `escape_debug` leaves as they are): on screen they could fake a column gap.
fn looks_blank(c: char) -> bool {
    matches!(c, '\u{115f}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{ffa0}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

fn escape_blanks(s: &str) -> String {
    s.chars().map(|c| if looks_blank(c) { format!("\\u{{{:04x}}}", c as u32) } else { c.to_string() }).collect()
}

/// Who runs a CLI command: `cli:<unix user name>` (or `cli:uid=N` when the name is unknown).
pub fn cli_actor() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    match user_name(uid) {
        Some(name) => format!("cli:{name}"),
        None => format!("cli:uid={uid}"),
    }
}

/// The name `/etc/passwd` gives a uid (no NSS: a directory service's users show as `uid=N`).
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, target: &str) -> Entry {
        Entry {
            actor: "control:uid=1000".into(),
            action: action.into(),
            target: target.into(),
            source: "control socket".into(),
            result: "ok".into(),
            detail: json!({"recording_id": format!("r-{target}")}),
        }
    }

    /// A log of `n` entries in a fresh directory.
    fn log_with(n: usize) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 0..n {
            log.append(entry("start", &format!("c-{i}"))).unwrap();
        }
        (dir, log)
    }

    /// SQL on the database as an attacker with write access would run it (triggers dropped).
    fn tamper(dir: &Path, sql: &str) {
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        conn.execute_batch("DROP TRIGGER IF EXISTS entries_no_update; DROP TRIGGER IF EXISTS entries_no_delete;")
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }

    fn kinds(r: &VerifyReport) -> Vec<(Option<i64>, &'static str)> {
        r.problems.iter().map(|p| (p.seq, p.kind)).collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (dir, log) = log_with(5);
        assert_eq!(log.head().unwrap().unwrap().0, 5);
        let a = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        assert_eq!(a.seq, 5);
        assert!(anchor_to_journal(&log, "node-a").unwrap().is_none(), "head did not move");
        let r = verify(dir.path(), &[a]).unwrap();
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!((r.entries, r.first_seq, r.last_seq, r.anchors_checked), (5, Some(1), Some(5), 1));
        assert_eq!(r.latest_anchor.as_ref().unwrap().seq, 5);
        assert_eq!(r.to_json()["ok"], true);
    }

    #[test]
    fn the_log_is_append_only_for_ordinary_sql() {
        let (dir, _log) = log_with(2);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        assert!(conn.execute("UPDATE entries SET actor = 'x' WHERE seq = 1", []).is_err());
        assert!(conn.execute("DELETE FROM entries WHERE seq = 1", []).is_err());
    }

    #[test]
    fn an_edited_entry_is_detected_at_its_seq() {
        let (dir, _log) = log_with(5);
        tamper(dir.path(), "UPDATE entries SET actor = 'someone-else' WHERE seq = 3");
        let r = verify(dir.path(), &[]).unwrap();
        assert!(!r.ok);
        assert_eq!(kinds(&r), vec![(Some(3), "edited")]);
        // A field shifted into its neighbour is an edit too.
        tamper(dir.path(), "UPDATE entries SET action = 'st', target = 'artc-1' WHERE seq = 2");
        assert!(kinds(&verify(dir.path(), &[]).unwrap()).contains(&(Some(2), "edited")));
    }

    #[test]
    fn a_removed_entry_is_detected() {
        let (dir, _log) = log_with(5);
        tamper(dir.path(), "DELETE FROM entries WHERE seq = 3");
        let r = verify(dir.path(), &[]).unwrap();
        assert_eq!(kinds(&r), vec![(Some(3), "removed")]);
        assert!(r.problems[0].message.contains("entry 3 was removed"), "{}", r.problems[0].message);
        // The first entries too.
        tamper(dir.path(), "DELETE FROM entries WHERE seq <= 2");
        let r = verify(dir.path(), &[]).unwrap();
        assert_eq!(kinds(&r), vec![(Some(1), "removed")]);
        assert!(
            r.problems[0].message.contains("entries 1 to 3 (3) were removed (the log starts at 4)"),
            "{}",
            r.problems[0].message
        );
    }

    #[test]
    fn a_removed_entry_renumbered_away_breaks_the_chain() {
        let (dir, _log) = log_with(5);
        // Remove 3 and move 4 and 5 down to close the gap.
        tamper(dir.path(), "DELETE FROM entries WHERE seq = 3; UPDATE entries SET seq = seq - 1 WHERE seq > 3;");
        let r = verify(dir.path(), &[]).unwrap();
        let k = kinds(&r);
        assert!(k.contains(&(Some(3), "chain_broken")), "{k:?}");
        assert!(k.contains(&(Some(3), "edited")) && k.contains(&(Some(4), "edited")), "{k:?}");
    }

    #[test]
    fn reordered_entries_are_detected() {
        let (dir, _log) = log_with(4);
        tamper(
            dir.path(),
            "UPDATE entries SET seq = 100 WHERE seq = 2; UPDATE entries SET seq = 2 WHERE seq = 3;
             UPDATE entries SET seq = 3 WHERE seq = 100;",
        );
        let k = kinds(&verify(dir.path(), &[]).unwrap());
        assert!(k.contains(&(Some(2), "edited")) && k.contains(&(Some(3), "edited")), "{k:?}");
    }

    #[test]
    fn a_cut_off_tail_is_detected_by_an_anchor() {
        let (dir, log) = log_with(6);
        let a = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        tamper(dir.path(), "DELETE FROM entries WHERE seq >= 5");
        let r = verify(dir.path(), std::slice::from_ref(&a)).unwrap();
        assert_eq!(kinds(&r), vec![(Some(6), "cut_off")]);
        assert!(r.problems[0].message.contains("entries 5 to 6 were cut off"), "{}", r.problems[0].message);
        // Without the anchor the shorter chain is whole: the honest limit.
        assert!(verify(dir.path(), &[]).unwrap().ok);
        // Everything cut, the database removed: the anchor still tells.
        std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
        let _ = std::fs::remove_file(dir.path().join("audit.db-wal"));
        let r = verify(dir.path(), &[a]).unwrap();
        assert_eq!(kinds(&r), vec![(Some(6), "cut_off")]);
        assert!(matches!(verify(dir.path(), &[]), Err(AuditError::NoLog { .. })));
    }

    #[test]
    fn a_rewritten_tail_is_detected_by_an_anchor() {
        let (dir, log) = log_with(3);
        let a = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        // Someone with the key could rewrite it; without it, the entry's own mac shows too.
        tamper(dir.path(), "UPDATE entries SET mac = prev_mac WHERE seq = 3");
        let k = kinds(&verify(dir.path(), &[a]).unwrap());
        assert!(k.contains(&(Some(3), "anchor_mismatch")) && k.contains(&(Some(3), "edited")), "{k:?}");
    }

    #[test]
    fn an_anchored_entry_removed_from_inside_the_log_is_named() {
        let (dir, log) = log_with(3);
        let a3 = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        log.append(entry("stop", "c-1")).unwrap();
        log.append(entry("stop", "c-2")).unwrap();
        let a5 = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        tamper(dir.path(), "DELETE FROM entries WHERE seq = 3");
        let r = verify(dir.path(), &[a3, a5]).unwrap();
        assert_eq!(kinds(&r), vec![(Some(3), "removed"), (Some(3), "anchor_mismatch")]);
        assert!(r.problems[1].message.contains("entry 3 that node-a anchored"), "{}", r.problems[1].message);
        assert_eq!(r.anchors_checked, 2);
        assert_eq!(r.latest_anchor.as_ref().map(|a| a.seq), Some(5));
    }

    #[test]
    fn a_forged_anchor_is_detected() {
        let (dir, log) = log_with(3);
        let mut a = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        a.seq = 10;
        let r = verify(dir.path(), &[a]).unwrap();
        assert_eq!(kinds(&r), vec![(Some(10), "forged_anchor")]);
        let made_up = Anchor::from_json(&json!({"seq": 2, "mac": "00", "node": "x"}));
        assert_eq!(kinds(&verify(dir.path(), &[made_up]).unwrap()), vec![(Some(2), "forged_anchor")]);
    }

    #[test]
    fn anchors_of_other_logs_are_left_aside() {
        let (dir, log) = log_with(3);
        let (_other_dir, other) = log_with(5);
        let theirs = anchor_to_journal(&other, "node-b").unwrap().unwrap();
        let ours = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        assert_ne!(theirs.chain, ours.chain);
        let r = verify(dir.path(), &[theirs.clone(), ours]).unwrap();
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!((r.anchors_checked, r.anchors_other_logs), (1, 1));
        // Its chain is covered by its mac: moved onto this log, it is a forgery.
        let moved = Anchor { chain: chain_id(&log.key), ..theirs };
        assert_eq!(kinds(&verify(dir.path(), &[moved]).unwrap()), vec![(Some(5), "forged_anchor")]);
    }

    #[test]
    fn a_wrong_key_is_named_as_such() {
        let (dir, log) = log_with(3);
        drop(log);
        std::fs::write(dir.path().join(KEY_FILE), [7u8; 32]).unwrap();
        let r = verify(dir.path(), &[]).unwrap();
        assert_eq!(kinds(&r), vec![(None, "wrong_key")]);
        assert!(matches!(AuditLog::open(dir.path()), Err(AuditError::WrongKey { .. })));
        // And with the key check gone, that no entry verifies still says so.
        tamper(dir.path(), "DELETE FROM meta");
        assert_eq!(kinds(&verify(dir.path(), &[]).unwrap()), vec![(None, "wrong_key")]);
    }

    #[test]
    fn a_missing_key_over_entries_is_refused() {
        let (dir, log) = log_with(1);
        drop(log);
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let e = AuditLog::open(dir.path()).unwrap_err();
        assert!(matches!(e, AuditError::KeyMissing { entries: 1, .. }), "{e}");
        assert!(e.to_string().contains("restore the key"), "{e}");
        assert!(!dir.path().join(KEY_FILE).exists(), "no new key made");
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, log) = log_with(1);
        for f in [KEY_FILE, DB_FILE] {
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        // A key others may read is refused, not used.
        drop(log);
        std::fs::set_permissions(dir.path().join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        let Err(e) = AuditLog::open(dir.path()) else { panic!("a key others may read was used") };
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap().len(), 32);
    }

    #[test]
    fn two_handles_appending_at_once_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::sync::Arc::new(AuditLog::open(dir.path()).unwrap());
        let b = std::sync::Arc::new(AuditLog::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = if t % 2 == 0 { a.clone() } else { b.clone() };
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.append(entry("play", &format!("t{t}-{i}"))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = verify(dir.path(), &[]).unwrap();
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!((r.entries, r.last_seq), (100, Some(100)));
    }

    #[test]
    fn read_filters_and_pages() {
        let (_dir, log) = log_with(0);
        log.append(entry("start", "c-1")).unwrap();
        log.append(entry("stop", "c-1")).unwrap();
        log.append(Entry { actor: "alice".into(), ..entry("play", "r-9") }).unwrap();
        let all = log.read(&ReadQuery::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0]["seq"], 1);
        assert_eq!(all[0]["detail"]["recording_id"], "r-c-1");
        let q = |f: fn(&mut ReadQuery)| {
            let mut q = ReadQuery::default();
            f(&mut q);
            log.read(&q).unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(q(|q| q.target = Some("c-1".into())), vec![1, 2]);
        assert_eq!(q(|q| q.actor = Some("alice".into())), vec![3]);
        assert_eq!(q(|q| q.action = Some("stop".into())), vec![2]);
        assert_eq!(q(|q| q.after_seq = Some(1)), vec![2, 3]);
        assert_eq!(q(|q| q.limit = 1), vec![1]);
        assert_eq!(q(|q| q.since = Some("2000-01-01".into())), vec![1, 2, 3]);
        assert_eq!(q(|q| q.until = Some("2000-01-01T00:00:00+02:00".into())), Vec::<u64>::new());
        assert!(matches!(
            log.read(&ReadQuery { since: Some("yesterday".into()), ..Default::default() }),
            Err(AuditError::BadQuery(_))
        ));
    }

    #[test]
    fn times_are_normalised() {
        assert_eq!(normalize_time("2026-12-04").unwrap(), "2026-12-04T00:00:00.000Z");
        assert_eq!(normalize_time("2026-12-04T10:00:00Z").unwrap(), "2026-12-04T10:00:00.000Z");
        assert_eq!(normalize_time("2026-12-04T10:00:00.5Z").unwrap(), "2026-12-04T10:00:00.500Z");
        assert_eq!(normalize_time("2026-12-04T10:00+01:00").unwrap(), "2026-12-04T09:00:00.000Z");
        assert_eq!(normalize_time("2026-01-01T00:30:00-01:00").unwrap(), "2026-01-01T01:30:00.000Z");
        assert_eq!(normalize_time("2024-02-29T23:59:59Z").unwrap(), "2024-02-29T23:59:59.000Z");
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2026-12-04T10",
            "2026-12-04T10:00:00",
            "2026-12-04T25:00Z",
            "2026-13-45",
            "2026-02-30",
            "2026-02-29",
            "2026-04-31T10:00:00Z",
            "2026-12-04T25:61:00Z",
            "2026-12-04T10:61Z",
            "9999-99-99",
        ] {
            assert!(normalize_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn journal_lines_round_trip() {
        let (dir, log) = log_with(2);
        let a = anchor_to_journal(&log, "rec-1").unwrap().unwrap();
        let line = format!("Dec 04 10:00:00 host callvault[12]: 2026-12-04T10:00:00.000Z INFO {}", a.journal_line());
        assert_eq!(Anchor::from_journal_line(&line), Some(a.clone()));
        assert_eq!(Anchor::from_journal_line("INFO something else"), None);
        assert!(verify(dir.path(), &[a]).unwrap().ok);
    }

    #[test]
    fn large_fields_are_bounded() {
        let (dir, log) = log_with(0);
        let big = "x".repeat(10_000);
        log.append(Entry { actor: big.clone(), detail: json!({"q": big}), ..entry("search", "") }).unwrap();
        let e = &log.read(&ReadQuery::default()).unwrap()[0];
        assert!(e["actor"].as_str().unwrap().len() <= MAX_FIELD + 3);
        assert_eq!(e["detail"]["truncated"], true);
        assert!(verify(dir.path(), &[]).unwrap().ok);
    }

    #[test]
    fn anchors_go_to_every_target_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let cfg = crate::config::Config { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let storage = crate::storage::Storage::open(&cfg).unwrap();
        assert!(anchor_to_store(&storage, &log, "n1").unwrap().is_none(), "empty log: nothing to anchor");
        log.append(entry("start", "c-1")).unwrap();
        let a1 = anchor_to_store(&storage, &log, "n1").unwrap().unwrap();
        assert!(anchor_to_store(&storage, &log, "n1").unwrap().is_none());
        log.append(entry("stop", "c-1")).unwrap();
        let a2 = anchor_to_store(&storage, &log, "n1").unwrap().unwrap();
        let loaded = load_anchors(&storage).unwrap();
        assert_eq!(loaded, vec![a1.clone(), a2.clone()]);
        let anchors = cfg.archive_dir(&cfg.storage.primary).join(format!("{ANCHOR_DIR}/n1"));
        let file =
            anchors.join(anchor_key(storage.targets().next().unwrap(), &a2).as_ref().rsplit('/').next().unwrap());
        assert!(file.exists(), "{} in {:?}", file.display(), std::fs::read_dir(&anchors).unwrap().collect::<Vec<_>>());
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(&format!("{:020}.{}.{}.{}.", 2, a2.chain, a2.mac, a2.anchor_mac)), "{name}");
        assert_eq!(serde_json::from_slice::<Value>(&std::fs::read(&file).unwrap()).unwrap(), a2.to_json());
        // The listing is enough: a body gone bad is not read, the name holds the anchor.
        std::fs::write(&file, b"not json").unwrap();
        assert_eq!(load_anchors(&storage).unwrap(), vec![a1.clone(), a2.clone()]);
        assert!(verify(dir.path(), &load_anchors(&storage).unwrap()).unwrap().ok);
        // A name changed to say another seq or head fails the anchor's check.
        let renamed = name.replacen(&format!("{:020}", 2), &format!("{:020}", 7), 1);
        std::fs::rename(&file, anchors.join(&renamed)).unwrap();
        let r = verify(dir.path(), &load_anchors(&storage).unwrap()).unwrap();
        assert_eq!(kinds(&r), vec![(Some(7), "forged_anchor")]);
        std::fs::rename(anchors.join(&renamed), &file).unwrap();
        // The first form, `<seq>.json`, is still read (its body); one that is not an anchor fails.
        std::fs::write(anchors.join(format!("{:020}.json", 1)), serde_json::to_vec(&a1.to_json()).unwrap()).unwrap();
        assert_eq!(load_anchors(&storage).unwrap(), vec![a1.clone(), a2.clone()], "the same anchor counted once");
        std::fs::write(anchors.join(format!("{:020}.json", 9)), b"not json").unwrap();
        let r = verify(dir.path(), &load_anchors(&storage).unwrap()).unwrap();
        assert_eq!(kinds(&r), vec![(Some(9), "forged_anchor")]);
    }

    #[test]
    fn an_anchor_survives_its_name() {
        let a = Anchor::sign(
            &[3u8; 32],
            42,
            "ab".repeat(32),
            "2026-12-04T12:00:00.123Z".into(),
            "rec-1.example".into(),
            "cd".repeat(16),
        );
        let cfg = crate::config::Config::default();
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config { data_dir: dir.path().to_path_buf(), ..cfg };
        let storage = crate::storage::Storage::open(&cfg).unwrap();
        let key = anchor_key(storage.targets().next().unwrap(), &a);
        assert_eq!(anchor_from_key(key.as_ref()), Some(a.clone()), "{key}");
        for bad in [
            "x/00000000000000000042.json",
            "x/42.cd.ab.ef.2026.json",
            &key.as_ref().replace(".json", ".txt"),
            &key.as_ref().replacen("00000000000000000042", "0000000000000000004x", 1),
        ] {
            assert_eq!(anchor_from_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn problems_are_capped_in_seq_order_and_counted() {
        let (dir, log) = log_with(3);
        let a = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        // 1500 made-up entries after the real ones: each one edited (its mac is not a mac).
        tamper(
            dir.path(),
            "WITH RECURSIVE n(i) AS (SELECT 4 UNION ALL SELECT i + 1 FROM n WHERE i < 1503)
             INSERT INTO entries SELECT i, 'x', 'x', 'x', 'x', 'x', 'x', '{}', 'x', 'x' FROM n",
        );
        let r = verify(dir.path(), std::slice::from_ref(&a)).unwrap();
        assert!(!r.ok);
        assert_eq!(r.problems.len(), MAX_PROBLEMS);
        // Entry 4 breaks the chain and is edited; every later one is edited: 1501 in all.
        assert_eq!(r.problems_total(), 1501);
        assert_eq!(r.problems_not_listed, 501);
        assert_eq!((r.problems[0].seq, r.problems[0].kind), (Some(4), "chain_broken"));
        assert!(r.problems.windows(2).all(|w| w[0].seq <= w[1].seq), "in seq order");
        assert_eq!(r.problems.last().unwrap().seq, Some(4 + 998));
        let v = r.to_json();
        assert_eq!(v["problems_not_listed"], 501);
        assert_eq!(v["problems"].as_array().unwrap().len(), MAX_PROBLEMS);
        // Problems found out of seq order (anchors after the log) still keep the first ones.
        let mut cut = a.clone();
        cut.seq = 2;
        let r = verify_capped(dir.path(), &[a, cut], &Findings::default(), 3).unwrap();
        assert_eq!(kinds(&r), vec![(Some(2), "forged_anchor"), (Some(4), "chain_broken"), (Some(4), "edited")]);
        assert_eq!(r.problems_not_listed, 1499);
        // Nothing wrong: nothing not listed.
        let (dir, _log) = log_with(2);
        let r = verify(dir.path(), &[]).unwrap();
        assert!(r.ok && r.problems_not_listed == 0 && r.to_json()["problems_not_listed"] == 0);
    }

    #[test]
    fn a_wiped_log_is_cut_off_where_anchors_tell() {
        let (dir, log) = log_with(4);
        let a = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        drop(log);
        // Truncated to 0 bytes (its WAL gone with it).
        for f in ["audit.db-wal", "audit.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
        let r = verify(dir.path(), std::slice::from_ref(&a)).unwrap();
        assert!(!r.ok);
        assert_eq!(kinds(&r), vec![(Some(4), "cut_off")]);
        let m = &r.problems[0].message;
        assert!(m.contains("has no entries table (0 bytes)") && m.contains("every entry (1 to 4) was cut off"), "{m}");
        // Without an anchor: cannot tell what it held, said so (not "no such table").
        let e = verify(dir.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("no entries table") && e.contains("no anchor of this log"), "{e}");
        assert!(!e.contains("no such table"), "{e}");
        // The tables dropped, the file kept.
        let (dir, log) = log_with(2);
        let a = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        tamper(dir.path(), "DROP TABLE entries; DROP TABLE meta;");
        assert_eq!(kinds(&verify(dir.path(), &[a]).unwrap()), vec![(Some(2), "cut_off")]);
    }

    #[test]
    fn a_damaged_file_is_a_problem_not_an_error() {
        let (dir, log) = log_with(3);
        let a = anchor_to_journal(&log, "node-a").unwrap().unwrap();
        drop(log);
        std::fs::write(
            dir.path().join(DB_FILE),
            b"this is not a database, it is what someone wrote over it".repeat(100),
        )
        .unwrap();
        let r = verify(dir.path(), &[]).unwrap();
        assert!(!r.ok);
        assert_eq!(kinds(&r), vec![(None, "damaged")]);
        assert!(r.problems[0].message.contains("no entry can be read"), "{}", r.problems[0].message);
        let r = verify(dir.path(), &[a]).unwrap();
        assert_eq!(kinds(&r), vec![(None, "damaged")]);
        assert!(r.problems[0].message.contains("anchors name entries up to seq 3"), "{}", r.problems[0].message);
    }

    #[test]
    fn a_detail_that_is_not_text_is_an_edit() {
        let (dir, log) = log_with(3);
        tamper(
            dir.path(),
            "UPDATE entries SET detail = x'80ff' WHERE seq = 2; UPDATE entries SET at = 5 WHERE seq = 3",
        );
        let r = verify(dir.path(), &[]).unwrap();
        assert_eq!(kinds(&r), vec![(Some(2), "edited"), (Some(3), "edited")]);
        // And it can still be listed.
        let all = log.read(&ReadQuery::default()).unwrap();
        assert_eq!((all[1]["detail"].as_str(), all[2]["at"].as_str()), (Some("\u{fffd}\u{fffd}"), Some("5")));
        let r = read_dir(dir.path(), &ReadQuery::default()).unwrap();
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn negative_seqs_are_reported_as_they_are() {
        let (dir, _log) = log_with(3);
        tamper(dir.path(), "UPDATE entries SET seq = -5 WHERE seq = 1");
        let r = verify(dir.path(), &[]).unwrap();
        assert_eq!(kinds(&r), vec![(Some(-5), "edited"), (Some(1), "removed")]);
        assert!(r.problems[0].message.starts_with("entry -5 was changed"), "{}", r.problems[0].message);
        assert!(
            r.problems[1].message.contains("entry 1 was removed (the log goes from -5 to 2)"),
            "{}",
            r.problems[1].message
        );
        assert_eq!((r.first_seq, r.to_json()["problems"][0]["seq"].as_i64()), (Some(-5), Some(-5)));
    }

    #[test]
    fn odd_objects_in_the_anchor_folder_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let cfg = crate::config::Config { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let storage = crate::storage::Storage::open(&cfg).unwrap();
        log.append(entry("start", "c-1")).unwrap();
        anchor_to_store(&storage, &log, "n1").unwrap().unwrap();
        let anchors = cfg.archive_dir(&cfg.storage.primary).join(format!("{ANCHOR_DIR}/n1"));
        std::fs::write(anchors.join(".hidden"), b"x").unwrap();
        std::fs::write(anchors.join("stray.txt"), b"x").unwrap();
        // Named like an anchor of the first form, but lacking fields.
        std::fs::write(anchors.join(format!("{:020}.json", 5)), br#"{"seq": 5, "mac": "00"}"#).unwrap();
        std::fs::write(anchors.join(format!("{:020}.json", 6)), br#"{"node": "n1"}"#).unwrap();
        let stored = load_anchor_objects(&storage).unwrap();
        assert_eq!(stored.anchors.len(), 3);
        assert_eq!(stored.unknown_objects_total, 2);
        let found = Findings {
            unknown_objects: stored.unknown_objects.clone(),
            unknown_objects_total: stored.unknown_objects_total,
            ..Default::default()
        };
        let r = verify_with(dir.path(), &stored.anchors, &found).unwrap();
        assert!(!r.ok);
        let k = kinds(&r);
        assert_eq!(
            k,
            vec![
                (None, "unknown_object"),
                (None, "unknown_object"),
                (Some(5), "forged_anchor"),
                (Some(6), "forged_anchor")
            ]
        );
        let text: Vec<&str> = r.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(text.iter().any(|m| m.contains("n1/.hidden") && m.contains("is not an anchor")), "{text:?}");
        assert!(text.iter().any(|m| m.contains("n1/stray.txt")), "{text:?}");
        assert!(
            text[2].contains(&format!("n1/{:020}.json", 5)) && text[2].contains("no at, node, anchor_mac"),
            "{text:?}"
        );
        assert!(text[3].contains(&format!("n1/{:020}.json", 6)), "{text:?}");
        assert!(!text.iter().any(|m| m.contains("from \"\"")), "{text:?}");
        assert_eq!(load_anchors(&storage).unwrap().len(), 3);
    }

    #[test]
    fn garbled_journal_lines_are_counted_and_reported() {
        let (dir, log) = log_with(2);
        let a = anchor_to_journal(&log, "rec-1").unwrap().unwrap();
        let good = format!("callvault[1]: INFO {}", a.journal_line());
        let garbled = good.replacen(&format!("seq {}", a.seq), "seq 2x", 1);
        let mut input = format!(
            "{good}\n{garbled}\nINFO audit trail: anchor not stored (tried again later): audit anchor: store down\n{good}\n"
        )
        .into_bytes();
        input.extend_from_slice(b"audit anchor: seq \xff\xfe head\n");
        let read = read_journal(std::io::Cursor::new(input)).unwrap();
        assert_eq!((read.anchors.len(), read.unreadable), (1, 2));
        assert_eq!(read.examples[0].0, 2);
        let found = Findings {
            journal_unreadable: Some(read.unreadable),
            journal_examples: read.examples.clone(),
            ..Default::default()
        };
        let r = verify_with(dir.path(), &read.anchors, &found).unwrap();
        assert!(!r.ok);
        assert_eq!(kinds(&r), vec![(None, "bad_journal_line"), (None, "bad_journal_line")]);
        assert!(r.problems[0].message.contains("journal line 2"), "{}", r.problems[0].message);
        assert_eq!(r.to_json()["journal_lines_unreadable"], 2);
        // No journal read: no count in the JSON.
        assert!(verify(dir.path(), &[a]).unwrap().to_json().get("journal_lines_unreadable").is_none());
    }

    #[test]
    fn a_log_begun_anew_over_its_anchors_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let storage = crate::storage::Storage::open(&cfg).unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        assert!(log.started_empty());
        assert!(earlier_anchors(&storage, &log, "n1").unwrap().is_none(), "a new log, nothing before it");
        for i in 0..3 {
            log.append(entry("start", &format!("c-{i}"))).unwrap();
        }
        let a = anchor_to_store(&storage, &log, "n1").unwrap().unwrap();
        drop(log);
        let reopened = AuditLog::open(dir.path()).unwrap();
        assert!(!reopened.started_empty());
        assert!(earlier_anchors(&storage, &reopened, "n1").unwrap().is_none());
        drop(reopened);
        // `rm audit.db*`, the key kept.
        for f in [DB_FILE, "audit.db-wal", "audit.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        let anew = AuditLog::open(dir.path()).unwrap();
        assert!(anew.started_empty());
        let found = earlier_anchors(&storage, &anew, "n1").unwrap().unwrap();
        assert_eq!((found.this_chain, found.other_chains), (Some(a.clone()), 0));
        assert!(earlier_anchors(&storage, &anew, "other-node").unwrap().is_none());
        // And verify says so, once the new log is there.
        anew.append(entry("serve.start", "")).unwrap();
        assert_eq!(kinds(&verify(dir.path(), &load_anchors(&storage).unwrap()).unwrap()), vec![(Some(3), "cut_off")]);
        // The key removed too: another chain by this node.
        drop(anew);
        for f in [DB_FILE, "audit.db-wal", "audit.db-shm", KEY_FILE] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        let fresh = AuditLog::open(dir.path()).unwrap();
        let found = earlier_anchors(&storage, &fresh, "n1").unwrap().unwrap();
        assert_eq!((found.this_chain, found.other_chains), (None, 1));
    }

    #[test]
    fn list_fields_cannot_pass_for_columns() {
        assert_eq!(list_field("c-1"), "c-1");
        assert_eq!(list_field("control socket"), "control socket");
        assert_eq!(list_field("/api/a  b"), "\"/api/a  b\"");
        assert_eq!(list_field(" x"), "\" x\"");
        assert_eq!(list_field("x "), "\"x \"");
        assert_eq!(list_field(""), "\"\"");
        assert_eq!(list_field("-"), "\"-\"");
        assert_eq!(list_field("a\tb"), "\"a\\tb\"");
        assert_eq!(list_field("a\u{3000}b"), "\"a\\u{3000}b\"");
        assert_eq!(list_field("say \"hi\"  now"), "\"say \\\"hi\\\"  now\"");
        assert_eq!(list_field("line\nforged"), "\"line\\nforged\"");
        // Characters that show as blanks or nothing, in a field and in the detail.
        assert_eq!(list_field("/api/b\u{2800}\u{2800}b"), "\"/api/b\\u{2800}\\u{2800}b\"");
        assert_eq!(list_field("a\u{202e}b"), "\"a\\u{202e}b\"");
        assert_eq!(list_detail(&json!({"q": "x\u{200b}y"})), "{\"q\":\"x\\u{200b}y\"}");
        assert_eq!(list_detail(&json!({"q": "a"})), "{\"q\":\"a\"}");
        let spoof = list_detail(&json!({"agent": "x\"}  127.0.0.1:1"}));
        assert!(spoof.starts_with('"') && spoof.ends_with('"'), "a run of spaces in the detail is quoted: {spoof}");
    }
}
