//! A repartition: copies a dataset into a new partition layout, compacted, validated, and only
//! then (when asked) deletes the source. The same steps run from the CLI (every task here) and
//! from the planner function (write and compaction tasks sent to merger functions, one
//! invocation per step); a [`RepartitionRunner`] is the difference.
//!
//! 1. **Estimate** (all a dry run does): every source file's partition-field columns are
//!    decoded and each row routed to its target partition; rows and bytes per target.
//! 2. **Write** ([`Phase::Writing`]): the source files, in groups of about `max_task_bytes`,
//!    are split by write tasks ([`rows::write_group`]) into pieces in staging; each group's
//!    pieces and digest are recorded once. A group is sent again only when it has no record
//!    `resend_after_ms` after it was sent; a finished group is never redone.
//! 3. **Compact** ([`Phase::Written`]): every target partition is compacted by the ordinary
//!    pipeline with its recorded pieces as inputs; the committer deletes each piece once its
//!    rows are published, so the pieces left say which partitions are still to do.
//! 4. **Validate**: the destination is read back and digested (row count and a multiset hash
//!    of each row's partition and values); it must equal the sum of the groups' digests.
//! 5. **Delete the source** (`delete_source`), only the files listed at the start and only if
//!    unchanged since (conditional deletes), after keeping them under `backup` if asked.
//!
//! The record ([`crate::model::repartition`]) is written with conditional puts, so two runs
//! advancing the same repartition at once cannot both record a step: the second stops.

pub mod rows;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::dataset::DatasetConfig;
use crate::model::hot::digest::RowDigest;
use crate::model::manifest::to_json;
use crate::model::object::{join_key, ObjectMeta};
use crate::model::partition::PartitionTemplate;
use crate::model::repartition::{
    group_starts, groups_dir, pieces_dir, record_key, repartition_dir, tasks_dir, GroupWritten,
    Phase, Record, RepartitionWrite,
};
use crate::model::state::PartitionId;
use crate::model::task::{new_nonce, task_id, Task, TaskKind, PARTITION_MANIFEST, TASK_SPEC};
use crate::ports::rows::RowChanges;
use crate::ports::store::{list_all, read_json, DeleteRequest, ObjectStore, PutMode};
use crate::services::backup::{keep_files, Kept};
use crate::support::faults::crash_point;

pub use rows::{source_files, write_group, TargetEstimate};

/// Every repartition recorded in `store` under `staging_prefix`, by destination dataset.
pub async fn recorded(
    store: &dyn ObjectStore,
    staging_prefix: &str,
) -> Result<Vec<(String, Record)>> {
    let mut out = Vec::new();
    let root = crate::model::repartition::repartitions_dir(staging_prefix);
    for dir in list_all(store, &root, Some('/')).await?.common_prefixes {
        if let Some(record) = read_json::<Record>(store, &record_key(&dir)).await? {
            let dataset = dir.trim_start_matches(root.as_str()).trim_end_matches('/');
            out.push((dataset.to_string(), record));
        }
    }
    Ok(out)
}

/// What to repartition, and where.
#[derive(Clone, Debug)]
pub struct RepartitionOptions {
    /// The source's files: every data file under this prefix (`key=value` directory levels
    /// are columns of its rows, as in Hive layouts).
    pub source_prefix: String,
    /// Where the source is, for the record and messages.
    pub source_label: String,
    /// The destination dataset: its prefix, its new template, its file and row group sizes.
    pub target: DatasetConfig,
    /// The destination's staging prefix (the record and the pieces live under it).
    pub staging_prefix: String,
    /// The memory budget of the write tasks.
    pub memory_budget: u64,
    pub dry_run: bool,
    pub delete_source: bool,
    /// A SQL select list applied to every source row before it is routed (`*, price * 100 AS
    /// cents`), planned by `row_changes`.
    pub select: Option<String>,
    pub row_changes: Option<Arc<dyn RowChanges>>,
    /// With `delete_source`: keep the source files under this prefix of the source's store
    /// (with records `compactor restore` reads) before any is deleted.
    pub backup: Option<String>,
    /// A group sent to a worker and still not written after this long is sent again.
    pub resend_after_ms: i64,
}

