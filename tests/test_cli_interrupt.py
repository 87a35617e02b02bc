"""Ctrl-C (a real SIGINT to a real process) during the cron commands: one line,
exit 130, no traceback, and nothing half-written — the next run converges."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from voicepipe_obs import aggregate, store


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten days of demo data: `aggregate --rebuild` takes seconds on it."""
    from voicepipe_obs._examples.demo import run_demo

    root = tmp_path_factory.mktemp("interrupt") / "data"
    end = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    run_demo(root, days=10, per_day=150, live=0, in_flight=0, seed=7, end=end)
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPIPE_")}
    env["NO_COLOR"] = "1"
    env.pop("VOICEPIPE_DEBUG", None)
    return env


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "voicepipe_obs.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _interrupted(proc: subprocess.Popen[str], after: str, sig: int = signal.SIGINT) -> None:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    code = 143 if sig == signal.SIGTERM else 130
    how = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted"
    assert proc.returncode == code, (proc.returncode, out, err)
    assert "Traceback" not in err and "Aborted" not in err, err
    assert err.splitlines()[-1] == f"voicepipe: {how}: {after}", err


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"*{store.TMP_SUFFIX}")]


@contextmanager
def _holding(root: Path, name: str) -> Iterator[None]:
    """Hold ``<root>/_state/<name>`` as another run of the command would."""
    path = root / store.STATE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _wait_for(proc: subprocess.Popen[str], path: Path, timeout: float = 30.0) -> None:
    """Until ``proc`` has opened the lock file ``path`` (it is waiting on it, past
    its startup)."""
    deadline = time.monotonic() + timeout
    fds = Path(f"/proc/{proc.pid}/fd")
    while time.monotonic() < deadline:
        try:
            opened = {os.readlink(fd) for fd in fds.iterdir()}
        except OSError:  # an fd closed meanwhile
            opened = set()
        if str(path.resolve()) in opened:
            time.sleep(0.2)
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path} was never opened")


