"""Golden cases of the smart-meter core: the core's own events in, readings out (``tests/test_golden.py``).

The core takes ECHONET Lite property values as momonga decodes them (it does no byte decoding of its own: that
is momonga's), so a case's ``input`` holds decoded values, written as JSON::

    {
      "device_id": "hh-0001", "district": "kamo",      # district optional
      "utc_offset_h": 9,                               # optional, 9 (JST)
      "state": {"v": 1, "last_slot_ms": ..., ...},     # optional: what the outbox committed before
      "unit": 0.1, "coefficient": 1,                   # E1 (as momonga maps it) and D3, read at the open
      "events": [
        {"poll": {"t_ms": ..., "E7": 532, "E0": 12345.600000000002, "E3": 0.0,
                  "EA": {"timestamp": "2026-11-25T02:00:00", "kwh": 12345.5}}},
        {"notification": {"EA": {...}}},
        {"history": {"days": {"0": {"3": 12344.9, ...}}, "EA": {...}}},
        {"unit": 0.01, "coefficient": 10}              # a new session with another resolution
      ]
    }

* Property keys are the EPC in hex; ``E0``/``E3``/the kWh values are the float products momonga computes
  (count × unit × coefficient), so the cases show the rounding to the meter's resolution. ``null`` is
  momonga's "the meter has no value". An EA is ``{"timestamp": meter local time, ISO, naive, "kwh": ...}``
  (momonga's ``{"timestamp", "cumulative energy"}``) or ``{"raw": "hex"}``: the bytes momonga keeps for an INF
  it could not read, and the source for a polled value it could not (a fresh meter's "no data" EA, year 65535).
* ``history`` answers the core's pending :class:`~edge.sources.meter.core.HistoryRequest`: per E5 day index,
  the E2 entries as ``{half-hour index: kWh}`` (the other of the 48 entries have no value), and the EA read
  after them. A history request with no ``history`` event after it is dropped, as when the read fails.

Every emitted reading is taken as committed (the core's state advances with it), as the outbox does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cityos.wire import reading_dict
from edge.sources.meter.core import HistoryRequest, MeterCore, Step

__all__ = ["replay"]


def _value(v: Any) -> Any:
    if isinstance(v, dict) and "raw" in v:
        return bytes.fromhex(v["raw"])
    if isinstance(v, dict):
        return {"timestamp": dt.datetime.fromisoformat(v["timestamp"]), "cumulative energy": v["kwh"]}
    return v


def _props(event: dict[str, Any]) -> dict[int, Any]:
    return {int(k, 16): _value(v) for k, v in event.items() if k != "t_ms"}


def _day(entries: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"cumulative energy": entries.get(str(i))} for i in range(48)]


def replay(case: dict[str, Any]) -> list[dict[str, Any]]:
    inp = case["input"]
    core = MeterCore(
        inp.get("device_id", "hh-0001"),
        district=inp.get("district"),
        utc_offset_h=inp.get("utc_offset_h", 9.0),
        state=inp.get("state"),
    )
    if "unit" in inp:
        core.set_resolution(inp["unit"], inp.get("coefficient", 1))
    out: list[dict[str, Any]] = []
    pending: HistoryRequest | None = None

    def take(step: Step) -> None:
        nonlocal pending
        for emission in step.emissions:
            out.append(reading_dict(emission.reading))
            core.committed(emission)
        pending = step.history

    for event in inp["events"]:
        if "history" in event:
            h = event["history"]
            if pending is not None:
                days = {int(d): _day(entries) for d, entries in h["days"].items()}
                take(core.on_history(pending, days, _value(h["EA"])))
            continue
        pending = None
        if "poll" in event:
            take(core.on_poll(event["poll"]["t_ms"], _props(event["poll"])))
        elif "notification" in event:
            take(core.on_notification(_props(event["notification"])))
        elif "unit" in event:
            core.set_resolution(event["unit"], event.get("coefficient", 1))
        else:
            raise ValueError(f"unknown event {sorted(event)}")
    return out
