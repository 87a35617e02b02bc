"""Configuration: DESIGN defaults, voicepipe.toml discovery, environment and flag
overrides, one-line errors naming the key and the problem, unknown keys with a
did-you-mean, and ``voicepipe config show`` with each value's source."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import voicepipe_obs as vp
from voicepipe_obs.cli import main
from voicepipe_obs.config import (
    AlertmanagerNotifier,
    CommandNotifier,
    Settings,
    WebhookNotifier,
    effective_items,
    load_settings,
    parse_hours,
)
from voicepipe_obs.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "voicepipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_design_section_7() -> None:
    a = Settings().alerts
    assert (a.failure_rate.window_minutes, a.failure_rate.warning, a.failure_rate.critical) == (
        30,
        0.10,
        0.25,
    )
    assert a.failure_rate.min_sample == 10
    assert (a.latency.window_minutes, a.latency.multiplier, a.latency.history_days) == (30, 2.0, 7)
    assert a.queue_depth.warning == 50
    assert a.disambiguation_backlog.warning == 100
    assert a.circuit_breaker.enabled
    assert (a.inactivity.minutes, a.inactivity.expected_hours, a.inactivity.timezone) == (
        60,
        "00:00-24:00",
        "UTC",
    )
    assert (a.budget.daily_budget_usd, a.budget.warning_ratio, a.budget.critical_ratio) == (None, 0.8, 1.0)
    assert a.stuck.minutes == 30
    r = Settings().retention
    assert (r.events_days, r.hourly_snapshots_days, r.daily_snapshots_days) == (30, 7, 90)
    assert Settings().data == "./voicepipe-data"


def test_file_in_working_directory(tmp_path: Path) -> None:
    write(tmp_path, "data = '/srv/vp'\n[alerts.queue_depth]\nwarning = 80\n")
    loaded = load_settings(env={})
    assert loaded.path == tmp_path / "voicepipe.toml"
    assert loaded.settings.alerts.queue_depth.warning == 80
    assert loaded.settings.root == Path("/srv/vp")
    assert loaded.source_of("alerts.queue_depth.warning") == f"file {loaded.path}"
    assert loaded.source_of("alerts.queue_depth.enabled") == "default"


def test_explicit_and_env_config_paths(tmp_path: Path) -> None:
    other = write(tmp_path, "[alerts.stuck]\nminutes = 45\n", "other.toml")
    assert load_settings(other, env={}).settings.alerts.stuck.minutes == 45
    assert load_settings(env={"VOICEPIPE_CONFIG": str(other)}).settings.alerts.stuck.minutes == 45
    with pytest.raises(ConfigError, match=r"config file .*missing.toml not found \(check --config\)"):
        load_settings(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match=r"check \$VOICEPIPE_CONFIG"):
        load_settings(env={"VOICEPIPE_CONFIG": str(tmp_path / "nope.toml")})


def test_environment_overrides_file_and_flags_override_both(tmp_path: Path) -> None:
    write(tmp_path, "data = 'from-file'\n[alerts.failure_rate]\nwarning = 0.15\nmin_sample = 20\n")
    env = {
        "VOICEPIPE_ALERTS__FAILURE_RATE__WARNING": "0.2",
        "VOICEPIPE_ALERTS__INACTIVITY__EXPECTED_HOURS": "06:00-23:00",  # plain string fallback
        "VOICEPIPE_ALERTS__FAILURE_RATE__PER_ORGANIZATION": "false",
        "VOICEPIPE_DATA": "from-env",
        "UNRELATED": "x",
    }
    loaded = load_settings(env=env)
    fr = loaded.settings.alerts.failure_rate
    assert (fr.warning, fr.min_sample, fr.per_organization) == (0.2, 20, False)
    assert loaded.settings.alerts.inactivity.expected_hours == "06:00-23:00"
    assert loaded.source_of("alerts.failure_rate.warning") == "env VOICEPIPE_ALERTS__FAILURE_RATE__WARNING"
    assert loaded.source_of("alerts.failure_rate.min_sample").startswith("file ")
    assert loaded.settings.data == "from-env"
    flagged = load_settings(env=env, overrides={"data": "from-flag"})
    assert flagged.settings.data == "from-flag" and flagged.source_of("data") == "flag"


INVALID: list[tuple[str, str]] = [
    ("[alert]\nx = 1\n", "unknown key 'alert'; did you mean alerts?"),
    (
        "[alerts.failure_rate]\nwarnig = 0.2\n",
        "unknown key 'alerts.failure_rate.warnig'; did you mean alerts.failure_rate.warning?",
    ),
    (
        "[alerts.failur_rate]\nwarning = 0.2\n",
        "unknown key 'alerts.failur_rate'; did you mean alerts.failure_rate?",
    ),
    (
        "[alerts]\nlock_timeout = 3\n",
        "unknown key 'alerts.lock_timeout'; did you mean alerts.lock_timeout_seconds?",
    ),
    (
        "[alerts.failure_rate]\nwarning = 'high'\n",
        "alerts.failure_rate.warning: Input should be a valid number",
    ),
    (
        "[alerts.failure_rate]\nwarning = 1.5\n",
        "alerts.failure_rate.warning: Input should be less than or equal to 1",
    ),
    (
        "[alerts.failure_rate]\nwarning = 0.5\ncritical = 0.2\n",
        "alerts.failure_rate: critical (0.2) must be >= warning (0.5)",
    ),
    (
        "[alerts.inactivity]\nexpected_hours = '6-23'\n",
        "alerts.inactivity.expected_hours: expected HH:MM-HH:MM",
    ),
    (
        "[alerts.inactivity]\nexpected_hours = '22:00-24:30'\n",
        "alerts.inactivity.expected_hours: expected HH:MM-HH:MM",
    ),
    (
        "[alerts.inactivity]\ntimezone = 'Mars/Base'\n",
        "alerts.inactivity.timezone: unknown time zone 'Mars/Base'",
    ),
    (
        "[alerts.budget]\norganizations = { acme = -1 }\n",
        "alerts.budget.organizations.acme: Input should be greater than 0",
    ),
    (
        "[alerts.queue_depth]\nwarning = -1\n",
        "alerts.queue_depth.warning: Input should be greater than or equal to 0",
    ),
    ("[retention]\nevents_days = 0\n", "retention.events_days: Input should be greater than or equal to 1"),
    ("[alerts\n", "invalid TOML: "),
    (
        "[[notifiers]]\ntype = 'email'\n",
        "notifiers.0.type: unknown notifier type 'email'; use one of command, webhook, alertmanager",
    ),
    ("[[notifiers]]\nurl = 'http://x'\n", "notifiers.0: missing `type`"),
    (
        "[[notifiers]]\ntype = 'webhook'\nurl = 'http://x'\ntimout = 3\n",
        "unknown key 'notifiers.0.timout'; did you mean notifiers.0.timeout?",
    ),
    (
        "[[notifiers]]\ntype = 'webhook'\nurl = 'hooks.slack.com'\n",
        "notifiers.0.url: must start with http:// or https://",
    ),
    ("[[notifiers]]\ntype = 'command'\n", "notifiers.0.command: required key is missing"),
    (
        "[[notifiers]]\ntype = 'command'\ncommand = []\n",
        "notifiers.0.command: List should have at least 1 item",
    ),
    (
        "[[notifiers]]\ntype = 'webhook'\nurl = 'http://x'\n[[notifiers]]\ntype = 'webhook'\nurl = 'http://x'\n",
        "notifiers: two notifiers are named 'webhook:http://x'; give each a distinct `name`",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[m.split(":")[0][:40] for _, m in INVALID])
def test_invalid_file_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert message in line


def test_invalid_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"VOICEPIPE_ALERTS__FAILURE_RATE__WARNIN": "0.2"})
    assert str(info.value) == (
        "environment variable VOICEPIPE_ALERTS__FAILURE_RATE__WARNIN: unknown key "
        "'alerts.failure_rate.warnin'; did you mean alerts.failure_rate.warning?"
    )
    with pytest.raises(
        ConfigError, match=r"VOICEPIPE_ALERTS__STUCK__MINUTES: alerts.stuck.minutes: .*\(got 'soon'\)"
    ):
        load_settings(env={"VOICEPIPE_ALERTS__STUCK__MINUTES": "soon"})


def test_environment_variables_are_checked_together() -> None:
    """Lowering both thresholds: the variables apply in name order (CRITICAL before
    WARNING), and critical 0.05 against the default warning 0.1 alone is invalid."""
    env = {
        "VOICEPIPE_ALERTS__FAILURE_RATE__WARNING": "0.01",
        "VOICEPIPE_ALERTS__FAILURE_RATE__CRITICAL": "0.05",
    }
    rule = load_settings(env=env).settings.alerts.failure_rate
    assert (rule.warning, rule.critical) == (0.01, 0.05)
    # a pair that is invalid together names both variables, and only those
    env = {
        "VOICEPIPE_ALERTS__FAILURE_RATE__WARNING": "0.5",
        "VOICEPIPE_ALERTS__FAILURE_RATE__CRITICAL": "0.2",
        "VOICEPIPE_ALERTS__STUCK__MINUTES": "90",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert str(info.value).startswith(
        "environment variables VOICEPIPE_ALERTS__FAILURE_RATE__CRITICAL, "
        "VOICEPIPE_ALERTS__FAILURE_RATE__WARNING: "
    )
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[retention]\nevents_days = true\n",
            "retention: events_days must be a number, not a boolean (got true)",
        ),
        (
            "[alerts.failure_rate]\nwarning = true\n",
            "alerts.failure_rate: warning must be a number, not a boolean (got true)",
        ),
        ("[retention]\nevents_days = 100000000\n", "events_days must be at most 36,500 days, 100 years"),
        ("[alerts.stuck]\nminutes = 99999999999\n", "minutes must be at most 52,560,000 minutes"),
    ],
)
def test_a_boolean_is_not_a_number_and_durations_are_bounded(tmp_path: Path, text: str, message: str) -> None:
    """pydantic reads true as 1: `events_days = true` was one day of retention, and
    cleanup deleted nearly every event; a huge retention overflowed in cleanup."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    key = text.split("\n")[1].split(" =")[0]
    section = text.split("]")[0][1:].upper().replace(".", "__")
    variable = f"VOICEPIPE_{section}__{key.upper()}"
    with pytest.raises(ConfigError, match=variable):
        load_settings(env={variable: text.split("= ")[1].strip()}, config=write(tmp_path, ""))


