//! Backups of the files a rewrite replaces (`--backup PREFIX`) and `compactor restore`.
//!
//! Before a rewrite task is staged, each input is copied to `<prefix>/<its key>` and the
//! partition manifest next to it, and a [`BackupRecord`] names them and the outputs that will
//! replace them. A restore puts every kept file back where it was (a copy that never replaces
//! anything), puts the partition manifest back, then removes the outputs: run again after a
//! crash, it finishes what it started. Records are restored newest first, and a restored one
//! is marked so that a second restore changes nothing.

use crate::error::{Error, Result};
use crate::model::manifest::TaskManifest;
use crate::model::object::{dir_prefix, ObjectMeta};
use crate::model::rewrite::{
    backup_key, backup_record_key, BackedUpFile, BackupRecord, RewriteSpec, BACKUP_RECORDS,
};
use crate::model::task::{partition_output_dir, Task, PARTITION_MANIFEST};
use crate::ports::store::{
    list_all, put_json_once, read_json, DeleteRequest, ObjectStore, PutMode,
};
use crate::support::clock::now_ms;

/// Suffix of the marker a restore leaves next to a record it finished.
const RESTORED: &str = ".restored";
/// Suffix of the marker a restore leaves before it removes a record's outputs.
const RESTORING: &str = ".restoring";

/// Keeps the inputs of a staged rewrite (and the partition manifest) under `prefix`.
pub async fn keep(
    store: &dyn ObjectStore,
    prefix: &str,
    task: &Task,
    spec: &RewriteSpec,
    manifest: &TaskManifest,
) -> Result<()> {
    let kept = Kept {
        dataset: &task.partition.dataset,
        partition: &task.partition.partition,
        id: &task.task_id,
        what: match spec.upsert {
            Some(_) => spec.describe(),
            None => spec.predicate.clone(),
        },
        set: spec.set.clone(),
        manifest_key: format!(
            "{}{PARTITION_MANIFEST}",
            partition_output_dir(&task.dataset, &task.partition.partition)
        ),
        outputs: manifest
            .outputs
            .iter()
            .map(|o| o.final_key.clone())
            .collect(),
    };
    keep_files(store, prefix, &manifest.inputs, kept).await
}

/// What a backup record says besides its files.
pub struct Kept<'a> {
    pub dataset: &'a str,
    pub partition: &'a str,
    /// Names the record (a task id, or the operation).
    pub id: &'a str,
    /// The operation, for the record's reader.
    pub what: String,
    pub set: Vec<String>,
    /// The partition manifest to keep with the files (absent: none to keep).
    pub manifest_key: String,
    /// What the operation puts in the files' place (a restore removes it).
    pub outputs: Vec<String>,
}

/// Copies `files` (and the partition manifest) under `prefix` and writes their record; a
/// rerun finds its earlier copies and record.
pub async fn keep_files(
    store: &dyn ObjectStore,
    prefix: &str,
    inputs: &[ObjectMeta],
    kept: Kept<'_>,
) -> Result<()> {
    let mut files = Vec::with_capacity(inputs.len());
    for input in inputs {
        let to = backup_key(prefix, &input.key);
        copy_once(store, &input.key, &to, input.size).await?;
        files.push(BackedUpFile {
            key: input.key.clone(),
            size: input.size,
            backup_key: to,
        });
    }
    let manifest_backup = match store.head(&kept.manifest_key).await? {
        Some(m) => {
            let to = backup_key(prefix, &format!("{}.{}", kept.manifest_key, kept.id));
            copy_once(store, &kept.manifest_key, &to, m.size).await?;
            Some(to)
        }
        None => None,
    };
    let record = BackupRecord {
        dataset: kept.dataset.to_string(),
        partition: kept.partition.to_string(),
        task_id: kept.id.to_string(),
        predicate: kept.what,
        set: kept.set,
        files,
        partition_manifest: kept.manifest_key,
        partition_manifest_backup: manifest_backup,
        outputs: kept.outputs,
        created_at_ms: now_ms(),
    };
    let key = backup_record_key(prefix, kept.dataset, kept.partition, kept.id);
    put_json_once(store, &key, record).await?;
    Ok(())
}

/// Copies `from` to `to` unless an earlier attempt already did.
async fn copy_once(store: &dyn ObjectStore, from: &str, to: &str, size: u64) -> Result<()> {
    match store.copy(from, to).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_precondition_failed() => match store.head(to).await? {
            Some(m) if m.size == size => Ok(()),
            _ => Err(Error::Other(format!(
                "the backup location {to} already holds another file; pick a new --backup prefix (nothing was changed)"
            ))),
        },
        Err(e) => Err(e),
    }
}

