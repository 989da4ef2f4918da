//! One live call as its worker owns it: the sans-IO session, the spool files it writes while the
//! call runs, and how it is finalised (atomically: `.partial` files renamed, a sidecar written).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::core::mixer::Layout;
use crate::core::session::{PauseMode, Session};
use crate::output::encode::{Format, is_audio_name, strip_audio_ext};
use crate::output::sealed::{self, AudioFile, Sealing};
use crate::output::wav::{self, WavSpec};

/// Where calls write: the spool directory, and the keys when recordings are sealed.
#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
    /// `None`: `[recording] encryption = "off"`, plain WAV and JSON.
    pub sealing: Option<Arc<Sealing>>,
}

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
    /// Writing the recording failed (disk full, I/O error): ended by the recorder, not the ACD.
    WriteFailed,
}

impl EndReason {
    /// The protocol's name.
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Stopped => "stopped",
            EndReason::MaxDuration => "max_duration",
            EndReason::SilenceTimeout => "silence_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::WriteFailed => "write_failed",
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
    writer: Option<AudioFile>,
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
    sealing: Option<Arc<Sealing>>,
    /// The file format of its audio.
    format: Format,
    stem: String,
    outputs: Vec<Output>,
    /// Per output file, its seal record's digests (sealed recordings).
    seals: Vec<Value>,
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
    /// Its legs' counters and the audio bytes it wrote, for the worker's metrics.
    pub totals: (crate::engine::LegTotals, u64),
    /// Each leg's final interarrival jitter (legs that sent), seconds.
    pub jitters: Vec<f64>,
}

