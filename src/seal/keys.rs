//! Keys: key-encryption keys (KEKs) that wrap each file's data key, and the Ed25519 signing key
//! that signs seal records.
//!
//! Key files are one line of text, so an operator can move them into a credential store:
//!
//! ```text
//! callvault-kek v1 <id> <64 hex digits>
//! callvault-signing-key v1 <id> <64 hex digits: the Ed25519 seed>
//! callvault-signing-public v1 <id> <64 hex digits: the Ed25519 public key>
//! ```
//!
//! Secret key files are refused when group or others have any access to them. Sources:
//! a single KEK file, a key directory (`<id>.kek` files, `active` naming one, `signing.key`,
//! `<id>.pub` for every signing key ever used), or systemd credentials (`callvault.kek` active,
//! `callvault.kek.<anything>` older ones, `callvault.signing-key`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use zeroize::Zeroizing;

use super::SealError;
use super::format::{WRAPPED_KEY_LEN, hex, unhex};

const KEK_TAG: &str = "callvault-kek";
const SIGNING_TAG: &str = "callvault-signing-key";
const PUBLIC_TAG: &str = "callvault-signing-public";

/// Systemd credential names.
pub const CREDENTIAL_KEK: &str = "callvault.kek";
pub const CREDENTIAL_SIGNING: &str = "callvault.signing-key";
/// Prefix of credentials holding trusted public keys (`callvault.signing-public.<id>`).
pub const CREDENTIAL_PUBLIC: &str = "callvault.signing-public";

/// Whether a credentials directory holds any of callvault's credentials.
pub fn has_callvault_credentials(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("callvault.")))
    })
}

/// A key-encryption key.
pub struct Kek {
    pub id: String,
    key: Zeroizing<[u8; 32]>,
    /// Identifies the key without revealing it (in every header it wrapped a key for).
    pub fingerprint: [u8; 8],
    /// The file it came from.
    pub source: PathBuf,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).field("fingerprint", &hex(&self.fingerprint)).finish()
    }
}

impl Kek {
    /// A KEK from its bytes.
    pub fn new(id: &str, key: [u8; 32], source: PathBuf) -> Result<Kek, SealError> {
        check_key_id(id)?;
        let key = Zeroizing::new(key);
        let fingerprint = fingerprint(&key);
        Ok(Kek { id: id.to_string(), key, fingerprint, source })
    }

    /// A new random KEK.
    pub fn generate(id: &str) -> Result<Kek, SealError> {
        let mut key = [0u8; 32];
        super::random(&mut key);
        Kek::new(id, key, PathBuf::new())
    }

    /// Wraps a data key (AES-256-KW: deterministic, so no nonce to manage).
    pub fn wrap(&self, data_key: &[u8; 32]) -> [u8; WRAPPED_KEY_LEN] {
        let kek = AesKek::new(&AES_256, &self.key[..]).expect("a 32-byte AES-256 key");
        let mut out = [0u8; WRAPPED_KEY_LEN];
        kek.wrap(data_key, &mut out).expect("wrapping 32 bytes into 40");
        out
    }

    /// Unwraps a data key; `None` when it does not unwrap under this KEK.
    pub fn unwrap(&self, wrapped: &[u8; WRAPPED_KEY_LEN]) -> Option<Zeroizing<[u8; 32]>> {
        let kek = AesKek::new(&AES_256, &self.key[..]).ok()?;
        let mut out = Zeroizing::new([0u8; 32]);
        let n = kek.unwrap(wrapped, &mut out[..]).ok()?.len();
        (n == 32).then_some(out)
    }

    /// The key file's text.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{KEK_TAG} v1 {} {}\n", self.id, hex(&self.key[..])))
    }
}

fn fingerprint(key: &[u8; 32]) -> [u8; 8] {
    super::sha256(&[b"callvault kek fingerprint v1\0", key])[..8].try_into().unwrap()
}

