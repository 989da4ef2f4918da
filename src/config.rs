//! `callvault serve` configuration: embedded defaults, overridden by a TOML file.
//!
//! Every key is documented in `docs/configuration.md` with its default. Unknown keys and
//! out-of-range values are refused at start, naming the key and the reason: a typo must not
//! silently leave a default in force.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::mixer::Layout;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and the line.
        message: String,
    },
    /// A value is of the right type but not usable.
    #[error("invalid config: {key} = {value}: {reason}")]
    Invalid {
        /// The key, e.g. `rtp.port_min`.
        key: &'static str,
        /// The value given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// Which receive back end the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring only: refuse to start without it.
    IoUring,
    /// epoll + recvmmsg.
    Epoll,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where spool, keys and catalog live.
    pub data_dir: PathBuf,
    /// The ACD's control socket.
    pub control: ControlConfig,
    /// RTP ports and addresses.
    pub rtp: RtpConfig,
    /// Worker threads and receive back end.
    pub engine: EngineConfig,
    /// Capacity and time limits.
    pub limits: LimitsConfig,
    /// How recordings are made.
    pub recording: RecordingDefaults,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Where the keys for encryption at rest come from.
    pub keys: KeysConfig,
    /// Where finished recordings are shipped: the local archive or S3-compatible storage.
    pub storage: StorageConfig,
    /// How long recordings are kept.
    pub retention: RetentionConfig,
    /// The search and playback API (docs/api.md).
    pub api: ApiConfig,
    /// The audit trail (docs/audit.md).
    pub audit: AuditConfig,
}

/// `[audit]`: the audit trail's anchors (docs/audit.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Seconds between anchors of the audit chain's head (to the storage targets and the
    /// journal); 0: only at shutdown. Entries cut off after the last anchor cannot be detected,
    /// so this bounds what could be lost unnoticed.
    pub anchor_interval_s: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { anchor_interval_s: 60 }
    }
}

/// `[api]`: the HTTP API and web page for search and playback (docs/api.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address; empty turns the API off. Any address that is not loopback needs TLS.
    pub listen: String,
    /// PEM certificate chain for TLS (with `tls_key`); required unless `listen` is loopback.
    pub tls_cert: PathBuf,
    /// PEM private key for TLS.
    pub tls_key: PathBuf,
    /// Longest lifetime of a signed playback link, seconds.
    pub link_max_ttl_s: u64,
    /// Bytes of transcoded audio kept in memory for seeking (all recordings together).
    pub transcode_cache_mib: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            link_max_ttl_s: 86_400,
            transcode_cache_mib: 256,
        }
    }
}

/// `[storage]`: see `docs/storage.md`. With nothing set, finished recordings move to the local
/// archive `<data_dir>/archive` in the same layout an object store gets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Ship finished recordings at all (false: they stay in the spool).
    pub ship: bool,
    /// Recordings shipped at once.
    pub concurrency: usize,
    /// Multipart part size for S3 (5-512 MiB); files larger than one part go multipart.
    pub part_size_mib: u64,
    /// How an upload is verified before the spool's copy is released: "read-back" (the object is
    /// read back and its SHA-256 compared) or "checksum" (the store checks the
    /// x-amz-checksum-sha256 sent with every part; only for stores that do).
    pub verify: String,
    /// Longest wait between retries of a failing upload.
    pub retry_max_s: u64,
    /// How often new metadata objects (other recorders' too) are looked for, to keep the
    /// catalog current (0: never).
    pub catalog_poll_s: u64,
    /// The target every recording goes to.
    pub primary: TargetConfig,
    /// An optional second target, written independently.
    pub backup: Option<TargetConfig>,
}

/// One storage target: `kind = "local"` (a directory) or `kind = "s3"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// "local" or "s3".
    pub kind: String,
    /// local: the archive directory (empty: `<data_dir>/archive`).
    pub path: PathBuf,
    /// s3: the endpoint URL, e.g. http://127.0.0.1:3900 (empty: AWS).
    pub endpoint: String,
    /// s3: the bucket.
    pub bucket: String,
    /// s3: the region ("garage" for Garage).
    pub region: String,
    /// Key prefix (no leading or trailing slash): objects are `PREFIX/YYYY/MM/DD/<recording id>.<ext>`.
    pub prefix: String,
    /// s3: the access key id (empty: $AWS_ACCESS_KEY_ID).
    pub access_key_id: String,
    /// s3: the secret key (prefer `secret_access_key_file`; empty: $AWS_SECRET_ACCESS_KEY).
    pub secret_access_key: String,
    /// s3: a file holding the secret key (mode 0600), e.g. a systemd credential.
    pub secret_access_key_file: PathBuf,
    /// s3: virtual-hosted-style requests (bucket.endpoint); false: path-style.
    pub virtual_hosted: bool,
}

