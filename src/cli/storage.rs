//! `callvault hold`, `callvault erase` and `callvault retention`: legal holds, erasure on
//! request and retention sweeps, against the configured storage and catalog.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use callvault::catalog::{self, Catalog, Query};
use callvault::config::Config;
use callvault::storage::Storage;
use callvault::storage::retention::{self, Hold, HoldKind, Reason, Report};

pub const HOLD_EXAMPLES: &str = "\
Examples:
  callvault hold place --call-id c-20261204-0042 --reason \"case 2026-117, legal\"
  callvault hold place --recording-id 01KBX6J2Y3Z4M5N6P7Q8R9S0T1 --reason \"complaint 88\"
  callvault hold list --config /etc/callvault/callvault.toml --json | jq -r '.holds[].value'
  callvault hold release --call-id c-20261204-0042 --config /etc/callvault/callvault.toml

A hold keeps its recordings from every deletion, retention and erasure alike, on every recorder
sharing the store: holds are objects in the store (PREFIX/_holds/), in every target. A call-id
hold covers every recording of the call, later ones too.

Without --config the embedded defaults apply (./callvault-data): pass the configuration serve
runs with. Each command says on standard error which store it acts on.

Exit codes: 0 done; 1 failed (store unreachable; release: no such hold); 2 usage error (also: the
data directory does not exist).";

pub const ERASE_EXAMPLES: &str = "\
Examples:
  callvault erase --config /etc/callvault/callvault.toml --caller +4915112345678 --reason \"GDPR request 2026-0815\" --dry-run
  callvault erase --config /etc/callvault/callvault.toml --caller +4915112345678 --reason \"GDPR request 2026-0815\"
  callvault erase --call-id c-1 --reason \"recorded by mistake\" --json     # embedded defaults (./callvault-data)

Every recording the filters match (all given must match, as in `catalog search`) is deleted
from every storage target unless a legal hold covers it; each deletion is logged in
<data_dir>/deletions.log and in the store (PREFIX/_deletions/). Recordings still in the spool
are reported and left: run again once they are stored.

Exit codes: 0 all erased; 4 some kept (a legal hold, or still in the spool: the JSON says which);
1 failed (store unreachable: nothing is deleted when the holds cannot be read); 2 usage error.";

pub const RETENTION_EXAMPLES: &str = "\
Examples:
  callvault retention run --config /etc/callvault/callvault.toml --dry-run --json | jq '.deleted | length'
  callvault retention run --config /etc/callvault/callvault.toml --as-of 2027-03-01 --dry-run
  callvault retention run --config /etc/callvault/callvault.toml

Deletes every stored recording whose retention policy ([retention] in the config) has run out,
unless held, as `serve` does every [retention] interval_s. --as-of shows what a later day would
delete (only with --dry-run).

Exit codes: 0 done; 1 failed; 2 usage error.";

#[derive(clap::Args)]
pub struct HoldArgs {
    #[command(subcommand)]
    pub cmd: HoldCmd,
}

#[derive(clap::Args, Clone)]
#[group(required = true, multiple = false)]
pub struct HoldTarget {
    /// The recording (one recording, by its id).
    #[arg(long = "recording-id")]
    recording_id: Option<String>,
    /// The call (every recording of it, later ones too).
    #[arg(long = "call-id")]
    call_id: Option<String>,
}

impl HoldTarget {
    fn kind_value(&self) -> (HoldKind, String) {
        match (&self.recording_id, &self.call_id) {
            (Some(r), _) => (HoldKind::Recording, r.clone()),
            (_, Some(c)) => (HoldKind::Call, c.clone()),
            _ => unreachable!("clap requires one"),
        }
    }
}

