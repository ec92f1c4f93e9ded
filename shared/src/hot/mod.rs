//! Hot datasets: finalized rows of a Postgres table moved into cold Parquet partitions, one per
//! range of an integer range column (`"start-end"`, end-exclusive), then deleted from Postgres
//! in bounded batches, each only if the rows it removes are exactly the cold copy's.
//!
//! The export runs as a merge task (the merger streams the range out of Postgres into staged
//! Parquet files, keeping the files whose rows already left Postgres), the commit is the
//! ordinary replace protocol, and the committer then deletes the exported rows from Postgres,
//! recording its progress in the range's ledger. Pure rules: range keys and finality (here),
//! [`batches`], [`digest`], [`ledger`]; I/O: [`export`], [`delete`], [`ledger_store`] and the
//! Postgres port ([`HotSource`], [`postgres`]).

pub mod batches;
pub mod config;
pub mod copy_binary;
pub mod delete;
pub mod digest;
pub mod export;
pub mod ledger;
pub mod ledger_store;
pub mod postgres;
pub mod sql;
pub mod types;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::merge::sort::BatchSink;

use batches::DeleteBatch;
use digest::RowDigest;
use sql::QualifiedName;

pub use config::{derived_dataset_uuid, HotDatasetConfig, UnboundedNumeric};
pub use postgres::{DsnSource, PostgresSource};
pub use types::HotColumn;

/// A range of the range column, `[start, end)`; its partition key is `"start-end"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    pub start: i64,
    pub end: i64,
}

impl KeyRange {
    /// Parses `"start-end"` (non-negative integers, `start < end`).
    pub fn parse(key: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::BadEvent(format!(
                "partition key {key:?} {why}; write \"start-end\" with end exclusive, e.g. \"1000000-1010000\""
            ))
        };
        let (start, end) = key.split_once('-').ok_or_else(|| bad("has no '-'"))?;
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<i64>().ok())
                .flatten()
                .ok_or_else(|| bad("is not two non-negative integers"))
        };
        let range = KeyRange {
            start: number(start)?,
            end: number(end)?,
        };
        if range.start >= range.end {
            return Err(bad("is empty (start must be below end)"));
        }
        Ok(range)
    }

    pub fn key(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }

    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// The number of rows a sub-range held when it was exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeCount {
    pub range: KeyRange,
    pub rows: u64,
}

/// The last final value of the range column: rows at or below it can no longer change.
pub fn final_through(tip: i64, finality_depth: u64) -> i64 {
    tip.saturating_sub(finality_depth.min(i64::MAX as u64) as i64)
}

/// True when every value of `range` is final.
pub fn is_final(range: KeyRange, final_through: i64) -> bool {
    range.end - 1 <= final_through
}

/// The grid ranges from `from` (a grid start) up to the last one wholly final and ending at
/// or before `limit`.
pub fn grid_ranges(
    hot: &HotDatasetConfig,
    from: i64,
    final_through: i64,
    limit: i64,
) -> Vec<KeyRange> {
    let mut range = hot.range_containing(from.max(hot.range_start));
    let mut out = Vec::new();
    while is_final(range, final_through) && range.end <= limit {
        out.push(range);
        range = KeyRange {
            start: range.end,
            end: range.end + hot.range_size as i64,
        };
    }
    out
}

/// What an export streamed out of Postgres: its rows' digest and its delete batches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportedRows {
    pub digest: RowDigest,
    pub batches: Vec<DeleteBatch>,
}

/// What became of a committed range in Postgres (the state store's summary of its ledger).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeleteState {
    /// `delete_after_compact` is off: the exported rows stay in Postgres.
    Kept,
    /// Every exported row left Postgres: `deleted` rows of this export (all of them), in
    /// batches or with the child partition `partition` dropped.
    Moved {
        deleted: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partition: Option<String>,
    },
    /// Some batches held other rows than the cold copy (late inserts, updates, reorgs) and were
    /// not deleted: `deleted` rows of this export left Postgres, `left` rows stay there, and the
    /// next sweep exports the range again (keeping the moved rows) and deletes them.
    Flagged {
        deleted: u64,
        left: u64,
        detail: String,
    },
    /// Recorded by an earlier version of the product.
    #[serde(other)]
    Legacy,
}

/// The state of a range's cold copy, kept in the partition record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdRange {
    /// The lease generation that committed it: the range's `dataset_version`.
    pub version: u64,
    /// Rows in the cold copy.
    pub rows: u64,
    /// Rows of the cold copy that left Postgres (over the range's history).
    #[serde(default)]
    pub moved_rows: u64,
    /// Rows this version took from Postgres.
    #[serde(default)]
    pub exported: u64,
    pub delete: DeleteState,
    pub at_ms: i64,
}

impl ColdRange {
    /// Rows of the cold copy that Postgres should still hold.
    pub fn rows_in_postgres(&self) -> u64 {
        self.rows.saturating_sub(self.moved_rows)
    }

    pub fn is_flagged(&self) -> bool {
        matches!(self.delete, DeleteState::Flagged { .. })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: i64, end: i64) -> KeyRange {
        KeyRange { start, end }
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_explained() {
        let range = KeyRange::parse("1000000-1010000").unwrap();
        assert_eq!(range, r(1_000_000, 1_010_000));
        assert_eq!(range.key(), "1000000-1010000");
        for bad in [
            "",
            "5",
            "5-5",
            "9-3",
            "-3-4",
            "a-b",
            "1-2-3",
            " 1-2",
            "1-99999999999999999999",
        ] {
            let e = KeyRange::parse(bad).unwrap_err().to_string();
            assert!(e.contains("start-end"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_wholly_final_ranges_are_listed() {
        let hot = HotDatasetConfig {
            range_size: 100,
            ..HotDatasetConfig::new("b", "b")
        };
        // tip 450, depth 50: rows <= 400 are final, so [300, 400) is the last whole range.
        let through = final_through(450, 50);
        assert_eq!(through, 400);
        assert!(is_final(r(300, 400), through));
        assert!(is_final(r(301, 401), through));
        assert!(!is_final(r(400, 500), through));
        assert_eq!(
            grid_ranges(&hot, 100, through, i64::MAX),
            vec![r(100, 200), r(200, 300), r(300, 400)]
        );
        assert_eq!(
            grid_ranges(&hot, 100, through, 300),
            vec![r(100, 200), r(200, 300)]
        );
        assert!(grid_ranges(&hot, 400, through, i64::MAX).is_empty());
        assert_eq!(final_through(10, 100), -90);
        assert!(grid_ranges(&hot, 0, final_through(10, 100), i64::MAX).is_empty());
    }

    #[test]
    fn cold_ranges_read_records_of_earlier_versions() {
        let old = r#"{"version":2,"rows":5,"delete":{"state":"deleted","rows":5},"at_ms":1}"#;
        let cold: ColdRange = serde_json::from_str(old).unwrap();
        assert_eq!(cold.delete, DeleteState::Legacy);
        let flagged = ColdRange {
            version: 3,
            rows: 10,
            moved_rows: 4,
            exported: 10,
            delete: DeleteState::Flagged {
                deleted: 4,
                left: 6,
                detail: "x".into(),
            },
            at_ms: 0,
        };
        let back: ColdRange =
            serde_json::from_str(&serde_json::to_string(&flagged).unwrap()).unwrap();
        assert_eq!(back, flagged);
        assert!(back.is_flagged());
        assert_eq!(back.rows_in_postgres(), 6);
    }
}
