//! The merger side of a hot dataset: one range's new cold copy, staged.
//!
//! 1. An unfinished commit of the range stops the export (it is finished first).
//! 2. The range's ledger is fenced at this export's generation and every delete in flight is
//!    resolved, so the snapshot below sees exactly the rows no delete removed.
//! 3. The range streams out of Postgres from one snapshot into staged Parquet files of
//!    `chunk_size` rows, hashed row by row into its digest and delete batches.
//! 4. Rows that already left Postgres but share a file with rows that did not are rewritten
//!    into files of their own (carried); files whose rows all left stay as they are.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use super::{task_manifest, Merger};
use crate::error::{Error, Result};
use crate::format::io::StoreReader;
use crate::format::writer::writer_properties;
use crate::format::writer::RollingWriter;
use crate::model::batch::BatchSink;
use crate::model::hot::export::{ExportRecord, ExportSpec};
use crate::model::hot::ledger::{CarryPlan, LedgerFile};
use crate::model::manifest::check_versions;
use crate::model::manifest::TaskManifest;
use crate::model::manifest::{Decision, OutputFile, SkippedInput, Verdict};
use crate::model::object::ObjectMeta;
use crate::model::task::{partition_staging_dir, Task, DECISION};
use crate::ports::hot::HotSource;
use crate::ports::store::{current_versions, read_json};
use crate::ports::store::{list_all, ObjectStore};

/// A staged export: its outputs, the earlier files it replaces, and its record.
pub struct StagedExport {
    pub outputs: Vec<OutputFile>,
    pub replaced: Vec<ObjectMeta>,
    pub changed: Vec<SkippedInput>,
    pub record: ExportRecord,
    pub schema: SchemaRef,
}

/// What the export sends the writer task.
enum ToWriter {
    Batch(RecordBatch),
    /// Postgres sent this many rows in all: close the files if they hold exactly these.
    Finish {
        rows: u64,
    },
}

/// Hands each batch to the writer task, counting rows.
struct ExportSink {
    to_writer: mpsc::Sender<ToWriter>,
    /// Set when the writer task stopped taking batches (it failed; its error says why).
    writer_gone: bool,
    rows: u64,
}

#[async_trait]
impl BatchSink for ExportSink {
    async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.to_writer
            .send(ToWriter::Batch(batch))
            .await
            .map_err(|_| {
                self.writer_gone = true;
                Error::Other("the Parquet writer stopped".into())
            })
    }
}

/// Encodes and uploads what the export sends, on a task of its own: the export decodes the
/// next rows while the previous ones are compressed. Anything but a matching `Finish` (an
/// error, the export giving up) discards every file written.
async fn write_all(
    mut writer: RollingWriter,
    mut batches: mpsc::Receiver<ToWriter>,
) -> Result<Vec<OutputFile>> {
    let mut rows = 0u64;
    while let Some(message) = batches.recv().await {
        match message {
            ToWriter::Batch(batch) => {
                rows += batch.num_rows() as u64;
                if let Err(e) = writer.write(&batch).await {
                    writer.abort().await;
                    return Err(e);
                }
            }
            ToWriter::Finish { rows: sent } if sent == rows => return writer.finish().await,
            ToWriter::Finish { rows: sent } => {
                writer.abort().await;
                return Err(Error::Other(format!(
                    "Postgres sent {sent} rows but {rows} reached the files; nothing was staged"
                )));
            }
        }
    }
    writer.abort().await;
    Err(Error::Other(
        "the export stopped before its end; nothing was staged".into(),
    ))
}

/// Everything an export needs from the merger.
pub struct ExportJob<'a> {
    pub store: Arc<dyn ObjectStore>,
    pub source: &'a dyn HotSource,
    pub task: &'a Arc<Task>,
    pub spec: &'a ExportSpec,
    pub attempt: u32,
    pub props: WriterProperties,
    /// Bytes of values per Arrow batch.
    pub batch_bytes: u64,
}

impl ExportJob<'_> {
    fn writer(&self, schema: SchemaRef, first_index: usize) -> RollingWriter {
        RollingWriter::new(
            Arc::clone(&self.store),
            Arc::clone(self.task),
            self.attempt,
            schema,
            self.props.clone(),
        )
        .with_rows_per_file(self.spec.hot.chunk_size)
        .with_first_index(first_index)
    }
}

