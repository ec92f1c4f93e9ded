//! `compactor delete`, `compactor update` and `compactor restore`: the run is the library's
//! (`run_local` with a rewrite spec); this module builds the spec and prints what was done.

use std::process::ExitCode;

use anyhow::{Context, Result};
use compaction::drivers::pipeline::RunSummary;
use compaction::model::object::validate_key;
use std::sync::Arc;

use compaction::model::rewrite::{RewriteSpec, UpsertSpec};
use compaction::services::planner::rewrite::check_rewrite;
use compaction::services::planner::upsert::check_upsert;
use compaction::services::planner::PartitionOutcome;
use compaction::services::upsert::{SourceRows, UpsertSource};
use compaction::support::units::human_bytes;
use compaction_sql::SqlRowChanges;
use serde_json::json;

use crate::args::{CompactArgs, DeleteArgs, RestoreArgs, UpsertArgs};
use crate::{execute, open_state, open_store, EXIT_PARTIAL};

/// Runs a delete (`set` empty) or an update.
pub async fn rewrite(args: DeleteArgs, set: Vec<String>) -> Result<ExitCode> {
    let spec = RewriteSpec {
        predicate: args.predicate.clone(),
        set,
        backup: args.backup.clone(),
        ..RewriteSpec::default()
    };
    run(&args.common, spec, None).await
}

/// Runs an upsert.
pub async fn upsert(args: UpsertArgs) -> Result<ExitCode> {
    let rows = UpsertSource::read(&args.from)
        .with_context(|| format!("reading --from {}", args.from.display()))?;
    let spec = RewriteSpec {
        backup: args.backup.clone(),
        upsert: Some(UpsertSpec {
            source: args.from.display().to_string(),
            key: args.key.clone(),
            update_cols: args.update_cols.clone(),
            ..UpsertSpec::default()
        }),
        ..RewriteSpec::default()
    };
    run(&args.common, spec, Some(Arc::new(rows))).await
}

/// Checks the operation against the data, runs it and prints what it did.
async fn run(
    common: &CompactArgs,
    spec: RewriteSpec,
    upsert_rows: Option<Arc<SourceRows>>,
) -> Result<ExitCode> {
    let dry_run = common.dry_run;
    if let Some(prefix) = &spec.backup {
        validate_key(prefix).with_context(|| format!("--backup {prefix:?}"))?;
    }
    let config = common.config()?;
    let store = open_store(&common.dir).await?;
    let datasets: Vec<_> = config
        .datasets
        .iter()
        .filter(|d| common.dataset.is_empty() || common.dataset.contains(&d.name))
        .collect();
    // The operation is checked against the data before the state store is even opened.
    match (&spec.upsert, &upsert_rows) {
        (Some(upsert), Some(rows)) => {
            let [dataset] = datasets.as_slice() else {
                anyhow::bail!(
                    "an upsert goes into one dataset; name it with --dataset (the config has {})",
                    datasets
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            check_upsert(
                store.as_ref(),
                dataset,
                &config.staging_prefix,
                upsert,
                rows,
            )
            .await?;
        }
        _ => {
            for dataset in &datasets {
                check_rewrite(
                    store.as_ref(),
                    dataset,
                    &config.staging_prefix,
                    &spec,
                    &SqlRowChanges,
                )
                .await?;
            }
        }
    }
    let state = open_state(&common.dir, &common.state, dry_run).await?;
    let summary = execute(
        &config,
        store,
        state,
        common,
        dry_run,
        Some(spec.clone()),
        upsert_rows,
    )
    .await?;
    let totals = Totals::of(&summary);
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&totals.json(&spec, dry_run))?
        );
    } else {
        totals.print(&spec, dry_run);
    }
    Ok(
        if !summary.failures.is_empty() && summary.commits.is_empty() {
            ExitCode::FAILURE
        } else if totals.skipped.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_PARTIAL)
        },
    )
}

