//! Hot datasets: finalized rows of a Postgres table moved into cold Parquet partitions, one per
//! range of an integer range column (`"start-end"`, end-exclusive), then deleted from Postgres
//! in bounded batches once the cold copy is committed and the counts agree.
//!
//! The export runs as a merge task (the merger streams the range out of Postgres into staged
//! Parquet files), the commit is the ordinary replace protocol (the range's previous files are
//! the task's inputs), and the committer then deletes the range from Postgres. This module holds
//! the pure rules (range keys, finality, delete batches) and the Postgres port.

pub mod config;
pub mod copy_binary;
pub mod delete;
pub mod export;
pub mod postgres;
pub mod sql;
pub mod types;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::merge::sort::BatchSink;

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

/// The grid ranges from the one holding `first_value` up to the last wholly final one.
pub fn final_ranges(hot: &HotDatasetConfig, first_value: i64, final_through: i64) -> Vec<KeyRange> {
    let mut range = hot.range_containing(first_value.max(hot.range_start));
    let mut out = Vec::new();
    while is_final(range, final_through) {
        out.push(range);
        range = KeyRange {
            start: range.end,
            end: range.end + hot.range_size as i64,
        };
    }
    out
}

/// At most this many buckets are counted per range during an export, whatever its width.
const MAX_BUCKETS: u64 = 4096;

/// Row counts of a range by equal-width buckets of the range column, filled during the export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeHistogram {
    range: KeyRange,
    width: u64,
    counts: Vec<u64>,
}

impl RangeHistogram {
    pub fn new(range: KeyRange) -> Self {
        let width = range.len().div_ceil(MAX_BUCKETS).max(1);
        Self {
            range,
            width,
            counts: vec![0; range.len().div_ceil(width) as usize],
        }
    }

    /// Counts one row; a value outside the range is an error (the query filtered on it).
    pub fn add(&mut self, value: i64) -> std::result::Result<(), String> {
        if value < self.range.start || value >= self.range.end {
            return Err(format!(
                "range column value {value} is outside the exported range {}",
                self.range
            ));
        }
        self.counts[((value - self.range.start) as u64 / self.width) as usize] += 1;
        Ok(())
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cuts the range into consecutive batches of at most `max_rows` rows (a single bucket
    /// holding more is a batch of its own), covering the whole range so that rows arriving
    /// later in an empty stretch are counted too.
    pub fn delete_batches(&self, max_rows: u64) -> Vec<RangeCount> {
        let mut batches: Vec<RangeCount> = Vec::new();
        let mut current = RangeCount {
            range: KeyRange {
                start: self.range.start,
                end: self.range.start,
            },
            rows: 0,
        };
        for (i, &count) in self.counts.iter().enumerate() {
            let bucket_end =
                (self.range.start + ((i as u64 + 1) * self.width) as i64).min(self.range.end);
            if current.rows > 0 && current.rows + count > max_rows {
                batches.push(current);
                current = RangeCount {
                    range: KeyRange {
                        start: current.range.end,
                        end: current.range.end,
                    },
                    rows: 0,
                };
            }
            current.rows += count;
            current.range.end = bucket_end;
        }
        batches.push(current);
        batches
    }
}

/// What became of a committed range in Postgres.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeleteState {
    /// `delete_after_compact` is off: the rows stay in Postgres.
    Kept,
    /// Batches are being deleted (an interrupted attempt resumes from here).
    Deleting,
    /// Deleted in batches (`rows` by this commit; 0 when an earlier attempt had done it).
    Deleted { rows: u64 },
    /// The child partition holding exactly the range was detached and dropped.
    Dropped { partition: String, rows: u64 },
    /// Postgres and the cold copy disagree; the range is flagged. `deleted` rows had been
    /// deleted before the disagreement showed (0 when it was found before any delete).
    Mismatch { detail: String, deleted: u64 },
}

impl DeleteState {
    /// True when some of the range's rows left Postgres: the cold files are then their only
    /// copy, and re-exporting the range would lose them.
    pub fn removed_rows(&self) -> bool {
        match self {
            DeleteState::Kept => false,
            DeleteState::Deleting | DeleteState::Deleted { .. } | DeleteState::Dropped { .. } => {
                true
            }
            DeleteState::Mismatch { deleted, .. } => *deleted > 0,
        }
    }
}

/// The state of a range's cold copy, kept in the partition record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdRange {
    /// The lease generation that committed it: the range's `dataset_version`.
    pub version: u64,
    pub rows: u64,
    pub delete: DeleteState,
    pub at_ms: i64,
}

/// The result of one bounded delete (or a partition drop): done, or rolled back because
/// Postgres did not hold exactly the expected rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchDelete {
    Deleted(u64),
    Mismatch { found: u64, detail: String },
}

/// The port to a hot table: its columns, its tip, a consistent export of a range, counts, and
/// the bounded deletes. One adapter, over tokio-postgres.
#[async_trait]
pub trait HotSource: Send + Sync + std::fmt::Debug {
    fn describe(&self) -> String;

