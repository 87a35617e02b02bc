"""Durability and concurrency of the recording core, with real threads, real forks,
real child processes killed with SIGKILL, and storage that really fails.

Every check reads the raw Parquet files with plain DuckDB (no deduplication), so a
duplicate written anywhere shows up as a repeated event_id.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import voicepipe_obs as vp
from conftest import small_tmpfs

pytestmark = pytest.mark.timeout(240)


def raw(
    root: Path, sql: str = "SELECT event_id, retry_attempt, claim_count FROM ev"
) -> list[tuple[object, ...]]:
    """Run sql over every raw event file under root (view name ``ev``)."""
    files = sorted(str(p) for p in (root / "events").rglob("*.parquet"))
    con = duckdb.connect()
    if files:
        con.execute(f"CREATE VIEW ev AS SELECT * FROM read_parquet({files!r})")
    else:
        con.execute(
            "CREATE VIEW ev AS SELECT NULL::VARCHAR AS event_id, 0 AS retry_attempt, 0 AS claim_count WHERE false"
        )
    return con.execute(sql).fetchall()


def assert_unique(root: Path) -> int:
    """No event_id twice in the raw files; returns the number of events."""
    total, distinct = raw(root, "SELECT count(*), count(DISTINCT event_id) FROM ev")[0]
    assert total == distinct, f"{total - distinct} duplicated events"  # type: ignore[operator]
    return int(total)  # type: ignore[call-overload]


# ---------------------------------------------------------------------- threads


def test_eight_threads_ten_thousand_events_each_arrive_exactly_once(root: Path) -> None:
    rec = vp.Recorder(root, strict=True, flush_interval=0.2, batch_size=5000)
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for i in range(10_000):
            rec.emit("rate_limit_hit", retry_attempt=t, claim_count=i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rec.close()
    assert rec.stats()["emitted"] == rec.stats()["written"] == 80_000
    assert assert_unique(root) == 80_000
    pairs = raw(root, "SELECT count(DISTINCT (retry_attempt, claim_count)) FROM ev")[0][0]
    assert pairs == 80_000


# ------------------------------------------------------------------------- fork


def _wait_child(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("forked child hung (deadlock after fork?)")


@pytest.mark.parametrize("durability", ["spool", "sync", "memory"])
def test_fork_writes_buffered_events_once_and_the_childs_events(root: Path, durability: str) -> None:
    rec = vp.Recorder(root, durability=durability, flush_interval=60)  # type: ignore[arg-type]
    for i in range(100):
        rec.emit("rate_limit_hit", retry_attempt=0, claim_count=i)  # buffered, not yet written
    time.sleep(0.3)  # let the spool catch up, so the segment is open across the fork
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for i in range(50):
                rec.emit("rate_limit_hit", retry_attempt=1, claim_count=i)
            rec.close()
            code = 0 if rec.stats()["written"] == 50 else 3
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0
    for i in range(100, 120):
        rec.emit("rate_limit_hit", retry_attempt=0, claim_count=i)
    rec.close()
    assert assert_unique(root) == 170
    got = raw(
        root,
        "SELECT retry_attempt, count(*), min(claim_count), max(claim_count) FROM ev GROUP BY 1 ORDER BY 1",
    )
    assert got == [(0, 120, 0, 119), (1, 50, 0, 49)]


def test_fork_while_another_thread_emits_does_not_deadlock(root: Path) -> None:
    rec = vp.Recorder(root, durability="sync", flush_interval=0.05, spool_interval=0.01, batch_size=200)
    stop = threading.Event()
    count = 0

    def hammer() -> None:
        nonlocal count
        while not stop.is_set():
            rec.emit("rate_limit_hit", retry_attempt=0, claim_count=count)
            count += 1
            if count % 50 == 0:
                time.sleep(0.001)

    th = threading.Thread(target=hammer)
    th.start()
    try:
        for child in range(1, 6):
            time.sleep(random.uniform(0.01, 0.05))
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    rec.emit("rate_limit_hit", retry_attempt=child, claim_count=0)
                    rec.close()
                    code = 0
                finally:
                    os._exit(code)
            assert _wait_child(pid, timeout=20) == 0
    finally:
        stop.set()
        th.join()
    rec.close()
    assert assert_unique(root) == count + 5
    children = raw(root, "SELECT retry_attempt FROM ev WHERE retry_attempt > 0 ORDER BY 1")
    assert children == [(1,), (2,), (3,), (4,), (5,)]


def test_a_fork_does_not_wait_for_the_writers_fsync(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork while the writer is in fsync (a slow or hung disk: the fsync stalls at
    the OS call until released) goes ahead at once, and the child's recorder writes
    its own events; the parent's write completes after."""
    import pyarrow

    pyarrow.array([0])  # the writer's first-use imports (under the fork gate) done
    rec = vp.Recorder(root, flush_interval=60)
    rec.emit("rate_limit_hit", claim_count=0)
    assert rec.flush()  # threads started and warm
    real_fsync = os.fsync
    in_fsync, release = threading.Event(), threading.Event()

    def stalled_fsync(fd: int) -> None:
        in_fsync.set()
        release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", stalled_fsync)
    rec.emit("rate_limit_hit", claim_count=1)
    flusher = threading.Thread(target=rec.flush)
    flusher.start()
    try:
        assert in_fsync.wait(30)
        timer = threading.Timer(3.0, release.set)  # a fork that waits for the fsync waits for this
        timer.start()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.fsync = real_fsync
                rec.emit("rate_limit_hit", claim_count=2)
                rec.close(timeout=30)
                code = 0 if rec.stats()["written"] == 1 else 2
            finally:
                os._exit(code)
        took, stalled = time.monotonic() - start, not release.is_set()
        assert _wait_child(pid) == 0
    finally:
        release.set()
        flusher.join(30)
    assert stalled and took < 1.0, f"fork took {took:.1f} s"
    rec.close()
    assert sorted(r[2] for r in raw(root)) == [0, 1, 2]
    assert assert_unique(root) == 3


