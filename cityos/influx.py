"""The one InfluxDB client: the v1-compatible HTTP API (``/write``, ``/query``, ``/ping``) over httpx.

Every InfluxDB generation serves this API (1.x natively, 2.x and 3.x/Cloud through their v1 compatibility
endpoints), so the ingest, the City OS API, the dashboards' preview and the developers' stack all speak it through
this module and one deployment can move engines without code changes. Cloud side only: a gateway never imports it
(httpx is not in the gateway's install; the fence test in ``tests/test_layers.py`` keeps it so).

Writes return a :class:`WriteResult` whose ``outcome`` tells the caller what to do (one call, one request, no
retries here):

========================  =====================================================================================
outcome                   meaning / what the ingest does
========================  =====================================================================================
``ok``                    204: every point stored
``bad_data``              400: InfluxDB refused (some of) the points, ``message`` is its error text, e.g.
                          ``partial write: field type conflict: ...``; the good points of the batch *were* stored.
                          Find the culprit messages, dead-letter them.
``too_large``             413: body over ``max-body-size``; split like ``bad_data``
``auth``                  401/403: a configuration error; retried with backoff, logged loudly
``db_not_found``          404 ``database not found``: retried (someone may create it), logged
``server_error``          5xx (also "timeout" / "engine: cache-max-memory-size exceeded"): retried
``timeout``               no answer within ``timeout_s``: retried
``connection``            refused / reset / DNS: retried
``other``                 any other status: retried, logged
========================  =====================================================================================

Queries raise :class:`InfluxQueryError` (HTTP-level, not JSON, or a statement's error, with InfluxDB's own text)
or :class:`InfluxUnreachable` (no HTTP answer).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
from pydantic import BaseModel, ConfigDict, Field

from cityos.config import HttpUrl
from cityos.credentials import read_secret

__all__ = [
    "REJECTED", "RETRYABLE", "InfluxClient", "InfluxError", "InfluxQueryError", "InfluxSettings",
    "InfluxUnreachable", "QueryFn", "WriteResult", "classify", "query_results", "quote_ident", "quote_literal", "series_of",
]

#: InfluxQL in, (HTTP status, response body) out: one v1 ``/query`` request (``epoch=ms``), as the API and the
#: rollup service call it (tests stand in for InfluxDB with one).
QueryFn = Callable[[str, str], tuple[int, bytes]]

RETRYABLE = frozenset({"auth", "db_not_found", "server_error", "timeout", "connection", "other"})
REJECTED = frozenset({"bad_data", "too_large"})


class InfluxSettings(BaseModel):
    """Where InfluxDB is and who we are to it: the ``[influx]`` section every cloud-side config shares."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = "http://127.0.0.1:8086"
    db: str = Field(default="cityos", min_length=1)
    username: str | None = None
    #: A 0600 file holding the password (InfluxDB 2.x/3.x: the token). Never the password itself in a config.
    password_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0)


class InfluxError(RuntimeError):
    """Base of this client's errors."""


class InfluxUnreachable(InfluxError):
    """No HTTP answer (refused, reset, timed out, DNS)."""


class InfluxQueryError(InfluxError):
    """A /query response that is an error: HTTP-level, not JSON, or a statement's; ``error`` is InfluxDB's text."""

    def __init__(self, status: int, error: str) -> None:
        self.status = status
        self.error = error
        super().__init__(error if status == 200 else f"HTTP {status}: {error}")


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: str
    status: int | None
    message: str
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def retryable(self) -> bool:
        return self.outcome in RETRYABLE

    @property
    def rejected(self) -> bool:
        return self.outcome in REJECTED


def classify(status: int, body: str) -> tuple[str, str]:
    """(outcome, message) for an HTTP response from ``/write``."""
    message = _error_text(body)
    if status == 204 or status == 200:
        return "ok", ""
    if status == 400:
        return "bad_data", message
    if status == 413:
        return "too_large", message or "request entity too large"
    if status in (401, 403):
        return "auth", message or f"HTTP {status}"
    if status == 404:
        return "db_not_found", message or "not found"
    if 500 <= status <= 599:
        return "server_error", message or f"HTTP {status}"
    return "other", message or f"HTTP {status}"


def _error_text(body: str) -> str:
    body = body.strip()
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:2000]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:2000]
    return body[:2000]


