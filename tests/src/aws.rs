//! A real S3 + DynamoDB endpoint for the tests: moto's server. `scripts/test` starts one for the
//! whole suite and exports `COMPACTOR_TEST_AWS_ENDPOINT`; without it, the first test that needs
//! the endpoint starts a private one (stopped when the test process exits). A missing moto is a
//! loud failure, never a skip.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use compaction::ports::state::DynamoState;
use compaction::ports::store::S3Store;

pub const ENDPOINT_VAR: &str = "COMPACTOR_TEST_AWS_ENDPOINT";
pub const REGION: &str = "us-east-1";

/// The endpoint URL, starting moto's server if the suite did not.
pub fn endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| match std::env::var(ENDPOINT_VAR) {
            Ok(url) if !url.is_empty() => url,
            _ => start_moto(),
        })
        .clone()
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python that has moto installed: `MOTO_PYTHON`, or the suite's venv.
fn moto_python() -> PathBuf {
    if let Ok(path) = std::env::var("MOTO_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = workspace_root().join(".venv-aws/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "moto's server is required for the AWS tests and no Python with moto was found at {} \
         (nor MOTO_PYTHON, nor {ENDPOINT_VAR}). Run scripts/test, which installs it, or: \
         python3 -m venv .venv-aws && .venv-aws/bin/pip install 'moto[server]'",
        venv.display()
    )
}

fn start_moto() -> String {
    let python = moto_python();
    let launcher = workspace_root().join("tests/moto_server.py");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    // The shell stops the server when this test process exits (it polls our pid).
    let script = format!(
        "{} {} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; while kill -0 {} 2>/dev/null; do sleep 1; done; kill $m",
        python.display(),
        launcher.display(),
        std::process::id()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", launcher.display()));
    // Reaped when the shell exits (after this process is gone, in practice).
    std::thread::spawn(move || child.wait());
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto's server ({} {}) did not listen on port {port} within 30 s",
            python.display(),
            launcher.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("http://127.0.0.1:{port}")
}

/// SDK configuration for the endpoint, with moto's dummy credentials and few retries.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}

/// A name no other test (or earlier run against the same server) uses.
pub fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{kind}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new, empty bucket.
pub async fn bucket() -> (aws_sdk_s3::Client, String) {
    let client = compaction::ports::aws::s3_client(&sdk_config().await);
    let name = unique_name("bkt");
    client
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating bucket {name} at {}: {e:?}", endpoint()));
    (client, name)
}

/// An S3 store over a new bucket.
pub async fn s3_store() -> (aws_sdk_s3::Client, S3Store) {
    let (client, bucket) = bucket().await;
    let store = S3Store::new(client.clone(), bucket, "").expect("valid bucket");
    (client, store)
}

/// A DynamoDB state store over a new table with the documented design.
pub async fn dynamo_state() -> Arc<DynamoState> {
    let client = aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let state = DynamoState::new(client, unique_name("tbl"));
    state
        .create_table()
        .await
        .expect("creating the state table");
    Arc::new(state)
}

/// A deployment (what the functions build from their environment) over a new bucket and table.
pub async fn deployment(
    config: compaction::model::config::Config,
) -> compaction::drivers::lambda::Deployment {
    let sdk = sdk_config().await;
    let (client, bucket) = bucket().await;
    let state = dynamo_state().await;
    compaction::drivers::lambda::Deployment {
        config,
        store: Arc::new(S3Store::new(client, &bucket, "").expect("valid bucket")),
        bucket,
        state,
        sdk,
        hot: None,
    }
}

/// Copies every object under `prefix` into `dir` (same relative keys), so the Parquet helpers
/// for local files can read what is in the bucket.
pub async fn mirror(
    store: &dyn compaction::ports::store::ObjectStore,
    prefix: &str,
    dir: &std::path::Path,
) -> Vec<String> {
    let listing = compaction::ports::store::list_all(store, prefix, None)
        .await
        .expect("listing");
    let mut keys = Vec::new();
    for object in listing.objects {
        let (data, _) = store.get(&object.key).await.expect("download");
        let path = dir.join(&object.key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &data).expect("write");
        keys.push(object.key);
    }
    keys
}

/// An S3 notification (as S3 sends it: the key URL-encoded) for one created object.
pub fn s3_put_event(bucket: &str, key: &str, size: u64) -> serde_json::Value {
    let encoded: String = url_encode(key);
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": "2024-05-01T13:42:07.123Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "R", "x-amz-id-2": "I"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "compactor",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "EXAMPLE"},
                          "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": encoded, "size": size, "eTag": "0123456789abcdef",
                          "sequencer": "0A1B2C3D4E5F678901"}}
    }]})
}

fn url_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The EventBridge scheduled event of `events/planner-scheduled.json`, as the schedule sends it.
pub fn scheduled_event() -> serde_json::Value {
    let path = workspace_root().join("events/planner-scheduled.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("events/planner-scheduled.json"))
        .expect("a JSON event")
}
