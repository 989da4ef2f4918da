//! The behaviour every back end must show, as test bodies parameterised by a constructor.
//! Each back end's `tests` module calls every function here; a constructor returns `None` to skip
//! (io_uring unavailable outside CI).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{Backend, BackendConfig, Datagram, Token};

/// A datagram copied out of the callback.
#[derive(Debug, Clone)]
pub struct Rx {
    pub token: Token,
    pub src: SocketAddr,
    pub payload: Vec<u8>,
    pub truncated: bool,
    pub kernel_drops: Option<u32>,
}

impl From<Datagram<'_>> for Rx {
    fn from(d: Datagram<'_>) -> Self {
        Rx {
            token: d.token,
            src: d.src,
            payload: d.payload.to_vec(),
            truncated: d.truncated,
            kernel_drops: d.kernel_drops,
        }
    }
}

fn bind_local() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    s.set_nonblocking(true).unwrap();
    s
}

/// Polls (10 ms at a time) until `done` says so or `limit` passes; returns everything received.
fn poll_until<B: Backend>(b: &mut B, limit: Duration, mut done: impl FnMut(&[Rx]) -> bool) -> Vec<Rx> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    while !done(&got) && Instant::now() < deadline {
        b.poll(Duration::from_millis(10), &mut |d| got.push(Rx::from(d))).expect("poll");
    }
    got
}

/// Polls until nothing arrives for `quiet`.
fn poll_until_quiet<B: Backend>(b: &mut B, quiet: Duration, limit: Duration) -> Vec<Rx> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut last = Instant::now();
    while last.elapsed() < quiet && Instant::now() < deadline {
        let n = b.poll(Duration::from_millis(5), &mut |d| got.push(Rx::from(d))).expect("poll");
        if n > 0 {
            last = Instant::now();
        }
    }
    got
}

fn set_rcvbuf(s: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: the fd is open for the call; the value points at a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
}

/// Asserts that `addr` can be bound again right now (no EADDRINUSE).
fn assert_rebinds(addr: SocketAddr, when: &str) {
    if let Err(e) = UdpSocket::bind(addr) {
        panic!("{when}: port {addr} cannot be bound again: {e}");
    }
}

/// Several sockets (IPv4, and IPv6 where the host has it): token, source and payload are right;
/// an empty datagram is delivered and does not stall its socket.
pub fn receives_from_several_sockets<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) {
    let Some(mut b) = make(BackendConfig { buffer_size: 2048, buffers: 64, batch: 4 }) else { return };
    let tx4 = bind_local();
    let tx6 = UdpSocket::bind("[::1]:0").ok();
    let mut dests: Vec<(Token, SocketAddr, &UdpSocket)> = Vec::new();
    for i in 0..4u64 {
        let s = bind_local();
        dests.push((100 + i, s.local_addr().unwrap(), &tx4));
        b.add_socket(100 + i, s).unwrap();
    }
    if let (Some(tx6), Ok(s)) = (tx6.as_ref(), UdpSocket::bind("[::1]:0")) {
        s.set_nonblocking(true).unwrap();
        dests.push((200, s.local_addr().unwrap(), tx6));
        b.add_socket(200, s).unwrap();
    }
    for (token, addr, tx) in &dests {
        tx.send_to(format!("hello {token}").as_bytes(), addr).unwrap();
    }
    // Arm and deliver the first round, then an empty datagram and one after it on socket 100.
    let mut got = poll_until(&mut b, Duration::from_secs(5), |g| g.len() >= dests.len());
    tx4.send_to(b"", dests[0].1).unwrap();
    tx4.send_to(b"after empty", dests[0].1).unwrap();
    let want = dests.len() + 2;
    got.extend(poll_until(&mut b, Duration::from_secs(5), |g| g.len() >= 2));
    assert_eq!(got.len(), want, "received {got:?}");

    for (token, _, tx) in &dests {
        let mine: Vec<&Rx> = got.iter().filter(|r| r.token == *token).collect();
        let expect: Vec<Vec<u8>> = if *token == 100 {
            vec![b"hello 100".to_vec(), Vec::new(), b"after empty".to_vec()]
        } else {
            vec![format!("hello {token}").into_bytes()]
        };
        assert_eq!(mine.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), expect, "token {token}");
        for r in mine {
            assert_eq!(r.src, tx.local_addr().unwrap(), "source for token {token}");
            assert!(!r.truncated);
            assert_eq!(r.kernel_drops, None);
        }
    }
}

