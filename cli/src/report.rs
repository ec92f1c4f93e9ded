//! What the CLI prints: a progress bar while it works, then a summary table (or JSON).

use std::collections::BTreeSet;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use compaction::drivers::pipeline::RunSummary;
use compaction::model::config::Config;
use compaction::model::hot::cold::DeleteState;
use compaction::model::object::file_name;
use compaction::model::plan::FileVerdict;
use compaction::model::state::PartitionRecord;
use compaction::services::planner::PartitionOutcome;
use compaction::support::progress::Progress;
use compaction::support::units::human_bytes;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new(hidden: bool) -> Self {
        let bar = if hidden {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn planned(&self, _tasks: usize, bytes: u64) {
        self.bar.inc_length(bytes);
    }
    fn input_read(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn task_done(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }
}

/// Counts derived from a run, shared by the table and the JSON.
struct Totals {
    seen: usize,
    compacted: usize,
    hot: usize,
    skipped: usize,
    lease_held: usize,
    would_compact: usize,
    files_before: usize,
    files_after: usize,
    bytes_before: u64,
    bytes_after: u64,
    rows: u64,
    row_groups_copied: usize,
    row_groups_encoded: usize,
    bytes_copied_in_store: u64,
    secs: f64,
    /// Hot ranges committed, rows deleted from Postgres, ranges flagged.
    ranges_exported: usize,
    postgres_deleted: u64,
    ranges_flagged: usize,
    /// Partitions whose planning failed, or that back off after failing in a row.
    troubled: usize,
}

fn totals(summary: &RunSummary) -> Totals {
    let mut t = Totals {
        seen: 0,
        compacted: summary
            .commits
            .iter()
            .map(|c| c.partition.to_string())
            .collect::<BTreeSet<_>>()
            .len(),
        hot: 0,
        skipped: 0,
        lease_held: 0,
        would_compact: 0,
        files_before: summary.commits.iter().map(|c| c.inputs_deleted).sum(),
        files_after: summary.commits.iter().map(|c| c.outputs).sum(),
        bytes_before: summary.commits.iter().map(|c| c.input_bytes).sum(),
        bytes_after: summary.commits.iter().map(|c| c.output_bytes).sum(),
        rows: summary.commits.iter().map(|c| c.rows).sum(),
        row_groups_copied: summary.commits.iter().map(|c| c.row_groups_copied).sum(),
        row_groups_encoded: summary.commits.iter().map(|c| c.row_groups_encoded).sum(),
        bytes_copied_in_store: summary
            .commits
            .iter()
            .map(|c| c.bytes_copied_in_store)
            .sum(),
        secs: summary.elapsed.as_secs_f64(),
        ranges_exported: 0,
        postgres_deleted: 0,
        ranges_flagged: 0,
        troubled: 0,
    };
    for cold in summary.commits.iter().filter_map(|c| c.cold.as_ref()) {
        t.ranges_exported += 1;
        match &cold.delete {
            DeleteState::Moved { deleted, .. } => t.postgres_deleted += deleted,
            DeleteState::Flagged { deleted, .. } => {
                t.postgres_deleted += deleted;
                t.ranges_flagged += 1;
            }
            DeleteState::Kept | DeleteState::Legacy => {}
        }
    }
    // Deletes that stopped part-way still deleted rows.
    t.postgres_deleted += summary
        .failures
        .iter()
        .map(|f| f.postgres_rows_deleted)
        .sum::<u64>();
    for plan in &summary.plans {
        for p in &plan.partitions {
            t.seen += 1;
            match &p.outcome {
                PartitionOutcome::Hot { .. } => t.hot += 1,
                PartitionOutcome::Skipped(_) => t.skipped += 1,
                PartitionOutcome::LeaseHeld { .. } => t.lease_held += 1,
                PartitionOutcome::Planned { .. } => t.would_compact += 1,
                PartitionOutcome::BackingOff { .. } | PartitionOutcome::Failed(_) => {
                    t.troubled += 1
                }
            }
        }
    }
    t
}

pub fn print(summary: &RunSummary, config: &Config, dry_run: bool) {
    if dry_run {
        print_plan(summary, config);
        return;
    }
    let t = totals(summary);
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mb_s = if t.secs > 0.0 {
        t.bytes_before as f64 / 1e6 / t.secs
    } else {
        0.0
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("datasets", dataset_names(config).join(", ")),
        ("partitions seen", t.seen.to_string()),
        ("partitions compacted", t.compacted.to_string()),
        (
            "partitions skipped",
            format!(
                "{} ({} hot, {} nothing to do, {} leased elsewhere, {} failed or backing off)",
                t.hot + t.skipped + t.lease_held + t.troubled,
                t.hot,
                t.skipped,
                t.lease_held,
                t.troubled
            ),
        ),
        ("files", format!("{} -> {}", t.files_before, t.files_after)),
        (
            "bytes",
            format!(
                "{} -> {}",
                human_bytes(t.bytes_before),
                human_bytes(t.bytes_after)
            ),
        ),
        ("rows", t.rows.to_string()),
        (
            "row groups",
            format!(
                "{} copied as they were ({} copied by the store), {} encoded",
                t.row_groups_copied,
                human_bytes(t.bytes_copied_in_store),
                t.row_groups_encoded
            ),
        ),
        (
            "corrupt files skipped (kept)",
            summary.corrupt_inputs().len().to_string(),
        ),
        ("failed tasks", summary.failures.len().to_string()),
        ("time", format!("{:.2} s", t.secs)),
        ("throughput", format!("{mb_s:.1} MB/s of input")),
    ];
    if !config.hot_datasets.is_empty() {
        rows.push((
            "hot ranges exported",
            format!(
                "{} ({} rows deleted from Postgres, {} flagged)",
                t.ranges_exported, t.postgres_deleted, t.ranges_flagged
            ),
        ));
    }
    for (k, v) in rows {
        table.add_row(vec![
            Cell::new(k),
            Cell::new(v).set_alignment(CellAlignment::Left),
        ]);
    }
    println!("{table}");
    for s in summary.corrupt_inputs() {
        println!("skipped {}: {}", s.key, s.reason);
    }
    for f in &summary.failures {
        println!("FAILED {} {}: {}", f.partition, f.task_id, f.error);
    }
    for (dir, reason) in &summary.refused {
        println!("refused {dir}: {reason}");
    }
    for anomaly in summary.anomalies() {
        println!("{anomaly}");
    }
}

fn dataset_names(config: &Config) -> Vec<String> {
    config
        .datasets
        .iter()
        .map(|d| d.name.clone())
        .chain(config.hot_datasets.iter().map(|h| h.name.clone()))
        .collect()
}

fn throughput_source(measured_merges: u64) -> String {
    match measured_merges {
        0 => "merge_throughput, not measured on this partition yet".into(),
        n => format!("measured on this partition's {n} merge(s)"),
    }
}

fn print_plan(summary: &RunSummary, config: &Config) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec!["dataset", "partition", "files", "bytes", "decision"]);
    for plan in &summary.plans {
        for (dir, action) in &plan.recovery.actions {
            println!("recovery: {dir}: would {action}");
        }
        for p in &plan.partitions {
            let decision = match &p.outcome {
                PartitionOutcome::Hot { until }
                    if *until == chrono::DateTime::<chrono::Utc>::MAX_UTC =>
                {
                    "hot: no later range yet".to_string()
                }
                PartitionOutcome::Hot { until } => {
                    format!("hot until {}", until.format("%Y-%m-%d %H:%M UTC"))
                }
                PartitionOutcome::Skipped(reason) => format!("skip: {reason}"),
                PartitionOutcome::LeaseHeld { owner, .. } => format!("skip: leased by {owner}"),
                PartitionOutcome::BackingOff { failures, .. } => {
                    format!("skip: failed {failures} times in a row, backing off")
                }
                PartitionOutcome::Failed(e) => format!("failed: {e}"),
                PartitionOutcome::Planned { tasks }
                    if config.hot_datasets.iter().any(|h| h.name == plan.dataset) =>
                {
                    format!(
                        "export from Postgres ({} file(s) of the range now)",
                        tasks.iter().map(|t| t.inputs).sum::<usize>()
                    )
                }
                PartitionOutcome::Planned { tasks } => format!(
                    "compact {} file(s), {} in {} task(s)",
                    tasks.iter().map(|t| t.inputs).sum::<usize>(),
                    human_bytes(tasks.iter().map(|t| t.input_bytes).sum()),
                    tasks.len()
                ),
            };
            table.add_row(vec![
                plan.dataset.clone(),
                p.partition.clone(),
                p.data_files.to_string(),
                human_bytes(p.data_bytes),
                decision,
            ]);
        }
    }
    println!("{table}");
    // Why each large file is, or is not, compacted (small files always are).
    for plan in &summary.plans {
        for p in &plan.partitions {
            for note in p.files.iter().filter(|n| n.verdict != FileVerdict::Small) {
                println!(
                    "{}/{}: {} ({}): {}",
                    plan.dataset,
                    p.partition,
                    file_name(&note.key),
                    human_bytes(note.size),
                    note.verdict
                );
            }
        }
    }
    // What each task would cost.
    let (mut seconds, mut gb_seconds) = (0.0, 0.0);
    for plan in &summary.plans {
        for p in &plan.partitions {
            let PartitionOutcome::Planned { tasks } = &p.outcome else {
                continue;
            };
            for t in tasks {
                let e = &t.estimate;
                seconds += e.seconds;
                gb_seconds += e.gb_seconds;
                let passes = match e.sort_run_steps {
                    0 => String::new(),
                    n => format!(" (sorted in passes: {n} run steps, then merge steps)"),
                };
                println!(
                    "{}/{}: task {}{passes}: reads {}, copies {} as it is, encodes {}; peak memory about {}; about {:.1} s at {}/s ({}) = {:.1} Lambda GB-s",
                    plan.dataset,
                    p.partition,
                    t.task_id,
                    human_bytes(e.read_bytes),
                    human_bytes(e.copy_bytes),
                    human_bytes(e.encode_bytes),
                    human_bytes(e.peak_memory),
                    e.seconds,
                    human_bytes(e.throughput.bytes_per_sec),
                    throughput_source(e.throughput.measured_merges),
                    e.gb_seconds
                );
            }
        }
    }
    if seconds > 0.0 {
        println!(
            "estimated: {seconds:.1} s of merging, {gb_seconds:.1} Lambda GB-s (a merger whose budget, 90% of its memory, is memory_budget)"
        );
    }
    for anomaly in summary.anomalies() {
        println!("{anomaly}");
    }
    println!("dry run: nothing was changed");
}