/// What a repartition found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepartitionReport {
    pub dry_run: bool,
    /// The phase reached (`None`: a dry run).
    pub phase: Option<Phase>,
    pub source_files: usize,
    pub source_bytes: u64,
    pub source_rows: u64,
    pub targets: Vec<TargetEstimate>,
    /// The phase a rerun found in the record (`None`: a fresh start).
    pub resumed_from: Option<Phase>,
    /// Groups of source files (one write task each), and how many are written.
    pub groups: usize,
    pub groups_written: usize,
    /// Write tasks run or sent by this run.
    pub write_tasks: usize,
    pub pieces_written: usize,
    pub compacted_partitions: usize,
    pub target_files: usize,
    pub target_bytes: u64,
    pub source_digest: Option<RowDigest>,
    pub target_digest: Option<RowDigest>,
    pub validated: bool,
    pub source_files_deleted: usize,
    /// Source files left in place: changed since the start, or arrived after it.
    pub source_files_kept: Vec<String>,
    /// What the compaction of the destination could not do.
    pub compaction_problems: Vec<String>,
    /// Work sent to workers and not finished yet: run the repartition again once it is.
    pub waiting: Option<String>,
}

/// What a compaction of the destination did.
#[derive(Clone, Debug, Default)]
pub struct Compacted {
    /// It ran to the end here (`false`: its tasks were sent to workers).
    pub ran_here: bool,
    /// Partitions committed here, or planned and sent.
    pub partitions: usize,
    pub problems: Vec<String>,
}

/// Where a repartition's tasks run.
#[async_trait(?Send)]
pub trait RepartitionRunner: Send + Sync {
    /// Runs the write tasks to the end (`true`), or sends them to workers (`false`).
    async fn write(&self, tasks: Vec<Task>) -> Result<bool>;
    /// Compacts the destination's partitions, each with its `pieces` among its inputs.
    async fn compact(&self, pieces: BTreeMap<String, Vec<ObjectMeta>>) -> Result<Compacted>;
}