/// 2,000 datagrams across 8 sockets into a 64-buffer pool, 400 of them queued before the first
/// poll: everything is received or counted by the kernel as dropped. Returns the back end so that
/// its own counters can be checked.
pub fn burst_is_received_or_counted_as_drops<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) -> Option<B> {
    const SOCKETS: usize = 8;
    const TOTAL: u32 = 2000;
    let mut b = make(BackendConfig { buffer_size: 256, buffers: 64, batch: 16 })?;
    let mut addrs = Vec::new();
    for i in 0..SOCKETS {
        let s = bind_local();
        addrs.push(s.local_addr().unwrap());
        b.add_socket(i as Token, s).unwrap();
    }
    let tx = bind_local();
    tx.set_nonblocking(false).unwrap();
    let send = |tx: &UdpSocket, seq: u32| {
        let mut p = [0u8; 100];
        p[..4].copy_from_slice(&seq.to_be_bytes());
        tx.send_to(&p, addrs[seq as usize % SOCKETS]).unwrap();
    };
    for seq in 0..400 {
        send(&tx, seq);
    }
    let mut got = Vec::new();
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            for seq in 400..TOTAL {
                send(&tx, seq);
            }
        });
        while !sender.is_finished() {
            b.poll(Duration::from_millis(2), &mut |d| got.push(Rx::from(d))).unwrap();
        }
    });
    got.extend(poll_until_quiet(&mut b, Duration::from_millis(100), Duration::from_secs(10)));
    // Drops after a socket's last delivered datagram surface only with a later one: send a marker.
    for a in &addrs {
        tx.send_to(b"marker", a).unwrap();
    }
    got.extend(poll_until(&mut b, Duration::from_secs(5), |g| {
        g.iter().filter(|r| r.payload == b"marker").count() == SOCKETS
    }));

    let mut seen = BTreeSet::new();
    let mut drops: HashMap<Token, u32> = HashMap::new();
    let mut markers = 0;
    for r in &got {
        if let Some(d) = r.kernel_drops {
            let e = drops.entry(r.token).or_default();
            *e = (*e).max(d);
        }
        if r.payload == b"marker" {
            markers += 1;
            continue;
        }
        assert_eq!(r.payload.len(), 100);
        assert!(!r.truncated);
        let seq = u32::from_be_bytes(r.payload[..4].try_into().unwrap());
        assert_eq!(r.token, Token::from(seq % SOCKETS as u32), "seq {seq} on the wrong socket");
        assert!(seen.insert(seq), "seq {seq} delivered twice");
    }
    assert_eq!(markers, SOCKETS, "every marker arrives");
    let dropped: u32 = drops.values().sum();
    assert_eq!(seen.len() as u32 + dropped, TOTAL, "received {} + kernel drops {dropped}", seen.len());
    assert!(!seen.is_empty());
    eprintln!("burst: {} received, {dropped} dropped by the kernel", seen.len());
    Some(b)
}

/// A datagram longer than `buffer_size` is cut and flagged; one of exactly `buffer_size` is not.
pub fn oversized_datagram_is_truncated_and_flagged<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) {
    let Some(mut b) = make(BackendConfig { buffer_size: 512, buffers: 16, batch: 1 }) else { return };
    let s = bind_local();
    let addr = s.local_addr().unwrap();
    b.add_socket(7, s).unwrap();
    let tx = bind_local();
    let big: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
    tx.send_to(&big, addr).unwrap();
    tx.send_to(&big[..512], addr).unwrap();
    tx.send_to(&big[..100], addr).unwrap();
    let got = poll_until(&mut b, Duration::from_secs(5), |g| g.len() >= 3);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].truncated);
    assert_eq!(got[0].payload, big[..512]);
    assert!(!got[1].truncated, "exactly buffer_size fits");
    assert_eq!(got[1].payload, big[..512]);
    assert!(!got[2].truncated);
    assert_eq!(got[2].payload, big[..100]);
}

