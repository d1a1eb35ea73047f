"""The JSON bodies of the waste routes (``cityos_api/families/truck.py``) as the OpenAPI document types them:
schemas only (:class:`cityos_api.core.Body`), the routes build the answers. Times are ISO 8601 in Japan time with
their offset; days and months are JST's. A paged list's ``next_cursor`` is null on the last page (as the forest's).
"""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from typing import Literal

from pydantic import Field

from cityos_api.core import Body

__all__ = ["WasteCollectionPoints", "WasteDistrictDaily", "WasteDistrictMonthly", "WasteTrips", "WasteTruckTrips"]

_NEXT = "the `cursor` of the next page; null on the last page"


class WasteUnits(Body):
    kg: Literal["kg"]


class WasteDistrict(Body):
    district: str = Field(description="the district's id, or `unknown`: pickups with no position or outside every "
                                      "district")
    district_name_ja: str = Field(description="its Japanese name (its id when the districts file lacks it)")
    district_name_en: str = Field(description="its English name (its id when the districts file lacks it)")


class _Amount(Body):
    kg: float = Field(description="waste collected, kg (the trucks' load cells; 3 decimals)")
    pickups: int = Field(description="pickups")


class WasteDistrictDay(_Amount, WasteDistrict):
    date: dt.date = Field(description="the JST calendar day")


class WasteDistrictMonth(_Amount, WasteDistrict):
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$", description="the JST calendar month, YYYY-MM")


class _Range(Body):
    title: str = Field(description="the dataset's title (Japanese / English)")
    from_: datetime = Field(alias="from", description="start of the range, a JST midnight (whole days)")
    to: datetime = Field(description="end of the range, exclusive, a JST midnight")
    time_zone: Literal["Asia/Tokyo"]


class WasteDistrictDaily(_Range):
    dataset: Literal["waste-district-daily"]
    units: WasteUnits
    note: str = Field(description="what a missing row means (0 kg)")
    items: list[WasteDistrictDay] = Field(description="days and districts with a pickup, by date then district")
    next_cursor: str | None = Field(description=_NEXT)


class WasteDistrictMonthly(_Range):
    dataset: Literal["waste-district-monthly"]
    units: WasteUnits
    note: str = Field(description="what a missing row means (0 kg)")
    items: list[WasteDistrictMonth] = Field(description="months and districts with a pickup, by month then "
                                                        "district")


class WasteTripDistrict(_Amount, WasteDistrict):
    """The trip's pickups in one district."""


class WasteTrip(Body):
    truck: str = Field(description="the truck's device id")
    trip_no: int = Field(description="the trip's number on its truck")
    start: datetime = Field(description="the trip's start: its end less its duration (JST, with offset)")
    end: datetime = Field(description="when it ended: unloaded at the disposal site")
    first_pickup: datetime | None = Field(description="its first pickup found; null when none was")
    last_pickup: datetime | None = Field(description="its last pickup found; null when none was")
    kg: float = Field(description="kg collected (net: the sum of the load's increases)")
    kg_unloaded: float | None = Field(description="kg unloaded at the disposal site; null when not weighed")
    pickups: int = Field(description="pickups, as the truck counted them")
    pickups_unknown_district: int = Field(description="of them, with no position or outside every district")
    distance_km: float | None = Field(description="distance driven, km; null when unknown")
    duration_s: float = Field(description="duration, s")
    districts: list[WasteTripDistrict] = Field(description="the districts its pickups were in, by id")


class _Trips(Body):
    dataset: Literal["waste-trips"]
    title: str = Field(description="the dataset's title (Japanese / English)")
    date: dt.date = Field(description="the JST calendar day the trips ended on")
    from_: datetime = Field(alias="from", description="the day's start (JST, with offset)")
    to: datetime = Field(description="the day's end, exclusive")
    time_zone: Literal["Asia/Tokyo"]
    units: dict[str, str] = Field(description="unit of each value field, by field name")
    note: str = Field(description="what `start` and `first_pickup` are")


class WasteTrips(_Trips):
    items: list[WasteTrip] = Field(description="every truck's trips that ended on the day, by truck then end")
    next_cursor: str | None = Field(description=_NEXT)


class WasteTruckTrips(_Trips):
    truck: str = Field(description="the truck's device id")
    items: list[WasteTrip] = Field(description="its trips that ended on the day, by end")


class WasteCollectionPoint(_Amount, WasteDistrict):
    lat: float = Field(description="the cell's centre, latitude, degrees (WGS 84)")
    lon: float = Field(description="the cell's centre, longitude, degrees (WGS 84)")
    cell_deg: float = Field(description="the cell's size, degrees of latitude and of longitude")


class WasteCellUnits(Body):
    kg: Literal["kg"]
    lat: Literal["deg"]
    lon: Literal["deg"]


class WasteCell(Body):
    deg: float = Field(description="the cell's size, degrees")
    about_m: list[int] = Field(description="its size here, about [north-south, east-west] m")
    note: str = Field(description="how pickups are grouped, for people")


class WasteCollectionPoints(_Range):
    dataset: Literal["waste-collection-points"]
    units: WasteCellUnits
    cell: WasteCell
    pickups_without_position: int = Field(description="pickups in the range without a position (in no cell)")
    items: list[WasteCollectionPoint] = Field(description="per cell and district with a pickup, by cell then "
                                                          "district")
    next_cursor: str | None = Field(description=_NEXT)
