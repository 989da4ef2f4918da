//! Where finished recordings go: storage targets (the local archive, the embedded default, or
//! S3-compatible object storage), the shipper that moves recordings there from the spool, and
//! retention (policies, legal holds, erasure, the deletion log).
//!
//! Every target has the same layout (`docs/storage.md`):
//! `PREFIX/YYYY/MM/DD/<recording id>.<ext>` by the recording's UTC start date, its metadata
//! object beside it, legal holds under `PREFIX/_holds/` and the deletion log under
//! `PREFIX/_deletions/`. One code path serves both kinds through `object_store`; the local
//! archive adds the fsyncs a directory needs before the spool's copy may go.

#![forbid(unsafe_code)]

pub mod index;
pub mod retention;
pub mod ship;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::config::{Config, TargetConfig};
use crate::seal::format::hex;

/// Why storage cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The target could not be set up (bad endpoint, missing credentials).
    #[error("storage target {target}: {message}")]
    Setup { target: String, message: String },
    /// A request to the store failed.
    #[error("storage target {target}: {action} {key}: {source}{}", hint(action, source))]
    Store {
        target: String,
        action: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// A local file could not be read or synced.
    #[error("{action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// A recording is stored somewhere the configuration no longer names.
    #[error(
        "recording {recording_id} is stored in {role} target {stored_in}, but the configured {role} is {configured}: nothing deleted; run with the configuration that names where it is"
    )]
    Elsewhere { recording_id: String, role: &'static str, stored_in: String, configured: String },
    /// What the store holds is not what was sent.
    #[error(
        "storage target {target}: {key} does not match the spool's copy after upload ({detail}); the spool keeps it and it is sent again"
    )]
    Mismatch { target: String, key: String, detail: String },
}

/// What an operator should look at, for the errors whose message alone does not say.
fn hint(action: &str, e: &object_store::Error) -> &'static str {
    let text = format!("{e:?}");
    if text.contains("169.254.169.254") {
        " (no credentials: set access_key_id and secret_access_key_file, or $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY)"
    } else if text.contains("NoSuchBucket")
        || (matches!(e, object_store::Error::NotFound { .. })
            && !action.starts_with("reading")
            && action != "checking"
            && action != "deleting")
    {
        " (does the bucket exist, and may this key use it?)"
    } else if text.contains("InvalidAccessKeyId")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("AccessDenied")
        || text.contains("403")
    {
        " (the store refused the key: check access_key_id, the secret and the key's permissions on the bucket)"
    } else if text.contains("error sending request") || text.contains("Connection refused") || text.contains("connect")
    {
        " (is the store running and reachable at the endpoint?)"
    } else if text.contains("timed out") || text.contains("Timeout") {
        " (the store did not answer in time)"
    } else {
        ""
    }
}

impl StorageError {
    /// Whether the object is absent (as opposed to the store being unreachable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Store { source, .. } if matches!(**source, object_store::Error::NotFound { .. }))
    }
}

/// Which of the two targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Primary,
    Backup,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

/// How an upload is checked before the spool's copy is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The object is read back and its SHA-256 compared with the spool's copy.
    ReadBack,
    /// The store checked the `x-amz-checksum-sha256` sent with every request; the size is
    /// confirmed with a HEAD.
    Checksum,
}

/// One configured target.
pub struct Target {
    pub role: Role,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// For the local archive: its directory, for fsync.
    local_root: Option<PathBuf>,
    /// Where it is, for messages (`local /var/lib/callvault/archive`, `s3 http://…/bucket`).
    pub describe: String,
    verify: Verify,
    part_size: usize,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.role.name(), self.describe)
    }
}

/// The targets of a configuration, with the runtime their client needs. Used from one thread.
pub struct Storage {
    rt: tokio::runtime::Runtime,
    pub primary: Target,
    pub backup: Option<Target>,
}

impl Storage {
    /// Sets up the configured targets (nothing is sent yet; the local archive's directory is
    /// created).
    pub fn open(cfg: &Config) -> Result<Storage, StorageError> {
        Storage::open_with(cfg, true)
    }

    /// Like `open`, but a local archive that does not exist yet is an error, not created
    /// (`callvault doctor` changes nothing).
    pub fn open_existing(cfg: &Config) -> Result<Storage, StorageError> {
        Storage::open_with(cfg, false)
    }

