//! The listener, the routes and their handlers. Every request, allowed or refused, is one audit
//! entry; a request whose entry cannot be written is answered 503 rather than served unrecorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::access::{AccessStore, AuthError, Permission, Principal, Via};
use super::media::{self, MediaError, ReadAt};
use super::range::{self, Wanted};
use super::sample;
use crate::audit::{AuditLog, Entry};
use crate::catalog::{self, Query as CatalogQuery, ScopeFilter};
use crate::config::Config;
use crate::output::encode::Format;
use crate::output::sealed::Sealing;
use crate::storage::Storage;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("cannot listen for the API on {addr}: {source}; set [api] listen to another address or \"\"")]
    Bind { addr: String, source: std::io::Error },
    #[error("[api] TLS: {0}")]
    Tls(String),
    #[error("the API's access store: {0}")]
    Access(String),
    #[error("the API's QA sampling store: {0}")]
    Sampling(String),
    #[error("the API's storage client: {0}")]
    Storage(String),
    #[error("cannot start the API's threads: {0}")]
    Thread(std::io::Error),
}

/// Runs store operations on a thread of its own: `Storage` drives its client on its own
/// runtime, which cannot be entered from the API's.
#[derive(Clone)]
pub struct StorageThread {
    tx: std::sync::mpsc::Sender<StorageJob>,
}

type StorageJob = Box<dyn FnOnce(&Storage) + Send>;

impl StorageThread {
    fn spawn(cfg: &Config) -> Result<(StorageThread, [Option<PathBuf>; 2]), ApiStartError> {
        let storage = Storage::open(cfg).map_err(|e| ApiStartError::Storage(e.to_string()))?;
        let root =
            |t: Option<&crate::storage::Target>| t.and_then(|t| t.local_path(&object_store::path::Path::from("")));
        let roots = [root(Some(&storage.primary)), root(storage.backup.as_ref())];
        let (tx, rx) = std::sync::mpsc::channel::<StorageJob>();
        std::thread::Builder::new()
            .name("api-storage".into())
            .spawn(move || {
                for job in rx {
                    job(&storage);
                }
            })
            .map_err(ApiStartError::Thread)?;
        Ok((StorageThread { tx }, roots))
    }

    /// Runs `f` on the storage thread and waits (from a blocking context).
    pub fn call<T: Send + 'static>(&self, f: impl FnOnce(&Storage) -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx
            .send(Box::new(move |s| {
                let _ = tx.send(f(s));
            }))
            .ok()?;
        rx.recv().ok()
    }
}

/// Requests answered, by action and result, for `/metrics` (one lock per request, off the
/// RTP path).
#[derive(Debug, Default)]
pub struct ApiStats {
    requests: std::sync::Mutex<HashMap<(&'static str, String), u64>>,
}

impl ApiStats {
    fn count(&self, action: &'static str, result: &str) {
        // Results are the error codes, "ok" and "http NNN": a bounded set.
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((action, result.to_string())).or_default() += 1;
    }

    /// ((action, result), count), unordered.
    pub fn snapshot(&self) -> Vec<((&'static str, String), u64)> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Runs a store operation on the storage thread from a handler: a store error is 502.
async fn on_store<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    st: &StorageThread,
    f: impl FnOnce(&Storage) -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    let st = st.clone();
    blocking(move || st.call(f)).await?.ok_or_else(|| ApiError::internal("the storage thread stopped"))?.map_err(|e| {
        // The store's message names files and endpoints of this host: the log has it.
        crate::log::warn(&format!("api: storage: {e}"));
        ApiError::new(StatusCode::BAD_GATEWAY, "storage", "the store failed the operation; the recorder's log says why")
    })
}

/// The non-empty `reason` of a request body (holds, deletions keep it).
fn reason_of(v: &Value, kept: &str) -> Result<String, ApiError> {
    let r = v["reason"]
        .as_str()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("give {{\"reason\": \"…\"}}: {kept}")))?;
    crate::storage::retention::check_reason(r).map_err(ApiError::bad_request)?;
    Ok(r.to_string())
}

/// What the handlers share.
pub struct ApiContext {
    pub cfg: Config,
    pub access: AccessStore,
    pub audit: Arc<AuditLog>,
    pub sealing: Option<Arc<Sealing>>,
    pub catalog_writer: Option<catalog::Writer>,
    storage: Option<StorageThread>,
    local_roots: [Option<PathBuf>; 2],
    cache: media::TranscodeCache,
    /// Transcodes run at once: each takes a core for seconds.
    transcodes: tokio::sync::Semaphore,
    sampling: sample::Samples,
    pub stats: Arc<ApiStats>,
    /// Outcomes of recorded changes that could not be written yet (a full disk): written before
    /// the next entry.
    pending_outcomes: std::sync::Mutex<Vec<Entry>>,
}

impl ApiContext {
    /// Sets up what the API needs (access store, sampling store, a storage client when
    /// `[storage] ship` is on).
    pub fn new(
        cfg: &Config,
        audit: Arc<AuditLog>,
        sealing: Option<Arc<Sealing>>,
        catalog_writer: Option<catalog::Writer>,
    ) -> Result<ApiContext, ApiStartError> {
        let access = AccessStore::open(&cfg.data_dir).map_err(|e| ApiStartError::Access(e.to_string()))?;
        let sampling = sample::Samples::open(&cfg.data_dir).map_err(|e| ApiStartError::Sampling(e.to_string()))?;
        let (storage, local_roots) = if cfg.storage.ship {
            let (s, roots) = StorageThread::spawn(cfg)?;
            (Some(s), roots)
        } else {
            (None, [None, None])
        };
        Ok(ApiContext {
            cfg: cfg.clone(),
            access,
            audit,
            sealing,
            catalog_writer,
            storage,
            local_roots,
            cache: media::TranscodeCache::new((cfg.api.transcode_cache_mib * 1024 * 1024) as usize),
            transcodes: tokio::sync::Semaphore::new(2),
            sampling,
            stats: Arc::default(),
            pending_outcomes: std::sync::Mutex::new(Vec::new()),
        })
    }
}

/// An API refusal: HTTP status, a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// The one answer for "no such recording" and "not yours to see".
    fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such recording")
    }
    /// The details go to the log, not to the client (they name files of this host).
    fn internal(message: impl Into<String>) -> ApiError {
        crate::log::error(&format!("api: {}", message.into()));
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error: the recorder's log says more")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"callvault\""));
        }
        r
    }
}

/// The peer's address, set per connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

type Ctx = Arc<ApiContext>;
type ApiResult = Result<Response, ApiError>;

/// URL parameters, each at most once: a repeated one (`queue=a&queue=b`) is refused, not
/// silently narrowed to the last.
type RawParams = Query<Vec<(String, String)>>;

fn unique_params(raw: Vec<(String, String)>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for (k, v) in raw {
        if out.contains_key(&k) {
            return Err(ApiError::bad_request(format!("parameter {k:?} is given more than once")));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Text as recorded in the audit trail: anything that looks like a token (a client that put one
/// in a URL's path, parameter name or value) is cut to its public part.
fn scrub(text: &str) -> String {
    // A path arrives percent-encoded (`cvt%5F…` is a token too); control characters would let a
    // client forge lines in a text listing of the trail.
    let decoded = percent_decoded(text);
    let text: String = decoded
        .chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("cvt_") {
        out.push_str(&rest[..i]);
        out.push_str("cvt_(redacted)");
        rest =
            rest[i + 4..].trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '%');
    }
    out.push_str(rest);
    out
}

/// `%XX` escapes decoded (invalid UTF-8 replaced); text without them is returned as it is.
fn percent_decoded(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every string in an audit entry's detail scrubbed (a token pasted into a reason or a seed).
fn scrub_json(v: &mut Value) {
    match v {
        Value::String(s) => *s = scrub(s),
        Value::Array(a) => a.iter_mut().for_each(scrub_json),
        Value::Object(m) => {
            let entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            for (k, mut val) in entries {
                scrub_json(&mut val);
                m.insert(scrub(&k), val);
            }
        }
        _ => {}
    }
}

/// Query parameters as recorded in the audit trail, tokens scrubbed from names and values.
fn redacted(params: &[(String, String)]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in params {
        m.insert(scrub(k), json!(scrub(v)));
    }
    Value::Object(m)
}

/// Refuses fields or parameters a request does not take: a typo must not pass as a default.
fn only_keys<'a>(keys: impl IntoIterator<Item = &'a String>, allowed: &[&str], what: &str) -> Result<(), ApiError> {
    for k in keys {
        if !allowed.contains(&k.as_str()) {
            // Scrubbed: a token pasted as a name must not come back in the answer.
            return Err(ApiError::bad_request(format!("unknown {what} {:?}: {}", scrub(k), allowed.join(", "))));
        }
    }
    Ok(())
}

/// `1`/`true` or `0`/`false`.
fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("{name} must be 1, true, 0 or false, not {other:?}"))),
    }
}

/// The token of an `Authorization` header (scheme `Bearer`, any case).
fn bearer_of(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_string())
}

