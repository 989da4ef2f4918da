//! The audit trail end to end: a real `callvault serve` records the control socket's requests in
//! its hash-chained log and anchors the head in the local archive and the journal; `callvault
//! audit verify` finds the log intact, then finds an edited, a removed and a cut-off entry in
//! tampered copies.

mod live;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use live::{Daemon, Options};
use serde_json::{Value, json};

fn cli(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(live::bin()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&src, &dst);
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A copy of the daemon's data directory and a config naming it.
fn copy_of(d: &Daemon, name: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(name);
    copy_dir(&d.dir.path().join("data"), &data);
    let cfg = dir.path().join("callvault.toml");
    std::fs::write(&cfg, format!("data_dir = \"{}\"\n{extra}", data.display())).unwrap();
    (dir, cfg)
}

/// What someone with write access to the database (but not the key) could do.
fn tamper(cfg: &Path, sql: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let data = text.lines().next().unwrap().trim_start_matches("data_dir = ").trim_matches('"');
    let conn = rusqlite::Connection::open(Path::new(data).join("audit.db")).unwrap();
    conn.execute_batch("DROP TRIGGER IF EXISTS entries_no_update; DROP TRIGGER IF EXISTS entries_no_delete;").unwrap();
    conn.execute_batch(sql).unwrap();
}

fn seq_of(entries: &[Value], action: &str, target: &str) -> u64 {
    entries
        .iter()
        .find(|e| e["action"] == action && e["target"] == target)
        .unwrap_or_else(|| panic!("no {action} {target} in {entries:?}"))["seq"]
        .as_u64()
        .unwrap()
}

fn problems(v: &Value) -> Vec<(u64, String)> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["seq"].as_u64().unwrap_or(0), p["kind"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn control_requests_are_audited_and_tampering_is_found() {
    let mut d = Daemon::start(Options {
        extra: "[storage]\nship = true\n[audit]\nanchor_interval_s = 1\n".into(),
        ..Options::default()
    });
    let mut c = d.client().unwrap();
    let r = c.request(json!({"cmd": "start", "call_id": "c-1", "legs": [{"label": "customer"}]}));
    assert_eq!(r["ok"], true, "{r}");
    let rid = r["recording_id"].as_str().unwrap().to_string();
    assert_eq!(c.request(json!({"cmd": "pause", "call_id": "c-1", "mode": "cut"}))["ok"], true);
    assert_eq!(c.request(json!({"cmd": "resume", "call_id": "c-1"}))["ok"], true);
    assert_eq!(c.request(json!({"cmd": "stop", "call_id": "c-1"}))["ok"], true);
    // A refusal is recorded too.
    assert_eq!(c.request(json!({"cmd": "stop", "call_id": "nope"}))["error"]["code"], "unknown_call");
    // A target with a run of spaces must not print as two columns.
    assert_eq!(c.request(json!({"cmd": "stop", "call_id": "a  b"}))["error"]["code"], "unknown_call");
    // Status is a read of the recorder's own state: not recorded.
    let _ = c.request(json!({"cmd": "status", "call_id": "c-1"}));
    std::thread::sleep(Duration::from_millis(1500));
    drop(c);
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    let log = d.log();
    assert!(log.contains("audit anchor: seq "), "{log}");

    let cfg = d.dir.path().join("callvault.toml");
    let cfg = cfg.to_str().unwrap();
    let (code, v, out) = cli(&["audit", "verify", "--config", cfg, "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["anchors_checked"].as_u64().unwrap() >= 1, "{v}");
    let last = v["last_seq"].as_u64().unwrap();
    assert_eq!(v["latest_anchor"]["seq"], last, "the shutdown anchor covers the last entry: {v}");
    let (code, _, out) = cli(&["audit", "verify", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("INTACT"), "{out}");

    let (code, v, out) = cli(&["audit", "list", "--config", cfg, "--json"]);
    assert_eq!(code, 0, "{out}");
    let entries = v["entries"].as_array().unwrap().clone();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let calls: Vec<&Value> = entries.iter().filter(|e| e["target"] == "c-1").collect();
    let actions: Vec<&str> = calls.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["start", "pause", "resume", "stop"], "{entries:?}");
    for e in &calls {
        assert_eq!(e["actor"], format!("control:uid={uid}"), "{e}");
        assert_eq!(e["source"], "control socket");
        assert_eq!(e["result"], "ok");
        assert_eq!(e["detail"]["recording_id"], rid.as_str(), "{e}");
    }
    assert_eq!(calls[1]["detail"]["mode"], "cut");
    let refused = entries.iter().find(|e| e["target"] == "nope").unwrap();
    assert_eq!((refused["action"].as_str(), refused["result"].as_str()), (Some("stop"), Some("not_found")));
    assert!(!entries.iter().any(|e| e["action"] == "status"));
    assert_eq!(entries.first().unwrap()["action"], "serve.start");
    assert_eq!(entries.last().unwrap()["action"], "serve.stop");
    let (code, v, _) = cli(&["audit", "list", "--config", cfg, "--json", "--action", "pause"]);
    assert_eq!((code, v["entries"].as_array().unwrap().len()), (0, 1));
    let (code, _, out) = cli(&["audit", "list", "--config", cfg, "--since", "yesterday"]);
    assert_eq!(code, 2, "{out}");
    let (code, _, out) = cli(&["audit", "list", "--config", cfg, "--target", "a  b"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("  stop  \"a  b\"  control socket  not_found"), "{out}");

    // An edited entry: the refusal made to look like a success.
    let refused_seq = seq_of(&entries, "stop", "nope");
    let (_keep, edited) = copy_of(&d, "edited", "");
    tamper(&edited, &format!("UPDATE entries SET result = 'ok' WHERE seq = {refused_seq}"));
    let (code, v, out) = cli(&["audit", "verify", "--config", edited.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(v["ok"], false);
    assert_eq!(problems(&v), vec![(refused_seq, "edited".to_string())], "{v}");

    // A removed entry: the pause.
    let pause_seq = seq_of(&entries, "pause", "c-1");
    let (_keep, removed) = copy_of(&d, "removed", "");
    tamper(&removed, &format!("DELETE FROM entries WHERE seq = {pause_seq}"));
    let (code, v, out) = cli(&["audit", "verify", "--config", removed.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{out}");
    // (An anchor taken while the pause was the head says so too, at the same seq.)
    let found = problems(&v);
    assert_eq!(found[0], (pause_seq, "removed".to_string()), "{v}");
    assert!(found.iter().all(|(s, _)| *s == pause_seq), "{v}");
    let (_, _, human) = cli(&["audit", "verify", "--config", removed.to_str().unwrap()]);
    assert!(human.contains(&format!("entry {pause_seq} was removed")), "{human}");

    // A cut-off tail: the last three entries gone; the anchor in the archive tells.
    let (_keep, cut) = copy_of(&d, "cut", "");
    tamper(&cut, &format!("DELETE FROM entries WHERE seq > {}", last - 3));
    let (code, v, out) = cli(&["audit", "verify", "--config", cut.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{out}");
    // Every anchor past the cut reports it; the shutdown anchor's names the whole tail.
    let found = problems(&v);
    assert!(found.iter().all(|(s, k)| *s > last - 3 && k == "cut_off"), "{v}");
    let at_last = v["problems"].as_array().unwrap().iter().find(|p| p["seq"] == last).expect("the shutdown anchor");
    assert!(at_last["message"].as_str().unwrap().contains(&format!("entries {} to {last}", last - 2)), "{v}");

    // The same cut with the archive's anchors gone too: the journal's anchors still tell.
    let (_keep, cut2) = copy_of(&d, "cut2", "[storage]\nship = false\n");
    let data = cut2.parent().unwrap().join("cut2");
    std::fs::remove_dir_all(data.join("archive/_audit")).unwrap();
    tamper(&cut2, &format!("DELETE FROM entries WHERE seq > {}", last - 3));
    let (code, v, out) = cli(&["audit", "verify", "--config", cut2.to_str().unwrap(), "--json"]);
    assert_eq!((code, v["ok"].clone()), (0, json!(true)), "without anchors a cut tail is not visible: {out}");
    let journal = d.stderr_path.to_str().unwrap();
    let (code, v, out) = cli(&["audit", "verify", "--config", cut2.to_str().unwrap(), "--json", "--journal", journal]);
    assert_eq!(code, 1, "{out}");
    assert!(problems(&v).contains(&(last, "cut_off".to_string())), "{v}");

    // The log wiped (truncated to 0 bytes, or removed): the anchors tell what was there (1),
    // not "no such table" (3).
    let (_keep, wiped) = copy_of(&d, "wiped", "");
    let data = wiped.parent().unwrap().join("wiped");
    std::fs::write(data.join("audit.db"), b"").unwrap();
    let _ = std::fs::remove_file(data.join("audit.db-wal"));
    let (code, v, out) = cli(&["audit", "verify", "--config", wiped.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{out}");
    assert!(problems(&v).contains(&(last, "cut_off".to_string())), "{v}");
    std::fs::remove_file(data.join("audit.db")).unwrap();
    let (code, _, out) = cli(&["audit", "verify", "--config", wiped.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cut off"), "{out}");

    // The key gone: cannot check (3), and the daemon refuses to start over the log.
    let (_keep, nokey) = copy_of(&d, "nokey", "");
    std::fs::remove_file(nokey.parent().unwrap().join("nokey/audit.key")).unwrap();
    let (code, _, out) = cli(&["audit", "verify", "--config", nokey.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
}