/// After `remove_socket` nothing more arrives from that socket and its port can be bound again
/// at once; this holds for a socket that was receiving, one with unread data and an unpolled one.
pub fn remove_socket_stops_delivery_and_frees_the_port<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) {
    let Some(mut b) = make(BackendConfig { buffer_size: 2048, buffers: 32, batch: 1 }) else { return };
    let tx = bind_local();
    let mut addr = HashMap::new();
    for token in 1..=3 {
        let s = bind_local();
        addr.insert(token, s.local_addr().unwrap());
        b.add_socket(token, s).unwrap();
    }
    for token in 1..=3 {
        tx.send_to(format!("first {token}").as_bytes(), addr[&token]).unwrap();
    }
    let got = poll_until(&mut b, Duration::from_secs(5), |g| g.len() >= 3);
    assert_eq!(got.len(), 3);

    // Socket 1: receiving, nothing queued.
    b.remove_socket(1).unwrap();
    let rebound = UdpSocket::bind(addr[&1]).unwrap_or_else(|e| panic!("port of removed socket 1 not free: {e}"));
    // Socket 3: a datagram in flight when it is removed.
    tx.send_to(b"late 3", addr[&3]).unwrap();
    b.remove_socket(3).unwrap();
    assert_rebinds(addr[&3], "right after removing socket 3 with data in flight");

    tx.send_to(b"to the new owner", addr[&1]).unwrap();
    tx.send_to(b"second 2", addr[&2]).unwrap();
    let got = poll_until(&mut b, Duration::from_secs(5), |g| g.iter().any(|r| r.token == 2));
    assert!(got.iter().all(|r| r.token == 2), "only socket 2 delivers after removals: {got:?}");
    assert_eq!(got.last().unwrap().payload, b"second 2");
    let mut buf = [0u8; 64];
    rebound.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (n, _) = rebound.recv_from(&mut buf).expect("the rebound socket owns the port");
    assert_eq!(&buf[..n], b"to the new owner");
    assert!(poll_until_quiet(&mut b, Duration::from_millis(50), Duration::from_secs(1)).is_empty());

    // A socket that was never polled, and token reuse after removal.
    let s = bind_local();
    let a = s.local_addr().unwrap();
    b.add_socket(4, s).unwrap();
    b.remove_socket(4).unwrap();
    assert_rebinds(a, "right after removing a socket that was never polled");
    let s = bind_local();
    let a = s.local_addr().unwrap();
    b.add_socket(1, s).unwrap();
    tx.send_to(b"token 1 again", a).unwrap();
    let got = poll_until(&mut b, Duration::from_secs(5), |g| !g.is_empty());
    assert_eq!((got[0].token, got[0].payload.as_slice()), (1, &b"token 1 again"[..]));
}

/// `shutdown()` and drop both leave every port free for an immediate bind (no EADDRINUSE), also
/// with datagrams in flight.
pub fn ports_rebind_right_after_shutdown_and_drop<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) {
    for explicit in [true, false] {
        let Some(mut b) = make(BackendConfig { buffer_size: 2048, buffers: 64, batch: 8 }) else { return };
        let tx = bind_local();
        let mut addrs = Vec::new();
        for i in 0..8 {
            let s = bind_local();
            addrs.push(s.local_addr().unwrap());
            b.add_socket(i, s).unwrap();
        }
        for a in &addrs {
            tx.send_to(b"x", a).unwrap();
        }
        assert_eq!(poll_until(&mut b, Duration::from_secs(5), |g| g.len() >= 8).len(), 8);
        for a in &addrs {
            tx.send_to(b"in flight", a).unwrap();
        }
        if explicit {
            b.shutdown();
            for a in &addrs {
                assert_rebinds(*a, "right after shutdown()");
            }
            assert!(b.poll(Duration::ZERO, &mut |_| {}).is_err(), "poll after shutdown is an error");
            assert!(b.add_socket(99, bind_local()).is_err(), "add after shutdown is an error");
            b.shutdown();
            drop(b);
        } else {
            drop(b);
            for a in &addrs {
                assert_rebinds(*a, "right after drop");
            }
        }
    }
}

/// An idle `poll` returns after about its timeout; a zero timeout returns at once.
pub fn idle_poll_honours_the_timeout<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) {
    let Some(mut b) = make(BackendConfig::default()) else { return };
    b.add_socket(1, bind_local()).unwrap();
    let t = Instant::now();
    assert_eq!(b.poll(Duration::ZERO, &mut |_| panic!("nothing was sent")).unwrap(), 0);
    assert!(t.elapsed() < Duration::from_millis(50), "zero timeout took {:?}", t.elapsed());
    for ms in [100, 30] {
        let t = Instant::now();
        assert_eq!(b.poll(Duration::from_millis(ms), &mut |_| panic!("nothing was sent")).unwrap(), 0);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(ms) - Duration::from_millis(2) && took < Duration::from_millis(ms + 500),
            "poll({ms} ms) took {took:?}"
        );
    }
}

