"""MQTT side of the ingest, the only module that imports paho.

* MQTT v5 persistent session: fixed client id, ``clean_start=False`` and a Session Expiry Interval, so the broker
  queues our QoS 1 messages while the ingest is down.
* ``manual_ack=True``: nothing is acked until the service says so (after a 204 from InfluxDB or a committed
  dead-letter).
* Receive Maximum in CONNECT: how many unacked messages the broker may have in flight to us; it is also what bounds
  memory while InfluxDB is down (the broker keeps the rest in the durable session).
* Subscribes on *every* connect, also when the broker says the session is present: Mosquitto 2.0.11 does not
  restore ``$share`` subscriptions of a durable client that reconnects (fixed in 2.0.12), and re-subscribing is
  harmless for ordinary ones.
* One process per session: on its first connect the ingest publishes a retained *claim* (a nonce of this process)
  on :func:`cityos.wire.ingest_claim_topic`. A claim with another nonce seen after its own means a newer process
  took the session (the broker just drops the older connection; Mosquitto 2.0.11 sends no reason): it stops rather than
  reconnecting and taking the session back every few seconds.
* Connection generations: every successful connect starts a new generation. A packet id is only acked on the
  connection it arrived on; acks for an older generation are dropped (the broker redelivers those messages).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from cityos import wire
from ingest.config import MqttConfig

log = logging.getLogger(__name__)

_SESSION_TAKEN_OVER = 0x8E  # MQTT v5 DISCONNECT reason code (brokers that send it)


@dataclass(slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    gen: int
    received_at_ms: int


class MqttIn:
    """Paho adapter. ``sink`` is called on paho's network thread for every message; it may block (backpressure:
    paho then stops reading the socket) but must return when ``stopping`` is set."""

    def __init__(
        self,
        cfg: MqttConfig,
        sink: Callable[[Inbound], None],
        *,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        on_subscribed: Callable[[bool], None] | None = None,
        on_taken_over: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_taken_over = on_taken_over
        self._sink = sink
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_subscribed = on_subscribed
        self._claim_topic = wire.ingest_claim_topic(cfg.session_id)
        self._claim = json.dumps({"nonce": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                                  "started_at": int(time.time() * 1000)}).encode()
        self._claimed = False  # our own claim came back: a different one after it is a newer process
        self.taken_over = False
        self._lock = threading.Lock()  # guards generation/connected against ack() from the writer threads
        self._gen = 0
        self._connected = False
        self.stopping = threading.Event()
        self.session_present: bool | None = None

        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.session_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        cfg.configure(c, "mqtt")
        c.reconnect_delay_set(cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s))
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_subscribe = self._handle_subscribe
        self._client = c

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        # connect_async + loop_start: the network thread connects (and keeps retrying with backoff), so a broker
        # that is down at start-up is waited for instead of crashing the service.
        self._client.connect_async(
            self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Send the PUBACKs already queued, DISCONNECT (the session stays on the broker), stop the network thread.

        paho's network thread writes out everything queued (our PUBACKs, then the DISCONNECT) before it ends.
        """
        self.stopping.set()
        try:
            if self._claimed and not self.taken_over and self._connected:
                self._client.publish(self._claim_topic, b"", qos=1, retain=True)  # the session is free again
            self._client.disconnect()
        except Exception:  # pragma: no cover - best effort on shutdown
            log.debug("disconnect failed", exc_info=True)
        with self._lock:
            self._connected = False
        self._client.loop_stop()

    @property
    def generation(self) -> int:
        return self._gen

    @property
    def connected(self) -> bool:
        return self._connected

    # --- acking ------------------------------------------------------------------------------------------------
    def ack(self, gen: int, mid: int) -> bool:
        """PUBACK ``mid`` if it arrived on the current connection; False (dropped) otherwise."""
        with self._lock:
            if not self._connected or gen != self._gen:
                return False
            rc = self._client.ack(mid, 1)
        return rc == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes) -> bool:
        """QoS 1, not retained, not waited for: a lost receipt only makes a commissioning check ask again."""
        with self._lock:
            if not self._connected:
                return False
            return self._client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    # --- paho callbacks (network thread) ------------------------------------------------------------------------
    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT connect to %s:%s refused: %s", self.cfg.host, self.cfg.port, reason_code)
            return
        with self._lock:
            self._gen += 1
            self._connected = True
            gen = self._gen
        self.session_present = bool(flags.session_present)
        opts = SubscribeOptions(qos=1)
        filters = self.cfg.filters()
        client.subscribe([(f, opts) for f in [self._claim_topic, *filters]])
        if gen == 1:  # after the SUBSCRIBE: the previous claim (retained) arrives before our own
            client.publish(self._claim_topic, self._claim, qos=1, retain=True)
        log.info(
            "MQTT connected to %s:%s as %s (session_present=%s, generation=%d); subscribing %s",
            self.cfg.host,
            self.cfg.port,
            self.cfg.session_id,
            self.session_present,
            gen,
            ", ".join(filters),
        )
        if self._on_connected:
            self._on_connected()

    def _handle_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("MQTT subscribe refused: %s (check the broker ACL for this identity: %s)", bad, self.cfg.cert_file or self.cfg.username)
        if self._on_subscribed:
            self._on_subscribed(not bad)

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
        if getattr(reason_code, "value", None) == _SESSION_TAKEN_OVER:
            self._taken_over(client, "the broker says: session taken over")
        if was and not self.stopping.is_set():
            log.warning("MQTT connection lost (%s); reconnecting with backoff", reason_code)
        if self._on_disconnected:
            self._on_disconnected()

    def _taken_over(self, client: mqtt.Client, why: str) -> None:
        """Another process connected with our client id: reconnecting would take the session back from it, and it
        from us, every few seconds ("flapping"), each side losing its in-flight acks. Stop instead."""
        if self.stopping.is_set():
            return
        self.taken_over = True
        self.stopping.set()
        client.disconnect()  # and no automatic reconnect
        log.error("MQTT session %r taken over by another client with the same client id (%s)",
                  self.cfg.session_id, why)
        if self._on_taken_over:
            self._on_taken_over(why)

    def _on_claim(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        if msg.qos:
            client.ack(msg.mid, msg.qos)
        if not msg.payload:
            return
        if msg.payload == self._claim:
            self._claimed = True
        elif self._claimed:
            try:
                other = json.loads(msg.payload)
                who = f"pid {other.get('pid')} on {other.get('host')!r}"
            except (ValueError, AttributeError):
                who = "unknown"
            self._taken_over(client, f"a newer process claimed it: {who}")

    def _handle_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._claim_topic:
            self._on_claim(client, msg)
            return
        self._sink(
            Inbound(
                msg.topic, msg.payload, msg.mid, msg.qos, bool(msg.retain), self._gen, int(time.time() * 1000)
            )
        )


def discard_session(cfg: MqttConfig, timeout_s: float = 10.0, *, client_id: str | None = None) -> bool:
    """Remove the broker's durable session of ``cfg.session_id`` (or of ``client_id``) (connect with clean start and expiry 0).

    For decommissioning an ingest instance, and for tests/benchmarks: an offline durable session subscribed to
    ``cityos/v1/+/telemetry`` keeps queueing every message published afterwards (for up to
    ``session_expiry_s``), which costs the broker memory and, with persistence, disk and CPU at every autosave.
    Returns True if the broker accepted the connection.
    """
    done = threading.Event()
    ok: list[bool] = []

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        ok.append(not reason_code.is_failure)
        done.set()

    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or cfg.session_id,
        protocol=mqtt.MQTTv5,
    )
    cfg.configure(c, "mqtt")
    c.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    try:
        c.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=True, properties=props)
    except OSError:
        return False
    c.loop_start()
    try:
        done.wait(timeout_s)
        c.disconnect()
    finally:
        c.loop_stop()
    return bool(ok and ok[0])
