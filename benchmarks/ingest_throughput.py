"""Ingest throughput against InfluxDB's own write ceiling and against Node-RED, on this machine.

Everything runs on a private stack (``citylab.stack.Stack``: Mosquitto with persistence and its mutual-TLS
listener, InfluxDB 1.x with auth, loopback) in one process run; every measurement writes into a fresh database,
which is checked with ``SELECT COUNT`` afterwards and dropped. The data: ``--points`` readings of kind
``forest_station`` (4 float fields) as wire-contract telemetry messages of ``--per-msg`` readings spread over
``--gateways`` gateways; the ceiling posts exactly the line protocol the ingest makes of them
(``ingest.lineproto.batch_to_lines``). Each of ``--repeat`` rounds runs, in this order:

1. **InfluxDB ceiling, 1, 2 and 4 clients**: the lines in ``--ceiling-batch`` (10,000) line batches, gzipped
   (level 1) before the clock starts, POSTed to ``/write?precision=ms`` as the stack's write-only user (the
   ingest's and Node-RED's user) by 1, 2 and 4 concurrent clients that take the next batch from a shared counter
   until none is left. The clients are **processes**, started once for the whole run (so start-up is never
   timed) and each holding its own keep-alive connection: threads would share one GIL, so with 4 of them the
   HTTP client's own Python work (request framing, response parsing) would be serialised and the figure would
   partly measure Python; with processes only InfluxDB (and the 2 cores) limit it. The clock runs from the "go"
   to the last client's last 204 (``time.monotonic``, one system-wide clock). The ceiling of a round is the best
   of the three; ratios use the median of the rounds' ceilings.
2. **ingest** and 3. **Node-RED** (``benchmarks/nodered/``), in alternating order from round to round. Both get
   the same input the same way, a **durable MQTT session drained**: the contender connects once with its durable
   session (QoS 1 subscription to ``cityos/v1/+/telemetry``) and stops; every message is published at QoS 1
   into that session while it is down (the publisher waits for every PUBACK) and left 2 s for the broker's
   autosave; then the contender starts and is timed from its MQTT CONNACK (the broker starts streaming the queue
   then; process start-up is not timed) until InfluxDB has acknowledged every point. Node-RED's MQTT broker node
   supports this (MQTT v5, fixed client id, ``cleansession: false``, session expiry, ``autoUnsubscribe: false``:
   see ``benchmarks/nodered/peer.py``), so the publish-while-running fallback is not needed.

   * the **ingest** is ``ingest.service.IngestService`` in this process, default config (``--decode-workers``,
     ``--writers``, ``--batch-lines`` override it); CONNACK = its ``health.connected``; done = its
     ``points_written`` counter (points in /write requests InfluxDB answered 204) reaching the total.
   * **Node-RED** 4 is its own process (``flow.json``: mqtt in → json → function → ``influxdb batch``, one write
     of ``--per-msg`` points per message, as the batch node does); CONNACK = its "Connected to broker" log line,
     read from its stdout as it is written; done = InfluxDB's own ``pointsWrittenOK`` (``/debug/vars``, the same
     meaning: points in /write requests answered 204) polled every 20 ms, grown by the total. Node-RED has no
     counter of its own (the batch node has no output), and polling InfluxDB costs this process, not Node-RED.

   A contender that stops making progress for ``--stall-s`` ends its run; the COUNT then says how many points
   arrived, and the run counts as failed (not in the median).

With ``--outage`` (or ``--outage-only``), each contender also gets the **InfluxDB outage** trial: fresh database,
the contender running and subscribed; messages published at a steady ``--outage-rate`` readings/s for
``--outage-before`` + ``--outage-s`` + ``--outage-after`` seconds; ``--outage-before`` s in, InfluxDB is stopped
(``Stack.stop_influx``: SIGTERM, the process gone) and restarted (``Stack.start_influx``, same data) ``--outage-s``
(10) s later. After the last PUBACK it waits until every point is stored or nothing has changed for ``--quiet-s``,
then reads every stored point: **lost** = published readings not stored; **doubled** = a reading stored as more
than one point (the ingest writes each reading's own timestamp and series, so a re-sent point overwrites itself
instead); **re-sent** ≈ points InfluxDB accepted more than once (its ``pointsWrittenOK`` before the stop plus after
the restart, minus the points stored: approximate, a write accepted between the last read and the stop is
missed).

Usage::

    python benchmarks/ingest_throughput.py [--points 300000] [--repeat 5] [--skip-nodered] [--quick]
        [--outage | --outage-only] [--run-dir DIR] [--json out.json]

Node-RED must be installed first: ``cd benchmarks/nodered && npm ci`` (Node.js >= 18.5).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodered.peer import NodeRed, NodeRedError
from nodered.peer import versions as nodered_versions

from citylab.pipeline import ingest_config
from citylab.stack import INFLUX_WRITER, Stack, StackInfo, influx_query, mqtt_client, mqtt_settings
from cityos import wire
from ingest import lineproto
from ingest.config import MqttConfig
from ingest.mqtt_in import discard_session
from ingest.service import IngestService

Message = tuple[str, bytes, list[str]]
CEILING_CLIENTS = (1, 2, 4)


def make_messages(n_points: int, per_msg: int, gateways: int, now_ms: int) -> list[Message]:
    """(topic, payload, lines) per message; forest-station-like readings, 4 float fields, 20 devices/gateway."""
    out = []
    n_msgs = -(-n_points // per_msg)
    base_ts = now_ms - 3_600_000
    for m in range(n_msgs):
        gw = f"bench-gw-{m % gateways:02d}"
        k = min(per_msg, n_points - m * per_msg)
        readings = [
            wire.Reading(
                device_id=f"st-{i % 20:02d}",
                kind="forest_station",
                ts=base_ts + (m // gateways) * per_msg + i,
                values={
                    "air_temp_c": 12.5 + (i % 50) / 10,
                    "humidity_pct": 60.0 + (m % 30),
                    "soil_moisture": 0.31 + (i % 7) / 100,
                    "battery_v": 3.7,
                },
                units={"air_temp_c": "C"},
            )
            for i in range(k)
        ]
        batch = wire.TelemetryBatch(
            gateway_id=gw, boot_id="bench-boot-0001", seq=m, sent_at=now_ms, readings=readings
        )
        out.append((wire.telemetry_topic(gw), wire.encode_batch(batch), lineproto.batch_to_lines(batch)))
    return out


# ------------------------------------------------------------------------------------------------------------
# InfluxDB


def _client(info: StackInfo) -> httpx.Client:
    return httpx.Client(
        base_url=info.influx_url, auth=(info.influx_username, info.influx_password), timeout=60
    )


def count_points(info: StackInfo, db: str) -> int:
    with _client(info) as c:
        r = c.get("/query", params={"db": db, "q": 'SELECT COUNT("battery_v") FROM "forest"'})
        r.raise_for_status()
        series = r.json()["results"][0].get("series", [])
        return int(series[0]["values"][0][1]) if series else 0


class WrittenCounter:
    """InfluxDB's ``pointsWrittenOK`` (``/debug/vars``): points in /write requests it answered 204, since it
    started. One keep-alive connection; ~1 ms a read."""

    def __init__(self, info: StackInfo) -> None:
        self._c = httpx.Client(base_url=info.influx_url, timeout=5)

    def read(self) -> int:
        doc = self._c.get("/debug/vars").json()
        return sum(
            int(v["values"].get("pointsWrittenOK", 0)) for k, v in doc.items() if k.startswith("httpd")
        )

    def close(self) -> None:
        self._c.close()


def gzip1(raw: bytes) -> bytes:
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    return comp.compress(raw) + comp.flush()


# ------------------------------------------------------------------------------------------------------------
# the ceiling: 1, 2, 4 client processes


def _ceiling_worker(conn: Any, counter: Any, go: Any, url: str, user: str, password: str) -> None:
    """One ceiling client (its own process). Commands on ``conn``: ("load", bodies), ("run", db), ("quit",)."""
    bodies: list[bytes] = []
    with httpx.Client(base_url=url, auth=(user, password), timeout=120) as c:
        while True:
            cmd = conn.recv()
            if cmd[0] == "quit":
                return
            if cmd[0] == "load":
                bodies = cmd[1]
                conn.send(("loaded",))
                continue
            db = cmd[1]
            c.get("/ping").raise_for_status()  # the keep-alive connection is up before the clock starts
            conn.send(("ready",))
            go.wait()
            posted, error = 0, None
            while error is None:
                with counter.get_lock():
                    i = counter.value
                    counter.value += 1
                if i >= len(bodies):
                    break
                r = c.post(
                    "/write",
                    params={"db": db, "precision": "ms"},
                    content=bodies[i],
                    headers={"Content-Encoding": "gzip"},
                )
                if r.status_code != 204:
                    error = f"{r.status_code} {r.text[:200]}"
                posted += 1
            conn.send(("done", time.monotonic(), posted, error))


class CeilingClients:
    """``max(CEILING_CLIENTS)`` client processes, started once (spawned: no threads of ours are forked)."""

    def __init__(self, info: StackInfo, n: int = max(CEILING_CLIENTS)) -> None:
        ctx = mp.get_context("spawn")
        self._counter = ctx.Value("l", 0)
        self._go = ctx.Event()
        password = info.password_file(INFLUX_WRITER).read_text().strip()
        self._conns = []
        self._procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_ceiling_worker,
                args=(child, self._counter, self._go, info.influx_url, INFLUX_WRITER, password),
                daemon=True,
            )
            p.start()
            self._conns.append(parent)
            self._procs.append(p)
        self.n_lines = 0
        #: InfluxDB's CPU seconds per point in the last run (its own process: what a point costs it at best).
        self.influx_us_per_point = 0.0

    def load(self, lines: list[str], batch: int) -> None:
        """Pre-generate and pre-gzip the batches; every client gets them all (it takes indices off the counter)."""
        bodies = [gzip1("\n".join(lines[i : i + batch]).encode()) for i in range(0, len(lines), batch)]
        for c in self._conns:
            c.send(("load", bodies))
        for c in self._conns:
            self._expect(c, "loaded")
        self.n_lines = len(lines)

    @staticmethod
    def _expect(conn: Any, what: str, timeout: float = 120) -> tuple:
        if not conn.poll(timeout):
            raise RuntimeError(f"ceiling client: no {what!r} within {timeout}s")
        msg = conn.recv()
        if msg[0] != what:
            raise RuntimeError(f"ceiling client: {msg!r}, expected {what!r}")
        return msg

    def run(self, stack: Stack, info: StackInfo, clients: int) -> float:
        """Points/s of ``clients`` concurrent clients posting every batch once into a fresh database."""
        db = f"bench_ceiling{clients}_{uuid.uuid4().hex[:8]}"
        stack.create_database(db)
        conns = self._conns[:clients]
        self._go.clear()
        with self._counter.get_lock():
            self._counter.value = 0
        for c in conns:
            c.send(("run", db))
        for c in conns:
            self._expect(c, "ready")
        influxd = f"/proc/{_pid_file(stack, 'influxdb/influxd.pid')}/stat"
        cpu0 = _cpu_s(influxd)
        t0 = time.monotonic()
        self._go.set()
        done = [self._expect(c, "done", 600) for c in conns]
        self._go.clear()
        self.influx_us_per_point = (_cpu_s(influxd) - cpu0) / self.n_lines * 1e6
        elapsed = max(d[1] for d in done) - t0
        errors = [d[3] for d in done if d[3]]
        if errors:
            raise RuntimeError(f"ceiling write failed: {errors[0]}")
        n = count_points(info, db)
        if n != self.n_lines:
            raise RuntimeError(f"ceiling ({clients} clients): {n} points stored, expected {self.n_lines}")
        stack.drop_database(db)
        return self.n_lines / elapsed

    def close(self) -> None:
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.send(("quit",))
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()


# ------------------------------------------------------------------------------------------------------------
# publishing


def _all_acked(infos: list[Any]) -> None:
    for i in infos:
        i.wait_for_publish(120)
        if not i.is_published():
            raise RuntimeError("publish not acknowledged")


def publish_all(info: StackInfo, messages: list[Message]) -> None:
    pub = mqtt_client(info, "dev.tools", client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
    pub.max_inflight_messages_set(200)
    pub.connect(info.mqtt_host, info.mqtt_port)
    pub.loop_start()
    try:
        infos = [pub.publish(topic, payload, qos=1) for topic, payload, _ in messages]
        _all_acked(infos)
    finally:
        pub.disconnect()
        pub.loop_stop()


def publish_steady(info: StackInfo, messages: list[Message], per_s: float) -> None:
    """Publish at a steady ``per_s`` messages/s (QoS 1, on schedule, not waiting for acks), then wait for every
    PUBACK."""
    pub = mqtt_client(info, "dev.tools", client_id=f"bench-steady-{uuid.uuid4().hex[:8]}")
    pub.max_inflight_messages_set(1000)
    pub.connect(info.mqtt_host, info.mqtt_port)
    pub.loop_start()
    try:
        t0 = time.monotonic()
        infos = []
        for k, (topic, payload, _) in enumerate(messages):
            delay = t0 + k / per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            infos.append(pub.publish(topic, payload, qos=1))
        _all_acked(infos)
    finally:
        pub.disconnect()
        pub.loop_stop()


def _wait(cond, timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(poll)


# ------------------------------------------------------------------------------------------------------------
# where the CPU goes

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(stat_path: str) -> float:
    """utime + stime of a process or thread, in seconds (``/proc/.../stat`` fields 14 and 15)."""
    try:
        with open(stat_path, "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _pid_file(stack: Stack, name: str) -> int | None:
    try:
        return int((stack.run_dir / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU seconds per stage over a run: the ingest's threads by role (this process, ``/proc/self/task``), its
    decode workers, InfluxDB and Mosquitto (their pid files). Start/stop around the timed window."""

    ROLES = (("ingest-dispatcher", "dispatcher"), ("paho", "MQTT in (paho)"), ("ingest-collector", "collector"), ("ingest-writer", "writers (gzip, HTTP)"),
             ("decode-reader", "pool readers"))

    def __init__(self, stack: Stack, worker_pids: list[int]) -> None:
        self.stack = stack
        self.paths: dict[str, list[str]] = {"ingest: other threads": []}
        main = threading.main_thread().native_id
        for t in threading.enumerate():
            role = next((label for key, label in self.ROLES if key in t.name), None)
            if t.native_id == main:
                continue
            key = f"ingest: {role}" if role else "ingest: other threads"
            self.paths.setdefault(key, []).append(f"/proc/self/task/{t.native_id}/stat")
        self.paths["decode workers"] = [f"/proc/{pid}/stat" for pid in worker_pids]
        for label, name in (("InfluxDB", "influxdb/influxd.pid"), ("Mosquitto", "mosquitto/mosquitto.pid")):
            pid = _pid_file(stack, name)
            self.paths[label] = [f"/proc/{pid}/stat"] if pid else []
        self.t0 = time.monotonic()
        self.start = {k: sum(_cpu_s(p) for p in v) for k, v in self.paths.items()}

    def stop(self) -> dict[str, float]:
        """% of one core per stage over the window."""
        wall = time.monotonic() - self.t0
        return {k: 100 * (sum(_cpu_s(p) for p in v) - self.start[k]) / wall for k, v in self.paths.items()}


