//! What became of a range's rows: what an export streamed out of Postgres, and the state of a
//! committed range's cold copy as the partition record keeps it.

use serde::{Deserialize, Serialize};

use super::batches::DeleteBatch;
use super::digest::RowDigest;

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

#[cfg(test)]
mod tests {
    use super::*;

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
