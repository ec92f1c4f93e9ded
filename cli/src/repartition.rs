//! `compactor repartition DIR --to DST --template NEW`: the run is the library's
//! ([`compaction::drivers::repartition`]); this module opens both sides and prints the result.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use compaction::drivers::repartition::{repartition as run, RepartitionOptions, RepartitionReport};
use compaction::model::object::{dir_prefix, validate_key};
use compaction::support::units::human_bytes;

use crate::args::RepartitionArgs;
use crate::{open_state, open_store, report, run_options, EXIT_PARTIAL};

pub async fn repartition(args: RepartitionArgs) -> Result<ExitCode> {
    if args.dataset_flags.template.is_none() {
        bail!("--template names the new partition layout, e.g. --template \"venue={{venue}}/dt={{date}}\"");
    }
    let config = args.config()?;
    let [target] = config.datasets.as_slice() else {
        bail!("a repartition copies one dataset");
    };
    if let Some(prefix) = &args.backup {
        validate_key(prefix).with_context(|| format!("--backup {prefix:?}"))?;
        if dir_prefix(prefix).starts_with(&target.source_dir()) {
            bail!(
                "--backup {prefix:?} is inside the dataset's --prefix; keep the backup outside it"
            );
        }
    }
    let to = args.to.to_string_lossy().to_string();
    if !to.starts_with("s3://") {
        if args.to.exists() && same_place(&args.dir, &args.to) {
            bail!(
                "--to {} is the source directory; the copy goes into another directory",
                args.to.display()
            );
        }
        if !args.dry_run {
            std::fs::create_dir_all(&args.to)
                .with_context(|| format!("creating --to {}", args.to.display()))?;
        }
    }
    let source = open_store(&args.dir).await?;
    let destination = match args.dry_run && !args.to.exists() && !to.starts_with("s3://") {
        // A dry run creates nothing: an absent destination is an empty one.
        true => None,
        false => Some(open_store(&args.to).await?),
    };
    let state = match (&destination, args.dry_run) {
        (Some(_), false) => Some(open_state(&args.to, &args.state, false).await?),
        _ => None,
    };
    let options = RepartitionOptions {
        source_prefix: target.source_prefix.clone(),
        source_label: args.dir.display().to_string(),
        target: target.clone(),
        dry_run: args.dry_run,
        delete_source: args.delete_source,
        select: args.select.clone(),
        row_changes: compaction_sql::row_changes(),
        backup: args.backup.clone(),
        staging_prefix: config.staging_prefix.clone(),
        memory_budget: config.memory_budget.bytes(),
        // Nothing runs elsewhere: a group without a record was interrupted; write it again.
        resend_after_ms: 0,
    };
    let progress = Arc::new(report::Bar::new(args.quiet || args.json || args.dry_run));
    let result = run(
        source,
        destination,
        state,
        &config,
        &options,
        progress.clone(),
        run_options(args.workers, false),
    )
    .await;
    progress.finish();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report, &args);
    }
    Ok(
        if report.compaction_problems.is_empty()
            && report.source_files_kept.is_empty()
            && report.waiting.is_none()
        {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_PARTIAL)
        },
    )
}

fn same_place(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn print(r: &RepartitionReport, args: &RepartitionArgs) {
    let template = args.dataset_flags.template.as_deref().unwrap_or_default();
    println!(
        "repartition {} into {} as {template}{}",
        args.dir.display(),
        args.to.display(),
        if r.dry_run {
            "   (dry run: nothing was written)"
        } else {
            ""
        }
    );
    if let Some(phase) = r.resumed_from {
        println!("resumed:    an interrupted run had reached {phase:?}");
    }
    println!(
        "source:     {} file(s), {}{}",
        r.source_files,
        human_bytes(r.source_bytes),
        match r.source_rows {
            0 => String::new(),
            n => format!(", {n} rows"),
        }
    );
    if !r.targets.is_empty() {
        let bytes: u64 = r.targets.iter().map(|t| t.bytes).sum();
        println!(
            "target:     {} partition(s), about {} (estimated at the source's bytes per row)",
            r.targets.len(),
            human_bytes(bytes)
        );
        for t in r.targets.iter().take(20) {
            println!(
                "  {}: {} rows, about {}",
                t.partition,
                t.rows,
                human_bytes(t.bytes)
            );
        }
        if r.targets.len() > 20 {
            println!("  ... and {} more partitions", r.targets.len() - 20);
        }
    }
    if r.dry_run {
        return;
    }
    println!(
        "written:    {} write task(s) run now, {} of {} group(s) of source files done; {} piece(s)",
        r.write_tasks, r.groups_written, r.groups, r.pieces_written
    );
    println!(
        "compacted:  {} partition(s) now; the copy holds {} file(s), {}",
        r.compacted_partitions,
        r.target_files,
        human_bytes(r.target_bytes)
    );
    if let Some(w) = &r.waiting {
        println!("not done:   {w}");
    }
    if let (Some(s), Some(t)) = (r.source_digest, r.target_digest) {
        println!("validated:  source {s}; copy {t}");
    }
    if args.delete_source {
        println!(
            "deleted:    {} source file(s){}",
            r.source_files_deleted,
            args.backup
                .as_ref()
                .map(|b| format!("; kept under {b} (undo: compactor restore DIR {b})"))
                .unwrap_or_default()
        );
    } else if r.validated {
        println!("source:     kept (run again with --delete-source to delete it)");
    }
    for k in &r.source_files_kept {
        println!("kept:       {k}");
    }
    for p in &r.compaction_problems {
        println!("not compacted: {p}");
    }
}
