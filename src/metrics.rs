//! Prometheus text exposition on a small HTTP listener (`[metrics] listen`). Workers keep their
//! own counters; they are summed here, at scrape time, never on the packet path.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::control::Control;

/// Binds the metrics listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Connections served at once; one beyond this is closed at once, so idle or slow clients can
/// hold at most this many threads, and never delay a scrape on another connection.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send its request, and to take the reply.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

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
                && !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
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

fn answer(mut stream: TcpStream, control: &Control) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = [0u8; 2048];
    let n = stream.read(&mut head)?;
    let request = String::from_utf8_lossy(&head[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        ("200 OK", render(control))
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The exposition text.
pub fn render(control: &Control) -> String {
    let mut out = String::new();
    let engine = control.engine();
    let (finished, failed) = control.recordings_ended();
    let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(&mut out, "callvault_calls_active", "Calls being recorded now.", control.active_calls() as u64);
    gauge(&mut out, "callvault_draining", "1 while new calls are refused.", u64::from(control.is_draining()));
    let _ = writeln!(
        out,
        "# HELP callvault_recordings_total Recordings ended since start, by outcome.\n# TYPE callvault_recordings_total counter\ncallvault_recordings_total{{outcome=\"finished\"}} {finished}\ncallvault_recordings_total{{outcome=\"failed\"}} {failed}"
    );
    type Field = fn(&crate::engine::WorkerStats) -> &std::sync::atomic::AtomicU64;
    let per_worker: [(&str, &str, Field); 6] = [
        ("callvault_datagrams_total", "Datagrams received on RTP/RTCP sockets.", |s| &s.datagrams),
        ("callvault_received_bytes_total", "UDP payload bytes received.", |s| &s.bytes),
        ("callvault_kernel_drops_total", "Datagrams the kernel dropped on full socket buffers (SO_RXQ_OVFL).", |s| {
            &s.kernel_drops
        }),
        ("callvault_wrong_source_total", "Datagrams refused because of their source address.", |s| &s.wrong_source),
        ("callvault_stale_total", "Datagrams for sockets already released.", |s| &s.stale),
        ("callvault_truncated_total", "Datagrams longer than a receive buffer.", |s| &s.truncated),
    ];
    for (name, help, field) in per_worker {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, w) in engine.workers().iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", field(&w.stats).load(Ordering::Relaxed));
        }
    }
    out
}
