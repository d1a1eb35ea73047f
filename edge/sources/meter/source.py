"""Household smart meters over the B-route (Wi-SUN module + SKSTACK-IP + ECHONET Lite): the gateway side.

One :class:`SmartMeterSource` per household meter (one USB Wi-SUN module each: a module holds one PANA session),
run in its own thread. All of SKSTACK-IP and ECHONET Lite is momonga's (sync API, unmodified); this module decides
*when* to read, what to emit, and how to wait out the faults. See ``docs/meters.md`` for the full story.

Readings (kind ``smart_meter``, tagged with ``district`` when configured)
-----------------------------------------------------------------------
* Every ``poll_interval_s``: one Get of E7 + E0 (+ E3) + EA in a single frame. A *live* reading stamped with
  ``edge.clock.now()``: ``power_w``, ``energy_kwh`` (E0 × D3 × unit E1; momonga reads E1/D3 once per session) and
  ``energy_reverse_kwh`` when the meter has E3.
* The fixed-time cumulative value (EA, latched by the meter at :00 and :30 and also sent by it as an INF) as a
  reading of its own, ``energy_fixed_kwh``, stamped with the *meter's* slot time, so that the energy of a household
  in a half hour is the exact difference of two consecutive fixed-time readings. kWh values are rounded to the
  meter's resolution (unit × coefficient), so they are the decimal value the register means, not a float product.

Exactly once across rejoins and restarts
----------------------------------------
The last emitted slot (``{"v": 1, "last_slot_ms", "last_slot_kwh"}``) is committed with each fixed-time reading
(``ctx.emit(reading, state=...)``). A slot not after it is never emitted again. When the meter's current slot is
more than one slot after it (an outage: no session, rate limit, agent down), the missed slots are read from the
30-min history (E2 with the day set by E5, ``Momonga.get_historical_cumulative_energy_1``), emitted oldest first
with ``backfill=True``, each with its state, then the current slot. The history's day index is relative to the
meter's date, so the EA timestamp is read again after the history: if the meter's date changed meanwhile (a read
across midnight), nothing is emitted and the recovery is retried. Slots older than 99 days, or that the meter has
no value for, are counted as ``lost_slots``.

Faults, as momonga 0.7 surfaces them (read from its source, checked against ``firmware_sim.meter.sim``)
---------------------------------------------------------------------------------------------------------
momonga raises nothing for EVENT 29/32: its receiver thread closes a transmit *gate*, and a request then waits at
the gate up to ``xmit_timeout`` (``MomongaXmitTimeout``). To show these states in ``health()`` as they happen, and to
not block in momonga meanwhile, this source adds its own subscriber to momonga's line publisher
(``session_manager.skw.subscribers``: every line from the module is offered to each queue there) and classifies
each line as it arrives (:class:`_LineTap`). It never stores or logs the lines (echoes carry the credentials).

* EVENT 29 (PANA session lifetime): state SESSION_EXPIRED, no polls. The module re-authenticates by itself
  (EVENT 25: ``rejoins`` + 1, back to ONLINE); if that fails (EVENT 24) momonga's receiver runs SKJOIN itself, and if
  *that* fails the receiver dies with ``MomongaNeedToReopen``: we close and reopen. No EVENT 25 within
  ``session_wait_s``: reopen.
* EVENT 32 (920 MHz duty-cycle limit): state RATE_LIMITED, no polls until EVENT 33 (the limit survives a re-join,
  so reopening would not help); after ``rate_limit_wait_s`` without EVENT 33 we reopen anyway (momonga's gate would
  otherwise stay closed if the EVENT 33 line was lost).
* Failed join: ``Momonga.open()`` raises ``MomongaSkJoinFailure`` after ``join_retries`` SKJOINs each answered with
  EVENT 24 (counted one by one as ``join_failures``). State JOIN_FAILED, retry with doubling backoff.
* Wrong password: on the wire identical to a failed join (EVENT 24; the module gives no reason). After
  ``auth_failure_threshold`` failed joins in a row the source assumes wrong credentials: state AUTH_FAILED,
  ``auth_failures`` + 1, and it waits ``auth_backoff_s`` (default 1 h) before the next try, so a stale password
  does not hammer the meter. A wrong B-route ID shows as METER_NOT_FOUND: the meter only answers the scan for its
  own pairing ID (``MomongaSkScanFailure``).
* Garbled lines: momonga ignores lines it cannot parse; a corrupted ERXUDP is a lost reply, so momonga waits
  ``recv_timeout`` and sends again (``timeouts``, counted from momonga's own warning in this thread), up to
  ``xmit_retries`` times, then ``MomongaNeedToReopen``. The tap counts the lines (``garbled_lines``).
* Serial port gone or silent: ``MomongaIOError`` / ``MomongaTimeoutError`` at open (PORT_ERROR), or
  ``MomongaNeedToReopen`` mid-session (RECONNECTING); reopen with backoff.

momonga's own logging: it masks SKSETRBID/SKSETPWD in its DEBUG line dumps, but the scan's ``PairID`` (the end of
the B-route ID) is dumped unmasked at DEBUG, so the ``momonga`` logger is held at INFO or above unless
``momonga_debug`` is set. Its per-request INFO lines are dropped, its warnings rate-limited to one per minute.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import re
import threading
import time
from typing import Any, Literal

import momonga
from momonga import EchonetPropertyCode as EPC
from momonga.momonga_device import parse_sk_line
from pydantic import ConfigDict, Field, SecretStr, field_validator

from cityos.wire import DeviceId, Reading
from edge import clock
from edge.sources.base import SourceConfig, SourceContext, register
from edge.sources.common.logs import LOG_PERIOD_S, LibraryLogFilter, RateLimited, install_once

log = logging.getLogger(__name__)

KIND = "smart_meter"
STATE_VERSION = 1
SLOT_MS = 30 * 60 * 1000
MAX_HISTORY_DAY = 99
_TAP_NAME = "cityos_tap"

# session_state codes (health() is dict[str, float]); the table is in docs/meters.md
STOPPED = 0
CONNECTING = 1
ONLINE = 2
SESSION_EXPIRED = 3
RATE_LIMITED = 4
JOIN_FAILED = 5
AUTH_FAILED = 6
METER_NOT_FOUND = 7
PORT_ERROR = 8
RECONNECTING = 9
STATE_NAMES = {
    STOPPED: "stopped", CONNECTING: "connecting", ONLINE: "online", SESSION_EXPIRED: "session_expired",
    RATE_LIMITED: "rate_limited", JOIN_FAILED: "join_failed", AUTH_FAILED: "auth_failed",
    METER_NOT_FOUND: "meter_not_found", PORT_ERROR: "port_error", RECONNECTING: "reconnecting",
}  # fmt: skip

COUNTERS = (
    "polls",
    "readings",
    "fixed_readings",
    "same_instant_skips",
    "recovered_slots",
    "lost_slots",
    "sessions",
    "rejoins",
    "session_expiries",
    "rate_limited",
    "join_failures",
    "auth_failures",
    "scan_failures",
    "port_errors",
    "reopens",
    "timeouts",
    "garbled_lines",
    "request_errors",
)


# --- config -------------------------------------------------------------------------------------------------


class SmartMeterConfig(SourceConfig):
    # a validation error must not print the B-route ID or password that was given (pydantic echoes inputs)
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    type: Literal["smart_meter"]
    port: str = Field(
        min_length=1, description='serial device of the Wi-SUN module, e.g. "/dev/wisun-hh-0001"'
    )
    device_id: DeviceId = Field(description="pseudonymous household id (hh-0001), never an address or a name")
    district: DeviceId | None = Field(default=None, description="becomes the reading tag `district`")
    rbid: SecretStr = Field(description="B-route ID (32 characters) from the grid operator")
    password: SecretStr = Field(description="B-route password from the grid operator")
    baudrate: int = Field(default=115200, gt=0)
    poll_interval_s: float = Field(
        default=60.0, gt=0, description="instantaneous power / energy read interval"
    )
    meter_utc_offset_h: float = Field(
        default=9.0, ge=-12, le=14, description="the meter keeps local time (JST)"
    )
    reset_module: bool = Field(default=True, description="SKRESET on every open (momonga's reset_dev)")
    # momonga's knobs; its defaults are right for the field and far too slow for tests
    scan_retries: int = Field(default=3, ge=1, le=10)
    join_retries: int = Field(default=3, ge=1, le=10)
    recv_timeout_s: float = Field(default=12.0, gt=0)
    xmit_retries: int = Field(default=12, ge=1, le=50)
    xmit_timeout_s: float = Field(default=300.0, ge=0)
    xmit_interval_s: float = Field(default=5.0, ge=0, description="momonga's pause between internal sends")
    # waiting out faults
    reconnect_backoff_min_s: float = Field(default=10.0, gt=0)
    reconnect_backoff_max_s: float = Field(default=600.0, gt=0)
    auth_failure_threshold: int = Field(
        default=3, ge=1, description="failed joins in a row read as bad credentials"
    )
    auth_backoff_s: float = Field(default=3600.0, gt=0)
    session_wait_s: float = Field(
        default=300.0, gt=0, description="longest wait for re-authentication after EVENT 29"
    )
    rate_limit_wait_s: float = Field(
        default=1800.0, gt=0, description="longest wait for EVENT 33 after EVENT 32"
    )
    stop_grace_s: float = Field(
        default=2.0, ge=0, description="after stop, how long a momonga call may finish"
    )
    momonga_debug: bool = Field(
        default=False, description="let momonga log at DEBUG (dumps part of the B-route ID)"
    )

    @field_validator("rbid")
    @classmethod
    def _rbid_form(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value().replace(" ", "")
        if not re.fullmatch(r"[0-9A-Za-z]{32}", raw):
            raise ValueError("the B-route ID is 32 letters/digits")  # never echo the value
        return SecretStr(raw)

    @field_validator("password")
    @classmethod
    def _password_form(cls, v: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[\x21-\x7e]{1,32}", v.get_secret_value()):
            raise ValueError("the B-route password is 1..32 printable characters without spaces")
        return v


# --- momonga's logging ----------------------------------------------------------------------------------------

_by_thread: dict[int, SmartMeterSource] = {}
_by_thread_lock = threading.Lock()


def _count_timeout(record: logging.LogRecord) -> None:
    """momonga only logs a receive timeout per attempt: count it for the source whose thread logged it."""
    msg = str(record.msg)
    if msg.startswith("The request for transaction id") and "timed out" in msg:
        with _by_thread_lock:
            src = _by_thread.get(record.thread or 0)
        if src is not None:
            src._count("timeouts")


def _configure_momonga_logging(debug: bool) -> None:
    """Count momonga's per-attempt receive timeouts, drop its per-request INFO chatter and rate-limit the rest."""
    install_once(
        "momonga", (momonga.logger, momonga.session_manager_logger, momonga.sk_wrapper_logger),
        lambda: LibraryLogFilter(
            "momonga", LOG_PERIOD_S, observe=_count_timeout,
            drop=lambda r: r.levelno <= logging.INFO and str(r.msg).startswith("Successfully")),
    )
    root = logging.getLogger("momonga")
    if not debug and (root.level == logging.NOTSET or root.level < logging.INFO):
        root.setLevel(logging.INFO)


