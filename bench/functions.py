#!/usr/bin/env python3
"""Benchmark: the Lambda functions' release binary sizes and their init time.

Builds (when needed) the release binaries of the planner, merger and committer, prints each
one's size, its size stripped, and, over --repeat cold starts, its init time and peak RSS at
the end of init. Init is what Lambda bills as the Init phase: from exec until the runtime asks
the Runtime API for its first event (`GET /2018-06-01/runtime/invocation/next`). The binary
runs with the environment the SAM template gives it (bucket, table, configuration with a file
dataset and a hot dataset, merger name, memory size) and dummy credentials; init makes no
network call. A loopback HTTP listener takes the place of the Runtime API only to timestamp
that first request, which it never answers: the process is killed then.

Run from the repository root:  python3 bench/functions.py [--help]
See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import (REPO, add_build_options, format_table, git_description, log, median,
                    release_binaries)

FUNCTIONS = ["planner", "merger", "committer"]
NEXT_PATH = "/2018-06-01/runtime/invocation/next"
CONFIG = """
staging_prefix = "_compactor/staging"
[[dataset]]
name = "events"
source_prefix = "raw/events/"
partition_template = "dt={date}/hour={hour}"
[[hot_dataset]]
name = "blocks"
table = "public.blocks"
chain_id = 1
range_column = "block_number"
range_size = 10000
finality_depth_blocks = 100
chunk_size = 1000000
"""


class FirstNext:
    """A loopback listener that records when the first `next` request arrives."""

    def __init__(self):
        self.arrived = threading.Event()
        self.at = None
        self.path = None
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if outer.at is None:
                    outer.at = time.perf_counter()
                    outer.path = self.path
                    outer.arrived.set()
                # Never answered: the runtime stays parked until the process is killed.
                outer.release.wait()

            def log_message(self, *args):
                pass

        self.release = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a live process: its peak RSS since exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def function_env(function: str, runtime_api: str, memory_mb: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "COMPACTOR_")) and k != "RUST_LOG"}
    env.update(
        AWS_LAMBDA_RUNTIME_API=runtime_api,
        AWS_LAMBDA_FUNCTION_NAME=function,
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(memory_mb),
        AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{function}",
        AWS_LAMBDA_LOG_STREAM_NAME="bench",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_EC2_METADATA_DISABLED="true",
        COMPACTOR_BUCKET="bench-bucket",
        COMPACTOR_TABLE="bench-table",
        COMPACTOR_CONFIG=CONFIG,
        COMPACTOR_MERGER_FUNCTION="merger",
        COMPACTOR_MERGER_TIMEOUT="900",
        COMPACTOR_PG_SECRET_ARN="arn:aws:secretsmanager:us-east-1:123456789012:secret:bench",
    )
    return env


def cold_start(binary: Path, function: str, memory_mb: int, timeout: float,
               log_dir: Path, name: str) -> dict:
    """One cold start: seconds from exec to the first `next` request, peak RSS then."""
    listener = FirstNext()
    err_path = log_dir / f"{name}.stderr"
    try:
        with open(err_path, "w") as err:
            started = time.perf_counter()
            proc = subprocess.Popen([str(binary)], env=function_env(function, listener.address,
                                                                    memory_mb),
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            arrived = listener.arrived.wait(timeout)
            rss = peak_rss_mib(proc.pid) if arrived else None
            exited = proc.poll()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if not arrived:
            why = (f"exited with {exited}" if exited is not None
                   else f"did not ask for an event within {timeout:.0f} s")
            sys.exit(f"error: {function} {why}; its output:\n{err_path.read_text()}")
        if listener.path != NEXT_PATH:
            sys.exit(f"error: {function}'s first request was {listener.path}, not {NEXT_PATH}")
        return {"init_seconds": listener.at - started, "peak_rss_mib": rss}
    finally:
        listener.close()


def can_run(binary: Path) -> bool:
    """True when this machine runs the binary's architecture (ELF e_machine)."""
    machine = int.from_bytes(binary.read_bytes()[18:20], "little")
    host = {"x86_64": 62, "aarch64": 183, "arm64": 183}.get(platform.machine())
    return machine == host


