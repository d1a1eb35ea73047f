"""The JSON bodies of the forest routes (``cityos_api/families/forest.py``) as the OpenAPI document types them:
schemas only (:class:`cityos_api.core.Body`), the routes build the answers. A field the route adds and a model
does not name fails the property run's schema check (tests/test_api_properties.py).

Times are ISO 8601 in Japan time with their offset (``2026-12-01T09:00:00+09:00``); a reading's value is null
where the station did not send it (a sensor in fault).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from cityos_api.core import Body

__all__ = ["ForestAlerts", "ForestReadings", "ForestStationBody", "ForestStations"]

#: The alert levels (:data:`cityos.landslide.LEVELS`), lowest first.
Level = Literal["none", "caution", "warning"]
#: The criteria (keys of :data:`cityos.landslide.CRITERIA`).
Criterion = Literal["soil_moisture_and_rain", "tilt_rate_warning", "tilt_rate_caution"]
Interval = Literal["raw", "10m", "1h", "1d"]

_NULL = "null where absent"


class ForestCriterion(Body):
    level: Level = Field(description="the level the criterion raises")
    rule: str = Field(description="the criterion, as the alert rules test it")


class ForestAbout(Body):
    """What every forest answer says about its alert levels and units."""

    alert_window_min: int = Field(description="minutes of live readings a station's current level is taken over")
    criteria: dict[Criterion, ForestCriterion] = Field(description="every criterion by name")
    units: dict[str, str] = Field(description="unit of each value field, by field name (e.g. rain_mm: mm)")


class ForestValues(Body):
    """A forest reading's values (null where the station did not send one)."""

    soil_moisture_pct: float | None = Field(description=f"soil moisture at 10 cm, %VWC; {_NULL}")
    soil_moisture_deep_pct: float | None = Field(description=f"soil moisture at 30 cm, %VWC; {_NULL}")
    rain_mm: float | None = Field(description=f"rain since the previous reading, mm; {_NULL}")
    rain_tips: float | None = Field(description=f"rain gauge tips since power-on (a counter); {_NULL}")
    rain_intensity_mm_h: float | None = Field(description=f"rain of the last 60 minutes, mm/h; {_NULL}")
    rain_cumulative_mm: float | None = Field(description=f"rain since the current rain event began (continuous rainfall), mm; "
                                                         f"{_NULL}")
    tilt_x_deg: float | None = Field(description=f"slope tilt, x axis, degrees; {_NULL}")
    tilt_y_deg: float | None = Field(description=f"slope tilt, y axis, degrees; {_NULL}")
    tilt_rate_x_deg_h: float | None = Field(description=f"tilting rate, x axis, deg/h; {_NULL}")
    tilt_rate_y_deg_h: float | None = Field(description=f"tilting rate, y axis, deg/h; {_NULL}")
    water_level_m: float | None = Field(description=f"water above the sensor (groundwater or stream stage), m; {_NULL}")
    battery_v: float | None = Field(description=f"battery voltage, V; {_NULL}")
    status: float | None = Field(description=f"the station's status bitmask (docs/forest.md); {_NULL}")
    lat: float | None = Field(description="latitude, degrees (WGS 84); null with lon when the reading has none")
    lon: float | None = Field(description="longitude, degrees (WGS 84); null with lat")
    backfill: bool | None = Field(description="true: sent late, after an outage (not live); null where absent")


class ForestLatest(ForestValues):
    time: datetime = Field(description="the reading's time (JST, with offset)")


class ForestPosition(Body):
    lat: float = Field(description="latitude, degrees (WGS 84)")
    lon: float = Field(description="longitude, degrees (WGS 84)")


class ForestAlertNow(Body):
    level: Level | Literal["unknown"] = Field(description=(
        "the highest level among the station's live readings of the alert window; unknown when it has none "
        "(stale)"))
    criteria: list[Criterion] = Field(description="every criterion met in the window")
    live_readings: int = Field(description="live readings in the alert window")


