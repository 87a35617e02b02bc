"""A live writer is never taken for a dead one, and a recovery never holds up the
pipeline: lock files and spool directories deleted under a running recorder, a
recoverer that takes a live writer's segment anyway (another host), a fork while
another process recovers, strict mode with no usable storage, dead spools recovered
when the next recorder opens, and batches converted to Arrow in slices.

Real recorders, real child processes and the real CLI; every check reads the raw
Parquet files with plain DuckDB (no deduplication).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

import voicepipe_obs as vp
from rawfiles import raw_ids
from voicepipe_obs import store
from voicepipe_obs.emit import _RECHECK, _SLICE, read_spool_segment
from voicepipe_obs.errors import EmitError

pytestmark = pytest.mark.timeout(120)


def voicepipe(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicepipe_obs.cli", "--data", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_deleted_lock_file_does_not_make_a_live_writer_look_dead(root: Path) -> None:
    """A temp cleaner deletes the lock file of a running recorder; `voicepipe compact`
    (another process) must leave its spool alone, and every event arrives once."""
    rec = vp.Recorder(root, flush_interval=60)
    ids = [rec.emit("rate_limit_hit", claim_count=0)]
    assert rec.flush()
    for lock in (root / "_spool").glob("*.lock"):
        lock.unlink()
    ids += [rec.emit("rate_limit_hit", claim_count=i) for i in range(1, 11)]
    time.sleep(0.5)  # the spooler appends them to a segment: a live one without a lock file
    assert list((root / "_spool").glob("*.spool"))
    result = voicepipe(root, "compact", "--grace", "0s")
    assert result.returncode == 0, result.stderr
    assert "recovered" not in result.stdout
    ids += [rec.emit("rate_limit_hit", claim_count=i) for i in range(11, 21)]
    assert rec.flush()
    assert list((root / "_spool").glob("*.lock"))  # made again with the next segment
    rec.close()
    stored = raw_ids(root)
    assert sorted(stored) == sorted(ids)  # all of them, none twice
    assert rec.stats()["written"] == 21


def test_a_writer_whose_segment_a_recoverer_took_still_writes_every_event(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recoverer on another host cannot see that the writer runs: with the lock
    file gone it recovers the live segment. The writer notices the segment is gone,
    spools its rows again (a crash now loses nothing) and writes all of them under a
    name of its own: copies, which readers drop, but no event lost."""
    # recover=False: its own start-up recovery would race with the one below
    rec = vp.Recorder(root, durability="sync", flush_interval=3600, recover=False)
    ids = [rec.emit("rate_limit_hit", claim_count=i) for i in range(10)]
    (segment,) = (root / "_spool").glob("*.spool")
    (lock,) = (root / "_spool").glob("*.lock")
    lock.unlink()
    monkeypatch.setattr(store, "_HOST", "another-host")  # the recoverer runs elsewhere
    assert vp.recover_spools(root) == (10, 1)
    monkeypatch.undo()
    assert not segment.exists()
    time.sleep(_RECHECK + 0.05)  # the writer looks at its segment at most this often
    ids += [rec.emit("rate_limit_hit", claim_count=i) for i in range(10, 20)]
    # spooled again, with the rows the recoverer took: a SIGKILL now loses nothing
    assert sorted(r[0] for r in read_spool_segment(segment)) == list(range(1, 21))
    assert lock.exists()
    assert rec.flush()
    rec.close()
    stored = raw_ids(root)
    assert set(stored) == set(ids)
    assert len(stored) == 30  # the recovered ten twice: readers count each event_id once
    assert len(vp.connect(root).execute("SELECT * FROM events").fetchall()) == 20


