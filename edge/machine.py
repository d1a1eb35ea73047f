"""The gateway's own CPU, memory, disk and temperature, read from Linux's /proc and /sys.

Why not psutil: the agent needs nine numbers that Linux gives in six small files, and importing psutil costs the
agent 0.8 MB of its 40 MB resident-memory budget (docs/benchmarks.md). The values follow psutil's definitions
(memory used = total - available; disk percent of the space non-root users can have; CPU per core), and
tests/test_health.py checks them against psutil on this machine. A gateway is always Linux (Raspberry Pi OS);
a value a machine can't give (no thermal zone in a container) is None, never 0.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

from edge.clock import libc

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

#: Preferred thermal zones, most specific first: the Raspberry Pi SoC, then x86 package sensors.
_PREFERRED_ZONES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "soc-thermal")


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace")


def _host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (first line of /proc/stat; iowait counts as idle)."""
    fields = [int(x) for x in _read("/proc/stat").split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Machine:
    """Samples the host and this process; CPU percentages are since the previous sample (or construction)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._cpu_count = os.cpu_count() or 1
        self._host = _host_cpu_ticks()
        self._self = (_self_cpu_s(), time.monotonic())

    def agent_cpu_pct(self) -> float:
        """This process's CPU since the last call, % of one core."""
        cpu, now = _self_cpu_s(), time.monotonic()
        cpu0, t0 = self._self
        self._self = (cpu, now)
        return 100 * (cpu - cpu0) / (now - t0) if now > t0 else 0.0

    def cpu_pct(self) -> float:
        """The whole machine's CPU since the last call, % of one core (200 = both cores of a 2-core box busy)."""
        busy, total = _host_cpu_ticks()
        busy0, total0 = self._host
        self._host = (busy, total)
        return 100 * self._cpu_count * (busy - busy0) / (total - total0) if total > total0 else 0.0

    @property
    def cpu_count(self) -> int:
        return self._cpu_count

    @staticmethod
    def load1() -> float:
        return os.getloadavg()[0]

    @staticmethod
    def agent_rss_bytes() -> int:
        return int(_read("/proc/self/statm").split()[1]) * _PAGE

    @staticmethod
    def memory() -> tuple[int, int]:
        """(total, available) bytes, /proc/meminfo's MemTotal and MemAvailable."""
        info = {}
        for line in _read("/proc/meminfo").splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                info[key] = int(rest.split()[0]) * 1024
        return info["MemTotal"], info["MemAvailable"]

    @staticmethod
    def boot_time() -> float:
        return time.time() - float(_read("/proc/uptime").split()[0])

    def disk(self) -> tuple[int, float]:
        """(free bytes for the agent, used % of what non-root users can have) of the outbox's filesystem."""
        st = os.statvfs(self.data_dir)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        free = st.f_bavail * st.f_frsize
        return free, 100 * used / (used + free) if used + free else 0.0

    @staticmethod
    def temperature_c(root: str = "/sys/class/thermal") -> float | None:
        """The SoC's temperature (``cpu-thermal`` on a Raspberry Pi), else the hottest zone; None without any."""
        zones: dict[str, float] = {}
        try:
            names = sorted(n for n in os.listdir(root) if n.startswith("thermal_zone"))
        except OSError:
            return None
        for n in names:
            try:
                kind = _read(f"{root}/{n}/type").strip()
                zones.setdefault(kind, int(_read(f"{root}/{n}/temp").strip()) / 1000)
            except (OSError, ValueError):
                continue
        for kind in _PREFERRED_ZONES:
            if kind in zones:
                return zones[kind]
        return max(zones.values()) if zones else None


def release_free_memory(collect: bool = True) -> None:
    """Collect cycles (``collect``), then have glibc return free heap pages to the kernel (``malloc_trim``).

    glibc keeps freed memory for reuse and returns only the top of the heap, so what start-up allocated and freed
    (pydantic schema building, config parsing) stays resident: ~0.4 MB of the agent's 40 MB budget. A trim alone
    costs microseconds; a full collection ~5 ms here (more on a Pi). No-op where the C library has no malloc_trim
    (musl).
    """
    if collect:
        gc.collect()
    c = libc()
    trim = getattr(c, "malloc_trim", None) if c is not None else None
    if trim is not None:
        trim(0)
