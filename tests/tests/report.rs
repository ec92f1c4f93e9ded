//! The lake health report against fixtures: every finding (gap, schema drift, corrupt file,
//! fragmented file, late file, quarantined file) comes from a partition that has it and from
//! no other; the JSON keeps its documented layout (docs/report.md); the HTML page loads in a
//! real headless Chromium without console errors, with one heat-map cell per partition; the
//! same data on S3 (moto) gives the same report as on the local store.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, Duration, TimeZone, Utc};
use compaction::drivers::sample::{generate, partition_path, sample_batch, SampleSpec};
use compaction::model::config::Config;
use compaction::model::report::{Health, LakeReport, PartitionHealth};
use compaction::ports::state::{EmbeddedState, StateStore};
use compaction::ports::store::ObjectStore;
use compaction::services::report::{Footers, ReportOptions, Reporter};
use compaction::support::units::ByteSize;
use e2e_tests::*;

/// The sample's partitions end two hours before this.
fn sample_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
}

/// Hour `i` (0-based) of the six sample partitions.
fn hour(i: i64) -> DateTime<Utc> {
    sample_now() - Duration::hours(7 - i)
}

fn spec() -> SampleSpec {
    SampleSpec {
        prefix: "events/".into(),
        partitions: 6,
        files_per_partition: 8,
        rows_per_file: 300,
        include_hot_partition: false,
        now: sample_now(),
        seed: 21,
    }
}

fn config() -> Config {
    let mut config = small_config();
    let ds = &mut config.datasets[0];
    ds.small_file_threshold = ByteSize(16 << 10);
    ds.healthy_row_group_size = ByteSize(64 << 10);
    config
}

async fn report(store: Arc<dyn ObjectStore>, state: Arc<dyn StateStore>) -> LakeReport {
    Reporter::new(store, state, None)
        .report(
            &config(),
            &ReportOptions {
                // Before the hour after the last sample partition ends: it is not expected yet.
                now: sample_now() - Duration::minutes(30),
                since: None,
                datasets: Vec::new(),
                footers: Footers::All,
            },
        )
        .await
        .expect("report")
}

fn partition(report: &LakeReport, i: i64) -> &PartitionHealth {
    let name = partition_path(hour(i));
    report.datasets[0]
        .partitions
        .iter()
        .find(|p| p.partition == name)
        .unwrap_or_else(|| panic!("no partition {name} in the report"))
}

