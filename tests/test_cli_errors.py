"""The CLI's answers to a bad environment or a bad value: a data root that cannot be
written (really read-only, never mocked), a missing root or a file given as the
root, times out of range, and unreadable files in each area of the layout. Each is
one line on stderr with a documented exit code, and nothing is lost or half-written.

A read-only root is made for real: ``chmod`` for an ordinary user; as root (which
chmod does not stop) the immutable attribute (``chattr +i``), or a read-only bind
mount in a private mount namespace (``unshare``) for the "Read-only file system"
case. Tests skip when the sandbox offers neither.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pytest

import voicepipe_obs as vp
from voicepipe_obs import aggregate, retry, store
from voicepipe_obs.cli import main

EXAMPLE = "voicepipe_obs._examples.voice_pipeline"
LAYOUT = ("events", "snapshots", "alerts", "quarantine", "_spool", "_state")


# ------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo store (one day, a few failed artifacts), aggregated once; tests
    work on copies. The day ends on the latest Wednesday 18:00 UTC: the demo's
    volume follows the weekday and hour, and a Sunday's day has no failure."""
    from voicepipe_obs._examples.demo import run_demo

    root = tmp_path_factory.mktemp("demo") / "data"
    now = dt.datetime.now(dt.timezone.utc)
    end = now.replace(hour=18, minute=0, second=0, microsecond=0) - dt.timedelta(days=(now.weekday() - 2) % 7)
    if end > now:
        end -= dt.timedelta(days=7)
    run_demo(root, days=1, per_day=30, live=0, in_flight=0, seed=7, end=end)
    aggregate.aggregate(root, now=dt.datetime.now(dt.timezone.utc))
    return root


@pytest.fixture
def data(demo_root: Path, tmp_path: Path) -> Path:
    """This test's own copy of the demo store."""
    root = tmp_path / "copy"
    shutil.copytree(demo_root, root, symlinks=True)
    return root


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: relative path → "dir" or the file's content hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_line_error(result: Any, code: int, *fragments: str) -> str:
    """The command failed cleanly: ``code``, nothing on stdout, one error line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert not isinstance(result.exception, OSError | OverflowError), result.exception
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voicepipe: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def invoke(runner: Any, root: Path, *args: str) -> Any:
    return runner.invoke(main, ["--data", str(root), *args])


@contextmanager
def unwritable(*paths: Path, recursive: bool = True) -> Iterator[None]:
    """Make ``paths`` (and, with ``recursive``, everything under them) really
    unwritable for this process, and restore them afterwards."""
    if os.geteuid() != 0:
        entries = [p for path in paths for p in ([path, *path.rglob("*")] if recursive else [path])]
        modes = {p: p.stat().st_mode & 0o7777 for p in entries}
        for p in entries:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p in reversed(entries):
                if p.exists():  # (a reset may have moved it: see writable_again)
                    p.chmod(modes[p])
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: cannot make a directory read-only")
    flags = ["-R"] if recursive else []
    done = subprocess.run([chattr, *flags, "+i", *map(str, paths)], capture_output=True, text=True)
    try:
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
        yield
    finally:
        subprocess.run([chattr, *flags, "-i", *map(str, paths)], capture_output=True, check=False)


def writable_again(path: Path) -> None:
    """Undo :func:`unwritable` on a tree that was moved meanwhile."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    else:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True, check=False)


