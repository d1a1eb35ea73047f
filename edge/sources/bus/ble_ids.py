"""Bluetooth identifiers for bus ridership, private by design (sans-I/O): keyed hashes and the city app's iBeacon.

Raw Bluetooth addresses and app tokens never leave gateway memory. What must persist within a service day (to
link a phone seen at boarding with the same phone at alighting) is a keyed hash: HMAC-SHA256 under a random
32-byte salt, truncated to 64 bits. An unsalted hash of a 48-bit address is reversible by brute force; a salt held
only in RAM, rotated daily at 03:00 Japan time and never written or sent, makes the hashes unlinkable across days
and irreversible once the salt is gone (``docs/bus.md``, ``shared/reference/ble-ridership-privacy.md``).

The core's input is :class:`Advert`: one received advertisement, with only what the ridership core reads (address,
RSSI, manufacturer data, service UUIDs) and when it was received. The scanner adapter
(:mod:`edge.sources.bus.ble_scan`) builds it, from bleak's objects on BlueZ or from the simulator's JSON lines;
nothing in the core knows bleak. Local names (often a person's: "Taro's iPhone"), service data and TX power never
reach the core.

Consenting riders' city app advertises an Apple iBeacon with the city's proximity UUID and a rotating token in
major/minor: :func:`parse_ibeacon` reads it from an :class:`Advert`'s manufacturer data.

Nothing here reads a clock, a radio or a file: times are passed in as epoch seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from types import MappingProxyType
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

__all__ = [
    "APPLE_COMPANY_ID",
    "Advert",
    "IBeacon",
    "KeyedHasher",
    "is_city_rider",
    "normalise_address",
    "parse_ibeacon",
    "rider_token",
    "service_day",
]

APPLE_COMPANY_ID = 0x004C
"""Bluetooth SIG company identifier of Apple: the key of an iBeacon in ``manufacturer_data``."""

_IBEACON_TYPE = 0x02
_IBEACON_LEN = 0x15  # 21 bytes follow: UUID (16), major (2), minor (2), measured power (1)
_IBEACON = struct.Struct(">BB16sHHb")  # 23 bytes: the manufacturer data after the company id

SALT_BYTES = 32
HASH_BYTES = 8  # 64 bits: collisions negligible for a day's phones on one bus, 16 hex chars on the wire

DEFAULT_TZ = "Asia/Tokyo"
DEFAULT_DAY_START = time(3, 0)  # after the last bus and before the first: no ride straddles the rotation

_SEPARATORS = re.compile(r"[\s:\-._]")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


def service_day(now_s: float, tz: ZoneInfo | str = DEFAULT_TZ, day_start: time = DEFAULT_DAY_START) -> date:
    """The service day that epoch second ``now_s`` belongs to: the local date, counting hours before
    ``day_start`` as the previous day (a 01:00 late bus still belongs to the evening's day)."""
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    local = datetime.fromtimestamp(now_s, zone)
    shift = timedelta(hours=day_start.hour, minutes=day_start.minute, seconds=day_start.second)
    return (local.replace(tzinfo=None) - shift).date()


def normalise_address(address: str) -> bytes:
    """The bytes of a Bluetooth address whatever its spelling, so ``aa:bb:..`` and ``AA-BB-..`` hash alike.

    Accepts a MAC (BlueZ, Windows) or a CoreBluetooth UUID (macOS): separators ``: - . _`` and whitespace are
    dropped and the hex digits decoded. The error message never contains the address: exceptions get logged.
    """
    text = _SEPARATORS.sub("", address).lower()
    if not _HEX.fullmatch(text):
        raise ValueError("not a Bluetooth address (an even number of hex digits, separators : - . _)")
    return bytes.fromhex(text)


class KeyedHasher:
    """Keyed 64-bit hashes of Bluetooth identifiers under a memory-only salt rotated each service day.

    The salt comes from :mod:`secrets` at construction and at each rotation; only an HMAC object keyed with it is
    kept (no attribute holds the salt's bytes), and the old one is dropped on rotation, so hashes from different
    days cannot be linked, even by this process. There is no way to read the salt: ``repr``/``str`` show only the
    day, and pickling or copying raises, so it cannot be logged or persisted by accident.
    """

    __slots__ = ("_day", "_day_start", "_mac", "_tz")

    def __init__(self, now_s: float, *, tz: str = DEFAULT_TZ, day_start: time = DEFAULT_DAY_START) -> None:
        """``now_s`` (epoch seconds) fixes the service day of the first salt; ``tz`` and ``day_start`` set
        when a day ends (default 03:00 Asia/Tokyo)."""
        self._tz = ZoneInfo(tz)
        self._day_start = day_start
        self._day = service_day(now_s, self._tz, day_start)
        self._mac = self._new_mac()

    @staticmethod
    def _new_mac() -> hmac.HMAC:
        """A fresh salt, kept only as the keyed HMAC state: the bytes go out of scope here."""
        return hmac.new(secrets.token_bytes(SALT_BYTES), digestmod=hashlib.sha256)

    def day_key(self) -> date:
        """The service day of the current salt: the day every hash returned now belongs to."""
        return self._day

    def rotate_if_due(self, now_s: float) -> bool:
        """Replace the salt when ``now_s`` falls in another service day; True when it did.

        Any change of day rotates, backwards too (a clock stepped back by NTP): a salt is never reused for a
        second day, at worst a day is split in two.
        """
        day = service_day(now_s, self._tz, self._day_start)
        if day == self._day:
            return False
        self._mac = self._new_mac()
        self._day = day
        return True

    def _digest(self, data: bytes) -> str:
        mac = self._mac.copy()
        mac.update(data)
        return mac.digest()[:HASH_BYTES].hex()

    def hash(self, address: str) -> str:
        """HMAC-SHA256(salt, address bytes) truncated to 64 bits, as 16 hex chars: the address's id for today."""
        return self._digest(normalise_address(address))

    def hash_token(self, token: int) -> str:
        """The same keyed hash of a city-app rider token (:func:`rider_token`), so the token never leaves memory
        either; a prefix keeps tokens and addresses in separate domains."""
        if not 0 <= token <= 0xFFFF_FFFF:
            raise ValueError("a rider token is an unsigned 32-bit value")
        return self._digest(b"ibeacon-token:" + token.to_bytes(4, "big"))

    def __repr__(self) -> str:
        return f"KeyedHasher(day={self._day.isoformat()}, tz={self._tz.key}, salt=<redacted>)"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        """Refuse pickling, ``copy`` and ``deepcopy``: a persisted salt would make every hash reversible."""
        raise TypeError("KeyedHasher holds a memory-only salt and cannot be pickled or copied")

    def __reduce__(self) -> NoReturn:
        raise TypeError("KeyedHasher holds a memory-only salt and cannot be pickled or copied")

    def __getstate__(self) -> NoReturn:
        raise TypeError("KeyedHasher holds a memory-only salt and cannot be pickled or copied")


@dataclass(frozen=True, slots=True, kw_only=True)
class Advert:
    """One received Bluetooth LE advertisement, as much of it as the ridership core reads. Immutable.

    * ``address``: the advertiser's address as the radio reports it (BlueZ: ``AA:BB:CC:DD:EE:FF``); the core hashes
      it at once and keeps only the hash. Left out of ``repr``, so an advert that gets logged does not leak it.
    * ``rssi``: received signal strength, dBm.
    * ``rx_s``: when it was received, the gateway's data clock (epoch seconds, :func:`edge.clock.now`).
    * ``manufacturer_data``: company id → payload (the bytes after the company id), read-only.
    * ``service_uuids``: advertised service UUIDs, 128-bit, lower case (as BlueZ reports them).
    """

    address: str = field(repr=False)
    rssi: int
    rx_s: float
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)
    service_uuids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A private, read-only copy: whoever built the advert cannot change what the core sees.
        object.__setattr__(self, "manufacturer_data", MappingProxyType(dict(self.manufacturer_data)))
        if not isinstance(self.service_uuids, tuple):
            object.__setattr__(self, "service_uuids", tuple(self.service_uuids))


