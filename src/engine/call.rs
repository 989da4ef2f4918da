//! One live call as its worker owns it: the sans-IO session, the spool files it writes while the
//! call runs, and how it is finalised (atomically: `.partial` files renamed, a sidecar written).

use std::fs;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::core::mixer::Layout;
use crate::core::session::{PauseMode, Session};
use crate::output::wav::{self, WavSpec, WavWriter};

/// Which datagrams a leg accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFilter {
    /// Any source.
    Any,
    /// Only this IP (any port).
    Ip(std::net::IpAddr),
    /// Only this IP and port.
    Addr(SocketAddr),
}

impl SourceFilter {
    /// Whether `src` may send on the leg.
    pub fn allows(self, src: SocketAddr) -> bool {
        match self {
            SourceFilter::Any => true,
            SourceFilter::Ip(ip) => src.ip() == ip,
            SourceFilter::Addr(a) => src == a,
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The ACD said `stop`.
    Stopped,
    /// `[limits] max_duration_s` reached.
    MaxDuration,
    /// Every leg silent for `[limits] silence_timeout_s`.
    SilenceTimeout,
    /// The daemon is shutting down (SIGTERM).
    Shutdown,
}

impl EndReason {
    /// The protocol's name.
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Stopped => "stopped",
            EndReason::MaxDuration => "max_duration",
            EndReason::SilenceTimeout => "silence_timeout",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// A leg's live state besides its timeline.
#[derive(Debug)]
pub struct LegLive {
    /// The ACD's label.
    pub label: String,
    /// RTP port.
    pub port: u16,
    /// RTCP port (None: rtcp-mux).
    pub rtcp_port: Option<u16>,
    /// Accepted sources.
    pub source: SourceFilter,
    /// Last source seen.
    pub last_src: Option<SocketAddr>,
    /// Monotonic ns of the last datagram (None: never).
    pub last_packet_ns: Option<u64>,
    /// Datagrams refused because of their source.
    pub wrong_source: u64,
    /// Datagrams cut because longer than the receive buffer.
    pub truncated: u64,
    /// Kernel drops reported on the leg's sockets (SO_RXQ_OVFL).
    pub kernel_drops: u64,
    /// A `leg_silent` event was sent for the current silence.
    pub silent_reported: bool,
    /// Position when the leg left (None: still in the call).
    pub left_ms: Option<u64>,
}

struct Output {
    partial: PathBuf,
    path: PathBuf,
    writer: Option<WavWriter<BufWriter<fs::File>>>,
}

/// A call in progress.
pub struct LiveCall {
    /// The ACD's id.
    pub call_id: String,
    /// The recording's ULID.
    pub recording_id: String,
    /// The ACD's metadata, kept in the sidecar.
    pub metadata: serde_json::Map<String, Value>,
    /// Timeline and mixing.
    pub session: Session,
    /// Per leg, in the session's order.
    pub legs: Vec<LegLive>,
    /// Wall-clock start (UTC), for the sidecar.
    pub started_at: SystemTime,
    /// Monotonic start.
    pub started_ns: u64,
    spool: PathBuf,
    stem: String,
    outputs: Vec<Output>,
    /// The first write error; the call is failed and finalised as far as possible.
    pub failure: Option<String>,
}

/// What a finished call left in the spool.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The recording's summary, as the sidecar holds it.
    pub summary: Value,
    /// Whether it failed.
    pub failed: bool,
}

impl LiveCall {
    /// Sets up the call and creates its spool files.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        call_id: String,
        recording_id: String,
        metadata: serde_json::Map<String, Value>,
        session: Session,
        legs: Vec<LegLive>,
        spool: &Path,
        started_at: SystemTime,
        started_ns: u64,
    ) -> Result<LiveCall, wav::WavError> {
        let stem = format!("{}-{}", crate::import::sanitise(&call_id), recording_id);
        let mut call = LiveCall {
            call_id,
            recording_id,
            metadata,
            session,
            legs,
            started_at,
            started_ns,
            spool: spool.to_path_buf(),
            stem,
            outputs: Vec::new(),
            failure: None,
        };
        for i in 0..call.session.outputs() {
            call.open_output(i)?;
        }
        // A sidecar from the first moment: after a crash, start-up recovery knows whose
        // recording a `.partial` file is.
        let sidecar = call.sidecar_path();
        write_atomically(&sidecar, &call.summary(None, started_ns, &[])).map_err(|source| wav::WavError::File {
            path: sidecar,
            action: "write",
            source,
        })?;
        Ok(call)
    }

    fn open_output(&mut self, index: usize) -> Result<(), wav::WavError> {
        let name = if self.session.layout() == Layout::Separate {
            format!("{}-{}-{}.wav", self.stem, index, crate::import::sanitise(&self.legs[index].label))
        } else {
            format!("{}.wav", self.stem)
        };
        let path = self.spool.join(name);
        let partial = path.with_extension("wav.partial");
        let spec = WavSpec { channels: self.session.channels(), sample_rate: self.session.recording().sample_rate() };
        let writer = wav::create_file(&partial, spec)?;
        self.outputs.push(Output { partial, path, writer: Some(writer) });
        Ok(())
    }

    fn sidecar_path(&self) -> PathBuf {
        self.spool.join(format!("{}.json", self.stem))
    }

    /// Adds a leg's output file (separate layout) after `Session::add_leg`.
    pub fn leg_added(&mut self, leg: LegLive) -> Result<(), wav::WavError> {
        self.legs.push(leg);
        if self.session.outputs() > self.outputs.len() {
            self.open_output(self.outputs.len())?;
        }
        Ok(())
    }

    /// Writes what the session has made final. A write error fails the call (kept on disk as
    /// `.partial`, recoverable with `callvault repair`).
    pub fn pump(&mut self, now_ns: u64) {
        let outputs = &mut self.outputs;
        let failure = &mut self.failure;
        self.session.poll(now_ns, &mut |o, samples| {
            if failure.is_some() {
                return;
            }
            if let Some(w) = outputs.get_mut(o).and_then(|x| x.writer.as_mut())
                && let Err(e) = w.write_samples(samples)
            {
                *failure = Some(format!("writing {}: {e}", outputs[o].partial.display()));
            }
        });
    }

    /// Pauses or resumes.
    pub fn set_paused(
        &mut self,
        now_ns: u64,
        pause: Option<PauseMode>,
    ) -> Result<(), crate::core::session::SessionError> {
        match pause {
            Some(mode) => self.session.pause(now_ns, mode),
            None => self.session.resume(now_ns),
        }
    }

    /// Milliseconds since start.
    pub fn age_ms(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.started_ns) / 1_000_000
    }

