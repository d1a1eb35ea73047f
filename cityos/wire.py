"""Wire contract v1: the only thing that crosses between edge and cloud code.

The gateway agent checks every :class:`Reading` against these types when it stores it and sends messages of the
:class:`TelemetryBatch` shape; the ingest decodes them with the same types, so a change to the contract is one
edit here (plus ``docs/wire-protocol.md`` and the published JSON Schema, which a test keeps in step).

The types are `msgspec <https://jcristharif.com/msgspec/>`_ Structs: typed, strict decoding straight from the
JSON bytes (no ``int`` from ``true`` or ``1.0``, no unknown keys), their limits written as ``msgspec.Meta``
constraints, their JSON Schema from ``msgspec.json.schema``. A Struct built in Python checks its names and the
rules across its fields (``__post_init__``), not its types and limits: what a program builds is checked in full
where it is encoded for the wire (:func:`reading_body`, :func:`encode_batch`, :func:`encode_status`,
:func:`encode_receipt`) or by :func:`checked`.

Design points (see docs/wire-protocol.md for the full text):

* Timestamps are integer milliseconds since the Unix epoch (UTC), set on the edge. InfluxDB identifies a point by
  measurement + tags + timestamp, so a redelivered message overwrites itself instead of doubling.
* Tags are low-cardinality identifiers only (gateway, device). Values become fields; numbers are always written
  as floats so a sensor that happens to report ``5`` and later ``5.2`` never causes a field-type conflict.
* Limits are part of the contract: both sides check them, the ingest dead-letters what exceeds them.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import typing
from collections.abc import Sequence
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct, field

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


class _Names:
    """A name pattern, checked with a memory of the strings that matched it.

    msgspec can check a ``Meta(pattern=...)`` itself, with Python's ``re`` per string: some 27 searches per forest
    reading (device, kind, each value and unit name), 10 µs, where the rest of decoding it takes 1.4 µs. The same
    few dozen ids and names arrive in every message, so a set lookup answers nearly always; a new string is
    matched once (``fullmatch``: ``re.search`` lets ``$`` match before a final newline, and ``"gw-1\\n"`` would
    break the line protocol). The memory is bounded: a flood of new names empties it, never grows it past the bound.
    The pattern is published in the JSON Schema all the same (:attr:`type`).
    """

    _BOUND = 10_000

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._re = re.compile(pattern)
        self._ok: set[str] = set()
        #: ``str`` with this pattern in the JSON Schema (msgspec does not check it: :meth:`bad` does).
        self.type: Any = Annotated[str, Meta(extra_json_schema={"pattern": pattern})]

    def bad(self, names: Any) -> Any:
        """The first of ``names`` (an iterable of str) that does not match, else ``_GOOD``."""
        ok = self._ok
        if ok.issuperset(names):
            return _GOOD
        for n in names:
            if n not in ok:
                if not isinstance(n, str) or self._re.fullmatch(n) is None:
                    return n
                if len(ok) >= self._BOUND:
                    ok.clear()
                ok.add(n)
        return _GOOD

    def refuse(self, what: str, names: Any) -> None:
        """ValueError naming the first of ``names`` that does not match (``what``: where it is)."""
        n = self.bad(names)
        if n is not _GOOD:
            raise ValueError(f"{what} {_short_key(n)} does not match {self.pattern}")


_GOOD = object()
_IDS = _Names(ID_PATTERN)
_KINDS = _Names(KIND_PATTERN)  # kinds and tag keys
_FIELDS = _Names(FIELD_PATTERN)
# The memories themselves, for Reading's hot check (cleared in place, never replaced).
_ID_OK, _KIND_OK, _FIELD_OK = _IDS._ok, _KINDS._ok, _FIELDS._ok

_MAX_FLOAT = sys.float_info.max
#: A float that JSON can carry: NaN and ±infinity fail these bounds (``json.loads`` reads ``1e400`` as infinity).
Finite = Annotated[float, Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]
GatewayId = _IDS.type
DeviceId = _IDS.type
Kind = _KINDS.type
FieldName = _FIELDS.type
#: Extra tag keys may not shadow the tags every point has.
RESERVED_TAGS = frozenset({"device", "gateway"})
TagKey = _KINDS.type
Value = Finite | bool | Annotated[str, Meta(max_length=MAX_STRING_VALUE)]
BootId = Annotated[str, Meta(min_length=8, max_length=64)]
Count = Annotated[int, Meta(ge=0)]
Millis = Annotated[int, Meta(ge=0)]

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


#: Topics of the cloud services themselves (never a gateway's: gateway ids live under TOPIC_ROOT).
SERVICE_ROOT = "cityos/svc"


def ingest_claim_topic(session_id: str) -> str:
    """Where an ingest process claims its MQTT session (retained; ``ingest.mqtt_in``): one process per session."""
    return f"{SERVICE_ROOT}/ingest/{session_id}/claim"


def gateway_from_topic(topic: str) -> str | None:
    """The gateway id in a telemetry, status or probe topic, or None if the topic is not ours."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] not in ("telemetry", "status", "probe"):
        return None
    return parts[2] if _ID_RE.fullmatch(parts[2]) else None


