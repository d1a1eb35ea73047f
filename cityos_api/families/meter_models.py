"""The JSON bodies of the energy routes (``cityos_api/families/meter.py``) as the OpenAPI document types them:
schemas only (:class:`cityos_api.core.Body`), the routes build the answers. Times are ISO 8601 in Japan time with
their offset; days are JST calendar days. A suppressed value (fewer than k households) is null, with
``kwh_suppressed: true``.
"""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from typing import Literal

from pydantic import Field

from cityos_api.core import Body

__all__ = ["EnergyDistrictDaily", "EnergyDistrictHalfHourly", "EnergyHouseholdHalfHourly"]


class EnergyUnits(Body):
    kwh: Literal["kWh"]


class EnergySuppression(Body):
    min_households: int = Field(description="k: a district's value is shown only where at least k households "
                                            "report")
    rule: str = Field(description="the suppression rule, for people")
    marker: str = Field(description="how a suppressed value is shown")


class EnergyDistrict(Body):
    district: str = Field(description="the district's id (the readings' district tag)")
    district_name_ja: str = Field(description="its Japanese name (its id when the districts file lacks it)")
    district_name_en: str = Field(description="its English name (its id when the districts file lacks it)")


class _Cell(Body):
    kwh: float | None = Field(description="electricity used, kWh (households summed, rounded to Wh); null when "
                                          "suppressed")
    households: int | None = Field(description="households reporting; null when suppressed")
    kwh_suppressed: bool = Field(description="true: fewer than k households (or, for a day, a half hour of it "
                                             "hidden or missing)")


class EnergyDistrictHalfHour(_Cell, EnergyDistrict):
    start: datetime = Field(description="the half hour's start (JST, with offset)")
    end: datetime = Field(description="its end, exclusive")


class EnergyDistrictDay(_Cell, EnergyDistrict):
    date: dt.date = Field(description="the JST calendar day")


class _Envelope(Body):
    title: str = Field(description="the dataset's title (Japanese / English)")
    from_: datetime = Field(alias="from", description=(
        "start of the range served: cut to whole periods (JST, with offset)"))
    to: datetime = Field(description="end of the range, exclusive: periods settled `energy_settle_h` ago at most")
    time_zone: Literal["Asia/Tokyo"]
    units: EnergyUnits
    suppression: EnergySuppression


class EnergyDistrictHalfHourly(_Envelope):
    dataset: Literal["energy-district-half-hourly"]
    items: list[EnergyDistrictHalfHour] = Field(description="by district, then time; a half hour with no household "
                                                            "reporting is not listed")


class EnergyDistrictDaily(_Envelope):
    dataset: Literal["energy-district-daily"]
    items: list[EnergyDistrictDay] = Field(description="by district, then day")


class EnergyHouseholdHalfHour(Body):
    household: str = Field(description="the household's pseudonym (hh-...)")
    district: str = Field(description="its district's id (empty when it has none)")
    start: datetime = Field(description="the half hour's start (JST, with offset)")
    end: datetime = Field(description="its end, exclusive")
    kwh: float = Field(description="electricity used, kWh (the difference of two fixed-time meter values)")


class EnergyHouseholdHalfHourly(Body):
    dataset: Literal["energy-household-half-hourly"]
    household: str = Field(description="the household's pseudonym (hh-...)")
    from_: datetime = Field(alias="from", description="start of the range (JST, with offset)")
    to: datetime = Field(description="end of the range, exclusive")
    time_zone: Literal["Asia/Tokyo"]
    units: EnergyUnits
    items: list[EnergyHouseholdHalfHour] = Field(description=(
        "oldest first; a half hour with a meter value missing at either end is not listed (never guessed)"))
