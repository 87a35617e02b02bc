"""Settings: pydantic models with the DESIGN §7 defaults, loaded from
``voicepipe.toml`` (``--config``, else $VOICEPIPE_CONFIG, else ./voicepipe.toml),
then environment variables, then flags — and where each value came from.

Environment variables: ``VOICEPIPE_DATA`` sets ``data``; any key can be set as
``VOICEPIPE_<SECTION>__<KEY>`` (double underscores between levels), e.g.
``VOICEPIPE_ALERTS__FAILURE_RATE__WARNING=0.2``. Values are read as TOML literals
(numbers, booleans, quoted strings, arrays) and fall back to plain strings; a
boolean setting also takes true/false, 1/0, yes/no or on/off in any case (a TOML
file must use real booleans).

This module reads files and the environment; it never touches the data root.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "voicepipe.toml"
ENV_CONFIG = "VOICEPIPE_CONFIG"
ENV_DATA = "VOICEPIPE_DATA"
ENV_PREFIX = "VOICEPIPE_"
#: an empty data root (``--data ""``, ``data = ""``) would mean the working directory
EMPTY_DATA: Final = "data root is empty: pass --data DIR or set VOICEPIPE_DATA"


class _Model(BaseModel):
    """A section of voicepipe.toml: unknown keys are errors, and booleans must be TOML
    booleans (``enabled = "yes"`` or ``= 1`` is an error, not true; environment
    variables are more lenient, see :func:`_parse_env_bool`)."""

    # allow_inf_nan=False: ``daily_budget_usd = inf`` (or nan) is no budget at all
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _sane_numbers(cls, data: Any) -> Any:
        """A boolean is not a number (pydantic would read ``events_days = true`` as 1
        day, and cleanup would delete nearly every event), and a duration is at most
        100 years (beyond that, dates overflow)."""
        if not isinstance(data, Mapping):
            return data
        for name, value in data.items():
            spec = cls.model_fields.get(name)
            if spec is None or isinstance(value, str):
                continue
            kinds = get_args(spec.annotation) or (spec.annotation,)
            if isinstance(value, bool):
                if bool not in kinds and (int in kinds or float in kinds):
                    raise ValueError(f"{name} must be a number, not a boolean (got {str(value).lower()})")
                continue
            unit = name.rsplit("_", 1)[-1]
            limit = _MAX_SPAN.get(unit)
            if limit is not None and isinstance(value, int | float) and value > limit:
                raise ValueError(f"{name} must be at most {limit:,} {unit}, 100 years (got {value})")
        return data


#: the largest duration a setting may give, per unit (100 years)
_MAX_SPAN: Final = {"days": 36_500, "hours": 876_000, "minutes": 52_560_000, "seconds": 3_153_600_000}


# ----------------------------------------------------------------------- sections


class RecorderSettings(_Model):
    """Recorder options used by CLI-side recorders (retry, demo)."""

    flush_interval: float = Field(1.0, gt=0)
    batch_size: int = Field(10_000, ge=1)
    durability: Literal["spool", "sync", "memory"] = "spool"
    max_buffer: int = Field(100_000, ge=1)
    error_message_max: int = Field(1000, ge=0)


class RetentionSettings(_Model):
    events_days: int = Field(30, ge=1)
    hourly_snapshots_days: int = Field(7, ge=1)
    daily_snapshots_days: int = Field(90, ge=1)
    alerts_days: int = Field(90, ge=1)


class _Rule(_Model):
    """What every rule under ``[alerts.<rule>]`` takes: flapping damping, as
    Prometheus' ``for`` and ``keep_firing_for`` (see :mod:`voicepipe_obs.damping`).

    ``for_minutes``: a condition must hold at every check for this long before its
    alert is raised (0: raised at the first check that finds it).
    ``keep_firing_minutes``: a raised alert resolves only once its condition has
    been clear at every check for this long (0: at the first clear check)."""

    enabled: StrictBool = True
    for_minutes: float = Field(0.0, ge=0)
    keep_firing_minutes: float = Field(0.0, ge=0)


class FailureRateRule(_Rule):
    window_minutes: int = Field(30, ge=1)
    warning: float = Field(0.10, ge=0, le=1)
    critical: float = Field(0.25, ge=0, le=1)
    min_sample: int = Field(10, ge=1)
    per_organization: StrictBool = True

    @model_validator(mode="after")
    def _order(self) -> FailureRateRule:
        if self.critical < self.warning:
            raise ValueError(f"critical ({self.critical}) must be >= warning ({self.warning})")
        return self


class LatencyRule(_Rule):
    window_minutes: int = Field(30, ge=1)
    multiplier: float = Field(2.0, gt=0)
    history_days: int = Field(7, ge=1)
    min_sample: int = Field(1, ge=1)
    receipt_lookback_hours: int = Field(24, ge=1)
    per_organization: StrictBool = False


class QueueDepthRule(_Rule):
    warning: int = Field(50, ge=0)
    per_organization: StrictBool = False


class DisambiguationBacklogRule(_Rule):
    warning: int = Field(100, ge=0)
    per_organization: StrictBool = False


class CircuitBreakerRule(_Rule):
    per_organization: StrictBool = False


_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-(?:([01]\d|2[0-3]):([0-5]\d)|(24):(00))$")


def parse_hours(spec: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` → (start, end) in minutes after local midnight. ``end`` may be
    1440 (``24:00``); ``end <= start`` means the window crosses midnight, and
    ``start == end`` (or ``00:00-24:00``) means all day."""
    m = _HOURS.match(spec)
    if not m:
        raise ValueError("expected HH:MM-HH:MM, e.g. 06:00-23:00 (22:00-06:00 crosses midnight)")
    h1, m1 = int(m.group(1)), int(m.group(2))
    h2, m2 = (int(m.group(3)), int(m.group(4))) if m.group(3) is not None else (24, 0)
    return h1 * 60 + m1, h2 * 60 + m2


