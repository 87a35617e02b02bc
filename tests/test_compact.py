"""Compaction: keeps the set of distinct events, sorts and deduplicates, leaves open
hours and young files alone, quarantines unreadable files, recovers dead processes'
spools, is idempotent — and never hides an event from a reader in another process."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicepipe_obs import maintenance, store
from voicepipe_obs.cli import main
from voicepipe_obs.events import COLUMN_INDEX, NUM_COLUMNS

UTC = dt.timezone.utc
HOUR0 = dt.datetime(2026, 5, 4, 6, tzinfo=UTC)
NOW = dt.datetime(2026, 5, 4, 12, 30, tzinfo=UTC)
NO_GRACE = dt.timedelta(0)


def ev(event_id: str, when: dt.datetime, **fields: Any) -> list[Any]:
    row: list[Any] = [None] * NUM_COLUMNS
    row[COLUMN_INDEX["event_id"]] = event_id
    row[COLUMN_INDEX["event_type"]] = fields.pop("event_type", "artifact_received")
    row[COLUMN_INDEX["timestamp"]] = store.to_us(when)
    for key, value in fields.items():
        row[COLUMN_INDEX[key]] = value
    return row


def all_rows(root: Path) -> list[tuple[Any, ...]]:
    """Every event row under the root (as comparable tuples), duplicates included."""
    files = store.list_parquet(root)
    if not files:
        return []
    table = pa.concat_tables([pq.read_table(f) for f in files])
    table = table.drop_columns(["attributes"])
    return [tuple(r.values()) for r in table.to_pylist()]


def event_files(root: Path) -> list[Path]:
    return store.list_parquet(root)


# ---------------------------------------------------------------------- content


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.tuples(
            st.integers(0, 40),  # event id number (collisions = duplicates)
            st.integers(0, 3 * 60 - 1),  # minute from HOUR0: three hours
            st.sampled_from(["a1", "a2", "a3", None]),
        ),
        min_size=1,
        max_size=60,
    ),
    files=st.integers(1, 5),
)
def test_compaction_keeps_the_set_of_distinct_events(
    tmp_path_factory: pytest.TempPathFactory, events: list[tuple[int, int, str | None]], files: int
) -> None:
    root = tmp_path_factory.mktemp("compact")
    # a duplicate event_id is the same event written twice: same content
    by_id = {i: ev(f"e{i}", HOUR0 + dt.timedelta(minutes=m), artifact_id=a) for i, m, a in events}
    rows = [by_id[i] for i, _, _ in events]
    for k in range(files):
        if rows[k::files]:
            store.write_event_rows(root, rows[k::files], f"w{k}")
    before = set(all_rows(root))
    result = maintenance.compact(root, now=NOW, grace=NO_GRACE)
    after = all_rows(root)
    assert set(after) == before
    assert len(after) == len(before)  # duplicates dropped
    assert result.events_out == len(before)
    assert result.duplicates_dropped == len(rows) - len(before)
    for path in event_files(root):
        table = pq.read_table(path)
        keys = list(zip(table["artifact_id"].to_pylist(), table["timestamp"].to_pylist(), strict=True))
        assert keys == sorted(keys, key=lambda k: (k[0] is None, k[0] or "", k[1]))


def test_one_file_per_closed_hour_with_its_sources_named(root: Path) -> None:
    for k in range(3):
        store.write_event_rows(root, [ev(f"e{k}", HOUR0 + dt.timedelta(minutes=k))], f"w{k}")
    names = sorted(p.name for p in event_files(root))
    result = maintenance.compact(root, now=NOW, grace=NO_GRACE)
    [path] = event_files(root)
    assert path.name.startswith(maintenance.COMPACTED_PREFIX)
    meta = pq.read_metadata(path).metadata
    assert sorted(json.loads(meta[maintenance.COMPACTED_FROM_KEY])) == names
    assert meta[b"voicepipe.schema_version"] == b"1"
    assert pq.read_schema(path).remove_metadata() == store.rows_to_table([]).schema.remove_metadata()
    assert (result.hours, result.files_in, result.files_out) == (1, 3, 1)


def test_open_hours_and_young_files_are_left_alone(root: Path) -> None:
    open_hour = NOW.replace(minute=5)
    for k in range(2):
        store.write_event_rows(root, [ev(f"o{k}", open_hour)], f"o{k}")
        store.write_event_rows(root, [ev(f"c{k}", HOUR0)], f"c{k}")
    young = maintenance.compact(root, now=NOW, grace=dt.timedelta(minutes=5))
    assert young.files_in == 0 and young.skipped_young == 2
    assert len(event_files(root)) == 4
    done = maintenance.compact(root, now=NOW, grace=NO_GRACE)
    assert done.files_in == 2
    assert len(event_files(root)) == 3  # the open hour keeps its two files


def test_idempotent(root: Path) -> None:
    for k in range(2):
        store.write_event_rows(root, [ev(f"e{k}", HOUR0)], f"w{k}")
    assert maintenance.compact(root, now=NOW, grace=NO_GRACE).did_something
    files = event_files(root)
    again = maintenance.compact(root, now=NOW, grace=NO_GRACE)
    assert not again.did_something
    assert event_files(root) == files
    # a late file joins the compacted one
    store.write_event_rows(root, [ev("late", HOUR0)], "late")
    third = maintenance.compact(root, now=NOW, grace=NO_GRACE)
    assert (third.files_in, third.events_out) == (2, 3)


def test_unreadable_files_are_quarantined_and_named(root: Path, runner: Any) -> None:
    store.write_event_rows(root, [ev("e1", HOUR0)], "good")
    bad = store.hour_dir(root, "2026-05-04", 6) / "torn.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    result = runner.invoke(main, ["--data", str(root), "compact", "--grace", "0s", "--now", NOW.isoformat()])
    assert result.exit_code == 0, result.stderr
    target = root / "quarantine" / "events" / "date=2026-05-04" / "hour=06" / "torn.parquet"
    assert target.exists() and not bad.exists()
    # named once (not again by the listing that found it)
    assert result.stderr == (
        f"voicepipe: warning: quarantined unreadable file (truncated (no Parquet footer)): {target}\n"
    )
    assert "quarantined 1 file" in result.stdout
    assert [r[0] for r in all_rows(root)] == ["e1"]


def test_cli_is_quiet_when_there_is_nothing_to_do(root: Path, runner: Any) -> None:
    for k in range(2):
        store.write_event_rows(root, [ev(f"e{k}", HOUR0)], f"w{k}")
    args = ["--data", str(root), "compact", "--grace", "0s", "--now", NOW.isoformat()]
    first = runner.invoke(main, args)
    assert first.exit_code == 0
    assert first.stdout == "compacted 2 files into 1 (1 hour, 0 duplicate events dropped)\n"
    second = runner.invoke(main, args)
    assert (second.exit_code, second.stdout, second.stderr) == (0, "", "")
    bad = runner.invoke(main, ["--data", str(root), "compact", "--grace", "soon"])
    assert bad.exit_code == 2 and "invalid duration" in bad.stderr


def test_spools_of_dead_processes_are_recovered(root: Path, runner: Any) -> None:
    script = textwrap.dedent(
        f"""
        import os, voicepipe_obs as vp
        rec = vp.Recorder({str(root)!r}, durability="sync", flush_interval=3600, recover=False)
        for i in range(5):
            rec.emit("artifact_received", artifact_id=f"a{{i}}", timestamp={HOUR0.timestamp()})
        os._exit(0)  # dies without flushing: the events are only in the spool
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert all_rows(root) == []
    result = runner.invoke(main, ["--data", str(root), "compact", "--grace", "0s", "--now", NOW.isoformat()])
    assert result.exit_code == 0, result.stderr
    assert "recovered 5 events from 1 spool segment" in result.stdout
    assert sorted(r[COLUMN_INDEX["artifact_id"]] for r in all_rows(root)) == [f"a{i}" for i in range(5)]


