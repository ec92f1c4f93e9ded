//! Parquet over the object-store port: footers read with two small ranged reads, an
//! `AsyncFileReader` that fetches only the byte ranges the decoder asks for (or serves a small
//! file fetched whole), and an `AsyncFileWriter` that streams to an upload while computing the
//! file's CRC32C.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    FooterTail, ParquetMetaData, ParquetMetaDataReader, RowGroupMetaData,
};

use crate::error::{Error, Result};
use crate::model::object::ObjectMeta;
use crate::model::plan::{codec_name, FileLayout, RowGroupLayout};
use crate::ports::store::{ObjectSink, ObjectStore};

const FOOTER_TAIL: u64 = 8;
const MAGIC_LEN: u64 = 4;
/// Ranges closer than this are fetched with one request.
const COALESCE_GAP: u64 = 1 << 20;

fn corrupt(key: &str, reason: impl Into<String>) -> Error {
    Error::CorruptInput {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Reads and validates the footer of `key`: one ranged read of the last 8 bytes (length and
/// magic), one of the metadata itself. Any inconsistency is reported as [`Error::CorruptInput`].
pub async fn read_footer(store: &dyn ObjectStore, key: &str) -> Result<Arc<ParquetMetaData>> {
    let (tail, size) = store.get_suffix(key, FOOTER_TAIL).await?;
    if size < FOOTER_TAIL + MAGIC_LEN {
        return Err(corrupt(
            key,
            format!("only {size} bytes, too small to be Parquet"),
        ));
    }
    let footer = parse_tail(key, &tail)?;
    let len = footer.metadata_length() as u64;
    if len + FOOTER_TAIL + MAGIC_LEN > size {
        return Err(corrupt(
            key,
            format!(
                "footer claims {len} bytes of metadata but the file has {size} bytes (truncated?)"
            ),
        ));
    }
    let start = size - FOOTER_TAIL - len;
    let buf = store.get_range(key, start..size - FOOTER_TAIL).await?;
    decode_metadata(key, &buf, size)
}

/// A file's row groups and codecs, as the planner weighs them.
pub fn layout_of(footer: &ParquetMetaData) -> FileLayout {
    let mut codecs: Vec<String> = Vec::new();
    let row_groups = footer
        .row_groups()
        .iter()
        .map(|g| {
            for column in g.columns() {
                // The codec's name, without the level a footer does not record anyway.
                let codec = codec_name(&column.compression().to_string());
                if !codecs.contains(&codec) {
                    codecs.push(codec);
                }
            }
            row_group_layout(g)
        })
        .collect();
    FileLayout { row_groups, codecs }
}

/// One row group's sizes, as the planner and the merger weigh it.
pub fn row_group_layout(g: &RowGroupMetaData) -> RowGroupLayout {
    RowGroupLayout {
        rows: g.num_rows().max(0) as u64,
        compressed: g.compressed_size().max(0) as u64,
        uncompressed: g.total_byte_size().max(0) as u64,
    }
}

/// Decodes the footer of a file that is wholly in memory.
pub fn footer_from_bytes(key: &str, data: &Bytes) -> Result<Arc<ParquetMetaData>> {
    let size = data.len() as u64;
    if size < FOOTER_TAIL + MAGIC_LEN {
        return Err(corrupt(
            key,
            format!("only {size} bytes, too small to be Parquet"),
        ));
    }
    let footer = parse_tail(key, &data[(size - FOOTER_TAIL) as usize..])?;
    let len = footer.metadata_length() as u64;
    if len + FOOTER_TAIL + MAGIC_LEN > size {
        return Err(corrupt(key, "footer length exceeds the file (truncated?)"));
    }
    let start = (size - FOOTER_TAIL - len) as usize;
    decode_metadata(key, &data[start..(size - FOOTER_TAIL) as usize], size)
}

fn parse_tail(key: &str, tail: &[u8]) -> Result<FooterTail> {
    if tail.len() != FOOTER_TAIL as usize {
        return Err(corrupt(key, "cannot read the 8-byte footer"));
    }
    let footer = FooterTail::try_from(tail).map_err(|_| {
        corrupt(
            key,
            "bad magic: the file does not end with PAR1 (not Parquet, or truncated)",
        )
    })?;
    if footer.is_encrypted_footer() {
        return Err(corrupt(key, "encrypted Parquet footers are not supported"));
    }
    Ok(footer)
}

fn decode_metadata(key: &str, buf: &[u8], size: u64) -> Result<Arc<ParquetMetaData>> {
    let metadata = ParquetMetaDataReader::decode_metadata(buf)
        .map_err(|e| corrupt(key, format!("garbage footer: {e}")))?;
    let data_end = size - FOOTER_TAIL - buf.len() as u64;
    for rg in metadata.row_groups() {
        for col in rg.columns() {
            let (start, len) = col.byte_range();
            if start.saturating_add(len) > data_end {
                return Err(corrupt(
                    key,
                    format!(
                        "column chunk {} points past the data section (bytes {start}+{len} of {data_end})",
                        col.column_path()
                    ),
                ));
            }
        }
    }
    Ok(Arc::new(metadata))
}

fn external(e: Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// One input file seen through the store. When `whole` is set the file was fetched in one
/// request and every read is served from memory.
pub struct StoreReader {
    store: Arc<dyn ObjectStore>,
    key: String,
    whole: Option<Bytes>,
    metadata: Option<Arc<ParquetMetaData>>,
}

impl StoreReader {
    pub fn ranged(store: Arc<dyn ObjectStore>, input: &ObjectMeta) -> Self {
        Self {
            store,
            key: input.key.clone(),
            whole: None,
            metadata: None,
        }
    }

    pub fn in_memory(store: Arc<dyn ObjectStore>, input: &ObjectMeta, data: Bytes) -> Self {
        Self {
            store,
            key: input.key.clone(),
            whole: Some(data),
            metadata: None,
        }
    }

    fn slice(&self, data: &Bytes, range: Range<u64>) -> parquet::errors::Result<Bytes> {
        let len = data.len() as u64;
        if range.end > len || range.start > range.end {
            return Err(external(corrupt(
                &self.key,
                format!("read of bytes {range:?} past the end ({len} bytes)"),
            )));
        }
        Ok(data.slice(range.start as usize..range.end as usize))
    }
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            match &self.whole {
                Some(data) => self.slice(data, range),
                None => self
                    .store
                    .get_range(&self.key, range)
                    .await
                    .map_err(external),
            }
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            if let Some(data) = &self.whole {
                return ranges.into_iter().map(|r| self.slice(data, r)).collect();
            }
            // Coalesce nearby column chunks so a row group costs one request, not one per column.
            let mut order: Vec<usize> = (0..ranges.len()).collect();
            order.sort_by_key(|&i| ranges[i].start);
            let mut merged: Vec<Range<u64>> = Vec::new();
            for &i in &order {
                let r = &ranges[i];
                match merged.last_mut() {
                    Some(last) if r.start <= last.end + COALESCE_GAP => {
                        last.end = last.end.max(r.end)
                    }
                    _ => merged.push(r.clone()),
                }
            }
            let mut fetched = Vec::with_capacity(merged.len());
            for m in &merged {
                fetched.push((
                    m.clone(),
                    self.store
                        .get_range(&self.key, m.clone())
                        .await
                        .map_err(external)?,
                ));
            }
            ranges
                .iter()
                .map(|r| {
                    let (m, data) = fetched
                        .iter()
                        .find(|(m, _)| m.start <= r.start && r.end <= m.end)
                        .ok_or_else(|| ParquetError::General("range not fetched".into()))?;
                    self.slice(data, (r.start - m.start)..(r.end - m.start))
                })
                .collect()
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            if let Some(m) = &self.metadata {
                return Ok(Arc::clone(m));
            }
            let m = match &self.whole {
                Some(data) => footer_from_bytes(&self.key, data),
                None => read_footer(self.store.as_ref(), &self.key).await,
            }
            .map_err(external)?;
            self.metadata = Some(Arc::clone(&m));
            Ok(m)
        }
        .boxed()
    }
}

/// Streams a Parquet file into an object upload, counting bytes and the CRC32C as it goes.
pub struct SinkWriter {
    key: String,
    sink: Option<Box<dyn ObjectSink>>,
    crc: u32,
    /// False once the store copied some bytes itself: the CRC then covers only part of the file.
    crc_whole: bool,
    bytes: u64,
    finished: Option<ObjectMeta>,
}

impl SinkWriter {
    pub fn new(key: String, sink: Box<dyn ObjectSink>) -> Self {
        Self {
            key,
            sink: Some(sink),
            crc: 0,
            crc_whole: true,
            bytes: 0,
            finished: None,
        }
    }

    /// The CRC32C of the whole file, when every byte passed through this writer.
    pub fn crc32c_hex(&self) -> Option<String> {
        self.crc_whole.then(|| format!("{:08x}", self.crc))
    }

    /// Has the store append bytes `range` of `source` (see [`ObjectSink::copy_range`]).
    pub async fn copy_range(
        &mut self,
        source: &str,
        version: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bool> {
        let len = range.end - range.start;
        let sink = self.sink.as_mut().ok_or_else(|| Error::Store {
            operation: "copy",
            key: self.key.clone(),
            message: "already completed".into(),
        })?;
        let copied = sink.copy_range(source, version, range).await?;
        if copied {
            self.crc_whole = false;
            self.bytes += len;
        }
        Ok(copied)
    }

    /// The stored object, once `complete` has run.
    pub fn finished(&self) -> Option<&ObjectMeta> {
        self.finished.as_ref()
    }

    pub async fn abort(&mut self) {
        if let Some(sink) = self.sink.take() {
            if let Err(e) = sink.abort().await {
                tracing::warn!(key = %self.key, error = %e, "abort of a partial upload failed");
            }
        }
    }
}

impl AsyncFileWriter for SinkWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move {
            self.crc = crc32c::crc32c_append(self.crc, &bs);
            self.bytes += bs.len() as u64;
            match self.sink.as_mut() {
                Some(sink) => sink.write(bs).await.map_err(external),
                None => Err(ParquetError::General(format!(
                    "{} already completed",
                    self.key
                ))),
            }
        }
        .boxed()
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        async move {
            let sink = self
                .sink
                .take()
                .ok_or_else(|| ParquetError::General(format!("{} already completed", self.key)))?;
            let meta = sink.finish().await.map_err(external)?;
            if meta.size != self.bytes {
                return Err(external(Error::Store {
                    operation: "upload",
                    key: self.key.clone(),
                    message: format!("stored {} bytes but wrote {}", meta.size, self.bytes),
                }));
            }
            self.finished = Some(meta);
            Ok(())
        }
        .boxed()
    }
}

/// `batch` as one Parquet file in memory (`what`, for errors), with `props` (default: the
/// parquet crate's).
pub fn encode(
    batch: &arrow::array::RecordBatch,
    props: Option<parquet::file::properties::WriterProperties>,
    what: &str,
) -> Result<Bytes> {
    let mut buf = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), props)
        .map_err(|e| Error::parquet(what, e))?;
    writer
        .write(batch)
        .and_then(|_| writer.close().map(|_| ()))
        .map_err(|e| Error::parquet(what, e))?;
    Ok(Bytes::from(buf))
}

/// The rows of a Parquet file held in memory (`key`, for errors), as one batch.
pub fn decode(key: &str, data: Bytes) -> Result<arrow::array::RecordBatch> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| Error::parquet(key, e))?;
    let schema = Arc::clone(builder.schema());
    let batches = builder
        .build()
        .map_err(|e| Error::parquet(key, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::parquet(key, e))?;
    arrow::compute::concat_batches(&schema, &batches).map_err(|e| Error::parquet(key, e))
}
