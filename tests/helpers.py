"""Small helpers shared by tests: talk to the test stack's InfluxDB over its v1 HTTP API.

Import as ``from helpers import influx_query`` (pytest puts ``tests/`` on sys.path because it has no
``__init__.py``). Stdlib only, so these work whatever extras are installed.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cityos.stack import StackInfo

# Loopback requests must never go through an HTTP proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class InfluxQueryError(AssertionError):
    """An InfluxQL statement failed (an AssertionError so pytest shows it as a plain test failure)."""


def _request(
    info: StackInfo,
    path: str,
    params: dict[str, str],
    body: bytes | None = None,
    *,
    auth: bool = True,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    url = f"{info.influx_url}{path}?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, data=body, method="POST")
    if auth:
        token = base64.b64encode(f"{info.influx_username}:{info.influx_password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with _HTTP.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def influx_query(info: StackInfo, db: str, q: str) -> list[dict[str, Any]]:
    """Run InfluxQL (any statement; POST so writes like DROP work too) with ``epoch=ms``.

    Returns the series of all statements, each ``{"name", "columns", "values", "tags"?}``; empty if no data.
    Raises :class:`InfluxQueryError` on any HTTP or statement error.
    """
    status, raw = _request(info, "/query", {"db": db, "q": q, "epoch": "ms"})
    try:
        doc = json.loads(raw or b"{}")
    except ValueError:
        raise InfluxQueryError(f"{q!r}: HTTP {status}: {raw[:300]!r}") from None
    if status != 200 or "error" in doc:
        raise InfluxQueryError(f"{q!r}: HTTP {status}: {doc.get('error', raw[:300])}")
    series: list[dict[str, Any]] = []
    for result in doc.get("results", []):
        if "error" in result:
            raise InfluxQueryError(f"{q!r}: {result['error']}")
        series.extend(result.get("series", []))
    return series


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
    status, raw = _request(info, "/write", {"db": db, "precision": precision}, body.encode())
    if status != 204:
        raise InfluxQueryError(f"write to {db}: HTTP {status}: {raw[:300]!r}")
