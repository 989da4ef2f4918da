//! The control protocol's requests: newline-delimited JSON, one object per line,
//! `{"id":…,"cmd":…,…}`. Parsing is strict: unknown commands, missing or mistyped fields are
//! refused with a code the ACD can act on (see `docs/control-protocol.md`).

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value};

use crate::core::mixer::Layout;
use crate::core::payload::{PayloadFormat, PayloadMap};
use crate::core::session::PauseMode;
use crate::engine::CallError;
use crate::engine::call::SourceFilter;

/// The protocol version `health` reports; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line, bytes (newline excluded).
pub const MAX_LINE: usize = 64 * 1024;

/// A leg as `start` or `add_leg` describes it.
#[derive(Debug, Clone)]
pub struct LegRequest {
    /// Unique within the call.
    pub label: String,
    /// Payload types; static ones are known without being listed.
    pub payload_map: PayloadMap,
    /// The formats `payload_types` listed (what the leg is declared to send).
    pub declared: Vec<PayloadFormat>,
    /// Who may send.
    pub source: SourceFilter,
    /// RTCP on the RTP port.
    pub rtcp_mux: Option<bool>,
    /// Output channel (stereo).
    pub channel: Option<u16>,
}

/// A `start`.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// The ACD's id.
    pub call_id: String,
    /// Legs.
    pub legs: Vec<LegRequest>,
    /// Layout (config default if absent).
    pub layout: Option<Layout>,
    /// Stereo channel count.
    pub channels: Option<u16>,
    /// Kept with the recording.
    pub metadata: Map<String, Value>,
    /// Keep DTMF digits for this call (config default if absent).
    pub dtmf_digits: Option<bool>,
    /// Sample rate: a rate or auto (config default if absent).
    pub sample_rate: Option<crate::config::SampleRate>,
    /// File format (config default if absent).
    pub format: Option<crate::output::encode::Format>,
}

/// A parsed command.
#[derive(Debug, Clone)]
pub enum Command {
    /// Start recording a call.
    Start(StartRequest),
    /// Stop and finalise.
    Stop { call_id: String },
    /// Pause.
    Pause { call_id: String, mode: PauseMode },
    /// Resume.
    Resume { call_id: String },
    /// A leg joins.
    AddLeg { call_id: String, leg: LegRequest },
    /// A leg leaves.
    RemoveLeg { call_id: String, label: String },
    /// Merge metadata.
    Update { call_id: String, metadata: Map<String, Value> },
    /// Per-leg counters.
    Status { call_id: String },
    /// Active calls.
    List,
    /// Load and capacity.
    Stats,
    /// Refuse new starts, finish the rest.
    Drain,
    /// Liveness and version.
    Health,
    /// Receive events on this connection (`since`: replay events after this sequence number).
    Subscribe { since: Option<u64> },
    /// Search the catalog (the request's filters, see `catalog::Query::from_json`).
    Find { query: Value },
}

impl Command {
    /// The `cmd` name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start(_) => "start",
            Command::Stop { .. } => "stop",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::AddLeg { .. } => "add_leg",
            Command::RemoveLeg { .. } => "remove_leg",
            Command::Update { .. } => "update",
            Command::Status { .. } => "status",
            Command::List => "list",
            Command::Stats => "stats",
            Command::Drain => "drain",
            Command::Health => "health",
            Command::Subscribe { .. } => "subscribe",
            Command::Find { .. } => "find",
        }
    }
}

/// The commands, for error messages.
pub const COMMANDS: &[&str] = &[
    "start",
    "stop",
    "pause",
    "resume",
    "add_leg",
    "remove_leg",
    "update",
    "status",
    "list",
    "stats",
    "drain",
    "health",
    "subscribe",
    "find",
];

fn bad(message: impl Into<String>) -> CallError {
    CallError::new("bad_request", message)
}

/// Splits a line into its `id` (echoed in the reply, `null` if absent) and the command.
pub fn parse_line(line: &[u8]) -> (Value, Result<Command, CallError>) {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return (Value::Null, Err(CallError::new("bad_json", format!("not valid JSON: {e}")))),
    };
    let Value::Object(obj) = value else {
        return (Value::Null, Err(bad("a request must be a JSON object such as {\"id\":1,\"cmd\":\"health\"}")));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    (id, parse_command(&obj))
}

