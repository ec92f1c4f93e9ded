//! The merger service: runs one merge task — reads its inputs, writes merged outputs of about the
//! target size into staging, then `_manifest.json`, then `_SUCCESS`. Replaying a task is safe:
//! a task already staged or decided is not merged again, and concurrent runs of the same task
//! race on the create-if-absent manifest, so exactly one result stands.

pub mod export;
mod inputs;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use futures::StreamExt;
use parquet::arrow::ArrowSchemaConverter;
use parquet::file::metadata::SortingColumn;

use crate::error::{Error, Result};
use crate::model::dataset::Mode;
use crate::model::manifest::{
    to_json, ColumnDesc, Decision, OutputFile, SkipKind, SkippedInput, TaskManifest, Verdict,
    FORMAT_VERSION,
};
use crate::model::object::file_name;
use crate::model::schema::unify;
use crate::model::task::{MergeTask, DECISION, MANIFEST, SUCCESS};
use crate::ports::hot::HotSource;
use crate::ports::store::{list_all, DeleteRequest, ObjectStore, PutMode};
use crate::support::faults::crash_point;
use crate::support::progress::Progress;

use crate::format::sort::{with_seq_column, ExternalSorter, SeqNumbering};
use crate::format::writer::writer_properties;
use crate::format::writer::RollingWriter;
use crate::model::batch::BatchSink;
use crate::model::manifest::{check_versions, skipped};
use crate::ports::store::current_versions;
use crate::ports::store::read_json;
use inputs::{input_stream, scan_footers, InputEvent, ReadFailure};
pub use inputs::{InputInfo, ReadBudget};

#[derive(Debug)]
pub enum MergeOutcome {
    /// This run merged the task and staged the result.
    Staged(TaskManifest),
    /// An earlier run had already staged it; nothing was redone.
    AlreadyStaged(TaskManifest),
    /// The task was already committed or abandoned.
    Decided(Verdict),
}

impl MergeOutcome {
    pub fn manifest(&self) -> Option<&TaskManifest> {
        match self {
            MergeOutcome::Staged(m) | MergeOutcome::AlreadyStaged(m) => Some(m),
            MergeOutcome::Decided(_) => None,
        }
    }
}

pub struct Merger {
    store: Arc<dyn ObjectStore>,
    scratch: PathBuf,
    progress: Arc<dyn Progress>,
    /// Where export tasks read their range from (hot datasets only).
    hot: Option<Arc<dyn HotSource>>,
}

enum AttemptFailure {
    Corrupt { index: usize, reason: String },
    Failed(Error),
}

impl From<Error> for AttemptFailure {
    fn from(e: Error) -> Self {
        AttemptFailure::Failed(e)
    }
}

impl Merger {
    /// `scratch` is where sort mode spills runs (the system temp dir or Lambda's `/tmp`).
    pub fn new(store: Arc<dyn ObjectStore>, scratch: PathBuf, progress: Arc<dyn Progress>) -> Self {
        Self {
            store,
            scratch,
            progress,
            hot: None,
        }
    }

    /// Lets the merger run export tasks of hot datasets.
    pub fn with_hot_source(mut self, hot: Option<Arc<dyn HotSource>>) -> Self {
        self.hot = hot;
        self
    }

    pub async fn run(&self, task: Arc<MergeTask>) -> Result<MergeOutcome> {
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
        let manifest = match &task.export {
            Some(spec) => self.export(&task, spec, attempt).await?,
            None => self.merge(&task, attempt).await?,
        };
        match self
            .store
            .put(
                &task.staging_key(MANIFEST),
                to_json(&manifest),
                PutMode::IfAbsent,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_precondition_failed() => {
                // A concurrent run of the same task staged first; its result stands.
                self.discard(&manifest.outputs).await;
                let winner = read_json::<TaskManifest>(store, &task.staging_key(MANIFEST))
                    .await?
                    .ok_or_else(|| Error::Manifest {
                        key: task.staging_key(MANIFEST),
                        message: "vanished after a concurrent write".into(),
                    })?;
                return Ok(MergeOutcome::AlreadyStaged(winner));
            }
            Err(e) => return Err(e),
        }
        self.mark_success(&task).await?;
        crash_point("after-merge");
        Ok(MergeOutcome::Staged(manifest))
    }

