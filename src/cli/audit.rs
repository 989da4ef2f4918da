//! `callvault audit verify` and `callvault audit list`: the audit trail on the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use callvault::audit::{self, Anchor, ReadQuery, VerifyReport};
use callvault::config::Config;

pub const AUDIT_EXAMPLES: &str = "\
Examples:
  callvault audit verify --config /etc/callvault/callvault.toml
  callvault audit verify --config /etc/callvault/callvault.toml --json | jq '.problems[]'
  journalctl -u callvault -o cat | callvault audit verify --config /etc/callvault/callvault.toml --journal -
  callvault audit list --config /etc/callvault/callvault.toml --since 2026-12-01 --action play
  callvault audit list --target 01JEXAMPLE --json | jq -r '.entries[] | [.at, .actor, .action] | @tsv'

The audit trail (<data_dir>/audit.db) records every access and change: control socket requests
(start, stop, pause, resume, …, refused ones too), the API's searches and playbacks, user and
token changes. Each entry is chained to the previous one with an HMAC keyed by
<data_dir>/audit.key; `verify` finds edited, removed, reordered and (with the anchors the
daemon keeps in storage and in the journal) cut-off entries. See docs/audit.md.

verify exit codes: 0 intact; 1 tampering or a broken chain found; 2 usage error; 3 the log, its
key or the anchors cannot be read.
list exit codes: 0 done; 2 usage error (a bad filter); 3 the log cannot be read.";

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub cmd: AuditCmd,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the whole chain, and the anchors in storage (and the journal's) against it;
    /// writes nothing.
    Verify {
        /// The configuration serve runs with (data_dir, storage); embedded defaults without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also check the anchors in this journal output (`journalctl -u callvault -o cat`;
        /// `-` for standard input).
        #[arg(long, value_name = "FILE")]
        journal: Option<PathBuf>,
        /// One JSON object (ok, entries, first_seq, last_seq, anchors_checked, latest_anchor,
        /// problems: the first 1000, problems_not_listed) on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Show entries, oldest first, by any of the filters (all given must match).
    List {
        /// The configuration serve runs with (for data_dir); embedded defaults without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// At or after (RFC 3339 or a date: 2026-12-04, 2026-12-04T10:00:00Z).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Before (RFC 3339 or a date).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Who: an API user (its token is in detail.via), control:uid=N, cli:<user>, daemon, unauthenticated.
        #[arg(long)]
        actor: Option<String>,
        /// What: start, stop, pause, resume, play, search, token.create, …
        #[arg(long)]
        action: Option<String>,
        /// To what: a call id, recording id or user.
        #[arg(long)]
        target: Option<String>,
        /// Only entries after this seq (the last one of the previous page).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// Entries at most (1-10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// One JSON object (`entries`, `next_after`) on standard output.
        #[arg(long)]
        json: bool,
    },
}

pub fn audit_cmd(args: AuditArgs) -> ExitCode {
    match args.cmd {
        AuditCmd::Verify { config, journal, json } => verify_cmd(&config, journal.as_deref(), json),
        AuditCmd::List { config, since, until, actor, action, target, after, limit, json } => {
            let q = ReadQuery { after_seq: after, limit, actor, action, target, since, until };
            list_cmd(&config, &q, json)
        }
    }
}

/// The configuration, or exit 2.
fn load_config(path: &Option<PathBuf>) -> Result<Config, ExitCode> {
    let cfg = match path {
        Some(p) => Config::load(p).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })?,
        None => Config::default(),
    };
    if !cfg.data_dir.is_dir() {
        eprintln!(
            "error: data directory {} does not exist: {}",
            cfg.data_dir.display(),
            if path.is_some() {
                "is this the configuration serve runs with?"
            } else {
                "pass --config with the configuration serve runs with"
            }
        );
        return Err(ExitCode::from(3));
    }
    Ok(cfg)
}

fn verify_cmd(config: &Option<PathBuf>, journal: Option<&Path>, json: bool) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Anchors first, the log after: an anchor the daemon writes meanwhile is then never ahead
    // of the log that is read.
    let mut anchors: Vec<Anchor> = Vec::new();
    let mut found = audit::Findings::default();
    if cfg.storage.ship {
        let loaded = callvault::storage::Storage::open_existing(&cfg)
            .map_err(|e| e.to_string())
            .and_then(|s| audit::load_anchor_objects(&s).map_err(|e| e.to_string()));
        match loaded {
            Ok(stored) => (anchors, found) = stored.split(),
            Err(e) => {
                eprintln!(
                    "error: cannot read the audit anchors from storage: {e}; without them a cut-off tail cannot be found"
                );
                return ExitCode::from(3);
            }
        }
    }
    let from_store = anchors.len();
    let mut in_journal = None;
    if let Some(path) = journal {
        match journal_anchors(path) {
            Ok(read) => {
                in_journal = Some(read.anchors.len());
                found.journal_unreadable = Some(read.unreadable);
                found.journal_examples = read.examples;
                let stored: std::collections::HashSet<Anchor> = anchors.iter().cloned().collect();
                anchors.extend(read.anchors.into_iter().filter(|a| !stored.contains(a)));
            }
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return ExitCode::from(3);
            }
        }
    }
    let report = match audit::verify_with(&cfg.data_dir, &anchors, &found) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    if json {
        out!("{}", report.to_json());
    } else {
        print_report(&cfg, &report, from_store, in_journal.map(|n| (n, anchors.len() - from_store)));
    }
    ExitCode::from(if report.ok { 0 } else { 1 })
}

