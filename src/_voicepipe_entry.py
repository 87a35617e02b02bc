"""The ``voicepipe`` console script's entry point: signal handling from the first
moment, before the CLI's imports.

It lives outside the ``voicepipe_obs`` package on purpose. Importing anything inside
the package first runs ``voicepipe_obs/__init__.py`` (the Recorder, ~0.1 s), then
the CLI imports click (and its commands duckdb and pyarrow); Ctrl-C during those
imports would end in Python's KeyboardInterrupt traceback. This module imports
nothing but ``os``, ``signal`` and ``sys`` (already loaded by the interpreter),
installs the handlers, and only then imports and runs the CLI.

The handlers stay for the whole run (commands that need more install their own
over them and restore them). A signal becomes a ``KeyboardInterrupt`` whose
``signum`` attribute names it, for the CLI's own handling (one line; 130, 143 for
SIGTERM; ``check`` its UNKNOWN status and 3) — but never in the middle of an
import. An exception raised there can abort the interpreter (a C extension's
initialisation: nanobind aborts) or be swallowed (importlib's module-lock
cleanup), losing the interruption; and it would cut short a module a command still
needs (a retry handler importing a model library on first use must still record
its interrupted retry). So a signal that lands in an import waits until the import
is done: a timer looks again every millisecond (SIGALRM, only while one waits; a
SIGALRM handler of the program's own is put back after). A second signal while one waits is raised
at once, as Python would: Ctrl-C twice gets out of an import that hangs.

Python's own startup and the script wrapper's ``import re`` (a few milliseconds)
come before this module and keep Python's default behaviour.

Only the console script comes here: ``import voicepipe_obs`` (a library in
someone's pipeline, which owns its signals) installs no handler.
"""

import os
import signal
import sys

#: exit codes (128 + the signal's number, as a shell says); ``check`` is a Nagios plugin: 3
EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
CHECK_EXIT_UNKNOWN = 3
#: as ``voicepipe_obs.cli_alerts`` words them (tests compare the output with those)
CHECK_INTERRUPTED = "interrupted (Ctrl-C); what it recorded is kept, the next check goes on from there"
CHECK_TERMINATED = "terminated (SIGTERM); what it recorded is kept, the next check goes on from there"

#: How often a signal that landed in an import looks again whether it is done.
RECHECK_SECONDS = 0.001
#: the signal waiting for an import to finish (see the module's docstring), and the
#: SIGALRM handler that was there before the timer's
_waiting: list[int] = []
_alarm_before: list[object] = []

#: the root group's options that take a value (to find the command's name in argv)
_VALUED_OPTIONS = ("--data", "--config")


def _interrupt(signum: int) -> KeyboardInterrupt:
    interrupt = KeyboardInterrupt()
    interrupt.signum = signum  # type: ignore[attr-defined]
    return interrupt


def _on_signal(signum: int, frame: object) -> None:
    if _waiting:  # a second signal: at once, wherever it lands
        _stop_waiting()
        raise _interrupt(signum)
    if importing(frame):
        _waiting.append(signum)
        _alarm_before.append(signal.signal(signal.SIGALRM, _on_alarm))
        signal.setitimer(signal.ITIMER_REAL, RECHECK_SECONDS, RECHECK_SECONDS)
        return
    raise _interrupt(signum)


def _on_alarm(_signum: int, frame: object) -> None:
    if not _waiting or importing(frame):
        return
    signum = _waiting[0]
    _stop_waiting()
    raise _interrupt(signum)


def _stop_waiting() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    before = _alarm_before.pop() if _alarm_before else None
    if callable(before):  # a handler of the program's own (retry handlers' code may have one)
        signal.signal(signal.SIGALRM, before)
    # else _on_alarm stays: an alarm already due when the timer stopped finds nothing
    # waiting and returns (the default action, restored, would end the process; or
    # Python raises "Signal 14 ignored due to race condition")
    _waiting.clear()


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


def _wants_json(args: list[str]) -> bool:
    return any(
        a == "--format=json" or (a == "--format" and args[i + 1 : i + 2] == ["json"])
        for i, a in enumerate(args)
    )


def interrupted_while_starting(signum: int, argv: list[str]) -> int:
    """Say that the run was interrupted before the CLI was loaded (as the CLI says it);
    the exit code."""
    terminated = signum == signal.SIGTERM
    if command_name(argv) == "check":
        message = CHECK_TERMINATED if terminated else CHECK_INTERRUPTED
        if _wants_json(argv):
            import json

            status = {"status": "UNKNOWN", "exit_code": CHECK_EXIT_UNKNOWN, "error": message}
            out = json.dumps(status, indent=2, ensure_ascii=False)
        else:
            out = f"UNKNOWN check could not evaluate: {message}"
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
    try:
        from voicepipe_obs.cli import run as cli_run
    except KeyboardInterrupt as exc:  # raised once the import was done, before the CLI ran
        sys.exit(interrupted_while_starting(getattr(exc, "signum", signal.SIGINT), sys.argv[1:]))
    cli_run()


if __name__ == "__main__":  # pragma: no cover
    run()
