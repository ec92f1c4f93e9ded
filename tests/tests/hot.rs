//! Hot datasets against a real PostgreSQL: export of finalized ranges into cold Parquet, the
//! replace commit, and the bounded delete — with the local pipeline (directory + embedded state).

use std::sync::Arc;

use compaction::model::hot::cold::DeleteState;
use compaction::model::hot::config::{HotDatasetConfig, UnboundedNumeric};
use compaction::model::plan::SkipReason;
use compaction::model::state::{PartitionId, PartitionStatus};
use compaction::services::planner::PartitionOutcome;
use e2e_tests::hot::{canonical_sql, hot_config, parquet_rows, pg_rows, HotEnv};
use e2e_tests::{parquet_files, read_batches, staging_leftovers};

/// Every supported type, with the SQL that fills it (row `g` of a generate_series); every
/// nullable column is NULL on some rows.
const TYPED_COLUMNS: &[(&str, &str, &str)] = &[
    ("i2", "int2", "CASE WHEN g % 11 = 0 THEN NULL ELSE ((g * 37) % 32767 - 16000)::int2 END"),
    ("i4", "int4", "CASE WHEN g % 7 = 0 THEN NULL ELSE (g * 104729 % 2147483647)::int4 * (CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END) END"),
    ("i8", "int8", "CASE WHEN g % 5 = 0 THEN NULL ELSE g::int8 * 3037000493 - 4611686018427387904 END"),
    ("f4", "float4", "CASE WHEN g % 13 = 0 THEN NULL WHEN g % 17 = 0 THEN 'NaN'::float4 WHEN g % 19 = 0 THEN '-Infinity'::float4 ELSE (g / 7.0)::float4 END"),
    ("f8", "float8", "CASE WHEN g % 13 = 1 THEN NULL WHEN g % 23 = 0 THEN '-0'::float8 ELSE g * pi() * 1e-300 END"),
    ("n", "numeric(20,4)", "CASE WHEN g % 9 = 0 THEN NULL ELSE round((g * 12345.6789 - 500000)::numeric, 4) END"),
    ("big", "numeric(60,10)", "CASE WHEN g % 9 = 1 THEN NULL ELSE ('-1234567890123456789012345678901234567890123456789.' || lpad((g * 7919 % 10000000000)::text, 10, '0'))::numeric(60,10) * (CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END) END"),
    ("t", "text", "CASE WHEN g % 10 = 0 THEN NULL WHEN g % 10 = 1 THEN '' ELSE 'row ' || g || ' héllo ✓ \"quoted\", tab\t' END"),
    ("vc", "varchar(24)", "CASE WHEN g % 6 = 0 THEN NULL ELSE 'v' || g END"),
    ("c", "char(6)", "CASE WHEN g % 6 = 1 THEN NULL ELSE 'c' || (g % 100) END"),
    ("nm", "name", "'name_' || (g % 50)"),
    ("b", "bytea", "CASE WHEN g % 8 = 0 THEN NULL WHEN g % 8 = 1 THEN ''::bytea ELSE decode(lpad(to_hex(g), 8, '0') || '00ff', 'hex') END"),
    ("flag", "bool", "CASE WHEN g % 3 = 0 THEN NULL ELSE g % 2 = 0 END"),
    ("d", "date", "CASE WHEN g % 14 = 0 THEN NULL ELSE date '1969-07-20' + (g * 97 % 40000 - 20000) END"),
    ("ts", "timestamp", "CASE WHEN g % 15 = 0 THEN NULL ELSE timestamp '1900-01-01 00:00:00.000001' + g * interval '1 day 3 hours 7 minutes 11.123457 seconds' END"),
    ("tstz", "timestamptz", "CASE WHEN g % 16 = 0 THEN NULL ELSE timestamptz '2024-03-31 01:59:59.999999+02' + g * interval '17 minutes 0.000003 seconds' END"),
    ("tm", "time", "CASE WHEN g % 12 = 0 THEN NULL ELSE time '00:00:00' + g * interval '13 minutes 7.654321 seconds' END"),
    ("id", "uuid", "CASE WHEN g % 18 = 0 THEN NULL ELSE md5(g::text)::uuid END"),
    ("j", "json", "CASE WHEN g % 20 = 0 THEN NULL ELSE ('{\"b\" : ' || g || ',  \"a\": [1, 2.50, null], \"s\": \"é\"}')::json END"),
    ("jb", "jsonb", "CASE WHEN g % 21 = 0 THEN NULL ELSE ('{\"b\" : ' || g || ',  \"a\": [1, 2.50, null], \"nested\": {\"k\": true}}')::jsonb END"),
    ("ints", "int4[]", "CASE WHEN g % 4 = 0 THEN NULL WHEN g % 4 = 1 THEN '{}'::int4[] ELSE ARRAY[g, NULL, -g]::int4[] END"),
    ("texts", "text[]", "CASE WHEN g % 5 = 2 THEN NULL ELSE ARRAY['a b', '', NULL, 'x' || g] END"),
    ("nums", "numeric(10,2)[]", "ARRAY[(g / 3.0)::numeric(10,2), NULL, -1.5]::numeric(10,2)[]"),
    ("stamps", "timestamptz[]", "ARRAY[timestamptz '2000-01-01 00:00:00+00' + g * interval '1 second', NULL]"),
    ("u8s", "bytea[]", "ARRAY[decode('00', 'hex'), NULL]"),
];

