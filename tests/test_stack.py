"""The private Mosquitto + InfluxDB stack, with real processes.

Tests that only read use the session ``stack``; tests that stop, kill or restart services start their own
``Stack(tmp_path)`` so the session stack stays undisturbed.
"""

from __future__ import annotations

import json
import os
import queue
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from helpers import influx_count, influx_query, influx_write
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import citylab.stack as stack_mod
from citylab.stack import INFLUX_READER, INFLUX_WRITER, Stack, StackError, StackInfo, mqtt_client

# ---- helpers


def _pid_gone(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return st.rpartition(")")[2].split()[0] in ("Z", "X")


class _Mqtt:
    """A paho 2.x MQTTv5 client run on its own thread, with CONNACKs and messages in queues."""

    def __init__(self, info: StackInfo, client_id: str, identity: str = "dev.tools") -> None:
        self.info = info
        self.client = mqtt_client(info, identity, client_id=client_id)
        self.connacks: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda _c, _u, flags, rc, _p: self.connacks.put((rc, flags))
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put(rcs)

    def connect(self, *, clean_start: bool = True, session_expiry: int = 0) -> tuple[Any, Any]:
        """Connect and return (reason_code, connect_flags) of the CONNACK."""
        props = Properties(PacketTypes.CONNECT)
        if session_expiry:
            props.SessionExpiryInterval = session_expiry
        self.client.connect(
            self.info.mqtt_host, self.info.mqtt_port, clean_start=clean_start, properties=props
        )
        self.client.loop_start()
        return self.connacks.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _http(
    info: StackInfo,
    path: str,
    params: dict[str, str],
    *,
    auth: tuple[str, str] | None,
    body: bytes | None = None,
) -> int:
    """The raw HTTP status, with exactly these credentials (or none): what any client would get."""
    method = "POST" if body is not None else "GET"
    return httpx.request(method, info.influx_url + path, params=params, content=body, auth=auth,
                         trust_env=False, timeout=10).status_code


# ---- session stack: reachable, authenticated


def test_stack_json_and_status(stack: Stack) -> None:
    info = stack.info()
    doc = json.loads((stack.run_dir / "stack.json").read_text())
    assert StackInfo.from_json(doc) == info
    assert StackInfo.from_json(info.to_json()) == info
    assert doc["influx_rpc_port"] not in (info.mqtt_port, info.influx_port)
    assert info.mqtt_host == "127.0.0.1" and info.influx_url.startswith("http://127.0.0.1:")
    assert info.influx_db == "cityos" and info.influx_username == "cityos" and len(info.influx_password) >= 16
    # It holds the admin's password, the service users' password files and the CA key: owner-only.
    assert stat.S_IMODE((stack.run_dir / "stack.json").stat().st_mode) == 0o600
    for user in (INFLUX_WRITER, INFLUX_READER):
        assert stat.S_IMODE(info.password_file(user).stat().st_mode) == 0o600
    assert stat.S_IMODE((info.fleet_dir / "ca" / "ca.key").stat().st_mode) == 0o600

    st = stack.status()
    assert st["up"] is True
    assert st["mosquitto"]["running"] and st["mosquitto"]["port"] == info.mqtt_port
    assert (
        st["influxdb"]["running"] and st["influxdb"]["ready"] and st["influxdb"]["port"] == info.influx_port
    )

    conf = (stack.run_dir / "mosquitto" / "mosquitto.conf").read_text()
    assert f"listener {info.mqtt_port} 127.0.0.1" in conf and "allow_anonymous false" in conf
    # One listener, and it is mutual TLS with the ACL: no plaintext path exists even on loopback.
    assert conf.count("listener ") == 1 and "require_certificate true" in conf and "acl_file " in conf
    # up() on a running stack returns the same info and starts nothing new.
    assert stack.up() == info
    assert stack.status()["mosquitto"]["pid"] == st["mosquitto"]["pid"]


def test_mqtt_takes_a_certificate_from_the_stack_ca(stack: Stack) -> None:
    """The stack's CA issues an identity on first use; it connects. (Refusals: tests/test_broker_identity.py.)"""
    info = stack.info()
    good = _Mqtt(info, f"ok-{uuid.uuid4().hex[:8]}", identity=f"gw-{uuid.uuid4().hex[:6]}")
    rc, _flags = good.connect()
    assert rc == 0, rc
    good.close()


def test_influx_ping_auth_and_roundtrip(stack: Stack, influx_db: str) -> None:
    info = stack.info()
    assert _http(info, "/ping", {}, auth=None) == 204
    # Unauthenticated or wrong password: refused.
    assert _http(info, "/query", {"q": "SHOW DATABASES"}, auth=None) == 401
    assert _http(info, "/query", {"q": "SHOW DATABASES"}, auth=(info.influx_username, "wrong")) == 401
    assert _http(info, "/write", {"db": influx_db}, auth=None, body=b"m v=1") == 401

    now_ms = int(time.time() * 1000)
    influx_write(
        info, influx_db, [f"forest,device=d1 temp=21.5 {now_ms}", f"forest,device=d2 temp=19 {now_ms}"]
    )
    series = influx_query(info, influx_db, "SELECT temp FROM forest GROUP BY device")
    got = {s["tags"]["device"]: s["values"] for s in series}
    assert got == {"d1": [[now_ms, 21.5]], "d2": [[now_ms, 19.0]]}
    assert influx_count(info, influx_db, "forest") == 2
    assert influx_count(info, influx_db, "forest", field="temp") == 2
    assert influx_count(info, influx_db, "nothing_here") == 0
    names = [v[0] for s in influx_query(info, influx_db, "SHOW DATABASES") for v in s["values"]]
    assert influx_db in names and "cityos" in names


def test_influx_service_users_have_least_privilege(stack: Stack, influx_db: str) -> None:
    """The ingest's user may only write, the readers' only read; neither administers."""
    info = stack.info()
    writer = (INFLUX_WRITER, info.password_file(INFLUX_WRITER).read_text().strip())
    reader = info.reader_login()
    line = f"forest,device=lp v=1 {int(time.time() * 1000)}".encode()
    assert _http(info, "/write", {"db": influx_db, "precision": "ms"}, auth=writer, body=line) == 204
    assert _http(info, "/write", {"db": influx_db, "precision": "ms"}, auth=reader, body=line) == 403
    q = {"db": influx_db, "q": "SELECT * FROM forest"}
    assert _http(info, "/query", q, auth=reader) == 200
    assert _http(info, "/query", q, auth=writer) == 403
    for who in (writer, reader):
        assert _http(info, "/query", {"q": "SHOW USERS"}, auth=who) == 403
        assert _http(info, "/query", {"q": f'DROP DATABASE "{influx_db}"'}, auth=who, body=b"") == 403


# ---- own stacks: lifecycle and fault injection


def test_down_stops_exactly_our_processes_and_is_idempotent(tmp_path: Path) -> None:
    s = Stack(tmp_path / "run")
    info = s.up()
    st = s.status()
    pids = [st["mosquitto"]["pid"], st["influxdb"]["pid"]]
    assert all(pids) and not any(_pid_gone(p) for p in pids)
    # The pid files name processes started with our config files.
    assert str(s.run_dir / "mosquitto" / "mosquitto.conf") in Path(f"/proc/{pids[0]}/cmdline").read_text()

    s.down()
    assert all(_pid_gone(p) for p in pids)
    assert not (s.run_dir / "stack.json").exists()
    with pytest.raises(StackError, match="no stack is up"):
        s.info()
    st = s.status()
    assert not st["up"] and not st["mosquitto"]["running"] and not st["influxdb"]["running"]
    s.down()  # harmless

    # A second up in the same run dir reuses the credentials (the InfluxDB admin user persists) and the CA.
    info2 = s.up()
    try:
        assert info2.influx_password == info.influx_password
        assert info2.ca_file.read_bytes() == info.ca_file.read_bytes()
        creds = (info2.influx_username, info2.influx_password)
        assert _http(info2, "/query", {"q": "SHOW DATABASES"}, auth=creds) == 200
        assert _http(info2, "/query", {"q": "SHOW DATABASES"}, auth=info2.reader_login()) == 200
    finally:
        s.down()


def test_down_after_one_service_crashed_stops_the_other(own_stack: Stack) -> None:
    influx_pid = own_stack.status()["influxdb"]["pid"]
    own_stack.stop_mqtt(kill=True)
    own_stack.stop_mqtt(kill=True)  # already stopped: no-op
    assert not own_stack.status()["mosquitto"]["running"]
    own_stack.down()
    assert _pid_gone(influx_pid)


def test_stale_pid_file_is_not_trusted(tmp_path: Path) -> None:
    """A pid file naming some other process (pid reuse after a crash) must not make us signal it."""
    s = Stack(tmp_path / "run")
    (s.run_dir / "mosquitto").mkdir(parents=True)
    (s.run_dir / "mosquitto" / "mosquitto.pid").write_text(f"{os.getpid()}\n")
    assert s.status()["mosquitto"]["running"] is False
    s.down()  # would SIGTERM pytest itself if it trusted the pid file
    assert not (s.run_dir / "mosquitto" / "mosquitto.pid").exists()


def _durable_subscriber(info: StackInfo, client_id: str, topic: str) -> None:
    sub = _Mqtt(info, client_id)
    assert sub.connect(clean_start=False, session_expiry=3600)[0] == 0
    sub.client.subscribe(topic, qos=1)
    assert sub.subacks.get(timeout=5)[0] == 1  # granted QoS 1
    sub.close()


def _publish(info: StackInfo, topic: str, payload: bytes) -> None:
    pub = _Mqtt(info, f"pub-{uuid.uuid4().hex[:8]}")
    assert pub.connect()[0] == 0
    pub.client.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
    pub.close()


def _reconnect_and_receive(info: StackInfo, client_id: str) -> mqtt.MQTTMessage:
    sub = _Mqtt(info, client_id)
    try:
        rc, flags = sub.connect(clean_start=False, session_expiry=3600)
        assert rc == 0 and flags.session_present, "durable session lost across the broker restart"
        return sub.messages.get(timeout=5)
    finally:
        sub.close()


def test_offline_durable_session_survives_graceful_restart(own_stack: Stack) -> None:
    info = own_stack.info()
    topic, client_id = "cityos/v1/gw-1/telemetry", "durable-sub"
    _durable_subscriber(info, client_id, topic)
    _publish(info, topic, b'{"n": 1}')

    own_stack.stop_mqtt()
    assert not own_stack.status()["mosquitto"]["running"]
    own_stack.start_mqtt()
    assert own_stack.info().mqtt_port == info.mqtt_port  # same port, clients need no new config

    msg = _reconnect_and_receive(info, client_id)
    assert (msg.topic, msg.payload, msg.qos) == (topic, b'{"n": 1}', 1)


def test_offline_durable_session_survives_sigkill_after_autosave(own_stack: Stack) -> None:
    info = own_stack.info()
    topic, client_id = "cityos/v1/gw-2/telemetry", "durable-sub-2"
    _durable_subscriber(info, client_id, topic)
    _publish(info, topic, b"queued")

    # autosave_interval 1: wait until the broker has saved once after the PUBACK, then crash it.
    db = own_stack.run_dir / "mosquitto" / "data" / "mosquitto.db"
    before = db.stat().st_mtime_ns if db.exists() else 0
    deadline = time.monotonic() + 5
    while (db.stat().st_mtime_ns if db.exists() else 0) == before:
        assert time.monotonic() < deadline, "mosquitto did not autosave within 5 s"
        time.sleep(0.05)
    own_stack.stop_mqtt(kill=True)
    own_stack.start_mqtt()

    msg = _reconnect_and_receive(info, client_id)
    assert (msg.payload, msg.qos) == (b"queued", 1)


def test_influx_restart_after_sigkill_keeps_data_and_port(own_stack: Stack) -> None:
    info = own_stack.info()
    influx_write(info, info.influx_db, "forest,device=d1 temp=1 1700000000000")
    own_stack.stop_influx(kill=True)
    assert not own_stack.status()["influxdb"]["running"]
    own_stack.start_influx()
    assert own_stack.info() == info
    assert own_stack.status()["influxdb"]["ready"]
    assert influx_count(info, info.influx_db, "forest") == 1  # the WAL is fsynced per write


def test_create_database_is_idempotent(stack: Stack) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        stack.create_database(name)
        stack.create_database(name)
        dbs = [v[0] for s in influx_query(stack.info(), name, "SHOW DATABASES") for v in s["values"]]
        assert dbs.count(name) == 1
    finally:
        stack.drop_database(name)
        stack.drop_database(name)


# ---- missing binaries


def test_missing_mosquitto_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(stack_mod, "EXTRA_BIN_DIRS", ())
    with pytest.raises(StackError, match=r"mosquitto not found on PATH .*`apt-get install mosquitto`"):
        Stack(tmp_path / "run").up()
    with pytest.raises(StackError, match=r"influxd not found on PATH .*`apt-get install influxdb`"):
        stack_mod.find_binary("influxd")


def test_missing_influxd_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("mosquitto", "mosquitto_passwd"):
        (bin_dir / name).symlink_to(stack_mod.find_binary(name))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(stack_mod, "EXTRA_BIN_DIRS", ())
    s = Stack(tmp_path / "run")
    with pytest.raises(StackError, match=r"`apt-get install influxdb`"):
        s.up()
    assert not s.status()["mosquitto"]["running"]
    assert not (s.run_dir / "stack.json").exists()


def test_cold_shard_compaction_is_set_only_when_asked(tmp_path):
    """A benchmark's stack compacts shards not written for ``compact_cold_after`` (InfluxDB's 4 h otherwise); the
    value reaches the config file only as a duration."""
    assert "compact-full-write-cold-duration" not in Stack(tmp_path)._influxdb_conf(1, 2)
    conf = Stack(tmp_path, compact_cold_after="30s")._influxdb_conf(1, 2)
    data = conf[conf.index("[data]"):conf.index("[monitor]")]
    assert 'compact-full-write-cold-duration = "30s"' in data
    with pytest.raises(StackError, match="compact_cold_after"):
        Stack(tmp_path, compact_cold_after='30s"\n[http]')


def test_influxd_gets_gogc_only_when_asked_and_never_influxdb_overrides(tmp_path, monkeypatch):
    """``influx_gogc`` (the benchmark's InfluxDB as docs/operations.md deploys it) reaches influxd as ``GOGC``; the
    environment's ``INFLUXDB_*`` never do (they would override the config file)."""
    monkeypatch.setenv("INFLUXDB_HTTP_AUTH_ENABLED", "false")
    monkeypatch.delenv("GOGC", raising=False)
    plain = Stack(tmp_path)._influx_env()
    assert "GOGC" not in plain and not any(k.startswith("INFLUXDB_") for k in plain)
    assert Stack(tmp_path, influx_gogc=400)._influx_env()["GOGC"] == "400"
    for bad in (0, 24, 10_001, True, "400"):
        with pytest.raises(StackError, match="influx_gogc"):
            Stack(tmp_path, influx_gogc=bad)  # type: ignore[arg-type]
