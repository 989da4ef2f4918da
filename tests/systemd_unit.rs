//! `systemd/callvault.service` and `systemd/callvault.toml`: the unit passes `systemd-analyze
//! verify` without a word, has the settings the daemon relies on (notify + watchdog, state and
//! runtime directories, descriptors for max_calls, a syscall filter that keeps io_uring, CPU
//! pinning and setrlimit), and the example config is accepted and agrees with the unit.
//! Without systemd-analyze the tests that need it are skipped with a message, except under CI.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use callvault::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("systemd/callvault.service")).expect("read systemd/callvault.service")
}

/// Every `Key=Value` of the unit, in order, with its section; comments and blank lines dropped.
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not Key=Value: {line}"));
        out.push((section.clone(), key.trim().to_string(), value.trim().to_string()));
    }
    out
}

/// The values of `key` in `[section]`, in order.
fn values(text: &str, section: &str, key: &str) -> Vec<String> {
    settings(text).into_iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v).collect()
}

/// The one value of `key` in `[section]`.
fn value(text: &str, section: &str, key: &str) -> String {
    let v = values(text, section, key);
    assert_eq!(v.len(), 1, "[{section}] {key}= should be set exactly once, found {v:?}");
    v.into_iter().next().unwrap()
}

/// systemd-analyze's path, or None (skipped with a message) when it is missing outside CI.
fn systemd_analyze() -> Option<&'static str> {
    if Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("systemd-analyze");
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but systemd-analyze is missing (apt-get install systemd)");
    }
    eprintln!("skipping: systemd-analyze not found (apt-get install systemd)");
    None
}

/// The unit as it would be installed, but starting the binary cargo built and reading the
/// repository's example config, written under `dir` with its own name.
fn installable_copy(dir: &Path) -> PathBuf {
    let text = unit_text();
    let exec = value(&text, "Service", "ExecStart");
    assert_eq!(exec, "/usr/local/bin/callvault serve --config /etc/callvault/callvault.toml");
    let config = repo().join("systemd/callvault.toml");
    let local = format!("{} serve --config {}", env!("CARGO_BIN_EXE_callvault"), config.display());
    let text = text.replace(&format!("ExecStart={exec}"), &format!("ExecStart={local}"));
    let path = dir.join("callvault.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn systemd_analyze_verify_is_silent() {
    let Some(analyze) = systemd_analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    let unit = installable_copy(dir.path());
    let out = Command::new(analyze).arg("verify").arg(&unit).output().expect("run systemd-analyze verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only lines about this unit count: verify also loads the units it is ordered against
    // (network-online.target, multi-user.target), and a host's own units may draw complaints.
    let about_unit: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("callvault") || l.contains(&*dir.path().to_string_lossy()))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {} (exit {:?}):\n{stdout}{stderr}",
        unit.display(),
        out.status.code()
    );
    if !stdout.trim().is_empty() || !stderr.trim().is_empty() {
        eprintln!("systemd-analyze verify, about other units (ignored):\n{stdout}{stderr}");
    }
}

#[test]
fn unit_has_the_settings_the_daemon_relies_on() {
    let text = unit_text();
    let s = |key| value(&text, "Service", key);
    assert_eq!(s("Type"), "notify", "the daemon sends READY=1 once it can record");
    let watchdog = s("WatchdogSec");
    let secs: u64 = watchdog.trim_end_matches('s').parse().expect("WatchdogSec in seconds, e.g. 30s");
    // The daemon pings every min(WatchdogSec / 2, 1 s): at least 2 s leaves room for a ping
    // to be late without a restart.
    assert!(secs >= 2, "WatchdogSec={watchdog}");
    assert_eq!(s("Restart"), "on-failure");
    assert_eq!(s("User"), "callvault");
    assert_eq!(s("Group"), "callvault");
    assert_eq!(s("StateDirectory"), "callvault");
    assert_eq!(s("RuntimeDirectory"), "callvault");
    assert_eq!(s("UMask"), "0027");
    assert_eq!(s("ProtectSystem"), "strict");
    assert_eq!(s("NoNewPrivileges"), "yes");
    assert_eq!(s("MemoryDenyWriteExecute"), "yes");
    assert_eq!(s("CapabilityBoundingSet"), "", "no capabilities at all");
    assert_eq!(s("AmbientCapabilities"), "");
    assert_eq!(s("RestrictAddressFamilies"), "AF_UNIX AF_INET AF_INET6");
    assert!(s("LimitNOFILE").parse::<u64>().expect("LimitNOFILE a number") > 1024);
    let filters = values(&text, "Service", "SystemCallFilter");
    let allowed: BTreeSet<&str> =
        filters.iter().filter(|f| !f.starts_with('~')).flat_map(|f| f.split_whitespace()).collect();
    let denied: BTreeSet<&str> =
        filters.iter().filter_map(|f| f.strip_prefix('~')).flat_map(|f| f.split_whitespace()).collect();
    for call in ["@system-service", "io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.contains(call), "SystemCallFilter allows {call}: {filters:?}");
    }
    for call in ["@resources", "sched_setaffinity", "setrlimit", "prlimit64", "@aio", "@io-event"] {
        assert!(!denied.contains(call), "SystemCallFilter must not deny {call}: {filters:?}");
    }
}