/// What a rewrite found and did, over every dataset.
#[derive(Default)]
struct Totals {
    partitions: usize,
    pruned: usize,
    without_match: usize,
    with_match: usize,
    files_scanned: usize,
    files_matched: usize,
    bytes_matched: u64,
    row_groups: u64,
    row_groups_scanned: u64,
    row_groups_matched: u64,
    rows_matched: u64,
    /// Rows an upsert plans to insert, and inserted.
    rows_to_insert: u64,
    rows_inserted: u64,
    /// Partitions whose rewrite committed, and what the commits did.
    committed: usize,
    files_replaced: usize,
    files_written: usize,
    rows_changed: u64,
    rows_in: u64,
    row_groups_copied: u64,
    row_groups_rewritten: u64,
    /// Partition, rows matched, files, bytes, rows to insert: the partitions with a matching
    /// row or a row to insert.
    matched: Vec<(String, u64, usize, u64, u64)>,
    /// What was not done, and why.
    skipped: Vec<String>,
    secs: f64,
}

impl Totals {
    fn of(summary: &RunSummary) -> Self {
        let mut t = Totals {
            secs: summary.elapsed.as_secs_f64(),
            ..Totals::default()
        };
        for plan in &summary.plans {
            for p in &plan.partitions {
                t.partitions += 1;
                let name = format!("{}/{}", plan.dataset, p.partition);
                match &p.outcome {
                    PartitionOutcome::Skipped(compaction::model::plan::SkipReason::Pruned) => {
                        t.pruned += 1
                    }
                    PartitionOutcome::Skipped(
                        reason @ compaction::model::plan::SkipReason::Resuming,
                    ) => t.skipped.push(format!("{name}: {reason}")),
                    PartitionOutcome::LeaseHeld { owner, .. } => t.skipped.push(format!(
                        "{name}: left alone, another run ({owner}) holds its lease; run again later"
                    )),
                    PartitionOutcome::Failed(e) => t.skipped.push(format!("{name}: {e}")),
                    _ => {}
                }
                if let Some(a) = &p.anomaly {
                    t.skipped.push(format!("{name}: {a}"));
                }
                let Some(scan) = &p.rewrite else { continue };
                t.rows_to_insert += scan.rows_inserted;
                t.files_scanned += scan.files_scanned;
                t.row_groups += scan.row_groups;
                t.row_groups_scanned += scan.row_groups_scanned;
                if scan.files.is_empty() && scan.rows_inserted == 0 {
                    t.without_match += 1;
                    continue;
                }
                t.with_match += 1;
                t.files_matched += scan.files.len();
                t.bytes_matched += scan.bytes();
                t.row_groups_matched += scan.row_groups_matched;
                t.rows_matched += scan.rows_matched;
                t.matched.push((
                    name,
                    scan.rows_matched,
                    scan.files.len(),
                    scan.bytes(),
                    scan.rows_inserted,
                ));
            }
        }
        for c in &summary.commits {
            let Some(r) = c.rewrite else { continue };
            t.committed += 1;
            t.files_replaced += c.inputs_deleted;
            t.files_written += c.outputs;
            t.rows_changed += r.rows_matched;
            t.rows_inserted += r.rows_inserted;
            t.rows_in += r.rows_in;
            t.row_groups_copied += r.row_groups_copied;
            t.row_groups_rewritten += r.row_groups_rewritten;
            for s in &c.skipped {
                t.skipped.push(format!(
                    "{}: {} left as it is ({}); run again to change it",
                    c.partition, s.key, s.reason
                ));
            }
        }
        for (dir, reason) in &summary.refused {
            t.skipped
                .push(format!("{dir}: not committed ({reason}); run again"));
        }
        for f in &summary.failures {
            t.skipped.push(format!(
                "{} {}: failed: {}",
                f.partition, f.task_id, f.error
            ));
        }
        t
    }