/// A socket with a tiny receive buffer, filled before any poll: the kernel's drop count arrives
/// with the next datagram received and accounts for every datagram not delivered.
pub fn kernel_drops_are_reported<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) {
    const SENT: u32 = 100;
    let Some(mut b) = make(BackendConfig { buffer_size: 2048, buffers: 256, batch: 8 }) else { return };
    let s = bind_local();
    set_rcvbuf(&s, 1024);
    let addr = s.local_addr().unwrap();
    b.add_socket(5, s).unwrap();
    let tx = bind_local();
    tx.set_nonblocking(false).unwrap();
    for i in 0..SENT {
        tx.send_to(&[i as u8; 200], addr).unwrap();
    }
    let mut got = poll_until_quiet(&mut b, Duration::from_millis(50), Duration::from_secs(5));
    tx.send_to(b"marker", addr).unwrap();
    got.extend(poll_until(&mut b, Duration::from_secs(5), |g| g.iter().any(|r| r.payload == b"marker")));
    let marker = got.iter().find(|r| r.payload == b"marker").expect("marker arrives");
    let drops = marker.kernel_drops.expect("the marker carries the socket's drop count");
    assert!(drops > 0);
    let received = got.len() as u32 - 1;
    assert!(received < SENT, "a ~2 KiB receive buffer cannot hold {SENT} datagrams of 200 bytes");
    assert_eq!(received + drops, SENT, "received {received} + dropped {drops}");
}

/// Built on one thread, used and dropped on another (the worker's life cycle).
pub fn built_on_one_thread_used_on_another<B: Backend + 'static>(make: impl Fn(BackendConfig) -> Option<B>) {
    let Some(mut b) = make(BackendConfig::default()) else { return };
    std::thread::spawn(move || {
        let s = bind_local();
        let addr = s.local_addr().unwrap();
        b.add_socket(9, s).unwrap();
        bind_local().send_to(b"across threads", addr).unwrap();
        let got = poll_until(&mut b, Duration::from_secs(5), |g| !g.is_empty());
        assert_eq!(got[0].payload, b"across threads");
        drop(b);
        assert_rebinds(addr, "after drop on the worker thread");
    })
    .join()
    .unwrap();
}

/// Registering a token twice and removing an unknown one are errors that name the token.
pub fn token_misuse_is_an_error<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) {
    let Some(mut b) = make(BackendConfig::default()) else { return };
    b.add_socket(3, bind_local()).unwrap();
    let e = b.add_socket(3, bind_local()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert!(e.to_string().contains('3'), "{e}");
    let e = b.remove_socket(4).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(e.to_string().contains('4'), "{e}");
    b.remove_socket(3).unwrap();
}

/// Datagrams that reach other sockets while one is being removed are delivered by the next
/// `poll`, in order, none lost (io_uring reaps them while waiting for the cancellation).
pub fn removal_keeps_other_sockets_datagrams<B: Backend>(make: impl Fn(BackendConfig) -> Option<B>) {
    let Some(mut b) = make(BackendConfig { buffer_size: 2048, buffers: 64, batch: 1 }) else { return };
    let tx = bind_local();
    let mut addrs = Vec::new();
    for token in 0..4 {
        let s = bind_local();
        addrs.push(s.local_addr().unwrap());
        b.add_socket(token, s).unwrap();
    }
    for a in &addrs {
        tx.send_to(b"warm-up", a).unwrap();
    }
    assert_eq!(poll_until(&mut b, Duration::from_secs(5), |g| g.len() >= 4).len(), 4);
    for round in 0..3 {
        for (token, a) in addrs.iter().enumerate().take(3) {
            tx.send_to(format!("before {round} {token}").as_bytes(), a).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    b.remove_socket(3).unwrap();
    for (token, a) in addrs.iter().enumerate().take(3) {
        tx.send_to(format!("after {token}").as_bytes(), a).unwrap();
    }
    let got = poll_until(&mut b, Duration::from_secs(5), |g| g.len() >= 12);
    assert_eq!(got.len(), 12, "{got:?}");
    for token in 0..3u64 {
        let mine: Vec<Vec<u8>> = got.iter().filter(|r| r.token == token).map(|r| r.payload.clone()).collect();
        let mut want: Vec<Vec<u8>> = (0..3).map(|round| format!("before {round} {token}").into_bytes()).collect();
        want.push(format!("after {token}").into_bytes());
        assert_eq!(mine, want, "token {token}");
    }
}
