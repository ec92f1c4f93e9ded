//! Planning a hot dataset: which final ranges need an export (new rows past the watermark, a
//! flagged or unfinished range, rows found again below it), each planned as one
//! [`TaskKind::ExportRange`](crate::model::task::TaskKind::ExportRange) task.
use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::model::estimate::estimate_task;
use crate::model::hot::cold::DeleteState;
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::export::ExportSpec;
use crate::model::hot::range::KeyRange;
use crate::model::manifest::PartitionManifest;
use crate::model::object::ObjectMeta;
use crate::model::plan::SkipReason;
use crate::model::state::{PartitionId, PartitionStatus};
use crate::model::task::{task_id, Task, TaskKind, PARTITION_MANIFEST};
use crate::ports::hot::HotSource;
use crate::ports::state::StateStore;
use crate::ports::store::list_all;
use crate::ports::store::read_json;

use super::{DatasetPlan, PartitionOutcome, PartitionReport, PlanOptions, Planner, RecoveryReport};

impl Planner {
    /// Plans a hot dataset: the ranges named in `options.only` (partition keys), or else every
    /// final range that needs an export (see [`Planner::hot_candidates`]), at most
    /// `max_ranges_per_sweep` of them. Each becomes one export task, which keeps whatever
    /// already left Postgres and takes what Postgres holds now.
    pub async fn plan_hot_dataset(
        &self,
        hot: &HotDatasetConfig,
        options: &PlanOptions,
    ) -> Result<DatasetPlan> {
        hot.validate()?;
        let source = self.hot.as_deref().ok_or_else(|| {
            Error::config(
                "COMPACTOR_PG_DSN",
                format!(
                    "hot dataset {:?} is configured but no Postgres connection is",
                    hot.name
                ),
            )
        })?;
        let recovery = if options.recover {
            self.recover(&hot.name, options).await?
        } else {
            RecoveryReport::default()
        };
        // An unsupported column stops the dataset here, before any task exists.
        source.columns(hot).await?;
        let final_through = source
            .tip(hot)
            .await?
            .map(|tip| crate::model::hot::range::final_through(tip, hot.finality_depth_blocks));
        let ranges: Vec<(KeyRange, Option<String>)> = match &options.only {
            Some(keys) => keys
                .iter()
                .map(|k| Ok((hot.range_of_key(k)?, None)))
                .collect::<Result<_>>()?,
            None => {
                self.hot_candidates(hot, source, final_through, options)
                    .await?
            }
        };
        let mut reports = Vec::with_capacity(ranges.len());
        let mut resume_after = None;
        for (range, anomaly) in ranges {
            if options
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
            {
                resume_after = reports
                    .last()
                    .map(|r: &PartitionReport| r.partition.clone());
                break;
            }
            let id = PartitionId::new(&hot.name, range.key());
            if recovery.blocks(&crate::model::task::partition_staging_dir(
                &self.settings.staging_prefix,
                &id,
            )) {
                continue;
            }
            let mut report = self.plan_range(hot, range, final_through, options).await?;
            if let Some(anomaly) = anomaly {
                tracing::warn!(dataset = hot.name, range = %range, anomaly = "stranded_rows", "{anomaly}");
                report.anomaly = Some(anomaly);
            }
            reports.push(report);
        }
        Ok(DatasetPlan {
            dataset: hot.name.clone(),
            dry_run: options.dry_run,
            recovery,
            partitions: reports,
            resume_after,
        })
    }

