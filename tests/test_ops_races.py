"""Operations running at once: readers (check, aggregate, window queries) while
compaction replaces files in another process; foreign files in events/; two
maintenance runs at once; what a killed run leaves behind (trash, temporary files).

Real files, real processes, real DuckDB: a compactor runs in a subprocess while
this process reads."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from voicepipe_obs import aggregate, query, store
from voicepipe_obs.cli import main

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC)
#: the last closed hours before now: compaction takes them, check reads them
FIRST_HOUR = NOW.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=4)
HOURS = 3
FILES_PER_HOUR = 40
EVENTS_PER_FILE = 5
TOTAL = HOURS * FILES_PER_HOUR * EVENTS_PER_FILE

QUIET = """
[alerts.inactivity]
enabled = false
[alerts.queue_depth]
enabled = false
[alerts.stuck]
enabled = false
"""


def write_small_files(root: Path, hour: int, *, prefix: str = "w") -> None:
    """FILES_PER_HOUR small files of received artifacts in the ``hour``-th closed hour."""
    start = FIRST_HOUR + dt.timedelta(hours=hour)
    for f in range(FILES_PER_HOUR):
        ids = [f"h{hour}-f{f}-e{e}" for e in range(EVENTS_PER_FILE)]
        ts = [store.to_us(start + dt.timedelta(seconds=f * 60 + e)) for e in range(EVENTS_PER_FILE)]
        table = store.columns_to_table(
            {
                "event_id": ids,
                "event_type": ["artifact_received"] * EVENTS_PER_FILE,
                "timestamp": ts,
                "artifact_id": ids,
                "organization_id": ["org"] * EVENTS_PER_FILE,
            },
            EVENTS_PER_FILE,
        )
        date, h = store.partition_key(ts[0])
        store.write_table(store.hour_dir(root, date, h) / f"{prefix}-{f:05d}.parquet", table)


def make_store(root: Path) -> None:
    for hour in range(HOURS):
        write_small_files(root, hour)


#: Compacts the store again and again: each round splits the compacted hours back
#: into small files (written before the compacted file is removed, as compaction
#: does), then compacts them — so files vanish under readers all the time.
CHURN = textwrap.dedent(
    """
    import datetime as dt, sys, time
    from pathlib import Path
    sys.path[:0] = [{tests!r}]
    from voicepipe_obs import maintenance, store
    import test_ops_races
    from test_ops_races import write_small_files, HOURS
    root, stop = Path(sys.argv[1]), Path(sys.argv[2])
    # the test's hours, not this import's: an hour may have begun since the test
    # module was imported (its NOW), and the files would go one hour later
    test_ops_races.FIRST_HOUR = dt.datetime.fromisoformat(sys.argv[3])
    rounds = 0
    while not stop.exists():
        maintenance.compact(root, now=dt.datetime.now(dt.timezone.utc), grace=dt.timedelta(0))
        olds = store.list_parquet(root)
        for hour in range(HOURS):
            write_small_files(root, hour, prefix=f"r{{rounds}}")
        for path in olds:
            if path.name.startswith("compact-"):
                path.unlink()
        rounds += 1
    print(rounds)
    """
)


@pytest.fixture
def churning(tmp_path: Path) -> Iterator[Path]:
    """A store of many small files in closed hours, compacted over and over by
    another process while the test runs."""
    root = tmp_path / "data"
    make_store(root)
    stop = tmp_path / "stop"
    script = tmp_path / "churn.py"
    script.write_text(CHURN.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), str(stop), FIRST_HOUR.isoformat()],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    try:
        yield root
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert int(out.strip()) > 0, "the compactor never finished a round"


def distinct_events(root: Path) -> int:
    def read(_attempt: int) -> int:
        con = query.connect(root, live=False)
        try:
            return int(con.execute("SELECT count(*) FROM events").fetchall()[0][0])
        finally:
            con.close()

    return query.retry_vanished(read)


ITERATIONS = 12


def test_check_while_compacting_exits_0_without_warnings(
    churning: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "quiet.toml"
    cfg.write_text(QUIET)
    runner = CliRunner()
    for _ in range(ITERATIONS):
        result = runner.invoke(main, ["--data", str(churning), "--config", str(cfg), "check"])
        assert result.exit_code == 0, result.output + str(result.exception)
        assert "vanished" not in result.output
    for _ in range(3):  # what check's connection reads (listed again when compaction removed a file)
        assert distinct_events(churning) == TOTAL
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "vanished" in r.getMessage()]


def test_evaluate_without_a_connection_lists_again_when_compaction_replaced_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alerts.evaluate(root) — the library call, with its own connection — lists the
    files again when compaction replaced one after a rule listed them, and sees
    every event. The race made certain: a real compaction runs right after the
    first listing."""
    from voicepipe_obs import alerts, maintenance
    from voicepipe_obs.config import Settings

    make_store(tmp_path)
    real_vetted_files = alerts.vetted_files
    listings: list[int] = []

    def list_then_compact(root: Path, **kwargs: Any) -> list[Path]:
        files = real_vetted_files(root, **kwargs)
        listings.append(len(files))
        if len(listings) == 1:
            maintenance.compact(root, now=NOW, grace=dt.timedelta(0))
        return files

    monkeypatch.setattr(alerts, "vetted_files", list_then_compact)
    settings = Settings.model_validate({"alerts": {"queue_depth": {"warning": 0}}})
    ev = alerts.evaluate(tmp_path, settings, now=NOW, rules=["queue_depth"])
    [finding] = ev.findings
    assert finding.value == TOTAL  # every artifact received, none finished
    assert listings == [HOURS * FILES_PER_HOUR, HOURS]  # listed again after compaction


