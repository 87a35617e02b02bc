"""The ``voicepipe`` console script's entry point: signal handling from the first
moment, before the CLI's imports.

It lives outside the ``voicepipe_obs`` package on purpose. Importing anything inside
the package first runs ``voicepipe_obs/__init__.py`` (the Recorder, ~0.1 s), then
the CLI imports click (and its commands duckdb and pyarrow); Ctrl-C during those
imports would end in Python's KeyboardInterrupt traceback. This module imports
nothing but ``os``, ``signal`` and ``sys`` (already loaded by the interpreter),
installs the handlers, and only then imports and runs the CLI.

The handlers stay for the whole run (commands that need more install their own
over them and restore them). What they do depends on where the signal lands:

- while a module is being imported (the CLI's own imports, and a command's lazy
  imports of duckdb and pyarrow): one line and exit at once — ``voicepipe:
  interrupted`` on stderr, 130 (143 for SIGTERM); for ``check`` its usual UNKNOWN
  status on stdout and 3. An exception raised there can abort the interpreter (a
  C extension's initialisation — nanobind aborts) or be swallowed (importlib's
  module-lock cleanup), losing the interruption. Exiting is safe there: every
  file the commands write is written under a temporary name and renamed into
  place, and their bookkeeping is crash-safe (a rerun converges), as for
  ``kill -9``. A command that runs the pipeline's own code — ``retry`` (handlers
  that import a model library on first use) and ``demo`` (a Recorder) — turns this
  off first (:func:`voicepipe_obs.cli.signals_always_raise`): there an
  interruption must be recorded, not skipped;
- anywhere else: a ``KeyboardInterrupt`` whose ``signum`` attribute names the
  signal, for the CLI's own handling (one line; 130, 143 for SIGTERM; ``check``
  3).

Python's own startup and the script wrapper's ``import re`` (a few milliseconds)
come before this module and keep Python's default behaviour.

Only the console script comes here: ``import voicepipe_obs`` (a library in
someone's pipeline, which owns its signals) installs no handler.
"""

import os
import signal
import sys
from collections.abc import Sequence

#: exit codes (128 + the signal's number, as a shell says); ``check`` is a Nagios plugin: 3
EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
CHECK_EXIT_UNKNOWN = 3
#: ``check``'s UNKNOWN reasons after Ctrl-C and SIGTERM (records are appended as it
#: goes); :mod:`voicepipe_obs.cli_alerts` uses these, as it uses :func:`wants_json`
CHECK_INTERRUPTED = "interrupted (Ctrl-C); what it recorded is kept, the next check goes on from there"
CHECK_TERMINATED = "terminated (SIGTERM); what it recorded is kept, the next check goes on from there"

#: Whether a signal landing in an import exits at once (see the module's docstring).
#: A command turns it off (:func:`voicepipe_obs.cli.signals_always_raise`) before it
#: runs code whose interruption it must record: ``voicepipe retry`` running a
#: handler that imports a library on first use, ``voicepipe demo``'s Recorder.
exit_while_importing = True

#: the root group's options that take a value (to find the command's name in argv)
_VALUED_OPTIONS = ("--data", "--config")


def _on_signal(signum: int, frame: object) -> None:
    if exit_while_importing and importing(frame):
        code = interrupted_while_starting(signum, sys.argv[1:])
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a write the signal interrupted, a closed pipe: exit anyway
                pass
        os._exit(code)
    interrupt = KeyboardInterrupt()
    interrupt.signum = signum  # type: ignore[attr-defined]
    raise interrupt


def importing(frame: object) -> bool:
    """Whether ``frame`` (where a signal landed) is inside an import: importlib's
    frames are on its stack."""
    while frame is not None:
        if getattr(getattr(frame, "f_code", None), "co_filename", "").startswith("<frozen importlib."):
            return True
        frame = getattr(frame, "f_back", None)
    return False


def command_name(argv: list[str]) -> str | None:
    """The subcommand ``argv`` (without the program name) runs: the first word that
    is not a root option or a root option's value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
        elif arg == "--":
            return None
    return None


def wants_json(args: Sequence[str]) -> bool:
    """Whether raw ``check`` arguments ask for --format json (for an interruption or
    an error before the options are parsed)."""
    return any(
        a == "--format=json" or (a == "--format" and args[i + 1 : i + 2] == ["json"])
        for i, a in enumerate(args)
    )


def unknown_line(message: str) -> str:
    """``check``'s status line when it could not evaluate (Nagios shows stdout)."""
    return f"UNKNOWN check could not evaluate: {message}"


def interrupted_while_starting(signum: int, argv: list[str]) -> int:
    """Say that the run was interrupted before the CLI was loaded; the exit code."""
    terminated = signum == signal.SIGTERM
    if command_name(argv) == "check":
        message = CHECK_TERMINATED if terminated else CHECK_INTERRUPTED
        if wants_json(argv):
            import json

            status = {"status": "UNKNOWN", "exit_code": CHECK_EXIT_UNKNOWN, "error": message}
            out = json.dumps(status, indent=2, ensure_ascii=False)
        else:
            out = unknown_line(message)
        _write(1, out)
        _write(2, f"voicepipe: error: check could not evaluate: {message}")
        return CHECK_EXIT_UNKNOWN
    how = "terminated (SIGTERM)" if terminated else "interrupted"
    _write(2, f"voicepipe: {how}")
    return EXIT_CODES.get(signum, EXIT_CODES[signal.SIGINT])


def _write(fd: int, line: str) -> None:
    try:
        os.write(fd, (line + "\n").encode("utf-8", "replace"))
    except OSError:  # a closed stdout or stderr: the exit code still says it
        pass


def run() -> None:  # pragma: no cover - exercised through the installed script
    """The console script: handlers first, then the CLI."""
    for signum in EXIT_CODES:
        signal.signal(signum, _on_signal)
    from voicepipe_obs.cli import run as cli_run

    cli_run()


if __name__ == "__main__":  # pragma: no cover
    run()
