//! epoll + `recvmmsg` back end: the fallback where io_uring is unavailable.
//!
//! Level-triggered `EPOLLIN` on every socket; each ready socket is read with `recvmmsg` into a
//! preallocated batch (up to 64 datagrams, each with its own payload buffer, source-address and
//! control space) for at most four full batches per `poll`, so one busy socket cannot starve
//! the others (level triggering reports it again on the next `poll`). Waits use `epoll_pwait2`
//! (nanosecond timeout); kernels before 5.11 fall back to `epoll_wait` with the timeout rounded up
//! to whole milliseconds.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use super::common::{self, CONTROL_LEN, CONTROL_WORDS, NAME_LEN, UNKNOWN_SRC, context};
use super::*;

/// Largest `recvmmsg` batch.
pub const MAX_BATCH: usize = 64;
/// Full batches read from one ready socket per `poll` before moving on.
const ROUNDS: usize = 4;
/// Readiness events collected per `epoll_wait`.
const EVENTS: usize = 256;

/// Counters kept by the epoll back end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpollStats {
    /// `recvmmsg` failures other than "nothing to read" / "interrupted" (the socket is skipped
    /// for that round; the kernel reports a socket error once and clears it).
    pub recv_errors: u64,
}

/// One registered socket.
struct Slot {
    token: Token,
    socket: UdpSocket,
}

