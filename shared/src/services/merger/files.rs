//! The [`TaskKind::MergeFiles`](crate::model::task::TaskKind::MergeFiles) kind: the task's input
//! files merged into outputs of about the target size, in concat mode (inputs in order) or sort
//! mode (a global sort through the external sorter, optionally numbered with `seq`). An input
//! found corrupt is left out and the merge tried again without it; inputs rewritten since
//! planning are left for the next round.

use super::inputs::{
    input_stream, scan_footers, CopyRule, InputEvent, InputInfo, ReadBudget, ReadFailure,
};
use super::{task_manifest, Merger};
use crate::error::{Error, Result};
use crate::format::copy::output_descriptor;
use crate::format::sort::{with_seq_column, ExternalSorter, KeyOrder, KeySampler, SeqNumbering};
use crate::format::writer::writer_properties;
use crate::format::writer::RollingWriter;
use crate::model::batch::BatchSink;
use crate::model::dataset::Mode;
use crate::model::manifest::{check_versions, skipped};
use crate::model::manifest::{OutputFile, SkipKind, SkippedInput, SortWork, TaskManifest};
use crate::model::memory::MergeMemory;
use crate::model::passes::{RunSamples, SAMPLE_EVERY};
use crate::model::schema::unify;
use crate::model::task::Task;
use crate::ports::store::current_versions;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use futures::StreamExt;
use parquet::arrow::ArrowSchemaConverter;
use parquet::file::metadata::SortingColumn;
use std::sync::Arc;

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
    /// Merges the task's input files into staged outputs.
    pub(super) async fn merge(&self, task: &Arc<Task>, first_attempt: u32) -> Result<TaskManifest> {
        let store = self.store.as_ref();
        let mut attempt = first_attempt;
        let mut skipped_inputs: Vec<SkippedInput> = Vec::new();

        let current = current_versions(store, &task.inputs).await?;
        let (unchanged, changed) = check_versions(&task.inputs, &current);
        skipped_inputs.extend(changed);
        let copy_rule = match task.dataset.mode {
            Mode::Concat => Some(CopyRule {
                dataset: task.dataset.clone(),
                props: writer_properties(&task.dataset, None)?,
            }),
            Mode::Sort => None,
        };
        let sort_key: &[String] = match task.dataset.mode {
            Mode::Sort => &task.dataset.sort_key,
            Mode::Concat => &[],
        };
        let (mut infos, corrupt) = scan_footers(
            Arc::clone(&self.store),
            unchanged,
            copy_rule.as_ref(),
            sort_key,
        )
        .await?;
        skipped_inputs.extend(corrupt);

        let (schema, (outputs, sort, samples), merged) = loop {
            let schema = self.unified_schema(task, &infos)?;
            let descriptor =
                output_descriptor(&schema).map_err(|e| Error::parquet(&task.task_id, e))?;
            for info in &mut infos {
                info.plan_copies(&schema, &descriptor);
            }
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
            self.discard(&outputs.0).await;
            tracing::info!(task = %task.task_id, changed = changed_during.len(), "inputs changed while merging; merging the rest again without them");
            infos.retain(|i| !changed_during.iter().any(|c| c.key == i.meta.key));
            skipped_inputs.extend(changed_during);
            attempt += 1;
        };

        let output_schema = outputs_schema(task, &schema);
        let mut manifest = task_manifest(
            task,
            attempt,
            merged,
            skipped_inputs,
            outputs,
            &output_schema,
            None,
        );
        manifest.sort = sort;
        manifest.samples = samples;
        Ok(manifest)
    }

    fn unified_schema(&self, task: &Task, infos: &[InputInfo]) -> Result<SchemaRef> {
        let schemas: Vec<(String, SchemaRef)> = infos
            .iter()
            .map(|i| (i.meta.key.clone(), Arc::clone(&i.schema)))
            .collect();
        // A previous sort-mode output carries the seq column; it is recomputed, never merged.
        let drop: Vec<&str> = task.dataset.seq_column.iter().map(String::as_str).collect();
        unify(&task.partition.to_string(), &schemas, &drop)
    }

    async fn merge_attempt(
        &self,
        task: &Arc<Task>,
        attempt: u32,
        infos: &[InputInfo],
        schema: &SchemaRef,
    ) -> std::result::Result<Merged, AttemptFailure> {
        let mut sink = self.output_sink(task, attempt, schema, 0)?;
        let result = self.feed(task, infos, schema, &mut sink).await;
        match result {
            Ok(sort) => {
                let rows = sink.rows;
                let expected: u64 = infos.iter().map(|i| i.rows).sum();
                let samples = match sink.sampler.take().map(KeySampler::finish).transpose() {
                    Ok(samples) => samples,
                    Err(e) => {
                        sink.writer.abort().await;
                        return Err(e.into());
                    }
                };
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
                Ok((outputs, sort, samples))
            }
            Err(failure) => {
                sink.writer.abort().await;
                Err(failure)
            }
        }
    }

    /// Where a task's merged batches go: its rolling writer (the sort order declared, row
    /// groups sized from the budget, a run step's runs cheap to write and read), `seq` numbered
    /// from `first_seq` when configured, and a run step's key sampler.
    pub(super) fn output_sink(
        &self,
        task: &Arc<Task>,
        attempt: u32,
        schema: &SchemaRef,
        first_seq: u64,
    ) -> Result<OutputSink> {
        let output_schema = outputs_schema(task, schema);
        let sorting = sorting_columns(task, &output_schema);
        let run_step = is_run_step(task);
        // The row group being encoded is the writer's share of the budget; a run step's are
        // as small as a merge step over every run needs them.
        let row_group = match task.kind.sort_step() {
            Some(step) if run_step => step
                .row_group_bytes
                .clamp(1 << 20, task_memory(task).row_group.max(1 << 20)),
            _ => task_memory(task).row_group,
        };
        let mut props = writer_properties(&task.dataset, sorting)?
            .into_builder()
            .set_max_row_group_bytes(Some(row_group as usize));
        if run_step {
            // A run is read once, by the merge steps: cheap to write and to read beats small.
            props = props
                .set_compression(parquet::basic::Compression::LZ4_RAW)
                .set_dictionary_enabled(false)
                .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None);
        }
        let writer = RollingWriter::new(
            Arc::clone(&self.store),
            Arc::clone(task),
            attempt,
            output_schema,
            props.build(),
        );
        let sampler = match run_step {
            true => Some(KeySampler::new(
                KeyOrder::new(Arc::clone(schema), &task.dataset.sort_key)?,
                SAMPLE_EVERY,
            )),
            false => None,
        };
        Ok(OutputSink {
            sampler,
            numbering: seq_column(task).map(|seq| {
                let (schema, position) = with_seq_column(schema, &task.dataset.sort_key, seq);
                SeqNumbering {
                    schema,
                    position,
                    next: first_seq as i64,
                }
            }),
            writer,
            rows: 0,
        })
    }

    async fn feed(
        &self,
        task: &Task,
        infos: &[InputInfo],
        schema: &SchemaRef,
        sink: &mut OutputSink,
    ) -> std::result::Result<Option<SortWork>, AttemptFailure> {
        let memory = task_memory(task);
        let budget = ReadBudget::new(memory.read_ahead);
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
                memory.sort_run,
                memory.merge,
                &self.scratch,
            )?),
            Mode::Concat => None,
        };
        // Inputs come one after the other; one whose footer declares the sort key is taken as
        // a run as it is, as long as its rows are in order.
        let declared_sorted = |index: usize| infos.get(index).is_some_and(|i| i.sorted_by_key);
        let mut in_order = declared_sorted(0);
        while let Some(event) = events.next().await {
            match event {
                Ok(InputEvent::Batch(batch)) => match sorter.as_mut() {
                    Some(sorter) if in_order => in_order = sorter.push_in_order(batch)?,
                    Some(sorter) => sorter.push(batch)?,
                    None => sink.push(batch).await?,
                },
                Ok(InputEvent::Copy { index, group }) => {
                    sink.rows += group.rows;
                    let key = group.key.clone();
                    match sink.writer.copy_row_group(group).await {
                        Ok(()) => {}
                        // The input shrank or vanished since its footer was read: it was
                        // rewritten or removed, which the merge loop tells from corruption.
                        Err(Error::CorruptInput { key: k, reason }) if k == key => {
                            return Err(AttemptFailure::Corrupt { index, reason })
                        }
                        Err(Error::NotFound { key: k }) if k == key => {
                            return Err(AttemptFailure::Corrupt {
                                index,
                                reason: "vanished while its row groups were copied".into(),
                            })
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(InputEvent::Done { index }) => {
                    if let Some(sorter) = sorter.as_mut() {
                        sorter.end_in_order()?;
                    }
                    in_order = declared_sorted(index + 1);
                    self.progress.input_read(infos[index].meta.size)
                }
                Err(ReadFailure::Corrupt { index, reason }) => {
                    return Err(AttemptFailure::Corrupt { index, reason })
                }
                Err(ReadFailure::Other(e)) => return Err(e.into()),
            }
        }
        match sorter {
            Some(sorter) => {
                tracing::debug!(task = %task.task_id, rows = sorter.rows_seen(), runs = sorter.spilled_runs(), "merging sorted runs");
                Ok(Some(sorter.finish(sink).await?))
            }
            None => Ok(None),
        }
    }
}

/// How the task's memory budget is shared by its buffers.
pub(super) fn task_memory(task: &Task) -> MergeMemory {
    MergeMemory::split(
        task.memory_budget,
        task.dataset.mode == Mode::Sort,
        task.dataset.row_group_size.bytes(),
    )
}

/// Outputs, what the sort did, and a run step's sampled keys.
type Merged = (Vec<OutputFile>, Option<SortWork>, Option<RunSamples>);

/// Is `task` a run step of a sort in passes (its outputs are sorted runs, not final files)?
fn is_run_step(task: &Task) -> bool {
    task.kind.sort_step().is_some_and(|s| s.merge.is_none())
}

/// The `seq` column the outputs are numbered in, if any: a run step's are not (its rows are
/// numbered by the merge steps).
pub(super) fn seq_column(task: &Task) -> Option<&String> {
    match is_run_step(task) {
        true => None,
        false => task.dataset.seq_column.as_ref(),
    }
}

/// The schema of the outputs: the unified input schema, plus `seq` when configured.
pub(super) fn outputs_schema(task: &Task, schema: &SchemaRef) -> SchemaRef {
    match seq_column(task) {
        Some(seq) => with_seq_column(schema, &task.dataset.sort_key, seq).0,
        None => Arc::clone(schema),
    }
}

/// Declares the sort order in the footer (sort mode), for engines that use it.
fn sorting_columns(task: &Task, schema: &SchemaRef) -> Option<Vec<SortingColumn>> {
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

/// Where merged batches go: numbered with `seq` if configured, sampled in a run step, written.
pub(super) struct OutputSink {
    pub writer: RollingWriter,
    pub numbering: Option<SeqNumbering>,
    pub sampler: Option<KeySampler>,
    pub rows: u64,
}

#[async_trait]
impl BatchSink for OutputSink {
    async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        if let Some(sampler) = self.sampler.as_mut() {
            sampler.observe(&batch)?;
        }
        let batch = match self.numbering.as_mut() {
            Some(numbering) => numbering.number(batch)?,
            None => batch,
        };
        self.writer.write(&batch).await
    }
}