    /// The final ranges of a hot dataset that need an export, in order, at most
    /// `max_ranges_per_sweep`: every range holding rows in Postgres that its cold copy does
    /// not account for (never exported; rows arrived after it was moved; rows kept in Postgres
    /// that changed in number; `delete_after_compact` turned on since; batches refused), and
    /// every range without rows above the sweep's watermark (recorded as empty, so readers can
    /// tell "empty" from "not exported"). Ranges beyond the highest row are left for later.
    /// Rows that reach a range after it was moved are an anomaly: the finding is returned
    /// with the range.
    async fn hot_candidates(
        &self,
        hot: &HotDatasetConfig,
        source: &dyn HotSource,
        final_through: Option<i64>,
        options: &PlanOptions,
    ) -> Result<Vec<(KeyRange, Option<String>)>> {
        // Flagged ranges were final when exported; they are candidates whatever Postgres holds.
        let flagged: Vec<KeyRange> = self
            .state
            .list_by_status(&hot.name, PartitionStatus::Flagged)
            .await?
            .iter()
            .filter_map(|r| KeyRange::parse(&r.id.partition).ok())
            .collect();
        let only_flagged = |mut flagged: Vec<KeyRange>| {
            flagged.sort();
            flagged.truncate(hot.max_ranges_per_sweep);
            flagged.into_iter().map(|r| (r, None)).collect()
        };
        let (Some(through), Some(max)) = (final_through, source.max_value(hot).await?) else {
            return Ok(only_flagged(flagged));
        };
        let final_end = hot.range_containing(through.saturating_add(1)).start;
        let limit = final_end.min(hot.range_containing(max).end);
        if limit <= hot.range_start {
            return Ok(only_flagged(flagged));
        }
        let starts = source.ranges_with_rows(hot, hot.range_start, limit).await?;
        let mut records = RangeRecords::new(self.state.as_ref(), &hot.name);
        if starts.len() > RangeRecords::BULK {
            records.load_all().await?;
        }
        let size = hot.range_size as i64;
        let key = |start: i64| KeyRange {
            start,
            end: start + size,
        };
        // Every range below the watermark has a record; the sweep moves it up past the ranges
        // recorded since.
        let cursor = self
            .state
            .sweep_cursor(&hot.name)
            .await?
            .and_then(|c| c.parse::<i64>().ok());
        let mut watermark = cursor.or_else(|| starts.first().copied()).unwrap_or(limit);
        while watermark < limit
            && records
                .get(&key(watermark).key())
                .await?
                .is_some_and(|r| r.cold.is_some())
        {
            watermark += size;
        }
        if !options.dry_run && Some(watermark) != cursor {
            self.state
                .set_sweep_cursor(&hot.name, Some(&watermark.to_string()))
                .await?;
        }
        let now_ms = options.now.timestamp_millis();
        // Row counts, only where they matter: a range kept in Postgres is compared with its
        // copy, and rows found in a moved range are reported.
        let mut counted = Vec::new();
        for &start in &starts {
            let record = records.get(&key(start).key()).await?;
            let busy = record.is_some_and(|r| r.live_lease(now_ms).is_some());
            match record.and_then(|r| r.cold.as_ref()).map(|c| &c.delete) {
                Some(DeleteState::Kept) if !hot.delete_after_compact => counted.push(start),
                Some(DeleteState::Moved { .. }) if !busy => counted.push(start),
                _ => {}
            }
        }
        let counts: std::collections::HashMap<i64, u64> = if counted.len() > 16 {
            source
                .range_counts(hot, hot.range_start, limit)
                .await?
                .into_iter()
                .collect()
        } else {
            let mut counts = std::collections::HashMap::new();
            for &start in &counted {
                counts.extend(source.range_counts(hot, start, start + size).await?);
            }
            counts
        };
        let mut out = Vec::new();
        let mut with_rows = HashSet::new();
        for &start in &starts {
            with_rows.insert(start);
            let range = key(start);
            let rows = counts.get(&start).copied().unwrap_or_default();
            let record = records.get(&range.key()).await?;
            let Some(cold) = record.and_then(|r| r.cold.as_ref()) else {
                out.push((range, None));
                continue;
            };
            let busy = record.is_some_and(|r| r.live_lease(now_ms).is_some());
            match &cold.delete {
                DeleteState::Kept if !hot.delete_after_compact => {
                    if rows != cold.rows_in_postgres() {
                        out.push((range, None));
                    }
                }
                DeleteState::Moved { .. } if !busy => out.push((
                    range,
                    Some(format!(
                        "{rows} row(s) reached Postgres in range {range} after it was moved to \
                         the cold copy (version {}): they are exported as an additional file and \
                         then deleted; nothing is lost, and re-running is safe",
                        cold.version
                    )),
                )),
                _ => out.push((range, None)),
            }
        }
        // A flagged range stays a candidate even when Postgres holds none of its rows any more
        // (the rows a refused batch left there were deleted or moved by someone else after the
        // export's snapshot): its cold copy still holds them, and only a new export, which
        // finds them gone, replaces that copy.
        for range in flagged {
            if with_rows.insert(range.start) {
                out.push((range, None));
            }
        }
        for start in (watermark.max(hot.range_start)..limit).step_by(size as usize) {
            let range = key(start);
            if !with_rows.contains(&start)
                && records
                    .get(&range.key())
                    .await?
                    .is_none_or(|r| r.cold.is_none())
            {
                out.push((range, None));
            }
        }
        out.sort_by_key(|(r, _)| *r);
        out.truncate(hot.max_ranges_per_sweep);
        Ok(out)
    }