ROOT_DELETED = r"""
import os, shutil, sys, time
import voicepipe_obs as vp

root = sys.argv[1]
rec = vp.Recorder(root)
rec.emit("rate_limit_hit", claim_count=-1)
rec.flush()
shutil.rmtree(root)  # an operator wipes the data directory under a running pipeline
rec.emit("rate_limit_hit", claim_count=-2)
rec.flush()  # the writer makes events/ again
for i in range(10):
    rec.emit("rate_limit_hit", claim_count=i)
time.sleep(0.6)  # past the spool interval (0.2 s), before the flush interval (1 s)
print(rec.stats()["spooled"], flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_deleted_spool_directory_is_made_again_and_a_crash_loses_nothing(
    tmp_path: Path, root: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(ROOT_DELETED)
    proc = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr
    assert int(proc.stdout.split()[0]) >= 12  # the ten were spooled after the deletion
    # the next recorder recovers them when it opens, without an emit
    with vp.Recorder(root) as later:
        pass
    assert later.stats()["recovered"] == 10
    counts = (
        duckdb.connect()
        .execute(f"SELECT claim_count FROM read_parquet('{root}/events/*/*/*.parquet')")
        .fetchall()
    )
    assert sorted(c for (c,) in counts) == [-2, *range(10)]


def test_the_next_recorder_recovers_dead_spools_when_it_opens(root: Path) -> None:
    pid = os.fork()
    if pid == 0:  # a writer that dies without flushing
        code = 1
        try:
            rec = vp.Recorder(root, durability="sync", flush_interval=3600)
            for i in range(7):
                rec.emit("rate_limit_hit", claim_count=i)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    rec = vp.Recorder(root)
    deadline = time.monotonic() + 30
    while len(raw_ids(root)) < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(raw_ids(root)) == 7  # before any emit
    rec.close()
    assert rec.stats()["recovered"] == 7


HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_neither_fork_nor_flush_waits_for_another_processs_recovery(root: Path) -> None:
    """While `voicepipe compact` (here: a process holding the recovery lock for 6 s)
    recovers under the root, a starting recorder skips recovery: its forks and
    flushes do not wait."""
    pid = os.fork()
    if pid == 0:  # a dead writer, so the new recorder has something to recover
        code = 1
        try:
            rec = vp.Recorder(root, durability="sync", flush_interval=3600)
            rec.emit("rate_limit_hit", claim_count=0)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root / "_spool" / ".recover"), "6"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        rec = vp.Recorder(root)
        rec.emit("rate_limit_hit", claim_count=1)
        time.sleep(1.0)  # the writer thread has tried to recover by now
        t0 = time.monotonic()
        child = os.fork()
        if child == 0:
            os._exit(0)
        forked = time.monotonic() - t0
        os.waitpid(child, 0)
        t0 = time.monotonic()
        assert rec.flush()
        flushed = time.monotonic() - t0
        assert forked < 2.0 and flushed < 2.0, (forked, flushed)
        rec.close()
    finally:
        holder.kill()
        holder.wait()
    assert vp.recover_spools(root) == (1, 1)  # left for the recoverer that waits


def test_strict_with_no_usable_storage_raises_and_counts_instead_of_losing(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "root-is-a-file"
    not_a_dir.write_text("")
    rec = vp.Recorder(not_a_dir, strict=True, flush_interval=60)
    assert rec.emit("rate_limit_hit") is not None  # spooling happens in the background
    time.sleep(0.4)  # the spooler fails; it must not take the event with it
    with pytest.raises(EmitError):
        rec.flush()
    assert rec.stats()["buffered"] == 1
    with pytest.raises(EmitError):
        rec.close()
    assert (rec.stats()["written"], rec.stats()["dropped"]) == (0, 1)

    sync = vp.Recorder(not_a_dir, strict=True, durability="sync", flush_interval=60)
    with pytest.raises(EmitError, match="spool write failed"):
        sync.emit("rate_limit_hit")
    assert sync.stats()["buffered"] == 1  # kept in memory, not lost
    with pytest.raises(EmitError):
        sync.close()
    assert sync.stats()["dropped"] == 1


def test_a_large_batch_across_hours_is_written_whole(root: Path) -> None:
    """Batches beyond _SLICE rows are converted in slices: every row lands in
    its hour, once, in order."""
    n = _SLICE * 2 + 123
    start = dt.datetime(2026, 3, 1, 9, 59, tzinfo=dt.timezone.utc)
    rec = vp.Recorder(root, batch_size=n + 1, flush_interval=3600, durability="memory")
    for i in range(n):
        rec.emit("rate_limit_hit", claim_count=i, timestamp=start + dt.timedelta(milliseconds=10 * i))
    assert rec.flush()
    rec.close()
    files = sorted(str(p) for p in (root / "events").rglob("*.parquet"))
    assert [Path(f).parent.name for f in files] == ["hour=09", "hour=10"]
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT count(*), count(DISTINCT event_id), min(claim_count), max(claim_count), "
        f"bool_and(hour(timestamp) = CASE WHEN claim_count < 6000 THEN 9 ELSE 10 END) "
        f"FROM read_parquet({files!r})"
    ).fetchall()
    assert rows == [(n, n, 0, n - 1, True)]
