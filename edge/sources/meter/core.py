"""What a household smart meter's readings are, decided sans-I/O: property values in, readings and state out.

Nothing here talks to the meter, reads a clock, logs or starts a thread, and nothing of momonga is imported.
The adapter (:mod:`edge.sources.meter.source`) asks momonga for ECHONET Lite properties and hands what momonga
decoded (plain ints, floats, datetimes and dicts) to one :class:`MeterCore` per household; the core answers
with a :class:`Step`: the readings to emit, each with the state to commit in the same outbox transaction, the
counters to add, the conditions worth a log line (as values), and, when slots are missing, the history it
needs read.

Values in (keys are the ECHONET Lite property codes, EPC, as ints; momonga's ``EchonetPropertyCode`` is an
``IntEnum`` and looks them up unchanged):

* E7 instantaneous power: an int in W (momonga's None: the meter has no value);
* E0 / E3 cumulative energy, normal / reverse direction: kWh as momonga scales it (count × unit E1 ×
  coefficient D3, a float product such as ``123456.70000000001``), or None;
* EA cumulative energy at the last fixed time: ``{"timestamp": datetime, "cumulative energy": kWh | None}``,
  the timestamp in the meter's local time (naive), latched at :00 and :30; before its first :00/:30 (a meter
  just powered on) the meter sends the standard's "no data" EA, date and time all 0xFF (year 65535), which
  momonga cannot make a datetime of: the core gets those raw bytes (:func:`no_fixed_value`);
* any property momonga could not read arrives as its raw EDT bytes (as momonga keeps them in a notification);
* E2 30-minute history of one day (E5 day index, 0 = the meter's today): 48 entries ``{"cumulative energy":
  kWh | None}``, index = half hour of the day (the entries' own timestamps are momonga's guess and are not
  used).

Rules (docs/meters.md):

* **Resolution.** kWh values are rounded to the decimals of unit × coefficient (:func:`decimals_for`, 3 until
  :meth:`MeterCore.set_resolution` is called), so a value is the decimal the register means, not a float
  product.
* **Live reading** (:meth:`MeterCore.on_poll`): ``power_w`` (E7 when an int), ``energy_kwh`` (E0),
  ``energy_reverse_kwh`` (E3) when numbers, stamped with the time the shell read them; a time not after the
  last live reading's (a clock that stood still or stepped back) emits nothing (``same_instant_skips``). Which
  properties to ask for is :meth:`MeterCore.poll_properties`: E3 until the meter refuses a poll that has it
  (:meth:`MeterCore.get_refused`), never again after.
* **Fixed-time reading** (EA from a poll or from the meter's INF, :meth:`MeterCore.on_notification`):
  ``energy_fixed_kwh`` stamped with the meter's slot time converted to UTC (``utc_offset_h``). The meter has
  no value yet (the "no data" EA, or a date without a kWh value): no reading, counted in
  ``no_fixed_value_yet``, and the live reading of the same poll is emitted all the same. Not a dict or no
  naive datetime otherwise: ignored. A timestamp off the :00/:30 grid: ignored, counted in ``request_errors``.
  A slot not after the committed ``last_slot_ms``: never emitted again.
* **Unreadable values in a poll** (raw bytes other than the "no data" EA): the rest of the poll is used,
  ``request_errors`` + 1 for the poll, the codes in :attr:`Step.unreadable` for the shell to log.
* **State** ``{"v": 1, "last_slot_ms", "last_slot_kwh"}`` goes with each fixed-time reading; the core takes it
  as its own only when the shell says the outbox committed it (:meth:`MeterCore.committed`), and
  :meth:`MeterCore.restore` takes back what the outbox kept (another version is ignored).
* **Backfill.** A slot more than one after the last committed one: the missed slots are asked for as a
  :class:`HistoryRequest` (E5 day indexes relative to the meter's date, oldest day first; slots more than
  :data:`MAX_HISTORY_DAY` days back are not asked for). The shell reads those days and EA once more and hands
  them to :meth:`MeterCore.on_history`: the slots with a value are emitted oldest first with
  ``backfill=True``, each with its state (``recovered_slots``), those without are ``lost_slots``
  (:attr:`Step.lost_slots`), then the current slot. If the second EA shows another date (the meter's midnight
  passed during the read: the day index meant another day) nothing is emitted (:attr:`Step.retry`) and the
  next EA starts the recovery over.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cityos.wire import Reading

__all__ = [
    "EPC_ENERGY",
    "EPC_ENERGY_REVERSE",
    "EPC_FIXED",
    "EPC_POWER",
    "KIND",
    "MAX_HISTORY_DAY",
    "NO_FIXED_VALUE",
    "SLOT_MS",
    "STATE_VERSION",
    "Emission",
    "FixedValue",
    "HistoryRequest",
    "MeterCore",
    "Step",
    "decimals_for",
    "fixed_value",
    "local_time",
    "no_fixed_value",
    "slot_ms",
]

KIND = "smart_meter"
STATE_VERSION = 1
SLOT_MS = 30 * 60 * 1000
#: E5 (day for the 30-minute history E2) goes back this many days from the meter's today.
MAX_HISTORY_DAY = 99
#: Decimals of a kWh value until the meter's unit and coefficient are known.
DEFAULT_DECIMALS = 3

#: ECHONET Lite property codes (low-voltage smart electric energy meter class 0x0288).
EPC_POWER = 0xE7  # instantaneous power, W
EPC_ENERGY = 0xE0  # measured cumulative energy, normal direction
EPC_ENERGY_REVERSE = 0xE3  # measured cumulative energy, reverse direction
EPC_FIXED = 0xEA  # cumulative energy measured at the last fixed time (:00/:30), normal direction

#: The counter of EA values that say the meter has no fixed-time value yet (before its first :00/:30).
NO_FIXED_VALUE = "no_fixed_value_yet"
#: The year of the standard's "no data" EA (date and time bytes all 0xFF).
_NO_DATA_YEAR = 0xFFFF
_EA_LEN = 11  # year (2) month day hour minute second, cumulative count (4)

_EPOCH = dt.datetime(1970, 1, 1)


# --- plain functions ----------------------------------------------------------------------------------------


def decimals_for(unit: float, coefficient: float = 1) -> int:
    """Decimals of the meter's kWh resolution unit (E1) × coefficient (D3): 0.1 → 1, 0.01 × 10 → 1, 10 → 0."""
    resolution = float(unit) * float(coefficient)
    return max(0, math.ceil(-math.log10(resolution) - 1e-9)) if resolution > 0 else DEFAULT_DECIMALS


