"""Markdown pieces: escaped text, tables, numbers with intervals, code fences. Every value that
comes from a run is escaped, so names with `|`, newlines, backticks or HTML cannot break a table
or inject markup."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import pandas as pd

_MARKUP = re.compile(r"([\\`*_\[\]|~#$!])")


def escape(value: object) -> str:
    """`value` as one line of literal markdown text: whitespace runs become one space, HTML and
    markdown punctuation are escaped."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKUP.sub(r"\\\1", text)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> str:
    """A markdown table, every cell escaped; `align` has one l or r per column."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [_table_line(headers), _table_line(rule, raw=True)]
    lines += [_table_line(row) for row in rows]
    return "\n".join(lines)


def _table_line(cells: Iterable[object], raw: bool = False) -> str:
    """One table row; cells are escaped unless `raw`."""
    return "| " + " | ".join(str(c) if raw else escape(c) for c in cells) + " |"


def _missing(value: object) -> bool:
    """True for None and NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: object, spec: str) -> str:
    """`value` formatted with `spec`, or an en dash when missing."""
    return "–" if _missing(value) else format(value, spec)


def plus_minus(half_width: float) -> str:
    """A CI half-width as '±0.012', or an en dash when undefined (single seed)."""
    return "–" if _missing(half_width) else f"±{half_width:.3f}"


def interval(centre: float, half_width: float) -> str:
    """A signed interval '+0.010 to +0.052', or an en dash when undefined."""
    if _missing(half_width):
        return "–"
    return f"{centre - half_width:+.3f} to {centre + half_width:+.3f}"


def timestamp(millis: float) -> str:
    """MLflow epoch milliseconds as a UTC minute."""
    return pd.Timestamp(millis, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def fence(code: str, language: str = "bash") -> str:
    """A fenced code block whose fence is longer than any backtick run inside `code`."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{code}\n{ticks}"
