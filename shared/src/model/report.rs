//! The lake health report (`compactor report`, the planner's `report` event): what each
//! partition holds and what is wrong with it, from listings, footers, partition manifests and
//! state records only. This module holds the report's data (its JSON is a stable interface:
//! `REPORT_FORMAT` changes when a field changes meaning or goes away) and the pure rules:
//! the health verdict of a partition and the gaps of a time or range series.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::model::partition::{Granularity, PartitionTemplate};

/// Version of the report's JSON layout.
pub const REPORT_FORMAT: u32 = 1;

/// Health of a partition, worst last (so the worst sorts first when reversed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Compacted, nothing waiting.
    #[default]
    Good,
    /// Work is waiting, or something is worth a look: small files, fragmented row groups,
    /// files that arrived after the last compaction, schema drift.
    Warn,
    /// Something needs a person: corrupt or quarantined files, a failed round.
    Bad,
    /// An expected partition of the series has no files at all.
    Gap,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Good => "good",
            Health::Warn => "warn",
            Health::Bad => "bad",
            Health::Gap => "gap",
        }
    }
}

/// A file the report names, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNote {
    pub key: String,
    pub reason: String,
}

/// A column whose type differs from the partition's unified schema, or that some files lack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaVariant {
    pub column: String,
    /// What differs, e.g. `Int32 in 1 file(s), unified as Int64` or `missing from 2 file(s)`.
    pub detail: String,
    /// The files that differ (at most `MAX_NAMED_FILES`).
    pub files: Vec<String>,
}

/// At most this many files are named per finding; the counts are always complete.
pub const MAX_NAMED_FILES: usize = 10;

/// The partition's state record, as far as health goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateNote {
    pub status: String,
    pub last_compacted_ms: Option<i64>,
    pub lease_holder: Option<String>,
    pub last_error: Option<String>,
    pub failures: u32,
}

/// One partition of a file dataset (or one expected partition with no files: a gap).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionHealth {
    pub partition: String,
    /// Start of the partition's time span (time layouts), for the heat map.
    pub start_ms: Option<i64>,
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
    pub small_files: u64,
    /// Files with two or more row groups under `healthy_row_group_size` (the merge rewrites
    /// them), and those row groups.
    pub fragmented_files: u64,
    pub fragmented_row_groups: u64,
    pub row_groups: u64,
    /// Distinct codecs of the column chunks.
    pub codecs: Vec<String>,
    pub schema_variants: Vec<SchemaVariant>,
    /// Files whose footer could not be read now.
    pub corrupt: Vec<FileNote>,
    /// Files the partition manifest keeps in quarantine.
    pub quarantined: Vec<FileNote>,
    /// Files written after the last compaction (every file, if it was never compacted).
    pub late_files: u64,
    pub state: Option<StateNote>,
    pub health: Health,
    pub reasons: Vec<String>,
}

/// One grid range of a hot dataset below finality that still has rows in Postgres.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogRange {
    pub range: String,
    pub rows: u64,
    /// `not exported`, `kept` (the delete is off), `moved` (rows arrived after the move),
    /// `flagged`.
    pub cold: String,
}

/// A hot dataset: its ranges' progress and the rows still in Postgres past finality.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotHealth {
    pub tip: Option<i64>,
    pub final_through: Option<i64>,
    pub ranges_final: u64,
    pub ranges_exported: u64,
    pub ranges_moved: u64,
    pub ranges_flagged: u64,
    /// Rows below finality still in Postgres that should have left it (`delete_after_compact`)
    /// or were never exported.
    pub backlog_rows: u64,
    pub backlog: Vec<BacklogRange>,
}

/// Totals of a dataset (or of the whole report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub partitions: u64,
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
    pub small_files: u64,
    pub fragmented_row_groups: u64,
    pub corrupt_files: u64,
    pub quarantined_files: u64,
    pub late_files: u64,
    pub gaps: u64,
    pub schema_variants: u64,
    pub backlog_rows: u64,
    /// Partitions per health.
    pub good: u64,
    pub warn: u64,
    pub bad: u64,
}

impl Totals {
    pub fn add_partition(&mut self, p: &PartitionHealth) {
        self.partitions += 1;
        self.files += p.files;
        self.bytes += p.bytes;
        self.rows += p.rows;
        self.small_files += p.small_files;
        self.fragmented_row_groups += p.fragmented_row_groups;
        self.corrupt_files += p.corrupt.len() as u64;
        self.quarantined_files += p.quarantined.len() as u64;
        self.late_files += p.late_files;
        self.schema_variants += p.schema_variants.len() as u64;
        match p.health {
            Health::Good => self.good += 1,
            Health::Warn => self.warn += 1,
            Health::Bad => self.bad += 1,
            Health::Gap => self.gaps += 1,
        }
    }

