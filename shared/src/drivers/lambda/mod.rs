//! The three Lambda functions as library services: each `functions/*/src/main.rs` builds one
//! from the environment and hands it every event. Configuration comes from environment
//! variables (see docs/deploy.md), the same TOML format the CLI reads.

pub mod metrics;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::drivers::events::{
    parse_committer_event, parse_merger_event, parse_planner_event, route_key, CommitterEvent,
    KeyRoute, MergerEvent, PlannerCommand, PlannerEvent,
};
use crate::drivers::lambda::metrics::Metrics;
use crate::error::{Error, Result};
use crate::model::config::{AnyDataset, Config};
use crate::model::hot::cold::DeleteState;
use crate::model::partition::{coldness, Coldness};
use crate::model::state::{Counters, PartitionId};
use crate::model::task::{Task, TaskKind};
use crate::ports::dispatch::{Dispatcher, LambdaDispatcher};
use crate::ports::hot::postgres::PostgresSource;
use crate::ports::hot::HotSource;
use crate::ports::state::{DynamoState, StateStore};
use crate::ports::store::read_json;
use crate::ports::store::{parse_s3_url, ObjectStore, S3Store};
use crate::services::committer::{CommitOutcome, Committer};
use crate::services::merger::{MergeOutcome, Merger};
use crate::services::planner::{
    DatasetPlan, PartitionOutcome, PlanOptions, Planner, PlannerSettings,
};
use crate::support::clock::now_ms;
use crate::support::env::env_var;
use crate::support::progress::NoProgress;
use crate::support::units::ByteSize;

/// Time kept free at the end of an invocation to report and clean up.
const SAFETY_MARGIN: Duration = Duration::from_secs(30);
const DEFAULT_THROUGHPUT: u64 = 20 * 1024 * 1024;

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
/// (`COMPACTOR_MERGE_THROUGHPUT`, conservative by default).
fn merge_throughput() -> Result<u64> {
    Ok(
        parsed("COMPACTOR_MERGE_THROUGHPUT", ByteSize(DEFAULT_THROUGHPUT))?
            .bytes()
            .max(1),
    )
}

pub struct PlannerFunction {
    deployment: Deployment,
    dispatcher: Arc<dyn Dispatcher>,
}

impl PlannerFunction {
    /// The planner with a Lambda dispatcher to `COMPACTOR_MERGER_FUNCTION`. When
    /// `COMPACTOR_MERGER_TIMEOUT` is set, each dataset's `max_task_bytes` is capped so that a
    /// task fits the merger's time limit at the assumed throughput.
    pub async fn from_env() -> Result<Self> {
        let mut deployment = Deployment::from_env().await?;
        let function = required("COMPACTOR_MERGER_FUNCTION", "the merger function's name")?;
        let dispatcher = LambdaDispatcher::new(
            aws_sdk_lambda::Client::new(&deployment.sdk),
            function,
            parsed("COMPACTOR_INLINE_TASK_LIMIT", 200_000usize)?,
            parsed("COMPACTOR_DISPATCH_CONCURRENCY", 8usize)?,
        );
        if let Some(timeout) = env_var("COMPACTOR_MERGER_TIMEOUT") {
            let seconds: u64 = timeout.parse().map_err(|e| {
                Error::config("COMPACTOR_MERGER_TIMEOUT", format!("{timeout:?}: {e}"))
            })?;
            cap_task_size(&mut deployment.config, seconds, merge_throughput()?);
        }
        Ok(Self::new(deployment, Arc::new(dispatcher)))
    }

    pub fn new(deployment: Deployment, dispatcher: Arc<dyn Dispatcher>) -> Self {
        Self {
            deployment,
            dispatcher,
        }
    }

    fn planner(&self, request_id: &str) -> Planner {
        let config = &self.deployment.config;
        Planner::new(
            Arc::clone(&self.deployment.store),
            Arc::clone(&self.deployment.state),
            Arc::clone(&self.dispatcher),
            PlannerSettings {
                owner: format!("lambda:{request_id}"),
                lease_ttl_ms: config.lease_ttl.0.as_millis() as i64,
                staging_prefix: config.staging_prefix.clone(),
                memory_budget: config.memory_budget.bytes(),
            },
        )
        .with_hot_source(self.deployment.hot.clone())
    }

