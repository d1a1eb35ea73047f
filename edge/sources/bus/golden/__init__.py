"""The bus family's golden cases: NMEA bytes and adverts in, readings out, through :class:`BusCore` alone.

Each ``*.json`` here is ``{"description", "input", "readings"}`` (``tests/test_golden.py`` runs them).
``input``:

* ``config``: the ``bus`` source's settings (:class:`~edge.sources.bus.source.BusConfig`) apart from its ports
  and scanner, which replay fills with placeholders it never opens; ``feed`` is relative to the repository
  root (the cases use the committed ``scenarios/gtfs-tsuyama-loop``).
* ``events``, in the order they were received, each with ``t`` (the gateway's data clock, epoch s) and one of:
  ``gps`` (what the receiver sent, as text; ``gps_hex`` for bytes that are not text) or ``advert`` (the core's
  :class:`~edge.sources.bus.ble_ids.Advert` as JSON: ``address``, ``rssi``, ``manufacturer_data`` as
  ``{"<company id>": "<hex>"}``, ``service_uuids``; its ``rx_s`` is the event's ``t``).

Replay does what the source does between its ports: an advert is hashed and filed at once; GPS bytes go to
:meth:`BusCore.on_gps` and then the core ticks (fix state, and the live position when it is due). No port, no
thread, no clock.

App riders' ``bus_od`` readings carry the per-day keyed hash of their token, under a salt drawn at random for
every core (docs/privacy.md): they cannot be golden, so no case has a city-app iBeacon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cityos.wire import Reading, reading_dict
from edge.sources.bus.ble_ids import Advert
from edge.sources.bus.source import BusConfig, BusCore

ROOT = Path(__file__).resolve().parents[4]

__all__ = ["advert", "config", "replay"]


def config(settings: dict[str, Any]) -> BusConfig:
    """The case's settings with placeholder ports (never opened); ``feed`` relative to the repository root."""
    return BusConfig.model_validate(
        {
            "type": "bus",
            "name": "bus",
            "gps_port": "/dev/null",
            "ble": {"backend": "sim", "sim_socket": "/dev/null"},
            **settings,
            "feed": str(ROOT / settings["feed"]),
        }
    )


def advert(obj: dict[str, Any], rx_s: float) -> Advert:
    """An advert of a case (JSON) → the core's Advert, received at ``rx_s``."""
    return Advert(
        address=obj["address"],
        rssi=obj["rssi"],
        rx_s=rx_s,
        manufacturer_data={int(k): bytes.fromhex(v) for k, v in obj.get("manufacturer_data", {}).items()},
        service_uuids=tuple(obj.get("service_uuids", ())),
    )


def replay(case: dict[str, Any]) -> list[dict[str, Any]]:
    """A case's events through a fresh :class:`BusCore`; its readings, :func:`cityos.wire.reading_dict`."""
    inp = case["input"]
    events = inp["events"]
    core = BusCore(config(inp["config"]), events[0]["t"] if events else 0.0)
    out: list[Reading] = []
    for ev in events:
        t = ev["t"]
        if "advert" in ev:
            core.add(core.observe(advert(ev["advert"], t)))
            continue
        data = ev["gps"].encode("ascii") if "gps" in ev else bytes.fromhex(ev["gps_hex"])
        out += core.on_gps(data, t)
        position = core.tick(t)
        if position is not None:
            out.append(position)
    return [reading_dict(r) for r in out]
