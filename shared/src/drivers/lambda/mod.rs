//! The three Lambda functions as library services: each `functions/*/src/main.rs` builds one
//! ([`planner`], [`merger`], [`committer`]) from the environment and hands it every event. This
//! module holds what they share: logging, the environment wiring ([`Deployment`]: the
//! configuration, the bucket and the stores), deadlines. Configuration comes from environment
//! variables (see docs/deploy.md), the same TOML format the CLI reads.

pub mod committer;
pub mod merger;
pub mod metrics;
pub mod planner;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::ports::hot::postgres::PostgresSource;
use crate::ports::hot::HotSource;
use crate::ports::state::{DynamoState, StateStore};
use crate::ports::store::{parse_s3_url, ObjectStore, S3Store};
use crate::support::clock::now_ms;
use crate::support::env::env_var;

/// Time kept free at the end of an invocation to report and clean up.
const SAFETY_MARGIN: Duration = Duration::from_secs(30);

/// Runs a function's main body: tunes the allocator before any thread starts (see
/// [`limit_retention`](crate::support::alloc::limit_retention)), then runs `body` on a
/// multi-threaded runtime.
pub fn run_function<F: std::future::Future>(body: F) -> std::io::Result<F::Output> {
    crate::support::alloc::limit_retention();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(body))
}

/// Structured JSON logs on stdout (CloudWatch Logs), filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .with_current_span(false)
        .try_init();
}

fn required(name: &str, what: &str) -> Result<String> {
    env_var(name).ok_or_else(|| Error::config(name, format!("is not set; set it to {what}")))
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match env_var(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| Error::config(name, format!("{raw:?} is not valid: {e}"))),
    }
}

/// The instant of a Lambda deadline given in epoch milliseconds. A value that is no wall-clock
/// time at all (local emulators send a fixed `600000`) means "unknown": Lambda's 15-minute
/// maximum is assumed.
pub fn deadline_from_epoch_ms(deadline_ms: u64) -> Instant {
    const LAMBDA_MAX: Duration = Duration::from_secs(15 * 60);
    let left_ms = deadline_ms as i64 - now_ms();
    if left_ms < -(24 * 3600 * 1000) {
        return Instant::now() + LAMBDA_MAX;
    }
    Instant::now() + Duration::from_millis(left_ms.max(0) as u64)
}

/// What every function shares: the config, the bucket and the two stores.
#[derive(Clone)]
pub struct Deployment {
    pub config: Config,
    pub bucket: String,
    pub store: Arc<dyn ObjectStore>,
    pub state: Arc<dyn StateStore>,
    pub sdk: aws_config::SdkConfig,
    /// The Postgres of the hot datasets, when any is configured.
    pub hot: Option<Arc<dyn HotSource>>,
}

impl Deployment {
    /// From `COMPACTOR_BUCKET`, `COMPACTOR_TABLE` and `COMPACTOR_CONFIG_URI` (an `s3://` URL
    /// or a path of a TOML file) or else `COMPACTOR_CONFIG` (the TOML text).
    pub async fn from_env() -> Result<Self> {
        let sdk = crate::ports::aws::sdk_config().await;
        let bucket = required("COMPACTOR_BUCKET", "the name of the data bucket")?;
        let table = required("COMPACTOR_TABLE", "the name of the DynamoDB state table")?;
        let client = crate::ports::aws::s3_client(&sdk);
        let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(client.clone(), &bucket, "")?);
        let config = match env_var("COMPACTOR_CONFIG_URI") {
            Some(uri) if uri.starts_with("s3://") => {
                let (config_bucket, key) = parse_s3_url(&uri)?;
                let text = S3Store::new(client, config_bucket, "")?.get(&key).await?.0;
                let text = String::from_utf8(text.to_vec())
                    .map_err(|e| Error::config("COMPACTOR_CONFIG_URI", e.to_string()))?;
                Config::from_toml(&text, Path::new(&uri))?
            }
            Some(path) => Config::load(Path::new(&path))?,
            None => Config::from_toml(
                &required(
                    "COMPACTOR_CONFIG",
                    "the TOML configuration (or set COMPACTOR_CONFIG_URI)",
                )?,
                Path::new("$COMPACTOR_CONFIG"),
            )?,
        };
        config.validate()?;
        let state: Arc<dyn StateStore> =
            Arc::new(DynamoState::new(aws_sdk_dynamodb::Client::new(&sdk), table));
        let hot: Option<Arc<dyn HotSource>> = (!config.hot_datasets.is_empty())
            .then(|| Arc::new(PostgresSource::from_env(Some(&sdk))) as Arc<dyn HotSource>);
        Ok(Self {
            config,
            bucket,
            store,
            state,
            sdk,
            hot,
        })
    }

    fn check_bucket(&self, bucket: &str) -> Result<()> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(Error::BadEvent(format!(
                "object in bucket {bucket:?}, but this deployment compacts {:?}",
                self.bucket
            )))
        }
    }
}

/// Bytes per second a merger sustains, for sizing tasks to the time limit
/// and for the plan's estimates (`COMPACTOR_MERGE_THROUGHPUT`, the configuration's conservative
/// `merge_throughput` default otherwise).
fn merge_throughput() -> Result<u64> {
    Ok(parsed(
        "COMPACTOR_MERGE_THROUGHPUT",
        crate::model::config::DEFAULT_MERGE_THROUGHPUT,
    )?
    .bytes()
    .max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_that_is_no_wall_clock_time_means_the_lambda_maximum() {
        let left = deadline_from_epoch_ms(600_000).saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(14 * 60), "{left:?}");
        let soon = deadline_from_epoch_ms((now_ms() + 5_000) as u64);
        assert!(soon.saturating_duration_since(Instant::now()) <= Duration::from_secs(5));
    }
}
