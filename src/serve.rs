//! `callvault serve`: the daemon. Start-up order matters: everything that can be refused
//! (config, RTP bind address, directories, the data directory's lock, descriptor budget, receive
//! back end, control socket) is checked before systemd is told READY, and nothing touches the
//! spool before the lock is held; SIGTERM finalises every active recording before exit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::config::{BackendChoice, Config};
use crate::control::{self, Control};
use crate::engine::backend::{BackendConfig, BackendKind};
use crate::engine::worker::WorkerLimits;
use crate::engine::{Engine, EngineSettings};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A directory.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The data directory's lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another daemon holds the data directory.
    #[error(
        "data directory {} is in use by a running callvault{}; each daemon needs its own data_dir",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DataDirInUse {
        /// The data directory, as configured.
        dir: PathBuf,
        /// The holder's pid, when its lock file says.
        pid: Option<u32>,
    },
    /// No socket can be bound on `[rtp] bind`.
    #[error("cannot bind RTP sockets on {addr}: {source}; set [rtp] bind to an address of this host")]
    RtpBind {
        /// The address.
        addr: IpAddr,
        /// Why.
        source: io::Error,
    },
    /// Not enough file descriptors for the configured capacity.
    #[error(
        "[limits] max_calls = {max_calls} needs {needed} file descriptors but the limit is {limit}; raise LimitNOFILE (ulimit -n) or lower max_calls"
    )]
    Descriptors {
        /// Configured capacity.
        max_calls: usize,
        /// Needed.
        needed: u64,
        /// Available.
        limit: u64,
    },
    /// The keys for encryption at rest.
    #[error("encryption at rest: {0} (or set [recording] encryption = \"off\" to record in the clear)")]
    Keys(#[from] crate::seal::SealError),
    /// The recording catalog.
    #[error("{0}; move the file aside and start again to rebuild it from the spool")]
    Catalog(#[from] crate::catalog::CatalogError),
    /// A storage target.
    #[error("{0}; check [storage] (docs/storage.md)")]
    Storage(Box<crate::storage::StorageError>),
    /// The engine.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The control socket.
    #[error(transparent)]
    Socket(#[from] control::server::SocketError),
    /// The metrics listener.
    #[error("cannot listen for metrics on {addr}: {source}; set [metrics] listen to another address or \"\"")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Signal handling.
    #[error("cannot set up signal handling: {0}")]
    Signals(io::Error),
    /// The search and playback API.
    #[error(transparent)]
    Api(#[from] crate::api::server::ApiStartError),
    /// The audit trail.
    #[error("{0}; the daemon does not run without its audit trail (docs/audit.md)")]
    Audit(#[from] crate::audit::AuditError),
}

/// Runs the daemon until SIGTERM or SIGINT. Returns after every recording is finalised.
pub fn run(cfg: Config) -> Result<(), ServeError> {
    check_rtp_bind(cfg.rtp.bind)?;
    let spool = cfg.spool_dir();
    crate::output::ensure_dir(&cfg.data_dir)
        .map_err(|source| ServeError::Dir { path: cfg.data_dir.clone(), source })?;
    // Held until `run` returns: a second daemon on this data directory is refused here, before
    // its recovery could take the running daemon's live `.partial` files for a crash's.
    let _lock = lock_data_dir(&cfg.data_dir)?;
    // Opened before anything it records can happen; shared by the control socket, the HTTP API
    // and the anchoring below.
    let audit = std::sync::Arc::new(crate::audit::AuditLog::open(&cfg.data_dir)?);
    crate::output::ensure_dir(&spool).map_err(|source| ServeError::Dir { path: spool.clone(), source })?;
    let sealing = open_sealing(&cfg)?;
    // Before anything new is recorded: finish what a crash left behind.
    let recovered = crate::engine::call::recover_spool(&spool, sealing.as_ref());
    let limit = raise_descriptor_limit();
    let needed = cfg.descriptors_needed();
    if limit < needed {
        return Err(ServeError::Descriptors { max_calls: cfg.limits.max_calls, needed, limit });
    }
    // Blocked before any thread starts, so every thread inherits the mask and only the main
    // thread's sigtimedwait sees them.
    let signals = block_signals().map_err(ServeError::Signals)?;
    let workers = match cfg.engine.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let settings = EngineSettings {
        workers,
        pin_threads: cfg.engine.pin_threads,
        backend: match cfg.engine.backend {
            BackendChoice::Auto => None,
            BackendChoice::IoUring => Some(BackendKind::IoUring),
            BackendChoice::Epoll => Some(BackendKind::Epoll),
        },
        backend_config: BackendConfig { buffer_size: 2048, buffers: cfg.engine.buffers, batch: cfg.engine.batch },
        limits: WorkerLimits {
            max_duration_ns: (cfg.limits.max_duration_s > 0).then(|| cfg.limits.max_duration_s * 1_000_000_000),
            silence_timeout_ns: cfg.limits.silence_timeout_s * 1_000_000_000,
            leg_silent_ns: cfg.limits.leg_silent_event_s * 1_000_000_000,
            batch_wait: Duration::from_micros(cfg.engine.batch_wait_us),
        },
        spool: crate::engine::call::Spool { dir: spool.clone(), sealing: sealing.clone() },
    };
    let (events_tx, events_rx) = mpsc::channel();
    let engine = Engine::start(&settings, events_tx)?;
    let backend = engine.backend_kind();
    let socket_path = cfg.socket_path();
    let listener = control::server::bind(&socket_path, cfg.socket_mode()?)?;
    let metrics = if cfg.metrics.listen.is_empty() {
        None
    } else {
        let addr = cfg.metrics.listen.parse().expect("validated");
        Some(
            crate::metrics::bind(addr)
                .map_err(|source| ServeError::Metrics { addr: cfg.metrics.listen.clone(), source })?,
        )
    };
    let api = if cfg.api.listen.is_empty() { None } else { Some(crate::api::server::bind(&cfg)?) };
    let control = Control::new(cfg.clone(), engine);
    let (catalog, fresh_catalog) = open_catalog(&cfg, &spool, sealing.as_deref())?;
    control.set_catalog(catalog.clone());
    control.set_audit(audit.clone());
    let api = match api {
        Some(bound) => {
            let addr = bound.addr;
            let ctx = crate::api::server::ApiContext::new(&cfg, audit.clone(), sealing.clone(), Some(catalog.clone()))?;
            control.set_api_stats(ctx.stats.clone());
            crate::api::server::spawn(bound, ctx)?;
            Some(format!("{}://{addr}", if cfg.api.tls() { "https" } else { "http" }))
        }
        None => None,
    };
    // Set up now (refused like any other configuration error), used from its own thread.
    let storage = if cfg.storage.ship {
        Some(crate::storage::Storage::open(&cfg).map_err(|e| ServeError::Storage(Box::new(e)))?)
    } else {
        None
    };
    // Reported as events, so an ACD that subscribes with `since` learns of them. Recovery only
    // returns summaries that name their recording; one that does not is never published.
    for summary in recovered {
        let call_id = summary["call_id"].as_str().unwrap_or_default().to_string();
        let recording_id = summary["recording_id"].as_str().unwrap_or_default().to_string();
        if call_id.is_empty() || recording_id.is_empty() {
            continue;
        }
        control.publish(crate::engine::Event {
            event: if summary.get("error").is_some() { "recording_failed" } else { "recording_recovered" },
            call_id,
            recording_id,
            body: summary,
        });
    }
    let dispatcher = {
        let c = control.clone();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for event in events_rx {
                    c.publish(event);
                }
            })
            .map_err(ServeError::Signals)?
    };
    {
        let c = control.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control::server::serve(listener, c))
            .map_err(ServeError::Signals)?;
    }
    if fresh_catalog && cfg.storage.ship {
        rebuild_catalog_from_store(&cfg, sealing.clone());
    }
    let shipper = match storage {
        Some(storage) => {
            let targets: Vec<String> = storage.targets().map(|t| format!("{} {}", t.role.name(), t.describe)).collect();
            crate::log::info(&format!("shipping finished recordings to {}", targets.join(", ")));
            Some(start_shipper(&cfg, spool.clone(), storage, sealing.clone(), catalog, control.clone(), audit.clone())?)
        }
        None => {
            crate::log::warn("[storage] ship = false: finished recordings stay in the spool");
            None
        }
    };
    if let Some(listener) = metrics {
        let c = control.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || crate::metrics::serve(listener, c))
            .map_err(ServeError::Signals)?;
    }
    crate::log::info(&format!(
        "callvault {} serving: {} worker(s) on {}, control socket {}, RTP {}:{}-{}, spool {}, metrics {}, API {}",
        env!("CARGO_PKG_VERSION"),
        workers,
        backend.name(),
        socket_path.display(),
        cfg.rtp.bind,
        cfg.rtp.port_min,
        cfg.rtp.port_max,
        spool.display(),
        if cfg.metrics.listen.is_empty() { "off" } else { &cfg.metrics.listen },
        api.as_deref().unwrap_or("off"),
    ));
    // Without storage, the journal alone keeps the anchors.
    let journal_anchors = if shipper.is_none() { start_journal_anchors(&cfg, audit.clone())? } else { None };
    audit.record(daemon_entry(
        "serve.start",
        serde_json::json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION")}),
    ));
    notify(&format!("READY=1\nSTATUS=recording; {workers} worker(s) on {}", backend.name()));

    let watchdog = watchdog_interval();
    let tick = watchdog.map_or(Duration::from_secs(1), |w| (w / 2).min(Duration::from_secs(1)));
    let signal = loop {
        match wait_signal(&signals, tick) {
            Some(sig) => break sig,
            None => {
                if watchdog.is_some() && control.workers_alive() {
                    notify("WATCHDOG=1");
                }
            }
        }
    };
    let name = if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
    let active = control.active_calls();
    crate::log::info(&format!("{name}: finalising {active} active recording(s)"));
    notify(&format!("STOPPING=1\nSTATUS=finalising {active} recording(s)"));
    control.drain();
    let _ = std::fs::remove_file(&socket_path);
    control.engine().shutdown();
    // The workers sent their last events before answering; the dispatcher ends when every
    // sender is gone, so wait (bounded) for it to have published them.
    drop(control);
    let _ = join_timeout(dispatcher, Duration::from_secs(10));
    // Before the last anchor (the storage thread's as it ends, or the journal's below).
    audit.record(daemon_entry("serve.stop", serde_json::json!({"signal": name})));
    if let Some((stop, handle)) = journal_anchors {
        drop(stop);
        let _ = join_timeout(handle, Duration::from_secs(5));
    }
    if let Some((stop, handle)) = shipper {
        // It finishes the upload in hand (bounded); whatever is left ships at the next start.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = join_timeout(handle, Duration::from_secs(5));
    }
    // The shutdown anchor: already made by the storage thread unless it did not end in time
    // (then the journal has it).
    if let Err(e) = crate::audit::anchor_to_journal(&audit, &crate::audit::node_name()) {
        crate::log::warn(&format!("audit trail: no anchor at shutdown: {e}"));
    }
    // Everything in audit.db itself, so a copy of that one file is the whole trail.
    audit.checkpoint();
    crate::log::info("stopped");
    Ok(())
}

