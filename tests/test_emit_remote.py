"""A Recorder on an object-store root (``Recorder("s3://bucket/prefix")``): events
are written into a local outbox and uploaded to DESIGN §5's paths under the prefix.
Real S3 (moto's server over HTTP on 127.0.0.1), real Parquet, real subprocesses."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

import voicepipe_obs as vp
from conftest import SwitchableEndpoint
from test_import_hygiene import HEAVY, PIPELINE, run_python
from voicepipe_obs import remote
from voicepipe_obs.errors import EmitError

EVENT_PATH = re.compile(r"events/date=\d{4}-\d\d-\d\d/hour=\d\d/[^/.][^/]*\.parquet")


def bucket_events(url: str) -> list[str]:
    """The event ids under the root's events/, read with plain pyarrow over S3."""
    fs, base = pafs.FileSystem.from_uri(url)
    try:
        dataset = ds.dataset(f"{base}/events", filesystem=fs, format="parquet", partitioning="hive")
    except FileNotFoundError:
        return []
    return [str(v) for v in dataset.to_table(columns=["event_id"])["event_id"].to_pylist()]


def remote_files(url: str) -> list[str]:
    return [f.rel for f in remote.open_root(url).list("events")]


def outbox_files(url: str) -> list[Path]:
    return sorted(remote.cache_dir(url, "outbox").glob("events/**/*.parquet"))


