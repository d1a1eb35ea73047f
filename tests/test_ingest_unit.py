"""Ingest: the pure parts (no broker, no InfluxDB): batching, ack ordering, dead-letter store, config errors,
InfluxDB response classification, decoding (and the fast decode path's equivalence with the wire contract),
health and the stall flag."""

from __future__ import annotations

import json
import random
import socket
import string
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from citylab.pipeline import ingest_config
from cityos import wire
from cityos.influx import InfluxClient, classify
from ingest import lineproto
from ingest.batcher import AckSequencer, Batch, Batcher, Item
from ingest.config import ConfigError, load_config
from ingest.deadletter import MAX_STORED_PAYLOAD, DeadLetter, DeadLetterStore
from ingest.decode import (
    decode_chunk,
    decode_message,
)
from ingest.health import Health, HealthServer, read_health_file, write_health_file

NOW = 1_790_000_000_000


def _item(n_lines: int = 1, mid: int = 1, gen: int = 1, body: bytes | None = None, qos: int = 1) -> Item:
    body = body if body is not None else b"\n".join(b"m f=1 %d" % i for i in range(n_lines))
    return Item(mid, qos, gen, "cityos/v1/gw/telemetry", b"{}", body, n_lines, NOW)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- batcher ------------------------------------------------------------------------------------------------


def test_batcher_flushes_at_max_lines() -> None:
    clock = FakeClock()
    b = Batcher(max_lines=10, max_age_s=1.0, clock=clock)
    assert not b.due() and b.time_until_due() is None
    b.add(_item(4, mid=1))
    b.add(_item(5, mid=2))
    assert not b.due()
    b.add(_item(1, mid=3))
    assert b.full() and b.due() and b.time_until_due() == 0.0
    batch = b.take()
    assert batch.n_lines == 10 and [i.mid for i in batch.items] == [1, 2, 3]
    assert len(b) == 0 and b.n_lines == 0 and not b.due()


def test_batcher_flushes_by_age_of_first_line() -> None:
    clock = FakeClock()
    b = Batcher(max_lines=5000, max_age_s=1.0, clock=clock)
    b.add(_item(1, mid=1))
    clock.t += 0.6
    b.add(_item(1, mid=2))  # a later line does not restart the clock
    assert not b.due()
    assert b.time_until_due() == pytest.approx(0.4)
    clock.t += 0.4
    assert b.due()
    b.take()
    clock.t += 5
    b.add(_item(1, mid=3))  # the age counts from the first line of the *new* batch
    assert not b.due() and b.time_until_due() == pytest.approx(1.0)


def test_batcher_flushes_at_max_bytes_and_max_messages() -> None:
    b = Batcher(max_lines=10_000, max_age_s=10, max_bytes=100, clock=FakeClock())
    b.add(_item(1, body=b"x" * 60))
    assert not b.due()
    b.add(_item(1, body=b"y" * 60))
    assert b.due()
    b2 = Batcher(max_lines=10_000, max_age_s=10, max_messages=3, clock=FakeClock())
    for mid in range(2):
        b2.add(_item(1, mid=mid))
    assert not b2.due()
    b2.add(_item(1, mid=9))
    assert b2.due()


def test_batch_body_split_and_ack_keys() -> None:
    items = [_item(1, mid=m, body=f"l{m}".encode()) for m in range(5)]
    items.append(_item(1, mid=99, qos=0, body=b"q0"))
    batch = Batch.of(items)
    assert batch.body() == b"l0\nl1\nl2\nl3\nl4\nq0"
    assert batch.body() is batch.body()  # built once
    assert batch.ack_keys() == [(1, m) for m in range(5)]  # QoS 0 needs no ack
    left, right = batch.split()
    assert [i.mid for i in left.items] == [0, 1, 2] and [i.mid for i in right.items] == [3, 4, 99]
    assert left.n_lines + right.n_lines == batch.n_lines


def test_batcher_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        Batcher(max_lines=0)
    with pytest.raises(ValueError):
        Batcher(max_age_s=0)


