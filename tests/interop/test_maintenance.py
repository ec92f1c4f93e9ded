"""`compactor delete`, `update` and `restore` judged by DuckDB: the same SQL run by DuckDB over
the inputs is the oracle (delete = the rows where the predicate IS NOT TRUE, update = CASE WHEN
over every column), compared as a multiset of every column value plus the partition. Also: dry
runs and hostile expressions leave the tree byte-identical, backups restore identical bytes,
files without a matching row are never touched, and a run killed at every crash point, with
files added, removed and overwritten meanwhile, converges on rerun."""

import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BIN = os.environ.get("COMPACTOR_BIN")
VENUES = ["A", "B", "C"]
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]
FILES_PER_PARTITION = 3
ROWS_PER_FILE = 1200
ROW_GROUP_ROWS = 200
SEED = 1605

# Atoms both engines read the same way; trials combine them with AND, OR and NOT.
ATOMS = [
    "price < 10",
    "price > 90",
    "note IS NULL",
    "qty > 50",
    "qty IS NULL",
    "id % 7 = 0",
    "id BETWEEN 3000 AND 3400",
    "note LIKE 'n1%'",
    "lower(note) = 'n42'",
    "coalesce(qty, 0) = 0",
    "flag",
    "venue = 'B'",
    "dt >= '2024-01-02'",
    "venue <> 'C' AND dt = '2024-01-01'",
]

HOSTILE = [
    (["--where", "price < 0; DROP TABLE events"], "unexpected"),
    (["--where", "no_such_column > 1"], "no_such_column"),
    (["--where", "note + 1 > 2"], "note"),
    (["--where", "price"], "not a condition"),
    (["--where", "id IN (SELECT 1)"], "nothing was written"),
]


def cmd(*args, env=None, check=True):
    if not BIN or not Path(BIN).exists():
        pytest.fail(f"COMPACTOR_BIN must point at the built compactor binary, got {BIN!r}")
    full_env = dict(os.environ)
    full_env.pop("COMPACTOR_CRASH_AT", None)
    full_env.update(env or {})
    out = subprocess.run([BIN, *args], capture_output=True, text=True, env=full_env)
    if check:
        assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def write_file(path: Path, first_id: int, rows: int, seed: int):
    rng = random.Random(seed)
    ids = list(range(first_id, first_id + rows))

    def price():
        r = rng.random()
        if r < 0.03:
            return None
        if r < 0.05:
            return math.nan
        return round(rng.uniform(0, 100), 3)

    table = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "ts": pa.array([1_704_067_200_000_000 + i * 1_000_000 for i in ids], pa.timestamp("us", tz="UTC")),
            "price": pa.array([price() for _ in ids], pa.float64()),
            "qty": pa.array([None if rng.random() < 0.1 else rng.randint(0, 100) for _ in ids], pa.int32()),
            "note": pa.array([None if rng.random() < 0.1 else f"N{rng.randint(0, 200)}" if rng.random() < 0.05 else f"n{rng.randint(0, 200)}" for _ in ids], pa.string()),
            "flag": pa.array([rng.random() < 0.05 for _ in ids], pa.bool_()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)


def make_lake(root: Path) -> Path:
    n = 0
    for v in VENUES:
        for d in DAYS:
            for f in range(FILES_PER_PARTITION):
                write_file(root / "events" / f"venue={v}" / f"dt={d}" / f"part-{f}.parquet", n * ROWS_PER_FILE, ROWS_PER_FILE, n)
                n += 1
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_lake(tmp_path_factory.mktemp("lake"))


@pytest.fixture()
def lake(pristine, tmp_path):
    dst = tmp_path / "lake"
    shutil.copytree(pristine, dst)
    return dst


def common(lake: Path):
    return [str(lake), "--prefix", "events/", "--template", "venue={venue}/dt={date}", "--quiet"]


def relation(con, lake: Path, name: str):
    """Every row of the lake with its partition, as view `name`."""
    files = sorted(str(p) for p in (lake / "events").rglob("*.parquet"))
    assert files, f"no parquet file under {lake}"
    con.execute(
        f"CREATE OR REPLACE TABLE {name} AS SELECT id, ts, price, qty, note, flag, venue, CAST(dt AS VARCHAR) AS dt "
        f"FROM read_parquet({files!r}, hive_partitioning = true, union_by_name = true)"
    )


