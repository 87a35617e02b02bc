"""The docs are checked: README starts with the two commands a new user runs, every
CLI command has help text and appears in README's command reference, and the
documented examples match the code."""

from __future__ import annotations

import re
from pathlib import Path

import click

from voicepipe_obs.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands() -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []

    def walk(cmd: click.Command, path: list[str], ctx: click.Context) -> None:
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, f"{' '.join(path)} lists {name} but cannot load it"
                walk(sub, [*path, name], click.Context(sub, info_name=name, parent=ctx))
        else:
            out.append((" ".join(path), cmd))

    walk(main, ["voicepipe"], click.Context(main, info_name="voicepipe"))
    return out


def test_every_command_has_help_and_is_in_the_command_reference() -> None:
    reference = README[README.index("## Command reference") :]
    commands = _commands()
    assert len(commands) >= 19
    for path, cmd in commands:
        assert (cmd.help or "").strip(), f"{path} has no help text"
        assert f"`{path}`" in reference, f"{path} is missing from README's command reference"
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{path} {param.opts[0]} has no help text"


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    head = README[: README.index("## Contents")]
    assert "pip install -e . && .venv/bin/voicepipe demo" in head
    block = re.search(r"<!-- test-command -->\n```sh\n(.+?)\n```\n<!-- /test-command -->", head, re.S)
    assert block is not None and "pytest" in block.group(1)


def test_every_event_type_and_stage_is_documented() -> None:
    from voicepipe_obs.events import EVENT_TYPES, STAGES

    missing = [name for name in (*EVENT_TYPES, *STAGES) if name not in README]
    assert not missing, f"README does not mention {missing}"