/// The public id of a token-shaped credential, for the audit entry of a refused one.
fn token_id_of(bearer: &str) -> Option<&str> {
    let id = bearer.strip_prefix("cvt_")?.split('_').next()?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Set on every response whose request was audited by its handler; the rest (unknown routes,
/// wrong methods, bodies too large, undecodable paths) are audited by [`audit_unhandled`].
#[derive(Debug, Clone, Copy)]
struct AuditedMarker;

/// Runs blocking work (SQLite, files, decryption) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("a worker failed: {e}")))
}

/// One request's audit entry, filled in as the request is understood.
struct Audited {
    ctx: Ctx,
    peer: SocketAddr,
    action: &'static str,
    target: String,
    actor: String,
    detail: Value,
    /// An entry saying the change was asked for is already written (changes are recorded
    /// before they are made).
    intent: bool,
}

impl Audited {
    fn new(ctx: &Ctx, peer: Peer, action: &'static str, target: impl Into<String>) -> Audited {
        Audited {
            ctx: ctx.clone(),
            peer: peer.0,
            action,
            target: scrub(&target.into()),
            actor: "unauthenticated".into(),
            detail: json!({}),
            intent: false,
        }
    }

    /// Before a change (a hold, a deletion): records that it was asked for, so it is never
    /// made unrecorded; refused with 503 if the trail cannot take it.
    async fn intent(&mut self) -> Result<(), ApiError> {
        let entry = Entry {
            actor: self.actor.clone(),
            action: self.action.to_string(),
            target: self.target.clone(),
            source: self.peer.to_string(),
            result: "requested".into(),
            detail: {
                let mut d = self.detail.clone();
                scrub_json(&mut d);
                d
            },
        };
        let audit = self.ctx.audit.clone();
        match blocking(move || audit.append(entry)).await? {
            Ok(_) => {
                self.intent = true;
                Ok(())
            }
            Err(e) => Err(audit_unavailable(&e)),
        }
    }

    fn note(&mut self, key: &str, v: impl Into<Value>) {
        self.detail[key] = v.into();
    }

    /// The caller from `Authorization: Bearer …`: 401 without a valid token.
    async fn authenticate(&mut self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "more than one Authorization header: send one token",
            ));
        }
        let bearer = bearer_of(headers);
        if let Some(id) = bearer.as_deref().and_then(token_id_of) {
            // Kept even if the token is refused: which token was tried, never its secret.
            self.note("via", format!("token:{id}"));
        }
        let ctx = self.ctx.clone();
        let got = blocking(move || match bearer {
            None => Err(AuthError::Missing),
            // One token, nothing else (`Bearer bearer cvt_…` is not one).
            Some(b) if b.contains(char::is_whitespace) => Err(AuthError::Malformed),
            Some(b) => ctx.access.authenticate(&b, SystemTime::now()),
        })
        .await?;
        let p = got.map_err(auth_refusal)?;
        self.actor = actor_of(&p);
        self.note("via", via_of(&p));
        Ok(p)
    }

    /// The caller, allowed `perm`: 401 without a valid token, 403 when the role lacks the
    /// permission altogether.
    async fn auth(&mut self, headers: &HeaderMap, perm: Permission) -> Result<Principal, ApiError> {
        let p = self.authenticate(headers).await?;
        if !p.allows(perm) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("role {} may not {}", p.role.name(), permission_text(perm)),
            ));
        }
        Ok(p)
    }

    /// Writes the entry, then answers. A refusal is answered even if the entry cannot be
    /// written; an allowed request is not served unrecorded.
    async fn finish(self, result: ApiResult) -> Response {
        let mut r = self.finish_unmarked(result).await;
        r.extensions_mut().insert(AuditedMarker);
        r
    }

    async fn finish_unmarked(self, result: ApiResult) -> Response {
        let outcome = match &result {
            Ok(r) if r.status().is_success() => "ok".to_string(),
            Ok(r) if r.status() == StatusCode::RANGE_NOT_SATISFIABLE => "range_not_satisfiable".to_string(),
            Ok(r) => format!("http {}", r.status().as_u16()),
            Err(e) => e.code.to_string(),
        };
        let entry_result = outcome.clone();
        let mut detail = self.detail;
        scrub_json(&mut detail);
        let entry = Entry {
            actor: self.actor,
            action: self.action.to_string(),
            target: self.target,
            source: self.peer.to_string(),
            result: outcome,
            detail,
        };
        let audit = self.ctx.audit.clone();
        let ctx = self.ctx.clone();
        let intent = self.intent;
        let written = blocking(move || {
            // Outcomes of changes whose entry could not be written before go first.
            let mut pending = ctx.pending_outcomes.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(e) = pending.first() {
                if audit.append(e.clone()).is_err() {
                    break;
                }
                pending.remove(0);
            }
            let r = audit.append(entry.clone());
            if r.is_err() && intent && pending.len() < 10_000 {
                pending.push(entry);
            }
            r
        })
        .await;
        let counted = match &written {
            Ok(Ok(_)) | Err(_) => entry_result.as_str(),
            Ok(Err(_)) if entry_result == "ok" => "audit_unavailable",
            Ok(Err(_)) => entry_result.as_str(),
        };
        self.ctx.stats.count(self.action, counted);
        match (result, written) {
            (Ok(r), Ok(Ok(_))) => r,
            // The change was recorded as asked for before it was made: its answer stands, and
            // its outcome is written with the next entry that can be.
            (Ok(r), Ok(Err(e))) if self.intent => {
                crate::log::error(&format!("api: the outcome of a recorded {} waits to be written: {e}", self.action));
                r
            }
            (Ok(_), Ok(Err(e))) => audit_unavailable(&e).into_response(),
            (Ok(_), Err(e)) => e.into_response(),
            (Err(e), _) => e.into_response(),
        }
    }
}

/// 503 for a trail that cannot be written; the reason (it names files) goes to the log.
fn audit_unavailable(e: &crate::audit::AuditError) -> ApiError {
    crate::log::warn(&format!("api: audit trail not written, request refused: {e}"));
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        "the audit trail cannot be written, so the request is refused (the recorder's log says why)",
    )
}

/// Audits what no handler did: unknown routes, wrong methods, bodies too large, paths that do
/// not decode. The page's static files are not recordings and are not audited.
async fn audit_unhandled(
    State(ctx): State<Ctx>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req.extensions().get::<Peer>().copied();
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let path: String = scrub(&raw_path.chars().take(256).collect::<String>());
    let headers = req.headers().clone();
    let static_file = (method == axum::http::Method::GET || method == axum::http::Method::HEAD)
        && ["/", "/app.js", "/app.css", "/favicon.ico", "/api/openapi.json"].contains(&raw_path.as_str());
    // Only search, audio and the audit trail take parameters; elsewhere one is a mistake (a
    // `?dry_run=1` on a DELETE must not erase), refused before the handler runs.
    let takes_query = raw_path == "/api/recordings" || raw_path.ends_with("/audio") || raw_path == "/api/audit";
    let query = req.uri().query().unwrap_or("");
    let link_elsewhere = !raw_path.ends_with("/audio")
        && query.split('&').any(|kv| kv.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case("link")));
    let resp = if link_elsewhere && !static_file {
        // The role of a link, like a role without the permission: refused whatever it names.
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a playback link plays its recording's audio only (GET /api/recordings/{id}/audio?link=…); this endpoint needs a token",
        )
        .into_response()
    } else if !takes_query && !static_file && !query.is_empty() {
        ApiError::bad_request("this endpoint takes no URL parameters (docs/api.md)").into_response()
    } else {
        match whole_body(req).await {
            Ok(req) => next.run(req).await,
            Err(refused) => refused,
        }
    };
    if resp.extensions().get::<AuditedMarker>().is_some() || (static_file && resp.status().is_success()) {
        return resp;
    }
    let Some(peer) = peer else { return resp };
    let mut a = Audited::new(&ctx, peer, "request", path);
    a.note("method", method.as_str());
    // Whose request it was, when the token says (a refused admin's delete is still theirs).
    let _ = a.authenticate(&headers).await;
    let code = match resp.status() {
        StatusCode::NOT_FOUND => "not_found".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large".to_string(),
        StatusCode::BAD_REQUEST => "bad_request".to_string(),
        StatusCode::FORBIDDEN => "forbidden".to_string(),
        StatusCode::REQUEST_TIMEOUT => "request_timeout".to_string(),
        other => format!("http {}", other.as_u16()),
    };
    let resp = as_json_error(resp);
    let entry = Entry {
        actor: a.actor,
        action: "request".into(),
        target: a.target,
        source: peer.0.to_string(),
        result: code.clone(),
        detail: a.detail,
    };
    let audit = ctx.audit.clone();
    if let Ok(Err(e)) = blocking(move || audit.append(entry)).await {
        crate::log::warn(&format!("api: audit trail not written for a refused request: {e}"));
    }
    ctx.stats.count("request", &code);
    resp
}

/// Request bodies are at most this long.
const MAX_BODY: usize = 64 * 1024;
/// A request's body must arrive within this long (its head has a limit of its own).
const BODY_TIME: Duration = Duration::from_secs(15);

/// The request with its body read whole, within [`BODY_TIME`] and [`MAX_BODY`]: a client that
/// announces a body and never sends it must not hold a connection (nor, 512 times over, the
/// API) for ever.
async fn whole_body(req: axum::extract::Request) -> Result<axum::extract::Request, Response> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request bodies are at most 64 KiB");
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large().into_response());
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIME, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request's body did not arrive within {} s", BODY_TIME.as_secs()),
        )
        .into_response()),
        // Past the limit (a chunked body says its length only by sending it), or cut short.
        Ok(Err(_)) if announced.is_none() => Err(too_large().into_response()),
        Ok(Err(_)) => Err(ApiError::bad_request("the request's body could not be read whole").into_response()),
        Ok(Ok(bytes)) => Ok(axum::extract::Request::from_parts(parts, Body::from(bytes))),
    }
}

/// An error the HTTP layer answered itself (a body too large, a method the route does not
/// take) in the API's JSON error form, like every other refusal.
fn as_json_error(resp: Response) -> Response {
    let status = resp.status();
    let json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() || json {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request bodies are at most 64 KiB"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "this endpoint does not take that method (GET /api/openapi.json lists them)")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "send the body as application/json"),
        _ => ("bad_request", "the request could not be read (docs/api.md)"),
    };
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut r = ApiError::new(status, code, message).into_response();
    if let Some(allow) = allow {
        r.headers_mut().insert(header::ALLOW, allow);
    }
    r
}

