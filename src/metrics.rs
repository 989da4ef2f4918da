//! The metrics listener (`[metrics] listen`): `/metrics` in the OpenMetrics text format
//! (`prometheus-client`), `/healthz` and `/readyz`. Workers keep their own counters and publish
//! them once per housekeeping round; a scrape reads and sums them ([`Scrape`], a collector), so
//! nothing is shared or locked per packet. `docs/metrics.md` lists every metric.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::control::Control;
use crate::engine::{JITTER_BUCKETS, WorkerStats};

/// Binds the metrics listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Connections served at once; one beyond this is closed at once, so idle or slow clients can
/// hold at most this many threads, and never delay a scrape on another connection.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send its request, and to take the reply.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request head read (a longer one is answered 431).
const MAX_HEAD: usize = 8192;

/// Serves `/metrics` until the listener fails: each connection on its own short-lived thread
/// (at most [`MAX_CONNECTIONS`] at once), with [`IO_TIMEOUT`] on reads and writes.
pub fn serve(listener: TcpListener, control: Arc<Control>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                crate::log::warn(&format!("metrics: accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let guard = Slot(open.clone());
        let c = control.clone();
        let spawned = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || {
            let _guard = guard;
            if let Err(e) = answer(stream, &c)
                && !matches!(
                    e.kind(),
                    ErrorKind::WouldBlock
                        | ErrorKind::TimedOut
                        | ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionReset
                        | ErrorKind::NotConnected
                )
            {
                crate::log::warn(&format!("metrics: {e}"));
            }
        });
        if let Err(e) = spawned {
            crate::log::warn(&format!("metrics: cannot start a connection thread: {e}"));
        }
    }
}

/// One of the [`MAX_CONNECTIONS`] slots, given back when its connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn answer(mut stream: TcpStream, control: &Arc<Control>) -> std::io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // The request head may arrive in pieces: read until its blank line, within IO_TIMEOUT in all
    // (not per read: a client trickling bytes must not hold its slot for long).
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let mut head = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let mut complete = false;
    while n < head.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(ErrorKind::TimedOut, "request not sent in time"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut head[n..])? {
            0 => break,
            got => n += got,
        }
        if head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            complete = true;
            break;
        }
    }
    if !complete && n == head.len() {
        let body = format!("request head longer than {MAX_HEAD} bytes\n");
        write!(
            stream,
            "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return finish(stream);
    }
    let request = String::from_utf8_lossy(&head[..n]);
    let method = request.split_whitespace().next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        let body = "only GET and HEAD\n";
        write!(
            stream,
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return finish(stream);
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    // Prometheus asks for OpenMetrics; anything else (curl, promtool) gets the classic text format.
    let openmetrics = request.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("accept:") && l.contains("application/openmetrics-text")
    });
    let (status, content_type, body) = match path {
        "/metrics" if openmetrics => {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render(control))
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", to_text_format(&render(control))),
        "/healthz" => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string()),
        "/readyz" => match readiness(control) {
            Ok(()) => ("200 OK", "text/plain; charset=utf-8", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain; charset=utf-8", format!("not ready: {why}\n")),
        },
        _ => ("404 Not Found", "text/plain; charset=utf-8", "try /metrics, /healthz or /readyz\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if method == "HEAD" { "" } else { body.as_str() }
    )?;
    finish(stream)
}

