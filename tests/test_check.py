"""`cityos gateway check` without --live (issue 12, item 5): what a gateway can know alone, one line each.

One config with a source of every family (forest bus, meter, truck, bus) on real pseudo-terminals, real TLS files
from a CA of the test's own and a broker name that resolves passes every line; each test then breaks one thing
as the issue found it broken in the field and checks that exactly that line fails, naming the setting, with the
technician's hint. Run in-process (`edge.check.run_check`), and through the CLI for the exit status and --json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_disk_full import small_fs  # noqa: F401  (the tmpfs fixture)

from cityos.config import dump_toml
from edge.check import Line, run_check
from fleet.pki import CertificateAuthority

ROOT = Path(__file__).resolve().parents[1]
FEED = ROOT / "scenarios" / "gtfs-tsuyama-loop"
DISTRICTS = ROOT / "scenarios" / "tsuyama-districts.geojson"
GW = "gw-check-01"


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def ptys() -> Iterator[list[str]]:
    """Five serial devices (pty slaves: character devices, as a USB adapter's tty is)."""
    pairs = [os.openpty() for _ in range(5)]
    yield [os.ttyname(s) for _, s in pairs]
    for m, s in pairs:
        os.close(m)
        os.close(s)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca") / "ca", "check test fleet")


@pytest.fixture
def cfg(tmp_path: Path, ptys: list[str], ca: CertificateAuthority) -> dict[str, Any]:
    """A config that passes every offline line; tests change one thing in it."""
    ca.issue_client(GW).write(tmp_path / "gateway.crt", tmp_path / "gateway.key")
    return {
        "gateway": {"id": GW},
        "mqtt": {"host": "localhost", "port": 8883, "ca_file": str(ca.ca_file),
                 "cert_file": str(tmp_path / "gateway.crt"), "key_file": str(tmp_path / "gateway.key")},
        "outbox": {"path": str(tmp_path / "var" / "outbox.db")},
        "sources": [
            {"type": "forest_station", "name": "bus0", "port": ptys[0],
             "stations": [{"device_id": "forest-01", "unit": 1}, {"device_id": "forest-02", "unit": 2}]},
            {"type": "smart_meter", "name": "meter-hh-0001", "port": ptys[1], "device_id": "hh-0001",
             "rbid_file": str(_secret(tmp_path / "broute.id", "0123456789ABCDEF0123456789ABCDEF")),
             "password_file": str(_secret(tmp_path / "broute.password", "ABCDEFGH1234"))},
            {"type": "garbage_truck", "name": "truck", "device_id": "truck-07", "indicator_port": ptys[2],
             "gps_port": ptys[3], "districts": str(DISTRICTS),
             "disposal": {"lat": 35.07, "lon": 134.02, "radius_m": 150}},
            {"type": "bus", "name": "bus", "vehicle_id": "bus-01", "gps_port": ptys[4], "feed": str(FEED),
             "ble": {"backend": "bluez"},
             "ridership": {"devices_per_passenger": 0.88, "devices_per_passenger_sd": 0.39, "capacity": 36}},
        ],
    }


def check(tmp_path: Path, cfg: dict[str, Any]) -> list[Line]:
    path = tmp_path / "gateway.toml"
    path.write_text(dump_toml(cfg), encoding="utf-8")
    return run_check(path)


def failing(lines: list[Line]) -> dict[str, Line]:
    return {line.name: line for line in lines if not line.ok}


def test_a_good_config_passes_every_offline_line(tmp_path, cfg):
    lines = check(tmp_path, cfg)
    assert [line.name for line in lines] == [
        "config", "tls files", "tls settings", "broker address", "serial ports", "ports not shared",
        "pseudonymous ids", "bus ridership", "secret files", "outbox"]
    assert failing(lines) == {}, failing(lines)
    outbox = lines[-1]
    assert "can be created" in outbox.detail and "MiB free" in outbox.detail
    assert not (tmp_path / "var").exists()  # the check made the directory to try it, and removed it again


def test_a_missing_serial_port(tmp_path, cfg):
    cfg["sources"][2]["gps_port"] = "/dev/ttyGPS-missing"
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"serial ports"}
    assert bad["serial ports"].detail == "sources[truck].gps_port: /dev/ttyGPS-missing does not exist"
    assert "plug in the device's USB adapter" in bad["serial ports"].hint


def test_a_udev_link_that_leads_nowhere(tmp_path, cfg):
    (tmp_path / "ttyFOREST0").symlink_to("/dev/ttyUSB-gone")
    cfg["sources"][0]["port"] = str(tmp_path / "ttyFOREST0")
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"serial ports"}
    assert "is a link to /dev/ttyUSB-gone, which does not exist" in bad["serial ports"].detail