    async fn plan_range(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
        final_through: Option<i64>,
        options: &PlanOptions,
    ) -> Result<PartitionReport> {
        let key = range.key();
        let dir = hot.range_dir(range);
        let own = read_json::<PartitionManifest>(
            self.store.as_ref(),
            &format!("{dir}{PARTITION_MANIFEST}"),
        )
        .await?
        .unwrap_or_default()
        .compacted_keys();
        let files: Vec<ObjectMeta> = list_all(self.store.as_ref(), &dir, Some('/'))
            .await?
            .objects
            .into_iter()
            .filter(|o| own.contains(&o.key))
            .collect();
        let report = |outcome| PartitionReport {
            partition: key.clone(),
            data_files: files.len(),
            data_bytes: files.iter().map(|f| f.size).sum(),
            outcome,
            anomaly: None,
            files: Vec::new(),
            rewrite: None,
        };
        if !final_through.is_some_and(|through| crate::model::hot::range::is_final(range, through))
        {
            return Ok(report(PartitionOutcome::Skipped(SkipReason::NotFinal {
                final_through,
            })));
        }
        let id = PartitionId::new(&hot.name, &key);
        let legacy_moved = self
            .state
            .get(&id)
            .await?
            .and_then(|r| r.cold)
            .is_some_and(|c| c.delete == DeleteState::Legacy);
        let spec = ExportSpec {
            hot: hot.clone(),
            range,
            legacy_moved,
        };
        // The rows still in Postgres are not counted: the estimate covers the range's files.
        let budget = self.settings.memory_budget;
        let no_layouts = std::collections::HashMap::new();
        let estimate = |task: &Task, throughput| {
            estimate_task(&task.inputs, &no_layouts, &task.dataset, budget, throughput)
        };
        let outcome = self
            .start_round(&id, options, estimate, |generation| {
                vec![Task {
                    task_id: task_id(generation, 0),
                    partition: id.clone(),
                    generation,
                    dataset: hot.output_dataset(),
                    staging_prefix: self.settings.staging_prefix.clone(),
                    memory_budget: self.settings.memory_budget,
                    // The range's files: the export keeps those whose rows left Postgres
                    // and replaces the others.
                    inputs: files.clone(),
                    created_at_ms: options.now.timestamp_millis(),
                    kind: TaskKind::ExportRange(Box::new(spec.clone())),
                    nonce: crate::model::task::new_nonce(),
                    lease_owner: self.settings.owner.clone(),
                }]
            })
            .await?;
        Ok(report(outcome))
    }
}

/// The state records of one hot dataset's ranges, read one by one, or all at once when many
/// are needed (a dataset whose rows stay in Postgres has a record for every range).
struct RangeRecords<'a> {
    state: &'a dyn StateStore,
    dataset: &'a str,
    cache: std::collections::HashMap<String, Option<crate::model::state::PartitionRecord>>,
    complete: bool,
}

impl<'a> RangeRecords<'a> {
    /// Above this many ranges to look at, every record is listed in one go.
    const BULK: usize = 64;

    fn new(state: &'a dyn StateStore, dataset: &'a str) -> Self {
        Self {
            state,
            dataset,
            cache: std::collections::HashMap::new(),
            complete: false,
        }
    }

    async fn load_all(&mut self) -> Result<()> {
        for status in [
            PartitionStatus::Active,
            PartitionStatus::Compacting,
            PartitionStatus::Compacted,
            PartitionStatus::Failed,
            PartitionStatus::Flagged,
        ] {
            for record in self.state.list_by_status(self.dataset, status).await? {
                self.cache.insert(record.id.partition.clone(), Some(record));
            }
        }
        self.complete = true;
        Ok(())
    }

    async fn get(
        &mut self,
        partition: &str,
    ) -> Result<Option<&crate::model::state::PartitionRecord>> {
        if !self.complete && !self.cache.contains_key(partition) {
            let record = self
                .state
                .get(&PartitionId::new(self.dataset, partition))
                .await?;
            self.cache.insert(partition.to_string(), record);
        }
        Ok(self.cache.get(partition).and_then(Option::as_ref))
    }
}
