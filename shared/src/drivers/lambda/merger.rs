//! The merger function: runs one task (inline or by reference), keeping the partition's lease
//! alive while it runs, and records a failure on the partition.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::drivers::events::{parse_merger_event, MergerEvent};
use crate::drivers::lambda::metrics::Metrics;
use crate::error::{Error, Result};
use crate::model::dataset::Mode;
use crate::model::passes::finished_step_of;
use crate::model::task::{Task, TaskKind};
use crate::ports::dispatch::{Dispatcher, LambdaDispatcher};
use crate::ports::rows::RowChanges;
use crate::ports::store::{list_all, read_json, PutMode};
use crate::services::merger::{MergeOutcome, Merger, TimeLimit};
use crate::services::repartition::write_group;
use crate::support::env::env_var;
use crate::support::progress::NoProgress;

use super::merge_throughput;
use super::{Deployment, SAFETY_MARGIN};

pub struct MergerFunction {
    deployment: Deployment,
    scratch: PathBuf,
    memory_budget: u64,
    throughput: u64,
    /// Where a sort in passes that ran out of time sends its task to continue: this function.
    continue_with: Option<Arc<dyn Dispatcher>>,
    /// Plans the SQL of delete and update tasks (`None`: a build without the SQL engine, which
    /// refuses them; upserts need none).
    row_changes: Option<Arc<dyn RowChanges>>,
}

/// The merge budget of a function with `memory_mb` of memory: 90% of it (the budget bounds the
/// merge's whole peak memory), at least the smallest budget a merge accepts.
pub fn budget_for_memory(memory_mb: u64) -> u64 {
    // The budget is the bound of the merge's peak memory; a tenth stays free for the runtime
    // client and the unexpected.
    (memory_mb * 1024 * 1024 / 10 * 9).max(crate::model::memory::MIN_BUDGET)
}

impl MergerFunction {
    pub fn new(
        deployment: Deployment,
        scratch: PathBuf,
        memory_budget: u64,
        throughput: u64,
    ) -> Self {
        Self {
            deployment,
            scratch,
            memory_budget,
            throughput: throughput.max(1),
            continue_with: None,
            row_changes: None,
        }
    }

    /// Lets the function run delete and update tasks.
    pub fn with_row_changes(mut self, changes: Option<Arc<dyn RowChanges>>) -> Self {
        self.row_changes = changes;
        self
    }

    /// Lets a sort in passes continue in a new invocation when this one's time is used up.
    pub fn continuing_with(mut self, dispatcher: Arc<dyn Dispatcher>) -> Self {
        self.continue_with = Some(dispatcher);
        self
    }

