"""Wire contract v1: the only thing that crosses between edge and cloud code.

The gateway agent builds :class:`TelemetryBatch` messages and the ingest service validates them with the same
models, so a change to the contract is one edit here (plus ``docs/wire-protocol.md`` and the published JSON
Schema, which a test keeps in step).

Design points (see docs/wire-protocol.md for the full text):

* Timestamps are integer milliseconds since the Unix epoch (UTC), set on the edge. InfluxDB identifies a point by
  measurement + tags + timestamp, so a redelivered message overwrites itself instead of doubling.
* Tags are low-cardinality identifiers only (gateway, device). Values become fields; numbers are always written
  as floats so a sensor that happens to report ``5`` and later ``5.2`` never causes a field-type conflict.
* Limits are part of the contract: both sides check them, the ingest dead-letters what exceeds them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

SCHEMA_VERSION = 1
TOPIC_ROOT = "cityos/v1"

#: Largest MQTT payload a gateway may publish (bytes of UTF-8 JSON).
MAX_PAYLOAD_BYTES = 256 * 1024
#: Most readings in one telemetry message.
MAX_READINGS_PER_MESSAGE = 500
#: Most values in one reading.
MAX_VALUES_PER_READING = 64
#: Longest string field value.
MAX_STRING_VALUE = 256
#: Ingest rejects readings older than this (a gateway may backfill after a long outage) ...
DEFAULT_MAX_PAST_S = 90 * 24 * 3600
#: ... or further in the future than this (clock skew on the edge).
DEFAULT_MAX_FUTURE_S = 10 * 60

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
FIELD_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
# Measurements, tag values and field names are restricted to characters that need no escaping in line protocol.
_ID_RE = re.compile(ID_PATTERN)

GatewayId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
DeviceId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Kind = Annotated[str, StringConstraints(pattern=KIND_PATTERN)]
FieldName = Annotated[str, StringConstraints(pattern=FIELD_PATTERN)]
Value = float | bool | Annotated[str, StringConstraints(max_length=MAX_STRING_VALUE)]

#: Known device kinds → InfluxDB measurement. A kind not listed maps to a measurement of its own name, so a new
#: device type needs no change here; listing it documents its measurement.
MEASUREMENTS: dict[str, str] = {
    "forest_station": "forest",
    "gateway_health": "gateway_health",
}


def telemetry_topic(gateway_id: str) -> str:
    return f"{TOPIC_ROOT}/{gateway_id}/telemetry"


def status_topic(gateway_id: str) -> str:
    return f"{TOPIC_ROOT}/{gateway_id}/status"


#: Filter the ingest subscribes to (wrap it in ``$share/<group>/`` to split the load).
TELEMETRY_FILTER = f"{TOPIC_ROOT}/+/telemetry"
STATUS_FILTER = f"{TOPIC_ROOT}/+/status"


def gateway_from_topic(topic: str) -> str | None:
    """The gateway id in a telemetry or status topic, or None if the topic is not ours."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] not in ("telemetry", "status"):
        return None
    return parts[2] if _ID_RE.match(parts[2]) else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Reading(_Strict):
    """One sample of one device: several values taken at the same instant."""

    device_id: DeviceId
    kind: Kind
    ts: int = Field(description="Edge timestamp, integer milliseconds since the Unix epoch, UTC", ge=0)
    values: dict[FieldName, Value] = Field(min_length=1, max_length=MAX_VALUES_PER_READING)
    units: dict[FieldName, Annotated[str, StringConstraints(max_length=16)]] = Field(default_factory=dict)
    backfill: bool = Field(
        default=False, description="Sent late, from the backlog after an outage: not for live alerting"
    )

    @field_validator("values")
    @classmethod
    def _finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name, x in v.items():
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"value {name!r} is not finite")
        return v

    @model_validator(mode="after")
    def _units_name_values(self) -> Reading:
        extra = set(self.units) - set(self.values)
        if extra:
            raise ValueError(f"units given for fields without values: {sorted(extra)}")
        return self


