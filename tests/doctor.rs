//! `callvault doctor`: each check against a fake /proc tree, and the command on this machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use callvault::config::Config;
use callvault::doctor::{self, ClockState, DiskSpace, Facts, FileLimit, Report, Status};
use serde_json::Value;

/// A fake `/proc` with the values of a tuned machine (kernel-tuning/99-callvault.conf applied).
struct FakeProc {
    dir: tempfile::TempDir,
}

impl FakeProc {
    fn tuned() -> FakeProc {
        let p = FakeProc { dir: tempfile::tempdir().unwrap() };
        for (name, value) in [
            ("net.core.rmem_max", "4194304"),
            ("net.core.rmem_default", "262144"),
            ("net.core.netdev_max_backlog", "16384"),
            ("net.core.rps_sock_flow_entries", "32768"),
            ("net.ipv4.udp_mem", "575826\t767771\t1151652"),
            ("net.ipv4.udp_rmem_min", "16384"),
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.ip_local_reserved_ports", "16384-32767"),
            ("kernel.io_uring_disabled", "0"),
            ("kernel.io_uring_group", "-1"),
        ] {
            p.set(name, value);
        }
        p.write("net/softnet_stat", "00001000 00000000 00000000\n00002000 00000000 00000001\n");
        p.write("net/snmp", "Udp: InDatagrams NoPorts InErrors RcvbufErrors\nUdp: 100 0 0 0\n");
        p
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn set(&self, sysctl: &str, value: &str) {
        self.write(&format!("sys/{}", sysctl.replace('.', "/")), &format!("{value}\n"));
    }

    fn remove(&self, sysctl: &str) {
        std::fs::remove_file(self.root().join("sys").join(sysctl.replace('.', "/"))).unwrap();
    }
}

fn config(text: &str) -> Config {
    Config::parse(text, Path::new("test.toml")).unwrap()
}

/// Facts from the fake tree, with the live probes set to a healthy machine's answers.
fn facts(p: &FakeProc, cfg: &Config) -> Facts {
    let mut f = Facts::read_proc(p.root(), &cfg.data_dir);
    f.rcvbuf_probe = Some(Ok(2 * cfg.rtp.receive_buffer_bytes as u64));
    f.io_uring_probe = Some(Ok(()));
    f.own_nofile = Some(FileLimit { soft: Some(65536), hard: Some(65536), whose: "this process".into() });
    f.clock = Some(ClockState { synchronised: Some(true), source: "test".into() });
    f.disk = Some(Ok(DiskSpace { path: PathBuf::from("/data"), available: 2 << 40, total: 4 << 40 }));
    f.keys = Some(doctor::KeysFact::Loaded {
        source: "systemd credentials in /run/credentials/callvault.service".into(),
        active: "kek-1".into(),
        beside_recordings: false,
    });
    f
}

fn status(r: &Report, check: &str) -> Status {
    r.get(check).unwrap_or_else(|| panic!("no {check} finding in {r:#?}")).status
}

fn why(r: &Report, check: &str) -> String {
    r.get(check).unwrap().why.clone()
}

#[test]
fn read_sysctl_maps_dots_to_directories() {
    let p = FakeProc::tuned();
    assert_eq!(doctor::read_sysctl(p.root(), "net.core.rmem_max").unwrap(), "4194304");
    assert_eq!(doctor::read_sysctl(p.root(), "net.ipv4.udp_mem").unwrap(), "575826\t767771\t1151652");
    assert!(doctor::read_sysctl(p.root(), "net.core.nonexistent").is_err());
}

#[test]
fn a_tuned_machine_has_nothing_off() {
    let p = FakeProc::tuned();
    let cfg = Config::default();
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(r.warnings, 0, "{}", doctor::human(&r));
    assert!(r.ok);
    assert_eq!(r.exit_code(), 0);
    for check in
        ["rmem_max", "netdev_max_backlog", "udp_mem", "rtp_ports", "io_uring", "nofile", "clock", "disk", "keys"]
    {
        assert_eq!(status(&r, check), Status::Ok, "{check}: {}", doctor::human(&r));
    }
    assert_eq!(status(&r, "backlog_drops"), Status::Info);
    assert_eq!(r.get("udp_rcvbuf_errors").unwrap().current, "0 since boot");
    // Every finding says what, how much, what it should be and why.
    for f in &r.findings {
        assert!(!f.setting.is_empty() && !f.current.is_empty() && !f.recommended.is_empty() && !f.why.is_empty());
    }
}

#[test]
fn rmem_max_below_the_configured_buffer_is_off() {
    let p = FakeProc::tuned();
    p.set("net.core.rmem_max", "212992");
    let cfg = Config::default();
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "rmem_max"), Status::Warn);
    let f = r.get("rmem_max").unwrap();
    assert!(f.current.starts_with("212992"), "{}", f.current);
    assert!(f.recommended.contains(">= 262144"), "{}", f.recommended);
    assert!(f.why.contains("425984 bytes"), "the doubled cap is named: {}", f.why);
    assert_eq!(r.exit_code(), 1);
    // A smaller configured buffer fits under the same rmem_max.
    let cfg = config("[rtp]\nreceive_buffer_bytes = 131072\n");
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "rmem_max"), Status::Ok);
}

