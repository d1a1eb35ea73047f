"""Stop events from synthetic GPS drives along the committed Tsuyama loop feed (sans-I/O, explicit fixes).

:class:`Drive` moves a bus in straight lines between stops at 1 Hz, so it is exactly at a stop on a whole second;
its methods return the times the expectations are written from. At 30 km/h a bus moving off from a stop is still
within 30 m of it on the 3rd fix (25 m) and beyond on the 4th (33 m): a departure is the last dwell fix + 3 s.
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge.sources.bus.gtfs import Feed, load_feed
from edge.sources.bus.stops import (
    StopArrival,
    StopDeparture,
    StopDetector,
    StopDetectorConfig,
    StopEvent,
    StopPassed,
)
from edge.sources.common.geo import EARTH_RADIUS_M, haversine_m
from edge.sources.common.nmea import RmcFix

FEED_PATH = Path(__file__).resolve().parent.parent / "scenarios" / "gtfs-tsuyama-loop"
DAY = date(2026, 4, 1)  # a Wednesday: weekday timetable, wd-01 leaves 津山駅 at 07:00
LOOP = [f"{k}" for k in range(1001, 1020)] + ["1001"]
MOVE_OFF_MS = 3000  # see the module docstring
JITTER_M = [(10, 0), (0, 10), (-10, 0), (0, -10), (7, 7), (-7, -7), (7, -7), (-7, 7)]


@pytest.fixture(scope="module")
def feed() -> Feed:
    return load_feed(FEED_PATH)


def at(feed: Feed, hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return feed.service_day_ms(DAY) + ((h * 60 + m) * 60 + s) * 1000


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    k = 180 / (math.pi * EARTH_RADIUS_M)
    return lat + north_m * k, lon + east_m * k / math.cos(math.radians(lat))


class Drive:
    """A bus at 1 Hz: ``fixes`` grows as it drives, dwells and idles."""

    def __init__(self, feed: Feed, stop_id: str, t_ms: int) -> None:
        self.feed = feed
        s = feed.stop(stop_id)
        self.pos = (s.lat, s.lon)
        self.t = t_ms
        self.fixes: list[RmcFix] = []

    def fix(self, lat: float, lon: float, kmh: float) -> None:
        self.t += 1000
        self.fixes.append(RmcFix(True, self.t, lat, lon, kmh, None))

    def dwell(self, seconds: int, jitter: bool = False, at: tuple[float, float] | None = None) -> int:
        """Stand still (GPS speed near 0); with ``jitter`` the fixes wander ±10 m. Returns the last fix time."""
        lat, lon = at or self.pos
        for k in range(seconds):
            n, e = JITTER_M[k % len(JITTER_M)] if jitter else (0, 0)
            self.fix(*offset(lat, lon, n, e), 0.4 * (k % 3))
        return self.t

    def to(self, stop_id: str, stop: bool = True, kmh: float = 30.0, past_m: float = 0.0) -> int:
        """Drive to a stop (``past_m`` beyond it, northwards): on a whole second, speed 0 there when ``stop``."""
        s = self.feed.stop(stop_id)
        dest = offset(s.lat, s.lon, past_m, 0)
        d = haversine_m(*self.pos, *dest)
        n = max(1, math.ceil(d / (kmh / 3.6)))
        for k in range(1, n + 1):
            f = k / n
            lat = self.pos[0] + (dest[0] - self.pos[0]) * f
            lon = self.pos[1] + (dest[1] - self.pos[1]) * f
            self.fix(lat, lon, 0.0 if (stop and k == n) else kmh)
        self.pos = dest
        return self.t


def run(
    feed: Feed, fixes: list[RmcFix], config: StopDetectorConfig | None = None
) -> tuple[StopDetector, list[StopEvent]]:
    det = StopDetector(feed, config)
    out: list[StopEvent] = []
    for f in fixes:
        out.extend(det.on_fix(f))
    return det, out


def test_config_needs_hysteresis() -> None:
    with pytest.raises(ValidationError, match="exit_radius_m"):
        StopDetectorConfig(entry_radius_m=30, exit_radius_m=30)


def test_a_loop_trip_then_the_next(feed: Feed) -> None:
    """wd-01 driven round the loop: dwells, jitter at the castle, a pass at イオン津山, a 60 s dropout, handover."""
    d = Drive(feed, "1001", at(feed, "06:58:00"))
    t0 = at(feed, "06:58:01")  # the first fix: stopped at 津山駅 within 10 min of wd-01's start
    last = d.dwell(120)  # to 07:00:00
    exp: list[StopEvent] = [StopArrival("1001", t0, "wd-01", 1)]
    dep = last + MOVE_OFF_MS
    exp.append(StopDeparture("1001", dep, (dep - t0) / 1000, "wd-01", 1))
    gap: tuple[int, int] | None = None
    for seq, sid in enumerate(LOOP[1:], 2):
        if sid == "1007":  # nobody waiting, nobody getting off: straight through at 30 km/h
            exp.append(StopPassed(sid, d.to(sid, stop=False), "wd-01", seq))
            continue
        if sid == "1010":  # the GPS drops out for 60 s half-way between 高野 and 一宮口
            gap = (d.t + 20_000, d.t + 80_000)
        arr = d.to(sid)
        if sid == "1001":  # end of the loop: wd-01 ends, wd-02 (08:00, same block) takes over at once
            exp += [
                StopArrival(sid, arr, "wd-01", 20),
                StopDeparture(sid, arr, 0.0, "wd-01", 20),
                StopArrival(sid, arr, "wd-02", 1),
            ]
            break
        last = d.dwell(15, jitter=sid == "1003")
        exp.append(StopArrival(sid, arr, "wd-01", seq))
        exp.append(StopDeparture(sid, last + MOVE_OFF_MS, (last + MOVE_OFF_MS - arr) / 1000, "wd-01", seq))
    assert arr < at(feed, "07:42:00")
    d.dwell((at(feed, "08:00:00") - d.t) // 1000, jitter=True)
    last = d.t
    arr2 = d.to("1002")
    d.dwell(10)
    dep = last + MOVE_OFF_MS
    exp += [StopDeparture("1001", dep, (dep - arr) / 1000, "wd-02", 1), StopArrival("1002", arr2, "wd-02", 2)]

    assert gap is not None
    fixes = [f for f in d.fixes if not gap[0] < f.time_ms <= gap[1]]
    det, events = run(feed, fixes)
    assert events == exp
    assert det.counters.gaps == 1
    assert det.counters.trips_matched == 1
    assert (det.counters.invalid, det.counters.stale, det.counters.trips_dropped) == (0, 0, 0)
    assert det.run is not None and det.run.trip.id == "wd-02"


def test_jitter_at_the_edge_needs_hysteresis(feed: Feed) -> None:
    """Stopped 22 m past the stop with ±10 m jitter: 12-32 m away. One visit with the 50 m exit radius."""
    d = Drive(feed, "1001", at(feed, "06:59:00"))
    d.dwell(60)
    d.to("1002", stop=True, past_m=22)
    arr = d.t
    last = d.dwell(30, jitter=True, at=d.pos)
    d.to("1003", stop=False)
    _, events = run(feed, d.fixes)
    at_1002 = [e for e in events if e.stop_id == "1002"]
    assert at_1002[0] == StopArrival("1002", arr, "wd-01", 2)
    assert isinstance(at_1002[1], StopDeparture) and len(at_1002) == 2
    assert at_1002[1].ts >= last  # left after the dwell, not at the first excursion beyond 30 m
    # Without hysteresis the first jitter fix beyond 30 m would end the visit mid-dwell.
    _, naive = run(feed, d.fixes, StopDetectorConfig(entry_radius_m=30, exit_radius_m=30.5))
    dep = next(e for e in naive if isinstance(e, StopDeparture) and e.stop_id == "1002")
    assert dep.ts < last - 20_000


def test_dropout_over_a_stop_gives_no_event_for_it(feed: Feed) -> None:
    d = Drive(feed, "1001", at(feed, "06:59:30"))
    d.dwell(30)
    d.to("1002")
    d.dwell(10)
    start = d.t + 10_000
    d.to("1003")
    d.dwell(20)  # stopped at the castle, but the GPS is out
    d.to("1004")
    end = d.t - 15_000  # back 15 s before 城東むかし町
    last = d.dwell(10)
    fixes = [f for f in d.fixes if not start < f.time_ms <= end]
    det, events = run(feed, fixes)
    assert [(type(e).__name__, e.stop_id) for e in events] == [
        ("StopArrival", "1001"),
        ("StopDeparture", "1001"),
        ("StopArrival", "1002"),
        ("StopDeparture", "1002"),
        ("StopArrival", "1004"),  # found by lookahead; 1003 (sequence 3) has no event
    ]
    assert events[-1] == StopArrival("1004", d.t - 10_000, "wd-01", 4)
    assert last == d.t and det.counters.gaps == 1


def test_dropout_at_a_stop_departs_at_the_last_fix_there(feed: Feed) -> None:
    d = Drive(feed, "1001", at(feed, "06:59:30"))
    d.dwell(30)
    arr = d.to("1002")
    seen = d.dwell(10)  # the GPS goes out here, 10 s into the dwell ...
    d.dwell(20)
    d.to("1003", stop=False)  # ... and returns 20 s after the bus has left
    end = d.t - 5000
    fixes = [f for f in d.fixes if not seen < f.time_ms <= end]
    _, events = run(feed, fixes)
    assert StopDeparture("1002", seen, (seen - arr) / 1000, "wd-01", 2) in events
    # 1003 was passed during the dropout's last seconds: it was approached but never seen stopping or leaving.
    assert not any(e.stop_id == "1003" for e in events)


def test_approach_then_dropout_is_not_a_pass(feed: Feed) -> None:
    d = Drive(feed, "1001", at(feed, "06:59:30"))
    d.dwell(30)
    d.to("1002", stop=False)  # within the radius at speed ...
    start = d.t
    d.dwell(20)  # ... stopped during the dropout (unseen) ...
    end = d.t
    passed = d.to("1003", stop=False)  # ... and the next fix is already beyond 50 m
    d.to("1004")
    fixes = [f for f in d.fixes if not start < f.time_ms <= end + 6000]
    det, events = run(feed, fixes)
    assert not any(e.stop_id == "1002" for e in events)
    assert det.counters.unobserved == 1
    assert events[-2:] == [StopPassed("1003", passed, "wd-01", 3), StopArrival("1004", d.t, "wd-01", 4)]


def test_stale_and_invalid_fixes_are_ignored(feed: Feed) -> None:
    d = Drive(feed, "1001", at(feed, "06:59:50"))
    d.dwell(10)
    arr = d.to("1002")
    d.dwell(5)
    fixes = list(d.fixes)
    fixes.insert(3, fixes[1])  # a repeated (old) fix
    fixes.insert(5, RmcFix(False, d.t + 1, None, None, None, None))  # status V
    det, events = run(feed, fixes)
    assert events == [
        StopArrival("1001", at(feed, "06:59:51"), "wd-01", 1),
        StopDeparture("1001", at(feed, "07:00:03"), 12.0, "wd-01", 1),
        StopArrival("1002", arr, "wd-01", 2),
    ]
    assert (det.counters.stale, det.counters.invalid) == (1, 1)


def test_matching_by_timetable(feed: Feed) -> None:
    # Stopped at 津山駅 at 05:00: no trip within 10 min. At 06:51 wd-01 (07:00) is.
    d = Drive(feed, "1001", at(feed, "05:00:00"))
    d.dwell(30)
    _, events = run(feed, d.fixes)
    assert events == []
    # A gateway booting mid-route: stopped at 市役所 (seq 12, 07:25 in wd-01) at 07:27, then 津山高校前.
    d = Drive(feed, "1012", at(feed, "07:27:00"))
    d.dwell(5)
    passed = d.to("1013", stop=False)
    d.to("1014")
    _, events = run(feed, d.fixes)
    assert events[0] == StopArrival("1012", at(feed, "07:27:01"), "wd-01", 12)
    assert events[2:] == [StopPassed("1013", passed, "wd-01", 13), StopArrival("1014", d.t, "wd-01", 14)]
    # Stopped at 津山駅 at 07:45: wd-01's end (07:42) is nearer than wd-02's start (08:00): handover.
    d = Drive(feed, "1001", at(feed, "07:45:00"))
    d.dwell(2)
    _, events = run(feed, d.fixes)
    ts = at(feed, "07:45:01")
    assert events == [
        StopArrival("1001", ts, "wd-01", 20),
        StopDeparture("1001", ts, 0.0, "wd-01", 20),
        StopArrival("1001", ts, "wd-02", 1),
    ]


def test_last_trip_of_the_day_ends_at_the_terminal(feed: Feed) -> None:
    d = Drive(feed, "1019", at(feed, "17:40:00"))  # 宮川橋, seq 19 of wd-10
    d.dwell(5)
    arr = d.to("1001")
    last = d.dwell(60)
    d.to("1002")  # to the depot past 今津屋橋: no trip any more
    d.dwell(30)
    det, events = run(feed, d.fixes)
    dep = last + MOVE_OFF_MS
    assert events[2:] == [
        StopArrival("1001", arr, "wd-10", 20),
        StopDeparture("1001", dep, (dep - arr) / 1000, "wd-10", 20),
    ]
    assert det.run is None


def test_far_behind_schedule_drops_the_trip(feed: Feed) -> None:
    d = Drive(feed, "1001", at(feed, "06:59:50"))
    d.dwell(10)
    d.to("1002", past_m=-150)  # stuck in traffic 150 m before 今津屋橋 (due 07:01) for half an hour
    d.dwell(31 * 60)
    det, events = run(feed, d.fixes)
    assert [type(e) for e in events] == [StopArrival, StopDeparture]  # wd-01 at 津山駅
    assert det.run is None and det.counters.trips_dropped == 1
