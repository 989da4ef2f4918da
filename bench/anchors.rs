//! What `callvault audit verify` pays to load the audit trail's anchors from the store, by the
//! form of their object names: the current form, which holds the whole anchor so one listing
//! request covers a thousand of them, against the first form (`<seq>.json`), which needs one read
//! per anchor. Plants N anchors of each form under two prefixes and times `load_anchors`.
//!
//! `cargo bench --bench anchors [-- --anchors N]`. Targets: the local archive, and a single-node
//! Garage on 127.0.0.1 when `garage` is installed.

#[path = "../tests/garage/mod.rs"]
mod garage;

use std::time::Instant;

use callvault::audit::{ANCHOR_DIR, load_anchors};
use callvault::config::{Config, TargetConfig};
use callvault::storage::Storage;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Anchor `seq`'s object name in either form, and its body. The MACs are made up: loading does
/// not check them (`verify` does), so they cost the same.
fn anchor(seq: usize, named: bool) -> (String, Vec<u8>) {
    let (chain, mac, anchor_mac) = ("c".repeat(32), format!("{seq:064x}"), "a".repeat(64));
    let at = "2026-12-04T12:00:00.000Z";
    let body = serde_json::json!({"seq": seq, "mac": mac, "at": at, "node": "bench", "chain": chain,
        "anchor_mac": anchor_mac});
    let name = if named {
        format!("{ANCHOR_DIR}/bench/{seq:020}.{chain}.{mac}.{anchor_mac}.{}.json", at.replace(':', "_"))
    } else {
        format!("{ANCHOR_DIR}/bench/{seq:020}.json")
    };
    (name, serde_json::to_vec_pretty(&body).unwrap())
}

/// Seconds to load `n` anchors of one form, planted in `cfg`'s primary target.
fn time_load(cfg: &Config, n: usize, named: bool) -> f64 {
    let storage = Storage::open(cfg).unwrap();
    let t = storage.targets().next().unwrap();
    storage.block_on(async {
        for seq in 1..=n {
            let (name, body) = anchor(seq, named);
            t.put(&t.key(&name), body).await.unwrap();
        }
    });
    let start = Instant::now();
    let loaded = load_anchors(&storage).unwrap();
    let s = start.elapsed().as_secs_f64();
    assert_eq!(loaded.len(), n);
    s
}

fn compare(label: &str, n: usize, cfg_for: &dyn Fn(&str) -> Config) {
    let named = time_load(&cfg_for("named"), n, true);
    let read = time_load(&cfg_for("read"), n, false);
    println!(
        "{label:<20} {n:>6} anchors  names listed: {:>7.1} ms ({:>8.0} anchors/s)  each read: {:>8.1} ms ({:>7.0} anchors/s)  listed/read: {:.3}x",
        named * 1e3,
        n as f64 / named,
        read * 1e3,
        n as f64 / read,
        named / read
    );
}

fn main() {
    let n = arg("--anchors", 3000);
    let scratch = tempfile::tempdir().unwrap();
    compare("local archive", n, &|form| Config { data_dir: scratch.path().join(form), ..Config::default() });
    if garage::binary().is_none() {
        println!("garage not installed: object storage skipped (cargo install --locked garage@2.5.0)");
        return;
    }
    let g = garage::Garage::single();
    compare("garage, 1 node", n, &|form| {
        let mut cfg = Config { data_dir: scratch.path().join(format!("garage-{form}")), ..Config::default() };
        cfg.storage.primary = TargetConfig {
            kind: "s3".into(),
            endpoint: g.endpoint(),
            bucket: g.bucket.clone(),
            region: "garage".into(),
            prefix: form.into(),
            access_key_id: g.key_id.clone(),
            secret_access_key: g.secret.clone(),
            ..TargetConfig::default()
        };
        cfg
    });
}
