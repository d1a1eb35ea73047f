"""The forest stations as NGSI-LD entities (the facade: ``cityos_api/ngsi_ld``; the mapping and its extensions:
docs/ngsi-ld.md, "Forest stations"), read from InfluxDB measurement ``forest`` (docs/forest.md).

Per station (device ``forest-01-01``):

* ``urn:ngsi-ld:WeatherObserved:forest-01-01`` (Smart Data Model dataModel.Weather ``WeatherObserved``): the rain.
  ``precipitation`` (MMT) is the rain of the 60 minutes before ``dateObserved`` (``rain_intensity_mm_h``: the
  60-minute rainfall of the landslide criteria); extensions ``continuousRainfall`` (MMT, 連続雨量:
  ``rain_cumulative_mm``) and ``rainfall`` (MMT, the rain since the previous observation: ``rain_mm``, the one to
  sum over a period).
* ``urn:ngsi-ld:DeviceMeasurement:forest-01-01-<quantity>`` (dataModel.Device ``DeviceMeasurement``), one per
  quantity the station reports: ``soilMoisture`` (10 cm) and ``soilMoistureDeep`` (30 cm), ``numValue`` in P1
  (percent volumetric water content), ``controlledProperty`` ``soilMoisture``, extension ``depth`` (CMT);
  ``tiltX`` and ``tiltY``: ``numValue`` in DD (degrees), ``controlledProperty`` ``tilt`` (an extension: the model
  lists no tilt), extension ``tiltRate`` (degrees per hour over the trailing hour; no UN/CEFACT code).

Every entity has ``location`` (GeoProperty, a Point from the station's configured ``lat``/``lon``, when set),
``dateObserved`` and ``refDevice`` (``urn:ngsi-ld:Device:<device>``). A station silent for
:data:`LOOKBACK_DAYS` days is not an entity any more.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cityos.influx import QueryFn
from cityos.rollups import (
    FOREST_LEVELS,
    FOREST_ROLLED,
    ROLLUP_METHODS,
    forest_raw,
    forest_stored,
    rollup_level,
)
from cityos_api.core import Api
from cityos_api.families.forest import kept_state
from cityos_api.ngsi_ld import (
    Aggregates,
    Attr,
    AttrInfo,
    Entity,
    History,
    InfluxFields,
    Target,
    TypeInfo,
    aggregate_rows,
    urn,
)
from cityos_api.ngsi_ld.temporal import utc

__all__ = ["FOREST_TYPES", "ForestProvider", "provider"]

MEASUREMENT = "forest"
LOOKBACK_DAYS = 30
#: Stations from which an aggregate's rows are read as two halves side by side (:meth:`Api.read_side_by_side`).
SPLIT_AT = 8
SDM_WEATHER = "https://smartdatamodels.org/dataModel.Weather/"
SDM_DEVICE = "https://smartdatamodels.org/dataModel.Device/"
SDM = "https://smartdatamodels.org/"

_COMMON = {
    "location": AttrInfo("GeoProperty", iri="https://uri.etsi.org/ngsi-ld/location",
                         description="the station's configured position (GeoJSON Point, lon, lat)"),
    "dateObserved": AttrInfo(iri="https://uri.etsi.org/ngsi-ld/dateObserved",
                             description="the newest observation's time (UTC)"),
    "refDevice": AttrInfo("Relationship", iri=SDM + "refDevice", description="the station"),
}
WEATHER = TypeInfo("WeatherObserved", {
    **_COMMON,
    "precipitation": AttrInfo(unit_code="MMT", iri=SDM_WEATHER + "precipitation", temporal=True,
                              description="rain in the 60 minutes before the observation (rain_intensity_mm_h)"),
    "continuousRainfall": AttrInfo(unit_code="MMT", temporal=True,
                                   description="rain since the rain event began (連続雨量; rain_cumulative_mm)"),
    "rainfall": AttrInfo(unit_code="MMT", temporal=True,
                         description="rain since the previous observation (rain_mm): sum it over a period"),
}, iri=SDM_WEATHER + "WeatherObserved")
MEASUREMENT_TYPE = TypeInfo("DeviceMeasurement", {
    **_COMMON,
    "numValue": AttrInfo(iri=SDM_DEVICE + "numValue", temporal=True,
                         description="the measured value, in the unit of its unitCode"),
    "unit": AttrInfo(iri=SDM_DEVICE + "unit", description="numValue's UN/CEFACT unit code"),
    "controlledProperty": AttrInfo(iri=SDM_DEVICE + "controlledProperty",
                                   description="soilMoisture, or tilt (an extension value)"),
    "depth": AttrInfo(unit_code="CMT", description="the soil moisture sensor's depth"),
    "tiltRate": AttrInfo(temporal=True, description="tilt change over the trailing hour, degrees per hour "
                         "(tilt_rate_x_deg_h / tilt_rate_y_deg_h; no UN/CEFACT code)"),
}, iri=SDM_DEVICE + "DeviceMeasurement")
FOREST_TYPES = {t.name: t for t in (WEATHER, MEASUREMENT_TYPE)}

#: WeatherObserved attribute → field.
_RAIN = {"precipitation": "rain_intensity_mm_h", "continuousRainfall": "rain_cumulative_mm", "rainfall": "rain_mm"}
#: DeviceMeasurement quantity → (numValue's field, unit code, controlledProperty, static extras, field of tiltRate).
_QUANTITIES: dict[str, tuple[str, str, str, dict[str, Any], str | None]] = {
    "soilMoisture": ("soil_moisture_pct", "P1", "soilMoisture", {"depth": 10}, None),
    "soilMoistureDeep": ("soil_moisture_deep_pct", "P1", "soilMoisture", {"depth": 30}, None),
    "tiltX": ("tilt_x_deg", "DD", "tilt", {}, "tilt_rate_x_deg_h"),
    "tiltY": ("tilt_y_deg", "DD", "tilt", {}, "tilt_rate_y_deg_h"),
}
_FIELDS = sorted({*_RAIN.values(), *(q[0] for q in _QUANTITIES.values()),
                  *(q[4] for q in _QUANTITIES.values() if q[4]), "lat", "lon"})


def _target(entity_id: str) -> Target | None:
    """Where an entity's temporal attributes are stored, from its id alone."""
    parts = entity_id.split(":")
    if len(parts) != 4 or parts[:2] != ["urn", "ngsi-ld"]:
        return None
    if parts[2] == "WeatherObserved":
        return Target(parts[3], _RAIN)
    if parts[2] == "DeviceMeasurement" and "-" in parts[3]:
        device, quantity = parts[3].rsplit("-", 1)
        q = _QUANTITIES.get(quantity)
        if q is None:
            return None
        return Target(device, {"numValue": q[0], **({"tiltRate": q[4]} if q[4] else {})})
    return None


