"""The three Lambda binaries under `cargo lambda watch` (the Lambda runtime emulator), against
moto's S3 + DynamoDB, driven with the sample events of events/ through `cargo lambda invoke`.

The planner's asynchronous Invoke of the merger goes to the emulator's Invoke API
(`AWS_ENDPOINT_URL_LAMBDA`), so one planner invocation runs a real merger process. Run by
scripts/test, which starts moto (`COMPACTOR_TEST_AWS_ENDPOINT`) and puts cargo-lambda on PATH.

The tests run in file order on one bucket: the dry run first (nothing changes), then the full
cycle (plan -> merge -> commit), then the other events against the compacted partition.
"""

import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
BUCKET = "compactor-example"
DATASET = "clicks"
SOURCE_PREFIX = "raw/clicks"
PARTITION = "dt=2024-05-01/hour=13"
STAGING = "_compactor/staging"
PARTITION_DIR = f"{SOURCE_PREFIX}/{PARTITION}/"
TASK_DIR = f"{STAGING}/{DATASET}/{PARTITION}/g000001-t0000/"
FILES = 6
ROWS_PER_FILE = 300
# The destination of the repartition test: the landing files in another layout, small tasks so
# that the write phase fans out to several merger invocations.
REPARTITIONED = "clicks_hourly"
REPARTITIONED_PREFIX = "curated/clicks"
LANDING = "landing/clicks"
CONFIG = f"""
staging_prefix = "{STAGING}"
[[dataset]]
name = "{DATASET}"
source_prefix = "{SOURCE_PREFIX}"
partition_template = "dt={{date}}/hour={{hour}}"
grace = "1m"
[[dataset]]
name = "{REPARTITIONED}"
source_prefix = "{REPARTITIONED_PREFIX}"
partition_template = "hour={{hour}}/dt={{date}}"
target_file_size = "1MiB"
row_group_size = "1MiB"
small_file_threshold = "512KiB"
max_task_bytes = "1MiB"
"""
# The first invocation of a function compiles it (if the build is not up to date).
INVOKE_TIMEOUT = 900

# Cold-start wall times of the first invocation of each function, for the summary line.
COLD = {}


