//! Reading a task's inputs: footers first (schema, row counts), then the batches of every input
//! in order. Small inputs are fetched whole (one request each) and decoded on other cores a few
//! files ahead of the writer; large inputs are streamed a row group at a time with ranged reads.
//! A semaphore over decoded bytes keeps the read-ahead inside the memory budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::{SchemaDescPtr, SchemaDescriptor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::format::copy::{bloom_ranges, copyable, describe, same_parquet_schema, CopiedRowGroup};
use crate::format::io::{footer_from_bytes, read_footer, row_group_layout, StoreReader};
use crate::model::dataset::DatasetConfig;
use crate::model::manifest::skipped;
use crate::model::manifest::{SkipKind, SkippedInput};
use crate::model::object::ObjectMeta;
use crate::model::schema::conform;
use crate::ports::store::ObjectStore;

/// Rows per decoded batch.
pub const BATCH_ROWS: usize = 8192;
const FOOTER_CONCURRENCY: usize = 16;
const READ_AHEAD_FILES: usize = 8;

/// What the footer told about one input. Only the schema is kept, not the whole footer, so
/// memory does not grow with the number of inputs beyond a few bytes each.
#[derive(Clone, Debug)]
pub struct InputInfo {
    pub meta: ObjectMeta,
    pub rows: u64,
    /// Sum of the row groups' uncompressed sizes: a good estimate of the decoded size.
    pub uncompressed: u64,
    /// Compressed bytes of its largest row group: what a ranged read holds at once.
    pub largest_row_group: u64,
    pub schema: SchemaRef,
    /// Row groups that may be copied as they are if the schema allows (see [`CopyRule`]).
    pub healthy: Vec<usize>,
    /// The file's Parquet schema, kept only when `healthy` is not empty.
    pub descr: Option<SchemaDescPtr>,
    /// Row groups this merge copies (decided once the output schema is known).
    pub copy: Vec<usize>,
    /// Sort mode: every row group's footer declares the sort key (an earlier output).
    pub sorted_by_key: bool,
}

/// Does every row group of `footer` declare `key` (ascending, nulls last) as its sort order?
fn declares_sort_key(footer: &ParquetMetaData, key: &[String]) -> bool {
    if key.is_empty() || footer.num_row_groups() == 0 {
        return false;
    }
    let descr = footer.file_metadata().schema_descr();
    let wanted: Option<Vec<i32>> = key
        .iter()
        .map(|k| {
            descr
                .columns()
                .iter()
                .position(|c| c.path().string() == *k)
                .map(|i| i as i32)
        })
        .collect();
    let Some(wanted) = wanted else {
        return false;
    };
    footer.row_groups().iter().all(|g| {
        g.sorting_columns().is_some_and(|cols| {
            cols.len() >= wanted.len()
                && cols
                    .iter()
                    .zip(&wanted)
                    .all(|(c, w)| c.column_idx == *w && !c.descending && !c.nulls_first)
        })
    })
}

/// Which row groups of inputs may be copied into outputs as they are.
pub struct CopyRule {
    pub dataset: DatasetConfig,
    pub props: WriterProperties,
}

impl CopyRule {
    fn healthy(&self, footer: &ParquetMetaData) -> Vec<usize> {
        footer
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                row_group_layout(g).is_healthy(&self.dataset)
                    && copyable(g, &self.props, self.dataset.row_group_copy)
            })
            .map(|(i, _)| i)
            .collect()
    }
}

impl InputInfo {
    /// Decides which healthy row groups are copied into outputs of `schema`: all of them when
    /// the input's schema is the output's, none otherwise (they are re-encoded).
    pub fn plan_copies(&mut self, schema: &SchemaRef, output: &SchemaDescriptor) {
        let same = self.schema.fields() == schema.fields()
            && self
                .descr
                .as_ref()
                .is_some_and(|d| same_parquet_schema(d, output));
        self.copy = if same {
            self.healthy.clone()
        } else {
            Vec::new()
        };
    }
}

