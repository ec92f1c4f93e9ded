//! The planner function: S3 and EventBridge events, schedules and manual commands, planned and
//! dispatched to merger functions (see `crate::drivers::events` for the event shapes).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::drivers::events::{
    parse_planner_event, route_key, KeyRoute, PlannerCommand, PlannerEvent, ReportRequest,
};
use crate::drivers::lambda::metrics::{health_documents, Metrics};
use crate::error::{Error, Result};
use crate::model::config::{AnyDataset, Config};
use crate::model::dataset::DatasetConfig;
use crate::model::object::{dir_prefix, validate_key, ObjectMeta};
use crate::model::partition::{coldness, Coldness};
use crate::model::repartition::overlapping;
use crate::model::report::LakeReport;
use crate::model::rewrite::{RewriteSpec, UpsertSpec};
use crate::model::state::{Counters, PartitionId};
use crate::model::task::Task;
use crate::ports::dispatch::{CollectingDispatcher, Dispatcher, LambdaDispatcher};
use crate::ports::rows::RowChanges;
use crate::ports::store::PutMode;
use crate::services::planner::{
    DatasetPlan, PartitionOutcome, PlanOptions, Planner, PlannerSettings,
};
use crate::services::repartition::{
    repartition as run_repartition, Compacted, RepartitionOptions, RepartitionRunner,
};
use crate::services::report::{since as since_window, Footers, ReportOptions, Reporter};
use crate::services::upsert::{SourceRows, UpsertSource};
use crate::support::env::env_var;
use crate::support::units::ByteSize;

use super::{merge_throughput, parsed, required};
use super::{Deployment, SAFETY_MARGIN};

