//! Sort mode: an external merge sort. Incoming batches collect in a buffer of bounded size; a
//! full buffer is sorted (a run) and spilled to local scratch space as Arrow IPC; at the end the
//! runs are combined by a k-way merge (in several passes when there are more runs than the memory
//! allows to open at once). An input that is already sorted costs one comparison per row in its
//! run. Ties keep input order, so the result is deterministic.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::compute::{interleave_record_batch, SortOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};

use crate::error::{Error, Result};
use crate::model::batch::BatchSink;
use crate::model::manifest::SortWork;
use crate::model::passes::RunSamples;

/// Rows per batch emitted from a sorted buffer or a merge.
const OUT_ROWS: usize = 8192;
/// Fewest runs merged at once, whatever the budget.
const MIN_FAN_IN: usize = 2;

fn sort_err(e: impl std::fmt::Display) -> Error {
    Error::parquet("sort", e)
}

fn spill_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Other(format!(
        "spill file {}: {e}; check free space in the scratch directory (set TMPDIR to move it)",
        path.display()
    ))
}

/// The sort key of a schema: its columns, and how their values compare (ascending, nulls
/// last) once converted to rows. Cheap to clone; a converter is built per use.
#[derive(Clone)]
pub struct KeyOrder {
    schema: SchemaRef,
    key_columns: Vec<usize>,
    fields: Vec<SortField>,
}

