"""Small helpers shared by tests: talk to the test stack's InfluxDB over its v1 HTTP API.

Import as ``from helpers import influx_query`` (pytest puts ``tests/`` on sys.path because it has no
``__init__.py``). Through the kernel's one InfluxDB client.
"""

from __future__ import annotations

from typing import Any

from citylab import stack
from citylab.stack import StackInfo
from cityos.influx import InfluxClient


class InfluxQueryError(AssertionError):
    """An InfluxQL statement failed (an AssertionError so pytest shows it as a plain test failure)."""


def influx_query(info: StackInfo, db: str, q: str) -> list[dict[str, Any]]:
    """Run InfluxQL (POST, so writes like DROP work too) with ``epoch=ms``; the series of all statements."""
    try:
        return stack.influx_query(info, db, q)
    except stack.StackError as exc:
        raise InfluxQueryError(str(exc)) from None


def influx_count(info: StackInfo, db: str, measurement: str, field: str | None = None) -> int:
    """Number of points in ``measurement``.

    Without ``field`` this is exact (one row per point and series, whatever fields each point has) but reads
    all points; with ``field`` it is ``COUNT(field)`` computed by the server: points that carry that field.
    """
    m = '"' + measurement.replace('"', '\\"') + '"'
    if field is not None:
        f = '"' + field.replace('"', '\\"') + '"'
        series = influx_query(info, db, f"SELECT COUNT({f}) FROM {m} GROUP BY *")
        return sum(int(row[1]) for s in series for row in s["values"])
    series = influx_query(info, db, f"SELECT * FROM {m} GROUP BY *")
    return sum(len(s["values"]) for s in series)


def influx_write(info: StackInfo, db: str, lines: str | list[str], precision: str = "ms") -> None:
    """Write line protocol (``precision`` as in the /write API: ns, u, ms, s)."""
    body = lines if isinstance(lines, str) else "\n".join(lines)
    with InfluxClient(info.influx_url, db, info.influx_username, info.influx_password, gzip=False,
                      precision=precision, timeout_s=30) as client:
        res = client.write(body.encode())
    if not res.ok:
        raise InfluxQueryError(f"write to {db}: HTTP {res.status}: {res.message[:300]!r}")
