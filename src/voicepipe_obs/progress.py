"""A progress bar for long CLI runs: drawn on stderr when it is a terminal, silent
otherwise (cron, pipes, tests). Library functions report progress through a plain
``(done, total)`` callback; this module turns that into a bar and owns nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

ProgressCallback = Callable[[int, int], None]


def _interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(label: str, *, enabled: bool | None = None) -> Iterator[ProgressCallback | None]:
    """Yield a ``(done, total)`` callback drawing a bar on stderr, or None when
    stderr is not a terminal (or ``enabled`` is False). The bar appears with the
    first call and is finished (its line ended) when ``done`` reaches ``total``, so
    bars of successive phases each get their own line."""
    if not (_interactive() if enabled is None else enabled):
        yield None
        return
    bar: Any = None
    shown = 0

    def update(done: int, total: int) -> None:
        nonlocal bar, shown
        if bar is None:
            bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            bar.__enter__()
            shown = 0
        bar.update(done - shown)
        shown = done
        if done >= total:
            bar.__exit__(None, None, None)
            bar = None

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
