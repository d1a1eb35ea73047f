"""Continuous Bluetooth LE scanning for bus gateways: every advertisement, as the core's own advert, to one callback.

:class:`BleScanner` runs a backend in its own daemon thread and calls ``on_adv(advert)`` with an
:class:`~edge.sources.bus.ble_ids.Advert` (address, RSSI, manufacturer data, service UUIDs, and the data clock when
it was received) for **every** advertisement received, repeats included: the ridership code counts sightings, so
de-duplication would bias it. This module is the adapter: the ridership core never sees bleak's objects.

**Thread safety**: ``on_adv`` runs on the scanner's thread (for BlueZ, inside the thread's asyncio loop). It must
be quick and must guard any state it shares with other threads. An exception from it is counted
(``ble_callback_errors``) and logged (rate-limited, without its message: it might hold an address); scanning goes on.

Backends (``BleScanConfig.backend``):

* ``bluez``: bleak 3.1's ``BleakScanner`` over D-Bus, in an asyncio loop owned by the thread (one loop for the
  thread's life: bleak keeps one BlueZ manager per loop and building one is expensive). Active scanning asks
  BlueZ for ``DuplicateData=True`` (bleak's default is ``False``, which makes BlueZ signal only *changed*
  manufacturer/service data: bleak issues #235, #1065). Passive scanning goes through BlueZ's experimental
  advertisement monitor (BlueZ >= 5.56 with ``--experimental``, kernel >= 5.10; bleak #884) and needs
  ``or_patterns``; BlueZ then reports a device when it appears and afterwards only when its data or RSSI changes,
  not each repeat (DuplicateData is a discovery filter, unused in passive mode; bleak #235): prefer ``active``.
  bleak's module for BlueZ (and dbus-fast) is imported only by this backend (memory on the Pi).
  bleak's ``BLEDevice`` + ``AdvertisementData`` are taken apart in exactly one place, :func:`advert_from_bleak`.
* ``sim``: JSON lines from a simulator on a Unix stream socket, each decoded straight into an ``Advert``
  (:func:`decode_sim_line`); no bleak object is built.

Failures of either backend (no D-Bus, adapter missing or powered off, ``BleakError``/``BleakDBusError``, the
simulator's socket refused or closed) set ``ble_adapter_up`` to 0, are counted, logged rate-limited (addresses
scrubbed) and retried with backoff (``backoff_min_s`` doubling to ``backoff_max_s``). BlueZ is known to stall
silently (bluetoothd restarted, discovery stuck): the scan is also restarted when the adapter disappears, is
powered off or stops ``Discovering``, and when no advertisement came for ``silence_restart_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.uuids import normalize_uuid_str
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edge import clock
from edge.sources.bus.ble_ids import Advert
from edge.sources.common.logs import RateLimited

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

__all__ = [
    "PASSIVE_OR_PATTERNS",
    "BleScanConfig",
    "BleScanner",
    "OnAdvertisement",
    "advert_from_bleak",
    "bluez_scanner_kwargs",
    "decode_sim_line",
]

log = logging.getLogger(__name__)

OnAdvertisement = Callable[[Advert], None]

#: Passive scanning needs at least one BlueZ or-pattern; an advertisement matching none is not reported. These
#: match what phones send: the Flags AD (0x01) values phones and most LE devices use (0x02 LE general
#: discoverable, 0x06 + BR/EDR not supported, 0x1A + simultaneous LE/BR/EDR as on iOS and Android), and Apple
#: manufacturer data (0xFF, company 0x004C little-endian: iPhones' Continuity adverts and the city app's iBeacon,
#: which often carry no Flags).
PASSIVE_OR_PATTERNS: tuple[OrPattern, ...] = (
    OrPattern(0, AdvertisementDataType.FLAGS, b"\x02"),
    OrPattern(0, AdvertisementDataType.FLAGS, b"\x06"),
    OrPattern(0, AdvertisementDataType.FLAGS, b"\x1a"),
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00"),
)

#: How often the scanning loops look at the stop flag, the watchdog and the adapter (seconds).
_POLL_S = 0.1
#: BlueZ: longest wait for ``start()``/``stop()`` of a scan (a hung bluetoothd must not hang the thread).
_BLUEZ_CALL_TIMEOUT_S = 10.0
_BLUEZ_STOP_TIMEOUT_S = 2.0
#: BlueZ: ``Discovering`` false for this long while we scan (active) = the discovery was lost.
_NOT_DISCOVERING_S = 10.0
#: Sim: a line longer than this is garbage (a real advertisement is < 1 KiB as JSON).
_MAX_LINE = 16 * 1024
#: Sim: bytes read from the socket at a time (into one buffer, reused).
_RECV_CHUNK = 65536

_MAC = re.compile(r"(?i)(?<![0-9a-f])(?:[0-9a-f]{2}[:_-]){5}[0-9a-f]{2}(?![0-9a-f])")
_SEP = re.compile(r"[_-]")
_FIELD_NAME = re.compile(r"[a-z_]{1,32}")
_SIM_FIELDS = frozenset(
    {"address", "address_type", "rssi", "manufacturer_data", "service_uuids", "service_data", "local_name",
     "tx_power"}
)  # fmt: skip


# --- config -------------------------------------------------------------------------------------------------


class BleScanConfig(BaseModel):
    """How a gateway scans (``[sources.ble]`` of a bus source)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["bluez", "sim"] = Field(default="bluez", description="bluez on a Pi; sim in tests/demo")
    adapter: str = Field(default="hci0", pattern=r"^hci[0-9]{1,3}$", description="BlueZ adapter name")
    mode: Literal["active", "passive"] = Field(
        default="active", description="passive needs bluetoothd --experimental and reports fewer repeats"
    )
    sim_socket: Path | None = Field(
        default=None, validate_default=True, description="simulator's Unix socket (backend sim)"
    )
    silence_restart_s: float = Field(
        default=120.0, gt=0, description="no advertisement for this long while scanning: restart the scan"
    )
    backoff_min_s: float = Field(default=0.1, gt=0, description="first retry delay after a failure")
    backoff_max_s: float = Field(default=2.0, gt=0, description="retry delay doubles up to this")

    @field_validator("sim_socket")
    @classmethod
    def _sim_needs_socket(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None and info.data.get("backend") == "sim":
            raise ValueError("required when backend is 'sim'")
        return value

    @field_validator("backoff_max_s")
    @classmethod
    def _max_not_below_min(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("backoff_min_s")
        if low is not None and value < low:
            raise ValueError(f"must be >= backoff_min_s ({low})")
        return value


def bluez_scanner_kwargs(config: BleScanConfig) -> dict[str, Any]:
    """The keyword arguments for ``bleak.BleakScanner`` besides the callback (pure: tested as data).

    The adapter goes in ``bluez["adapter"]``: bleak 3 deprecated the top-level ``adapter=`` keyword. Active:
    ``DuplicateData=True`` so that BlueZ signals every advertisement's manufacturer/service data, not only
    changes (bleak sets ``False``; ``Transport="le"`` it sets itself). Passive: the or-patterns BlueZ requires
    (``filters`` would be ignored there).
    """
    bluez: dict[str, Any] = {"adapter": config.adapter}
    if config.mode == "active":
        bluez["filters"] = {"DuplicateData": True}
    else:
        bluez["or_patterns"] = list(PASSIVE_OR_PATTERNS)
    return {"scanning_mode": config.mode, "bluez": bluez}


def advert_from_bleak(device: BLEDevice, adv: AdvertisementData, rx_s: float) -> Advert:
    """bleak's ``(BLEDevice, AdvertisementData)`` → the core's :class:`Advert`, received at ``rx_s`` (data clock).

    The only place bleak's objects are taken apart (the BlueZ backend's detection callback). On BlueZ the address
    is upper case with colons and the service UUIDs are 128-bit lower case, as the core expects.
    """
    return Advert(
        address=device.address,
        rssi=adv.rssi,
        rx_s=rx_s,
        manufacturer_data=adv.manufacturer_data,
        service_uuids=tuple(adv.service_uuids),
    )


# --- the simulator's line format ----------------------------------------------------------------------------


def decode_sim_line(line: bytes, rx_s: float) -> Advert:
    """One simulator JSON line, received at ``rx_s`` (data clock) → the core's :class:`Advert`, as BlueZ would
    report it (address upper case with colons, service UUIDs 128-bit lower case).

    ``{"address": "AA:BB:CC:DD:EE:FF", "rssi": -71, "address_type": "random", "manufacturer_data": {"76": "<hex>"},
    "service_uuids": [...], "service_data": {"<uuid>": "<hex>"}, "local_name": null, "tx_power": null}``; all but
    ``address`` and ``rssi`` optional. Every field is checked; those the core does not read (``address_type``,
    ``service_data``, ``local_name``, ``tx_power``) go no further. Raises ValueError with a reason that never
    contains the address.
    """
    try:
        obj = json.loads(line)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    unknown = set(obj) - _SIM_FIELDS
    if unknown:
        names = sorted(str(k) if _FIELD_NAME.fullmatch(str(k)) else "?" for k in unknown)
        raise ValueError(f"unknown field(s): {', '.join(names)}")

    address = obj.get("address")
    if not isinstance(address, str) or not _MAC.fullmatch(address.strip()):
        raise ValueError("address: not a MAC address like AA:BB:CC:DD:EE:FF")
    address_type = obj.get("address_type", "random")
    if address_type not in ("public", "random"):
        raise ValueError("address_type: must be 'public' or 'random'")
    rssi = _int(obj.get("rssi"), "rssi", -127, 20)
    if obj.get("tx_power") is not None:
        _int(obj["tx_power"], "tx_power", -127, 127)
    local_name = obj.get("local_name")
    if local_name is not None and (not isinstance(local_name, str) or len(local_name) > 248):
        raise ValueError("local_name: must be a string of at most 248 characters or null")

    mdata: dict[int, bytes] = {}
    for key, value in _mapping(obj.get("manufacturer_data"), "manufacturer_data").items():
        try:
            company = int(key, 0) if key.lower().startswith("0x") else int(key)
        except ValueError:
            raise ValueError("manufacturer_data: keys must be company ids (decimal or 0x hex)") from None
        if not 0 <= company <= 0xFFFF:
            raise ValueError("manufacturer_data: company id must be 0..65535")
        mdata[company] = _hex(value, "manufacturer_data")

    raw_uuids = obj.get("service_uuids", [])
    if raw_uuids is None:
        raw_uuids = []
    if not isinstance(raw_uuids, list):
        raise ValueError("service_uuids: must be a list")
    uuids = tuple(_uuid(u, "service_uuids") for u in raw_uuids)
    for key, value in _mapping(obj.get("service_data"), "service_data").items():
        _uuid(key, "service_data")
        _hex(value, "service_data")
    return Advert(
        address=_SEP.sub(":", address.strip().upper()),
        rssi=rssi,
        rx_s=rx_s,
        manufacturer_data=mdata,
        service_uuids=uuids,
    )


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer")
    if not low <= value <= high:
        raise ValueError(f"{name}: must be {low}..{high}")
    return value


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name}: must be an object")
    return value


def _hex(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name}: values must be hex strings")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{name}: values must be hex strings") from None


