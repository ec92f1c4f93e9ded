"""Fragmented files through the row-group engine, on the local store and on S3 (moto's server):
healthy row groups are copied as bytes (a ranged file copy locally, UploadPartCopy on S3) with
their statistics and page index, tiny ones are re-encoded together, and pyarrow, DuckDB and
polars read exactly the input rows."""

import json
import os
import random
import subprocess
import uuid
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BIN = os.environ.get("COMPACTOR_BIN")
ENDPOINT = os.environ.get("COMPACTOR_TEST_AWS_ENDPOINT")
BIG_ROWS = 3000  # 2 KiB of random payload per row: about 6 MiB per healthy row group
TINY_ROWS = 20
GROUPS = [BIG_ROWS] + [TINY_ROWS] * 8 + [BIG_ROWS] + [TINY_ROWS] * 8 + [BIG_ROWS]


def fragmented(path: Path, seed: int):
    rng = random.Random(seed)
    n = sum(GROUPS)
    table = pa.table(
        {
            "id": pa.array([i + seed * 1_000_000 for i in range(n)], type=pa.int64()),
            "kind": pa.array([f"k{i % 7}" for i in range(n)]),
            "payload": pa.array([rng.randbytes(2048) for _ in range(n)], type=pa.binary()),
        }
    )
    with pq.ParquetWriter(path, table.schema, compression="snappy", write_page_index=True) as w:
        at = 0
        for rows in GROUPS:
            w.write_table(table.slice(at, rows), row_group_size=rows)
            at += rows
    return table


