//! The live RTP engine: one worker thread per core, each owning its back end, its sockets and
//! its calls. This is the I/O layer: the only place with `unsafe` (each block says why it holds).
//!
//! The control plane talks to a worker only through its channel ([`WorkerMsg`]); a worker talks
//! back through replies and [`Event`]s. No lock is taken per packet.

pub mod backend;
pub mod call;
pub mod ports;
pub mod worker;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::core::mixer::Layout;
use crate::core::recording::{LegSpec, RecordingConfig};
use crate::core::session::PauseMode;
use backend::{BackendConfig, BackendKind};
use call::SourceFilter;
use ports::LegPorts;
use worker::{Worker, WorkerLimits};

/// Monotonic nanoseconds since the engine started; the one clock every worker reads.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock { epoch: Instant::now() }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// An error for the ACD: a stable snake_case code and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// Documented in `docs/control-protocol.md`.
    pub code: &'static str,
    /// Human-readable, actionable.
    pub message: String,
}

impl CallError {
    /// An error with `code`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        CallError { code, message: message.into() }
    }

    /// No active call has that id.
    pub fn unknown_call(call_id: &str) -> Self {
        CallError::new("unknown_call", format!("no active call {call_id:?}"))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// One leg ready to record: bound sockets and what to expect on them.
#[derive(Debug)]
pub struct LegSetup {
    /// Label and payload map.
    pub spec: LegSpec,
    /// Its sockets.
    pub ports: LegPorts,
    /// Accepted sources.
    pub source: SourceFilter,
    /// Output channel (stereo), default chosen by the session.
    pub channel: Option<u16>,
}

/// A call to start.
#[derive(Debug)]
pub struct StartCall {
    /// ULID.
    pub recording_id: String,
    /// The ACD's metadata.
    pub metadata: serde_json::Map<String, Value>,
    /// Layout.
    pub layout: Layout,
    /// Stereo channel count (default: legs, at least two).
    pub channels: Option<u16>,
    /// Timeline settings.
    pub recording: RecordingConfig,
    /// The file format.
    pub format: crate::output::encode::Format,
    /// Legs.
    pub legs: Vec<LegSetup>,
}

/// What to do to a call.
#[derive(Debug)]
pub enum Op {
    /// Start it.
    Start(Box<StartCall>),
    /// Stop and finalise it.
    Stop,
    /// Pause.
    Pause(PauseMode),
    /// Resume.
    Resume,
    /// A leg joins.
    AddLeg(Box<LegSetup>),
    /// A leg (by label) leaves.
    RemoveLeg(String),
    /// Merge metadata.
    Update(serde_json::Map<String, Value>),
    /// Counters and state.
    Status,
}

/// A request for one call, with where to send the answer.
#[derive(Debug)]
pub struct Request {
    /// The ACD's call id.
    pub call_id: String,
    /// What to do.
    pub op: Op,
    /// The answer.
    pub reply: Sender<Result<Value, CallError>>,
}

/// A message to a worker.
#[derive(Debug)]
pub enum WorkerMsg {
    /// A call request.
    Call(Request),
    /// Finalise every call, release every socket, exit; then answer.
    Shutdown(Sender<()>),
}

/// Something a worker tells the control plane unasked.
#[derive(Debug, Clone)]
pub struct Event {
    /// `recording_finished`, `recording_failed`, `leg_silent`.
    pub event: &'static str,
    /// The call.
    pub call_id: String,
    /// The recording.
    pub recording_id: String,
    /// Details.
    pub body: Value,
}

/// A worker's counters, written by the worker once per tick, read when scraped.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Datagrams received.
    pub datagrams: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
    /// Datagrams for sockets already released.
    pub stale: AtomicU64,
    /// Datagrams refused for their source.
    pub wrong_source: AtomicU64,
    /// Drops the kernel reported (SO_RXQ_OVFL).
    pub kernel_drops: AtomicU64,
    /// Datagrams longer than a receive buffer.
    pub truncated: AtomicU64,
    /// Active calls.
    pub calls: AtomicU64,
    /// Active legs (streams).
    pub streams: AtomicU64,
    /// Recordings this worker started.
    pub recordings_started: AtomicU64,
    /// Timeline counters summed over every leg this worker has recorded (see [`LegTotals`]).
    pub legs: LegTotalsAtomic,
    /// Audio bytes written to recording files (16-bit PCM, every output).
    pub bytes_written: AtomicU64,
    /// Per-leg interarrival jitter at the end of each leg, as a histogram (seconds).
    pub jitter: JitterHistogram,
    /// Clock reading at the worker's last loop tick (liveness, for the watchdog).
    pub heartbeat: AtomicU64,
}

