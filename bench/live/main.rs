//! The live benchmark: N concurrent two-leg calls of speech-like audio at real pacing, sent by a
//! separate process on loopback, recorded by `callvault serve` (release build) driven through
//! its control socket like an ACD. In the same run: the receive floor (the same traffic into a
//! receiver that only counts), rtpengine forwarding and recording the same load when it is
//! installed, and a step search for the largest call count recorded without loss, for both
//! receive back ends. Prints a table and appends it to `bench/RESULTS.md`.
//!
//! Run it with `bench/run.sh` (`--help` for the options). The sender is this same program
//! (`live send`), as is the floor receiver (`live floor`), each in its own process pinned to its
//! own CPUs: the receiver under test on CPUs `0..workers`, the senders on the CPUs after them.

mod audio;
mod floor;
mod rtpengine;
mod sender;
mod sys;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use callvault::ctl::Client;
use callvault::engine::backend::BackendKind;
use callvault::seal::{KeySource, Keyring, SealedReader};
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};

use sender::{Codec, Plan, SendReport};

/// First RTP port handed to the receivers (even; callvault's range, the floor's ports).
const PORT_BASE: u16 = 20000;
/// Scratch directories: `<tmp>/callvault-bench-<pid>-…`, removed at the end or, after a kill, by
/// the next run.
const SCRATCH_PREFIX: &str = "callvault-bench-";
/// Socket receive buffer for every receiver, bytes (callvault's default).
const RCVBUF: usize = 262_144;

/// A number in `[lo, hi]`, for clap: a value out of range is a usage error (exit 2).
fn ranged(lo: f64, hi: f64) -> impl Fn(&str) -> std::result::Result<f64, String> + Clone + Send + Sync + 'static {
    move |s: &str| match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number from {lo} to {hi}")),
    }
}

#[derive(Parser)]
#[command(
    name = "bench/run.sh",
    bin_name = "bench/run.sh",
    about = "Live benchmark: callvault serve under N concurrent calls, beside the receive floor and rtpengine",
    after_help = "Examples:
  bench/run.sh                                   # the whole comparison (about 3 minutes), appended to bench/RESULTS.md
  bench/run.sh --quick                           # seconds: 50 calls, no search, no rtpengine, appends nothing (CI)
  bench/run.sh --calls 2000 --no-search --backends epoll
  bench/run.sh --loss 0.01 --reorder 0.01 --jitter-ms 30 --skew-ppm 100 --no-search
  bench/run.sh --ptime 30 --codec pcma --results -  # print only, append nothing

Loopback only: every packet goes to 127.0.0.1. On loopback the kernel charges much of the
receive work to the sender, so absolute CPU figures understate what a NIC costs the receiver;
the ratio to the receive floor, measured in the same run, is the figure to watch.

Interrupted (Ctrl-C, SIGTERM), it stops every process it started and removes its scratch
directory; one killed outright is cleaned up after by the next run.

Exit codes: 0 the run completed (targets are reported, never enforced); 1 it could not run
(callvault or the sender failed, a recording was missing or wrong); 2 usage; 130/143
interrupted."
)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Concurrent two-leg calls for the side-by-side comparison.
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=20_000))]
    calls: usize,
    /// Seconds of traffic per measured run (1-3600).
    #[arg(long, default_value_t = 10.0, value_parser = ranged(1.0, 3600.0))]
    seconds: f64,
    /// Seconds of traffic per step of the zero-loss search (1-600).
    #[arg(long, default_value_t = 6.0, value_parser = ranged(1.0, 600.0))]
    search_seconds: f64,
    /// Skip the zero-loss step search.
    #[arg(long)]
    no_search: bool,
    /// Largest call count the search tries.
    #[arg(long, default_value_t = 9000)]
    search_max: usize,
    /// Wall-clock budget for the whole search (both back ends), seconds.
    #[arg(long, default_value_t = 300)]
    search_budget_s: u64,
    /// Receive back ends to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "io_uring,epoll")]
    backends: Vec<BackendArg>,
    /// rtpengine: `auto` (when installed), `off`, or the path of its binary.
    #[arg(long, default_value = "auto")]
    rtpengine: String,
    /// Packet interval, ms.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(10..=120))]
    ptime: u32,
    /// Codec sent.
    #[arg(long, value_enum, default_value_t = Codec::Pcmu)]
    codec: Codec,
    /// Fraction of packets dropped on purpose by the sender (0-0.5).
    #[arg(long, default_value_t = 0.0, value_parser = ranged(0.0, 0.5))]
    loss: f64,
    /// Fraction of packets swapped with the next one (0-0.5).
    #[arg(long, default_value_t = 0.0, value_parser = ranged(0.0, 0.5))]
    reorder: f64,
    /// Random extra delay per packet, up to this many ms (0-150: within callvault's reorder
    /// window, so nothing is late by design).
    #[arg(long, default_value_t = 0.0, value_parser = ranged(0.0, 150.0))]
    jitter_ms: f64,
    /// Clock skew between the two legs of each call, ppm (-1000 to 1000).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = ranged(-1000.0, 1000.0))]
    skew_ppm: f64,
    /// Seconds, small counts, no search and no rtpengine: checks that the benchmark works.
    #[arg(long)]
    quick: bool,
    /// Where to append the results table (`-`: nowhere). Default bench/RESULTS.md, or nowhere
    /// with --quick.
    #[arg(long)]
    results: Option<String>,
    /// Print the results as one JSON object on stdout as well.
    #[arg(long)]
    json: bool,
    /// callvault worker threads (and floor receivers, rtpengine threads), each on its own CPU.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Sender processes, each on its own CPU after the receivers' (on loopback the sender pays
    /// much of the kernel's receive work: on a large machine give it several).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    senders: u16,
    /// Recordings sealed at rest (`on`, as `serve` does by default) or plain (`off`): run both
    /// to see what sealing costs live.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    encryption: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Role {
    /// (internal) The load generator: sends the plan in FILE, prints a JSON report.
    #[command(hide = true)]
    Send { plan: PathBuf },
    /// (internal) The receive floor: receives on the ports in FILE until stdin closes.
    #[command(hide = true)]
    Floor {
        #[arg(long, value_enum)]
        backend: BackendArg,
        #[arg(long)]
        cpu: Option<usize>,
        ports: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, Serialize)]
