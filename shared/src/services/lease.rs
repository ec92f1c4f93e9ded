//! Keeping a partition's lease alive while its merge runs: a merge longer than the lease's
//! time to live would otherwise lose it to the next sweep and be done twice.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::state::{Lease, PartitionId};
use crate::ports::state::StateStore;
use crate::support::clock::now_ms;

/// Runs `work` while renewing `lease` every third of `ttl_ms`. A lease taken over by another
/// planner (fenced off) stops the work with [`Error::LeaseLost`]; a renewal that fails for
/// another reason (the state store unreachable for a moment) is retried at the next beat.
pub async fn while_holding<T>(
    state: Arc<dyn StateStore>,
    id: &PartitionId,
    lease: Lease,
    ttl_ms: i64,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let beat = Duration::from_millis((ttl_ms / 3).max(100) as u64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let mut current = lease;
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticks.tick() => match state.renew_lease(id, &current, now_ms(), ttl_ms).await {
                Ok(renewed) => current = renewed,
                Err(e @ Error::LeaseLost { .. }) => {
                    tracing::warn!(%id, error = %e, "lease lost during the merge; stopping it");
                    return Err(e);
                }
                Err(e) => tracing::warn!(%id, error = %e, "could not renew the lease; trying again"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::state::EmbeddedState;

    #[tokio::test]
    async fn a_long_merge_keeps_its_lease_and_stops_when_it_loses_it() {
        let dir = tempfile::tempdir().unwrap();
        let state: Arc<dyn StateStore> =
            Arc::new(EmbeddedState::open(dir.path().join("s.redb")).unwrap());
        let id = PartitionId::new("ds", "p");
        let ttl = 300;
        let lease = state
            .acquire_lease(&id, "me", now_ms(), ttl)
            .await
            .unwrap()
            .unwrap();
        // Three TTLs of work: without renewals the lease would have expired twice.
        let slept = while_holding(Arc::clone(&state), &id, lease.clone(), ttl, async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            Ok("done")
        })
        .await
        .unwrap();
        assert_eq!(slept, "done");
        let held = state.get(&id).await.unwrap().unwrap().lease.unwrap();
        assert!(held.expires_at_ms > now_ms(), "renewed: {held:?}");
        // Another planner takes the partition over: the work stops.
        let other = state
            .take_over_lease(&id, held.generation, "other", now_ms(), ttl)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(other.generation, lease.generation + 1);
        let e = while_holding(Arc::clone(&state), &id, lease, ttl, async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
    }
}
