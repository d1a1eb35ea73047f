"""`cityos gateway check --live` on a gateway whose agent runs (issue 12, item 5, "Must show"): the check catches
each fault with the right hint, and passes for a healthy gateway of each family.

Everything is real but the devices: the session's Mosquitto (mutual TLS, the ACL), an ingest writing to a
database of this module's own, InfluxDB, agents as processes (``python -m cityos_cli gateway run``, as systemd
starts them) on simulated devices (pseudo-terminals, the bus's Bluetooth socket), and the check as a process
(``cityos gateway check --live --json``). The check's one stand-in: this sandbox has no systemd, so no
``timedatectl`` answers and the kernel reads unsynchronised; a ``timedatectl`` of the test's own, first on the
check's ``PATH``, says "yes" (or "no" for the clock test). The check reads that program's answer as it reads
systemd's on a Raspberry Pi.

Each test asserts the exact set of failing lines, so a fault shows where it should and nowhere else. A healthy
gateway of a family is checked first and then given its fault where the simulator can (GPS dropout, Bluetooth
adapter gone), to share the agent; ``--wait`` is short, the devices answer within a second or two.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ingest_helpers import ingest_config, running_ingest, wait_for
from test_disk_full import fill, small_fs  # noqa: F401  (the tmpfs fixture)

from citylab.pipeline import Proc, gateway_config, write_gateway_config
from citylab.stack import Stack, StackInfo, identity, influx_query
from cityos.credentials import TlsFiles
from cityos.simclock import ScaledClock
from fleet.pki import CertificateAuthority
from fleet.registry import Registry

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
DISTRICTS = ROOT / "scenarios" / "tsuyama-districts.geojson"
#: --wait for a check that expects a device never to come: long enough for a healthy one on a loaded machine.
WAIT_FAULT_S = 6.0
WAIT_OK_S = 30.0


def _uid() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def info(stack: Stack) -> StackInfo:
    return stack.info()


@pytest.fixture(scope="module")
def db(stack: Stack, info: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's database, with a real ingest writing to it for the whole module."""
    name = f"t_check_{_uid()}"
    stack.create_database(name)
    with running_ingest(ingest_config(info, tmp_path_factory.mktemp("ingest"), name)):
        yield name
    stack.drop_database(name)


