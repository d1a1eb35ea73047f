"""What selects entities (NGSI-LD clauses 4.9, 4.10, 4.17, 5.7.2), pure: the ``q`` language (a parser, never
eval), geo-queries (``near`` by haversine, ``within`` by point-in-polygon) and the ``type``/``id``/``idPattern``
selectors. Anything outside the subset is a 400 BadRequestData that says what is supported (docs/ngsi-ld.md).

``q`` subset: terms joined by ``;`` (AND) and ``|`` (OR), AND binding tighter, parentheses; a term is an attribute
path (``weight``, ``address[district]``: a member of a compound value) alone (the attribute exists) or compared
with ``==``, ``!=``, ``>``, ``>=``, ``<``, ``<=`` to a number, a quoted string, ``true``/``false``, a date-time
(``2026-12-01T09:00:00Z``) or a URI (``urn:ngsi-ld:...``); ``==``/``!=`` also take a range ``a..b`` (inclusive)
or a list ``a,b,c``. An attribute whose value is a list matches when one of its members does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cityos_api.ngsi_ld.errors import NgsiError, bad_request
from cityos_api.ngsi_ld.provider import Entity

__all__ = [
    "GeoQuery",
    "Query",
    "haversine_m",
    "parse_geo",
    "parse_id_pattern",
    "parse_ids",
    "parse_names",
    "parse_q",
    "point_in_polygon",
]

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
MAX_Q = 2000
MAX_TERMS = 100
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})")
_NUMBER = re.compile(r"-?(\d+(\.\d+)?|\.\d+)([eE][+-]?\d+)?")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^;|(),\"\s]+")
_URI_FULL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]+")
_OPS = ("==", "!=", ">=", "<=", ">", "<")

#: A compiled query: entity → matches.
Query = Callable[[Entity], bool]


@dataclass(frozen=True)
class _DateTime:
    ms: float
    text: str


def _as_time(v: Any) -> float | None:
    if isinstance(v, str) and _DATETIME.fullmatch(v):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000
        except ValueError:
            return None
    return None


def _cmp(a: Any, b: Any) -> int | None:
    """-1/0/1 comparing a stored value ``a`` with a query value ``b``; None when they do not compare."""
    if isinstance(b, _DateTime):
        t = _as_time(a)
        return None if t is None else (t > b.ms) - (t < b.ms)
    if isinstance(b, bool) or isinstance(a, bool):
        return 0 if a is b else None
    if isinstance(a, int | float) and isinstance(b, int | float):
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    return None


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.terms = 0

    def fail(self, what: str) -> NgsiError:
        return NgsiError("BadRequestData", f"q: {what} at character {self.i + 1} of {self.s[:120]!r} (supported: "
                         "attribute paths, ==, !=, >, >=, <, <=, numbers, \"strings\", true/false, date-times, "
                         "URIs, ranges a..b, lists a,b; ';' AND, '|' OR, parentheses)")

    def peek(self, tok: str) -> bool:
        return self.s.startswith(tok, self.i)

    def parse(self) -> Query:
        if not self.s:
            raise self.fail("an empty query")
        if len(self.s) > MAX_Q:
            raise NgsiError("BadRequestData", f"q: at most {MAX_Q} characters")
        q = self.expr()
        if self.i != len(self.s):
            raise self.fail(f"unexpected {self.s[self.i]!r}")
        return q

    def expr(self) -> Query:
        parts = [self.conj()]
        while self.peek("|"):
            self.i += 1
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else (lambda e: any(p(e) for p in parts))

    def conj(self) -> Query:
        parts = [self.term()]
        while self.peek(";"):
            self.i += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else (lambda e: all(p(e) for p in parts))

    def term(self) -> Query:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise NgsiError("BadRequestData", f"q: at most {MAX_TERMS} terms")
        if self.peek("("):
            self.i += 1
            q = self.expr()
            if not self.peek(")"):
                raise self.fail("a missing ')'")
            self.i += 1
            return q
        path = self.path()
        if self.peek("~=") or self.peek("!~="):
            raise self.fail("a pattern match (~=), which is not supported")
        op = next((o for o in _OPS if self.peek(o)), None)
        if op is None:
            return lambda e: _get(e, path) is not _MISSING
        self.i += len(op)
        first = self.value()
        if self.peek(".."):
            if op not in ("==", "!="):
                raise self.fail("a range after an operator other than == or !=")
            self.i += 2
            hi = self.value()
            if _cmp(hi, first) is None and not isinstance(first, _DateTime):
                raise self.fail("a range whose ends do not compare")
            return _range(path, op, first, hi)
        if self.peek(","):
            if op not in ("==", "!="):
                raise self.fail("a list after an operator other than == or !=")
            values = [first]
            while self.peek(","):
                self.i += 1
                values.append(self.value())
            return _listed(path, op, values)
        return _compare(path, op, first)

    def path(self) -> list[str]:
        m = _NAME.match(self.s, self.i)
        if not m:
            raise self.fail("an attribute name expected")
        self.i = m.end()
        path = [m.group()]
        while self.peek("["):
            m = _NAME.match(self.s, self.i + 1)
            if not m or not self.s.startswith("]", m.end()):
                raise self.fail("a member name in [...] expected")
            path.append(m.group())
            self.i = m.end() + 1
        if self.peek("."):
            raise self.fail("a sub-attribute path (a.b), which is not supported")
        return path

    def value(self) -> Any:
        s, i = self.s, self.i
        if s.startswith('"', i):
            out, j = [], i + 1
            while j < len(s) and s[j] != '"':
                if s[j] == "\\" and j + 1 < len(s):
                    j += 1
                out.append(s[j])
                j += 1
            if j >= len(s):
                raise self.fail("an unterminated string")
            self.i = j + 1
            return "".join(out)
        for word, v in (("true", True), ("false", False)):
            if s.startswith(word, i) and not _NAME.match(s, i + len(word)):
                self.i = i + len(word)
                return v
        m = _DATETIME.match(s, i)
        if m:
            self.i = m.end()
            t = _as_time(m.group())
            if t is None:
                raise self.fail("a date-time that does not exist")
            return _DateTime(t, m.group())
        m = _NUMBER.match(s, i)
        if m and not _NAME.match(s, m.end()):
            text = m.group()
            self.i = m.end()
            return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
        m = _URI.match(s, i)
        if m:
            self.i = m.end()
            return m.group()
        raise self.fail("a value expected")


class _Missing:
    pass


_MISSING = _Missing()


def _get(e: Entity, path: Sequence[str]) -> Any:
    a = e.attrs.get(path[0])
    if a is None:
        return _MISSING
    v = a.value
    for key in path[1:]:
        if not isinstance(v, dict) or key not in v:
            return _MISSING
        v = v[key]
    return v


def _members(v: Any) -> Iterable[Any]:
    return v if isinstance(v, list) else (v,)


def _compare(path: list[str], op: str, want: Any) -> Query:
    def test(c: int | None) -> bool:
        if c is None:
            return op == "!="
        return {"==": c == 0, "!=": c != 0, ">": c > 0, ">=": c >= 0, "<": c < 0, "<=": c <= 0}[op]

    def q(e: Entity) -> bool:
        v = _get(e, path)
        if v is _MISSING:
            return False
        if op == "!=":
            return all(test(_cmp(m, want)) for m in _members(v))
        return any(test(_cmp(m, want)) for m in _members(v))

    return q


def _range(path: list[str], op: str, lo: Any, hi: Any) -> Query:
    def inside(m: Any) -> bool:
        a, b = _cmp(m, lo), _cmp(m, hi)
        return a is not None and b is not None and a >= 0 and b <= 0

    def q(e: Entity) -> bool:
        v = _get(e, path)
        if v is _MISSING:
            return False
        hit = any(inside(m) for m in _members(v))
        return hit if op == "==" else not hit

    return q


def _listed(path: list[str], op: str, values: list[Any]) -> Query:
    def q(e: Entity) -> bool:
        v = _get(e, path)
        if v is _MISSING:
            return False
        hit = any(_cmp(m, w) == 0 for m in _members(v) for w in values)
        return hit if op == "==" else not hit

    return q


def parse_q(text: str) -> Query:
    """The compiled ``q``, or 400 BadRequestData saying where and what is supported."""
    return _Parser(text.strip()).parse()


# ---- geo
def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _in_ring(x: float, y: float, ring: Sequence[Sequence[float]]) -> bool:
    inside = False
    n = len(ring)
    for k in range(n):
        x1, y1 = ring[k][0], ring[k][1]
        x2, y2 = ring[(k + 1) % n][0], ring[(k + 1) % n][1]
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


def point_in_polygon(lon: float, lat: float, polygon: Sequence[Sequence[Sequence[float]]]) -> bool:
    """Inside the outer ring and in none of the holes (even-odd rule, planar in lon/lat: fine at a city's scale)."""
    return _in_ring(lon, lat, polygon[0]) and not any(_in_ring(lon, lat, h) for h in polygon[1:])


def _positions(geom: Any) -> list[tuple[float, float]]:
    """Every position of a GeoJSON geometry (lon, lat)."""
    out: list[tuple[float, float]] = []

    def walk(c: Any) -> None:
        if isinstance(c, list) and len(c) >= 2 and all(isinstance(x, int | float) for x in c[:2]):
            out.append((float(c[0]), float(c[1])))
        elif isinstance(c, list):
            for x in c:
                walk(x)

    if isinstance(geom, dict):
        walk(geom.get("coordinates"))
    return out


@dataclass(frozen=True)
class GeoQuery:
    georel: str  # near | within
    coordinates: Any
    geoproperty: str = "location"
    max_m: float | None = None
    min_m: float | None = None

    def __call__(self, e: Entity) -> bool:
        a = e.attrs.get(self.geoproperty)
        pts = _positions(a.value) if a is not None else []
        if not pts:
            return False
        if self.georel == "near":
            lon, lat = self.coordinates
            d = min(haversine_m(lon, lat, x, y) for x, y in pts)
            return (self.max_m is None or d <= self.max_m) and (self.min_m is None or d >= self.min_m)
        return all(point_in_polygon(x, y, self.coordinates) for x, y in pts)


def _position(c: Any) -> bool:
    return (isinstance(c, list) and len(c) in (2, 3) and all(isinstance(x, int | float) and not isinstance(x, bool)
                                                             for x in c) and -180 <= c[0] <= 180 and -90 <= c[1] <= 90)


def parse_geo(georel: str | None, geometry: str | None, coordinates: str | None, geoproperty: str | None
              ) -> GeoQuery | None:
    """A geo-query from its parameters (all three or none), or 400."""
    if georel is None and geometry is None and coordinates is None:
        return None
    if georel is None or geometry is None or coordinates is None:
        raise NgsiError("BadRequestData", "a geo-query needs georel, geometry and coordinates together")
    try:
        coords = json.loads(coordinates)
    except ValueError:
        raise bad_request("coordinates", "a JSON array of GeoJSON coordinates, longitude first",
                          coordinates) from None
    prop = geoproperty or "location"
    if not _NAME.fullmatch(prop):
        raise bad_request("geoproperty", "an attribute name", prop)
    rel, *rest = georel.split(";")
    if rel == "near":
        if geometry != "Point" or not _position(coords):
            raise bad_request("geometry", "Point with coordinates [lon,lat] for near", f"{geometry} {coordinates}")
        lims: dict[str, float] = {}
        for part in rest:
            m = re.fullmatch(r"(maxDistance|minDistance)==(\d+(\.\d+)?)", part)
            if not m or m.group(1) in lims:
                raise bad_request("georel", "near;maxDistance==<metres> and/or ;minDistance==<metres>", georel)
            lims[m.group(1)] = float(m.group(2))
        if not lims:
            raise bad_request("georel", "near;maxDistance==<metres> and/or ;minDistance==<metres>", georel)
        return GeoQuery("near", coords, prop, lims.get("maxDistance"), lims.get("minDistance"))
    if rel == "within" and not rest:
        ok = (geometry == "Polygon" and isinstance(coords, list) and coords and all(
            isinstance(r, list) and len(r) >= 4 and all(_position(p) for p in r) and r[0] == r[-1] for r in coords))
        if not ok:
            raise bad_request("coordinates", "a GeoJSON Polygon's coordinates (closed rings of [lon,lat], at "
                              "least 4 positions each) with geometry=Polygon for within", coordinates)
        return GeoQuery("within", coords, prop)
    raise bad_request("georel", "near;maxDistance==<m> (or minDistance) or within (others are not supported)",
                      georel)


# ---- selectors
def parse_names(param: str, raw: str | None, known: dict[str, str] | None = None) -> list[str] | None:
    """A comma-separated list of names (``type`` may also use ``|``); an IRI of our context (``known``: IRI →
    short name) stands for its short name. Other IRIs are kept as given (they match nothing we serve)."""
    if raw is None:
        return None
    parts = [p.strip() for p in re.split(r"[,|]" if param == "type" else ",", raw)]
    out = []
    for p in parts:
        if known and p in known:
            p = known[p]
        if not (_NAME.fullmatch(p) or _URI_FULL.fullmatch(p)) or len(p) > 256:
            raise bad_request(param, "names (or IRIs) separated by ','" + (" or '|'" if param == "type" else ""),
                              raw)
        out.append(p)
    if not out or len(out) > 100:
        raise bad_request(param, "1 to 100 names", raw)
    return out


def parse_ids(raw: str | None) -> set[str] | None:
    if raw is None:
        return None
    ids = [p.strip() for p in raw.split(",")]
    if not ids or len(ids) > 1000 or not all(_URI_FULL.fullmatch(i) and len(i) <= 256 for i in ids):
        raise bad_request("id", "1 to 1000 entity ids (URIs) separated by ','", raw)
    return set(ids)


#: A quantified group holding a quantifier ("(a+)+"): the shape of catastrophic backtracking.
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{]")


def parse_id_pattern(raw: str | None) -> re.Pattern[str] | None:
    """``idPattern`` compiled; at most 200 characters and no nested quantifier (a pattern that could take
    exponential time is refused, 400)."""
    if raw is None:
        return None
    if len(raw) > 200 or _NESTED.search(raw):
        raise bad_request("idPattern", "a regular expression of at most 200 characters without nested "
                          "quantifiers", raw)
    try:
        return re.compile(raw)
    except (re.error, OverflowError, RecursionError):
        raise bad_request("idPattern", "a regular expression", raw) from None