    fn print(&self, spec: &RewriteSpec, dry_run: bool) {
        let what = spec.describe();
        println!(
            "{what}{}",
            if dry_run {
                "   (dry run: nothing was changed)"
            } else {
                ""
            }
        );
        println!(
            "partitions: {} ({} pruned by their fields, {} without a matching row, {} with)",
            self.partitions, self.pruned, self.without_match, self.with_match
        );
        println!(
            "files:      {} scanned, {} with matching rows ({}), {} untouched",
            self.files_scanned,
            self.files_matched,
            human_bytes(self.bytes_matched),
            self.files_scanned - self.files_matched
        );
        println!(
            "row groups: {} ({} ruled out by statistics, {} scanned), {} with matching rows",
            self.row_groups,
            self.row_groups - self.row_groups_scanned,
            self.row_groups_scanned,
            self.row_groups_matched
        );
        match spec.upsert {
            Some(_) => println!(
                "rows:       {} matched by key (to update), {} to insert",
                self.rows_matched, self.rows_to_insert
            ),
            None => println!("rows:       {} matched", self.rows_matched),
        }
        for (name, rows, files, bytes, inserts) in self.matched.iter().take(20) {
            println!(
                "  {name}: {rows} rows in {files} file(s), {}{}",
                human_bytes(*bytes),
                match inserts {
                    0 => String::new(),
                    n => format!("; {n} rows to insert"),
                }
            );
        }
        if self.matched.len() > 20 {
            println!("  ... and {} more partitions", self.matched.len() - 20);
        }
        if !dry_run {
            println!(
                "done:       {} partition(s) committed: {} file(s) replaced by {}; {} rows {}{}; row groups {} copied as bytes, {} rewritten; {:.2} s{}",
                self.committed,
                self.files_replaced,
                self.files_written,
                self.rows_changed,
                match spec.is_delete() {
                    true => "deleted",
                    false => "updated",
                },
                match spec.upsert {
                    Some(_) => format!(", {} inserted", self.rows_inserted),
                    None => String::new(),
                },
                self.row_groups_copied,
                self.row_groups_rewritten,
                self.secs,
                spec.backup
                    .as_ref()
                    .map(|b| format!("; replaced files kept under {b} (undo: compactor restore DIR {b})"))
                    .unwrap_or_default()
            );
        }
        for s in &self.skipped {
            println!("skipped:    {s}");
        }
    }

    fn json(&self, spec: &RewriteSpec, dry_run: bool) -> serde_json::Value {
        json!({
            "operation": spec.verb(),
            "predicate": spec.predicate,
            "set": spec.set,
            "upsert": spec.upsert.as_ref().map(|u| json!({
                "source": u.source, "key": u.key, "update_cols": u.update_cols,
            })),
            "dry_run": dry_run,
            "backup": spec.backup,
            "partitions": {
                "total": self.partitions,
                "pruned": self.pruned,
                "without_match": self.without_match,
                "with_match": self.with_match,
                "committed": self.committed,
            },
            "files": {
                "scanned": self.files_scanned,
                "with_match": self.files_matched,
                "with_match_bytes": self.bytes_matched,
                "replaced": self.files_replaced,
                "written": self.files_written,
            },
            "row_groups": {
                "total": self.row_groups,
                "scanned": self.row_groups_scanned,
                "with_match": self.row_groups_matched,
                "copied": self.row_groups_copied,
                "rewritten": self.row_groups_rewritten,
            },
            "rows": {
                "matched": self.rows_matched,
                "changed": self.rows_changed,
                "to_insert": self.rows_to_insert,
                "inserted": self.rows_inserted,
                "read": self.rows_in,
            },
            "matched_partitions": self.matched.iter().map(|(p, rows, files, bytes, inserts)| json!({
                "partition": p, "rows": rows, "files": files, "bytes": bytes, "rows_to_insert": inserts,
            })).collect::<Vec<_>>(),
            "skipped": self.skipped,
            "seconds": self.secs,
        })
    }
}

/// `compactor restore DIR PREFIX`.
pub async fn restore(args: RestoreArgs) -> Result<ExitCode> {
    validate_key(&args.backup).with_context(|| format!("backup prefix {:?}", args.backup))?;
    let store = open_store(&args.dir).await?;
    let report =
        compaction::services::backup::restore(store.as_ref(), &args.backup, args.dry_run).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "dry_run": args.dry_run,
                "records": report.records,
                "restored": report.restored,
                "files_restored": report.files_restored,
                "files_in_the_way": report.files_in_the_way,
                "manifests_restored": report.manifests_restored,
                "outputs_removed": report.outputs_removed,
            }))?
        );
    } else {
        println!(
            "{}{} of {} backup record(s): {} file(s) put back, {} partition manifest(s) restored, {} file(s) the operations wrote removed",
            if args.dry_run { "dry run, would restore " } else { "restored " },
            report.restored,
            report.records,
            report.files_restored,
            report.manifests_restored,
            report.outputs_removed
        );
        for key in &report.files_in_the_way {
            println!("skipped:    {key}: something else is at this key now; left alone (its backup is kept)");
        }
    }
    Ok(match report.files_in_the_way.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(EXIT_PARTIAL),
    })
}