    pub async fn handle(
        &self,
        event: &Value,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Value> {
        let started = Instant::now();
        let mut metrics = Metrics::new("planner");
        let planner = self.planner(request_id);
        let stop_at = deadline.checked_sub(SAFETY_MARGIN).unwrap_or(deadline);
        let result = match parse_planner_event(event)? {
            PlannerEvent::Ignored(why) => {
                tracing::info!(why, "event needs no work");
                Ok(json!({"ignored": why}))
            }
            PlannerEvent::ObjectsCreated(objects) => {
                self.objects_created(&planner, &objects, &mut metrics).await
            }
            PlannerEvent::Scheduled => {
                self.sweep(&planner, None, false, false, stop_at, &mut metrics)
                    .await
            }
            PlannerEvent::Command(command) => {
                self.command(&planner, command, stop_at, &mut metrics).await
            }
        };
        let flushed = self.dispatcher.flush().await;
        metrics.millis("Duration", started.elapsed().as_millis());
        metrics.emit();
        let value = result?;
        flushed?;
        Ok(value)
    }

    async fn objects_created(
        &self,
        planner: &Planner,
        objects: &[crate::drivers::events::CreatedObject],
        metrics: &mut Metrics,
    ) -> Result<Value> {
        let config = &self.deployment.config;
        // Everything is checked before anything changes: a bad event changes nothing.
        let mut routes = Vec::with_capacity(objects.len());
        for object in objects {
            self.deployment.check_bucket(&object.bucket)?;
            match route_key(config, &object.key) {
                KeyRoute::Foreign(why) => {
                    return Err(Error::BadEvent(format!(
                        "{:?} starts no work: {why}. Narrow the trigger's prefix/suffix filter \
                         to the configured datasets",
                        object.key
                    )))
                }
                route => routes.push((object, route)),
            }
        }
        let now = chrono::Utc::now();
        let mut ignored = Vec::new();
        let mut cold: BTreeSet<(String, String)> = BTreeSet::new();
        for (object, route) in routes {
            let KeyRoute::Partition { dataset, partition } = route else {
                if let KeyRoute::Own(what) = route {
                    ignored.push(json!({"key": object.key, "why": what}));
                }
                continue;
            };
            let ds = config.dataset(&dataset)?;
            let values = ds.template()?.parse_partition(&partition)?;
            let late =
                coldness(&values, ds.effective_granularity()?, ds.grace.0, now) == Coldness::Cold;
            let delta = Counters {
                files_seen: 1,
                bytes_seen: object.size,
                late_files: u64::from(late),
                ..Counters::default()
            };
            let id = PartitionId::new(&dataset, &partition);
            self.deployment
                .state
                .add_counters(&id, &delta, now.timestamp_millis())
                .await?;
            metrics.count("FilesSeen", 1);
            if late {
                tracing::warn!(%id, key = object.key, "late file in a cold partition; it will be compacted again");
                metrics.count("LateFiles", 1);
                cold.insert((dataset, partition));
            }
        }
        let mut plans = Vec::new();
        for (dataset, partition) in cold {
            let ds = config.dataset(&dataset)?;
            let options = PlanOptions {
                only: Some(vec![partition]),
                recover: false,
                ..PlanOptions::sweep(now, false)
            };
            plans.push(planner.plan_dataset(ds, &options).await?);
        }
        record_plans(&plans, metrics);
        Ok(json!({"ignored": ignored, "plans": plans_json(&plans)}))
    }

    async fn command(
        &self,
        planner: &Planner,
        command: PlannerCommand,
        stop_at: Instant,
        metrics: &mut Metrics,
    ) -> Result<Value> {
        let now = chrono::Utc::now();
        match command {
            PlannerCommand::Sweep {
                dataset,
                dry_run,
                force,
            } => {
                self.sweep(
                    planner,
                    dataset.as_deref(),
                    dry_run,
                    force,
                    stop_at,
                    metrics,
                )
                .await
            }
            PlannerCommand::Plan {
                dataset,
                partition,
                dry_run,
                force,
            } => {
                let options = PlanOptions {
                    only: Some(vec![partition.clone()]),
                    force,
                    recover: false,
                    ..PlanOptions::sweep(now, dry_run)
                };
                let plan = match self.any_dataset(&dataset)? {
                    AnyDataset::Files(ds) => {
                        ds.template()?.parse_partition(&partition)?;
                        planner.plan_dataset(ds, &options).await?
                    }
                    AnyDataset::Hot(hot) => {
                        hot.range_of_key(&partition)?;
                        planner.plan_hot_dataset(hot, &options).await?
                    }
                };
                let plans = vec![plan];
                record_plans(&plans, metrics);
                Ok(json!({"plans": plans_json(&plans)}))
            }
            PlannerCommand::Backfill {
                dataset,
                date,
                from,
                to,
                dry_run,
                force,
            } => {
                let AnyDataset::Files(ds) = self.any_dataset(&dataset)? else {
                    return Err(Error::BadEvent(format!(
                        "{dataset:?} is a hot dataset: backfills are for file datasets; export a \
                         range with {{\"command\": \"plan\", \"dataset\": \"{dataset}\", \"partition_key\": \"START-END\"}}"
                    )));
                };
                let window = backfill_window(date.as_deref(), from.as_deref(), to.as_deref())?;
                let options = PlanOptions {
                    window: Some(window),
                    force,
                    deadline: Some(stop_at),
                    ..PlanOptions::sweep(now, dry_run)
                };
                let plans = vec![planner.plan_dataset(ds, &options).await?];
                record_plans(&plans, metrics);
                Ok(json!({"plans": plans_json(&plans)}))
            }
        }
    }

    /// A dataset named by an event: unknown names are the event's fault.
    fn any_dataset(&self, name: &str) -> Result<AnyDataset<'_>> {
        self.deployment
            .config
            .find(name)
            .map_err(|e| Error::BadEvent(e.to_string()))
    }