def test_aggregate_while_compacting_is_complete(churning: Path) -> None:
    for _ in range(ITERATIONS // 2):
        aggregate.aggregate(churning, now=NOW, rebuild=True)
        rows = aggregate.read_snapshots(churning, "hourly", organization_id=None)
        assert sum(r["artifacts_received"] for r in rows) == TOTAL
        metrics = aggregate.window_metrics(churning, FIRST_HOUR, FIRST_HOUR + dt.timedelta(hours=HOURS))
        assert metrics[0]["artifacts_received"] == TOTAL


def test_aggregate_cli_while_compacting_exits_0(churning: Path) -> None:
    for _ in range(ITERATIONS):
        result = CliRunner().invoke(main, ["--data", str(churning), "aggregate", "--rebuild"])
        assert result.exit_code == 0, result.output + repr(result.exception)


def test_vanished_file_is_recognised_only_when_gone(tmp_path: Path) -> None:
    make_store(tmp_path)
    files = store.list_parquet(tmp_path)
    con = query.connect(tmp_path, live=False)
    files[0].unlink()
    with pytest.raises(Exception) as info:
        con.execute("SELECT count(*) FROM events").fetchall()
    assert query.vanished_file(info.value) == str(files[0])
    # relisting a directory that lost a file finds what replaced it
    store.write_table(files[0].with_name("compact-x.parquet"), pq.read_table(files[1]))
    assert files[0].with_name("compact-x.parquet") in query.relist(files)
    assert query.vanished_file(ValueError("No such file or directory")) is None


# ------------------------------------------------------------- foreign files


def foreign_files(root: Path) -> list[Path]:
    """A file of another schema and an event file whose timestamp is a string, in a
    closed hour; both just written (younger than compaction's grace)."""
    d = store.hour_dir(root, *store.partition_key(store.to_us(FIRST_HOUR)))
    foo = d / "foo.parquet"
    pq.write_table(pa.table({"foo": [1, 2, 3]}), foo)
    good = pq.read_table(d / "w-00000.parquet")
    strings = good.set_column(
        good.schema.get_field_index("timestamp"), "timestamp", pa.array(["x"] * good.num_rows)
    )
    text_ts = d / "text-ts.parquet"
    pq.write_table(strings, text_ts)
    return [foo, text_ts]


def pandas_variant(root: Path) -> Path:
    """New events written the way a pandas round trip writes them: a naive
    timestamp, integer columns as int64/double, optional columns missing."""
    d = store.hour_dir(root, *store.partition_key(store.to_us(FIRST_HOUR)))
    table = pq.read_table(d / "w-00000.parquet")
    df = table.to_pandas()
    df["timestamp"] = df["timestamp"].dt.tz_localize(None)
    df["event_id"] = df["event_id"] + "-pd"
    df["artifact_id"] = df["artifact_id"] + "-pd"
    variant = pa.Table.from_pandas(df.drop(columns=["actor", "attributes"]), preserve_index=False)
    path = d / "pandas.parquet"
    pq.write_table(variant, path)
    return path


def test_vetting_checks_the_event_schema(tmp_path: Path) -> None:
    make_store(tmp_path)
    foo, text_ts = foreign_files(tmp_path)
    variant = pandas_variant(tmp_path)
    files = store.list_parquet(tmp_path)
    good, bad = store.vet_parquet(files)
    assert dict(bad) == {
        foo: "not an event file: no event_id, event_type, timestamp columns",
        text_ts: "not an event file: column timestamp is a string, not a timestamp",
    }
    assert variant in good and len(good) == len(files) - 2
    # a file outside events/ is not held to the event schema
    other = tmp_path / "snapshots" / "hourly" / "date=2026-01-01" / "x.parquet"
    other.parent.mkdir(parents=True)
    pq.write_table(pa.table({"foo": [1]}), other)
    assert store.vet_parquet([other]) == ([other], [])


def test_foreign_files_are_skipped_by_readers_and_quarantined_by_compact(
    tmp_path: Path, runner: CliRunner
) -> None:
    root = tmp_path / "data"
    make_store(root)
    bad = foreign_files(root)
    pandas_variant(root)
    cfg = tmp_path / "quiet.toml"
    cfg.write_text(QUIET)
    head = ["--data", str(root), "--config", str(cfg)]

    result = runner.invoke(main, [*head, "aggregate"])
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    for path in bad:
        assert result.stderr.count(str(path)) == 1
    assert "`voicepipe compact` moves such files to quarantine/" in result.stderr
    rows = aggregate.read_snapshots(root, "hourly", organization_id=None)
    assert sum(r["artifacts_received"] for r in rows) == TOTAL + EVENTS_PER_FILE

    result = runner.invoke(main, [*head, "check"])
    assert result.exit_code == 0, result.stderr

    # young (default grace) but known bad: quarantined at once; the pandas file stays
    result = runner.invoke(main, [*head, "compact"])
    assert result.exit_code == 0, result.stderr
    assert "quarantined 2 files" in result.stdout
    for path in bad:
        assert not path.exists()
        assert (root / "quarantine" / path.relative_to(root)).exists()
    assert "not an event file" in result.stderr
    result = runner.invoke(main, [*head, "compact", "--grace", "0s"])
    assert result.exit_code == 0, result.stderr
    assert distinct_events(root) == TOTAL + EVENTS_PER_FILE


# ---------------------------------------------------------------- run locks

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from voicepipe_obs import store
    with store.run_lock(Path(sys.argv[1]), sys.argv[2], command="test"):
        print("held", flush=True)
        time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def hold(root: Path, name: str) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(root), name], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc.pid

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(("command", "lock"), [("compact", "compact.lock"), ("aggregate", "aggregate.lock")])
def test_a_held_run_lock_exits_5_naming_the_holder(
    tmp_path: Path, runner: CliRunner, holder: Any, command: str, lock: str
) -> None:
    make_store(tmp_path)
    pid = holder(tmp_path, lock)
    started = time.monotonic()
    result = runner.invoke(main, ["--data", str(tmp_path), command, "--wait", "0.5"])
    assert result.exit_code == 5
    assert time.monotonic() - started < 10
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {pid} " in lines[0] and lock in lines[0], result.stderr
    assert result.stdout == ""


