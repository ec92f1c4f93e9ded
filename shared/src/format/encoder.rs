//! Encodes the column chunks of a row group on every core: each worker thread owns the Arrow
//! column writers of some leaf columns (the parquet crate's per-column writers), batches are
//! split into leaves and sent to their owners, and closing the group gathers the encoded chunks
//! in column order. The async caller never blocks: while workers encode, it reads and decodes
//! the next inputs. Columns are assigned to workers by the size they had in the previous row
//! group (largest first, to the least loaded worker), so a few wide columns do not pile up on
//! one core.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn,
};
use parquet::errors::ParquetError;
use tokio::sync::{mpsc, oneshot};

type Chunks = Vec<(usize, ArrowColumnChunk)>;

enum Job {
    Start {
        writers: Vec<(usize, ArrowColumnWriter)>,
        progress: Arc<WorkerProgress>,
    },
    Write {
        leaves: Vec<(usize, ArrowLeafColumn)>,
        rows: u64,
    },
    Finish(oneshot::Sender<parquet::errors::Result<Chunks>>),
}

/// Batches queued per worker before the caller waits (bounds the memory of pending leaves).
const QUEUE: usize = 4;

struct Worker {
    jobs: mpsc::Sender<Job>,
}

fn worker_loop(mut jobs: mpsc::Receiver<Job>) {
    // Indexed by leaf; only this worker's leaves are `Some`.
    let mut writers: Vec<Option<ArrowColumnWriter>> = Vec::new();
    let mut progress = Arc::new(WorkerProgress::default());
    let mut failed: Option<ParquetError> = None;
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Start {
                writers: w,
                progress: p,
            } => {
                writers.clear();
                for (leaf, writer) in w {
                    if writers.len() <= leaf {
                        writers.resize_with(leaf + 1, || None);
                    }
                    writers[leaf] = Some(writer);
                }
                progress = p;
                failed = None;
            }
            Job::Write { leaves, rows } => {
                if failed.is_some() {
                    continue;
                }
                for (leaf, column) in leaves {
                    let written = writers
                        .get_mut(leaf)
                        .and_then(Option::as_mut)
                        .ok_or_else(|| {
                            ParquetError::General(format!("no writer for leaf column {leaf}"))
                        })
                        .and_then(|w| w.write(&column));
                    if let Err(e) = written {
                        failed = Some(e);
                        break;
                    }
                }
                let bytes: usize = writers
                    .iter()
                    .flatten()
                    .map(|w| w.get_estimated_total_bytes())
                    .sum();
                progress.bytes.store(bytes as u64, Ordering::Relaxed);
                progress.rows.fetch_add(rows, Ordering::Relaxed);
            }
            Job::Finish(reply) => {
                let result = match failed.take() {
                    Some(e) => Err(e),
                    None => std::mem::take(&mut writers)
                        .into_iter()
                        .enumerate()
                        .filter_map(|(leaf, w)| w.map(|w| w.close().map(|chunk| (leaf, chunk))))
                        .collect(),
                };
                writers.clear();
                // The caller may have gone (an aborted merge): nothing to report to.
                let _ = reply.send(result);
            }
        }
    }
}

/// Rows of leaves gathered before they are sent to the workers: one wake-up per worker for
/// several small batches (a small input file is often one batch of a few thousand rows), few
/// enough that the size estimate the writer rolls files by stays close.
const SEND_ROWS: usize = 8 * 1024;

/// What a worker has encoded of the open row group: its columns' estimated encoded bytes and
/// the rows they hold.
#[derive(Default)]
struct WorkerProgress {
    bytes: AtomicU64,
    rows: AtomicU64,
}

/// The row group being encoded.
struct Group {
    owner: Vec<usize>,
    progress: Vec<Arc<WorkerProgress>>,
    rows: usize,
    /// Leaves not sent yet, per worker, and their rows.
    pending: Vec<Vec<(usize, ArrowLeafColumn)>>,
    pending_rows: usize,
}

/// Parallel column encoder, reused across row groups and files of one writer.
pub struct ParallelEncoder {
    schema: SchemaRef,
    workers: Vec<Worker>,
    group: Option<Group>,
    /// Encoded size of each leaf column in the last row group, to balance the next one.
    last_sizes: Vec<u64>,
}

fn gone() -> ParquetError {
    ParquetError::General("an encoder thread stopped unexpectedly".into())
}

