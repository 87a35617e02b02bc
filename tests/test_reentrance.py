"""The recorder re-entered on the thread that is inside it: a real SIGUSR1 handler
that emits while the main thread is in the middle of an emit, and a logging handler
that asks for rec.stats() when the recorder warns. Neither may deadlock, raise into
the pipeline or lose an event.

Each scenario runs in a child process with a timeout (a deadlock there must fail the
test, not hang it); the events are read back from the raw Parquet files with plain
DuckDB (no deduplication).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rawfiles import raw_ids

pytestmark = pytest.mark.timeout(180)


def run_child(
    script: str, tmp_path: Path, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "child.py"
    path.write_text(script)
    try:
        return subprocess.run(
            [sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung (deadlock?); its stderr: {exc.stderr!r}")


SIGNAL_CHILD = r"""
import json, os, signal, sys, threading, time
import voicepipe_obs as vp

root, out, durability = sys.argv[1], sys.argv[2], sys.argv[3]
rec = vp.Recorder(root, durability=durability, flush_interval=0.2, spool_interval=0.02, batch_size=500)
from_handler = []

def handler(signum, frame):
    from_handler.append(rec.emit("circuit_breaker_opened", attributes={"why": "sigusr1"}))
    assert rec.stats()["emitted"] >= 1
    if len(from_handler) % 20 == 0:
        rec.flush()  # False when the handler interrupted the recorder's own work

signal.signal(signal.SIGUSR1, handler)
stop = threading.Event()

def sender():  # a supervisor signalling the process, often
    while not stop.is_set():
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.0005)

threading.Thread(target=sender, daemon=True).start()
from_main = []
started = time.monotonic()
i = 0
while time.monotonic() - started < 2.0 or len(from_handler) < 200:
    from_main.append(rec.emit("rate_limit_hit", claim_count=i))
    i += 1
stop.set()
time.sleep(0.05)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
assert rec.flush(), rec.stats()
rec.close()
with open(out, "w") as fh:
    json.dump({"main": from_main, "handler": from_handler, "stats": rec.stats()}, fh)
"""


@pytest.mark.parametrize("durability", ["sync", "spool"])
def test_a_signal_handler_emitting_during_an_emit_neither_deadlocks_nor_loses_events(
    tmp_path: Path, durability: str
) -> None:
    """A real SIGUSR1 handler emits (and asks for stats, and flushes now and then)
    while the main thread emits in a loop (in "sync" mode the main thread holds the
    recorder's lock for most of each emit). Before the fix the handler waited forever
    on the lock its own thread held."""
    root, out = tmp_path / "data", tmp_path / "ids.json"
    done = run_child(SIGNAL_CHILD, tmp_path, str(root), str(out), durability)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(out.read_text())
    assert None not in got["main"] and None not in got["handler"]
    assert len(got["handler"]) >= 200
    promised = set(got["main"]) | set(got["handler"])
    ids = raw_ids(root)
    assert len(ids) == len(set(ids)), "an event was written twice"
    missing = promised - set(ids)
    assert not missing, f"{len(missing)} accepted events are not readable, e.g. {sorted(missing)[:3]}"
    stats = got["stats"]
    assert stats["emitted"] == stats["written"] == len(promised) and stats["dropped"] == 0


LOGGING_CHILD = r"""
import logging, sys, time
from pathlib import Path
import voicepipe_obs as vp

root, durability, max_buffer = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for blocked in sys.argv[4:]:  # a regular file where a directory must be: even root cannot write there
    (root / blocked).write_text("storage is down")
seen = []

class StatsOnWarning(logging.Handler):  # e.g. attach the monitoring counters to every warning
    def emit(self, record):
        seen.append((record.getMessage(), rec.stats()))

logging.getLogger("voicepipe_obs").addHandler(StatsOnWarning())
rec = vp.Recorder(root, durability=durability, max_buffer=max_buffer, flush_interval=0.05, spool_interval=0.02)
ids = [rec.emit("rate_limit_hit", claim_count=i) for i in range(20)]
time.sleep(0.3)
print("emitted", sum(i is not None for i in ids), flush=True)
for blocked in sys.argv[4:]:
    (root / blocked).unlink()
print("flushed", rec.flush(), flush=True)
rec.close()
print("stats", rec.stats()["emitted"], rec.stats()["written"], rec.stats()["dropped"], flush=True)
for message, stats in seen:
    print("log", message.split(":")[0], stats["emitted"], flush=True)
"""


@pytest.mark.parametrize(
    ("durability", "max_buffer", "blocked", "kept"),
    [
        ("sync", 1000, ["_spool"], 20),  # the spool fails inside emit
        ("spool", 5, ["_spool", "events"], 5),  # memory full and the spool failing: dropped
        ("sync", 5, ["_spool", "events"], 5),
    ],
)
def test_a_logging_handler_may_call_stats_when_the_recorder_warns(
    tmp_path: Path, durability: str, max_buffer: int, blocked: list[str], kept: int
) -> None:
    """The recorder logs only after releasing its locks: a logging handler that calls
    rec.stats() does not deadlock. Before the fix the warning about the failed spool
    write (or about the dropped events) was logged with the recorder's lock held."""
    root = tmp_path / "data"
    root.mkdir()
    done = run_child(LOGGING_CHILD, tmp_path, str(root), durability, str(max_buffer), *blocked)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert f"emitted {kept}" in lines
    assert "flushed True" in lines
    assert f"stats 20 {kept} {20 - kept}" in lines
    logged = [line for line in lines if line.startswith("log ")]
    assert any("spool write failed" in line for line in logged), lines
    if kept < 20:
        assert any("buffer full" in line for line in logged), lines
    assert len(set(raw_ids(root))) == len(raw_ids(root)) == kept