impl KeyOrder {
    pub fn new(schema: SchemaRef, sort_key: &[String]) -> Result<Self> {
        let mut key_columns = Vec::new();
        let mut fields = Vec::new();
        for name in sort_key {
            let idx = schema.index_of(name).map_err(|_| {
                Error::config(
                    "sort_key",
                    format!(
                        "column {name:?} is not in the inputs' schema (columns: {:?})",
                        schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                    ),
                )
            })?;
            key_columns.push(idx);
            fields.push(SortField::new_with_options(
                schema.field(idx).data_type().clone(),
                SortOptions {
                    descending: false,
                    nulls_first: false,
                },
            ));
        }
        RowConverter::new(fields.clone())
            .map_err(|e| Error::config("sort_key", format!("cannot sort by these columns: {e}")))?;
        Ok(Self {
            schema,
            key_columns,
            fields,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn converter(&self) -> Result<RowConverter> {
        RowConverter::new(self.fields.clone()).map_err(sort_err)
    }

    /// The sort key of every row of `batch` (of this order's schema), as comparable rows.
    pub fn rows(&self, converter: &RowConverter, batch: &RecordBatch) -> Result<Rows> {
        let cols: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        converter.convert_columns(&cols).map_err(sort_err)
    }

    /// The key columns of `rows` rows of `batch`, picked by index.
    fn key_values(&self, batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
        let indices = arrow::array::UInt32Array::from(rows.to_vec());
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for &i in &self.key_columns {
            fields.push(self.schema.field(i).clone());
            columns.push(arrow::compute::take(batch.column(i), &indices, None).map_err(sort_err)?);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(sort_err)
    }

    /// Keys written by [`encode_keys`] (possibly of an older type of the same columns), as
    /// rows of this order.
    pub fn rows_of_keys(&self, converter: &RowConverter, keys: &RecordBatch) -> Result<Rows> {
        let mut cols: Vec<ArrayRef> = Vec::new();
        for (n, &i) in self.key_columns.iter().enumerate() {
            let wanted = self.schema.field(i).data_type();
            let col = keys
                .columns()
                .get(n)
                .ok_or_else(|| Error::Other("a sampled key lacks a key column".into()))?;
            cols.push(arrow::compute::cast(col, wanted).map_err(sort_err)?);
        }
        converter.convert_columns(&cols).map_err(sort_err)
    }
}

/// Keys (a batch of key columns) as Arrow IPC in base64, for a JSON record.
pub fn encode_keys(keys: &RecordBatch) -> Result<String> {
    use base64::Engine;
    let mut buf = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut buf, &keys.schema()).map_err(sort_err)?;
        writer.write(keys).map_err(sort_err)?;
        writer.finish().map_err(sort_err)?;
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// The keys [`encode_keys`] wrote, as one batch.
pub fn decode_keys(encoded: &str) -> Result<RecordBatch> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| Error::Other(format!("a recorded sort key is not base64: {e}")))?;
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(sort_err)?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader
        .collect::<std::result::Result<_, _>>()
        .map_err(sort_err)?;
    arrow::compute::concat_batches(&schema, &batches).map_err(sort_err)
}

/// Records every `every`-th key of the rows passing through it, in order (ranks 0, every, …).
pub struct KeySampler {
    order: KeyOrder,
    every: u64,
    seen: u64,
    picked: Vec<RecordBatch>,
}

impl KeySampler {
    pub fn new(order: KeyOrder, every: u64) -> Self {
        Self {
            order,
            every: every.max(1),
            seen: 0,
            picked: Vec::new(),
        }
    }

    pub fn observe(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows() as u64;
        let first = self.seen.div_ceil(self.every) * self.every;
        let rows: Vec<u32> = (first..self.seen + n)
            .step_by(self.every as usize)
            .map(|rank| (rank - self.seen) as u32)
            .collect();
        if !rows.is_empty() {
            self.picked.push(self.order.key_values(batch, &rows)?);
        }
        self.seen += n;
        Ok(())
    }

    pub fn finish(self) -> Result<RunSamples> {
        let keys = match self.picked.first() {
            Some(first) => {
                arrow::compute::concat_batches(&first.schema(), &self.picked).map_err(sort_err)?
            }
            None => self
                .order
                .key_values(&RecordBatch::new_empty(Arc::clone(&self.order.schema)), &[])?,
        };
        Ok(RunSamples {
            every: self.every,
            keys: encode_keys(&keys)?,
        })
    }
}

/// Sorts buffers of batches by the key: on the caller's thread, or on a thread of its own while
/// the caller fills the next buffer.
#[derive(Clone)]
struct RunSorter {
    order: KeyOrder,
}

impl RunSorter {
    /// `buffer`'s rows in sorted order, as batches of up to `OUT_ROWS` rows.
    fn sorted(
        &self,
        buffer: &[RecordBatch],
        mut emit: impl FnMut(RecordBatch) -> Result<()>,
    ) -> Result<()> {
        let converter = self.order.converter()?;
        let rows: Vec<Rows> = buffer
            .iter()
            .map(|b| self.order.rows(&converter, b))
            .collect::<Result<_>>()?;
        let mut indices: Vec<(usize, usize)> = buffer
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |r| (b, r)))
            .collect();
        let already_sorted = indices
            .windows(2)
            .all(|w| rows[w[0].0].row(w[0].1) <= rows[w[1].0].row(w[1].1));
        if !already_sorted {
            // Stable, so equal keys keep their input order.
            indices.sort_by(|a, b| rows[a.0].row(a.1).cmp(&rows[b.0].row(b.1)));
        }
        let refs: Vec<&RecordBatch> = buffer.iter().collect();
        for chunk in indices.chunks(OUT_ROWS) {
            emit(interleave_record_batch(&refs, chunk).map_err(sort_err)?)?;
        }
        Ok(())
    }

    /// Sorts `buffer` into the run file `path` (Arrow IPC).
    fn spill(&self, buffer: Vec<RecordBatch>, path: &Path) -> Result<()> {
        let file = File::create(path).map_err(|e| spill_err(path, e))?;
        let mut writer = StreamWriter::try_new(BufWriter::new(file), &self.order.schema)
            .map_err(|e| spill_err(path, e))?;
        self.sorted(&buffer, |b| {
            writer.write(&b).map_err(|e| spill_err(path, e))
        })?;
        writer.finish().map_err(|e| spill_err(path, e))?;
        tracing::debug!(run = %path.display(), "spilled a sorted run");
        Ok(())
    }
}