fn blocks(env: &HotEnv, table: &str) -> HotDatasetConfig {
    HotDatasetConfig {
        chain_id: Some(1),
        range_size: 1000,
        finality_depth_blocks: 10,
        chunk_size: 400,
        ..HotDatasetConfig::new("blocks", &env.table(table))
    }
}

/// A table `name` of chain 1 and chain 2 rows, blocks `0..blocks` (one row per block per
/// chain, plus a second row on every 10th block of chain 1), with every supported type.
async fn typed_table(env: &HotEnv, name: &str, blocks: i64) {
    let columns: Vec<String> = TYPED_COLUMNS
        .iter()
        .map(|(c, t, _)| format!("{c} {t}"))
        .collect();
    let values: Vec<&str> = TYPED_COLUMNS.iter().map(|(_, _, v)| *v).collect();
    env.sql(&format!(
        "CREATE TABLE {table} (chain_id int8 NOT NULL, block_number int8 NOT NULL, seq int4 NOT NULL, {cols});
         CREATE INDEX ON {table} (chain_id, block_number);
         INSERT INTO {table} SELECT c, g, c * 1000000 + g, {vals} FROM generate_series(0, {last}) g, generate_series(1, 2) c;
         INSERT INTO {table} SELECT 1, g, 5000000 + g, {vals} FROM generate_series(0, {last}, 10) g;",
        table = env.table(name),
        cols = columns.join(", "),
        vals = values.join(", "),
        last = blocks - 1,
    ))
    .await;
}

/// The canonical rows of one range as Postgres holds them, ordered by `seq`.
async fn expected_rows(
    env: &HotEnv,
    table: &str,
    chain: i64,
    start: i64,
    end: i64,
) -> Vec<Vec<Option<String>>> {
    let exprs: Vec<String> = std::iter::once(("block_number", "int8"))
        .chain(std::iter::once(("seq", "int4")))
        .chain(TYPED_COLUMNS.iter().map(|(c, t, _)| (*c, *t)))
        .map(|(c, t)| canonical_sql(c, t))
        .collect();
    pg_rows(
        &env.pg,
        &format!(
            "SELECT {} FROM {} WHERE chain_id = {chain} AND block_number >= {start} AND block_number < {end} ORDER BY seq",
            exprs.join(", "),
            env.table(table)
        ),
    )
    .await
}

fn column_names() -> Vec<&'static str> {
    ["block_number", "seq"]
        .into_iter()
        .chain(TYPED_COLUMNS.iter().map(|(c, _, _)| *c))
        .collect()
}

