//! The S3 and DynamoDB adapters against a real endpoint (moto's server): the same contract
//! suites the embedded adapters pass, plus what only S3 has (multipart uploads, big batches).

use std::sync::Arc;

use bytes::Bytes;
use compaction::ports::state::StateStore;
use compaction::ports::store::{DeleteRequest, ObjectStore, PutMode, S3Store};
use e2e_tests::aws;

#[tokio::test]
async fn dynamodb_state_keeps_the_state_contract() {
    let state = aws::dynamo_state().await;
    compaction::ports::state::contract::run_all(state as Arc<dyn StateStore>, "contract").await;
}

#[tokio::test]
async fn s3_store_keeps_the_object_store_contract() {
    let (client, bucket) = aws::bucket().await;
    let counter = std::sync::atomic::AtomicUsize::new(0);
    compaction::ports::store::contract::run_all(|| {
        let root = format!(
            "run-{}",
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let store = S3Store::new(client.clone(), bucket.clone(), &root)
            .unwrap()
            .with_page_size(3);
        async move { Arc::new(store) as Arc<dyn ObjectStore> }
    })
    .await;
}

#[tokio::test]
async fn aborted_and_dropped_uploads_leave_no_parts() {
    let (client, store) = aws::s3_store().await;
    let part = Bytes::from(vec![1u8; 6 << 20]);
    let mut aborted = store.put_stream("out/aborted.parquet").await.unwrap();
    aborted.write(part.clone()).await.unwrap();
    aborted.abort().await.unwrap();
    {
        let mut dropped = store.put_stream("out/dropped.parquet").await.unwrap();
        dropped.write(part.clone()).await.unwrap();
    }
    // The dropped sink aborts in the background.
    let mut open = usize::MAX;
    for _ in 0..50 {
        let uploads = client
            .list_multipart_uploads()
            .bucket(store.bucket())
            .send()
            .await
            .unwrap();
        open = uploads.uploads().len();
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0, "multipart uploads left open");
    assert!(store.head("out/aborted.parquet").await.unwrap().is_none());
    assert!(store.head("out/dropped.parquet").await.unwrap().is_none());
}

#[tokio::test]
async fn batch_delete_splits_into_requests_of_1000() {
    let (_client, store) = aws::s3_store().await;
    let store = Arc::new(store);
    let mut requests = Vec::new();
    // Uploads in waves of 32: moto's server refuses connections beyond its backlog.
    for wave in (0..2100).collect::<Vec<_>>().chunks(32) {
        let mut handles = Vec::new();
        for i in wave {
            let (store, key) = (Arc::clone(&store), format!("many/{i:05}"));
            handles.push(tokio::spawn(async move {
                store
                    .put(&key, Bytes::from("x"), PutMode::Overwrite)
                    .await
                    .unwrap()
            }));
        }
        for h in handles {
            let meta = h.await.unwrap();
            requests.push(DeleteRequest {
                key: meta.key,
                version: Some(meta.version),
            });
        }
    }
    requests.push(DeleteRequest {
        key: "many/never-existed".into(),
        version: None,
    });
    let failures = store.delete_many(&requests).await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    let left = compaction::ports::store::list_all(store.as_ref(), "many/", None)
        .await
        .unwrap();
    assert!(left.objects.is_empty());
}

/// The DSN of a hot dataset read from an SSM SecureString (and, for Secrets Manager, see
/// aws_pipeline): the source connects with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_dsn_is_read_from_an_ssm_secure_string() {
    use compaction::model::hot::config::HotDatasetConfig;
    use compaction::ports::hot::postgres::{DsnSource, PostgresSource};
    use compaction::ports::hot::HotSource;
    let pg = e2e_tests::pg::connect().await;
    let schema = e2e_tests::pg::schema(&pg).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {schema}.t (chain_id int8, block_number int8);
         INSERT INTO {schema}.t SELECT 7, g FROM generate_series(10, 42) g;"
    ))
    .await
    .unwrap();
    let ssm = aws_sdk_ssm::Client::new(&aws::sdk_config().await);
    let name = format!("/compactor/{}", aws::unique_name("dsn"));
    ssm.put_parameter()
        .name(&name)
        .value(e2e_tests::pg::dsn())
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("putting the DSN into moto's SSM");
    let source = PostgresSource::new(DsnSource::Ssm { client: ssm, name });
    let hot = HotDatasetConfig {
        chain_id: Some(7),
        ..HotDatasetConfig::new("t", &format!("{schema}.t"))
    };
    assert_eq!(source.tip(&hot).await.unwrap(), Some(42));
    assert_eq!(
        source.range_counts(&hot, 0, 20_000).await.unwrap(),
        vec![(0, 33)]
    );
    let missing = PostgresSource::new(DsnSource::Ssm {
        client: aws_sdk_ssm::Client::new(&aws::sdk_config().await),
        name: "/compactor/no-such-parameter".into(),
    });
    let e = missing.tip(&hot).await.unwrap_err().to_string();
    assert!(e.contains("/compactor/no-such-parameter"), "{e}");
}
