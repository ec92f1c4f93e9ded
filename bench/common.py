"""What every benchmark script here needs: the venv re-exec, the release binaries, the measured
child process, sizes, medians and a plain-text table. Imported by bench/*.py (the scripts'
folder is first on sys.path when they run)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-bench"
REEXEC_FLAG = "COMPACTOR_BENCH_REEXEC"
MIB = 1 << 20
# Source folders of the binaries the benchmarks measure.
SOURCE_CRATES = ("shared", "cli", "functions")


def ensure_deps(extra: tuple[str, ...] = ()) -> None:
    """Make duckdb, pyarrow and the `extra` modules (e.g. polars) importable: re-exec the running
    script under .venv-bench (created, and the modules installed, if needed)."""
    modules = ("duckdb", "pyarrow", *extra)
    try:
        for m in modules:
            __import__(m)
        return
    except ImportError:
        pass
    if os.environ.get(REEXEC_FLAG):
        sys.exit(f"error: {', '.join(modules)} still not importable under {sys.executable}")
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"[bench] creating venv {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    try:
        subprocess.run(
            [str(py), "-c", "import " + ", ".join(modules)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError:
        print(f"[bench] installing {' '.join(modules)} into the venv", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *modules], check=True)
    env = dict(os.environ, **{REEXEC_FLAG: "1"})
    script = str(Path(sys.argv[0]).resolve())
    os.execve(str(py), [str(py), script, *sys.argv[1:]], env)


def target_dir() -> Path:
    """Cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config)."""
    try:
        meta = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout
        return Path(json.loads(meta)["target_directory"])
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError) as e:
        log(f"warning: `cargo metadata` failed ({e}); assuming {REPO / 'target'}")
        return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def add_build_options(ap: argparse.ArgumentParser, what: str) -> None:
    """--binary (only for a single binary), --build / --no-build."""
    if what == "compactor":
        ap.add_argument("--binary", metavar="PATH",
                        help="compactor binary [default: release/compactor in cargo's target "
                        "directory (cargo metadata; honours CARGO_TARGET_DIR)]")
    ap.add_argument("--build", action=argparse.BooleanOptionalAction, default=None,
                    help=f"--build: always run `cargo build --release` of the {what}; "
                    "--no-build: never [default: build if a binary is missing or older than "
                    "the sources]")


def release_binaries(args, packages: list[str], arm64: bool = False) -> dict[str, Path]:
    """The release binary of each package (named like its package), built first when asked
    to, or when one is missing or older than the sources. With arm64: the `bootstrap` files
    `cargo lambda build --release --arm64` makes for SAM's arm64 functions."""
    if getattr(args, "binary", None):
        b = Path(args.binary).resolve()
        if not b.exists():
            sys.exit(f"error: --binary {b} does not exist")
        return {packages[0]: b}
    packages_args = [a for p in packages for a in ("-p", p)]
    if arm64:
        binaries = {p: target_dir() / "lambda" / p / "bootstrap" for p in packages}
        cmd = ["cargo", "lambda", "build", "--release", "--arm64", *packages_args]
    else:
        binaries = {p: target_dir() / "release" / p for p in packages}
        cmd = ["cargo", "build", "--release", *packages_args]
    missing = [b for b in binaries.values() if not b.exists()]
    stale = [s for b in binaries.values() for s in newer_sources(b)]
    build = bool(missing or stale) if args.build is None else args.build
    if build:
        if arm64 and not shutil.which("cargo-lambda"):
            sys.exit("error: the arm64 build needs cargo-lambda on PATH (pip install "
                     "cargo-lambda; scripts/test installs it into .venv-aws/bin) and the "
                     "aarch64 target (rustup target add aarch64-unknown-linux-gnu)")
        why = ("--build" if args.build else f"{missing[0]} missing" if missing
               else f"older than {stale[0].relative_to(REPO)}")
        log(f"{' '.join(cmd)} ({why})")
        subprocess.run(cmd, cwd=REPO, check=True)
    elif stale:
        log(f"warning: a binary is older than {len(stale)} source file(s), e.g. "
            f"{stale[0].relative_to(REPO)}; measuring it anyway (--no-build)")
    for b in binaries.values():
        if not b.exists():
            sys.exit(f"error: {b} does not exist (--no-build?)")
    return binaries


def newer_sources(binary: Path) -> list[Path]:
    """Source files of the product modified after the binary was built."""
    if not binary.exists():
        return []
    t = binary.stat().st_mtime
    candidates = [REPO / "Cargo.toml", REPO / "Cargo.lock"]
    for crate in SOURCE_CRATES:
        candidates += (REPO / crate).rglob("*.rs")
        candidates += (REPO / crate).rglob("Cargo.toml")
    return [p for p in candidates if p.exists() and p.stat().st_mtime > t]