/// An entry for what the daemon itself does.
fn daemon_entry(action: &str, detail: serde_json::Value) -> crate::audit::Entry {
    crate::audit::Entry {
        actor: "daemon".into(),
        action: action.into(),
        target: String::new(),
        source: "serve".into(),
        result: "ok".into(),
        detail,
    }
}

type JournalAnchors = (mpsc::Sender<()>, std::thread::JoinHandle<()>);

/// Anchors the audit trail's head to the journal every `[audit] anchor_interval_s` (none with
/// 0), until the returned sender is dropped.
fn start_journal_anchors(
    cfg: &Config,
    audit: std::sync::Arc<crate::audit::AuditLog>,
) -> Result<Option<JournalAnchors>, ServeError> {
    if cfg.audit.anchor_interval_s == 0 {
        return Ok(None);
    }
    let every = Duration::from_secs(cfg.audit.anchor_interval_s);
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("audit-anchor".into())
        .spawn(move || {
            let node = crate::audit::node_name();
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if let Err(e) = crate::audit::anchor_to_journal(&audit, &node) {
                    crate::log::warn(&format!("audit trail: anchor skipped: {e}"));
                }
            }
        })
        .map_err(ServeError::Signals)?;
    Ok(Some((stop, handle)))
}

type ShipperHandle = (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>);

