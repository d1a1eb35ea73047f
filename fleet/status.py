"""The fleet view's live half: the gateways' retained status messages, read from the broker as ``svc.fleet``, and the
``registered`` status the registry posts for a gateway that has not spoken yet.

Why retained statuses and not InfluxDB: the fleet view must work when InfluxDB or the ingest is down (that is
when a technician needs it), and the broker holds each gateway's latest status, its last will included.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from cityos import wire
from cityos.credentials import MqttLogin

__all__ = ["GatewayView", "clear_status", "post_registered", "read_statuses", "view"]


def _client(login: MqttLogin, name: str) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"{name}-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    login.configure(c)
    return c


def _connected(c: mqtt.Client, login: MqttLogin, timeout_s: float) -> None:
    ok = threading.Event()
    failed: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            failed.append(str(rc))
        ok.set()

    c.on_connect = on_connect
    try:
        c.connect(login.host, login.port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the broker {login.host}:{login.port}: {exc}") from None
    c.loop_start()
    if not ok.wait(timeout_s) or failed:
        c.loop_stop()
        raise ConnectionError(f"the broker {login.host}:{login.port} refused us: {failed[0] if failed else 'timeout'}")


def read_statuses(login: MqttLogin, timeout_s: float = 5.0, quiet_s: float = 0.5) -> dict[str, wire.GatewayStatus]:
    """Every gateway's retained status (the broker sends them all right after the SUBACK)."""
    got: dict[str, wire.GatewayStatus] = {}
    last = [time.monotonic()]
    subscribed = threading.Event()
    c = _client(login, "fleet-view")

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        last[0] = time.monotonic()
        try:
            st = wire.decode_retained_status(msg.payload)
        except wire.ContractError:
            return
        if wire.gateway_from_topic(msg.topic) == st.gateway_id:
            got[st.gateway_id] = st

    c.on_message = on_message
    c.on_subscribe = lambda *_a: (last.__setitem__(0, time.monotonic()), subscribed.set())
    _connected(c, login, timeout_s)
    try:
        c.subscribe(wire.STATUS_FILTER, qos=1)
        subscribed.wait(timeout_s)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and time.monotonic() - last[0] < quiet_s:
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def _publish_retained(login: MqttLogin, topic: str, payload: bytes, timeout_s: float) -> None:
    c = _client(login, "fleet-registry")
    _connected(c, login, timeout_s)
    try:
        info = c.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise ConnectionError(f"no PUBACK from the broker for {topic}")
    finally:
        c.disconnect()
        c.loop_stop()


def post_registered(login: MqttLogin, gateway_id: str, config_hash: str, timeout_s: float = 10.0) -> None:
    """The ``registered`` status of a gateway that has not spoken yet: the fleet view lists it as never seen and
    the offline alert knows it (its backlog is 0: nothing was ever stored on it)."""
    st = wire.GatewayStatus(gateway_id=gateway_id, state="registered", boot_id="registry", ts=int(time.time() * 1000),
                            config_hash=config_hash, backlog_depth=0, backlog_age_s=0.0)
    _publish_retained(login, wire.status_topic(gateway_id), wire.encode_status(st), timeout_s)


def clear_status(login: MqttLogin, gateway_id: str, timeout_s: float = 10.0) -> None:
    """Remove a gateway's retained status (a retired gateway leaves the fleet view)."""
    _publish_retained(login, wire.status_topic(gateway_id), b"", timeout_s)


@dataclass
class GatewayView:
    """One line of `cityos fleet list`: the registry's record joined with the gateway's own status."""

    id: str
    family: str
    district: str
    asset: str
    registry_state: str
    link: str  # online / offline / never seen / (no status)
    last_seen_s: float | None
    agent_version: str
    expected_hash: str
    running_hash: str
    backlog_depth: int | None
    backlog_age_s: float | None
    clock_synced: bool | None
    devices: dict[str, dict[str, float]]
    counters: dict[str, float]

    @property
    def drift(self) -> bool:
        return bool(self.running_hash) and self.running_hash != self.expected_hash

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["drift"] = self.drift
        return d


def view(records: dict[str, Any], statuses: dict[str, wire.GatewayStatus], now_s: float | None = None
         ) -> list[GatewayView]:
    """Join registry records (``GatewayRecord``) and statuses; gateways that report but are not registered are
    listed too (registry state ``unregistered``): a fleet view must show what is on the broker."""
    now_s = time.time() if now_s is None else now_s
    out = []
    for gid in sorted(set(records) | set(statuses)):
        rec, st = records.get(gid), statuses.get(gid)
        link = "never seen" if st is None or st.state == "registered" else st.state
        seen = st is not None and st.state != "registered"
        synced = st.counters.get("gateway_clock_synced") if st else None
        out.append(GatewayView(
            id=gid,
            family=rec.family if rec else "?",
            district=rec.site.district if rec else "",
            asset=rec.site.asset if rec else "",
            registry_state=rec.state if rec else "unregistered",
            link=link,
            last_seen_s=round(now_s - st.ts / 1000, 1) if seen and st else None,
            agent_version=(st.agent_version or "") if seen and st else "",
            expected_hash=rec.config_hash if rec else "",
            running_hash=(st.config_hash or "") if seen and st else "",
            backlog_depth=st.backlog_depth if seen and st else None,
            backlog_age_s=st.backlog_age_s if seen and st else None,
            clock_synced=None if synced is None or synced < 0 else synced >= 1,
            devices=dict(st.devices) if st else {},
            counters=dict(st.counters) if st else {},
        ))
    return out
