"""Wi-SUN B-route module emulator: a ROHM BP35C2 (or BP35A1 / RL7023) on a pseudo-terminal, with the household's
smart meter behind it, answering **unmodified momonga** the way the hardware does.

One :class:`WiSunModuleSim` is one USB dongle and the one meter it talks to (a module holds one PANA session).
The gateway opens the pty slave (``.port``, optionally a udev-like symlink) exactly like ``/dev/ttyUSB0``.

The SKSTACK-IP dialogue (read from momonga 0.7's ``momonga_sk_wrapper.py`` / ``momonga_session_manager.py``)
-----------------------------------------------------------------------------------------------------------
* Commands end in ``\\r\\n``; ``ROPT``/``WOPT`` end in ``\\r`` and are answered ``OK 01\\r`` / ``OK\\r``
  without a line feed (momonga reads those byte by byte up to the ``\\r``). A lone ``\\r\\n`` (momonga's buffer
  flush on open) is ignored. The module echoes every command line (register SFE, on by default) before its answer.
* ``SKSENDTO <handle> <ip6> <port> <sec> [<side>] <LEN> `` is followed by LEN raw bytes and no line end; the
  echo shows the command header only. Answer: ``EVENT 21 <ip6> [side] 00`` then ``OK``, then the meter's reply as
  ``ERXUDP`` with the payload in ASCII hex (``WOPT 01`` mode). Without a PANA session: ``FAIL ER10``. While the
  transmit rate limit holds: ``EVENT 21 ... 01`` (sent nothing).
* ``SKSCAN 2 FFFFFFFF <dur> 0``: ``OK``, then — if the B-route ID set by ``SKSETRBID`` is the meter's (the meter
  only answers its own pairing ID) — ``EVENT 20`` and an ``EPANDESC`` block, then ``EVENT 22``.
* ``SKLL64 <mac>``: the link-local IPv6 address only (no ``OK``). ``SKJOIN``: ``OK`` then ``EVENT 25`` (success) or
  ``EVENT 24`` (wrong ID/password, wrong channel/PAN, or an injected failure). ``SKTERM``: ``OK`` then ``EVENT 27``
  (``EVENT 28`` when there was no session). ``SKRESET`` drops the session and the credentials.
* Dialects: ``bp35c2`` puts a side field in EVENT/ERXUDP/SKSCAN/SKSENDTO, reports LQI in ERXUDP and a side of 0 in
  ``SKINFO``; ``bp35a1`` has none of those and answers ``SKINFO`` with ``FFFE`` in that position (that is how
  momonga tells them apart); ``rl7023`` is the BP35A1 dialect with a firmware that answers ``ROPT`` with
  ``FAIL ER04`` (momonga then assumes ASCII mode).

The meter
---------
A household load curve, deterministic from the seed and the *simulated* time (an optional
:class:`cityos.simclock.ScaledClock`, else real time): base load, a morning and an evening peak, appliance
bursts and noise, constant over 10 s ticks. Energy is integrated exactly in integer joules; the E0 register is
``joules // (joules per count)`` wrapped at D7 digits, so the register and the ground truth cannot disagree. At
every :00/:30 boundary (meter local time, JST by default) the count is latched as the fixed-time value (EA) and
into the 30-min history (E2, day chosen by E5), and — with a session up — sent as an INF. Supported EPCs: 80, 88,
D3 (optional), D7, E0, E1, E2, E3/E4/EB (optional), E5 (Set), E7, E8, EA.

The meter powers on at ``start()``. Until its first boundary it has no fixed-time value: EA/EB answer the
standard's "no data" value (date and time bytes all 0xFF, i.e. year 65535, and count 0xFFFFFFFE) and the
history has no slots, while E7/E0 answer as always. A start exactly on :00/:30 latches that boundary at once
(a meter that has been running), unless ``fresh=True``: a meter just installed or powered on, which has
nothing until the next :00/:30 whenever it starts (CLI ``--fresh``).

Ground truth (JSON lines, one file may collect several households)::

    {"type": "fixed", "device_id": "hh-0001", "ts": <slot ms>, "count": 123456, "energy_kwh": 12345.6, "joules": ...}
    {"type": "power", "device_id": "hh-0001", "ts": <ms>, "power_w": 412}
    {"type": "event", "device_id": "hh-0001", "ts": <sim ms>, "event": "session_expired", ...}

Fault switches (methods, and CLI flags): :meth:`expire_session` (EVENT 29; sends fail until re-auth: EVENT 25,
or EVENT 24 and a new SKJOIN), :meth:`rate_limit` (EVENT 32; sends fail until EVENT 33), :meth:`fail_joins`
(EVENT 24 for the next N joins or re-auths), :meth:`set_meter_password` (the meter's password ≠ the configured
one: every join fails), :meth:`set_garble` (junk lines between lines, and ERXUDP lines corrupted so they no
longer parse). Junk is only ever sent next to a line the module sends anyway, never on an idle line.

Standalone (``cityos sim meter ...`` calls :func:`main`)::

    python -m firmware_sim.meter.sim --households hh-0001:1,hh-0002:2 --link-dir run/dev \\
        --ground-truth meters.jsonl [--rate 288] [--garble 0.02] [--fail-joins 2] [--expire-every 600]
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import itertools
import json
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cityos.simclock import ScaledClock
from firmware_sim.device import SimDevice, serve_until_stopped
from firmware_sim.meter import echonet as el
from firmware_sim.pty import PtyLink

Dialect = Literal["bp35c2", "bp35a1", "rl7023"]
DIALECTS: tuple[str, ...] = ("bp35c2", "bp35a1", "rl7023")

SLOT_S = 1800
#: Joules per count of E0 for each E1 unit code (kWh per count × 3.6 MJ).
JOULES_PER_UNIT: dict[int, int] = {
    0x00: 3_600_000, 0x01: 360_000, 0x02: 36_000, 0x03: 3_600, 0x04: 360,
    0x0A: 36_000_000, 0x0B: 360_000_000, 0x0C: 3_600_000_000, 0x0D: 36_000_000_000,
}  # fmt: skip
_UNIT_TEXT = {0x00: "1", 0x01: "0.1", 0x02: "0.01", 0x03: "0.001", 0x04: "0.0001",
              0x0A: "10", 0x0B: "100", 0x0C: "1000", 0x0D: "10000"}  # fmt: skip
_M64 = (1 << 64) - 1
#: EA/EB before the meter's first :00/:30: the standard's "no data" date and time (all 0xFF: year 65535, month
#: 255, ...) and count (0xFFFFFFFE).
FIXED_TIME_NO_DATA = b"\xff" * 7 + el.NO_DATA.to_bytes(4, "big")
_JUNK_ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789 #$%&*+-=?@~" + bytes(range(0x80, 0xFF))


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _uniform(seed: int, k: int, salt: int) -> float:
    """A deterministic uniform number in [0, 1) for (seed, tick, purpose): no RNG state to keep in step."""
    return _splitmix(_splitmix((seed & 0xFFFFFFFF) | (salt << 40)) ^ (k & _M64)) / 2**64


@dataclass(frozen=True)
class MeterSpec:
    """One household's meter and the credentials its B-route needs (the test/sim analogue of the grid
    operator's letter). ``device_id`` only names the ground truth; it never goes on the wire."""

    device_id: str = "hh-0001"
    seed: int = 1
    rbid: str = "0123456789ABCDEF0123456789ABCDEF"
    password: str = "ABCDEFGH1234"
    dialect: Dialect = "bp35c2"
    unit_code: int = 0x01  # E1: 0.1 kWh per count
    coefficient: int | None = 1  # D3; None: the meter does not implement D3 (Get_SNA; kWh = E0 × unit)
    digits: int = 6  # D7: E0 wraps at 10**digits counts
    reverse: bool = True  # E3/EB/E4 implemented (no export in this model: they stay at their initial value)
    utc_offset_h: int = 9  # the meter keeps local time; JST
    tick_s: int = 10
    power_sample_s: int = 60  # ground-truth power lines every this many simulated seconds

    def __post_init__(self) -> None:
        if len(self.rbid) != 32:
            raise ValueError("a B-route ID is 32 characters")
        if not 1 <= len(self.password) <= 32:
            raise ValueError("a B-route password is 1..32 characters (12 in practice)")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}")
        if self.unit_code not in JOULES_PER_UNIT:
            raise ValueError(f"unknown E1 unit code {self.unit_code:#x}")
        if SLOT_S % self.tick_s or self.power_sample_s % self.tick_s:
            raise ValueError("tick_s must divide 1800 and power_sample_s")

    @property
    def meter_mac(self) -> str:
        return f"001D1290{_splitmix(self.seed) & 0xFFFFFFFF:08X}"

    @property
    def module_mac(self) -> str:
        return f"001D1291{_splitmix(self.seed + 7) & 0xFFFFFFFF:08X}"

    @property
    def channel(self) -> int:
        return 0x21 + self.seed % 28  # 33..60, the 920 MHz channels the meters use

    @property
    def pan_id(self) -> int:
        return _splitmix(self.seed + 3) & 0xFFFF

    @property
    def joules_per_count(self) -> int:
        return JOULES_PER_UNIT[self.unit_code] * (self.coefficient or 1)

    def initial_joules(self) -> int:
        kwh = 2000 + int(_uniform(self.seed, 0, 9) * 18000)
        return kwh * 3_600_000

    def count_of(self, joules: int) -> int:
        return (joules // self.joules_per_count) % 10**self.digits

    def kwh_of(self, count: int) -> float:
        """What a reader should make of a count: E0 × D3 × unit, as the nearest float to the decimal value."""
        from decimal import Decimal

        return float(Decimal(count) * (self.coefficient or 1) * Decimal(_UNIT_TEXT[self.unit_code]))


def household_power_w(spec: MeterSpec, t_s: float) -> int:
    """Instantaneous power (W) of the tick containing simulated epoch second ``t_s``: deterministic from the seed."""
    k = math.floor(t_s / spec.tick_s)
    seed = spec.seed
    hour = ((k * spec.tick_s + spec.utc_offset_h * 3600) % 86400) / 3600
    base = 110 + 120 * _uniform(seed, 0, 1)
    morning = (500 + 900 * _uniform(seed, 0, 2)) * math.exp(-(((hour - 7.0) / 0.8) ** 2))
    evening = (1000 + 1200 * _uniform(seed, 0, 3)) * math.exp(-(((hour - 19.5) / 1.6) ** 2))
    minute = k * spec.tick_s // 60
    burst = 0.0
    if _uniform(seed, minute // 3, 4) < 0.02 + 0.06 * (morning + evening) / 2200:  # kettle, microwave, dryer
        burst = 800 + 700 * _uniform(seed, minute // 3, 5)
    noise = 1 + 0.12 * (_uniform(seed, k, 6) - 0.5)
    return max(0, round((base + morning + evening + burst) * noise))


class _Meter:
    """The meter's registers and their exact integration on simulated time."""

    def __init__(self, spec: MeterSpec, start_s: float, *, fresh: bool = False) -> None:
        self.spec = spec
        self.t = math.floor(start_s / spec.tick_s) * spec.tick_s  # integrated up to here (simulated epoch s)
        self.joules = spec.initial_joules()
        self.rev_joules = 0
        self.slots: dict[int, int] = {}  # boundary epoch s → E0 count latched there
        self.rev_slots: dict[int, int] = {}
        self.day_e5 = 0
        if self.t % SLOT_S == 0 and not fresh:
            self._latch()

    def _latch(self) -> None:
        self.slots[self.t] = self.spec.count_of(self.joules)
        self.rev_slots[self.t] = self.spec.count_of(self.rev_joules)

    def advance(self, now_s: float) -> tuple[list[int], list[tuple[int, int]]]:
        """Integrate up to ``now_s``; returns the boundaries crossed and the power samples due."""
        tick = self.spec.tick_s
        boundaries: list[int] = []
        samples: list[tuple[int, int]] = []
        while self.t + tick <= now_s:
            self.joules += household_power_w(self.spec, self.t) * tick
            self.t += tick
            if self.t % SLOT_S == 0:
                self._latch()
                boundaries.append(self.t)
            if self.t % self.spec.power_sample_s == 0:
                samples.append((self.t, household_power_w(self.spec, self.t)))
        return boundaries, samples

    @property
    def count(self) -> int:
        return self.spec.count_of(self.joules)

    @property
    def power(self) -> int:
        return household_power_w(self.spec, self.t)

    def local(self, t_s: float) -> dt.datetime:
        return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=t_s + self.spec.utc_offset_h * 3600)

    def last_boundary(self) -> int | None:
        b = self.t - self.t % SLOT_S
        return b if b in self.slots else None

    def history(self, day: int, reverse: bool) -> list[int | None]:
        slots = self.rev_slots if reverse else self.slots
        today = self.local(self.t).date() - dt.timedelta(days=day)
        midnight = (dt.datetime.combine(today, dt.time()) - dt.datetime(1970, 1, 1)).total_seconds()
        start = int(midnight) - self.spec.utc_offset_h * 3600
        return [slots.get(start + i * SLOT_S) for i in range(el.SLOTS_PER_DAY)]

    def properties(self, epc: int) -> bytes | None:
        """EDT of one property now, or None when this meter does not implement it."""
        spec = self.spec
        if epc == el.EPC_OPERATION_STATUS:
            return b"\x30"
        if epc == 0x88:
            return b"\x42"  # no fault
        if epc == el.EPC_INSTANT_POWER:
            return el.enc_instant_power(self.power)
        if epc == el.EPC_INSTANT_CURRENT:
            deciamps = round(self.power / 200 * 10)  # split over R and T at 100 V
            return el.enc_current(deciamps, deciamps)
        if epc == el.EPC_CUMULATIVE_NORMAL:
            return el.enc_cumulative(self.count)
        if epc == el.EPC_UNIT:
            return bytes([spec.unit_code])
        if epc == el.EPC_COEFFICIENT:
            return None if spec.coefficient is None else el.enc_coefficient(spec.coefficient)
        if epc == el.EPC_EFFECTIVE_DIGITS:
            return bytes([spec.digits])
        if epc == el.EPC_HISTORY_1_DAY:
            return bytes([self.day_e5])
        if epc in (el.EPC_FIXED_TIME_NORMAL, el.EPC_FIXED_TIME_REVERSE):
            if epc == el.EPC_FIXED_TIME_REVERSE and not spec.reverse:
                return None
            b = self.last_boundary()
            if b is None:  # no boundary since power-on: the standard's "no data" time and value
                return FIXED_TIME_NO_DATA
            slots = self.rev_slots if epc == el.EPC_FIXED_TIME_REVERSE else self.slots
            return el.enc_fixed_time(self.local(b), slots[b])
        if epc in (el.EPC_HISTORY_1_NORMAL, el.EPC_HISTORY_1_REVERSE):
            if epc == el.EPC_HISTORY_1_REVERSE and not spec.reverse:
                return None
            return el.enc_history_1(self.day_e5, self.history(self.day_e5, epc == el.EPC_HISTORY_1_REVERSE))
        if epc == el.EPC_CUMULATIVE_REVERSE and spec.reverse:
            return el.enc_cumulative(spec.count_of(self.rev_joules))
        return None


def link_local(mac_hex: str) -> str:
    """The IPv6 link-local address SKLL64 derives from a MAC (EUI-64 with the U/L bit flipped)."""
    b = bytearray(bytes.fromhex(mac_hex))
    b[0] ^= 0x02
    return "FE80:0000:0000:0000:" + ":".join(b[i : i + 2].hex().upper() for i in range(0, 8, 2))


_truth_locks: dict[str, threading.Lock] = {}
_truth_locks_guard = threading.Lock()


@dataclass
class _ModuleState:
    """What SKRESET clears."""

    rbid: str | None = None
    password: str | None = None
    regs: dict[str, str] = field(default_factory=lambda: {"S2": "21", "S3": "FFFF", "SA2": "0", "SFE": "1"})
    session: bool = False
    expired: bool = False  # EVENT 29 sent, re-authentication pending


class WiSunModuleSim(SimDevice):
    """A Wi-SUN module and its meter on a pty. ``start()`` → the pty path; fault methods are thread-safe."""

    def __init__(
        self,
        spec: MeterSpec | None = None,
        *,
        clock: ScaledClock | None = None,
        truth_path: Path | str | None = None,
        link_path: Path | str | None = None,
        garble: float = 0.0,
        ascii_mode: bool = True,
        notify_fixed: bool = True,
        fresh: bool = False,
        join_delay_s: float = 0.05,
        scan_delay_s: float = 0.05,
        reauth_delay_s: float = 0.3,
        fault_seed: int | None = None,
    ) -> None:
        self.spec = spec or MeterSpec()
        super().__init__(truth_path)
        self.clock = clock
        self.notify_fixed = notify_fixed
        self.fresh = fresh  # the meter was just powered on: no fixed-time value until its next :00/:30
        self.join_delay_s, self.scan_delay_s, self.reauth_delay_s = join_delay_s, scan_delay_s, reauth_delay_s
        self._rng = random.Random(f"wisun-faults:{self.spec.seed if fault_seed is None else fault_seed}")
        self._garble = garble
        self._ascii = ascii_mode
        self._meter_password = self.spec.password
        self._fail_joins = 0
        self._rate_limited = False
        self._m = _ModuleState()
        self._meter: _Meter | None = None
        self._lock = threading.RLock()
        self._link = PtyLink(Path(link_path) if link_path else None)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._tid = itertools.count(1)
        self.join_times: list[float] = []  # monotonic time of every SKJOIN received: lets tests see hammering
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "commands", "sends", "replies", "notifications", "scans", "joins", "joins_ok", "joins_failed",
                "reauths_ok", "reauths_failed", "terms", "resets", "send_refused", "session_expiries",
                "rate_limits", "junk_lines", "corrupted_lines", "wopt_writes", "fixed_slots", "unknown_commands",
            ),
            0,
        )  # fmt: skip
        self._ll_meter = link_local(self.spec.meter_mac)
        self._ll_module = link_local(self.spec.module_mac)

    # --- public API -----------------------------------------------------------------------------------------
    @property
    def port(self) -> str | None:
        return self._link.port if self._link.is_open else None

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    @property
    def session_up(self) -> bool:
        with self._lock:
            return self._m.session

    def start(self) -> str:
        """Power on: open the pty, start the meter at the current simulated time, serve from a thread."""
        if self.running:
            return self.port or ""
        port = self._link.open()
        self._open_truth()
        with self._lock:
            self._meter = _Meter(self.spec, self.sim_now(), fresh=self.fresh)
            self._event("power_on", count=self._meter.count, joules=self._meter.joules)
            if self._meter.t in self._meter.slots:
                self._write_fixed(self._meter.t)
        self._spawn(self._serve, f"wisun-{self.spec.device_id}")
        return port

    def _close(self) -> None:
        self._link.close()

    def sim_now(self) -> float:
        return self.clock.now() if self.clock is not None else time.time()

    def truth_fixed(self) -> dict[int, float]:
        """Ground truth of the fixed-time values so far: slot epoch ms → kWh (what a reader must report)."""
        with self._lock:
            if self._meter is None:
                return {}
            self._advance()
            return {t * 1000: self.spec.kwh_of(c) for t, c in sorted(self._meter.slots.items())}

    def meter_power_w(self, sim_s: float) -> int:
        return household_power_w(self.spec, sim_s)

    # fault switches
    def expire_session(self, reauth: bool = True) -> None:
        """EVENT 29: the PANA session lifetime ran out. Sends fail (``FAIL ER10``) until the module re-authenticates
        after ``reauth_delay_s`` (EVENT 25) — or, with ``reauth=False``, a failed re-authentication (EVENT 24),
        after which only a new SKJOIN brings the session back. Re-auth also fails under :meth:`fail_joins` or a
        password mismatch."""
        self._schedule(0, lambda: self._do_expire(reauth))

    def rate_limit(self, duration_s: float | None = None) -> None:
        """EVENT 32: the 920 MHz duty-cycle limit. Sends fail (EVENT 21 ... 01) until :meth:`release_rate_limit`
        or ``duration_s`` (EVENT 33). Survives re-joins, as on the hardware."""
        self._schedule(0, self._do_rate_limit)
        if duration_s is not None:
            self._schedule(duration_s, self._do_rate_release)

    def release_rate_limit(self) -> None:
        self._schedule(0, self._do_rate_release)

    def fail_joins(self, n: int) -> None:
        """The next ``n`` joins (SKJOIN or automatic re-authentication) fail with EVENT 24."""
        with self._lock:
            self._fail_joins = max(0, n)

    def set_meter_password(self, password: str) -> None:
        """The meter's password (e.g. re-issued by the grid operator); joins fail while the module's differs."""
        with self._lock:
            self._meter_password = password
            self._event("meter_password_changed")

    def set_garble(self, probability: float) -> None:
        """Per line the module sends: the chance of a junk line before it, and of an ERXUDP being corrupted."""
        with self._lock:
            self._garble = max(0.0, min(1.0, probability))

    # --- loop -----------------------------------------------------------------------------------------------
    def _schedule(self, delay_s: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), fn))
        self.wake()

    def _serve(self) -> None:
        buf = b""
        while not self._stopping.is_set():
            now = time.monotonic()
            due: list[Callable[[], None]] = []
            with self._lock:
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
                next_due = self._timers[0][0] - now if self._timers else 0.05
            for fn in due:
                with self._lock:
                    fn()
            with self._lock:
                self._advance()
            try:
                data = self._link.read(min(max(next_due, 0.0), 0.05), extra_fds=(self._wake_r,))
            except OSError:
                data = b""
            self._drain_wake()
            if data:
                buf += data
                with self._lock:
                    buf = self._consume(buf)

    def _advance(self) -> None:
        meter = self._meter
        if meter is None:
            return
        boundaries, samples = meter.advance(self.sim_now())
        for t, p in samples:
            self._write_truth({"type": "power", "ts": t * 1000, "power_w": p})
        for b in boundaries:
            self._write_fixed(b)
            if self.notify_fixed and self._m.session and not self._rate_limited:
                props = [(el.EPC_FIXED_TIME_NORMAL, el.enc_fixed_time(meter.local(b), meter.slots[b]))]
                self._send_udp(el.encode(el.notification(next(self._tid) & 0xFFFF, props)))
                self._counters["notifications"] += 1

    def _write_fixed(self, b: int) -> None:
        assert self._meter is not None
        count = self._meter.slots[b]
        self._counters["fixed_slots"] += 1
        self._write_truth(
            {"type": "fixed", "ts": b * 1000, "count": count, "energy_kwh": self.spec.kwh_of(count),
             "joules": self._meter.joules}
        )  # fmt: skip

    # --- bytes in -------------------------------------------------------------------------------------------
    def _consume(self, buf: bytes) -> bytes:
        """Cut the input into commands: lines ending in CR (LF optional), or SKSENDTO header + raw payload."""
        while buf:
            if buf[:1] in (b"\r", b"\n"):
                buf = buf[1:]
                continue
            if buf.startswith(b"SKSENDTO"):
                fields = (
                    7 if self.spec.dialect == "bp35c2" else 6
                )  # spaces up to and including the one after LEN
                parts = buf.split(b" ", fields)
                if len(parts) <= fields:
                    if b"\r" in buf:  # a line end before the payload: malformed, answer like the module
                        line, _, buf = buf.partition(b"\r")
                        self._echo(line)
                        self._line("FAIL ER06")
                        continue
                    return buf
                header = b" ".join(parts[:fields])
                try:
                    length = int(parts[fields - 1], 16)
                except ValueError:
                    self._echo(header)
                    self._line("FAIL ER06")
                    buf = parts[fields]
                    continue
                payload = parts[fields]
                if len(payload) < length:
                    return buf
                buf = payload[length:]
                self._sksendto(header.decode("ascii", "replace"), payload[:length])
                continue
            cut = min((i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                return buf if len(buf) < 4096 else b""
            line, buf = buf[:cut], buf[cut + 1 :]
            self._command(line.decode("ascii", "replace").strip())
        return buf

    # --- bytes out ------------------------------------------------------------------------------------------
    def _raw(self, data: bytes) -> None:
        self._link.write(data)

    def _junk_maybe(self) -> None:
        if self._garble and self._rng.random() < self._garble:
            n = self._rng.randint(3, 30)
            self._raw(bytes(self._rng.choice(_JUNK_ALPHABET) for _ in range(n)) + b"\r\n")
            self._counters["junk_lines"] += 1

    def _line(self, text: str, end: bytes = b"\r\n") -> None:
        self._junk_maybe()
        self._raw(text.encode("ascii") + end)

    def _echo(self, line: bytes | str) -> None:
        if self._m.regs.get("SFE", "1") != "0":
            self._raw((line.encode("ascii", "replace") if isinstance(line, str) else line) + b"\r\n")

    def _side(self) -> str:
        return " 0" if self.spec.dialect == "bp35c2" else ""

    def _sk_event(self, num: int, param: str | None = None) -> None:
        self._line(f"EVENT {num:02X} {self._ll_meter}{self._side()}" + (f" {param}" if param else ""))

    def _send_udp(self, data: bytes) -> None:
        """An ECHONET Lite frame from the meter, as the module hands it up: ERXUDP with the payload in hex."""
        payload = data.hex().upper() if self._ascii else data.decode("latin-1")
        if self.spec.dialect == "bp35c2":
            lqi = 0x90 + self.spec.seed % 0x40
            text = (f"ERXUDP {self._ll_meter} {self._ll_module} 0E1A 0E1A {self.spec.meter_mac} "
                    f"{lqi:02X} 1 0 {len(data):04X} {payload}")  # fmt: skip
        else:
            text = f"ERXUDP {self._ll_meter} {self._ll_module} 0E1A 0E1A {self.spec.meter_mac} 1 {len(data):04X} {payload}"
        if self._garble and self._ascii and data and self._rng.random() < self._garble:
            # a flipped character or a line cut short (always an odd number of hex digits): either way the
            # line no longer parses, as after a UART overrun
            self._counters["corrupted_lines"] += 1
            start = len(text) - 2 * len(data)
            k = 2 * self._rng.randrange(len(data)) + 1
            text = (
                text[: start + k - 1] + "G" + text[start + k :]
                if self._rng.random() < 0.5
                else text[: start + k]
            )
        self._line(text)
        self._counters["replies"] += 1

    # --- commands -------------------------------------------------------------------------------------------
    def _command(self, text: str) -> None:
        if not text:
            return
        self._counters["commands"] += 1
        cmd, *args = text.split()
        if cmd in ("ROPT", "WOPT"):
            self._echo(text)
            self._opt(cmd, args)
            return
        self._echo(text)
        handler = {
            "SKVER": self._skver, "SKAPPVER": self._skappver, "SKINFO": self._skinfo, "SKRESET": self._skreset,
            "SKSREG": self._sksreg, "SKSETRBID": self._sksetrbid, "SKSETPWD": self._sksetpwd,
            "SKSCAN": self._skscan, "SKLL64": self._skll64, "SKJOIN": self._skjoin, "SKTERM": self._skterm,
        }.get(cmd)  # fmt: skip
        if handler is None:
            self._counters["unknown_commands"] += 1
            self._line("FAIL ER04")
            return
        handler(args)

    def _opt(self, cmd: str, args: list[str]) -> None:
        if self.spec.dialect == "rl7023":
            self._line("FAIL ER04")
        elif cmd == "ROPT":
            self._line(f"OK {1 if self._ascii else 0:02d}", end=b"\r")
        elif args and args[0] in ("00", "01"):
            self._ascii = args[0] == "01"
            self._counters["wopt_writes"] += 1
            self._line("OK", end=b"\r")
        else:
            self._line("FAIL ER06")

    def _skver(self, args: list[str]) -> None:
        self._line("EVER " + ("1.5.2" if self.spec.dialect == "bp35c2" else "1.2.10"))
        self._line("OK")

    def _skappver(self, args: list[str]) -> None:
        self._line("EAPPVER rev26e")
        self._line("OK")

    def _skinfo(self, args: list[str]) -> None:
        last = "0" if self.spec.dialect == "bp35c2" else "FFFE"
        self._line(
            f"EINFO {self._ll_module} {self.spec.module_mac} {self._m.regs['S2']} {self._m.regs['S3']} {last}"
        )
        self._line("OK")

    def _skreset(self, args: list[str]) -> None:
        self._counters["resets"] += 1
        self._m = _ModuleState()
        self._line("OK")

    def _sksreg(self, args: list[str]) -> None:
        if not args:
            self._line("FAIL ER06")
        elif len(args) == 1:
            self._line(f"ESREG {self._m.regs.get(args[0].upper(), '0')}")
            self._line("OK")
        else:
            self._m.regs[args[0].upper()] = args[1].upper()
            self._line("OK")

    def _sksetrbid(self, args: list[str]) -> None:
        if len(args) != 1 or len(args[0]) != 32:
            self._line("FAIL ER05")
            return
        self._m.rbid = args[0]
        self._line("OK")

    def _sksetpwd(self, args: list[str]) -> None:
        try:
            ok = len(args) == 2 and int(args[0], 16) == len(args[1]) and 1 <= len(args[1]) <= 32
        except ValueError:
            ok = False
        if not ok:
            self._line("FAIL ER05")
            return
        self._m.password = args[1]
        self._line("OK")

    def _skscan(self, args: list[str]) -> None:
        if len(args) != (4 if self.spec.dialect == "bp35c2" else 3):
            self._line("FAIL ER06")
            return
        self._counters["scans"] += 1
        self._line("OK")
        self._schedule(self.scan_delay_s, self._scan_result)

    def _scan_result(self) -> None:
        spec = self.spec
        if self._m.rbid == spec.rbid:  # the meter answers beacons carrying its own pairing ID only
            self._sk_event(0x20)
            lines = [
                "EPANDESC",
                f"  Channel:{spec.channel:02X}",
                "  Channel Page:09",
                f"  Pan ID:{spec.pan_id:04X}",
                f"  Addr:{spec.meter_mac}",
                f"  LQI:{0x90 + spec.seed % 0x40:02X}",
            ]
            if spec.dialect == "bp35c2":
                lines.append("  Side:0")
            lines.append(f"  PairID:{spec.rbid[-8:]}")
            for text in lines:
                self._line(text)
        self._sk_event(0x22)

    def _skll64(self, args: list[str]) -> None:
        try:
            if len(args) != 1 or len(bytes.fromhex(args[0])) != 8:
                raise ValueError
        except ValueError:
            self._line("FAIL ER05")
            return
        self._line(link_local(args[0]))

    def _skjoin(self, args: list[str]) -> None:
        if len(args) != 1:
            self._line("FAIL ER06")
            return
        self._counters["joins"] += 1
        self.join_times.append(time.monotonic())
        self._line("OK")
        target = args[0]
        self._schedule(self.join_delay_s, lambda: self._join_result(target))

    def _credentials_ok(self) -> bool:
        return self._m.rbid == self.spec.rbid and self._m.password == self._meter_password

    def _join_ok(self, target: str | None) -> bool:
        spec = self.spec
        ok = (
            self._credentials_ok()
            and (target is None or target == self._ll_meter)
            and self._m.regs.get("S2") == f"{spec.channel:X}"
            and int(self._m.regs.get("S3", "0"), 16) == spec.pan_id
        )
        if ok and self._fail_joins > 0:
            self._fail_joins -= 1
            ok = False
        return ok

    def _join_result(self, target: str) -> None:
        if self._join_ok(target):
            self._m.session, self._m.expired = True, False
            self._counters["joins_ok"] += 1
            self._sk_event(0x25)
        else:
            self._m.session = False
            self._counters["joins_failed"] += 1
            self._sk_event(0x24)

    def _skterm(self, args: list[str]) -> None:
        self._counters["terms"] += 1
        self._line("OK")
        if self._m.session or self._m.expired:
            self._m.session = self._m.expired = False
            self._sk_event(0x27)
        else:
            self._sk_event(0x28)

    def _sksendto(self, header: str, payload: bytes) -> None:
        self._counters["commands"] += 1
        self._echo(header + " ")
        parts = header.split()
        dest = parts[2] if len(parts) > 2 else ""
        if not self._m.session or dest != self._ll_meter:
            self._counters["send_refused"] += 1
            self._line("FAIL ER10")
            return
        if self._rate_limited:
            self._counters["send_refused"] += 1
            self._sk_event(0x21, "01")
            self._line("OK")
            return
        self._counters["sends"] += 1
        self._sk_event(0x21, "00")
        self._line("OK")
        reply = self._meter_reply(payload)
        if reply is not None:
            self._send_udp(reply)

    # --- the meter ------------------------------------------------------------------------------------------
    def _meter_reply(self, data: bytes) -> bytes | None:
        try:
            req = el.decode(data)
        except el.EchonetError:
            return None
        if req.deoj[:2] != el.SMART_METER_EOJ[:2] or req.deoj[2] not in (0, 1):
            return None
        meter = self._meter
        assert meter is not None
        self._advance()
        if req.esv == el.ESV_GET:
            values: dict[int, bytes] = {}
            for epc, _ in req.props:
                edt = meter.properties(epc)
                if edt is not None:
                    values[epc] = edt
            return el.encode(el.response(req, values))
        if req.esv == el.ESV_SETC:
            accepted: set[int] = set()
            for epc, edt in req.props:
                if epc == el.EPC_HISTORY_1_DAY and len(edt) == 1 and edt[0] <= el.MAX_HISTORY_DAY:
                    meter.day_e5 = edt[0]
                    accepted.add(epc)
            return el.encode(el.set_response(req, accepted))
        return None  # INFC_Res and anything else: no answer

    # --- faults ---------------------------------------------------------------------------------------------
    def _do_expire(self, reauth: bool) -> None:
        if not self._m.session:
            return
        self._m.session, self._m.expired = False, True
        self._counters["session_expiries"] += 1
        self._event("session_expired")
        self._sk_event(0x29)
        self._schedule(self.reauth_delay_s, lambda: self._reauth(reauth))

    def _reauth(self, allowed: bool) -> None:
        if not self._m.expired:
            return  # SKTERM/SKRESET/SKJOIN came first
        self._m.expired = False
        if allowed and self._join_ok(None):
            self._m.session = True
            self._counters["reauths_ok"] += 1
            self._sk_event(0x25)
        else:
            self._counters["reauths_failed"] += 1
            self._sk_event(0x24)

    def _do_rate_limit(self) -> None:
        if not self._rate_limited:
            self._rate_limited = True
            self._counters["rate_limits"] += 1
            self._event("rate_limited")
            self._sk_event(0x32)

    def _do_rate_release(self) -> None:
        if self._rate_limited:
            self._rate_limited = False
            self._event("rate_limit_released")
            self._sk_event(0x33)

    # --- ground truth ---------------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> None:
        self._write_truth({"type": "event", "ts": int(self.sim_now() * 1000), "event": kind, **fields})

    def _write_truth(self, obj: dict[str, Any]) -> None:
        if self._truth is None:
            return
        line = json.dumps({"device_id": self.spec.device_id, **obj}, separators=(",", ":")) + "\n"
        key = str(self.truth_path)
        with _truth_locks_guard:
            lock = _truth_locks.setdefault(key, threading.Lock())
        with lock:
            self._truth.write(line)
            self._truth.flush()


def read_truth(path: Path | str) -> dict[str, dict[int, float]]:
    """Fixed-time ground truth per household: device id → {slot epoch ms → kWh}."""
    out: dict[str, dict[int, float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if obj.get("type") == "fixed":
                out.setdefault(obj["device_id"], {})[obj["ts"]] = obj["energy_kwh"]
    return out


# --- standalone ---------------------------------------------------------------------------------------------


def parse_households(text: str) -> list[tuple[str, int]]:
    """``"hh-0001:1,hh-0002:2"`` → [(device id, seed), ...]."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        device_id, _, seed = part.partition(":")
        out.append((device_id, int(seed) if seed else len(out) + 1))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cityos sim meter",
        description="Simulated B-route Wi-SUN modules (BP35C2/BP35A1/RL7023) with household smart meters, one pty each.",
    )
    p.add_argument("--households", default="hh-0001:1", help="DEVICE_ID:SEED,... (default: %(default)s)")
    p.add_argument(
        "--link-dir", type=Path, default=None, help="symlinks <dir>/ttyWISUN-<device_id> to the ptys"
    )
    p.add_argument("--ground-truth", type=Path, default=None, help="JSON-lines file the truth is appended to")
    p.add_argument("--dialect", choices=DIALECTS, default="bp35c2")
    p.add_argument("--rbid", default=MeterSpec.rbid, help="the meters' B-route ID (32 chars)")
    p.add_argument("--password", default=MeterSpec.password, help="the meters' B-route password")
    p.add_argument("--meter-password", default=None, help="make the meters' password differ (joins fail)")
    p.add_argument("--unit", type=lambda s: int(s, 16), default=0x01, help="E1 unit code, hex (default: 01)")
    p.add_argument("--rate", type=float, default=1.0, help="simulated seconds per real second (default: 1)")
    p.add_argument("--sim-start", type=float, default=None, help="simulated epoch s at start (default: now)")
    p.add_argument(
        "--real-anchor", type=float, default=None, help="real epoch s of --sim-start (default: now)"
    )
    p.add_argument("--garble", type=float, default=0.0, help="probability of a junk/corrupted line per line")
    p.add_argument("--fail-joins", type=int, default=0, help="fail the next N joins (EVENT 24)")
    p.add_argument("--expire-every", type=float, default=None, help="EVENT 29 every S real seconds")
    p.add_argument("--rate-limit-every", default=None, help="EVENT 32 every S s lasting D s: S:D")
    p.add_argument("--no-notify", action="store_true", help="do not send the INF of the fixed-time value")
    p.add_argument(
        "--fresh", action="store_true",
        help="meters just powered on: no fixed-time value (EA 'no data') until their first :00/:30, even "
        "when started on one",
    )  # fmt: skip
    p.add_argument(
        "--duration", type=float, default=None, help="stop after S seconds (default: until Ctrl-C)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    now = time.time()
    clock = None
    if args.rate != 1.0 or args.sim_start is not None:
        start = now if args.sim_start is None else args.sim_start
        clock = ScaledClock(sim_start=start, real_anchor=args.real_anchor or now, rate=args.rate)
    try:
        households = parse_households(args.households)
        sims = []
        for device_id, seed in households:
            spec = MeterSpec(device_id=device_id, seed=seed, rbid=args.rbid, password=args.password,
                             dialect=args.dialect, unit_code=args.unit)  # fmt: skip
            link = args.link_dir / f"ttyWISUN-{device_id}" if args.link_dir else None
            sim = WiSunModuleSim(spec, clock=clock, truth_path=args.ground_truth, link_path=link,
                                 garble=args.garble, notify_fixed=not args.no_notify,
                                 fresh=args.fresh)  # fmt: skip
            if args.meter_password:
                sim.set_meter_password(args.meter_password)
            if args.fail_joins:
                sim.fail_joins(args.fail_joins)
            sims.append((sim, link))
    except ValueError as exc:
        print(f"meter sim: {exc}", file=sys.stderr)
        return 2
    every = args.expire_every
    rl = [float(x) for x in args.rate_limit_every.split(":")] if args.rate_limit_every else None
    t0 = time.monotonic()
    due = {"expire": t0 + every if every else math.inf, "rate_limit": t0 + rl[0] if rl else math.inf}

    def started() -> None:
        for sim, link in sims:
            print(f"meter sim: {sim.spec.device_id} on {sim.port}" + (f" (link {link})" if link else ""), flush=True)

    def tick() -> float:
        t = time.monotonic()
        if every and t >= due["expire"]:
            for sim, _ in sims:
                sim.expire_session()
            due["expire"] += every
        if rl and t >= due["rate_limit"]:
            for sim, _ in sims:
                sim.rate_limit(rl[1])
            due["rate_limit"] += rl[0]
        return min(0.5, max(0.0, min(due.values()) - time.monotonic()))

    return serve_until_stopped(
        "meter sim", [sim for sim, _ in sims], duration=args.duration, started=started, tick=tick,
        counters=lambda: {sim.spec.device_id: sim.counters for sim, _ in sims},
    )


if __name__ == "__main__":
    sys.exit(main())
