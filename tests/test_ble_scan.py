"""The BLE scanner with real parts: a real Unix-socket simulator server, bleak's real objects (taken apart into the
core's :class:`Advert` in one place), and bleak's real BlueZ backend on a machine with no Bluetooth adapter and no
system D-Bus (it must fail, count and retry).

"Adapter loss" is the simulator's socket closing; "adapter back" is the server listening again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from pydantic import ValidationError

from edge.sources.bus.ble_ids import APPLE_COMPANY_ID, Advert, parse_ibeacon
from edge.sources.bus.ble_scan import (
    PASSIVE_OR_PATTERNS,
    BleScanConfig,
    BleScanner,
    advert_from_bleak,
    bluez_scanner_kwargs,
    decode_sim_line,
)

ADDR = "C0:FF:EE:12:34:56"
IBEACON = bytes.fromhex("0215" + "0f1e2d3c4b5a69788796a5b4c3d2e1f0" + "1234" + "abcd" + "c5")
RX_S = 1_775_000_000.25  # the data clock the scanners under test stamp adverts with


def bluez_objects(
    address: str,
    rssi: int,
    *,
    manufacturer_data: Mapping[int, bytes] | None = None,
    service_uuids: Iterable[str] = (),
    local_name: str | None = None,
    tx_power: int | None = None,
    service_data: Mapping[str, bytes] | None = None,
    address_type: str = "random",
) -> tuple[BLEDevice, AdvertisementData]:
    """bleak's own ``(BLEDevice, AdvertisementData)`` as its BlueZ backend hands them to a detection callback:
    the address upper case with colons, ``BLEDevice.details`` ``{"path", "props"}``, ``platform_data``
    ``(path, props)``, ``BLEDevice.name`` None without a local name."""
    digits = "".join(c for c in address if c not in " :-._").upper()
    addr = ":".join(digits[i : i + 2] for i in range(0, 12, 2)) if len(digits) == 12 else address
    mdata = {int(k): bytes(v) for k, v in (manufacturer_data or {}).items()}
    sdata = {str(k): bytes(v) for k, v in (service_data or {}).items()}
    uuids = [str(u).lower() for u in service_uuids]
    path = "/org/bluez/hci0/dev_" + addr.replace(":", "_")
    props: dict[str, Any] = {
        "Address": addr,
        "AddressType": address_type,
        "Alias": local_name if local_name is not None else addr.replace(":", "-"),
        "RSSI": rssi,
        "ManufacturerData": mdata,
        "ServiceData": sdata,
        "UUIDs": uuids,
    }
    if local_name is not None:
        props["Name"] = local_name
    if tx_power is not None:
        props["TxPower"] = tx_power
    device = BLEDevice(addr, local_name, {"path": path, "props": props})
    adv = AdvertisementData(
        local_name=local_name,
        manufacturer_data=mdata,
        service_data=sdata,
        service_uuids=uuids,
        tx_power=tx_power,
        rssi=rssi,
        platform_data=(path, props),
    )
    return device, adv


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class SimServer:
    """The simulator side: a Unix stream server that the scanner connects to; lines go to every client."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._clients: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.accepted = 0

    def listen(self) -> None:
        with self._lock:
            if self.path.exists():
                self.path.unlink()
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lsock.bind(str(self.path))
            lsock.listen(4)
            lsock.settimeout(0.05)
            self._listener = lsock
        self._thread = threading.Thread(target=self._accept, args=(lsock,), daemon=True)
        self._thread.start()

    def _accept(self, lsock: socket.socket) -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            with self._lock:
                self._clients.append(conn)
                self.accepted += 1

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def send(self, data: bytes) -> None:
        with self._lock:
            for c in list(self._clients):
                try:
                    c.sendall(data)
                except OSError:  # the scanner hung up (a restart): forget that connection
                    c.close()
                    self._clients.remove(c)

    def send_adv(self, **fields: Any) -> None:
        self.send(json.dumps(fields).encode() + b"\n")

    def close(self) -> None:
        """Adapter gone: stop listening, drop the clients, remove the socket file (connects are refused)."""
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for c in self._clients:
                c.close()
            self._clients.clear()
            if self.path.exists():
                self.path.unlink()
        if self._thread is not None:
            self._thread.join(2)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # A short path: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="ble", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(sock_dir: Path) -> Iterator[SimServer]:
    s = SimServer(sock_dir / "sim.sock")
    s.listen()
    yield s
    s.close()