def test_one_port_in_two_sources_even_through_a_link(tmp_path, cfg, ptys):
    (tmp_path / "ttyGPS").symlink_to(ptys[3])  # the bus's GPS link leads to the truck's GPS adapter
    cfg["sources"][3]["gps_port"] = str(tmp_path / "ttyGPS")
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"ports not shared"}
    detail = bad["ports not shared"].detail
    assert "sources[truck].gps_port" in detail and "sources[bus].gps_port" in detail and ptys[3] in detail
    assert "each device needs a port of its own" in bad["ports not shared"].hint


def test_an_unresolvable_broker_host(tmp_path, cfg):
    cfg["mqtt"]["host"] = "mqtt.tsuyama.invalid"
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"broker address"}
    assert bad["broker address"].detail.startswith("mqtt.tsuyama.invalid does not resolve")
    assert "check the host name in mqtt.host" in bad["broker address"].hint
    assert "run the check again on site" in bad["broker address"].hint


def test_a_meter_named_after_a_person(tmp_path, cfg):
    cfg["sources"][1]["device_id"] = "tanaka-hanako"
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"pseudonymous ids"}
    assert bad["pseudonymous ids"].detail == (
        "sources[meter-hh-0001].device_id 'tanaka-hanako' is not a household pseudonym (hh- and digits)")
    assert "never by a name or an address" in bad["pseudonymous ids"].hint
    assert "docs/privacy.md" in bad["pseudonymous ids"].hint


def test_device_ids_of_other_families_and_twice(tmp_path, cfg):
    cfg["sources"][0]["stations"][1]["device_id"] = "yamada-field"
    cfg["sources"][2]["device_id"] = "forest-01"
    detail = failing(check(tmp_path, cfg))["pseudonymous ids"].detail.splitlines()
    assert "sources[bus0].stations[1].device_id 'yamada-field' does not start with 'forest-'" in detail
    assert "sources[truck].device_id 'forest-01' is also sources[bus0].stations[0].device_id" in detail
    assert "sources[truck].device_id 'forest-01' does not start with 'truck-'" in detail


def test_a_bus_without_ridership(tmp_path, cfg):
    del cfg["sources"][3]["ridership"]
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"bus ridership"}
    assert "sources[bus].ridership: not calibrated (no devices_per_passenger)" in bad["bus ridership"].detail
    assert "devices_per_passenger" in bad["bus ridership"].hint and "docs/bus.md" in bad["bus ridership"].hint


def test_a_bus_whose_feed_has_no_trips(tmp_path, cfg):
    feed = tmp_path / "feed"
    shutil.copytree(FEED, feed)
    for name in ("trips.txt", "stop_times.txt"):  # headers only
        text = (feed / name).read_text()
        (feed / name).write_text(text.splitlines()[0] + "\n")
    cfg["sources"][3]["feed"] = str(feed)
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"bus ridership"}
    assert "no trip with two or more stop times: no stop visit can be detected" in bad["bus ridership"].detail


def test_an_outbox_under_proc(tmp_path, cfg):
    cfg["outbox"]["path"] = "/proc/nope/outbox.db"
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"outbox"}
    assert bad["outbox"].detail.startswith("cannot create the outbox directory /proc/nope: ")
    assert "/var/lib/cityos/outbox.db" in bad["outbox"].hint


def test_an_outbox_with_too_little_room(tmp_path, cfg):
    cfg["outbox"]["reserve_bytes"] = 2**50  # twice a petabyte: no disk here has that to spare
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"outbox"}
    assert "the outbox wants at least" in bad["outbox"].detail
    assert "journalctl --vacuum-size" in bad["outbox"].hint


def test_a_key_readable_by_others(tmp_path, cfg):
    Path(cfg["mqtt"]["key_file"]).chmod(0o644)
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"tls files"}
    key = cfg["mqtt"]["key_file"]
    assert bad["tls files"].detail.startswith(f"mqtt.key_file: {key} is readable or writable by group/others")
    assert bad["tls files"].hint == f"make it private to the service user: `sudo chmod 600 {key} && sudo chown cityos: {key}`"


def test_the_certificate_of_another_gateway(tmp_path, cfg, ca):
    ca.issue_client("gw-check-02").write(tmp_path / "other.crt", tmp_path / "other.key")
    cfg["mqtt"].update(cert_file=str(tmp_path / "other.crt"), key_file=str(tmp_path / "other.key"))
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"tls files"}
    assert "is the certificate of 'gw-check-02', not of this gateway 'gw-check-01'" in bad["tls files"].detail


def test_tls_without_a_client_certificate(tmp_path, cfg):
    del cfg["mqtt"]["cert_file"], cfg["mqtt"]["key_file"]
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"tls settings"}
    assert "mqtt.cert_file and mqtt.key_file" in bad["tls settings"].hint


def test_a_bad_b_route_password_file(tmp_path, cfg):
    Path(cfg["sources"][1]["password_file"]).chmod(0o640)
    bad = failing(check(tmp_path, cfg))
    assert set(bad) == {"secret files"}
    assert bad["secret files"].detail.startswith("sources[meter-hh-0001].password_file: ")
    assert "grid operator's letter" in bad["secret files"].hint