def test_a_forked_child_that_dies_without_closing_is_recovered_once(root: Path) -> None:
    rec = vp.Recorder(root, durability="sync", flush_interval=60)
    rec.emit("rate_limit_hit", retry_attempt=0, claim_count=0)
    pid = os.fork()
    if pid == 0:
        for i in range(30):
            rec.emit("rate_limit_hit", retry_attempt=1, claim_count=i)
        os._exit(0)  # no close, no atexit: the events are only in the child's spool
    assert _wait_child(pid) == 0
    assert rec.recover() == 30
    assert rec.recover() == 0
    rec.close()
    assert assert_unique(root) == 31


# ---------------------------------------------------------------------- SIGKILL

CHILD = r"""
import os, sys, time
import voicepipe_obs as vp

root, durability, flush_interval, batch_size, round_no = sys.argv[1:6]
rec = vp.Recorder(root, durability=durability, flush_interval=float(flush_interval),
                  batch_size=int(batch_size), spool_interval=0.05)
out = sys.stdout
out.write("ready\n"); out.flush()
seq = 0
while True:
    for _ in range(20):
        rec.emit("rate_limit_hit", retry_attempt=int(round_no), claim_count=seq)
        out.write(f"{seq} {time.monotonic()}\n")  # after emit() returned
        seq += 1
    out.flush()
    time.sleep(0.005)
"""


class Child:
    """A child process that emits sequence-numbered events until it is SIGKILLed,
    printing "seq monotonic-time" after each emit() returned."""

    def __init__(
        self,
        script: Path,
        root: Path,
        durability: str,
        round_no: int,
        rng: random.Random,
        flush_interval: float | None = None,
    ) -> None:
        if flush_interval is None:
            flush_interval = rng.choice([0.05, 0.1, 0.3, 1.0])  # small ones: kills land mid-write
        batch_size = rng.choice([50, 500, 10_000])
        self.round_no = round_no
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(root),
                durability,
                str(flush_interval),
                str(batch_size),
                str(round_no),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n"
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self.lines.extend, args=(self.proc.stdout,))
        self.reader.start()
        self.kill_at = 0.0

    def kill(self) -> None:
        self.kill_at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join()

    def reported(self) -> list[tuple[int, float]]:
        """(seq, seconds before the kill) of every event whose emit() returned."""
        out = []
        for line in self.lines:
            parts = line.split()
            if len(parts) == 2 and line.endswith("\n"):  # a line cut by the kill is ignored
                out.append((int(parts[0]), self.kill_at - float(parts[1])))
        return out