fn sorted_by_seq(mut rows: Vec<Vec<Option<String>>>) -> Vec<Vec<Option<String>>> {
    rows.sort_by_key(|r| r[1].as_deref().map(|s| s.parse::<i64>().unwrap()));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_type_round_trips_and_the_range_is_deleted() {
    let env = HotEnv::new().await;
    typed_table(&env, "blocks", 2500).await;
    let hot = HotDatasetConfig {
        delete_after_compact: true,
        delete_batch_rows: 150,
        unbounded_numeric: UnboundedNumeric::Decimal256,
        ..blocks(&env, "blocks")
    };
    let before = expected_rows(&env, "blocks", 1, 0, 1000).await;
    assert_eq!(before.len(), 1100);
    env.sql(&format!(
        "CREATE TABLE {log} (block_number int8, xid xid8);
         CREATE FUNCTION {schema}.log_delete() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO {log} VALUES (OLD.block_number, pg_current_xact_id()); RETURN OLD; END $$;
         CREATE TRIGGER log_delete AFTER DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {schema}.log_delete();",
        log = env.table("deleted"),
        schema = env.schema,
        table = env.table("blocks"),
    ))
    .await;

    let summary = env
        .run(&hot_config(hot.clone()), Some(vec!["0-1000".into()]))
        .await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.commits.len(), 1);
    let commit = &summary.commits[0];
    assert_eq!(commit.rows, 1100);
    let event = commit.event();
    assert_eq!(event["partition_key"], "0-1000");
    assert_eq!(event["dataset_uuid"], hot.dataset_uuid());
    assert_eq!(event["dataset_version"], commit.generation);

    // The cold copy: chunk_size rows per file, every value exactly as Postgres had it.
    let files = env.range_files(&hot, "0-1000");
    let sizes: Vec<usize> = files
        .iter()
        .map(|f| read_batches(f).iter().map(|b| b.num_rows()).sum())
        .collect();
    assert_eq!(sizes, vec![400, 400, 300]);
    let after = sorted_by_seq(parquet_rows(&files, &column_names()));
    assert_eq!(after.len(), before.len());
    for (row, (want, got)) in before.iter().zip(&after).enumerate() {
        assert_eq!(want, got, "row {row} differs");
    }
    // Declared types: decimals keep precision and scale, timestamptz is UTC, NOT NULL stays.
    let schema = read_batches(&files[0])[0].schema();
    let field = |name: &str| schema.field_with_name(name).unwrap().clone();
    assert_eq!(field("n").data_type().to_string(), "Decimal128(20, 4)");
    assert_eq!(field("big").data_type().to_string(), "Decimal256(60, 10)");
    assert!(field("tstz").data_type().to_string().contains("UTC"));
    assert!(!field("block_number").is_nullable() && field("i2").is_nullable());
    let metadata =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&files[0]).unwrap())
            .map(|r| parquet::file::reader::FileReader::metadata(&r).clone())
            .unwrap();
    let logical = |name: &str| {
        metadata
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .find(|c| c.path().string() == name)
            .and_then(|c| c.logical_type_ref().cloned())
    };
    assert_eq!(logical("id"), Some(parquet::basic::LogicalType::Uuid));
    assert_eq!(logical("jb"), Some(parquet::basic::LogicalType::Json));

    // Exactly that range and chain left Postgres, in bounded transactions.
    let table = env.table("blocks");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {table} WHERE chain_id = 1 AND block_number < 1000"
        ))
        .await,
        0
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {table} WHERE chain_id = 1 AND block_number >= 1000"
        ))
        .await,
        1500 + 150
    );
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM {table} WHERE chain_id = 2"))
            .await,
        2500
    );
    let log = env.table("deleted");
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM {log}")).await,
        1100
    );
    let transactions = env
        .count(&format!("SELECT count(DISTINCT xid::text) FROM {log}"))
        .await;
    let largest = env
        .count(&format!(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM {log} GROUP BY xid::text) x"
        ))
        .await;
    assert!(
        transactions >= 8 && largest <= 150,
        "{transactions} transactions, largest {largest}"
    );

    let record = env
        .env
        .state
        .get(&PartitionId::new("blocks", "0-1000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, PartitionStatus::Compacted);
    assert_eq!(
        record.cold.map(|c| c.delete),
        Some(DeleteState::Moved {
            deleted: 1100,
            partition: None
        })
    );
    assert!(staging_leftovers(env.env.root()).is_empty());

    // Exporting the range again keeps the moved files (the only copy of those rows) as they
    // are and finds nothing new in Postgres.
    let again = env
        .run(&hot_config(hot.clone()), Some(vec!["0-1000".into()]))
        .await;
    assert_eq!(again.commits.len(), 1, "{:?}", again.failures);
    let cold = again.commits[0].cold.clone().unwrap();
    assert_eq!((cold.rows, cold.moved_rows, cold.exported), (1100, 1100, 0));
    assert_eq!(again.commits[0].inputs_deleted, 0);
    assert_eq!(env.range_files(&hot, "0-1000"), files);
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM {log}")).await,
        1100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_final_ranges_are_exported_and_sweeps_do_not_repeat_them() {
    let env = HotEnv::new().await;
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int4, block_number int4, payload text);
         INSERT INTO {t} SELECT 1, g, 'p' || g FROM generate_series(0, 3004) g;
         INSERT INTO {t} SELECT 2, g, 'q' || g FROM generate_series(0, 9999) g;",
        t = env.table("small")
    ))
    .await;
    // Tip 3004, depth 10: rows up to 2994 are final, so [0,1000) and [1000,2000) are, [2000,3000) not.
    let hot = blocks(&env, "small");
    let summary = env.run(&hot_config(hot.clone()), None).await;
    // Ranges commit in whatever order their exports finish.
    let mut exported: Vec<String> = summary
        .commits
        .iter()
        .map(|c| c.partition.partition.clone())
        .collect();
    exported.sort();
    assert_eq!(
        exported,
        vec!["0-1000".to_string(), "1000-2000".to_string()]
    );
    assert!(env.range_files(&hot, "2000-3000").is_empty());
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM {}", env.table("small")))
            .await,
        3005 + 10000
    );

    // Naming the unfinished range does not export it either.
    let named = env
        .run(&hot_config(hot.clone()), Some(vec!["2000-3000".into()]))
        .await;
    assert!(named.commits.is_empty());
    assert_eq!(
        named.plans[0].partitions[0].outcome,
        PartitionOutcome::Skipped(SkipReason::NotFinal {
            final_through: Some(2994)
        })
    );
    // A key off the grid is refused with an example of a good one.
    let e = env
        .try_run(&hot_config(hot.clone()), Some(vec!["500-1500".into()]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"0-1000\""), "{e}");

    // A second sweep finds nothing to do; once the chain grows, the next range goes.
    let second = env.run(&hot_config(hot.clone()), None).await;
    assert!(second.commits.is_empty(), "{:?}", second.commits);
    env.sql(&format!(
        "INSERT INTO {} SELECT 1, g, 'p' || g FROM generate_series(3005, 3020) g",
        env.table("small")
    ))
    .await;
    let third = env.run(&hot_config(hot.clone()), None).await;
    let exported: Vec<String> = third
        .commits
        .iter()
        .map(|c| c.partition.partition.clone())
        .collect();
    assert_eq!(exported, vec!["2000-3000".to_string()]);
    let rows: usize = env
        .range_files(&hot, "2000-3000")
        .iter()
        .flat_map(|f| read_batches(f))
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_range_is_replaced_exactly_and_nothing_else() {
    let env = HotEnv::new().await;
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, v text);
         INSERT INTO {t} SELECT 1, g, 'v' || g FROM generate_series(0, 2999) g;",
        t = env.table("r")
    ))
    .await;
    let hot = blocks(&env, "r");
    let first = env.run(&hot_config(hot.clone()), None).await;
    assert_eq!(first.commits.len(), 2);
    let other_range = env.range_files(&hot, "1000-2000");
    let old = env.range_files(&hot, "0-1000");
    // Rows change in Postgres (delete_after_compact is off, so they are still there).
    env.sql(&format!(
        "UPDATE {} SET v = 'changed' WHERE block_number = 7",
        env.table("r")
    ))
    .await;
    let replaced = env
        .run(&hot_config(hot.clone()), Some(vec!["0-1000".into()]))
        .await;
    assert_eq!(replaced.commits.len(), 1);
    assert_eq!(replaced.commits[0].inputs_deleted, old.len());
    let new = env.range_files(&hot, "0-1000");
    assert!(
        new.iter().all(|f| !old.contains(f)),
        "new version, new names"
    );
    assert!(old.iter().all(|f| !f.exists()), "the old version is gone");
    assert_eq!(
        env.range_files(&hot, "1000-2000"),
        other_range,
        "other ranges untouched"
    );
    let rows = parquet_rows(&new, &["block_number", "v"]);
    assert_eq!(rows.len(), 1000, "no duplicates after the replace");
    assert!(rows.contains(&vec![Some("7".into()), Some(hex("changed"))]));
    let record = env
        .env
        .state
        .get(&PartitionId::new("blocks", "0-1000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.cold.as_ref().map(|c| c.delete.clone()),
        Some(DeleteState::Kept)
    );
    assert_eq!(
        record.cold.map(|c| c.version),
        Some(replaced.commits[0].generation)
    );
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_writes_between_export_and_delete_are_refused_then_moved_by_content() {
    let env = HotEnv::new().await;
    let t = env.table("late");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, v int8);
         INSERT INTO {t} SELECT c, g, g FROM generate_series(0, 1999) g, generate_series(1, 2) c;"
    ))
    .await;
    let hot = HotDatasetConfig {
        delete_after_compact: true,
        delete_batch_rows: 100,
        ..blocks(&env, "late")
    };
    // Stage the export without committing it, as a merger would before the _SUCCESS event.
    let staged = e2e_tests::hot::stage_only(&env, &hot, "0-1000").await;
    assert_eq!(staged.rows, 1000);
    // An update (same row count, other values) and a late insert into other batches.
    env.sql(&format!(
        "UPDATE {t} SET v = -7 WHERE chain_id = 1 AND block_number = 3;
         INSERT INTO {t} VALUES (1, 500, -1);"
    ))
    .await;
    // The next sweep commits the staged export; the batch holding the update is rolled back
    // (its values differ) and the range flagged, while the other batches move; the same sweep
    // then exports the range again, keeping what moved, and moves the rest.
    let summary = env.run(&hot_config(hot.clone()), None).await;
    let commits: Vec<_> = summary
        .commits
        .iter()
        .filter(|c| c.partition.partition == "0-1000")
        .collect();
    assert_eq!(commits.len(), 2, "{:?}", summary.failures);
    match &commits[0].cold.as_ref().unwrap().delete {
        DeleteState::Flagged {
            deleted,
            left,
            detail,
        } => {
            assert!(
                *deleted >= 800 && *left >= 100,
                "{deleted} deleted, {left} left"
            );
            assert_eq!(deleted + left, 1000);
            assert!(
                detail.contains("values differ") && detail.contains("late inserts"),
                "{detail}"
            );
        }
        other => panic!("expected a flagged range, got {other:?}"),
    }
    assert!(
        summary
            .anomalies()
            .iter()
            .any(|a| a.starts_with("flagged blocks/0-1000")),
        "{:?}",
        summary.anomalies()
    );
    let second = commits[1].cold.as_ref().unwrap();
    assert!(
        matches!(second.delete, DeleteState::Moved { .. }),
        "{second:?}"
    );
    assert_eq!((second.rows, second.moved_rows), (1001, 1001));
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {t} WHERE chain_id = 1 AND block_number < 1000"
        ))
        .await,
        0
    );
    // The cold copy holds exactly the range's rows as they are now: the new value, not the
    // old one, and the late row, once each.
    let mut got: Vec<i64> = parquet_rows(&env.range_files(&hot, "0-1000"), &["v"])
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    got.sort();
    let mut want: Vec<i64> = (0..1000).filter(|v| *v != 3).chain([-7, -1]).collect();
    want.sort();
    assert_eq!(got, want);
    let record = env
        .env
        .state
        .get(&PartitionId::new("blocks", "0-1000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, PartitionStatus::Compacted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_child_partition_is_detached_and_dropped() {
    let env = HotEnv::new().await;
    let t = env.table("parted");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8 NOT NULL, block_number int8 NOT NULL, v text) PARTITION BY LIST (chain_id);
         CREATE TABLE {t}_c1 PARTITION OF {t} FOR VALUES IN (1) PARTITION BY RANGE (block_number);
         CREATE TABLE {t}_c1_0 PARTITION OF {t}_c1 FOR VALUES FROM (0) TO (1000);
         CREATE TABLE {t}_c1_1 PARTITION OF {t}_c1 FOR VALUES FROM (1000) TO (3000);
         CREATE TABLE {t}_c1_rest PARTITION OF {t}_c1 FOR VALUES FROM (3000) TO (MAXVALUE);
         CREATE TABLE {t}_c2 PARTITION OF {t} FOR VALUES IN (2);
         INSERT INTO {t} SELECT c, g, 'v' || g FROM generate_series(0, 3499) g, generate_series(1, 2) c;"
    ))
    .await;
    let hot = HotDatasetConfig {
        delete_after_compact: true,
        drop_partitions: true,
        ..blocks(&env, "parted")
    };
    let summary = env
        .run(
            &hot_config(hot.clone()),
            Some(vec!["0-1000".into(), "1000-2000".into()]),
        )
        .await;
    assert_eq!(summary.commits.len(), 2, "{:?}", summary.failures);
    let outcome = |key: &str| {
        summary
            .commits
            .iter()
            .find(|c| c.partition.partition == key)
            .and_then(|c| c.cold.clone())
            .map(|c| c.delete)
    };
    // [0,1000) has a partition of its own: dropped. [1000,2000) shares one: deleted by rows.
    assert!(
        matches!(outcome("0-1000"), Some(DeleteState::Moved { partition: Some(ref partition), deleted: 1000 }) if partition.ends_with("parted_c1_0\"")),
        "{:?}",
        outcome("0-1000")
    );
    assert_eq!(
        outcome("1000-2000"),
        Some(DeleteState::Moved {
            deleted: 1000,
            partition: None
        })
    );
    let exists = format!(
        "SELECT count(*) FILTER (WHERE oid = to_regclass('{t}_c1_0')), count(*) FILTER (WHERE oid = to_regclass('{t}_c1_1')) FROM pg_class"
    );
    let row = env.pg.query_one(&exists, &[]).await.unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (0, 1),
        "only the exact partition is gone"
    );
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM {t} WHERE chain_id = 1"))
            .await,
        1500
    );
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM {t} WHERE chain_id = 2"))
            .await,
        3500
    );
    let rows = parquet_rows(&env.range_files(&hot, "0-1000"), &["block_number"]);
    assert_eq!(rows.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_column_is_refused_before_any_file_is_written() {
    let env = HotEnv::new().await;
    let t = env.table("odd");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, span interval);
         INSERT INTO {t} SELECT 1, g, g * interval '1 second' FROM generate_series(0, 2999) g;"
    ))
    .await;
    let hot = blocks(&env, "odd");
    let e = env
        .try_run(&hot_config(hot.clone()), None)
        .await
        .unwrap_err()
        .to_string();
    let quoted = format!("\"{}\".\"odd\"", env.schema);
    assert!(
        e.contains(&quoted) && e.contains("\"span\"") && e.contains("interval"),
        "{e}"
    );
    assert!(parquet_files(env.env.root()).is_empty());
    assert!(staging_leftovers(env.env.root()).is_empty());
    // Leaving the column out exports the rest.
    let subset = HotDatasetConfig {
        columns: vec!["chain_id".into(), "block_number".into()],
        ..hot
    };
    let summary = env.run(&hot_config(subset), None).await;
    assert_eq!(summary.commits.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numerics_without_a_parquet_decimal_are_refused_or_exported_as_exact_text() {
    let env = HotEnv::new().await;
    let t = env.table("amounts");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, plain numeric, wide numeric(78,0), small numeric(6,2));
         INSERT INTO {t} SELECT 1, g,
             CASE g % 5 WHEN 0 THEN 'NaN' WHEN 1 THEN 'Infinity' WHEN 2 THEN NULL ELSE (g * 1.000000000000000000001)::numeric END,
             (2::numeric ^ 255 + g)::numeric(78,0) * (CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END),
             g / 100.0
           FROM generate_series(0, 1999) g;"
    ))
    .await;
    let hot = blocks(&env, "amounts");
    let e = env
        .try_run(&hot_config(hot.clone()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"plain\"") && e.contains("unbounded_numeric"),
        "{e}"
    );
    assert!(parquet_files(env.env.root()).is_empty());

    let text = HotDatasetConfig {
        unbounded_numeric: UnboundedNumeric::Text,
        ..hot
    };
    let summary = env
        .run(&hot_config(text.clone()), Some(vec!["0-1000".into()]))
        .await;
    assert_eq!(summary.commits.len(), 1, "{:?}", summary.failures);
    let files = env.range_files(&text, "0-1000");
    let schema = read_batches(&files[0])[0].schema();
    assert_eq!(
        schema
            .field_with_name("plain")
            .unwrap()
            .data_type()
            .to_string(),
        "Utf8"
    );
    assert_eq!(
        schema
            .field_with_name("small")
            .unwrap()
            .data_type()
            .to_string(),
        "Decimal128(6, 2)"
    );
    let hex = "encode(convert_to({c}::text, 'UTF8'), 'hex')";
    let expected = pg_rows(
        &env.pg,
        &format!(
            "SELECT block_number::text AS b, {}, {}, small::text FROM {t} WHERE block_number < 1000 ORDER BY {t}.block_number",
            hex.replace("{c}", "plain"),
            hex.replace("{c}", "wide")
        ),
    )
    .await;
    let got = parquet_rows(&files, &["block_number", "plain", "wide", "small"]);
    assert_eq!(got.len(), 1000);
    for (row, (want, got)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(want, got, "row {row} differs");
    }
}

