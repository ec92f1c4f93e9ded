#!/usr/bin/env python3
"""Benchmark of `compactor delete` next to the read-filter-rewrite a user would write instead,
on the same dataset in one run: 1% of the rows, selected by a predicate on the sorted key
(`event_id BETWEEN lo AND hi`), deleted from a dataset of several hourly partitions of large
sorted files (as sort mode leaves them).

Contenders: the compactor (`compactor delete DIR --where ...`: partitions and row groups pruned
by statistics, row groups without a match copied as bytes, only the files with a match
replaced), polars (`scan_parquet` with hive partitions, `filter(~pred)`, `write_parquet` with
`partition_by`) and DuckDB (`COPY (SELECT * ... WHERE NOT pred) TO dir (PARTITION_BY ...)`).

Every output is checked against DuckDB's `SELECT * FROM the dataset WHERE pred IS NOT TRUE`
(EXCEPT ALL both ways, every column and the partition). Prints dataset MB/s, seconds, peak RSS,
and the row groups the compactor copied and rewrote; writes bench/out/delete.json.

Run from the repository root:  python3 bench/delete.py [--help]   (see bench/README.md)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from common import (CheckFailed, REPO, add_build_options, check, format_table, identity_lines,
                    log, median, parquet_files, run_measured, sql_list, total_bytes)
from row_groups import prepare, report

COLS = "ts_event, event_id, user_id, kind, country, amount, session, is_bot, dt, hour"

POLARS = textwrap.dedent(
    """
    import sys, polars as pl
    src, out, lo, hi = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    df = pl.scan_parquet(src + "/**/*.parquet", hive_partitioning=True)
    df = df.filter(~pl.col("event_id").is_between(lo, hi)).collect()
    df.write_parquet(out, partition_by=["dt", "hour"], compression="zstd")
    """
)

DUCKDB = textwrap.dedent(
    """
    import sys, duckdb
    src, out, lo, hi = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_parquet('{src}/**/*.parquet', hive_partitioning = true) "
        f"WHERE NOT (event_id BETWEEN {lo} AND {hi})) "
        f"TO '{out}' (FORMAT parquet, PARTITION_BY (dt, hour), COMPRESSION zstd)")
    """
)


def build_dataset(binary: Path, root: Path, args) -> dict:
    """Generated hourly partitions, compacted in sort mode by event_id into large files of
    several row groups."""
    cmd = [str(binary), "generate", str(root), "--prefix", "events/", "--partitions",
           str(args.partitions), "--files-per-partition", str(args.files_per_partition),
           "--rows-per-file", str(args.rows_per_file), "--seed", "7"]
    log(" ".join(cmd[1:]))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    cmd = [str(binary), "compact", str(root), "--prefix", "events/", "--quiet", "--mode", "sort",
           "--sort-key", "event_id", "--row-group-size", args.row_group_size,
           "--target-file-size", args.target_file_size]
    log(" ".join(cmd[1:]))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(root / "_compactor", ignore_errors=True)
    files = parquet_files(root)
    return {"dir": root, "inputs": files, "files": len(files), "bytes": total_bytes(files)}


def key_range(con, files: list[Path], fraction: float) -> tuple[int, int, int, int]:
    """lo, hi of a contiguous event_id range holding `fraction` of the rows (in the middle of
    one partition), the rows it matches, and the rows in all."""
    total = con.execute(f"SELECT count(*) FROM read_parquet({sql_list(files)})").fetchone()[0]
    want = int(total * fraction)
    lo, hi = con.execute(
        f"SELECT min(event_id), max(event_id) FROM (SELECT event_id FROM "
        f"read_parquet({sql_list(files)}) ORDER BY event_id LIMIT {want} OFFSET {total // 3})"
    ).fetchone()
    n = con.execute(f"SELECT count(*) FROM read_parquet({sql_list(files)}) "
                    f"WHERE event_id BETWEEN {lo} AND {hi}").fetchone()[0]
    return lo, hi, n, total


def same_as_oracle(con, name: str, src: dict, out: Path, lo: int, hi: int) -> None:
    files = parquet_files(out)
    check(bool(files), f"{name}: no output")
    a = (f"SELECT {COLS.replace('dt, hour', 'CAST(dt AS VARCHAR), CAST(hour AS VARCHAR)')} "
         f"FROM read_parquet({sql_list(src['inputs'])}, hive_partitioning = true) "
         f"WHERE (event_id BETWEEN {lo} AND {hi}) IS NOT TRUE")
    b = (f"SELECT {COLS.replace('dt, hour', 'CAST(dt AS VARCHAR), CAST(hour AS VARCHAR)')} "
         f"FROM read_parquet({sql_list(files)}, hive_partitioning = true)")
    missing = con.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b})").fetchone()[0]
    extra = con.execute(f"SELECT count(*) FROM ({b} EXCEPT ALL {a})").fetchone()[0]
    check(missing == 0 and extra == 0,
          f"{name}: {missing} rows that should remain are missing, {extra} rows should not be there")


def measured(name: str, cmd: list[str], work: Path, out_root: Path, src: dict, con, out: Path,
             lo: int, hi: int) -> dict:
    os.sync()
    log(name)
    r = run_measured(cmd, work, out_root / "logs", name.replace(" ", "-"), dict(os.environ))
    if r["exit_code"] != 0:
        raise CheckFailed(f"{name}: exited {r['exit_code']}\n{r['stderr'][-3000:]}")
    same_as_oracle(con, name, src, out, lo, hi)
    return {
        "contender": name,
        "seconds": r["seconds"],
        "cpu_seconds": r["utime"] + r["stime"],
        "dataset_mb": src["bytes"] / 1e6,
        "peak_rss_mib": r["maxrss_kib"] / 1024,
        "stdout": r["stdout"],
    }


def repeated(n: int, fn) -> dict:
    samples = [fn() for _ in range(n)]
    r = dict(samples[0])
    r["seconds"] = median([s["seconds"] for s in samples])
    r["mb_per_s"] = r["dataset_mb"] / r["seconds"]
    r["peak_rss_mib"] = max(s["peak_rss_mib"] for s in samples)
    r["seconds_samples"] = [round(s["seconds"], 3) for s in samples]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--files-per-partition", type=int, default=100)
    ap.add_argument("--rows-per-file", type=int, default=5000)
    ap.add_argument("--row-group-size", default="4MiB",
                    help="row groups of the dataset's sorted files")
    ap.add_argument("--target-file-size", default="32MiB")
    ap.add_argument("--fraction", type=float, default=0.01, help="share of the rows deleted")
    ap.add_argument("--repeat", type=int, default=3)
    add_build_options(ap, "compactor")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    binary, out_root, ident, con = prepare(args, "delete")
    failures: list[str] = []
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        src = build_dataset(binary, out_root / "src" / "lake", args)
        lo, hi, matched, total = key_range(con, src["inputs"], args.fraction)
        log(f"dataset: {src['files']} files, {src['bytes'] / 1e6:.1f} MB, {total} rows; "
            f"deleting event_id BETWEEN {lo} AND {hi}: {matched} rows")
        predicate = f"event_id BETWEEN {lo} AND {hi}"

        def compactor():
            work = out_root / "work" / "compactor"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(src["dir"], work)
            cmd = [str(binary), "delete", str(work), "--prefix", "events/", "--where",
                   predicate, "--json", "--quiet"]
            r = measured("compactor delete", cmd, work, out_root, src, con, work / "events",
                         lo, hi)
            s = json.loads(r.pop("stdout"))
            check(s["rows"]["changed"] == matched,
                  f"compactor: {s['rows']['changed']} rows deleted, {matched} match")
            r.update(row_groups_total=s["row_groups"]["total"],
                     row_groups_scanned=s["row_groups"]["scanned"],
                     row_groups_copied=s["row_groups"]["copied"],
                     row_groups_rewritten=s["row_groups"]["rewritten"],
                     files_replaced=s["files"]["replaced"],
                     files_untouched=s["files"]["scanned"] - s["files"]["with_match"])
            shutil.rmtree(work)
            return r

        rows.append(repeated(args.repeat, compactor))
        for name, script in (("polars read-filter-rewrite", POLARS),
                             ("duckdb read-filter-rewrite", DUCKDB)):
            def peer(name=name, script=script):
                work = out_root / "work" / name.split()[0]
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                out = work / "out"
                cmd = [sys.executable, "-c", script, str(src["dir"] / "events"), str(out),
                       str(lo), str(hi)]
                r = measured(name, cmd, work, out_root, src, con, out, lo, hi)
                r.pop("stdout")
                shutil.rmtree(work)
                return r

            rows.append(repeated(args.repeat, peer))
    except CheckFailed as e:
        failures.append(str(e))
    print(f"\n{identity_lines(ident)}\n")
    head = ["contender", "dataset MB", "seconds", "dataset MB/s", "CPU s", "peak RSS MiB",
            "row groups copied / rewritten"]
    body = [[r["contender"], f"{r['dataset_mb']:.1f}", f"{r['seconds']:.2f}",
             f"{r['mb_per_s']:.1f}", f"{r['cpu_seconds']:.1f}", f"{r['peak_rss_mib']:.0f}",
             (f"{r['row_groups_copied']} / {r['row_groups_rewritten']} (of "
              f"{r['row_groups_total']}; {r['files_replaced']} files replaced, "
              f"{r['files_untouched']} untouched)" if "row_groups_copied" in r
              else "all rewritten")] for r in rows]
    print(format_table(head, body) if rows else "(no results)")
    verdicts = []
    comp = [r for r in rows if r["contender"] == "compactor delete"]
    peers = [r for r in rows if r["contender"] != "compactor delete"]
    if comp and peers:
        fastest = max(peers, key=lambda r: r["mb_per_s"])
        verdicts.append(
            f"compactor delete: {comp[0]['mb_per_s']:.1f} dataset MB/s, "
            f"{comp[0]['mb_per_s'] / fastest['mb_per_s']:.1f}x the fastest peer "
            f"({fastest['contender']}, {fastest['mb_per_s']:.1f}); peak RSS "
            f"{comp[0]['peak_rss_mib']:.0f} MiB against {fastest['peak_rss_mib']:.0f}")
    return report(args, "delete", ident, rows, verdicts, failures, t0)


if __name__ == "__main__":
    sys.exit(main())