    fn open_with(cfg: &Config, create: bool) -> Result<Storage, StorageError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            StorageError::Setup { target: "primary".into(), message: format!("cannot start the I/O runtime: {e}") }
        })?;
        let primary = Target::open(cfg, &cfg.storage.primary, Role::Primary, create)?;
        let backup = cfg.storage.backup.as_ref().map(|b| Target::open(cfg, b, Role::Backup, create)).transpose()?;
        Ok(Storage { rt, primary, backup })
    }

    /// The primary, then the backup if any.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        std::iter::once(&self.primary).chain(self.backup.as_ref())
    }

    /// Storage over targets made elsewhere (tests: a store that misbehaves).
    #[cfg(test)]
    pub(crate) fn from_targets(primary: Target, backup: Option<Target>) -> Storage {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Storage { rt, primary, backup }
    }

    /// Runs async storage work to completion on this storage's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

#[cfg(test)]
impl Target {
    /// A target over any store, verified by read-back.
    pub(crate) fn over(role: Role, store: Arc<dyn ObjectStore>, part_size: usize) -> Target {
        Target {
            role,
            store,
            prefix: String::new(),
            local_root: None,
            describe: "test".into(),
            verify: Verify::ReadBack,
            part_size,
        }
    }
}

/// Sets up the configured S3 targets without using them (`serve --check`): secret files read,
/// clients built. Local archives are left alone (serve creates them).
pub fn check_config(cfg: &Config) -> Result<(), StorageError> {
    let targets = std::iter::once((&cfg.storage.primary, Role::Primary))
        .chain(cfg.storage.backup.iter().map(|b| (b, Role::Backup)));
    for (t, role) in targets {
        if t.kind == "s3" {
            Target::open(cfg, t, role, false)?;
        }
    }
    Ok(())
}

fn setup_err(role: Role, message: impl Into<String>) -> StorageError {
    StorageError::Setup { target: role.name().into(), message: message.into() }
}

