//! `compactor`: runs the planner -> merger -> committer pipeline on a local directory with an
//! embedded state store. Everything it does is in the `compaction` library; this file only parses
//! arguments, builds the adapters and prints.

// The run summary's `json!` literal is deeper than the macro's default recursion allows.
#![recursion_limit = "256"]

mod args;
mod repartition;
mod report;
mod rewrite;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use compaction::drivers::pipeline::{run_local, RunOptions, RunSummary};
use compaction::drivers::sample::{generate, SampleSpec};
use compaction::model::config::Config;
use compaction::model::state::PartitionStatus;
use compaction::ports::hot::postgres::PostgresSource;
use compaction::ports::hot::HotSource;
use compaction::ports::state::{DynamoState, EmbeddedState, StateStore};
use compaction::ports::store::{LocalStore, ObjectStore, S3Store};
use compaction::support::process::local_owner_id;

use args::{Cli, Command, CompactArgs, DemoArgs, GenerateArgs, ReportArgs, StatusArgs};

/// Exit codes, documented in `--help` and the README.
const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
    compaction::support::alloc::limit_retention();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, json: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "info,compaction=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Compact(args) => compact(args, false).await,
        Command::Plan(args) => compact(args, true).await,
        Command::Generate(args) => generate_cmd(args).await,
        Command::Demo(args) => demo(args).await,
        Command::Status(args) => status(args).await,
        Command::Report(args) => health_report(args).await,
        Command::Delete(args) => rewrite::rewrite(args, Vec::new()).await,
        Command::Update(args) => rewrite::rewrite(args.rewrite, args.set).await,
        Command::Upsert(args) => rewrite::upsert(args).await,
        Command::Restore(args) => rewrite::restore(args).await,
        Command::Repartition(args) => repartition::repartition(args).await,
    }
}

/// A local directory, or `s3://bucket[/prefix]` (credentials, region and endpoint from the
/// standard AWS environment).
async fn open_store(dir: &Path) -> Result<Arc<dyn ObjectStore>> {
    let location = dir.to_string_lossy();
    if location.starts_with("s3://") {
        return Ok(Arc::new(
            S3Store::from_url(&location)
                .await
                .with_context(|| format!("opening {location}"))?,
        ));
    }
    if !dir.is_dir() {
        bail!("{} is not a directory; point compactor at the directory holding your dataset (or run `compactor demo`)", dir.display());
    }
    Ok(Arc::new(
        LocalStore::open(dir).with_context(|| format!("opening {}", dir.display()))?,
    ))
}

/// `dynamodb://TABLE`, or an embedded state file (default `DIR/_compactor/state.redb`; S3
/// locations must name their state explicitly).
/// `read_only` opens an existing embedded state file for reading only, so `status` and `plan`
/// work while a compaction writes it.
async fn open_state(
    dir: &Path,
    explicit: &Option<PathBuf>,
    read_only: bool,
) -> Result<Arc<dyn StateStore>> {
    let explicit = explicit.as_ref().map(|p| p.to_string_lossy().to_string());
    if let Some(table) = explicit
        .as_deref()
        .and_then(|s| s.strip_prefix("dynamodb://"))
    {
        if table.is_empty() {
            bail!("--state dynamodb:// names no table; write dynamodb://TABLE");
        }
        return Ok(Arc::new(DynamoState::from_env(table).await));
    }
    if explicit.is_none() && dir.to_string_lossy().starts_with("s3://") {
        bail!("{} is on S3: pass --state dynamodb://TABLE (the deployment's state table) or --state FILE for an embedded state file", dir.display());
    }
    let path = explicit
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("_compactor").join("state.redb"));
    let state = if read_only && path.exists() {
        EmbeddedState::open_read_only(&path)
    } else {
        EmbeddedState::open(&path)
    };
    Ok(Arc::new(state.context("opening the state store")?))
}

async fn compact(args: CompactArgs, dry_run: bool) -> Result<ExitCode> {
    let dry_run = dry_run || args.dry_run;
    let config = args.config()?;
    let store = open_store(&args.dir).await?;
    let state = open_state(&args.dir, &args.state, dry_run).await?;
    let summary = execute(&config, store, state, &args, dry_run, None, None).await?;
    let exit = exit_code(&summary);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&summary, &config))?
        );
    } else {
        report::print(&summary, &config, dry_run);
    }
    Ok(exit)
}

/// Runs the pipeline: a compaction, or with `rewrite` a delete or update.
async fn execute(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    state: Arc<dyn StateStore>,
    args: &CompactArgs,
    dry_run: bool,
    rewrite: Option<compaction::model::rewrite::RewriteSpec>,
    upsert_rows: Option<Arc<compaction::services::upsert::SourceRows>>,
) -> Result<RunSummary> {
    let progress = Arc::new(report::Bar::new(args.quiet || args.json || dry_run));
    let options = RunOptions {
        datasets: (!args.dataset.is_empty()).then(|| args.dataset.clone()),
        partitions: (!args.partition.is_empty()).then(|| args.partition.clone()),
        rewrite,
        upsert_rows,
        ..run_options(args.workers, dry_run)
    };
    let hot = match options.rewrite {
        Some(_) => None,
        None => open_hot_source(config).await,
    };
    let summary = run_local(config, store, state, hot, progress.clone(), &options).await?;
    progress.finish();
    Ok(summary)
}

