#!/usr/bin/env python3
"""Benchmark: export one finalized range of a hot Postgres table (>= 5M rows) to cold Parquet
with `compactor compact` (a [[hot_dataset]]), and compare it in the same run with Postgres's own
`COPY (SELECT ...) TO STDOUT (FORMAT binary)` of the same rows, in the same order, into
/dev/null.

Prints, per contender: rows, median wall seconds, rows/s, MB/s (of the COPY binary byte count,
for both, so the two are comparable), peak RSS (MiB) and output MB; then the ratio compactor
throughput / COPY throughput against the 70% goal and the compactor's peak RSS against the
stated bound. Writes the same to bench/out/hot_results.json. Every compactor run is checked
(exit code, JSON summary, Parquet footer row counts, an aggregate fingerprint of every column
compared with the same aggregates computed by Postgres, order); any failed check makes the
script exit non-zero.

Run from the repository root:  python3 bench/hot_export.py [--help]
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from common import (CheckFailed, MIB, REPO, add_build_options, check, ensure_deps, exit_code,
                    format_table, identity, identity_lines, log, median, parse_size,
                    release_binaries, run_measured)

# Marks a table this script created: only such a table is ever dropped or reused.
MARKER = "compactor bench/hot_export.py"
CHAIN = 1
OTHER_CHAIN = 10
DATASET = "bench"


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def redact(dsn: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


# --------------------------------------------------------------------------------------------
# Postgres
# --------------------------------------------------------------------------------------------


class Pg:
    def __init__(self, dsn: str):
        self.dsn = dsn

    def psql(self, sql: str, *, quiet: bool = True) -> str:
        """Run SQL with psql (ON_ERROR_STOP); return unaligned, tuples-only output."""
        p = subprocess.run(
            ["psql", self.dsn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True,
        )
        if p.returncode != 0:
            raise CheckFailed(f"psql failed ({p.returncode}) on:\n{sql}\n{p.stderr}")
        return p.stdout.strip()

    def script(self, sql: str) -> None:
        p = subprocess.run(
            ["psql", self.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=sql, capture_output=True, text=True,
        )
        if p.returncode != 0:
            raise CheckFailed(f"psql failed ({p.returncode}):\n{p.stderr}")


class ServerCpu:
    """CPU seconds of the server's backends, when the server runs on this machine: the
    postmaster reaps every backend, so its cutime + cstime (/proc/PID/stat) grows by each
    finished backend's CPU. None when the server is not local (or /proc is not readable)."""

    def __init__(self, pg: Pg):
        self.postmaster = None
        try:
            # The checkpointer lives as long as the server; its parent is the postmaster.
            child = int(pg.psql("SELECT pid FROM pg_stat_activity "
                                "WHERE backend_type = 'checkpointer'"))
            ppid = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if "postgres" in Path(f"/proc/{ppid}/comm").read_text():
                self.postmaster = ppid
        except (OSError, ValueError, CheckFailed):
            pass

    def reaped(self) -> float | None:
        if self.postmaster is None:
            return None
        try:
            f = Path(f"/proc/{self.postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # Fields 16 and 17 (cutime, cstime) are at 13, 14 after the state field (field 3).
        return (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")

    def settled(self) -> float | None:
        """reaped() once it has not changed for 0.3 s (backends of finished clients exit and
        are reaped within milliseconds; give up waiting after 5 s)."""
        last, stable = self.reaped(), 0
        deadline = time.monotonic() + 5
        while last is not None and stable < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.reaped()
            stable = stable + 1 if now == last else 0
            last = now
        return last

    def around(self, fn, *a, **kw):
        """fn(*a, **kw) and the backend CPU seconds it caused (None if unknown)."""
        before = self.settled()
        r = fn(*a, **kw)
        after = self.settled()
        return r, (None if before is None or after is None else after - before)


def pg_ready(dsn: str) -> bool:
    return subprocess.run(["psql", dsn, "-X", "-q", "-c", "SELECT 1"], capture_output=True,
                          timeout=30).returncode == 0


def start_postgres(pg_dir: Path) -> str:
    """A throwaway server (scripts/postgres) in pg_dir; reused if one from --keep still runs."""
    dsn_file = pg_dir / "dsn"
    if dsn_file.exists():
        dsn = dsn_file.read_text().strip()
        if pg_ready(dsn):
            log(f"reusing the running throwaway server in {pg_dir} ({dsn})")
            return dsn
    if pg_dir.exists():
        subprocess.run([str(REPO / "scripts" / "postgres"), "stop", str(pg_dir)], check=False)
    log(f"starting a throwaway Postgres in {pg_dir} (scripts/postgres start)")
    dsn = subprocess.run([str(REPO / "scripts" / "postgres"), "start", str(pg_dir)],
                         check=True, capture_output=True, text=True).stdout.strip()
    dsn_file.write_text(dsn + "\n")
    return dsn


def stop_postgres(pg_dir: Path) -> None:
    log(f"stopping the throwaway Postgres in {pg_dir}")
    subprocess.run([str(REPO / "scripts" / "postgres"), "stop", str(pg_dir)], check=False)


COLUMNS = [
    # name, SQL type
    ("chain_id", "int8 NOT NULL"),
    ("block_number", "int8 NOT NULL"),
    ("tx_index", "int4 NOT NULL"),
    ("tx_hash", "bytea NOT NULL"),
    ("from_addr", "bytea NOT NULL"),
    ("to_addr", "bytea"),
    ("value", "numeric(38,0) NOT NULL"),
    ("gas_used", "int8 NOT NULL"),
    ("gas_price", "int8 NOT NULL"),
    ("success", "bool NOT NULL"),
    ("block_time", "timestamptz NOT NULL"),
    ("method", "text NOT NULL"),
    ("extra", "jsonb"),
]
COLUMN_NAMES = [c for c, _ in COLUMNS]


def geometry(rows: int, txs_per_block: int) -> dict:
    """Block layout: `rows` chain-1 rows, txs_per_block per block, in one range of range_size
    blocks starting at 18 x range_size (a mainnet-like block number)."""
    blocks = math.ceil(rows / txs_per_block)
    range_size = max(1_000_000, 10 ** math.ceil(math.log10(blocks + 1)))
    start = 18 * range_size
    return {
        "blocks": blocks,
        "range_size": range_size,
        "start": start,
        "end": start + range_size,
        # One row at `end` (outside the range) makes the chain's tip >= end - 1: the range is
        # final with finality_depth_blocks = 0.
        "tip_block": start + range_size,
        "other_chain_rows": max(1000, rows // 200),
    }


def table_marker(args) -> str:
    return json.dumps({"by": MARKER, "rows": args.rows, "txs_per_block": args.txs_per_block,
                       "version": 1}, sort_keys=True)


def existing_marker(pg: Pg, table: str) -> str | None:
    """The table's comment, '' if it has none, None if there is no such table."""
    out = pg.psql(f"SELECT coalesce(obj_description(to_regclass('{table}')::oid, 'pg_class'), "
                  f"'<none>') WHERE to_regclass('{table}') IS NOT NULL")
    if out == "":
        return None
    return "" if out == "<none>" else out


def drop_table(pg: Pg, table: str) -> None:
    marker = existing_marker(pg, table)
    if marker is None:
        return
    if MARKER not in marker:
        raise CheckFailed(f"table {table} exists and was not created by this script "
                          f"(comment {marker!r}); not dropping it — choose another --table")
    pg.psql(f"DROP TABLE {table}")


def create_table(pg: Pg, args, geo: dict) -> float:
    drop_table(pg, args.table)
    t0 = time.perf_counter()
    cols = ",\n  ".join(f"{n} {t}" for n, t in COLUMNS)
    n, tpb, start = args.rows, args.txs_per_block, geo["start"]
    # Deterministic, realistic-looking values: 32-byte hashes, 20-byte addresses (100k senders,
    # 50k receivers, 1% contract creations with no receiver), 1-in-3 zero-value transfers and
    # 24-digit values, 12 s blocks, a few method names, a small jsonb on 1 row in 5.
    select = f"""
      SELECT {{chain}}::int8,
             {{block}},
             (g % {tpb})::int4,
             sha256(('tx-' || {{chain}} || '-' || g)::bytea),
             substr(sha256(('from-' || (g * 7 % 100003))::bytea), 1, 20),
             CASE WHEN g % 100 = 7 THEN NULL
                  ELSE substr(sha256(('to-' || (g * 13 % 50021))::bytea), 1, 20) END,
             (CASE WHEN g % 3 = 0 THEN 0
                   ELSE (g::numeric * 982451653 * 1000000007 + 12345) % 1000000000000000000000000
              END)::numeric(38,0),
             21000 + (g * 7919) % 279000,
             1000000000 + (g * 104729) % 99000000000,
             g % 50 <> 3,
             timestamptz '2023-09-01 00:00:00+00' + ({{block}} - {start}) * interval '12 seconds',
             (ARRAY['transfer', 'approve', 'swapExactTokensForTokens', 'mint', 'execute',
                    'multicall', 'deposit', 'withdraw'])[(1 + g * 31 % 8)::int4],
             CASE WHEN g % 5 = 0 THEN jsonb_build_object('nonce', g % 4096, 'type', 2,
                                                         'access_list', g % 3 = 0) END
    """
    main_rows = select.format(chain=CHAIN, block=f"({start} + g / {tpb})::int8")
    other = select.format(chain=OTHER_CHAIN,
                          block=f"({start} + (g * 97) % {geo['blocks']})::int8")
    tip = select.format(chain=CHAIN, block=f"{geo['tip_block']}::int8")
    log(f"creating {args.table}: {n:,} rows of chain {CHAIN} in blocks "
        f"[{start}, {start + geo['blocks']}), {geo['other_chain_rows']:,} rows of chain "
        f"{OTHER_CHAIN}, 1 row at block {geo['tip_block']}")
    pg.script(f"""
      CREATE TABLE {args.table} (
        {cols}
      );
      INSERT INTO {args.table} {main_rows} FROM generate_series(0, {n - 1}::int8) g;
      INSERT INTO {args.table} {other} FROM generate_series(0, {geo['other_chain_rows'] - 1}::int8) g;
      INSERT INTO {args.table} {tip} FROM generate_series({n}::int8, {n}::int8) g;
      CREATE INDEX ON {args.table} (chain_id, block_number);
      COMMENT ON TABLE {args.table} IS '{table_marker(args)}';
    """)
    # Outside a transaction: VACUUM sets hint bits and the visibility map, so no contender pays
    # for the first read of freshly inserted rows.
    pg.psql(f"VACUUM (ANALYZE) {args.table}")
    return time.perf_counter() - t0


def range_sql(table: str, geo: dict) -> str:
    return (f"FROM {table} WHERE chain_id = {CHAIN} AND block_number >= {geo['start']} "
            f"AND block_number < {geo['end']}")


def copy_sql(table: str, geo: dict) -> str:
    """The compactor's export query (sql::export_query), with literals for its parameters."""
    return (f"COPY (SELECT {', '.join(COLUMN_NAMES)} {range_sql(table, geo)} "
            f"ORDER BY block_number) TO STDOUT (FORMAT binary)")


def pg_fingerprint(pg: Pg, table: str, geo: dict) -> dict:
    """Aggregates touching every exported column, computed by Postgres over the range."""
    out = pg.psql(f"""
      SELECT count(*), sum(block_number), sum(tx_index), min(block_number), max(block_number),
             count(DISTINCT tx_hash), sum(octet_length(tx_hash)),
             count(DISTINCT from_addr), count(to_addr), sum(octet_length(to_addr)),
             sum(value), sum(gas_used), sum(gas_price), sum(success::int),
             sum((extract(epoch FROM block_time) * 1000000)::int8),
             sum(length(method)), count(DISTINCT method),
             count(extra), sum(length(extra::text)), sum(chain_id)
      {range_sql(table, geo)}
    """)
    return fingerprint_dict(out.split("|"))


FP_KEYS = ["rows", "block_number_sum", "tx_index_sum", "block_min", "block_max",
           "tx_hash_distinct", "tx_hash_bytes", "from_addr_distinct", "to_addr_non_null",
           "to_addr_bytes", "value_sum", "gas_used_sum", "gas_price_sum", "success_true",
           "block_time_us_sum", "method_chars", "method_distinct", "extra_non_null",
           "extra_chars", "chain_id_sum"]


def fingerprint_dict(values) -> dict:
    return {k: (None if v in (None, "") else int(Decimal(str(v)))) for k, v in zip(FP_KEYS, values)}


def parquet_fingerprint(con, files: list[Path]) -> dict:
    lst = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
    row = con.execute(f"""
      SELECT count(*), sum(block_number), sum(tx_index), min(block_number), max(block_number),
             count(DISTINCT tx_hash), sum(octet_length(tx_hash)),
             count(DISTINCT from_addr), count(to_addr), sum(octet_length(to_addr)),
             sum(value), sum(gas_used), sum(gas_price), sum(success::int),
             sum(epoch_us(block_time)),
             sum(length(method)), count(DISTINCT method),
             count(extra), sum(length(extra::VARCHAR)), sum(chain_id)
      FROM read_parquet({lst})
    """).fetchone()
    return fingerprint_dict(row)


def parquet_order_ok(con, files: list[Path]) -> tuple[int, list]:
    """Rows out of block_number order inside their file, and (min, max) block per file."""
    lst = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
    bad = con.execute(f"""
      SELECT count(*) FROM (
        SELECT block_number, lag(block_number) OVER (PARTITION BY filename
                                                     ORDER BY file_row_number) p
        FROM read_parquet({lst}, filename = true, file_row_number = true))
      WHERE block_number < p
    """).fetchone()[0]
    spans = con.execute(f"""
      SELECT min(block_number), max(block_number) FROM read_parquet({lst}, filename = true)
      GROUP BY filename ORDER BY 1
    """).fetchall()
    return bad, spans


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


def copy_byte_count(pg: Pg, sql: str) -> tuple[int, float]:
    """Bytes of the COPY binary stream (un-timed for the table; also warms the caches)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["psql", pg.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    n = 0
    while chunk := p.stdout.read(1 << 20):
        n += len(chunk)
    err = p.stderr.read().decode(errors="replace")
    rc = p.wait()
    if rc != 0:
        raise CheckFailed(f"COPY byte count: psql exited {rc}\n{err}")
    return n, time.perf_counter() - t0


def run_copy(pg: Pg, sql: str, out_root: Path, name: str, env: dict) -> dict:
    cmd = ["psql", pg.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]
    r = run_measured(cmd, out_root, out_root / "logs", name, env, stdout_to="/dev/null")
    if r["exit_code"] != 0:
        raise CheckFailed(f"{name}: psql exited {r['exit_code']}\n{r['stderr']}")
    return r


def write_config(path: Path, args, geo: dict, delete: bool = False) -> str:
    lines = [
        "[[hot_dataset]]",
        f'name = "{DATASET}"',
        f'table = "{args.table}"',
        f"chain_id = {CHAIN}",
        'range_column = "block_number"',
        f"range_size = {geo['range_size']}",
        "finality_depth_blocks = 0",
        f"chunk_size = {args.chunk_size}",
        f"delete_after_compact = {'true' if delete else 'false'}",
        f"delete_batch_rows = {args.delete_batch_rows}",
    ]
    if args.compression:
        lines.append(f'compression = "{args.compression}"')
    lines += args.hot_option
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def run_compactor(binary: Path, cfg: Path, args, geo: dict, expect: dict, out_root: Path,
                  name: str, env: dict, con, delete: bool = False) -> dict:
    work = out_root / "hot" / "work" / name.replace(" ", "-")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = [str(binary), "compact", str(work), "--config", str(cfg), "--quiet", "--json",
           "--memory-budget", args.memory_budget]
    r = run_measured(cmd, work, out_root / "logs", name, env)
    if r["exit_code"] != 0:
        raise CheckFailed(
            f"{name}: compactor exited {r['exit_code']}\ncommand: {' '.join(cmd)}\n"
            f"stdout:\n{r['stdout']}\nstderr:\n{r['stderr']}")
    try:
        summary = json.loads(r["stdout"])
    except json.JSONDecodeError as e:
        raise CheckFailed(f"{name}: summary is not JSON ({e}):\n{r['stdout']}") from e
    check(not summary.get("failures"), f"{name}: summary lists failures: {summary.get('failures')}")
    check(summary.get("hot_ranges_exported") == 1,
          f"{name}: hot_ranges_exported = {summary.get('hot_ranges_exported')}, expected 1")
    check(summary.get("rows") == expect["rows"],
          f"{name}: summary rows = {summary.get('rows')}, Postgres count {expect['rows']}")
    deleted = expect["rows"] if delete else 0
    check(summary.get("postgres_rows_deleted", 0) == deleted,
          f"{name}: deleted {summary.get('postgres_rows_deleted')} Postgres rows, expected "
          f"{deleted} (delete_after_compact = {'true' if delete else 'false'})")
    check(not summary.get("anomalies"), f"{name}: anomalies {summary.get('anomalies')}")

    part = work / "cold" / str(CHAIN) / DATASET / f"{geo['start']}-{geo['end']}"
    files = sorted(p for p in work.rglob("*.parquet") if "_compactor" not in p.parts)
    check(files, f"{name}: no Parquet file under {work}")
    outside = [f for f in files if f.parent != part or not f.name.startswith("compacted-")]
    check(not outside, f"{name}: unexpected Parquet files {outside[:3]} (expected {part}/compacted-*)")

    import pyarrow.parquet as pq

    footer_rows = []
    for f in files:
        md = pq.ParquetFile(f).metadata
        footer_rows.append(md.num_rows)
        names = md.schema.to_arrow_schema().names
        check(names == COLUMN_NAMES, f"{name}: {f.name} has columns {names}, expected {COLUMN_NAMES}")
    check(sum(footer_rows) == expect["rows"],
          f"{name}: Parquet footers hold {sum(footer_rows)} rows, Postgres count {expect['rows']}")
    check(max(footer_rows) <= args.chunk_size,
          f"{name}: a file holds {max(footer_rows)} rows > chunk_size {args.chunk_size}")
    fp = parquet_fingerprint(con, files)
    diff = {k: (expect[k], fp[k]) for k in FP_KEYS if expect[k] != fp[k]}
    check(not diff, f"{name}: Parquet content differs from Postgres (key: (postgres, parquet)): {diff}")
    bad, spans = parquet_order_ok(con, files)
    check(bad == 0, f"{name}: {bad} rows out of block_number order inside their file")
    overlaps = sum(1 for a, b in zip(spans, spans[1:]) if a[1] > b[0])
    check(overlaps == 0, f"{name}: block ranges of {overlaps} file pair(s) overlap: {spans}")
    out_bytes = sum(f.stat().st_size for f in files)
    res = {
        "seconds": r["seconds"],
        "peak_rss_mib": r["maxrss_kib"] / 1024,
        "cpu_user_s": r["utime"],
        "cpu_sys_s": r["stime"],
        "files": len(files),
        "file_rows": footer_rows,
        "output_bytes": out_bytes,
        "summary_seconds": summary.get("seconds"),
        "summary": {k: v for k, v in summary.items() if k not in ("plan", "events")},
    }
    if not args.keep_output:
        shutil.rmtree(work)
    return res


def run_move(pg: Pg, binary: Path, args, geo: dict, expect: dict, out_root: Path,
             compactor_env: dict, base_env: dict, con, server_cpu) -> dict:
    """Moves the range with the compactor (export, then the delete checked by content), then
    deletes the same rows with plain batched DELETEs from psql; the rows are restored from a
    copy before and after each (restores are not timed)."""
    table = args.table
    backup = f"{table}_bench_backup"
    where = (f"chain_id = {CHAIN} AND block_number >= {geo['start']} "
             f"AND block_number < {geo['end']}")
    log("move: copying the range aside (not timed)")
    pg.script(f"DROP TABLE IF EXISTS {backup}; CREATE TABLE {backup} AS SELECT * FROM {table} "
              f"WHERE {where};")

    def remaining() -> int:
        return int(pg.psql(f"SELECT count(*) FROM {table} WHERE {where}"))

    def restore() -> None:
        pg.script(f"INSERT INTO {table} SELECT * FROM {backup}; VACUUM ANALYZE {table};")
        check(remaining() == expect["rows"], "move: the range was not restored")

    cfg = out_root / "hot" / "move.toml"
    write_config(cfg, args, geo, delete=True)
    c, server_s = server_cpu.around(run_compactor, binary, cfg, args, geo, expect, out_root,
                                    "compactor-move", compactor_env, con, True)
    check(remaining() == 0, "compactor-move: rows of the range are still in Postgres")
    log(f"compactor-move: {c['seconds']:.2f} s, peak RSS {c['peak_rss_mib']:.0f} MiB, server CPU "
        f"{fmt_s(server_s)}; every row deleted, the cold copy verified")
    restore()
    step = max(1, args.delete_batch_rows // args.txs_per_block)
    statements = [
        f"DELETE FROM {table} WHERE chain_id = {CHAIN} AND block_number >= {b} "
        f"AND block_number < {min(b + step, geo['end'])};"
        for b in range(geo["start"], geo["end"], step)
    ]
    script = out_root / "hot" / "delete.sql"
    script.write_text("\n".join(statements) + "\n")
    cmd = ["psql", pg.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script)]
    d, _ = server_cpu.around(run_measured, cmd, out_root, out_root / "logs", "plain-delete",
                             base_env, stdout_to="/dev/null")
    if d["exit_code"] != 0:
        raise CheckFailed(f"plain-delete: psql exited {d['exit_code']}\n{d['stderr']}")
    check(remaining() == 0, "plain-delete: rows of the range are still in Postgres")
    log(f"plain-delete: {d['seconds']:.2f} s ({len(statements)} DELETE statements)")
    restore()
    pg.script(f"DROP TABLE {backup};")
    return {"compactor": {"seconds": c["seconds"], "peak_rss_mib": c["peak_rss_mib"],
                          "server_cpu_s": server_s},
            "delete": {"seconds": d["seconds"], "statements": len(statements)}}


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    head = ["contender", "rows", "seconds", "rows/s", "MB/s", "peak RSS MiB", "output MB",
            "files", "client CPU s", "server CPU s"]
    body = [
        [
            r["contender"],
            f"{r['rows']:,}",
            f"{r['seconds']:.2f}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['mb_per_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            "-" if r["output_mb"] is None else f"{r['output_mb']:.1f}",
            "-" if r["files"] is None else str(r["files"]),
            f"{r['client_cpu_s']:.1f}",
            "n/a" if r["server_cpu_s"] is None else f"{r['server_cpu_s']:.1f}",
        ]
        for r in rows
    ]
    return format_table(head, body)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only for real defaults (not None / off / empty lists)."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark the compactor's hot-dataset export (Postgres range -> cold "
        "Parquet) against Postgres's own COPY (SELECT ...) TO STDOUT (FORMAT binary) into "
        "/dev/null, on the same rows in the same run. See bench/README.md.",
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--rows", type=int, metavar="N", default=5_000_000,
                    help="rows of the exported range (chain 1); the table also holds a few "
                    "rows of another chain and one row past the range")
    ap.add_argument("--txs-per-block", type=int, metavar="N", default=10, help="rows per block_number")
    ap.add_argument("--repeat", type=int, metavar="K", default=3,
                    help="timed runs per contender, interleaved (COPY, compactor, COPY, ...); "
                    "the table shows the median seconds and the largest peak RSS")
    ap.add_argument("--memory-budget", metavar="SIZE", default="1GiB", help="compactor --memory-budget")
    ap.add_argument("--chunk-size", type=int, metavar="ROWS", default=1_000_000,
                    help="chunk_size of the [[hot_dataset]]: rows per Parquet file")
    ap.add_argument("--compression", metavar="CODEC", default=None,
                    help="compression of the [[hot_dataset]] (e.g. zstd, zstd(1), snappy, none) "
                    "[default: not set, i.e. the hot dataset default, zstd(1)]")
    ap.add_argument("--hot-option", action="append", default=[], metavar="'KEY = VALUE'",
                    help="extra TOML line for the [[hot_dataset]] (repeatable), e.g. "
                    "'row_group_rows = 262144'")
    ap.add_argument("--rss-bound", metavar="SIZE", default=None,
                    help="stated bound on the compactor's peak RSS [default: --memory-budget + "
                    "256MiB, the bound bench/run.py states per merge]")
    ap.add_argument("--delete-batch-rows", type=int, metavar="ROWS", default=50_000,
                    help="delete_batch_rows of the move phase")
    ap.add_argument("--move", action=argparse.BooleanOptionalAction, default=True,
                    help="also move the range (export + delete checked by content) and delete "
                    "the same rows with plain batched DELETEs, restoring them after each")
    ap.add_argument("--goal", type=float, metavar="FRACTION", default=0.70,
                    help="required compactor throughput as a fraction of COPY binary's")
    ap.add_argument("--strict", action="store_true",
                    help="also exit non-zero when the throughput goal or the RSS bound is NOT MET "
                    "(failed runs and failed checks always exit non-zero)")
    ap.add_argument("--dsn", metavar="DSN", default=None,
                    help="Postgres to use [default: $DATABASE_URL; if unset, a throwaway server "
                    "is started with scripts/postgres in --pg-dir and stopped at the end]")
    ap.add_argument("--pg-dir", metavar="DIR", default=None,
                    help="directory of the throwaway server [default: OUT_DIR/pg]")
    ap.add_argument("--table", metavar="[SCHEMA.]TABLE", default="public.compactor_bench_transactions",
                    help="benchmark table (created by the script; an existing table is only "
                    "ever dropped or reused if this script created it)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the table if this script created it with the same --rows and "
                    "--txs-per-block (e.g. left by --keep), instead of recreating it")
    ap.add_argument("--keep", action="store_true",
                    help="keep the table, and the throwaway server (if one was started), "
                    "after the run, for --reuse")
    ap.add_argument("--keep-output", action="store_true",
                    help="keep the compactor's output directories (OUT_DIR/hot/work)")
    ap.add_argument("--compactor-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the compactor runs (repeatable), e.g. "
                    "RUST_LOG=debug or MALLOC_ARENA_MAX=1")
    add_build_options(ap, "compactor")
    ap.add_argument("--out-dir", metavar="DIR", default=str(REPO / "bench" / "out"),
                    help="scratch space, logs/ and hot_results.json")
    args = ap.parse_args()
    budget = parse_size(args.memory_budget)
    rss_bound = parse_size(args.rss_bound) if args.rss_bound else budget + 256 * MIB
    rss_bound_mib = rss_bound / MIB
    bound_text = (f"{args.rss_bound}" if args.rss_bound else
                  f"memory budget {args.memory_budget} + 256MiB") + f" = {rss_bound_mib:.0f} MiB"
    for kv in args.compactor_env:
        if "=" not in kv:
            ap.error(f"--compactor-env {kv!r} is not KEY=VALUE")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", args.table):
        ap.error(f"--table {args.table!r}: use a plain [schema.]table name")
    if args.rows < 1 or args.repeat < 1 or args.txs_per_block < 1 or args.chunk_size < 1:
        ap.error("--rows, --repeat, --txs-per-block and --chunk-size must be positive")

    ensure_deps()
    if args.rows < 5_000_000:
        log(f"warning: --rows {args.rows:,} is below the 5,000,000 rows the benchmark is meant for")
    import duckdb

    binary = release_binaries(args, ["compactor"])["compactor"]
    out_root = Path(args.out_dir).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_root / "hot", ignore_errors=True)
    (out_root / "hot").mkdir()
    shutil.rmtree(out_root / "logs", ignore_errors=True)
    (out_root / "logs").mkdir()
    ident = identity(binary)
    geo = geometry(args.rows, args.txs_per_block)

    pg_dir = Path(args.pg_dir).resolve() if args.pg_dir else out_root / "pg"
    started = False
    args.dsn = args.dsn or os.environ.get("DATABASE_URL")
    if args.dsn:
        dsn = args.dsn
    else:
        dsn = start_postgres(pg_dir)
        started = True
    pg = Pg(dsn)
    base_env = dict(os.environ)
    compactor_env = dict(base_env, COMPACTOR_PG_DSN=dsn,
                         **dict(kv.split("=", 1) for kv in args.compactor_env))

    server_cpu = ServerCpu(pg)
    floor = run_measured(["true"], out_root, out_root / "logs", "rss-floor", base_env)
    floor_mib = floor["maxrss_kib"] / 1024

    t_start = time.perf_counter()
    failures: list[str] = []
    results: list[dict] = []
    info: dict = {"geometry": geo}
    copy_runs: list[dict] = []
    comp_runs: list[dict] = []
    move_runs: dict = {}
    try:
        server = pg.psql("SHOW server_version")
        settings = pg.psql("SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' "
                           "ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', "
                           "'work_mem', 'max_parallel_workers_per_gather', 'jit')")
        info.update(server_version=server, server_settings=settings)
        marker = existing_marker(pg, args.table)
        if args.reuse and marker == table_marker(args):
            log(f"reusing {args.table} (created by this script with the same parameters)")
            info["table_created_seconds"] = None
        else:
            if args.reuse:
                log(f"--reuse: {args.table} "
                    f"{'does not exist' if marker is None else 'has other parameters'}; creating it")
            info["table_created_seconds"] = create_table(pg, args, geo)
            log(f"table created in {info['table_created_seconds']:.0f} s")
        total_rows, rel, total = pg.psql(
            f"SELECT count(*), pg_relation_size('{args.table}'), "
            f"pg_total_relation_size('{args.table}') FROM {args.table}").split("|")
        info.update(table_rows=int(total_rows), table_bytes=int(rel),
                    table_total_bytes=int(total))
        log(f"{args.table}: {int(total_rows):,} rows, heap {int(rel) / 1e6:.0f} MB, "
            f"total with index {int(total) / 1e6:.0f} MB")

        log("computing the expected fingerprint of the range in Postgres")
        expect = pg_fingerprint(pg, args.table, geo)
        check(expect["rows"] == args.rows,
              f"the range holds {expect['rows']} rows of chain {CHAIN}, expected {args.rows}")
        sql = copy_sql(args.table, geo)
        plan = pg.psql("EXPLAIN " + sql[len("COPY ("):sql.rindex(") TO STDOUT")])
        info.update(copy_sql=sql, plan=plan)
        copy_bytes, count_secs = copy_byte_count(pg, sql)
        info.update(copy_bytes=copy_bytes, copy_byte_count_seconds=count_secs)
        log(f"COPY binary stream: {copy_bytes / 1e6:.1f} MB ({count_secs:.2f} s, un-timed "
            f"warm-up); plan: {plan.splitlines()[0].strip()}")

        cfg = out_root / "hot" / "hot.toml"
        info["config"] = write_config(cfg, args, geo)
        for i in range(1, args.repeat + 1):
            name = f"copy-{i}"
            r, server_s = server_cpu.around(run_copy, pg, sql, out_root, name, base_env)
            copy_runs.append({"seconds": r["seconds"], "peak_rss_mib": r["maxrss_kib"] / 1024,
                              "cpu_user_s": r["utime"], "cpu_sys_s": r["stime"],
                              "server_cpu_s": server_s})
            log(f"{name}: {r['seconds']:.2f} s, psql peak RSS {r['maxrss_kib'] / 1024:.0f} MiB, "
                f"psql CPU {r['utime'] + r['stime']:.1f} s, server CPU {fmt_s(server_s)}")
            name = f"compactor-{i}"
            c, server_s = server_cpu.around(
                run_compactor, binary, cfg, args, geo, expect, out_root, name, compactor_env,
                duckdb.connect())
            c["server_cpu_s"] = server_s
            comp_runs.append(c)
            log(f"{name}: {c['seconds']:.2f} s (summary {c['summary_seconds']} s), peak RSS "
                f"{c['peak_rss_mib']:.0f} MiB, CPU user {c['cpu_user_s']:.1f} s sys "
                f"{c['cpu_sys_s']:.1f} s, server CPU {fmt_s(server_s)}, {c['files']} file(s) "
                f"{c['output_bytes'] / 1e6:.1f} MB; verified")
        if args.move:
            move_runs.update(run_move(pg, binary, args, geo, expect, out_root, compactor_env,
                                      base_env, duckdb.connect(), server_cpu))
    except CheckFailed as e:
        failures.append(str(e))
    except subprocess.CalledProcessError as e:
        failures.append(f"{e}")
    except BaseException:
        if started and not args.keep:
            stop_postgres(pg_dir)
        raise

    rows = args.rows

    def summary(contender: str, runs: list[dict], output_mb, files) -> dict:
        s = median([x["seconds"] for x in runs])
        server = [x["server_cpu_s"] for x in runs]
        return {
            "contender": contender, "rows": rows, "seconds": s,
            "rows_per_s": rows / s, "mb_per_s": info["copy_bytes"] / 1e6 / s,
            "peak_rss_mib": max(x["peak_rss_mib"] for x in runs),
            "output_mb": output_mb, "files": files,
            "client_cpu_s": median([x["cpu_user_s"] + x["cpu_sys_s"] for x in runs]),
            "server_cpu_s": None if None in server else median(server), "samples": runs,
        }

    if copy_runs:
        results.append(summary("postgres COPY binary", copy_runs, None, None))
    if comp_runs:
        results.append(summary("compactor export", comp_runs,
                               median([x["output_bytes"] for x in comp_runs]) / 1e6,
                               comp_runs[0]["files"]))

    verdict = {}
    print()
    print(identity_lines(ident,
                         f"PostgreSQL {info.get('server_version', '?')} "
                         f"({info.get('server_settings', '')})"))
    if "table_rows" in info:
        print(f"table {args.table}: {info['table_rows']:,} rows, "
              f"{info['table_total_bytes'] / 1e6:.0f} MB with index "
              f"(heap {info['table_bytes'] / 1e6:.0f} MB); range chain_id = {CHAIN}, "
              f"block_number [{geo['start']}, {geo['end']}): {rows:,} rows, "
              f"COPY binary stream {info.get('copy_bytes', 0) / 1e6:.1f} MB")
        print(f"compactor --memory-budget {args.memory_budget}, chunk_size {args.chunk_size:,}, "
              f"compression {args.compression or 'default (zstd(1))'}"
              + (f", {'; '.join(args.hot_option)}" if args.hot_option else "")
              + (f", env {' '.join(args.compactor_env)}" if args.compactor_env else ""))
    if results:
        print()
        print(table(results))
        print()
        print(f"seconds = median wall time of {len(copy_runs)}/{len(comp_runs)} interleaved run(s) "
              f"of the child process (psql / compactor, including start-up and connecting; the "
              f"compactor's also planning and commit);")
        print(f"MB/s = COPY binary stream MB / seconds for both (MB = 1e6 bytes); peak RSS = "
              f"largest ru_maxrss (floor: `true` measures {floor_mib:.1f} MiB; psql's does not "
              f"include the server);")
        print("client CPU s = user + system CPU of psql / the compactor; server CPU s = CPU of "
              "the Postgres backends that served the run (medians; n/a if the server is not "
              "local).")
    if len(results) == 2:
        copy_r, comp_r = results
        ratio = comp_r["rows_per_s"] / copy_r["rows_per_s"]
        goal_met = ratio >= args.goal
        rss_met = comp_r["peak_rss_mib"] <= rss_bound_mib
        verdict = {"throughput_ratio": ratio, "goal": args.goal, "goal_met": goal_met,
                   "rss_bound_mib": rss_bound_mib, "rss_bound": bound_text,
                   "rss_met": rss_met}
        print()
        print(f"throughput compactor / COPY binary = {ratio:.2f} "
              f"(goal >= {args.goal:.2f}): {'MET' if goal_met else 'NOT MET'}")
        print(f"compactor peak RSS {comp_r['peak_rss_mib']:.0f} MiB, stated bound {bound_text}: "
              f"{'MET' if rss_met else 'NOT MET'}")
        if args.strict:
            if not goal_met:
                failures.append(f"throughput ratio {ratio:.2f} < goal {args.goal:.2f} (--strict)")
            if not rss_met:
                failures.append(f"peak RSS {comp_r['peak_rss_mib']:.0f} MiB > {bound_text} (--strict)")
    if move_runs:
        export_s = results[1]["seconds"] if len(results) == 2 else None
        m, d = move_runs["compactor"], move_runs["delete"]
        delete_s = m["seconds"] - export_s if export_s else None
        verdict["move"] = {"move_seconds": m["seconds"], "export_median_seconds": export_s,
                           "checked_delete_seconds": delete_s,
                           "plain_delete_seconds": d["seconds"],
                           "move_peak_rss_mib": m["peak_rss_mib"]}
        print()
        print(f"move (export + delete checked by content, delete_batch_rows "
              f"{args.delete_batch_rows:,}): {m['seconds']:.2f} s, peak RSS "
              f"{m['peak_rss_mib']:.0f} MiB; minus the export median: the checked delete took "
              f"{fmt_s(delete_s)} ({rows / delete_s:,.0f} rows/s)" if delete_s else "")
        print(f"Postgres alone: DELETE of the same rows in batches of {args.delete_batch_rows:,} "
              f"(no check, psql): {d['seconds']:.2f} s ({rows / d['seconds']:,.0f} rows/s)")
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")

    doc = {
        **ident,
        "dsn": redact(dsn),
        "params": {k: v for k, v in vars(args).items() if k != "dsn"},
        "rss_floor_mib": floor_mib,
        "postgres": info,
        "results": results,
        "verdict": verdict,
        "failures": failures,
    }
    (out_root / "hot_results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"results: {out_root / 'hot_results.json'}; logs: {out_root / 'logs'}")

    if not args.keep:
        try:
            if not started:
                drop_table(pg, args.table)
        except CheckFailed as e:
            failures.append(str(e))
        if started:
            stop_postgres(pg_dir)
    else:
        print(f"kept table {args.table}" + (f" on the throwaway server {dsn} (stop it with "
                                              f"scripts/postgres stop {pg_dir})" if started else ""))
    if not args.keep_output:
        shutil.rmtree(out_root / "hot" / "work", ignore_errors=True)
    return exit_code(failures)


if __name__ == "__main__":
    sys.exit(main())
