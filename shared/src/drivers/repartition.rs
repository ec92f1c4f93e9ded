//! `compactor repartition`: copies a dataset into a new partition layout, compacted, validated,
//! and only then (when asked) deletes the source.
//!
//! 1. **Estimate** (all a dry run does): every source file's partition-field columns are
//!    decoded and each row routed to its target partition; rows per target and bytes (at the
//!    source's bytes per row) are reported.
//! 2. **Write**: each source file is read once; its rows go, split by target partition, into
//!    pieces under the destination's partitions; the source's multiset digest (each row's
//!    target partition and the values of its other columns) is kept.
//! 3. **Compact** the destination with the ordinary pipeline (every target partition, forced).
//! 4. **Validate**: the destination is read back and digested the same way; row counts and
//!    digests must agree.
//! 5. **Delete the source** (`delete_source`), only the files listed at the start and only if
//!    unchanged since.
//!
//! A record in the destination ([`MARKER`]) keeps the phase reached, the source files and the
//! source digest, so a rerun after a crash continues where the run stopped: pieces of an
//! unfinished write are removed and written again (nothing has consumed them yet); a finished
//! write goes on to compaction, a validated one to the deletion.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::row::{RowConverter, SortField};
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use serde::{Deserialize, Serialize};

use super::pipeline::{run_local, RunOptions, RunSummary};
use crate::error::{Error, Result};
use crate::format::io::{encode, read_footer, StoreReader};
use crate::format::writer::writer_properties;
use crate::model::config::Config;
use crate::model::dataset::DatasetConfig;
use crate::model::hot::digest::{row_hash, RowDigest};
use crate::model::object::{join_key, ObjectMeta};
use crate::model::partition::PartitionTemplate;
use crate::model::plan::is_data_file;
use crate::model::task::{partition_source_dir, PARTITION_MANIFEST};
use crate::ports::rows::{RowChanges, RowSelection};
use crate::ports::state::StateStore;
use crate::ports::store::{list_all, DeleteRequest, ObjectStore, PutMode};
use crate::services::backup::{keep_files, Kept};
use crate::services::upsert::{route, routing_columns, template_fields};
use crate::support::faults::crash_point;
use crate::support::progress::Progress;

/// The record of a repartition, in the destination.
pub const MARKER: &str = "_compactor/repartition.json";
/// The names of the pieces the write phase leaves in the target partitions.
const PIECE: &str = "repartition-";
/// Rows per decoded batch.
const BATCH: usize = 65_536;

/// What to repartition, and where.
#[derive(Clone, Debug)]
pub struct RepartitionOptions {
    /// The source's files: every data file under this prefix (`key=value` directory levels
    /// are columns of its rows, as in Hive layouts).
    pub source_prefix: String,
    /// Where the source is, for the record and messages.
    pub source_label: String,
    /// The destination dataset: its prefix, its new template, its file and row group sizes.
    pub target: DatasetConfig,
    pub dry_run: bool,
    pub delete_source: bool,
    /// A SQL select list applied to every source row before it is routed (`*, price * 100 AS
    /// cents`), planned by `row_changes`.
    pub select: Option<String>,
    pub row_changes: Option<Arc<dyn RowChanges>>,
    /// With `delete_source`: keep the source files under this prefix of the source's store
    /// (with records `compactor restore` reads) before any is deleted.
    pub backup: Option<String>,
}

/// How far a repartition got (the record's phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Writing,
    Written,
    Validated,
    SourceDeleted,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    source: String,
    source_prefix: String,
    template: String,
    #[serde(default)]
    select: Option<String>,
    phase: Phase,
    files: Vec<ObjectMeta>,
    #[serde(default)]
    source_digest: Option<RowDigest>,
    #[serde(default)]
    target_digest: Option<RowDigest>,
}

/// A target partition of the estimate.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetEstimate {
    pub partition: String,
    pub rows: u64,
    /// At the source's bytes per row.
    pub bytes: u64,
}