/// Reads every footer (two small ranged reads each). Unreadable files are returned as skipped;
/// store errors other than a missing object fail the whole scan.
pub async fn scan_footers(
    store: Arc<dyn ObjectStore>,
    inputs: Vec<ObjectMeta>,
    copy_rule: Option<&CopyRule>,
    sort_key: &[String],
) -> Result<(Vec<InputInfo>, Vec<SkippedInput>)> {
    let results: Vec<(ObjectMeta, Result<InputInfo>)> = stream::iter(inputs)
        .map(|meta| {
            let store = Arc::clone(&store);
            async move {
                let result = read_footer(store.as_ref(), &meta.key)
                    .await
                    .and_then(|footer| {
                        let arrow = ArrowReaderMetadata::try_new(footer, Default::default())
                            .map_err(|e| Error::CorruptInput {
                                key: meta.key.clone(),
                                reason: format!("schema cannot be read as Arrow: {e}"),
                            })?;
                        let md = arrow.metadata();
                        let healthy = copy_rule.map(|r| r.healthy(md)).unwrap_or_default();
                        let descr =
                            (!healthy.is_empty()).then(|| md.file_metadata().schema_descr_ptr());
                        Ok(InputInfo {
                            meta: meta.clone(),
                            rows: md.file_metadata().num_rows().max(0) as u64,
                            uncompressed: md
                                .row_groups()
                                .iter()
                                .map(|rg| rg.total_byte_size().max(0) as u64)
                                .sum(),
                            largest_row_group: md
                                .row_groups()
                                .iter()
                                .map(|rg| rg.compressed_size().max(0) as u64)
                                .max()
                                .unwrap_or(0),
                            schema: crate::format::zones::declared_zones(arrow.schema(), md),
                            healthy,
                            descr,
                            copy: Vec::new(),
                            sorted_by_key: declares_sort_key(md, sort_key),
                        })
                    });
                (meta, result)
            }
        })
        .buffered(FOOTER_CONCURRENCY)
        .collect()
        .await;
    let mut infos = Vec::new();
    let mut skipped_inputs = Vec::new();
    for (meta, result) in results {
        match result {
            Ok(info) => infos.push(info),
            Err(Error::CorruptInput { reason, .. }) => {
                skipped_inputs.push(skipped(&meta, SkipKind::Unreadable, reason))
            }
            Err(Error::NotFound { .. }) => {
                skipped_inputs.push(skipped(&meta, SkipKind::Vanished, "no longer exists"))
            }
            Err(e) => return Err(e),
        }
    }
    Ok((infos, skipped_inputs))
}

/// One item of the input stream.
pub enum InputEvent {
    Batch(RecordBatch),
    /// A row group of input number `index` to copy into the outputs as it is.
    Copy {
        index: usize,
        group: CopiedRowGroup,
    },
    /// Input number `index` has been read completely.
    Done {
        index: usize,
    },
}

/// A failure while reading inputs, with the input it concerns when it is the input's fault.
#[derive(Debug)]
pub enum ReadFailure {
    Corrupt { index: usize, reason: String },
    Other(Error),
}

impl From<Error> for ReadFailure {
    fn from(e: Error) -> Self {
        ReadFailure::Other(e)
    }
}

/// Turns a decoder error into either "this input is corrupt" or the underlying store error.
fn classify(index: usize, err: ParquetError) -> ReadFailure {
    if let ParquetError::External(inner) = err {
        return match inner.downcast::<Error>() {
            Ok(e) => match *e {
                Error::CorruptInput { reason, .. } => ReadFailure::Corrupt { index, reason },
                other => ReadFailure::Other(other),
            },
            Err(other) => ReadFailure::Corrupt {
                index,
                reason: other.to_string(),
            },
        };
    }
    ReadFailure::Corrupt {
        index,
        reason: err.to_string(),
    }
}

/// Settings of the input stream derived from the memory budget.
#[derive(Clone, Copy, Debug)]
pub struct ReadBudget {
    /// Inputs at most this large (compressed) are fetched whole.
    pub whole_file_limit: u64,
    /// Decoded bytes that may be read ahead of the consumer.
    pub read_ahead_bytes: u64,
}

impl ReadBudget {
    /// Reads ahead at most `read_ahead` bytes (the merge's share, see
    /// [`MergeMemory`](crate::model::memory::MergeMemory)).
    pub fn new(read_ahead: u64) -> Self {
        Self {
            whole_file_limit: (read_ahead / 4).clamp(1 << 20, 64 << 20),
            read_ahead_bytes: read_ahead.max(1 << 20),
        }
    }
}

