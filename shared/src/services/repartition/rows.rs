//! The rows of a repartition: reading source files (their `key=value` levels as columns), the
//! select list, routing each row to its target partition, the write task that splits a group of
//! source files into pieces, and the multiset digest both sides are validated with.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::row::{RowConverter, SortField};
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use crate::error::{Error, Result};
use crate::format::io::{encode, read_footer, StoreReader};
use crate::format::writer::writer_properties;
use crate::model::dataset::DatasetConfig;
use crate::model::hot::digest::{row_hash, RowDigest};
use crate::model::object::ObjectMeta;
use crate::model::partition::PartitionTemplate;
use crate::model::plan::is_data_file;
use crate::model::repartition::{
    group_key, piece_key, GroupWritten, Piece, RepartitionWrite, SkippedSource,
};
use crate::model::task::new_nonce;
use crate::ports::rows::{RowChanges, RowSelection};
use crate::ports::store::{
    list_all, put_json_once, read_json, DeleteRequest, ObjectStore, PutMode,
};
use crate::services::upsert::{route, routing_columns, template_fields};
use crate::support::faults::crash_point;
use crate::support::progress::Progress;

/// Rows per decoded batch.
const BATCH: usize = 65_536;

/// A target partition of the estimate.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TargetEstimate {
    pub partition: String,
    pub rows: u64,
    /// At the source's bytes per row.
    pub bytes: u64,
}

/// Every data file under `prefix` (the compactor's own folders left out), by key.
pub async fn source_files(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<ObjectMeta>> {
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
pub async fn estimate(
    store: &Arc<dyn ObjectStore>,
    files: &[ObjectMeta],
    source_prefix: &str,
    selector: &mut Selector,
    template: &PartitionTemplate,
) -> Result<(u64, Vec<TargetEstimate>)> {
    let wanted = template_fields(template);
    let mut targets: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut total = 0;
    for meta in files {
        let mut routed: BTreeMap<String, u64> = BTreeMap::new();
        let mut first = total as usize;
        let columns = selector.is_none().then_some(wanted.as_slice());
        let prefix = Some(source_prefix);
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
pub struct Selector {
    select: Option<(String, Arc<dyn RowChanges>)>,
    planned: Option<(arrow::datatypes::SchemaRef, Arc<dyn RowSelection>)>,
}

impl Selector {
    /// The selector of `select` (none: every row as it is), planned with `changes`.
    pub fn new(select: Option<&str>, changes: Option<Arc<dyn RowChanges>>) -> Result<Self> {
        let select = match select {
            None => None,
            Some(s) => Some((
                s.to_string(),
                changes.ok_or_else(|| {
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

/// Runs a write task: splits `files` (the group's, from `source`) by target partition into
/// pieces in `target`'s staging, then records the group once. The pieces are named by this
/// attempt; when another attempt recorded the group first, this one's pieces are removed and
/// the recorded group is returned: exactly one attempt's pieces ever count.
pub async fn write_group(
    source: &Arc<dyn ObjectStore>,
    target: &Arc<dyn ObjectStore>,
    dataset: &DatasetConfig,
    spec: &RepartitionWrite,
    files: &[ObjectMeta],
    changes: Option<Arc<dyn RowChanges>>,
    progress: &dyn Progress,
) -> Result<GroupWritten> {
    let key = group_key(&spec.dir, spec.group);
    if let Some(done) = read_json::<GroupWritten>(target.as_ref(), &key).await? {
        return Ok(done);
    }
    let template = dataset.template()?;
    let props = writer_properties(dataset, None)?;
    let mut selector = Selector::new(spec.select.as_deref(), changes)?;
    let attempt = new_nonce();
    let mut written = GroupWritten {
        group: spec.group,
        attempt: attempt.clone(),
        digest: RowDigest::default(),
        pieces: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, meta) in files.iter().enumerate() {
        // Only the version listed at the start is copied (and later deleted): a file changed
        // or removed since is left in place, reported, and its rows are not copied.
        if let Some(reason) = changed(source.as_ref(), meta, "before it was copied").await? {
            written.skipped.push(SkippedSource {
                key: meta.key.clone(),
                reason,
            });
            continue;
        }
        let mut parts: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        let mut digest = RowDigest::default();
        read_file(source, meta, Some(&spec.source_prefix), None, |batch| {
            let batch = selector.apply(batch).map_err(|e| in_file(meta, e))?;
            let routes = route(&batch, &template, 0).map_err(|e| in_file(meta, e))?;
            let kept = without(&batch, &routing_columns(&batch.schema(), &template))?;
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
        if let Some(reason) = changed(source.as_ref(), meta, "while it was read").await? {
            written.skipped.push(SkippedSource {
                key: meta.key.clone(),
                reason,
            });
            continue;
        }
        written.digest.add(&digest);
        for (partition, batches) in parts {
            let Some(first) = batches.first() else {
                continue;
            };
            let batch = arrow::compute::concat_batches(&first.schema(), &batches)
                .map_err(|e| Error::parquet(&meta.key, e))?;
            let key = piece_key(&spec.dir, &partition, spec.first_file + i, &attempt);
            let data = encode(&batch, Some(props.clone()), &key)?;
            let object = target.put(&key, data, PutMode::Overwrite).await?;
            written.pieces.push(Piece { partition, object });
        }
        tracing::info!(file = %meta.key, group = spec.group, done = i + 1, of = files.len(), "repartitioned");
        progress.input_read(meta.size);
        crash_point("mid-repartition");
    }
    let mine: Vec<DeleteRequest> = written
        .pieces
        .iter()
        .map(|p| DeleteRequest {
            key: p.object.key.clone(),
            version: None,
        })
        .collect();
    let (recorded, created) = put_json_once(target.as_ref(), &key, written).await?;
    if !created {
        tracing::info!(
            group = spec.group,
            attempt,
            "another attempt recorded the group first; this one's pieces are removed"
        );
        target.delete_many(&mine).await?;
    }
    Ok(recorded)
}

/// Why `meta` is no longer the version listed (`None`: it still is).
async fn changed(store: &dyn ObjectStore, meta: &ObjectMeta, when: &str) -> Result<Option<String>> {
    Ok(match store.head(&meta.key).await? {
        Some(now) if now.version == meta.version => None,
        Some(_) => Some(format!("changed {when}; left in place, not copied")),
        None => Some(format!("removed {when}; not copied")),
    })
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
pub async fn target_digest(
    store: &Arc<dyn ObjectStore>,
    target: &DatasetConfig,
) -> Result<(RowDigest, usize, u64)> {
    let prefix = target.source_dir();
    let files = source_files(store.as_ref(), &prefix).await?;
    let mut digest = RowDigest::default();
    for meta in &files {
        let partition = {
            let rel = meta.key.strip_prefix(&prefix).unwrap_or(&meta.key);
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