def stripped_size(binary: Path) -> int | None:
    """Size without symbols, as this machine's `strip` leaves it; None if it cannot read the
    binary (another architecture)."""
    if not shutil.which("strip"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / binary.name
        done = subprocess.run(["strip", "-o", str(out), str(binary)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return out.stat().st_size if done.returncode == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Release binary sizes and init times of the Lambda functions. See "
        "bench/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--repeat", type=int, default=11,
                    help="cold starts per function; the table shows the median and the range")
    ap.add_argument("--memory-mb", type=int, default=1024,
                    help="AWS_LAMBDA_FUNCTION_MEMORY_SIZE the functions see")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="seconds a function may take to ask for its first event")
    ap.add_argument("--arm64", action="store_true",
                    help="measure the arm64 `bootstrap` binaries `cargo lambda build --release "
                    "--arm64` makes, as SAM deploys them (init only where arm64 runs)")
    add_build_options(ap, "functions")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "out"),
                    help="logs/ (each start's stderr) and functions_results.json")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be positive")

    binaries = release_binaries(args, FUNCTIONS, arm64=args.arm64)
    out_root = Path(args.out_dir).resolve()
    log_dir = out_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    results = []
    for function, binary in binaries.items():
        result = {"function": function, "binary": str(binary),
                  "size_bytes": binary.stat().st_size, "stripped_bytes": stripped_size(binary),
                  "init_ms_median": None, "peak_rss_mib_at_ready": None, "samples": []}
        if can_run(binary):
            samples = [cold_start(binary, function, args.memory_mb, args.timeout, log_dir,
                                  f"{function}-start-{i}") for i in range(1, args.repeat + 1)]
            init_ms = [s["init_seconds"] * 1000 for s in samples]
            rss = [s["peak_rss_mib"] for s in samples if s["peak_rss_mib"] is not None]
            result.update(init_ms_median=median(init_ms), init_ms_min=min(init_ms),
                          init_ms_max=max(init_ms),
                          peak_rss_mib_at_ready=max(rss) if rss else None, samples=samples)
            log(f"{function}: init {median(init_ms):.1f} ms (median of {args.repeat})")
        else:
            log(f"{function}: {binary} is not for this machine ({platform.machine()}); "
                "size only")
        results.append(result)

    head = ["function", "release MB", "stripped MB", "init ms (median)", "init ms (min-max)",
            "peak RSS at ready MiB"]
    body = [[
        r["function"],
        f"{r['size_bytes'] / 1e6:.1f}",
        "n/a" if r["stripped_bytes"] is None else f"{r['stripped_bytes'] / 1e6:.1f}",
        "n/a" if r["init_ms_median"] is None else f"{r['init_ms_median']:.1f}",
        "n/a" if r["init_ms_median"] is None else f"{r['init_ms_min']:.1f}-{r['init_ms_max']:.1f}",
        "n/a" if r["peak_rss_mib_at_ready"] is None else f"{r['peak_rss_mib_at_ready']:.1f}",
    ] for r in results]
    git = git_description()
    arch = "arm64 (cargo lambda build --arm64)" if args.arm64 else platform.machine()
    print(f"\nrelease binaries of git {git} ({arch}; host {platform.platform()}; "
          f"{os.cpu_count()} CPUs); {args.repeat} cold starts each, "
          f"AWS_LAMBDA_FUNCTION_MEMORY_SIZE={args.memory_mb}\n")
    print(format_table(head, body))
    print("\ninit = exec until the first GET of the Runtime API's invocation/next; MB = 1e6 "
          "bytes; peak RSS = VmHWM when that request arrives.")
    if args.arm64:
        print("cargo lambda build strips the bootstrap it makes: its release size is the "
              "deployed size; n/a = not measurable on this machine.")
    doc = {"git": git, "platform": platform.platform(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "params": vars(args), "results": results,
           "config": CONFIG}
    (out_root / "functions_results.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"results: {out_root / 'functions_results.json'}; logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
