//! The catalog from the store: a full rebuild from every metadata object, and the poll that
//! keeps a recorder's catalog current with what other recorders sharing the store write.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use object_store::ObjectMeta;
use serde_json::{Value, json};

use super::{Storage, StorageError, Target};
use crate::catalog::{Catalog, CatalogError};
use crate::seal::Keyring;

/// The file name of an object in a recording's place of the layout, `PREFIX/YYYY/MM/DD/<name>`
/// (or `PREFIX/unknown-date/<name>`), with `<name>` starting with a recording id; `None` for
/// anything else: holds, the deletion log, other prefixes' objects, a local store's temporary
/// files.
pub fn layout_name<'a>(t: &Target, key: &'a str) -> Option<&'a str> {
    let rest = if t.prefix().is_empty() { key } else { key.strip_prefix(t.prefix())?.strip_prefix('/')? };
    let b = rest.as_bytes();
    let dated = b.len() > 11
        && [0, 1, 2, 3, 5, 6, 8, 9].iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'/'
        && b[7] == b'/'
        && b[10] == b'/';
    let name = if dated { &rest[11..] } else { rest.strip_prefix("unknown-date/")? };
    let ok = !name.contains('/')
        && !name.contains('#')
        && name.get(..26).is_some_and(|r| ulid::Ulid::from_string(r).is_ok());
    ok.then_some(name)
}

/// Whether an object is a recording's metadata object (`…/YYYY/MM/DD/<id>.meta.cvs` or
/// `<id>.json`), not a hold, a deletion log entry or another prefix's object.
pub fn is_metadata_object(t: &Target, m: &ObjectMeta) -> bool {
    layout_name(t, m.location.as_ref()).is_some_and(|name| {
        let rest = &name[26..];
        rest == ".meta.cvs" || rest == ".json"
    })
}

/// Reads a metadata object: sealed ones are opened and verified with `keys`.
pub async fn read_metadata(t: &Target, m: &ObjectMeta, keys: Option<&Keyring>) -> Result<Value, String> {
    let bytes = t.get(&m.location).await.map_err(|e| e.to_string())?;
    let v = if m.location.as_ref().ends_with(".meta.cvs") {
        let keys = keys.ok_or("sealed, and no keys to open it")?;
        crate::output::sealed::read_sealed_json_bytes(bytes, keys).map_err(|e| e.to_string())?
    } else {
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?
    };
    if v["recording_id"].as_str().is_none_or(|r| r.len() != 26) {
        return Err("no recording_id".into());
    }
    Ok(v)
}

/// `stored` for a recording from listings: per target, the objects beside its metadata object.
fn stored_from(listings: &[(&Target, &BTreeMap<String, Vec<&ObjectMeta>>)], rid: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (t, by_rid) in listings {
        let Some(objs) = by_rid.get(rid) else { continue };
        let mut objs: Vec<&&ObjectMeta> = objs.iter().collect();
        // The metadata object last, as the shipper writes it.
        objs.sort_by_key(|m| (is_metadata_object(t, m), m.location.to_string()));
        let objects: Vec<Value> =
            objs.iter().map(|m| json!({"key": m.location.to_string(), "bytes": m.size})).collect();
        out.insert(t.role.name().into(), json!({"target": t.describe, "objects": objects}));
    }
    Value::Object(out)
}

fn by_recording<'a>(t: &Target, list: &'a [ObjectMeta]) -> BTreeMap<String, Vec<&'a ObjectMeta>> {
    let mut map: BTreeMap<String, Vec<&ObjectMeta>> = BTreeMap::new();
    for m in list {
        if let Some(name) = layout_name(t, m.location.as_ref()) {
            map.entry(name[..26].to_string()).or_default().push(m);
        }
    }
    map
}

/// Rebuilds `catalog` from every metadata object in the store (the primary; the backup's
/// objects are listed too, so `stored` names both). Calls `progress(done, total)`. Returns
/// (indexed, skipped with why).
pub fn rebuild_from_store(
    catalog: &mut Catalog,
    storage: &Storage,
    keys: Option<&Keyring>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, Vec<String>), RebuildError> {
    storage.block_on(async {
        let primary = storage.primary.list("").await?;
        let backup = match &storage.backup {
            Some(b) => Some((b, b.list("").await?)),
            None => None,
        };
        let p_map = by_recording(&storage.primary, &primary);
        let b_map = backup.as_ref().map(|(b, l)| (*b, by_recording(b, l)));
        let mut listings = vec![(&storage.primary, &p_map)];
        if let Some((b, m)) = &b_map {
            listings.push((b, m));
        }
        let metas: Vec<&ObjectMeta> = primary.iter().filter(|m| is_metadata_object(&storage.primary, m)).collect();
        let total = metas.len() as u64;
        let (mut indexed, mut skipped) = (0u64, Vec::new());
        for (i, m) in metas.iter().enumerate() {
            match read_metadata(&storage.primary, m, keys).await {
                Ok(v) => {
                    let rid = v["recording_id"].as_str().unwrap_or_default().to_string();
                    catalog.upsert(&v)?;
                    catalog.set_stored(&rid, &stored_from(&listings, &rid))?;
                    indexed += 1;
                }
                Err(e) => skipped.push(format!("{}: {e}", m.location)),
            }
            progress(i as u64 + 1, total);
        }
        Ok((indexed, skipped))
    })
}

