//! Compaction under random kills, concurrent writers and a lost or swapped state store.
//!
//! Each trial fills a few cold partitions (time, block-range, flat, sorted, or sorted in passes
//! of 64 KiB, in turn) with small files and fragmented ones (healthy row groups, copied as they are, among
//! tiny ones), then runs the real `compactor` binary and kills it (SIGKILL) at a random moment or
//! at a random crash point, while a writer adds files, overwrites files in place and replaces
//! files by atomic rename; between runs the state store is sometimes deleted or swapped for an
//! older copy. Then it re-runs the binary until it settles. Every row of every version the
//! writer ever wrote is unique, so the oracle is exact: every row of each file's final version
//! is in the tree exactly once, no row is there twice, and nothing is there that was never
//! written.
//!
//! `COMPACTOR_FILE_TRIALS` (default 30) and `COMPACTOR_TRIAL_SEED` set the run; a longer soak
//! is `COMPACTOR_FILE_TRIALS=300 cargo test -p compactor --test file_faults`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_compactor");
const DEFAULT_TRIALS: usize = 30;
const DEFAULT_SEED: u64 = 0x2026_1204;
/// The layouts trials rotate through: time partitions, block ranges (cold below a tip), a
/// flat folder (cold when quiet), sort mode, and sort mode in passes.
struct Layout {
    args: &'static [&'static str],
    partitions: &'static [&'static str],
}

const LAYOUTS: &[Layout] = &[
    Layout {
        args: &["--template", "dt={date}/hour={hour}"],
        partitions: &[
            "dt=2024-03-01/hour=00",
            "dt=2024-03-01/hour=01",
            "dt=2024-03-02/hour=07",
        ],
    },
    Layout {
        args: &[
            "--template",
            "chain={chain}/range={start}-{end}",
            "--coldness",
            "range",
            "--range-tip",
            "1000000",
        ],
        partitions: &[
            "chain=1/range=0-100",
            "chain=1/range=100-200",
            "chain=2/range=0-50",
        ],
    },
    Layout {
        args: &["--template", "", "--grace", "0s"],
        partitions: &[""],
    },
    // Sort mode: later rounds merge the earlier sorted outputs as runs, as they are.
    Layout {
        args: &[
            "--template",
            "dt={date}/hour={hour}",
            "--mode",
            "sort",
            "--sort-key",
            "id",
            "--seq-column",
            "seq",
        ],
        partitions: &["dt=2024-03-01/hour=00", "dt=2024-03-02/hour=07"],
    },
    // Sort in passes: partitions over 64 KiB are sorted in run steps and merge steps.
    Layout {
        args: &[
            "--template",
            "dt={date}/hour={hour}",
            "--mode",
            "sort",
            "--sort-key",
            "id",
            "--seq-column",
            "seq",
            "--max-task-bytes",
            "64KiB",
        ],
        partitions: &["dt=2024-03-01/hour=00", "dt=2024-03-02/hour=07"],
    },
];

/// Every option of the trials' runs but the layout: row groups of 4 KiB or more are healthy,
/// so the fragmented files' large row groups are copied as they are and their tiny ones
/// re-encoded.
const ENGINE_ARGS: &[&str] = &[
    "--small-file-threshold",
    "16KiB",
    "--healthy-row-group-size",
    "4KiB",
];

/// Rows per row group of a fragmented file: two healthy row groups among tiny ones.
const FRAGMENTED: &[usize] = &[200, 5, 5, 5, 200, 5, 5];

fn key_in(partition: &str, name: &str) -> String {
    if partition.is_empty() {
        format!("events/{name}")
    } else {
        format!("events/{partition}/{name}")
    }
}

const CRASH_POINTS: &[&str] = &[
    "after-merge",
    "after-decision",
    "after-copy",
    "after-manifest",
    "after-delete",
    "mid-copy",
    "mid-encode",
    "after-run-step",
    "after-merge-step",
];

/// Every version of every file the writer wrote: its key's final version and all row ids ever.
#[derive(Default)]
struct Ledger {
    final_rows: HashMap<String, Vec<String>>,
    every_row: HashSet<String>,
    version: u64,
}

