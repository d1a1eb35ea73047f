"""Household smart meters over the B-route (Wi-SUN module + SKSTACK-IP + ECHONET Lite): the gateway's adapter.

One :class:`SmartMeterSource` per household meter (one USB Wi-SUN module each: a module holds one PANA
session), run in its own thread. All of SKSTACK-IP and ECHONET Lite is momonga's (sync API, unmodified). What
the readings are is decided sans-I/O by :class:`edge.sources.meter.core.MeterCore`; this module is the I/O
around it: it opens and keeps the momonga session, decides *when* to read, asks momonga for the properties the
core wants, hands the decoded values to the core, emits what the core returns (with the state to commit) and
confirms each commit back to it, reads the meter's history when the core asks for it, logs what the core
reports, and waits out the faults. See ``docs/meters.md`` for the full story.

Readings (kind ``smart_meter``, tagged with ``district`` when configured; the rules are in :mod:`.core`)
-------------------------------------------------------------------------------------------------------
* Every ``poll_interval_s``: one Get of E7 + E0 (+ E3) + EA in a single frame (``MeterCore.poll_properties``),
  each property decoded on its own (:func:`_get_each`: a meter that has no fixed-time value yet answers EA with
  the "no data" date, year 65535, and that must not cost the live reading; ``no_fixed_value_yet``, logged once).
  A *live* reading stamped with ``edge.clock.now()`` when the answer came: ``power_w``, ``energy_kwh`` (E0 ×
  D3 × unit E1; momonga reads E1/D3 once per session, the adapter hands them to ``MeterCore.set_resolution``)
  and ``energy_reverse_kwh`` when the meter has E3 (a Get_SNA to the first poll with E3:
  ``MeterCore.get_refused``, polled again at once without it).
* The fixed-time cumulative value (EA, latched by the meter at :00 and :30; also sent by it as an INF, taken
  from momonga's ``get_notification``) as a reading of its own, ``energy_fixed_kwh``, stamped with the
  *meter's* slot time, so that the energy of a household in a half hour is the exact difference of two
  consecutive fixed-time readings. kWh values are rounded to the meter's resolution (unit × coefficient).

Exactly once across rejoins and restarts
----------------------------------------
The core's state (``{"v": 1, "last_slot_ms", "last_slot_kwh"}``) is committed with each fixed-time reading
(``ctx.emit(reading, state=...)``), and becomes the core's own only after that emit returned
(``MeterCore.committed``); ``run()`` hands the committed state back to the core (``MeterCore.restore``). A
slot not after it is never emitted again. When the meter's current slot is more than one slot after it (an
outage: no session, rate limit, agent down), the core returns a ``HistoryRequest``: the adapter reads those
days of the 30-min history (E2 with the day set by E5, ``Momonga.get_historical_cumulative_energy_1``, oldest
day first) and then EA again, and gives both to ``MeterCore.on_history``, which emits the missed slots oldest
first with ``backfill=True``, each with its state, then the current slot — or nothing, if the meter's date
changed during the read (the day index meant another day): the recovery is redone on the next poll. Slots
older than 99 days, or that the meter has no value for, are counted as ``lost_slots`` and logged here
(rate-limited).

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

The B-route ID and password are files the config points at (``rbid_file``, ``password_file``: 0600, one line
each, owned by the agent's user), never values in the config. They are read, and their form checked, when the
source is built (:meth:`SmartMeterConfig.credentials`), so a missing, unreadable, group/world-readable or
malformed file is a ConfigError at the agent's start naming the setting (``sources[<name>].password_file``) and
the file, never what is in it. A re-issued password: replace the file and restart the agent.

momonga's own logging: it masks SKSETRBID/SKSETPWD in its DEBUG line dumps, but the scan's ``PairID`` (the end of
the B-route ID) is dumped unmasked at DEBUG, so the ``momonga`` logger is held at INFO or above unless
``momonga_debug`` is set. Its per-request INFO lines are dropped, its warnings rate-limited to one per minute.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

import momonga
from momonga import EchonetProperty
from momonga import EchonetPropertyCode as EPC
from momonga.momonga_device import parse_sk_line
from momonga.momonga_echonet_data import ENERGY_PARSERS, PARSER_MAP
from pydantic import ConfigDict, Field, SecretStr

from cityos.config import ConfigError, DeviceId
from cityos.credentials import read_secret
from edge import clock
from edge.sources.base import SourceConfig, SourceContext, register
from edge.sources.common.logs import LOG_PERIOD_S, LibraryLogFilter, RateLimited, install_once
from edge.sources.meter.core import (
    KIND,
    MAX_HISTORY_DAY,
    NO_FIXED_VALUE,
    SLOT_MS,
    STATE_VERSION,
    MeterCore,
    Step,
)

__all__ = [
    "KIND",
    "MAX_HISTORY_DAY",
    "SLOT_MS",
    "STATE_NAMES",
    "STATE_VERSION",
    "BRouteCredentials",
    "SmartMeterConfig",
    "SmartMeterSource",
]

log = logging.getLogger(__name__)

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
    NO_FIXED_VALUE,
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
    # a validation error must not print what was given (pydantic echoes inputs): an old config's inline
    # `password = "..."` is an unknown key here, and must not be shown in the error that says so
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    type: Literal["smart_meter"]
    port: str = Field(
        min_length=1, description='serial device of the Wi-SUN module, e.g. "/dev/wisun-hh-0001"'
    )
    device_id: DeviceId = Field(description="pseudonymous household id (hh-0001), never an address or a name")
    district: DeviceId | None = Field(default=None, description="becomes the reading tag `district`")
    # The B-route credentials are files the config points at, never values in it: a config is copied, diffed,
    # pasted into tickets and hashed into the fleet view. Read (and their form checked) by ``credentials()``
    # when the source is built, so a missing, unreadable, group/world-readable or malformed file stops the
    # agent at start with a ConfigError naming the setting.
    rbid_file: Path = Field(
        description="0600 file holding the B-route ID (32 letters/digits) from the grid operator, on one line"
    )
    password_file: Path = Field(
        description="0600 file holding the B-route password from the grid operator, on one line"
    )
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

    def setting(self, field: str) -> str:
        """How an error names one of this source's settings: by the source's ``name`` (the index in
        ``[[sources]]`` is not known here), e.g. ``sources[meter-hh-0001].password_file``."""
        return f"sources[{self.name}].{field}"

    def credentials(self) -> BRouteCredentials:
        """The B-route ID and password from their files, or a ConfigError naming the setting and the file (never
        what is in it): missing, unreadable, readable by group/others, not one line, or not of the B-route form."""
        rbid_setting, pwd_setting = self.setting("rbid_file"), self.setting("password_file")
        # the letter prints the ID in groups of four: spaces between them are not part of it
        rbid = read_secret(self.rbid_file, rbid_setting).replace(" ", "")
        if not re.fullmatch(r"[0-9A-Za-z]{32}", rbid):
            raise ConfigError(
                f"{rbid_setting}: {self.rbid_file} does not hold a B-route ID (32 letters/digits, on one line)"
            )
        password = read_secret(self.password_file, pwd_setting)
        if not re.fullmatch(r"[\x21-\x7e]{1,32}", password):
            raise ConfigError(
                f"{pwd_setting}: {self.password_file} does not hold a B-route password (1..32 printable "
                "characters without spaces, on one line)"
            )
        return BRouteCredentials(SecretStr(rbid), SecretStr(password))


class BRouteCredentials(NamedTuple):
    """What the grid operator's letter gives a household: the meter's B-route ID and password."""

    rbid: SecretStr
    password: SecretStr


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
        # read now, so a bad credentials file is a ConfigError at the agent's start (exit 2), not a dead thread
        self._credentials = config.credentials()
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
        # what the readings are and which slots were committed: sans-I/O, fed with what momonga decoded
        self._core = MeterCore(
            config.device_id, district=config.district, utc_offset_h=config.meter_utc_offset_h
        )
        self._warn = RateLimited(log)
        self._told_no_fixed = False  # "no fixed-time value yet" is logged once, until the first one came
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
            last = self._core.last_slot_ms
            out["last_fixed_slot_ms"] = float(last) if last is not None else 0.0
        return out

    def secrets(self) -> tuple[SecretStr, ...]:
        """What the agent must keep out of any line it logs (its crash line included): the B-route ID, its last
        eight characters (a scan shows them) and the password."""
        rbid = self._credentials.rbid.get_secret_value()
        return (self._credentials.rbid, SecretStr(rbid[-8:]), self._credentials.password)

    def devices(self) -> dict[str, dict[str, float]]:
        """The household's meter for the fleet view: its B-route session (2 = online; see docs/meters.md for
        the other codes) and the last half-hour slot it gave."""
        h = self.health()
        return {self.config.device_id: {"ok": 1.0 if h["session_state"] == ONLINE else 0.0,
                                         "session_state": h["session_state"],
                                         "last_fixed_slot_ms": h["last_fixed_slot_ms"]}}

    def _why(self, exc: BaseException) -> str:
        """An exception as one short line for the log, with the credentials (and the scan's PairID, the ID's
        last 8 characters) blanked: momonga's messages may quote a module's line, and its echoes carry them."""
        text = _short(exc)
        rbid = self._credentials.rbid.get_secret_value()
        secrets = (rbid, self._credentials.password.get_secret_value(), rbid[-8:])
        for secret in sorted((x for x in secrets if len(x) >= 4), key=len, reverse=True):  # shorter: any word
            text = text.replace(secret, "***")
        return text

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
        with self._lock:
            self._core.restore(ctx.state or {})
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
                self._credentials.rbid.get_secret_value(),
                self._credentials.password.get_secret_value(),
                cfg.port,
                baudrate=cfg.baudrate,
                reset_dev=cfg.reset_module,
                scan_retries=cfg.scan_retries,
                join_retries=cfg.join_retries,
            )
        except momonga.MomongaError as exc:
            self._open_failed(PORT_ERROR, "port_errors", f"cannot set up momonga: {self._why(exc)}")
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
                self._open_failed(JOIN_FAILED, None, f"could not join the meter's PAN: {self._why(exc)}")
            return
        except momonga.MomongaSkScanFailure as exc:
            self._open_failed(
                METER_NOT_FOUND, "scan_failures", f"meter not found (range? B-route ID?): {self._why(exc)}"
            )
            return
        except (momonga.MomongaIOError, momonga.MomongaTimeoutError, OSError) as exc:
            self._open_failed(PORT_ERROR, "port_errors", f"Wi-SUN module on {cfg.port}: {self._why(exc)}")
            return
        except (
            Exception
        ) as exc:  # momonga itself choking on odd bytes (e.g. ValueError) must not kill the source
            self._open_failed(RECONNECTING, None, f"open failed: {type(exc).__name__}: {self._why(exc)}")
            return
        finally:
            self._opening = None
        if stop.is_set():
            self._mo = mo
            return
        self._mo = mo
        self._core.set_resolution(mo.energy_unit, mo.energy_coefficient)
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
                log.debug("%s: close: %s", self.name, self._why(exc))

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
            self._warn(logging.WARNING, "sna", "%s: the meter refused a request: %s", self.name, self._why(exc))
        except momonga.MomongaResponseNotExpected as exc:
            self._count("request_errors")
            self._warn(logging.WARNING, "bad", "%s: unreadable reply: %s", self.name, self._why(exc))
        except momonga.MomongaXmitTimeout as exc:
            with self._lock:
                waiting = self._expired or self._rate_limited
            if not waiting:  # a gate closed for no reason we saw: only a new session opens it
                self._reopen(RECONNECTING, f"transmit gate stayed closed ({self._why(exc)})")
        except (momonga.MomongaNeedToReopen, momonga.MomongaConnectionFailure, OSError) as exc:
            if stop.is_set():
                return
            self._reopen(RECONNECTING, f"{type(exc).__name__}: {self._why(exc)}")
        except momonga.MomongaError as exc:
            self._count("request_errors")
            self._warn(logging.WARNING, "err", "%s: %s: %s", self.name, type(exc).__name__, self._why(exc))

    def _drain_notifications(self, ctx: SourceContext, mo: momonga.Momonga) -> None:
        while True:
            note = mo.get_notification(timeout=0)
            if note is None:
                return
            self._apply(ctx, mo, self._core.on_notification(note["properties"]))

    def _poll(self, ctx: SourceContext, mo: momonga.Momonga) -> None:
        try:
            res = _get_each(mo, self._core.poll_properties())
        except momonga.MomongaResponseNotPossible:
            if self._core.get_refused():  # the meter has no E3: ask without it from now on
                self._next_poll = 0.0
                raise _Retry from None
            raise
        self._apply(ctx, mo, self._core.on_poll(round(clock.now() * 1000), res))

    # --- handing the core's steps out -----------------------------------------------------------------------
    def _apply(self, ctx: SourceContext, mo: momonga.Momonga, step: Step) -> None:
        """Emit what the core made of an event; when it needs the meter's history, read it and go on."""
        self._commit(ctx, step)
        req = step.history
        if req is not None:
            history = {day: mo.get_historical_cumulative_energy_1(day) for day in req.days}  # oldest first
            after = mo.get_cumulative_energy_measured_at_fixed_time()
            self._commit(ctx, self._core.on_history(req, history, after))

    def _commit(self, ctx: SourceContext, step: Step) -> None:
        if step.retry:
            raise _Retry  # the meter's day turned during the history read: nothing emitted, redo it next poll
        for emission in step.emissions:
            ctx.emit(emission.reading, state=emission.state)
            with self._lock:
                self._core.committed(emission)  # the committed state is the core's only now
                self._counters[emission.counter] += 1
            if emission.state is not None:
                self._told_no_fixed = False
        with self._lock:
            for name, n in step.counts.items():
                self._counters[name] += n
        if step.no_fixed_value and not self._told_no_fixed:
            self._told_no_fixed = True
            log.info(
                "%s: the meter has no half-hour (:00/:30) value yet (just powered on?): live readings go on, "
                "the first half-hour value follows at its next :00/:30",
                self.name,
            )
        if step.unreadable:
            codes = " ".join(f"{epc:02X}" for epc in step.unreadable)
            self._warn(logging.WARNING, "unreadable", "%s: unreadable value(s) of EPC %s", self.name, codes)
        lost = step.lost_slots
        if lost:
            self._warn(logging.WARNING, "lost", "%s: %d half-hour value(s) not recoverable", self.name, lost)