/// The preallocated `recvmmsg` batch. The pointers inside `msgs` and `iovecs` are rewritten from
/// the owning buffers before every call, so they never outlive or alias stale borrows.
struct RecvBatch {
    buffer_size: usize,
    payload: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    control: Vec<[u64; CONTROL_WORDS]>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iovecs` / `msgs` only ever point into this struct's own heap
// buffers (and are rebuilt before each use); nothing is shared with another thread.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    fn new(n: usize, buffer_size: usize) -> Self {
        // SAFETY: all-zero is a valid value for these plain C structs (null pointers, zero lengths).
        let zeroed_msg: libc::mmsghdr = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let zeroed_name: libc::sockaddr_storage = unsafe { mem::zeroed() };
        RecvBatch {
            buffer_size,
            payload: vec![0; n * buffer_size],
            names: vec![zeroed_name; n],
            control: vec![[0; CONTROL_WORDS]; n],
            iovecs: vec![libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }; n],
            msgs: vec![zeroed_msg; n],
        }
    }

    fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Points every header at its buffers and resets the in/out lengths the kernel overwrites.
    /// Raw pointers are taken only after the safe writes, from each buffer's base pointer.
    fn arm(&mut self) {
        let payload = self.payload.as_mut_ptr();
        for (i, iov) in self.iovecs.iter_mut().enumerate() {
            // `payload` holds len() * buffer_size bytes, so each offset stays inside it.
            *iov =
                libc::iovec { iov_base: payload.wrapping_add(i * self.buffer_size).cast(), iov_len: self.buffer_size };
        }
        let (iovecs, names, control) = (self.iovecs.as_mut_ptr(), self.names.as_mut_ptr(), self.control.as_mut_ptr());
        for (i, m) in self.msgs.iter_mut().enumerate() {
            // i < len() == iovecs.len() == names.len() == control.len(): every offset is in bounds.
            m.msg_hdr.msg_name = names.wrapping_add(i).cast();
            m.msg_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
            m.msg_hdr.msg_iov = iovecs.wrapping_add(i);
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = control.wrapping_add(i).cast();
            m.msg_hdr.msg_controllen = CONTROL_LEN as _;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
    }

    /// Reads up to `len()` datagrams from `fd` without blocking. `Ok(0)`: nothing to read.
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.arm();
        // SAFETY: `arm` just pointed every header at buffers owned by `self` with their true
        // sizes (payload, name, control); they stay alive and unborrowed for the call, and the
        // count passed is the number of headers. No timeout pointer.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// The `i`-th datagram of the last `recv`.
    fn datagram(&self, i: usize, token: Token) -> Datagram<'_> {
        let m = &self.msgs[i];
        let len = (m.msg_len as usize).min(self.buffer_size);
        let start = i * self.buffer_size;
        let name_len = (m.msg_hdr.msg_namelen as usize).min(NAME_LEN);
        // SAFETY: `names[i]` is a sockaddr_storage of NAME_LEN bytes; viewing its first
        // `name_len <= NAME_LEN` bytes as u8 is in bounds and every byte is initialised.
        let name = unsafe {
            std::slice::from_raw_parts((&self.names[i] as *const libc::sockaddr_storage).cast::<u8>(), name_len)
        };
        #[allow(clippy::unnecessary_cast)] // size_t on glibc, socklen_t on musl
        let control_len = (m.msg_hdr.msg_controllen as usize).min(CONTROL_LEN);
        // SAFETY: `control[i]` is CONTROL_WORDS u64s (>= CONTROL_LEN bytes), all initialised.
        let control = unsafe { std::slice::from_raw_parts(self.control[i].as_ptr().cast::<u8>(), control_len) };
        Datagram {
            token,
            src: common::sockaddr_from_bytes(name).unwrap_or(UNKNOWN_SRC),
            payload: &self.payload[start..start + len],
            truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            kernel_drops: common::rxq_ovfl(control),
        }
    }
}

/// epoll + `recvmmsg` receive back end.
pub struct EpollBackend {
    epfd: OwnedFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_token: HashMap<Token, usize>,
    events: Vec<libc::epoll_event>,
    batch: RecvBatch,
    /// `epoll_pwait2` is available (cleared on `ENOSYS`).
    pwait2: bool,
    stats: EpollStats,
    closed: bool,
}

impl EpollBackend {
    /// Creates the epoll instance and the receive batch (`min(buffers, 64)` datagrams of
    /// `buffer_size` bytes).
    pub fn new(cfg: BackendConfig) -> io::Result<Self> {
        if cfg.buffer_size == 0 || cfg.buffers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "epoll back end: buffer_size ({}) and buffers ({}) must be non-zero",
                    cfg.buffer_size, cfg.buffers
                ),
            ));
        }
        // SAFETY: plain syscall with a flag argument; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(context(io::Error::last_os_error(), "epoll_create1"));
        }
        // SAFETY: `fd` was just returned by epoll_create1, is valid and owned by nobody else.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let n = usize::from(cfg.buffers).min(MAX_BATCH);
        Ok(EpollBackend {
            epfd,
            slots: Vec::new(),
            free: Vec::new(),
            by_token: HashMap::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            batch: RecvBatch::new(n, cfg.buffer_size),
            pwait2: true,
            stats: EpollStats::default(),
            closed: false,
        })
    }

    /// Counters since creation.
    pub fn stats(&self) -> EpollStats {
        self.stats
    }

    fn check_open(&self) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "epoll back end is shut down"));
        }
        Ok(())
    }

    /// Waits for readiness; returns the number of events in `self.events`.
    fn wait(&mut self, timeout: Duration) -> io::Result<usize> {
        let max = self.events.len() as libc::c_int;
        if self.pwait2 {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as _,
            };
            // SAFETY: `events` has `max` writable entries, `ts` lives across the call, and a null
            // sigmask means "don't change it" (the sigset size argument is then ignored).
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.epfd.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    max,
                    &ts as *const libc::timespec,
                    ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => return Ok(0),
                Some(libc::ENOSYS) => self.pwait2 = false,
                _ => return Err(context(e, "epoll_pwait2")),
            }
        }
        // Millisecond resolution: round up so that a short timeout does not become a busy loop.
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(libc::c_int::MAX as u128) as libc::c_int;
        // SAFETY: `events` has `max` writable entries.
        let n = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), self.events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(context(e, "epoll_wait"));
        }
        Ok(n as usize)
    }
}

impl Backend for EpollBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Epoll
    }

    fn add_socket(&mut self, token: Token, socket: UdpSocket) -> io::Result<()> {
        self.check_open()?;
        if self.by_token.contains_key(&token) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("socket {token} is already registered")));
        }
        common::prepare_socket(token, &socket)?;
        let idx = self.free.pop().unwrap_or(self.slots.len());
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: idx as u64 };
        // SAFETY: both fds are open; `ev` is a valid epoll_event read during the call only.
        let rc = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut ev) };
        if rc != 0 {
            if idx != self.slots.len() {
                self.free.push(idx);
            }
            return Err(context(io::Error::last_os_error(), format_args!("socket {token}: epoll_ctl(ADD)")));
        }
        if idx == self.slots.len() {
            self.slots.push(None);
        }
        self.slots[idx] = Some(Slot { token, socket });
        self.by_token.insert(token, idx);
        Ok(())
    }

    fn remove_socket(&mut self, token: Token) -> io::Result<()> {
        let idx = self
            .by_token
            .remove(&token)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no socket with token {token}")))?;
        let slot = self.slots[idx].take().expect("token map points at a live slot");
        // Closing the fd removes it from the epoll set; deleting first keeps the set exact even
        // if someone dup()ed the socket. A failure here changes nothing for us: the close follows.
        // SAFETY: both fds are open; DEL ignores the event argument (null allowed since 2.6.9).
        unsafe {
            libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, slot.socket.as_raw_fd(), ptr::null_mut())
        };
        drop(slot);
        self.free.push(idx);
        Ok(())
    }

    fn poll(&mut self, timeout: Duration, on_datagram: &mut dyn FnMut(Datagram<'_>)) -> io::Result<usize> {
        self.check_open()?;
        let ready = self.wait(timeout)?;
        let mut delivered = 0;
        for e in 0..ready {
            let idx = self.events[e].u64 as usize;
            // Sockets are only removed between polls, so every event names a live slot; the
            // check keeps a surprise from becoming a panic.
            let Some(Some(slot)) = self.slots.get(idx) else { continue };
            let (token, fd) = (slot.token, slot.socket.as_raw_fd());
            for _ in 0..ROUNDS {
                let n = match self.batch.recv(fd) {
                    Ok(n) => n,
                    Err(_) => {
                        self.stats.recv_errors += 1;
                        break;
                    }
                };
                for i in 0..n {
                    on_datagram(self.batch.datagram(i, token));
                }
                delivered += n;
                if n < self.batch.len() {
                    break;
                }
            }
        }
        Ok(delivered)
    }

    fn shutdown(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Closing each socket releases its port at once: nothing else holds a reference.
        self.slots.clear();
        self.free.clear();
        self.by_token.clear();
    }
}

impl Drop for EpollBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance as c;
    use super::*;

    fn make(cfg: BackendConfig) -> Option<EpollBackend> {
        Some(EpollBackend::new(cfg).expect("epoll back end"))
    }

    #[test]
    fn receives_from_several_sockets() {
        c::receives_from_several_sockets(make);
    }

    #[test]
    fn burst_is_received_or_counted_as_drops() {
        c::burst_is_received_or_counted_as_drops(make);
    }

    #[test]
    fn oversized_datagram_is_truncated_and_flagged() {
        c::oversized_datagram_is_truncated_and_flagged(make);
    }

    #[test]
    fn remove_socket_stops_delivery_and_frees_the_port() {
        c::remove_socket_stops_delivery_and_frees_the_port(make);
    }

    #[test]
    fn removal_keeps_other_sockets_datagrams() {
        c::removal_keeps_other_sockets_datagrams(make);
    }

    #[test]
    fn ports_rebind_right_after_shutdown_and_drop() {
        c::ports_rebind_right_after_shutdown_and_drop(make);
    }

    #[test]
    fn idle_poll_honours_the_timeout() {
        c::idle_poll_honours_the_timeout(make);
    }

    #[test]
    fn kernel_drops_are_reported() {
        c::kernel_drops_are_reported(make);
    }

    #[test]
    fn built_on_one_thread_used_on_another() {
        c::built_on_one_thread_used_on_another(make);
    }

    #[test]
    fn token_misuse_is_an_error() {
        c::token_misuse_is_an_error(make);
    }

    #[test]
    fn zero_timeout_poll_after_shutdown_is_an_error() {
        let mut b = make(BackendConfig::default()).unwrap();
        b.shutdown();
        assert!(b.poll(Duration::ZERO, &mut |_| {}).is_err());
    }
}
