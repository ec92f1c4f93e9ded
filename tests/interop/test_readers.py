"""Outputs of the compactor binary read back by the engines users query with: pyarrow, DuckDB
and polars see exactly the input rows, and sort-mode outputs are sorted with seq 0..N-1."""

import os
import subprocess
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

BIN = os.environ.get("COMPACTOR_BIN")

COLUMNS = ["ts_event", "event_id", "user_id", "kind", "country", "amount", "session", "is_bot"]


def compactor(*args):
    if not BIN or not Path(BIN).exists():
        pytest.fail(f"COMPACTOR_BIN must point at the built compactor binary, got {BIN!r}")
    out = subprocess.run([BIN, *args], capture_output=True, text=True)
    assert out.returncode == 0, f"compactor {' '.join(args)} failed: {out.stderr}"
    return out.stdout


def data_files(root: Path):
    return sorted(str(p) for p in root.rglob("*.parquet") if not p.name.startswith(("_", ".")))


def rows_pyarrow(root: Path):
    table = ds.dataset(data_files(root), format="parquet").to_table(columns=COLUMNS)
    return sorted(table.to_pylist(), key=lambda r: r["event_id"])


@pytest.fixture()
def dataset(tmp_path):
    compactor("generate", str(tmp_path), "--partitions", "2", "--files-per-partition", "60", "--rows-per-file", "500")
    return tmp_path


@pytest.mark.parametrize("mode", ["concat", "sort"])
def test_engines_read_exactly_the_input_rows(dataset, mode):
    before = rows_pyarrow(dataset)
    assert len(before) == 2 * 60 * 500
    args = ["compact", str(dataset), "--prefix", "events/", "--quiet"]
    if mode == "sort":
        args += ["--mode", "sort", "--sort-key", "ts_event", "--seq-column", "seq"]
    compactor(*args)
    files = data_files(dataset)
    assert all(Path(f).name.startswith("compacted-") for f in files), files
    assert len(files) == 2

    assert rows_pyarrow(dataset) == before

    glob = str(dataset / "events" / "*" / "*" / "*.parquet")
    con = duckdb.connect()
    cols = ", ".join(COLUMNS)
    duck = con.execute(f"SELECT {cols} FROM read_parquet('{glob}') ORDER BY event_id").fetchall()
    assert [tuple(r[c] for c in COLUMNS) for r in before] == duck

    polars_rows = pl.read_parquet(files).select(COLUMNS).sort("event_id").to_dicts()
    assert polars_rows == before

    # Every output has large row groups, zstd, statistics and a page index.
    meta = con.execute(
        f"SELECT DISTINCT compression FROM parquet_metadata('{glob}')"
    ).fetchall()
    assert meta == [("ZSTD",)], meta
    stats = con.execute(
        f"SELECT count(*) FROM parquet_metadata('{glob}') WHERE stats_min IS NULL AND path_in_schema = 'event_id'"
    ).fetchone()[0]
    assert stats == 0, "column statistics are written"

    if mode == "sort":
        for f in files:
            check = con.execute(
                f"""SELECT count(*) FILTER (WHERE ts_event < prev), min(seq), max(seq), count(DISTINCT seq), count(*)
                    FROM (SELECT ts_event, seq, lag(ts_event) OVER (ORDER BY seq) AS prev FROM read_parquet('{f}'))"""
            ).fetchone()
            unsorted, lo, hi, distinct, n = check
            assert unsorted == 0 and lo == 0 and hi == n - 1 and distinct == n, check