fn parse_command(obj: &Map<String, Value>) -> Result<Command, CallError> {
    let cmd = match obj.get("cmd") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad("\"cmd\" must be a string")),
        None => return Err(bad("missing \"cmd\"")),
    };
    let call_id = || call_id(obj);
    Ok(match cmd {
        "start" => Command::Start(StartRequest {
            call_id: call_id()?,
            legs: {
                let legs = match obj.get("legs") {
                    Some(Value::Array(a)) if !a.is_empty() => a,
                    Some(Value::Array(_)) => return Err(bad("\"legs\" must list at least one leg")),
                    Some(_) => return Err(bad("\"legs\" must be an array")),
                    None => return Err(bad("missing \"legs\"")),
                };
                let legs = legs.iter().map(parse_leg).collect::<Result<Vec<_>, _>>()?;
                for (i, l) in legs.iter().enumerate() {
                    if legs[..i].iter().any(|o| o.label == l.label) {
                        return Err(bad(format!("two legs are labelled {:?}; labels must be unique", l.label)));
                    }
                }
                legs
            },
            layout: match obj.get("layout") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(
                    crate::config::parse_layout(s)
                        .ok_or_else(|| bad(format!("unknown layout {s:?}: use stereo, mono or separate")))?,
                ),
                Some(_) => return Err(bad("\"layout\" must be a string")),
            },
            channels: opt_u16(obj, "channels", 2, 64)?,
            metadata: metadata(obj)?,
            dtmf_digits: match obj.get("dtmf_digits") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(bad("\"dtmf_digits\" must be true or false")),
            },
            sample_rate: match obj.get("sample_rate") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s == "auto" => Some(crate::config::SampleRate::Word(s.clone())),
                Some(Value::Number(n))
                    if n.as_u64()
                        .is_some_and(|r| crate::core::decode::RECORDING_RATES.iter().any(|k| u64::from(*k) == r)) =>
                {
                    n.as_u64().map(|r| crate::config::SampleRate::Hz(r as u32))
                }
                Some(other) => {
                    return Err(bad(format!("\"sample_rate\" must be 8000, 16000, 48000 or \"auto\", not {other}")));
                }
            },
            format: match obj.get("format") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(crate::output::encode::Format::parse(s).ok_or_else(|| {
                    CallError::new(
                        "unsupported_format",
                        format!("format {s:?} is not supported; use {}", format_names()),
                    )
                })?),
                Some(other) => {
                    return Err(CallError::new(
                        "unsupported_format",
                        format!("\"format\" must be a string ({}), not {other}", format_names()),
                    ));
                }
            },
        }),
        "stop" => Command::Stop { call_id: call_id()? },
        "pause" => Command::Pause {
            call_id: call_id()?,
            mode: match obj.get("mode") {
                None | Some(Value::Null) => PauseMode::Mask,
                Some(Value::String(s)) if s == "mask" => PauseMode::Mask,
                Some(Value::String(s)) if s == "cut" => PauseMode::Cut,
                Some(other) => return Err(bad(format!("\"mode\" must be \"mask\" or \"cut\", not {other}"))),
            },
        },
        "resume" => Command::Resume { call_id: call_id()? },
        "add_leg" => Command::AddLeg {
            call_id: call_id()?,
            leg: match obj.get("leg") {
                Some(v) => parse_leg(v)?,
                None => return Err(bad("missing \"leg\"")),
            },
        },
        "remove_leg" => Command::RemoveLeg { call_id: call_id()?, label: string(obj, "label")? },
        "update" => Command::Update { call_id: call_id()?, metadata: metadata(obj)? },
        "status" => Command::Status { call_id: call_id()? },
        "list" => Command::List,
        "stats" => Command::Stats,
        "drain" => Command::Drain,
        "health" => Command::Health,
        "find" => Command::Find { query: Value::Object(obj.clone()) },
        "subscribe" => Command::Subscribe {
            since: match obj.get("since") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| bad("\"since\" must be an event sequence number"))?),
            },
        },
        other => {
            return Err(CallError::new(
                "unknown_command",
                format!("unknown command {other:?}; commands are {}", COMMANDS.join(", ")),
            ));
        }
    })
}

/// The format names, for error messages.
fn format_names() -> String {
    crate::output::encode::Format::ALL.iter().map(|f| format!("\"{}\"", f.name())).collect::<Vec<_>>().join(", ")
}

fn call_id(obj: &Map<String, Value>) -> Result<String, CallError> {
    let id = string(obj, "call_id")?;
    if id.is_empty() || id.len() > 256 {
        return Err(bad("\"call_id\" must be 1 to 256 bytes"));
    }
    Ok(id)
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<String, CallError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("\"{key}\" must be a string"))),
        None => Err(bad(format!("missing \"{key}\""))),
    }
}

fn opt_u16(obj: &Map<String, Value>, key: &str, min: u16, max: u16) -> Result<Option<u16>, CallError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (u64::from(min)..=u64::from(max)).contains(&n) => Ok(Some(n as u16)),
            _ => Err(bad(format!("\"{key}\" must be an integer from {min} to {max}"))),
        },
    }
}

fn metadata(obj: &Map<String, Value>) -> Result<Map<String, Value>, CallError> {
    match obj.get("metadata") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(bad("\"metadata\" must be an object")),
    }
}

