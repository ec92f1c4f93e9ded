//! The merger service: runs one task of any [`TaskKind`] — one module per kind ([`files`]:
//! merge files; [`export`]: export a hot range) writes the outputs into staging with the shared
//! writer ([`crate::format::writer`]); then this module writes `_manifest.json`, then
//! `_SUCCESS`, the same for every kind. Replaying a task is safe: a task already staged or
//! decided is not run again, and concurrent runs of the same task race on the create-if-absent
//! manifest, so exactly one result stands.

pub mod export;
mod files;
mod inputs;
mod passes;
mod rewrite;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::format::writer::discard_staged;
use crate::model::manifest::{
    ColumnDesc, Decision, OutputFile, SkippedInput, TaskManifest, Verdict, FORMAT_VERSION,
};
use crate::model::object::file_name;
use crate::model::task::{Task, TaskKind, DECISION, MANIFEST, SUCCESS};
use crate::ports::hot::HotSource;
use crate::ports::store::{list_all, put_json_once, ObjectStore, PutMode};
use crate::support::faults::crash_point;
use crate::support::progress::Progress;

use crate::ports::store::read_json;
pub use inputs::{InputInfo, ReadBudget};
pub use passes::TimeLimit;

#[derive(Debug)]
pub enum MergeOutcome {
    /// This run merged the task and staged the result.
    Staged(TaskManifest),
    /// An earlier run had already staged it; nothing was redone.
    AlreadyStaged(TaskManifest),
    /// The task was already committed or abandoned.
    Decided(Verdict),
    /// A partition sorted in passes stopped between two steps: the time left did not allow
    /// the next one. Running the task again continues after its last finished step.
    Paused {
        steps_done: usize,
        steps_left: usize,
    },
}

impl MergeOutcome {
    pub fn manifest(&self) -> Option<&TaskManifest> {
        match self {
            MergeOutcome::Staged(m) | MergeOutcome::AlreadyStaged(m) => Some(m),
            MergeOutcome::Decided(_) | MergeOutcome::Paused { .. } => None,
        }
    }
}

pub struct Merger {
    store: Arc<dyn ObjectStore>,
    scratch: PathBuf,
    progress: Arc<dyn Progress>,
    /// Where export tasks read their range from (hot datasets only).
    hot: Option<Arc<dyn HotSource>>,
    /// On Lambda: when the invocation ends, so a sort in passes stops between steps in time.
    time_limit: Option<TimeLimit>,
    /// Plans the expressions of rewrite tasks (delete, update).
    row_changes: Option<Arc<dyn crate::ports::rows::RowChanges>>,
}

impl Merger {
    /// `scratch` is where sort mode spills runs (the system temp dir or Lambda's `/tmp`).
    pub fn new(store: Arc<dyn ObjectStore>, scratch: PathBuf, progress: Arc<dyn Progress>) -> Self {
        Self {
            store,
            scratch,
            progress,
            hot: None,
            time_limit: None,
            row_changes: None,
        }
    }

    /// Lets the merger run rewrite tasks (delete, update) with these expressions.
    pub fn with_row_changes(
        mut self,
        changes: Option<Arc<dyn crate::ports::rows::RowChanges>>,
    ) -> Self {
        self.row_changes = changes;
        self
    }

    /// Stops a sort in passes between two steps when the next would not end before the limit.
    pub fn with_time_limit(mut self, limit: Option<TimeLimit>) -> Self {
        self.time_limit = limit;
        self
    }

    /// Lets the merger run export tasks of hot datasets.
    pub fn with_hot_source(mut self, hot: Option<Arc<dyn HotSource>>) -> Self {
        self.hot = hot;
        self
    }