/// Ends a connection after the reply: reads what the client still sends (briefly) so that the
/// close is orderly and the reply is not cut off by a reset.
fn finish(mut stream: TcpStream) -> std::io::Result<()> {
    stream.shutdown(std::net::Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

/// Whether the spool's file system has less free than `[limits] min_spool_free_mb` (or cannot be
/// read): then `start` is refused and the recorder is not ready. Returns the free bytes too.
pub fn spool_low(control: &Control) -> (bool, Option<u64>) {
    let cfg = control.config();
    let free = free_bytes(&cfg.spool_dir());
    let min = cfg.limits.min_spool_free_mb.saturating_mul(1024 * 1024);
    (min > 0 && free.is_none_or(|f| f < min), free)
}

/// Whether new calls can be taken: not draining, every worker alive, the spool has room.
pub fn readiness(control: &Control) -> Result<(), String> {
    if control.is_draining() {
        return Err("draining (new calls are refused)".into());
    }
    if !control.workers_alive() {
        return Err("a worker has stalled".into());
    }
    let spool = control.config().spool_dir();
    match spool_low(control) {
        (false, _) => Ok(()),
        (true, Some(free)) => Err(format!(
            "spool {} has {} MiB free (below [limits] min_spool_free_mb = {})",
            spool.display(),
            free >> 20,
            control.config().limits.min_spool_free_mb
        )),
        (true, None) => Err(format!("spool {} cannot be read", spool.display())),
    }
}

/// Bytes available to an unprivileged writer on `path`'s file system.
pub fn free_bytes(path: &Path) -> Option<u64> {
    crate::host::fs_space(path).ok().map(|s| s.available)
}

/// Bytes of the files in the spool (recordings in progress and finished, not yet shipped).
fn spool_bytes(spool: &Path) -> u64 {
    std::fs::read_dir(spool)
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// The network namespace's UDP receive errors (`/proc/net/snmp`): `(InErrors, RcvbufErrors)`.
fn udp_receive_errors() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let get = |field| crate::host::parse_snmp(&text, "Udp", field);
    Some((get("InErrors")?, get("RcvbufErrors")?))
}

/// The exposition text of one scrape.
pub fn render(control: &Arc<Control>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(control.clone())));
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        crate::log::warn(&format!("metrics: encoding failed: {e}"));
    }
    out
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition: a counter's family
/// is named with its `_total` suffix, as its samples are; `# UNIT` and `# EOF` go; `{}` goes.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let family = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else if let Some((name, value)) = line.split_once("{} ") {
            out.push_str(&format!("{name} {value}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Reads everything at scrape time.
struct Scrape(Arc<Control>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let control = &self.0;
        let engine = control.engine();
        let workers = engine.workers();
        let per_worker = |f: &dyn Fn(&WorkerStats) -> u64| -> Vec<(Labels, u64)> {
            workers.iter().enumerate().map(|(i, w)| (vec![("worker", i.to_string())], f(&w.stats))).collect()
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let none: Labels = Vec::new();

        gauge(
            &mut e,
            "callvault_build_info",
            "Build information: always 1; the labels say which build runs.",
            None,
            &[(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1)],
        )?;
        gauge(
            &mut e,
            "callvault_receive_backend_info",
            "The RTP receive back end in use: always 1 (io_uring, or the epoll fallback).",
            None,
            &[(vec![("backend", engine.backend_kind().name().to_string())], 1)],
        )?;
        gauge(
            &mut e,
            "callvault_draining",
            "1 while new calls are refused (drain).",
            None,
            &[(none.clone(), i64::from(control.is_draining()))],
        )?;
        gauge(
            &mut e,
            "callvault_active_calls",
            "Calls being recorded now, per worker (core).",
            None,
            &per_worker(&|s| load(&s.calls)).into_iter().map(|(l, v)| (l, v as i64)).collect::<Vec<_>>(),
        )?;
        gauge(
            &mut e,
            "callvault_active_streams",
            "Legs (RTP streams) being recorded now, per worker.",
            None,
            &per_worker(&|s| load(&s.streams)).into_iter().map(|(l, v)| (l, v as i64)).collect::<Vec<_>>(),
        )?;

        counter(
            &mut e,
            "callvault_datagrams_received",
            "Datagrams received on RTP/RTCP sockets, per worker.",
            None,
            &per_worker(&|s| load(&s.datagrams)),
        )?;
        counter(
            &mut e,
            "callvault_received",
            "UDP payload bytes received, per worker.",
            Some(Unit::Bytes),
            &per_worker(&|s| load(&s.bytes)),
        )?;
        let legs = |f: &dyn Fn(&crate::engine::LegTotals) -> u64| per_worker(&|s| f(&s.legs.load()));
        counter(
            &mut e,
            "callvault_packets_received",
            "RTP packets received on recorded legs (telephone-events and duplicates included, RTCP not), per worker.",
            None,
            &legs(&|t| t.packets),
        )?;
        counter(
            &mut e,
            "callvault_packets_lost",
            "RTP packets lost: expected minus received (RFC 3550), per worker.",
            None,
            &legs(&|t| t.lost),
        )?;
        counter(
            &mut e,
            "callvault_packets_late",
            "RTP packets dropped because they arrived after their place closed, per worker.",
            None,
            &legs(&|t| t.late),
        )?;
        counter(
            &mut e,
            "callvault_packets_ahead",
            "RTP packets dropped because a sender ran faster than real time (more than 5 s ahead of arrival), per worker.",
            None,
            &legs(&|t| t.ahead),
        )?;
        counter(
            &mut e,
            "callvault_packets_duplicate",
            "Duplicate RTP packets dropped, per worker.",
            None,
            &legs(&|t| t.duplicates),
        )?;
        counter(
            &mut e,
            "callvault_packets_reordered",
            "RTP packets that arrived out of order but in time (placed), per worker.",
            None,
            &legs(&|t| t.reordered),
        )?;
        counter(
            &mut e,
            "callvault_packets_malformed",
            "Datagrams on RTP ports that were neither RTP nor RTCP, per worker.",
            None,
            &legs(&|t| t.malformed),
        )?;
        counter(
            &mut e,
            "callvault_rtcp_packets_received",
            "RTCP packets received (never decoded as audio), per worker.",
            None,
            &legs(&|t| t.rtcp),
        )?;
        counter(
            &mut e,
            "callvault_dtmf_events",
            "DTMF (RFC 4733) events recorded, per worker.",
            None,
            &legs(&|t| t.dtmf_events),
        )?;
        counter(
            &mut e,
            "callvault_packets_concealed",
            "Lost packets filled by the codec (Opus FEC or packet-loss concealment) instead of silence, per worker.",
            None,
            &legs(&|t| t.concealed),
        )?;
        counter(
            &mut e,
            "callvault_decode_errors",
            "RTP payloads the codec could not decode (their time is concealed or kept as silence), per worker.",
            None,
            &legs(&|t| t.decode_errors),
        )?;
        counter(
            &mut e,
            "callvault_datagrams_wrong_source",
            "Datagrams refused because of their source address (a leg's source check), per worker.",
            None,
            &per_worker(&|s| load(&s.wrong_source)),
        )?;
        counter(
            &mut e,
            "callvault_datagrams_stale",
            "Datagrams for sockets of calls or legs already released, per worker.",
            None,
            &per_worker(&|s| load(&s.stale)),
        )?;
        counter(
            &mut e,
            "callvault_datagrams_truncated",
            "Datagrams longer than a receive buffer (dropped), per worker.",
            None,
            &per_worker(&|s| load(&s.truncated)),
        )?;
        counter(
            &mut e,
            "callvault_socket_overflow_drops",
            "Datagrams the kernel dropped because a socket's receive buffer was full (SO_RXQ_OVFL), per worker.",
            None,
            &per_worker(&|s| load(&s.kernel_drops)),
        )?;
        if let Some((in_errors, rcvbuf_errors)) = udp_receive_errors() {
            counter(
                &mut e,
                "callvault_udp_receive_errors",
                "UDP receive errors of the whole network namespace (/proc/net/snmp InErrors): other programs' too.",
                None,
                &[(none.clone(), in_errors)],
            )?;
            counter(
                &mut e,
                "callvault_udp_receive_buffer_errors",
                "UDP datagrams the namespace dropped on full receive buffers (/proc/net/snmp RcvbufErrors): other programs' too.",
                None,
                &[(none.clone(), rcvbuf_errors)],
            )?;
        }

        let started: u64 = workers.iter().map(|w| load(&w.stats.recordings_started)).sum();
        let (finished, failed) = control.recordings_ended();
        counter(&mut e, "callvault_recordings_started", "Recordings started.", None, &[(none.clone(), started)])?;
        counter(
            &mut e,
            "callvault_recordings_ended",
            "Recordings ended, by outcome: finished (finalised), failed (could not be completed), recovered (left by a crash, repaired at start).",
            None,
            &[
                (vec![("outcome", "finished".to_string())], finished),
                (vec![("outcome", "failed".to_string())], failed),
                (vec![("outcome", "recovered".to_string())], control.recordings_recovered()),
            ],
        )?;
        counter(
            &mut e,
            "callvault_audio_written",
            "Audio bytes written to recording files (16-bit PCM), per worker.",
            Some(Unit::Bytes),
            &per_worker(&|s| load(&s.bytes_written)),
        )?;

        gauge(
            &mut e,
            "callvault_encryption_enabled",
            "1 when recordings and metadata are sealed at rest ([recording] encryption = \"on\"), 0 when written in the clear.",
            None,
            &[(none.clone(), i64::from(control.config().encrypted()))],
        )?;
        let spool = control.config().spool_dir();
        gauge(
            &mut e,
            "callvault_spool",
            "Bytes of the files in the spool (recordings in progress and finished).",
            Some(Unit::Bytes),
            &[(none.clone(), spool_bytes(&spool) as i64)],
        )?;
        if let Some(free) = free_bytes(&spool) {
            gauge(
                &mut e,
                "callvault_spool_free",
                "Bytes free for the daemon on the spool's file system.",
                Some(Unit::Bytes),
                &[(none.clone(), free as i64)],
            )?;
        }

        if let Some(st) = control.ship_stats() {
            let n = if st.has_backup.load(std::sync::atomic::Ordering::Relaxed) { 2 } else { 1 };
            let roles = |f: &dyn Fn(usize) -> u64| -> Vec<(Labels, u64)> {
                ["primary", "backup"][..n]
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (vec![("target", r.to_string())], f(i)))
                    .collect()
            };
            gauge(
                &mut e,
                "callvault_ship_backlog_recordings",
                "Finished recordings in the spool not yet in every storage target.",
                None,
                &[(none.clone(), load(&st.backlog_recordings) as i64)],
            )?;
            gauge(
                &mut e,
                "callvault_ship_backlog",
                "Bytes of the finished recordings in the spool not yet in every storage target.",
                Some(Unit::Bytes),
                &[(none.clone(), load(&st.backlog_bytes) as i64)],
            )?;
            let oldest = st.oldest_finished_ms.load(std::sync::atomic::Ordering::Relaxed);
            let age = if oldest > 0 { (crate::seal::now_ms() - oldest).max(0) / 1000 } else { 0 };
            gauge(
                &mut e,
                "callvault_ship_backlog_age",
                "Seconds since the oldest recording of the backlog finished (0: no backlog).",
                Some(Unit::Seconds),
                &[(none.clone(), age)],
            )?;
            counter(
                &mut e,
                "callvault_shipped_files",
                "Files uploaded and verified, per target.",
                None,
                &roles(&|i| load(&st.uploads[i])),
            )?;
            counter(
                &mut e,
                "callvault_shipped",
                "Bytes uploaded and verified, per target.",
                Some(Unit::Bytes),
                &roles(&|i| load(&st.bytes[i])),
            )?;
            counter(
                &mut e,
                "callvault_ship_failures",
                "Failed shipping attempts (store unreachable or refusing, local read errors, mismatches), per target.",
                None,
                &roles(&|i| load(&st.failures[i])),
            )?;
            counter(
                &mut e,
                "callvault_ship_verify_failures",
                "Uploads whose read-back or size did not match the spool's copy, per target.",
                None,
                &roles(&|i| load(&st.verify_failures[i])),
            )?;
            gauge(
                &mut e,
                "callvault_ship_target_down",
                "1 while a storage target is in backoff after a failure.",
                None,
                &roles(&|i| load(&st.target_down[i])).into_iter().map(|(l, v)| (l, v as i64)).collect::<Vec<_>>(),
            )?;
            counter(
                &mut e,
                "callvault_recordings_released",
                "Recordings in every storage target and removed from the spool.",
                None,
                &[(none.clone(), load(&st.released))],
            )?;
            counter(
                &mut e,
                "callvault_retention_deleted",
                "Recordings deleted by retention policies (not erasure requests).",
                None,
                &[(none.clone(), load(&st.retention_deleted))],
            )?;
        }

        // One observation per leg, at the end of its call.
        let mut m = e.encode_descriptor(
            "callvault_leg_jitter",
            "Interarrival jitter (RFC 3550) of each recorded leg at the end of its call.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (i, w) in workers.iter().enumerate() {
            let h = &w.stats.jitter;
            let mut cumulative = 0u64;
            let mut buckets = Vec::with_capacity(JITTER_BUCKETS.len() + 1);
            for (bound, count) in JITTER_BUCKETS.iter().chain(std::iter::once(&f64::MAX)).zip(&h.buckets) {
                cumulative += load(count);
                buckets.push((*bound, cumulative));
            }
            let sum = load(&h.sum_us) as f64 / 1e6;
            let labels = vec![("worker", i.to_string())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, cumulative, &buckets, None)?;
        }

        let mut series: Vec<(Labels, u64)> = control
            .requests()
            .into_iter()
            .map(|((cmd, result), n)| (vec![("command", cmd.to_string()), ("result", result.to_string())], n))
            .collect();
        series.sort();
        counter(
            &mut e,
            "callvault_control_requests",
            "Control socket requests answered, by command and result (ok or the error code).",
            None,
            &series,
        )?;
        if let Some(api) = control.api_stats() {
            let mut series: Vec<(Labels, u64)> = api
                .snapshot()
                .into_iter()
                .map(|((action, result), n)| (vec![("action", action.to_string()), ("result", result)], n))
                .collect();
            series.sort();
            counter(
                &mut e,
                "callvault_api_requests",
                "Search and playback API requests answered, by action and result (ok, the error code, or http NNN).",
                None,
                &series,
            )?;
        }
        if let Some(audit) = control.audit_log() {
            counter(
                &mut e,
                "callvault_audit_write_errors",
                "Audit trail entries that could not be written (the request they describe went on).",
                None,
                &[(none.clone(), audit.write_errors())],
            )?;
        }
        Ok(())
    }
}