def _endpoint():
    url = os.environ.get("COMPACTOR_TEST_AWS_ENDPOINT")
    if not url:
        pytest.fail(
            "COMPACTOR_TEST_AWS_ENDPOINT is not set: these tests need moto's server. Run them "
            "through scripts/test, which starts it, or start one yourself: "
            ".venv-aws/bin/python tests/moto_server.py -H 127.0.0.1 -p PORT and export "
            "COMPACTOR_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT"
        )
    return url


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid):
    """Pids of every process below `pid` (the emulator starts each function in its own process
    group, so killing the emulator's group does not reach them)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(int(stat.parent.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            fields = _stat(child)
            if fields:
                found.append((child, fields[19]))  # pid and start time
            todo.append(child)
    return found


def _stat(pid):
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def aws():
    endpoint = _endpoint()
    kw = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3 = boto3.client("s3", **kw)
    dynamodb = boto3.client("dynamodb", **kw)
    try:
        s3.list_buckets()
    except Exception as e:  # noqa: BLE001 - any failure means the same: no moto
        pytest.fail(f"moto at {endpoint} (COMPACTOR_TEST_AWS_ENDPOINT) does not answer: {e}")
    return endpoint, s3, dynamodb


def _empty_bucket(s3):
    try:
        s3.head_bucket(Bucket=BUCKET)
    except s3.exceptions.ClientError:
        return
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=o["Key"])
    s3.delete_bucket(Bucket=BUCKET)


def _source_table(i):
    base = i * ROWS_PER_FILE
    ids = list(range(base, base + ROWS_PER_FILE))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "user": pa.array([f"user-{n % 37}" for n in ids], pa.string()),
            "ts": pa.array(
                [1714568400_000_000 + n * 1_000_000 for n in ids], pa.timestamp("us", tz="UTC")
            ),
        }
    )


@pytest.fixture(scope="module")
def world(aws):
    """Bucket `compactor-example` recreated with 6 small files in the sample partition, and a
    fresh state table with a unique name."""
    _, s3, dynamodb = aws
    _empty_bucket(s3)
    s3.create_bucket(Bucket=BUCKET)
    table = f"compactor-state-{uuid.uuid4().hex[:10]}"
    dynamodb.create_table(
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "dataset", "AttributeType": "S"},
            {"AttributeName": "partition", "AttributeType": "S"},
            {"AttributeName": "status_key", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "dataset", "KeyType": "HASH"},
            {"AttributeName": "partition", "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-status",
                "KeySchema": [
                    {"AttributeName": "status_key", "KeyType": "HASH"},
                    {"AttributeName": "partition", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    dynamodb.get_waiter("table_exists").wait(TableName=table)
    rows = []
    for i in range(FILES):
        t = _source_table(i)
        rows.extend(t.to_pylist())
        buf = io.BytesIO()
        pq.write_table(t, buf)
        s3.put_object(Bucket=BUCKET, Key=f"{PARTITION_DIR}part-{i:05d}.parquet", Body=buf.getvalue())
    yield {"table": table, "rows": sorted(rows, key=lambda r: r["id"])}
    dynamodb.delete_table(TableName=table)


class Emulator:
    def __init__(self, port, log_path):
        self.port = port
        self.log_path = log_path

    def log_tail(self, lines=80):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no watch log at {self.log_path}: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def invoke(self, function, data_file, timeout=INVOKE_TIMEOUT):
        """(exit code, stdout, stderr) of `cargo lambda invoke`."""
        cmd = [
            "cargo", "lambda", "invoke", function,
            "--data-file", str(data_file),
            "--invoke-address", "127.0.0.1",
            "--invoke-port", str(self.port),
            "--output-format", "json",
        ]
        started = time.monotonic()
        try:
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"cargo lambda invoke {function} took over {timeout}s.\n"
                f"--- tail of the watch log {self.log_path}:\n{self.log_tail()}"
            )
        elapsed = time.monotonic() - started
        if function not in COLD:
            COLD[function] = elapsed
            print(f"\ncold invocation of {function}: {elapsed:.2f}s (debug build, emulator)")
        return out.returncode, out.stdout, out.stderr

    def warm_up(self):
        """Starts each function with an event that needs no work (and compiles it if its build
        is not up to date), timing its cold invocation."""
        test_event = self.log_path.parent / "s3-test-event.json"
        test_event.write_text(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                                          "Bucket": BUCKET}))
        for function in ("planner", "committer"):
            response = self.ok(function, test_event)
            assert "ignored" in response, (function, response)
        empty = self.log_path.parent / "empty.json"
        empty.write_text("{}")
        assert "event rejected" in self.rejected("merger", empty)

    def ok(self, function, data_file):
        """The JSON response of a successful invocation."""
        rc, stdout, stderr = self.invoke(function, data_file)
        assert rc == 0, (
            f"cargo lambda invoke {function} --data-file {data_file} failed (exit {rc}):\n"
            f"stdout: {stdout}\nstderr: {stderr}\n"
            f"--- tail of the watch log {self.log_path}:\n{self.log_tail()}"
        )
        try:
            return json.loads(stdout)
        except json.JSONDecodeError as e:
            pytest.fail(f"{function} answered non-JSON ({e}): {stdout!r}")

    def rejected(self, function, data_file):
        """The error text of an invocation that must fail."""
        rc, stdout, stderr = self.invoke(function, data_file)
        assert rc != 0, (
            f"{function} accepted {Path(data_file).read_text()!r}; it answered {stdout!r}"
        )
        return stdout + stderr


@pytest.fixture(scope="module")
def emulator(request, aws, world):
    endpoint, _, _ = aws
    failed_before = request.session.testsfailed
    if shutil.which("cargo-lambda") is None:
        pytest.fail(
            "cargo-lambda is not on PATH: scripts/test installs it in .venv-aws (PyPI "
            "`cargo-lambda`) and puts .venv-aws/bin on PATH for these tests"
        )
    port = _free_port()
    logdir = Path(tempfile.mkdtemp(prefix="compactor-lambda-"))  # outside the repo: see TOOLING
    log_path = logdir / "watch.log"
    env = dict(os.environ)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    env.update(
        COMPACTOR_BUCKET=BUCKET,
        COMPACTOR_TABLE=world["table"],
        COMPACTOR_CONFIG=CONFIG,
        COMPACTOR_MERGER_FUNCTION="merger",
        COMPACTOR_DISPATCH_CONCURRENCY="4",
        COMPACTOR_INLINE_TASK_LIMIT="200000",
        COMPACTOR_BACKUP_PREFIX="_backups",
        AWS_ENDPOINT_URL=endpoint,
        AWS_ENDPOINT_URL_LAMBDA=f"http://127.0.0.1:{port}",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_MAX_ATTEMPTS="1",
        AWS_EC2_METADATA_DISABLED="true",
        RUST_LOG="info",
        TMPDIR=str(logdir),
    )
    env.pop("COMPACTOR_EVENT_BUS", None)
    # --ignore-changes: the emulator must not rebuild while sources change under it.
    cmd = ["cargo", "lambda", "watch", "--ignore-changes",
           "-A", "127.0.0.1", "-P", str(port), "--timeout", str(INVOKE_TIMEOUT)]
    # A SIGTERM to pytest (a CI time limit, say) still runs the teardown below: the emulator
    # runs in its own session, so nothing else would stop it.
    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous_handler = signal.signal(signal.SIGTERM, terminate)
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    emu = Emulator(port, log_path)
    try:
        deadline = time.monotonic() + 300
        while not _answers(port):
            if proc.poll() is not None:
                pytest.fail(f"cargo lambda watch exited with {proc.returncode}:\n{emu.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"cargo lambda watch did not listen on {port} in 300s:\n{emu.log_tail()}")
            time.sleep(0.5)
        emu.warm_up()
        yield emu
    finally:
        below = _descendants(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        for pid, started in below:  # function processes the emulator failed to stop
            fields = _stat(pid)
            if fields and fields[19] == started:  # the same process, not a reused pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        log.close()
        signal.signal(signal.SIGTERM, previous_handler)
        if COLD:
            print("\ncold invocations (debug build, emulator): "
                  + ", ".join(f"{f} {s:.2f}s" for f, s in COLD.items()))
        if request.session.testsfailed > failed_before:
            print(f"\nwatch log kept: {log_path}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)


def bucket_snapshot(s3):
    snap = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            snap[o["Key"]] = (o["ETag"], o["Size"])
    return snap


def table_snapshot(dynamodb, table):
    items = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items.extend(page["Items"])
    return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))


def snapshot(aws, world):
    _, s3, dynamodb = aws
    return bucket_snapshot(s3), table_snapshot(dynamodb, world["table"])


def partition_outcomes(response):
    """[(dataset, partition, outcome)] of a planner response."""
    return [
        (plan["dataset"], p["partition"], p["outcome"])
        for plan in response.get("plans", [])
        for p in plan["partitions"]
    ]


def planned_tasks(response):
    return [t for _, _, o in partition_outcomes(response) for t in o.get("tasks", [])]


def write_event(tmp_path, name, value):
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return path


def s3_put_event(bucket, key, size=1024):
    event = json.loads((EVENTS / "planner-s3-put.json").read_text())
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    record["s3"]["object"]["key"] = key
    record["s3"]["object"]["size"] = size
    return event


def wait_for_success(s3, emulator, task_dir):
    """Waits for the merger's `_SUCCESS` in `task_dir`. The planner invokes the merger through
    the emulator's Invoke API, which answers InvocationType=Event synchronously; poll in case
    that ever changes."""
    deadline = time.monotonic() + 120
    while True:
        try:
            s3.head_object(Bucket=BUCKET, Key=f"{task_dir}_SUCCESS")
            return
        except s3.exceptions.ClientError:
            if time.monotonic() > deadline:
                staged = [k for k in bucket_snapshot(s3) if k.startswith(STAGING)]
                pytest.fail(
                    f"no {task_dir}_SUCCESS 120 s after the planner returned; staging holds "
                    f"{staged}.\n--- tail of the watch log:\n{emulator.log_tail()}"
                )
            time.sleep(1)


# --- tests, in the order they run ------------------------------------------------------------


def test_dry_run_reports_the_plan_and_changes_nothing(aws, world, emulator):
    before = snapshot(aws, world)
    response = emulator.ok("planner", EVENTS / "planner-dry-run.json")
    assert all(plan["dry_run"] for plan in response["plans"]), response
    outcomes = {(d, p): o for d, p, o in partition_outcomes(response)}
    assert (DATASET, PARTITION) in outcomes, (
        f"the sweep did not reach the partition: {response} (an empty 'plans' means it stopped "
        "at once, as when the invocation's deadline is taken to be already past)"
    )
    tasks = outcomes[(DATASET, PARTITION)].get("tasks")
    assert tasks, f"the cold partition is not planned in the dry run: {response}"
    assert sum(t["inputs"] for t in tasks) == FILES, response
    assert snapshot(aws, world) == before, "a dry run changed the bucket or the state table"


def test_s3_put_plans_merges_and_commits_the_partition(aws, world, emulator):
    _, s3, _ = aws
    response = emulator.ok("planner", EVENTS / "planner-s3-put.json")
    assert response["ignored"] == [], response
    outcomes = partition_outcomes(response)
    assert [(d, p) for d, p, _ in outcomes] == [(DATASET, PARTITION)], response
    tasks = planned_tasks(response)
    assert len(tasks) == 1, f"expected one task for 6 small files: {response}"
    assert tasks[0]["task_id"] == "g000001-t0000", response
    assert tasks[0]["inputs"] == FILES, response

    wait_for_success(s3, emulator, TASK_DIR)
    log = emulator.log_path.read_text(errors="replace")
    assert "merge task dispatched" in log, "the planner did not log its dispatch"

    committed = emulator.ok("committer", EVENTS / "committer-s3-success.json")
    results = committed["results"]
    assert len(results) == 1 and results[0].get("committed") is True, committed
    assert results[0]["task_dir"] == TASK_DIR, committed
    assert results[0]["inputs_deleted"] == FILES, committed
    assert results[0]["rows"] == FILES * ROWS_PER_FILE, committed

    keys = sorted(k for k in bucket_snapshot(s3) if k.startswith(PARTITION_DIR))
    names = [k[len(PARTITION_DIR):] for k in keys]
    compacted = [n for n in names if n.startswith("compacted-") and n.endswith(".parquet")]
    assert compacted and sorted(compacted + ["_compactor_manifest.json"]) == sorted(names), names
    assert not [k for k in bucket_snapshot(s3) if k.startswith(TASK_DIR)], "staging not removed"

    rows = []
    for name in compacted:
        body = s3.get_object(Bucket=BUCKET, Key=PARTITION_DIR + name)["Body"].read()
        rows.extend(pq.read_table(io.BytesIO(body)).to_pylist())
    assert sorted(rows, key=lambda r: r["id"]) == world["rows"]

    # The same _SUCCESS event again: harmless, nothing changes.
    before = snapshot(aws, world)
    again = emulator.ok("committer", EVENTS / "committer-s3-success.json")
    print(f"committer, same _SUCCESS again: {json.dumps(again)}")
    [result] = again["results"]
    assert result.get("committed") is not True, again
    assert result.get("already_committed") or result.get("not_ready"), again
    assert snapshot(aws, world) == before, "re-delivering _SUCCESS changed something"

    # The same S3 put again (a late file in a cold partition): replanned, but the partition is
    # already compacted, so no task starts and the bucket does not change.
    objects_before = bucket_snapshot(s3)
    replanned = emulator.ok("planner", EVENTS / "planner-s3-put.json")
    assert planned_tasks(replanned) == [], replanned
    assert bucket_snapshot(s3) == objects_before, "replanning a compacted partition changed the bucket"


def test_eventbridge_and_scheduled_events_succeed(aws, world, emulator):
    _, s3, _ = aws
    objects_before = bucket_snapshot(s3)
    for name in ("planner-eventbridge-object-created.json", "planner-scheduled.json",
                 "planner-dry-run.json"):
        response = emulator.ok("planner", EVENTS / name)
        print(f"{name}: {json.dumps(response)}")
        # Each looked at the partition (a sweep that stops at once answers {"plans": []}) and,
        # after the compaction above, found nothing left to do.
        outcomes = partition_outcomes(response)
        assert (DATASET, PARTITION) in [(d, p) for d, p, _ in outcomes], (name, response)
        assert planned_tasks(response) == [], (name, response)
    assert bucket_snapshot(s3) == objects_before


def partition_rows(s3):
    rows = []
    for key in bucket_snapshot(s3):
        if key.startswith(PARTITION_DIR) and key.endswith(".parquet"):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            rows.extend(pq.read_table(io.BytesIO(body)).to_pylist())
    return sorted(rows, key=lambda r: r["id"])


def run_command(s3, emulator, tmp_path, name, event):
    """Sends a maintenance command to the planner; the merger runs through the emulator; the
    committer gets the task directory. Returns the planner's response."""
    response = emulator.ok("planner", write_event(tmp_path, f"{name}.json", event))
    tasks = planned_tasks(response)
    assert len(tasks) == 1, response
    task_dir = f"{STAGING}/{DATASET}/{PARTITION}/{tasks[0]['task_id']}/"
    wait_for_success(s3, emulator, task_dir)
    committed = emulator.ok("committer", write_event(tmp_path, f"{name}-commit.json", {"task_dir": task_dir}))
    assert committed["results"][0].get("committed") is True, committed
    return response