impl LiveCall {
    /// Sets up the call and creates its spool files.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        call_id: String,
        recording_id: String,
        metadata: serde_json::Map<String, Value>,
        format: Format,
        session: Session,
        legs: Vec<LegLive>,
        spool: &Spool,
        started_at: SystemTime,
        started_ns: u64,
    ) -> Result<LiveCall, wav::WavError> {
        // Sealed files carry only the recording id in their names: a call id may hold a number.
        let stem = match &spool.sealing {
            Some(_) => recording_id.clone(),
            None => format!("{}-{}", crate::import::sanitise(&call_id), recording_id),
        };
        let mut call = LiveCall {
            call_id,
            recording_id,
            metadata,
            session,
            legs,
            started_at,
            started_ns,
            spool: spool.dir.clone(),
            sealing: spool.sealing.clone(),
            format,
            stem,
            outputs: Vec::new(),
            seals: Vec::new(),
            failure: None,
        };
        let opened = (0..call.session.outputs()).try_for_each(|i| call.open_output(i)).and_then(|()| {
            // A sidecar from the first moment: after a crash, start-up recovery knows whose
            // recording a `.partial` file is.
            let sidecar = call.sidecar_path();
            call.write_sidecar(&call.summary(None, started_ns, &[])).map_err(|source| wav::WavError::File {
                path: sidecar,
                action: "write",
                source,
            })
        });
        match opened {
            Ok(()) => Ok(call),
            Err(e) => {
                // The start is refused: nothing it created may stay behind for recovery to find.
                call.discard();
                Err(e)
            }
        }
    }

    /// Removes every file the call created (its `.partial` files and its sidecar): for a call
    /// whose start failed, which the ACD was told never began.
    pub fn discard(mut self) {
        for out in self.outputs.drain(..) {
            drop(out.writer);
            remove_if_present(&out.partial);
        }
        let sidecar = self.sidecar_path();
        remove_if_present(&sidecar.with_extension("json.tmp"));
        remove_if_present(&sealed::tmp_path(&sidecar));
        remove_if_present(&sidecar);
        let _ = fs::File::open(&self.spool).and_then(|d| d.sync_all());
    }

    fn open_output(&mut self, index: usize) -> Result<(), wav::WavError> {
        let ext = match self.sealing {
            Some(_) => format!("{}.cvs", self.format.ext()),
            None => self.format.ext().to_string(),
        };
        let name = if self.session.layout() == Layout::Separate && self.sealing.is_some() {
            // A label may be a name or a number: sealed files carry only the leg's index.
            format!("{}-{}.{ext}", self.stem, index)
        } else if self.session.layout() == Layout::Separate {
            format!("{}-{}-{}.{ext}", self.stem, index, crate::import::sanitise(&self.legs[index].label))
        } else {
            format!("{}.{ext}", self.stem)
        };
        let path = self.spool.join(name);
        let partial = partial_path(&path);
        let spec = WavSpec::pcm(self.session.recording().sample_rate(), self.session.channels());
        let output = (self.session.layout() == Layout::Separate).then_some(index);
        let index = || sealed::audio_index(&self.recording_id, &rfc3339(self.started_at), output);
        let writer = AudioFile::create(&partial, self.format, spec, self.sealing.as_ref(), &self.recording_id, index)
            .inspect_err(|e| {
            // Created but its header could not be written (disk full): a 0-byte file that is
            // nobody's recording. A file that already existed is not ours to remove.
            let existed =
                matches!(e, wav::WavError::File { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists);
            if !existed {
                remove_if_present(&partial);
            }
        })?;
        self.outputs.push(Output { partial, path, writer: Some(writer) });
        Ok(())
    }

    fn sidecar_path(&self) -> PathBuf {
        match self.sealing {
            Some(_) => self.spool.join(format!("{}.{}", self.stem, sealed::META_EXT)),
            None => self.spool.join(format!("{}.json", self.stem)),
        }
    }

    /// Writes the sidecar (sealed when recordings are), atomically.
    fn write_sidecar(&self, summary: &Value) -> std::io::Result<()> {
        let path = self.sidecar_path();
        match &self.sealing {
            Some(s) => write_sealed_sidecar(&path, summary, s),
            None => write_atomically(&path, summary),
        }
    }

    /// Rewrites the sidecar with the call as it stands (after a pause, a resume, a leg joining or
    /// leaving), so that recovery after a crash reports them. A failure is logged: the audio
    /// goes on.
    pub fn save_sidecar(&self, now_ns: u64) {
        if let Err(e) = self.write_sidecar(&self.summary(None, now_ns, &[])) {
            crate::log::warn(&format!("cannot update {}: {e}", self.sidecar_path().display()));
        }
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
        let totals = self.totals();
        let jitters =
            self.session.recording().legs().iter().filter(|l| l.stats().packets > 0).map(|l| l.jitter_s()).collect();
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
            let done = w.finalize(expected).and_then(|(_, record)| {
                fs::rename(&out.partial, &out.path).map_err(|source| wav::WavError::File {
                    path: out.path.clone(),
                    action: "rename into place",
                    source,
                })?;
                Ok(record)
            });
            match done {
                Ok(record) => {
                    files.push(out.path.clone());
                    if let (Some(r), Some(s)) = (record, &self.sealing) {
                        let mut v = sealed::seal_summary(&r, s.keys.active_kek().map_or("", |k| k.id.as_str()));
                        v["file"] =
                            json!(fs::canonicalize(&out.path).unwrap_or(out.path.clone()).display().to_string());
                        self.seals.push(v);
                    }
                }
                Err(e) => self.failure = Some(e.to_string()),
            }
        }
        let mut summary = self.summary(Some(reason), now_ns, &files);
        if let Some(f) = &self.failure {
            // In the sidecar too, where the disk allows: recovery at the next start then knows
            // the file was left by this failure, not by a crash.
            summary["error"] = json!(f);
            summary["partial_files"] =
                json!(self.outputs.iter().map(|o| o.partial.display().to_string()).collect::<Vec<_>>());
        }
        let sidecar = self.sidecar_path();
        if let Err(e) = self.write_sidecar(&summary) {
            self.failure.get_or_insert(format!("writing {}: {e}", sidecar.display()));
        }
        if let Err(e) = fs::File::open(&self.spool).and_then(|d| d.sync_all()) {
            self.failure.get_or_insert(format!("syncing {}: {e}", self.spool.display()));
        }
        let failed = self.failure.is_some();
        if let Some(f) = &self.failure {
            summary["error"] = json!(f);
            summary["partial_files"] =
                json!(self.outputs.iter().map(|o| o.partial.display().to_string()).collect::<Vec<_>>());
        }
        Finished { summary, failed, totals, jitters }
    }

    /// Its legs' counters and the audio bytes written so far.
    pub fn totals(&self) -> (crate::engine::LegTotals, u64) {
        let mut t = crate::engine::LegTotals::default();
        for leg in self.session.recording().legs() {
            t.add_leg(leg);
        }
        let s = &self.session;
        let bytes = (0..s.outputs()).map(|o| s.frames_written(o) * u64::from(s.channels()) * 2).sum();
        (t, bytes)
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
                    "ahead": s.ahead,
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
                    "concealed": s.concealed,
                    "decode_errors": s.decode_errors,
                    "comfort_noise_packets": s.comfort_noise_packets,
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
            "format": self.format.name(),
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
            "encrypted": self.sealing.is_some(),
            "seals": self.seals,
        })
    }
}

/// `X.partial` for a final path `X`.
pub fn partial_path(path: &Path) -> PathBuf {
    crate::output::with_suffix(path, ".partial")
}

/// Writes a sealed sidecar: its clear index has the ids and times only.
fn write_sealed_sidecar(path: &Path, summary: &Value, sealing: &Sealing) -> std::io::Result<()> {
    let rid = summary["recording_id"].as_str().unwrap_or_default();
    let mut index = json!({"recording_id": rid, "started_at": summary["started_at"], "state": summary["state"]});
    if let Some(ms) = summary["duration_ms"].as_u64() {
        index["duration_ms"] = json!(ms);
    }
    sealed::write_sealed_json(path, summary, sealing, rid, index.to_string())
}

/// Writes `value` to `path` via a temporary file and a rename, so readers never see half.
/// On failure the temporary file is removed and `path` is as it was.
pub fn write_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(serde_json::to_string_pretty(value).unwrap_or_default().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    });
    if written.is_err() {
        remove_if_present(&tmp);
    }
    written
}

