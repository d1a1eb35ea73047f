"""What a family hands the NGSI-LD facade (docs/ngsi-ld.md, "Providers"): its entity types and their attributes,
the current state of its entities, and their history and aggregates. Filtering, paging, the representations and
the errors are the facade's; a provider only reads its own data.

A family implements :class:`EntityProvider` in ``cityos_api/families/<name>_ngsi.py`` with a function
``provider(api) -> EntityProvider`` (found by the family's name, as its router is); the forest stations'
(``cityos_api/families/forest_ngsi.py``) is the example. :class:`InfluxFields` does the InfluxDB part for the
common case: one measurement, one tag naming the device, one field per temporal attribute.

Conventions:

* Ids are URNs ``urn:ngsi-ld:<Type>:<localId>`` (:func:`urn`); types and attribute names are the short names of
  the facade's ``@context`` (:attr:`TypeInfo.iri`, :attr:`AttrInfo.iri`: a Smart Data Model's term, or an
  extension's ``urn:tsuyama-cityos:terms:<name>``).
* Times are epoch milliseconds (UTC); ranges are ``[start_ms, end_ms)``.
* An attribute's kind (``Property``, ``GeoProperty``, ``Relationship``) and UN/CEFACT unit code are declared once
  in its :class:`AttrInfo`; an :class:`Attr` carries the value only: a JSON value for a Property, a GeoJSON
  geometry (lon, lat) for a GeoProperty, the target's URI for a Relationship.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cityos_api.core import Api

__all__ = [
    "AGGR_METHODS",
    "EXTENSION_NS",
    "Aggregates",
    "Attr",
    "AttrInfo",
    "Entity",
    "EntityProvider",
    "History",
    "TypeInfo",
    "district_address",
    "urn",
]

Kind = Literal["Property", "GeoProperty", "Relationship"]
#: The namespace of our extension terms (attributes no Smart Data Model has): an IRI, never fetched.
EXTENSION_NS = "urn:tsuyama-cityos:terms:"
#: The aggregation methods the facade asks providers for (NGSI-LD 4.5.19; ``sumsq`` is not offered).
AGGR_METHODS = ("totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev")

#: entity id → attribute → instances ``(value, observed_ms)``, oldest first.
History = dict[str, dict[str, list[tuple[Any, int]]]]
#: entity id → attribute → method → ``(value, period_start_ms, period_end_ms)``, oldest first.
Aggregates = dict[str, dict[str, dict[str, list[tuple[Any, int, int]]]]]


#: The city's part of a PostalAddress (schema.org), for the entities located by district (waste, energy).
CITY_ADDRESS = {"addressCountry": "JP", "addressRegion": "岡山県", "addressLocality": "津山市"}


def district_address(name_ja: str) -> dict[str, str]:
    """A district's ``address`` value: the city's address with the district's Japanese name."""
    return {**CITY_ADDRESS, "district": name_ja}


def urn(type_name: str, local_id: str) -> str:
    """``urn:ngsi-ld:<Type>:<localId>``."""
    return f"urn:ngsi-ld:{type_name}:{local_id}"


@dataclass(frozen=True)
class AttrInfo:
    """An attribute of a type: its NGSI-LD kind, its UN/CEFACT unit code (Rec. 20: ``MMT`` mm, ``P1`` percent,
    ``DD`` degree...), its IRI in the context, and whether it has a history (``temporal``: a field stored over
    time; static attributes such as ``controlledProperty`` are not in temporal answers)."""

    kind: Kind = "Property"
    unit_code: str | None = None
    iri: str = ""
    temporal: bool = False
    description: str = ""


@dataclass(frozen=True)
class TypeInfo:
    """An entity type: its attributes by short name and its IRI (a Smart Data Model's, or an extension's)."""

    name: str
    attrs: Mapping[str, AttrInfo]
    iri: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.iri:
            object.__setattr__(self, "iri", EXTENSION_NS + self.name)
        fixed = {k: a if a.iri else AttrInfo(a.kind, a.unit_code, EXTENSION_NS + k, a.temporal, a.description)
                 for k, a in self.attrs.items()}
        object.__setattr__(self, "attrs", fixed)


@dataclass(frozen=True)
class Attr:
    """One attribute's current value, when it was observed (None: a static attribute) and, when it differs
    between entities of a type (``numValue``), its unit code (else the type's :attr:`AttrInfo.unit_code`)."""

    value: Any
    observed_ms: int | None = None
    unit_code: str | None = None


@dataclass(frozen=True)
class Entity:
    """An entity's current state: ``attrs`` by short name (each declared in its type's :class:`TypeInfo`)."""

    id: str
    type: str
    attrs: Mapping[str, Attr] = field(default_factory=dict)


@runtime_checkable
class EntityProvider(Protocol):
    """A family's entities for the facade. ``types`` is fixed for the provider's life; the methods may read
    InfluxDB through ``api.read`` (failing is 503)."""

    types: Mapping[str, TypeInfo]

    def entities(self, api: Api) -> list[Entity]:
        """The current state of every entity of the provider's types (at most a few thousand): the facade
        filters and pages."""
        ...

    def history(self, api: Api, ids: Sequence[str], attrs: Sequence[str], start_ms: int, end_ms: int,
                last_n: int | None, max_n: int) -> History:
        """Instances of the temporal ``attrs`` of the entities ``ids`` (all the provider's; attributes an entity
        does not have are left out) in ``[start_ms, end_ms)``: with ``last_n``, the newest ``last_n`` of each
        attribute; else at most ``max_n``, the oldest first. Oldest first in both cases."""
        ...

    def aggregated(self, api: Api, ids: Sequence[str], attrs: Sequence[str], methods: Sequence[str],
                   period_ms: int, start_ms: int, end_ms: int) -> Aggregates:
        """``methods`` (of :data:`AGGR_METHODS`) of each temporal attribute over consecutive periods of
        ``period_ms`` from ``start_ms`` (0: one period, the whole range); periods with no instance are left out."""
        ...
