//! Helpers for the hot-dataset tests: a local store and state plus a real Postgres schema, and
//! a canonical text of every value, computed the same way on both sides (by SQL from Postgres,
//! by Rust from the Arrow arrays read back from Parquet), so "round-trips exactly" is a plain
//! string comparison.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Decimal256Type, Float32Type, Float64Type, Int16Type,
    Int32Type, Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use compaction::drivers::pipeline::{run_local, RunOptions, RunSummary};
use compaction::model::config::Config;
use compaction::model::hot::config::HotDatasetConfig;
use compaction::ports::hot::postgres::{DsnSource, PostgresSource};
use compaction::ports::hot::HotSource;
use compaction::support::progress::NoProgress;

use crate::{parquet_files, read_batches, run_options, Env};

pub struct HotEnv {
    pub env: Env,
    pub pg: tokio_postgres::Client,
    pub schema: String,
    pub source: Arc<dyn HotSource>,
}

impl HotEnv {
    pub async fn new() -> Self {
        let pg = crate::pg::connect().await;
        let schema = crate::pg::schema(&pg).await;
        Self {
            env: Env::new(),
            pg,
            schema,
            source: Arc::new(PostgresSource::new(DsnSource::Fixed(crate::pg::dsn()))),
        }
    }

    /// `<schema>.<name>`
    pub fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }

    pub async fn sql(&self, sql: &str) {
        self.pg
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    pub async fn count(&self, sql: &str) -> i64 {
        crate::pg::count(&self.pg, sql).await
    }

    pub async fn run(&self, config: &Config, partitions: Option<Vec<String>>) -> RunSummary {
        self.try_run(config, partitions)
            .await
            .expect("pipeline run")
    }

    pub async fn try_run(
        &self,
        config: &Config,
        partitions: Option<Vec<String>>,
    ) -> compaction::Result<RunSummary> {
        let options = RunOptions {
            partitions,
            ..run_options(false)
        };
        run_local(
            config,
            Arc::clone(&self.env.store),
            Arc::clone(&self.env.state),
            Some(Arc::clone(&self.source)),
            Arc::new(NoProgress),
            &options,
        )
        .await
    }

    /// The Parquet files of one range, sorted by name.
    pub fn range_files(&self, hot: &HotDatasetConfig, key: &str) -> Vec<PathBuf> {
        parquet_files(&self.env.path(&format!("{}{key}", hot.output_dir())))
    }
}

/// A config with just this hot dataset.
pub fn hot_config(hot: HotDatasetConfig) -> Config {
    Config {
        hot_datasets: vec![hot],
        ..Config::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn scaled(digits: String, scale: i8) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d.to_string()),
        None => ("", digits),
    };
    if scale <= 0 {
        return format!("{sign}{digits}");
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// The canonical text of one Arrow value (see [`canonical_sql`] for the Postgres side).
pub fn canonical(array: &ArrayRef, i: usize) -> Option<String> {
    if array.is_null(i) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Boolean => array.as_boolean().value(i).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::Float32 => hex(&array.as_primitive::<Float32Type>().value(i).to_be_bytes()),
        DataType::Float64 => hex(&array.as_primitive::<Float64Type>().value(i).to_be_bytes()),
        DataType::Decimal128(_, s) => scaled(
            array.as_primitive::<Decimal128Type>().value(i).to_string(),
            *s,
        ),
        DataType::Decimal256(_, s) => scaled(
            array.as_primitive::<Decimal256Type>().value(i).to_string(),
            *s,
        ),
        DataType::Utf8 => hex(array.as_string::<i32>().value(i).as_bytes()),
        DataType::Binary => hex(array.as_binary::<i32>().value(i)),
        DataType::FixedSizeBinary(16) => {
            let b = array.as_fixed_size_binary().value(i);
            let h = hex(b);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(i);
            (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
                + chrono::Duration::days(days as i64))
            .to_string()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => array
            .as_primitive::<TimestampMicrosecondType>()
            .value(i)
            .to_string(),
        DataType::Time64(TimeUnit::Microsecond) => array
            .as_primitive::<Time64MicrosecondType>()
            .value(i)
            .to_string(),
        DataType::List(_) => {
            let values = array.as_list::<i32>().value(i);
            let items: Vec<String> = (0..values.len())
                .map(|j| canonical(&values, j).unwrap_or_else(|| "NULL".into()))
                .collect();
            format!("[{}]", items.join(","))
        }
        other => panic!("no canonical text for {other}"),
    })
}