#[test]
fn backlog_scales_with_max_calls() {
    let p = FakeProc::tuned();
    p.set("net.core.netdev_max_backlog", "1000");
    let cfg = Config::default();
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "netdev_max_backlog"), Status::Warn);
    assert!(r.get("netdev_max_backlog").unwrap().recommended.starts_with(">= 2000"));
    let cfg = config("[limits]\nmax_calls = 500\n");
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "netdev_max_backlog"), Status::Ok);
}

#[test]
fn udp_mem_must_hold_every_rtp_buffer() {
    let p = FakeProc::tuned();
    // 2000 calls × 2 legs × 512 KiB = 512,000 pages of 4 KiB, against the pressure value.
    p.set("net.ipv4.udp_mem", "100000 200000 900000");
    let cfg = Config::default();
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "udp_mem"), Status::Warn);
    assert!(r.get("udp_mem").unwrap().recommended.contains(">= 512000"), "{:?}", r.get("udp_mem"));
    p.set("net.ipv4.udp_mem", "100000 512000 900000");
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "udp_mem"), Status::Ok);
}

#[test]
fn rtp_ports_reserved_or_outside_the_ephemeral_range() {
    let p = FakeProc::tuned();
    let cfg = Config::default();
    // Not reserved, but the ephemeral range is above the RTP range: fine.
    p.set("net.ipv4.ip_local_reserved_ports", "");
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "rtp_ports"), Status::Ok);
    assert!(why(&r, "rtp_ports").contains("does not overlap"));
    assert!(r.get("rtp_ports").unwrap().current.starts_with("(none)"));
    // An ephemeral range reaching down into it: every unreserved port of the overlap is counted.
    p.set("net.ipv4.ip_local_port_range", "20000\t60999");
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "rtp_ports"), Status::Warn);
    assert!(why(&r, "rtp_ports").starts_with("12768 ports of 16384-32767"), "{}", why(&r, "rtp_ports"));
    p.set("net.ipv4.ip_local_reserved_ports", "8080,20000-29999");
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert!(why(&r, "rtp_ports").starts_with("2768 ports"), "{}", why(&r, "rtp_ports"));
    // Reserved: fine whatever the ephemeral range.
    p.set("net.ipv4.ip_local_reserved_ports", "16000-33000");
    let r = doctor::check(&cfg, None, &facts(&p, &cfg));
    assert_eq!(status(&r, "rtp_ports"), Status::Ok);
    assert_eq!(
        r.get("rtp_ports").unwrap().recommended,
        "16384-32767 reserved, or net.ipv4.ip_local_port_range outside 16384-32767"
    );
}

#[test]
fn io_uring_disabled_says_what_will_be_used() {
    let p = FakeProc::tuned();
    let auto = Config::default();
    p.set("kernel.io_uring_disabled", "2");
    let mut f = facts(&p, &auto);
    f.io_uring_probe = Some(Err("Operation not permitted (os error 1)".into()));
    let r = doctor::check(&auto, None, &f);
    assert_eq!(status(&r, "io_uring"), Status::Warn);
    assert!(why(&r, "io_uring").contains("epoll fallback will be used"), "{}", why(&r, "io_uring"));
    assert!(r.get("io_uring").unwrap().current.contains("fails in this process"));
    // Forced io_uring: serve would refuse to start.
    let forced = config("[engine]\nbackend = \"io_uring\"\n");
    let r = doctor::check(&forced, None, &f);
    assert!(why(&r, "io_uring").contains("serve refuses to start"));
    // Forced epoll: not used, nothing off.
    let epoll = config("[engine]\nbackend = \"epoll\"\n");
    let r = doctor::check(&epoll, None, &f);
    assert_eq!(status(&r, "io_uring"), Status::Ok);
    // 1: restricted to a group.
    p.set("kernel.io_uring_disabled", "1");
    p.set("kernel.io_uring_group", "990");
    let r = doctor::check(&auto, None, &facts(&p, &auto));
    assert_eq!(status(&r, "io_uring"), Status::Warn);
    assert!(why(&r, "io_uring").contains("gid 990"));
    // 0 but blocked by seccomp.
    p.set("kernel.io_uring_disabled", "0");
    let mut f = facts(&p, &auto);
    f.io_uring_probe = Some(Err("Operation not permitted (os error 1)".into()));
    let r = doctor::check(&auto, None, &f);
    assert_eq!(status(&r, "io_uring"), Status::Warn);
    assert!(why(&r, "io_uring").contains("seccomp"));
    // An older kernel without the sysctl, where io_uring works.
    p.remove("kernel.io_uring_disabled");
    let r = doctor::check(&auto, None, &facts(&p, &auto));
    assert_eq!(status(&r, "io_uring"), Status::Ok);
    assert!(r.get("io_uring").unwrap().current.starts_with("absent"));
}