class TelemetryBatch(_Strict):
    """The payload of ``cityos/v1/<gateway_id>/telemetry`` (JSON, UTF-8, QoS 1)."""

    v: Literal[1] = SCHEMA_VERSION
    gateway_id: GatewayId
    boot_id: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    seq: int = Field(ge=0, description="Per-gateway message number, increasing; survives agent restarts")
    sent_at: int = Field(ge=0, description="When the gateway built this message, ms since epoch UTC")
    readings: list[Reading] = Field(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)


class GatewayStatus(_Strict):
    """The retained payload of ``cityos/v1/<gateway_id>/status``; the MQTT last will sets ``state=offline``."""

    v: Literal[1] = SCHEMA_VERSION
    gateway_id: GatewayId
    state: Literal["online", "offline"]
    boot_id: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    ts: int = Field(ge=0)
    agent_version: str | None = None
    config_hash: str | None = None
    backlog_depth: int | None = Field(default=None, ge=0)
    backlog_age_s: float | None = Field(default=None, ge=0)
    counters: dict[FieldName, float] = Field(default_factory=dict)


class ContractError(ValueError):
    """A payload that breaks the contract; ``reason`` is short and stable enough to count by."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def encode_batch(batch: TelemetryBatch) -> bytes:
    data = batch.model_dump_json(exclude_defaults=False).encode()
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversize", f"{len(data)} bytes > {MAX_PAYLOAD_BYTES}")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in JSON")


def decode_batch(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    max_past_s: int = DEFAULT_MAX_PAST_S,
    max_future_s: int = DEFAULT_MAX_FUTURE_S,
) -> TelemetryBatch:
    """Validate a telemetry message as received on ``topic``; raise :class:`ContractError` with a reason."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    topic_gw = gateway_from_topic(topic)
    if topic_gw is None:
        raise ContractError("bad_topic", topic[:200])
    try:
        raw = json.loads(payload, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractError("bad_json", str(exc)[:200]) from None
    if not isinstance(raw, dict):
        raise ContractError("schema", "payload is not a JSON object")
    if raw.get("v") != SCHEMA_VERSION:
        raise ContractError("unsupported_version", repr(raw.get("v"))[:40])
    try:
        batch = TelemetryBatch.model_validate(raw)
    except ValueError as exc:
        raise ContractError("schema", _short_validation_error(exc)) from None
    if batch.gateway_id != topic_gw:
        raise ContractError("gateway_mismatch", f"payload says {batch.gateway_id!r}, topic says {topic_gw!r}")
    lo, hi = now_ms - max_past_s * 1000, now_ms + max_future_s * 1000
    for r in batch.readings:
        if not lo <= r.ts <= hi:
            raise ContractError("timestamp_out_of_range", f"{r.device_id} ts={r.ts} outside [{lo}, {hi}]")
    return batch


def _short_validation_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors()[:3]:
            loc = ".".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg')}")
        return "; ".join(parts)[:300]
    return str(exc)[:300]


# --- InfluxDB mapping (line protocol, v1 /write, precision=ms) -------------------------------------------------


def measurement_for(kind: str) -> str:
    return MEASUREMENTS.get(kind, kind)


def _field(value: float | bool | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value))
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def reading_to_line(gateway_id: str, r: Reading) -> str:
    """One line of line protocol. Tags sorted by key (InfluxDB's fast path); all ids are escape-free by pattern."""
    fields = ",".join(f"{k}={_field(v)}" for k, v in sorted(r.values.items()))
    if r.backfill:
        # A field, not a tag: a tag would make a redelivered backfill point a second series (a double count).
        fields += ",backfill=true"
    return f"{measurement_for(r.kind)},device={r.device_id},gateway={gateway_id} {fields} {r.ts}"


def batch_to_lines(batch: TelemetryBatch) -> list[str]:
    return [reading_to_line(batch.gateway_id, r) for r in batch.readings]


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas published in docs/schema/ so that others can validate without our code."""
    return {
        "telemetry-batch.v1.schema.json": TelemetryBatch.model_json_schema(),
        "gateway-status.v1.schema.json": GatewayStatus.model_json_schema(),
    }