pub struct ExternalSorter {
    run_sorter: RunSorter,
    converter: RowConverter,
    buffer: Vec<RecordBatch>,
    buffered_bytes: usize,
    /// Sort buffer size before spilling. Two buffers may exist at once: the one being filled
    /// and the one a background thread sorts and spills.
    run_bytes: usize,
    /// Memory for the batches held open during a merge.
    merge_bytes: usize,
    scratch: tempfile::TempDir,
    runs: Vec<PathBuf>,
    runs_created: usize,
    rows_seen: u64,
    /// The run being sorted and spilled on another thread.
    spilling: Option<std::thread::JoinHandle<Result<()>>>,
    /// The run an input found in order is written to as it arrives.
    in_order: Option<InOrderRun>,
    /// Rows that went through a sort, and rows that became runs as they were.
    rows_sorted: u64,
    rows_in_order: u64,
}

/// A run written straight from an input in key order (an earlier sort-mode output), checked
/// row by row as it is written.
struct InOrderRun {
    writer: StreamWriter<BufWriter<File>>,
    path: PathBuf,
    last: Option<OwnedRow>,
}

impl ExternalSorter {
    /// `run_bytes` is the memory for runs (filled and spilling together, with their sort);
    /// `merge_bytes` the memory for the batches the final merge holds open.
    pub fn new(
        schema: SchemaRef,
        sort_key: &[String],
        run_bytes: u64,
        merge_bytes: u64,
        scratch_parent: &Path,
    ) -> Result<Self> {
        let order = KeyOrder::new(schema, sort_key)?;
        let converter = order.converter()?;
        std::fs::create_dir_all(scratch_parent).map_err(|e| spill_err(scratch_parent, e))?;
        let scratch = tempfile::Builder::new()
            .prefix("compactor-sort-")
            .tempdir_in(scratch_parent)
            .map_err(|e| spill_err(scratch_parent, e))?;
        Ok(Self {
            run_sorter: RunSorter { order },
            converter,
            buffer: Vec::new(),
            buffered_bytes: 0,
            run_bytes: (run_bytes / 2).max(2 << 20) as usize,
            merge_bytes: merge_bytes.max(4 << 20) as usize,
            scratch,
            runs: Vec::new(),
            runs_created: 0,
            rows_seen: 0,
            spilling: None,
            in_order: None,
            rows_sorted: 0,
            rows_in_order: 0,
        })
    }

    /// What the sort did so far (complete after [`Self::finish`] started).
    pub fn work(&self) -> SortWork {
        SortWork {
            rows_sorted: self.rows_sorted,
            rows_in_order: self.rows_in_order,
            runs: self.runs.len(),
            ..SortWork::default()
        }
    }

    /// Adds a batch of an input expected in key order (its footer declares the sort key): the
    /// rows in order are written to the input's own run as they are; from the first row out of
    /// order on, the input's rows are sorted like any other (returns false then, and the caller
    /// pushes the rest of the input with [`Self::push`]).
    pub fn push_in_order(&mut self, batch: RecordBatch) -> Result<bool> {
        if batch.num_rows() == 0 {
            return Ok(true);
        }
        let keys = self.run_sorter.order.rows(&self.converter, &batch)?;
        if self.in_order.is_none() {
            let path = self.new_run_path();
            let file = File::create(&path).map_err(|e| spill_err(&path, e))?;
            let writer = StreamWriter::try_new(BufWriter::new(file), &self.run_sorter.order.schema)
                .map_err(|e| spill_err(&path, e))?;
            self.in_order = Some(InOrderRun {
                writer,
                path,
                last: None,
            });
        }
        let run = self
            .in_order
            .as_mut()
            .ok_or_else(|| Error::Other("in-order run vanished".into()))?;
        let mut in_order = 0;
        for i in 0..batch.num_rows() {
            let row = keys.row(i);
            let before = if i == 0 {
                run.last.as_ref().map(|l| l.row())
            } else {
                Some(keys.row(i - 1))
            };
            if before.is_some_and(|b| b > row) {
                break;
            }
            in_order += 1;
        }
        if in_order > 0 {
            run.writer
                .write(&batch.slice(0, in_order))
                .map_err(|e| spill_err(&run.path, e))?;
            run.last = Some(keys.row(in_order - 1).owned());
            self.rows_seen += in_order as u64;
            self.rows_in_order += in_order as u64;
        }
        if in_order == batch.num_rows() {
            return Ok(true);
        }
        self.end_in_order()?;
        self.push(batch.slice(in_order, batch.num_rows() - in_order))?;
        Ok(false)
    }