/// What a repartition found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepartitionReport {
    pub dry_run: bool,
    pub source_files: usize,
    pub source_bytes: u64,
    pub source_rows: u64,
    pub targets: Vec<TargetEstimate>,
    /// The phase a rerun found in the record (`None`: a fresh start).
    pub resumed_from: Option<Phase>,
    pub pieces_written: usize,
    pub compacted_partitions: usize,
    pub target_files: usize,
    pub target_bytes: u64,
    pub source_digest: Option<RowDigest>,
    pub target_digest: Option<RowDigest>,
    pub validated: bool,
    pub source_files_deleted: usize,
    /// Source files left in place: changed since the start, or arrived after it.
    pub source_files_kept: Vec<String>,
    /// What the compaction of the destination could not do.
    pub compaction_problems: Vec<String>,
}

/// Runs a repartition from `source` into `target` (compacted with `config`'s settings, its
/// state in `state`). A dry run may have no `target` yet (a destination still to be created).
pub async fn repartition(
    source: Arc<dyn ObjectStore>,
    target: Option<Arc<dyn ObjectStore>>,
    state: Option<Arc<dyn StateStore>>,
    config: &Config,
    options: &RepartitionOptions,
    progress: Arc<dyn Progress>,
    run: RunOptions,
) -> Result<RepartitionReport> {
    options.target.validate()?;
    let template = options.target.template()?;
    let mut report = RepartitionReport {
        dry_run: options.dry_run,
        ..RepartitionReport::default()
    };
    let listed = source_files(source.as_ref(), &options.source_prefix).await?;
    let record = match &target {
        Some(t) if t.head(MARKER).await?.is_some() => Some(read_record(t.as_ref()).await?),
        _ => None,
    };
    let mut record = match record {
        Some(r) => {
            if r.source != options.source_label
                || r.source_prefix != options.source_prefix
                || r.template != template.as_str()
                || r.select != options.select
            {
                return Err(Error::Other(format!(
                    "the destination holds another repartition ({} {} into {}{}); rerun that one with the same arguments, or pick an empty destination",
                    r.source,
                    r.source_prefix,
                    r.template,
                    r.select.as_ref().map(|s| format!(", --select {s:?}")).unwrap_or_default()
                )));
            }
            report.resumed_from = Some(r.phase);
            r
        }
        None => {
            let existing = match &target {
                Some(t) => source_files(t.as_ref(), &options.target.source_prefix).await?,
                None => Vec::new(),
            };
            if let Some(first) = existing.first() {
                return Err(Error::Other(format!(
                    "the destination already holds data under {:?} ({} and {} more); a repartition writes into an empty destination",
                    options.target.source_prefix,
                    first.key,
                    existing.len() - 1
                )));
            }
            Record {
                source: options.source_label.clone(),
                source_prefix: options.source_prefix.clone(),
                template: template.as_str().to_string(),
                select: options.select.clone(),
                phase: Phase::Writing,
                files: listed.clone(),
                source_digest: None,
                target_digest: None,
            }
        }
    };
    if record.files.is_empty() {
        return Err(Error::Other(format!(
            "{} holds no data file under {:?}",
            options.source_label, options.source_prefix
        )));
    }
    report.source_files = record.files.len();
    report.source_bytes = record.files.iter().map(|f| f.size).sum();
    report.source_files_kept = listed
        .iter()
        .filter(|f| !record.files.iter().any(|r| r.key == f.key))
        .map(|f| format!("{}: arrived after the repartition started", f.key))
        .collect();
    if options.dry_run || record.phase == Phase::Writing {
        let (rows, targets) = estimate(&source, &record.files, options, &template).await?;
        report.source_rows = rows;
        report.targets = targets;
    }
    if options.dry_run {
        return Ok(report);
    }
    let target = target.ok_or_else(|| Error::Other("the repartition has no destination".into()))?;
    if record.phase == Phase::Writing {
        put_record(target.as_ref(), &record).await?;
        remove_pieces(target.as_ref(), &options.target.source_prefix).await?;
        let (pieces, digest) = write_pieces(
            &source,
            &target,
            &record.files,
            options,
            &template,
            progress.as_ref(),
        )
        .await?;
        report.pieces_written = pieces;
        record.source_digest = Some(digest);
        record.phase = Phase::Written;
        put_record(target.as_ref(), &record).await?;
        crash_point("after-repartition-write");
    }
    if record.phase == Phase::Written {
        let state = state
            .ok_or_else(|| Error::Other("compacting the destination needs a state store".into()))?;
        let mut dst = config.clone();
        dst.datasets = vec![options.target.clone()];
        dst.hot_datasets.clear();
        let summary = run_local(
            &dst,
            Arc::clone(&target),
            state,
            None,
            progress,
            &RunOptions {
                force: true,
                rewrite: None,
                datasets: None,
                partitions: None,
                ..run
            },
        )
        .await?;
        report.compacted_partitions = summary.commits.len();
        report.compaction_problems = problems(&summary);
        let digest = target_digest(&target, &options.target).await?;
        report.target_files = digest.1;
        report.target_bytes = digest.2;
        record.target_digest = Some(digest.0);
        if record.source_digest != record.target_digest {
            put_record(target.as_ref(), &record).await?;
            return Err(Error::Other(format!(
                "validation failed: the source holds {} but the destination {}; the source was left as it is",
                record.source_digest.map(|d| d.to_string()).unwrap_or_default(),
                digest.0
            )));
        }
        record.phase = Phase::Validated;
        put_record(target.as_ref(), &record).await?;
    }
    report.source_digest = record.source_digest;
    report.target_digest = record.target_digest;
    report.source_rows = record.source_digest.map_or(report.source_rows, |d| d.rows);
    report.validated = true;
    if options.delete_source && record.phase == Phase::Validated {
        if let Some(prefix) = &options.backup {
            keep_sources(source.as_ref(), prefix, &record.files, options, &template).await?;
        }
        for file in &record.files {
            crash_point("before-source-delete");
            // Only the version the repartition read (a conditional delete).
            let failed = source
                .delete_many(&[DeleteRequest {
                    key: file.key.clone(),
                    version: Some(file.version.clone()),
                }])
                .await?;
            match failed.first() {
                None => report.source_files_deleted += 1,
                Some(f) => report
                    .source_files_kept
                    .push(format!("{}: not deleted ({})", f.key, f.reason)),
            }
        }
        record.phase = Phase::SourceDeleted;
        put_record(target.as_ref(), &record).await?;
    }
    Ok(report)
}

