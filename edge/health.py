"""The gateway's health as telemetry: the machine itself, and every source's device counters.

Why readings and not only the retained status message: the status is a snapshot that the next one overwrites, so
it can't answer "when did the meter start rate-limiting" or "how did the backlog grow during the outage". Health
readings go through the same durable outbox as data (so an outage leaves no gap in them either) and land in
InfluxDB as two measurements:

* ``gateway_health`` (device ``gateway``): CPU, memory, disk, temperature, backlog depth and age, uplink and
  outbox counters (among them ``outbox_disk_full``, 1 while readings cannot be stored for lack of space, and
  ``outbox_store_failed``, how many could not). Percentages of CPU are of **one core** (100 = one core busy),
  the unit the budgets in ``docs/benchmarks.md`` use.
* ``source_health`` (device = the source's name, tag ``family`` = its type): ``store_failed`` (this source's
  readings a full disk kept out of the outbox; the agent adds it) and whatever the source's ``health()``
  reports: CRC and timeout counts on a Modbus bus, session and rate-limit state of a smart meter, zero drift of
  a truck's load cell, GPS fix quality. One reading per source keeps each under the 64-value limit.

A health reading goes through the outbox like any other, so on a full disk it is dropped and counted too; the
retained status message (``edge/agent.py``'s ``status_fields``) carries the same counters and needs no disk.

The machine's numbers come from /proc and /sys (``edge/machine.py``, not psutil: see there why); a value the
machine can't give (no thermal sensor in a container) is left out, not written as 0.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cityos.wire import MAX_VALUES_PER_READING, Reading
from edge import clock
from edge.machine import Machine

GATEWAY_KIND = "gateway_health"
SOURCE_KIND = "source_health"
_FIELD_BAD = re.compile(r"[^a-z0-9_]")
_ID_BAD = re.compile(r"[^a-z0-9_-]")


def field_name(name: str) -> str:
    """A counter name as a wire field name (``^[a-z][a-z0-9_]{0,47}$``)."""
    out = _FIELD_BAD.sub("_", name.lower())
    if not out or not out[0].isalpha():
        out = "c_" + out
    return out[:48]


def device_name(name: str) -> str:
    """A source name as a device id (``^[a-z0-9][a-z0-9_-]{0,62}$``)."""
    out = _ID_BAD.sub("-", name.lower()).strip("-_") or "source"
    return out[:63]


class HealthSampler:
    """Builds the health readings; the agent calls :meth:`readings` every ``health.interval_s``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.host = Machine(data_dir)  # CPU percentages are measured from here to the first sample
        self.started = time.monotonic()

    def machine(self) -> dict[str, float]:
        m = self.host
        total, available = m.memory()
        values: dict[str, float] = {
            "agent_cpu_pct": round(m.agent_cpu_pct(), 2),
            "cpu_pct": round(m.cpu_pct(), 2),
            "cpu_count": float(m.cpu_count),
            "load1": round(m.load1(), 3),
            "agent_rss_mb": round(m.agent_rss_bytes() / 2**20, 2),
            "mem_used_pct": round(100 * (total - available) / total, 2),
            "mem_available_mb": round(available / 2**20, 1),
            "agent_uptime_s": round(time.monotonic() - self.started, 1),
            "boot_uptime_s": round(time.time() - m.boot_time(), 1),
        }
        try:
            free, used_pct = m.disk()
            values["disk_free_mb"] = round(free / 2**20, 1)
            values["disk_used_pct"] = round(used_pct, 2)
        except OSError:
            pass
        temp = m.temperature_c()
        if temp is not None:
            values["cpu_temp_c"] = round(temp, 1)
        return values

    def readings(
        self,
        gateway_counters: dict[str, float],
        sources: Iterable[tuple[str, str, Callable[[], dict[str, float]]]],
    ) -> list[Reading]:
        """One ``gateway_health`` reading and one ``source_health`` reading per source, all stamped now."""
        ts = int(clock.now() * 1000)
        values = self.machine()
        for k, v in gateway_counters.items():
            values.setdefault(field_name(k), float(v))
        out = [Reading(device_id="gateway", kind=GATEWAY_KIND, ts=ts, values=_cap(values))]
        for name, family, health in sources:
            try:
                counters = health()
            except Exception:  # a source's health() bug must not cost the gateway its health data
                counters = {"health_error": 1.0}
            src_values = {field_name(k): float(v) for k, v in counters.items()}
            if src_values:
                out.append(
                    Reading(
                        device_id=device_name(name),
                        kind=SOURCE_KIND,
                        ts=ts,
                        values=_cap(src_values),
                        tags={"family": device_name(family)},
                    )
                )
        return out


def _cap(values: dict[str, Any]) -> dict[str, Any]:
    return dict(list(values.items())[:MAX_VALUES_PER_READING])
