//! Planning a rewrite (`compactor delete`, `compactor update`): partitions are pruned from the
//! predicate's bounds on their template fields; in the others, every data file's footer is read
//! and the row groups whose statistics cannot rule the predicate out have the predicate's
//! columns decoded and evaluated. Files with a matching row become the inputs of one
//! [`TaskKind::Rewrite`] task per partition, which records the row groups that matched; files
//! without one are never touched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::ParquetMetaData;

use super::{DatasetPlan, PartitionOutcome, PartitionReport, PlanOptions, Planner, RecoveryReport};
use crate::error::{Error, Result};
use crate::format::io::{read_footer, StoreReader};
use crate::model::dataset::DatasetConfig;
use crate::model::estimate::estimate_task;
use crate::model::object::ObjectMeta;
use crate::model::partition::PartitionTemplate;
use crate::model::plan::SkipReason;
use crate::model::rewrite::{partition_fields, PartitionColumns, RewriteScan, RewriteSpec};
use crate::model::state::PartitionId;
use crate::model::task::{partition_output_dir, task_id, Task, TaskKind};
use crate::ports::rows::{RowChange, RowChanges};
use crate::ports::store::ObjectStore;

/// Files scanned at once.
const SCANS: usize = 8;
/// Rows per decoded batch of a scan (only the predicate's columns).
const SCAN_BATCH: usize = 65_536;

/// What the scan of one file found.
#[derive(Debug, Default)]
pub struct FileScan {
    pub rows: u64,
    pub row_groups: u64,
    /// Row groups whose predicate columns were decoded (the statistics did not rule them out).
    pub scanned: u64,
    /// Row groups with a matching row, and how many rows matched in each.
    pub matched: Vec<(usize, u64)>,
}

impl FileScan {
    pub fn rows_matched(&self) -> u64 {
        self.matched.iter().map(|(_, n)| n).sum()
    }
}

/// What the scan of one partition found.
#[derive(Debug, Default)]
pub(super) struct ScannedPartition {
    pub partition: String,
    /// Its data files.
    pub files: Vec<ObjectMeta>,
    /// Its fields rule the predicate out: no file was read.
    pub pruned: bool,
    /// The first data file's schema, and the scan (when files were read).
    pub schema: Option<SchemaRef>,
    pub scan: Option<RewriteScan>,
    /// Files whose footer or rows could not be read.
    pub unreadable: Vec<String>,
}

impl ScannedPartition {
    pub fn report(&self, outcome: PartitionOutcome) -> PartitionReport {
        PartitionReport {
            partition: self.partition.clone(),
            data_files: self.files.len(),
            data_bytes: self.files.iter().map(|f| f.size).sum(),
            outcome,
            anomaly: self.anomaly(),
            files: Vec::new(),
            rewrite: self.scan.clone(),
        }
    }

    /// The report of a partition with nothing to change: pruned by its fields, or no match.
    pub fn skipped(&self) -> PartitionReport {
        self.report(PartitionOutcome::Skipped(match self.pruned {
            true => SkipReason::Pruned,
            false => SkipReason::NoMatchingRows,
        }))
    }

    pub fn anomaly(&self) -> Option<String> {
        (!self.unreadable.is_empty()).then(|| {
            format!(
                "{} unreadable file(s) could not be checked for matching rows and were left as they are: {}",
                self.unreadable.len(),
                self.unreadable.join("; ")
            )
        })
    }
}

