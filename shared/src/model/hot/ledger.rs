//! The ledger of one range's cold copy: which of its files hold rows that already left Postgres,
//! and how far the delete of the latest export got, batch by batch. It lives in the range's
//! partition manifest, next to the files (so losing the state store loses no progress), and is
//! only ever changed by compare-and-swap, each change checked against the latest copy.
//!
//! The rules that keep every row exactly once between Postgres and the cold copy:
//! - A batch is deleted only after its transaction id is recorded here (`InFlight`), so an
//!   interrupted delete is resolved by asking Postgres whether that transaction committed; a
//!   batch never goes back from `Deleted`, and `Refused` is recorded only for a batch no
//!   delete removed.
//! - Before a new export of the range takes its snapshot it raises the `fence` to its
//!   generation; no older export may record a delete after that, and every delete recorded
//!   before it is resolved first. So the snapshot sees exactly the rows no delete removed.
//! - A new export keeps every file whose rows all left Postgres, rewrites the rows that left
//!   from files that also hold others (carried), and replaces the rest with what Postgres holds
//!   now. The cold copy thus holds every row version the tool deleted, once, plus the range's
//!   current rows.

use serde::{Deserialize, Serialize};

use crate::model::hot::batches::DeleteBatch;

/// A file of the range's cold copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerFile {
    pub key: String,
    pub rows: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BatchStatus {
    /// Not deleted yet.
    Pending,
    /// A delete transaction passed the content check and was about to commit; whether it did
    /// is Postgres's to say (`pg_xact_status`).
    InFlight { xid: String },
    /// Deleted: these rows are in the cold copy only.
    Deleted,
    /// Postgres did not hold exactly these rows (late insert, update, reorg); nothing of the
    /// batch was deleted. The next export of the range takes what Postgres holds.
    Refused { detail: String },
}

/// One delete batch of the latest export: rows `[first_row, first_row + rows)` of its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProgress {
    pub first_row: u64,
    pub rows: u64,
    #[serde(flatten)]
    pub status: BatchStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeLedger {
    /// The lease generation of the export that committed this copy.
    pub version: u64,
    /// The generation of the newest export that has begun: deletes of older ones stop.
    #[serde(default)]
    pub fence: u64,
    /// Files whose rows all left Postgres.
    pub moved: Vec<LedgerFile>,
    /// The latest export's files, in export order.
    pub segment: Vec<LedgerFile>,
    /// The latest export's delete batches; empty while its rows are kept in Postgres.
    pub batches: Vec<BatchProgress>,
    /// Rows deleted from Postgres over the range's history.
    pub rows_deleted: u64,
}

/// What a new export does with the range's current files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarryPlan {
    /// Files kept as they are: every row left Postgres.
    pub keep: Vec<LedgerFile>,
    /// Files some of whose rows left Postgres: those rows (half-open row intervals of the
    /// file) are rewritten into a new file, and the file is replaced.
    pub carry: Vec<(String, Vec<(u64, u64)>)>,
    /// Files replaced by what Postgres holds now (the carried ones included).
    pub replace: Vec<String>,
}

impl CarryPlan {
    pub fn carried_rows(&self) -> u64 {
        self.carry
            .iter()
            .flat_map(|(_, intervals)| intervals.iter().map(|(s, e)| e - s))
            .sum()
    }
    pub fn kept_rows(&self) -> u64 {
        self.keep.iter().map(|f| f.rows).sum()
    }
}

/// How a range's Postgres rows stand, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerSummary {
    pub rows: u64,
    pub moved_rows: u64,
    pub pending_rows: u64,
    pub refused_rows: u64,
    pub refused: Vec<String>,
    pub in_flight: usize,
}

impl RangeLedger {
    /// The ledger of a fresh export: `keep` and `carried` hold moved rows, `segment` is what
    /// Postgres held; `batches` are its delete batches (none when the rows stay in Postgres).
    pub fn new(
        version: u64,
        moved: Vec<LedgerFile>,
        segment: Vec<LedgerFile>,
        batches: &[DeleteBatch],
        rows_deleted: u64,
    ) -> Self {
        RangeLedger {
            version,
            fence: version,
            moved,
            segment,
            batches: batches
                .iter()
                .map(|b| BatchProgress {
                    first_row: b.first_row,
                    rows: b.rows(),
                    status: BatchStatus::Pending,
                })
                .collect(),
            rows_deleted,
        }
    }