/// The Ed25519 key that signs seal records. Kept by the recorder only: storage never holds it.
pub struct SigningKey {
    pub id: String,
    pair: Ed25519KeyPair,
    seed: Zeroizing<[u8; 32]>,
    pub public: [u8; 32],
    pub source: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).field("public", &hex(&self.public)).finish()
    }
}

impl SigningKey {
    pub fn from_seed(id: &str, seed: [u8; 32], source: PathBuf) -> Result<SigningKey, SealError> {
        check_key_id(id)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| SealError::KeyFile { path: source.clone(), reason: format!("not an Ed25519 seed: {e}") })?;
        let public: [u8; 32] = pair.public_key().as_ref().try_into().expect("Ed25519 public keys are 32 bytes");
        Ok(SigningKey { id: id.to_string(), pair, seed: Zeroizing::new(seed), public, source })
    }

    pub fn generate(id: &str) -> Result<SigningKey, SealError> {
        let mut seed = [0u8; 32];
        super::random(&mut seed);
        SigningKey::from_seed(id, seed, PathBuf::new())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.pair.sign(msg).as_ref().try_into().expect("Ed25519 signatures are 64 bytes")
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey { id: self.id.clone(), key: self.public, source: self.source.clone() }
    }

    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SIGNING_TAG} v1 {} {}\n", self.id, hex(&self.seed[..])))
    }
}

/// A signing key's public half, as published for auditors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub id: String,
    pub key: [u8; 32],
    pub source: PathBuf,
}

impl PublicKey {
    pub fn verify(&self, msg: &[u8], signature: &[u8; 64]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.key).verify(msg, signature).is_ok()
    }

    pub fn to_file_text(&self) -> String {
        format!("{PUBLIC_TAG} v1 {} {}\n", self.id, hex(&self.key))
    }

    /// Reads a public key file (any mode: it is public).
    pub fn load(path: &Path) -> Result<PublicKey, SealError> {
        let text = fs::read_to_string(path).map_err(|e| SealError::io("read public key", path, e))?;
        let (id, key) = parse_line(&text, PUBLIC_TAG, path)?;
        Ok(PublicKey { id, key, source: path.to_path_buf() })
    }
}

/// Key ids: 1–64 of `A–Z a–z 0–9 . _ -`, so they are safe as file names and in headers.
pub fn check_key_id(id: &str) -> Result<(), SealError> {
    let ok = !id.is_empty()
        && id.len() <= super::format::MAX_KEY_ID
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SealError::Invalid(format!(
            "key id {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ - (not starting with '.')"
        )))
    }
}

/// A new key id: `<kind>-YYYYMMDD-<8 hex>`.
pub fn new_key_id(kind: &str) -> String {
    let date: String = crate::engine::call::rfc3339(std::time::SystemTime::now())[..10].replace('-', "");
    let mut r = [0u8; 4];
    super::random(&mut r);
    format!("{kind}-{date}-{}", hex(&r))
}

fn parse_line(text: &str, tag: &str, path: &Path) -> Result<(String, [u8; 32]), SealError> {
    let bad = |reason: String| SealError::KeyFile { path: path.to_path_buf(), reason };
    let line = text.trim();
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    match fields.as_slice() {
        [t, "v1", id, key] if *t == tag => {
            check_key_id(id).map_err(|e| bad(e.to_string()))?;
            let key = unhex::<32>(key).ok_or_else(|| bad("the key is not 64 hex digits".into()))?;
            Ok((id.to_string(), key))
        }
        [t, v, ..] if *t == tag => Err(bad(format!("unknown version {v:?} (this callvault reads v1)"))),
        [t, ..] if [KEK_TAG, SIGNING_TAG, PUBLIC_TAG].contains(t) => {
            Err(bad(format!("this is a {t} file where a {tag} file was expected")))
        }
        _ => Err(bad(format!("expected one line `{tag} v1 <id> <64 hex digits>`"))),
    }
}