    /// Merges the task's input files into staged outputs.
    async fn merge(&self, task: &Arc<MergeTask>, first_attempt: u32) -> Result<TaskManifest> {
        let store = self.store.as_ref();
        let mut attempt = first_attempt;
        let mut skipped_inputs: Vec<SkippedInput> = Vec::new();

        let current = current_versions(store, &task.inputs).await?;
        let (unchanged, changed) = check_versions(&task.inputs, &current);
        skipped_inputs.extend(changed);
        let (mut infos, corrupt) = scan_footers(Arc::clone(&self.store), unchanged).await?;
        skipped_inputs.extend(corrupt);

        let (schema, outputs, merged) = loop {
            let schema = self.unified_schema(task, &infos)?;
            let outputs = match self.merge_attempt(task, attempt, &infos, &schema).await {
                Ok(outputs) => outputs,
                Err(AttemptFailure::Corrupt { index, reason }) => {
                    let info = infos.remove(index);
                    // A file rewritten while it was read looks corrupt but is only new: it is
                    // left for the next round instead of being quarantined.
                    let now = current_versions(store, std::slice::from_ref(&info.meta)).await?;
                    let (_, changed) = check_versions(std::slice::from_ref(&info.meta), &now);
                    match changed.into_iter().next() {
                        Some(changed) => {
                            tracing::info!(task = %task.task_id, key = %info.meta.key, "input changed while it was read; it is left for the next round");
                            skipped_inputs.push(changed);
                        }
                        None => {
                            tracing::warn!(task = %task.task_id, key = %info.meta.key, %reason, "input is corrupt; skipping it and merging the rest again");
                            skipped_inputs.push(skipped(&info.meta, SkipKind::Unreadable, reason));
                        }
                    }
                    attempt += 1;
                    continue;
                }
                Err(AttemptFailure::Failed(e)) => return Err(e),
            };
            // An input rewritten during the merge is left for the next round, and the rest
            // merged again without it: its outputs would hold the old content.
            let merged: Vec<_> = infos.iter().map(|i| i.meta.clone()).collect();
            let after = current_versions(store, &merged).await?;
            let (_, changed_during) = check_versions(&merged, &after);
            if changed_during.is_empty() {
                break (schema, outputs, merged);
            }
            self.discard(&outputs).await;
            tracing::info!(task = %task.task_id, changed = changed_during.len(), "inputs changed while merging; merging the rest again without them");
            infos.retain(|i| !changed_during.iter().any(|c| c.key == i.meta.key));
            skipped_inputs.extend(changed_during);
            attempt += 1;
        };

        let output_schema = outputs_schema(task, &schema);
        Ok(task_manifest(
            task,
            attempt,
            merged,
            skipped_inputs,
            outputs,
            &output_schema,
            None,
        ))
    }

    /// Exports the task's range from Postgres into staged outputs; the range's current files
    /// (the task's inputs) are what the commit replaces.
    async fn export(
        &self,
        task: &Arc<MergeTask>,
        spec: &crate::model::hot::export::ExportSpec,
        attempt: u32,
    ) -> Result<TaskManifest> {
        let source = self.hot.as_deref().ok_or_else(|| {
            Error::config(
                "COMPACTOR_PG_DSN",
                format!(
                    "task {} exports hot dataset {:?} but this merger has no Postgres connection; \
                     configure the DSN (environment variable, or COMPACTOR_PG_SECRET_ARN / \
                     COMPACTOR_PG_DSN_PARAMETER on Lambda)",
                    task.task_id, spec.hot.name
                ),
            )
        })?;
        let staged = crate::services::merger::export::export_range(
            crate::services::merger::export::ExportJob {
                store: Arc::clone(&self.store),
                source,
                task,
                spec,
                attempt,
                props: writer_properties(&task.dataset, None)?,
                batch_bytes: task.memory_budget / 4,
            },
        )
        .await?;
        self.progress
            .input_read(staged.outputs.iter().map(|o| o.size).sum());
        Ok(task_manifest(
            task,
            attempt,
            staged.replaced,
            staged.changed,
            staged.outputs,
            &staged.schema,
            Some(staged.record),
        ))
    }

    fn unified_schema(&self, task: &MergeTask, infos: &[InputInfo]) -> Result<SchemaRef> {
        let schemas: Vec<(String, SchemaRef)> = infos
            .iter()
            .map(|i| (i.meta.key.clone(), Arc::clone(&i.schema)))
            .collect();
        // A previous sort-mode output carries the seq column; it is recomputed, never merged.
        let drop: Vec<&str> = task.dataset.seq_column.iter().map(String::as_str).collect();
        unify(&task.partition.to_string(), &schemas, &drop)
    }