/// Names that must be quoted, and one that tries to inject SQL: every statement quotes them
/// through the one quoting function, so the export reads exactly those columns and nothing
/// else reaches the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_odd_names_are_quoted_in_every_statement() {
    let env = HotEnv::new().await;
    let schema = format!("{} we.ird \"s\"", env.schema);
    let quoted_schema = format!("\"{}\"", schema.replace('"', "\"\""));
    let injection = "x\"||(select min(rolpassword) from pg_authid)||\"x";
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    env.sql(&format!(
        "CREATE SCHEMA {quoted_schema};
         CREATE TABLE {quoted_schema}.\"Odd\"\"Table\" (
             \"Chain Id\" int4 NOT NULL, \"Block.Number\" int8 NOT NULL, {inj} text,
             \"we\"\"ird\" text, \"MixedCase\" int8, \"ünï\" text);
         INSERT INTO {quoted_schema}.\"Odd\"\"Table\"
           SELECT 1, g, 'v' || g, 'q\"' || g, g * 2, 'ü' || g FROM generate_series(0, 2099) g;
         CREATE INDEX ON {quoted_schema}.\"Odd\"\"Table\" (\"Chain Id\", \"Block.Number\");
         ALTER ROLE CURRENT_USER PASSWORD 'secret-never-exported';",
        inj = quote(injection),
    ))
    .await;
    let hot = HotDatasetConfig {
        chain_id: Some(1),
        chain_column: "Chain Id".into(),
        range_column: "Block.Number".into(),
        range_size: 1000,
        finality_depth_blocks: 10,
        delete_after_compact: true,
        delete_batch_rows: 300,
        ..HotDatasetConfig::new("odd", &format!("{quoted_schema}.\"Odd\"\"Table\""))
    };
    let summary = env.run(&hot_config(hot.clone()), None).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(summary.commits.len(), 2);
    let files = env.range_files(&hot, "0-1000");
    let schema_of = read_batches(&files[0])[0].schema();
    let names: Vec<String> = schema_of
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        vec![
            "Chain Id",
            "Block.Number",
            injection,
            "we\"ird",
            "MixedCase",
            "ünï"
        ]
    );
    let rows = parquet_rows(&files, &[injection, "we\"ird", "ünï"]);
    assert_eq!(rows.len(), 1000);
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(rows.contains(&vec![Some(hex("v7")), Some(hex("q\"7")), Some(hex("ü7"))]));
    let all: String = rows.iter().flatten().flatten().cloned().collect();
    assert!(
        !all.contains(&hex("SCRAM")) && !all.contains(&hex("md5")),
        "a password hash reached the output"
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {quoted_schema}.\"Odd\"\"Table\" WHERE \"Block.Number\" < 2000"
        ))
        .await,
        0
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {quoted_schema}.\"Odd\"\"Table\""
        ))
        .await,
        100
    );
}

