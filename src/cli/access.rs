//! `callvault user …` and `callvault token …`: who may use the HTTP API, with which role and
//! scope (docs/access.md). Every change is appended to the audit trail.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use serde_json::{Value, json};

use callvault::api::access::{AccessError, AccessStore, Role, Scope, TokenInfo, User};
use callvault::audit::{self, AuditLog, Entry};
use callvault::config::Config;

pub const USER_EXAMPLES: &str = "\
Examples:
  callvault user add sue --role supervisor --queue sales --queue billing
  callvault user add quinn --role qa --team blue
  callvault user add ann --role admin
  callvault user add audrey --role auditor --config /etc/callvault/callvault.toml
  callvault user scope sue --queue sales --team red      # replaces sue's scope
  callvault user disable sue                            # her tokens and links stop at once
  callvault user list --json | jq -r '.users[] | select(.disabled) | .name'

Roles: admin (search, metadata, verify, holds, delete; never listens), supervisor (search,
play, download, sample, links), qa (search, play, sample, links), auditor (audit trail,
verify). A supervisor or qa sees only the recordings of its queues and teams (--queue,
--team, repeatable), or all of them with --all-recordings; one of these is required.
Users live in <data_dir>/access.db; every change is written to the audit trail.
See docs/access.md.

Exit codes: 0 done; 1 failed; 2 usage error (bad name, role or scope); 3 no data directory (wrong --config);\n4 no such user.";

pub const TOKEN_EXAMPLES: &str = "\
Examples:
  callvault token create --user sue                  # 90 days; the token on stdout, once
  callvault token create --user crm-bot --expires 12h --json | jq -r .token
  callvault token create --user audrey --expires never
  callvault token list --user sue
  callvault token revoke 3f9a0c1b2d4e

A token is shown only when created: it is stored as its SHA-256 alone, so a lost one cannot be
shown again (create another and revoke the old one). Clients send it as
`Authorization: Bearer cvt_…`. `token list` never shows secrets. See docs/access.md.

Exit codes: 0 done; 1 failed; 2 usage error; 3 no data directory (wrong --config); 4 no such user or token.";

/// Options every user and token command takes.
#[derive(clap::Args)]
pub struct Common {
    /// The configuration serve runs with (for data_dir); embedded defaults without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// One JSON object on standard output.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ScopeArgs {
    /// A queue whose recordings the user sees (metadata `queue`; repeatable).
    #[arg(long = "queue", value_name = "QUEUE")]
    queues: Vec<String>,
    /// A team whose recordings the user sees (metadata `team`; repeatable).
    #[arg(long = "team", value_name = "TEAM")]
    teams: Vec<String>,
    /// Every recording, whatever its queue or team.
    #[arg(long = "all-recordings")]
    all: bool,
}

impl ScopeArgs {
    fn scope(self) -> Scope {
        Scope { all: self.all, queues: self.queues, teams: self.teams }
    }
}