def closed_port_endpoint() -> str:
    """An endpoint nothing listens on: every request is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def emit_some(rec: vp.Recorder, n: int) -> list[str]:
    ids = []
    for i in range(n):
        with rec.artifact(f"a-{i}", organization_id="org"):
            with rec.stage("transcription") as st:
                st.annotate(confidence_score=0.9)
        event_id = rec.emit("rate_limit_hit")
        assert event_id is not None
        ids.append(event_id)
    return ids


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("given", ["argument", "VOICEPIPE_DATA"])
def test_events_arrive_in_the_bucket_at_the_design_paths(
    s3_root: str, given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if given == "VOICEPIPE_DATA":
        monkeypatch.setenv("VOICEPIPE_DATA", s3_root)
        rec = vp.Recorder(strict=True, flush_interval=0.1)
    else:
        rec = vp.Recorder(s3_root, strict=True, flush_interval=0.1)
    assert rec.remote == s3_root and rec.root == remote.cache_dir(s3_root, "outbox")
    assert repr(rec) == f"Recorder(root={s3_root!r}, durability='spool')"
    ids = emit_some(rec, 20)
    rec.close()

    files = remote_files(s3_root)
    assert files and all(EVENT_PATH.fullmatch(f) for f in files), files
    got = bucket_events(s3_root)
    assert len(got) == len(set(got)) == 20 * 5  # received, started, completed, completed artifact, rate limit
    assert set(ids) <= set(got)
    assert outbox_files(s3_root) == []  # every file shipped, and deleted locally
    s = rec.stats()
    assert (s["written"], s["uploaded_files"], s["upload_errors"], s["pending_uploads"]) == (
        100,
        len(files),
        0,
        0,
    )


def test_files_go_up_while_the_recorder_runs(s3_root: str) -> None:
    """Not only at close: each batch file is uploaded soon after it is written."""
    rec = vp.Recorder(s3_root, flush_interval=0.05, spool_interval=0.01)
    ids = emit_some(rec, 3)
    assert rec.flush()
    wait_for(lambda: set(ids) <= set(bucket_events(s3_root)))
    wait_for(lambda: rec.stats()["pending_uploads"] == 0)
    assert rec.stats()["uploaded_files"] >= 1
    rec.close()


def test_a_local_root_has_no_upload_counters(root: Path) -> None:
    rec = vp.Recorder(root)
    rec.emit("rate_limit_hit")
    rec.close()
    assert rec.remote is None
    assert not {"uploaded_files", "upload_errors", "pending_uploads"} & set(rec.stats())


def test_a_store_that_is_down_costs_the_pipeline_nothing_and_loses_nothing(
    s3_root: str, s3_switch: SwitchableEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    s3_switch.set("down")
    rec = vp.Recorder(s3_root, flush_interval=0.05, spool_interval=0.01, close_timeout=2.0)

    @rec.stage("transcription")
    def transcribe() -> None:
        pass

    worst = 0.0
    for _ in range(300):
        start = time.perf_counter()
        transcribe()
        worst = max(worst, time.perf_counter() - start)
    ids = emit_some(rec, 10)
    assert rec.flush() is True  # written locally: flush does not wait for the store
    wait_for(lambda: rec.stats()["upload_errors"] >= 1)  # it did try, and failed
    for _ in range(300):  # and while it backs off
        start = time.perf_counter()
        transcribe()
        worst = max(worst, time.perf_counter() - start)
    assert worst < 0.1, worst

    with caplog.at_level(logging.WARNING, logger="voicepipe_obs"):
        start = time.monotonic()
        rec.close()
        took = time.monotonic() - start
    assert took < 2.0 + 0.5, took
    s = rec.stats()
    assert s["written"] == 1250 and s["dropped"] == 0 and s["uploaded_files"] == 0
    waiting = outbox_files(s3_root)
    assert waiting and s["pending_uploads"] == len(waiting)
    [line] = [r.getMessage() for r in caplog.records if "event files wait in" in r.getMessage()]
    assert f"{len(waiting)} event files wait in {rec.root}" in line and s3_root in line

    s3_switch.set("up")
    assert bucket_events(s3_root) == []  # nothing went up
    later = vp.Recorder(s3_root, strict=True)  # ships the leftovers at start, and at close
    wait_for(lambda: outbox_files(s3_root) == [])
    later.close()
    got = bucket_events(s3_root)
    assert len(got) == len(set(got)) == 1250 and set(ids) <= set(got)
    assert sorted(remote_files(s3_root)) == sorted(p.relative_to(rec.root).as_posix() for p in waiting)
    assert later.stats()["uploaded_files"] == len(waiting)


def test_strict_close_raises_when_files_cannot_be_uploaded(
    s3_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_endpoint())
    rec = vp.Recorder(s3_root, strict=True, close_timeout=2.0)
    rec.emit("rate_limit_hit")
    assert rec.flush()  # the local write succeeded: not an error
    with pytest.raises(EmitError, match="could not be uploaded"):
        rec.close()
    assert len(outbox_files(s3_root)) == 1  # kept for the next recorder


def test_a_file_uploaded_twice_keeps_its_name_and_bytes(s3_root: str) -> None:
    """A crash between an upload and the local delete (or two processes sharing the
    outbox) ships the same file again: the object of its name stays, the local
    copy is deleted."""
    rec = vp.Recorder(s3_root)
    emit_some(rec, 5)
    rec.close()
    [rel] = remote_files(s3_root)
    root = remote.open_root(s3_root)
    before = root.get_bytes(rel)
    root.get(rel, remote.cache_dir(s3_root, "outbox") / rel)  # as if it had never been deleted
    again = vp.Recorder(s3_root, recover=False)  # ships leftovers at start, without an emit
    wait_for(lambda: outbox_files(s3_root) == [])
    again.close()
    assert again.stats()["uploaded_files"] == 1
    assert remote_files(s3_root) == [rel] and root.get_bytes(rel) == before
    assert outbox_files(s3_root) == []
    got = bucket_events(s3_root)
    assert len(got) == len(set(got)) == 25


def test_recovery_of_a_shipped_segment_never_shrinks_the_uploaded_file(s3_root: str, tmp_path: Path) -> None:
    """Spool recovery in the outbox: a segment whose batch file was uploaded (and
    deleted locally) is found again, holding fewer rows than the batch had (rows
    held after a failed spool append, a crash before the segment's delete). Recovery
    rewrites it under the same name; the upload must not replace the complete
    object with that subset."""
    rec = vp.Recorder(s3_root, durability="sync", flush_interval=3600, spool_interval=3600)
    outbox = rec.root
    ids = [rec.emit("rate_limit_hit") for _ in range(20)]
    [segment] = (outbox / "_spool").glob("*.spool")
    saved = tmp_path / segment.name
    saved.write_bytes(segment.read_bytes())  # the segment as a crash would leave it: 20 rows
    ids += [rec.emit("rate_limit_hit") for _ in range(10)]
    rec.close()
    [rel] = remote_files(s3_root)
    assert rel.endswith(f"/{segment.name[: -len('.spool')]}.parquet")
    assert sorted(bucket_events(s3_root)) == sorted(ids)

    segment.write_bytes(saved.read_bytes())  # the writer is dead: its segment is back
    (outbox / "_spool" / f"{segment.name.rsplit('-', 1)[0]}.lock").touch()
    assert vp.recover_spools(s3_root) == (20, 1)
    [again] = outbox_files(s3_root)
    assert again.relative_to(outbox).as_posix() == rel and pq.read_metadata(again).num_rows == 20

    later = vp.Recorder(s3_root, recover=False)  # ships the rewritten file
    wait_for(lambda: outbox_files(s3_root) == [])
    later.close()
    assert later.stats()["upload_errors"] == 0
    assert remote_files(s3_root) == [rel]  # the subset went nowhere
    got = bucket_events(s3_root)
    assert len(got) == len(set(got)) == 30 and set(got) == set(ids)


def test_a_file_with_more_events_than_the_object_of_its_name_goes_up_beside_it(s3_root: str) -> None:
    """The other order: the object of a name holds fewer events than the file (a
    recovery took a live writer's segment, then the writer wrote its whole batch).
    The file goes up under a name of its own; nothing is replaced, nothing lost."""
    rec = vp.Recorder(s3_root)
    ids = emit_some(rec, 4)
    rec.close()
    [rel] = remote_files(s3_root)
    root = remote.open_root(s3_root)
    full = root.get_bytes(rel)
    assert full is not None
    local = remote.cache_dir(s3_root, "outbox") / rel
    root.get(rel, local)
    table = pq.read_table(local)
    sink = pa.BufferOutputStream()
    pq.write_table(table.slice(0, 7), sink)
    root.put_bytes(sink.getvalue().to_pybytes(), rel)  # the recovered subset, uploaded first

    again = vp.Recorder(s3_root, recover=False)
    wait_for(lambda: outbox_files(s3_root) == [])
    again.close()
    files = remote_files(s3_root)
    assert len(files) == 2 and rel in files
    [beside] = [f for f in files if f != rel]
    assert root.get_bytes(beside) == full
    got = bucket_events(s3_root)
    assert len(got) == 20 + 7 and set(got) == set(ids) | set(table["event_id"].to_pylist())

    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(full)  # the same file once more (a crash before its delete)
    third = vp.Recorder(s3_root, recover=False)
    wait_for(lambda: outbox_files(s3_root) == [])
    third.close()
    assert sorted(remote_files(s3_root)) == sorted(files)  # its name is taken by the same bytes


def test_credentials_in_the_uri_stay_off_the_helper_s_command_line(s3_root: str) -> None:
    """``s3://KEY:SECRET@bucket/prefix`` (pyarrow's form for credentials in a URI):
    the upload helper's command line, which any local user can read, holds neither
    the URI nor the outbox named after it."""
    secret = "S3cretValueNotForPs"
    url = s3_root.replace("s3://", f"s3://AKIDTESTKEY:{secret}@", 1)
    rec = vp.Recorder(url, flush_interval=0.05)
    ids = emit_some(rec, 2)
    assert rec.flush()
    wait_for(lambda: rec.stats()["uploaded_files"] >= 1)
    assert rec._outbox is not None and rec._outbox._proc is not None
    cmdline = Path(f"/proc/{rec._outbox._proc.pid}/cmdline").read_bytes()
    assert b"helper_main" in cmdline  # it is the helper's
    assert secret.encode() not in cmdline and b"AKIDTESTKEY" not in cmdline
    rec.close()
    assert set(ids) <= set(bucket_events(s3_root))


@pytest.fixture
def write_only_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[str, pafs.S3FileSystem]]:
    """An S3 server of its own that checks credentials (moto's IAM enforcement), a
    bucket, and this process's AWS_* variables set to a key that may only PUT
    objects (a common policy for hosts that ship logs): the root, and a file system
    with a key that may read it."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the first 7 requests are the set-up below; every later one is checked
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "7"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(endpoint), timeout=30)
        kw = {"endpoint_url": endpoint, "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        boto3.client("s3", region_name="us-east-1", **kw).create_bucket(Bucket="write-only")
        iam = boto3.client("iam", region_name="us-east-1", **kw)
        keys = {}
        for user, actions in (("shipper", ["s3:PutObject"]), ("reader", ["s3:*"])):
            iam.create_user(UserName=user)
            policy = {"Effect": "Allow", "Action": actions, "Resource": ["arn:aws:s3:::write-only*"]}
            iam.put_user_policy(
                UserName=user,
                PolicyName="p",
                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [policy]}),
            )
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["shipper"]["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["shipper"]["SecretAccessKey"])
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path / "cache"))
        reader = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            access_key=keys["reader"]["AccessKeyId"],
            secret_key=keys["reader"]["SecretAccessKey"],
            region="us-east-1",
        )
        yield "s3://write-only/data", reader
    finally:
        server.kill()
        server.wait()


