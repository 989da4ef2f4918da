//! The peer side by side: rtpengine (Debian's `rtpengine-daemon`, userspace, no kernel module)
//! forwarding every call and recording it to pcap, driven by its ng control protocol (bencode
//! dictionaries over UDP) as a SIP proxy would: `offer` and `answer` per call with
//! `record call`, `delete` at the end.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys;

/// A bencode value (just what ng uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Bencode {
    /// A byte string.
    Bytes(Vec<u8>),
    /// An integer.
    Int(i64),
    /// A list.
    List(Vec<Bencode>),
    /// A dictionary (keys sorted, as bencode wants).
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Bencode::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Bencode::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Parses one value from the front of `input`; returns it and the rest.
    fn decode(input: &[u8]) -> Option<(Bencode, &[u8])> {
        match *input.first()? {
            b'i' => {
                let end = input.iter().position(|&c| c == b'e')?;
                let v = std::str::from_utf8(&input[1..end]).ok()?.parse().ok()?;
                Some((Bencode::Int(v), &input[end + 1..]))
            }
            b'l' => {
                let mut rest = &input[1..];
                let mut list = Vec::new();
                while *rest.first()? != b'e' {
                    let (v, r) = Bencode::decode(rest)?;
                    list.push(v);
                    rest = r;
                }
                Some((Bencode::List(list), &rest[1..]))
            }
            b'd' => {
                let mut rest = &input[1..];
                let mut dict = BTreeMap::new();
                while *rest.first()? != b'e' {
                    let (Bencode::Bytes(k), r) = Bencode::decode(rest)? else { return None };
                    let (v, r) = Bencode::decode(r)?;
                    dict.insert(k, v);
                    rest = r;
                }
                Some((Bencode::Dict(dict), &rest[1..]))
            }
            b'0'..=b'9' => {
                let colon = input.iter().position(|&c| c == b':')?;
                let len: usize = std::str::from_utf8(&input[..colon]).ok()?.parse().ok()?;
                let body = input.get(colon + 1..colon + 1 + len)?;
                Some((Bencode::Bytes(body.to_vec()), &input[colon + 1 + len..]))
            }
            _ => None,
        }
    }

    fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Bencode::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

fn dict(entries: &[(&str, Bencode)]) -> Bencode {
    Bencode::Dict(entries.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect())
}

fn bytes(s: &str) -> Bencode {
    Bencode::Bytes(s.as_bytes().to_vec())
}

