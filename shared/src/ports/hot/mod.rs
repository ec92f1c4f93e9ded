//! The hot-source port: a Postgres table whose finalized rows move into cold Parquet ranges.
//! [`HotSource`] says what the services need from it (columns, tip, a consistent export of a
//! range, bounded content-checked deletes); [`postgres`] is its adapter. The pure rules (ranges,
//! finality, digests, delete batches, the ledger) are in [`crate::model::hot`].

pub mod columns;
pub mod postgres;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::batch::BatchSink;
use crate::model::hot::batches::DeleteBatch;
use crate::model::hot::cold::ExportedRows;
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::digest::RowDigest;
use crate::model::hot::names::QualifiedName;
use crate::model::hot::range::KeyRange;
use columns::HotColumn;

/// The result of one bounded delete (or a partition drop); anything but `Deleted` rolled back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchDelete {
    Deleted(u64),
    /// Postgres did not hold exactly the batch's rows.
    Mismatch {
        found: RowDigest,
        detail: String,
    },
    /// A lock wait timed out, a deadlock or a serialization failure: try again later.
    Busy {
        detail: String,
    },
    /// The gate refused to let it commit (a newer export of the range has begun).
    Fenced,
}

/// Whether a transaction committed, as Postgres remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XactStatus {
    Committed,
    Aborted,
    InProgress,
    /// Too old for Postgres to remember.
    Unknown,
}

/// Asked right before a verified delete commits, with its transaction id: records it (so an
/// interrupted commit can be resolved) and says whether the commit may go ahead.
#[async_trait]
pub trait CommitGate: Send + Sync {
    async fn may_commit(&self, xid: &str) -> Result<bool>;
}

/// A leaf partition and its parent, as catalog names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPair {
    pub partition: QualifiedName,
    pub parent: QualifiedName,
}

/// The port to a hot table: its columns, its tip, a consistent export of a range, and the
/// bounded, content-checked deletes. One adapter, over tokio-postgres.
#[async_trait]
pub trait HotSource: Send + Sync + std::fmt::Debug {
    fn describe(&self) -> String;

    /// The exported columns and their Arrow types. A column of an unsupported type is an
    /// error naming the table and the column, so nothing is written for such a table.
    async fn columns(&self, hot: &HotDatasetConfig) -> Result<Vec<HotColumn>>;

    /// The chain's tip (the tip query, or the range column's maximum); `None` when empty.
    async fn tip(&self, hot: &HotDatasetConfig) -> Result<Option<i64>>;

    /// The range column's largest value of the chain; `None` when empty.
    async fn max_value(&self, hot: &HotDatasetConfig) -> Result<Option<i64>>;

    /// The starts of the grid ranges from `from` (a grid start) to `to` (exclusive) that hold
    /// any row, in order: one index lookup per range when an index leads with the range
    /// column (or the chain and range columns), else one scan.
    async fn ranges_with_rows(
        &self,
        hot: &HotDatasetConfig,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>>;

    /// The rows of each grid range from `from` (a grid start) to `to` (exclusive) that has
    /// any: `(range start, rows)`, in order.
    async fn range_counts(
        &self,
        hot: &HotDatasetConfig,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, u64)>>;

    /// Streams every row of `range` in range-column order, from one snapshot, as record
    /// batches of at most `batch_bytes` of values; memory stays bounded whatever the range's
    /// size. Returns the rows' digest and delete batches.
    async fn export(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
        columns: &[HotColumn],
        batch_bytes: u64,
        sink: &mut dyn BatchSink,
    ) -> Result<ExportedRows>;

    /// Deletes one batch in one transaction, committed only if the rows it removed have the
    /// batch's digest and `gate` agrees.
    async fn delete_batch(
        &self,
        hot: &HotDatasetConfig,
        columns: &[String],
        batch: &DeleteBatch,
        gate: &dyn CommitGate,
    ) -> Result<BatchDelete>;

    /// The leaf partition holding exactly `range` (and the chain), if the table is partitioned
    /// that way.
    async fn exact_partition(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
    ) -> Result<Option<PartitionPair>>;

    /// Detaches and drops `pair.partition` in one transaction, committed only if the rows it
    /// held have digest `expected` and `gate` agrees.
    async fn drop_partition(
        &self,
        hot: &HotDatasetConfig,
        columns: &[String],
        pair: &PartitionPair,
        expected: &RowDigest,
        gate: &dyn CommitGate,
    ) -> Result<BatchDelete>;

    /// Whether transaction `xid` committed.
    async fn xact_status(&self, hot: &HotDatasetConfig, xid: &str) -> Result<XactStatus>;
}