    /// Walks each dataset (or one), resuming from the saved position and saving a new one when
    /// the invocation runs out of time.
    async fn sweep(
        &self,
        planner: &Planner,
        only: Option<&str>,
        dry_run: bool,
        force: bool,
        stop_at: Instant,
        metrics: &mut Metrics,
    ) -> Result<Value> {
        let config = &self.deployment.config;
        let (datasets, hot_datasets): (Vec<_>, Vec<_>) = match only {
            Some(name) => match self.any_dataset(name)? {
                AnyDataset::Files(ds) => (vec![ds], vec![]),
                AnyDataset::Hot(hot) => (vec![], vec![hot]),
            },
            None => (
                config.datasets.iter().collect(),
                config.hot_datasets.iter().collect(),
            ),
        };
        let state = &self.deployment.state;
        let mut plans = Vec::new();
        for ds in datasets {
            if Instant::now() >= stop_at {
                break;
            }
            let after = state.sweep_cursor(&ds.name).await?;
            if let Some(after) = &after {
                tracing::info!(dataset = ds.name, after, "resuming an interrupted sweep");
            }
            let options = PlanOptions {
                after,
                force,
                deadline: Some(stop_at),
                ..PlanOptions::sweep(chrono::Utc::now(), dry_run)
            };
            let plan = planner.plan_dataset(ds, &options).await?;
            if !dry_run {
                state
                    .set_sweep_cursor(&ds.name, plan.resume_after.as_deref())
                    .await?;
            }
            if let Some(at) = &plan.resume_after {
                tracing::warn!(
                    dataset = ds.name,
                    at,
                    "sweep stopped at the time limit; the next one resumes here"
                );
            }
            plans.push(plan);
        }
        for hot in hot_datasets {
            if Instant::now() >= stop_at {
                break;
            }
            let options = PlanOptions {
                force,
                deadline: Some(stop_at),
                ..PlanOptions::sweep(chrono::Utc::now(), dry_run)
            };
            plans.push(planner.plan_hot_dataset(hot, &options).await?);
        }
        record_plans(&plans, metrics);
        Ok(json!({"plans": plans_json(&plans)}))
    }
}

/// Caps `max_task_bytes` so a task merges within the merger's time limit.
pub fn cap_task_size(config: &mut Config, merger_timeout_secs: u64, throughput: u64) {
    let usable = merger_timeout_secs.saturating_sub(SAFETY_MARGIN.as_secs() * 2);
    let cap = (usable * throughput).max(1);
    for ds in &mut config.datasets {
        if ds.max_task_bytes.bytes() > cap {
            tracing::info!(
                dataset = ds.name,
                cap,
                "max_task_bytes capped to fit the merger's time limit"
            );
            ds.max_task_bytes = ByteSize(cap);
        }
    }
}