def _ro_mount_prefix(root: Path) -> list[str]:
    """argv prefix running a command with ``root`` bind-mounted read-only (EROFS)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare: cannot mount a read-only root")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    prefix = [unshare, "-m" if os.geteuid() == 0 else "-rm", "sh", "-c", script, str(root)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here: {probe.stderr.strip()}")
    return prefix


def run_cli(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPIPE_")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "voicepipe_obs.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def failed_artifact(root: Path) -> str:
    con = vp.connect(root)
    try:
        row = con.execute("SELECT artifact_id FROM artifacts WHERE status = 'failed' ORDER BY 1").fetchone()
    finally:
        con.close()
    assert row is not None
    return str(row[0])


# ------------------------------------------------------------- unwritable root


@pytest.mark.parametrize(
    "args",
    [
        ["aggregate"],
        ["aggregate", "--rebuild"],
        ["aggregate", "--since", "2d"],
        ["compact", "--grace", "0s"],
        ["demo", "--reset", "--days", "1", "--artifacts-per-day", "40", "--live", "0"],
        ["retry", "FAILED", "--app", EXAMPLE],
    ],
    ids=" ".join,
)
def test_an_unwritable_root_is_one_line_and_changes_nothing(runner: Any, data: Path, args: list[str]) -> None:
    args = [failed_artifact(data) if a == "FAILED" else a for a in args]
    before = tree(data)
    with unwritable(data):
        result = invoke(runner, data, *args)
    one_line_error(result, 1, f"cannot write under {data} (", "check permissions")
    assert tree(data) == before


def test_cleanup_of_an_unwritable_root_drops_nothing(runner: Any, data: Path) -> None:
    before = tree(data)
    with unwritable(data):
        result = invoke(runner, data, "cleanup", "--now", "2099-01-01")
    one_line_error(result, 1, f"cannot write under {data} (", "check permissions")
    assert tree(data) == before
    dry = invoke(runner, data, "cleanup", "--now", "2099-01-01", "--dry-run")
    assert dry.exit_code == 0 and "would drop events/date=" in dry.stdout  # there was work to refuse


@pytest.mark.parametrize(
    "args",
    [
        ["aggregate"],
        ["compact", "--grace", "0s"],
        ["demo", "--reset", "--days", "1", "--live", "0"],
        ["retry", "FAILED"],
    ],
    ids=" ".join,
)
def test_a_read_only_file_system_is_one_line_and_changes_nothing(data: Path, args: list[str]) -> None:
    prefix = _ro_mount_prefix(data)
    if args[0] == "retry":
        args = ["retry", failed_artifact(data), "--app", EXAMPLE]
    before = tree(data)
    proc = run_cli("--data", str(data), *args, prefix=prefix)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"voicepipe: error: cannot write under {data} (Read-only file system")
    assert proc.stderr.rstrip().endswith("check permissions") and proc.stderr.count("\n") == 1
    assert tree(data) == before


def test_a_dry_run_retry_works_on_a_read_only_root(runner: Any, data: Path) -> None:
    art = failed_artifact(data)
    retry_lock = retry.RetryLock(data, art)  # a lock file left by an earlier retry
    assert retry_lock.acquire(0)
    retry_lock.release()
    with unwritable(data):
        result = invoke(runner, data, "retry", art, "--dry-run", "--app", EXAMPLE)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"would retry {art}")


def test_demo_reset_is_all_or_nothing(runner: Any, data: Path) -> None:
    """The last area of the layout cannot be moved: the ones moved before it come
    back, nothing is deleted, no trash is left."""
    before = tree(data)
    with unwritable(data / "_state", recursive=False):
        result = invoke(runner, data, "demo", "--reset", "--days", "1", "--live", "0")
    line = one_line_error(result, 1, f"cannot write under {data} (", "check permissions")
    assert str(data / "_state") in line
    assert tree(data) == before
    assert not list(data.glob(".voicepipe-trash-*"))


def test_demo_reset_with_an_undeletable_partition_replaces_the_layout(runner: Any, data: Path) -> None:
    """Every area moves aside first, so a partition that cannot be deleted stays
    behind in the trash (named in a warning) and the new demo data is complete."""
    stuck = sorted((data / "events").glob("date=*"))[0]
    old_marker = (data / "_state" / "demo.json").read_text()
    old_events = {p.name for p in (data / "events").rglob("*.parquet")}
    try:
        with unwritable(stuck, recursive=False):
            result = invoke(
                runner, data, "demo", "--reset", "--days", "1", "--artifacts-per-day", "40", "--live", "0"
            )
            assert result.exit_code == 0, result.stderr
            (trash,) = data.glob(".voicepipe-trash-*")
            warning = result.stderr.strip().splitlines()
            assert len(warning) == 1 and warning[0].startswith("voicepipe: warning: could not delete")
            assert str(trash) in warning[0] and "delete it by hand" in warning[0]
            left = {p.relative_to(trash).parts[:2] for p in trash.rglob("*")}
            assert left == {("events",), ("events", stuck.name)}  # only the stuck partition
        new_events = {p.name for p in (data / "events").rglob("*.parquet")}
        assert new_events and not new_events & old_events
        assert (data / "_state" / "demo.json").read_text() != old_marker
        assert not (data / "snapshots").exists()  # the old snapshots went with the rest
    finally:
        for trash in data.glob(".voicepipe-trash-*"):
            writable_again(trash)
            shutil.rmtree(trash)


def test_demo_reset_keeps_other_files_and_sweeps_old_trash(runner: Any, data: Path) -> None:
    (data / "voicepipe.toml").write_text("# mine\n")
    (data / ".voicepipe-trash-0ld").mkdir()
    ((data / ".voicepipe-trash-0ld") / "x").write_text("left by an interrupted reset")
    result = invoke(
        runner, data, "demo", "--reset", "--days", "1", "--artifacts-per-day", "40", "--live", "0"
    )
    assert result.exit_code == 0, result.stderr
    assert (data / "voicepipe.toml").read_text() == "# mine\n"
    assert not list(data.glob(".voicepipe-trash-*"))


def test_a_permission_error_no_command_translated_is_still_one_line(runner: Any, tmp_path: Path) -> None:
    """The root group's last resort: a real PermissionError from a command."""
    import click

    from voicepipe_obs.cli import LazyGroup

    locked = tmp_path / "locked"
    locked.mkdir()

    @click.command()
    def touch() -> None:
        (locked / "x").write_text("x")

    group = LazyGroup(name="voicepipe", commands={"touch": touch})
    with unwritable(locked, recursive=False):
        result = runner.invoke(group, ["touch"])
    one_line_error(result, 1, f"cannot access {locked / 'x'} (", "): check permissions")
    assert not (locked / "x").exists()


