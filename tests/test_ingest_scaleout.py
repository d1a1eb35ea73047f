"""Several ingest processes on one shared subscription, and the identity that keeps their sessions apart.

Each process is one durable MQTT session named ``<client_id>.<host>.<instance>``. On a ``$share`` group the broker
splits the messages between the members; a member killed mid-stream keeps its unacked messages (and what the
broker routes to it meanwhile) in its session, and gets them again when it comes back, as systemd restarts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import influx_count, influx_query
from ingest_helpers import ingest_config, running_ingest, start_ingest_process, uid, wait_for

from citylab.stack import Stack, StackInfo, mqtt_client
from cityos import wire
from ingest.config import IngestConfig
from ingest.health import read_health_file
from ingest.mqtt_in import discard_session
from ingest.service import EXIT_DUPLICATE, HEALTH_FILE, DuplicateInstance, IngestService


def now_ms() -> int:
    return int(time.time() * 1000)


def payload(gw: str, seq: int, n: int, base_ts: int) -> tuple[bytes, set[tuple[int, str, str, float]]]:
    """A telemetry message of ``n`` forest readings and the points it must become."""
    readings, points = [], set()
    for i in range(n):
        ts, dev, v = base_ts + seq * 1000 + i, f"st-{i % 5}", seq * 1000 + i + 0.5
        readings.append({"device_id": dev, "kind": "forest_station", "ts": ts, "values": {"v": v}})
        points.add((ts, dev, gw, v))
    body = {"v": 1, "gateway_id": gw, "boot_id": "boot-scale-01", "seq": seq, "sent_at": base_ts, "readings": readings}
    return json.dumps(body).encode(), points


def stored(info: StackInfo, db: str) -> set[tuple[int, str, str, float]]:
    out = set()
    for s in influx_query(info, db, 'SELECT "v" FROM "forest" GROUP BY "device", "gateway"'):
        for t, v in s["values"]:
            out.add((t, s["tags"]["device"], s["tags"]["gateway"], v))
    return out


def instance_config(info: StackInfo, tmp_path: Path, db: str, base: str, group: str, k: int) -> IngestConfig:
    return ingest_config(
        info, tmp_path, db, name=f"i{k}",
        mqtt={"client_id": base, "instance": str(k), "share_group": group},
        ingest={"decode_workers": 1, "self_metrics_interval_s": 0},
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("n_proc", [1, 2, 4])
def test_shared_subscription_is_exact_with_a_member_sigkilled(
    stack: Stack, influx_db: str, tmp_path: Path, n_proc: int
) -> None:
    info = stack.info()
    u = uid()
    base, group = f"scale-{u}", f"g{u}"
    gws = [f"gw-{u}-{k}" for k in range(4)]
    base_ts = now_ms() - 3_600_000
    cfgs = [instance_config(info, tmp_path, influx_db, base, group, k) for k in range(n_proc)]
    assert len({c.mqtt.session_id for c in cfgs}) == n_proc
    paths = []
    for k, c in enumerate(cfgs):
        paths.append(tmp_path / f"ingest-{k}.toml")
        paths[-1].write_text(c.to_toml())
    logs = [tmp_path / f"ingest-{k}.log" for k in range(n_proc)]

    def health(k: int) -> dict[str, Any]:
        return read_health_file(cfgs[k].ingest.data_dir / HEALTH_FILE) or {}

    procs: list[subprocess.Popen[bytes]] = [start_ingest_process(p, lg) for p, lg in zip(paths, logs, strict=True)]
    all_procs = list(procs)
    expected: set[tuple] = set()
    sent = [0]
    stop = threading.Event()
    pub = mqtt_client(info, "dev.tools", client_id=f"scale-pub-{u}")
    pub.connect(info.mqtt_host, info.mqtt_port)
    pub.loop_start()

    def publish_loop() -> None:
        seq = 0
        while not stop.is_set() or seq < 200:
            gw = gws[seq % 4]
            body, pts = payload(gw, seq, 20, base_ts)
            r = pub.publish(wire.telemetry_topic(gw), body, qos=1)
            r.wait_for_publish(30)
            assert r.is_published()
            expected.update(pts)
            sent[0] = seq = seq + 1
            time.sleep(0.004)

    try:
        for k in range(n_proc):
            wait_for(lambda k=k: health(k).get("subscribed"), 60, f"ingest {k} to subscribe")
        t = threading.Thread(target=publish_loop, name="publisher", daemon=True)
        t.start()
        wait_for(lambda: health(0).get("points_written", 0) > 200, 30, "ingest 0 to write")
        os.killpg(procs[0].pid, signal.SIGKILL)  # the whole process group: service and decode worker, mid-stream
        procs[0].wait(10)
        killed_at = sent[0]
        time.sleep(2.0)  # publishing goes on; its share queues in its session (systemd: RestartSec)
        (cfgs[0].ingest.data_dir / HEALTH_FILE).unlink(missing_ok=True)
        procs[0] = start_ingest_process(paths[0], logs[0])
        all_procs.append(procs[0])
        wait_for(lambda: health(0).get("subscribed"), 60, "the killed ingest back")
        time.sleep(1.0)
        stop.set()
        t.join(60)
        assert sent[0] > killed_at + 50, "publishing went on while the member was down"
        wait_for(lambda: influx_count(info, influx_db, "forest", field="v") >= len(expected), 60, "every point",
                 poll=0.5)
        time.sleep(1.0)  # anything extra would show now
        got = stored(info, influx_db)
        for k in range(n_proc):
            procs[k].send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p in procs]
        shares = [health(k).get("points_written", 0) for k in range(n_proc)]
    finally:
        stop.set()
        pub.disconnect()
        pub.loop_stop()
        for p in all_procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for c in cfgs:
            discard_session(c.mqtt)
    assert got == expected, f"missing {len(expected - got)}, unexpected {len(got - expected)}"
    assert influx_count(info, influx_db, "forest") == len(expected) == sent[0] * 20
    assert codes == [0] * n_proc
    if n_proc > 1:  # every member wrote a share of what came after the restart
        assert all(s > 0 for s in shares), shares
    assert "session_present=True" in logs[0].read_text()


def test_a_second_process_with_the_same_session_or_data_dir_is_refused(
    stack: Stack, influx_db: str, tmp_path: Path
) -> None:
    info = stack.info()
    u = uid()
    cfg = ingest_config(info, tmp_path, influx_db, name="dup", mqtt={"client_id": f"dup-{u}"})
    same_session = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"data_dir": tmp_path / "other"})})
    same_dir = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"instance": "7"})})
    with running_ingest(cfg):
        with pytest.raises(DuplicateInstance, match=f"already runs as MQTT client '{cfg.mqtt.session_id}'"):
            IngestService(same_session)
        with pytest.raises(DuplicateInstance, match="another ingest process uses data_dir"):
            IngestService(same_dir)
        # as systemd runs it: one line, exit status 3 (the unit does not restart on it)
        path = tmp_path / "dup.toml"
        path.write_text(same_session.to_toml())
        r = subprocess.run([os.sys.executable, "-m", "ingest.service", "--config", str(path)],
                           capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
        assert r.returncode == EXIT_DUPLICATE, r.stderr
        assert f"error: another ingest on this machine already runs as MQTT client '{cfg.mqtt.session_id}'" in r.stderr
    # once the first has stopped, the same identity starts
    with running_ingest(same_session) as svc:
        assert svc.health.subscribed


def test_an_ingest_whose_session_is_taken_over_stops_instead_of_flapping(
    stack: Stack, influx_db: str, tmp_path: Path
) -> None:
    """Another machine configured with the same client id, host_id and instance: the broker hands the session to
    the newcomer (Mosquitto 2.0.11 just drops the older connection: "Unspecified error"). The newcomer claims the
    session as every ingest does at start; the older process sees that claim and stops with the reason, instead
    of reconnecting and taking the session back every few seconds."""
    info = stack.info()
    cfg = ingest_config(info, tmp_path, influx_db, name="taken", mqtt={"client_id": f"taken-{uid()}"})
    stop = threading.Event()
    svc = IngestService(cfg, stop)
    t = threading.Thread(target=svc.run, name="ingest-taken", daemon=True)
    t.start()
    other = mqtt_client(info, "svc.ingest", client_id=cfg.mqtt.session_id)
    disconnects: list[Any] = []
    other.on_disconnect = lambda *a: disconnects.append(a)
    claim = json.dumps({"nonce": "another-process", "host": "twin-host", "pid": 4242, "started_at": now_ms()})
    topic = wire.ingest_claim_topic(cfg.mqtt.session_id)
    other.on_connect = lambda c, *_a: c.publish(topic, claim, qos=1, retain=True)
    try:
        wait_for(lambda: svc.health.subscribed, 30, "ingest to subscribe")
        other.connect(info.mqtt_host, info.mqtt_port)
        other.loop_start()
        t.join(30)
        assert not t.is_alive(), "the ingest did not stop"
        assert svc.fatal and "a second ingest runs with this [mqtt] client_id, host_id and instance" in svc.fatal
        assert svc.mqtt.taken_over and "pid 4242 on 'twin-host'" in svc.fatal
        # The old process reconnected once (the broker gave no reason for dropping it), saw the claim, and let go:
        # the newcomer was bumped once at most, and keeps the session from then on.
        assert svc.health.connects <= 2
        bumped = len(disconnects)
        assert bumped <= 1
        wait_for(other.is_connected, 10, "the newcomer back")
        time.sleep(3)
        assert other.is_connected() and len(disconnects) == bumped
    finally:
        stop.set()
        other.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        other.disconnect()
        other.loop_stop()
        discard_session(cfg.mqtt)