def test_two_compactions_at_once_do_not_duplicate_the_store(tmp_path: Path) -> None:
    for hour in range(HOURS):
        write_small_files(tmp_path, hour)
        write_small_files(tmp_path, hour, prefix="x")  # more work per run
    run = textwrap.dedent(
        """
        import datetime as dt, sys
        from voicepipe_obs import maintenance
        maintenance.compact(sys.argv[1], now=dt.datetime.now(dt.timezone.utc), grace=dt.timedelta(0))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", run, str(tmp_path)]) for _ in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    files = store.list_parquet(tmp_path)
    assert len(files) == HOURS
    assert sum(pq.read_metadata(f).num_rows for f in files) == TOTAL


# -------------------------------------------------- what killed runs leave


def test_cleanup_finishes_a_killed_cleanups_trash(tmp_path: Path, runner: CliRunner) -> None:
    make_store(tmp_path)
    # what a cleanup SIGKILLed between its rename and its delete leaves behind
    day = store.hour_dir(tmp_path, *store.partition_key(store.to_us(FIRST_HOUR))).parent
    trash = tmp_path / "_state" / "trash" / f"events-{day.name[5:]}-abc123"
    trash.parent.mkdir(parents=True)
    os.rename(day, trash)
    result = runner.invoke(main, ["--data", str(tmp_path), "cleanup", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert "would remove what interrupted runs left: 1 trashed partition" in result.stdout
    assert trash.exists()
    result = runner.invoke(main, ["--data", str(tmp_path), "cleanup"])
    assert result.exit_code == 0, result.stderr
    assert "removed what interrupted runs left: 1 trashed partition" in result.stdout
    assert not trash.exists()
    result = runner.invoke(main, ["--data", str(tmp_path), "cleanup", "--dry-run"])
    assert result.stdout == ""


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path: Path, runner: CliRunner) -> None:
    make_store(tmp_path)
    d = store.hour_dir(tmp_path, *store.partition_key(store.to_us(FIRST_HOUR)))
    snap = tmp_path / "snapshots" / "hourly" / "date=2026-01-01"
    snap.mkdir(parents=True)
    stale = [d / ".compact-x.parquet.0badc0de.tmp", snap / ".hourly-x.parquet.12345678.tmp"]
    live = d / ".w-live.parquet.feedf00d.tmp"
    for path in [*stale, live]:
        path.write_bytes(b"PAR1 partial")
    old = time.time() - 2 * 3600
    for path in stale:
        os.utime(path, (old, old))
    result = runner.invoke(main, ["--data", str(tmp_path), "cleanup", "--dry-run"])
    assert "would remove what interrupted runs left: 2 temporary files" in result.stdout
    assert all(p.exists() for p in stale)
    result = runner.invoke(main, ["--data", str(tmp_path), "compact"])
    assert result.exit_code == 0, result.stderr
    assert "removed what interrupted runs left: 2 temporary files" in result.stdout
    assert not any(p.exists() for p in stale)
    assert live.exists()


def test_a_report_whose_listed_files_compaction_replaced_reads_them_all(tmp_path: Path) -> None:
    """A report lists its files, compaction then merges them (unlinking what was
    listed): the report's read lists again and sees every event, as the commands do."""
    from voicepipe_obs import Recorder, maintenance, reports

    root = tmp_path / "data"
    hour = dt.datetime(2026, 11, 20, 9, tzinfo=dt.timezone.utc)
    for part in range(4):  # four small files in one closed hour
        with Recorder(root) as rec:
            for i in range(5):
                rec.emit(
                    "rate_limit_hit", claim_count=part * 5 + i, timestamp=hour + dt.timedelta(minutes=part)
                )
    listed = reports._files(root, None, None)
    assert len(listed) == 4
    maintenance.compact(root, now=hour + dt.timedelta(hours=3), grace=dt.timedelta(0))
    assert not any(p.exists() for p in listed)
    con = reports._connect(listed)
    assert con.execute("SELECT count(*), count(DISTINCT claim_count) FROM events").fetchall() == [(20, 20)]


def _expired(root: Path, area: str) -> Path:
    """A partition of ``area`` a year old (past any default retention)."""
    part = root / area / f"date={(NOW - dt.timedelta(days=365)):%Y-%m-%d}"
    if area == store.EVENTS:
        part = part / "hour=07"
    part.mkdir(parents=True)
    (part / "x.parquet").write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    return part


def test_cleanup_drops_events_only_when_no_compact_or_aggregate_runs(
    tmp_path: Path, runner: CliRunner, holder: Any
) -> None:
    """Dropping event partitions resets aggregate's receipts index: an aggregate run
    saving its receipts after that would leave the index without every older
    receipt. So cleanup waits for both runs (and for another cleanup), and drops
    nothing when they outlast --wait."""
    events = _expired(tmp_path, store.EVENTS)
    snapshots = _expired(tmp_path, store.SNAPSHOTS_HOURLY)
    receipts = tmp_path / store.STATE / aggregate.RECEIPTS_DIR / "chunk-1.parquet"
    receipts.parent.mkdir(parents=True)
    receipts.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    for lock in ("cleanup.lock", "compact.lock", "aggregate.lock"):
        pid = holder(tmp_path, lock)
        result = runner.invoke(main, ["--data", str(tmp_path), "cleanup", "--wait", "0.5"])
        assert result.exit_code == 5, (lock, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {pid} " in lines[0] and lock in lines[0], result.stderr
        assert events.is_dir() and snapshots.is_dir() and receipts.exists()  # nothing done
        os.kill(pid, 9)
        store_lock = tmp_path / store.STATE / lock
        with store.run_lock(tmp_path, lock, command="test", timeout=10):  # the holder is gone
            assert store_lock.exists()
    pid = holder(tmp_path, "aggregate.lock")
    events.parent.rename(tmp_path / "kept")  # only snapshots past retention: no wait for aggregate
    result = runner.invoke(main, ["--data", str(tmp_path), "cleanup", "--wait", "0.5"])
    assert result.exit_code == 0, result.output
    assert not snapshots.exists() and receipts.exists()
    (tmp_path / "kept").rename(events.parent)
    os.kill(pid, 9)
    result = runner.invoke(main, ["--data", str(tmp_path), "cleanup", "--wait", "10"])
    assert result.exit_code == 0, result.output
    assert not events.parent.exists() and not receipts.exists()
    assert "dropped events/date=" in result.stdout


#: Many closed hours of small files: one compaction of them runs for seconds,
#: removing an hour's sources after each merged file, all the while.
MANY_HOURS = 160
MANY_FILES = 4
MANY_EVENTS = 3
MANY_TOTAL = MANY_HOURS * MANY_FILES * MANY_EVENTS
MANY_FIRST = FIRST_HOUR - dt.timedelta(hours=MANY_HOURS - HOURS)

COMPACT_ONCE = textwrap.dedent(
    """
    import datetime as dt, sys
    from pathlib import Path
    from voicepipe_obs import maintenance
    result = maintenance.compact(Path(sys.argv[1]), now=dt.datetime.now(dt.timezone.utc), grace=dt.timedelta(0))
    print(result.hours)
    """
)


def write_many_hours(root: Path, hours: range) -> None:
    """MANY_FILES small files per hour of ``hours``: artifacts received, then in transcription."""
    for hour in hours:
        start = MANY_FIRST + dt.timedelta(hours=hour)
        for f in range(MANY_FILES):
            ids = [f"m{hour}-f{f}-a{e}" for e in range(MANY_EVENTS)]
            ts = [store.to_us(start + dt.timedelta(seconds=f * 60 + e)) for e in range(MANY_EVENTS)]
            table = store.columns_to_table(
                {
                    "event_id": [f"{i}-r" for i in ids] + [f"{i}-t" for i in ids],
                    "event_type": ["artifact_received"] * MANY_EVENTS
                    + ["transcription_started"] * MANY_EVENTS,
                    "timestamp": ts + [t + 1 for t in ts],
                    "artifact_id": ids + ids,
                    "organization_id": ["org"] * 2 * MANY_EVENTS,
                    "pipeline_stage": [None] * MANY_EVENTS + ["transcription"] * MANY_EVENTS,
                },
                2 * MANY_EVENTS,
            )
            date, h = store.partition_key(ts[0])
            store.write_table(store.hour_dir(root, date, h) / f"w-{f:05d}.parquet", table)


def test_reports_while_a_long_compaction_runs_never_fail_nor_miss_an_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The dashboard and pipeline reports (their open artifacts from the artifact
    index where it is current, the other hours from their events) and a report's
    event read, run again and again while one compaction of many hours runs in
    another process: none fails, none warns, each sees every event. Half the
    hours are indexed (aggregate ran before they were written), so the reads mix
    the index with events that vanish under them."""
    from voicepipe_obs import reports

    root = tmp_path / "data"
    write_many_hours(root, range(0, MANY_HOURS, 2))
    aggregate.aggregate(root, now=NOW)  # the index covers the even hours
    write_many_hours(root, range(1, MANY_HOURS, 2))
    expected = {
        f"m{h}-f{f}-a{e}-{k}"
        for h in range(MANY_HOURS)
        for f in range(MANY_FILES)
        for e in range(MANY_EVENTS)
        for k in "rt"
    }
    script = tmp_path / "compact_once.py"
    script.write_text(COMPACT_ONCE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root)], env=env, stdout=subprocess.PIPE, text=True
    )
    reads = 0
    try:
        while proc.poll() is None or reads < 3:
            dash = reports.dashboard(root, now=NOW)
            assert dash["cards"]["active_artifacts"] == MANY_TOTAL
            pipe = reports.pipeline(root, now=NOW, stage="transcription")
            assert pipe["stages"][0]["in_progress_total"] == MANY_TOTAL

            def event_ids(attempt: int) -> set[str]:  # as a report reads them: retried
                con = reports._connect(reports._files(root, None, None))
                try:
                    return {r[0] for r in con.execute("SELECT DISTINCT event_id FROM events").fetchall()}
                finally:
                    con.close()

            assert query.retry_vanished(event_ids) == expected
            reads += 1
    finally:
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and int(out) == MANY_HOURS
    assert reads >= 3
    assert not [r for r in caplog.records if r.levelno >= 30], [r.getMessage() for r in caplog.records]


def test_an_hour_compacted_while_aggregate_vets_its_files_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction merges an hour between aggregate's listing and its vetting of the
    new files (a real compaction, run at that moment): the vanished files must not
    be dropped from the listing — reading them fails, the read lists again and finds
    the merged file — or the hour's events would be missing from its snapshot."""
    from voicepipe_obs import maintenance

    root = tmp_path / "data"
    make_store(root)
    real = aggregate.vetted

    def compact_then_vet(files: Any) -> Any:
        maintenance.compact(root, now=NOW, grace=dt.timedelta(0))
        return real(files)

    monkeypatch.setattr(aggregate, "vetted", compact_then_vet)
    aggregate.aggregate(root, now=NOW)
    monkeypatch.setattr(aggregate, "vetted", real)
    rows = aggregate.read_snapshots(root, "hourly", organization_id=None)
    assert sum(r["artifacts_received"] for r in rows) == TOTAL
    assert len(rows) == HOURS
