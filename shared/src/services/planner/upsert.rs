//! Planning an upsert (`compactor upsert`): the source is checked against the data's schema
//! and routed to its partitions; every partition is scanned for the source's keys (row groups
//! whose key statistics hold none are ruled out) before any task starts, so that a row is
//! inserted only when its key is nowhere in the data. Each partition with a matched key or a
//! row to insert gets one [`TaskKind::Rewrite`](crate::model::task::TaskKind::Rewrite) task:
//! its inputs are the files with a matched key, and its directory holds the source rows it
//! applies ([`UPSERT_UPDATES`]) and inserts ([`UPSERT_INSERTS`]).

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::rewrite::{first_schema, resuming, ScannedPartition};
use super::{PartitionOutcome, PartitionReport, PlanOptions, Planner};
use crate::error::{Error, Result};
use crate::format::io::encode;
use crate::model::dataset::DatasetConfig;
use crate::model::partition::PartitionTemplate;
use crate::model::rewrite::{RewriteScan, RewriteSpec, UpsertSpec, UPSERT_INSERTS, UPSERT_UPDATES};
use crate::ports::store::ObjectStore;
use crate::services::upsert::{KeyedChanges, UpsertSource};

impl Planner {
    /// Plans an upsert of `dataset` over `partitions` (sorted); `blocked`: partitions whose
    /// interrupted task is finished first. Nothing starts unless every partition could be
    /// scanned: a key in a partition not looked at could be inserted twice.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn plan_upsert(
        &self,
        dataset: &DatasetConfig,
        template: &PartitionTemplate,
        partitions: &[String],
        blocked: &[String],
        spec: &RewriteSpec,
        options: &PlanOptions,
    ) -> Result<Vec<PartitionReport>> {
        let upsert = spec
            .upsert
            .as_ref()
            .ok_or_else(|| Error::Other("not an upsert".into()))?;
        let batches = self.upsert_rows.clone().ok_or_else(|| {
            Error::Other(format!(
                "the upsert from {} has no source rows to plan with",
                upsert.source
            ))
        })?;
        if !blocked.is_empty() {
            // The interrupted tasks run now; the upsert, which must see every partition as it
            // is, waits for the next run.
            return Ok(partitions
                .iter()
                .map(|p| match blocked.contains(p) {
                    true => resuming(p.clone()),
                    false => ScannedPartition {
                        partition: p.clone(),
                        ..ScannedPartition::default()
                    }
                    .report(PartitionOutcome::Failed(format!(
                        "not upserted: {} partition(s) finished an interrupted operation first, and an upsert looks at every partition as it is; run the upsert again",
                        blocked.len()
                    ))),
                })
                .collect());
        }
        let schema =
            upsert_schema(self.store.as_ref(), dataset, &self.settings.staging_prefix).await?;
        let source = UpsertSource::of(&batches, &schema, template, upsert)?;
        let keyed = KeyedChanges::new(source.rows.clone(), &source.key, &source.update_cols)?;
        // Every partition is scanned for the keys before anything starts.
        let mut scanned = Vec::with_capacity(partitions.len());
        let mut found_anywhere = vec![false; source.rows.num_rows()];
        for partition in partitions {
            let changes = keyed.fresh();
            let scan = self
                .scan_partition(dataset, template, partition, spec, &changes)
                .await?;
            if !scan.unreadable.is_empty() {
                return Err(Error::Other(format!(
                    "partition {partition}: {}; an upsert cannot tell whether its keys are there (quarantine or repair the file(s), then run it again)",
                    scan.anomaly().unwrap_or_default()
                )));
            }
            let found = changes.found();
            for (any, here) in found_anywhere.iter_mut().zip(&found) {
                *any |= here;
            }
            scanned.push((scan, found));
        }
        let mut inserts: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (i, found) in found_anywhere.iter().enumerate() {
            if !found {
                inserts
                    .entry(source.partitions[i].as_str())
                    .or_default()
                    .push(i as u32);
            }
        }
        // Partitions that do not exist yet hold only inserts.
        for partition in inserts.keys() {
            if !partitions.iter().any(|p| p == partition) {
                scanned.push((
                    ScannedPartition {
                        partition: partition.to_string(),
                        scan: Some(RewriteScan::default()),
                        ..ScannedPartition::default()
                    },
                    Vec::new(),
                ));
            }
        }
        scanned.sort_by(|a, b| a.0.partition.cmp(&b.0.partition));
        let mut reports = Vec::with_capacity(scanned.len());
        for (mut scan, found) in scanned {
            let updates: Vec<u32> = (0..found.len() as u32)
                .filter(|&i| found[i as usize])
                .collect();
            let inserted = inserts
                .get(scan.partition.as_str())
                .cloned()
                .unwrap_or_default();
            scan.scan
                .get_or_insert_with(RewriteScan::default)
                .rows_inserted = inserted.len() as u64;
            if updates.is_empty() && inserted.is_empty() {
                reports.push(scan.skipped());
                continue;
            }
            let mut staged = Vec::new();
            if !updates.is_empty() {
                staged.push((
                    UPSERT_UPDATES,
                    encode(&source.select(&updates)?, None, "the upsert's rows")?,
                ));
            }
            if !inserted.is_empty() {
                staged.push((
                    UPSERT_INSERTS,
                    encode(&source.select(&inserted)?, None, "the upsert's rows")?,
                ));
            }
            let task_spec = RewriteSpec {
                groups: scan
                    .scan
                    .as_ref()
                    .map(|s| s.groups.clone())
                    .unwrap_or_default(),
                upsert: Some(source.spec(
                    &upsert.source,
                    updates.len() as u64,
                    inserted.len() as u64,
                )),
                ..spec.clone()
            };
            let inputs = scan
                .scan
                .as_ref()
                .map(|s| s.files.clone())
                .unwrap_or_default();
            let outcome = self
                .start_rewrite(
                    dataset,
                    &scan.partition,
                    &inputs,
                    task_spec,
                    options,
                    &staged,
                )
                .await?;
            reports.push(scan.report(outcome));
        }
        Ok(reports)
    }
}

/// The schema an upsert's rows take: the first data file's.
async fn upsert_schema(
    store: &dyn ObjectStore,
    dataset: &DatasetConfig,
    staging_prefix: &str,
) -> Result<SchemaRef> {
    match first_schema(store, dataset, staging_prefix).await? {
        Some((_, schema)) => Ok(schema),
        None => Err(Error::Expression(format!(
            "dataset {} has no data file: an upsert takes the columns and their types from the data",
            dataset.name
        ))),
    }
}

/// Checks an upsert's source rows against `dataset` (its first data file's schema and its
/// template) before anything is opened for writing.
pub async fn check_upsert(
    store: &dyn ObjectStore,
    dataset: &DatasetConfig,
    staging_prefix: &str,
    upsert: &UpsertSpec,
    batches: &[RecordBatch],
) -> Result<UpsertSource> {
    let schema = upsert_schema(store, dataset, staging_prefix).await?;
    UpsertSource::of(batches, &schema, &dataset.template()?, upsert)
}