def test_delete_and_upsert_commands_run_through_the_functions(aws, world, emulator, tmp_path):
    _, s3, _ = aws
    rows = list(world["rows"])  # after the compaction above, the same rows
    assert partition_rows(s3) == rows
    # The sample delete event's shape, as a dry run: the plan says what would go; nothing does.
    event = json.loads((EVENTS / "planner-delete.json").read_text())
    event.update({"where": "id % 10 = 0", "dry_run": True})
    del event["backup"]
    before = snapshot(aws, world)
    dry = emulator.ok("planner", write_event(tmp_path, "delete-dry.json", event))
    assert dry["operation"] == "delete", dry
    [part] = [p for p in dry["plans"][0]["partitions"] if p["partition"] == PARTITION]
    assert part["rewrite"]["rows_matched"] == len([r for r in rows if r["id"] % 10 == 0]), dry
    assert snapshot(aws, world) == before, "a dry-run delete changed the bucket or the state"
    # For real, with a backup: the planner's SQL engine and the merger's both run.
    event.update({"dry_run": False, "backup": "_backups/del"})
    run_command(s3, emulator, tmp_path, "delete", event)
    rows = [r for r in rows if r["id"] % 10 != 0]
    assert partition_rows(s3) == rows
    assert any(k.startswith("_backups/del/_backup/") for k in bucket_snapshot(s3))
    # An upsert from a Parquet object in the bucket: two ids updated, one deleted id back, one new.
    fixes = pa.table({
        "id": pa.array([1, 2, 10, 99_999], pa.int64()),
        "user": pa.array(["fixed-1", "fixed-2", "back-10", "new"], pa.string()),
        "ts": pa.array([1714568400_000_000] * 4, pa.timestamp("us", tz="UTC")),
        "dt": pa.array(["2024-05-01"] * 4, pa.string()),
        "hour": pa.array(["13"] * 4, pa.string()),
    })
    buf = io.BytesIO()
    pq.write_table(fixes, buf)
    s3.put_object(Bucket=BUCKET, Key="fixes/clicks.parquet", Body=buf.getvalue())
    event = json.loads((EVENTS / "planner-upsert.json").read_text())
    event.update({"from": "fixes/clicks.parquet", "key": ["id"], "update_cols": ["user"]})
    response = run_command(s3, emulator, tmp_path, "upsert", event)
    [part] = [p for p in response["plans"][0]["partitions"] if p["partition"] == PARTITION]
    assert part["rewrite"]["rows_matched"] == 2 and part["rewrite"]["rows_to_insert"] == 2, response
    by_id = {r["id"]: r for r in rows}
    by_id[1]["user"], by_id[2]["user"] = "fixed-1", "fixed-2"
    for f in fixes.to_pylist():
        if f["id"] not in by_id:
            by_id[f["id"]] = {"id": f["id"], "user": f["user"], "ts": f["ts"]}
    assert partition_rows(s3) == sorted(by_id.values(), key=lambda r: r["id"])