fn journal_anchors(path: &Path) -> std::io::Result<audit::JournalAnchors> {
    if path == Path::new("-") {
        audit::read_journal(std::io::BufReader::new(std::io::stdin()))
    } else {
        audit::read_journal(std::io::BufReader::new(std::fs::File::open(path)?))
    }
}

/// `journal`: the anchors read from the journal, and how many of them storage did not have.
fn print_report(cfg: &Config, r: &VerifyReport, from_store: usize, journal: Option<(usize, usize)>) {
    let sources = match journal {
        None => format!("{from_store} from storage"),
        Some((read, only)) => format!(
            "{from_store} from storage, {read} read from the journal ({} of them also in storage)",
            read.saturating_sub(only)
        ),
    };
    let span = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}-{b})"),
        _ => String::new(),
    };
    out!(
        "audit trail {}: {} entries{span}; {} anchor(s) checked ({sources})",
        cfg.data_dir.join(audit::DB_FILE).display(),
        r.entries,
        r.anchors_checked
    );
    if let Some(a) = &r.latest_anchor {
        out!("latest anchor: seq {} at {} by {}", a.seq, a.at, a.node);
    }
    if let Some(n) = r.journal_lines_unreadable.filter(|n| *n > 0) {
        out!(
            "warning: {n} journal line(s) marked `audit anchor: seq` could not be read as anchors (listed as bad_journal_line)"
        );
    }
    for p in &r.problems {
        match p.seq {
            Some(s) => out!("  seq {s}: {}: {}", p.kind, p.message),
            None => out!("  {}: {}", p.kind, p.message),
        }
    }
    if r.problems_not_listed > 0 {
        out!(
            "  … and {} more problem(s) not listed (the first {} in seq order are shown; --json counts them in problems_not_listed)",
            r.problems_not_listed,
            r.problems.len()
        );
    }
    if r.ok {
        let after = r.latest_anchor.as_ref().map_or(0, |a| a.seq);
        let unanchored = (r.last_seq.unwrap_or(0).max(0) as u64).saturating_sub(after);
        out!("INTACT");
        if unanchored > 0 {
            out!(
                "note: the last {unanchored} entr{} came after the latest anchor: a cut there would not show (docs/audit.md)",
                if unanchored == 1 { "y" } else { "ies" }
            );
        }
    } else {
        out!("TAMPERED OR BROKEN: {} problem(s)", r.problems_total());
    }
}

fn list_cmd(config: &Option<PathBuf>, q: &ReadQuery, json: bool) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let entries = match audit::read_dir(&cfg.data_dir, q) {
        Ok(e) => e,
        Err(e @ audit::AuditError::BadQuery(_)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    let next = (entries.len() as u32 == q.limit).then(|| entries.last().and_then(|e| e["seq"].as_u64())).flatten();
    if json {
        out!("{}", serde_json::json!({"entries": entries, "next_after": next}));
        return ExitCode::SUCCESS;
    }
    for e in &entries {
        // Fields come from clients (a request's path): a newline or an escape sequence in them
        // must not forge a line or drive the auditor's terminal.
        // Columns are two spaces apart: a field with a run of spaces (or other whitespace, or
        // none at all) is quoted, so it cannot pass for two columns (audit::list_field).
        let s = |k: &str| audit::list_field(e[k].as_str().unwrap_or_default());
        let target = if e["target"].as_str().unwrap_or_default().is_empty() { "-".to_string() } else { s("target") };
        let detail = match &e["detail"] {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            d => format!("  {}", audit::list_detail(d)),
        };
        out!(
            "{:>6}  {}  {}  {}  {}  {}  {}{detail}",
            e["seq"],
            s("at"),
            s("actor"),
            s("action"),
            target,
            s("source"),
            s("result")
        );
    }
    if let Some(n) = next {
        eprintln!("more: --after {n}");
    }
    ExitCode::SUCCESS
}
