//! What the benchmark reads from and asks of the OS: CPU time and memory of a process from
//! `/proc`, the namespace's UDP counters, CPU affinity, descriptor limits, and `sendmmsg`.
//! The only `unsafe` of the benchmark lives here, each block with the reason it holds.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;

/// CPU time a process has used so far, in ns: the sum of its threads' run time from
/// `/proc/PID/task/*/schedstat` (nanosecond resolution, unlike the 10 ms ticks of
/// `/proc/PID/stat`). Threads that already exited are not counted; the processes measured here
/// keep theirs for the whole run.
pub fn cpu_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(total)
}

/// Resident set size of a process, in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// The network namespace's UDP counters (`/proc/net/snmp`, the `Udp:` lines).
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpCounters {
    /// Datagrams delivered to sockets.
    pub in_datagrams: u64,
    /// Datagrams to a port nobody listens on.
    pub no_ports: u64,
    /// Datagrams dropped on receive for any reason (includes `rcvbuf_errors`).
    pub in_errors: u64,
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
}

impl UdpCounters {
    /// Reads them now.
    pub fn read() -> io::Result<UdpCounters> {
        let text = std::fs::read_to_string("/proc/net/snmp")?;
        let get = |field| {
            callvault::host::parse_snmp(&text, "Udp", field)
                .ok_or_else(|| io::Error::other(format!("no Udp {field} in /proc/net/snmp")))
        };
        Ok(UdpCounters {
            in_datagrams: get("InDatagrams")?,
            no_ports: get("NoPorts")?,
            in_errors: get("InErrors")?,
            rcvbuf_errors: get("RcvbufErrors")?,
        })
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &UdpCounters) -> UdpCounters {
        UdpCounters {
            in_datagrams: self.in_datagrams.saturating_sub(earlier.in_datagrams),
            no_ports: self.no_ports.saturating_sub(earlier.no_ports),
            in_errors: self.in_errors.saturating_sub(earlier.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(earlier.rcvbuf_errors),
        }
    }
}

/// Pins the calling thread to a set of CPUs.
pub fn pin_self(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: `set` is a plain bit mask initialised by CPU_ZERO before use; sched_setaffinity
    // only reads `size_of::<cpu_set_t>()` bytes of it. Pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `cmd` start pinned to `cpus` (its threads inherit the mask; callvault then pins worker
/// `i` to the `i`-th of them).
pub fn pin_command(cmd: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    let cpus = cpus.to_vec();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // sched_setaffinity (via pin_self), an async-signal-safe system call; the Vec it reads was
    // allocated before the fork and is not freed or grown in the child.
    unsafe {
        cmd.pre_exec(move || pin_self(&cpus));
    }
}

/// Makes `cmd`'s process get SIGTERM when the benchmark dies (killed, interrupted, crashed), so
/// no daemon, receiver or sender outlives it.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, an
    // async-signal-safe system call; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The benchmark blocks SIGINT/SIGTERM for its signal thread; the child must not.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// On SIGINT or SIGTERM (and when the parent, such as cargo, dies): removes `scratch` and
/// exits with 128 + the signal; every child goes with it (see [`die_with_parent`]). Call before
/// any other thread starts, so that they all inherit the blocked signals.
pub fn clean_up_on_signal(scratch: std::path::PathBuf) -> io::Result<()> {
    // SAFETY: `set` is initialised by sigemptyset before use; prctl and pthread_sigmask take
    // plain values and a pointer to that set, which outlives the calls.
    let set = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid, initialised signal set and `sig` a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            eprintln!("bench: interrupted (signal {sig}): stopping, removing {}", scratch.display());
            let _ = std::fs::remove_dir_all(&scratch);
            std::process::exit(128 + sig);
        }
    })?;
    Ok(())
}

/// Removes scratch directories (`<tmp>/<prefix><pid>-…`) left by benchmark runs whose process is
/// gone (killed before it could clean up: they can hold gigabytes of recordings).
pub fn remove_stale_scratch(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()?.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Raises the soft and, when permitted (root), the hard descriptor limit to the kernel's
/// maximum; children inherit it. Returns the soft limit in force afterwards.
pub fn raise_nofile() -> u64 {
    let nr_open: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    let wanted = libc::rlimit { rlim_cur: nr_open, rlim_max: nr_open.max(lim.rlim_max) };
    // SAFETY: `wanted` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return wanted.rlim_cur;
    }
    let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return soft.rlim_cur;
    }
    lim.rlim_cur
}

/// This process's own CPU time (all threads), in ns.
pub fn self_cpu_ns() -> u64 {
    let mut ru: libc::rusage = unsafe_zeroed_rusage();
    // SAFETY: `ru` is a valid rusage for getrusage to fill.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn unsafe_zeroed_rusage() -> libc::rusage {
    // SAFETY: rusage is plain integers and timevals; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// One line describing the machine: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {} CPU(s), {mem_gib:.0} GiB, Linux {}", cpus(), kernel.trim())
}

/// Sends each `(destination, payload)` with as few `sendmmsg` calls as the kernel allows.
/// Returns how many were sent; stops at the first error (returned with the count so far).
pub fn send_batch(socket: &UdpSocket, batch: &[(SocketAddrV4, &[u8])]) -> (usize, Option<io::Error>) {
    const MAX: usize = 64;
    let mut sent = 0;
    while sent < batch.len() {
        let chunk = &batch[sent..batch.len().min(sent + MAX)];
        let mut addrs: [libc::sockaddr_in; MAX] = [zero_sockaddr(); MAX];
        let mut iovs: [libc::iovec; MAX] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX];
        let mut msgs: [libc::mmsghdr; MAX] = [zero_mmsghdr(); MAX];
        for (i, (dst, payload)) in chunk.iter().enumerate() {
            addrs[i].sin_family = libc::AF_INET as libc::sa_family_t;
            addrs[i].sin_port = dst.port().to_be();
            addrs[i].sin_addr = libc::in_addr { s_addr: u32::from(*dst.ip()).to_be() };
            iovs[i] = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
        }
        for i in 0..chunk.len() {
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every mmsghdr points at a sockaddr_in and an iovec in the arrays above, which
        // outlive the call; each iovec points at a payload borrowed for the whole call, and the
        // kernel only reads it (the cast to *mut is what the C type wants).
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), chunk.len() as libc::c_uint, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (sent, Some(e));
        }
        sent += n as usize;
    }
    (sent, None)
}

const fn zero_sockaddr() -> libc::sockaddr_in {
    libc::sockaddr_in { sin_family: 0, sin_port: 0, sin_addr: libc::in_addr { s_addr: 0 }, sin_zero: [0; 8] }
}

fn zero_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain integers and pointers; all-zero (null pointers, zero lengths) is
    // a valid value that the code above fills in before use.
    unsafe { std::mem::zeroed() }
}