fn remove_if_present(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        crate::log::warn(&format!("cannot remove {}: {e}", path.display()));
    }
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
///
/// A `.partial` without a readable sidecar takes its ids from its name
/// (`<call>-<recording id>[-<n>-<label>].wav.partial`) and gets a new sidecar. A `.partial` with
/// no audio (empty, or shorter than a header: its start failed, or nothing reached the disk) is
/// removed: reported as `recording_failed` when a sidecar names its recording, otherwise only
/// logged. Left-over temporary sidecars (`.json.tmp`) and sidecars still saying `recording` with
/// no audio file at all (a start that failed) are removed. Every summary returned names its
/// `call_id` and `recording_id`.
///
/// Only to be called with the data directory's lock held: a running daemon's live files look
/// exactly like a crash's.
pub fn recover_spool(spool: &Path, sealing: Option<&Arc<Sealing>>) -> Vec<Value> {
    let Ok(entries) = fs::read_dir(spool) else { return Vec::new() };
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    let ends = |p: &Path, suffix: &str| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(suffix));
    let mut changed = false;
    // An interrupted atomic write: the sidecar it was replacing (if any) is still in place.
    for tmp in names.iter().filter(|p| ends(p, ".json.tmp")) {
        crate::log::warn(&format!("recovery: removing {}, an unfinished sidecar write", tmp.display()));
        remove_if_present(tmp);
        changed = true;
    }
    let mut out = Vec::new();
    for tmp in names.iter().filter(|p| ends(p, ".meta.cvs.tmp")) {
        crate::log::warn(&format!("recovery: removing {}, an unfinished sealed sidecar write", tmp.display()));
        remove_if_present(tmp);
        changed = true;
    }
    // Unfinished files, and damaged ones whose recovery a crash interrupted (no re-sealed file yet).
    let sealed_partials: Vec<&PathBuf> = names
        .iter()
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| is_audio_name(n, ".cvs.partial"))
                || (p.file_name().and_then(|n| n.to_str()).is_some_and(|n| is_audio_name(n, ".cvs.partial.damaged"))
                    && !PathBuf::from(p.to_string_lossy().trim_end_matches(".partial.damaged")).exists())
        })
        .collect();
    match sealing {
        Some(s) => {
            for partial in sealed_partials {
                changed = true;
                if let Some(summary) = recover_sealed_partial(partial, s) {
                    match out.iter_mut().find(|x: &&mut Value| x["recording_id"] == summary["recording_id"]) {
                        Some(earlier) => *earlier = summary,
                        None => out.push(summary),
                    }
                }
            }
            let (removed, finished) = reconcile_sealed_sidecars(spool, s, &out);
            changed |= removed || !finished.is_empty();
            out.extend(finished);
        }
        None if !sealed_partials.is_empty() => crate::log::warn(&format!(
            "recovery: {} sealed recording(s) left unfinished in {} need their keys: start with \
             [recording] encryption = \"on\" to recover them (they are kept)",
            sealed_partials.len(),
            spool.display()
        )),
        None => {}
    }
    for partial in
        names.iter().filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| is_audio_name(n, ".partial")))
    {
        changed = true;
        if let Some(summary) = recover_partial(partial) {
            // A separate-layout recording has a file per leg: one report for the recording,
            // the last one (its sidecar by then lists every file recovered).
            match out.iter_mut().find(|s: &&mut Value| s["recording_id"] == summary["recording_id"]) {
                Some(earlier) => *earlier = summary,
                None => out.push(summary),
            }
        }
    }
    changed |= remove_orphan_sidecars(spool);
    if changed {
        let _ = fs::File::open(spool).and_then(|d| d.sync_all());
    }
    out
}

