//! The planner service: finds cold partitions with a delimiter walk, decides what to compact
//! (see [`crate::model::plan`]), takes the partition lease and dispatches merge tasks. Before planning
//! it recovers interrupted work left in staging: finished merges are committed, decided commits
//! rolled forward, merges of a dead run re-dispatched, stale ones abandoned ([`recovery`]). Hot
//! datasets are planned range by range ([`hot`]).

mod hot;
mod recovery;
pub mod rewrite;
pub mod upsert;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::format::io::{layout_of, read_footer};
use crate::model::dataset::{DatasetConfig, Mode};
use crate::model::estimate::{estimate_task, TaskEstimate, Throughput};
use crate::model::manifest::{to_json, PartitionManifest};
use crate::model::object::{dir_prefix, file_name, ObjectMeta};
use crate::model::partition::{
    coldness, quiet_coldness, range_coldness, ColdRule, Coldness, PartitionTemplate,
    PartitionValues,
};
use crate::model::plan::{
    decide, is_data_file, verdict, FileLayout, FileVerdict, PartitionDecision, SkipReason,
};
use crate::model::state::{PartitionId, PartitionStatus};
use crate::model::task::{
    partition_output_dir, partition_source_dir, task_id, Task, TaskKind, PARTITION_MANIFEST,
    TASK_SPEC,
};
use crate::ports::dispatch::Dispatcher;
use crate::ports::hot::HotSource;
use crate::ports::state::StateStore;
use crate::ports::store::read_json;
use crate::ports::store::{list_all, ObjectStore, PutMode};
use crate::services::committer::{CommitOutcome, Committer};
use crate::support::process::is_dead_local_owner;

#[derive(Clone, Debug)]
pub struct PlannerSettings {
    /// Identifies this planner in leases (e.g. `local:host:pid` or a Lambda request id).
    pub owner: String,
    pub lease_ttl_ms: i64,
    pub staging_prefix: String,
    pub memory_budget: u64,
    /// Input bytes a second a merger encodes, for estimates of partitions not measured yet.
    pub merge_throughput: u64,
}

#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Decide and report, change nothing.
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    /// Only these partitions (paths relative to the dataset prefix); all when `None`.
    pub only: Option<Vec<String>>,
    /// Ignore coldness and the file thresholds, and rewrite every data file of the partition
    /// (earlier outputs included).
    pub force: bool,
    /// Only partitions whose time span overlaps `[start, end)` (backfills).
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Resume a sweep: only partitions sorting after this one.
    pub after: Option<String>,
    /// Stop before starting another partition once this instant has passed; the plan then
    /// says where to resume.
    pub deadline: Option<std::time::Instant>,
    /// Recover interrupted work in staging first (sweeps do; single-partition plans need not).
    pub recover: bool,
    /// Files to merge into a partition besides its own, by partition (a repartition's pieces,
    /// which live in staging).
    pub extra_inputs: Option<Arc<BTreeMap<String, Vec<ObjectMeta>>>>,
}

