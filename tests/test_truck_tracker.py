"""The pickup/trip rules of the garbage-truck source, without ports or threads (sans-I/O).

:class:`CollectionTracker` is fed GPS bytes and weight frames with an explicit data-clock time, so each rule in
docs/trucks.md is checked on its own, with the exact inputs that trigger it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edge.sources.common.nmea import GpsTracker
from edge.sources.truck.source import CollectionTracker, Emission, TripState, TruckConfig
from edge.sources.truck.weighing import WeightFrame
from firmware_sim.truck.sim import DEFAULT_DISTRICTS_PATH

DISPOSAL = (35.0800, 133.9780)
CHUO = (35.0600, 134.0050)
TAKANO = (35.0700, 134.0400)
OUTSIDE = (35.2000, 134.3000)
T0 = datetime(2026, 4, 1, 8, 0, tzinfo=UTC).timestamp()


def config(**kw: Any) -> TruckConfig:
    return TruckConfig.model_validate(
        {
            "type": "garbage_truck",
            "name": "t",
            "device_id": "truck-01",
            "indicator_port": "/dev/null",
            "gps_port": "/dev/null",
            "districts": str(DEFAULT_DISTRICTS_PATH),
            "disposal": {"lat": DISPOSAL[0], "lon": DISPOSAL[1], "radius_m": 150},
            "stable_window_s": 1.0,
            "stable_lines": 3,
            **kw,
        }
    )


def rmc(t: float, where: tuple[float, float] | None, speed_kmh: float = 0.0) -> bytes:
    dt = datetime.fromtimestamp(t, UTC)
    hms, date = f"{dt:%H%M%S}.00", f"{dt:%d%m%y}"
    if where is None:
        body = f"GNRMC,{hms},V,,,,,,,{date},,,N"
    else:
        lat, lon = where
        la = f"{int(lat):02d}{(lat % 1) * 60:08.5f}"
        lo = f"{int(lon):03d}{(lon % 1) * 60:08.5f}"
        body = f"GNRMC,{hms},A,{la},N,{lo},E,{speed_kmh / 1.852:.2f},0.0,{date},,,A"
    cs = 0
    for ch in body:
        cs ^= ord(ch)
    return f"${body}*{cs:02X}\r\n".encode()


class Truck:
    """A tracker and a data clock that starts at T0 (GPS time == data clock here)."""

    def __init__(self, state: dict[str, Any] | None = None, **cfg: Any) -> None:
        self.gps = GpsTracker(timeout_s=5.0)
        self.tracker = CollectionTracker(config(**cfg), self.gps, TripState.load(state))
        self.now = T0
        self.out: list[Emission] = []

    def at(self, where: tuple[float, float] | None, speed_kmh: float = 0.0) -> None:
        self.now += 1
        for fix in self.gps.feed(rmc(self.now, where, speed_kmh), self.now):
            self.out += self.tracker.on_position(fix, self.now)

    def weigh(self, kg: float, status: str = "ST", mode: str = "NT", lines: int = 4) -> None:
        for _ in range(lines):
            self.now += 0.5
            self.out += self.tracker.on_weight(WeightFrame(status, mode, kg), self.now)  # type: ignore[arg-type]

    def stop_and_weigh(self, where: tuple[float, float] | None, kg: float) -> None:
        self.at(where)
        self.weigh(kg)

    def kinds(self) -> list[str]:
        return [e.reading.kind for e in self.out]

    def pickups(self) -> list[tuple[float, str]]:
        return [
            (e.reading.values["kg"], e.reading.tags["district"])
            for e in self.out
            if e.reading.kind == "truck_collection"
        ]


def test_a_stable_increase_while_stopped_is_one_pickup_in_its_district() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    t.weigh(0, "US")
    t.weigh(250)
    t.weigh(250)  # more of the same settled value: nothing more
    assert t.pickups() == [(250.0, "chuo")]
    r = t.out[0].reading
    # settled on the 3rd line at T0 + 6.5: GPS time of the fix (T0 + 1) + its age by the data clock
    assert r.ts == round((T0 + 6.5) * 1000)
    assert t.out[0].state["baseline"] == 250 and t.out[0].state["pickups"] == 1


def test_a_settle_shorter_than_the_window_or_the_line_count_is_not_one() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    t.weigh(250, lines=2)  # 2 lines < stable_lines
    t.weigh(0, "US")
    t.weigh(250, lines=1)
    assert t.pickups() == []


def test_drift_and_display_steps_are_followed_not_picked_up() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    for kg in (10, 10, 20, 10):  # < min_pickup_kg each time, even though they add up
        t.weigh(0, "US")
        t.weigh(kg)
    assert t.pickups() == []
    assert t.tracker.state.zero == 10 and t.tracker.state.zero0 == 0


def test_stable_while_moving_is_deferred_to_the_next_stop() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    t.at(CHUO, speed_kmh=20)
    t.weigh(300)  # a settled reading while GPS says the truck moves (a creeping truck, a bump)
    assert t.pickups() == [] and t.tracker.counters["deferred_moving"] == 1
    t.at(TAKANO, speed_kmh=0)  # stopped: decided now, where the truck is
    assert t.pickups() == [(300.0, "takano")]


def test_a_mode_change_is_a_new_reference_not_a_pickup() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 500)
    t.weigh(0, mode="GS")  # tare pressed / mode key: the number jumps, the load did not
    t.weigh(80, mode="GS")
    assert t.pickups() == [(80.0, "chuo")] and t.tracker.counters["mode_changes"] == 1


def test_overload_and_unstable_lines_end_a_settle() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    t.weigh(200, lines=2)
    t.out += t.tracker.on_weight(WeightFrame("OL", "NT", None), t.now)
    t.weigh(200, lines=2)
    assert t.pickups() == []  # never 3 stable lines in a row
    t.weigh(200, lines=1)
    assert t.pickups() == [(200.0, "chuo")]


def test_unloading_at_the_disposal_site_closes_the_trip() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    t.weigh(300)
    t.at(TAKANO, speed_kmh=30)
    t.stop_and_weigh(TAKANO, 500)
    t.at(DISPOSAL, speed_kmh=30)
    t.stop_and_weigh(DISPOSAL, 500)
    t.weigh(10)
    assert t.kinds() == ["truck_collection", "truck_collection", "truck_trip"]
    trip = t.out[-1]
    v = trip.reading.values
    assert (v["trip_no"], v["pickups"], v["kg_collected"], v["kg_unloaded"]) == (1, 2, 500, 490)
    assert v["distance_km"] > 5 and v["duration_s"] > 0
    assert trip.state["trip_no"] == 2 and trip.state["kg"] == 0 and trip.state["baseline"] == 10


def test_a_partial_unload_closes_the_trip_when_the_truck_leaves() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    t.weigh(800)
    t.stop_and_weigh(DISPOSAL, 800)
    t.weigh(400)  # half unloaded, then drives off (the rest stuck, or a second site)
    assert t.kinds() == ["truck_collection"]
    t.at(DISPOSAL, speed_kmh=20)
    assert t.kinds() == ["truck_collection"]
    t.at(CHUO, speed_kmh=20)
    assert t.kinds() == ["truck_collection", "truck_trip"]
    assert t.out[-1].reading.values["kg_unloaded"] == 400


def test_a_drop_away_from_the_disposal_site_does_not_close_the_trip() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    t.weigh(800)
    t.weigh(500)  # something fell off / was handed back
    t.weigh(700)
    assert t.kinds() == ["truck_collection", "truck_collection"]
    assert t.tracker.counters["weight_drops"] == 1 and t.tracker.state.trip_no == 1


def test_an_unload_missed_while_the_agent_was_down_closes_the_trip() -> None:
    state = TripState(
        trip_no=3, kg=900.0, pickups=4, baseline=900.0, mode="NT", last_ms=0, zero=0.0, zero0=0.0
    )
    t = Truck(state.dump())
    t.stop_and_weigh(CHUO, 0)  # first settle after the restart: empty, far from the site
    assert t.kinds() == ["truck_trip"] and t.tracker.counters["missed_unloads"] == 1
    assert t.out[0].reading.values["kg_unloaded"] == 900 and t.out[0].reading.values["trip_no"] == 3


def test_restart_state_makes_a_repeated_settle_a_no_op() -> None:
    t = Truck()
    t.stop_and_weigh(CHUO, 0)
    t.weigh(300)
    saved = t.out[-1].state
    again = Truck(saved)
    again.stop_and_weigh(CHUO, 300)  # the same load seen again after the restart
    assert again.out == []
    again.weigh(450)
    assert again.pickups() == [(150.0, "chuo")] and again.out[0].reading.values["pickup_no"] == 2


def test_no_fix_means_district_unknown_and_clock_time_and_timestamps_still_increase() -> None:
    t = Truck(fix_max_age_s=10.0)
    t.stop_and_weigh(None, 0)
    t.weigh(100)
    t.weigh(200)
    t.stop_and_weigh(OUTSIDE, 300)
    t.weigh(400)
    assert t.pickups() == [(100.0, "unknown")] * 4
    c = t.tracker.counters
    assert c["pickups_no_fix"] == 2 and c["pickups_unknown_district"] == 4
    assert "lat" not in t.out[0].reading.values and "lat" in t.out[2].reading.values
    ts = [e.reading.ts for e in t.out]
    assert ts == sorted(ts) and len(set(ts)) == 4
    assert abs(ts[0] - round(t.now * 1000)) < 10_000  # the data clock
