"""A hot dataset exported from a real PostgreSQL (DATABASE_URL, which scripts/test starts) and
read back by pyarrow, DuckDB and polars: every engine sees the rows Postgres had, with their
types (decimals, UUIDs, JSON, timestamps with time zone, lists)."""

import decimal
import os
import subprocess
import uuid
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

BIN = os.environ.get("COMPACTOR_BIN")
DSN = os.environ.get("DATABASE_URL")


def psql(sql: str) -> str:
    out = subprocess.run(
        ["psql", DSN, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t", "-c", sql],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"psql failed: {out.stderr}"
    return out.stdout


@pytest.fixture()
def exported(tmp_path):
    if not DSN:
        pytest.fail("DATABASE_URL must point at a PostgreSQL server (scripts/test starts one)")
    if not BIN or not Path(BIN).exists():
        pytest.fail(f"COMPACTOR_BIN must point at the built compactor binary, got {BIN!r}")
    schema = f"interop_{os.getpid()}_{tmp_path.name[-8:].replace('-', '_')}"
    psql(
        f"""CREATE SCHEMA {schema};
        CREATE TABLE {schema}.tx (chain_id int8 NOT NULL, block_number int8 NOT NULL,
            amount numeric(20,4), memo text, hash bytea, ok bool, day date, seen_at timestamptz,
            id uuid, meta jsonb, tags int4[]);
        INSERT INTO {schema}.tx SELECT 1, g, round(g * 1.2345, 4), 'memo ' || g,
            decode(md5(g::text), 'hex'), g % 2 = 0, date '2024-01-01' + g % 365,
            timestamptz '2024-01-01 00:00:00+00' + g * interval '1.5 seconds',
            md5(g::text)::uuid, ('{{"g": ' || g || '}}')::jsonb, ARRAY[g, g + 1]
          FROM generate_series(0, 2999) g;
        INSERT INTO {schema}.tx SELECT 2, g, 0, 'other chain', NULL, NULL, NULL, NULL, NULL, NULL, NULL
          FROM generate_series(0, 99) g;"""
    )
    config = tmp_path / "hot.toml"
    config.write_text(
        f'[[hot_dataset]]\nname = "tx"\ntable = "{schema}.tx"\nchain_id = 1\nrange_size = 1000\nchunk_size = 700\nfinality_depth_blocks = 10\n'
    )
    data = tmp_path / "data"
    data.mkdir()
    env = dict(os.environ, COMPACTOR_PG_DSN=DSN)
    out = subprocess.run(
        [BIN, "compact", str(data), "--config", str(config), "--quiet", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, f"compactor failed: {out.stderr}"
    files = sorted(str(p) for p in (data / "cold" / "1" / "tx").rglob("*.parquet"))
    # [0,1000) and [1000,2000) are final (the tip is 2999, 10 blocks deep: up to 2989): 1000 rows each in files of 700 rows.
    assert len(files) == 4, files
    yield schema, files
    psql(f"DROP SCHEMA {schema} CASCADE")


def expected(schema):
    rows = psql(
        f"""SELECT block_number, amount, memo, encode(hash, 'hex'), ok, day, extract(epoch from seen_at)::numeric(20,6),
                   id, meta::text, tags::text
            FROM {schema}.tx WHERE chain_id = 1 AND block_number < 2000 ORDER BY block_number"""
    )
    return [line.split("\t") for line in rows.splitlines()]


def test_pyarrow_reads_every_value_and_type(exported):
    schema, files = exported
    table = ds.dataset(files, format="parquet").to_table()
    assert str(table.schema.field("amount").type) == "decimal128(20, 4)"
    assert "tz=UTC" in str(table.schema.field("seen_at").type)
    rows = sorted(table.to_pylist(), key=lambda r: r["block_number"])
    want = expected(schema)
    assert len(rows) == len(want) == 2000
    for got, (block, amount, memo, hash_hex, ok, day, epoch, id_, meta, tags) in zip(rows, want):
        assert got["block_number"] == int(block)
        assert got["amount"] == decimal.Decimal(amount)
        assert got["memo"] == memo
        assert got["hash"].hex() == hash_hex
        assert got["ok"] == (ok == "t")
        assert got["day"].isoformat() == day
        assert decimal.Decimal(str(got["seen_at"].timestamp())).quantize(decimal.Decimal("0.000001")) == decimal.Decimal(epoch)
        assert str(uuid.UUID(bytes=got["id"]) if isinstance(got["id"], bytes) else got["id"]) == id_
        assert got["meta"] == meta
        assert "{" + ",".join(str(t) for t in got["tags"]) + "}" == tags


def test_duckdb_and_polars_agree_with_postgres(exported):
    schema, files = exported
    totals = psql(
        f"SELECT sum(amount), count(DISTINCT id), max(block_number) FROM {schema}.tx WHERE chain_id = 1 AND block_number < 2000"
    ).strip().split("\t")
    con = duckdb.connect()
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({files!r})").fetchall()}
    assert types["amount"] == "DECIMAL(20,4)" and types["id"] == "UUID" and types["meta"] == "JSON", types
    total, ids, first, last = con.execute(
        f"SELECT sum(amount), count(DISTINCT id), min(seen_at), max(block_number) FROM read_parquet({files!r})"
    ).fetchone()
    assert total == decimal.Decimal(totals[0]) and ids == int(totals[1]) and last == int(totals[2])
    first_epoch = psql(f"SELECT extract(epoch from min(seen_at)) FROM {schema}.tx WHERE chain_id = 1 AND block_number < 2000")
    assert decimal.Decimal(str(first.timestamp())) == decimal.Decimal(first_epoch.strip())

    frame = pl.read_parquet(files)
    assert frame.height == 2000
    assert frame["amount"].sum() == decimal.Decimal(totals[0])
    assert frame["tags"].list.len().sum() == 4000
    assert frame.filter(pl.col("block_number") == 7)["memo"].to_list() == ["memo 7"]
