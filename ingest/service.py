"""The ingest service: MQTT in → decode/validate → batch → InfluxDB, at-least-once, nothing dropped.

Threads and hand-offs (each arrow is bounded, so a wedged InfluxDB cannot grow memory without limit)::

    paho network thread ──Inbound──▶ [inbound queue, max_pending_messages] ──▶ processor (run() thread)
        decode_message → Item ─▶ Batcher ──Batch──▶ [hand-off, 1 batch] ──▶ writer thread ──POST /write──▶ InfluxDB
        ContractError ─▶ dead-letter store (committed) ─▶ ack                   204 ─▶ ack all mids of the batch
                                                                               400 ─▶ bisect, dead-letter culprits

While InfluxDB fails, the writer keeps its batch and retries with exponential backoff and jitter; the processor
blocks on the hand-off, the inbound queue fills, the broker stops sending once Receive Maximum messages are unacked
and keeps the rest in the durable session. Acks go out in receive order, only for messages that were written
(HTTP 204) or dead-lettered (SQLite commit), and only on the connection they arrived on.

Run: ``python -m ingest.service --config ingest.toml``.
"""

from __future__ import annotations

import argparse
import logging
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cityos.wire import ContractError
from ingest.batcher import AckSequencer, Batch, Batcher, Item
from ingest.config import ConfigError, IngestConfig, load_config
from ingest.deadletter import DeadLetter, DeadLetterStore
from ingest.decode import decode_message
from ingest.health import Health, HealthServer, write_health_file
from ingest.influx import InfluxWriter, WriteResult
from ingest.mqtt_in import Inbound, MqttIn

log = logging.getLogger("ingest")

HEALTH_FILE = "health.json"
_CHUNK = 512  # messages taken from the inbound queue per processing pass
_RETRY_BASE_S = 0.2


class _Aborted(Exception):
    """Shutdown deadline passed while InfluxDB was still failing: leave the rest unacked (it is redelivered)."""


