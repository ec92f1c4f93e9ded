#!/usr/bin/env python3
"""Benchmark of the row-group engine, side by side with the tools users would pick instead:
the compactor next to polars (scan_parquet + sink_parquet, zstd), DuckDB COPY (zstd) and pyarrow
(dataset scan + ParquetWriter, zstd), on identical inputs, in one run:

  (a) one partition of many small files;
  (b) fragmented large files mixing healthy row groups (copied by the compactor as they are)
      with tiny ones;
  (c) scenario (a) on one core (taskset -c 0) and on all cores.

Every output is checked row for row against its inputs (DuckDB EXCEPT ALL both ways over every
column: the same multiset of rows). Prints input MB/s, output MB and peak RSS per contender and
the targets of issue 13 with their measured ratios; writes bench/out/row_groups.json.

Run from the repository root:  python3 bench/row_groups.py [--help]
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

from common import (CheckFailed, MIB, REPO, add_build_options, check, ensure_deps, exit_code,
                    format_table, fresh_copy, generate, identity, identity_lines, log, median,
                    parquet_files, parse_size, release_binaries, run_measured, sql_list,
                    total_bytes)

COLS = ["ts_event", "event_id", "user_id", "kind", "country", "amount", "session", "is_bot"]

# The peers, each a small child script: argv[1] is a file holding the JSON list of inputs,
# argv[2] the output file. All write zstd, the compactor's default codec.
PEERS = {
    "polars": textwrap.dedent(
        """
        import json, sys, polars as pl
        files = json.load(open(sys.argv[1]))
        pl.scan_parquet(files).sink_parquet(sys.argv[2], compression="zstd")
        """
    ),
    "duckdb": textwrap.dedent(
        """
        import json, sys, duckdb
        files = json.load(open(sys.argv[1]))
        listing = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
        duckdb.connect().execute(
            f"COPY (SELECT * FROM read_parquet({listing})) TO '{sys.argv[2]}' "
            "(FORMAT parquet, COMPRESSION zstd)")
        """
    ),
    "pyarrow": textwrap.dedent(
        """
        import json, sys, pyarrow.dataset as ds, pyarrow.parquet as pq
        files = json.load(open(sys.argv[1]))
        data = ds.dataset(files, format="parquet")
        with pq.ParquetWriter(sys.argv[2], data.schema, compression="zstd") as w:
            for batch in data.to_batches():
                w.write_batch(batch)
        """
    ),
}


def same_rows(con, name: str, inputs: list[Path], outputs: list[Path]) -> None:
    """The outputs hold exactly the inputs' rows: equal counts and no row of either side
    missing from the other, counting duplicates (EXCEPT ALL), over every column."""
    cols = ", ".join(COLS)
    a = f"SELECT {cols} FROM read_parquet({sql_list(inputs)})"
    b = f"SELECT {cols} FROM read_parquet({sql_list(outputs)})"
    n_in, n_out = (con.execute(f"SELECT count(*) FROM ({q})").fetchone()[0] for q in (a, b))
    check(n_in == n_out, f"{name}: {n_out} rows out, {n_in} in")
    missing = con.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b})").fetchone()[0]
    extra = con.execute(f"SELECT count(*) FROM ({b} EXCEPT ALL {a})").fetchone()[0]
    check(missing == 0 and extra == 0,
          f"{name}: {missing} input rows missing from the output, {extra} output rows not in "
          "the input")


def row_group_stats(con, files: list[Path]) -> tuple[int, str]:
    n, codecs = con.execute(
        f"SELECT count(DISTINCT (file_name, row_group_id)), string_agg(DISTINCT compression, '+') "
        f"FROM parquet_metadata({sql_list(files)})"
    ).fetchone()
    return n, codecs


def measure(name: str, cmd: list[str], work: Path, out_root: Path, env: dict, cores: str | None,
            outputs_of, src: dict, con, verify=None) -> dict:
    """Runs `cmd`, then checks its outputs hold the inputs' rows (and `verify(con, name,
    outputs)` when given)."""
    if cores is not None:
        cmd = ["taskset", "-c", cores, *cmd]
    r = run_measured(cmd, work, out_root / "logs", name, env)
    if r["exit_code"] != 0:
        raise CheckFailed(f"{name}: exited {r['exit_code']}\n{' '.join(cmd)}\n{r['stderr'][-3000:]}")
    outputs = outputs_of()
    check(bool(outputs), f"{name}: no output")
    same_rows(con, name, src["inputs"], outputs)
    if verify:
        verify(con, name, outputs)
    groups, codecs = row_group_stats(con, outputs)
    out_bytes = total_bytes(outputs)
    return {
        "contender": name,
        "seconds": r["seconds"],
        "cpu_seconds": r["utime"] + r["stime"],
        "input_mb": src["bytes"] / 1e6,
        "input_mb_per_s": src["bytes"] / 1e6 / r["seconds"],
        "files_in": src["files"],
        "files_out": len(outputs),
        "output_mb": out_bytes / 1e6,
        "row_groups_out": groups,
        "codecs_out": codecs,
        "peak_rss_mib": r["maxrss_kib"] / 1024,
        "stdout": r["stdout"],
    }


def run_compactor(binary: Path, src: dict, args, out_root: Path, name: str, cores: str | None,
                  con, extra: list[str], verify=None) -> dict:
    work = fresh_copy(src, out_root / "work" / name)
    # The copy's dirty pages are written back now, not while the compactor runs (the peers read
    # the settled originals).
    os.sync()
    cmd = [str(binary), "compact", str(work), "--prefix", "events/", "--json", "--quiet",
           "--memory-budget", args.memory_budget, *extra]
    log(f"{name}: {' '.join(cmd[1:])}" + (f" (taskset -c {cores})" if cores else ""))
    res = measure(name, cmd, work, out_root, dict(os.environ), cores,
                  lambda: parquet_files(work), src, con, verify)
    summary = json.loads(res.pop("stdout"))
    check(summary["rows"] > 0, f"{name}: the compactor compacted nothing: {summary}")
    leftovers = [f for f in parquet_files(work) if not f.name.startswith("compacted-")]
    check(not leftovers, f"{name}: {len(leftovers)} inputs left, e.g. {leftovers[:2]}")
    res["row_groups_copied"] = summary["row_groups_copied"]
    res["row_groups_encoded"] = summary["row_groups_encoded"]
    for key in ("sort_run_steps", "sort_merge_steps"):
        if summary.get(key):
            res[key] = summary[key]
    shutil.rmtree(work)
    return res


def run_peer(peer: str, src: dict, out_root: Path, name: str, cores: str | None, con,
             script: str | None = None, verify=None) -> dict:
    """Runs `script` (default: the peer's compaction in PEERS) on the inputs of `src`."""
    work = out_root / "work" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    listing = work / "inputs.json"
    listing.write_text(json.dumps([str(f) for f in src["inputs"]]))
    out = work / "out.parquet"
    log(f"{name}" + (f" (taskset -c {cores})" if cores else ""))
    res = measure(name, [sys.executable, "-c", script or PEERS[peer], str(listing), str(out)], work,
                  out_root, dict(os.environ), cores, lambda: [out], src, con, verify)
    res.pop("stdout")
    shutil.rmtree(work)
    return res


def repeated(n: int, fn, *a, **kw) -> dict:
    samples = [fn(*a, **kw) for _ in range(n)]
    r = dict(samples[0])
    r["seconds"] = median([s["seconds"] for s in samples])
    r["input_mb_per_s"] = r["input_mb"] / r["seconds"]
    r["peak_rss_mib"] = max(s["peak_rss_mib"] for s in samples)
    r["seconds_samples"] = [round(s["seconds"], 3) for s in samples]
    return r


def fragmented_inputs(binary: Path, out_root: Path, args) -> dict:
    """Scenario (b): generated sample rows rewritten by pyarrow (zstd, page index) into large
    files of healthy row groups among runs of tiny ones, as appenders that flush often leave."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    raw = generate(binary, out_root / "src" / "raw", args.frag_source_files, 10_000, args.seed + 7)
    table = ds.dataset([str(f) for f in raw["inputs"]], format="parquet").to_table()
    dest = out_root / "src" / "fragmented"
    part = dest / raw["partition"]
    part.mkdir(parents=True)
    pattern = [args.healthy_rows] + [args.tiny_rows] * args.tiny_groups
    pattern = pattern * 2 + [args.healthy_rows]
    per_file = sum(pattern)
    at, index = 0, 0
    while at + per_file <= table.num_rows:
        with pq.ParquetWriter(part / f"appender-{index}.parquet", table.schema,
                              compression="zstd", write_page_index=True) as w:
            for rows in pattern:
                w.write_table(table.slice(at, rows), row_group_size=rows)
                at += rows
        index += 1
    shutil.rmtree(raw["dir"])
    inputs = parquet_files(dest)
    check(len(inputs) >= 2, f"only {len(inputs)} fragmented files: raise --frag-source-files")
    meta = pq.ParquetFile(inputs[0]).metadata
    sizes = sorted(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    log(f"fragmented: {len(inputs)} files of {meta.num_row_groups} row groups "
        f"({inputs[0].stat().st_size / MIB:.0f} MiB each; row groups {sizes[0] / 1e3:.0f} KB "
        f"to {sizes[-1] / MIB:.1f} MiB uncompressed)")
    return {"dir": dest, "files": len(inputs), "bytes": total_bytes(inputs),
            "partition": raw["partition"], "inputs": inputs}


def scenario(label: str, src: dict, binary: Path, args, out_root: Path, cores: str | None, con,
             compactor_args: list[str]) -> list[dict]:
    rows = [repeated(args.repeat, run_compactor, binary, src, args, out_root,
                     f"{label}-compactor", cores, con, compactor_args)]
    for peer in args.peers:
        rows.append(repeated(args.repeat, run_peer, peer, src, out_root, f"{label}-{peer}",
                             cores, con))
    return rows


def table(rows: list[dict]) -> str:
    head = ["contender", "files in -> out", "input MB", "output MB", "row groups out",
            "seconds", "input MB/s", "CPU s", "peak RSS MiB"]
    body = [[r["contender"], f"{r['files_in']} -> {r['files_out']}", f"{r['input_mb']:.1f}",
             f"{r['output_mb']:.1f}",
             f"{r['row_groups_out']}" + (f" ({r['row_groups_copied']} copied)"
                                         if "row_groups_copied" in r else ""),
             f"{r['seconds']:.2f}", f"{r['input_mb_per_s']:.1f}", f"{r['cpu_seconds']:.1f}",
             f"{r['peak_rss_mib']:.0f}"] for r in rows]
    return format_table(head, body)


def prepare(args, name: str):
    """The peers' venv (with polars), the release binary, a fresh `bench/out/<name>/` with
    `src`, `work` and `logs`, what is measured (identity) and a DuckDB connection for checks."""
    ensure_deps(("polars",))
    import duckdb
    import polars

    binary = release_binaries(args, ["compactor"])["compactor"]
    out_root = Path(args.out_dir).resolve() / name
    shutil.rmtree(out_root, ignore_errors=True)
    for sub in ("src", "work", "logs"):
        (out_root / sub).mkdir(parents=True)
    ident = identity(binary)
    ident["polars_version"] = polars.__version__
    return binary, out_root, ident, duckdb.connect()


def report(args, name: str, ident: dict, results, verdicts: list[str], failures: list[str],
           t0: float) -> int:
    """Prints the verdicts, writes `bench/out/<name>.json`, removes the inputs and scratch
    copies, and returns the exit code."""
    print("\n" + "\n".join(verdicts))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    out_dir = Path(args.out_dir).resolve()
    (out_dir / f"{name}.json").write_text(json.dumps(
        {"identity": ident, "results": results, "verdicts": verdicts, "failures": failures},
        indent=2))
    shutil.rmtree(out_dir / name / "src", ignore_errors=True)
    shutil.rmtree(out_dir / name / "work", ignore_errors=True)
    return exit_code(failures)


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Row-group engine benchmark: the compactor next to polars, DuckDB and "
        "pyarrow on small files, fragmented files, and one vs all cores. See bench/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--files", type=int, default=2000, help="(a) small files in the partition")
    ap.add_argument("--rows-per-file", type=int, default=2000, help="(a) rows per small file")
    ap.add_argument("--frag-source-files", type=int, default=600,
                    help="(b) generated files of 10,000 rows each, rewritten as fragmented files")
    ap.add_argument("--healthy-rows", type=int, default=500_000,
                    help="(b) rows per healthy row group (3 per file)")
    ap.add_argument("--tiny-rows", type=int, default=1000, help="(b) rows per tiny row group")
    ap.add_argument("--tiny-groups", type=int, default=150,
                    help="(b) tiny row groups in each of the 2 runs between healthy ones")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per contender; the table shows the median seconds and the "
                    "largest peak RSS")
    ap.add_argument("--memory-budget", default="1GiB", help="compactor --memory-budget")
    ap.add_argument("--rss-overhead", default="0",
                    help="stated bound, checked: compactor peak RSS <= workers x (memory budget "
                    "+ this), workers = cores at most 4")
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--scenarios", default="abc", help="which of a, b, c to run")
    add_build_options(ap, "compactor")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()

    binary, out_root, ident, con = prepare(args, "row_groups")
    cores = len(os.sched_getaffinity(0))
    workers = min(cores, 4)
    bound_mib = workers * (parse_size(args.memory_budget) + parse_size(args.rss_overhead)) / MIB
    failures: list[str] = []
    results: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    try:
        small = None
        if "a" in args.scenarios or "c" in args.scenarios:
            small = generate(binary, out_root / "src" / "small", args.files, args.rows_per_file,
                             args.seed)
        if "a" in args.scenarios:
            results["a"] = scenario("a", small, binary, args, out_root, None, con, [])
        if "b" in args.scenarios:
            frag = fragmented_inputs(binary, out_root, args)
            results["b"] = scenario("b", frag, binary, args, out_root, None, con, [])
        if "c" in args.scenarios:
            results["c1"] = scenario("c-1core", small, binary, args, out_root, "0", con, [])
            if "a" not in results:
                results["a"] = scenario("a", small, binary, args, out_root, None, con, [])
    except CheckFailed as e:
        failures.append(str(e))

    print(f"\n{identity_lines(ident)}; polars {ident['polars_version']}")
    titles = {"a": f"(a) many small files, all {cores} cores",
              "b": "(b) fragmented large files, all cores",
              "c1": "(c) the files of (a) on one core (taskset -c 0)"}
    for key in ("a", "b", "c1"):
        if key in results:
            print(f"\n{titles[key]}\n{table(results[key])}")

    def best_peer(rows):
        peers = [r for r in rows if not r["contender"].endswith("compactor")]
        return max(peers, key=lambda r: r["input_mb_per_s"]) if peers else None

    verdicts = []
    for key, rows in results.items():
        comp = rows[0]
        if comp["peak_rss_mib"] > bound_mib:
            failures.append(f"{comp['contender']}: peak RSS {comp['peak_rss_mib']:.0f} MiB over "
                            f"the stated bound {bound_mib:.0f} MiB")
    if "a" in results and best_peer(results["a"]):
        comp, peer = results["a"][0], best_peer(results["a"])
        smallest = min(r["output_mb"] for r in results["a"][1:])
        ratio = comp["input_mb_per_s"] / peer["input_mb_per_s"]
        verdicts.append(
            f"(a) {ratio:.2f}x the fastest peer ({peer['contender']}, "
            f"{peer['input_mb_per_s']:.1f} MB/s); target 1.5x: "
            f"{'reached' if ratio >= 1.5 else 'NOT reached'}. Output {comp['output_mb']:.1f} MB, "
            f"smallest peer's {smallest:.1f} MB: "
            f"{'no larger' if comp['output_mb'] <= smallest else 'LARGER'}")
    if "b" in results and best_peer(results["b"]):
        comp, peer = results["b"][0], best_peer(results["b"])
        ratio = comp["input_mb_per_s"] / peer["input_mb_per_s"]
        verdicts.append(
            f"(b) {ratio:.2f}x the fastest peer ({peer['contender']}, "
            f"{peer['input_mb_per_s']:.1f} MB/s); target 5x: "
            f"{'reached' if ratio >= 5 else 'NOT reached'}; {comp['row_groups_copied']} row "
            f"groups copied, {comp['row_groups_encoded']} encoded")
    if "a" in results and "c1" in results:
        one, many = results["c1"][0], results["a"][0]
        verdicts.append(
            f"(c) compactor {one['input_mb_per_s']:.1f} MB/s on 1 core, "
            f"{many['input_mb_per_s']:.1f} MB/s on {cores}: {many['input_mb_per_s'] / one['input_mb_per_s']:.2f}x")
    verdicts.append(f"peak RSS bound: {workers} worker(s) x (budget {args.memory_budget} + "
                    f"{args.rss_overhead}) = {bound_mib:.0f} MiB")
    return report(args, "row_groups", ident, results, verdicts, failures, t0)


if __name__ == "__main__":
    sys.exit(main())