impl Planner {
    /// Plans a rewrite of `dataset`: one task per partition with a matching row (in a dry run:
    /// what would be done). An expression that does not fit the data fails here, before any
    /// task is dispatched.
    pub async fn plan_rewrite(
        &self,
        dataset: &DatasetConfig,
        spec: &RewriteSpec,
        options: &PlanOptions,
    ) -> Result<DatasetPlan> {
        dataset.validate()?;
        let changes = match &spec.upsert {
            Some(_) => None,
            None => Some(self.row_changes.clone().ok_or_else(|| {
                Error::Other(format!(
                    "a {} needs the SQL engine, which this build does not link; run it with the `compactor` CLI",
                    spec.verb()
                ))
            })?),
        };
        let recovery = if options.recover {
            self.recover(&dataset.name, options).await?
        } else {
            RecoveryReport::default()
        };
        let template = dataset.template()?;
        let mut partitions = match &options.only {
            Some(only) => only.clone(),
            None => self.discover(dataset).await?,
        };
        partitions.sort();
        let blocked: Vec<String> = partitions
            .iter()
            .filter(|p| {
                recovery.blocks(&crate::model::task::partition_staging_dir(
                    &self.settings.staging_prefix,
                    &PartitionId::new(&dataset.name, p.as_str()),
                ))
            })
            .cloned()
            .collect();
        let plan = |partitions| DatasetPlan {
            dataset: dataset.name.clone(),
            dry_run: options.dry_run,
            recovery,
            partitions,
            resume_after: None,
        };
        let Some(changes) = changes else {
            let reports = self
                .plan_upsert(dataset, &template, &partitions, &blocked, spec, options)
                .await?;
            return Ok(plan(reports));
        };
        let mut reports = Vec::with_capacity(partitions.len());
        for partition in partitions {
            if blocked.contains(&partition) {
                reports.push(resuming(partition));
                continue;
            }
            let planned = self
                .plan_rewrite_partition(
                    dataset,
                    &template,
                    &partition,
                    spec,
                    changes.as_ref(),
                    options,
                )
                .await;
            match planned {
                Ok(report) => reports.push(report),
                Err(e @ Error::Expression(_)) => return Err(e),
                Err(e) => {
                    tracing::error!(dataset = dataset.name, partition, error = %e, "planning the partition failed");
                    reports.push(PartitionReport {
                        partition,
                        data_files: 0,
                        data_bytes: 0,
                        outcome: PartitionOutcome::Failed(e.to_string()),
                        anomaly: None,
                        files: Vec::new(),
                        rewrite: None,
                    });
                }
            }
        }
        Ok(plan(reports))
    }

    #[allow(clippy::too_many_arguments)]
    async fn plan_rewrite_partition(
        &self,
        dataset: &DatasetConfig,
        template: &PartitionTemplate,
        partition: &str,
        spec: &RewriteSpec,
        changes: &dyn RowChanges,
        options: &PlanOptions,
    ) -> Result<PartitionReport> {
        let scanned = self
            .scan_partition(dataset, template, partition, spec, changes)
            .await?;
        let Some(scan) = scanned.scan.as_ref().filter(|s| !s.files.is_empty()) else {
            return Ok(scanned.skipped());
        };
        let task_spec = RewriteSpec {
            groups: scan.groups.clone(),
            ..spec.clone()
        };
        let outcome = self
            .start_rewrite(dataset, partition, &scan.files, task_spec, options, &[])
            .await?;
        Ok(scanned.report(outcome))
    }