    /// Ends the call: drains the timeline, finalises the files and writes the sidecar.
    pub fn finalize(mut self, reason: EndReason, now_ns: u64) -> Finished {
        self.session.finish(now_ns);
        self.pump(u64::MAX);
        let mut files = Vec::new();
        for (i, out) in self.outputs.iter_mut().enumerate() {
            let Some(w) = out.writer.take() else { continue };
            if self.failure.is_some() {
                // Flush what we have; the header is repairable from the data present.
                let mut w = w;
                let _ = w.flush();
                continue;
            }
            let expected = self.session.frames_written(i);
            let done = w.finalize(expected).and_then(|_| {
                fs::rename(&out.partial, &out.path).map_err(|source| wav::WavError::File {
                    path: out.path.clone(),
                    action: "rename into place",
                    source,
                })
            });
            match done {
                Ok(()) => files.push(out.path.clone()),
                Err(e) => self.failure = Some(e.to_string()),
            }
        }
        let summary = self.summary(Some(reason), now_ns, &files);
        let sidecar = self.sidecar_path();
        if let Err(e) = write_atomically(&sidecar, &summary) {
            self.failure.get_or_insert(format!("writing {}: {e}", sidecar.display()));
        }
        if let Err(e) = fs::File::open(&self.spool).and_then(|d| d.sync_all()) {
            self.failure.get_or_insert(format!("syncing {}: {e}", self.spool.display()));
        }
        let failed = self.failure.is_some();
        let mut summary = summary;
        if let Some(f) = &self.failure {
            summary["error"] = json!(f);
            summary["partial_files"] =
                json!(self.outputs.iter().map(|o| o.partial.display().to_string()).collect::<Vec<_>>());
        }
        Finished { summary, failed }
    }

