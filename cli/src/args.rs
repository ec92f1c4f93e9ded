//! Command-line arguments. Every option is documented here; `--help` prints it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use compaction::drivers::sample::SampleSpec;
use compaction::model::config::Config;
use compaction::model::dataset::{DatasetConfig, Mode, RowGroupCopy};
use compaction::model::partition::{ColdRule, Granularity};
use compaction::support::units::{ByteSize, HumanDuration};

#[derive(Parser, Debug)]
#[command(
    name = "compactor",
    version,
    about = "Compacts the many small Parquet files of cold partitions into few large ones, safely and in bounded memory.",
    after_help = "Exit codes: 0 success; 1 error (nothing or not everything could be done); 2 usage error; \
3 partial success or an anomaly (some inputs were skipped as unreadable; some tasks failed or were refused while others \
committed; a hot range was flagged because Postgres held other rows than its cold copy; rows were found in a hot range \
already moved). The summary says what was done and what to do."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More logging on stderr (-v info, -vv debug). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Plan, merge and commit every cold partition of the dataset(s) in DIR.
    Compact(CompactArgs),
    /// Show what `compact` would do, changing nothing (same as `compact --dry-run`).
    Plan(CompactArgs),
    /// Write a sample dataset of many small Parquet files into DIR.
    Generate(GenerateArgs),
    /// Generate a sample dataset and compact it: the one-command tour.
    Demo(DemoArgs),
    /// Show the partition records of the state store.
    Status(StatusArgs),
    /// How healthy the lake is: per partition, files, small files, fragmented row groups,
    /// schema drift, corrupt and late files, gaps; Postgres backlog of hot datasets.
    Report(ReportArgs),
    /// Delete the rows matching a SQL predicate: partitions pruned by their fields, files
    /// without a matching row untouched, row groups without one copied as bytes, each
    /// partition's change committed atomically.
    Delete(DeleteArgs),
    /// Set columns of the rows matching a SQL predicate (`--set "col = expression"`).
    Update(UpdateArgs),
    /// Insert a source's rows whose key the data lacks and update those whose key it holds;
    /// each new row goes to the partition its partition fields name.
    Upsert(UpsertArgs),
    /// Copy the dataset in DIR into a new partition layout (--template) under --to: estimated
    /// first, compacted, validated by row count and content digest; the source is deleted only
    /// with --delete-source, after the validation passed.
    Repartition(RepartitionArgs),
    /// Put back the files a delete, update or upsert kept with --backup, and remove what
    /// replaced them.
    Restore(RestoreArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    /// The rows to change: a SQL boolean expression over the data's columns and the partition
    /// template's fields, e.g. "venue = 'X' AND price < 0" or "dt < '2024-02-01'". A row where
    /// it is NULL is not matched.
    #[arg(long = "where", value_name = "PREDICATE")]
    pub predicate: String,
    /// Keep the files this replaces under this prefix (relative to DIR), with a record
    /// `compactor restore DIR PREFIX` reads to put them back.
    #[arg(long, value_name = "PREFIX")]
    pub backup: Option<String>,
    #[command(flatten)]
    pub common: CompactArgs,
}

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// An assignment "column = expression" (repeatable); every expression reads the row as it
    /// was, e.g. --set "spread = best_ask - best_bid". Checked against the column's type before
    /// anything is written.
    #[arg(long = "set", value_name = "ASSIGNMENT", required = true)]
    pub set: Vec<String>,
    #[command(flatten)]
    pub rewrite: DeleteArgs,
}

