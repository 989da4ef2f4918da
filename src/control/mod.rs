//! The ACD's control socket: a Unix stream socket carrying newline-delimited JSON.
//!
//! One thread per client connection (clients are few: ACD nodes and operators); requests for a
//! call go to the worker that owns it and wait for its answer. The registry of active calls and
//! the port allocator sit behind one mutex taken per request, never per packet.

pub mod protocol;
pub mod server;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::Config;
use crate::core::mixer::Layout;
use crate::core::recording::{LegSpec, RecordingConfig};
use crate::engine::ports::{PortAllocator, PortError};
use crate::engine::{CallError, Engine, Event, LegSetup, Op, StartCall};
use crate::output::encode::Format;
use protocol::{Command, LegRequest, PROTOCOL_VERSION};

/// How many recent events are kept for `subscribe` with `since`.
const EVENT_BACKLOG: usize = 10_000;
/// Events queued for one subscriber that is not reading. Past this it is disconnected (never
/// silently skipped): it reconnects and resubscribes with `since` to get what it missed.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// An active call as the control plane knows it.
#[derive(Debug, Clone)]
struct Entry {
    recording_id: Option<String>,
    worker: usize,
    /// RTP ports (each with its RTCP port + 1 unless rtcp-mux) to return when the call ends.
    ports: Vec<u16>,
    labels: Vec<String>,
    started: Instant,
}

struct Registry {
    calls: HashMap<String, Entry>,
    ports: PortAllocator,
    legs_per_worker: Vec<usize>,
}

/// A connection that asked for events. Its own writer thread drains `queue` into the socket, so
/// publishing never waits for a slow reader.
struct Subscriber {
    id: u64,
    queue: std::sync::mpsc::SyncSender<Arc<str>>,
    /// To close the connection when it falls too far behind.
    conn: UnixStream,
}

/// The writer half of a subscription: started by the connection once the `subscribe` reply and
/// any replayed events are written, so live events always follow them, in `seq` order.
pub struct EventWriter {
    id: u64,
    rx: std::sync::mpsc::Receiver<Arc<str>>,
    out: Arc<Mutex<UnixStream>>,
    closer: UnixStream,
}

impl EventWriter {
    /// Writes queued events until the subscription ends (the subscriber is removed) or a write
    /// fails (then the connection is closed).
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new().name(format!("events-{}", self.id)).spawn(move || {
            for line in self.rx {
                let mut w = self.out.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = w.write_all(line.as_bytes()) {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        crate::log::warn(&format!(
                            "control connection {}: cannot write an event ({e}): the subscriber is not reading; \
                             disconnecting it (it may resubscribe with \"since\")",
                            self.id
                        ));
                    }
                    let _ = self.closer.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        })?;
        Ok(())
    }
}

impl Subscriber {
    /// A subscription for connection `id`, and the writer that drains it.
    fn new(id: u64, out: &Arc<Mutex<UnixStream>>) -> std::io::Result<(Subscriber, EventWriter)> {
        let conn = out.lock().unwrap_or_else(|p| p.into_inner()).try_clone()?;
        let closer = conn.try_clone()?;
        let (queue, rx) = std::sync::mpsc::sync_channel::<Arc<str>>(SUBSCRIBER_QUEUE);
        Ok((Subscriber { id, queue, conn }, EventWriter { id, rx, out: out.clone(), closer }))
    }
}

struct EventLog {
    next_seq: u64,
    backlog: VecDeque<Value>,
    subscribers: Vec<Subscriber>,
}

/// Everything a client connection needs.
pub struct Control {
    cfg: Config,
    engine: Engine,
    registry: Mutex<Registry>,
    events: Mutex<EventLog>,
    draining: AtomicBool,
    clients: AtomicUsize,
    started: Instant,
    finished: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    recovered: std::sync::atomic::AtomicU64,
    /// Control requests answered, by command and result (`ok` or the error code).
    requests: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
    /// Where finished recordings are indexed (`None`: no catalog, as in unit tests).
    catalog: Mutex<Option<crate::catalog::Writer>>,
    /// The shipper's figures and its wake-up (`None`: recordings stay in the spool).
    shipping: Mutex<Option<Shipping>>,
    /// When the disk guard last logged a refusal (ms since the epoch).
    spool_low_logged: std::sync::atomic::AtomicI64,
    /// Where requests that change or search recordings are recorded (`None`: not audited, as in
    /// unit tests).
    audit: Mutex<Option<Arc<crate::audit::AuditLog>>>,
    api_stats: Mutex<Option<Arc<crate::api::server::ApiStats>>>,
}