# --- ack sequencer -------------------------------------------------------------------------------------------


def test_acks_released_in_receive_order() -> None:
    s = AckSequencer()
    for mid in (5, 6, 7, 8):
        assert s.received(1, mid)
    assert s.done([(1, 7)]) == []  # 5 and 6 still pending
    assert s.done([(1, 5)]) == [(1, 5)]
    assert s.done([(1, 6)]) == [(1, 6), (1, 7)]
    assert s.waiting() == 1
    assert s.done([(1, 8)]) == [(1, 8)]
    assert s.waiting() == 0


def test_oldest_unacked_age() -> None:
    clock = FakeClock(100.0)
    s = AckSequencer(clock=clock)
    assert s.oldest_age_s() == 0.0
    s.received(1, 1)
    clock.t += 2
    s.received(1, 2)
    clock.t += 3
    assert s.oldest_age_s() == pytest.approx(5.0)
    s.done([(1, 1)])
    assert s.oldest_age_s() == pytest.approx(3.0)


def test_acks_of_an_old_connection_are_never_released_on_a_new_one() -> None:
    s = AckSequencer()
    s.received(1, 10)
    s.received(1, 11)
    assert s.received(2, 10)  # reconnect: the broker redelivers mid 10 (same packet id, new connection)
    assert s.done([(1, 10), (1, 11)]) == []  # generation-1 completions are dropped
    assert not s.received(1, 12)  # a straggler from generation 1 is stale
    assert s.done([(2, 10)]) == [(2, 10)]


# --- dead-letter store ---------------------------------------------------------------------------------------


def test_deadletter_store_commits_counts_and_truncates(tmp_path: Path) -> None:
    store = DeadLetterStore.in_dir(tmp_path / "data")
    big = b"z" * (MAX_STORED_PAYLOAD + 5000)
    n = store.add_many(
        [
            DeadLetter(NOW, "cityos/v1/gw-a/telemetry", b"{bad", "bad_json", "Expecting value"),
            DeadLetter(NOW + 1, "cityos/v1/gw-a/telemetry", big, "oversize", "too big"),
            DeadLetter(NOW + 2, "cityos/v1/gw-b/telemetry", b"{}", "schema", "readings: missing"),
        ]
    )
    assert n == 3
    store.add("cityos/v1/gw-b/telemetry", b"{}", "schema", "again")
    assert store.count_by_reason() == {"bad_json": 1, "oversize": 1, "schema": 2}
    store.close()

    reopened = DeadLetterStore(tmp_path / "data" / DeadLetterStore.FILENAME)  # survives a restart
    assert reopened.count() == 4
    (over,) = reopened.list(reason="oversize")
    assert len(over.payload) == MAX_STORED_PAYLOAD and over.payload_len == len(big) and over.truncated
    (first,) = reopened.list(reason="bad_json")
    assert first.payload == b"{bad" and first.topic == "cityos/v1/gw-a/telemetry" and first.received_at == NOW
    assert first.detail == "Expecting value" and not first.truncated
    assert reopened.add_many([]) == 0
    reopened.close()


# --- config --------------------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ingest.toml"
    p.write_text(text)
    return p


GOOD_TOML = """
[mqtt]
host = "broker.local"
port = 8883
ca_file = "/etc/cityos/ca.crt"
cert_file = "/etc/cityos/ingest.crt"
key_file = "/etc/cityos/ingest.key"
client_id = "ingest-1"
share_group = "ingest"

[influx]
url = "http://influx:8086/"
db = "tsuyama"
username = "cityos_ingest"
password_file = "/etc/cityos/influx-ingest.password"
batch_lines = 2000

[ingest]
data_dir = "/var/lib/cityos-ingest"
stall_after_s = 15
health_port = 9108
"""