def _location(values: dict[str, tuple[Any, int]]) -> Attr | None:
    lat, lon = values.get("lat"), values.get("lon")
    if lat is None or lon is None:
        return None
    try:
        la, lo = float(lat[0]), float(lon[0])
    except (TypeError, ValueError):
        return None
    if not (-90 <= la <= 90 and -180 <= lo <= 180):
        return None
    return Attr({"type": "Point", "coordinates": [lo, la]}, max(lat[1], lon[1]))


class ForestProvider:
    """The forest stations' WeatherObserved and DeviceMeasurement entities."""

    types = FOREST_TYPES

    def __init__(self, clock: Any = time.time) -> None:
        self.influx = InfluxFields(MEASUREMENT)
        self.clock = clock

    def entities(self, api: Api) -> list[Entity]:
        now = int(self.clock() * 1000)
        since = now - LOOKBACK_DAYS * 86_400_000
        out: list[Entity] = []
        bad = 0
        for device, values in sorted(self.influx.latest(api, _FIELDS, since, now - 86_400_000).items()):
            loc = _location(values)
            if loc is None and ("lat" in values or "lon" in values):
                bad += 1
            common: dict[str, Attr] = {"refDevice": Attr(urn("Device", device))}
            if loc is not None:
                common["location"] = loc
            rain = {a: Attr(values[f][0], values[f][1]) for a, f in _RAIN.items() if f in values}
            if rain:
                newest = max(a.observed_ms or 0 for a in rain.values())
                out.append(Entity(urn("WeatherObserved", device), "WeatherObserved",
                                  {**common, **rain, "dateObserved": Attr(utc(newest))}))
            for quantity, (field, unit, prop, extra, rate) in _QUANTITIES.items():
                if field not in values:
                    continue
                v, ms = values[field]
                attrs = {**common, "numValue": Attr(v, ms, unit), "unit": Attr(unit),
                         "controlledProperty": Attr(prop), "dateObserved": Attr(utc(ms)),
                         **{k: Attr(x) for k, x in extra.items()}}
                if rate and rate in values:
                    attrs["tiltRate"] = Attr(values[rate][0], values[rate][1])
                out.append(Entity(urn("DeviceMeasurement", f"{device}-{quantity}"), "DeviceMeasurement", attrs))
        api.skipped(MEASUREMENT, bad)
        return out

    def _targets(self, ids: Sequence[str]) -> dict[str, Target]:
        return {i: t for i in ids if (t := _target(i)) is not None}

    def history(self, api: Api, ids: Sequence[str], attrs: Sequence[str], start_ms: int, end_ms: int,
                last_n: int | None, max_n: int) -> History:
        return self.influx.history(api, self._targets(ids), attrs, start_ms, end_ms, last_n, max_n)

    def aggregated(self, api: Api, ids: Sequence[str], attrs: Sequence[str], methods: Sequence[str],
                   period_ms: int, start_ms: int, end_ms: int) -> Aggregates:
        """From the rollups (:func:`rolled_up`) when the periods are made of whole rows and the methods are theirs,
        else InfluxDB's aggregation of the raw points: the same numbers either way."""
        targets = self._targets(ids)
        level = rollup_level(period_ms, start_ms, end_ms, FOREST_LEVELS)
        if level is None or not set(methods) <= set(ROLLUP_METHODS):
            return self.influx.aggregated(api, targets, attrs, methods, period_ms, start_ms, end_ms)
        return rolled_up(api, targets, attrs, methods, level, period_ms, start_ms, end_ms)


