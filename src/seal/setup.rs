//! Finding the keys a process seals with, from the configuration.

use std::path::Path;

use super::SealError;
use super::keys::{self, KeySource, Keyring};
use crate::config::Config;

/// The keys found, where from, and what an operator must be told (keys generated, and so on).
#[derive(Debug)]
pub struct Resolved {
    pub keys: Keyring,
    pub source: KeySource,
    pub warnings: Vec<String>,
}

/// Loads the keys `cfg` names. With `create`, the default key directory
/// (`<data_dir>/keys`) gets a KEK and a signing key on first use — `serve` does this so that a
/// fresh install records sealed at once; tools that only read never create keys.
pub fn resolve(cfg: &Config, credentials: Option<&Path>, create: bool) -> Result<Resolved, SealError> {
    let source = cfg.key_source(credentials);
    let default_dir = cfg.default_key_dir();
    let mut warnings = Vec::new();
    match &source {
        KeySource::Dir(d) if *d == default_dir && create => {
            if !dir_has_keks(d)
                && let Some(sealed) = first_sealed_file(&cfg.spool_dir())
            {
                return Err(SealError::Invalid(format!(
                    "no KEK in {} (nor configured), but the spool holds sealed recordings ({}): their keys are \
                     missing. Restore the key directory from its backup, or configure where the keys are \
                     ([keys] in docs/keys.md). New keys are not generated, as they could not open these",
                    d.display(),
                    sealed.display()
                )));
            }
            let created = keys::init_dir(d)?;
            if let Some(id) = &created.kek_id {
                warnings.push(format!(
                    "no key configured: generated KEK '{id}' in {} (mode 0600). Back it up now and move it to a \
                     credential store (docs/keys.md): every recording sealed with it is lost with it",
                    d.display()
                ));
            }
            if let Some(id) = &created.signing_id {
                warnings.push(format!(
                    "generated signing key '{id}' in {}; give auditors its public key ({id}.pub) and keep the \
                     private key off the storage",
                    d.display()
                ));
            }
        }
        KeySource::Dir(d) if !d.is_dir() => {
            return Err(SealError::Invalid(format!(
                "key directory {} does not exist: create it with `callvault key generate --dir {}`",
                d.display(),
                d.display()
            )));
        }
        _ => {}
    }
    if let KeySource::Credentials(c) = &source
        && default_dir.join("signing.key").exists() | dir_has_keks(&default_dir)
    {
        warnings.push(format!(
            "keys come from the systemd credentials in {}; the key directory {} is not used: once its keys \
             are in credentials (or backed up elsewhere), remove it from the storage",
            c.display(),
            default_dir.display()
        ));
    }
    let mut ring = Keyring::load(&source, cfg.signing_key_file())?;
    for p in &cfg.keys.trusted_public_keys {
        ring.trust(keys::PublicKey::load(p)?);
    }
    // Only writers (serve, import --encrypt) look for a signing key beside a KEK file or
    // credentials: readers trust no key from a directory they were not pointed at.
    if ring.signing().is_err() && create && !matches!(source, KeySource::Dir(_)) {
        // A KEK file or credentials without a signing key: the data directory keeps one.
        let fallback = default_dir.join("signing.key");
        if !fallback.exists() && create {
            let (id, _) = keys::new_signing(&default_dir)?;
            warnings.push(format!(
                "no signing key in the {source}: generated '{id}' in {}; set [keys] signing_key_file or add the \
                 credential {} to keep it elsewhere",
                default_dir.display(),
                keys::CREDENTIAL_SIGNING
            ));
        }
        if fallback.exists() {
            let with_signing = Keyring::load(&source, Some(&fallback))?;
            ring = with_signing;
            // Older public keys kept beside it stay trusted.
            if let Ok(extra) = Keyring::load(&KeySource::Dir(default_dir.clone()), Some(&fallback)) {
                for p in extra.trusted() {
                    ring.trust(p.clone());
                }
            }
        }
    }
    Ok(Resolved { keys: ring, source, warnings })
}

fn dir_has_keks(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".kek")))
    })
}

/// A sealed file in the spool, if any.
fn first_sealed_file(spool: &Path) -> Option<std::path::PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(spool).ok()?.filter_map(Result::ok).map(|e| e.path()).collect();
    names.sort();
    names.into_iter().find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".cvs")))
}