    /// The recording as JSON: for `status`, `stop` and the sidecar.
    pub fn summary(&self, reason: Option<EndReason>, now_ns: u64, files: &[PathBuf]) -> Value {
        let rate = u64::from(self.session.recording().sample_rate());
        let ms = |pos: i64| (pos.max(0) as u64) * 1000 / rate;
        let abs = |p: &PathBuf| fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string();
        let legs: Vec<Value> = self
            .session
            .recording()
            .legs()
            .iter()
            .zip(&self.legs)
            .enumerate()
            .map(|(i, (leg, live))| {
                let s = leg.stats();
                let dtmf: Vec<Value> = self
                    .session
                    .leg_events(i)
                    .iter()
                    .map(|e| {
                        let mut v = json!({"offset_ms": ms(e.start), "duration_ms": e.duration_ms});
                        if let Some(d) = e.digit {
                            v["digit"] = json!(d.to_string());
                        }
                        v
                    })
                    .collect();
                json!({
                    "label": live.label,
                    "channel": self.session.leg_channel(i),
                    "file": if self.session.layout() == Layout::Separate { files.get(i).map(abs) } else { None },
                    "port": live.port,
                    "rtcp_port": live.rtcp_port,
                    "joined_ms": ms(self.session.leg_joined_at(i)),
                    "left_ms": live.left_ms,
                    "start_offset_ms": leg.start().map(ms),
                    "src": live.last_src.map(|a| a.to_string()),
                    "ssrcs": leg.ssrcs().iter().map(|s| format!("0x{s:08x}")).collect::<Vec<_>>(),
                    "payload_types": leg.seen_formats().iter().map(|(pt, f)| (pt.to_string(), json!(f))).collect::<serde_json::Map<_, _>>(),
                    "packets": s.packets,
                    "lost": leg.lost(),
                    "late": s.late,
                    "duplicates": s.duplicates,
                    "reordered": s.reordered,
                    "ssrc_changes": s.ssrc_changes,
                    "discontinuities": s.discontinuities,
                    "rtcp_packets": s.rtcp_packets,
                    "malformed": s.malformed,
                    "unknown_payload_type": s.unknown_payload_type,
                    "wrong_source": live.wrong_source,
                    "truncated": live.truncated,
                    "kernel_drops": live.kernel_drops,
                    "silent": s.audio_packets == 0,
                    "unsupported_codec": leg.unsupported_codec(),
                    "last_packet_age_ms": live.last_packet_ns.map(|t| now_ns.saturating_sub(t) / 1_000_000),
                    "dtmf": dtmf,
                })
            })
            .collect();
        let frames = self.session.frames_written(0);
        json!({
            "recording_id": self.recording_id,
            "call_id": self.call_id,
            "started_at": rfc3339(self.started_at),
            "state": match reason { Some(_) => "finished", None if self.session.is_paused() => "paused", None => "recording" },
            "end_reason": reason.map(EndReason::name),
            "file": if self.session.layout() == Layout::Separate { None } else { files.first().map(abs) },
            "layout": self.session.layout().name(),
            "sample_rate": rate,
            "channels": self.session.channels(),
            "duration_ms": frames * 1000 / rate,
            "elapsed_ms": self.age_ms(now_ns),
            "pauses": self.session.pauses().iter().map(|p| json!({
                "start_ms": ms(p.start),
                "end_ms": if p.end == i64::MAX { None } else { Some(ms(p.end)) },
                "mode": p.mode.name(),
            })).collect::<Vec<_>>(),
            "metadata": self.metadata,
            "legs": legs,
        })
    }
}