impl PlanOptions {
    /// Plan every partition at `now`, recovering first: what the CLI and the schedule do.
    pub fn sweep(now: DateTime<Utc>, dry_run: bool) -> Self {
        Self {
            dry_run,
            now,
            only: None,
            force: false,
            window: None,
            after: None,
            deadline: None,
            recover: true,
            extra_inputs: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskSummary {
    pub task_id: String,
    pub inputs: usize,
    pub input_bytes: u64,
    /// What the task will cost: bytes read, copied and encoded, memory, time, GB-seconds.
    pub estimate: TaskEstimate,
}

/// Footers read at once when the planner looks for fragmented files.
const FOOTER_READS: usize = 16;

#[derive(Clone, Debug, PartialEq)]
pub enum PartitionOutcome {
    Hot {
        until: DateTime<Utc>,
    },
    Skipped(SkipReason),
    LeaseHeld {
        owner: String,
        expires_at_ms: i64,
    },
    /// Tasks dispatched (or, in a dry run, that would be).
    Planned {
        tasks: Vec<TaskSummary>,
    },
    /// The partition failed the same way in earlier runs and is left alone until `until_ms`
    /// (named partitions and `force` try it anyway).
    BackingOff {
        failures: u32,
        until_ms: i64,
        error: String,
    },
    /// Planning this partition failed; the others were planned.
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct PartitionReport {
    pub partition: String,
    pub data_files: usize,
    pub data_bytes: u64,
    pub outcome: PartitionOutcome,
    /// Something found that should not happen, and what is done about it (e.g. rows that
    /// reached a hot range after it was moved).
    pub anomaly: Option<String>,
    /// A rewrite: what the scan for matching rows found.
    pub rewrite: Option<crate::model::rewrite::RewriteScan>,
    /// Each data file and why it is, or is not, compacted (file datasets that were planned).
    pub files: Vec<FileNote>,
}

/// One data file of a planned partition and the planner's verdict on it.
#[derive(Clone, Debug)]
pub struct FileNote {
    pub key: String,
    pub size: u64,
    pub verdict: FileVerdict,
}

#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// What happened to each interrupted task directory.
    pub actions: Vec<(String, String)>,
    pub committed: Vec<CommitOutcome>,
    /// Task directories whose commit could not be finished (tried again next time; their
    /// partitions are not planned anew meanwhile).
    pub failed: Vec<RecoveryFailure>,
    /// Task directories whose interrupted merge was dispatched again (their partitions are
    /// not planned anew in the same sweep).
    pub redispatched: Vec<String>,
}

/// An interrupted commit that recovery could not finish.
#[derive(Clone, Debug)]
pub struct RecoveryFailure {
    pub task_dir: String,
    pub error: String,
    /// Rows it deleted from Postgres before it stopped (again).
    pub postgres_rows_deleted: u64,
}

impl RecoveryReport {
    /// True when the partition has a task whose commit could not be finished, or whose merge
    /// was dispatched again: planning it now would only start a second, stale round.
    pub fn blocks(&self, staging_dir_of_partition: &str) -> bool {
        self.failed
            .iter()
            .map(|f| &f.task_dir)
            .chain(&self.redispatched)
            .any(|dir| dir.starts_with(staging_dir_of_partition))
    }
}

#[derive(Clone, Debug)]
pub struct DatasetPlan {
    pub dataset: String,
    pub dry_run: bool,
    pub recovery: RecoveryReport,
    pub partitions: Vec<PartitionReport>,
    /// Set when the deadline stopped the plan early: the last partition planned, from which
    /// the next sweep resumes.
    pub resume_after: Option<String>,
}

pub struct Planner {
    store: Arc<dyn ObjectStore>,
    state: Arc<dyn StateStore>,
    committer: Committer,
    dispatcher: Arc<dyn Dispatcher>,
    settings: PlannerSettings,
    /// The Postgres of the hot datasets (their tips, and the deletes of recovered commits).
    hot: Option<Arc<dyn HotSource>>,
    /// Plans the expressions of rewrites (delete, update).
    row_changes: Option<Arc<dyn crate::ports::rows::RowChanges>>,
    /// The rows of an upsert's source, as read.
    upsert_rows: Option<Arc<Vec<arrow::array::RecordBatch>>>,
}

impl Planner {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        state: Arc<dyn StateStore>,
        dispatcher: Arc<dyn Dispatcher>,
        settings: PlannerSettings,
    ) -> Self {
        let committer = Committer::new(
            Arc::clone(&store),
            Arc::clone(&state),
            &settings.staging_prefix,
        );
        Self {
            store,
            state,
            committer,
            dispatcher,
            settings,
            hot: None,
            row_changes: None,
            upsert_rows: None,
        }
    }

    /// Lets the planner plan rewrites (delete, update) with these expressions.
    /// Sends tasks planned through a collecting dispatcher (a rewrite's, held until every
    /// partition was planned) on to `dispatcher`; a task that cannot be sent fails its round
    /// (as in [`Planner::start_round`]) and the error is returned after the others were sent.
    pub async fn dispatch_held(&self, tasks: Vec<Task>, dispatcher: &dyn Dispatcher) -> Result<()> {
        let mut first_error = None;
        for task in tasks {
            let (id, generation) = (task.partition.clone(), task.generation);
            if let Err(e) = dispatcher.dispatch(task).await {
                self.state
                    .finish_round(
                        &id,
                        generation,
                        PartitionStatus::Failed,
                        Some(e.to_string()),
                        crate::support::clock::now_ms(),
                    )
                    .await?;
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Abandons tasks planned but never sent (a rewrite whose planning failed): their staging
    /// is abandoned and their rounds closed, so nothing of them runs. A task that cannot be
    /// abandoned now is left to the next run's recovery.
    pub async fn abandon_held(&self, tasks: Vec<Task>, reason: &str) {
        for task in tasks {
            let abandoned = match self.committer.abandon(&task.task_dir(), reason).await {
                Ok(_) => {
                    self.state
                        .finish_round(
                            &task.partition,
                            task.generation,
                            PartitionStatus::Active,
                            Some(reason.into()),
                            crate::support::clock::now_ms(),
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = abandoned {
                tracing::error!(task = %task.task_id, error = %e, "could not abandon a planned task; the next run abandons it");
            }
        }
    }

    /// The rows of an upsert's source (what a rewrite with an upsert spec upserts).
    pub fn with_upsert_rows(mut self, rows: Option<Arc<Vec<arrow::array::RecordBatch>>>) -> Self {
        self.upsert_rows = rows;
        self
    }

    pub fn with_row_changes(
        mut self,
        changes: Option<Arc<dyn crate::ports::rows::RowChanges>>,
    ) -> Self {
        self.row_changes = changes;
        self
    }

    /// Lets the planner plan hot datasets (and commit their recovered exports).
    pub fn with_hot_source(mut self, hot: Option<Arc<dyn HotSource>>) -> Self {
        self.committer = self.committer.with_hot_source(hot.clone());
        self.hot = hot;
        self
    }

    /// Partition paths of `dataset` (see [`discover`]).
    pub async fn discover(&self, dataset: &DatasetConfig) -> Result<Vec<String>> {
        discover(self.store.as_ref(), dataset, &self.settings.staging_prefix).await
    }

    pub async fn plan_dataset(
        &self,
        dataset: &DatasetConfig,
        options: &PlanOptions,
    ) -> Result<DatasetPlan> {
        dataset.validate()?;
        let recovery = if options.recover {
            self.recover(&dataset.name, options).await?
        } else {
            RecoveryReport::default()
        };
        let template = dataset.template()?;
        let range_rule = dataset.cold_rule()? == ColdRule::Range;
        // One delimiter walk: the partitions to plan and, for the range rule, their siblings.
        let discovered = if options.only.is_none() || range_rule {
            self.discover(dataset).await?
        } else {
            Vec::new()
        };
        let later_starts = if range_rule {
            later_range_starts(&template, &discovered)
        } else {
            HashMap::new()
        };
        let mut partitions = options.only.clone().unwrap_or(discovered);
        partitions.sort();
        if let Some(after) = &options.after {
            partitions.retain(|p| p > after);
        }
        if let Some((start, end)) = options.window {
            partitions.retain(|p| {
                template
                    .parse_partition(p)
                    .is_ok_and(|v| v.span.is_some_and(|(s, e)| s < end && e > start))
            });
        }
        let mut reports = Vec::with_capacity(partitions.len());
        let mut resume_after = None;
        for partition in partitions {
            if options
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
            {
                resume_after = reports
                    .last()
                    .map(|r: &PartitionReport| r.partition.clone())
                    .or_else(|| options.after.clone());
                break;
            }
            // A partition whose interrupted commit could not be finished waits for it.
            if recovery.blocks(&crate::model::task::partition_staging_dir(
                &self.settings.staging_prefix,
                &PartitionId::new(&dataset.name, &partition),
            )) {
                continue;
            }
            match self
                .plan_partition(dataset, &template, &partition, &later_starts, options)
                .await
            {
                Ok(report) => reports.push(report),
                // One partition's failure is reported and the others go on.
                Err(e) => {
                    tracing::error!(dataset = dataset.name, partition, error = %e, "planning the partition failed");
                    reports.push(PartitionReport {
                        partition: partition.clone(),
                        data_files: 0,
                        data_bytes: 0,
                        outcome: PartitionOutcome::Failed(e.to_string()),
                        anomaly: None,
                        files: Vec::new(),
                        rewrite: None,
                    });
                }
            }
        }
        Ok(DatasetPlan {
            dataset: dataset.name.clone(),
            dry_run: options.dry_run,
            recovery,
            partitions: reports,
            resume_after,
        })
    }

    /// Whether the partition is cold, by the dataset's rule.
    fn coldness_of(
        &self,
        dataset: &DatasetConfig,
        values: &PartitionValues,
        files: &[ObjectMeta],
        later_starts: &HashMap<String, i64>,
        now: DateTime<Utc>,
    ) -> Result<Coldness> {
        Ok(match dataset.cold_rule()? {
            ColdRule::Time => coldness(
                values,
                dataset.effective_granularity()?,
                dataset.grace.0,
                now,
            ),
            ColdRule::Quiet => match files.iter().map(|f| f.last_modified_ms).max() {
                Some(newest) => quiet_coldness(
                    DateTime::from_timestamp_millis(newest).unwrap_or(now),
                    dataset.grace.0,
                    now,
                ),
                None => Coldness::Cold,
            },
            ColdRule::Range => match values.integer_range() {
                Some(range) => range_coldness(
                    range,
                    later_starts.get(&family_key(values)).copied(),
                    dataset.range_finality,
                    dataset.range_tip,
                ),
                None => {
                    return Err(Error::Partition {
                        key: values
                            .fields
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        template: dataset.partition_template.clone(),
                        reason: "{start} and {end} are not integers".into(),
                    })
                }
            },
        })
    }

    async fn plan_partition(
        &self,
        dataset: &DatasetConfig,
        template: &PartitionTemplate,
        partition: &str,
        later_starts: &HashMap<String, i64>,
        options: &PlanOptions,
    ) -> Result<PartitionReport> {
        let values = template.parse_partition(partition)?;
        let mut files = self.partition_files(dataset, partition).await?;
        if let Some(extra) = options.extra_inputs.as_ref().and_then(|e| e.get(partition)) {
            files.extend(extra.iter().cloned());
        }
        let (files_count, data_bytes) = (files.len(), files.iter().map(|f| f.size).sum());
        let mut notes = Vec::new();
        let report = |outcome, files: &mut Vec<FileNote>| PartitionReport {
            partition: partition.to_string(),
            data_files: files_count,
            data_bytes,
            outcome,
            anomaly: None,
            files: std::mem::take(files),
            rewrite: None,
        };
        if let Coldness::Hot { until } =
            self.coldness_of(dataset, &values, &files, later_starts, options.now)?
        {
            if !options.force {
                return Ok(report(PartitionOutcome::Hot { until }, &mut notes));
            }
        }
        let manifest = self.partition_manifest(dataset, partition).await?;
        let forced;
        let (own, dataset) = if options.force {
            forced = DatasetConfig {
                min_file_count: 1,
                small_file_threshold: crate::support::units::ByteSize(u64::MAX),
                ..dataset.clone()
            };
            (HashSet::new(), &forced)
        } else {
            (manifest.compacted_keys(), dataset)
        };
        let candidates: Vec<ObjectMeta> = files
            .iter()
            .filter(|f| {
                !manifest
                    .quarantined
                    .iter()
                    .any(|q| q.key == f.key && q.version == f.version)
            })
            .cloned()
            .collect();
        let layouts = self.large_file_layouts(&candidates, &own, dataset).await;
        notes = candidates
            .iter()
            .map(|f| FileNote {
                key: f.key.clone(),
                size: f.size,
                verdict: verdict(f, &layouts, dataset),
            })
            .collect();
        let groups = match decide(&candidates, &own, &layouts, dataset) {
            PartitionDecision::Skip(reason) => {
                return Ok(report(PartitionOutcome::Skipped(reason), &mut notes))
            }
            PartitionDecision::Compact(groups) => groups,
        };
        let id = PartitionId::new(&dataset.name, partition);
        let memory_budget = self.settings.memory_budget;
        let estimate = |task: &Task, throughput| {
            estimate_task(&task.inputs, &layouts, dataset, memory_budget, throughput)
        };
        let outcome = self
            .start_round(&id, options, estimate, |generation| {
                groups
                    .iter()
                    .enumerate()
                    .map(|(i, inputs)| Task {
                        task_id: task_id(generation, i),
                        partition: id.clone(),
                        generation,
                        dataset: dataset.clone(),
                        staging_prefix: self.settings.staging_prefix.clone(),
                        memory_budget: self.settings.memory_budget,
                        inputs: inputs.clone(),
                        created_at_ms: options.now.timestamp_millis(),
                        kind: TaskKind::MergeFiles,
                        nonce: crate::model::task::new_nonce(),
                        lease_owner: self.settings.owner.clone(),
                    })
                    .collect()
            })
            .await?;
        Ok(report(outcome, &mut notes))
    }

    /// Takes the partition's lease and dispatches the tasks `make_tasks` builds for its
    /// generation (in a dry run: reports them for the next generation, changing nothing).
    async fn start_round(
        &self,
        id: &PartitionId,
        options: &PlanOptions,
        estimate: impl Fn(&Task, Throughput) -> TaskEstimate,
        make_tasks: impl Fn(u64) -> Vec<Task>,
    ) -> Result<PartitionOutcome> {
        self.start_round_with(id, options, estimate, make_tasks, &[])
            .await
    }

    /// [`Planner::start_round`], with `staged` files (name, content) put in each task's
    /// directory before its spec: what the merger reads besides the inputs.
    async fn start_round_with(
        &self,
        id: &PartitionId,
        options: &PlanOptions,
        estimate: impl Fn(&Task, Throughput) -> TaskEstimate,
        make_tasks: impl Fn(u64) -> Vec<Task>,
        staged: &[(&str, bytes::Bytes)],
    ) -> Result<PartitionOutcome> {
        let record = self.state.get(id).await?;
        let throughput = Throughput::of(
            record.as_ref().map(|r| &r.counters),
            self.settings.merge_throughput,
        );
        let summaries = |tasks: &[Task]| -> Vec<TaskSummary> {
            tasks
                .iter()
                .map(|t| TaskSummary {
                    task_id: t.task_id.clone(),
                    inputs: t.inputs.len(),
                    input_bytes: t.input_bytes(),
                    estimate: estimate(t, throughput),
                })
                .collect()
        };
        if let Some(r) = record
            .as_ref()
            .filter(|_| options.only.is_none() && !options.force)
        {
            if let Some(until_ms) = r.backoff_until_ms() {
                if options.now.timestamp_millis() < until_ms {
                    return Ok(PartitionOutcome::BackingOff {
                        failures: r.failures,
                        until_ms,
                        error: r.last_error.clone().unwrap_or_default(),
                    });
                }
            }
        }
        if options.dry_run {
            let next_generation = record.map_or(0, |r| r.generation) + 1;
            return Ok(PartitionOutcome::Planned {
                tasks: summaries(&make_tasks(next_generation)),
            });
        }
        let now_ms = options.now.timestamp_millis();
        let mut lease = self
            .state
            .acquire_lease(id, &self.settings.owner, now_ms, self.settings.lease_ttl_ms)
            .await?;
        if lease.is_none() {
            // A lease held by a local process that is gone cannot be renewed by anyone: take
            // it over now instead of waiting for it to expire.
            let holder = self.state.get(id).await?.and_then(|r| r.lease);
            if let Some(dead) = holder.filter(|l| is_dead_local_owner(&l.owner)) {
                tracing::info!(%id, owner = dead.owner, generation = dead.generation, "taking over the lease of a process that is gone");
                lease = self
                    .state
                    .take_over_lease(
                        id,
                        dead.generation,
                        &self.settings.owner,
                        now_ms,
                        self.settings.lease_ttl_ms,
                    )
                    .await?;
            }
        }
        let Some(lease) = lease else {
            let holder = self.state.get(id).await?.and_then(|r| r.lease);
            return Ok(PartitionOutcome::LeaseHeld {
                owner: holder
                    .as_ref()
                    .map_or_else(String::new, |l| l.owner.clone()),
                expires_at_ms: holder.map_or(0, |l| l.expires_at_ms),
            });
        };
        let tasks = make_tasks(lease.generation);
        let planned = summaries(&tasks);
        let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
        self.state.set_round(id, &lease, &ids).await?;
        for task in tasks {
            for (name, content) in staged {
                self.store
                    .put(&task.staging_key(name), content.clone(), PutMode::Overwrite)
                    .await?;
            }
            // The spec in staging lets a recovery re-run the task, and is what an S3-passed
            // reference points at.
            self.store
                .put(
                    &task.staging_key(TASK_SPEC),
                    to_json(&task),
                    PutMode::Overwrite,
                )
                .await?;
            if let Err(e) = self.dispatcher.dispatch(task).await {
                self.state
                    .finish_round(
                        id,
                        lease.generation,
                        PartitionStatus::Failed,
                        Some(e.to_string()),
                        now_ms,
                    )
                    .await?;
                return Err(e);
            }
        }
        Ok(PartitionOutcome::Planned { tasks: planned })
    }

    /// The layouts of the large files that may be fragmented (concat mode; not this product's
    /// outputs), from their footers, read concurrently. A file whose footer cannot be read is
    /// left out, so it is left alone (a merge never deletes what it cannot read).
    async fn large_file_layouts(
        &self,
        files: &[ObjectMeta],
        own: &HashSet<String>,
        dataset: &DatasetConfig,
    ) -> HashMap<String, FileLayout> {
        if dataset.mode == Mode::Sort {
            return HashMap::new();
        }
        let threshold = dataset.small_file_threshold.bytes();
        let store = self.store.as_ref();
        futures::stream::iter(
            files
                .iter()
                .filter(|f| f.size >= threshold && !own.contains(&f.key)),
        )
        .map(|f| async move {
            match read_footer(store, &f.key).await {
                Ok(footer) => Some((f.key.clone(), layout_of(&footer))),
                Err(e) => {
                    tracing::warn!(key = f.key, error = %e, "footer unreadable; the file is left alone");
                    None
                }
            }
        })
        .buffer_unordered(FOOTER_READS)
        .filter_map(std::future::ready)
        .collect()
        .await
    }

    /// Data files of a partition: those in the source directory, plus in sort mode the earlier
    /// outputs when they live under another prefix (a global sort must see every row).
    async fn partition_files(
        &self,
        dataset: &DatasetConfig,
        partition: &str,
    ) -> Result<Vec<ObjectMeta>> {
        let source = partition_source_dir(dataset, partition);
        let mut files: Vec<ObjectMeta> = list_all(self.store.as_ref(), &source, Some('/'))
            .await?
            .objects
            .into_iter()
            .filter(|o| is_data_file(&o.key, &dataset.file_suffix))
            .filter(|o| match crate::model::object::validate_key(&o.key) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(key = %o.key.escape_debug(), error = %e, "skipping a file whose name the store cannot address; it is left alone");
                    false
                }
            })
            .collect();
        let output = partition_output_dir(dataset, partition);
        if output != source && dataset.mode == Mode::Sort {
            let own = self
                .partition_manifest(dataset, partition)
                .await?
                .compacted_keys();
            files.extend(
                list_all(self.store.as_ref(), &output, Some('/'))
                    .await?
                    .objects
                    .into_iter()
                    .filter(|o| own.contains(&o.key)),
            );
        }
        Ok(files)
    }

    async fn partition_manifest(
        &self,
        dataset: &DatasetConfig,
        partition: &str,
    ) -> Result<PartitionManifest> {
        let key = format!(
            "{}{PARTITION_MANIFEST}",
            partition_output_dir(dataset, partition)
        );
        Ok(read_json::<PartitionManifest>(self.store.as_ref(), &key)
            .await?
            .unwrap_or_default())
    }
}

/// The family of a range partition (every field but `{start}` and `{end}`), as a map key.
fn family_key(values: &PartitionValues) -> String {
    values
        .family()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// The largest range start of each family (range layouts) among `partitions`.
fn later_range_starts(template: &PartitionTemplate, partitions: &[String]) -> HashMap<String, i64> {
    let mut starts = HashMap::new();
    for partition in partitions {
        let Ok(values) = template.parse_partition(partition) else {
            continue;
        };
        if let Some((start, _)) = values.integer_range() {
            let newest = starts.entry(family_key(&values)).or_insert(start);
            *newest = (*newest).max(start);
        }
    }
    starts
}

/// Partition paths (relative to the source prefix) found by walking one directory level per
/// template segment; names that do not match the template, hidden and `_` names are skipped.
pub async fn discover(
    store: &dyn ObjectStore,
    dataset: &DatasetConfig,
    staging_prefix: &str,
) -> Result<Vec<String>> {
    let template = dataset.template()?;
    let root = dataset.source_dir();
    let staging = dir_prefix(staging_prefix);
    let mut frontier = vec![String::new()];
    for level in 0..template.depth() {
        let mut next = Vec::new();
        for relative in frontier {
            let listing = list_all(store, &format!("{root}{relative}"), Some('/')).await?;
            for prefix in listing.common_prefixes {
                if !staging.is_empty() && prefix.starts_with(&staging) {
                    continue;
                }
                let name = file_name(&prefix);
                if name.starts_with('_') || name.starts_with('.') {
                    continue;
                }
                if let Err(e) = crate::model::object::validate_key(&prefix) {
                    tracing::warn!(dataset = dataset.name, key = %prefix.escape_debug(), error = %e, "skipping a directory whose name the store cannot address; it is left alone");
                    continue;
                }
                if template.match_segment(level, name).is_some() {
                    next.push(format!("{relative}{name}/"));
                } else {
                    tracing::warn!(dataset = dataset.name, key = %prefix, template = dataset.partition_template, "skipping a directory that does not match the partition template");
                }
            }
        }
        frontier = next;
    }
    Ok(frontier
        .into_iter()
        .map(|p| p.trim_end_matches('/').to_string())
        .collect())
}
