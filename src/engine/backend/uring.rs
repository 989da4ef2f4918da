//! io_uring back end: one multishot `RecvMsgMulti` per socket, all drawing from one
//! provided-buffer ring, on a ring set up with `SINGLE_ISSUER` + `DEFER_TASKRUN`.
//!
//! - **Buffers.** One anonymous, page-aligned mapping holds the buffer ring (`buffers` entries,
//!   a power of two) and the buffers. Each buffer is `16 + 128 + 24 + buffer_size` bytes: the
//!   kernel's `io_uring_recvmsg_out` header, the source address (`sockaddr_storage`), control
//!   space for one `SO_RXQ_OVFL` message, then the payload, so a datagram of exactly
//!   `buffer_size` bytes is kept whole. A buffer goes back to the ring as soon as the callback
//!   for its datagram returns.
//! - **Re-arming.** A completion without `IORING_CQE_F_MORE` ends a socket's receive (`ENOBUFS`
//!   when the buffer ring ran dry, a zero-length datagram, a CQ overflow): the socket is re-armed
//!   on the next `poll`, whose wait submits it. Data waits in the socket's buffer meanwhile.
//! - **Waits.** `poll` submits and waits in one `io_uring_enter` for `batch` completions or the
//!   timeout. With `DEFER_TASKRUN` the kernel does receive work only inside that call.
//! - **user_data.** `kind << 56 | generation << 32 | slot`: kind 1 is a receive, 2 a cancel; the
//!   slot indexes the socket table and the 24-bit generation changes each time a slot is reused,
//!   so a completion for an earlier occupant is recognised and only its buffer is recycled.
//! - **Removal.** `remove_socket` closes the descriptor at once (an armed receive holds its own
//!   reference to the socket and touches only memory this back end owns), cancels the receive by
//!   user_data and waits, bounded, until its final completion: the kernel has then let go of the
//!   socket and the port is free. Completions of other sockets reaped meanwhile are kept, in
//!   order, for the next `poll`.
//! - **Threads.** The ring is created disabled and enabled by the first `poll` (or removal of a
//!   receiving socket), which binds it to that thread: a back end may be built on one thread and
//!   moved to its worker, but from the first `poll` on every call must come from that worker.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use io_uring::types::BufRingEntry;
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::common::{self, CONTROL_LEN, NAME_LEN, UNKNOWN_SRC, context};
use super::*;

/// Provided-buffer group id of the ring's only buffer group.
const BGID: u16 = 0;
/// Submission queue entries (re-arms and cancels; more than this are submitted in chunks).
const SQ_ENTRIES: u32 = 256;
/// Upper bound the kernel accepts for a CQ (`IORING_MAX_CQ_ENTRIES`).
const MAX_CQ_ENTRIES: u32 = 65536;
/// Size of the kernel's `struct io_uring_recvmsg_out` at the start of each buffer.
const RECVMSG_OUT_LEN: usize = 4 * mem::size_of::<u32>();
/// Buffers start on cache-line boundaries.
const BUFFER_ALIGN: usize = 64;
/// Largest `buffer_size` accepted (the largest UDP payload fits).
pub const MAX_BUFFER_SIZE: usize = 65536;
/// Consecutive failed receives (other than `ENOBUFS`) after which a socket is no longer re-armed.
const ERRORS_BEFORE_GIVING_UP: u32 = 16;
/// Bound on waiting for a removed socket's receive to end.
const REMOVE_WAIT: Duration = Duration::from_secs(1);
/// Bound on waiting for every receive to end at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// Longest single wait inside those bounds.
const REAP_STEP: Duration = Duration::from_millis(10);

const KIND_RECV: u64 = 1;
const KIND_CANCEL: u64 = 2;
const GEN_MASK: u32 = 0x00FF_FFFF;

fn user_data(kind: u64, slot: u32, generation: u32) -> u64 {
    kind << 56 | u64::from(generation & GEN_MASK) << 32 | u64::from(slot)
}

fn decode(user_data: u64) -> (u64, u32, u32) {
    (user_data >> 56, user_data as u32, (user_data >> 32) as u32 & GEN_MASK)
}