class Sink:
    """The ridership side: records what on_adv receives, on which thread."""

    def __init__(self, fail: Callable[[Advert], bool] = lambda adv: False) -> None:
        self.got: list[Advert] = []
        self.threads: set[str] = set()
        self._fail = fail
        self._lock = threading.Lock()

    def __call__(self, adv: Advert) -> None:
        self.threads.add(threading.current_thread().name)
        if self._fail(adv):
            raise RuntimeError(f"consumer bug near {adv.address}")
        with self._lock:
            self.got.append(adv)

    def __len__(self) -> int:
        with self._lock:
            return len(self.got)


def sim_scanner(server: SimServer, on_adv: Any, **cfg: Any) -> BleScanner:
    config = BleScanConfig(backend="sim", sim_socket=server.path, **cfg)
    return BleScanner(config, on_adv, now=lambda: RX_S)


# --- the simulator backend ----------------------------------------------------------------------------------


def test_sim_adverts_arrive_as_adverts_repeats_included(server: SimServer) -> None:
    sink = Sink()
    scanner = sim_scanner(server, sink)
    scanner.start()
    try:
        wait_for(lambda: server.clients == 1, what="connect")
        wait_for(lambda: scanner.health()["ble_adapter_up"] == 1.0, what="adapter up")
        for rssi in (-71, -70, -71):  # the same advert three times: all three reach the consumer
            server.send_adv(
                address="c0:ff:ee:12:34:56", address_type="random", rssi=rssi,
                manufacturer_data={"76": IBEACON.hex()},
                service_uuids=["180f"], service_data={"fe2c": "0102"}, local_name=None, tx_power=None,
            )  # fmt: skip
        server.send_adv(address="11:22:33:44:55:66", rssi=-90)  # minimal: address and rssi only
        wait_for(lambda: len(sink) == 4, what="4 adverts")
    finally:
        scanner.stop()
    assert [adv.rssi for adv in sink.got] == [-71, -70, -71, -90]
    adv = sink.got[0]
    assert type(adv) is Advert  # built straight from the line: no bleak object on the way
    assert adv.address == ADDR  # as BlueZ spells it
    assert adv.rx_s == RX_S  # stamped with the scanner's data clock when received
    assert adv.manufacturer_data == {APPLE_COMPANY_ID: IBEACON}
    assert adv.service_uuids == ("0000180f-0000-1000-8000-00805f9b34fb",)
    # service data, address type, local name and TX power are checked on the line and go no further
    assert not any(hasattr(adv, f) for f in ("service_data", "address_type", "local_name", "tx_power"))
    beacon = parse_ibeacon(adv)
    assert beacon is not None and (beacon.major, beacon.minor) == (0x1234, 0xABCD)
    a2 = sink.got[3]
    assert a2.address == "11:22:33:44:55:66" and a2.manufacturer_data == {} and a2.service_uuids == ()
    assert sink.threads == {"ble-scan"}  # on_adv runs on the scanner's thread
    h = scanner.health()
    assert h["ble_adverts"] == 4 and h["ble_bad_lines"] == 0 and h["ble_errors"] == 0
    assert h["ble_scanning"] == 0 and h["ble_adapter_up"] == 0  # stopped
    assert not scanner.running