def slot_ms(local: dt.datetime, utc_offset_h: float) -> int:
    """The meter's local (naive) time → ms since the epoch, UTC (whole seconds)."""
    seconds = (local - _EPOCH) // dt.timedelta(seconds=1)
    return (seconds - round(utc_offset_h * 3600)) * 1000


def local_time(ms: int, utc_offset_h: float) -> dt.datetime:
    """ms since the epoch, UTC → the meter's local (naive) time."""
    return _EPOCH + dt.timedelta(milliseconds=ms + round(utc_offset_h * 3600_000))


@dataclass(frozen=True, slots=True)
class FixedValue:
    """An EA value the meter has: its local latch time and the kWh (unrounded, as decoded)."""

    timestamp: dt.datetime
    kwh: float


def fixed_value(decoded: Any) -> FixedValue | None:
    """EA as momonga decodes it → :class:`FixedValue`, or None when there is no usable value: not a dict (e.g.
    the raw bytes momonga keeps for an INF it could not read), no naive datetime, no number (none yet)."""
    if not isinstance(decoded, Mapping):
        return None
    when, kwh = decoded.get("timestamp"), decoded.get("cumulative energy")
    if not isinstance(when, dt.datetime) or when.tzinfo is not None or not isinstance(kwh, int | float):
        return None
    return FixedValue(when, float(kwh))


def no_fixed_value(decoded: Any) -> bool:
    """Does this EA say that the meter has no fixed-time value yet?

    Yes for the standard's "no data" EA, whose date and time bytes are all 0xFF (year 65535: momonga cannot
    make a datetime of it and the shell hands up the 11 raw bytes), and for a date momonga read with no kWh
    value (0xFFFFFFFE, momonga's None). A meter sends these from power-on until its first :00/:30."""
    if isinstance(decoded, bytes | bytearray):
        return len(decoded) == _EA_LEN and int.from_bytes(decoded[:2], "big") == _NO_DATA_YEAR
    if isinstance(decoded, Mapping):
        return isinstance(decoded.get("timestamp"), dt.datetime) and decoded.get("cumulative energy") is None
    return False


