//! The committer side of a hot dataset: once a range's cold copy is committed, delete from
//! Postgres exactly the rows it holds, batch by batch, each batch checked by content.
//!
//! Every batch is one REPEATABLE READ transaction: the batch's sub-range is counted (a count
//! other than the export's refuses the batch before anything is deleted), then
//! `DELETE ... RETURNING` the exported columns (of the sub-range, or of exactly its located
//! rows), hashed into a [`RowDigest`] and compared with the export's. A batch whose rows
//! differ in any value, in number, or by a swapped row is rolled back and recorded as
//! refused; the next sweep exports the range again. A batch that
//! matches records its transaction id in the range's ledger, then commits, then is recorded as
//! deleted; an attempt interrupted in between is resolved by asking Postgres whether that
//! transaction committed. With `drop_partitions`, a child partition holding exactly the range
//! is detached, checked the same way against the whole export, and dropped.

pub mod ledger_store;

use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::hot::cold::DeleteState;
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::export::ExportRecord;
use crate::model::hot::ledger::{BatchStatus, RangeLedger};
use crate::ports::hot::{BatchDelete, CommitGate, HotSource, XactStatus};
use crate::ports::store::ObjectStore;
use crate::services::hot_delete::ledger_store::{change_ledger, read_ledger};
use crate::support::faults::crash_point;

