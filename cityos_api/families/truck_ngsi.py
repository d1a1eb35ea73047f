"""The garbage trucks and the waste per district as NGSI-LD entities (the facade: ``cityos_api/ngsi_ld``; the mapping
and its extensions: docs/ngsi-ld.md, "Garbage trucks"). Every read goes through ``cityos_api/families/truck.py``'s
data functions (``fetch_loads``, ``fetch_truck_history``, ``fetch_last_loads``, ``fetch_trips``,
``fetch_district_days``) and the rollups' readers of ``cityos.rollups`` (``truck_progress``, ``forest_stored``):
this module has no InfluxQL.

* ``urn:ngsi-ld:Vehicle:<truck>`` (dataModel.Transportation ``Vehicle``): ``vehicleType`` ``lorry``, ``category``
  ``[municipalServices]``, ``serviceProvided`` ``[garbageCollection]``, ``fleetVehicleId``; ``location`` where the
  truck last loaded (the centre of the pickup's collection-point cell, ``cityos.rollups.cell_of``: the trucks report a
  position only with a pickup, and never a bin's exact spot); ``cargoWeight`` (KGM) the load after the newest
  pickup, or what is left after the unload that ended its newest trip. History of both.
* ``urn:ngsi-ld:WasteObserved:<district>`` (dataModel.WasteManagement ``WasteObserved``): waste collected in the
  district per JST day: ``weight`` (KGM) and extension ``pickupCount`` (C62) of the newest day with a pickup,
  ``dateObserved`` that day's start (00:00 JST), ``address`` (the district's Japanese name in ``district``),
  extensions ``districtId`` and ``districtNameEn``, ``location`` the district's polygon (when the districts file has
  one). History: one instance per JST day, stamped with the day's start.

An entity exists when its data has something in the last :data:`LOOKBACK_DAYS` days.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

from cityos.influx import QueryFn
from cityos.rollups import (
    HOUR_MS,
    ROLLUP_METHODS,
    TRIP_LOOKBACK_MS,
    TRUCK_LEVELS,
    TRUCK_ROLLED,
    cargo_left,
    cargo_series,
    cell_centre,
    cell_of,
    forest_stored,
    rollup_level,
    truck_progress,
)
from cityos_api.core import Api
from cityos_api.families import truck
from cityos_api.ngsi_ld import (
    Aggregates,
    Attr,
    AttrInfo,
    Entity,
    History,
    TypeInfo,
    aggregate_history,
    aggregate_rows,
    district_address,
    urn,
)
from cityos_api.ngsi_ld.influx import InfluxFields, Target
from cityos_api.ngsi_ld.temporal import utc
from cityos_api.params import TimeRange

__all__ = ["TRUCK_TYPES", "TruckProvider", "provider"]

LOOKBACK_DAYS = 30
DAY_MS = 86_400_000
#: Seconds the cargo rollup's progress point is kept (the rollup passes every 5 minutes).
PROGRESS_TTL_S = 10.0
SDM = "https://smartdatamodels.org/"
SDM_TRANSPORT = SDM + "dataModel.Transportation/"
SDM_WASTE = SDM + "dataModel.WasteManagement/"
UNKNOWN_NAMES = ("不明（位置なし・地区外）", "unknown (no position or outside every district)")

_LOCATION = AttrInfo("GeoProperty", iri="https://uri.etsi.org/ngsi-ld/location", temporal=True,
                     description="a GeoJSON geometry (lon, lat)")
#: Vehicle's attributes shared with the buses' provider (the same definitions: one IRI per name).
VEHICLE_COMMON = {
    "vehicleType": AttrInfo(iri=SDM_TRANSPORT + "vehicleType", description="lorry or bus"),
    "category": AttrInfo(iri=SDM_TRANSPORT + "category", description="municipalServices or public"),
    "serviceProvided": AttrInfo(iri=SDM_TRANSPORT + "serviceProvided",
                                description="garbageCollection or urbanTransit"),
    "fleetVehicleId": AttrInfo(iri=SDM_TRANSPORT + "fleetVehicleId", description="the vehicle's device id"),
    "location": _LOCATION,
}
VEHICLE = TypeInfo("Vehicle", {
    **VEHICLE_COMMON,
    "cargoWeight": AttrInfo(unit_code="KGM", iri=SDM_TRANSPORT + "cargoWeight", temporal=True,
                            description="the truck's load: after its newest pickup (load_kg), or left after the "
                                        "unload that ended its newest trip"),
}, iri=SDM_TRANSPORT + "Vehicle")
WASTE = TypeInfo("WasteObserved", {
    "weight": AttrInfo(unit_code="KGM", iri=SDM_WASTE + "weight", temporal=True,
                       description="waste collected in the district in the JST day (sum of the pickups' kg)"),
    "pickupCount": AttrInfo(unit_code="C62", temporal=True, description="pickups in the district in the JST day"),
    "dateObserved": AttrInfo(iri="https://uri.etsi.org/ngsi-ld/dateObserved",
                             description="the start of the JST day (00:00+09:00), in UTC"),
    "address": AttrInfo(iri=SDM + "address", description="PostalAddress; district: the district's Japanese name"),
    "districtId": AttrInfo(description="the district's id in the districts file (unknown: no position, or outside "
                                       "every district)"),
    "districtNameEn": AttrInfo(description="the district's English name"),
    "location": _LOCATION,
}, iri=SDM_WASTE + "WasteObserved")
TRUCK_TYPES = {t.name: t for t in (VEHICLE, WASTE)}
#: The pickups' loads aggregated by InfluxDB (the servable ones: as ``truck.fetch_loads``).
_LOADS = InfluxFields(truck.COLLECTION, valid={"load_kg": (0.0, truck.MAX_TRIP_KG)})
_STATIC = {"vehicleType": "lorry", "category": ["municipalServices"], "serviceProvided": ["garbageCollection"]}


def _local(entity_id: str, type_name: str) -> str | None:
    prefix = f"urn:ngsi-ld:{type_name}:"
    return entity_id[len(prefix):] if entity_id.startswith(prefix) else None


def _point(lat: float, lon: float) -> dict[str, Any]:
    """The centre of the collection-point cell (~110 m x 90 m) holding (lat, lon)."""
    return _cell_point(cell_of(lat, lon))


@functools.lru_cache(maxsize=65_536)
def _cell_point(cell: tuple[int, int]) -> dict[str, Any]:
    """A cell's centre as a GeoJSON Point, built once per cell (a truck's history page holds thousands of
    positions at a few hundred collection points); shared, so never modified (the answers only serialize it)."""
    c_lat, c_lon = cell_centre(cell)
    return {"type": "Point", "coordinates": [c_lon, c_lat]}


def _cargo(loads: Sequence[truck.TruckLoad], trips: Sequence[truck.Trip]) -> dict[str, list[tuple[float, int]]]:
    """truck → its load over time, oldest first (:func:`cityos.rollups.cargo_series`, as served: rounded to
    3 decimals): each pickup's load after it, and after each unload (the end of a trip) the load of the trip's last
    pickup less the kg unloaded (never below 0; none when the trip's pickups are not in ``loads``)."""
    return cargo_series([(x.truck, x.ts_ms, x.trip_no, x.load_kg) for x in loads if x.load_kg is not None],
                        [(t.truck, t.end_ms, t.trip_no, t.kg_unloaded) for t in trips if t.kg_unloaded is not None],
                        digits=3)


def _cut(inst: list[tuple[Any, int]], start_ms: int, end_ms: int, last_n: int | None, max_n: int
         ) -> list[tuple[Any, int]]:
    inside = [i for i in inst if start_ms <= i[1] < end_ms]
    return inside[-last_n:] if last_n else inside[:max_n]


class TruckProvider:
    """The trucks' Vehicle entities and the districts' WasteObserved."""

    types = TRUCK_TYPES

    def __init__(self, api: Api, clock: Any = time.time) -> None:
        self.places = api.places
        self.clock = clock
        rollup_db = getattr(api.settings, "rollup_db", None)
        #: Where the cargo rollup stands, kept :data:`PROGRESS_TTL_S`: an older point is as right (its rows are
        #: complete before it; the raw path answers after it), one request less per aggregate.
        self._progress = api.snapshot("truck cargo progress", lambda: None if not rollup_db else api.read(
            lambda q, _db: truck_progress(q, rollup_db)), PROGRESS_TTL_S)

    def _names(self, district: str) -> tuple[str, str]:
        if district == truck.UNKNOWN and truck.UNKNOWN not in self.places.districts:
            return UNKNOWN_NAMES
        d = self.places.district(district)
        return d.name_ja, d.name_en

    @staticmethod
    def _fetch_days(api: Api, tr: TimeRange, district: str | None) -> dict[tuple[int, str], tuple[float, int]]:
        """truck.py's waste per district and JST day, from where its own route reads it: the rollups' database
        when the settings name one (``rollup_db``, docs/api.md "Pre-aggregation"), else the raw pickups'."""
        db = getattr(api.settings, "rollup_db", None) or api.db
        days, bad = api.read(lambda query, _db: truck.fetch_district_days(query, db, tr, district))
        api.skipped(getattr(truck, "WASTE_1D", truck.COLLECTION), bad)
        return days  # type: ignore[no-any-return]

    # ---- current state
    def entities(self, api: Api) -> list[Entity]:
        now = int(self.clock() * 1000)
        tr = TimeRange(now - LOOKBACK_DAYS * DAY_MS, now + 1)
        return self._vehicles(api, tr) + self._districts(api, tr)

    def _vehicles(self, api: Api, tr: TimeRange) -> list[Entity]:
        newest, bad = api.read(lambda q, db: truck.fetch_loads(q, db, tr, newest=True))
        api.skipped(truck.COLLECTION, bad)
        if not newest:
            return []
        load: dict[str, truck.TruckLoad] = {}
        pos: dict[str, truck.TruckLoad] = {}
        for x in newest:  # oldest first: the newest wins
            if x.load_kg is not None:
                load[x.truck] = x
            if x.lat is not None and x.lon is not None:
                pos[x.truck] = x
        # the trips that ended after a truck's newest pickup: its unload since
        since = min((x.ts_ms for x in load.values()), default=tr.end_ms - 1)
        trips, bad_trips = api.read(truck.fetch_trips, TimeRange(since, tr.end_ms), None)
        api.skipped(truck.TRIP, bad_trips)
        cargo = _cargo(list(load.values()), trips)
        out = []
        for dev in sorted({*load, *pos}):
            attrs = {k: Attr(v) for k, v in _STATIC.items()} | {"fleetVehicleId": Attr(dev)}
            if dev in pos:
                p = pos[dev]
                assert p.lat is not None and p.lon is not None
                attrs["location"] = Attr(_point(p.lat, p.lon), p.ts_ms)
            if cargo.get(dev):
                v, ms = cargo[dev][-1]
                attrs["cargoWeight"] = Attr(v, ms)
            out.append(Entity(urn("Vehicle", dev), "Vehicle", attrs))
        return out

    def _districts(self, api: Api, tr: TimeRange) -> list[Entity]:
        days = self._fetch_days(api, truck.whole_days(tr), None)
        newest: dict[str, tuple[int, float, int]] = {}
        for (day_ms, district), (kg, n) in days.items():
            if district not in newest or day_ms > newest[district][0]:
                newest[district] = (day_ms, kg, n)
        out = []
        for district, (day_ms, kg, n) in sorted(newest.items()):
            ja, en = self._names(district)
            attrs = {"weight": Attr(round(kg, 3), day_ms), "pickupCount": Attr(n, day_ms),
                     "dateObserved": Attr(utc(day_ms)), "districtId": Attr(district), "districtNameEn": Attr(en),
                     "address": Attr(district_address(ja))}
            geom = self.places.districts[district].geometry if district in self.places.districts else None
            if geom:
                attrs["location"] = Attr(geom)
            out.append(Entity(urn("WasteObserved", district), "WasteObserved", attrs))
        return out

    # ---- history
    def history(self, api: Api, ids: Sequence[str], attrs: Sequence[str], start_ms: int, end_ms: int,
                last_n: int | None, max_n: int) -> History:
        out: History = {}
        trucks = {t: i for i in ids if (t := _local(i, "Vehicle")) is not None}
        if trucks and {"location", "cargoWeight"} & set(attrs):
            for dev, per in self._truck_history(api, sorted(trucks), attrs, start_ms, end_ms, last_n,
                                                max_n).items():
                got = {a: _cut(inst, start_ms, end_ms, last_n, max_n) for a, inst in per.items()}
                got = {a: inst for a, inst in got.items() if inst}
                if got:
                    out[trucks[dev]] = got
        districts = {d: i for i in ids if (d := _local(i, "WasteObserved")) is not None}
        if districts and {"weight", "pickupCount"} & set(attrs):
            for d, per in self._district_days(api, sorted(districts), attrs, start_ms, end_ms).items():
                got = {a: _cut(inst, start_ms, end_ms, last_n, max_n) for a, inst in per.items()}
                out[districts[d]] = {a: inst for a, inst in got.items() if inst}
        return {i: per for i, per in out.items() if per}

    def _truck_history(self, api: Api, devices: Sequence[str], attrs: Sequence[str], start_ms: int, end_ms: int,
                       last_n: int | None = None, max_n: int | None = None
                       ) -> dict[str, dict[str, list[tuple[Any, int]]]]:
        """truck → ``location`` and ``cargoWeight`` instances in ``[start_ms, end_ms)``: per truck only the loads
        and positions that can be answered (its oldest ``max_n``, or newest ``last_n``: InfluxDB's ``LIMIT`` per
        truck, :func:`truck.fetch_truck_history`), and the cargo left after the unloads of the trips that end in the
        range where the answer can still hold them: as :func:`_cargo` over every load from
        :data:`TRIP_LOOKBACK_MS` before ``start_ms``, then :func:`_cut`, without reading them."""
        limit = last_n or max_n

        def fetch(q: QueryFn, db: str, loads: bool, positions: bool) -> truck.TruckHistory:
            return truck.fetch_truck_history(q, db, TimeRange(start_ms, end_ms), devices, loads=loads,
                                             positions=positions, limit=limit, newest=bool(last_n))

        if "cargoWeight" in attrs and "location" in attrs:  # two requests side by side: InfluxDB's two cores
            h, p = api.read_side_by_side([(fetch, True, False), (fetch, False, True)])
            h = dataclasses.replace(h, positions=p.positions)
        else:
            h = api.read(fetch, "cargoWeight" in attrs, "location" in attrs)
        api.skipped(truck.TRIP, h.skipped_trips)
        out: dict[str, dict[str, list[tuple[Any, int]]]] = {}
        for dev, pos in h.positions.items():
            if pos:
                out.setdefault(dev, {})["location"] = [(_point(lat, lon), ms) for ms, lat, lon in pos]
        if "cargoWeight" not in attrs:
            return out
        # the loads read are all of a truck's in [start_ms, end_ms), or in [start_ms, its newest read] (oldest
        # first), or in (its oldest read, end_ms) (newest first: the oldest's millisecond may hold more)
        cut = {dev: (mine[0][0] if last_n else mine[-1][0]) for dev, mine in h.loads.items()
               if limit is not None and len(mine) >= limit}

        def answerable(t: truck.Trip) -> bool:
            """The unload can be in the answer: before the newest load read (oldest first; a load at the unload's
            millisecond is before it), at or after the oldest read (newest first), or every load was read."""
            if t.truck not in cut:
                return True
            return t.end_ms >= cut[t.truck] if last_n else t.end_ms < cut[t.truck]

        trips = [t for t in h.trips if t.kg_unloaded is not None and answerable(t)]
        # the trip's newest load at or before its end: from the loads read when they hold the whole of its span
        # in the range, else looked up (from the look-back day: the trip across start_ms, or none read)
        before: dict[tuple[str, int, int], float] = {}
        for t in trips:
            mine = [x for x in h.loads.get(t.truck, ()) if x[1] == t.trip_no and x[0] <= t.end_ms]
            if mine and not (last_n and t.truck in cut and mine[-1][0] <= cut[t.truck]):
                before[(t.truck, t.trip_no, t.end_ms)] = mine[-1][2]
        missing = [t for t in trips if (t.truck, t.trip_no, t.end_ms) not in before]
        if missing:
            found, _ = api.read(lambda q, db: truck.fetch_last_loads(q, db, missing, start_ms - TRIP_LOOKBACK_MS))
            before.update(found)
        unloads: dict[str, list[tuple[int, int, float]]] = {}
        for t in trips:
            load = before.get((t.truck, t.trip_no, t.end_ms))
            if load is not None and t.kg_unloaded is not None:
                unloads.setdefault(t.truck, []).append((t.end_ms, 1, cargo_left(load, t.kg_unloaded)))
        for dev in h.loads.keys() | unloads.keys():
            evs = [(ms, 0, round(kg, 3)) for ms, _, kg in h.loads.get(dev, ())]
            if dev in unloads:  # a load at an unload's millisecond is before it
                evs = sorted(evs + unloads[dev], key=lambda e: e[:2])
            if evs:
                out.setdefault(dev, {})["cargoWeight"] = [(v, ms) for ms, _, v in evs]
        return out

    def _district_days(self, api: Api, districts: Sequence[str], attrs: Sequence[str], start_ms: int, end_ms: int
                       ) -> dict[str, dict[str, list[tuple[Any, int]]]]:
        """district → weight and pickupCount per JST day whose start is in ``[start_ms, end_ms)``."""
        one = districts[0] if len(districts) == 1 else None
        days = self._fetch_days(api, truck.whole_days(TimeRange(start_ms, end_ms)), one)
        out: dict[str, dict[str, list[tuple[Any, int]]]] = {}
        for (day_ms, d), (kg, n) in sorted(days.items()):
            if d in districts and start_ms <= day_ms < end_ms:
                per = out.setdefault(d, {})
                if "weight" in attrs:
                    per.setdefault("weight", []).append((round(kg, 3), day_ms))
                if "pickupCount" in attrs:
                    per.setdefault("pickupCount", []).append((n, day_ms))
        return out

    # ---- aggregates
    def aggregated(self, api: Api, ids: Sequence[str], attrs: Sequence[str], methods: Sequence[str],
                   period_ms: int, start_ms: int, end_ms: int) -> Aggregates:
        """``location`` is a geometry, not aggregated. A truck's ``cargoWeight``: from the rollup's rows
        (:meth:`_rolled_cargo`) when the periods are whole rows (hours from a whole hour, JST days from a JST
        midnight) and the methods are theirs, else its pickups' loads aggregated by InfluxDB, merged exactly with
        its unloads' few instances (:meth:`_cargo_aggregates`); with ``distinctCount`` (a set, not mergeable from
        counts) and for the districts (a day each, from the rollup), in Python over the instances."""
        numeric = [a for a in attrs if a != "location"]
        out: Aggregates = {}
        trucks = {t: i for i in ids if (t := _local(i, "Vehicle")) is not None}
        if trucks and "cargoWeight" in numeric and "distinctCount" not in methods:
            level = rollup_level(period_ms, start_ms, end_ms, TRUCK_LEVELS)
            rolled = None
            if level is not None and set(methods) <= set(ROLLUP_METHODS):
                rolled = self._rolled_cargo(api, trucks, methods, level, period_ms, start_ms, end_ms)
            out.update(rolled if rolled is not None else
                       self._cargo_aggregates(api, trucks, methods, period_ms, start_ms, end_ms))
            ids = [i for i in ids if _local(i, "Vehicle") is None]
        out.update(aggregate_history(self.history(api, ids, numeric, start_ms, end_ms, None, 10**9), methods,
                                     period_ms, start_ms, end_ms))
        return out

    def _rolled_cargo(self, api: Api, trucks: dict[str, str], methods: Sequence[str], level: int, period_ms: int,
                      start_ms: int, end_ms: int) -> Aggregates | None:
        """``cargoWeight``'s ``methods`` per period from the rollup's rows (``truck_cargo_1d``/``_1h``, written by
        ``cityos rollup``: docs/api.md "Pre-aggregation") before the job's progress point, and after it from the
        raw path (:meth:`_cargo_groups` per hour), merged per period (:func:`cityos.rollups.forest_merge`): the
        numbers of :meth:`_cargo_aggregates`. None when nothing is rolled up (or no rollups' database): the caller
        takes the raw path for the whole range."""
        progress = self._progress.get()
        if progress is None:
            return None
        devices = sorted(trucks)
        columns = ["cargo_kg_sum", *(f"cargo_kg_{m}" for m in ("min", "max") if m in methods)]
        rows, cut = api.read(lambda query, _db: forest_stored(
            query, api.settings.rollup_db, start_ms, end_ms, level, progress, devices, columns, levels=TRUCK_LEVELS,
            fields=TRUCK_ROLLED))
        if cut < end_ms:  # the hours after the progress point: raw, in rows of the same shape
            for dev, per in self._cargo_groups(api, trucks, {"totalCount", "sum", "min", "max"}, HOUR_MS, cut,
                                               end_ms, start_ms - TRIP_LOOKBACK_MS).items():
                for t0, (agg, extra) in per.items():
                    n_loads = int(agg.get("totalCount", 0))
                    values = [*((agg["min"], agg["max"]) if n_loads else ()), *extra]
                    if values:
                        rows.append((dev, t0, {"readings": n_loads + len(extra),
                                               "cargo_kg_sum": agg.get("sum", 0.0) + math.fsum(extra),
                                               "cargo_kg_min": min(values), "cargo_kg_max": max(values)}))
        targets = {eid: Target(dev, {"cargoWeight": TRUCK_ROLLED[0]}) for dev, eid in trucks.items()}
        return aggregate_rows(rows, targets, ["cargoWeight"], methods, period_ms, start_ms, end_ms, TRUCK_ROLLED)

    def _cargo_groups(self, api: Api, trucks: dict[str, str], need: set[str], period_ms: int, start_ms: int,
                      end_ms: int, lookback_from_ms: int) -> dict[str, dict[int, tuple[dict[str, float], list[float]]]]:
        """truck → period start → (InfluxDB's ``need`` over the period's loads (none: no load), the values of the
        period's unloads): the trips that ended in the range, each from its trip's last load from
        ``lookback_from_ms`` on (:func:`truck.fetch_last_loads`). Periods from ``start_ms``."""
        loads = _LOADS.aggregated(api, {eid: Target(dev, {"cargoWeight": "load_kg"}) for dev, eid in trucks.items()},
                                  ["cargoWeight"], sorted(need), period_ms, start_ms, end_ms)
        one = next(iter(trucks)) if len(trucks) == 1 else None
        trips, bad_trips = api.read(truck.fetch_trips, TimeRange(start_ms, end_ms), one)
        api.skipped(truck.TRIP, bad_trips)
        trips = [t for t in trips if t.truck in trucks and t.kg_unloaded is not None]
        last, _ = api.read(lambda q, db: truck.fetch_last_loads(q, db, trips, lookback_from_ms))
        groups: dict[str, dict[int, tuple[dict[str, float], list[float]]]] = {}
        for dev, eid in trucks.items():
            per = (loads.get(eid) or {}).get("cargoWeight") or {}
            for m, inst in per.items():
                for v, t0, _t1 in inst:
                    groups.setdefault(dev, {}).setdefault(t0, ({}, []))[0][m] = float(v)
        for t in trips:
            before = last.get((t.truck, t.trip_no, t.end_ms))
            if before is None or t.kg_unloaded is None or not start_ms <= t.end_ms < end_ms:
                continue
            t0 = start_ms + (t.end_ms - start_ms) // period_ms * period_ms if period_ms else start_ms
            groups.setdefault(t.truck, {}).setdefault(t0, ({}, []))[1].append(cargo_left(before, t.kg_unloaded))
        return groups

    def _cargo_aggregates(self, api: Api, trucks: dict[str, str], methods: Sequence[str], period_ms: int,
                          start_ms: int, end_ms: int) -> Aggregates:
        """The instances of :meth:`history`'s ``cargoWeight`` aggregated as :func:`aggregate` does (periods from
        ``start_ms``, none without an instance): the loads' count, sum, extremes (and mean and sample deviation for
        ``stddev``) per truck and period from InfluxDB (``GROUP BY time``), the unloads' values added to them
        (:meth:`_cargo_groups`)."""
        need = {"totalCount", "sum"} | ({"min", "max"} & set(methods)) | ({"avg", "stddev"} if "stddev" in methods
                                                                          else set())
        groups = self._cargo_groups(api, trucks, need, period_ms, start_ms, end_ms, start_ms - TRIP_LOOKBACK_MS)
        out: Aggregates = {}
        for dev, per_period in groups.items():
            res: dict[str, list[tuple[float | int, int, int]]] = {}
            for t0, (a, extra) in sorted(per_period.items()):
                t1 = min(t0 + period_ms, end_ms) if period_ms else end_ms
                for m in methods:
                    r = _merged(m, a, extra)
                    if r is not None:
                        res.setdefault(m, []).append((r, t0, t1))
            if res:
                out[trucks[dev]] = {"cargoWeight": res}
        return out


def _merged(method: str, a: dict[str, float], extra: list[float]) -> float | int | None:
    """``method`` over a period's loads (InfluxDB's ``totalCount``, ``sum``, ``min``, ``max``, ``avg``,
    ``stddev`` in ``a``; none when the period has no load) and its unloads' values ``extra``."""
    n_a = int(a.get("totalCount", 0))
    n = n_a + len(extra)
    if n == 0:
        return None
    total = a.get("sum", 0.0) + sum(extra)
    if method == "totalCount":
        return n
    if method == "sum":
        return total
    if method == "avg":
        return total / n
    if method in ("min", "max"):
        f = min if method == "min" else max
        return f([*([a[method]] if n_a else []), *extra])
    if method == "stddev":  # the sample's (none for one value): the loads' squared deviations merged (Chan et al.)
        if n < 2:
            return None
        mean_a = a.get("avg", 0.0)
        m2 = (a.get("stddev") or 0.0) ** 2 * (n_a - 1) if n_a > 1 else 0.0
        mean, count = mean_a, n_a
        for x in extra:
            count += 1
            d = x - mean
            mean += d / count
            m2 += d * (x - mean)
        return math.sqrt(m2 / (n - 1))
    raise ValueError(f"not an aggregation method here: {method!r}")


def provider(api: Api) -> TruckProvider:
    return TruckProvider(api, api.clock)
