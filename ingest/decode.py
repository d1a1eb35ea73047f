"""Pure decoding: one MQTT message (topic, payload) → InfluxDB line protocol, or a :class:`wire.ContractError`.

Telemetry goes through :func:`cityos.wire.decode_batch` and :func:`cityos.wire.batch_to_lines` unchanged, so the
ingest applies exactly the contract the edge is tested against. Status messages (retained, one per gateway)
become points in measurement ``gateway_status``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pydantic import ValidationError

from cityos import wire
from cityos.wire import ContractError, GatewayStatus

STATUS_MEASUREMENT = "gateway_status"


@dataclass(frozen=True, slots=True)
class Decoded:
    """Line protocol of one message: ``body`` is the lines joined by newlines, built once."""

    body: str
    n_lines: int
    kind: str  # "telemetry" | "status"


def decode_message(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    max_past_s: int = wire.DEFAULT_MAX_PAST_S,
    max_future_s: int = wire.DEFAULT_MAX_FUTURE_S,
) -> Decoded | None:
    """Decode a message from any subscribed topic.

    Returns ``None`` for a message that carries nothing to store (an empty payload on a status topic: that is
    how a retained status is cleared). Raises :class:`ContractError` for anything that breaks the contract.
    """
    if topic.endswith("/status"):
        if not payload:
            return None
        return _status_to_decoded(decode_status(topic, payload, now_ms=now_ms, max_past_s=max_past_s,
                                                max_future_s=max_future_s))
    batch = wire.decode_batch(topic, payload, now_ms=now_ms, max_past_s=max_past_s, max_future_s=max_future_s)
    lines = wire.batch_to_lines(batch)
    return Decoded("\n".join(lines), len(lines), "telemetry")


def decode_status(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    max_past_s: int = wire.DEFAULT_MAX_PAST_S,
    max_future_s: int = wire.DEFAULT_MAX_FUTURE_S,
) -> GatewayStatus:
    """Validate a status message with the same reasons as :func:`wire.decode_batch`."""
    if len(payload) > wire.MAX_PAYLOAD_BYTES:
        raise ContractError("oversize", f"{len(payload)} bytes > {wire.MAX_PAYLOAD_BYTES}")
    topic_gw = wire.gateway_from_topic(topic)
    if topic_gw is None or not topic.endswith("/status"):
        raise ContractError("bad_topic", topic[:200])
    try:
        raw = json.loads(payload, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractError("bad_json", str(exc)[:200]) from None
    if not isinstance(raw, dict):
        raise ContractError("schema", "payload is not a JSON object")
    if raw.get("v") != wire.SCHEMA_VERSION:
        raise ContractError("unsupported_version", repr(raw.get("v"))[:40])
    try:
        status = GatewayStatus.model_validate(raw)
    except ValidationError as exc:
        raise ContractError("schema", _short(exc)) from None
    bad = [k for k, x in status.counters.items() if not math.isfinite(x)]
    if bad:
        raise ContractError("schema", f"counters not finite: {bad[:3]}")
    if status.gateway_id != topic_gw:
        raise ContractError("gateway_mismatch", f"payload says {status.gateway_id!r}, topic says {topic_gw!r}")
    lo, hi = now_ms - max_past_s * 1000, now_ms + max_future_s * 1000
    if not lo <= status.ts <= hi:
        raise ContractError("timestamp_out_of_range", f"status ts={status.ts} outside [{lo}, {hi}]")
    return status


def status_to_line(s: GatewayStatus) -> str:
    """``gateway_status,gateway=<id> state="online",backlog_depth=…,c_<counter>=… <ts>``.

    Numbers are written as floats (as the wire contract does for readings) so that no field can ever change type.
    """
    fields: dict[str, str] = {"state": _str_field(s.state), "boot_id": _str_field(s.boot_id)}
    if s.backlog_depth is not None:
        fields["backlog_depth"] = repr(float(s.backlog_depth))
    if s.backlog_age_s is not None:
        fields["backlog_age_s"] = repr(float(s.backlog_age_s))
    if s.agent_version is not None:
        fields["agent_version"] = _str_field(s.agent_version)
    if s.config_hash is not None:
        fields["config_hash"] = _str_field(s.config_hash)
    for name, value in s.counters.items():
        fields[f"c_{name}"] = repr(float(value))
    body = ",".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return f"{STATUS_MEASUREMENT},gateway={s.gateway_id} {body} {s.ts}"


def _status_to_decoded(s: GatewayStatus) -> Decoded:
    return Decoded(status_to_line(s), 1, "status")


def _str_field(value: str) -> str:
    # Same escaping as the wire contract's readings (InfluxDB 1.x accepts a newline inside a quoted string).
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name} in JSON")


def _short(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)[:300]
