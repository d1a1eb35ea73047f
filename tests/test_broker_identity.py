"""Per-gateway identity on the wire, tried as an attacker would, on the real broker with TLS and the ACL and the
real ingest and InfluxDB: a gateway writes only as itself, reads only what is addressed to it; no certificate, no
connection; a revoked gateway is shut out at the next reload while the others keep delivering exactly."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import influx_count
from ingest_helpers import ingest_config, running_ingest, wait_for

from citylab.stack import Stack, StackInfo, identity, mqtt_client
from cityos import wire
from cityos.credentials import TlsFiles
from fleet.pki import CertificateAuthority
from fleet.registry import Registry

NOT_AUTHORIZED = 0x87


def _uid() -> str:
    return uuid.uuid4().hex[:6]


class Gw:
    """One MQTT client with ``name``'s certificate; PUBACK reason codes by message id."""

    def __init__(self, info: StackInfo, name: str) -> None:
        self.name = name
        self.acks: dict[int, int] = {}
        self.got: list[tuple[str, bytes]] = []
        self.subacks: list[list[int]] = []
        self.connected = threading.Event()
        self.c = mqtt_client(info, name)
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc.value)
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.append([r.value for r in rcs])
        self.c.on_connect = lambda *_a: self.connected.set()
        self.c.connect(info.mqtt_host, info.mqtt_port)
        self.c.loop_start()
        assert self.connected.wait(10), f"{name} did not connect"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        wait_for(lambda: info.mid in self.acks, 10, f"PUBACK for {topic}")
        return self.acks[info.mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _batch(gw: str, seq: int, n: int = 5, **values: float) -> bytes:
    ts0 = int(time.time() * 1000) - 60_000 + seq * 100
    readings = [wire.Reading(device_id=f"st-{i}", kind="forest_station", ts=ts0 + i,
                             values={"soil_moisture_pct": 21.9, **values}) for i in range(n)]
    return wire.encode_batch(wire.TelemetryBatch(gateway_id=gw, boot_id="boot-0001", seq=seq, sent_at=ts0,
                                                 readings=readings))


def _forest_points(info: StackInfo, db: str, gw: str) -> int:
    from helpers import influx_query

    series = influx_query(info, db, f"SELECT COUNT(\"soil_moisture_pct\") FROM \"forest\" WHERE \"gateway\" = '{gw}'")
    return sum(int(v[1]) for s in series for v in s["values"])


def test_a_gateway_cannot_write_or_read_as_another(stack: Stack, influx_db: str, tmp_path) -> None:
    info = stack.info()
    a_id, b_id = f"gw-a-{_uid()}", f"gw-b-{_uid()}"
    with running_ingest(ingest_config(info, tmp_path, influx_db)) as svc:
        a, b = Gw(info, a_id), Gw(info, b_id)
        try:
            # B's retained status, which A must not read (valid: the session's later ingests receive it too).
            status = wire.GatewayStatus(gateway_id=b_id, state="online", boot_id="boot-0001", ts=int(time.time() * 1000))
            assert b.publish(wire.status_topic(b_id), wire.encode_status(status), retain=True) == 0
            a.c.subscribe([(wire.status_topic(b_id), 1), ("cityos/v1/#", 1)])
            wait_for(lambda: a.subacks, 10, "SUBACK")

            assert a.publish(wire.telemetry_topic(a_id), _batch(a_id, 1)) == 0  # as itself: accepted
            # As B (the attack of the issue: a landslide-looking reading with a genuine point's timestamp).
            spoof = _batch(b_id, 1, rain_mm_h=120.0, soil_moisture_pct=55.0)
            assert a.publish(wire.telemetry_topic(b_id), spoof) == NOT_AUTHORIZED
            # Nor under a topic of no gateway, nor as a service, nor a receipt to another gateway.
            for topic in ("cityos/v1/svc.ingest/telemetry", f"cityos/v1/{b_id}/receipt", "cityos/v2/x/telemetry"):
                assert a.publish(topic, spoof) == NOT_AUTHORIZED, topic
            assert b.publish(wire.telemetry_topic(b_id), _batch(b_id, 2)) == 0  # B itself still can

            wait_for(lambda: svc.health.messages_acked >= 2, 30, "the ingest to store the genuine messages")
            time.sleep(1.0)
            assert _forest_points(info, influx_db, a_id) == 5
            assert _forest_points(info, influx_db, b_id) == 5  # B's own message only, never the spoof
            assert influx_count(info, influx_db, "forest", field="rain_mm_h") == 0
            assert a.got == [], f"gateway A read others' messages: {a.got[:3]}"
        finally:
            b.publish(wire.status_topic(b_id), b"", retain=True)  # leave no retained status behind
            a.close()
            b.close()


def _raw_connect_fails(host: str, port: int, ctx: ssl.SSLContext | None) -> str:
    """Try an MQTT CONNECT (plaintext, or TLS with ``ctx``); return how it failed ('' if CONNACK 0 came back)."""
    connect = bytes([0x10, 0x10, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x04]) + b"anon"
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            sock = ctx.wrap_socket(raw, server_hostname=host) if ctx else raw
            sock.sendall(connect)
            reply = sock.recv(4)
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if len(reply) == 4 and reply[0] == 0x20 and reply[3] == 0:
        return ""
    return f"reply {reply!r}"


def test_anonymous_plaintext_and_foreign_certificates_are_refused(stack: Stack, tmp_path) -> None:
    info = stack.info()
    # Plaintext MQTT: the listener speaks only TLS.
    assert _raw_connect_fails(info.mqtt_host, info.mqtt_port, None)
    # TLS that trusts the broker but presents no certificate: refused at the handshake.
    assert _raw_connect_fails(info.mqtt_host, info.mqtt_port, TlsFiles(ca_file=info.ca_file).client_context("t"))
    # A certificate from another CA, with a gateway's name on it: refused.
    other = CertificateAuthority.create(tmp_path / "rogue-ca", "rogue")
    other.issue_client("gw-a-rogue").write(tmp_path / "r.crt", tmp_path / "r.key")
    rogue = TlsFiles(ca_file=info.ca_file, cert_file=tmp_path / "r.crt", key_file=tmp_path / "r.key")
    assert _raw_connect_fails(info.mqtt_host, info.mqtt_port, rogue.client_context("t"))
    # Positive control: the same raw CONNECT with a certificate of the stack's CA gets CONNACK 0.
    own = identity(info, f"gw-ok-{_uid()}")
    good = TlsFiles(ca_file=info.ca_file, cert_file=own.cert_file, key_file=own.key_file)
    assert _raw_connect_fails(info.mqtt_host, info.mqtt_port, good.client_context("t")) == ""


def test_a_revoked_gateway_is_shut_out_at_reload_while_the_others_deliver_exactly(
    own_stack: Stack, tmp_path
) -> None:
    info = own_stack.info()
    db = info.influx_db
    revoked_id, kept_id = f"gw-rv-{_uid()}", f"gw-kp-{_uid()}"
    with running_ingest(ingest_config(info, tmp_path, db)) as svc:
        rv, kp = Gw(info, revoked_id), Gw(info, kept_id)
        try:
            sent = {revoked_id: 0, kept_id: 0}
            for seq in range(1, 4):
                for gw in (rv, kp):
                    assert gw.publish(wire.telemetry_topic(gw.name), _batch(gw.name, seq)) == 0
                    sent[gw.name] += 5
            Registry(info.fleet_dir).shut_out(revoked_id)
            own_stack.reload_mqtt()
            # SIGHUP is handled asynchronously: what the broker accepted until then counts as sent.
            deadline, seq = time.monotonic() + 10, 10
            while (code := rv.publish(wire.telemetry_topic(revoked_id), _batch(revoked_id, seq))) == 0:
                sent[revoked_id] += 5
                seq += 1
                assert time.monotonic() < deadline, "the reload did not shut the revoked gateway out"
                time.sleep(0.05)
            assert code == NOT_AUTHORIZED
            # The kept gateway was not disconnected by the reload and keeps delivering.
            assert kp.c.is_connected()
            for seq in range(4, 8):
                assert kp.publish(wire.telemetry_topic(kept_id), _batch(kept_id, seq)) == 0
                sent[kept_id] += 5
            wait_for(lambda: _forest_points(info, db, kept_id) == sent[kept_id], 30, "the kept gateway's points")
            assert _forest_points(info, db, revoked_id) == sent[revoked_id]  # nothing after the revocation
            wait_for(lambda: svc.health.messages_acked == svc.health.messages_received, 30, "every message acked")
        finally:
            rv.close()
            kp.close()

    # After a broker restart the CRL refuses the revoked certificate at the handshake; the other still connects.
    own_stack.stop_mqtt()
    own_stack.start_mqtt()
    rv_files = identity(info, revoked_id)
    refused = _raw_connect_fails(info.mqtt_host, info.mqtt_port, TlsFiles(
        ca_file=info.ca_file, cert_file=rv_files.cert_file, key_file=rv_files.key_file).client_context("t"))
    assert refused, "the revoked certificate still connects after a restart"
    kp_files = identity(info, kept_id)
    assert _raw_connect_fails(info.mqtt_host, info.mqtt_port, TlsFiles(
        ca_file=info.ca_file, cert_file=kp_files.cert_file, key_file=kp_files.key_file).client_context("t")) == ""


@pytest.mark.parametrize("name", ["svc.ingest", "svc.fleet"])
def test_services_have_their_least_privilege(stack: Stack, name: str) -> None:
    """Neither the ingest nor the fleet registry can publish telemetry for a gateway; only the registry may post
    a status (a gateway's ``registered`` notice), and the ingest only receipts."""
    info = stack.info()
    svc: Any = Gw(info, name)
    try:
        gw = f"gw-s-{_uid()}"
        assert svc.publish(wire.telemetry_topic(gw), _batch(gw, 1)) == NOT_AUTHORIZED
        code = svc.publish(wire.status_topic(gw), b"")  # empty: clears nothing retained
        # Accepted (0, or 0x10 "no matching subscribers" when no ingest runs now) or refused.
        assert code in ((0, 0x10) if name == "svc.fleet" else (NOT_AUTHORIZED,)), hex(code)
    finally:
        svc.close()


def test_paho_without_a_client_certificate_never_connects(stack: Stack) -> None:
    info = stack.info()
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set_context(TlsFiles(ca_file=info.ca_file).client_context("t"))
    ok = threading.Event()
    c.on_connect = lambda _c, _u, _f, rc, _p: ok.set() if not rc.is_failure else None
    try:
        c.connect(info.mqtt_host, info.mqtt_port)
        c.loop_start()
        assert not ok.wait(3)
    except (OSError, ssl.SSLError):
        pass
    finally:
        c.loop_stop()
