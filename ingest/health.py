"""Health: counters, the stall flag, a JSON snapshot served on ``127.0.0.1:<health_port>/health`` and written
atomically to ``<data_dir>/health.json`` every second; the same counters in the Prometheus text format on
``/metrics`` of the same server (:class:`HealthCollector`, read at scrape time, plus the write latency histogram).

``stalled`` is the lesson from Telegraf's silent stalls: it is true when messages are waiting to be written and
nothing has been written successfully for ``stall_after_s`` seconds (counting from when they started waiting,
so an idle night followed by one slow write does not flag), or when the oldest unacknowledged message has waited
that long (a message that never completes holds back every ack after it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: Every reason the ingest dead-letters a message with: the wire contract's (``cityos.wire.ContractError``) and the
#: ingest's own. The ``reason`` label of ``cityos_ingest_dead_letters_total`` takes these values only (anything
#: else would be counted as ``other``), so its cardinality is fixed.
DEAD_LETTER_REASONS = (
    "bad_json", "schema", "unsupported_version", "oversize", "timestamp_out_of_range", "gateway_mismatch",
    "bad_topic", "field_type_conflict", "influx_rejected", "decode_error",
)
#: Outcomes of a failed ``/write`` (``cityos.influx.RETRYABLE`` | ``REJECTED``): the ``kind`` label's values.
WRITE_ERROR_KINDS = (
    "connection", "timeout", "server_error", "auth", "db_not_found", "other", "bad_data", "too_large",
)
#: Write latency buckets (seconds): from a small batch on a nearby InfluxDB (ms) to the default timeout (10 s).
WRITE_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The Prometheus text exposition format served on ``/metrics`` (the format every Prometheus version scrapes).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[k], 2)


class Health:
    """Thread-safe counters. All ``on_*`` methods are cheap (one lock, a few additions)."""

    def __init__(
        self,
        stall_after_s: float = 30.0,
        *,
        latency_window: int = 200,
        clock_ms: Callable[[], int] = _now_ms,
        queued: Callable[[], int] | None = None,
        unacked: Callable[[], tuple[int, float]] | None = None,
        session: str = "",
    ) -> None:
        self.stall_after_s = stall_after_s
        #: The MQTT client id (``MqttConfig.session_id``): the ``session`` label of ``cityos_ingest_info``.
        self.session = session
        self._clock_ms = clock_ms
        self._queued = queued or (lambda: 0)
        self._unacked = unacked or (lambda: (0, 0.0))
        self._lock = threading.Lock()
        self.started_at = clock_ms()
        self.connected = False
        self.subscribed = False
        self.connects = 0
        self.messages_received = 0
        self.messages_acked = 0
        self.messages_stale = (
            0  # received on a connection that has since dropped: not acked, broker redelivers
        )
        self.status_messages = 0
        self.decode_worker_restarts = 0
        self.points_written = 0
        self.write_requests = 0
        self.writes_ok = 0  # write requests answered 204
        self.write_errors: Counter[str] = Counter()
        self.dead_lettered: Counter[str] = Counter()
        self.last_write_latency_ms: float | None = None
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self.last_successful_write: int | None = None
        self.last_error: dict[str, Any] | None = None
        self.decoding = 0  # received messages handed to the decoder, results not yet taken
        self.pending = 0  # decoded messages not yet written (or dead-lettered)
        self.pending_points = 0
        self._waiting_since: int | None = None
        #: This ingest's own Prometheus registry (not the process-wide default one): the counters above, read at
        #: scrape time by :class:`HealthCollector`, and the write latency histogram, observed in on_write_ok.
        self.registry = CollectorRegistry()
        self.write_latency = Histogram(
            "cityos_ingest_write_latency_seconds",
            "Duration of the successful (HTTP 204) InfluxDB /write requests, in seconds",
            buckets=WRITE_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(HealthCollector(self))

    # --- events -----------------------------------------------------------------------------------------------
    def on_connected(self) -> None:
        with self._lock:
            self.connected = True
            self.connects += 1

    def on_disconnected(self) -> None:
        with self._lock:
            self.connected = False
            self.subscribed = False

    def on_subscribed(self, ok: bool) -> None:
        with self._lock:
            self.subscribed = ok

    def on_received(self, n: int = 1) -> None:
        with self._lock:
            self.messages_received += n

    def on_stale(self, n: int = 1) -> None:
        with self._lock:
            self.messages_stale += n

    def on_worker_restart(self) -> None:
        with self._lock:
            self.decode_worker_restarts += 1

    def on_status(self, n: int = 1) -> None:
        with self._lock:
            self.status_messages += n

    def on_decoding(self, messages: int) -> None:
        """Messages entered (positive) or left (negative) the decode stage."""
        with self._lock:
            self.decoding += messages

    def on_pending(self, messages: int, points: int) -> None:
        """Decoded messages entered the batcher."""
        with self._lock:
            if self.pending == 0 and self._waiting_since is None:
                self._waiting_since = self._clock_ms()
            self.pending += messages
            self.pending_points += points

    def on_done(self, messages: int, points: int) -> None:
        """Pending messages left memory (written, rejected into the dead-letter store, or dropped as stale)."""
        with self._lock:
            self.pending = max(0, self.pending - messages)
            self.pending_points = max(0, self.pending_points - points)
            if self.pending == 0 and self.decoding == 0:
                self._waiting_since = None

    def on_write_ok(self, points: int, latency_ms: float) -> None:
        with self._lock:
            self.write_requests += 1
            self.points_written += points
            self.last_write_latency_ms = round(latency_ms, 2)
            self._latencies.append(latency_ms)
            self.last_successful_write = self._clock_ms()
            self.writes_ok += 1
        self.write_latency.observe(latency_ms / 1000)

    def on_write_error(self, kind: str, message: str, latency_ms: float) -> None:
        with self._lock:
            self.write_requests += 1
            self.write_errors[kind] += 1
            self.last_error = {"kind": kind, "message": message[:500], "at": self._clock_ms()}

    def on_dead_letter(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dead_lettered[reason] += n

    def on_acked(self, n: int) -> None:
        with self._lock:
            self.messages_acked += n

    # --- reading ------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = self._clock_ms()
        queued = self._queued()
        unacked, oldest_unacked_s = self._unacked()
        with self._lock:
            waiting = self.pending + queued + self.decoding
            if waiting and self._waiting_since is None:
                self._waiting_since = now
            elif not waiting:
                self._waiting_since = None
            stalled = False
            if waiting and self._waiting_since is not None:
                ref = max(self.last_successful_write or 0, self._waiting_since)
                stalled = now - ref >= self.stall_after_s * 1000
            # A message that never completes (a hole in the ack order) holds back every ack after it, even while
            # other writes succeed: flag it too.
            stalled = stalled or oldest_unacked_s >= self.stall_after_s
            lat = sorted(self._latencies)
            return {
                "ts": now,
                "uptime_s": round((now - self.started_at) / 1000, 1),
                "connected": self.connected,
                "subscribed": self.subscribed,
                "connects": self.connects,
                "reconnects": max(0, self.connects - 1),
                "messages_received": self.messages_received,
                "messages_acked": self.messages_acked,
                "messages_stale": self.messages_stale,
                "status_messages": self.status_messages,
                "decode_worker_restarts": self.decode_worker_restarts,
                "points_written": self.points_written,
                "write_requests": self.write_requests,
                "writes_ok": self.writes_ok,
                "write_errors": dict(self.write_errors),
                "write_errors_total": sum(self.write_errors.values()),
                "dead_lettered": dict(self.dead_lettered),
                "dead_lettered_total": sum(self.dead_lettered.values()),
                "write_latency_ms": {
                    "last": self.last_write_latency_ms,
                    "p50": _percentile(lat, 0.50),
                    "p95": _percentile(lat, 0.95),
                    "window": len(lat),
                },
                "last_successful_write": self.last_successful_write,
                "pending": self.pending,
                "pending_points": self.pending_points,
                "queued": queued,
                "decoding": self.decoding,
                "unacked": unacked,
                "oldest_unacked_s": round(oldest_unacked_s, 1),
                "stalled": stalled,
                "stall_after_s": self.stall_after_s,
                "last_error": self.last_error,
            }

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition (:data:`METRICS_CONTENT_TYPE`) of this ingest's registry."""
        return generate_latest(self.registry)

    def summary_line(self, snap: dict[str, Any] | None = None) -> str:
        s = snap or self.snapshot()
        return (
            f"connected={s['connected']} received={s['messages_received']} acked={s['messages_acked']} "
            f"points={s['points_written']} requests={s['write_requests']} errors={s['write_errors_total']} "
            f"deadletter={s['dead_lettered_total']} pending={s['pending']} queued={s['queued']} "
            f"p95_ms={s['write_latency_ms']['p95']} stalled={s['stalled']} reconnects={s['reconnects']}"
        )


