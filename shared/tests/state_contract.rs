//! The embedded state store passes the state-port contract, and its records survive a restart.

use std::sync::Arc;

use compaction::model::state::{Counters, PartitionId};
use compaction::ports::state::{contract, EmbeddedState, StateStore};

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

/// `compactor status` and `compactor plan` read the state while a compaction writes it, and
/// see its commits; they can change nothing.
#[tokio::test]
async fn readers_follow_a_writer_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let writer = EmbeddedState::open(&path).unwrap();
    let reader = EmbeddedState::open_read_only(&path).unwrap();
    let id = PartitionId::new("ds", "p");
    assert!(reader.get(&id).await.unwrap().is_none());
    let delta = Counters {
        files_seen: 3,
        ..Counters::default()
    };
    writer.add_counters(&id, &delta, 1).await.unwrap();
    assert_eq!(
        reader.get(&id).await.unwrap().unwrap().counters.files_seen,
        3
    );
    let e = reader.add_counters(&id, &delta, 2).await.unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}

/// A state file that is not a database (a disk-full error left zeros, say) gets an error that
/// says it holds no data and may be moved aside.
#[test]
fn an_unreadable_state_file_says_what_is_safe_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let e = EmbeddedState::open(&path).unwrap_err().to_string();
    assert!(e.contains("mv ") && e.contains("no file is lost"), "{e}");
}