class IngestService:
    def __init__(self, config: IngestConfig, stop: threading.Event | None = None) -> None:
        self.cfg = config
        self.stop_event = stop or threading.Event()
        self.data_dir = Path(config.ingest.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.health_path = self.data_dir / HEALTH_FILE

        self._inbound: queue.Queue[Inbound] = queue.Queue(maxsize=config.ingest.max_pending_messages)
        self._handoff: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._abort = threading.Event()  # writer: stop retrying (shutdown deadline)
        self._abort_lock = threading.Lock()
        self._abort_timer: threading.Timer | None = None

        self.health = Health(config.ingest.stall_after_s, queued=self._inbound.qsize)
        self.deadletters = DeadLetterStore.in_dir(self.data_dir)
        self.acks = AckSequencer()
        self.batcher = Batcher(
            max_lines=config.influx.batch_lines,
            max_age_s=config.influx.flush_interval_s,
            max_bytes=config.influx.batch_bytes,
            max_messages=max(1, config.mqtt.receive_maximum // 2),
        )
        self.influx = InfluxWriter(
            config.influx.url,
            config.influx.db,
            config.influx.username,
            config.influx.password,
            timeout_s=config.influx.timeout_s,
            gzip=config.influx.gzip,
        )
        self.mqtt = MqttIn(
            config.mqtt,
            self._sink,
            on_connected=self.health.on_connected,
            on_disconnected=self.health.on_disconnected,
        )
        self._writer = threading.Thread(target=self._writer_main, name="ingest-writer", daemon=True)
        self._reporter = threading.Thread(target=self._reporter_main, name="ingest-health", daemon=True)
        self._reporter_stop = threading.Event()
        self.health_server: HealthServer | None = None

    # --- paho thread ---------------------------------------------------------------------------------------------
    def _sink(self, m: Inbound) -> None:
        self.health.on_received()
        while True:
            try:
                self._inbound.put(m, timeout=0.5)
                return
            except queue.Full:
                # Backpressure: paho stops reading the socket while we wait. Unacked, so on shutdown just drop it.
                if self.mqtt.stopping.is_set():
                    return

    # --- main loop -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        log.info(
            "ingest starting: mqtt %s:%s client_id=%s share_group=%s → influx %s db=%s; data_dir=%s",
            cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.client_id, cfg.mqtt.share_group, cfg.influx.url,
            cfg.influx.db, self.data_dir,
        )
        if cfg.ingest.health_port:
            self.health_server = HealthServer(self.health, cfg.ingest.health_port).start()
            log.info("health endpoint on http://127.0.0.1:%d/health", self.health_server.port)
        self._writer.start()
        self._reporter.start()
        self.mqtt.start()
        try:
            self._process_loop()
        finally:
            self._shutdown()

    def _process_loop(self) -> None:
        inbound, batcher = self._inbound, self.batcher
        while not self.stop_event.is_set():
            wait = batcher.time_until_due()
            wait = 0.25 if wait is None else min(wait, 0.25)
            chunk: list[Inbound] = []
            try:
                chunk.append(inbound.get(timeout=wait) if wait > 0 else inbound.get_nowait())
                while len(chunk) < _CHUNK:
                    chunk.append(inbound.get_nowait())
            except queue.Empty:
                pass
            if chunk:
                self._process(chunk)
            if batcher.due():
                self._hand_off(batcher.take())

    def _process(self, chunk: Sequence[Inbound]) -> None:
        """Decode a chunk: valid messages into the batcher, invalid ones into the dead-letter store (one commit)."""
        cfg = self.cfg.ingest
        now_ms = int(time.time() * 1000)
        gen = self.mqtt.generation
        dead: list[DeadLetter] = []
        finished: list[tuple[int, int]] = []  # ack keys of messages needing no write
        stale = 0
        for m in chunk:
            key = (m.gen, m.mid) if m.qos > 0 else None
            # A QoS 1 message from a connection that is gone: the broker redelivers it on the current one.
            if key is not None and (m.gen < gen or not self.acks.received(m.gen, m.mid)):
                stale += 1
                continue
            try:
                decoded = decode_message(
                    m.topic, m.payload, now_ms=now_ms, max_past_s=cfg.max_past_s, max_future_s=cfg.max_future_s
                )
            except ContractError as exc:
                dead.append(DeadLetter(m.received_at_ms, m.topic, m.payload, exc.reason, exc.detail))
                if key is not None:
                    finished.append(key)
                continue
            if decoded is None:  # empty retained status (a cleared status): nothing to store
                if key is not None:
                    finished.append(key)
                continue
            if decoded.kind == "status":
                self.health.on_status()
            self.batcher.add(
                Item(m.mid, m.qos, m.gen, m.topic, m.payload, decoded.body, decoded.n_lines, m.received_at_ms)
            )
            self.health.on_pending(1, decoded.n_lines)
        if stale:
            self.health.on_stale(stale)
        if dead:
            self.deadletters.add_many(dead)  # committed before any of them is acked
            for d in dead:
                self.health.on_dead_letter(d.reason)
                log.info("dead-lettered message on %s: %s %s", d.topic, d.reason, d.detail[:200])
        if finished:
            self._ack(self.acks.done(finished))

    def _hand_off(self, batch: Batch) -> None:
        # Blocks while the writer is busy with the previous batch (e.g. InfluxDB down): that is the backpressure.
        while True:
            try:
                self._handoff.put(batch, timeout=0.5)
                return
            except queue.Full:
                if self.stop_event.is_set():
                    self._arm_abort()
                if self._abort.is_set():
                    self._drop(batch.items)
                    return

    def _arm_abort(self) -> None:
        """Start the shutdown deadline (once): after it the writer stops retrying a failing InfluxDB."""
        with self._abort_lock:
            if self._abort_timer is None:
                self._abort_timer = threading.Timer(self.cfg.ingest.shutdown_timeout_s, self._abort.set)
                self._abort_timer.daemon = True
                self._abort_timer.start()

    def _ack(self, keys: list[tuple[int, int]]) -> None:
        n = 0
        for gen, mid in keys:
            if self.mqtt.ack(gen, mid):
                n += 1
        if n:
            self.health.on_acked(n)

    def _drop(self, items: Sequence[Item]) -> None:
        self.health.on_done(len(items), sum(i.n_lines for i in items))

    # --- writer thread ---------------------------------------------------------------------------------------------
    def _writer_main(self) -> None:
        while True:
            batch = self._handoff.get()
            if batch is None:
                return
            try:
                self._write(batch)
            except _Aborted:
                left = [i for i in batch.items if not i.done]
                self._drop(left)
                log.warning("shutdown: %d messages left unacked (InfluxDB still failing); the broker keeps them",
                            len(left))
            except Exception:  # pragma: no cover - a bug; keep running, the messages stay unacked
                left = [i for i in batch.items if not i.done]
                log.exception("writer failed on a batch; %d messages stay unacked", len(left))
                self._drop(left)

    def _write(self, batch: Batch) -> None:
        result = self._post(batch)
        if result.ok:
            self._complete(batch.items)
        else:
            log.warning("InfluxDB rejected a batch of %d messages (%s: %s); finding the culprits",
                        len(batch.items), result.outcome, result.message[:300])
            self._bisect(batch, result)

    def _bisect(self, batch: Batch, result: WriteResult) -> None:
        """``batch`` was rejected (400/413): split by message until the rejected messages are isolated."""
        if len(batch.items) == 1:
            item = batch.items[0]
            self.deadletters.add_many([DeadLetter(item.received_at_ms, item.topic, item.payload, "influx_rejected",
                                                  f"HTTP {result.status}: {result.message}")])
            self.health.on_dead_letter("influx_rejected")
            log.warning("dead-lettered message on %s: influx_rejected %s", item.topic, result.message[:300])
            self._complete(batch.items)
            return
        for part in batch.split():
            r = self._post(part)
            if r.ok:
                self._complete(part.items)
            else:
                self._bisect(part, r)

    def _post(self, batch: Batch) -> WriteResult:
        """POST until InfluxDB answers 204 or rejects the data; retry everything else with backoff + jitter."""
        body = batch.body()
        attempt = 0
        while True:
            r = self.influx.write(body)
            if r.ok:
                self.health.on_write_ok(batch.n_lines, r.latency_ms)
                if attempt:
                    log.info("InfluxDB write succeeded again after %d failed attempts", attempt)
                return r
            self.health.on_write_error(r.outcome, r.message, r.latency_ms)
            if r.rejected:
                return r
            attempt += 1
            delay = min(self.cfg.influx.retry_max_s, _RETRY_BASE_S * 2 ** min(attempt, 16))
            delay *= random.uniform(0.5, 1.0)
            level = logging.ERROR if r.outcome == "auth" else logging.WARNING
            if attempt <= 3 or attempt % 10 == 0 or r.outcome == "auth":
                hint = " (check [influx] username/password and the user's WRITE grant)" if r.outcome == "auth" else ""
                log.log(level, "InfluxDB write failed (%s, HTTP %s: %s)%s; attempt %d, retrying in %.1fs; "
                        "%d messages held, none acked", r.outcome, r.status, r.message[:300], hint, attempt, delay,
                        self.health.pending)
            if self._abort.wait(delay):
                raise _Aborted

    def _complete(self, items: Sequence[Item]) -> None:
        """Items are written (or dead-lettered): release their acks (in receive order) and the memory."""
        for i in items:
            i.done = True
        self._ack(self.acks.done(k for k in (i.ack_key for i in items) if k is not None))
        self._drop(items)

    # --- reporting -------------------------------------------------------------------------------------------------
    def _reporter_main(self) -> None:
        next_log = time.monotonic() + self.cfg.ingest.log_every_s
        while not self._reporter_stop.wait(1.0):
            snap = self.health.snapshot()
            try:
                write_health_file(self.health_path, snap)
            except OSError:
                log.warning("cannot write %s", self.health_path, exc_info=True)
            if time.monotonic() >= next_log:
                next_log += self.cfg.ingest.log_every_s
                log.info("ingest: %s", self.health.summary_line(snap))

    # --- shutdown --------------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        log.info("ingest stopping: flushing what is decoded")
        self._arm_abort()
        try:
            self.mqtt.stopping.set()  # the paho thread stops queueing (anything it drops is unacked: redelivered)
            rest: list[Inbound] = []
            try:
                while True:
                    rest.append(self._inbound.get_nowait())
            except queue.Empty:
                pass
            for i in range(0, len(rest), _CHUNK):
                self._process(rest[i : i + _CHUNK])
            if len(self.batcher):
                self._hand_off(self.batcher.take())
            while True:
                try:
                    self._handoff.put(None, timeout=0.5)
                    break
                except queue.Full:
                    if not self._writer.is_alive():
                        break
            self._writer.join()
        finally:
            with self._abort_lock:
                if self._abort_timer is not None:
                    self._abort_timer.cancel()
            self.mqtt.stop()
            self._reporter_stop.set()
            if self._reporter.is_alive():
                self._reporter.join(timeout=5)
            snap = self.health.snapshot()
            try:
                write_health_file(self.health_path, snap)
            except OSError:
                pass
            if self.health_server:
                self.health_server.stop()
            self.influx.close()
            self.deadletters.close()
            log.info("ingest stopped: %s", self.health.summary_line(snap))


def run(config: IngestConfig, stop: threading.Event | None = None) -> None:
    """Run the ingest until ``stop`` is set (or forever); on stop, flush and ack what is decoded, then disconnect."""
    IngestService(config, stop).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest.service", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", required=True, help="TOML config file")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    run(config, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