class _Struct(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """The contract's Structs: immutable, keyword-only, unknown keys refused, defaults left out when encoded."""


# gc=False: a reading holds only str, numbers and dicts of them, never a reference back to itself, so the garbage
# collector need not track the hundreds of thousands a busy ingest decodes per minute.
class Reading(_Struct, gc=False):
    """One sample of one device: several values taken at the same instant."""

    device_id: DeviceId
    kind: Kind
    ts: Annotated[int, Meta(ge=0, description="Edge timestamp, integer milliseconds since the Unix epoch, UTC")]
    values: Annotated[dict[FieldName, Value], Meta(min_length=1, max_length=MAX_VALUES_PER_READING)]
    units: dict[FieldName, Annotated[str, Meta(max_length=16)]] = field(default_factory=dict)
    tags: Annotated[
        dict[TagKey, DeviceId],
        Meta(
            max_length=MAX_TAGS_PER_READING,
            description="Extra low-cardinality tags to group by (e.g. district); part of the series identity",
        ),
    ] = field(default_factory=dict)
    backfill: Annotated[
        bool, Meta(description="Sent late, from the backlog after an outage: not for live alerting")
    ] = False

    def __post_init__(self) -> None:
        # Run by msgspec after every decode and convert, once the types are checked (an error here is a
        # ValidationError naming the reading), and by __init__ (a ValueError). The names' patterns (see _Names),
        # then the checks across fields.
        values = self.values
        if self.device_id not in _ID_OK or self.kind not in _KIND_OK or not _FIELD_OK.issuperset(values):
            _IDS.refuse("device_id", (self.device_id,))
            _KINDS.refuse("kind", (self.kind,))
            _FIELDS.refuse("value name", values)
        if self.units and not self.units.keys() <= values.keys():
            raise ValueError(f"units given for fields without values: {sorted(self.units.keys() - values.keys())}")
        if "backfill" in values:
            raise ValueError("value name 'backfill' is reserved (the late-delivery mark)")
        if self.tags:
            _KINDS.refuse("tag key", self.tags)
            _IDS.refuse("tag value", self.tags.values())
            bad = RESERVED_TAGS.intersection(self.tags) | (values.keys() & self.tags.keys())
            if bad:
                raise ValueError(f"tag keys clash with device/gateway or a value name: {sorted(bad)}")


# ``v``, the schema version (the integer 1: not ``true``, not ``1.0``), is each message Struct's tag: written first,
# required on the wire (the ingest's decoders ask for it), not an argument in Python.
class TelemetryBatch(_Struct, tag_field="v", tag=SCHEMA_VERSION):
    """The payload of ``cityos/v1/<gateway_id>/telemetry`` (JSON, UTF-8, QoS 1)."""

    gateway_id: GatewayId
    boot_id: BootId
    seq: Annotated[int, Meta(ge=0, description="Per-gateway message number, increasing; survives agent restarts")]
    sent_at: Annotated[int, Meta(ge=0, description="When the gateway built this message, ms since epoch UTC")]
    readings: Annotated[list[Reading], Meta(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)]

    def __post_init__(self) -> None:
        _IDS.refuse("gateway_id", (self.gateway_id,))


class GatewayStatus(_Struct, tag_field="v", tag=SCHEMA_VERSION):
    """The retained payload of ``cityos/v1/<gateway_id>/status``; the MQTT last will sets ``state=offline``.

    ``registered``: published by the fleet registry (`cityos fleet add`) for a gateway that has not spoken yet, so
    the fleet view and the offline alert know it before its first connection; its own first status replaces it.
    """

    gateway_id: GatewayId
    state: Literal["online", "offline", "registered"]
    boot_id: BootId
    ts: Millis
    agent_version: str | None = None
    config_hash: str | None = None
    backlog_depth: Count | None = None
    backlog_age_s: Annotated[float, Meta(ge=0, le=_MAX_FLOAT)] | None = None
    counters: dict[FieldName, Finite] = field(default_factory=dict)
    #: Health per device behind the gateway (each forest station, each meter), for the fleet view: a few numbers
    #: each (``ok`` 1/0, ``last_ok_ms``, ``errors``...). Not written to InfluxDB (the source_health readings are).
    devices: Annotated[dict[DeviceId, dict[FieldName, Finite]], Meta(max_length=64)] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _IDS.refuse("gateway_id", (self.gateway_id,))
        _FIELDS.refuse("counter name", self.counters)
        _IDS.refuse("device", self.devices)
        for health in self.devices.values():
            _FIELDS.refuse("device health name", health)


class Receipt(_Struct, tag_field="v", tag=SCHEMA_VERSION):
    """The payload of ``cityos/v1/<gateway_id>/receipt``: the ingest stored this probe message in InfluxDB.

    Sent after InfluxDB acknowledged the write that held the probe's points (HTTP 204: in its write-ahead log),
    the same moment the ingest acknowledges any message to the broker. The gateway holds no InfluxDB credential;
    this is how it learns that its data arrives.
    """

    gateway_id: GatewayId
    boot_id: BootId
    seq: Count
    points: Count
    stored_at: Millis

    def __post_init__(self) -> None:
        _IDS.refuse("gateway_id", (self.gateway_id,))



class _Unversioned(Struct, tag_field="v", tag=0):
    """Never valid: its tag makes the fast path's decoder a tagged union, and a union requires its tag (a lone
    tagged Struct would take a missing ``"v"`` for 1, which the contract refuses). ``"v": 0`` decodes to this and
    goes to the checked path, like every other refusal."""


class ContractError(ValueError):
    """A payload that breaks the contract; ``reason`` is short and stable enough to count by."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


S = TypeVar("S", Reading, TelemetryBatch, GatewayStatus, Receipt)

_encoder = msgspec.json.Encoder()
_fast_batch = msgspec.json.Decoder(TelemetryBatch | _Unversioned)
_receipt_decoder = msgspec.json.Decoder(Receipt)
_status_decoder = msgspec.json.Decoder(GatewayStatus)


# --- what a program builds: checked where it is encoded -------------------------------------------------------


def _fields(obj: Any) -> Any:
    """A Struct's fields as a dict, Structs inside too (a Struct handed to ``msgspec.convert`` is taken as it is,
    unchecked); every other value as it is, so that convert sees the very types the program used."""
    if isinstance(obj, Struct):
        return {f: _fields(getattr(obj, f)) for f in obj.__struct_fields__}
    if isinstance(obj, list | tuple):
        return [_fields(x) for x in obj]
    return obj


def _convert(obj: S) -> S:
    fields = _fields(obj)
    try:
        return msgspec.convert(fields, type(obj))
    except msgspec.ValidationError as exc:
        raise ContractError("schema", _schema_detail(exc, fields, type(obj))) from None


def _encode(obj: Struct) -> bytes:
    try:
        return _encoder.encode(obj)
    except UnicodeEncodeError:
        raise ContractError("schema", _unicode_detail(_fields(obj))) from None


def checked(obj: S) -> S:
    """``obj``, a Reading, TelemetryBatch, GatewayStatus or Receipt built in Python, as the contract has it (ints
    as floats where it says float), or :class:`ContractError` ``schema`` naming the field: a Struct checks its
    types and limits only when it is decoded or converted, never when it is built.

    How: ``msgspec.convert`` from its fields, the same checks as decoding (types and limits in C, then the
    names and the checks across fields in ``__post_init__``), then an encode, which is the only check for a lone
    surrogate (a str, yet no UTF-8). Convert rather than an encode→decode round trip: cheaper (a forest reading:
    1.7 µs against 3.1 µs; parsing floats back is the difference) and exact about what it was given: a NaN is
    "not finite" rather than the ``null`` JSON makes of it. (A ``Decimal`` becomes a float; a numpy number is
    refused: only ``float``, ``int``, ``bool`` and ``str`` are values.)
    """
    out = _convert(obj)
    _encode(out)
    return out


def encode_batch(batch: TelemetryBatch) -> bytes:
    """The batch's payload, checked (:func:`checked`); ``oversize`` past :data:`MAX_PAYLOAD_BYTES`."""
    data = _encode(_convert(batch))
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversize", f"{len(data)} bytes > {MAX_PAYLOAD_BYTES}")
    return data


