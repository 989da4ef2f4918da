//! `callvault key`, `callvault verify` and `callvault decrypt` on the command line.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use callvault::config::Config;
use callvault::output::sealed;
use callvault::seal::format::hex;
use callvault::seal::keys::{self, KeySource, Keyring, PublicKey};
use callvault::seal::{SealError, SealedReader};

/// Exit status when keys are missing or unusable (nothing could be judged).
const EXIT_KEYS: u8 = 5;
/// Exit status of `decrypt --recover` when only a prefix could be written.
const EXIT_PARTIAL: u8 = 3;

pub const KEY_EXAMPLES: &str = "\
Examples:
  callvault key list                                  # keys of ./callvault-data/keys (or --config's)
  callvault key generate --dir /etc/callvault/keys    # a new key directory: KEK + signing key
  callvault key rotate --dir /etc/callvault/keys      # new active KEK; old ones keep decrypting
  callvault key rotate --signing --dir /etc/callvault/keys
  callvault key generate --out kek.txt && systemd-creds encrypt --name=callvault.kek kek.txt kek.cred

Key files are one line of text that group and others must have no access to (mode 0600 or
0400). docs/keys.md explains the key directory, systemd credentials, rotation, backup, and what
losing a KEK means.

Exit codes: 0 done; 1 failed (the message names the file and what to do); 2 usage;
5 the keys could not be loaded.";