def git_description() -> str:
    """`<short rev>` plus ', uncommitted changes' when the product's sources differ from it."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *SOURCE_CRATES], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return rev + (", uncommitted changes" if dirty else "")


def identity(binary: Path) -> dict:
    """What a run measured and where: the binary, its version and git revision (and whether
    sources changed after it was built), the readers' versions, this machine. Call after
    ensure_deps()."""
    import datetime
    import platform

    import duckdb
    import pyarrow

    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    return {
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "compactor_version": version.strip(),
        "git": git_description(),
        "binary": str(binary),
        "binary_older_than_sources": [str(p.relative_to(REPO)) for p in newer_sources(binary)],
        "duckdb_version": duckdb.__version__,
        "pyarrow_version": pyarrow.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def identity_lines(ident: dict, server: str = "") -> str:
    """The header a results table is printed under; `server` names the database, if any."""
    stale = ident["binary_older_than_sources"]
    warning = (f"WARNING: the binary is older than {len(stale)} source file(s); it may not be "
               f"git {ident['git']}.\n" if stale else "")
    return (f"{warning}{ident['compactor_version']} (git {ident['git']}); "
            + (f"{server}; " if server else "")
            + f"duckdb {ident['duckdb_version']}, pyarrow {ident['pyarrow_version']}; "
            f"{ident['cpus']} CPUs, {ident['platform']}")


def parse_size(s: str) -> int:
    """'1GiB', '512MiB', '64M', '1073741824' -> bytes (binary units, as the compactor does)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", s, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# The measured command is started by this small launcher, not by the benchmark process itself:
# on Linux a child's ru_maxrss includes the memory of the process it was forked from (the forked
# copy, or with vfork the parent's own high-water mark, is recorded at exec). The benchmark
# process holds DuckDB and grows to GBs while verifying, so it must not be that process. The
# launcher is a bare interpreter (-I -S) of a few MiB; its size is the measurement floor, which
# the scripts measure and print.
LAUNCHER = """
import json, os, sys, time
out, err, res, *cmd = sys.argv[1:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
secs = time.perf_counter() - t0
with open(res, "w") as f:
    json.dump({"seconds": secs, "maxrss_kib": ru.ru_maxrss,
               "utime": ru.ru_utime, "stime": ru.ru_stime,
               "exit_code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(cmd: list[str], cwd: Path, log_dir: Path, name: str, env: dict,
                 stdout_to: str | None = None) -> dict:
    """Run cmd as a fresh child of a small launcher; return wall seconds, peak RSS (KiB,
    ru_maxrss from wait4, which on Linux covers the child and the descendants it waited for),
    user/system CPU seconds, exit code, stdout and stderr. stdout_to (e.g. /dev/null) replaces
    the captured stdout."""
    out_path = Path(stdout_to) if stdout_to else log_dir / f"{name}.stdout"
    err_path = log_dir / f"{name}.stderr"
    res_path = log_dir / f"{name}.rusage.json"
    subprocess.run(
        [sys.executable, "-I", "-S", "-c", LAUNCHER, str(out_path), str(err_path),
         str(res_path), *cmd],
        cwd=cwd, check=True, stdin=subprocess.DEVNULL, env=env,
    )
    r = json.loads(res_path.read_text())
    r.update(
        cmd=cmd,
        stdout="" if stdout_to else out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )
    return r


def exit_code(failures: list[str]) -> int:
    """Prints the failures, if any, on stderr; the script's exit code."""
    if not failures:
        return 0
    print("\nFAILED:", file=sys.stderr)
    for f in failures:
        print("  " + f.replace("\n", "\n    "), file=sys.stderr)
    return 1


def format_table(head: list[str], body: list[list[str]]) -> str:
    """Columns padded to their widest cell; the first left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(b) for b in body])


# Inputs and outputs of the benchmarks.


def parquet_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.parquet")
        if "_compactor" not in p.relative_to(root).parts
    )


def total_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def sql_list(files: list[Path]) -> str:
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def generate(binary: Path, dest: Path, files: int, rows: int, seed: int) -> dict:
    if dest.exists():
        shutil.rmtree(dest)
    cmd = [
        str(binary), "generate", str(dest), "--prefix", "events/", "--partitions", "1",
        "--files-per-partition", str(files), "--rows-per-file", str(rows), "--seed", str(seed),
    ]
    log(f"generating {files} files x {rows} rows into {dest}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    inputs = parquet_files(dest)
    check(len(inputs) == files, f"generate wrote {len(inputs)} files, expected {files}")
    parts = sorted({f.parent for f in inputs})
    check(len(parts) == 1, f"generate wrote {len(parts)} partitions, expected 1")
    # Generated data is a pristine copy: no compactor state may live in it.
    shutil.rmtree(dest / "_compactor", ignore_errors=True)
    return {
        "dir": dest,
        "files": len(inputs),
        "bytes": total_bytes(inputs),
        "partition": str(parts[0].relative_to(dest)),
        "inputs": inputs,
    }


def fresh_copy(src: dict, work: Path) -> Path:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src["dir"], work)
    return work