/// Warns, loudly, when the audit log was begun anew (it had no entries at start) while storage
/// holds anchors this node wrote of this log's chain (`audit.db` removed or emptied, the key
/// kept) or of another (both removed). Recording goes on either way; `audit verify` reports the
/// first as cut off.
fn warn_if_audit_log_was_lost(shipper: &crate::storage::ship::Shipper, audit: &crate::audit::AuditLog, node: &str) {
    if !audit.started_empty() {
        return;
    }
    match crate::audit::earlier_anchors(shipper.storage(), audit, node) {
        Ok(None) => {}
        Ok(Some(found)) => {
            if let Some(a) = &found.this_chain {
                crate::log::warn(&format!(
                    "AUDIT LOG MISSING: {} had no entries at start, but storage holds anchors of its chain up to seq {} (anchored at {} by {}): the audit log was removed or emptied. A new chain starts at seq 1 and recording goes on; `callvault audit verify` will report entries 1 to {} of the old chain as cut off. Restore audit.db from a backup if there is one, and find out who removed it (docs/audit.md)",
                    audit.path().display(),
                    a.seq,
                    a.at,
                    a.node,
                    a.seq
                ));
            }
            if found.other_chains > 0 {
                crate::log::warn(&format!(
                    "AUDIT LOG MISSING?: {} had no entries at start, and storage holds {} anchor(s) by this node ({node}) of another audit log: if that was this recorder's, audit.db and audit.key were both removed and a new chain with a new key starts (verify counts the old anchors as anchors_other_logs; docs/audit.md)",
                    audit.path().display(),
                    found.other_chains
                ));
            }
        }
        Err(e) => crate::log::warn(&format!(
            "audit trail: the log had no entries at start and the anchors in storage could not be listed to tell whether an earlier log was lost: {e}"
        )),
    }
}

