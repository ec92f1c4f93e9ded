//! The hot -> cold contract under crashes crossed with concurrent writes, judged by content.
//!
//! Each trial builds an Ethereum-style `logs` table (bytea, bytea[], text[], numeric(78,0),
//! jsonb, uuid, timestamptz, NULLs; two chains; plain or partitioned by chain and block range),
//! runs the real `compactor` binary killed at a random crash point or at a random moment, while
//! a writer inserts late rows, updates, deletes, swaps rows 1:1 and overwrites rows with their
//! own values inside the ranges being moved; then re-runs it until it settles. The oracle is a
//! mirror table kept by a trigger from every write except the compactor's own deletes: at the
//! end, the multiset of every column value of Postgres's rows plus the cold copy's must equal
//! the mirror's. No row lost, none duplicated, no stale value kept.
//!
//! `COMPACTOR_TRIALS` (default 40) and `COMPACTOR_TRIAL_SEED` (default fixed) set the run; a
//! longer soak is `COMPACTOR_TRIALS=500 cargo test -p compactor --test hot_interleaving`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::hot::{canonical_sql, parquet_rows, pg_rows};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_compactor");
const DEFAULT_TRIALS: usize = 40;
const DEFAULT_SEED: u64 = 0x2026_1204;

/// Exported columns after `chain_id int4, block_number int8`: name, type, value for row `g`
/// of chain `c`.
const COLUMNS: &[(&str, &str, &str)] = &[
    ("log_index", "int4", "(g % 7)::int4"),
    ("tx_hash", "bytea", "decode(md5(c || ':' || g), 'hex')"),
    (
        "topics",
        "bytea[]",
        "ARRAY[decode(md5(g::text), 'hex'), NULL, ''::bytea]",
    ),
    (
        "amount",
        "numeric(78,0)",
        "(2::numeric ^ 200 + g * 1000003)::numeric(78,0)",
    ),
    (
        "tags",
        "text[]",
        "CASE WHEN g % 6 = 0 THEN NULL ELSE ARRAY['t' || (g % 5), NULL, ''] END",
    ),
    (
        "meta",
        "jsonb",
        "jsonb_build_object('g', g, 'c', c, 'nested', jsonb_build_array(g % 3, 'x'))",
    ),
    ("uid", "uuid", "md5(c || '/' || g)::uuid"),
    (
        "ts",
        "timestamptz",
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '12.5 seconds'",
    ),
    (
        "note",
        "text",
        "CASE WHEN g % 4 = 0 THEN NULL WHEN g % 4 = 1 THEN '' ELSE 'n' || g || ' ✓' END",
    ),
];
/// Blocks 0..BLOCKS of each chain; ranges of RANGE blocks; the last FINAL_END are final.
const BLOCKS: i64 = 600;
const RANGE: i64 = 100;
const FINAL_END: i64 = 500;

fn canonical_columns() -> (Vec<String>, Vec<&'static str>) {
    let mut sql = vec![
        canonical_sql("chain_id", "int4"),
        canonical_sql("block_number", "int8"),
    ];
    let mut names = vec!["chain_id", "block_number"];
    for (name, ty, _) in COLUMNS {
        sql.push(if *name == "amount" {
            // Exported as its exact text (unbounded_numeric = "text").
            canonical_sql("amount::text", "text")
        } else {
            canonical_sql(name, ty)
        });
        names.push(name);
    }
    (sql, names)
}

struct Trial {
    rng: SmallRng,
    schema: String,
    partitioned: bool,
    next_g: i64,
}

impl Trial {
    fn table(&self) -> String {
        format!("{}.logs", self.schema)
    }

    /// A new row of chain `chain` in block `block`, made from row number `g`.
    fn values(chain: i64, block: i64, g: i64) -> String {
        let exprs: Vec<&str> = COLUMNS.iter().map(|(_, _, e)| *e).collect();
        format!(
            "SELECT c::int4, b::int8, {} FROM (SELECT {chain} AS c, {block} AS b, {g}::int8 AS g) AS v",
            exprs.join(", ")
        )
    }

