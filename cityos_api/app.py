"""The City OS API (FastAPI): every family's data for the city's services and open-data users (docs/api.md).

``cityos api serve --config api.toml`` runs it with uvicorn (config: :mod:`cityos_api.settings`). The house:

* ``core``: what every route shares (its scope, the rate limit, reading InfluxDB, formats, errors, metrics);
* ``auth``: scopes and the hashed token store (``cityos api token``);
* ``families/<name>.py``: each family's routes, found by the family's name (:data:`cityos.families.FAMILIES`),
  under ``/v1/<family>/...``;
* ``gtfs_rt``, ``opendata``: the buses' feed and the open-data suppression core (pure).

Operations routes: ``/healthz`` (open: InfluxDB reachable, data fresh), ``/metrics`` (Prometheus, scope
``internal:fleet``), ``/docs`` (Swagger UI served from the package, no CDN) and ``/openapi.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.influx import InfluxError, query_results
from cityos_api import fleet, ngsi_ld
from cityos_api.auth import FLEET, OPEN, SCOPES, Denied
from cityos_api.core import Api, Body, family_parts, json_body, problem
from cityos_api.settings import ApiSettings, InfluxSettings, load_settings

__all__ = ["ApiSettings", "InfluxSettings", "create_app", "load_settings"]

log = logging.getLogger("cityos_api")

#: Paths of the first API, kept as permanent redirects (journey planners and open-data users bookmarked them).
LEGACY = {
    "/gtfs-rt/vehicle-positions.pb": "/v1/bus/vehicle-positions.pb",
    "/gtfs-rt/vehicle-positions.json": "/v1/bus/vehicle-positions.json",
    "/open/v1/bus/stop-hourly": "/v1/bus/stop-hourly",
    "/open/v1/bus/od-monthly": "/v1/bus/od-monthly",
}


class _Measure:
    """ASGI middleware: each request's status and time per route template (bounded labels: never the raw path)."""

    def __init__(self, app: ASGIApp, api: Api) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            m = self.api.metrics
            m.requests.labels(label, str(status)).inc()
            m.latency.labels(label).observe(time.perf_counter() - t0)


def _param_errors(exc: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
    errors = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p not in ("query", "path", "header")]
        name = ".".join(loc) or "request"
        errors.append({"parameter": name, "problem": str(e.get("msg", "not valid"))[:200]})
    return "; ".join(f"{e['parameter']}: {e['problem']}" for e in errors), errors


#: RFC 7807 problem details, as every error of the /v1 and operations routes is answered.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"},
                   "errors": {"type": "array", "items": {"type": "object", "properties": {
                       "parameter": {"type": "string"}, "problem": {"type": "string"}}}}},
}
_ERROR_TEXT = {400: "bad request", 401: "no valid token", 403: "the token lacks the route's scope",
               404: "not found", 422: "a parameter is not valid (the detail says which and why)",
               429: "rate limit", 500: "internal error", 503: "InfluxDB unavailable"}


class HealthData(Body):
    fresh: bool = Field(description="an ingest reported within fresh_within_s and its count of points written grew")
    newest_ingest_report_age_s: float | None = Field(description="age of the newest ingest report, s (0.1 s); null "
                                                                 "when none came within fresh_within_s")
    points_written_in_window: bool = Field(description="an ingest's count of points written grew in the window")
    fresh_within_s: float = Field(description="the window, s (`[health] fresh_within_s`)")


class Health(Body):
    """``/healthz``'s body, 200 and 503 alike."""

    status: Literal["ok", "degraded", "down"] = Field(description=(
        "ok: InfluxDB reachable and data fresh; degraded: reachable, data stale (200); down: unreachable (503)"))
    influxdb: Literal["reachable", "unreachable"]
    data: HealthData


def _own_body(response: dict[str, Any]) -> bool:
    """An error response that declares its own JSON body (``/healthz``'s 503), not FastAPI's validation error."""
    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    return bool(ref) and not ref.endswith("/HTTPValidationError")


def _problem_responses(doc: dict[str, Any]) -> None:
    """Every error of our routes as it is answered: ``application/problem+json`` (FastAPI documents its own
    validation error shape, which we do not send), but for an error that declares its own JSON body (``/healthz``'s
    503: its status body). NGSI-LD routes document their own errors (ProblemDetails as its spec has them)."""
    doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for path, item in doc.get("paths", {}).items():
        if path.startswith("/ngsi-ld/"):
            continue
        for op in item.values():
            responses = op.setdefault("responses", {})
            for code in (422, 500, 503):
                responses.setdefault(str(code), {"description": _ERROR_TEXT[code]})
            for code, r in responses.items():
                if code.isdigit() and int(code) >= 400 and not _own_body(r):
                    r["content"] = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                    r.setdefault("description", _ERROR_TEXT.get(int(code), "error"))
    for name in ("HTTPValidationError", "ValidationError"):
        doc["components"]["schemas"].pop(name, None)