/// Starts the storage thread: it ships the spool's finished recordings, keeps the catalog
/// current from the store and, with `[retention] enforce`, deletes what has expired.
fn start_shipper(
    cfg: &Config,
    spool: PathBuf,
    storage: crate::storage::Storage,
    sealing: Option<std::sync::Arc<crate::output::sealed::Sealing>>,
    catalog: crate::catalog::Writer,
    control: std::sync::Arc<Control>,
    audit: std::sync::Arc<crate::audit::AuditLog>,
) -> Result<ShipperHandle, ServeError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut shipper = crate::storage::ship::Shipper::new(spool, storage, &cfg.storage, Some(catalog.clone()))
        .with_keys(sealing.clone());
    let (wake, woken) = mpsc::channel();
    control.set_shipping(control::Shipping { stats: shipper.stats(), wake });
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let cfg = cfg.clone();
    let stopping = stop.clone();
    let handle = std::thread::Builder::new()
        .name("storage".into())
        .spawn(move || {
            let catalog_path = crate::catalog::path_in(&cfg.data_dir);
            let keys = sealing.as_ref().map(|s| &s.keys);
            let poll_every = (cfg.storage.catalog_poll_s > 0).then(|| Duration::from_secs(cfg.storage.catalog_poll_s));
            let sweep_every = cfg.retention.enforce.then(|| Duration::from_secs(cfg.retention.interval_s));
            let (mut polled, mut swept) = (None::<std::time::Instant>, None::<std::time::Instant>);
            let mut poll_state = crate::storage::index::PollState::default();
            let anchor_every =
                (cfg.audit.anchor_interval_s > 0).then(|| Duration::from_secs(cfg.audit.anchor_interval_s));
            let mut anchored = None::<std::time::Instant>;
            let node = crate::audit::node_name();
            // Before this process's first anchor: a log begun anew over anchors of its chain.
            warn_if_audit_log_was_lost(&shipper, &audit, &node);
            let anchor = |storage: &crate::storage::Storage| {
                if let Err(e) = crate::audit::anchor_to_store(storage, &audit, &node) {
                    crate::log::warn(&format!("audit trail: anchor not stored (tried again later): {e}"));
                }
            };
            while !stopping.load(Ordering::Relaxed) {
                // A panic in a pass (a client library's, say) must not end shipping for good
                // while the daemon goes on taking calls: it is logged, counted and retried.
                let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for (rid, stored) in shipper.run_once_reporting() {
                    control.publish(crate::engine::Event {
                        event: "recording_stored",
                        call_id: stored["call_id"].as_str().unwrap_or_default().to_string(),
                        recording_id: rid,
                        body: stored,
                    });
                }
                let due = |last: Option<std::time::Instant>, every: Duration| last.is_none_or(|t| t.elapsed() >= every);
                if let Some(every) = anchor_every
                    && due(anchored, every)
                {
                    anchored = Some(std::time::Instant::now());
                    anchor(shipper.storage());
                }
                if let Some(every) = poll_every
                    && due(polled, every)
                {
                    polled = Some(std::time::Instant::now());
                    match crate::storage::index::poll(
                        shipper.storage(),
                        &catalog_path,
                        keys,
                        &catalog,
                        std::time::SystemTime::now(),
                        &mut poll_state,
                    ) {
                        Ok(0) => {}
                        Ok(n) => crate::log::info(&format!("catalog: {n} recording(s) from the store indexed")),
                        Err(e) => crate::log::warn(&format!("catalog poll: {e}")),
                    }
                }
                if let Some(every) = sweep_every
                    && due(swept, every)
                    && (!cfg.retention.policy.is_empty() || cfg.retention.default_days > 0)
                {
                    swept = Some(std::time::Instant::now());
                    let mut removed = |rid: &str| catalog.remove(rid);
                    match crate::storage::retention::sweep(
                        &cfg.retention,
                        shipper.storage(),
                        &cfg.data_dir,
                        &catalog_path,
                        std::time::SystemTime::now(),
                        false,
                        &mut removed,
                    ) {
                        Ok(r) => {
                            shipper.stats().retention_deleted.fetch_add(r.deleted.len() as u64, Ordering::Relaxed);
                            if !r.deleted.is_empty() || !r.failed.is_empty() {
                                crate::log::info(&format!(
                                    "retention: {} recording(s) deleted, {} kept by a legal hold, {} failed (logged in {})",
                                    r.deleted.len(),
                                    r.held.len(),
                                    r.failed.len(),
                                    crate::storage::retention::deletion_log_path(&cfg.data_dir).display()
                                ));
                            }
                            for (rid, e) in &r.failed {
                                crate::log::warn(&format!("retention: recording {rid} not deleted: {e}"));
                            }
                        }
                        Err(e) => crate::log::warn(&format!("retention: sweep skipped, nothing deleted: {e}")),
                    }
                }
                }));
                if pass.is_err() {
                    shipper.stats().failures[0].fetch_add(1, Ordering::Relaxed);
                    shipper.stats().target_down[0].store(1, Ordering::Relaxed);
                    crate::log::error("storage: a shipping pass failed unexpectedly (see the panic above); the spool keeps every recording, retrying in 30 s");
                    std::thread::sleep(Duration::from_secs(30));
                    continue;
                }
                // Woken by a recording's end, else a pass every second.
                if woken.recv_timeout(Duration::from_secs(1)).is_ok() {
                    while woken.try_recv().is_ok() {}
                }
            }
            // The shutdown anchor: the daemon's last entry is written before it stops this thread.
            anchor(shipper.storage());
        })
        .map_err(ServeError::Signals)?;
    Ok((stop, handle))
}

