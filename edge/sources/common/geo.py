"""District polygons and distances for vehicles (garbage trucks now, buses later): small, pure Python.

Why not shapely: importing it pulls in numpy and GEOS, which alone would take a large part of the gateway's
40 MB RSS budget, for what is a handful of polygons with tens of vertices and one lookup per pickup. A
ray-casting point-in-polygon over a bounding-box pre-check is a few microseconds here and needs nothing.

Coordinates are treated as planar (lon, lat) for the inside test: district boundaries a few km across are far
from the poles and the antimeridian, and a point within metres of a border is ambiguous in any case (GPS error
is larger). Distances use the haversine formula on a spherical Earth (error < 0.5 %, far below what GPS noise
and corner-cutting between 1 Hz fixes do to a trip's length).

The districts file is a GeoJSON FeatureCollection of Polygon/MultiPolygon features whose properties carry the
district id (``id`` by default; the wire's id pattern, since it becomes the ``district`` tag) and a ``name``
(Japanese, for people). :func:`load_districts` checks all of it and raises :class:`DistrictsError` naming the
feature and the problem, so a bad file is a config error at startup rather than wrong tags at run time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityos.wire import ID_PATTERN

EARTH_RADIUS_M = 6_371_008.8
#: The district tag of a point outside every polygon (and of a pickup with no usable fix). Not a valid id in a file.
UNKNOWN = "unknown"
_ID_RE = re.compile(ID_PATTERN)

Ring = tuple[tuple[float, float], ...]  # (lon, lat) vertices, closed (first == last)


class DistrictsError(ValueError):
    """The districts GeoJSON is unusable; the message names the file, the feature and the problem.

    ``detail`` is the message without the file name (for a config error that names the setting already)."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source, self.detail = source, detail


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def point_in_ring(lon: float, lat: float, ring: Ring) -> bool:
    """Ray casting (even-odd rule): count crossings of a ray from the point towards +lon."""
    inside = False
    n = len(ring)
    j = n - 1
    for i in range(n):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


@dataclass(frozen=True)
class Polygon:
    outer: Ring
    holes: tuple[Ring, ...] = ()

    def contains(self, lon: float, lat: float) -> bool:
        return point_in_ring(lon, lat, self.outer) and not any(point_in_ring(lon, lat, h) for h in self.holes)


@dataclass(frozen=True)
class District:
    id: str
    name: str
    polygons: tuple[Polygon, ...]
    bbox: tuple[float, float, float, float]  # min lon, min lat, max lon, max lat

    def contains(self, lat: float, lon: float) -> bool:
        x0, y0, x1, y1 = self.bbox
        if not (x0 <= lon <= x1 and y0 <= lat <= y1):
            return False
        return any(p.contains(lon, lat) for p in self.polygons)


class Districts:
    """The districts of one file, looked up by position. First match wins (files should not overlap)."""

    def __init__(self, districts: Sequence[District], source: str = "") -> None:
        self.districts = tuple(districts)
        self.source = source

    def __len__(self) -> int:
        return len(self.districts)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.districts]

    def locate(self, lat: float, lon: float) -> str | None:
        """The id of the district containing the point, or None when it is outside all of them."""
        for d in self.districts:
            if d.contains(lat, lon):
                return d.id
        return None

    def name_of(self, district_id: str) -> str | None:
        return next((d.name for d in self.districts if d.id == district_id), None)


def load_districts(path: str | Path, id_property: str = "id") -> Districts:
    """Read and check a districts GeoJSON file (see the module docstring)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DistrictsError(str(p), f"cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DistrictsError(str(p), f"not valid JSON: {exc}") from None
    return parse_districts(data, id_property=id_property, source=str(p))


def parse_districts(data: Any, *, id_property: str = "id", source: str = "districts") -> Districts:
    """Check a parsed districts GeoJSON; :class:`DistrictsError` names ``source``, the feature and the problem."""
    try:
        return _parse(data, id_property, source)
    except _Bad as exc:
        raise DistrictsError(source, str(exc)) from None


class _Bad(ValueError):
    pass


def _parse(data: Any, id_property: str, source: str) -> Districts:
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise _Bad('not a GeoJSON FeatureCollection (top-level "type" must be that)')
    features = data.get("features")
    if not isinstance(features, list) or not features:
        raise _Bad('"features" must be a non-empty list')
    out: list[District] = []
    seen: set[str] = set()
    for i, feat in enumerate(features):
        where = f"features[{i}]"
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise _Bad(f"{where}: not a GeoJSON Feature")
        props = feat.get("properties")
        if not isinstance(props, dict):
            raise _Bad(f'{where}: no "properties" object')
        did = props.get(id_property)
        if not isinstance(did, str) or not _ID_RE.match(did):
            raise _Bad(f"{where}: property {id_property!r} is {did!r}; a district id must match {ID_PATTERN}")
        where = f"features[{i}] ({id_property} {did!r})"
        if did == UNKNOWN:
            raise _Bad(f"{where}: {UNKNOWN!r} is reserved for points outside every district")
        if did in seen:
            raise _Bad(f"{where}: duplicate district id")
        seen.add(did)
        name = props.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _Bad(f"{where}: property 'name' must be a non-empty string")
        polygons = _geometry(feat.get("geometry"), where)
        xs = [x for poly in polygons for x, _ in poly.outer]
        ys = [y for poly in polygons for _, y in poly.outer]
        out.append(District(did, name, polygons, (min(xs), min(ys), max(xs), max(ys))))
    return Districts(out, source)


def _geometry(geom: Any, where: str) -> tuple[Polygon, ...]:
    if not isinstance(geom, dict):
        raise _Bad(f'{where}: no "geometry" object')
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind == "Polygon":
        return (_polygon(coords, f"{where}: geometry.coordinates"),)
    if kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise _Bad(f"{where}: geometry.coordinates: a MultiPolygon needs a non-empty list of polygons")
        return tuple(_polygon(c, f"{where}: geometry.coordinates[{k}]") for k, c in enumerate(coords))
    raise _Bad(f"{where}: geometry type {kind!r}; districts must be Polygon or MultiPolygon")


def _polygon(coords: Any, where: str) -> Polygon:
    if not isinstance(coords, list) or not coords:
        raise _Bad(f"{where}: a Polygon needs a non-empty list of linear rings")
    rings = [_ring(r, f"{where}[{k}]") for k, r in enumerate(coords)]
    return Polygon(rings[0], tuple(rings[1:]))


def _ring(raw: Any, where: str) -> Ring:
    if not isinstance(raw, list) or len(raw) < 4:
        raise _Bad(f"{where}: a linear ring needs at least 4 positions (closed, first == last)")
    pts: list[tuple[float, float]] = []
    for k, pos in enumerate(raw):
        ok = (
            isinstance(pos, list)
            and len(pos) >= 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pos[:2])
        )
        if not ok:
            raise _Bad(f"{where}[{k}]: a position must be [lon, lat] numbers, got {pos!r}")
        lon, lat = float(pos[0]), float(pos[1])
        if not (-180 <= lon <= 180 and -90 <= lat <= 90) or not (math.isfinite(lon) and math.isfinite(lat)):
            raise _Bad(f"{where}[{k}]: [{lon}, {lat}] is not a [lon, lat] position (lon first)")
        pts.append((lon, lat))
    if pts[0] != pts[-1]:
        raise _Bad(f"{where}: ring is not closed (first position {pts[0]} != last {pts[-1]})")
    if len(set(pts)) < 3:
        raise _Bad(f"{where}: ring has fewer than 3 distinct positions")
    return tuple(pts)