def _answers(endpoint: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
    except OSError:
        return False
    return True


def test_credentials_that_may_only_upload_still_upload(
    write_only_root: tuple[str, pafs.S3FileSystem],
) -> None:
    """The check for an object of the same name is refused (403) to a key that may
    only PUT: the file is uploaded as it would be without the check."""
    url, reader = write_only_root
    rec = vp.Recorder(url)
    ids = emit_some(rec, 3)
    rec.close()
    s = rec.stats()
    assert (s["uploaded_files"], s["upload_errors"], s["pending_uploads"]) == (1, 0, 0)
    dataset = ds.dataset("write-only/data/events", filesystem=reader, format="parquet", partitioning="hive")
    assert set(ids) <= set(dataset.to_table(columns=["event_id"])["event_id"].to_pylist())


KILLED = """
import json, os, sys, time
import voicepipe_obs as vp
rec = vp.Recorder(sys.argv[1], durability="sync", flush_interval=3600)
ids = [rec.emit("rate_limit_hit") for _ in range(30)]
rec.flush()  # written as Parquet into the outbox; its upload fails (the store is down)
deadline = time.monotonic() + 20
while rec.stats()["upload_errors"] < 1 and time.monotonic() < deadline:
    time.sleep(0.01)
ids += [rec.emit("rate_limit_hit") for _ in range(20)]  # in the spool only
print(json.dumps({"ids": ids, "stats": rec.stats()}), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["next recorder", "recover_spools first"])
def test_a_killed_process_s_events_are_shipped_by_the_next_recorder(
    s3_root: str, s3_switch: SwitchableEndpoint, how: str
) -> None:
    s3_switch.set("down")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, s3_root],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        report = json.loads(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    s3_switch.set("up")
    assert report["stats"]["upload_errors"] >= 1 and report["stats"]["pending_uploads"] == 1
    outbox = remote.cache_dir(s3_root, "outbox")
    assert len(outbox_files(s3_root)) == 1 and list((outbox / "_spool").glob("*.spool"))
    assert bucket_events(s3_root) == []

    if how == "recover_spools first":  # e.g. cron's recovery, given the URI
        assert vp.recover_spools(s3_root) == (20, 1)
        assert len(outbox_files(s3_root)) == 2
    rec = vp.Recorder(s3_root, strict=True)  # recovers the spool into the outbox, ships both
    rec.close()
    got = bucket_events(s3_root)
    assert len(got) == len(set(got)) == 50 and set(got) == set(report["ids"])
    assert rec.stats()["recovered"] == (20 if how == "next recorder" else 0)
    assert rec.stats()["uploaded_files"] == 2
    assert outbox_files(s3_root) == [] and not list((outbox / "_spool").glob("*.spool"))


EXITS = """
import sys, time
import voicepipe_obs as vp
rec = vp.Recorder(sys.argv[1], flush_interval=3600)  # the last event waits for the exit hook

@rec.stage("transcription")
def transcribe():
    rec.annotate(confidence_score=0.9)

with rec.artifact("a-1", organization_id="org"):
    transcribe()
rec.flush()
while rec.stats()["uploaded_files"] < 1:  # S3 is in use when the exit hooks run
    time.sleep(0.01)
print(rec.emit("rate_limit_hit"))
if sys.argv[2] == "fork":
    import os
    pid = os.fork()
    if pid == 0:  # the child records and ships its own events, then exits normally
        print(rec.emit("circuit_breaker_opened"), flush=True)
        rec.close()
        print(rec.stats()["uploaded_files"], flush=True)
        sys.exit(0)
    print(os.waitpid(pid, 0)[1], flush=True)
# no close(): the exit hook writes and uploads
"""


@pytest.mark.parametrize("mode", ["exit", "fork"])
def test_a_script_that_just_exits_ships_its_events(s3_root: str, mode: str) -> None:
    """At interpreter exit the final write and upload run; a child forked after the
    parent uploaded ships its own events and exits normally (status 0: the
    pipeline's process never runs the S3 client, which is not fork-safe)."""
    done = subprocess.run(
        [sys.executable, "-c", EXITS, s3_root, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "could not upload" not in done.stderr, done.stderr
    lines = done.stdout.split()
    got = bucket_events(s3_root)
    assert len(got) == len(set(got)) == (6 if mode == "fork" else 5)
    assert lines[0] in got
    if mode == "fork":
        assert lines[1] in got and lines[2] == "1" and lines[3] == "0"
    assert outbox_files(s3_root) == []


def test_recording_to_an_object_store_loads_neither_duckdb_nor_click(s3_root: str) -> None:
    """The same pipeline as tests/test_import_hygiene.py's, on an object-store root."""
    done = run_python(PIPELINE.replace("{mods}", repr(set(HEAVY))), s3_root)
    assert json.loads(done.stdout) == []
    assert len(bucket_events(s3_root)) == 5  # it did record, and upload


def test_a_root_without_a_bucket_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(vp.VoicepipeError, match="names no bucket"):
        vp.Recorder("s3://")


def test_outbox_files_are_read_whole_by_pyarrow(s3_root: str) -> None:
    """What lands in the bucket is plain Parquet with the event schema."""
    rec = vp.Recorder(s3_root)
    ids = emit_some(rec, 2)
    rec.close()
    fs, base = pafs.FileSystem.from_uri(s3_root)
    [rel] = remote_files(s3_root)
    table = pq.read_table(f"{base}/{rel}", filesystem=fs)
    assert set(ids) <= set(table["event_id"].to_pylist())
    assert {"event_type", "timestamp", "pipeline_stage", "duration_ms"} <= set(table.column_names)


SILENT = """
import sys, time
import voicepipe_obs as vp
rec = vp.Recorder(sys.argv[1], flush_interval=0.05, close_timeout=1.0)
rec.emit("rate_limit_hit")
rec.flush()
time.sleep(0.5)  # an upload is now waiting for an answer that never comes
rec.emit("rate_limit_hit")
start = time.monotonic()
if sys.argv[2] == "close":
    rec.close()
print(time.monotonic() - start, flush=True)
"""


@pytest.mark.parametrize("how", ["close", "exit"])
def test_a_store_that_never_answers_holds_neither_close_nor_exit(
    s3_root: str, s3_switch: SwitchableEndpoint, how: str
) -> None:
    """An endpoint that accepts connections and never answers: close() returns
    within close_timeout, and the process ends right after (an upload in flight is
    in the helper process, which is killed, not waited for)."""
    s3_switch.set("silent")
    proc = subprocess.Popen(
        [sys.executable, "-c", SILENT, s3_root, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    took = float(proc.stdout.readline())
    marked = time.monotonic()
    _, err = proc.communicate(timeout=60)
    exiting = time.monotonic() - marked
    assert proc.returncode == 0, err
    assert took < 1.5 and exiting < 1.0 + 2.0, (took, exiting)
    assert b"event files wait in" in err
    assert len(outbox_files(s3_root)) == 2  # both kept for the next recorder


HELPER_DIES = """
import os, signal, sys, time
import voicepipe_obs as vp
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as some programs do: a write to a dead pipe kills
rec = vp.Recorder(sys.argv[1], flush_interval=3600)
ids = [rec.emit("rate_limit_hit")]
rec.flush()
while rec.stats()["uploaded_files"] < 1:
    time.sleep(0.01)
os.kill(rec._outbox._proc.pid, signal.SIGKILL)  # the upload helper dies (OOM killer, a stray kill)
time.sleep(0.2)
ids.append(rec.emit("rate_limit_hit"))
rec.flush()  # the next round finds it dead and starts another
while rec.stats()["uploaded_files"] < 2:
    time.sleep(0.01)
rec.close()
print(" ".join(ids))
"""


def test_a_dead_upload_helper_is_replaced(s3_root: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELPER_DIES, s3_root], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert sorted(bucket_events(s3_root)) == sorted(done.stdout.split())
    assert outbox_files(s3_root) == []


EMBEDDED = """
import json, sys, time
import voicepipe_obs as vp
if sys.argv[2] == "uwsgi":
    sys.executable = "/usr/sbin/uwsgi"  # as under uWSGI or mod_wsgi: the host program
rec = vp.Recorder(sys.argv[1], flush_interval=3600, close_timeout=2.0)  # one file: the flush below
ids = [rec.emit("rate_limit_hit") for _ in range(3)]
rec.flush()
deadline = time.monotonic() + 20
while not rec.stats()["upload_errors"] + rec.stats()["uploaded_files"] and time.monotonic() < deadline:
    time.sleep(0.01)
rec.close()
print(json.dumps({"ids": ids, "stats": rec.stats()}))
"""


@pytest.mark.parametrize("how", ["not a python", "VOICEPIPE_PYTHON", "json.py in the working directory"])
def test_the_helper_s_python(s3_root: str, how: str, tmp_path: Path) -> None:
    """The helper runs on ``$VOICEPIPE_PYTHON`` if set, else on sys.executable if
    that is a Python; when it is not (uWSGI, mod_wsgi, a frozen app) one warning
    says what to set, the failed rounds are counted and the files kept. The
    helper's path is the interpreter's own: neither the working directory nor a
    PYTHONPATH entry put in front of the standard library."""
    script = tmp_path / "pipeline.py"
    script.write_text(EMBEDDED)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VOICEPIPE_PYTHON")}
    marker = tmp_path / "wrapper-ran"
    if how == "VOICEPIPE_PYTHON":
        wrapper = tmp_path / "python-wrapper"
        wrapper.write_text(
            f'#!/bin/sh\necho "PYTHONPATH=${{PYTHONPATH-}}" > {marker}\nexec {sys.executable} "$@"\n'
        )
        wrapper.chmod(0o755)
        env["VOICEPIPE_PYTHON"] = str(wrapper)
    if how == "json.py in the working directory":
        (work / "json.py").write_text(
            "raise SystemExit('the helper imported json.py from the working directory')\n"
        )
    mode = "uwsgi" if how != "json.py in the working directory" else "python"
    done = subprocess.run(
        [sys.executable, str(script), s3_root, mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=work,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    stats = report["stats"]
    if how == "not a python":
        assert stats["uploaded_files"] == 0 and stats["upload_errors"] >= 1
        assert stats["pending_uploads"] == len(outbox_files(s3_root)) == 1  # kept for a later recorder
        warnings = [line for line in done.stderr.splitlines() if "not a Python interpreter" in line]
        assert warnings and "/usr/sbin/uwsgi" in warnings[0] and "set VOICEPIPE_PYTHON" in warnings[0]
        assert "Traceback" not in done.stderr
        assert bucket_events(s3_root) == []
        return
    assert stats["upload_errors"] == 0 and stats["uploaded_files"] == 1, done.stderr
    assert sorted(bucket_events(s3_root)) == sorted(report["ids"])
    if how == "VOICEPIPE_PYTHON":
        assert marker.read_text() == "PYTHONPATH=\n"  # the wrapper ran the helper, PYTHONPATH untouched