/// The audit actor is the user; how they proved it goes in the entry's detail.
fn actor_of(p: &Principal) -> String {
    p.user.clone()
}

fn via_of(p: &Principal) -> String {
    match &p.via {
        Via::Token(id) => format!("token:{id}"),
        Via::Link { .. } => "link".into(),
    }
}

fn auth_refusal(e: AuthError) -> ApiError {
    match e {
        AuthError::Store(_) => ApiError::internal(e.to_string()),
        _ => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
    }
}

fn permission_text(p: Permission) -> &'static str {
    match p {
        Permission::Search => "search recordings",
        Permission::Read => "read recordings' metadata",
        Permission::Play => "play recordings",
        Permission::Download => "download recordings",
        Permission::Sample => "draw QA samples",
        Permission::Verify => "verify recordings",
        Permission::Hold => "place or release legal holds",
        Permission::Delete => "delete recordings",
        Permission::AuditRead => "read the audit trail",
        Permission::Link => "create playback links",
    }
}

fn scope_filter(p: &Principal) -> Option<ScopeFilter> {
    (p.role.scoped() && !p.scope.all)
        .then(|| ScopeFilter { queues: p.scope.queues.clone(), teams: p.scope.teams.clone() })
}

fn may_see(p: &Principal, summary: &Value) -> bool {
    let rid = summary["recording_id"].as_str().unwrap_or_default();
    if p.role.scoped() { p.covers(rid, summary) } else { matches!(p.via, Via::Token(_)) || p.covers(rid, summary) }
}

/// A recording id is a ULID; anything else (`..`, `%2F`, a path) is a missing recording.
fn valid_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric()) && ulid::Ulid::from_string(id).is_ok()
}

/// The recording if it exists and the caller may see it; 404 for both other cases.
async fn recording(ctx: &Ctx, p: &Principal, id: &str) -> Result<Value, ApiError> {
    if !valid_id(id) {
        return Err(ApiError::not_found());
    }
    let path = catalog::path_in(&ctx.cfg.data_dir);
    let id = id.to_string();
    let found = blocking(move || catalog::get(&path, &id)).await?.map_err(|e| ApiError::internal(e.to_string()))?;
    match found {
        Some(s) if may_see(p, &s) => Ok(s),
        _ => Err(ApiError::not_found()),
    }
}

/// A summary without this host's file paths.
fn public_summary(mut s: Value) -> Value {
    if let Some(o) = s.as_object_mut() {
        o.remove("file");
        o.remove("partial_files");
    }
    for leg in s["legs"].as_array_mut().into_iter().flatten() {
        if let Some(o) = leg.as_object_mut() {
            o.remove("file");
        }
    }
    for seal in s["seals"].as_array_mut().into_iter().flatten() {
        if let Some(o) = seal.as_object_mut() {
            o.remove("file");
        }
    }
    // Where it landed, without the local archive's directory.
    if let Some(stored) = s["stored"].as_object_mut() {
        for target in stored.values_mut() {
            if let Some(o) = target.as_object_mut() {
                o.remove("target");
            }
            for obj in target["objects"].as_array_mut().into_iter().flatten() {
                if let Some(o) = obj.as_object_mut() {
                    o.remove("path");
                }
            }
        }
    }
    s
}

fn brief(s: &Value) -> Value {
    json!({
        "recording_id": s["recording_id"], "call_id": s["call_id"], "started_at": s["started_at"],
        "duration_ms": s["duration_ms"], "state": s["state"], "end_reason": s["end_reason"],
        "format": s["format"], "sample_rate": s["sample_rate"], "channels": s["channels"],
        "metadata": s["metadata"], "stored": !s["stored"].is_null(),
    })
}

/// Builds the router.
pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/", get(web_index))
        .route("/app.js", get(web_js))
        .route("/app.css", get(web_css))
        .route("/favicon.ico", get(favicon))
        .route("/api/openapi.json", get(openapi))
        .route("/api/me", get(me))
        .route("/api/recordings", get(search))
        .route("/api/recordings/{id}", get(read).delete(delete))
        .route("/api/recordings/{id}/audio", get(audio))
        .route("/api/recordings/{id}/link", post(link))
        .route("/api/recordings/{id}/verify", get(verify))
        .route("/api/recordings/{id}/hold", put(hold_place).delete(hold_release))
        .route("/api/samples", post(sample_draw))
        .route("/api/samples/{id}", get(sample_get))
        .route("/api/audit", get(audit_read))
        .route("/api/audit/verify", get(audit_verify))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), audit_unhandled))
        .with_state(ctx)
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint (GET /api/openapi.json lists them)")
        .into_response()
}

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");
const OPENAPI: &str = include_str!("../../docs/openapi.json");

fn asset(body: &'static str, ty: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; media-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    );
    r
}

async fn web_index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}
async fn web_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}
async fn web_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}
/// No icon: an empty answer the browser caches, so opening the page is not a refused request
/// in the audit trail each time.
async fn favicon() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    r
}
async fn openapi() -> Response {
    asset(OPENAPI, "application/json")
}

async fn me(State(ctx): State<Ctx>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Response {
    let mut a = Audited::new(&ctx, peer, "login", "");
    let r = async {
        let p = a.authenticate(&headers).await?;
        let perms: Vec<&str> = Permission::ALL.iter().filter(|pm| p.allows(**pm)).map(|pm| pm.name()).collect();
        Ok(Json(json!({
            "user": p.user, "role": p.role.name(), "permissions": perms,
            "scope": {"all": p.scope.all || scope_filter(&p).is_none(), "queues": p.scope.queues, "teams": p.scope.teams},
        }))
        .into_response())
    }
    .await;
    a.finish(r).await
}

/// A catalog query from URL parameters (`meta.KEY=VALUE` for free metadata); unknown
/// parameters are refused so a typo does not widen a search.
fn catalog_query(params: &HashMap<String, String>) -> Result<CatalogQuery, ApiError> {
    let mut q = CatalogQuery::default();
    for (k, v) in params {
        let v = v.clone();
        match k.as_str() {
            "call_id" => q.call_id = Some(v),
            "agent" => q.agent = Some(v),
            "queue" => q.queue = Some(v),
            "caller" => q.caller = Some(v),
            "called" => q.called = Some(v),
            "direction" => q.direction = Some(v),
            "from" => q.from = Some(v),
            "to" => q.to = Some(v),
            "cursor" => q.cursor = Some(v),
            "limit" => {
                q.limit = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|l| (1..=1000).contains(l))
                        .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to 1000, not {v:?}")))?,
                )
            }
            m if m.starts_with("meta.") && m.len() > 5 => q.meta.push((m[5..].to_string(), v)),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}: call_id, agent, queue, caller, called, direction, from, to, meta.KEY, limit, cursor"
                )));
            }
        }
    }
    q.meta.sort();
    Ok(q)
}

async fn search(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(raw): RawParams,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "search", "");
    a.detail = json!({"query": redacted(&raw)});
    let r = async {
        let p = a.auth(&headers, Permission::Search).await?;
        let params = unique_params(raw)?;
        let mut q = catalog_query(&params)?;
        q.scope = scope_filter(&p);
        let path = catalog::path_in(&ctx.cfg.data_dir);
        let page = blocking(move || catalog::search(&path, &q)).await?.map_err(catalog_refusal)?;
        a.note("results", page.recordings.len());
        Ok(Json(json!({
            "recordings": page.recordings.iter().map(brief).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor,
        }))
        .into_response())
    }
    .await;
    a.finish(r).await
}

async fn read(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "read", &id);
    let r = async {
        let p = a.auth(&headers, Permission::Read).await?;
        let s = recording(&ctx, &p, &id).await?;
        // From the full summary: the spool's files are named by the paths left out below.
        let audio = audio_names(&ctx, &s);
        let mut out = public_summary(s);
        out["audio"] = json!(audio);
        Ok(Json(out).into_response())
    }
    .await;
    a.finish(r).await
}

/// A search the catalog refuses is the caller's mistake (400); anything else is ours.
fn catalog_refusal(e: catalog::CatalogError) -> ApiError {
    match e {
        catalog::CatalogError::Query(m) => ApiError::bad_request(m),
        other => ApiError::internal(other.to_string()),
    }
}

fn audio_names(ctx: &Ctx, s: &Value) -> Vec<Value> {
    media::audio_files(s, &|role, key| local_path(ctx, role, key), &ctx.cfg.spool_dir())
        .iter()
        .enumerate()
        .map(|(i, f)| json!({"leg": i, "name": f.name, "sealed": f.sealed}))
        .collect()
}

fn local_path(ctx: &ApiContext, role: &str, key: &str) -> Option<PathBuf> {
    let i = usize::from(role == "backup");
    ctx.local_roots[i].as_ref().map(|r| r.join(key))
}

/// What `format=` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wants {
    Original,
    Browser,
    Wav,
    Encoded(Format),
}

fn wants(params: &HashMap<String, String>) -> Result<Wants, ApiError> {
    match params.get("format").map(String::as_str) {
        None | Some("original") => Ok(Wants::Original),
        Some("browser") => Ok(Wants::Browser),
        Some("wav") => Ok(Wants::Wav),
        Some("opus") => Ok(Wants::Encoded(Format::Opus)),
        Some("mp3") => Ok(Wants::Encoded(Format::Mp3)),
        Some(other) => Err(ApiError::bad_request(format!("format {other:?}: original, browser, wav, opus or mp3"))),
    }
}