    pub fn add(&mut self, o: &Totals) {
        self.partitions += o.partitions;
        self.files += o.files;
        self.bytes += o.bytes;
        self.rows += o.rows;
        self.small_files += o.small_files;
        self.fragmented_row_groups += o.fragmented_row_groups;
        self.corrupt_files += o.corrupt_files;
        self.quarantined_files += o.quarantined_files;
        self.late_files += o.late_files;
        self.gaps += o.gaps;
        self.schema_variants += o.schema_variants;
        self.backlog_rows += o.backlog_rows;
        self.good += o.good;
        self.warn += o.warn;
        self.bad += o.bad;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetHealth {
    pub dataset: String,
    /// `files` or `hot`.
    pub kind: String,
    /// The time span of one partition (time layouts).
    pub granularity: Option<Granularity>,
    /// Worst first.
    pub partitions: Vec<PartitionHealth>,
    pub hot: Option<HotHealth>,
    pub totals: Totals,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LakeReport {
    pub format: u32,
    pub generated_at_ms: i64,
    /// Partitions whose span starts before this were left out (time layouts).
    pub since_ms: Option<i64>,
    pub datasets: Vec<DatasetHealth>,
    pub totals: Totals,
}

/// The thresholds the verdict applies.
#[derive(Clone, Copy, Debug)]
pub struct HealthRules {
    pub min_file_count: usize,
}

/// Sets the partition's health and the reasons for it.
pub fn judge(p: &mut PartitionHealth, rules: HealthRules) {
    let mut bad = Vec::new();
    let mut warn = Vec::new();
    if p.files == 0 && p.quarantined.is_empty() {
        p.health = Health::Gap;
        p.reasons = vec!["no files: an expected partition of the series is missing".into()];
        return;
    }
    if !p.corrupt.is_empty() {
        bad.push(format!("{} corrupt file(s)", p.corrupt.len()));
    }
    if !p.quarantined.is_empty() {
        bad.push(format!("{} quarantined file(s)", p.quarantined.len()));
    }
    if let Some(state) = &p.state {
        if state.status == "failed" {
            bad.push(format!(
                "last round failed ({} in a row): {}",
                state.failures,
                state.last_error.as_deref().unwrap_or("no error recorded")
            ));
        }
    }
    if p.small_files as usize >= rules.min_file_count.max(2) {
        warn.push(format!("{} small file(s)", p.small_files));
    }
    if p.fragmented_files > 0 {
        warn.push(format!(
            "{} fragmented file(s), {} small row group(s)",
            p.fragmented_files, p.fragmented_row_groups
        ));
    }
    if p.late_files > 0 {
        warn.push(format!(
            "{} file(s) arrived after the last compaction",
            p.late_files
        ));
    }
    if !p.schema_variants.is_empty() {
        let columns: Vec<&str> = p
            .schema_variants
            .iter()
            .map(|v| v.column.as_str())
            .collect();
        warn.push(format!("schema drift in {}", columns.join(", ")));
    }
    p.health = if !bad.is_empty() {
        Health::Bad
    } else if !warn.is_empty() {
        Health::Warn
    } else {
        Health::Good
    };
    bad.extend(warn);
    if bad.is_empty() {
        bad.push("compacted, nothing waiting".into());
    }
    p.reasons = bad;
}

/// Worst first, then by partition.
pub fn sort_worst_first(partitions: &mut [PartitionHealth]) {
    partitions.sort_by(|a, b| {
        b.health
            .cmp(&a.health)
            .then_with(|| a.partition.cmp(&b.partition))
    });
}

/// The expected partitions of a time series with no files: every span of `granularity` from
/// the first one at or after `since` (or the earliest partition found) to the last complete one
/// before `now`, per family (the partitions' other fields), that is not in `found` (their
/// span starts, by family). Returns (family, span start) pairs.
pub fn time_gaps(
    found: &BTreeMap<String, BTreeSet<DateTime<Utc>>>,
    granularity: Granularity,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<(String, DateTime<Utc>)> {
    let step = match granularity {
        Granularity::Minute => Duration::minutes(1),
        Granularity::Hour => Duration::hours(1),
        Granularity::Day => Duration::days(1),
        // Months and years are not checked for gaps.
        Granularity::Month | Granularity::Year => return Vec::new(),
    };
    let mut gaps = Vec::new();
    for (family, starts) in found {
        let Some(&first) = starts.iter().next() else {
            continue;
        };
        let mut t = match since {
            Some(s) if s > first => align(s, step, first),
            _ => first,
        };
        while t + step <= now {
            if !starts.contains(&t) {
                gaps.push((family.clone(), t));
            }
            t += step;
        }
    }
    gaps
}

/// The first time at or after `t` on the grid of `step` through `anchor`.
fn align(t: DateTime<Utc>, step: Duration, anchor: DateTime<Utc>) -> DateTime<Utc> {
    let step_ms = step.num_milliseconds().max(1);
    let offset = (t - anchor).num_milliseconds();
    let steps = offset.div_euclid(step_ms) + i64::from(offset.rem_euclid(step_ms) != 0);
    anchor + Duration::milliseconds(steps * step_ms)
}

/// The missing ranges of a range series: per family, `[end of one, start of the next)` where
/// the next starts after the previous ends.
pub fn range_gaps(found: &BTreeMap<String, Vec<(i64, i64)>>) -> Vec<(String, i64, i64)> {
    let mut gaps = Vec::new();
    for (family, ranges) in found {
        let mut sorted = ranges.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            if pair[1].0 > pair[0].1 {
                gaps.push((family.clone(), pair[0].1, pair[1].0));
            }
        }
    }
    gaps
}

/// The partition path of a time span start in `family` (the template's other fields), if the
/// template can be written out for it.
pub fn time_partition(
    template: &PartitionTemplate,
    family: &BTreeMap<String, String>,
    start: DateTime<Utc>,
) -> Option<String> {
    template.render(family, Some(start), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap()
    }

    #[test]
    fn hours_missing_from_a_series_are_gaps_and_the_current_hour_is_not() {
        let mut found = BTreeMap::new();
        found.insert("".to_string(), [at(1), at(2), at(5)].into_iter().collect());
        let gaps = time_gaps(
            &found,
            Granularity::Hour,
            None,
            at(6) + Duration::minutes(30),
        );
        let hours: Vec<_> = gaps.iter().map(|(_, t)| *t).collect();
        assert_eq!(hours, vec![at(3), at(4)]);
        // `since` before the first partition: the series starts at its first partition.
        assert_eq!(
            time_gaps(&found, Granularity::Hour, Some(at(0)), at(6)).len(),
            2
        );
        // `since` after it: only the later hours count.
        let later = time_gaps(&found, Granularity::Hour, Some(at(4)), at(6));
        assert_eq!(later, vec![("".to_string(), at(4))]);
        assert!(time_gaps(&found, Granularity::Hour, Some(at(5)), at(6)).is_empty());
    }

    #[test]
    fn missing_ranges_are_gaps() {
        let mut found = BTreeMap::new();
        found.insert("chain=1".to_string(), vec![(200, 300), (0, 100)]);
        found.insert("chain=2".to_string(), vec![(0, 100), (100, 200)]);
        assert_eq!(range_gaps(&found), vec![("chain=1".into(), 100, 200)]);
    }

    fn partition() -> PartitionHealth {
        PartitionHealth {
            partition: "p".into(),
            files: 3,
            ..Default::default()
        }
    }

    #[test]
    fn the_verdict_names_each_finding_and_the_worst_decides() {
        let rules = HealthRules { min_file_count: 2 };
        let mut p = partition();
        judge(&mut p, rules);
        assert_eq!(p.health, Health::Good);
        p.small_files = 3;
        p.late_files = 1;
        judge(&mut p, rules);
        assert_eq!(p.health, Health::Warn);
        assert_eq!(p.reasons.len(), 2, "{:?}", p.reasons);
        p.corrupt.push(FileNote {
            key: "k".into(),
            reason: "r".into(),
        });
        judge(&mut p, rules);
        assert_eq!(p.health, Health::Bad);
        assert!(p.reasons[0].contains("corrupt"), "{:?}", p.reasons);
        let mut gap = PartitionHealth::default();
        judge(&mut gap, rules);
        assert_eq!(gap.health, Health::Gap);
        let mut all = vec![partition(), gap, p];
        all[0].health = Health::Good;
        sort_worst_first(&mut all);
        let order: Vec<Health> = all.iter().map(|p| p.health).collect();
        assert_eq!(order, vec![Health::Gap, Health::Bad, Health::Good]);
    }
}
