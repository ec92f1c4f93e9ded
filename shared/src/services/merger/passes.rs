//! A partition sorted in passes ([`crate::model::passes`]): when a sort-mode task's inputs
//! exceed what one step may handle (`max_task_bytes`, and on Lambda the time left), the task
//! runs as run steps (each sorts a group of inputs into staged Parquet runs, sampling its keys)
//! and then merge steps (each merges every run's rows of one key range, numbering them from the
//! rows below the range). Each step stages its result in a directory of its own with a
//! create-if-absent manifest, so a task stopped anywhere (crash, timeout, an invocation's time
//! used up) continues from its last finished step. The task's manifest lists the merge steps'
//! outputs in key order and is committed like any other: the partition changes at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::row::{OwnedRow, RowConverter, Rows};
use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::ParquetRecordBatchStreamBuilder;

use super::files::{outputs_schema, task_memory};
use super::inputs::BATCH_ROWS;
use super::{task_manifest, Merger};
use crate::error::{Error, Result};
use crate::format::io::{read_footer, StoreReader};
use crate::format::sort::{decode_keys, encode_keys, KeyOrder, RunMerger, RunSource};
use crate::model::batch::BatchSink;
use crate::model::dataset::Mode;
use crate::model::manifest::{SortWork, TaskManifest};
use crate::model::object::ObjectMeta;
use crate::model::passes::{
    check_assembly, choose_bounds, merge_step_name, run_step_name, PassPlan, RangePlan, PASSES,
    RANGES,
};
use crate::model::schema::{conform, unify};
use crate::model::task::{MergeRange, SortStep, Task, MANIFEST};
use crate::ports::store::{put_json_once, read_json};
use crate::support::faults::{crash_point, SORT_STEP_POINTS};

/// How many steps run at once: one per core, as long as each gets the smallest budget.
fn step_parallelism(budget: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shares = (budget / crate::model::memory::MIN_BUDGET).max(1) as usize;
    cores.min(shares).max(1)
}

/// Decoded bytes per stored byte of a run (LZ4, no dictionaries), assumed when sizing batches.
const RUN_DECODED_GROWTH: f64 = 3.0;
/// The fewest rows a merge step decodes at once per run, whatever the number of runs.
const MIN_RUN_BATCH: usize = 256;

/// The least a step handles, whatever the time left: smaller steps cost more than they save.
const MIN_STEP_BYTES: u64 = 16 << 20;

/// How long a merger may run: a step starts only if it is the first of this run or fits
/// before `deadline` at `throughput` bytes per second, leaving `margin`.
#[derive(Clone, Copy, Debug)]
pub struct TimeLimit {
    pub deadline: Instant,
    pub throughput: u64,
    pub margin: Duration,
}

impl TimeLimit {
    fn needs(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.throughput.max(1) as f64)
    }

    /// Input bytes that fit in the time left.
    fn fits(&self) -> u64 {
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(self.margin);
        (left.as_secs_f64() * self.throughput as f64) as u64
    }
}

/// How a sort in passes ended this time.
pub(super) enum Passes {
    Done(Box<TaskManifest>),
    /// The time left did not allow the next step; the task continues where it stopped.
    Paused {
        steps_done: usize,
        steps_left: usize,
    },
}

impl Merger {
    /// Input bytes one step of `task` handles at most.
    fn step_bytes(&self, task: &Task) -> u64 {
        let limit = task.dataset.max_task_bytes.bytes();
        match &self.time_limit {
            Some(t) => limit.min(t.fits().max(MIN_STEP_BYTES)),
            None => limit,
        }
    }

    /// Is `task` (a file merge) sorted in passes? When its inputs exceed one step, or when it
    /// started so.
    pub(super) async fn sorts_in_passes(&self, task: &Task) -> Result<bool> {
        if task.dataset.mode != Mode::Sort || task.kind.sort_step().is_some() {
            return Ok(false);
        }
        if task.input_bytes() > self.step_bytes(task) {
            return Ok(true);
        }
        Ok(self.store.head(&task.staging_key(PASSES)).await?.is_some())
    }