def test_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD_TOML))
    assert cfg.mqtt.port == 8883 and cfg.mqtt.session_expiry_s == 7 * 24 * 3600
    assert cfg.mqtt.receive_maximum == 10000 and cfg.mqtt.keepalive == 30
    assert cfg.influx.url == "http://influx:8086" and cfg.influx.batch_lines == 2000
    assert cfg.influx.flush_interval_s == 1.0 and cfg.influx.gzip is True
    assert cfg.ingest.data_dir == Path("/var/lib/cityos-ingest") and cfg.ingest.stall_after_s == 15
    assert cfg.ingest.max_past_s == wire.DEFAULT_MAX_PAST_S
    assert cfg.mqtt.filters() == [
        "$share/ingest/" + wire.TELEMETRY_FILTER,
        "$share/ingest/" + wire.STATUS_FILTER,
        "$share/ingest/" + wire.PROBE_FILTER,
    ]
    # Secrets live in 0600 files the config points at; a password written into the config is refused.
    for section in ("mqtt", "influx"):
        with pytest.raises(ConfigError, match=rf"{section}.password: unknown key"):
            load_config(_write(tmp_path, GOOD_TOML.replace(f"[{section}]\n", f"[{section}]\npassword = 'pw'\n")))
    # to_toml round-trips (used to start the service as a subprocess)
    again = load_config(_write(tmp_path, cfg.to_toml()))
    assert again == cfg


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            ("batch_lines = 2000", 'batch_lines = "many"'),
            "influx.batch_lines: Input should be a valid integer",
        ),
        (("port = 8883", "port = 70000"), "mqtt.port: Input should be less than or equal to 65535"),
        (('host = "broker.local"', 'hots = "broker.local"'), "mqtt.hots: unknown key"),
        (('data_dir = "/var/lib/cityos-ingest"', ""), "ingest.data_dir: required setting is missing"),
        (('share_group = "ingest"', 'share_group = "a/b"'), "mqtt.share_group: Value error, must be 1-64"),
        (('url = "http://influx:8086/"', 'url = "influx:8086"'), "influx.url: Value error, must start with"),
        (
            ("stall_after_s = 15", "stall_after_s = -1"),
            "ingest.stall_after_s: Input should be greater than 0",
        ),
        (("[influx]", "[influx]\ngzip = 3"), "influx.gzip: Input should be a valid boolean"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, patch: tuple[str, str], expected: str) -> None:
    text = GOOD_TOML.replace(*patch)
    assert text != GOOD_TOML
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    assert expected in str(exc.value)


def test_config_unknown_section_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"grafana: unknown key"):
        load_config(_write(tmp_path, GOOD_TOML + "\n[grafana]\nurl = 'x'\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[mqtt\nhost="))


def test_config_from_stack(stack_info) -> None:
    """The stack's ingest config: its own certificate (svc.ingest) and the write-only InfluxDB user."""
    cfg = ingest_config(stack_info, "/tmp/x", client_id="c1", db="other", ingest={"stall_after_s": 2})
    assert cfg.mqtt.client_id == "c1" and cfg.mqtt.tls and cfg.mqtt.username is None
    assert cfg.mqtt.cert_file is not None and cfg.mqtt.cert_file.name == "svc.ingest.crt"
    assert cfg.influx.db == "other" and cfg.influx.username == "cityos_ingest"
    assert cfg.influx.password_file is not None and cfg.influx.password_file.stat().st_mode & 0o077 == 0
    assert cfg.ingest.stall_after_s == 2
    with pytest.raises(ConfigError, match=r"ingest.bogus: unknown key"):
        ingest_config(stack_info, "/tmp/x", ingest={"bogus": 1})


# --- InfluxDB response classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "outcome", "message"),
    [
        (204, "", "ok", ""),
        (
            400,
            '{"error":"partial write: field type conflict: input field \\"x\\" on measurement \\"forest\\" is '
            'type boolean, already exists as type float dropped=1"}',
            "bad_data",
            "partial write: field type",
        ),
        (400, '{"error":"unable to parse \'bad line\': missing fields"}', "bad_data", "unable to parse"),
        (401, '{"error":"authorization failed"}', "auth", "authorization failed"),
        (
            403,
            '{"error":"user \\"x\\" is not authorized to write to database \\"d\\""}',
            "auth",
            "not authorized",
        ),
        (404, '{"error":"database not found: \\"nope\\""}', "db_not_found", "database not found"),
        (413, "", "too_large", "request entity too large"),
        (500, '{"error":"timeout"}', "server_error", "timeout"),
        (503, "Service Unavailable", "server_error", "Service Unavailable"),
        (302, "", "other", "HTTP 302"),
    ],
)
def test_classify(status: int, body: str, outcome: str, message: str) -> None:
    got, msg = classify(status, body)
    assert got == outcome and message in msg


