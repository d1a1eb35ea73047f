"""The ingest's Prometheus metrics (``GET /metrics`` on the health server): what a scrape shows after known events,
parsed with prometheus_client's own parser; and once against a running ingest on the private stack."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from ingest_helpers import ingest_config, retained_statuses, running_ingest, uid, wait_for
from prometheus_client.parser import text_string_to_metric_families

from citylab.stack import Stack, mqtt_client
from cityos import influx, wire
from ingest.decode import decode_message
from ingest.health import (
    DEAD_LETTER_REASONS,
    METRICS_CONTENT_TYPE,
    WRITE_ERROR_KINDS,
    Health,
    HealthServer,
)

REPO = Path(__file__).resolve().parent.parent
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(h: Health) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return scrape_text(h.metrics_text().decode())


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


def test_counters_equal_the_events_health_saw() -> None:
    clock = Clock()
    h = Health(30, clock_ms=clock, queued=lambda: 4, unacked=lambda: (7, 2.5), session="cityos-ingest.host-a.0")
    h.on_connected()
    h.on_subscribed(True)
    h.on_disconnected()
    h.on_connected()
    h.on_received(120)
    h.on_stale(3)
    h.on_status(2)
    h.on_pending(5, 50)
    h.on_acked(100)
    h.on_worker_restart()
    h.on_write_ok(500, 40.0)
    h.on_write_ok(700, 60.0)
    h.on_write_error("timeout", "read timed out", 10_000.0)
    h.on_write_error("server_error", "HTTP 503", 5.0)
    h.on_write_error("server_error", "HTTP 503", 5.0)
    h.on_write_error("bad_data", "partial write", 8.0)

    m = scrape(h)
    assert value(m, "cityos_ingest_messages_received_total") == 120
    assert value(m, "cityos_ingest_messages_acked_total") == 100
    assert value(m, "cityos_ingest_messages_stale_total") == 3
    assert value(m, "cityos_ingest_status_messages_total") == 2
    assert value(m, "cityos_ingest_points_written_total") == 1200
    assert value(m, "cityos_ingest_batches_written_total") == 2
    assert value(m, "cityos_ingest_write_requests_total") == 6
    assert value(m, "cityos_ingest_write_errors_total", kind="timeout") == 1
    assert value(m, "cityos_ingest_write_errors_total", kind="server_error") == 2
    assert value(m, "cityos_ingest_write_errors_total", kind="bad_data") == 1
    assert value(m, "cityos_ingest_write_errors_total", kind="auth") == 0  # every kind, from the start
    assert value(m, "cityos_ingest_connects_total") == 2
    assert value(m, "cityos_ingest_decode_worker_restarts_total") == 1
    assert value(m, "cityos_ingest_connected") == 1 and value(m, "cityos_ingest_subscribed") == 0
    assert value(m, "cityos_ingest_queued_messages") == 4
    assert value(m, "cityos_ingest_pending_messages") == 5 and value(m, "cityos_ingest_pending_points") == 50
    assert value(m, "cityos_ingest_unacked_messages") == 7
    assert value(m, "cityos_ingest_oldest_unacked_age_seconds") == 2.5
    assert value(m, "cityos_ingest_last_successful_write_timestamp_seconds") == clock.ms / 1000
    assert value(m, "cityos_ingest_start_time_seconds") == clock.ms / 1000
    assert value(m, "cityos_ingest_info", session="cityos-ingest.host-a.0") == 1
    # the JSON snapshot and the metrics are the same bookkeeping
    snap = h.snapshot()
    assert snap["messages_received"] == 120 and snap["writes_ok"] == 2


def test_help_text_and_types() -> None:
    families = {f.name: f for f in text_string_to_metric_families(Health().metrics_text().decode())}
    for name in ("messages_received", "messages_acked", "points_written", "dead_letters", "write_errors",
                 "batches_written", "write_requests"):
        f = families[f"cityos_ingest_{name}"]
        assert f.type == "counter" and len(f.documentation) > 20, name
    for name in ("connected", "subscribed", "queued_messages", "unacked_messages", "oldest_unacked_age_seconds",
                 "stalled", "last_successful_write_timestamp_seconds"):
        f = families[f"cityos_ingest_{name}"]
        assert f.type == "gauge" and len(f.documentation) > 10, name
    assert families["cityos_ingest_write_latency_seconds"].type == "histogram"
    assert families["cityos_ingest_info"].type in ("info", "gauge")
    assert all(n.startswith("cityos_ingest_") for n in families)
    # no sample for the last successful write before there was one
    assert not families["cityos_ingest_last_successful_write_timestamp_seconds"].samples


def test_dead_letters_by_reason_with_a_fixed_label_set() -> None:
    h = Health()
    for reason, n in {"schema": 3, "bad_json": 1, "influx_rejected": 2, "field_type_conflict": 1}.items():
        h.on_dead_letter(reason, n)
    h.on_dead_letter("something_new")  # a reason a later change might add without updating the list
    m = scrape(h)
    got = {dict(k[1])["reason"]: v for k, v in m.items() if k[0] == "cityos_ingest_dead_letters_total"}
    assert got == {**dict.fromkeys(DEAD_LETTER_REASONS, 0.0), "schema": 3, "bad_json": 1, "influx_rejected": 2,
                   "field_type_conflict": 1, "other": 1}
    # the only labels anywhere: reason, kind, le (the histogram), session: nothing from a topic or a device
    names = {k for _, labels in m for k, _ in labels}
    assert names == {"reason", "kind", "le", "session"}


def test_the_reasons_are_every_reason_the_ingest_dead_letters_with() -> None:
    """DEAD_LETTER_REASONS is a copy (so the label set is fixed): it must hold every reason the code can give."""
    used = set(re.findall(r'ContractError\(\s*"([a-z_]+)"', (REPO / "cityos/wire.py").read_text()))
    for f in (REPO / "ingest").glob("*.py"):
        src = f.read_text()
        used |= set(re.findall(r'ContractError\(\s*"([a-z_]+)"', src))
        used |= set(re.findall(r'on_dead_letter\(\s*"([a-z_]+)"', src))
        used |= set(re.findall(r'DeadLetter\([^()]*"([a-z_]+)"', src))
        used |= set(re.findall(r'\("dead",\s*"([a-z_]+)"', src))
    assert used >= {"bad_json", "schema", "field_type_conflict", "influx_rejected", "decode_error"}
    assert used == set(DEAD_LETTER_REASONS)
    assert set(WRITE_ERROR_KINDS) == influx.RETRYABLE | influx.REJECTED


def test_stalled_flips_to_1_while_the_stall_condition_holds_and_back_to_0() -> None:
    clock = Clock()
    unacked = [(0, 0.0)]
    h = Health(30, clock_ms=clock, unacked=lambda: unacked[0])
    stalled = lambda: value(scrape(h), "cityos_ingest_stalled")  # noqa: E731

    assert stalled() == 0
    h.on_pending(10, 100)  # messages wait to be written...
    clock.ms += 29_000
    assert stalled() == 0
    clock.ms += 2_000  # ...and nothing was written for stall_after_s
    assert stalled() == 1
    h.on_write_ok(100, 25.0)
    h.on_done(10, 100)
    assert stalled() == 0
    unacked[0] = (1, 31.0)  # a message that never completes holds back every ack after it
    assert stalled() == 1
    unacked[0] = (0, 0.0)
    assert stalled() == 0


def test_latency_histogram_counts_every_successful_write() -> None:
    h = Health()
    latencies_ms = [3.0, 7.0, 20.0, 20.0, 80.0, 400.0, 1500.0, 12_000.0]
    for ms in latencies_ms:
        h.on_write_ok(10, ms)
    h.on_write_error("timeout", "no answer", 10_000.0)  # not a write: not in the histogram
    m = scrape(h)
    count = value(m, "cityos_ingest_write_latency_seconds_count")
    assert count == len(latencies_ms) == value(m, "cityos_ingest_batches_written_total")
    assert value(m, "cityos_ingest_write_latency_seconds_sum") == pytest.approx(sum(latencies_ms) / 1000)
    bucket = lambda le: value(m, "cityos_ingest_write_latency_seconds_bucket", le=le)  # noqa: E731
    assert (bucket("0.005"), bucket("0.025"), bucket("0.1"), bucket("10.0"), bucket("+Inf")) == (1, 4, 5, 7, 8)
    # each Health has a registry of its own: a second one starts from zero
    assert value(scrape(Health()), "cityos_ingest_write_latency_seconds_count") == 0


def get(url: str) -> tuple[int, str, str]:
    try:
        with _NO_PROXY.open(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_one_server_answers_health_and_metrics() -> None:
    clock = Clock()
    h = Health(30, clock_ms=clock, session="s.h.0")
    server = HealthServer(h, 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        h.on_received(5)
        status, ctype, body = get(f"{base}/metrics")
        assert status == 200 and ctype == METRICS_CONTENT_TYPE and ctype.startswith("text/plain; version=0.0.4")
        assert value(scrape_text(body), "cityos_ingest_messages_received_total") == 5
        status, ctype, body = get(f"{base}/health")
        assert status == 200 and ctype == "application/json" and json.loads(body)["messages_received"] == 5
        h.on_pending(1, 1)
        clock.ms += 31_000
        assert get(f"{base}/health")[0] == 503  # stalled: /health says it with its status...
        status, _, body = get(f"{base}/metrics")  # ...and /metrics with a value (a scrape must not fail)
        assert status == 200 and value(scrape_text(body), "cityos_ingest_stalled") == 1
        assert get(f"{base}/other")[0] == 404
    finally:
        server.stop()


# --- against a running ingest --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_of_a_running_ingest(stack: Stack, influx_db: str, tmp_path: Path) -> None:
    info = stack.info()
    now = int(time.time() * 1000)
    foreign = retained_statuses(info)
    foreign_points, foreign_dead = 0, Counter()
    for t, p in foreign:
        try:
            foreign_points += decode_message(t, p, now_ms=now) is not None
        except wire.ContractError as exc:
            foreign_dead[exc.reason] += 1

    gw = f"gw-{uid()}"
    port = _free_port()
    cfg = ingest_config(info, tmp_path, influx_db, ingest={"health_port": port, "decode_workers": 0},
                        influx={"flush_interval_s": 0.2})
    batches = [
        wire.TelemetryBatch(gateway_id=gw, boot_id="boot-metrics", seq=k, sent_at=now, readings=[
            wire.Reading(device_id=f"dev-{i}", kind="forest_station", ts=now - 60_000 + k * 10 + i, values={"v": 1.5})
            for i in range(5)
        ])
        for k in range(12)
    ]
    payloads = [wire.encode_batch(b) for b in batches] + [b'{"v": 1, "gateway_id": ']  # + one bad_json
    pub = mqtt_client(info, "dev.tools", client_id=f"test-pub-{uid()}")
    pub.connect(info.mqtt_host, info.mqtt_port)
    pub.loop_start()
    try:
        with running_ingest(cfg) as svc:
            for p in payloads:
                pub.publish(wire.telemetry_topic(gw), p, qos=1).wait_for_publish(10)
            total = len(payloads) + len(foreign)
            h = svc.health
            wait_for(lambda: h.messages_acked >= total and h.pending == 0, 10, "every message acked")
            status, ctype, body = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        pub.disconnect()
        pub.loop_stop()

    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    m = scrape_text(body)
    assert value(m, "cityos_ingest_messages_received_total") == total
    assert value(m, "cityos_ingest_messages_acked_total") == total
    assert value(m, "cityos_ingest_points_written_total") == 12 * 5 + foreign_points
    assert value(m, "cityos_ingest_dead_letters_total", reason="bad_json") == 1 + foreign_dead["bad_json"]
    writes = value(m, "cityos_ingest_batches_written_total")
    assert writes >= 1 and value(m, "cityos_ingest_write_latency_seconds_count") == writes
    assert value(m, "cityos_ingest_connected") == 1 and value(m, "cityos_ingest_subscribed") == 1
    assert value(m, "cityos_ingest_stalled") == 0 and value(m, "cityos_ingest_unacked_messages") == 0
    assert abs(value(m, "cityos_ingest_last_successful_write_timestamp_seconds") - time.time()) < 30
    assert value(m, "cityos_ingest_info", session=cfg.mqtt.session_id) == 1
    assert gw not in body  # no topic, no gateway or device id in any label
