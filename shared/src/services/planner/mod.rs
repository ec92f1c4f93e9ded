//! The planner service: finds cold partitions with a delimiter walk, decides what to compact
//! (see [`crate::plan`]), takes the partition lease and dispatches merge tasks. Before planning
//! it recovers interrupted work left in staging: finished merges are committed, decided commits
//! rolled forward, merges of a dead run re-dispatched, stale ones abandoned.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::model::dataset::{DatasetConfig, Mode};
use crate::model::hot::cold::DeleteState;
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::export::ExportSpec;
use crate::model::hot::range::KeyRange;
use crate::model::manifest::{to_json, PartitionManifest};
use crate::model::object::{dir_prefix, file_name, ObjectMeta};
use crate::model::partition::{coldness, Coldness, PartitionTemplate};
use crate::model::plan::{decide, is_data_file, PartitionDecision, SkipReason};
use crate::model::state::{PartitionId, PartitionStatus};
use crate::model::task::{
    dataset_staging_dir, generation_of, partition_output_dir, partition_source_dir, task_id, Task,
    TaskKind, DECISION, PARTITION_MANIFEST, SUCCESS, TASK_SPEC,
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
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSummary {
    pub task_id: String,
    pub inputs: usize,
    pub input_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
    }

    /// Lets the planner plan hot datasets (and commit their recovered exports).
    pub fn with_hot_source(mut self, hot: Option<Arc<dyn HotSource>>) -> Self {
        self.committer = self.committer.with_hot_source(hot.clone());
        self.hot = hot;
        self
    }

    /// Partition paths (relative to the source prefix) found by walking one directory level per
    /// template segment; names that do not match the template, hidden and `_` names are skipped.
    pub async fn discover(&self, dataset: &DatasetConfig) -> Result<Vec<String>> {
        let template = dataset.template()?;
        let root = dataset.source_dir();
        let staging = dir_prefix(&self.settings.staging_prefix);
        let mut frontier = vec![String::new()];
        for level in 0..template.depth() {
            let mut next = Vec::new();
            for relative in frontier {
                let listing =
                    list_all(self.store.as_ref(), &format!("{root}{relative}"), Some('/')).await?;
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
        let mut partitions = match &options.only {
            Some(only) => only.clone(),
            None => self.discover(dataset).await?,
        };
        partitions.sort();
        let template = dataset.template()?;
        if let Some(after) = &options.after {
            partitions.retain(|p| p > after);
        }
        if let Some((start, end)) = options.window {
            partitions.retain(|p| {
                template
                    .parse_partition(p)
                    .is_ok_and(|v| v.start < end && v.end > start)
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
                .plan_partition(dataset, &template, &partition, options)
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

    async fn plan_partition(
        &self,
        dataset: &DatasetConfig,
        template: &PartitionTemplate,
        partition: &str,
        options: &PlanOptions,
    ) -> Result<PartitionReport> {
        let values = template.parse_partition(partition)?;
        let files = self.partition_files(dataset, partition).await?;
        let report = |outcome| PartitionReport {
            partition: partition.to_string(),
            data_files: files.len(),
            data_bytes: files.iter().map(|f| f.size).sum(),
            outcome,
            anomaly: None,
        };
        if let Coldness::Hot { until } = coldness(
            &values,
            dataset.effective_granularity()?,
            dataset.grace.0,
            options.now,
        ) {
            if !options.force {
                return Ok(report(PartitionOutcome::Hot { until }));
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
        let groups = match decide(&candidates, &own, dataset) {
            PartitionDecision::Skip(reason) => {
                return Ok(report(PartitionOutcome::Skipped(reason)))
            }
            PartitionDecision::Compact(groups) => groups,
        };
        let id = PartitionId::new(&dataset.name, partition);
        let outcome = self
            .start_round(&id, options, |generation| {
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
        Ok(report(outcome))
    }

    /// Takes the partition's lease and dispatches the tasks `make_tasks` builds for its
    /// generation (in a dry run: reports them for the next generation, changing nothing).
    async fn start_round(
        &self,
        id: &PartitionId,
        options: &PlanOptions,
        make_tasks: impl Fn(u64) -> Vec<Task>,
    ) -> Result<PartitionOutcome> {
        let summaries = |tasks: &[Task]| -> Vec<TaskSummary> {
            tasks
                .iter()
                .map(|t| TaskSummary {
                    task_id: t.task_id.clone(),
                    inputs: t.inputs.len(),
                    input_bytes: t.input_bytes(),
                })
                .collect()
        };
        let record = self.state.get(id).await?;
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

    /// Plans a hot dataset: the ranges named in `options.only` (partition keys), or else every
    /// final range that needs an export (see [`Planner::hot_candidates`]), at most
    /// `max_ranges_per_sweep` of them. Each becomes one export task, which keeps whatever
    /// already left Postgres and takes what Postgres holds now.
    pub async fn plan_hot_dataset(
        &self,
        hot: &HotDatasetConfig,
        options: &PlanOptions,
    ) -> Result<DatasetPlan> {
        hot.validate()?;
        let source = self.hot.as_deref().ok_or_else(|| {
            Error::config(
                "COMPACTOR_PG_DSN",
                format!(
                    "hot dataset {:?} is configured but no Postgres connection is",
                    hot.name
                ),
            )
        })?;
        let recovery = if options.recover {
            self.recover(&hot.name, options).await?
        } else {
            RecoveryReport::default()
        };
        // An unsupported column stops the dataset here, before any task exists.
        source.columns(hot).await?;
        let final_through = source
            .tip(hot)
            .await?
            .map(|tip| crate::model::hot::range::final_through(tip, hot.finality_depth_blocks));
        let ranges: Vec<(KeyRange, Option<String>)> = match &options.only {
            Some(keys) => keys
                .iter()
                .map(|k| Ok((hot.range_of_key(k)?, None)))
                .collect::<Result<_>>()?,
            None => {
                self.hot_candidates(hot, source, final_through, options)
                    .await?
            }
        };
        let mut reports = Vec::with_capacity(ranges.len());
        let mut resume_after = None;
        for (range, anomaly) in ranges {
            if options
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
            {
                resume_after = reports
                    .last()
                    .map(|r: &PartitionReport| r.partition.clone());
                break;
            }
            let id = PartitionId::new(&hot.name, range.key());
            if recovery.blocks(&crate::model::task::partition_staging_dir(
                &self.settings.staging_prefix,
                &id,
            )) {
                continue;
            }
            let mut report = self.plan_range(hot, range, final_through, options).await?;
            if let Some(anomaly) = anomaly {
                tracing::warn!(dataset = hot.name, range = %range, anomaly = "stranded_rows", "{anomaly}");
                report.anomaly = Some(anomaly);
            }
            reports.push(report);
        }
        Ok(DatasetPlan {
            dataset: hot.name.clone(),
            dry_run: options.dry_run,
            recovery,
            partitions: reports,
            resume_after,
        })
    }

    /// The final ranges of a hot dataset that need an export, in order, at most
    /// `max_ranges_per_sweep`: every range holding rows in Postgres that its cold copy does
    /// not account for (never exported; rows arrived after it was moved; rows kept in Postgres
    /// that changed in number; `delete_after_compact` turned on since; batches refused), and
    /// every range without rows above the sweep's watermark (recorded as empty, so readers can
    /// tell "empty" from "not exported"). Ranges beyond the highest row are left for later.
    /// Rows that reach a range after it was moved are an anomaly: the finding is returned
    /// with the range.
    async fn hot_candidates(
        &self,
        hot: &HotDatasetConfig,
        source: &dyn HotSource,
        final_through: Option<i64>,
        options: &PlanOptions,
    ) -> Result<Vec<(KeyRange, Option<String>)>> {
        let (Some(through), Some(max)) = (final_through, source.max_value(hot).await?) else {
            return Ok(Vec::new());
        };
        let final_end = hot.range_containing(through.saturating_add(1)).start;
        let limit = final_end.min(hot.range_containing(max).end);
        if limit <= hot.range_start {
            return Ok(Vec::new());
        }
        let starts = source.ranges_with_rows(hot, hot.range_start, limit).await?;
        let mut records = RangeRecords::new(self.state.as_ref(), &hot.name);
        if starts.len() > RangeRecords::BULK {
            records.load_all().await?;
        }
        let size = hot.range_size as i64;
        let key = |start: i64| KeyRange {
            start,
            end: start + size,
        };
        // Every range below the watermark has a record; the sweep moves it up past the ranges
        // recorded since.
        let cursor = self
            .state
            .sweep_cursor(&hot.name)
            .await?
            .and_then(|c| c.parse::<i64>().ok());
        let mut watermark = cursor.or_else(|| starts.first().copied()).unwrap_or(limit);
        while watermark < limit
            && records
                .get(&key(watermark).key())
                .await?
                .is_some_and(|r| r.cold.is_some())
        {
            watermark += size;
        }
        if !options.dry_run && Some(watermark) != cursor {
            self.state
                .set_sweep_cursor(&hot.name, Some(&watermark.to_string()))
                .await?;
        }
        let now_ms = options.now.timestamp_millis();
        // Row counts, only where they matter: a range kept in Postgres is compared with its
        // copy, and rows found in a moved range are reported.
        let mut counted = Vec::new();
        for &start in &starts {
            let record = records.get(&key(start).key()).await?;
            let busy = record.is_some_and(|r| r.live_lease(now_ms).is_some());
            match record.and_then(|r| r.cold.as_ref()).map(|c| &c.delete) {
                Some(DeleteState::Kept) if !hot.delete_after_compact => counted.push(start),
                Some(DeleteState::Moved { .. }) if !busy => counted.push(start),
                _ => {}
            }
        }
        let counts: std::collections::HashMap<i64, u64> = if counted.len() > 16 {
            source
                .range_counts(hot, hot.range_start, limit)
                .await?
                .into_iter()
                .collect()
        } else {
            let mut counts = std::collections::HashMap::new();
            for &start in &counted {
                counts.extend(source.range_counts(hot, start, start + size).await?);
            }
            counts
        };
        let mut out = Vec::new();
        let mut with_rows = HashSet::new();
        for &start in &starts {
            with_rows.insert(start);
            let range = key(start);
            let rows = counts.get(&start).copied().unwrap_or_default();
            let record = records.get(&range.key()).await?;
            let Some(cold) = record.and_then(|r| r.cold.as_ref()) else {
                out.push((range, None));
                continue;
            };
            let busy = record.is_some_and(|r| r.live_lease(now_ms).is_some());
            match &cold.delete {
                DeleteState::Kept if !hot.delete_after_compact => {
                    if rows != cold.rows_in_postgres() {
                        out.push((range, None));
                    }
                }
                DeleteState::Moved { .. } if !busy => out.push((
                    range,
                    Some(format!(
                        "{rows} row(s) reached Postgres in range {range} after it was moved to \
                         the cold copy (version {}): they are exported as an additional file and \
                         then deleted; nothing is lost, and re-running is safe",
                        cold.version
                    )),
                )),
                _ => out.push((range, None)),
            }
        }
        for start in (watermark.max(hot.range_start)..limit).step_by(size as usize) {
            let range = key(start);
            if !with_rows.contains(&start)
                && records
                    .get(&range.key())
                    .await?
                    .is_none_or(|r| r.cold.is_none())
            {
                out.push((range, None));
            }
        }
        out.sort_by_key(|(r, _)| *r);
        out.truncate(hot.max_ranges_per_sweep);
        Ok(out)
    }

    async fn plan_range(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
        final_through: Option<i64>,
        options: &PlanOptions,
    ) -> Result<PartitionReport> {
        let key = range.key();
        let dir = hot.range_dir(range);
        let own = read_json::<PartitionManifest>(
            self.store.as_ref(),
            &format!("{dir}{PARTITION_MANIFEST}"),
        )
        .await?
        .unwrap_or_default()
        .compacted_keys();
        let files: Vec<ObjectMeta> = list_all(self.store.as_ref(), &dir, Some('/'))
            .await?
            .objects
            .into_iter()
            .filter(|o| own.contains(&o.key))
            .collect();
        let report = |outcome| PartitionReport {
            partition: key.clone(),
            data_files: files.len(),
            data_bytes: files.iter().map(|f| f.size).sum(),
            outcome,
            anomaly: None,
        };
        if !final_through.is_some_and(|through| crate::model::hot::range::is_final(range, through))
        {
            return Ok(report(PartitionOutcome::Skipped(SkipReason::NotFinal {
                final_through,
            })));
        }
        let id = PartitionId::new(&hot.name, &key);
        let legacy_moved = self
            .state
            .get(&id)
            .await?
            .and_then(|r| r.cold)
            .is_some_and(|c| c.delete == DeleteState::Legacy);
        let spec = ExportSpec {
            hot: hot.clone(),
            range,
            legacy_moved,
        };
        let outcome = self
            .start_round(&id, options, |generation| {
                vec![Task {
                    task_id: task_id(generation, 0),
                    partition: id.clone(),
                    generation,
                    dataset: hot.output_dataset(),
                    staging_prefix: self.settings.staging_prefix.clone(),
                    memory_budget: self.settings.memory_budget,
                    // The range's files: the export keeps those whose rows left Postgres
                    // and replaces the others.
                    inputs: files.clone(),
                    created_at_ms: options.now.timestamp_millis(),
                    kind: TaskKind::ExportRange(Box::new(spec.clone())),
                    nonce: crate::model::task::new_nonce(),
                    lease_owner: self.settings.owner.clone(),
                }]
            })
            .await?;
        Ok(report(outcome))
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

    /// Deals with task directories left in the dataset's staging area by earlier runs.
    pub async fn recover(&self, dataset: &str, options: &PlanOptions) -> Result<RecoveryReport> {
        let root = dataset_staging_dir(&self.settings.staging_prefix, dataset);
        let listing = list_all(self.store.as_ref(), &root, None).await?;
        let mut dirs: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for object in listing.objects {
            if let Some((dir, name)) = object.key.rsplit_once('/') {
                dirs.entry(format!("{dir}/"))
                    .or_default()
                    .insert(name.to_string());
            }
        }
        let mut report = RecoveryReport::default();
        let now_ms = options.now.timestamp_millis();
        for (dir, names) in dirs {
            let Some((partition, task)) = dir
                .strip_prefix(&root)
                .and_then(|rest| rest.trim_end_matches('/').rsplit_once('/'))
            else {
                continue;
            };
            let generation = generation_of(task);
            let action = if names.contains(DECISION) || names.contains(SUCCESS) {
                if !options.dry_run {
                    match self.committer.commit(&dir).await {
                        Ok(outcome) => report.committed.push(outcome),
                        Err(e) => {
                            tracing::error!(task_dir = %dir, error = %e, "could not finish an interrupted commit; the next run tries again");
                            report.failed.push(RecoveryFailure {
                                task_dir: dir.clone(),
                                error: e.to_string(),
                                postgres_rows_deleted: e.postgres_rows_deleted(),
                            });
                        }
                    }
                }
                "commit the finished merge"
            } else {
                let id = PartitionId::new(dataset, partition);
                let record = self.state.get(&id).await?;
                let current_generation = record.as_ref().map_or(0, |r| r.generation);
                let live = record
                    .as_ref()
                    .and_then(|r| r.live_lease(now_ms))
                    .filter(|l| {
                        l.generation == generation.unwrap_or(0) && !is_dead_local_owner(&l.owner)
                    });
                if live.is_some() {
                    "leave it: its merge is still running"
                } else if generation == Some(current_generation)
                    && names.contains(TASK_SPEC)
                    && record
                        .as_ref()
                        .is_none_or(|r| r.status != PartitionStatus::Failed)
                {
                    // Interrupted (not failed): run it again, once. A failed task is
                    // abandoned instead; the partition is planned anew, with the current
                    // settings.
                    let retried = format!("{dir}{RETRIED}");
                    if names.contains(RETRIED) {
                        if !options.dry_run {
                            let reason = "its merge died twice (killed or out of memory?); the partition is planned anew";
                            tracing::warn!(task_dir = %dir, "{reason}");
                            self.committer.abandon(&dir, reason).await?;
                            if let Some(generation) = generation {
                                self.state
                                    .finish_round(
                                        &id,
                                        generation,
                                        PartitionStatus::Failed,
                                        Some(reason.into()),
                                        now_ms,
                                    )
                                    .await?;
                            }
                        }
                        "abandon the merge that died twice"
                    } else {
                        if !options.dry_run {
                            let spec = read_json::<Task>(
                                self.store.as_ref(),
                                &format!("{dir}{TASK_SPEC}"),
                            )
                            .await?
                            .ok_or_else(|| Error::Manifest {
                                key: format!("{dir}{TASK_SPEC}"),
                                message: "vanished during recovery".into(),
                            })?;
                            self.store
                                .put(&retried, bytes::Bytes::new(), PutMode::Overwrite)
                                .await?;
                            self.dispatcher.dispatch(spec).await?;
                            report.redispatched.push(dir.clone());
                        }
                        "re-run the interrupted merge"
                    }
                } else {
                    if !options.dry_run {
                        self.committer
                            .abandon(&dir, "a failed task, or a stale one of an earlier lease generation; the partition is planned anew")
                            .await?;
                    }
                    "abandon the failed or stale merge"
                }
            };
            tracing::info!(task_dir = %dir, action, dry_run = options.dry_run, "recovering staged task");
            report.actions.push((dir, action.to_string()));
        }
        Ok(report)
    }
}

/// The state records of one hot dataset's ranges, read one by one, or all at once when many
/// are needed (a dataset whose rows stay in Postgres has a record for every range).
struct RangeRecords<'a> {
    state: &'a dyn StateStore,
    dataset: &'a str,
    cache: std::collections::HashMap<String, Option<crate::model::state::PartitionRecord>>,
    complete: bool,
}

impl<'a> RangeRecords<'a> {
    /// Above this many ranges to look at, every record is listed in one go.
    const BULK: usize = 64;

    fn new(state: &'a dyn StateStore, dataset: &'a str) -> Self {
        Self {
            state,
            dataset,
            cache: std::collections::HashMap::new(),
            complete: false,
        }
    }

    async fn load_all(&mut self) -> Result<()> {
        for status in [
            PartitionStatus::Active,
            PartitionStatus::Compacting,
            PartitionStatus::Compacted,
            PartitionStatus::Failed,
            PartitionStatus::Flagged,
        ] {
            for record in self.state.list_by_status(self.dataset, status).await? {
                self.cache.insert(record.id.partition.clone(), Some(record));
            }
        }
        self.complete = true;
        Ok(())
    }

    async fn get(
        &mut self,
        partition: &str,
    ) -> Result<Option<&crate::model::state::PartitionRecord>> {
        if !self.complete && !self.cache.contains_key(partition) {
            let record = self
                .state
                .get(&PartitionId::new(self.dataset, partition))
                .await?;
            self.cache.insert(partition.to_string(), record);
        }
        Ok(self.cache.get(partition).and_then(Option::as_ref))
    }
}

/// Marks a task directory whose interrupted merge recovery dispatched again.
const RETRIED: &str = "_RETRIED";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_generations() {
        assert_eq!(generation_of("g000012-t0003"), Some(12));
        assert_eq!(generation_of("junk"), None);
    }
}