/// What the control plane knows of the shipper.
#[derive(Clone)]
pub struct Shipping {
    /// Its figures, for `/metrics`.
    pub stats: std::sync::Arc<crate::storage::ship::ShipStats>,
    /// Told when a recording ends, so it ships without waiting for its next pass.
    pub wake: std::sync::mpsc::Sender<()>,
}

impl Control {
    /// The control plane over a running engine.
    pub fn new(cfg: Config, engine: Engine) -> Arc<Control> {
        let ports = PortAllocator::new(cfg.rtp.bind, cfg.rtp.port_min, cfg.rtp.port_max, cfg.rtp.receive_buffer_bytes);
        let workers = engine.workers().len();
        Arc::new(Control {
            cfg,
            engine,
            registry: Mutex::new(Registry { calls: HashMap::new(), ports, legs_per_worker: vec![0; workers] }),
            events: Mutex::new(EventLog { next_seq: 1, backlog: VecDeque::new(), subscribers: Vec::new() }),
            draining: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            started: Instant::now(),
            finished: Default::default(),
            failed: Default::default(),
            recovered: Default::default(),
            requests: Mutex::new(std::collections::BTreeMap::new()),
            catalog: Mutex::new(None),
            shipping: Mutex::new(None),
            spool_low_logged: std::sync::atomic::AtomicI64::new(0),
            audit: Mutex::new(None),
            api_stats: Mutex::new(None),
        })
    }

    /// Wakes the shipper whenever a recording ends, and reports its figures in `/metrics`.
    pub fn set_shipping(&self, shipping: Shipping) {
        *self.shipping.lock().unwrap_or_else(|p| p.into_inner()) = Some(shipping);
    }

