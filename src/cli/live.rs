//! `callvault serve` and `callvault ctl` on the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use callvault::config::Config;
use callvault::ctl::{self, Client};

pub const SERVE_EXAMPLES: &str = "\
Examples:
  callvault serve                                   # embedded defaults: ./callvault-data, RTP 16384-32767
  callvault serve --config /etc/callvault/callvault.toml
  callvault serve --check --config callvault.toml  # validate the config and exit

Without --config, data goes to ./callvault-data (spool/ holds recordings), the control socket is
./callvault-data/control.sock, metrics are on 127.0.0.1:9464 and the search and playback API with
its web page on http://127.0.0.1:8080/ ([api] listen). Every key and its default is in
docs/configuration.md. SIGTERM or Ctrl-C finalises every active recording before exit.

Exit codes: 0 clean stop (or config valid with --check); 1 could not start (the message names the
config key or resource and what to do).";

pub const CTL_EXAMPLES: &str = "\
Examples:
  callvault ctl health
  callvault ctl start c-1 --leg customer --leg agent --meta agent=1001 --pt customer:101=telephone-event/8000
  callvault ctl start c-2 --leg customer --leg agent --pt customer:9=G722/8000 --format opus
  callvault ctl status c-1
  callvault ctl pause c-1 --cut && callvault ctl resume c-1
  callvault ctl add-leg c-1 supervisor --channel 1
  callvault ctl stop c-1
  callvault ctl subscribe                          # event lines until Ctrl-C
  echo '{\"cmd\":\"list\"}' | callvault ctl raw     # requests from stdin, one per line

Each reply is printed as one JSON line on stdout (--pretty indents it). The socket is taken from
--socket, else from --config, else $CALLVAULT_SOCKET, else ./callvault-data/control.sock. A reply
must come within --timeout seconds (default 30; 0 waits for ever; subscribe waits for its first
reply only).