    pub fn summary(&self) -> LedgerSummary {
        let mut s = LedgerSummary {
            rows: self.moved.iter().chain(&self.segment).map(|f| f.rows).sum(),
            moved_rows: self.moved.iter().map(|f| f.rows).sum(),
            ..LedgerSummary::default()
        };
        for b in &self.batches {
            match &b.status {
                BatchStatus::Deleted => s.moved_rows += b.rows,
                BatchStatus::Pending => s.pending_rows += b.rows,
                BatchStatus::InFlight { .. } => {
                    s.pending_rows += b.rows;
                    s.in_flight += 1;
                }
                BatchStatus::Refused { detail } => {
                    s.refused_rows += b.rows;
                    s.refused.push(detail.clone());
                }
            }
        }
        s
    }

    /// Rows of the cold copy that are (or should be) still in Postgres.
    pub fn rows_in_postgres(&self) -> u64 {
        let s = self.summary();
        s.rows - s.moved_rows
    }

    /// True when every batch is settled (deleted or refused).
    pub fn settled(&self) -> bool {
        self.batches
            .iter()
            .all(|b| matches!(b.status, BatchStatus::Deleted | BatchStatus::Refused { .. }))
    }

    /// The in-flight deletes whose outcome must be asked of Postgres: `(batch, xid)`.
    pub fn in_flight(&self) -> Vec<(usize, String)> {
        self.batches
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match &b.status {
                BatchStatus::InFlight { xid } => Some((i, xid.clone())),
                _ => None,
            })
            .collect()
    }

    /// What a new export does with the current files. `None` while a delete is in flight
    /// (resolve it first).
    pub fn carry_plan(&self) -> Option<CarryPlan> {
        if !self.in_flight().is_empty() {
            return None;
        }
        let deleted: Vec<(u64, u64)> = self
            .batches
            .iter()
            .filter(|b| b.status == BatchStatus::Deleted)
            .map(|b| (b.first_row, b.first_row + b.rows))
            .collect();
        let mut plan = CarryPlan {
            keep: self.moved.clone(),
            ..CarryPlan::default()
        };
        let mut start = 0;
        for file in &self.segment {
            let end = start + file.rows;
            let inside: Vec<(u64, u64)> = deleted
                .iter()
                .filter_map(|&(s, e)| {
                    let (s, e) = (s.max(start), e.min(end));
                    (s < e).then(|| (s - start, e - start))
                })
                .collect();
            let covered: u64 = inside.iter().map(|(s, e)| e - s).sum();
            if file.rows > 0 && covered == file.rows {
                plan.keep.push(file.clone());
            } else {
                if covered > 0 {
                    plan.carry.push((file.key.clone(), merge_intervals(inside)));
                }
                plan.replace.push(file.key.clone());
            }
            start = end;
        }
        Some(plan)
    }

    /// Raises the fence to `generation`; `Err` names the newer export that fenced already.
    pub fn raise_fence(&mut self, generation: u64) -> Result<(), u64> {
        if self.fence > generation {
            return Err(self.fence);
        }
        self.fence = generation;
        Ok(())
    }

    /// Records that batch `i` is about to commit in transaction `xid`. Refused (`false`) when
    /// a newer export fenced the range, when this ledger is not the export's, or when the
    /// batch is no longer pending.
    pub fn begin_delete(&mut self, version: u64, i: usize, xid: &str) -> bool {
        if self.version != version || self.fence > version {
            return false;
        }
        match self.batches.get_mut(i) {
            Some(b) if b.status == BatchStatus::Pending => {
                b.status = BatchStatus::InFlight {
                    xid: xid.to_string(),
                };
                true
            }
            _ => false,
        }
    }

    /// Records that every pending batch is about to go in one transaction (a partition drop).
    pub fn begin_drop(&mut self, version: u64, xid: &str) -> bool {
        if self.version != version
            || self.fence > version
            || self
                .batches
                .iter()
                .any(|b| b.status != BatchStatus::Pending)
        {
            return false;
        }
        for b in &mut self.batches {
            b.status = BatchStatus::InFlight {
                xid: xid.to_string(),
            };
        }
        true
    }

    /// The outcome of transaction `xid`: its batches become deleted, or pending again.
    pub fn resolve(&mut self, xid: &str, committed: bool) {
        for b in &mut self.batches {
            if matches!(&b.status, BatchStatus::InFlight { xid: x } if x == xid) {
                if committed {
                    b.status = BatchStatus::Deleted;
                    self.rows_deleted += b.rows;
                } else {
                    b.status = BatchStatus::Pending;
                }
            }
        }
    }

    /// Records that Postgres did not hold batch `i`'s rows; only a pending batch can be refused.
    pub fn refuse(&mut self, version: u64, i: usize, detail: &str) -> bool {
        if self.version != version {
            return false;
        }
        match self.batches.get_mut(i) {
            Some(b) if b.status == BatchStatus::Pending => {
                b.status = BatchStatus::Refused {
                    detail: detail.to_string(),
                };
                true
            }
            _ => false,
        }
    }
}