enum BackendArg {
    #[value(name = "io_uring")]
    #[serde(rename = "io_uring")]
    IoUring,
    #[value(name = "epoll")]
    #[serde(rename = "epoll")]
    Epoll,
}

impl BackendArg {
    fn kind(self) -> BackendKind {
        match self {
            BackendArg::IoUring => BackendKind::IoUring,
            BackendArg::Epoll => BackendKind::Epoll,
        }
    }
    fn name(self) -> &'static str {
        self.kind().name()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.role {
        Some(Role::Send { plan }) => {
            let plan: Plan = match std::fs::read(plan)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("send: cannot read plan {}: {e}", plan.display());
                    return ExitCode::from(1);
                }
            };
            match sender::run(&plan) {
                Ok(r) => {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("send: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Role::Floor { backend, cpu, ports }) => {
            let ports: Vec<u16> = std::fs::read_to_string(ports)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            match floor::run(backend.kind(), &ports, RCVBUF, Duration::from_millis(1), *cpu) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("floor: {e}");
                    ExitCode::from(1)
                }
            }
        }
        None => match orchestrate(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                ExitCode::from(1)
            }
        },
    }
}

type Result<T> = std::result::Result<T, String>;

/// Everything one run shares.
struct Ctx {
    args: Args,
    callvault: PathBuf,
    scratch: tempfile::TempDir,
    /// CPUs of the receiver under test (one per worker).
    receiver_cpus: Vec<usize>,
    /// CPU of each sender process (`None`: not pinned, too few CPUs).
    sender_cpus: Vec<Option<usize>>,
    nofile: u64,
}

/// The traffic of one measured run.
#[derive(Debug, Clone, Copy, Serialize)]
struct Load {
    calls: usize,
    seconds: f64,
}

/// One measured run of a receiver.
#[derive(Debug, Clone, Serialize)]
struct Trial {
    receiver: String,
    calls: usize,
    streams: usize,
    seconds: f64,
    sent: u64,
    dropped_on_purpose: u64,
    received: u64,
    /// Packets in the recordings (callvault only).
    recorded: Option<u64>,
    socket_overflow: u64,
    kernel_udp_errors: u64,
    callvault_lost: Option<u64>,
    cpu_ns: u64,
    rss_per_stream_bytes: Option<u64>,
    recordings_checked: usize,
    recordings_bad: Vec<String>,
    sender_late_packets: u64,
    sender_max_late_us: u64,
    sender_cpu_ns: u64,
}

impl Trial {
    /// A run of `receiver` on `load`, with what the sender reported; the receiver's own figures
    /// are filled in by the caller.
    fn new(receiver: String, load: Load, sent: &SendReport) -> Trial {
        Trial {
            receiver,
            calls: load.calls,
            streams: load.calls * 2,
            seconds: load.seconds,
            sent: sent.sent.iter().sum(),
            dropped_on_purpose: sent.dropped.iter().sum(),
            received: 0,
            recorded: None,
            socket_overflow: 0,
            kernel_udp_errors: 0,
            callvault_lost: None,
            cpu_ns: 0,
            rss_per_stream_bytes: None,
            recordings_checked: 0,
            recordings_bad: Vec::new(),
            sender_late_packets: sent.late_packets,
            sender_max_late_us: sent.max_late_us,
            sender_cpu_ns: sent.cpu_ns,
        }
    }

    fn ns_per_packet(&self) -> f64 {
        self.cpu_ns as f64 / self.received.max(1) as f64
    }
    /// Share of one core per call, in percent.
    fn core_percent_per_call(&self) -> f64 {
        self.cpu_ns as f64 / (self.seconds * 1e9) / self.calls.max(1) as f64 * 100.0
    }
    fn lost(&self) -> u64 {
        let delivered = self.recorded.unwrap_or(self.received);
        self.sent.saturating_sub(delivered)
    }
    fn zero_loss(&self) -> bool {
        self.lost() == 0 && self.recordings_bad.is_empty()
    }
    /// The sender fell behind its schedule: loss at this load says nothing about the receiver.
    fn sender_limited(&self) -> bool {
        self.sender_late_packets > self.sent / 1000
    }
}

