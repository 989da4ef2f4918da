//! `callvault ctl`: a client for the control socket. Each subcommand builds one request, prints
//! the reply as one JSON line on stdout, and exits 0 when `ok` is true. `raw` sends lines as
//! given; `subscribe` prints event lines until interrupted. A reply that does not come within
//! the timeout (default [`DEFAULT_TIMEOUT`]) is an error, so a stuck daemon never hangs a script.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};

/// Exit code when the socket cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 4;
/// Exit code when the daemon answered `ok: false`.
pub const EXIT_REFUSED: u8 = 1;
/// How long `callvault ctl` waits for a reply unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected client.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    timeout: Option<Duration>,
}

/// The socket could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to control socket {path}: {source}{hint}")]
pub struct ConnectError {
    /// The socket.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
    /// What to try.
    pub hint: &'static str,
}

impl Client {
    /// Connects to the daemon's socket.
    pub fn connect(path: &Path) -> Result<Client, ConnectError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            let hint = match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    " (is `callvault serve` running? pass --socket or --config to point at it)"
                }
                io::ErrorKind::PermissionDenied => {
                    " (run as a user allowed by the socket's mode and [control] allow_uids/allow_gids)"
                }
                _ => "",
            };
            ConnectError { path: path.to_path_buf(), source, hint }
        })?;
        let writer =
            stream.try_clone().map_err(|source| ConnectError { path: path.to_path_buf(), source, hint: "" })?;
        Ok(Client { reader: BufReader::new(stream), writer, next_id: 1, timeout: None })
    }

    /// Sends `request` (an id is added if absent) and returns the reply, skipping event lines.
    pub fn request(&mut self, mut request: Value) -> io::Result<Value> {
        if let Value::Object(m) = &mut request
            && !m.contains_key("id")
        {
            m.insert("id".into(), json!(self.next_id));
            self.next_id += 1;
        }
        self.send_raw(&request.to_string())?;
        loop {
            let v = self.read_line()?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    /// Sends one line as is.
    pub fn send_raw(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(line.trim_end().as_bytes())?;
        self.writer.write_all(b"\n")
    }

    /// Reads one line as JSON. Past the timeout the error is of kind `TimedOut` and says so.
    pub fn read_line(&mut self) -> io::Result<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| match (e.kind(), self.timeout) {
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(t)) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no reply from the daemon within {} s (it accepted the connection but did not answer; \
                     --timeout SECONDS waits longer, 0 for ever)",
                    t.as_secs_f64()
                ),
            ),
            _ => e,
        })?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed the connection"));
        }
        serde_json::from_str(&line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad reply line: {e}")))
    }

    /// Bounds how long a read (waiting for a reply) or a write may block; `None`: for ever.
    pub fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(t)?;
        self.writer.set_write_timeout(t)?;
        self.timeout = t;
        Ok(())
    }
}

/// Parses `--leg LABEL[,source=IP[:PORT]][,mux][,channel=N]` plus the `--pt LABEL:PT=NAME/RATE`
/// entries that name it into a protocol leg object.
pub fn leg_object(spec: &str, pts: &[(String, String)]) -> Result<Value, String> {
    let mut parts = spec.split(',');
    let label = parts.next().unwrap_or_default().trim();
    if label.is_empty() {
        return Err(format!("--leg {spec:?}: a leg needs a label, e.g. --leg customer"));
    }
    let mut leg = json!({"label": label});
    for p in parts {
        match p.split_once('=') {
            Some(("source", v)) => leg["source"] = json!(v),
            Some(("channel", v)) => {
                leg["channel"] =
                    json!(v.parse::<u16>().map_err(|_| format!("--leg {spec:?}: channel must be a number"))?)
            }
            None if p == "mux" => leg["rtcp_mux"] = json!(true),
            _ => return Err(format!("--leg {spec:?}: unknown option {p:?} (use source=IP[:PORT], channel=N, mux)")),
        }
    }
    let mut map = Map::new();
    for (l, mapping) in pts {
        if l == label {
            let (pt, fmt) =
                mapping.split_once('=').ok_or_else(|| format!("--pt {l}:{mapping}: expected LABEL:PT=NAME/RATE"))?;
            map.insert(pt.to_string(), json!(fmt));
        }
    }
    if !map.is_empty() {
        leg["payload_types"] = Value::Object(map);
    }
    Ok(leg)
}

/// Parses `--timeout SECONDS`: a number of seconds (fractions allowed); 0 (zero, waits for
/// ever) is kept as [`Duration::ZERO`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?}: expected 0 (no timeout) or a number of seconds above 0"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `--meta key=value` pairs.
pub fn metadata(pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| format!("--meta {p:?}: expected KEY=VALUE"))?;
        m.insert(k.to_string(), json!(v));
    }
    Ok(m)
}

/// Splits `--pt LABEL:PT=NAME/RATE`.
pub fn parse_leg_pt(s: &str) -> Result<(String, String), String> {
    let (label, mapping) = s
        .split_once(':')
        .ok_or_else(|| format!("--pt {s:?}: expected LABEL:PT=NAME/RATE, e.g. customer:0=PCMU/8000"))?;
    Ok((label.to_string(), mapping.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legs_from_flags() {
        let pts = vec![("customer".to_string(), "101=telephone-event/8000".to_string())];
        let l = leg_object("customer,source=10.0.0.1:4000,mux", &pts).unwrap();
        assert_eq!(
            l,
            json!({"label":"customer","source":"10.0.0.1:4000","rtcp_mux":true,"payload_types":{"101":"telephone-event/8000"}})
        );
        assert!(leg_object(",mux", &[]).is_err());
        assert!(leg_object("a,colour=red", &[]).is_err());
        assert_eq!(metadata(&["agent=1001".into()]).unwrap()["agent"], "1001");
        assert!(parse_leg_pt("0=PCMU/8000").is_err());
        assert_eq!(parse_timeout("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_timeout("0").unwrap(), Duration::ZERO);
        assert!(parse_timeout("-1").is_err() && parse_timeout("soon").is_err() && parse_timeout("inf").is_err());
    }
}
