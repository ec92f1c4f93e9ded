#!/usr/bin/env python3
"""Benchmark of sort mode next to the tools users would pick instead, on the same inputs in one
run: the compactor (`--mode sort --sort-key ts_event --seq-column seq`) at 128 MiB, 256 MiB and
1 GiB budgets, polars (`scan_parquet(...).sort("ts_event")` + `sink_parquet`, zstd) and DuckDB
(`COPY (SELECT * FROM read_parquet([...]) ORDER BY ts_event) TO ... (FORMAT parquet, COMPRESSION
zstd)`, with and without a 256 MB `memory_limit`).

Every output is checked: the same multiset of rows as the inputs (EXCEPT ALL both ways over
every column), ts_event never decreasing in file order, and for the compactor `seq` = 0..N-1 in
that order. Each compactor run must stay under its budget (the stated bound). Prints the table
and the ratios issue 14 asks for; writes bench/out/sort.json.

Run from the repository root:  python3 bench/sort.py [--help]   (see bench/README.md)
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from common import (CheckFailed, MIB, REPO, add_build_options, check, generate, identity_lines,
                    parse_size, sql_list)
from row_groups import prepare, repeated, report, run_compactor, run_peer, table

POLARS_SORT = textwrap.dedent(
    """
    import json, sys, polars as pl
    files = json.load(open(sys.argv[1]))
    pl.scan_parquet(files).sort("ts_event", maintain_order=True).sink_parquet(
        sys.argv[2], compression="zstd")
    """
)


def duckdb_sort(limit: str | None) -> str:
    setting = f"con.execute(\"SET memory_limit = '{limit}'\")\n" if limit else ""
    return textwrap.dedent(
        """
        import json, sys, duckdb
        files = json.load(open(sys.argv[1]))
        listing = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
        con = duckdb.connect()
        """
    ) + setting + textwrap.dedent(
        """
        con.execute(f"COPY (SELECT * FROM read_parquet({listing}) ORDER BY ts_event) TO "
                    f"'{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd)")
        """
    )


def check_sorted(con, name: str, outputs: list[Path], with_seq: bool) -> None:
    files = sql_list(sorted(outputs))
    bad = con.execute(
        f"SELECT count(*) FROM (SELECT ts_event, lag(ts_event) OVER (ORDER BY filename, "
        f"file_row_number) p FROM read_parquet({files}, filename = true, file_row_number = true)) "
        "WHERE ts_event < p").fetchone()[0]
    check(bad == 0, f"{name}: {bad} rows out of ts_event order")
    if with_seq:
        n, lo, hi, distinct, out_of_order = con.execute(
            f"SELECT count(*), min(seq), max(seq), count(DISTINCT seq), "
            f"count(*) FILTER (WHERE seq <> rn) FROM (SELECT seq, row_number() OVER (ORDER BY "
            f"filename, file_row_number) - 1 AS rn FROM read_parquet({files}, filename = true, "
            f"file_row_number = true))").fetchone()
        check((lo, hi, distinct, out_of_order) == (0, n - 1, n, 0),
              f"{name}: seq is not 0..{n - 1} in file order (min {lo}, max {hi}, "
              f"{distinct} distinct, {out_of_order} out of place)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rows-per-file", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budgets", nargs="+", default=["128MiB", "256MiB", "1GiB"],
                    help="compactor --memory-budget values; each is also its run's RSS bound")
    ap.add_argument("--compare-budget", default="256MiB",
                    help="the budget the targets are judged at")
    ap.add_argument("--step", default="40MiB",
                    help="max_task_bytes of the sort in passes (at --compare-budget): the "
                         "partition is sorted in steps of at most this many input bytes, as on "
                         "Lambda when it needs longer than one invocation")
    add_build_options(ap, "compactor")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    binary, out_root, ident, con = prepare(args, "sort")
    failures: list[str] = []
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        src = generate(binary, out_root / "src" / "small", args.files, args.rows_per_file,
                       args.seed)
        sort_args = ["--mode", "sort", "--sort-key", "ts_event", "--seq-column", "seq"]
        for budget in args.budgets:
            run_args = argparse.Namespace(memory_budget=budget)
            name = f"compactor sort {budget}"

            def one(name=name, run_args=run_args):
                r = run_compactor(binary, src, run_args, out_root, name.replace(" ", "-"), None,
                                  con, sort_args + ["--workers", "1"],
                                  lambda c, n, o: check_sorted(c, n, o, with_seq=True))
                r["contender"] = name
                return r

            r = repeated(args.repeat, one)
            r["budget_mib"] = parse_size(budget) / MIB
            rows.append(r)
        passes_name = f"compactor sort in passes {args.compare_budget}, steps of {args.step}"

        def in_passes():
            run_args = argparse.Namespace(memory_budget=args.compare_budget)
            r = run_compactor(binary, src, run_args, out_root, "compactor-sort-in-passes", None,
                              con, sort_args + ["--workers", "1", "--max-task-bytes", args.step,
                                                    "--target-file-size", args.step,
                                                    "--row-group-size", "8MiB"],
                              lambda c, n, o: check_sorted(c, n, o, with_seq=True))
            check(r.get("sort_run_steps", 0) >= 2,
                  f"{passes_name}: not sorted in passes ({r.get('sort_run_steps', 0)} run steps)")
            r["contender"] = passes_name
            return r

        r = repeated(args.repeat, in_passes)
        r["budget_mib"] = parse_size(args.compare_budget) / MIB
        rows.append(r)
        for name, script in (("polars sort", POLARS_SORT), ("duckdb ORDER BY", duckdb_sort(None)),
                             ("duckdb ORDER BY, memory_limit 256MB", duckdb_sort("256MB"))):
            def one(name=name, script=script):
                work = name.replace(" ", "-").replace(",", "")
                r = run_peer("duckdb", src, out_root, work, None, con, script,
                             lambda c, n, o: check_sorted(c, n, o, with_seq=False))
                r["contender"] = name
                return r

            rows.append(repeated(args.repeat, one))
    except CheckFailed as e:
        failures.append(str(e))
    print(f"\n{identity_lines(ident)}\n")
    print(table(rows))
    verdicts = []
    for r in rows:
        if "budget_mib" in r and r["peak_rss_mib"] > r["budget_mib"]:
            failures.append(f"{r['contender']}: peak RSS {r['peak_rss_mib']:.0f} MiB over its "
                            f"budget {r['budget_mib']:.0f} MiB")
    at = [r for r in rows if r["contender"] == f"compactor sort {args.compare_budget}"]
    peers = [r for r in rows if not r["contender"].startswith("compactor")]
    if at and peers:
        comp = at[0]
        fastest = max(peers, key=lambda r: r["input_mb_per_s"])
        ratio = comp["input_mb_per_s"] / fastest["input_mb_per_s"]
        rss = comp["peak_rss_mib"] / fastest["peak_rss_mib"]
        verdicts.append(
            f"compactor at {args.compare_budget}: {ratio:.2f}x the fastest peer's input MB/s "
            f"({fastest['contender']}, {fastest['input_mb_per_s']:.1f}); target 1.5x: "
            f"{'reached' if ratio >= 1.5 else 'NOT reached'}. Peak RSS {rss:.2f}x its; target "
            f"at most 1/3: {'reached' if rss <= 1 / 3 else 'NOT reached'}")
    passes = [r for r in rows if r["contender"].startswith("compactor sort in passes")]
    if at and passes:
        p, one = passes[0], at[0]
        ratio = p["input_mb_per_s"] / one["input_mb_per_s"]
        verdicts.append(
            f"sort in passes ({p.get('sort_run_steps', 0)} run steps, "
            f"{p.get('sort_merge_steps', 0)} merge steps): {p['input_mb_per_s']:.1f} MB/s, "
            f"{ratio:.2f}x the one-step sort at the same budget; target within 30%: "
            f"{'reached' if ratio >= 0.7 else 'NOT reached'}")
    return report(args, "sort", ident, rows, verdicts, failures, t0)


if __name__ == "__main__":
    sys.exit(main())