fn orchestrate(mut args: Args) -> Result<()> {
    if args.quick {
        args.calls = args.calls.min(50);
        args.seconds = args.seconds.min(3.0);
        args.no_search = true;
        args.rtpengine = "off".into();
    }
    let results =
        args.results.clone().unwrap_or_else(|| if args.quick { "-".into() } else { "bench/RESULTS.md".into() });
    if results != "-" {
        // Fail now, not after minutes of measuring.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results)
            .map_err(|e| format!("cannot append results to {results}: {e}"))?;
    }
    args.results = Some(results);
    let callvault = PathBuf::from(env!("CARGO_BIN_EXE_callvault"));
    let nofile = sys::raise_nofile();
    let cpus = sys::cpus();
    let workers = usize::from(args.workers);
    let senders = usize::from(args.senders);
    if workers + senders > cpus {
        eprintln!(
            "bench: warning: {workers} worker(s) + {senders} sender(s) on {cpus} CPU(s): they share CPUs and the figures mean less"
        );
    }
    let receiver_cpus: Vec<usize> = (0..workers).map(|i| i % cpus).collect();
    let sender_cpus: Vec<Option<usize>> = (0..senders).map(|i| (workers + i < cpus).then_some(workers + i)).collect();
    sys::remove_stale_scratch(SCRATCH_PREFIX);
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| format!("scratch directory: {e}"))?;
    sys::clean_up_on_signal(scratch.path().to_path_buf()).map_err(|e| format!("signal handling: {e}"))?;
    let ctx = Ctx { args, callvault, scratch, receiver_cpus, sender_cpus, nofile };
    let started = Instant::now();
    eprintln!(
        "bench: {} calls ({} streams) x {} s, {:?} {} ms; {}; descriptor limit {nofile}",
        ctx.args.calls,
        ctx.args.calls * 2,
        ctx.args.seconds,
        ctx.args.codec,
        ctx.args.ptime,
        ctx.placement(),
    );

    let load = Load { calls: ctx.args.calls, seconds: ctx.args.seconds };
    let mut rows = Vec::new();
    for &b in &ctx.args.backends {
        let floor = floor_trial(&ctx, b, load)?;
        report_trial(&floor);
        let cv = callvault_trial(&ctx, b, load)?;
        report_trial(&cv);
        rows.push((b, floor, cv));
    }
    let mut peer_failure: Option<String> = None;
    let peer = match rtpengine_binary(&ctx.args.rtpengine) {
        Some(bin) => match rtpengine_trial(&ctx, &bin, load) {
            Ok(t) => {
                report_trial(&t);
                Some(t)
            }
            Err(e) => {
                eprintln!("bench: rtpengine run failed, left out: {e}");
                peer_failure = Some(e);
                None
            }
        },
        None => {
            if ctx.args.rtpengine == "auto" {
                eprintln!("bench: rtpengine is not installed (see bench/README.md); its column is left out");
            }
            None
        }
    };
    let mut searches = Vec::new();
    if !ctx.args.no_search {
        let deadline = Instant::now() + Duration::from_secs(ctx.args.search_budget_s);
        let per_backend = ctx.args.search_budget_s / ctx.args.backends.len().max(1) as u64;
        for (i, &b) in ctx.args.backends.iter().enumerate() {
            let own_deadline = (Instant::now() + Duration::from_secs(per_backend)).min(deadline);
            let known = rows.get(i).map(|r| &r.2);
            searches.push((b, search(&ctx, b, known, own_deadline)?));
        }
    }
    let mut table = render(&ctx, &rows, peer.as_ref(), &searches, started.elapsed());
    if let Some(e) = &peer_failure {
        table.push_str(&format!("\nrtpengine was asked for but its run failed, so its column is missing: {e}\n"));
    }
    println!("{table}");
    if ctx.args.json {
        let v = json!({
            "machine": sys::machine(),
            "load": load,
            "runs": rows.iter().map(|(b, f, c)| json!({"backend": b, "floor": f, "callvault": c,
                "ratio_to_floor": c.ns_per_packet() / f.ns_per_packet()})).collect::<Vec<_>>(),
            "rtpengine": peer,
            "search": searches.iter().map(|(b, s)| json!({"backend": b, "largest_zero_loss_calls": s.best,
                "first_lossy_calls": s.first_bad, "sender_limited_at": s.sender_limited_at.map(|x| x.0),
                "cap": s.cap.0, "cap_reason": s.cap.1, "steps": s.steps})).collect::<Vec<_>>(),
        });
        println!("{v}");
    }
    if ctx.args.results.as_deref() != Some("-") {
        let path = ctx.args.results.as_deref().unwrap_or_default();
        append_results(Path::new(path), &table).map_err(|e| format!("cannot append to {path}: {e}"))?;
        eprintln!("bench: appended to {path}");
    }
    let bad: Vec<&String> = rows.iter().flat_map(|(_, _, c)| &c.recordings_bad).collect();
    if !bad.is_empty() {
        return Err(format!("{} recording(s) missing or wrong, e.g. {}", bad.len(), bad[0]));
    }
    Ok(())
}

fn rtpengine_binary(choice: &str) -> Option<PathBuf> {
    match choice {
        "off" => None,
        "auto" => rtpengine::find(),
        path => Some(PathBuf::from(path)),
    }
}

impl Ctx {
    /// Where the receiver and the senders run, in words.
    fn placement(&self) -> String {
        let list = |c: &[usize]| c.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let senders: Vec<usize> = self.sender_cpus.iter().flatten().copied().collect();
        let unpinned = self.sender_cpus.len() - senders.len();
        let shared = if self.receiver_cpus.len() + self.sender_cpus.len() > sys::cpus() {
            format!(" (only {} CPU(s): they share CPUs, so the figures mean less)", sys::cpus())
        } else {
            String::new()
        };
        format!(
            "receiver ({} worker(s)) on CPU {}, {} sender(s){}{}{shared}",
            self.receiver_cpus.len(),
            list(&self.receiver_cpus),
            self.sender_cpus.len(),
            if senders.is_empty() { String::new() } else { format!(" on CPU {}", list(&senders)) },
            if unpinned > 0 { format!(", {unpinned} unpinned") } else { String::new() },
        )
    }
}