/// `[retention]`: see `docs/storage.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delete expired recordings from this recorder (in a fleet sharing one store, one node is
    /// enough).
    pub enforce: bool,
    /// Days a recording no policy matches is kept (0: forever).
    pub default_days: u64,
    /// How often expired recordings are looked for.
    pub interval_s: u64,
    /// Policies, first match wins.
    pub policy: Vec<RetentionPolicy>,
}

/// `[[retention.policy]]`: recordings whose metadata has every `match` key with its value are
/// kept `days` days from their start.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// A name for the deletion log.
    pub name: String,
    /// Metadata keys and values, all of which must match.
    #[serde(rename = "match")]
    pub matches: std::collections::BTreeMap<String, String>,
    /// Days from the recording's start (at least 1).
    pub days: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            ship: true,
            concurrency: 4,
            part_size_mib: 8,
            verify: "read-back".into(),
            retry_max_s: 300,
            catalog_poll_s: 30,
            primary: TargetConfig::default(),
            backup: None,
        }
    }
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            kind: "local".into(),
            path: PathBuf::new(),
            endpoint: String::new(),
            bucket: String::new(),
            region: String::new(),
            prefix: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            secret_access_key_file: PathBuf::new(),
            virtual_hosted: false,
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { enforce: true, default_days: 0, interval_s: 3600, policy: Vec::new() }
    }
}

/// `[keys]`: see `docs/keys.md`. With nothing set, systemd credentials are used when
/// `$CREDENTIALS_DIRECTORY` holds `callvault.kek`, else `<data_dir>/keys` (created on first start).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// A key directory (`<id>.kek`, `active`, `signing.key`, `<id>.pub`).
    pub dir: PathBuf,
    /// One KEK file instead of a directory (no rotation).
    pub kek_file: PathBuf,
    /// The Ed25519 signing key file, when it is not in the key directory or credentials.
    pub signing_key_file: PathBuf,
    /// More public keys whose signatures are trusted (earlier signing keys' `<id>.pub`).
    pub trusted_public_keys: Vec<PathBuf>,
}

/// `[control]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Socket path; empty means `<data_dir>/control.sock`.
    pub socket: PathBuf,
    /// File mode of the socket, as an octal string such as "0660".
    pub socket_mode: String,
    /// Peer uids allowed besides root and the daemon's own uid.
    pub allow_uids: Vec<u32>,
    /// Peer gids allowed (the peer's primary gid, checked with SO_PEERCRED).
    pub allow_gids: Vec<u32>,
    /// Concurrent client connections.
    pub max_clients: usize,
}

/// `[rtp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    /// Address the RTP sockets bind to.
    pub bind: IpAddr,
    /// Address told to the ACD in `start` replies; empty means `bind` (or 127.0.0.1 when
    /// `bind` is unspecified).
    pub advertise: String,
    /// Lowest port handed out (even).
    pub port_min: u16,
    /// Highest port handed out.
    pub port_max: u16,
    /// Legs that do not say get RTCP on the RTP port (true) or on port + 1 (false).
    pub rtcp_mux: bool,
    /// SO_RCVBUF per socket, bytes (the kernel doubles it and caps it at net.core.rmem_max).
    pub receive_buffer_bytes: usize,
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Pin worker `i` to the i-th allowed core.
    pub pin_threads: bool,
    /// Receive back end.
    pub backend: BackendChoice,
    /// A wait returns after this many completions…
    pub batch: u32,
    /// …or after this long, microseconds.
    pub batch_wait_us: u64,
    /// Receive buffers per worker (a power of two).
    pub buffers: u16,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent calls; descriptors are budgeted for this many at start.
    pub max_calls: usize,
    /// Legs per call (start + add_leg).
    pub max_legs_per_call: usize,
    /// A call is finalised after this long, seconds; 0 means never.
    pub max_duration_s: u64,
    /// A call whose legs all stay silent this long (no packets) is finalised, seconds.
    pub silence_timeout_s: u64,
    /// A `leg_silent` event is sent after a leg has sent nothing for this long, seconds.
    pub leg_silent_event_s: u64,
    /// `start` is refused (`spool_full`) and the recorder reports itself not ready while the
    /// spool's file system has less than this free, MiB; 0 turns the check off.
    pub min_spool_free_mb: u64,
}

