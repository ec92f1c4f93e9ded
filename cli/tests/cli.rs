//! The compactor binary as users run it: killed at every step of the protocol and re-run,
//! exit codes, and clear errors.

use std::path::Path;
use std::process::{Command, Output};

use compaction::support::faults::{ENV as CRASH_ENV, POINTS};
use e2e_tests::{parquet_files, row_multiset, staging_leftovers, SAMPLE_COLUMNS};

const BIN: &str = env!("CARGO_BIN_EXE_compactor");

fn compactor(args: &[&str], crash_at: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove(CRASH_ENV)
        .env("RUST_LOG", "error");
    if let Some(point) = crash_at {
        cmd.env(CRASH_ENV, point);
    }
    cmd.output().expect("run compactor")
}

fn compact_args(dir: &Path) -> Vec<String> {
    [
        "compact",
        dir.to_str().unwrap(),
        "--prefix",
        "events/",
        "--target-file-size",
        "1MiB",
        "--row-group-size",
        "1MiB",
        "--small-file-threshold",
        "512KiB",
        "--max-task-bytes",
        "2MiB",
        "--workers",
        "2",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String], crash_at: Option<&str>) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    compactor(&refs, crash_at)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn generate(dir: &Path, partitions: &str, files: &str, rows: &str) {
    let out = compactor(
        &[
            "generate",
            dir.to_str().unwrap(),
            "--partitions",
            partitions,
            "--files-per-partition",
            files,
            "--rows-per-file",
            rows,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args` killed at crash point `point`, checks it was killed, then runs them again and
/// checks that run succeeded; returns the second run.
fn killed_then_rerun(args: &[String], point: &str) -> Output {
    let crashed = run(args, Some(point));
    assert!(
        crashed.status.code().is_none(),
        "{point}: the process should have been killed, got {:?}\n{}",
        crashed.status,
        String::from_utf8_lossy(&crashed.stderr)
    );
    let rerun = run(args, None);
    assert!(
        rerun.status.success(),
        "{point}: rerun failed: {}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    rerun
}

#[test]
fn a_process_killed_at_any_step_converges_on_rerun() {
    for point in POINTS {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "2", "80", "400");
        let before = row_multiset(&parquet_files(&dir.path().join("events")), SAMPLE_COLUMNS);
        let args = compact_args(dir.path());

        killed_then_rerun(&args, point);
        let after = row_multiset(&parquet_files(&dir.path().join("events")), SAMPLE_COLUMNS);
        assert_eq!(after.len(), before.len(), "{point}: row count changed");
        assert_eq!(after, before, "{point}: rows lost or duplicated");
        assert!(
            staging_leftovers(dir.path()).is_empty(),
            "{point}: staging not cleaned"
        );

        let third = json(&run(&args, None));
        assert_eq!(
            third["files_before"], 0,
            "{point}: a third run found work: {third}"
        );
        let small_files = parquet_files(&dir.path().join("events"))
            .iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("part-")
            })
            .count();
        assert_eq!(small_files, 0, "{point}: every small file was compacted");
    }
}

/// A hybrid merge (healthy row groups copied, tiny ones re-encoded) killed at each of its
/// steps, inside the merge between row groups included, converges with every row once.
#[test]
fn a_hybrid_merge_killed_at_any_step_converges_on_rerun() {
    use compaction::drivers::sample::{partition_path, sample_batch};
    use compaction::support::faults::MERGE_POINTS;
    let hour = chrono::Utc::now() - chrono::Duration::hours(5);
    let hour = hour - chrono::Duration::seconds(hour.timestamp() % 3600);
    let mut points: Vec<String> = POINTS.iter().map(|p| p.to_string()).collect();
    // Six row groups are copied and two encoded: stop at the first, a middle and the last.
    for (point, passages) in MERGE_POINTS.iter().zip([&[1, 3, 6][..], &[1, 2]]) {
        points.extend(passages.iter().map(|n| format!("{point}@{n}")));
    }
    for point in &points {
        let dir = tempfile::tempdir().unwrap();
        let partition = dir.path().join(format!("events/{}", partition_path(hour)));
        let groups = [8_000, 100, 100, 100, 8_000, 100, 100, 8_000, 100];
        for file in 0..2 {
            let batch = sample_batch(hour, file, 2, 24_800, 40 + file as u64).unwrap();
            e2e_tests::write_row_groups(
                &partition.join(format!("appender-{file}.parquet")),
                &batch,
                &groups,
            );
        }
        let before = row_multiset(&parquet_files(&dir.path().join("events")), SAMPLE_COLUMNS);
        let mut args = compact_args(dir.path());
        let at = args
            .iter()
            .position(|a| a == "--small-file-threshold")
            .unwrap();
        args[at + 1] = "16KiB".into();
        args.extend(["--healthy-row-group-size", "64KiB"].map(String::from));
        let rerun = killed_then_rerun(&args, point);
        let summary = json(&rerun);
        let after = row_multiset(&parquet_files(&dir.path().join("events")), SAMPLE_COLUMNS);
        assert_eq!(after, before, "{point}: rows lost or duplicated");
        assert!(
            staging_leftovers(dir.path()).is_empty(),
            "{point}: staging not cleaned"
        );
        if point.starts_with("mid-") || *point == "after-merge" {
            // Killed before anything was committed: the rerun did the merge, copies included.
            assert_eq!(summary["row_groups_copied"], 6, "{point}: {summary}");
        }
        let third = json(&run(&args, None));
        assert_eq!(
            third["files_before"], 0,
            "{point}: a third run found work: {third}"
        );
    }
}

/// A partition sorted in passes (run steps, then merge steps over key ranges) killed after
/// any step, inside a step, or anywhere in its commit, converges on rerun: every row once,
/// globally ordered, `seq` 0..N-1, nothing left in staging.
#[test]
fn a_sort_in_passes_killed_at_any_step_converges_on_rerun() {
    let mut points: Vec<String> = POINTS.iter().map(|p| p.to_string()).collect();
    points.extend(
        [
            "after-run-step@1",
            "after-run-step@3",
            "after-merge-step@1",
            "after-merge-step@2",
            "mid-encode@1",
            "mid-encode@8",
        ]
        .map(String::from),
    );
    for point in &points {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "1", "24", "6000");
        let before = row_multiset(&parquet_files(&dir.path().join("events")), SAMPLE_COLUMNS);
        let mut args = compact_args(dir.path());
        args.extend(
            [
                "--mode",
                "sort",
                "--sort-key",
                "ts_event",
                "--seq-column",
                "seq",
            ]
            .map(String::from),
        );
        killed_then_rerun(&args, point);
        let after = row_multiset(&parquet_files(&dir.path().join("events")), SAMPLE_COLUMNS);
        assert_eq!(after, before, "{point}: rows lost or duplicated");
        assert!(
            staging_leftovers(dir.path()).is_empty(),
            "{point}: staging not cleaned: {:?}",
            staging_leftovers(dir.path())
        );
        let sorted = e2e_tests::compacted_dirs(&dir.path().join("events"));
        assert_eq!(sorted.len(), 1, "{point}: one sorted partition");
        let files = parquet_files(&sorted[0]);
        let rows = row_multiset(&files, SAMPLE_COLUMNS).len() as i64;
        e2e_tests::assert_sorted_with_seq(&files, rows);
    }
}

#[test]
fn a_first_run_killed_while_it_creates_its_state_leaves_a_usable_one() {
    // Killed a few milliseconds after start, a first run is often inside the creation of its
    // state file; a file left without its header would stop every later run.
    for i in 0..60u64 {
        let after = std::time::Duration::from_micros(500 + (i % 16) * 400);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("events")).unwrap();
        let args = compact_args(dir.path());
        let mut child = Command::new(BIN)
            .args(&args)
            .env_remove(CRASH_ENV)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        let _ = child.kill();
        child.wait().unwrap();
        let out = run(&args, None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run after a kill at {after:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("_compactor"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "state.redb")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn a_flat_folder_killed_between_merge_and_commit_is_finished_by_the_next_run() {
    // No partition directories: the staging layout has no partition level, and recovery must
    // still find and finish the staged task.
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), "1", "12", "400");
    // Move the sample's files of its one cold partition up into a flat folder.
    let flat = dir.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    for f in parquet_files(&dir.path().join("events")) {
        let name = f.file_name().unwrap().to_owned();
        std::fs::rename(&f, flat.join(name)).unwrap();
    }
    let before = row_multiset(&parquet_files(&flat), SAMPLE_COLUMNS);
    let args: Vec<String> = [
        "compact",
        dir.path().to_str().unwrap(),
        "--prefix",
        "flat/",
        "--template",
        "",
        "--grace",
        "0s",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let crashed = run(&args, Some("after-merge"));
    assert!(crashed.status.code().is_none(), "killed after the merge");
    assert!(
        !staging_leftovers(dir.path()).is_empty(),
        "a staged task was left"
    );
    let rerun = run(&args, None);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(
        staging_leftovers(dir.path()).is_empty(),
        "recovery finished it"
    );
    let files = parquet_files(&flat);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        row_multiset(&files, SAMPLE_COLUMNS),
        before,
        "every row kept"
    );
}

#[test]
fn exit_codes_tell_success_partial_and_error() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), "1", "10", "100");
    let partition = std::fs::read_dir(dir.path().join("events"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let hour = std::fs::read_dir(&partition)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::write(hour.join("broken.parquet"), b"definitely not parquet").unwrap();
    let args = compact_args(dir.path());
    let partial = run(&args, None);
    assert_eq!(
        partial.status.code(),
        Some(3),
        "corrupt input skipped: partial"
    );
    let report = json(&partial);
    assert!(report["corrupt_skipped"][0]["key"]
        .as_str()
        .unwrap()
        .ends_with("broken.parquet"));
    assert!(
        hour.join("broken.parquet").exists(),
        "a corrupt file is never deleted"
    );

    let ok = run(&args, None);
    assert_eq!(ok.status.code(), Some(0), "nothing left to do: success");

    let missing = compactor(&["compact", "/nonexistent/dir"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a directory"));

    let usage = compactor(&["compact"], None);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn bad_configuration_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = compactor(
        &["plan", dir.path().to_str().unwrap(), "--mode", "sort"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sort_key"), "{err}");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[[dataset]]\nname = \"e\"\nsource_prefix = \"e/\"\npartition_template = \"dt={date}\"\ntarget_file_sise = \"1MiB\"\n").unwrap();
    let out = compactor(
        &[
            "plan",
            dir.path().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("target_file_sise"),
        "unknown field named: {err}"
    );
}

#[test]
fn plan_is_a_dry_run_and_help_documents_options() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), "1", "5", "50");
    let before = parquet_files(dir.path());
    let out = compactor(
        &["plan", dir.path().to_str().unwrap(), "--prefix", "events/"],
        None,
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("compact 5 file(s)") && text.contains("dry run"),
        "{text}"
    );
    assert_eq!(parquet_files(dir.path()), before);
    let help = String::from_utf8_lossy(&compactor(&["compact", "--help"], None).stdout).to_string();
    for flag in [
        "--target-file-size",
        "--mode",
        "--sort-key",
        "--seq-column",
        "--compression",
        "--output-prefix",
        "--grace",
        "--dry-run",
        "--memory-budget",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

/// The CLI on `s3://` with DynamoDB state, against moto's server: what users run outside Lambda.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacts_an_s3_location_with_dynamodb_state() {
    use compaction::ports::store::ObjectStore;
    let (client, bucket) = e2e_tests::aws::bucket().await;
    let table = e2e_tests::aws::dynamo_state().await;
    let store =
        std::sync::Arc::new(compaction::ports::store::S3Store::new(client, &bucket, "").unwrap());
    compaction::drivers::sample::generate(
        store.clone(),
        &compaction::drivers::sample::SampleSpec {
            prefix: "events/".into(),
            partitions: 2,
            files_per_partition: 5,
            rows_per_file: 200,
            include_hot_partition: true,
            now: chrono::Utc::now(),
            seed: 3,
        },
    )
    .await
    .unwrap();
    let before = tempfile::tempdir().unwrap();
    e2e_tests::aws::mirror(store.as_ref(), "events/", before.path()).await;
    let location = format!("s3://{bucket}");
    let state = format!("dynamodb://{}", table.table());
    let run = |args: Vec<String>| {
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env_remove(CRASH_ENV)
            .env("RUST_LOG", "error")
            .env("AWS_ENDPOINT_URL", e2e_tests::aws::endpoint())
            .env("AWS_REGION", e2e_tests::aws::REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing");
        cmd.output().expect("run compactor")
    };
    let mut args = compact_args(Path::new(&location));
    args.extend(["--state".to_string(), state.clone()]);
    let out = run(args.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["partitions_compacted"], 2, "{summary}");
    assert_eq!(summary["files_after"], 2, "{summary}");
    let after = tempfile::tempdir().unwrap();
    e2e_tests::aws::mirror(store.as_ref(), "events/", after.path()).await;
    let rows = |d: &Path| row_multiset(&parquet_files(&d.join("events")), SAMPLE_COLUMNS);
    assert_eq!(rows(before.path()), rows(after.path()));
    assert!(store.head("_compactor/staging").await.unwrap().is_none());
    // Without --state an S3 location is refused with the fix in the message.
    let refused = run(vec![
        "compact".into(),
        location,
        "--prefix".into(),
        "events/".into(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--state dynamodb://TABLE"));
}

/// A hot range's commit killed after its files went live (before any Postgres delete) and
/// between two bounded deletes: the rerun finishes the delete, exactly once per row, and the
/// cold copy holds every row exactly once.
#[test]
fn a_hot_export_killed_around_the_postgres_delete_resumes_and_deletes_once() {
    use compaction::support::faults::POSTGRES_POINTS;
    let rt = tokio::runtime::Runtime::new().unwrap();
    for point in POSTGRES_POINTS {
        let hot = HotFixture::new(
            &rt,
            "CREATE TABLE {schema}.tx (chain_id int8, block_number int8, v text);
             INSERT INTO {schema}.tx SELECT c, g, c || ':' || g FROM generate_series(0, 2009) g, generate_series(1, 2) c;
             CREATE TABLE {schema}.deleted (chain_id int8, block_number int8);
             CREATE FUNCTION {schema}.log() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO {schema}.deleted VALUES (OLD.chain_id, OLD.block_number); RETURN OLD; END $$;
             CREATE TRIGGER log AFTER DELETE ON {schema}.tx FOR EACH ROW EXECUTE FUNCTION {schema}.log();",
        );
        let (pg, schema, data) = (&hot.pg, &hot.schema, &hot.data);
        let count = |sql: String| rt.block_on(e2e_tests::pg::count(pg, &sql));
        let with_dsn = |crash: Option<&str>| hot.run(crash);

        let crashed = with_dsn(Some(point));
        assert!(
            crashed.status.code().is_none(),
            "{point}: the process should have been killed: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        let deleted_before = count(format!("SELECT count(*) FROM {schema}.deleted"));
        match *point {
            "after-delete" | "before-postgres-commit" => {
                assert_eq!(
                    deleted_before, 0,
                    "{point}: no delete committed before the crash"
                )
            }
            _ => assert!(
                (1..=200).contains(&deleted_before),
                "{point}: a batch of each range at most before the crash, got {deleted_before}"
            ),
        }

        let rerun = with_dsn(None);
        assert!(
            rerun.status.success(),
            "{point}: rerun failed: {}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        // Exactly the two final ranges of chain 1 left Postgres, each row once.
        assert_eq!(
            count(format!(
                "SELECT count(*) FROM {schema}.tx WHERE chain_id = 1 AND block_number < 2000"
            )),
            0
        );
        assert_eq!(
            count(format!("SELECT count(*) FROM {schema}.tx")),
            4020 - 2000
        );
        assert_eq!(
            count(format!("SELECT count(*) FROM {schema}.deleted")),
            2000
        );
        assert_eq!(
            count(format!("SELECT count(*) FROM (SELECT 1 FROM {schema}.deleted GROUP BY 1, chain_id, block_number HAVING count(*) > 1) d")),
            0,
            "{point}: a row deleted twice"
        );
        let cold = parquet_files(&data.join("cold/1/tx"));
        let rows = row_multiset(&cold, &["block_number", "v"]);
        assert_eq!(rows.len(), 2000, "{point}: the cold copy");
        let mut unique = rows.clone();
        unique.dedup();
        assert_eq!(unique.len(), 2000, "{point}: duplicates in the cold copy");
        assert!(
            staging_leftovers(data).is_empty(),
            "{point}: staging not cleaned"
        );

        let third = json(&with_dsn(None));
        assert_eq!(
            third["hot_ranges_exported"], 0,
            "{point}: a third run found work: {third}"
        );
    }
}

#[test]
fn a_flagged_range_whose_rows_all_left_postgres_is_exported_again() {
    // The export of range [0, 1000) is committed, then killed before its delete; meanwhile the
    // application deletes every row of the range. The resumed delete finds none of the cold
    // copy's rows and is refused (flagged). Postgres then holds no row of the range, and the
    // next run must still export it again, or the cold copy keeps rows that no longer exist.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hot = HotFixture::new(
        &rt,
        "CREATE TABLE {schema}.tx (chain_id int8, block_number int8, v text);
         INSERT INTO {schema}.tx SELECT 1, g, 'v' || g FROM generate_series(0, 1009) g;",
    );
    let (pg, schema, data) = (&hot.pg, &hot.schema, &hot.data);
    let count = |sql: String| rt.block_on(e2e_tests::pg::count(pg, &sql));
    let run = |crash: Option<&str>| hot.run(crash);
    let cold_rows = || {
        let files = parquet_files(&data.join("cold/1/tx/0-1000"));
        e2e_tests::hot::parquet_rows(&files, &["block_number"]).len()
    };

    let crashed = run(Some("after-manifest"));
    assert!(crashed.status.code().is_none(), "killed after the commit");
    assert_eq!(cold_rows(), 1000, "the range's cold copy is live");
    rt.block_on(pg.batch_execute(&format!(
        "DELETE FROM {schema}.tx WHERE block_number < 1000"
    )))
    .unwrap();

    // The resumed run finishes the commit, whose delete is refused (flagged, exit 3), and then
    // exports the flagged range again although Postgres holds none of its rows.
    let resumed = run(None);
    assert_eq!(
        resumed.status.code(),
        Some(3),
        "the refused delete is reported: {}",
        String::from_utf8_lossy(&resumed.stdout)
    );
    let report = json(&resumed);
    assert_eq!(report["hot_ranges_flagged"], 1, "{report}");
    let last = report["events"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .expect("commit events");
    assert_eq!(
        (&last["dataset_version"], &last["postgres"]["state"]),
        (&serde_json::json!(2), &serde_json::json!("moved")),
        "the flagged range is exported again: {report}"
    );
    assert_eq!(
        cold_rows(),
        0,
        "no row the application deleted stays in the cold copy"
    );
    assert_eq!(
        count(format!("SELECT count(*) FROM {schema}.tx")),
        10,
        "the rows of the range not final yet stay in Postgres"
    );
    let settled = run(None);
    assert!(
        settled.status.success(),
        "{}",
        String::from_utf8_lossy(&settled.stderr)
    );
    assert_eq!(
        json(&settled)["partitions_compacted"],
        0,
        "nothing left to do"
    );
}

/// A hot dataset `tx` (chain 1, ranges of 1000 blocks, final 5 blocks behind the tip, rows
/// deleted after the export) over a table made by `ddl` in a fresh schema (`{schema}` in `ddl`
/// names it), and the compactor run on it.
struct HotFixture {
    _dir: tempfile::TempDir,
    pg: tokio_postgres::Client,
    schema: String,
    config: std::path::PathBuf,
    data: std::path::PathBuf,
}

impl HotFixture {
    fn new(rt: &tokio::runtime::Runtime, ddl: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (pg, schema) = rt.block_on(async {
            let pg = e2e_tests::pg::connect().await;
            let schema = e2e_tests::pg::schema(&pg).await;
            pg.batch_execute(&ddl.replace("{schema}", &schema))
                .await
                .unwrap();
            (pg, schema)
        });
        let config = dir.path().join("hot.toml");
        std::fs::write(
            &config,
            format!(
                "[[hot_dataset]]\nname = \"tx\"\ntable = \"{schema}.tx\"\nchain_id = 1\nrange_size = 1000\n\
                 finality_depth_blocks = 5\nchunk_size = 300\ndelete_after_compact = true\ndelete_batch_rows = 100\n"
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        Self {
            _dir: dir,
            pg,
            schema,
            config,
            data,
        }
    }

    /// `compactor compact --json` on the dataset, crashing at `crash` if given.
    fn run(&self, crash: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "compact",
            self.data.to_str().unwrap(),
            "--config",
            self.config.to_str().unwrap(),
            "--json",
        ])
        .env_remove(CRASH_ENV)
        .env("RUST_LOG", "error")
        .env("COMPACTOR_PG_DSN", e2e_tests::pg::dsn());
        if let Some(point) = crash {
            cmd.env(CRASH_ENV, point);
        }
        cmd.output().expect("run compactor")
    }
}
