//! Writes merged batches into staged output files of about the target size, each streamed to the
//! store as it is encoded (only the row group being built is held in memory).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::AsyncArrowWriter;
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::error::{Error, Result};
use crate::format::io::SinkWriter;
use crate::model::dataset::DatasetConfig;
use crate::model::manifest::OutputFile;
use crate::model::task::Task;
use crate::ports::store::{DeleteRequest, ObjectStore};

/// Writer settings for outputs: large row groups, the configured codec, page-level statistics
/// (which also writes the column and offset indexes), and the sort order when there is one.
pub fn writer_properties(
    dataset: &DatasetConfig,
    sorting: Option<Vec<SortingColumn>>,
) -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(dataset.parquet_compression()?)
        .set_max_row_group_row_count(Some(dataset.row_group_rows))
        .set_max_row_group_bytes(Some(dataset.row_group_size.bytes() as usize))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Standard Parquet types where Arrow has several (date64 as DATE, list elements named
        // "element"), as other writers and readers expect.
        .set_coerce_types(true)
        .set_sorting_columns(sorting)
        .set_created_by(format!(
            "parquet-compactor {} (parquet-rs)",
            env!("CARGO_PKG_VERSION")
        ))
        .build())
}

struct OpenFile {
    writer: AsyncArrowWriter<SinkWriter>,
    staging_key: String,
    index: usize,
    rows: u64,
}

/// The file's size if closed now. The writer's in-progress estimate counts buffered, not yet
/// compressed data; scaling it by the bytes per row actually written for flushed row groups
/// keeps files close to the target instead of rolling them early.
fn projected_size(writer: &AsyncArrowWriter<SinkWriter>) -> u64 {
    let written = writer.bytes_written() as u64;
    let in_progress = writer.in_progress_size() as u64;
    let flushed_rows: i64 = writer
        .flushed_row_groups()
        .iter()
        .map(|rg| rg.num_rows())
        .sum();
    let pending_rows = writer.in_progress_rows() as u64;
    if flushed_rows <= 0 || pending_rows == 0 || in_progress == 0 {
        return written + in_progress;
    }
    let actual_per_row = written as f64 / flushed_rows as f64;
    let estimated_per_row = in_progress as f64 / pending_rows as f64;
    let ratio = (actual_per_row / estimated_per_row).clamp(0.05, 1.0);
    written + (in_progress as f64 * ratio) as u64
}

pub struct RollingWriter {
    store: Arc<dyn ObjectStore>,
    task: Arc<Task>,
    attempt: u32,
    schema: SchemaRef,
    props: WriterProperties,
    target_size: u64,
    /// Rows after which a file is closed whatever its size (exports' `chunk_size`).
    rows_per_file: Option<u64>,
    current: Option<OpenFile>,
    done: Vec<OutputFile>,
    /// The index of the first file (several writers may stage outputs of one task).
    first_index: usize,
}

impl RollingWriter {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        task: Arc<Task>,
        attempt: u32,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Self {
        let target_size = task.dataset.target_file_size.bytes();
        Self {
            store,
            task,
            attempt,
            schema,
            props,
            target_size,
            rows_per_file: None,
            current: None,
            done: Vec::new(),
            first_index: 0,
        }
    }

    /// Numbers this writer's files from `index` on.
    pub fn with_first_index(mut self, index: usize) -> Self {
        self.first_index = index;
        self
    }

    /// Closes each file after exactly `rows` rows (the last may hold fewer).
    pub fn with_rows_per_file(mut self, rows: u64) -> Self {
        self.rows_per_file = Some(rows.max(1));
        self
    }

    async fn open(&mut self) -> Result<&mut OpenFile> {
        if self.current.is_none() {
            let index = self.first_index + self.done.len();
            let key = self.task.staging_output_key(self.attempt, index);
            let sink = self.store.put_stream(&key).await?;
            let writer = AsyncArrowWriter::try_new(
                SinkWriter::new(key.clone(), sink),
                Arc::clone(&self.schema),
                Some(self.props.clone()),
            )
            .map_err(|e| Error::parquet(&key, e))?;
            self.current = Some(OpenFile {
                writer,
                staging_key: key,
                index,
                rows: 0,
            });
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::Other("output writer vanished".into()))
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let (target, rows_per_file) = (self.target_size, self.rows_per_file);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let file = self.open().await?;
            let room = rows_per_file.map_or(u64::MAX, |max| max - file.rows);
            let take = room.min((batch.num_rows() - offset) as u64) as usize;
            let part = batch.slice(offset, take);
            file.writer
                .write(&part)
                .await
                .map_err(|e| Error::parquet(&file.staging_key, e))?;
            file.rows += take as u64;
            offset += take;
            let full = rows_per_file.is_some_and(|max| file.rows >= max);
            if full || projected_size(&file.writer) >= target {
                self.close_current().await?;
            }
        }
        Ok(())
    }

    async fn close_current(&mut self) -> Result<()> {
        let Some(mut file) = self.current.take() else {
            return Ok(());
        };
        let metadata = file
            .writer
            .finish()
            .await
            .map_err(|e| Error::parquet(&file.staging_key, e))?;
        let sink = file.writer.into_inner();
        let stored = sink.finished().ok_or_else(|| Error::Store {
            operation: "upload",
            key: file.staging_key.clone(),
            message: "upload did not complete".into(),
        })?;
        self.done.push(OutputFile {
            staging_key: file.staging_key.clone(),
            final_key: self.task.final_output_key(file.index),
            size: stored.size,
            rows: file.rows,
            row_groups: metadata.num_row_groups(),
            crc32c: sink.crc32c_hex(),
        });
        Ok(())
    }

    /// Closes the last file and returns every output written.
    pub async fn finish(mut self) -> Result<Vec<OutputFile>> {
        self.close_current().await?;
        Ok(self.done)
    }

    /// Discards everything this writer produced.
    pub async fn abort(mut self) {
        if let Some(file) = self.current.take() {
            let mut sink = file.writer.into_inner();
            sink.abort().await;
        }
        discard_staged(self.store.as_ref(), &self.done).await;
    }
}

/// Removes staged outputs that will not be used (best effort: whatever stays is removed with
/// the staging directory later).
pub async fn discard_staged(store: &dyn ObjectStore, outputs: &[OutputFile]) {
    let requests: Vec<DeleteRequest> = outputs
        .iter()
        .map(|o| DeleteRequest {
            key: o.staging_key.clone(),
            version: None,
        })
        .collect();
    if let Err(e) = store.delete_many(&requests).await {
        tracing::warn!(error = %e, "could not remove discarded staged outputs; the committer removes staging later");
    }
}
