//! `callvault doctor`: the running system checked against `kernel-tuning/` and `docs/tuning.md`.
//!
//! Facts are gathered in two steps so that tests can fake them: [`Facts::read_proc`] reads only
//! files (sysctls under `<proc>/sys`, `<proc>/net/softnet_stat`, `<proc>/net/snmp`, a running
//! daemon's `<proc>/<pid>/limits`), from any root; [`Facts::probe_live`] adds what needs system
//! calls (a test socket's SO_RCVBUF, an io_uring setup, RLIMIT_NOFILE, the clock, free space).
//! [`check`] turns facts and a configuration into findings; it reads nothing itself.

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{BackendChoice, Config};

/// What `kernel-tuning/99-callvault.conf` sets `net.core.rmem_max` to.
pub const RMEM_MAX_TUNED: u64 = 4 * 1024 * 1024;
/// What `kernel-tuning/99-callvault.conf` sets `net.core.netdev_max_backlog` to.
pub const NETDEV_MAX_BACKLOG_TUNED: u64 = 16384;
/// Receive-buffer charge of one G.711 20 ms datagram (172 bytes of RTP), measured on loopback
/// (Linux 6.18): 630 such datagrams filled a 524,288-byte buffer. See docs/tuning.md.
pub const G711_TRUESIZE_LOOPBACK: u64 = 832;
/// Bytes per second of one call's stereo recording: 16-bit PCM, 8 kHz, two channels.
pub const STEREO_BYTES_PER_S: u64 = 2 * 2 * 8000;

/// The sysctls doctor reads (dotted names; `a.b.c` is `<proc>/sys/a/b/c`).
pub const SYSCTLS: &[&str] = &[
    "net.core.rmem_max",
    "net.core.rmem_default",
    "net.core.netdev_max_backlog",
    "net.core.rps_sock_flow_entries",
    "net.ipv4.udp_mem",
    "net.ipv4.udp_rmem_min",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "kernel.io_uring_disabled",
    "kernel.io_uring_group",
];

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// As recommended.
    Ok,
    /// Off: the exit code is 1.
    Warn,
    /// Could not be read or decided; never fails the run.
    Unknown,
    /// A counter or note worth knowing; never fails the run.
    Info,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Unknown => "unknown",
            Status::Info => "info",
        }
    }
}

/// One finding: the setting, what it is, what it should be and why.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Short stable name of the check, e.g. `rmem_max`.
    pub check: &'static str,
    /// How it came out.
    pub status: Status,
    /// The setting (sysctl name, limit, resource).
    pub setting: String,
    /// Its current value, as read.
    pub current: String,
    /// The recommended value.
    pub recommended: String,
    /// Why, with the figure behind it.
    pub why: String,
}

/// Every finding of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The configuration checked against (`null`: the embedded defaults).
    pub config: Option<String>,
    /// No warnings.
    pub ok: bool,
    /// Findings with status `warn`.
    pub warnings: usize,
    /// In the order checked.
    pub findings: Vec<Finding>,
}

impl Report {
    /// 0 when nothing is off, 1 when something is.
    pub fn exit_code(&self) -> u8 {
        if self.warnings == 0 { 0 } else { 1 }
    }

    /// The finding of a check, by name.
    pub fn get(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }
}

/// Whether the system clock is synchronised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockState {
    /// `None`: could not tell.
    pub synchronised: Option<bool>,
    /// Where the answer came from, and detail (e.g. the maximum error).
    pub source: String,
}

/// A descriptor limit and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLimit {
    /// Soft limit (`None`: unlimited).
    pub soft: Option<u64>,
    /// Hard limit (`None`: unlimited).
    pub hard: Option<u64>,
    /// "this process" or "the running daemon (pid N)".
    pub whose: String,
}

/// Free space of the data directory's filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpace {
    /// The directory measured (the data directory, or its nearest existing ancestor).
    pub path: PathBuf,
    /// Bytes available to unprivileged users.
    pub available: u64,
    /// Size of the filesystem.
    pub total: u64,
}

/// Everything the checks look at.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Sysctl values (trimmed), by dotted name; absent when unreadable or missing.
    pub sysctls: BTreeMap<String, String>,
    /// Packets dropped for a full per-CPU backlog since boot (`softnet_stat`, column 2, summed).
    pub softnet_dropped: Option<u64>,
    /// UDP datagrams dropped for a full socket receive buffer since boot (`snmp`, RcvbufErrors).
    pub udp_rcvbuf_errors: Option<u64>,
    /// pid of a running daemon on the configured data directory, from its lock file.
    pub daemon_pid: Option<u32>,
    /// The running daemon's descriptor limit, from `<proc>/<pid>/limits`.
    pub daemon_nofile: Option<FileLimit>,
    /// This process's descriptor limit.
    pub own_nofile: Option<FileLimit>,
    /// SO_RCVBUF read back from a test socket that asked for `[rtp] receive_buffer_bytes`.
    pub rcvbuf_probe: Option<Result<u64, String>>,
    /// Whether this process could set up an io_uring.
    pub io_uring_probe: Option<Result<(), String>>,
    /// The clock.
    pub clock: Option<ClockState>,
    /// Free space where recordings go.
    pub disk: Option<Result<DiskSpace, String>>,
    /// Memory page size (udp_mem is in pages).
    pub page_size: u64,
    /// Where the keys of encryption at rest are.
    pub keys: Option<KeysFact>,
    /// Where finished recordings go, and whether it answers.
    pub storage: Option<StorageFact>,
    /// The search and playback API and the files its security rests on.
    pub api: Option<ApiFact>,
}