/// What a restore did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Backup records found, and of those restored by this run (earlier restores are skipped).
    pub records: usize,
    pub restored: usize,
    /// Files put back where they were.
    pub files_restored: usize,
    /// Files not put back because something is at their key now (left alone, listed here).
    pub files_in_the_way: Vec<String>,
    /// Partition manifests put back (or removed, where there was none before).
    pub manifests_restored: usize,
    /// Files the operations had written in their place, removed.
    pub outputs_removed: usize,
}

/// Puts back every backup under `prefix` not restored yet (in a dry run: counts what would be).
pub async fn restore(
    store: &dyn ObjectStore,
    prefix: &str,
    dry_run: bool,
) -> Result<RestoreReport> {
    let root = dir_prefix(&backup_key(prefix, BACKUP_RECORDS));
    let listing = list_all(store, &root, None).await?;
    if listing.objects.is_empty() {
        return Err(Error::Other(format!(
            "no backup under {prefix}: {root} holds no record (pass the --backup prefix of the operation)"
        )));
    }
    let marked = |suffix: &str| -> std::collections::HashSet<String> {
        listing
            .objects
            .iter()
            .filter_map(|o| o.key.strip_suffix(suffix).map(str::to_string))
            .collect()
    };
    let (done, started) = (marked(RESTORED), marked(RESTORING));
    let mut records = Vec::new();
    for object in listing.objects.iter().filter(|o| o.key.ends_with(".json")) {
        if let Some(record) = read_json::<BackupRecord>(store, &object.key).await? {
            records.push((object.key.clone(), record));
        }
    }
    records.sort_by_key(|(_, r)| std::cmp::Reverse(r.created_at_ms));
    let mut report = RestoreReport {
        records: records.len(),
        ..RestoreReport::default()
    };
    // A dry run changes nothing: what it would have put back and removed is kept here, so
    // that older records are judged against the lake the newer ones would have left.
    let mut would: std::collections::HashMap<String, bool> = std::collections::HashMap::new();

    for (key, record) in records {
        if done.contains(&key) {
            continue;
        }
        // An output that is gone before this restore started: the partition was compacted
        // again since, and its rows are in files this backup does not know.
        if !started.contains(&key) {
            for output in &record.outputs {
                if !exists(store, output, &would).await? {
                    return Err(Error::Other(format!(
                        "cannot restore {key}: {output}, which the operation wrote, is gone (the partition {} was changed since); nothing of this backup was restored",
                        record.partition
                    )));
                }
            }
        }
        report.restored += 1;
        for file in &record.files {
            match exists(store, &file.key, &would).await? {
                true => report.files_in_the_way.push(file.key.clone()),
                false => {
                    if !dry_run {
                        match store.copy(&file.backup_key, &file.key).await {
                            Ok(_) => {}
                            // A concurrent restore (or writer) put something there first.
                            Err(e) if e.is_precondition_failed() => {
                                report.files_in_the_way.push(file.key.clone());
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    report.files_restored += 1;
                    would.insert(file.key.clone(), true);
                }
            }
        }
        if !dry_run {
            match &record.partition_manifest_backup {
                Some(kept) => {
                    let (bytes, _) = store.get(kept).await?;
                    store
                        .put(&record.partition_manifest, bytes, PutMode::Overwrite)
                        .await?;
                }
                None => {
                    store
                        .delete_many(&[DeleteRequest {
                            key: record.partition_manifest.clone(),
                            version: None,
                        }])
                        .await?;
                }
            }
        }
        report.manifests_restored += 1;
        let requests: Vec<DeleteRequest> = record
            .outputs
            .iter()
            .map(|k| DeleteRequest {
                key: k.clone(),
                version: None,
            })
            .collect();
        for output in &record.outputs {
            if exists(store, output, &would).await? {
                report.outputs_removed += 1;
            }
            would.insert(output.clone(), false);
        }
        if !dry_run {
            store
                .put(
                    &format!("{key}{RESTORING}"),
                    bytes::Bytes::from_static(b"restoring\n"),
                    PutMode::Overwrite,
                )
                .await?;
            let kept = store.delete_many(&requests).await?;
            if let Some(k) = kept.first() {
                return Err(Error::Other(format!(
                    "restoring {key}: could not remove {}: {}; run the restore again",
                    k.key, k.reason
                )));
            }
            store
                .put(
                    &format!("{key}{RESTORED}"),
                    bytes::Bytes::from_static(b"restored\n"),
                    PutMode::Overwrite,
                )
                .await?;
        }
    }
    Ok(report)
}

/// Is there an object at `key` (or would there be, after what a dry run would have done)?
async fn exists(
    store: &dyn ObjectStore,
    key: &str,
    would: &std::collections::HashMap<String, bool>,
) -> Result<bool> {
    match would.get(key) {
        Some(present) => Ok(*present),
        None => Ok(store.head(key).await?.is_some()),
    }
}