/// `[recording]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingDefaults {
    /// Layout when `start` does not say: "stereo", "mono" or "separate".
    pub layout: String,
    /// Keep DTMF digit values (they may be card numbers).
    pub dtmf_digits: bool,
    /// How long a packet may be late and still be placed, ms.
    pub reorder_window_ms: u32,
    /// "on" (sealed with AES-256-GCM, the default) or "off" (plain WAV and JSON).
    pub encryption: String,
    /// Plaintext KiB per sealed chunk: at most this much is lost to a crash.
    pub seal_chunk_kib: u32,
    /// Sample rate when `start` does not say: 8000, 16000, 48000, or "auto" (the highest rate
    /// among the codecs the legs declare in `payload_types`; 8000 when none is declared).
    pub sample_rate: SampleRate,
    /// Fill comfort-noise periods (RFC 3389) with noise at the signalled level; false: silence.
    pub comfort_noise: bool,
    /// File format when `start` does not say: wav, wav-ulaw, wav-alaw, opus, mp3.
    pub format: String,
}

/// `[recording] sample_rate`: a rate in Hz or `"auto"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SampleRate {
    Hz(u32),
    Word(String),
}

impl SampleRate {
    /// The fixed rate, or `None` for auto.
    pub fn fixed(&self) -> Option<u32> {
        match self {
            SampleRate::Hz(r) => Some(*r),
            SampleRate::Word(_) => None,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// HTTP listen address for /metrics; empty turns it off.
    pub listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./callvault-data"),
            control: ControlConfig::default(),
            rtp: RtpConfig::default(),
            engine: EngineConfig::default(),
            limits: LimitsConfig::default(),
            recording: RecordingDefaults::default(),
            metrics: MetricsConfig::default(),
            keys: KeysConfig::default(),
            storage: StorageConfig::default(),
            retention: RetentionConfig::default(),
            api: ApiConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::new(),
            socket_mode: "0660".into(),
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            max_clients: 64,
        }
    }
}

impl Default for RtpConfig {
    fn default() -> Self {
        RtpConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            advertise: String::new(),
            port_min: 16384,
            port_max: 32767,
            rtcp_mux: false,
            receive_buffer_bytes: 256 * 1024,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 0,
            pin_threads: true,
            backend: BackendChoice::Auto,
            batch: 64,
            batch_wait_us: 1000,
            buffers: 4096,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_calls: 2000,
            max_legs_per_call: 8,
            max_duration_s: 0,
            silence_timeout_s: 30 * 60,
            leg_silent_event_s: 30,
            min_spool_free_mb: 256,
        }
    }
}

impl Default for RecordingDefaults {
    fn default() -> Self {
        RecordingDefaults {
            layout: "stereo".into(),
            dtmf_digits: false,
            reorder_window_ms: 200,
            encryption: "on".into(),
            seal_chunk_kib: 8,
            sample_rate: SampleRate::Word("auto".into()),
            comfort_noise: true,
            format: "wav".into(),
        }
    }
}

impl ApiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, value: impl ToString, reason: &str) -> ConfigError {
            ConfigError::Invalid { key, value: value.to_string(), reason: reason.into() }
        }
        if self.listen.is_empty() {
            return Ok(());
        }
        let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
            return Err(invalid("api.listen", &self.listen, "must be IP:PORT (or empty to turn the API off)"));
        };
        let (cert, key) = (!self.tls_cert.as_os_str().is_empty(), !self.tls_key.as_os_str().is_empty());
        if cert != key {
            let (k, v) = if cert { ("api.tls_key", "\"\"") } else { ("api.tls_cert", "\"\"") };
            return Err(invalid(k, v, "set api.tls_cert and api.tls_key together"));
        }
        if !addr.ip().is_loopback() && !cert {
            return Err(invalid(
                "api.listen",
                &self.listen,
                "an address other than loopback needs TLS: set api.tls_cert and api.tls_key (docs/api.md)",
            ));
        }
        if !(60..=7 * 86_400).contains(&self.link_max_ttl_s) {
            return Err(invalid("api.link_max_ttl_s", self.link_max_ttl_s, "must be 60 to 604800"));
        }
        if self.transcode_cache_mib > 65_536 {
            return Err(invalid("api.transcode_cache_mib", self.transcode_cache_mib, "must be at most 65536"));
        }
        Ok(())
    }

    /// Whether TLS is configured.
    pub fn tls(&self) -> bool {
        !self.tls_cert.as_os_str().is_empty()
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9464".into() }
    }
}