    /// The shipper's figures, when recordings are shipped.
    pub fn ship_stats(&self) -> Option<std::sync::Arc<crate::storage::ship::ShipStats>> {
        self.shipping.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| s.stats.clone())
    }

    /// Indexes every recording that ends (finished, failed or recovered) from now on.
    pub fn set_catalog(&self, writer: crate::catalog::Writer) {
        *self.catalog.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
    }

    /// Records every start, stop, pause, resume and other change (refused ones too) in the
    /// audit trail from now on.
    pub fn set_audit(&self, log: Arc<crate::audit::AuditLog>) {
        *self.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(log);
    }

    /// The search and playback API's request counts, for `/metrics`.
    pub fn set_api_stats(&self, stats: Arc<crate::api::server::ApiStats>) {
        *self.api_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }

    /// The API's request counts, when the API runs.
    pub fn api_stats(&self) -> Option<Arc<crate::api::server::ApiStats>> {
        self.api_stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The audit trail, when requests are audited.
    pub fn audit_log(&self) -> Option<Arc<crate::audit::AuditLog>> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the audit trail records of a request, before it runs: (action, target, detail).
    /// Reads of the recorder's own state (status, list, stats, health, subscribe) are not
    /// recorded.
    fn audited(&self, cmd: &Command) -> Option<(&'static str, String, Value)> {
        let call = |call_id: &str| {
            let rid = self.lock_registry().calls.get(call_id).and_then(|e| e.recording_id.clone());
            rid.map_or_else(|| json!({}), |r| json!({"recording_id": r}))
        };
        Some(match cmd {
            Command::Start(s) => {
                let legs: Vec<&str> = s.legs.iter().map(|l| l.label.as_str()).collect();
                ("start", s.call_id.clone(), json!({"legs": legs}))
            }
            Command::Stop { call_id } => ("stop", call_id.clone(), call(call_id)),
            Command::Pause { call_id, mode } => {
                let mut d = call(call_id);
                d["mode"] = json!(mode.name());
                ("pause", call_id.clone(), d)
            }
            Command::Resume { call_id } => ("resume", call_id.clone(), call(call_id)),
            Command::Update { call_id, metadata } => {
                let mut d = call(call_id);
                d["keys"] = json!(metadata.keys().collect::<Vec<_>>());
                ("update", call_id.clone(), d)
            }
            Command::AddLeg { call_id, leg } => {
                let mut d = call(call_id);
                d["leg"] = json!(leg.label);
                ("leg.add", call_id.clone(), d)
            }
            Command::RemoveLeg { call_id, label } => {
                let mut d = call(call_id);
                d["leg"] = json!(label);
                ("leg.remove", call_id.clone(), d)
            }
            Command::Drain => ("drain", String::new(), json!({})),
            Command::Find { query } => ("search", String::new(), json!({"query": query})),
            Command::Status { .. } | Command::List | Command::Stats | Command::Health | Command::Subscribe { .. } => {
                return None;
            }
        })
    }

    /// Appends a request and its outcome to the audit trail; a failure there is logged and
    /// counted but never fails the request (recording goes on).
    fn audit_request(
        &self,
        conn: &ConnContext,
        (action, target, mut detail): (&'static str, String, Value),
        result: &Result<Value, CallError>,
    ) {
        let Some(log) = self.audit_log() else { return };
        let outcome = match result {
            Ok(v) => {
                if let Some(rid) = v["recording_id"].as_str() {
                    detail["recording_id"] = json!(rid);
                }
                "ok".to_string()
            }
            Err(e) => {
                detail["error"] = json!(e.message);
                if e.code == "unknown_call" { "not_found".to_string() } else { format!("error: {}", e.code) }
            }
        };
        log.record(crate::audit::Entry {
            actor: control_actor(conn.peer_uid),
            action: action.into(),
            target,
            source: "control socket".into(),
            result: outcome,
            detail,
        });
    }

    fn find(&self, query: &Value) -> Result<Value, CallError> {
        let q = crate::catalog::Query::from_json(query).map_err(|e| CallError::new("bad_request", e.to_string()))?;
        crate::catalog::search(&crate::catalog::path_in(&self.cfg.data_dir), &q)
            .map(|p| p.to_json())
            .map_err(|e| CallError::new("catalog_failed", e.to_string()))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Calls active now.
    pub fn active_calls(&self) -> usize {
        self.registry.lock().map(|r| r.calls.len()).unwrap_or(0)
    }

    /// Counts of finished and failed recordings since start.
    pub fn recordings_ended(&self) -> (u64, u64) {
        (self.finished.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }

    /// Recordings left unfinished by a crash and recovered at start.
    pub fn recordings_recovered(&self) -> u64 {
        self.recovered.load(Ordering::Relaxed)
    }

    /// Control requests answered so far: `((command, result), count)`.
    pub fn requests(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether new calls are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Refuses new calls from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Handles one request line, returning the reply object (`id` and `ok` included).
    pub fn handle_line(&self, line: &[u8], conn: &ConnContext) -> Value {
        let (id, parsed) = protocol::parse_line(line);
        let name = parsed.as_ref().map_or("invalid", protocol::Command::name);
        let audited = parsed.as_ref().ok().and_then(|cmd| self.audited(cmd));
        let result = parsed.and_then(|cmd| self.execute(cmd, conn));
        if let Some(what) = audited {
            self.audit_request(conn, what, &result);
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code,
        };
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((name, outcome)).or_default() += 1;
        reply(id, result)
    }

    fn execute(&self, cmd: Command, conn: &ConnContext) -> Result<Value, CallError> {
        match cmd {
            Command::Start(s) => self.start(s),
            Command::Stop { call_id } => {
                let result = self.to_worker(&call_id, Op::Stop);
                if let Ok(summary) = &result {
                    self.forget(&call_id, summary["recording_id"].as_str());
                }
                result
            }
            Command::Pause { call_id, mode } => self.to_worker(&call_id, Op::Pause(mode)),
            Command::Resume { call_id } => self.to_worker(&call_id, Op::Resume),
            Command::Update { call_id, metadata } => self.to_worker(&call_id, Op::Update(metadata)),
            Command::Status { call_id } => self.to_worker(&call_id, Op::Status),
            Command::AddLeg { call_id, leg } => self.add_leg(&call_id, leg),
            Command::RemoveLeg { call_id, label } => {
                let result = self.to_worker(&call_id, Op::RemoveLeg(label.clone()))?;
                let mut reg = self.lock_registry();
                if let Some(port) = result["released_port"].as_u64() {
                    let port = port as u16;
                    reg.ports.release(port);
                    if let Some(e) = reg.calls.get_mut(&call_id) {
                        e.ports.retain(|p| *p != port);
                        e.labels.retain(|l| *l != label);
                        let w = e.worker;
                        reg.legs_per_worker[w] = reg.legs_per_worker[w].saturating_sub(1);
                    }
                }
                Ok(result)
            }
            Command::List => {
                let reg = self.lock_registry();
                let mut calls: Vec<Value> = reg
                    .calls
                    .iter()
                    .filter_map(|(id, e)| {
                        Some(json!({
                            "call_id": id,
                            "recording_id": e.recording_id.as_ref()?,
                            "worker": e.worker,
                            "legs": e.labels,
                            "elapsed_ms": e.started.elapsed().as_millis() as u64,
                        }))
                    })
                    .collect();
                calls.sort_by(|a, b| a["call_id"].as_str().cmp(&b["call_id"].as_str()));
                Ok(json!({"calls": calls}))
            }
            Command::Stats => Ok(self.stats()),
            Command::Drain => {
                self.drain();
                crate::log::info("draining: new calls are refused, active calls run to their end");
                Ok(json!({"draining": true, "calls_active": self.active_calls()}))
            }
            Command::Health => Ok(self.health()),
            Command::Find { query } => self.find(&query),
            Command::Subscribe { since } => self.subscribe(since, conn),
        }
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock is a bug elsewhere; the registry itself stays consistent
        // (every change is a single insert/remove), so carry on rather than refuse every request.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker_of(&self, call_id: &str) -> Result<usize, CallError> {
        let reg = self.lock_registry();
        match reg.calls.get(call_id) {
            Some(e) if e.recording_id.is_some() => Ok(e.worker),
            Some(_) => Err(CallError::new("invalid_state", format!("call {call_id:?} is still starting"))),
            None => Err(CallError::unknown_call(call_id)),
        }
    }

    fn to_worker(&self, call_id: &str, op: Op) -> Result<Value, CallError> {
        let worker = self.worker_of(call_id)?;
        self.engine.call(worker, call_id, op)
    }

    /// Drops a call from the registry (stop reply or finished event, whichever comes first) and
    /// returns its ports.
    fn forget(&self, call_id: &str, recording_id: Option<&str>) {
        let mut reg = self.lock_registry();
        let matches = reg.calls.get(call_id).is_some_and(|e| e.recording_id.as_deref() == recording_id);
        if matches && let Some(e) = reg.calls.remove(call_id) {
            for p in &e.ports {
                reg.ports.release(*p);
            }
            reg.legs_per_worker[e.worker] = reg.legs_per_worker[e.worker].saturating_sub(e.labels.len());
        }
    }

    fn allocate(&self, reg: &mut Registry, leg: &LegRequest) -> Result<crate::engine::ports::LegPorts, CallError> {
        let mux = leg.rtcp_mux.unwrap_or(self.cfg.rtp.rtcp_mux);
        let active = reg.calls.len();
        reg.ports.allocate(mux, active).map_err(|e| match e {
            PortError::Exhausted { .. } => CallError::new("ports_exhausted", e.to_string()),
            PortError::Descriptors { .. } => CallError::new("descriptors_exhausted", e.to_string()),
            PortError::Bind { .. } => CallError::new("bind_failed", e.to_string()),
        })
    }

    fn leg_reply(&self, label: &str, ports: &crate::engine::ports::LegPorts) -> Value {
        let mut v = json!({"label": label, "host": self.cfg.advertised_host().to_string(), "port": ports.port});
        match ports.rtcp {
            Some(_) => v["rtcp_port"] = json!(ports.port + 1),
            None => v["rtcp_mux"] = json!(true),
        }
        v
    }

    fn start(&self, s: protocol::StartRequest) -> Result<Value, CallError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(CallError::new("draining", "this recorder is draining: start the call on another recorder"));
        }
        if let (true, free) = crate::metrics::spool_low(self) {
            // Logged once a minute at most while the guard holds: the ACD sees each refusal.
            let now = crate::seal::now_ms();
            let last = self.spool_low_logged.load(Ordering::Relaxed);
            if now - last >= 60_000
                && self.spool_low_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                crate::log::warn(&format!(
                    "disk guard: new calls refused (spool_full): spool {} has {} MiB free, below [limits] min_spool_free_mb = {}; active recordings go on{}",
                    self.cfg.spool_dir().display(),
                    free.map_or("unknown".to_string(), |f| (f >> 20).to_string()),
                    self.cfg.limits.min_spool_free_mb,
                    self.ship_stats().map_or(String::new(), |st| format!(
                        ", {} recording(s) wait to ship",
                        st.backlog_recordings.load(Ordering::Relaxed)
                    ))
                ));
            }
            return Err(CallError::new(
                "spool_full",
                format!(
                    "spool {} has {} MiB free, below [limits] min_spool_free_mb = {}: free space there or start the call \
                     on another recorder",
                    self.cfg.spool_dir().display(),
                    free.map_or("unknown".to_string(), |f| (f >> 20).to_string()),
                    self.cfg.limits.min_spool_free_mb
                ),
            ));
        }
        if s.legs.len() > self.cfg.limits.max_legs_per_call {
            return Err(CallError::new(
                "bad_request",
                format!(
                    "{} legs requested; at most {} ([limits] max_legs_per_call)",
                    s.legs.len(),
                    self.cfg.limits.max_legs_per_call
                ),
            ));
        }
        let layout = s.layout.unwrap_or(self.cfg.default_layout());
        if layout == Layout::Stereo {
            // The same default as the session's: one channel per leg, at least two.
            let channels = s.channels.unwrap_or(s.legs.len().max(2) as u16);
            if let Some(l) = s.legs.iter().find(|l| l.channel.is_some_and(|c| c >= channels)) {
                return Err(CallError::new(
                    "bad_request",
                    format!(
                        "leg {:?} asks for channel {} but the recording has {channels} channel(s), 0-{}; \
                         raise \"channels\" or choose another channel",
                        l.label,
                        l.channel.unwrap_or(0),
                        channels - 1
                    ),
                ));
            }
        }
        let format = s.format.or(Format::parse(&self.cfg.recording.format)).unwrap_or_default();
        // A G.711 format is 8 kHz unless a rate is asked for (then its check below refuses).
        let asked = s.sample_rate.as_ref().unwrap_or(&self.cfg.recording.sample_rate);
        let rate = match (s.sample_rate.as_ref().and_then(|r| r.fixed()), format.fixed_rate()) {
            (None, Some(fixed)) => fixed,
            _ => asked
                .fixed()
                .unwrap_or_else(|| crate::core::decode::default_rate(s.legs.iter().flat_map(|l| l.declared.iter()))),
        };
        let file_channels = match layout {
            Layout::Stereo => s.channels.unwrap_or(s.legs.len().max(2) as u16),
            Layout::Mono | Layout::Separate => 1,
        };
        format.check(rate, file_channels).map_err(|e| CallError::new("unsupported_format", e.to_string()))?;
        let (worker, setups, replies) = {
            let mut reg = self.lock_registry();
            if reg.calls.contains_key(&s.call_id) {
                return Err(CallError::new(
                    "call_exists",
                    format!("call {:?} is already being recorded; stop it first or use another call_id", s.call_id),
                ));
            }
            if reg.calls.len() >= self.cfg.limits.max_calls {
                return Err(CallError::new(
                    "capacity",
                    format!(
                        "{} calls active, the configured maximum ([limits] max_calls); start the call on another recorder",
                        reg.calls.len()
                    ),
                ));
            }
            // Least-loaded worker by legs.
            let worker = (0..reg.legs_per_worker.len()).min_by_key(|&w| reg.legs_per_worker[w]).unwrap_or(0);
            let mut setups = Vec::new();
            let mut replies = Vec::new();
            for leg in &s.legs {
                match self.allocate(&mut reg, leg) {
                    Ok(ports) => {
                        replies.push(self.leg_reply(&leg.label, &ports));
                        setups.push(LegSetup {
                            spec: LegSpec { label: leg.label.clone(), payload_map: leg.payload_map.clone() },
                            ports,
                            source: leg.source,
                            channel: leg.channel,
                        });
                    }
                    Err(e) => {
                        for st in &setups {
                            reg.ports.release(st.ports.port);
                        }
                        return Err(e);
                    }
                }
            }
            let ports = setups.iter().map(|st| st.ports.port).collect();
            reg.calls.insert(
                s.call_id.clone(),
                Entry {
                    recording_id: None,
                    worker,
                    ports,
                    labels: s.legs.iter().map(|l| l.label.clone()).collect(),
                    started: Instant::now(),
                },
            );
            reg.legs_per_worker[worker] += s.legs.len();
            (worker, setups, replies)
        };
        let mut recording = RecordingConfig::default();
        recording.timeline.reorder_window_ms = self.cfg.recording.reorder_window_ms;
        recording.timeline.comfort_noise = self.cfg.recording.comfort_noise;
        recording.timeline.sample_rate = rate;
        recording.keep_dtmf_digits = s.dtmf_digits.unwrap_or(self.cfg.recording.dtmf_digits);
        let recording_id = ulid::Ulid::new().to_string();
        let start = StartCall {
            recording_id: recording_id.clone(),
            metadata: s.metadata,
            layout,
            channels: s.channels,
            recording,
            format,
            legs: setups,
        };
        match self.engine.call(worker, &s.call_id, Op::Start(Box::new(start))) {
            Ok(_) => {
                let mut reg = self.lock_registry();
                if let Some(e) = reg.calls.get_mut(&s.call_id) {
                    e.recording_id = Some(recording_id.clone());
                }
                crate::log::info(&format!("call {:?}: recording {recording_id} started on worker {worker}", s.call_id));
                Ok(json!({"call_id": s.call_id, "recording_id": recording_id, "legs": replies}))
            }
            Err(e) => {
                // The worker dropped the sockets; return the ports and the name.
                let mut reg = self.lock_registry();
                if let Some(entry) = reg.calls.remove(&s.call_id) {
                    for p in &entry.ports {
                        reg.ports.release(*p);
                    }
                    reg.legs_per_worker[worker] = reg.legs_per_worker[worker].saturating_sub(entry.labels.len());
                }
                Err(e)
            }
        }
    }

    fn add_leg(&self, call_id: &str, leg: LegRequest) -> Result<Value, CallError> {
        let (worker, setup, reply) = {
            let mut reg = self.lock_registry();
            let (worker, count) = match reg.calls.get(call_id) {
                Some(e) if e.recording_id.is_some() => (e.worker, e.labels.len()),
                Some(_) => return Err(CallError::new("invalid_state", format!("call {call_id:?} is still starting"))),
                None => return Err(CallError::unknown_call(call_id)),
            };
            if count >= self.cfg.limits.max_legs_per_call {
                return Err(CallError::new(
                    "bad_request",
                    format!("call {call_id:?} has {count} legs, the maximum ([limits] max_legs_per_call)"),
                ));
            }
            let ports = self.allocate(&mut reg, &leg)?;
            let reply = self.leg_reply(&leg.label, &ports);
            let port = ports.port;
            if let Some(e) = reg.calls.get_mut(call_id) {
                e.ports.push(port);
                e.labels.push(leg.label.clone());
            }
            reg.legs_per_worker[worker] += 1;
            let setup = LegSetup {
                spec: LegSpec { label: leg.label.clone(), payload_map: leg.payload_map },
                ports,
                source: leg.source,
                channel: leg.channel,
            };
            (worker, setup, reply)
        };
        let port = setup.ports.port;
        match self.engine.call(worker, call_id, Op::AddLeg(Box::new(setup))) {
            Ok(v) => {
                let mut reply = reply;
                reply["channel"] = v["channel"].clone();
                Ok(json!({"call_id": call_id, "recording_id": v["recording_id"], "leg": reply}))
            }
            Err(e) => {
                let mut reg = self.lock_registry();
                reg.ports.release(port);
                if let Some(entry) = reg.calls.get_mut(call_id) {
                    entry.ports.retain(|p| *p != port);
                    entry.labels.retain(|l| *l != leg.label);
                }
                reg.legs_per_worker[worker] = reg.legs_per_worker[worker].saturating_sub(1);
                Err(e)
            }
        }
    }

    fn stats(&self) -> Value {
        let reg = self.lock_registry();
        let workers: Vec<Value> = self
            .engine
            .workers()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let s = &w.stats;
                json!({
                    "worker": i,
                    "calls": s.calls.load(Ordering::Relaxed),
                    "legs": reg.legs_per_worker.get(i).copied().unwrap_or(0),
                    "datagrams": s.datagrams.load(Ordering::Relaxed),
                    "bytes": s.bytes.load(Ordering::Relaxed),
                    "kernel_drops": s.kernel_drops.load(Ordering::Relaxed),
                    "wrong_source": s.wrong_source.load(Ordering::Relaxed),
                    "stale": s.stale.load(Ordering::Relaxed),
                    "truncated": s.truncated.load(Ordering::Relaxed),
                })
            })
            .collect();
        let active = reg.calls.len();
        let port_pairs_free = reg.ports.capacity() - reg.ports.allocated();
        json!({
            "backend": self.engine.backend_kind().name(),
            "calls_active": active,
            "max_calls": self.cfg.limits.max_calls,
            "capacity_remaining": self.cfg.limits.max_calls.saturating_sub(active).min(port_pairs_free / 2),
            "ports_free": port_pairs_free,
            "draining": self.draining.load(Ordering::SeqCst),
            "workers": workers,
        })
    }

    fn health(&self) -> Value {
        let now = self.engine.clock().now_ns();
        let stalled: Vec<usize> = self
            .engine
            .workers()
            .iter()
            .enumerate()
            .filter(|(_, w)| now.saturating_sub(w.stats.heartbeat.load(Ordering::Relaxed)) > 5_000_000_000)
            .map(|(i, _)| i)
            .collect();
        let (spool_low, spool_free) = crate::metrics::spool_low(self);
        // The same judgement as /readyz: an ACD that asks `health` hears what Prometheus hears.
        let status = if !stalled.is_empty() {
            "degraded"
        } else if self.draining.load(Ordering::SeqCst) {
            "draining"
        } else if spool_low {
            "spool_low"
        } else {
            "ok"
        };
        json!({
            "status": status,
            "ready": status == "ok",
            "spool_free_bytes": spool_free,
            "protocol_version": PROTOCOL_VERSION,
            "version": env!("CARGO_PKG_VERSION"),
            "backend": self.engine.backend_kind().name(),
            "workers": self.engine.workers().len(),
            "stalled_workers": stalled,
            "calls_active": self.active_calls(),
            "uptime_s": self.started.elapsed().as_secs(),
        })
    }

    /// Whether every worker ticked recently (for the systemd watchdog).
    pub fn workers_alive(&self) -> bool {
        self.health()["stalled_workers"].as_array().is_some_and(|a| a.is_empty())
    }

    fn subscribe(&self, since: Option<u64>, conn: &ConnContext) -> Result<Value, CallError> {
        let mut log = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if !log.subscribers.iter().any(|s| s.id == conn.id) {
            let (sub, writer) = Subscriber::new(conn.id, &conn.out)
                .map_err(|e| CallError { code: "internal", message: format!("cannot start the event writer: {e}") })?;
            log.subscribers.push(sub);
            *conn.event_writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
        }
        let last = log.next_seq - 1;
        let replay: Vec<Value> = match since {
            Some(n) => log.backlog.iter().filter(|e| e["seq"].as_u64().is_some_and(|s| s > n)).cloned().collect(),
            None => Vec::new(),
        };
        let oldest = log.backlog.front().and_then(|e| e["seq"].as_u64());
        let missed = since.is_some_and(|n| oldest.is_some_and(|o| o > n + 1));
        drop(log);
        // The reply goes first; replayed events follow it on the same connection.
        let reply = json!({"subscribed": true, "last_seq": last, "replayed": replay.len(), "events_lost": missed});
        conn.pending_events.lock().unwrap_or_else(|p| p.into_inner()).extend(replay);
        Ok(reply)
    }

    /// Records an event and queues it for every subscriber. A subscriber that has
    /// [`SUBSCRIBER_QUEUE`] events queued and unread is disconnected, so it learns that it missed
    /// events (it resubscribes with `since`); one that went away is dropped.
    pub fn publish(&self, event: Event) {
        if event.event == "recording_recovered" {
            self.recovered.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(event.event, "recording_finished" | "recording_failed" | "recording_recovered")
            && let Some(w) = self.catalog.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        {
            w.record(&event.body);
        }
        if matches!(event.event, "recording_finished" | "recording_recovered")
            && let Some(s) = self.shipping.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        {
            let _ = s.wake.send(());
        }
        if matches!(event.event, "recording_finished" | "recording_failed") {
            self.forget(&event.call_id, Some(&event.recording_id));
            let counter = if event.event == "recording_failed" { &self.failed } else { &self.finished };
            counter.fetch_add(1, Ordering::Relaxed);
            let state = event.body["end_reason"].as_str().unwrap_or("");
            crate::log::info(&format!(
                "call {:?}: recording {} {} ({state}, {} ms)",
                event.call_id,
                event.recording_id,
                if event.event == "recording_failed" { "FAILED" } else { "finished" },
                event.body["duration_ms"]
            ));
        }
        let mut log = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let seq = log.next_seq;
        log.next_seq += 1;
        let mut line =
            json!({"event": event.event, "seq": seq, "call_id": event.call_id, "recording_id": event.recording_id});
        if let Value::Object(body) = event.body {
            for (k, v) in body {
                line.as_object_mut().expect("object").entry(k).or_insert(v);
            }
        }
        if log.backlog.len() == EVENT_BACKLOG {
            log.backlog.pop_front();
        }
        log.backlog.push_back(line.clone());
        let text: Arc<str> = Arc::from(format!("{line}\n"));
        log.subscribers.retain(|s| match s.queue.try_send(text.clone()) {
            Ok(()) => true,
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                crate::log::warn(&format!(
                    "control connection {}: {SUBSCRIBER_QUEUE} events unread; disconnecting it (it may \
                     resubscribe with \"since\": {} to get what it missed)",
                    s.id,
                    seq.saturating_sub(SUBSCRIBER_QUEUE as u64 + 1)
                ));
                let _ = s.conn.shutdown(std::net::Shutdown::Both);
                false
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => false,
        });
    }

    /// A connection closed: stop sending it events.
    fn disconnected(&self, id: u64) {
        let mut log = self.events.lock().unwrap_or_else(|p| p.into_inner());
        log.subscribers.retain(|s| s.id != id);
    }
}