Exit codes: 0 ok; 1 the daemon refused (its error code and message are on stderr); 2 usage;
4 the socket could not be reached, or the daemon did not answer within --timeout.";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration (see docs/configuration.md); embedded defaults without it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(clap::Args)]
pub struct CtlArgs {
    /// Control socket path.
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// Take the socket path from this config file.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Indent the JSON output.
    #[arg(long, global = true)]
    pub pretty: bool,
    /// Seconds to wait for each reply before giving up with exit code 4 (0: for ever).
    #[arg(long, value_name = "SECONDS", global = true, default_value = "30", value_parser = ctl::parse_timeout)]
    pub timeout: std::time::Duration,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Liveness, version, protocol version, back end.
    Health,
    /// Active calls.
    List,
    /// Load per worker and remaining capacity.
    Stats,
    /// Refuse new calls; active ones run to their end.
    Drain,
    /// Start recording a call; prints the ports to send each leg's RTP to.
    Start {
        /// The ACD's call id.
        call_id: String,
        /// A leg: LABEL[,source=IP[:PORT]][,channel=N][,mux] (repeat; first is left in stereo).
        #[arg(long = "leg", required = true)]
        legs: Vec<String>,
        /// A payload type for a leg: LABEL:PT=NAME/RATE[/CH] (static types need none).
        #[arg(long = "pt", value_parser = ctl::parse_leg_pt)]
        pts: Vec<(String, String)>,
        /// stereo, mono or separate (default from the config).
        #[arg(long)]
        layout: Option<String>,
        /// Metadata KEY=VALUE kept with the recording (repeat).
        #[arg(long = "meta")]
        meta: Vec<String>,
        /// Keep DTMF digits for this call.
        #[arg(long)]
        dtmf_digits: bool,
        /// File format: wav, wav-ulaw, wav-alaw, opus or mp3 (default from the config).
        #[arg(long)]
        format: Option<String>,
        /// Sample rate: 8000, 16000, 48000 or auto (default from the config).
        #[arg(long = "sample-rate", value_name = "HZ|auto")]
        sample_rate: Option<String>,
    },
    /// Stop and finalise a call's recording.
    Stop { call_id: String },
    /// Pause recording (masked with silence, or cut out with --cut).
    Pause {
        call_id: String,
        /// Leave the paused span out of the file instead of keeping it as silence.
        #[arg(long)]
        cut: bool,
    },
    /// Resume a paused recording.
    Resume { call_id: String },
    /// Per-leg counters and state of a call.
    Status { call_id: String },
    /// Merge metadata into a call's recording.
    Update {
        call_id: String,
        /// KEY=VALUE (repeat).
        #[arg(long = "meta", required = true)]
        meta: Vec<String>,
    },
    /// A leg joins a call (transfer, consult, conference).
    AddLeg {
        call_id: String,
        /// LABEL[,source=IP[:PORT]][,channel=N][,mux]
        leg: String,
        /// LABEL:PT=NAME/RATE[/CH] (repeat).
        #[arg(long = "pt", value_parser = ctl::parse_leg_pt)]
        pts: Vec<(String, String)>,
        /// Output channel.
        #[arg(long)]
        channel: Option<u16>,
    },
    /// A leg leaves a call.
    RemoveLeg { call_id: String, label: String },
    /// Print event lines until interrupted.
    Subscribe {
        /// Replay kept events after this sequence number first.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Send JSON request lines (arguments, or stdin when none) and print each reply.
    Raw { requests: Vec<String> },
}

pub fn serve_cmd(args: ServeArgs) -> ExitCode {
    let cfg = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if args.check {
        // The storage targets are set up as serve sets them up (secret files read, clients
        // built; nothing sent, no directory created).
        if cfg.storage.ship
            && let Err(e) = callvault::storage::check_config(&cfg)
        {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        // The API's certificate and key are loaded and matched as serve loads them.
        if !cfg.api.listen.is_empty()
            && let Err(e) = callvault::api::server::check_tls(&cfg)
        {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        out!("config ok");
        return ExitCode::SUCCESS;
    }
    match callvault::serve::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            callvault::log::error(&format!("cannot start: {e}"));
            ExitCode::from(1)
        }
    }
}

fn socket_path(args: &CtlArgs) -> Result<PathBuf, String> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if let Some(c) = &args.config {
        return Config::load(c).map(|c| c.socket_path()).map_err(|e| e.to_string());
    }
    if let Ok(s) = std::env::var("CALLVAULT_SOCKET") {
        return Ok(PathBuf::from(s));
    }
    Ok(Config::default().socket_path())
}

fn print(v: &Value, pretty: bool) {
    let text = if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) };
    out!("{}", text.unwrap_or_default());
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