    pub async fn run(&self, task: Arc<Task>) -> Result<MergeOutcome> {
        let store = self.store.as_ref();
        if let Some(decision) = read_json::<Decision>(store, &task.staging_key(DECISION)).await? {
            return Ok(MergeOutcome::Decided(decision.verdict));
        }
        if let Some(manifest) =
            read_json::<TaskManifest>(store, &task.staging_key(MANIFEST)).await?
        {
            // A previous run got as far as the manifest; finish its work.
            self.verify_staged(&manifest).await?;
            self.mark_success(&task).await?;
            return Ok(MergeOutcome::AlreadyStaged(manifest));
        }
        let attempt = self.next_attempt(&task).await?;
        let started = std::time::Instant::now();
        let mut manifest = match &task.kind {
            TaskKind::MergeFiles if self.sorts_in_passes(&task).await? => {
                match self.sort_in_passes(&task).await? {
                    passes::Passes::Done(manifest) => *manifest,
                    passes::Passes::Paused {
                        steps_done,
                        steps_left,
                    } => {
                        return Ok(MergeOutcome::Paused {
                            steps_done,
                            steps_left,
                        })
                    }
                }
            }
            TaskKind::MergeFiles => self.merge(&task, attempt).await?,
            TaskKind::ExportRange(spec) => self.export(&task, spec, attempt).await?,
            TaskKind::Rewrite(spec) => self.rewrite(&task, spec, attempt).await?,
            TaskKind::SortStep(step) => {
                return Err(Error::Other(format!(
                    "{} is a step of task {}, which runs its steps itself; run the task",
                    step.name, task.task_id
                )))
            }
            TaskKind::RepartitionWrite(_) => {
                return Err(Error::Other(format!(
                    "task {} is a repartition's write task: services::repartition::write_group runs it (nothing of it is committed)",
                    task.task_id
                )))
            }
        };
        if manifest.merge_ms == 0 {
            // A sort in passes adds up its steps' times instead.
            manifest.merge_ms = started.elapsed().as_millis() as u64;
        }
        let (manifest, ours) = self.stage_manifest(&task, manifest).await?;
        if !ours {
            // A concurrent run of the same task staged first; its result stands.
            return Ok(MergeOutcome::AlreadyStaged(manifest));
        }
        self.mark_success(&task).await?;
        crash_point("after-merge");
        Ok(MergeOutcome::Staged(manifest))
    }

    /// Records a merged task (or step) with its create-if-absent manifest. A concurrent run of
    /// the same task that recorded first wins: this run's outputs are discarded and the winner's
    /// manifest returned (false).
    async fn stage_manifest(
        &self,
        task: &Task,
        manifest: TaskManifest,
    ) -> Result<(TaskManifest, bool)> {
        let outputs = manifest.outputs.clone();
        let (standing, ours) =
            put_json_once(self.store.as_ref(), &task.staging_key(MANIFEST), manifest).await?;
        if !ours {
            self.discard(&outputs).await;
        }
        Ok((standing, ours))
    }

    async fn next_attempt(&self, task: &Task) -> Result<u32> {
        let listing = list_all(self.store.as_ref(), &task.task_dir(), Some('/')).await?;
        let previous = listing
            .objects
            .iter()
            .filter_map(|o| {
                let name = file_name(&o.key);
                name.strip_prefix('a')?
                    .split('-')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        Ok(previous + 1)
    }

    async fn verify_staged(&self, manifest: &TaskManifest) -> Result<()> {
        for output in &manifest.outputs {
            match self.store.head(&output.staging_key).await? {
                Some(m) if m.size == output.size => {}
                _ => {
                    return Err(Error::Manifest {
                        key: output.staging_key.clone(),
                        message: "listed in the manifest but missing or of the wrong size; delete the task directory to re-run it".into(),
                    })
                }
            }
        }
        Ok(())
    }

    async fn mark_success(&self, task: &Task) -> Result<()> {
        match self
            .store
            .put(
                &task.staging_key(SUCCESS),
                bytes::Bytes::new(),
                PutMode::IfAbsent,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_precondition_failed() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn discard(&self, outputs: &[OutputFile]) {
        discard_staged(self.store.as_ref(), outputs).await;
    }
}

/// The manifest of a staged task.
fn task_manifest(
    task: &Task,
    attempt: u32,
    inputs: Vec<crate::model::object::ObjectMeta>,
    skipped: Vec<SkippedInput>,
    outputs: Vec<OutputFile>,
    output_schema: &SchemaRef,
    export: Option<crate::model::hot::export::ExportRecord>,
) -> TaskManifest {
    TaskManifest {
        format_version: FORMAT_VERSION,
        task_id: task.task_id.clone(),
        dataset: task.partition.dataset.clone(),
        partition: task.partition.partition.clone(),
        generation: task.generation,
        attempt,
        mode: task.dataset.mode,
        rows: outputs.iter().map(|o| o.rows).sum(),
        inputs,
        skipped,
        outputs,
        schema: output_schema
            .fields()
            .iter()
            .map(|f| ColumnDesc {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect(),
        created_at_ms: crate::support::clock::now_ms(),
        merge_ms: 0,
        sort: None,
        samples: None,
        seq_start: None,
        export,
        rewrite: None,
    }
}
