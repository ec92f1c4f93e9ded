//! The whole pipeline over a real S3 + DynamoDB endpoint (moto's server), driven the way Lambda
//! drives it: the planner service gets real-shaped S3 events, the merger service runs each
//! dispatched task (inline or by reference), the committer service gets the `_SUCCESS` event.

use std::sync::Arc;

use compaction::drivers::lambda::committer::CommitterFunction;
use compaction::drivers::lambda::merger::MergerFunction;
use compaction::drivers::lambda::planner::PlannerFunction;
use compaction::drivers::lambda::Deployment;
use compaction::drivers::sample::{generate, SampleSpec};
use compaction::model::config::Config;
use compaction::model::state::{PartitionId, PartitionStatus};
use compaction::model::task::{Task, SUCCESS};
use compaction::ports::dispatch::{task_payload, CollectingDispatcher};
use compaction::ports::store::{list_all, ObjectStore};
use e2e_tests::{aws, parquet_files, row_multiset, small_config, SAMPLE_COLUMNS};
use serde_json::{json, Value};

fn far_deadline() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(900)
}

struct Pipeline {
    deployment: Deployment,
    dispatcher: Arc<CollectingDispatcher>,
    planner: PlannerFunction,
    merger: MergerFunction,
    committer: CommitterFunction,
    _scratch: tempfile::TempDir,
}

impl Pipeline {
    async fn new(config: Config) -> Self {
        Self::with_deployment(aws::deployment(config).await)
    }

    fn with_deployment(deployment: Deployment) -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let dispatcher = Arc::new(CollectingDispatcher::default());
        Self {
            planner: PlannerFunction::new(deployment.clone(), dispatcher.clone()),
            merger: MergerFunction::new(
                deployment.clone(),
                scratch.path().to_path_buf(),
                256 << 20,
                20 << 20,
            ),
            committer: CommitterFunction::new(deployment.clone(), None),
            deployment,
            dispatcher,
            _scratch: scratch,
        }
    }

    fn store(&self) -> &dyn ObjectStore {
        self.deployment.store.as_ref()
    }

    async fn plan(&self, event: &Value) -> Value {
        self.planner
            .handle(event, "req-1", far_deadline())
            .await
            .unwrap()
    }

    async fn take_tasks(&self) -> Vec<Task> {
        std::mem::take(&mut *self.dispatcher.tasks.lock().await)
    }

    /// Runs a task as the merger Lambda gets it: inline, or by reference when `by_reference`.
    async fn merge(&self, task: &Task, by_reference: bool) -> Value {
        let limit = if by_reference { 0 } else { usize::MAX };
        let payload: Value = serde_json::from_slice(&task_payload(task, limit).unwrap()).unwrap();
        assert_eq!(payload.get("task_key").is_some(), by_reference);
        self.merger.handle(&payload, far_deadline()).await.unwrap()
    }

    async fn commit(&self, task: &Task) -> Value {
        let marker = task.staging_key(SUCCESS);
        let event = aws::s3_put_event(&self.deployment.bucket, &marker, 0);
        self.committer.handle(&event).await.unwrap()
    }

    /// Merges `task` and commits it, as the functions do, and checks that both happened.
    async fn merge_and_commit(&self, task: &Task, by_reference: bool) {
        let merged = self.merge(task, by_reference).await;
        assert_eq!(merged["staged"], json!(true), "{merged}");
        let committed = self.commit(task).await;
        assert_eq!(
            committed["results"][0]["committed"],
            json!(true),
            "{committed}"
        );
    }

    async fn keys(&self) -> Vec<String> {
        list_all(self.store(), "", None)
            .await
            .unwrap()
            .objects
            .into_iter()
            .map(|o| o.key)
            .collect()
    }
}

async fn sample(p: &Pipeline, partitions: usize, files: usize) -> Vec<String> {
    generate(
        Arc::clone(&p.deployment.store),
        &SampleSpec {
            prefix: "events/".into(),
            partitions,
            files_per_partition: files,
            rows_per_file: 300,
            include_hot_partition: false,
            now: chrono::Utc::now(),
            seed: 11,
        },
    )
    .await
    .unwrap();
    p.keys().await
}