# --- the core's output --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emission:
    """A reading to commit to the outbox, with the state to commit in the same transaction (fixed-time ones).

    After the commit the shell hands it back to :meth:`MeterCore.committed`."""

    reading: Reading
    state: dict[str, Any] | None = None

    @property
    def counter(self) -> str:
        """The counter one more of these adds to: ``fixed_readings`` or ``readings``."""
        return "fixed_readings" if self.state is not None else "readings"


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """Missed slots the meter may still have: read E2 for each of :attr:`days` (E5 day index, in this order,
    the oldest day first), then EA again, and hand both to :meth:`MeterCore.on_history`."""

    days: tuple[int, ...]
    #: the EA this recovery was planned from (its date anchors the day indexes) and the last committed slot
    current: FixedValue
    current_slot_ms: int
    after_slot_ms: int
    #: (slot ms, day index, half-hour index in that day) of every missed slot within reach, oldest first
    wanted: tuple[tuple[int, int, int], ...]


@dataclass(slots=True)
class Step:
    """What the core made of one event. The shell emits :attr:`emissions` in order (each with its state),
    adds :attr:`counts` to its counters, warns when :attr:`lost_slots` or :attr:`unreadable`, and, if
    :attr:`history` is set, reads it and calls :meth:`MeterCore.on_history`. :attr:`retry`: nothing was
    emitted, try again later."""

    emissions: list[Emission] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    history: HistoryRequest | None = None
    lost_slots: int = 0
    retry: bool = False
    #: the EPCs of a poll that momonga could not read (the rest of the poll was used)
    unreadable: tuple[int, ...] = ()

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    @property
    def readings(self) -> list[Reading]:
        return [e.reading for e in self.emissions]

    @property
    def no_fixed_value(self) -> bool:
        """The meter said it has no fixed-time value yet (worth one log line, not an error)."""
        return self.counts.get(NO_FIXED_VALUE, 0) > 0


# --- the core -----------------------------------------------------------------------------------------------