/// A catalog created at this start learns what the store already holds (every recorder's
/// recordings, every day), in a thread of its own so that start-up and shipping do not wait.
fn rebuild_catalog_from_store(cfg: &Config, sealing: Option<std::sync::Arc<crate::output::sealed::Sealing>>) {
    let cfg = cfg.clone();
    let spawned = std::thread::Builder::new().name("catalog-rebuild".into()).spawn(move || {
        let path = crate::catalog::path_in(&cfg.data_dir);
        let result = crate::storage::Storage::open(&cfg).map_err(|e| e.to_string()).and_then(|storage| {
            let mut catalog = crate::catalog::Catalog::open(&path).map_err(|e| e.to_string())?;
            crate::storage::index::rebuild_from_store(
                &mut catalog,
                &storage,
                sealing.as_ref().map(|s| &s.keys),
                &mut |_, _| {},
            )
            .map_err(|e| e.to_string())
        });
        match result {
            Ok((0, skipped)) if skipped.is_empty() => {}
            Ok((n, skipped)) => {
                crate::log::info(&format!("catalog: {n} recording(s) indexed from the store"));
                for s in skipped {
                    crate::log::warn(&format!("catalog: not indexed: {s}"));
                }
            }
            Err(e) => crate::log::warn(&format!(
                "catalog: not filled from the store: {e}; run `callvault catalog rebuild` once it answers"
            )),
        }
    });
    if let Err(e) = spawned {
        crate::log::warn(&format!("catalog: cannot start filling it from the store: {e}"));
    }
}