/// Reads a secret key file, refusing one that group or others can access.
fn read_secret(path: &Path) -> Result<Zeroizing<String>, SealError> {
    let meta = fs::metadata(path).map_err(|e| SealError::io("read key file", path, e))?;
    if !meta.is_file() {
        return Err(SealError::KeyFile { path: path.to_path_buf(), reason: "not a regular file".into() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SealError::KeyFileMode { path: path.to_path_buf(), mode });
    }
    fs::read_to_string(path).map(Zeroizing::new).map_err(|e| SealError::io("read key file", path, e))
}

/// Loads a KEK file.
pub fn load_kek(path: &Path) -> Result<Kek, SealError> {
    let text = read_secret(path)?;
    let (id, key) = parse_line(&text, KEK_TAG, path)?;
    Kek::new(&id, key, path.to_path_buf())
}

/// Loads a signing key file.
pub fn load_signing(path: &Path) -> Result<SigningKey, SealError> {
    let text = read_secret(path)?;
    let (id, seed) = parse_line(&text, SIGNING_TAG, path)?;
    SigningKey::from_seed(&id, seed, path.to_path_buf())
}

/// Writes a secret file that must not exist yet, mode 0600, fsynced.
pub fn write_secret(path: &Path, text: &str) -> Result<(), SealError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SealError::io("create key file", path, e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| SealError::io("write key file", path, e))
}

/// Replaces `path` atomically with `text` (temporary file, fsync, rename, directory fsync).
fn replace_file(path: &Path, text: &str, mode: u32) -> Result<(), SealError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let written = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(SealError::io("write", path, e));
    }
    if let Some(dir) = path.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Where keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// One KEK file (no rotation).
    File(PathBuf),
    /// A key directory.
    Dir(PathBuf),
    /// A systemd credentials directory (`$CREDENTIALS_DIRECTORY`).
    Credentials(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "key file {}", p.display()),
            KeySource::Dir(p) => write!(f, "key directory {}", p.display()),
            KeySource::Credentials(p) => write!(f, "systemd credentials in {}", p.display()),
        }
    }
}

/// Every key a process can use.
#[derive(Debug, Default)]
pub struct Keyring {
    /// Where the keys were loaded from (for messages).
    origin: Option<PathBuf>,
    keks: Vec<Kek>,
    active: Option<String>,
    signing: Option<SigningKey>,
    trusted: Vec<PublicKey>,
}

impl Keyring {
    /// A keyring of the given keys (the first KEK active).
    pub fn from_keys(keks: Vec<Kek>, signing: Option<SigningKey>) -> Keyring {
        let active = keks.first().map(|k| k.id.clone());
        let trusted = signing.iter().map(SigningKey::public_key).collect();
        Keyring { origin: None, keks, active, signing, trusted }
    }

