//! The recording catalog against a real `callvault serve`: recordings are indexed as they end,
//! found with `find` and `callvault catalog search`, and rebuilt from the sealed sidecars.

mod live;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use live::{Daemon, Options, send_pcmu};
use serde_json::{Value, json};

fn record(c: &mut live::Client, call_id: &str, agent: &str, caller: &str) -> String {
    let r = c.request(json!({"cmd": "start", "call_id": call_id,
        "metadata": {"agent": agent, "queue": "sales", "caller_number": caller, "ticket": format!("T-{call_id}")},
        "legs": [{"label": "customer"}, {"label": "agent"}]}));
    assert_eq!(r["ok"], true, "{r}");
    let port = r["legs"][0]["port"].as_u64().unwrap() as u16;
    send_pcmu(&UdpSocket::bind("127.0.0.1:0").unwrap(), ("127.0.0.1", port), 1, 5, 0x80);
    let stop = c.request(json!({"cmd": "stop", "call_id": call_id}));
    assert_eq!(stop["ok"], true, "{stop}");
    r["recording_id"].as_str().unwrap().to_string()
}

/// `find` until it returns `n` recordings (the catalog is written by a thread of its own).
fn find(c: &mut live::Client, q: Value, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut req = q.clone();
        req["cmd"] = json!("find");
        let r = c.request(req);
        assert_eq!(r["ok"], true, "{r}");
        if r["recordings"].as_array().map(Vec::len) == Some(n) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ids(r: &Value) -> Vec<String> {
    r["recordings"].as_array().unwrap().iter().map(|x| x["recording_id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn recordings_are_found_as_they_end_and_after_a_rebuild() {
    let mut d = Daemon::start(Options::default());
    let mut c = d.client().unwrap();
    let a = record(&mut c, "cat-1", "alice", "+4930111");
    let b = record(&mut c, "cat-2", "bob", "+4930222");
    let a2 = record(&mut c, "cat-3", "alice", "+4930333");
    let r = find(&mut c, json!({"agent": "alice"}), 2);
    assert_eq!(ids(&r), vec![a2.clone(), a.clone()], "newest first: {r}");
    assert_eq!(r["recordings"][0]["metadata"]["caller_number"], "+4930333");
    assert_eq!(ids(&find(&mut c, json!({"caller": "+4930222"}), 1)), vec![b.clone()]);
    assert_eq!(ids(&find(&mut c, json!({"metadata": {"ticket": "T-cat-1"}}), 1)), vec![a.clone()]);
    let page = find(&mut c, json!({"queue": "sales", "limit": 2}), 2);
    let next = page["next_cursor"].as_str().expect("a next page").to_string();
    assert_eq!(ids(&find(&mut c, json!({"queue": "sales", "limit": 2, "cursor": next}), 1)), vec![a.clone()]);
    let bad = c.request(json!({"cmd": "find", "from": "last week"}));
    assert_eq!(bad["error"]["code"], "bad_request", "{bad}");
    // The command line reads the same catalog.
    let cfg = d.dir.path().join("callvault.toml");
    let o = Command::new(live::bin())
        .args(["catalog", "search", "--config", cfg.to_str().unwrap(), "--agent", "bob", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids(&v), vec![b.clone()]);
    let o = Command::new(live::bin())
        .args(["catalog", "search", "--config", cfg.to_str().unwrap(), "--to", "soon"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // The catalog file is not world-readable: it holds numbers and names.
    use std::os::unix::fs::PermissionsExt;
    let db = d.dir.path().join("data/catalog.sqlite");
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o077, 0);
    // Lost: a start rebuilds it from the sealed sidecars.
    assert_eq!(d.terminate(), Some(0));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let mut d2 = Daemon::spawn(dir, &cfg);
    assert!(d2.log().contains("3 recording(s) indexed"), "{}", d2.log());
    let mut c = d2.client().unwrap();
    assert_eq!(ids(&find(&mut c, json!({"agent": "alice"}), 2)), vec![a2.clone(), a.clone()]);
    // And `callvault catalog rebuild` does the same by hand.
    assert_eq!(d2.terminate(), Some(0));
    let o = Command::new(live::bin())
        .args(["catalog", "rebuild", "--config", cfg.to_str().unwrap(), "--key-dir"])
        .arg(d2.dir.path().join("data/keys"))
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["indexed"], 3, "{v}");
}