def _uuid(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: UUIDs must be strings")
    try:
        return str(uuid.UUID(normalize_uuid_str(value)))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"{name}: not a UUID (16-, 32- or 128-bit)") from None


def _scrub(text: str) -> str:
    """A message for the log: first line, bounded, Bluetooth addresses (also in BlueZ object paths) removed."""
    return _MAC.sub("<address>", str(text).split("\n", 1)[0])[:160]


class _Silence(Exception):
    """The watchdog fired: no advertisement for ``silence_restart_s`` while scanning."""


class _AdapterLost(Exception):
    """BlueZ reports the adapter gone, powered off, or no longer discovering."""


# --- the scanner --------------------------------------------------------------------------------------------


class BleScanner:
    """Scans in a daemon thread and calls ``on_adv(advert)`` for every advertisement (see the module doc).

    ``on_adv`` runs on the scanner's thread. ``now`` is the data clock each advert is stamped with when it is
    received (:func:`edge.clock.now`). ``start()`` returns at once; ``stop()`` joins the thread within a few
    seconds. ``health()`` may be called from any thread.
    """

    def __init__(
        self,
        config: BleScanConfig,
        on_adv: OnAdvertisement,
        *,
        name: str = "ble",
        now: Callable[[], float] = clock.now,
    ) -> None:
        self.config = config
        self.name = name
        self._on_adv = on_adv
        self._now = now
        self._warn = RateLimited(log)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Written by the scanner thread only; health() reads a snapshot (ints and floats: atomic under the GIL).
        self._adapter_up = False
        self._scanning = False
        self._restarts = 0
        self._errors = 0
        self._adverts = 0
        self._bad_lines = 0
        self._silence_restarts = 0
        self._callback_errors = 0
        self._last_adv = time.monotonic()

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scanner thread (once)."""
        if self._thread is not None:
            raise RuntimeError("BleScanner already started")
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-scan", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scanning and join the thread (the loops look at the stop flag every 0.1 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: scanner thread did not stop within %.1f s", self.name, timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def adapter_up(self) -> bool:
        """Whether the adapter is there now (read on every turn of the bus source's loop: no dict built)."""
        return self._adapter_up

    def health(self) -> dict[str, float]:
        h = {
            "ble_adapter_up": 1.0 if self._adapter_up else 0.0,
            "ble_scanning": 1.0 if self._scanning else 0.0,
            "ble_restarts": float(self._restarts),
            "ble_errors": float(self._errors),
            "ble_adverts": float(self._adverts),
            "ble_silence_restarts": float(self._silence_restarts),
            "ble_callback_errors": float(self._callback_errors),
        }
        if self.config.backend == "sim":
            h["ble_bad_lines"] = float(self._bad_lines)
        return h

    # --- the retry loop (both backends) ------------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop() if self.config.backend == "bluez" else None
        backoff = self.config.backoff_min_s
        first = True
        try:
            while not self._stop.is_set():
                if not first:
                    self._restarts += 1
                first = False
                adverts_before = self._adverts
                try:
                    if loop is not None:
                        loop.run_until_complete(self._bluez_session())
                    else:
                        self._sim_session()
                    return  # a session returns only when stopped
                except _Silence:
                    self._silence_restarts += 1
                    self._warn(
                        logging.WARNING, "silence", "%s: no advertisement for %g s; restarting the scan",
                        self.name, self.config.silence_restart_s,
                    )  # fmt: skip
                    continue  # the silence itself spaced the restarts
                except Exception as exc:
                    self._errors += 1
                    self._adapter_up = False
                    self._warn(
                        logging.WARNING, f"fail:{type(exc).__name__}",
                        "%s: %s scan failed (%s: %s); retrying in %.2g s",
                        self.name, self.config.backend, type(exc).__name__, _scrub(str(exc)), backoff,
                    )  # fmt: skip
                finally:
                    self._scanning = False
                if self._adverts > adverts_before:
                    backoff = self.config.backoff_min_s  # it worked for a while: start the backoff over
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.config.backoff_max_s)
        finally:
            self._scanning = False
            self._adapter_up = False
            if loop is not None:
                _close_loop(loop)

    def _deliver(self, advert: Advert) -> None:
        self._adverts += 1
        self._last_adv = time.monotonic()
        try:
            self._on_adv(advert)
        except Exception as exc:
            self._callback_errors += 1
            # Type only: the consumer's message might hold an address.
            self._warn(
                logging.ERROR, "callback", "%s: on_adv raised %s; advertisement dropped", self.name,
                type(exc).__name__,
            )  # fmt: skip

    def _check_silence(self) -> None:
        if time.monotonic() - self._last_adv >= self.config.silence_restart_s:
            raise _Silence

    # --- sim backend -------------------------------------------------------------------------------------------
    def _sim_session(self) -> None:
        """Read the simulator's socket until stopped; raises when it is refused or closed (= adapter lost)."""
        path = self.config.sim_socket
        assert path is not None  # the config guarantees it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect(str(path))
            sock.settimeout(_POLL_S)
            self._adapter_up = self._scanning = True
            self._last_adv = time.monotonic()
            log.info("%s: connected to the simulator at %s", self.name, path)
            buf = bytearray()
            # One receive buffer for the session: recv(65536) would allocate 64 KiB per call (trimmed to what
            # came), churn that leaves freed pages resident in a thread's malloc arena.
            chunk = bytearray(_RECV_CHUNK)
            view = memoryview(chunk)
            skipping = False  # inside an overlong line: drop up to its newline
            while not self._stop.is_set():
                try:
                    n = sock.recv_into(chunk)
                except TimeoutError:
                    self._check_silence()
                    continue
                if not n:
                    raise ConnectionError("the simulator closed the connection")
                buf += view[:n]
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > _MAX_LINE:
                            if not skipping:
                                self._bad_line("line too long")
                            skipping = True
                            buf.clear()
                        break
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    if skipping:
                        skipping = False
                        continue
                    if line.strip():
                        self._sim_line(line)
                self._check_silence()
        finally:
            sock.close()

    def _sim_line(self, line: bytes) -> None:
        try:
            advert = decode_sim_line(line, self._now())
        except ValueError as exc:
            self._bad_line(str(exc))
            return
        self._deliver(advert)

    def _bad_line(self, why: str) -> None:
        self._bad_lines += 1
        self._warn(logging.WARNING, "bad_line", "%s: bad simulator line skipped: %s", self.name, _scrub(why))

    # --- BlueZ backend -----------------------------------------------------------------------------------------
    async def _bluez_session(self) -> None:
        """One scan: start, watch the adapter and the silence, stop. Raises on any failure (retried)."""
        from bleak import BleakScanner  # the BlueZ backend (dbus-fast) loads when the scanner is built

        scanner = BleakScanner(self._on_bluez, **bluez_scanner_kwargs(self.config))
        try:
            await asyncio.wait_for(scanner.start(), _BLUEZ_CALL_TIMEOUT_S)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            # dbus-fast's connect to /run/dbus/system_bus_socket: no D-Bus daemon, or not allowed to talk to it
            raise ConnectionError(f"cannot reach the system D-Bus ({type(exc).__name__})") from exc
        try:
            self._adapter_up = self._scanning = True
            self._last_adv = time.monotonic()
            log.info("%s: %s scanning on %s", self.name, self.config.mode, self.config.adapter)
            not_discovering_since: float | None = None
            next_check = 0.0
            while not self._stop.is_set():
                await asyncio.sleep(_POLL_S)
                self._check_silence()
                now = time.monotonic()
                if now < next_check:
                    continue
                next_check = now + 1.0
                state = await _bluez_adapter_state(self.config.adapter)
                if state is None:
                    continue  # unknown (bleak internals changed): the silence watchdog still guards
                if not state.get("present"):
                    raise _AdapterLost("adapter removed")
                if state.get("Powered") is False:
                    raise _AdapterLost("adapter powered off")
                if self.config.mode == "active" and state.get("Discovering") is False:
                    not_discovering_since = not_discovering_since or now
                    if now - not_discovering_since >= _NOT_DISCOVERING_S:
                        raise _AdapterLost("adapter stopped discovering")
                else:
                    not_discovering_since = None
        finally:
            self._scanning = False
            with contextlib.suppress(Exception):  # the adapter or bus may already be gone: nothing to stop
                await asyncio.wait_for(scanner.stop(), _BLUEZ_STOP_TIMEOUT_S)

    def _on_bluez(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak's detection callback (the scanner thread's loop): stamp, convert, deliver."""
        self._deliver(advert_from_bleak(device, adv, self._now()))


async def _bluez_adapter_state(adapter: str) -> dict[str, Any] | None:
    """The adapter's ``Powered``/``Discovering`` as bleak's BlueZ manager last saw them (its D-Bus signal cache),
    plus ``present``; None when that cache cannot be read.

    bleak has no public API for this (3.1's ``BleakAdapter`` only lists connected devices), so this reads the
    manager's cache defensively. ``get_global_bluez_manager`` reconnects a lost system bus, and raises if it
    cannot: that is a failure of the scan too.
    """
    from bleak.backends.bluezdbus.manager import get_global_bluez_manager

    manager = await get_global_bluez_manager()
    props = getattr(manager, "_properties", None)
    if not isinstance(props, dict):
        return None
    adapter_props = props.get(f"/org/bluez/{adapter}", {}).get("org.bluez.Adapter1")
    if adapter_props is None:
        return {"present": False}
    return {
        "present": True,
        "Powered": adapter_props.get("Powered"),
        "Discovering": adapter_props.get("Discovering"),
    }


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what bleak left running on the thread's loop (its bus watcher) and close it."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except Exception as exc:  # closing must not raise from the thread
        log.debug("closing the scanner loop: %s", _scrub(str(exc)))
    finally:
        loop.close()
