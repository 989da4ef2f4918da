//! Receive back ends: one per worker thread, each owning the UDP sockets of that worker's calls.
//!
//! Two implementations sit behind [`Backend`]: io_uring (multishot `RecvMsgMulti` with a
//! provided-buffer ring, `SINGLE_ISSUER` + `DEFER_TASKRUN`, batched waits) and epoll +
//! `recvmmsg`, chosen automatically when io_uring is unavailable (or forced by configuration).
//! A back end is created, used and dropped on one thread; it is `Send` only so that it can be
//! built before the thread starts.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

mod common;
#[cfg(test)]
mod conformance;
pub mod epoll;
pub mod uring;

/// Identifies a socket to its owner; handed back with every datagram it receives.
pub type Token = u64;

/// One datagram, borrowed from the back end's buffer until the callback returns.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The socket's token, as given to [`Backend::add_socket`].
    pub token: Token,
    /// Where it came from.
    pub src: SocketAddr,
    /// The UDP payload (truncated to the buffer size; see `truncated`).
    pub payload: &'a [u8],
    /// The payload was longer than the receive buffer and was cut.
    pub truncated: bool,
    /// The kernel's cumulative count of datagrams dropped on this socket because its receive
    /// buffer was full (`SO_RXQ_OVFL`), when the kernel reported it with this datagram.
    pub kernel_drops: Option<u32>,
}

/// Which back end runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring multishot receive.
    IoUring,
    /// epoll + recvmmsg.
    Epoll,
}

impl BackendKind {
    /// The name used in configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::IoUring => "io_uring",
            BackendKind::Epoll => "epoll",
        }
    }
}

/// Sizes a back end is built with.
#[derive(Debug, Clone, Copy)]
pub struct BackendConfig {
    /// Largest datagram kept whole (bytes); longer ones are truncated and flagged.
    pub buffer_size: usize,
    /// Receive buffers shared by all sockets of the worker (io_uring: provided-buffer ring
    /// entries, a power of two; epoll: the recvmmsg batch uses at most 64 of them).
    pub buffers: u16,
    /// Wake-up batching: a wait returns once this many completions are ready, or at the
    /// timeout given to `poll`, whichever is first (io_uring only; epoll wakes on readiness).
    pub batch: u32,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig { buffer_size: 2048, buffers: 4096, batch: 64 }
    }
}

/// A receive back end owned by one worker thread.
pub trait Backend: Send {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;

    /// Starts receiving on `socket` (already bound and non-blocking; the back end takes
    /// ownership and closes it on `remove_socket` or drop). `SO_RXQ_OVFL` is enabled here.
    fn add_socket(&mut self, token: Token, socket: UdpSocket) -> io::Result<()>;

    /// Stops receiving on the socket with `token` and closes it. Datagrams already received
    /// on it may still be delivered by the next `poll` only if they were read before this call;
    /// none are delivered after `poll` has returned once.
    fn remove_socket(&mut self, token: Token) -> io::Result<()>;

    /// Waits up to `timeout` for datagrams and hands each to `on_datagram`. Returns the number
    /// delivered. Never blocks longer than `timeout` (a zero timeout only collects what is ready).
    fn poll(&mut self, timeout: Duration, on_datagram: &mut dyn FnMut(Datagram<'_>)) -> io::Result<usize>;

    /// Cancels every armed receive and waits until the kernel has released them, so that the
    /// ports can be bound again at once (a quick restart must not see EADDRINUSE). Closes every
    /// socket. Called by drop as well.
    fn shutdown(&mut self);
}

/// Builds the preferred back end: io_uring unless `force_epoll`, falling back to epoll when
/// io_uring cannot be set up (seccomp, `kernel.io_uring_disabled`, old kernel). Returns the
/// back end and, when it fell back, why.
pub fn open(cfg: BackendConfig, force_epoll: bool) -> io::Result<(Box<dyn Backend>, Option<io::Error>)> {
    if force_epoll {
        return Ok((Box::new(epoll::EpollBackend::new(cfg)?), None));
    }
    match uring::UringBackend::new(cfg) {
        Ok(b) => Ok((Box::new(b), None)),
        Err(e) => Ok((Box::new(epoll::EpollBackend::new(cfg)?), Some(e))),
    }
}