/// Timeline counters summed over legs: what each leg reports in `status`/`stop`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegTotals {
    /// RTP packets (events and duplicates included).
    pub packets: u64,
    /// Expected − received (RFC 3550).
    pub lost: u64,
    /// Too late to place.
    pub late: u64,
    /// Too far ahead of arrival to place.
    pub ahead: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Out of order but placed.
    pub reordered: u64,
    /// Neither RTP nor RTCP.
    pub malformed: u64,
    /// RTCP packets.
    pub rtcp: u64,
    /// DTMF events recorded.
    pub dtmf_events: u64,
    /// Lost packets filled by the codec (Opus FEC or concealment).
    pub concealed: u64,
    /// Payloads the codec refused.
    pub decode_errors: u64,
}

impl LegTotals {
    /// Adds one leg's counters.
    pub fn add_leg(&mut self, leg: &crate::core::leg::Leg) {
        let s = leg.stats();
        self.packets += s.packets;
        self.lost += leg.lost();
        self.late += s.late;
        self.ahead += s.ahead;
        self.duplicates += s.duplicates;
        self.reordered += s.reordered;
        self.malformed += s.malformed;
        self.rtcp += s.rtcp_packets;
        self.dtmf_events += leg.events().len() as u64;
        self.concealed += s.concealed;
        self.decode_errors += s.decode_errors;
    }

    /// The sum of two.
    pub fn plus(self, o: LegTotals) -> LegTotals {
        LegTotals {
            packets: self.packets + o.packets,
            lost: self.lost + o.lost,
            late: self.late + o.late,
            ahead: self.ahead + o.ahead,
            duplicates: self.duplicates + o.duplicates,
            reordered: self.reordered + o.reordered,
            malformed: self.malformed + o.malformed,
            rtcp: self.rtcp + o.rtcp,
            dtmf_events: self.dtmf_events + o.dtmf_events,
            concealed: self.concealed + o.concealed,
            decode_errors: self.decode_errors + o.decode_errors,
        }
    }
}

/// [`LegTotals`] published by a worker for scrapes (stored whole each round, never per packet).
#[derive(Debug, Default)]
pub struct LegTotalsAtomic {
    fields: [AtomicU64; 11],
}

impl LegTotalsAtomic {
    /// Publishes `t`.
    pub fn store(&self, t: LegTotals) {
        let v = [
            t.packets,
            t.lost,
            t.late,
            t.ahead,
            t.duplicates,
            t.reordered,
            t.malformed,
            t.rtcp,
            t.dtmf_events,
            t.concealed,
            t.decode_errors,
        ];
        for (a, v) in self.fields.iter().zip(v) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// The last published totals.
    pub fn load(&self) -> LegTotals {
        let f = |i: usize| self.fields[i].load(Ordering::Relaxed);
        LegTotals {
            packets: f(0),
            lost: f(1),
            late: f(2),
            ahead: f(3),
            duplicates: f(4),
            reordered: f(5),
            malformed: f(6),
            rtcp: f(7),
            dtmf_events: f(8),
            concealed: f(9),
            decode_errors: f(10),
        }
    }
}

/// Upper bounds of the jitter histogram's buckets, seconds.
pub const JITTER_BUCKETS: [f64; 9] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];

/// A histogram of legs' final jitter, one observation per leg, updated when a call ends.
#[derive(Debug, Default)]
pub struct JitterHistogram {
    /// Per bucket of [`JITTER_BUCKETS`] (not cumulative), then the overflow bucket.
    pub buckets: [AtomicU64; 10],
    /// Sum of observations, microseconds.
    pub sum_us: AtomicU64,
}

impl JitterHistogram {
    /// Records one leg's jitter.
    pub fn observe(&self, seconds: f64) {
        let i = JITTER_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(JITTER_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// How to build the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Worker threads.
    pub workers: usize,
    /// Pin worker i to the i-th allowed CPU.
    pub pin_threads: bool,
    /// None: io_uring if possible; Some(kind): that one only.
    pub backend: Option<BackendKind>,
    /// Back-end sizes.
    pub backend_config: BackendConfig,
    /// Call limits.
    pub limits: WorkerLimits,
    /// Spool directory and sealing keys.
    pub spool: call::Spool,
}

/// A handle on one worker.
pub struct WorkerHandle {
    tx: Sender<WorkerMsg>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
}

/// The running engine.
pub struct Engine {
    workers: Vec<WorkerHandle>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    kind: BackendKind,
    clock: Clock,
}

/// The engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// io_uring was required but is unavailable.
    #[error(
        "io_uring is unavailable ({0}); set [engine] backend = \"auto\" or \"epoll\", or allow io_uring (kernel.io_uring_disabled = 0, seccomp)"
    )]
    IoUringUnavailable(io::Error),
    /// A back end could not be built.
    #[error("cannot start the receive engine: {0}")]
    Backend(io::Error),
    /// A thread could not be spawned.
    #[error("cannot start worker thread: {0}")]
    Spawn(io::Error),
}