@pytest.mark.parametrize(
    ("durability", "rounds", "window"), [("sync", 20, (0.05, 1.2)), ("spool", 8, (1.1, 1.8))]
)
def test_sigkill_loses_nothing_that_was_promised(
    tmp_path: Path, durability: str, rounds: int, window: tuple[float, float]
) -> None:
    """Children killed at random moments (also mid-flush, four at a time on one root);
    after recovery every event whose emit() returned (sync), or that was emitted more
    than 1 s before the kill (spool), is present, and no event is written twice."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = tmp_path / "data"
    rng = random.Random(f"sigkill-{durability}")
    for first in range(1, rounds + 1, 4):
        children = [Child(script, root, durability, n, rng) for n in range(first, min(first + 4, rounds + 1))]
        start = time.monotonic()
        for delay, child in sorted(((rng.uniform(*window), c) for c in children), key=lambda dc: dc[0]):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            child.kill()
        # recover with the library function, or with a new Recorder on the root
        if first % 8 == 1:
            vp.recover_spools(root)
        else:
            with vp.Recorder(root, strict=True) as rec:
                rec.recover()
        for child in children:
            present = {
                s for (s,) in raw(root, f"SELECT claim_count FROM ev WHERE retry_attempt = {child.round_no}")
            }
            reported = child.reported()
            assert reported, "the child never emitted"
            if durability == "sync":
                promised = {s for s, _ in reported}
            else:
                promised = {s for s, age in reported if age > 1.0}
            missing = promised - present
            assert not missing, (
                f"round {child.round_no}: {len(missing)} promised events lost, e.g. {sorted(missing)[:5]}"
            )
        assert_unique(root)
    assert not [p for p in (root / "_spool").iterdir() if p.suffix == ".spool"]


# ------------------------------------------------------------- failing storage


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level("CRITICAL", logger="voicepipe_obs")
    yield


def _break(path: Path) -> None:
    """Make a directory unusable even for root (chmod does not stop root): move it
    aside and put a regular file in its place."""
    if path.is_dir():
        path.rename(path.with_name(path.name + ".aside"))
    path.write_text("storage is down")


def _mend(path: Path) -> None:
    path.unlink()
    aside = path.with_name(path.name + ".aside")
    if aside.is_dir():
        aside.rename(path)


@pytest.mark.usefixtures("quiet_log")
def test_events_dir_failing_spool_holds_then_everything_arrives_once(root: Path) -> None:
    rec = vp.Recorder(root, flush_interval=0.05, spool_interval=0.02, batch_size=100, max_buffer=300)
    rec.emit("rate_limit_hit", claim_count=-1)
    assert rec.flush()
    _break(root / "events")
    for i in range(1000):  # more than max_buffer: the spool must take the rest
        with rec.stage("transcription"):
            rec.annotate(claim_count=i)
        if i % 100 == 0:
            time.sleep(0.03)
    time.sleep(0.2)
    s = rec.stats()
    assert s["write_errors"] >= 1 and s["dropped"] == 0 and s["written"] == 1
    assert s["buffered"] <= 300  # memory stays bounded while storage is down
    assert rec.flush() is False
    _mend(root / "events")
    assert rec.flush() is True
    rec.close()
    assert rec.stats()["written"] == 2001
    assert assert_unique(root) == 2001
    assert (
        raw(root, "SELECT count(DISTINCT claim_count) FROM ev WHERE event_type = 'transcription_completed'")[
            0
        ][0]
        == 1000
    )
    assert not [p for p in (root / "_spool").iterdir() if p.suffix == ".spool"]


@pytest.mark.usefixtures("quiet_log")
def test_storage_down_at_close_leaves_the_spool_for_the_next_recorder(root: Path) -> None:
    _break(root / "events")
    rec = vp.Recorder(root, flush_interval=0.05, spool_interval=0.02)
    for i in range(500):
        rec.emit("rate_limit_hit", claim_count=i)
    rec.close()  # cannot write: the events stay in the spool, nothing is dropped
    assert rec.stats()["dropped"] == 0
    _mend(root / "events")
    with vp.Recorder(root) as later:  # recovers when it opens (or here, whichever is first)
        later.recover()
    assert later.stats()["recovered"] == 500
    assert assert_unique(root) == 500


@pytest.mark.usefixtures("quiet_log")
@pytest.mark.parametrize("durability", ["spool", "sync", "memory"])
def test_spool_also_failing_keeps_max_buffer_then_drops_and_counts(root: Path, durability: str) -> None:
    _break(root / "events")
    _break(root / "_spool")
    rec = vp.Recorder(root, durability=durability, max_buffer=100, flush_interval=0.05, spool_interval=0.02)  # type: ignore[arg-type]
    for i in range(250):
        rec.emit("rate_limit_hit", claim_count=i)
        if i % 50 == 0:
            time.sleep(0.06)  # let the flusher try (and fail) in between
    time.sleep(0.1)
    s = rec.stats()
    assert (s["emitted"], s["dropped"], s["buffered"], s["written"]) == (250, 150, 100, 0)
    _mend(root / "events")
    _mend(root / "_spool")
    assert rec.flush()
    rec.close()
    assert rec.stats()["written"] == 100
    assert raw(root, "SELECT min(claim_count), max(claim_count), count(*) FROM ev") == [(0, 99, 100)]


@pytest.mark.usefixtures("quiet_log")
def test_a_broken_spool_counts_failed_writes_not_skipped_attempts(root: Path) -> None:
    """durability="sync": while the spool is known to be broken, emits do not try it
    again, and those skipped attempts are no write errors; the events still arrive."""
    _break(root / "_spool")
    rec = vp.Recorder(root, durability="sync", flush_interval=1.0)
    started = time.monotonic()
    ids = [rec.emit("rate_limit_hit", claim_count=i) for i in range(200)]
    s = rec.stats()
    attempts = 1 + int(time.monotonic() - started)  # the spool is retried once a second
    assert None not in ids
    assert 1 <= s["write_errors"] <= attempts and s["spooled"] == 0
    assert rec.flush()
    rec.close()
    assert rec.stats()["written"] == 200 and assert_unique(root) == 200


SPOOL_GAP_CHILD = r"""
import json, os, signal, sys, time
import voicepipe_obs as vp

