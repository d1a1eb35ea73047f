"""The ingest service: MQTT in → decode/validate → batch → InfluxDB, at-least-once, nothing dropped.

Threads and hand-offs; every queue is bounded, so a wedged InfluxDB cannot grow memory without limit::

    paho thread ─▶ [inbound: max_pending_messages] ─▶ dispatcher (the run() thread): register for ack,
        drop stale, send chunks to decode (worker processes, or inline) ─▶ [decoded: a few chunks]
    ─▶ collector thread: results in receive order; invalid → dead-letter store (commit) → ack;
        valid → Batcher ─▶ [hand-off: 1 batch] ─▶ writer thread ─▶ POST /write
            204 → ack every message of the batch;  400/413 → bisect, dead-letter the culprits, ack the rest;
            anything else → keep the batch, retry with exponential backoff + jitter (cap retry_max_s)

While InfluxDB fails the writer holds its batch, the collector blocks on the hand-off, the dispatcher on the
decoded queue, the paho thread on the inbound queue; the broker stops sending once Receive Maximum messages are
unacked and keeps the rest in the durable session. Acks go out in receive order, only for messages that were
written (HTTP 204) or dead-lettered (SQLite commit), and only on the connection they arrived on.

One process is one durable MQTT session (``[mqtt] session_id``: ``<client_id>.<host>.<instance>``); several
processes split the load on a shared subscription (``[mqtt] share_group``, docs/ingest.md "Scaling out"). A second
process that would use the same session, or the same data_dir, is refused at start (exit 3), and a process whose
session another client takes over stops (exit 3) instead of taking it back every few seconds.

Run: ``python -m ingest.service --config ingest.toml``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import queue
import random
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityos import wire
from cityos.influx import InfluxClient, WriteResult
from ingest.batcher import AckSequencer, Batch, Batcher, Item
from ingest.config import ConfigError, IngestConfig, load_config
from ingest.deadletter import DeadLetter, DeadLetterStore
from ingest.decode import ChunkResult, decode_chunk, worker_init
from ingest.decode_pool import DecodePool, RemoteError
from ingest.fieldtypes import FILE as FIELD_TYPES_FILE
from ingest.fieldtypes import FieldTypes, show_field_keys_rows
from ingest.health import Health, HealthServer, health_line, write_health_file
from ingest.mqtt_in import Inbound, MqttIn

log = logging.getLogger("ingest")

HEALTH_FILE = "health.json"
LOCK_FILE = "ingest.lock"
#: Exit status of a process refused or stopped because its identity is taken (systemd: RestartPreventExitStatus).
EXIT_DUPLICATE = 3
_CHUNK = 64  # messages per decode task
_RETRY_BASE_S = 0.2


class DuplicateInstance(RuntimeError):
    """Another ingest process holds this session id or this data_dir."""


class _Claim:
    """This process's hold on its session id (on this machine) and its data_dir, for as long as it runs.

    The session id: an abstract Unix socket named after it (Linux; one per network namespace, released by the
    kernel when the process dies, even by SIGKILL, so a crash never leaves a stale lock). The data_dir: ``flock``
    on a file in it (the dead-letter database and health.json belong to one process).
    """

    def __init__(self, session_id: str, data_dir: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(f"\0cityos-ingest/{session_id}".encode()[:107])
        except OSError:
            self._sock.close()
            raise DuplicateInstance(
                f"another ingest on this machine already runs as MQTT client {session_id!r}; each process needs "
                "its own [mqtt] instance (and data_dir): see docs/ingest.md, 'Scaling out'"
            ) from None
        self._lock = (data_dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.release()
            raise DuplicateInstance(
                f"another ingest process uses data_dir {data_dir}; each process needs its own [ingest] data_dir"
            ) from None

    def release(self) -> None:
        self._sock.close()
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # closing the file drops the flock


class _Aborted(Exception):
    """Shutdown deadline passed while InfluxDB was still failing: the rest stays unacked (it is redelivered)."""


@dataclass(slots=True)
class _Chunk:
    messages: list[Inbound]
    args: tuple[Any, ...]  # decode_chunk arguments, to decode inline if the worker pool breaks
    result: Future[list[ChunkResult]] | list[ChunkResult]


class IngestService:
    def __init__(self, config: IngestConfig, stop: threading.Event | None = None) -> None:
        self.cfg = config
        self.stop_event = stop or threading.Event()
        self.data_dir = Path(config.ingest.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._claim = _Claim(config.mqtt.session_id, self.data_dir)  # first: raises DuplicateInstance
        #: Why the service stopped by itself (its session was taken over), else None.
        self.fatal: str | None = None
        self.health_path = self.data_dir / HEALTH_FILE
        workers = config.ingest.decode_workers

        self._inbound: queue.Queue[Inbound] = queue.Queue(maxsize=config.ingest.max_pending_messages)
        self._decoded: queue.Queue[_Chunk | None] = queue.Queue(maxsize=2 * workers + 2)
        self._handoff: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._abort = threading.Event()  # writer: stop retrying (shutdown deadline passed)
        self._abort_lock = threading.Lock()
        self._abort_timer: threading.Timer | None = None
        self._pool: DecodePool | None = None

        self.acks = AckSequencer()
        self.health = Health(
            config.ingest.stall_after_s,
            queued=self._inbound.qsize,
            unacked=lambda: (self.acks.waiting(), self.acks.oldest_age_s()),
            session=config.mqtt.session_id,
        )
        self.deadletters = DeadLetterStore.in_dir(self.data_dir)
        self.field_types = FieldTypes(self.data_dir / FIELD_TYPES_FILE)
        self.batcher = Batcher(
            max_lines=config.influx.batch_lines,
            max_age_s=config.influx.flush_interval_s,
            max_bytes=config.influx.batch_bytes,
            max_messages=max(1, config.mqtt.receive_maximum // 2),
        )
        self._influx_local = threading.local()  # one InfluxClient (HTTP connection) per writer thread
        self._influx_all: list[InfluxClient] = []
        self.mqtt = MqttIn(
            config.mqtt,
            self._sink,
            on_connected=self.health.on_connected,
            on_disconnected=self.health.on_disconnected,
            on_subscribed=self.health.on_subscribed,
            on_taken_over=self._on_taken_over,
        )
        self._collector = threading.Thread(target=self._collector_main, name="ingest-collector", daemon=True)
        self._writers = [
            threading.Thread(target=self._writer_main, name=f"ingest-writer-{k}", daemon=True)
            for k in range(config.influx.writers)
        ]
        self._reporter = threading.Thread(target=self._reporter_main, name="ingest-health", daemon=True)
        self._reporter_stop = threading.Event()
        self.health_server: HealthServer | None = None

    # --- paho thread -------------------------------------------------------------------------------------------
    def _sink(self, m: Inbound) -> None:
        self.health.on_received()
        if self.mqtt.stopping.is_set():
            return  # shutting down: not processed, not acked, the broker redelivers it
        while True:
            try:
                self._inbound.put(m, timeout=0.5)
                return
            except queue.Full:
                # Backpressure: paho stops reading the socket while we wait. On shutdown drop it: it is unacked,
                # the broker redelivers it.
                if self.mqtt.stopping.is_set():
                    return

    def _on_taken_over(self, why: str) -> None:
        self.fatal = (
            f"this ingest's MQTT session ({self.cfg.mqtt.session_id!r}) was taken by another client ({why}): a "
            "second ingest runs with this [mqtt] client_id, host_id and instance. Stopping instead of taking it "
            "back every few seconds; give each process its own instance (docs/ingest.md, 'Scaling out')"
        )
        log.error("%s", self.fatal)
        self.stop_event.set()

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        log.info(
            "ingest starting: mqtt %s:%s client_id=%s share_group=%s → influx %s db=%s; data_dir=%s",
            cfg.mqtt.host,
            cfg.mqtt.port,
            cfg.mqtt.session_id,
            cfg.mqtt.share_group,
            cfg.influx.url,
            cfg.influx.db,
            self.data_dir,
        )
        if cfg.ingest.decode_workers:
            # forkserver, not fork: this process has threads (paho's) that a fork would copy mid-flight.
            self._pool = DecodePool(
                cfg.ingest.decode_workers,
                decode_chunk,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=worker_init,
                initargs=(os.getpid(),),
                on_restart=self.health.on_worker_restart,
            )
            # Start the workers now (they import pydantic and the wire models), not on the first message.
            self._pool.warm_up([], 0, timeout=60)
        self._seed_field_types()
        if cfg.ingest.health_port:
            self.health_server = HealthServer(self.health, cfg.ingest.health_port).start()
            log.info("health endpoint on http://127.0.0.1:%d/health (Prometheus: /metrics)", self.health_server.port)
        for w in self._writers:
            w.start()
        self._collector.start()
        self._reporter.start()
        self.mqtt.start()
        try:
            self._dispatch_loop()
        finally:
            self._shutdown()

    def _seed_field_types(self) -> None:
        """InfluxDB's own field types, where the ingest's user may read them (a write-only user may not: then
        what this data_dir has learnt stands; see :mod:`ingest.fieldtypes`)."""
        try:
            rows = show_field_keys_rows(self.influx.query("SHOW FIELD KEYS"))
        except Exception as exc:  # 403 for a write-only user, or InfluxDB down: not needed to start
            log.info("field types not read from InfluxDB (%s); %d known from %s", str(exc)[:200],
                     len(self.field_types), FIELD_TYPES_FILE)
            return
        self.field_types.load(rows)
        log.info("field types: %d read from InfluxDB", len(rows))

    # --- dispatcher (run() thread) -----------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while not self.stop_event.is_set():
            chunk = self._take_inbound(timeout=0.25)
            if chunk:
                self._dispatch(chunk)

    def _take_inbound(self, timeout: float) -> list[Inbound]:
        chunk: list[Inbound] = []
        try:
            chunk.append(self._inbound.get(timeout=timeout) if timeout > 0 else self._inbound.get_nowait())
            while len(chunk) < _CHUNK:
                chunk.append(self._inbound.get_nowait())
        except queue.Empty:
            pass
        return chunk

    def _dispatch(self, chunk: Sequence[Inbound]) -> None:
        """Register the messages for acking in receive order, then send them to be decoded."""
        gen = self.mqtt.generation
        keep: list[Inbound] = []
        stale = 0
        for m in chunk:
            # A QoS 1 message from a connection that is gone: the broker redelivers it on the current one.
            if m.qos > 0 and (m.gen < gen or not self.acks.received(m.gen, m.mid)):
                stale += 1
                continue
            keep.append(m)
        if stale:
            self.health.on_stale(stale)
        if not keep:
            return
        cfg = self.cfg.ingest
        args = (
            [(m.topic, m.payload) for m in keep],
            int(time.time() * 1000),
            cfg.max_past_s,
            cfg.max_future_s,
        )
        result: Future[list[ChunkResult]] | list[ChunkResult]
        # submit() never raises: a dead worker fails the future instead, and the collector decodes that chunk
        result = self._pool.submit(*args) if self._pool is not None else decode_chunk(*args)
        self.health.on_decoding(len(keep))
        item = _Chunk(keep, args, result)
        while True:  # blocks while the collector is blocked (InfluxDB down): backpressure
            try:
                self._decoded.put(item, timeout=0.5)
                return
            except queue.Full:
                if self.stop_event.is_set():
                    self._arm_abort()

    # --- collector thread --------------------------------------------------------------------------------------
    def _collector_main(self) -> None:
        batcher = self.batcher
        while True:
            wait = batcher.time_until_due()
            wait = 0.25 if wait is None else min(wait, 0.25)
            try:
                c = self._decoded.get(timeout=wait) if wait > 0 else self._decoded.get_nowait()
            except queue.Empty:
                c = False
            if c is None:  # shutdown: flush what is decoded
                if len(batcher):
                    self._hand_off(batcher.take())
                for w in self._writers:  # one end marker per writer
                    self._put_until_done(self._handoff, None, w)
                return
            if c:
                try:
                    self._collect(c)
                except _Aborted:
                    log.warning(
                        "shutdown: dead letters not stored; %d messages left unacked", len(c.messages)
                    )
                except Exception:  # pragma: no cover - a bug: these stay unacked, the broker redelivers them
                    log.exception("collector failed on %d messages; they stay unacked", len(c.messages))
            if batcher.due():
                self._hand_off(batcher.take())

    def _collect(self, c: _Chunk) -> None:
        if isinstance(c.result, list):
            results = c.result
        else:
            try:
                results = c.result.result()
            except BrokenProcessPool:  # the worker died holding it (it is being replaced): decode it here
                results = decode_chunk(*c.args)
            except RemoteError as exc:  # decode_chunk raised in the worker: try once more here
                log.error("decode worker failed on a chunk; decoding it here: %s", exc)
                results = decode_chunk(*c.args)
        self.health.on_decoding(-len(c.messages))
        dead: list[DeadLetter] = []
        finished: list[tuple[int, int]] = []  # ack keys of messages that need no write
        batcher = self.batcher
        for m, r in zip(c.messages, results, strict=True):
            tag = r[0]
            if tag == "ok":
                _, body, n_lines, kind, sig = r
                if sig is not None:
                    why = self.field_types.conflict(sig)
                    if why is not None:  # InfluxDB would refuse it, and keep its series in the index anyway
                        dead.append(DeadLetter(m.received_at_ms, m.topic, m.payload, "field_type_conflict", why))
                        if m.qos > 0:
                            finished.append((m.gen, m.mid))
                        continue
                if kind == "status":
                    self.health.on_status()
                batcher.add(Item(m.mid, m.qos, m.gen, m.topic, m.payload, body, n_lines, m.received_at_ms, sig=sig))
                self.health.on_pending(1, n_lines)
                if batcher.full():
                    self._hand_off(batcher.take())
                continue
            if tag == "dead":
                dead.append(DeadLetter(m.received_at_ms, m.topic, m.payload, r[1], r[2]))
            # "dead" and "skip" (an empty retained status: a cleared status, nothing to store)
            if m.qos > 0:
                finished.append((m.gen, m.mid))
        if dead:
            self._store_dead_letters(dead)  # committed before any of them is acked
            for d in dead:
                self.health.on_dead_letter(d.reason)
                log.info("dead-lettered message on %s: %s %s", d.topic, d.reason, d.detail[:200])
        if finished:
            self._ack(self.acks.done(finished))

    def _store_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Commit, retrying while SQLite fails (disk full, locked): these messages cannot be acked before."""
        attempt = 0
        while True:
            try:
                self.deadletters.add_many(letters)
                return
            except sqlite3.Error as exc:
                attempt += 1
                if attempt <= 3 or attempt % 30 == 0:
                    log.error(
                        "cannot store %d dead letters in %s (%s); retrying, not acking them",
                        len(letters),
                        self.deadletters.path,
                        exc,
                    )
                if self._abort.wait(min(10.0, 0.5 * attempt)):
                    raise _Aborted from exc

    def _hand_off(self, batch: Batch) -> None:
        # Blocks while the writer is busy with the previous batch (e.g. InfluxDB down): the backpressure.
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

    # --- writer thread -----------------------------------------------------------------------------------------
    @property
    def influx(self) -> InfluxClient:
        """This writer thread's InfluxDB client."""
        w = getattr(self._influx_local, "writer", None)
        if w is None:
            c = self.cfg.influx
            w = InfluxClient.from_settings(c, gzip=c.gzip)
            self._influx_local.writer = w
            self._influx_all.append(w)
        return w

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
                log.warning(
                    "shutdown: %d messages left unacked (InfluxDB still failing); the broker keeps them",
                    len(left),
                )
            except Exception:  # pragma: no cover - a bug: keep running, these messages stay unacked
                left = [i for i in batch.items if not i.done]
                log.exception("writer failed on a batch; %d messages stay unacked", len(left))
                self._drop(left)

    def _write(self, batch: Batch) -> None:
        result = self._post(batch)
        if result.ok:
            self._stored(batch.items)
        else:
            log.warning(
                "InfluxDB rejected a batch of %d messages (%s: %s); finding the culprits",
                len(batch.items),
                result.outcome,
                result.message[:300],
            )
            self._bisect(batch, result)

    def _bisect(self, batch: Batch, result: WriteResult) -> None:
        """``batch`` was rejected (400/413): split by message until the rejected messages are isolated."""
        if self.field_types.learn_from_error(result.message):
            log.warning("InfluxDB holds a field type this ingest did not know: learnt it (%s)", result.message[:200])
        if len(batch.items) == 1:
            item = batch.items[0]
            detail = f"HTTP {result.status}: {result.message}"
            letter = DeadLetter(item.received_at_ms, item.topic, item.payload, "influx_rejected", detail)
            self._store_dead_letters([letter])
            self.health.on_dead_letter("influx_rejected")
            log.warning("dead-lettered message on %s: influx_rejected %s", item.topic, result.message[:300])
            self._complete(batch.items)
            return
        for part in batch.split():
            r = self._post(part)
            if r.ok:
                self._stored(part.items)
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
            if attempt <= 3 or attempt % 10 == 0 or r.outcome == "auth":
                auth = r.outcome == "auth"
                log.log(
                    logging.ERROR if auth else logging.WARNING,
                    "InfluxDB write failed (%s, HTTP %s: %s)%s; attempt %d, retrying in %.1fs; "
                    "%d messages held, none acked",
                    r.outcome,
                    r.status,
                    r.message[:300],
                    " (check [influx] username/password_file and the user's WRITE grant)" if auth else "",
                    attempt,
                    delay,
                    self.health.pending,
                )
            if self._abort.wait(delay):
                raise _Aborted

    def _receipts(self, items: Sequence[Item]) -> None:
        """A commissioning probe that InfluxDB just stored: tell its gateway (its only way to know). Never in the
        way of the acks: whatever goes wrong here is logged and the batch completes as stored."""
        for item in items:
            if not item.topic.endswith("/probe"):
                continue
            try:
                gw = wire.gateway_from_topic(item.topic) or ""
                head = json.loads(item.payload)
                receipt = wire.Receipt(gateway_id=gw, boot_id=head["boot_id"], seq=head["seq"],
                                       points=item.n_lines, stored_at=int(time.time() * 1000))
                self.mqtt.publish(wire.receipt_topic(gw), wire.encode_receipt(receipt))
            except Exception:
                log.exception("cannot send the receipt of a probe on %s", item.topic)
                continue
            log.info("probe from %s stored (%d points): receipt sent", gw, receipt.points)

    def _stored(self, items: Sequence[Item]) -> None:
        """InfluxDB stored these items (HTTP 204): their field types are now InfluxDB's; receipts; acks."""
        confirm = self.field_types.confirm
        for i in items:
            if i.sig is not None:
                confirm(i.sig)
        self._receipts(items)
        self._complete(items)

    def _complete(self, items: Sequence[Item]) -> None:
        """Items are written (or dead-lettered): release their acks (in receive order) and the memory."""
        for i in items:
            i.done = True
        self._ack(self.acks.done(k for k in (i.ack_key for i in items) if k is not None))
        self._drop(items)

    # --- reporting ---------------------------------------------------------------------------------------------
    def _reporter_main(self) -> None:
        next_log = time.monotonic() + self.cfg.ingest.log_every_s
        every = self.cfg.ingest.self_metrics_interval_s
        next_point = time.monotonic() + min(every, 2.0)  # a first point soon after start: "the ingest is up"
        c = self.cfg.influx
        own = InfluxClient.from_settings(c, gzip=False)
        try:
            while not self._reporter_stop.wait(1.0):
                snap = self.health.snapshot()
                try:
                    write_health_file(self.health_path, snap)
                except OSError:
                    log.warning("cannot write %s", self.health_path, exc_info=True)
                now = time.monotonic()
                if now >= next_log:
                    next_log += self.cfg.ingest.log_every_s
                    log.info("ingest: %s", self.health.summary_line(snap))
                if every and now >= next_point:
                    next_point = now + every
                    # Best effort, off the data path: while InfluxDB is down these points are missing, which the
                    # "ingest stalled" alert treats as firing (no data).
                    r = own.write(health_line(snap, self.cfg.mqtt.session_id).encode())
                    if not r.ok:
                        log.debug("ingest_health point not written: %s %s", r.outcome, r.message)
        finally:
            own.close()

    # --- shutdown ----------------------------------------------------------------------------------------------
    @staticmethod
    def _put_until_done(q: queue.Queue[Any], item: Any, consumer: threading.Thread) -> None:
        while consumer.is_alive():
            try:
                q.put(item, timeout=0.5)
                return
            except queue.Full:
                pass

    def _shutdown(self) -> None:
        log.info("ingest stopping: flushing what is decoded")
        self._arm_abort()
        try:
            self.mqtt.stopping.set()  # the paho thread stops queueing (what it drops is unacked: redelivered)
            while chunk := self._take_inbound(timeout=0):
                self._dispatch(chunk)
            self._put_until_done(self._decoded, None, self._collector)
            self._collector.join()
            for w in self._writers:
                w.join()
        finally:
            with self._abort_lock:
                if self._abort_timer is not None:
                    self._abort_timer.cancel()
            self.mqtt.stop()  # the PUBACKs queued above go out before DISCONNECT
            if self._pool is not None:
                self._pool.shutdown(timeout=10)
            self._reporter_stop.set()
            if self._reporter.is_alive():
                self._reporter.join(timeout=5)
            snap = self.health.snapshot()
            with contextlib.suppress(OSError):
                write_health_file(self.health_path, snap)
            if self.health_server:
                self.health_server.stop()
            for w in self._influx_all:
                w.close()
            self.deadletters.close()
            self._claim.release()
            log.info("ingest stopped: %s", self.health.summary_line(snap))


def run(config: IngestConfig, stop: threading.Event | None = None) -> int:
    """Run the ingest until ``stop`` is set (or forever); then flush and ack what is decoded, and disconnect.
    Returns the exit status: 0, or :data:`EXIT_DUPLICATE` when its identity is (or became) another's."""
    try:
        svc = IngestService(config, stop)
    except DuplicateInstance as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DUPLICATE
    svc.run()
    return EXIT_DUPLICATE if svc.fatal else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest.service", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", required=True, help="TOML config file")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
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
    return run(config, stop)


if __name__ == "__main__":
    sys.exit(main())