#[derive(Subcommand)]
pub enum HoldCmd {
    /// Place a legal hold.
    Place {
        #[command(flatten)]
        target: HoldTarget,
        /// Why (a case or ticket reference): kept with the hold.
        #[arg(long)]
        reason: String,
        /// The configuration serve runs with ([storage]); embedded defaults without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Release a legal hold.
    Release {
        #[command(flatten)]
        target: HoldTarget,
        /// The configuration serve runs with ([storage]); embedded defaults without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List the legal holds.
    List {
        /// The configuration serve runs with ([storage]); embedded defaults without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// One JSON object on standard output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct EraseArgs {
    /// The configuration serve runs with ([storage], data_dir); embedded defaults without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The ACD's call id: every recording of the call.
    #[arg(long = "call-id")]
    call_id: Option<String>,
    /// One recording, by its id.
    #[arg(long = "recording-id")]
    recording_id: Option<String>,
    /// Metadata key `caller` (or `caller_number`, `from`).
    #[arg(long)]
    caller: Option<String>,
    /// Metadata key `called` (or `called_number`, `to`).
    #[arg(long)]
    called: Option<String>,
    /// Any metadata key: KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_kv)]
    meta: Vec<(String, String)>,
    /// The request's reference, kept in the deletion log.
    #[arg(long)]
    reason: String,
    /// Say what would be erased; delete nothing.
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// One JSON object on standard output.
    #[arg(long)]
    json: bool,
}

pub const FETCH_EXAMPLES: &str = "\
Examples:
  callvault fetch 01KBX6J2Y3Z4M5N6P7Q8R9S0T1 --config /etc/callvault/callvault.toml -o /tmp/case-117
  callvault fetch 01KBX6J2Y3Z4M5N6P7Q8R9S0T1 -o . && callvault decrypt 01KBX6J2Y3Z4M5N6P7Q8R9S0T1.wav.cvs -o call.wav

Downloads a stored recording's objects (audio and metadata, still sealed) from the primary (the
backup when the primary does not answer) into a directory, checks each against the SHA-256 the
catalog has for it, and prints the files written. `callvault decrypt` then gives the WAV.

Exit codes: 0 done; 1 failed (not stored yet, unknown, store unreachable, a mismatch); 2 usage
error.";

#[derive(clap::Args)]
pub struct FetchArgs {
    /// The recording id.
    recording_id: String,
    /// The configuration serve runs with ([storage], data_dir); embedded defaults without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory to write into (created if missing).
    #[arg(short = 'o', long = "out", value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Replace files already there.
    #[arg(long)]
    force: bool,
    /// One JSON object on standard output.
    #[arg(long)]
    json: bool,
}

pub fn fetch_cmd(a: FetchArgs) -> ExitCode {
    let (cfg, storage) = match open(&a.config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let summary = match catalog::get(&catalog::path_in(&cfg.data_dir), &a.recording_id) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(summary) = summary else {
        eprintln!(
            "error: the catalog has no recording {:?} (`callvault catalog search`; `callvault catalog rebuild` if it came from another recorder)",
            a.recording_id
        );
        return ExitCode::from(1);
    };
    if summary["stored"].is_null() {
        eprintln!(
            "error: recording {} is not stored yet: it is in the spool ({})",
            a.recording_id,
            summary["file"].as_str().unwrap_or("see --json of catalog search")
        );
        return ExitCode::from(1);
    }
    if let Err(e) = callvault::output::ensure_dir(&a.out) {
        eprintln!("error: cannot create {}: {e}", a.out.display());
        return ExitCode::from(1);
    }
    let mut last_err = String::new();
    for t in storage.targets() {
        let objects = summary["stored"][t.role.name()]["objects"].as_array().cloned().unwrap_or_default();
        if objects.is_empty() {
            continue;
        }
        match fetch_from(&storage, t, &objects, &a.out, a.force) {
            Ok(written) => {
                if a.json {
                    out!("{}", json!({"recording_id": a.recording_id, "from": t.describe, "files": written}));
                } else {
                    for w in &written {
                        out!("{w}");
                    }
                }
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("warning: {} target: {e}", t.role.name());
                last_err = e;
            }
        }
    }
    eprintln!("error: recording {} could not be fetched: {last_err}", a.recording_id);
    ExitCode::from(1)
}

fn fetch_from(
    storage: &Storage,
    t: &callvault::storage::Target,
    objects: &[Value],
    out: &std::path::Path,
    force: bool,
) -> Result<Vec<String>, String> {
    let mut written = Vec::new();
    for o in objects {
        let key = o["key"].as_str().ok_or("an object without a key")?;
        let name = key.rsplit('/').next().unwrap_or(key);
        let dest = out.join(name);
        if dest.exists() && !force {
            return Err(format!("{} exists (--force replaces it)", dest.display()));
        }
        let bytes = storage.block_on(t.get(&object_store::path::Path::from(key))).map_err(|e| e.to_string())?;
        if let Some(want) = o["sha256"].as_str() {
            let got = callvault::seal::format::hex(&callvault::seal::sha256(&[&bytes]));
            if got != want {
                return Err(format!("{key}: SHA-256 {got}, the catalog says {want}"));
            }
        }
        let tmp = out.join(format!(".{name}.fetch"));
        std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &dest)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", dest.display())
        })?;
        written.push(dest.display().to_string());
    }
    Ok(written)
}

