//! The `callvault` command line.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use callvault::core::mixer::Layout;
use callvault::core::payload::{PayloadFormat, PayloadMap};
use callvault::import::{self, ImportOptions, ImportReport};
use callvault::output::wav;
use callvault::replay::{self, ReplayOptions, ReplaySummary};

/// `println!` for a command's results. A reader that went away (`| head`, a closed pipe) ends the
/// command quietly with status 141, as if stopped by SIGPIPE like other Unix tools, instead of a
/// panic and a backtrace; any other write failure is an error, exit 1.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(141);
            }
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }};
}

#[path = "cli/access.rs"]
mod access;
#[path = "cli/audit.rs"]
mod audit;
#[path = "cli/catalog.rs"]
mod catalog;
#[path = "cli/keys.rs"]
mod keys;
#[path = "cli/live.rs"]
mod live;
#[path = "cli/storage.rs"]
mod storage;

/// Indented lines: a `\` line continuation would eat the leading spaces.
const TOP_HELP: &str = concat!(
    "Exit codes: 0 success, 1 failure (the message says what failed), 2 usage error.\n",
    "Some commands add their own, listed in their --help and in docs/cli.md:\n",
    "  3  import, replay: capture partly unreadable; audit: the trail, its key or anchors unreadable;\n",
    "     user, token: no data directory (a wrong --config)\n",
    "  4  ctl: control socket unreachable; erase: recordings kept by a hold or still in the spool;\n",
    "     user, token: no such user or token\n",
    "  5  verify, decrypt, catalog rebuild: keys unloadable\n",
    "audit verify exits 1 when it finds tampering.\n",
    "Run `callvault help <command>` for each command's options and examples."
);

#[derive(Parser)]
#[command(name = "callvault", version, about = "Call recording for contact centres: RTP in, recordings out")]
#[command(after_help = TOP_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn a packet capture (pcap or pcapng) into one recording per call.
    #[command(after_help = IMPORT_EXAMPLES)]
    Import(ImportArgs),
    /// Repair WAV files left unfinished by a crash (header sizes set from the data present).
    #[command(after_help = REPAIR_EXAMPLES)]
    Repair(RepairArgs),
    /// Run the recording daemon: the ACD starts and stops calls over the control socket.
    #[command(after_help = live::SERVE_EXAMPLES)]
    Serve(live::ServeArgs),
    /// Talk to a running daemon over its control socket.
    #[command(after_help = live::CTL_EXAMPLES)]
    Ctl(live::CtlArgs),
    /// Send a capture's RTP streams to live addresses at the capture's own pacing.
    #[command(after_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
    /// Check the kernel and system settings against the tuning (docs/tuning.md); changes nothing.
    #[command(after_help = callvault::doctor::EXAMPLES)]
    Doctor(callvault::doctor::DoctorArgs),
    /// Manage the keys of encryption at rest: generate, rotate, list.
    #[command(after_help = keys::KEY_EXAMPLES)]
    Key(keys::KeyArgs),
    /// Check sealed recordings: integrity, authenticity and the signed digests (writes no plaintext).
    #[command(after_help = keys::VERIFY_EXAMPLES)]
    Verify(keys::VerifyArgs),
    /// Write a sealed recording's plaintext (a WAV for sox) after verifying it.
    #[command(after_help = keys::DECRYPT_EXAMPLES)]
    Decrypt(keys::DecryptArgs),
    /// Search the recording catalog, or rebuild it from storage and the spool.
    #[command(after_help = catalog::CATALOG_EXAMPLES)]
    Catalog(catalog::CatalogArgs),
    /// Place, release and list legal holds (they override every retention policy and erasure).
    #[command(after_help = storage::HOLD_EXAMPLES)]
    Hold(storage::HoldArgs),
    /// Erase recordings on request (e.g. every recording of one caller), unless on hold.
    #[command(after_help = storage::ERASE_EXAMPLES)]
    Erase(storage::EraseArgs),
    /// Download a stored recording's (sealed) files from storage.
    #[command(after_help = storage::FETCH_EXAMPLES)]
    Fetch(storage::FetchArgs),
    /// Apply the retention policies now (serve does it every [retention] interval_s).
    #[command(after_help = storage::RETENTION_EXAMPLES)]
    Retention(storage::RetentionArgs),
    /// Manage the users of the HTTP API: roles (admin, supervisor, qa, auditor) and scopes.
    #[command(after_help = access::USER_EXAMPLES)]
    User(access::UserArgs),
    /// Create, list and revoke the API tokens users authenticate with.
    #[command(after_help = access::TOKEN_EXAMPLES)]
    Token(access::TokenArgs),
    /// Verify the audit trail's chain and anchors, or list its entries (who did what, when).
    #[command(after_help = audit::AUDIT_EXAMPLES)]
    Audit(audit::AuditArgs),
}

