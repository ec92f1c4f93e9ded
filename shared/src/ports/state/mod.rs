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

    /// Adds `delta` to the counters, creating the record if needed.
    async fn add_counters(&self, id: &PartitionId, delta: &Counters, now_ms: i64) -> Result<()>;

    /// Grants a lease to `owner` if none is held or the held one has expired. Returns `None`
    /// when another live lease holds the partition. Starts a new, empty round.
    async fn acquire_lease(
        &self,
        id: &PartitionId,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>>;

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
    ) -> Result<Option<Lease>>;

    /// Extends a lease; fails with [`crate::Error::LeaseLost`] if its generation is no longer
    /// current or it already expired.
    async fn renew_lease(
        &self,
        id: &PartitionId,
        lease: &Lease,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease>;

    /// Records the task ids of the round planned under `lease` (fenced by generation).
    async fn set_round(&self, id: &PartitionId, lease: &Lease, task_ids: &[String]) -> Result<()>;

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
    ) -> Result<CommitProgress>;

    /// Ends the round of `generation`: removes the lease and sets the final status. Returns false
    /// (and changes nothing) when a newer generation holds the partition.
    async fn finish_round(
        &self,
        id: &PartitionId,
        generation: u64,
        status: PartitionStatus,
        error: Option<String>,
        now_ms: i64,
    ) -> Result<bool>;

    /// Records the cold copy of a hot range (see [`PartitionRecord::cold`]); an older version
    /// than the one recorded changes nothing.
    async fn record_cold_range(
        &self,
        id: &PartitionId,
        cold: &ColdRange,
        now_ms: i64,
    ) -> Result<()>;

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