# ------------------------------------------------------------------------------------------------------------
# the contenders' drains


@dataclass
class Drain:
    """One contender's run: readings/s (None if not every point arrived), the COUNT check and extras."""

    contender: str
    points: int
    stored: int
    elapsed_s: float
    rate: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rate is not None and self.stored == self.points

    def describe(self) -> str:
        check = "COUNT ok" if self.ok else f"COUNT {self.stored:,}/{self.points:,} FAILED"
        rate = (
            f"{self.rate:,.0f} readings/s"
            if self.rate is not None
            else f"incomplete after {self.elapsed_s:.1f}s"
        )
        return f"{self.contender} {rate} ({check})"


def _progress_until(
    done, progress, n: int, stall_s: float, timeout_s: float, poll: float
) -> tuple[float, bool]:
    """Poll ``progress()`` until it reaches ``n`` (True) or stalls/times out (False); returns (when, complete)."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.monotonic()
        value = progress()
        if value >= n:
            return now, True
        if value != last:
            last, last_change = value, now
        if done() or now - last_change > stall_s or now > deadline:
            return now, False
        time.sleep(poll)


class Bench:
    def __init__(self, stack: Stack, info: StackInfo, work: Path, args: argparse.Namespace) -> None:
        self.stack = stack
        self.info = info
        self.work = work
        self.args = args
        self.ingest_overrides: dict = {}
        if args.decode_workers is not None:
            self.ingest_overrides["decode_workers"] = args.decode_workers
        self.influx_overrides: dict = {}
        if args.batch_lines is not None:
            self.influx_overrides["batch_lines"] = args.batch_lines
        if args.writers is not None:
            self.influx_overrides["writers"] = args.writers

    def _ingest_cfg(self, db: str):
        client_id = f"bench-ingest-{uuid.uuid4().hex[:8]}"
        return ingest_config(
            self.info,
            self.work / client_id,
            client_id=client_id,
            db=db,
            ingest=self.ingest_overrides,
            influx=self.influx_overrides,
        )

    def _start_ingest(self, cfg) -> tuple[IngestService, threading.Event, threading.Thread]:
        stop = threading.Event()
        svc = IngestService(cfg, stop)
        t = threading.Thread(target=svc.run, name="ingest-dispatcher", daemon=True)
        t.start()
        return svc, stop, t

    # ---- durable-session drains

    def _counted(self, contender: str, db: str, n: int, elapsed: float, complete: bool, extra: dict) -> Drain:
        """The run's COUNT check (then the database goes): a rate only when every point is there."""
        stored = count_points(self.info, db)
        self.stack.drop_database(db)
        return Drain(contender, n, stored, elapsed, n / elapsed if complete and stored == n else None, extra)

    def drain_ingest(self, messages: list[Message], n: int) -> Drain:
        db = f"bench_ingest_{uuid.uuid4().hex[:8]}"
        self.stack.create_database(db)
        cfg = self._ingest_cfg(db)
        # 1. create the durable session (subscribe once), then go away
        svc, stop, t = self._start_ingest(cfg)
        try:
            _wait(lambda: svc.health.subscribed, 30, "ingest's first subscribe")
        finally:
            stop.set()
            t.join(30)
        try:
            # 2. queue every message in the session while the ingest is down; let the broker's autosave settle
            publish_all(self.info, messages)
            time.sleep(2)
            # 3. start the ingest and time the drain from its CONNACK
            svc, stop, t = self._start_ingest(cfg)
            try:
                _wait(lambda: svc.health.connected, 60, "ingest connect", poll=0.0005)
                meter = CpuMeter(self.stack, svc._pool.pids() if svc._pool else [])
                t0 = time.monotonic()
                t_end, complete = _progress_until(
                    lambda: not t.is_alive(),
                    lambda: svc.health.points_written,
                    n,
                    self.args.stall_s,
                    self.args.timeout_s,
                    0.005,
                )
                cpu = meter.stop()
                snap = svc.health.snapshot()
            finally:
                stop.set()
                t.join(30)
        finally:
            # A leftover durable session subscribed to the wildcard would queue every later run's messages.
            discard_session(cfg.mqtt)
        return self._counted("ingest", db, n, t_end - t0, complete,
                             {"write_p95_ms": snap["write_latency_ms"]["p95"],
                              "write_requests": snap["write_requests"], "cpu_pct": cpu})

    def drain_bare(self, messages: list[Message], n: int) -> Drain:
        """One broker connection's ceiling: a paho client (MQTT v5, TLS, the ingest's Receive Maximum) drains the
        same durable queue doing nothing but PUBACK each message at once. What one ingest process's connection
        could carry at most, on this broker: the per-connection figure docs/ingest.md quotes for scaling out."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client_id = f"bench-bare-{uuid.uuid4().hex[:8]}"
        got = [0]
        connected = threading.Event()

        def connect() -> Any:
            c = mqtt_client(self.info, "svc.ingest", client_id=client_id)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
            props.ReceiveMaximum = 10000
            c.on_connect = lambda cl, *_a: (cl.subscribe(wire.TELEMETRY_FILTER, qos=1), connected.set())
            def on_message(_c: Any, _u: Any, _m: Any) -> None:
                got[0] += 1  # paho PUBACKs it on return (automatic acks)

            c.on_message = on_message
            c.connect(self.info.mqtt_host, self.info.mqtt_port, clean_start=False, properties=props)
            c.loop_start()
            return c

        c = connect()
        _wait(connected.is_set, 30, "bare client's subscribe")
        time.sleep(0.5)
        c.disconnect()
        c.loop_stop()
        try:
            publish_all(self.info, messages)
            time.sleep(2)
            connected.clear()
            got[0] = 0
            c = connect()
            _wait(connected.is_set, 60, "bare client connect", poll=0.0005)
            t0 = time.monotonic()
            t_end, complete = _progress_until(lambda: False, lambda: got[0], len(messages), self.args.stall_s,
                                              self.args.timeout_s, 0.005)
            c.disconnect()
            c.loop_stop()
        finally:
            discard_session(MqttConfig(**mqtt_settings(self.info, "svc.ingest")), client_id=client_id)
        elapsed = t_end - t0
        return Drain("one broker connection", n, n if complete else got[0] * self.args.per_msg, elapsed,
                     n / elapsed if complete else None, {"messages_s": len(messages) / elapsed})

    def drain_nodered(self, messages: list[Message], n: int) -> Drain:
        db = f"bench_nodered_{uuid.uuid4().hex[:8]}"
        self.stack.create_database(db)
        nr = NodeRed(self.info, self.work / f"nodered-{db}", db=db)
        counter = WrittenCounter(self.info)
        try:
            # 1. create the durable session: connect, subscribe (sent right after the CONNACK), stop
            nr.start()
            nr.wait_running()
            time.sleep(1.0)
            nr.stop()
            # 2. queue every message in the session while Node-RED is down
            publish_all(self.info, messages)
            time.sleep(2)
            # 3. start it and time the drain from its CONNACK until InfluxDB has acknowledged every point
            base = counter.read()
            nr.start()
            t0 = nr.wait_running(timeout=120)
            t_end, complete = _progress_until(
                lambda: not nr.alive,
                lambda: counter.read() - base,
                n,
                self.args.stall_s,
                self.args.timeout_s,
                0.02,
            )
            errors = nr.errors()
        finally:
            nr.stop()
            counter.close()
            nr.discard_session()
        return self._counted("Node-RED", db, n, t_end - t0, complete, {"errors_logged": errors})

    # ---- the InfluxDB outage

    def outage(self, contender: str) -> dict[str, Any]:
        a = self.args
        per_s = a.outage_rate / a.per_msg
        seconds = a.outage_before + a.outage_s + a.outage_after
        messages = make_messages(int(a.outage_rate * seconds), a.per_msg, a.gateways, int(time.time() * 1000))
        expected = {_key(line) for _, _, lines in messages for line in lines}
        db = f"bench_outage_{uuid.uuid4().hex[:8]}"
        self.stack.create_database(db)
        counter = WrittenCounter(self.info)
        nr: NodeRed | None = None
        svc = stop = t = cfg = None
        try:
            if contender == "ingest":
                cfg = self._ingest_cfg(db)
                svc, stop, t = self._start_ingest(cfg)
                _wait(lambda: svc.health.subscribed, 30, "ingest subscribe")
            else:
                nr = NodeRed(self.info, self.work / f"nodered-{db}", db=db)
                nr.start()
                nr.wait_running()
                time.sleep(1.0)
            base = counter.read()
            pub_error: list[BaseException] = []

            def publish() -> None:
                try:
                    publish_steady(self.info, messages, per_s)
                except BaseException as e:
                    pub_error.append(e)

            pub = threading.Thread(target=publish, daemon=True)
            pub.start()
            time.sleep(a.outage_before)
            before_stop = counter.read() - base
            self.stack.stop_influx()
            t_stop = time.monotonic()
            time.sleep(max(0.0, a.outage_s - (time.monotonic() - t_stop)))
            self.stack.start_influx()
            down_s = time.monotonic() - t_stop
            counter.close()
            counter = WrittenCounter(self.info)
            pub.join()
            if pub_error:
                raise RuntimeError(f"outage trial: publishing failed: {pub_error[0]!r}")
            # wait until every point is there or nothing has changed for quiet_s
            last, last_change = -1, time.monotonic()
            deadline = time.monotonic() + a.timeout_s
            while True:
                stored = count_points(self.info, db)
                now = time.monotonic()
                if stored != last:
                    last, last_change = stored, now
                if stored >= len(expected) or now - last_change > a.quiet_s or now > deadline:
                    break
                time.sleep(1.0)
            accepted = before_stop + counter.read()
            errors = nr.errors() if nr is not None else None
        finally:
            if stop is not None and t is not None:
                stop.set()
                t.join(30)
            if cfg is not None:
                discard_session(cfg.mqtt)
            if nr is not None:
                nr.stop()
                nr.discard_session()
            counter.close()
        keys = _stored_keys(self.info, db)
        # the ingest's own ingest_health point every 10 s is in pointsWrittenOK too
        others = _stored_total(self.info, db) - len(keys)
        self.stack.drop_database(db)
        unique = set(keys)
        result = {
            "contender": contender,
            "published": len(expected),
            "rate_readings_s": a.outage_rate,
            "influx_down_s": round(down_s, 1),
            "stored": len(unique),
            "lost": len(expected - unique),
            "doubled": len(keys) - len(unique),
            "unexpected": len(unique - expected),
            "resent_approx": max(0, accepted - len(keys) - others),
            "other_points": others,
        }
        if errors is not None:
            result["errors_logged"] = errors
        if svc is not None:
            result["ingest_health"] = {
                k: svc.health.snapshot()[k] for k in ("points_written", "write_requests", "messages_acked")
            }
        return result


def _key(line: str) -> tuple[str, str, int]:
    """(gateway, device, ts) of one of ``make_messages``' lines (``forest,device=…,gateway=… fields ts``)."""
    head, _, rest = line.partition(" ")
    tags = dict(t.split("=", 1) for t in head.split(",")[1:])
    return tags["gateway"], tags["device"], int(rest.rpartition(" ")[2])


