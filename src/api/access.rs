//! Who may use the HTTP API, and for what: users, roles, scopes, API tokens and signed playback
//! links (docs/access.md).
//!
//! Everything lives in `<data_dir>/access.db` (SQLite, WAL, mode 0600), which the daemon's API
//! and the `callvault user` / `callvault token` commands open at the same time, and in
//! `<data_dir>/link.key` (32 random bytes, mode 0600), the HMAC key of signed links.
//!
//! Tokens are stored only as the SHA-256 of the whole token. Their secret is 256 random bits,
//! so nobody can guess one or search for it from the hash: the slow, salted hashes passwords need
//! (chosen by people, so guessable) would add cost and nothing else.

use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, digest, hmac, rand};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::engine::call::rfc3339;
use crate::seal::format::{hex, unhex};

/// 2: users have a `uid`.
const SCHEMA_VERSION: i64 = 2;
/// What every API token starts with (so secret scanners and people can tell what it is).
pub const TOKEN_PREFIX: &str = "cvt_";
/// Hex characters of a token's public id.
const ID_LEN: usize = 12;
/// Base64url characters (no padding) of 32 bytes: a token's secret, and a link's MAC.
const B64_32_LEN: usize = 43;
/// How long a signed link lasts unless asked otherwise.
pub const LINK_TTL_DEFAULT: Duration = Duration::from_secs(900);
/// `last_used_at` is written at most this often: a busy client must not turn every request into
/// a database write.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// Domain separation of link MACs from any other use of the key. v2 binds the user's `uid`, so
/// v1 links (which did not) stop working with the upgrade.
const LINK_CONTEXT: &str = "callvault-link-v2";

/// `<data_dir>/access.db`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("access.db")
}

/// `<data_dir>/link.key`.
pub fn link_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("link.key")
}

/// What a user is for. Admins manage but do not listen (separation of duties); auditors read the
/// audit trail and verify recordings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Supervisor,
    Qa,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Supervisor, Role::Qa, Role::Auditor];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Supervisor => "supervisor",
            Role::Qa => "qa",
            Role::Auditor => "auditor",
        }
    }

    /// `admin`, `supervisor`, `qa` or `auditor`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The permission matrix (docs/access.md).
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => matches!(p, Search | Read | Verify | Hold | Delete),
            Role::Supervisor => matches!(p, Search | Read | Play | Download | Sample | Link),
            Role::Qa => matches!(p, Search | Read | Play | Sample | Link),
            Role::Auditor => matches!(p, Verify | AuditRead),
        }
    }

    /// Whether the role sees only the recordings of its scope (the others see all).
    pub fn scoped(self) -> bool {
        matches!(self, Role::Supervisor | Role::Qa)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing the API does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Find recordings.
    Search,
    /// A recording's metadata.
    Read,
    /// Listen (streamed audio).
    Play,
    /// The recording's file.
    Download,
    /// Draw recordings at random for quality review.
    Sample,
    /// Check a recording's integrity and signature.
    Verify,
    /// Place and release legal holds.
    Hold,
    /// Erase recordings.
    Delete,
    /// Read the audit trail.
    AuditRead,
    /// Create a signed playback link.
    Link,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::Search,
        Permission::Read,
        Permission::Play,
        Permission::Download,
        Permission::Sample,
        Permission::Verify,
        Permission::Hold,
        Permission::Delete,
        Permission::AuditRead,
        Permission::Link,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::Search => "search",
            Permission::Read => "read",
            Permission::Play => "play",
            Permission::Download => "download",
            Permission::Sample => "sample",
            Permission::Verify => "verify",
            Permission::Hold => "hold",
            Permission::Delete => "delete",
            Permission::AuditRead => "audit.read",
            Permission::Link => "link",
        }
    }
}

/// Which recordings a user sees: those whose metadata `queue` is one of `queues` or whose `team`
/// is one of `teams`; every one with `all`. Admins and auditors always have `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub all: bool,
    pub queues: Vec<String>,
    pub teams: Vec<String>,
}

impl Scope {
    /// Every recording.
    pub fn everything() -> Scope {
        Scope { all: true, queues: Vec::new(), teams: Vec::new() }
    }

    /// Covers nothing at all.
    pub fn is_empty(&self) -> bool {
        !self.all && self.queues.is_empty() && self.teams.is_empty()
    }

    /// Whether the recording a catalog summary describes is in scope.
    pub fn covers(&self, summary: &Value) -> bool {
        if self.all {
            return true;
        }
        let metadata = &summary["metadata"];
        let listed = |key: &str, list: &[String]| metadata[key].as_str().is_some_and(|v| list.iter().any(|x| x == v));
        listed("queue", &self.queues) || listed("team", &self.teams)
    }

    /// Sorted, without duplicates; names checked.
    fn normalised(mut self) -> Result<Scope, AccessError> {
        for name in self.queues.iter().chain(&self.teams) {
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err(AccessError::BadScope(format!(
                    "{name:?} is not a queue or team name: use 1 to 128 characters, no control characters"
                )));
            }
        }
        if self.all {
            self.queues.clear();
            self.teams.clear();
        }
        self.queues.sort();
        self.queues.dedup();
        self.teams.sort();
        self.teams.dedup();
        Ok(self)
    }

    /// The scope a user of `role` gets from what was asked for.
    fn for_role(self, role: Role) -> Result<Scope, AccessError> {
        // Said together, one of them would be dropped without a word.
        if self.all && !(self.queues.is_empty() && self.teams.is_empty()) {
            return Err(AccessError::BadScope(
                "every recording (CLI: --all-recordings) already covers all queues and teams: give either it or \
                 queues and teams (--queue, --team), not both"
                    .into(),
            ));
        }
        if role.scoped() {
            if self.is_empty() {
                return Err(AccessError::BadScope(format!(
                    "a {role} sees only the recordings of its queues or teams: give at least one queue or team, or \
                     every recording explicitly (CLI: --queue Q, --team T or --all-recordings)"
                )));
            }
            return self.normalised();
        }
        if !self.all && !self.is_empty() {
            return Err(AccessError::BadScope(format!(
                "an {role} always covers every recording: queues and teams apply to supervisor and qa only"
            )));
        }
        Ok(Scope::everything())
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An API token (its public id).
    Token(String),
    /// A signed link, good for playing this one recording only.
    Link { recording_id: String },
}

/// Who is asking, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    /// The user's [`User::uid`]: which user of that name (a name can be removed and given again).
    pub uid: String,
    pub role: Role,
    pub scope: Scope,
    pub via: Via,
}

