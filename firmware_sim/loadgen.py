"""City-scale load: wire-contract telemetry for thousands of virtual gateways, without thousands of ptys.

A real Tsuyama deployment is thousands of gateways each publishing a small message every minute or so; what loads
the cloud side is the message and reading rate, not the device protocols behind them (those are tested with the
real simulators and agents). So each virtual gateway here publishes, at its own phase and real reporting rate,
exactly what an agent of its family sends: its device readings plus its ``gateway_health`` and ``source_health``
readings, as a :class:`cityos.wire.TelemetryBatch` on its own telemetry topic, QoS 1.

Families and rates (per virtual gateway, from the sources' defaults):

* household meter gateway (one meter, B-route): ``smart_meter`` every ``meter_interval_s`` (60 s) with power and
  cumulative energy, plus the fixed-time cumulative at :00 and :30;
* forest gateway (``stations_per_gateway`` stations on one RS-485 bus): a ``forest_station`` reading per station
  every ``station_interval_s`` (60 s, a field station's sample interval);
* truck gateway: a ``truck_position`` every ``truck_interval_s`` (30 s) and a ``truck_collection`` every other
  time (a pickup roughly every minute on a route);
* every gateway: health every ``health_interval_s`` (60 s), in the same message when it falls due.

Timestamps are the real clock (ms), distinct per device, so every point is new and the ingest's output can be
counted exactly: the generator reports readings published and acknowledged per measurement.

The generator shares a handful of MQTT connections (``connections``): the broker and ingest see the same topics,
payloads and rates as from separate gateways; only the TCP connection count differs (Mosquitto handles thousands
of idle connections cheaply, which is not what this measures).
"""

from __future__ import annotations

import heapq
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ConfigDict, Field

from cityos import wire
from cityos.credentials import MqttLogin


class LoadProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    meters: int = Field(default=5000, ge=0)
    stations: int = Field(default=200, ge=0)
    trucks: int = Field(default=30, ge=0)
    stations_per_gateway: int = Field(default=4, ge=1)
    meter_interval_s: float = Field(default=60.0, gt=0)
    station_interval_s: float = Field(default=60.0, gt=0)
    truck_interval_s: float = Field(default=30.0, gt=0)
    health_interval_s: float = Field(default=60.0, gt=0)
    #: Multiplies every rate (2 = twice the city's real reporting rate): for finding the headroom.
    speed: float = Field(default=1.0, gt=0)
    connections: int = Field(default=4, ge=1, le=64)
    seed: int = 1
    prefix: str = Field(default="lg", pattern=r"^[a-z][a-z0-9]{0,7}$")


@dataclass
class _Gateway:
    gateway_id: str
    family: str
    devices: list[str]
    interval_s: float
    boot_id: str
    seq: int = 0
    ticks: int = 0
    next_health_ms: int = 0
    state: dict[str, float] = field(default_factory=dict)


