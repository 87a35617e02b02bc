"""SQL text for what DuckDB cannot bind as a parameter: file paths in view
definitions, the vocabulary's lists in filters. Values users type are always bound,
never spliced in."""

from __future__ import annotations

from collections.abc import Iterable


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Iterable[str]) -> str:
    """A parenthesised list of string literals, for ``IN``."""
    return "(" + ", ".join(sql_str(v) for v in values) + ")"