    async fn create(&self, pg: &tokio_postgres::Client) {
        let columns: Vec<String> = COLUMNS.iter().map(|(n, t, _)| format!("{n} {t}")).collect();
        let t = self.table();
        let s = &self.schema;
        let mut ddl = format!(
            "CREATE TABLE {t} (chain_id int4 NOT NULL, block_number int8 NOT NULL, {cols})",
            cols = columns.join(", ")
        );
        if self.partitioned {
            ddl.push_str(" PARTITION BY LIST (chain_id);");
            ddl.push_str(&format!(
                "CREATE TABLE {s}.logs_c1 PARTITION OF {t} FOR VALUES IN (1) PARTITION BY RANGE (block_number);
                 CREATE TABLE {s}.logs_c2 PARTITION OF {t} FOR VALUES IN (2);"
            ));
            for start in (0..BLOCKS).step_by(RANGE as usize) {
                ddl.push_str(&format!(
                    "CREATE TABLE {s}.logs_c1_{start} PARTITION OF {s}.logs_c1 FOR VALUES FROM ({start}) TO ({});",
                    start + RANGE
                ));
            }
        } else {
            ddl.push(';');
            ddl.push_str(&format!("CREATE INDEX ON {t} (chain_id, block_number);"));
        }
        // The oracle: every write but the compactor's own deletes, mirrored in one transaction.
        ddl.push_str(&format!(
            "CREATE TABLE {s}.mirror (LIKE {t});
             CREATE FUNCTION {s}.mirror_write() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF TG_OP = 'DELETE' AND current_setting('application_name') = 'parquet-compactor' THEN
                 RETURN NULL;
               END IF;
               IF TG_OP IN ('UPDATE', 'DELETE') THEN
                 DELETE FROM {s}.mirror WHERE ctid = (SELECT ctid FROM {s}.mirror m WHERE m::text = OLD::text LIMIT 1);
               END IF;
               IF TG_OP IN ('INSERT', 'UPDATE') THEN
                 INSERT INTO {s}.mirror SELECT NEW.*;
               END IF;
               RETURN NULL;
             END $$;
             CREATE TRIGGER mirror AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION {s}.mirror_write();"
        ));
        pg.batch_execute(&ddl)
            .await
            .expect("creating the trial's tables");
        let fill = format!(
            "INSERT INTO {t} SELECT c, b, {vals} FROM generate_series(0, {last}) b, generate_series(1, 2) c,
               LATERAL (SELECT (c * 100000 + b * 10 + k)::int8 AS g FROM generate_series(0, b % 3) k) AS rows",
            vals = COLUMNS.iter().map(|(_, _, e)| *e).collect::<Vec<_>>().join(", "),
            last = BLOCKS - 1
        );
        pg.batch_execute(&fill)
            .await
            .expect("filling the trial's table");
    }

    /// One random write into the table (mostly into chain 1's final ranges).
    async fn write(&mut self, pg: &tokio_postgres::Client) -> String {
        let t = self.table();
        let chain = if self.rng.random_bool(0.85) { 1 } else { 2 };
        let block = self.rng.random_range(0..BLOCKS);
        let pick = format!(
            "(SELECT uid FROM {t} WHERE chain_id = {chain} AND block_number BETWEEN {} AND {} ORDER BY uid LIMIT 1 OFFSET {})",
            block.saturating_sub(20),
            block + 20,
            self.rng.random_range(0..10)
        );
        self.next_g += 1;
        let g = 9_000_000 + self.next_g;
        let (what, sql) = match self.rng.random_range(0..5) {
            0 => (
                "insert",
                format!("INSERT INTO {t} {}", Self::values(chain, block, g)),
            ),
            1 => (
                "update",
                format!(
                    "UPDATE {t} SET note = 'updated {g}', amount = amount + 1 WHERE uid = {pick}"
                ),
            ),
            2 => ("delete", format!("DELETE FROM {t} WHERE uid = {pick}")),
            3 => (
                "swap",
                format!(
                    "BEGIN; DELETE FROM {t} WHERE uid = {pick}; INSERT INTO {t} {}; COMMIT;",
                    Self::values(chain, block, g)
                ),
            ),
            _ => (
                "overwrite",
                format!("UPDATE {t} SET note = note WHERE uid = {pick}"),
            ),
        };
        if let Err(e) = pg.batch_execute(&sql).await {
            // A write may wait for a delete's locks and time out, or meet a serialization
            // error; it then did nothing (the mirror rolled back with it).
            let _ = pg.batch_execute("ROLLBACK").await;
            return format!("{what} failed: {e}");
        }
        format!("{what} chain {chain} block {block}")
    }
}