def landing_table(i):
    """A landing file of 12,000 rows with random notes (about 550 KB: two of them exceed the
    destination's max_task_bytes, so each is a write task of its own)."""
    rng = random.Random(1605 + i)
    ids = list(range(1_000_000 + i * 12_000, 1_000_000 + (i + 1) * 12_000))
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "user": pa.array([f"user-{n % 11}" for n in ids], pa.string()),
        "note": pa.array([f"{rng.getrandbits(128):032x}" for _ in ids], pa.string()),
        "ts": pa.array([1714629600_000_000 + n for n in ids], pa.timestamp("us", tz="UTC")),
    })


def rows_under(s3, prefix):
    """Every row of the Parquet objects under `prefix`, with its `key=value` levels as columns,
    as a sorted list of tuples (a multiset of every value)."""
    out = []
    for key in bucket_snapshot(s3):
        if key.startswith(prefix) and key.endswith(".parquet") and "/_" not in key[len(prefix):]:
            levels = dict(l.split("=", 1) for l in key[len(prefix):].split("/")[:-1])
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            for row in pq.read_table(io.BytesIO(body)).to_pylist():
                row.update(levels)
                out.append(tuple(sorted((k, str(v)) for k, v in row.items())))
    return sorted(out)


BAD_EVENTS = [
    ("planner", "empty", {}),
    ("planner", "unknown-command", {"command": "explode"}),
    ("planner", "foreign-key", s3_put_event(BUCKET, "elsewhere/x.parquet")),
    ("planner", "foreign-bucket",
     s3_put_event("another-bucket", "raw/clicks/dt%3D2024-05-01/hour%3D13/part-00000.parquet")),
    ("planner", "unknown-dataset", {"command": "sweep", "dataset": "nope"}),
    ("planner", "hostile-delete", {"command": "delete", "dataset": DATASET, "where": "id > 0; DROP TABLE x"}),
    ("planner", "delete-unknown-column", {"command": "delete", "dataset": DATASET, "where": "nope = 1"}),
    ("planner", "delete-backup-outside-the-backup-prefix",
     {"command": "delete", "dataset": DATASET, "where": "id = 1", "backup": "raw/bk"}),
    ("planner", "repartition-into-its-source",
     {"command": "repartition", "dataset": REPARTITIONED, "from": "curated/"}),
    ("planner", "repartition-unknown-column",
     {"command": "repartition", "dataset": REPARTITIONED, "from": "raw/", "select": "id, nope"}),
    ("planner", "upsert-escaping-key", {"command": "upsert", "dataset": DATASET, "from": "../x.parquet", "key": ["id"]}),
    ("committer", "empty", {}),
    ("committer", "not-a-marker",
     s3_put_event(BUCKET, "raw/clicks/dt%3D2024-05-01/hour%3D13/part-00000.parquet")),
    ("committer", "outside-staging", {"task_dir": "raw/clicks/dt=2024-05-01/hour=13/"}),
    ("merger", "empty", {}),
]