impl Principal {
    /// The audit trail's actor: `token:<id>` or `link:<user>`.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::Token(id) => format!("token:{id}"),
            Via::Link { .. } => format!("link:{}", self.user),
        }
    }

    /// Whether the principal may do `p` at all: the role's permission, and nothing but `Play`
    /// through a link.
    pub fn allows(&self, p: Permission) -> bool {
        self.role.allows(p) && (matches!(self.via, Via::Token(_)) || p == Permission::Play)
    }

    /// Whether the recording (its id and catalog summary) is one the principal may see: in the
    /// scope, and for a link the linked recording alone.
    pub fn covers(&self, recording_id: &str, summary: &Value) -> bool {
        let linked = match &self.via {
            Via::Token(_) => true,
            Via::Link { recording_id: r } => r == recording_id,
        };
        linked && self.scope.covers(summary)
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    /// Random, made when the user is added and never reused: tells this user from an earlier
    /// or later one of the same name (links and QA samples are bound to it). Not secret, but
    /// internal, so not listed.
    #[serde(skip)]
    pub uid: String,
    pub role: Role,
    pub scope: Scope,
    pub disabled: bool,
    pub created_at: String,
}

/// An API token as listed: never its secret (which is not stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// Why a request is not authenticated (the API answers 401, or 500 for `Store`). The texts say
/// what to do and never contain the credential.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credential: send `Authorization: Bearer <token>` with a token from `callvault token create`")]
    Missing,
    #[error(
        "the credential is not an API token: expected `cvt_`, a 12-character id, `_` and the secret, exactly as \
         `callvault token create` printed it"
    )]
    Malformed,
    #[error(
        "the API token is not known (mistyped, or made for another callvault): create one with `callvault token \
         create --user NAME`"
    )]
    Unknown,
    #[error("the API token has expired: create a new one with `callvault token create --user NAME`")]
    Expired,
    #[error("the API token has been revoked: create a new one with `callvault token create --user NAME`")]
    Revoked,
    #[error("the credential's user is disabled: an admin can enable it with `callvault user enable NAME`")]
    UserDisabled,
    #[error(
        "the playback link is not valid for this recording (altered, cut short, its user gone, or signed with a \
         link key since replaced): ask for a new link"
    )]
    LinkInvalid,
    #[error("the playback link has expired: ask for a new link")]
    LinkExpired,
    #[error("cannot check the credential: {0}")]
    Store(#[from] AccessError),
}

impl AuthError {
    /// The HTTP status the API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Store(_) => 500,
            _ => 401,
        }
    }
}

/// Why a change to users, tokens or links failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("access database {path}: {source}")]
    Db { path: PathBuf, source: rusqlite::Error },
    #[error("access database {path} was written by a newer callvault (schema {found}); run that version")]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("access database {path}: {reason}; restore it from a backup")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} can be read or written by group or others (mode {mode:o}): `chmod 600 {path}`")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error(
        "{path} is not a link key ({len} bytes where 32 are expected): remove it to make a new one (every link \
         signed with the old key stops working)"
    )]
    KeyFile { path: PathBuf, len: usize },
    #[error(
        "`{0}` is not a user name: use 1 to 64 of a-z 0-9 . _ @ - (unauthenticated, daemon, control and cli are the audit trail's own)"
    )]
    BadName(String),
    #[error("{0}")]
    BadScope(String),
    #[error("user `{0}` already exists: `callvault user list` shows it")]
    UserExists(String),
    #[error("no user `{0}`: `callvault user list` shows the users")]
    UserNotFound(String),
    #[error("user `{0}` is disabled: `callvault user enable {0}` first")]
    UserDisabled(String),
    #[error("no token `{0}`: `callvault token list` shows the tokens' ids")]
    TokenNotFound(String),
    #[error("user `{user}` is a {role}, which may not play recordings, so cannot have playback links")]
    CannotPlay { user: String, role: Role },
    #[error("the system's random number generator failed")]
    Random,
}

impl AccessError {
    /// A user or token that does not exist (the CLI's exit code 4).
    pub fn is_not_found(&self) -> bool {
        matches!(self, AccessError::UserNotFound(_) | AccessError::TokenNotFound(_))
    }
}

/// Users, tokens and the link key of one data directory. Shared by the API's tasks (`Send +
/// Sync`); other processes (the CLI) may have the same database open.
pub struct AccessStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    key_path: PathBuf,
    /// Loaded (or made) on the first link signed or checked; removing `link.key` takes effect
    /// when the daemon restarts.
    link_key: Mutex<Option<hmac::Key>>,
}

/// `[a-z0-9._@-]{1,64}`
/// Actors the audit trail writes for others: a user of that name would pass for them.
pub const RESERVED_NAMES: [&str; 4] = ["unauthenticated", "daemon", "control", "cli"];

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._@-".contains(&b))
        && !RESERVED_NAMES.contains(&name)
}

fn check_name(name: &str) -> Result<(), AccessError> {
    if valid_name(name) { Ok(()) } else { Err(AccessError::BadName(name.to_string())) }
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding (RFC 4648 §5).
fn b64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn is_b64url_32(s: &str) -> bool {
    s.len() == B64_32_LEN && s.bytes().all(|b| B64URL.contains(&b))
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, AccessError> {
    let mut b = Zeroizing::new([0u8; N]);
    rand::fill(&mut b[..]).map_err(|_| AccessError::Random)?;
    Ok(b)
}

/// `cvt_<id>_<secret>` → (id, the whole token). Accepts the header value with or without its
/// `Bearer ` scheme.
fn parse_token(bearer: &str) -> Result<(&str, &str), AuthError> {
    let t = bearer.trim();
    let t = match t.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if t.eq_ignore_ascii_case("bearer") => "",
        _ => t,
    };
    if t.is_empty() {
        return Err(AuthError::Missing);
    }
    let rest = t.strip_prefix(TOKEN_PREFIX).ok_or(AuthError::Malformed)?;
    if !rest.is_ascii() || rest.len() != ID_LEN + 1 + B64_32_LEN || rest.as_bytes()[ID_LEN] != b'_' {
        return Err(AuthError::Malformed);
    }
    let (id, secret) = (&rest[..ID_LEN], &rest[ID_LEN + 1..]);
    if !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) || !is_b64url_32(secret) {
        return Err(AuthError::Malformed);
    }
    Ok((id, t))
}