/// What `callvault doctor` found of the API ([api]) and the audit trail's and access store's
/// files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFact {
    /// `[api] listen`; empty when the API is off.
    pub listen: String,
    pub tls: bool,
    /// What serve would refuse or what leaves the trail or the tokens open to others.
    pub problems: Vec<String>,
}

/// What `callvault doctor` found of the storage targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageFact {
    /// `[storage] ship = false`: recordings stay in the spool.
    Off,
    /// Per target: (role, where, listing result). `local` when the primary is the local archive.
    Targets { local_primary: bool, targets: Vec<(String, String, Result<(), String>)> },
    /// The local archive does not exist yet: serve creates it on first start.
    NotYet(PathBuf),
}

/// What `callvault doctor` found of the keys (never the keys themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysFact {
    /// `[recording] encryption = "off"`.
    Off,
    /// None yet: `serve` generates them on first start, in this directory.
    NotYet(PathBuf),
    /// Keys that load, from `source`; `beside_recordings` when the KEK sits in the data directory.
    Loaded { source: String, active: String, beside_recordings: bool },
    /// Keys that do not load, and why.
    Broken(String),
}

/// Reads one sysctl under `proc_root` (`/proc` on a live system): `net.core.rmem_max` is
/// `<proc_root>/sys/net/core/rmem_max`. The value is trimmed.
pub fn read_sysctl(proc_root: &Path, name: &str) -> io::Result<String> {
    let mut path = proc_root.join("sys");
    for part in name.split('.') {
        path.push(part);
    }
    std::fs::read_to_string(path).map(|s| s.trim().to_string())
}

impl Facts {
    /// Reads the file-based facts from `proc_root` and the data directory's lock file; leaves
    /// the live probes empty.
    pub fn read_proc(proc_root: &Path, data_dir: &Path) -> Facts {
        let mut f = Facts { page_size: 4096, ..Facts::default() };
        for name in SYSCTLS {
            if let Ok(v) = read_sysctl(proc_root, name) {
                f.sysctls.insert((*name).to_string(), v);
            }
        }
        f.softnet_dropped =
            std::fs::read_to_string(proc_root.join("net/softnet_stat")).ok().and_then(|t| parse_softnet_dropped(&t));
        f.udp_rcvbuf_errors = std::fs::read_to_string(proc_root.join("net/snmp"))
            .ok()
            .and_then(|t| parse_snmp(&t, "Udp", "RcvbufErrors"));
        f.daemon_pid = running_daemon(proc_root, data_dir);
        f.daemon_nofile = f.daemon_pid.and_then(|pid| {
            let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("limits")).ok()?;
            let (soft, hard) = parse_limits_nofile(&text)?;
            Some(FileLimit { soft, hard, whose: format!("the running daemon (pid {pid})") })
        });
        f
    }

    /// Adds the facts that need system calls: a test socket, an io_uring, getrlimit, the clock,
    /// statvfs.
    pub fn probe_live(&mut self, cfg: &Config) {
        self.rcvbuf_probe = Some(probe_rcvbuf(cfg.rtp.receive_buffer_bytes));
        self.io_uring_probe = Some(io_uring::IoUring::new(8).map(drop).map_err(|e| e.to_string()));
        self.own_nofile = own_nofile();
        self.clock = Some(clock_state());
        self.disk = Some(disk_space(&cfg.data_dir));
        self.keys = Some(keys_fact(cfg));
        self.storage = Some(storage_fact(cfg));
        self.api = Some(api_fact(cfg));
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            self.page_size = page as u64;
        }
    }

    /// Everything, from the live system (`proc_root` is `/proc` there).
    pub fn gather(cfg: &Config, proc_root: &Path) -> Facts {
        let mut f = Facts::read_proc(proc_root, &cfg.data_dir);
        f.probe_live(cfg);
        f
    }

    fn sysctl(&self, name: &str) -> Option<&str> {
        self.sysctls.get(name).map(String::as_str)
    }

    fn sysctl_u64(&self, name: &str) -> Option<u64> {
        self.sysctl(name)?.parse().ok()
    }
}

/// Sum of the dropped column (the second) over every CPU's line of `softnet_stat` (hex).
pub fn parse_softnet_dropped(text: &str) -> Option<u64> {
    let mut sum = 0u64;
    let mut any = false;
    for line in text.lines() {
        let col = line.split_whitespace().nth(1)?;
        sum = sum.saturating_add(u64::from_str_radix(col, 16).ok()?);
        any = true;
    }
    any.then_some(sum)
}

pub use crate::host::parse_snmp;

/// Soft and hard "Max open files" from a `/proc/<pid>/limits` text (`None`: unlimited).
pub fn parse_limits_nofile(text: &str) -> Option<(Option<u64>, Option<u64>)> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut cols = line["Max open files".len()..].split_whitespace();
    let parse = |s: &str| if s == "unlimited" { Some(None) } else { s.parse().ok().map(Some) };
    Some((parse(cols.next()?)?, parse(cols.next()?)?))
}