/// What a request handler knows about its connection.
pub struct ConnContext {
    /// Unique per connection.
    pub id: u64,
    /// The connection's write half, shared with the event publisher.
    pub out: Arc<Mutex<UnixStream>>,
    /// Events to write after the current reply (replay on `subscribe`).
    pub pending_events: Mutex<Vec<Value>>,
    /// A new subscription's writer, to start once the reply and the replay are written.
    pub event_writer: Mutex<Option<EventWriter>>,
    /// The peer's uid (SO_PEERCRED), for the audit trail; `None` when unknown.
    pub peer_uid: Option<u32>,
}

/// Who a control socket client is in the audit trail: `control:uid=N`, or `control`.
pub fn control_actor(uid: Option<u32>) -> String {
    uid.map_or_else(|| "control".to_string(), |u| format!("control:uid={u}"))
}

/// Builds a reply line's object.
pub fn reply(id: Value, result: Result<Value, CallError>) -> Value {
    match result {
        Ok(Value::Object(body)) => {
            let mut v = json!({"id": id, "ok": true});
            let obj = v.as_object_mut().expect("object");
            for (k, val) in body {
                obj.entry(k).or_insert(val);
            }
            v
        }
        Ok(other) => json!({"id": id, "ok": true, "result": other}),
        Err(e) => json!({"id": id, "ok": false, "error": {"code": e.code, "message": e.message}}),
    }
}

/// How long a write to a slow client may block before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