class ForestStation(Body):
    station: str = Field(description="the station's device id")
    gateway: str | None = Field(description="the gateway its newest reading came through; null if unknown")
    position: ForestPosition | None = Field(description="from its newest reading; null when that has none")
    stale: bool = Field(description="no live reading in the alert window: its level is unknown")
    alert: ForestAlertNow
    latest: ForestLatest | None = Field(description="its newest servable reading; null when it has none")


class ForestStations(ForestAbout):
    dataset: Literal["forest-stations"]
    generated_at: datetime = Field(description="when the answer was made (JST, with offset)")
    items: list[ForestStation] = Field(description="every station, by id")


class ForestStationBody(ForestStation, ForestAbout):
    dataset: Literal["forest-station"]
    generated_at: datetime = Field(description="when the answer was made (JST, with offset)")


class ForestRawReading(ForestValues):
    time: datetime = Field(description="the reading's time (JST, with offset)")
    alert_level: Level = Field(description="this reading's level")
    alert_criteria: list[Criterion] = Field(description="the criteria this reading meets")


class ForestBucket(Body):
    """A period's aggregates: means, except rain_mm (summed) and rain_cumulative_mm, rain_intensity_mm_h_max
    (maxima); null where no reading in it had the field."""

    start: datetime = Field(description="the period's start (JST, with offset)")
    end: datetime = Field(description="its end, exclusive")
    readings: int = Field(description="readings in the period")
    soil_moisture_pct: float | None = Field(description="mean, %VWC")
    soil_moisture_deep_pct: float | None = Field(description="mean, %VWC")
    rain_mm: float | None = Field(description="rain in the period (sum), mm")
    rain_intensity_mm_h: float | None = Field(description="mean, mm/h")
    rain_intensity_mm_h_max: float | None = Field(description="maximum, mm/h")
    rain_cumulative_mm: float | None = Field(description="maximum of the event total, mm")
    tilt_x_deg: float | None = Field(description="mean, degrees")
    tilt_y_deg: float | None = Field(description="mean, degrees")
    tilt_rate_x_deg_h: float | None = Field(description="mean, deg/h")
    tilt_rate_y_deg_h: float | None = Field(description="mean, deg/h")
    water_level_m: float | None = Field(description="mean, m")
    battery_v: float | None = Field(description="mean, V")


class ForestReadings(Body):
    dataset: Literal["forest-readings"]
    station: str = Field(description="the station's device id")
    interval: Interval = Field(description="raw: every reading; else the length of each period (1d: JST days)")
    from_: datetime = Field(alias="from", description="start of the range (JST, with offset)")
    to: datetime = Field(description="end of the range, exclusive")
    time_zone: Literal["Asia/Tokyo"]
    units: dict[str, str] = Field(description="unit of each value field, by field name")
    items: list[ForestRawReading] | list[ForestBucket] = Field(description=(
        "oldest first: readings (interval raw) or periods with at least one reading"))
    next_cursor: str | None = Field(description="the `cursor` of the next page; null on the last page")


class ForestEpisode(Body):
    station: str = Field(description="the station's device id")
    level: Literal["caution", "warning"] = Field(description="the highest level of its readings")
    start: datetime = Field(description="its first reading at caution or above (JST, with offset)")
    end: datetime | None = Field(description="when the alert rules resolve (the last reading plus the window); "
                                             "null while ongoing")
    last_reading: datetime = Field(description="its last reading at caution or above")
    ongoing: bool = Field(description="the end is still ahead")
    criteria: list[Criterion] = Field(description="every criterion met")
    readings: int = Field(description="readings at caution or above")


class ForestAlerts(ForestAbout):
    dataset: Literal["forest-alerts"]
    from_: datetime = Field(alias="from", description="start of the range (JST, with offset)")
    to: datetime = Field(description="end of the range, exclusive")
    station: str | None = Field(description="the station asked for; null: every station")
    generated_at: datetime = Field(description="when the answer was made (JST, with offset)")
    items: list[ForestEpisode] = Field(description="episodes overlapping the range, by start then station")
    next_cursor: str | None = Field(description="the `cursor` of the next page; null on the last page")