/// Keeps the source files under `prefix` before they are deleted: one backup record per
/// source directory, which `compactor restore` reads to put them back.
async fn keep_sources(
    store: &dyn ObjectStore,
    prefix: &str,
    files: &[ObjectMeta],
    options: &RepartitionOptions,
    template: &PartitionTemplate,
) -> Result<()> {
    let mut by_dir: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    for file in files {
        let rel = file
            .key
            .strip_prefix(&options.source_prefix)
            .unwrap_or(&file.key);
        let dir = rel.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        by_dir.entry(dir).or_default().push(file.clone());
    }
    for (dir, files) in by_dir {
        let kept = Kept {
            dataset: &options.target.name,
            partition: &dir,
            id: "repartition",
            what: format!("repartition into the layout {}", template.as_str()),
            set: Vec::new(),
            manifest_key: join_key(&[&options.source_prefix, &dir, PARTITION_MANIFEST]),
            outputs: Vec::new(),
        };
        keep_files(store, prefix, &files, kept).await?;
    }
    Ok(())
}

async fn read_record(store: &dyn ObjectStore) -> Result<Record> {
    let (data, _) = store.get(MARKER).await?;
    serde_json::from_slice(&data).map_err(|e| Error::Manifest {
        key: MARKER.to_string(),
        message: format!("unreadable repartition record: {e}"),
    })
}

async fn put_record(store: &dyn ObjectStore, record: &Record) -> Result<()> {
    let data = serde_json::to_vec_pretty(record).map_err(|e| Error::Other(e.to_string()))?;
    store
        .put(MARKER, bytes::Bytes::from(data), PutMode::Overwrite)
        .await?;
    Ok(())
}

/// Removes the pieces an interrupted write left (nothing has read them yet).
async fn remove_pieces(store: &dyn ObjectStore, prefix: &str) -> Result<()> {
    for file in source_files(store, prefix).await? {
        if crate::model::object::file_name(&file.key).starts_with(PIECE) {
            let failed = store
                .delete_many(&[DeleteRequest {
                    key: file.key.clone(),
                    version: None,
                }])
                .await?;
            if let Some(f) = failed.first() {
                return Err(Error::Other(format!(
                    "removing the piece {} of an interrupted write: {}",
                    f.key, f.reason
                )));
            }
        }
    }
    Ok(())
}