#[test]
fn descriptor_limit_is_the_running_daemons_when_there_is_one() {
    let p = FakeProc::tuned();
    let data = tempfile::tempdir().unwrap();
    let cfg = config(&format!("data_dir = {:?}\n", data.path()));
    let mut f = facts(&p, &cfg);
    f.own_nofile = Some(FileLimit { soft: Some(1024), hard: Some(4096), whose: "this process".into() });
    let r = doctor::check(&cfg, None, &f);
    assert_eq!(status(&r, "nofile"), Status::Warn);
    assert!(r.get("nofile").unwrap().recommended.starts_with(">= 10256"));
    assert!(why(&r, "nofile").contains("doctor's own limit"));

    // A daemon holds the data directory: its limits count, not doctor's.
    std::fs::write(data.path().join("callvault.lock"), "4242\n").unwrap();
    p.write("4242/comm", "callvault\n");
    p.write(
        "4242/limits",
        "Limit                     Soft Limit           Hard Limit           Units     \n\
         Max open files            65536                65536                files     \n",
    );
    let mut f = facts(&p, &cfg);
    f.own_nofile = Some(FileLimit { soft: Some(1024), hard: Some(4096), whose: "this process".into() });
    assert_eq!(f.daemon_pid, Some(4242));
    let r = doctor::check(&cfg, None, &f);
    assert_eq!(status(&r, "nofile"), Status::Ok);
    assert!(r.get("nofile").unwrap().current.contains("pid 4242"));

    // A stale lock file naming a pid that is now another program is not the daemon.
    p.write("4242/comm", "bash\n");
    assert_eq!(Facts::read_proc(p.root(), &cfg.data_dir).daemon_pid, None);
}

