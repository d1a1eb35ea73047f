"""The ridership estimator on scripted rides (sans-I/O): the core's own adverts, explicit stop events.

Each scenario is a short trip A → B → C → D (stop_sequence 1..4, D the block's last call) with devices that
advertise once a second while present; expectations are written from who is where, not from the code.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

import pytest

from edge.sources.bus.ble_ids import APPLE_COMPANY_ID, Advert, KeyedHasher
from edge.sources.bus.ridership import (
    RidershipConfig,
    RidershipEstimator,
    RidershipResult,
    RiderTrip,
    SegmentCount,
    VisitCount,
)
from edge.sources.bus.stops import StopArrival, StopDeparture, StopEvent, StopPassed

T0 = 1_775_000_000.0  # a weekday morning, epoch s
CITY = uuid.UUID("6f1c0e2a-5d3b-4f7e-9a41-7473757961ff")
TRIP = "t1"
STOPS = {1: "A", 2: "B", 3: "C", 4: "D"}
# arrival, departure (s after T0) of each call
TIMES = {1: (0, 30), 2: (150, 180), 3: (300, 330), 4: (450, 480)}


@dataclass
class Dev:
    """A device present (advertising once a second) from ``start`` to ``end``; ``rotations`` are the times its
    random address changes."""

    name: str
    start: float
    end: float
    rssi: int = -70
    rotations: tuple[float, ...] = ()
    token: int | None = None  # an app rider's iBeacon token
    mdata: dict[int, bytes] | None = None  # manufacturer data (default: a phone's Microsoft CDP)

    def address(self, t: float) -> str:
        k = sum(1 for r in self.rotations if t >= r)
        raw = (hash((self.name, k)) & 0x3FFF_FFFF_FFFF) | 0x4000_0000_0000  # 0b01: resolvable private
        return ":".join(f"{b:02X}" for b in raw.to_bytes(6, "big"))


def ibeacon(token: int) -> dict[int, bytes]:
    return {
        APPLE_COMPANY_ID: struct.pack(">BB16sHHb", 0x02, 0x15, CITY.bytes, token >> 16, token & 0xFFFF, -59)
    }


def events() -> list[tuple[float, StopEvent]]:
    out: list[tuple[float, StopEvent]] = []
    for seq, (arr, dep) in TIMES.items():
        out.append((arr, StopArrival(STOPS[seq], round((T0 + arr) * 1000), TRIP, seq)))
        out.append((dep, StopDeparture(STOPS[seq], round((T0 + dep) * 1000), float(dep - arr), TRIP, seq)))
    return out


def play(
    devs: list[Dev],
    cfg: RidershipConfig | None = None,
    extra: list[tuple[float, StopEvent]] = (),
    *,
    evs: list[tuple[float, StopEvent]] | None = None,
    calls: dict[str, tuple[int, int]] | None = None,
):
    """Devices and stop events (default: the A → D trip, plus ``extra``) in time order through an estimator."""
    cfg = cfg or RidershipConfig(city_uuid=CITY)
    est = RidershipEstimator(cfg, KeyedHasher(T0), (calls or {TRIP: (1, 4)}).get)
    timeline: list[tuple[float, int, object]] = [(t, 0, ev) for t, ev in [*(evs or events()), *extra]]
    for d in devs:
        t = d.start
        while t <= d.end:
            mdata = ibeacon(d.token) if d.token is not None else d.mdata or {0x0006: bytes([1, 9, 32, 2])}
            adv = Advert(address=d.address(t), rssi=d.rssi, rx_s=T0 + t, manufacturer_data=mdata)
            timeline.append((t, 1, adv))
            t += 1.0
    timeline.sort(key=lambda x: (x[0], x[1]))
    results: list[RidershipResult] = []
    for _t, kind, item in timeline:
        if kind == 0:
            results += est.on_stop_event(item)  # type: ignore[arg-type]
        else:
            est.add(est.observe(item))  # type: ignore[arg-type]
    return est, results


def visits(results: list[RidershipResult]) -> dict[int, VisitCount]:
    return {r.stop_sequence: r for r in results if isinstance(r, VisitCount)}


def segments(results: list[RidershipResult]) -> dict[int, int]:
    return {r.from_sequence: r.devices for r in results if isinstance(r, SegmentCount)}


RIDE = [
    Dev("p1", -20, 310),  # A → C
    Dev("p2", -40, 460, rotations=(240, 390)),  # A → D, two address changes mid-segment
    Dev("p3", 120, 470),  # B → D
    Dev("r1", 130, 455, token=0x1234_5678),  # app rider B → D
    Dev("ped-b", 140, 190, rssi=-80),  # waits at B, does not board
    Dev("car", 90, 96, rssi=-85),  # oncoming traffic
    Dev("shop-c", 280, 340, rssi=-84),  # a shop beside C
]


def test_boardings_alightings_and_occupancy_per_visit() -> None:
    est, results = play(RIDE)
    v = visits(results)
    assert {k: (x.boarded, x.alighted, x.devices) for k, x in v.items()} == {
        1: (2, 0, 2),
        2: (2, 0, 4),
        3: (0, 1, 3),
        4: (0, 3, 0),  # end of the block: everyone alights
    }
    assert all(x.complete for x in v.values())
    assert segments(results) == {1: 2, 2: 4, 3: 3}
    assert v[2].arrival_ms == round((T0 + 150) * 1000) and v[2].dwell_s == 30
    assert est.counters.stitched == 2  # p2's rotations, nothing else


def test_app_rider_gives_an_exact_origin_destination_pair() -> None:
    _, results = play(RIDE)
    (od,) = [r for r in results if isinstance(r, RiderTrip)]
    assert (od.board_stop, od.board_sequence, od.alight_stop, od.alight_sequence) == ("B", 2, "D", 4)
    assert od.board_ms == round((T0 + 150) * 1000) and od.alight_ms == round((T0 + 450) * 1000)
    assert len(od.rider) == 16 and int(od.rider, 16) >= 0


def test_without_stitching_a_rotation_splits_a_passenger() -> None:
    """The reason stitching exists: with a zero gap allowed, p2's address changes look like alight + board."""
    _, results = play(RIDE, RidershipConfig(city_uuid=CITY, stitch_gap_s=0))
    assert segments(results)[2] == 3  # p2 missing on B → C
    _, stitched = play(RIDE)
    assert segments(stitched)[2] == 4


