"""Every Arrow type pyarrow writes comes out of a compaction as it went in: the output's schema,
as pyarrow, DuckDB and polars each read it, equals an input's, and pyarrow reads the same
values (dates, zoned timestamps of every unit, times, durations, decimals, nested types)."""

import datetime
import decimal
import os
import subprocess
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BIN = os.environ.get("COMPACTOR_BIN")
PARTITION = "dt=2024-01-01"


def table(i: int) -> pa.Table:
    keys = [i * 10 + k for k in range(3)]
    day = lambda k: datetime.date(2024, 1, 1 + k % 28)
    moment = lambda k: datetime.datetime(2024, 1, 1, 12, 0, k % 60)
    return pa.table({
        "id": pa.array(keys, pa.int64()),
        "b": pa.array([k % 2 == 0 for k in keys]),
        "i8": pa.array([k % 100 for k in keys], pa.int8()),
        "i16": pa.array(keys, pa.int16()),
        "i32": pa.array(keys, pa.int32()),
        "u8": pa.array([k % 200 for k in keys], pa.uint8()),
        "u16": pa.array(keys, pa.uint16()),
        "u32": pa.array(keys, pa.uint32()),
        "u64": pa.array(keys, pa.uint64()),
        "f16": pa.array([1.5] * 3, pa.float16()),
        "f32": pa.array([k / 3 for k in keys], pa.float32()),
        "f64": pa.array([k / 7 for k in keys]),
        "dec": pa.array([decimal.Decimal(k) / 100 for k in keys], pa.decimal128(10, 2)),
        "dec256": pa.array([decimal.Decimal(k) for k in keys], pa.decimal256(40, 5)),
        "s": pa.array([f"s{k}" for k in keys]),
        "ls": pa.array([f"l{k}" for k in keys], pa.large_string()),
        "bin": pa.array([bytes([k % 256]) for k in keys]),
        "lbin": pa.array([b"x"] * 3, pa.large_binary()),
        "fsb": pa.array([bytes([1, 2, 3, k % 256]) for k in keys], pa.binary(4)),
        "d32": pa.array([day(k) for k in keys], pa.date32()),
        "d64": pa.array([day(k) for k in keys], pa.date64()),
        "t32s": pa.array([datetime.time(1, 2, k % 60) for k in keys], pa.time32("s")),
        "t32ms": pa.array([datetime.time(1, 2, k % 60) for k in keys], pa.time32("ms")),
        "t64us": pa.array([datetime.time(1, 2, k % 60, 5) for k in keys], pa.time64("us")),
        "t64ns": pa.array([datetime.time(1, 2, k % 60) for k in keys], pa.time64("ns")),
        "ts_s": pa.array([moment(k) for k in keys], pa.timestamp("s")),
        "ts_s_ny": pa.array([moment(k) for k in keys], pa.timestamp("s", tz="America/New_York")),
        "ts_ms_kolkata": pa.array([moment(k) for k in keys], pa.timestamp("ms", tz="Asia/Kolkata")),
        "ts_us_utc": pa.array([moment(k) for k in keys], pa.timestamp("us", tz="UTC")),
        "ts_ns": pa.array([moment(k) for k in keys], pa.timestamp("ns")),
        "dur_s": pa.array(keys, pa.duration("s")),
        "dur_ns": pa.array(keys, pa.duration("ns")),
        "lst": pa.array([[k, None] for k in keys], pa.list_(pa.int64())),
        "llst": pa.array([["a", str(k)] for k in keys], pa.large_list(pa.string())),
        "st": pa.array([{"a": k, "b": str(k)} for k in keys],
                       pa.struct([("a", pa.int32()), ("b", pa.string())])),
        "mp": pa.array([[("k", k)] for k in keys], pa.map_(pa.string(), pa.int64())),
        "dict": pa.array([f"c{k % 2}" for k in keys]).dictionary_encode(),
        "nullable": pa.array([None if k % 2 else k for k in keys], pa.int64()),
    })


@pytest.fixture()
def compacted(tmp_path):
    if not BIN or not Path(BIN).exists():
        pytest.fail(f"COMPACTOR_BIN must point at the built compactor binary, got {BIN!r}")
    part = tmp_path / "t" / PARTITION
    part.mkdir(parents=True)
    for i in range(3):
        pq.write_table(table(i), part / f"f{i}.parquet")
    # The inputs as pyarrow reads them back (it reads date64 as date32, for one).
    inputs = [pq.read_table(part / f"f{i}.parquet") for i in range(3)]
    reference = tmp_path / "reference.parquet"
    pq.write_table(table(0), reference)
    out = subprocess.run(
        [BIN, "compact", str(tmp_path), "--prefix", "t/", "--template", "dt={date}", "--quiet"],
        capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    outputs = sorted(part.glob("compacted-*.parquet"))
    assert len(outputs) == 1 and not list(part.glob("f*.parquet")), list(part.iterdir())
    return inputs, reference, outputs[0]


def test_pyarrow_reads_every_type_and_value_as_written(compacted):
    inputs, reference, output = compacted
    assert pq.read_schema(output).remove_metadata() == pq.read_schema(reference).remove_metadata()
    before = pa.concat_tables(inputs).sort_by("id")
    after = pq.read_table(output).sort_by("id")
    for name in before.column_names:
        a, b = before[name].combine_chunks(), after[name].combine_chunks()
        assert a.type == b.type, (name, a.type, b.type)
        assert a.equals(b), (name, a, b)


def test_duckdb_reads_the_same_types(compacted):
    _, reference, output = compacted
    describe = lambda f: duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{f}', hive_partitioning = false)").fetchall()
    assert [r[:2] for r in describe(output)] == [r[:2] for r in describe(reference)]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{output}')").fetchall() == [(9,)]


def test_polars_reads_the_same_types(compacted):
    _, reference, output = compacted
    readable = 0
    for name in pq.read_schema(reference).names:
        try:
            before = pl.read_parquet(reference, columns=[name]).schema
        except BaseException:  # polars cannot read every Arrow type (decimal256 of 40 digits)
            continue
        assert pl.read_parquet(output, columns=[name]).schema == before, name
        readable += 1
    assert readable >= 35, readable