#[derive(clap::Args)]
pub struct UserArgs {
    #[command(subcommand)]
    cmd: UserCmd,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user (1 to 64 of a-z 0-9 . _ @ -) with a role; supervisor and qa need a scope.
    Add {
        name: String,
        /// admin, supervisor, qa or auditor.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        scope: ScopeArgs,
        #[command(flatten)]
        common: Common,
    },
    /// List the users, their roles and scopes.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Disable a user: its tokens and links stop working at once (until `user enable`).
    Disable {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Enable a disabled user again.
    Enable {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Remove a user and revoke its tokens.
    Remove {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Replace a supervisor's or qa's scope.
    Scope {
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    cmd: TokenCmd,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create an API token for a user; it is printed once, on standard output.
    Create {
        /// The user the token acts as.
        #[arg(long)]
        user: String,
        /// Lifetime: days, hours or minutes (90d, 12h, 30m), or never.
        #[arg(long, value_name = "90d|12h|never", default_value = "90d", value_parser = parse_expires)]
        expires: Expiry,
        #[command(flatten)]
        common: Common,
    },
    /// List tokens (ids, users, times; never secrets).
    List {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a token by its id (the 12 characters after `cvt_`).
    Revoke {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// A token's lifetime; `None` is never.
#[derive(Clone, Copy)]
struct Expiry(Option<Duration>);

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("`{s}` is not a role: use admin, supervisor, qa or auditor"))
}

fn parse_expires(s: &str) -> Result<Expiry, String> {
    if s == "never" {
        return Ok(Expiry(None));
    }
    let bad = || format!("`{s}` is not a lifetime: use a number of days, hours or minutes (90d, 12h, 30m) or never");
    let unit = match s.chars().last() {
        Some('d') => 86_400,
        Some('h') => 3_600,
        Some('m') => 60,
        _ => return Err(bad()),
    };
    let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
    match n.checked_mul(unit) {
        Some(secs) if n > 0 && secs <= 10 * 366 * 86_400 => Ok(Expiry(Some(Duration::from_secs(secs)))),
        _ => Err(format!("`{s}`: a lifetime is at least a minute and at most 10 years (or never)")),
    }
}

fn load_config(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

/// A data directory that is not there is a wrong `--config` or working directory, not a new
/// recorder: users made there would be another daemon's, and their tokens refused (exit 3).
fn check_data_dir(cfg: &Config, given: bool) -> Result<(), ExitCode> {
    if cfg.data_dir.is_dir() {
        return Ok(());
    }
    eprintln!(
        "error: data directory {} does not exist: {}",
        cfg.data_dir.display(),
        if given {
            "is this the configuration serve runs with? (serve creates it on its first start)"
        } else {
            "pass --config with the configuration serve runs with, or run this where serve runs (serve creates it on its first start)"
        }
    );
    Err(ExitCode::from(3))
}

fn scope_text(s: &Scope) -> String {
    if s.all {
        return "all recordings".into();
    }
    let mut parts = Vec::new();
    if !s.queues.is_empty() {
        parts.push(format!("queues {}", s.queues.join(", ")));
    }
    if !s.teams.is_empty() {
        parts.push(format!("teams {}", s.teams.join(", ")));
    }
    parts.join("; ")
}

/// What a command did, for the terminal and for the audit trail.
struct Done {
    /// Standard output without --json.
    text: String,
    /// Standard output with --json.
    json: Value,
    /// The audit entry's detail.
    detail: Value,
}

fn code_of(e: &AccessError) -> u8 {
    match e {
        e if e.is_not_found() => 4,
        AccessError::BadName(_) | AccessError::BadScope(_) => 2,
        _ => 1,
    }
}

/// Opens the store and the audit trail of the configured data directory, makes one change and
/// records it (done or not) as `action` on `target`.
fn change(
    common: &Common,
    action: &str,
    target: &str,
    f: impl FnOnce(&AccessStore) -> Result<Done, AccessError>,
    // Undoes a change the audit trail could not record (a token nobody may hold unrecorded).
    undo: impl FnOnce(&AccessStore, &Done),
) -> ExitCode {
    let cfg = match load_config(&common.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(code) = check_data_dir(&cfg, common.config.is_some()) {
        return code;
    }
    let store = match AccessStore::open(&cfg.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // Opened before the change: a change the trail cannot take is not made.
    let log = match AuditLog::open(&cfg.data_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: the audit trail cannot be opened, so nothing was changed: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = f(&store);
    let result = match &outcome {
        Ok(_) => "ok".to_string(),
        Err(e) if e.is_not_found() => "not_found".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let detail = outcome.as_ref().map(|d| d.detail.clone()).unwrap_or_else(|_| json!({}));
    let entry = Entry {
        actor: audit::cli_actor(),
        action: action.to_string(),
        target: target.to_string(),
        source: "cli".to_string(),
        result,
        detail,
    };
    if let Err(e) = log.append(entry) {
        return match outcome {
            Ok(done) => {
                undo(&store, &done);
                eprintln!("error: {action} {target} was done but the audit trail could not record it: {e}");
                ExitCode::from(1)
            }
            Err(err) => {
                eprintln!("error: {err} (and the audit trail could not record the attempt: {e})");
                ExitCode::from(code_of(&err))
            }
        };
    }
    match outcome {
        Ok(done) => {
            if common.json {
                out!("{}", serde_json::to_string_pretty(&done.json).unwrap_or_default());
            } else if !done.text.is_empty() {
                out!("{}", done.text);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(code_of(&e))
        }
    }
}

/// Runs a command that only reads.
fn read(common: &Common, f: impl FnOnce(&AccessStore) -> Result<Done, AccessError>) -> ExitCode {
    let cfg = match load_config(&common.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(code) = check_data_dir(&cfg, common.config.is_some()) {
        return code;
    }
    match AccessStore::open(&cfg.data_dir).and_then(|s| f(&s)) {
        Ok(done) => {
            if common.json {
                out!("{}", serde_json::to_string_pretty(&done.json).unwrap_or_default());
            } else if !done.text.is_empty() {
                out!("{}", done.text);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(code_of(&e))
        }
    }
}

fn user_line(u: &User) -> String {
    format!(
        "{:<24} {:<10} {:<8} {}  {}",
        u.name,
        u.role.name(),
        if u.disabled { "disabled" } else { "enabled" },
        u.created_at,
        scope_text(&u.scope)
    )
}

fn user_json(u: &User) -> Value {
    serde_json::to_value(u).unwrap_or_default()
}

fn updated_user(s: &AccessStore, name: &str, what: &str) -> Result<Done, AccessError> {
    let u = s.user(name)?.ok_or_else(|| AccessError::UserNotFound(name.to_string()))?;
    Ok(Done {
        text: format!("user {name} {what}: {} ({})", u.role, scope_text(&u.scope)),
        detail: json!({"role": u.role.name(), "scope": u.scope}),
        json: user_json(&u),
    })
}

pub fn user_cmd(args: UserArgs) -> ExitCode {
    let nothing = |_: &AccessStore, _: &Done| {};
    match args.cmd {
        UserCmd::Add { name, role, scope, common } => change(
            &common,
            "user.add",
            &name,
            |s| {
                s.add_user(&name, role, scope.scope())?;
                updated_user(s, &name, "added")
            },
            nothing,
        ),
        UserCmd::Scope { name, scope, common } => change(
            &common,
            "user.scope",
            &name,
            |s| {
                s.set_scope(&name, scope.scope())?;
                updated_user(s, &name, "now sees")
            },
            nothing,
        ),
        UserCmd::Disable { name, common } => change(
            &common,
            "user.disable",
            &name,
            |s| {
                s.set_disabled(&name, true)?;
                updated_user(s, &name, "disabled (its tokens and links no longer work)")
            },
            nothing,
        ),
        UserCmd::Enable { name, common } => change(
            &common,
            "user.enable",
            &name,
            |s| {
                s.set_disabled(&name, false)?;
                updated_user(s, &name, "enabled")
            },
            nothing,
        ),
        UserCmd::Remove { name, common } => change(
            &common,
            "user.remove",
            &name,
            |s| {
                let live = s.tokens(Some(&name))?.iter().filter(|t| t.revoked_at.is_none()).count();
                s.remove_user(&name)?;
                Ok(Done {
                    text: format!("user {name} removed; {live} token(s) revoked"),
                    json: json!({"user": name, "removed": true, "tokens_revoked": live}),
                    detail: json!({"tokens_revoked": live}),
                })
            },
            nothing,
        ),
        UserCmd::List { common } => read(&common, |s| {
            let users = s.users()?;
            if users.is_empty() && !common.json {
                eprintln!("no users: add one with `callvault user add NAME --role ROLE`");
            }
            Ok(Done {
                text: users.iter().map(user_line).collect::<Vec<_>>().join("\n"),
                json: json!({"users": users.iter().map(user_json).collect::<Vec<_>>()}),
                detail: Value::Null,
            })
        }),
    }
}

fn token_json(t: &TokenInfo) -> Value {
    serde_json::to_value(t).unwrap_or_default()
}

fn token_line(t: &TokenInfo) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "{}  {:<24} created {}  expires {}  last used {}  revoked {}",
        t.id,
        t.user,
        t.created_at,
        t.expires_at.clone().unwrap_or_else(|| "never".into()),
        or_dash(&t.last_used_at),
        or_dash(&t.revoked_at)
    )
}

pub fn token_cmd(args: TokenArgs) -> ExitCode {
    match args.cmd {
        TokenCmd::Create { user, expires, common } => {
            let json_out = common.json;
            change(
                &common,
                "token.create",
                &user,
                |s| {
                    let (info, token) = s.create_token(&user, expires.0, SystemTime::now())?;
                    if !json_out {
                        eprintln!(
                            "token {} for {user}, expires {}; shown only now: keep it in the client's secret store",
                            info.id,
                            info.expires_at.as_deref().unwrap_or("never")
                        );
                    }
                    let mut j = token_json(&info);
                    j["token"] = json!(token);
                    Ok(Done {
                        text: token,
                        json: j,
                        detail: json!({"token_id": info.id, "expires_at": info.expires_at}),
                    })
                },
                |s, done| {
                    if let Some(id) = done.json["id"].as_str() {
                        match s.revoke_token(id, SystemTime::now()) {
                            Ok(_) => eprintln!("note: token {id} revoked again, as it could not be recorded"),
                            Err(e) => {
                                eprintln!("error: revoke token {id} by hand (`callvault token revoke {id}`): {e}")
                            }
                        }
                    }
                },
            )
        }
        TokenCmd::Revoke { id, common } => change(
            &common,
            "token.revoke",
            &id,
            |s| {
                let owner = s.tokens(None)?.into_iter().find(|t| t.id == id).map(|t| t.user);
                let now = s.revoke_token(&id, SystemTime::now())?;
                Ok(Done {
                    text: if now { format!("token {id} revoked") } else { format!("token {id} was already revoked") },
                    json: json!({"id": id, "user": owner, "revoked": true, "already_revoked": !now}),
                    detail: json!({"user": owner, "already_revoked": !now}),
                })
            },
            |_, _| {},
        ),
        TokenCmd::List { user, common } => read(&common, |s| {
            let tokens = s.tokens(user.as_deref())?;
            // A removed user's tokens stay listed (revoked); a name that never had any is a typo.
            if let Some(u) = &user
                && tokens.is_empty()
                && s.user(u)?.is_none()
            {
                return Err(AccessError::UserNotFound(u.clone()));
            }
            if tokens.is_empty() && !common.json {
                eprintln!("no tokens");
            }
            Ok(Done {
                text: tokens.iter().map(token_line).collect::<Vec<_>>().join("\n"),
                json: json!({"tokens": tokens.iter().map(token_json).collect::<Vec<_>>()}),
                detail: Value::Null,
            })
        }),
    }
}