def compactor(*args, env=None):
    if not BIN or not Path(BIN).exists():
        pytest.fail(f"COMPACTOR_BIN must point at the built compactor binary, got {BIN!r}")
    out = subprocess.run([BIN, *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"compactor {' '.join(args)} failed: {out.stderr}"
    return json.loads(out.stdout)


ARGS = [
    "--prefix", "flat/", "--template", "", "--grace", "0s",
    "--small-file-threshold", "1MiB", "--healthy-row-group-size", "1MiB",
    "--target-file-size", "64MiB", "--row-group-size", "16MiB", "--json",
]


def check_outputs(files, expected: pa.Table, inputs: list[Path]):
    """The three engines read exactly the input rows; healthy row groups are byte-identical to
    the inputs' and every row group has statistics and a page index."""
    def key(t):
        return sorted(zip(t["id"], t["kind"], t["payload"]))

    want = key(expected.to_pydict())
    got = pa.concat_tables([pq.read_table(f) for f in files])
    assert key(got.to_pydict()) == want, "pyarrow reads other rows"
    polars = pl.read_parquet([str(f) for f in files])
    assert key(polars.to_dict(as_series=False)) == want, "polars reads other rows"
    con = duckdb.connect()
    listing = ", ".join(f"'{f}'" for f in files)
    duck = con.execute(f"SELECT id, kind, payload FROM read_parquet([{listing}])").fetchall()
    assert sorted(duck) == want, "DuckDB reads other rows"

    def groups(path):
        data = Path(path).read_bytes()
        meta = pq.ParquetFile(path).metadata
        out = []
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            cols = [rg.column(c) for c in range(rg.num_columns)]
            start = min(c.dictionary_page_offset or c.data_page_offset for c in cols)
            end = max((c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size for c in cols)
            indexed = all(c.has_column_index and c.has_offset_index for c in cols)
            stats = all(c.is_stats_set for c in cols)
            out.append((data[start:end], rg.num_rows, indexed, stats))
        return out

    healthy = [g[0] for f in inputs for g in groups(f) if g[1] == BIG_ROWS]
    outputs = [g for f in files for g in groups(f)]
    assert all(g[2] and g[3] for g in outputs), "a row group lost its page index or statistics"
    copied = [o for o in outputs if o[0] in healthy]
    assert len(copied) == len(healthy), f"{len(copied)} of {len(healthy)} healthy row groups copied byte for byte"
    assert len(outputs) <= len(healthy) + len(inputs), f"{len(outputs)} row groups: tiny ones not merged"
    # DuckDB prunes with the copied statistics: a point lookup touches one row group's rows.
    hit = con.execute(f"SELECT count(*) FROM read_parquet([{listing}]) WHERE id = {int(expected['id'][5])}").fetchone()[0]
    assert hit == 1


def test_local_store_copies_healthy_row_groups_by_ranged_file_copy(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    tables = [fragmented(flat / f"appender-{i}.parquet", i) for i in range(2)]
    inputs_copy = tmp_path / "inputs"
    inputs_copy.mkdir()
    for f in flat.iterdir():
        (inputs_copy / f.name).write_bytes(f.read_bytes())
    summary = compactor("compact", str(tmp_path), *ARGS)
    assert summary["row_groups_copied"] == 6, summary
    assert summary["bytes_copied_in_store"] > 30 << 20, summary
    files = sorted(flat.glob("compacted-*.parquet"))
    assert files and not list(flat.glob("appender-*")), list(flat.iterdir())
    check_outputs(files, pa.concat_tables(tables), sorted(inputs_copy.iterdir()))

    # same-codec recompresses the snappy row groups into zstd instead of copying them.
    again = tmp_path / "again"
    (again / "flat").mkdir(parents=True)
    for f in inputs_copy.iterdir():
        (again / "flat" / f.name).write_bytes(f.read_bytes())
    summary = compactor("compact", str(again), *ARGS, "--row-group-copy", "same-codec")
    assert summary["row_groups_copied"] == 0, summary
    codecs = {
        pq.ParquetFile(f).metadata.row_group(g).column(c).compression
        for f in (again / "flat").glob("compacted-*.parquet")
        for g in range(pq.ParquetFile(f).metadata.num_row_groups)
        for c in range(3)
    }
    assert codecs == {"ZSTD"}, codecs


def test_s3_copies_healthy_row_groups_with_upload_part_copy(tmp_path):
    if not ENDPOINT:
        pytest.fail("COMPACTOR_TEST_AWS_ENDPOINT must name moto's server (scripts/test starts it)")
    import boto3

    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=ENDPOINT)
    dynamo = session.client("dynamodb", endpoint_url=ENDPOINT)
    bucket, table = f"rg-{uuid.uuid4().hex[:12]}", f"rg-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    dynamo.create_table(
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "dataset", "KeyType": "HASH"}, {"AttributeName": "partition", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("dataset", "partition", "status_key")],
        GlobalSecondaryIndexes=[{
            "IndexName": "by-status",
            "KeySchema": [{"AttributeName": "status_key", "KeyType": "HASH"}, {"AttributeName": "partition", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
    )
    local = tmp_path / "inputs"
    local.mkdir()
    tables = [fragmented(local / f"appender-{i}.parquet", 10 + i) for i in range(2)]
    for f in local.iterdir():
        s3.upload_file(str(f), bucket, f"flat/{f.name}")
    env = dict(os.environ, AWS_ENDPOINT_URL=ENDPOINT, AWS_REGION="us-east-1",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", RUST_LOG="error")
    summary = compactor("compact", f"s3://{bucket}", "--state", f"dynamodb://{table}", *ARGS, env=env)
    assert summary["row_groups_copied"] == 6, summary
    # Each output starts with a healthy row group, copied with the source's magic; all six
    # healthy row groups (about 6 MiB each) are copied by S3.
    assert summary["bytes_copied_in_store"] > 30 << 20, summary
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="flat/")["Contents"] if o["Key"].endswith(".parquet")]
    assert all(Path(k).name.startswith("compacted-") for k in keys), keys
    out = tmp_path / "outputs"
    out.mkdir()
    files = []
    for k in keys:
        files.append(out / Path(k).name)
        s3.download_file(bucket, k, str(files[-1]))
    check_outputs(sorted(files), pa.concat_tables(tables), sorted(local.iterdir()))