def rolled_up(api: Api, targets: dict[str, Target], attrs: Sequence[str], methods: Sequence[str], level: int,
              period_ms: int, start_ms: int, end_ms: int) -> Aggregates:
    """``methods`` per period from the rollups' rows up to their progress point and the raw points after it,
    merged per period (:func:`cityos.rollups.forest_merge`): periods without a value left out, the last one
    ending with the range (as :meth:`InfluxFields.aggregated`)."""
    devices = sorted({t.tag_value for t in targets.values()})
    if not devices:
        return {}
    fields = {f for t in targets.values() for a in attrs if (f := t.fields.get(a))}
    extremes = [k for k in ("min", "max") if k in methods]
    columns = [f"{f}_{k}" for f in fields for k in ("sum", "n", *extremes)]

    state = kept_state(api)

    def fetch(query: QueryFn, db: str, devices: list[str]) -> list[tuple[str, int, dict[str, float | int]]]:
        rows, cut = forest_stored(query, api.settings.rollup_db, start_ms, end_ms, level, state.progress, devices,
                                  columns)
        if cut < end_ms:
            rows += forest_raw(query, db, cut, end_ms, [f for f in FOREST_ROLLED if f in state.numbers and
                                                         f in fields], devices, level, columns)
        return rows

    half = len(devices) // 2
    parts = [devices[:half], devices[half:]] if len(devices) >= SPLIT_AT else [devices]
    rows = [r for got in api.read_side_by_side([(fetch, p) for p in parts]) for r in got]
    return aggregate_rows(rows, targets, attrs, methods, period_ms, start_ms, end_ms)


def provider(api: Api) -> ForestProvider:
    return ForestProvider(api.clock)