/// Advances a repartition from `source` into `target` as far as it can go now: to the end
/// when `runner` runs every task here, else to the next wait for workers. A dry run (which
/// may have no `target` yet) only estimates.
pub async fn repartition(
    source: Arc<dyn ObjectStore>,
    target: Option<Arc<dyn ObjectStore>>,
    options: &RepartitionOptions,
    runner: &dyn RepartitionRunner,
    now_ms: i64,
) -> Result<RepartitionReport> {
    options.target.validate()?;
    let template = options.target.template()?;
    let dir = repartition_dir(&options.staging_prefix, &options.target.name);
    let mut report = RepartitionReport {
        dry_run: options.dry_run,
        ..RepartitionReport::default()
    };
    let listed = source_files(source.as_ref(), &options.source_prefix).await?;
    let fresh = Record {
        source: options.source_label.clone(),
        source_prefix: options.source_prefix.clone(),
        template: template.as_str().to_string(),
        select: options.select.clone(),
        phase: Phase::Writing,
        group_starts: group_starts(&listed, options.target.max_task_bytes.bytes()),
        files: listed.clone(),
        dispatched_at_ms: Vec::new(),
        source_digest: None,
        target_digest: None,
        skipped: Vec::new(),
        delete_source: options.delete_source,
        backup: options.backup.clone(),
    };
    let found = match &target {
        Some(t) => read_record(t.as_ref(), &dir).await?,
        None => None,
    };
    let mut saved = SavedRecord {
        key: record_key(&dir),
        version: None,
    };
    let mut record = match found {
        Some((r, version)) => {
            if !r.same_job(&fresh) {
                return Err(Error::Other(format!(
                    "the destination holds another repartition ({} {} into {}{}); run that one again with the same arguments to finish it, or pick another destination",
                    r.source,
                    r.source_prefix,
                    r.template,
                    r.select.as_ref().map(|s| format!(", select {s:?}")).unwrap_or_default()
                )));
            }
            report.resumed_from = Some(r.phase);
            saved.version = Some(version);
            let mut r = r;
            if !options.dry_run
                && (r.delete_source, &r.backup) != (options.delete_source, &options.backup)
            {
                // The latest run says what happens once validated (a schedule carries it on).
                r.delete_source = options.delete_source;
                r.backup = options.backup.clone();
                if let Some(t) = &target {
                    saved.put(t.as_ref(), &r).await?;
                }
            }
            r
        }
        None => {
            let existing = match &target {
                Some(t) => source_files(t.as_ref(), &options.target.source_dir()).await?,
                None => Vec::new(),
            };
            if let Some(first) = existing.first() {
                return Err(Error::Other(format!(
                    "the destination already holds data under {:?} ({} and {} more); a repartition writes into an empty destination",
                    options.target.source_prefix,
                    first.key,
                    existing.len() - 1
                )));
            }
            fresh
        }
    };
    if record.files.is_empty() {
        return Err(Error::Other(format!(
            "{} holds no data file under {:?}",
            options.source_label, options.source_prefix
        )));
    }
    report.source_files = record.files.len();
    report.source_bytes = record.files.iter().map(|f| f.size).sum();
    report.groups = record.groups();
    report.source_files_kept = listed
        .iter()
        .filter(|f| !record.files.iter().any(|r| r.key == f.key))
        .map(|f| format!("{}: arrived after the repartition started", f.key))
        .collect();
    if options.dry_run || saved.version.is_none() {
        let mut selector =
            rows::Selector::new(options.select.as_deref(), options.row_changes.clone())?;
        let (rows, targets) = rows::estimate(
            &source,
            &record.files,
            &options.source_prefix,
            &mut selector,
            &template,
        )
        .await?;
        report.source_rows = rows;
        report.targets = targets;
    }
    if options.dry_run {
        return Ok(report);
    }
    let target = target.ok_or_else(|| Error::Other("the repartition has no destination".into()))?;
    let store = target.as_ref();
    // An in-process step that leaves its phase unfinished stops the loop instead of repeating.
    let mut ran_here = BTreeSet::new();
    // Every group's record, once all are written (they no longer change): read once a run.
    let mut complete: Option<BTreeMap<usize, GroupWritten>> = None;
    loop {
        report.phase = Some(record.phase);
        match record.phase {
            Phase::Writing => {
                let written = read_groups(store, &dir).await?;
                report.groups_written = written.len();
                let missing: Vec<usize> = (0..record.groups())
                    .filter(|g| !written.contains_key(g))
                    .collect();
                if missing.is_empty() {
                    report.pieces_written = written.values().map(|w| w.pieces.len()).sum();
                    record.source_digest = Some(RowDigest::of(written.values().map(|w| &w.digest)));
                    record.skipped = written.values().flat_map(|w| w.skipped.clone()).collect();
                    record.phase = Phase::Written;
                    saved.put(store, &record).await?;
                    crash_point("after-repartition-write");
                    complete = Some(written);
                    continue;
                }
                if !ran_here.insert(Phase::Writing) {
                    return Err(Error::Other(format!(
                        "{} group(s) of source files were run but not recorded (first: group {})",
                        missing.len(),
                        missing[0]
                    )));
                }
                record.dispatched_at_ms.resize(record.groups(), 0);
                let due: Vec<usize> = missing
                    .iter()
                    .copied()
                    .filter(|&g| {
                        let at = record.dispatched_at_ms[g];
                        at == 0 || now_ms - at >= options.resend_after_ms
                    })
                    .collect();
                if due.is_empty() {
                    report.waiting = Some(format!(
                        "{} write task(s) of {} are still running; run the repartition again once they are done",
                        missing.len(),
                        record.groups()
                    ));
                    return Ok(finish(report, &record));
                }
                let mut tasks = Vec::with_capacity(due.len());
                for &g in &due {
                    let task = write_task(&record, g, options, &dir, now_ms);
                    store
                        .put(
                            &task.staging_key(TASK_SPEC),
                            to_json(&task),
                            PutMode::Overwrite,
                        )
                        .await?;
                    tasks.push(task);
                    record.dispatched_at_ms[g] = now_ms;
                }
                report.write_tasks += tasks.len();
                // The record (the groups, and when each was sent) is written before any task
                // runs: a group's record always refers to the files this record lists.
                saved.put(store, &record).await?;
                let done_here = match runner.write(tasks).await {
                    Ok(done) => done,
                    Err(e) => {
                        for &g in &due {
                            record.dispatched_at_ms[g] = 0;
                        }
                        if let Err(again) = saved.put(store, &record).await {
                            tracing::warn!(error = %again, "could not record that the write tasks were not all sent; they are sent again after resend_after_ms");
                        }
                        return Err(e);
                    }
                };
                if !done_here {
                    report.waiting = Some(format!(
                        "{} write task(s) sent ({} of {} groups written); run the repartition again once they are done",
                        due.len(),
                        written.len(),
                        record.groups()
                    ));
                    return Ok(finish(report, &record));
                }
            }
            Phase::Written => {
                let written = match complete.take() {
                    Some(groups) => groups,
                    None => read_groups(store, &dir).await?,
                };
                report.groups_written = written.len();
                let remaining = remaining_pieces(store, &dir, &written).await?;
                if remaining.is_empty() {
                    let (digest, files, bytes) =
                        rows::target_digest(&target, &options.target).await?;
                    report.target_files = files;
                    report.target_bytes = bytes;
                    record.target_digest = Some(digest);
                    if record.source_digest != record.target_digest {
                        saved.put(store, &record).await?;
                        return Err(Error::Other(format!(
                            "validation failed: the source holds {} but the destination {}; the source was left as it is",
                            record.source_digest.map(|d| d.to_string()).unwrap_or_default(),
                            digest
                        )));
                    }
                    record.phase = Phase::Validated;
                    saved.put(store, &record).await?;
                    continue;
                }
                if !ran_here.insert(Phase::Written) {
                    report.waiting = Some(format!(
                        "{} partition(s) still hold pieces to compact (first: {}); run the repartition again",
                        remaining.len(),
                        remaining.keys().next().map_or("", |k| k.as_str())
                    ));
                    return Ok(finish(report, &record));
                }
                let partitions = remaining.len();
                complete = Some(written);
                let compacted = runner.compact(remaining).await?;
                report.compacted_partitions += compacted.partitions;
                report.compaction_problems.extend(compacted.problems);
                if !compacted.ran_here {
                    report.waiting = Some(format!(
                        "compaction sent for {} of {partitions} partition(s); run the repartition again once it is committed",
                        compacted.partitions
                    ));
                    return Ok(finish(report, &record));
                }
            }
            Phase::Validated => {
                if options.delete_source {
                    // The files copied: those the write tasks did not skip.
                    let copied: Vec<ObjectMeta> = record
                        .files
                        .iter()
                        .filter(|f| !record.skipped.iter().any(|s| s.key == f.key))
                        .cloned()
                        .collect();
                    if let Some(prefix) = &options.backup {
                        keep_sources(source.as_ref(), prefix, &copied, options, &template).await?;
                    }
                    let kept = delete_sources(source.as_ref(), &copied, &mut report).await?;
                    report.source_files_kept.extend(kept);
                    record.phase = Phase::SourceDeleted;
                    saved.put(store, &record).await?;
                }
                // Validated: the groups, their pieces left (unrecorded attempts) and the task
                // specs are done with; the record stays.
                for done in [pieces_dir(&dir), groups_dir(&dir), tasks_dir(&dir)] {
                    remove_all(store, &done).await?;
                }
                report.phase = Some(record.phase);
                return Ok(finish(report, &record));
            }
            Phase::SourceDeleted => return Ok(finish(report, &record)),
        }
    }
}