def test_writer_connection_refused_and_timeout_are_retryable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with InfluxClient(f"http://127.0.0.1:{port}", "db", timeout_s=2) as w:
        r = w.write(b"m f=1 1")
    assert r.outcome == "connection" and r.retryable and not r.ok and r.status is None

    with socket.socket() as srv:  # accepts the TCP connection (backlog) but never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(5)
        with InfluxClient(f"http://127.0.0.1:{srv.getsockname()[1]}", "db", timeout_s=0.3) as w:
            r = w.write(b"m f=1 1")
    assert r.outcome == "timeout" and r.retryable


# --- decoding ------------------------------------------------------------------------------------------------


def _batch(gw: str = "gw-a", n: int = 3, ts: int = NOW, **values: object) -> wire.TelemetryBatch:
    vals = values or {"temp_c": 21.5, "ok": True, "note": 'say "hi" \\ bye'}
    readings = [
        wire.Reading(device_id=f"d{i}", kind="forest_station", ts=ts + i, values=vals) for i in range(n)
    ]
    return wire.checked(wire.TelemetryBatch(gateway_id=gw, boot_id="boot-0001", seq=1, sent_at=ts, readings=readings))


def test_decode_message_telemetry() -> None:
    b = _batch()
    d = decode_message(wire.telemetry_topic("gw-a"), wire.encode_batch(b), now_ms=NOW)
    assert d is not None and d.kind == "telemetry" and d.n_lines == 3
    assert d.body.decode().split("\n") == lineproto.batch_to_lines(b)


