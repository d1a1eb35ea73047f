"""Wire contract v1: the only thing that crosses between edge and cloud code.

The gateway agent validates every :class:`Reading` with these models when it stores it and sends messages of the
:class:`TelemetryBatch` shape; the ingest validates them with the same models, so a change to the contract is one
edit here (plus ``docs/wire-protocol.md`` and the published JSON
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
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from cityos.families import FAMILIES

SCHEMA_VERSION = 1
TOPIC_ROOT = "cityos/v1"

#: Largest MQTT payload a gateway may publish (bytes of UTF-8 JSON).
MAX_PAYLOAD_BYTES = 256 * 1024
#: Most readings in one telemetry message.
MAX_READINGS_PER_MESSAGE = 500
#: Most values in one reading.
MAX_VALUES_PER_READING = 64
#: Most extra tags on one reading (beyond device and gateway).
MAX_TAGS_PER_READING = 4
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
#: Extra tag keys may not shadow the tags every point has.
RESERVED_TAGS = frozenset({"device", "gateway"})
TagKey = Annotated[str, StringConstraints(pattern=KIND_PATTERN)]
Value = float | bool | Annotated[str, StringConstraints(max_length=MAX_STRING_VALUE)]

#: Known reading kinds → InfluxDB measurement: the gateway's own health, then every family's
#: (:data:`cityos.families.FAMILIES`). A kind not listed maps to a measurement of its own name, so a new device type
#: needs no change here; its family's descriptor documents its measurements.
MEASUREMENTS: dict[str, str] = {
    "gateway_health": "gateway_health",
    **{kind: m for fam in FAMILIES for kind, m in fam.measurements.items()},
}


def telemetry_topic(gateway_id: str) -> str:
    return f"{TOPIC_ROOT}/{gateway_id}/telemetry"


def status_topic(gateway_id: str) -> str:
    return f"{TOPIC_ROOT}/{gateway_id}/status"


def probe_topic(gateway_id: str) -> str:
    """A commissioning probe: a telemetry batch the ingest stores like any other and then confirms with a
    receipt on :func:`receipt_topic` (`cityos gateway check --live` proves the path to InfluxDB this way)."""
    return f"{TOPIC_ROOT}/{gateway_id}/probe"


def receipt_topic(gateway_id: str) -> str:
    """Addressed to one gateway: the ingest's :class:`Receipt` for a probe it stored."""
    return f"{TOPIC_ROOT}/{gateway_id}/receipt"


#: Filter the ingest subscribes to (wrap it in ``$share/<group>/`` to split the load).
TELEMETRY_FILTER = f"{TOPIC_ROOT}/+/telemetry"
STATUS_FILTER = f"{TOPIC_ROOT}/+/status"
PROBE_FILTER = f"{TOPIC_ROOT}/+/probe"


