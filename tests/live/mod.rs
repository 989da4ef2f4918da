//! Harness for tests of the live daemon: starts a real `callvault serve` on loopback with its own
//! data directory and port range, talks to it over its socket, and stops it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_callvault")
}

/// A port range no other test in this process uses (tests run in parallel), inside the range
/// below Linux's ephemeral ports as the daemon's default is, offset by the process id so parallel
/// test binaries do not collide either.
pub fn port_range(pairs: u16) -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::SeqCst);
    let base = 16384 + ((std::process::id() as u16 % 16) * 1000 + slot * 200) % 16000;
    let base = base & !1;
    (base, base + pairs * 2 - 1)
}

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
}

pub struct Options {
    pub backend: &'static str,
    pub pairs: u16,
    pub extra: String,
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options { backend: "epoll", pairs: 50, extra: String::new(), env: Vec::new() }
    }
}

impl Daemon {
    pub fn start(opts: Options) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let (min, max) = port_range(opts.pairs);
        let config = format!(
            "data_dir = \"{}\"\n{}\n[rtp]\nport_min = {min}\nport_max = {max}\n[engine]\nbackend = \"{}\"\nworkers = 2\npin_threads = false\n{}",
            dir.path().join("data").display(),
            "",
            opts.backend,
            if opts.extra.contains("[metrics]") { "" } else { "[metrics]\nlisten = \"\"\n" },
        );
        // The API's default port is one for all: tests that want it configure [api].
        let config = if opts.extra.contains("[api]") { config } else { format!("{config}[api]\nlisten = \"\"\n") };
        // Recordings stay in the spool, where most tests read them, unless a test configures
        // [storage] (the storage tests do).
        let config =
            if opts.extra.contains("[storage") { config } else { format!("{config}[storage]\nship = false\n") };
        let config = merge(&config, &opts.extra);
        let cfg_path = dir.path().join("callvault.toml");
        std::fs::write(&cfg_path, config).unwrap();
        Daemon::spawn_with(dir, &cfg_path, &opts.env)
    }

    /// Like `start`, but when the io_uring back end was asked for and the kernel refuses it, the
    /// test is skipped with a notice, except under `CI`, where it fails.
    pub fn start_or_skip(opts: Options) -> Option<Daemon> {
        let wants_uring = opts.backend == "io_uring";
        let result = std::panic::catch_unwind(|| Daemon::start(opts));
        match result {
            Ok(d) => Some(d),
            Err(e) => {
                let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                if wants_uring && msg.contains("io_uring is unavailable") && std::env::var_os("CI").is_none() {
                    eprintln!("skipping: io_uring is unavailable here ({msg})");
                    return None;
                }
                std::panic::resume_unwind(e)
            }
        }
    }

    pub fn spawn(dir: tempfile::TempDir, cfg_path: &Path) -> Daemon {
        Daemon::spawn_with(dir, cfg_path, &[])
    }

    pub fn spawn_with(dir: tempfile::TempDir, cfg_path: &Path, env: &[(String, String)]) -> Daemon {
        let stderr_path = dir.path().join("daemon.log");
        let child = Command::new(bin())
            .args(["serve", "--config", cfg_path.to_str().unwrap()])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let socket = dir.path().join("data/control.sock");
        let mut d = Daemon { child: Some(child), dir, socket, stderr_path };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = d.client()
                && c.request(json!({"cmd": "health"}))["ok"] == json!(true)
            {
                return d;
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start ({status}): {}", d.log());
            }
            assert!(Instant::now() < deadline, "daemon did not come up: {}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new daemon on this one's data directory and configuration (after it was killed or
    /// stopped); this one keeps an empty directory.
    pub fn respawn(&mut self) -> Daemon {
        let cfg = self.dir.path().join("callvault.toml");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Daemon::spawn(dir, &cfg)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("data/spool")
    }

    pub fn client(&self) -> std::io::Result<Client> {
        Client::connect(&self.socket)
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // The `kill` tool keeps the test free of unsafe.
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop within 30 s of SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Appends `extra` TOML; keys in a table already present are merged by putting them right
/// after that table's header.
fn merge(base: &str, extra: &str) -> String {
    let mut out = base.to_string();
    let mut table = String::new();
    for line in extra.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.to_string();
            if !out.contains(&table) {
                out.push_str(&format!("{table}\n"));
            }
            continue;
        }
        if t.is_empty() {
            continue;
        }
        if table.is_empty() {
            out = format!("{t}\n{out}");
        } else {
            let at = out.find(&table).unwrap() + table.len() + 1;
            out.insert_str(at, &format!("{t}\n"));
        }
    }
    out
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub events: Vec<Value>,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client { reader: BufReader::new(s.try_clone()?), writer: s, events: Vec::new() })
    }

    pub fn send_line(&mut self, line: &[u8]) {
        self.writer.write_all(line).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    /// Reads the next non-event line (events are kept in `events`).
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.next_line().expect("a reply");
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    pub fn next_line(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))),
        }
    }

    pub fn request(&mut self, v: Value) -> Value {
        self.send_line(v.to_string().as_bytes());
        self.reply()
    }

    /// Waits for an event with this name (and call id, if given).
    pub fn wait_event(&mut self, name: &str, call_id: Option<&str>, timeout: Duration) -> Value {
        let matches = |e: &Value| e["event"] == name && call_id.is_none_or(|c| e["call_id"] == c);
        if let Some(i) = self.events.iter().position(matches) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(v) = self.next_line() {
                if matches(&v) {
                    return v;
                }
                self.events.push(v);
            }
        }
        panic!("no {name} event within {timeout:?}; saw {:?}", self.events);
    }
}

/// Sends `count` PCMU packets of 20 ms at real pace from `from` to `to`, payload byte `fill`.
pub fn send_pcmu(from: &UdpSocket, to: (&str, u16), ssrc: u32, count: u16, fill: u8) {
    let start = Instant::now();
    for i in 0..count {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&i.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(i) * 160).to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend(std::iter::repeat_n(fill, 160));
        from.send_to(&p, to).unwrap();
        let due = start + Duration::from_millis(20 * (u64::from(i) + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Reads a WAV file's samples (interleaved) and channel count. A sealed recording
/// (`.wav.cvs`, in a daemon's spool) is verified and decrypted with the daemon's keys
/// (`<data_dir>/keys`, beside the spool).
pub fn read_wav(path: &Path) -> (u16, Vec<i16>) {
    let bytes = if path.to_string_lossy().ends_with(".cvs") {
        decrypt(path)
    } else {
        std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut r =
        hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ch = r.spec().channels;
    (ch, r.samples::<i16>().map(Result::unwrap).collect())
}

/// The keys of the daemon whose spool holds `path`.
pub fn keys_for(path: &Path) -> callvault::seal::Keyring {
    let dir = path.parent().and_then(Path::parent).expect("a file in <data_dir>/spool").join("keys");
    callvault::seal::Keyring::load(&callvault::seal::KeySource::Dir(dir), None).expect("the daemon's keys")
}

/// Verifies and decrypts a sealed file of a daemon's spool.
pub fn decrypt(path: &Path) -> Vec<u8> {
    let keys = keys_for(path);
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = callvault::seal::SealedReader::open(f, &keys).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    r.verify(keys.trusted(), Some(&mut out)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out
}

pub fn channel(samples: &[i16], channels: u16, c: u16) -> Vec<i16> {
    samples.iter().skip(usize::from(c)).step_by(usize::from(channels)).copied().collect()
}