/// Opens the view of one audio file the caller asked for: its bytes and MIME type.
fn rendition(
    ctx: &ApiContext,
    file: &media::AudioFile,
    want: Wants,
    cache_key: String,
) -> Result<(Box<dyn ReadAt>, &'static str, &'static str), MediaError> {
    let storage = ctx.storage.clone();
    let remote = move |role: &'static str, key: &str, bytes: u64| {
        let storage = storage.clone();
        let key = key.to_string();
        media::RemoteObject::new(
            bytes,
            Arc::new(move |r: std::ops::Range<u64>| {
                let Some(st) = &storage else { return Err("storage is off ([storage] ship = false)".to_string()) };
                let key = key.clone();
                st.call(move |s| {
                    let t = s.targets().find(|t| t.role.name() == role).ok_or("the target is not configured")?;
                    s.block_on(t.get_range(&object_store::path::Path::from(key.as_str()), r)).map_err(|e| e.to_string())
                })
                .unwrap_or_else(|| Err("the storage thread stopped".into()))
            }),
        )
    };
    let keys = ctx.sealing.as_ref().map(|s| &s.keys);
    let mut src = media::open(file, keys, &remote)?;
    let stored = file.format;
    if stored != Format::Wav {
        return match want {
            Wants::Original | Wants::Browser => Ok((src, media::content_type(stored), stored.ext())),
            Wants::Encoded(f) if f == stored => Ok((src, media::content_type(stored), stored.ext())),
            Wants::Wav | Wants::Encoded(_) => Err(MediaError::Conversion {
                from: stored.name(),
                to: match want {
                    Wants::Encoded(f) => f.name().to_string(),
                    _ => "wav".into(),
                },
            }),
        };
    }
    let layout = media::wav_layout(&mut *src)?;
    let g711 = layout.format_tag == 6 || layout.format_tag == 7;
    match want {
        Wants::Original => Ok((src, "audio/wav", "wav")),
        Wants::Browser | Wants::Wav if g711 => Ok((Box::new(media::G711AsPcm::new(src, layout)), "audio/wav", "wav")),
        Wants::Browser | Wants::Wav => Ok((src, "audio/wav", "wav")),
        Wants::Encoded(f) => {
            let data = match ctx.cache.get(&cache_key) {
                Some(d) => d,
                None => {
                    let d = Arc::new(media::transcode(&mut *src, f)?);
                    ctx.cache.put(cache_key, d.clone());
                    d
                }
            };
            Ok((Box::new(media::InMemory(data)), media::content_type(f), f.ext()))
        }
    }
}

fn media_refusal(e: MediaError) -> ApiError {
    match e {
        MediaError::Unavailable(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        MediaError::Conversion { .. } => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_conversion", e.to_string())
        }
        MediaError::NoKeys | MediaError::Read(_) => ApiError::new(StatusCode::BAD_GATEWAY, "unreadable", e.to_string()),
    }
}

async fn audio(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    method: axum::http::Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(raw): RawParams,
) -> Response {
    let params = match unique_params(raw) {
        Ok(p) => p,
        Err(e) => return Audited::new(&ctx, peer, "play", &id).finish(Err(e)).await,
    };
    if let Err(e) = only_keys(params.keys(), &["format", "leg", "download", "link"], "parameter") {
        return Audited::new(&ctx, peer, "play", &id).finish(Err(e)).await;
    }
    let download = match flag(&params, "download") {
        Ok(d) => d,
        Err(e) => return Audited::new(&ctx, peer, "play", &id).finish(Err(e)).await,
    };
    let mut a = Audited::new(&ctx, peer, if download { "download" } else { "play" }, &id);
    if method != axum::http::Method::GET {
        a.note("method", method.as_str());
    }
    let mut range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(r) = &range_header {
        a.note("range", r.as_str());
    }
    // This API sends no validators (ETag, Last-Modified), so no If-Range can match: the whole
    // body is sent, as RFC 9110 §13.1.5 says, rather than a part of what may be another file.
    if range_header.is_some() && headers.contains_key(header::IF_RANGE) {
        a.note("if_range", "no match: whole body");
        range_header = None;
    }
    let r = async {
        let p = match params.get("link") {
            Some(link) => {
                let (ctx2, id2, link) = (ctx.clone(), id.clone(), link.clone());
                let p = blocking(move || ctx2.access.check_link(&id2, &link, SystemTime::now())).await?.map_err(auth_refusal)?;
                a.actor = actor_of(&p);
                a.note("via", via_of(&p));
                if download {
                    return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "a playback link only plays; it does not download"));
                }
                if !p.allows(Permission::Play) {
                    return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("role {} may not play recordings", p.role.name())));
                }
                p
            }
            None => a.auth(&headers, if download { Permission::Download } else { Permission::Play }).await?,
        };
        let authorized_at = std::time::Instant::now();
        let want = wants(&params)?;
        a.note("format", format!("{want:?}").to_lowercase());
        let s = recording(&ctx, &p, &id).await?;
        let files = media::audio_files(&s, &|role, key| local_path(&ctx, role, key), &ctx.cfg.spool_dir());
        let leg = match params.get("leg") {
            None => 0,
            Some(l) => l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("leg {l:?} is not a number")))?,
        };
        let Some(file) = files.get(leg).cloned() else {
            return Err(if files.is_empty() {
                media_refusal(MediaError::Unavailable("not in the store nor in this recorder's spool".into()))
            } else {
                ApiError::bad_request(format!("leg {leg}: the recording has {} audio file(s)", files.len()))
            });
        };
        let ctx2 = ctx.clone();
        let cache_key = format!("{id}/{leg}/{want:?}");
        // A transcode not yet cached waits for a slot; a cached one is served at once.
        let _slot = match want {
            Wants::Encoded(_) if ctx.cache.get(&cache_key).is_none() => {
                Some(ctx.transcodes.acquire().await.map_err(|_| ApiError::internal("the API is stopping"))?)
            }
            _ => None,
        };
        let (view, ty, ext) = blocking(move || rendition(&ctx2, &file, want, cache_key)).await?.map_err(media_refusal)?;
        let len = view.len();
        let wanted = range::parse(range_header.as_deref(), len);
        let mut b = Response::builder()
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_TYPE, ty)
            .header(header::CACHE_CONTROL, "private, no-store")
            .header(header::REFERRER_POLICY, "no-referrer")
            .header(
                header::CONTENT_DISPOSITION,
                format!("{}; filename=\"{id}.{ext}\"", if download { "attachment" } else { "inline" }),
            );
        let (start, end) = match wanted {
            Wanted::Unsatisfiable => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}")), (header::ACCEPT_RANGES, "bytes".to_string())],
                    Json(json!({"error": {"code": "range_not_satisfiable",
                        "message": format!("Range {:?} does not fit the {len} bytes of this audio", range_header.unwrap_or_default())}})),
                )
                    .into_response());
            }
            Wanted::Whole => {
                b = b.status(StatusCode::OK);
                (0, len)
            }
            Wanted::Part { start, end } => {
                b = b.status(StatusCode::PARTIAL_CONTENT).header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
                (start, end + 1)
            }
        };
        b = b.header(header::CONTENT_LENGTH, end - start);
        // The first block is read before the answer, so a file that cannot be read or does not
        // authenticate where the range starts is a clean 502, not a cut connection.
        let mut view = view;
        let first_len = ((end - start) as usize).min(64 * 1024);
        let (view, first) = blocking(move || {
            let mut buf = vec![0u8; first_len];
            let r = view.read_at(start, &mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            (view, r)
        })
        .await?;
        let first = first.map_err(media_refusal)?;
        if first.is_empty() && end > start {
            return Err(media_refusal(MediaError::Read("the audio ended before its length".into())));
        }
        let perm = if download { Permission::Download } else { Permission::Play };
        let guard = still_allowed(&ctx, &a, &p, perm, &id, authorized_at);
        b.body(stream_body(view, first, start, end, Some(guard))).map_err(|e| ApiError::internal(e.to_string()))
    }
    .await;
    a.finish(r).await
}

/// How often a response being streamed re-checks that its caller may still have it.
const RECHECK_ACCESS_EVERY: Duration = Duration::from_secs(5);