/// Port ranges as `ip_local_reserved_ports` writes them: `"1,2-4,10-10"`; empty means none.
pub fn parse_port_list(text: &str) -> Option<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let p = part.parse().ok()?;
                (p, p)
            }
        };
        out.push((a, b));
    }
    Some(out)
}

/// The pid in `<data_dir>/callvault.lock`, when that process is a callvault (its `comm`).
/// The lock is not taken: a doctor run must never make a starting daemon see it as held.
fn running_daemon(proc_root: &Path, data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join(crate::serve::LOCK_FILE)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let comm = std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm")).ok()?;
    (comm.trim() == "callvault").then_some(pid)
}

fn probe_rcvbuf(bytes: usize) -> Result<u64, String> {
    let s = UdpSocket::bind(("127.0.0.1", 0)).map_err(|e| format!("cannot open a test socket: {e}"))?;
    crate::engine::ports::set_receive_buffer(&s, bytes).map_err(|e| format!("SO_RCVBUF: {e}"))?;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is valid while `s` lives; `value` and `len` are valid for writes and `len`
    // is the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!("getsockopt(SO_RCVBUF): {}", io::Error::last_os_error()));
    }
    Ok(u64::try_from(value).unwrap_or(0))
}

fn own_nofile() -> Option<FileLimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let v = |x: libc::rlim_t| (x != libc::RLIM_INFINITY).then_some(x);
    Some(FileLimit { soft: v(lim.rlim_cur), hard: v(lim.rlim_max), whose: "this process".into() })
}

/// `timedatectl show -p NTPSynchronized --value` (at most 3 s), else adjtimex(2) read-only:
/// STA_UNSYNC clear means synchronised; else unknown.
pub fn clock_state() -> ClockState {
    if let Some(answer) = timedatectl_synchronised() {
        return ClockState { synchronised: Some(answer), source: "timedatectl NTPSynchronized".into() };
    }
    // SAFETY: timex is plain data; with modes = 0 adjtimex only reads the kernel's state into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    // SAFETY: `tx` is a valid timex for the call to fill.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc == -1 {
        return ClockState {
            synchronised: None,
            source: format!("timedatectl unavailable; adjtimex: {}", io::Error::last_os_error()),
        };
    }
    let unsync = tx.status & libc::STA_UNSYNC != 0;
    ClockState {
        synchronised: Some(!unsync),
        source: format!(
            "adjtimex: STA_UNSYNC {}, estimated error {} µs, maximum error {} µs",
            if unsync { "set" } else { "clear" },
            tx.esterror,
            tx.maxerror
        ),
    }
}