    /// The budget follows `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`; spills go to `/tmp` (or TMPDIR).
    pub async fn from_env() -> Result<Self> {
        let deployment = Deployment::from_env().await?;
        let memory_budget = match env_var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") {
            Some(mb) => budget_for_memory(mb.parse().map_err(|e| {
                Error::config("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", format!("{mb:?}: {e}"))
            })?),
            None => deployment.config.memory_budget.bytes(),
        };
        // The runtime names the function; a sort in passes continues in it.
        let continue_with = env_var("AWS_LAMBDA_FUNCTION_NAME").map(|name| {
            Arc::new(LambdaDispatcher::new(
                aws_sdk_lambda::Client::new(&deployment.sdk),
                name,
                0,
                1,
            )) as Arc<dyn Dispatcher>
        });
        Ok(Self {
            scratch: std::env::temp_dir().join("compactor"),
            memory_budget,
            throughput: merge_throughput()?,
            deployment,
            continue_with,
            row_changes: None,
        })
    }

    pub async fn handle(&self, event: &Value, deadline: Instant) -> Result<Value> {
        let started = Instant::now();
        let mut task: Task = match parse_merger_event(event)? {
            MergerEvent::Inline(task) => *task,
            MergerEvent::Reference(key) => {
                match read_json(self.deployment.store.as_ref(), &key).await? {
                    Some(task) => task,
                    None => return Err(Error::NotFound { key }),
                }
            }
        };
        task.memory_budget = self.memory_budget;
        let needed = Duration::from_secs(task.input_bytes() / self.throughput);
        let left = deadline.saturating_duration_since(Instant::now());
        // A sort never needs to fit: it runs in steps, continued in new invocations.
        let sort = task.kind == TaskKind::MergeFiles && task.dataset.mode == Mode::Sort;
        if needed + SAFETY_MARGIN > left && !sort {
            return Err(Error::Other(format!(
                "task {} of {} ({} bytes) needs about {}s at {}/s but only {}s remain; refused \
                 before starting. Lower max_task_bytes (or set COMPACTOR_MERGER_TIMEOUT on the \
                 planner) so tasks fit the merger's time limit",
                task.task_id,
                task.partition,
                task.input_bytes(),
                needed.as_secs(),
                crate::support::units::human_bytes(self.throughput),
                left.as_secs()
            )));
        }
        if let TaskKind::RepartitionWrite(spec) = &task.kind {
            // No lease and nothing to commit: the group is recorded once, its pieces are the
            // destination compaction's inputs.
            let store = &self.deployment.store;
            let written = write_group(
                store,
                store,
                &task.dataset,
                spec,
                &task.inputs,
                self.row_changes.clone(),
                &NoProgress,
            )
            .await?;
            tracing::info!(
                task = task.task_id,
                group = written.group,
                pieces = written.pieces.len(),
                rows = written.digest.rows,
                "repartition group written"
            );
            return Ok(json!({
                "task_id": task.task_id,
                "repartition_group": written.group,
                "attempt": written.attempt,
                "pieces": written.pieces.len(),
                "rows": written.digest.rows,
            }));
        }
        std::fs::create_dir_all(&self.scratch)
            .map_err(|e| Error::io(self.scratch.display().to_string(), e))?;
        let merger = Merger::new(
            Arc::clone(&self.deployment.store),
            self.scratch.clone(),
            Arc::new(NoProgress),
        )
        .with_hot_source(self.deployment.hot.clone())
        .with_row_changes(self.row_changes.clone())
        .with_time_limit(Some(TimeLimit {
            deadline,
            throughput: self.throughput,
            margin: SAFETY_MARGIN,
        }));
        let task_id = task.task_id.clone();
        let smaller = match task.kind {
            TaskKind::ExportRange(_) => {
                "Lower the hot dataset's range_size (or raise MergerTimeout)"
            }
            TaskKind::MergeFiles | TaskKind::SortStep(_) => "Lower max_task_bytes",
            TaskKind::Rewrite(_) => "Narrow the predicate to fewer partitions",
            TaskKind::RepartitionWrite(_) => "Lower the destination's max_task_bytes",
        };
        let continuation = task.clone();
        let partition = task.partition.clone();
        let (failed_partition, generation) = (task.partition.clone(), task.generation);
        let lease = task.lease();
        let task = Arc::new(task);
        let lease_ttl_ms = self.deployment.config.lease_ttl.0.as_millis() as i64;
        let state = Arc::clone(&self.deployment.state);
        let run = async move {
            match lease {
                // Long merges keep their lease: it must not pass to the next sweep meanwhile.
                Some(lease) => {
                    crate::services::lease::while_holding(
                        state,
                        &partition,
                        lease,
                        lease_ttl_ms,
                        merger.run(task),
                    )
                    .await
                }
                None => merger.run(task).await,
            }
        };
        let finished = match tokio::time::timeout(left.saturating_sub(SAFETY_MARGIN / 2), run).await
        {
            Ok(result) => result,
            Err(_) if sort => {
                // A step cut off by the time limit is run again by the next invocation, after
                // the steps that finished; once, unless a step finished in between.
                if let Some(response) = self.continue_after_timeout(&continuation).await? {
                    return Ok(response);
                }
                Err(Error::Other(format!(
                    "task {task_id} stopped before the time limit twice without finishing a                      step; its inputs are untouched. {smaller}"
                )))
            }
            Err(_) => Err(Error::Other(format!(
                "task {task_id} stopped before the time limit; its uploads were aborted and \
                 its inputs are untouched. {smaller}"
            ))),
        };
        let outcome = match finished {
            Ok(outcome) => outcome,
            Err(e) => {
                // The round failed: its partition is planned anew, and backs off if it keeps
                // failing. A lost lease belongs to a newer round, which is left alone.
                if !matches!(e, Error::LeaseLost { .. }) {
                    let failed = self
                        .deployment
                        .state
                        .finish_round(
                            &failed_partition,
                            generation,
                            crate::model::state::PartitionStatus::Failed,
                            Some(e.to_string()),
                            crate::support::clock::now_ms(),
                        )
                        .await;
                    if let Err(state_err) = failed {
                        tracing::error!(error = %state_err, "could not record the failure in the state store");
                    }
                }
                return Err(e);
            }
        };
        let mut metrics = Metrics::new("merger");
        let response = match &outcome {
            MergeOutcome::Staged(m) | MergeOutcome::AlreadyStaged(m) => {
                let corrupt = m
                    .skipped
                    .iter()
                    .filter(|s| s.kind == crate::model::manifest::SkipKind::Unreadable)
                    .count();
                metrics
                    .count("MergeRuns", 1)
                    .count("FilesMerged", m.inputs.len() as u64)
                    .bytes("BytesIn", m.input_bytes())
                    .bytes("BytesOut", m.output_bytes())
                    .count("CorruptFilesSkipped", corrupt as u64);
                json!({"task_id": task_id, "staged": true, "outputs": m.outputs.len(), "rows": m.rows, "skipped": m.skipped.len()})
            }
            MergeOutcome::Decided(_) => json!({"task_id": task_id, "already_decided": true}),
            MergeOutcome::Paused {
                steps_done,
                steps_left,
            } => {
                metrics.count("SortStepsLeft", *steps_left as u64);
                let continued = match &self.continue_with {
                    Some(dispatcher) => {
                        dispatcher.dispatch(continuation).await?;
                        dispatcher.flush().await?;
                        true
                    }
                    None => false,
                };
                tracing::info!(
                    task_id,
                    steps_done,
                    steps_left,
                    continued,
                    "sort paused between steps; it continues where it stopped"
                );
                json!({"task_id": task_id, "paused": true, "steps_done": steps_done, "steps_left": steps_left, "continued": continued})
            }
        };
        metrics.millis("Duration", started.elapsed().as_millis());
        metrics.emit();
        Ok(response)
    }
}

