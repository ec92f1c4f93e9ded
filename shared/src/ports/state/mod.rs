//! The partition-state port: status, counters and leases per partition.
//!
//! Every mutating operation is a single conditional, atomic update, so the DynamoDB adapter can
//! implement each one as one `UpdateItem` with a condition expression.

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
mod dynamo;
mod embedded;

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::hot::cold::ColdRange;
use crate::model::state::{
    CommitProgress, Counters, Lease, PartitionId, PartitionRecord, PartitionStatus,
};

pub use dynamo::DynamoState;
pub use embedded::EmbeddedState;

#[async_trait]
pub trait StateStore: Send + Sync + Debug {
    fn describe(&self) -> String;

    async fn get(&self, id: &PartitionId) -> Result<Option<PartitionRecord>>;

    /// Applies `change` to the partition's record (a new record when there is none) as one
    /// atomic update. An adapter may call `change` again, on a fresh copy, when a concurrent
    /// update won the race; only the call whose result was stored counts. This is the one
    /// operation an adapter must provide for the transitions below: each is a pure rule of
    /// [`PartitionRecord`] applied through it.
    async fn update_record(
        &self,
        id: &PartitionId,
        now_ms: i64,
        change: &mut (dyn for<'r> FnMut(&'r mut PartitionRecord) -> Result<()> + Send),
    ) -> Result<()>;

    /// Adds `delta` to the counters, creating the record if needed.
    async fn add_counters(&self, id: &PartitionId, delta: &Counters, now_ms: i64) -> Result<()> {
        apply(self, id, now_ms, |r| {
            r.counters.add(delta);
            r.updated_at_ms = now_ms;
            Ok(())
        })
        .await
    }

    /// Grants a lease to `owner` if none is held or the held one has expired. Returns `None`
    /// when another live lease holds the partition. Starts a new, empty round.
    async fn acquire_lease(
        &self,
        id: &PartitionId,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>> {
        apply(self, id, now_ms, |r| {
            Ok(r.try_acquire(owner, now_ms, ttl_ms))
        })
        .await
    }

    /// Takes over the lease of generation `generation` even though it has not expired (its
    /// holder is known to be dead: a local process that no longer runs), or acquires a free
    /// one. Returns `None` when another live lease holds the partition.
    async fn take_over_lease(
        &self,
        id: &PartitionId,
        generation: u64,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>> {
        apply(self, id, now_ms, |r| {
            Ok(r.try_take_over(generation, owner, now_ms, ttl_ms))
        })
        .await
    }

    /// Extends a lease; fails with [`crate::Error::LeaseLost`] if its generation is no longer
    /// current or it already expired.
    async fn renew_lease(
        &self,
        id: &PartitionId,
        lease: &Lease,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease> {
        apply(self, id, now_ms, |r| r.try_renew(lease, now_ms, ttl_ms)).await
    }

    /// Records the task ids of the round planned under `lease` (fenced by generation).
    async fn set_round(&self, id: &PartitionId, lease: &Lease, task_ids: &[String]) -> Result<()> {
        let now = crate::support::clock::now_ms();
        apply(self, id, now, |r| r.try_set_round(lease, task_ids, now)).await
    }

    /// Records that `task_id` (planned under `generation`) committed, adding `delta` only the
    /// first time. Not fenced: a commit that already happened must be counted even if a newer
    /// round started since.
    async fn record_commit(
        &self,
        id: &PartitionId,
        generation: u64,
        task_id: &str,
        delta: &Counters,
        now_ms: i64,
    ) -> Result<CommitProgress> {
        apply(self, id, now_ms, |r| {
            Ok(r.apply_commit(generation, task_id, delta, now_ms))
        })
        .await
    }

    /// Ends the round of `generation`: removes the lease and sets the final status. Returns false
    /// (and changes nothing) when a newer generation holds the partition.
    async fn finish_round(
        &self,
        id: &PartitionId,
        generation: u64,
        status: PartitionStatus,
        error: Option<String>,
        now_ms: i64,
    ) -> Result<bool> {
        apply(self, id, now_ms, |r| {
            Ok(r.apply_finish_round(generation, status, error.clone(), now_ms))
        })
        .await
    }

    /// Records the cold copy of a hot range (see [`PartitionRecord::cold`]); an older version
    /// than the one recorded changes nothing.
    async fn record_cold_range(
        &self,
        id: &PartitionId,
        cold: &ColdRange,
        now_ms: i64,
    ) -> Result<()> {
        apply(self, id, now_ms, |r| {
            r.apply_cold_range(cold, now_ms);
            Ok(())
        })
        .await
    }

    /// Records of one dataset with the given status.
    async fn list_by_status(
        &self,
        dataset: &str,
        status: PartitionStatus,
    ) -> Result<Vec<PartitionRecord>>;

    /// The saved position of an interrupted sweep of `dataset` (the last partition it finished),
    /// if one is saved.
    async fn sweep_cursor(&self, dataset: &str) -> Result<Option<String>>;

    /// Saves (`Some`) or clears (`None`) the sweep position of `dataset`.
    async fn set_sweep_cursor(&self, dataset: &str, cursor: Option<&str>) -> Result<()>;
}

/// Applies the pure rule `rule` through [`StateStore::update_record`] and returns what the
/// stored application of it returned.
async fn apply<S, T>(
    store: &S,
    id: &PartitionId,
    now_ms: i64,
    mut rule: impl FnMut(&mut PartitionRecord) -> Result<T> + Send,
) -> Result<T>
where
    S: StateStore + ?Sized,
    T: Send,
{
    let mut out = None;
    store
        .update_record(id, now_ms, &mut |record| {
            out = Some(rule(record)?);
            Ok(())
        })
        .await?;
    out.ok_or_else(|| {
        crate::error::Error::state(
            store.describe(),
            format!("the update of {id} returned without applying its change"),
        )
    })
}