pub struct PlannerFunction {
    deployment: Deployment,
    dispatcher: Arc<dyn Dispatcher>,
    /// Plans the SQL of delete and update commands (`None`: a build without the SQL engine,
    /// which refuses them).
    row_changes: Option<Arc<dyn RowChanges>>,
    /// Where a command's `backup` may go (`COMPACTOR_BACKUP_PREFIX`: what the functions' IAM
    /// grants cover); `None`: anywhere.
    backup_prefix: Option<String>,
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
        let throughput = merge_throughput()?;
        deployment.config.merge_throughput = crate::support::units::ByteSize(throughput);
        if let Some(timeout) = env_var("COMPACTOR_MERGER_TIMEOUT") {
            let seconds: u64 = timeout.parse().map_err(|e| {
                Error::config("COMPACTOR_MERGER_TIMEOUT", format!("{timeout:?}: {e}"))
            })?;
            cap_task_size(&mut deployment.config, seconds, throughput);
        }
        let mut function = Self::new(deployment, Arc::new(dispatcher));
        function.backup_prefix = env_var("COMPACTOR_BACKUP_PREFIX").map(|p| dir_prefix(&p));
        Ok(function)
    }

    pub fn new(deployment: Deployment, dispatcher: Arc<dyn Dispatcher>) -> Self {
        Self {
            deployment,
            dispatcher,
            row_changes: None,
            backup_prefix: None,
        }
    }

    /// Lets the function plan delete and update commands.
    pub fn with_row_changes(mut self, changes: Option<Arc<dyn RowChanges>>) -> Self {
        self.row_changes = changes;
        self
    }

    fn planner(&self, request_id: &str) -> Planner {
        self.planner_to(request_id, Arc::clone(&self.dispatcher))
    }

    /// A planner sending its tasks to `dispatcher`.
    fn planner_to(&self, request_id: &str, dispatcher: Arc<dyn Dispatcher>) -> Planner {
        let config = &self.deployment.config;
        Planner::new(
            Arc::clone(&self.deployment.store),
            Arc::clone(&self.deployment.state),
            dispatcher,
            PlannerSettings {
                owner: format!("lambda:{request_id}"),
                lease_ttl_ms: config.lease_ttl.0.as_millis() as i64,
                staging_prefix: config.staging_prefix.clone(),
                memory_budget: config.memory_budget.bytes(),
                merge_throughput: config.merge_throughput.bytes(),
            },
        )
        .with_hot_source(self.deployment.hot.clone())
        .with_row_changes(self.row_changes.clone())
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
                let swept = self
                    .sweep(&planner, None, false, false, stop_at, &mut metrics)
                    .await;
                let carried = self.carry_repartitions(&planner).await;
                self.emit_health().await;
                swept.map(|mut v| {
                    v["repartitions"] = carried;
                    v
                })
            }
            PlannerEvent::Report(request) => self.write_report(&request).await,
            PlannerEvent::Command(command) => {
                self.command(&planner, request_id, command, stop_at, &mut metrics)
                    .await
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
        request_id: &str,
        command: PlannerCommand,
        stop_at: Instant,
        metrics: &mut Metrics,
    ) -> Result<Value> {
        let now = chrono::Utc::now();
        self.check_backup(&command)?;
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
            PlannerCommand::Delete {
                dataset,
                predicate,
                backup,
                dry_run,
            } => {
                let spec = RewriteSpec {
                    predicate,
                    backup,
                    ..RewriteSpec::default()
                };
                self.rewrite(request_id, &dataset, spec, None, dry_run, metrics)
                    .await
            }
            PlannerCommand::Update {
                dataset,
                predicate,
                set,
                backup,
                dry_run,
            } => {
                let spec = RewriteSpec {
                    predicate,
                    set,
                    backup,
                    ..RewriteSpec::default()
                };
                self.rewrite(request_id, &dataset, spec, None, dry_run, metrics)
                    .await
            }
            PlannerCommand::Upsert {
                dataset,
                from,
                key,
                update_cols,
                backup,
                dry_run,
            } => {
                let rows = UpsertSource::read_store(self.deployment.store.as_ref(), &from).await?;
                let spec = RewriteSpec {
                    backup,
                    upsert: Some(UpsertSpec {
                        source: from,
                        key,
                        update_cols,
                        ..UpsertSpec::default()
                    }),
                    ..RewriteSpec::default()
                };
                self.rewrite(request_id, &dataset, spec, Some(rows), dry_run, metrics)
                    .await
            }
            PlannerCommand::Repartition {
                dataset,
                from,
                select,
                delete_source,
                backup,
                dry_run,
            } => {
                let options = self.repartition_options(
                    &dataset,
                    &from,
                    select,
                    delete_source,
                    backup,
                    dry_run,
                )?;
                self.repartition(planner, options).await
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

    /// A delete, update or upsert of a file dataset: every partition is planned (and the
    /// expressions evaluated on its data) before any task is sent to a merger; if planning
    /// fails, the tasks planned so far are abandoned and nothing is written.
    async fn rewrite(
        &self,
        request_id: &str,
        dataset: &str,
        spec: RewriteSpec,
        rows: Option<SourceRows>,
        dry_run: bool,
        metrics: &mut Metrics,
    ) -> Result<Value> {
        let AnyDataset::Files(ds) = self.any_dataset(dataset)? else {
            return Err(Error::BadEvent(format!(
                "{dataset:?} is a hot dataset: a {} is for file datasets",
                spec.verb()
            )));
        };
        let held = Arc::new(CollectingDispatcher::default());
        let holding = self
            .planner_to(request_id, held.clone())
            .with_upsert_rows(rows.map(Arc::new));
        let options = PlanOptions {
            force: true,
            ..PlanOptions::sweep(chrono::Utc::now(), dry_run)
        };
        let planned = holding.plan_rewrite(ds, &spec, &options).await;
        let tasks = std::mem::take(&mut *held.tasks.lock().await);
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                let reason = format!(
                    "the {} stopped while planning; nothing of it was written",
                    spec.verb()
                );
                holding.abandon_held(tasks, &reason).await;
                return Err(match e {
                    Error::Expression(m) => Error::BadEvent(m),
                    other => other,
                });
            }
        };
        let sent = tasks.len();
        holding
            .dispatch_held(tasks, self.dispatcher.as_ref())
            .await?;
        let plans = vec![plan];
        record_plans(&plans, metrics);
        Ok(json!({"operation": spec.verb(), "tasks": sent, "plans": plans_json(&plans)}))
    }

    /// A repartition's options from its command, checked: the destination a configured file
    /// dataset, the source a prefix that does not overlap it, the backup outside both.
    fn repartition_options(
        &self,
        dataset: &str,
        from: &str,
        select: Option<String>,
        delete_source: bool,
        backup: Option<String>,
        dry_run: bool,
    ) -> Result<RepartitionOptions> {
        let AnyDataset::Files(ds) = self.any_dataset(dataset)? else {
            return Err(Error::BadEvent(format!(
                "{dataset:?} is a hot dataset: a repartition copies into a file dataset"
            )));
        };
        validate_key(from).map_err(|e| Error::BadEvent(format!("\"from\": {e}")))?;
        let source_prefix = dir_prefix(from);
        let config = &self.deployment.config;
        let own = dir_prefix(&config.staging_prefix);
        for (what, prefix) in [
            ("the destination", ds.source_dir()),
            ("staging", own.clone()),
        ] {
            if overlapping(&source_prefix, &prefix) {
                return Err(Error::BadEvent(format!(
                    "\"from\": {source_prefix:?} overlaps {what} ({prefix:?}); a repartition copies into another prefix"
                )));
            }
        }
        if let Some(b) = &backup {
            // Its key was checked with every command's (check_backup).
            if !delete_source {
                return Err(Error::BadEvent(
                    "\"backup\" keeps the source files a repartition deletes: it needs \"delete_source\": true".into(),
                ));
            }
            if [&source_prefix, &ds.source_dir(), &own]
                .iter()
                .any(|p| overlapping(&dir_prefix(b), p))
            {
                return Err(Error::BadEvent(format!(
                    "\"backup\": {b:?} overlaps the source, the destination or staging; keep the backup apart"
                )));
            }
        }
        Ok(RepartitionOptions {
            source_prefix,
            source_label: format!("s3://{}", self.deployment.bucket),
            target: ds.clone(),
            staging_prefix: config.staging_prefix.clone(),
            memory_budget: config.memory_budget.bytes(),
            dry_run,
            delete_source,
            select,
            row_changes: self.row_changes.clone(),
            backup,
            // A write task not done within a lease's time is taken for lost and sent again.
            resend_after_ms: config.lease_ttl.0.as_millis() as i64,
        })
    }

    /// Advances a repartition by one step: its write tasks and the destination's compaction
    /// go to merger functions; the response says the phase reached and what it waits for.
    async fn repartition(&self, planner: &Planner, options: RepartitionOptions) -> Result<Value> {
        let runner = FanOut {
            planner,
            dispatcher: self.dispatcher.as_ref(),
            dataset: &options.target,
            plans: std::sync::Mutex::new(Vec::new()),
        };
        let store = Arc::clone(&self.deployment.store);
        let report = run_repartition(
            Arc::clone(&store),
            Some(store),
            &options,
            &runner,
            crate::support::clock::now_ms(),
        )
        .await
        .map_err(|e| match e {
            Error::Expression(m) => Error::BadEvent(m),
            other => other,
        })?;
        let plans = runner.plans.into_inner().unwrap_or_default();
        Ok(json!({"operation": "repartition", "repartition": report, "plans": plans_json(&plans)}))
    }

    /// Advances every unfinished repartition one step, with what its last command asked for
    /// (so that after its first invocation the schedule carries it to the end). A repartition
    /// that cannot advance is reported, not an error of the sweep.
    async fn carry_repartitions(&self, planner: &Planner) -> Value {
        let config = &self.deployment.config;
        let recorded = match crate::services::repartition::recorded(
            self.deployment.store.as_ref(),
            &config.staging_prefix,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return json!([{"error": e.to_string()}]),
        };
        let mut out = Vec::new();
        for (dataset, record) in recorded.into_iter().filter(|(_, r)| r.unfinished()) {
            let advanced = match self.repartition_options(
                &dataset,
                &record.source_prefix,
                record.select.clone(),
                record.delete_source,
                record.backup.clone(),
                false,
            ) {
                Ok(options) => self.repartition(planner, options).await,
                Err(e) => Err(e),
            };
            out.push(match advanced {
                Ok(v) => json!({"dataset": dataset, "repartition": v["repartition"], "plans": v["plans"]}),
                Err(e) => {
                    tracing::error!(dataset, error = %e, "the scheduled run could not advance a repartition");
                    json!({"dataset": dataset, "error": e.to_string()})
                }
            });
        }
        Value::Array(out)
    }

    /// A command's `backup` is a valid key under `COMPACTOR_BACKUP_PREFIX` (when set): refused
    /// before anything is written, rather than denied by IAM halfway.
    fn check_backup(&self, command: &PlannerCommand) -> Result<()> {
        let backup = match command {
            PlannerCommand::Delete { backup, .. }
            | PlannerCommand::Update { backup, .. }
            | PlannerCommand::Upsert { backup, .. }
            | PlannerCommand::Repartition { backup, .. } => backup,
            _ => return Ok(()),
        };
        let Some(backup) = backup else {
            return Ok(());
        };
        validate_key(backup).map_err(|e| Error::BadEvent(format!("\"backup\": {e}")))?;
        match &self.backup_prefix {
            Some(allowed) if !dir_prefix(backup).starts_with(allowed.as_str()) => {
                Err(Error::BadEvent(format!(
                    "\"backup\": {backup:?} is outside {allowed:?} (the stack's BackupPrefix, where the functions may write); name a prefix under it"
                )))
            }
            _ => Ok(()),
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

impl PlannerFunction {
    async fn health(
        &self,
        since: std::time::Duration,
        datasets: Vec<String>,
        footers: Footers,
    ) -> Result<LakeReport> {
        let now = chrono::Utc::now();
        Reporter::new(
            Arc::clone(&self.deployment.store),
            Arc::clone(&self.deployment.state),
            self.deployment.hot.clone(),
        )
        .report(
            &self.deployment.config,
            &ReportOptions {
                now,
                since: Some(since_window(now, since)),
                datasets,
                footers,
            },
        )
        .await
    }

    /// The `report` event: the health report as JSON and HTML under `report_prefix`
    /// (`latest.*`, and a dated copy of each).
    async fn write_report(&self, request: &ReportRequest) -> Result<Value> {
        let config = &self.deployment.config;
        let since = match &request.since {
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| Error::BadEvent(format!("report since {s:?}: {e}")))?,
            None => config.report_since.0,
        };
        let report = self
            .health(since, request.dataset.clone(), Footers::All)
            .await?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let prefix = crate::model::object::dir_prefix(&config.report_prefix);
        let json_body = bytes::Bytes::from(
            serde_json::to_vec_pretty(&report).map_err(|e| Error::Other(e.to_string()))?,
        );
        let html_body = bytes::Bytes::from(crate::drivers::report_page::html(&report));
        let mut written = Vec::new();
        for (name, body) in [
            (format!("report-{stamp}.json"), json_body.clone()),
            (format!("report-{stamp}.html"), html_body.clone()),
            ("latest.json".to_string(), json_body),
            ("latest.html".to_string(), html_body),
        ] {
            let key = format!("{prefix}{name}");
            self.deployment
                .store
                .put(&key, body, PutMode::Overwrite)
                .await?;
            written.push(key);
        }
        for document in health_documents(&report, crate::support::clock::now_ms()) {
            println!("{document}");
        }
        Ok(json!({"report": {"written": written, "totals": report.totals}}))
    }

    /// Every scheduled sweep: the health figures of each dataset as metrics (footers of the
    /// large files only, so the sweep stays cheap). A failure is logged, never the sweep's.
    async fn emit_health(&self) {
        let since = self.deployment.config.report_since.0;
        match self.health(since, Vec::new(), Footers::LargeOnly).await {
            Ok(report) => {
                for document in health_documents(&report, crate::support::clock::now_ms()) {
                    println!("{document}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not measure the lake's health"),
        }
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

/// A repartition's tasks sent to merger functions: its write tasks as they are, the
/// destination's compaction planned (forced, its pieces as inputs) like any other.
struct FanOut<'a> {
    planner: &'a Planner,
    dispatcher: &'a dyn Dispatcher,
    dataset: &'a DatasetConfig,
    plans: std::sync::Mutex<Vec<DatasetPlan>>,
}

#[async_trait::async_trait(?Send)]
impl RepartitionRunner for FanOut<'_> {
    async fn write(&self, tasks: Vec<Task>) -> Result<bool> {
        for task in tasks {
            self.dispatcher.dispatch(task).await?;
        }
        Ok(false)
    }

    async fn compact(&self, pieces: BTreeMap<String, Vec<ObjectMeta>>) -> Result<Compacted> {
        let options = PlanOptions {
            only: Some(pieces.keys().cloned().collect()),
            force: true,
            extra_inputs: Some(Arc::new(pieces)),
            ..PlanOptions::sweep(chrono::Utc::now(), false)
        };
        let plan = self.planner.plan_dataset(self.dataset, &options).await?;
        let mut compacted = Compacted::default();
        for p in &plan.partitions {
            match &p.outcome {
                PartitionOutcome::Planned { .. } => compacted.partitions += 1,
                // Its compaction is under way (sent by an earlier run).
                PartitionOutcome::LeaseHeld { .. } => {}
                other => {
                    compacted
                        .problems
                        .push(format!("{}: {}", p.partition, outcome_json(other)))
                }
            }
        }
        if let Ok(mut plans) = self.plans.lock() {
            plans.push(plan);
        }
        Ok(compacted)
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
                        "rewrite": p.rewrite.as_ref().map(|s| json!({
                            "files_scanned": s.files_scanned,
                            "files_with_match": s.files.len(),
                            "row_groups": s.row_groups,
                            "row_groups_scanned": s.row_groups_scanned,
                            "row_groups_with_match": s.row_groups_matched,
                            "rows_matched": s.rows_matched,
                            "rows_to_insert": s.rows_inserted,
                        })),
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
            "estimate": t.estimate,
        })).collect::<Vec<_>>()}),
        PartitionOutcome::BackingOff {
            failures,
            until_ms,
            error,
        } => json!({"backing_off": {"failures": failures, "until_ms": until_ms, "error": error}}),
        PartitionOutcome::Failed(error) => json!({"failed": error}),
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