# ---------------------------------------------------------- missing root, file


@pytest.mark.parametrize(
    "args",
    [
        ["aggregate"],
        ["aggregate", "--rebuild"],
        ["compact"],
        ["cleanup"],
        ["cleanup", "--dry-run"],
        ["report", "alerts"],
        ["report", "dashboard"],
        ["sql", "SELECT count(*) FROM events"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_missing_root_or_a_file_is_one_line_exit_1(
    runner: Any, tmp_path: Path, args: list[str], kind: str
) -> None:
    where = tmp_path / "typo" / "data"
    if kind == "file":
        where = tmp_path / "a-file"
        where.write_text("not a data root\n")
    result = invoke(runner, where, *args)
    problem = "does not exist" if kind == "missing" else "is not a directory"
    one_line_error(result, 1, f"data root {where} (from --data) {problem}", "--data", "VOICEPIPE_DATA")
    if kind == "missing":
        assert not (tmp_path / "typo").exists()  # nothing created either
    else:
        assert where.read_text() == "not a data root\n"


def test_a_missing_root_names_where_it_came_from(runner: Any, tmp_path: Path) -> None:
    env = runner.invoke(main, ["compact"], env={"VOICEPIPE_DATA": str(tmp_path / "env-root")})
    one_line_error(env, 1, f"data root {tmp_path / 'env-root'} (from $VOICEPIPE_DATA) does not exist")
    config = tmp_path / "etc" / "voicepipe.toml"
    config.parent.mkdir()
    config.write_text(f'data = "{tmp_path / "toml-root"}"\n')
    from_file = runner.invoke(main, ["--config", str(config), "aggregate"])
    one_line_error(from_file, 1, f"(`data` in {config}) does not exist")
    default = runner.invoke(main, ["cleanup"])  # the tests run in tmp_path
    one_line_error(default, 1, f"data root {tmp_path / 'voicepipe-data'} (the default) does not exist")


def test_check_on_a_missing_root_could_not_evaluate(runner: Any, tmp_path: Path) -> None:
    result = invoke(runner, tmp_path / "nope", "check")
    assert result.exit_code == 3
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_demo_still_creates_a_new_root(runner: Any, tmp_path: Path) -> None:
    # 40 a weekday: a weekend day at 5 has ~2 artifacts, and some days none at all
    where = tmp_path / "new" / "root"
    result = invoke(runner, where, "demo", "--days", "1", "--artifacts-per-day", "40", "--live", "0")
    assert result.exit_code == 0, result.stderr
    assert store.list_parquet(where)


# ------------------------------------------------------------------ times


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["report", "events", "--since", "99999999d"], "invalid time '99999999d': before 1970-01-01"),
        (["aggregate", "--since", "99999999d"], "invalid time '99999999d': before 1970-01-01"),
        (["report", "events", "--since", "9999999999999999999999s"], "before 1970-01-01"),
        (["aggregate", "--since", "1900-01-01"], "invalid time '1900-01-01': before 1970-01-01"),
        (["aggregate", "--until", "9999-12-31T23:00-01:00"], "out of range"),
        (["report", "events", "--until", "9999-12-31T23:59:59"], "out of range"),
        (["compact", "--grace", "9999999999999999999999s"], "invalid duration"),
        (["cleanup", "--now", "0001-01-01"], "before 1970-01-01"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_times_out_of_range_are_usage_errors(runner: Any, data: Path, args: list[str], fragment: str) -> None:
    before = tree(data)
    result = invoke(runner, data, *args)
    one_line_error(result, 2, fragment)
    assert tree(data) == before


def test_a_frozen_clock_out_of_range_is_a_usage_error(runner: Any, data: Path) -> None:
    report = invoke(runner, data, "report", "--now", "0001-01-01T00:00:00Z", "events")
    assert report.exit_code == 2 and "before 1970-01-01" in report.stderr
    assert not isinstance(report.exception, OverflowError)
    check = invoke(runner, data, "check", "--now", "0001-01-01T00:00:00Z")
    assert check.exit_code == 3  # Nagios UNKNOWN, not a traceback (exit 1 = WARNING)
    assert "before 1970-01-01" in check.stderr and "Traceback" not in check.stderr


def test_time_bounds() -> None:
    from voicepipe_obs.errors import UsageError
    from voicepipe_obs.timeparse import parse_since

    now = dt.datetime(2026, 5, 7, 12, tzinfo=dt.timezone.utc)
    assert parse_since("1970-01-01", now) == dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    assert parse_since("1970-01-01T01:00+01:00", now) == dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    assert parse_since("9998-12-31T23:59", now).year == 9998
    assert parse_since("20000d", now).year == 1971
    huge = "1" + "0" * 30 + "s"
    for bad in ("1969-12-31T23:59:59", "1970-01-01T00:30+01:00", "9999-01-01", "30000d", huge):
        with pytest.raises(UsageError, match="invalid time"):
            parse_since(bad, now)


# ------------------------------------------------------- unreadable files, -v


def _spoil(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not parquet at all")
    return path


def test_unreadable_files_are_named_once_with_advice_for_their_area(data: Path) -> None:
    bad_daily = _spoil(sorted((data / "snapshots" / "daily").glob("date=*"))[0] / "daily-bad.parquet")
    bad_alert = _spoil(data / "alerts" / "date=2026-01-01" / "x.parquet")
    bad_event = _spoil(sorted((data / "events").glob("date=*/hour=*"))[0] / "torn.parquet")
    proc = run_cli("--data", str(data), "check", "--no-notify")
    lines = proc.stderr.strip().splitlines()
    advice = {
        bad_daily: "`voicepipe aggregate --rebuild` rewrites the snapshots",
        bad_alert: "move it out of alerts/",
        bad_event: "`voicepipe compact` moves such files to quarantine/",
    }
    for path, text in advice.items():
        mine = [line for line in lines if str(path) in line]
        assert len(mine) <= 1, mine  # once per file per process
        if mine:
            assert mine[0].startswith("voicepipe: warning: skipping unreadable file") and text in mine[0]
    assert any(str(bad_daily) in line for line in lines) and any(str(bad_alert) in line for line in lines)

    dashboard = run_cli("--data", str(data), "report", "dashboard")
    assert dashboard.returncode == 0, dashboard.stderr
    assert [line for line in dashboard.stderr.splitlines() if str(bad_alert) in line] == [
        f"voicepipe: warning: skipping unreadable file {bad_alert} (no Parquet header); "
        "move it out of alerts/ (the alert log is read without it meanwhile)"
    ]


def test_the_event_log_and_artifact_lookup_name_an_unreadable_event_file(data: Path) -> None:
    """The readers that list partitions themselves (the event log, its export, the
    artifact search, which reads the newest partitions first) skip an unreadable
    event file with the same one-line warning as every other reader, rather than
    silently leaving its events out."""
    newest = sorted((data / "events").glob("date=*/hour=*"))[-1]
    bad = _spoil(newest / "torn.parquet")
    warning = f"voicepipe: warning: skipping unreadable file {bad} (no Parquet header); "
    artifact = failed_artifact(data)
    for args in (
        ["report", "events"],
        ["report", "events", "--format", "csv"],
        ["report", "artifact", artifact],
    ):
        proc = run_cli("--data", str(data), *args)
        assert proc.returncode == 0, (args, proc.stderr)
        mine = [line for line in proc.stderr.splitlines() if str(bad) in line]
        assert len(mine) == 1 and mine[0].startswith(warning), (args, proc.stderr)


def test_verbose_logs_what_the_cron_commands_do(runner: Any, data: Path) -> None:
    quiet = invoke(runner, data, "aggregate", "--since", "1970-01-01")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    loud = runner.invoke(main, ["-v", "--data", str(data), "aggregate", "--since", "1970-01-01"])
    assert loud.exit_code == 0, loud.stderr
    assert "voicepipe: info: recomputing the " in loud.stderr
    assert "voicepipe: info: aggregating days: 2 of 2 days done" in loud.stderr
    compact = runner.invoke(main, ["-v", "--data", str(data), "compact", "--grace", "0s"])
    assert compact.exit_code == 0, compact.stderr
    assert "voicepipe: info: compact: " in compact.stderr and "hour partitions" in compact.stderr
    assert "voicepipe: info: compacted " in compact.stderr
    cleanup = runner.invoke(main, ["-v", "--data", str(data), "cleanup", "--now", "2099-01-01"])
    assert cleanup.exit_code == 0, cleanup.stderr
    assert "voicepipe: info: cleanup: dropped " in cleanup.stderr


def test_help_says_what_reset_deletes_and_what_verbose_logs(runner: Any) -> None:
    demo_help = " ".join(runner.invoke(main, ["demo", "--help"]).stdout.split())
    for area in ("events/", "snapshots/", "alerts/", "quarantine/", "_spool/", "_state/"):
        assert area in demo_help
    main_help = " ".join(runner.invoke(main, ["--help"]).stdout.split())
    assert "aggregate, compact, cleanup" in main_help


def _commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            out += _commands(cmd, ctx, (*prefix, name))
        elif cmd is not None:
            out.append((*prefix, name))
    return out


def test_format_help_names_only_the_formats_a_command_takes() -> None:
    ctx = click.Context(main)
    checked = 0
    for path in _commands(main, ctx):
        cmd: Any = main
        for name in path:
            cmd = cmd.get_command(ctx, name)
        for param in cmd.params:
            if param.name == "fmt" and isinstance(param.type, click.Choice):
                checked += 1
                help_text = param.help or ""
                for fmt in ("table", "json", "csv", "nagios"):
                    if fmt in help_text:
                        assert fmt in param.type.choices, (path, help_text, param.type.choices)
    assert checked >= 10


# ------------------------------------------------- values that must not get through


ABSURD = [
    (["report", "dashboard", "--watch", "nan"], "--watch"),
    (["report", "dashboard", "--watch", "inf"], "--watch"),
    (["report", "dashboard", "--watch", "1e300"], "--watch"),
    (["report", "events", "--follow", "--interval", "nan"], "--interval"),
    (["report", "events", "--follow", "--interval", "1e300"], "--interval"),
    (["report", "artifacts", "--page", "999999999999999999"], "--page"),
    (["report", "events", "--page", "999999999999999999999"], "--page"),
    (["aggregate", "--wait", "nan"], "--wait"),
    (["compact", "--wait", "nan"], "--wait"),
    (["cleanup", "--wait", "nan"], "--wait"),
]


@pytest.mark.parametrize(("args", "option"), ABSURD, ids=[" ".join(a) for a, _ in ABSURD])
def test_non_finite_and_absurd_numbers_are_usage_errors(
    runner: Any, data: Path, args: list[str], option: str
) -> None:
    before = tree(data)
    command = " ".join(args[: next(i for i, a in enumerate(args) if a.startswith("--"))])
    one_line_error(invoke(runner, data, *args), 2, option, f"see `voicepipe {command} --help`")
    assert tree(data) == before


def test_wait_inf_is_documented_and_waits_for_the_lock(runner: Any, data: Path) -> None:
    help_text = " ".join(runner.invoke(main, ["aggregate", "--help"]).stdout.split())
    assert "inf: wait as long as it takes" in help_text
    result = invoke(runner, data, "compact", "--wait", "inf")  # the lock is free: it runs
    assert result.exit_code == 0, result.stderr


def test_the_library_refuses_a_nan_lock_timeout(data: Path) -> None:
    from voicepipe_obs.errors import UsageError

    with pytest.raises(UsageError, match="not nan"):
        aggregate.aggregate(data, now=dt.datetime.now(dt.timezone.utc), lock_timeout=float("nan"))


@pytest.mark.parametrize("flag", ["--since", "--until"])
@pytest.mark.parametrize(
    "command", [["report", "events"], ["report", "artifacts"], ["aggregate"]], ids=" ".join
)
def test_an_empty_since_or_until_is_a_usage_error(
    runner: Any, data: Path, command: list[str], flag: str
) -> None:
    before = tree(data)
    one_line_error(invoke(runner, data, *command, flag, ""), 2, f"{flag} is empty", f"leave {flag} out")
    assert tree(data) == before


def test_retry_refuses_an_empty_since(runner: Any, data: Path) -> None:
    result = invoke(runner, data, "retry", "--all-failed", "--since", "", "--yes")
    one_line_error(result, 2, "--since", "is empty")


@pytest.mark.parametrize("actor", ["a\nb", "alice\x1b[31m", "bob\tx"])
def test_retry_refuses_control_characters_in_the_actor(runner: Any, data: Path, actor: str) -> None:
    before = tree(data)
    result = invoke(runner, data, "retry", failed_artifact(data), "--by", actor, "--app", EXAMPLE)
    one_line_error(result, 2, "--by", "control character")
    assert tree(data) == before


def test_a_retry_app_calling_sys_exit_at_import_is_a_config_error(
    runner: Any, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "exits_at_import.py"
    app.write_text("import sys\nsys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    result = invoke(runner, data, "retry", failed_artifact(data), "--app", str(app))
    one_line_error(result, 2, "importing retry app", "failed", "sys.exit(3)")


# ----------------------------------------------------------------------- data root


@pytest.mark.parametrize(
    "command", [["demo"], ["aggregate"], ["report", "events"], ["config", "show"]], ids=" ".join
)
def test_an_empty_data_flag_is_a_usage_error(
    runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VOICEPIPE_DATA", raising=False)
    monkeypatch.delenv("VOICEPIPE_CONFIG", raising=False)
    result = runner.invoke(main, ["--data", "", *command])
    one_line_error(result, 2, "data root is empty", "pass --data DIR")
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_an_empty_data_flag_is_check_unknown(
    runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["--data", "", "check"])
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "data root is empty" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------ aggregate's bookkeeping


@pytest.mark.parametrize(
    "text",
    [
        '{"version": 1, "seen": 5}',
        '{"version": 1, "seen": "events/x.parquet"}',
        '{"version": 1, "seen": [1, 2]}',
        '{"version": 1, "seen": [["a"]]}',
        '{"version": 1, "seen": {"a": 1}}',
    ],
)
def test_malformed_aggregate_state_is_recomputed_with_a_warning(runner: Any, data: Path, text: str) -> None:
    state = data / "_state" / "aggregate.json"
    state.write_text(text)
    result = invoke(runner, data, "aggregate")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    assert f"ignoring unreadable {state}" in result.stderr and "recomputing from scratch" in result.stderr
    assert result.stdout.startswith("aggregated ")
    assert json.loads(state.read_text())["seen"]  # written afresh


def test_aggregate_state_that_cannot_be_saved_names_the_real_file(runner: Any, data: Path) -> None:
    state = data / "_state" / "aggregate.json"
    state.unlink()
    (state / "in-the-way").mkdir(parents=True)  # a directory where the file goes
    result = invoke(runner, data, "aggregate", "--rebuild")
    assert result.exit_code == 1, (result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("voicepipe: error: ")]
    assert len(lines) == 1 and f"{state}" in lines[0] and ".tmp" not in lines[0], result.stderr
    assert list((data / "_state").glob(f"*{store.TMP_SUFFIX}")) == []


def test_write_text_atomic_leaves_no_temporary_file_and_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        store.write_text_atomic(target, "{}")
    assert info.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# ----------------------------------------------------------------------- summaries


def test_compact_counts_have_thousands_separators(runner: Any, data: Path) -> None:
    import pyarrow.parquet as pq

    files = sorted((data / "events").rglob("*.parquet"), key=lambda p: pq.read_metadata(p).num_rows)
    source = files[-1]
    rows = pq.read_metadata(source).num_rows
    for i in range(1000 // rows + 1):  # the same events again and again: duplicates
        shutil.copy(source, source.with_name(f"copy-{i:04d}.parquet"))
    result = invoke(runner, data, "compact", "--grace", "0s")
    assert result.exit_code == 0, (result.stderr, result.exception)
    dropped = (1000 // rows + 1) * rows
    assert f"{dropped:,} duplicate events dropped" in result.stdout and "," in f"{dropped:,}", result.stdout


@pytest.fixture
def two_hours(tmp_path: Path) -> Path:
    """A data root with two hours of events."""
    root = tmp_path / "data"
    rec = vp.Recorder(root, durability="memory", recover=False)
    t0 = dt.datetime(2026, 3, 2, 9, tzinfo=dt.timezone.utc)
    for i in range(2):
        at = t0 + dt.timedelta(hours=i)
        rec.emit("artifact_received", timestamp=at, artifact_id=f"a{i}", organization_id="o")
        rec.emit("artifact_completed", timestamp=at + dt.timedelta(minutes=1), artifact_id=f"a{i}")
    rec.close()
    return root


def _without_dac(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process without the capabilities that let root read whatever the
    permissions say (so a 000 directory is unreadable to it, as to anyone else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEPIPE_")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-dac_override,-dac_read_search",
            sys.executable,
            "-m",
            "voicepipe_obs.cli",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv (a non-root user could simply chmod)",
)
def test_aggregate_over_an_unreadable_hour_fails_in_one_line(two_hours: Path) -> None:
    """An hour directory aggregate cannot list (permissions) was skipped without a
    word: the snapshots were written without its events and the run exited 0. It
    is the error the reports give for it, exit 1, and nothing is written."""
    hours = sorted(two_hours.glob("events/date=*/hour=*"))
    assert len(hours) == 2
    hours[1].chmod(0o000)
    proc = _without_dac("--data", str(two_hours), "aggregate")
    assert proc.returncode == 1, proc.stderr
    assert (
        proc.stderr == f"voicepipe: error: cannot access {hours[1]} (Permission denied): check permissions\n"
    )
    assert not (two_hours / "snapshots").exists()
    check = _without_dac("--data", str(two_hours), "check", "--now", "2026-03-02T12:00:00Z")
    assert check.returncode == 3, check.stderr
    assert check.stdout.startswith("UNKNOWN check could not evaluate: cannot access ")
    assert check.stdout.rstrip().endswith("(Permission denied): check permissions")
    report = _without_dac("--data", str(two_hours), "report", "events", "--utc")
    assert report.returncode == 1, report.stdout  # not a report without that hour's events
    assert (
        report.stderr
        == f"voicepipe: error: cannot access {hours[1]} (Permission denied): check permissions\n"
    )
