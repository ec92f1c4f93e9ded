//! The committer service: verifies a staged task and swaps its outputs in.
//!
//! Order of a commit, each step safe to replay:
//! 1. verify: every staged output exists with its size and footer row count; every input is
//!    unchanged (same version); the task's lease generation is still the partition's current one;
//! 2. write `_DECISION` = commit (create-if-absent: whoever decides first wins, and a decided
//!    commit is rolled forward by anyone who finds it unfinished);
//! 3. copy outputs to their final keys;
//! 4. update the partition manifest of live files;
//! 5. delete exactly the manifest's inputs, each only if its version still matches;
//! 6. record the commit in the state store (counters once, round completion);
//! 7. remove the staging directory.
//!
//! A task whose verification fails is abandoned: `_DECISION` = abandon, staging removed,
//! inputs untouched.

mod hot;

use std::sync::Arc;

use hot::new_ledger;

use crate::error::{Error, Result};
use crate::format::io::read_footer;
use crate::model::hot::cold::{ColdRange, DeleteState};
use crate::model::hot::config::derived_dataset_uuid;
use crate::model::manifest::check_versions;
use crate::model::manifest::{
    to_json, Decision, PartitionManifest, SkipKind, SkippedInput, TaskManifest, Verdict,
};
use crate::model::plan::is_data_file;
use crate::model::state::{Counters, PartitionId, PartitionStatus};
use crate::model::task::{DECISION, MANIFEST, PARTITION_MANIFEST, SUCCESS};
use crate::ports::hot::HotSource;
use crate::ports::state::StateStore;
use crate::ports::store::{current_versions, read_json};
use crate::ports::store::{
    list_all, put_json_once, DeleteFailure, DeleteRequest, ObjectStore, PutMode,
};
use crate::support::clock::now_ms;
use crate::support::faults::crash_point;

/// Why a staged task is not committed, and whether that is the partition's fault (else it is
/// news, such as an input a writer changed meanwhile).
struct Refusal {
    reason: String,
    fault: bool,
}

/// S3's DeleteObjects limit.
const DELETE_BATCH: usize = 1000;
const MANIFEST_RETRIES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitReport {
    pub task_id: String,
    pub partition: PartitionId,
    pub inputs_deleted: usize,
    pub input_bytes: u64,
    pub outputs: usize,
    /// Final keys of the outputs, now live.
    pub output_keys: Vec<String>,
    pub generation: u64,
    pub output_bytes: u64,
    pub rows: u64,
    /// Row groups of the outputs copied verbatim from inputs, and encoded by the merger.
    pub row_groups_copied: usize,
    pub row_groups_encoded: usize,
    /// Bytes the store copied from inputs itself, never passing through the merger.
    pub bytes_copied_in_store: u64,
    /// Sort mode: what the sort did (rows sorted, rows already in order taken as runs).
    pub sort: Option<crate::model::manifest::SortWork>,
    pub skipped: Vec<SkippedInput>,
    /// Inputs that were not deleted because they changed after the merge (kept, never lost).
    pub kept: Vec<DeleteFailure>,
    pub round_complete: bool,
    /// For a hot range: its cold copy and what became of its Postgres rows.
    pub cold: Option<ColdRange>,
    /// The `dataset_uuid` of the commit's event.
    pub dataset_uuid: String,
    /// For a rewrite (delete, update): rows read and matched, row groups copied and redone.
    pub rewrite: Option<crate::model::rewrite::RewriteRecord>,
}

impl CommitReport {
    /// The "partition compacted" event of this commit: `{dataset_uuid, dataset_version,
    /// partition_key}` and what a subscriber needs to find the files.
    pub fn event(&self) -> serde_json::Value {
        let mut detail = serde_json::json!({
            "dataset_uuid": self.dataset_uuid,
            "dataset_version": self.generation,
            "partition_key": self.partition.partition,
            "dataset": self.partition.dataset,
            "partition": self.partition.partition,
            "version": self.generation,
            "task_id": self.task_id,
            "outputs": self.output_keys,
            "rows": self.rows,
        });
        if let Some(cold) = &self.cold {
            detail["postgres"] = serde_json::to_value(&cold.delete).unwrap_or_default();
        }
        detail
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed(Box<CommitReport>),
    /// The task had been committed before; only leftovers were cleaned.
    AlreadyCommitted {
        task_dir: String,
    },
    /// `_SUCCESS` is not there yet: the merge has not finished.
    NotReady {
        task_dir: String,
    },
    Refused {
        task_dir: String,
        reason: String,
    },
}

#[derive(Clone)]
pub struct Committer {
    store: Arc<dyn ObjectStore>,
    state: Arc<dyn StateStore>,
    /// The staging prefix of the task directories it accepts (foreign keys are refused).
    staging_prefix: String,
    /// Where committed hot ranges are deleted from (hot datasets only).
    hot: Option<Arc<dyn HotSource>>,
}

impl Committer {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        state: Arc<dyn StateStore>,
        staging_prefix: &str,
    ) -> Self {
        Self {
            store,
            state,
            staging_prefix: crate::model::object::dir_prefix(staging_prefix),
            hot: None,
        }
    }