def test_sim_malformed_lines_are_counted_and_skipped(
    server: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink()
    scanner = sim_scanner(server, sink)
    bad = [
        b"not json",
        b"[1, 2]",
        b'{"address": "C0:FF:EE:12:34:56"}',  # no rssi
        b'{"address": "C0:FF:EE:12:34:56", "rssi": "strong"}',
        b'{"address": "nope", "rssi": -50}',
        b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "manufacturer_data": {"76": "zz"}}',
        b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "service_uuids": ["not-a-uuid"]}',
        b"\xff\xfe garbage bytes",
        b"x" * 20000,  # overlong
    ]
    with caplog.at_level(logging.WARNING, logger="edge.sources.bus.ble_scan"):
        scanner.start()
        try:
            wait_for(lambda: server.clients == 1, what="connect")
            server.send_adv(address=ADDR, rssi=-60)
            for line in bad:
                server.send(line + b"\n")
            server.send(b"\n")  # an empty line is nothing, not an error
            server.send_adv(address=ADDR, rssi=-61)
            wait_for(lambda: len(sink) == 2, what="the two good adverts")
            wait_for(lambda: scanner.health()["ble_bad_lines"] == len(bad), what="bad lines counted")
        finally:
            scanner.stop()
    assert [a.rssi for a in sink.got] == [-60, -61]
    assert scanner.health()["ble_errors"] == 0  # a bad line is not a scanner failure
    text = caplog.text.upper()
    assert "BAD SIMULATOR LINE" in text
    assert "C0:FF:EE:12:34:56" not in text  # reasons never carry the address


def test_adapter_loss_and_reconnect(server: SimServer) -> None:
    sink = Sink()
    scanner = sim_scanner(server, sink)
    scanner.start()
    try:
        wait_for(lambda: server.clients == 1, what="connect")
        server.send_adv(address=ADDR, rssi=-60)
        wait_for(lambda: len(sink) == 1, what="first advert")
        assert scanner.health()["ble_adapter_up"] == 1.0

        server.close()  # the adapter is gone: the connection closes and reconnects are refused
        wait_for(lambda: scanner.health()["ble_adapter_up"] == 0.0, what="adapter down")
        time.sleep(0.5)  # a few refused reconnects (backoff 0.1, 0.2, ...)
        h = scanner.health()
        assert h["ble_scanning"] == 0.0 and h["ble_errors"] >= 2 and h["ble_restarts"] >= 1
        assert scanner.running

        server.listen()  # the adapter is back
        wait_for(lambda: server.clients == 1, timeout=5, what="reconnect")
        wait_for(lambda: scanner.health()["ble_adapter_up"] == 1.0, what="adapter up again")
        server.send_adv(address=ADDR, rssi=-62)
        wait_for(lambda: len(sink) == 2, what="adverts flow again")
    finally:
        scanner.stop()
    h = scanner.health()
    assert h["ble_adverts"] == 2 and h["ble_restarts"] >= 2
    assert server.accepted == 2


