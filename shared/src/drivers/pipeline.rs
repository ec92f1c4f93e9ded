//! Runs the whole pipeline in one process: the planner dispatches into a pool of local workers,
//! each worker merges a task and then commits it (the local stand-in for the `_SUCCESS` event).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Mutex};

use crate::error::Result;
use crate::model::config::{AnyDataset, Config};
use crate::model::manifest::SkippedInput;
use crate::model::state::PartitionStatus;
use crate::model::task::Task;
use crate::ports::dispatch::{ChannelDispatcher, CollectingDispatcher, Dispatcher};
use crate::ports::hot::HotSource;
use crate::ports::state::StateStore;
use crate::ports::store::ObjectStore;
use crate::services::committer::{CommitOutcome, CommitReport, Committer};
use crate::services::merger::{MergeOutcome, Merger};
use crate::services::planner::{DatasetPlan, PlanOptions, Planner, PlannerSettings};
use crate::support::clock::now_ms;
use crate::support::progress::Progress;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    /// Only these datasets (all when `None`).
    pub datasets: Option<Vec<String>>,
    /// Only these partitions (all when `None`).
    pub partitions: Option<Vec<String>>,
    /// Merges running at once; each may use the whole `memory_budget`.
    pub workers: usize,
    /// Where sort mode spills runs.
    pub scratch: PathBuf,
    /// Lease owner name.
    pub owner: String,
    /// Instead of compacting: rewrite the rows this predicate matches (delete or update).
    pub rewrite: Option<crate::model::rewrite::RewriteSpec>,
    /// Plans the expressions of rewrites (needed for `rewrite`, and to finish interrupted ones).
    pub row_changes: Option<Arc<dyn crate::ports::rows::RowChanges>>,
    /// Compact every partition now, whatever its coldness and file count (a repartition's
    /// target; a rewrite always is).
    pub force: bool,
    /// The source rows of an upsert (`rewrite` with an upsert spec), as read.
    pub upsert_rows: Option<Arc<Vec<arrow::array::RecordBatch>>>,
    /// Files to merge into partitions besides their own (see [`PlanOptions::extra_inputs`]).
    pub extra_inputs:
        Option<Arc<std::collections::BTreeMap<String, Vec<crate::model::object::ObjectMeta>>>>,
}

#[derive(Clone, Debug)]
pub struct TaskFailure {
    pub task_id: String,
    pub partition: String,
    pub error: String,
    /// Rows the task deleted from Postgres before it failed (a hot range's interrupted delete).
    pub postgres_rows_deleted: u64,
}

#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub plans: Vec<DatasetPlan>,
    pub commits: Vec<CommitReport>,
    pub refused: Vec<(String, String)>,
    pub failures: Vec<TaskFailure>,
    pub elapsed: Duration,
}

impl RunSummary {
    pub fn skipped_inputs(&self) -> impl Iterator<Item = &SkippedInput> {
        self.commits.iter().flat_map(|c| c.skipped.iter())
    }

    /// Inputs that were skipped because they could not be read (not merely changed or gone).
    pub fn corrupt_inputs(&self) -> Vec<&SkippedInput> {
        self.skipped_inputs()
            .filter(|s| s.is_unreadable())
            .collect()
    }

    /// What went wrong without failing: ranges flagged (Postgres held other rows than the
    /// cold copy) and rows found in ranges already moved, each with what was done about it.
    pub fn anomalies(&self) -> Vec<String> {
        let flagged =
            self.commits
                .iter()
                .filter_map(|c| match c.cold.as_ref().map(|c| &c.delete) {
                    Some(crate::model::hot::cold::DeleteState::Flagged { detail, .. }) => {
                        Some(format!("flagged {}: {detail}", c.partition))
                    }
                    _ => None,
                });
        let found = self.plans.iter().flat_map(|plan| {
            plan.partitions.iter().filter_map(move |p| {
                p.anomaly
                    .as_ref()
                    .map(|a| format!("found in {}/{}: {a}", plan.dataset, p.partition))
            })
        });
        let troubled =
            self.plans.iter().flat_map(|plan| {
                plan.partitions
                    .iter()
                    .filter_map(move |p| match &p.outcome {
                        crate::services::planner::PartitionOutcome::Failed(e) => {
                            Some(format!("failed {}/{}: {e}", plan.dataset, p.partition))
                        }
                        crate::services::planner::PartitionOutcome::BackingOff {
                            failures,
                            until_ms,
                            error,
                        } => Some(format!(
                    "backing off {}/{}: failed {failures} times in a row, left alone until {} \
                     (compact it by name with --partition to try now); last error: {error}",
                    plan.dataset,
                    p.partition,
                    chrono::DateTime::from_timestamp_millis(*until_ms)
                        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                )),
                        _ => None,
                    })
            });
        flagged.chain(found).chain(troubled).collect()
    }

