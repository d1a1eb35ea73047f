"""The truck family's golden cases: indicator lines and NMEA bytes in, pickup and trip readings out, through
the weighing decoder, the NMEA core and :class:`~edge.sources.truck.source.CollectionTracker` alone.

Each ``*.json`` here is ``{"description", "input", "readings"}`` (``tests/test_golden.py`` runs them).
``input``:

* ``config``: the ``garbage_truck`` source's settings (:class:`~edge.sources.truck.source.TruckConfig`) apart
  from its ports, which replay fills with placeholders it never opens; ``districts`` relative to the
  repository root (default: the committed ``scenarios/tsuyama-districts.geojson``).
* ``state`` (optional): the tracker state committed with the last reading before a restart
  (``TripState.dump()``).
* ``events``, in the order they were received, each with ``t`` (the gateway's data clock, epoch s) and one of:
  ``indicator`` / ``gps`` (what the weighing indicator or the GPS receiver sent, as text), or
  ``indicator_hex`` / ``gps_hex`` (bytes that are not text).

Replay does what the source does between its ports: indicator bytes → :class:`WeighingDecoder` → ``on_weight``
per frame; GPS bytes → :class:`GpsTracker` → ``on_position`` per fix; then the GPS tracker ticks. No port, no
thread, no clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cityos.wire import Reading, reading_dict
from edge.sources.common.nmea import GpsTracker
from edge.sources.truck.source import CollectionTracker, TripState, TruckConfig
from edge.sources.truck.weighing import WeighingDecoder

ROOT = Path(__file__).resolve().parents[4]
DEFAULT_DISTRICTS = "scenarios/tsuyama-districts.geojson"

__all__ = ["config", "replay"]


def config(settings: dict[str, Any]) -> TruckConfig:
    """The case's settings with placeholder ports (never opened); ``districts`` relative to the repo root."""
    return TruckConfig.model_validate(
        {
            "type": "garbage_truck",
            "name": "truck",
            "indicator_port": "/dev/null",
            "gps_port": "/dev/null",
            **settings,
            "districts": str(ROOT / settings.get("districts", DEFAULT_DISTRICTS)),
        }
    )


def _bytes(ev: dict[str, Any], port: str) -> bytes | None:
    if port in ev:
        return ev[port].encode("ascii")
    if f"{port}_hex" in ev:
        return bytes.fromhex(ev[f"{port}_hex"])
    return None


def replay(case: dict[str, Any]) -> list[dict[str, Any]]:
    """Feed a case's events to a fresh tracker; its readings as :func:`cityos.wire.reading_dict`."""
    inp = case["input"]
    cfg = config(inp["config"])
    gps = GpsTracker(timeout_s=cfg.gps_timeout_s)
    weighing = WeighingDecoder()
    tracker = CollectionTracker(cfg, gps, TripState.load(inp.get("state")))
    out: list[Reading] = []
    for ev in inp["events"]:
        t = ev["t"]
        data = _bytes(ev, "gps")
        if data is not None:
            for fix in gps.feed(data, t):
                out += [e.reading for e in tracker.on_position(fix, t)]
        data = _bytes(ev, "indicator")
        if data is not None:
            for frame in weighing.feed(data):
                out += [e.reading for e in tracker.on_weight(frame, t)]
        gps.tick(t)
    return [reading_dict(r) for r in out]