/// Why a rebuild from the store stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What the poll remembers between passes.
#[derive(Default)]
pub struct PollState {
    /// Metadata objects that could not be read (warned of once, not tried again).
    unreadable: std::collections::HashSet<String>,
    /// Deletion log entries already applied.
    deletions_seen: std::collections::HashSet<String>,
    /// The recordings they named: never indexed again, whatever a deletion cut short left.
    deleted: std::collections::HashSet<String>,
}

/// The recording ids the deletion log entries under `PREFIX/<under>` name, skipping (and then
/// remembering) the entries in `seen`.
async fn deleted_ids(
    t: &Target,
    under: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Result<Vec<String>, StorageError> {
    let mut out = Vec::new();
    for m in t.list(under).await? {
        let key = m.location.to_string();
        if seen.contains(&key) {
            continue;
        }
        let entry: Value = match t.get(&m.location).await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Err(e) if e.is_not_found() => Value::Null,
            Err(e) => return Err(e),
        };
        if let Some(r) = entry["recording_id"].as_str() {
            out.push(r.to_string());
        }
        seen.insert(key);
    }
    Ok(out)
}

/// Looks for metadata objects of the last two UTC days (today's and yesterday's date
/// directories: a call that started before midnight lands under yesterday) that the catalog at
/// `catalog` does not know, and hands them to `writer`; and for those days' deletion log
/// entries (other recorders' erasures and retention), whose recordings `writer` drops. Returns
/// how many were new. Objects that cannot be read are warned of once, not tried again.
pub fn poll(
    storage: &Storage,
    catalog: &std::path::Path,
    keys: Option<&Keyring>,
    writer: &crate::catalog::Writer,
    now: SystemTime,
    state: &mut PollState,
) -> Result<usize, String> {
    let unreadable = &mut state.unreadable;
    let deletions_seen = &mut state.deletions_seen;
    let deleted = &mut state.deleted;
    let t = &storage.primary;
    let days: Vec<String> = [Duration::ZERO, Duration::from_secs(86_400)]
        .iter()
        .filter_map(|d| now.checked_sub(*d))
        .map(|at| super::date_path(&crate::engine::call::rfc3339(at)))
        .collect();
    storage.block_on(async {
        let mut new = 0;
        for day in &days {
            for rid in deleted_ids(t, &format!("_deletions/{day}"), deletions_seen).await.map_err(|e| e.to_string())? {
                writer.remove(&rid);
                deleted.insert(rid);
            }
        }
        for day in days {
            let list = t.list(&day).await.map_err(|e| e.to_string())?;
            let metas: Vec<&ObjectMeta> = list.iter().filter(|m| is_metadata_object(t, m)).collect();
            let keys_listed: Vec<String> = metas.iter().map(|m| m.location.to_string()).collect();
            let known = crate::catalog::known_meta_keys(catalog, &keys_listed).map_err(|e| e.to_string())?;
            let map = by_recording(t, &list);
            let fresh: Vec<&ObjectMeta> = metas
                .into_iter()
                .filter(|m| !known.contains(m.location.as_ref()) && !unreadable.contains(m.location.as_ref()))
                .collect();
            for m in fresh {
                match read_metadata(t, m, keys).await {
                    Ok(v) => {
                        let rid = v["recording_id"].as_str().unwrap_or_default().to_string();
                        if deleted.contains(&rid) {
                            continue;
                        }
                        writer.record(&v);
                        writer.stored(&rid, stored_from(&[(t, &map)], &rid));
                        new += 1;
                    }
                    Err(e) => {
                        crate::log::warn(&format!(
                            "catalog poll: {} not indexed: {e} (not tried again until restart; `callvault catalog rebuild` retries)",
                            m.location
                        ));
                        unreadable.insert(m.location.to_string());
                    }
                }
            }
        }
        Ok(new)
    })
}