fn token_hash(token: &str) -> digest::Digest {
    digest::digest(&digest::SHA256, token.as_bytes())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl AccessStore {
    /// Opens `<data_dir>/access.db`, creating the directory (0700) and the database (0600) if
    /// need be.
    pub fn open(data_dir: &Path) -> Result<AccessStore, AccessError> {
        if !data_dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(|source| AccessError::Io {
                action: "create the data directory",
                path: data_dir.to_path_buf(),
                source,
            })?;
        }
        let path = db_path(data_dir);
        // Made here with its mode rather than by SQLite with the umask's: it holds token hashes
        // and who may hear what. SQLite gives its -wal and -shm files the same mode.
        fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(|source| AccessError::Io {
            action: "create the access database",
            path: path.clone(),
            source,
        })?;
        let db = |source| AccessError::Db { path: path.clone(), source };
        let mut conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(db)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
        if version > SCHEMA_VERSION {
            return Err(AccessError::NewerSchema { path, found: version });
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS users (
                 name TEXT PRIMARY KEY,
                 role TEXT NOT NULL,
                 scope TEXT NOT NULL,
                 disabled INTEGER NOT NULL DEFAULT 0,
                 created_at TEXT NOT NULL,
                 uid TEXT
             );
             CREATE TABLE IF NOT EXISTS tokens (
                 id TEXT PRIMARY KEY,
                 user TEXT NOT NULL,
                 sha256 TEXT NOT NULL,
                 created_at TEXT NOT NULL,
                 expires_at TEXT,
                 revoked_at TEXT,
                 last_used_at TEXT
             );
             CREATE INDEX IF NOT EXISTS tokens_user ON tokens(user);",
        )
        .map_err(db)?;
        // Schema 1 had no uid: add the column and give the users there one each.
        let has_uid: bool = tx
            .query_row("SELECT COUNT(*) FROM pragma_table_info('users') WHERE name = 'uid'", [], |r| r.get(0))
            .map_err(db)?;
        if !has_uid {
            tx.execute_batch("ALTER TABLE users ADD COLUMN uid TEXT").map_err(db)?;
        }
        tx.execute_batch(
            "UPDATE users SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL OR uid = '';
             PRAGMA user_version = 2;",
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(AccessStore { conn: Mutex::new(conn), key_path: link_key_path(data_dir), path, link_key: Mutex::new(None) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding the lock leaves the connection usable (SQLite rolls
        // back what was not committed).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> AccessError + '_ {
        move |source| AccessError::Db { path: self.path.clone(), source }
    }

    fn corrupt(&self, reason: String) -> AccessError {
        AccessError::Corrupt { path: self.path.clone(), reason }
    }

    fn user_from_row(
        &self,
        name: String,
        role: &str,
        scope: &str,
        disabled: bool,
        created_at: String,
        uid: String,
    ) -> Result<User, AccessError> {
        let role =
            Role::parse(role).ok_or_else(|| self.corrupt(format!("user `{name}` has an unknown role {role:?}")))?;
        let scope: Scope = serde_json::from_str(scope)
            .map_err(|e| self.corrupt(format!("user `{name}` has an unreadable scope: {e}")))?;
        Ok(User { name, role, scope, disabled, created_at, uid })
    }

    /// Adds a user. Supervisors and qa need a non-empty scope; admins and auditors always cover
    /// every recording (an explicit queue or team for them is refused).
    pub fn add_user(&self, name: &str, role: Role, scope: Scope) -> Result<(), AccessError> {
        check_name(name)?;
        let scope = scope.for_role(role)?;
        let scope_json = serde_json::to_string(&scope).unwrap_or_default();
        let uid = hex(&random::<16>()?[..]);
        let r = self.conn().execute(
            "INSERT INTO users (name, role, scope, disabled, created_at, uid) VALUES (?1, ?2, ?3, 0, ?4, ?5)",
            params![name, role.name(), scope_json, rfc3339(SystemTime::now()), uid],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(AccessError::UserExists(name.to_string()))
            }
            Err(e) => Err(self.db()(e)),
        }
    }

    /// One user.
    pub fn user(&self, name: &str) -> Result<Option<User>, AccessError> {
        let row = self
            .conn()
            .query_row("SELECT name, role, scope, disabled, created_at, uid FROM users WHERE name = ?1", [name], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                ))
            })
            .optional()
            .map_err(self.db())?;
        row.map(|(n, role, scope, disabled, created, uid)| self.user_from_row(n, &role, &scope, disabled, created, uid))
            .transpose()
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>, AccessError> {
        let rows = {
            let conn = self.conn();
            let mut st = conn
                .prepare("SELECT name, role, scope, disabled, created_at, uid FROM users ORDER BY name")
                .map_err(self.db())?;
            st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<(String, String, String, bool, String, String)>, _>>())
            .map_err(self.db())?
        };
        rows.into_iter()
            .map(|(n, role, scope, disabled, created, uid)| {
                self.user_from_row(n, &role, &scope, disabled, created, uid)
            })
            .collect()
    }

    /// Disables (or enables again) a user: its tokens and links stop (or resume) working at once.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), AccessError> {
        let n = self
            .conn()
            .execute("UPDATE users SET disabled = ?2 WHERE name = ?1", params![name, disabled])
            .map_err(self.db())?;
        if n == 0 { Err(AccessError::UserNotFound(name.to_string())) } else { Ok(()) }
    }

    /// Replaces a supervisor's or qa's scope.
    pub fn set_scope(&self, name: &str, scope: Scope) -> Result<(), AccessError> {
        let user = self.user(name)?.ok_or_else(|| AccessError::UserNotFound(name.to_string()))?;
        if !user.role.scoped() {
            return Err(AccessError::BadScope(format!(
                "`{name}` is an {}, which always covers every recording: scopes apply to supervisor and qa only",
                user.role
            )));
        }
        let scope = scope.for_role(user.role)?;
        let n = self
            .conn()
            .execute(
                "UPDATE users SET scope = ?2 WHERE name = ?1",
                params![name, serde_json::to_string(&scope).unwrap_or_default()],
            )
            .map_err(self.db())?;
        if n == 0 { Err(AccessError::UserNotFound(name.to_string())) } else { Ok(()) }
    }

    /// Removes a user and revokes its tokens (which stay listed, revoked, so that a later user of
    /// the same name never inherits them).
    pub fn remove_user(&self, name: &str) -> Result<(), AccessError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(self.db())?;
        let n = tx.execute("DELETE FROM users WHERE name = ?1", [name]).map_err(self.db())?;
        if n == 0 {
            return Err(AccessError::UserNotFound(name.to_string()));
        }
        tx.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE user = ?1 AND revoked_at IS NULL",
            params![name, rfc3339(SystemTime::now())],
        )
        .map_err(self.db())?;
        tx.commit().map_err(self.db())
    }

    /// Creates an API token for an enabled user, valid for `ttl` (`None`: until revoked). Returns
    /// its description and the token itself, which is not stored and cannot be shown again.
    pub fn create_token(
        &self,
        user: &str,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<(TokenInfo, String), AccessError> {
        match self.user(user)? {
            None => return Err(AccessError::UserNotFound(user.to_string())),
            Some(u) if u.disabled => return Err(AccessError::UserDisabled(user.to_string())),
            Some(_) => {}
        }
        let created_at = rfc3339(now);
        let expires_at =
            ttl.map(|d| rfc3339(now.checked_add(d).unwrap_or(now + Duration::from_secs(100 * 365 * 86_400))));
        // 48-bit ids: a collision is unlikely but would only fail the insert, so try again.
        for _ in 0..4 {
            let id = hex(&random::<6>()?[..]);
            let token = format!("{TOKEN_PREFIX}{id}_{}", b64url(&random::<32>()?[..]));
            let r = self.conn().execute(
                "INSERT INTO tokens (id, user, sha256, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, user, hex(token_hash(&token).as_ref()), created_at, expires_at],
            );
            match r {
                Ok(_) => {
                    let info = TokenInfo {
                        id,
                        user: user.to_string(),
                        created_at,
                        expires_at,
                        revoked_at: None,
                        last_used_at: None,
                    };
                    return Ok((info, token));
                }
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {}
                Err(e) => return Err(self.db()(e)),
            }
        }
        Err(AccessError::Random)
    }

    /// Every token (of one user, or all), oldest first.
    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>, AccessError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, user, created_at, expires_at, revoked_at, last_used_at FROM tokens
                 WHERE ?1 IS NULL OR user = ?1 ORDER BY created_at, id",
            )
            .map_err(self.db())?;
        st.query_map([user], |r| {
            Ok(TokenInfo {
                id: r.get(0)?,
                user: r.get(1)?,
                created_at: r.get(2)?,
                expires_at: r.get(3)?,
                revoked_at: r.get(4)?,
                last_used_at: r.get(5)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(self.db())
    }

    /// Revokes a token: `true` if it was revoked now, `false` if it already was.
    pub fn revoke_token(&self, id: &str, now: SystemTime) -> Result<bool, AccessError> {
        let conn = self.conn();
        let n = conn
            .execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, rfc3339(now)],
            )
            .map_err(self.db())?;
        if n > 0 {
            return Ok(true);
        }
        let exists = conn
            .query_row("SELECT 1 FROM tokens WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map_err(self.db())?
            .is_some();
        if exists { Ok(false) } else { Err(AccessError::TokenNotFound(id.to_string())) }
    }

    /// Checks an API token (the `Authorization` header's value, with or without `Bearer `).
    /// A wrong secret and an unknown id are the same error; revocation, expiry and the user's
    /// state are only told to whoever holds the secret.
    pub fn authenticate(&self, bearer: &str, now: SystemTime) -> Result<Principal, AuthError> {
        let (id, token) = parse_token(bearer)?;
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT t.user, t.sha256, t.expires_at, t.revoked_at, t.last_used_at, u.role, u.scope, u.disabled,
                        u.created_at, u.uid
                 FROM tokens t LEFT JOIN users u ON u.name = t.user WHERE t.id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<bool>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, Option<String>>(9)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| AuthError::Store(self.db()(e)))?;
        let Some((user, stored, expires_at, revoked_at, last_used_at, role, scope, disabled, created, uid)) = row
        else {
            return Err(AuthError::Unknown);
        };
        let stored = unhex::<32>(&stored).ok_or_else(|| self.corrupt(format!("token {id} has an unreadable hash")))?;
        if constant_time::verify_slices_are_equal(token_hash(token).as_ref(), &stored).is_err() {
            return Err(AuthError::Unknown);
        }
        let now_text = rfc3339(now);
        if revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if expires_at.is_some_and(|e| now_text >= e) {
            return Err(AuthError::Expired);
        }
        // A removed user's tokens are revoked with it; one left without a user is treated alike.
        let (Some(role), Some(scope), Some(disabled), Some(created)) = (role, scope, disabled, created) else {
            return Err(AuthError::Revoked);
        };
        let user = self.user_from_row(user, &role, &scope, disabled, created, uid.unwrap_or_default())?;
        if user.disabled {
            return Err(AuthError::UserDisabled);
        }
        let stale = rfc3339(now.checked_sub(LAST_USED_EVERY).unwrap_or(UNIX_EPOCH));
        if last_used_at.is_none_or(|t| t <= stale) {
            // Bookkeeping only: a busy or read-only database must not turn a valid token away.
            if let Err(e) = conn.execute("UPDATE tokens SET last_used_at = ?2 WHERE id = ?1", params![id, now_text]) {
                crate::log::warn(&format!("cannot note the use of token {id} in {}: {e}", self.path.display()));
            }
        }
        let scope = if user.role.scoped() { user.scope } else { Scope::everything() };
        Ok(Principal { user: user.name, uid: user.uid, role: user.role, scope, via: Via::Token(id.to_string()) })
    }

    /// Whether what let `p` in still holds, for a response that outlives its request (a long
    /// download): `Some(why)` once its token is revoked, its user disabled, removed or given a
    /// role without `perm`, or the recording (its catalog `summary`, as read now) is outside the
    /// user's scope. Expiry is not checked: it bounds when a request may start, and a listener
    /// is not cut off mid-call by a clock. A store that cannot be read is an error, not a
    /// refusal: the caller decides.
    pub fn withdrawn(
        &self,
        p: &Principal,
        perm: Permission,
        summary: &Value,
    ) -> Result<Option<&'static str>, AccessError> {
        let conn = self.conn();
        if let Via::Token(id) = &p.via {
            let revoked = conn
                .query_row("SELECT revoked_at IS NOT NULL, user FROM tokens WHERE id = ?1", [id], |r| {
                    Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
                .map_err(self.db())?;
            match revoked {
                Some((false, user)) if user == p.user => {}
                _ => return Ok(Some("its token was revoked")),
            }
        }
        drop(conn);
        Ok(match self.user(&p.user)? {
            None => Some("its user was removed"),
            Some(u) if u.uid != p.uid => Some("its user was removed"),
            Some(u) if u.disabled => Some("its user was disabled"),
            Some(u) if !u.role.allows(perm) => Some("its user's role no longer allows it"),
            Some(u) if u.role.scoped() && !u.scope.covers(summary) => Some("the recording left its user's scope"),
            Some(_) => None,
        })
    }

    fn link_key(&self) -> Result<hmac::Key, AccessError> {
        let mut cached = self.link_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = &*cached {
            return Ok(k.clone());
        }
        let bytes = load_or_create_key(&self.key_path)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes[..]);
        *cached = Some(key.clone());
        Ok(key)
    }

    /// The MAC covers the user's `uid` as well as its name: a link outlives neither its user's
    /// removal nor a new user given the same name.
    fn link_mac(&self, recording_id: &str, exp: u64, user: &str, uid: &str) -> Result<String, AccessError> {
        let msg = format!("{LINK_CONTEXT}\n{recording_id}\n{exp}\n{user}\n{uid}");
        Ok(b64url(hmac::sign(&self.link_key()?, msg.as_bytes()).as_ref()))
    }

    /// Signs a link for `user` to play one recording until `expires` (whole seconds): the value
    /// of the audio URL's `link` query parameter, `<exp_unix>.<user>.<mac>`. The caller checks
    /// that `user` may make links and sees the recording, and bounds `expires`.
    pub fn sign_link(&self, recording_id: &str, user: &str, expires: SystemTime) -> Result<String, AccessError> {
        let u = self.user(user)?.ok_or_else(|| AccessError::UserNotFound(user.to_string()))?;
        if u.disabled {
            return Err(AccessError::UserDisabled(user.to_string()));
        }
        if !u.role.allows(Permission::Play) {
            return Err(AccessError::CannotPlay { user: user.to_string(), role: u.role });
        }
        let exp = unix_secs(expires);
        Ok(format!("{exp}.{user}.{}", self.link_mac(recording_id, exp, user, &u.uid)?))
    }

    /// Checks a link for a recording. Its user must still exist, be enabled and have a role that
    /// plays; whether the recording is still in the user's scope is the caller's check
    /// ([`Principal::covers`]).
    pub fn check_link(&self, recording_id: &str, link: &str, now: SystemTime) -> Result<Principal, AuthError> {
        let (exp_text, rest) = link.split_once('.').ok_or(AuthError::LinkInvalid)?;
        // User names may hold dots, the MAC never does.
        let (user, mac) = rest.rsplit_once('.').ok_or(AuthError::LinkInvalid)?;
        if exp_text.is_empty() || exp_text.len() > 20 || !exp_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::LinkInvalid);
        }
        let exp: u64 = exp_text.parse().map_err(|_| AuthError::LinkInvalid)?;
        if !valid_name(user) || !is_b64url_32(mac) {
            return Err(AuthError::LinkInvalid);
        }
        // The user's uid is part of what was signed: a removed user (or a new one of that name)
        // fails the MAC check.
        let u = self.user(user)?.ok_or(AuthError::LinkInvalid)?;
        let expected = self.link_mac(recording_id, exp, user, &u.uid)?;
        if u.uid.is_empty() || constant_time::verify_slices_are_equal(expected.as_bytes(), mac.as_bytes()).is_err() {
            return Err(AuthError::LinkInvalid);
        }
        if unix_secs(now) >= exp {
            return Err(AuthError::LinkExpired);
        }
        if u.disabled {
            return Err(AuthError::UserDisabled);
        }
        if !u.role.allows(Permission::Play) {
            return Err(AuthError::LinkInvalid);
        }
        Ok(Principal {
            user: u.name,
            uid: u.uid,
            role: u.role,
            scope: u.scope,
            via: Via::Link { recording_id: recording_id.to_string() },
        })
    }
}

