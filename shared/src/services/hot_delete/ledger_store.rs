//! Where a range's ledger lives: the `hot` section of its partition manifest, next to its
//! files. Every change is a compare-and-swap of the manifest, retried on contention, with the
//! change computed again from the copy just read.

use crate::error::{Error, Result};
use crate::model::manifest::{from_json, to_json, PartitionManifest};
use crate::model::task::PARTITION_MANIFEST;
use crate::ports::store::{ObjectStore, PutMode};

use crate::model::hot::ledger::RangeLedger;

const RETRIES: usize = 16;

/// The ledger of the range whose files are in `dir`, if one was ever written.
pub async fn read_ledger(store: &dyn ObjectStore, dir: &str) -> Result<Option<RangeLedger>> {
    Ok(read_manifest(store, dir).await?.0.and_then(|m| m.hot))
}

async fn read_manifest(
    store: &dyn ObjectStore,
    dir: &str,
) -> Result<(Option<PartitionManifest>, PutMode)> {
    let key = format!("{dir}{PARTITION_MANIFEST}");
    match store.get(&key).await {
        Ok((bytes, meta)) => Ok((
            Some(from_json::<PartitionManifest>(&key, &bytes)?),
            PutMode::IfMatch(meta.version),
        )),
        Err(e) if e.is_not_found() => Ok((None, PutMode::IfAbsent)),
        Err(e) => Err(e),
    }
}

/// Applies `change` to the ledger of `dir` (a new, empty one when none exists) and stores it
/// when `change` says it changed something; returns what `change` returned the last time.
pub async fn change_ledger<T>(
    store: &dyn ObjectStore,
    dir: &str,
    mut change: impl FnMut(&mut RangeLedger) -> (bool, T),
) -> Result<T> {
    let key = format!("{dir}{PARTITION_MANIFEST}");
    for _ in 0..RETRIES {
        let (manifest, mode) = read_manifest(store, dir).await?;
        let mut manifest = manifest.unwrap_or_default();
        let mut ledger = manifest.hot.take().unwrap_or_default();
        let (changed, out) = change(&mut ledger);
        if !changed {
            return Ok(out);
        }
        manifest.hot = Some(ledger);
        match store.put(&key, to_json(&manifest), mode).await {
            Ok(_) => return Ok(out),
            Err(e) if e.is_precondition_failed() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Manifest {
        key,
        message: format!(
            "kept changing under {RETRIES} concurrent updates of the range's ledger; retry"
        ),
    })
}
