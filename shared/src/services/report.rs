//! The lake health report: per dataset and partition, what the files are (counts, sizes, rows,
//! small files, fragmented row groups, codecs, schema variants), what is wrong (corrupt and
//! quarantined files, files that arrived after the last compaction, a failed round, gaps in the
//! series) and, for hot datasets, the rows past finality still in Postgres. It reads listings,
//! footers (two ranged reads per file, never a data page), partition manifests and state
//! records only, with footer reads concurrent and nothing kept per file beyond its partition.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;

use crate::error::Result;
use crate::format::io::{layout_of, read_footer};
use crate::model::config::Config;
use crate::model::dataset::DatasetConfig;
use crate::model::hot::cold::DeleteState;
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::range::{final_through, KeyRange};
use crate::model::manifest::PartitionManifest;
use crate::model::object::ObjectMeta;
use crate::model::plan::is_data_file;
use crate::model::report::{
    judge, range_gaps, sort_worst_first, time_gaps, time_partition, BacklogRange, DatasetHealth,
    FileNote, HealthRules, HotHealth, LakeReport, PartitionHealth, SchemaVariant, StateNote,
    Totals, MAX_NAMED_FILES, REPORT_FORMAT,
};
use crate::model::schema::unify;
use crate::model::state::{PartitionId, PartitionStatus};
use crate::model::task::{partition_output_dir, partition_source_dir, PARTITION_MANIFEST};
use crate::ports::hot::HotSource;
use crate::ports::state::StateStore;
use crate::ports::store::{list_all, read_json, ObjectStore};
use crate::services::planner::discover;

/// Footers read at once.
const FOOTER_READS: usize = 32;

/// Which files' footers the report reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Footers {
    /// Every file's: rows, row groups, codecs and schemas are complete.
    All,
    /// Only those of files at or over `small_file_threshold` (what fragmentation needs): the
    /// cheap figures a scheduled sweep emits as metrics.
    LargeOnly,
}

#[derive(Clone, Debug)]
pub struct ReportOptions {
    pub now: DateTime<Utc>,
    /// Time partitions that start before this are left out.
    pub since: Option<DateTime<Utc>>,
    /// Only these datasets (none: every one).
    pub datasets: Vec<String>,
    pub footers: Footers,
}

pub struct Reporter {
    store: Arc<dyn ObjectStore>,
    state: Arc<dyn StateStore>,
    hot: Option<Arc<dyn HotSource>>,
}