/// Writes `count` small sample files (a streaming writer's) under `dir`; returns their keys.
async fn put_small_files(p: &Pipeline, dir: &str, count: usize) -> Vec<String> {
    use compaction::drivers::sample::{encode_small_file, sample_batch};
    let hour = chrono::Utc::now() - chrono::Duration::hours(2);
    let mut keys = Vec::new();
    for i in 0..count {
        let key = format!("{dir}part-{i}.parquet");
        let batch = sample_batch(hour, i, count, 250, dir.len() as u64).unwrap();
        p.store()
            .put(
                &key,
                encode_small_file(&batch).unwrap(),
                compaction::ports::store::PutMode::Overwrite,
            )
            .await
            .unwrap();
        keys.push(key);
    }
    keys
}

/// The partition path of a sample key (`events/<partition>/<file>`).
fn partition_of(key: &str) -> String {
    key.strip_prefix("events/")
        .and_then(|k| k.rsplit_once('/'))
        .map(|(dir, _)| dir.to_string())
        .unwrap()
}

fn rows_under(dir: &std::path::Path) -> Vec<String> {
    row_multiset(&parquet_files(&dir.join("events")), SAMPLE_COLUMNS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_events_drive_one_compaction_with_identical_rows() {
    let p = Pipeline::new(small_config()).await;
    let keys = sample(&p, 2, 6).await;
    let before = tempfile::tempdir().unwrap();
    aws::mirror(p.store(), "events/", before.path()).await;

    // Every input's S3 event, delivered twice and in reverse order: counted, and because the
    // partitions are cold (late for this deployment) planned once each.
    let mut events: Vec<Value> = keys
        .iter()
        .map(|k| aws::s3_put_event(&p.deployment.bucket, k, 1))
        .collect();
    events.extend(events.clone());
    events.reverse();
    let mut estimates = Vec::new();
    for event in &events {
        let response = p.plan(event).await;
        for partition in response["plans"][0]["partitions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for task in partition["outcome"]["tasks"]
                .as_array()
                .into_iter()
                .flatten()
            {
                estimates.push(task["estimate"].clone());
            }
        }
    }
    // The response says what each dispatched task will cost.
    assert_eq!(estimates.len(), 2, "{estimates:?}");
    for e in &estimates {
        assert!(
            e["encode_bytes"].as_u64() > Some(0) && e["gb_seconds"].as_f64() > Some(0.0),
            "{e}"
        );
    }
    let tasks = p.take_tasks().await;
    let partitions: std::collections::BTreeSet<_> =
        tasks.iter().map(|t| t.partition.clone()).collect();
    assert_eq!(partitions.len(), 2, "one round per partition: {tasks:#?}");

    // The committer's _SUCCESS event may come before the merge finished (out of order):
    // nothing happens.
    let early = p.commit(&tasks[0]).await;
    assert_eq!(early["results"][0]["not_ready"], json!(true), "{early}");

    for (i, task) in tasks.iter().enumerate() {
        let merged = p.merge(task, i % 2 == 0).await;
        assert_eq!(merged["staged"], json!(true), "{merged}");
        // A duplicate merge invocation is harmless.
        p.merge(task, false).await;
    }
    for task in &tasks {
        let committed = p.commit(task).await;
        assert_eq!(
            committed["results"][0]["committed"],
            json!(true),
            "{committed}"
        );
        let again = p.commit(task).await;
        assert_eq!(again["results"][0]["committed"], Value::Null, "{again}");
        assert_eq!(
            again["results"][0]["already_committed"],
            json!(true),
            "a replayed _SUCCESS says what happened: {again}"
        );
    }

    let after = tempfile::tempdir().unwrap();
    let live = aws::mirror(p.store(), "events/", after.path()).await;
    assert_eq!(rows_under(before.path()), rows_under(after.path()));
    assert!(live
        .iter()
        .filter(|k| k.ends_with(".parquet"))
        .all(|k| compaction::model::object::file_name(k).starts_with("compacted-")));
    assert!(
        list_all(p.store(), "_compactor/", None)
            .await
            .unwrap()
            .objects
            .is_empty(),
        "staging is empty"
    );
    for partition in &partitions {
        let record = p.deployment.state.get(partition).await.unwrap().unwrap();
        assert_eq!(record.status, PartitionStatus::Compacted);
        assert_eq!(record.counters.compactions, 1, "{record:?}");
        assert!(record.counters.files_seen >= 12);
    }

    // Late duplicates of the original events after the commit start nothing new.
    for event in &events {
        p.plan(event).await;
    }
    assert!(p.take_tasks().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_planners_give_one_lease() {
    let p = Pipeline::new(small_config()).await;
    let keys = sample(&p, 1, 4).await;
    let partition = partition_of(&keys[0]);
    let command = json!({"command": "plan", "dataset": "events", "partition": partition});
    let second = PlannerFunction::new(p.deployment.clone(), p.dispatcher.clone());
    let (a, b) = tokio::join!(
        p.planner.handle(&command, "req-a", far_deadline()),
        second.handle(&command, "req-b", far_deadline())
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let planned = outcomes
        .iter()
        .filter(|o| o["plans"][0]["partitions"][0]["outcome"]["tasks"].is_array())
        .count();
    assert_eq!(planned, 1, "{outcomes:#?}");
    let held = outcomes
        .iter()
        .filter(|o| o["plans"][0]["partitions"][0]["outcome"]["lease_held_by"].is_string())
        .count();
    assert_eq!(held, 1, "{outcomes:#?}");
    let record = p
        .deployment
        .state
        .get(&PartitionId::new("events", &partition))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_and_change_nothing() {
    let p = Pipeline::new(small_config()).await;
    let keys = sample(&p, 1, 3).await;
    let bucket = p.deployment.bucket.clone();
    let state_before = p
        .deployment
        .state
        .list_by_status("events", PartitionStatus::Active)
        .await
        .unwrap();
    let cases = [
        json!({}),
        json!({"command": "explode"}),
        json!({"command": "plan", "dataset": "nope", "partition": "dt=2024-01-01/hour=00"}),
        json!({"command": "plan", "dataset": "events", "partition": "../../etc"}),
        json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}}),
        aws::s3_put_event(&bucket, "elsewhere/x.parquet", 1),
        aws::s3_put_event("someone-elses-bucket", &keys[0], 1),
        aws::s3_put_event(
            &bucket,
            "events/dt=2024-01-01/hour=00/../../../../x.parquet",
            1,
        ),
    ];
    for event in &cases {
        let err = p
            .planner
            .handle(event, "req", far_deadline())
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(
                err,
                compaction::Error::BadEvent(_) | compaction::Error::Partition { .. }
            ),
            "{event}: {message}"
        );
    }
    for event in [
        json!({"task_dir": "events/dt=2024-01-01/"}),
        aws::s3_put_event(&bucket, &keys[0], 1),
        json!({"nothing": true}),
    ] {
        assert!(p.committer.handle(&event).await.is_err(), "{event}");
    }
    assert!(p
        .merger
        .handle(&json!({"what": 1}), far_deadline())
        .await
        .is_err());
    // Own outputs and staging keys are acknowledged and ignored, never planned.
    let own = aws::s3_put_event(
        &bucket,
        "_compactor/staging/events/x/g000001-t0000/_SUCCESS",
        0,
    );
    let ignored = p.plan(&own).await;
    assert_eq!(ignored["ignored"][0]["why"], json!("staging"), "{ignored}");
    assert!(p.take_tasks().await.is_empty());
    assert_eq!(p.keys().await, keys, "objects unchanged");
    assert_eq!(
        p.deployment
            .state
            .list_by_status("events", PartitionStatus::Active)
            .await
            .unwrap(),
        state_before,
        "state unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_too_big_for_the_time_left_is_refused_before_it_starts() {
    let p = Pipeline::new(small_config()).await;
    let keys = sample(&p, 1, 3).await;
    let partition = partition_of(&keys[0]);
    p.plan(&json!({"command": "plan", "dataset": "events", "partition": partition}))
        .await;
    let task = p.take_tasks().await.remove(0);
    let slow = MergerFunction::new(p.deployment.clone(), std::env::temp_dir(), 256 << 20, 1);
    let payload: Value = serde_json::from_slice(&task_payload(&task, usize::MAX).unwrap()).unwrap();
    let err = slow
        .handle(
            &payload,
            std::time::Instant::now() + std::time::Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused before starting"), "{err}");
    assert!(
        list_all(p.store(), &task.task_dir(), None)
            .await
            .unwrap()
            .objects
            .iter()
            .all(|o| o.key.ends_with("_task.json")),
        "nothing staged"
    );
}

/// A sort too large for one merger invocation runs in steps across several: each invocation
/// runs the steps its time allows and hands the task (by reference) to the next; one commit
/// then makes the whole partition sorted, every row once, `seq` 0..N-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sort_larger_than_one_invocation_continues_across_several() {
    use compaction::model::dataset::Mode;
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.mode = Mode::Sort;
    ds.sort_key = vec!["ts_event".into()];
    ds.seq_column = Some("seq".into());
    ds.max_task_bytes = compaction::support::units::ByteSize::mib(1);
    let p = Pipeline::new(config).await;
    generate(
        Arc::clone(&p.deployment.store),
        &SampleSpec {
            prefix: "events/".into(),
            partitions: 1,
            files_per_partition: 16,
            rows_per_file: 6000,
            include_hot_partition: false,
            now: chrono::Utc::now(),
            seed: 5,
        },
    )
    .await
    .unwrap();
    let keys = p.keys().await;
    let partition = partition_of(&keys[0]);
    let before = tempfile::tempdir().unwrap();
    e2e_tests::aws::mirror(p.store(), "events/", before.path()).await;
    p.plan(&json!({"command": "plan", "dataset": "events", "partition": partition}))
        .await;
    let task = p.take_tasks().await.remove(0);
    assert!(task.input_bytes() > 3 << 20, "{} bytes", task.input_bytes());

    let continuing = Arc::new(CollectingDispatcher::default());
    let scratch = tempfile::tempdir().unwrap();
    let merger = MergerFunction::new(
        p.deployment.clone(),
        scratch.path().to_path_buf(),
        256 << 20,
        20 << 20,
    )
    .continuing_with(continuing.clone());
    // Each invocation has no time beyond the safety margin: it runs one step, then hands on.
    // The second is cut off by its time limit at once: the next runs its step again.
    let mut payload: Value =
        serde_json::from_slice(&task_payload(&task, usize::MAX).unwrap()).unwrap();
    let mut invocations = 0;
    loop {
        invocations += 1;
        assert!(invocations < 100, "the sort does not finish");
        let time = if invocations == 2 { 15 } else { 30 };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(time);
        let response = merger.handle(&payload, deadline).await.unwrap();
        if response["staged"] == json!(true) {
            break;
        }
        assert_eq!(
            response["timed_out"] == json!(true),
            invocations == 2,
            "{response}"
        );
        assert_eq!(response["paused"], json!(true), "{response}");
        assert_eq!(response["continued"], json!(true), "{response}");
        let next = std::mem::take(&mut *continuing.tasks.lock().await);
        assert_eq!(next.len(), 1, "one continuation per paused invocation");
        payload = serde_json::from_slice(&task_payload(&next[0], 0).unwrap()).unwrap();
        assert!(payload.get("task_key").is_some(), "continued by reference");
    }
    assert!(invocations >= 4, "only {invocations} invocations");
    let committed = p.commit(&task).await;
    assert_eq!(
        committed["results"][0]["committed"],
        json!(true),
        "{committed}"
    );
    let after = tempfile::tempdir().unwrap();
    e2e_tests::aws::mirror(p.store(), "events/", after.path()).await;
    assert_eq!(rows_under(after.path()), rows_under(before.path()));
    let sorted = e2e_tests::compacted_dirs(&after.path().join("events"));
    assert_eq!(sorted.len(), 1);
    let files = parquet_files(&sorted[0]);
    let rows = row_multiset(&files, SAMPLE_COLUMNS).len() as i64;
    e2e_tests::assert_sorted_with_seq(&files, rows);
    assert!(
        list_all(p.store(), "_compactor/staging/", None)
            .await
            .unwrap()
            .objects
            .is_empty(),
        "staging is empty after the commit"
    );
}

/// A hot range through the three functions: the DSN from moto's Secrets Manager, the export
/// into S3, the committer's delete from the real Postgres, the state in DynamoDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_range_moves_from_postgres_to_s3_through_the_functions() {
    use compaction::model::hot::cold::DeleteState;
    use compaction::model::hot::config::HotDatasetConfig;
    use compaction::ports::hot::postgres::{DsnSource, PostgresSource};

    let pg = e2e_tests::pg::connect().await;
    let schema = e2e_tests::pg::schema(&pg).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.tx (chain_id int8, block_number int8, amount numeric(20,2));
         INSERT INTO {schema}.tx SELECT c, g, g / 4.0 FROM generate_series(0, 1499) g, generate_series(1, 2) c;"
    ))
    .await
    .unwrap();
    let sdk = aws::sdk_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret_id = aws::unique_name("pg-dsn");
    secrets
        .create_secret()
        .name(&secret_id)
        .secret_string(e2e_tests::pg::dsn())
        .send()
        .await
        .expect("creating the DSN secret in moto");
    let hot = HotDatasetConfig {
        chain_id: Some(1),
        range_size: 1000,
        chunk_size: 400,
        delete_after_compact: true,
        ..HotDatasetConfig::new("tx", &format!("{schema}.tx"))
    };
    let config = Config {
        hot_datasets: vec![hot.clone()],
        ..Config::default()
    };
    let mut deployment = aws::deployment(config).await;
    deployment.hot = Some(Arc::new(PostgresSource::new(DsnSource::SecretsManager {
        client: secrets,
        secret_id,
    })));
    let p = Pipeline::with_deployment(deployment);

    let planned = p
        .plan(&json!({"command": "plan", "dataset": "tx", "partition_key": "0-1000"}))
        .await;
    let tasks = p.take_tasks().await;
    assert_eq!(tasks.len(), 1, "{planned}");
    assert!(matches!(
        tasks[0].kind,
        compaction::model::task::TaskKind::ExportRange(_)
    ));
    let merged = p.merge(&tasks[0], true).await;
    assert_eq!(merged["rows"], json!(1000), "{merged}");
    let committed = p.commit(&tasks[0]).await;
    assert_eq!(
        committed["results"][0]["committed"],
        json!(true),
        "{committed}"
    );
    let again = p.commit(&tasks[0]).await;
    assert_eq!(
        again["results"][0]["already_committed"],
        json!(true),
        "{again}"
    );

    let cold = tempfile::tempdir().unwrap();
    let keys = aws::mirror(
        p.store(),
        &hot.range_dir(compaction::model::hot::range::KeyRange {
            start: 0,
            end: 1000,
        }),
        cold.path(),
    )
    .await;
    assert_eq!(
        keys.iter().filter(|k| k.ends_with(".parquet")).count(),
        3,
        "{keys:?}"
    );
    let rows = e2e_tests::row_multiset(&parquet_files(cold.path()), &["block_number", "amount"]);
    assert_eq!(rows.len(), 1000);
    let left = |sql: String| {
        let pg = &pg;
        async move { e2e_tests::pg::count(pg, &sql).await }
    };
    assert_eq!(
        left(format!(
            "SELECT count(*) FROM {schema}.tx WHERE chain_id = 1 AND block_number < 1000"
        ))
        .await,
        0
    );
    assert_eq!(
        left(format!("SELECT count(*) FROM {schema}.tx")).await,
        3000 - 1000
    );
    let record = p
        .deployment
        .state
        .get(&PartitionId::new("tx", "0-1000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, PartitionStatus::Compacted);
    assert_eq!(
        record.cold.map(|c| c.delete),
        Some(DeleteState::Moved {
            deleted: 1000,
            partition: None
        })
    );

    // The schedule finds no other final range ([1000,2000) is not whole yet) and no repeat.
    let swept = p.plan(&aws::scheduled_event()).await;
    assert!(p.take_tasks().await.is_empty(), "{swept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_layout_compacts_through_the_functions() {
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.partition_template = "chain={chain}/range={start}-{end}".into();
    ds.coldness = Some(compaction::model::partition::ColdRule::Range);
    let p = Pipeline::new(config).await;
    let mut keys = Vec::new();
    for range in ["0-100", "100-200", "200-300"] {
        keys.extend(put_small_files(&p, &format!("events/chain=1/range={range}/"), 4).await);
    }
    let before = tempfile::tempdir().unwrap();
    aws::mirror(p.store(), "events/", before.path()).await;

    // An S3 event is routed to its range partition; the schedule plans the ranges with a
    // later range after them, and the last range waits.
    p.plan(&aws::s3_put_event(&p.deployment.bucket, &keys[0], 1))
        .await;
    let record = p
        .deployment
        .state
        .get(&PartitionId::new("events", "chain=1/range=0-100"))
        .await
        .unwrap()
        .expect("the event was counted on its range");
    assert!(record.counters.files_seen >= 1);
    p.take_tasks().await;
    p.plan(&aws::scheduled_event()).await;
    let tasks = p.take_tasks().await;
    let planned: std::collections::BTreeSet<String> = tasks
        .iter()
        .map(|t| t.partition.partition.clone())
        .collect();
    assert_eq!(
        planned,
        ["chain=1/range=0-100", "chain=1/range=100-200"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    for task in &tasks {
        p.merge_and_commit(task, false).await;
    }
    let after = tempfile::tempdir().unwrap();
    let live = aws::mirror(p.store(), "events/", after.path()).await;
    assert_eq!(
        rows_under(before.path()),
        rows_under(after.path()),
        "every row kept"
    );
    let in_range = |range: &str| {
        live.iter()
            .filter(|k| k.contains(&format!("/range={range}/")) && k.ends_with(".parquet"))
            .count()
    };
    assert_eq!(
        (in_range("0-100"), in_range("100-200"), in_range("200-300")),
        (1, 1, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_folder_compacts_through_the_functions() {
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.partition_template = String::new();
    ds.grace = compaction::support::units::HumanDuration(std::time::Duration::ZERO);
    let p = Pipeline::new(config).await;
    let keys = put_small_files(&p, "events/", 5).await;
    let before = tempfile::tempdir().unwrap();
    aws::mirror(p.store(), "events/", before.path()).await;

    // An S3 event is counted on the one partition (the prefix itself).
    p.plan(&aws::s3_put_event(&p.deployment.bucket, &keys[0], 1))
        .await;
    let record = p
        .deployment
        .state
        .get(&PartitionId::new("events", ""))
        .await
        .unwrap()
        .expect("the event was counted on the prefix's partition");
    assert!(record.counters.files_seen >= 1);
    p.take_tasks().await;
    p.plan(&aws::scheduled_event()).await;
    let tasks = p.take_tasks().await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].partition.partition, "");
    p.merge_and_commit(&tasks[0], true).await;
    let after = tempfile::tempdir().unwrap();
    let live = aws::mirror(p.store(), "events/", after.path()).await;
    assert_eq!(
        rows_under(before.path()),
        rows_under(after.path()),
        "every row kept"
    );
    let data: Vec<&String> = live.iter().filter(|k| k.ends_with(".parquet")).collect();
    assert_eq!(data.len(), 1, "{live:?}");
    assert!(
        list_all(p.store(), "_compactor/", None)
            .await
            .unwrap()
            .objects
            .is_empty(),
        "staging is empty"
    );
}

/// The planner's `report` event writes the health report (JSON and HTML) under
/// `report_prefix` on S3; a bad one is refused and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_event_writes_the_health_report_to_s3() {
    use compaction::model::report::LakeReport;
    let p = Pipeline::new(small_config()).await;
    sample(&p, 2, 4).await;
    let response = p.plan(&json!({"report": {"since": "2d"}})).await;
    let written: Vec<String> = response["report"]["written"]
        .as_array()
        .expect("written keys")
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(written.contains(&"_compactor/reports/latest.json".to_string()));
    assert!(written.contains(&"_compactor/reports/latest.html".to_string()));
    assert_eq!(written.len(), 4, "{written:?}");
    let (json_body, _) = p
        .store()
        .get("_compactor/reports/latest.json")
        .await
        .unwrap();
    let report: LakeReport = serde_json::from_slice(&json_body).unwrap();
    assert_eq!(report.datasets[0].dataset, "events");
    assert_eq!(report.totals.files, 8, "{:?}", report.totals);
    assert_eq!(report.totals.small_files, 8);
    let (html, _) = p
        .store()
        .get("_compactor/reports/latest.html")
        .await
        .unwrap();
    let html = String::from_utf8_lossy(&html);
    assert_eq!(
        html.matches("data-partition=").count(),
        report.datasets[0].partitions.len()
    );

    let before = p.keys().await;
    let refused = p
        .planner
        .handle(
            &json!({"report": {"since": "yesterday-ish"}}),
            "req-2",
            far_deadline(),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("report since"), "{refused}");
    assert_eq!(p.keys().await, before, "a refused report writes nothing");
}