/// The batches of all inputs, in input order, conformed to `target`.
pub fn input_stream(
    store: Arc<dyn ObjectStore>,
    inputs: Vec<InputInfo>,
    target: SchemaRef,
    budget: ReadBudget,
) -> BoxStream<'static, std::result::Result<InputEvent, ReadFailure>> {
    // Permits are KiB of decoded data, so a u32 count covers 4 TiB.
    let total = (budget.read_ahead_bytes / 1024).clamp(1, u32::MAX as u64) as u32;
    let read_ahead = Arc::new(ReadAhead {
        permits: Arc::new(Semaphore::new(total as usize)),
        total,
    });
    // Decoded Arrow bytes per footer-uncompressed byte, x1000, the largest seen so far.
    let growth = Arc::new(AtomicU64::new(1000));
    stream::iter(inputs.into_iter().enumerate())
        .map(move |(index, info)| {
            let store = Arc::clone(&store);
            let read_ahead = Arc::clone(&read_ahead);
            let growth = Arc::clone(&growth);
            let target = Arc::clone(&target);
            async move {
                if !info.copy.is_empty() {
                    return copy_and_decode(store, info, index, target).await;
                }
                let whole = info.meta.size <= budget.whole_file_limit
                    && info.uncompressed <= budget.read_ahead_bytes;
                let batches: BoxStream<'static, std::result::Result<RecordBatch, ReadFailure>> =
                    if whole {
                        let decoded_bytes =
                            info.uncompressed * growth.load(Ordering::Relaxed).max(1000) / 1000;
                        let permit =
                            reserve(&read_ahead, (decoded_bytes + info.meta.size) / 1024).await?;
                        let decoded = tokio::spawn(decode_whole(store, info.meta.clone(), index))
                            .await
                            .map_err(|e| {
                                ReadFailure::Other(Error::Other(format!("decoder panicked: {e}")))
                            })??;
                        // Decoded Arrow data can outgrow the footer's uncompressed size (strings
                        // stored as dictionaries): later files are charged at the ratio seen.
                        let actual: u64 = decoded
                            .iter()
                            .map(|b| b.get_array_memory_size() as u64)
                            .sum();
                        growth
                            .fetch_max(actual * 1000 / info.uncompressed.max(1), Ordering::Relaxed);
                        // The permit lives as long as the decoded batches are queued.
                        stream::iter(decoded.into_iter().map(move |b| {
                            let _hold = &permit;
                            Ok(b)
                        }))
                        .boxed()
                    } else {
                        // A ranged read holds one row group's column chunks and a decoded batch.
                        let permit =
                            reserve(&read_ahead, 2 * info.largest_row_group / 1024).await?;
                        let reader = StoreReader::ranged(Arc::clone(&store), &info.meta);
                        let builder = ParquetRecordBatchStreamBuilder::new(reader)
                            .await
                            .map_err(|e| classify(index, e))?;
                        builder
                            .with_batch_size(BATCH_ROWS)
                            .build()
                            .map_err(|e| classify(index, e))?
                            .map_err(move |e| classify(index, e))
                            .map(move |b| {
                                let _hold = &permit;
                                b
                            })
                            .boxed()
                    };
                Ok::<_, ReadFailure>(conformed(batches, target, index))
            }
        })
        .buffered(READ_AHEAD_FILES)
        .try_flatten()
        .boxed()
}

/// Takes `kib` KiB of the read-ahead (all of it at most), released when the permit is dropped.
async fn reserve(
    read_ahead: &ReadAhead,
    kib: u64,
) -> std::result::Result<OwnedSemaphorePermit, ReadFailure> {
    let cost = kib.clamp(1, read_ahead.total as u64) as u32;
    Arc::clone(&read_ahead.permits)
        .acquire_many_owned(cost)
        .await
        .map_err(|e| ReadFailure::Other(Error::Other(e.to_string())))
}

/// The read-ahead of one input stream: permits of 1 KiB of decoded data.
struct ReadAhead {
    permits: Arc<Semaphore>,
    total: u32,
}