    /// The exported columns and their Arrow types. A column of an unsupported type is an
    /// error naming the table and the column, so nothing is written for such a table.
    async fn columns(&self, hot: &HotDatasetConfig) -> Result<Vec<HotColumn>>;

    /// The chain's tip (the tip query, or the range column's maximum); `None` when empty.
    async fn tip(&self, hot: &HotDatasetConfig) -> Result<Option<i64>>;

    /// The smallest range-column value of the chain; `None` when empty.
    async fn first_value(&self, hot: &HotDatasetConfig) -> Result<Option<i64>>;

    /// Streams every row of `range` in range-column order, from one snapshot, as record
    /// batches of at most `batch_bytes` of values; memory stays bounded whatever the range's
    /// size. Returns the number of rows.
    async fn export(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
        columns: &[HotColumn],
        batch_bytes: u64,
        sink: &mut dyn BatchSink,
    ) -> Result<u64>;

    /// The rows Postgres holds now in each of `batches` (consecutive, tiling one range).
    async fn count_batches(&self, hot: &HotDatasetConfig, batches: &[KeyRange])
        -> Result<Vec<u64>>;

    /// Deletes `batch` in one transaction, committed only if it removed exactly `expected`.
    async fn delete_batch(
        &self,
        hot: &HotDatasetConfig,
        batch: KeyRange,
        expected: u64,
    ) -> Result<BatchDelete>;

    /// The leaf partition holding exactly `range` (and the chain), if the table is partitioned
    /// that way: `(partition, its parent)`, both as Postgres quotes them.
    async fn exact_partition(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
    ) -> Result<Option<(String, String)>>;

    /// Detaches and drops `partition` in one transaction, committed only if it held exactly
    /// `expected` rows, all inside `range`.
    async fn drop_partition(
        &self,
        hot: &HotDatasetConfig,
        partition: &(String, String),
        range: KeyRange,
        expected: u64,
    ) -> Result<BatchDelete>;
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
            final_ranges(&hot, 123, through),
            vec![r(100, 200), r(200, 300), r(300, 400)]
        );
        assert!(final_ranges(&hot, 420, through).is_empty());
        assert_eq!(final_through(10, 100), -90);
        assert!(final_ranges(&hot, 0, final_through(10, 100)).is_empty());
    }

    #[test]
    fn delete_batches_tile_the_range_within_the_row_limit() {
        let range = r(1000, 1100);
        let mut h = RangeHistogram::new(range);
        for v in 1000..1100 {
            for _ in 0..(v % 7) {
                h.add(v).unwrap();
            }
        }
        // A late stretch with no rows must still be covered.
        assert!(h.add(1100).is_err());
        assert!(h.add(999).is_err());
        let batches = h.delete_batches(40);
        assert_eq!(batches.first().unwrap().range.start, 1000);
        assert_eq!(batches.last().unwrap().range.end, 1100);
        for pair in batches.windows(2) {
            assert_eq!(pair[0].range.end, pair[1].range.start);
        }
        assert!(batches.iter().all(|b| b.rows <= 40 && !b.range.is_empty()));
        assert_eq!(batches.iter().map(|b| b.rows).sum::<u64>(), h.total());
    }

    #[test]
    fn a_bucket_above_the_limit_is_a_batch_of_its_own_and_empty_ranges_are_one_batch() {
        let mut h = RangeHistogram::new(r(0, 10));
        for _ in 0..50 {
            h.add(3).unwrap();
        }
        h.add(7).unwrap();
        let batches = h.delete_batches(10);
        assert_eq!(
            batches,
            vec![
                RangeCount {
                    range: r(0, 4),
                    rows: 50
                },
                RangeCount {
                    range: r(4, 10),
                    rows: 1
                },
            ]
        );
        let empty = RangeHistogram::new(r(0, 10));
        assert_eq!(
            empty.delete_batches(10),
            vec![RangeCount {
                range: r(0, 10),
                rows: 0
            }]
        );
    }

    #[test]
    fn wide_ranges_use_bounded_buckets() {
        let mut h = RangeHistogram::new(r(0, 10_000_000));
        assert!(h.counts.len() as u64 <= MAX_BUCKETS);
        h.add(9_999_999).unwrap();
        h.add(0).unwrap();
        assert_eq!(h.total(), 2);
        let batches = h.delete_batches(1);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].range.end, 10_000_000);
    }

    #[test]
    fn removed_rows_protect_the_cold_copy() {
        assert!(!DeleteState::Kept.removed_rows());
        assert!(DeleteState::Deleted { rows: 0 }.removed_rows());
        assert!(!DeleteState::Mismatch {
            detail: String::new(),
            deleted: 0
        }
        .removed_rows());
        assert!(DeleteState::Mismatch {
            detail: String::new(),
            deleted: 3
        }
        .removed_rows());
    }
}
