//! The embedded state store passes the state-port contract, and its records survive a restart.

use std::sync::Arc;

use compaction::state::{contract, Counters, EmbeddedState, PartitionId, StateStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_state_passes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedState::open(dir.path().join("state.redb")).unwrap());
    contract::run_all(store, "contract").await;
}

#[tokio::test]
async fn records_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let id = PartitionId::new("ds", "dt=2024-01-01");
    let lease = {
        let state = EmbeddedState::open(&path).unwrap();
        let delta = Counters {
            files_seen: 3,
            ..Counters::default()
        };
        state.add_counters(&id, &delta, 1).await.unwrap();
        state
            .acquire_lease(&id, "me", 1_000, 60_000)
            .await
            .unwrap()
            .unwrap()
    };
    let reopened = EmbeddedState::open(&path).unwrap();
    let record = reopened.get(&id).await.unwrap().unwrap();
    assert_eq!(record.counters.files_seen, 3);
    assert_eq!(record.lease, Some(lease.clone()));
    // The lease is still exclusive after the restart, and its holder can still renew it.
    assert!(reopened
        .acquire_lease(&id, "other", 2_000, 60_000)
        .await
        .unwrap()
        .is_none());
    reopened
        .renew_lease(&id, &lease, 2_000, 60_000)
        .await
        .unwrap();
}

#[test]
fn a_second_process_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let _first = EmbeddedState::open(&path).unwrap();
    let err = EmbeddedState::open(&path).unwrap_err().to_string();
    assert!(err.contains("in use"), "{err}");
}