impl MergerFunction {
    /// After a sort was cut off by the time limit: hands it to a new invocation, which runs the
    /// interrupted step again, unless it was already cut off with as many steps finished.
    async fn continue_after_timeout(&self, task: &Task) -> Result<Option<Value>> {
        let store = self.deployment.store.as_ref();
        let Some(dispatcher) = &self.continue_with else {
            return Ok(None);
        };
        let listing = list_all(store, &task.task_dir(), None).await?;
        let steps_done = listing
            .objects
            .iter()
            .filter(|o| finished_step_of(&o.key) == Some(task.task_dir().as_str()))
            .count();
        let marker = task.staging_key(TIMED_OUT);
        let before = match store.get(&marker).await {
            Ok((body, _)) => String::from_utf8_lossy(&body).trim().parse::<usize>().ok(),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        if before == Some(steps_done) {
            return Ok(None);
        }
        store
            .put(
                &marker,
                bytes::Bytes::from(steps_done.to_string()),
                PutMode::Overwrite,
            )
            .await?;
        dispatcher.dispatch(task.clone()).await?;
        dispatcher.flush().await?;
        tracing::warn!(task_id = %task.task_id, steps_done, "a sort step was cut off by the time limit; the next invocation runs it again");
        Ok(Some(json!({
            "task_id": task.task_id,
            "paused": true,
            "timed_out": true,
            "steps_done": steps_done,
            "continued": true,
        })))
    }
}

/// Records how many steps a sort had finished when one was cut off by the time limit.
const TIMED_OUT: &str = "_TIMED_OUT";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_room_for_the_runtime() {
        assert_eq!(budget_for_memory(3008) / (1024 * 1024), 2707);
        assert_eq!(budget_for_memory(256) / (1024 * 1024), 230);
        assert_eq!(budget_for_memory(64), crate::model::memory::MIN_BUDGET);
    }
}
