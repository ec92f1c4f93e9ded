//! The merger side of a hot dataset: one range streamed out of Postgres into staged Parquet
//! files of `chunk_size` rows, with the per-batch row counts the committer's delete checks.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, Schema, SchemaRef};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{HotDatasetConfig, HotSource, KeyRange, RangeCount, RangeHistogram};
use crate::error::{Error, Result};
use crate::manifest::OutputFile;
use crate::merge::sort::BatchSink;
use crate::merge::RollingWriter;

/// What an export task exports: carried in the merge task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    pub hot: HotDatasetConfig,
    pub range: KeyRange,
}

/// What an export staged, in the task manifest: the committer deletes from Postgres with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    pub hot: HotDatasetConfig,
    pub range: KeyRange,
    /// Row counts of consecutive sub-ranges tiling `range`: the delete batches.
    pub batches: Vec<RangeCount>,
}

impl ExportRecord {
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.rows).sum()
    }
}

/// What the export sends the writer task.
enum ToWriter {
    Batch(RecordBatch),
    /// Postgres sent this many rows in all: close the files if they hold exactly these.
    Finish {
        rows: u64,
    },
}

/// Counts each row's range value, then hands the batch to the writer task.
struct ExportSink {
    to_writer: mpsc::Sender<ToWriter>,
    /// Set when the writer task stopped taking batches (it failed; its error says why).
    writer_gone: bool,
    histogram: RangeHistogram,
    range_column: usize,
    rows: u64,
}

fn range_values(array: &dyn Array) -> Result<Vec<i64>> {
    Ok(match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().values().to_vec(),
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .values()
            .iter()
            .map(|v| *v as i64)
            .collect(),
        DataType::Int16 => array
            .as_primitive::<Int16Type>()
            .values()
            .iter()
            .map(|v| *v as i64)
            .collect(),
        other => {
            return Err(Error::Other(format!(
                "range column is {other}, not an integer"
            )))
        }
    })
}

#[async_trait]
impl BatchSink for ExportSink {
    async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        let column = batch.column(self.range_column);
        if column.null_count() > 0 {
            return Err(Error::Other(
                "the range column is NULL in an exported row".into(),
            ));
        }
        for value in range_values(column.as_ref())? {
            self.histogram.add(value).map_err(Error::Other)?;
        }
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

/// Exports `spec.range` through `writer`: the columns are checked first (an unsupported type
/// fails before any file is written), then the rows stream out of one snapshot.
pub async fn export_range(
    source: &dyn HotSource,
    spec: &ExportSpec,
    batch_bytes: u64,
    make_writer: impl FnOnce(SchemaRef) -> RollingWriter,
) -> Result<(Vec<OutputFile>, ExportRecord, SchemaRef)> {
    let hot = &spec.hot;
    let columns = source.columns(hot).await?;
    let schema: SchemaRef = Arc::new(Schema::new(
        columns.iter().map(|c| c.field()).collect::<Vec<_>>(),
    ));
    let range_column = columns
        .iter()
        .position(|c| c.name == hot.range_column)
        .ok_or_else(|| {
            Error::config(
                format!("hot_dataset {:?}: columns", hot.name),
                "must include the range column",
            )
        })?;
    let (to_writer, batches) = mpsc::channel(2);
    let writing = tokio::spawn(write_all(make_writer(Arc::clone(&schema)), batches));
    let mut sink = ExportSink {
        to_writer,
        writer_gone: false,
        histogram: RangeHistogram::new(spec.range),
        range_column,
        rows: 0,
    };
    let exported = source
        .export(hot, spec.range, &columns, batch_bytes, &mut sink)
        .await
        .and_then(|rows| {
            if rows == sink.rows && rows == sink.histogram.total() {
                Ok(rows)
            } else {
                Err(Error::Other(format!(
                    "export of {} {}: Postgres sent {rows} rows but {} were counted; nothing was staged",
                    hot.name, spec.range, sink.rows
                )))
            }
        });
    if let Ok(rows) = &exported {
        // A closed channel means the writer failed; its own error says why.
        let _ = sink.to_writer.send(ToWriter::Finish { rows: *rows }).await;
    }
    let ExportSink {
        to_writer,
        writer_gone,
        histogram,
        ..
    } = sink;
    drop(to_writer);
    let written = writing
        .await
        .map_err(|e| Error::Other(format!("the Parquet writer task failed: {e}")))?;
    let outputs = match (exported, written) {
        (Ok(_), Ok(outputs)) => outputs,
        (Ok(_), Err(e)) => return Err(e),
        // When the export only saw the writer stop, the writer's error is the cause.
        (Err(_), Err(e)) if writer_gone => return Err(e),
        (Err(e), _) => return Err(e),
    };
    let record = ExportRecord {
        hot: hot.clone(),
        range: spec.range,
        batches: histogram.delete_batches(hot.delete_batch_rows),
    };
    Ok((outputs, record, schema))
}
