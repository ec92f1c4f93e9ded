#!/usr/bin/env python3
"""Benchmark of `compactor report` (the lake health report): a lake of many small files in many
hourly partitions (10,000 files in 240 partitions by default), then the same with twice the
files per partition, each reported with footers read for every file. Prints wall time, files
per second and peak RSS, and checks the report against the lake: every file, row and
partition counted, no gap, no corrupt file. Peak RSS should not grow with the file count.

Run from the repository root:  python3 bench/report.py [--help]   (see bench/README.md)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (REPO, add_build_options, check, exit_code, format_table, git_description,
                    log, median, parquet_files, release_binaries, run_measured)


def lake(binary: Path, dest: Path, partitions: int, files: int, rows: int) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    log(f"generating {partitions} partitions x {files} files x {rows} rows into {dest}")
    subprocess.run([str(binary), "generate", str(dest), "--prefix", "events/", "--partitions",
                    str(partitions), "--files-per-partition", str(files), "--rows-per-file",
                    str(rows)], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--partitions", type=int, default=240)
    ap.add_argument("--files-per-partition", type=int, default=42)
    ap.add_argument("--rows-per-file", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    add_build_options(ap, "compactor")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    binary = release_binaries(args, ["compactor"])["compactor"]
    out_root = Path(args.out_dir).resolve() / "report"
    shutil.rmtree(out_root, ignore_errors=True)
    (out_root / "logs").mkdir(parents=True)
    failures: list[str] = []
    rows = []
    t0 = time.perf_counter()
    for scale in (1, 2):
        files_per = args.files_per_partition * scale
        src = out_root / f"lake-x{scale}"
        lake(binary, src, args.partitions, files_per, args.rows_per_file)
        files = len(parquet_files(src))
        window = f"{args.partitions // 24 + 2}d"
        # The sample ends two hours ago: with a grace of 2h the hour after it is not a gap yet.
        cmd = [str(binary), "report", str(src), "--prefix", "events/", "--since", window,
               "--grace", "2h", "--json", "--html", str(out_root / f"report-x{scale}.html")]
        runs = []
        for i in range(args.repeat):
            log(f"report of {files} files ({i + 1}/{args.repeat}): {' '.join(cmd[1:])}")
            r = run_measured(cmd, out_root, out_root / "logs", f"report-x{scale}-{i}", {})
            if r["exit_code"] != 0:
                failures.append(f"report exited {r['exit_code']}: {r['stderr'][-2000:]}")
                break
            runs.append(r)
        if not runs:
            continue
        report = json.loads(runs[-1]["stdout"])
        t = report["totals"]
        try:
            check(t["files"] == files, f"the report counts {t['files']} files, the lake has {files}")
            check(t["rows"] == files * args.rows_per_file,
                  f"the report counts {t['rows']} rows, the lake has {files * args.rows_per_file}")
            check(t["partitions"] == args.partitions,
                  f"{t['partitions']} partitions reported, {args.partitions} written")
            check(t["gaps"] == 0 and t["corrupt_files"] == 0, f"findings in a clean lake: {t}")
        except Exception as e:  # CheckFailed
            failures.append(str(e))
        secs = median([r["seconds"] for r in runs])
        rows.append({
            "files": files, "partitions": t["partitions"], "seconds": secs,
            "files_per_s": files / secs, "cpu_s": median([r["utime"] + r["stime"] for r in runs]),
            "peak_rss_mib": max(r["maxrss_kib"] for r in runs) / 1024,
        })
    print(f"\ncompactor {git_description()}\n")
    print(format_table(
        ["files", "partitions", "seconds", "files/s", "CPU s", "peak RSS MiB"],
        [[str(r["files"]), str(r["partitions"]), f"{r['seconds']:.2f}",
          f"{r['files_per_s']:.0f}", f"{r['cpu_s']:.2f}", f"{r['peak_rss_mib']:.0f}"]
         for r in rows]))
    if len(rows) == 2:
        print(f"\npeak RSS with twice the files: {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}x")
    (out_root / "report.json").write_text(json.dumps(rows, indent=2))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return exit_code(failures)


if __name__ == "__main__":
    sys.exit(main())