# --- the line tap ---------------------------------------------------------------------------------------------

#: Lines a module sends besides EVENT/ERXUDP: answers, command echoes, the EPANDESC block, SKLL64's address.
_KNOWN_LINE = re.compile(
    r"(OK( \d\d)?|FAIL ER\d\d|E(VER|APPVER|INFO|SREG|ADDR|NEIGHBOR) .*|EPANDESC|  [A-Za-z ]+:[0-9A-Fa-f]+"
    r"|FE80(:[0-9A-Fa-f]{4}){7}|SK[A-Z0-9]+( .*)?|[RW]OPT.*)\s*"
)


class _LineTap(queue.Queue):  # type: ignore[type-arg]
    """A subscriber on momonga's line publisher that classifies each line as it arrives and keeps none.

    momonga's publisher thread calls ``put`` for every line from the module; its ``open()`` drains subscribers with
    ``empty()``/``get()``, which see an empty queue.
    """

    def __init__(self, source: SmartMeterSource, mo: momonga.Momonga) -> None:
        super().__init__()
        self._source, self._mo = source, mo

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, str):
            try:
                self._source._on_line(item, self._mo)
            except Exception:  # never let the tap break momonga's publisher
                log.debug("line tap failed", exc_info=True)


# --- the source -----------------------------------------------------------------------------------------------