@dataclass(frozen=True, slots=True)
class IBeacon:
    """An Apple iBeacon advertisement. ``major``/``minor`` carry the city app's rotating token, so they are left
    out of ``repr``: a beacon that gets logged does not leak the token."""

    uuid: uuid.UUID
    major: int = field(repr=False)
    minor: int = field(repr=False)
    tx_power: int
    """Measured power: the calibrated RSSI at 1 m, in dBm (signed)."""


def parse_ibeacon(adv: Advert) -> IBeacon | None:
    """The iBeacon in ``adv.manufacturer_data`` (Apple 0x004C, type 0x02, length 0x15), or None for any other
    advertisement or a malformed one: the payload after the company id is exactly 23 bytes."""
    payload = adv.manufacturer_data.get(APPLE_COMPANY_ID)
    if payload is None or len(payload) != _IBEACON.size:
        return None
    kind, length, raw_uuid, major, minor, power = _IBEACON.unpack(payload)
    if kind != _IBEACON_TYPE or length != _IBEACON_LEN:
        return None
    return IBeacon(uuid=uuid.UUID(bytes=raw_uuid), major=major, minor=minor, tx_power=power)


def is_city_rider(beacon: IBeacon | None, city_uuid: uuid.UUID | str) -> bool:
    """Whether the beacon is the city app's (its proximity UUID is the city's): a consenting rider."""
    if beacon is None:
        return False
    wanted = city_uuid if isinstance(city_uuid, uuid.UUID) else uuid.UUID(city_uuid)
    return beacon.uuid == wanted


def rider_token(beacon: IBeacon) -> int:
    """The app's rotating token: ``major << 16 | minor`` (32 bits). Hash it with :meth:`KeyedHasher.hash_token`
    before it goes anywhere."""
    return beacon.major << 16 | beacon.minor