/// The Postgres of the hot datasets, if any is configured: the DSN from each dataset's
/// `dsn_env` variable, or from `COMPACTOR_PG_SECRET_ARN` / `COMPACTOR_PG_DSN_PARAMETER` (read
/// with the standard AWS environment).
async fn open_hot_source(config: &Config) -> Option<Arc<dyn HotSource>> {
    if config.hot_datasets.is_empty() {
        return None;
    }
    let from_aws = ["COMPACTOR_PG_SECRET_ARN", "COMPACTOR_PG_DSN_PARAMETER"]
        .iter()
        .any(|v| compaction::support::env::env_var(v).is_some());
    let sdk = if from_aws {
        Some(compaction::ports::aws::sdk_config().await)
    } else {
        None
    };
    Some(Arc::new(PostgresSource::from_env(sdk.as_ref())))
}

/// How the CLI runs the pipeline: every dataset and partition, `workers` merges at once.
fn run_options(workers: Option<usize>, dry_run: bool) -> RunOptions {
    RunOptions {
        dry_run,
        now: chrono::Utc::now(),
        datasets: None,
        partitions: None,
        workers: workers.unwrap_or_else(default_workers),
        scratch: std::env::temp_dir(),
        owner: local_owner_id(),
        rewrite: None,
        // Always: a compaction finishes a rewrite a crash interrupted.
        row_changes: Some(Arc::new(compaction_sql::SqlRowChanges)),
        upsert_rows: None,
        force: false,
        extra_inputs: None,
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4)
}

fn exit_code(summary: &RunSummary) -> ExitCode {
    if !summary.failures.is_empty() && summary.commits.is_empty() && summary.anomalies().is_empty()
    {
        ExitCode::FAILURE
    } else if summary.is_partial() {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    }
}

async fn generate_cmd(args: GenerateArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let store = open_store(&args.dir).await?;
    let spec = args.spec();
    let summary = generate(store, &spec).await?;
    println!(
        "wrote {} files ({}, {} rows) in {} partitions under {}",
        summary.files,
        compaction::support::units::human_bytes(summary.bytes),
        summary.rows,
        summary.partitions.len(),
        args.dir.join(&spec.prefix).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Marks a directory as made by `demo`, so a second run may safely wipe it.
const DEMO_MARKER: &str = "_compactor_demo";

async fn demo(args: DemoArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    if dir.exists() {
        if !dir.join(DEMO_MARKER).exists() {
            bail!(
                "{} exists and was not created by `compactor demo`; pick another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(DEMO_MARKER),
        "created by `compactor demo`; safe to delete\n",
    )?;
    let store = open_store(dir).await?;
    let spec = SampleSpec {
        prefix: "events/".into(),
        partitions: args.partitions,
        files_per_partition: args.files_per_partition,
        rows_per_file: args.rows_per_file,
        include_hot_partition: true,
        now: chrono::Utc::now(),
        seed: 42,
    };
    println!("1/2 generating a sample dataset in {} ...", dir.display());
    let generated = generate(Arc::clone(&store), &spec).await?;
    println!(
        "    {} small files, {}, {} rows, {} hourly partitions (the newest is the current hour, which stays hot)",
        generated.files,
        compaction::support::units::human_bytes(generated.bytes),
        generated.rows,
        generated.partitions.len()
    );
    let compact_args = args.compact_args();
    let config = compact_args.config()?;
    println!("2/2 compacting (mode {:?}) ...", config.datasets[0].mode);
    let state = open_state(dir, &None, false).await?;
    let summary = execute(&config, store, state, &compact_args, false, None, None).await?;
    report::print(&summary, &config, false);
    println!(
        "\nTry it again: `compactor compact {dir} --prefix events/` changes nothing the second time.\nRead it: duckdb -c \"SELECT count(*) FROM read_parquet('{dir}/events/*/*/*.parquet')\"",
        dir = dir.display()
    );
    Ok(exit_code(&summary))
}

async fn health_report(args: ReportArgs) -> Result<ExitCode> {
    use compaction::services::report::{since, Footers, ReportOptions, Reporter};
    let config = args.config()?;
    let store = open_store(&args.dir).await?;
    let state = open_state(&args.dir, &args.state, true).await?;
    let hot = open_hot_source(&config).await;
    let now = chrono::Utc::now();
    let options = ReportOptions {
        now,
        since: Some(since(now, args.since.0)),
        datasets: args.dataset.clone(),
        footers: Footers::All,
    };
    let health = Reporter::new(store, state, hot)
        .report(&config, &options)
        .await?;
    if let Some(path) = &args.html {
        std::fs::write(path, compaction::drivers::report_page::html(&health))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&health)?);
    } else {
        report::print_health(&health);
        if let Some(path) = &args.html {
            println!("HTML report: {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(args: StatusArgs) -> Result<ExitCode> {
    let state = open_state(&args.dir, &args.state, true).await?;
    let statuses = [
        PartitionStatus::Compacting,
        PartitionStatus::Flagged,
        PartitionStatus::Failed,
        PartitionStatus::Compacted,
        PartitionStatus::Active,
    ];
    let mut records = Vec::new();
    for status in statuses {
        records.extend(state.list_by_status(&args.dataset, status).await?);
    }
    report::print_status(&records);
    Ok(ExitCode::SUCCESS)
}