def _get_each(mo: momonga.Momonga, codes: frozenset[int]) -> dict[int, Any]:
    """One ECHONET Lite Get of ``codes`` (one radio frame each way), each property decoded on its own.

    momonga's ``request_to_get`` decodes every property of the reply and raises ``MomongaResponseNotExpected``
    for the whole request when one cannot be decoded. A meter that has no fixed-time value yet (from power-on
    to its first :00/:30) answers EA with the "no data" date, year 65535, which no datetime holds: the live
    E7/E0 of the same reply were lost with it, for up to 30 minutes. Splitting the poll into two Gets would
    double the radio traffic under the 920 MHz duty-cycle limit (EVENT 32) and still could not tell "no data"
    from garbage (momonga raises the same error for both). So this sends the same Get ``request_to_get``
    sends (``_request_to_get``: its retries and recovery; momonga 0.7, pinned) and decodes each property with
    momonga's own parser (``PARSER_MAP``); a property it cannot decode is handed on as its raw bytes, as
    momonga itself does for a notification (``get_notification``), for the core to judge. A refusal
    (Get_SNA) and a reply that does not fit the request still raise as before."""
    replies = mo._request_to_get([EchonetProperty(EPC(code)) for code in codes])
    return _decode_each(replies, mo.energy_unit, mo.energy_coefficient)


def _decode_each(replies: list[Any], unit: float, coefficient: float) -> dict[int, Any]:
    """momonga's ``EchonetPropertyWithData`` of one reply → EPC → the value momonga's parser makes of it, or its
    raw bytes when the parser cannot (None for a code without data: the meter has no value)."""
    out: dict[int, Any] = {}
    for r in replies:
        parser = PARSER_MAP.get(r.epc)
        if r.edt is None or parser is None:
            out[r.epc] = None if r.edt is None else bytes(r.edt)
            continue
        try:
            out[r.epc] = parser(r.edt, unit, coefficient) if parser in ENERGY_PARSERS else parser(r.edt)
        except Exception:  # momonga's parsers raise ValueError (datetime, int) or its own error
            out[r.epc] = bytes(r.edt)
    return out


def _short(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:200]


register("smart_meter", SmartMeterConfig, SmartMeterSource)