/// Writes `value` to `path` via a temporary file and a rename, so readers never see half.
pub fn write_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(value).unwrap_or_default().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// `2026-12-03T21:22:57.123Z`
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Finishes what a crash left in the spool: every `….wav.partial` is repaired (header sizes set
/// from the data present, a trailing partial frame cut) and renamed into place, and its sidecar
/// is marked `"end_reason": "crash_recovered"`. Returns one summary per recovered file; a file
/// that cannot be repaired is left as it is and reported with its error.
pub fn recover_spool(spool: &Path) -> Vec<Value> {
    let Ok(entries) = fs::read_dir(spool) else { return Vec::new() };
    let mut partials: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".wav.partial"))
        .collect();
    partials.sort();
    let mut out = Vec::new();
    for partial in partials {
        let path = partial.with_extension("");
        let result = if path.exists() {
            Err(wav::WavError::WouldReplace { path: path.clone() })
        } else {
            wav::repair(&partial).and_then(|r| {
                fs::hard_link(&partial, &path).and_then(|()| fs::remove_file(&partial)).map_err(|source| {
                    wav::WavError::File { path: path.clone(), action: "rename repaired file to", source }
                })?;
                Ok(r)
            })
        };
        // `<stem>.wav` or `<stem>-<n>-<label>.wav` (separate): the sidecar is `<stem>.json`.
        let stem_sidecar = sidecar_for(&path);
        let mut summary = stem_sidecar
            .as_ref()
            .and_then(|p| fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or_else(|| json!({}));
        match result {
            Ok(r) => {
                summary["state"] = json!("finished");
                summary["end_reason"] = json!("crash_recovered");
                let rate = summary["sample_rate"].as_u64().unwrap_or(8000).max(1);
                summary["duration_ms"] = json!(r.frames * 1000 / rate);
                let files = summary["recovered_files"].as_array().cloned().unwrap_or_default();
                let mut files = files;
                files.push(json!(fs::canonicalize(&path).unwrap_or(path.clone()).display().to_string()));
                summary["recovered_files"] = json!(files);
                if summary["layout"] != "separate" {
                    summary["file"] = files[0].clone();
                }
                if let Some(p) = &stem_sidecar
                    && let Err(e) = write_atomically(p, &summary)
                {
                    crate::log::warn(&format!("recovery: cannot update {}: {e}", p.display()));
                }
                crate::log::warn(&format!(
                    "recovered {} ({} frames) left unfinished by a crash",
                    path.display(),
                    r.frames
                ));
            }
            Err(e) => {
                crate::log::error(&format!("recovery: {}: {e}", partial.display()));
                summary["error"] = json!(e.to_string());
                summary["partial_files"] = json!([partial.display().to_string()]);
            }
        }
        out.push(summary);
    }
    if !out.is_empty() {
        let _ = fs::File::open(spool).and_then(|d| d.sync_all());
    }
    out
}

/// The sidecar of a recording file: the longest `<prefix>.json` that exists.
fn sidecar_for(wav: &Path) -> Option<PathBuf> {
    let name = wav.file_name()?.to_str()?.strip_suffix(".wav")?;
    let dir = wav.parent()?;
    let mut prefix = name;
    loop {
        let candidate = dir.join(format!("{prefix}.json"));
        if candidate.exists() {
            return Some(candidate);
        }
        prefix = &prefix[..prefix.rfind('-')?];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_332_977_123);
        assert_eq!(rfc3339(t), "2026-12-03T21:22:57.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn source_filters() {
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        assert!(SourceFilter::Any.allows(a));
        assert!(SourceFilter::Ip(a.ip()).allows(a));
        assert!(!SourceFilter::Ip("10.0.0.2".parse().unwrap()).allows(a));
        assert!(!SourceFilter::Addr("10.0.0.1:4001".parse().unwrap()).allows(a));
    }
}
