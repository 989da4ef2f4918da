//! Socket plumbing shared by both back ends: enabling `SO_RXQ_OVFL`, and reading source addresses
//! and control messages as the kernel lays them out.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use super::Token;

/// `SO_RXQ_OVFL` from `<asm/socket.h>` (the `libc` crate does not export it for glibc targets).
#[cfg(target_arch = "sparc64")]
pub(super) const SO_RXQ_OVFL: libc::c_int = 0x0024;
/// `SO_RXQ_OVFL` from `<asm-generic/socket.h>` (the `libc` crate does not export it for glibc targets).
#[cfg(not(target_arch = "sparc64"))]
pub(super) const SO_RXQ_OVFL: libc::c_int = 40;

/// Control space for exactly one `SO_RXQ_OVFL` message (a `u32`): `CMSG_SPACE(4)`.
// SAFETY: CMSG_SPACE is pure arithmetic on its argument; it dereferences nothing.
pub(super) const CONTROL_LEN: usize = unsafe { libc::CMSG_SPACE(mem::size_of::<u32>() as u32) } as usize;

/// `CONTROL_LEN` in `u64` words, for control buffers aligned like `cmsghdr`.
pub(super) const CONTROL_WORDS: usize = CONTROL_LEN.div_ceil(mem::size_of::<u64>());

// The u64-word control buffers hold the whole control space.
const _: () = assert!(CONTROL_WORDS * mem::size_of::<u64>() >= CONTROL_LEN);

/// Room for any source address (`sockaddr_storage`).
pub(super) const NAME_LEN: usize = mem::size_of::<libc::sockaddr_storage>();

/// Source address reported when the kernel hands back a name that is neither IPv4 nor IPv6
/// (impossible for a UDP/IP socket; kept so that a malformed name never panics).
pub(super) const UNKNOWN_SRC: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Adds `what` to an error's message, keeping its kind.
pub(super) fn context(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Readies a socket handed to `add_socket`: non-blocking, and the kernel reports its drop count
/// (`SO_RXQ_OVFL`) with the datagrams it delivers.
pub(super) fn prepare_socket(token: Token, socket: &UdpSocket) -> io::Result<()> {
    socket.set_nonblocking(true).map_err(|e| context(e, format_args!("socket {token}: set non-blocking")))?;
    let on: libc::c_int = 1;
    // SAFETY: the fd is open (borrowed from `socket` for the call); the option value points at a
    // live c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_RXQ_OVFL,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(context(io::Error::last_os_error(), format_args!("socket {token}: setsockopt(SO_RXQ_OVFL)")));
    }
    Ok(())
}

/// Reads a `sockaddr_in` / `sockaddr_in6` from the bytes the kernel wrote (`name.len()` is the
/// length it reported, capped at the buffer). `None` for other families or short names.
pub(super) fn sockaddr_from_bytes(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match libc::c_int::from(family) {
        libc::AF_INET if name.len() >= mem::size_of::<libc::sockaddr_in>() => {
            let ip: [u8; 4] = name[4..8].try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 if name.len() >= mem::size_of::<libc::sockaddr_in6>() => {
            // Like std: flowinfo as stored (network order), scope id in host order.
            let flowinfo = u32::from_ne_bytes(name[4..8].try_into().ok()?);
            let ip: [u8; 16] = name[8..24].try_into().ok()?;
            let scope_id = u32::from_ne_bytes(name[24..28].try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope_id)))
        }
        _ => None,
    }
}

/// Finds the `SO_RXQ_OVFL` count among the control messages in `control` (the bytes the kernel
/// wrote, laid out as `CMSG_FIRSTHDR` / `CMSG_NXTHDR` walk them). The kernel attaches it only
/// once the socket has dropped something.
pub(super) fn rxq_ovfl(control: &[u8]) -> Option<u32> {
    const HDR: usize = mem::size_of::<libc::cmsghdr>();
    const ALIGN: usize = mem::size_of::<usize>();
    // SAFETY: CMSG_LEN is pure arithmetic on its argument.
    let data_off = unsafe { libc::CMSG_LEN(0) } as usize;
    let mut off = 0;
    while off + HDR <= control.len() {
        // SAFETY: `off + HDR <= control.len()`, so the HDR bytes read are inside the slice;
        // `read_unaligned` copes with any alignment and every bit pattern is a valid cmsghdr.
        let hdr = unsafe { control.as_ptr().add(off).cast::<libc::cmsghdr>().read_unaligned() };
        #[allow(clippy::unnecessary_cast)] // size_t on glibc, socklen_t on musl
        let len = hdr.cmsg_len as usize;
        if len < data_off || len > control.len() - off {
            return None;
        }
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == SO_RXQ_OVFL && len >= data_off + 4 {
            let at = off + data_off;
            return Some(u32::from_ne_bytes(control[at..at + 4].try_into().ok()?));
        }
        off += len.next_multiple_of(ALIGN);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn control_len_fits_one_u32_message() {
        assert_eq!(CONTROL_LEN, 24, "x86-64 / aarch64 layout: 16-byte header + 4 bytes, 8-aligned");
    }

    #[test]
    fn rxq_ovfl_parses_and_skips_other_messages() {
        let mut buf = Vec::new();
        // An unrelated message first (SOL_IP/IP_TTL with an int), then SO_RXQ_OVFL.
        for (level, ty, val) in [(libc::SOL_IP, libc::IP_TTL, 64u32), (libc::SOL_SOCKET, SO_RXQ_OVFL, 7u32)] {
            let len = 16 + 4usize;
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&level.to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&val.to_ne_bytes());
            buf.resize(buf.len().next_multiple_of(8), 0);
        }
        assert_eq!(rxq_ovfl(&buf), Some(7));
        assert_eq!(rxq_ovfl(&buf[..24]), None);
        assert_eq!(rxq_ovfl(&[]), None);
        // A length running past the end is rejected, not trusted.
        let mut bad = buf.clone();
        bad[..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(rxq_ovfl(&bad), None);
    }

    #[test]
    fn sockaddr_round_trips_v4_and_v6() {
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&5004u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(sockaddr_from_bytes(&v4), Some("10.1.2.3:5004".parse().unwrap()));
        assert_eq!(sockaddr_from_bytes(&v4[..8]), None);

        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&40000u16.to_be_bytes());
        v6[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        assert_eq!(sockaddr_from_bytes(&v6), Some("[::1]:40000".parse().unwrap()));
        assert_eq!(sockaddr_from_bytes(&[]), None);
    }
}