/// The load for `streams` split among the senders, in order (sender `k` sends a contiguous run).
fn plans(ctx: &Ctx, streams: Vec<SocketAddrV4>, seconds: f64) -> Vec<Plan> {
    let total = streams.len();
    let per = total.div_ceil(ctx.sender_cpus.len()).max(1);
    streams
        .chunks(per)
        .zip(&ctx.sender_cpus)
        .enumerate()
        .map(|(k, (chunk, &cpu))| Plan {
            cpu,
            first_stream: k * per,
            total_streams: total,
            ..plan(ctx, chunk.to_vec(), seconds)
        })
        .collect()
}

fn plan(ctx: &Ctx, streams: Vec<SocketAddrV4>, seconds: f64) -> Plan {
    Plan {
        first_stream: 0,
        total_streams: streams.len(),
        streams,
        seconds,
        ptime_ms: ctx.args.ptime,
        codec: ctx.args.codec,
        loss: ctx.args.loss,
        reorder: ctx.args.reorder,
        jitter_ms: ctx.args.jitter_ms,
        skew_ppm: ctx.args.skew_ppm,
        seed: 0xca11_7a17,
        cpu: ctx.sender_cpus.first().copied().flatten(),
    }
}

/// Starts the sender process on `plan`; `wait_sender` collects its report.
fn spawn_sender(ctx: &Ctx, plan: &Plan, name: &str) -> Result<Child> {
    let path = ctx.scratch.path().join(format!("{name}.plan.json"));
    std::fs::write(&path, serde_json::to_vec(plan).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    sys::die_with_parent(&mut cmd);
    cmd.arg("send")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the sender: {e}"))
}

fn wait_sender(child: Child) -> Result<SendReport> {
    let out = child.wait_with_output().map_err(|e| format!("sender: {e}"))?;
    if !out.status.success() {
        return Err(format!("the sender failed ({})", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("sender report unreadable: {e}"))
}

/// Runs the senders to the end while sampling `pid`'s RSS; returns their merged report and the
/// peak RSS.
fn run_senders(
    ctx: &Ctx,
    streams: Vec<SocketAddrV4>,
    seconds: f64,
    name: &str,
    pid: Option<u32>,
) -> Result<(SendReport, u64)> {
    let mut children = Vec::new();
    for (k, plan) in plans(ctx, streams, seconds).iter().enumerate() {
        children.push(spawn_sender(ctx, plan, &format!("{name}-{k}"))?);
    }
    let mut peak = 0;
    loop {
        if let Some(pid) = pid {
            peak = peak.max(sys::rss_bytes(pid).unwrap_or(0));
        }
        let mut running = false;
        for c in &mut children {
            running |= c.try_wait().map_err(|e| format!("sender: {e}"))?.is_none();
        }
        if !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut merged: Option<SendReport> = None;
    for c in children {
        let r = wait_sender(c)?;
        match &mut merged {
            Some(m) => m.merge(r),
            None => merged = Some(r),
        }
    }
    Ok((merged.ok_or("no sender ran")?, peak))
}

fn floor_trial(ctx: &Ctx, backend: BackendArg, load: Load) -> Result<Trial> {
    let streams = load.calls * 2;
    let ports = free_even_ports(streams)?;
    // One floor receiver per worker CPU, each with its share of the sockets, as callvault's
    // workers share the calls.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let per = ports.len().div_ceil(ctx.receiver_cpus.len()).max(1);
    let mut receivers = Vec::new();
    for (k, (chunk, cpu)) in ports.chunks(per).zip(&ctx.receiver_cpus).enumerate() {
        let path = ctx.scratch.path().join(format!("floor-{}-{k}.ports", backend.name()));
        std::fs::write(&path, chunk.iter().map(u16::to_string).collect::<Vec<_>>().join("\n"))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&exe);
        sys::die_with_parent(&mut cmd);
        let mut child = cmd
            .args(["floor", "--backend", backend.name(), "--cpu", &cpu.to_string()])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the floor receiver: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("floor: no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let _ = child.wait();
            return Err(format!("the {} floor receiver did not start", backend.name()));
        }
        receivers.push((child, out));
    }
    let cpu_all = |rs: &[(Child, BufReader<std::process::ChildStdout>)]| -> Result<u64> {
        rs.iter().map(|(c, _)| sys::cpu_ns(c.id()).map_err(|e| e.to_string())).sum()
    };
    let udp0 = sys::UdpCounters::read().map_err(|e| e.to_string())?;
    let cpu0 = cpu_all(&receivers)?;
    let dests = ports.iter().map(|&p| SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)).collect();
    let (sent, _) = run_senders(ctx, dests, load.seconds, &format!("floor-{}", backend.name()), None)?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu1 = cpu_all(&receivers)?;
    let udp = sys::UdpCounters::read().map_err(|e| e.to_string())?.since(&udp0);
    let (mut received, mut kernel_drops) = (0, 0);
    for (mut child, mut out) in receivers {
        drop(child.stdin.take());
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let _ = child.wait();
        let r: floor::FloorReport =
            serde_json::from_str(line.trim()).map_err(|e| format!("floor report unreadable: {e}: {line:?}"))?;
        received += r.received;
        kernel_drops += r.kernel_drops;
    }
    Ok(Trial {
        received,
        socket_overflow: kernel_drops,
        kernel_udp_errors: udp.in_errors,
        cpu_ns: cpu1 - cpu0,
        ..Trial::new(format!("floor ({})", backend.name()), load, &sent)
    })
}

/// `n` even ports from [`PORT_BASE`] up that nothing holds now (as callvault's allocator skips
/// busy ports, so does the floor: another program on the machine must not fail the run).
fn free_even_ports(n: usize) -> Result<Vec<u16>> {
    let mut ports = Vec::with_capacity(n);
    let mut port = PORT_BASE;
    while ports.len() < n {
        if port > 60998 {
            return Err(format!("only {} free even ports from {PORT_BASE} to 60998; {n} needed", ports.len()));
        }
        if UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            ports.push(port);
        }
        port += 2;
    }
    Ok(ports)
}

/// A UDP port on 127.0.0.1 that nothing holds now.
fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.port())
}