/// Recovers one `.partial` file; the summary to report, if the recording is known.
fn recover_partial(partial: &Path) -> Option<Value> {
    let path = partial.with_extension("");
    let name = SpoolName::parse(&path);
    // `<stem>.wav` or `<stem>-<n>-<label>.wav` (separate): the sidecar is `<stem>.json`.
    let sidecar = match &name {
        Some(n) => Some(path.with_file_name(format!("{}.json", n.stem))),
        None => sidecar_for(&path),
    };
    let from_sidecar =
        sidecar.as_ref().and_then(|p| fs::read(p).ok()).and_then(|b| serde_json::from_slice::<Value>(&b).ok()).filter(
            |v| {
                let id = |k: &str| v[k].as_str().is_some_and(|s| !s.is_empty());
                id("call_id") && id("recording_id")
            },
        );
    let known = from_sidecar.is_some();
    // The recording had failed (and the ACD was told) before this file was left unfinished.
    let failed_before = from_sidecar.as_ref().and_then(|v| v["error"].as_str().map(str::to_string));
    let mut summary = match (from_sidecar, &name) {
        (Some(v), _) => v,
        (None, Some(n)) => {
            let mut v = json!({"recording_id": n.recording_id, "call_id": n.call_id, "ids_from_file_name": true});
            if n.separate {
                v["layout"] = json!("separate");
            }
            v
        }
        (None, None) => json!({}),
    };
    let named = summary["recording_id"].as_str().is_some_and(|s| !s.is_empty());
    let len = fs::metadata(partial).map(|m| m.len()).unwrap_or(u64::MAX);
    let stream_format = path.extension().and_then(|e| e.to_str()).and_then(|e| match e {
        "opus" => Some(Format::Opus),
        "mp3" => Some(Format::Mp3),
        _ => None,
    });
    let unreadable_header = stream_format.is_none() && len < wav::HEADER_LEN && wav::inspect(partial).is_err();
    if len == 0 || unreadable_header {
        // Nothing to recover: its start failed, or the header never reached the disk.
        remove_if_present(partial);
        crate::log::warn(&format!(
            "recovery: removed {} ({len} bytes, no audio){}",
            partial.display(),
            if known { "" } else { ", which no sidecar names" }
        ));
        if !known {
            return None;
        }
        summary["state"] = json!("finished");
        summary["end_reason"] = json!("crash_recovered");
        summary["error"] = json!(format!("{}: no audio was written before the crash; removed", partial.display()));
        summary["partial_files"] = json!([]);
        if summary["recovered_files"].as_array().is_none_or(|f| f.is_empty()) {
            summary["duration_ms"] = json!(0);
        }
        if let Some(p) = &sidecar
            && let Err(e) = write_atomically(p, &summary)
        {
            crate::log::warn(&format!("recovery: cannot update {}: {e}", p.display()));
        }
        return Some(summary);
    }
    let result = if path.exists() {
        Err(wav::WavError::WouldReplace { path: path.clone() })
    } else if let Some(format) = stream_format {
        // Ogg/Opus and MP3: whole pages or frames play; the torn end is cut.
        crate::output::stream::recover_plain_stream(partial, &path, format).map(|p| {
            if !known {
                summary["format"] = json!(format.name());
                if let Some(r) = p.rate {
                    summary["sample_rate"] = json!(r);
                }
                if let Some(c) = p.channels {
                    summary["channels"] = json!(c);
                }
            }
            if p.damaged_bytes > 0 {
                crate::log::error(&format!(
                    "recovery: {}: {} damaged bytes skipped (kept in the file; players skip them)",
                    partial.display(),
                    p.damaged_bytes
                ));
                summary["damaged_bytes"] = json!(p.damaged_bytes);
            }
            wav::RepairReport { frames: p.frames, was_finalised: false, truncated_bytes: 0, rf64: false }
        })
    } else {
        wav::repair(partial).and_then(|r| {
            fs::hard_link(partial, &path).and_then(|()| fs::remove_file(partial)).map_err(|source| {
                wav::WavError::File { path: path.clone(), action: "rename repaired file to", source }
            })?;
            Ok(r)
        })
    };
    match result {
        Ok(r) if stream_format.is_some() && !path.exists() => {
            // Only the stream's heads reached the disk: nothing to play, removed.
            crate::log::warn(&format!("recovery: removed {} (no audio before the crash)", partial.display()));
            summary["state"] = json!("finished");
            summary["end_reason"] = json!("crash_recovered");
            summary["error"] = json!(format!("{}: no audio was written before the crash; removed", partial.display()));
            summary["partial_files"] = json!([]);
            if summary["recovered_files"].as_array().is_none_or(|f| f.is_empty()) {
                summary["duration_ms"] = json!(r.frames);
            }
            if let Some(p) = &sidecar
                && named
                && let Err(e) = write_atomically(p, &summary)
            {
                crate::log::warn(&format!("recovery: cannot update {}: {e}", p.display()));
            }
        }
        Ok(r) => {
            if !known
                && stream_format.is_none()
                && let Ok(st) = wav::inspect(&path)
            {
                summary["sample_rate"] = json!(st.info.sample_rate);
                summary["channels"] = json!(st.info.channels);
            }
            summary["state"] = json!("finished");
            summary["end_reason"] = json!("crash_recovered");
            if let Some(e) = &failed_before {
                summary["recovered_after_failure"] = json!(e);
                summary.as_object_mut().map(|o| o.remove("error"));
            }
            let rate = summary["sample_rate"].as_u64().unwrap_or(8000).max(1);
            summary["duration_ms"] = json!(r.frames * 1000 / rate);
            let mut files = summary["recovered_files"].as_array().cloned().unwrap_or_default();
            files.push(json!(fs::canonicalize(&path).unwrap_or(path.clone()).display().to_string()));
            summary["recovered_files"] = json!(files);
            if summary["layout"] != "separate" {
                summary["file"] = files[0].clone();
            }
            match &sidecar {
                Some(p) if named => {
                    if let Err(e) = write_atomically(p, &summary) {
                        crate::log::warn(&format!("recovery: cannot update {}: {e}", p.display()));
                    }
                }
                _ => {}
            }
            crate::log::warn(&format!(
                "recovered {} ({} frames) left unfinished by {}{}",
                path.display(),
                r.frames,
                failed_before.as_deref().map_or("a crash".to_string(), |e| format!("an earlier failure ({e})")),
                match (known, named) {
                    (true, _) => "",
                    (false, true) => "; no readable sidecar: ids taken from the file name",
                    (false, false) => "; no sidecar and no recording id in the name: not reported",
                }
            ));
        }
        Err(e) => {
            crate::log::error(&format!("recovery: {}: {e}", partial.display()));
            summary["error"] = json!(e.to_string());
            // A stream with nothing playable was put aside as `….damaged`, never removed.
            let damaged = crate::output::with_suffix(partial, ".damaged");
            let kept = if damaged.exists() { damaged } else { partial.to_path_buf() };
            summary["partial_files"] = json!([kept.display().to_string()]);
        }
    }
    named.then_some(summary)
}

