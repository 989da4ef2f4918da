//! `callvault catalog search` and `callvault catalog rebuild` on the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use callvault::catalog::{self, Catalog, Query};
use callvault::config::Config;

pub const CATALOG_EXAMPLES: &str = "\
Examples:
  callvault catalog search --agent 1001 --from 2026-12-01 --to 2026-12-08
  callvault catalog search --caller +4915112345678 --json | jq -r '.recordings[].stored.primary.objects[0].key'
  callvault catalog search --meta ticket=INC-4711 --limit 10 --cursor \"$NEXT\"
  callvault catalog rebuild --config /etc/callvault/callvault.toml

The catalog (<data_dir>/catalog.sqlite) is filled by `serve` as recordings end and holds
personal data (numbers, agents, the ACD's metadata): see docs/catalog.md. Results come newest
first, a page at a time; --json gives `next_cursor` for the next page.

Exit codes: 0 done; 1 failed; 2 usage error (a bad filter); 5 keys unloadable (rebuild).";

#[derive(clap::Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub cmd: CatalogCmd,
}

#[derive(Subcommand)]
pub enum CatalogCmd {
    /// Find recordings (newest first), by any of the filters; all given must match.
    Search {
        /// The configuration serve runs with (for data_dir); embedded defaults without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The ACD's call id.
        #[arg(long = "call-id")]
        call_id: Option<String>,
        /// Metadata key `agent` (or `agent_id`).
        #[arg(long)]
        agent: Option<String>,
        /// Metadata key `queue`.
        #[arg(long)]
        queue: Option<String>,
        /// Metadata key `caller` (or `caller_number`, `from`).
        #[arg(long)]
        caller: Option<String>,
        /// Metadata key `called` (or `called_number`, `to`).
        #[arg(long)]
        called: Option<String>,
        /// Metadata key `direction`.
        #[arg(long)]
        direction: Option<String>,
        /// Started at or after (UTC: 2026-12-04 or 2026-12-04T10:00:00Z).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// Started before (UTC).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Any metadata key: KEY=VALUE (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Results per page (1-1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Continue after the page that returned this `next_cursor`.
        #[arg(long)]
        cursor: Option<String>,
        /// One JSON object (`recordings`, `next_cursor`) on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the catalog from the metadata objects in storage (every recorder's that shares
    /// it) and the sidecars still in the spool (sealed ones opened with the keys), replacing
    /// what it holds for each.
    Rebuild {
        #[command(flatten)]
        keys: crate::keys::KeySel,
        /// Print a JSON summary on standard output.
        #[arg(long)]
        json: bool,
        /// Never show a progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

/// Where a recording is now: its first stored object (the file, for the local archive), or its
/// spool file while it waits there.
fn location(r: &serde_json::Value) -> String {
    let first = &r["stored"]["primary"]["objects"][0];
    if let Some(p) = first["path"].as_str() {
        return p.to_string();
    }
    if let Some(k) = first["key"].as_str() {
        return format!("{} {k}", r["stored"]["primary"]["target"].as_str().unwrap_or("stored"));
    }
    match r["file"].as_str() {
        Some(f) => format!("{f} (in the spool)"),
        None => "(separate: see --json)".into(),
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn load_config(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

pub fn catalog_cmd(args: CatalogArgs) -> ExitCode {
    match args.cmd {
        CatalogCmd::Search {
            config,
            call_id,
            agent,
            queue,
            caller,
            called,
            direction,
            from,
            to,
            meta,
            limit,
            cursor,
            json,
        } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let q = Query {
                call_id,
                agent,
                queue,
                caller,
                called,
                direction,
                from,
                to,
                meta,
                limit: Some(limit),
                cursor,
                scope: None,
            };
            match catalog::search(&catalog::path_in(&cfg.data_dir), &q) {
                Ok(page) => {
                    if json {
                        out!("{}", serde_json::to_string_pretty(&page.to_json()).unwrap_or_default());
                    } else {
                        for r in &page.recordings {
                            out!(
                                "{}  {}  {:>7.1} s  {}  call {}  agent {}  queue {}  {}",
                                r["recording_id"].as_str().unwrap_or("-"),
                                r["started_at"].as_str().unwrap_or("-"),
                                r["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                                r["state"].as_str().unwrap_or("-"),
                                r["call_id"].as_str().unwrap_or("-"),
                                r["metadata"]["agent"].as_str().unwrap_or("-"),
                                r["metadata"]["queue"].as_str().unwrap_or("-"),
                                location(r)
                            );
                        }
                        match &page.next_cursor {
                            Some(c) => eprintln!("more: --cursor '{c}'"),
                            None if page.recordings.is_empty() => eprintln!("no recording matches"),
                            None => {}
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e @ catalog::CatalogError::Query(_)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        CatalogCmd::Rebuild { keys, json, quiet } => {
            let cfg = match load_config(&keys.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let ring = if cfg.encrypted() {
                match keys.load(false, None) {
                    Ok((r, _, _)) => Some(r),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(5);
                    }
                }
            } else {
                None
            };
            let path = catalog::path_in(&cfg.data_dir);
            let mut c = match Catalog::open(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            let make_bar = |what: &str| {
                (!quiet && std::io::stderr().is_terminal()).then(|| {
                    let bar = indicatif::ProgressBar::new(0);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(&format!(
                            "{what} [{{bar:40}}] {{pos}}/{{len}} ({{eta}})"
                        ))
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar
                })
            };
            let tick = |bar: &Option<indicatif::ProgressBar>| {
                let bar = bar.clone();
                move |done: u64, total: u64| {
                    if let Some(b) = &bar {
                        b.set_length(total);
                        b.set_position(done);
                    }
                }
            };
            // The store first (every recorder's stored recordings), then the spool (this
            // recorder's, not yet shipped).
            let mut from_store = None;
            if cfg.storage.ship {
                let storage = match callvault::storage::Storage::open(&cfg) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(1);
                    }
                };
                let bar = make_bar("from the store");
                let r = callvault::storage::index::rebuild_from_store(&mut c, &storage, ring.as_ref(), &mut tick(&bar));
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                match r {
                    Ok(r) => from_store = Some(r),
                    Err(e) => {
                        eprintln!("error: {e}; the catalog keeps what it had");
                        return ExitCode::from(1);
                    }
                }
            }
            let bar = make_bar("from the spool");
            let result = catalog::rebuild(&mut c, &cfg.spool_dir(), ring.as_ref(), &mut tick(&bar));
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let result = result.map(|(n, mut skipped)| {
                let (sn, sskipped) = from_store.unwrap_or_default();
                skipped.extend(sskipped);
                (n, sn, skipped)
            });
            match result {
                Ok((n, sn, skipped)) => {
                    for s in &skipped {
                        eprintln!("warning: not indexed: {s}");
                    }
                    if json {
                        out!(
                            "{}",
                            serde_json::json!({"catalog": path.display().to_string(), "indexed": n + sn,
                                "from_store": sn, "from_spool": n, "skipped": skipped})
                        );
                    } else {
                        out!(
                            "{}: {} recording(s) indexed ({sn} from the store, {n} from the spool), {} skipped",
                            path.display(),
                            n + sn,
                            skipped.len()
                        );
                    }
                    ExitCode::from(if skipped.is_empty() { 0 } else { 1 })
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