    /// Closes the run of the input that was in order (at its end, or where it stopped being).
    pub fn end_in_order(&mut self) -> Result<()> {
        if let Some(run) = self.in_order.take() {
            let mut writer = run.writer;
            writer.finish().map_err(|e| spill_err(&run.path, e))?;
            self.runs.push(run.path);
        }
        Ok(())
    }

    pub fn rows_seen(&self) -> u64 {
        self.rows_seen
    }

    pub fn spilled_runs(&self) -> usize {
        self.runs.len()
    }

    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows_seen += batch.num_rows() as u64;
        self.rows_sorted += batch.num_rows() as u64;
        self.buffered_bytes += batch.get_array_memory_size();
        self.buffer.push(batch);
        if self.buffered_bytes >= self.run_bytes {
            self.spill_in_background()?;
        }
        Ok(())
    }

    fn new_run_path(&mut self) -> PathBuf {
        self.runs_created += 1;
        self.scratch
            .path()
            .join(format!("run-{:06}.arrow", self.runs_created))
    }

    /// Waits for the run spilling on another thread, if any.
    fn wait_for_spill(&mut self) -> Result<()> {
        match self.spilling.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| Error::Other("the sort thread panicked".into()))?,
            None => Ok(()),
        }
    }

    /// Hands the full buffer to a thread that sorts and spills it, once the previous one is
    /// done, so sorting overlaps with reading the next run.
    fn spill_in_background(&mut self) -> Result<()> {
        self.wait_for_spill()?;
        let buffer = std::mem::take(&mut self.buffer);
        self.buffered_bytes = 0;
        let path = self.new_run_path();
        self.runs.push(path.clone());
        let sorter = self.run_sorter.clone();
        let handle = std::thread::Builder::new()
            .name("sort-run".into())
            .spawn(move || sorter.spill(buffer, &path))
            .map_err(|e| Error::Other(format!("cannot start a sort thread: {e}")))?;
        self.spilling = Some(handle);
        Ok(())
    }

    /// Sorts and spills what is buffered, on this thread.
    fn spill(&mut self) -> Result<()> {
        self.wait_for_spill()?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        self.buffered_bytes = 0;
        let path = self.new_run_path();
        self.run_sorter.spill(buffer, &path)?;
        self.runs.push(path);
        Ok(())
    }

    /// Emits every row pushed so far in sorted order.
    pub async fn finish(mut self, sink: &mut dyn BatchSink) -> Result<SortWork> {
        self.end_in_order()?;
        self.wait_for_spill()?;
        if self.runs.is_empty() {
            let work = self.work();
            let mut sorted = Vec::new();
            self.run_sorter.sorted(&self.buffer, |b| {
                sorted.push(b);
                Ok(())
            })?;
            self.buffer.clear();
            for batch in sorted {
                sink.push(batch).await?;
            }
            return Ok(work);
        }
        self.spill()?;
        let work = self.work();
        let fan_in = self.fan_in();
        let order = self.run_sorter.order.clone();
        // Intermediate passes until the remaining runs can be merged at once.
        while self.runs.len() > fan_in {
            let group: Vec<PathBuf> = self.runs.drain(..fan_in).collect();
            let path = self.new_run_path();
            let file = File::create(&path).map_err(|e| spill_err(&path, e))?;
            let mut writer = StreamWriter::try_new(BufWriter::new(file), &order.schema)
                .map_err(|e| spill_err(&path, e))?;
            let mut merger = RunMerger::open(ipc_runs(&group)?, &order).await?;
            while let Some(batch) = merger.next_batch().await? {
                writer.write(&batch).map_err(|e| spill_err(&path, e))?;
            }
            writer.finish().map_err(|e| spill_err(&path, e))?;
            for old in group {
                let _ = std::fs::remove_file(old);
            }
            self.runs.push(path);
        }
        let mut merger = RunMerger::open(ipc_runs(&self.runs)?, &order).await?;
        while let Some(batch) = merger.next_batch().await? {
            sink.push(batch).await?;
        }
        Ok(work)
    }

    /// How many runs fit in the merge memory: each open run holds one batch.
    fn fan_in(&self) -> usize {
        let row_bytes = (self.run_bytes as u64 / self.rows_seen.max(1)).max(1) as usize;
        let per_run = (row_bytes * OUT_ROWS * 2).max(1);
        (self.merge_bytes / per_run).max(MIN_FAN_IN)
    }
}