    /// Loads KEKs and signing keys from a source; `signing_file` overrides where the signing key
    /// comes from. A missing signing key is not an error here (readers need none).
    pub fn load(source: &KeySource, signing_file: Option<&Path>) -> Result<Keyring, SealError> {
        let origin = match source {
            KeySource::File(p) => p.clone(),
            KeySource::Dir(d) | KeySource::Credentials(d) => d.clone(),
        };
        let mut ring = Keyring { origin: Some(origin), ..Keyring::default() };
        match source {
            KeySource::File(p) => {
                let k = load_kek(p)?;
                ring.active = Some(k.id.clone());
                ring.keks.push(k);
            }
            KeySource::Dir(d) => {
                let entries = fs::read_dir(d).map_err(|e| SealError::io("read key directory", d, e))?;
                let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                names.sort();
                for p in &names {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    if name.ends_with(".kek") {
                        ring.add_kek(load_kek(p)?)?;
                    } else if name.ends_with(".pub") {
                        ring.trust(PublicKey::load(p)?);
                    }
                }
                let active_file = d.join("active");
                ring.active = match fs::read_to_string(&active_file) {
                    Ok(id) => Some(id.trim().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && ring.keks.len() == 1 => {
                        Some(ring.keks[0].id.clone())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(SealError::io("read", &active_file, e)),
                };
                let signing = d.join("signing.key");
                if signing_file.is_none() && signing.exists() {
                    ring.set_signing(load_signing(&signing)?);
                }
            }
            KeySource::Credentials(d) => {
                let active_path = d.join(CREDENTIAL_KEK);
                if !active_path.exists() {
                    return Err(SealError::NoActiveKek {
                        dir: d.clone(),
                        reason: format!(
                            "the systemd credentials hold no {CREDENTIAL_KEK} (the active KEK); older KEKs are \
                             {CREDENTIAL_KEK}.<name>. Add LoadCredential[Encrypted]={CREDENTIAL_KEK}:… to the unit \
                             (docs/keys.md)"
                        ),
                    });
                }
                let active = load_kek(&active_path)?;
                ring.active = Some(active.id.clone());
                ring.add_kek(active)?;
                let entries = fs::read_dir(d).map_err(|e| SealError::io("read credentials directory", d, e))?;
                let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                names.sort();
                for p in &names {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    if name.starts_with(&format!("{CREDENTIAL_KEK}.")) {
                        ring.add_kek(load_kek(p)?)?;
                    } else if name.starts_with(&format!("{CREDENTIAL_PUBLIC}.")) {
                        ring.trust(PublicKey::load(p)?);
                    }
                }
                let signing = d.join(CREDENTIAL_SIGNING);
                if signing_file.is_none() && signing.exists() {
                    ring.set_signing(load_signing(&signing)?);
                }
            }
        }
        if let Some(p) = signing_file {
            ring.set_signing(load_signing(p)?);
        }
        Ok(ring)
    }

    fn add_kek(&mut self, k: Kek) -> Result<(), SealError> {
        if let Some(other) = self.keks.iter().find(|o| o.id == k.id) {
            if other.fingerprint != k.fingerprint {
                return Err(SealError::KeyFile {
                    path: k.source.clone(),
                    reason: format!("KEK id '{}' is also used by {} for a different key", k.id, other.source.display()),
                });
            }
            return Ok(());
        }
        self.keks.push(k);
        Ok(())
    }

    fn set_signing(&mut self, s: SigningKey) {
        self.trust(s.public_key());
        self.signing = Some(s);
    }

    /// Adds a public key that seal records may be signed with.
    pub fn trust(&mut self, p: PublicKey) {
        if !self.trusted.iter().any(|t| t.key == p.key) {
            self.trusted.push(p);
        }
    }

    /// The KEK new files are sealed with.
    pub fn active_kek(&self) -> Result<&Kek, SealError> {
        let id = self.active.as_deref().ok_or_else(|| SealError::NoActiveKek {
            dir: self.origin(),
            reason: if self.keks.is_empty() {
                "no KEK at all: create one with `callvault key generate`".into()
            } else {
                "several KEKs and no `active` file naming one: run `callvault key rotate`, or write an id to `active`"
                    .into()
            },
        })?;
        self.kek(id).map_err(|_| SealError::NoActiveKek {
            dir: self.origin(),
            reason: format!("`active` names '{id}', which no key file holds"),
        })
    }

    fn origin(&self) -> PathBuf {
        self.origin.clone().unwrap_or_else(|| {
            self.keks.first().map(|k| k.source.parent().unwrap_or(Path::new(".")).to_path_buf()).unwrap_or_default()
        })
    }

    /// A KEK by id.
    pub fn kek(&self, id: &str) -> Result<&Kek, SealError> {
        self.keks.iter().find(|k| k.id == id).ok_or_else(|| SealError::UnknownKek {
            id: id.to_string(),
            known: self.keks.iter().map(|k| k.id.clone()).collect(),
        })
    }

    pub fn keks(&self) -> &[Kek] {
        &self.keks
    }

    pub fn active_id(&self) -> Option<&str> {
        self.active.as_deref()
    }

    pub fn signing(&self) -> Result<&SigningKey, SealError> {
        self.signing.as_ref().ok_or_else(|| {
            SealError::NoSigningKey(
                "none loaded: put signing.key in the key directory (`callvault key generate --signing`), \
                 or set [keys] signing_key_file"
                    .into(),
            )
        })
    }

    pub fn trusted(&self) -> &[PublicKey] {
        &self.trusted
    }
}

/// What [`init_dir`] and [`rotate`] created.
#[derive(Debug, Clone)]
pub struct Created {
    pub kek_id: Option<String>,
    pub signing_id: Option<String>,
    pub files: Vec<PathBuf>,
}

/// Creates a key directory's missing parts: the directory (0700), a first KEK made active, and a
/// signing key with its public key. Existing keys are never touched. Returns what was created.
pub fn init_dir(dir: &Path) -> Result<Created, SealError> {
    create_key_dir(dir)?;
    let mut created = Created { kek_id: None, signing_id: None, files: Vec::new() };
    let ring = Keyring::load(&KeySource::Dir(dir.to_path_buf()), None)?;
    if ring.keks().is_empty() {
        let (id, path) = add_kek(dir, true)?;
        created.kek_id = Some(id);
        created.files.push(path);
    }
    if !dir.join("signing.key").exists() {
        let (id, paths) = new_signing(dir)?;
        created.signing_id = Some(id);
        created.files.extend(paths);
    }
    Ok(created)
}

fn create_key_dir(dir: &Path) -> Result<(), SealError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| SealError::io("create key directory", dir, e))?;
    }
    Ok(())
}

