//! Prometheus text exposition on a small HTTP listener (`[metrics] listen`). Workers keep their
//! own counters; they are summed here, at scrape time, never on the packet path.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::control::Control;

/// Binds the metrics listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `/metrics` until the listener fails.
pub fn serve(listener: TcpListener, control: Arc<Control>) {
    for stream in listener.incoming().flatten() {
        if let Err(e) = answer(stream, &control) {
            crate::log::warn(&format!("metrics: {e}"));
        }
    }
}

fn answer(mut stream: TcpStream, control: &Control) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
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
