"""The bus day simulator (firmware_sim/bus/sim.py): GPS the edge's stop detector can follow, consistent ground truth,
adverts shaped like BlueZ's, determinism, and the live driver on a pty and a Unix socket. Short windows only."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections import defaultdict
from pathlib import Path

import pytest

from cityos.simclock import ScaledClock
from edge.sources.bus.ble_ids import is_city_rider, parse_ibeacon, rider_token
from edge.sources.bus.ble_scan import decode_sim_line
from edge.sources.bus.gtfs import load_feed
from edge.sources.bus.stops import StopArrival, StopDeparture, StopDetector
from edge.sources.common.nmea import GpsTracker, NmeaDecoder, RmcFix
from firmware_sim.bus.sim import DEFAULT_SPEC_PATH, Advert, BusDay, BusDaySpec, BusSimLive

CITY = "6f1c0e2a-5d3b-4f7e-9a41-7473757961ff"


@pytest.fixture(scope="module")
def day() -> BusDay:
    return BusDay()


def visits(day: BusDay, trip: str) -> list[dict]:
    return [r for r in day.truth if r["event"] == "stop_visit" and r["trip_id"] == trip]


def addr_to_dev(day: BusDay) -> dict[str, int]:
    out = {}
    for d, dev in enumerate(day._devices):
        if dev.first_addr >= 0 and dev.epochs is not None:
            for e in range(len(dev.epochs)):
                out[day._addr[dev.first_addr + e]] = d
    return out


def test_default_scenario_file_is_the_default_spec() -> None:
    assert BusDaySpec.load(DEFAULT_SPEC_PATH) == BusDaySpec()


def test_gps_gives_every_stop_to_the_detector(day: BusDay) -> None:
    """wd-01 from the pull-in to the hand-over to wd-02: an arrival and a departure at every call, on time."""
    truth = visits(day, "wd-01")
    end = truth[-1]["arrival_ms"] / 1000 + 30
    tracker, det = GpsTracker(), StopDetector(load_feed(day.spec.feed))  # the gateway reads the feed itself
    events = []
    for t, ev in day.stream(day.start_s, end):
        if isinstance(ev, bytes):
            for fix in tracker.feed(ev, t):
                events.extend(det.on_fix(fix))
    got = {(type(e).__name__, e.trip_id, e.stop_sequence): e.ts for e in events}
    assert tracker.counters.bad_checksum == 0 and tracker.counters.rmc > 3000
    for v in truth:
        arr = got[("StopArrival", "wd-01", v["stop_sequence"])]
        dep = got[("StopDeparture", "wd-01", v["stop_sequence"])]
        assert abs(arr - v["arrival_ms"]) <= 2000, v
        # the detector times a departure at the last fix within 30 m: a few seconds after the wheels roll
        if v["departure_ms"] == v["arrival_ms"]:  # the hand-over to the next trip: departure = arrival
            assert abs(dep - v["departure_ms"]) <= 2000, v
        else:
            assert 0 <= dep - v["departure_ms"] <= 10_000, v
    assert got[("StopArrival", "wd-02", 1)] == got[("StopArrival", "wd-01", 20)]
    assert not any(type(e).__name__ == "StopPassed" for e in events)
    assert sum(isinstance(e, StopArrival) for e in events) == 21
    assert sum(isinstance(e, StopDeparture) for e in events) == 20


def test_truth_is_consistent(day: BusDay) -> None:
    recs = day.truth
    occ: dict[str, int] = {}
    after: dict[tuple[str, int], int] = {}
    vis = {}
    for r in recs:
        if r["event"] == "stop_visit":
            prev = occ.get(r["trip_id"], 0)
            assert r["occupancy_after"] == prev + r["boardings"] - r["alightings"] >= 0
            assert r["departure_ms"] >= r["arrival_ms"]
            occ[r["trip_id"]] = r["occupancy_after"]
            after[(r["trip_id"], r["stop_sequence"])] = r["occupancy_after"]
            vis[(r["trip_id"], r["stop_sequence"])] = r
    assert all(v == 0 for v in occ.values())  # everybody off at the terminal
    segs = [r for r in recs if r["event"] == "segment"]
    assert len(segs) == len(vis) - len(occ)
    for s in segs:
        assert s["occupancy"] == after[(s["trip_id"], s["from_sequence"])]
        assert s["to_sequence"] == s["from_sequence"] + 1 and s["arrival_ms"] > s["departure_ms"]
    riders = [r for r in recs if r["event"] == "app_rider"]
    assert riders and len({r["token"] for r in riders}) == len(riders)
    for r in riders:
        b = vis[(r["board_trip_id"], r["board_sequence"])]
        a = vis[(r["alight_trip_id"], r["alight_sequence"])]
        assert b["stop_id"] == r["board_stop"] and a["stop_id"] == r["alight_stop"]
        assert b["arrival_ms"] <= r["board_ms"] <= b["departure_ms"]
        assert a["arrival_ms"] <= r["alight_ms"] <= a["arrival_ms"] + 120_000
        assert r["alight_sequence"] > r["board_sequence"]
    s = day.summary()
    assert s["trips"] == 10 and 8 <= s["mean_occupancy"] <= 15 and 25 <= s["max_occupancy"] <= 40
    roles = {r["role"] for r in recs if r["event"] == "device"}
    assert roles == {"passenger", "pedestrian", "resident", "traffic", "follower"}


def test_adverts(day: BusDay) -> None:
    rider = next(r for r in day.truth if r["event"] == "app_rider")
    lo, hi = rider["board_ms"] / 1000 - 60, rider["alight_ms"] / 1000 + 60
    hi = max(hi, lo + 1800)
    known = {r["address"]: r["role"] for r in day.truth if r["event"] == "device"}
    adverts = [(t, ev) for t, ev in day.stream(lo, hi) if isinstance(ev, Advert)]
    times = [t for t, _ in adverts]
    assert times == sorted(times) and lo <= times[0] and times[-1] < hi
    assert all(ev.address in known for _, ev in adverts)
    tokens = set()
    rssi = defaultdict(list)
    for t, ev in adverts:
        assert ev.address == ev.address.upper() and int(ev.address[:2], 16) >> 6 == 0b01
        rssi[known[ev.address]].append(ev.rssi)
        adv = decode_sim_line(ev.to_json().encode(), t)  # as the gateway's socket backend reads it
        beacon = parse_ibeacon(adv)
        if beacon is not None and is_city_rider(beacon, CITY):
            tokens.add(rider_token(beacon))
        assert (
            ev.address.replace(":", "") not in "".join(v.hex() for v in ev.manufacturer_data.values()).upper()
        )
        assert json.loads(ev.to_json())["address"] == ev.address
    assert rider["token"] in tokens
    mean = {k: sum(v) / len(v) for k, v in rssi.items()}
    assert mean["passenger"] > mean["traffic"] + 5
    assert min(v for vals in rssi.values() for v in vals) >= -95
    # a device on board for 30 min shows several addresses (its payload rotates with them)
    long = max((w for w in day._wins if w.frame == 2), key=lambda w: w.t1 - w.t0)
    assert long.t1 - long.t0 > 1800
    a2d = addr_to_dev(day)
    seen = {ev.address: ev.manufacturer_data for t, ev in day.stream(long.t0, long.t1)
            if isinstance(ev, Advert) and a2d[ev.address] == long.dev}  # fmt: skip
    assert len(seen) > 1
    payloads = [tuple(sorted(m.items())) for m in seen.values()]
    assert len(set(payloads)) == len(payloads) or day._devices[long.dev].kind == "app"


def _adverts_per_device_second(spec: BusDaySpec) -> tuple[float, float]:
    day = BusDay(spec)
    v = visits(day, "wd-03")
    lo, hi = v[0]["departure_ms"] / 1000, v[-1]["arrival_ms"] / 1000
    a2d = addr_to_dev(day)
    inside = [w for w in day._wins if w.frame == 2 and w.t1 > lo and w.t0 < hi]
    got = defaultdict(int)
    spans = {id(w): (w.dev, max(w.t0, lo), min(w.t1, hi)) for w in inside}
    by_dev = defaultdict(list)
    for d, a, b in spans.values():
        by_dev[d].append((a, b))
    for t, ev in day.stream(lo, hi):
        if isinstance(ev, Advert):
            d = a2d[ev.address]
            if any(a <= t < b for a, b in by_dev.get(d, ())):
                got[d] += 1
    sent = sum((b - a) / day._devices[d].interval for d, a, b in spans.values())
    occ = sum(r["occupancy"] for r in day.truth if r["event"] == "segment" and r["trip_id"] == "wd-03") / 19
    return sum(got.values()) / sent, occ


def test_a_crowded_bus_hears_fewer_adverts_per_device() -> None:
    quiet = dict(pedestrians_per_stop_h=0, passersby_per_stop_h=0, residents_per_km=0, traffic_per_min=0,
                 followers_per_h=0)  # fmt: skip
    sparse, occ_sparse = _adverts_per_device_second(BusDaySpec(boardings_per_stop=0.15, **quiet))
    crowded, occ_crowded = _adverts_per_device_second(BusDaySpec(boardings_per_stop=1.5, **quiet))
    assert occ_crowded > 4 * occ_sparse
    assert 0.55 < sparse <= 0.76  # ≈ 1 - loss when nearly empty
    assert crowded < sparse - 0.08


def _digest(day: BusDay, lo: float, hi: float) -> list[tuple]:
    return [
        (t, ev if isinstance(ev, bytes) else (ev.address, ev.rssi, ev.manufacturer_data))
        for t, ev in day.stream(lo, hi)
    ]


def test_same_seed_same_stream_and_slices_agree(day: BusDay) -> None:
    lo = day.start_s + 900
    a = _digest(day, lo, lo + 600)
    b = _digest(BusDay(BusDaySpec()), lo, lo + 600)
    assert a == b and len(a) > 600
    part = _digest(day, lo + 200, lo + 400)
    assert part == [x for x in a if lo + 200 <= x[0] < lo + 400]
    c = _digest(BusDay(BusDaySpec(seed=1)), lo, lo + 600)
    assert c != a


def test_gps_dropout_and_ble_outage() -> None:
    spec = BusDaySpec(gps_dropouts=[("07:10", 60)], ble_outages=[("07:20", 120)])
    day = BusDay(spec)
    t_gps, t_ble = day.day0 + 7 * 3600 + 600, day.day0 + 7 * 3600 + 1200
    dec = NmeaDecoder()
    out = [(t, dec.feed(ev)) for t, ev in day.stream(t_gps - 5, t_ble + 200) if isinstance(ev, bytes)]
    for t, evs in out:
        rmc = next(e for e in evs if isinstance(e, RmcFix))
        assert rmc.valid == (not t_gps <= t < t_gps + 60)
    adv = [t for t, ev in day.stream(t_ble - 60, t_ble + 180) if isinstance(ev, Advert)]
    assert adv and not any(t_ble <= t < t_ble + 120 for t in adv)
    silent = BusDay(BusDaySpec(gps_dropouts=[("07:10", 60)], gps_dropout_silent=True))
    assert silent.gps_sentences(int(t_gps + 10)) == b""


def _read_lines(sock: socket.socket, timeout: float) -> tuple[list[str], bool]:
    """Lines until ``timeout``; and whether the server closed the connection."""
    buf, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], 0.05)
        if r:
            chunk = sock.recv(65536)
            if not chunk:
                return buf.decode().splitlines(), True
            buf += chunk
    return buf.decode().splitlines(), False


def test_live_driver(tmp_path: Path, day: BusDay) -> None:
    start = visits(day, "wd-01")[0]["departure_ms"] / 1000 - 30
    clock = ScaledClock(sim_start=start, real_anchor=time.time(), rate=120)
    sock_path = tmp_path / "ble.sock"
    with BusSimLive(day, clock=clock, gps_link=tmp_path / "ttyGPS0", ble_socket=sock_path) as live:
        fd = os.open(tmp_path / "ttyGPS0", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(sock_path))
            lines, closed = _read_lines(client, 1.5)
            assert not closed and len(lines) > 20
            for line in lines:
                obj = json.loads(line)
                assert set(obj) == {"address", "address_type", "rssi", "manufacturer_data", "service_uuids"}
            time.sleep(0.2)
            raw = b""
            with __import__("contextlib").suppress(BlockingIOError):
                raw = os.read(fd, 1 << 16)
            dec = NmeaDecoder()
            fixes = [e for e in dec.feed(raw) if isinstance(e, RmcFix)]
            assert fixes and dec.counters.bad_checksum == 0 and all(f.valid for f in fixes)

            live.ble_outage(120)  # simulated seconds: 1 s real at 120x
            _, closed = _read_lines(client, 0.3)
            assert closed
            client.close()
            refused = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with pytest.raises(OSError):  # no adapter during the outage: nothing to connect to
                refused.connect(str(sock_path))
            refused.close()
            again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            deadline = time.monotonic() + 5
            while True:  # the adapter comes back after the outage's 1 s (real)
                try:
                    again.connect(str(sock_path))
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the simulated adapter never came back"
                    time.sleep(0.05)
            lines, closed = _read_lines(again, 1.0)
            assert not closed and lines
            again.close()
        finally:
            os.close(fd)
    assert live.counters["gps_seconds"] > 100 and live.counters["outages"] == 1