    async fn next_attempt(&self, task: &MergeTask) -> Result<u32> {
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

    async fn merge_attempt(
        &self,
        task: &Arc<MergeTask>,
        attempt: u32,
        infos: &[InputInfo],
        schema: &SchemaRef,
    ) -> std::result::Result<Vec<OutputFile>, AttemptFailure> {
        let output_schema = outputs_schema(task, schema);
        let sorting = sorting_columns(task, &output_schema);
        let props = writer_properties(&task.dataset, sorting)?;
        let writer = RollingWriter::new(
            Arc::clone(&self.store),
            Arc::clone(task),
            attempt,
            Arc::clone(&output_schema),
            props,
        );
        let mut sink = OutputSink {
            numbering: task.dataset.seq_column.as_ref().map(|seq| {
                let (schema, position) = with_seq_column(schema, &task.dataset.sort_key, seq);
                SeqNumbering {
                    schema,
                    position,
                    next: 0,
                }
            }),
            writer,
            rows: 0,
        };
        let result = self.feed(task, infos, schema, &mut sink).await;
        match result {
            Ok(()) => {
                let rows = sink.rows;
                let expected: u64 = infos.iter().map(|i| i.rows).sum();
                let outputs = match sink.writer.finish().await {
                    Ok(o) => o,
                    Err(e) => return Err(e.into()),
                };
                if rows != expected {
                    self.discard(&outputs).await;
                    return Err(Error::Other(format!(
                        "task {} wrote {rows} rows but its inputs' footers declare {expected}; nothing was staged",
                        task.task_id
                    ))
                    .into());
                }
                Ok(outputs)
            }
            Err(failure) => {
                sink.writer.abort().await;
                Err(failure)
            }
        }
    }

    async fn feed(
        &self,
        task: &MergeTask,
        infos: &[InputInfo],
        schema: &SchemaRef,
        sink: &mut OutputSink,
    ) -> std::result::Result<(), AttemptFailure> {
        let budget = ReadBudget::from_memory_budget(task.memory_budget);
        let mut events = input_stream(
            Arc::clone(&self.store),
            infos.to_vec(),
            Arc::clone(schema),
            budget,
        );
        let mut sorter = match task.dataset.mode {
            Mode::Sort => Some(ExternalSorter::new(
                Arc::clone(schema),
                &task.dataset.sort_key,
                task.memory_budget,
                &self.scratch,
            )?),
            Mode::Concat => None,
        };
        while let Some(event) = events.next().await {
            match event {
                Ok(InputEvent::Batch(batch)) => match sorter.as_mut() {
                    Some(sorter) => sorter.push(batch)?,
                    None => sink.push(batch).await?,
                },
                Ok(InputEvent::Done { index }) => self.progress.input_read(infos[index].meta.size),
                Err(ReadFailure::Corrupt { index, reason }) => {
                    return Err(AttemptFailure::Corrupt { index, reason })
                }
                Err(ReadFailure::Other(e)) => return Err(e.into()),
            }
        }
        if let Some(sorter) = sorter {
            tracing::debug!(task = %task.task_id, rows = sorter.rows_seen(), runs = sorter.spilled_runs(), "merging sorted runs");
            sorter.finish(sink).await?;
        }
        Ok(())
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

    async fn mark_success(&self, task: &MergeTask) -> Result<()> {
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
        let requests: Vec<DeleteRequest> = outputs
            .iter()
            .map(|o| DeleteRequest {
                key: o.staging_key.clone(),
                version: None,
            })
            .collect();
        if let Err(e) = self.store.delete_many(&requests).await {
            tracing::warn!(error = %e, "could not delete discarded outputs; the committer removes staging later");
        }
    }
}

/// The manifest of a staged task.
fn task_manifest(
    task: &MergeTask,
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
        export,
    }
}

/// The schema of the outputs: the unified input schema, plus `seq` when configured.
fn outputs_schema(task: &MergeTask, schema: &SchemaRef) -> SchemaRef {
    match &task.dataset.seq_column {
        Some(seq) => with_seq_column(schema, &task.dataset.sort_key, seq).0,
        None => Arc::clone(schema),
    }
}

/// Declares the sort order in the footer (sort mode), for engines that use it.
fn sorting_columns(task: &MergeTask, schema: &SchemaRef) -> Option<Vec<SortingColumn>> {
    if task.dataset.mode != Mode::Sort {
        return None;
    }
    let descr = ArrowSchemaConverter::new().convert(schema).ok()?;
    task.dataset
        .sort_key
        .iter()
        .map(|name| {
            let idx = descr
                .columns()
                .iter()
                .position(|c| c.path().string() == *name)?;
            Some(SortingColumn {
                column_idx: idx as i32,
                descending: false,
                nulls_first: false,
            })
        })
        .collect()
}

struct OutputSink {
    writer: RollingWriter,
    numbering: Option<SeqNumbering>,
    rows: u64,
}

#[async_trait]
impl BatchSink for OutputSink {
    async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        let batch = match self.numbering.as_mut() {
            Some(numbering) => numbering.number(batch)?,
            None => batch,
        };
        self.writer.write(&batch).await
    }
}