pub fn ctl_cmd(args: CtlArgs) -> ExitCode {
    let path = match socket_path(&args) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let request = match &args.command {
        CtlCommand::Health => json!({"cmd": "health"}),
        CtlCommand::List => json!({"cmd": "list"}),
        CtlCommand::Stats => json!({"cmd": "stats"}),
        CtlCommand::Drain => json!({"cmd": "drain"}),
        CtlCommand::Start { call_id, legs, pts, layout, meta, dtmf_digits, format, sample_rate } => {
            let legs: Result<Vec<Value>, String> = legs.iter().map(|l| ctl::leg_object(l, pts)).collect();
            let legs = match legs {
                Ok(l) => l,
                Err(e) => return usage(&e),
            };
            let metadata = match ctl::metadata(meta) {
                Ok(m) => m,
                Err(e) => return usage(&e),
            };
            let mut r = json!({"cmd": "start", "call_id": call_id, "legs": legs, "metadata": metadata});
            if let Some(l) = layout {
                r["layout"] = json!(l);
            }
            if *dtmf_digits {
                r["dtmf_digits"] = json!(true);
            }
            if let Some(f) = format {
                r["format"] = json!(f);
            }
            // A number goes as a number; anything else ("auto", a typo) as text, for the daemon
            // to accept or refuse with its own message.
            match sample_rate.as_deref().map(|s| (s, s.parse::<u64>())) {
                Some((_, Ok(n))) => r["sample_rate"] = json!(n),
                Some((s, Err(_))) => r["sample_rate"] = json!(s),
                None => {}
            }
            r
        }
        CtlCommand::Stop { call_id } => json!({"cmd": "stop", "call_id": call_id}),
        CtlCommand::Pause { call_id, cut } => {
            json!({"cmd": "pause", "call_id": call_id, "mode": if *cut { "cut" } else { "mask" }})
        }
        CtlCommand::Resume { call_id } => json!({"cmd": "resume", "call_id": call_id}),
        CtlCommand::Status { call_id } => json!({"cmd": "status", "call_id": call_id}),
        CtlCommand::Update { call_id, meta } => match ctl::metadata(meta) {
            Ok(m) => json!({"cmd": "update", "call_id": call_id, "metadata": m}),
            Err(e) => return usage(&e),
        },
        CtlCommand::AddLeg { call_id, leg, pts, channel } => {
            let mut l = match ctl::leg_object(leg, pts) {
                Ok(l) => l,
                Err(e) => return usage(&e),
            };
            if let Some(c) = channel {
                l["channel"] = json!(c);
            }
            json!({"cmd": "add_leg", "call_id": call_id, "leg": l})
        }
        CtlCommand::RemoveLeg { call_id, label } => json!({"cmd": "remove_leg", "call_id": call_id, "label": label}),
        CtlCommand::Subscribe { since } => json!({"cmd": "subscribe", "since": since}),
        CtlCommand::Raw { .. } => Value::Null,
    };
    let mut client = match Client::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(ctl::EXIT_UNREACHABLE);
        }
    };
    if let Err(e) = client.set_timeout((!args.timeout.is_zero()).then_some(args.timeout)) {
        eprintln!("error: {e}");
        return ExitCode::from(ctl::EXIT_UNREACHABLE);
    }
    let result = match &args.command {
        CtlCommand::Raw { requests } => raw(&mut client, requests, args.pretty),
        CtlCommand::Subscribe { .. } => subscribe(&mut client, request, args.pretty),
        _ => client.request(request).map(|reply| report(&reply, args.pretty)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(ctl::EXIT_UNREACHABLE)
        }
    }
}

/// Prints a reply; the exit code says whether it was ok.
fn report(reply: &Value, pretty: bool) -> ExitCode {
    print(reply, pretty);
    if reply["ok"] == json!(true) {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {}: {}",
            reply["error"]["code"].as_str().unwrap_or("unknown"),
            reply["error"]["message"].as_str().unwrap_or("")
        );
        ExitCode::from(ctl::EXIT_REFUSED)
    }
}

fn raw(client: &mut Client, requests: &[String], pretty: bool) -> std::io::Result<ExitCode> {
    let lines: Vec<String> =
        if requests.is_empty() { std::io::stdin().lines().collect::<Result<_, _>>()? } else { requests.to_vec() };
    let mut all_ok = true;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        client.send_raw(line)?;
        let reply = loop {
            let v = client.read_line()?;
            if v.get("event").is_none() {
                break v;
            }
            print(&v, pretty);
        };
        all_ok &= reply["ok"] == json!(true);
        print(&reply, pretty);
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(ctl::EXIT_REFUSED) })
}

fn subscribe(client: &mut Client, request: Value, pretty: bool) -> std::io::Result<ExitCode> {
    let reply = client.request(request)?;
    print(&reply, pretty);
    if reply["ok"] != json!(true) {
        return Ok(ExitCode::from(ctl::EXIT_REFUSED));
    }
    // Events come when they come: only the reply above is bounded by --timeout.
    client.set_timeout(None)?;
    loop {
        match client.read_line() {
            Ok(v) => print(&v, pretty),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e),
        }
    }
}
