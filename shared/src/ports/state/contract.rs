//! The behaviour every [`StateStore`] adapter must have, as a test suite any adapter's tests can
//! run: `contract::run_all(store, "unique-dataset-prefix")`. Times are passed explicitly, so the
//! suite needs no clock control.

use std::sync::Arc;

use crate::model::state::{Counters, PartitionId, PartitionStatus};
use crate::ports::state::StateStore;

fn id(dataset: &str, partition: &str) -> PartitionId {
    PartitionId::new(dataset, partition)
}

pub async fn missing_partition_reads_as_none(store: Arc<dyn StateStore>, ds: &str) {
    assert_eq!(store.get(&id(ds, "nothing-here")).await.unwrap(), None);
}

pub async fn counters_accumulate_atomically(store: Arc<dyn StateStore>, ds: &str) {
    let pid = id(ds, "counters");
    let mut handles = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        let pid = pid.clone();
        handles.push(tokio::spawn(async move {
            let delta = Counters {
                files_seen: 1,
                bytes_seen: 100,
                ..Counters::default()
            };
            store.add_counters(&pid, &delta, 1_000).await.unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let record = store.get(&pid).await.unwrap().expect("record created");
    assert_eq!(record.counters.files_seen, 16);
    assert_eq!(record.counters.bytes_seen, 1_600);
    assert_eq!(record.status, PartitionStatus::Active);
    assert!(record.lease.is_none());
}

pub async fn racing_acquirers_get_one_lease(store: Arc<dyn StateStore>, ds: &str) {
    let pid = id(ds, "race");
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        let pid = pid.clone();
        handles.push(tokio::spawn(async move {
            store
                .acquire_lease(&pid, &format!("planner-{i}"), 10_000, 60_000)
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for h in handles {
        if let Some(lease) = h.await.unwrap() {
            winners.push(lease);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one planner may hold the lease");
    let record = store.get(&pid).await.unwrap().unwrap();
    assert_eq!(record.status, PartitionStatus::Compacting);
    assert_eq!(record.lease.as_ref(), Some(&winners[0]));
}

pub async fn expired_lease_is_taken_over_and_stale_holder_fenced(
    store: Arc<dyn StateStore>,
    ds: &str,
) {
    let pid = id(ds, "takeover");
    let first = store
        .acquire_lease(&pid, "a", 1_000, 100)
        .await
        .unwrap()
        .expect("free partition is leased");
    assert!(store
        .acquire_lease(&pid, "b", 1_050, 100)
        .await
        .unwrap()
        .is_none());
    let renewed = store.renew_lease(&pid, &first, 1_060, 100).await.unwrap();
    assert_eq!(renewed.expires_at_ms, 1_160);
    let second = store
        .acquire_lease(&pid, "b", 1_200, 100)
        .await
        .unwrap()
        .expect("expired lease is taken over");
    assert!(second.generation > first.generation);
    assert!(store.renew_lease(&pid, &renewed, 1_210, 100).await.is_err());
    assert!(store
        .set_round(&pid, &renewed, &["t".to_string()])
        .await
        .is_err());
    // The stale holder cannot end the new round either.
    assert!(!store
        .finish_round(
            &pid,
            first.generation,
            PartitionStatus::Compacted,
            None,
            1_220
        )
        .await
        .unwrap());
    let record = store.get(&pid).await.unwrap().unwrap();
    assert_eq!(
        record.lease.as_ref().map(|l| l.generation),
        Some(second.generation)
    );
}

pub async fn commits_count_once_and_finish_the_round(store: Arc<dyn StateStore>, ds: &str) {
    let pid = id(ds, "round");
    let now = crate::support::clock::now_ms();
    let lease = store
        .acquire_lease(&pid, "p", now, 60_000)
        .await
        .unwrap()
        .unwrap();
    let tasks = vec!["t1".to_string(), "t2".to_string()];
    store.set_round(&pid, &lease, &tasks).await.unwrap();
    let delta = Counters {
        compactions: 1,
        files_compacted: 5,
        bytes_in: 500,
        bytes_out: 400,
        rows_out: 50,
        ..Counters::default()
    };
    let p1 = store
        .record_commit(&pid, lease.generation, "t1", &delta, now + 1)
        .await
        .unwrap();
    assert!(p1.newly_recorded && !p1.round_complete);
    let replay = store
        .record_commit(&pid, lease.generation, "t1", &delta, now + 2)
        .await
        .unwrap();
    assert!(!replay.newly_recorded);
    let p2 = store
        .record_commit(&pid, lease.generation, "t2", &delta, now + 3)
        .await
        .unwrap();
    assert!(p2.round_complete);
    assert!(store
        .finish_round(
            &pid,
            lease.generation,
            PartitionStatus::Compacted,
            None,
            now + 4
        )
        .await
        .unwrap());
    let record = store.get(&pid).await.unwrap().unwrap();
    assert_eq!(record.counters.files_compacted, 10);
    assert_eq!(record.counters.compactions, 2);
    assert_eq!(record.status, PartitionStatus::Compacted);
    assert!(record.lease.is_none());
    // A released partition can be leased again, with a higher generation.
    let again = store
        .acquire_lease(&pid, "q", now + 5, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(again.generation > lease.generation);
}

pub async fn partitions_are_queried_by_status(store: Arc<dyn StateStore>, ds: &str) {
    let now = crate::support::clock::now_ms();
    for p in ["q1", "q2", "q3"] {
        store
            .add_counters(&id(ds, p), &Counters::default(), now)
            .await
            .unwrap();
    }
    let lease = store
        .acquire_lease(&id(ds, "q2"), "p", now, 60_000)
        .await
        .unwrap()
        .unwrap();
    store
        .finish_round(
            &id(ds, "q2"),
            lease.generation,
            PartitionStatus::Failed,
            Some("boom".into()),
            now,
        )
        .await
        .unwrap();
    let failed = store
        .list_by_status(ds, PartitionStatus::Failed)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id.partition, "q2");
    assert_eq!(failed[0].last_error.as_deref(), Some("boom"));
    let active: Vec<String> = store
        .list_by_status(ds, PartitionStatus::Active)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id.partition)
        .collect();
    assert!(active.contains(&"q1".to_string()) && active.contains(&"q3".to_string()));
    assert!(!active.contains(&"q2".to_string()));
    // Another dataset's records never leak into the query.
    assert!(store
        .list_by_status(&format!("{ds}-other"), PartitionStatus::Active)
        .await
        .unwrap()
        .is_empty());
}

pub async fn sweep_cursor_is_saved_and_cleared(store: Arc<dyn StateStore>, ds: &str) {
    assert_eq!(store.sweep_cursor(ds).await.unwrap(), None);
    store
        .set_sweep_cursor(ds, Some("dt=2024-01-02"))
        .await
        .unwrap();
    store
        .set_sweep_cursor(ds, Some("dt=2024-01-03"))
        .await
        .unwrap();
    assert_eq!(
        store.sweep_cursor(ds).await.unwrap().as_deref(),
        Some("dt=2024-01-03")
    );
    // The cursor is not a partition: status queries never return it.
    for status in [PartitionStatus::Active, PartitionStatus::Compacted] {
        assert!(store.list_by_status(ds, status).await.unwrap().is_empty());
    }
    store.set_sweep_cursor(ds, None).await.unwrap();
    assert_eq!(store.sweep_cursor(ds).await.unwrap(), None);
}

pub async fn cold_ranges_survive_new_rounds_and_flag(store: Arc<dyn StateStore>, ds: &str) {
    use crate::model::hot::cold::{ColdRange, DeleteState};
    let pid = id(ds, "1000-2000");
    let now = 1_000;
    let lease = store
        .acquire_lease(&pid, "a", now, 60_000)
        .await
        .unwrap()
        .unwrap();
    let cold = |version, delete| ColdRange {
        version,
        rows: 42,
        moved_rows: 40,
        exported: 42,
        delete,
        at_ms: now,
    };
    store
        .record_cold_range(
            &pid,
            &cold(
                lease.generation,
                DeleteState::Moved {
                    deleted: 42,
                    partition: None,
                },
            ),
            now,
        )
        .await
        .unwrap();
    let mismatch = DeleteState::Flagged {
        detail: "late insert".into(),
        deleted: 40,
        left: 2,
    };
    store
        .record_cold_range(&pid, &cold(lease.generation, mismatch.clone()), now)
        .await
        .unwrap();
    // An older version never overwrites a newer record.
    store
        .record_cold_range(&pid, &cold(lease.generation - 1, DeleteState::Kept), now)
        .await
        .unwrap();
    assert!(store
        .finish_round(&pid, lease.generation, PartitionStatus::Flagged, None, now)
        .await
        .unwrap());
    let flagged = store
        .list_by_status(ds, PartitionStatus::Flagged)
        .await
        .unwrap();
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0].cold, Some(cold(lease.generation, mismatch)));
    // A new round keeps the cold record until a new commit replaces it.
    store
        .acquire_lease(&pid, "b", now + 1, 60_000)
        .await
        .unwrap()
        .unwrap();
    let record = store.get(&pid).await.unwrap().unwrap();
    assert_eq!(record.status, PartitionStatus::Compacting);
    assert_eq!(record.cold.map(|c| c.version), Some(lease.generation));
}

/// The lease of a holder known to be dead is taken over before it expires, only by naming
/// its generation.
pub async fn dead_holders_lease_is_taken_over(store: Arc<dyn StateStore>, ds: &str) {
    let pid = id(ds, "p");
    let first = store
        .acquire_lease(&pid, "dead", 0, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .take_over_lease(&pid, first.generation + 7, "b", 1, 60_000)
        .await
        .unwrap()
        .is_none());
    let second = store
        .take_over_lease(&pid, first.generation, "b", 1, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(second.owner, "b");
    assert!(store
        .take_over_lease(&pid, first.generation, "c", 2, 60_000)
        .await
        .unwrap()
        .is_none());
}

/// A dataset without partition levels has one partition, named `""`: it is stored, leased and
/// listed like any other.
pub async fn the_flat_partition_is_a_partition_like_any_other(
    store: Arc<dyn StateStore>,
    ds: &str,
) {
    let pid = id(ds, "");
    assert_eq!(store.get(&pid).await.unwrap(), None);
    let lease = store
        .acquire_lease(&pid, "me", 1_000, 60_000)
        .await
        .unwrap()
        .expect("a free lease");
    store
        .finish_round(
            &pid,
            lease.generation,
            PartitionStatus::Compacted,
            None,
            2_000,
        )
        .await
        .unwrap();
    let record = store.get(&pid).await.unwrap().expect("stored");
    assert_eq!(
        (record.id.partition.as_str(), record.status),
        ("", PartitionStatus::Compacted)
    );
    let listed = store
        .list_by_status(ds, PartitionStatus::Compacted)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![pid]
    );
}

/// Runs the whole suite; `dataset` must be unique to this run (every test uses its own records).
pub async fn run_all(store: Arc<dyn StateStore>, dataset: &str) {
    missing_partition_reads_as_none(Arc::clone(&store), dataset).await;
    counters_accumulate_atomically(Arc::clone(&store), dataset).await;
    racing_acquirers_get_one_lease(Arc::clone(&store), dataset).await;
    expired_lease_is_taken_over_and_stale_holder_fenced(Arc::clone(&store), dataset).await;
    commits_count_once_and_finish_the_round(Arc::clone(&store), dataset).await;
    dead_holders_lease_is_taken_over(Arc::clone(&store), &format!("{dataset}-dead")).await;
    sweep_cursor_is_saved_and_cleared(Arc::clone(&store), &format!("{dataset}-cursor")).await;
    cold_ranges_survive_new_rounds_and_flag(Arc::clone(&store), &format!("{dataset}-cold")).await;
    the_flat_partition_is_a_partition_like_any_other(
        Arc::clone(&store),
        &format!("{dataset}-flat"),
    )
    .await;
    partitions_are_queried_by_status(store, &format!("{dataset}-status")).await;
}