def test_callback_errors_are_counted_and_scanning_goes_on(
    server: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink(fail=lambda adv: adv.rssi == -66)
    scanner = sim_scanner(server, sink)
    with caplog.at_level(logging.ERROR, logger="edge.sources.bus.ble_scan"):
        scanner.start()
        try:
            wait_for(lambda: server.clients == 1, what="connect")
            for rssi in (-60, -66, -66, -61):
                server.send_adv(address=ADDR, rssi=rssi)
            wait_for(lambda: len(sink) == 2, what="the adverts after the failing ones")
        finally:
            scanner.stop()
    h = scanner.health()
    assert h["ble_callback_errors"] == 2 and h["ble_adverts"] == 4 and h["ble_errors"] == 0
    assert "RuntimeError" in caplog.text and ADDR not in caplog.text.upper()  # type only, never the message
    assert server.accepted == 1  # a consumer bug does not restart the scan


def test_silence_watchdog_restarts_the_scan(server: SimServer) -> None:
    sink = Sink()
    scanner = sim_scanner(server, sink, silence_restart_s=0.3)
    scanner.start()
    try:
        wait_for(lambda: scanner.health()["ble_silence_restarts"] >= 2, what="silence restarts")
        wait_for(lambda: server.accepted >= 3, what="reconnects after silence")

        def advert_arrives() -> bool:
            server.send_adv(address=ADDR, rssi=-60)  # resent: a restart may drop the connection it went to
            return len(sink) >= 1

        wait_for(advert_arrives, what="advert after restarts")
    finally:
        scanner.stop()
    h = scanner.health()
    assert h["ble_errors"] == 0  # silence is not an error
    assert h["ble_restarts"] >= h["ble_silence_restarts"] >= 2


def test_stop_is_prompt_while_connected_and_while_backing_off(sock_dir: Path) -> None:
    config = BleScanConfig(
        backend="sim", sim_socket=sock_dir / "absent.sock", backoff_min_s=5, backoff_max_s=5
    )
    scanner = BleScanner(config, Sink(), now=lambda: RX_S)
    scanner.start()
    wait_for(lambda: scanner.health()["ble_errors"] >= 1, what="first refused connect")
    t0 = time.monotonic()
    scanner.stop()
    assert time.monotonic() - t0 < 1.0 and not scanner.running


# --- decode_sim_line ----------------------------------------------------------------------------------------


def test_decode_sim_line_fields() -> None:
    line = json.dumps(
        {"address": "aa-bb-cc-dd-ee-ff", "address_type": "public", "rssi": -40, "local_name": "bus-stop-beacon",
         "tx_power": -8, "manufacturer_data": {"0x004C": "0215", "6": ""}}
    ).encode()  # fmt: skip
    adv = decode_sim_line(line, 12.5)
    assert adv == Advert(
        address="AA:BB:CC:DD:EE:FF", rssi=-40, rx_s=12.5, manufacturer_data={0x004C: b"\x02\x15", 6: b""}
    )  # the local name (often a person's) and the TX power are checked, then dropped


def test_sim_line_and_bluez_objects_give_the_same_advert() -> None:
    """The two backends agree: the simulator's line and bleak's objects for the same advertisement."""
    wearable = "adabfb00-6e7d-4601-bda2-bffaa68956ba"
    line = json.dumps(
        {"address": "c0-ff-ee-12-34-56", "address_type": "random", "rssi": -71,
         "manufacturer_data": {"76": IBEACON.hex()}, "service_uuids": [wearable.upper()],
         "service_data": {"fe2c": "0102"}, "local_name": "Taro's phone"}
    ).encode()  # fmt: skip
    device, bleak_adv = bluez_objects(
        ADDR, -71, manufacturer_data={APPLE_COMPANY_ID: IBEACON}, service_uuids=[wearable],
        service_data={"0000fe2c-0000-1000-8000-00805f9b34fb": b"\x01\x02"}, local_name="Taro's phone",
    )  # fmt: skip
    from_bleak = advert_from_bleak(device, bleak_adv, RX_S)
    assert from_bleak == decode_sim_line(line, RX_S)
    assert from_bleak.address == ADDR and from_bleak.rssi == -71 and from_bleak.rx_s == RX_S
    assert from_bleak.manufacturer_data == {APPLE_COMPANY_ID: IBEACON}
    assert from_bleak.service_uuids == (wearable,)
    assert "Taro" not in repr(from_bleak)


def test_bluez_callback_stamps_converts_and_delivers_on_its_thread() -> None:
    """The BlueZ backend's detection callback: bleak's objects in, one Advert with the data clock to ``on_adv``;
    a consumer's exception is counted, not raised into bleak."""
    sink = Sink(fail=lambda adv: adv.rssi == -66)
    scanner = BleScanner(BleScanConfig(), sink, now=lambda: RX_S)
    scanner._on_bluez(*bluez_objects(ADDR, -60, manufacturer_data={0x0006: b"\x01"}))
    scanner._on_bluez(*bluez_objects(ADDR, -66))
    assert sink.got == [Advert(address=ADDR, rssi=-60, rx_s=RX_S, manufacturer_data={0x0006: b"\x01"})]
    h = scanner.health()
    assert h["ble_adverts"] == 2 and h["ble_callback_errors"] == 1


# --- bleak's objects as BlueZ delivers them (the fixture of the conversion tests) --------------------------


def test_bluez_objects_are_bleaks_own() -> None:
    payload = bytes.fromhex("0215" + "f7826da64fa24e988024bc5b71e0893e" + "0001" + "0002" + "c5")
    dev, adv = bluez_objects(
        "4c-1a-2b-3c-4d-5e",
        -71,
        manufacturer_data={APPLE_COMPANY_ID: payload},
        service_uuids=["0000FEAA-0000-1000-8000-00805F9B34FB"],
        local_name="bus-rider",
        tx_power=4,
    )
    assert type(dev) is BLEDevice and type(adv) is AdvertisementData
    assert dev.address == "4C:1A:2B:3C:4D:5E" and dev.name == "bus-rider"
    assert dev.details["path"] == "/org/bluez/hci0/dev_4C_1A_2B_3C_4D_5E"
    assert adv.rssi == -71 and adv.tx_power == 4 and adv.local_name == "bus-rider"
    assert adv.manufacturer_data == {APPLE_COMPANY_ID: payload}
    assert adv.service_uuids == ["0000feaa-0000-1000-8000-00805f9b34fb"]
    assert adv.service_data == {}
    assert adv.platform_data[0] == dev.details["path"]
    assert adv.platform_data[1] is dev.details["props"]


def test_bluez_objects_defaults_as_bluez() -> None:
    dev, adv = bluez_objects("4C:1A:2B:3C:4D:5E", -90)
    assert dev.name is None and adv.local_name is None and adv.tx_power is None
    assert adv.manufacturer_data == {} and adv.service_uuids == [] and adv.service_data == {}
    assert parse_ibeacon(advert_from_bleak(dev, adv, 0.0)) is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{", "not JSON"),
        (b'"x"', "not a JSON object"),
        (b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "colour": 1}', "unknown field(s): colour"),
        (b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "C0:FF:EE:12:34:56": 1}', "unknown field(s): ?"),
        (b'{"address": "C0:FF:EE:12:34:5", "rssi": -50}', "address"),
        (b'{"address": "C0:FF:EE:12:34:56", "rssi": true}', "rssi"),
        (b'{"address": "C0:FF:EE:12:34:56", "rssi": -500}', "rssi"),
        (b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "address_type": "static"}', "address_type"),
        (
            b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "manufacturer_data": {"70000": "00"}}',
            "company id",
        ),
        (
            b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "manufacturer_data": {"apple": "00"}}',
            "company id",
        ),
        (b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "service_data": {"180f": 5}}', "hex"),
        (b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "service_uuids": "180f"}', "list"),
        (b'{"address": "C0:FF:EE:12:34:56", "rssi": -50, "local_name": 7}', "local_name"),
    ],
)
def test_decode_sim_line_rejects_without_the_address(line: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_sim_line(line, RX_S)
    msg = str(info.value)
    assert reason in msg
    assert "C0:FF:EE" not in msg.upper() and "12:34" not in msg


# --- config -------------------------------------------------------------------------------------------------


def _error_fields(exc: ValidationError) -> list[tuple[Any, ...]]:
    return [e["loc"] for e in exc.errors()]


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    assert BleScanConfig().backend == "bluez"
    with pytest.raises(ValidationError) as info:
        BleScanConfig(backend="sim")
    assert _error_fields(info.value) == [("sim_socket",)]
    assert "required when backend is 'sim'" in str(info.value)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"backend": "hci"}, "backend"),
        ({"mode": "aggressive"}, "mode"),
        ({"adapter": "usb0"}, "adapter"),
        ({"silence_restart_s": 0}, "silence_restart_s"),
        ({"backoff_min_s": 1, "backoff_max_s": 0.5}, "backoff_max_s"),
        ({"sim_sock": str(tmp_path)}, "sim_sock"),  # a typo is an error, not ignored
    ]
    for kwargs, field in cases:
        with pytest.raises(ValidationError) as info:
            BleScanConfig(**kwargs)
        assert _error_fields(info.value) == [(field,)], kwargs
    assert BleScanConfig(backend="sim", sim_socket=tmp_path / "s").sim_socket == tmp_path / "s"