    /// Lets the committer delete committed hot ranges from Postgres.
    pub fn with_hot_source(mut self, hot: Option<Arc<dyn HotSource>>) -> Self {
        self.hot = hot;
        self
    }

    /// Commits the task staged in `task_dir` (`<staging>/<dataset>/<partition>/<task>/`).
    pub async fn commit(&self, task_dir: &str) -> Result<CommitOutcome> {
        let task_dir = crate::model::object::dir_prefix(task_dir);
        crate::model::object::validate_key(&task_dir)?;
        if !task_dir.starts_with(&self.staging_prefix) {
            return Err(Error::BadEvent(format!(
                "{task_dir:?} is not under the staging prefix {:?}",
                self.staging_prefix
            )));
        }
        let store = self.store.as_ref();
        let key = |name: &str| format!("{task_dir}{name}");
        let decision = read_json::<Decision>(store, &key(DECISION)).await?;
        let manifest = read_json::<TaskManifest>(store, &key(MANIFEST)).await?;
        match (decision, manifest) {
            (Some(d), _) if d.verdict == Verdict::Abandon => {
                self.remove_staging(&task_dir).await?;
                Ok(CommitOutcome::Refused {
                    task_dir,
                    reason: d.reason,
                })
            }
            (Some(_), Some(manifest)) => self.roll_forward(&task_dir, manifest).await,
            (Some(_), None) => {
                // Committed earlier; a previous cleanup stopped half-way.
                self.remove_staging(&task_dir).await?;
                Ok(CommitOutcome::AlreadyCommitted { task_dir })
            }
            (None, manifest) => {
                let success = store.head(&key(SUCCESS)).await?.is_some();
                match manifest {
                    Some(manifest) if success => self.verify_and_decide(&task_dir, manifest).await,
                    Some(_) => Ok(CommitOutcome::NotReady { task_dir }),
                    None if success => Err(Error::Manifest {
                        key: key(MANIFEST),
                        message: "_SUCCESS exists without a manifest; delete the task directory so the partition is planned again".into(),
                    }),
                    None if self.was_committed(&task_dir).await? => {
                        Ok(CommitOutcome::AlreadyCommitted { task_dir })
                    }
                    None => Ok(CommitOutcome::NotReady { task_dir }),
                }
            }
        }
    }

    /// True when the state store records the task of `task_dir` as committed (its staging
    /// directory is gone then, so a replayed `_SUCCESS` event finds nothing else).
    async fn was_committed(&self, task_dir: &str) -> Result<bool> {
        let Some((dataset, partition, task_id)) =
            crate::model::task::parse_task_dir(&self.staging_prefix, task_dir)
        else {
            return Ok(false);
        };
        let record = self
            .state
            .get(&PartitionId::new(dataset, partition))
            .await?;
        Ok(record.is_some_and(|r| {
            crate::model::task::generation_of(task_id) == Some(r.generation)
                && r.committed_tasks.iter().any(|t| t == task_id)
        }))
    }

    /// Abandons a staged task that will never be committed (stale generation, dead merge).
    /// Returns the verdict that stands: `Commit` if someone decided to commit first, in which
    /// case the commit is rolled forward instead.
    pub async fn abandon(&self, task_dir: &str, reason: &str) -> Result<CommitOutcome> {
        let task_dir = crate::model::object::dir_prefix(task_dir);
        match self.decide(&task_dir, Verdict::Abandon, reason).await? {
            Verdict::Abandon => {
                self.remove_staging(&task_dir).await?;
                Ok(CommitOutcome::Refused {
                    task_dir,
                    reason: reason.to_string(),
                })
            }
            Verdict::Commit => {
                match read_json::<TaskManifest>(
                    self.store.as_ref(),
                    &format!("{task_dir}{MANIFEST}"),
                )
                .await?
                {
                    Some(manifest) => self.roll_forward(&task_dir, manifest).await,
                    None => {
                        self.remove_staging(&task_dir).await?;
                        Ok(CommitOutcome::AlreadyCommitted { task_dir })
                    }
                }
            }
        }
    }