/// `[start, end)` of a backfill: one date, or `from`..=`to` (dates `YYYY-MM-DD` or RFC 3339).
pub fn backfill_window(
    date: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let parse = |field: &str, raw: &str, end: bool| -> Result<chrono::DateTime<chrono::Utc>> {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
            return Ok(t.with_timezone(&chrono::Utc));
        }
        let day = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|e| {
            Error::BadEvent(format!(
                "backfill {field} {raw:?}: {e}; write YYYY-MM-DD or an RFC 3339 time"
            ))
        })?;
        let day = if end {
            day.succ_opt().unwrap_or(day)
        } else {
            day
        };
        Ok(day.and_time(chrono::NaiveTime::MIN).and_utc())
    };
    let (start, end) = match (date, from, to) {
        (Some(d), None, None) => (parse("date", d, false)?, parse("date", d, true)?),
        (None, Some(f), Some(t)) => (parse("from", f, false)?, parse("to", t, true)?),
        _ => {
            return Err(Error::BadEvent(
                "backfill needs either \"date\" or both \"from\" and \"to\"".into(),
            ))
        }
    };
    if start >= end {
        return Err(Error::BadEvent(format!(
            "backfill range is empty: {start} is not before {end}"
        )));
    }
    Ok((start, end))
}

fn record_plans(plans: &[DatasetPlan], metrics: &mut Metrics) {
    for plan in plans.iter().filter(|p| !p.dry_run) {
        for p in &plan.partitions {
            if let Some(anomaly) = &p.anomaly {
                metrics.count("StrandedRowsFound", 1);
                tracing::warn!(
                    anomaly = "stranded_rows",
                    dataset = plan.dataset,
                    partition = p.partition,
                    detail = anomaly,
                    "rows found in a range already moved"
                );
            }
            match &p.outcome {
                PartitionOutcome::Planned { tasks } => {
                    metrics.count("TasksDispatched", tasks.len() as u64);
                }
                PartitionOutcome::Failed(error) => {
                    metrics.count("PartitionsFailed", 1);
                    tracing::error!(
                        dataset = plan.dataset,
                        partition = p.partition,
                        error,
                        "planning the partition failed"
                    );
                }
                PartitionOutcome::BackingOff { .. } => {
                    metrics.count("PartitionsBackingOff", 1);
                }
                _ => {
                    metrics.count("PartitionsSkipped", 1);
                }
            }
        }
    }
}