/// Rows that reach a range after it was moved, ranges with no rows, and a tip ahead of the
/// rows ingested: empty ranges are recorded (a manifest with no files), later rows in any of
/// them are found by the next sweep, reported, and moved as an additional file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_arriving_in_moved_or_empty_ranges_are_found_and_moved() {
    let env = HotEnv::new().await;
    let t = env.table("stranded");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, v text);
         CREATE TABLE {heads} (chain_id int4, head int8);
         INSERT INTO {heads} VALUES (1, 5010);
         INSERT INTO {t} SELECT 1, g, 'a' || g FROM generate_series(0, 999) g;
         INSERT INTO {t} SELECT 1, g, 'c' || g FROM generate_series(3000, 3499) g;",
        heads = env.table("heads"),
    ))
    .await;
    let hot = HotDatasetConfig {
        delete_after_compact: true,
        // The chain column of the heads table is int4: $1 is compared as an integer of any width.
        tip_query: Some(format!(
            "SELECT head FROM {} WHERE chain_id = $1",
            env.table("heads")
        )),
        ..blocks(&env, "stranded")
    };
    // Tip 5010 (ahead of the rows), depth 10: [0,5000) is final; rows reach 3499, so ranges
    // up to [3000,4000) are planned; [1000,2000) and [2000,3000) are empty.
    let first = env.run(&hot_config(hot.clone()), None).await;
    assert!(first.failures.is_empty(), "{:?}", first.failures);
    let mut keys: Vec<String> = first
        .commits
        .iter()
        .map(|c| c.partition.partition.clone())
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["0-1000", "1000-2000", "2000-3000", "3000-4000"]);
    assert!(first.anomalies().is_empty(), "{:?}", first.anomalies());
    let manifest = std::fs::read_to_string(env.env.path(&format!(
        "{}1000-2000/_compactor_manifest.json",
        hot.output_dir()
    )))
    .expect("an empty range has a manifest");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest["files"], serde_json::json!([]));
    assert_eq!(manifest["hot"]["version"], serde_json::json!(1));
    assert!(env.range_files(&hot, "1000-2000").is_empty());

    // Late rows: in a moved range, in an empty one, and the rest of the chain's history.
    env.sql(&format!(
        "INSERT INTO {t} VALUES (1, 5, 'late'), (1, 1500, 'gap'), (1, 1501, 'gap2');
         INSERT INTO {t} SELECT 1, g, 'd' || g FROM generate_series(3500, 4999) g;"
    ))
    .await;
    let second = env.run(&hot_config(hot.clone()), None).await;
    assert!(second.failures.is_empty(), "{:?}", second.failures);
    let found = second.anomalies();
    assert!(
        found
            .iter()
            .any(|a| a.contains("0-1000") && a.contains("1 row(s) reached Postgres")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|a| a.contains("1000-2000") && a.contains("2 row(s)")),
        "{found:?}"
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {t} WHERE block_number < 5000"
        ))
        .await,
        0,
        "every final row moved"
    );
    let rows = |key: &str| parquet_rows(&env.range_files(&hot, key), &["v"]).len();
    assert_eq!(rows("0-1000"), 1001);
    assert_eq!(rows("1000-2000"), 2);
    assert_eq!(rows("3000-4000"), 1000);
    assert_eq!(rows("4000-5000"), 1000);
    // The moved files were kept as they were; the late row is an additional file.
    assert_eq!(env.range_files(&hot, "0-1000").len(), 4);
    let third = env.run(&hot_config(hot.clone()), None).await;
    assert!(third.commits.is_empty() && third.anomalies().is_empty());
}

