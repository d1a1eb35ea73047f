"""Ingest against a real Mosquitto 2.0.11 + InfluxDB 1.6.

Every test uses its own client ids and gateway ids (and a fresh InfluxDB database), removes its durable MQTT
sessions and clears its retained status messages at the end, so the session-scoped broker carries nothing into
the next test. Tests that stop or restart a service start their own ``Stack(tmp_path)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from helpers import influx_count, influx_query, influx_write
from ingest_helpers import (
    ingest_config,
    retained_statuses,
    running_ingest,
    start_ingest_process,
    uid,
    wait_for,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from citylab.stack import Stack, StackInfo, mqtt_client, mqtt_settings
from cityos import wire
from ingest.config import MqttConfig
from ingest.deadletter import DeadLetterStore
from ingest.decode import decode_message
from ingest.health import read_health_file
from ingest.mqtt_in import discard_session
from ingest.service import HEALTH_FILE, IngestService

REPO = Path(__file__).resolve().parent.parent


# --- helpers --------------------------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


class Publisher:
    """A paho MQTT v5 publisher (QoS 1) on its own network thread."""

    def __init__(self, info: StackInfo) -> None:
        self.client = mqtt_client(info, "dev.tools", client_id=f"test-pub-{uid()}")
        self.client.reconnect_delay_set(1, 2)
        self.puback_codes: list[int] = []  # PUBACK reason codes, e.g. 0x10 "no matching subscribers"
        self.client.on_publish = lambda _c, _u, _mid, rc, _p: self.puback_codes.append(rc.value)
        self.client.connect(info.mqtt_host, info.mqtt_port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, wait: bool = True) -> Any:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if wait:
            info.wait_for_publish(30)
            assert info.is_published(), f"no PUBACK for {topic}"
        return info

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def publisher(info: StackInfo) -> Iterator[Publisher]:
    p = Publisher(info)
    try:
        yield p
    finally:
        p.close()


def telemetry(gw: str, seq: int, n: int, base_ts: int, **extra: Any) -> tuple[str, bytes, list[tuple]]:
    """(topic, payload, expected points) where a point is (ts, device, gateway, v, flag, label)."""
    readings, points = [], []
    for i in range(n):
        ts = base_ts + seq * 1000 + i
        values = {"v": float(seq * 1000 + i) + 0.25, "flag": (seq + i) % 2 == 0, "label": f"s{seq}-{i}"}
        values.update(extra)
        readings.append(wire.Reading(device_id=f"dev-{i % 4}", kind="forest_station", ts=ts, values=values))
        points.append((ts, f"dev-{i % 4}", gw, values["v"], values["flag"], values["label"]))
    batch = wire.TelemetryBatch(
        gateway_id=gw, boot_id="boot-test-01", seq=seq, sent_at=base_ts, readings=readings
    )
    return wire.telemetry_topic(gw), wire.encode_batch(batch), points


def stored_points(info: StackInfo, db: str, gateways: set[str] | None = None) -> set[tuple]:
    series = influx_query(info, db, 'SELECT "v", "flag", "label" FROM "forest" GROUP BY "device", "gateway"')
    out = set()
    for s in series:
        tags = s.get("tags", {})
        if gateways is not None and tags.get("gateway") not in gateways:
            continue
        for t, v, flag, label in s["values"]:
            out.add((t, tags["device"], tags["gateway"], v, flag, label))
    return out


def drained(svc: IngestService) -> bool:
    h = svc.health
    return h.messages_acked == h.messages_received and h.pending == 0 and svc._inbound.qsize() == 0


def mosquitto_version() -> tuple[int, ...]:
    out = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, check=False)
    m = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


# --- end to end ---------------------------------------------------------------------------------------------


def test_valid_and_malformed_messages_end_to_end(stack: Stack, influx_db: str, tmp_path: Path) -> None:
    info = stack.info()
    # Retained statuses left on the shared broker by other tests reach this ingest too: account for them.
    foreign = retained_statuses(info)
    foreign_points, foreign_dead = 0, Counter()
    for t, p in foreign:
        try:
            foreign_points += decode_message(t, p, now_ms=now_ms()) is not None
        except wire.ContractError as exc:
            foreign_dead[exc.reason] += 1

    u = uid()
    gws = [f"gw-{u}-a", f"gw-{u}-b", f"gw-{u}-c"]
    base = now_ms() - 3_600_000
    port = _free_port()
    cfg = ingest_config(info, tmp_path, influx_db, ingest={"health_port": port, "self_metrics_interval_s": 1})
    valid = [telemetry(gws[k % 3], k, 40, base) for k in range(30)]
    expected = {p for _, _, pts in valid for p in pts}
    good_doc = json.loads(valid[0][1])
    tg = wire.telemetry_topic(gws[0])
    malformed = {
        "bad_json": (tg, b'{"v": 1, "gateway_id": '),
        "schema": (tg, json.dumps({**good_doc, "readings": []}).encode()),
        "unsupported_version": (tg, json.dumps({**good_doc, "v": 2}).encode()),
        "oversize": (tg, b" " * (wire.MAX_PAYLOAD_BYTES + 10)),
        "timestamp_out_of_range": telemetry(gws[0], 99, 3, now_ms() - 200 * 86_400_000)[:2],
        "gateway_mismatch": (wire.telemetry_topic(gws[1]), valid[0][1]),
        "bad_topic": (f"cityos/v1/GW-{u}/telemetry", valid[0][1]),
    }
    status_ts = now_ms() - 5000
    status = {
        "v": 1,
        "gateway_id": gws[0],
        "state": "online",
        "boot_id": "boot-test-01",
        "ts": status_ts,
        "agent_version": "0.1.0",
        "config_hash": "cafe",
        "backlog_depth": 7,
        "backlog_age_s": 1.5,
        "counters": {"published": 42},
    }
    bad_status = {**status, "gateway_id": gws[2]}  # published on gws[1]'s topic: gateway_mismatch
    try:
        with running_ingest(cfg) as svc, publisher(info) as pub:
            for topic, payload, _ in valid[:15]:
                pub.publish(topic, payload)
            for topic, payload in malformed.values():
                pub.publish(topic, payload)
            pub.publish(wire.status_topic(gws[0]), json.dumps(status).encode(), retain=True)
            pub.publish(wire.status_topic(gws[1]), json.dumps(bad_status).encode(), retain=True)
            for topic, payload, _ in valid[15:]:
                pub.publish(topic, payload)
            n_mine = len(valid) + len(malformed) + 2
            total = n_mine + len(foreign)
            wait_for(lambda: svc.health.messages_received >= total and drained(svc), 30, "all messages acked")
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{port}/health", timeout=5
            ) as r:
                http_health = json.loads(r.read())
            time.sleep(2.2)  # health.json is rewritten every second, the ingest_health point too (here)
            file_health = read_health_file(cfg.ingest.data_dir / HEALTH_FILE)
            snap = svc.health.snapshot()
    finally:
        with publisher(info) as pub:  # leave no retained status behind for the next test
            for gw in gws:
                pub.publish(wire.status_topic(gw), b"", retain=True)

    # InfluxDB has exactly the valid points: count, values and timestamps
    assert stored_points(info, influx_db) == expected
    assert influx_count(info, influx_db, "forest") == len(expected) == 30 * 40
    series = influx_query(info, influx_db, f"SELECT * FROM gateway_status WHERE gateway = '{gws[0]}'")
    assert len(series) == 1 and len(series[0]["values"]) == 1
    row = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
    assert row["time"] == status_ts and row["state"] == "online" and row["backlog_depth"] == 7
    assert row["backlog_age_s"] == 1.5 and row["agent_version"] == "0.1.0" and row["config_hash"] == "cafe"
    assert row["c_published"] == 42 and row["boot_id"] == "boot-test-01"
    assert not influx_query(info, influx_db, f"SELECT * FROM gateway_status WHERE gateway = '{gws[2]}'")

    # the dead-letter store has each malformed message with its reason
    with DeadLetterStore.in_dir(cfg.ingest.data_dir) as dl:
        mine = [d for d in dl.list(limit=1000) if u in d.topic.lower()]
        assert sorted(d.reason for d in mine) == sorted([*malformed, "gateway_mismatch"])
        by_reason = {d.reason: d for d in mine if d.topic in {t for t, _ in malformed.values()}}
        for reason, (topic, payload) in malformed.items():
            d = by_reason[reason]
            assert d.topic == topic and d.payload_len == len(payload)
            assert d.payload == payload[: len(d.payload)] and d.received_at > 0
        assert by_reason["oversize"].truncated and "bytes >" in by_reason["oversize"].detail
        dl_counts = dl.count_by_reason()
    expected_dead = Counter(list(malformed)) + Counter(["gateway_mismatch"]) + foreign_dead
    assert dl_counts == dict(expected_dead)

    # the health counters agree
    assert snap["messages_received"] == total and snap["messages_acked"] == total
    assert snap["points_written"] == len(expected) + 1 + foreign_points
    assert snap["dead_lettered"] == dict(expected_dead)
    assert snap["write_errors"] == {} and snap["stalled"] is False and snap["pending"] == 0
    assert snap["connected"] and snap["reconnects"] == 0
    assert snap["write_latency_ms"]["p95"] is not None and snap["last_successful_write"] is not None
    assert http_health["points_written"] == snap["points_written"]
    assert file_health is not None and file_health["messages_acked"] == total

    # ... and so does the ingest's own health in InfluxDB, which the fleet dashboard and the stall alert read
    mine_q = f"SELECT * FROM ingest_health WHERE instance = '{cfg.mqtt.session_id}' ORDER BY time DESC LIMIT 1"
    last = influx_query(info, influx_db, mine_q)[0]
    row = dict(zip(last["columns"], last["values"][0], strict=True))
    assert row["points_written"] == snap["points_written"] and row["messages_acked"] == total
    assert row["dead_lettered_total"] == sum(expected_dead.values()) and row["stalled"] == 0.0
    assert row["connected"] == 1.0 and row["write_latency_p95_ms"] > 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_influx_rejection_dead_letters_only_the_culprits(
    stack: Stack, influx_db: str, tmp_path: Path
) -> None:
    """A field type conflict the ingest could not know of (the field was written by another writer, and the
    ingest's user may not read InfluxDB's types) gives a real HTTP 400 (partial write) from InfluxDB 1.6: the
    batch is bisected, the messages InfluxDB refuses are dead-lettered as influx_rejected, the rest are written
    and acked. (A conflict with a type the ingest knows never reaches InfluxDB: tests/test_field_types.py.)"""
    info = stack.info()
    u = uid()
    gw = f"gw-{u}"
    base = now_ms() - 600_000
    # decode in the service process and one writer: the other tests cover the worker pool and two writers
    cfg = ingest_config(info, tmp_path, influx_db, influx={"writers": 1}, ingest={"decode_workers": 0})

    def msg(seq: int, x: float | bool) -> tuple[str, bytes, list[tuple]]:
        return telemetry(gw, seq, 3, base, x=x)

    influx_write(info, influx_db, f"forest,device=dev-0,gateway=other-{gw} x=1.5 {base}")  # another writer's float
    later = [msg(1, 2.5), msg(2, True), msg(3, 3.5), msg(4, False), msg(5, 4.5), msg(6, 5.5)]
    with running_ingest(cfg) as svc, publisher(info) as pub:
        received = svc.health.messages_received
        for topic, payload, _ in later:  # within one flush interval: one batch, one 400
            pub.publish(topic, payload, wait=False)
        wait_for(lambda: svc.health.messages_received >= received + len(later) and drained(svc), 30, "drain")
        snap = svc.health.snapshot()

    good = [later[0], later[2], later[4], later[5]]
    rejected = [later[1], later[3]]
    assert stored_points(info, influx_db, {gw}) == {p for _, _, pts in good for p in pts}
    xs = influx_query(info, influx_db, f"SELECT x FROM forest WHERE gateway = '{gw}'")
    assert sorted(v for s in xs for _, v in s["values"]) == sorted([2.5] * 3 + [3.5] * 3 + [4.5] * 3 + [5.5] * 3)
    with DeadLetterStore.in_dir(cfg.ingest.data_dir) as dl:
        letters = dl.list(reason="influx_rejected")
        assert sorted(d.payload for d in letters) == sorted(p for _, p, _ in rejected)
        for d in letters:
            assert "HTTP 400" in d.detail and "field type conflict" in d.detail
    assert snap["dead_lettered"].get("influx_rejected") == 2
    assert snap["write_errors"].get("bad_data", 0) >= 2  # the batch, then the halves that held a culprit
    assert snap["messages_acked"] == snap["messages_received"]


def test_a_dead_decode_worker_loses_nothing(stack: Stack, influx_db: str, tmp_path: Path) -> None:
    info = stack.info()
    gw = f"gw-{uid()}"
    base = now_ms() - 3_600_000
    cfg = ingest_config(info, tmp_path, influx_db, ingest={"decode_workers": 2})
    published: list[list[tuple]] = []
    retained = len(retained_statuses(info))  # left by other tests; the ingest receives them too
    with running_ingest(cfg) as svc, publisher(info) as pub:
        for seq in range(300):
            topic, payload, pts = telemetry(gw, seq, 50, base)
            pub.publish(topic, payload, wait=False)
            published.append(pts)
            if seq == 100:
                assert svc._pool is not None
                os.kill(svc._pool.pids()[0], signal.SIGKILL)  # an OOM kill, say
        wait_for(lambda: svc.health.messages_received >= 300 + retained and drained(svc), 30, "all written")
        snap = svc.health.snapshot()
        pool = svc._pool
        assert pool is not None
        wait_for(pool.all_alive, 10, "the killed worker replaced")
    expected = {p for pts in published for p in pts}
    assert stored_points(info, influx_db) == expected
    assert snap["messages_acked"] == snap["messages_received"] == 300 + retained
    assert snap["decode_worker_restarts"] == 1


# --- InfluxDB outage ----------------------------------------------------------------------------------------


def test_influx_outage_loses_nothing_and_flags_the_stall(own_stack: Stack, tmp_path: Path) -> None:
    info = own_stack.info()
    db = f"outage_{uid()}"
    own_stack.create_database(db)
    u = uid()
    gws = [f"gw-{u}-{k}" for k in range(3)]
    base = now_ms() - 3_600_000
    cfg = ingest_config(
        info,
        tmp_path,
        db,
        influx={"retry_max_s": 1.0, "timeout_s": 2.0},
        ingest={"stall_after_s": 2},
    )
    published: list[list[tuple]] = []
    stop_pub = threading.Event()
    stalled_seen: list[tuple[float, bool]] = []

    def publish_loop(pub: Publisher) -> None:
        seq = 0
        while not stop_pub.is_set():
            topic, payload, pts = telemetry(gws[seq % 3], seq, 20, base)
            pub.publish(topic, payload)
            published.append(pts)
            seq += 1
            time.sleep(0.05)

    with running_ingest(cfg) as svc, publisher(info) as pub:
        t = threading.Thread(target=publish_loop, args=(pub,), daemon=True)
        t.start()
        wait_for(lambda: svc.health.points_written > 0, 10, "first writes")
        t0 = time.monotonic()
        own_stack.stop_influx()
        while time.monotonic() - t0 < 10:
            stalled_seen.append((time.monotonic() - t0, svc.health.snapshot()["stalled"]))
            time.sleep(0.2)
        during = svc.health.snapshot()
        own_stack.start_influx()
        time.sleep(2)
        stop_pub.set()
        t.join(10)
        expected = {p for pts in published for p in pts}
        wait_for(lambda: svc.health.messages_received >= len(published) and drained(svc), 40, "recovery")
        wait_for(lambda: not svc.health.snapshot()["stalled"], 5, "stall flag to clear")
        after = svc.health.snapshot()

    assert len(published) > 150  # publishing really went on during the outage
    assert stored_points(info, db) == expected
    assert influx_count(info, db, "forest") == len(expected)
    assert any(s for _, s in stalled_seen), stalled_seen
    assert not stalled_seen[0][1]  # not stalled right after InfluxDB went away ...
    assert (
        during["stalled"] and during["pending"] > 0 and during["messages_acked"] < during["messages_received"]
    )
    assert after["stalled"] is False and after["pending"] == 0
    assert after["messages_acked"] == after["messages_received"] == len(published)
    assert after["write_errors"].get("connection", 0) > 0 and after["dead_lettered"] == {}


# --- ingest killed ------------------------------------------------------------------------------------------


def test_sigkilled_ingest_resumes_from_its_durable_session(
    stack: Stack, influx_db: str, tmp_path: Path
) -> None:
    info = stack.info()
    u = uid()
    gws = [f"gw-{u}-{k}" for k in range(2)]
    base = now_ms() - 3_600_000
    cfg = ingest_config(info, tmp_path, influx_db, name="killed")
    config_path = tmp_path / "ingest.toml"
    config_path.write_text(cfg.to_toml())
    health_path = cfg.ingest.data_dir / HEALTH_FILE
    log_path = tmp_path / "ingest.log"
    published: list[list[tuple]] = []
    stop_pub = threading.Event()

    def publish_loop(pub: Publisher) -> None:
        seq = 0
        while not stop_pub.is_set():
            topic, payload, pts = telemetry(gws[seq % 2], seq, 25, base)
            pub.publish(topic, payload)
            published.append(pts)
            seq += 1
            time.sleep(0.02)

    def health() -> dict[str, Any]:
        return read_health_file(health_path) or {}

    proc = start_ingest_process(config_path, log_path)
    procs = [proc]
    try:
        wait_for(lambda: health().get("subscribed"), 30, "first ingest to subscribe")
        with publisher(info) as pub:
            t = threading.Thread(target=publish_loop, args=(pub,), daemon=True)
            t.start()
            wait_for(lambda: health().get("points_written", 0) > 500, 20, "first writes")
            os.killpg(proc.pid, signal.SIGKILL)  # the whole service (incl. its decode worker), mid-stream
            proc.wait(10)
            killed_at = len(published)
            time.sleep(2.5)  # publishing goes on: queued in the durable session
            health_path.unlink()
            proc = start_ingest_process(config_path, log_path)
            procs.append(proc)
            wait_for(lambda: health().get("subscribed"), 30, "restarted ingest to subscribe")
            time.sleep(1.5)
            stop_pub.set()
            t.join(10)
        expected = {p for pts in published for p in pts}
        assert len(published) > killed_at + 20
        wait_for(
            lambda: influx_count(info, influx_db, "forest", field="v") >= len(expected),
            30,
            "all points",
            poll=0.5,
        )
        assert stored_points(info, influx_db) == expected
        h = health()
        assert h["connected"] and h["stalled"] is False
        proc.send_signal(signal.SIGTERM)  # clean exit: flush, ack, disconnect
        assert proc.wait(30) == 0
        log = log_path.read_text()
        assert "ingest stopped" in log and "session_present=True" in log
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        discard_session(cfg.mqtt)
    assert influx_count(info, influx_db, "forest") == len(expected)


# --- shared subscriptions -----------------------------------------------------------------------------------


def test_shared_subscription_splits_the_load_and_survives_a_member_restart(
    stack: Stack, influx_db: str, tmp_path: Path
) -> None:
    """Observed on Mosquitto 2.0.11: a durable $share member that restarts (broker still running) gets its
    subscription back, and the messages routed to it while it was offline were queued in its session and are
    delivered when it comes back: nothing lost, nothing doubled."""
    info = stack.info()
    u = uid()
    group = f"g{u}"
    gws = [f"gw-{u}-{k}" for k in range(4)]
    base = now_ms() - 3_600_000
    cfg_a = ingest_config(info, tmp_path, influx_db, name="a", mqtt={"share_group": group})
    cfg_b = ingest_config(info, tmp_path, influx_db, name="b", mqtt={"share_group": group})
    published: list[list[tuple]] = []
    seq = [0]
    status = {"v": 1, "gateway_id": gws[0], "state": "online", "boot_id": "boot-test-01", "ts": now_ms()}
    with publisher(info) as pub:
        pub.publish(wire.status_topic(gws[0]), json.dumps(status).encode(), retain=True)
    retained = retained_statuses(info)  # ours, and any left by other tests: every subscribe gets them again
    retained_valid = 0
    for t, p in retained:
        with contextlib.suppress(wire.ContractError):
            retained_valid += decode_message(t, p, now_ms=now_ms()) is not None

    def telemetry_points(svc: IngestService) -> int:
        return svc.health.points_written - svc.health.status_messages

    def publish(pub: Publisher, n: int, pause: float = 0.0) -> None:
        for _ in range(n):
            topic, payload, pts = telemetry(gws[seq[0] % 4], seq[0], 10, base)
            pub.publish(topic, payload)
            published.append(pts)
            seq[0] += 1
            time.sleep(pause)

    try:
        with running_ingest(cfg_a) as a, publisher(info) as pub:
            with running_ingest(cfg_b, discard=False) as b:
                publish(pub, 100)
                wait_for(lambda: telemetry_points(a) + telemetry_points(b) >= 1000, 20, "phase 1")
                wait_for(lambda: drained(a) and drained(b), 20, "phase 1 drain")
                a1, b1 = telemetry_points(a), telemetry_points(b)
                assert a1 > 0 and b1 > 0 and a1 + b1 == 1000  # both wrote some, together exactly all
                assert 300 <= a1 <= 700  # round robin
                # 2.0.11 sends the retained messages to *every* member of the group when it subscribes (so
                # both write the same gateway_status points: harmless, a point is identified by its timestamp)
                assert a.health.status_messages == b.health.status_messages == retained_valid
            # b is down: its share of what is published now is queued in its durable session
            a_before = a.health.messages_received
            publish(pub, 60, pause=0.005)
            time.sleep(0.5)
            a_offline = a.health.messages_received - a_before
            with running_ingest(cfg_b) as b2:
                assert b2.mqtt.session_present is True
                wait_for(
                    lambda: b2.health.messages_received >= 60 - a_offline + len(retained),
                    20,
                    "b's queued share",
                )
                time.sleep(0.3)
                b2_queued = b2.health.messages_received - len(retained)
                publish(pub, 40)
                wait_for(
                    lambda: (
                        a.health.messages_received - a_before + b2.health.messages_received - len(retained)
                        >= 100
                        and drained(a)
                        and drained(b2)
                    ),
                    30,
                    "phase 3",
                )
                b2_points = telemetry_points(b2)
    finally:
        with publisher(info) as pub:
            pub.publish(wire.status_topic(gws[0]), b"", retain=True)
    expected = {p for pts in published for p in pts}
    assert stored_points(info, influx_db) == expected
    assert influx_count(info, influx_db, "forest") == len(expected) == 2000
    assert 0 < a_offline < 60, "while b was offline, a got only its own share"
    assert b2_queued == 60 - a_offline, "b's share was queued, not lost and not re-routed to a"
    assert b2_points > b2_queued * 10  # and b kept getting its share afterwards


def test_shared_subscription_across_a_broker_restart(own_stack: Stack, tmp_path: Path) -> None:
    """Mosquitto 2.0.11 does not restore the $share subscription of a durable session after a *broker* restart
    (fixed in 2.0.12): the session comes back (session_present) but without its shared subscription. The ingest
    re-subscribes on every connect, so it keeps receiving; a client that relies on the session alone does not.
    Messages published after the restart before a member re-subscribes have no $share subscriber and are lost."""
    info = own_stack.info()
    db = f"share_{uid()}"
    own_stack.create_database(db)
    u = uid()
    group = f"g{u}"
    gw = f"gw-{u}"
    base = now_ms() - 3_600_000
    cfg = ingest_config(info, tmp_path, db, name="shared", mqtt={"share_group": group, "reconnect_max_s": 1})
    share_filter = f"$share/{group}x/{wire.TELEMETRY_FILTER}"  # a separate group for the bare paho client
    lazy_got: list[bytes] = []
    lazy = mqtt_client(info, "dev.tools", client_id=f"lazy-{u}")
    lazy.reconnect_delay_set(1, 1)
    lazy.on_message = lambda _c, _u, m: lazy_got.append(m.payload)
    subscribed_once = threading.Event()

    def lazy_on_connect(client: mqtt.Client, *_a: Any) -> None:
        if not subscribed_once.is_set():  # subscribes once, then relies on its durable session
            client.subscribe(share_filter, options=SubscribeOptions(qos=1))
            subscribed_once.set()

    lazy.on_connect = lazy_on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    lazy.connect(info.mqtt_host, info.mqtt_port, clean_start=False, properties=props)
    lazy.loop_start()
    subscribed_once.wait(10)
    time.sleep(0.3)
    expected: set[tuple] = set()
    try:
        with running_ingest(cfg) as svc:
            with publisher(info) as pub:
                for seq in range(10):
                    topic, payload, pts = telemetry(gw, seq, 10, base)
                    pub.publish(topic, payload)
                    expected |= set(pts)
                wait_for(
                    lambda: svc.health.points_written >= 100 and len(lazy_got) >= 10, 20, "before restart"
                )
            own_stack.stop_mqtt()
            own_stack.start_mqtt()
            wait_for(lambda: svc.health.connects >= 2 and svc.health.subscribed, 30, "ingest back")
            assert svc.mqtt.session_present is True
            wait_for(lambda: lazy.is_connected(), 30, "lazy client back")
            time.sleep(0.5)
            lazy_before = len(lazy_got)
            with publisher(info) as pub:
                for seq in range(10, 20):
                    topic, payload, pts = telemetry(gw, seq, 10, base)
                    pub.publish(topic, payload)
                    expected |= set(pts)
                wait_for(lambda: svc.health.points_written >= 200 and drained(svc), 20, "after restart")
                time.sleep(0.5)
            lazy_after = len(lazy_got) - lazy_before
    finally:
        lazy.disconnect()
        lazy.loop_stop()
    assert stored_points(own_stack.info(), db) == expected  # the re-subscribing ingest lost nothing
    if mosquitto_version() < (2, 0, 12):
        assert lazy_after == 0, "2.0.11: a durable $share member that does not re-subscribe gets nothing"
    else:  # pragma: no cover - newer brokers restore the subscription
        assert lazy_after == 10


def test_shared_subscription_messages_published_before_resubscribe_after_broker_restart_are_lost(
    own_stack: Stack, tmp_path: Path
) -> None:
    """The flip side on 2.0.11: a plain durable subscription queues what is published while its client is away
    across a broker restart; a $share one does not (no subscription until the member re-subscribes). The broker
    says so: PUBACK reason 0x10 "no matching subscribers", on which the edge uplink keeps its rows and retries."""
    info = own_stack.info()
    u = uid()
    gw = f"gw-{u}"
    base = now_ms() - 3_600_000
    results, codes = {}, {}
    for kind, flt in (("plain", wire.TELEMETRY_FILTER), ("share", f"$share/g{u}/{wire.TELEMETRY_FILTER}")):
        got: list[bytes] = []
        c = mqtt_client(info, "dev.tools", client_id=f"{kind}-{u}")
        c.on_message = lambda _c, _u, m, got=got: got.append(m.payload)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        c.on_connect = lambda cl, *_a, flt=flt: cl.subscribe(flt, options=SubscribeOptions(qos=1))
        c.connect(info.mqtt_host, info.mqtt_port, clean_start=False, properties=props)
        c.loop_start()
        wait_for(c.is_connected, 10, "connect")
        time.sleep(0.3)
        c.disconnect()
        c.loop_stop()
        own_stack.stop_mqtt()
        own_stack.start_mqtt()
        with publisher(info) as pub:
            for seq in range(5):
                topic, payload, _ = telemetry(gw, seq, 2, base)
                pub.publish(topic, payload)
            codes[kind] = list(pub.puback_codes)
        c.reconnect()
        c.loop_start()
        time.sleep(1.5)
        c.disconnect()
        c.loop_stop()
        results[kind] = len(got)
        discard_session(  # so that it does not count as a matching subscriber in the next round
            MqttConfig(**mqtt_settings(info, "dev.tools")), client_id=f"{kind}-{u}"
        )
    assert results["plain"] == 5 and codes["plain"] == [0] * 5
    if mosquitto_version() < (2, 0, 12):
        assert results["share"] == 0
        assert codes["share"] == [0x10] * 5  # no matching subscribers: a publisher that honours it keeps them