/// The report with what the record knows.
fn finish(mut report: RepartitionReport, record: &Record) -> RepartitionReport {
    report.source_digest = record.source_digest;
    report.target_digest = record.target_digest;
    if let Some(d) = record.source_digest {
        report.source_rows = d.rows;
    }
    report.validated = matches!(record.phase, Phase::Validated | Phase::SourceDeleted);
    report.source_files_kept.extend(
        record
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.key, s.reason)),
    );
    report
}

/// The write task of group `g`: staged in the repartition's own directory, outside every
/// dataset's staging, so no recovery of a dataset takes it for one of its tasks.
fn write_task(
    record: &Record,
    g: usize,
    options: &RepartitionOptions,
    dir: &str,
    now_ms: i64,
) -> Task {
    let (first_file, files) = record.group(g);
    Task {
        task_id: task_id(0, g),
        partition: PartitionId::new(&options.target.name, format!("{g:06}")),
        generation: 0,
        dataset: options.target.clone(),
        staging_prefix: tasks_dir(dir),
        memory_budget: options.memory_budget,
        inputs: files.to_vec(),
        created_at_ms: now_ms,
        kind: TaskKind::RepartitionWrite(Box::new(RepartitionWrite {
            dir: dir.to_string(),
            group: g,
            first_file,
            source_prefix: record.source_prefix.clone(),
            select: record.select.clone(),
        })),
        nonce: new_nonce(),
        lease_owner: String::new(),
    }
}

/// The record's key and the version last read or written.
struct SavedRecord {
    key: String,
    version: Option<String>,
}