@pytest.mark.parametrize(
    "function,name,event", [pytest.param(*bad, id=f"{bad[0]}-{bad[1]}") for bad in BAD_EVENTS]
)
def test_bad_events_are_rejected_and_change_nothing(aws, world, emulator, tmp_path, function, name, event):
    before = snapshot(aws, world)
    text = emulator.rejected(function, write_event(tmp_path, f"{name}.json", event))
    assert "event rejected" in text, text
    assert snapshot(aws, world) == before, f"{function} changed something for a rejected event"


def test_committer_for_a_missing_task_dir_does_nothing(aws, world, emulator, tmp_path):
    before = snapshot(aws, world)
    missing = f"{STAGING}/{DATASET}/{PARTITION}/g000009-t0007/"
    response = emulator.ok("committer", write_event(tmp_path, "missing.json", {"task_dir": missing}))
    assert response["results"] == [{"task_dir": missing, "not_ready": True}], response
    # The sample manual event names the task committed above: done before, nothing to do now.
    response = emulator.ok("committer", EVENTS / "committer-manual.json")
    print(f"committer-manual.json after the commit: {json.dumps(response)}")
    [result] = response["results"]
    assert result.get("committed") is not True, response
    assert snapshot(aws, world) == before


def test_repartition_command_fans_out_to_mergers_and_validates(aws, world, emulator, tmp_path):
    _, s3, _ = aws
    # Four landing files in two partitions of the old layout (dt, then hour).
    for i in range(4):
        buf = io.BytesIO()
        pq.write_table(landing_table(i), buf)
        s3.put_object(Bucket=BUCKET, Key=f"{LANDING}/dt=2024-05-02/hour={7 + i % 2:02d}/part-{i}.parquet",
                      Body=buf.getvalue())
    source = rows_under(s3, f"{LANDING}/")
    assert len(source) == 48_000
    event = json.loads((EVENTS / "planner-repartition.json").read_text())
    event.update({"dataset": REPARTITIONED, "from": f"{LANDING}/", "backup": "_backups/landing", "dry_run": True})
    before = snapshot(aws, world)
    dry = emulator.ok("planner", write_event(tmp_path, "repartition-dry.json", event))["repartition"]
    assert {t["partition"]: t["rows"] for t in dry["targets"]} == {
        "hour=07/dt=2024-05-02": 24_000, "hour=08/dt=2024-05-02": 24_000}, dry
    assert snapshot(aws, world) == before, "a dry-run repartition changed the bucket or the state"
    event["dry_run"] = False
    path = write_event(tmp_path, "repartition.json", event)
    # 1: the write tasks go to the merger function, one per group of source files.
    first = emulator.ok("planner", path)["repartition"]
    assert first["phase"] == "writing" and first["groups"] >= 2, first
    assert first["write_tasks"] == first["groups"] and first["waiting"], first
    record_dir = f"{STAGING}/repartition/{REPARTITIONED}/"
    deadline = time.monotonic() + 120
    while len([k for k in bucket_snapshot(s3) if k.startswith(f"{record_dir}groups/")]) < first["groups"]:
        assert time.monotonic() < deadline, f"groups not written: {bucket_snapshot(s3).keys()}\n{emulator.log_tail()}"
        time.sleep(1)
    assert not any(k.startswith(f"{REPARTITIONED_PREFIX}/") for k in bucket_snapshot(s3)), \
        "pieces reached the destination before every group was written"
    # 2: the schedule carries it on: every group is written, so the destination's partitions are
    # planned with the pieces as inputs, merged by the merger, committed by the committer.
    scheduled = EVENTS / "planner-scheduled.json"
    second = emulator.ok("planner", scheduled)
    [carried] = second["repartitions"]
    assert carried["dataset"] == REPARTITIONED and carried["repartition"]["phase"] == "written", second
    tasks = [(p, t["task_id"]) for _, p, o in partition_outcomes(carried) for t in o.get("tasks", [])]
    assert sorted({p for p, _ in tasks}) == ["hour=07/dt=2024-05-02", "hour=08/dt=2024-05-02"], carried
    for partition, task_id in tasks:
        task_dir = f"{STAGING}/{REPARTITIONED}/{partition}/{task_id}/"
        wait_for_success(s3, emulator, task_dir)
        committed = emulator.ok("committer", write_event(tmp_path, "rp-commit.json", {"task_dir": task_dir}))
        assert committed["results"][0].get("committed") is True, committed
    # 3: validated against the source's digest; the source deleted, kept under the backup.
    [carried] = emulator.ok("planner", scheduled)["repartitions"]
    third = carried["repartition"]
    assert third["phase"] == "source_deleted" and third["validated"], third
    assert third["source_files_deleted"] == 4 and third["source_files_kept"] == [], third
    assert third["source_digest"] == third["target_digest"], third
    assert rows_under(s3, f"{REPARTITIONED_PREFIX}/") == source, "the destination's rows differ from the source's"
    keys = bucket_snapshot(s3)
    assert not any(k.startswith(f"{LANDING}/") for k in keys), "the source was not deleted"
    assert len([k for k in keys if k.startswith("_backups/landing/") and k.endswith(".parquet")]) == 4
    assert [k for k in keys if k.startswith(record_dir)] == [f"{record_dir}record.json"], \
        "the repartition left staging behind"
    # Once more: nothing left to do, nothing changes.
    before = snapshot(aws, world)
    again = emulator.ok("planner", path)["repartition"]
    assert again["phase"] == "source_deleted" and again["write_tasks"] == 0, again
    assert snapshot(aws, world) == before
    assert emulator.ok("planner", scheduled)["repartitions"] == [], "a finished repartition was carried on"