/// Worker threads used when nothing else is said: one per core this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ParallelEncoder {
    pub fn new(schema: SchemaRef, threads: usize) -> parquet::errors::Result<Self> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::channel(QUEUE);
            std::thread::Builder::new()
                .name(format!("encode-{i}"))
                .spawn(move || worker_loop(rx))
                .map_err(|e| ParquetError::General(format!("cannot start encoder thread: {e}")))?;
            workers.push(Worker { jobs: tx });
        }
        Ok(Self {
            schema,
            workers,
            group: None,
            last_sizes: Vec::new(),
        })
    }

    /// Rows in the row group being encoded (0 when none is open).
    pub fn rows(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.rows)
    }

    /// The encoded size the open row group would have now: each worker's encoded bytes so far,
    /// extrapolated from the rows it has encoded to all the rows of the group (workers run
    /// behind the writer by the batches queued for them).
    pub fn estimated_bytes(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| {
            g.progress
                .iter()
                .map(|p| {
                    let (bytes, rows) = (
                        p.bytes.load(Ordering::Relaxed),
                        p.rows.load(Ordering::Relaxed),
                    );
                    match rows {
                        0 => bytes,
                        rows => (bytes as f64 * g.rows as f64 / rows as f64) as u64,
                    }
                })
                .sum()
        })
    }

    pub fn is_open(&self) -> bool {
        self.group.is_some()
    }

    /// Opens a row group with fresh column writers (one per leaf column, in order).
    pub async fn start(&mut self, writers: Vec<ArrowColumnWriter>) -> parquet::errors::Result<()> {
        let leaves = writers.len();
        if self.last_sizes.len() != leaves {
            self.last_sizes = vec![1; leaves];
        }
        let owner = assign(&self.last_sizes, self.workers.len());
        let mut per_worker: Vec<Vec<(usize, ArrowColumnWriter)>> =
            (0..self.workers.len()).map(|_| Vec::new()).collect();
        for (leaf, writer) in writers.into_iter().enumerate() {
            per_worker[owner[leaf]].push((leaf, writer));
        }
        let mut progress = Vec::new();
        for (worker, writers) in self.workers.iter().zip(per_worker) {
            let p = Arc::new(WorkerProgress::default());
            progress.push(Arc::clone(&p));
            worker
                .jobs
                .send(Job::Start {
                    writers,
                    progress: p,
                })
                .await
                .map_err(|_| gone())?;
        }
        self.group = Some(Group {
            owner,
            progress,
            rows: 0,
            pending: (0..self.workers.len()).map(|_| Vec::new()).collect(),
            pending_rows: 0,
        });
        Ok(())
    }

    /// Sends the gathered leaves to their workers.
    async fn send_pending(&mut self) -> parquet::errors::Result<()> {
        let Some(group) = self.group.as_mut() else {
            return Ok(());
        };
        let rows = std::mem::take(&mut group.pending_rows) as u64;
        for (worker, leaves) in self.workers.iter().zip(group.pending.iter_mut()) {
            if !leaves.is_empty() {
                worker
                    .jobs
                    .send(Job::Write {
                        leaves: std::mem::take(leaves),
                        rows,
                    })
                    .await
                    .map_err(|_| gone())?;
            }
        }
        Ok(())
    }

    /// Queues a batch (of the writer's schema) for encoding into the open row group.
    pub async fn write(&mut self, batch: &RecordBatch) -> parquet::errors::Result<()> {
        let group = self
            .group
            .as_mut()
            .ok_or_else(|| ParquetError::General("no row group open".into()))?;
        let mut leaf = 0;
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            for column in compute_leaves(field, array)? {
                let worker = *group
                    .owner
                    .get(leaf)
                    .ok_or_else(|| ParquetError::General("more leaves than writers".into()))?;
                group.pending[worker].push((leaf, column));
                leaf += 1;
            }
        }
        group.rows += batch.num_rows();
        group.pending_rows += batch.num_rows();
        if group.pending_rows >= SEND_ROWS {
            self.send_pending().await?;
        }
        Ok(())
    }

    /// Closes the open row group and returns its encoded column chunks in column order.
    pub async fn finish(&mut self) -> parquet::errors::Result<Vec<ArrowColumnChunk>> {
        self.send_pending().await?;
        if self.group.take().is_none() {
            return Ok(Vec::new());
        }
        let mut replies = Vec::new();
        for worker in &self.workers {
            let (tx, rx) = oneshot::channel();
            worker
                .jobs
                .send(Job::Finish(tx))
                .await
                .map_err(|_| gone())?;
            replies.push(rx);
        }
        let mut chunks: Chunks = Vec::new();
        for reply in replies {
            chunks.extend(reply.await.map_err(|_| gone())??);
        }
        chunks.sort_by_key(|(leaf, _)| *leaf);
        for (leaf, chunk) in &chunks {
            if let Some(size) = self.last_sizes.get_mut(*leaf) {
                *size = chunk.close().metadata.uncompressed_size().max(1) as u64;
            }
        }
        Ok(chunks.into_iter().map(|(_, chunk)| chunk).collect())
    }
}

/// Longest-processing-time assignment: the largest columns first, each to the least loaded
/// worker. Returns the worker of each leaf.
pub fn assign(sizes: &[u64], workers: usize) -> Vec<usize> {
    let workers = workers.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut load = vec![0u64; workers];
    let mut owner = vec![0; sizes.len()];
    for leaf in order {
        let (worker, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .unwrap_or((0, &0));
        owner[leaf] = worker;
        load[worker] += sizes[leaf];
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_columns_are_spread_over_workers() {
        let owner = assign(&[100, 1, 90, 1, 1, 10], 2);
        assert_ne!(owner[0], owner[2], "the two wide columns share a worker");
        let load = |w| {
            [100u64, 1, 90, 1, 1, 10]
                .iter()
                .zip(&owner)
                .filter(|(_, o)| **o == w)
                .map(|(s, _)| *s)
                .sum::<u64>()
        };
        assert!(load(0).abs_diff(load(1)) <= 10);
        assert_eq!(assign(&[5, 5, 5], 1), vec![0, 0, 0]);
    }
}