    /// Reads the footers of a partition's data files and finds the rows `spec` matches:
    /// nothing is read when the partition's fields rule it out.
    pub(super) async fn scan_partition(
        &self,
        dataset: &DatasetConfig,
        template: &PartitionTemplate,
        partition: &str,
        spec: &RewriteSpec,
        changes: &dyn RowChanges,
    ) -> Result<ScannedPartition> {
        let values = partition_fields(template, partition)?;
        let files = self.rewrite_files(dataset, partition).await?;
        let mut scanned = ScannedPartition {
            partition: partition.to_string(),
            files,
            ..ScannedPartition::default()
        };
        let Some(first) = scanned.files.first() else {
            return Ok(scanned);
        };
        // Partition pruning, from the template fields alone (no data file is read).
        let footer = read_footer(self.store.as_ref(), &first.key).await?;
        let schema = arrow_schema(&first.key, &footer)?;
        let columns = PartitionColumns::new(&values, &schema);
        let change = changes.plan(spec, &columns.extend_schema(&schema))?;
        check_targets(change.as_ref(), &columns, &schema)?;
        let bounds = columns.bounds(1)?;
        if !change
            .may_match(&bounds, &bounds)?
            .first()
            .copied()
            .unwrap_or(true)
        {
            scanned.pruned = true;
            return Ok(scanned);
        }
        let store = &self.store;
        let scans: Vec<(ObjectMeta, Result<FileScan>)> =
            futures::stream::iter(scanned.files.clone())
                .map(|meta| {
                    let values = &values;
                    async move {
                        let scan = scan_file(Arc::clone(store), &meta, spec, changes, values).await;
                        (meta, scan)
                    }
                })
                .buffered(SCANS)
                .collect()
                .await;
        let mut scan = RewriteScan::default();
        for (meta, result) in scans {
            let found = match result {
                Ok(found) => found,
                Err(Error::CorruptInput { reason, .. }) => {
                    scanned.unreadable.push(format!("{}: {reason}", meta.key));
                    continue;
                }
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            scan.files_scanned += 1;
            scan.row_groups += found.row_groups;
            scan.row_groups_scanned += found.scanned;
            if found.matched.is_empty() {
                continue;
            }
            scan.row_groups_matched += found.matched.len() as u64;
            scan.rows_matched += found.rows_matched();
            scan.rows_in_files += found.rows;
            scan.groups.insert(
                meta.key.clone(),
                found.matched.iter().map(|(g, _)| *g).collect(),
            );
            scan.files.push(meta);
        }
        scanned.schema = Some(schema);
        scanned.scan = Some(scan);
        Ok(scanned)
    }

    /// Starts the rewrite task of a partition over `inputs` (with `staged` files in its
    /// directory).
    pub(super) async fn start_rewrite(
        &self,
        dataset: &DatasetConfig,
        partition: &str,
        inputs: &[ObjectMeta],
        task_spec: RewriteSpec,
        options: &PlanOptions,
        staged: &[(&str, bytes::Bytes)],
    ) -> Result<PartitionOutcome> {
        let id = PartitionId::new(&dataset.name, partition);
        let memory_budget = self.settings.memory_budget;
        let no_layouts = HashMap::new();
        let estimate = |task: &Task, throughput| {
            estimate_task(
                &task.inputs,
                &no_layouts,
                dataset,
                memory_budget,
                throughput,
            )
        };
        self.start_round_with(
            &id,
            options,
            estimate,
            |generation| {
                vec![Task {
                    task_id: task_id(generation, 0),
                    partition: id.clone(),
                    generation,
                    dataset: dataset.clone(),
                    staging_prefix: self.settings.staging_prefix.clone(),
                    memory_budget,
                    inputs: inputs.to_vec(),
                    created_at_ms: options.now.timestamp_millis(),
                    kind: TaskKind::Rewrite(Box::new(task_spec.clone())),
                    nonce: crate::model::task::new_nonce(),
                    lease_owner: self.settings.owner.clone(),
                }]
            },
            staged,
        )
        .await
    }

    /// The data files a rewrite looks at: the partition's files, and its earlier outputs when
    /// they live under another prefix; quarantined files are left alone.
    async fn rewrite_files(
        &self,
        dataset: &DatasetConfig,
        partition: &str,
    ) -> Result<Vec<ObjectMeta>> {
        let mut files = self.partition_files(dataset, partition).await?;
        let output = partition_output_dir(dataset, partition);
        let manifest = self.partition_manifest(dataset, partition).await?;
        for key in manifest.compacted_keys() {
            if key.starts_with(&output) && !files.iter().any(|f| f.key == key) {
                if let Some(meta) = self.store.head(&key).await? {
                    files.push(meta);
                }
            }
        }
        files.retain(|f| {
            !manifest
                .quarantined
                .iter()
                .any(|q| q.key == f.key && q.version == f.version)
        });
        files.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(files)
    }
}

/// A partition left alone because an interrupted task of it is finished first.
pub(super) fn resuming(partition: String) -> PartitionReport {
    PartitionReport {
        partition,
        data_files: 0,
        data_bytes: 0,
        outcome: PartitionOutcome::Skipped(SkipReason::Resuming),
        anomaly: None,
        files: Vec::new(),
        rewrite: None,
    }
}

/// Checks a rewrite's expressions against the first data file of `dataset` (its schema and its
/// partition's fields) before anything is opened for writing. False: the dataset has no data
/// file.
pub async fn check_rewrite(
    store: &dyn ObjectStore,
    dataset: &DatasetConfig,
    staging_prefix: &str,
    spec: &RewriteSpec,
    changes: &dyn RowChanges,
) -> Result<bool> {
    let Some((partition, schema)) = first_schema(store, dataset, staging_prefix).await? else {
        return Ok(false);
    };
    let template = dataset.template()?;
    let columns = PartitionColumns::new(&partition_fields(&template, &partition)?, &schema);
    let change = changes.plan(spec, &columns.extend_schema(&schema))?;
    check_targets(change.as_ref(), &columns, &schema)?;
    Ok(true)
}

/// The partition of the first data file of `dataset`, and the file's schema.
pub async fn first_schema(
    store: &dyn ObjectStore,
    dataset: &DatasetConfig,
    staging_prefix: &str,
) -> Result<Option<(String, SchemaRef)>> {
    for partition in super::discover(store, dataset, staging_prefix).await? {
        let dir = crate::model::task::partition_source_dir(dataset, &partition);
        let listing = crate::ports::store::list_all(store, &dir, Some('/')).await?;
        let Some(first) = listing
            .objects
            .iter()
            .find(|o| crate::model::plan::is_data_file(&o.key, &dataset.file_suffix))
        else {
            continue;
        };
        let footer = read_footer(store, &first.key).await?;
        return Ok(Some((partition, arrow_schema(&first.key, &footer)?)));
    }
    Ok(None)
}

/// A file's Arrow schema, as its footer gives it.
pub fn arrow_schema(key: &str, footer: &Arc<ParquetMetaData>) -> Result<SchemaRef> {
    ArrowReaderMetadata::try_new(Arc::clone(footer), Default::default())
        .map(|m| Arc::clone(m.schema()))
        .map_err(|e| Error::CorruptInput {
            key: key.to_string(),
            reason: format!("schema cannot be read as Arrow: {e}"),
        })
}

/// An update may set only columns of the data: a partition's template fields are its path.
pub fn check_targets(
    change: &dyn RowChange,
    columns: &PartitionColumns,
    schema: &Schema,
) -> Result<()> {
    for column in change.set_columns() {
        if columns.names().any(|n| n == column) || schema.field_with_name(&column).is_err() {
            return Err(Error::Expression(format!(
                "{column:?} is a partition field, not a column of the data; it cannot be set (move the rows with `compactor repartition` instead)"
            )));
        }
    }
    Ok(())
}

/// Scans one file for rows matching the rewrite's predicate: row groups whose statistics rule
/// it out are skipped; the others have only the columns the expressions read decoded (an
/// update's new values are computed too, and dropped).
pub async fn scan_file(
    store: Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    spec: &RewriteSpec,
    changes: &dyn RowChanges,
    partition_values: &BTreeMap<String, String>,
) -> Result<FileScan> {
    let footer = read_footer(store.as_ref(), &meta.key).await?;
    let schema = arrow_schema(&meta.key, &footer)?;
    let columns = PartitionColumns::new(partition_values, &schema);
    let change = changes.plan(spec, &columns.extend_schema(&schema))?;
    let row_groups = footer.num_row_groups();
    let (mins, maxes) = row_group_bounds(&footer, &schema, &change.predicate_columns(), &columns)?;
    let may = change.may_match(&mins, &maxes)?;
    let candidates: Vec<usize> = (0..row_groups)
        .filter(|&g| may.get(g).copied().unwrap_or(true))
        .collect();
    let mut scan = FileScan {
        rows: footer.file_metadata().num_rows().max(0) as u64,
        row_groups: row_groups as u64,
        scanned: candidates.len() as u64,
        matched: Vec::new(),
    };
    if candidates.is_empty() {
        return Ok(scan);
    }
    let wanted: Vec<usize> = change
        .read_columns()
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    let arrow_meta = ArrowReaderMetadata::try_new(Arc::clone(&footer), Default::default())
        .map_err(|e| Error::parquet(&meta.key, e))?;
    let mask = ProjectionMask::roots(footer.file_metadata().schema_descr(), wanted);
    for group in candidates {
        let reader = StoreReader::ranged(Arc::clone(&store), meta);
        let mut batches =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow_meta.clone())
                .with_batch_size(SCAN_BATCH)
                .with_row_groups(vec![group])
                .with_projection(mask.clone())
                .build()
                .map_err(|e| corrupt(&meta.key, e))?
                .map_err(|e| corrupt(&meta.key, e));
        let mut rows = 0u64;
        while let Some(batch) = batches.try_next().await? {
            let batch = columns.extend(&batch)?;
            let mask = change.matches(&batch)?;
            let matched = mask.true_count();
            if matched > 0 && !change.set_columns().is_empty() {
                // The new values are computed once here, so that an expression that fails on
                // the data (an overflow, a bad cast) fails before anything is written.
                let rows = arrow::compute::filter_record_batch(&batch, &mask)
                    .map_err(|e| Error::parquet(&meta.key, e))?;
                change.apply(&rows, &BooleanArray::from(vec![true; matched]))?;
            }
            rows += matched as u64;
        }
        if rows > 0 {
            scan.matched.push((group, rows));
        }
    }
    Ok(scan)
}