def _stored_keys(info: StackInfo, db: str) -> list[tuple[str, str, int]]:
    """Every stored forest point as (gateway, device, ts), one entry per point (a doubled reading twice)."""
    out = []
    for s in influx_query(info, db, 'SELECT "battery_v" FROM "forest" GROUP BY *'):
        tags = s.get("tags", {})
        out += [(tags.get("gateway", ""), tags.get("device", ""), int(v[0])) for v in s["values"]]
    return out


def _stored_total(info: StackInfo, db: str) -> int:
    """Points in ``db`` over all measurements (a point's count: its most-counted field)."""
    total = 0
    for s in influx_query(info, db, "SELECT COUNT(*) FROM /.*/"):
        total += max(int(x) for x in s["values"][0][1:] if x is not None)
    return total


# ------------------------------------------------------------------------------------------------------------
# main


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def parser() -> argparse.ArgumentParser:
    """The command line (also how the soak test, tests/test_ingest_soak.py, configures its drains)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, help="readings per run (default 300,000; 20,000 with --quick)")
    ap.add_argument("--repeat", type=int, help="rounds, medians reported (default 5; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: --points 20000 --repeat 1")
    ap.add_argument("--skip-nodered", action="store_true", help="no Node-RED (ceiling and ingest only)")
    ap.add_argument("--per-connection", action="store_true",
                    help="also drain the queue with a bare MQTT client: what one broker connection carries")
    ap.add_argument("--per-msg", type=int, default=200, help="readings per telemetry message")
    ap.add_argument("--gateways", type=int, default=8)
    ap.add_argument("--ceiling-batch", type=int, default=10_000)
    ap.add_argument(
        "--stall-s", type=float, default=30.0, help="a drain with no progress this long has failed"
    )
    ap.add_argument("--timeout-s", type=float, default=600.0, help="longest a drain or a settle may take")
    ap.add_argument("--outage", action="store_true", help="also run the 10 s InfluxDB outage trial")
    ap.add_argument("--outage-only", action="store_true", help="only the outage trial")
    ap.add_argument("--outage-rate", type=float, default=2000.0, help="readings/s published during the trial")
    ap.add_argument("--outage-before", type=float, default=5.0, help="seconds of traffic before the stop")
    ap.add_argument("--outage-s", type=float, default=10.0, help="seconds InfluxDB is down")
    ap.add_argument("--outage-after", type=float, default=10.0, help="seconds of traffic after the restart")
    ap.add_argument("--quiet-s", type=float, default=20.0, help="settled once COUNT is unchanged this long")
    ap.add_argument(
        "--run-dir", type=Path, help="stack run directory (default: a temp dir, stack stopped after)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--decode-workers", type=int, help="override [ingest] decode_workers (default: the default)"
    )
    ap.add_argument("--batch-lines", type=int, help="override [influx] batch_lines (default: the default)")
    ap.add_argument("--writers", type=int, help="override [influx] writers (default: the default)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.points is None:
        args.points = 20_000 if args.quick else 300_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    throughput = not args.outage_only
    outage = args.outage or args.outage_only
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    nr_versions: dict[str, str] = {}
    if not args.skip_nodered:
        try:
            nr_versions = nodered_versions()
        except NodeRedError as e:
            print(f"error: {e} (or pass --skip-nodered)", file=sys.stderr)
            return 2

    tmp = tempfile.TemporaryDirectory(prefix="cityos-bench-")
    run_dir = args.run_dir or Path(tmp.name) / "stack"
    stack = Stack(run_dir)
    info = stack.up()
    work = Path(tmp.name) / "work"
    work.mkdir()
    bench = Bench(stack, info, work, args)
    contenders = ["ingest"] + ([] if args.skip_nodered else ["Node-RED"])
    if args.per_connection:
        contenders.append("one broker connection")
    ceilings: dict[int, list[float]] = {k: [] for k in CEILING_CLIENTS}
    influx_cost: dict[int, list[float]] = {k: [] for k in CEILING_CLIENTS}
    best: list[float] = []
    drains: dict[str, list[Drain]] = {c: [] for c in contenders}
    outages: list[dict[str, Any]] = []
    clients = None
    try:
        if throughput:
            clients = CeilingClients(info)
            print(
                f"generating {args.points:,} readings ({args.per_msg}/message, {args.gateways} gateways)...",
                file=sys.stderr,
            )
            messages = make_messages(args.points, args.per_msg, args.gateways, int(time.time() * 1000))
            lines = [line for _, _, ls in messages for line in ls]
            clients.load(lines, args.ceiling_batch)
            for i in range(args.repeat):
                # rotate the order of the three, so none always runs first (on the freshest InfluxDB)
                order_k = CEILING_CLIENTS[i % 3 :] + CEILING_CLIENTS[: i % 3]
                row = {}
                for k in order_k:
                    row[k] = clients.run(stack, info, k)
                    influx_cost[k].append(clients.influx_us_per_point)
                for k, v in row.items():
                    ceilings[k].append(v)
                best.append(max(row.values()))
                # alternate who goes first, so neither always runs on a fresher InfluxDB
                order = contenders if i % 2 == 0 else contenders[::-1]
                got = {}
                for c in order:
                    drain = {"ingest": bench.drain_ingest, "Node-RED": bench.drain_nodered,
                             "one broker connection": bench.drain_bare}[c]
                    d = drain(messages, len(lines))
                    drains[c].append(d)
                    got[c] = d
                ceil = " / ".join(f"{row[k]:,.0f}" for k in CEILING_CLIENTS)
                print(
                    f"run {i + 1}: ceiling {ceil} points/s (1/2/4 clients; best {best[-1]:,.0f}); "
                    + "; ".join(got[c].describe() for c in contenders),
                    file=sys.stderr,
                )
            clients.close()
            clients = None
        if outage:
            for c in (c for c in contenders if c != "one broker connection"):  # it stores nothing
                print(f"outage trial: {c}...", file=sys.stderr)
                outages.append(bench.outage(c))
    finally:
        if clients is not None:
            clients.close()
        if args.run_dir is None:
            stack.down()
        tmp.cleanup()

    doc: dict[str, Any] = {
        "points": args.points,
        "per_msg": args.per_msg,
        "gateways": args.gateways,
        "ceiling_batch": args.ceiling_batch,
        "repeat": args.repeat,
        "versions": nr_versions,
    }
    if throughput:
        med_ceiling = {k: _median(v) for k, v in ceilings.items()}
        med_best = _median(best)
        ok_rates = {c: [d.rate for d in ds if d.ok and d.rate is not None] for c, ds in drains.items()}
        med = {c: _median(v) for c, v in ok_rates.items()}
        print()
        print("| measurement | runs (points/s) | median (points/s) |")
        print("|---|---|---|")
        for k in CEILING_CLIENTS:
            print(
                f"| InfluxDB ceiling: {k} client{'s' if k > 1 else ''} (processes), {args.ceiling_batch}-line "
                f"batches gzipped beforehand | {', '.join(_fmt(x) for x in ceilings[k])} | {_fmt(med_ceiling[k])} |"
            )
        print(
            f"| **InfluxDB ceiling: best of 1/2/4 per run** | {', '.join(_fmt(x) for x in best)} | "
            f"**{_fmt(med_best)}** |"
        )
        labels = {
            "ingest": "ingest: durable MQTT queue → decode/validate → InfluxDB",
            "Node-RED": "Node-RED: durable MQTT queue → json → function → influxdb batch",
            "one broker connection": "one broker connection: durable MQTT queue → PUBACK, nothing else (readings/s)",
        }
        for c in contenders:
            runs = ", ".join(_fmt(d.rate) for d in drains[c])
            n_ok = sum(d.ok for d in drains[c])
            print(f"| {labels[c]} (COUNT ok {n_ok}/{len(drains[c])}) | {runs} | **{_fmt(med[c])}** |")
        r_ceiling = med["ingest"] / med_best if med["ingest"] and med_best else None
        print(
            f"| **ingest / ceiling** | | **{r_ceiling:.0%}** |" if r_ceiling else "| ingest / ceiling | | — |"
        )
        r_nr = None
        if "Node-RED" in med:
            r_nr = med["ingest"] / med["Node-RED"] if med["ingest"] and med["Node-RED"] else None
            print(f"| **ingest / Node-RED** | | **{r_nr:.2f}×** |" if r_nr else "| ingest / Node-RED | | — |")
        print(
            f"\n{args.points:,} points per run ({args.per_msg}/message), {args.repeat} rounds, fresh database "
            "each; medians of the runs whose COUNT matched."
        )
        cpu_runs = [(d.extra["cpu_pct"], d.elapsed_s) for d in drains["ingest"] if "cpu_pct" in d.extra]
        if cpu_runs:
            print("\nWhere the CPU goes while the ingest drains (median of the runs; 2 cores = 200 %), and per point:")
            print("\n| stage | % of a core | µs of CPU per point |\n|---|---|---|")
            per_point: dict[str, float] = {}
            for k in cpu_runs[0][0]:
                pct = statistics.median(r[k] for r, _ in cpu_runs)
                per_point[k] = statistics.median(r[k] / 100 * e / args.points * 1e6 for r, e in cpu_runs)
                print(f"| {k} | {pct:.0f} | {per_point[k]:.2f} |")
            total = sum(per_point.values())
            print(f"| **all** | {statistics.median(sum(r.values()) for r, _ in cpu_runs):.0f} | {total:.2f} |")
            best_k = max(CEILING_CLIENTS, key=lambda k: med_ceiling[k] or 0)
            influx_best = statistics.median(influx_cost[best_k])
            rest = total - per_point.get("InfluxDB", 0.0)
            limit = 2e6 / (influx_best + rest)
            print(
                f"\nInfluxDB at its ceiling ({best_k} clients): {influx_best:.2f} µs of CPU per point. With the "
                f"ingest and Mosquitto at {rest:.2f} µs per point beside it on 2 cores, the most this machine can "
                f"carry is 2 cores / ({influx_best:.2f} + {rest:.2f}) µs = {limit:,.0f} points/s "
                f"= {limit / med_best:.0%} of the ceiling; 80 % would need the ingest and Mosquitto at "
                f"{max(0.0, 2e6 / (0.8 * med_best) - influx_best):.2f} µs per point."
            )
            doc["cpu"] = {"pct_median": {k: statistics.median(r[k] for r, _ in cpu_runs) for k in cpu_runs[0][0]},
                          "us_per_point": per_point, "influx_us_per_point_at_ceiling": influx_best,
                          "limit_points_s": limit}
        doc.update(
            ceiling_runs={str(k): v for k, v in ceilings.items()},
            ceiling_median={str(k): v for k, v in med_ceiling.items()},
            ceiling_best_runs=best,
            ceiling_best_median=med_best,
            runs={c: [asdict(d) | {"ok": d.ok} for d in ds] for c, ds in drains.items()},
            median=med,
            ratio_ingest_ceiling=r_ceiling,
            ratio_ingest_nodered=r_nr,
        )
    if outage:
        print()
        down = ", ".join(f"{o['contender']} {o['influx_down_s']:g} s" for o in outages)
        print(
            f"InfluxDB stopped for {args.outage_s:g} s (until it answered again: {down}) while "
            f"{args.outage_rate:,.0f} readings/s flowed ({args.outage_before:g} s before, "
            f"{args.outage_after:g} s after):"
        )
        print()
        print("| contender | published | stored | lost | doubled | re-sent (≈) | errors logged |")
        print("|---|---|---|---|---|---|---|")
        for o in outages:
            print(
                f"| {o['contender']} | {o['published']:,} | {o['stored']:,} | **{o['lost']:,}** | "
                f"{o['doubled']:,} | {o['resent_approx']:,} | {o.get('errors_logged', '—')} |"
            )
        doc["outage"] = {
            "rate_readings_s": args.outage_rate,
            "before_s": args.outage_before,
            "down_s": args.outage_s,
            "after_s": args.outage_after,
            "trials": outages,
        }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
