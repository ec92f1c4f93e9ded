//! Row groups copied verbatim: which row groups of an input may be copied into an output as
//! bytes (same Parquet schema as the output, column chunks stored back to back, codec allowed),
//! and the column metadata (statistics, page index, bloom filter) the output's footer carries
//! for them.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use parquet::bloom_filter::Sbbf;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};
use parquet::schema::types::SchemaDescriptor;

use crate::model::dataset::RowGroupCopy;

/// One row group of a source object, to be copied into an output.
#[derive(Debug)]
pub struct CopiedRowGroup {
    pub key: String,
    pub version: String,
    pub rows: u64,
    /// Where its column chunks lie in the source, back to back.
    pub range: Range<u64>,
    /// Per column: metadata with statistics, page index and bloom filter, as the source has them.
    pub columns: Vec<ColumnCloseResult>,
}

impl CopiedRowGroup {
    pub fn bytes(&self) -> u64 {
        self.range.end - self.range.start
    }
}

/// The bytes of a row group's column chunks when they are contiguous and in column order (as
/// every common writer lays them out); `None` otherwise.
pub fn contiguous_range(group: &RowGroupMetaData) -> Option<Range<u64>> {
    let mut range: Option<Range<u64>> = None;
    for column in group.columns() {
        let (start, len) = column.byte_range();
        range = match range {
            None => Some(start..start + len),
            Some(r) if r.end == start => Some(r.start..start + len),
            Some(_) => return None,
        };
    }
    range.filter(|r| r.end > r.start)
}

/// Can this row group be copied into an output written with `props` (its schema checked
/// separately with [`same_parquet_schema`])? Its chunks must lie back to back, its bloom
/// filters have recorded lengths, and its codec be allowed by `rule`.
pub fn copyable(group: &RowGroupMetaData, props: &WriterProperties, rule: RowGroupCopy) -> bool {
    if rule == RowGroupCopy::Off || contiguous_range(group).is_none() {
        return false;
    }
    group.columns().iter().all(|c| {
        // A bloom filter without a recorded length cannot be fetched with one ranged read; the
        // row group is re-encoded instead.
        let bloom_ok = c.bloom_filter_offset().is_none() || c.bloom_filter_length().is_some();
        let codec_ok = rule == RowGroupCopy::AnyCodec
            || std::mem::discriminant(&c.compression())
                == std::mem::discriminant(&props.compression(c.column_path()));
        bloom_ok && codec_ok
    })
}

/// Do an input's Parquet columns equal the output's (names, types, logical types, nullability,
/// nesting)? Only then are its column chunks valid in the output as they are.
pub fn same_parquet_schema(input: &SchemaDescriptor, output: &SchemaDescriptor) -> bool {
    input.num_columns() == output.num_columns()
        && input
            .columns()
            .iter()
            .zip(output.columns())
            .all(|(a, b)| a == b)
}

/// The byte ranges of a row group's bloom filters, per column (`None` where it has none).
pub fn bloom_ranges(group: &RowGroupMetaData) -> Vec<Option<Range<u64>>> {
    group
        .columns()
        .iter()
        .map(
            |c| match (c.bloom_filter_offset(), c.bloom_filter_length()) {
                (Some(offset), Some(len)) if offset >= 0 && len > 0 => {
                    Some(offset as u64..offset as u64 + len as u64)
                }
                _ => None,
            },
        )
        .collect()
}

/// Describes row group `index` of `footer` (read with its page index) for copying; `blooms`
/// holds the bloom filter bytes fetched for [`bloom_ranges`].
pub fn describe(
    key: &str,
    version: &str,
    footer: &ParquetMetaData,
    index: usize,
    blooms: Vec<Option<(u64, Bytes)>>,
) -> parquet::errors::Result<CopiedRowGroup> {
    let group = footer.row_group(index);
    let range = contiguous_range(group).ok_or_else(|| {
        parquet::errors::ParquetError::General(format!(
            "row group {index} of {key} is not contiguous"
        ))
    })?;
    let page_index = footer.page_index_for_row_group(index);
    let rows = group.num_rows().max(0) as u64;
    let mut columns = Vec::with_capacity(group.num_columns());
    for (i, column) in group.columns().iter().enumerate() {
        let bloom_filter = match blooms.get(i).cloned().flatten() {
            Some((start, data)) => {
                Sbbf::read_from_column_chunk(column, &RangeBytes { start, data })?
            }
            None => None,
        };
        columns.push(ColumnCloseResult {
            bytes_written: column.compressed_size().max(0) as u64,
            rows_written: rows,
            metadata: column.clone(),
            bloom_filter,
            column_index: page_index.column_index(i).cloned(),
            offset_index: page_index.offset_index(i).cloned(),
        });
    }
    Ok(CopiedRowGroup {
        key: key.to_string(),
        version: version.to_string(),
        rows,
        range,
        columns,
    })
}

/// Bytes fetched from `start` of a source, read through the parquet crate's `ChunkReader`.
struct RangeBytes {
    start: u64,
    data: Bytes,
}

impl Length for RangeBytes {
    fn len(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

impl ChunkReader for RangeBytes {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(bytes::Buf::reader(self.get_bytes(
            start,
            (self.len().saturating_sub(start)) as usize,
        )?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let from = start.checked_sub(self.start).ok_or_else(|| {
            parquet::errors::ParquetError::General(format!(
                "read at {start} before the fetched range"
            ))
        })? as usize;
        let to = from + length;
        if to > self.data.len() {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "read of {length} bytes at {start} past the fetched range"
            )));
        }
        Ok(self.data.slice(from..to))
    }
}

/// Stand-in bytes for a copied range: the writer counts them for offsets, the spool drops them
/// and the store copies the real bytes.
pub struct Placeholder;

impl Length for Placeholder {
    fn len(&self) -> u64 {
        u64::MAX
    }
}

impl ChunkReader for Placeholder {
    type T = std::io::Repeat;

    fn get_read(&self, _start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::repeat(0))
    }

    fn get_bytes(&self, _start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        Ok(Bytes::from(vec![0; length]))
    }
}

/// The output's Parquet schema descriptor for an Arrow schema, as the writer derives it.
pub fn output_descriptor(
    schema: &arrow::datatypes::Schema,
) -> parquet::errors::Result<Arc<SchemaDescriptor>> {
    parquet::arrow::ArrowSchemaConverter::new()
        .with_coerce_types(true)
        .convert(schema)
        .map(Arc::new)
}