# ------------------------------------------------------------- concurrent reader

READER = """
import sys, time, duckdb, pathlib
root, out, stop = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
con = duckdb.connect()
lines = []
while not stop.exists():
    try:
        n = con.execute(
            f"SELECT count(DISTINCT event_id) FROM read_parquet('{root}/events/*/*/*.parquet')"
        ).fetchall()[0][0]
    except duckdb.Error as exc:  # a file listed then deleted before it was opened: read again
        lines.append("retry")
        continue
    lines.append(str(n))
    out.write_text("\\n".join(lines))
out.write_text("\\n".join(lines) + "\\ndone")
"""


def test_a_concurrent_reader_never_misses_an_event(root: Path, tmp_path: Path) -> None:
    n_events = 0
    everything = []
    for hour in range(12):
        for k in range(6):
            when = HOUR0 - dt.timedelta(hours=hour)
            rows = [ev(f"h{hour}-f{k}-{i}", when + dt.timedelta(minutes=i)) for i in range(20)]
            store.write_event_rows(root, rows, f"w{k}")
            everything += rows
            n_events += len(rows)
    out, stop = tmp_path / "reader.out", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root), str(out), str(stop)])
    overlapped = False
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().strip()):  # the reader is running
            assert time.monotonic() < deadline and reader.poll() is None
            time.sleep(0.05)
        for attempt in range(5):
            seen_before = len(out.read_text().split())
            result = maintenance.compact(root, now=NOW, grace=NO_GRACE)
            if len(out.read_text().split()) > seen_before:  # it really read while compaction ran
                overlapped = True
                break
            # a busy machine let compaction finish between two reads: give it the
            # same work again (copies of every event: the distinct count stays)
            store.write_event_rows(root, everything, f"again{attempt}")
        time.sleep(0.3)
    finally:
        stop.touch()
        reader.wait(timeout=60)
    assert overlapped
    assert result.hours == 12 and len(event_files(root)) == 12
    lines = out.read_text().split()
    assert lines[-1] == "done"
    counts = [int(x) for x in lines[:-1] if x != "retry"]
    assert counts and all(c == n_events for c in counts), sorted(set(counts))
    assert os.environ.get("VOICEPIPE_DATA") is None


