"""The read-only NGSI-LD facade, ``/ngsi-ld/v1`` (ETSI GS CIM 009 V1.7.1), so the city's data-linkage platform
(FIWARE: Orion-LD, Scorpio, Stellio, QuantumLeap/Mintaka clients) reads our data without custom code
(docs/ngsi-ld.md).

* :func:`install` (called once by ``cityos_api/app.py``): the routes (:func:`router`) and the NGSI-LD error
  handler on the app.
* The data comes from each family's :class:`EntityProvider` (``cityos_api/families/<name>_ngsi.py``,
  ``provider(api)``), found by the family's name as its router is (:func:`family_providers`);
  :class:`InfluxFields` reads InfluxDB for the common case.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from cityos_api.core import Api, family_parts
from cityos_api.ngsi_ld.errors import NgsiError, handle
from cityos_api.ngsi_ld.facade import BASE, CONTEXT_PATH, router
from cityos_api.ngsi_ld.influx import InfluxFields, Target, aggregate_rows
from cityos_api.ngsi_ld.provider import (
    AGGR_METHODS,
    Aggregates,
    Attr,
    AttrInfo,
    Entity,
    EntityProvider,
    History,
    TypeInfo,
    district_address,
    urn,
)
from cityos_api.ngsi_ld.temporal import aggregate, aggregate_history

__all__ = [
    "AGGR_METHODS",
    "BASE",
    "CONTEXT_PATH",
    "Aggregates",
    "Attr",
    "AttrInfo",
    "Entity",
    "EntityProvider",
    "History",
    "InfluxFields",
    "NgsiError",
    "Target",
    "TypeInfo",
    "aggregate",
    "aggregate_history",
    "aggregate_rows",
    "district_address",
    "family_providers",
    "install",
    "router",
    "urn",
]


def family_providers(api: Api) -> list[EntityProvider]:
    """Each family's provider: ``cityos_api/families/<name>_ngsi.py`` ``provider(api)``, for the families that
    have one."""
    return family_parts(api, "_ngsi", "provider")


def install(app: FastAPI, api: Api, providers: Sequence[EntityProvider] | None = None) -> None:
    """The facade's routes over ``providers`` (None: every family's, :func:`family_providers`) and the handler
    that answers :class:`NgsiError` as NGSI-LD ProblemDetails."""
    app.add_exception_handler(NgsiError, handle)
    app.include_router(router(api, family_providers(api) if providers is None else providers))