def test_a_silent_then_loud_neighbour_is_not_stitched_across_a_big_rssi_step() -> None:
    devs = [
        Dev("a", -10, 200, rssi=-60),
        Dev("b", 201, 470, rssi=-84),
    ]  # b appears 1 s after a goes, 24 dB weaker
    est, _ = play(devs)
    assert est.counters.stitched == 0


def test_pedestrians_and_traffic_are_not_passengers() -> None:
    _, results = play([Dev("ped-b", 140, 190, rssi=-72), Dev("car", 90, 96, rssi=-70)])
    assert set(segments(results).values()) == {0}
    assert all(x.boarded == 0 for x in visits(results).values())


def test_weak_devices_inside_the_range_do_not_count() -> None:
    _, results = play([Dev("p1", -20, 470, rssi=-93)])
    assert set(segments(results).values()) == {0}


def test_a_bluetooth_outage_makes_the_visits_around_it_incomplete() -> None:
    cfg = RidershipConfig(city_uuid=CITY)
    est = RidershipEstimator(cfg, KeyedHasher(T0), lambda trip: (1, 4))
    out: list[RidershipResult] = []
    for _, ev in events():
        out += est.on_stop_event(ev)
        if isinstance(ev, StopDeparture) and ev.stop_sequence == 2:
            est.ble_down()
        if isinstance(ev, StopArrival) and ev.stop_sequence == 3:
            est.ble_up()
    v = visits(out)
    assert v[2].devices is None and not v[2].complete  # the segment B → C went unheard
    assert not v[3].complete  # who boarded at C is unknown: who was aboard before was not observed
    assert est.counters.segments_unobserved == 1


def test_a_skipped_stop_is_not_a_segment() -> None:
    """A GPS dropout hid stop B: A → C is two segments in one, so neither A's departures nor C's boardings are
    known; D's are again."""
    evs = [(t, ev) for t, ev in events() if getattr(ev, "stop_sequence", 0) != 2]
    cfg = RidershipConfig(city_uuid=CITY)
    est = RidershipEstimator(cfg, KeyedHasher(T0), lambda trip: (1, 4))
    out: list[RidershipResult] = []
    for _, ev in evs:
        out += est.on_stop_event(ev)
    v = visits(out)
    assert v[1].devices is None and not v[3].complete and v[4].complete


def test_passed_stop_continues_the_segment() -> None:
    extra = [(240.0, StopPassed("X", round((T0 + 240) * 1000), TRIP, 3))]
    _, results = play(RIDE, extra=extra)
    assert segments(results) == {1: 2, 2: 4, 3: 3}