/// Opens the catalog (`<data_dir>/catalog.sqlite`) and its writer thread; `true` when it was
/// created now. A catalog created now is first filled from the sidecars already in the spool
/// (and, by the caller, from the store), so an upgrade or a deleted catalog needs no manual
/// rebuild.
fn open_catalog(
    cfg: &Config,
    spool: &Path,
    sealing: Option<&crate::output::sealed::Sealing>,
) -> Result<(crate::catalog::Writer, bool), ServeError> {
    let path = crate::catalog::path_in(&cfg.data_dir);
    let fresh = !path.exists();
    let mut catalog = crate::catalog::Catalog::open(&path)?;
    if fresh {
        let (n, skipped) = crate::catalog::rebuild(&mut catalog, spool, sealing.map(|s| &s.keys), &mut |_, _| {})?;
        if n > 0 || !skipped.is_empty() {
            crate::log::info(&format!("catalog {}: created from the spool, {n} recording(s) indexed", path.display()));
        }
        for s in skipped {
            crate::log::warn(&format!("catalog: not indexed: {s}"));
        }
    }
    Ok((crate::catalog::Writer::spawn(catalog).map_err(ServeError::Signals)?, fresh))
}

/// The keys recordings are sealed with, or `None` with `encryption = "off"` (said at every
/// start). On first start with no key configured, keys are generated in `<data_dir>/keys`.
fn open_sealing(cfg: &Config) -> Result<Option<std::sync::Arc<crate::output::sealed::Sealing>>, ServeError> {
    if !cfg.encrypted() {
        crate::log::warn(
            "[recording] encryption = \"off\": recordings and their metadata are written to disk in the clear",
        );
        return Ok(None);
    }
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let resolved = crate::seal::setup::resolve(cfg, credentials.as_deref(), true)?;
    for w in &resolved.warnings {
        crate::log::warn(w);
    }
    let sealing = crate::output::sealed::Sealing::new(resolved.keys, cfg.recording.seal_chunk_kib * 1024)?;
    crate::log::info(&format!(
        "sealing recordings with KEK '{}' from the {}; signing key '{}'",
        sealing.keys.active_kek()?.id,
        resolved.source,
        sealing.keys.signing()?.id
    ));
    Ok(Some(sealing))
}

/// Binds one socket on `[rtp] bind` (any port): an address that is not this host's is refused
/// now, with the kernel's reason, rather than at every `start`.
fn check_rtp_bind(addr: IpAddr) -> Result<(), ServeError> {
    UdpSocket::bind(SocketAddr::new(addr, 0)).map(drop).map_err(|source| ServeError::RtpBind { addr, source })
}

/// The lock file in the data directory.
pub const LOCK_FILE: &str = "callvault.lock";

/// Takes `<data_dir>/callvault.lock` (flock, exclusive, without waiting) and writes this
/// process's pid into it. The lock lasts as long as the returned file is open, and the kernel
/// drops it when the process dies, so a crash never leaves the directory locked.
fn lock_data_dir(dir: &Path) -> Result<File, ServeError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| ServeError::Lock { path: path.clone(), source };
    let mut file = File::options().read(true).write(true).create(true).truncate(false).open(&path).map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(ServeError::DataDirInUse { dir: dir.to_path_buf(), pid: text.trim().parse().ok() });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    file.set_len(0).and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes())).map_err(lock_err)?;
    Ok(file)
}

fn join_timeout(handle: std::thread::JoinHandle<()>, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !handle.is_finished() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = handle.join();
    true
}

/// Raises the soft descriptor limit to the hard limit; returns the resulting soft limit.
fn raise_descriptor_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `raised` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use, sigaddset adds
    // valid signal numbers, and pthread_sigmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: `set` was initialised by block_signals; a null siginfo pointer is allowed; `ts`
    // is a valid timespec that outlives the call.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// The systemd watchdog interval, when systemd asked for one.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// Sends a state line to systemd (sd_notify) when started by it; does nothing otherwise.
pub fn notify(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        crate::log::warn(&format!("sd_notify to {path}: {e}"));
    }
}