def encode_status(status: GatewayStatus) -> bytes:
    """The status's payload, checked (:func:`checked`); absent fields left out."""
    return _encode(_convert(status))


def encode_receipt(receipt: Receipt) -> bytes:
    """The receipt's payload, checked (:func:`checked`)."""
    return _encode(_convert(receipt))


def reading_body(r: Reading) -> str:
    """A reading's JSON as a gateway keeps it until it is sent, checked (:func:`checked`: this is where a
    gateway's readings meet the contract): compact, defaults left out, without its late mark (whether it is late
    is known only when it is sent). :func:`splice_batch` joins such bodies."""
    fields = {"device_id": r.device_id, "kind": r.kind, "ts": r.ts, "values": r.values, "units": r.units,
              "tags": r.tags}
    try:
        body = msgspec.convert(fields, Reading)
    except msgspec.ValidationError as exc:
        raise ContractError("schema", _schema_detail(exc, fields, Reading)) from None
    return _encode(body).decode()


def reading_dict(r: Reading) -> dict[str, Any]:
    """Every field of ``r``, checked (:func:`checked`), defaults included: what a family's golden case records."""
    return msgspec.structs.asdict(checked(r))


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


# --- what a program receives ------------------------------------------------------------------------------------


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

    Two paths, one contract: valid messages (nearly all of them) are decoded and checked by msgspec straight from
    the bytes into the Structs, which is most of the ingest's CPU. Anything the fast path does not accept cleanly
    goes through the checked path, so every rejection and its reason come from one place; the fast path only ever
    accepts.
    """
    topic_gw = gateway_from_topic(topic)
    if topic_gw is not None and len(payload) <= MAX_PAYLOAD_BYTES and not topic.endswith("/status"):
        try:
            batch = _fast_batch.decode(payload)
        except (msgspec.DecodeError, ValueError):
            pass  # the checked path says why
        else:
            if type(batch) is TelemetryBatch and batch.gateway_id == topic_gw:
                lo, hi = _window(now_ms, max_past_s, max_future_s)
                if all(lo <= r.ts <= hi for r in batch.readings):
                    return batch
    return _decode_checked(topic, payload, now_ms=now_ms, max_past_s=max_past_s, max_future_s=max_future_s)


def _load_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversize", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        # Decoded as UTF-8 first: json.loads would also take UTF-16/32 bytes (it guesses), and the contract is UTF-8
        # (a UTF-8 BOM is refused too, as msgspec's fast path refuses it).
        raw = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
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
        obj = msgspec.convert(raw, model)
    except msgspec.ValidationError as exc:
        raise ContractError("schema", _schema_detail(exc, raw, model)) from None
    try:
        _encoder.encode(raw)
    except UnicodeEncodeError:  # json.loads reads "\ud800" into a str that no UTF-8 writer takes
        raise ContractError("schema", _unicode_detail(raw)) from None
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


def _decode_as(decoder: msgspec.json.Decoder, payload: bytes) -> Any:
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ContractError("schema", str(exc)[:300]) from None
    except msgspec.DecodeError as exc:
        raise ContractError("bad_json", str(exc)[:200]) from None


def decode_receipt(payload: bytes) -> Receipt:
    """A receipt as a gateway reads it (`cityos gateway check --live`): :class:`ContractError` if it is not one."""
    return _decode_as(_receipt_decoder, payload)


def decode_retained_status(payload: bytes) -> GatewayStatus:
    """A retained status as the fleet view reads it: the contract's types, but no time window (a status may be
    months old) and no topic (the caller compares the gateway with its topic's). :class:`ContractError` if not."""
    return _decode_as(_status_decoder, payload)


# --- short, exact details for the dead letters ------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*) - at (?P<key>`key` in )?`(?P<path>\$[^`]*)`$", re.DOTALL)
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+|\.\.\.)\]")
_NOT_FINITE = re.compile(r"Expected `float` [<>]= -?1\.7976931348623157e\+308")


