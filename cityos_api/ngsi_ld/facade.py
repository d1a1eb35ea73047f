"""The read-only NGSI-LD facade's routes under ``/ngsi-ld/v1`` (ETSI GS CIM 009 V1.7.1; docs/ngsi-ld.md).

Every data route has scope ``service``; the ``@context`` document is open (a JSON-LD processor fetches it without
a token). Each request takes the providers' current entities (a few thousand at most, kept as the API's snapshot
of them: :data:`WORLD_TTL_S`), then filters, pages and renders here; temporal requests ask the providers for the
history of the page's entities only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from cityos_api.auth import OPEN, SERVICE
from cityos_api.core import Api
from cityos_api.ngsi_ld import query as nq
from cityos_api.ngsi_ld import render
from cityos_api.ngsi_ld.errors import NgsiError, bad_request
from cityos_api.ngsi_ld.provider import AGGR_METHODS, Entity, EntityProvider, TypeInfo
from cityos_api.ngsi_ld.temporal import MAX_AGGR_DAYS, MAX_PERIODS, parse_duration_ms, time_range, utc

__all__ = ["BASE", "CONTEXT_PATH", "router"]

BASE = "/ngsi-ld/v1"
CONTEXT_PATH = f"{BASE}/jsonldContexts/cityos"
JSON, LD, GEO = "application/json", "application/ld+json", "application/geo+json"
LD_REL = 'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
DEFAULT_LIMIT, MAX_LIMIT, MAX_TEMPORAL_LIMIT = 20, 1000, 100
#: Raw instances per attribute and entity in one answer; beyond, 206 Partial Content with Content-Range.
MAX_INSTANCES = 10_000
#: Raw instances in one answer over all its entities and attributes (each attribute of each entity gets an equal
#: share, at least :data:`MIN_PER_SERIES`): beyond, 206 Partial Content, every attribute cut at the same time. An
#: answer of 86,000 instances (20 stations' three rain attributes over a day) took a second to read and render;
#: paged by time, each page is a few milliseconds. Pages of 5,000 (20 trucks' loads and positions: 280 KB) took
#: 24-28 ms at the median and over 50 at p99 at city scale: InfluxDB 1.x reads raw points on its slow path.
MAX_ANSWER_INSTANCES = 2_500
#: Aggregated values in one answer (a value per entity, attribute, method and period; read from the rollups'
#: rows, not point by point): beyond, the answer holds the first whole periods that fit (at least one), 206 with
#: the range.
MAX_ANSWER_VALUES = 5_000
MIN_PER_SERIES = 10


def per_series_limit(series: int) -> int:
    """The raw instances each attribute of each entity may have in one answer, for ``series`` of them."""
    return max(MIN_PER_SERIES, min(MAX_INSTANCES, MAX_ANSWER_INSTANCES // max(1, series)))
MAX_LAST_N = MAX_INSTANCES
_ENTITY_OPTIONS = {"normalized", "concise", "keyValues", "simplified", "sysAttrs"}
_TEMPORAL_OPTIONS = {"temporalValues", "aggregatedValues", "sysAttrs"}


@dataclass
class _World:
    """Every provider's entities now, with their types and owners."""

    entities: list[Entity]
    types: dict[str, TypeInfo]
    owner: dict[str, EntityProvider]


_PROBLEM_DETAILS = {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
    "detail": {"type": "string"}}}


def _problem_responses(*extra: int) -> dict[int | str, dict[str, Any]]:
    """The errors as they are answered: NGSI-LD ProblemDetails (``application/json``); the API's own checks
    before the route (token, scope, a parameter the route does not take) answer ``application/problem+json``."""
    ngsi = {"application/json": {"schema": _PROBLEM_DETAILS}}
    house = {"application/problem+json": {"schema": _PROBLEM_DETAILS}}
    out: dict[int | str, dict[str, Any]] = {
        400: {"description": "BadRequestData or InvalidRequest", "content": ngsi},
        401: {"description": "no valid token (missing, unknown, expired or revoked)", "content": house},
        403: {"description": "the token lacks scope `service`", "content": house},
        406: {"description": "an Accept the route cannot answer", "content": ngsi},
        422: {"description": "a query parameter the route does not take", "content": house},
        503: {"description": "InfluxDB unavailable", "content": ngsi},
    }
    for code in extra:
        out[code] = {404: {"description": "ResourceNotFound", "content": ngsi},
                     206: {"description": "more instances than one answer holds: the range covered is in "
                           "Content-Range (date-time <first>-<last>/*); ask for the rest from there",
                           "content": {JSON: {}, LD: {}}}}[code]
    return out


