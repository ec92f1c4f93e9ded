//! Writes merged batches into staged output files of about the target size, each streamed to the
//! store a row group at a time (only the row group being encoded is held in memory), and copies
//! inputs' healthy row groups into them as they are.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;

use crate::error::{Error, Result};
use crate::format::copy::{CopiedRowGroup, Placeholder};
use crate::format::encoder::{default_threads, ParallelEncoder};
use crate::format::io::SinkWriter;
use crate::format::spool::{Segment, Spool};
use crate::model::dataset::DatasetConfig;
use crate::model::manifest::{FooterMark, OutputFile};
use crate::model::task::Task;
use crate::ports::store::{DeleteRequest, ObjectStore};
use crate::support::faults::crash_point;

/// Writer settings for outputs: large row groups, the configured codec, page-level statistics
/// (which also writes the column and offset indexes), and the sort order when there is one.
/// Row groups are encoded on every core by [`ParallelEncoder`]; healthy row groups of inputs
/// can be appended as they are ([`RollingWriter::copy_row_group`]).
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

/// One output being written: the synchronous Parquet file writer over a [`Spool`], whose
/// bytes are moved to the store's upload after every row group.
struct OpenFile {
    writer: SerializedFileWriter<Spool>,
    spool: Spool,
    factory: ArrowRowGroupWriterFactory,
    sink: SinkWriter,
    staging_key: String,
    index: usize,
    rows: u64,
    row_groups_copied: usize,
    bytes_copied: u64,
    bytes_copied_in_store: u64,
}

/// Key-value metadata naming the staged output a file was written as (see [`FooterMark`]).
pub const OUTPUT_KEY_METADATA: &str = "parquet-compactor.output";

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
    encoder: Option<ParallelEncoder>,
}