def test_ctrl_c_during_aggregate_exits_130_and_the_next_run_converges(big_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(big_root, root)
    proc = _start("-v", "--data", str(root), "aggregate", "--rebuild")
    assert proc.stderr is not None
    # past startup: the run has listed the event files and is computing snapshots
    first = proc.stderr.readline()
    assert "event files" in first, first
    time.sleep(0.3)
    assert proc.poll() is None, "aggregate finished before it could be interrupted"
    _interrupted(proc, "nothing half-written; run it again to catch up")
    assert _tmp_files(root) == []
    # the next run catches up: the snapshots are what an uninterrupted run makes
    aggregate.aggregate(root, now=dt.datetime.now(dt.timezone.utc))
    again = tmp_path / "clean"
    shutil.copytree(big_root, again)
    aggregate.aggregate(again, now=dt.datetime.now(dt.timezone.utc))
    snaps = sorted(p.relative_to(root).as_posix() for p in (root / "snapshots").rglob("*.parquet"))
    clean = sorted(p.relative_to(again).as_posix() for p in (again / "snapshots").rglob("*.parquet"))
    assert snaps == clean


@pytest.mark.parametrize(
    ("command", "lock"),
    [("aggregate", "aggregate.lock"), ("compact", "compact.lock"), ("cleanup", "cleanup.lock")],
)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_while_waiting_for_the_lock_exits_130(
    tmp_path: Path, command: str, lock: str, sig: int
) -> None:
    root = tmp_path / "data"
    (root / "events").mkdir(parents=True)
    with _holding(root, lock):
        before = sorted(p.name for p in (root / store.STATE).iterdir())
        proc = _start("--data", str(root), command, "--wait", "60")
        _wait_for(proc, root / store.STATE / lock)
        assert proc.poll() is None
        how = "nothing half-written; run it again to catch up" if command == "aggregate" else None
        _interrupted(proc, how or "nothing half-written or lost; run it again to finish", sig)
    assert sorted(p.name for p in (root / store.STATE).iterdir()) == before


def test_ctrl_c_in_any_other_command_is_one_line_and_130(
    runner: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not click's bare "Aborted!" with exit 1."""
    from click.testing import CliRunner

    from voicepipe_obs import reports
    from voicepipe_obs.cli import main

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(reports, "dashboard", interrupted)
    (tmp_path / "events").mkdir()
    assert isinstance(runner, CliRunner)
    result = runner.invoke(main, ["--data", str(tmp_path), "report", "dashboard"])
    assert result.exit_code == 130, (result.stdout, result.stderr, result.exception)
    assert result.stderr == "voicepipe: interrupted\n"


# -- Ctrl-C while the console script starts (importing voicepipe_obs, click, duckdb) --


def _console_script() -> Path:
    script = Path(sys.executable).parent / "voicepipe"
    if not script.exists():  # pragma: no cover - the package is installed for the tests
        pytest.skip("the voicepipe console script is not installed next to this interpreter")
    return script


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its /proc status SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _start_script_and_wait(until: Callable[[int], bool], *args: str) -> subprocess.Popen[str]:
    """``voicepipe *args`` as a user's shell runs it, once ``until(pid)`` holds."""
    proc = subprocess.Popen(
        [str(_console_script()), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if until(proc.pid):
                return proc
        except OSError:  # /proc entry not there yet, or a file read while it changes
            pass
        time.sleep(0.0005)
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"the moment to interrupt never came: {proc.returncode}, {out!r}, {err!r}")


def _starting(pid: int) -> bool:
    """The script's handlers are installed (Python alone never catches SIGTERM):
    it is importing voicepipe_obs, ~0.1 s before the CLI can say anything itself."""
    return _catches(pid, signal.SIGTERM)


def _loading_duckdb(pid: int) -> bool:
    """``check`` is importing duckdb (its library is mapped), before its own handler."""
    return "duckdb" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [
        (signal.SIGINT, 130, "voicepipe: interrupted"),
        (signal.SIGTERM, 143, "voicepipe: terminated (SIGTERM)"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_ctrl_c_while_the_script_starts_is_one_line(tmp_path: Path, sig: int, code: int, line: str) -> None:
    proc = _start_script_and_wait(_starting, "--data", str(tmp_path), "report", "dashboard")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (code, "", line + "\n")


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", [_starting, _loading_duckdb], ids=["starting", "loading-duckdb"])
def test_ctrl_c_while_check_starts_is_unknown_never_130(
    tmp_path: Path, fmt: str, sig: int, moment: Callable[[int], bool]
) -> None:

    (tmp_path / "events").mkdir()
    proc = _start_script_and_wait(moment, "--data", str(tmp_path), "check", "--format", fmt, "--dry-run")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert_unknown_for(sig, fmt, proc.returncode, out, err)


def assert_unknown_for(sig: int, fmt: str, returncode: int, out: str, err: str) -> None:
    """What a `check` interrupted by ``sig`` prints, in ``fmt``: the UNKNOWN status
    (exit 3) saying interrupted or terminated, and the one-line reason on stderr."""
    from voicepipe_obs.cli_alerts import CHECK_INTERRUPTED, CHECK_TERMINATED, unknown_line

    message = CHECK_TERMINATED if sig == signal.SIGTERM else CHECK_INTERRUPTED
    assert returncode == 3, (returncode, out, err)
    if fmt == "json":
        assert json.loads(out) == {"status": "UNKNOWN", "exit_code": 3, "error": message}
    else:
        assert out == unknown_line(message) + "\n"
    assert err == f"voicepipe: error: check could not evaluate: {message}\n"


def test_ctrl_c_before_check_installs_its_handler_is_unknown(
    runner: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (no console script): an interrupt while check is starting reaches
    the root group, which answers for check with UNKNOWN and 3."""
    from click.testing import CliRunner

    from voicepipe_obs import cli_alerts
    from voicepipe_obs.cli import main

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_alerts, "parse_now", interrupted)
    (tmp_path / "events").mkdir()
    assert isinstance(runner, CliRunner)
    result = runner.invoke(main, ["--data", str(tmp_path), "check"])
    assert result.exit_code == 3, (result.stdout, result.stderr, result.exception)
    assert result.stdout == cli_alerts.unknown_line(cli_alerts.CHECK_INTERRUPTED) + "\n"