/// A streamed response's re-check of its caller's access: a download of an hour-long call can
/// outlast the token that began it, and revoking a token or disabling a user must end it.
struct StillAllowed {
    /// `Some(why)` once access is withdrawn; an error (the store unreadable) is logged and the
    /// stream goes on, to be checked again: a busy database must not cut listeners off.
    check: Box<dyn Fn() -> Result<Option<&'static str>, String> + Send + Sync>,
    /// Records the cut-off (why, bytes sent); run on the blocking pool.
    on_withdrawn: Box<dyn FnOnce(&'static str, u64) + Send>,
    every: Duration,
    /// When the caller was let in: the first check is due `every` after it.
    since: std::time::Instant,
}

/// The re-check of a stream's access: the caller's token and user as for
/// [`AccessStore::withdrawn`], against the recording as the catalog has it now (an erased
/// recording, or one whose queue or team changed, is seen).
fn still_allowed(
    ctx: &Ctx,
    a: &Audited,
    p: &Principal,
    perm: Permission,
    recording_id: &str,
    since: std::time::Instant,
) -> StillAllowed {
    let (ctx1, ctx2, p1, id) = (ctx.clone(), ctx.clone(), p.clone(), recording_id.to_string());
    let entry = Entry {
        actor: actor_of(p),
        action: format!("{}.stopped", a.action),
        target: a.target.clone(),
        source: a.peer.to_string(),
        result: "access_withdrawn".into(),
        detail: json!({"via": via_of(p)}),
    };
    StillAllowed {
        check: Box::new(move || {
            let summary = catalog::get(&catalog::path_in(&ctx1.cfg.data_dir), &id).map_err(|e| e.to_string())?;
            let Some(summary) = summary else { return Ok(Some("the recording was erased")) };
            ctx1.access.withdrawn(&p1, perm, &summary).map_err(|e| e.to_string())
        }),
        on_withdrawn: Box::new(move |why, sent| {
            let mut entry = entry;
            entry.detail["why"] = why.into();
            entry.detail["bytes_sent"] = sent.into();
            ctx2.audit.record(entry);
        }),
        every: RECHECK_ACCESS_EVERY,
        since,
    }
}

/// Streams `[start, end)` of a view as the client takes it: each 64 KiB is read and
/// decrypted on the blocking pool, which is held only for that read, so a paused player holds
/// a connection and a buffer, never a thread. With a `guard`, access is checked again every
/// `guard.every`, and a body whose access was withdrawn ends short of its length.
fn stream_body(view: Box<dyn ReadAt>, first: Vec<u8>, start: u64, end: u64, guard: Option<StillAllowed>) -> Body {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    // Set at a cut: blocks already queued for the connection are not handed on. Delivered
    // counts what was handed on (the `bytes_sent` of the cut's audit entry).
    let cut = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let (cut_w, delivered_r) = (cut.clone(), delivered.clone());
    tokio::spawn(async move {
        let mut view = Some(view);
        // The next block to send: the one read before answering, then each one read here.
        let mut ready = (!first.is_empty()).then_some(first);
        let mut pos = start + ready.as_ref().map_or(0, |b| b.len() as u64);
        let (check, mut on_withdrawn, every, mut checked) = match guard {
            Some(g) => (Some(Arc::new(g.check)), Some(g.on_withdrawn), g.every, g.since),
            None => (None, None, Duration::MAX, std::time::Instant::now()),
        };
        // Runs the check if it is due; true once access is withdrawn (the cut is then made).
        let mut recheck = async |checked: &mut std::time::Instant| -> bool {
            let Some(c) = check.as_ref().filter(|_| checked.elapsed() >= every) else { return false };
            let c = c.clone();
            match tokio::task::spawn_blocking(move || c()).await {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(why))) => {
                    cut_w.store(true, Ordering::SeqCst);
                    crate::log::warn(&format!("api: playback stopped: {why}"));
                    let sent = delivered_r.load(Ordering::SeqCst);
                    if let Some(record) = on_withdrawn.take() {
                        let _ = tokio::task::spawn_blocking(move || record(why, sent)).await;
                    }
                    return true;
                }
                Ok(Err(e)) => crate::log::warn(&format!(
                    "api: cannot re-check a listener's access (checked again in {every:?}): {e}"
                )),
                Err(e) => crate::log::warn(&format!("api: cannot re-check a listener's access: {e}")),
            }
            *checked = std::time::Instant::now();
            false
        };
        loop {
            // Due counting from when the caller was let in: a wait for a transcode slot counts.
            if recheck(&mut checked).await {
                return;
            }
            let chunk = match ready.take() {
                Some(block) => block,
                None if pos >= end => return,
                None => {
                    let mut v = view.take().expect("returned by the last read");
                    let want = ((end - pos) as usize).min(64 * 1024);
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; want];
                        let r = v.read_at(pos, &mut buf).map(|n| {
                            buf.truncate(n);
                            buf
                        });
                        (v, r)
                    })
                    .await;
                    let chunk = match read {
                        Ok((v, Ok(buf))) if !buf.is_empty() => {
                            view = Some(v);
                            buf
                        }
                        Ok((_, Ok(_))) => {
                            crate::log::warn("api: playback stopped: the audio ended before its length");
                            Vec::new()
                        }
                        Ok((_, Err(e))) => {
                            crate::log::warn(&format!("api: playback stopped: {e}"));
                            Vec::new()
                        }
                        Err(e) => {
                            crate::log::warn(&format!("api: playback stopped: {e}"));
                            Vec::new()
                        }
                    };
                    if chunk.is_empty() {
                        // The client sees the body end short of Content-Length: an error, not a file.
                        let _ = tx.send(Err(std::io::Error::other("playback stopped"))).await;
                        return;
                    }
                    pos += chunk.len() as u64;
                    chunk
                }
            };
            // A client that takes nothing for a while is still re-checked on time: the cut does
            // not wait for it to make room.
            let permit = loop {
                let due = tokio::time::Instant::from_std(checked) + every.min(Duration::from_secs(86_400));
                tokio::select! {
                    biased;
                    permit = tx.reserve() => break permit,
                    _ = tokio::time::sleep_until(due), if check.is_some() => {
                        if recheck(&mut checked).await {
                            return;
                        }
                    }
                }
            };
            let Ok(permit) = permit else { return };
            permit.send(Ok(Bytes::from(chunk)));
        }
    });
    let mut failed = false;
    Body::from_stream(futures::stream::poll_fn(move |cx| {
        use std::task::Poll;
        if cut.load(Ordering::SeqCst) {
            // Once: an error ends the response short of its length; then nothing more.
            if failed {
                return Poll::Ready(None);
            }
            failed = true;
            return Poll::Ready(Some(Err(std::io::Error::other("playback stopped: access withdrawn"))));
        }
        let next = rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(b))) = &next {
            delivered.fetch_add(b.len() as u64, Ordering::SeqCst);
        }
        next
    }))
}

/// A JSON value read with every object's keys unique. A body such as `{"ttl_s":60,"ttl_s":86400}`
/// is refused: a parser keeps one of the two, a proxy or log reader may show the other, and the
/// audit trail must record what was acted on.
struct StrictJson(Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("the key \"{}\" appears twice", scrub(&key))));
            }
            let StrictJson(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    let StrictJson(v) =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

async fn link(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "link.create", &id);
    let r = async {
        let p = a.auth(&headers, Permission::Link).await?;
        let v = json_body(&body)?;
        only_keys(v.as_object().into_iter().flat_map(|o| o.keys()), &["ttl_s"], "field")?;
        let max = ctx.cfg.api.link_max_ttl_s;
        let ttl = match &v["ttl_s"] {
            Value::Null => 900.min(max),
            t => t
                .as_u64()
                .filter(|t| (1..=max).contains(t))
                .ok_or_else(|| ApiError::bad_request(format!("ttl_s must be 1 to {max} ([api] link_max_ttl_s)")))?,
        };
        a.note("ttl_s", ttl);
        recording(&ctx, &p, &id).await?;
        let expires = SystemTime::now() + Duration::from_secs(ttl);
        let (ctx2, id2, user) = (ctx.clone(), id.clone(), p.user.clone());
        let token = blocking(move || ctx2.access.sign_link(&id2, &user, expires))
            .await?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let url = format!("/api/recordings/{id}/audio?link={}", urlencode(&token));
        Ok(Json(json!({"url": url, "expires_at": crate::engine::call::rfc3339(expires), "ttl_s": ttl})).into_response())
    }
    .await;
    a.finish(r).await
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn verify(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "verify", &id);
    let r = async {
        let p = a.auth(&headers, Permission::Verify).await?;
        let s = recording(&ctx, &p, &id).await?;
        let ctx2 = ctx.clone();
        let report = blocking(move || verify_recording(&ctx2, &s)).await?;
        a.note("ok", report["ok"].clone());
        Ok(Json(report).into_response())
    }
    .await;
    a.finish(r).await
}

/// Re-checks every file of a recording: sealed files against their signed digests (every chunk
/// authenticated, the signature by a trusted key), plain files against the SHA-256 recorded
/// when they were shipped.
fn verify_recording(ctx: &ApiContext, s: &Value) -> Value {
    let mut files = Vec::new();
    let rid = s["recording_id"].as_str().unwrap_or_default();
    let objects: Vec<Value> = ["primary", "backup"]
        .iter()
        .find_map(|r| s["stored"][r]["objects"].as_array().filter(|o| !o.is_empty()).map(|o| (r, o.clone())))
        .map(|(role, objs)| {
            objs.into_iter()
                .map(|mut o| {
                    o["role"] = json!(role);
                    o
                })
                .collect()
        })
        .unwrap_or_default();
    if objects.is_empty() {
        let message = if ctx.cfg.storage.ship {
            "not stored yet: verify it after it is shipped (or with `callvault verify` on the spool file)"
        } else {
            "[storage] ship = false: the recording stays in the spool; verify it there with `callvault verify`"
        };
        return json!({"recording_id": rid, "ok": false, "files": [], "message": message});
    }
    let mut ok = true;
    for o in &objects {
        let key = o["key"].as_str().unwrap_or_default().to_string();
        let role: &'static str = if o["role"] == "backup" { "backup" } else { "primary" };
        let name = key.rsplit('/').next().unwrap_or(&key).to_string();
        let mut f = json!({"name": name});
        let result = verify_file(ctx, role, &key, &name, o["sha256"].as_str(), &mut f);
        match result {
            Ok(()) => f["verified"] = json!(true),
            Err(e) => {
                ok = false;
                f["verified"] = json!(false);
                f["error"] = json!(e);
            }
        }
        files.push(f);
    }
    let signed = files.iter().all(|f| f["signed"] == true);
    json!({"recording_id": rid, "ok": ok, "signed": signed, "files": files,
        "message": if !ok { "verification failed: see files[].error" }
            else if signed { "every file authenticates and its digests are signed by a trusted key" }
            else { "unsealed files (encryption off) match the SHA-256 recorded at shipping; that is no proof against someone who can rewrite both" }})
}

type OpenAndVerify = dyn FnOnce(&crate::seal::Keyring) -> Result<crate::seal::reader::Verified, crate::seal::SealError>;