def _schema_detail(exc: msgspec.ValidationError, raw: Any, model: type) -> str:
    """msgspec's message, short, with the path completed: msgspec writes a dict's entry as ``[...]`` and a bad key
    as "`key` in" the dict; the detail names the entry (``$.readings[0].values.temp_c``), found by checking
    the raw entries of that dict one by one (only ever on a refused message)."""
    text = _NOT_FINITE.sub("Expected a finite `float`", str(exc))
    m = _AT.match(text)
    if m is None:
        return text[:300]
    path = _locate(m["path"], raw, model, key=bool(m["key"]))
    return f"{m['msg'][:200]} - at {path}"[:300]


def _locate(path: str, raw: Any, typ: Any, *, key: bool) -> str:
    where = "$"
    for name, index in _STEP.findall(path[1:]):
        typ = _bare(typ)
        if name:
            hints = _hints(typ) if isinstance(typ, type) and issubclass(typ, Struct) else {}
            if name not in hints or not isinstance(raw, dict) or name not in raw:
                return f"`{path}`"
            typ, raw, where = hints[name], raw[name], f"{where}.{name}"
        elif index != "...":
            i = int(index)
            if not isinstance(raw, list) or i >= len(raw) or not typing.get_args(typ):
                return f"`{path}`"
            typ, raw, where = typing.get_args(typ)[0], raw[i], f"{where}[{i}]"
        else:
            k = _first_bad(raw, typing.get_args(typ)[1:], values=True)
            if k is None:
                return f"`{path}`"
            typ, raw, where = typing.get_args(typ)[1], raw[k], _entry(where, k)
    if key:
        k = _first_bad(raw, typing.get_args(_bare(typ))[:1], values=False)
        return f"key {_short_key(k)} in `{where}`" if k is not None else f"`key` in `{path}`"
    return f"`{where}`"