def negotiate(accept: str | None, offered: Sequence[str]) -> str:
    """The media type to answer (``offered[0]`` for ``*/*``, ``application/*`` or no Accept), or 406."""
    if not accept:
        return offered[0]
    prefs: list[tuple[float, int, str]] = []
    for n, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if fields[0] and q > 0:
            prefs.append((-q, n, fields[0].lower()))
    for _, _, mt in sorted(prefs):
        if mt in offered:
            return mt
        if mt in ("*/*", "application/*"):
            return offered[0]
    raise NgsiError("NotAcceptable", f"this route answers {', '.join(offered)}; Accept was {accept[:100]!r}")


def _int(param: str, raw: str | None, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise bad_request(param, f"an integer from {lo} to {hi}", raw) from None
    if not lo <= v <= hi:
        raise bad_request(param, f"an integer from {lo} to {hi}", raw)
    return v


def _bool(param: str, raw: str | None) -> bool:
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise bad_request(param, "true or false", raw)
    return raw == "true"


def _options(raw: str | None, allowed: set[str], fmt: str | None = None) -> set[str]:
    opts = {o.strip() for o in raw.split(",")} if raw else set()
    if fmt is not None:
        opts.add(fmt)
    unknown = opts - allowed
    if unknown:
        raise NgsiError("InvalidRequest", f"options: {', '.join(sorted(unknown))[:80]} not supported here "
                        f"(supported: {', '.join(sorted(allowed))})")
    return opts


def _representation(opts: set[str]) -> str:
    reps = {"keyValues" if o == "simplified" else o for o in opts} & {"normalized", "concise", "keyValues"}
    if len(reps) > 1:
        raise NgsiError("InvalidRequest", "options: only one of normalized, concise, keyValues (simplified)")
    return reps.pop() if reps else "normalized"


#: Seconds the current entities are kept before a refresh behind the requests (the sensors report every minute or
#: more); never served older than 3 times that (core.Snapshot).
WORLD_TTL_S = 10.0


class _Facade:
    def __init__(self, api: Api, providers: Sequence[EntityProvider]) -> None:
        self.api = api
        self.providers = list(providers)
        self.types: dict[str, TypeInfo] = {}
        for p in self.providers:
            for name, t in p.types.items():
                old = self.types.get(name)
                self.types[name] = t if old is None else TypeInfo(name, {**old.attrs, **t.attrs}, old.iri,
                                                                   old.description)
        self.iris: dict[str, str] = {}  # IRI of our context → short name
        for t in self.types.values():
            self.iris[t.iri] = t.name
            for k, a in t.attrs.items():
                self.iris.setdefault(a.iri, k)
        self.context = render.context_document(self.types.values())
        self._world = api.snapshot("NGSI-LD world", self._build_world, WORLD_TTL_S)

    # ---- reading
    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(self.api, *args)
        except HTTPException as exc:
            if exc.status_code == 503:
                raise NgsiError("InternalError", "InfluxDB unavailable: try again shortly", 503,
                                "Service Unavailable") from None
            raise

    def world(self) -> _World:
        """Every provider's current entities, kept as a snapshot (:data:`WORLD_TTL_S`): building them reads each
        family's newest state (0.3-0.9 s over 30 days of the city, docs/benchmarks.md), and a data-linkage platform
        polls far more often than the sensors report."""
        return self.call(lambda _api: self._world.get())

    def _build_world(self) -> _World:
        ents: list[Entity] = []
        owner: dict[str, EntityProvider] = {}
        for p in self.providers:
            for e in p.entities(self.api):
                if e.type in p.types and e.id not in owner:
                    owner[e.id] = p
                    ents.append(e)
        ents.sort(key=lambda e: e.id)
        return _World(ents, self.types, owner)

    # ---- answering
    def link(self, request: Request) -> str:
        return f"<{str(request.base_url).rstrip('/')}{CONTEXT_PATH}>; {LD_REL}"

    def answer(self, request: Request, body: Any, fmt: str, headers: Mapping[str, str] | None = None,
               status: int = 200) -> Response:
        hdrs = dict(headers or {})
        if fmt == LD:
            ctx = self.context["@context"]
            if isinstance(body, list):
                body = [{"@context": ctx, **b} for b in body]
            else:
                body = {"@context": ctx, **body}
        else:
            hdrs["Link"] = self.link(request)
        return self.api.json(body, status=status, headers=hdrs, media_type=fmt)

    # ---- selection
    def selection(self, params: Mapping[str, str], *, required: bool) -> tuple[Callable[[Entity], bool],
                                                                                list[str] | None]:
        """The entity filter of ``type``, ``id``, ``idPattern``, ``attrs``, ``q`` and the geo-query, checked
        before any data is read; and ``attrs`` (the attributes to answer)."""
        types = nq.parse_names("type", params.get("type"), self.iris)
        ids = nq.parse_ids(params.get("id"))
        pattern = nq.parse_id_pattern(params.get("idPattern"))
        attrs = nq.parse_names("attrs", params.get("attrs"), self.iris)
        q = nq.parse_q(params["q"]) if params.get("q") is not None else None
        geo = nq.parse_geo(params.get("georel"), params.get("geometry"), params.get("coordinates"),
                           params.get("geoproperty"))
        if params.get("scopeQ") is not None:
            raise NgsiError("BadRequestData", "scopeQ: our entities have no scope")
        if required and not any(x is not None for x in (types, ids, pattern, attrs, q, geo)):
            raise NgsiError("BadRequestData", "at least one of type, id, idPattern, attrs, q or a geo-query "
                            "(georel, geometry, coordinates) is required")

        def keep(e: Entity) -> bool:
            return ((types is None or e.type in types) and (ids is None or e.id in ids)
                    and (pattern is None or pattern.fullmatch(e.id) is not None)
                    and (attrs is None or any(a in e.attrs for a in attrs))
                    and (q is None or q(e)) and (geo is None or geo(e)))

        return keep, attrs

    @staticmethod
    def check_id(entity_id: str) -> str:
        if len(entity_id) > 256 or not nq._URI_FULL.fullmatch(entity_id):
            raise bad_request("entityId", "an entity id (a URI such as urn:ngsi-ld:<Type>:<id>)", entity_id)
        return entity_id

    def find(self, w: _World, entity_id: str) -> Entity:
        for e in w.entities:
            if e.id == entity_id:
                return e
        raise NgsiError("ResourceNotFound", f"no entity {entity_id}")

    def type_name(self, raw: str) -> str:
        return self.iris.get(raw, raw)



# ---- the parameters each operation takes (as the NGSI-LD OAS lists them, plus offset and format): declared so
# the OpenAPI document has them and the API's check of unknown parameters lets them through; read from the
# request's query string and checked here (400 BadRequestData, never FastAPI's 422).
Q = str | None


def _p_query_entities(id: Q = None, type: Q = None, idPattern: Q = None, attrs: Q = None, q: Q = None,
                      csf: Q = None, geometry: Q = None, georel: Q = None, coordinates: Q = None,
                      geoproperty: Q = None, geometryProperty: Q = None, lang: Q = None, scopeQ: Q = None,
                      limit: Q = None, offset: Q = None, count: Q = None, options: Q = None, format: Q = None,
                      local: Q = None) -> None:
    """Query Entities' parameters (5.7.2)."""


def _p_retrieve_entity(type: Q = None, attrs: Q = None, geometryProperty: Q = None, lang: Q = None,
                       options: Q = None, format: Q = None, local: Q = None) -> None:
    """Retrieve Entity's parameters (5.7.1)."""


def _p_details(details: Q = None, local: Q = None) -> None:
    """``details=true``: the detailed list."""


def _p_local(local: Q = None) -> None:
    """``local`` (we have no registrations: every answer is local)."""


def _p_query_temporal(id: Q = None, type: Q = None, idPattern: Q = None, attrs: Q = None, q: Q = None,
                      csf: Q = None, geometry: Q = None, georel: Q = None, coordinates: Q = None,
                      geoproperty: Q = None, timeproperty: Q = None, timerel: Q = None, timeAt: Q = None,
                      endTimeAt: Q = None, lastN: Q = None, lang: Q = None, aggrMethods: Q = None,
                      aggrPeriodDuration: Q = None, scopeQ: Q = None, limit: Q = None, offset: Q = None,
                      count: Q = None, options: Q = None, local: Q = None) -> None:
    """Query Temporal Evolution of Entities' parameters (5.7.4)."""


def _p_retrieve_temporal(attrs: Q = None, timeproperty: Q = None, timerel: Q = None, timeAt: Q = None,
                         endTimeAt: Q = None, lastN: Q = None, lang: Q = None, aggrMethods: Q = None,
                         aggrPeriodDuration: Q = None, options: Q = None, local: Q = None) -> None:
    """Retrieve Temporal Evolution of an Entity's parameters (5.7.3)."""


def _page(p: Mapping[str, str], max_limit: int) -> tuple[int, int, bool]:
    lim = _int("limit", p.get("limit"), DEFAULT_LIMIT, 0, max_limit)
    off = _int("offset", p.get("offset"), 0, 0, 10**9)
    cnt = _bool("count", p.get("count"))
    if lim == 0 and not cnt:
        raise bad_request("limit", "0 only with count=true", p.get("limit"))
    return lim, off, cnt


def router(api: Api, providers: Sequence[EntityProvider]) -> APIRouter:
    """The facade's routes over ``providers``."""
    r = APIRouter(tags=["ngsi-ld"])
    f = _Facade(api, providers)
    entities_ok = {200: {"description": "OK", "content": {JSON: {}, LD: {}, GEO: {}}}}
    json_ok = {200: {"description": "OK", "content": {JSON: {}, LD: {}}}}

    def route(path: str, params: Callable[..., None], ok: dict[int | str, Any], *extra: int) -> Any:
        return api.route(r, BASE + path, scope=SERVICE, responses={**ok, **_problem_responses(*extra)},
                         dependencies=[Depends(params)], response_class=JSONResponse)

    # ---- @context
    @api.route(r, CONTEXT_PATH, scope=OPEN, response_class=JSONResponse, responses={200: {"content": {LD: {}}}})
    def json_ld_context() -> JSONResponse:
        """Our JSON-LD @context: every type's and attribute's short name → its IRI (a Smart Data Model's term,
        or our extension's ``urn:tsuyama-cityos:terms:``), after the NGSI-LD core context."""
        return JSONResponse(f.context, media_type=LD, headers={"Cache-Control": "max-age=3600"})

    # ---- entities
    @route("/entities", _p_query_entities, entities_ok)
    def query_entities(request: Request) -> Response:
        """5.7.2 Query Entities: ``type``, ``id``, ``idPattern``, ``attrs``, ``q``, geo-queries (``near``,
        ``within``), ``limit`` (default 20, at most 1000), ``offset``, ``count=true``, ``options=keyValues``
        (``format=simplified``), ``concise`` or ``normalized``; ``Accept`` JSON, JSON-LD or GeoJSON."""
        p = request.query_params
        fmt = negotiate(request.headers.get("accept"), (JSON, LD, GEO))
        rep = _representation(_options(p.get("options"), _ENTITY_OPTIONS, _format(p.get("format"))))
        lim, off, cnt = _page(p, MAX_LIMIT)
        keep, only = f.selection(p, required=True)
        w = f.world()
        found = [e for e in w.entities if keep(e)]
        page = found[off:off + lim]
        headers = {"NGSILD-Results-Count": str(len(found))} if cnt else {}
        if fmt == GEO:
            gp = p.get("geometryProperty") or "location"
            body: Any = {"type": "FeatureCollection",
                         "features": [render.feature(e, w.types[e.type], rep, only, gp) for e in page]}
        else:
            body = [render.entity(e, w.types[e.type], rep, only) for e in page]
        return f.answer(request, body, fmt, headers)

    @route("/entities/{entityId:path}", _p_retrieve_entity, entities_ok, 404)
    def retrieve_entity(request: Request, entityId: str) -> Response:
        """5.7.1 Retrieve Entity (normalized, concise or keyValues; JSON, JSON-LD or a GeoJSON Feature)."""
        p = request.query_params
        fmt = negotiate(request.headers.get("accept"), (JSON, LD, GEO))
        rep = _representation(_options(p.get("options"), _ENTITY_OPTIONS, _format(p.get("format"))))
        only = nq.parse_names("attrs", p.get("attrs"), f.iris)
        types = nq.parse_names("type", p.get("type"), f.iris)
        f.check_id(entityId)
        e = f.find(f.world(), entityId)
        if types is not None and e.type not in types:
            raise NgsiError("ResourceNotFound", f"no entity {entityId} of type {p.get('type')}")
        if only is not None and not any(a in e.attrs for a in only):
            raise NgsiError("ResourceNotFound", f"entity {entityId} has none of the attributes {p.get('attrs')}")
        t = f.types[e.type]
        if fmt == GEO:
            return f.answer(request, render.feature(e, t, rep, only, p.get("geometryProperty") or "location"), fmt)
        return f.answer(request, render.entity(e, t, rep, only), fmt)

    # ---- types
    @route("/types", _p_details, json_ok)
    def retrieve_types(request: Request) -> Response:
        """5.7.5/5.7.6: the types that have entities now (``details=true``: with their attribute names)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        details = _bool("details", request.query_params.get("details"))
        w = f.world()
        present = sorted({e.type for e in w.entities})
        if details:
            body: Any = [{"id": f.types[n].iri, "type": "EntityType", "typeName": n,
                          "attributeNames": _attr_names(w, n)} for n in present]
        else:
            body = {"id": _list_id("EntityTypeList", present), "type": "EntityTypeList", "typeList": present}
        return f.answer(request, body, fmt)

    @route("/types/{type:path}", _p_local, json_ok, 404)
    def retrieve_type(request: Request, type: str) -> Response:
        """5.7.7: one type's entity count and attributes (404 when no entity has it); the short name or the IRI."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        name = f.type_name(type)
        w = f.world()
        ents = [e for e in w.entities if e.type == name]
        if not ents:
            raise NgsiError("ResourceNotFound", f"no entity of type {type[:100]}")
        t = f.types[name]
        details = [{"id": t.attrs[a].iri, "type": "Attribute", "attributeName": a,
                    "attributeTypes": [t.attrs[a].kind]} for a in _attr_names(w, name)]
        body = {"id": t.iri, "type": "EntityTypeInfo", "typeName": name, "entityCount": len(ents),
                "attributeDetails": details}
        return f.answer(request, body, fmt)

    # ---- attributes
    @route("/attributes", _p_details, json_ok)
    def retrieve_attributes(request: Request) -> Response:
        """5.7.8/5.7.9: the attributes entities have now (``details=true``: counts, kinds, types)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        details = _bool("details", request.query_params.get("details"))
        stats = _attr_stats(f.world())
        if details:
            body: Any = [s for _, s in sorted(stats.items())]
        else:
            names = sorted(stats)
            body = {"id": _list_id("AttributeList", names), "type": "AttributeList", "attributeList": names}
        return f.answer(request, body, fmt)

    @route("/attributes/{attrId:path}", _p_local, json_ok, 404)
    def retrieve_attribute(request: Request, attrId: str) -> Response:
        """5.7.10: one attribute's count, kinds and the types that have it (404 when no entity has it)."""
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        s = _attr_stats(f.world()).get(f.iris.get(attrId, attrId))
        if s is None:
            raise NgsiError("ResourceNotFound", f"no entity has an attribute {attrId[:100]}")
        return f.answer(request, s, fmt)

    # ---- temporal
    @route("/temporal/entities", _p_query_temporal, json_ok, 206)
    def query_temporal(request: Request) -> Response:
        """5.7.4 Query Temporal Evolution of Entities: the selection of Query Entities (type, id, idPattern,
        attrs, q, geo: on the entities' current state) with ``timerel``/``timeAt``/``endTimeAt`` (required),
        ``lastN``, ``options=temporalValues`` or ``aggregatedValues`` (``aggrMethods``, ``aggrPeriodDuration``);
        ``limit`` at most 100 entities."""
        p = request.query_params
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        lim, off, cnt = _page(p, MAX_TEMPORAL_LIMIT)
        keep, only = f.selection(p, required=True)
        tq = _TemporalQuery.parse(p, required=True)
        w = f.world()
        found = [e for e in w.entities if keep(e)]
        body, headers, status = tq.run(f, found[off:off + lim], only, w.owner)
        if cnt:
            headers["NGSILD-Results-Count"] = str(len(found))
        return f.answer(request, body, fmt, headers, status)

    @route("/temporal/entities/{entityId:path}", _p_retrieve_temporal, json_ok, 404, 206)
    def retrieve_temporal(request: Request, entityId: str) -> Response:
        """5.7.3 Retrieve Temporal Evolution of an Entity (without ``timerel``: the last 24 hours)."""
        p = request.query_params
        fmt = negotiate(request.headers.get("accept"), (JSON, LD))
        only = nq.parse_names("attrs", p.get("attrs"), f.iris)
        tq = _TemporalQuery.parse(p, required=False)
        f.check_id(entityId)
        w = f.world()
        e = f.find(w, entityId)
        body, headers, status = tq.run(f, [e], only, w.owner)
        return f.answer(request, body[0], fmt, headers, status)

    return r


@dataclass(frozen=True)
class _TemporalQuery:
    """A temporal request's parameters, checked before any data is read."""

    start_ms: int
    end_ms: int
    rep: str  # normalized | temporalValues | aggregatedValues
    last_n: int | None
    methods: tuple[str, ...] = ()
    period_ms: int = 0

    @classmethod
    def parse(cls, p: Mapping[str, str], *, required: bool) -> _TemporalQuery:
        opts = _options(p.get("options"), _TEMPORAL_OPTIONS)
        if {"temporalValues", "aggregatedValues"} <= opts:
            raise NgsiError("InvalidRequest", "options: temporalValues or aggregatedValues, not both")
        aggregated = "aggregatedValues" in opts
        if p.get("timeproperty") not in (None, "observedAt"):
            raise bad_request("timeproperty", "observedAt (the only time our data has)", p["timeproperty"])
        tr = time_range(p.get("timerel"), p.get("timeAt"), p.get("endTimeAt"), int(time.time() * 1000),
                        aggregated=aggregated, required=required)
        last_n = _int("lastN", p.get("lastN"), 0, 1, MAX_LAST_N) or None
        if not aggregated:
            return cls(tr.start_ms, tr.end_ms, "temporalValues" if "temporalValues" in opts else "normalized",
                       last_n)
        raw = p.get("aggrMethods")
        if not raw:
            raise NgsiError("BadRequestData", "aggrMethods is required with options=aggregatedValues "
                            f"({', '.join(AGGR_METHODS)})")
        methods = tuple(m.strip() for m in raw.split(","))
        if any(m not in AGGR_METHODS for m in methods) or len(set(methods)) != len(methods):
            raise bad_request("aggrMethods", f"distinct methods of {', '.join(AGGR_METHODS)}", raw)
        period = parse_duration_ms(p.get("aggrPeriodDuration"))
        if period > MAX_AGGR_DAYS * 86_400_000:
            raise bad_request("aggrPeriodDuration", f"at most {MAX_AGGR_DAYS} days", p.get("aggrPeriodDuration"))
        if period and -(-(tr.end_ms - tr.start_ms) // period) > MAX_PERIODS:
            raise bad_request("aggrPeriodDuration", f"a period giving at most {MAX_PERIODS} periods in the time "
                              "range", p.get("aggrPeriodDuration"))
        return cls(tr.start_ms, tr.end_ms, "aggregatedValues", None, methods, period)

    def run(self, f: _Facade, entities: list[Entity], only: list[str] | None,
            owner: Mapping[str, EntityProvider]) -> tuple[list[dict[str, Any]], dict[str, str], int]:
        by_provider: dict[int, tuple[EntityProvider, list[Entity]]] = {}
        for e in entities:
            p = owner[e.id]
            by_provider.setdefault(id(p), (p, []))[1].append(e)
        headers: dict[str, str] = {}
        results: dict[str, Any] = {}
        if self.rep == "aggregatedValues":
            series = len(self.methods) * sum(len(_temporal_attrs(p, ents, only)) * len(ents)
                                             for p, ents in by_provider.values())
            end = self.end_ms
            status = 200
            if self.period_ms:  # at most MAX_ANSWER_VALUES values: whole periods, cut before anything is read
                periods = max(1, MAX_ANSWER_VALUES // max(1, series))
                if self.start_ms + periods * self.period_ms < end:
                    end = self.start_ms + periods * self.period_ms
                    status = 206
                    headers["Content-Range"] = f"date-time {utc(self.start_ms)}-{utc(end)}/*"
            for got in _each(f, [(p.aggregated, [e.id for e in ents], _temporal_attrs(p, ents, only),
                                  list(self.methods), self.period_ms, self.start_ms, end)
                                 for p, ents in by_provider.values()]):
                results.update(got)
            return [render.temporal_entity(e, f.types[e.type], self.rep,
                                           aggregates=_known(results.get(e.id, {}), f.types[e.type]))
                    for e in entities], headers, status
        series = sum(len(_temporal_attrs(p, ents, only)) * len(ents) for p, ents in by_provider.values())
        per_series = per_series_limit(series)
        for got in _each(f, [(p.history, [e.id for e in ents], _temporal_attrs(p, ents, only), self.start_ms,
                              self.end_ms, self.last_n, per_series + 1) for p, ents in by_provider.values()]):
            results.update(got)
        status = 200
        cut: int | None = None
        if self.last_n is None:
            for per in results.values():
                for inst in per.values():
                    if len(inst) > per_series:
                        t_last = inst[per_series - 1][1]
                        cut = t_last if cut is None else min(cut, t_last)
        if cut is not None:
            results = {eid: {a: [i for i in inst if i[1] <= cut] for a, inst in per.items()}
                       for eid, per in results.items()}
            status = 206
            headers["Content-Range"] = f"date-time {utc(self.start_ms)}-{utc(cut)}/*"
        return [render.temporal_entity(e, f.types[e.type], self.rep,
                                       instances=_known(results.get(e.id, {}), f.types[e.type]))
                for e in entities], headers, status


#: Providers of one answer read side by side (a Vehicle is a bus's and a truck's: their InfluxDB reads overlap).
_PROVIDERS_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ngsi-ld provider")


def _each(f: _Facade, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``f.call(*call)`` for each call, in order; several at once in :data:`_PROVIDERS_POOL` (the first error
    raised, as one after the other would)."""
    if len(calls) <= 1:
        return [f.call(*c) for c in calls]
    return [fut.result() for fut in [_PROVIDERS_POOL.submit(f.call, *c) for c in calls]]


def _format(raw: str | None) -> str | None:
    if raw is None:
        return None
    if raw in ("simplified", "keyValues", "normalized", "concise"):
        return raw
    raise bad_request("format", "simplified, keyValues, normalized or concise", raw)


def _list_id(kind: str, names: Sequence[str]) -> str:
    return f"urn:ngsi-ld:{kind}:{uuid.uuid5(uuid.NAMESPACE_URL, ','.join(names))}"


def _attr_names(w: _World, type_name: str) -> list[str]:
    return sorted({a for e in w.entities if e.type == type_name for a in e.attrs})


def _attr_stats(w: _World) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in w.entities:
        t = w.types[e.type]
        for a in e.attrs:
            info = t.attrs.get(a)
            if info is None:
                continue
            s = out.setdefault(a, {"id": info.iri, "type": "Attribute", "attributeName": a, "attributeCount": 0,
                                   "attributeTypes": [], "typeNames": []})
            s["attributeCount"] += 1
            if info.kind not in s["attributeTypes"]:
                s["attributeTypes"].append(info.kind)
            if e.type not in s["typeNames"]:
                s["typeNames"].append(e.type)
    for s in out.values():
        s["attributeTypes"].sort()
        s["typeNames"].sort()
    return out


def _temporal_attrs(p: EntityProvider, ents: Sequence[Entity], only: Sequence[str] | None) -> list[str]:
    names = {k for e in ents for k, a in p.types[e.type].attrs.items() if a.temporal}
    return sorted(names if only is None else names & set(only))


def _known(per: Mapping[str, Any], t: TypeInfo) -> dict[str, Any]:
    return {a: v for a, v in per.items() if a in t.attrs and t.attrs[a].temporal}