def gateway_from_topic(topic: str) -> str | None:
    """The gateway id in a telemetry, status or probe topic, or None if the topic is not ours."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] not in ("telemetry", "status", "probe"):
        return None
    return parts[2] if _ID_RE.match(parts[2]) else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Reading(_Strict):
    """One sample of one device: several values taken at the same instant."""

    device_id: DeviceId
    kind: Kind
    ts: StrictInt = Field(description="Edge timestamp, integer milliseconds since the Unix epoch, UTC", ge=0)
    values: dict[FieldName, Value] = Field(min_length=1, max_length=MAX_VALUES_PER_READING)
    units: dict[FieldName, Annotated[str, StringConstraints(max_length=16)]] = Field(default_factory=dict)
    tags: dict[TagKey, DeviceId] = Field(
        default_factory=dict,
        max_length=MAX_TAGS_PER_READING,
        description="Extra low-cardinality tags to group by (e.g. district); part of the series identity",
    )
    backfill: bool = Field(
        default=False, description="Sent late, from the backlog after an outage: not for live alerting"
    )

    @model_validator(mode="after")
    def _units_name_values(self) -> Reading:
        extra = set(self.units) - set(self.values)
        if extra:
            raise ValueError(f"units given for fields without values: {sorted(extra)}")
        if "backfill" in self.values:
            raise ValueError("value name 'backfill' is reserved (the late-delivery mark)")
        if self.tags:
            bad = RESERVED_TAGS.intersection(self.tags) | set(self.values).intersection(self.tags)
            if bad:
                raise ValueError(f"tag keys clash with device/gateway or a value name: {sorted(bad)}")
        return self


class TelemetryBatch(_Strict):
    """The payload of ``cityos/v1/<gateway_id>/telemetry`` (JSON, UTF-8, QoS 1)."""

    v: Literal[1] = SCHEMA_VERSION
    gateway_id: GatewayId
    boot_id: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    seq: StrictInt = Field(ge=0, description="Per-gateway message number, increasing; survives agent restarts")
    sent_at: StrictInt = Field(ge=0, description="When the gateway built this message, ms since epoch UTC")
    readings: list[Reading] = Field(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)

    @field_validator("v", mode="before")
    @classmethod
    def _integer_version(cls, v: Any) -> Any:
        if type(v) is not int:  # JSON `true` and `1.0` equal 1 in Python; neither is version 1
            raise ValueError("v must be the integer 1")
        return v


class GatewayStatus(_Strict):
    """The retained payload of ``cityos/v1/<gateway_id>/status``; the MQTT last will sets ``state=offline``.

    ``registered``: published by the fleet registry (`cityos fleet add`) for a gateway that has not spoken yet, so
    the fleet view and the offline alert know it before its first connection; its own first status replaces it.
    """

    v: Literal[1] = SCHEMA_VERSION
    gateway_id: GatewayId
    state: Literal["online", "offline", "registered"]
    boot_id: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    ts: StrictInt = Field(ge=0)
    agent_version: str | None = None
    config_hash: str | None = None
    backlog_depth: int | None = Field(default=None, ge=0)
    backlog_age_s: float | None = Field(default=None, ge=0)
    counters: dict[FieldName, float] = Field(default_factory=dict)
    #: Health per device behind the gateway (each forest station, each meter), for the fleet view: a few numbers
    #: each (``ok`` 1/0, ``last_ok_ms``, ``errors``...). Not written to InfluxDB (the source_health readings are).
    devices: dict[DeviceId, dict[FieldName, float]] = Field(default_factory=dict, max_length=64)


class Receipt(_Strict):
    """The payload of ``cityos/v1/<gateway_id>/receipt``: the ingest stored this probe message in InfluxDB.

    Sent after InfluxDB acknowledged the write that held the probe's points (HTTP 204: in its write-ahead log),
    the same moment the ingest acknowledges any message to the broker. The gateway holds no InfluxDB credential;
    this is how it learns that its data arrives.
    """

    v: Literal[1] = SCHEMA_VERSION
    gateway_id: GatewayId
    boot_id: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    seq: StrictInt = Field(ge=0)
    points: StrictInt = Field(ge=0)
    stored_at: StrictInt = Field(ge=0)


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


def reading_body(r: Reading) -> str:
    """A reading's JSON as a gateway keeps it until it is sent: compact, defaults left out, without its late
    mark (whether it is late is known only when it is sent). :func:`splice_batch` joins such bodies."""
    return r.model_dump_json(exclude_defaults=True, exclude={"backfill"})


_BACKFILL_TAIL = ',"backfill":true}'


def splice_batch(
    gateway_id: str, boot_id: str, seq: int, sent_at: int, bodies: Sequence[str], late: Sequence[bool]
) -> bytes:
    """The :class:`TelemetryBatch` payload of stored reading bodies (:func:`reading_body`), spliced, not parsed
    and dumped again (that was 90 % of a gateway's CPU while draining a backlog); ``late[i]`` marks body ``i``
    ``"backfill": true``. Decodes to the batch of those readings (tested against :class:`TelemetryBatch`)."""
    head = json.dumps(
        {"v": SCHEMA_VERSION, "gateway_id": gateway_id, "boot_id": boot_id, "seq": seq, "sent_at": sent_at},
        separators=(",", ":"),
    )
    readings = ",".join(b[:-1] + _BACKFILL_TAIL if lt else b for b, lt in zip(bodies, late, strict=True))
    return f'{head[:-1]},"readings":[{readings}]}}'.encode()


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
    """Validate a telemetry message as received on ``topic``; raise :class:`ContractError` with a reason.

    Two paths, one contract: valid messages (nearly all of them) are validated by pydantic-core straight from
    the bytes (JSON mode), which is a third cheaper per reading than ``json.loads`` + ``model_validate`` and is
    most of the ingest's CPU. Anything the fast path does not accept cleanly goes through the checked path, so
    every rejection and its reason come from one place; the fast path only ever accepts.
    """
    topic_gw = gateway_from_topic(topic)
    if topic_gw is not None and len(payload) <= MAX_PAYLOAD_BYTES:
        try:
            batch = TelemetryBatch.model_validate_json(payload)
        except ValueError:
            pass  # the checked path says why
        else:
            # JSON mode fills in an absent "v", which the contract rejects: only accept it when present.
            if "v" in batch.model_fields_set and batch.gateway_id == topic_gw:
                lo, hi = _window(now_ms, max_past_s, max_future_s)
                if all(lo <= r.ts <= hi for r in batch.readings):
                    return batch
    return _decode_checked(topic, payload, now_ms=now_ms, max_past_s=max_past_s, max_future_s=max_future_s)


def _load_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        raw = json.loads(payload, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractError("bad_json", str(exc)[:200]) from None
    except RecursionError:
        raise ContractError("bad_json", "JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise ContractError("schema", "payload is not a JSON object")
    v = raw.get("v")
    if type(v) is not int or v != SCHEMA_VERSION:  # `true == 1` in Python: not a version
        raise ContractError("unsupported_version", repr(v)[:40])
    return raw


def _check_gateway(claimed: str, topic_gw: str) -> None:
    if claimed != topic_gw:
        raise ContractError("gateway_mismatch", f"payload says {claimed!r}, topic says {topic_gw!r}")


M = TypeVar("M", TelemetryBatch, GatewayStatus)


def _validated(model: type[M], topic: str, suffix: str, payload: bytes) -> M:
    """Topic, JSON, version, schema and gateway checks shared by telemetry and status, each with its reason."""
    topic_gw = gateway_from_topic(topic)
    if topic_gw is None or not topic.endswith(suffix):
        raise ContractError("bad_topic", topic[:200])
    raw = _load_object(payload)
    try:
        obj = model.model_validate(raw)
    except ValidationError as exc:
        raise ContractError("schema", _short_validation_error(exc)) from None
    _check_gateway(obj.gateway_id, topic_gw)
    return obj


def _window(now_ms: int, max_past_s: int, max_future_s: int) -> tuple[int, int]:
    return now_ms - max_past_s * 1000, now_ms + max_future_s * 1000


def _decode_checked(
    topic: str, payload: bytes, *, now_ms: int, max_past_s: int, max_future_s: int
) -> TelemetryBatch:
    """The slow, explicit path: each check in turn, each failure with its reason."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    batch = _validated(TelemetryBatch, topic, "/probe" if topic.endswith("/probe") else "/telemetry", payload)
    lo, hi = _window(now_ms, max_past_s, max_future_s)
    for r in batch.readings:
        if not lo <= r.ts <= hi:
            raise ContractError("timestamp_out_of_range", f"{r.device_id} ts={r.ts} outside [{lo}, {hi}]")
    return batch


def decode_status(
    topic: str,
    payload: bytes,
    *,
    now_ms: int,
    max_past_s: int = DEFAULT_MAX_PAST_S,
    max_future_s: int = DEFAULT_MAX_FUTURE_S,
) -> GatewayStatus:
    """Validate a status message, with the same reasons as :func:`decode_batch`."""
    status = _validated(GatewayStatus, topic, "/status", payload)
    lo, hi = _window(now_ms, max_past_s, max_future_s)
    if not lo <= status.ts <= hi:
        raise ContractError("timestamp_out_of_range", f"status ts={status.ts} outside [{lo}, {hi}]")
    return status


def _short_validation_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors()[:3]:
            loc = ".".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg')}")
        return "; ".join(parts)[:300]
    return str(exc)[:300]


# --- InfluxDB measurements (the line protocol itself is cloud-side: ingest/lineproto.py) ------------------------


def measurement_for(kind: str) -> str:
    return MEASUREMENTS.get(kind, kind)


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas published in docs/schema/ so that others can validate without our code."""
    return {
        "telemetry-batch.v1.schema.json": TelemetryBatch.model_json_schema(),
        "gateway-status.v1.schema.json": GatewayStatus.model_json_schema(),
    }
