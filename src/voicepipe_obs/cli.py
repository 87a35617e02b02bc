"""The ``voicepipe`` command tree: the root group, global options, error handling
and exit codes. Subcommands live in ``cli_*.py`` modules and are imported only when
run (``voicepipe --help`` stays fast: it never imports duckdb or pyarrow).

The CLI parses, calls library functions and renders; it holds no logic a notebook
user could not reach through the library.

Exit codes (every command): 0 success; 1 an operation failed (store unreadable,
unknown id); 2 usage or configuration error; ``check`` uses 0/1/2/3 (OK, warning,
critical, could not evaluate); ``retry`` uses 4 when a retry is refused.
"""

from __future__ import annotations

import datetime as dt
import errno
import importlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

import _voicepipe_entry
from _voicepipe_entry import command_name

from .errors import VoicepipeError

if TYPE_CHECKING:  # pragma: no cover
    from .config import LoadedSettings, Settings
    from .mirror import Mirror

F = TypeVar("F", bound=Callable[..., Any])

#: name → (module, attribute, one-line help). Imported only when the command runs.
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "report": (
        "voicepipe_obs.cli_report",
        "report",
        "Dashboards, artifacts, metrics, events, alerts, retries.",
    ),
    "sql": ("voicepipe_obs.cli_report", "sql", "Run a read-only SQL query on the views."),
    "aggregate": ("voicepipe_obs.cli_maint", "aggregate", "Build hourly and daily snapshots (cron)."),
    "compact": ("voicepipe_obs.cli_maint", "compact", "Merge small event files, recover spools (cron)."),
    "cleanup": ("voicepipe_obs.cli_maint", "cleanup", "Drop partitions past retention (cron)."),
    "check": ("voicepipe_obs.cli_alerts", "check", "Evaluate alert rules and notify (cron; exit 0-3)."),
    "alerts": ("voicepipe_obs.cli_alerts", "alerts", "Acknowledge and list alerts."),
    "retry": ("voicepipe_obs.cli_retry", "retry", "Retry a failed artifact's stage by hand."),
    "demo": ("voicepipe_obs.cli_demo", "demo", "Write 7 days of demo data and show what to try."),
    "config": ("voicepipe_obs.cli_config", "config", "Show the effective configuration."),
}


