//! End-to-end behaviour of the local pipeline on real directories: the contract of docs/architecture.md.

use std::sync::Arc;

use arrow::array::{
    Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use compaction::model::dataset::Mode;
use compaction::model::state::{PartitionId, PartitionStatus};
use compaction::ports::dispatch::CollectingDispatcher;
use compaction::services::committer::{CommitOutcome, Committer};
use compaction::services::merger::{MergeOutcome, Merger};
use compaction::services::planner::{PlanOptions, Planner, PlannerSettings};
use compaction::support::progress::NoProgress;
use compaction::support::units::ByteSize;
use e2e_tests::*;

fn cold_partition_dirs(env: &Env) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = parquet_files(&env.path("events"))
        .into_iter()
        .filter_map(|p| p.parent().map(|d| d.to_path_buf()))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concat_keeps_every_row_and_packs_files_near_the_target_size() {
    let env = Env::new();
    let generated = env.generate(3, 300, 600).await;
    let before = row_multiset(&parquet_files(&env.path("events")), SAMPLE_COLUMNS);
    assert_eq!(before.len() as u64, generated.rows);

    let config = small_config();
    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(
        summary
            .commits
            .iter()
            .map(|c| c.partition.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "three cold partitions compacted"
    );

    let after_files = parquet_files(&env.path("events"));
    let after = row_multiset(&after_files, SAMPLE_COLUMNS);
    assert_eq!(after, before, "the row multiset is unchanged");

    let target = config.datasets[0].target_file_size.bytes();
    let hot = generated.partitions.last().expect("hot partition");
    for dir in cold_partition_dirs(&env) {
        let files = parquet_files(&dir);
        if dir.ends_with(hot) {
            assert_eq!(files.len(), 3, "the hot partition is left alone");
            continue;
        }
        assert!(
            files.len() < 20,
            "{} still has {} files",
            dir.display(),
            files.len()
        );
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .collect();
        for (i, s) in sizes.iter().enumerate() {
            assert!(
                *s <= target + target / 4,
                "output {i} is {s} bytes, target {target}"
            );
        }
        // All outputs but the last of a task reach the target.
        let big = sizes.iter().filter(|s| **s >= target * 3 / 4).count();
        assert!(big + 2 >= sizes.len(), "sizes {sizes:?} target {target}");
    }
    assert!(staging_leftovers(env.root()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_changes_nothing() {
    let env = Env::new();
    env.generate(2, 60, 300).await;
    let config = small_config();
    env.run(&config).await;
    let snapshot = |env: &Env| -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
        parquet_files(env.root())
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).unwrap();
                (p, m.len(), m.modified().unwrap())
            })
            .collect()
    };
    let first = snapshot(&env);
    let second = env.run(&config).await;
    assert!(
        second.commits.is_empty(),
        "nothing to commit: {:?}",
        second.commits
    );
    assert_eq!(snapshot(&env), first, "no file was touched");
    let record = env
        .state
        .get(&PartitionId::new(
            "events",
            compaction::drivers::sample::partition_path(
                chrono::Utc::now() - chrono::Duration::hours(3),
            ),
        ))
        .await
        .unwrap();
    // The partition three hours back is one of the two generated cold ones.
    if let Some(r) = record {
        assert_eq!(r.status, PartitionStatus::Compacted);
        assert_eq!(r.counters.compactions, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_mode_output_is_globally_sorted_with_seq() {
    let env = Env::new();
    env.generate(1, 120, 800).await;
    let before = row_multiset(&parquet_files(&env.path("events")), SAMPLE_COLUMNS);
    let mut config = small_config();
    // A small budget forces spilled runs and a real k-way merge.
    config.memory_budget = compaction::support::units::ByteSize::mib(96);
    let ds = &mut config.datasets[0];
    ds.mode = Mode::Sort;
    ds.sort_key = vec!["ts_event".into()];
    ds.seq_column = Some("seq".into());
    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);

    let dir = cold_partition_dirs(&env)
        .into_iter()
        .find(|d| {
            parquet_files(d)
                .iter()
                .any(|f| f.to_string_lossy().contains("compacted-"))
        })
        .expect("a compacted partition");
    let files = parquet_files(&dir);
    assert!(
        files.len() > 1,
        "several outputs, to check order across files"
    );
    let mut last_ts = i64::MIN;
    let mut expected_seq = 0i64;
    for f in &files {
        for batch in read_batches(f) {
            assert_eq!(
                batch.schema().field(1).name(),
                "seq",
                "seq follows the key column"
            );
            let ts = batch
                .column(0)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            let seq = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for i in 0..batch.num_rows() {
                assert!(
                    ts.value(i) >= last_ts,
                    "rows out of order in {}",
                    f.display()
                );
                last_ts = ts.value(i);
                assert_eq!(seq.value(i), expected_seq);
                expected_seq += 1;
            }
        }
    }
    assert_eq!(
        expected_seq,
        120 * 800,
        "seq is 0..N-1 over all rows of the partition"
    );
    assert_eq!(
        row_multiset(&parquet_files(&env.path("events")), SAMPLE_COLUMNS),
        before
    );

    // A late file re-sorts the whole partition, seq renumbered without duplicates.
    let late = compaction::drivers::sample::sample_batch(
        chrono::Utc::now() - chrono::Duration::hours(2),
        0,
        1,
        50,
        99,
    )
    .unwrap();
    write_parquet(&dir.join("late.parquet"), &late);
    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let files = parquet_files(&dir);
    let seqs = row_multiset(&files, &["seq"]);
    assert_eq!(seqs.len(), 120 * 800 + 50);
    let mut distinct = seqs.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        seqs.len(),
        "seq values are unique after re-sorting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_files_are_skipped_recorded_and_kept() {
    let env = Env::new();
    let generated = env.generate(1, 20, 200).await;
    let partition = &generated.partitions[0];
    let dir = env.path(&format!("events/{partition}"));
    let good_rows = row_multiset(&parquet_files(&dir), SAMPLE_COLUMNS);

    let valid = std::fs::read(&parquet_files(&dir)[0]).unwrap();
    let corrupt: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage.parquet",
            b"this is not parquet at all, just text".repeat(10),
        ),
        ("truncated.parquet", valid[..valid.len() / 2].to_vec()),
        ("badmagic.parquet", {
            let mut v = valid.clone();
            let n = v.len();
            v[n - 4..].copy_from_slice(b"XXXX");
            v
        }),
        ("garbagefooter.parquet", {
            let mut v = valid.clone();
            let n = v.len();
            let len = u32::from_le_bytes(v[n - 8..n - 4].try_into().unwrap()) as usize;
            for b in &mut v[n - 8 - len..n - 8] {
                *b = 0xAB;
            }
            v
        }),
        ("badpages.parquet", {
            // Valid footer, destroyed data pages: only found while decoding.
            let mut v = valid.clone();
            let half = v.len() / 2;
            for b in &mut v[4..half] {
                *b = 0x5A;
            }
            v
        }),
    ];
    for (name, bytes) in &corrupt {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let summary = env.run(&small_config()).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let skipped: Vec<String> = summary
        .corrupt_inputs()
        .iter()
        .map(|s| s.key.clone())
        .collect();
    for (name, bytes) in &corrupt {
        assert!(
            skipped.iter().any(|k| k.ends_with(name)),
            "{name} not reported: {skipped:?}"
        );
        assert_eq!(
            &std::fs::read(dir.join(name)).unwrap(),
            bytes,
            "{name} must be kept untouched"
        );
    }
    let compacted: Vec<_> = parquet_files(&dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("compacted-"))
        .collect();
    assert_eq!(row_multiset(&compacted, SAMPLE_COLUMNS), good_rows);
    let record = env
        .state
        .get(&PartitionId::new("events", partition.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.counters.corrupt_skipped, corrupt.len() as u64);
    // The run reports partial success.
    assert!(summary.is_partial());
}

fn drift_batches() -> (RecordBatch, RecordBatch) {
    let a = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int32Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec!["a", "b"])),
        ],
    )
    .unwrap();
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("extra", DataType::Float64, true),
            Field::new("id", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["c"])),
            Arc::new(Float64Array::from(vec![Some(1.5)])),
            Arc::new(Int64Array::from(vec![5_000_000_000])),
        ],
    )
    .unwrap();
    (a, b)
}