/// The Postgres side of [`canonical`] for a column of the given SQL type.
pub fn canonical_sql(column: &str, sql_type: &str) -> String {
    let base = sql_type.trim_end_matches("[]");
    let element = |v: &str| -> String {
        match base.split('(').next().unwrap_or(base) {
            "int2" | "int4" | "int8" | "numeric" | "bool" | "date" | "uuid" => format!("{v}::text"),
            "float4" => format!("encode(float4send({v}), 'hex')"),
            "float8" => format!("encode(float8send({v}), 'hex')"),
            "text" => format!("encode(textsend({v}), 'hex')"),
            "varchar" => format!("encode(varcharsend({v}), 'hex')"),
            "char" | "bpchar" => format!("encode(bpcharsend({v}), 'hex')"),
            "name" => format!("encode(namesend({v}), 'hex')"),
            "json" | "jsonb" => format!("encode(convert_to({v}::text, 'UTF8'), 'hex')"),
            "bytea" => format!("encode({v}, 'hex')"),
            "timestamp" | "timestamptz" | "time" => {
                format!("(extract(epoch from {v}) * 1000000)::int8::text")
            }
            other => panic!("no canonical SQL for {other}"),
        }
    };
    if sql_type.ends_with("[]") {
        format!(
            "CASE WHEN {column} IS NULL THEN NULL ELSE (SELECT '[' || coalesce(string_agg(coalesce({}, 'NULL'), ',' ORDER BY o), '') || ']' FROM unnest({column}) WITH ORDINALITY AS u(v, o)) END",
            element("v")
        )
    } else {
        element(column)
    }
}

/// Every row of `files` as canonical text, in file order.
pub fn parquet_rows(files: &[PathBuf], columns: &[&str]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for file in files {
        for batch in read_batches(file) {
            let arrays: Vec<&ArrayRef> = columns
                .iter()
                .map(|c| {
                    batch
                        .column_by_name(c)
                        .unwrap_or_else(|| panic!("column {c}"))
                })
                .collect();
            for i in 0..batch.num_rows() {
                rows.push(arrays.iter().map(|a| canonical(a, i)).collect());
            }
        }
    }
    rows
}

/// The rows of `query` (every column text or NULL).
pub async fn pg_rows(pg: &tokio_postgres::Client, query: &str) -> Vec<Vec<Option<String>>> {
    pg.query(query, &[])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e:?}"))
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

/// Plans and merges one range without committing it: what a merger leaves behind before its
/// `_SUCCESS` event reaches the committer.
pub async fn stage_only(
    env: &HotEnv,
    hot: &HotDatasetConfig,
    key: &str,
) -> compaction::model::manifest::TaskManifest {
    use compaction::ports::dispatch::CollectingDispatcher;
    use compaction::services::merger::{MergeOutcome, Merger};
    use compaction::services::planner::{PlanOptions, Planner, PlannerSettings};
    use compaction::support::process::local_owner_id;

    let dispatcher = Arc::new(CollectingDispatcher::default());
    let planner = Planner::new(
        Arc::clone(&env.env.store),
        Arc::clone(&env.env.state),
        dispatcher.clone(),
        PlannerSettings {
            owner: local_owner_id(),
            lease_ttl_ms: 15 * 60 * 1000,
            staging_prefix: compaction::model::config::DEFAULT_STAGING_PREFIX.into(),
            memory_budget: 256 << 20,
            merge_throughput: 20 << 20,
        },
    )
    .with_hot_source(Some(Arc::clone(&env.source)));
    let options = PlanOptions {
        only: Some(vec![key.to_string()]),
        recover: false,
        ..PlanOptions::sweep(chrono::Utc::now(), false)
    };
    planner.plan_hot_dataset(hot, &options).await.expect("plan");
    let task = dispatcher
        .tasks
        .lock()
        .await
        .pop()
        .expect("one export task");
    let merger = Merger::new(
        Arc::clone(&env.env.store),
        std::env::temp_dir(),
        Arc::new(NoProgress),
    )
    .with_hot_source(Some(Arc::clone(&env.source)));
    match merger.run(Arc::new(task)).await.expect("export") {
        MergeOutcome::Staged(manifest) => manifest,
        other => panic!("expected a staged export, got {other:?}"),
    }
}