/// The compacted sample with one finding per partition: 0 clean, 1 a gap, 2 a late file, 3 a
/// drifted file, 4 a corrupt file, 5 a fragmented file.
async fn fixture(env: &Env) {
    generate(Arc::clone(&env.store), &spec()).await.unwrap();
    let summary = env.run(&config()).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.commits.len(), 6);
    // File times are as coarse as the kernel's clock tick: the files below must be seen as
    // written after the commit.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let dir = |i: i64| env.root().join("events").join(partition_path(hour(i)));
    std::fs::remove_dir_all(dir(1)).unwrap();
    write_parquet(
        &dir(2).join("late.parquet"),
        &sample_batch(hour(2), 0, 1, 50, 99).unwrap(),
    );
    let drifted = sample_batch(hour(3), 0, 1, 50, 98).unwrap();
    let at = drifted.schema().index_of("user_id").unwrap();
    let mut fields: Vec<Field> = drifted
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[at] = Field::new("user_id", DataType::Int32, false);
    let mut columns = drifted.columns().to_vec();
    columns[at] = Arc::new(Int32Array::from_iter_values(0..50));
    write_parquet(
        &dir(3).join("drifted.parquet"),
        &RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap(),
    );
    std::fs::write(dir(4).join("corrupt.parquet"), b"not parquet at all").unwrap();
    // With company, so that the next merge runs and quarantines it.
    write_parquet(
        &dir(4).join("late.parquet"),
        &sample_batch(hour(4), 0, 1, 50, 96).unwrap(),
    );
    let big = sample_batch(hour(5), 0, 1, 20_000, 97).unwrap();
    let mut groups = vec![8_000];
    groups.extend([100; 20]);
    write_row_groups(&dir(5).join("appender.parquet"), &big, &groups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_finding_comes_from_the_partition_that_has_it() {
    let env = Env::new();
    fixture(&env).await;
    let r = report(Arc::clone(&env.store), Arc::clone(&env.state)).await;
    let ds = &r.datasets[0];
    assert_eq!(ds.partitions.len(), 6, "five partitions and one gap");

    let clean = partition(&r, 0);
    assert_eq!(clean.health, Health::Good, "{clean:?}");
    assert!(clean.files > 0 && clean.rows == 8 * 300, "{clean:?}");
    assert!(clean.schema_variants.is_empty() && clean.corrupt.is_empty());
    assert_eq!(
        (clean.late_files, clean.fragmented_files, clean.small_files),
        (0, 0, 0)
    );
    assert_eq!(clean.state.as_ref().unwrap().status, "compacted");

    let gap = partition(&r, 1);
    assert_eq!((gap.health, gap.files), (Health::Gap, 0));

    let late = partition(&r, 2);
    assert_eq!(
        (late.health, late.late_files),
        (Health::Warn, 1),
        "{late:?}"
    );
    assert!(late.schema_variants.is_empty() && late.corrupt.is_empty());

    let drift = partition(&r, 3);
    assert_eq!(drift.schema_variants.len(), 1, "{drift:?}");
    let variant = &drift.schema_variants[0];
    assert_eq!(variant.column, "user_id");
    assert!(
        variant.detail.starts_with("Int32 in 1 file(s)"),
        "{variant:?}"
    );
    assert!(variant.files[0].ends_with("drifted.parquet"));

    let corrupt = partition(&r, 4);
    assert_eq!(corrupt.health, Health::Bad);
    assert_eq!(corrupt.corrupt.len(), 1, "{corrupt:?}");
    assert!(corrupt.corrupt[0].key.ends_with("corrupt.parquet"));

    let fragmented = partition(&r, 5);
    assert_eq!(
        (
            fragmented.fragmented_files,
            fragmented.fragmented_row_groups
        ),
        (1, 20),
        "{fragmented:?}"
    );
    assert!(fragmented.corrupt.is_empty() && fragmented.schema_variants.is_empty());

    // Findings belong to their partition only.
    for p in &ds.partitions {
        let name = &p.partition;
        assert_eq!(
            p.corrupt.is_empty(),
            *name != partition_path(hour(4)),
            "{p:?}"
        );
        assert_eq!(
            p.schema_variants.is_empty(),
            *name != partition_path(hour(3))
        );
        assert_eq!(p.fragmented_files == 0, *name != partition_path(hour(5)));
        assert_eq!(p.health == Health::Gap, *name == partition_path(hour(1)));
    }
    // Worst first.
    let order: Vec<Health> = ds.partitions.iter().map(|p| p.health).collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted);
    assert_eq!(
        (r.totals.gaps, r.totals.corrupt_files, r.totals.late_files),
        (1, 1, 5)
    );

    // Compacting again (every partition with a new file) quarantines the corrupt file: the
    // report says so.
    let mut eager = config();
    eager.datasets[0].min_file_count = 1;
    env.run(&eager).await;
    let again = report(Arc::clone(&env.store), Arc::clone(&env.state)).await;
    let quarantined = partition(&again, 4);
    assert_eq!(quarantined.quarantined.len(), 1, "{quarantined:?}");
    assert!(quarantined.corrupt.is_empty());
    assert_eq!(quarantined.health, Health::Bad);
}

