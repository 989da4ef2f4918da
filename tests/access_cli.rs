//! `callvault user …` and `callvault token …` as an admin runs them: output, JSON, exit codes,
//! what is stored, and the audit trail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use callvault::api::access::{AccessStore, AuthError, Role};
use serde_json::Value;

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("callvault.toml");
    std::fs::write(&config, format!("data_dir = {:?}\n", data.display().to_string())).unwrap();
    // As `serve` leaves it on its first start.
    std::fs::create_dir(&data).unwrap();
    Env { _dir: dir, config, data }
}

/// Run against a data directory that is not there (a wrong --config or working directory), the
/// commands refuse and create nothing: users made there would be no daemon's.
#[test]
fn a_missing_data_directory_is_refused_and_not_created() {
    let e = env();
    std::fs::remove_dir(&e.data).unwrap();
    for args in [
        &["user", "list"][..],
        &["user", "add", "sue", "--role", "qa", "--all-recordings"],
        &["token", "create", "--user", "sue"],
        &["token", "list"],
    ] {
        let o = e.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("does not exist") && err.contains("configuration serve runs with"), "{args:?}: {err}");
        assert!(!e.data.exists(), "{args:?} created {}", e.data.display());
    }
}

impl Env {
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        Command::new(env!("CARGO_BIN_EXE_callvault")).args(&all).output().expect("run callvault")
    }

    /// Runs with --json; the exit code and the parsed standard output.
    fn json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = args.to_vec();
        all.push("--json");
        let o = self.run(&all);
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("{args:?}: stdout is not JSON ({e}): {}\nstderr: {}", text(&o.stdout), text(&o.stderr))
        });
        (o.status.code().unwrap(), v)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn users_and_tokens_from_creation_to_revocation() {
    let e = env();
    let (c, v) = e.json(&["user", "add", "sue", "--role", "supervisor", "--queue", "sales", "--team", "blue"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["role"], "supervisor");
    assert_eq!(v["scope"], serde_json::json!({"all": false, "queues": ["sales"], "teams": ["blue"]}));
    assert_eq!(code(&e.run(&["user", "add", "ann", "--role", "admin"])), 0);
    assert_eq!(mode(&e.data.join("access.db")), 0o600);

    // Created with --json: the token in the object; without: alone on stdout, the rest on stderr.
    let (c, created) = e.json(&["token", "create", "--user", "sue", "--expires", "12h"]);
    assert_eq!(c, 0, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(token.starts_with(&format!("cvt_{id}_")), "{token}");
    assert!(created["expires_at"].is_string());
    let o = e.run(&["token", "create", "--user", "sue", "--expires", "never"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let second = text(&o.stdout).trim().to_string();
    assert!(second.starts_with("cvt_") && !second.contains(char::is_whitespace), "{second}");
    assert!(text(&o.stderr).contains("expires never"), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains(&second), "the token only on stdout");

    // The daemon's side accepts them.
    let store = AccessStore::open(&e.data).unwrap();
    let p = store.authenticate(&token, SystemTime::now()).unwrap();
    assert_eq!((p.user.as_str(), p.role), ("sue", Role::Supervisor));
    assert!(store.authenticate(&second, SystemTime::now()).is_ok());

    // Lists never show a secret.
    let (c, list) = e.json(&["token", "list"]);
    assert_eq!(c, 0);
    assert_eq!(list["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(list["tokens"][0]["id"], id.as_str());
    assert_eq!(list["tokens"][0]["user"], "sue");
    for key in ["created_at", "expires_at", "last_used_at", "revoked_at"] {
        assert!(list["tokens"][0].get(key).is_some(), "{key}: {list}");
    }
    let human = e.run(&["token", "list", "--user", "sue"]);
    assert_eq!(code(&human), 0);
    assert!(text(&human.stdout).contains(&id));
    for out in [list.to_string(), text(&human.stdout), text(&human.stderr)] {
        assert!(!out.contains(&token[17..]) && !out.contains(&second[17..]), "a secret listed: {out}");
    }
    let (_, none) = e.json(&["token", "list", "--user", "ann"]);
    assert_eq!(none["tokens"], serde_json::json!([]));

    // Revoke: done, then already done, then an unknown id.
    let (c, r) = e.json(&["token", "revoke", &id]);
    assert_eq!((c, &r["already_revoked"]), (0, &Value::Bool(false)), "{r}");
    assert!(matches!(store.authenticate(&token, SystemTime::now()), Err(AuthError::Revoked)));
    let again = e.run(&["token", "revoke", &id]);
    assert_eq!(code(&again), 0);
    assert!(text(&again.stdout).contains("already revoked"));
    let unknown = e.run(&["token", "revoke", "000000000000"]);
    assert_eq!(code(&unknown), 4, "{}", text(&unknown.stderr));
    let (_, list) = e.json(&["token", "list"]);
    assert!(list["tokens"][0]["revoked_at"].is_string());

    // Disable, enable, remove.
    assert_eq!(code(&e.run(&["user", "disable", "sue"])), 0);
    assert!(matches!(store.authenticate(&second, SystemTime::now()), Err(AuthError::UserDisabled)));
    let (_, users) = e.json(&["user", "list"]);
    assert_eq!(users["users"][1]["name"], "sue");
    assert_eq!(users["users"][1]["disabled"], true);
    assert_eq!(code(&e.run(&["user", "enable", "sue"])), 0);
    assert!(store.authenticate(&second, SystemTime::now()).is_ok());
    let (c, scoped) = e.json(&["user", "scope", "sue", "--queue", "billing"]);
    assert_eq!(c, 0);
    assert_eq!(scoped["scope"]["queues"], serde_json::json!(["billing"]));
    assert_eq!(scoped["scope"]["teams"], serde_json::json!([]));
    let (c, removed) = e.json(&["user", "remove", "sue"]);
    assert_eq!((c, &removed["tokens_revoked"]), (0, &serde_json::json!(1)), "{removed}");
    assert!(matches!(store.authenticate(&second, SystemTime::now()), Err(AuthError::Revoked)));
    for args in [&["user", "remove", "sue"][..], &["user", "disable", "sue"], &["token", "create", "--user", "sue"]] {
        let o = e.run(args);
        assert_eq!(code(&o), 4, "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("no user `sue`"), "{}", text(&o.stderr));
    }

    // Every change is in the audit trail, none with a secret.
    let log = callvault::audit::AuditLog::open(&e.data).unwrap();
    let entries = log.read(&callvault::audit::ReadQuery { limit: 1000, ..Default::default() }).unwrap();
    let actions: Vec<&str> = entries.iter().filter_map(|x| x["action"].as_str()).collect();
    for a in ["user.add", "token.create", "token.revoke", "user.disable", "user.enable", "user.scope", "user.remove"] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }
    assert!(entries.iter().all(|x| x["source"] == "cli" && x["actor"].as_str().unwrap().starts_with("cli:")));
    let trail = serde_json::to_string(&entries).unwrap();
    assert!(!trail.contains(&token[17..]) && !trail.contains(&second[17..]));
}

#[test]
fn bad_roles_scopes_names_and_lifetimes_are_usage_errors() {
    let e = env();
    let o = e.run(&["user", "add", "bob", "--role", "root"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("admin, supervisor, qa or auditor"), "{}", text(&o.stderr));
    for role in ["supervisor", "qa"] {
        let o = e.run(&["user", "add", "bob", "--role", role]);
        assert_eq!(code(&o), 2, "{role}");
        assert!(text(&o.stderr).contains("--queue Q, --team T or --all-recordings"), "{}", text(&o.stderr));
    }
    let o = e.run(&["user", "add", "ann", "--role", "admin", "--queue", "sales"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("every recording"), "{}", text(&o.stderr));
    let o = e.run(&["user", "add", "Bob Smith", "--role", "auditor"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("not a user name"), "{}", text(&o.stderr));
    assert_eq!(code(&e.run(&["user", "add", "all-qa", "--role", "qa", "--all-recordings"])), 0);
    let dup = e.run(&["user", "add", "all-qa", "--role", "qa", "--all-recordings"]);
    assert_eq!(code(&dup), 1);
    assert!(text(&dup.stderr).contains("already exists"));
    for bad in ["0d", "90", "1y", "never-ever", "99999999999999999999d", "3700000d"] {
        let o = e.run(&["token", "create", "--user", "all-qa", "--expires", bad]);
        assert_eq!(code(&o), 2, "{bad}: {}", text(&o.stderr));
    }
    assert_eq!(code(&e.run(&["token", "create", "--user", "all-qa", "--expires", "30m"])), 0);
    assert_eq!(code(&e.run(&["user", "frobnicate"])), 2);
}

#[test]
fn token_list_of_an_unknown_user_is_exit_4() {
    let e = env();
    let o = e.run(&["token", "list", "--user", "nobody"]);
    assert_eq!(code(&o), 4, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no user `nobody`"), "{}", text(&o.stderr));
    assert_eq!(code(&e.run(&["token", "list", "--user", "nobody", "--json"])), 4);
    // A user without tokens is no error, nor is a removed one whose (revoked) tokens remain.
    assert_eq!(code(&e.run(&["user", "add", "sue", "--role", "supervisor", "--queue", "sales"])), 0);
    let (c, list) = e.json(&["token", "list", "--user", "sue"]);
    assert_eq!((c, list["tokens"].as_array().map(Vec::len)), (0, Some(0)));
    assert_eq!(code(&e.run(&["token", "create", "--user", "sue"])), 0);
    assert_eq!(code(&e.run(&["user", "remove", "sue"])), 0);
    let (c, list) = e.json(&["token", "list", "--user", "sue"]);
    assert_eq!(c, 0);
    assert!(list["tokens"][0]["revoked_at"].is_string(), "{list}");
}

#[test]
fn all_recordings_with_a_queue_or_team_is_a_usage_error() {
    let e = env();
    for extra in [&["--queue", "x"][..], &["--team", "t"], &["--queue", "x", "--team", "t"]] {
        let mut args = vec!["user", "add", "q", "--role", "qa", "--all-recordings"];
        args.extend(extra);
        let o = e.run(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("--all-recordings"), "{}", text(&o.stderr));
    }
    let (_, users) = e.json(&["user", "list"]);
    assert_eq!(users["users"], serde_json::json!([]), "nothing was added");
    assert_eq!(code(&e.run(&["user", "add", "q", "--role", "qa", "--queue", "x"])), 0);
    let o = e.run(&["user", "scope", "q", "--all-recordings", "--team", "t"]);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    let (_, users) = e.json(&["user", "list"]);
    assert_eq!(users["users"][0]["scope"]["queues"], serde_json::json!(["x"]), "the scope is unchanged");
    assert_eq!(users["users"][0]["scope"]["all"], false);
}

#[test]
fn a_missing_config_is_a_usage_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_callvault"))
        .args(["user", "list", "--config", "/nonexistent/callvault.toml"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
}

/// The audit trail's own actors cannot be user names: a user called `daemon` would pass for it.
#[test]
fn the_audit_trails_actors_are_not_user_names() {
    let e = env();
    for name in ["unauthenticated", "daemon", "control", "cli"] {
        let o = e.run(&["user", "add", name, "--role", "qa", "--all-recordings"]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    }
}