fn timedatectl_synchronised() -> Option<bool> {
    let mut child = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// The end of a disk finding's error when serve could not use data_dir at all.
const UNUSABLE_DATA_DIR: &str = ": serve cannot use it as data_dir";

/// statvfs of the data directory, or of its nearest existing ancestor when it does not exist yet.
fn disk_space(data_dir: &Path) -> Result<DiskSpace, String> {
    let abs = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| format!("current directory: {e}"))?.join(data_dir)
    };
    // Something that is there but is no directory (or cannot be entered) would stop `serve`:
    // say so rather than measure the directory above it.
    if abs.exists() && !abs.is_dir() {
        return Err(format!("{} exists and is not a directory{UNUSABLE_DATA_DIR}", abs.display()));
    }
    if abs.is_dir() && std::fs::read_dir(&abs).is_err() {
        return Err(format!("{} cannot be read by this user{UNUSABLE_DATA_DIR}", abs.display()));
    }
    let mut dir = abs.as_path();
    while !dir.is_dir() {
        dir = dir.parent().ok_or_else(|| format!("no existing directory above {}", abs.display()))?;
    }
    let space = crate::host::fs_space(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(DiskSpace { path: dir.to_path_buf(), available: space.available, total: space.total })
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn limit(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
}

struct Builder {
    findings: Vec<Finding>,
}

impl Builder {
    fn push(
        &mut self,
        check: &'static str,
        status: Status,
        setting: impl Into<String>,
        current: impl Into<String>,
        recommended: impl Into<String>,
        why: impl Into<String>,
    ) {
        self.findings.push(Finding {
            check,
            status,
            setting: setting.into(),
            current: current.into(),
            recommended: recommended.into(),
            why: why.into(),
        });
    }

    fn unreadable(&mut self, check: &'static str, setting: &str, recommended: String, why: &str) {
        self.push(check, Status::Unknown, setting, "unreadable", recommended, why);
    }
}

/// Checks the facts against the configuration. `config` names the file for the report.
pub fn check(cfg: &Config, config: Option<&Path>, facts: &Facts) -> Report {
    let mut b = Builder { findings: Vec::new() };
    check_rmem_max(&mut b, cfg, facts);
    check_backlog(&mut b, cfg, facts);
    check_udp_mem(&mut b, cfg, facts);
    check_ports(&mut b, cfg, facts);
    check_io_uring(&mut b, cfg, facts);
    check_nofile(&mut b, cfg, facts);
    check_clock(&mut b, facts);
    check_disk(&mut b, cfg, facts);
    check_keys(&mut b, facts);
    check_storage(&mut b, facts);
    check_api(&mut b, facts);
    counters(&mut b, facts);
    let warnings = b.findings.iter().filter(|f| f.status == Status::Warn).count();
    Report { config: config.map(|p| p.display().to_string()), ok: warnings == 0, warnings, findings: b.findings }
}

fn check_rmem_max(b: &mut Builder, cfg: &Config, facts: &Facts) {
    let setting = "net.core.rmem_max";
    let want = cfg.rtp.receive_buffer_bytes as u64;
    let recommended =
        format!(">= {want} ([rtp] receive_buffer_bytes); kernel-tuning/99-callvault.conf sets {RMEM_MAX_TUNED}");
    let Some(cur) = facts.sysctl_u64(setting) else {
        return b.unreadable("rmem_max", setting, recommended, "SO_RCVBUF is capped at it");
    };
    let effective = 2 * want.min(cur);
    let packets = effective / G711_TRUESIZE_LOOPBACK;
    let probe = match &facts.rcvbuf_probe {
        Some(Ok(got)) => format!("; a test socket asking for {want} got {got}"),
        Some(Err(e)) => format!("; test socket: {e}"),
        None => String::new(),
    };
    let holds = format!(
        "{effective} bytes (the kernel doubles the request): about {packets} G.711 20 ms packets, {:.1} s of one \
         stream, at the {G711_TRUESIZE_LOOPBACK} bytes each measured on loopback",
        packets as f64 * 0.02
    );
    if cur >= want {
        b.push(
            "rmem_max",
            Status::Ok,
            setting,
            format!("{cur}{probe}"),
            recommended,
            format!("each RTP socket gets the {want} bytes callvault asks for: {holds}"),
        );
    } else {
        b.push(
            "rmem_max",
            Status::Warn,
            setting,
            format!("{cur}{probe}"),
            recommended,
            format!(
                "callvault asks for {want} bytes per RTP socket but the kernel caps SO_RCVBUF at rmem_max, so each \
                 socket holds only {holds}; in a measured burst (docs/tuning.md) 64 KiB lost 39-56 % of it, 256 KiB \
                 0-9 %, 1 MiB none"
            ),
        );
    }
}

fn check_backlog(b: &mut Builder, cfg: &Config, facts: &Facts) {
    let setting = "net.core.netdev_max_backlog";
    // 10 ms of the configured capacity: max_calls × 2 legs × 50 packets/s × 0.01 s.
    let need = cfg.limits.max_calls as u64;
    let recommended = format!(
        ">= {need} (10 ms of max_calls' packets on one CPU); kernel-tuning/99-callvault.conf sets {NETDEV_MAX_BACKLOG_TUNED}"
    );
    let why = format!(
        "the per-CPU queue behind RPS, loopback and non-NAPI drivers; full, it drops packets before any socket \
         sees them. At capacity ({} calls × 2 legs × 50 packets/s = {} packets/s, G.711 20 ms) 10 ms is {need} \
         packets when one CPU receives them all",
        cfg.limits.max_calls,
        need * 100
    );
    match facts.sysctl_u64(setting) {
        None => b.unreadable("netdev_max_backlog", setting, recommended, &why),
        Some(cur) => {
            let status = if cur >= need { Status::Ok } else { Status::Warn };
            b.push("netdev_max_backlog", status, setting, cur.to_string(), recommended, why);
        }
    }
}

fn check_udp_mem(b: &mut Builder, cfg: &Config, facts: &Facts) {
    let setting = "net.ipv4.udp_mem";
    let per_socket =
        2 * (cfg.rtp.receive_buffer_bytes as u64).min(facts.sysctl_u64("net.core.rmem_max").unwrap_or(u64::MAX));
    let sockets = cfg.limits.max_calls as u64 * 2;
    let need_pages = (sockets * per_socket).div_ceil(facts.page_size.max(1));
    let recommended = format!("second value (pressure, pages) >= {need_pages}");
    let why = format!(
        "the global limit, in pages, on memory queued in all UDP sockets together; above its second value \
         (pressure) a socket holding more than net.ipv4.udp_rmem_min gets nothing more, above the third no socket \
         does. {sockets} RTP sockets at capacity ({} calls × 2 legs) holding {} each is {} ({need_pages} pages of \
         {})",
        cfg.limits.max_calls,
        bytes(per_socket),
        bytes(sockets * per_socket),
        facts.page_size
    );
    let pressure = facts.sysctl(setting).and_then(|v| v.split_whitespace().nth(1)?.parse::<u64>().ok());
    match pressure {
        None => b.unreadable("udp_mem", setting, recommended, &why),
        Some(pressure) => {
            let status = if pressure >= need_pages { Status::Ok } else { Status::Warn };
            let cur = facts.sysctl(setting).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
            b.push(
                "udp_mem",
                status,
                setting,
                format!("{cur} (pressure at {})", bytes(pressure * facts.page_size)),
                recommended,
                why,
            );
        }
    }
}

fn check_ports(b: &mut Builder, cfg: &Config, facts: &Facts) {
    let (lo, hi) = (cfg.rtp.port_min, cfg.rtp.port_max);
    let setting = "net.ipv4.ip_local_reserved_ports";
    let recommended = format!("{lo}-{hi} reserved, or net.ipv4.ip_local_port_range outside {lo}-{hi}");
    let reserved = facts.sysctl(setting).and_then(parse_port_list);
    let ephemeral = facts.sysctl("net.ipv4.ip_local_port_range").and_then(|v| {
        let mut it = v.split_whitespace().map(|x| x.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    });
    let why_base = format!(
        "the kernel hands out ephemeral ports (bind to port 0, connect without bind) from ip_local_port_range, \
         skipping reserved ones; a port of {lo}-{hi} held that way is one callvault cannot hand to a call"
    );
    let (Some(reserved), Some((elo, ehi))) = (reserved, ephemeral) else {
        return b.unreadable("rtp_ports", setting, recommended, &why_base);
    };
    let is_reserved = |p: u16| reserved.iter().any(|&(a, z)| a <= p && p <= z);
    let exposed = (lo.max(elo)..=hi.min(ehi)).filter(|&p| !is_reserved(p)).count();
    let all_reserved = (lo..=hi).all(is_reserved);
    let shown = facts.sysctl(setting).filter(|s| !s.is_empty()).unwrap_or("(none)");
    let current = format!("{shown}; ip_local_port_range {elo}-{ehi}");
    if all_reserved {
        b.push("rtp_ports", Status::Ok, setting, current, recommended, format!("{lo}-{hi} is reserved: {why_base}"));
    } else if exposed == 0 {
        b.push(
            "rtp_ports",
            Status::Ok,
            setting,
            current,
            recommended,
            format!(
                "the ephemeral range does not overlap {lo}-{hi}; reserving it as well keeps a later change of \
                 ip_local_port_range from handing RTP ports out: {why_base}"
            ),
        );
    } else {
        b.push(
            "rtp_ports",
            Status::Warn,
            setting,
            current,
            recommended,
            format!("{exposed} ports of {lo}-{hi} can be handed out as ephemeral ports: {why_base}"),
        );
    }
}

fn check_io_uring(b: &mut Builder, cfg: &Config, facts: &Facts) {
    let setting = "kernel.io_uring_disabled";
    let recommended = "0".to_string();
    let cost = "epoll + recvmmsg costs more per packet (FIELD-GUIDE §4, measured: 1,210-1,370 ns against 930-1,010 \
                ns at 1,000 sockets)";
    if cfg.engine.backend == BackendChoice::Epoll {
        let cur = facts.sysctl(setting).unwrap_or("absent").to_string();
        return b.push("io_uring", Status::Ok, setting, cur, recommended, "not used: [engine] backend = \"epoll\"");
    }
    let fallback = if cfg.engine.backend == BackendChoice::IoUring {
        "serve refuses to start ([engine] backend = \"io_uring\")"
    } else {
        "the epoll fallback will be used ([engine] backend = \"auto\")"
    };
    let probe = match &facts.io_uring_probe {
        Some(Ok(())) => "; io_uring_setup works in this process".to_string(),
        Some(Err(e)) => format!("; io_uring_setup fails in this process: {e}"),
        None => String::new(),
    };
    let probe_failed = matches!(facts.io_uring_probe, Some(Err(_)));
    let value = facts.sysctl(setting);
    if value.is_none() && facts.sysctls.is_empty() && facts.io_uring_probe.is_none() {
        // No sysctl could be read at all: that says nothing about the kernel's version.
        return b.push(
            "io_uring",
            Status::Unknown,
            setting,
            "unreadable (no sysctl could be read)".to_string(),
            recommended,
            "cannot tell whether io_uring is allowed",
        );
    }
    let absent =
        if facts.sysctls.is_empty() { "unreadable (no sysctl could be read)" } else { "absent (kernel before 6.6)" };
    let current = format!("{}{probe}", value.unwrap_or(absent));
    let (status, why) = match value.map(str::parse::<u8>) {
        None | Some(Ok(0)) if !probe_failed => {
            (Status::Ok, "io_uring is allowed: callvault's preferred back end".to_string())
        }
        None | Some(Ok(0)) => (
            Status::Warn,
            format!(
                "kernel.io_uring_disabled allows io_uring but it cannot be set up here (a seccomp filter such as Docker's and containerd's default profiles or a systemd SystemCallFilter, or a kernel built without it): {fallback}; {cost}"
            ),
        ),
        Some(Ok(1)) => {
            let group = facts.sysctl("kernel.io_uring_group").unwrap_or("?");
            (
                Status::Warn,
                format!(
                    "1: only CAP_SYS_ADMIN and members of kernel.io_uring_group (gid {group}) may create rings; unless the service's user is one, {fallback}; {cost}"
                ),
            )
        }
        Some(Ok(2)) => (Status::Warn, format!("2: io_uring is disabled for every process: {fallback}; {cost}")),
        Some(_) => (Status::Unknown, "not a value the kernel documents (0, 1, 2)".to_string()),
    };
    b.push("io_uring", status, setting, current, recommended, why);
}

fn check_nofile(b: &mut Builder, cfg: &Config, facts: &Facts) {
    let need = cfg.descriptors_needed();
    let setting = "RLIMIT_NOFILE (hard)";
    let recommended = format!(">= {need} (max_calls × 5 + 256); LimitNOFILE= in the systemd unit");
    let mut why = format!(
        "serve needs {need} descriptors for {} calls (two sockets per leg, two legs per call, a spool file per \
         call, a reserve), raises the soft limit to the hard one and refuses to start when the hard limit is below that",
        cfg.limits.max_calls
    );
    let Some(lim) = facts.daemon_nofile.as_ref().or(facts.own_nofile.as_ref()) else {
        return b.unreadable("nofile", setting, recommended, &why);
    };
    if facts.daemon_nofile.is_none() {
        why.push_str("; no daemon runs on this data_dir, so this is doctor's own limit: the service gets its unit's");
    }
    let status = if lim.hard.is_none_or(|h| h >= need) { Status::Ok } else { Status::Warn };
    let current = format!("{} (soft {}) of {}", limit(lim.hard), limit(lim.soft), lim.whose);
    b.push("nofile", status, setting, current, recommended, why);
}

fn check_clock(b: &mut Builder, facts: &Facts) {
    let setting = "clock synchronisation";
    let recommended = "synchronised (chrony, systemd-timesyncd or ntpd)".to_string();
    let why = "recordings and their sidecars carry wall-clock start times that are matched against the ACD's and \
               the SBC's records; an unsynchronised clock drifts from theirs";
    match &facts.clock {
        Some(ClockState { synchronised: Some(true), source }) => {
            b.push("clock", Status::Ok, setting, format!("synchronised ({source})"), recommended, why)
        }
        Some(ClockState { synchronised: Some(false), source }) => {
            b.push("clock", Status::Warn, setting, format!("not synchronised ({source})"), recommended, why)
        }
        Some(ClockState { synchronised: None, source }) => {
            b.push("clock", Status::Unknown, setting, format!("unknown ({source})"), recommended, why)
        }
        None => b.push("clock", Status::Unknown, setting, "unknown (not probed)", recommended, why),
    }
}

fn check_disk(b: &mut Builder, cfg: &Config, facts: &Facts) {
    let setting = format!("free space of data_dir ({})", cfg.data_dir.display());
    let rate = cfg.limits.max_calls as u64 * STEREO_BYTES_PER_S;
    let hour = rate * 3600;
    let recommended = format!(">= {} (one hour at capacity) and >= 10 % of the filesystem", bytes(hour));
    let why = format!(
        "recordings stay in {} until moved; {} calls record {}/s (stereo 16-bit 8 kHz, {STEREO_BYTES_PER_S} B/s \
         per call), and a full filesystem stops every recording in progress",
        cfg.spool_dir().display(),
        cfg.limits.max_calls,
        bytes(rate)
    );
    match &facts.disk {
        Some(Ok(d)) => {
            let pct = if d.total == 0 { 0.0 } else { d.available as f64 * 100.0 / d.total as f64 };
            let minutes = if rate == 0 { f64::INFINITY } else { d.available as f64 / rate as f64 / 60.0 };
            let status = if d.available >= hour && pct >= 10.0 { Status::Ok } else { Status::Warn };
            let current = format!(
                "{} free of {} ({pct:.0} %) on {}: {minutes:.0} min at capacity",
                bytes(d.available),
                bytes(d.total),
                d.path.display()
            );
            b.push("disk", status, setting, current, recommended, why);
        }
        // A data_dir serve cannot use is a finding, not an unknown.
        Some(Err(e)) if e.ends_with(UNUSABLE_DATA_DIR) => {
            b.push("disk", Status::Warn, setting, e.clone(), recommended, why)
        }
        Some(Err(e)) => b.push("disk", Status::Unknown, setting, e.clone(), recommended, why),
        None => b.push("disk", Status::Unknown, setting, "not probed", recommended, why),
    }
}

/// Finds the keys as `serve` would, creating nothing.
pub fn keys_fact(cfg: &Config) -> KeysFact {
    use crate::seal::KeySource;
    if !cfg.encrypted() {
        return KeysFact::Off;
    }
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let source = cfg.key_source(credentials.as_deref());
    if let KeySource::Dir(d) = &source
        && *d == cfg.default_key_dir()
        && !d.exists()
    {
        return KeysFact::NotYet(d.clone());
    }
    match crate::seal::setup::resolve(cfg, credentials.as_deref(), false) {
        Ok(r) => match (r.keys.active_kek(), r.keys.signing()) {
            (Ok(k), Ok(_)) => {
                let data = std::fs::canonicalize(&cfg.data_dir).unwrap_or(cfg.data_dir.clone());
                let kek_file = std::fs::canonicalize(&k.source).unwrap_or(k.source.clone());
                KeysFact::Loaded {
                    source: r.source.to_string(),
                    active: k.id.clone(),
                    beside_recordings: kek_file.starts_with(&data),
                }
            }
            (Err(e), _) | (_, Err(e)) => KeysFact::Broken(e.to_string()),
        },
        Err(e) => KeysFact::Broken(e.to_string()),
    }
}

fn check_keys(b: &mut Builder, facts: &Facts) {
    let setting = "keys of encryption at rest ([keys], [recording] encryption)";
    let recommended = "sealed, with the KEK in systemd credentials and backed up apart from the recordings";
    match &facts.keys {
        Some(KeysFact::Off) => b.push(
            "keys",
            Status::Warn,
            setting,
            "encryption = \"off\"",
            recommended,
            "recordings and their metadata (caller numbers, ACD metadata) reach the disk in the clear",
        ),
        Some(KeysFact::NotYet(d)) => b.push(
            "keys",
            Status::Info,
            setting,
            format!("none yet: serve generates a KEK and a signing key in {} on first start", d.display()),
            recommended,
            "then back the KEK up and move it to credentials (docs/keys.md): losing it loses its recordings",
        ),
        Some(KeysFact::Loaded { source, active, beside_recordings: true }) => b.push(
            "keys",
            Status::Warn,
            setting,
            format!("active KEK '{active}' from the {source}, inside the data directory"),
            recommended,
            "a KEK beside the recordings it protects goes wherever a copy of the disk goes; back it up and \
             move it to systemd credentials (docs/keys.md)",
        ),
        Some(KeysFact::Loaded { source, active, beside_recordings: false }) => b.push(
            "keys",
            Status::Ok,
            setting,
            format!("active KEK '{active}' from the {source}"),
            recommended,
            "keep old KEKs for as long as what they sealed is retained",
        ),
        Some(KeysFact::Broken(e)) => {
            b.push("keys", Status::Warn, setting, format!("unusable: {e}"), recommended, "serve would refuse to start")
        }
        None => b.push("keys", Status::Unknown, setting, "not probed", recommended, "checked with the live probes"),
    }
}

/// Loads the API's TLS pair as `serve` would and looks at the modes of the files the audit
/// trail and the tokens rest on (a read: nothing is written).
pub fn api_fact(cfg: &Config) -> ApiFact {
    use std::os::unix::fs::PermissionsExt;
    let mut problems = Vec::new();
    if !cfg.api.listen.is_empty()
        && let Err(e) = crate::api::server::check_tls(cfg)
    {
        problems.push(e.to_string());
    }
    for name in [crate::audit::KEY_FILE, crate::audit::DB_FILE, "access.db", "link.key", "qa.db"] {
        let path = cfg.data_dir.join(name);
        if let Ok(m) = std::fs::metadata(&path)
            && m.permissions().mode() & 0o077 != 0
        {
            problems.push(format!("{} is mode {:o}: chmod 600 it", path.display(), m.permissions().mode() & 0o777));
        }
    }
    ApiFact { listen: cfg.api.listen.clone(), tls: cfg.api.tls(), problems }
}

fn check_api(b: &mut Builder, facts: &Facts) {
    let setting = "search and playback API ([api], docs/api.md) and the audit trail's files";
    let recommended = "on loopback behind the site's proxy, or TLS on the users' network; private files 0600";
    match &facts.api {
        Some(f) if !f.problems.is_empty() => b.push(
            "api",
            Status::Warn,
            setting,
            f.problems.join("; "),
            recommended,
            "serve refuses a TLS pair it cannot use and an audit key others may read; loose token or audit files let \
             others read who listened to what",
        ),
        Some(f) if f.listen.is_empty() => b.push(
            "api",
            Status::Info,
            setting,
            "off (listen = \"\")",
            recommended,
            "nobody searches or plays from this recorder",
        ),
        Some(f) => b.push(
            "api",
            Status::Ok,
            setting,
            format!("{} {}", if f.tls { "https" } else { "http" }, f.listen),
            recommended,
            if f.tls {
                "TLS: rotate the certificate before it expires"
            } else {
                "loopback only: nothing else reaches it"
            },
        ),
        None => b.push("api", Status::Unknown, setting, "not probed", recommended, "checked with the live probes"),
    }
}

/// Sets up the targets as `serve` would and lists each one's holds (a read: nothing is written).
pub fn storage_fact(cfg: &Config) -> StorageFact {
    if !cfg.storage.ship {
        return StorageFact::Off;
    }
    let local_primary = cfg.storage.primary.kind == "local";
    let archive = cfg.archive_dir(&cfg.storage.primary);
    if local_primary && !archive.exists() && cfg.storage.backup.is_none() {
        return StorageFact::NotYet(archive);
    }
    let storage = match crate::storage::Storage::open_existing(cfg) {
        Ok(s) => s,
        Err(e) => {
            return StorageFact::Targets {
                local_primary,
                targets: vec![("primary".into(), String::new(), Err(e.to_string()))],
            };
        }
    };
    let targets = storage
        .targets()
        .map(|t| {
            let r = storage.block_on(t.list("_holds")).map(drop).map_err(|e| e.to_string());
            (t.role.name().to_string(), t.describe.clone(), r)
        })
        .collect();
    StorageFact::Targets { local_primary, targets }
}

fn check_storage(b: &mut Builder, facts: &Facts) {
    let setting = "storage targets ([storage], docs/storage.md)";
    let recommended = "replicated object storage (e.g. a three-node Garage), reachable";
    match &facts.storage {
        Some(StorageFact::Off) => b.push(
            "storage",
            Status::Warn,
            setting,
            "ship = false",
            recommended,
            "finished recordings stay on this machine's spool: its disk is the only copy",
        ),
        Some(StorageFact::Targets { local_primary, targets }) => {
            for (role, place, r) in targets {
                let name = if role == "primary" { "storage_primary" } else { "storage_backup" };
                match r {
                    Err(e) => b.push(name, Status::Warn, setting, format!("{place} unusable: {e}"), recommended,
                        "recordings wait in the spool until it answers; past the disk guard new calls are refused"),
                    Ok(()) if *local_primary && role == "primary" => b.push(name, Status::Info, setting,
                        format!("{place} (the embedded default)"), recommended,
                        "one machine's disk: point [storage.primary] at object storage, or add a [storage.backup]"),
                    Ok(()) => b.push(name, Status::Ok, setting, format!("{place} answers (listed; nothing written)"), recommended,
                        "a store that lists may still refuse writes: a first recording's recording_stored event confirms"),
                }
            }
        }
        Some(StorageFact::NotYet(d)) => b.push(
            "storage_primary",
            Status::Info,
            setting,
            format!("the local archive {} (the embedded default), created on first start", d.display()),
            recommended,
            "one machine's disk: point [storage.primary] at object storage, or add a [storage.backup]",
        ),
        None => b.push("storage", Status::Unknown, setting, "not probed", recommended, "checked with the live probes"),
    }
}

fn counters(b: &mut Builder, facts: &Facts) {
    if let Some(n) = facts.softnet_dropped {
        b.push(
            "backlog_drops",
            Status::Info,
            "/proc/net/softnet_stat (dropped)",
            format!("{n} since boot"),
            "0, not growing",
            "packets dropped for a full per-CPU backlog (net.core.netdev_max_backlog), all CPUs, any program",
        );
    }
    if let Some(n) = facts.udp_rcvbuf_errors {
        b.push(
            "udp_rcvbuf_errors",
            Status::Info,
            "/proc/net/snmp Udp RcvbufErrors",
            format!("{n} since boot"),
            "0, not growing",
            "UDP datagrams dropped for a full socket receive buffer, any program; callvault's own are \
             kernel_drops in `callvault ctl stats`",
        );
    }
}

/// `callvault doctor` on the command line.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The configuration serve runs with (embedded defaults without it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read /proc from here (a container checking its host's /proc mounted elsewhere; tests).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
}

/// `callvault doctor --help` examples.
pub const EXAMPLES: &str = "\
Examples:
  callvault doctor
  callvault doctor --config /etc/callvault/callvault.toml
  callvault doctor --json | jq '.findings[] | select(.status == \"warn\")'

Checks the running system against kernel-tuning/ and docs/tuning.md for the given configuration:
net.core.rmem_max against [rtp] receive_buffer_bytes, net.core.netdev_max_backlog, net.ipv4.udp_mem,
the RTP port range against ip_local_reserved_ports and ip_local_port_range,
kernel.io_uring_disabled (and whether io_uring can be set up at all), the RLIMIT_NOFILE hard limit
against max_calls x 5 + 256 (the running daemon's, when one holds the data directory), clock
synchronisation, free space where recordings go, and the keys of encryption at rest (off, not
generated yet, unusable, or kept beside the recordings). Each finding names the setting, its current
value, the recommended value and why. Nothing is changed.

Exit codes: 0 nothing off; 1 something off (a warning); 2 usage error or unusable config.";

/// Runs `callvault doctor`.
pub fn run(args: &DoctorArgs) -> ExitCode {
    let cfg = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let facts = Facts::gather(&cfg, &args.proc_root);
    let report = check(&cfg, args.config.as_deref(), &facts);
    let text = if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot encode report: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        human(&report)
    };
    let mut stdout = io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to standard output: {e}");
        return ExitCode::from(1);
    }
    ExitCode::from(report.exit_code())
}