    pub fn is_partial(&self) -> bool {
        !self.failures.is_empty()
            || !self.refused.is_empty()
            || !self.corrupt_inputs().is_empty()
            || !self.anomalies().is_empty()
    }

    fn absorb(&mut self, outcome: CommitOutcome) {
        match outcome {
            CommitOutcome::Committed(report) => {
                // Locally, the "partition compacted" event goes to the log.
                tracing::info!(event = %report.event(), "{}", crate::drivers::lambda::committer::EVENT_DETAIL_TYPE);
                self.commits.push(*report)
            }
            CommitOutcome::Refused { task_dir, reason } => self.refused.push((task_dir, reason)),
            CommitOutcome::AlreadyCommitted { .. } | CommitOutcome::NotReady { .. } => {}
        }
    }
}

struct Services {
    merger: Merger,
    committer: Committer,
    state: Arc<dyn StateStore>,
    progress: Arc<dyn Progress>,
    lease_ttl_ms: i64,
}

impl Services {
    async fn run_task(&self, task: Task) -> std::result::Result<CommitOutcome, TaskFailure> {
        let task = Arc::new(task);
        let failure = |e: crate::Error| TaskFailure {
            task_id: task.task_id.clone(),
            partition: task.partition.to_string(),
            error: e.to_string(),
            postgres_rows_deleted: e.postgres_rows_deleted(),
        };
        let merged = match task.lease() {
            Some(lease) => {
                crate::services::lease::while_holding(
                    Arc::clone(&self.state),
                    &task.partition,
                    lease,
                    self.lease_ttl_ms,
                    self.merger.run(Arc::clone(&task)),
                )
                .await
            }
            None => self.merger.run(Arc::clone(&task)).await,
        };
        let result = match merged {
            Ok(
                MergeOutcome::Staged(_) | MergeOutcome::AlreadyStaged(_) | MergeOutcome::Decided(_),
            ) => self.committer.commit(&task.task_dir()).await,
            // Without a time limit every step runs; a pause would be a bug, and the task
            // continues from its last step when it runs again.
            Ok(MergeOutcome::Paused { steps_left, .. }) => {
                Err(crate::error::Error::Other(format!(
                    "task {} paused with {steps_left} steps left; run again to continue it",
                    task.task_id
                )))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(outcome) => {
                let line = match &outcome {
                    CommitOutcome::Committed(r) => format!(
                        "{} {}: {} files -> {}",
                        r.partition, r.task_id, r.inputs_deleted, r.outputs
                    ),
                    other => format!("{}: {other:?}", task.task_id),
                };
                self.progress.task_done(&line);
                Ok(outcome)
            }
            Err(e) => {
                tracing::error!(task = %task.task_id, partition = %task.partition, error = %e, "task failed");
                if let Err(state_err) = self
                    .state
                    .finish_round(
                        &task.partition,
                        task.generation,
                        PartitionStatus::Failed,
                        Some(e.to_string()),
                        now_ms(),
                    )
                    .await
                {
                    tracing::error!(error = %state_err, "could not record the failure in the state store");
                }
                self.progress
                    .task_done(&format!("{} {}: FAILED", task.partition, task.task_id));
                Err(failure(e))
            }
        }
    }
}

/// Plans every configured dataset and runs the resulting tasks to completion. `hot` is the
/// Postgres of the hot datasets (needed only when some are configured).
pub async fn run_local(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    state: Arc<dyn StateStore>,
    hot: Option<Arc<dyn HotSource>>,
    progress: Arc<dyn Progress>,
    options: &RunOptions,
) -> Result<RunSummary> {
    config.validate()?;
    let started = Instant::now();
    let services = Arc::new(Services {
        merger: Merger::new(
            Arc::clone(&store),
            options.scratch.clone(),
            Arc::clone(&progress),
        )
        .with_hot_source(hot.clone())
        .with_row_changes(options.row_changes.clone()),
        committer: Committer::new(
            Arc::clone(&store),
            Arc::clone(&state),
            &config.staging_prefix,
        )
        .with_hot_source(hot.clone()),
        state: Arc::clone(&state),
        progress: Arc::clone(&progress),
        lease_ttl_ms: config.lease_ttl.0.as_millis() as i64,
    });
    let summary = Arc::new(Mutex::new(RunSummary::default()));
    let workers = options.workers.max(1);
    let (tx, rx) = mpsc::channel::<Task>(workers);
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (rx, services, summary) =
            (Arc::clone(&rx), Arc::clone(&services), Arc::clone(&summary));
        handles.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(task) = next else { break };
                let result = services.run_task(task).await;
                let mut summary = summary.lock().await;
                match result {
                    Ok(outcome) => summary.absorb(outcome),
                    Err(failure) => summary.failures.push(failure),
                }
            }
        }));
    }
    // A rewrite runs nothing until every partition is planned: an expression that fails on
    // some partition's data stops it before anything is written.
    let collected = Arc::new(CollectingDispatcher::default());
    let (dispatcher, queue): (Arc<dyn Dispatcher>, _) = if options.dry_run {
        drop(tx); // nothing runs in a dry run; let the workers stop
        (collected.clone(), None)
    } else if options.rewrite.is_some() {
        (collected.clone(), Some(tx))
    } else {
        (Arc::new(ChannelDispatcher::new(tx)), None)
    };
    let planner = Planner::new(
        Arc::clone(&store),
        Arc::clone(&state),
        dispatcher,
        PlannerSettings {
            owner: options.owner.clone(),
            lease_ttl_ms: config.lease_ttl.0.as_millis() as i64,
            staging_prefix: config.staging_prefix.clone(),
            memory_budget: config.memory_budget.bytes(),
            merge_throughput: config.merge_throughput.bytes(),
        },
    )
    .with_hot_source(hot)
    .with_row_changes(options.row_changes.clone())
    .with_upsert_rows(options.upsert_rows.clone());
    let plan_options = PlanOptions {
        only: options.partitions.clone(),
        // A rewrite is asked for: coldness and back-off do not hold it up.
        force: options.force || options.rewrite.is_some(),
        extra_inputs: options.extra_inputs.clone(),
        ..PlanOptions::sweep(options.now, options.dry_run)
    };
    let wanted = |name: &str| {
        options
            .datasets
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    };
    let mut planning_error = None;
    let plans = config
        .datasets
        .iter()
        .filter(|d| wanted(&d.name))
        .map(AnyDataset::Files)
        .chain(
            config
                .hot_datasets
                .iter()
                .filter(|h| wanted(&h.name) && options.rewrite.is_none())
                .map(AnyDataset::Hot),
        );
    for dataset in plans {
        let planned = match dataset {
            AnyDataset::Files(ds) => match &options.rewrite {
                Some(spec) => planner.plan_rewrite(ds, spec, &plan_options).await,
                None => planner.plan_dataset(ds, &plan_options).await,
            },
            AnyDataset::Hot(hot) => planner.plan_hot_dataset(hot, &plan_options).await,
        };
        match planned {
            Ok(mut plan) => {
                let (tasks, bytes) = plan
                    .partitions
                    .iter()
                    .filter_map(|p| match &p.outcome {
                        crate::services::planner::PartitionOutcome::Planned { tasks } => {
                            Some(tasks)
                        }
                        _ => None,
                    })
                    .flatten()
                    .fold((0, 0), |(n, b), t| (n + 1, b + t.input_bytes));
                progress.planned(tasks, bytes);
                let recovered = std::mem::take(&mut plan.recovery.committed);
                let mut summary = summary.lock().await;
                for outcome in recovered {
                    summary.absorb(outcome);
                }
                for failed in &plan.recovery.failed {
                    summary.failures.push(TaskFailure {
                        task_id: failed.task_dir.clone(),
                        partition: plan.dataset.clone(),
                        error: format!(
                            "finishing the interrupted commit of {}: {}",
                            failed.task_dir, failed.error
                        ),
                        postgres_rows_deleted: failed.postgres_rows_deleted,
                    });
                }
                summary.plans.push(plan);
            }
            Err(e) => {
                planning_error = Some(e);
                break;
            }
        }
    }
    if let Some(queue) = queue {
        let tasks = std::mem::take(&mut *collected.tasks.lock().await);
        if planning_error.is_some() {
            let reason = "the rewrite stopped while planning; nothing of it was written";
            planner.abandon_held(tasks, reason).await;
        } else {
            for task in tasks {
                if queue.send(task).await.is_err() {
                    break;
                }
            }
        }
    }
    // Dropping the planner (and the queue) closes the channel; workers finish what is queued
    // and stop.
    drop(planner);
    for handle in handles {
        if let Err(e) = handle.await {
            tracing::error!(error = %e, "a worker panicked");
        }
    }
    if let Some(e) = planning_error {
        return Err(e);
    }
    let mut summary = Arc::try_unwrap(summary)
        .map(Mutex::into_inner)
        .unwrap_or_default();
    summary.elapsed = started.elapsed();
    Ok(summary)
}