impl TargetConfig {
    /// Whether two targets are the same place (endpoint spelt with or without a trailing `/`,
    /// whatever their credentials or region): a backup there is no backup.
    fn same_place(&self, other: &TargetConfig) -> bool {
        let end = |t: &TargetConfig| t.endpoint.trim_end_matches('/').to_ascii_lowercase();
        match (self.kind.as_str(), other.kind.as_str()) {
            ("local", "local") => self.path == other.path,
            ("s3", "s3") => end(self) == end(other) && self.bucket == other.bucket && self.prefix == other.prefix,
            _ => false,
        }
    }

    fn validate(&self, key: &'static str) -> Result<(), ConfigError> {
        let invalid = |value: String, reason: &str| ConfigError::Invalid { key, value, reason: reason.into() };
        if self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.contains("//") {
            return Err(invalid(self.prefix.clone(), "prefix must not start or end with '/' nor contain '//'"));
        }
        match self.kind.as_str() {
            "local" => {
                if !self.bucket.is_empty() || !self.endpoint.is_empty() {
                    return Err(invalid(
                        self.kind.clone(),
                        "a local target takes path, not endpoint or bucket (set kind = \"s3\")",
                    ));
                }
            }
            "s3" => {
                if self.bucket.is_empty() {
                    return Err(invalid("bucket = \"\"".into(), "an s3 target needs a bucket"));
                }
                if !self.endpoint.is_empty() {
                    // Parsed as the client will parse it (a URL it cannot make a request of
                    // would otherwise fail only at the first upload).
                    let uri =
                        format!("{}/{}/key", self.endpoint.trim_end_matches('/'), self.bucket).parse::<http::Uri>();
                    let ok = uri.as_ref().is_ok_and(|u| {
                        let authority = u.authority().map_or("", |a| a.as_str());
                        let after_host = authority.rsplit(']').next().unwrap_or(authority);
                        matches!(u.scheme_str(), Some("http" | "https"))
                            && u.host().is_some_and(|h| !h.is_empty())
                            && (!after_host.contains(':') || u.port_u16().is_some())
                    });
                    if !ok {
                        return Err(invalid(
                            self.endpoint.clone(),
                            "endpoint must be an http:// or https:// URL with a host (and a port up to 65535), e.g. http://10.0.0.20:3900",
                        ));
                    }
                }
                if !self.secret_access_key.is_empty() && !self.secret_access_key_file.as_os_str().is_empty() {
                    return Err(invalid(
                        "secret_access_key".into(),
                        "set secret_access_key or secret_access_key_file, not both",
                    ));
                }
            }
            other => return Err(invalid(other.to_string(), "kind must be \"local\" or \"s3\"")),
        }
        Ok(())
    }
}