/// The text report.
pub fn human(report: &Report) -> String {
    let mut s = format!(
        "callvault doctor: checked against {}\n",
        report.config.as_deref().unwrap_or("the embedded defaults (no --config)")
    );
    for f in &report.findings {
        s.push_str(&format!(
            "\n{:<7}  {}\n         current:     {}\n         recommended: {}\n         why:         {}\n",
            f.status.label(),
            f.setting,
            f.current,
            f.recommended,
            f.why
        ));
    }
    let count = |st: Status| report.findings.iter().filter(|f| f.status == st).count();
    s.push_str(&format!(
        "\n{} warning(s), {} ok, {} unknown, {} info; see docs/tuning.md and kernel-tuning/",
        report.warnings,
        count(Status::Ok),
        count(Status::Unknown),
        count(Status::Info)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_port_list(""), Some(vec![]));
        assert_eq!(parse_port_list("1,2-4,10-10"), Some(vec![(1, 1), (2, 4), (10, 10)]));
        assert_eq!(parse_port_list("16384-32767"), Some(vec![(16384, 32767)]));
        assert_eq!(parse_port_list("x"), None);
    }

    #[test]
    fn counters_parse() {
        assert_eq!(parse_softnet_dropped("002fd8c0 00000000 00000000\n0337ac64 0000000a 00000002\n"), Some(10));
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 5 1 7 9 7\n";
        assert_eq!(parse_snmp(snmp, "Udp", "RcvbufErrors"), Some(7));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_limits_nofile(limits), Some((Some(1024), Some(524288))));
        assert_eq!(
            parse_limits_nofile("Max open files            unlimited            unlimited            files\n"),
            Some((None, None))
        );
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(262144), "256.0 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