const IMPORT_EXAMPLES: &str = "\
Examples:
  callvault import call.pcap --out recordings/
  callvault import opus.pcap --out rec/ --pt 96=opus/48000/2 --pt 101=telephone-event/48000
  callvault import call.pcapng --out rec/ --layout separate --json | jq '.recordings[].legs[].lost'
  callvault import g722.pcap --out rec/ --sample-rate 8000 --comfort-noise silence
  callvault import call.pcap --out rec/ --format opus      # or wav-ulaw, wav-alaw, mp3

Calls are found from SIP/SDP in the capture (Call-ID, payload map, caller and callee legs).
Without signalling, each stream A->B is paired with B->A (legs `a` and `b` by first packet);
an unpaired stream becomes a one-leg recording. G.711, G.722 and Opus are decoded; each
recording's rate is the highest its legs' codecs have (G.722 16 kHz, Opus 48 kHz) unless
--sample-rate fixes it.

Exit codes: 0 all recordings written; 3 capture partly unreadable (what was complete is written,
and `errors` in the JSON says where); 2 usage error; 1 other failure (e.g. a recording could not
be written).";

const REPAIR_EXAMPLES: &str = "\
Examples:
  callvault repair recordings/*.wav.partial
  callvault repair --json spool/call-01J9Z.wav.partial

A file ending in .partial is renamed without the suffix once repaired, unless a file of that name
already exists (then nothing is changed and the exit code is 1). Finalised files are left
unchanged. Exit codes: 0 all repaired or already fine; 1 some file could not be repaired.";

const REPLAY_EXAMPLES: &str = "\
Examples:
  callvault replay call.pcap --to 10.0.0.5:40000
  callvault replay call.pcap --to 10.0.0.5:40000,10.0.0.5:40002 --rtcp
  callvault replay call.pcap --to 127.0.0.1:5004 --to 127.0.0.1:5006 --speed 4 --loop 10 --json

The capture's RTP streams (UDP flows of RTP version 2, not RTCP) are numbered in order of first
packet; stream i goes to the i-th --to address, from its own socket on an ephemeral port. Packets
are sent unchanged at the captured pacing divided by --speed. With --loop N the capture plays N
times back to back and each repeat continues every stream's sequence numbers and timestamps.
--rtcp also sends each stream's RTCP to the destination port + 1 (same port when muxed).
More streams than addresses: only the first ones are sent, and the others are named.

Exit codes: 0 all sent; 3 capture partly unreadable (what was readable was sent); 2 usage error;
1 other failure (unreadable capture, fewer streams than --to addresses, a send failed).";

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    /// One channel per leg (two legs: first left, second right).
    Stereo,
    /// All legs mixed into one channel.
    Mono,
    /// One mono file per leg.
    Separate,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The capture file (pcap or pcapng).
    capture: PathBuf,
    /// Directory to write recordings into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Channel layout.
    #[arg(long, value_enum, default_value = "stereo")]
    layout: LayoutArg,
    /// Print one JSON object describing every recording on standard output.
    #[arg(long)]
    json: bool,
    /// Map a payload type, e.g. 96=opus/48000/2 (repeatable; overrides SDP).
    #[arg(long = "pt", value_name = "PT=NAME/RATE[/CH]", value_parser = parse_pt)]
    pt: Vec<(u8, PayloadFormat)>,
    /// Keep DTMF digit values in the report (they may be card numbers: off by default).
    #[arg(long)]
    dtmf_digits: bool,
    /// Never show a progress bar.
    #[arg(long)]
    quiet: bool,
    /// Seal the recordings (and their metadata) as `serve` does; keys from --key/--key-dir/--config.
    #[arg(long)]
    encrypt: bool,
    #[command(flatten)]
    keys: keys::KeySel,
    /// The signing key file for --encrypt, when not in the key directory or credentials.
    #[arg(long = "signing-key", value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Sample rate of the recordings: 8000, 16000, 48000, or auto (per recording, the highest
    /// rate among the codecs its legs sent: G.711 8000, G.722 16000, Opus 48000).
    #[arg(long = "sample-rate", value_name = "HZ|auto", default_value = "auto", value_parser = parse_sample_rate)]
    sample_rate: SampleRateArg,
    /// What fills comfort-noise periods (RFC 3389): noise at the level the sender signalled, or silence.
    #[arg(long = "comfort-noise", value_enum, default_value = "noise")]
    comfort_noise: ComfortNoiseArg,
    /// File format: wav (16-bit PCM), wav-ulaw, wav-alaw (G.711, 8 kHz), opus (Ogg/Opus), mp3.
    #[arg(long, value_name = "FORMAT", default_value = "wav", value_parser = parse_format)]
    format: callvault::output::encode::Format,
}

fn parse_format(s: &str) -> Result<callvault::output::encode::Format, String> {
    callvault::output::encode::Format::parse(s)
        .ok_or_else(|| format!("{s:?} is not a format: use wav, wav-ulaw, wav-alaw, opus or mp3"))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ComfortNoiseArg {
    Noise,
    Silence,
}

/// A recording rate, or `None` for auto.
#[derive(Clone, Copy)]
struct SampleRateArg(Option<u32>);

/// `auto` or one of the recording rates.
fn parse_sample_rate(s: &str) -> Result<SampleRateArg, String> {
    if s == "auto" {
        return Ok(SampleRateArg(None));
    }
    match s.parse::<u32>() {
        Ok(r) if callvault::core::decode::RECORDING_RATES.contains(&r) => Ok(SampleRateArg(Some(r))),
        _ => Err(format!("{s:?} is not a recording rate: use 8000, 16000, 48000 or auto")),
    }
}

#[derive(clap::Args)]
struct RepairArgs {
    /// WAV files to repair.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print a JSON array of results.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The capture file (pcap or pcapng).
    capture: PathBuf,
    /// Where to send the streams, in order of first packet: HOST:PORT (comma-separated or repeated).
    #[arg(long = "to", value_name = "HOST:PORT", required = true, value_delimiter = ',', value_parser = parse_dest)]
    to: Vec<SocketAddr>,
    /// Playback speed: 2 is twice as fast as captured, 0.5 half as fast.
    #[arg(long, value_name = "N", default_value_t = 1.0, value_parser = parse_speed)]
    speed: f64,
    /// Play the capture N times back to back (sequence numbers and timestamps continue).
    #[arg(long = "loop", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    loops: u32,
    /// Also send each stream's RTCP (to the destination port + 1, or the same port when muxed).
    #[arg(long)]
    rtcp: bool,
    /// Print one JSON object describing what was sent on standard output.
    #[arg(long)]
    json: bool,
    /// Never show a progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `HOST:PORT`: an IP address (IPv6 in brackets) or a name, resolved to its first address.
fn parse_dest(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("`{s}` is not HOST:PORT"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("`{s}` is not HOST:PORT (port 0-65535)"));
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("`{host}` has no address")),
        Err(e) => Err(format!("cannot resolve `{host}`: {e}")),
    }
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number above 0")),
    }
}

fn parse_pt(s: &str) -> Result<(u8, PayloadFormat), String> {
    PayloadMap::parse_mapping(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Import(args) => import_cmd(args),
        Command::Repair(args) => repair_cmd(args),
        Command::Serve(args) => live::serve_cmd(args),
        Command::Ctl(args) => live::ctl_cmd(args),
        Command::Replay(args) => replay_cmd(args),
        Command::Doctor(args) => callvault::doctor::run(&args),
        Command::Key(args) => keys::key_cmd(args),
        Command::Verify(args) => keys::verify_cmd(args),
        Command::Decrypt(args) => keys::decrypt_cmd(args),
        Command::Catalog(args) => catalog::catalog_cmd(args),
        Command::Hold(args) => storage::hold_cmd(args),
        Command::Erase(args) => storage::erase_cmd(args),
        Command::Retention(args) => storage::retention_cmd(args),
        Command::Fetch(args) => storage::fetch_cmd(args),
        Command::User(args) => access::user_cmd(args),
        Command::Token(args) => access::token_cmd(args),
        Command::Audit(args) => audit::audit_cmd(args),
    }
}

fn replay_cmd(args: ReplayArgs) -> ExitCode {
    let opts = ReplayOptions {
        capture: args.capture.clone(),
        destinations: args.to.clone(),
        speed: args.speed,
        loops: args.loops,
        rtcp: args.rtcp,
    };
    let result = replay::plan(&opts).and_then(|plan| {
        // Say up front which streams have no address, before a possibly long replay.
        for s in plan.streams.iter().skip(opts.destinations.len()) {
            eprintln!(
                "note: stream {} ({} -> {}, ssrc 0x{:08x}) not sent: {} stream(s) found, {} --to address(es) given",
                s.index,
                s.src,
                s.dst,
                s.ssrc,
                plan.streams.len(),
                opts.destinations.len()
            );
        }
        let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("sending [{bar:40}] {pos}/{len} packets ({eta})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        });
        let mut on_progress = |sent: u64, total: u64| {
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(sent);
            }
        };
        let r = replay::replay_plan(&opts, &plan, Some(&mut on_progress));
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        r
    });
    match result {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(s) => out!("{s}"),
                    Err(e) => eprintln!("error: cannot encode report: {e}"),
                }
            } else {
                print_replay_human(&summary);
            }
            for e in &summary.errors {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(summary.exit_code())
        }
        Err(e) => {
            if args.json {
                let offset = match &e {
                    replay::ReplayError::Capture(c) => c.offset(),
                    _ => None,
                };
                let kind = if matches!(e, replay::ReplayError::Capture(_)) { "capture" } else { "replay" };
                let v = serde_json::json!({"streams": [], "skipped_streams": [], "packets_sent": 0, "duration_ms": 0,
                    "loops": args.loops, "errors": [{"kind": kind, "offset": offset, "stream": null,
                    "message": e.to_string()}]});
                out!("{v}");
            }
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn print_replay_human(summary: &ReplaySummary) {
    for s in &summary.streams {
        let mut line = format!(
            "stream {}  {} -> {}  ssrc {}  {} packets -> {} (from port {})  first at {} ms",
            s.index, s.src, s.dst, s.ssrc, s.packets, s.sent_to, s.source_port, s.first_offset_ms
        );
        if let Some(r) = &s.rtcp_sent_to {
            line.push_str(&format!("  rtcp {} -> {r}", s.rtcp_packets));
        }
        eprintln!("{line}");
    }
    eprintln!(
        "sent {} packets in {:.1} s ({} loop{}){}",
        summary.packets_sent,
        summary.duration_ms as f64 / 1000.0,
        summary.loops,
        if summary.loops == 1 { "" } else { "s" },
        if summary.skipped_streams.is_empty() {
            String::new()
        } else {
            format!("; {} stream(s) not sent (no --to address)", summary.skipped_streams.len())
        }
    );
}

fn import_cmd(args: ImportArgs) -> ExitCode {
    let opts = ImportOptions {
        capture: args.capture.clone(),
        out_dir: args.out.clone(),
        layout: match args.layout {
            LayoutArg::Stereo => Layout::Stereo,
            LayoutArg::Mono => Layout::Mono,
            LayoutArg::Separate => Layout::Separate,
        },
        payload_overrides: args.pt.clone(),
        keep_dtmf_digits: args.dtmf_digits,
        sealing: None,
        sample_rate: args.sample_rate.0,
        comfort_noise: args.comfort_noise == ComfortNoiseArg::Noise,
        format: args.format,
    };
    if let (Some(rate), Some(fixed)) = (opts.sample_rate, opts.format.fixed_rate())
        && rate != fixed
    {
        eprintln!(
            "error: --format {} is {fixed} Hz only; drop --sample-rate {rate} or choose another format",
            opts.format
        );
        return ExitCode::from(2);
    }
    let mut opts = opts;
    if !args.encrypt && (args.keys.key.is_some() || args.keys.key_dir.is_some() || args.signing_key.is_some()) {
        eprintln!("error: --key, --key-dir and --signing-key seal only with --encrypt");
        return ExitCode::from(2);
    }
    if args.encrypt {
        let sealing = args.keys.load(true, args.signing_key.as_deref()).and_then(|(ring, _, warnings)| {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            callvault::output::sealed::Sealing::new(ring, callvault::seal::format::DEFAULT_CHUNK)
                .map_err(|e| e.to_string())
        });
        match sealing {
            Ok(s) => opts.sealing = Some(s),
            Err(e) => {
                eprintln!("error: --encrypt: {e}");
                return ExitCode::from(5);
            }
        }
    }
    let show_progress = !args.quiet
        && std::io::stderr().is_terminal()
        && std::fs::metadata(&args.capture).map(|m| m.len() > 4 << 20).unwrap_or(false);
    let bar = show_progress.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let mut on_progress = |done: u64, total: Option<u64>, pass: u8| {
        if let Some(b) = &bar {
            b.set_length(total.unwrap_or(done));
            b.set_position(done);
            b.set_message(if pass == 1 { "finding calls " } else { "writing calls " });
        }
    };
    let result = import::run(&opts, Some(&mut on_progress));
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match result {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => out!("{s}"),
                    Err(e) => eprintln!("error: cannot encode report: {e}"),
                }
            } else {
                print_human(&report);
            }
            for e in &report.errors {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(report.exit_code() as u8)
        }
        Err(e) => {
            if args.json {
                let v = serde_json::json!({"recordings": [], "errors": [{"kind": "capture", "offset": match &e {
                    import::ImportError::Capture(c) => c.offset(),
                    _ => None,
                }, "call_id": null, "message": e.to_string()}]});
                out!("{v}");
            }
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_human(report: &ImportReport) {
    if report.recordings.is_empty() {
        out!("no RTP streams found ({} UDP datagrams read)", report.capture.udp_datagrams);
    }
    for r in &report.recordings {
        let where_ = r.file.clone().unwrap_or_else(|| "separate files".to_string());
        out!(
            "{}  {}  {:.1} s  {} leg(s)  call {}",
            r.recording_id,
            where_,
            r.duration_ms as f64 / 1000.0,
            r.legs.len(),
            r.call_id
        );
        for l in &r.legs {
            let codec = l.payload_types.values().cloned().collect::<Vec<_>>().join(",");
            let mut line = format!(
                "    {:<7} {} -> {}  {}  packets {} lost {} late {} dup {} reordered {}",
                l.label,
                l.src.as_deref().unwrap_or("-"),
                l.dst.as_deref().unwrap_or("-"),
                if codec.is_empty() { "-".to_string() } else { codec },
                l.packets,
                l.lost,
                l.late,
                l.duplicates,
                l.reordered
            );
            if l.silent {
                line.push_str("  [silent]");
            }
            if let Some(c) = &l.unsupported_codec {
                line.push_str(&format!("  [{c} not decoded yet: kept as silence]"));
            }
            if l.unknown_payload_type > 0 {
                let unmapped: Vec<&str> = l
                    .payload_types
                    .iter()
                    .filter(|(_, f)| f.as_str() == "unknown")
                    .map(|(pt, _)| pt.as_str())
                    .collect();
                line.push_str(&format!(
                    "  [{} packets of unmapped payload type {}: map with --pt {}=NAME/RATE]",
                    l.unknown_payload_type,
                    unmapped.join(","),
                    unmapped.first().copied().unwrap_or("PT")
                ));
            }
            if !l.dtmf.is_empty() {
                line.push_str(&format!("  dtmf {}", l.dtmf.len()));
            }
            if let Some(f) = &l.file {
                line.push_str(&format!("  {f}"));
            }
            out!("{line}");
        }
    }
}

fn repair_cmd(args: RepairArgs) -> ExitCode {
    let mut failed = false;
    let mut results = Vec::new();
    for path in &args.files {
        let is_partial = path.extension().is_some_and(|e| e == "partial");
        let final_path = if is_partial { path.with_extension("") } else { path.clone() };
        let sealed = std::fs::File::open(path).ok().and_then(|mut f| {
            let mut magic = [0u8; 8];
            std::io::Read::read_exact(&mut f, &mut magic).ok().map(|()| &magic == callvault::seal::format::MAGIC)
        });
        let outcome = if sealed == Some(true) {
            Err(wav::WavError::Unsupported {
                path: path.clone(),
                reason: "it is a sealed recording, which repair never rewrites: `callvault serve` re-seals it at \
                         start (with its keys), and `callvault decrypt --recover` writes its authenticated prefix"
                    .into(),
            })
        } else if is_partial && final_path.exists() {
            // Never replace a recording: the finished file may be the good copy.
            Err(wav::WavError::WouldReplace { path: final_path.clone() })
        } else {
            wav::repair(path).and_then(|r| {
                if is_partial {
                    // A hard link cannot replace an existing file, unlike rename: no clobbering
                    // even if the name was taken since the check above.
                    std::fs::hard_link(path, &final_path).and_then(|()| std::fs::remove_file(path)).map_err(
                        |source| wav::WavError::File {
                            path: final_path.clone(),
                            action: "rename repaired file to",
                            source,
                        },
                    )?;
                }
                Ok((r, final_path.clone()))
            })
        };
        match outcome {
            Ok((r, final_path)) => {
                if !args.json {
                    let state = if r.was_finalised { "already finalised" } else { "repaired" };
                    out!(
                        "{}: {state}, {} frames{}",
                        final_path.display(),
                        r.frames,
                        if r.rf64 { " (RF64)" } else { "" }
                    );
                }
                results
                    .push(serde_json::json!({"file": final_path.display().to_string(), "ok": true, "frames": r.frames,
                    "was_finalised": r.was_finalised, "truncated_bytes": r.truncated_bytes, "rf64": r.rf64}));
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
                results
                    .push(serde_json::json!({"file": path.display().to_string(), "ok": false, "error": e.to_string()}));
            }
        }
    }
    if args.json {
        out!("{}", serde_json::Value::Array(results));
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