/// Parses a layout name.
pub fn parse_layout(name: &str) -> Option<Layout> {
    match name {
        "stereo" => Some(Layout::Stereo),
        "mono" => Some(Layout::Mono),
        "separate" => Some(Layout::Separate),
        _ => None,
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&text, path)
    }

    /// Parses and checks config text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that have the right type but may not be usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid { key, value: value.to_string(), reason: reason.into() }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "\"\"", "must name a directory"));
        }
        self.socket_mode()?;
        if self.control.max_clients == 0 {
            return Err(invalid("control.max_clients", 0, "at least one client must be able to connect"));
        }
        let rtp = &self.rtp;
        if rtp.port_min == 0 || !rtp.port_min.is_multiple_of(2) {
            return Err(invalid("rtp.port_min", rtp.port_min, "must be an even port above 0 (RTP even, RTCP odd)"));
        }
        if rtp.port_max <= rtp.port_min {
            return Err(invalid(
                "rtp.port_max",
                rtp.port_max,
                format!("must be above rtp.port_min ({})", rtp.port_min),
            ));
        }
        if !rtp.advertise.is_empty() && rtp.advertise.parse::<IpAddr>().is_err() {
            return Err(invalid("rtp.advertise", &rtp.advertise, "must be an IP address (or empty for rtp.bind)"));
        }
        if rtp.receive_buffer_bytes < 4096 {
            return Err(invalid("rtp.receive_buffer_bytes", rtp.receive_buffer_bytes, "must be at least 4096"));
        }
        let e = &self.engine;
        if e.workers > 1024 {
            return Err(invalid("engine.workers", e.workers, "at most 1024 (0 means one per core)"));
        }
        if e.batch == 0 {
            return Err(invalid("engine.batch", 0, "must be at least 1"));
        }
        if !(50..=100_000).contains(&e.batch_wait_us) {
            return Err(invalid("engine.batch_wait_us", e.batch_wait_us, "must be between 50 and 100000"));
        }
        if !e.buffers.is_power_of_two() || e.buffers < 64 {
            return Err(invalid("engine.buffers", e.buffers, "must be a power of two, at least 64"));
        }
        let l = &self.limits;
        if l.max_calls == 0 {
            return Err(invalid("limits.max_calls", 0, "must be at least 1"));
        }
        if !(1..=64).contains(&l.max_legs_per_call) {
            return Err(invalid("limits.max_legs_per_call", l.max_legs_per_call, "must be between 1 and 64"));
        }
        if l.silence_timeout_s == 0 {
            return Err(invalid(
                "limits.silence_timeout_s",
                0,
                "must be at least 1 (calls must never be kept forever)",
            ));
        }
        if l.leg_silent_event_s == 0 {
            return Err(invalid("limits.leg_silent_event_s", 0, "must be at least 1"));
        }
        if parse_layout(&self.recording.layout).is_none() {
            return Err(invalid(
                "recording.layout",
                &self.recording.layout,
                "must be \"stereo\", \"mono\" or \"separate\"",
            ));
        }
        if !(20..=2000).contains(&self.recording.reorder_window_ms) {
            return Err(invalid("recording.reorder_window_ms", self.recording.reorder_window_ms, "must be 20 to 2000"));
        }
        if !matches!(self.recording.encryption.as_str(), "on" | "off") {
            return Err(invalid("recording.encryption", &self.recording.encryption, "must be \"on\" or \"off\""));
        }
        match &self.recording.sample_rate {
            SampleRate::Hz(r) if crate::core::decode::RECORDING_RATES.contains(r) => {}
            SampleRate::Word(w) if w == "auto" => {}
            SampleRate::Hz(r) => {
                return Err(invalid("recording.sample_rate", r, "must be 8000, 16000, 48000 or \"auto\""));
            }
            SampleRate::Word(w) => {
                return Err(invalid(
                    "recording.sample_rate",
                    format!("{w:?}"),
                    "must be 8000, 16000, 48000 or \"auto\"",
                ));
            }
        }
        if crate::output::encode::Format::parse(&self.recording.format).is_none() {
            return Err(invalid(
                "recording.format",
                format!("{:?}", self.recording.format),
                "must be \"wav\", \"wav-ulaw\", \"wav-alaw\", \"opus\" or \"mp3\"",
            ));
        }
        if !(1..=1024).contains(&self.recording.seal_chunk_kib) {
            return Err(invalid("recording.seal_chunk_kib", self.recording.seal_chunk_kib, "must be 1 to 1024"));
        }
        if !self.keys.dir.as_os_str().is_empty() && !self.keys.kek_file.as_os_str().is_empty() {
            return Err(invalid(
                "keys.kek_file",
                self.keys.kek_file.display(),
                "set keys.dir or keys.kek_file, not both",
            ));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("metrics.listen", &self.metrics.listen, "must be IP:PORT (or empty to turn it off)"));
        }
        self.api.validate()?;
        if self.audit.anchor_interval_s > 86_400 {
            return Err(invalid(
                "audit.anchor_interval_s",
                self.audit.anchor_interval_s,
                "must be at most 86400 (0: only at shutdown); a long interval leaves more entries that could be cut off unnoticed",
            ));
        }
        let st = &self.storage;
        if !(1..=64).contains(&st.concurrency) {
            return Err(invalid("storage.concurrency", st.concurrency, "must be 1 to 64"));
        }
        if !(5..=512).contains(&st.part_size_mib) {
            return Err(invalid(
                "storage.part_size_mib",
                st.part_size_mib,
                "must be 5 to 512 (S3's smallest part is 5 MiB)",
            ));
        }
        if !matches!(st.verify.as_str(), "read-back" | "checksum") {
            return Err(invalid("storage.verify", &st.verify, "must be \"read-back\" or \"checksum\""));
        }
        if st.retry_max_s == 0 {
            return Err(invalid("storage.retry_max_s", 0, "must be at least 1"));
        }
        st.primary.validate("storage.primary")?;
        if let Some(b) = &st.backup {
            b.validate("storage.backup")?;
            if b.same_place(&st.primary) {
                return Err(invalid(
                    "storage.backup",
                    &b.kind,
                    "must be another target than storage.primary (another bucket, cluster or directory)",
                ));
            }
        }
        let r = &self.retention;
        if r.interval_s == 0 {
            return Err(invalid("retention.interval_s", 0, "must be at least 1"));
        }
        for p in &r.policy {
            if p.days == 0 {
                return Err(invalid(
                    "retention.policy.days",
                    0,
                    format!("policy {:?}: must be at least 1 (omit the policy to keep forever)", p.name),
                ));
            }
            if p.matches.is_empty() {
                return Err(invalid(
                    "retention.policy.match",
                    "{}",
                    format!("policy {:?}: needs at least one key (use retention.default_days for all)", p.name),
                ));
            }
        }
        Ok(())
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> PathBuf {
        if self.control.socket.as_os_str().is_empty() {
            self.data_dir.join("control.sock")
        } else {
            self.control.socket.clone()
        }
    }

    /// Whether recordings are sealed.
    pub fn encrypted(&self) -> bool {
        self.recording.encryption != "off"
    }

    /// Where keys come from, and the signing key file if set apart. `credentials` is
    /// `$CREDENTIALS_DIRECTORY` (passed in so this stays a pure function).
    pub fn key_source(&self, credentials: Option<&Path>) -> crate::seal::KeySource {
        use crate::seal::KeySource;
        if !self.keys.kek_file.as_os_str().is_empty() {
            KeySource::File(self.keys.kek_file.clone())
        } else if !self.keys.dir.as_os_str().is_empty() {
            KeySource::Dir(self.keys.dir.clone())
        } else if let Some(c) = credentials.filter(|c| crate::seal::keys::has_callvault_credentials(c)) {
            // Any callvault credential means keys are meant to come from there: never fall back
            // to generating keys on the storage because `callvault.kek` is missing.
            KeySource::Credentials(c.to_path_buf())
        } else {
            KeySource::Dir(self.default_key_dir())
        }
    }

    /// `<data_dir>/keys`.
    pub fn default_key_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// The configured signing key file, if any.
    pub fn signing_key_file(&self) -> Option<&Path> {
        (!self.keys.signing_key_file.as_os_str().is_empty()).then_some(self.keys.signing_key_file.as_path())
    }

    /// The local archive directory of a `kind = "local"` target.
    pub fn archive_dir(&self, target: &TargetConfig) -> PathBuf {
        if target.path.as_os_str().is_empty() { self.data_dir.join("archive") } else { target.path.clone() }
    }

    /// The spool directory (recordings in progress and finished).
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    /// The socket file mode.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let s = self.control.socket_mode.trim_start_matches("0o");
        match u32::from_str_radix(s, 8) {
            Ok(m) if m <= 0o777 => Ok(m),
            _ => Err(ConfigError::Invalid {
                key: "control.socket_mode",
                value: self.control.socket_mode.clone(),
                reason: "must be an octal file mode such as \"0660\"".into(),
            }),
        }
    }

    /// The address given to the ACD for RTP.
    pub fn advertised_host(&self) -> IpAddr {
        if let Ok(a) = self.rtp.advertise.parse() {
            return a;
        }
        if self.rtp.bind.is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { self.rtp.bind }
    }

    /// The default layout.
    pub fn default_layout(&self) -> Layout {
        parse_layout(&self.recording.layout).unwrap_or_default()
    }

    /// Legs × sockets per leg × calls, plus a reserve: what the descriptor budget must allow.
    pub fn descriptors_needed(&self) -> u64 {
        // Two sockets per leg (RTP + RTCP), two legs per call on average at capacity, plus a
        // spool file per call and a reserve for clients, logs and the rings.
        (self.limits.max_calls as u64) * (2 * 2 + 1) + 256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_the_embedded_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./callvault-data"));
        assert_eq!(c.socket_path(), PathBuf::from("./callvault-data/control.sock"));
        assert_eq!((c.rtp.port_min, c.rtp.port_max), (16384, 32767));
        assert_eq!(c.metrics.listen, "127.0.0.1:9464");
        assert_eq!(c.limits.silence_timeout_s, 1800);
        assert_eq!(c.limits.max_duration_s, 0);
        assert_eq!(c.socket_mode().unwrap(), 0o660);
        assert_eq!(c.audit.anchor_interval_s, 60);
    }

    #[test]
    fn overrides_apply() {
        let c = parse("data_dir = \"/var/lib/callvault\"\n[rtp]\nport_min = 20000\nport_max = 20099\n[engine]\nbackend = \"epoll\"\nworkers = 2\n").unwrap();
        assert_eq!(c.spool_dir(), PathBuf::from("/var/lib/callvault/spool"));
        assert_eq!((c.rtp.port_min, c.rtp.port_max), (20000, 20099));
        assert_eq!(c.engine.backend, BackendChoice::Epoll);
        assert_eq!(c.engine.workers, 2);
    }

    #[test]
    fn storage_targets_that_are_usable_pass() {
        let c = parse("[storage.primary]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://10.0.0.20:3900/\"\n[storage.backup]\nkind = \"local\"\npath = \"/srv/dr\"\n").unwrap();
        assert_eq!(c.storage.backup.unwrap().path, PathBuf::from("/srv/dr"));
        // Two local directories are two places.
        parse("[storage.primary]\npath = \"/a\"\n[storage.backup]\nkind = \"local\"\npath = \"/b\"\n").unwrap();
        assert_eq!(parse("").unwrap().archive_dir(&TargetConfig::default()), PathBuf::from("./callvault-data/archive"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = parse("[rtp]\nport_mni = 20000\n").unwrap_err().to_string();
        assert!(e.contains("port_mni"), "{e}");
        let e = parse("colour = 1\n").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = parse("[rtp]\nport_min = \"low\"\n").unwrap_err().to_string();
        assert!(e.contains("port_min"), "{e}");
        let e = parse("[rtp]\nport_max = 70000\n").unwrap_err().to_string();
        assert!(e.contains("port_max"), "{e}");
    }

    #[test]
    fn unusable_values_name_key_and_reason() {
        for (text, key) in [
            ("[rtp]\nport_min = 16385\n", "rtp.port_min"),
            ("[rtp]\nport_min = 20000\nport_max = 19000\n", "rtp.port_max"),
            ("[rtp]\nadvertise = \"example\"\n", "rtp.advertise"),
            ("[engine]\nbuffers = 1000\n", "engine.buffers"),
            ("[engine]\nbackend = \"kqueue\"\n", "backend"),
            ("[limits]\nsilence_timeout_s = 0\n", "limits.silence_timeout_s"),
            ("[recording]\nlayout = \"quad\"\n", "recording.layout"),
            ("[control]\nsocket_mode = \"rw\"\n", "control.socket_mode"),
            ("[metrics]\nlisten = \"9464\"\n", "metrics.listen"),
            ("[recording]\nencryption = \"maybe\"\n", "recording.encryption"),
            ("[recording]\nseal_chunk_kib = 0\n", "recording.seal_chunk_kib"),
            ("[keys]\ndir = \"/k\"\nkek_file = \"/k/a.kek\"\n", "keys.kek_file"),
            ("[storage.primary]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://\"\n", "storage.primary"),
            (
                "[storage.primary]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:99999\"\n",
                "storage.primary",
            ),
            (
                "[storage.primary]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://bad host:80\"\n",
                "storage.primary",
            ),
            ("[storage.primary]\nkind = \"s3\"\nendpoint = \"http://h:1\"\n", "storage.primary"),
            (
                "[storage.primary]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://h:1\"\n[storage.backup]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://h:1/\"\nregion = \"x\"\n",
                "storage.backup",
            ),
            ("[storage.backup]\nkind = \"local\"\n", "storage.backup"),
            ("[storage]\npart_size_mib = 1\n", "storage.part_size_mib"),
            ("[storage]\nverify = \"md5\"\n", "storage.verify"),
            ("[[retention.policy]]\nname = \"x\"\nmatch = {}\ndays = 3\n", "retention.policy.match"),
            ("[[retention.policy]]\nname = \"x\"\nmatch = { queue = \"a\" }\ndays = 0\n", "retention.policy.days"),
            ("[audit]\nanchor_interval_s = 100000\n", "audit.anchor_interval_s"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
    }
}
