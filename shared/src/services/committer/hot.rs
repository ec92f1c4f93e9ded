//! The committer side of a hot range: the range's new ledger, written with the partition
//! manifest, and the delete of its rows from Postgres once its files are live (the protocol
//! itself is [`crate::services::hot_delete`]).

use super::Committer;
use crate::error::{Error, Result};
use crate::format::io::read_footer;
use crate::model::hot::cold::{ColdRange, DeleteState};
use crate::model::hot::export::ExportRecord;
use crate::model::hot::ledger::{LedgerFile, RangeLedger};
use crate::model::manifest::TaskManifest;
use crate::support::clock::now_ms;

/// The ledger of a range after its export `generation` committed: the files whose rows all
/// left Postgres, the new files from Postgres and their delete batches (none while the rows
/// stay in Postgres).
pub(super) fn new_ledger(
    generation: u64,
    export: &ExportRecord,
    previous: Option<RangeLedger>,
) -> RangeLedger {
    let mut moved: Vec<LedgerFile> = export.plan.keep.clone();
    moved.extend(export.carried.iter().cloned());
    let batches = if export.hot.delete_after_compact {
        export.batches.as_slice()
    } else {
        &[]
    };
    let mut ledger = RangeLedger::new(
        generation,
        moved,
        export.segment.clone(),
        batches,
        export.rows_deleted_before,
    );
    if let Some(fence) = previous.map(|p| p.fence).filter(|f| *f > generation) {
        tracing::warn!(range = %export.range, generation, fence, "a newer export began before this commit finished; this one deletes nothing");
        ledger.fence = fence;
    }
    ledger
}

impl Committer {
    /// After a hot range's files are live: deletes its rows from Postgres when configured,
    /// resuming from the range's ledger (a replay continues where the last attempt stopped).
    /// `None` when a newer export of the range was committed since.
    pub(super) async fn settle_export(
        &self,
        manifest: &TaskManifest,
        export: &ExportRecord,
    ) -> Result<Option<ColdRange>> {
        if export.hot.delete_after_compact {
            self.verify_live_outputs(manifest).await?;
        }
        let source = self.hot.as_deref().ok_or_else(|| {
            Error::config(
                "COMPACTOR_PG_DSN",
                format!(
                    "range {} of hot dataset {:?} is committed but this committer has no Postgres \
                     connection to delete it with; configure the DSN and replay {} (nothing was deleted)",
                    export.range, export.hot.name, manifest.task_id
                ),
            )
        })?;
        let Some(settled) = crate::services::hot_delete::settle(
            self.store.as_ref(),
            source,
            export,
            manifest.generation,
        )
        .await?
        else {
            tracing::warn!(dataset = export.hot.name, range = %export.range, task = manifest.task_id, "a newer export of the range was committed; this one deletes nothing");
            return Ok(None);
        };
        match &settled.state {
            DeleteState::Flagged { detail, .. } => {
                tracing::warn!(dataset = export.hot.name, range = %export.range, anomaly = "range_flagged", detail, "range flagged: Postgres and the cold copy disagree")
            }
            other => {
                tracing::info!(dataset = export.hot.name, range = %export.range, outcome = ?other, "range settled in Postgres")
            }
        }
        Ok(Some(ColdRange {
            version: manifest.generation,
            rows: settled.rows,
            moved_rows: settled.moved_rows,
            exported: export.rows(),
            delete: settled.state,
            at_ms: now_ms(),
        }))
    }

    /// Every output at its final key, with its size and footer row count: what a delete from
    /// Postgres relies on.
    async fn verify_live_outputs(&self, manifest: &TaskManifest) -> Result<()> {
        for output in &manifest.outputs {
            let live = self.store.head(&output.final_key).await?;
            let footer_rows = match live {
                Some(m) if m.size == output.size => {
                    read_footer(self.store.as_ref(), &output.final_key)
                        .await?
                        .file_metadata()
                        .num_rows() as u64
                }
                _ => u64::MAX,
            };
            if footer_rows != output.rows {
                return Err(Error::Manifest {
                    key: output.final_key.clone(),
                    message: format!(
                        "is not the committed output ({} bytes, {} rows); nothing is deleted from Postgres",
                        output.size, output.rows
                    ),
                });
            }
        }
        Ok(())
    }
}