# --- the BlueZ backend --------------------------------------------------------------------------------------


def test_bluez_kwargs_active_reports_repeats() -> None:
    assert bluez_scanner_kwargs(BleScanConfig(adapter="hci1")) == {
        "scanning_mode": "active",
        "bluez": {"adapter": "hci1", "filters": {"DuplicateData": True}},
    }


def test_bluez_kwargs_passive_uses_or_patterns() -> None:
    kw = bluez_scanner_kwargs(BleScanConfig(mode="passive"))
    assert kw == {
        "scanning_mode": "passive",
        "bluez": {"adapter": "hci0", "or_patterns": list(PASSIVE_OR_PATTERNS)},
    }
    patterns = [
        (p.start_position, int(p.ad_data_type), p.content_of_pattern) for p in kw["bluez"]["or_patterns"]
    ]
    assert patterns == [(0, 0x01, b"\x02"), (0, 0x01, b"\x06"), (0, 0x01, b"\x1a"), (0, 0xFF, b"\x4c\x00")]
    assert PASSIVE_OR_PATTERNS[0].ad_data_type is AdvertisementDataType.FLAGS


@pytest.mark.skipif(sys.platform != "linux", reason="bleak's BlueZ backend is Linux-only")
@pytest.mark.parametrize("mode", ["active", "passive"])
def test_bluez_kwargs_are_accepted_by_bleak(mode: str) -> None:
    """bleak's real BleakScanner takes the kwargs (it checks e.g. passive without or_patterns at construction)."""
    from bleak import BleakScanner

    scanner = BleakScanner(lambda d, a: None, **bluez_scanner_kwargs(BleScanConfig(mode=mode)))  # type: ignore[arg-type]
    backend: Any = scanner._backend
    assert backend._adapter == "hci0"
    if mode == "active":
        assert backend._filters["DuplicateData"].value is True
        assert backend._filters["Transport"].value == "le"
    else:
        assert backend._or_patterns == list(PASSIVE_OR_PATTERNS)