pub const VERIFY_EXAMPLES: &str = "\
Examples:
  callvault verify spool/01JA2Y3Q7R8S9T0V1W2X3Y4Z5A.wav.cvs
  callvault verify --json spool/*.cvs | jq '.[] | select(.verified | not)'
  callvault verify --signature-only --public-key sign-20261204-ab12cd34.pub rec.wav.cvs   # no KEK needed

Checks that every chunk authenticates in place (no alteration, truncation, reordering or
splicing), that the SHA-256 digests match the seal record, and that the record is signed by a
trusted key (the key directory's *.pub files, or --public-key). No plaintext is written.

Exit codes: 0 every file verified; 1 some file did not verify (the reason is named); 2 usage;
5 the keys could not be loaded.";

pub const DECRYPT_EXAMPLES: &str = "\
Examples:
  callvault decrypt spool/01JA2Y3Q7R8S9T0V1W2X3Y4Z5A.wav.cvs -o call.wav
  callvault decrypt rec.wav.cvs -o - | sox -t wav - -n stat
  callvault decrypt --recover spool/01JA2Y3Q7R8S9T0V1W2X3Y4Z5A.wav.cvs.partial -o rescued.wav

The file is verified completely before a byte is written; a file that does not verify is an
error, and nothing is written. With --recover, the authenticated prefix is written instead
(for WAV, with a header for the samples recovered) and what is missing is said.

Exit codes: 0 written and verified; 1 not written (the reason is named); 2 usage;
3 --recover wrote a prefix only; 5 the keys could not be loaded.";

/// Where keys come from, for commands that read or write sealed files.
#[derive(clap::Args, Clone, Default)]
pub struct KeySel {
    /// The configuration serve runs with: its [keys] (and, for catalog rebuild, its data_dir and [storage]); embedded defaults (./callvault-data) without it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A key directory (<id>.kek, active, signing.key, <id>.pub).
    #[arg(long = "key-dir", value_name = "DIR", conflicts_with = "key")]
    pub key_dir: Option<PathBuf>,
    /// A single KEK file.
    #[arg(long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

impl KeySel {
    fn config(&self) -> Result<Config, String> {
        match &self.config {
            Some(p) => Config::load(p).map_err(|e| e.to_string()),
            None => Ok(Config::default()),
        }
    }

    /// The keys, as `serve` would find them (without `create`, nothing is generated);
    /// `signing_key` overrides where the signing key comes from.
    pub fn load(&self, create: bool, signing_key: Option<&Path>) -> Result<(Keyring, KeySource, Vec<String>), String> {
        let mut cfg = self.config()?;
        if let Some(d) = &self.key_dir {
            cfg.keys.dir = d.clone();
            cfg.keys.kek_file = PathBuf::new();
        }
        if let Some(k) = &self.key {
            cfg.keys.kek_file = k.clone();
            cfg.keys.dir = PathBuf::new();
        }
        if let Some(s) = signing_key {
            cfg.keys.signing_key_file = s.to_path_buf();
        }
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let r = callvault::seal::setup::resolve(&cfg, credentials.as_deref(), create).map_err(|e| e.to_string())?;
        Ok((r.keys, r.source, r.warnings))
    }
}

/// Which key directory `key generate` and `key rotate` work on.
#[derive(clap::Args, Clone, Default)]
pub struct DirSel {
    /// The key directory; default: --config's [keys] dir, else <data_dir>/keys (./callvault-data/keys).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Take the key directory from this config.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl DirSel {
    fn dir(&self) -> Result<PathBuf, String> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let cfg = match &self.config {
            Some(p) => Config::load(p).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        match cfg.key_source(credentials.as_deref()) {
            KeySource::Dir(d) => Ok(d),
            KeySource::Credentials(c) => Err(format!(
                "keys come from the systemd credentials in {} ($CREDENTIALS_DIRECTORY), which only systemd writes: \
                 make a new key with `callvault key generate --out FILE`, encrypt it with systemd-creds and \
                 change the unit (docs/keys.md, Rotation); or name a directory with --dir",
                c.display()
            )),
            other => Err(format!("the configured keys are a {other}, not a key directory: use --dir")),
        }
    }
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a KEK (and a signing key in a new directory), or a standalone key file with --out.
    Generate {
        #[command(flatten)]
        sel: DirSel,
        /// Write one new key file here instead of into a directory (for a credential store); it
        /// must not exist.
        #[arg(long, value_name = "FILE", conflicts_with = "dir")]
        out: Option<PathBuf>,
        /// A signing key (Ed25519) instead of a KEK.
        #[arg(long)]
        signing: bool,
        /// Make the new KEK the active one (the first KEK of a directory always is).
        #[arg(long)]
        activate: bool,
        /// Print what was created as JSON on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Make a new KEK active (or, with --signing, replace the signing key); old keys stay.
    Rotate {
        #[command(flatten)]
        sel: DirSel,
        /// Rotate the signing key; its old public key stays trusted for old recordings.
        #[arg(long)]
        signing: bool,
        /// Print what was created as JSON on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Show the keys found: KEK ids and fingerprints (never the keys), the active one, the
    /// signing key's public key.
    List {
        #[command(flatten)]
        sel: KeySel,
        /// Print the keys found as JSON on standard output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub cmd: KeyCmd,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Sealed files (.wav.cvs, .meta.cvs).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub sel: KeySel,
    /// Trust this signing public key file (repeatable). Given, only these are trusted; without it,
    /// the key source's own (the key directory's *.pub, the signing key, credentials).
    #[arg(long = "public-key", value_name = "FILE")]
    pub public_key: Vec<PathBuf>,
    /// Check only the signature and the sealed file's digest: no KEK needed, contents not opened.
    #[arg(long)]
    pub signature_only: bool,
    /// JSON (an array, one object per file) on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct DecryptArgs {
    /// The sealed file.
    pub file: PathBuf,
    /// Where to write the plaintext; `-` for standard output.
    #[arg(short = 'o', long = "out", value_name = "OUT")]
    pub out: PathBuf,
    /// Write the authenticated prefix of a damaged or unfinished file (exit 3).
    #[arg(long)]
    pub recover: bool,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub sel: KeySel,
    /// Trust this signing public key file (repeatable; given, only these are trusted).
    #[arg(long = "public-key", value_name = "FILE")]
    pub public_key: Vec<PathBuf>,
    /// A JSON report on standard output (only with -o FILE).
    #[arg(long)]
    pub json: bool,
}

fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

fn print_json(v: &Value) {
    out!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn key_cmd(args: KeyArgs) -> ExitCode {
    match args.cmd {
        KeyCmd::Generate { sel, out, signing, activate, json } => {
            if let Some(path) = out {
                let (id, text, public) = if signing {
                    let k = match keys::SigningKey::generate(&keys::new_key_id("sign")) {
                        Ok(k) => k,
                        Err(e) => return fail(e, 1),
                    };
                    (k.id.clone(), k.to_file_text(), Some(k.public_key()))
                } else {
                    let k = match keys::Kek::generate(&keys::new_key_id("kek")) {
                        Ok(k) => k,
                        Err(e) => return fail(e, 1),
                    };
                    (k.id.clone(), k.to_file_text(), None)
                };
                if let Err(e) = keys::write_secret(&path, &text) {
                    return fail(e, 1);
                }
                let mut files = vec![path.display().to_string()];
                if let Some(p) = public {
                    let pub_path = path.with_file_name(format!("{}.pub", p.id));
                    if let Err(e) = std::fs::write(&pub_path, p.to_file_text()) {
                        return fail(format!("cannot write {}: {e}", pub_path.display()), 1);
                    }
                    files.push(pub_path.display().to_string());
                }
                report_created(json, if signing { "signing key" } else { "KEK" }, &id, &files, false);
                return ExitCode::SUCCESS;
            }
            let dir = match sel.dir() {
                Ok(d) => d,
                Err(e) => return fail(e, 2),
            };
            let existing = Keyring::load(&KeySource::Dir(dir.clone()), None);
            let empty = existing.as_ref().map_or(true, |r| r.keks().is_empty());
            let result = if signing {
                keys::new_signing(&dir).map(|(id, files)| (id, files, false))
            } else if empty {
                keys::init_dir(&dir).map(|c| (c.kek_id.unwrap_or_default(), c.files, true))
            } else {
                keys::add_kek(&dir, activate).map(|(id, f)| (id, vec![f], activate))
            };
            match result {
                Ok((id, files, active)) => {
                    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                    report_created(json, if signing { "signing key" } else { "KEK" }, &id, &files, active);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 1),
            }
        }
        KeyCmd::Rotate { sel, signing, json } => {
            let dir = match sel.dir() {
                Ok(d) => d,
                Err(e) => return fail(e, 2),
            };
            let result =
                if signing { keys::new_signing(&dir) } else { keys::rotate(&dir).map(|(id, f)| (id, vec![f])) };
            match result {
                Ok((id, files)) => {
                    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                    report_created(json, if signing { "signing key" } else { "KEK" }, &id, &files, !signing);
                    if !json {
                        if signing {
                            eprintln!(
                                "the old public key stays in {} so recordings it signed keep verifying; give auditors \
                                 the new <id>.pub. Restart serve to sign with the new key.",
                                dir.display()
                            );
                        } else {
                            eprintln!(
                                "the old KEKs stay, so recordings sealed with them keep decrypting. Back up {} now, \
                                 then restart serve to seal with the new KEK.",
                                dir.display()
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e, 1),
            }
        }
        KeyCmd::List { sel, json } => {
            let (ring, source, _) = match sel.load(false, None) {
                Ok(r) => r,
                Err(e) => return fail(e, EXIT_KEYS),
            };
            let keks: Vec<Value> = ring
                .keks()
                .iter()
                .map(|k| {
                    json!({"id": k.id, "fingerprint": hex(&k.fingerprint), "active": ring.active_id() == Some(k.id.as_str()),
                        "file": k.source.display().to_string()})
                })
                .collect();
            let signing = ring
                .signing()
                .ok()
                .map(|s| json!({"id": s.id, "public_key": hex(&s.public), "file": s.source.display().to_string()}));
            let trusted: Vec<Value> = ring
                .trusted()
                .iter()
                .map(|p| json!({"id": p.id, "public_key": hex(&p.key), "file": p.source.display().to_string()}))
                .collect();
            if json {
                print_json(
                    &json!({"source": source.to_string(), "keks": keks, "signing_key": signing, "trusted_signers": trusted}),
                );
            } else {
                out!("{source}");
                for k in &keks {
                    out!(
                        "  KEK {}  fingerprint {}{}  ({})",
                        k["id"].as_str().unwrap_or_default(),
                        k["fingerprint"].as_str().unwrap_or_default(),
                        if k["active"] == true { "  ACTIVE" } else { "" },
                        k["file"].as_str().unwrap_or_default()
                    );
                }
                if keks.is_empty() {
                    out!("  no KEK (callvault key generate creates one)");
                }
                match &signing {
                    Some(s) => out!(
                        "  signing key {}  public {}",
                        s["id"].as_str().unwrap_or_default(),
                        s["public_key"].as_str().unwrap_or_default()
                    ),
                    None => out!("  no signing key"),
                }
                for t in &trusted {
                    out!(
                        "  trusted signer {}  public {}",
                        t["id"].as_str().unwrap_or_default(),
                        t["public_key"].as_str().unwrap_or_default()
                    );
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn report_created(json: bool, what: &str, id: &str, files: &[String], active: bool) {
    if json {
        print_json(&json!({"created": what, "id": id, "active": active, "files": files}));
    } else {
        out!("created {what} {id}{}", if active { " (active)" } else { "" });
        for f in files {
            out!("  {f}");
        }
    }
}

/// The signers to trust: exactly the `--public-key` files when any is given (an auditor's own
/// list, nothing found on disk added), else the key source's own public keys.
fn trusted_keys(ring: &Keyring, given: &[PathBuf]) -> Result<Vec<PublicKey>, String> {
    if given.is_empty() {
        return Ok(ring.trusted().to_vec());
    }
    given.iter().map(|p| PublicKey::load(p).map_err(|e| e.to_string())).collect()
}

fn open(path: &Path, ring: &Keyring) -> Result<SealedReader<File>, SealError> {
    let f = File::open(path).map_err(|e| SealError::io("open", path, e))?;
    SealedReader::open(f, ring)
}

/// The clear header of a sealed file (no key needed), for the name check.
fn header_of(path: &Path) -> Option<callvault::seal::Header> {
    let mut f = File::open(path).ok()?;
    callvault::seal::reader::read_header(&mut f).ok().map(|(h, _, _)| h)
}

fn is_key_problem(e: &SealError) -> bool {
    matches!(
        e,
        SealError::UnknownKek { .. }
            | SealError::KeyFileMode { .. }
            | SealError::KeyFile { .. }
            | SealError::NoSigningKey(_)
    )
}

pub fn verify_cmd(args: VerifyArgs) -> ExitCode {
    // Signature-only checks need no KEK; the keyring only supplies trusted public keys then.
    let ring = match args.sel.load(false, None) {
        _ if args.signature_only && !args.public_key.is_empty() => Keyring::default(),
        Ok((r, _, _)) => r,
        Err(_) if args.signature_only => Keyring::default(),
        Err(e) => {
            return fail(
                format!(
                    "{e}\n(an auditor with the recorder's public key only: `callvault verify --signature-only \
                     --public-key <id>.pub FILE`)"
                ),
                EXIT_KEYS,
            );
        }
    };
    let trusted = match trusted_keys(&ring, &args.public_key) {
        Ok(t) => t,
        Err(e) => return fail(e, EXIT_KEYS),
    };
    if trusted.is_empty() {
        return fail("no trusted signing public key: pass --public-key FILE (the recorder's <id>.pub)", EXIT_KEYS);
    }
    let mut results = Vec::new();
    let mut worst = 0u8;
    for path in &args.files {
        let r: Result<Value, SealError> = if args.signature_only {
            File::open(path)
                .map_err(|e| SealError::io("open", path, e))
                .and_then(|f| callvault::seal::reader::verify_signature_only(f, &trusted))
                .and_then(|rec| match header_of(path).and_then(|h| sealed::name_mismatch(path, &h)) {
                    Some(why) => Err(SealError::NameMismatch(why)),
                    None => Ok(rec),
                })
                .map(|rec| {
                    let id = trusted.iter().find(|t| t.key == rec.signer).map(|t| t.id.clone());
                    json!({"sealed_sha256": hex(&rec.sealed_sha256), "body_sha256": hex(&rec.body_sha256),
                        "signer": hex(&rec.signer), "signer_id": id, "finalised_ms": rec.finalised_ms,
                        "contents_checked": false})
                })
        } else {
            open(path, &ring).and_then(|mut rd| {
                let h = rd.header().clone();
                let v = rd.verify(&trusted, None)?;
                if let Some(why) = sealed::name_mismatch(path, &h) {
                    return Err(SealError::NameMismatch(why));
                }
                let mut j = json!({
                    "recording_id": h.recording_id.to_string(), "content": h.content.name(), "kek_id": h.key_id,
                    "plaintext_bytes": v.record.plaintext_len, "plaintext_sha256": hex(&v.plaintext_sha256),
                    "body_sha256": hex(&v.record.body_sha256), "sealed_sha256": hex(&v.record.sealed_sha256),
                    "signer": hex(&v.record.signer), "signer_id": v.signer.id, "finalised_ms": v.record.finalised_ms,
                    "recovered": v.record.flags & callvault::seal::format::FLAG_RECOVERED != 0,
                    "chunks": v.chunks, "contents_checked": true,
                });
                if h.content == callvault::seal::Content::Audio {
                    j["audio_sha256"] = j["body_sha256"].clone();
                }
                Ok(j)
            })
        };
        let file = path.display().to_string();
        match r {
            Ok(mut v) => {
                v["file"] = json!(file);
                v["verified"] = json!(true);
                if !args.json {
                    let signer = v["signer_id"].as_str().or(v["signer"].as_str()).unwrap_or_default().to_string();
                    if args.signature_only {
                        out!(
                            "{file}: verified (signature and sealed bytes only); sealed sha256 {}; signed by {signer}",
                            v["sealed_sha256"].as_str().unwrap_or_default()
                        );
                    } else {
                        out!(
                            "{file}: verified; sha256 of the decrypted file {}; {} sha256 {}; signed by {signer}",
                            v["plaintext_sha256"].as_str().unwrap_or_default(),
                            if v["content"] == "audio" { "audio (samples)" } else { "metadata" },
                            v["body_sha256"].as_str().unwrap_or_default()
                        );
                    }
                }
                results.push(v);
            }
            Err(e) => {
                worst = worst.max(if is_key_problem(&e) { EXIT_KEYS } else { 1 });
                if !args.json {
                    out!("{file}: NOT VERIFIED: {e}");
                }
                results.push(json!({"file": file, "verified": false, "error_kind": e.kind(), "error": e.to_string()}));
            }
        }
    }
    if args.json {
        print_json(&Value::Array(results));
    }
    ExitCode::from(worst)
}

pub fn decrypt_cmd(args: DecryptArgs) -> ExitCode {
    let to_stdout = args.out.as_os_str() == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        return fail("standard output is a terminal: give -o FILE, or pipe it (| sox -t wav - ...)", 2);
    }
    if to_stdout && args.json {
        return fail("--json needs -o FILE: with -o - the plaintext itself goes to standard output", 2);
    }
    if !to_stdout && args.out.is_dir() {
        return fail(format!("{} is a directory: give the file to write", args.out.display()), 1);
    }
    if !to_stdout && args.out.exists() && !args.force {
        return fail(format!("{} exists: not replacing it (--force replaces it)", args.out.display()), 1);
    }
    let ring = match args.sel.load(false, None) {
        Ok((r, _, _)) => r,
        Err(e) => return fail(e, EXIT_KEYS),
    };
    let trusted = match trusted_keys(&ring, &args.public_key) {
        Ok(t) => t,
        Err(e) => return fail(e, EXIT_KEYS),
    };
    let mut reader = match open(&args.file, &ring) {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", args.file.display()), if is_key_problem(&e) { EXIT_KEYS } else { 1 }),
    };
    if let Some(why) = sealed::name_mismatch(&args.file, reader.header()) {
        return fail(format!("{}: {}", args.file.display(), SealError::NameMismatch(why)), 1);
    }
    // Verified completely first: unauthenticated plaintext is never written.
    let verdict = reader.verify(&trusted, None);
    // A fresh temporary name, created exclusively (never through a symlink or over a file that is
    // there) and readable by the owner only: it holds plaintext.
    let tmp = {
        let mut r = [0u8; 6];
        callvault::seal::random(&mut r);
        let name = args.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        args.out.with_file_name(format!(".{name}.{}.tmp", hex(&r)))
    };
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        use std::os::unix::fs::OpenOptionsExt;
        match File::options().write(true).create_new(true).mode(0o600).open(&tmp) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("cannot create {}: {e}", tmp.display()), 1),
        }
    };
    let (code, report) = match verdict {
        Ok(v) => match reader.verify(&trusted, Some(&mut sink)) {
            Ok(_) => (
                0,
                json!({"file": args.file.display().to_string(), "out": args.out.display().to_string(), "verified": true,
                "bytes": v.record.plaintext_len, "plaintext_sha256": hex(&v.plaintext_sha256)}),
            ),
            Err(e) if e.is_broken_pipe() => std::process::exit(141),
            Err(e) => (1, json!({"error_kind": e.kind(), "error": e.to_string()})),
        },
        Err(e) if args.recover && !is_key_problem(&e) => match sealed::write_recovered(&mut reader, &mut sink) {
            Ok(r) => {
                let why = match &e {
                    SealError::NotFinalised { .. } => "not finalised (a crash, or the end was cut off)".to_string(),
                    other => other.to_string(),
                };
                eprintln!(
                    "warning: {}: {why}; wrote the authenticated prefix: {} bytes{}{}",
                    args.file.display(),
                    r.bytes,
                    if r.frames > 0 { format!(" ({} frames)", r.frames) } else { String::new() },
                    r.stopped_by.map(|s| format!("; stopped at: {s}")).unwrap_or_default()
                );
                (
                    EXIT_PARTIAL,
                    json!({"file": args.file.display().to_string(), "out": args.out.display().to_string(), "verified": false,
                    "recovered": true, "bytes": r.bytes, "frames": r.frames, "error_kind": e.kind(), "error": e.to_string()}),
                )
            }
            Err(e2) if e2.is_broken_pipe() => std::process::exit(141),
            Err(e2) => (1, json!({"error_kind": e2.kind(), "error": format!("{e}; nothing recoverable: {e2}")})),
        },
        Err(e) => {
            let hint = if matches!(
                e,
                SealError::NotFinalised { .. } | SealError::ChunkAltered { .. } | SealError::Truncated(_)
            ) {
                " (--recover writes the authenticated prefix)"
            } else {
                ""
            };
            (
                if is_key_problem(&e) { EXIT_KEYS } else { 1 },
                json!({"error_kind": e.kind(), "error": format!("{}: {e}{hint}", args.file.display())}),
            )
        }
    };
    let flushed = sink.flush();
    if to_stdout && flushed.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        std::process::exit(141);
    }
    drop(sink);
    if !to_stdout {
        if code == 0 || code == EXIT_PARTIAL {
            if let Err(e) = flushed.and_then(|()| std::fs::rename(&tmp, &args.out)) {
                let _ = std::fs::remove_file(&tmp);
                return fail(format!("cannot write {}: {e}", args.out.display()), 1);
            }
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    if code == 0 || code == EXIT_PARTIAL {
        if args.json && !to_stdout {
            print_json(&report);
        }
    } else {
        eprintln!("error: {}", report["error"].as_str().unwrap_or_default());
    }
    ExitCode::from(code)
}