impl Ledger {
    /// Writes a new version of `key` (a path under `root`): in place, or by atomic rename;
    /// `fragmented`: as a streaming appender's file of healthy and tiny row groups.
    fn write(&mut self, root: &Path, key: &str, rows: usize, in_place: bool, fragmented: bool) {
        let rows = if fragmented {
            FRAGMENTED.iter().sum()
        } else {
            rows
        };
        self.version += 1;
        let ids: Vec<String> = (0..rows)
            .map(|r| format!("{key}#{}#{r}", self.version))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("payload", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(ids.clone())),
                Arc::new(Int64Array::from_iter_values(
                    (0..rows as i64).map(|r| r * 7 + self.version as i64),
                )),
            ],
        )
        .unwrap();
        let path = root.join(key);
        let write = |path: &Path| {
            if fragmented {
                e2e_tests::write_row_groups(path, &batch, FRAGMENTED)
            } else {
                e2e_tests::write_parquet(path, &batch)
            }
        };
        if in_place {
            write(&path);
        } else {
            let tmp = root.join(format!(".writer-{}.tmp", self.version));
            write(&tmp);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        self.every_row.extend(ids.iter().cloned());
        self.final_rows.insert(key.to_string(), ids);
    }
}

/// `compactor compact` on the trial's data, as every run of the trial calls it.
fn compact(data: &Path, layout: &Layout) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "compact",
        data.to_str().unwrap(),
        "--prefix",
        "events/",
        "--quiet",
        "--json",
    ])
    .args(layout.args)
    .args(ENGINE_ARGS)
    .env("RUST_LOG", "error");
    cmd
}

fn spawn(data: &Path, layout: &Layout, crash: Option<&str>) -> Child {
    compact(data, layout)
        .env("COMPACTOR_CRASH_AT", crash.unwrap_or(""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting compactor")
}

/// Runs the binary while `writer` keeps writing; kills it after `kill_after` if set.
fn run(mut child: Child, kill_after: Option<Duration>, writing: &Mutex<bool>) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            *writing.lock().unwrap() = false;
            return status.code();
        }
        if kill_after.is_some_and(|k| started.elapsed() >= k) {
            let _ = child.kill();
            let status = child.wait().unwrap();
            *writing.lock().unwrap() = false;
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The writer: adds files, overwrites files in place and replaces them by rename, until told
/// to stop.
fn writer(
    root: PathBuf,
    partitions: &'static [&'static str],
    ledger: Arc<Mutex<Ledger>>,
    writing: Arc<Mutex<bool>>,
    seed: u64,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut ops = 0;
        while *writing.lock().unwrap() {
            let mut ledger = ledger.lock().unwrap();
            let keys: Vec<String> = ledger.final_rows.keys().cloned().collect();
            let rows = rng.random_range(1..60);
            let fragmented = rng.random_bool(0.25);
            match rng.random_range(0..3) {
                0 => {
                    let partition = partitions[rng.random_range(0..partitions.len())];
                    let key = key_in(partition, &format!("w{}.parquet", ledger.version + 1));
                    ledger.write(&root, &key, rows, false, fragmented);
                }
                op => {
                    let key = &keys[rng.random_range(0..keys.len())];
                    ledger.write(&root, key, rows, op == 1, fragmented);
                }
            }
            drop(ledger);
            ops += 1;
            std::thread::sleep(Duration::from_millis(rng.random_range(0..8)));
        }
        ops
    })
}

fn tree_rows(data: &Path) -> Vec<String> {
    let files = e2e_tests::parquet_files(&data.join("events"));
    let mut ids = Vec::new();
    for f in files {
        for batch in e2e_tests::read_batches(&f) {
            let col = batch.column_by_name("id").unwrap();
            let strings = col
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| {
                    (0..a.len())
                        .map(|i| a.value(i).to_string())
                        .collect::<Vec<_>>()
                })
                .or_else(|| {
                    col.as_any()
                        .downcast_ref::<arrow::array::LargeStringArray>()
                        .map(|a| (0..a.len()).map(|i| a.value(i).to_string()).collect())
                })
                .expect("id is a string column");
            ids.extend(strings);
        }
    }
    ids
}