/// Every data file under `prefix` (the compactor's own folders left out), by key.
async fn source_files(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let listing = list_all(store, prefix, None).await?;
    let mut files: Vec<ObjectMeta> = listing
        .objects
        .into_iter()
        .filter(|o| {
            is_data_file(&o.key, ".parquet")
                && !o.key.split('/').any(|level| level.starts_with('_'))
        })
        .collect();
    files.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(files)
}

/// The `key=value` directory levels of `key` below `prefix`.
fn hive_values(prefix: &str, key: &str) -> Vec<(String, String)> {
    let rel = key.strip_prefix(prefix).unwrap_or(key);
    let dirs: Vec<&str> = rel.split('/').collect();
    dirs[..dirs.len().saturating_sub(1)]
        .iter()
        .filter_map(|level| level.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `batch` with the file's `key=value` levels as text columns (those it lacks).
fn with_hive(batch: &RecordBatch, values: &[(String, String)]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    for (k, v) in values {
        if schema.field_with_name(k).is_ok() || fields.iter().any(|f| f.name() == k) {
            continue;
        }
        fields.push(Arc::new(Field::new(k, DataType::Utf8, false)));
        columns.push(Arc::new(StringArray::from(vec![v.as_str(); batch.num_rows()])) as ArrayRef);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::parquet("partition columns", e))
}

/// Reads `meta` in batches (only `columns`, when given), each with its `key=value` levels
/// below `prefix` as columns (`None`: without them).
async fn read_file(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    prefix: Option<&str>,
    columns: Option<&[String]>,
    mut each: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<u64> {
    let footer = read_footer(store.as_ref(), &meta.key).await?;
    let arrow = ArrowReaderMetadata::try_new(Arc::clone(&footer), Default::default())
        .map_err(|e| Error::parquet(&meta.key, e))?;
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
        StoreReader::ranged(Arc::clone(store), meta),
        arrow.clone(),
    )
    .with_batch_size(BATCH);
    if let Some(columns) = columns {
        let wanted: Vec<usize> = columns
            .iter()
            .filter_map(|c| arrow.schema().index_of(c).ok())
            .collect();
        builder = builder.with_projection(ProjectionMask::roots(
            footer.file_metadata().schema_descr(),
            wanted,
        ));
    }
    let values = prefix.map_or_else(Vec::new, |p| hive_values(p, &meta.key));
    let mut stream = builder.build().map_err(|e| Error::parquet(&meta.key, e))?;
    let mut rows = 0;
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| Error::parquet(&meta.key, e))?
    {
        rows += batch.num_rows() as u64;
        each(with_hive(&batch, &values)?)?;
    }
    Ok(rows)
}

/// Rows per target partition, from the partition-field columns alone (with a select list:
/// from the selected rows).
async fn estimate(
    store: &Arc<dyn ObjectStore>,
    files: &[ObjectMeta],
    options: &RepartitionOptions,
    template: &PartitionTemplate,
) -> Result<(u64, Vec<TargetEstimate>)> {
    let wanted = template_fields(template);
    let mut selector = Selector::new(options)?;
    let mut targets: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut total = 0;
    for meta in files {
        let mut routed: BTreeMap<String, u64> = BTreeMap::new();
        let mut first = total as usize;
        let columns = selector.is_none().then_some(wanted.as_slice());
        let prefix = Some(options.source_prefix.as_str());
        let rows = read_file(store, meta, prefix, columns, |batch| {
            let batch = selector.apply(batch).map_err(|e| in_file(meta, e))?;
            for p in route(&batch, template, first).map_err(|e| in_file(meta, e))? {
                *routed.entry(p).or_default() += 1;
            }
            first += batch.num_rows();
            Ok(())
        })
        .await?;
        let per_row = meta.size as f64 / rows.max(1) as f64;
        for (p, n) in routed {
            let t = targets.entry(p).or_default();
            t.0 += n;
            t.1 += n as f64 * per_row;
        }
        total += rows;
    }
    Ok((
        total,
        targets
            .into_iter()
            .map(|(partition, (rows, bytes))| TargetEstimate {
                partition,
                rows,
                bytes: bytes as u64,
            })
            .collect(),
    ))
}

/// A repartition's select list, planned for each schema the source's files have.
struct Selector {
    select: Option<(String, Arc<dyn RowChanges>)>,
    planned: Option<(arrow::datatypes::SchemaRef, Arc<dyn RowSelection>)>,
}

impl Selector {
    fn new(options: &RepartitionOptions) -> Result<Self> {
        let select = match &options.select {
            None => None,
            Some(s) => Some((
                s.clone(),
                options.row_changes.clone().ok_or_else(|| {
                    Error::Expression(
                        "--select needs the SQL engine, which this build does not link".into(),
                    )
                })?,
            )),
        };
        Ok(Self {
            select,
            planned: None,
        })
    }

    fn is_none(&self) -> bool {
        self.select.is_none()
    }

    /// `batch`'s selected rows (all of it, without a select list).
    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let Some((select, changes)) = &self.select else {
            return Ok(batch);
        };
        let schema = batch.schema();
        let selection = match &self.planned {
            Some((s, planned)) if *s == schema => Arc::clone(planned),
            _ => {
                let planned = changes.plan_select(select, &schema)?;
                self.planned = Some((Arc::clone(&schema), Arc::clone(&planned)));
                planned
            }
        };
        selection.project(&batch)
    }
}