    /// Writes the decision unless one exists; returns the one that stands.
    async fn decide(&self, task_dir: &str, verdict: Verdict, reason: &str) -> Result<Verdict> {
        let key = format!("{task_dir}{DECISION}");
        let decision = Decision {
            verdict,
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        let (standing, _) = put_json_once(self.store.as_ref(), &key, decision).await?;
        Ok(standing.verdict)
    }

    async fn verify_and_decide(
        &self,
        task_dir: &str,
        manifest: TaskManifest,
    ) -> Result<CommitOutcome> {
        if let Some(refusal) = self.verification_failure(&manifest).await? {
            let reason = refusal.reason;
            tracing::warn!(task = %manifest.task_id, %reason, "refusing to commit");
            let outcome = self.abandon(task_dir, &reason).await?;
            if matches!(outcome, CommitOutcome::Refused { .. }) {
                let id = PartitionId::new(&manifest.dataset, &manifest.partition);
                // An input a writer changed meanwhile is news for the next round, not a fault
                // of the partition (which would then back off).
                let status = if refusal.fault {
                    PartitionStatus::Failed
                } else {
                    PartitionStatus::Active
                };
                self.state
                    .finish_round(&id, manifest.generation, status, Some(reason), now_ms())
                    .await?;
            }
            return Ok(outcome);
        }
        match self.decide(task_dir, Verdict::Commit, "verified").await? {
            Verdict::Commit => {
                crash_point("after-decision");
                self.roll_forward(task_dir, manifest).await
            }
            Verdict::Abandon => {
                self.remove_staging(task_dir).await?;
                Ok(CommitOutcome::Refused {
                    task_dir: task_dir.to_string(),
                    reason: "abandoned by another actor before this commit".into(),
                })
            }
        }
    }

    /// Why the staged task must not be committed, if it must not.
    async fn verification_failure(&self, manifest: &TaskManifest) -> Result<Option<Refusal>> {
        let fault = |reason: String| {
            Ok(Some(Refusal {
                reason,
                fault: true,
            }))
        };
        let news = |reason: String| {
            Ok(Some(Refusal {
                reason,
                fault: false,
            }))
        };
        for output in &manifest.outputs {
            let stored = self.store.head(&output.staging_key).await?;
            match stored {
                None => return fault(format!("staged output {} is missing", output.staging_key)),
                Some(m) if m.size != output.size => {
                    return fault(format!(
                        "staged output {} has {} bytes, the manifest says {}",
                        output.staging_key, m.size, output.size
                    ))
                }
                Some(_) => {}
            }
            let footer = match read_footer(self.store.as_ref(), &output.staging_key).await {
                Ok(f) => f,
                Err(Error::CorruptInput { reason, .. }) => {
                    return fault(format!(
                        "staged output {} is unreadable: {reason}",
                        output.staging_key
                    ))
                }
                Err(e) => return Err(e),
            };
            let rows = footer.file_metadata().num_rows().max(0) as u64;
            if rows != output.rows {
                return fault(format!(
                    "staged output {} holds {rows} rows, the manifest says {}",
                    output.staging_key, output.rows
                ));
            }
        }
        let current = current_versions(self.store.as_ref(), &manifest.inputs).await?;
        let (_, changed) = check_versions(&manifest.inputs, &current);
        if let Some(c) = changed.first() {
            return news(format!(
                "input {} {} after the merge ({} input(s) affected)",
                c.key,
                match c.kind {
                    SkipKind::Vanished => "vanished",
                    _ => "changed",
                },
                changed.len()
            ));
        }
        let id = PartitionId::new(&manifest.dataset, &manifest.partition);
        let generation = self.state.get(&id).await?.map_or(0, |r| r.generation);
        if generation != manifest.generation {
            return news(format!(
                "stale task: planned under lease generation {}, the partition is now at {generation}",
                manifest.generation
            ));
        }
        Ok(None)
    }

    async fn roll_forward(&self, task_dir: &str, manifest: TaskManifest) -> Result<CommitOutcome> {
        for output in &manifest.outputs {
            self.install_output(task_dir, output).await?;
        }
        crash_point("after-copy");

        self.update_partition_manifest(&manifest).await?;
        crash_point("after-manifest");

        let requests: Vec<DeleteRequest> = manifest
            .inputs
            .iter()
            .map(|i| DeleteRequest {
                key: i.key.clone(),
                version: Some(i.version.clone()),
            })
            .collect();
        let mut kept = Vec::new();
        for batch in requests.chunks(DELETE_BATCH) {
            kept.extend(self.store.delete_many(batch).await?);
        }
        for k in &kept {
            tracing::warn!(key = %k.key, reason = %k.reason, "input kept after commit");
        }
        crash_point("after-delete");

        let id = PartitionId::new(&manifest.dataset, &manifest.partition);
        let cold = match &manifest.export {
            Some(export) => self.settle_export(&manifest, export).await?,
            None => None,
        };
        let delta = Counters {
            compactions: 1,
            files_compacted: manifest.inputs.len() as u64,
            bytes_in: manifest.input_bytes(),
            bytes_out: manifest.output_bytes(),
            rows_out: manifest.rows,
            corrupt_skipped: manifest
                .skipped
                .iter()
                .filter(|s| s.is_unreadable())
                .count() as u64,
            bytes_copied: manifest.outputs.iter().map(|o| o.bytes_copied).sum(),
            merge_ms: manifest.merge_ms,
            ..Counters::default()
        };
        let progress = self
            .state
            .record_commit(
                &id,
                manifest.generation,
                &manifest.task_id,
                &delta,
                now_ms(),
            )
            .await?;
        if let Some(cold) = &cold {
            self.state.record_cold_range(&id, cold, now_ms()).await?;
        }
        if progress.round_complete {
            let (status, error) = match cold.as_ref().map(|c| &c.delete) {
                Some(DeleteState::Flagged { detail, .. }) => {
                    (PartitionStatus::Flagged, Some(detail.clone()))
                }
                _ => (PartitionStatus::Compacted, None),
            };
            self.state
                .finish_round(&id, manifest.generation, status, error, now_ms())
                .await?;
        }
        self.remove_staging(task_dir).await?;
        Ok(CommitOutcome::Committed(Box::new(CommitReport {
            task_id: manifest.task_id.clone(),
            partition: id,
            inputs_deleted: manifest.inputs.len() - kept.len(),
            input_bytes: manifest.input_bytes(),
            outputs: manifest.outputs.len(),
            output_keys: manifest
                .outputs
                .iter()
                .map(|o| o.final_key.clone())
                .collect(),
            generation: manifest.generation,
            output_bytes: manifest.output_bytes(),
            rows: manifest.rows,
            row_groups_copied: manifest.outputs.iter().map(|o| o.row_groups_copied).sum(),
            row_groups_encoded: manifest
                .outputs
                .iter()
                .map(|o| o.row_groups_encoded())
                .sum(),
            bytes_copied_in_store: manifest
                .outputs
                .iter()
                .map(|o| o.bytes_copied_in_store)
                .sum(),
            sort: manifest.sort,
            skipped: manifest.skipped,
            kept,
            round_complete: progress.round_complete,
            dataset_uuid: manifest.export.as_ref().map_or_else(
                || derived_dataset_uuid(&manifest.dataset),
                |e| e.hot.dataset_uuid(),
            ),
            cold,
            rewrite: manifest.rewrite,
        })))
    }

    /// Puts one staged output at its final key: a copy that never replaces anything. An object
    /// already there is this output only if its checksum is the staged one's (a replayed
    /// commit); anything else stops the commit and is left alone.
    async fn install_output(
        &self,
        task_dir: &str,
        output: &crate::model::manifest::OutputFile,
    ) -> Result<()> {
        let copied = match self.store.head(&output.final_key).await? {
            Some(_) => Err(Error::PreconditionFailed {
                key: output.final_key.clone(),
                reason: "already exists".into(),
            }),
            None => {
                self.store
                    .copy(&output.staging_key, &output.final_key)
                    .await
            }
        };
        match copied {
            Ok(_) => Ok(()),
            Err(e) if e.is_precondition_failed() => {
                let (ours, found) = self.holds_output(output).await?;
                if ours {
                    return Ok(()); // copied by an earlier attempt of this commit
                }
                Err(Error::Manifest {
                    key: output.final_key.clone(),
                    message: format!(
                        "holds another object ({found}); nothing was overwritten and the inputs \
                         are kept. Move that object away, then replay {task_dir}"
                    ),
                })
            }
            Err(e) if e.is_not_found() => Err(Error::Manifest {
                key: output.staging_key.clone(),
                message: format!(
                    "committed output is neither staged nor at {}; the inputs are kept. \
                     Investigate before deleting {task_dir}",
                    output.final_key
                ),
            }),
            Err(e) => Err(e),
        }
    }

    /// Is the object at the output's final key this output? By its footer (which names the
    /// staged file it was written as) and size when the manifest has them, else by the CRC32C
    /// of the whole file. Also says what was found, for the error when it is not.
    async fn holds_output(
        &self,
        output: &crate::model::manifest::OutputFile,
    ) -> Result<(bool, String)> {
        match &output.footer {
            Some(mark) => {
                let (tail, size) = self.store.get_suffix(&output.final_key, mark.bytes).await?;
                let crc = format!("{:08x}", crc32c::crc32c(&tail));
                Ok((
                    size == output.size && crc == mark.crc32c,
                    format!(
                        "{size} bytes, footer CRC32C {crc}; the staged output has {} bytes, footer \
                         CRC32C {}",
                        output.size, mark.crc32c
                    ),
                ))
            }
            None => {
                let found = self.store.crc32c(&output.final_key).await?;
                Ok((
                    found == output.crc32c,
                    format!("CRC32C {found}, the staged output's is {}", output.crc32c),
                ))
            }
        }
    }

    async fn update_partition_manifest(&self, manifest: &TaskManifest) -> Result<()> {
        let dir = match (&manifest.export, manifest.outputs.first()) {
            // A range's manifest is written even when it is empty: readers tell "no rows"
            // from "not exported", and its ledger lives there.
            (Some(export), _) => export.hot.range_dir(export.range),
            (None, Some(first)) => first
                .final_key
                .rsplit_once('/')
                .map_or(String::new(), |(d, _)| format!("{d}/")),
            (None, None) => return Ok(()), // nothing was written, nothing changes for readers
        };
        let key = format!("{dir}{PARTITION_MANIFEST}");
        for _ in 0..MANIFEST_RETRIES {
            let (mut current, mode) = match self.store.get(&key).await {
                Ok((bytes, meta)) => (
                    crate::model::manifest::from_json::<PartitionManifest>(&key, &bytes)?,
                    PutMode::IfMatch(meta.version),
                ),
                Err(e) if e.is_not_found() => (PartitionManifest::default(), PutMode::IfAbsent),
                Err(e) => return Err(e),
            };
            if current.has_commit(&manifest.task_id) {
                return Ok(());
            }
            let listing: Vec<_> = list_all(self.store.as_ref(), &dir, Some('/'))
                .await?
                .objects
                .into_iter()
                .filter(|o| is_data_file(&o.key, ""))
                .collect();
            current.apply_commit(manifest, &listing, now_ms());
            if let Some(export) = &manifest.export {
                current.hot = Some(new_ledger(manifest.generation, export, current.hot.take()));
            }
            match self.store.put(&key, to_json(&current), mode).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_precondition_failed() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Manifest {
            key,
            message: format!("kept changing under {MANIFEST_RETRIES} concurrent updates; the commit will be retried"),
        })
    }

    async fn remove_staging(&self, task_dir: &str) -> Result<()> {
        let listing = list_all(self.store.as_ref(), task_dir, None).await?;
        let (decision, rest): (Vec<_>, Vec<_>) = listing
            .objects
            .into_iter()
            .partition(|o| o.key.ends_with(DECISION));
        // The decision goes last, so an interrupted cleanup is still recognised as decided.
        for group in [rest, decision] {
            let requests: Vec<DeleteRequest> = group
                .into_iter()
                .map(|o| DeleteRequest {
                    key: o.key,
                    version: None,
                })
                .collect();
            for batch in requests.chunks(DELETE_BATCH) {
                let failed = self.store.delete_many(batch).await?;
                if let Some(f) = failed.first() {
                    return Err(Error::Store {
                        operation: "delete",
                        key: f.key.clone(),
                        message: f.reason.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}