@pytest.fixture(scope="module")
def fakebin(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``fakebin("yes")``: a directory whose ``timedatectl`` answers ``show -p NTPSynchronized --value`` so."""
    root = tmp_path_factory.mktemp("fakebin")

    def make(answer: str) -> Path:
        d = root / answer
        if not d.exists():
            d.mkdir()
            exe = d / "timedatectl"
            exe.write_text(f'#!/bin/sh\n[ "$*" = "show -p NTPSynchronized --value" ] || exit 1\necho {answer}\n')
            exe.chmod(0o755)
        return d

    return make


@dataclass
class Result:
    rc: int
    lines: list[dict[str, Any]]
    took_s: float

    @property
    def failing(self) -> dict[str, dict[str, Any]]:
        return {line["name"]: line for line in self.lines if not line["ok"]}

    def __getitem__(self, name: str) -> dict[str, Any]:
        return next(line for line in self.lines if line["name"] == name)


@dataclass
class Gateway:
    """A gateway as on site: its directory, config, agent process; its devices are the test's."""

    info: StackInfo
    dir: Path
    fakebin: Callable[[str], Path]
    gateway_id: str = field(default_factory=lambda: f"gw-chk-{_uid()}")
    agent: Proc | None = None
    outbox_dir: Path | None = None

    @property
    def config(self) -> Path:
        return self.dir / "gateway.toml"

    @property
    def status_file(self) -> Path:
        return (self.outbox_dir or self.dir) / "status.json"

    def write(self, sources: list[dict[str, Any]], mqtt: dict[str, Any] | None = None, **sections: Any) -> Gateway:
        self.dir.mkdir(parents=True, exist_ok=True)
        outbox = (self.outbox_dir or self.dir) / "outbox.db"
        cfg = gateway_config(self.info, self.gateway_id, outbox, sources, **sections)
        cfg["mqtt"].update(mqtt or {})
        write_gateway_config(self.config, cfg)
        return self

    def start(self, *, running: bool = True) -> Gateway:
        self.agent = Proc("agent", [sys.executable, "-m", "cityos_cli", "gateway", "run", "--config",
                                    str(self.config)], self.dir / "agent.log")
        self.agent.start()
        if running:
            wait_for(lambda: self.status_file.exists() or not self.agent.alive, 30, "the agent's status file")
            assert self.agent.alive, self.agent.tail()
        return self

    def check(self, *, wait: float = WAIT_FAULT_S, ntp: str = "yes") -> Result:
        env = {"PATH": f"{self.fakebin(ntp)}:/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "cityos_cli", "gateway", "check", "--live", "--json",
                            "--config", str(self.config), "--wait", str(wait)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        took = time.monotonic() - t0
        assert r.stdout.startswith("["), f"rc {r.returncode}\n{r.stdout}\n{r.stderr}"
        return Result(r.returncode, json.loads(r.stdout), took)

    def status(self) -> dict[str, Any]:
        """The agent's status file (rewritten every status interval, 2 s here; in place on a full disk, where a
        read may catch it half written: read again)."""
        for _ in range(20):
            try:
                return json.loads(self.status_file.read_bytes())
            except ValueError:
                time.sleep(0.05)
        raise AssertionError(f"{self.status_file} does not hold JSON")

    def device(self, device_id: str) -> dict[str, float]:
        return self.status()["devices"].get(device_id, {})

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()


@pytest.fixture
def gateways(info: StackInfo, db: str, tmp_path: Path,
             fakebin: Callable[[str], Path]) -> Iterator[Callable[..., Gateway]]:
    """``gateways()``: a new gateway (its agent stopped at the end); the module's ingest runs meanwhile."""
    made: list[Gateway] = []

    def make(name: str = "gw") -> Gateway:
        gw = Gateway(info, tmp_path / name, fakebin)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


def assert_healthy(r: Result, devices: list[str]) -> None:
    assert r.failing == {}, json.dumps(r.failing, indent=1, ensure_ascii=False)
    assert r.rc == 0
    names = [line["name"] for line in r.lines]
    assert [n for n in names if n.startswith("device ")] == [f"device {d}" for d in devices]
    assert names[-4:] == [f"device {devices[-1]}", "clock", "broker", "stored in influxdb"]


def stored_probes(info: StackInfo, db: str, gateway_id: str) -> int:
    series = influx_query(info, db, f"SELECT count(\"probe\") FROM \"gateway_probe\" WHERE \"gateway\" = '{gateway_id}'")
    return sum(int(v[1]) for s in series for v in s["values"])


# --- forest --------------------------------------------------------------------------------------------------------


def forest_source(port: Path, stations: list[tuple[str, int]]) -> dict[str, Any]:
    return {"type": "forest_station", "name": "bus0", "port": str(port), "timeout_s": 0.1, "retries": 1,
            "stations": [{"device_id": d, "unit": u} for d, u in stations]}


@pytest.fixture
def forest_sim(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from firmware_sim.forest.sim import ForestStationSim, StationSpec

    sims: list[Any] = []

    def make(stations: list[tuple[str, int]], link: Path) -> Any:
        sim = ForestStationSim([StationSpec(d, u, sample_interval_ds=5) for d, u in stations], link_path=link,
                               ground_truth=tmp_path / f"{link.name}.truth.jsonl").start()
        sims.append(sim)
        return sim

    yield make
    for s in sims:
        s.stop()


def test_a_healthy_forest_gateway_passes_and_its_probe_is_in_influxdb_then_the_clock_fails(
        gateways, forest_sim, info, db):
    gw = gateways()
    stations = [("forest-01", 1), ("forest-02", 2)]
    forest_sim(stations, gw.dir / "ttyFOREST0")
    gw.write([forest_source(gw.dir / "ttyFOREST0", stations)]).start()
    r = gw.check(wait=WAIT_OK_S)
    assert_healthy(r, ["forest-01", "forest-02"])
    assert "forest-01 (unit 1) answers" in r["device forest-01"]["detail"]
    assert r["stored in influxdb"]["detail"].startswith("the ingest stored the probe (1 point(s), measurement "
                                                       "gateway_probe) in InfluxDB")
    assert r["clock"]["detail"].endswith("synchronised (timedatectl)")
    assert stored_probes(info, db, gw.gateway_id) == 1  # proven: the point is there, under this gateway
    assert r.took_s < 20

    r = gw.check(ntp="no")  # the same gateway, the clock not synchronised (NTP unreachable)
    assert set(r.failing) == {"clock"} and r.rc == 1
    assert r["clock"]["detail"].endswith("not synchronised (timedatectl)")
    assert "needs its network and an NTP server" in r["clock"]["hint"]

    # The technician edits the config and forgets to restart the agent: it still runs the old one.
    gw.config.write_text(gw.config.read_text().replace("status_interval_s = 2.0", "status_interval_s = 3.0"))
    r = gw.check()
    assert set(r.failing) == {"agent", "device forest-01", "device forest-02"}
    assert "runs another version of the config" in r["agent"]["detail"]
    assert r["agent"]["hint"] == "restart the agent so that it reads the file: `sudo systemctl restart cityos-gateway`"


def test_one_station_of_four_on_a_wrong_modbus_unit(gateways, forest_sim):
    gw = gateways()
    # The third station was set to unit 7 in the field; the config says 3.
    forest_sim([("forest-01", 1), ("forest-02", 2), ("forest-03", 7), ("forest-04", 4)], gw.dir / "ttyFOREST0")
    configured = [("forest-01", 1), ("forest-02", 2), ("forest-03", 3), ("forest-04", 4)]
    gw.write([forest_source(gw.dir / "ttyFOREST0", configured)]).start()
    r = gw.check()
    assert set(r.failing) == {"device forest-03"}
    line = r.failing["device forest-03"]
    assert line["detail"] == "forest-03 (unit 3) does not answer"
    assert line["hint"].startswith("check its Modbus address: the station must be set to unit 3, as the config says")
    assert "RS-485 wiring" in line["hint"]


def test_a_missing_serial_port(gateways):
    gw = gateways()
    gw.write([forest_source(gw.dir / "ttyUSB-not-plugged", [("forest-01", 1)])]).start()
    r = gw.check(wait=30)  # a port that is not there will not appear by waiting: the check does not wait
    assert set(r.failing) == {"serial ports", "device forest-01"}
    assert r["serial ports"]["detail"] == f"sources[bus0].port: {gw.dir / 'ttyUSB-not-plugged'} does not exist"
    assert "plug in the device's USB adapter" in r["serial ports"]["hint"]
    assert r["device forest-01"]["detail"] == f"its RS-485 port {gw.dir / 'ttyUSB-not-plugged'} does not exist"
    assert r.took_s < 15


# --- certificates and the ACL -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A CA that is not the city's: a certificate from it, or a gateway that trusts it, must be refused."""
    return CertificateAuthority.create(tmp_path_factory.mktemp("rogue") / "ca", "not the city's fleet CA")


def _forest_gateway(gateways, forest_sim, mqtt: dict[str, Any] | None = None) -> Gateway:
    gw = gateways()
    forest_sim([("forest-01", 1)], gw.dir / "ttyFOREST0")
    return gw.write([forest_source(gw.dir / "ttyFOREST0", [("forest-01", 1)])], mqtt).start()


def _refused(info: StackInfo, gateway_id: str) -> bool:
    """Does the broker refuse a new connection with this gateway's certificate (handshake, or no CONNACK 0)?"""
    import socket
    import ssl

    ident = identity(info, gateway_id)
    ctx = TlsFiles(ca_file=info.ca_file, cert_file=ident.cert_file, key_file=ident.key_file).client_context("t")
    connect = bytes([0x10, 0x10, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x04]) + b"rvkd"
    try:
        with socket.create_connection((info.mqtt_host, info.mqtt_port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=info.mqtt_host) as sock:
            sock.sendall(connect)
            reply = sock.recv(4)
    except (OSError, ssl.SSLError):
        return True
    return not (len(reply) == 4 and reply[3] == 0)


def test_a_revoked_gateway_is_refused(gateways, forest_sim, stack, info):
    gw = _forest_gateway(gateways, forest_sim)
    assert gw.check(wait=WAIT_OK_S).failing == {}
    Registry(info.fleet_dir).shut_out(gw.gateway_id)  # `cityos fleet revoke`: the ACL and the CRL
    stack.reload_mqtt()
    # The reload is asynchronous. Mosquitto 2.0.11 re-reads the CRL with the ACL: a new connection is refused at the
    # handshake (the agent's open connection is refused by the ACL).
    wait_for(lambda: _refused(info, gw.gateway_id), 15, "the revocation to apply", poll=0.2)
    r = gw.check()
    assert set(r.failing) == {"broker", "stored in influxdb"}
    broker = r.failing["broker"]
    assert "refuses this gateway's certificate: it is revoked (SSLV3_ALERT_CERTIFICATE_REVOKED)" in broker["detail"]
    assert broker["hint"].startswith(f"ask the fleet operator: `cityos fleet show {gw.gateway_id}`")
    assert f"cityos fleet rotate {gw.gateway_id}" in broker["hint"]
    assert r.failing["stored in influxdb"]["detail"].startswith("not tried")


def test_the_certificate_of_another_gateway_is_refused_by_the_acl(gateways, forest_sim, info):
    other = identity(info, f"gw-chk-{_uid()}")  # a certificate of the city's CA, but another gateway's
    gw = _forest_gateway(gateways, forest_sim, {"cert_file": str(other.cert_file), "key_file": str(other.key_file)})
    r = gw.check()
    assert set(r.failing) == {"tls files", "broker", "stored in influxdb"}
    assert f"is the certificate of {other.name!r}, not of this gateway {gw.gateway_id!r}" in \
        r.failing["tls files"]["detail"]
    broker = r.failing["broker"]
    # The broker grants the subscription to the receipts (and would deliver nothing); the probe's PUBACK says 0x87.
    assert (f"accepts the certificate but refuses to let this gateway publish on "
            f"cityos/v1/{gw.gateway_id}/probe (not authorized)") in broker["detail"]
    assert broker["hint"].startswith(f"ask the fleet operator: `cityos fleet show {gw.gateway_id}`")


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(gateways, forest_sim, info, rogue):
    gw = gateways()
    gw.dir.mkdir(parents=True)
    rogue.issue_client(gw.gateway_id).write(gw.dir / "gateway.crt", gw.dir / "gateway.key")
    forest_sim([("forest-01", 1)], gw.dir / "ttyFOREST0")
    gw.write([forest_source(gw.dir / "ttyFOREST0", [("forest-01", 1)])],
             {"cert_file": str(gw.dir / "gateway.crt"), "key_file": str(gw.dir / "gateway.key")}).start()
    r = gw.check(wait=WAIT_OK_S)
    assert set(r.failing) == {"broker", "stored in influxdb"}
    broker = r.failing["broker"]
    assert "refuses this gateway's certificate at the TLS handshake" in broker["detail"]
    assert "install this gateway's own certificate and key from its bundle" in broker["hint"]
    assert f"cityos fleet show {gw.gateway_id}" in broker["hint"]


def test_a_ca_file_that_is_not_the_citys_distrusts_the_broker(gateways, forest_sim, rogue):
    gw = _forest_gateway(gateways, forest_sim, {"ca_file": str(rogue.ca_file)})
    r = gw.check(wait=WAIT_OK_S)
    assert set(r.failing) == {"broker", "stored in influxdb"}
    broker = r.failing["broker"]
    assert f"the broker's certificate at {gw.info.mqtt_host}:{gw.info.mqtt_port} is not signed by mqtt.ca_file " \
           f"{rogue.ca_file}" in broker["detail"]
    assert "mqtt.ca_file must be the city's fleet CA" in broker["hint"]


# --- the outbox -------------------------------------------------------------------------------------------------------


def test_an_outbox_on_a_read_only_filesystem(gateways, forest_sim, small_fs):  # noqa: F811
    ro = small_fs("1m")
    import subprocess as sp

    sp.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    gw = gateways()
    gw.outbox_dir = ro / "cityos"
    forest_sim([("forest-01", 1)], gw.dir / "ttyFOREST0")
    gw.write([forest_source(gw.dir / "ttyFOREST0", [("forest-01", 1)])]).start(running=False)
    assert gw.agent is not None and gw.agent.popen is not None
    assert gw.agent.popen.wait(30) == 2  # a config error at start: systemd restarts it, and it fails again
    r = gw.check()
    assert set(r.failing) == {"outbox", "agent", "device forest-01"}
    assert r.failing["outbox"]["detail"].startswith(f"cannot create the outbox directory {ro / 'cityos'}: "
                                                   "Read-only file system")
    assert r.failing["agent"]["detail"].startswith("no status file")
    assert "systemctl status cityos-gateway" in r.failing["agent"]["hint"]


def test_a_full_outbox_filesystem(gateways, forest_sim, small_fs):  # noqa: F811
    gw = gateways()
    gw.outbox_dir = small_fs("4m")
    forest_sim([("forest-01", 1)], gw.dir / "ttyFOREST0")
    gw.write([forest_source(gw.dir / "ttyFOREST0", [("forest-01", 1)])]).start()
    wait_for(lambda: gw.device("forest-01").get("readings", 0) > 0, 30, "a first reading")
    fill(gw.outbox_dir)
    written = gw.status()["mono"]
    wait_for(lambda: gw.status()["mono"] > written, 10, "the agent's status file rewritten on the full disk")
    r = gw.check()
    # While its outbox drains, the agent goes on storing into the pages it freed by sending (its own
    # outbox_disk_full stays 0 or comes and goes; a unit test shows the line with it). The filesystem is full all
    # the same, and that is what the line says.
    assert set(r.failing) == {"outbox"}
    detail = r.failing["outbox"]["detail"]
    assert re.search(rf"(the outbox's filesystem is full|only 0 MiB free at {re.escape(str(gw.outbox_dir))};)", detail)
    assert r.failing["outbox"]["hint"].startswith(f"free space on the filesystem of {gw.outbox_dir}: remove what is "
                                                  "not needed")
    assert r["agent"]["ok"]  # its status file, rewritten in place on the full disk, still tells it runs


# --- meter ------------------------------------------------------------------------------------------------------------


def meter_source(gw: Gateway, port: Path, password: str) -> dict[str, Any]:
    from firmware_sim.meter.sim import MeterSpec

    secrets = gw.dir / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    for name, text in (("broute.id", MeterSpec.rbid), ("broute.password", password)):
        (secrets / name).write_text(text + "\n")
        (secrets / name).chmod(0o600)
    return {"type": "smart_meter", "name": "meter-hh-0001", "port": str(port), "device_id": "hh-0001",
            "rbid_file": str(secrets / "broute.id"), "password_file": str(secrets / "broute.password"),
            "poll_interval_s": 0.5, "recv_timeout_s": 0.5, "xmit_retries": 3, "xmit_timeout_s": 5,
            "xmit_interval_s": 0.01, "join_retries": 1, "reconnect_backoff_min_s": 0.3,
            "reconnect_backoff_max_s": 1.0, "auth_failure_threshold": 2}


@pytest.fixture
def meter_sim(tmp_path: Path) -> Iterator[Callable[[Path], Any]]:
    from firmware_sim.meter.sim import MeterSpec, WiSunModuleSim

    sims: list[Any] = []

    def make(link: Path) -> Any:
        sim = WiSunModuleSim(MeterSpec(device_id="hh-0001", seed=3), truth_path=tmp_path / f"{link.name}.jsonl",
                             link_path=link)
        sim.start()
        sims.append(sim)
        return sim

    yield make
    for s in sims:
        s.stop()


def test_a_healthy_meter_gateway_passes(gateways, meter_sim):
    from firmware_sim.meter.sim import MeterSpec

    gw = gateways()
    meter_sim(gw.dir / "wisun0")
    gw.write([meter_source(gw, gw.dir / "wisun0", MeterSpec.password)]).start()
    r = gw.check(wait=WAIT_OK_S)
    assert_healthy(r, ["hh-0001"])
    assert r["device hh-0001"]["detail"].startswith("hh-0001: B-route session online; ")


def test_a_wrong_b_route_password(gateways, meter_sim):
    gw = gateways()
    meter_sim(gw.dir / "wisun0")
    gw.write([meter_source(gw, gw.dir / "wisun0", "TYPO5678WXYZ")]).start()
    r = gw.check(wait=60)  # a refused password will not change by waiting: the check stops at auth_failed
    assert set(r.failing) == {"device hh-0001"}
    line = r.failing["device hh-0001"]
    assert line["detail"] == "hh-0001: the meter refuses the B-route password (auth_failed)"
    assert line["hint"].startswith("the grid operator's B-route ID/password is refused: re-enter both from the "
                                   "operator's letter")
    assert str(gw.dir / "secrets" / "broute.password") in line["hint"]
    assert r.took_s < 40


# --- truck ------------------------------------------------------------------------------------------------------------


def test_a_healthy_truck_gateway_passes_then_loses_its_gps_fix(gateways, tmp_path):
    from firmware_sim.truck.sim import GarbageTruckSim, TruckSimSpec

    gw = gateways()
    sim = GarbageTruckSim(TruckSimSpec(truck_id="truck-01"), indicator_link=gw.dir / "ttyIND0",
                          gps_link=gw.dir / "ttyGPS0", truth_path=tmp_path / "truck.jsonl")
    gw.dir.mkdir(parents=True)
    sim.start()
    try:
        route = sim.spec.route
        gw.write([{"type": "garbage_truck", "name": "truck", "device_id": "truck-01",
                   "indicator_port": str(gw.dir / "ttyIND0"), "gps_port": str(gw.dir / "ttyGPS0"),
                   "districts": str(DISTRICTS), "gps_timeout_s": 2.0,
                   "disposal": {"lat": route.disposal.lat, "lon": route.disposal.lon,
                                "radius_m": route.disposal.radius_m}}]).start()
        r = gw.check(wait=WAIT_OK_S)
        assert_healthy(r, ["truck-01"])
        assert r["device truck-01"]["detail"] == "truck-01: the scale answers, GPS fix"

        sim.gps_dropout(3600.0)  # the truck drives into a garage: the receiver says status V
        wait_for(lambda: gw.device("truck-01").get("gps_fix") == 0, 15, "the agent to lose the fix")
        r = gw.check()
        assert set(r.failing) == {"device truck-01"}
        line = r.failing["device truck-01"]
        assert line["detail"] == "truck-01: no GPS fix"
        assert line["hint"].startswith("no GPS fix: the antenna needs a clear view of the sky")
    finally:
        sim.stop()


# --- bus --------------------------------------------------------------------------------------------------------------


def test_a_healthy_bus_gateway_passes_then_loses_its_bluetooth_adapter(gateways):
    from firmware_sim.bus.sim import DEFAULT_FEED, BusDay, BusDaySpec, BusSimLive

    gw = gateways()
    day0 = dt.datetime.now(dt.timezone(dt.timedelta(hours=9))).date() - dt.timedelta(days=2)
    while day0.weekday() >= 5:
        day0 -= dt.timedelta(days=1)
    day = BusDay(BusDaySpec(date=day0))
    clock = ScaledClock(sim_start=day.day0 + 7 * 3600 + 55 * 60, real_anchor=time.time(), rate=5.0)
    gw.dir.mkdir(parents=True)
    sim = BusSimLive(day, clock=clock, gps_link=gw.dir / "ttyGPS0", ble_socket=gw.dir / "ble.sock")
    sim.start()
    try:
        gw.write([{"type": "bus", "name": "bus", "vehicle_id": "bus-01", "gps_port": str(gw.dir / "ttyGPS0"),
                   "gps_timeout_s": 30.0, "feed": str(DEFAULT_FEED),
                   "ble": {"backend": "sim", "sim_socket": str(gw.dir / "ble.sock")},
                   "ridership": {"city_uuid": str(day.spec.city_uuid), "capacity": 36,
                                 "devices_per_passenger": 0.88, "devices_per_passenger_sd": 0.39}}],
                 clock={"sim_start": clock.sim_start, "real_anchor": clock.real_anchor, "rate": clock.rate}).start()
        r = gw.check(wait=WAIT_OK_S)
        assert_healthy(r, ["bus-01"])
        assert r["device bus-01"]["detail"] == "bus-01: Bluetooth adapter up, GPS fix"

        sim.ble_outage(3600.0 * clock.rate)  # the USB Bluetooth adapter is pulled out
        wait_for(lambda: gw.device("bus-01").get("ble_adapter_up") == 0, 15, "the agent to lose the adapter")
        r = gw.check()
        assert set(r.failing) == {"device bus-01"}
        line = r.failing["device bus-01"]
        assert line["detail"] == "bus-01: the Bluetooth adapter (hci0) is not up"
        assert line["hint"].startswith("the Bluetooth adapter is not up: `sudo systemctl status bluetooth`")
    finally:
        sim.stop()
