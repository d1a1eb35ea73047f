"""Keyed hashing of Bluetooth ids, the core's own advert type and iBeacon parsing on it (sans-I/O, explicit times).

The iBeacon vectors are written byte by byte from Apple's format, not with the module's own ``struct``: a shared
mistake in both would otherwise pass.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import pickle
import subprocess
import sys
import uuid
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from edge.sources.bus import ble_ids
from edge.sources.bus.ble_ids import (
    APPLE_COMPANY_ID,
    Advert,
    IBeacon,
    KeyedHasher,
    is_city_rider,
    normalise_address,
    parse_ibeacon,
    rider_token,
    service_day,
)

JST = ZoneInfo("Asia/Tokyo")
CITY_UUID = uuid.UUID("f7826da6-4fa2-4e98-8024-bc5b71e0893e")
ADDR = "4C:1A:2B:3C:4D:5E"

# Apple iBeacon, manufacturer data after the company id 0x004C: type 0x02, length 0x15, proximity UUID (16),
# major 0x0001, minor 0x0002, measured power -59 (0xC5 as a signed byte).
IBEACON_PAYLOAD = bytes.fromhex("0215" + "f7826da64fa24e988024bc5b71e0893e" + "0001" + "0002" + "c5")


def jst(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=JST).timestamp()


def adv_with(mdata: dict[int, bytes]) -> Advert:
    return Advert(address=ADDR, rssi=-60, rx_s=jst(2026, 4, 1, 8), manufacturer_data=mdata)


# --- iBeacon ---------------------------------------------------------------------------------------------------


def test_ibeacon_vector() -> None:
    assert len(IBEACON_PAYLOAD) == 23
    beacon = parse_ibeacon(adv_with({APPLE_COMPANY_ID: IBEACON_PAYLOAD}))
    assert beacon == IBeacon(uuid=CITY_UUID, major=1, minor=2, tx_power=-59)
    assert rider_token(beacon) == 0x0001_0002
    assert is_city_rider(beacon, CITY_UUID)
    assert is_city_rider(beacon, str(CITY_UUID).upper())
    assert not is_city_rider(beacon, uuid.UUID(int=1))
    assert not is_city_rider(None, CITY_UUID)


def test_ibeacon_full_range_token_and_power() -> None:
    payload = bytes.fromhex("0215" + CITY_UUID.hex + "fffe" + "8001" + "7f")
    beacon = parse_ibeacon(adv_with({APPLE_COMPANY_ID: payload}))
    assert beacon is not None
    assert (beacon.major, beacon.minor, beacon.tx_power) == (0xFFFE, 0x8001, 127)
    assert rider_token(beacon) == 0xFFFE_8001


def test_ibeacon_among_other_manufacturers() -> None:
    beacon = parse_ibeacon(adv_with({0x0059: b"\x01\x02", APPLE_COMPANY_ID: IBEACON_PAYLOAD}))
    assert beacon is not None and beacon.uuid == CITY_UUID


@pytest.mark.parametrize(
    "mdata",
    [
        {},  # no manufacturer data
        {0x0059: IBEACON_PAYLOAD},  # wrong company id (Nordic)
        {APPLE_COMPANY_ID: IBEACON_PAYLOAD[:-1]},  # short payload
        {APPLE_COMPANY_ID: IBEACON_PAYLOAD + b"\x00"},  # long payload
        {APPLE_COMPANY_ID: b""},
        {APPLE_COMPANY_ID: b"\x10" + IBEACON_PAYLOAD[1:]},  # type 0x10: Apple Nearby, not an iBeacon
        {APPLE_COMPANY_ID: b"\x02\x14" + IBEACON_PAYLOAD[2:]},  # wrong length byte
        {APPLE_COMPANY_ID: bytes.fromhex("1005031c")},  # a typical iPhone continuity advert
    ],
    ids=["none", "company", "short", "long", "empty", "type", "length", "continuity"],
)
def test_not_an_ibeacon(mdata: dict[int, bytes]) -> None:
    assert parse_ibeacon(adv_with(mdata)) is None


def test_beacon_repr_hides_the_token() -> None:
    beacon = IBeacon(uuid=CITY_UUID, major=0x1234, minor=0x5678, tx_power=-59)
    text = repr(beacon)
    assert str(CITY_UUID) in text
    assert "4660" not in text and "22136" not in text and "major" not in text and "minor" not in text


# --- the advert type -------------------------------------------------------------------------------------------


def test_advert_is_immutable_and_holds_only_what_the_core_reads() -> None:
    mdata = {APPLE_COMPANY_ID: IBEACON_PAYLOAD}
    uuids = ["0000feaa-0000-1000-8000-00805f9b34fb"]
    adv = Advert(
        address=ADDR,
        rssi=-71,
        rx_s=1.5,
        manufacturer_data=mdata,
        service_uuids=uuids,  # type: ignore[arg-type]
    )
    assert [f.name for f in dataclasses.fields(Advert)] == [
        "address", "rssi", "rx_s", "manufacturer_data", "service_uuids"
    ]  # fmt: skip
    assert adv.manufacturer_data == {APPLE_COMPANY_ID: IBEACON_PAYLOAD}
    assert adv.service_uuids == ("0000feaa-0000-1000-8000-00805f9b34fb",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        adv.rssi = -20  # type: ignore[misc]
    with pytest.raises(TypeError):
        adv.manufacturer_data[0x0006] = b""  # type: ignore[index]
    mdata[0x0006] = b"\x01"  # the builder's dict is copied: changing it later changes nothing
    uuids.append("x")
    assert adv.manufacturer_data == {APPLE_COMPANY_ID: IBEACON_PAYLOAD} and len(adv.service_uuids) == 1
    with pytest.raises(TypeError):
        Advert(ADDR, -71, 1.5)  # type: ignore[misc]  # keywords only: an rssi is never taken for a time


def test_advert_defaults_and_repr_without_the_address() -> None:
    adv = Advert(address=ADDR, rssi=-90, rx_s=0.0)
    assert adv.manufacturer_data == {} and adv.service_uuids == ()
    assert parse_ibeacon(adv) is None
    text = repr(adv)
    assert "-90" in text and ADDR not in text.upper() and "4C1A" not in text.upper()


def test_the_core_does_not_load_bleak() -> None:
    """The cores take their own types: bleak is the scanner adapter's business (and memory on the Pi)."""
    code = (
        "import sys\n"
        "import edge.sources.bus.ble_ids, edge.sources.bus.ridership, edge.sources.bus.stops\n"
        "import edge.sources.bus.readings, edge.sources.bus.gtfs, edge.sources.common.nmea\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'bleak'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- keyed hashing ---------------------------------------------------------------------------------------------


def test_hash_shape_and_no_address_inside() -> None:
    h = KeyedHasher(jst(2026, 4, 1, 8)).hash(ADDR)
    assert len(h) == 16 and int(h, 16) >= 0 and h == h.lower()
    raw = normalise_address(ADDR).hex()
    assert raw not in h
    assert not any(raw[i : i + 4] in h for i in range(0, len(raw) - 3, 2))  # not even 2 address bytes


def test_hash_is_hmac_sha256_of_the_address_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    salt = bytes(range(32))
    monkeypatch.setattr(ble_ids.secrets, "token_bytes", lambda n: salt[:n])
    hasher = KeyedHasher(jst(2026, 4, 1, 8))
    expected = hmac.new(salt, bytes.fromhex("4c1a2b3c4d5e"), hashlib.sha256).hexdigest()[:16]
    assert hasher.hash(ADDR) == expected


def test_same_address_same_day_same_hash() -> None:
    hasher = KeyedHasher(jst(2026, 4, 1, 6))
    first = hasher.hash(ADDR)
    for t in (jst(2026, 4, 1, 12), jst(2026, 4, 1, 23, 59), jst(2026, 4, 2, 2, 59, 59)):
        assert not hasher.rotate_if_due(t)
        assert hasher.hash(ADDR) == first
    assert hasher.hash("4C:1A:2B:3C:4D:5F") != first


def test_new_salt_after_0300_boundary() -> None:
    hasher = KeyedHasher(jst(2026, 4, 1, 22))
    before = hasher.hash(ADDR)
    assert hasher.day_key() == date(2026, 4, 1)
    assert not hasher.rotate_if_due(jst(2026, 4, 2, 2, 59, 59))
    assert hasher.rotate_if_due(jst(2026, 4, 2, 3, 0, 0))
    assert hasher.day_key() == date(2026, 4, 2)
    after = hasher.hash(ADDR)
    assert after != before
    assert not hasher.rotate_if_due(jst(2026, 4, 2, 3, 0, 1))
    assert hasher.hash(ADDR) == after


def test_clock_stepped_back_rotates_rather_than_reusing() -> None:
    hasher = KeyedHasher(jst(2026, 4, 2, 3, 0, 1))
    h = hasher.hash(ADDR)
    assert hasher.rotate_if_due(jst(2026, 4, 2, 2, 59, 59))
    assert hasher.day_key() == date(2026, 4, 1)
    assert hasher.hash(ADDR) != h


def test_configurable_boundary_and_zone() -> None:
    hasher = KeyedHasher(jst(2026, 4, 1, 12), tz="UTC", day_start=time(0, 0))
    assert hasher.day_key() == date(2026, 4, 1)
    assert not hasher.rotate_if_due(jst(2026, 4, 2, 8, 59, 59))  # 23:59:59 UTC
    assert hasher.rotate_if_due(jst(2026, 4, 2, 9))  # 00:00 UTC
    assert hasher.day_key() == date(2026, 4, 2)


def test_service_day() -> None:
    assert service_day(jst(2026, 4, 1, 2, 59)) == date(2026, 3, 31)
    assert service_day(jst(2026, 4, 1, 3, 0)) == date(2026, 4, 1)
    assert service_day(jst(2026, 4, 1, 0, 30), day_start=time(0, 0)) == date(2026, 4, 1)


def test_two_hashers_differ() -> None:
    now = jst(2026, 4, 1, 8)
    assert KeyedHasher(now).hash(ADDR) != KeyedHasher(now).hash(ADDR)


@pytest.mark.parametrize(
    "spelling",
    ["4c:1a:2b:3c:4d:5e", "4C-1A-2B-3C-4D-5E", "4c1a2b3c4d5e", " 4C:1a:2B:3c:4D:5e ", "4c1a.2b3c.4d5e"],
)
def test_address_spellings_hash_alike(spelling: str) -> None:
    hasher = KeyedHasher(jst(2026, 4, 1, 8))
    assert hasher.hash(spelling) == hasher.hash(ADDR)


def test_corebluetooth_uuid_address() -> None:
    hasher = KeyedHasher(jst(2026, 4, 1, 8))
    u = "A1B2C3D4-E5F6-4711-8899-AABBCCDDEEFF"
    assert hasher.hash(u) == hasher.hash(u.lower().replace("-", ""))


@pytest.mark.parametrize("bad", ["", "not-an-address", "4C:1A:2B:3C:4D:5", "zz:1a:2b:3c:4d:5e"])
def test_bad_address_error_does_not_echo_it(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        KeyedHasher(jst(2026, 4, 1, 8)).hash(bad)
    assert not bad or bad not in str(err.value)


def test_token_hash() -> None:
    hasher = KeyedHasher(jst(2026, 4, 1, 8))
    beacon = parse_ibeacon(adv_with({APPLE_COMPANY_ID: IBEACON_PAYLOAD}))
    assert beacon is not None
    h = hasher.hash_token(rider_token(beacon))
    assert len(h) == 16 and h == hasher.hash_token(0x0001_0002)
    assert h != hasher.hash_token(0x0001_0003)
    assert h != hasher.hash("00010002")  # tokens and addresses are separate domains
    with pytest.raises(ValueError):
        hasher.hash_token(1 << 32)


# --- the salt stays in memory ----------------------------------------------------------------------------------


def salt_hexes(monkeypatch: pytest.MonkeyPatch) -> tuple[KeyedHasher, bytes]:
    salt = bytes.fromhex("5a" * 16 + "a5" * 16)
    monkeypatch.setattr(ble_ids.secrets, "token_bytes", lambda n: salt[:n])
    return KeyedHasher(jst(2026, 4, 1, 8)), salt


def test_repr_and_str_do_not_reveal_the_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher, salt = salt_hexes(monkeypatch)
    for text in (repr(hasher), str(hasher), f"{hasher}", f"{hasher!r}"):
        assert salt.hex() not in text.lower() and "5a5a" not in text.lower() and str(salt) not in text
        assert "redacted" in text and "2026-04-01" in text


def test_no_attribute_holds_the_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher, salt = salt_hexes(monkeypatch)
    assert not hasattr(hasher, "__dict__")
    for name in dir(hasher):
        value = getattr(hasher, name, None)
        assert not isinstance(value, (bytes, bytearray)) or salt not in value
        assert "salt" not in name or name.startswith("__")


def test_pickle_and_copy_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher, _ = salt_hexes(monkeypatch)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError):
            pickle.dumps(hasher, protocol=protocol)
    with pytest.raises(TypeError):
        copy.copy(hasher)
    with pytest.raises(TypeError):
        copy.deepcopy(hasher)