/// A `callvault serve` started for one run, stopped (SIGTERM) on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    fn start(ctx: &Ctx, backend: BackendArg, calls: usize, name: &str) -> Result<Daemon> {
        let dir = ctx.scratch.path().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let socket = dir.join("control.sock");
        // The whole range up to 60998, so ports another program holds are skipped, not short.
        // Shipping is off: the recordings are read back from the spool after the run, and the
        // figures are those of the receive path (shipping runs on its own thread after a call).
        let port_max = 60998;
        let config = format!(
            "data_dir = \"{dir}\"\n[control]\nsocket = \"{sock}\"\n[rtp]\nport_min = {PORT_BASE}\nport_max = {port_max}\nrtcp_mux = true\nreceive_buffer_bytes = {RCVBUF}\n[engine]\nworkers = {workers}\nbackend = \"{backend}\"\n[limits]\nmax_calls = {max_calls}\n[metrics]\nlisten = \"\"\n[api]\nlisten = \"\"\n[recording]\nencryption = \"{encryption}\"\n[storage]\nship = false\n",
            dir = dir.display(),
            sock = socket.display(),
            backend = backend.name(),
            max_calls = calls + 10,
            workers = ctx.receiver_cpus.len(),
            encryption = ctx.args.encryption,
        );
        let cfg = dir.join("callvault.toml");
        std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("serve.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&ctx.callvault);
        sys::die_with_parent(&mut cmd);
        cmd.args(["serve", "--config"]).arg(&cfg).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        sys::pin_command(&mut cmd, &ctx.receiver_cpus);
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", ctx.callvault.display()))?;
        let mut d = Daemon { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Client::connect(&d.socket).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                let log = std::fs::read_to_string(d.dir.join("serve.log")).unwrap_or_default();
                return Err(format!("callvault serve exited at start ({status}): {}", log.trim()));
            }
            if Instant::now() > deadline {
                return Err("callvault serve did not open its control socket within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> Result<Client> {
        let mut c = Client::connect(&self.socket).map_err(|e| e.to_string())?;
        c.set_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        Ok(c)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of a child this process spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn request(c: &mut Client, v: Value) -> Result<Value> {
    let r = c.request(v.clone()).map_err(|e| format!("control socket: {e}"))?;
    if r["ok"] != true {
        return Err(format!("callvault refused {}: {}", v["cmd"], r["error"]));
    }
    Ok(r)
}

fn worker_sum(stats: &Value, field: &str) -> u64 {
    stats["workers"].as_array().map(|ws| ws.iter().filter_map(|w| w[field].as_u64()).sum()).unwrap_or(0)
}

fn callvault_trial(ctx: &Ctx, backend: BackendArg, load: Load) -> Result<Trial> {
    let name = format!("callvault-{}-{}", backend.name(), load.calls);
    let d = Daemon::start(ctx, backend, load.calls, &name)?;
    let mut c = d.client()?;
    let rss_idle = sys::rss_bytes(d.pid()).unwrap_or(0);
    let mut dests = Vec::with_capacity(load.calls * 2);
    let mut started_at = Vec::with_capacity(load.calls);
    for i in 0..load.calls {
        let r = request(
            &mut c,
            json!({"cmd": "start", "call_id": format!("bench-{i}"), "layout": "stereo",
                "legs": [{"label": "customer", "rtcp_mux": true}, {"label": "agent", "rtcp_mux": true}]}),
        )?;
        for leg in 0..2 {
            let port = r["legs"][leg]["port"].as_u64().ok_or("start reply without a port")? as u16;
            dests.push(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        }
        started_at.push(Instant::now());
    }
    let stats0 = request(&mut c, json!({"cmd": "stats"}))?;
    let udp0 = sys::UdpCounters::read().map_err(|e| e.to_string())?;
    let cpu0 = sys::cpu_ns(d.pid()).map_err(|e| e.to_string())?;
    let (sent, rss_peak) = run_senders(ctx, dests, load.seconds, &name, Some(d.pid()))?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu1 = sys::cpu_ns(d.pid()).map_err(|e| e.to_string())?;
    let udp = sys::UdpCounters::read().map_err(|e| e.to_string())?.since(&udp0);
    // Counters are published by the worker every housekeeping round; give it one.
    std::thread::sleep(Duration::from_millis(1100));
    let stats1 = request(&mut c, json!({"cmd": "stats"}))?;
    let received = worker_sum(&stats1, "datagrams") - worker_sum(&stats0, "datagrams");
    let overflow = worker_sum(&stats1, "kernel_drops") - worker_sum(&stats0, "kernel_drops");

    let mut recorded = 0u64;
    let mut bad = Vec::new();
    // The keys the daemon generated on its first start, in its data directory.
    let keys = if ctx.args.encryption == "on" {
        Keyring::load(&KeySource::Dir(d.dir.join("keys")), None).map_err(|e| e.to_string())?
    } else {
        Keyring::default()
    };
    for (i, started) in started_at.iter().enumerate() {
        let stop = request(&mut c, json!({"cmd": "stop", "call_id": format!("bench-{i}")}))?;
        let wall_ms = started.elapsed().as_millis() as i64;
        let mut leg_lost = 0u64;
        for leg in 0..2 {
            let l = &stop["legs"][leg];
            let packets = l["packets"].as_u64().unwrap_or(0);
            recorded += packets;
            leg_lost += l["lost"].as_u64().unwrap_or(0);
            let stream = 2 * i + leg;
            if packets != sent.sent[stream] {
                bad.push(format!("bench-{i} leg {leg}: {packets} packets recorded, {} sent", sent.sent[stream]));
            }
        }
        let dropped = sent.dropped[2 * i] + sent.dropped[2 * i + 1];
        if leg_lost != dropped {
            bad.push(format!("bench-{i}: {leg_lost} reported lost, {dropped} dropped on purpose"));
        }
        if let Err(e) = check_recording(&stop, wall_ms, &keys) {
            bad.push(format!("bench-{i}: {e}"));
        }
    }
    let streams = load.calls * 2;
    Ok(Trial {
        received,
        recorded: Some(recorded),
        socket_overflow: overflow,
        kernel_udp_errors: udp.in_errors,
        callvault_lost: Some(received.saturating_sub(recorded)),
        cpu_ns: cpu1 - cpu0,
        rss_per_stream_bytes: Some(rss_peak.saturating_sub(rss_idle) / streams.max(1) as u64),
        recordings_checked: load.calls,
        recordings_bad: bad,
        ..Trial::new(format!("callvault ({})", backend.name()), load, &sent)
    })
}

/// The finished file agrees with the stop reply and with the time the call lasted: a stereo
/// 8 kHz WAV whose sample count is its duration, and whose duration is the wall-clock time from
/// start to stop (within 250 ms: the replies' own latency).
fn check_recording(stop: &Value, wall_ms: i64, keys: &Keyring) -> std::result::Result<(), String> {
    let file = stop["file"].as_str().ok_or("stop reply names no file")?;
    // Sealed (the default): verified in full and decrypted in memory; never written out.
    let plain = if file.ends_with(".cvs") {
        let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
        let mut r = SealedReader::open(f, keys).map_err(|e| format!("{file}: {e}"))?;
        let mut out = Vec::new();
        r.verify(keys.trusted(), Some(&mut out)).map_err(|e| format!("{file}: {e}"))?;
        out
    } else {
        std::fs::read(file).map_err(|e| format!("{file}: {e}"))?
    };
    let reader = hound::WavReader::new(std::io::Cursor::new(plain)).map_err(|e| format!("{file}: {e}"))?;
    let spec = reader.spec();
    if spec.channels != 2 || spec.sample_rate != 8000 || spec.bits_per_sample != 16 {
        return Err(format!(
            "{file}: {} ch {} Hz {} bit, expected stereo 8 kHz 16 bit",
            spec.channels, spec.sample_rate, spec.bits_per_sample
        ));
    }
    let frames = i64::from(reader.duration());
    let duration_ms = stop["duration_ms"].as_i64().ok_or("stop reply without duration_ms")?;
    if (frames * 1000 / 8000 - duration_ms).abs() > 1 {
        return Err(format!("{file}: {frames} frames but duration_ms {duration_ms}"));
    }
    if (duration_ms - wall_ms).abs() > 250 {
        return Err(format!("{file}: {duration_ms} ms recorded, the call lasted {wall_ms} ms"));
    }
    let bytes = std::fs::metadata(file).map_err(|e| e.to_string())?.len() as i64;
    if bytes < frames * 4 {
        return Err(format!("{file}: {bytes} bytes cannot hold {frames} stereo frames"));
    }
    Ok(())
}

fn rtpengine_trial(ctx: &Ctx, bin: &Path, load: Load) -> Result<Trial> {
    let dir = ctx.scratch.path().join("rtpengine");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // Where rtpengine forwards both directions: one socket that is never read, so the kernel
    // drops what overflows it (cheap, and the same for every call).
    let sink = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let sink_addr = match sink.local_addr().map_err(|e| e.to_string())? {
        std::net::SocketAddr::V4(a) => a,
        other => return Err(format!("sink bound to {other}")),
    };
    let ports = (PORT_BASE, 60999);
    let mut rtpe = rtpengine::Rtpengine::start(bin, &dir, free_udp_port()?, ports, &ctx.receiver_cpus)
        .map_err(|e| e.to_string())?;
    let rss_idle = sys::rss_bytes(rtpe.pid()).unwrap_or(0);
    let mut dests = Vec::with_capacity(load.calls * 2);
    for i in 0..load.calls {
        let [caller_to, callee_to] = rtpe.call(&format!("bench-{i}"), sink_addr).map_err(|e| e.to_string())?;
        dests.push(caller_to);
        dests.push(callee_to);
    }
    let udp0 = sys::UdpCounters::read().map_err(|e| e.to_string())?;
    let cpu0 = sys::cpu_ns(rtpe.pid()).map_err(|e| e.to_string())?;
    let (sent, rss_peak) = run_senders(ctx, dests, load.seconds, "rtpengine", Some(rtpe.pid()))?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu1 = sys::cpu_ns(rtpe.pid()).map_err(|e| e.to_string())?;
    let udp = sys::UdpCounters::read().map_err(|e| e.to_string())?.since(&udp0);
    for i in 0..load.calls {
        let _ = rtpe.delete(&format!("bench-{i}"));
    }
    let pcaps = count_files(&rtpe.recording_dir.join("pcaps"));
    rtpe.stop();
    drop(sink);
    let sent_total: u64 = sent.sent.iter().sum();
    let mut bad = Vec::new();
    if pcaps < load.calls {
        bad.push(format!("rtpengine wrote {pcaps} pcap file(s) for {} calls", load.calls));
    }
    Ok(Trial {
        // rtpengine does not say what it received; the namespace's counters do, less the sink's
        // overflow (its forwarded copies).
        received: sent_total.saturating_sub(udp.in_errors.saturating_sub(udp.rcvbuf_errors)),
        kernel_udp_errors: udp.in_errors,
        cpu_ns: cpu1 - cpu0,
        rss_per_stream_bytes: Some(rss_peak.saturating_sub(rss_idle) / (load.calls * 2).max(1) as u64),
        recordings_checked: pcaps,
        recordings_bad: bad,
        ..Trial::new("rtpengine (forward + pcap)".into(), load, &sent)
    })
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.flatten().filter(|e| e.path().is_file()).count()).unwrap_or(0)
}

/// The zero-loss search for one back end.
#[derive(Debug, Clone, Serialize)]
struct Search {
    /// Largest call count recorded without loss while the sender kept its schedule.
    best: Option<usize>,
    /// Smallest call count that lost packets.
    first_bad: Option<usize>,
    /// The call count at which the sender fell behind (and whether callvault still lost
    /// nothing of what arrived): beyond it this machine cannot offer the load.
    sender_limited_at: Option<(usize, bool)>,
    /// The largest call count this machine allows, and what sets it.
    cap: (usize, String),
    /// Every step: calls, zero loss, packets lost.
    steps: Vec<(usize, bool, u64)>,
}

/// Doubles the call count from the comparison's until a run loses packets (or the sender cannot
/// keep up, or the cap or the time budget is reached), then bisects at most twice.
fn search(ctx: &Ctx, backend: BackendArg, known: Option<&Trial>, deadline: Instant) -> Result<Search> {
    // callvault budgets 5 descriptors per call plus 256; ports: 2 per leg in its range.
    let fd_cap = (ctx.nofile.saturating_sub(256 + 50) / 5) as usize - 10;
    let port_cap = (60998 - PORT_BASE as usize) / 4 - 10;
    let cap = [
        (ctx.args.search_max, "--search-max".to_string()),
        (fd_cap, format!("descriptor limit {}", ctx.nofile)),
        (port_cap, "ports below 61000".to_string()),
    ]
    .into_iter()
    .min_by_key(|c| c.0)
    .unwrap_or((0, String::new()));
    let mut s = Search { best: None, first_bad: None, sender_limited_at: None, cap: cap.clone(), steps: Vec::new() };
    let next = |s: &mut Search, t: &Trial| -> Option<usize> {
        s.steps.push((t.calls, t.zero_loss(), t.lost()));
        if t.sender_limited() {
            s.sender_limited_at = Some((t.calls, t.zero_loss()));
            return None;
        }
        if t.zero_loss() {
            s.best = Some(s.best.map_or(t.calls, |b| b.max(t.calls)));
        } else {
            s.first_bad = Some(s.first_bad.map_or(t.calls, |b| b.min(t.calls)));
        }
        match (s.best, s.first_bad) {
            (Some(good), None) if good >= cap.0 => None,
            (Some(good), None) => Some((good * 2).min(cap.0)),
            (None, Some(bad)) => Some(bad / 2),
            (Some(good), Some(bad)) if bad - good > (good / 10).max(1) => Some((good + bad) / 2),
            _ => None,
        }
    };
    let mut n = match known {
        Some(t) => next(&mut s, t),
        None => Some(ctx.args.calls.min(cap.0)),
    };
    let mut bisections = 0;
    while let Some(calls) = n {
        let enough_time = Instant::now() + Duration::from_secs_f64(ctx.args.search_seconds * 2.0 + 5.0) < deadline;
        if calls == 0 || !enough_time || s.steps.iter().any(|st| st.0 == calls) {
            break;
        }
        if s.best.is_some() && s.first_bad.is_some() {
            bisections += 1;
            if bisections > 2 {
                break;
            }
        }
        eprintln!("bench: search ({}): {calls} calls", backend.name());
        let t = callvault_trial(ctx, backend, Load { calls, seconds: ctx.args.search_seconds })?;
        report_trial(&t);
        n = next(&mut s, &t);
    }
    Ok(s)
}

impl Search {
    /// The table cell.
    fn cell(&self) -> String {
        let best = self.best.map_or("none".into(), |n| format!("**{n}** ({} streams)", n * 2));
        let why = match (self.sender_limited_at, self.first_bad) {
            (Some((n, true)), _) => format!("; at {n} the sender fell behind (no loss of what arrived)"),
            (Some((n, false)), _) => format!("; at {n} the sender fell behind and packets were lost"),
            (None, Some(bad)) => format!("; loss at {bad}"),
            (None, None) if self.best.is_some_and(|b| b >= self.cap.0) => format!("; cap reached ({})", self.cap.1),
            (None, None) => "; search budget ended".into(),
        };
        format!("{best}{why}")
    }
}

fn report_trial(t: &Trial) {
    eprintln!(
        "bench: {:<28} {:>5} calls: {:>6.0} ns/packet, {:.4} % core/call, sent {} received {} lost {}{}{}",
        t.receiver,
        t.calls,
        t.ns_per_packet(),
        t.core_percent_per_call(),
        t.sent,
        t.received,
        t.lost(),
        t.rss_per_stream_bytes.map(|b| format!(", {:.1} KiB RSS/stream", b as f64 / 1024.0)).unwrap_or_default(),
        if t.sender_limited() { "  [sender could not keep up]" } else { "" }
    );
}

fn render(
    ctx: &Ctx,
    rows: &[(BackendArg, Trial, Trial)],
    peer: Option<&Trial>,
    searches: &[(BackendArg, Search)],
    took: Duration,
) -> String {
    let a = &ctx.args;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "### {} — {} calls x {} s, {:?} {} ms, recordings {}{}{}{}{}",
        utc_now(),
        a.calls,
        a.seconds,
        a.codec,
        a.ptime,
        if a.encryption == "on" { "sealed" } else { "plain" },
        if a.loss > 0.0 { format!(", loss {}", a.loss) } else { String::new() },
        if a.reorder > 0.0 { format!(", reorder {}", a.reorder) } else { String::new() },
        if a.jitter_ms > 0.0 { format!(", jitter {} ms", a.jitter_ms) } else { String::new() },
        if a.skew_ppm != 0.0 { format!(", skew {} ppm", a.skew_ppm) } else { String::new() },
    );
    let _ = writeln!(
        t,
        "\nMachine: {}. {}. Loopback: the kernel charges much of the receive work to the sender, so \
         compare the ratios, not the absolute figures. Took {:.0} s.\n",
        sys::machine(),
        ctx.placement(),
        took.as_secs_f64()
    );
    let mut header = "| measure |".to_string();
    let mut rule = "|---|".to_string();
    for (b, _, _) in rows {
        header.push_str(&format!(" {} |", b.name()));
        rule.push_str("---:|");
    }
    if peer.is_some() {
        header.push_str(" rtpengine |");
        rule.push_str("---:|");
    }
    let _ = writeln!(t, "{header}\n{rule}");
    let mut row = |label: &str, cells: Vec<String>, peer_cell: Option<String>| {
        let mut line = format!("| {label} |");
        for c in cells {
            line.push_str(&format!(" {c} |"));
        }
        if peer.is_some() {
            line.push_str(&format!(" {} |", peer_cell.unwrap_or_else(|| "–".into())));
        }
        let _ = writeln!(t, "{line}");
    };
    row("receive floor, CPU ns/packet", rows.iter().map(|r| format!("{:.0}", r.1.ns_per_packet())).collect(), None);
    row(
        "callvault, CPU ns/packet (all in)",
        rows.iter().map(|r| format!("{:.0}", r.2.ns_per_packet())).collect(),
        peer.map(|p| format!("{:.0}", p.ns_per_packet())),
    );
    row(
        "**ratio to floor** (target ≤ 1.25)",
        rows.iter().map(|r| format!("**{:.2}**", r.2.ns_per_packet() / r.1.ns_per_packet().max(1e-9))).collect(),
        None,
    );
    row(
        "CPU per call, % of a core",
        rows.iter().map(|r| format!("{:.4}", r.2.core_percent_per_call())).collect(),
        peer.map(|p| format!("{:.4}", p.core_percent_per_call())),
    );
    if let Some(p) = peer {
        row(
            "**ratio to rtpengine per call** (target ≤ 0.3)",
            rows.iter()
                .map(|r| format!("**{:.2}**", r.2.core_percent_per_call() / p.core_percent_per_call().max(1e-12)))
                .collect(),
            Some("1".into()),
        );
    }
    row(
        "RSS per active stream, KiB (target ≤ 64)",
        rows.iter()
            .map(|r| r.2.rss_per_stream_bytes.map_or("–".into(), |b| format!("{:.1}", b as f64 / 1024.0)))
            .collect(),
        peer.and_then(|p| p.rss_per_stream_bytes).map(|b| format!("{:.1}", b as f64 / 1024.0)),
    );
    row(
        "packets sent / received",
        rows.iter().map(|r| format!("{} / {}", r.2.sent, r.2.received)).collect(),
        peer.map(|p| format!("{} / {}", p.sent, p.received)),
    );
    if a.loss > 0.0 {
        row(
            "dropped on purpose by the sender (each leg's `lost` must match)",
            rows.iter()
                .map(|r| {
                    let mismatch = r.2.recordings_bad.iter().any(|b| b.contains("lost"));
                    format!("{} ({})", r.2.dropped_on_purpose, if mismatch { "MISMATCH" } else { "all matched" })
                })
                .collect(),
            peer.map(|p| p.dropped_on_purpose.to_string()),
        );
    }
    row(
        "lost: socket overflow / kernel UDP errors / callvault",
        rows.iter()
            .map(|r| {
                format!("{} / {} / {}", r.2.socket_overflow, r.2.kernel_udp_errors, r.2.callvault_lost.unwrap_or(0))
            })
            .collect(),
        peer.map(|_| "– (its forwarded copies overflow the sink)".to_string()),
    );
    row(
        "floor lost: socket overflow / kernel UDP errors",
        rows.iter().map(|r| format!("{} / {}", r.1.socket_overflow, r.1.kernel_udp_errors)).collect(),
        None,
    );
    row(
        "recordings checked / wrong",
        rows.iter().map(|r| format!("{} / {}", r.2.recordings_checked, r.2.recordings_bad.len())).collect(),
        peer.map(|p| format!("{} pcap", p.recordings_checked)),
    );
    row(
        "sender CPU, ns/packet",
        rows.iter().map(|r| format!("{:.0}", r.2.sender_cpu_ns as f64 / r.2.sent.max(1) as f64)).collect(),
        peer.map(|p| format!("{:.0}", p.sender_cpu_ns as f64 / p.sent.max(1) as f64)),
    );
    if !searches.is_empty() {
        row(
            "**largest zero-loss calls**",
            rows.iter()
                .map(|(b, _, _)| searches.iter().find(|(sb, _)| sb == b).map_or("–".into(), |(_, s)| s.cell()))
                .collect(),
            None,
        );
    }
    t
}

use std::fmt::Write as _;

/// `YYYY-MM-DD HH:MM UTC`, from the daemon's own RFC 3339 formatting.
fn utc_now() -> String {
    let t = callvault::engine::call::rfc3339(std::time::SystemTime::now());
    format!("{} {} UTC", &t[..10], &t[11..16])
}

fn append_results(path: &Path, table: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "\n{table}")
}
