"""How fast a gateway's backlog drains after an outage, against what the broker link itself can carry.

Ceiling: the same telemetry messages (200 readings each), pre-built, published by a bare paho client at QoS 1
with the same in-flight window as the uplink, timed until the last PUBACK. Drain: an outbox holding the same
readings, emptied by the real ``edge.uplink.Uplink`` (read rows, build the message, publish, delete the rows on
PUBACK), timed until the outbox is empty. A durable subscriber session exists (so PUBACKs are not 0x10) but is
offline: the broker queues, nothing is consumed, and both runs pay the same broker cost.

    python benchmarks/edge_drain.py [--readings 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citylab.stack import Stack, StackInfo, mqtt_client, mqtt_settings
from cityos import wire
from edge.config import MqttSection
from edge.outbox import Outbox
from edge.uplink import Uplink

PER_MSG = 200
WINDOW = 16


def _readings(n: int) -> list[wire.Reading]:
    t0 = int(time.time() * 1000) - 3_600_000
    return [
        wire.Reading(
            device_id=f"forest-{i % 6:02d}", kind="forest_station", ts=t0 + i,
            values={"soil_moisture_pct": 31.4, "soil_moisture_deep_pct": 28.1, "rain_mm": 0.2, "rain_tips": float(i),
                    "tilt_x_deg": 0.12, "tilt_y_deg": -0.03, "battery_v": 12.61, "status": 0.0},
            units={"soil_moisture_pct": "%VWC", "rain_mm": "mm"},
        )
        for i in range(n)
    ]


def _client(info: StackInfo, client_id: str = "") -> mqtt.Client:
    return mqtt_client(info, "dev.tools", client_id=client_id or None)


def _durable_session(info: StackInfo, client_id: str, expiry: int) -> None:
    """Create (expiry > 0) or remove (expiry 0) an offline durable subscriber of all telemetry."""
    c = _client(info, client_id)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.on_connect = lambda cl, *a: cl.subscribe(wire.TELEMETRY_FILTER, qos=1) if expiry else done.set()
    c.connect(info.mqtt_host, info.mqtt_port, clean_start=not expiry, properties=props)
    c.loop_start()
    done.wait(10)
    c.disconnect()
    c.loop_stop()


def ceiling(info: StackInfo, gw: str, payloads: list[bytes]) -> float:
    c = _client(info)
    c.max_inflight_messages_set(WINDOW)
    acked = threading.Semaphore(0)
    c.on_publish = lambda *a: acked.release()
    c.connect(info.mqtt_host, info.mqtt_port)
    c.loop_start()
    topic = wire.telemetry_topic(gw)
    t = time.perf_counter()
    for p in payloads:
        c.publish(topic, p, qos=1)
    for _ in payloads:
        acked.acquire(timeout=60)
    dt = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return len(payloads) * PER_MSG / dt


def drain(info: StackInfo, gw: str, readings: list[wire.Reading], tmp: Path) -> float:
    ob = Outbox(tmp / f"{gw}.db", synchronous="FULL")
    for r in readings:
        ob.append(r)
    cfg = MqttSection(
        **mqtt_settings(info, gw),
        max_inflight=WINDOW, readings_per_message=PER_MSG, status_interval_s=3600,
    )
    up = Uplink(gw, ob, cfg, boot_id=uuid.uuid4().hex, backfill_after_s=120, status_fn=dict)
    stop = threading.Event()
    th = threading.Thread(target=up.run, args=(stop,), daemon=True)
    t = time.perf_counter()
    th.start()
    while ob.depth and time.perf_counter() - t < 300:
        time.sleep(0.005)
    dt = time.perf_counter() - t
    stop.set()
    th.join(10)
    assert ob.depth == 0 and up.stats.acked_readings == len(readings)
    ob.close()
    return len(readings) / dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    readings = _readings(args.readings)
    payloads = []
    for i in range(0, len(readings), PER_MSG):
        b = wire.TelemetryBatch(gateway_id="gw-bench", boot_id="b" * 16, seq=i, sent_at=0,
                                readings=readings[i : i + PER_MSG])
        payloads.append(wire.encode_batch(b))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        stack = Stack(tmp / "stack")
        info = stack.up()
        sub = f"bench-sub-{uuid.uuid4().hex[:6]}"
        runs: dict[str, list[float]] = {"ceiling": [], "drain": []}
        try:
            for i in range(args.repeat):
                _durable_session(info, sub, 3600)
                runs["ceiling"].append(ceiling(info, f"gw-c{i}", payloads))
                runs["drain"].append(drain(info, f"gw-d{i}", readings, tmp))
                _durable_session(info, sub, 0)  # drop what the broker queued
                print(f"run {i + 1}: ceiling {runs['ceiling'][-1]:,.0f} readings/s, "
                      f"outbox drain {runs['drain'][-1]:,.0f} readings/s", flush=True)
        finally:
            stack.down()
    med = {k: statistics.median(v) for k, v in runs.items()}
    print()
    print("| measurement | runs (readings/s) | median |")
    print("|---|---|---|")
    print(f"| ceiling: bare paho, QoS 1, window {WINDOW} | {', '.join(f'{x:,.0f}' for x in runs['ceiling'])} "
          f"| {med['ceiling']:,.0f} |")
    print(f"| outbox → uplink drain (SQLite read, build, publish, delete on PUBACK) | "
          f"{', '.join(f'{x:,.0f}' for x in runs['drain'])} | {med['drain']:,.0f} |")
    print(f"| **drain / ceiling** | | **{med['drain'] / med['ceiling']:.0%}** |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": med}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
