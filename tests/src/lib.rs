//! Helpers for the end-to-end tests: temporary datasets on a real directory with the embedded
//! state store, Parquet writers for hand-made inputs, and a canonical row multiset to compare
//! data before and after compaction.

pub mod aws;
pub mod hot;
pub mod pg;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use compaction::drivers::pipeline::{run_local, RunOptions, RunSummary};
use compaction::drivers::sample::{generate, SampleSpec, SampleSummary};
use compaction::model::config::Config;
use compaction::model::dataset::DatasetConfig;
use compaction::ports::state::{EmbeddedState, StateStore};
use compaction::ports::store::{LocalStore, ObjectStore};
use compaction::support::process::local_owner_id;
use compaction::support::progress::NoProgress;
use compaction::support::units::ByteSize;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn ObjectStore>,
    pub state: Arc<dyn StateStore>,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(dir.path()).expect("store"));
        let state: Arc<dyn StateStore> =
            Arc::new(EmbeddedState::open(dir.path().join("_compactor/state.redb")).expect("state"));
        Self { dir, store, state }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.path().join(key)
    }

    pub async fn generate(&self, partitions: usize, files: usize, rows: usize) -> SampleSummary {
        generate(
            Arc::clone(&self.store),
            &SampleSpec {
                prefix: "events/".into(),
                partitions,
                files_per_partition: files,
                rows_per_file: rows,
                include_hot_partition: true,
                now: chrono::Utc::now(),
                seed: 7,
            },
        )
        .await
        .expect("generate sample data")
    }

    pub async fn run(&self, config: &Config) -> RunSummary {
        self.try_run(config).await.expect("pipeline run")
    }

    pub async fn try_run(&self, config: &Config) -> compaction::Result<RunSummary> {
        self.try_run_with(config, run_options(false)).await
    }

    pub async fn try_run_with(
        &self,
        config: &Config,
        options: RunOptions,
    ) -> compaction::Result<RunSummary> {
        run_local(
            config,
            Arc::clone(&self.store),
            Arc::clone(&self.state),
            None,
            Arc::new(NoProgress),
            &options,
        )
        .await
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

pub fn run_options(dry_run: bool) -> RunOptions {
    RunOptions {
        dry_run,
        now: chrono::Utc::now(),
        datasets: None,
        partitions: None,
        workers: 2,
        scratch: std::env::temp_dir(),
        owner: local_owner_id(),
        rewrite: None,
        row_changes: None,
        upsert_rows: None,
        force: false,
        extra_inputs: None,
    }
}

/// The sample dataset's config with small sizes, so tests produce several outputs quickly.
pub fn small_config() -> Config {
    let mut ds = DatasetConfig::new("events", "events/", "dt={date}/hour={hour}");
    ds.target_file_size = ByteSize::mib(1);
    ds.row_group_size = ByteSize::mib(1);
    ds.small_file_threshold = ByteSize(512 * 1024);
    ds.max_task_bytes = ByteSize::mib(4);
    Config {
        memory_budget: ByteSize::mib(256),
        datasets: vec![ds],
        ..Config::default()
    }
}

/// Writes `batch` as a Parquet file at `path` (parent directories created).
pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let file = std::fs::File::create(path).expect("create");
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
}

/// Writes `batch` as one Parquet file whose row groups hold `groups` rows each, in order (a
/// streaming appender's file mixes large and tiny ones). The remaining rows form a last group.
pub fn write_row_groups(path: &Path, batch: &RecordBatch, groups: &[usize]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let file = std::fs::File::create(path).expect("create");
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    let mut at = 0;
    for &rows in groups {
        writer.write(&batch.slice(at, rows)).expect("write");
        writer.flush().expect("flush");
        at += rows;
    }
    if at < batch.num_rows() {
        writer
            .write(&batch.slice(at, batch.num_rows() - at))
            .expect("write");
    }
    writer.close().expect("close");
}

/// The bytes of each row group's column chunks (contiguous in files of parquet-rs), with
/// whether the row group's columns carry a page index.
pub fn row_group_bytes(path: &Path) -> Vec<(Vec<u8>, bool)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let data = std::fs::read(path).expect("read");
    let reader = SerializedFileReader::new(bytes::Bytes::from(data.clone())).expect("footer");
    reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| {
            let start = g.columns()[0].byte_range().0 as usize;
            let (last, len) = g.columns()[g.num_columns() - 1].byte_range();
            let indexed = g
                .columns()
                .iter()
                .all(|c| c.offset_index_range().is_some() && c.column_index_range().is_some());
            (data[start..(last + len) as usize].to_vec(), indexed)
        })
        .collect()
}

/// Data files (non-hidden `.parquet`) under `dir`, recursively, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn read_batches(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).expect("open");
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet reader")
        .build()
        .expect("build reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("read batches")
}

/// Every row of the given files as `col=value|...` over `columns` (by name, so column order and
/// physical types do not matter), sorted: a multiset to compare.
pub fn row_multiset(files: &[PathBuf], columns: &[&str]) -> Vec<String> {
    let mut rows = Vec::new();
    for f in files {
        for batch in read_batches(f) {
            for r in 0..batch.num_rows() {
                let row: Vec<String> = columns
                    .iter()
                    .map(|c| match batch.column_by_name(c) {
                        Some(col) if !col.is_null(r) => {
                            format!("{c}={}", display(col, r))
                        }
                        _ => format!("{c}=NULL"),
                    })
                    .collect();
                rows.push(row.join("|"));
            }
        }
    }
    rows.sort();
    rows
}

/// A value as text; time zones are dropped (the instant stays) since arrow's display needs
/// the chrono-tz feature for named zones.
fn display(col: &arrow::array::ArrayRef, row: usize) -> String {
    use arrow::datatypes::DataType;
    let col = match col.data_type() {
        DataType::Timestamp(unit, Some(_)) => {
            arrow::compute::cast(col, &DataType::Timestamp(*unit, None)).expect("cast timestamp")
        }
        _ => std::sync::Arc::clone(col),
    };
    array_value_to_string(&col, row).expect("display")
}

pub const SAMPLE_COLUMNS: &[&str] = &[
    "ts_event", "event_id", "user_id", "kind", "country", "amount", "session", "is_bot",
];

/// Everything left in the staging area (should be empty after a finished run).
pub fn staging_leftovers(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("_compactor/staging")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// The files, read in name order, are ordered by `ts_event` and numbered `seq` 0..rows-1.
pub fn assert_sorted_with_seq(files: &[PathBuf], rows: i64) {
    let mut seqs = Vec::new();
    let mut last_ts = i64::MIN;
    for f in files {
        for b in read_batches(f) {
            let ts = b
                .column_by_name("ts_event")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                .unwrap();
            let seq = b
                .column_by_name("seq")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            for i in 0..b.num_rows() {
                assert!(ts.value(i) >= last_ts, "out of order in {}", f.display());
                last_ts = ts.value(i);
                seqs.push(seq.value(i));
            }
        }
    }
    assert_eq!(
        seqs,
        (0..rows).collect::<Vec<i64>>(),
        "seq is 0..N-1 in file order"
    );
}

/// The partition directories under `root` holding compacted outputs.
pub fn compacted_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = parquet_files(root)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("compacted-"))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}