/// Recovers one sealed `.wav.cvs.partial` by re-sealing its authenticated prefix (see
/// [`sealed::reseal_unfinished`]); its sealed sidecar is updated like a plain one.
fn recover_sealed_partial(partial: &Path, sealing: &Arc<Sealing>) -> Option<Value> {
    let name = partial.file_name()?.to_str()?;
    let dest = partial.with_file_name(name.strip_suffix(".partial.damaged").or(name.strip_suffix(".partial"))?);
    // `<rid>.wav.cvs` or `<rid>-<n>-<label>.wav.cvs`.
    let rid = name.get(..26).filter(|r| ulid::Ulid::from_string(r).is_ok())?.to_string();
    let separate = name.as_bytes().get(26) == Some(&b'-');
    let sidecar = partial.with_file_name(format!("{rid}.{}", sealed::META_EXT));
    let from_sidecar = sealed::read_sealed_json(&sidecar, &sealing.keys)
        .inspect_err(|e| {
            if sidecar.exists() {
                crate::log::warn(&format!("recovery: sidecar {} unreadable: {e}", sidecar.display()));
            }
        })
        .ok()
        .filter(|v| v["recording_id"] == rid.as_str());
    let known = from_sidecar.is_some();
    let failed_before = from_sidecar.as_ref().and_then(|v| v["error"].as_str().map(str::to_string));
    let mut summary = from_sidecar.unwrap_or_else(|| {
        let mut v = json!({"recording_id": rid, "call_id": Value::Null, "ids_from_file_name": true, "encrypted": true});
        if separate {
            v["layout"] = json!("separate");
        }
        v
    });
    summary["state"] = json!("finished");
    summary["end_reason"] = json!("crash_recovered");
    summary["recovered"] = json!(true);
    let save = |summary: &Value| {
        if let Err(e) = write_sealed_sidecar(&sidecar, summary, sealing) {
            crate::log::warn(&format!("recovery: cannot update {}: {e}", sidecar.display()));
        }
    };
    let header_complete =
        fs::File::open(partial).ok().is_some_and(|f| crate::seal::SealedReader::open(f, &sealing.keys).is_ok());
    let len = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if !header_complete && len < 512 {
        // Its start failed, or the header never reached the disk: nothing to recover.
        remove_if_present(partial);
        crate::log::warn(&format!("recovery: removed {} ({len} bytes, no audio)", partial.display()));
        if !known {
            return None;
        }
        summary["error"] = json!(format!("{}: no audio was written before the crash; removed", partial.display()));
        summary["partial_files"] = json!([]);
        save(&summary);
        return Some(summary);
    }
    // (frames, complete before, where it stopped, kept as damaged, nothing playable)
    let resealed = if name.contains(".wav.cvs") {
        sealed::reseal_unfinished(partial, &dest, sealing).map(|r| {
            summary["sample_rate"] = json!(r.spec.sample_rate);
            summary["channels"] = json!(r.spec.channels);
            (r.frames, r.was_complete, r.stopped_by, r.kept_damaged, false)
        })
    } else {
        // Ogg/Opus or MP3: the prefix of whole pages or frames is re-sealed.
        crate::output::stream::reseal_stream_unfinished(partial, &dest, sealing)
            .map(|r| (r.playable.frames, r.was_complete, r.stopped_by, r.kept_damaged, r.empty))
    };
    let resealed = resealed.map(|(frames, was_complete, stopped_by, kept_damaged, empty)| {
        if let Some(kept) = &kept_damaged {
            crate::log::error(&format!(
                "recovery: {} is damaged ({}); its authenticated prefix is recovered, the file is kept as {}",
                partial.display(),
                stopped_by.as_deref().unwrap_or("bytes that do not authenticate"),
                kept.display()
            ));
        }
        let how = match (was_complete, stopped_by) {
            (true, _) => "complete: only its rename was missing".to_string(),
            (false, s) => {
                format!("re-sealed under a new data key{}", s.map(|s| format!("; stopped at: {s}")).unwrap_or_default())
            }
        };
        (frames, how, kept_damaged, empty)
    });
    if let Ok((_, _, kept_damaged, true)) = &resealed {
        // Nothing playable: no file was made.
        let error = match kept_damaged {
            Some(kept) => {
                format!("{}: damaged before any audio authenticated; kept as {}", partial.display(), kept.display())
            }
            None => format!("{}: no audio was written before the crash; removed", partial.display()),
        };
        crate::log::warn(&format!("recovery: {error}"));
        summary["partial_files"] = json!(kept_damaged.iter().map(|k| k.display().to_string()).collect::<Vec<_>>());
        describe_finished(partial.parent().unwrap_or(Path::new(".")), &rid, sealing, &mut summary);
        summary["error"] = json!(error);
        save(&summary);
        return Some(summary);
    }
    match resealed {
        Ok((frames, how, ..)) => {
            if let Some(e) = &failed_before {
                summary["recovered_after_failure"] = json!(e);
                summary.as_object_mut().map(|o| o.remove("error"));
            }
            describe_finished(partial.parent().unwrap_or(Path::new(".")), &rid, sealing, &mut summary);
            save(&summary);
            crate::log::warn(&format!(
                "recovered sealed {} ({frames} frames, {how}) left unfinished by {}{}",
                dest.display(),
                failed_before.as_deref().map_or("a crash".to_string(), |e| format!("an earlier failure ({e})")),
                if known { "" } else { "; no readable sidecar: ids taken from the file name" }
            ));
        }
        Err(e) => {
            crate::log::error(&format!("recovery: {}: {e}", partial.display()));
            summary["error"] = json!(e.to_string());
            summary["partial_files"] = json!([partial.display().to_string()]);
        }
    }
    Some(summary)
}