#[derive(Args, Debug, Clone)]
pub struct UpsertArgs {
    /// A Parquet file, or a directory of them (read recursively), holding the rows: every
    /// column of the data (cast to the data's types), plus the partition fields that name a
    /// new row's partition (e.g. `dt` and `hour` for dt={date}/hour={hour}) when the data
    /// does not hold them. Read into memory.
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub from: PathBuf,
    /// The column(s) identifying a row, comma-separated; the source must hold each key once,
    /// never null.
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',', required = true)]
    pub key: Vec<String>,
    /// The columns a row whose key the data holds takes from the source, comma-separated
    /// [default: every column but the key].
    #[arg(long, value_name = "COLUMNS", value_delimiter = ',')]
    pub update_cols: Vec<String>,
    /// Keep the files this replaces under this prefix (relative to DIR), with a record
    /// `compactor restore DIR PREFIX` reads to put them back.
    #[arg(long, value_name = "PREFIX")]
    pub backup: Option<String>,
    #[command(flatten)]
    pub common: CompactArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RepartitionArgs {
    /// Directory holding the source data (the object-store root), or s3://bucket[/prefix].
    /// Every Parquet file under --prefix is read; `key=value` directory levels are columns.
    pub dir: PathBuf,
    /// Where the repartitioned copy goes (under the same --prefix): a new or empty directory,
    /// or s3://bucket[/prefix]. A rerun with the same arguments continues an interrupted run.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Estimate the target partitions, their rows and sizes; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete the source files once the copy is validated (only those read, only if unchanged).
    #[arg(long)]
    pub delete_source: bool,
    /// A SQL select list applied to every row before it is routed, e.g. "*, price * 100 AS
    /// cents" or "id, ts, upper(venue) AS venue" (the partition fields may be computed here).
    /// The validation then compares the selected rows with the copy.
    #[arg(long, value_name = "SELECT_LIST")]
    pub select: Option<String>,
    /// With --delete-source: keep the source files under this prefix (relative to DIR, outside
    /// --prefix) before any is deleted; `compactor restore DIR PREFIX` puts them back.
    #[arg(long, value_name = "PREFIX", requires = "delete_source")]
    pub backup: Option<String>,
    /// Merges running at once when compacting the copy [default: CPUs, at most 4].
    #[arg(long)]
    pub workers: Option<usize>,
    /// The copy's state store: a file, or dynamodb://TABLE [default: TO/_compactor/state.redb].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// The copy's dataset: --template is its new layout (required); --prefix, sizes and mode
    /// apply to it as to `compact`.
    #[command(flatten)]
    pub dataset_flags: DatasetFlags,
}