/// With `delete_after_compact` off the rows stay in Postgres; a sweep sees when a range holds
/// more or fewer rows than its copy and exports it again, and turning the delete on later
/// moves every range exported before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_ranges_follow_postgres_and_are_moved_once_delete_is_turned_on() {
    let env = HotEnv::new().await;
    let t = env.table("kept");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, v text);
         INSERT INTO {t} SELECT 1, g, 'k' || g FROM generate_series(0, 2999) g;"
    ))
    .await;
    let kept = blocks(&env, "kept");
    let first = env.run(&hot_config(kept.clone()), None).await;
    assert_eq!(first.commits.len(), 2);
    env.sql(&format!("INSERT INTO {t} VALUES (1, 10, 'late')"))
        .await;
    let second = env.run(&hot_config(kept.clone()), None).await;
    let keys: Vec<&str> = second
        .commits
        .iter()
        .map(|c| c.partition.partition.as_str())
        .collect();
    assert_eq!(
        keys,
        vec!["0-1000"],
        "only the changed range is exported again"
    );
    assert_eq!(
        parquet_rows(&env.range_files(&kept, "0-1000"), &["v"]).len(),
        1001
    );
    assert_eq!(env.count(&format!("SELECT count(*) FROM {t}")).await, 3001);

    let moved = HotDatasetConfig {
        delete_after_compact: true,
        ..kept.clone()
    };
    let third = env.run(&hot_config(moved.clone()), None).await;
    assert_eq!(third.commits.len(), 2, "{:?}", third.failures);
    assert!(third
        .commits
        .iter()
        .all(|c| matches!(c.cold.as_ref().unwrap().delete, DeleteState::Moved { .. })));
    assert_eq!(env.count(&format!("SELECT count(*) FROM {t}")).await, 1000);
    assert_eq!(
        parquet_rows(&env.range_files(&moved, "0-1000"), &["v"]).len(),
        1001
    );
    assert_eq!(
        parquet_rows(&env.range_files(&moved, "1000-2000"), &["v"]).len(),
        1000
    );
}