fn config(
    dir: &Path,
    trial: &Trial,
    delete: bool,
    batch_rows: u64,
    chunk: u64,
) -> std::path::PathBuf {
    let path = dir.join("hot.toml");
    std::fs::write(
        &path,
        format!(
            "[[hot_dataset]]\nname = \"logs\"\ntable = \"{}.logs\"\nchain_id = 1\nrange_size = {RANGE}\n\
             finality_depth_blocks = {}\nchunk_size = {chunk}\ndelete_after_compact = {delete}\n\
             delete_batch_rows = {batch_rows}\ndrop_partitions = {}\nunbounded_numeric = \"text\"\n\
             max_ranges_per_sweep = 3\n",
            trial.schema,
            BLOCKS - FINAL_END,
            trial.partitioned,
        ),
    )
    .unwrap();
    path
}

/// Starts the binary; its stdout (the JSON summary) and stderr go to files beside `data`.
fn spawn(data: &Path, config: &Path, crash: Option<&str>) -> Child {
    let out = |name: &str| std::fs::File::create(data.with_file_name(name)).expect("output file");
    Command::new(BIN)
        .args([
            "compact",
            data.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--json",
        ])
        .env("RUST_LOG", "error")
        .env("COMPACTOR_PG_DSN", e2e_tests::pg::dsn())
        .env("COMPACTOR_CRASH_AT", crash.unwrap_or(""))
        .stdout(Stdio::from(out("stdout.json")))
        .stderr(Stdio::from(out("stderr.txt")))
        .spawn()
        .expect("starting compactor")
}

/// Runs the binary, writing concurrently; kills it after `kill_after` if set. Returns its
/// exit code (`None` when killed) and what was written.
async fn run(
    child: &mut Child,
    trial: &mut Trial,
    pg: &tokio_postgres::Client,
    writes: usize,
    kill_after: Option<Duration>,
) -> (Option<i32>, Vec<String>) {
    let started = Instant::now();
    let mut done = Vec::new();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for compactor") {
            return (status.code(), done);
        }
        if kill_after.is_some_and(|k| started.elapsed() >= k) {
            let _ = child.kill();
            let status = child.wait().expect("reaping compactor");
            return (status.code(), done);
        }
        if done.len() < writes && trial.rng.random_bool(0.5) {
            done.push(trial.write(pg).await);
        }
        tokio::time::sleep(Duration::from_millis(trial.rng.random_range(1..15))).await;
    }
}

async fn settle(
    trial: &mut Trial,
    pg: &tokio_postgres::Client,
    data: &Path,
    config: &Path,
    context: &str,
    log: &mut Vec<String>,
) {
    let mut last = String::new();
    for attempt in 0..10 {
        let (kill, writes) = match attempt {
            0 if trial.rng.random_bool(0.3) => (
                Some(Duration::from_millis(trial.rng.random_range(20..400))),
                3,
            ),
            0 | 1 => (None, 2),
            _ => (None, 0),
        };
        let mut child = spawn(data, config, None);
        let (code, more) = run(&mut child, trial, pg, writes, kill).await;
        log.extend(more);
        let stdout =
            std::fs::read_to_string(data.with_file_name("stdout.json")).unwrap_or_default();
        let stderr = std::fs::read_to_string(data.with_file_name("stderr.txt")).unwrap_or_default();
        last = format!("exit {code:?}: {stderr}");
        // A finished run exits 0 exactly when it reports no anomaly and no failure.
        if let (Some(code), Ok(summary)) =
            (code, serde_json::from_str::<serde_json::Value>(&stdout))
        {
            let listed = |key: &str| summary[key].as_array().is_some_and(|a| !a.is_empty());
            let troubled = ["anomalies", "failures", "refused", "corrupt_skipped"]
                .iter()
                .any(|key| listed(key));
            let mut brief = summary.clone();
            for noisy in ["events", "plan"] {
                brief[noisy] = serde_json::Value::Null;
            }
            assert_eq!(
                code != 0,
                troubled,
                "{context}: exit {code} with summary {brief}"
            );
        }
        let left = e2e_tests::pg::count(
            pg,
            &format!(
                "SELECT count(*) FROM {} WHERE chain_id = 1 AND block_number < {FINAL_END}",
                trial.table()
            ),
        )
        .await;
        if code == Some(0) && left == 0 && writes == 0 {
            return;
        }
    }
    panic!("{context}: did not settle in 10 runs; writes: {log:?}; last run: {last}");
}