@dataclass
class AppContext:
    """What every subcommand gets: global options and lazily loaded settings.

    :attr:`root` / :attr:`root_path` are the one place commands get the data root.
    For an object-store root (``s3://…`` from --data, $VOICEPIPE_DATA or the
    config's ``data``) they pull it into its local mirror once and return the
    mirror's path; the root group pushes the mirror back after the command
    (:meth:`sync_back`), also after a failing one."""

    config_path: str | None = None
    data: str | None = None
    _loaded: LoadedSettings | None = field(default=None, repr=False)
    _mirror: Mirror | None = field(default=None, repr=False)
    _pull_failing: bool = field(default=False, repr=False)

    @property
    def loaded(self) -> LoadedSettings:
        if self._loaded is None:
            from .config import load_settings

            self._loaded = load_settings(self.config_path, overrides={"data": self.data})
        return self._loaded

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    @property
    def remote_url(self) -> str | None:
        """The object-store root's URL when the data root is one, else None."""
        return self.settings.remote_url

    @property
    def root_path(self) -> Path:
        """The data root as configured, which may not exist yet (``demo`` creates it);
        for an object-store root, its local mirror, pulled."""
        root = self.settings.root
        if isinstance(root, str):
            return self._pulled(root)
        return root

    @property
    def root(self) -> Path:
        """The data root, which must be an existing directory: a mistyped ``--data``
        or ``$VOICEPIPE_DATA`` in a crontab must fail loudly, not report an empty
        store. Raises :class:`StoreError` (exit 1) naming the path and where it came from.
        For an object-store root: its local mirror, pulled (an unreachable store
        raises :class:`StoreError` naming the URL)."""
        from .errors import StoreError
        from .store import root_problem

        root = self.root_path
        problem = root_problem(root)
        if problem is not None:
            origin = self.loaded.source_of("data")
            where = {"flag": "from --data", "default": "the default"}.get(origin)
            if where is None:
                where = f"from ${origin[4:]}" if origin.startswith("env ") else f"`data` in {origin[5:]}"
            raise StoreError(
                f"data root {root.absolute()} ({where}) {problem}: pass --data DIR or set VOICEPIPE_DATA "
                "to your data root (`voicepipe demo` writes sample data into a new one)"
            )
        return root

    def _pulled(self, url: str) -> Path:
        if self._mirror is None:
            from .mirror import Mirror

            mirror = Mirror(url)
            mirror.pull()
            self._mirror = mirror  # pushed after the command only once pulled
        return self._mirror.path

    @property
    def mirror(self) -> Mirror | None:
        """The object-store root's local mirror once pulled (:attr:`root`), else None."""
        return self._mirror

    def refresh(self) -> Path:
        """Pull an object-store root again (a redraw loop: ``--watch``, ``--follow``)
        and return :attr:`root`; for a local root just :attr:`root`."""
        if self._mirror is not None:
            self._mirror.pull()
        return self.root

    def redraw_refresh(self) -> None:
        """:meth:`refresh` for a redraw loop (``--watch``, ``--follow``): an object
        store that cannot be reached is one warning line on stderr (once until it
        answers again) and the loop goes on with the mirror as it is."""
        if self._mirror is None:
            return
        from .errors import StoreError

        try:
            self.refresh()
        except StoreError as exc:
            if not self._pull_failing:
                click.echo(f"voicepipe: warning: {exc}; showing the last copy pulled", err=True)
            self._pull_failing = True
        else:
            if self._pull_failing:
                click.echo(f"voicepipe: {self._mirror.shown()} answers again", err=True)
            self._pull_failing = False

    def sync_back(self) -> None:
        """Push the local mirror's changes to the object store (after the command);
        nothing for a local root or when the command never read the root. Raises
        :class:`StoreError`."""
        if self._mirror is not None:
            self._mirror.push()

    def shown(self, text: str) -> str:
        """``text`` (a message) naming the object-store URL where it names the local
        mirror, with the mirror's path once at the end."""
        if self._mirror is None:
            return text
        local = str(self._mirror.path)
        if local not in text:
            return text
        return f"{text.replace(local, self._mirror.shown())} (local mirror: {local})"


pass_app = click.make_pass_decorator(AppContext, ensure=True)


def format_option(*choices: str, default: str = "table", help: str | None = None) -> Callable[[F], F]:
    """``--format table|json|csv`` (or the given choices); the help says what each
    is for unless ``help`` does."""
    choices = choices or ("table", "json", "csv")
    if help is None:
        machines = "/".join(c for c in choices if c != "table")
        help = (
            f"Output format: table for people, {machines} for machines."
            if "table" in choices
            else f"Output format: {'/'.join(choices)}."
        )
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=default, show_default=True, help=help
    )


class Seconds(click.FloatRange):
    """A number of seconds between ``min`` and ``max``: nan is refused (it compares
    false with everything, so a wait or a sleep of nan seconds never ends or fails
    deep inside), and so is inf unless ``max`` is inf (then it means "no limit")."""

    name = "seconds"

    def __init__(self, min: float, max: float) -> None:
        super().__init__(min=min, max=None if math.isinf(max) else max)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return number