def build_gateways(p: LoadProfile) -> list[_Gateway]:
    gws: list[_Gateway] = []
    for i in range(p.meters):
        gws.append(_Gateway(f"{p.prefix}-m{i:05d}", "meter", [f"hh-{i:05d}"], p.meter_interval_s, uuid.uuid4().hex))
    n_forest = -(-p.stations // p.stations_per_gateway) if p.stations else 0
    for g in range(n_forest):
        devs = [
            f"forest-{g:03d}-{s:02d}"
            for s in range(p.stations_per_gateway)
            if g * p.stations_per_gateway + s < p.stations
        ]
        gws.append(_Gateway(f"{p.prefix}-f{g:03d}", "forest", devs, p.station_interval_s, uuid.uuid4().hex))
    for t in range(p.trucks):
        gws.append(_Gateway(f"{p.prefix}-t{t:02d}", "truck", [f"truck-{t:02d}"], p.truck_interval_s, uuid.uuid4().hex))
    return gws


def _readings(gw: _Gateway, now_ms: int, rng: random.Random, health_ms: float) -> list[dict[str, Any]]:
    """One tick's readings, shaped like the real sources' (field names and counts)."""
    out: list[dict[str, Any]] = []
    gw.ticks += 1
    if gw.family == "meter":
        kwh = gw.state.get("kwh", rng.uniform(1000, 9000)) + rng.uniform(0.001, 0.05)
        gw.state["kwh"] = kwh
        out.append(
            {"device_id": gw.devices[0], "kind": "smart_meter", "ts": now_ms,
             "values": {"power_w": float(rng.randint(80, 3500)), "energy_kwh": round(kwh, 3)}}
        )
        slot = now_ms - now_ms % 1_800_000
        if gw.state.get("slot", slot) != slot:  # the :00/:30 fixed-time value, once per half hour
            out.append(
                {"device_id": gw.devices[0], "kind": "smart_meter", "ts": slot + 1,
                 "values": {"energy_fixed_kwh": round(kwh, 3)}}
            )
        gw.state["slot"] = slot
    elif gw.family == "forest":
        for j, dev in enumerate(gw.devices):
            out.append(
                {"device_id": dev, "kind": "forest_station", "ts": now_ms + j,
                 "values": {
                     "soil_moisture_pct": round(rng.uniform(20, 45), 1),
                     "soil_moisture_deep_pct": round(rng.uniform(20, 45), 1),
                     "rain_tips": float(gw.ticks), "rain_mm": 0.2, "rain_intensity_mm_h": 1.2,
                     "rain_cumulative_mm": 12.4, "tilt_x_deg": 0.12, "tilt_y_deg": -0.03,
                     "tilt_rate_x_deg_h": 0.0, "tilt_rate_y_deg_h": 0.0, "battery_v": 12.6, "status": 0.0,
                 }}
            )
    else:
        dev = gw.devices[0]
        out.append(
            {"device_id": dev, "kind": "truck_position", "ts": now_ms,
             "values": {"lat": 35.06 + rng.uniform(-0.02, 0.02), "lon": 134.0 + rng.uniform(-0.03, 0.03),
                        "speed_kmh": round(rng.uniform(0, 40), 1), "gross_kg": float(rng.randint(0, 2000))}}
        )
        if gw.ticks % 2 == 0:
            out.append(
                {"device_id": dev, "kind": "truck_collection", "ts": now_ms + 1,
                 "tags": {"district": f"d{rng.randint(1, 8)}"},
                 "values": {"kg": float(rng.randint(1, 30) * 10), "lat": 35.06, "lon": 134.0, "trip_no": 1.0}}
            )
    if now_ms >= gw.next_health_ms:
        gw.next_health_ms = now_ms + int(health_ms)
        out.append(
            {"device_id": "gateway", "kind": "gateway_health", "ts": now_ms + 10,
             "values": {k: round(rng.uniform(0, 50), 2) for k in (
                 "agent_cpu_pct", "cpu_pct", "load1", "agent_rss_mb", "mem_used_pct", "mem_available_mb",
                 "agent_uptime_s", "disk_free_mb", "disk_used_pct", "cpu_temp_c", "backlog_depth",
                 "backlog_age_s", "uplink_published_readings", "uplink_acked_readings", "uplink_connects",
                 "uplink_disconnects", "gateway_clock_synced", "source_restarts")}}
        )
        out.append(
            {"device_id": "src0", "kind": "source_health", "ts": now_ms + 10, "tags": {"family": gw.family},
             "values": {"readings": float(gw.ticks), "timeouts": 0.0, "crc_errors": 0.0, "reconnects": 0.0}}
        )
    return out


@dataclass
class LoadResult:
    duration_s: float
    messages: int
    readings: int
    acked_messages: int
    by_measurement: dict[str, int]
    max_lag_s: float
    gateways: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CityLoad:
    """Publishes the profile's traffic until stopped; counts what the broker acknowledged."""

    def __init__(self, profile: LoadProfile, login: MqttLogin):
        """``login``: the broker and an identity allowed to publish for every simulated gateway (the developer's
        stack's ``dev.loadgen``: one connection speaks for thousands of gateways, which no field identity may)."""
        self.p = profile
        self.gateways = build_gateways(profile)
        self.rng = random.Random(profile.seed)
        self._clients: list[mqtt.Client] = []
        self._acked = 0
        self._acked_lock = threading.Lock()
        self.login = login

    def _on_publish(self, *_a: Any) -> None:
        with self._acked_lock:
            self._acked += 1

    def connect(self) -> None:
        for i in range(self.p.connections):
            c = mqtt.Client(
                callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"{self.p.prefix}-loadgen-{i}-{uuid.uuid4().hex[:6]}",
                protocol=mqtt.MQTTv5,
            )
            self.login.configure(c)
            c.max_inflight_messages_set(1000)
            c.max_queued_messages_set(0)
            c.on_publish = self._on_publish
            c.connect(self.login.host, self.login.port, keepalive=30)
            c.loop_start()
            self._clients.append(c)

    def close(self) -> None:
        for c in self._clients:
            c.disconnect()
            c.loop_stop()

    def run(self, duration_s: float, stop: threading.Event | None = None) -> LoadResult:
        """Publish for ``duration_s`` (real seconds), then wait for outstanding PUBACKs (up to 30 s)."""
        stop = stop or threading.Event()
        speed = self.p.speed
        health_ms = self.p.health_interval_s * 1000 / speed
        start = time.time()
        heap: list[tuple[float, int]] = []
        for i, gw in enumerate(self.gateways):
            period = gw.interval_s / speed
            heapq.heappush(heap, (start + self.rng.uniform(0, period), i))
        by_meas: Counter[str] = Counter()
        messages = readings = 0
        max_lag = 0.0
        end = start + duration_s
        while heap and not stop.is_set():
            due, i = heap[0]
            if due >= end:
                break
            now = time.time()
            if due > now:
                stop.wait(min(due - now, 0.5))
                continue
            heapq.heapreplace(heap, (due + self.gateways[i].interval_s / speed, i))
            max_lag = max(max_lag, now - due)
            gw = self.gateways[i]
            rs = _readings(gw, int(now * 1000), self.rng, health_ms)
            gw.seq += 1
            payload = json.dumps(
                {"v": 1, "gateway_id": gw.gateway_id, "boot_id": gw.boot_id, "seq": gw.seq,
                 "sent_at": int(now * 1000), "readings": rs},
                separators=(",", ":"),
            ).encode()
            self._clients[i % len(self._clients)].publish(wire.telemetry_topic(gw.gateway_id), payload, qos=1)
            messages += 1
            readings += len(rs)
            for r in rs:
                by_meas[wire.measurement_for(r["kind"])] += 1
        elapsed = time.time() - start
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self._acked_lock:
                if self._acked >= messages:
                    break
            time.sleep(0.05)
        return LoadResult(elapsed, messages, readings, self._acked, dict(by_meas), round(max_lag, 3),
                          len(self.gateways))


def validate_sample(profile: LoadProfile) -> None:
    """Every family's message passes the real contract (what the ingest runs), so the load is honest."""
    rng = random.Random(0)
    now = int(time.time() * 1000)
    for gw in {g.family: g for g in build_gateways(profile)}.values():
        probe = _Gateway(gw.gateway_id, gw.family, gw.devices, gw.interval_s, uuid.uuid4().hex, ticks=1)
        rs = _readings(probe, now, rng, 60_000)
        payload = json.dumps(
            {"v": 1, "gateway_id": gw.gateway_id, "boot_id": probe.boot_id, "seq": 1, "sent_at": now,
             "readings": rs}
        ).encode()
        wire.decode_batch(wire.telemetry_topic(gw.gateway_id), payload, now_ms=now)