#[test]
fn kills_writers_and_lost_state_lose_and_duplicate_nothing() {
    let trials: usize = std::env::var("COMPACTOR_FILE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_TRIALS);
    let seed: u64 = std::env::var("COMPACTOR_TRIAL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut master = SmallRng::seed_from_u64(seed);
    let mut totals: std::collections::BTreeMap<&str, usize> = Default::default();
    for number in 0..trials {
        let mut rng = SmallRng::seed_from_u64(master.random());
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let layout = &LAYOUTS[number % LAYOUTS.len()];
        for partition in layout.partitions {
            for _ in 0..rng.random_range(3..10) {
                let mut l = ledger.lock().unwrap();
                let key = key_in(partition, &format!("f{}.parquet", l.version + 1));
                let rows = rng.random_range(1..80);
                let fragmented = rng.random_bool(0.3);
                l.write(&data, &key, rows, false, fragmented);
            }
        }
        let state = data.join("_compactor/state.redb");
        let saved = dir.path().join("state.saved");
        let mut log = Vec::new();
        // A few faulty runs, each with the writer going and a kill or a crash point.
        for round in 0..rng.random_range(2..5) {
            let (crash, kill_after) = if rng.random_bool(0.5) {
                let point = CRASH_POINTS[rng.random_range(0..CRASH_POINTS.len())];
                (Some(format!("{point}@{}", rng.random_range(1..4))), None)
            } else {
                (None, Some(Duration::from_millis(rng.random_range(5..400))))
            };
            let writing = Arc::new(Mutex::new(true));
            let handle = writer(
                data.clone(),
                layout.partitions,
                Arc::clone(&ledger),
                Arc::clone(&writing),
                rng.random(),
            );
            let code = run(spawn(&data, layout, crash.as_deref()), kill_after, &writing);
            let ops = handle.join().unwrap();
            *totals
                .entry(if code.is_none() { "killed" } else { "finished" })
                .or_default() += 1;
            *totals.entry("writes").or_default() += ops;
            log.push(format!(
                "round {round}: {crash:?} {kill_after:?} -> {code:?}, {ops} writes"
            ));
            // Between runs, the state store is lost, swapped for an older copy, or kept.
            match rng.random_range(0..6) {
                0 => {
                    let _ = std::fs::remove_file(&state);
                    log.push("state deleted".into());
                    *totals.entry("state deleted").or_default() += 1;
                }
                1 if saved.exists() => {
                    std::fs::copy(&saved, &state).unwrap();
                    log.push("state swapped for an older copy".into());
                    *totals.entry("state swapped").or_default() += 1;
                }
                _ => {
                    if state.exists() {
                        std::fs::copy(&state, &saved).unwrap();
                    }
                }
            }
        }
        // Settle: run until a run finishes cleanly with nothing left to do.
        let mut settled = false;
        for _ in 0..8 {
            let out = compact(&data, layout).output().unwrap();
            let summary: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_default();
            let stderr = String::from_utf8_lossy(&out.stderr);
            *totals.entry("row groups copied").or_default() +=
                summary["row_groups_copied"].as_u64().unwrap_or(0) as usize;
            *totals.entry("rows merged in order").or_default() +=
                summary["rows_in_order"].as_u64().unwrap_or(0) as usize;
            *totals.entry("sort run steps").or_default() +=
                summary["sort_run_steps"].as_u64().unwrap_or(0) as usize;
            log.push(format!(
                "settle: exit {:?}, {} compacted; anomalies {} failures {} refused {} corrupt {}; stderr {:?}",
                out.status.code(),
                summary["partitions_compacted"],
                summary["anomalies"],
                summary["failures"],
                summary["refused"],
                summary["corrupt_skipped"],
                stderr.lines().last().unwrap_or("")
            ));
            if out.status.code() == Some(0) && summary["partitions_compacted"] == 0 {
                settled = true;
                break;
            }
        }
        let context = format!(
            "trial {number} (seed {seed}, layout {:?}): {log:?}",
            layout.args
        );
        assert!(settled, "{context}: did not settle");

        // The oracle.
        let ledger = ledger.lock().unwrap();
        let actual = tree_rows(&data);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &actual {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        let lost: Vec<&String> = ledger
            .final_rows
            .values()
            .flatten()
            .filter(|id| !counts.contains_key(id.as_str()))
            .collect();
        let doubled: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
        let unknown: Vec<&String> = actual
            .iter()
            .filter(|id| !ledger.every_row.contains(*id))
            .collect();
        assert!(
            lost.is_empty() && doubled.is_empty() && unknown.is_empty(),
            "{context}: {} row(s) of final versions lost (e.g. {:?}), {} row(s) twice (e.g. {:?}), {} never written",
            lost.len(),
            lost.iter().take(3).collect::<Vec<_>>(),
            doubled.len(),
            doubled.iter().take(3).collect::<Vec<_>>(),
            unknown.len()
        );
        assert!(
            e2e_tests::staging_leftovers(&data).is_empty(),
            "{context}: staging not cleaned"
        );
        *totals.entry("rows checked").or_default() += actual.len();
        eprintln!("trial {number}: settled, {} rows checked", actual.len());
    }
    eprintln!("{trials} trials (seed {seed}): {totals:?}");
}