/// A sorted run the k-way merge reads batch by batch.
#[async_trait::async_trait]
pub trait RunSource: Send {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>>;
}

/// A run spilled to a local Arrow IPC file.
struct IpcRun {
    reader: StreamReader<BufReader<File>>,
    path: PathBuf,
}

#[async_trait::async_trait]
impl RunSource for IpcRun {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.reader
            .next()
            .transpose()
            .map_err(|e| spill_err(&self.path, e))
    }
}

fn ipc_runs(paths: &[PathBuf]) -> Result<Vec<Box<dyn RunSource>>> {
    paths
        .iter()
        .map(|path| {
            let file = File::open(path).map_err(|e| spill_err(path, e))?;
            let reader = StreamReader::try_new(BufReader::new(file), None)
                .map_err(|e| spill_err(path, e))?;
            Ok(Box::new(IpcRun {
                reader,
                path: path.clone(),
            }) as Box<dyn RunSource>)
        })
        .collect()
}

/// The run's next non-empty batch, with its keys.
async fn advance(
    order: &KeyOrder,
    converter: &RowConverter,
    mut source: Box<dyn RunSource>,
) -> Result<Option<RunCursor>> {
    while let Some(batch) = source.next_batch().await? {
        if batch.num_rows() == 0 {
            continue;
        }
        let rows = order.rows(converter, &batch)?;
        return Ok(Some(RunCursor {
            source,
            batch,
            rows,
            pos: 0,
        }));
    }
    Ok(None)
}

struct RunCursor {
    source: Box<dyn RunSource>,
    batch: RecordBatch,
    rows: Rows,
    pos: usize,
}

/// A k-way merge over sorted runs, emitting batches of up to `OUT_ROWS` rows. Equal keys come
/// in run order, so the merge is stable when the runs are in input order.
pub struct RunMerger {
    cursors: Vec<Option<RunCursor>>,
    /// Runs with a current row, as a binary min-heap ordered by (row, run): equal keys come
    /// in run order. Comparisons read the cursors' rows in place, nothing is copied.
    heap: Vec<usize>,
    order: KeyOrder,
    converter: RowConverter,
    pending: Vec<(usize, usize)>,
}

impl RunMerger {
    /// Opens every run (reading its first batch).
    pub async fn open(sources: Vec<Box<dyn RunSource>>, order: &KeyOrder) -> Result<Self> {
        let mut merger = Self {
            cursors: Vec::new(),
            heap: Vec::new(),
            order: order.clone(),
            converter: order.converter()?,
            pending: Vec::new(),
        };
        for (i, source) in sources.into_iter().enumerate() {
            let cursor = advance(&merger.order, &merger.converter, source).await?;
            let has_rows = cursor.is_some();
            merger.cursors.push(cursor);
            if has_rows {
                merger.heap.push(i);
                merger.sift_up(merger.heap.len() - 1);
            }
        }
        Ok(merger)
    }

    /// Does run `a`'s current row come before run `b`'s?
    fn before(&self, a: usize, b: usize) -> bool {
        match (&self.cursors[a], &self.cursors[b]) {
            (Some(x), Some(y)) => (x.rows.row(x.pos), a) < (y.rows.row(y.pos), b),
            _ => false,
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.before(self.heap[i], self.heap[parent]) {
                break;
            }
            self.heap.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.before(self.heap[l], self.heap[least]) {
                least = l;
            }
            if r < self.heap.len() && self.before(self.heap[r], self.heap[least]) {
                least = r;
            }
            if least == i {
                return;
            }
            self.heap.swap(i, least);
            i = least;
        }
    }

