//! The export task kind's data: what an export of a range asks for (in the task) and what it
//! staged (in the task manifest), from which the committer writes the range's ledger and
//! deletes from Postgres.

use serde::{Deserialize, Serialize};

use super::batches::DeleteBatch;
use super::config::HotDatasetConfig;
use super::digest::RowDigest;
use super::ledger::{CarryPlan, LedgerFile};
use super::range::KeyRange;

/// What an export task exports (the task kind [`crate::model::task::TaskKind::ExportRange`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    pub hot: HotDatasetConfig,
    pub range: KeyRange,
    /// The range has files but no ledger, and an earlier version of the product recorded
    /// that rows left Postgres: its files are kept as they are (never replaced).
    #[serde(default)]
    pub legacy_moved: bool,
}

/// What an export staged, in the task manifest: the committer writes the range's new ledger
/// and deletes from Postgres with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    pub hot: HotDatasetConfig,
    pub range: KeyRange,
    /// The exported columns, in order (a delete returns the same ones for its content check).
    pub columns: Vec<String>,
    /// What became of the range's earlier files.
    pub plan: CarryPlan,
    /// The outputs holding carried rows (final keys): rows that already left Postgres.
    pub carried: Vec<LedgerFile>,
    /// The outputs holding what Postgres held (final keys), in export order.
    pub segment: Vec<LedgerFile>,
    /// The digest of every row exported from Postgres.
    pub digest: RowDigest,
    /// The delete batches of those rows.
    pub batches: Vec<DeleteBatch>,
    /// Rows deleted from Postgres over the range's history before this export.
    pub rows_deleted_before: u64,
}

impl ExportRecord {
    /// Rows exported from Postgres.
    pub fn rows(&self) -> u64 {
        self.digest.rows
    }
}
