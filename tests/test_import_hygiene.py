"""Embedding is cheap: the pipeline side never loads the reader side's modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("duckdb", "click", "tabulate", "pydantic")

PIPELINE = """
import json, sys
import voicepipe_obs as vp
rec = vp.Recorder(sys.argv[1], durability="sync")

@rec.stage("transcription")
def transcribe():
    rec.annotate(confidence_score=0.9)

with rec.artifact("a-1", organization_id="org"):
    transcribe()
rec.emit("rate_limit_hit")
rec.flush()
rec.close()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {mods})))
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=True
    )


def test_recording_loads_neither_duckdb_nor_click(tmp_path: Path) -> None:
    out = run_python(PIPELINE.replace("{mods}", repr(set(HEAVY))), str(tmp_path / "data"))
    assert json.loads(out.stdout) == []
    assert list((tmp_path / "data" / "events").rglob("*.parquet"))  # it did record


def test_importing_the_package_loads_no_pyarrow_either() -> None:
    out = run_python(
        "import sys, voicepipe_obs, voicepipe_obs.testing;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('duckdb','click','pyarrow','pandas','pydantic')))"
    )
    assert out.stdout.strip() == "[]"


def test_cli_help_does_not_import_duckdb_or_pyarrow() -> None:
    code = (
        "import sys\n"
        "from voicepipe_obs.cli import run\n"
        "sys.argv = ['voicepipe', '--help']\n"
        "try:\n"
        "    run()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES', sorted(m for m in sys.modules if m.split('.')[0] in ('duckdb','pyarrow','pandas')))\n"
    )
    out = run_python(code)
    assert "Usage" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "MODULES []"


READERS = """
import datetime as dt, importlib.util, sys
from pathlib import Path
assert importlib.util.find_spec("pandas") is not None  # installed (the test extra)
from voicepipe_obs import alerts, reports
from voicepipe_obs.query import connect
now = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc)
connect(sys.argv[1], live=False).execute("SELECT count(*) FROM events").fetchall()
alerts.evaluate(sys.argv[1], now=now)
reports.dashboard(Path(sys.argv[1]), now=now)
print(sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
"""


def test_readers_do_not_import_pandas(tmp_path: Path) -> None:
    """Importing pandas costs ~0.7 s: a report or check must not pay it just because
    pandas is installed (an empty Arrow table made pyarrow import it)."""
    import datetime as dt

    from voicepipe_obs import Recorder

    root = tmp_path / "data"
    at = int(dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    rec = Recorder(root, durability="sync", clock=lambda: at)
    with rec.artifact("a-1", organization_id="org"):
        rec.emit("artifact_received")
    rec.close()
    out = run_python(READERS, str(root))
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_only_the_console_script_installs_signal_handlers() -> None:
    """The pipeline owns its signals: importing the package, the CLI, or the console
    script's entry module installs no handler (only its run() does)."""
    code = (
        "import signal\n"
        "def handlers():\n"
        "    return (signal.getsignal(signal.SIGINT) is signal.default_int_handler,\n"
        "            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n"
        "import voicepipe_obs, voicepipe_obs.cli, _voicepipe_entry\n"
        "print(handlers())\n"
    )
    assert run_python(code).stdout.strip() == "(True, True)"