/// Exports `job.spec.range` (see the module documentation).
pub async fn export_range(job: ExportJob<'_>) -> Result<StagedExport> {
    let hot = &job.spec.hot;
    let dir = hot.range_dir(job.spec.range);
    refuse_if_a_commit_is_unfinished(job.store.as_ref(), job.task).await?;
    let ledger = crate::services::hot_delete::prepare_export(
        job.store.as_ref(),
        job.source,
        hot,
        &dir,
        job.task.generation,
    )
    .await?;
    let (plan, rows_deleted_before) = match &ledger {
        Some(ledger) => (
            ledger.carry_plan().ok_or_else(|| {
                Error::Other(format!(
                    "range {} of {:?} still has a delete in flight after resolving it; retry",
                    job.spec.range, hot.name
                ))
            })?,
            ledger.rows_deleted,
        ),
        None if job.spec.legacy_moved => {
            tracing::warn!(dataset = hot.name, range = %job.spec.range, "range exported by an earlier version whose rows left Postgres: its files are kept as they are");
            let mut keep = Vec::new();
            for input in &job.task.inputs {
                let footer = crate::format::io::read_footer(job.store.as_ref(), &input.key).await?;
                keep.push(LedgerFile {
                    key: input.key.clone(),
                    rows: footer.file_metadata().num_rows().max(0) as u64,
                });
            }
            (
                CarryPlan {
                    keep,
                    ..CarryPlan::default()
                },
                0,
            )
        }
        None => (CarryPlan::default(), 0),
    };
    let kept: std::collections::HashSet<&str> = plan.keep.iter().map(|f| f.key.as_str()).collect();
    let replace: Vec<ObjectMeta> = job
        .task
        .inputs
        .iter()
        .filter(|i| !kept.contains(i.key.as_str()))
        .cloned()
        .collect();
    let current = current_versions(job.store.as_ref(), &replace).await?;
    let (replaced, changed) = check_versions(&replace, &current);
    if let Some(c) = changed.first() {
        return Err(Error::Other(format!(
            "file {} of range {} changed since it was planned ({}); the range is planned again",
            c.key, job.spec.range, c.reason
        )));
    }

    let (outputs, exported, schema, columns) = export_rows(&job).await?;
    let segment: Vec<LedgerFile> = outputs
        .iter()
        .map(|o| LedgerFile {
            key: o.final_key.clone(),
            rows: o.rows,
        })
        .collect();
    let mut all_outputs = outputs;
    let mut carried = Vec::new();
    for (key, intervals) in &plan.carry {
        let meta = replaced.iter().find(|m| &m.key == key).ok_or_else(|| {
            Error::Other(format!(
                "file {key} holds rows that left Postgres but is not among the range's files; \
                 nothing was staged (investigate before re-running)"
            ))
        })?;
        let written = carry_rows(&job, meta, intervals, all_outputs.len()).await?;
        carried.extend(written.iter().map(|o| LedgerFile {
            key: o.final_key.clone(),
            rows: o.rows,
        }));
        all_outputs.extend(written);
    }
    let record = ExportRecord {
        hot: hot.clone(),
        range: job.spec.range,
        columns,
        plan,
        carried,
        segment,
        digest: exported.digest,
        batches: exported.batches,
        rows_deleted_before,
    };
    Ok(StagedExport {
        outputs: all_outputs,
        replaced,
        changed,
        record,
        schema,
    })
}

/// Another task of the same range that was decided but not finished must be finished (by the
/// planner's recovery) before a new export may look at the range.
async fn refuse_if_a_commit_is_unfinished(store: &dyn ObjectStore, task: &Task) -> Result<()> {
    let dir = partition_staging_dir(&task.staging_prefix, &task.partition);
    let listing = list_all(store, &dir, None).await?;
    for object in listing.objects {
        let Some(task_dir) = object.key.strip_suffix(DECISION) else {
            continue;
        };
        if task_dir == task.task_dir() {
            continue;
        }
        if let Some(decision) = read_json::<Decision>(store, &object.key).await? {
            if decision.verdict == Verdict::Commit {
                return Err(Error::Other(format!(
                    "an earlier commit of {} ({task_dir}) is unfinished; the next run finishes it \
                     first, then exports the range again (nothing was staged)",
                    task.partition
                )));
            }
        }
    }
    Ok(())
}

