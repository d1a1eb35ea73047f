"""The uplink against a real Mosquitto: delete only after PUBACK, never on a refusal, live ahead of backlog."""

from __future__ import annotations

import json
import threading
import time
import uuid

import msgspec
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citylab.stack import mqtt_client, mqtt_settings
from cityos import wire
from edge.config import MqttSection
from edge.outbox import Outbox
from edge.uplink import Uplink

pytestmark = pytest.mark.timeout(120)


class Collector:
    """A durable QoS 1 subscriber, like the ingest: collects every reading it receives."""

    def __init__(self, info, gateway_id: str) -> None:
        self.readings: list[dict] = []
        self.messages = 0
        self.lock = threading.Lock()
        self.client = mqtt_client(info, "dev.tools", client_id=f"collector-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.topic = wire.telemetry_topic(gateway_id)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(info.mqtt_host, info.mqtt_port, clean_start=False, properties=props)
        self.client.loop_start()
        self.client.subscribe(self.topic, qos=1)
        assert self.subscribed.wait(10)

    def _on_message(self, _c, _u, msg) -> None:
        d = json.loads(msg.payload)
        with self.lock:
            self.messages += 1
            self.readings.extend(d["readings"])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _mqtt_cfg(info, gw: str, **over) -> MqttSection:
    """The uplink as gateway ``gw``: its own certificate (the broker lets it publish under its own id only)."""
    return MqttSection(
        **mqtt_settings(info, gw),
        backoff_min_s=0.2,
        backoff_max_s=1.0,
        status_interval_s=1.0,
        **over,
    )


def _fill(ob: Outbox, n: int, start: int = 0, device: str = "st-1", ts0: int | None = None) -> None:
    ts0 = ts0 if ts0 is not None else int(time.time() * 1000) - 10_000_000
    for i in range(start, start + n):
        ob.append(wire.Reading(device_id=device, kind="forest_station", ts=ts0 + i, values={"i": float(i)}))


def _wait(cond, timeout: float = 30) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _start(uplink: Uplink) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    t = threading.Thread(target=uplink.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


def test_backlog_is_delivered_once_and_deleted_after_puback(stack, tmp_path):
    info = stack.info()
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    sub = Collector(info, gw)
    ob = Outbox(tmp_path / "o.db", synchronous="NORMAL")
    _fill(ob, 5000)
    up = Uplink(gw, ob, _mqtt_cfg(info, gw), boot_id=uuid.uuid4().hex, backfill_after_s=60, status_fn=dict)
    stop, t = _start(up)
    try:
        assert _wait(lambda: ob.depth == 0 and len(sub.readings) >= 5000)
        time.sleep(0.5)
        assert sorted(r["values"]["i"] for r in sub.readings) == [float(i) for i in range(5000)]
        assert all(r["backfill"] for r in sub.readings)  # they were hours old
        assert up.stats.acked_readings == 5000
    finally:
        stop.set()
        t.join(10)
        sub.close()


def test_no_matching_subscriber_keeps_the_readings(stack, tmp_path):
    """Mosquitto answers PUBACK 0x10 when nobody will ever get the message: that is not delivery."""
    info = stack.info()
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    ob = Outbox(tmp_path / "o.db", synchronous="NORMAL")
    _fill(ob, 300)
    up = Uplink(gw, ob, _mqtt_cfg(info, gw), boot_id=uuid.uuid4().hex, backfill_after_s=60, status_fn=dict)
    stop, t = _start(up)
    try:
        assert _wait(lambda: up.stats.no_subscribers >= 1, 15)
        assert ob.depth == 300
        sub = Collector(info, gw)  # the ingest's durable session appears
        assert _wait(lambda: ob.depth == 0, 30)
        time.sleep(0.5)
        assert sorted(r["values"]["i"] for r in sub.readings) == [float(i) for i in range(300)]
        sub.close()
    finally:
        stop.set()
        t.join(10)


def test_broker_outage_loses_nothing_and_live_goes_ahead_of_backlog(stack, tmp_path):
    info = stack.info()
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    sub = Collector(info, gw)
    ob = Outbox(tmp_path / "o.db", synchronous="NORMAL")
    up = Uplink(
        gw, ob, _mqtt_cfg(info, gw, readings_per_message=50, max_inflight=2),
        boot_id=uuid.uuid4().hex, backfill_after_s=60, status_fn=dict,
    )
    stop, t = _start(up)
    try:
        assert _wait(lambda: up.stats.connected)
        stack.stop_mqtt()
        _fill(ob, 100_000, device="old")  # the outage's backlog
        stack.start_mqtt()
        assert _wait(lambda: up.stats.connects >= 2, timeout=30)
        # live readings keep arriving while the backlog drains
        sent_before_live = up.stats.published_readings
        now = int(time.time() * 1000)
        for i in range(20):
            ob.append(wire.Reading(device_id="live", kind="forest_station", ts=now + i, values={"i": float(i)}))
            time.sleep(0.05)
        assert _wait(lambda: ob.depth == 0, 60)

        def delivered() -> int:
            with sub.lock:
                return len(sub.readings)

        # the subscriber's session held what came while it was still reconnecting (paho backs off 1, 2, 4 s)
        assert _wait(lambda: delivered() >= 100_020, 60)
        time.sleep(0.5)  # and nothing more comes
        with sub.lock:
            got = list(sub.readings)
        old = [r["values"]["i"] for r in got if r["device_id"] == "old"]
        live = [r for r in got if r["device_id"] == "live"]
        assert sorted(set(old)) == [float(i) for i in range(100_000)]
        assert [r["values"]["i"] for r in live] == [float(i) for i in range(20)]  # live order kept
        assert not any(r.get("backfill") for r in live)
        # the first live reading did not wait for the backlog to drain: it went out right after what was already
        # on its way when it was appended (a window is 2 messages × 50 readings)
        assert sent_before_live < 90_000, "the backlog drained before the test could add live readings"
        pos_first_live = min(i for i, r in enumerate(got) if r["device_id"] == "live")
        assert pos_first_live <= sent_before_live + 4 * 2 * 50  # slack: a few windows that raced the append
    finally:
        stop.set()
        t.join(10)
        sub.close()


def test_clean_stop_leaves_a_retained_offline_status(stack, tmp_path):
    info = stack.info()
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    ob = Outbox(tmp_path / "o.db", synchronous="NORMAL")
    up = Uplink(
        gw, ob, _mqtt_cfg(info, gw), boot_id="boot-1234abcd", backfill_after_s=60,
        status_fn=lambda: {"agent_version": "9.9", "backlog_depth": ob.depth, "counters": {"x": 1.0}},
    )
    stop, t = _start(up)
    assert _wait(lambda: up.stats.connected)
    time.sleep(0.5)
    stop.set()
    t.join(10)

    seen: list[dict] = []
    c = mqtt_client(info, "dev.tools")
    c.on_message = lambda _c, _u, m: seen.append(json.loads(m.payload))
    c.connect(info.mqtt_host, info.mqtt_port)
    c.loop_start()
    c.subscribe(wire.status_topic(gw), qos=1)
    try:
        assert _wait(lambda: bool(seen), 10)
        status = msgspec.convert(seen[-1], wire.GatewayStatus)
        assert status.state == "offline" and status.boot_id == "boot-1234abcd"
    finally:
        c.disconnect()
        c.loop_stop()


def test_live_readings_on_an_idle_link_share_messages(stack, tmp_path):
    """100 readings/s from a busy gateway must not cost 100 messages, PUBACKs and outbox deletes a second."""
    info = stack.info()
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    sub = Collector(info, gw)
    ob = Outbox(tmp_path / "o.db", synchronous="NORMAL")
    up = Uplink(gw, ob, _mqtt_cfg(info, gw, linger_s=0.2), boot_id=uuid.uuid4().hex, backfill_after_s=60, status_fn=dict)
    stop, t = _start(up)
    try:
        assert _wait(lambda: up.stats.connected)
        now = int(time.time() * 1000)
        for i in range(40):  # 40 readings over ~0.4 s
            ob.append(wire.Reading(device_id="live", kind="forest_station", ts=now + i, values={"i": float(i)}))
            time.sleep(0.01)
        assert _wait(lambda: ob.depth == 0, 10)
        assert _wait(lambda: len(sub.readings) == 40, 10)
        assert up.stats.published_readings == 40
        assert 2 <= up.stats.published_messages <= 6  # not 40
    finally:
        stop.set()
        t.join(10)
        sub.close()
