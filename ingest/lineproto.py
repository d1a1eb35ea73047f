"""The wire contract's readings and statuses as InfluxDB line protocol (v1 ``/write``, ``precision=ms``).

Cloud-side only: a gateway never writes line protocol. The mapping is part of the contract (docs/wire-protocol.md):
one point per reading, its measurement from the family registry (:func:`cityos.wire.measurement_for`), the tags
``device`` and ``gateway`` plus the reading's own, its values as fields with the late mark ``backfill``, and the
edge timestamp, so a redelivered message overwrites itself instead of doubling.
"""

from __future__ import annotations

from cityos.wire import GatewayStatus, TelemetryBatch, measurement_for

__all__ = ["STATUS_MEASUREMENT", "Signature", "batch_to_lines", "status_to_line"]


def _str_field(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _other_field(value: bool | str) -> str:
    """Booleans and strings; floats are formatted inline by :func:`batch_to_lines` (its hot path)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _str_field(value)


#: A message's fields for the ingest's field-type check (:mod:`ingest.fieldtypes`): (measurement, field, type).
Signature = frozenset[tuple[str, str, str]]
_TYPE_NAMES = {bool: "boolean", str: "string"}  # the names SHOW FIELD KEYS uses; numbers are "float"


def _noted(odd: list[tuple[str, str, str]], kind: str, key: str, value: bool | str) -> str:
    odd.append((kind, key, _TYPE_NAMES[type(value)]))
    return f"{key}={_other_field(value)}"


def batch_to_lines(batch: TelemetryBatch, sig: set[tuple[str, str, str]] | None = None) -> list[str]:
    """Line protocol for a batch: one line per reading, tags sorted by key (InfluxDB's fast path), numbers as
    floats, the edge timestamp in ms. Ids are escape-free by their patterns, so only strings need escaping.

    ``sig``, if given, receives the (measurement, field, type) of every value (the ``backfill`` mark aside: the
    contract reserves it), gathered per field layout while the fields are formatted: nearly free."""
    # The ingest's hottest loop: per-batch caches of the tag prefix and of the sorted field order, floats inline.
    gw = batch.gateway_id
    prefixes: dict[tuple[str, str], str] = {}
    orders: dict[tuple[str, ...], list[str]] = {}
    out: list[str] = []
    all_float: set[tuple[str, tuple[str, ...]]] = set()  # (kind, field names) of readings with only floats
    odd: list[tuple[str, str, str]] = []  # (kind, field, type) of the other readings' values
    for r in batch.readings:
        if r.tags:
            tags = sorted({**r.tags, "device": r.device_id, "gateway": gw}.items())
            prefix = measurement_for(r.kind) + "".join(f",{k}={v}" for k, v in tags) + " "
        else:
            prefix = prefixes.get((r.kind, r.device_id))
            if prefix is None:
                prefix = prefixes[(r.kind, r.device_id)] = (
                    f"{measurement_for(r.kind)},device={r.device_id},gateway={gw} "
                )
        values = r.values
        keys = tuple(values)
        order = orders.get(keys)
        if order is None:
            order = orders[keys] = sorted(keys)
        n_odd = len(odd)
        kind = r.kind
        fields = ",".join(
            [f"{k}={v!r}" if type(v) is float else _noted(odd, kind, k, v) for k in order for v in (values[k],)]
        )
        if len(odd) == n_odd:
            all_float.add((kind, keys))
        else:
            odd.extend((kind, k, "float") for k in keys if type(values[k]) is float)
        # A field, not a tag: a tag would make a redelivered backfill point a second series (a double count). On
        # every point, true or false: InfluxQL has no "IS NULL", and `backfill != true` is false where the field
        # is absent, so live-only alert rules need `backfill = false` to find the live points.
        fields += ",backfill=true" if r.backfill else ",backfill=false"
        out.append(f"{prefix}{fields} {r.ts}")
    if sig is not None:
        sig.update((measurement_for(kind), k, "float") for kind, keys in all_float for k in keys)
        sig.update((measurement_for(kind), k, t) for kind, k, t in odd)
    return out


STATUS_MEASUREMENT = "gateway_status"


def status_to_line(s: GatewayStatus) -> str:
    """``gateway_status,gateway=<id> state="online",backlog_depth=…,c_<counter>=… <ts>``: the fleet view's data.
    Numbers as floats, so no field can ever change type."""
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