/// One stored file: its SHA-256 against the one recorded at shipping, then (sealed) every
/// chunk and the signature. A local archive's file is read from disk as it goes; an object is
/// fetched whole.
fn verify_file(
    ctx: &ApiContext,
    role: &'static str,
    key: &str,
    name: &str,
    shipped: Option<&str>,
    f: &mut Value,
) -> Result<(), String> {
    let check_sha = |sha: String, f: &mut Value| {
        f["sha256"] = json!(sha);
        match shipped {
            Some(want) if want != sha => Err(format!("its SHA-256 is {sha}; {want} was recorded when it was shipped")),
            _ => Ok(()),
        }
    };
    let sealed = name.ends_with(".cvs");
    let keys = ctx.sealing.as_ref().map(|s| &s.keys);
    let verify = |r: Box<OpenAndVerify>, f: &mut Value| -> Result<(), String> {
        if !sealed {
            f["signed"] = json!(false);
            return Ok(());
        }
        let keys = keys.ok_or("sealed, but this recorder has no keys")?;
        let v = r(keys).map_err(|e| e.to_string())?;
        f["signed"] = json!(true);
        f["signer_id"] = json!(v.signer.id);
        f["plaintext_sha256"] = json!(crate::seal::format::hex(&v.plaintext_sha256));
        f["body_sha256"] = json!(crate::seal::format::hex(&v.record.body_sha256));
        f["chunks"] = json!(v.chunks);
        Ok(())
    };
    if let Some(path) = local_path(ctx, role, key) {
        let (sha, _) = crate::storage::file_sha256(&path).map_err(|e| {
            crate::log::warn(&format!("api: verify: {e}"));
            format!("cannot read {name} (the recorder's log says why)")
        })?;
        check_sha(crate::seal::format::hex(&sha), f)?;
        let file = std::fs::File::open(&path).map_err(|e| format!("cannot read {name}: {}", e.kind()))?;
        return verify(
            Box::new(move |k| crate::seal::reader::SealedReader::open(file, k)?.verify(k.trusted(), None)),
            f,
        );
    }
    let st = ctx.storage.as_ref().ok_or("storage is off")?;
    let k = key.to_string();
    let bytes = st
        .call(move |s| {
            let t = s.targets().find(|t| t.role.name() == role).ok_or("the target is not configured".to_string())?;
            s.block_on(t.get(&object_store::path::Path::from(k.as_str()))).map_err(|e| e.to_string())
        })
        .unwrap_or_else(|| Err("the storage thread stopped".into()))?;
    check_sha(crate::seal::format::hex(&crate::seal::sha256(&[&bytes])), f)?;
    verify(
        Box::new(move |k| {
            crate::seal::reader::SealedReader::open(std::io::Cursor::new(bytes), k)?.verify(k.trusted(), None)
        }),
        f,
    )
}

fn need_storage(ctx: &ApiContext) -> Result<StorageThread, ApiError> {
    ctx.storage.clone().ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "storage_off", "[storage] ship = false: holds and deletions need the store")
    })
}

async fn hold_place(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "hold.place", &id);
    let r = async {
        let p = a.auth(&headers, Permission::Hold).await?;
        let v = json_body(&body)?;
        only_keys(v.as_object().into_iter().flat_map(|o| o.keys()), &["reason"], "field")?;
        let reason = reason_of(&v, "a case or ticket reference, kept with the hold")?;
        a.note("reason", reason.as_str());
        let s = recording(&ctx, &p, &id).await?;
        let st = need_storage(&ctx)?;
        a.intent().await?;
        let hold = crate::storage::retention::Hold {
            kind: crate::storage::retention::HoldKind::Recording,
            value: id.clone(),
            reason,
            placed_at: crate::engine::call::rfc3339(SystemTime::now()),
            placed_by: format!("api:{}", p.user),
        };
        let h2 = hold.clone();
        let audio_key = s["stored"]["primary"]["objects"][0]["key"].as_str().map(str::to_string);
        // On the storage thread, which takes this API's deletions one at a time too: a deletion
        // that ran first has left nothing to hold, and the answer says so.
        let placed = on_store(
            &st,
            move |s| -> Result<Option<crate::storage::retention::Placed>, crate::storage::StorageError> {
                if let Some(k) = &audio_key
                    && s.block_on(s.primary.exists(&object_store::path::Path::from(k.as_str())))?.is_none()
                {
                    return Ok(None);
                }
                crate::storage::retention::place_hold(s, &h2).map(Some)
            },
        )
        .await?
        .ok_or_else(ApiError::not_found)?;
        use crate::storage::retention::Placed;
        let (status, body) = match placed {
            Placed::Placed => (StatusCode::CREATED, json!({"hold": hold.to_json(), "placed": true})),
            Placed::AlreadyHeld(h) => (StatusCode::OK, json!({"hold": h.to_json(), "placed": false})),
            Placed::Partly { written, failed } => (
                StatusCode::CREATED,
                json!({"hold": hold.to_json(), "placed": true, "written": written,
                    "failed": failed.iter().map(|(t, e)| json!({"target": t, "error": e})).collect::<Vec<_>>()}),
            ),
        };
        Ok((status, Json(body)).into_response())
    }
    .await;
    a.finish(r).await
}

async fn hold_release(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "hold.release", &id);
    let r = async {
        let p = a.auth(&headers, Permission::Hold).await?;
        recording(&ctx, &p, &id).await?;
        let st = need_storage(&ctx)?;
        a.intent().await?;
        let id2 = id.clone();
        let released = on_store(&st, move |s| {
            crate::storage::retention::release_hold(s, crate::storage::retention::HoldKind::Recording, &id2)
        })
        .await?;
        if !released {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_hold",
                "the recording has no hold of its own to release",
            ));
        }
        Ok(Json(json!({"released": true})).into_response())
    }
    .await;
    a.finish(r).await
}

async fn delete(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "delete", &id);
    let r = async {
        let p = a.auth(&headers, Permission::Delete).await?;
        let v = json_body(&body)?;
        only_keys(v.as_object().into_iter().flat_map(|o| o.keys()), &["reason"], "field")?;
        let reason = reason_of(&v, "the request's reference, kept in the deletion log")?;
        a.note("reason", reason.as_str());
        let s = recording(&ctx, &p, &id).await?;
        let st = need_storage(&ctx)?;
        if s["stored"].is_null() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_stored",
                "the recording is not shipped yet; delete it once it is stored",
            ));
        }
        a.intent().await?;
        let data_dir = ctx.cfg.data_dir.clone();
        let why = crate::storage::retention::Reason { kind: "erasure", detail: format!("api:{}: {reason}", p.user) };
        let report = on_store(&st, move |storage| {
            crate::storage::retention::delete_unless_held(storage, &data_dir, vec![(s, why)], false, &mut |_| {})
        })
        .await?;
        if let Some((_, h)) = report.held.first() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "held",
                format!("under legal hold ({} {}: {}); release the hold first", h.kind.name(), h.value, h.reason),
            ));
        }
        if let Some((_, e)) = report.failed.first() {
            crate::log::warn(&format!("api: delete {id}: {e}"));
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "storage",
                "the store failed the deletion (partly done deletions finish on retry); the recorder's log says why",
            ));
        }
        if let Some(w) = &ctx.catalog_writer {
            w.remove(&id);
        } else if let Ok(mut c) = catalog::Catalog::open(&catalog::path_in(&ctx.cfg.data_dir)) {
            let _ = c.remove(&id);
        }
        Ok(Json(json!({"deleted": true, "entry": report.deleted.first()})).into_response())
    }
    .await;
    a.finish(r).await
}

async fn sample_draw(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "sample", "");
    let r = async {
        let p = a.auth(&headers, Permission::Sample).await?;
        let v = json_body(&body)?;
        a.note("request", v.clone());
        let req = sample::Request::from_json(&v).map_err(ApiError::bad_request)?;
        let ctx2 = ctx.clone();
        let scope = scope_filter(&p);
        let user = p.user.clone();
        // Bound to this user, not the name: a later user of the same name never sees it.
        let uid = p.uid.clone();
        let drawn =
            blocking(move || ctx2.sampling.draw(&catalog::path_in(&ctx2.cfg.data_dir), &req, scope, &user, &uid))
                .await?
                .map_err(|e| match e {
                    sample::SampleError::Query(m) => ApiError::bad_request(m),
                    other => ApiError::internal(other.to_string()),
                })?;
        a.target = drawn["sample_id"].as_str().unwrap_or_default().to_string();
        // A dry run creates nothing.
        let status = if drawn["dry_run"] == true { StatusCode::OK } else { StatusCode::CREATED };
        Ok((status, Json(drawn)).into_response())
    }
    .await;
    a.finish(r).await
}

async fn sample_get(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "sample.read", &id);
    let r = async {
        let p = a.auth(&headers, Permission::Sample).await?;
        let ctx2 = ctx.clone();
        let (id2, p2) = (id.clone(), p.clone());
        let got = blocking(move || -> Result<Option<Value>, String> {
            // Another's sample is theirs: a caller sees only their own, drawn by this very user
            // (not an earlier one of the same name).
            let Some((by, by_uid)) = ctx2.sampling.drawn_by_identity(&id2).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            if by != p2.user || by_uid != p2.uid {
                return Ok(None);
            }
            let Some(mut sample) = ctx2.sampling.get(&id2).map_err(|e| e.to_string())? else { return Ok(None) };
            // And only what the caller's scope covers today: a narrowed scope narrows old samples.
            let path = catalog::path_in(&ctx2.cfg.data_dir);
            let mut hidden = 0u64;
            for g in sample["groups"].as_array_mut().into_iter().flatten() {
                if let Some(recs) = g["recordings"].as_array_mut() {
                    let before = recs.len();
                    recs.retain(|r| {
                        let rid = r["recording_id"].as_str().unwrap_or_default();
                        matches!(catalog::get(&path, rid), Ok(Some(s)) if may_see(&p2, &s))
                    });
                    hidden += (before - recs.len()) as u64;
                }
            }
            // A group none of whose recordings the caller may see now is not shown at all (its
            // key names an agent or queue outside the scope).
            if let Some(groups) = sample["groups"].as_array_mut() {
                groups.retain(|g| g["recordings"].as_array().is_some_and(|r| !r.is_empty()) || g["available"] == 0);
            }
            sample["hidden_out_of_scope_or_deleted"] = json!(hidden);
            Ok(Some(sample))
        })
        .await?
        .map_err(ApiError::internal)?;
        match got {
            Some(s) => Ok(Json(s).into_response()),
            None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such sample")),
        }
    }
    .await;
    a.finish(r).await
}