/// `delete_batch_rows` bounds every DELETE, even when one block holds more rows than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_delete_removes_more_than_delete_batch_rows() {
    let env = HotEnv::new().await;
    let t = env.table("busy");
    let log = env.table("busy_log");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, v int8);
         INSERT INTO {t} SELECT 1, g % 1000, g FROM generate_series(0, 1999) g;
         INSERT INTO {t} SELECT 1, 77, g FROM generate_series(10000, 10349) g;
         INSERT INTO {t} SELECT 1, 78, 5 FROM generate_series(1, 3);
         INSERT INTO {t} SELECT 1, g, g FROM generate_series(1000, 1099) g;
         CREATE TABLE {log} (xid xid8);
         CREATE FUNCTION {schema}.log_busy() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO {log} VALUES (pg_current_xact_id()); RETURN OLD; END $$;
         CREATE TRIGGER log_busy AFTER DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION {schema}.log_busy();",
        schema = env.schema,
    ))
    .await;
    let hot = HotDatasetConfig {
        delete_after_compact: true,
        delete_batch_rows: 100,
        finality_depth_blocks: 0,
        ..blocks(&env, "busy")
    };
    let summary = env
        .run(&hot_config(hot.clone()), Some(vec!["0-1000".into()]))
        .await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert_eq!(
        summary.commits[0].cold.as_ref().unwrap().delete,
        DeleteState::Moved {
            deleted: 2353,
            partition: None
        }
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {t} WHERE block_number < 1000"
        ))
        .await,
        0
    );
    let largest = env
        .count(&format!(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM {log} GROUP BY xid::text) x"
        ))
        .await;
    assert!(largest <= 100, "a DELETE removed {largest} rows");
    let mut values: Vec<i64> = parquet_rows(&env.range_files(&hot, "0-1000"), &["v"])
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    values.sort();
    let mut want: Vec<i64> = (0..2000).chain(10000..10350).chain([5, 5, 5]).collect();
    want.sort();
    assert_eq!(values, want);
}