/// Streams the range out of Postgres into staged files.
async fn export_rows(
    job: &ExportJob<'_>,
) -> Result<(
    Vec<OutputFile>,
    crate::model::hot::cold::ExportedRows,
    SchemaRef,
    Vec<String>,
)> {
    let hot = &job.spec.hot;
    let columns = job.source.columns(hot).await?;
    let schema: SchemaRef = Arc::new(Schema::new(
        columns.iter().map(|c| c.field()).collect::<Vec<_>>(),
    ));
    let (to_writer, batches) = mpsc::channel(2);
    let writing = tokio::spawn(write_all(job.writer(Arc::clone(&schema), 0), batches));
    let mut sink = ExportSink {
        to_writer,
        writer_gone: false,
        rows: 0,
    };
    let exported = job
        .source
        .export(hot, job.spec.range, &columns, job.batch_bytes, &mut sink)
        .await
        .and_then(|exported| {
            if exported.digest.rows == sink.rows {
                Ok(exported)
            } else {
                Err(Error::Other(format!(
                    "export of {} {}: Postgres sent {} rows but {} were counted; nothing was staged",
                    hot.name, job.spec.range, exported.digest.rows, sink.rows
                )))
            }
        });
    if let Ok(exported) = &exported {
        // A closed channel means the writer failed; its own error says why.
        let _ = sink
            .to_writer
            .send(ToWriter::Finish {
                rows: exported.digest.rows,
            })
            .await;
    }
    let ExportSink {
        to_writer,
        writer_gone,
        ..
    } = sink;
    drop(to_writer);
    let written = writing
        .await
        .map_err(|e| Error::Other(format!("the Parquet writer task failed: {e}")))?;
    let (exported, outputs) = match (exported, written) {
        (Ok(exported), Ok(outputs)) => (exported, outputs),
        (Ok(_), Err(e)) => return Err(e),
        // When the export only saw the writer stop, the writer's error is the cause.
        (Err(_), Err(e)) if writer_gone => return Err(e),
        (Err(e), _) => return Err(e),
    };
    let names = columns.into_iter().map(|c| c.name).collect();
    Ok((outputs, exported, schema, names))
}

/// Rewrites rows `intervals` of `file` (rows that left Postgres) into new staged files, with
/// the file's own schema, numbered from `first_index`.
async fn carry_rows(
    job: &ExportJob<'_>,
    file: &ObjectMeta,
    intervals: &[(u64, u64)],
    first_index: usize,
) -> Result<Vec<OutputFile>> {
    let reader = StoreReader::ranged(Arc::clone(&job.store), file);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| Error::parquet(&file.key, e))?;
    let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let mut selectors = Vec::new();
    let mut at = 0;
    for &(start, end) in intervals {
        if start < at || end > total || start >= end {
            return Err(Error::Other(format!(
                "file {} has {total} rows; its ledger names rows {start}..{end}: nothing was staged",
                file.key
            )));
        }
        if start > at {
            selectors.push(RowSelector::skip((start - at) as usize));
        }
        selectors.push(RowSelector::select((end - start) as usize));
        at = end;
    }
    let wanted: u64 = intervals.iter().map(|(s, e)| e - s).sum();
    let schema = Arc::clone(builder.schema());
    let mut stream = builder
        .with_row_selection(RowSelection::from(selectors))
        .build()
        .map_err(|e| Error::parquet(&file.key, e))?;
    let mut writer = job.writer(schema, first_index);
    let mut rows = 0;
    loop {
        let batch = match stream.try_next().await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => {
                writer.abort().await;
                return Err(Error::parquet(&file.key, e));
            }
        };
        rows += batch.num_rows() as u64;
        if let Err(e) = writer.write(&batch).await {
            writer.abort().await;
            return Err(e);
        }
    }
    if rows != wanted {
        writer.abort().await;
        return Err(Error::Other(format!(
            "carrying {wanted} rows of {} read {rows}; nothing was staged",
            file.key
        )));
    }
    writer.finish().await
}

impl Merger {
    /// Exports the task's range from Postgres into staged outputs; the range's current files
    /// (the task's inputs) are what the commit replaces.
    pub(super) async fn export(
        &self,
        task: &Arc<Task>,
        spec: &ExportSpec,
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
        let staged = export_range(ExportJob {
            store: Arc::clone(&self.store),
            source,
            task,
            spec,
            attempt,
            props: writer_properties(&task.dataset, None)?,
            batch_bytes: task.memory_budget / 4,
        })
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
}