#[derive(clap::Args)]
pub struct RetentionArgs {
    #[command(subcommand)]
    pub cmd: RetentionCmd,
}

#[derive(Subcommand)]
pub enum RetentionCmd {
    /// Delete what the retention policies say has expired (unless held).
    Run {
        /// The configuration serve runs with ([retention], [storage]); embedded defaults without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Say what would be deleted; delete nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Judge expiry as of this UTC time (2027-03-01 or 2027-03-01T00:00:00Z); needs --dry-run.
        #[arg(long = "as-of", value_name = "TIME", requires = "dry_run")]
        as_of: Option<String>,
        /// One JSON object on standard output.
        #[arg(long)]
        json: bool,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// Config and storage, or the exit code to leave with.
fn open(config: &Option<PathBuf>) -> Result<(Config, Storage), ExitCode> {
    let cfg = match config {
        Some(p) => Config::load(p).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })?,
        None => Config::default(),
    };
    if !cfg.storage.ship {
        eprintln!("error: [storage] ship = false: recordings are kept in the spool, not in storage");
        return Err(ExitCode::from(2));
    }
    // Without --config the embedded defaults apply: refuse where they name nothing (run from
    // another directory than serve's), so a hold or an erasure never lands in a stray archive.
    if !cfg.data_dir.is_dir() {
        eprintln!(
            "error: data directory {} does not exist: {}",
            cfg.data_dir.display(),
            if config.is_some() {
                "is serve running with this config?"
            } else {
                "pass --config with the configuration serve runs with"
            }
        );
        return Err(ExitCode::from(2));
    }
    let storage = Storage::open_existing(&cfg).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })?;
    // Said every time: which store a hold or a deletion acts on.
    let targets: Vec<String> = storage.targets().map(|t| format!("{} {}", t.role.name(), t.describe)).collect();
    eprintln!(
        "storage: {}{}",
        targets.join(", "),
        if config.is_none() { " (embedded defaults: no --config)" } else { "" }
    );
    Ok((cfg, storage))
}