impl Target {
    fn open(cfg: &Config, t: &TargetConfig, role: Role, create: bool) -> Result<Target, StorageError> {
        let verify = if cfg.storage.verify == "checksum" { Verify::Checksum } else { Verify::ReadBack };
        let part_size = (cfg.storage.part_size_mib * 1024 * 1024) as usize;
        if t.kind == "local" {
            let dir = cfg.archive_dir(t);
            if create {
                crate::output::ensure_dir(&dir)
                    .map_err(|e| setup_err(role, format!("cannot create the archive {}: {e}", dir.display())))?;
            } else if !dir.is_dir() {
                return Err(setup_err(
                    role,
                    format!("the archive {} does not exist yet (serve creates it)", dir.display()),
                ));
            }
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| setup_err(role, format!("archive {}: {e}", dir.display())))?;
            return Ok(Target {
                role,
                store: Arc::new(store),
                prefix: t.prefix.clone(),
                describe: format!("local {}", dir.display()),
                local_root: Some(dir),
                // A local read-back is cheap and needs no trust in the file system.
                verify: Verify::ReadBack,
                part_size,
            });
        }
        let secret = if !t.secret_access_key_file.as_os_str().is_empty() {
            let text = std::fs::read_to_string(&t.secret_access_key_file).map_err(|e| {
                setup_err(
                    role,
                    format!("cannot read secret_access_key_file {}: {e}", t.secret_access_key_file.display()),
                )
            })?;
            Some(text.trim().to_string())
        } else if !t.secret_access_key.is_empty() {
            Some(t.secret_access_key.clone())
        } else {
            None
        };
        let env_key = std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty());
        if !t.endpoint.is_empty() && t.access_key_id.is_empty() && !env_key {
            // Off AWS there is no instance role to fall back on: say so now, not as a failed
            // request to the instance metadata service at the first upload.
            return Err(setup_err(
                role,
                "no access key: set access_key_id and secret_access_key_file (or $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY)",
            ));
        }
        if !t.access_key_id.is_empty() && secret.is_none() && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_none() {
            return Err(setup_err(
                role,
                "access_key_id is set but no secret: set secret_access_key_file (or secret_access_key)",
            ));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&t.bucket)
            .with_virtual_hosted_style_request(t.virtual_hosted)
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    // One request moves at most one part (8 MiB by default): a store that has
                    // not answered in a minute is treated as down, and the spool keeps waiting.
                    .with_timeout(Duration::from_secs(60)),
            );
        if !t.region.is_empty() {
            b = b.with_region(&t.region);
        }
        if !t.endpoint.is_empty() {
            b = b.with_endpoint(&t.endpoint).with_allow_http(t.endpoint.starts_with("http://"));
        }
        if !t.access_key_id.is_empty() {
            b = b.with_access_key_id(&t.access_key_id);
        }
        if let Some(s) = secret {
            b = b.with_secret_access_key(s);
        }
        let store = b.build().map_err(|e| setup_err(role, e.to_string()))?;
        // Spelt one way whatever the config's trailing `/`: the catalog records it per recording.
        let endpoint = if t.endpoint.is_empty() { "AWS" } else { t.endpoint.trim_end_matches('/') };
        Ok(Target {
            role,
            store: Arc::new(store),
            prefix: t.prefix.clone(),
            local_root: None,
            describe: format!("s3 {endpoint} bucket {}", t.bucket),
            verify,
            part_size,
        })
    }

    /// The object key of a recording's file: `PREFIX/YYYY/MM/DD/<name>`, the date being the
    /// recording's UTC start date (`started_at` as the summaries write it).
    pub fn recording_key(&self, started_at: &str, name: &str) -> ObjectPath {
        self.key(&format!("{}/{name}", date_path(started_at)))
    }

    /// `PREFIX/<rest>`.
    pub fn key(&self, rest: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// For the local archive: the file an object is.
    pub fn local_path(&self, key: &ObjectPath) -> Option<PathBuf> {
        self.local_root.as_ref().map(|r| r.join(key.as_ref()))
    }

    /// The target's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn store_err(&self, action: &'static str, key: &ObjectPath) -> impl FnOnce(object_store::Error) -> StorageError {
        let (target, key) = (self.role.name().to_string(), key.to_string());
        move |source| StorageError::Store { target, action, key, source: Box::new(source) }
    }

    /// Uploads a local file under `key`: one PUT when it fits in a part, multipart otherwise
    /// (aborted on failure, so no parts are left behind). Returns the bytes sent.
    pub async fn upload_file(&self, local: &Path, key: &ObjectPath) -> Result<u64, StorageError> {
        use std::io::Read;
        let io = |action, e| StorageError::Io { action, path: local.to_path_buf(), source: e };
        let mut file = std::fs::File::open(local).map_err(|e| io("cannot open", e))?;
        let len = file.metadata().map_err(|e| io("cannot stat", e))?.len();
        if len <= self.part_size as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).map_err(|e| io("cannot read", e))?;
            self.store.put(key, PutPayload::from(buf)).await.map_err(self.store_err("uploading", key))?;
        } else {
            let upload =
                self.store.put_multipart(key).await.map_err(self.store_err("starting a multipart upload of", key))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(io("cannot read", e));
                    }
                };
                // Bounded memory: at most two parts in flight.
                if let Err(e) = w.wait_for_capacity(2).await {
                    // Aborted, so the store keeps no parts of it (a restart sends it again whole).
                    let _ = w.abort().await;
                    return Err(self.store_err("uploading a part of", key)(e));
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(self.store_err("completing the multipart upload of", key))?;
        }
        if let Some(root) = &self.local_root {
            sync_local(root, key)?;
        }
        Ok(len)
    }

    /// Checks that `key` holds `len` bytes whose SHA-256 is `sha256`.
    pub async fn verify(&self, key: &ObjectPath, len: u64, sha256: &[u8; 32]) -> Result<(), StorageError> {
        let mismatch =
            |detail: String| StorageError::Mismatch { target: self.role.name().into(), key: key.to_string(), detail };
        match self.verify {
            Verify::Checksum => {
                let meta = self.store.head(key).await.map_err(self.store_err("checking", key))?;
                if meta.size != len {
                    return Err(mismatch(format!("{} bytes stored, {len} sent", meta.size)));
                }
            }
            Verify::ReadBack => {
                let (got, size) = self.sha256(key).await?;
                if size != len {
                    return Err(mismatch(format!("{size} bytes stored, {len} sent")));
                }
                if &got != sha256 {
                    return Err(mismatch(format!("SHA-256 {} stored, {} sent", hex(&got), hex(sha256))));
                }
            }
        }
        Ok(())
    }

    /// The SHA-256 and size of what the store holds under `key`, read back in full.
    pub async fn sha256(&self, key: &ObjectPath) -> Result<([u8; 32], u64), StorageError> {
        let got = self.store.get(key).await.map_err(self.store_err("reading back", key))?;
        let mut stream = got.into_stream();
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.store_err("reading back", key))?;
            size += chunk.len() as u64;
            ctx.update(&chunk);
        }
        let d = ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Ok((out, size))
    }

    /// Reads a whole (small) object.
    pub async fn get(&self, key: &ObjectPath) -> Result<Vec<u8>, StorageError> {
        let got = self.store.get(key).await.map_err(self.store_err("reading", key))?;
        Ok(got.bytes().await.map_err(self.store_err("reading", key))?.to_vec())
    }

    /// Reads `range` of an object (playback seeks without fetching the whole recording).
    pub async fn get_range(&self, key: &ObjectPath, range: std::ops::Range<u64>) -> Result<Vec<u8>, StorageError> {
        let got = self.store.get_range(key, range).await.map_err(self.store_err("reading", key))?;
        Ok(got.to_vec())
    }

    /// Writes a small object (holds, deletion log entries).
    pub async fn put(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.store.put(key, PutPayload::from(bytes)).await.map_err(self.store_err("writing", key))?;
        if let Some(root) = &self.local_root {
            sync_local(root, key)?;
        }
        Ok(())
    }

    /// Deletes an object; one already gone is not an error.
    pub async fn delete(&self, key: &ObjectPath) -> Result<(), StorageError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", key)(e)),
        }
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &ObjectPath) -> Result<Option<u64>, StorageError> {
        match self.store.head(key).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("checking", key)(e)),
        }
    }

    /// Every object under `PREFIX/<under>` (the whole target with `under` empty).
    pub async fn list(&self, under: &str) -> Result<Vec<object_store::ObjectMeta>, StorageError> {
        let prefix = if under.is_empty() {
            (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()))
        } else {
            Some(self.key(under))
        };
        let mut out = Vec::new();
        let mut stream = self.store.list(prefix.as_ref());
        let shown = prefix.as_ref().map(|p| p.to_string()).unwrap_or_default();
        while let Some(m) = stream.next().await {
            match m {
                Ok(m) => out.push(m),
                // A local date directory that does not exist yet lists as nothing.
                Err(object_store::Error::NotFound { .. }) => break,
                Err(source) => {
                    return Err(StorageError::Store {
                        target: self.role.name().into(),
                        action: "listing",
                        key: shown,
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// fsyncs a file the local archive just got, and the directories up to the archive's root
/// (new date directories included): only then may the spool's copy go.
fn sync_local(root: &Path, key: &ObjectPath) -> Result<(), StorageError> {
    let path = root.join(key.as_ref());
    let sync = |p: &Path| {
        std::fs::File::open(p).and_then(|f| f.sync_all()).map_err(|e| StorageError::Io {
            action: "cannot sync",
            path: p.to_path_buf(),
            source: e,
        })
    };
    sync(&path)?;
    let mut dir = path.parent();
    while let Some(d) = dir {
        sync(d)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// `YYYY/MM/DD` of an RFC 3339 UTC time (`2026-12-04T10:00:00.000Z`); `unknown-date` for one
/// that is not.
pub fn date_path(started_at: &str) -> String {
    let b = started_at.as_bytes();
    let ok = b.len() >= 10
        && b[4] == b'-'
        && b[7] == b'-'
        && [0, 1, 2, 3, 5, 6, 8, 9].iter().all(|&i| b[i].is_ascii_digit());
    if ok {
        format!("{}/{}/{}", &started_at[..4], &started_at[5..7], &started_at[8..10])
    } else {
        "unknown-date".into()
    }
}

/// The SHA-256 and length of a local file.
pub fn file_sha256(path: &Path) -> Result<([u8; 32], u64), StorageError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| StorageError::Io {
        action: "cannot open",
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| StorageError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        len += n as u64;
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((out, len))
}

#[cfg(test)]
mod shipping_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_paths_come_from_the_utc_start() {
        assert_eq!(date_path("2026-12-04T10:00:00.000Z"), "2026/12/04");
        assert_eq!(date_path("garbage"), "unknown-date");
        assert_eq!(date_path(""), "unknown-date");
    }
}