fn in_file(meta: &ObjectMeta, e: Error) -> Error {
    match e {
        Error::Expression(m) => Error::Expression(format!("{}: {m}", meta.key)),
        e => Error::Other(format!("{}: {e}", meta.key)),
    }
}

/// Writes each source file's rows into pieces under their target partitions; returns the
/// pieces written and the source's digest.
async fn write_pieces(
    source: &Arc<dyn ObjectStore>,
    target: &Arc<dyn ObjectStore>,
    files: &[ObjectMeta],
    options: &RepartitionOptions,
    template: &PartitionTemplate,
    progress: &dyn Progress,
) -> Result<(usize, RowDigest)> {
    progress.planned(files.len(), files.iter().map(|f| f.size).sum());
    let props = writer_properties(&options.target, None)?;
    let mut selector = Selector::new(options)?;
    let mut digest = RowDigest::default();
    let mut pieces = 0;
    for (index, meta) in files.iter().enumerate() {
        let mut parts: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        read_file(source, meta, Some(&options.source_prefix), None, |batch| {
            let batch = selector.apply(batch).map_err(|e| in_file(meta, e))?;
            let routes = route(&batch, template, 0).map_err(|e| in_file(meta, e))?;
            let kept = without(&batch, &routing_columns(&batch.schema(), template))?;
            digest.add(&digest_rows(&kept, &routes)?);
            let mut rows: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            for (i, p) in routes.iter().enumerate() {
                rows.entry(p.as_str()).or_default().push(i as u32);
            }
            for (p, idx) in rows {
                let idx = UInt32Array::from(idx);
                let columns = kept
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &idx, None))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::parquet(&meta.key, e))?;
                let part = RecordBatch::try_new(kept.schema(), columns)
                    .map_err(|e| Error::parquet(&meta.key, e))?;
                parts.entry(p.to_string()).or_default().push(part);
            }
            Ok(())
        })
        .await?;
        for (partition, batches) in parts {
            let Some(first) = batches.first() else {
                continue;
            };
            let batch = arrow::compute::concat_batches(&first.schema(), &batches)
                .map_err(|e| Error::parquet(&meta.key, e))?;
            let key = join_key(&[
                &partition_source_dir(&options.target, &partition),
                &format!("{PIECE}{index:06}.parquet"),
            ]);
            let data = encode(&batch, Some(props.clone()), &key)?;
            target.put(&key, data, PutMode::Overwrite).await?;
            pieces += 1;
        }
        tracing::info!(file = %meta.key, done = index + 1, of = files.len(), "repartitioned");
        progress.input_read(meta.size);
        progress.task_done(&format!(
            "written: {} of {} source files",
            index + 1,
            files.len()
        ));
        crash_point("mid-repartition");
    }
    Ok((pieces, digest))
}

/// `batch` without the columns `names`.
fn without(batch: &RecordBatch, names: &[String]) -> Result<RecordBatch> {
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !names.contains(f.name()))
        .map(|(i, _)| i)
        .collect();
    batch
        .project(&keep)
        .map_err(|e| Error::parquet("repartition", e))
}