fn corrupt(key: &str, e: parquet::errors::ParquetError) -> Error {
    Error::CorruptInput {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// Per row group, the lowest and highest value of each of `names` (null where the footer has
/// no statistics), the partition fields as constants. Floating-point columns get no bounds:
/// Parquet statistics leave NaN out, and NaN matches `x > 5`.
pub fn row_group_bounds(
    footer: &ParquetMetaData,
    schema: &SchemaRef,
    names: &[String],
    columns: &PartitionColumns,
) -> Result<(RecordBatch, RecordBatch)> {
    let groups = footer.num_row_groups();
    let parquet_schema = footer.file_metadata().schema_descr();
    let mut fields = Vec::new();
    let (mut mins, mut maxes): (Vec<ArrayRef>, Vec<ArrayRef>) = (Vec::new(), Vec::new());
    for name in names {
        let Ok(field) = schema.field_with_name(name) else {
            continue;
        };
        let floating = matches!(
            field.data_type(),
            DataType::Float16 | DataType::Float32 | DataType::Float64
        );
        let bounds = StatisticsConverter::try_new(name, schema, parquet_schema)
            .ok()
            .filter(|_| !floating)
            .and_then(|c| {
                let lo = c.row_group_mins(footer.row_groups()).ok()?;
                let hi = c.row_group_maxes(footer.row_groups()).ok()?;
                Some((lo, hi))
            })
            .filter(|(lo, hi)| {
                lo.data_type() == field.data_type() && hi.data_type() == lo.data_type()
            });
        let (lo, hi) = bounds.unwrap_or_else(|| {
            (
                new_null_array(field.data_type(), groups),
                new_null_array(field.data_type(), groups),
            )
        });
        fields.push(Field::new(name, field.data_type().clone(), true));
        mins.push(lo);
        maxes.push(hi);
    }
    let constants = columns.bounds(groups)?;
    for (i, f) in constants.schema().fields().iter().enumerate() {
        fields.push(f.as_ref().clone());
        mins.push(Arc::clone(constants.column(i)));
        maxes.push(Arc::clone(constants.column(i)));
    }
    let schema = Arc::new(Schema::new(fields));
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(groups));
    let batch = |columns| {
        RecordBatch::try_new_with_options(Arc::clone(&schema), columns, &options)
            .map_err(|e| Error::parquet("row group statistics", e))
    };
    Ok((batch(mins)?, batch(maxes)?))
}