/// The system calls a syscall-filter group holds, nested groups expanded (systemd-analyze).
fn expand(analyze: &str, group: &str, into: &mut BTreeSet<String>) {
    let out =
        Command::new(analyze).args(["syscall-filter", group]).output().expect("run systemd-analyze syscall-filter");
    assert!(out.status.success(), "systemd-analyze syscall-filter {group}: {}", String::from_utf8_lossy(&out.stderr));
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1).map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            expand(analyze, line, into);
        } else {
            into.insert(line.to_string());
        }
    }
}

#[test]
fn syscall_filter_keeps_io_uring_pinning_and_setrlimit() {
    let Some(analyze) = systemd_analyze() else { return };
    let text = unit_text();
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for filter in values(&text, "Service", "SystemCallFilter") {
        let (set, list) = match filter.strip_prefix('~') {
            Some(rest) => (&mut denied, rest.to_string()),
            None => (&mut allowed, filter),
        };
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                expand(analyze, item, set);
            } else {
                set.insert(item.to_string());
            }
        }
    }
    let needed = [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "sched_setaffinity", // [engine] pin_threads
        "setrlimit",         // raising the soft RLIMIT_NOFILE
        "prlimit64",         // what glibc's setrlimit/getrlimit use
        "getrlimit",
        "rt_sigtimedwait", // the main thread waits for SIGTERM
        "flock",           // the data directory's lock
        "mmap",
        "recvmmsg",
        "epoll_wait",
    ];
    for call in needed {
        assert!(allowed.contains(call), "{call} is not in the allowed SystemCallFilter");
        assert!(!denied.contains(call), "{call} is denied by a ~SystemCallFilter");
    }
}

#[test]
fn example_config_is_accepted() {
    let config = repo().join("systemd/callvault.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_callvault"))
        .args(["serve", "--check", "--config"])
        .arg(&config)
        .output()
        .expect("run callvault serve --check");
    assert!(
        out.status.success(),
        "callvault serve --check --config {} (exit {:?}):\n{}{}",
        config.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn example_config_agrees_with_the_unit() {
    let text = unit_text();
    let cfg = Config::load(&repo().join("systemd/callvault.toml")).expect("systemd/callvault.toml loads");
    let state = value(&text, "Service", "StateDirectory");
    let runtime = value(&text, "Service", "RuntimeDirectory");
    assert_eq!(cfg.data_dir, Path::new("/var/lib").join(&state), "data_dir is the StateDirectory");
    assert_eq!(
        cfg.socket_path().parent(),
        Some(Path::new("/run").join(&runtime).as_path()),
        "the control socket is in the RuntimeDirectory"
    );
    assert_eq!(values(&text, "Service", "ReadWritePaths"), [format!("/var/lib/{state}")]);
    let nofile: u64 = value(&text, "Service", "LimitNOFILE").parse().unwrap();
    assert!(
        nofile >= cfg.descriptors_needed(),
        "LimitNOFILE={nofile} is below the {} descriptors max_calls = {} needs",
        cfg.descriptors_needed(),
        cfg.limits.max_calls
    );
    // The unit's comment says which max_calls its LimitNOFILE covers: keep it true.
    let covers = (nofile - 256) / 5;
    assert!(
        text.contains(&format!("covers max_calls up to {covers}")),
        "the LimitNOFILE comment should say it covers max_calls up to {covers}"
    );
}