class InactivityRule(_Rule):
    minutes: int = Field(60, ge=1)
    expected_hours: str = "00:00-24:00"
    timezone: str = "UTC"
    per_organization: StrictBool = False

    @field_validator("expected_hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        parse_hours(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Dublin)") from exc
        return v


class BudgetRule(_Rule):
    daily_budget_usd: float | None = Field(None, gt=0)
    organizations: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    warning_ratio: float = Field(0.8, gt=0)
    critical_ratio: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> BudgetRule:
        if self.critical_ratio < self.warning_ratio:
            raise ValueError(
                f"critical_ratio ({self.critical_ratio}) must be >= warning_ratio ({self.warning_ratio})"
            )
        return self


class StuckRule(_Rule):
    minutes: int = Field(30, ge=1)
    warning_count: int = Field(1, ge=1)
    per_organization: StrictBool = False


#: What an unset ``alerts.lock_timeout_seconds`` adds to the delivery deadline: a
#: check's evaluation before it delivers (well under a second on a month of events).
LOCK_MARGIN_SECONDS: Final = 10.0


class AlertRules(_Model):
    failure_rate: FailureRateRule = Field(default_factory=FailureRateRule)
    latency: LatencyRule = Field(default_factory=LatencyRule)
    queue_depth: QueueDepthRule = Field(default_factory=QueueDepthRule)
    disambiguation_backlog: DisambiguationBacklogRule = Field(default_factory=DisambiguationBacklogRule)
    circuit_breaker: CircuitBreakerRule = Field(default_factory=CircuitBreakerRule)
    inactivity: InactivityRule = Field(default_factory=InactivityRule)
    budget: BudgetRule = Field(default_factory=BudgetRule)
    stuck: StuckRule = Field(default_factory=StuckRule)
    #: How long a check waits for an overlapping one. Unset, it is the delivery
    #: deadline plus :data:`LOCK_MARGIN_SECONDS`: a check that holds the lock while
    #: it delivers to a dead endpoint holds it about that long, and the next one must
    #: not give up first (exit 3, UNKNOWN: a false page).
    lock_timeout_seconds: float = Field(30.0, ge=0)
    notification_max_age_hours: float = Field(24.0, gt=0)
    #: Wall-clock budget for all deliveries of one check (well under a 60 s Nagios
    #: plugin timeout); what is left over is delivered by the next check.
    delivery_deadline_seconds: float = Field(20.0, gt=0)

    @model_validator(mode="after")
    def _lock_outlasts_delivery(self) -> AlertRules:
        if "lock_timeout_seconds" not in self.model_fields_set:
            self.lock_timeout_seconds = self.delivery_deadline_seconds + LOCK_MARGIN_SECONDS
        return self