class HealthCollector(Collector):
    """The :class:`Health` counters as Prometheus metrics, read at scrape time (one snapshot per scrape): no second
    copy of the bookkeeping. Labels are bounded sets (dead-letter reasons, write error kinds) and the session id:
    never a topic, a device or gateway id, or anything from a credential."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def collect(self) -> list[Metric]:
        h = self._health
        s = h.snapshot()
        p = "cityos_ingest_"
        out: list[Metric] = []

        def counter(name: str, doc: str, value: float) -> None:
            out.append(CounterMetricFamily(p + name, doc, value=value))

        def gauge(name: str, doc: str, value: float) -> None:
            out.append(GaugeMetricFamily(p + name, doc, value=value))

        out.append(InfoMetricFamily(p[:-1], "This ingest process; session: its MQTT client id "
                                    "(<client_id>.<host_id>.<instance>)", value={"session": h.session}))
        gauge("start_time_seconds", "When this ingest process started (unix seconds)", h.started_at / 1000)
        counter("messages_received_total", "MQTT PUBLISH messages received from the broker, redeliveries included",
                s["messages_received"])
        counter("messages_acked_total", "PUBACKs sent: messages written to InfluxDB or stored as dead letters",
                s["messages_acked"])
        counter("messages_stale_total", "Messages received on a connection that has since dropped: not processed, "
                "the broker redelivers them", s["messages_stale"])
        counter("status_messages_total", "Valid gateway status messages written as gateway_status points",
                s["status_messages"])
        counter("points_written_total", "Points (line protocol lines) InfluxDB confirmed with HTTP 204",
                s["points_written"])
        counter("write_requests_total", "POST /write requests to InfluxDB, successful or not", s["write_requests"])
        counter("batches_written_total", "POST /write requests InfluxDB answered with 204 (batches and bisection "
                "halves stored)", s["writes_ok"])
        errors = CounterMetricFamily(
            p + "write_errors_total", "Failed POST /write requests by kind; bad_data and too_large are bisected "
            "down to the refused messages, every other kind is retried with backoff", labels=["kind"])
        for kind, n in _bounded(s["write_errors"], WRITE_ERROR_KINDS).items():
            errors.add_metric([kind], n)
        out.append(errors)
        dead = CounterMetricFamily(
            p + "dead_letters_total", "Messages stored in the dead-letter store (then acked), by reason",
            labels=["reason"])
        for reason, n in _bounded(s["dead_lettered"], DEAD_LETTER_REASONS).items():
            dead.add_metric([reason], n)
        out.append(dead)
        counter("connects_total", "Successful MQTT connections (CONNACK); each one after the first is a reconnect",
                s["connects"])
        counter("decode_worker_restarts_total", "Decode worker processes replaced after one died",
                s["decode_worker_restarts"])
        gauge("connected", "1 while the MQTT connection is up", 1.0 if s["connected"] else 0.0)
        gauge("subscribed", "1 once the broker acknowledged the subscriptions on the current connection",
              1.0 if s["subscribed"] else 0.0)
        gauge("queued_messages", "Messages received and waiting to be decoded", s["queued"])
        gauge("decoding_messages", "Messages in the decode stage", s["decoding"])
        gauge("pending_messages", "Decoded messages waiting to be written to InfluxDB", s["pending"])
        gauge("pending_points", "Points of the pending messages", s["pending_points"])
        gauge("unacked_messages", "Messages received and not yet acknowledged to the broker", s["unacked"])
        gauge("oldest_unacked_age_seconds", "How long the oldest unacknowledged message has waited",
              s["oldest_unacked_s"])
        gauge("stalled", "1 when messages wait and nothing was written for stall_after_s, or the oldest unacked "
              "message waited that long (the /health endpoint answers 503 then)", 1.0 if s["stalled"] else 0.0)
        gauge("stall_after_seconds", "The configured stall_after_s", s["stall_after_s"])
        last = GaugeMetricFamily(p + "last_successful_write_timestamp_seconds",
                                 "When InfluxDB last answered a write with 204 (unix seconds); no sample before "
                                 "the first successful write")
        if s["last_successful_write"] is not None:
            last.add_metric([], s["last_successful_write"] / 1000)
        out.append(last)
        return out


def _bounded(counts: dict[str, int], known: tuple[str, ...]) -> dict[str, int]:
    """Every known label value (0 when none yet, so a rate exists from the start); anything else as ``other``."""
    out = dict.fromkeys(known, 0)
    for k, n in counts.items():
        key = k if k in out else "other"
        out[key] = out.get(key, 0) + n
    return out


def write_health_file(path: str | Path, snapshot: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a document."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(snapshot, sort_keys=True))
    os.replace(tmp, p)


def read_health_file(path: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


class HealthServer:
    """``GET /health`` → the snapshot as JSON (HTTP 200; 503 when stalled); ``GET /metrics`` → the Prometheus text
    exposition (always 200: ``cityos_ingest_stalled`` says it). On 127.0.0.1 only by default."""

    def __init__(self, health: Health, port: int, host: str = "127.0.0.1") -> None:
        self.health = health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/metrics", "/metrics/"):
                    data, status, ctype = outer.health.metrics_text(), 200, METRICS_CONTENT_TYPE
                elif path in ("/health", "/health/"):
                    snap = outer.health.snapshot()
                    data = json.dumps(snap, sort_keys=True).encode()
                    status, ctype = (503 if snap["stalled"] else 200), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health http: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ingest-health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


#: The ingest's own health as InfluxDB points (``ingest_health``, tag ``instance``): cumulative counters (rates
#: are for the dashboard's ``non_negative_derivative``) and gauges; flags as 1.0/0.0 so they can be averaged.
INGEST_HEALTH_MEASUREMENT = "ingest_health"
_COUNTERS = ("messages_received", "messages_acked", "points_written", "write_errors_total", "dead_lettered_total",
             "reconnects", "decode_worker_restarts")
_GAUGES = ("pending", "queued", "unacked", "oldest_unacked_s")


def health_line(snap: dict[str, Any], instance: str) -> str:
    """One ``ingest_health`` point from a :meth:`Health.snapshot` (``instance``: the ingest's MQTT client id)."""
    fields = {k: float(snap[k]) for k in (*_COUNTERS, *_GAUGES)}
    fields["stalled"] = 1.0 if snap["stalled"] else 0.0
    fields["connected"] = 1.0 if snap["connected"] else 0.0
    p95 = snap["write_latency_ms"]["p95"]
    if p95 is not None:
        fields["write_latency_p95_ms"] = float(p95)
    body = ",".join(f"{k}={v!r}" for k, v in sorted(fields.items()))
    return f"{INGEST_HEALTH_MEASUREMENT},instance={_tag(instance)} {body} {int(snap['ts'])}"


def _tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