def test_compact_of_an_unwritable_root_is_a_store_error(root: Path) -> None:
    """A path in the layout that is a file (a real failure: mkdir cannot make it a
    directory) gives StoreError, never a bare OSError; nothing is deleted."""
    from voicepipe_obs.errors import StoreError

    store.write_event_rows(root, [ev("e1", HOUR0)], "a")
    store.write_event_rows(root, [ev("e2", HOUR0)], "b")
    bad = store.hour_dir(root, "2026-05-04", 6) / "torn.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    (root / "quarantine").write_text("a file where the quarantine directory belongs")
    with pytest.raises(StoreError, match=f"cannot write under {root} .*quarantine"):
        maintenance.compact(root, now=NOW, grace=NO_GRACE)
    assert bad.read_bytes() == b"PAR1 this is not really parquet"
    assert sorted(p.name for p in event_files(root)) == ["a.parquet", "b.parquet", "torn.parquet"]


def test_sources_outlive_their_merged_file_for_a_moment(root: Path) -> None:
    """A directory read while compaction renames an hour's merged file in and
    unlinks its sources may return neither (readdir leaves concurrent changes
    unspecified), and a reader would see the hour empty with nothing to retry on. So
    the sources stay at least UNLINK_DELAY after their merged file appears: watched
    here from another thread, every listing of an hour holds all its sources or its
    merged file, and the sources go only once the merged file has been there a while."""
    import threading

    hours = [HOUR0 + dt.timedelta(hours=h) for h in range(3)]
    for h, when in enumerate(hours):
        for k in range(3):
            store.write_event_rows(root, [ev(f"h{h}-e{k}", when + dt.timedelta(minutes=k))], f"w{h}-{k}")
    dirs = sorted({p.parent for p in event_files(root)})
    sources = {d: sorted(p.name for p in d.glob("*.parquet")) for d in dirs}
    merged_seen: dict[Path, float] = {}
    sources_gone: dict[Path, float] = {}
    bad: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for d in dirs:
                names = [n for n in os.listdir(d) if n.endswith(".parquet") and not n.startswith(".")]
                now = time.monotonic()
                merged = any(n.startswith(maintenance.COMPACTED_PREFIX) for n in names)
                if merged:
                    merged_seen.setdefault(d, now)
                if not set(sources[d]) <= set(names):
                    sources_gone.setdefault(d, now)
                    if not merged:
                        bad.append(f"{d.name}: {names}")
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = maintenance.compact(root, now=NOW, grace=NO_GRACE)
        time.sleep(0.05)
    finally:
        stop.set()
        watcher.join()
    assert result.hours == 3 and not bad
    for d in dirs:
        assert sources_gone[d] - merged_seen[d] >= 0.5, d  # UNLINK_DELAY is 1 s
        assert [p.name for p in d.glob("*.parquet")] != sources[d]  # gone once compact returned