def _cli(tmp_path: Path, cfg: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gateway.toml"
    path.write_text(dump_toml(cfg), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "cityos_cli", "gateway", "check", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_cli_exits_0_only_when_every_line_passes_and_names_a_missing_ca(tmp_path, cfg):
    ok = _cli(tmp_path, cfg)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-1] == "all 10 checks passed"

    cfg["mqtt"]["ca_file"] = str(tmp_path / "missing-ca.crt")
    r = _cli(tmp_path, cfg)
    assert r.returncode == 1
    assert f"✗ tls files: mqtt.ca_file: {tmp_path / 'missing-ca.crt'} does not exist" in r.stdout
    assert "→ copy it from this gateway's bundle" in r.stdout
    assert r.stdout.splitlines()[-1] == "1 of 10 checks failed"

    lines = json.loads(_cli(tmp_path, cfg, "--json").stdout)
    assert all(set(line) == {"name", "ok", "detail", "hint"} for line in lines)
    assert [line["name"] for line in lines if not line["ok"]] == ["tls files"]


def test_a_config_that_does_not_parse_is_one_line_naming_the_setting(tmp_path, cfg):
    cfg["mqtt"]["tls"] = False  # plaintext to a broker on this machine, but on the TLS port
    r = _cli(tmp_path, cfg, "--json")
    assert r.returncode == 2  # no config, no checklist: exit 2 and the error on stderr, as every command
    [line] = json.loads(r.stdout)
    assert line["name"] == "config" and not line["ok"]
    assert "port: 8883 is MQTT over TLS; set tls = true" in line["detail"]
    assert "port: 8883 is MQTT over TLS" in r.stderr and "Traceback" not in r.stderr


def test_the_agents_status_file_is_rewritten_in_place_on_a_full_disk(small_fs):  # noqa: F811
    """The agent's local status must stay fresh when its disk is full (or the check would call it dead): a new file
    cannot be made there, so the padded file is overwritten in its own blocks."""
    from test_disk_full import fill

    from edge.agent import write_status_file

    fs = small_fs("1m")
    path = fs / "status.json"
    write_status_file(path, {"counters": {"outbox_disk_full": 0.0}, "note": "x" * 5000})
    assert path.stat().st_size == 8192  # whole 4 KiB blocks
    fill(fs)
    write_status_file(path, {"counters": {"outbox_disk_full": 1.0}, "note": "y" * 5000})
    assert json.loads(path.read_bytes()) == {"counters": {"outbox_disk_full": 1.0}, "note": "y" * 5000}
    assert sorted(p.name for p in fs.iterdir()) == ["filler", "status.json"]  # no temporary file left behind


def test_the_live_outbox_line_tells_what_the_agent_says_of_its_disk(tmp_path, cfg):
    from edge.check import _Outbox
    from edge.config import parse_config

    outbox = _Outbox(parse_config(cfg))
    assert outbox.live({"counters": {"outbox_disk_full": 0.0}}).ok
    line = outbox.live({"counters": {"outbox_disk_full": 1.0, "outbox_store_failed": 12.0}})
    assert not line.ok
    assert line.detail.splitlines()[0] == ("the agent cannot store readings: its outbox's filesystem is full "
                                           "(outbox_disk_full = 1; 12 reading(s) not stored so far)")
    assert line.hint.startswith("free space on the filesystem of")


def test_an_agent_whose_thread_died_is_told_with_its_last_line(tmp_path, cfg):
    """The agent that dies leaves its status file saying offline and why: the check's agent line repeats it, so the
    technician need not read the journal to know what to fix."""
    import threading

    from edge.agent import Agent
    from edge.config import parse_config

    cfg["mqtt"] = {"host": "127.0.0.1", "port": 1, "tls": False, "backoff_max_s": 1.0}  # no broker: not the point
    cfg["sources"] = cfg["sources"][:1]
    path = tmp_path / "gateway.toml"
    path.write_text(dump_toml(cfg), encoding="utf-8")
    agent = Agent(parse_config(cfg))

    def dies(stop: threading.Event) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/etc/cityos/ca.crt")

    agent.uplink.run = dies  # type: ignore[method-assign]
    agent.start()
    assert agent.wait() == 1
    status = json.loads((tmp_path / "var" / "status.json").read_bytes())
    assert status["state"] == "offline" and status["failure"] == agent.failure

    lines = {line.name: line for line in run_check(path, live=True, wait_s=1)}
    assert lines["agent"].detail.startswith("the agent is not running (it stopped at ")
    assert lines["agent"].detail.splitlines()[1] == (
        "its last run ended with: thread uplink died: FileNotFoundError: [Errno 2] No such file or directory: "
        "'/etc/cityos/ca.crt' (settings: [mqtt]); exiting with status 1")
    assert "systemctl status cityos-gateway" in lines["agent"].hint
    assert lines["device forest-01"].detail == "not checked (see the agent line)"
