"""The forest family's golden cases: the bytes stations sent back in, readings out, through the sans-I/O core
(:mod:`edge.sources.forest.codec`) alone.

Each ``*.json`` here is ``{"description", "input", "readings"}`` (run by ``tests/test_golden.py``). ``input``:

* ``device_id``, ``unit``: the station as configured; ``lat``/``lon`` (optional) its position;
  ``rain_event_dry_gap_h`` (optional, default 24).
* ``state`` (optional): the station state committed with its last reading (``codec.StationState`` as JSON),
  as a restarted gateway loads it.
* ``holding``: the bytes received after "read holding registers 0..3" (RTC, sample interval, rain resolution).
* ``samples``: the bytes received after each "read input registers" of a 13-register sample record (the live
  block, or a slot of the history ring), in the order the gateway emits them: a catch-up emits the ring's
  records before the live sample whose number showed the gap.

Bytes are hex strings, exactly as they came off the line (junk included). A request that was retried is a list
of hex strings, one per attempt: as on the bus, the first attempt that brings a good frame ends the request.

Replay does what the gateway does with the replies: each is parsed once by the codec's reply parser; the
holding block gives the rain resolution; a sample becomes a reading with ``codec.next_reading`` from the state
so far, unless it has no usable time (RTC unset) or is not after the last emitted sample (both skipped by the
gateway too). A request without a good reply, a Modbus exception, or a record the register decoder rejects
gives no reading. No port, no thread, no clock.
"""

from __future__ import annotations

from typing import Any

from cityos.wire import Reading, reading_dict
from edge.sources.forest import codec

__all__ = ["replay"]


def _registers(entry: str | list[str], unit: int, function_code: int, count: int) -> list[int] | None:
    """The registers one request brought back: the attempts' bytes, each parsed once, until a good frame."""
    size = codec.reply_size(function_code, count)
    for raw in [entry] if isinstance(entry, str) else entry:
        reply = codec.parse_reply(bytes.fromhex(raw), unit, function_code, size)
        if reply.kind == "ok":
            return None if reply.registers is None else list(reply.registers)
        if reply.kind == "exception" or reply.late_function_code is not None:
            return None  # a good frame ends the request: no retry
    return None


def replay(case: dict[str, Any]) -> list[dict[str, Any]]:
    inp = case["input"]
    device_id, unit = inp["device_id"], inp["unit"]
    holding = _registers(inp["holding"], unit, codec.FC_READ_HOLDING, codec.HOLDING_BLOCK_COUNT)
    if holding is None:
        return []  # the gateway emits nothing before it has the station's rain resolution
    try:
        info = codec.decode_holding(holding)
    except codec.CodecError:
        return []
    dry_gap_ms = round(inp.get("rain_event_dry_gap_h", codec.DEFAULT_RAIN_EVENT_DRY_GAP_H) * 3_600_000)
    state = codec.StationState.from_json(inp["state"]) if inp.get("state") is not None else None
    out = []
    for entry in inp["samples"]:
        registers = _registers(entry, unit, codec.FC_READ_INPUT, codec.INPUT_BLOCK_COUNT)
        if registers is None:
            continue
        try:
            sample = codec.decode_sample(registers)
        except codec.CodecError:
            continue
        if sample.clock_unset or (state is not None and sample.ts_ms <= state.ts):
            continue
        values, units, state = codec.next_reading(sample, state, info.rain_res_x1000, dry_gap_ms)
        if inp.get("lat") is not None:
            values = {**values, "lat": inp["lat"], "lon": inp["lon"]}
            units = {**units, "lat": "deg", "lon": "deg"}
        reading = Reading(device_id=device_id, kind=codec.KIND, ts=sample.ts_ms, values=values, units=units)
        out.append(reading_dict(reading))
    return out