/// A `numeric(p,s)` column holding NaN has no Parquet decimal: the error names the column and
/// the option that works, and with it the exact text is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_nan_is_explained_and_exported_as_text_when_asked() {
    let env = HotEnv::new().await;
    let t = env.table("nan");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, price numeric(20,8), amount numeric(78,0));
         INSERT INTO {t} SELECT 1, g, CASE WHEN g = 5 THEN 'NaN' ELSE g / 3.0 END, 2::numeric ^ 250 + g
           FROM generate_series(0, 1999) g;"
    ))
    .await;
    let decimal256 = HotDatasetConfig {
        unbounded_numeric: UnboundedNumeric::Decimal256,
        ..blocks(&env, "nan")
    };
    let e = env
        .try_run(&hot_config(decimal256.clone()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"amount\"") && e.contains("at most 76 digits") && e.contains("\"text\""),
        "{e}"
    );
    let text_amounts = HotDatasetConfig {
        unbounded_numeric: UnboundedNumeric::Text,
        ..decimal256
    };
    let summary = env.run(&hot_config(text_amounts.clone()), None).await;
    let failure = summary
        .failures
        .first()
        .map(|f| f.error.clone())
        .unwrap_or_default();
    assert!(
        failure.contains("price") && failure.contains("NaN") && failure.contains("numeric_as_text"),
        "{failure}"
    );
    let with_text = HotDatasetConfig {
        numeric_as_text: vec!["price".into()],
        ..text_amounts
    };
    let summary = env.run(&hot_config(with_text.clone()), None).await;
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let rows = parquet_rows(
        &env.range_files(&with_text, "0-1000"),
        &["block_number", "price"],
    );
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(rows.contains(&vec![Some("5".into()), Some(hex("NaN"))]));
    assert!(rows.contains(&vec![Some("3".into()), Some(hex("1.00000000"))]));
}

/// A batch that cannot get its locks in time is rolled back while the others go on; the run
/// fails saying how many rows left Postgres (and counts them), and the next run resumes the
/// same delete without exporting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_stops_one_batch_reports_the_truth_and_resumes() {
    let env = HotEnv::new().await;
    let t = env.table("locked");
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int8, block_number int8, v text);
         CREATE INDEX ON {t} (chain_id, block_number);
         INSERT INTO {t} SELECT 1, g, 'v' || g FROM generate_series(0, 1999) g;"
    ))
    .await;
    let hot = HotDatasetConfig {
        delete_after_compact: true,
        delete_batch_rows: 100,
        lock_timeout: "300ms".parse().unwrap(),
        ..blocks(&env, "locked")
    };
    // Another session holds a row of the range's third batch.
    let holder = e2e_tests::pg::connect().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM {t} WHERE block_number = 250 FOR UPDATE;"
        ))
        .await
        .unwrap();
    let first = env
        .run(&hot_config(hot.clone()), Some(vec!["0-1000".into()]))
        .await;
    assert_eq!(first.commits.len(), 0);
    let failure = &first.failures[0];
    assert_eq!(failure.postgres_rows_deleted, 900, "{failure:?}");
    assert!(
        failure
            .error
            .contains("So far 900 of the 1000 exported rows left Postgres")
            && failure.error.contains("100 are still there")
            && failure.error.contains("resumes"),
        "{}",
        failure.error
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {t} WHERE block_number < 1000"
        ))
        .await,
        100
    );
    let files = env.range_files(&hot, "0-1000");
    holder.batch_execute("ROLLBACK").await.unwrap();
    let second = env.run(&hot_config(hot.clone()), None).await;
    assert!(second.failures.is_empty(), "{:?}", second.failures);
    let resumed = second
        .commits
        .iter()
        .find(|c| c.partition.partition == "0-1000")
        .expect("the interrupted commit is finished");
    assert_eq!(
        resumed.cold.as_ref().unwrap().delete,
        DeleteState::Moved {
            deleted: 1000,
            partition: None
        }
    );
    assert_eq!(env.range_files(&hot, "0-1000"), files, "not exported again");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM {t} WHERE block_number < 1000"
        ))
        .await,
        0
    );
}

/// The health report's Postgres backlog: the rows past finality still in Postgres, by range,
/// before the ranges are moved; none after (and the range not final yet is never a backlog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_report_shows_the_postgres_backlog_until_it_is_moved() {
    use compaction::services::report::{Footers, ReportOptions, Reporter};
    let env = HotEnv::new().await;
    env.sql(&format!(
        "CREATE TABLE {t} (chain_id int4, block_number int4, payload text);
         INSERT INTO {t} SELECT 1, g, 'p' || g FROM generate_series(0, 3004) g;",
        t = env.table("backlog")
    ))
    .await;
    let hot = HotDatasetConfig {
        delete_after_compact: true,
        ..blocks(&env, "backlog")
    };
    let config = hot_config(hot.clone());
    let report = || async {
        Reporter::new(
            Arc::clone(&env.env.store),
            Arc::clone(&env.env.state),
            Some(Arc::clone(&env.source)),
        )
        .report(
            &config,
            &ReportOptions {
                now: chrono::Utc::now(),
                since: None,
                datasets: Vec::new(),
                footers: Footers::All,
            },
        )
        .await
        .unwrap()
    };
    let before = report().await;
    let health = before.datasets[0].hot.as_ref().expect("hot health");
    assert_eq!(
        (health.tip, health.final_through, health.ranges_final),
        (Some(3004), Some(2994), 2)
    );
    assert_eq!(health.backlog_rows, 2000, "{health:?}");
    let ranges: Vec<(&str, u64, &str)> = health
        .backlog
        .iter()
        .map(|r| (r.range.as_str(), r.rows, r.cold.as_str()))
        .collect();
    assert_eq!(
        ranges,
        vec![
            ("0-1000", 1000, "not exported"),
            ("1000-2000", 1000, "not exported")
        ]
    );
    assert_eq!(before.totals.backlog_rows, 2000);

    env.run(&config, None).await;
    let after = report().await;
    let health = after.datasets[0].hot.as_ref().unwrap();
    assert_eq!(
        (
            health.backlog_rows,
            health.ranges_exported,
            health.ranges_moved
        ),
        (0, 2, 2),
        "{health:?}"
    );
    assert!(health.backlog.is_empty());
}
