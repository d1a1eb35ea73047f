"""Entities out (NGSI-LD clause 4.5), pure: normalized, concise and simplified (keyValues) entities, GeoJSON
features, the temporal representations (normalized instances, ``temporalValues``, ``aggregatedValues``) and the
``@context`` document built from the providers' types."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cityos_api.ngsi_ld.provider import Attr, AttrInfo, Entity, TypeInfo
from cityos_api.ngsi_ld.temporal import utc

__all__ = ["CORE_CONTEXT", "attribute", "context_document", "entity", "feature", "temporal_entity"]

#: The NGSI-LD core @context (its terms: Property, GeoProperty, observedAt, unitCode...), by reference as every
#: broker does; our own terms are in our document itself (nothing to fetch to read our data).
CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.7.jsonld"
#: Terms the core context defines (protected: a context may not redefine them).
_CORE_TERMS = frozenset({"location", "observationSpace", "operationSpace"})


def attribute(a: Attr, info: AttrInfo, rep: str) -> Any:
    """One attribute in ``rep`` (normalized, concise or keyValues)."""
    if rep == "keyValues":
        return a.value
    key = "object" if info.kind == "Relationship" else "value"
    out: dict[str, Any] = {} if rep == "concise" else {"type": info.kind}
    out[key] = a.value
    if a.observed_ms is not None:
        out["observedAt"] = utc(a.observed_ms)
    unit = a.unit_code or info.unit_code
    if unit and info.kind == "Property":
        out["unitCode"] = unit
    return out


def _attrs(e: Entity, t: TypeInfo, rep: str, only: Sequence[str] | None) -> dict[str, Any]:
    return {k: attribute(a, t.attrs[k], rep) for k, a in sorted(e.attrs.items())
            if k in t.attrs and (only is None or k in only)}


def entity(e: Entity, t: TypeInfo, rep: str, only: Sequence[str] | None = None) -> dict[str, Any]:
    return {"id": e.id, "type": e.type, **_attrs(e, t, rep, only)}


def feature(e: Entity, t: TypeInfo, rep: str, only: Sequence[str] | None, geometry_property: str
            ) -> dict[str, Any]:
    """A GeoJSON Feature (clause 4.5.16): the geometry of ``geometry_property`` (null when it has none)."""
    g = e.attrs.get(geometry_property)
    geom = g.value if g is not None and geometry_property in t.attrs and \
        t.attrs[geometry_property].kind == "GeoProperty" else None
    return {"id": e.id, "type": "Feature", "geometry": geom,
            "properties": {"type": e.type, **_attrs(e, t, rep, only)}}


def temporal_entity(e: Entity, t: TypeInfo, rep: str, instances: Mapping[str, list[tuple[Any, int]]] | None = None,
                    aggregates: Mapping[str, Mapping[str, list[tuple[Any, int, int]]]] | None = None
                    ) -> dict[str, Any]:
    """Clause 4.5.7 (normalized: each attribute an array of instances with ``observedAt``), 4.5.9
    (``temporalValues``: ``{"type", "values": [[value, time], ...]}``) or 4.5.19 (``aggregatedValues``:
    ``{"type", "<method>": [[value, start, end], ...]}``)."""
    out: dict[str, Any] = {"id": e.id, "type": e.type}
    if aggregates is not None:
        for k, per in sorted(aggregates.items()):
            out[k] = {"type": t.attrs[k].kind, **{m: [[v, utc(s), utc(x)] for v, s, x in vals]
                                                 for m, vals in per.items() if vals}}
        return out
    for k, inst in sorted((instances or {}).items()):
        if not inst:
            continue
        info = t.attrs[k]
        now = e.attrs.get(k)
        unit = now.unit_code if now is not None else None
        if rep == "temporalValues":
            out[k] = {"type": info.kind, "values": [[v, utc(ms)] for v, ms in inst]}
        else:
            out[k] = [attribute(Attr(v, ms, unit), info, "normalized") for v, ms in inst]
    return out


def context_document(types: Iterable[TypeInfo]) -> dict[str, Any]:
    """Our @context: the core context, then every type's and attribute's short name → IRI."""
    terms: dict[str, str] = {}
    for t in sorted(types, key=lambda t: t.name):
        terms[t.name] = t.iri
        for k, a in sorted(t.attrs.items()):
            if k not in _CORE_TERMS:
                terms.setdefault(k, a.iri)
    return {"@context": [CORE_CONTEXT, dict(sorted(terms.items()))]}
