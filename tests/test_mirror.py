"""mirror.py and the CLI on an object-store root: every command works on a local
mirror pulled before it and pushed after it — on a real S3 server (moto's) over
HTTP, real Parquet, real DuckDB, the CLI in real subprocesses."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import voicepipe_obs as vp
from retry_apps.helpers import record_failed
from voicepipe_obs import maintenance, remote, store
from voicepipe_obs.errors import StoreError
from voicepipe_obs.events import COLUMN_INDEX, NUM_COLUMNS
from voicepipe_obs.mirror import Mirror, mirrored, synced

UTC = dt.timezone.utc
HOUR0 = dt.datetime(2026, 5, 4, 6, tzinfo=UTC)
NOW = dt.datetime(2026, 5, 4, 12, 30, tzinfo=UTC)


def ev(event_id: str, when: dt.datetime, artifact: str = "a1") -> list[Any]:
    row: list[Any] = [None] * NUM_COLUMNS
    row[COLUMN_INDEX["event_id"]] = event_id
    row[COLUMN_INDEX["event_type"]] = "artifact_received"
    row[COLUMN_INDEX["timestamp"]] = store.to_us(when)
    row[COLUMN_INDEX["artifact_id"]] = artifact
    row[COLUMN_INDEX["organization_id"]] = "org-1"
    return row


def upload_tree(local: Path, url: str) -> list[str]:
    """Copy a local data root's synced areas to the object-store root (what another
    host's Recorder would have uploaded); the relative paths uploaded."""
    root = remote.open_root(url)
    done = []
    for path in sorted(local.rglob("*")):
        rel = path.relative_to(local).as_posix()
        if path.is_file() and not path.name.startswith(".") and not rel.startswith(("_state", "_spool")):
            root.put(path, rel)
            done.append(rel)
    return done


def remote_files(url: str, area: str = "") -> list[str]:
    return [f.rel for f in remote.open_root(url).list(area)]


def voicepipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a real subprocess (it inherits the AWS_* and VOICEPIPE_CACHE
    variables the s3_root fixture set)."""
    return subprocess.run(
        [sys.executable, "-m", "voicepipe_obs.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def small_files(root: Path, n: int = 3) -> None:
    """``n`` small event files in each of two closed hours (compaction's input)."""
    for i in range(n):
        rows = [
            ev(f"e{h}-{i}-{j}", HOUR0 + dt.timedelta(hours=h, minutes=i * 5 + j))
            for h in (0, 1)
            for j in (0, 1)
        ]
        store.write_event_rows(root, rows, f"small-{i}")


def pulled_small_files(s3_root: str, tmp_path: Path) -> tuple[Mirror, list[str]]:
    """:func:`small_files` uploaded to the bucket (another host's recorders), and a
    mirror that pulled them; the keys uploaded."""
    local = tmp_path / "pipeline"
    small_files(local)
    uploaded = upload_tree(local, s3_root)
    mirror = Mirror(s3_root)
    mirror.pull()
    return mirror, uploaded


def failed_in_bucket(s3_root: str, tmp_path: Path, artifact_id: str) -> None:
    """An artifact that failed at transcription, recorded by another host's pipeline
    and uploaded to the bucket."""
    local = tmp_path / "pipeline"
    with vp.Recorder(local, strict=True) as rec:
        record_failed(rec, artifact_id, stage="transcription")
    upload_tree(local, s3_root)


def unreadable_file(path: Path) -> None:
    """A file that can be listed but never read, even by root: a Unix socket
    (``open()`` fails with ENXIO). What makes an upload fail for real."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("sock")  # relative to the test's working directory: short enough for AF_UNIX
    os.replace("sock", path)


# ------------------------------------------------------------------ the CLI


def test_report_events_reads_what_a_recorder_uploaded(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    with vp.Recorder(local, strict=True) as rec:
        for i in range(3):
            rec.emit("artifact_received", artifact_id=f"art-{i}", organization_id="org-1")
    assert upload_tree(local, s3_root)

    done = voicepipe("--data", s3_root, "report", "events", "--format", "json")

    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert sorted(r["artifact_id"] for r in rows) == ["art-0", "art-1", "art-2"]
    mirror = remote.cache_dir(s3_root, "mirror")
    assert mirror.parent == tmp_path / "cache" and list((mirror / "events").rglob("*.parquet"))
    assert (mirror / "_state" / "remote-manifest.json").is_file()


def test_the_root_can_come_from_the_environment_or_the_config(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    store.write_event_rows(local, [ev("e1", HOUR0)], "one")
    upload_tree(local, s3_root)
    (tmp_path / "voicepipe.toml").write_text(f'data = "{s3_root}"\n')

    from_config = voicepipe("report", "events", "--format", "csv")
    from_env = voicepipe("report", "events", "--format", "csv", env={"VOICEPIPE_DATA": s3_root})
    shown = voicepipe("config", "show", "--format", "json")

    assert from_config.returncode == 0 and "e1" in from_config.stdout, from_config.stderr
    assert from_env.returncode == 0 and "e1" in from_env.stdout, from_env.stderr
    settings = {s["key"]: s["value"] for s in json.loads(shown.stdout)["settings"]}
    assert settings["data"] == s3_root  # not mangled into s3:/bucket
    assert not (tmp_path / "s3:").exists()


def test_aggregate_pushes_its_snapshots_to_the_bucket(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    store.write_event_rows(
        local, [ev(f"e{i}", HOUR0 + dt.timedelta(minutes=i), f"a{i}") for i in range(4)], "x"
    )
    upload_tree(local, s3_root)

    done = voicepipe("--data", s3_root, "aggregate", "--now", NOW.isoformat())

    assert done.returncode == 0, done.stderr
    hourly = remote_files(s3_root, "snapshots/hourly")
    assert hourly and all(rel.endswith(".parquet") for rel in hourly)
    root = remote.open_root(s3_root)
    table = pq.read_table(root.path(hourly[0]), filesystem=root.fs)  # plain pyarrow, from S3
    assert table.num_rows > 0 and "period_start" in table.column_names
    assert remote_files(s3_root, "snapshots/daily")
    assert not [f for f in remote_files(s3_root) if f.startswith(("_state", "_spool"))]  # local bookkeeping


def test_compact_uploads_the_merged_file_then_deletes_the_small_ones(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    small_files(local)
    before = upload_tree(local, s3_root)
    assert len(before) == 6

    done = voicepipe("--data", s3_root, "compact", "--grace", "0s", "--now", NOW.isoformat())

    assert done.returncode == 0, done.stderr
    after = remote_files(s3_root, "events")
    assert len(after) == 2 and all(rel.rsplit("/", 1)[1].startswith("compact-") for rel in after)
    con = vp.connect(s3_root)
    assert con.execute("SELECT count(*) FROM events").fetchone() == (12,)


def test_a_file_that_arrived_after_the_pull_is_never_deleted(s3_root: str, tmp_path: Path) -> None:
    mirror, _ = pulled_small_files(s3_root, tmp_path)
    # another host's Recorder uploads a late event into the same hour meanwhile
    late = tmp_path / "late"
    store.write_event_rows(late, [ev("late-1", HOUR0 + dt.timedelta(minutes=50))], "late")
    [late_rel] = upload_tree(late, s3_root)

    maintenance.compact(mirror.path, now=NOW, grace=dt.timedelta(0))
    mirror.push()

    names = sorted(rel.rsplit("/", 1)[1] for rel in remote_files(s3_root, "events"))
    assert late_rel in remote_files(s3_root, "events")
    assert len(names) == 3 and sum(n.startswith("compact-") for n in names) == 2
    ids = {r[0] for r in vp.connect(s3_root).execute("SELECT event_id FROM events").fetchall()}
    assert len(ids) == 13 and "late-1" in ids


def test_cleanup_deletes_past_retention_partitions_remotely(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    old = NOW - dt.timedelta(days=120)
    store.write_event_rows(local, [ev("old", old), ev("new", NOW - dt.timedelta(hours=3))], "x")
    upload_tree(local, s3_root)

    done = voicepipe("--data", s3_root, "cleanup", "--now", NOW.isoformat())

    assert done.returncode == 0, done.stderr
    left = remote_files(s3_root, "events")
    assert len(left) == 1 and f"date={(NOW - dt.timedelta(hours=3)):%Y-%m-%d}" in left[0]
    assert not list((remote.cache_dir(s3_root, "mirror") / "events").glob(f"date={old:%Y-%m-%d}"))


def test_demo_writes_into_the_bucket(s3_root: str) -> None:
    done = voicepipe(
        "--data",
        s3_root,
        "demo",
        "--days",
        "1",
        "--artifacts-per-day",
        "5",
        "--live",
        "0",
        "--format",
        "json",
    )

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["root"] == s3_root
    assert any(f"--data {s3_root}" in cmd for cmd, _ in summary["commands"])
    assert remote_files(s3_root, "events")
    count = vp.connect(s3_root).execute("SELECT count(*) FROM events").fetchone()
    assert count is not None and count[0] == summary["events"]


def test_demo_reset_replaces_the_buckets_demo_data(s3_root: str) -> None:
    args = ("--data", s3_root, "demo", "--days", "1", "--artifacts-per-day", "5", "--live", "0")
    first = voicepipe(*args)
    assert first.returncode == 0, first.stderr
    old = set(remote_files(s3_root, "events"))

    again = voicepipe(*args, "--seed", "8", "--reset")

    assert again.returncode == 0, again.stderr
    new = set(remote_files(s3_root, "events"))
    assert new and not (old & new)  # the old demo's files were deleted remotely, not merged


def test_errors_about_the_root_name_its_url(s3_root: str) -> None:
    done = voicepipe("--data", s3_root, "report", "events")

    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"voicepipe: error: no events under {s3_root}:"), line
    assert f"(local mirror: {remote.cache_dir(s3_root, 'mirror')})" in line


def test_commands_on_one_host_take_turns_on_the_mirror(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    store.write_event_rows(local, [ev("e1", HOUR0)], "one")
    upload_tree(local, s3_root)
    path = mirrored(s3_root)

    with store.run_lock(path, "mirror.lock", command="test"):  # another command's pull or push
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voicepipe_obs.cli",
                "--data",
                s3_root,
                "report",
                "events",
                "--format",
                "csv",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert proc.poll() is None  # waiting for the lock
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "e1" in out, err


def test_refresh_pulls_again_for_a_redraw_loop(s3_root: str, tmp_path: Path) -> None:
    from voicepipe_obs.cli import AppContext

    app = AppContext(data=s3_root)
    root = app.root
    assert not list(root.rglob("*.parquet"))
    local = tmp_path / "pipeline"
    store.write_event_rows(local, [ev("e1", HOUR0)], "one")
    [rel] = upload_tree(local, s3_root)

    assert app.refresh() == root and (root / rel).is_file()
    app.sync_back()  # nothing changed here: nothing uploaded or deleted
    assert remote_files(s3_root) == [rel]


def test_follow_prints_events_that_reach_the_bucket_after_it_started(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    now = dt.datetime.now(UTC)
    store.write_event_rows(local, [ev("before", now - dt.timedelta(seconds=30))], "one")
    upload_tree(local, s3_root)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "voicepipe_obs.cli", "--data", s3_root, "report", "events"),
            *("--follow", "--interval", "0.2", "--format", "csv"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
    try:
        assert "event_id" in lines.get(timeout=60) and "before" in lines.get(timeout=60)
        later = tmp_path / "later"
        store.write_event_rows(later, [ev("after", dt.datetime.now(UTC))], "two")
        upload_tree(later, s3_root)
        assert "after" in lines.get(timeout=60)  # only a pull per poll brings it
    finally:
        proc.terminate()
        proc.wait(30)


def test_suggested_retry_commands_name_the_url_not_the_mirror(s3_root: str, tmp_path: Path) -> None:
    failed_in_bucket(s3_root, tmp_path, "art-f")

    shown = voicepipe("--data", s3_root, "report", "artifact", "art-f")

    assert shown.returncode == 0, shown.stderr
    assert f"voicepipe --data {s3_root} retry art-f" in shown.stdout
    assert str(remote.cache_dir(s3_root, "mirror")) not in shown.stdout


# ------------------------------------------------------------------ failures


def test_an_unreachable_store_is_one_line_and_exit_1(tmp_path: Path) -> None:
    url = "s3://bucket/data?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "VOICEPIPE_CACHE": str(tmp_path / "c")}

    done = voicepipe("--data", url, "report", "events", env=env)

    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voicepipe: error: object-store root s3://bucket/data"), (
        lines
    )
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_store_that_never_answers_fails_the_command_in_bounded_time(tmp_path: Path) -> None:
    """A listener that accepts connections and never answers (a hung proxy or
    endpoint): the SDK's defaults waited 1 min 40 s for one listing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    url = f"s3://bucket/data?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "VOICEPIPE_CACHE": str(tmp_path / "c")}
    try:
        started = time.monotonic()
        done = voicepipe("--data", url, "report", "events", env=env)
        took = time.monotonic() - started
    finally:
        listener.close()
        for conn in accepted:
            conn.close()

    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert took < 60, took


def test_a_failed_upload_deletes_nothing_remotely(s3_root: str, tmp_path: Path) -> None:
    mirror, _ = pulled_small_files(s3_root, tmp_path)
    maintenance.compact(mirror.path, now=NOW, grace=dt.timedelta(0))
    unreadable_file(mirror.path / "quarantine" / "stuck.parquet")

    with pytest.raises(StoreError, match="nothing deleted remotely") as info:
        mirror.push()

    assert "\n" not in str(info.value)
    events = remote_files(s3_root, "events")
    assert len(events) == 8  # the 6 small files are all still there, beside the 2 merged ones
    (mirror.path / "quarantine" / "stuck.parquet").unlink()
    mirror.push()  # once every upload goes through, the small files go
    assert len(remote_files(s3_root, "events")) == 2


def test_a_failing_push_after_a_command_says_so_and_exits_1(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    store.write_event_rows(local, [ev("e1", HOUR0)], "one")
    upload_tree(local, s3_root)
    unreadable_file(mirrored(s3_root) / "quarantine" / "stuck.parquet")

    done = voicepipe("--data", s3_root, "report", "events", "--format", "csv")

    assert done.returncode == 1
    assert "e1" in done.stdout  # the report itself ran
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not all sent to the object store" in lines[0], done.stderr


def test_another_hosts_deletion_is_reflected_after_a_pull(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    small_files(local, n=2)
    rels = upload_tree(local, s3_root)
    path = mirrored(s3_root)
    assert (path / rels[0]).is_file()

    remote.open_root(s3_root).delete(rels[0])  # another host's compaction or cleanup
    mirrored(s3_root)

    assert not (path / rels[0]).exists()
    assert (path / rels[1]).is_file()


def test_a_rebuilt_snapshot_replaces_the_local_copy(s3_root: str) -> None:
    root = remote.open_root(s3_root)
    rel = "snapshots/hourly/date=2026-05-04/hour-06.parquet"
    root.put_bytes(b"PAR1 first PAR1", rel)
    path = mirrored(s3_root)
    root.put_bytes(b"PAR1 second, longer PAR1", rel)  # rebuilt on another host

    mirrored(s3_root)

    assert (path / rel).read_bytes() == b"PAR1 second, longer PAR1"


def test_local_bookkeeping_stays_local_and_unknown_remote_prefixes_are_untouched(s3_root: str) -> None:
    root = remote.open_root(s3_root)
    root.put_bytes(b"outbox", "_outbox/whatever.bin")
    with synced(s3_root) as path:
        (path / "_state" / "mine.json").write_text("{}")
    assert remote_files(s3_root) == ["_outbox/whatever.bin"]


def test_a_local_deletion_not_pushed_yet_is_not_undone_by_another_pull(s3_root: str, tmp_path: Path) -> None:
    compacting, _ = pulled_small_files(s3_root, tmp_path)
    maintenance.compact(compacting.path, now=NOW, grace=dt.timedelta(0))

    reporting = Mirror(s3_root)  # another command on this host, before compact's push
    reporting.pull()

    names = sorted(p.name for p in (reporting.path / "events").rglob("*.parquet"))
    assert len(names) == 2 and all(n.startswith("compact-") for n in names)
    reporting.push()  # it may send compact's changes itself: merged files first, then deletions
    assert sorted(rel.rsplit("/", 1)[1] for rel in remote_files(s3_root, "events")) == names
    compacting.push()  # nothing left to do
    assert len(remote_files(s3_root, "events")) == 2


def test_a_local_name_no_store_can_hold_is_left_out_not_a_crash(s3_root: str) -> None:
    path = mirrored(s3_root)
    (path / "quarantine").mkdir(parents=True, exist_ok=True)
    bad = os.fsencode(path / "quarantine") + b"/caf\xe9.parquet"  # Latin-1, not UTF-8
    with open(bad, "wb") as fh:
        fh.write(b"x")
    (path / "quarantine" / "ok.parquet").write_bytes(b"y")

    Mirror(s3_root).push()

    assert remote_files(s3_root) == ["quarantine/ok.parquet"]


def test_keys_that_would_land_outside_the_mirror_are_skipped() -> None:
    from voicepipe_obs.mirror import _safe

    assert _safe("events/date=2026-05-04/hour=06/a.parquet")
    for rel in ("events/../../etc/cron.d/x", "events/./a", "events//a", "..", "events"):
        assert not _safe(rel), rel


# ------------------------------------------------------------------ the library


def test_connect_reads_an_object_store_root(s3_root: str, tmp_path: Path) -> None:
    local = tmp_path / "pipeline"
    store.write_event_rows(local, [ev("e1", HOUR0), ev("e2", HOUR0)], "a")
    store.write_event_rows(local, [ev("e2", HOUR0)], "b")  # a duplicate: deduplicated
    upload_tree(local, s3_root)

    con = vp.connect(s3_root)

    assert con.execute("SELECT count(*) FROM events").fetchone() == (2,)
    assert con.execute("SELECT count(*) FROM events_raw").fetchone() == (3,)


def test_connect_takes_an_object_store_root_from_the_environment(
    s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "pipeline"
    store.write_event_rows(local, [ev("e1", HOUR0)], "a")
    upload_tree(local, s3_root)
    monkeypatch.setenv("VOICEPIPE_DATA", s3_root)

    assert vp.connect().execute("SELECT count(*) FROM events").fetchone() == (1,)


def test_resolve_root_refuses_an_object_store_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"object-store root.*mirrored") as info:
        store.resolve_root("s3://bucket/prefix?secret_key=SEKRIT")
    assert "\n" not in str(info.value) and "SEKRIT" not in str(info.value)
    monkeypatch.setenv("VOICEPIPE_DATA", "s3://bucket/prefix")
    with pytest.raises(StoreError, match="object-store root"):
        store.resolve_root(None)
    from voicepipe_obs import aggregate

    with pytest.raises(StoreError, match="object-store root"):
        maintenance.compact("s3://bucket/prefix", now=NOW)
    with pytest.raises(StoreError, match="object-store root"):
        aggregate.aggregate("s3://bucket/prefix", now=NOW)
    assert not (tmp_path / "s3:").exists()


def test_retry_with_a_handler_recording_to_the_same_bucket(s3_root: str, tmp_path: Path) -> None:
    """The handler's recorder writes to the object store through its outbox, the
    retry's own events go into the mirror and are pushed: both reach the bucket, and
    nothing warns that the handler records somewhere else."""
    failed_in_bucket(s3_root, tmp_path, "a-1")
    tests_dir = Path(__file__).resolve().parent

    done = voicepipe(
        "--data",
        s3_root,
        "retry",
        "a-1",
        "--app",
        "retry_apps.other_root",
        env={"RETRY_APP_OTHER_ROOT": s3_root, "PYTHONPATH": str(tests_dir)},
    )

    assert done.returncode == 0, done.stderr
    assert "records into" not in done.stderr
    con = vp.connect(s3_root)
    types = {t for (t,) in con.execute("SELECT event_type FROM events WHERE artifact_id = 'a-1'").fetchall()}
    assert {"retry_initiated", "transcription_completed"} <= types, types
    status = con.execute("SELECT status FROM artifacts WHERE artifact_id = 'a-1'").fetchone()
    assert status is not None and status[0] == "completed"


def test_public_report_functions_refuse_an_object_store_uri(s3_root: str) -> None:
    from voicepipe_obs import reports

    now = NOW
    calls = {
        "dashboard": lambda: reports.dashboard(s3_root, now=now),  # type: ignore[arg-type]
        "alerts": lambda: reports.alerts(s3_root, now=now),  # type: ignore[arg-type]
        "organizations": lambda: reports.organizations(s3_root),  # type: ignore[arg-type]
        "iter_events": lambda: reports.iter_events(s3_root, now=now),  # type: ignore[arg-type]
    }
    for name, call in calls.items():
        with pytest.raises(StoreError, match=r"is an object-store root.*mirrored") as info:
            call()
        assert "\n" not in str(info.value), name
    assert reports.organizations.__name__ == "organizations"  # still the documented function


def test_a_mirror_removed_while_a_command_runs_never_empties_the_store(s3_root: str, tmp_path: Path) -> None:
    """The manifest is read from disk at push time: with none there (the mirror was
    deleted to start afresh while a long command ran), the push uploads only."""
    import shutil

    mirror, before = pulled_small_files(s3_root, tmp_path)

    shutil.rmtree(mirror.path)  # "to start a mirror afresh, delete its whole directory"
    snapshot = "snapshots/hourly/date=2026-05-04/hour-06.parquet"
    (mirror.path / snapshot).parent.mkdir(parents=True)  # the command goes on writing
    (mirror.path / snapshot).write_bytes(b"PAR1 snapshot PAR1")
    mirror.push()

    assert sorted(remote_files(s3_root, "events")) == sorted(before)
    assert remote_files(s3_root, "snapshots") == [snapshot]
    # and only an explicit reset deletes what the manifest knew
    mirror.pull()
    mirror.expect_reset()
    shutil.rmtree(mirror.path / "events")
    shutil.rmtree(mirror.path / "_state")
    mirror.push()
    assert remote_files(s3_root, "events") == []


def test_without_a_manifest_the_remote_copy_wins(s3_root: str) -> None:
    root = remote.open_root(s3_root)
    rel = "snapshots/hourly/date=2026-05-04/hour-06.parquet"
    root.put_bytes(b"PAR1 OLD-snapshot PAR1", rel)
    path = mirrored(s3_root)
    root.put_bytes(b"PAR1 NEW-rebuilt-snapshot!! PAR1", rel)  # rebuilt on another host
    (path / "_state" / "remote-manifest.json").write_text("{not json")

    mirror = Mirror(s3_root)
    mirror.pull()
    mirror.push()

    assert (path / rel).read_bytes() == b"PAR1 NEW-rebuilt-snapshot!! PAR1"
    assert root.get_bytes(rel) == b"PAR1 NEW-rebuilt-snapshot!! PAR1"


def test_a_push_without_a_manifest_never_uploads_over_a_different_remote_copy(s3_root: str) -> None:
    root = remote.open_root(s3_root)
    rel = "snapshots/hourly/date=2026-05-04/hour-06.parquet"
    root.put_bytes(b"PAR1 remote PAR1", rel)
    mirror = Mirror(s3_root)
    mirror.pull()
    (mirror.path / rel).write_bytes(b"PAR1 a stale local copy PAR1")
    new = "snapshots/hourly/date=2026-05-04/hour-07.parquet"
    (mirror.path / new).write_bytes(b"PAR1 new here PAR1")
    (mirror.path / "_state" / "remote-manifest.json").unlink()

    mirror.push()

    assert root.get_bytes(rel) == b"PAR1 remote PAR1"
    assert root.get_bytes(new) == b"PAR1 new here PAR1"  # a file the remote lacks is sent
    Mirror(s3_root).push()  # another command's push: still not sent
    assert root.get_bytes(rel) == b"PAR1 remote PAR1"
    mirror.pull()  # and the next pull takes the remote's
    assert (mirror.path / rel).read_bytes() == b"PAR1 remote PAR1"


def test_stray_remote_objects_are_skipped_with_one_warning(
    s3_root: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = tmp_path / "pipeline"
    store.write_event_rows(local, [ev("e1", HOUR0)], "one")
    [rel] = upload_tree(local, s3_root)
    root = remote.open_root(s3_root)
    partition = rel.rsplit("/", 2)[0]
    root.put_bytes(b"oops", partition)  # a key that is also a directory of the layout
    root.put_bytes(b"notes", "events/README.txt")
    root.put_bytes(b"x", "snapshots/weekly/date=2026-05-04/w.parquet")
    root.put_bytes(b"q", "quarantine/clash")  # a directory of that name exists here
    (remote.cache_dir(s3_root, "mirror") / "quarantine" / "clash").mkdir(parents=True)

    with caplog.at_level("WARNING", logger="voicepipe_obs.mirror"):
        path = mirrored(s3_root)
        mirrored(s3_root)  # and again: still no failure

    assert (path / rel).is_file()
    assert not (path / "events" / "README.txt").exists() and not (path / "snapshots" / "weekly").exists()
    warnings = [r for r in caplog.records if r.name == "voicepipe_obs.mirror"]
    assert len(warnings) == 2 and "skipped 4 remote object(s)" in warnings[0].getMessage()
    done = voicepipe("--data", s3_root, "report", "events", "--format", "csv")
    assert done.returncode == 0 and "e1" in done.stdout, done.stderr
    [line] = done.stderr.strip().splitlines()  # one warning, not one per key
    assert "skipped 4 remote object(s)" in line


def test_last_check_and_pending_reach_the_other_hosts(s3_root: str, tmp_path: Path) -> None:
    """``check`` runs on the cron host; ``report alerts`` anywhere sees its last check
    and pending waits: exactly these two ``_state`` files are synced."""
    local = tmp_path / "pipeline"
    store.write_event_rows(local, [ev("e1", dt.datetime.now(UTC) - dt.timedelta(minutes=5))], "one")
    upload_tree(local, s3_root)
    cron = {"VOICEPIPE_CACHE": str(tmp_path / "cron-host")}
    laptop = {"VOICEPIPE_CACHE": str(tmp_path / "laptop")}

    checked = voicepipe("--data", s3_root, "check", env=cron)
    shown = voicepipe("--data", s3_root, "report", "alerts", "--format", "json", env=laptop)

    assert checked.returncode in (0, 1, 2), checked.stderr
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["last_check"] is not None
    shared = set(remote_files(s3_root, "_shared"))  # pending.json once a wait changed
    assert "_shared/last_check.json" in shared <= {"_shared/last_check.json", "_shared/pending.json"}
    assert not remote_files(s3_root, "_state")


def test_a_state_file_changed_here_is_not_replaced_by_the_remote_copy(s3_root: str, tmp_path: Path) -> None:
    a = Mirror(s3_root, path=tmp_path / "a")
    b = Mirror(s3_root, path=tmp_path / "b")
    a.pull()
    (a.path / "_state" / "pending.json").write_text('{"v": 1}')
    (a.path / "_state" / "other.json").write_text("{}")  # the rest of _state stays local
    a.push()
    b.pull()
    assert (b.path / "_state" / "pending.json").read_text() == '{"v": 1}'
    assert not (b.path / "_state" / "other.json").exists()

    (a.path / "_state" / "pending.json").write_text('{"v": 22}')  # a's next check
    a.push()
    b.pull()
    assert (b.path / "_state" / "pending.json").read_text() == '{"v": 22}'

    (b.path / "_state" / "pending.json").write_text('{"v": 333}')  # a check on b
    (a.path / "_state" / "pending.json").write_text('{"v": 4444}')  # and on a
    a.push()
    b.pull()  # b changed its copy since its last sync: kept, and its push sends it
    assert (b.path / "_state" / "pending.json").read_text() == '{"v": 333}'
    b.push()
    a.pull()  # a's copy is unchanged since its push: it takes b's
    assert (a.path / "_state" / "pending.json").read_text() == '{"v": 333}'
    assert remote.open_root(s3_root).get_bytes("_shared/pending.json") == b'{"v": 333}'
    from voicepipe_obs import alerts, damping
    from voicepipe_obs.mirror import SHARED_STATE

    assert set(SHARED_STATE) == {alerts.LAST_CHECK_FILE, damping.PENDING_FILE}  # the names check writes


def test_readme_links_reach_the_object_store_sections() -> None:
    """GitHub anchors: a duplicated heading gets ``-1``, so ``#object-store-roots``
    must name exactly one heading, the CLI's section."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", readme, flags=re.S)
    headings = re.findall(r"^(#{2,4}) (.+)$", text, flags=re.M)
    slugs: dict[str, str] = {}
    for level, title in headings:
        slug = base = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = 0
        while slug in slugs:  # as GitHub: the second one is #slug-1
            n += 1
            slug = f"{base}-{n}"
        slugs[slug] = f"{level} {title}"
    assert slugs["object-store-roots"] == "## Object-store roots"
    assert slugs["recording-to-an-object-store"] == "### Recording to an object store"
    assert "object-store-roots-1" not in slugs
    for anchor in set(re.findall(r"\]\(#([^)]+)\)", text)):
        assert anchor in slugs, anchor
        assert f"{anchor}-1" not in slugs, f"#{anchor} names two headings: {slugs[anchor]!r} first"