fn parquet_error(key: &str) -> impl Fn(parquet::errors::ParquetError) -> Error + '_ {
    move |e| Error::parquet(key, e)
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
            encoder: None,
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
            let mut kv = self.props.key_value_metadata().cloned().unwrap_or_default();
            kv.push(KeyValue::new(OUTPUT_KEY_METADATA.to_string(), key.clone()));
            let props = self
                .props
                .clone()
                .into_builder()
                .set_key_value_metadata(Some(kv))
                .build();
            let spool = Spool::default();
            let (writer, factory) =
                ArrowWriter::try_new(spool.clone(), Arc::clone(&self.schema), Some(props))
                    .and_then(ArrowWriter::into_serialized_writer)
                    .map_err(parquet_error(&key))?;
            let mut file = OpenFile {
                writer,
                spool,
                factory,
                sink: SinkWriter::new(key.clone(), sink),
                staging_key: key,
                index,
                rows: 0,
                row_groups_copied: 0,
                bytes_copied: 0,
                bytes_copied_in_store: 0,
            };
            // The magic the writer wrote on creation.
            drain(self.store.as_ref(), &mut file).await?;
            self.current = Some(file);
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::Other("output writer vanished".into()))
    }

    fn encoder(&mut self) -> Result<&mut ParallelEncoder> {
        if self.encoder.is_none() {
            let encoder = ParallelEncoder::new(Arc::clone(&self.schema), default_threads())
                .map_err(|e| Error::Other(e.to_string()))?;
            self.encoder = Some(encoder);
        }
        self.encoder
            .as_mut()
            .ok_or_else(|| Error::Other("encoder vanished".into()))
    }

    /// The size the open file would have if closed now: what is written plus the estimated
    /// encoded size of the row group being encoded.
    fn projected_size(&self) -> u64 {
        let written = self
            .current
            .as_ref()
            .map_or(0, |f| f.writer.bytes_written() as u64);
        written + self.encoder.as_ref().map_or(0, |e| e.estimated_bytes())
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let (target, rows_per_file) = (self.target_size, self.rows_per_file);
        let group_rows = self
            .props
            .max_row_group_row_count()
            .unwrap_or(usize::MAX)
            .max(1);
        let group_bytes = self.props.max_row_group_bytes().unwrap_or(usize::MAX) as u64;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let file_rows = self.open().await?.rows;
            let room = rows_per_file.map_or(u64::MAX, |max| max - file_rows);
            if !self.encoder()?.is_open() {
                let file = self
                    .current
                    .as_mut()
                    .ok_or_else(|| Error::Other("output writer vanished".into()))?;
                let writers = file
                    .factory
                    .create_column_writers(file.writer.flushed_row_groups().len())
                    .map_err(parquet_error(&file.staging_key))?;
                let key = file.staging_key.clone();
                self.encoder()?
                    .start(writers)
                    .await
                    .map_err(parquet_error(&key))?;
            }
            let group_room = (group_rows - self.encoder()?.rows()) as u64;
            let take = room.min(group_room).min((batch.num_rows() - offset) as u64) as usize;
            let part = batch.slice(offset, take);
            let key = self.staging_key();
            self.encoder()?
                .write(&part)
                .await
                .map_err(parquet_error(&key))?;
            if let Some(file) = self.current.as_mut() {
                file.rows += take as u64;
            }
            offset += take;
            let encoder = self.encoder()?;
            if encoder.rows() >= group_rows || encoder.estimated_bytes() >= group_bytes {
                self.flush_group().await?;
            }
            let full = rows_per_file
                .is_some_and(|max| self.current.as_ref().is_some_and(|f| f.rows >= max));
            if full || self.projected_size() >= target {
                self.close_current().await?;
            }
        }
        Ok(())
    }

    fn staging_key(&self) -> String {
        self.current
            .as_ref()
            .map_or_else(String::new, |f| f.staging_key.clone())
    }

    /// Appends a row group of an input as it is: its column chunks are copied by the store
    /// where it can, else fetched and written; their statistics, page index and bloom filters
    /// go into this file's footer with the offsets moved.
    pub async fn copy_row_group(&mut self, group: CopiedRowGroup) -> Result<()> {
        let bytes = group.bytes();
        if self.rows_per_file.is_some() {
            return Err(Error::Other(
                "row groups are not copied into files of a fixed row count".into(),
            ));
        }
        let store = Arc::clone(&self.store);
        let file = self.open().await?;
        let key = file.staging_key.clone();
        // Bytes the writer still buffers must reach the spool before the hole starts.
        file.writer.flush().map_err(|e| Error::io(&key, e))?;
        let mut row_group = file.writer.next_row_group().map_err(parquet_error(&key))?;
        file.spool
            .begin_hole(&group.key, &group.version, group.range.clone())
            .map_err(|e| Error::io(&key, e))?;
        for column in group.columns {
            row_group
                .append_column(&Placeholder, column)
                .map_err(parquet_error(&key))?;
        }
        row_group.close().map_err(parquet_error(&key))?;
        file.rows += group.rows;
        file.row_groups_copied += 1;
        file.bytes_copied += bytes;
        drain(store.as_ref(), file).await?;
        crash_point("mid-copy");
        if self.projected_size() >= self.target_size {
            self.close_current().await?;
        }
        Ok(())
    }

    /// Encodes the open row group's chunks into the open file.
    async fn flush_group(&mut self) -> Result<()> {
        let key = self.staging_key();
        let chunks = match self.encoder.as_mut() {
            Some(encoder) if encoder.is_open() => {
                encoder.finish().await.map_err(parquet_error(&key))?
            }
            _ => return Ok(()),
        };
        let store = Arc::clone(&self.store);
        let file = self
            .current
            .as_mut()
            .ok_or_else(|| Error::Other("output writer vanished".into()))?;
        let mut row_group = file.writer.next_row_group().map_err(parquet_error(&key))?;
        for chunk in chunks {
            chunk
                .append_to_row_group(&mut row_group)
                .map_err(parquet_error(&key))?;
        }
        row_group.close().map_err(parquet_error(&key))?;
        drain(store.as_ref(), file).await?;
        crash_point("mid-encode");
        Ok(())
    }

    async fn close_current(&mut self) -> Result<()> {
        self.flush_group().await?;
        let Some(mut file) = self.current.take() else {
            return Ok(());
        };
        let key = file.staging_key.clone();
        let metadata = file.writer.finish().map_err(parquet_error(&key))?;
        // What follows the last row group (page indexes, footer) is one piece of data.
        let tail = drain(self.store.as_ref(), &mut file).await?;
        let footer = tail.as_deref().and_then(footer_mark);
        file.sink.complete().await.map_err(parquet_error(&key))?;
        let stored = file.sink.finished().ok_or_else(|| Error::Store {
            operation: "upload",
            key: key.clone(),
            message: "upload did not complete".into(),
        })?;
        self.done.push(OutputFile {
            staging_key: key,
            final_key: self.task.final_output_key(file.index),
            size: stored.size,
            rows: file.rows,
            row_groups: metadata.num_row_groups(),
            row_groups_copied: file.row_groups_copied,
            bytes_copied: file.bytes_copied,
            bytes_copied_in_store: file.bytes_copied_in_store,
            crc32c: file.sink.crc32c_hex().unwrap_or_default(),
            footer,
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
        if let Some(mut file) = self.current.take() {
            file.sink.abort().await;
        }
        discard_staged(self.store.as_ref(), &self.done).await;
    }
}

/// Moves what the file writer produced into the upload: data as it is, copied ranges through
/// the store (or fetched and written when the store cannot copy them there). Returns the last
/// data written when nothing was copied after it.
async fn drain(store: &dyn ObjectStore, file: &mut OpenFile) -> Result<Option<Bytes>> {
    file.writer
        .flush()
        .map_err(|e| Error::io(&file.staging_key, e))?;
    let segments = file
        .spool
        .drain()
        .map_err(|e| Error::io(&file.staging_key, e))?;
    let mut last = None;
    for segment in segments {
        match segment {
            Segment::Data(data) => {
                last = Some(data.clone());
                file.sink
                    .write(data)
                    .await
                    .map_err(parquet_error(&file.staging_key))?;
            }
            Segment::Copy {
                key,
                version,
                range,
            } => {
                last = None;
                let len = range.end - range.start;
                if file.sink.copy_range(&key, &version, range.clone()).await? {
                    file.bytes_copied_in_store += len;
                    continue;
                }
                let data = store.get_range(&key, range.clone()).await?;
                if data.len() as u64 != len {
                    return Err(Error::CorruptInput {
                        key,
                        reason: format!("bytes {range:?} could not be read (got {})", data.len()),
                    });
                }
                file.sink
                    .write(data)
                    .await
                    .map_err(parquet_error(&file.staging_key))?;
            }
        }
    }
    Ok(last)
}

/// The mark of a finished file from its last bytes: the footer's length, then `PAR1`.
fn footer_mark(tail: &[u8]) -> Option<FooterMark> {
    let n = tail.len();
    if n < 8 {
        return None;
    }
    let len = u32::from_le_bytes(tail[n - 8..n - 4].try_into().ok()?) as usize;
    let bytes = len + 8;
    if bytes > n {
        return None;
    }
    Some(FooterMark {
        bytes: bytes as u64,
        crc32c: format!("{:08x}", crc32c::crc32c(&tail[n - bytes..])),
    })
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