    /// Removes the heap's top run (it has no current row any more).
    fn pop_top(&mut self) {
        let last = self.heap.len() - 1;
        self.heap.swap(0, last);
        self.heap.pop();
        if !self.heap.is_empty() {
            self.sift_down(0);
        }
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        // Indices refer to each cursor's current batch; runs without one are never referenced.
        let placeholder = self
            .cursors
            .iter()
            .flatten()
            .next()
            .map(|c| c.batch.clone())
            .ok_or_else(|| Error::Other("merge lost its batches".into()))?;
        let batches: Vec<RecordBatch> = self
            .cursors
            .iter()
            .map(|c| {
                c.as_ref()
                    .map_or_else(|| placeholder.clone(), |c| c.batch.clone())
            })
            .collect();
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let out = interleave_record_batch(&refs, &self.pending).map_err(sort_err)?;
        self.pending.clear();
        Ok(Some(out))
    }

    pub async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        while let Some(&run) = self.heap.first() {
            let cursor = self.cursors[run]
                .as_mut()
                .ok_or_else(|| Error::Other("merge cursor missing".into()))?;
            self.pending.push((run, cursor.pos));
            cursor.pos += 1;
            if cursor.pos < cursor.batch.num_rows() {
                // The same run, at its next row: back to its place.
                self.sift_down(0);
                if self.pending.len() >= OUT_ROWS {
                    return self.flush();
                }
            } else {
                // The batch is about to be replaced: emit what refers to it first.
                let out = self.flush()?;
                let exhausted = self.cursors[run]
                    .take()
                    .ok_or_else(|| Error::Other("merge cursor missing".into()))?;
                let next = advance(&self.order, &self.converter, exhausted.source).await?;
                let has_rows = next.is_some();
                self.cursors[run] = next;
                if has_rows {
                    self.sift_down(0);
                } else {
                    self.pop_top();
                }
                if out.is_some() {
                    return Ok(out);
                }
            }
        }
        self.flush()
    }
}

/// Output schema in sort mode: the `seq` column right after the last sort key column.
pub fn with_seq_column(schema: &SchemaRef, sort_key: &[String], seq: &str) -> (SchemaRef, usize) {
    let after = sort_key
        .iter()
        .filter_map(|k| schema.index_of(k).ok())
        .max()
        .map_or(0, |i| i + 1);
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.insert(after, Field::new(seq, DataType::Int64, false));
    (
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        after,
    )
}

/// Adds `seq` = 0..N-1 over the batches passing through.
pub struct SeqNumbering {
    pub schema: SchemaRef,
    pub position: usize,
    pub next: i64,
}