/// Fills a recovered recording's summary from its finished sealed files in the spool: every
/// `<rid>[-n].wav.cvs` that verifies goes into `recovered_files` and `seals` (and `file`, and each
/// separate leg's `file`), `duration_ms` is the longest; files that do not verify and files kept
/// as `.damaged` are named in `damaged_files` (and logged), and with no good file at all the
/// recording is failed (`error`). An open pause ends where the recording does.
fn describe_finished(spool: &Path, rid: &str, sealing: &Arc<Sealing>, summary: &mut Value) {
    let mut names: Vec<String> = fs::read_dir(spool)
        .map(|e| e.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    let mine = |n: &String| n.starts_with(rid) && matches!(n.as_bytes().get(26), Some(b'.' | b'-'));
    let (mut files, mut seals, mut damaged, mut duration) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
    for n in names.iter().filter(|n| mine(n)) {
        let p = spool.join(n);
        let abs = fs::canonicalize(&p).unwrap_or(p.clone()).display().to_string();
        if n.ends_with(".damaged") {
            damaged.push(json!({"file": abs, "why": "bytes after the recovered prefix do not authenticate"}));
            continue;
        }
        if !is_audio_name(n, ".cvs") {
            continue;
        }
        match sealed::verified_audio(&p, &sealing.keys) {
            Ok((header, frames, rate, record)) => {
                let rate = rate.or(summary["sample_rate"].as_u64().map(|r| r as u32)).unwrap_or(8000).max(1);
                duration = duration.max(frames * 1000 / u64::from(rate));
                // The KEK that sealed this file, which after a rotation need not be the active one.
                let mut seal = sealed::seal_summary(&record, &header.key_id);
                seal["file"] = json!(abs);
                seals.push(seal);
                // `<rid>-<n>.wav.cvs`: leg n's file.
                if let Some(leg) = n.get(27..).and_then(|r| r.split('.').next()).and_then(|x| x.parse::<usize>().ok())
                    && let Some(l) = summary["legs"].get_mut(leg)
                {
                    l["file"] = json!(abs);
                }
                files.push(json!(abs));
            }
            Err(e) => {
                crate::log::error(&format!("recovery: {} does not verify: {e}; kept", p.display()));
                damaged.push(json!({"file": abs, "why": e.to_string()}));
            }
        }
    }
    summary["duration_ms"] = json!(duration);
    if summary["layout"] != "separate" {
        summary["file"] = files.first().cloned().unwrap_or(Value::Null);
    }
    if files.is_empty() {
        summary["error"] = json!("no audio file of the recording verifies after the crash; see damaged_files");
    }
    summary["recovered_files"] = json!(files);
    summary["seals"] = json!(seals);
    if damaged.is_empty() {
        summary.as_object_mut().map(|o| o.remove("damaged_files"));
    } else {
        summary["damaged_files"] = json!(damaged);
    }
    if let Some(pauses) = summary["pauses"].as_array_mut() {
        for p in pauses.iter_mut().filter(|p| p["end_ms"].is_null()) {
            p["end_ms"] = json!(duration);
        }
    }
}

/// Sealed sidecars still saying `recording` or `paused` after recovery: with no audio file at
/// all (a start that failed) they are removed; with finished audio (a crash between the audio's
/// rename and the sidecar's write at stop) the sidecar is completed from the files and reported,
/// unless `reported` already covers the recording. Returns (removed any, the completed ones).
fn reconcile_sealed_sidecars(spool: &Path, sealing: &Arc<Sealing>, reported: &[Value]) -> (bool, Vec<Value>) {
    let Ok(entries) = fs::read_dir(spool) else { return (false, Vec::new()) };
    let mut files: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    files.sort();
    let mut removed = false;
    let mut finished = Vec::new();
    let suffix = format!(".{}", sealed::META_EXT);
    for name in files.iter().filter(|n| n.ends_with(&suffix)) {
        let rid = &name[..name.len() - suffix.len()];
        if reported.iter().any(|r| r["recording_id"] == rid) {
            continue;
        }
        let audio: Vec<&String> = files
            .iter()
            .filter(|f| f.starts_with(rid) && (is_audio_name(f, ".cvs") || is_audio_name(f, ".cvs.partial")))
            .collect();
        let path = spool.join(name);
        let Ok(mut v) = sealed::read_sealed_json(&path, &sealing.keys) else { continue };
        if !matches!(v["state"].as_str(), Some("recording" | "paused")) {
            continue;
        }
        if audio.is_empty() {
            crate::log::warn(&format!(
                "recovery: removing {}, the sidecar of a recording that never started (no audio file)",
                path.display()
            ));
            remove_if_present(&path);
            removed = true;
            continue;
        }
        if audio.iter().any(|f| f.ends_with(".partial")) {
            continue; // kept unrecovered, already reported
        }
        v["state"] = json!("finished");
        v["end_reason"] = json!("crash_recovered");
        v["recovered"] = json!(true);
        describe_finished(spool, rid, sealing, &mut v);
        if let Err(e) = write_sealed_sidecar(&path, &v, sealing) {
            crate::log::warn(&format!("recovery: cannot update {}: {e}", path.display()));
        }
        crate::log::warn(&format!(
            "recovery: recording {rid} was finished but its sidecar was not (a crash at its stop): completed it"
        ));
        finished.push(v);
    }
    (removed, finished)
}

/// Removes sidecars that still say `recording` or `paused` but have no audio file at all
/// (`.wav` or `.wav.partial`): written for a start that then failed. Whether any was removed.
fn remove_orphan_sidecars(spool: &Path) -> bool {
    let Ok(entries) = fs::read_dir(spool) else { return false };
    let files: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let mut removed = false;
    for name in files.iter().filter(|n| n.ends_with(".json")) {
        let stem = &name[..name.len() - ".json".len()];
        let path = spool.join(name);
        let Some(v) = fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else { continue };
        if !matches!(v["state"].as_str(), Some("recording" | "paused")) {
            continue;
        }
        let has_audio = files.iter().any(|f| {
            (is_audio_name(f, "") || is_audio_name(f, ".partial"))
                && f.strip_prefix(stem).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
        });
        if !has_audio {
            crate::log::warn(&format!(
                "recovery: removing {}, the sidecar of a recording that never started (no audio file)",
                path.display()
            ));
            remove_if_present(&path);
            removed = true;
        }
    }
    removed
}

/// What a live recording file's name says: `<call>-<recording id>.wav`, or
/// `<call>-<recording id>-<n>-<label>.wav` with the separate layout.
#[derive(Debug, PartialEq, Eq)]
struct SpoolName {
    /// `<call>-<recording id>`: the sidecar is `<stem>.json`.
    stem: String,
    /// The call id as sanitised for the name.
    call_id: String,
    recording_id: String,
    separate: bool,
}

impl SpoolName {
    fn parse(wav: &Path) -> Option<SpoolName> {
        let name = strip_audio_ext(wav.file_name()?.to_str()?)?;
        let parts: Vec<&str> = name.split('-').collect();
        // The last segment that is a ULID followed by nothing or by `<n>-<label>`.
        (1..parts.len()).rev().find_map(|i| {
            let rid = parts[i];
            if rid.len() != 26 || ulid::Ulid::from_string(rid).is_err() {
                return None;
            }
            let separate = match &parts[i + 1..] {
                [] => false,
                [n, label @ ..] if !label.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => true,
                _ => return None,
            };
            Some(SpoolName {
                stem: parts[..=i].join("-"),
                call_id: parts[..i].join("-"),
                recording_id: rid.to_string(),
                separate,
            })
        })
    }
}

/// The sidecar of a recording file: the longest `<prefix>.json` that exists.
fn sidecar_for(wav: &Path) -> Option<PathBuf> {
    let name = strip_audio_ext(wav.file_name()?.to_str()?)?;
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
    fn spool_names_give_the_ids() {
        let rid = "01M8YXH0ZYKXEV8NV6Y8M3A525";
        let n = SpoolName::parse(Path::new(&format!("/s/c-1-{rid}.wav"))).unwrap();
        assert_eq!((n.stem.as_str(), n.call_id.as_str(), n.separate), (format!("c-1-{rid}").as_str(), "c-1", false));
        assert_eq!(n.recording_id, rid);
        let n = SpoolName::parse(Path::new(&format!("/s/a-b-{rid}-2-super-visor.wav"))).unwrap();
        assert_eq!((n.call_id.as_str(), n.separate), ("a-b", true));
        assert_eq!(n.stem, format!("a-b-{rid}"));
        assert!(SpoolName::parse(Path::new("/s/no-id-here.wav")).is_none());
        assert!(SpoolName::parse(Path::new(&format!("/s/{rid}.wav"))).is_none(), "no call id");
    }

    #[test]
    fn a_failed_create_leaves_no_file_behind() {
        use crate::core::recording::{LegSpec, RecordingConfig};
        let spool = tempfile::tempdir().unwrap();
        let rid = "01M8YXH0ZYKXEV8NV6Y8M3A525";
        let legs = || {
            ["a", "b"]
                .iter()
                .map(|l| LegLive {
                    label: l.to_string(),
                    port: 0,
                    rtcp_port: None,
                    source: SourceFilter::Any,
                    last_src: None,
                    last_packet_ns: None,
                    wrong_source: 0,
                    truncated: 0,
                    kernel_drops: 0,
                    silent_reported: false,
                    left_ms: None,
                })
                .collect::<Vec<_>>()
        };
        let session = |layout| {
            let specs = ["a", "b"].iter().map(|l| LegSpec { label: l.to_string(), payload_map: Default::default() });
            Session::new(RecordingConfig::default(), layout, specs.collect(), None, 0)
        };
        let listing = || {
            let mut v: Vec<String> =
                fs::read_dir(spool.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            v.sort();
            v
        };
        // The second leg's file cannot be created (a directory is in its way): the first leg's
        // file is removed again, and no sidecar is written.
        let blocker = spool.path().join(format!("c-{rid}-1-b.wav.partial"));
        fs::create_dir(&blocker).unwrap();
        let r = LiveCall::create(
            "c".into(),
            rid.into(),
            Default::default(),
            Format::Wav,
            session(Layout::Separate),
            legs(),
            &Spool { dir: spool.path().to_path_buf(), sealing: None },
            SystemTime::now(),
            0,
        );
        assert!(r.is_err());
        assert_eq!(listing(), vec![format!("c-{rid}-1-b.wav.partial")], "only what was there before");
        fs::remove_dir(&blocker).unwrap();
        // The sidecar cannot be written: the audio file goes too, and no `.json.tmp` stays.
        fs::create_dir(spool.path().join(format!("c-{rid}.json"))).unwrap();
        let r = LiveCall::create(
            "c".into(),
            rid.into(),
            Default::default(),
            Format::Wav,
            session(Layout::Stereo),
            legs(),
            &Spool { dir: spool.path().to_path_buf(), sealing: None },
            SystemTime::now(),
            0,
        );
        assert!(r.is_err());
        assert_eq!(listing(), vec![format!("c-{rid}.json")]);
    }

    #[test]
    fn source_filters() {
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        assert!(SourceFilter::Any.allows(a));
        assert!(SourceFilter::Ip(a.ip()).allows(a));
        assert!(!SourceFilter::Ip("10.0.0.2".parse().unwrap()).allows(a));
        assert!(!SourceFilter::Addr("10.0.0.1:4001".parse().unwrap()).allows(a));
    }

    /// A separate-layout recording killed mid-call has a file per leg: recovery reports it once.
    #[test]
    fn a_separate_recording_is_recovered_and_reported_once() {
        let spool = tempfile::tempdir().unwrap();
        let rid = "01M8YXH0ZYKXEV8NV6Y8M3A525";
        let spec = wav::WavSpec::pcm(8000, 1);
        for (n, label) in [(0, "a"), (1, "b")] {
            let path = spool.path().join(format!("c-1-{rid}-{n}-{label}.wav.partial"));
            let mut w = wav::create_file(&path, spec).unwrap();
            w.write_samples(&[100; 800]).unwrap();
            // Dropped unfinished, as by kill -9: the header says nothing of the data.
            std::mem::forget(w);
        }
        let sidecar = json!({"call_id": "c-1", "recording_id": rid, "layout": "separate", "state": "recording"});
        fs::write(spool.path().join(format!("c-1-{rid}.json")), sidecar.to_string()).unwrap();
        let reports = recover_spool(spool.path(), None);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0]["recording_id"], rid);
        assert_eq!(reports[0]["recovered_files"].as_array().map(Vec::len), Some(2), "{}", reports[0]);
    }

    fn test_sealing() -> Arc<Sealing> {
        use crate::seal::{Kek, Keyring, SigningKey};
        Sealing::new(
            Keyring::from_keys(vec![Kek::generate("k").unwrap()], Some(SigningKey::generate("s").unwrap())),
            1024,
        )
        .unwrap()
    }

    /// Killed after the audio's rename but before the sidecar's final write: the next start
    /// completes the sidecar from the file and reports the recording.
    #[test]
    fn a_finished_file_with_an_unfinished_sealed_sidecar_is_reported() {
        let spool = tempfile::tempdir().unwrap();
        let s = test_sealing();
        let rid = "01M8YXH0ZYKXEV8NV6Y8M3A525";
        let audio = spool.path().join(format!("{rid}.wav.cvs"));
        let mut w =
            sealed::SealedWavWriter::create(&audio, WavSpec::pcm(8000, 2), &s, rid, sealed::clear_index(rid, "t"))
                .unwrap();
        w.write_samples(&[1i16; 16000]).unwrap();
        w.finalize(8000).unwrap();
        let meta = spool.path().join(format!("{rid}.{}", sealed::META_EXT));
        write_sealed_sidecar(&meta, &json!({"call_id": "c-1", "recording_id": rid, "state": "recording"}), &s).unwrap();
        let reports = recover_spool(spool.path(), Some(&s));
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = &reports[0];
        assert_eq!((r["state"].as_str(), r["duration_ms"].as_u64()), (Some("finished"), Some(1000)), "{r}");
        assert_eq!(sealed::read_sealed_json(&meta, &s.keys).unwrap()["state"], "finished");
        assert!(recover_spool(spool.path(), Some(&s)).is_empty(), "reported once");
    }

    /// A recording that failed (disk full) and left its file unfinished is repaired at the next
    /// start and said to be recovered after that failure, not after a crash.
    #[test]
    fn a_file_left_by_a_failure_is_recovered_as_such() {
        let spool = tempfile::tempdir().unwrap();
        let rid = "01M8YXH0ZYKXEV8NV6Y8M3A525";
        let path = spool.path().join(format!("c-1-{rid}.wav.partial"));
        let w = wav::create_file(&path, wav::WavSpec::pcm(8000, 2)).unwrap();
        std::mem::forget(w);
        let sidecar = json!({"call_id": "c-1", "recording_id": rid, "state": "finished",
            "error": "writing …: No space left on device (os error 28)"});
        fs::write(spool.path().join(format!("c-1-{rid}.json")), sidecar.to_string()).unwrap();
        let reports = recover_spool(spool.path(), None);
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = &reports[0];
        assert!(r["recovered_after_failure"].as_str().is_some_and(|e| e.contains("No space")), "{r}");
        assert!(r.get("error").is_none(), "repaired, so no longer an error: {r}");
    }
}