async fn decode_whole(
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    index: usize,
) -> std::result::Result<Vec<RecordBatch>, ReadFailure> {
    let data = store
        .get_range(&meta.key, 0..meta.size)
        .await
        .map_err(ReadFailure::Other)?;
    if data.len() as u64 != meta.size {
        // Rewritten since it was listed: the merge checks its version and leaves it for the
        // next round.
        return Err(ReadFailure::Corrupt {
            index,
            reason: format!(
                "{} changed size while being read ({} bytes instead of {})",
                meta.key,
                data.len(),
                meta.size
            ),
        });
    }
    let footer = footer_from_bytes(&meta.key, &data).map_err(|e| match e {
        Error::CorruptInput { reason, .. } => ReadFailure::Corrupt { index, reason },
        other => ReadFailure::Other(other),
    })?;
    let reader = StoreReader::in_memory(store, &meta, data);
    let arrow_meta =
        ArrowReaderMetadata::try_new(footer, Default::default()).map_err(|e| classify(index, e))?;
    let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow_meta)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| classify(index, e))?;
    stream.map_err(|e| classify(index, e)).try_collect().await
}

type Events = BoxStream<'static, std::result::Result<InputEvent, ReadFailure>>;

/// The batches of input `index` conformed to `target`, then its `Done`.
fn conformed(
    batches: BoxStream<'static, std::result::Result<RecordBatch, ReadFailure>>,
    target: SchemaRef,
    index: usize,
) -> Events {
    batches
        .and_then(move |b| {
            let target = Arc::clone(&target);
            async move {
                conform(&b, &target)
                    .map(InputEvent::Batch)
                    .map_err(|reason| ReadFailure::Corrupt { index, reason })
            }
        })
        .chain(stream::once(async move { Ok(InputEvent::Done { index }) }))
        .boxed()
}

/// An input with row groups to copy: its footer is read again with the page index (which the
/// copies carry into the outputs' footers), the copies are announced first, then its other row
/// groups are decoded with ranged reads.
async fn copy_and_decode(
    store: Arc<dyn ObjectStore>,
    info: InputInfo,
    index: usize,
    target: SchemaRef,
) -> std::result::Result<Events, ReadFailure> {
    let mut reader = StoreReader::ranged(Arc::clone(&store), &info.meta);
    let footer = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .load_and_finish(&mut reader, info.meta.size)
        .await
        .map_err(|e| classify(index, e))?;
    let footer = Arc::new(footer);
    let mut copies = Vec::with_capacity(info.copy.len());
    for &group in &info.copy {
        let copied = copied_row_group(store.as_ref(), &info.meta, &footer, group)
            .await
            .map_err(|e| match e {
                Error::CorruptInput { reason, .. } => ReadFailure::Corrupt { index, reason },
                other => ReadFailure::Other(other),
            })?;
        copies.push(Ok(InputEvent::Copy {
            index,
            group: copied,
        }));
    }
    let rest: Vec<usize> = (0..footer.num_row_groups())
        .filter(|g| !info.copy.contains(g))
        .collect();
    let batches = if rest.is_empty() {
        stream::empty().boxed()
    } else {
        let arrow_meta = ArrowReaderMetadata::try_new(footer, Default::default())
            .map_err(|e| classify(index, e))?;
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow_meta)
            .with_batch_size(BATCH_ROWS)
            .with_row_groups(rest)
            .build()
            .map_err(|e| classify(index, e))?
            .map_err(move |e| classify(index, e))
            .boxed()
    };
    Ok(stream::iter(copies)
        .chain(conformed(batches, target, index))
        .boxed())
}

/// Row group `group` of `meta` (whose footer, read with its page index, is `footer`) described
/// for a verbatim copy, its bloom filters fetched.
pub async fn copied_row_group(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    footer: &ParquetMetaData,
    group: usize,
) -> Result<CopiedRowGroup> {
    let mut blooms = Vec::new();
    for range in bloom_ranges(footer.row_group(group)) {
        blooms.push(match range {
            Some(r) => Some((r.start, store.get_range(&meta.key, r).await?)),
            None => None,
        });
    }
    describe(&meta.key, &meta.version, footer, group, blooms).map_err(|e| Error::CorruptInput {
        key: meta.key.clone(),
        reason: e.to_string(),
    })
}