def test_terminal_handover_splits_alightings_and_boardings_between_trips() -> None:
    """On a loop the detector hands over at the terminal: alightings go to the ending trip's last call, the
    boardings to the next trip's first call, and a passenger staying aboard is neither."""
    ms = lambda s: round((T0 + s) * 1000)  # noqa: E731
    evs: list[tuple[float, StopEvent]] = [
        (0, StopArrival("S", ms(0), "t1", 1)),
        (20, StopDeparture("S", ms(20), 20.0, "t1", 1)),
        (200, StopArrival("S", ms(200), "t1", 2)),
        (200, StopDeparture("S", ms(200), 0.0, "t1", 2)),
        (200, StopArrival("S", ms(200), "t2", 1)),
        (260, StopDeparture("S", ms(260), 60.0, "t2", 1)),
        (400, StopArrival("S", ms(400), "t2", 2)),
    ]
    devs = [Dev("leaves", -10, 205), Dev("stays", -10, 420), Dev("joins", 230, 420)]
    _, out = play(devs, evs=evs, calls={"t1": (1, 2), "t2": (1, 2)})
    v = {(r.trip_id, r.stop_sequence): r for r in out if isinstance(r, VisitCount)}
    assert (v["t1", 2].boarded, v["t1", 2].alighted, v["t1", 2].devices) == (0, 1, 1)
    assert (v["t2", 1].boarded, v["t2", 1].alighted, v["t2", 1].devices) == (1, 0, 2)


def test_the_salt_rotation_forgets_every_track() -> None:
    est, _ = play(RIDE)
    assert est.stats()["addresses"] > 0
    est.tick(T0 + 24 * 3600)
    assert est.stats()["addresses"] == 0 and est.counters.day_rotations == 1


def test_passengers_from_devices_with_an_interval() -> None:
    cfg = RidershipConfig(devices_per_passenger=1.25, devices_per_passenger_sd=0.5)
    est, lo, hi = cfg.passengers(25)
    assert est == pytest.approx(20)
    assert lo < est < hi and hi - est == pytest.approx(est - lo)
    assert cfg.passengers(0) == (0.0, 0.0, pytest.approx(1.6449 * 0.5 / 1.25))


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no device could ever count"):
        RidershipConfig(rssi_min_dbm=-80, in_vehicle_rssi_dbm=-90)


def test_an_app_rider_alighting_at_the_terminal_survives_a_long_layover() -> None:
    """At a loop's terminal the alighting is decided when the next trip's first segment ends, which can be more
    than ``prune_s`` after the rider was last heard: the pair must still come out."""
    ms = lambda s: round((T0 + s) * 1000)  # noqa: E731
    evs: list[tuple[float, StopEvent]] = [
        (0, StopArrival("S", ms(0), "t1", 1)),
        (20, StopDeparture("S", ms(20), 20.0, "t1", 1)),
        (200, StopArrival("T", ms(200), "t1", 2)),
        (200, StopDeparture("T", ms(200), 0.0, "t1", 2)),
        (200, StopArrival("T", ms(200), "t2", 1)),
        (1400, StopDeparture("T", ms(1400), 1200.0, "t2", 1)),  # a 20-minute layover
        (1500, StopArrival("U", ms(1500), "t2", 2)),
    ]
    # the rider, and somebody else who keeps the estimator ticking through the layover
    devs = [Dev("r", -10, 210, token=0xCAFE_0001), Dev("other", 220, 1500, rssi=-75)]
    cfg = RidershipConfig(city_uuid=CITY, prune_s=600)
    _, out = play(devs, cfg, evs=evs, calls={"t1": (1, 2), "t2": (1, 2)})
    (od,) = [r for r in out if isinstance(r, RiderTrip)]
    assert (od.board_trip_id, od.board_sequence, od.alight_trip_id, od.alight_sequence) == ("t1", 1, "t1", 2)


def test_a_watch_goes_with_its_phone_and_is_not_counted() -> None:
    """A Garmin watch (company id 0x0087) beside its wearer's phone: one passenger, one counted device, and the
    watch reported apart; a watch's new address is never stitched to a phone's track."""
    garmin = {0x0087: bytes(8)}
    devs = [Dev("phone", -20, 470, rotations=(240,)), Dev("watch", -20, 470, mdata=garmin, rotations=(241,))]
    est, results = play(devs)
    assert segments(results) == {1: 1, 2: 1, 3: 1}
    assert {r.wearables for r in results if isinstance(r, SegmentCount)} == {1}
    assert est.counters.stitched == 2  # each with its own kind