fn plans_json(plans: &[DatasetPlan]) -> Value {
    Value::Array(
        plans
            .iter()
            .map(|plan| {
                json!({
                    "dataset": plan.dataset,
                    "dry_run": plan.dry_run,
                    "resume_after": plan.resume_after,
                    "recovered": plan.recovery.actions.len(),
                    "recovery_failed": plan.recovery.failed.iter().map(|f| json!({"task_dir": f.task_dir, "error": f.error, "postgres_rows_deleted": f.postgres_rows_deleted})).collect::<Vec<_>>(),
                    "partitions": plan.partitions.iter().map(|p| json!({
                        "partition": p.partition,
                        "files": p.data_files,
                        "bytes": p.data_bytes,
                        "outcome": outcome_json(&p.outcome),
                        "anomaly": p.anomaly,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn outcome_json(outcome: &PartitionOutcome) -> Value {
    match outcome {
        PartitionOutcome::Hot { until } => json!({"hot_until": until.to_rfc3339()}),
        PartitionOutcome::Skipped(reason) => json!({"skipped": reason.to_string()}),
        PartitionOutcome::LeaseHeld {
            owner,
            expires_at_ms,
        } => json!({"lease_held_by": owner, "expires_at_ms": expires_at_ms}),
        PartitionOutcome::Planned { tasks } => json!({"tasks": tasks.iter().map(|t| json!({
            "task_id": t.task_id, "inputs": t.inputs, "input_bytes": t.input_bytes,
        })).collect::<Vec<_>>()}),
        PartitionOutcome::BackingOff {
            failures,
            until_ms,
            error,
        } => json!({"backing_off": {"failures": failures, "until_ms": until_ms, "error": error}}),
        PartitionOutcome::Failed(error) => json!({"failed": error}),
    }
}

pub struct MergerFunction {
    deployment: Deployment,
    scratch: PathBuf,
    memory_budget: u64,
    throughput: u64,
}

/// The merge budget of a function with `memory_mb` of memory: what is left after the runtime
/// and buffers outside the budget (the stated bound is budget + 256 MiB), with 10% headroom.
pub fn budget_for_memory(memory_mb: u64) -> u64 {
    let total = memory_mb * 1024 * 1024;
    (total / 10 * 9)
        .saturating_sub(256 * 1024 * 1024)
        .max(64 * 1024 * 1024)
}

impl MergerFunction {
    pub fn new(
        deployment: Deployment,
        scratch: PathBuf,
        memory_budget: u64,
        throughput: u64,
    ) -> Self {
        Self {
            deployment,
            scratch,
            memory_budget,
            throughput: throughput.max(1),
        }
    }

    /// The budget follows `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`; spills go to `/tmp` (or TMPDIR).
    pub async fn from_env() -> Result<Self> {
        let deployment = Deployment::from_env().await?;
        let memory_budget = match env_var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") {
            Some(mb) => budget_for_memory(mb.parse().map_err(|e| {
                Error::config("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", format!("{mb:?}: {e}"))
            })?),
            None => deployment.config.memory_budget.bytes(),
        };
        Ok(Self {
            scratch: std::env::temp_dir().join("compactor"),
            memory_budget,
            throughput: merge_throughput()?,
            deployment,
        })
    }

    pub async fn handle(&self, event: &Value, deadline: Instant) -> Result<Value> {
        let started = Instant::now();
        let mut task: Task = match parse_merger_event(event)? {
            MergerEvent::Inline(task) => *task,
            MergerEvent::Reference(key) => {
                match read_json(self.deployment.store.as_ref(), &key).await? {
                    Some(task) => task,
                    None => return Err(Error::NotFound { key }),
                }
            }
        };
        task.memory_budget = self.memory_budget;
        let needed = Duration::from_secs(task.input_bytes() / self.throughput);
        let left = deadline.saturating_duration_since(Instant::now());
        if needed + SAFETY_MARGIN > left {
            return Err(Error::Other(format!(
                "task {} of {} ({} bytes) needs about {}s at {}/s but only {}s remain; refused \
                 before starting. Lower max_task_bytes (or set COMPACTOR_MERGER_TIMEOUT on the \
                 planner) so tasks fit the merger's time limit",
                task.task_id,
                task.partition,
                task.input_bytes(),
                needed.as_secs(),
                crate::support::units::human_bytes(self.throughput),
                left.as_secs()
            )));
        }
        std::fs::create_dir_all(&self.scratch)
            .map_err(|e| Error::io(self.scratch.display().to_string(), e))?;
        let merger = Merger::new(
            Arc::clone(&self.deployment.store),
            self.scratch.clone(),
            Arc::new(NoProgress),
        )
        .with_hot_source(self.deployment.hot.clone());
        let task_id = task.task_id.clone();
        let smaller = match task.kind {
            TaskKind::ExportRange(_) => {
                "Lower the hot dataset's range_size (or raise MergerTimeout)"
            }
            TaskKind::MergeFiles => "Lower max_task_bytes",
        };
        let partition = task.partition.clone();
        let (failed_partition, generation) = (task.partition.clone(), task.generation);
        let lease = task.lease();
        let task = Arc::new(task);
        let lease_ttl_ms = self.deployment.config.lease_ttl.0.as_millis() as i64;
        let state = Arc::clone(&self.deployment.state);
        let run = async move {
            match lease {
                // Long merges keep their lease: it must not pass to the next sweep meanwhile.
                Some(lease) => {
                    crate::services::lease::while_holding(
                        state,
                        &partition,
                        lease,
                        lease_ttl_ms,
                        merger.run(task),
                    )
                    .await
                }
                None => merger.run(task).await,
            }
        };
        let finished = tokio::time::timeout(left.saturating_sub(SAFETY_MARGIN / 2), run)
            .await
            .map_err(|_| {
                Error::Other(format!(
                    "task {task_id} stopped before the time limit; its uploads were aborted and \
                     its inputs are untouched. {smaller}"
                ))
            })
            .and_then(|r| r);
        let outcome = match finished {
            Ok(outcome) => outcome,
            Err(e) => {
                // The round failed: its partition is planned anew, and backs off if it keeps
                // failing. A lost lease belongs to a newer round, which is left alone.
                if !matches!(e, Error::LeaseLost { .. }) {
                    let failed = self
                        .deployment
                        .state
                        .finish_round(
                            &failed_partition,
                            generation,
                            crate::model::state::PartitionStatus::Failed,
                            Some(e.to_string()),
                            crate::support::clock::now_ms(),
                        )
                        .await;
                    if let Err(state_err) = failed {
                        tracing::error!(error = %state_err, "could not record the failure in the state store");
                    }
                }
                return Err(e);
            }
        };
        let mut metrics = Metrics::new("merger");
        let response = match &outcome {
            MergeOutcome::Staged(m) | MergeOutcome::AlreadyStaged(m) => {
                let corrupt = m
                    .skipped
                    .iter()
                    .filter(|s| s.kind == crate::model::manifest::SkipKind::Unreadable)
                    .count();
                metrics
                    .count("MergeRuns", 1)
                    .count("FilesMerged", m.inputs.len() as u64)
                    .bytes("BytesIn", m.input_bytes())
                    .bytes("BytesOut", m.output_bytes())
                    .count("CorruptFilesSkipped", corrupt as u64);
                json!({"task_id": task_id, "staged": true, "outputs": m.outputs.len(), "rows": m.rows, "skipped": m.skipped.len()})
            }
            MergeOutcome::Decided(_) => json!({"task_id": task_id, "already_decided": true}),
        };
        metrics.millis("Duration", started.elapsed().as_millis());
        metrics.emit();
        Ok(response)
    }
}

pub struct CommitterFunction {
    deployment: Deployment,
    committer: Committer,
    events: Option<(aws_sdk_eventbridge::Client, String)>,
}

/// The EventBridge source and detail type of the "partition compacted" event.
pub const EVENT_SOURCE: &str = "parquet-compactor";
pub const EVENT_DETAIL_TYPE: &str = "Partition Compacted";

impl CommitterFunction {
    /// `COMPACTOR_EVENT_BUS` (optional) names the bus for "Partition Compacted" events.
    pub async fn from_env() -> Result<Self> {
        let deployment = Deployment::from_env().await?;
        let events = env_var("COMPACTOR_EVENT_BUS")
            .map(|bus| (aws_sdk_eventbridge::Client::new(&deployment.sdk), bus));
        Ok(Self::new(deployment, events))
    }

    pub fn new(
        deployment: Deployment,
        events: Option<(aws_sdk_eventbridge::Client, String)>,
    ) -> Self {
        let committer = Committer::new(
            Arc::clone(&deployment.store),
            Arc::clone(&deployment.state),
            &deployment.config.staging_prefix,
        )
        .with_hot_source(deployment.hot.clone());
        Self {
            deployment,
            committer,
            events,
        }
    }

    pub async fn handle(&self, event: &Value) -> Result<Value> {
        let started = Instant::now();
        let dirs = match parse_committer_event(
            event,
            &self.deployment.config.staging_prefix,
            &self.deployment.bucket,
        )? {
            CommitterEvent::Ignored(why) => return Ok(json!({"ignored": why})),
            CommitterEvent::Tasks(dirs) => dirs,
        };
        let mut metrics = Metrics::new("committer");
        let mut results = Vec::new();
        for dir in dirs {
            let outcome = self.committer.commit(&dir).await?;
            results.push(match &outcome {
                CommitOutcome::Committed(report) => {
                    let corrupt = report
                        .skipped
                        .iter()
                        .filter(|s| s.kind == crate::model::manifest::SkipKind::Unreadable)
                        .count();
                    metrics
                        .count("CompactionRuns", 1)
                        .count("FilesCompacted", report.inputs_deleted as u64)
                        .bytes("BytesIn", report.input_bytes)
                        .bytes("BytesOut", report.output_bytes)
                        .count("CorruptFilesSkipped", corrupt as u64);
                    if let Some(cold) = &report.cold {
                        metrics
                            .count("RangesExported", 1)
                            .count("RowsExported", cold.exported);
                        match &cold.delete {
                            DeleteState::Moved { deleted, .. } => {
                                metrics.count("PostgresRowsDeleted", *deleted);
                            }
                            DeleteState::Flagged {
                                deleted,
                                left,
                                detail,
                            } => {
                                metrics
                                    .count("PostgresRowsDeleted", *deleted)
                                    .count("PostgresRowsLeft", *left)
                                    .count("RangesFlagged", 1);
                                tracing::warn!(
                                    anomaly = "range_flagged",
                                    dataset = report.partition.dataset,
                                    range = report.partition.partition,
                                    deleted,
                                    left,
                                    detail,
                                    "range flagged"
                                );
                            }
                            DeleteState::Kept | DeleteState::Legacy => {}
                        }
                    }
                    self.announce(report).await?;
                    json!({"task_dir": dir, "committed": true, "task_id": report.task_id,
                           "inputs_deleted": report.inputs_deleted, "outputs": report.output_keys,
                           "rows": report.rows, "kept": report.kept.len()})
                }
                CommitOutcome::AlreadyCommitted { task_dir } => {
                    json!({"task_dir": task_dir, "already_committed": true})
                }
                CommitOutcome::NotReady { task_dir } => {
                    json!({"task_dir": task_dir, "not_ready": true})
                }
                CommitOutcome::Refused { task_dir, reason } => {
                    metrics.count("CommitsRefused", 1);
                    tracing::warn!(task_dir, reason, "commit refused");
                    json!({"task_dir": task_dir, "refused": reason})
                }
            });
        }
        metrics.millis("Duration", started.elapsed().as_millis());
        metrics.emit();
        Ok(json!({"results": results}))
    }

    async fn announce(&self, report: &crate::services::committer::CommitReport) -> Result<()> {
        let mut detail = report.event();
        detail["bucket"] = json!(self.deployment.bucket);
        tracing::info!(event = %detail, "{EVENT_DETAIL_TYPE}");
        let Some((client, bus)) = &self.events else {
            return Ok(());
        };
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(bus)
            .source(EVENT_SOURCE)
            .detail_type(EVENT_DETAIL_TYPE)
            .detail(detail.to_string())
            .build();
        let response = client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| {
                Error::Other(format!(
                    "emitting {EVENT_DETAIL_TYPE} to bus {bus}: {}",
                    crate::ports::aws::ErrorInfo::of(&e).message
                ))
            })?;
        if response.failed_entry_count() > 0 {
            return Err(Error::Other(format!(
                "EventBridge refused the {EVENT_DETAIL_TYPE} event on bus {bus}: {:?}",
                response.entries()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_windows_cover_whole_days() {
        let (s, e) = backfill_window(Some("2024-05-01"), None, None).unwrap();
        assert_eq!(s.to_rfc3339(), "2024-05-01T00:00:00+00:00");
        assert_eq!(e.to_rfc3339(), "2024-05-02T00:00:00+00:00");
        let (s, e) = backfill_window(None, Some("2024-05-01"), Some("2024-05-03")).unwrap();
        assert_eq!((e - s).num_days(), 3);
        assert!(backfill_window(None, Some("2024-05-03"), Some("2024-05-01")).is_err());
        assert!(backfill_window(None, None, None).is_err());
        assert!(backfill_window(Some("May 1st"), None, None).is_err());
    }

    #[test]
    fn a_deadline_that_is_no_wall_clock_time_means_the_lambda_maximum() {
        let left = deadline_from_epoch_ms(600_000).saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(14 * 60), "{left:?}");
        let soon = deadline_from_epoch_ms((now_ms() + 5_000) as u64);
        assert!(soon.saturating_duration_since(Instant::now()) <= Duration::from_secs(5));
    }

    #[test]
    fn budget_leaves_room_for_the_runtime() {
        assert_eq!(budget_for_memory(3008) / (1024 * 1024), 2451);
        assert_eq!(budget_for_memory(128), 64 * 1024 * 1024);
    }

    #[test]
    fn tasks_are_capped_to_the_merger_time_limit() {
        let mut config = Config {
            datasets: vec![crate::model::dataset::DatasetConfig::new(
                "d",
                "p",
                "dt={date}",
            )],
            ..Config::default()
        };
        cap_task_size(&mut config, 900, 1024 * 1024);
        assert_eq!(config.datasets[0].max_task_bytes.bytes(), 840 * 1024 * 1024);
    }
}
