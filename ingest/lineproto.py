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
    """Line protocol for a batch: one line per reading, tags sorted by key (InfluxDB's fast path), fields in the
    reading's order, numbers as floats, the edge timestamp in ms. Ids are escape-free by their patterns, so only
    strings need escaping.

    ``sig``, if given, receives the (measurement, field, type) of every value (the ``backfill`` mark aside: the
    contract reserves it), gathered per field layout while the fields are formatted: nearly free."""
    # The ingest's hottest loop (most of a decode worker's time). Per batch, a cache of tag prefixes and one of
    # field layouts: a %-format per (kind, field names) that formats a reading of floats in one C call. A float's
    # repr holds only digits, ".", "e", "+" and "-", and names, ids and the prefix are lowercase: a "T" or "F"
    # (True/False) or a quote in the line means a bool or a string went through %r, and that reading takes the
    # slow path. 17 % faster than formatting field by field (docs/benchmarks.md, issue 13).
    gw = batch.gateway_id
    prefixes: dict[tuple[str, str], str] = {}
    layouts: dict[tuple[str, tuple[str, ...]], list] = {}  # (kind, names) -> [format, a reading was all floats]
    odd: list[tuple[str, str, str]] = []  # (kind, field, type) of the slow-path readings' values
    out: list[str] = []
    append = out.append
    for r in batch.readings:
        values = r.values
        kind = r.kind
        if r.tags:
            tags = sorted({**r.tags, "device": r.device_id, "gateway": gw}.items())
            prefix = measurement_for(kind) + "".join(f",{k}={v}" for k, v in tags) + " "
        else:
            prefix = prefixes.get((kind, r.device_id))
            if prefix is None:
                prefix = prefixes[(kind, r.device_id)] = f"{measurement_for(kind)},device={r.device_id},gateway={gw} "
        # `backfill` is a field, not a tag: a tag would make a redelivered backfill point a second series (a double
        # count). On every point, true or false: InfluxQL has no "IS NULL", and `backfill != true` is false where
        # the field is absent, so live-only alert rules need `backfill = false` to find the live points.
        backfill = "true" if r.backfill else "false"
        keys = tuple(values)
        layout = layouts.get((kind, keys))
        if layout is None:
            layout = layouts[(kind, keys)] = ["%s" + ",".join([f"{k}=%r" for k in keys]) + ",backfill=%s %d", False]
        line = layout[0] % (prefix, *values.values(), backfill, r.ts)
        if "T" in line or "F" in line or "'" in line or '"' in line:
            fields = ",".join(
                [f"{k}={v!r}" if type(v) is float else _noted(odd, kind, k, v) for k, v in values.items()]
            )
            odd.extend((kind, k, "float") for k, v in values.items() if type(v) is float)
            line = f"{prefix}{fields},backfill={backfill} {r.ts}"
        else:
            layout[1] = True
        append(line)
    if sig is not None:
        sig.update((measurement_for(kind), k, "float") for (kind, keys), (_, floats) in layouts.items() if floats
                   for k in keys)
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
