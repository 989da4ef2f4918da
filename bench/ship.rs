//! Shipping throughput: how fast the shipper moves finished recordings from the spool to a
//! target, verified, and what the read-back costs against a checksum check. Plants N sealed-size
//! recordings (random bytes: the shipper never looks inside) in a scratch spool and times passes
//! of `Shipper::run_once` until the spool is empty.
//!
//! `cargo bench --bench ship [-- --recordings N --kib K]`. Targets: the local archive, and a
//! single-node Garage on 127.0.0.1 when `garage` is installed (read-back, then checksum).

#[path = "../tests/garage/mod.rs"]
mod garage;

use std::time::Instant;

use callvault::config::Config;
use callvault::storage::Storage;
use callvault::storage::ship::Shipper;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn plant(spool: &std::path::Path, n: usize, bytes: usize) {
    let mut data = vec![0u8; bytes];
    for i in 0..n {
        callvault::seal::random(&mut data[..64]);
        let rid = ulid::Ulid::new().to_string();
        std::fs::write(spool.join(format!("b-{i}-{rid}.wav")), &data).unwrap();
        let summary = serde_json::json!({"recording_id": rid, "call_id": format!("b-{i}"), "state": "finished",
            "started_at": "2026-12-04T10:00:00.000Z", "metadata": {}});
        std::fs::write(spool.join(format!("b-{i}-{rid}.json")), summary.to_string()).unwrap();
    }
}

fn run(name: &str, cfg: &Config, n: usize, bytes: usize) {
    let spool = cfg.spool_dir();
    std::fs::create_dir_all(&spool).unwrap();
    plant(&spool, n, bytes);
    let storage = Storage::open(cfg).unwrap();
    let mut shipper = Shipper::new(spool.clone(), storage, &cfg.storage, None);
    let start = Instant::now();
    let mut released = 0;
    while released < n {
        let (r, _) = shipper.run_once();
        released += r;
        assert!(start.elapsed().as_secs() < 600, "{name}: stuck at {released}/{n}");
    }
    let s = start.elapsed().as_secs_f64();
    let mib = (n * bytes) as f64 / (1024.0 * 1024.0);
    println!("{name:<34} {n:>5} recordings  {:>8.1} recordings/s  {:>7.1} MiB/s  ({s:.2} s)", n as f64 / s, mib / s);
}

fn main() {
    // `cargo bench` passes --bench; only our own flags matter.
    let n = arg("--recordings", 200);
    // Default: one minute of stereo 8 kHz 16-bit (32,000 bytes a second).
    let bytes = arg("--kib", 1875) * 1024;
    println!("shipping {n} recordings of {} KiB each (a stereo 8 kHz call of {} s)", bytes / 1024, bytes / 32_000);
    let scratch = tempfile::tempdir().unwrap();
    let mut cfg = Config { data_dir: scratch.path().join("local"), ..Config::default() };
    run("local archive (read-back)", &cfg, n, bytes);
    if garage::binary().is_none() {
        println!("garage not installed: object storage skipped (cargo install --locked garage@2.5.0)");
        return;
    }
    let g = garage::Garage::single();
    for verify in ["read-back", "checksum"] {
        cfg.data_dir = scratch.path().join(format!("garage-{verify}"));
        cfg.storage.verify = verify.into();
        cfg.storage.primary = callvault::config::TargetConfig {
            kind: "s3".into(),
            endpoint: g.endpoint(),
            bucket: g.bucket.clone(),
            region: "garage".into(),
            prefix: verify.into(),
            access_key_id: g.key_id.clone(),
            secret_access_key: g.secret.clone(),
            ..callvault::config::TargetConfig::default()
        };
        run(&format!("garage, 1 node ({verify})"), &cfg, n, bytes);
    }
}