class _ClosableStdout:
    """``sys.stdout`` for commands whose exit code is their result (``check``'s
    alert state, ``retry``'s outcome): when the reader goes away (``check | head -1``)
    the rest of the output is discarded instead of raising BrokenPipeError, so the
    command finishes its work and exits with its own code, not the 0 a report exits
    with on a closed pipe."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _gone(self) -> None:
        try:  # later writes, and the flush at exit, go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # no file descriptor (a test runner's buffer)
            pass

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def stdout_may_close() -> None:
    """Make the rest of this command survive a closed stdout (see :class:`_ClosableStdout`)."""
    if not isinstance(sys.stdout, _ClosableStdout):
        sys.stdout = _ClosableStdout(sys.stdout)  # type: ignore[assignment]


def parse_now(value: str | None) -> dt.datetime | None:
    """The hidden ``--now`` option (freeze the clock, for tests and reproducible
    output): an ISO date/time, UTC unless it has an offset."""
    if value is None:
        return None
    from .timeparse import check_in_range

    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            "use an ISO date/time such as 2026-11-28T12:00:00Z", param_hint="--now"
        ) from None
    parsed = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)
    try:
        return check_in_range(parsed, value)
    except VoicepipeError as exc:
        raise click.BadParameter(str(exc), param_hint="--now") from None


#: exit codes of a command stopped by a signal (128 + the signal's number, as a shell says)
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
#: ``ctx.meta`` key of the root group's raw arguments (what an interruption looks at)
_ARGS_META = "voicepipe.args"


def signal_of(exc: BaseException) -> int:
    """The signal a KeyboardInterrupt stands for: the console script's handler
    (``_voicepipe_entry``) raises one for SIGTERM too, naming it in ``signum``;
    anything else is Ctrl-C (SIGINT)."""
    import signal

    return int(getattr(exc, "signum", signal.SIGINT))


def signals_always_raise() -> None:
    """From now on a signal that lands in an import raises KeyboardInterrupt, as
    anywhere else, instead of exiting at once (what the console script's handler,
    ``_voicepipe_entry``, does while the CLI and its libraries load). For a command
    about to run code whose interruption it records: ``voicepipe retry`` runs
    handlers that may import a library on first use (a model, seconds long), and an
    interrupted retry must be recorded as failed, not left "retrying"; ``voicepipe
    demo`` runs a Recorder, whose events are flushed on the way out."""
    _voicepipe_entry.exit_while_importing = False


def _interrupted(exc: BaseException, args: list[str], ctx: click.Context | None) -> click.exceptions.Exit:
    """Ctrl-C or SIGTERM that no command handled itself (while parsing, importing a
    command, starting it): one line and 130 (143), or ``check``'s UNKNOWN and 3 —
    a Nagios plugin's codes are 0-3. Returns the Exit to raise."""
    import signal

    name = ctx.invoked_subcommand if ctx is not None else None
    if name == "check" or (name is None and command_name(args) == "check"):
        from .cli_alerts import check_interrupted

        return check_interrupted(exc, args)
    terminated = signal_of(exc) == signal.SIGTERM
    click.echo("voicepipe: terminated (SIGTERM)" if terminated else "voicepipe: interrupted", err=True)
    return click.exceptions.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


@contextmanager
def interruptible(ctx: click.Context, after: str) -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM during the block: one line,
    ``voicepipe: interrupted: <after>``, and exit 130 (143 for SIGTERM) — whatever
    the signal turned into on its way out (DuckDB answers an interrupted query with
    its own RuntimeError, a library call may have wrapped that in a StoreError).
    ``after`` says what state the interruption left and what to do."""
    import signal

    received: list[int] = []
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread (an embedding caller): leave signals alone
            break
    try:
        yield
    except (KeyboardInterrupt, Exception) as exc:
        if not received and not isinstance(exc, KeyboardInterrupt):
            raise
        terminated = signal.SIGTERM in received
        how = "terminated (SIGTERM)" if terminated else "interrupted"
        click.echo(f"voicepipe: {how}: {after}", err=True)
        ctx.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)


class OneLineUsageError(click.UsageError):
    """A click usage error (unknown command or option, bad value) shown as the one
    line every voicepipe error is — ``voicepipe: error: …; see `voicepipe report
    events --help``` — instead of click's usage block. Exit code 2."""

    def __init__(self, exc: click.UsageError) -> None:
        super().__init__(exc.message, exc.ctx)
        self.text = exc.format_message()  # with the option's name ("Invalid value for '--limit': …")

    def command_path(self) -> str:
        names: list[str] = []
        ctx = self.ctx
        while ctx is not None:
            names.append(ctx.info_name or "")
            ctx = ctx.parent
        names[-1] = "voicepipe"  # the root, whatever the console script was called
        return " ".join(reversed(names))

    def show(self, file: Any = None) -> None:
        message = " ".join(self.text.split()).rstrip(".")
        hint = f"; see `{self.command_path()} --help`" if self.ctx is not None else ""
        click.echo(f"voicepipe: error: {message}{hint}", file=file, err=True)


