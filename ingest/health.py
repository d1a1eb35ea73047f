"""Health: counters, the stall flag, a JSON snapshot served on ``127.0.0.1:<health_port>/health`` and written
atomically to ``<data_dir>/health.json`` every second.

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

log = logging.getLogger(__name__)


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
    ) -> None:
        self.stall_after_s = stall_after_s
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

    def summary_line(self, snap: dict[str, Any] | None = None) -> str:
        s = snap or self.snapshot()
        return (
            f"connected={s['connected']} received={s['messages_received']} acked={s['messages_acked']} "
            f"points={s['points_written']} requests={s['write_requests']} errors={s['write_errors_total']} "
            f"deadletter={s['dead_lettered_total']} pending={s['pending']} queued={s['queued']} "
            f"p95_ms={s['write_latency_ms']['p95']} stalled={s['stalled']} reconnects={s['reconnects']}"
        )


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
    """``GET /health`` → the snapshot as JSON (HTTP 200; 503 when stalled), on 127.0.0.1 only."""

    def __init__(self, health: Health, port: int, host: str = "127.0.0.1") -> None:
        self.health = health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/health", "/health/"):
                    self.send_error(404)
                    return
                snap = outer.health.snapshot()
                data = json.dumps(snap, sort_keys=True).encode()
                self.send_response(503 if snap["stalled"] else 200)
                self.send_header("Content-Type", "application/json")
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