root, filler, out, durability = sys.argv[1:5]
rec = vp.Recorder(root, durability=durability, flush_interval=0.2, spool_interval=0.05)
ids = [rec.emit("rate_limit_hit", claim_count=-1)]
time.sleep(0.5)  # spooled; the Parquet writes fail (events/ is a regular file)
with open(filler, "wb", buffering=0) as fh:  # the disk fills up
    try:
        while True:
            fh.write(b"x" * 65536)
    except OSError:
        pass
for i in range(1000):  # the spool appends fail: these events are in memory only
    ids.append(rec.emit("rate_limit_hit", claim_count=i))
    if i % 100 == 0:
        time.sleep(0.05)
full = rec.stats()
os.unlink(filler)  # space again
for i in range(1000, 1100):
    ids.append(rec.emit("rate_limit_hit", claim_count=i))
    time.sleep(0.01)
time.sleep(2.5)  # the spool works again; the Parquet writes still fail
with open(out, "w") as fh:
    json.dump({"ids": ids, "full": full, "later": rec.stats()}, fh)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB file system (tmpfs), to fill up; needs root (mount)."""
    with small_tmpfs(tmp_path / "small-disk", "512k") as mnt:
        yield mnt


@pytest.mark.parametrize("durability", ["spool", "sync"])
def test_events_whose_spool_write_failed_are_spooled_when_it_works_again(
    tmp_path: Path, small_disk: Path, durability: str
) -> None:
    """Parquet writes blocked, then the disk full for a while (the spool appends fail:
    the events wait in memory), then space again, then SIGKILL: the events the spool
    could not take at first were spooled once it could, so recovery finds every
    accepted event, once. Before the fix only the events emitted after the disk
    was freed survived."""
    root = small_disk / "data"
    root.mkdir()
    (root / "events").write_text("the Parquet writes fail")
    script, out = tmp_path / "child.py", tmp_path / "ids.json"
    script.write_text(SPOOL_GAP_CHILD)
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(small_disk / "filler"), str(out), durability],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["full"]["write_errors"] >= 2  # the disk was full indeed
    accepted = [i for i in got["ids"] if i is not None]
    assert len(accepted) == 1101
    (root / "events").unlink()
    recovered, _ = vp.recover_spools(root)
    present = {event_id for (event_id,) in raw(root, "SELECT event_id FROM ev")}
    missing = set(accepted) - present
    assert not missing, f"{len(missing)} accepted events lost, e.g. {sorted(missing)[:3]}"
    assert recovered == assert_unique(root) == 1101
    assert not [p for p in (root / "_spool").iterdir() if p.suffix == ".spool"]
    later = got["later"]
    assert later["spooled"] == 1101 and later["dropped"] == 0, later  # spooled once each


# ------------------------------------------------------------ spool permissions


def test_spool_is_private_regardless_of_umask(root: Path) -> None:
    (root / "_spool").mkdir(mode=0o777)
    os.chmod(root / "_spool", 0o777)
    old = os.umask(0)
    try:
        rec = vp.Recorder(root, durability="sync", flush_interval=60)
        rec.emit("rate_limit_hit")
        entries = list((root / "_spool").iterdir())
        modes = {p.suffix: stat.S_IMODE(p.stat().st_mode) for p in entries if not p.name.startswith(".")}
        assert modes == {".spool": 0o600, ".lock": 0o600}
        assert stat.S_IMODE((root / "_spool").stat().st_mode) == 0o700
        rec.close()
    finally:
        os.umask(old)


# ------------------------------------------------------------- racing recovery

RECOVERER = r"""
import sys, time
from voicepipe_obs import recover_spools
while time.time() < float(sys.argv[2]):
    pass
