"""Energy per district as NGSI-LD entities (the facade: ``cityos_api/ngsi_ld``; the mapping and why it is an
extension type: docs/ngsi-ld.md, "Energy per district"). Every read goes through ``meter.py``'s
:func:`~cityos_api.families.meter.district_cells`: the frozen half hours of the rollups with the open data's k
rule already applied, the same cells ``/v1/energy/districts/half-hourly`` serves (and the same days kept).

* ``urn:ngsi-ld:DistrictEnergyConsumption:<district>``: ``consumption`` (KWH), the kWh the district's households
  used in a half hour, one instance per **published** half hour (at least k households reported in it), stamped
  with the half hour's start; ``householdCount`` (C62) the households in it; ``dateObserved``; ``address`` (the
  district's Japanese name), ``districtId``, ``districtNameEn`` and ``location`` (its polygon) as WasteObserved
  has them.

A suppressed half hour is no instance at all (not a null: nothing of it leaves the API), so aggregates over a
period (``aggregatedValues``) are made of published half hours only and cannot reveal a suppressed one; no entity
sums over districts. A district with no published half hour in the last :data:`LOOKBACK_DAYS` days is no entity.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cityos.rollups import DAY_MS, ENERGY_30M, SLOT_MS
from cityos_api.core import Api
from cityos_api.families.meter import district_cells
from cityos_api.ngsi_ld import (
    Aggregates,
    Attr,
    AttrInfo,
    Entity,
    History,
    TypeInfo,
    aggregate_history,
    district_address,
    urn,
)
from cityos_api.ngsi_ld.temporal import utc
from cityos_api.params import TimeRange

__all__ = ["ENERGY_TYPES", "EnergyProvider", "provider"]

LOOKBACK_DAYS = 7
TYPE = "DistrictEnergyConsumption"
SDM = "https://smartdatamodels.org/"
DISTRICT_ENERGY = TypeInfo(TYPE, {
    "consumption": AttrInfo(unit_code="KWH", temporal=True,
                            description="kWh used by the district's households in the half hour starting at "
                                        "observedAt; only half hours where at least k households report"),
    "householdCount": AttrInfo(unit_code="C62", temporal=True,
                               description="households reporting in that half hour (at least k)"),
    "dateObserved": AttrInfo(iri="https://uri.etsi.org/ngsi-ld/dateObserved",
                             description="the start of the newest published half hour, in UTC"),
    "address": AttrInfo(iri=SDM + "address", description="PostalAddress; district: the district's Japanese name"),
    "districtId": AttrInfo(description="the district's id in the districts file"),
    "districtNameEn": AttrInfo(description="the district's English name"),
    "location": AttrInfo("GeoProperty", iri="https://uri.etsi.org/ngsi-ld/location",
                         description="the district's polygon (GeoJSON, lon, lat), when the districts file has one"),
})
ENERGY_TYPES = {TYPE: DISTRICT_ENERGY}
_TEMPORAL = {"consumption": "kwh", "householdCount": "households"}


def _district(entity_id: str) -> str | None:
    parts = entity_id.split(":")
    return parts[3] if len(parts) == 4 and parts[:3] == ["urn", "ngsi-ld", TYPE] else None


class EnergyProvider:
    """The districts' DistrictEnergyConsumption (published half hours only)."""

    types = ENERGY_TYPES

    def __init__(self, api: Api, clock: Any = time.time) -> None:
        self.places = api.places
        self.k = api.settings.open_data.min_households
        self.clock = clock

    def _published(self, api: Api, start_ms: int, end_ms: int, district: str | None
                   ) -> dict[str, list[tuple[int, float, int]]]:
        """district → (half hour start, kWh, households) of its published half hours starting in the range."""
        first = start_ms - start_ms % SLOT_MS
        out: dict[str, list[tuple[int, float, int]]] = {}
        for d, t, cell in district_cells(api, ENERGY_30M, TimeRange(first, max(first, end_ms)), district):
            if not cell["kwh_suppressed"] and cell["kwh"] is not None and start_ms <= t < end_ms:
                out.setdefault(d, []).append((t, cell["kwh"], cell["households"]))
        return out

    def entities(self, api: Api) -> list[Entity]:
        now = int(self.clock() * 1000)
        out = []
        for d, cells in sorted(self._published(api, now - LOOKBACK_DAYS * DAY_MS, now + 1, None).items()):
            t, kwh, n = max(cells)
            place = self.places.district(d)
            attrs = {"consumption": Attr(kwh, t, "KWH"), "householdCount": Attr(n, t),
                     "dateObserved": Attr(utc(t)), "districtId": Attr(d), "districtNameEn": Attr(place.name_en),
                     "address": Attr(district_address(place.name_ja))}
            if place.geometry:
                attrs["location"] = Attr(place.geometry)
            out.append(Entity(urn(TYPE, d), TYPE, attrs))
        return out

    def history(self, api: Api, ids: Sequence[str], attrs: Sequence[str], start_ms: int, end_ms: int,
                last_n: int | None, max_n: int) -> History:
        wanted = {d: i for i in ids if (d := _district(i)) is not None}
        fields = [(a, _TEMPORAL[a]) for a in attrs if a in _TEMPORAL]
        if not wanted or not fields:
            return {}
        one = next(iter(wanted)) if len(wanted) == 1 else None
        out: History = {}
        for d, cells in self._published(api, start_ms, end_ms, one).items():
            if d not in wanted:
                continue
            cells = sorted(cells)
            cells = cells[-last_n:] if last_n else cells[:max_n]
            out[wanted[d]] = {a: [(kwh if f == "kwh" else n, t) for t, kwh, n in cells] for a, f in fields}
        return out

    def aggregated(self, api: Api, ids: Sequence[str], attrs: Sequence[str], methods: Sequence[str],
                   period_ms: int, start_ms: int, end_ms: int) -> Aggregates:
        """In Python over the published half hours (at most 48 a day per district)."""
        return aggregate_history(self.history(api, ids, attrs, start_ms, end_ms, None, 10**9), methods, period_ms,
                                 start_ms, end_ms)


def provider(api: Api) -> EnergyProvider:
    return EnergyProvider(api, api.clock)