/// Every file called `name` under `dir`.
fn walk_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == name) {
                out.push(path);
            }
        }
    }
    out
}

async fn rows_of(pg: &tokio_postgres::Client, table: &str) -> Vec<Vec<Option<String>>> {
    let (sql, _) = canonical_columns();
    pg_rows(pg, &format!("SELECT {} FROM {table}", sql.join(", "))).await
}

fn multiset_difference(
    a: &[Vec<Option<String>>],
    b: &[Vec<Option<String>>],
) -> Vec<Vec<Option<String>>> {
    let mut counts = std::collections::HashMap::new();
    for row in b {
        *counts.entry(row).or_insert(0i64) += 1;
    }
    let mut out = Vec::new();
    for row in a {
        match counts.get_mut(row) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(row.clone()),
        }
    }
    out
}

const CRASH_POINTS: &[&str] = &[
    "after-merge",
    "after-decision",
    "after-copy",
    "after-manifest",
    "after-delete",
    "before-postgres-commit",
    "mid-postgres-delete",
];
const DROP_POINTS: &[&str] = &["before-partition-drop-commit", "after-partition-drop"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_crossed_with_concurrent_writes_lose_and_duplicate_nothing() {
    let trials: usize = std::env::var("COMPACTOR_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_TRIALS);
    let seed: u64 = std::env::var("COMPACTOR_TRIAL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let pg = e2e_tests::pg::connect().await;
    let mut master = SmallRng::seed_from_u64(seed);
    let mut totals = std::collections::BTreeMap::new();
    for number in 0..trials {
        let schema = e2e_tests::pg::schema(&pg).await;
        let mut trial = Trial {
            rng: SmallRng::seed_from_u64(master.random()),
            schema,
            partitioned: number % 3 == 2,
            next_g: 0,
        };
        trial.create(&pg).await;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let batch_rows = trial.rng.random_range(2..40);
        let chunk = trial.rng.random_range(20..200);
        let delete_first = trial.rng.random_bool(0.8);
        let first_config = config(dir.path(), &trial, delete_first, batch_rows, chunk);
        // How the first run ends: at a crash point (its n-th passage), killed at a moment, or
        // not at all.
        let mut points: Vec<&str> = CRASH_POINTS.to_vec();
        if trial.partitioned {
            points.extend(DROP_POINTS);
        }
        let (crash, kill_after, mode) = match trial.rng.random_range(0..10) {
            0..=5 => {
                let point = points[trial.rng.random_range(0..points.len())];
                let nth = trial.rng.random_range(1..4);
                (
                    Some(format!("{point}@{nth}")),
                    None,
                    format!("crash at {point}@{nth}"),
                )
            }
            6..=8 => {
                let ms = trial.rng.random_range(30..900);
                (
                    None,
                    Some(Duration::from_millis(ms)),
                    format!("kill -9 after {ms} ms"),
                )
            }
            _ => (None, None, "no crash".to_string()),
        };
        let context = format!(
            "trial {number} (seed {seed}): {} table, delete {}, delete_batch_rows {batch_rows}, chunk_size {chunk}, {mode}",
            if trial.partitioned { "partitioned" } else { "plain" },
            if delete_first { "on" } else { "off, then on" },
        );
        let mut child = spawn(&data, &first_config, crash.as_deref());
        let writes = trial.rng.random_range(3..12);
        let (code, mut log) = run(&mut child, &mut trial, &pg, writes, kill_after).await;
        *totals
            .entry(if code.is_none() { "killed" } else { "finished" })
            .or_insert(0) += 1;
        // Re-run until settled; the first re-run may be killed too, and writes go on for a while.
        let final_config = config(dir.path(), &trial, true, batch_rows, chunk);
        settle(&mut trial, &pg, &data, &final_config, &context, &mut log).await;
        // Then a late row into every final range, which makes each range export again on top
        // of whatever its ledger says (a wrong ledger loses rows here), with one more crash.
        for start in (0..FINAL_END).step_by(RANGE as usize) {
            if trial.partitioned {
                // A dropped range's partition comes back, as an application would recreate it.
                pg.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {s}.logs_c1_{start} PARTITION OF {s}.logs_c1 FOR VALUES FROM ({start}) TO ({})",
                    start + RANGE,
                    s = trial.schema
                ))
                .await
                .unwrap();
            }
            trial.next_g += 1;
            let g = 9_000_000 + trial.next_g;
            let block = start + trial.rng.random_range(0..RANGE);
            pg.batch_execute(&format!(
                "INSERT INTO {} {}",
                trial.table(),
                Trial::values(1, block, g)
            ))
            .await
            .unwrap();
        }
        let point = CRASH_POINTS[trial.rng.random_range(0..CRASH_POINTS.len())];
        let nth = trial.rng.random_range(1..3);
        let mut child = spawn(&data, &final_config, Some(&format!("{point}@{nth}")));
        let (_, more) = run(&mut child, &mut trial, &pg, 3, None).await;
        log.extend(more);
        let context = format!("{context}; late rows, then crash at {point}@{nth}");
        settle(&mut trial, &pg, &data, &final_config, &context, &mut log).await;

        // The oracle: Postgres's rows plus the cold copy's, as a multiset of every value.
        let (_, names) = canonical_columns();
        let mut actual = rows_of(&pg, &trial.table()).await;
        let cold = e2e_tests::parquet_files(&data.join("cold/1/logs"));
        actual.extend(parquet_rows(&cold, &names));
        let expected = rows_of(&pg, &format!("{}.mirror", trial.schema)).await;
        let lost = multiset_difference(&expected, &actual);
        let extra = multiset_difference(&actual, &expected);
        if !(lost.is_empty() && extra.is_empty()) {
            // Where each differing row is, and the ranges' manifests, for the investigation; the
            // trial's directory is kept.
            let in_pg = rows_of(&pg, &trial.table()).await;
            for row in lost.iter().chain(&extra).take(3) {
                let files: Vec<String> = cold
                    .iter()
                    .filter(|f| parquet_rows(&[(*f).clone()], &names).contains(row))
                    .map(|f| f.strip_prefix(&data).unwrap_or(f).display().to_string())
                    .collect();
                eprintln!(
                    "row {:?}: {} time(s) in Postgres, in cold files {files:?}",
                    &row[..3],
                    in_pg.iter().filter(|r| *r == row).count()
                );
            }
            for manifest in walk_named(&data, "_compactor_manifest.json") {
                eprintln!(
                    "{}: {}",
                    manifest.display(),
                    std::fs::read_to_string(&manifest).unwrap_or_default()
                );
            }
            eprintln!("trial data kept in {}", dir.keep().display());
        }
        assert!(
            lost.is_empty() && extra.is_empty(),
            "{context}: {} row(s) lost, {} duplicated or stale; writes: {log:?}\nlost: {:?}\nextra: {:?}",
            lost.len(),
            extra.len(),
            lost.iter().take(3).collect::<Vec<_>>(),
            extra.iter().take(3).collect::<Vec<_>>()
        );
        assert!(
            e2e_tests::staging_leftovers(&data).is_empty(),
            "{context}: staging not cleaned"
        );
        *totals.entry("rows checked").or_insert(0) += expected.len();
        eprintln!(
            "{context}: settled, {} rows checked, {} writes",
            expected.len(),
            log.len()
        );
        pg.batch_execute(&format!("DROP SCHEMA {} CASCADE", trial.schema))
            .await
            .unwrap();
    }
    eprintln!("{trials} trials (seed {seed}): {totals:?}");
}