class _Retry(Exception):
    """Try again on the next poll (nothing was emitted)."""


class SmartMeterSource:
    """One household meter behind one Wi-SUN module (see the module docstring)."""

    def __init__(self, config: SmartMeterConfig) -> None:
        self.config = config
        self.name = config.name
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()
        self._phase = STOPPED
        self._expired = False
        self._expired_since = 0.0
        self._rate_limited = False
        self._rate_limited_since = 0.0
        self._mo: momonga.Momonga | None = None
        self._opening: momonga.Momonga | None = None
        self._next_open = 0.0
        self._backoff = config.reconnect_backoff_min_s
        self._failed_joins_in_row = 0
        self._next_poll = 0.0
        self._reverse: bool | None = None  # does the meter have E3? (None: not asked yet)
        self._last_live_ts = 0  # ms of the last power/energy reading: never the same instant twice
        self._decimals = 3
        self._state: dict[str, Any] = {"v": STATE_VERSION}
        self._tz = dt.timezone(dt.timedelta(hours=config.meter_utc_offset_h))
        self._warn = RateLimited(log)
        self._tags = {"district": config.district} if config.district else {}
        _configure_momonga_logging(config.momonga_debug)

    # --- health ---------------------------------------------------------------------------------------------
    @property
    def session_state(self) -> int:
        with self._lock:
            return self._state_code()

    def _state_code(self) -> int:
        if self._phase == ONLINE:
            if self._expired:
                return SESSION_EXPIRED
            if self._rate_limited:
                return RATE_LIMITED
        return self._phase

    def health(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {k: float(v) for k, v in self._counters.items()}
            out["session_state"] = float(self._state_code())
            waiting = self._mo is None and self._phase != STOPPED
            out["backoff_s"] = round(max(0.0, self._next_open - time.monotonic()), 1) if waiting else 0.0
            last = self._state.get("last_slot_ms")
            out["last_fixed_slot_ms"] = float(last) if last is not None else 0.0
        return out

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def _set_phase(self, phase: int) -> None:
        with self._lock:
            if phase != self._phase:
                log.info("%s: %s", self.name, STATE_NAMES[phase])
            self._phase = phase

    # --- the line tap (momonga's publisher thread) ----------------------------------------------------------
    def _on_line(self, line: str, mo: momonga.Momonga) -> None:
        if line.startswith("EVENT "):
            try:
                num = int(line.split()[1], 16)
            except (IndexError, ValueError):
                self._count("garbled_lines")
                return
            with self._lock:
                if num == 0x29:
                    self._counters["session_expiries"] += 1
                    self._expired, self._expired_since = True, time.monotonic()
                elif num == 0x25 and self._expired:
                    self._counters["rejoins"] += 1
                    self._expired = False
                elif num == 0x24:
                    self._counters["join_failures"] += 1
                elif num == 0x32:
                    self._counters["rate_limited"] += 1
                    if not self._rate_limited:
                        self._rate_limited, self._rate_limited_since = True, time.monotonic()
                elif num == 0x33:
                    self._rate_limited = False
        elif line.startswith("ERXUDP"):
            if parse_sk_line(line, mo.session_manager.skw.device_strategy) is None:
                self._count("garbled_lines")
        elif not _KNOWN_LINE.fullmatch(line):
            self._count("garbled_lines")

    # --- run ------------------------------------------------------------------------------------------------
    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        _configure_momonga_logging(self.config.momonga_debug)
        saved = ctx.state or {}
        if saved.get("v") == STATE_VERSION:
            self._state = dict(saved)
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch_stop, args=(stop, done), name=f"{self.name}-stop", daemon=True
        )
        watcher.start()
        with _by_thread_lock:
            _by_thread[threading.get_ident()] = self
        try:
            while not stop.is_set():
                if self._mo is None:
                    wait = self._next_open - time.monotonic()
                    if wait > 0:
                        stop.wait(min(wait, 0.5))
                        continue
                    self._open(stop)
                    continue
                self._service(ctx, stop)
                stop.wait(min(0.2, max(0.01, self._next_poll - time.monotonic())))
        finally:
            done.set()
            with _by_thread_lock:
                _by_thread.pop(threading.get_ident(), None)
            self._close()
            self._set_phase(STOPPED)

    def _watch_stop(self, stop: threading.Event, done: threading.Event) -> None:
        """On stop, give the current momonga call ``stop_grace_s`` to return, then close momonga under it (its
        waits — a closed gate, a silent module — can last minutes)."""
        while not done.is_set():
            if stop.wait(0.2):
                break
        if done.wait(self.config.stop_grace_s):
            return
        mo = self._opening or self._mo
        if mo is not None:
            try:
                mo.close()
            except Exception:
                log.debug("close on stop failed", exc_info=True)

    # --- session --------------------------------------------------------------------------------------------
    def _open(self, stop: threading.Event) -> None:
        cfg = self.config
        self._set_phase(CONNECTING)
        try:
            mo = momonga.Momonga(
                cfg.rbid.get_secret_value(),
                cfg.password.get_secret_value(),
                cfg.port,
                baudrate=cfg.baudrate,
                reset_dev=cfg.reset_module,
                scan_retries=cfg.scan_retries,
                join_retries=cfg.join_retries,
            )
        except momonga.MomongaError as exc:
            self._open_failed(PORT_ERROR, "port_errors", f"cannot set up momonga: {_short(exc)}")
            return
        mo.xmit_retries = cfg.xmit_retries
        mo.recv_timeout = cfg.recv_timeout_s
        mo.xmit_timeout = cfg.xmit_timeout_s
        mo.internal_xmit_interval = cfg.xmit_interval_s
        mo.session_manager.skw.subscribers[_TAP_NAME] = _LineTap(self, mo)
        self._opening = mo
        with self._lock:
            self._expired = False
        try:
            mo.open()
        except momonga.MomongaSkJoinFailure as exc:
            self._failed_joins_in_row += 1
            if self._failed_joins_in_row >= cfg.auth_failure_threshold:
                self._auth_failed()
            else:
                self._open_failed(JOIN_FAILED, None, f"could not join the meter's PAN: {_short(exc)}")
            return
        except momonga.MomongaSkScanFailure as exc:
            self._open_failed(
                METER_NOT_FOUND, "scan_failures", f"meter not found (range? B-route ID?): {_short(exc)}"
            )
            return
        except (momonga.MomongaIOError, momonga.MomongaTimeoutError, OSError) as exc:
            self._open_failed(PORT_ERROR, "port_errors", f"Wi-SUN module on {cfg.port}: {_short(exc)}")
            return
        except (
            Exception
        ) as exc:  # momonga itself choking on odd bytes (e.g. ValueError) must not kill the source
            self._open_failed(RECONNECTING, None, f"open failed: {type(exc).__name__}: {_short(exc)}")
            return
        finally:
            self._opening = None
        if stop.is_set():
            self._mo = mo
            return
        self._mo = mo
        unit = float(mo.energy_unit) * float(mo.energy_coefficient)
        self._decimals = max(0, math.ceil(-math.log10(unit) - 1e-9)) if unit > 0 else 3
        self._failed_joins_in_row = 0
        self._backoff = cfg.reconnect_backoff_min_s
        self._next_poll = 0.0
        with self._lock:
            self._counters["sessions"] += 1
            if self._counters["sessions"] > 1:
                self._counters["rejoins"] += 1
        self._set_phase(ONLINE)

    def _open_failed(self, phase: int, counter: str | None, what: str) -> None:
        if counter:
            self._count(counter)
        if phase != JOIN_FAILED:
            self._failed_joins_in_row = 0
        self._set_phase(phase)
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.config.reconnect_backoff_max_s)
        self._next_open = time.monotonic() + delay
        self._warn(logging.WARNING, f"open:{phase}", "%s: %s; retrying in %.1f s", self.name, what, delay)

    def _auth_failed(self) -> None:
        self._count("auth_failures")
        self._set_phase(AUTH_FAILED)
        delay = self.config.auth_backoff_s
        self._next_open = time.monotonic() + delay
        self._failed_joins_in_row = 0
        # no credentials in the message, ever
        log.error(
            "%s: the meter refused %d joins in a row: the B-route password (or ID) is probably wrong or was "
            "re-issued; next try in %.0f s",
            self.name,
            self.config.auth_failure_threshold,
            delay,
        )

    def _close(self) -> None:
        mo, self._mo = self._mo, None
        if mo is not None:
            try:
                mo.close()
            except Exception as exc:
                log.debug("%s: close: %s", self.name, _short(exc))

    def _reopen(self, phase: int, why: str) -> None:
        """The session is gone or stuck: close it and open a new one after the (short) backoff."""
        self._count("reopens")
        self._warn(logging.WARNING, f"reopen:{why[:30]}", "%s: %s; reopening", self.name, why)
        self._close()
        self._set_phase(phase)
        self._next_open = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.reconnect_backoff_max_s)

    # --- while online ---------------------------------------------------------------------------------------
    def _service(self, ctx: SourceContext, stop: threading.Event) -> None:
        mo = self._mo
        assert mo is not None
        now = time.monotonic()
        died = mo.session_manager.receiver_exception
        if died is not None:
            if isinstance(died.__cause__, momonga.MomongaSkJoinFailure):
                self._failed_joins_in_row += 1  # momonga's own rejoin after a failed re-authentication
                if self._failed_joins_in_row >= self.config.auth_failure_threshold:
                    self._close()
                    self._auth_failed()
                    return
            self._reopen(RECONNECTING, f"momonga's receiver stopped ({type(died).__name__})")
            return
        with self._lock:
            expired, since_x = self._expired, self._expired_since
            limited, since_r = self._rate_limited, self._rate_limited_since
        if expired:
            if now - since_x > self.config.session_wait_s:
                self._reopen(RECONNECTING, "no re-authentication after EVENT 29")
            return
        if limited:
            if now - since_r > self.config.rate_limit_wait_s:
                with self._lock:
                    self._rate_limited = False
                self._reopen(RECONNECTING, "no EVENT 33 after the rate limit")
            return
        try:
            self._drain_notifications(ctx, mo)
            if now >= self._next_poll and not stop.is_set():
                self._next_poll = now + self.config.poll_interval_s
                self._poll(ctx, mo)
        except _Retry:
            pass
        except momonga.MomongaResponseNotPossible as exc:
            self._count("request_errors")
            self._warn(logging.WARNING, "sna", "%s: the meter refused a request: %s", self.name, _short(exc))
        except momonga.MomongaResponseNotExpected as exc:
            self._count("request_errors")
            self._warn(logging.WARNING, "bad", "%s: unreadable reply: %s", self.name, _short(exc))
        except momonga.MomongaXmitTimeout as exc:
            with self._lock:
                waiting = self._expired or self._rate_limited
            if not waiting:  # a gate closed for no reason we saw: only a new session opens it
                self._reopen(RECONNECTING, f"transmit gate stayed closed ({_short(exc)})")
        except (momonga.MomongaNeedToReopen, momonga.MomongaConnectionFailure, OSError) as exc:
            if stop.is_set():
                return
            self._reopen(RECONNECTING, f"{type(exc).__name__}: {_short(exc)}")
        except momonga.MomongaError as exc:
            self._count("request_errors")
            self._warn(logging.WARNING, "err", "%s: %s: %s", self.name, type(exc).__name__, _short(exc))

    def _drain_notifications(self, ctx: SourceContext, mo: momonga.Momonga) -> None:
        while True:
            note = mo.get_notification(timeout=0)
            if note is None:
                return
            fixed = note["properties"].get(EPC.cumulative_energy_measured_at_fixed_time)
            if isinstance(fixed, dict):
                self._on_fixed(ctx, mo, fixed)

    def _poll(self, ctx: SourceContext, mo: momonga.Momonga) -> None:
        props = {
            EPC.instantaneous_power,
            EPC.measured_cumulative_energy,
            EPC.cumulative_energy_measured_at_fixed_time,
        }
        if self._reverse is not False:
            props.add(EPC.measured_cumulative_energy_reversed)
        try:
            res = mo.request_to_get(props)
        except momonga.MomongaResponseNotPossible:
            if self._reverse is None:  # the meter has no E3: ask without it from now on
                self._reverse = False
                self._next_poll = 0.0
                raise _Retry from None
            raise
        if self._reverse is None:
            self._reverse = True
        self._count("polls")
        values: dict[str, float] = {}
        power = res.get(EPC.instantaneous_power)
        if isinstance(power, int):
            values["power_w"] = float(power)
        for epc, name in (
            (EPC.measured_cumulative_energy, "energy_kwh"),
            (EPC.measured_cumulative_energy_reversed, "energy_reverse_kwh"),
        ):
            v = res.get(epc)
            if isinstance(v, int | float):
                values[name] = round(float(v), self._decimals)
        ts = round(clock.now() * 1000)
        if ts <= self._last_live_ts:
            # The gateway clock did not advance since the last reading (a stopped simulated clock, a clock stepped
            # back): the same instant again would only overwrite that point in InfluxDB.
            self._count("same_instant_skips")
            values = {}
        if values:
            self._last_live_ts = ts
            ctx.emit(
                Reading(
                    device_id=self.config.device_id,
                    kind=KIND,
                    ts=ts,
                    values=values,
                    units={k: ("W" if k == "power_w" else "kWh") for k in values},
                    tags=self._tags,
                )
            )
            self._count("readings")
        fixed = res.get(EPC.cumulative_energy_measured_at_fixed_time)
        if isinstance(fixed, dict):
            self._on_fixed(ctx, mo, fixed)

    # --- fixed-time values ----------------------------------------------------------------------------------
    def _slot_ms(self, local: dt.datetime) -> int:
        seconds = (local - dt.datetime(1970, 1, 1)) // dt.timedelta(seconds=1)
        return (seconds - round(self.config.meter_utc_offset_h * 3600)) * 1000

    def _local(self, slot_ms: int) -> dt.datetime:
        return dt.datetime(1970, 1, 1) + dt.timedelta(
            milliseconds=slot_ms + round(self.config.meter_utc_offset_h * 3600_000)
        )

    def _on_fixed(self, ctx: SourceContext, mo: momonga.Momonga, fixed: dict[str, Any]) -> None:
        when, kwh = fixed.get("timestamp"), fixed.get("cumulative energy")
        if not isinstance(when, dt.datetime) or not isinstance(kwh, int | float):
            return  # the meter has no fixed-time value yet
        slot = self._slot_ms(when)
        if slot % SLOT_MS:
            self._count("request_errors")
            return
        last = self._state.get("last_slot_ms")
        if last is not None and slot <= last:
            return
        if last is not None and slot - last > SLOT_MS:
            recovered = self._recover(mo, last, slot, when)
            for s, v in recovered:
                self._emit_fixed(ctx, s, v, backfill=True)
            self._count("recovered_slots", len(recovered))
            lost = (slot - last) // SLOT_MS - 1 - len(recovered)
            if lost:
                self._count("lost_slots", lost)
                self._warn(
                    logging.WARNING, "lost", "%s: %d half-hour value(s) not recoverable", self.name, lost
                )
        self._emit_fixed(ctx, slot, float(kwh), backfill=False)

    def _recover(
        self, mo: momonga.Momonga, last: int, slot: int, meter_now: dt.datetime
    ) -> list[tuple[int, float]]:
        """The values of the slots strictly between ``last`` and ``slot`` from the meter's 30-min history (E2)."""
        by_day: dict[int, list[tuple[int, int]]] = {}
        for s in range(last + SLOT_MS, slot, SLOT_MS):
            local = self._local(s)
            day = (meter_now.date() - local.date()).days
            if 0 <= day <= MAX_HISTORY_DAY:
                by_day.setdefault(day, []).append((s, local.hour * 2 + local.minute // 30))
        found: dict[int, float] = {}
        for day in sorted(by_day, reverse=True):  # oldest day first
            history = mo.get_historical_cumulative_energy_1(day)
            for s, index in by_day[day]:
                v = history[index].get("cumulative energy")
                if isinstance(v, int | float):
                    found[s] = float(v)
        if by_day:
            check = mo.get_cumulative_energy_measured_at_fixed_time()
            now2 = check.get("timestamp")
            if not isinstance(now2, dt.datetime) or now2.date() != meter_now.date():
                raise _Retry  # the meter's day turned during the read: the day index meant another date
        return sorted(found.items())

    def _emit_fixed(self, ctx: SourceContext, slot: int, kwh: float, *, backfill: bool) -> None:
        kwh = round(kwh, self._decimals)
        state = {"v": STATE_VERSION, "last_slot_ms": slot, "last_slot_kwh": kwh}
        ctx.emit(
            Reading(
                device_id=self.config.device_id,
                kind=KIND,
                ts=slot,
                values={"energy_fixed_kwh": kwh},
                units={"energy_fixed_kwh": "kWh"},
                tags=self._tags,
                backfill=backfill,
            ),
            state=state,
        )
        with self._lock:
            self._state = state
            self._counters["fixed_readings"] += 1


def _short(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:200]


register("smart_meter", SmartMeterConfig, SmartMeterSource)
