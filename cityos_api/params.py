"""The parameters and shapes every data route shares (docs/api.md, "Conventions"), pure: no I/O.

* **Time ranges**: ``from`` and ``to`` (``to`` exclusive), each an ISO 8601 date-time with its offset
  (``2026-12-01T09:00:00+09:00``, ``...Z``) or a date (``2026-12-01``: the start of that day in Japan). A route
  gives its default and its longest span (:class:`Span`); a range longer than that, reversed, or outside years
  2000-2099 is 422 naming the parameter.
* **Times out** are ISO 8601 in Japan time with the offset (``2026-12-01T09:00:00+09:00``): :func:`iso`.
* **Paging**: ``limit`` (1 to the route's maximum) and ``cursor`` (opaque, from the previous page's
  ``next_cursor``; it is the last row's sort key, so a page never repeats or skips a row even while data
  arrives). :func:`encode_cursor` / :func:`decode_cursor`.
* **Ids** in paths and queries are checked against the wire contract's id pattern before any query is built, so
  no parameter reaches InfluxQL or a header unvalidated; InfluxQL string literals are built by :func:`literal`.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Query

from cityos.influx import quote_literal as literal
from cityos.wire import ID_PATTERN
from cityos_api.opendata import JST

__all__ = [
    "Format",
    "FormatQuery",
    "Span",
    "TimeRange",
    "bad",
    "check_id",
    "decode_cursor",
    "encode_cursor",
    "iso",
    "literal",
    "parse_time",
    "time_range",
]

#: ``format``: every data route answers JSON or CSV.
Format = Literal["json", "csv"]
FormatQuery = Annotated[Format, Query(alias="format", description="json (the default) or csv (UTF-8 with a BOM, "
                                                                  "CRLF, a header row: for spreadsheets)")]

_ID_RE = re.compile(ID_PATTERN)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SPACE_OFFSET = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")
_FIRST_MS = 946_684_800_000  # 2000-01-01
_LAST_MS = 4_102_444_800_000  # 2100-01-01


def bad(param: str, expected: str, got: Any = None) -> HTTPException:
    """A 422 naming the parameter, what was expected and (cut short) what came."""
    shown = "" if got is None else f", got {str(got)[:60]!r}"
    return HTTPException(status_code=422, detail=f"{param}: expected {expected}{shown}")


def check_id(param: str, value: str, what: str = "an id as in the data (lower-case letters, digits, _ and -)"
             ) -> str:
    if not _ID_RE.fullmatch(value):
        raise bad(param, what, value)
    return value


@functools.lru_cache(maxsize=1 << 16)
def iso(ts_ms: float) -> str:
    """ISO 8601 in Japan time with its offset, to the second (to the millisecond when it has one). Kept for the
    last 65,536 times: a table repeats its periods' starts and ends in every row (11,904 cells over 31 days have
    1,489 distinct times), and formatting one costs more than the row's other work."""
    t = datetime.fromtimestamp(ts_ms / 1000, JST)
    return t.isoformat(timespec="milliseconds" if int(ts_ms) % 1000 else "seconds")


def parse_time(param: str, raw: str) -> int:
    """Epoch ms of ``raw`` (see the module's docstring), or 422."""
    # a '+' left unescaped in a URL arrives as a space: "...T09:00:00 09:00" means "+09:00"
    text = _SPACE_OFFSET.sub(r"\1+\2", raw.strip())
    try:
        if _DATE_RE.fullmatch(text):
            d = date.fromisoformat(text)
            t = datetime(d.year, d.month, d.day, tzinfo=JST)
        else:
            t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if t.tzinfo is None:
                raise bad(param, "a UTC offset (Z or +09:00) on the time", raw)
    except (ValueError, OverflowError):
        raise bad(param, "an ISO 8601 date-time with offset (2026-12-01T09:00:00+09:00) or a date "
                  "(YYYY-MM-DD, JST)", raw) from None
    ms = int(t.timestamp() * 1000)
    if not _FIRST_MS <= ms < _LAST_MS:
        raise bad(param, "a time in the years 2000 to 2099", raw)
    return ms


@dataclass(frozen=True)
class Span:
    """A route's time window: the default length (ending now) and the longest allowed."""

    default: timedelta
    longest: timedelta


@dataclass(frozen=True)
class TimeRange:
    start_ms: int
    end_ms: int

    def where(self) -> str:
        return f"time >= {self.start_ms}ms AND time < {self.end_ms}ms"

    def public(self) -> dict[str, str]:
        return {"from": iso(self.start_ms), "to": iso(self.end_ms)}


def time_range(frm: str | None, to: str | None, span: Span, now_ms: int) -> TimeRange:
    """``from``/``to`` of a request: defaults (``span.default`` ending now), order and length checked."""
    end = parse_time("to", to) if to else now_ms
    start = parse_time("from", frm) if frm else end - int(span.default.total_seconds() * 1000)
    if start >= end:
        raise bad("from", "a time before `to`", frm)
    if end - start > span.longest.total_seconds() * 1000:
        raise bad("to", f"a range of at most {_human(span.longest)} after `from` (page through longer ones)", to)
    return TimeRange(start, end)


def _human(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 86400} days" if s % 86400 == 0 else f"{s // 3600} hours"


def encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None, fields: dict[str, type]) -> dict[str, Any] | None:
    """The key a cursor holds, checked to have exactly ``fields`` of those types; else 422."""
    if raw is None:
        return None
    try:
        if len(raw) > 512:
            raise ValueError
        key = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(key, dict) or set(key) != set(fields):
            raise ValueError
        for k, typ in fields.items():
            if not isinstance(key[k], typ) or isinstance(key[k], bool):
                raise ValueError
            if typ is str and not _ID_RE.fullmatch(key[k]):
                raise ValueError
    except ValueError:
        raise bad("cursor", "the next_cursor of a previous page, unchanged", raw) from None
    return key