#[test]
fn clock_unknown_never_fails_and_unsynchronised_does() {
    let p = FakeProc::tuned();
    let cfg = Config::default();
    let mut f = facts(&p, &cfg);
    f.clock = Some(ClockState { synchronised: None, source: "no timedatectl; adjtimex: ENOSYS".into() });
    let r = doctor::check(&cfg, None, &f);
    assert_eq!(status(&r, "clock"), Status::Unknown);
    assert_eq!(r.exit_code(), 0);
    assert!(r.get("clock").unwrap().current.starts_with("unknown"));
    f.clock = Some(ClockState { synchronised: Some(false), source: "adjtimex: STA_UNSYNC set".into() });
    let r = doctor::check(&cfg, None, &f);
    assert_eq!(status(&r, "clock"), Status::Warn);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn free_space_is_measured_against_an_hour_at_capacity() {
    let p = FakeProc::tuned();
    let cfg = config("[limits]\nmax_calls = 100\n");
    let mut f = facts(&p, &cfg);
    // 100 calls × 32,000 B/s × 3600 s = 11.52 GB.
    f.disk = Some(Ok(DiskSpace { path: PathBuf::from("/d"), available: 10_000_000_000, total: 50_000_000_000 }));
    let r = doctor::check(&cfg, None, &f);
    assert_eq!(status(&r, "disk"), Status::Warn);
    assert!(r.get("disk").unwrap().current.contains("52 min at capacity"), "{:?}", r.get("disk"));
    f.disk = Some(Ok(DiskSpace { path: PathBuf::from("/d"), available: 12_000_000_000, total: 50_000_000_000 }));
    assert_eq!(status(&doctor::check(&cfg, None, &f), "disk"), Status::Ok);
    // Enough for the hour, but under 10 % of the filesystem.
    f.disk = Some(Ok(DiskSpace { path: PathBuf::from("/d"), available: 12_000_000_000, total: 200_000_000_000 }));
    assert_eq!(status(&doctor::check(&cfg, None, &f), "disk"), Status::Warn);
    f.disk = Some(Err("statvfs: Permission denied".into()));
    assert_eq!(status(&doctor::check(&cfg, None, &f), "disk"), Status::Unknown);
}

#[test]
fn an_empty_proc_gives_unknowns_not_errors() {
    let empty = tempfile::tempdir().unwrap();
    let cfg = Config::default();
    let f = Facts::read_proc(empty.path(), &cfg.data_dir);
    let r = doctor::check(&cfg, None, &f);
    for check in ["rmem_max", "netdev_max_backlog", "udp_mem", "rtp_ports", "clock", "disk"] {
        assert_eq!(status(&r, check), Status::Unknown, "{check}");
    }
    assert!(r.get("backlog_drops").is_none());
}

fn callvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callvault")).args(args).output().expect("run callvault")
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn this_machine_runs_and_prints_valid_json() {
    let o = callvault(&["doctor", "--json"]);
    let code = o.status.code().unwrap();
    assert!(code == 0 || code == 1, "exit {code}: {}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    let findings = v["findings"].as_array().unwrap();
    assert!(findings.len() >= 8);
    for f in findings {
        for key in ["check", "status", "setting", "current", "recommended", "why"] {
            assert!(f[key].is_string(), "{key} missing in {f}");
        }
        assert!(["ok", "warn", "unknown", "info"].contains(&f["status"].as_str().unwrap()), "{f}");
    }
    let warns = findings.iter().filter(|f| f["status"] == "warn").count();
    assert_eq!(v["warnings"], warns);
    assert_eq!(code == 0, warns == 0);
    assert_eq!(v["config"], Value::Null);
    // The text form runs too.
    let o = callvault(&["doctor"]);
    assert_eq!(o.status.code().unwrap(), code);
    assert!(String::from_utf8_lossy(&o.stdout).contains("net.core.rmem_max"));
}

#[test]
fn cli_exit_codes() {
    let p = FakeProc::tuned();
    p.set("net.core.rmem_max", "65536");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(&conf, format!("data_dir = {:?}\n", dir.path().join("data"))).unwrap();
    let o =
        callvault(&["doctor", "--json", "--config", conf.to_str().unwrap(), "--proc-root", p.root().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["config"], conf.to_str().unwrap());
    let rmem = v["findings"].as_array().unwrap().iter().find(|f| f["check"] == "rmem_max").unwrap().clone();
    assert_eq!(rmem["status"], "warn");
    assert!(rmem["current"].as_str().unwrap().starts_with("65536"));

    // An invalid config is a usage error, naming the key.
    std::fs::write(&conf, "[rtp]\nport_min = 16385\n").unwrap();
    let o = callvault(&["doctor", "--config", conf.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rtp.port_min"));
    assert_eq!(callvault(&["doctor", "--config", "/nonexistent/c.toml"]).status.code(), Some(2));
    assert_eq!(callvault(&["doctor", "--bogus"]).status.code(), Some(2));

    let o = callvault(&["doctor", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("Examples:") && help.contains("--json") && help.contains("Exit codes"), "{help}");
}

/// A data_dir that is a file is a finding (serve would refuse it), not a measurement of the
/// directory above it (as it once was).
#[test]
fn a_data_dir_that_is_a_file_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("data_dir = \"{}\"\n", file.display())).unwrap();
    let o = callvault(&["doctor", "--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    let disk = v["findings"].as_array().unwrap().iter().find(|f| f["check"] == "disk").unwrap().clone();
    assert_eq!(disk["status"], "warn", "{disk}");
    assert!(disk["current"].as_str().unwrap().contains("is not a directory"), "{disk}");
}

/// The keys, as `serve` would find them: off, not generated yet, beside the recordings, or
/// unusable (a key file others can read) are each said; nothing is created.
#[test]
fn the_keys_are_checked_without_creating_any() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(&format!("data_dir = \"{}\"\n", data.display()));
    assert_eq!(doctor::keys_fact(&cfg), doctor::KeysFact::NotYet(data.join("keys")));
    assert!(!data.exists(), "doctor created nothing");
    let off = config(&format!("data_dir = \"{}\"\n[recording]\nencryption = \"off\"\n", data.display()));
    assert_eq!(doctor::keys_fact(&off), doctor::KeysFact::Off);
    callvault::seal::keys::init_dir(&data.join("keys")).unwrap();
    assert!(matches!(doctor::keys_fact(&cfg), doctor::KeysFact::Loaded { beside_recordings: true, .. }));
    let elsewhere = dir.path().join("etc-keys");
    callvault::seal::keys::init_dir(&elsewhere).unwrap();
    let apart = config(&format!("data_dir = \"{}\"\n[keys]\ndir = \"{}\"\n", data.display(), elsewhere.display()));
    assert!(matches!(doctor::keys_fact(&apart), doctor::KeysFact::Loaded { beside_recordings: false, .. }));
    use std::os::unix::fs::PermissionsExt;
    let kek = std::fs::read_dir(&elsewhere)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "kek"))
        .unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let broken = doctor::keys_fact(&apart);
    assert!(matches!(&broken, doctor::KeysFact::Broken(e) if e.contains("0644")), "{broken:?}");
    // How each comes out in the report.
    let p = FakeProc::tuned();
    for (fact, want) in [
        (doctor::KeysFact::Off, Status::Warn),
        (doctor::KeysFact::NotYet(data.join("keys")), Status::Info),
        (doctor::KeysFact::Loaded { source: "s".into(), active: "k".into(), beside_recordings: true }, Status::Warn),
        (broken, Status::Warn),
    ] {
        let mut f = facts(&p, &cfg);
        f.keys = Some(fact.clone());
        let r = doctor::check(&cfg, None, &f);
        assert_eq!(status(&r, "keys"), want, "{fact:?}: {}", doctor::human(&r));
    }
}

/// Storage: off, the local archive not created yet (and not created by doctor), the local
/// archive in place, and an S3 target that does not answer are each said.
#[test]
fn the_storage_targets_are_checked_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(&format!("data_dir = \"{}\"\n", data.display()));
    assert_eq!(doctor::storage_fact(&cfg), doctor::StorageFact::NotYet(data.join("archive")));
    assert!(!data.exists(), "doctor created nothing");
    let off = config(&format!("data_dir = \"{}\"\n[storage]\nship = false\n", data.display()));
    assert_eq!(doctor::storage_fact(&off), doctor::StorageFact::Off);
    std::fs::create_dir_all(data.join("archive")).unwrap();
    assert!(
        matches!(doctor::storage_fact(&cfg), doctor::StorageFact::Targets { local_primary: true, ref targets } if targets[0].2.is_ok())
    );
    // Nothing listens on port 9 of loopback.
    let s3 = config(&format!(
        "data_dir = \"{}\"\n[storage.primary]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9\"\nbucket = \"b\"\nregion = \"garage\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n",
        data.display()
    ));
    let down = doctor::storage_fact(&s3);
    assert!(matches!(&down, doctor::StorageFact::Targets { targets, .. } if targets[0].2.is_err()), "{down:?}");
    let p = FakeProc::tuned();
    for (fact, check, want) in [
        (doctor::StorageFact::Off, "storage", Status::Warn),
        (doctor::StorageFact::NotYet(data.join("archive")), "storage_primary", Status::Info),
        (down, "storage_primary", Status::Warn),
    ] {
        let mut f = facts(&p, &cfg);
        f.storage = Some(fact.clone());
        let r = doctor::check(&cfg, None, &f);
        assert_eq!(status(&r, check), want, "{fact:?}: {}", doctor::human(&r));
    }
}

/// The API: a TLS pair serve would refuse and files of the audit trail or the tokens that
/// others may read are warnings; a loopback API with private files is fine; off is said.
#[test]
fn the_api_and_its_files_are_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let cfg = config(&format!("data_dir = \"{}\"\n", data.display()));
    let fact = doctor::api_fact(&cfg);
    assert!(fact.problems.is_empty(), "{fact:?}");
    std::fs::write(data.join("audit.key"), [0u8; 32]).unwrap();
    std::fs::set_permissions(data.join("audit.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = doctor::api_fact(&cfg);
    assert!(loose.problems.iter().any(|p| p.contains("audit.key") && p.contains("chmod 600")), "{loose:?}");
    let tls = config(&format!(
        "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        data.display(),
        dir.path().join("missing.crt").display(),
        dir.path().join("missing.key").display()
    ));
    assert!(doctor::api_fact(&tls).problems.iter().any(|p| p.contains("TLS")), "{:?}", doctor::api_fact(&tls));
    let p = FakeProc::tuned();
    for (fact, want) in [
        (doctor::ApiFact { listen: "127.0.0.1:8080".into(), tls: false, problems: vec![] }, Status::Ok),
        (doctor::ApiFact { listen: String::new(), tls: false, problems: vec![] }, Status::Info),
        (loose, Status::Warn),
    ] {
        let mut f = facts(&p, &cfg);
        f.api = Some(fact.clone());
        let r = doctor::check(&cfg, None, &f);
        assert_eq!(status(&r, "api"), want, "{fact:?}: {}", doctor::human(&r));
    }
}