class MeterCore:
    """One household meter's readings and exactly-once fixed-time slots (see the module docstring)."""

    def __init__(
        self,
        device_id: str,
        *,
        district: str | None = None,
        utc_offset_h: float = 9.0,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.device_id = device_id
        self.utc_offset_h = utc_offset_h
        self.tags: dict[str, str] = {"district": district} if district else {}
        self.decimals = DEFAULT_DECIMALS
        self.reverse: bool | None = None  # does the meter have E3? (None: not asked yet)
        self.last_live_ms = 0  # the last live reading's time: never the same instant twice
        self._state: dict[str, Any] = {"v": STATE_VERSION}
        if state is not None:
            self.restore(state)

    # --- state ----------------------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """The last committed state (a copy)."""
        return dict(self._state)

    @property
    def last_slot_ms(self) -> int | None:
        return self._state.get("last_slot_ms")

    def restore(self, saved: Mapping[str, Any] | None) -> None:
        """Take back the state the outbox kept; a state of another version (or none) keeps the current one."""
        if saved and saved.get("v") == STATE_VERSION:
            self._state = dict(saved)

    def committed(self, emission: Emission) -> None:
        """The outbox committed ``emission``: its state is now the core's."""
        if emission.state is not None:
            self._state = dict(emission.state)

    def set_resolution(self, unit: float, coefficient: float = 1) -> None:
        """The meter's unit (E1) and coefficient (D3), read once per session."""
        self.decimals = decimals_for(unit, coefficient)

    # --- polls ----------------------------------------------------------------------------------------------
    def poll_properties(self) -> frozenset[int]:
        """What one poll asks for, in one Get: E7, E0, EA, and E3 unless the meter refused it."""
        props = {EPC_POWER, EPC_ENERGY, EPC_FIXED}
        if self.reverse is not False:
            props.add(EPC_ENERGY_REVERSE)
        return frozenset(props)

    def get_refused(self) -> bool:
        """The meter answered a poll with Get_SNA. True: it was the first poll with E3, so the meter has no
        E3; poll again now without it. False: a refusal to count as such."""
        if self.reverse is None:
            self.reverse = False
            return True
        return False

    def on_poll(self, t_ms: int, props: Mapping[int, Any]) -> Step:
        """The answer to :meth:`poll_properties`, read at ``t_ms`` (the gateway clock, ms). Each value is used
        on its own: one the meter has not got (None, the "no data" EA) or momonga could not read (raw bytes)
        does not keep the others from being readings."""
        if self.reverse is None:
            self.reverse = True
        step = Step()
        step.count("polls")
        unreadable = tuple(
            sorted(
                int(epc)
                for epc, v in props.items()
                if isinstance(v, bytes | bytearray) and not (epc == EPC_FIXED and no_fixed_value(v))
            )
        )
        if unreadable:
            step.count("request_errors")
            step.unreadable = unreadable
        values: dict[str, float] = {}
        power = props.get(EPC_POWER)
        if isinstance(power, int):
            values["power_w"] = float(power)
        for epc, name in ((EPC_ENERGY, "energy_kwh"), (EPC_ENERGY_REVERSE, "energy_reverse_kwh")):
            v = props.get(epc)
            if isinstance(v, int | float):
                values[name] = round(float(v), self.decimals)
        if t_ms <= self.last_live_ms:
            # The gateway clock did not advance since the last reading (a stopped simulated clock, a clock
            # stepped back): the same instant again would only overwrite that point in InfluxDB.
            step.count("same_instant_skips")
            values = {}
        if values:
            self.last_live_ms = t_ms
            reading = Reading(
                device_id=self.device_id,
                kind=KIND,
                ts=t_ms,
                values=values,
                units={k: ("W" if k == "power_w" else "kWh") for k in values},
                tags=self.tags,
            )
            step.emissions.append(Emission(reading))
        self._on_fixed(props.get(EPC_FIXED), step)
        return step

    def on_notification(self, props: Mapping[int, Any]) -> Step:
        """Properties the meter announced by itself (INF): EA at each :00/:30, whichever comes first."""
        step = Step()
        self._on_fixed(props.get(EPC_FIXED), step)
        return step

    # --- fixed-time values ----------------------------------------------------------------------------------
    def _on_fixed(self, decoded: Any, step: Step) -> None:
        fixed = fixed_value(decoded)
        if fixed is None:
            if no_fixed_value(decoded):
                step.count(NO_FIXED_VALUE)  # before the meter's first :00/:30: nothing to emit yet
            return
        slot = slot_ms(fixed.timestamp, self.utc_offset_h)
        if slot % SLOT_MS:
            step.count("request_errors")
            return
        last = self.last_slot_ms
        if last is not None and slot <= last:
            return
        if last is not None and slot - last > SLOT_MS:
            wanted: list[tuple[int, int, int]] = []
            for s in range(last + SLOT_MS, slot, SLOT_MS):
                local = local_time(s, self.utc_offset_h)
                day = (fixed.timestamp.date() - local.date()).days
                if 0 <= day <= MAX_HISTORY_DAY:
                    wanted.append((s, day, local.hour * 2 + local.minute // 30))
            if wanted:
                days = tuple(sorted({d for _, d, _ in wanted}, reverse=True))  # oldest day first
                step.history = HistoryRequest(days, fixed, slot, last, tuple(wanted))
                return
            self._recovered(step, last, slot, fixed.kwh, {})
            return
        step.emissions.append(self._fixed(slot, fixed.kwh, backfill=False))

    def on_history(
        self, request: HistoryRequest, history: Mapping[int, Sequence[Any]], fixed_after: Any
    ) -> Step:
        """The E2 days of ``request`` (day index → its 48 entries) and EA read after them."""
        step = Step()
        after = fixed_after.get("timestamp") if isinstance(fixed_after, Mapping) else None
        if (
            not isinstance(after, dt.datetime)
            or after.date() != request.current.timestamp.date()
            or self.last_slot_ms != request.after_slot_ms  # committed meanwhile: the request is stale
        ):
            step.retry = True  # the meter's day turned during the read: the day index meant another date
            return step
        found: dict[int, float] = {}
        for s, day, index in request.wanted:
            entries = history.get(day, ())
            entry = entries[index] if index < len(entries) else None
            v = entry.get("cumulative energy") if isinstance(entry, Mapping) else None
            if isinstance(v, int | float):
                found[s] = float(v)
        self._recovered(step, request.after_slot_ms, request.current_slot_ms, request.current.kwh, found)
        return step

    def _recovered(self, step: Step, last: int, slot: int, kwh: float, found: Mapping[int, float]) -> None:
        for s, v in sorted(found.items()):
            step.emissions.append(self._fixed(s, v, backfill=True))
        step.count("recovered_slots", len(found))
        lost = (slot - last) // SLOT_MS - 1 - len(found)
        if lost:
            step.count("lost_slots", lost)
            step.lost_slots = lost
        step.emissions.append(self._fixed(slot, kwh, backfill=False))

    def _fixed(self, slot: int, kwh: float, *, backfill: bool) -> Emission:
        kwh = round(kwh, self.decimals)
        state = {"v": STATE_VERSION, "last_slot_ms": slot, "last_slot_kwh": kwh}
        reading = Reading(
            device_id=self.device_id,
            kind=KIND,
            ts=slot,
            values={"energy_fixed_kwh": kwh},
            units={"energy_fixed_kwh": "kWh"},
            tags=self.tags,
            backfill=backfill,
        )
        return Emission(reading, state)