    /// Runs the steps of `task` that are not done yet, as far as the time allows.
    pub(super) async fn sort_in_passes(&self, task: &Arc<Task>) -> Result<Passes> {
        let plan: PassPlan = self
            .put_once(
                task,
                PASSES,
                PassPlan::new(&task.inputs, self.step_bytes(task)),
            )
            .await?;
        let by_key: HashMap<&str, &ObjectMeta> =
            task.inputs.iter().map(|i| (i.key.as_str(), i)).collect();
        // Steps run side by side, one per core, each within its share of the budget.
        let parallel = step_parallelism(task.memory_budget);
        let share = Task {
            memory_budget: task.memory_budget / parallel as u64,
            ..(**task).clone()
        };
        // A merge step holds a row group of every run: run row groups are sized for that.
        let row_group_bytes = task_memory(&share).merge / (2 * plan.runs.len().max(1) as u64);
        let mut run_steps = Vec::with_capacity(plan.runs.len());
        for (i, keys) in plan.runs.iter().enumerate() {
            let inputs =
                keys.iter()
                    .map(|k| {
                        by_key.get(k.as_str()).map(|m| (*m).clone()).ok_or_else(|| {
                            Error::Manifest {
                                key: task.staging_key(PASSES),
                                message: format!("names input {k}, which the task does not have"),
                            }
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
            run_steps.push(Arc::new(share.step(
                SortStep {
                    name: run_step_name(i),
                    row_group_bytes,
                    merge: None,
                },
                inputs,
            )));
        }
        let mut ran = 0usize;
        let runs = match self.run_pass(&run_steps, None, parallel, &mut ran).await? {
            Ok(runs) => runs,
            Err(left) => {
                return Ok(Passes::Paused {
                    steps_done: run_steps.len() - left,
                    steps_left: left,
                })
            }
        };
        let mut sources = RunFiles::of(self, &runs).await?;
        let ranges: RangePlan =
            match read_json(self.store.as_ref(), &task.staging_key(RANGES)).await? {
                Some(r) => r,
                None => {
                    let r = sources.choose_ranges(plan.step_bytes)?;
                    self.put_once(task, RANGES, r).await?
                }
            };
        sources.ranges = ranges.ranges() as u64;
        let merge_steps: Vec<Arc<Task>> = (0..ranges.ranges())
            .map(|j| {
                Arc::new(share.step(
                    SortStep {
                        name: merge_step_name(j),
                        row_group_bytes: 0,
                        merge: Some(MergeRange {
                            index: j,
                            lower: j.checked_sub(1).map(|b| ranges.bounds[b].clone()),
                            upper: ranges.bounds.get(j).cloned(),
                        }),
                    },
                    Vec::new(),
                ))
            })
            .collect();
        let merges = match self
            .run_pass(&merge_steps, Some(&sources), parallel, &mut ran)
            .await?
        {
            Ok(merges) => merges,
            Err(left) => {
                return Ok(Passes::Paused {
                    steps_done: runs.len() + merge_steps.len() - left,
                    steps_left: left,
                })
            }
        };
        Ok(Passes::Done(Box::new(assemble(task, &runs, merges)?)))
    }

    /// Runs the steps of one pass not done yet, `parallel` at a time, while the time allows;
    /// every step's manifest in order, or (`Err`) how many steps are left when it stopped.
    async fn run_pass(
        &self,
        steps: &[Arc<Task>],
        sources: Option<&RunFiles>,
        parallel: usize,
        ran: &mut usize,
    ) -> Result<std::result::Result<Vec<TaskManifest>, usize>> {
        let mut manifests: Vec<Option<TaskManifest>> = Vec::with_capacity(steps.len());
        for step in steps {
            manifests.push(self.step_manifest(step).await?);
        }
        let pending: Vec<usize> = (0..steps.len())
            .filter(|&i| manifests[i].is_none())
            .collect();
        for (done, group) in pending.chunks(parallel.max(1)).enumerate() {
            let bytes = group
                .iter()
                .map(|&i| self.step_estimate(&steps[i], sources))
                .max()
                .unwrap_or(0);
            if !self.may_start(*ran, bytes) {
                return Ok(Err(pending.len() - done * parallel.max(1)));
            }
            let results = futures::future::try_join_all(
                group.iter().map(|&i| self.run_step(&steps[i], sources)),
            )
            .await?;
            for (&i, manifest) in group.iter().zip(results) {
                manifests[i] = Some(manifest);
            }
            *ran += group.len();
        }
        manifests
            .into_iter()
            .map(|m| m.ok_or_else(|| Error::Other("a sort step left no manifest".into())))
            .collect::<Result<Vec<_>>>()
            .map(Ok)
    }

    /// Input bytes a step reads: its inputs (run step) or its share of the runs (merge step).
    fn step_estimate(&self, step: &Task, sources: Option<&RunFiles>) -> u64 {
        match sources {
            Some(runs) => runs.bytes / runs.ranges.max(1),
            None => step.input_bytes(),
        }
    }

    /// Runs one step and records it.
    async fn run_step(&self, step: &Arc<Task>, sources: Option<&RunFiles>) -> Result<TaskManifest> {
        let started = Instant::now();
        let attempt = self.next_attempt(step).await?;
        let mut manifest = match sources {
            None => {
                tracing::info!(step = %step.task_dir(), inputs = step.inputs.len(), bytes = step.input_bytes(), "sorting a run");
                self.merge(step, attempt).await?
            }
            Some(runs) => {
                tracing::info!(step = %step.task_dir(), runs = runs.runs.len(), "merging a key range of the runs");
                self.merge_range(step, attempt, runs).await?
            }
        };
        manifest.merge_ms = started.elapsed().as_millis() as u64;
        let (manifest, _) = self.stage_manifest(step, manifest).await?;
        crash_point(match sources {
            None => SORT_STEP_POINTS[0],
            Some(_) => SORT_STEP_POINTS[1],
        });
        Ok(manifest)
    }

    fn may_start(&self, ran: usize, bytes: u64) -> bool {
        match &self.time_limit {
            Some(t) if ran > 0 => Instant::now() + t.needs(bytes) + t.margin <= t.deadline,
            _ => true,
        }
    }

    /// Writes `value` as the task's `name` unless it exists; returns the one that stands.
    async fn put_once<T>(&self, task: &Task, name: &str, value: T) -> Result<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let key = task.staging_key(name);
        if let Some(existing) = read_json::<T>(self.store.as_ref(), &key).await? {
            return Ok(existing);
        }
        Ok(put_json_once(self.store.as_ref(), &key, value).await?.0)
    }

    async fn step_manifest(&self, step: &Task) -> Result<Option<TaskManifest>> {
        read_json(self.store.as_ref(), &step.staging_key(MANIFEST)).await
    }

    /// Merge step: every run's rows in the step's key range, merged, numbered from the rows
    /// below the range, written to the step's directory.
    async fn merge_range(
        &self,
        step: &Arc<Task>,
        attempt: u32,
        runs: &RunFiles,
    ) -> Result<TaskManifest> {
        let range = step
            .kind
            .sort_step()
            .and_then(|s| s.merge.clone())
            .ok_or_else(|| Error::Other("a merge step without a key range".into()))?;
        let order = KeyOrder::new(Arc::clone(&runs.schema), &step.dataset.sort_key)?;
        let converter = order.converter()?;
        let bound = |b: &Option<String>| -> Result<Option<OwnedRow>> {
            b.as_deref()
                .map(|b| {
                    let rows = order.rows_of_keys(&converter, &decode_keys(b)?)?;
                    match rows.num_rows() {
                        1 => Ok(rows.row(0).owned()),
                        n => Err(Error::Other(format!("a range bound holds {n} keys, not 1"))),
                    }
                })
                .transpose()
        };
        let (lower, upper) = (bound(&range.lower)?, bound(&range.upper)?);
        let below = Arc::new(AtomicU64::new(0));
        // Every run holds a decoded batch open: its rows are sized to the run's share of the
        // merge memory (LZ4 runs decode to about this many times their stored bytes).
        let share = task_memory(step).merge / runs.runs.len().max(1) as u64;
        let mut sources: Vec<Box<dyn RunSource>> = Vec::with_capacity(runs.runs.len());
        for run in &runs.runs {
            let decoded_row = (run.row_bytes * RUN_DECODED_GROWTH).max(1.0);
            let batch_rows = ((share / 2) as f64 / decoded_row) as usize;
            sources.push(Box::new(
                run.from(
                    self,
                    &order,
                    &converter,
                    (lower.clone(), upper.clone()),
                    &below,
                    batch_rows.clamp(MIN_RUN_BATCH, BATCH_ROWS),
                )
                .await?,
            ));
        }
        // Opening reads every run up to its first row in range: what is below is counted.
        let mut merger = RunMerger::open(sources, &order).await?;
        let seq_start = below.load(Ordering::SeqCst);
        let output_schema = outputs_schema(step, &runs.schema);
        let mut sink = self.output_sink(step, attempt, &runs.schema, seq_start)?;
        let merged = async {
            while let Some(batch) = merger.next_batch().await? {
                sink.push(batch).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = merged {
            sink.writer.abort().await;
            return Err(e);
        }
        let outputs = sink.writer.finish().await?;
        let mut manifest = task_manifest(
            step,
            attempt,
            Vec::new(),
            Vec::new(),
            outputs,
            &output_schema,
            None,
        );
        manifest.seq_start = Some(seq_start);
        Ok(manifest)
    }
}

/// The task's manifest from its steps': the run steps' inputs, the merge steps' outputs in key
/// order (at the task's final keys), after checking that they hold every run's row once and
/// number them 0..N-1.
fn assemble(task: &Task, runs: &[TaskManifest], merges: Vec<TaskManifest>) -> Result<TaskManifest> {
    let run_rows: u64 = runs.iter().map(|r| r.rows).sum();
    let merge_ms = runs.iter().chain(&merges).map(|m| m.merge_ms).sum();
    let steps: Vec<(u64, u64)> = merges
        .iter()
        .map(|m| (m.seq_start.unwrap_or(0), m.rows))
        .collect();
    check_assembly(run_rows, &steps).map_err(|message| Error::Manifest {
        key: task.staging_key(RANGES),
        message: format!("{message}; delete the task directory to sort the partition again"),
    })?;
    let mut sort = SortWork {
        run_steps: runs.len(),
        merge_steps: merges.len(),
        ..SortWork::default()
    };
    for run in runs {
        if let Some(work) = &run.sort {
            sort.add(work);
        }
    }
    let schema = merges.first().map(|m| m.schema.clone()).unwrap_or_default();
    let mut outputs = Vec::new();
    for merge in merges {
        outputs.extend(merge.outputs);
    }
    for (i, output) in outputs.iter_mut().enumerate() {
        output.final_key = task.final_output_key(i);
    }
    let mut manifest = task_manifest(
        task,
        1,
        runs.iter().flat_map(|r| r.inputs.clone()).collect(),
        runs.iter().flat_map(|r| r.skipped.clone()).collect(),
        outputs,
        &Arc::new(arrow::datatypes::Schema::empty()),
        None,
    );
    manifest.schema = schema;
    manifest.sort = Some(sort);
    manifest.merge_ms = merge_ms;
    Ok(manifest)
}

/// One run's staged files, with their row counts and sampled keys.
struct Run {
    files: Vec<(ObjectMeta, u64)>,
    every: u64,
    samples: RecordBatch,
    /// Bytes per row of the run's files.
    row_bytes: f64,
}

/// The runs of a task, and the schema they are merged in.
struct RunFiles {
    runs: Vec<Run>,
    schema: SchemaRef,
    /// Bytes of all runs, and the merge ranges they are split in (once chosen).
    bytes: u64,
    ranges: u64,
}

impl RunFiles {
    async fn of(merger: &Merger, manifests: &[TaskManifest]) -> Result<Self> {
        let mut runs = Vec::new();
        let mut schemas = Vec::new();
        for m in manifests {
            let samples = m.samples.as_ref().ok_or_else(|| Error::Manifest {
                key: m.task_id.clone(),
                message: "a run step's manifest has no sampled keys".into(),
            })?;
            let files: Vec<(ObjectMeta, u64)> = m
                .outputs
                .iter()
                .map(|o| {
                    (
                        ObjectMeta {
                            key: o.staging_key.clone(),
                            size: o.size,
                            version: String::new(),
                            last_modified_ms: 0,
                        },
                        o.rows,
                    )
                })
                .collect();
            if let Some((first, _)) = files.first() {
                let footer = read_footer(merger.store.as_ref(), &first.key).await?;
                let meta = ArrowReaderMetadata::try_new(footer, Default::default())
                    .map_err(|e| Error::parquet(&first.key, e))?;
                schemas.push((first.key.clone(), Arc::clone(meta.schema())));
            }
            runs.push(Run {
                row_bytes: m.output_bytes() as f64 / m.rows.max(1) as f64,
                files,
                every: samples.every.max(1),
                samples: decode_keys(&samples.keys)?,
            });
        }
        let partition = manifests
            .first()
            .map(|m| format!("{}/{}", m.dataset, m.partition))
            .unwrap_or_default();
        let schema = unify(&partition, &schemas, &[])?;
        Ok(Self {
            runs,
            schema,
            bytes: manifests.iter().map(TaskManifest::output_bytes).sum(),
            ranges: 1,
        })
    }

    /// Bounds that split the runs' rows into ranges of about `step_bytes` each.
    fn choose_ranges(&self, step_bytes: u64) -> Result<RangePlan> {
        let Some(first) = self.runs.iter().find(|r| r.samples.num_rows() > 0) else {
            return Ok(RangePlan::default());
        };
        // The samples' own columns are the key: compared as rows of their own order.
        let key_names: Vec<String> = first
            .samples
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let key_schema = Arc::new(arrow::datatypes::Schema::new(
            key_names
                .iter()
                .map(|n| self.schema.field_with_name(n).cloned())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| {
                    Error::Other(format!("a sampled key column is not in the runs: {e}"))
                })?,
        ));
        let order = KeyOrder::new(Arc::clone(&key_schema), &key_names)?;
        let converter = order.converter()?;
        let mut samples: Vec<(KeyAt, u64)> = Vec::new();
        for (r, run) in self.runs.iter().enumerate() {
            let rows = order.rows_of_keys(&converter, &run.samples)?;
            // Each sample stands for the bytes of the rows up to the next one.
            let bytes = ((run.every as f64 * run.row_bytes) as u64).max(1);
            for i in 0..rows.num_rows() {
                samples.push((KeyAt(rows.row(i).owned(), (r, i)), bytes));
            }
        }
        let bounds = choose_bounds(samples, step_bytes);
        let bounds = bounds
            .into_iter()
            .map(|KeyAt(_, (r, i))| encode_keys(&self.runs[r].samples.slice(i, 1)))
            .collect::<Result<Vec<_>>>()?;
        Ok(RangePlan { bounds })
    }
}

/// A sampled key (compared by its row only) and where it was sampled.
#[derive(Clone)]
struct KeyAt(OwnedRow, (usize, usize));

impl PartialEq for KeyAt {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for KeyAt {}
impl PartialOrd for KeyAt {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for KeyAt {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl Run {
    /// The run's rows in `[lower, upper)`, read from the last sampled key below `lower` on;
    /// rows below `lower` are added to `below`.
    async fn from(
        &self,
        merger: &Merger,
        order: &KeyOrder,
        converter: &RowConverter,
        (lower, upper): (Option<OwnedRow>, Option<OwnedRow>),
        below: &Arc<AtomicU64>,
        batch_rows: usize,
    ) -> Result<RangeRun> {
        // Every row up to the last sample under `lower` is under it too.
        let skip = match &lower {
            Some(lower) => {
                let samples = order.rows_of_keys(converter, &self.samples)?;
                let under = partition_point(&samples, |row| row < lower.row());
                (under.saturating_sub(1) as u64) * self.every
            }
            None => 0,
        };
        let mut skipped = 0u64;
        // Each file to read, and for the first its footer and the row groups to read.
        let mut items: Vec<(ObjectMeta, Option<FirstFile>)> = Vec::new();
        for (meta, rows) in &self.files {
            if items.is_empty() && skipped + rows <= skip {
                skipped += rows;
                continue;
            }
            if items.is_empty() {
                // The first file read: from its row group that holds rank `skip`.
                let footer = read_footer(merger.store.as_ref(), &meta.key).await?;
                let mut groups = Vec::new();
                for (g, group) in footer.row_groups().iter().enumerate() {
                    let n = group.num_rows() as u64;
                    if groups.is_empty() && skipped + n <= skip {
                        skipped += n;
                    } else {
                        groups.push(g);
                    }
                }
                items.push((meta.clone(), Some((footer, groups))));
            } else {
                items.push((meta.clone(), None));
            }
        }
        below.fetch_add(skipped, Ordering::SeqCst);
        let store = Arc::clone(&merger.store);
        let batches = stream::iter(items)
            .then(move |(meta, first)| {
                let store = Arc::clone(&store);
                async move { open_run_file(store, meta, first, batch_rows).await }
            })
            .try_flatten()
            .boxed();
        Ok(RangeRun {
            batches,
            order: order.clone(),
            converter: order.converter()?,
            lower,
            upper,
            below: Arc::clone(below),
            done: false,
        })
    }
}

/// The first file a merge step reads of a run: its footer (read to find where to start) and
/// the row groups from there on.
type FirstFile = (Arc<parquet::file::metadata::ParquetMetaData>, Vec<usize>);

/// The batches of one run file: the first from `first`'s row groups (its footer already read),
/// the others whole.
async fn open_run_file(
    store: Arc<dyn crate::ports::store::ObjectStore>,
    meta: ObjectMeta,
    first: Option<FirstFile>,
    batch_rows: usize,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let (footer, groups) = match first {
        Some((footer, groups)) => (footer, Some(groups)),
        None => (read_footer(store.as_ref(), &meta.key).await?, None),
    };
    let key = meta.key.clone();
    let arrow_meta = ArrowReaderMetadata::try_new(footer, Default::default())
        .map_err(|e| Error::parquet(&key, e))?;
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
        StoreReader::ranged(store, &meta),
        arrow_meta,
    )
    .with_batch_size(batch_rows);
    if let Some(groups) = groups {
        builder = builder.with_row_groups(groups);
    }
    let stream = builder.build().map_err(|e| Error::parquet(&key, e))?;
    Ok(stream
        .map_err(move |e| Error::parquet(&meta.key, e))
        .boxed())
}

/// How many of `rows` (sorted) satisfy `below` (true for a prefix).
fn partition_point(rows: &Rows, below: impl Fn(arrow::row::Row<'_>) -> bool) -> usize {
    let (mut lo, mut hi) = (0, rows.num_rows());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if below(rows.row(mid)) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// One run's rows in a key range, for the k-way merge.
struct RangeRun {
    batches: BoxStream<'static, Result<RecordBatch>>,
    order: KeyOrder,
    converter: RowConverter,
    lower: Option<OwnedRow>,
    upper: Option<OwnedRow>,
    below: Arc<AtomicU64>,
    done: bool,
}

#[async_trait]
impl RunSource for RangeRun {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        while !self.done {
            let Some(batch) = self.batches.next().await.transpose()? else {
                return Ok(None);
            };
            let batch = conform(&batch, self.order.schema())
                .map_err(|reason| Error::Other(format!("a sorted run: {reason}")))?;
            let rows = self.order.rows(&self.converter, &batch)?;
            let start = match &self.lower {
                Some(lower) => partition_point(&rows, |r| r < lower.row()),
                None => 0,
            };
            self.below.fetch_add(start as u64, Ordering::SeqCst);
            let end = match &self.upper {
                Some(upper) => {
                    let end = partition_point(&rows, |r| r < upper.row());
                    if end < rows.num_rows() {
                        self.done = true;
                    }
                    end.max(start)
                }
                None => rows.num_rows(),
            };
            if end > start {
                return Ok(Some(batch.slice(start, end - start)));
            }
        }
        Ok(None)
    }
}