pub fn json(summary: &RunSummary, config: &Config) -> serde_json::Value {
    let t = totals(summary);
    json!({
        "datasets": dataset_names(config),
        "partitions_seen": t.seen,
        "partitions_compacted": t.compacted,
        "partitions_hot": t.hot,
        "partitions_skipped": t.skipped,
        "partitions_lease_held": t.lease_held,
        "partitions_failed_or_backing_off": t.troubled,
        "partitions_planned": t.would_compact,
        "files_before": t.files_before,
        "files_after": t.files_after,
        "bytes_before": t.bytes_before,
        "bytes_after": t.bytes_after,
        "rows": t.rows,
        "row_groups_copied": t.row_groups_copied,
        "row_groups_encoded": t.row_groups_encoded,
        "bytes_copied_in_store": t.bytes_copied_in_store,
        "rows_sorted": summary.commits.iter().filter_map(|c| c.sort).map(|w| w.rows_sorted).sum::<u64>(),
        "rows_in_order": summary.commits.iter().filter_map(|c| c.sort).map(|w| w.rows_in_order).sum::<u64>(),
        "sort_run_steps": summary.commits.iter().filter_map(|c| c.sort).map(|w| w.run_steps).sum::<usize>(),
        "sort_merge_steps": summary.commits.iter().filter_map(|c| c.sort).map(|w| w.merge_steps).sum::<usize>(),
        "seconds": t.secs,
        "hot_ranges_exported": t.ranges_exported,
        "postgres_rows_deleted": t.postgres_deleted,
        "hot_ranges_flagged": t.ranges_flagged,
        "anomalies": summary.anomalies(),
        "events": summary.commits.iter().map(|c| c.event()).collect::<Vec<_>>(),
        "corrupt_skipped": summary.corrupt_inputs().iter().map(|s| json!({"key": s.key, "reason": s.reason})).collect::<Vec<_>>(),
        "failures": summary.failures.iter().map(|f| json!({"task": f.task_id, "partition": f.partition, "error": f.error, "postgres_rows_deleted": f.postgres_rows_deleted})).collect::<Vec<_>>(),
        "refused": summary.refused.iter().map(|(d, r)| json!({"task_dir": d, "reason": r})).collect::<Vec<_>>(),
        "recovery": summary.plans.iter().flat_map(|p| p.recovery.actions.iter().map(|(d, a)| json!({"task_dir": d, "action": a}))).collect::<Vec<_>>(),
        "plan": summary.plans.iter().flat_map(|p| p.partitions.iter().map(move |r| json!({
            "dataset": p.dataset,
            "partition": r.partition,
            "files": r.data_files,
            "bytes": r.data_bytes,
            "outcome": format!("{:?}", r.outcome),
            "anomaly": r.anomaly,
            "tasks": match &r.outcome {
                PartitionOutcome::Planned { tasks } => tasks.iter().map(|t| json!({
                    "task_id": t.task_id,
                    "inputs": t.inputs,
                    "input_bytes": t.input_bytes,
                    "estimate": t.estimate,
                })).collect::<Vec<_>>(),
                _ => Vec::new(),
            },
            "file_verdicts": r.files.iter().map(|n| json!({
                "key": n.key,
                "bytes": n.size,
                "candidate": n.verdict.is_candidate(),
                "why": n.verdict.to_string(),
            })).collect::<Vec<_>>(),
        }))).collect::<Vec<_>>(),
    })
}