/// Every key path of the report's JSON (`a.b[].c`), sorted.
fn key_paths(value: &serde_json::Value, at: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_has_exactly_the_documented_fields() {
    let env = Env::new();
    fixture(&env).await;
    let mut r = report(Arc::clone(&env.store), Arc::clone(&env.state)).await;
    // A hot dataset's part, so every documented field appears.
    r.datasets.push(compaction::model::report::DatasetHealth {
        dataset: "blocks".into(),
        kind: "hot".into(),
        hot: Some(compaction::model::report::HotHealth {
            backlog: vec![compaction::model::report::BacklogRange {
                range: "0-100".into(),
                rows: 3,
                cold: "not exported".into(),
            }],
            ..Default::default()
        }),
        ..Default::default()
    });
    // A quarantined file, as a merge records it.
    r.datasets[0].partitions[0]
        .quarantined
        .push(compaction::model::report::FileNote {
            key: "k".into(),
            reason: "r".into(),
        });
    let mut found = BTreeSet::new();
    key_paths(&serde_json::to_value(&r).unwrap(), "", &mut found);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/report.md"))
        .expect("docs/report.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let undocumented: Vec<_> = found.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&found).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "fields not in docs/report.md: {undocumented:?}; documented but not produced: {missing:?}"
    );
    assert_eq!(r.format, compaction::model::report::REPORT_FORMAT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_page_loads_in_chromium_with_one_cell_per_partition() {
    let env = Env::new();
    fixture(&env).await;
    let r = report(Arc::clone(&env.store), Arc::clone(&env.state)).await;
    let page = env.root().join("report.html");
    std::fs::write(&page, compaction::drivers::report_page::html(&r)).unwrap();
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| which(b))
        .expect(
            "no headless browser: install Chromium (apt-get install chromium); scripts/test \
             installs it",
        );
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            env.root().join("chromium-profile").display()
        ))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run the browser");
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{browser} failed: {log}");
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let cells = dom.matches("data-partition=").count();
    assert_eq!(
        cells,
        r.datasets[0].partitions.len(),
        "one cell per partition"
    );
    assert!(dom.contains("class=\"cell gap\""), "the gap is drawn");
    assert!(dom.contains("</table>"));
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The same sample on moto's S3 and on the local store: the same report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_on_s3_equals_the_local_one() {
    let env = Env::new();
    generate(Arc::clone(&env.store), &spec()).await.unwrap();
    let (client, bucket) = aws::bucket().await;
    let s3: Arc<dyn ObjectStore> =
        Arc::new(compaction::ports::store::S3Store::new(client, &bucket, "").unwrap());
    generate(Arc::clone(&s3), &spec()).await.unwrap();
    // A fragmented file and a corrupt one in both.
    let big = sample_batch(hour(5), 0, 1, 20_000, 97).unwrap();
    let mut groups = vec![8_000];
    groups.extend([100; 20]);
    let local = env
        .root()
        .join("events")
        .join(partition_path(hour(5)))
        .join("appender.parquet");
    write_row_groups(&local, &big, &groups);
    let corrupt = format!("events/{}/corrupt.parquet", partition_path(hour(2)));
    for store in [&env.store, &s3] {
        store
            .put(
                &corrupt,
                bytes::Bytes::from_static(b"garbage"),
                compaction::ports::store::PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    s3.put(
        &format!("events/{}/appender.parquet", partition_path(hour(5))),
        bytes::Bytes::from(std::fs::read(&local).unwrap()),
        compaction::ports::store::PutMode::Overwrite,
    )
    .await
    .unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let s3_state: Arc<dyn StateStore> =
        Arc::new(EmbeddedState::open(state_dir.path().join("state.redb")).unwrap());
    let on_s3 = report(s3, s3_state).await;
    let on_disk = report(Arc::clone(&env.store), Arc::clone(&env.state)).await;
    assert_eq!(on_s3, on_disk);
    assert_eq!(on_disk.totals.fragmented_row_groups, 20);
    assert_eq!(on_disk.totals.corrupt_files, 1);
}