fn merge_intervals(mut intervals: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    intervals.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in intervals {
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str, rows: u64) -> LedgerFile {
        LedgerFile {
            key: key.into(),
            rows,
        }
    }

    fn batch(first_row: u64, rows: u64, status: BatchStatus) -> BatchProgress {
        BatchProgress {
            first_row,
            rows,
            status,
        }
    }

    fn ledger() -> RangeLedger {
        RangeLedger {
            version: 3,
            fence: 3,
            moved: vec![file("old", 5)],
            segment: vec![file("a", 10), file("b", 10), file("c", 4)],
            batches: vec![
                batch(0, 6, BatchStatus::Deleted),
                batch(6, 4, BatchStatus::Deleted),
                batch(10, 8, BatchStatus::Deleted),
                batch(
                    18,
                    4,
                    BatchStatus::Refused {
                        detail: "late".into(),
                    },
                ),
                batch(22, 2, BatchStatus::Pending),
            ],
            rows_deleted: 23,
        }
    }

    #[test]
    fn a_new_export_keeps_moved_files_carries_moved_rows_and_replaces_the_rest() {
        let plan = ledger().carry_plan().unwrap();
        assert_eq!(plan.keep, vec![file("old", 5), file("a", 10)]);
        assert_eq!(plan.carry, vec![("b".to_string(), vec![(0, 8)])]);
        assert_eq!(plan.replace, vec!["b".to_string(), "c".to_string()]);
        assert_eq!((plan.kept_rows(), plan.carried_rows()), (15, 8));
        // Rows kept in Postgres (no batches): every segment file is replaced.
        let kept = RangeLedger {
            batches: vec![],
            ..ledger()
        };
        let plan = kept.carry_plan().unwrap();
        assert_eq!(plan.keep, vec![file("old", 5)]);
        assert!(plan.carry.is_empty());
        assert_eq!(plan.replace.len(), 3);
    }

    #[test]
    fn deletes_in_flight_are_resolved_before_anything_is_planned() {
        let mut l = ledger();
        assert!(l.begin_delete(3, 4, "900"));
        assert!(l.carry_plan().is_none());
        assert_eq!(l.in_flight(), vec![(4, "900".to_string())]);
        assert!(!l.refuse(3, 4, "x"), "an in-flight batch is never refused");
        l.resolve("900", false);
        assert_eq!(l.batches[4].status, BatchStatus::Pending);
        assert!(l.begin_delete(3, 4, "901"));
        l.resolve("901", true);
        assert_eq!(l.batches[4].status, BatchStatus::Deleted);
        assert_eq!(l.rows_deleted, 25);
        assert!(!l.begin_delete(3, 4, "902"), "deleted stays deleted");
        assert!(!l.refuse(3, 4, "x"));
        let plan = l.carry_plan().unwrap();
        // c holds rows 20..24: 20..22 refused (still in Postgres), 22..24 now deleted.
        assert_eq!(
            plan.carry,
            vec![
                ("b".to_string(), vec![(0, 8)]),
                ("c".to_string(), vec![(2, 4)])
            ]
        );
    }

    #[test]
    fn a_fence_stops_older_exports_from_deleting() {
        let mut l = ledger();
        assert_eq!(l.raise_fence(2), Err(3));
        l.raise_fence(4).unwrap();
        assert!(!l.begin_delete(3, 4, "7"), "fenced by generation 4");
        assert!(!l.begin_drop(3, "7"));
        let fresh = RangeLedger::new(
            5,
            vec![],
            vec![file("x", 3)],
            &[crate::model::hot::batches::DeleteBatch {
                first_row: 0,
                digest: crate::model::hot::digest::RowDigest { rows: 3, sum: 1 },
                scope: crate::model::hot::batches::BatchScope::Range(
                    crate::model::hot::range::KeyRange { start: 0, end: 1 },
                ),
            }],
            0,
        );
        let mut dropping = fresh.clone();
        assert!(dropping.begin_drop(5, "8"));
        dropping.resolve("8", true);
        assert!(dropping.settled());
        assert_eq!(dropping.summary().moved_rows, 3);
        assert_eq!(fresh.summary().pending_rows, 3);
        assert_eq!(fresh.rows_in_postgres(), 3);
    }

    #[test]
    fn summaries_count_every_row_once() {
        let s = ledger().summary();
        assert_eq!(s.rows, 29);
        assert_eq!(s.moved_rows, 5 + 18);
        assert_eq!((s.pending_rows, s.refused_rows), (2, 4));
        assert_eq!(s.refused, vec!["late".to_string()]);
        assert!(!ledger().settled());
    }
}