pub fn print_status(records: &[PartitionRecord]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "partition",
        "status",
        "compactions",
        "files compacted",
        "bytes in -> out",
        "lease",
        "postgres",
        "last error",
    ]);
    for r in records {
        table.add_row(vec![
            r.id.partition.clone(),
            match r.backoff_until_ms() {
                Some(until) => format!(
                    "{} ({} times in a row; next try after {})",
                    r.status.as_str(),
                    r.failures,
                    chrono::DateTime::from_timestamp_millis(until)
                        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                ),
                None => r.status.as_str().to_string(),
            },
            r.counters.compactions.to_string(),
            r.counters.files_compacted.to_string(),
            format!(
                "{} -> {}",
                human_bytes(r.counters.bytes_in),
                human_bytes(r.counters.bytes_out)
            ),
            r.lease.as_ref().map_or_else(
                || "-".into(),
                |l| format!("{} (gen {})", l.owner, l.generation),
            ),
            r.cold.as_ref().map_or_else(
                || "-".into(),
                |c| match &c.delete {
                    DeleteState::Kept => format!(
                        "v{}: {} rows, {} kept in postgres",
                        c.version,
                        c.rows,
                        c.rows_in_postgres()
                    ),
                    DeleteState::Moved {
                        partition: Some(p), ..
                    } => format!("v{}: {} rows, moved ({p} dropped)", c.version, c.rows),
                    DeleteState::Moved { .. } => format!("v{}: {} rows, moved", c.version, c.rows),
                    DeleteState::Flagged { left, .. } => format!(
                        "v{}: {} rows, flagged ({left} still in postgres)",
                        c.version, c.rows
                    ),
                    DeleteState::Legacy => format!("v{}: {} rows", c.version, c.rows),
                },
            ),
            r.last_error.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
}

/// Partitions listed per dataset in the terminal summary (the JSON and HTML have all).
const WORST_SHOWN: usize = 20;

/// The health report on the terminal: totals, then each dataset's worst partitions.
pub fn print_health(report: &compaction::model::report::LakeReport) {
    use compaction::model::report::Health;
    let t = &report.totals;
    println!(
        "{} partition(s): {} good, {} with work waiting, {} bad, {} gap(s); {} files, {}, {} rows; \
         {} small files, {} fragmented row groups, {} corrupt, {} quarantined, {} late; {} Postgres backlog rows",
        t.partitions, t.good, t.warn, t.bad, t.gaps, t.files, human_bytes(t.bytes), t.rows,
        t.small_files, t.fragmented_row_groups, t.corrupt_files, t.quarantined_files,
        t.late_files, t.backlog_rows
    );
    for ds in &report.datasets {
        if let Some(hot) = &ds.hot {
            println!(
                "\n{} (hot): tip {}, {} final range(s), {} exported, {} moved, {} flagged; {} row(s) past finality still in Postgres",
                ds.dataset,
                hot.tip.map_or("-".into(), |v| v.to_string()),
                hot.ranges_final, hot.ranges_exported, hot.ranges_moved, hot.ranges_flagged,
                hot.backlog_rows
            );
            for r in hot.backlog.iter().take(WORST_SHOWN) {
                println!(
                    "  range {}: {} row(s), cold copy: {}",
                    r.range, r.rows, r.cold
                );
            }
            continue;
        }
        let d = &ds.totals;
        println!(
            "\n{}: {} partition(s), {} good, {} warn, {} bad, {} gap(s)",
            ds.dataset, d.partitions, d.good, d.warn, d.bad, d.gaps
        );
        let worst: Vec<_> = ds
            .partitions
            .iter()
            .filter(|p| p.health != Health::Good)
            .collect();
        if worst.is_empty() {
            continue;
        }
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(vec![
            "health",
            "partition",
            "files",
            "small",
            "fragmented row groups",
            "late",
            "why",
        ]);
        for p in worst.iter().take(WORST_SHOWN) {
            let mut why = p.reasons.join("; ");
            for note in p.corrupt.iter().chain(&p.quarantined) {
                why.push_str(&format!("; {}: {}", note.key, note.reason));
            }
            table.add_row(vec![
                p.health.as_str().to_string(),
                p.partition.clone(),
                p.files.to_string(),
                p.small_files.to_string(),
                p.fragmented_row_groups.to_string(),
                p.late_files.to_string(),
                why,
            ]);
        }
        println!("{table}");
        if worst.len() > WORST_SHOWN {
            println!(
                "... and {} more (see --json or --html)",
                worst.len() - WORST_SHOWN
            );
        }
    }
}