class CommandNotifier(_Model):
    type: Literal["command"]
    name: str | None = None
    command: list[str] = Field(min_length=1)
    timeout: float = Field(10.0, gt=0)


class WebhookNotifier(_Model):
    type: Literal["webhook"]
    name: str | None = None
    url: str
    timeout: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class AlertmanagerNotifier(_Model):
    type: Literal["alertmanager"]
    name: str | None = None
    url: str
    timeout: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0)
    firing_ttl_minutes: int = Field(30, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


Notifier = Annotated[CommandNotifier | WebhookNotifier | AlertmanagerNotifier, Field(discriminator="type")]


class RetrySettings(_Model):
    app: str | None = None
    max_attempts: int = Field(3, ge=1)
    allowed_actors: list[str] | None = None
    lock_timeout_seconds: float = Field(0.0, ge=0)


class Settings(_Model):
    data: str = "./voicepipe-data"
    recorder: RecorderSettings = Field(default_factory=RecorderSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    alerts: AlertRules = Field(default_factory=AlertRules)
    notifiers: list[Notifier] = Field(default_factory=list)
    retry: RetrySettings = Field(default_factory=RetrySettings)

    @field_validator("notifiers")
    @classmethod
    def _unique_names(cls, v: list[Any]) -> list[Any]:
        from .notify import notifier_name

        seen: set[str] = set()
        for n in v:
            name = notifier_name(n)
            if name in seen:
                raise ValueError(f"two notifiers are named {name!r}; give each a distinct `name`")
            seen.add(name)
        return v

    @field_validator("data")
    @classmethod
    def _data_not_empty(cls, v: str) -> str:
        # Path("") is the working directory: demo would write into wherever cron runs
        if v == "":
            raise ValueError(EMPTY_DATA)
        return v

    @property
    def root(self) -> Path | str:
        """The data root: a local directory, or — kept as the URL string, which
        ``Path`` would mangle (``s3:/b``) — an object-store root (``s3://bucket/prefix``)."""
        from .remote import is_remote

        if is_remote(self.data):
            return self.data
        return Path(self.data).expanduser()

    @property
    def remote_url(self) -> str | None:
        """``data`` when it is an object-store root, else None."""
        from .remote import is_remote

        return self.data if is_remote(self.data) else None


# ------------------------------------------------------------------------ loading


@dataclass
class LoadedSettings:
    """Effective settings, the file they came from, and each key's source."""

    settings: Settings
    path: Path | None
    sources: dict[str, str] = field(default_factory=dict)

    def source_of(self, key: str) -> str:
        while key:
            if key in self.sources:
                return self.sources[key]
            key = key.rpartition(".")[0]
        return "default"


def _config_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a configuration file, or None: it must be an existing
    regular file (a directory, /dev/null or a fifo is not one: reading a fifo would
    block, /dev/null would silently mean "all defaults")."""
    if not path.exists():
        return "not found"
    if not path.is_file():
        return "is not a regular file"
    return None


def find_config(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        problem = _config_problem(path)
        if problem is not None:
            raise ConfigError(f"config file {path} {problem} (check --config)")
        return path
    if env.get(ENV_CONFIG):
        path = Path(env[ENV_CONFIG]).expanduser()
        problem = _config_problem(path)
        if problem is not None:
            raise ConfigError(f"config file {path} {problem} (check ${ENV_CONFIG})")
        return path
    path = Path.cwd() / CONFIG_FILE
    return path if path.is_file() else None


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


_ENV_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_ENV_FALSE: Final = frozenset({"false", "0", "no", "off"})


def _is_bool_key(dotted: str) -> bool:
    """Whether the dotted key names a boolean setting (e.g. ``alerts.latency.enabled``)."""
    model: Any = Settings
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fld = getattr(model, "model_fields", {}).get(part)
        if fld is None:
            return False
        if i == len(parts) - 1:
            return fld.annotation is bool
        if not isinstance(fld.annotation, type) or not issubclass(fld.annotation, BaseModel):
            return False
        model = fld.annotation
    return False


def _parse_env_bool(name: str, dotted: str, raw: str) -> bool:
    """An environment variable for a boolean setting: true/false, 1/0, yes/no or
    on/off in any case (what shells, systemd and cron files commonly hold)."""
    word = raw.strip().lower()
    if word in _ENV_TRUE:
        return True
    if word in _ENV_FALSE:
        return False
    raise ConfigError(
        f"environment variable {name}: {dotted}: must be true or false "
        f"(also accepted: 1/0, yes/no, on/off, in any case) (got {raw!r})"
    )


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


_NOTIFIER_TYPES: dict[str, type[BaseModel]] = {
    "command": CommandNotifier,
    "webhook": WebhookNotifier,
    "alertmanager": AlertmanagerNotifier,
}


def _env_origin(exc: ValidationError, from_env: Mapping[str, str]) -> str:
    """ "environment variable(s) …" naming the variables behind the failing keys (a key,
    a setting inside it, or the section a cross-field check failed on)."""
    locs = [".".join(str(p) for p in err["loc"]) for err in exc.errors()]
    names = sorted(
        {
            name
            for dotted, name in from_env.items()
            if any(
                dotted == loc or dotted.startswith(loc + ".") or loc.startswith(dotted + ".") for loc in locs
            )
        }
    ) or sorted(from_env.values())
    return f"environment variable{'s' if len(names) > 1 else ''} {', '.join(names)}"


def _describe(exc: ValidationError, origin: str, raw: Mapping[str, Any]) -> str:
    """One line: where, then for every problem which key and what is wrong (and a
    did-you-mean for typos)."""
    problems = [_problem(err, raw) for err in exc.errors()]
    if len(problems) == 1:
        return f"{origin}: {problems[0]}"
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1))
    return f"{origin}: {len(problems)} problems: {listed}"


#: pydantic error types → what to say instead (their messages name internal classes).
_TABLE_ERRORS: Final = ("model_type", "model_attributes_type", "dict_type")


def _problem(err: Any, raw: Mapping[str, Any]) -> str:
    """One validation error as ``key: what is wrong (got value)``."""
    parts = list(err["loc"])
    if len(parts) > 2 and parts[0] == "notifiers" and parts[2] in _NOTIFIER_TYPES:
        del parts[2]  # the discriminator tag pydantic inserts
    loc = ".".join(str(p) for p in parts)
    if err["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in parts[:-1])
        allowed = _allowed_keys(parent, raw)
        import difflib

        hint = difflib.get_close_matches(str(parts[-1]), allowed, n=1)
        suffix = f"; did you mean {parent + '.' if parent else ''}{hint[0]}?" if hint else ""
        return f"unknown key {loc!r}{suffix}"
    if err["type"] == "union_tag_invalid":
        return (
            f"{loc}.type: unknown notifier type {err['input'].get('type')!r}; "
            f"use one of {', '.join(_NOTIFIER_TYPES)}"
        )
    if err["type"] == "union_tag_not_found":
        return f"{loc}: missing `type` (one of {', '.join(_NOTIFIER_TYPES)})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "bool_type":
        msg = "must be true or false (a TOML boolean, without quotes)"
    elif err["type"] in _TABLE_ERRORS:
        header = loc and not any(isinstance(part, int) for part in parts)
        msg = f"must be a table ([{loc}] or {{ key = value, ... }})" if header else "must be a table"
    if "input" in err and not isinstance(err["input"], Mapping | list) and repr(err["input"]) not in msg:
        msg += f" (got {err['input']!r})"
    return f"{loc or 'configuration'}: {msg}"


def _allowed_keys(dotted_parent: str, raw: Mapping[str, Any] | None = None) -> list[str]:
    """The keys a section accepts (for did-you-mean hints)."""
    parts = [p for p in dotted_parent.split(".") if p]
    if len(parts) == 2 and parts[0] == "notifiers" and parts[1].isdigit():
        try:
            kind = (raw or {})["notifiers"][int(parts[1])]["type"]
        except (KeyError, IndexError, TypeError):
            return []
        model_cls = _NOTIFIER_TYPES.get(kind)
        return list(model_cls.model_fields) if model_cls else []
    model: Any = Settings
    for part in parts:
        fld = getattr(model, "model_fields", {}).get(part)
        if fld is None or not isinstance(fld.annotation, type) or not issubclass(fld.annotation, BaseModel):
            return []
        model = fld.annotation
    return list(getattr(model, "model_fields", {}))


def load_settings(
    config: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Defaults ← voicepipe.toml ← environment ← ``overrides`` (dotted keys, from flags).

    Raises :class:`ConfigError` with one line naming the key and the problem.
    """
    env = os.environ if env is None else env
    path = find_config(config, env)
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    origin = "configuration"
    if path is not None:
        origin = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:  # TOML is UTF-8 (a file saved as UTF-16 or Latin-1)
            raise ConfigError(
                f"{path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                "save it as UTF-8"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        for key in _flatten(data):
            sources[key] = f"file {path}"
        try:
            Settings.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, str(path), data)) from exc
    from_env: dict[str, str] = {}  # dotted key → the variable that set it
    for name, raw in sorted(env.items()):
        if name == ENV_DATA:
            if raw:
                data["data"] = raw
                sources["data"] = f"env {ENV_DATA}"
        elif name.startswith(ENV_PREFIX) and "__" in name[len(ENV_PREFIX) :]:
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            value = _parse_env_bool(name, dotted, raw) if _is_bool_key(dotted) else _parse_env_value(raw)
            _set_path(data, dotted, value)
            sources[dotted] = f"env {name}"
            from_env[dotted] = name
    if from_env:
        # validated once all are applied: settings checked together (critical ≥
        # warning) may only be valid once every variable is in
        try:
            Settings.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, _env_origin(exc, from_env), data)) from exc
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        if dotted == "data" and value == "":
            raise ConfigError(f"--data: {EMPTY_DATA}")
        _set_path(data, dotted, value)
        sources[dotted] = "flag"
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin if not overrides else "flags", data)) from exc
    return LoadedSettings(settings, path, sources)


def effective_items(loaded: LoadedSettings) -> list[tuple[str, Any, str]]:
    """(dotted key, value, source) for every setting, for `voicepipe config show`."""
    dumped = loaded.settings.model_dump(mode="json")
    notifiers = dumped.pop("notifiers")
    if isinstance(dumped.get("data"), str):  # an object-store URI may carry credentials
        from .remote import display

        dumped["data"] = display(dumped["data"])
    items = [(k, v, loaded.source_of(k)) for k, v in _flatten(dumped).items()]
    for i, notifier in enumerate(notifiers):
        for k, v in notifier.items():
            key = f"notifiers.{i}.{k}"
            if k == "headers" and isinstance(v, dict):  # tokens: shown as set, not printed
                v = {name: "***" for name in v}
            elif k == "url" and isinstance(v, str):  # a webhook's path may be its secret
                from .notify import display_url

                v = display_url(v)
            items.append((key, v, loaded.source_of("notifiers")))
    return items