impl SavedRecord {
    /// Writes `record` only over the version this run knows (or only if none exists yet).
    async fn put(&mut self, store: &dyn ObjectStore, record: &Record) -> Result<()> {
        let mode = match &self.version {
            Some(v) => PutMode::IfMatch(v.clone()),
            None => PutMode::IfAbsent,
        };
        match store.put(&self.key, to_json(record), mode).await {
            Ok(meta) => {
                self.version = Some(meta.version);
                Ok(())
            }
            Err(e) if e.is_precondition_failed() => Err(Error::Other(format!(
                "another run changed the repartition's record {} meanwhile; run again to continue from what it recorded",
                self.key
            ))),
            Err(e) => Err(e),
        }
    }
}

async fn read_record(store: &dyn ObjectStore, dir: &str) -> Result<Option<(Record, String)>> {
    let key = record_key(dir);
    match store.get(&key).await {
        Ok((data, meta)) => Ok(Some((
            crate::model::manifest::from_json(&key, &data)?,
            meta.version,
        ))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The groups written so far, by group.
async fn read_groups(store: &dyn ObjectStore, dir: &str) -> Result<BTreeMap<usize, GroupWritten>> {
    let mut out = BTreeMap::new();
    for object in list_all(store, &groups_dir(dir), None).await?.objects {
        if let Some(g) = read_json::<GroupWritten>(store, &object.key).await? {
            out.insert(g.group, g);
        }
    }
    Ok(out)
}

/// The recorded pieces still in staging (not yet compacted), by target partition.
async fn remaining_pieces(
    store: &dyn ObjectStore,
    dir: &str,
    written: &BTreeMap<usize, GroupWritten>,
) -> Result<BTreeMap<String, Vec<ObjectMeta>>> {
    let live: BTreeSet<(String, String)> = list_all(store, &pieces_dir(dir), None)
        .await?
        .objects
        .into_iter()
        .map(|o| (o.key, o.version))
        .collect();
    let mut out: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    for piece in written.values().flat_map(|g| &g.pieces) {
        let o = &piece.object;
        if live.contains(&(o.key.clone(), o.version.clone())) {
            out.entry(piece.partition.clone())
                .or_default()
                .push(o.clone());
        }
    }
    Ok(out)
}

/// Deletes every object under `prefix` (what is left of the pieces: unrecorded attempts).
async fn remove_all(store: &dyn ObjectStore, prefix: &str) -> Result<()> {
    let left: Vec<DeleteRequest> = list_all(store, prefix, None)
        .await?
        .objects
        .into_iter()
        .map(|o| DeleteRequest {
            key: o.key,
            version: None,
        })
        .collect();
    if !left.is_empty() {
        store.delete_many(&left).await?;
    }
    Ok(())
}

/// Deletes the source files, each only in the version the repartition read; returns those
/// left in place, with why.
async fn delete_sources(
    store: &dyn ObjectStore,
    files: &[ObjectMeta],
    report: &mut RepartitionReport,
) -> Result<Vec<String>> {
    let mut kept = Vec::new();
    for file in files {
        crash_point("before-source-delete");
        let failed = store
            .delete_many(&[DeleteRequest {
                key: file.key.clone(),
                version: Some(file.version.clone()),
            }])
            .await?;
        match failed.first() {
            None => report.source_files_deleted += 1,
            Some(f) => kept.push(format!("{}: not deleted ({})", f.key, f.reason)),
        }
    }
    Ok(kept)
}

/// Keeps the source files under `prefix` before they are deleted: one backup record per
/// source directory, which `compactor restore` reads to put them back.
async fn keep_sources(
    store: &dyn ObjectStore,
    prefix: &str,
    files: &[ObjectMeta],
    options: &RepartitionOptions,
    template: &PartitionTemplate,
) -> Result<()> {
    let mut by_dir: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    for file in files {
        let rel = file
            .key
            .strip_prefix(&options.source_prefix)
            .unwrap_or(&file.key);
        let dir = rel.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        by_dir.entry(dir).or_default().push(file.clone());
    }
    for (dir, files) in by_dir {
        let kept = Kept {
            dataset: &options.target.name,
            partition: &dir,
            id: "repartition",
            what: format!("repartition into the layout {}", template.as_str()),
            set: Vec::new(),
            manifest_key: join_key(&[&options.source_prefix, &dir, PARTITION_MANIFEST]),
            outputs: Vec::new(),
        };
        keep_files(store, prefix, &files, kept).await?;
    }
    Ok(())
}