pub fn hold_cmd(args: HoldArgs) -> ExitCode {
    match args.cmd {
        HoldCmd::Place { target, reason, config } => {
            // Usage errors first: they need no store.
            if let Err(e) = retention::check_reason(&reason) {
                eprintln!("error: --reason: {e}");
                return ExitCode::from(2);
            }
            let (cfg, storage) = match open(&config) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let (kind, value) = target.kind_value();
            if value.trim().is_empty() {
                eprintln!("error: the {} id must not be empty", kind.name());
                return ExitCode::from(2);
            }
            let hold = Hold {
                kind,
                value,
                reason,
                placed_at: callvault::engine::call::rfc3339(std::time::SystemTime::now()),
                placed_by: retention::actor(),
            };
            match retention::place_hold(&storage, &hold) {
                Ok(retention::Placed::AlreadyHeld(h)) => {
                    eprintln!(
                        "note: {} {:?} is already on hold since {} by {} ({}); kept as it was",
                        h.kind.name(),
                        h.value,
                        h.placed_at,
                        h.placed_by,
                        one_line(&h.reason)
                    );
                    out!("{}", h.to_json());
                    ExitCode::SUCCESS
                }
                Ok(retention::Placed::Partly { written, failed }) => {
                    for (role, e) in &failed {
                        eprintln!("error: the hold is in {} but NOT in the {role} target: {e}", written.join(" and "));
                    }
                    eprintln!(
                        "the hold is in force (deletions read every target's holds and stop when one cannot be read); place it again once the {} target answers",
                        failed.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(", ")
                    );
                    out!("{}", hold.to_json());
                    ExitCode::from(1)
                }
                Ok(retention::Placed::Placed) => {
                    let q = match kind {
                        HoldKind::Call => Query { call_id: Some(hold.value.clone()), ..Query::default() },
                        HoldKind::Recording => Query::default(),
                    };
                    let path = catalog::path_in(&cfg.data_dir);
                    let known = match kind {
                        HoldKind::Call => catalog::search(&path, &q).map(|p| !p.recordings.is_empty()).unwrap_or(false),
                        HoldKind::Recording => catalog::get(&path, &hold.value).is_ok_and(|s| s.is_some()),
                    };
                    if !known {
                        // Not an error (a hold may come before the recording), but a typo should show.
                        eprintln!(
                            "note: the catalog has no recording of {} {:?} (yet); the hold covers it when it comes",
                            kind.name(),
                            hold.value
                        );
                    }
                    out!("{}", hold.to_json());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}; the hold is not placed");
                    ExitCode::from(1)
                }
            }
        }
        HoldCmd::Release { target, config } => {
            let (_, storage) = match open(&config) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let (kind, value) = target.kind_value();
            match retention::release_hold(&storage, kind, &value) {
                Ok(true) => {
                    out!("{}", json!({"released": {"kind": kind.name(), "value": value}}));
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    eprintln!("error: no hold on {} {value:?}", kind.name());
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        HoldCmd::List { config, json } => {
            let (_, storage) = match open(&config) {
                Ok(x) => x,
                Err(code) => return code,
            };
            match retention::list_holds(&storage) {
                Ok(holds) => {
                    if json {
                        out!("{}", json!({"holds": holds.iter().map(Hold::to_json).collect::<Vec<_>>()}));
                    } else if holds.is_empty() {
                        out!("no legal holds");
                    } else {
                        for h in &holds {
                            out!(
                                "{} {}  placed {} by {}: {}",
                                h.kind.name(),
                                h.value,
                                h.placed_at,
                                h.placed_by,
                                one_line(&h.reason)
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// A reason as printed: quoted and escaped when it is not one plain line (a hold placed before
/// reasons were checked, or written into the store by hand), so it cannot pass for more lines.
fn one_line(reason: &str) -> String {
    if retention::check_reason(reason).is_ok() { reason.to_string() } else { format!("{reason:?}") }
}

/// Every recording the query matches, from every page.
fn all_matches(path: &std::path::Path, mut q: Query) -> Result<Vec<Value>, catalog::CatalogError> {
    let mut out = Vec::new();
    q.limit = Some(1000);
    loop {
        let page = catalog::search(path, &q)?;
        out.extend(page.recordings);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return Ok(out),
        }
    }
}

fn print_report(report: &Report, json: bool, dry_run: bool, what: &str) {
    if json {
        let mut v = report.to_json();
        v["dry_run"] = json!(dry_run);
        out!("{v}");
        return;
    }
    let verb = if dry_run { "would be deleted" } else { "deleted" };
    for d in &report.deleted {
        out!(
            "{} {verb} ({} {})",
            d["recording_id"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or(what),
            d["detail"].as_str().unwrap_or("")
        );
    }
    for (rid, h) in &report.held {
        out!("{rid} kept: legal hold on {} {} ({})", h.kind.name(), h.value, one_line(&h.reason));
    }
    for rid in &report.pending {
        out!("{rid} kept: still in the spool, not yet stored; run again once it is");
    }
    for (rid, e) in &report.failed {
        out!("{rid} NOT deleted: {e}");
    }
    out!(
        "{} recording(s) {verb}, {} held, {} pending, {} failed",
        report.deleted.len(),
        report.held.len(),
        report.pending.len(),
        report.failed.len()
    );
}

pub fn erase_cmd(a: EraseArgs) -> ExitCode {
    if let Err(e) = retention::check_reason(&a.reason) {
        eprintln!("error: --reason names the request, kept in the deletion log: {e}");
        return ExitCode::from(2);
    }
    let (cfg, storage) = match open(&a.config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let q = Query {
        call_id: a.call_id.clone(),
        caller: a.caller.clone(),
        called: a.called.clone(),
        meta: a.meta.clone(),
        ..Query::default()
    };
    let q_all = q.clone();
    if q == Query::default() && a.recording_id.is_none() {
        eprintln!("error: name what to erase: --caller, --called, --call-id, --recording-id or --meta");
        return ExitCode::from(2);
    }
    let path = catalog::path_in(&cfg.data_dir);
    let found = match (&a.recording_id, q == Query::default()) {
        // A recording id alone: that one row, not the whole catalog.
        (Some(r), true) => catalog::get(&path, r).map(|s| s.into_iter().collect()),
        (r, _) => all_matches(&path, q).map(|mut f| {
            if let Some(r) = r {
                f.retain(|s| s["recording_id"].as_str() == Some(r.as_str()));
            }
            f
        }),
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let candidates: Vec<(Value, Reason)> =
        found.into_iter().map(|s| (s, Reason { kind: "erasure", detail: a.reason.clone() })).collect();
    let mut cat = match Catalog::open(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut removed = |rid: &str| {
        if let Err(e) = cat.remove(rid) {
            eprintln!("warning: {rid} deleted from storage but still in the catalog: {e}");
        }
    };
    // Recordings still in the spool (being recorded, or waiting to ship) are not in the
    // catalog yet, or not stored: they are named, so an erasure never looks complete while a
    // matching call is still being recorded.
    let in_spool = spool_matches(&cfg, &q_all, a.recording_id.as_deref());
    match retention::delete_unless_held(&storage, &cfg.data_dir, candidates, a.dry_run, &mut removed) {
        Ok(mut report) => {
            for rid in in_spool.matched {
                if !report.pending.contains(&rid) && !report.held.iter().any(|(r, _)| *r == rid) {
                    report.pending.push(rid);
                }
            }
            if in_spool.unreadable > 0 {
                eprintln!(
                    "warning: {} sidecar(s) in the spool could not be read (keys?): recordings there may match too",
                    in_spool.unreadable
                );
            }
            if report.deleted.is_empty()
                && report.held.is_empty()
                && report.pending.is_empty()
                && report.failed.is_empty()
            {
                eprintln!("no recording matches");
            }
            print_report(&report, a.json, a.dry_run, "erasure");
            if !report.failed.is_empty() {
                ExitCode::from(1)
            } else if !report.held.is_empty() || !report.pending.is_empty() {
                ExitCode::from(4)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}; nothing was deleted");
            ExitCode::from(1)
        }
    }
}

/// What the spool holds that an erasure's filters match.
struct SpoolMatches {
    matched: Vec<String>,
    unreadable: usize,
}

/// Reads every sidecar in the spool (sealed ones with the keys serve uses) and returns the
/// recordings the filters match, as the catalog would match them.
fn spool_matches(cfg: &Config, q: &Query, recording_id: Option<&str>) -> SpoolMatches {
    let mut out = SpoolMatches { matched: Vec::new(), unreadable: 0 };
    let Ok(entries) = std::fs::read_dir(cfg.spool_dir()) else { return out };
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let keys =
        cfg.encrypted().then(|| callvault::seal::setup::resolve(cfg, credentials.as_deref(), false).ok()).flatten();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let v: Option<Value> = if name.ends_with(".meta.cvs") {
            keys.as_ref().and_then(|k| callvault::output::sealed::read_sealed_json(&e.path(), &k.keys).ok())
        } else if name.ends_with(".json") {
            std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice(&b).ok())
        } else {
            continue;
        };
        let Some(v) = v.filter(|v| v["recording_id"].is_string()) else {
            out.unreadable += 1;
            continue;
        };
        let meta = &v["metadata"];
        let text = |k: &str| {
            meta[k].as_str().map(str::to_string).or_else(|| (!meta[k].is_null()).then(|| meta[k].to_string()))
        };
        let any = |keys: &[&str], want: &str| keys.iter().any(|k| text(k).as_deref() == Some(want));
        let ok = q.call_id.as_deref().is_none_or(|c| v["call_id"].as_str() == Some(c))
            && q.caller.as_deref().is_none_or(|c| any(&["caller", "caller_number", "from"], c))
            && q.called.as_deref().is_none_or(|c| any(&["called", "called_number", "to"], c))
            && q.meta.iter().all(|(k, want)| text(k).as_deref() == Some(want.as_str()))
            && recording_id.is_none_or(|r| v["recording_id"].as_str() == Some(r));
        if ok {
            out.matched.push(v["recording_id"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

pub fn retention_cmd(a: RetentionArgs) -> ExitCode {
    let RetentionCmd::Run { config, dry_run, as_of, json } = a.cmd;
    let (cfg, storage) = match open(&config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let now = match as_of.as_deref().map(parse_utc) {
        None => std::time::SystemTime::now(),
        Some(Some(t)) => t,
        Some(None) => {
            eprintln!(
                "error: --as-of {:?} is not a UTC time like 2027-03-01 or 2027-03-01T00:00:00Z",
                as_of.unwrap_or_default()
            );
            return ExitCode::from(2);
        }
    };
    let path = catalog::path_in(&cfg.data_dir);
    let mut cat = match Catalog::open(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut removed = |rid: &str| {
        let _ = cat.remove(rid);
    };
    match retention::sweep(&cfg.retention, &storage, &cfg.data_dir, &path, now, dry_run, &mut removed) {
        Ok(report) => {
            print_report(&report, json, dry_run, "retention");
            ExitCode::from(if report.failed.is_empty() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("error: {e}; nothing was deleted");
            ExitCode::from(1)
        }
    }
}

/// `2027-03-01` or `2027-03-01T10:00:00Z` as a time; anything else (another shape, a day the
/// month does not have) is `None`.
fn parse_utc(s: &str) -> Option<std::time::SystemTime> {
    let b = s.as_bytes();
    let shape_ok = match b.len() {
        10 => true,
        20 => b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'Z',
        _ => false,
    };
    let digit_at = |i: usize| b[i].is_ascii_digit();
    let digits: &[usize] =
        if b.len() == 20 { &[0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18] } else { &[0, 1, 2, 3, 5, 6, 8, 9] };
    if !shape_ok || b[4] != b'-' || b[7] != b'-' || !digits.iter().all(|&i| digit_at(i)) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = if b.len() == 20 { (num(11..13)?, num(14..16)?, num(17..19)?) } else { (0, 0, 0) };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Days from the civil date (the inverse of the algorithm `rfc3339` uses).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok().map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times_parse_both_ways() {
        for t in ["2027-03-01T00:00:00.000Z", "2026-12-04T10:20:30.000Z", "2000-02-29T23:59:59.000Z"] {
            let parsed = super::parse_utc(&t.replace(".000", "")).unwrap();
            assert_eq!(callvault::engine::call::rfc3339(parsed), t);
        }
        assert_eq!(
            callvault::engine::call::rfc3339(super::parse_utc("2027-03-01").unwrap()),
            "2027-03-01T00:00:00.000Z"
        );
        for bad in [
            "yesterday",
            "2027-13-01",
            "2027-02-29",
            "2027-02-31",
            "2027-+3-01",
            "2027-01-01T10:00:00ZZZ",
            "2027-01-01T25:00:00Z",
        ] {
            assert!(super::parse_utc(bad).is_none(), "{bad}");
        }
        assert!(super::parse_utc("2028-02-29").is_some());
    }
}
