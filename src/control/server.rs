//! The socket itself: binding (refusing to steal a live daemon's socket), who may connect
//! (file mode plus SO_PEERCRED allow-list), and one thread per connection reading bounded lines.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::protocol::MAX_LINE;
use super::{ConnContext, Control, WRITE_TIMEOUT};

/// The socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process answers on the socket.
    #[error("control socket {0} is in use by a running callvault; stop it first or set [control] socket")]
    InUse(PathBuf),
    /// Binding or setting the mode failed.
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Binds the control socket at `path` with file mode `mode`. A stale socket file (left by a
/// crash) is replaced; one a live process answers on is not.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let err = |source| SocketError::Bind { path: path.to_path_buf(), source };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// A peer's credentials.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Reads the peer's credentials (SO_PEERCRED).
pub fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is open for the stream's lifetime; `cred` and `len` are valid for writes and
    // `len` holds the size of `cred`, which the kernel does not exceed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred { pid: cred.pid, uid: cred.uid, gid: cred.gid })
}

/// Whether a peer may use the socket: root, the daemon's own user, or the allow-lists.
pub fn permitted(cred: PeerCred, own_uid: u32, allow_uids: &[u32], allow_gids: &[u32]) -> bool {
    cred.uid == 0 || cred.uid == own_uid || allow_uids.contains(&cred.uid) || allow_gids.contains(&cred.gid)
}

fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Accepts connections until the listener fails; each gets its own thread.
pub fn serve(listener: UnixListener, control: Arc<Control>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let me = own_uid();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                crate::log::warn(&format!("control socket: accept failed: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let c = control.clone();
        let spawned = std::thread::Builder::new().name(format!("ctl-{id}")).spawn(move || {
            if let Err(e) = connection(stream, id, me, &c) {
                crate::log::warn(&format!("control connection {id}: {e}"));
            }
        });
        if let Err(e) = spawned {
            crate::log::error(&format!("control socket: cannot start a connection thread: {e}"));
        }
    }
}

fn write_line(out: &Mutex<UnixStream>, value: &Value) -> io::Result<()> {
    let mut text = value.to_string();
    text.push('\n');
    out.lock().unwrap_or_else(|p| p.into_inner()).write_all(text.as_bytes())
}

fn connection(stream: UnixStream, id: u64, me: u32, control: &Control) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let out = Arc::new(Mutex::new(stream.try_clone()?));
    let cred = peer_cred(&stream)?;
    let cfg = &control.cfg.control;
    if !permitted(cred, me, &cfg.allow_uids, &cfg.allow_gids) {
        crate::log::warn(&format!("control socket: refused uid {} gid {} (pid {})", cred.uid, cred.gid, cred.pid));
        if let Some(log) = control.audit_log() {
            log.record(crate::audit::Entry {
                actor: super::control_actor(Some(cred.uid)),
                action: "connect".into(),
                target: String::new(),
                source: "control socket".into(),
                result: "denied".into(),
                detail: json!({"gid": cred.gid, "pid": cred.pid}),
            });
        }
        let msg = format!(
            "uid {} (gid {}) may not use this socket; add it to [control] allow_uids or allow_gids",
            cred.uid, cred.gid
        );
        return write_line(&out, &json!({"id": null, "ok": false, "error": {"code": "not_permitted", "message": msg}}));
    }
    let clients = control.clients.fetch_add(1, Ordering::SeqCst) + 1;
    struct Leave<'a>(&'a Control, u64);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.clients.fetch_sub(1, Ordering::SeqCst);
            self.0.disconnected(self.1);
        }
    }
    let _leave = Leave(control, id);
    if clients > cfg.max_clients {
        let msg = format!("{} clients connected, the maximum ([control] max_clients)", cfg.max_clients);
        return write_line(
            &out,
            &json!({"id": null, "ok": false, "error": {"code": "too_many_clients", "message": msg}}),
        );
    }
    let ctx = ConnContext {
        id,
        out: out.clone(),
        pending_events: Mutex::new(Vec::new()),
        event_writer: Mutex::new(None),
        peer_uid: Some(cred.uid),
    };
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = Vec::new();
    loop {
        match read_bounded_line(&mut reader, &mut line, MAX_LINE)? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                let msg = format!("request line longer than {MAX_LINE} bytes; it was skipped");
                write_line(
                    &out,
                    &json!({"id": null, "ok": false, "error": {"code": "line_too_long", "message": msg}}),
                )?;
            }
            Line::Complete => {
                let trimmed = line.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                let reply = control.handle_line(trimmed, &ctx);
                write_line(&out, &reply)?;
                let pending: Vec<Value> =
                    std::mem::take(&mut *ctx.pending_events.lock().unwrap_or_else(|p| p.into_inner()));
                for e in pending {
                    write_line(&out, &e)?;
                }
                if let Some(writer) = ctx.event_writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    writer.spawn()?;
                }
            }
        }
    }
}

/// The outcome of reading one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// `buf` holds a line (newline removed).
    Complete,
    /// The line exceeded the limit; it was consumed up to its newline and dropped.
    TooLong,
    /// The peer closed the connection (a last unterminated line is returned as Complete first).
    Eof,
}

/// Reads one line of at most `max` bytes into `buf`, never buffering more than that.
pub fn read_bounded_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = found.unwrap_or(available.len());
        reader.consume(used);
        if found.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Complete });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_resynchronise() {
        let data = format!("{{\"a\":1}}\n{}\n{{\"b\":2}}\nlast", "x".repeat(100));
        let mut r = BufReader::with_capacity(8, data.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_bounded_line(&mut r, &mut buf, 50).unwrap(), Line::Complete);
        assert_eq!(buf, b"{\"a\":1}");
        assert_eq!(read_bounded_line(&mut r, &mut buf, 50).unwrap(), Line::TooLong);
        assert_eq!(read_bounded_line(&mut r, &mut buf, 50).unwrap(), Line::Complete);
        assert_eq!(buf, b"{\"b\":2}");
        assert_eq!(read_bounded_line(&mut r, &mut buf, 50).unwrap(), Line::Complete);
        assert_eq!(buf, b"last");
        assert_eq!(read_bounded_line(&mut r, &mut buf, 50).unwrap(), Line::Eof);
    }

    #[test]
    fn permissions() {
        let c = |uid, gid| PeerCred { pid: 1, uid, gid };
        assert!(permitted(c(0, 0), 1000, &[], &[]));
        assert!(permitted(c(1000, 5), 1000, &[], &[]));
        assert!(!permitted(c(1001, 5), 1000, &[], &[]));
        assert!(permitted(c(1001, 5), 1000, &[1001], &[]));
        assert!(permitted(c(1002, 7), 1000, &[], &[7]));
    }

    #[test]
    fn a_live_socket_is_not_stolen_but_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let live = bind(&path, 0o600).unwrap();
        assert!(matches!(bind(&path, 0o600), Err(SocketError::InUse(_))));
        drop(live);
        // The file remains (as after a crash); binding again replaces it.
        assert!(path.exists());
        let _again = bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
