"""A point InfluxDB would refuse for its field's type is dead-lettered before it is written.

InfluxDB 1.x refuses such a point (HTTP 400 "field type conflict") but has already indexed its series: written
anyway, a device that never sent one valid point would be listed by ``SHOW SERIES`` and by every dashboard
variable built on it. These tests read ``SHOW SERIES`` after each case.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from helpers import influx_query, influx_write
from ingest_helpers import ingest_config, running_ingest, uid, wait_for

from citylab.stack import Stack, StackInfo, mqtt_client
from cityos import wire
from ingest.deadletter import DeadLetterStore
from ingest.fieldtypes import FieldTypes
from ingest.service import IngestService


def now_ms() -> int:
    return int(time.time() * 1000)


class Pub:
    def __init__(self, info: StackInfo) -> None:
        self.c = mqtt_client(info, "dev.tools", client_id=f"ft-pub-{uid()}")
        self.c.connect(info.mqtt_host, info.mqtt_port)
        self.c.loop_start()
        self.seq = 0

    def send(self, gw: str, readings: list[tuple[str, dict[str, Any]]]) -> None:
        self.seq += 1
        ts = now_ms() - 60_000 + self.seq * 10
        body = {"v": 1, "gateway_id": gw, "boot_id": "boot-types-1", "seq": self.seq, "sent_at": ts,
                "readings": [{"device_id": d, "kind": "forest_station", "ts": ts + i, "values": v}
                             for i, (d, v) in enumerate(readings)]}
        r = self.c.publish(wire.telemetry_topic(gw), json.dumps(body).encode(), qos=1)
        r.wait_for_publish(10)
        assert r.is_published()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def devices(info: StackInfo, db: str) -> set[str]:
    rows = influx_query(info, db, 'SHOW SERIES FROM "forest"')
    return {kv.split("=", 1)[1] for s in rows for (key,) in s["values"] for kv in key.split(",")[1:]
            if kv.startswith("device=")}


def reasons(cfg: Any, gw: str) -> dict[str, int]:
    """This test's dead letters by reason (the shared broker's retained statuses of other tests are not ours)."""
    with DeadLetterStore.in_dir(cfg.ingest.data_dir) as dl:
        mine = [d.reason for d in dl.list(limit=10_000) if d.topic == wire.telemetry_topic(gw)]
    return {r: mine.count(r) for r in set(mine)}


def knows(svc: IngestService, field: str, type_: str) -> bool:
    """The ingest has InfluxDB's word for this field's type (a conflicting type would now be refused)."""
    other = "string" if type_ != "string" else "float"
    return svc.field_types.conflict(frozenset({("forest", field, other)})) is not None


def test_a_point_of_the_wrong_type_is_dead_lettered_and_never_indexed(
    stack: Stack, influx_db: str, tmp_path: Path
) -> None:
    info = stack.info()
    gw = f"gw-{uid()}"
    cfg = ingest_config(info, tmp_path, influx_db, name="types")
    pub = Pub(info)
    try:
        with running_ingest(cfg) as svc:
            pub.send(gw, [("st-ok1", {"v": 1.5, "label": "a"})])
            wait_for(lambda: knows(svc, "v", "float") and knows(svc, "label", "string"), 20,
                     "the first message stored: v and label confirmed")
            pub.send(gw, [("st-bad-str", {"v": "high"})])                          # v is a float field
            pub.send(gw, [("st-bad-bool", {"label": True})])                       # label is a string field
            pub.send(gw, [("st-mix1", {"w": 1.0}), ("st-mix2", {"w": False})])  # two types in one message
            pub.send(gw, [("st-ok2", {"v": 2.5, "w": 3.0})])                       # w: float from now on
            wait_for(lambda: reasons(cfg, gw) == {"field_type_conflict": 3} and knows(svc, "w", "float"), 20,
                     "three dead letters and the last message stored")
            with DeadLetterStore.in_dir(cfg.ingest.data_dir) as dl:
                letters = [(d.reason, d.detail) for d in dl.list(limit=10_000)]
            assert ("field_type_conflict", "field 'v' of measurement 'forest' is string here but float in InfluxDB") in letters
            assert svc.health.write_errors == {}  # InfluxDB never refused anything: nothing bad was sent
        assert devices(info, influx_db) == {"st-ok1", "st-ok2"}

        # The table survives a restart (field_types.json in the data_dir)
        with running_ingest(cfg) as svc:
            assert knows(svc, "w", "float")
            pub.send(gw, [("st-bad-later", {"w": "x"})])
            wait_for(lambda: reasons(cfg, gw) == {"field_type_conflict": 4}, 20, "one more dead letter")
        assert "st-bad-later" not in devices(info, influx_db)
    finally:
        pub.close()


def test_a_type_only_influxdb_knew_is_learnt_from_its_refusal(stack: Stack, influx_db: str, tmp_path: Path) -> None:
    """A field written before this ingest's table existed (by another tool, or by another ingest process first):
    the first point of the other type reaches InfluxDB and is refused (and dead-lettered as influx_rejected);
    the ingest learns the type from the refusal, and every later one is stopped before it is written."""
    info = stack.info()
    gw = f"gw-{uid()}"
    influx_write(info, influx_db, f'forest,device=st-old,gateway={gw} z="text" {now_ms() - 120_000}')
    cfg = ingest_config(info, tmp_path, influx_db, name="learn")
    pub = Pub(info)
    try:
        with running_ingest(cfg) as svc:  # its user is write-only: it cannot read InfluxDB's types at start
            assert not knows(svc, "z", "string")
            pub.send(gw, [("st-first", {"z": 1.0})])
            wait_for(lambda: reasons(cfg, gw) == {"influx_rejected": 1}, 30, "the refused message")
            assert knows(svc, "z", "string")  # learnt from InfluxDB's refusal
            pub.send(gw, [("st-second", {"z": 2.0})])
            wait_for(lambda: reasons(cfg, gw) == {"influx_rejected": 1, "field_type_conflict": 1}, 20,
                     "the second message")
        assert FieldTypes(cfg.ingest.data_dir / "field_types.json").conflict(
            frozenset({("forest", "z", "float")})) is not None
        assert "st-second" not in devices(info, influx_db)
    finally:
        pub.close()


def test_a_user_that_may_read_gets_influxdbs_types_at_start(stack: Stack, influx_db: str, tmp_path: Path) -> None:
    info = stack.info()
    gw = f"gw-{uid()}"
    influx_write(info, influx_db, f"forest,device=st-old,gateway={gw} y=true {now_ms() - 120_000}")
    pw = tmp_path / "admin.password"
    pw.write_text(info.influx_password)
    os.chmod(pw, 0o600)
    cfg = ingest_config(info, tmp_path, influx_db, name="seeded",
                        influx={"username": info.influx_username, "password_file": str(pw)})
    pub = Pub(info)
    try:
        with running_ingest(cfg) as svc:
            assert knows(svc, "y", "boolean")  # read from InfluxDB at start
            pub.send(gw, [("st-new", {"y": 1.0})])
            wait_for(lambda: reasons(cfg, gw) == {"field_type_conflict": 1}, 20, "one dead letter")
            assert svc.health.write_errors == {}
        assert devices(info, influx_db) == {"st-old"}
    finally:
        pub.close()


def test_influxdbs_refusal_text_names_the_type() -> None:
    ft = FieldTypes()
    # InfluxDB 1.6.7's answer, as InfluxClient hands it on
    msg = ('partial write: field type conflict: input field "z" on measurement "forest" is type float, already '
           'exists as type string dropped=1')
    assert ft.learn_from_error(msg)
    assert ft.conflict(frozenset({("forest", "z", "float")})) == (
        "field 'z' of measurement 'forest' is float here but string in InfluxDB")
    assert ft.conflict(frozenset({("forest", "z", "string")})) is None
    assert not ft.learn_from_error("unable to parse 'x': bad timestamp")