/// Counters kept by the io_uring back end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringStats {
    /// Receives re-armed after their multishot ended.
    pub rearms: u64,
    /// Of those, ended because the buffer ring ran dry (`ENOBUFS`): size `buffers` up if frequent.
    pub enobufs: u64,
    /// Receives that ended with another error.
    pub recv_errors: u64,
    /// Completions whose buffer could not be parsed (never expected).
    pub malformed: u64,
    /// Removals whose receive had not ended within the bound (the port may stay bound a moment).
    pub slow_cancels: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Unused.
    Free,
    /// Registered, receive to be armed by the next `poll`.
    Pending,
    /// Receive armed in the kernel.
    Armed,
    /// Receive failed repeatedly; no longer armed (the owner should remove it).
    Failed,
    /// Removed: socket closed, waiting for the armed receive's final completion.
    Draining,
}

struct Slot {
    token: Token,
    generation: u32,
    state: State,
    socket: Option<UdpSocket>,
    errors_in_row: u32,
    cancel_in_flight: bool,
}

/// A completion kept for the next `poll` (reaped while waiting for a removal).
#[derive(Clone, Copy)]
struct Cqe {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// The provided-buffer ring and its buffers, in one anonymous mapping.
struct BufRing {
    base: NonNull<u8>,
    map_len: usize,
    /// Offset of buffer 0 (the ring entries come first, rounded up to a page).
    bufs_offset: usize,
    entries: u16,
    stride: usize,
    buf_len: u32,
    /// Our copy of the ring tail (the kernel reads the shared one).
    tail: u16,
    /// Leave the mapping in place on drop (the kernel may still hold receives that write to it).
    leak: bool,
}

// SAFETY: the mapping is owned by this value alone; the kernel accesses it only during
// io_uring_enter calls made by the thread that owns the back end.
unsafe impl Send for BufRing {}

impl BufRing {
    fn new(entries: u16, buf_len: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
        let bufs_offset = (usize::from(entries) * mem::size_of::<BufRingEntry>()).next_multiple_of(page);
        let stride = buf_len.next_multiple_of(BUFFER_ALIGN);
        let map_len = bufs_offset + usize::from(entries) * stride;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing; no fd,
        // no existing memory affected. The result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(context(
                io::Error::last_os_error(),
                format_args!("mmap {map_len} bytes for the io_uring buffer ring"),
            ));
        }
        let base = NonNull::new(p.cast::<u8>()).expect("mmap does not return null on success");
        Ok(BufRing { base, map_len, bufs_offset, entries, stride, buf_len: buf_len as u32, tail: 0, leak: false })
    }

    fn ring(&self) -> *mut BufRingEntry {
        self.base.as_ptr().cast()
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // bid < entries, so the offset stays inside the mapping.
        self.base.as_ptr().wrapping_add(self.bufs_offset + usize::from(bid) * self.stride)
    }

    /// Hands buffer `bid` to the kernel: writes the next ring entry, then publishes the tail.
    fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        let idx = usize::from(self.tail & (self.entries - 1));
        // SAFETY: idx < entries, so the entry lies in the ring part of the mapping. The entry is
        // past the published tail, so the kernel does not read it; and the kernel reads the ring
        // only inside io_uring_enter, which this (owning) thread is not in. The tail shares
        // entry 0's last field, which the setters leave alone.
        let entry = unsafe { &mut *self.ring().add(idx) };
        entry.set_addr(self.buf_ptr(bid) as u64);
        entry.set_len(self.buf_len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: `tail` gives the address of the ring's shared tail (inside entry 0 of our
        // mapping, 2-byte aligned); the kernel reads it concurrently in principle, hence the
        // atomic store, whose Release orders the entry writes above before it.
        unsafe { (*BufRingEntry::tail(self.ring()).cast::<AtomicU16>()).store(self.tail, Ordering::Release) };
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled and handed back.
    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(self.buf_len as usize);
        // SAFETY: bid < entries (checked by the caller) and len <= buf_len <= stride, so the
        // slice lies inside the mapping. The kernel handed this buffer back with a completion and
        // writes it again only after `recycle`, which needs `&mut self`, so not while this borrow
        // lives. Mapped anonymous memory is always initialised.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(bid), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if !self.leak {
            // SAFETY: unmaps exactly the mapping created in `new`; the io_uring (dropped first)
            // no longer has receives that could write into it.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
        }
    }
}