print(recover_spools(sys.argv[1])[0])
"""


def test_racing_recoverers_recover_exactly_once(tmp_path: Path) -> None:
    root = tmp_path / "data"
    script = tmp_path / "child.py"
    # the dead writers must not recover each other's spool (a Recorder does on first
    # use): the racing recoverers below are what is tested
    child_script = CHILD.replace("spool_interval=0.05)", "spool_interval=0.05, recover=False)")
    assert child_script != CHILD
    script.write_text(child_script)
    # two dead writers with unflushed events (flush_interval of an hour), killed
    rng = random.Random("race")
    for round_no in (1, 2):
        child = Child(script, root, "sync", round_no, rng, flush_interval=3600)
        time.sleep(0.5)
        child.kill()
    segments = len(list((root / "_spool").glob("*.spool")))
    assert segments >= 2
    # full batches the writers wrote themselves before they were killed
    written = assert_unique(root) if list(root.glob("events/*/*/*.parquet")) else 0
    rec_script = tmp_path / "recover.py"
    rec_script.write_text(RECOVERER)
    go = time.time() + 1.5  # start together
    procs = [
        subprocess.Popen(
            [sys.executable, str(rec_script), str(root), str(go)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    in_thread: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: (
                time.sleep(max(go - time.time(), 0)),
                in_thread.append(vp.recover_spools(root)[0]),
            )
        )
        for _ in range(2)
    ]
    for th in threads:
        th.start()
    counts = [int(p.communicate()[0]) for p in procs]
    for th in threads:
        th.join()
    total = assert_unique(root)
    assert sum(counts) + sum(in_thread) == total - written > 0
    assert not list((root / "_spool").glob("*.spool"))


# ------------------------------------------------------- process exit paths

EXIT_WITHOUT_CLOSE = r"""
import sys
import voicepipe_obs as vp
rec = vp.Recorder(sys.argv[1], durability="memory", flush_interval=60)
for i in range(25):
    rec.emit("rate_limit_hit", claim_count=i)
# no close(): the interpreter's exit must flush (pyarrow not imported yet)
"""


def test_a_short_script_is_flushed_at_interpreter_exit(tmp_path: Path) -> None:
    script = tmp_path / "short.py"
    script.write_text(EXIT_WITHOUT_CLOSE)
    root = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "could not" not in done.stderr, done.stderr
    assert assert_unique(root) == 25


def _pool_work(i: int) -> int:
    rec = _POOL_RECORDER[0]
    rec.emit("rate_limit_hit", claim_count=i)
    return i


_POOL_RECORDER: list[vp.Recorder] = []


def test_multiprocessing_workers_flush_at_exit(root: Path) -> None:
    """multiprocessing children end with os._exit() (no atexit); their in-memory
    events must still be written when the worker exits normally."""
    import multiprocessing

    rec = vp.Recorder(root, durability="memory", flush_interval=60)
    _POOL_RECORDER[:] = [rec]
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(2)
    try:
        assert sum(pool.map(_pool_work, range(40))) == sum(range(40))
    finally:
        pool.close()
        pool.join()
    proc = ctx.Process(target=_pool_work, args=(1000,))
    proc.start()
    proc.join(60)
    rec.close()
    assert assert_unique(root) == 41


MP_WORKER = r"""
import multiprocessing, os, sys
import voicepipe_obs as vp

ROOT, N = os.environ["VP_TEST_ROOT"], 40
# "module": a recorder made when the main module is imported (in a spawn or
# forkserver child: while the child prepares, before multiprocessing's bootstrap)
MODULE_REC = vp.Recorder(ROOT, durability="memory", flush_interval=3600) if sys.argv[2] == "module" else None

def work():
    rec = MODULE_REC or vp.Recorder(ROOT, durability="memory", flush_interval=3600)
    for i in range(N):
        with rec.artifact(f"a-{i}", organization_id="org"):
            pass
    # returns without rec.close(): multiprocessing then ends the child with os._exit()

if __name__ == "__main__":
    proc = multiprocessing.get_context(sys.argv[1]).Process(target=work)
    proc.start()
    proc.join(120)
    sys.exit(proc.exitcode)