def _bluez_available() -> bool:
    return os.path.exists("/run/dbus/system_bus_socket") or os.path.exists("/var/run/dbus/system_bus_socket")


@pytest.mark.skipif(sys.platform != "linux", reason="bleak's BlueZ backend is Linux-only")
@pytest.mark.skipif(_bluez_available(), reason="needs a machine without a system D-Bus (no Bluetooth at all)")
def test_bluez_without_adapter_fails_counts_and_retries_without_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    scanner = BleScanner(BleScanConfig(backend="bluez"), sink)
    with caplog.at_level(logging.WARNING, logger="edge.sources.bus.ble_scan"):
        scanner.start()
        try:
            time.sleep(2.0)
            h = scanner.health()
            assert scanner.running  # failing, not dead
        finally:
            t0 = time.monotonic()
            scanner.stop()
            stop_s = time.monotonic() - t0
    assert stop_s < 2.0 and not scanner.running
    assert h["ble_adapter_up"] == 0 and h["ble_scanning"] == 0
    # backoff 0.1, 0.2, 0.4, 0.8 → about 5 attempts in 2 s; a spinning loop would make thousands
    assert 2 <= h["ble_errors"] <= 8
    assert h["ble_restarts"] == h["ble_errors"] - 1 or h["ble_restarts"] == h["ble_errors"]
    assert len(sink) == 0 and h["ble_adverts"] == 0
    assert "cannot reach the system D-Bus" in caplog.text
    assert len(caplog.records) == 1  # rate-limited: one line per cause per minute


def test_no_bluez_backend_imported_unless_used() -> None:
    """Memory on the Pi: the sim backend and the config never load bleak's BlueZ backend or dbus-fast."""
    code = (
        "import sys\n"
        "from edge.sources.bus.ble_scan import BleScanConfig, BleScanner, bluez_scanner_kwargs\n"
        "bluez_scanner_kwargs(BleScanConfig(mode='passive'))\n"
        "BleScanner(BleScanConfig(backend='sim', sim_socket='/nonexistent'), lambda a: None)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('dbus_fast', 'bleak.backends.bluezdbus'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
