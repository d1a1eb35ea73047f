"""Uplink: outbox → MQTT (paho-mqtt 2.x, MQTT v5, QoS 1), deleting rows only after the broker's PUBACK.

Decisions, and why:

* **A fresh paho client per connection.** paho re-sends its own in-flight messages after a reconnect; so does our
  outbox (the rows are still there). Two owners of retransmission would double-send and make in-flight accounting
  guesswork, so the outbox is the only owner: on disconnect everything in flight is forgotten and resent from
  the outbox on the next connection.
* **Two streams after an outage.** At connect time the highest outbox id is the *boundary*. Rows up to it are the
  backlog, drained oldest first at full speed; rows after it are live and go out as they come, ahead of the
  backlog, so a landslide sensor's current reading is not stuck behind a day of history. Order per device is kept
  within each stream; readings older than ``backfill_after_s`` when sent carry ``backfill: true``.
* **PUBACK reason codes are honoured.** A v5 PUBACK >= 0x80 (not authorised, quota exceeded, ...) is a refusal:
  the rows stay. So is 0x10 *no matching subscribers*: the broker accepted the message but nothing will ever
  receive it (e.g. a broker that lost the ingest's durable session). Deleting on it would be silent loss; the
  uplink keeps the rows, backs off and retries, and counts it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cityos import wire
from edge import clock
from edge.config import MqttSection
from edge.outbox import Outbox, Row

log = logging.getLogger("cityos.edge.uplink")

RC_NO_MATCHING_SUBSCRIBERS = 0x10


@dataclass
class _Inflight:
    lo: int
    hi: int
    n: int
    sent: float


@dataclass
class UplinkStats:
    published_messages: int = 0
    published_readings: int = 0
    acked_readings: int = 0
    refused_acks: int = 0
    no_subscribers: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    ack_timeouts: int = 0
    oversize_splits: int = 0
    connected: bool = False
    last_ack_ms: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class Uplink:
    def __init__(
        self,
        gateway_id: str,
        outbox: Outbox,
        cfg: MqttSection,
        *,
        boot_id: str,
        backfill_after_s: float,
        status_fn: Any,
    ) -> None:
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.cfg = cfg
        self.boot_id = boot_id
        self.backfill_after_ms = int(backfill_after_s * 1000)
        self.status_fn = status_fn  # () -> dict of extra status fields (counters, versions)
        self.stats = UplinkStats()
        # A missing CA, a key that is not the certificate's: a ConfigError naming the setting, before any thread.
        cfg.load_files("mqtt")
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        # New rows wake the pump (one pending wake-up at most, so a long outage queues nothing here).
        self._wake_pending = threading.Event()
        outbox.on_append = self._wake
        self._client: mqtt.Client | None = None
        self._gen = 0

    def _wake(self) -> None:
        if not self._wake_pending.is_set():
            self._wake_pending.set()
            self._events.put(("append", (0,)))  # generation 0: no connection's event; it only ends a wait

    # --- connection ------------------------------------------------------------------------------------------

    def _new_client(self, gen: int) -> mqtt.Client:
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{self.gateway_id}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        # Files are read per connection: a certificate rotated in place is used from the next reconnect.
        self.cfg.configure(c, "mqtt")
        c.max_inflight_messages_set(self.cfg.max_inflight + 2)  # +2: room for status messages
        c.max_queued_messages_set(0)
        c.will_set(
            wire.status_topic(self.gateway_id),
            self._status_payload("offline"),
            qos=1,
            retain=True,
        )
        c.on_connect = lambda _c, _u, _f, rc, _p: self._events.put(("connect", (gen, rc)))
        c.on_disconnect = lambda _c, _u, _f, rc, _p: self._events.put(("disconnect", (gen, rc)))
        c.on_publish = lambda _c, _u, mid, rc, _p: self._events.put(("puback", (gen, mid, rc)))
        return c

    def _status_payload(self, state: str) -> bytes:
        extra = self.status_fn() if state == "online" else {}
        status = wire.GatewayStatus(
            gateway_id=self.gateway_id,
            state=state,  # type: ignore[arg-type]
            boot_id=self.boot_id,
            ts=int(time.time() * 1000),
            **extra,
        )
        return wire.encode_status(status)

    # --- main loop -------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        backoff = self.cfg.backoff_min_s
        while not stop.is_set():
            ok = self._session(stop)
            if stop.is_set():
                break
            if ok:
                backoff = self.cfg.backoff_min_s
            delay = random.uniform(backoff / 2, backoff)  # jitter: a city's gateways must not reconnect in step
            log.info("uplink: reconnecting in %.1f s", delay)
            stop.wait(delay)
            backoff = min(backoff * 2, self.cfg.backoff_max_s)

    def _session(self, stop: threading.Event) -> bool:
        """One connection's life. Returns True if it got connected at all (resets the backoff)."""
        self._gen += 1
        gen = self._gen
        client = self._new_client(gen)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        try:
            client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, clean_start=True,
                           properties=props)
        except (OSError, ValueError) as exc:
            self.stats.connect_failures += 1
            log.warning("uplink: cannot connect to %s:%s: %s", self.cfg.host, self.cfg.port, exc)
            return False
        client.loop_start()
        self._client = client
        dying = True  # an exception out of the pump ends the agent (it fails loud): say offline first
        try:
            ok = self._pump(client, gen, stop)
            dying = False
            return ok
        finally:
            self.stats.connected = False
            if stop.is_set() or dying:
                self._goodbye(client)
            client.disconnect()
            client.loop_stop()
            self._client = None

    def _goodbye(self, client: mqtt.Client) -> None:
        """Clean exit: say offline ourselves (a clean DISCONNECT suppresses the last will)."""
        try:
            info = client.publish(wire.status_topic(self.gateway_id), self._status_payload("offline"), 1, True)
            info.wait_for_publish(timeout=2)
        except (RuntimeError, ValueError):
            pass

    def _pump(self, client: mqtt.Client, gen: int, stop: threading.Event) -> bool:
        connected = False
        deadline = time.monotonic() + 15
        while not connected:
            try:
                kind, data = self._events.get(timeout=0.2)
            except queue.Empty:
                if stop.is_set() or time.monotonic() > deadline:
                    self.stats.connect_failures += 1
                    return False
                continue
            if data[0] != gen:
                continue
            if kind == "connect":
                if data[1].is_failure:
                    self.stats.connect_failures += 1
                    log.warning("uplink: broker refused connection: %s", data[1])
                    return False
                connected = True
            elif kind == "disconnect":
                self.stats.connect_failures += 1
                return False

        self.stats.connects += 1
        self.stats.connected = True
        boundary = self.outbox.max_id()
        backlog_cursor = 0
        live_cursor = boundary
        inflight: dict[int, _Inflight] = {}
        status_mids: set[int] = set()
        last_status = 0.0
        last_disk_full = False
        linger_until: float | None = None
        log.info(
            "uplink: connected to %s:%s; backlog %d readings (oldest %.0f s)",
            self.cfg.host, self.cfg.port, self.outbox.depth, self.outbox.oldest_age_s(),
        )
        while not stop.is_set():
            now = time.monotonic()
            disk_full = bool(getattr(self.outbox, "disk_full", False))
            if now - last_status >= self.cfg.status_interval_s or disk_full != last_disk_full:
                # A full disk (and its end) is told at once: the fleet view must not say all is well meanwhile.
                info = client.publish(wire.status_topic(self.gateway_id), self._status_payload("online"), 1, True)
                status_mids.add(info.mid)
                last_status = now
                last_disk_full = disk_full

            # While a live message lingers, appends need not wake us: it goes at the linger deadline either way.
            # Leaving the wake flag set keeps the sources from queueing a wake-up per reading, each of which
            # cost a SELECT on the outbox (~100 a second at 100 readings/s).
            linger_wait: float | None = None
            if linger_until is not None and now < linger_until:
                linger_wait = linger_until - now
            else:
                linger_until = None
                self._wake_pending.clear()  # rows appended from here on wake us again
            # Fill the window: live first, then backlog.
            while linger_wait is None and len(inflight) < self.cfg.max_inflight:
                rows = self.outbox.fetch(live_cursor, self.cfg.readings_per_message)
                stream = "live"
                # Linger only on an idle link: during a backlog drain, live readings go first and at once.
                lingering = self.cfg.linger_s > 0 and backlog_cursor >= boundary
                if rows and len(rows) < self.cfg.readings_per_message and lingering:
                    waited = time.time() - rows[0].created_ms / 1000
                    if waited < self.cfg.linger_s:  # let a few more live readings join this message
                        linger_wait = self.cfg.linger_s - waited
                        linger_until = now + linger_wait
                        rows = []
                if not rows and backlog_cursor < boundary:
                    rows = self.outbox.fetch(backlog_cursor, self.cfg.readings_per_message, upto_id=boundary)
                    stream = "backlog"
                    if not rows:
                        backlog_cursor = boundary
                if not rows:
                    break
                sent_rows = self._publish(client, rows, inflight)
                if sent_rows is None:
                    return True  # connection lost while publishing
                if stream == "live":
                    live_cursor = sent_rows
                else:
                    backlog_cursor = sent_rows

            if inflight and now - min(m.sent for m in inflight.values()) > self.cfg.ack_timeout_s:
                self.stats.ack_timeouts += 1
                log.warning("uplink: no PUBACK for %.0f s, reconnecting", self.cfg.ack_timeout_s)
                return True

            try:
                timeout = 0.5 if inflight else 1.0
                if linger_wait is not None:
                    timeout = min(timeout, max(0.005, linger_wait))
                kind, data = self._events.get(timeout=timeout)
            except queue.Empty:
                continue
            if data[0] != gen:
                continue  # an event of an earlier connection
            if kind == "disconnect":
                self.stats.disconnects += 1
                log.warning("uplink: disconnected: %s", data[1])
                return True
            if kind != "puback":
                continue
            _, mid, rc = data
            if mid in status_mids:
                status_mids.discard(mid)
                continue
            msg = inflight.pop(mid, None)
            if msg is None:
                continue
            code = getattr(rc, "value", rc)
            if code == RC_NO_MATCHING_SUBSCRIBERS or (isinstance(code, int) and code >= 0x80):
                # Not accepted for delivery: keep the rows; rewind the stream so they are resent.
                if code == RC_NO_MATCHING_SUBSCRIBERS:
                    self.stats.no_subscribers += 1
                else:
                    self.stats.refused_acks += 1
                log.warning("uplink: broker did not take message (%s); keeping %d readings", rc, msg.n)
                # Simplest correct rewind: end this connection; the next one starts again from the outbox.
                stop.wait(min(self.cfg.backoff_max_s, 5.0))
                return True
            self.outbox.delete_range(msg.lo, msg.hi)
            self.stats.acked_readings += msg.n
            self.stats.last_ack_ms = int(time.time() * 1000)
        return True

    def _publish(self, client: mqtt.Client, rows: list[Row], inflight: dict[int, _Inflight]) -> int | None:
        """Publish rows as one message (splitting if oversize); returns the last id sent, None if disconnected."""
        # The rows hold each reading's JSON as validated at append time (wire.reading_body): the wire splices them.
        # Late by either clock: stored long ago (real time), or sampled long ago (data time: the scaled clock in
        # the simulated city, where a reading's ts is simulated and its created_ms real).
        now_ms = int(time.time() * 1000)
        data_now_ms = int(clock.now() * 1000)
        after = self.backfill_after_ms
        late = [now_ms - r.created_ms > after or data_now_ms - r.ts > after for r in rows]
        payload = wire.splice_batch(self.gateway_id, self.boot_id, self.outbox.next_seq(), now_ms,
                                    [r.body for r in rows], late)
        if len(payload) > wire.MAX_PAYLOAD_BYTES and len(rows) > 1:
            self.stats.oversize_splits += 1
            return self._publish(client, rows[: len(rows) // 2], inflight)
        info = client.publish(wire.telemetry_topic(self.gateway_id), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("uplink: publish failed: %s", mqtt.error_string(info.rc))
            return None
        inflight[info.mid] = _Inflight(rows[0].id, rows[-1].id, len(rows), time.monotonic())
        self.stats.published_messages += 1
        self.stats.published_readings += len(rows)
        return rows[-1].id