/// Where the rtpengine binary is, if installed.
pub fn find() -> Option<PathBuf> {
    ["/usr/bin/rtpengine", "/usr/sbin/rtpengine", "/usr/local/bin/rtpengine"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A running rtpengine with its ng socket.
pub struct Rtpengine {
    child: Child,
    ng: UdpSocket,
    cookie: u64,
    /// Where its pcap recordings go.
    pub recording_dir: PathBuf,
}

impl Rtpengine {
    /// Starts rtpengine in the foreground, pinned to `cpus` (one thread each), forwarding on ports
    /// `port_min..=port_max` and recording to pcap under `dir`.
    pub fn start(bin: &Path, dir: &Path, ng_port: u16, ports: (u16, u16), cpus: &[usize]) -> io::Result<Rtpengine> {
        let recording_dir = dir.join("recordings");
        std::fs::create_dir_all(&recording_dir)?;
        let log = std::fs::File::create(dir.join("rtpengine.log"))?;
        let mut cmd = Command::new(bin);
        sys::die_with_parent(&mut cmd);
        cmd.args([
            "--config-file=none",
            "--table=-1",
            "--interface=127.0.0.1",
            &format!("--listen-ng=127.0.0.1:{ng_port}"),
            &format!("--port-min={}", ports.0),
            &format!("--port-max={}", ports.1),
            "--foreground",
            "--log-stderr",
            "--log-level=4",
            "--recording-method=pcap",
            &format!("--recording-dir={}", recording_dir.display()),
            "--delete-delay=0",
            &format!("--num-threads={}", cpus.len()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        sys::pin_command(&mut cmd, cpus);
        let child = cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", bin.display())))?;
        let ng = UdpSocket::bind("127.0.0.1:0")?;
        ng.connect(("127.0.0.1", ng_port))?;
        ng.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut r = Rtpengine { child, ng, cookie: 0, recording_dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match r.request(dict(&[("command", bytes("ping"))])) {
                Ok(_) => return Ok(r),
                Err(e) if Instant::now() > deadline || matches!(r.child.try_wait(), Ok(Some(_))) => {
                    let status = match r.child.try_wait() {
                        Ok(Some(s)) => format!("it exited ({s})"),
                        _ => "it did not answer ping within 10 s".to_string(),
                    };
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    let log = std::fs::read_to_string(dir.join("rtpengine.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                    return Err(io::Error::other(format!(
                        "{} did not start: {status} ({e}); its log ends: {tail:?}",
                        bin.display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The process id, for CPU and memory readings.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&mut self, msg: Bencode) -> io::Result<Bencode> {
        self.cookie += 1;
        let cookie = format!("cv{}", self.cookie);
        let mut out = format!("{cookie} ").into_bytes();
        msg.encode(&mut out);
        self.ng.send(&out)?;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.ng.recv(&mut buf)?;
            let reply = &buf[..n];
            let Some(space) = reply.iter().position(|&c| c == b' ') else { continue };
            if &reply[..space] != cookie.as_bytes() {
                continue; // a late answer to an earlier request
            }
            let (v, _) = Bencode::decode(&reply[space + 1..])
                .ok_or_else(|| io::Error::other("rtpengine sent an undecodable reply"))?;
            if v.get("result").and_then(Bencode::text).as_deref() != Some("ok")
                && v.get("result").and_then(Bencode::text).as_deref() != Some("pong")
            {
                let reason = v.get("error-reason").and_then(Bencode::text).unwrap_or_else(|| format!("{v:?}"));
                return Err(io::Error::other(format!("rtpengine refused: {reason}")));
            }
            return Ok(v);
        }
    }

    /// Sets up call `id` between two endpoints that receive at `sink` and records it. Returns the
    /// rtpengine ports each side sends to: `[leg 0 (caller) → rtpengine, leg 1 (callee) → rtpengine]`.
    pub fn call(&mut self, id: &str, sink: SocketAddrV4) -> io::Result<[SocketAddrV4; 2]> {
        let sdp = |session: &str| {
            format!(
                "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
                ip = sink.ip(),
                port = sink.port()
            )
        };
        let offer = self.request(dict(&[
            ("command", bytes("offer")),
            ("call-id", bytes(id)),
            ("from-tag", bytes("caller")),
            ("sdp", bytes(&sdp("1"))),
            ("record call", bytes("yes")),
        ]))?;
        // The offer's SDP goes to the callee: where the callee sends to reach the caller.
        let callee_to = media_address(&offer)?;
        let answer = self.request(dict(&[
            ("command", bytes("answer")),
            ("call-id", bytes(id)),
            ("from-tag", bytes("caller")),
            ("to-tag", bytes("callee")),
            ("sdp", bytes(&sdp("2"))),
            ("record call", bytes("yes")),
        ]))?;
        let caller_to = media_address(&answer)?;
        Ok([caller_to, callee_to])
    }

    /// Ends call `id` (its pcap is closed).
    pub fn delete(&mut self, id: &str) -> io::Result<()> {
        self.request(dict(&[("command", bytes("delete")), ("call-id", bytes(id)), ("from-tag", bytes("caller"))]))
            .map(|_| ())
    }

    /// Stops it (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(mut self) {
        // SAFETY: kill with a pid this process spawned and has not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `c=` address and `m=audio` port of the SDP in an ng reply.
fn media_address(reply: &Bencode) -> io::Result<SocketAddrV4> {
    let sdp = reply.get("sdp").and_then(Bencode::text).ok_or_else(|| io::Error::other("rtpengine reply has no sdp"))?;
    let ip = sdp.lines().find_map(|l| l.trim().strip_prefix("c=IN IP4 ")).and_then(|v| v.trim().parse().ok());
    let port = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddrV4::new(ip, port)),
        _ => Err(io::Error::other(format!("no media address in rtpengine's SDP: {sdp:?}"))),
    }
}