async fn audit_read(
    State(ctx): State<Ctx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(raw): RawParams,
) -> Response {
    let mut a = Audited::new(&ctx, peer, "audit.read", "");
    a.detail = json!({"query": redacted(&raw)});
    let r = async {
        a.auth(&headers, Permission::AuditRead).await?;
        let params = unique_params(raw)?;
        let mut q = crate::audit::ReadQuery { limit: 100, ..Default::default() };
        for (k, v) in &params {
            match k.as_str() {
                "after" => {
                    q.after_seq = Some(
                        v.parse()
                            .map_err(|_| ApiError::bad_request(format!("after {v:?} is not a sequence number")))?,
                    )
                }
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|l| (1..=1000).contains(l))
                        .ok_or_else(|| ApiError::bad_request("limit must be 1 to 1000"))?
                }
                "actor" => q.actor = Some(v.clone()),
                "action" => q.action = Some(v.clone()),
                "target" => q.target = Some(v.clone()),
                "since" => q.since = Some(v.clone()),
                "until" => q.until = Some(v.clone()),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown parameter {other:?}: after, limit, actor, action, target, since, until"
                    )));
                }
            }
        }
        let audit = ctx.audit.clone();
        let limit = q.limit;
        let entries = blocking(move || audit.read(&q)).await?.map_err(|e| match e {
            crate::audit::AuditError::BadQuery(m) => ApiError::bad_request(m),
            other => ApiError::internal(other.to_string()),
        })?;
        let next = (entries.len() as u32 == limit).then(|| entries.last().map(|e| e["seq"].clone())).flatten();
        Ok(Json(json!({"entries": entries, "next_after": next})).into_response())
    }
    .await;
    a.finish(r).await
}