"""


@pytest.mark.parametrize("where", ["worker", "module"])
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_multiprocessing_worker_that_returns_without_close_keeps_its_events(
    tmp_path: Path, method: str, where: str
) -> None:
    """Every start method (forkserver is Linux's default from Python 3.14) ends the
    child with os._exit(); its normal return must still flush the recorder."""
    import pyarrow.parquet as pq

    script = tmp_path / "mp_worker.py"
    script.write_text(MP_WORKER)
    root = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, str(script), method, where],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "VP_TEST_ROOT": str(root)},
    )
    assert done.returncode == 0, done.stderr
    files = list((root / "events").rglob("*.parquet")) if (root / "events").exists() else []
    ids = [eid for f in files for eid in pq.read_table(f, columns=["event_id"]).column(0).to_pylist()]
    assert len(ids) == len(set(ids)) == 80  # artifact_received + artifact_completed, 40 times


def test_a_recorder_closed_before_fork_stays_closed_in_the_child(root: Path) -> None:
    rec = vp.Recorder(root, durability="memory")
    rec.close()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            rec.emit("rate_limit_hit")
            code = 0 if rec.stats()["dropped"] == 1 and rec.stats()["emitted"] == 0 else 2
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0
    assert not (root / "events").exists()


@pytest.mark.usefixtures("quiet_log")
def test_spilled_events_whose_spool_is_deleted_are_counted_as_dropped(root: Path) -> None:
    _break(root / "events")
    rec = vp.Recorder(root, flush_interval=0.05, spool_interval=0.02)
    for i in range(300):
        rec.emit("rate_limit_hit", claim_count=i)
    assert rec.flush() is False  # storage down: the batch is released to the spool
    assert rec.stats()["buffered"] == 0
    for seg in (root / "_spool").glob("*.spool"):
        seg.unlink()  # someone "cleans up" the spool
    _mend(root / "events")
    assert rec.flush() is True
    rec.close()
    s = rec.stats()
    assert (s["emitted"], s["written"], s["dropped"]) == (300, 0, 300)


def test_a_torn_spool_tail_ends_the_segment_and_recovery_keeps_the_rest(root: Path) -> None:
    """A kill in the middle of a spool append leaves a torn record: recovery keeps
    every complete record before it and writes them once."""
    from voicepipe_obs.emit import read_spool_segment

    pid = os.fork()
    if pid == 0:  # a writer that dies without flushing
        code = 1
        try:
            rec = vp.Recorder(root, durability="sync", flush_interval=3600)
            for i in range(10):
                rec.emit("rate_limit_hit", claim_count=i)
            code = 0
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0
    (segment,) = (root / "_spool").glob("*.spool")
    data = segment.read_bytes()
    first_len = int.from_bytes(data[:4], "little")  # record: length, crc32, payload
    with open(segment, "ab") as fh:
        fh.write(data[: 8 + first_len // 2])  # a record cut short by the kill
    assert [row[0] for row in read_spool_segment(segment)] == list(range(1, 11))  # id counters
    assert vp.recover_spools(root) == (10, 1)
    assert vp.recover_spools(root) == (0, 0)
    assert raw(root, "SELECT count(*), count(DISTINCT claim_count) FROM ev") == [(10, 10)]


# ------------------------------------------------- transient errors, exit, flush helpers


def _dead_writer(root: Path, first: int, n: int) -> None:
    """A forked writer that spools n events (claim_count first..) and dies unflushed."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            rec = vp.Recorder(root, durability="sync", flush_interval=3600, recover=False)
            for i in range(first, first + n):
                rec.emit("rate_limit_hit", claim_count=i)
            code = 0
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0


def _fail_writes_once(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> list[int]:
    """store.write_table (storage, not the unit under test) fails once with exc."""
    from voicepipe_obs import store

    real, calls = store.write_table, []

    def flaky(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "write_table", flaky)
    return calls


@pytest.mark.usefixtures("quiet_log")
def test_recovery_keeps_a_segment_after_a_transient_error_and_retries_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-off failure that is not about a value (out of memory) must not set the
    segment aside for good: it stays, the other segments are recovered, and the next
    recovery writes it."""
    _dead_writer(root, 0, 100)
    _dead_writer(root, 100, 50)
    _fail_writes_once(monkeypatch, MemoryError("transient: could not allocate"))
    events, segments = vp.recover_spools(root)
    assert (events, segments) in {(100, 1), (50, 1)}  # the other writer's segment went on
    assert not list((root / "_spool").glob("*.bad"))
    assert len(list((root / "_spool").glob("*.spool"))) == 1
    assert vp.recover_spools(root) == (150 - events, 1)
    assert raw(root, "SELECT count(*), count(DISTINCT claim_count) FROM ev") == [(150, 150)]
    assert not list((root / "_spool").glob("*.spool*"))


@pytest.mark.usefixtures("quiet_log")
def test_the_writer_retries_a_batch_after_a_transient_arrow_error(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa

    rec = vp.Recorder(root, flush_interval=0.05, spool_interval=0.02)
    _fail_writes_once(monkeypatch, pa.ArrowMemoryError("transient"))
    for i in range(100):
        rec.emit("rate_limit_hit", claim_count=i)
    assert rec.flush() is False  # counted as a write error, kept for the retry
    assert rec.flush() is True
    rec.close()
    s = rec.stats()
    assert (s["written"], s["dropped"], s["write_errors"]) == (100, 0, 1)
    assert assert_unique(root) == 100
    assert not list((root / "_spool").glob("*.bad"))


ATEXIT_AFTER_MULTIPROCESSING = """
import atexit, sys
import voicepipe_obs as vp
rec = vp.Recorder(sys.argv[1], flush_interval=60)
def last_words():
    rec.emit("circuit_breaker_closed")
atexit.register(last_words)  # registered before multiprocessing is imported
import multiprocessing.util  # e.g. pulled in lazily by a library
rec.emit("circuit_breaker_opened")
"""


def test_an_event_emitted_at_exit_after_multiprocessing_is_imported_is_written(tmp_path: Path) -> None:
    """In the main process atexit closes the recorders; multiprocessing's exit hook
    must not close them first (it runs before earlier-registered atexit handlers)."""
    script = tmp_path / "script.py"
    script.write_text(ATEXIT_AFTER_MULTIPROCESSING)
    root = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert sorted(r[0] for r in raw(root, "SELECT event_type FROM ev")) == [
        "circuit_breaker_closed",
        "circuit_breaker_opened",
    ]


def _flush_helpers() -> int:
    return sum(t.name == "voicepipe-flush" for t in threading.enumerate())


def test_flush_with_a_timeout_runs_one_helper_at_a_time(root: Path) -> None:
    rec = vp.Recorder(root, flush_interval=60)
    try:
        with rec._write_lock:  # a write stuck on slow storage
            for i in range(50):
                rec.emit("rate_limit_hit", claim_count=i)
                assert rec.flush(timeout=0.001) is False
            assert _flush_helpers() <= 1
        assert rec.flush(timeout=30) is True
    finally:
        rec.close()
    assert assert_unique(root) == 50


@pytest.mark.usefixtures("quiet_log")
def test_a_flush_helper_that_outlives_close_writes_nothing(root: Path) -> None:
    """close() released the spool (another process may now recover it): a flush
    helper still running must neither write the batches nor unlink their segments."""
    _break(root / "events")
    rec = vp.Recorder(root, flush_interval=60)
    for i in range(20):
        rec.emit("rate_limit_hit", claim_count=i)
    rec.close()  # storage down: the events stay in the spool
    _mend(root / "events")
    segments = sorted((root / "_spool").glob("*.spool"))
    assert segments
    late = threading.Thread(target=rec._flush_into, args=([],), name="voicepipe-flush")
    late.start()  # what a helper started by flush(timeout=) before close() runs
    late.join()
    assert raw(root, "SELECT count(*) FROM ev") == [(0,)]
    assert sorted((root / "_spool").glob("*.spool")) == segments
    assert vp.recover_spools(root)[0] == 20
    assert assert_unique(root) == 20


# ------------------------------------------------------- storage hanging at close

HUNG_DISK_CHILD = r"""
import json, os, sys, threading, time
import voicepipe_obs as vp

root, durability, disk, ending = sys.argv[1:5]
recorders, close_timeout = int(sys.argv[5]), float(sys.argv[6])
real_fsync = os.fsync
stuck = threading.Event()  # never set
import pyarrow, pyarrow.parquet
pyarrow.array([0])  # the writer's imports done before the timing, as a long-lived process has


def fsync(fd):
    # fault injection at the OS call the Parquet writer makes (the recorder's own code
    # is unchanged): a hung NFS mount, a disk taking 1.5 s per fsync, or one that
    # works but takes 2 s per fsync
    if disk == "hung":
        stuck.wait()
    time.sleep(2.0 if disk == "working" else 1.5)
    real_fsync(fd)


os.fsync = fsync
# "working": each recorder's events in one batch, written at exit (one slow fsync)
batches = dict(flush_interval=60) if disk == "working" else dict(batch_size=100, spool_interval=0.02)
recs = [
    vp.Recorder(root, durability=durability, close_timeout=close_timeout, **batches)
    for _ in range(recorders)
]
for k, rec in enumerate(recs):
    for i in range(1000):
        rec.emit("rate_limit_hit", claim_count=k * 1000 + i)
        if i % 100 == 99 and disk != "working":
            time.sleep(0.03)  # let the spooler seal batches: the writer is stuck in the first
if ending == "close":
    start = time.monotonic()
    rec.close()
    print(json.dumps({"took": time.monotonic() - start, **rec.stats()}), flush=True)
    time.sleep(4)  # a slow write finishes after close() gave up: it must touch nothing
print(time.time(), flush=True)  # main ends: atexit closes the recorder
"""


def _run_hung_disk_child(
    tmp_path: Path, durability: str, disk: str, ending: str, recorders: int = 1, close_timeout: float = 1.0
) -> tuple[str, str, float]:
    """Run the child (``recorders`` recorders on one root, 1000 events each);
    (stdout, stderr, seconds from the end of its main to its exit)."""
    script = tmp_path / "hung.py"
    script.write_text(HUNG_DISK_CHILD)
    args = [str(tmp_path / "data"), durability, disk, ending, str(recorders), str(close_timeout)]
    try:
        done = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: close() waited for the hung disk")
    ended = time.time()
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr, ended - float(done.stdout.split()[-1])


@pytest.mark.parametrize("disk", ["hung", "slow"])
@pytest.mark.parametrize("durability", ["spool", "sync"])
def test_exit_with_hung_storage_is_bounded_and_the_spool_keeps_every_event(
    tmp_path: Path, durability: str, disk: str
) -> None:
    """Every fsync hangs (or takes 1.5 s): the interpreter's exit waits at most
    close_timeout for the final write; what was not written stays in the spool and
    is recovered afterwards, each event exactly once."""
    _, stderr, exiting = _run_hung_disk_child(tmp_path, durability, disk, "exit")
    assert exiting < 3.5, f"exit took {exiting:.1f} s"
    assert "stopped waiting for storage" in stderr, stderr
    root = tmp_path / "data"
    assert [p.name for p in (root / "events").rglob("*.parquet") if p.name.startswith(".")] == []
    vp.recover_spools(root)
    assert assert_unique(root) == 1000
    assert raw(root, "SELECT count(DISTINCT claim_count) FROM ev") == [(1000,)]
    assert not list((root / "_spool").glob("*.spool"))


@pytest.mark.parametrize("durability", ["spool", "sync"])
def test_a_write_that_completes_after_close_gave_up_is_not_recovered_twice(
    tmp_path: Path, durability: str
) -> None:
    """close() gives up while a slow write runs; the process lives on and the write
    completes: its segment stays, and recovery finds the batch written already."""
    stdout, stderr, _ = _run_hung_disk_child(tmp_path, durability, "slow", "close")
    stats = json.loads(stdout.splitlines()[0])
    assert stats["took"] < 2.5 and stats["dropped"] == 0 and stats["buffered"] == 0, stats
    assert "stay in the spool" in stderr, stderr
    root = tmp_path / "data"
    vp.recover_spools(root)
    assert assert_unique(root) == 1000
    assert not list((root / "_spool").glob("*.spool"))


def test_memory_mode_close_with_hung_storage_counts_unwritten_events_as_dropped(tmp_path: Path) -> None:
    stdout, stderr, exiting = _run_hung_disk_child(tmp_path, "memory", "hung", "close")
    stats = json.loads(stdout.splitlines()[0])
    assert stats["took"] < 2.5, stats
    assert stats["dropped"] == 1000 and stats["written"] == 0 and stats["buffered"] == 0, stats
    assert "dropped 1000 events" in stderr, stderr
    assert exiting < 1.0  # close() was called: exit has nothing left to wait for
    assert not (tmp_path / "data" / "events").exists() or raw(tmp_path / "data") == []


@pytest.mark.parametrize("durability", ["spool", "memory"])
def test_recorders_at_exit_share_one_close_timeout(tmp_path: Path, durability: str) -> None:
    """Three recorders whose every fsync hangs: exit waits about one close_timeout
    (the largest), not one per recorder; the spool keeps every event ("spool"),
    or each recorder counts its events as dropped ("memory")."""
    _, stderr, exiting = _run_hung_disk_child(tmp_path, durability, "hung", "exit", 3, close_timeout=3.0)
    assert exiting < 4.5, f"exit took {exiting:.1f} s"  # 3 s, the spools' release, the interpreter's end
    root = tmp_path / "data"
    if durability == "memory":
        assert stderr.count("dropped 1000 events") == 3, stderr
        return
    assert stderr.count("stopped waiting for storage") == 3, stderr
    vp.recover_spools(root)
    assert assert_unique(root) == 3000
    assert raw(root, "SELECT count(DISTINCT claim_count) FROM ev") == [(3000,)]


@pytest.mark.parametrize("durability", ["spool", "memory"])
def test_recorders_at_exit_with_working_slow_storage_all_write_everything(
    tmp_path: Path, durability: str
) -> None:
    """Three recorders on storage that works but takes 2 s per write: within the one
    shared close_timeout (3 s) every recorder writes all its events as Parquet, none
    left to the spool (their final writes run at once, not in turn)."""
    _, stderr, exiting = _run_hung_disk_child(tmp_path, durability, "working", "exit", 3, close_timeout=3.0)
    assert exiting < 4.5, f"exit took {exiting:.1f} s"
    assert "stopped waiting" not in stderr and "dropped" not in stderr, stderr
    root = tmp_path / "data"
    assert raw(root, "SELECT count(*), count(DISTINCT claim_count) FROM ev") == [(3000, 3000)]
    assert assert_unique(root) == 3000
    assert not list((root / "_spool").glob("*.spool"))


def test_close_timeout_is_validated_and_a_healthy_close_writes_everything(root: Path) -> None:
    with pytest.raises(ValueError, match="close_timeout"):
        vp.Recorder(root, close_timeout=-1)
    rec = vp.Recorder(root, flush_interval=60, close_timeout=5)
    for i in range(300):
        rec.emit("rate_limit_hit", claim_count=i)
    rec.close(timeout=None)
    assert rec.stats()["written"] == 300
    assert assert_unique(root) == 300