/// The digest of rows: each row's hash covers its partition and its columns' values, the
/// columns taken in name order (so that the order of columns in a file does not matter).
fn digest_rows(batch: &RecordBatch, partitions: &[String]) -> Result<RowDigest> {
    let schema = batch.schema();
    let mut order: Vec<usize> = (0..schema.fields().len()).collect();
    order.sort_by(|a, b| schema.field(*a).name().cmp(schema.field(*b).name()));
    let fields: Vec<SortField> = order
        .iter()
        .map(|&i| SortField::new(schema.field(i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(|e| Error::parquet("digest", e))?;
    let columns: Vec<ArrayRef> = order.iter().map(|&i| Arc::clone(batch.column(i))).collect();
    let rows = converter
        .convert_columns(&columns)
        .map_err(|e| Error::parquet("digest", e))?;
    let names: Vec<&str> = order
        .iter()
        .map(|&i| schema.field(i).name().as_str())
        .collect();
    let header = names.join("\u{1f}");
    let mut digest = RowDigest::default();
    let mut buf = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        buf.clear();
        buf.extend_from_slice(partitions[i].as_bytes());
        buf.push(0);
        buf.extend_from_slice(header.as_bytes());
        buf.push(0);
        buf.extend_from_slice(row.as_ref());
        digest.add_hash(row_hash(&buf));
    }
    Ok(digest)
}

/// The destination's digest (every data file under the target prefix, its partition from its
/// directory), its files and bytes.
async fn target_digest(
    store: &Arc<dyn ObjectStore>,
    target: &DatasetConfig,
) -> Result<(RowDigest, usize, u64)> {
    let files = source_files(store.as_ref(), &target.source_prefix).await?;
    let mut digest = RowDigest::default();
    for meta in &files {
        let partition = {
            let rel = meta
                .key
                .strip_prefix(&target.source_prefix)
                .unwrap_or(&meta.key);
            rel.rsplit_once('/').map_or("", |(dir, _)| dir).to_string()
        };
        read_file(store, meta, None, None, |batch| {
            // The file's own columns: its directory is the partition.
            digest.add(&digest_rows(
                &batch,
                &vec![partition.clone(); batch.num_rows()],
            )?);
            Ok(())
        })
        .await?;
    }
    Ok((digest, files.len(), files.iter().map(|f| f.size).sum()))
}

/// What the compaction of the destination reported as not done.
fn problems(summary: &RunSummary) -> Vec<String> {
    let mut out: Vec<String> = summary
        .failures
        .iter()
        .map(|f| format!("{} {}: {}", f.partition, f.task_id, f.error))
        .collect();
    out.extend(
        summary
            .refused
            .iter()
            .map(|(dir, reason)| format!("{dir}: {reason}")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn batch(ids: &[i64], notes: &[&str], reversed: bool) -> RecordBatch {
        let id = ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef);
        let note = (
            "note",
            Arc::new(StringArray::from(notes.to_vec())) as ArrayRef,
        );
        let columns = match reversed {
            false => vec![id, note],
            true => vec![note, id],
        };
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn the_digest_is_a_multiset_of_partition_and_values_whatever_the_column_order() {
        let parts = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = digest_rows(&batch(&[1, 2], &["x", "y"], false), &parts(&["p=1", "p=2"])).unwrap();
        // Rows in another order, columns in another order: the same multiset.
        let b = digest_rows(&batch(&[2, 1], &["y", "x"], true), &parts(&["p=2", "p=1"])).unwrap();
        assert_eq!(a, b);
        // A changed value, a row in another partition, a duplicated row: different.
        let changed =
            digest_rows(&batch(&[1, 2], &["x", "z"], false), &parts(&["p=1", "p=2"])).unwrap();
        let moved =
            digest_rows(&batch(&[1, 2], &["x", "y"], false), &parts(&["p=1", "p=1"])).unwrap();
        let mut twice = a;
        twice.add(&digest_rows(&batch(&[1], &["x"], false), &parts(&["p=1"])).unwrap());
        for other in [changed, moved, twice] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn hive_levels_below_the_prefix_are_columns() {
        assert_eq!(
            hive_values("events/", "events/venue=A/dt=2024-01-01/f.parquet"),
            vec![
                ("venue".to_string(), "A".to_string()),
                ("dt".to_string(), "2024-01-01".to_string())
            ]
        );
        assert!(hive_values("events/", "events/f.parquet").is_empty());
    }
}