impl SeqNumbering {
    pub fn number(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows() as i64;
        let seq: ArrayRef = Arc::new(Int64Array::from_iter_values(self.next..self.next + n));
        self.next += n;
        let mut columns = batch.columns().to_vec();
        columns.insert(self.position, seq);
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(sort_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array as I64, StringArray};

    struct Collect(Vec<RecordBatch>);

    #[async_trait::async_trait]
    impl BatchSink for Collect {
        async fn push(&mut self, batch: RecordBatch) -> Result<()> {
            self.0.push(batch);
            Ok(())
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Utf8, false),
        ]))
    }

    fn batch(keys: Vec<Option<i64>>, tag: &str) -> RecordBatch {
        let v: Vec<String> = (0..keys.len()).map(|i| format!("{tag}{i}")).collect();
        RecordBatch::try_new(
            schema(),
            vec![Arc::new(I64::from(keys)), Arc::new(StringArray::from(v))],
        )
        .unwrap()
    }

    async fn sort_all(batches: Vec<RecordBatch>, budget: u64) -> (Vec<Option<i64>>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter =
            ExternalSorter::new(schema(), &["k".into()], budget / 4, budget / 4, dir.path())
                .unwrap();
        // Force tiny runs so that spilling and multi-pass merging happen.
        sorter.run_bytes = 1;
        sorter.merge_bytes = 1;
        for b in batches {
            sorter.push(b).unwrap();
        }
        let runs = sorter.spilled_runs();
        let mut out = Collect(Vec::new());
        sorter.finish(&mut out).await.unwrap();
        let keys = out
            .0
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<I64>().unwrap();
                (0..a.len())
                    .map(|i| if a.is_null(i) { None } else { Some(a.value(i)) })
                    .collect::<Vec<_>>()
            })
            .collect();
        (keys, runs)
    }

    #[tokio::test]
    async fn an_input_in_order_becomes_a_run_until_a_row_is_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter =
            ExternalSorter::new(schema(), &["k".into()], 1 << 24, 1 << 24, dir.path()).unwrap();
        sorter.push(batch(vec![Some(4), Some(0)], "u")).unwrap();
        // In order across its batches, then a row out of order: the rest is sorted instead.
        assert!(sorter
            .push_in_order(batch(vec![Some(1), Some(2)], "a"))
            .unwrap());
        assert!(!sorter
            .push_in_order(batch(vec![Some(3), Some(1), Some(9)], "b"))
            .unwrap());
        sorter.end_in_order().unwrap();
        let mut out = Collect(Vec::new());
        let work = sorter.finish(&mut out).await.unwrap();
        assert_eq!((work.rows_in_order, work.rows_sorted), (3, 4));
        let keys: Vec<i64> = out
            .0
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<I64>().unwrap();
                (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(keys, vec![0, 1, 1, 2, 3, 4, 9]);
    }

    #[tokio::test]
    async fn spilled_runs_merge_into_one_sorted_sequence_with_nulls_last() {
        let batches = vec![
            batch(vec![Some(5), None, Some(1)], "a"),
            batch(vec![Some(3), Some(3)], "b"),
            batch(vec![Some(9), Some(0), Some(4)], "c"),
            batch(vec![Some(2)], "d"),
        ];
        let (keys, runs) = sort_all(batches, 64 << 20).await;
        assert_eq!(runs, 4, "each batch became its own run");
        assert_eq!(
            keys,
            vec![
                Some(0),
                Some(1),
                Some(2),
                Some(3),
                Some(3),
                Some(4),
                Some(5),
                Some(9),
                None
            ]
        );
    }

    #[tokio::test]
    async fn in_memory_sort_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter =
            ExternalSorter::new(schema(), &["k".into()], 1 << 28, 1 << 28, dir.path()).unwrap();
        sorter
            .push(batch(vec![Some(2), Some(1), Some(2)], "x"))
            .unwrap();
        sorter.push(batch(vec![Some(1)], "y")).unwrap();
        let mut out = Collect(Vec::new());
        sorter.finish(&mut out).await.unwrap();
        let v = out.0[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let tags: Vec<&str> = (0..v.len()).map(|i| v.value(i)).collect();
        assert_eq!(tags, vec!["x1", "y0", "x0", "x2"]);
    }

    #[test]
    fn unknown_sort_key_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = ExternalSorter::new(schema(), &["nope".into()], 1 << 28, 1 << 28, dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sort_key") && e.contains("nope"), "{e}");
    }

    #[test]
    fn seq_goes_after_the_last_key_column() {
        let (s, pos) = with_seq_column(&schema(), &["k".into()], "seq");
        assert_eq!(pos, 1);
        assert_eq!(s.field(1).name(), "seq");
        let mut numbering = SeqNumbering {
            schema: s,
            position: pos,
            next: 10,
        };
        let b = numbering
            .number(batch(vec![Some(1), Some(2)], "a"))
            .unwrap();
        let seq = b.column(1).as_any().downcast_ref::<I64>().unwrap();
        assert_eq!(seq.values(), &[10, 11]);
        assert_eq!(numbering.next, 12);
    }
}