fn parse_leg(v: &Value) -> Result<LegRequest, CallError> {
    let Value::Object(obj) = v else { return Err(bad("each leg must be an object with a \"label\"")) };
    let label = string(obj, "label")?;
    if label.is_empty() || label.len() > 64 {
        return Err(bad("a leg's \"label\" must be 1 to 64 bytes"));
    }
    let mut payload_map = PayloadMap::with_static_types();
    let mut declared = Vec::new();
    match obj.get("payload_types") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (pt, fmt) in m {
                let Value::String(fmt) = fmt else {
                    return Err(bad(format!("payload type {pt}: the format must be a string such as \"PCMU/8000\"")));
                };
                let (pt, format): (u8, PayloadFormat) = PayloadMap::parse_mapping(&format!("{pt}={fmt}"))
                    .map_err(|e| bad(format!("leg {label:?}: payload type {pt}: {e}")))?;
                declared.push(format.clone());
                payload_map.insert(pt, format);
            }
        }
        Some(_) => return Err(bad("\"payload_types\" must be an object such as {\"0\":\"PCMU/8000\"}")),
    }
    let source = match obj.get("source") {
        None | Some(Value::Null) => SourceFilter::Any,
        Some(Value::String(s)) => {
            if let Ok(a) = s.parse::<SocketAddr>() {
                SourceFilter::Addr(a)
            } else if let Ok(ip) = s.parse::<IpAddr>() {
                SourceFilter::Ip(ip)
            } else {
                return Err(bad(format!("leg {label:?}: \"source\" must be an IP or IP:PORT, not {s:?}")));
            }
        }
        Some(_) => return Err(bad("\"source\" must be a string")),
    };
    let rtcp_mux = match obj.get("rtcp_mux") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(bad("\"rtcp_mux\" must be true or false")),
    };
    Ok(LegRequest { label, payload_map, declared, source, rtcp_mux, channel: opt_u16(obj, "channel", 0, 63)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (Value, Result<Command, CallError>) {
        parse_line(s.as_bytes())
    }

    #[test]
    fn the_documented_start_parses() {
        let (id, cmd) = parse(
            r#"{"id":1,"cmd":"start","call_id":"c-1","layout":"stereo","metadata":{"agent":"1001","queue":"sales"},"legs":[{"label":"customer","payload_types":{"0":"PCMU/8000","101":"telephone-event/8000"}},{"label":"agent","payload_types":{"8":"PCMA/8000"}}]}"#,
        );
        assert_eq!(id, serde_json::json!(1));
        let Command::Start(s) = cmd.unwrap() else { panic!() };
        assert_eq!(s.call_id, "c-1");
        assert_eq!(s.legs.len(), 2);
        assert_eq!(s.legs[0].payload_map.get(101).unwrap().encoding, "telephone-event");
        assert_eq!(s.metadata["queue"], "sales");
    }

    #[test]
    fn errors_have_codes_and_keep_the_id() {
        let cases = [
            (r#"{"id":"x","cmd":"dance"}"#, "unknown_command"),
            (r#"{"id":2,"cmd":"stop"}"#, "bad_request"),
            (r#"{"id":3,"cmd":"start","call_id":"c","legs":[]}"#, "bad_request"),
            (r#"{"id":4,"cmd":"start","call_id":"c","legs":[{"label":"a"},{"label":"a"}]}"#, "bad_request"),
            (
                r#"{"id":5,"cmd":"start","call_id":"c","legs":[{"label":"a","payload_types":{"96":"opus"}}]}"#,
                "bad_request",
            ),
            (r#"{"id":6,"cmd":"start","call_id":"c","legs":[{"label":"a","source":"nowhere"}]}"#, "bad_request"),
            (r#"{"id":7,"cmd":"start","call_id":"c","format":"flac","legs":[{"label":"a"}]}"#, "unsupported_format"),
            (r#"{"id":8,"cmd":"pause","call_id":"c","mode":"blur"}"#, "bad_request"),
            (r#"{"id":9}"#, "bad_request"),
        ];
        for (line, code) in cases {
            let (id, r) = parse(line);
            assert_ne!(id, Value::Null, "{line}");
            assert_eq!(r.unwrap_err().code, code, "{line}");
        }
        let (id, r) = parse("{not json");
        assert_eq!((id, r.unwrap_err().code), (Value::Null, "bad_json"));
        assert_eq!(parse("[1]").1.unwrap_err().code, "bad_request");
    }

    #[test]
    fn sources_and_modes() {
        let (_, c) = parse(r#"{"cmd":"add_leg","call_id":"c","leg":{"label":"sup","source":"10.0.0.9","channel":1}}"#);
        let Command::AddLeg { leg, .. } = c.unwrap() else { panic!() };
        assert_eq!(leg.source, SourceFilter::Ip("10.0.0.9".parse().unwrap()));
        assert_eq!(leg.channel, Some(1));
        let (_, c) = parse(r#"{"cmd":"pause","call_id":"c","mode":"cut"}"#);
        assert!(matches!(c.unwrap(), Command::Pause { mode: PauseMode::Cut, .. }));
    }
}