impl Engine {
    /// Starts `settings.workers` workers, each building its own back end on its own thread
    /// (io_uring's SINGLE_ISSUER ties a ring to the thread that made it).
    pub fn start(settings: &EngineSettings, events: Sender<Event>) -> Result<Engine, EngineError> {
        let clock = Clock::new();
        let cpus = allowed_cpus();
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        let mut kind = None;
        for index in 0..settings.workers.max(1) {
            let (tx, rx) = mpsc::channel();
            let stats = Arc::new(WorkerStats::default());
            let (ready_tx, ready_rx) = mpsc::channel::<Result<(BackendKind, Option<String>), EngineError>>();
            let s = settings.clone();
            let events = events.clone();
            let worker_stats = stats.clone();
            let cpu = if settings.pin_threads && !cpus.is_empty() { Some(cpus[index % cpus.len()]) } else { None };
            let handle = std::thread::Builder::new()
                .name(format!("rtp-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu
                        && let Err(e) = pin_to_cpu(cpu)
                    {
                        crate::log::warn(&format!("worker {index}: cannot pin to CPU {cpu}: {e}"));
                    }
                    let opened = match s.backend {
                        Some(BackendKind::Epoll) => backend::open(s.backend_config, true).map_err(EngineError::Backend),
                        Some(BackendKind::IoUring) => backend::uring::UringBackend::new(s.backend_config)
                            .map(|b| (Box::new(b) as Box<dyn backend::Backend>, None))
                            .map_err(EngineError::IoUringUnavailable),
                        None => backend::open(s.backend_config, false).map_err(EngineError::Backend),
                    };
                    let backend = match opened {
                        Ok((b, fell_back)) => {
                            let _ = ready_tx.send(Ok((b.kind(), fell_back.map(|e| e.to_string()))));
                            b
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    Worker::new(index, backend, clock, s.limits, s.spool.clone(), rx, events, worker_stats).run();
                })
                .map_err(EngineError::Spawn)?;
            match ready_rx.recv() {
                Ok(Ok((k, fell_back))) => {
                    if index == 0 {
                        match fell_back {
                            Some(why) => crate::log::warn(&format!(
                                "io_uring unavailable ({why}); receiving with epoll + recvmmsg"
                            )),
                            None => crate::log::info(&format!("receiving with {}", k.name())),
                        }
                    }
                    kind = Some(k);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(EngineError::Backend(io::Error::other("worker thread died while starting"))),
            }
            workers.push(WorkerHandle { tx, stats });
            threads.push(handle);
        }
        Ok(Engine { workers, threads: std::sync::Mutex::new(threads), kind: kind.unwrap_or(BackendKind::Epoll), clock })
    }

    /// The back end in use.
    pub fn backend_kind(&self) -> BackendKind {
        self.kind
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// Sends a request to worker `index` and waits (bounded) for its answer.
    pub fn call(&self, index: usize, call_id: &str, op: Op) -> Result<Value, CallError> {
        let (reply, answer) = mpsc::channel();
        let req = Request { call_id: call_id.to_string(), op, reply };
        self.workers[index]
            .tx
            .send(WorkerMsg::Call(req))
            .map_err(|_| CallError::new("internal", format!("worker {index} has stopped")))?;
        answer
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| CallError::new("internal", format!("worker {index} did not answer within 10 s")))?
    }

    /// Finalises every call and stops every worker (once; later calls return at once).
    pub fn shutdown(&self) {
        let mut waits = Vec::new();
        for w in &self.workers {
            let (tx, rx) = mpsc::channel();
            if w.tx.send(WorkerMsg::Shutdown(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    /// Total of one counter over the workers.
    pub fn sum(&self, field: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|w| field(&w.stats).load(Ordering::Relaxed)).sum()
    }
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, so zeroed is a valid value; sched_getaffinity writes at
    // most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the pointer and size describe `set`.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET only reads `set`, and every index is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: as in allowed_cpus: zeroed cpu_set_t is valid, CPU_SET writes inside it (cpu comes
    // from allowed_cpus, so below CPU_SETSIZE), and sched_setaffinity reads exactly its size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
