//! RTP port allocation: even ports for RTP, the odd port above for RTCP (or one port with
//! rtcp-mux), handed out round-robin so a port just released is the last to be reused.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Why no ports could be had.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Every port in the range is allocated or could not be bound.
    #[error("RTP ports {min}-{max} exhausted: {calls} calls active; raise [rtp] port_max or lower [rtp] port_min")]
    Exhausted {
        /// Range start.
        min: u16,
        /// Range end.
        max: u16,
        /// Calls active when it happened.
        calls: usize,
    },
    /// A socket could not be bound for a reason other than its port being taken: the address is
    /// not this host's (EADDRNOTAVAIL), the ports need privilege (EACCES), and so on.
    #[error("cannot bind RTP socket on {addr}: {source}; check [rtp] bind and the port range")]
    Bind {
        /// The address and port that failed.
        addr: SocketAddr,
        /// The error from the kernel.
        source: io::Error,
    },
    /// The process ran out of file descriptors.
    #[error("out of file descriptors binding RTP sockets ({source}); raise LimitNOFILE or lower [limits] max_calls")]
    Descriptors {
        /// The error from the kernel.
        source: io::Error,
    },
}

/// A leg's bound sockets.
#[derive(Debug)]
pub struct LegPorts {
    /// The RTP port.
    pub port: u16,
    /// The RTP socket.
    pub rtp: UdpSocket,
    /// The RTCP socket on `port + 1`, unless rtcp-mux.
    pub rtcp: Option<UdpSocket>,
}

/// Hands out port pairs in `[min, max]`. Not used per packet; the control plane owns it.
#[derive(Debug)]
pub struct PortAllocator {
    bind: IpAddr,
    min: u16,
    max: u16,
    next: u16,
    in_use: Vec<bool>,
    receive_buffer: usize,
}

impl PortAllocator {
    /// An allocator for `[min, max]` (`min` even) binding on `bind`.
    pub fn new(bind: IpAddr, min: u16, max: u16, receive_buffer: usize) -> Self {
        PortAllocator { bind, min, max, next: min, in_use: vec![false; usize::from(max - min) + 1], receive_buffer }
    }

    /// Pairs in the range (RTP ports).
    pub fn capacity(&self) -> usize {
        // Even ports in [min, max] (min is even).
        usize::from(self.max - self.min) / 2 + 1
    }

    /// Pairs allocated now.
    pub fn allocated(&self) -> usize {
        self.in_use.iter().step_by(2).filter(|u| **u).count()
    }

    /// Binds the next free port (and port + 1 for RTCP unless `rtcp_mux`). Ports another process
    /// has (EADDRINUSE) are skipped. Ports refused for lack of permission (EACCES, EPERM: a
    /// privileged port, a security policy) are skipped too, and if no pair binds the first such
    /// error is reported rather than exhaustion; any other error (the address is not this
    /// host's, out of memory) is reported at once, as itself.
    pub fn allocate(&mut self, rtcp_mux: bool, calls_active: usize) -> Result<LegPorts, PortError> {
        let pairs = self.capacity();
        let mut refused: Option<PortError> = None;
        for _ in 0..pairs {
            let port = self.next;
            self.next = if u32::from(port) + 2 > u32::from(self.max) { self.min } else { port + 2 };
            let idx = usize::from(port - self.min);
            if self.in_use[idx] || (!rtcp_mux && u32::from(port) + 1 > u32::from(self.max)) {
                continue;
            }
            let rtp = match self.bind_one(port) {
                Ok(s) => s,
                Err(e) => match self.classify(port, e) {
                    Skip::Next(err) => {
                        refused = refused.or(err);
                        continue;
                    }
                    Skip::Fail(err) => return Err(err),
                },
            };
            let rtcp = if rtcp_mux {
                None
            } else {
                match self.bind_one(port + 1) {
                    Ok(s) => Some(s),
                    Err(e) => match self.classify(port + 1, e) {
                        Skip::Next(err) => {
                            refused = refused.or(err);
                            continue;
                        }
                        Skip::Fail(err) => return Err(err),
                    },
                }
            };
            self.in_use[idx] = true;
            return Ok(LegPorts { port, rtp, rtcp });
        }
        Err(refused.unwrap_or(PortError::Exhausted { min: self.min, max: self.max, calls: calls_active }))
    }

    fn classify(&self, port: u16, e: io::Error) -> Skip {
        let addr = SocketAddr::new(self.bind, port);
        match e.raw_os_error() {
            Some(libc::EADDRINUSE) => Skip::Next(None),
            Some(libc::EACCES) | Some(libc::EPERM) => Skip::Next(Some(PortError::Bind { addr, source: e })),
            _ if is_descriptor_exhaustion(&e) => Skip::Fail(PortError::Descriptors { source: e }),
            _ => Skip::Fail(PortError::Bind { addr, source: e }),
        }
    }

    /// Returns a port (the RTP port of a pair) to the pool.
    pub fn release(&mut self, port: u16) {
        if let Some(u) = port.checked_sub(self.min).and_then(|i| self.in_use.get_mut(usize::from(i))) {
            *u = false;
        }
    }

    fn bind_one(&self, port: u16) -> io::Result<UdpSocket> {
        let s = UdpSocket::bind(SocketAddr::new(self.bind, port))?;
        s.set_nonblocking(true)?;
        set_receive_buffer(&s, self.receive_buffer)?;
        Ok(s)
    }
}

/// What a failed bind means for the search.
enum Skip {
    /// Try the next pair (remembering why this one was refused, unless it was merely taken).
    Next(Option<PortError>),
    /// Stop: the error applies to every port.
    Fail(PortError),
}

fn is_descriptor_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Sets SO_RCVBUF (the kernel caps it at net.core.rmem_max; see kernel-tuning/).
pub fn set_receive_buffer(socket: &UdpSocket, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is valid for the socket's lifetime and `value` outlives the call; the length
    // passed is exactly the size of the c_int it points to.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_range(len: u16) -> u16 {
        // A range inside the ephemeral range is unlikely to be busy; find an even start that binds.
        for base in (40000..60000).step_by(200) {
            if (base..base + len).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
                return base;
            }
        }
        panic!("no free port range");
    }

    #[test]
    fn pairs_are_even_odd_and_round_robin() {
        let base = free_range(8);
        let mut a = PortAllocator::new(IpAddr::from([127, 0, 0, 1]), base, base + 7, 65536);
        let p1 = a.allocate(false, 0).unwrap();
        assert_eq!(p1.port, base);
        assert_eq!(p1.rtcp.as_ref().unwrap().local_addr().unwrap().port(), base + 1);
        let p2 = a.allocate(true, 0).unwrap();
        assert_eq!(p2.port, base + 2);
        assert!(p2.rtcp.is_none());
        a.release(p1.port);
        drop(p1);
        // Released ports are reused last.
        assert_eq!(a.allocate(false, 0).unwrap().port, base + 4);
        assert_eq!(a.allocated(), 2);
    }

    #[test]
    fn a_busy_port_is_skipped_and_exhaustion_names_the_range() {
        let base = free_range(4);
        let _squatter = UdpSocket::bind(("127.0.0.1", base)).unwrap();
        let mut a = PortAllocator::new(IpAddr::from([127, 0, 0, 1]), base, base + 3, 65536);
        let p = a.allocate(false, 0).unwrap();
        assert_eq!(p.port, base + 2);
        let e = a.allocate(false, 7).unwrap_err().to_string();
        assert!(e.contains(&format!("RTP ports {base}-{} exhausted: 7 calls active", base + 3)), "{e}");
        assert!(e.contains("port_max"), "{e}");
    }
}