def query_results(status: int, raw: bytes) -> list[dict[str, Any]]:
    """The ``results`` (one per statement) of a /query response; :class:`InfluxQueryError` if any is an error."""
    try:  # msgspec: 3-4x json's speed on the API's larger answers (2,000 rows of 15 fields: 0.8 ms, not 2.9)
        doc = msgspec.json.decode(raw or b"{}")
    except ValueError:
        raise InfluxQueryError(status, f"not JSON: {raw[:300]!r}") from None
    if not isinstance(doc, dict):
        raise InfluxQueryError(status, f"not a query response: {raw[:300]!r}")
    if status != 200 or "error" in doc:
        raise InfluxQueryError(status, str(doc.get("error", raw[:300])))
    results: list[dict[str, Any]] = doc.get("results", [])
    for result in results:
        if "error" in result:
            raise InfluxQueryError(status, str(result["error"]))
    return results


def series_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every statement's series, in order (``{"name", "columns", "values", "tags"?}``)."""
    return [s for result in results for s in result.get("series", [])]


def quote_ident(name: str) -> str:
    """InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    """InfluxQL single-quoted string literal (quotes and backslashes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxClient:
    """One InfluxDB endpoint and database, one keep-alive HTTP connection pool.

    ``transport`` is httpx's (tests stand in for InfluxDB with one). Safe to share between threads for queries;
    the ingest gives each writer thread its own client so each has its own connection.
    """

    def __init__(
        self,
        url: str,
        db: str,
        username: str | None = None,
        password: str | None = None,
        *,
        timeout_s: float = 10.0,
        gzip: bool = True,
        precision: str = "ms",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.db = db
        self.gzip = gzip
        self.username = username
        auth = httpx.BasicAuth(username, password or "") if username else None
        self._client = httpx.Client(
            base_url=self.url, auth=auth, timeout=httpx.Timeout(timeout_s), trust_env=False, transport=transport
        )
        self._write_params = {"db": db, "precision": precision}

    @classmethod
    def from_settings(cls, s: InfluxSettings, **kw: Any) -> InfluxClient:
        password = read_secret(s.password_file, "influx.password_file") if s.password_file else None
        return cls(s.url, s.db, s.username, password, timeout_s=s.timeout_s, **kw)

    # --- /write

    def write(self, body: bytes) -> WriteResult:
        """POST the line protocol ``body`` (uncompressed; compressed here if configured)."""
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip:
            # Level 1: ~10x smaller on line protocol at a fraction of the CPU of the default level.
            comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31 = gzip container
            body = comp.compress(body) + comp.flush()
            headers["Content-Encoding"] = "gzip"
        t0 = time.perf_counter()
        try:
            resp = self._client.post("/write", params=self._write_params, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return WriteResult("timeout", None, _exc_text(exc), _ms(t0))
        except httpx.TransportError as exc:
            return WriteResult("connection", None, _exc_text(exc), _ms(t0))
        outcome, message = classify(resp.status_code, resp.text)
        return WriteResult(outcome, resp.status_code, message, _ms(t0))

    # --- /query

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        params: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        auth: bool = True,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes]:
        """One raw request: (status, body). Raises :class:`InfluxUnreachable` when there is no HTTP answer.

        ``auth=False`` sends no credentials (creating the first admin user is allowed only that way).
        """
        kw: dict[str, Any] = {"params": params, "data": form}
        if not auth:
            kw["auth"] = None
        if timeout_s is not None:
            kw["timeout"] = timeout_s
        try:
            resp = self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise InfluxUnreachable(f"InfluxDB at {self.url} unreachable: {_exc_text(exc)}") from exc
        return resp.status_code, resp.content

    def query_raw(self, q: str, db: str | None = None) -> tuple[int, bytes]:
        """InfluxQL (POST, ``epoch=ms``): the HTTP status and body, unparsed."""
        return self.request("/query", method="POST", form={"db": db or self.db, "q": q, "epoch": "ms"})

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """InfluxQL (POST, ``epoch=ms``): every statement's series (:func:`series_of`)."""
        return series_of(query_results(*self.query_raw(q, db)))

    def ping(self, timeout_s: float = 1.0) -> bool:
        try:
            return self.request("/ping", timeout_s=timeout_s, auth=False)[0] == 204
        except InfluxUnreachable:
            return False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> InfluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _exc_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
