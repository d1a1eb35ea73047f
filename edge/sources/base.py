"""The source plug-in interface: a device family's source is one module (``edge/sources/<family>/source.py``) plus
one config section.

A source module defines a pydantic config model whose ``type`` field is a ``Literal`` naming it, and a class
implementing :class:`Source`. It registers both with :func:`register`. The agent runs each source in its own
thread (one thread per serial bus, so the bus needs no further lock), hands it a :class:`SourceContext` whose ``emit``
commits a reading (and the source's state) to the durable outbox, and reads ``health()`` for the status message.

Why threads and not asyncio: the I/O libraries we use on the edge (pyserial,
paho's network thread, sqlite3) are blocking, and one thread per bus is exactly the per-bus serialisation the
hardware needs.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from cityos.families import FAMILIES
from cityos.wire import Reading


class SourceContext(Protocol):
    """What the agent hands a running source."""

    #: The source's persisted state as it was last committed (empty on first start); the parts committed with
    #: ``part=`` are under ``state["parts"][part]``.
    state: dict[str, Any]

    def emit(self, reading: Reading, state: dict[str, Any] | None = None, part: str | None = None) -> None:
        """Commit ``reading`` to the durable outbox, and ``state`` (if given) in the same transaction.

        Committing the reading and the state that produced it together is what makes a source exact across a
        crash: e.g. the last sample number and rain-tip count are never ahead of or behind the readings. With
        ``part`` (e.g. a device id), ``state`` replaces only that part: a source of many devices then writes one
        device's state per reading, not all of them.
        """


class SourceConfig(BaseModel):
    """Base of every source's config section (``[[sources]]`` in the gateway TOML)."""

    model_config = ConfigDict(extra="forbid")
    type: str
    name: str


class Source(Protocol):
    name: str

    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        """Read the device until ``stop`` is set. Must not raise for device faults: count them and retry."""

    def health(self) -> dict[str, float]:
        """Counters and gauges for the status message (e.g. ``crc_errors``, ``timeouts``, ``readings``)."""

    # Optional: ``devices() -> dict[device_id, dict[str, float]]``, health per device behind the source (each
    # forest station on a bus, the meter of a household) with at least ``ok`` (1/0), for the fleet view; and
    # ``secrets() -> tuple[SecretStr, ...]``, secrets it read from files, which the agent keeps out of its logs.


@dataclass(frozen=True)
class SourcePlugin:
    config_model: type[SourceConfig]
    factory: Callable[[Any], Source]


_REGISTRY: dict[str, SourcePlugin] = {}


def register(type_name: str, config_model: type[SourceConfig], factory: Callable[[Any], Source]) -> None:
    _REGISTRY[type_name] = SourcePlugin(config_model, factory)


#: Built-in plug-ins, one per family (:data:`cityos.families.FAMILIES`): source type → the module that registers it.
#: Imported only when a config uses the type, so a gateway that reads forest stations never loads momonga or
#: pynmea2 (resident memory is a budget on a Pi).
BUILTIN: dict[str, str] = {f.source_type: f.edge_module for f in FAMILIES}


def plugin(type_name: str) -> SourcePlugin | None:
    """The plug-in for a source type, importing its module on first use; None if the type is unknown."""
    if type_name not in _REGISTRY and type_name in BUILTIN:
        importlib.import_module(BUILTIN[type_name])
    return _REGISTRY.get(type_name)


def known_types() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def registry() -> dict[str, SourcePlugin]:
    """Every plug-in (imports all built-in modules: for tools and tests, not for the agent)."""
    for name in BUILTIN:
        plugin(name)
    return dict(_REGISTRY)