async fn audit_verify(State(ctx): State<Ctx>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Response {
    let mut a = Audited::new(&ctx, peer, "audit.verify", "");
    let r = async {
        a.auth(&headers, Permission::AuditRead).await?;
        let stored = match &ctx.storage {
            Some(st) => on_store(st, crate::audit::load_anchor_objects).await?,
            None => crate::audit::StoredAnchors::default(),
        };
        let (anchors, found) = stored.split();
        let data_dir = ctx.cfg.data_dir.clone();
        let report = blocking(move || crate::audit::verify_with(&data_dir, &anchors, &found))
            .await?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let v = report.to_json();
        a.note("ok", v["ok"].clone());
        Ok(Json(v).into_response())
    }
    .await;
    a.finish(r).await
}

/// Loads and matches the TLS certificate and key as `serve` would (`serve --check`).
pub fn check_tls(cfg: &Config) -> Result<(), ApiStartError> {
    tls_config(cfg).map(drop)
}

/// TLS from `[api] tls_cert` and `tls_key` (PEM). A key others may read is refused: whoever
/// reads it can pose as the recorder to every user.
fn tls_config(cfg: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, ApiStartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    if !cfg.api.tls() {
        return Ok(None);
    }
    let (cert, key) = (&cfg.api.tls_cert, &cfg.api.tls_key);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ApiStartError::Tls(format!("cannot read the certificate chain {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ApiStartError::Tls(format!("{} holds no PEM certificate", cert.display())));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)
            .map_err(|e| ApiStartError::Tls(format!("cannot read the private key {}: {e}", key.display())))?
            .permissions()
            .mode();
        if mode & 0o004 != 0 {
            return Err(ApiStartError::Tls(format!(
                "the private key {} is readable by every user (mode {:o}): chmod 600 it (or 640 with the service's group)",
                key.display(),
                mode & 0o777
            )));
        }
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ApiStartError::Tls(format!("cannot read the private key {}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut sc = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiStartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ApiStartError::Tls(format!("the certificate and key do not go together: {e}")))?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(sc))))
}

/// A bound listener, ready to serve.
pub struct Bound {
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub addr: SocketAddr,
}

/// Binds `[api] listen` and loads TLS (errors here stop the daemon's start).
pub fn bind(cfg: &Config) -> Result<Bound, ApiStartError> {
    let tls = tls_config(cfg)?;
    let addr_text = cfg.api.listen.clone();
    let listener = std::net::TcpListener::bind(&addr_text)
        .map_err(|source| ApiStartError::Bind { addr: addr_text.clone(), source })?;
    listener.set_nonblocking(true).map_err(|source| ApiStartError::Bind { addr: addr_text.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| ApiStartError::Bind { addr: addr_text, source })?;
    Ok(Bound { listener, tls, addr })
}

/// Most connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 512;
/// Most connections from one address at once: one client cannot take every slot. Loopback is
/// 127.0.0.1 and ::1 are not limited: a reverse proxy on this host brings every user's requests
/// from there.
const MAX_PER_ADDRESS: usize = 16;
/// The kernel's send buffer per connection (it grows to megabytes by itself): what is already
/// in it still reaches the client after a cut, so it bounds what a revoked listener still gets.
/// 128 KiB is some 8 s of 8 kHz stereo and keeps a LAN download at tens of MB/s.
const SEND_BUFFER: usize = 128 * 1024;
/// Unsent bytes below which a connection is writable again (TCP_NOTSENT_LOWAT).
const NOT_SENT_LOW: u32 = 16 * 1024;
/// Hyper's own write buffer, for the same reason (its default is some 400 KiB).
const WRITE_BUFFER: usize = 64 * 1024;
/// A client that takes no bytes of a response for this long is cut off: a player that stopped
/// reading must not hold its slot for ever.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Fails a connection's writes once the peer has taken nothing for `WRITE_STALL`.
struct StallGuard<I> {
    io: I,
    limit: Duration,
    stalled_since: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Named in the log line of a cut.
    peer: Option<SocketAddr>,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StallGuard<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I> StallGuard<I> {
    /// `Pending` from the peer: start (or check) the stall clock.
    fn stalled(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        use std::future::Future;
        let limit = self.limit;
        let timer = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        let stalled = timer.as_mut().poll(cx).is_ready();
        if stalled {
            let who = self.peer.map_or_else(|| "a client".to_string(), |p| p.to_string());
            crate::log::warn(&format!("api: {who} took no bytes for {limit:?}: its connection is closed"));
        }
        stalled
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StallGuard<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending if self.stalled(cx) => {
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending if self.stalled(cx) => {
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Writes the outcomes of recorded changes that could not be written at the time (a full
/// disk), every second, so they do not wait for the next request (nor die with a clean stop).
async fn flush_pending_outcomes(ctx: Ctx) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if ctx.pending_outcomes.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            continue;
        }
        let c = ctx.clone();
        let _ = blocking(move || {
            let mut pending = c.pending_outcomes.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(e) = pending.first() {
                if c.audit.append(e.clone()).is_err() {
                    break;
                }
                crate::log::info(&format!("api: the outcome of a recorded {} is written", e.action));
                pending.remove(0);
            }
        })
        .await;
    }
}

/// The addresses a reverse proxy on this host connects from (other loopback addresses are
/// limited like any client's).
fn is_this_host(ip: std::net::IpAddr) -> bool {
    ip == std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
        || ip == std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
}

/// Connections per peer address, released when a connection ends.
#[derive(Default)]
struct PerAddress(std::sync::Mutex<HashMap<std::net::IpAddr, usize>>);

impl PerAddress {
    fn take(&self, ip: std::net::IpAddr) -> bool {
        if is_this_host(ip) {
            return true;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= MAX_PER_ADDRESS {
            return false;
        }
        *n += 1;
        true
    }
    fn release(&self, ip: std::net::IpAddr) {
        if is_this_host(ip) {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Serves the API from a thread of its own (a small runtime, kept off the RTP cores).
pub fn spawn(bound: Bound, ctx: ApiContext) -> Result<std::thread::JoinHandle<()>, ApiStartError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .thread_name("api")
        .enable_all()
        .build()
        .map_err(ApiStartError::Thread)?;
    let ctx = Arc::new(ctx);
    let app = router(ctx.clone());
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::spawn(flush_pending_outcomes(ctx));
                serve(bound, app).await
            })
        })
        .map_err(ApiStartError::Thread)
}

async fn serve(bound: Bound, app: Router) {
    let listener = match tokio::net::TcpListener::from_std(bound.listener) {
        Ok(l) => l,
        Err(e) => {
            crate::log::error(&format!("api: cannot serve: {e}"));
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(PerAddress::default());
    let mut full_warned = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                crate::log::warn(&format!("api: accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Closed at once rather than left waiting in the backlog.
            if full_warned.is_none_or(|at: std::time::Instant| at.elapsed() >= Duration::from_secs(60)) {
                crate::log::warn(&format!(
                    "api: {MAX_CONNECTIONS} connections open: new ones are closed (one from {peer}; said once a minute)"
                ));
                full_warned = Some(std::time::Instant::now());
            }
            drop(tcp);
            continue;
        };
        if !per_address.take(peer.ip()) {
            // Closed at once: the client's other connections are still served.
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let sock = socket2::SockRef::from(&tcp);
        let _ = sock.set_send_buffer_size(SEND_BUFFER);
        // Writable again as soon as little is left unsent, not only once half the buffer has
        // drained: a slow but steady reader (an Opus stream at 4 KB/s) then shows progress to
        // the stall guard, and less waits in the kernel.
        let _ = sock.set_tcp_notsent_lowat(NOT_SENT_LOW);
        let app = app.clone();
        let tls = bound.tls.clone();
        let per_address = per_address.clone();
        tokio::spawn(async move {
            let tcp = StallGuard { io: tcp, limit: WRITE_STALL, stalled_since: None, peer: Some(peer) };
            match tls {
                Some(acceptor) => {
                    // A failed handshake (a plain-HTTP client, a scanner) ends the connection only.
                    if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        serve_connection(stream, peer, app).await;
                    }
                }
                None => serve_connection(tcp, peer, app).await,
            }
            per_address.release(peer.ip());
            drop(permit);
        });
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, app: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower_service::Service;
    let service = hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let mut app = app.clone();
        async move { app.call(req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(15))
        .max_buf_size(WRITE_BUFFER)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_peer_that_stops_reading_is_cut_off_and_one_that_reads_is_not() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (a, mut b) = tokio::io::duplex(1024);
            let mut guarded = StallGuard { io: a, limit: Duration::from_millis(200), stalled_since: None, peer: None };
            // Reading slowly but steadily: every write completes.
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                let mut total = 0;
                while total < 8 * 1024 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    total += b.read(&mut buf).await.unwrap();
                }
                b
            });
            for _ in 0..16 {
                guarded.write_all(&[7u8; 512]).await.unwrap();
            }
            let _b = reader.await.unwrap();
            // Now nobody reads: the write fails once the limit has passed, not before.
            let t = std::time::Instant::now();
            let mut err = None;
            for _ in 0..64 {
                if let Err(e) = guarded.write_all(&[7u8; 512]).await {
                    err = Some(e);
                    break;
                }
            }
            let e = err.expect("the stalled write fails");
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
            assert!(t.elapsed() >= Duration::from_millis(190), "{:?}", t.elapsed());
        });
    }

    #[test]
    fn connections_per_address_are_bounded_and_released() {
        let p = PerAddress::default();
        let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let other: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..MAX_PER_ADDRESS {
            assert!(p.take(ip));
        }
        assert!(!p.take(ip));
        assert!(p.take(other), "another address is not held back");
        p.release(ip);
        assert!(p.take(ip));
        // A reverse proxy on this host: every user's connections come from 127.0.0.1 or ::1.
        for proxy in ["127.0.0.1", "::1"] {
            let proxy: std::net::IpAddr = proxy.parse().unwrap();
            for _ in 0..MAX_PER_ADDRESS * 4 {
                assert!(p.take(proxy), "{proxy}");
            }
            p.release(proxy);
        }
    }

    /// `len` bytes of 7s.
    struct Sevens(u64);

    impl ReadAt for Sevens {
        fn len(&self) -> u64 {
            self.0
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, MediaError> {
            let n = (self.0.saturating_sub(offset) as usize).min(buf.len());
            buf[..n].fill(7);
            Ok(n)
        }
    }

    /// Reads a streamed body to its end or its error: (bytes, whether it failed).
    async fn drain(body: Body) -> (u64, bool) {
        use futures::StreamExt;
        let mut s = body.into_data_stream();
        let mut n = 0;
        while let Some(chunk) = s.next().await {
            match chunk {
                Ok(c) => n += c.len() as u64,
                Err(_) => return (n, true),
            }
        }
        (n, false)
    }

    #[test]
    fn a_stream_whose_access_is_withdrawn_ends_short_and_the_cut_is_recorded() {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicU32, Ordering};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            const LEN: u64 = 4 << 20;
            let first = || vec![7u8; 64 * 1024];
            // Checks answer "allowed" three times, then "revoked".
            let checks = Arc::new(AtomicU32::new(0));
            let recorded = Arc::new(Mutex::new(None));
            let (c, r) = (checks.clone(), recorded.clone());
            let guard = StillAllowed {
                check: Box::new(move || Ok((c.fetch_add(1, Ordering::SeqCst) >= 3).then_some("its token was revoked"))),
                on_withdrawn: Box::new(move |why, sent| *r.lock().unwrap() = Some((why, sent))),
                every: Duration::ZERO,
                since: std::time::Instant::now(),
            };
            let (got, failed) = drain(stream_body(Box::new(Sevens(LEN)), first(), 0, LEN, Some(guard))).await;
            assert!(failed, "the body ends in an error, not as if complete");
            assert!(got <= 3 * 64 * 1024, "at most the three blocks checked before the fourth check: {got}");
            assert_eq!(*recorded.lock().unwrap(), Some(("its token was revoked", got)), "what was handed on");
            assert_eq!(checks.load(Ordering::SeqCst), 4, "no check after the cut");

            // A client that takes nothing is re-checked on time all the same, and once cut it
            // gets none of the blocks that were waiting for it.
            let recorded = Arc::new(Mutex::new(None));
            let r = recorded.clone();
            let guard = StillAllowed {
                check: Box::new(|| Ok(Some("its user was disabled"))),
                on_withdrawn: Box::new(move |why, sent| *r.lock().unwrap() = Some((why, sent))),
                every: Duration::from_millis(50),
                since: std::time::Instant::now(),
            };
            let body = stream_body(Box::new(Sevens(LEN)), first(), 0, LEN, Some(guard));
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(*recorded.lock().unwrap(), Some(("its user was disabled", 0)), "cut while nobody read");
            assert_eq!(drain(body).await, (0, true));

            // A store that cannot be read does not cut the listener off.
            let guard = StillAllowed {
                check: Box::new(|| Err("database is locked".into())),
                on_withdrawn: Box::new(|_, _| panic!("not withdrawn")),
                every: Duration::ZERO,
                since: std::time::Instant::now(),
            };
            assert_eq!(drain(stream_body(Box::new(Sevens(LEN)), first(), 0, LEN, Some(guard))).await, (LEN, false));
            // Nor is one checked only every minute, within its first minute.
            let guard = StillAllowed {
                check: Box::new(|| Ok(Some("its user was disabled"))),
                on_withdrawn: Box::new(|_, _| panic!("not checked yet")),
                every: Duration::from_secs(60),
                since: std::time::Instant::now(),
            };
            assert_eq!(drain(stream_body(Box::new(Sevens(LEN)), first(), 0, LEN, Some(guard))).await, (LEN, false));
            // Access withdrawn while the request waited (for a transcode slot) longer than the
            // interval: cut before the first byte, and the cut recorded.
            let recorded = Arc::new(Mutex::new(None));
            let r = recorded.clone();
            let guard = StillAllowed {
                check: Box::new(|| Ok(Some("its token was revoked"))),
                on_withdrawn: Box::new(move |why, sent| *r.lock().unwrap() = Some((why, sent))),
                every: Duration::from_secs(5),
                since: std::time::Instant::now() - Duration::from_secs(6),
            };
            assert_eq!(drain(stream_body(Box::new(Sevens(LEN)), first(), 0, LEN, Some(guard))).await, (0, true));
            assert_eq!(*recorded.lock().unwrap(), Some(("its token was revoked", 0)));
        });
    }

    #[test]
    fn json_bodies_with_a_repeated_key_are_refused_at_any_depth() {
        let ok = json_body(&Bytes::from_static(br#"{"a":[1,-2,3.5,"x",null,true],"b":{"c":{}}}"#)).unwrap();
        assert_eq!(ok, json!({"a":[1,-2,3.5,"x",null,true],"b":{"c":{}}}));
        for body in [&br#"{"ttl_s":60,"ttl_s":86400}"#[..], br#"{"b":{"c":1,"c":2}}"#, br#"[{"x":1,"x":1}]"#] {
            let e = json_body(&Bytes::copy_from_slice(body)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(body));
            assert!(e.message.contains("appears twice"), "{}", e.message);
        }
        let e = only_keys([&"cvt_0123456789ab_secret".to_string()], &["ttl_s"], "field").unwrap_err();
        assert!(e.message.contains("unknown field") && !e.message.contains("secret"), "{}", e.message);
        // The repeated key is named, but a token used as one is not written back.
        let e = json_body(&Bytes::from_static(br#"{"cvt_0123456789ab_secret":1,"cvt_0123456789ab_secret":2}"#))
            .unwrap_err();
        assert!(!e.message.contains("secret"), "{}", e.message);
    }

    #[test]
    fn parameters_tokens_and_flags() {
        assert!(unique_params(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
        let v = redacted(&[("q".into(), "x".into()), ("access_token".into(), "cvt_0123456789ab_secret".into())]);
        assert_eq!(v["q"], "x");
        assert!(!v.to_string().contains("secret"), "{v}");
        // Percent-encoded, in a path, and with control characters that would forge a line.
        assert_eq!(scrub("/api/nothing/cvt%5F0123456789ab%5Fsecret"), "/api/nothing/cvt_(redacted)");
        assert_eq!(scrub("/x%0a999  forged"), "/x\\n999  forged");
        let mut d = json!({"reason": "see cvt_0123456789ab_secret", "cvt_0123456789ab_k": [1, "cvt_x"]});
        scrub_json(&mut d);
        assert!(!d.to_string().contains("secret") && !d.to_string().contains("0123456789ab_k"), "{d}");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("BEARER cvt_0123456789ab_s"));
        assert_eq!(bearer_of(&h).as_deref(), Some("cvt_0123456789ab_s"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_of(&h), None);
        assert_eq!(token_id_of("cvt_0123456789ab_s"), Some("0123456789ab"));
        assert_eq!(token_id_of("cvt_zz_s"), None);
        let params: HashMap<String, String> = [("d".to_string(), "yes".to_string())].into();
        assert!(flag(&params, "d").is_err());
        assert!(!flag(&params, "other").unwrap());
    }
}
