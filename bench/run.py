#!/usr/bin/env python3
"""Benchmark: compact one partition of many small Parquet files with the compactor
(concat and sort mode) and with DuckDB's COPY ... TO ... (FORMAT parquet, COMPRESSION zstd),
on identical inputs, in the same run.

Prints, per contender: files in -> files out, input MB, output MB, wall seconds, input MB/s
and peak RSS (MiB); writes the same to bench/out/results.json. Every contender runs in its own
fresh child process, so its peak RSS (ru_maxrss from wait4) is its own. Every output is checked
(row count, content fingerprint, order for the sorted contenders); any failed check makes the
script exit non-zero.

Run from the repository root:  python3 bench/run.py [--help]
See bench/README.md.
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

from common import (CheckFailed, MIB, REPO, add_build_options, check, ensure_deps, exit_code,
                    format_table, fresh_copy, generate, identity, identity_lines, log, median,
                    parquet_files, parse_size, release_binaries, run_measured, sql_list,
                    total_bytes)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


DATA_COLS = ["ts_event", "event_id", "user_id", "kind", "country", "amount", "session", "is_bot"]


def fingerprint(con, files: list[Path]) -> dict:
    """Order-independent summary of the data columns: equal inputs and outputs => same rows
    (up to an astronomically unlikely hash collision)."""
    cols = ", ".join(DATA_COLS)
    row = con.execute(
        f"""
        SELECT count(*),
               sum(hash({cols}))::VARCHAR,
               sum(event_id)::VARCHAR,
               count(amount),
               min(ts_event)::VARCHAR,
               max(ts_event)::VARCHAR
        FROM read_parquet({sql_list(files)}, union_by_name = true)
        """
    ).fetchone()
    return {
        "rows": row[0],
        "row_hash_sum": row[1],
        "event_id_sum": row[2],
        "amount_non_null": row[3],
        "min_ts": row[4],
        "max_ts": row[5],
    }


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


def run_compactor(binary: Path, src: dict, expect: dict, mode: str, args, out_root: Path,
                  name: str, con) -> dict:
    work = fresh_copy(src, out_root / "work" / name)
    cmd = [str(binary), "compact", str(work), "--prefix", "events/", "--json", "--quiet",
           "--memory-budget", args.memory_budget]
    if mode == "sort":
        cmd += ["--mode", "sort", "--sort-key", "ts_event", "--seq-column", "seq"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    log(f"{name}: {' '.join(cmd[1:])}")
    r = run_measured(cmd, work, out_root / "logs", name,
                     dict(os.environ, **dict(kv.split("=", 1) for kv in args.compactor_env)))
    if r["exit_code"] != 0:
        raise CheckFailed(
            f"{name}: compactor exited {r['exit_code']}\ncommand: {' '.join(cmd)}\n"
            f"stdout:\n{r['stdout']}\nstderr:\n{r['stderr']}"
        )
    try:
        summary = json.loads(r["stdout"])
    except json.JSONDecodeError as e:
        raise CheckFailed(f"{name}: summary is not JSON ({e}):\n{r['stdout']}") from e

    part_dir = work / src["partition"]
    outputs = parquet_files(work)
    leftovers = [f for f in outputs if not f.name.startswith("compacted-")]
    check(not leftovers, f"{name}: {len(leftovers)} input files left, e.g. {leftovers[:3]}")
    check(all(f.parent == part_dir for f in outputs),
          f"{name}: outputs outside the partition {part_dir}")
    check(len(outputs) >= 1, f"{name}: no output files")
    verify_outputs(con, name, outputs, expect, sorted_by_seq=(mode == "sort"))
    # The summary must agree with what is on disk.
    for key, want in (("files_before", src["files"]), ("files_after", len(outputs)),
                      ("bytes_before", src["bytes"]), ("bytes_after", total_bytes(outputs)),
                      ("rows", expect["rows"])):
        if key in summary:
            check(summary[key] == want, f"{name}: summary {key}={summary[key]}, on disk {want}")
    res = result_row(name, src, outputs, r)
    res["compactor_summary"] = summary
    shutil.rmtree(work)
    return res


DUCKDB_CHILD = textwrap.dedent(
    """
    import sys, duckdb
    files, out, order = sys.argv[1], sys.argv[2], sys.argv[3]
    con = duckdb.connect()
    q = "COPY (SELECT * FROM read_parquet(" + files + ")" + (" ORDER BY " + order if order else "") + ") TO '" + out + "' (FORMAT parquet, COMPRESSION zstd)"
    con.execute(q)
    print(q[:200])
    """
)


def run_duckdb(src: dict, expect: dict, order_by: str | None, out_root: Path, name: str,
               con) -> dict:
    work = fresh_copy(src, out_root / "work" / name)
    inputs = parquet_files(work)
    out_file = work / "duckdb-out" / "out.parquet"
    out_file.parent.mkdir(parents=True)
    # The file list goes through a file read by the child to keep argv small.
    list_file = out_root / "work" / f"{name}.files.txt"
    list_file.write_text(sql_list(inputs))
    child = (
        "import sys; sys.argv[1] = open(sys.argv[1]).read()\n" + DUCKDB_CHILD
    )
    cmd = [sys.executable, "-c", child, str(list_file), str(out_file), order_by or ""]
    log(f"{name}: COPY (SELECT * FROM read_parquet([{len(inputs)} files])"
        f"{' ORDER BY ' + order_by if order_by else ''}) TO ... (FORMAT parquet, COMPRESSION zstd)")
    r = run_measured(cmd, work, out_root / "logs", name, dict(os.environ))
    if r["exit_code"] != 0:
        raise CheckFailed(f"{name}: duckdb child exited {r['exit_code']}\n{r['stderr']}")
    outputs = [out_file]
    verify_outputs(con, name, outputs, expect, sorted_by_seq=False,
                   sorted_by_file_order=bool(order_by))
    res = result_row(name, src, outputs, r)
    shutil.rmtree(work)
    list_file.unlink()
    return res


def duckdb_baseline(out_root: Path) -> dict:
    r = run_measured([sys.executable, "-c", "import duckdb; duckdb.connect().execute('SELECT 1')"],
                     out_root, out_root / "logs", "python-duckdb-baseline", dict(os.environ))
    check(r["exit_code"] == 0, f"baseline python failed: {r['stderr']}")
    return {"seconds": r["seconds"], "peak_rss_mib": r["maxrss_kib"] / 1024}


def verify_outputs(con, name: str, outputs: list[Path], expect: dict, *, sorted_by_seq: bool,
                   sorted_by_file_order: bool = False) -> None:
    fp = fingerprint(con, outputs)
    check(fp["rows"] == expect["rows"],
          f"{name}: output has {fp['rows']} rows, input has {expect['rows']}")
    check(fp == expect, f"{name}: output content differs from input:\n  in:  {expect}\n  out: {fp}")
    files = sql_list(outputs)
    if sorted_by_seq:
        n = expect["rows"]
        mn, mx, distinct, nulls = con.execute(
            f"SELECT min(seq), max(seq), count(DISTINCT seq), count(*) - count(seq) "
            f"FROM read_parquet({files})"
        ).fetchone()
        check((mn, mx, distinct, nulls) == (0, n - 1, n, 0),
              f"{name}: seq is not 0..{n - 1}: min={mn} max={mx} distinct={distinct} nulls={nulls}")
        bad = con.execute(
            f"SELECT count(*) FROM (SELECT ts_event, lag(ts_event) OVER (ORDER BY seq) p "
            f"FROM read_parquet({files})) WHERE ts_event < p"
        ).fetchone()[0]
        check(bad == 0, f"{name}: {bad} rows have ts_event smaller than the previous seq's")
        # Each output file must itself be in seq order (the physical order is the sort order).
        bad = con.execute(
            f"SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY filename "
            f"ORDER BY file_row_number) p FROM read_parquet({files}, filename = true, "
            f"file_row_number = true)) WHERE seq <> p + 1"
        ).fetchone()[0]
        check(bad == 0, f"{name}: {bad} rows are out of seq order within their file")
    if sorted_by_file_order:
        bad = con.execute(
            f"SELECT count(*) FROM (SELECT ts_event, lag(ts_event) OVER (PARTITION BY filename "
            f"ORDER BY file_row_number) p FROM read_parquet({files}, filename = true, "
            f"file_row_number = true)) WHERE ts_event < p"
        ).fetchone()[0]
        check(bad == 0, f"{name}: {bad} rows are out of ts_event order in the file")


def repeated(n: int, fn, *a, **kw) -> dict:
    """Run a contender n times (fresh inputs, fresh process, verified each time); report the
    median wall time and the largest peak RSS, and keep every sample."""
    samples = [fn(*a, **kw) for _ in range(n)]
    med = median([x["seconds"] for x in samples])
    r = dict(samples[0])
    for k in ("files_out", "output_bytes"):
        vals = [x[k] for x in samples]
        r[k + "_samples"] = vals
        if len(set(vals)) > 1:
            # DuckDB's ORDER BY breaks ties non-deterministically; note it, do not fail.
            log(f"note: {r['contender']}: {k} differs between repetitions: {vals}")
    r["seconds"] = med
    r["input_mb_per_s"] = r["input_mb"] / med
    r["peak_rss_mib"] = max(x["peak_rss_mib"] for x in samples)
    r["seconds_samples"] = [x["seconds"] for x in samples]
    r["peak_rss_mib_samples"] = [x["peak_rss_mib"] for x in samples]
    if "compactor_summary" in r:
        r["compactor_summary_seconds_samples"] = [
            x["compactor_summary"].get("seconds") for x in samples
        ]
    log(f"{r['contender']}: seconds {['%.2f' % x for x in r['seconds_samples']]}, "
        f"peak RSS MiB {['%.0f' % x for x in r['peak_rss_mib_samples']]}")
    return r


def result_row(name: str, src: dict, outputs: list[Path], r: dict) -> dict:
    out_bytes = total_bytes(outputs)
    return {
        "contender": name,
        "files_in": src["files"],
        "files_out": len(outputs),
        "input_bytes": src["bytes"],
        "output_bytes": out_bytes,
        "input_mb": src["bytes"] / 1e6,
        "output_mb": out_bytes / 1e6,
        "seconds": r["seconds"],
        "input_mb_per_s": src["bytes"] / 1e6 / r["seconds"],
        "peak_rss_mib": r["maxrss_kib"] / 1024,
        "command": (r["cmd"] if not r["cmd"][0].startswith(sys.executable)
                    else [r["cmd"][0], "-c", "<duckdb COPY script>", *r["cmd"][3:]]),
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    head = ["contender", "files in -> out", "input MB", "output MB", "seconds", "input MB/s",
            "peak RSS MiB"]
    body = [
        [
            r["contender"],
            f"{r['files_in']} -> {r['files_out']}",
            f"{r['input_mb']:.1f}",
            f"{r['output_mb']:.1f}",
            f"{r['seconds']:.2f}",
            f"{r['input_mb_per_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
        ]
        for r in rows
    ]
    return format_table(head, body)


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark the compactor against DuckDB COPY on one partition of many "
        "small Parquet files. See bench/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--files", type=int, default=2000, help="small files in the main partition")
    ap.add_argument("--rows-per-file", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per contender; the table shows the median seconds and the "
                    "largest peak RSS")
    ap.add_argument("--memory-budget", default="1GiB",
                    help="compactor --memory-budget (per merge task; a partition is split into "
                    "tasks of about --target-file-size input bytes, which may run concurrently)")
    ap.add_argument("--rss-overhead", default="0",
                    help="stated bound, checked: compactor peak RSS <= workers x (memory budget "
                    "+ this)")
    ap.add_argument("--workers", type=int, default=None,
                    help="compactor --workers [default: the compactor's, cores at most 4]")
    ap.add_argument("--compactor-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the compactor runs (repeatable), e.g. "
                    "MALLOC_ARENA_MAX=1")
    ap.add_argument("--scale-files", action=argparse.BooleanOptionalAction, default=True,
                    help="also compact a partition with --scale-factor x the files "
                    "(compactor only) to show how peak RSS depends on the file count")
    ap.add_argument("--scale-factor", type=int, default=2)
    ap.add_argument("--duckdb", action=argparse.BooleanOptionalAction, default=True,
                    help="run the DuckDB contenders")
    add_build_options(ap, "compactor")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "out"),
                    help="scratch data, logs and results.json (wiped data subdirs each run)")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs afterwards")
    args = ap.parse_args()
    budget = parse_size(args.memory_budget)
    # Merges of one partition's tasks may run concurrently, each within the whole budget.
    workers = args.workers or min(len(os.sched_getaffinity(0)), 4)
    rss_bound_mib = workers * (budget + parse_size(args.rss_overhead)) / MIB
    bound_text = (f"{workers} worker(s) x (memory budget {args.memory_budget} + "
                  f"{args.rss_overhead}) = {rss_bound_mib:.0f} MiB")
    for kv in args.compactor_env:
        if "=" not in kv:
            ap.error(f"--compactor-env {kv!r} is not KEY=VALUE")

    ensure_deps()
    if args.files < 2000:
        log(f"warning: --files {args.files} is below the 2,000 files the benchmark is meant for")
    import duckdb

    binary = release_binaries(args, ["compactor"])["compactor"]
    out_root = Path(args.out_dir).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    for sub in ("src", "work", "logs"):
        shutil.rmtree(out_root / sub, ignore_errors=True)
    (out_root / "work").mkdir()
    (out_root / "logs").mkdir()
    ident = identity(binary)
    con = duckdb.connect()

    floor = run_measured(["true"], out_root, out_root / "logs", "rss-floor", dict(os.environ))
    check(floor["exit_code"] == 0, "launcher cannot run `true`")
    floor_mib = floor["maxrss_kib"] / 1024

    t_start = time.perf_counter()
    results: list[dict] = []
    scale_results: list[dict] = []
    failures: list[str] = []
    baseline = None
    try:
        main_src = generate(binary, out_root / "src" / f"files{args.files}",
                            args.files, args.rows_per_file, args.seed)
        log(f"input: {main_src['files']} files, {main_src['bytes'] / 1e6:.1f} MB, "
            f"partition {main_src['partition']}; fingerprinting")
        expect = fingerprint(con, main_src["inputs"])
        check(expect["rows"] == args.files * args.rows_per_file,
              f"generated {expect['rows']} rows, expected {args.files * args.rows_per_file}")

        results.append(repeated(args.repeat, run_compactor, binary, main_src, expect, "concat", args, out_root,
                                     "compactor concat", con))
        results.append(repeated(args.repeat, run_compactor, binary, main_src, expect, "sort", args, out_root,
                                     "compactor sort", con))
        if args.duckdb:
            baseline = duckdb_baseline(out_root)
            results.append(repeated(args.repeat, run_duckdb, main_src, expect, None, out_root, "duckdb COPY", con))
            results.append(repeated(args.repeat, run_duckdb, main_src, expect, "ts_event", out_root,
                                      "duckdb COPY ORDER BY ts_event", con))

        if args.scale_files:
            n2 = args.files * args.scale_factor
            big_src = generate(binary, out_root / "src" / f"files{n2}", n2, args.rows_per_file,
                               args.seed + 1)
            expect2 = fingerprint(con, big_src["inputs"])
            check(expect2["rows"] == n2 * args.rows_per_file,
                  f"generated {expect2['rows']} rows, expected {n2 * args.rows_per_file}")
            for mode in ("concat", "sort"):
                r = repeated(args.repeat, run_compactor, binary, big_src, expect2, mode, args, out_root,
                                  f"compactor {mode} x{args.scale_factor}", con)
                scale_results.append(r)
                results.append(r)
            shutil.rmtree(big_src["dir"])
    except CheckFailed as e:
        failures.append(str(e))

    # The stated bound.
    for r in results:
        if r["contender"].startswith("compactor") and r["peak_rss_mib"] > rss_bound_mib:
            failures.append(
                f"{r['contender']}: peak RSS {r['peak_rss_mib']:.0f} MiB exceeds the bound "
                f"{bound_text}"
            )

    print()
    print(identity_lines(ident))
    if results:
        r0 = results[0]
        print(f"input: 1 partition, {r0['files_in']} files x {args.rows_per_file} rows "
              f"({r0['files_in'] * args.rows_per_file:,} rows), {r0['input_mb']:.1f} MB snappy; "
              f"compactor --memory-budget {args.memory_budget}, {workers} worker(s)"
              + (f", env {' '.join(args.compactor_env)}" if args.compactor_env else ""))
        print()
        print(table(results))
        print()
        print(f"MB = 1e6 bytes; seconds = median wall time of {args.repeat} run(s) of the child "
              f"process (includes process start-up, planning and commit); MB/s = input MB / seconds;")
        print(f"peak RSS = largest ru_maxrss of the runs (measurement floor: `true` measures "
              f"{floor_mib:.1f} MiB). Outputs are zstd-compressed for every contender.")
        if baseline:
            print(f"DuckDB rows run as `python -c` using the duckdb module: their RSS includes the "
                  f"interpreter; a bare `import duckdb` + SELECT 1 peaks at "
                  f"{baseline['peak_rss_mib']:.0f} MiB ({baseline['seconds']:.2f} s).")
    if scale_results:
        print()
        print(f"Compactor peak RSS vs file count (stated bound: {bound_text}):")
        by = {r["contender"]: r for r in results}
        for mode in ("concat", "sort"):
            a = by.get(f"compactor {mode}")
            b = by.get(f"compactor {mode} x{args.scale_factor}")
            if a and b:
                print(f"  {mode:6}: {a['files_in']:>6} files -> {a['peak_rss_mib']:6.0f} MiB   "
                      f"{b['files_in']:>6} files -> {b['peak_rss_mib']:6.0f} MiB   "
                      f"(ratio {b['peak_rss_mib'] / a['peak_rss_mib']:.2f})")
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")

    doc = {
        **ident,
        "params": {
            "files": args.files,
            "rows_per_file": args.rows_per_file,
            "seed": args.seed,
            "repeat": args.repeat,
            "memory_budget": args.memory_budget,
            "workers_effective": workers,
            "compactor_env": args.compactor_env,
            "rss_bound_mib": rss_bound_mib,
            "workers": args.workers,
            "scale_files": args.scale_files,
            "scale_factor": args.scale_factor,
        },
        "rss_floor_mib": floor_mib,
        "python_duckdb_baseline": baseline,
        "results": results,
        "failures": failures,
    }
    (out_root / "results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"results: {out_root / 'results.json'}; logs: {out_root / 'logs'}")
    if not args.keep:
        shutil.rmtree(out_root / "src", ignore_errors=True)
        shutil.rmtree(out_root / "work", ignore_errors=True)
    return exit_code(failures)


if __name__ == "__main__":
    sys.exit(main())
