//! Recovery of interrupted work left in a dataset's staging area by earlier runs: finished
//! merges are committed, decided commits rolled forward, merges of a dead run dispatched again
//! (once), stale ones abandoned.
use std::collections::{BTreeMap, HashSet};

use crate::error::{Error, Result};
use crate::model::passes::finished_step_of;
use crate::model::state::{PartitionId, PartitionStatus};
use crate::model::task::{
    dataset_staging_dir, generation_of, parse_task_dir, Task, DECISION, SUCCESS, TASK_SPEC,
};
use crate::ports::store::read_json;
use crate::ports::store::{list_all, PutMode};
use crate::support::process::is_dead_local_owner;

use super::{PlanOptions, Planner, RecoveryFailure, RecoveryReport};

/// Marks a task directory whose interrupted merge recovery dispatched again.
const RETRIED: &str = "_RETRIED";

impl Planner {
    /// Deals with task directories left in the dataset's staging area by earlier runs.
    pub async fn recover(&self, dataset: &str, options: &PlanOptions) -> Result<RecoveryReport> {
        let root = dataset_staging_dir(&self.settings.staging_prefix, dataset);
        let listing = list_all(self.store.as_ref(), &root, None).await?;
        let mut dirs: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        // Steps a task sorted in passes has finished (`<task dir>/<step>/_manifest.json`).
        let mut steps_done: BTreeMap<String, usize> = BTreeMap::new();
        for object in listing.objects {
            if let Some((dir, name)) = object.key.rsplit_once('/') {
                if let Some(task_dir) = finished_step_of(&object.key) {
                    *steps_done.entry(task_dir.to_string()).or_default() += 1;
                }
                dirs.entry(format!("{dir}/"))
                    .or_default()
                    .insert(name.to_string());
            }
        }
        let mut report = RecoveryReport::default();
        let now_ms = options.now.timestamp_millis();
        for (dir, names) in dirs {
            let Some((_, partition, task)) = parse_task_dir(&self.settings.staging_prefix, &dir)
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
                    // settings. A sort in passes that finished steps since it was last
                    // retried made progress: it is run again, and continues.
                    let retried = format!("{dir}{RETRIED}");
                    let done = steps_done.get(&dir).copied().unwrap_or(0);
                    let progressed = names.contains(RETRIED)
                        && done > 0
                        && self
                            .store
                            .get(&retried)
                            .await
                            .ok()
                            .and_then(|(b, _)| {
                                String::from_utf8_lossy(&b).trim().parse::<usize>().ok()
                            })
                            .is_none_or(|before| done > before);
                    if names.contains(RETRIED) && !progressed {
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
                                .put(
                                    &retried,
                                    bytes::Bytes::from(done.to_string()),
                                    PutMode::Overwrite,
                                )
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