impl Reporter {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        state: Arc<dyn StateStore>,
        hot: Option<Arc<dyn HotSource>>,
    ) -> Self {
        Self { store, state, hot }
    }

    pub async fn report(&self, config: &Config, options: &ReportOptions) -> Result<LakeReport> {
        let wanted =
            |name: &str| options.datasets.is_empty() || options.datasets.iter().any(|d| d == name);
        let mut report = LakeReport {
            format: REPORT_FORMAT,
            generated_at_ms: options.now.timestamp_millis(),
            since_ms: options.since.map(|t| t.timestamp_millis()),
            ..LakeReport::default()
        };
        for ds in config.datasets.iter().filter(|d| wanted(&d.name)) {
            let health = self
                .file_dataset(ds, &config.staging_prefix, options)
                .await?;
            report.totals.add(&health.totals);
            report.datasets.push(health);
        }
        for hot in config.hot_datasets.iter().filter(|d| wanted(&d.name)) {
            let health = self.hot_dataset(hot).await?;
            report.totals.add(&health.totals);
            report.datasets.push(health);
        }
        Ok(report)
    }

    async fn file_dataset(
        &self,
        ds: &DatasetConfig,
        staging_prefix: &str,
        options: &ReportOptions,
    ) -> Result<DatasetHealth> {
        ds.validate()?;
        let template = ds.template()?;
        let mut partitions = Vec::new();
        let mut times: BTreeMap<String, BTreeSet<DateTime<Utc>>> = BTreeMap::new();
        let mut ranges: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        let mut families: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for partition in discover(self.store.as_ref(), ds, staging_prefix).await? {
            let values = template.parse_partition(&partition).ok();
            let start = values.as_ref().and_then(|v| v.span).map(|(s, _)| s);
            if let (Some(since), Some(start)) = (options.since, start) {
                if start < since {
                    continue;
                }
            }
            let mut health = self.partition(ds, &partition, options).await?;
            health.start_ms = start.map(|s| s.timestamp_millis());
            if health.files > 0 {
                if let Some(values) = &values {
                    let family: BTreeMap<String, String> = values
                        .family()
                        .into_iter()
                        .filter(|(k, _)| !is_time_field(k))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    let name = family_name(&family);
                    if let Some(start) = start {
                        times.entry(name.clone()).or_default().insert(start);
                    }
                    if let Some(range) = values.integer_range() {
                        ranges.entry(name.clone()).or_default().push(range);
                    }
                    families.insert(name, family);
                }
            }
            partitions.push(health);
        }
        let granularity = template.has_time().then(|| template.granularity());
        let known: BTreeSet<String> = partitions.iter().map(|p| p.partition.clone()).collect();
        let mut gaps = Vec::new();
        if let Some(granularity) = granularity {
            // A span is expected once it ended `grace` ago (writers may still be catching up).
            let settled = options.now - chrono::Duration::from_std(ds.grace.0).unwrap_or_default();
            for (family, start) in time_gaps(&times, granularity, options.since, settled) {
                let fields = families.get(&family).cloned().unwrap_or_default();
                gaps.push((
                    time_partition(&template, &fields, start)
                        .unwrap_or_else(|| format!("{family}@{}", start.to_rfc3339())),
                    Some(start.timestamp_millis()),
                ));
            }
        }
        for (family, start, end) in range_gaps(&ranges) {
            let fields = families.get(&family).cloned().unwrap_or_default();
            gaps.push((
                template
                    .render(&fields, None, Some((start, end)))
                    .unwrap_or_else(|| format!("{family}@{start}-{end}")),
                None,
            ));
        }
        for (partition, start_ms) in gaps {
            // A directory with no data files is reported as it is (and is a gap too).
            if known.contains(&partition) {
                continue;
            }
            partitions.push(PartitionHealth {
                partition,
                start_ms,
                ..PartitionHealth::default()
            });
        }
        let rules = HealthRules {
            min_file_count: ds.min_file_count,
        };
        let mut totals = Totals::default();
        for p in &mut partitions {
            judge(p, rules);
            totals.add_partition(p);
        }
        sort_worst_first(&mut partitions);
        Ok(DatasetHealth {
            dataset: ds.name.clone(),
            kind: "files".into(),
            granularity,
            partitions,
            hot: None,
            totals,
        })
    }

    async fn partition(
        &self,
        ds: &DatasetConfig,
        partition: &str,
        options: &ReportOptions,
    ) -> Result<PartitionHealth> {
        let store = self.store.as_ref();
        let source = partition_source_dir(ds, partition);
        let output = partition_output_dir(ds, partition);
        let mut files: Vec<ObjectMeta> = list_all(store, &source, Some('/')).await?.objects;
        if output != source {
            files.extend(list_all(store, &output, Some('/')).await?.objects);
        }
        files.retain(|f| is_data_file(&f.key, &ds.file_suffix));
        let manifest: PartitionManifest =
            read_json(store, &format!("{output}{PARTITION_MANIFEST}"))
                .await?
                .unwrap_or_default();
        let own = manifest.compacted_keys();
        let quarantined: Vec<FileNote> = manifest
            .quarantined
            .iter()
            .map(|q| FileNote {
                key: q.key.clone(),
                reason: q.reason.clone(),
            })
            .collect();
        let in_quarantine: BTreeSet<String> = quarantined.iter().map(|q| q.key.clone()).collect();
        let record = self
            .state
            .get(&PartitionId::new(&ds.name, partition))
            .await?;
        let last_compacted = record.as_ref().and_then(|r| r.last_compacted_ms);
        let threshold = ds.small_file_threshold.bytes();
        let mut health = PartitionHealth {
            partition: partition.to_string(),
            files: files.len() as u64,
            bytes: files.iter().map(|f| f.size).sum(),
            quarantined,
            state: record.as_ref().map(|r| StateNote {
                status: r.status.as_str().to_string(),
                last_compacted_ms: r.last_compacted_ms,
                lease_holder: r.lease.as_ref().map(|l| l.owner.clone()),
                last_error: r.last_error.clone(),
                failures: r.failures,
            }),
            ..PartitionHealth::default()
        };
        for f in files
            .iter()
            .filter(|f| !own.contains(&f.key) && !in_quarantine.contains(&f.key))
        {
            if f.size < threshold {
                health.small_files += 1;
            }
            if last_compacted.is_some_and(|t| f.last_modified_ms > t) {
                health.late_files += 1;
            }
        }
        // Footers: concurrent; each summarized as soon as it is read.
        let read: Vec<&ObjectMeta> = files
            .iter()
            .filter(|f| !in_quarantine.contains(&f.key))
            .filter(|f| options.footers == Footers::All || f.size >= threshold)
            .collect();
        let mut codecs = BTreeSet::new();
        let mut schemas: Vec<(arrow::datatypes::SchemaRef, Vec<String>)> = Vec::new();
        let mut footers = futures::stream::iter(read)
            .map(|f| async move { (f, read_footer(store, &f.key).await) })
            .buffer_unordered(FOOTER_READS);
        while let Some((file, footer)) = footers.next().await {
            let footer = match footer {
                Ok(footer) => footer,
                Err(e) => {
                    health.corrupt.push(FileNote {
                        key: file.key.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let layout = layout_of(&footer);
            health.rows += layout.row_groups.iter().map(|g| g.rows).sum::<u64>();
            health.row_groups += layout.row_groups.len() as u64;
            codecs.extend(layout.codecs.iter().cloned());
            if file.size >= threshold && !own.contains(&file.key) {
                let tiny = layout.fragmented_row_groups(ds) as u64;
                if tiny >= 2 {
                    health.fragmented_files += 1;
                    health.fragmented_row_groups += tiny;
                }
            }
            let meta = footer.file_metadata();
            match parquet::arrow::parquet_to_arrow_schema(
                meta.schema_descr(),
                meta.key_value_metadata(),
            ) {
                Ok(schema) => {
                    let schema = Arc::new(schema);
                    match schemas
                        .iter_mut()
                        .find(|(s, _)| s.fields() == schema.fields())
                    {
                        Some((_, keys)) => keys.push(file.key.clone()),
                        None => schemas.push((schema, vec![file.key.clone()])),
                    }
                }
                Err(e) => health.corrupt.push(FileNote {
                    key: file.key.clone(),
                    reason: format!("schema not readable as Arrow: {e}"),
                }),
            }
        }
        health.corrupt.sort_by(|a, b| a.key.cmp(&b.key));
        health.codecs = codecs.into_iter().collect();
        health.schema_variants = schema_variants(ds, partition, &schemas);
        Ok(health)
    }

    async fn hot_dataset(&self, hot: &HotDatasetConfig) -> Result<DatasetHealth> {
        hot.validate()?;
        let mut health = HotHealth::default();
        let flagged = self
            .state
            .list_by_status(&hot.name, PartitionStatus::Flagged)
            .await?;
        let compacted = self
            .state
            .list_by_status(&hot.name, PartitionStatus::Compacted)
            .await?;
        health.ranges_flagged = flagged.len() as u64;
        let records: HashMap<String, _> = flagged
            .iter()
            .chain(&compacted)
            .filter_map(|r| r.cold.as_ref().map(|c| (r.id.partition.clone(), c.clone())))
            .collect();
        health.ranges_exported = records.len() as u64;
        health.ranges_moved = records
            .values()
            .filter(|c| matches!(c.delete, DeleteState::Moved { .. }))
            .count() as u64;
        if let Some(source) = &self.hot {
            health.tip = source.tip(hot).await?;
            health.final_through = health
                .tip
                .map(|tip| final_through(tip, hot.finality_depth_blocks));
            if let Some(through) = health.final_through {
                let final_end = hot.range_containing(through.saturating_add(1)).start;
                if final_end > hot.range_start {
                    health.ranges_final =
                        ((final_end - hot.range_start) / hot.range_size.max(1) as i64) as u64;
                    for (start, rows) in
                        source.range_counts(hot, hot.range_start, final_end).await?
                    {
                        let range = KeyRange {
                            start,
                            end: start + hot.range_size as i64,
                        };
                        let cold = match records.get(&range.key()).map(|c| &c.delete) {
                            None => "not exported",
                            Some(DeleteState::Kept) => "kept",
                            Some(DeleteState::Moved { .. }) => "moved",
                            Some(DeleteState::Flagged { .. }) => "flagged",
                            Some(DeleteState::Legacy) => "exported",
                        };
                        // Rows kept on purpose (the delete is off) are not a backlog.
                        if cold == "kept" && !hot.delete_after_compact {
                            continue;
                        }
                        health.backlog_rows += rows;
                        health.backlog.push(BacklogRange {
                            range: range.key(),
                            rows,
                            cold: cold.into(),
                        });
                    }
                }
            }
        }
        let totals = Totals {
            backlog_rows: health.backlog_rows,
            ..Totals::default()
        };
        Ok(DatasetHealth {
            dataset: hot.name.clone(),
            kind: "hot".into(),
            granularity: None,
            partitions: Vec::new(),
            hot: Some(health),
            totals,
        })
    }
}

fn is_time_field(name: &str) -> bool {
    matches!(
        name,
        "date" | "year" | "month" | "day" | "hour" | "minute" | "start" | "end"
    )
}

fn family_name(family: &BTreeMap<String, String>) -> String {
    family
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// The columns some files have in another type than the unified schema, or lack; a schema
/// conflict (no unified schema) is one variant naming it.
fn schema_variants(
    ds: &DatasetConfig,
    partition: &str,
    schemas: &[(arrow::datatypes::SchemaRef, Vec<String>)],
) -> Vec<SchemaVariant> {
    if schemas.len() < 2 {
        return Vec::new();
    }
    let inputs: Vec<(String, arrow::datatypes::SchemaRef)> = schemas
        .iter()
        .map(|(s, keys)| (keys[0].clone(), Arc::clone(s)))
        .collect();
    let drop: Vec<&str> = ds.seq_column.iter().map(String::as_str).collect();
    let unified = match unify(partition, &inputs, &drop) {
        Ok(u) => u,
        Err(e) => {
            return vec![SchemaVariant {
                column: "*".into(),
                detail: format!("incompatible schemas: {e}"),
                files: schemas
                    .iter()
                    .flat_map(|(_, k)| k.iter().cloned())
                    .take(MAX_NAMED_FILES)
                    .collect(),
            }]
        }
    };
    let mut variants = Vec::new();
    for field in unified.fields() {
        let mut missing = Vec::new();
        let mut other: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (schema, keys) in schemas {
            match schema.field_with_name(field.name()) {
                Err(_) => missing.extend(keys.iter().cloned()),
                Ok(f) if f.data_type() != field.data_type() => other
                    .entry(f.data_type().to_string())
                    .or_default()
                    .extend(keys.iter().cloned()),
                Ok(_) => {}
            }
        }
        if !missing.is_empty() {
            variants.push(SchemaVariant {
                column: field.name().clone(),
                detail: format!("missing from {} file(s)", missing.len()),
                files: missing.into_iter().take(MAX_NAMED_FILES).collect(),
            });
        }
        for (data_type, keys) in other {
            variants.push(SchemaVariant {
                column: field.name().clone(),
                detail: format!(
                    "{data_type} in {} file(s), unified as {}",
                    keys.len(),
                    field.data_type()
                ),
                files: keys.into_iter().take(MAX_NAMED_FILES).collect(),
            });
        }
    }
    variants
}

/// The time `since` before `now`, from a duration such as `14d` (see `support::units`).
pub fn since(now: DateTime<Utc>, window: std::time::Duration) -> DateTime<Utc> {
    let ms = now.timestamp_millis() - window.as_millis() as i64;
    Utc.timestamp_millis_opt(ms).single().unwrap_or(now)
}