fn old_partition() -> String {
    "dt=2024-01-01/hour=00".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatible_schema_drift_is_unified() {
    let env = Env::new();
    let (a, b) = drift_batches();
    let dir = env.path(&format!("events/{}", old_partition()));
    write_parquet(&dir.join("a.parquet"), &a);
    write_parquet(&dir.join("b.parquet"), &b);
    let summary = env.run(&small_config()).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let files = parquet_files(&dir);
    assert_eq!(files.len(), 1);
    let batches = read_batches(&files[0]);
    let schema = batches[0].schema();
    assert_eq!(
        schema.field_with_name("id").unwrap().data_type(),
        &DataType::Int64
    );
    assert!(schema.field_with_name("extra").unwrap().is_nullable());
    assert_eq!(
        row_multiset(&files, &["id", "name", "extra"]),
        vec![
            "id=1|name=a|extra=NULL",
            "id=2|name=b|extra=NULL",
            "id=5000000000|name=c|extra=1.5"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_schemas_are_refused_and_nothing_is_deleted() {
    let env = Env::new();
    let dir = env.path(&format!("events/{}", old_partition()));
    let (a, _) = drift_batches();
    let text_ids = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec!["x"]))],
    )
    .unwrap();
    write_parquet(&dir.join("a.parquet"), &a);
    write_parquet(&dir.join("z.parquet"), &text_ids);
    let before: Vec<Vec<u8>> = parquet_files(&dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let summary = env.run(&small_config()).await;
    assert_eq!(summary.failures.len(), 1);
    let error = &summary.failures[0].error;
    assert!(
        error.contains("\"id\"") && error.contains("a.parquet") && error.contains("z.parquet"),
        "{error}"
    );
    let after: Vec<Vec<u8>> = parquet_files(&dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(after, before, "inputs untouched");
    let record = env
        .state
        .get(&PartitionId::new("events", old_partition()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, PartitionStatus::Failed);
    assert!(
        record.lease.is_none(),
        "the lease is released so a fixed partition can be retried"
    );

    // Failing again, the partition backs off: the next runs leave it alone (and say so)
    // instead of merging it again every time; it is tried once, not twice, per run.
    let second = env.run(&small_config()).await;
    assert_eq!(
        second.failures.len(),
        1,
        "retried once: {:?}",
        second.failures
    );
    let third = env.run(&small_config()).await;
    assert!(third.failures.is_empty(), "{:?}", third.failures);
    let said = third.anomalies();
    assert!(
        said.iter()
            .any(|a| a.contains("backing off") && a.contains("failed 2 times")),
        "{said:?}"
    );
    let record = env
        .state
        .get(&PartitionId::new("events", old_partition()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.failures, 2);
    assert!(record.backoff_until_ms().is_some());
}

/// A directory or file the store cannot address (a control character, a backslash) is
/// skipped and left alone; the other partitions compact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaddressable_names_are_skipped_and_the_rest_compacts() {
    let env = Env::new();
    let (a, b) = drift_batches();
    let good = env.path(&format!("events/{}", old_partition()));
    write_parquet(&good.join("a.parquet"), &a);
    write_parquet(&good.join("b.parquet"), &b);
    write_parquet(&good.join("odd\\name.parquet"), &a);
    let bad = env.path("events/dt=2024-01-01/hour=01\u{7}");
    write_parquet(&bad.join("c.parquet"), &a);
    write_parquet(&bad.join("d.parquet"), &a);
    let summary = env.run(&small_config()).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.commits.len(), 1);
    assert!(good.join("odd\\name.parquet").exists(), "left alone");
    assert!(bad.join("c.parquet").exists() && bad.join("d.parquet").exists());
    let outputs: Vec<_> = parquet_files(&good)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("compacted-"))
        .collect();
    assert_eq!(row_multiset(&outputs, &["id"]).len(), 3);
}

fn planner(env: &Env, dispatcher: Arc<CollectingDispatcher>) -> Planner {
    Planner::new(
        Arc::clone(&env.store),
        Arc::clone(&env.state),
        dispatcher,
        PlannerSettings {
            owner: compaction::support::process::local_owner_id(),
            lease_ttl_ms: 60_000,
            staging_prefix: compaction::model::config::DEFAULT_STAGING_PREFIX.into(),
            memory_budget: 256 << 20,
            merge_throughput: 20 << 20,
        },
    )
}

/// Plans the first dataset without running anything; returns the dispatched tasks.
async fn plan_tasks(
    env: &Env,
    config: &compaction::model::config::Config,
) -> Vec<compaction::model::task::Task> {
    let dispatcher = Arc::new(CollectingDispatcher::default());
    planner(env, Arc::clone(&dispatcher))
        .plan_dataset(&config.datasets[0], &plan_options())
        .await
        .unwrap();
    let tasks = std::mem::take(&mut *dispatcher.tasks.lock().await);
    tasks
}

fn plan_options() -> PlanOptions {
    PlanOptions::sweep(chrono::Utc::now(), false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_landing_during_compaction_survive() {
    let env = Env::new();
    let generated = env.generate(1, 30, 200).await;
    let dir = env.path(&format!("events/{}", generated.partitions[0]));
    let config = small_config();
    let tasks = plan_tasks(&env, &config).await;
    assert!(!tasks.is_empty());

    // While the merge runs: a new file lands, and an existing input is rewritten in place.
    let all_before = row_multiset(&parquet_files(&dir), SAMPLE_COLUMNS);
    let late =
        compaction::drivers::sample::sample_batch(chrono::Utc::now(), 3, 4, 25, 1234).unwrap();
    write_parquet(&dir.join("late-arrival.parquet"), &late);
    let rewritten = tasks[0].inputs[0].key.clone();
    let replacement =
        compaction::drivers::sample::sample_batch(chrono::Utc::now(), 1, 4, 10, 777).unwrap();

    let merger = Merger::new(
        Arc::clone(&env.store),
        std::env::temp_dir(),
        Arc::new(NoProgress),
    );
    let committer = Committer::new(
        Arc::clone(&env.store),
        Arc::clone(&env.state),
        compaction::model::config::DEFAULT_STAGING_PREFIX,
    );
    for task in tasks {
        let task = Arc::new(task);
        assert!(matches!(
            merger.run(Arc::clone(&task)).await.unwrap(),
            MergeOutcome::Staged(_)
        ));
        // Rewrite the input after its merge but before the commit.
        write_parquet(&env.path(&rewritten), &replacement);
        let outcome = committer.commit(&task.task_dir()).await.unwrap();
        assert!(
            matches!(outcome, CommitOutcome::Refused { .. }),
            "changed input must refuse the commit: {outcome:?}"
        );
    }
    // Nothing was deleted: old rows (minus the rewritten file's), the late file and the rewrite.
    assert!(env.path(&rewritten).exists());
    assert!(dir.join("late-arrival.parquet").exists());
    let now = row_multiset(&parquet_files(&dir), SAMPLE_COLUMNS);
    assert_eq!(now.len(), all_before.len() - 200 + 25 + 10);
    assert!(
        staging_leftovers(env.root()).is_empty(),
        "refused staging is removed"
    );

    // The next run compacts everything, the late file included, nothing lost.
    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(row_multiset(&parquet_files(&dir), SAMPLE_COLUMNS), now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_between_merge_and_commit_converges() {
    let env = Env::new();
    env.generate(2, 40, 300).await;
    let before = row_multiset(&parquet_files(&env.path("events")), SAMPLE_COLUMNS);
    let config = small_config();
    let tasks = plan_tasks(&env, &config).await;
    let merger = Merger::new(
        Arc::clone(&env.store),
        std::env::temp_dir(),
        Arc::new(NoProgress),
    );
    for task in &tasks {
        merger.run(Arc::new(task.clone())).await.unwrap();
        // Replaying a staged merge does not merge again.
        assert!(matches!(
            merger.run(Arc::new(task.clone())).await.unwrap(),
            MergeOutcome::AlreadyStaged(_)
        ));
    }
    // Both inputs and staged outputs exist now; readers of the partition see only the inputs.
    assert_eq!(
        row_multiset(&parquet_files(&env.path("events")), SAMPLE_COLUMNS),
        before
    );

    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(
        summary.commits.len(),
        tasks.len(),
        "recovery committed the staged tasks"
    );
    assert_eq!(
        row_multiset(&parquet_files(&env.path("events")), SAMPLE_COLUMNS),
        before
    );
    assert!(staging_leftovers(env.root()).is_empty());
    // Replaying a commit after the fact is a no-op.
    let committer = Committer::new(
        Arc::clone(&env.store),
        Arc::clone(&env.state),
        compaction::model::config::DEFAULT_STAGING_PREFIX,
    );
    let replay = committer.commit(&tasks[0].task_dir()).await.unwrap();
    assert!(
        matches!(replay, CommitOutcome::AlreadyCommitted { .. }),
        "a replay says the task was committed: {replay:?}"
    );
    assert_eq!(
        row_multiset(&parquet_files(&env.path("events")), SAMPLE_COLUMNS),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_planners_compact_a_partition_once() {
    let env = Env::new();
    env.generate(1, 30, 100).await;
    let config = small_config();
    let first = Arc::new(CollectingDispatcher::default());
    let second = Arc::new(CollectingDispatcher::default());
    let (a, b) = (
        planner(&env, Arc::clone(&first)),
        planner(&env, Arc::clone(&second)),
    );
    let options = plan_options();
    let (ra, rb) = tokio::join!(
        a.plan_dataset(&config.datasets[0], &options),
        b.plan_dataset(&config.datasets[0], &options)
    );
    ra.unwrap();
    rb.unwrap();
    let planned = first.tasks.lock().await.len() + second.tasks.lock().await.len();
    let one_planner = first.tasks.lock().await.is_empty() != second.tasks.lock().await.is_empty();
    assert!(
        planned > 0 && one_planner,
        "exactly one planner got the lease and planned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() {
    let env = Env::new();
    env.generate(1, 10, 100).await;
    let before = parquet_files(env.root());
    let summary = run_local_dry(&env).await;
    assert!(summary.commits.is_empty());
    let planned = summary.plans[0]
        .partitions
        .iter()
        .filter(|p| {
            matches!(
                p.outcome,
                compaction::services::planner::PartitionOutcome::Planned { .. }
            )
        })
        .count();
    assert_eq!(planned, 1);
    assert_eq!(parquet_files(env.root()), before);
    assert!(staging_leftovers(env.root()).is_empty());
    let record = env
        .state
        .get(&PartitionId::new(
            "events",
            summary.plans[0].partitions[0].partition.clone(),
        ))
        .await
        .unwrap();
    assert!(record.is_none_or(|r| r.lease.is_none()), "no lease taken");
}

async fn run_local_dry(env: &Env) -> compaction::drivers::pipeline::RunSummary {
    compaction::drivers::pipeline::run_local(
        &small_config(),
        Arc::clone(&env.store),
        Arc::clone(&env.state),
        None,
        Arc::new(NoProgress),
        &run_options(true),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_to_another_prefix_leave_sources_clean() {
    let env = Env::new();
    let generated = env.generate(1, 25, 200).await;
    let before = row_multiset(&parquet_files(&env.path("events")), SAMPLE_COLUMNS);
    let mut config = small_config();
    config.datasets[0].output_prefix = Some("compacted/events".into());
    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let out = parquet_files(&env.path("compacted/events"));
    assert!(!out.is_empty());
    let src_left = parquet_files(&env.path(&format!("events/{}", generated.partitions[0])));
    assert!(src_left.is_empty(), "cold sources moved: {src_left:?}");
    let mut all = parquet_files(&env.path("events"));
    all.extend(out);
    assert_eq!(row_multiset(&all, SAMPLE_COLUMNS), before);
    assert!(env
        .path(&format!(
            "compacted/events/{}/_compactor_manifest.json",
            generated.partitions[0]
        ))
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fragmented_file_is_rewritten_and_a_healthy_one_left_alone() {
    use compaction::drivers::sample::{encode_small_file, partition_path, sample_batch};
    let env = Env::new();
    let hour = chrono::Utc::now() - chrono::Duration::hours(3);
    let hour = hour - chrono::Duration::seconds(hour.timestamp() % 3600);
    let dir = env.path(&format!("events/{}", partition_path(hour)));
    // 40 row groups of 1,000 rows each (a streaming appender's file), well over the small-file
    // threshold; and a file as large in one healthy row group.
    let fragmented = encode_small_file(&sample_batch(hour, 0, 2, 40_000, 7).unwrap()).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("appender.parquet"), &fragmented).unwrap();
    write_parquet(
        &dir.join("healthy.parquet"),
        &sample_batch(hour, 1, 2, 40_000, 8).unwrap(),
    );
    let mut config = small_config();
    config.datasets[0].healthy_row_group_size = compaction::support::units::ByteSize(256 * 1024);
    let small = config.datasets[0].small_file_threshold.bytes();
    for name in ["appender.parquet", "healthy.parquet"] {
        let size = std::fs::metadata(dir.join(name)).unwrap().len();
        assert!(size > small, "{name} is {size} bytes: not a small file");
    }
    let healthy_before = std::fs::read(dir.join("healthy.parquet")).unwrap();
    let before = row_multiset(&parquet_files(&dir), SAMPLE_COLUMNS);

    // The dry run says why each large file is or is not compacted.
    let plan = env.try_run_with(&config, run_options(true)).await.unwrap();
    let notes: Vec<(String, String)> = plan.plans[0]
        .partitions
        .iter()
        .flat_map(|p| p.files.iter())
        .map(|n| {
            (
                n.key.rsplit('/').next().unwrap().to_string(),
                n.verdict.to_string(),
            )
        })
        .collect();
    assert!(
        notes.contains(&(
            "appender.parquet".into(),
            "fragmented: 39 of its 40 row groups under healthy_row_group_size".into()
        )),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|(k, v)| k == "healthy.parquet" && v.starts_with("healthy")),
        "{notes:?}"
    );

    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.commits.len(), 1, "{:?}", summary.commits);
    let files = parquet_files(&dir);
    assert!(
        !dir.join("appender.parquet").exists(),
        "the fragmented file was replaced"
    );
    assert_eq!(
        std::fs::read(dir.join("healthy.parquet")).unwrap(),
        healthy_before,
        "the healthy file is untouched"
    );
    assert_eq!(
        row_multiset(&files, SAMPLE_COLUMNS),
        before,
        "every row kept"
    );
    for f in files
        .iter()
        .filter(|f| f.to_string_lossy().contains("compacted-"))
    {
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(f).unwrap())
                .unwrap();
        use parquet::file::reader::FileReader;
        assert!(
            reader.metadata().num_row_groups() < 5,
            "{} has {} row groups",
            f.display(),
            reader.metadata().num_row_groups()
        );
    }
    // Nothing left to do: the output is healthy and the healthy file stays healthy.
    let again = env.run(&config).await;
    assert!(again.commits.is_empty(), "{:?}", again.commits);
}

/// Writes `count` small sample files into `dir`, their times set `age` back.
fn small_files(dir: &std::path::Path, count: usize, seed: u64, age: std::time::Duration) {
    let hour = chrono::Utc::now() - chrono::Duration::hours(1);
    for i in 0..count {
        let path = dir.join(format!("part-{i}.parquet"));
        write_parquet(
            &path,
            &compaction::drivers::sample::sample_batch(hour, i, count, 200, seed).unwrap(),
        );
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    }
}

fn compacted_partitions(summary: &compaction::drivers::pipeline::RunSummary) -> Vec<String> {
    let mut partitions: Vec<String> = summary
        .commits
        .iter()
        .map(|c| c.partition.partition.clone())
        .collect();
    partitions.sort();
    partitions.dedup();
    partitions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_without_time_fields_compacts_once_it_is_quiet() {
    let env = Env::new();
    let fresh = std::time::Duration::ZERO;
    for product in ["ES", "NQ"] {
        small_files(&env.path(&format!("ticks/product={product}")), 4, 3, fresh);
    }
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.source_prefix = "ticks/".into();
    ds.partition_template = "product={product}".into();
    ds.grace = compaction::support::units::HumanDuration(std::time::Duration::from_secs(3600));
    let before = row_multiset(&parquet_files(&env.path("ticks")), SAMPLE_COLUMNS);

    // Files written just now: not quiet for an hour yet.
    let first = env.run(&config).await;
    assert!(first.commits.is_empty(), "{:?}", first.commits);
    assert!(first.plans[0].partitions.iter().all(|p| matches!(
        p.outcome,
        compaction::services::planner::PartitionOutcome::Hot { .. }
    )));

    // Two hours later (the files' times moved back): both partitions are quiet and compacted.
    for product in ["ES", "NQ"] {
        for f in parquet_files(&env.path(&format!("ticks/product={product}"))) {
            let file = std::fs::File::options().write(true).open(&f).unwrap();
            file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
                .unwrap();
        }
    }
    let second = env.run(&config).await;
    assert!(second.failures.is_empty(), "{:?}", second.failures);
    assert_eq!(
        compacted_partitions(&second),
        vec!["product=ES", "product=NQ"]
    );
    for product in ["ES", "NQ"] {
        assert_eq!(
            parquet_files(&env.path(&format!("ticks/product={product}"))).len(),
            1
        );
    }
    assert_eq!(
        row_multiset(&parquet_files(&env.path("ticks")), SAMPLE_COLUMNS),
        before,
        "every row kept"
    );
    assert!(staging_leftovers(env.root()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_layout_compacts_a_range_once_a_later_one_exists_or_the_tip_passes_it() {
    let env = Env::new();
    let old = std::time::Duration::from_secs(7200);
    for (chain, range) in [(1, "0-100"), (1, "100-200"), (1, "200-300"), (2, "0-100")] {
        small_files(
            &env.path(&format!("transfers/chain={chain}/range={range}")),
            3,
            chain,
            old,
        );
    }
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.source_prefix = "transfers/".into();
    ds.partition_template = "chain={chain}/range={start}-{end}".into();
    ds.coldness = Some(compaction::model::partition::ColdRule::Range);
    let before = row_multiset(&parquet_files(&env.path("transfers")), SAMPLE_COLUMNS);

    // Chain 1's last range and chain 2's only one have no later range: they wait.
    let first = env.run(&config).await;
    assert!(first.failures.is_empty(), "{:?}", first.failures);
    assert_eq!(
        compacted_partitions(&first),
        vec!["chain=1/range=0-100", "chain=1/range=100-200"]
    );
    // A tip past chain 1's last range (and chain 2's) makes them final.
    config.datasets[0].range_tip = Some(299);
    let second = env.run(&config).await;
    assert_eq!(
        compacted_partitions(&second),
        vec!["chain=1/range=200-300", "chain=2/range=0-100"]
    );
    assert_eq!(
        row_multiset(&parquet_files(&env.path("transfers")), SAMPLE_COLUMNS),
        before,
        "every row kept"
    );
    // A finality distance is honoured: with 1000, range 300-400 waits for a range from 1400 on.
    let mut strict = small_config();
    strict.datasets[0] = config.datasets[0].clone();
    strict.datasets[0].range_tip = None;
    strict.datasets[0].range_finality = 1000;
    small_files(&env.path("transfers/chain=1/range=300-400"), 3, 9, old);
    small_files(&env.path("transfers/chain=1/range=400-500"), 3, 10, old);
    let third = env.run(&strict).await;
    assert!(third.commits.is_empty(), "{:?}", third.commits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_files_without_partitions_compacts_as_one_partition() {
    let env = Env::new();
    let old = std::time::Duration::from_secs(7200);
    small_files(&env.path("flat"), 6, 4, old);
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.source_prefix = "flat/".into();
    ds.partition_template = String::new();
    let before = row_multiset(&parquet_files(&env.path("flat")), SAMPLE_COLUMNS);

    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(compacted_partitions(&summary), vec![""]);
    let files = parquet_files(&env.path("flat"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(env.path("flat/_compactor_manifest.json").exists());
    assert_eq!(
        row_multiset(&files, SAMPLE_COLUMNS),
        before,
        "every row kept"
    );
    assert!(staging_leftovers(env.root()).is_empty());
    let again = env.run(&config).await;
    assert!(again.commits.is_empty(), "{:?}", again.commits);
}

/// A fragmented file mixing healthy and tiny row groups: the healthy ones reach the outputs
/// byte for byte (with their page index), the tiny ones are re-encoded together; a file whose
/// schema differs from the unified one has its healthy row groups re-encoded, not copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_row_groups_are_copied_byte_for_byte_and_tiny_ones_re_encoded() {
    use compaction::drivers::sample::{partition_path, sample_batch};
    let env = Env::new();
    let hour = chrono::Utc::now() - chrono::Duration::hours(3);
    let hour = hour - chrono::Duration::seconds(hour.timestamp() % 3600);
    let dir = env.path(&format!("events/{}", partition_path(hour)));
    let mixed = |big: usize| {
        let mut groups = Vec::new();
        for _ in 0..3 {
            groups.push(big);
            groups.extend([300; 6]);
        }
        groups
    };
    let appender = sample_batch(hour, 0, 3, 72_000, 7).unwrap();
    write_row_groups(&dir.join("appender.parquet"), &appender, &mixed(22_000));
    // `user_id` as a 32-bit integer: unified to 64 bits, so its row groups differ from the
    // output schema and are re-encoded.
    let drifted = {
        let base = sample_batch(hour, 1, 3, 72_000, 8).unwrap();
        let at = base.schema().index_of("user_id").unwrap();
        let mut fields: Vec<Field> = base
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[at] = Field::new("user_id", DataType::Int32, fields[at].is_nullable());
        let mut columns = base.columns().to_vec();
        columns[at] = arrow::compute::cast(&columns[at], &DataType::Int32).unwrap();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    };
    write_row_groups(&dir.join("drifted.parquet"), &drifted, &mixed(22_000));

    let mut config = small_config();
    config.datasets[0].healthy_row_group_size = compaction::support::units::ByteSize(200 * 1024);
    config.datasets[0].small_file_threshold = compaction::support::units::ByteSize(256 * 1024);
    config.datasets[0].target_file_size = compaction::support::units::ByteSize::mib(2);
    let healthy = config.datasets[0].healthy_row_group_size.bytes() as usize;
    let groups_of = |name: &str| row_group_bytes(&dir.join(name));
    let copyable: Vec<Vec<u8>> = groups_of("appender.parquet")
        .into_iter()
        .filter(|(bytes, indexed)| {
            assert!(indexed, "the fixture's row groups carry a page index");
            bytes.len() >= healthy
        })
        .map(|(bytes, _)| bytes)
        .collect();
    assert_eq!(
        copyable.len(),
        3,
        "the fixture has three healthy row groups"
    );
    let drifted_groups: Vec<Vec<u8>> = groups_of("drifted.parquet")
        .into_iter()
        .filter(|(bytes, _)| bytes.len() >= healthy)
        .map(|(bytes, _)| bytes)
        .collect();
    assert_eq!(drifted_groups.len(), 3);
    let columns = SAMPLE_COLUMNS;
    let before = row_multiset(&parquet_files(&dir), columns);

    // The dry run's estimate: the healthy row groups are copied, the rest encoded.
    let plan = env.try_run_with(&config, run_options(true)).await.unwrap();
    let tasks: Vec<&compaction::services::planner::TaskSummary> = plan.plans[0]
        .partitions
        .iter()
        .flat_map(|p| match &p.outcome {
            compaction::services::planner::PartitionOutcome::Planned { tasks } => tasks.iter(),
            _ => [].iter(),
        })
        .collect();
    assert_eq!(tasks.len(), 1);
    let estimate = &tasks[0].estimate;
    let healthy_bytes = |name: &str| -> u64 {
        groups_of(name)
            .iter()
            .filter(|(b, _)| b.len() >= healthy)
            .map(|(b, _)| b.len() as u64)
            .sum()
    };
    // Footers alone cannot tell that drift keeps the drifted file's row groups from being copied.
    assert_eq!(
        estimate.copy_bytes,
        healthy_bytes("appender.parquet") + healthy_bytes("drifted.parquet")
    );
    assert_eq!(
        estimate.copy_bytes + estimate.encode_bytes,
        tasks[0].input_bytes
    );
    assert!(
        estimate.seconds > 0.0 && estimate.gb_seconds > 0.0,
        "{estimate:?}"
    );

    let summary = env.run(&config).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.commits.len(), 1, "{:?}", summary.commits);
    let files = parquet_files(&dir);
    assert!(
        files
            .iter()
            .all(|f| f.to_string_lossy().contains("compacted-")),
        "{files:?}"
    );
    assert_eq!(row_multiset(&files, columns), before, "every row kept");

    let outputs: Vec<(Vec<u8>, bool)> = files.iter().flat_map(|f| row_group_bytes(f)).collect();
    for (i, group) in copyable.iter().enumerate() {
        let found: Vec<&(Vec<u8>, bool)> = outputs.iter().filter(|(b, _)| b == group).collect();
        assert_eq!(
            found.len(),
            1,
            "healthy row group {i} is in the outputs byte for byte, once"
        );
        assert!(found[0].1, "copied row group {i} kept its page index");
    }
    for group in &drifted_groups {
        assert!(
            outputs.iter().all(|(b, _)| b != group),
            "a row group of the drifted file was copied although its schema differs"
        );
    }
    // 3 copied + the re-encoded rest (72,000 drifted rows and 5,400 tiny-group rows) in a few
    // large row groups, not 36 tiny ones.
    assert!(
        outputs.len() <= 8,
        "{} row groups in the outputs",
        outputs.len()
    );
    assert!(
        outputs.iter().all(|(_, indexed)| *indexed),
        "every row group has a page index"
    );
}

/// Late files into a sorted partition: the earlier output, whose footer declares the sort key,
/// is merged as a run as it is; only the late rows are sorted (asserted on the work the merge
/// reports, not on timing). The result is globally sorted with seq 0..N-1 and the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_files_merge_into_a_sorted_partition_without_re_sorting_it() {
    use compaction::drivers::sample::sample_batch;
    let env = Env::new();
    env.generate(1, 40, 500).await;
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.mode = Mode::Sort;
    ds.sort_key = vec!["ts_event".into()];
    ds.seq_column = Some("seq".into());
    let first = env.run(&config).await;
    assert!(first.failures.is_empty(), "{:?}", first.failures);
    assert_eq!(first.commits.len(), 1, "{:?}", first.commits);
    let work = first.commits[0].sort.expect("sort work recorded");
    assert_eq!((work.rows_sorted, work.rows_in_order), (20_000, 0));

    let dir = cold_partition_dirs(&env)
        .into_iter()
        .find(|d| {
            parquet_files(d)
                .iter()
                .any(|f| f.to_string_lossy().contains("compacted-"))
        })
        .expect("the compacted partition");
    let hour = chrono::Utc::now() - chrono::Duration::hours(3);
    for i in 0..3 {
        write_parquet(
            &dir.join(format!("late-{i}.parquet")),
            &sample_batch(hour, i, 3, 200, 77 + i as u64).unwrap(),
        );
    }
    let before = row_multiset(&parquet_files(&dir), SAMPLE_COLUMNS);
    let second = env.run(&config).await;
    assert!(second.failures.is_empty(), "{:?}", second.failures);
    assert_eq!(second.commits.len(), 1, "{:?}", second.commits);
    let work = second.commits[0].sort.expect("sort work recorded");
    assert_eq!(
        (work.rows_sorted, work.rows_in_order),
        (600, 20_000),
        "only the late rows are sorted"
    );
    let files = parquet_files(&dir);
    assert_eq!(
        row_multiset(&files, SAMPLE_COLUMNS),
        before,
        "every row once"
    );
    assert_sorted_with_seq(&files, 20_600);
}

/// A partition larger than one step (`max_task_bytes`) is sorted in passes: run steps, then
/// merge steps over key ranges, committed as one task; the result is the one-step sort's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_larger_than_a_step_is_sorted_in_passes() {
    let env = Env::new();
    env.generate(1, 40, 6000).await;
    let dir = env.root().join("events");
    let before = row_multiset(&parquet_files(&dir), SAMPLE_COLUMNS);
    let input_bytes: u64 = parquet_files(&dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.mode = Mode::Sort;
    ds.sort_key = vec!["ts_event".into()];
    ds.seq_column = Some("seq".into());
    ds.max_task_bytes = ByteSize(input_bytes / 4);
    assert!(
        ds.max_task_bytes >= ds.target_file_size,
        "inputs of {input_bytes} bytes are too few for four steps"
    );
    let report = env.run(&config).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.commits.len(), 1, "one commit for the partition");
    let work = report.commits[0].sort.expect("sort work recorded");
    assert!(
        work.run_steps >= 4 && work.merge_steps >= 3,
        "sorted in passes: {work:?}"
    );
    assert_eq!(
        work.rows_sorted + work.rows_in_order,
        report.commits[0].rows
    );
    assert_eq!(
        row_multiset(&parquet_files(&dir), SAMPLE_COLUMNS),
        before,
        "every row once"
    );
    let sorted = compacted_dirs(&env.root().join("events"));
    assert_eq!(sorted.len(), 1, "one sorted partition");
    let files = parquet_files(&sorted[0]);
    let rows = row_multiset(&files, SAMPLE_COLUMNS).len() as i64;
    assert_eq!(rows, report.commits[0].rows as i64);
    assert_sorted_with_seq(&files, rows);
    let left = staging_leftovers(env.root());
    assert!(left.is_empty(), "no step left in staging: {left:?}");
}