/// Adds a new random KEK to a key directory; `activate` makes it the one new files use.
pub fn add_kek(dir: &Path, activate: bool) -> Result<(String, PathBuf), SealError> {
    create_key_dir(dir)?;
    let kek = Kek::generate(&new_key_id("kek"))?;
    let path = dir.join(format!("{}.kek", kek.id));
    write_secret(&path, &kek.to_file_text())?;
    if activate {
        replace_file(&dir.join("active"), &format!("{}\n", kek.id), 0o600)?;
    }
    Ok((kek.id.clone(), path))
}

/// Rotates the active KEK: a new one is created and made active; the old ones stay, so what they
/// sealed keeps opening. Nothing sealed is rewritten.
pub fn rotate(dir: &Path) -> Result<(String, PathBuf), SealError> {
    if !dir.is_dir() {
        return Err(SealError::Invalid(format!(
            "{} is not a key directory (create one with `callvault key generate --dir {}`)",
            dir.display(),
            dir.display()
        )));
    }
    // Refuse to rotate over keys that do not load: they would be unusable afterwards anyway.
    Keyring::load(&KeySource::Dir(dir.to_path_buf()), None)?;
    add_kek(dir, true)
}

/// Creates a new signing key in a key directory (replacing `signing.key`) and publishes its
/// public key as `<id>.pub`; earlier `.pub` files stay, so older seal records still verify.
pub fn new_signing(dir: &Path) -> Result<(String, Vec<PathBuf>), SealError> {
    create_key_dir(dir)?;
    let key = SigningKey::generate(&new_key_id("sign"))?;
    let public = dir.join(format!("{}.pub", key.id));
    replace_file(&public, &key.public_key().to_file_text(), 0o644)?;
    let path = dir.join("signing.key");
    replace_file(&path, &key.to_file_text(), 0o600)?;
    Ok((key.id.clone(), vec![path, public]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_unwrap() {
        let a = Kek::generate("a").unwrap();
        let b = Kek::generate("b").unwrap();
        let dk = [7u8; 32];
        let w = a.wrap(&dk);
        assert_eq!(*a.unwrap(&w).unwrap(), dk);
        assert!(b.unwrap(&w).is_none());
        let mut bad = w;
        bad[3] ^= 1;
        assert!(a.unwrap(&bad).is_none());
    }

    #[test]
    fn key_files_round_trip_and_loose_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = Kek::generate("kek-1").unwrap();
        let p = dir.path().join("k.kek");
        write_secret(&p, &k.to_file_text()).unwrap();
        assert_eq!(load_kek(&p).unwrap().fingerprint, k.fingerprint);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_kek(&p).unwrap_err();
        assert!(matches!(e, SealError::KeyFileMode { mode: 0o640, .. }), "{e}");
        assert!(e.to_string().contains("0640") && e.to_string().contains(&p.display().to_string()), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o604)).unwrap();
        assert!(matches!(load_kek(&p), Err(SealError::KeyFileMode { .. })));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
        load_kek(&p).unwrap();
        // A signing key where a KEK is expected is named as such.
        let s = SigningKey::generate("s").unwrap();
        let sp = dir.path().join("s.key");
        write_secret(&sp, &s.to_file_text()).unwrap();
        let e = load_kek(&sp).unwrap_err().to_string();
        assert!(e.contains("callvault-signing-key file where a callvault-kek"), "{e}");
        assert_eq!(load_signing(&sp).unwrap().public, s.public);
    }

    #[test]
    fn a_key_directory_rotates_and_keeps_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("keys");
        let c = init_dir(&d).unwrap();
        assert!(c.kek_id.is_some() && c.signing_id.is_some());
        assert_eq!(fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        let again = init_dir(&d).unwrap();
        assert!(again.kek_id.is_none() && again.signing_id.is_none(), "nothing new");
        let first = c.kek_id.unwrap();
        let (second, _) = rotate(&d).unwrap();
        let ring = Keyring::load(&KeySource::Dir(d.clone()), None).unwrap();
        assert_eq!(ring.active_kek().unwrap().id, second);
        assert!(ring.kek(&first).is_ok());
        assert_eq!(ring.keks().len(), 2);
        let old_public = ring.signing().unwrap().public;
        new_signing(&d).unwrap();
        let ring = Keyring::load(&KeySource::Dir(d.clone()), None).unwrap();
        assert_ne!(ring.signing().unwrap().public, old_public);
        assert!(ring.trusted().iter().any(|t| t.key == old_public), "the old public key stays trusted");
        // Without `active`, several KEKs are ambiguous.
        fs::remove_file(d.join("active")).unwrap();
        let ring = Keyring::load(&KeySource::Dir(d), None).unwrap();
        assert!(matches!(ring.active_kek(), Err(SealError::NoActiveKek { .. })));
    }

    #[test]
    fn systemd_credentials_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let active = Kek::generate("kek-new").unwrap();
        let old = Kek::generate("kek-old").unwrap();
        // As systemd writes them: read-only for the service's user.
        for (name, text) in [
            (CREDENTIAL_KEK, active.to_file_text()),
            ("callvault.kek.2025", old.to_file_text()),
            (CREDENTIAL_SIGNING, SigningKey::generate("s1").unwrap().to_file_text()),
        ] {
            let p = d.join(name);
            fs::write(&p, text.as_bytes()).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
        }
        let ring = Keyring::load(&KeySource::Credentials(d.to_path_buf()), None).unwrap();
        assert_eq!(ring.active_kek().unwrap().id, "kek-new");
        assert!(ring.kek("kek-old").is_ok());
        assert_eq!(ring.signing().unwrap().id, "s1");
    }

    #[test]
    fn key_ids_are_checked() {
        check_key_id("kek-20261204-ab12cd34").unwrap();
        for bad in ["", ".hidden", "a/b", "x y", &"k".repeat(65)] {
            assert!(check_key_id(bad).is_err(), "{bad:?}");
        }
    }
}
