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
        estimate: Arc<AtomicU64>,
    },
    Write(Vec<(usize, ArrowLeafColumn)>),
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
    let mut estimate = Arc::new(AtomicU64::new(0));
    let mut failed: Option<ParquetError> = None;
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Start {
                writers: w,
                estimate: e,
            } => {
                writers.clear();
                for (leaf, writer) in w {
                    if writers.len() <= leaf {
                        writers.resize_with(leaf + 1, || None);
                    }
                    writers[leaf] = Some(writer);
                }
                estimate = e;
                failed = None;
            }
            Job::Write(leaves) => {
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
                estimate.store(bytes as u64, Ordering::Relaxed);
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

/// The row group being encoded.
struct Group {
    owner: Vec<usize>,
    estimates: Vec<Arc<AtomicU64>>,
    rows: usize,
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

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Rows in the row group being encoded (0 when none is open).
    pub fn rows(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.rows)
    }

    /// The encoded size the open row group would have now (an estimate, refreshed as workers go).
    pub fn estimated_bytes(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| {
            g.estimates.iter().map(|e| e.load(Ordering::Relaxed)).sum()
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
        let mut estimates = Vec::new();
        for (worker, writers) in self.workers.iter().zip(per_worker) {
            let estimate = Arc::new(AtomicU64::new(0));
            estimates.push(Arc::clone(&estimate));
            worker
                .jobs
                .send(Job::Start { writers, estimate })
                .await
                .map_err(|_| gone())?;
        }
        self.group = Some(Group {
            owner,
            estimates,
            rows: 0,
        });
        Ok(())
    }

    /// Queues a batch (of the writer's schema) for encoding into the open row group.
    pub async fn write(&mut self, batch: &RecordBatch) -> parquet::errors::Result<()> {
        let group = self
            .group
            .as_mut()
            .ok_or_else(|| ParquetError::General("no row group open".into()))?;
        let mut per_worker: Vec<Vec<(usize, ArrowLeafColumn)>> =
            (0..self.workers.len()).map(|_| Vec::new()).collect();
        let mut leaf = 0;
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            for column in compute_leaves(field, array)? {
                let worker = *group
                    .owner
                    .get(leaf)
                    .ok_or_else(|| ParquetError::General("more leaves than writers".into()))?;
                per_worker[worker].push((leaf, column));
                leaf += 1;
            }
        }
        for (worker, leaves) in self.workers.iter().zip(per_worker) {
            if !leaves.is_empty() {
                worker
                    .jobs
                    .send(Job::Write(leaves))
                    .await
                    .map_err(|_| gone())?;
            }
        }
        group.rows += batch.num_rows();
        Ok(())
    }

    /// Closes the open row group and returns its encoded column chunks in column order.
    pub async fn finish(&mut self) -> parquet::errors::Result<Vec<ArrowColumnChunk>> {
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