def test_cleanup_refuses_a_boolean_retention(tmp_path: Path) -> None:
    root = tmp_path / "data"
    rec = vp.Recorder(root)
    rec.emit("rate_limit_hit", timestamp=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
    rec.close()
    before = sorted(p.relative_to(root) for p in (root / "events").rglob("*.parquet"))
    config = write(tmp_path, "[retention]\nevents_days = true\n")
    result = CliRunner().invoke(main, ["--data", str(root), "--config", str(config), "cleanup"])
    assert result.exit_code == 2
    assert sorted(p.relative_to(root) for p in (root / "events").rglob("*.parquet")) == before


def test_notifiers_parse_by_type(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
[[notifiers]]
type = "command"
command = ["notify-send", "voicepipe"]

[[notifiers]]
type = "webhook"
name = "slack"
url = "https://hooks.slack.com/services/T/B/X"
timeout = 3
retries = 1

[[notifiers]]
type = "alertmanager"
url = "http://127.0.0.1:9093/"
labels = { team = "voice" }
""",
    )
    n = load_settings(env={}).settings.notifiers
    assert [type(x) for x in n] == [CommandNotifier, WebhookNotifier, AlertmanagerNotifier]
    assert isinstance(n[1], WebhookNotifier) and (n[1].timeout, n[1].retries) == (3, 1)
    assert isinstance(n[2], AlertmanagerNotifier) and n[2].url == "http://127.0.0.1:9093"
    assert n[2].firing_ttl_minutes == 30


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("06:00-23:00", (360, 1380)),
        ("22:00-06:00", (1320, 360)),
        ("00:00-24:00", (0, 1440)),
        ("09:30-17:45", (570, 1065)),
    ],
)
def test_parse_hours(spec: str, parsed: tuple[int, int]) -> None:
    assert parse_hours(spec) == parsed


# ------------------------------------------------------------------ config show


def test_config_show_sources(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path, "[alerts.queue_depth]\nwarning = 80\n[[notifiers]]\ntype = 'command'\ncommand = ['true']\n"
    )
    monkeypatch.setenv("VOICEPIPE_ALERTS__STUCK__MINUTES", "45")
    result = runner.invoke(main, ["--data", "/srv/vp", "config", "show", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["config_file"] == str(path)
    items: dict[str, dict[str, Any]] = {i["key"]: i for i in data["settings"]}
    assert (items["alerts.queue_depth.warning"]["value"], items["alerts.queue_depth.warning"]["source"]) == (
        80,
        f"file {path}",
    )
    assert (items["alerts.stuck.minutes"]["value"], items["alerts.stuck.minutes"]["source"]) == (
        45,
        "env VOICEPIPE_ALERTS__STUCK__MINUTES",
    )
    assert (items["data"]["value"], items["data"]["source"]) == ("/srv/vp", "flag")
    assert items["alerts.failure_rate.warning"]["source"] == "default"
    assert items["notifiers.0.command"]["value"] == ["true"]
    table = runner.invoke(main, ["config", "show"])
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0] == f"config file: {path}"
    row = next(line for line in table.stdout.splitlines() if line.startswith("alerts.stuck.minutes"))
    assert row.split()[1:] == ["45", "env", "VOICEPIPE_ALERTS__STUCK__MINUTES"]


def test_cli_invalid_config_is_one_clean_line(runner: CliRunner, tmp_path: Path) -> None:
    write(tmp_path, "[alerts.failure_rate]\nwarnig = 0.2\n")
    result = runner.invoke(main, ["config", "show"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"voicepipe: error: {tmp_path / 'voicepipe.toml'}: unknown key 'alerts.failure_rate.warnig'; "
        "did you mean alerts.failure_rate.warning?\n"
    )


def test_documented_example_config_is_valid_and_matches_defaults(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parents[1] / "README.md"
    text = doc.read_text()
    start = text.index("A complete `voicepipe.toml` with the defaults:")
    block = text[start:].split("```toml\n", 1)[1].split("```", 1)[0]
    path = write(tmp_path, block)
    loaded = load_settings(path, env={})
    assert loaded.settings == Settings()
    documented = {k for k, _, src in effective_items(loaded) if src != "default"}
    every = {k for k, _, _ in effective_items(load_settings(env={}))}
    # every key except the commented-out optional ones appears in the example
    assert every - documented == {
        "alerts.budget.daily_budget_usd",
        "retry.app",
        "retry.allowed_actors",
    }


@pytest.mark.parametrize(
    ("text", "key", "got"),
    [
        ('[alerts.failure_rate]\nenabled = "yes"\n', "alerts.failure_rate.enabled", "'yes'"),
        ("[alerts.failure_rate]\nper_organization = 1\n", "alerts.failure_rate.per_organization", "1"),
        ('[alerts.latency]\nper_organization = "false"\n', "alerts.latency.per_organization", "'false'"),
        ("[alerts.stuck]\nenabled = 0\n", "alerts.stuck.enabled", "0"),
    ],
)
def test_booleans_must_be_toml_booleans(tmp_path: Path, text: str, key: str, got: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert (
        str(info.value)
        == f"{path}: {key}: must be true or false (a TOML boolean, without quotes) (got {got})"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        ("on", True),
        ("ON", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("NO", False),
        ("off", False),
        ("Off", False),
    ],
)
def test_boolean_environment_values_take_the_usual_spellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    """Cron files and shells hold ``False``, ``0``, ``no``...: a boolean setting in
    the environment takes them (over the file's value), while the file itself must
    use TOML booleans."""
    write(tmp_path, f"[alerts.latency]\nenabled = {str(not expected).lower()}\n")
    loaded = load_settings(
        env={"VOICEPIPE_ALERTS__LATENCY__ENABLED": raw, "VOICEPIPE_ALERTS__STUCK__PER_ORGANIZATION": raw}
    )
    assert loaded.settings.alerts.latency.enabled is expected
    assert loaded.settings.alerts.stuck.per_organization is expected
    assert loaded.source_of("alerts.latency.enabled") == "env VOICEPIPE_ALERTS__LATENCY__ENABLED"


@pytest.mark.parametrize("raw", ["maybe", "", "2", "y", "enabled", '"true"'])
def test_other_boolean_environment_values_name_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"VOICEPIPE_ALERTS__BUDGET__ENABLED": raw})
    assert str(info.value) == (
        "environment variable VOICEPIPE_ALERTS__BUDGET__ENABLED: alerts.budget.enabled: "
        f"must be true or false (also accepted: 1/0, yes/no, on/off, in any case) (got {raw!r})"
    )


def test_check_runs_with_a_boolean_environment_value(
    runner: CliRunner, rec: Any, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check` from cron with ``..._ENABLED=False`` evaluates (not exit 3, UNKNOWN)."""
    for name in ("LATENCY", "QUEUE_DEPTH", "DISAMBIGUATION_BACKLOG", "INACTIVITY", "BUDGET", "STUCK"):
        monkeypatch.setenv(f"VOICEPIPE_ALERTS__{name}__ENABLED", "False")
    monkeypatch.setenv("VOICEPIPE_ALERTS__FAILURE_RATE__PER_ORGANIZATION", "0")
    monkeypatch.setenv("VOICEPIPE_ALERTS__CIRCUIT_BREAKER__ENABLED", "no")
    rec.emit("artifact_completed", artifact_id="a1")
    rec.flush()
    result = runner.invoke(main, ["--data", str(root), "check", "--no-notify"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK"), result.output


def test_every_problem_is_listed_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[alerts.budget]\ndaily_budget_usd = -1\norganizations = { a = 'x' }\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    line = str(info.value)
    assert "\n" not in line and "more problems" not in line
    assert line.startswith(f"{path}: 2 problems: (1) alerts.budget.daily_budget_usd: ")
    assert "; (2) alerts.budget.organizations.a: " in line and "(got 'x')" in line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alerts = 3\n", "alerts: must be a table ([alerts] or { key = value, ... }) (got 3)"),
        ("retry = 'x'\n", "retry: must be a table ([retry] or { key = value, ... }) (got 'x')"),
        ("notifiers = [3]\n", "notifiers.0: must be a table (got 3)"),
    ],
)
def test_errors_do_not_name_internal_classes(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert str(info.value) == f"{path}: {message}"
    assert "instance of" not in str(info.value) and "Rules" not in str(info.value)


def test_config_show_format_help_names_the_accepted_formats(runner: CliRunner) -> None:
    result = runner.invoke(main, ["config", "show", "--help"])
    assert "json for machines" in result.stdout and "csv" not in result.stdout
    assert runner.invoke(main, ["config", "show", "--format", "csv"]).exit_code == 2


def test_a_file_that_is_not_utf8_is_a_config_error(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe bad\n")
    result = runner.invoke(main, ["--config", str(path), "config", "show"])
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert result.stdout == ""
    assert result.stderr.startswith(f"voicepipe: error: {path}: not UTF-8 (byte 0xff at offset 0)")
    assert result.stderr.endswith("; save it as UTF-8\n") and result.stderr.count("\n") == 1


def test_check_calls_a_non_utf8_file_a_config_problem_not_a_bug(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes("data = 'caf\xe9'\n".encode("latin-1"))
    result = runner.invoke(main, ["--config", str(path), "check"])
    assert result.exit_code == 3, (result.stderr, result.exception)
    assert "not UTF-8" in result.stderr and "save it as UTF-8" in result.stderr
    assert "unexpected" not in result.stderr and "bug" not in result.stderr


@pytest.mark.parametrize("kind", ["directory", "devnull", "fifo"])
def test_a_config_that_is_not_a_regular_file_says_so(runner: CliRunner, tmp_path: Path, kind: str) -> None:
    import os

    if kind == "directory":
        path = tmp_path / "conf.d"
        path.mkdir()
    elif kind == "fifo":
        path = tmp_path / "fifo.toml"
        os.mkfifo(path)
    else:
        path = Path(os.devnull)
    result = runner.invoke(main, ["--config", str(path), "config", "show"])
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert result.stderr == f"voicepipe: error: config file {path} is not a regular file (check --config)\n"
    with pytest.raises(ConfigError, match=r"is not a regular file \(check \$VOICEPIPE_CONFIG\)"):
        load_settings(env={"VOICEPIPE_CONFIG": str(path)})


def test_empty_data_in_the_file_is_a_config_error(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, 'data = ""\n')
    result = runner.invoke(main, ["demo", "--days", "1", "--live", "0"])
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert result.stderr.startswith(f"voicepipe: error: {path}: data: data root is empty: pass --data DIR")
    assert [p.name for p in tmp_path.iterdir()] == ["voicepipe.toml"]  # nothing written here
    # an empty VOICEPIPE_DATA still means "not set"
    path.unlink()
    assert load_settings(None, env={"VOICEPIPE_DATA": ""}).settings.data == "./voicepipe-data"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[alerts.budget]\ndaily_budget_usd = inf\n", "alerts.budget.daily_budget_usd"),
        ("[alerts.budget]\ndaily_budget_usd = nan\n", "alerts.budget.daily_budget_usd"),
        ("[alerts.budget]\ncritical_ratio = inf\n", "alerts.budget.critical_ratio"),
        ("[alerts.budget.organizations]\norg-a = inf\n", "alerts.budget.organizations.org-a"),
        ("[alerts.latency]\nmultiplier = inf\n", "alerts.latency.multiplier"),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path: Path, text: str, key: str) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"{key}: Input should be a finite number"):
        load_settings(env={})
