//! The receive floor (`live floor`): the cheapest receiver of the same traffic on the same
//! number of sockets: callvault's own receive back end (io_uring multishot with a
//! provided-buffer ring, or epoll + recvmmsg) with the same sizes and batching, whose callback
//! only counts. Everything callvault does beyond that is the cost of recording.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use callvault::engine::backend::{self, BackendConfig, BackendKind};
use callvault::engine::ports::set_receive_buffer;
use serde::{Deserialize, Serialize};

use crate::sys;

/// What the floor receiver saw, printed as JSON when its standard input closes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorReport {
    /// The back end that ran.
    pub backend: String,
    /// Datagrams received.
    pub received: u64,
    /// Datagrams the kernel dropped on full socket buffers (SO_RXQ_OVFL, summed over sockets).
    pub kernel_drops: u64,
}

/// Binds `ports`, prints `ready` on stdout, receives and discards until stdin closes, then prints
/// the report.
pub fn run(
    kind: BackendKind,
    ports: &[u16],
    rcvbuf: usize,
    batch_wait: Duration,
    cpu: Option<usize>,
) -> std::io::Result<()> {
    if let Some(cpu) = cpu {
        let _ = sys::pin_self(&[cpu]);
    }
    let cfg = BackendConfig::default();
    let (mut rx, fell_back) = backend::open(cfg, kind == BackendKind::Epoll)?;
    if let Some(why) = fell_back {
        return Err(std::io::Error::other(format!("io_uring is unavailable here: {why}")));
    }
    for (token, &port) in ports.iter().enumerate() {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
            .map_err(|e| std::io::Error::other(format!("floor: cannot bind 127.0.0.1:{port}: {e}")))?;
        socket.set_nonblocking(true)?;
        set_receive_buffer(&socket, rcvbuf)?;
        rx.add_socket(token as u64, socket)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for _ in std::io::stdin().lock().lines() {}
            stop.store(true, Ordering::Relaxed);
        });
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut received = 0u64;
    let mut drops: HashMap<u64, u32> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        rx.poll(batch_wait, &mut |d| {
            received += 1;
            if let Some(k) = d.kernel_drops {
                drops.insert(d.token, k);
            }
        })?;
    }
    rx.shutdown();
    let report = FloorReport {
        backend: kind.name().to_string(),
        received,
        kernel_drops: drops.values().map(|&v| u64::from(v)).sum(),
    };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    Ok(())
}
