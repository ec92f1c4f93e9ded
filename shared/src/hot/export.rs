//! The merger side of a hot dataset: one range streamed out of Postgres into staged Parquet
//! files of `chunk_size` rows, with the per-batch row counts the committer's delete checks.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, Schema, SchemaRef};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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

/// Counts each row's range value, then writes the batch.
struct ExportSink {
    writer: RollingWriter,
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
        self.writer.write(&batch).await
    }
}

/// Exports `spec.range` through `writer`: the columns are checked first (an unsupported type
/// fails before any file is written), then the rows stream out of one snapshot.
pub async fn export_range(
    source: &dyn HotSource,
    spec: &ExportSpec,
    fetch_bytes: u64,
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
    let mut sink = ExportSink {
        writer: make_writer(Arc::clone(&schema)),
        histogram: RangeHistogram::new(spec.range),
        range_column,
        rows: 0,
    };
    let exported = source
        .export(hot, spec.range, &columns, fetch_bytes, &mut sink)
        .await;
    let rows = match exported {
        Ok(rows) => rows,
        Err(e) => {
            sink.writer.abort().await;
            return Err(e);
        }
    };
    if rows != sink.rows || rows != sink.histogram.total() {
        sink.writer.abort().await;
        return Err(Error::Other(format!(
            "export of {} {}: Postgres sent {rows} rows but {} reached the files; nothing was staged",
            hot.name, spec.range, sink.rows
        )));
    }
    let outputs = sink.writer.finish().await?;
    let record = ExportRecord {
        hot: hot.clone(),
        range: spec.range,
        batches: sink.histogram.delete_batches(hot.delete_batch_rows),
    };
    Ok((outputs, record, schema))
}
