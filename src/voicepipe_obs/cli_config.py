"""``voicepipe config show``: the effective configuration and where each value
came from (default, file, environment variable, flag)."""

from __future__ import annotations

import json

import click

from .cli import AppContext, OneLineGroup, format_option, pass_app


@click.group(cls=OneLineGroup)
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@format_option("table", "json")
@pass_app
def show(app: AppContext, fmt: str) -> None:
    """Print every setting with its effective value and source."""
    from .config import effective_items

    loaded = app.loaded
    items = effective_items(loaded)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "config_file": str(loaded.path) if loaded.path else None,
                    "settings": [{"key": k, "value": v, "source": s} for k, v, s in items],
                },
                indent=2,
            )
        )
        return
    from tabulate import tabulate

    click.echo(f"config file: {loaded.path or '(none found; defaults apply)'}")
    rows = [(k, json.dumps(v) if not isinstance(v, str) else v, s) for k, v, s in items]
    click.echo(tabulate(rows, headers=["key", "value", "source"], tablefmt="simple"))
