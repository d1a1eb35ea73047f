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
from cityos.wire import ContractError, GatewayStatus, TelemetryBatch

STATUS_MEASUREMENT = "gateway_status"


@dataclass(frozen=True, slots=True)
class Decoded:
    """Line protocol of one message: ``body`` is the lines joined by newlines, UTF-8, built once."""

    body: bytes
    n_lines: int
    kind: str  # "telemetry" | "status"


def decode_message(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    max_past_s: int = wire.DEFAULT_MAX_PAST_S,
    max_future_s: int = wire.DEFAULT_MAX_FUTURE_S,
    fast: bool = True,
) -> Decoded | None:
    """Decode a message from any subscribed topic.

    ``fast`` uses :func:`decode_batch_fast` / :func:`batch_to_lines_fast` (same results as the wire functions,
    about a third less CPU); ``fast=False`` calls the wire functions directly.

    Returns ``None`` for a message that carries nothing to store (an empty payload on a status topic: that is
    how a retained status is cleared). Raises :class:`ContractError` for anything that breaks the contract.
    """
    if topic.endswith("/status"):
        if not payload:
            return None
        return _status_to_decoded(decode_status(topic, payload, now_ms=now_ms, max_past_s=max_past_s,
                                                max_future_s=max_future_s))
    if fast:
        batch = decode_batch_fast(topic, payload, now_ms=now_ms, max_past_s=max_past_s, max_future_s=max_future_s)
        lines = batch_to_lines_fast(batch)
    else:
        batch = wire.decode_batch(topic, payload, now_ms=now_ms, max_past_s=max_past_s, max_future_s=max_future_s)
        lines = wire.batch_to_lines(batch)
    return Decoded(_encode("\n".join(lines)), len(lines), "telemetry")


# --- fast path ---------------------------------------------------------------------------------------------------
# wire.decode_batch (json.loads + model_validate + checks) and wire.batch_to_lines cost ~6 µs per reading, which
# is most of the ingest's CPU. The two functions below give the same results at ~4 µs: the *same* pydantic
# models validate the payload, but in JSON mode (pydantic-core parses the bytes itself), and the line builder
# avoids per-value isinstance chains and caches the tag prefix. Equivalence is enforced by construction where
# possible and by the differential tests in tests/test_ingest_unit.py:
#
# * anything the fast path does not accept cleanly is handed to wire.decode_batch, so every rejection (and its
#   reason) is exactly the contract's; the fast path only ever *accepts*;
# * JSON-mode validation fills in the default of an absent "v", which decode_batch rejects
#   (unsupported_version): checked via model_fields_set;
# * payloads that JSON mode refuses but json.loads takes (UTF-16/32, a UTF-8 BOM) fall back and are accepted.


def decode_batch_fast(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    max_past_s: int = wire.DEFAULT_MAX_PAST_S,
    max_future_s: int = wire.DEFAULT_MAX_FUTURE_S,
) -> TelemetryBatch:
    """Same result as :func:`wire.decode_batch` (same batch, or the same :class:`ContractError`), faster."""

    def slow() -> TelemetryBatch:
        return wire.decode_batch(topic, payload, now_ms=now_ms, max_past_s=max_past_s, max_future_s=max_future_s)

    if len(payload) > wire.MAX_PAYLOAD_BYTES:
        return slow()
    topic_gw = wire.gateway_from_topic(topic)
    if topic_gw is None:
        return slow()
    try:
        batch = TelemetryBatch.model_validate_json(payload)
    except ValueError:  # ValidationError, or anything pydantic-core's parser refuses
        return slow()
    if "v" not in batch.model_fields_set or batch.gateway_id != topic_gw:
        return slow()
    lo, hi = now_ms - max_past_s * 1000, now_ms + max_future_s * 1000
    for r in batch.readings:
        if not lo <= r.ts <= hi:
            return slow()
    return batch


def batch_to_lines_fast(batch: TelemetryBatch) -> list[str]:
    """Byte-for-byte the output of :func:`wire.batch_to_lines` (tags sorted, numbers as floats, ms timestamps)."""
    gw = batch.gateway_id
    measurements = wire.MEASUREMENTS
    prefixes: dict[tuple[str, str], str] = {}
    out: list[str] = []
    for r in batch.readings:
        key = (r.kind, r.device_id)
        prefix = prefixes.get(key)
        if prefix is None:
            prefix = prefixes[key] = f"{measurements.get(r.kind, r.kind)},device={r.device_id},gateway={gw} "
        values = r.values
        parts = []
        for k in sorted(values):
            v = values[k]
            t = type(v)
            if t is float:
                parts.append(f"{k}={v!r}")
            elif t is bool:
                parts.append(f"{k}=true" if v else f"{k}=false")
            elif t is str:
                parts.append(f"{k}={_str_field(v)}")
            else:  # not produced by the model (float | bool | str), kept for safety: the contract's formatting
                parts.append(f"{k}={wire._field(v)}")  # noqa: SLF001
        out.append(f"{prefix}{','.join(parts)} {r.ts}")
    return out


def _encode(body: str) -> bytes:
    try:
        return body.encode()
    except UnicodeEncodeError as exc:
        # json.loads accepts "\ud800" (a lone surrogate) and the contract's str fields do not refuse it, but it
        # cannot be written as UTF-8: refuse the message here instead of failing the whole batch later.
        raise ContractError("schema", f"string is not valid Unicode: {exc.reason}") from None


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
    return Decoded(_encode(status_to_line(s)), 1, "status")


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


# --- chunk decoding (runs in a worker process when [ingest] decode_workers > 0) ---------------------------------
#: One result per message: ("ok", body, n_lines, kind) | ("dead", reason, detail) | ("skip",)
ChunkResult = tuple


def decode_chunk(
    messages: list[tuple[str, bytes]],
    now_ms: int,
    max_past_s: int = wire.DEFAULT_MAX_PAST_S,
    max_future_s: int = wire.DEFAULT_MAX_FUTURE_S,
    fast: bool = True,
) -> list[ChunkResult]:
    """Decode many messages; plain tuples out, so the results pickle cheaply between processes."""
    out: list[ChunkResult] = []
    for topic, payload in messages:
        try:
            d = decode_message(
                topic, payload, now_ms=now_ms, max_past_s=max_past_s, max_future_s=max_future_s, fast=fast
            )
        except ContractError as exc:
            out.append(("dead", exc.reason, exc.detail))
            continue
        out.append(("skip",) if d is None else ("ok", d.body, d.n_lines, d.kind))
    return out


def worker_init() -> None:
    """Decode workers ignore SIGINT/SIGTERM: the service shuts them down itself after its final flush."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