def create_app(settings: ApiSettings, *, transport: Any = None) -> FastAPI:
    """The API app; ``transport`` (an httpx transport) is for tests that stand in for InfluxDB."""
    api = Api(settings, transport=transport)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        api.close()

    app = FastAPIOffline(
        title="Tsuyama City OS API",
        summary="津山市 都市OS: data from the city's sensors for the city's services and open data",
        description=(
            "Every family's data (forest stations, waste collection, energy per district, buses, fleet health) "
            "under `/v1`, JSON and CSV; scopes per route (`x-scope`); errors as RFC 7807 problem details. "
            "docs/api.md has the whole contract."),
        version="1",
        lifespan=lifespan,
        favicon_url="data:,",
    )
    app.state.api = api

    # ---- errors: problem details, nothing internal
    @app.exception_handler(Denied)
    async def denied(request: Request, exc: Denied) -> JSONResponse:
        api.metrics.denied.labels(str(exc.status)).inc()
        client = request.client.host if request.client else "-"
        log.warning("denied %d %s %s token=%s client=%s: %s", exc.status, request.method, request.url.path,
                    exc.token_id or "-", client, exc.why)
        headers = {"WWW-Authenticate": 'Bearer realm="cityos"'} if exc.status == 401 else {}
        if exc.status == 429:
            headers = {"Retry-After": exc.why.rsplit(" ", 2)[-2]}
        return problem(exc.status, exc.why, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _param_errors(exc)
        return problem(422, detail, errors=errors)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return problem(500, "internal error: it is logged; try again later")

    # ---- routes
    for r in family_parts(api, "", "router"):
        app.include_router(r)
    ngsi_ld.install(app, api)  # /ngsi-ld/v1 over the families' providers
    app.include_router(fleet.router(api))

    ops = APIRouter(tags=["operations"])

    @api.route(ops, "/healthz", scope=OPEN, responses={
        503: {"model": Health, "description": "InfluxDB unreachable (status down)"}, **json_body(Health, csv=False)})
    def healthz() -> JSONResponse:
        """Whether the API can answer: InfluxDB reachable, and the data fresh: within ``[health] fresh_within_s``
        an ingest reported (its ``ingest_health`` points) and its count of points written grew. 200 when InfluxDB
        answers (``status`` ``ok``, or ``degraded`` when the data is stale), 503 when it does not. Read from the
        ingests' few series, not the gateways' thousands (a newest-point query over 5,081 gateways' health took
        0.5 s even bounded to the window: docs/benchmarks.md)."""
        reachable = api.client.ping(timeout_s=2.0)
        newest, grew = None, False
        if reachable:
            since = int(api.clock() * 1000 - settings.health.fresh_within_s * 1000)
            try:
                res = query_results(*api.query(api.db, (
                    f'SELECT max("points_written") - min("points_written") AS "grew", max("points_written") AS "n" '
                    f'FROM "ingest_health" WHERE time > {since}ms GROUP BY "instance"; SELECT last("points_written") FROM '
                    f'"ingest_health" WHERE time > {since}ms')))
                grew = any((s["values"][0][1] or 0) > 0 for s in res[0].get("series", []) if s.get("values"))  # any ingest
                times = [s["values"][0][0] for s in res[1].get("series", []) if s.get("values")] if len(res) > 1 else []
                newest = max(times) if times else None
            except InfluxError:
                reachable = False
        now_ms = int(api.clock() * 1000)
        age = None if newest is None else max(0.0, (now_ms - int(newest)) / 1000)
        fresh = age is not None and grew
        body = {"status": "ok" if reachable and fresh else ("degraded" if reachable else "down"),
                "influxdb": "reachable" if reachable else "unreachable",
                "data": {"fresh": fresh, "newest_ingest_report_age_s": None if age is None else round(age, 1),
                         "points_written_in_window": grew, "fresh_within_s": settings.health.fresh_within_s}}
        return JSONResponse(body, status_code=200 if reachable else 503, headers={"Cache-Control": "no-store"})

    @api.route(ops, "/metrics", scope=FLEET, response_class=Response,
               responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        """The API's Prometheus metrics (requests and latency per route, points skipped, InfluxDB errors, denials)."""
        return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(ops)

    for old, new in LEGACY.items():
        def redirect(request: Request, _new: str = new) -> RedirectResponse:
            q = request.url.query
            return RedirectResponse(_new + (f"?{q}" if q else ""), status_code=308)

        app.add_api_route(old, redirect, methods=["GET"], include_in_schema=False)

    # ---- the OpenAPI document: the bearer scheme and its scopes
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, summary=app.summary,
                              description=app.description, routes=app.routes)
            _problem_responses(doc)
            doc.setdefault("components", {})["securitySchemes"] = {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `cityos api token create`; its scopes: " + "; ".join(
                    f"`{k}`: {v}" for k, v in SCOPES.items())}}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # outermost: CORS (browsers on allowed origins), then the measurement of every answer
    app.add_middleware(_Measure, api=api)
    if settings.cors.allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors.allow_origins),
                           allow_methods=["GET"], allow_headers=["Authorization", "Accept", "Link"],
                           expose_headers=["Link", "NGSILD-Results-Count", "Content-Disposition", "Retry-After"],
                           max_age=3600)
    return app