/// The `msghdr` every `RecvMsgMulti` is built from: only the name and control lengths matter.
struct MsgHdrTemplate(Box<libc::msghdr>);

// SAFETY: the template's pointers are all null; it is plain data.
unsafe impl Send for MsgHdrTemplate {}

/// Everything but the ring, so that completions can be handled while the CQ is borrowed.
struct Inner {
    bufs: BufRing,
    msghdr: MsgHdrTemplate,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_token: HashMap<Token, u32>,
    /// Slots to arm on the next `poll` (capacity kept at `slots.len()`: no allocation per packet).
    pending: Vec<(u32, u32)>,
    /// Completions reaped by `remove_socket`, delivered by the next `poll`.
    deferred: Vec<Cqe>,
    /// Draining slots whose cancel found nothing while their final completion had not come yet.
    recancel: Vec<(u32, u32)>,
    draining: usize,
    cancels_in_flight: usize,
    batch: usize,
    enabled: bool,
    closed: bool,
    failure: Option<io::Error>,
    stats: UringStats,
}

impl Inner {
    fn is_draining(&self, slot: u32, generation: u32) -> bool {
        self.slots.get(slot as usize).is_some_and(|s| s.generation == generation && s.state == State::Draining)
    }

    fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.state = State::Free;
        s.socket = None;
        s.cancel_in_flight = false;
        self.free.push(slot);
    }

    /// Handles one completion; with `on` absent nothing is delivered (removal, shutdown).
    /// Returns the number of datagrams delivered (0 or 1).
    fn complete(&mut self, c: Cqe, on: Option<&mut dyn FnMut(Datagram<'_>)>) -> usize {
        let (kind, slot, generation) = decode(c.user_data);
        match kind {
            KIND_RECV => self.complete_recv(slot, generation, c, on),
            KIND_CANCEL => {
                self.cancels_in_flight = self.cancels_in_flight.saturating_sub(1);
                if self.is_draining(slot, generation) {
                    let s = &mut self.slots[slot as usize];
                    s.cancel_in_flight = false;
                    // -EALREADY: the cancel is under way; 0: found. -ENOENT: the receive had
                    // already ended (its final completion is then near) — checked again later.
                    if c.result < 0 && c.result != -libc::EALREADY {
                        self.recancel.push((slot, generation));
                    }
                }
                0
            }
            _ => 0,
        }
    }

    fn complete_recv(&mut self, slot: u32, generation: u32, c: Cqe, on: Option<&mut dyn FnMut(Datagram<'_>)>) -> usize {
        let bid = cqueue::buffer_select(c.flags).filter(|&b| b < self.bufs.entries);
        let Some(s) = self.slots.get_mut(slot as usize).filter(|s| s.generation == generation) else {
            // An earlier occupant's completion: only its buffer matters.
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return 0;
        };
        let mut delivered = 0;
        if let Some(bid) = bid {
            if s.state == State::Armed && c.result >= 0 {
                s.errors_in_row = 0;
                if let Some(on) = on {
                    let buf = self.bufs.buffer(bid, c.result as usize);
                    match types::RecvMsgOut::parse(buf, &self.msghdr.0) {
                        Ok(out) => {
                            let payload = out.payload_data();
                            on(Datagram {
                                token: s.token,
                                src: common::sockaddr_from_bytes(out.name_data()).unwrap_or(UNKNOWN_SRC),
                                payload,
                                truncated: out.is_payload_truncated()
                                    || out.incoming_payload_len() as usize > payload.len(),
                                kernel_drops: common::rxq_ovfl(out.control_data()),
                            });
                            delivered = 1;
                        }
                        Err(()) => self.stats.malformed += 1,
                    }
                }
            }
            self.bufs.recycle(bid);
        }
        if cqueue::more(c.flags) {
            return delivered;
        }
        match s.state {
            State::Armed => {
                if c.result == -libc::ENOBUFS {
                    self.stats.enobufs += 1;
                } else if c.result < 0 {
                    self.stats.recv_errors += 1;
                    s.errors_in_row += 1;
                }
                if s.errors_in_row >= ERRORS_BEFORE_GIVING_UP {
                    s.state = State::Failed;
                    if self.failure.is_none() {
                        let e = io::Error::from_raw_os_error(-c.result);
                        self.failure = Some(io::Error::new(
                            e.kind(),
                            format!(
                                "io_uring receive on socket {} failed {} times in a row (last: {e}); it is no longer read",
                                s.token, s.errors_in_row
                            ),
                        ));
                    }
                } else {
                    s.state = State::Pending;
                    self.pending.push((slot, generation));
                    self.stats.rearms += 1;
                }
            }
            State::Draining => {
                self.draining -= 1;
                self.release(slot);
            }
            State::Free | State::Pending | State::Failed => {}
        }
        delivered
    }

    /// Keeps a completion of a receiving socket for the next `poll`; handles anything else now.
    fn complete_or_defer(&mut self, c: Cqe) {
        let (kind, slot, generation) = decode(c.user_data);
        let receiving = kind == KIND_RECV
            && self.slots.get(slot as usize).is_some_and(|s| s.generation == generation && s.state == State::Armed);
        if receiving {
            self.deferred.push(c);
        } else {
            self.complete(c, None);
        }
    }

    /// Delivers the completions kept by `remove_socket`, in order.
    fn complete_deferred(&mut self, on: &mut dyn FnMut(Datagram<'_>)) -> usize {
        let mut deferred = mem::take(&mut self.deferred);
        let n = deferred.iter().map(|&c| self.complete(c, Some(&mut *on))).sum();
        deferred.clear();
        self.deferred = deferred;
        n
    }

    /// Handles, without delivering, the kept completions of one removed slot.
    fn settle_deferred(&mut self, slot: u32, generation: u32) {
        let mut deferred = mem::take(&mut self.deferred);
        deferred.retain(|&c| {
            let (kind, s, g) = decode(c.user_data);
            let mine = kind == KIND_RECV && s == slot && g == generation;
            if mine {
                self.complete(c, None);
            }
            !mine
        });
        self.deferred = deferred;
    }
}

/// io_uring receive back end.
pub struct UringBackend {
    // Declared first: dropped (closed) before the buffers in `inner` are unmapped.
    ring: IoUring,
    inner: Inner,
}

impl UringBackend {
    /// Sets up the ring (`SINGLE_ISSUER` + `DEFER_TASKRUN`, kernel 6.1+; created disabled, see the
    /// module docs) and registers the provided-buffer ring. Any failure means io_uring cannot be
    /// used here and is returned as is, so that [`open`] falls back to epoll.
    pub fn new(cfg: BackendConfig) -> io::Result<Self> {
        if !cfg.buffers.is_power_of_two() || cfg.buffers > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("io_uring back end: buffers ({}) must be a power of two, at most 32768", cfg.buffers),
            ));
        }
        if cfg.buffer_size == 0 || cfg.buffer_size > MAX_BUFFER_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("io_uring back end: buffer_size ({}) must be 1..={MAX_BUFFER_SIZE}", cfg.buffer_size),
            ));
        }
        // Multishot receives post many completions per submission: size the CQ for every buffer
        // in use at once plus the end-of-receive and cancel completions, with room to spare.
        let cq_entries = (4 * u32::from(cfg.buffers)).clamp(4 * SQ_ENTRIES, MAX_CQ_ENTRIES);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .setup_submit_all()
            .setup_cqsize(cq_entries)
            .build(SQ_ENTRIES)
            .map_err(|e| context(e, "io_uring_setup (SINGLE_ISSUER + DEFER_TASKRUN need kernel 6.1+)"))?;
        let buf_len = RECVMSG_OUT_LEN + NAME_LEN + CONTROL_LEN + cfg.buffer_size;
        let mut bufs = BufRing::new(cfg.buffers, buf_len)?;
        // SAFETY: the ring entries sit at the start of a page-aligned mapping sized for
        // `buffers` entries; the mapping outlives the io_uring (field order; leaked on drop if
        // receives could not be ended).
        unsafe { ring.submitter().register_buf_ring_with_flags(bufs.base.as_ptr() as u64, cfg.buffers, BGID, 0) }
            .map_err(|e| context(e, "io_uring: register provided-buffer ring (kernel 5.19+)"))?;
        for bid in 0..cfg.buffers {
            bufs.recycle(bid);
        }
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        msghdr.msg_namelen = NAME_LEN as libc::socklen_t;
        msghdr.msg_controllen = CONTROL_LEN as _;
        Ok(UringBackend {
            ring,
            inner: Inner {
                bufs,
                msghdr: MsgHdrTemplate(msghdr),
                slots: Vec::new(),
                free: Vec::new(),
                by_token: HashMap::new(),
                pending: Vec::new(),
                deferred: Vec::new(),
                recancel: Vec::new(),
                draining: 0,
                cancels_in_flight: 0,
                batch: cfg.batch.max(1) as usize,
                enabled: false,
                closed: false,
                failure: None,
                stats: UringStats::default(),
            },
        })
    }

    /// Counters since creation.
    pub fn stats(&self) -> UringStats {
        self.inner.stats
    }

    fn check_open(&self) -> io::Result<()> {
        if self.inner.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "io_uring back end is shut down"));
        }
        Ok(())
    }

    /// Enables the ring on first use, binding it to the calling thread (`SINGLE_ISSUER`).
    fn ensure_enabled(&mut self) -> io::Result<()> {
        if !self.inner.enabled {
            self.ring
                .submitter()
                .register_enable_rings()
                .map_err(|e| context(e, "io_uring: enable the ring on its worker thread"))?;
            self.inner.enabled = true;
        }
        Ok(())
    }

    /// Queues one entry, submitting what is queued if the SQ is full.
    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        for _ in 0..1000 {
            // SAFETY: our entries point only at memory that outlives their requests: the msghdr
            // template (owned by the back end; the kernel copies it at submission) and, through
            // the buffer group, the registered buffers (owned until the ring is closed). Cancel
            // entries point at nothing.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => return Err(context(e, "io_uring_enter (submit)")),
            }
        }
        Err(io::Error::new(io::ErrorKind::WouldBlock, "io_uring submission queue stays full"))
    }

    /// Queues the receives of every pending slot (submitted by the caller's next enter).
    fn arm_pending(&mut self) -> io::Result<()> {
        let mut i = 0;
        while i < self.inner.pending.len() {
            let (slot, generation) = self.inner.pending[i];
            let s = &self.inner.slots[slot as usize];
            if s.generation == generation && s.state == State::Pending {
                let fd = s.socket.as_ref().expect("a pending slot holds its socket").as_raw_fd();
                let sqe = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.inner.msghdr.0, BGID)
                    .build()
                    .user_data(user_data(KIND_RECV, slot, generation));
                if let Err(e) = self.push(&sqe) {
                    self.inner.pending.drain(..i);
                    return Err(e);
                }
                self.inner.slots[slot as usize].state = State::Armed;
            }
            i += 1;
        }
        self.inner.pending.clear();
        Ok(())
    }

    fn push_cancel(&mut self, slot: u32, generation: u32) -> io::Result<()> {
        let sqe = opcode::AsyncCancel::new(user_data(KIND_RECV, slot, generation)).build().user_data(user_data(
            KIND_CANCEL,
            slot,
            generation,
        ));
        self.push(&sqe)?;
        self.inner.cancels_in_flight += 1;
        self.inner.slots[slot as usize].cancel_in_flight = true;
        Ok(())
    }

    /// Submits what is queued and reaps completions (receiving sockets' ones kept for the next
    /// `poll`) until `done` or `deadline`. `Ok(false)` when the deadline passed first.
    fn reap_until(&mut self, deadline: Instant, done: impl Fn(&Inner) -> bool) -> io::Result<bool> {
        loop {
            if done(&self.inner) {
                return Ok(true);
            }
            let mut recancel = mem::take(&mut self.inner.recancel);
            for (slot, generation) in recancel.drain(..) {
                if self.inner.is_draining(slot, generation) && !self.inner.slots[slot as usize].cancel_in_flight {
                    self.push_cancel(slot, generation)?;
                }
            }
            self.inner.recancel = recancel;
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let ts = types::Timespec::from((deadline - now).min(REAP_STEP));
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(context(e, "io_uring_enter (wait for cancellation)")),
            }
            let UringBackend { ring, inner } = self;
            for cqe in ring.completion() {
                inner.complete_or_defer(Cqe { user_data: cqe.user_data(), result: cqe.result(), flags: cqe.flags() });
            }
        }
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
    }

    fn add_socket(&mut self, token: Token, socket: UdpSocket) -> io::Result<()> {
        self.check_open()?;
        let inner = &mut self.inner;
        if inner.by_token.contains_key(&token) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("socket {token} is already registered")));
        }
        common::prepare_socket(token, &socket)?;
        let slot = match inner.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(inner.slots.len())
                    .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "io_uring back end: too many sockets"))?;
                inner.slots.push(Slot {
                    token,
                    generation: 0,
                    state: State::Free,
                    socket: None,
                    errors_in_row: 0,
                    cancel_in_flight: false,
                });
                inner.pending.reserve(inner.slots.len().saturating_sub(inner.pending.len()));
                slot
            }
        };
        let s = &mut inner.slots[slot as usize];
        s.token = token;
        s.generation = s.generation.wrapping_add(1) & GEN_MASK;
        s.state = State::Pending;
        s.socket = Some(socket);
        s.errors_in_row = 0;
        inner.pending.push((slot, s.generation));
        inner.by_token.insert(token, slot);
        Ok(())
    }

    /// See the module docs. If the receive has not ended within a second the socket is still
    /// removed and `Ok` returned; `stats().slow_cancels` counts it (its port may stay bound until
    /// the kernel lets go).
    fn remove_socket(&mut self, token: Token) -> io::Result<()> {
        let inner = &mut self.inner;
        let slot = inner
            .by_token
            .remove(&token)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no socket with token {token}")))?;
        let s = &mut inner.slots[slot as usize];
        let generation = s.generation;
        // Close our descriptor now: an armed receive keeps its own reference to the socket.
        s.socket = None;
        match s.state {
            State::Pending | State::Failed => {
                inner.pending.retain(|&(p, _)| p != slot);
                inner.release(slot);
                return Ok(());
            }
            State::Armed => {
                s.state = State::Draining;
                inner.draining += 1;
            }
            State::Free | State::Draining => unreachable!("the token map points at a live slot"),
        }
        inner.settle_deferred(slot, generation);
        if !inner.is_draining(slot, generation) {
            return Ok(());
        }
        self.push_cancel(slot, generation).map_err(|e| context(e, format_args!("socket {token} removed")))?;
        let ended = self
            .reap_until(Instant::now() + REMOVE_WAIT, |inner| !inner.is_draining(slot, generation))
            .map_err(|e| context(e, format_args!("socket {token} removed")))?;
        if !ended {
            self.inner.stats.slow_cancels += 1;
        }
        Ok(())
    }

    fn poll(&mut self, timeout: Duration, on_datagram: &mut dyn FnMut(Datagram<'_>)) -> io::Result<usize> {
        self.check_open()?;
        self.ensure_enabled()?;
        let mut delivered = self.inner.complete_deferred(on_datagram);
        self.arm_pending()?;
        let wait = if delivered > 0 { Duration::ZERO } else { timeout };
        let ts = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(self.inner.batch, &args) {
            Ok(_) => {}
            // ETIME: fewer than `batch` completions by the timeout. EBUSY: CQ overflow backlog,
            // flushed as we consume. EINTR: a signal; the caller polls again.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(context(e, "io_uring_enter (wait for receive completions)")),
        }
        let UringBackend { ring, inner } = self;
        for cqe in ring.completion() {
            let c = Cqe { user_data: cqe.user_data(), result: cqe.result(), flags: cqe.flags() };
            delivered += inner.complete(c, Some(&mut *on_datagram));
        }
        match inner.failure.take() {
            Some(e) => Err(e),
            None => Ok(delivered),
        }
    }

    fn shutdown(&mut self) {
        if self.inner.closed {
            return;
        }
        let inner = &mut self.inner;
        inner.closed = true;
        inner.by_token.clear();
        inner.pending.clear();
        let mut armed = Vec::new();
        for slot in 0..inner.slots.len() as u32 {
            let s = &mut inner.slots[slot as usize];
            s.socket = None;
            match s.state {
                State::Pending | State::Failed => inner.release(slot),
                State::Armed => {
                    s.state = State::Draining;
                    inner.draining += 1;
                    armed.push((slot, s.generation));
                }
                State::Free | State::Draining => {}
            }
        }
        // Kept completions: buffers back, final ones end their slot.
        let deferred = mem::take(&mut inner.deferred);
        for c in deferred {
            inner.complete(c, None);
        }
        let mut ended = self.inner.draining == 0;
        if !ended {
            let cancelled = armed.into_iter().try_for_each(|(slot, generation)| {
                if self.inner.is_draining(slot, generation) { self.push_cancel(slot, generation) } else { Ok(()) }
            });
            ended = cancelled.is_ok()
                && self
                    .reap_until(Instant::now() + SHUTDOWN_WAIT, |inner| {
                        inner.draining == 0 && inner.cancels_in_flight == 0
                    })
                    .unwrap_or(false);
        }
        if ended {
            // Nothing uses the buffers any more; a failure here changes nothing.
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
        } else {
            // A receive may still be live in the kernel: keep its memory mapped for good.
            self.inner.bufs.leak = true;
        }
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance as c;
    use super::*;

    /// The back end, or `None` (with a notice) where io_uring is unavailable; under CI
    /// (`CI` set) unavailability fails the test instead.
    fn make(cfg: BackendConfig) -> Option<UringBackend> {
        match UringBackend::new(cfg) {
            Ok(b) => Some(b),
            Err(e) if std::env::var_os("CI").is_some() => panic!("io_uring unavailable under CI: {e}"),
            Err(e) => {
                eprintln!("NOTICE: io_uring test skipped, io_uring unavailable here: {e}");
                None
            }
        }
    }

    #[test]
    fn receives_from_several_sockets() {
        c::receives_from_several_sockets(make);
    }

    #[test]
    fn burst_is_received_or_counted_as_drops() {
        if let Some(b) = c::burst_is_received_or_counted_as_drops(make) {
            let st = b.stats();
            eprintln!("burst: {st:?}");
            assert!(st.enobufs > 0, "a 64-buffer ring under 400 queued datagrams runs dry: {st:?}");
            assert!(st.rearms >= st.enobufs);
            assert_eq!(st.recv_errors, 0);
        }
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
    fn user_data_round_trips() {
        let ud = user_data(KIND_CANCEL, 123_456, GEN_MASK);
        assert_eq!(decode(ud), (KIND_CANCEL, 123_456, GEN_MASK));
        assert_eq!(decode(user_data(KIND_RECV, u32::MAX, GEN_MASK + 5)), (KIND_RECV, u32::MAX, 4));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for cfg in [
            BackendConfig { buffers: 100, ..BackendConfig::default() },
            BackendConfig { buffer_size: 0, ..BackendConfig::default() },
            BackendConfig { buffer_size: MAX_BUFFER_SIZE + 1, ..BackendConfig::default() },
        ] {
            let e = UringBackend::new(cfg).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
    }

    #[test]
    fn open_prefers_io_uring_and_honours_force_epoll() {
        let (b, why) = open(BackendConfig::default(), true).unwrap();
        assert_eq!((b.kind(), why.is_none()), (BackendKind::Epoll, true));
        if make(BackendConfig::default()).is_some() {
            let (b, why) = open(BackendConfig::default(), false).unwrap();
            assert_eq!(b.kind(), BackendKind::IoUring, "fell back: {why:?}");
        }
    }
}
