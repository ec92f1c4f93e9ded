//! A realistic sample dataset: hourly partitions of many small Parquet files, the way streaming
//! writers (Firehose, Kafka sinks) leave them — small row groups, snappy, rows only roughly in
//! time order. Used by `compactor demo`, the tests and the benchmark.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, Duration, DurationRound, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::ports::store::{ObjectStore, PutMode};

#[derive(Clone, Debug)]
pub struct SampleSpec {
    /// Prefix of the dataset, e.g. `events/`.
    pub prefix: String,
    /// Cold hourly partitions, ending two hours before `now`.
    pub partitions: usize,
    pub files_per_partition: usize,
    pub rows_per_file: usize,
    /// Also write a few files into the current hour (a hot partition the planner must skip).
    pub include_hot_partition: bool,
    pub now: DateTime<Utc>,
    pub seed: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SampleSummary {
    pub partitions: Vec<String>,
    pub files: usize,
    pub bytes: u64,
    pub rows: u64,
}

pub fn sample_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts_event",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("event_id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("session", DataType::Utf8, false),
        Field::new("is_bot", DataType::Boolean, false),
    ]))
}

/// SplitMix64: small, fast, and deterministic for a given seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const KINDS: &[&str] = &[
    "view",
    "view",
    "view",
    "click",
    "click",
    "add_to_cart",
    "purchase",
    "signup",
];
const COUNTRIES: &[&str] = &["US", "DE", "FR", "GB", "JP", "BR", "IN", "TR", "NL", "ES"];

/// One file's rows: timestamps spread over the file's slice of the hour with jitter, so files
/// overlap in time and are not perfectly sorted inside.
pub fn sample_batch(
    hour_start: DateTime<Utc>,
    file: usize,
    files: usize,
    rows: usize,
    seed: u64,
) -> Result<RecordBatch> {
    let mut rng = Rng(seed ^ ((file as u64) << 20));
    let hour_us = 3_600_000_000i64;
    let slice = hour_us / files.max(1) as i64;
    let base = hour_start.timestamp_micros() + slice * file as i64;
    let mut ts = Vec::with_capacity(rows);
    for r in 0..rows {
        let progress = slice * r as i64 / rows.max(1) as i64;
        let jitter = rng.below(2 * slice as u64 + 1) as i64 - slice;
        ts.push((base + progress + jitter).clamp(
            hour_start.timestamp_micros(),
            hour_start.timestamp_micros() + hour_us - 1,
        ));
    }
    let event_id = Int64Array::from_iter_values(
        (0..rows as i64)
            .map(|r| (seed as i64 & 0xFFFF) * 1_000_000_000_000 + file as i64 * 1_000_000 + r),
    );
    let user_id = Int64Array::from_iter_values((0..rows).map(|_| rng.below(50_000) as i64));
    let kind = StringArray::from_iter_values(
        (0..rows).map(|_| KINDS[rng.below(KINDS.len() as u64) as usize]),
    );
    let country = StringArray::from_iter_values(
        (0..rows).map(|_| COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize]),
    );
    let amount: Float64Array = (0..rows)
        .map(|_| (rng.below(4) == 0).then(|| rng.below(100_000) as f64 / 100.0))
        .collect();
    let session = StringArray::from_iter_values((0..rows).map(|_| format!("{:016x}", rng.next())));
    let is_bot: BooleanArray = (0..rows).map(|_| Some(rng.below(20) == 0)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(event_id),
        Arc::new(user_id),
        Arc::new(kind),
        Arc::new(country),
        Arc::new(amount),
        Arc::new(session),
        Arc::new(is_bot),
    ];
    RecordBatch::try_new(sample_schema(), columns).map_err(|e| Error::parquet("sample batch", e))
}

/// Encodes a batch the way a streaming writer would: small row groups, snappy.
pub fn encode_small_file(batch: &RecordBatch) -> Result<Bytes> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1_000))
        .build();
    crate::format::io::encode(batch, Some(props), "sample file")
}

pub fn partition_path(hour: DateTime<Utc>) -> String {
    format!("dt={}/hour={}", hour.format("%Y-%m-%d"), hour.format("%H"))
}

/// Writes the sample dataset into `store`.
pub async fn generate(store: Arc<dyn ObjectStore>, spec: &SampleSpec) -> Result<SampleSummary> {
    let current_hour = spec
        .now
        .duration_trunc(Duration::hours(1))
        .map_err(|e| Error::Other(format!("cannot truncate {}: {e}", spec.now)))?;
    let mut jobs = Vec::new();
    for p in 0..spec.partitions {
        let hour = current_hour - Duration::hours((spec.partitions - p) as i64 + 1);
        for f in 0..spec.files_per_partition {
            jobs.push((hour, f, spec.files_per_partition));
        }
    }
    if spec.include_hot_partition {
        for f in 0..3 {
            jobs.push((current_hour, f, 3));
        }
    }
    let prefix = crate::model::object::dir_prefix(&spec.prefix);
    let seed = spec.seed;
    let rows = spec.rows_per_file;
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let written: Vec<(String, u64, u64)> = stream::iter(jobs)
        .map(|(hour, file, files)| {
            let store = Arc::clone(&store);
            let prefix = prefix.clone();
            async move {
                let part_seed = seed ^ hour.timestamp() as u64;
                let bytes = tokio::task::spawn_blocking(move || {
                    encode_small_file(&sample_batch(hour, file, files, rows, part_seed)?)
                })
                .await
                .map_err(|e| Error::Other(format!("sample encoder panicked: {e}")))??;
                let partition = partition_path(hour);
                let key = format!(
                    "{prefix}{partition}/part-{file:05}-{:08x}.parquet",
                    part_seed as u32
                );
                let size = bytes.len() as u64;
                store.put(&key, bytes, PutMode::Overwrite).await?;
                Ok::<_, Error>((partition, size, rows as u64))
            }
        })
        .buffer_unordered(parallel * 2)
        .try_collect()
        .await?;
    let mut summary = SampleSummary::default();
    for (partition, size, rows) in written {
        summary.files += 1;
        summary.bytes += size;
        summary.rows += rows;
        if !summary.partitions.contains(&partition) {
            summary.partitions.push(partition);
        }
    }
    summary.partitions.sort();
    Ok(summary)
}