/// Reads the link key, refusing one that others can read; makes it when there is none. Made in a
/// temporary file and hard-linked into place, so that two processes starting at once agree on
/// one key and nobody ever reads half of one.
fn load_or_create_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, AccessError> {
    match read_key(path) {
        Err(AccessError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
        other => return other,
    }
    let key = random::<32>()?;
    let tmp = path.with_file_name(format!(".link.key.{}.{}.tmp", std::process::id(), hex(&random::<4>()?[..])));
    let io = |action, source| AccessError::Io { action, path: path.to_path_buf(), source };
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&key[..]).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io("write the link key", e));
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(key)
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read_key(path),
        Err(e) => Err(io("create the link key", e)),
    }
}

fn read_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, AccessError> {
    let io = |source| AccessError::Io { action: "read the link key", path: path.to_path_buf(), source };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AccessError::KeyMode { path: path.to_path_buf(), mode });
    }
    let bytes = Zeroizing::new(fs::read(path).map_err(io)?);
    let key: [u8; 32] =
        bytes.as_slice().try_into().map_err(|_| AccessError::KeyFile { path: path.to_path_buf(), len: bytes.len() })?;
    Ok(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn store() -> (tempfile::TempDir, AccessStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = AccessStore::open(dir.path()).unwrap();
        (dir, s)
    }

    fn queues(q: &[&str]) -> Scope {
        Scope { all: false, queues: q.iter().map(|s| s.to_string()).collect(), teams: Vec::new() }
    }

    #[test]
    fn the_store_is_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<AccessStore>();
    }

    #[test]
    fn role_matrix_for_every_permission() {
        use Permission::*;
        let expected: [(Role, &[Permission]); 4] = [
            (Role::Admin, &[Search, Read, Verify, Hold, Delete]),
            (Role::Supervisor, &[Search, Read, Play, Download, Sample, Link]),
            (Role::Qa, &[Search, Read, Play, Sample, Link]),
            (Role::Auditor, &[Verify, AuditRead]),
        ];
        for (role, allowed) in expected {
            for p in Permission::ALL {
                assert_eq!(role.allows(p), allowed.contains(&p), "{role} {}", p.name());
            }
        }
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn scope_covers_by_queue_or_team() {
        let s = Scope { all: false, queues: vec!["sales".into()], teams: vec!["blue".into()] };
        assert!(s.covers(&json!({"metadata": {"queue": "sales"}})));
        assert!(s.covers(&json!({"metadata": {"queue": "support", "team": "blue"}})));
        assert!(!s.covers(&json!({"metadata": {"queue": "support", "team": "red"}})));
        assert!(!s.covers(&json!({"metadata": {}})));
        assert!(!s.covers(&json!({})));
        assert!(!s.covers(&json!({"metadata": {"queue": ["sales"]}})), "only strings match");
        assert!(!s.covers(&json!({"metadata": {"queue": "Sales"}})), "exact names");
        assert!(Scope::everything().covers(&json!({})));
        assert!(!Scope::default().covers(&json!({"metadata": {"queue": "sales"}})));
    }

    #[test]
    fn users_need_a_fitting_scope_and_a_valid_name() {
        let (_d, s) = store();
        assert!(matches!(s.add_user("sue", Role::Supervisor, Scope::default()), Err(AccessError::BadScope(_))));
        assert!(matches!(s.add_user("quinn", Role::Qa, Scope::default()), Err(AccessError::BadScope(_))));
        assert!(matches!(s.add_user("ann", Role::Admin, queues(&["sales"])), Err(AccessError::BadScope(_))));
        for bad in ["", "Bob", "bob smith", "bob/1", &"a".repeat(65), "bøb"] {
            assert!(matches!(s.add_user(bad, Role::Admin, Scope::default()), Err(AccessError::BadName(_))), "{bad:?}");
        }
        s.add_user("sue", Role::Supervisor, queues(&["sales", "billing", "sales"])).unwrap();
        s.add_user("ann.admin@example-1_x", Role::Admin, Scope::default()).unwrap();
        s.add_user("all-qa", Role::Qa, Scope::everything()).unwrap();
        assert!(matches!(s.add_user("sue", Role::Qa, queues(&["x"])), Err(AccessError::UserExists(_))));
        let users = s.users().unwrap();
        let names: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["all-qa", "ann.admin@example-1_x", "sue"]);
        assert_eq!(users[1].scope, Scope::everything(), "admins cover every recording");
        assert_eq!(users[2].scope, queues(&["billing", "sales"]));
        s.set_scope("sue", Scope { all: false, queues: vec![], teams: vec!["blue".into()] }).unwrap();
        assert_eq!(s.user("sue").unwrap().unwrap().scope.teams, ["blue"]);
        assert!(matches!(s.set_scope("sue", Scope::default()), Err(AccessError::BadScope(_))));
        // Every recording and a list at once: refused, not one of them silently dropped.
        let both = Scope { all: true, queues: vec!["x".into()], teams: vec![] };
        assert!(matches!(s.add_user("q2", Role::Qa, both.clone()), Err(AccessError::BadScope(_))));
        assert!(matches!(s.set_scope("sue", both), Err(AccessError::BadScope(_))));
        let both = Scope { all: true, queues: vec![], teams: vec!["t".into()] };
        assert!(matches!(s.add_user("a2", Role::Admin, both), Err(AccessError::BadScope(_))));
        assert_eq!(s.user("sue").unwrap().unwrap().scope.teams, ["blue"]);
        assert!(matches!(s.set_scope("ann.admin@example-1_x", queues(&["a"])), Err(AccessError::BadScope(_))));
        assert!(s.set_scope("nobody", queues(&["a"])).unwrap_err().is_not_found());
        assert!(s.set_disabled("nobody", true).unwrap_err().is_not_found());
        assert!(s.remove_user("nobody").unwrap_err().is_not_found());
    }

    #[test]
    fn token_roundtrip() {
        let (_d, s) = store();
        s.add_user("sue", Role::Supervisor, queues(&["sales"])).unwrap();
        let (info, token) = s.create_token("sue", Some(Duration::from_secs(3600)), at(0)).unwrap();
        assert!(token.starts_with(&format!("cvt_{}_", info.id)), "{token}");
        assert_eq!(token.len(), 4 + 12 + 1 + 43);
        assert_eq!(info.expires_at.as_deref(), Some(rfc3339(at(3600)).as_str()));
        let p = s.authenticate(&token, at(10)).unwrap();
        assert_eq!(
            p,
            Principal {
                user: "sue".into(),
                uid: s.user("sue").unwrap().unwrap().uid,
                role: Role::Supervisor,
                scope: queues(&["sales"]),
                via: Via::Token(info.id.clone())
            }
        );
        assert_eq!(p.actor(), format!("token:{}", info.id));
        assert_eq!(s.authenticate(&format!("Bearer {token}"), at(10)).unwrap(), p);
        assert_eq!(s.authenticate(&format!("bearer  {token} "), at(10)).unwrap(), p);
        // last_used_at: written on first use, then at most once a minute.
        let used = |s: &AccessStore| s.tokens(Some("sue")).unwrap()[0].last_used_at.clone();
        assert_eq!(used(&s), Some(rfc3339(at(10))));
        s.authenticate(&token, at(50)).unwrap();
        assert_eq!(used(&s), Some(rfc3339(at(10))));
        s.authenticate(&token, at(71)).unwrap();
        assert_eq!(used(&s), Some(rfc3339(at(71))));
        // Two tokens, listed without secrets.
        let (other, _) = s.create_token("sue", None, at(20)).unwrap();
        assert_eq!(other.expires_at, None);
        let list = s.tokens(None).unwrap();
        assert_eq!(list.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [info.id.as_str(), other.id.as_str()]);
        assert!(s.tokens(Some("nobody")).unwrap().is_empty());
        assert!(!serde_json::to_string(&list).unwrap().contains(&token[17..]));
        // An admin's principal covers everything.
        s.add_user("ann", Role::Admin, Scope::default()).unwrap();
        let (_, t) = s.create_token("ann", None, at(0)).unwrap();
        assert_eq!(s.authenticate(&t, at(1)).unwrap().scope, Scope::everything());
    }

    #[test]
    fn bad_tokens_are_refused() {
        let (_d, s) = store();
        s.add_user("sue", Role::Supervisor, queues(&["sales"])).unwrap();
        let (info, token) = s.create_token("sue", Some(Duration::from_secs(3600)), at(0)).unwrap();
        for missing in ["", "   ", "Bearer ", "Bearer    "] {
            assert!(matches!(s.authenticate(missing, at(1)), Err(AuthError::Missing)), "{missing:?}");
        }
        let malformed = [
            "cvt_".to_string(),
            "Basic dXNlcjpwYXNz".to_string(),
            token.replacen("cvt_", "cvx_", 1),
            token[..token.len() - 1].to_string(),
            format!("{token}A"),
            token.replacen(&info.id, &info.id.to_uppercase(), 1),
            format!("{}!", &token[..token.len() - 1]),
            format!("{}é", &token[..token.len() - 2]),
        ];
        for m in &malformed {
            assert!(matches!(s.authenticate(m, at(1)), Err(AuthError::Malformed)), "{m:?}");
        }
        // A wrong secret for a known id is the same answer as an unknown id.
        let last = token.as_bytes()[token.len() - 1];
        let wrong = format!("{}{}", &token[..token.len() - 1], if last == b'A' { 'B' } else { 'A' });
        assert!(matches!(s.authenticate(&wrong, at(1)), Err(AuthError::Unknown)));
        let unknown = format!("cvt_000000000000_{}", &token[17..]);
        assert!(matches!(s.authenticate(&unknown, at(1)), Err(AuthError::Unknown)));
        // Expired at exactly its expiry.
        assert!(s.authenticate(&token, at(3599)).is_ok());
        assert!(matches!(s.authenticate(&token, at(3600)), Err(AuthError::Expired)));
        // Revoked.
        let (i2, t2) = s.create_token("sue", None, at(0)).unwrap();
        assert!(s.revoke_token(&i2.id, at(5)).unwrap());
        assert!(!s.revoke_token(&i2.id, at(6)).unwrap(), "already revoked");
        assert!(s.revoke_token("000000000000", at(6)).unwrap_err().is_not_found());
        assert!(matches!(s.authenticate(&t2, at(7)), Err(AuthError::Revoked)));
        // (Both tokens were made at the same instant: find this one by its id, not its place.)
        let listed = s.tokens(None).unwrap().into_iter().find(|t| t.id == i2.id).unwrap();
        assert_eq!(listed.revoked_at, Some(rfc3339(at(5))));
        // Disabled user: at once, and back when enabled.
        let (_, t3) = s.create_token("sue", None, at(0)).unwrap();
        s.set_disabled("sue", true).unwrap();
        assert!(matches!(s.authenticate(&t3, at(8)), Err(AuthError::UserDisabled)));
        assert!(matches!(s.create_token("sue", None, at(8)), Err(AccessError::UserDisabled(_))));
        s.set_disabled("sue", false).unwrap();
        assert!(s.authenticate(&t3, at(9)).is_ok());
        // Removed user: its tokens are revoked, and a new user of that name does not get them.
        s.remove_user("sue").unwrap();
        assert!(matches!(s.authenticate(&t3, at(10)), Err(AuthError::Revoked)));
        s.add_user("sue", Role::Qa, queues(&["other"])).unwrap();
        assert!(matches!(s.authenticate(&t3, at(11)), Err(AuthError::Revoked)));
        assert!(s.tokens(Some("sue")).unwrap().iter().all(|t| t.revoked_at.is_some()));
        assert!(s.create_token("nobody", None, at(0)).unwrap_err().is_not_found());
        for e in [AuthError::Unknown, AuthError::Malformed, AuthError::Revoked] {
            assert!(!e.to_string().contains(&token[17..]));
            assert_eq!(e.http_status(), 401);
        }
    }

    #[test]
    fn tokens_are_not_stored_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (hash, token) = {
            let s = AccessStore::open(dir.path()).unwrap();
            s.add_user("sue", Role::Qa, queues(&["sales"])).unwrap();
            let (_, token) = s.create_token("sue", None, at(0)).unwrap();
            s.authenticate(&token, at(1)).unwrap();
            (hex(token_hash(&token).as_ref()), token)
        };
        let mut bytes = Vec::new();
        for name in ["access.db", "access.db-wal", "access.db-shm"] {
            let path = dir.path().join(name);
            if let Ok(b) = fs::read(&path) {
                assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{name}");
                bytes.extend(b);
            }
        }
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(has(hash.as_bytes()), "the files read are the ones written");
        assert!(!has(token.as_bytes()));
        assert!(!has(&token.as_bytes()[17..]), "the secret");
        // Reopened: the hash still authenticates.
        let s = AccessStore::open(dir.path()).unwrap();
        assert!(s.authenticate(&token, at(2)).is_ok());
    }

    #[test]
    fn links_play_one_recording_until_they_expire() {
        let (d, s) = store();
        s.add_user("quinn.qa", Role::Qa, queues(&["sales"])).unwrap();
        let link = s.sign_link("01REC", "quinn.qa", at(900)).unwrap();
        let key = d.path().join("link.key");
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&key).unwrap().len(), 32);
        assert!(link.starts_with(&format!("{}.quinn.qa.", unix_secs(at(900)))), "{link}");
        let p = s.check_link("01REC", &link, at(10)).unwrap();
        assert_eq!(p.via, Via::Link { recording_id: "01REC".into() });
        assert_eq!((p.user.as_str(), p.role), ("quinn.qa", Role::Qa));
        assert_eq!(p.actor(), "link:quinn.qa");
        assert!(p.allows(Permission::Play) && !p.allows(Permission::Search) && !p.allows(Permission::Link));
        let summary = json!({"metadata": {"queue": "sales"}});
        assert!(p.covers("01REC", &summary) && !p.covers("01OTHER", &summary));
        // Only for its recording.
        assert!(matches!(s.check_link("01OTHER", &link, at(10)), Err(AuthError::LinkInvalid)));
        // Expired.
        assert!(matches!(s.check_link("01REC", &link, at(900)), Err(AuthError::LinkExpired)));
        // Tampered: MAC, expiry, user, shape.
        let (head, mac) = link.rsplit_once('.').unwrap();
        let flipped = format!("{head}.{}{}", if mac.starts_with('A') { 'B' } else { 'A' }, &mac[1..]);
        let later = link.replacen(&unix_secs(at(900)).to_string(), &unix_secs(at(9000)).to_string(), 1);
        s.add_user("sue", Role::Supervisor, queues(&["sales"])).unwrap();
        let other_user = link.replacen("quinn.qa", "sue", 1);
        for bad in [flipped, later, other_user, head.to_string(), String::new(), "1.2.3".into(), format!("x{link}")] {
            assert!(matches!(s.check_link("01REC", &bad, at(10)), Err(AuthError::LinkInvalid)), "{bad:?}");
        }
        // Its user disabled, then removed.
        s.set_disabled("quinn.qa", true).unwrap();
        assert!(matches!(s.check_link("01REC", &link, at(10)), Err(AuthError::UserDisabled)));
        assert!(matches!(s.sign_link("01REC", "quinn.qa", at(900)), Err(AccessError::UserDisabled(_))));
        s.set_disabled("quinn.qa", false).unwrap();
        assert!(s.check_link("01REC", &link, at(10)).is_ok());
        s.remove_user("quinn.qa").unwrap();
        assert!(matches!(s.check_link("01REC", &link, at(10)), Err(AuthError::LinkInvalid)));
        // Roles that do not play have no links.
        s.add_user("ann", Role::Admin, Scope::default()).unwrap();
        assert!(matches!(s.sign_link("01REC", "ann", at(900)), Err(AccessError::CannotPlay { .. })));
        assert!(s.sign_link("01REC", "nobody", at(900)).unwrap_err().is_not_found());
    }

    #[test]
    fn access_withdrawn_after_the_request_began_is_noticed() {
        let (_d, s) = store();
        s.add_user("sue", Role::Supervisor, queues(&["sales"])).unwrap();
        s.add_user("ann", Role::Admin, Scope::default()).unwrap();
        let sales = json!({"metadata": {"queue": "sales"}});
        let (_, token) = s.create_token("sue", None, at(0)).unwrap();
        let p = s.authenticate(&token, at(1)).unwrap();
        assert_eq!(s.withdrawn(&p, Permission::Download, &sales).unwrap(), None);
        let link = s.sign_link("01REC", "sue", at(900)).unwrap();
        let by_link = s.check_link("01REC", &link, at(1)).unwrap();
        assert_eq!(s.withdrawn(&by_link, Permission::Play, &sales).unwrap(), None);
        // Disabled, then enabled again: the token is good again.
        s.set_disabled("sue", true).unwrap();
        assert_eq!(s.withdrawn(&p, Permission::Play, &sales).unwrap(), Some("its user was disabled"));
        assert_eq!(s.withdrawn(&by_link, Permission::Play, &sales).unwrap(), Some("its user was disabled"));
        s.set_disabled("sue", false).unwrap();
        assert_eq!(s.withdrawn(&p, Permission::Play, &sales).unwrap(), None);
        // Moved to another queue while listening to a sales call.
        s.set_scope("sue", queues(&["support"])).unwrap();
        assert_eq!(s.withdrawn(&p, Permission::Play, &sales).unwrap(), Some("the recording left its user's scope"));
        s.set_scope("sue", queues(&["sales", "support"])).unwrap();
        assert_eq!(s.withdrawn(&p, Permission::Play, &sales).unwrap(), None);
        // Revoked: the token's streams end; a link of the same user does not.
        let id = match &p.via {
            Via::Token(id) => id.clone(),
            other => panic!("{other:?}"),
        };
        assert!(s.revoke_token(&id, at(2)).unwrap());
        assert_eq!(s.withdrawn(&p, Permission::Play, &sales).unwrap(), Some("its token was revoked"));
        assert_eq!(s.withdrawn(&by_link, Permission::Play, &sales).unwrap(), None);
        // Removed, and a new user of the same name: not the one that was let in.
        s.remove_user("sue").unwrap();
        s.add_user("sue", Role::Supervisor, queues(&["sales"])).unwrap();
        assert_eq!(s.withdrawn(&by_link, Permission::Play, &sales).unwrap(), Some("its user was removed"));
        // A role that never had the permission (an admin does not play).
        let (_, admin_token) = s.create_token("ann", None, at(0)).unwrap();
        let admin = s.authenticate(&admin_token, at(1)).unwrap();
        assert_eq!(s.withdrawn(&admin, Permission::Play, &sales).unwrap(), Some("its user's role no longer allows it"));
    }

    #[test]
    fn a_new_user_of_a_removed_name_gets_none_of_its_links() {
        let (_d, s) = store();
        s.add_user("quinn", Role::Qa, queues(&["sales"])).unwrap();
        let first = s.user("quinn").unwrap().unwrap().uid;
        let link = s.sign_link("01REC", "quinn", at(900)).unwrap();
        assert_eq!(s.check_link("01REC", &link, at(1)).unwrap().uid, first);
        s.remove_user("quinn").unwrap();
        // Same name, role and scope, at once: still another user.
        s.add_user("quinn", Role::Qa, queues(&["sales"])).unwrap();
        let second = s.user("quinn").unwrap().unwrap().uid;
        assert_ne!(first, second);
        assert_eq!(second.len(), 32);
        assert!(matches!(s.check_link("01REC", &link, at(1)), Err(AuthError::LinkInvalid)));
        let new_link = s.sign_link("01REC", "quinn", at(900)).unwrap();
        assert_eq!(s.check_link("01REC", &new_link, at(1)).unwrap().uid, second);
    }

    #[test]
    fn a_schema_1_database_gets_uids() {
        let dir = tempfile::tempdir().unwrap();
        {
            let path = dir.path().join("access.db");
            fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).unwrap();
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, scope TEXT NOT NULL,
                     disabled INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
                 CREATE TABLE tokens (id TEXT PRIMARY KEY, user TEXT NOT NULL, sha256 TEXT NOT NULL,
                     created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, last_used_at TEXT);
                 INSERT INTO users VALUES ('sue', 'supervisor', '{\"all\":false,\"queues\":[\"sales\"],\"teams\":[]}', 0,
                     '2026-01-01T00:00:00.000Z');
                 INSERT INTO users VALUES ('ann', 'admin', '{\"all\":true,\"queues\":[],\"teams\":[]}', 0,
                     '2026-01-01T00:00:00.000Z');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let s = AccessStore::open(dir.path()).unwrap();
        let users = s.users().unwrap();
        assert!(users.iter().all(|u| u.uid.len() == 32), "{users:?}");
        assert_ne!(users[0].uid, users[1].uid);
        let link = s.sign_link("01REC", "sue", at(900)).unwrap();
        drop(s);
        // Reopening keeps them.
        let s = AccessStore::open(dir.path()).unwrap();
        assert_eq!(s.users().unwrap(), users);
        assert!(s.check_link("01REC", &link, at(1)).is_ok());
    }

    #[test]
    fn the_link_key_is_kept_and_replacing_it_ends_every_link() {
        let dir = tempfile::tempdir().unwrap();
        let link = {
            let s = AccessStore::open(dir.path()).unwrap();
            s.add_user("sue", Role::Supervisor, queues(&["sales"])).unwrap();
            s.sign_link("01REC", "sue", at(900)).unwrap()
        };
        let s = AccessStore::open(dir.path()).unwrap();
        assert!(s.check_link("01REC", &link, at(1)).is_ok(), "the same key after a restart");
        drop(s);
        let key = dir.path().join("link.key");
        fs::remove_file(&key).unwrap();
        let s = AccessStore::open(dir.path()).unwrap();
        assert!(matches!(s.check_link("01REC", &link, at(1)), Err(AuthError::LinkInvalid)));
        drop(s);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let s = AccessStore::open(dir.path()).unwrap();
        let e = s.sign_link("01REC", "sue", at(900)).unwrap_err();
        assert!(matches!(e, AccessError::KeyMode { .. }) && e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&key, b"short").unwrap();
        let s = AccessStore::open(dir.path()).unwrap();
        assert!(matches!(s.sign_link("01REC", "sue", at(900)), Err(AccessError::KeyFile { len: 5, .. })));
    }

    #[test]
    fn base64url_without_padding() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64url(&[0u8; 32]).len(), B64_32_LEN);
    }
}
