"""End to end on real services: simulated stations → agents → Mosquitto → ingest → InfluxDB.

Each test compares InfluxDB with the simulators' ground truth after a fault: the same points (gateway, device,
timestamp), the same values, no more and no fewer.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from citylab.pipeline import Pipeline
from citylab.stack import mqtt_client
from ingest.deadletter import DeadLetterStore

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def city(stack, influx_db, tmp_path):
    tag = uuid.uuid4().hex[:6]
    pipe = Pipeline(
        tmp_path / "city", stack.info(), gateways=2, stations=2, db=influx_db,
        ingest_client_id=f"ingest-{tag}", prefix=f"gw-{tag}", accel=1200.0,
    )
    yield pipe
    pipe.stop()


def _start(pipe: Pipeline, **kw) -> None:
    for gw in pipe.gateways:
        for k, v in kw.items():
            setattr(gw, k, v)
    pipe.start()
    pipe.wait_for(lambda: pipe.influx_count() > 0, 60, "the first points in InfluxDB")


def assert_exact(pipe: Pipeline) -> int:
    pipe.settle()
    c = pipe.compare()
    assert not c.missing, f"{len(c.missing)} of {c.truth} samples missing in InfluxDB, first: {c.missing[:3]}"
    assert not c.extra, f"{len(c.extra)} points in InfluxDB that no station produced, first: {c.extra[:3]}"
    assert not c.wrong, f"{len(c.wrong)} points with other values than the station's, first: {c.wrong[:2]}"
    assert not c.doubled
    assert c.exact
    return c.truth


def test_every_sample_arrives_exactly_once(city):
    _start(city)
    time.sleep(6)
    n = assert_exact(city)
    assert n >= 4 * 6
    health = city.ingest_health()
    assert health["dead_lettered"] in ({}, 0) or sum(health["dead_lettered"].values()) == 0


def test_broker_stopped_10s(city, stack):
    _start(city)
    time.sleep(3)
    stack.stop_mqtt()
    time.sleep(10)
    stack.start_mqtt()
    time.sleep(4)
    assert_exact(city)


def test_influxdb_stopped_10s(city, stack):
    _start(city)
    time.sleep(3)
    stack.stop_influx()
    time.sleep(10)
    stack.start_influx()
    time.sleep(4)
    assert_exact(city)


def test_agent_sigkilled_and_restarted(city):
    _start(city)
    time.sleep(3)
    gw = city.gateways[0]
    city.agents[gw.gateway_id].kill()
    time.sleep(4)  # the stations keep sampling meanwhile
    city.start_agent(gw)
    time.sleep(4)
    assert_exact(city)


def test_ingest_sigkilled_and_restarted(city):
    _start(city)
    time.sleep(3)
    assert city.ingest is not None
    city.ingest.kill()
    time.sleep(4)
    city.start_ingest()
    time.sleep(4)
    assert_exact(city)


def test_thousand_malformed_payloads_are_dead_lettered_and_cost_nothing(city, stack):
    _start(city)
    info = stack.info()
    bad_gw = city.gateways[0].gateway_id
    good = json.dumps(
        {"v": 1, "gateway_id": bad_gw, "boot_id": "x" * 16, "seq": 1, "sent_at": 0,
         "readings": [{"device_id": "d", "kind": "forest_station", "ts": int(time.time() * 1000), "values": {"a": 1}}]}
    )
    kinds = {
        "bad_json": b"{not json",
        "schema": good.replace('"values": {"a": 1}', '"values": {}').encode(),
        "unsupported_version": good.replace('"v": 1', '"v": 9').encode(),
        "gateway_mismatch": good.replace(f'"gateway_id": "{bad_gw}"', '"gateway_id": "someone-else"').encode(),
        "timestamp_out_of_range": good.replace(str(json.loads(good)["readings"][0]["ts"]), "1000").encode(),
    }
    c = mqtt_client(info, "dev.tools")
    c.connect(info.mqtt_host, info.mqtt_port)
    c.loop_start()
    sent: dict[str, int] = {}
    names = sorted(kinds)
    for i in range(1000):
        reason = names[i % len(names)]
        c.publish(f"cityos/v1/{bad_gw}/telemetry", kinds[reason], qos=1).wait_for_publish(10)
        sent[reason] = sent.get(reason, 0) + 1
    c.disconnect()
    c.loop_stop()
    time.sleep(3)
    assert_exact(city)
    assert DeadLetterStore.in_dir(city.ingest_dir).count_by_reason() == sent
    assert city.ingest is not None and city.ingest.alive


def test_garbage_on_the_serial_line(city):
    _start(city, fault="garbage=0.2,crc=0.1")
    time.sleep(8)
    assert_exact(city)