impl RepartitionArgs {
    pub fn config(&self) -> Result<Config> {
        load_config(&None, &self.dataset_flags)
    }
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Directory holding the data (the object-store root), or s3://bucket[/prefix].
    pub dir: PathBuf,
    /// The --backup prefix of the operations to undo (relative to DIR).
    pub backup: String,
    /// Print what would be restored; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Concat,
    Sort,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RowGroupCopyArg {
    AnyCodec,
    SameCodec,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ColdnessArg {
    /// The partition's time span is over (templates with time fields).
    Time,
    /// No new file for `--grace` (the default without time fields).
    Quiet,
    /// {start}-{end} layouts: a later range exists (see --range-finality, --range-tip).
    Range,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GranularityArg {
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

#[derive(Args, Debug, Clone)]
pub struct CompactArgs {
    /// Directory holding the data (the object-store root), or s3://bucket[/prefix].
    pub dir: PathBuf,
    /// Configuration file (TOML, see the README). Without it, one dataset is built from the flags.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Change nothing; print the plan.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this dataset (repeatable).
    #[arg(long)]
    pub dataset: Vec<String>,
    /// Only this partition, e.g. dt=2024-01-01/hour=05 (repeatable).
    #[arg(long)]
    pub partition: Vec<String>,
    /// Merges run at once; each may use the whole memory budget [default: cores, at most 4].
    #[arg(long)]
    pub workers: Option<usize>,
    /// State store: a file, or dynamodb://TABLE [default: DIR/_compactor/state.redb; required for s3:// locations].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub dataset_flags: DatasetFlags,
}

/// Dataset settings; with --config they override the file's values for every dataset.
#[derive(Args, Debug, Clone, Default)]
pub struct DatasetFlags {
    /// Dataset name (without --config) [default: events].
    #[arg(long)]
    pub name: Option<String>,
    /// Prefix holding the partitions, relative to DIR [default: "" = DIR itself].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Partition layout [default: dt={date}/hour={hour}]. Fields: {date} {year} {month} {day} {hour} {minute} or any {name}.
    #[arg(long)]
    pub template: Option<String>,
    /// concat: merge files keeping each file's row order; sort: globally sort each partition [default: concat].
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Sort key columns, comma-separated (sort mode).
    #[arg(long, value_delimiter = ',')]
    pub sort_key: Option<Vec<String>>,
    /// Add a column numbering rows 0..N-1 in sort order (sort mode), e.g. seq.
    #[arg(long)]
    pub seq_column: Option<String>,
    /// Target output file size [default: 128MiB].
    #[arg(long)]
    pub target_file_size: Option<ByteSize>,
    /// Target compressed row-group size [default: 64MiB].
    #[arg(long)]
    pub row_group_size: Option<ByteSize>,
    /// Maximum rows per row group [default: 1048576].
    #[arg(long)]
    pub row_group_rows: Option<usize>,
    /// Input bytes per merge task; only the last output of a task is under the target [default: 1GiB].
    #[arg(long)]
    pub max_task_bytes: Option<ByteSize>,
    /// Files smaller than this are compacted [default: 32MiB].
    #[arg(long)]
    pub small_file_threshold: Option<ByteSize>,
    /// Larger files with two or more row groups under this size (and row_group_rows rows) are compacted too [default: 8MiB].
    #[arg(long)]
    pub healthy_row_group_size: Option<ByteSize>,
    /// Concat mode: copy healthy row groups as bytes whatever their codec (any-codec), only in the configured codec (same-codec), or never (off) [default: any-codec].
    #[arg(long, value_enum)]
    pub row_group_copy: Option<RowGroupCopyArg>,
    /// Minimum candidate files for a partition to be compacted [default: 2].
    #[arg(long)]
    pub min_files: Option<usize>,
    /// zstd, zstd(LEVEL), snappy, lz4, gzip, gzip(LEVEL), none [default: zstd].
    #[arg(long)]
    pub compression: Option<String>,
    /// Write outputs under this prefix instead of in place.
    #[arg(long)]
    pub output_prefix: Option<String>,
    /// Wait after a partition's span ends (with --coldness quiet: after its newest file) before compacting it [default: 15m].
    #[arg(long)]
    pub grace: Option<HumanDuration>,
    /// How a partition is found cold [default: time with time fields in the template, else quiet].
    #[arg(long, value_enum)]
    pub coldness: Option<ColdnessArg>,
    /// --coldness range: a range is cold once a later range starts at least this far past its end [default: 0].
    #[arg(long)]
    pub range_finality: Option<u64>,
    /// --coldness range: ranges ending at or below this value are cold.
    #[arg(long)]
    pub range_tip: Option<i64>,
    /// Span that must be over before compacting [default: the template's finest field].
    #[arg(long, value_enum)]
    pub granularity: Option<GranularityArg>,
    /// Only keys with this suffix are data files; "" for all non-hidden files [default: .parquet].
    #[arg(long)]
    pub file_suffix: Option<String>,
    /// Staging prefix for outputs before commit [default: _compactor/staging].
    #[arg(long)]
    pub staging_prefix: Option<String>,
    /// Memory one merge may use [default: 1GiB].
    #[arg(long)]
    pub memory_budget: Option<ByteSize>,
    /// Lease duration [default: 15m].
    #[arg(long)]
    pub lease_ttl: Option<HumanDuration>,
    /// Input bytes a second one merge encodes, for plan estimates of partitions not merged yet [default: 20MiB].
    #[arg(long)]
    pub merge_throughput: Option<ByteSize>,
}

/// Sets `slot` when a flag gave a value.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

impl DatasetFlags {
    fn apply(&self, ds: &mut DatasetConfig) {
        let f = self.clone();
        set(&mut ds.source_prefix, f.prefix);
        set(&mut ds.partition_template, f.template);
        set(
            &mut ds.mode,
            f.mode.map(|v| match v {
                ModeArg::Concat => Mode::Concat,
                ModeArg::Sort => Mode::Sort,
            }),
        );
        set(&mut ds.sort_key, f.sort_key);
        set(&mut ds.seq_column, f.seq_column.map(Some));
        set(&mut ds.target_file_size, f.target_file_size);
        set(&mut ds.row_group_size, f.row_group_size);
        set(&mut ds.row_group_rows, f.row_group_rows);
        set(&mut ds.max_task_bytes, f.max_task_bytes);
        set(&mut ds.small_file_threshold, f.small_file_threshold);
        set(&mut ds.healthy_row_group_size, f.healthy_row_group_size);
        set(
            &mut ds.row_group_copy,
            f.row_group_copy.map(|v| match v {
                RowGroupCopyArg::AnyCodec => RowGroupCopy::AnyCodec,
                RowGroupCopyArg::SameCodec => RowGroupCopy::SameCodec,
                RowGroupCopyArg::Off => RowGroupCopy::Off,
            }),
        );
        set(&mut ds.min_file_count, f.min_files);
        set(&mut ds.compression, f.compression);
        set(&mut ds.output_prefix, f.output_prefix.map(Some));
        set(&mut ds.grace, f.grace);
        set(
            &mut ds.coldness,
            f.coldness.map(|v| {
                Some(match v {
                    ColdnessArg::Time => ColdRule::Time,
                    ColdnessArg::Quiet => ColdRule::Quiet,
                    ColdnessArg::Range => ColdRule::Range,
                })
            }),
        );
        set(&mut ds.range_finality, f.range_finality);
        set(&mut ds.range_tip, f.range_tip.map(Some));
        set(
            &mut ds.granularity,
            f.granularity.map(|v| {
                Some(match v {
                    GranularityArg::Minute => Granularity::Minute,
                    GranularityArg::Hour => Granularity::Hour,
                    GranularityArg::Day => Granularity::Day,
                    GranularityArg::Month => Granularity::Month,
                    GranularityArg::Year => Granularity::Year,
                })
            }),
        );
        set(&mut ds.file_suffix, f.file_suffix);
    }
}

impl CompactArgs {
    /// The configuration: the file (if any) with the flags applied on top, validated.
    pub fn config(&self) -> Result<Config> {
        load_config(&self.config, &self.dataset_flags)
    }
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Directory holding the data (the object-store root), or s3://bucket[/prefix].
    pub dir: PathBuf,
    /// Configuration file (TOML, see the README). Without it, one dataset is built from the flags.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Only partitions whose time span starts within this window before now (time layouts).
    #[arg(long, default_value = "14d")]
    pub since: HumanDuration,
    /// Only this dataset (repeatable).
    #[arg(long)]
    pub dataset: Vec<String>,
    /// State store: a file, or dynamodb://TABLE [default: DIR/_compactor/state.redb; required for s3:// locations].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Print the report as JSON (schema in docs/report.md) instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as one self-contained HTML page with a heat map of partitions.
    #[arg(long)]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub dataset_flags: DatasetFlags,
}

impl ReportArgs {
    pub fn config(&self) -> Result<Config> {
        load_config(&self.config, &self.dataset_flags)
    }
}

/// The configuration: the file (if any) with the flags applied on top, validated.
fn load_config(file: &Option<PathBuf>, flags: &DatasetFlags) -> Result<Config> {
    {
        let mut config = match file {
            Some(path) => Config::load(path)?,
            None => {
                let mut config = Config::default();
                config.datasets.push(DatasetConfig::new(
                    flags.name.as_deref().unwrap_or("events"),
                    "",
                    "dt={date}/hour={hour}",
                ));
                config
            }
        };
        for ds in &mut config.datasets {
            flags.apply(ds);
        }
        if let Some(v) = &flags.staging_prefix {
            config.staging_prefix = v.clone();
        }
        if let Some(v) = flags.memory_budget {
            config.memory_budget = v;
        }
        if let Some(v) = flags.lease_ttl {
            config.lease_ttl = v;
        }
        if let Some(v) = flags.merge_throughput {
            config.merge_throughput = v;
        }
        config.validate().context("invalid configuration")?;
        Ok(config)
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write into (created if needed).
    pub dir: PathBuf,
    /// Dataset prefix inside DIR.
    #[arg(long, default_value = "events/")]
    pub prefix: String,
    /// Cold hourly partitions (ending two hours ago).
    #[arg(long, default_value_t = 6)]
    pub partitions: usize,
    #[arg(long, default_value_t = 200)]
    pub files_per_partition: usize,
    #[arg(long, default_value_t = 2_000)]
    pub rows_per_file: usize,
    /// Also write a few files into the current (hot) hour.
    #[arg(long)]
    pub hot: bool,
    /// Seed of the pseudo-random data (same seed, same data).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl GenerateArgs {
    pub fn spec(&self) -> SampleSpec {
        SampleSpec {
            prefix: self.prefix.clone(),
            partitions: self.partitions,
            files_per_partition: self.files_per_partition,
            rows_per_file: self.rows_per_file,
            include_hot_partition: self.hot,
            now: chrono::Utc::now(),
            seed: self.seed,
        }
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to create the demo dataset (wiped first if a previous demo made it).
    #[arg(long, default_value = "compactor-demo")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 6)]
    pub partitions: usize,
    #[arg(long, default_value_t = 200)]
    pub files_per_partition: usize,
    #[arg(long, default_value_t = 2_000)]
    pub rows_per_file: usize,
    /// concat, or sort (by ts_event, with a seq column).
    #[arg(long, value_enum, default_value = "concat")]
    pub mode: ModeArg,
}

impl DemoArgs {
    pub fn compact_args(&self) -> CompactArgs {
        let sort = matches!(self.mode, ModeArg::Sort);
        CompactArgs {
            dir: self.dir.clone(),
            config: None,
            dry_run: false,
            dataset: Vec::new(),
            partition: Vec::new(),
            workers: None,
            state: None,
            json: false,
            quiet: false,
            dataset_flags: DatasetFlags {
                prefix: Some("events/".into()),
                mode: Some(self.mode),
                sort_key: sort.then(|| vec!["ts_event".to_string()]),
                seq_column: sort.then(|| "seq".to_string()),
                ..DatasetFlags::default()
            },
        }
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Directory holding the data.
    pub dir: PathBuf,
    /// Dataset name.
    #[arg(long, default_value = "events")]
    pub dataset: String,
    /// State store: a file, or dynamodb://TABLE [default: DIR/_compactor/state.redb; required for s3:// locations].
    #[arg(long)]
    pub state: Option<PathBuf>,
}