class CheckUsageError(OneLineUsageError):
    """A usage error on a ``check`` command line: exit 3 (Nagios UNKNOWN), with its
    status line on stdout as well (Nagios shows stdout)."""

    exit_code = 3

    def show(self, file: Any = None) -> None:
        click.echo(_voicepipe_entry.unknown_line(" ".join(self.text.split()).rstrip(".")))
        super().show(file)


def _one_line(exc: click.UsageError, where: click.Context | None = None) -> click.UsageError:
    """``exc`` as a :class:`OneLineUsageError`; a group run without a command
    (``voicepipe report``) keeps click's help text. ``where``: the context of the
    command being parsed, for the errors click's parser raises without one (an
    option missing its value), so that they too point at that command's --help."""
    if isinstance(exc, OneLineUsageError) or type(exc).__name__ == "NoArgsIsHelpError":
        return exc
    if exc.ctx is None:
        exc.ctx = where
    return OneLineUsageError(exc)


def _parsing(group: click.Group, ctx: click.Context) -> click.Context | None:
    """The context of ``group``'s subcommand whose command line failed to parse."""
    name = ctx.invoked_subcommand
    command = group.get_command(ctx, name) if name else None
    return click.Context(command, info_name=name, parent=ctx) if command is not None else None


class OneLineGroup(click.Group):
    """A group of subcommands (``report``, ``alerts``, ``config``) whose usage errors
    become one line pointing at the subcommand's --help (see :func:`_one_line`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc, _parsing(self, ctx)) from None


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and whose --help lists
    them from LAZY_COMMANDS without importing anything."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str, str]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, attr, _ = self.lazy[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][2]) for name in sorted(self.lazy)]
        rows += [
            (name, cmd.get_short_help_str(60))
            for name, cmd in sorted(self.commands.items())
            if name not in self.lazy
        ]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        raw = list(args)
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except KeyboardInterrupt as exc:  # not click's "Aborted!" and exit 1
            raise _interrupted(exc, raw, None) from None
        except click.UsageError as exc:
            if exc.ctx is None:
                exc.ctx = click.Context(self, info_name=info_name, parent=parent)
            if parent is None and command_name(args) == "check":
                # `voicepipe --bogus check`: a monitoring system reads exit 2 as
                # CRITICAL; check's usage errors are UNKNOWN (3), wherever they are
                raise CheckUsageError(exc) from None
            raise _one_line(exc) from None
        ctx.meta[_ARGS_META] = raw
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, then push an object-store root's mirror back (see
        :func:`_sync_back`), whether the command succeeded or not."""
        try:
            rv = self._invoke(ctx)
        except BaseException as exc:
            _sync_back(ctx, exc)
            raise
        _sync_back(ctx, None)
        return rv

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc, _parsing(self, ctx)) from None
        except VoicepipeError as exc:
            app = ctx.find_object(AppContext)
            click.echo(f"voicepipe: error: {app.shown(str(exc)) if app else exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C where the command does not say more itself
            raise _interrupted(exc, ctx.meta.get(_ARGS_META, []), ctx) from None
        except BrokenPipeError:  # `voicepipe report events | head`
            sys.stderr.close()
            ctx.exit(0)
        except OSError as exc:
            # A permission or read-only problem the command did not translate itself
            # is still the user's environment, not a bug: one line, exit 1.
            from .store import PERMISSION_ERRNOS

            if exc.errno not in PERMISSION_ERRNOS:
                raise
            click.echo(f"voicepipe: error: {_permission_message(ctx, exc)}", err=True)
            ctx.exit(1)


#: exit code of a command that succeeded but whose changes could not be pushed to
#: the object store (``check``: 3, UNKNOWN, as for any check that could not finish)
EXIT_PUSH_FAILED = 1


def _sync_back(ctx: click.Context, exc: BaseException | None) -> None:
    """After a command on an object-store root: push its mirror (uploads, then
    remote deletions). A failing push prints one line; a command that had succeeded
    then exits 1 (``check``: 3), one that had failed keeps its own exit code."""
    app = ctx.find_object(AppContext)
    if app is None:
        return
    try:
        app.sync_back()
    except (VoicepipeError, OSError) as err:
        message = str(err) if isinstance(err, VoicepipeError) else str(err.strerror or err)
        click.echo(
            f"voicepipe: error: the command's changes were not all sent to the object store: {message}",
            err=True,
        )
        code = exc.exit_code if isinstance(exc, click.exceptions.Exit) else 0 if exc is None else None
        if code == 0:
            raise click.exceptions.Exit(
                3 if ctx.invoked_subcommand == "check" else EXIT_PUSH_FAILED
            ) from None
    except KeyboardInterrupt:
        if exc is None or (isinstance(exc, click.exceptions.Exit) and exc.exit_code == 0):
            raise _interrupted(KeyboardInterrupt(), ctx.meta.get(_ARGS_META, []), ctx) from None


def _permission_message(ctx: click.Context, exc: OSError) -> str:
    app = ctx.find_object(AppContext)
    root: Path | str | None = app.settings.root if app is not None and app._loaded is not None else None
    if isinstance(root, str):  # an object-store root: what failed was its local mirror
        root = app._mirror.path if app is not None and app._mirror is not None else None
    if root is not None and exc.errno == errno.EROFS:
        from .store import write_error

        return str(write_error(root, exc))
    from .store import cannot_access

    return cannot_access(exc)


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"voicepipe: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("voicepipe_obs")
    if not any(getattr(h, "_voicepipe", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(_StderrFormatter())
        handler._voicepipe = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for h in logger.handlers:  # follow the current stderr (in-process runs swap it)
        if getattr(h, "_voicepipe", False) and isinstance(h, logging.StreamHandler):
            h.setStream(sys.stderr)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


@click.group(
    cls=LazyGroup,
    lazy=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--data",
    metavar="DIR",
    envvar=None,
    help="Data root: a directory or an object-store URI, s3://bucket/prefix (default: "
    "$VOICEPIPE_DATA, the config's `data`, else ./voicepipe-data).",
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Configuration file (default: $VOICEPIPE_CONFIG, else ./voicepipe.toml).",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Log progress to stderr: what aggregate, compact, cleanup and demo --reset list, "
    "compute, write and delete.",
)
@click.version_option(package_name="voicepipe_obs", prog_name="voicepipe")
@click.pass_context
def main(ctx: click.Context, data: str | None, config_path: str | None, verbose: bool) -> None:
    """Monitor the voice-note pipeline: reports, snapshots, alerts and retries
    over the Parquet event store."""
    _setup_logging(verbose)
    ctx.obj = AppContext(config_path=config_path, data=data)


def run() -> None:  # pragma: no cover - console script entry
    main(prog_name="voicepipe", auto_envvar_prefix=None)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # `python -m voicepipe_obs.cli`: run the package's module, not this __main__ copy,
    # or subcommands' pass_app would look for a different AppContext class (--data lost).
    from voicepipe_obs.cli import run as _run

    _run()
