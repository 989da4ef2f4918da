//! What the daemon and its tools read of the host itself: a file system's free space and the
//! network namespace's protocol counters. (I/O layer: the `statvfs` call is the one `unsafe`.)

use std::io;
use std::path::Path;

/// Space on the file system holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// Size of the file system.
    pub total: u64,
}

/// `statvfs(2)` of `path` (which must exist).
pub fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{} contains a NUL byte", path.display())))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `st` is plain data for
    // statvfs to fill, read only when it returned 0.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    let frsize = st.f_frsize as u64;
    Ok(FsSpace {
        available: (st.f_bavail as u64).saturating_mul(frsize),
        total: (st.f_blocks as u64).saturating_mul(frsize),
    })
}

/// A counter from `/proc/net/snmp` text (a header line and a value line per protocol), e.g.
/// `parse_snmp(text, "Udp", "RcvbufErrors")`.
pub fn parse_snmp(text: &str, proto: &str, field: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}