def assert_same(con, left: str, right: str, what: str):
    diff = con.execute(
        f"SELECT count(*) FROM ((SELECT * FROM {left} EXCEPT ALL SELECT * FROM {right}) "
        f"UNION ALL (SELECT * FROM {right} EXCEPT ALL SELECT * FROM {left}))"
    ).fetchone()[0]
    sizes = con.execute(f"SELECT (SELECT count(*) FROM {left}), (SELECT count(*) FROM {right})").fetchone()
    assert diff == 0, f"{what}: {diff} rows differ (rows: {sizes[0]} vs {sizes[1]})"


def tree(root: Path, skip=()):
    """Every file under root with the SHA-256 of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(rel.startswith(s) for s in skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def staging_leftovers(lake: Path):
    """Files left in staging (a finished repartition's record stays: it is its history)."""
    staging = lake / "_compactor" / "staging"
    return [p for p in staging.rglob("*") if p.is_file() and not re.fullmatch(r"repartition/[^/]+/record\.json", p.relative_to(staging).as_posix())] if staging.exists() else []


def predicates(n: int, seed: int):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(ATOMS, 2)
        shape = rng.randrange(4)
        out.append([f"{a}", f"({a}) AND ({b})", f"({a}) OR ({b})", f"NOT ({a}) AND ({b})"][shape])
    return out


@pytest.mark.parametrize("predicate", predicates(8, SEED) + ["id BETWEEN 1000 AND 1099", "dt = '2024-01-03'"])
def test_delete_leaves_exactly_the_rows_where_the_predicate_is_not_true(lake, predicate):
    con = duckdb.connect()
    relation(con, lake, "before")
    out = cmd("delete", *common(lake), "--where", predicate, "--json")
    summary = json.loads(out.stdout)
    relation(con, lake, "after")
    con.execute(f"CREATE TABLE expected AS SELECT * FROM before WHERE ({predicate}) IS NOT TRUE")
    assert_same(con, "after", "expected", f"delete WHERE {predicate}")
    matched = con.execute(f"SELECT count(*) FROM before WHERE ({predicate}) IS TRUE").fetchone()[0]
    assert summary["rows"]["matched"] == matched == summary["rows"]["changed"], summary
    assert not staging_leftovers(lake)


def test_update_sets_the_matching_rows_as_case_when(lake):
    predicate = "(venue = 'A' AND qty > 40) OR note IS NULL"
    sets = ["price = price * 2 + qty", "note = upper(coalesce(note, 'none'))", "qty = coalesce(qty, -1)"]
    con = duckdb.connect()
    relation(con, lake, "before")
    args = []
    for s in sets:
        args += ["--set", s]
    out = cmd("update", *common(lake), "--where", predicate, *args, "--json")
    summary = json.loads(out.stdout)
    relation(con, lake, "after")
    con.execute(
        f"""CREATE TABLE expected AS SELECT id, ts,
            CASE WHEN ({predicate}) IS TRUE THEN price * 2 + qty ELSE price END AS price,
            CASE WHEN ({predicate}) IS TRUE THEN coalesce(qty, -1) ELSE qty END AS qty,
            CASE WHEN ({predicate}) IS TRUE THEN upper(coalesce(note, 'none')) ELSE note END AS note,
            flag, venue, dt FROM before"""
    )
    assert_same(con, "after", "expected", "update")
    matched = con.execute(f"SELECT count(*) FROM before WHERE ({predicate}) IS TRUE").fetchone()[0]
    assert summary["rows"]["changed"] == matched > 0, summary
    # Types are the columns' own: qty stays int32, price float64.
    f = next((lake / "events").rglob("compacted-*.parquet"))
    schema = pq.read_schema(f)
    assert schema.field("qty").type == pa.int32() and schema.field("price").type == pa.float64()


def test_a_sorted_key_predicate_copies_row_groups_and_leaves_other_files_alone(lake):
    before = tree(lake / "events")
    out = cmd("delete", *common(lake), "--where", "id BETWEEN 1250 AND 1300", "--json")
    summary = json.loads(out.stdout)
    # One file holds ids 1200..2399 in row groups of 200: one row group rewritten, five copied.
    assert summary["files"]["with_match"] == 1, summary
    assert summary["row_groups"]["rewritten"] == 1, summary
    assert summary["row_groups"]["copied"] == ROWS_PER_FILE // ROW_GROUP_ROWS - 1, summary
    # Statistics ruled out every other file's row groups: their data was never decoded.
    assert summary["row_groups"]["scanned"] == 1, summary
    after = tree(lake / "events")
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed == {"venue=A/dt=2024-01-01/part-1.parquet"}, changed
    assert pq.ParquetFile(next((lake / "events").rglob("compacted-*.parquet"))).metadata.num_row_groups == ROWS_PER_FILE // ROW_GROUP_ROWS


def test_a_dry_run_changes_nothing(lake):
    cmd("compact", *common(lake))  # a state file and partition manifests exist too
    before = tree(lake)
    out = cmd("delete", *common(lake), "--where", "price < 50", "--dry-run", "--json", "--backup", "bk")
    assert json.loads(out.stdout)["rows"]["matched"] > 0
    cmd("update", *common(lake), "--where", "qty > 5", "--set", "qty = 0", "--dry-run")
    assert tree(lake) == before


def test_backup_and_restore_round_trip_to_identical_bytes(lake):
    cmd("compact", *common(lake), "--partition", "venue=B/dt=2024-01-02")
    before = tree(lake, skip=("_compactor/",))
    cmd("delete", *common(lake), "--where", "price < 30 OR venue = 'C'", "--backup", "bk/gdpr")
    cmd("update", *common(lake), "--where", "qty > 60", "--set", "note = 'redacted'", "--backup", "bk/gdpr")
    assert tree(lake, skip=("_compactor/", "bk/")) != before
    dry = cmd("restore", str(lake), "bk/gdpr", "--dry-run", "--json")
    assert json.loads(dry.stdout)["restored"] == 2 * len(VENUES) * len(DAYS) - len(DAYS)
    cmd("restore", str(lake), "bk/gdpr")
    assert tree(lake, skip=("_compactor/", "bk/")) == before
    # A second restore changes nothing.
    again = json.loads(cmd("restore", str(lake), "bk/gdpr", "--json").stdout)
    assert again["restored"] == 0
    assert tree(lake, skip=("_compactor/", "bk/")) == before


@pytest.mark.parametrize("args,says", HOSTILE + [(["--where", "qty > 1", "--set", "qty = note"], "qty"), (["--where", "qty > 1", "--set", "venue = 'Z'"], "partition field")])
def test_hostile_and_wrong_expressions_fail_before_anything_is_written(lake, args, says):
    before = tree(lake)
    verb = "update" if "--set" in args else "delete"
    out = cmd(verb, *common(lake), *args, check=False)
    assert out.returncode == 1, out
    assert says in out.stderr, out.stderr
    assert tree(lake) == before


CRASH_POINTS = [
    "mid-rewrite@1",
    "mid-rewrite@2",
    "mid-copy@1",
    "mid-encode@1",
    "after-backup",
    "after-merge",
    "after-decision",
    "after-copy",
    "after-manifest",
    "after-delete",
]


def concurrent_change(lake: Path, rng: random.Random, predicate_files: set, n: int):
    """A writer's change while the operation is down: a new file (rows matching or not), a
    file without matching rows removed, or one rewritten in place."""
    kind = rng.choice(["add", "add", "remove", "overwrite"])
    part = lake / "events" / f"venue={rng.choice(VENUES)}" / f"dt={rng.choice(DAYS)}"
    untouched = [p for p in part.glob("part-*.parquet") if p.relative_to(lake).as_posix() not in predicate_files]
    if kind == "add" or not untouched:
        write_file(part / f"late-{n}.parquet", 100_000 + n * 500, 500, 9000 + n)
        return "add"
    victim = rng.choice(untouched)
    if kind == "remove":
        victim.unlink()
    else:
        write_file(victim, 200_000 + n * 500, 300, 7000 + n)
    return kind


def test_a_run_killed_at_any_point_with_writers_meanwhile_converges_on_rerun(lake, tmp_path):
    rng = random.Random(SEED)
    pristine = tmp_path / "pristine"
    shutil.copytree(lake, pristine)
    predicate = "id BETWEEN 3000 AND 3100 OR (venue = 'B' AND price < 5)"
    trials = [(p, op) for p in CRASH_POINTS for op in ("delete", "update")]
    for i, (point, op) in enumerate(trials):
        work = tmp_path / f"t{i}"
        shutil.copytree(pristine, work)
        con = duckdb.connect()
        relation(con, work, "before")
        files_with_match = {
            Path(f).relative_to(work).as_posix()
            for (f,) in con.execute(
                f"SELECT DISTINCT filename FROM read_parquet('{work}/events/*/*/*.parquet', hive_partitioning = true, filename = true) WHERE ({predicate}) IS TRUE"
            ).fetchall()
        }
        extra = ["--set", "qty = -7"] if op == "update" else []
        killed = cmd(op, *common(work), "--where", predicate, *extra, "--backup", "bk", env={"COMPACTOR_CRASH_AT": point}, check=False)
        assert killed.returncode != 0, f"{point} {op}: not killed ({killed.stdout})"
        # The writer's change: the oracle is the operation applied to what the lake holds now.
        kind = concurrent_change(work, rng, files_with_match, i)
        relation(con, work, "now_raw")
        for _ in range(3):
            out = cmd(op, *common(work), "--where", predicate, *extra, check=False)
            if out.returncode == 0:
                break
            assert out.returncode == 3, f"{point} {op}: rerun failed: {out.stdout}\n{out.stderr}"
        assert out.returncode == 0, f"{point} {op}: no convergence after 3 reruns: {out.stdout}"
        relation(con, work, "after")
        expected = expected_sql(op, predicate)
        # now_raw may still show the interrupted step twice (outputs installed, inputs not yet
        # deleted): the oracle applies the operation to its distinct rows (every id is unique,
        # so distinct rows stay distinct unless they are one row before and after the step).
        con.execute(f"CREATE TABLE oracle AS SELECT DISTINCT * FROM ({expected.format(src='(SELECT DISTINCT * FROM now_raw)')})")
        distinct = con.execute("SELECT count(*) = count(DISTINCT (id, ts, price, qty, note, flag, venue, dt)) FROM before").fetchone()[0]
        assert distinct, "the generated rows are unique"
        assert_same(con, "(SELECT DISTINCT * FROM after)", "oracle", f"{point} {op} with a concurrent {kind}")
        dupes = con.execute("SELECT count(*) - count(DISTINCT (id, ts, price, qty, note, flag, venue, dt)) FROM after").fetchone()[0]
        assert dupes == 0, f"{point} {op} ({kind}): {dupes} duplicated rows"
        assert not staging_leftovers(work), f"{point} {op}: staging not cleaned"
        shutil.rmtree(work)


def expected_sql(op: str, predicate: str) -> str:
    if op == "delete":
        return f"SELECT * FROM {{src}} WHERE ({predicate}) IS NOT TRUE"
    return (
        f"SELECT id, ts, price, CASE WHEN ({predicate}) IS TRUE THEN -7 ELSE qty END AS qty, note, flag, venue, dt FROM {{src}}"
    )


# ---- upsert ----

UPSERT_COLS = "id, ts, price, qty, note, flag"


def write_source(path: Path, rng: random.Random, existing: int, new: int, first_new: int, new_partitions=(), files=None):
    """`existing` ids of the lake (of its first `files` files) with new values, and `new` new
    ids, each with its venue and dt (some new rows in `new_partitions`, which the lake lacks)."""
    total_ids = (files or len(VENUES) * len(DAYS) * FILES_PER_PARTITION) * ROWS_PER_FILE
    ids = rng.sample(range(total_ids), existing) + list(range(first_new, first_new + new))
    places = [(rng.choice(VENUES), rng.choice(DAYS)) for _ in ids]
    for i, p in enumerate(new_partitions):
        places[existing + i] = p
    table = pa.table(
        {
            # Columns in another order, and types the data does not use: they are cast.
            "note": pa.array([f"u{rng.randint(0, 9)}" for _ in ids], pa.string()),
            "id": pa.array(ids, pa.int32()),
            "ts": pa.array([1_800_000_000_000_000 + i for i in ids], pa.timestamp("us", tz="UTC")),
            "price": pa.array([float(rng.randint(1000, 2000)) for _ in ids], pa.float32()),
            "qty": pa.array([rng.randint(500, 600) for _ in ids], pa.int64()),
            "flag": pa.array([True for _ in ids], pa.bool_()),
            "venue": pa.array([v for v, _ in places], pa.string()),
            "dt": pa.array([d for _, d in places], pa.string()),
        }
    )
    pq.write_table(table, path)
    return path


def upsert_oracle(con, src: Path, before: str, update_cols):
    """The anti-join union: rows without a source key as they are, rows with one taking the
    source's `update_cols` (in their own partition), source rows with a new key inserted."""
    con.execute(
        f"CREATE OR REPLACE TABLE src AS SELECT CAST(id AS BIGINT) AS id, ts, CAST(price AS DOUBLE) AS price, "
        f"CAST(qty AS INTEGER) AS qty, note, flag, venue, dt FROM read_parquet('{src}')"
    )
    cols = ", ".join(f"s.{c}" if c in update_cols else f"b.{c}" for c in UPSERT_COLS.split(", "))
    con.execute(
        f"""CREATE OR REPLACE TABLE expected AS
            SELECT b.* FROM {before} b ANTI JOIN src s USING (id)
            UNION ALL SELECT {cols}, b.venue, b.dt FROM {before} b JOIN src s USING (id)
            UNION ALL SELECT s.* FROM src s ANTI JOIN {before} b USING (id)"""
    )
    updated = con.execute(f"SELECT count(*) FROM {before} b JOIN src s USING (id)").fetchone()[0]
    inserted = con.execute(f"SELECT count(*) FROM src s ANTI JOIN {before} b USING (id)").fetchone()[0]
    return updated, inserted


@pytest.mark.parametrize("update_cols", [None, ["price", "note"]])
def test_upsert_is_the_anti_join_union_of_data_and_source(lake, tmp_path, update_cols):
    rng = random.Random(SEED)
    src = write_source(tmp_path / "src.parquet", rng, 150, 60, 900_000, [("B", "2024-01-09"), ("C", "2024-01-09")], files=10)
    con = duckdb.connect()
    relation(con, lake, "before")
    before = tree(lake / "events")
    files_with_key = {
        Path(f).relative_to(lake / "events").as_posix()
        for (f,) in con.execute(
            f"SELECT DISTINCT filename FROM read_parquet('{lake}/events/*/*/*.parquet', filename = true) "
            f"WHERE id IN (SELECT id FROM read_parquet('{src}'))"
        ).fetchall()
    }
    extra = ["--update-cols", ",".join(update_cols)] if update_cols else []
    out = cmd("upsert", *common(lake), "--from", str(src), "--key", "id", *extra, "--json")
    summary = json.loads(out.stdout)
    relation(con, lake, "after")
    updated, inserted = upsert_oracle(con, src, "before", update_cols or UPSERT_COLS.split(", "))
    assert_same(con, "after", "expected", f"upsert (update cols {update_cols})")
    assert (updated, inserted) == (150, 60)
    assert summary["operation"] == "upsert", summary
    assert summary["rows"]["changed"] == updated and summary["rows"]["inserted"] == inserted, summary
    # New rows went to the partitions their venue and dt name, one of them new.
    assert (lake / "events" / "venue=B" / "dt=2024-01-09").is_dir()
    # Exactly the files holding a source key were replaced; the others are untouched.
    after = tree(lake / "events")
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed == files_with_key and len(changed) < len(before), changed
    assert not staging_leftovers(lake)
    # Run again: every key is there now, nothing is inserted twice, the content is the same.
    again = json.loads(cmd("upsert", *common(lake), "--from", str(src), "--key", "id", *extra, "--json").stdout)
    assert again["rows"]["inserted"] == 0 and again["rows"]["changed"] == updated + inserted, again
    relation(con, lake, "again")
    assert_same(con, "again", "expected", "upsert run twice")


def test_upsert_refuses_bad_sources_before_anything_is_written(lake, tmp_path):
    rng = random.Random(SEED)
    src = write_source(tmp_path / "src.parquet", rng, 5, 5, 900_000)
    dup = tmp_path / "dup.parquet"
    t = pq.read_table(src)
    pq.write_table(pa.concat_tables([t, t.slice(0, 1)]), dup)
    no_dt = tmp_path / "no_dt.parquet"
    pq.write_table(t.drop(["dt"]), no_dt)
    bad_type = tmp_path / "bad_type.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("qty"), "qty", pa.array(["x"] * t.num_rows)), bad_type)
    before = tree(lake)
    for source, key, says in [
        (dup, "id", "twice"),
        (no_dt, "id", "partition field"),
        (bad_type, "id", "qty"),
        (src, "nope", "nope"),
        (tmp_path / "missing.parquet", "id", "missing.parquet"),
    ]:
        out = cmd("upsert", *common(lake), "--from", str(source), "--key", key, check=False)
        assert out.returncode == 1, out
        assert says in out.stderr, out.stderr
        assert tree(lake) == before, f"{source.name}: the tree changed"


def test_upsert_dry_run_changes_nothing_and_backup_restores(lake, tmp_path):
    rng = random.Random(SEED)
    src = write_source(tmp_path / "src.parquet", rng, 40, 10, 900_000, [("A", "2024-01-09")])
    cmd("compact", *common(lake), "--partition", "venue=B/dt=2024-01-02")
    before = tree(lake)
    dry = json.loads(cmd("upsert", *common(lake), "--from", str(src), "--key", "id", "--dry-run", "--json").stdout)
    assert dry["rows"]["matched"] == 40 and dry["rows"]["to_insert"] == 10, dry
    assert tree(lake) == before
    data = tree(lake, skip=("_compactor/",))
    cmd("upsert", *common(lake), "--from", str(src), "--key", "id", "--backup", "bk/up")
    assert tree(lake, skip=("_compactor/", "bk/")) != data
    cmd("restore", str(lake), "bk/up")
    # The inserted rows' new files go too; the new partition's folder may stay, empty.
    restored = {k: v for k, v in tree(lake, skip=("_compactor/", "bk/")).items()}
    assert restored == data


def test_an_upsert_killed_at_any_point_with_writers_meanwhile_converges_on_rerun(lake, tmp_path):
    rng = random.Random(SEED + 1)
    src = write_source(tmp_path / "src.parquet", rng, 120, 40, 900_000, [("C", "2024-01-09")])
    pristine = tmp_path / "pristine"
    shutil.copytree(lake, pristine)
    con = duckdb.connect()
    keys = {i for (i,) in con.execute(f"SELECT id FROM read_parquet('{src}')").fetchall()}
    for i, point in enumerate(CRASH_POINTS):
        work = tmp_path / f"t{i}"
        shutil.copytree(pristine, work)
        relation(con, work, "before")
        files_with_key = {
            Path(f).relative_to(work).as_posix()
            for (f,) in con.execute(
                f"SELECT DISTINCT filename FROM read_parquet('{work}/events/*/*/*.parquet', filename = true) WHERE id IN (SELECT unnest({sorted(keys)!r}))"
            ).fetchall()
        }
        killed = cmd("upsert", *common(work), "--from", str(src), "--key", "id", "--backup", "bk", env={"COMPACTOR_CRASH_AT": point}, check=False)
        assert killed.returncode != 0, f"{point}: not killed ({killed.stdout})"
        kind = concurrent_change(work, rng, files_with_key, i)
        # The oracle: the upsert applied to the rows the lake would hold had the killed run
        # not happened (its changes are idempotent), with the writer's change.
        relation(con, work, "now_raw")
        for _ in range(3):
            out = cmd("upsert", *common(work), "--from", str(src), "--key", "id", check=False)
            if out.returncode == 0:
                break
            assert out.returncode == 3, f"{point}: rerun failed: {out.stdout}\n{out.stderr}"
        assert out.returncode == 0, f"{point}: no convergence after 3 reruns: {out.stdout}"
        relation(con, work, "after")
        # now_raw may hold the interrupted step's rows twice, or source rows already upserted:
        # per id the oracle keeps one row (ids are unique in the lake and the source).
        con.execute("CREATE OR REPLACE TABLE now AS SELECT DISTINCT ON (id) * FROM now_raw")
        upsert_oracle(con, src, "now", UPSERT_COLS.split(", "))
        assert_same(con, "after", "expected", f"{point} with a concurrent {kind}")
        dupes = con.execute("SELECT count(*) - count(DISTINCT id) FROM after").fetchone()[0]
        assert dupes == 0, f"{point} ({kind}): {dupes} duplicated ids"
        assert not staging_leftovers(work), f"{point}: staging not cleaned"
        shutil.rmtree(work)


# ---- repartition ----

NEW_LAYOUT = ["--template", "dt={date}/venue={venue}"]


def repartition(src: Path, dst: Path, *extra, check=True, env=None):
    return cmd("repartition", str(src), "--to", str(dst), "--prefix", "events/", *NEW_LAYOUT, "--quiet", *extra, check=check, env=env)


def test_repartition_keeps_the_multiset_under_the_new_layout(lake, tmp_path):
    con = duckdb.connect()
    relation(con, lake, "before")
    before = tree(lake)
    dst = tmp_path / "dst"
    dry = json.loads(repartition(lake, dst, "--dry-run", "--json").stdout)
    assert not dst.exists() and tree(lake) == before
    expected = dict(con.execute("SELECT 'dt=' || dt || '/venue=' || venue, count(*) FROM before GROUP BY 1").fetchall())
    assert {t["partition"]: t["rows"] for t in dry["targets"]} == expected, dry
    out = json.loads(repartition(lake, dst, "--json").stdout)
    assert out["validated"] and out["source_digest"] == out["target_digest"], out
    assert out["source_rows"] == sum(expected.values())
    relation(con, dst, "after")
    assert_same(con, "after", "before", "repartition")
    # The new layout, compacted: one file per partition, the partition fields only in paths.
    parts = sorted(p.relative_to(dst / "events").as_posix() for p in (dst / "events").glob("*/*") if p.is_dir())
    assert parts == sorted(expected), parts
    for part in parts:
        files = [f for f in (dst / "events" / part).glob("*.parquet")]
        assert len(files) == 1, (part, files)
        assert "venue" not in pq.read_schema(files[0]).names
    assert tree(lake) == before, "the source changed without --delete-source"
    # Again with --delete-source: the validated copy is kept, the source goes.
    gone = json.loads(repartition(lake, dst, "--delete-source", "--json").stdout)
    assert gone["source_files_deleted"] == len(VENUES) * len(DAYS) * FILES_PER_PARTITION, gone
    assert not list((lake / "events").rglob("*.parquet"))
    relation(con, dst, "after2")
    assert_same(con, "after2", "before", "repartition after --delete-source")


def test_repartition_refuses_a_destination_holding_data(lake, tmp_path):
    dst = tmp_path / "dst"
    write_file(dst / "events" / "dt=2024-01-01" / "venue=A" / "x.parquet", 0, 10, 1)
    before = tree(lake)
    out = repartition(lake, dst, check=False)
    assert out.returncode == 1 and "empty destination" in out.stderr, out
    assert tree(lake) == before


@pytest.mark.parametrize("point", ["mid-repartition@2", "after-repartition-write", "after-merge", "after-decision", "after-delete", "before-source-delete@3"])
def test_a_repartition_killed_at_any_point_converges_without_loss(lake, tmp_path, point):
    con = duckdb.connect()
    relation(con, lake, "before")
    dst = tmp_path / "dst"
    killed = repartition(lake, dst, "--delete-source", check=False, env={"COMPACTOR_CRASH_AT": point})
    assert killed.returncode != 0, f"{point}: not killed ({killed.stdout})"
    out = repartition(lake, dst, "--delete-source", "--json")
    summary = json.loads(out.stdout)
    assert summary["validated"], summary
    relation(con, dst, "after")
    assert_same(con, "after", "before", f"repartition killed at {point}")
    assert not list((lake / "events").rglob("*.parquet")), f"{point}: source left behind"
    assert not staging_leftovers(dst), f"{point}: staging not cleaned"


@pytest.mark.parametrize("point", ["mid-repartition@30", "after-repartition-write", "after-merge", "before-source-delete@3"])
@pytest.mark.parametrize("change", ["overwrite", "remove"])
def test_a_repartition_killed_while_a_source_file_changes_loses_and_duplicates_nothing(lake, tmp_path, point, change):
    """A crash crossed with a writer overwriting or removing a source file before the rerun: the
    file's listed version is copied entirely or not at all (then reported and left in place), a
    changed file is never deleted, and every other row is in the destination exactly once."""
    con = duckdb.connect()
    dst = tmp_path / "dst"
    # Four larger files (about 380 KB each) so that the 1 MiB write tasks are three or more.
    for i, (venue, day) in enumerate([("A", DAYS[0]), ("B", DAYS[1]), ("C", DAYS[1]), ("C", DAYS[2])]):
        write_file(lake / "events" / f"venue={venue}" / f"dt={day}" / "big.parquet", 2_000_000 + i * 12_000, 12_000, 500 + i)
    files = sorted((lake / "events").rglob("*.parquet"))
    # Killed mid-write: the last file, whose write task the crash interrupts (so the rerun finds
    # it changed before copying it); otherwise any file.
    victim = files[-1] if point.startswith("mid-") else random.Random(f"{SEED}-{point}-{change}").choice(files)
    key = victim.relative_to(lake).as_posix()
    relation(con, lake, "before")
    con.execute(
        f"CREATE TABLE victim AS SELECT id, ts, price, qty, note, flag, venue, CAST(dt AS VARCHAR) AS dt "
        f"FROM read_parquet({[str(victim)]!r}, hive_partitioning = true)")
    con.execute("CREATE TABLE others AS SELECT * FROM before EXCEPT ALL SELECT * FROM victim")
    # Small write tasks (1 MiB of source files each), so a crash in the last leaves others done.
    args = ("--delete-source", "--target-file-size", "1MiB", "--row-group-size", "1MiB",
            "--small-file-threshold", "512KiB", "--max-task-bytes", "1MiB", "--json")
    killed = repartition(lake, dst, *args, check=False, env={"COMPACTOR_CRASH_AT": point})
    assert killed.returncode != 0, f"{point}: not killed ({killed.stdout})"
    if change == "overwrite":
        write_file(victim, 900_000, 40, 99)
        new_bytes = victim.read_bytes()
    else:
        victim.unlink()
    out = repartition(lake, dst, *args, check=False)
    assert out.returncode in (0, 3), f"{point}/{change}: exit {out.returncode}: {out.stderr}"
    summary = json.loads(out.stdout)
    assert summary["validated"], summary
    relation(con, dst, "after")
    diff = lambda a, b: con.execute(
        f"SELECT count(*) FROM ((SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) "
        f"UNION ALL (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a}))").fetchone()[0]
    copied, skipped = diff("after", "before") == 0, diff("after", "others") == 0
    assert copied or skipped, f"{point}/{change}: the destination is neither the source with nor without {key}"
    kept = summary["source_files_kept"]
    left = sorted(p.relative_to(lake).as_posix() for p in (lake / "events").rglob("*.parquet"))
    if change == "overwrite":
        assert left == [key] and victim.read_bytes() == new_bytes, f"{point}: the overwritten file was touched ({left})"
    else:
        assert left == [], left
    if skipped or change == "overwrite":
        assert out.returncode == 3 and any(k.startswith(key) for k in kept), (out.returncode, summary)
    else:
        assert out.returncode == 0, (out.returncode, summary)
    if point.startswith("mid-"):
        # The rerun continued: the groups written before the crash were not written again.
        assert 0 < summary["write_tasks"] < summary["groups"], summary
        assert skipped, f"{point}/{change}: {key} changed before it was copied, yet it was copied"
    assert not staging_leftovers(dst), f"{point}/{change}: staging not cleaned"


def test_repartition_with_a_select_list_computes_the_new_partition_field(lake, tmp_path):
    con = duckdb.connect()
    relation(con, lake, "before")
    dst = tmp_path / "dst"
    select = "id, ts, price * 2 AS price, qty, note, flag, venue, dt, CASE WHEN id % 2 = 0 THEN 'even' ELSE 'odd' END AS parity"
    out = cmd("repartition", str(lake), "--to", str(dst), "--prefix", "events/", "--template", "parity={parity}/dt={date}",
              "--select", select, "--quiet", "--json")
    assert json.loads(out.stdout)["validated"]
    files = sorted(str(p) for p in (dst / "events").rglob("*.parquet"))
    con.execute(f"CREATE TABLE after AS SELECT id, ts, price, qty, note, flag, venue, CAST(dt AS VARCHAR) AS dt, parity "
                f"FROM read_parquet({files!r}, hive_partitioning = true)")
    con.execute("CREATE TABLE expected AS SELECT id, ts, price * 2 AS price, qty, note, flag, venue, dt, "
                "CASE WHEN id % 2 = 0 THEN 'even' ELSE 'odd' END AS parity FROM before")
    assert_same(con, "after", "expected", "repartition --select")
    bad = cmd("repartition", str(lake), "--to", str(tmp_path / "dst2"), "--prefix", "events/", "--template", "dt={date}",
              "--select", "id, nope", "--quiet", check=False)
    assert bad.returncode == 1 and "nope" in bad.stderr, bad
    assert not list((tmp_path / "dst2").rglob("*.parquet"))


def test_repartition_backup_restores_the_deleted_source_and_a_late_file_survives(lake, tmp_path):
    # The local store's own scratch folder (.compactor-tmp) is not data.
    before = tree(lake, skip=("_compactor/", ".compactor-tmp/"))
    dst = tmp_path / "dst"
    killed = repartition(lake, dst, "--delete-source", "--backup", "bk/rp", check=False, env={"COMPACTOR_CRASH_AT": "after-repartition-write"})
    assert killed.returncode != 0
    # A writer adds a file to the source meanwhile: not read, so neither copied nor deleted.
    write_file(lake / "events" / "venue=A" / "dt=2024-01-01" / "late.parquet", 500_000, 50, 77)
    out = repartition(lake, dst, "--delete-source", "--backup", "bk/rp", "--json", check=False)
    assert out.returncode == 3, out
    summary = json.loads(out.stdout)
    assert any("late.parquet" in k for k in summary["source_files_kept"]), summary
    left = [p.relative_to(lake).as_posix() for p in (lake / "events").rglob("*.parquet")]
    assert left == ["events/venue=A/dt=2024-01-01/late.parquet"], left
    (lake / left[0]).unlink()
    cmd("restore", str(lake), "bk/rp")
    assert tree(lake, skip=("_compactor/", ".compactor-tmp/", "bk/")) == before