/// How long a delete left in progress by another attempt is waited for.
const IN_PROGRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks Postgres how every delete in flight in the ledger of `dir` ended and records it.
/// Returns the resolved ledger (`None` when the range has none).
pub async fn resolve_in_flight(
    store: &dyn ObjectStore,
    source: &dyn HotSource,
    hot: &HotDatasetConfig,
    dir: &str,
) -> Result<Option<RangeLedger>> {
    let started = std::time::Instant::now();
    loop {
        let Some(ledger) = read_ledger(store, dir).await? else {
            return Ok(None);
        };
        let mut xids: Vec<String> = ledger.in_flight().into_iter().map(|(_, x)| x).collect();
        xids.dedup();
        if xids.is_empty() {
            return Ok(Some(ledger));
        }
        let mut waiting = None;
        for xid in xids {
            let committed = match source.xact_status(hot, &xid).await? {
                XactStatus::Committed => true,
                XactStatus::Aborted => false,
                XactStatus::InProgress => {
                    waiting = Some(xid);
                    continue;
                }
                XactStatus::Unknown => {
                    return Err(Error::Postgres {
                        context: format!("range {dir} of hot dataset {:?}", hot.name),
                        message: format!(
                            "a delete was interrupted in transaction {xid}, which Postgres no \
                             longer remembers (pg_xact_status is NULL), so whether its rows left \
                             Postgres is unknown. Nothing more is done with the range: compare \
                             its rows in Postgres with its cold files, then set the batch's state \
                             in {dir}_compactor_manifest.json to \"deleted\" or \"pending\""
                        ),
                    })
                }
            };
            tracing::info!(
                dataset = hot.name,
                dir,
                xid,
                committed,
                "resolved an interrupted delete"
            );
            change_ledger(store, dir, |l| {
                l.resolve(&xid, committed);
                (true, ())
            })
            .await?;
        }
        if let Some(xid) = waiting {
            if started.elapsed() > IN_PROGRESS_WAIT {
                return Err(Error::Postgres {
                    context: format!("range {dir} of hot dataset {:?}", hot.name),
                    message: format!(
                        "delete transaction {xid} of an earlier attempt is still open in \
                         Postgres after {}s; nothing was changed, the next run tries again",
                        IN_PROGRESS_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Before a new export of a range takes its snapshot: fences the range's ledger at
/// `generation` (no older export deletes anything after this) and resolves the deletes in
/// flight. Returns the resolved ledger, `None` when the range never had one.
pub async fn prepare_export(
    store: &dyn ObjectStore,
    source: &dyn HotSource,
    hot: &HotDatasetConfig,
    dir: &str,
    generation: u64,
) -> Result<Option<RangeLedger>> {
    // A ledger without a version is only a fence (a range whose first export never committed).
    let had_ledger = read_ledger(store, dir)
        .await?
        .is_some_and(|l| l.version > 0);
    let fenced = change_ledger(store, dir, |l| match l.raise_fence(generation) {
        Ok(()) => (true, Ok(())),
        Err(newer) => (false, Err(newer)),
    })
    .await?;
    if let Err(newer) = fenced {
        return Err(Error::Other(format!(
            "a newer export (generation {newer}) of {dir} has begun; this one (generation \
             {generation}) stops (nothing was staged)"
        )));
    }
    let ledger = resolve_in_flight(store, source, hot, dir).await?;
    Ok(ledger.filter(|_| had_ledger))
}

/// Records an in-flight delete in the ledger before its transaction commits.
struct LedgerGate<'a> {
    store: &'a dyn ObjectStore,
    dir: &'a str,
    version: u64,
    /// The batch, or every batch for a partition drop.
    batch: Option<usize>,
    xid: Mutex<Option<String>>,
}

#[async_trait]
impl CommitGate for LedgerGate<'_> {
    async fn may_commit(&self, xid: &str) -> Result<bool> {
        let (version, batch) = (self.version, self.batch);
        let recorded = change_ledger(self.store, self.dir, |l| {
            let ok = match batch {
                Some(i) => l.begin_delete(version, i, xid),
                None => l.begin_drop(version, xid),
            };
            (ok, ok)
        })
        .await?;
        if recorded {
            *self.xid.lock().unwrap_or_else(|p| p.into_inner()) = Some(xid.to_string());
            crash_point(if batch.is_some() {
                "before-postgres-commit"
            } else {
                "before-partition-drop-commit"
            });
        }
        Ok(recorded)
    }
}

impl LedgerGate<'_> {
    fn xid(&self) -> Option<String> {
        self.xid.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the delete of a committed export did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub state: DeleteState,
    /// Rows in the range's cold copy.
    pub rows: u64,
    /// Rows of the range's cold copy that have left Postgres (its whole history).
    pub moved_rows: u64,
}

/// Deletes the rows of a committed export (`version`) from Postgres, resuming from its ledger.
/// `Ok(None)` when a newer export of the range has been committed since (it owns the range).
/// A batch that could not get its locks makes this an error that says what was done; the
/// next attempt resumes.
pub async fn settle(
    store: &dyn ObjectStore,
    source: &dyn HotSource,
    record: &ExportRecord,
    version: u64,
) -> Result<Option<Settled>> {
    let hot = &record.hot;
    let dir = hot.range_dir(record.range);
    let Some(mut ledger) = resolve_in_flight(store, source, hot, &dir).await? else {
        return Err(Error::Manifest {
            key: format!("{dir}_compactor_manifest.json"),
            message: "the range's ledger is missing after its commit; nothing is deleted".into(),
        });
    };
    if ledger.version != version {
        return Ok(None);
    }
    if !hot.delete_after_compact || ledger.batches.is_empty() {
        let summary = ledger.summary();
        let state = if hot.delete_after_compact {
            // Nothing came from Postgres: nothing is left there.
            DeleteState::Moved {
                deleted: 0,
                partition: None,
            }
        } else {
            DeleteState::Kept
        };
        return Ok(Some(Settled {
            state,
            rows: summary.rows,
            moved_rows: summary.moved_rows,
        }));
    }
    let mut busy = Vec::new();
    let mut dropped = None;
    if let Some(refusal) = columns_changed(source, record).await? {
        for i in 0..record.batches.len() {
            change_ledger(store, &dir, |l| {
                let changed = l.refuse(version, i, &refusal);
                (changed, ())
            })
            .await?;
        }
    } else {
        let all_pending = ledger
            .batches
            .iter()
            .all(|b| b.status == BatchStatus::Pending);
        if hot.drop_partitions && all_pending {
            match drop_exact_partition(store, source, record, version, &dir).await? {
                DropOutcome::Dropped(name) => dropped = Some(name),
                DropOutcome::Busy(detail) => busy.push(detail),
                DropOutcome::Fenced => return Ok(None),
                DropOutcome::NotDropped => {}
            }
            ledger = read_ledger(store, &dir).await?.unwrap_or(ledger);
        }
        if dropped.is_none() && busy.is_empty() {
            for (i, batch) in record.batches.iter().enumerate() {
                if ledger.batches.get(i).map(|b| &b.status) != Some(&BatchStatus::Pending) {
                    continue;
                }
                let gate = LedgerGate {
                    store,
                    dir: &dir,
                    version,
                    batch: Some(i),
                    xid: Mutex::new(None),
                };
                match source
                    .delete_batch(hot, &record.columns, batch, &gate)
                    .await?
                {
                    BatchDelete::Deleted(rows) => {
                        crash_point("mid-postgres-delete");
                        let xid = gate.xid().unwrap_or_default();
                        change_ledger(store, &dir, |l| {
                            l.resolve(&xid, true);
                            (true, ())
                        })
                        .await?;
                        tracing::debug!(dataset = hot.name, batch = %batch.scope, rows, "batch deleted");
                    }
                    BatchDelete::Mismatch { found, detail } => {
                        tracing::warn!(dataset = hot.name, batch = %batch.scope, expected = %batch.digest, %found, "batch refused: Postgres holds other rows than the cold copy");
                        change_ledger(store, &dir, |l| {
                            let changed = l.refuse(version, i, &detail);
                            (changed, ())
                        })
                        .await?;
                    }
                    BatchDelete::Busy { detail } => busy.push(detail),
                    BatchDelete::Fenced => {
                        // Either a newer export owns the range, or another attempt of this
                        // commit is deleting the same batch: then leave it to that one.
                        let now = read_ledger(store, &dir).await?.unwrap_or_default();
                        if now.version != version || now.fence > version {
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }
    let ledger = read_ledger(store, &dir).await?.unwrap_or_default();
    let summary = ledger.summary();
    let segment_deleted: u64 = ledger
        .batches
        .iter()
        .filter(|b| b.status == BatchStatus::Deleted)
        .map(|b| b.rows)
        .sum();
    let left = summary.pending_rows + summary.refused_rows;
    if !busy.is_empty() {
        return Err(Error::DeleteInterrupted {
            deleted: segment_deleted,
            context: format!(
                "deleting range {} of hot dataset {:?}",
                record.range, hot.name
            ),
            message: format!(
                "{}. So far {segment_deleted} of the {} exported rows left Postgres (recorded in \
                 {dir}_compactor_manifest.json) and {left} are still there; the next run resumes \
                 the delete where it stopped (safe to re-run)",
                busy.join("; "),
                record.rows()
            ),
        });
    }
    let state = if summary.refused.is_empty() {
        DeleteState::Moved {
            deleted: segment_deleted,
            partition: dropped,
        }
    } else {
        DeleteState::Flagged {
            deleted: segment_deleted,
            left,
            detail: format!(
                "{} of {} delete batches ({} rows) held other rows in Postgres than the cold \
                 copy (late inserts, updates or a reorg) and were rolled back: those rows are \
                 still in Postgres. {segment_deleted} rows of this export left Postgres. The next \
                 run exports the range again, keeping the rows already moved, and deletes the \
                 rest; re-running is safe. First: {}",
                summary.refused.len(),
                record.batches.len(),
                summary.refused_rows,
                summary.refused.first().cloned().unwrap_or_default()
            ),
        }
    };
    Ok(Some(Settled {
        state,
        rows: summary.rows,
        moved_rows: summary.moved_rows,
    }))
}

/// When every column is exported, a column added or dropped since the export would make the
/// cold copy differ from the rows deleted: then nothing is deleted.
async fn columns_changed(source: &dyn HotSource, record: &ExportRecord) -> Result<Option<String>> {
    if !record.hot.columns.is_empty() {
        return Ok(None);
    }
    let now: Vec<String> = source
        .columns(&record.hot)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    Ok((now != record.columns).then(|| {
        format!(
            "the table's columns changed since the export ({:?} then, {now:?} now); nothing was \
             deleted",
            record.columns
        )
    }))
}

enum DropOutcome {
    Dropped(String),
    NotDropped,
    Busy(String),
    Fenced,
}

async fn drop_exact_partition(
    store: &dyn ObjectStore,
    source: &dyn HotSource,
    record: &ExportRecord,
    version: u64,
    dir: &str,
) -> Result<DropOutcome> {
    let hot = &record.hot;
    let Some(pair) = source.exact_partition(hot, record.range).await? else {
        tracing::info!(dataset = hot.name, range = %record.range, "no partition holds exactly the range; deleting rows in batches");
        return Ok(DropOutcome::NotDropped);
    };
    let gate = LedgerGate {
        store,
        dir,
        version,
        batch: None,
        xid: Mutex::new(None),
    };
    let name = pair.partition.sql();
    match source
        .drop_partition(hot, &record.columns, &pair, &record.digest, &gate)
        .await?
    {
        BatchDelete::Deleted(rows) => {
            crash_point("after-partition-drop");
            let xid = gate.xid().unwrap_or_default();
            change_ledger(store, dir, |l| {
                l.resolve(&xid, true);
                (true, ())
            })
            .await?;
            tracing::info!(
                dataset = hot.name,
                partition = name,
                rows,
                "partition dropped"
            );
            Ok(DropOutcome::Dropped(name))
        }
        BatchDelete::Mismatch { detail, .. } => {
            tracing::warn!(
                dataset = hot.name,
                partition = name,
                detail,
                "partition not dropped; deleting rows in batches"
            );
            Ok(DropOutcome::NotDropped)
        }
        BatchDelete::Busy { detail } => Ok(DropOutcome::Busy(detail)),
        BatchDelete::Fenced => Ok(DropOutcome::Fenced),
    }
}