def _first_bad(d: Any, of: tuple[Any, ...], *, values: bool) -> Any:
    """The first key of dict ``d`` whose value (or the key itself) the type in ``of`` refuses."""
    if not isinstance(d, dict) or not of:
        return None
    for k, v in d.items():
        try:
            msgspec.convert(v if values else k, of[0])
        except msgspec.ValidationError:
            return k
    return None


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _entry(where: str, k: Any) -> str:
    """The path of entry ``k`` of the dict at ``where``: ``.temp_c``, or ``["Not A Name"]``."""
    return f"{where}.{k}" if isinstance(k, str) and _NAME.fullmatch(k) else f"{where}[{_short_key(k)}]"


def _short_key(k: Any) -> str:
    s = json.dumps(k, ensure_ascii=True) if isinstance(k, str) else repr(k)
    return s if len(s) <= 40 else s[:37] + '..."'


def _bare(typ: Any) -> Any:
    """``typ`` without ``Annotated`` and without ``| None``."""
    if typing.get_origin(typ) is Annotated:
        typ = typing.get_args(typ)[0]
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) in (typing.Union, UnionType) and len(args) == 1:
        return _bare(args[0])
    return typ


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _unicode_detail(raw: Any, where: str = "$") -> str:
    """Where the first string that is not valid Unicode (a lone surrogate, which JSON's \\u escapes can spell)
    is."""
    path = _bad_unicode(raw, where) or f"`{where}`"
    return f"string is not valid Unicode (a lone surrogate) - at {path}"[:300]


def _bad_unicode(obj: Any, where: str) -> str | None:
    if isinstance(obj, str):
        return None if _utf8(obj) else f"`{where}`"
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and not _utf8(k):
                return f"key {_short_key(k)} in `{where}`"
            found = _bad_unicode(v, _entry(where, k))
            if found:
                return found
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = _bad_unicode(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _utf8(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


# --- InfluxDB measurements (the line protocol itself is cloud-side: ingest/lineproto.py) ------------------------


def measurement_for(kind: str) -> str:
    return MEASUREMENTS.get(kind, kind)


def _schema(model: type) -> dict[str, Any]:
    """``msgspec.json.schema`` of ``model`` with the model itself at the top (msgspec puts a ``$ref`` there) and
    the JSON Schema dialect named."""
    schema = msgspec.json.schema(model)
    defs = schema["$defs"]
    top = defs.pop(model.__name__)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **top, **({"$defs": defs} if defs else {})}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas published in docs/schema/ so that others can validate without our code."""
    return {
        "telemetry-batch.v1.schema.json": _schema(TelemetryBatch),
        "gateway-status.v1.schema.json": _schema(GatewayStatus),
    }