def _payload(**overrides: object) -> bytes:
    doc = json.loads(wire.encode_batch(_batch()))
    doc.update(overrides)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("cityos/v1/gw-a/telemetry", b"{nope", "bad_json"),
        ("cityos/v1/gw-a/telemetry", b"[1, 2]", "schema"),
        ("cityos/v1/gw-a/telemetry", _payload(readings=[]), "schema"),
        ("cityos/v1/gw-a/telemetry", _payload(v=2), "unsupported_version"),
        ("cityos/v1/gw-a/telemetry", b" " * (wire.MAX_PAYLOAD_BYTES + 1), "oversize"),
        ("cityos/v1/gw-b/telemetry", _payload(), "gateway_mismatch"),
        ("cityos/v1/GW_A/telemetry", _payload(), "bad_topic"),
        ("cityos/v1/gw-a/telemetry", wire.encode_batch(_batch(ts=NOW + 3_600_000)), "timestamp_out_of_range"),
        ("cityos/v1/gw-a/telemetry", _payload().replace(b'"temp_c": 21.5', b'"temp_c": NaN'), "bad_json"),
        (
            "cityos/v1/gw-a/telemetry",
            _payload().replace(b'"temp_c": 21.5', b'"temp_c": "x\\ud800"'),
            "schema",
        ),
    ],
)
def test_decode_message_reasons(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(wire.ContractError) as exc:
        decode_message(topic, payload, now_ms=NOW)
    assert exc.value.reason == reason


def _status(**kw: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "v": 1,
        "gateway_id": "gw-a",
        "state": "online",
        "boot_id": "boot-0001",
        "ts": NOW,
        "agent_version": '0.1 "beta"',
        "config_hash": "abc123",
        "backlog_depth": 12,
        "backlog_age_s": 3.5,
        "counters": {"published": 10, "dropped": 0.0},
    }
    doc.update(kw)
    return doc


def test_status_message_becomes_a_gateway_status_point() -> None:
    topic = wire.status_topic("gw-a")
    d = decode_message(topic, json.dumps(_status()).encode(), now_ms=NOW)
    assert d is not None and d.kind == "status" and d.n_lines == 1
    assert d.body.decode() == (
        f'{lineproto.STATUS_MEASUREMENT},gateway=gw-a agent_version="0.1 \\"beta\\"",backlog_age_s=3.5,'
        f'backlog_depth=12.0,boot_id="boot-0001",c_dropped=0.0,c_published=10.0,config_hash="abc123",'
        f'state="online" {NOW}'
    )
    minimal = wire.decode_status(
        topic,
        json.dumps(
            _status(
                agent_version=None,
                config_hash=None,
                backlog_depth=None,
                backlog_age_s=None,
                counters={},
                state="offline",
            )
        ).encode(),
        now_ms=NOW,
    )
    assert (
        lineproto.status_to_line(minimal)
        == f'{lineproto.STATUS_MEASUREMENT},gateway=gw-a boot_id="boot-0001",state="offline" {NOW}'
    )
    assert decode_message(topic, b"", now_ms=NOW) is None  # a cleared retained status


@pytest.mark.parametrize(
    ("topic", "doc", "reason"),
    [
        ("cityos/v1/gw-b/status", _status(), "gateway_mismatch"),
        ("cityos/v1/gw-a/status", _status(state="asleep"), "schema"),
        ("cityos/v1/gw-a/status", _status(v=3), "unsupported_version"),
        ("cityos/v1/gw-a/status", _status(ts=NOW + 86_400_000), "timestamp_out_of_range"),
        ("cityos/v1/gw-a/status", [1], "schema"),
    ],
)
def test_status_reasons(topic: str, doc: object, reason: str) -> None:
    with pytest.raises(wire.ContractError) as exc:
        decode_message(topic, json.dumps(doc).encode(), now_ms=NOW)
    assert exc.value.reason == reason
    with pytest.raises(wire.ContractError) as exc:
        wire.decode_status("cityos/v1/gw-a/status", b"{x", now_ms=NOW)
    assert exc.value.reason == "bad_json"


def test_decode_chunk_results() -> None:
    good = wire.encode_batch(_batch())
    res = decode_chunk(
        [
            (wire.telemetry_topic("gw-a"), good),
            (wire.telemetry_topic("gw-a"), b"{"),
            (wire.status_topic("gw-a"), b""),
        ],
        NOW,
    )
    assert res[0][0] == "ok" and res[0][2] == 3 and res[0][3] == "telemetry"
    assert res[1][0] == "dead" and res[1][1] == "bad_json"
    assert res[2] == ("skip",)


def test_decode_chunk_never_raises() -> None:
    """wire.decode_batch lets json.loads' RecursionError through for deeply nested JSON (well under the size
    limit): one poison message must not take its chunk, or the ack order behind it, down with it."""
    topic = wire.telemetry_topic("gw-a")
    res = decode_chunk([(topic, b"[" * 200_000), (topic, wire.encode_batch(_batch()))], NOW)
    assert res[0] == ("dead", "bad_json", "JSON nested too deeply")
    assert res[1][0] == "ok"


# --- wire.decode_batch's fast (JSON-mode) path must be indistinguishable from its checked path ---------------


def _tricky_payloads() -> list[tuple[str, bytes]]:
    base = json.loads(wire.encode_batch(_batch()))
    for r in base["readings"]:  # defaults written out, for the cases below to change
        r.setdefault("units", {})
        r.setdefault("backfill", False)
    out = []

    def dump(d: object) -> bytes:
        return json.dumps(d).encode()

    out.append(("v true", dump({**base, "v": True})))
    out.append(("v 1.0", dump({**base, "v": 1.0})))
    out.append(('v "1"', dump({**base, "v": "1"})))
    out.append(("v missing", dump({k: v for k, v in base.items() if k != "v"})))
    raw = dump(base)
    out.append(("duplicate key", raw.replace(b'"seq": 1', b'"seq": 1, "seq": 2')))
    out.append(("duplicate value key", raw.replace(b'"temp_c": 21.5', b'"temp_c": 21.5, "temp_c": false')))
    out.append(("utf-16", raw.decode().encode("utf-16")))
    out.append(("utf-8 bom", b"\xef\xbb\xbf" + raw))
    out.append(("whitespace", b" \n" + raw + b"\n "))
    out.append(("trailing garbage", raw + b"x"))
    out.append(("ts as float", raw.replace(f'"ts": {NOW}'.encode(), f'"ts": {NOW}.0'.encode())))
    out.append(("ts as string", raw.replace(f'"ts": {NOW}'.encode(), f'"ts": "{NOW}"'.encode())))
    out.append(("ts fraction", raw.replace(f'"ts": {NOW}'.encode(), f'"ts": {NOW}.5'.encode())))
    out.append(("seq bool", dump({**base, "seq": True})))
    out.append(("int value", raw.replace(b'"temp_c": 21.5', b'"temp_c": 5')))
    out.append(
        ("huge int value", raw.replace(b'"temp_c": 21.5', b'"temp_c": 123456789012345678901234567890'))
    )
    out.append(("1e400", raw.replace(b'"temp_c": 21.5', b'"temp_c": 1e400')))
    out.append(("Infinity", raw.replace(b'"temp_c": 21.5', b'"temp_c": -Infinity')))
    out.append(("null value", raw.replace(b'"temp_c": 21.5', b'"temp_c": null')))
    out.append(("surrogate pair", raw.replace(b'"temp_c": 21.5', b'"temp_c": "\\ud83d\\ude00"')))
    out.append(("lone surrogate", raw.replace(b'"temp_c": 21.5', b'"temp_c": "\\udc00"')))
    out.append(("NUL in string", raw.replace(b'"temp_c": 21.5', b'"temp_c": "a\\u0000b"')))
    out.append(("raw control char", raw.replace(b'"temp_c": 21.5', b'"temp_c": "a\tb"')))
    out.append(("bool as string", raw.replace(b'"ok": true', b'"ok": "true"')))
    out.append(("backfill 1", raw.replace(b'"backfill": false', b'"backfill": 1')))
    out.append(("backfill yes", raw.replace(b'"backfill": false', b'"backfill": "yes"')))
    out.append(("units without value", raw.replace(b'"units": {}', b'"units": {"zz": "C"}')))
    out.append(("extra key", dump({**base, "extra": 1})))
    out.append(("v 0", dump({**base, "v": 0})))
    out.append(("newline in id", raw.replace(b'"d0"', b'"d0\\n"')))
    out.append(("newline in value name", raw.replace(b'"temp_c": 21.5', b'"temp_c\\n": 21.5')))
    out.append(("not an object", b"[]"))
    out.append(("empty", b""))
    assert raw not in {p for _, p in out} and len({p for _, p in out}) == len(out)  # each case changes it
    return out


def _checked(topic: str, payload: bytes, *, now_ms: int) -> wire.TelemetryBatch:
    return wire._decode_checked(
        topic, payload, now_ms=now_ms, max_past_s=wire.DEFAULT_MAX_PAST_S, max_future_s=wire.DEFAULT_MAX_FUTURE_S
    )


def _reference_lines(batch: wire.TelemetryBatch) -> list[str]:
    """Line protocol written out plainly from the InfluxDB docs, to check the contract's optimised builder."""

    def field(v: object) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(float(v))  # type: ignore[arg-type]

    out = []
    for r in batch.readings:
        tags = sorted({"device": r.device_id, "gateway": batch.gateway_id}.items())
        fields = [f"{k}={field(v)}" for k, v in r.values.items()]
        fields.append(f"backfill={str(r.backfill).lower()}")
        meas = wire.measurement_for(r.kind)
        out.append(meas + "".join(f",{k}={v}" for k, v in tags) + " " + ",".join(fields) + f" {r.ts}")
    return out


def _outcome(fn, topic: str, payload: bytes) -> tuple[str, object]:
    try:
        return "ok", fn(topic, payload, now_ms=NOW)
    except wire.ContractError as exc:
        return "err", (exc.reason, exc.detail)


@pytest.mark.parametrize(
    ("name", "payload"), _tricky_payloads(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_fast_decode_equals_checked_decode_on_edge_cases(name: str, payload: bytes) -> None:
    topic = wire.telemetry_topic("gw-a")
    assert _outcome(wire.decode_batch, topic, payload) == _outcome(_checked, topic, payload)


def _random_value(rng: random.Random) -> object:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice([True, False])
    if kind == 1:
        return "".join(rng.choice(string.printable + 'é"\\\n\u3042') for _ in range(rng.randrange(0, 12)))
    if kind == 2:
        return rng.choice([0.0, -0.0, 1e-300, 1.7976931348623157e308, 5e-324, -12.0, 1e16, 123456789.125])
    if kind == 3:
        return rng.randrange(-(10**6), 10**6)  # ints become floats
    return rng.uniform(-1e6, 1e6)


def test_fast_path_matches_wire_on_random_batches() -> None:
    rng = random.Random(20260401)
    kinds = ["forest_station", "gateway_health", "water_level", "bus_stop"]
    for _ in range(300):
        gw = f"gw-{rng.randrange(100)}"
        readings = []
        for i in range(rng.randrange(1, 20)):
            names = rng.sample(["a", "b2", "temp_c", "z_last", "m", "battery_v", "s"], rng.randrange(1, 7))
            readings.append(
                {
                    "device_id": f"dev-{rng.randrange(50)}",
                    "kind": rng.choice(kinds),
                    "ts": NOW - rng.randrange(0, 10**9) + i,
                    "values": {n: _random_value(rng) for n in names},
                }
            )
        doc = {
            "v": 1,
            "gateway_id": gw,
            "boot_id": "boot-xyz-01",
            "seq": rng.randrange(10**6),
            "sent_at": NOW,
            "readings": readings,
        }
        payload = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        topic = wire.telemetry_topic(gw if rng.random() < 0.95 else "other-gw")
        fast, slow = _outcome(wire.decode_batch, topic, payload), _outcome(_checked, topic, payload)
        assert fast == slow
        if slow[0] == "ok":
            sig: set[tuple[str, str, str]] = set()
            assert lineproto.batch_to_lines(slow[1], sig) == _reference_lines(slow[1])  # type: ignore[arg-type]
            names = {float: "float", int: "float", bool: "boolean", str: "string"}
            assert sig == {(wire.measurement_for(r.kind), k, names[type(v)])  # the field-type check's input
                           for r in slow[1].readings for k, v in r.values.items()}  # type: ignore[union-attr]
            d = decode_message(topic, payload, now_ms=NOW)
            assert d is not None and d.body == "\n".join(lineproto.batch_to_lines(slow[1])).encode()  # type: ignore[arg-type]


# --- health --------------------------------------------------------------------------------------------------


def test_stall_flag() -> None:
    now = [1_000_000]
    h = Health(stall_after_s=30, clock_ms=lambda: now[0])
    assert h.snapshot()["stalled"] is False
    h.on_pending(2, 400)  # messages start waiting
    now[0] += 29_000
    assert h.snapshot()["stalled"] is False
    now[0] += 1_000
    snap = h.snapshot()
    assert snap["stalled"] is True and snap["pending"] == 2 and snap["pending_points"] == 400
    h.on_write_ok(200, 12.0)
    h.on_done(1, 200)
    assert h.snapshot()["stalled"] is False  # a write just succeeded
    now[0] += 31_000
    assert h.snapshot()["stalled"] is True  # still waiting, nothing written for 31 s
    h.on_done(1, 200)
    assert h.snapshot()["stalled"] is False  # nothing waiting

    # an idle night then one message: the clock runs from when it started waiting, not from the last write
    now[0] += 8 * 3600 * 1000
    h.on_pending(1, 1)
    now[0] += 500
    assert h.snapshot()["stalled"] is False


def test_stall_counts_queued_and_decoding_messages_too() -> None:
    now = [0]
    queued = [0]
    h = Health(stall_after_s=5, clock_ms=lambda: now[0], queued=lambda: queued[0])
    queued[0] = 3
    assert h.snapshot()["stalled"] is False
    now[0] += 6000
    snap = h.snapshot()
    assert snap["stalled"] is True and snap["queued"] == 3
    queued[0] = 0
    assert h.snapshot()["stalled"] is False
    h.on_decoding(64)  # e.g. a wedged decode worker
    h.snapshot()
    now[0] += 6000
    snap = h.snapshot()
    assert snap["stalled"] is True and snap["decoding"] == 64
    h.on_decoding(-64)
    assert h.snapshot()["stalled"] is False


def test_stall_flags_a_hole_in_the_ack_order() -> None:
    unacked = [(0, 0.0)]
    h = Health(stall_after_s=30, unacked=lambda: unacked[0])
    h.on_write_ok(100, 5.0)  # writes keep succeeding ...
    unacked[0] = (1200, 29.0)
    assert h.snapshot()["stalled"] is False
    unacked[0] = (1200, 31.0)  # ... but one message has not completed for 31 s: every ack behind it waits
    snap = h.snapshot()
    assert snap["stalled"] is True and snap["unacked"] == 1200 and snap["oldest_unacked_s"] == 31.0


def test_health_counters_and_latency_percentiles(tmp_path: Path) -> None:
    h = Health(stall_after_s=30)
    h.on_connected()
    h.on_received(5)
    for ms in range(1, 101):
        h.on_write_ok(10, float(ms))
    h.on_write_error("server_error", "HTTP 503", 3.0)
    h.on_write_error("connection", "refused", 1.0)
    h.on_dead_letter("bad_json")
    h.on_dead_letter("bad_json")
    h.on_acked(4)
    s = h.snapshot()
    assert (
        s["connected"] and s["reconnects"] == 0 and s["messages_received"] == 5 and s["messages_acked"] == 4
    )
    assert s["points_written"] == 1000 and s["write_requests"] == 102
    assert s["write_errors"] == {"server_error": 1, "connection": 1} and s["write_errors_total"] == 2
    assert s["dead_lettered"] == {"bad_json": 2} and s["dead_lettered_total"] == 2
    assert s["write_latency_ms"]["last"] == 100.0
    assert 49 <= s["write_latency_ms"]["p50"] <= 52 and 94 <= s["write_latency_ms"]["p95"] <= 97
    assert s["last_successful_write"] is not None and s["last_error"]["kind"] == "connection"
    h.on_disconnected()
    h.on_connected()
    assert h.snapshot()["reconnects"] == 1
    assert "points=1000" in h.summary_line()

    path = tmp_path / "health.json"
    write_health_file(path, s)
    assert read_health_file(path) == json.loads(json.dumps(s))
    assert [p.name for p in tmp_path.iterdir()] == ["health.json"]  # no temp file left behind
    assert read_health_file(tmp_path / "missing.json") is None


def test_health_http_endpoint() -> None:
    now = [0]
    h = Health(stall_after_s=1, clock_ms=lambda: now[0])
    srv = HealthServer(h, 0).start()
    try:
        url = f"http://127.0.0.1:{srv.port}/health"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["stalled"] is False
        h.on_pending(1, 1)
        now[0] += 2000
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(url, timeout=5)
        assert exc.value.code == 503 and json.loads(exc.value.read())["stalled"] is True
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(f"http://127.0.0.1:{srv.port}/other", timeout=5)
        assert exc.value.code == 404
    finally:
        srv.stop()


def test_health_is_thread_safe() -> None:
    h = Health()

    def work() -> None:
        for _ in range(2000):
            h.on_received()
            h.on_pending(1, 2)
            h.on_done(1, 2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = h.snapshot()
    assert s["messages_received"] == 8000 and s["pending"] == 0 and s["pending_points"] == 0
    assert time.time() * 1000 >= s["ts"]
