//! The committer side of a hot dataset: once a range's cold copy is committed, delete exactly
//! that range from Postgres, and only when Postgres holds exactly the rows the copy holds.
//!
//! 1. With `drop_partitions`, a child partition holding exactly the range is detached and
//!    dropped in one transaction, committed only if it held exactly the exported rows.
//! 2. Otherwise the rows Postgres holds in each delete batch are counted in one scan: every
//!    batch must hold what was exported, or nothing is deleted and the range is flagged. When a
//!    previous attempt was interrupted mid-delete, a batch may also be empty (done before).
//! 3. Each batch is deleted in its own transaction, committed only if the DELETE removed
//!    exactly the exported count; a difference (a late insert racing the delete) rolls it back
//!    and flags the range.

use super::export::ExportRecord;
use super::{BatchDelete, DeleteState, HotSource, RangeCount};
use crate::error::Result;
use crate::faults::crash_point;

/// What the delete of a range will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeletePlan {
    /// Nothing to run: the outcome is already known (a mismatch, or nothing left to delete).
    Settled(DeleteState),
    /// Detach and drop this `(partition, parent)`.
    Drop((String, String)),
    /// Delete these batches, in order.
    Batches(Vec<RangeCount>),
}

/// Decides the delete of `export` from what Postgres holds now. `resuming` is true when an
/// earlier attempt of the same commit began deleting (so batches it finished are empty).
pub async fn plan(
    source: &dyn HotSource,
    export: &ExportRecord,
    resuming: bool,
) -> Result<DeletePlan> {
    let hot = &export.hot;
    let range = export.range;
    let expected = export.rows();
    if hot.drop_partitions && !resuming {
        if let Some(partition) = source.exact_partition(hot, range).await? {
            return Ok(DeletePlan::Drop(partition));
        }
        tracing::info!(dataset = hot.name, %range, "no partition holds exactly the range; deleting rows in batches");
    }
    let ranges: Vec<_> = export.batches.iter().map(|b| b.range).collect();
    let counts = source.count_batches(hot, &ranges).await?;
    let held: u64 = counts.iter().sum();
    let mut pending = Vec::new();
    for (batch, &now) in export.batches.iter().zip(&counts) {
        if now == batch.rows {
            if now > 0 {
                pending.push(*batch);
            }
        } else if !(resuming && now == 0) {
            return Ok(DeletePlan::Settled(DeleteState::Mismatch {
                detail: format!(
                    "Postgres holds {held} rows in {range}, the cold copy {expected} (in {}: {now} \
                     now, {} exported); late inserts or a reorg? Nothing was deleted. Re-export the \
                     range (plan its partition_key again) to take the new rows",
                    batch.range, batch.rows
                ),
                deleted: 0,
            }));
        }
    }
    if pending.is_empty() {
        return Ok(DeletePlan::Settled(DeleteState::Deleted { rows: 0 }));
    }
    Ok(DeletePlan::Batches(pending))
}

/// Runs a plan: the drop, or the batches until the first that does not hold what was exported.
pub async fn execute(
    source: &dyn HotSource,
    export: &ExportRecord,
    plan: DeletePlan,
) -> Result<DeleteState> {
    let hot = &export.hot;
    match plan {
        DeletePlan::Settled(state) => Ok(state),
        DeletePlan::Drop(partition) => Ok(
            match source
                .drop_partition(hot, &partition, export.range, export.rows())
                .await?
            {
                BatchDelete::Deleted(rows) => DeleteState::Dropped {
                    partition: partition.0,
                    rows,
                },
                BatchDelete::Mismatch { detail, .. } => {
                    DeleteState::Mismatch { detail, deleted: 0 }
                }
            },
        ),
        DeletePlan::Batches(batches) => {
            let mut deleted = 0;
            for batch in &batches {
                match source.delete_batch(hot, batch.range, batch.rows).await? {
                    BatchDelete::Deleted(rows) => deleted += rows,
                    BatchDelete::Mismatch { detail, .. } => {
                        return Ok(DeleteState::Mismatch { detail, deleted })
                    }
                }
                tracing::debug!(dataset = hot.name, batch = %batch.range, rows = batch.rows, "batch deleted");
                crash_point("mid-postgres-delete");
            }
            Ok(DeleteState::Deleted { rows: deleted })
        }
    }
}
