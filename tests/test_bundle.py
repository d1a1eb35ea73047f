"""The first-boot bundle (`cityos fleet bundle`, fleet/bundle.py), with the real tools: Debian's cloud-init validates
the user-data and converts the network-config as it would on the gateway, bash/sh parse the scripts, the agent is
installed from the bundle's wheelhouse with no package index into a scratch root and checks its config there,
systemd-analyze reads the unit, and an aarch64 wheelhouse for Trixie's Python is built from the package index.

The session's wheelhouse is built once for this machine (its CPU and Python) from the package index; every bundle
of the session is then built offline from it (``--wheelhouse``), as a technician's laptop would.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cityos.config import config_hash, dump_toml, read_toml
from fleet import bundle
from fleet.registry import BrokerSettings, FleetError, Registry, Site

ROOT = Path(__file__).resolve().parent.parent
HERE_PY = f"{sys.version_info.major}.{sys.version_info.minor}"
HERE_ARCH = platform.machine()
SSID = "Tsuyama 加茂 field"
PSK = "kamo-plot12 wifi pass"
SSH_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0ex1QbQ3v2bPz9iZpV6U6cV8b3u6n6w0mM0kQ8d8rX tech@tsuyama"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:  # not a skip: the bundle's promise rests on these tools (scripts/setup.sh installs them)
        pytest.fail(f"{name} is not installed: apt-get install {package}")
    return path


def _pip_env() -> dict[str, str]:
    """The environment of an install on a gateway: no pip configuration of this machine's takes part."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _offline(argv: list[str]) -> list[str]:
    """``argv`` in a network namespace of its own (no network at all) where this user may make one."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "--net", *argv]
    return argv


# --- the session's registry, wheels and bundles -----------------------------------------------------------------

@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry.open_or_create(tmp_path_factory.mktemp("bundle") / "fleet")
    reg.set_broker(BrokerSettings(host="mqtt.city.example.jp", port=8883))
    reg.add("gw-forest-01", "forest", Site(district="加茂", asset="plot-12"),
            read_toml(ROOT / "edge/sources/forest/sample.toml"))
    reg.add("gw-bus-01", "bus", Site(district="津山", asset="bus-01"), read_toml(ROOT / "edge/sources/bus/sample.toml"))
    meter = read_toml(ROOT / "edge/sources/meter/sample.toml")
    second = {**meter["sources"][0], "name": "meter-hh-0002", "device_id": "hh-0002", "port": "/dev/wisun-hh-0002"}
    reg.add("gw-meter-01", "meter", Site(district="加茂", asset="block-3"),
            {**meter, "sources": [*meter["sources"], second]})
    return reg


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's wheels for this machine (its CPU and Python), from the package index: built once."""
    dest = tmp_path_factory.mktemp("wheelhouse")
    bundle.collect_wheels(dest, bundle.Target(HERE_ARCH, HERE_PY))
    return dest


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    (d / "psk").write_text(PSK + "\n")
    (d / "psk").chmod(0o600)
    (d / "id_ed25519.pub").write_text(SSH_PUB + "\n")
    return {"psk": d / "psk", "ssh_key": d / "id_ed25519.pub"}


def _build(registry: Registry, wheelhouse: Path, out: Path, gateway: str, image: str, *, inputs: dict | None = None,
           **kw: Any) -> Path:
    extra = {"ssh_key": inputs["ssh_key"], "wifi": f"{SSID},{inputs['psk']}"} if inputs else {}
    return bundle.build_bundle(registry, gateway, image=image, out=out, arch=HERE_ARCH, python=HERE_PY,
                               wheelhouse=wheelhouse, **extra, **kw)


@pytest.fixture(scope="session")
def trixie(registry, wheelhouse, inputs, tmp_path_factory) -> Path:
    """gw-forest-01 for Trixie, with an admin key and Wi-Fi."""
    return _build(registry, wheelhouse, tmp_path_factory.mktemp("trixie") / "out", "gw-forest-01", "raspios-trixie",
                  inputs=inputs)


@pytest.fixture(scope="session")
def bookworm(registry, wheelhouse, inputs, tmp_path_factory) -> Path:
    return _build(registry, wheelhouse, tmp_path_factory.mktemp("bookworm") / "out", "gw-forest-01",
                  "raspios-bookworm", inputs=inputs)


@pytest.fixture(scope="session")
def bus_trixie(registry, wheelhouse, tmp_path_factory) -> Path:
    """gw-bus-01 for Trixie, Ethernet only, no admin."""
    return _build(registry, wheelhouse, tmp_path_factory.mktemp("bus") / "out", "gw-bus-01", "raspios-trixie")


def _user_data(out: Path) -> dict[str, Any]:
    text = (out / "user-data").read_text()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def _written(out: Path) -> dict[str, dict[str, Any]]:
    """path -> write_files entry of a Trixie bundle."""
    return {f["path"]: f for f in _user_data(out)["write_files"]}


_HEREDOC = re.compile(r"^    cityos_file (\S+) (\d{4}) (\S+) (\S+) <<'CITYOS_EOF'\n(.*?)^CITYOS_EOF$", re.M | re.S)


def _firstrun_written(out: Path) -> dict[str, dict[str, Any]]:
    """path -> {mode, owner, content} of what a Bookworm bundle's firstrun.sh writes."""
    return {m[1]: {"permissions": m[2], "owner": f"{m[3]}:{m[4]}", "content": m[5]}
            for m in _HEREDOC.finditer((out / "firstrun.sh").read_text())}


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


# --- cloud-init: user-data, network-config, meta-data -----------------------------------------------------------

@pytest.mark.parametrize("which", ["trixie", "bus_trixie"])
def test_user_data_passes_cloud_init_schema(which, request):
    out = request.getfixturevalue(which)
    res = subprocess.run([_tool("cloud-init", "cloud-init"), "schema", "--config-file", str(out / "user-data")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Valid cloud-config" in res.stdout
    assert "deprecat" not in (res.stdout + res.stderr).lower()


def test_user_data_users_files_and_first_boot(trixie, registry):
    ud = _user_data(trixie)
    users = {u["name"]: u for u in ud["users"]}
    svc = users["cityos"]
    assert svc["system"] is True and svc["shell"] == "/usr/sbin/nologin" and svc["lock_passwd"] is True
    assert svc["groups"] == "dialout"
    admin = users[bundle.ADMIN_USER]
    assert admin["ssh_authorized_keys"] == [SSH_PUB] and admin["lock_passwd"] is True
    assert ud["ssh_pwauth"] is False and ud["disable_root"] is True
    assert ud["hostname"] == "gw-forest-01"
    files = _written(trixie)
    # Files of the service user wait for the final stage (write_files runs before users_groups); root's do not.
    assert files["/etc/cityos/gateway.key"] | {"content": ""} == {
        "path": "/etc/cityos/gateway.key", "owner": "cityos:cityos", "permissions": "0600", "defer": True,
        "content": ""}
    assert files["/etc/cityos/gateway.toml"]["owner"] == "root:cityos"
    assert files["/etc/cityos/gateway.toml"]["permissions"] == "0640" and files["/etc/cityos/gateway.toml"]["defer"]
    for path in ("/etc/cityos/ca.crt", "/etc/cityos/gateway.crt"):
        assert files[path]["permissions"] == "0644" and "defer" not in files[path]
    ident = registry.identity("gw-forest-01", issue=False)
    assert files["/etc/cityos/gateway.key"]["content"] == ident.key_file.read_text()
    assert files["/etc/cityos/gateway.crt"]["content"] == ident.cert_file.read_text()
    assert files["/etc/cityos/ca.crt"]["content"] == ident.ca_file.read_text()
    assert set(files) >= {"/etc/systemd/system/cityos-gateway.service",
                          "/etc/systemd/system/cityos-gateway.service.d/10-serial.conf",
                          "/etc/systemd/system/systemd-time-wait-sync.service.d/cityos.conf",
                          "/etc/udev/rules.d/99-cityos-serial.rules", "/etc/ssh/sshd_config.d/cityos.conf",
                          bundle.FIRSTBOOT}
    assert not any("bluetooth" in p for p in files)
    rules = files["/etc/udev/rules.d/99-cityos-serial.rules"]["content"]
    assert ('SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", SYMLINK+="ttyFOREST0", '
            'GROUP="dialout", MODE="0660"') in rules.splitlines()
    # One runcmd: the first-boot script, then the secrets leave the boot partition whatever it said.
    (cmd,) = ud["runcmd"]
    assert cmd[:2] == ["sh", "-c"]
    assert cmd[2].startswith(f"{bundle.FIRSTBOOT} --start; rc=$?; ") and cmd[2].endswith("exit $rc")
    assert "shred -u" in cmd[2] and "/boot/firmware/user-data /boot/firmware/network-config" in cmd[2]
    script = files[bundle.FIRSTBOOT]["content"]
    assert files[bundle.FIRSTBOOT]["permissions"] == "0700"
    assert "systemctl enable systemd-time-wait-sync.service cityos-gateway.service" in script
    assert "timedatectl show -p NTPSynchronized --value" in script
    assert "systemctl enable ssh.service" in script and "rfkill unblock wifi" in script


def test_bus_gateway_gets_bluetooth_and_attention(bus_trixie):
    ud = _user_data(bus_trixie)
    files = _written(bus_trixie)
    assert ud["users"][0]["groups"] == "dialout,bluetooth"
    assert [u["name"] for u in ud["users"]] == ["cityos"]  # no --ssh-key: no admin, no sshd drop-in
    drop = files["/etc/systemd/system/cityos-gateway.service.d/20-bluetooth.conf"]["content"]
    assert "Wants=bluetooth.service" in drop and "After=bluetooth.service" in drop
    assert "SupplementaryGroups=bluetooth" in drop
    assert "/etc/ssh/sshd_config.d/cityos.conf" not in files
    assert "systemctl enable ssh.service" not in files[bundle.FIRSTBOOT]["content"]
    net = yaml.safe_load((bus_trixie / "network-config").read_text())["network"]
    assert "wifis" not in net and _mode(bus_trixie / "network-config") == 0o644
    assert "/boot/firmware/network-config" not in ud["runcmd"][0][2]  # nothing secret in it: it stays
    # The feed the bus source reads is not the bundle's to deliver: the technician is told.
    manifest = json.loads((bus_trixie / "cityos/MANIFEST.json").read_text())
    assert any("/var/lib/cityos/gtfs/gongo-loop" in a for a in manifest["attention"])
    assert "/var/lib/cityos/gtfs/gongo-loop" in (bus_trixie / "README.txt").read_text()


def test_network_config_is_netplan_v2_as_cloud_init_renders_it(trixie, tmp_path):
    nc = yaml.safe_load((trixie / "network-config").read_text())
    net = nc["network"]
    assert net["version"] == 2 and net["renderer"] == "NetworkManager"
    assert net["ethernets"]["eth0"] == {"dhcp4": True, "optional": True}
    wlan = net["wifis"]["wlan0"]
    assert wlan["regulatory-domain"] == "JP"
    assert wlan["access-points"] == {SSID: {"password": PSK}}
    # cloud-init's own converter, as it runs on the gateway: the netplan it writes is this config.
    res = subprocess.run([_tool("cloud-init", "cloud-init"), "devel", "net-convert", "-p", str(trixie / "network-config"),
                          "-k", "yaml", "-D", "debian", "-d", str(tmp_path), "-O", "netplan"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rendered = yaml.safe_load((tmp_path / "etc/netplan/50-cloud-init.yaml").read_text())
    assert rendered == nc


def test_meta_data_names_the_instance(trixie, registry):
    meta = yaml.safe_load((trixie / "meta-data").read_text())
    manifest = json.loads((trixie / "cityos/MANIFEST.json").read_text())
    assert meta["local-hostname"] == "gw-forest-01"
    assert re.fullmatch(r"gw-forest-01-[0-9a-f]{12}", meta["instance-id"])
    assert meta["instance-id"] == manifest["instance_id"]


def test_a_changed_gateway_is_a_new_instance(registry, wheelhouse, tmp_path):
    """The instance-id follows what the first boot applies: the same gateway built twice is the same instance (a
    card re-flashed with it boots as it did); after a re-key it is a new one, so cloud-init runs again."""
    reg = Registry.open_or_create(tmp_path / "fleet")
    reg.set_broker(BrokerSettings(host="mqtt.city.example.jp"))
    reg.add("gw-forest-09", "forest", Site(district="加茂"), read_toml(ROOT / "edge/sources/forest/sample.toml"))

    def instance(n: int) -> str:
        out = _build(reg, wheelhouse, tmp_path / f"out{n}", "gw-forest-09", "raspios-trixie")
        return yaml.safe_load((out / "meta-data").read_text())["instance-id"]

    first = instance(1)
    assert instance(2) == first
    reg.rotate("gw-forest-09")
    assert instance(3) != first


def test_gateway_toml_reads_back_as_the_registry_config(trixie, bookworm, registry):
    rec = registry.gateway("gw-forest-01")
    for text in (_written(trixie)[bundle.CONFIG]["content"], _firstrun_written(bookworm)[bundle.CONFIG]["content"]):
        data = tomllib.loads(text)
        assert data == rec.config
        assert config_hash(data) == rec.config_hash  # what the agent reports: no drift on the first boot


# --- Bookworm: the same content, rendered as firstrun.sh ---------------------------------------------------------

def test_one_source_two_renderings(trixie, bookworm):
    """Every file cloud-init writes, firstrun.sh writes too, with the same content, mode and owner; firstrun.sh also
    writes what cloud-init makes from its own keys (the admin's authorized_keys and sudoers, the Wi-Fi)."""
    ci, fr = _written(trixie), _firstrun_written(bookworm)
    own = {f"/home/{bundle.ADMIN_USER}/.ssh/authorized_keys", f"/etc/sudoers.d/{bundle.ADMIN_USER}",
           "/etc/NetworkManager/system-connections/cityos-wifi.nmconnection"}
    assert set(fr) == set(ci) | own
    for path, entry in ci.items():
        want = {k: entry[k] for k in ("permissions", "owner", "content")}
        got = fr[path]
        if path == bundle.FIRSTBOOT:  # the same script; only the bundle id in it differs by image
            bundle_id = re.compile(r"gw-forest-01-[0-9a-f]{12}")
            got = {**got, "content": bundle_id.sub("", got["content"])}
            want = {**want, "content": bundle_id.sub("", want["content"])}
        assert got == want, path
    assert fr[f"/home/{bundle.ADMIN_USER}/.ssh/authorized_keys"]["content"] == SSH_PUB + "\n"
    nm = fr["/etc/NetworkManager/system-connections/cityos-wifi.nmconnection"]
    assert nm["permissions"] == "0600" and f"ssid={SSID}\n" in nm["content"] and f"psk={PSK}\n" in nm["content"]
    text = (bookworm / "firstrun.sh").read_text()
    assert f"{bundle.FIRSTBOOT} --enable-only" in text
    assert "useradd --system --user-group --no-create-home" in text and "usermod --append --groups dialout" in text


def test_scripts_parse(trixie, bookworm):
    _tool("bash", "bash")
    script = _written(trixie)[bundle.FIRSTBOOT]["content"]
    for argv, text in ((["bash", "-n"], script), (["bash", "-n"], (bookworm / "firstrun.sh").read_text()),
                       (["sh", "-n"], (bookworm / "cityos/patch-cmdline.sh").read_text())):
        res = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr


CMDLINE = ("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait "
           "quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n")


def test_cmdline_patch_and_firstrun_cleanup(bookworm, tmp_path):
    """patch-cmdline.sh adds the entry once, on the one line; firstrun.sh's clean-up gives the line back as it was."""
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE)
    for item in ("firstrun.sh", "cmdline.txt.append", "cityos"):
        src = bookworm / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, boot / item)
    patch = ["sh", str(boot / "cityos/patch-cmdline.sh"), str(boot)]
    res = subprocess.run(patch, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    patched = (boot / "cmdline.txt").read_text()
    assert patched == CMDLINE.rstrip("\n") + " " + bundle.CMDLINE_APPEND + "\n"
    again = subprocess.run(patch, capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and "already" in again.stdout
    assert (boot / "cmdline.txt").read_text() == patched
    # The clean-up line of firstrun.sh, run on the patched file (raspi-config may have added a parameter after it).
    (boot / "cmdline.txt").write_text(patched.rstrip("\n") + " cfg80211.ieee80211_regdom=JP\n")
    (expr,) = re.findall(r"sed -i '(s\|.*?\|\|)' \"\$BOOT/cmdline\.txt\"", (bookworm / "firstrun.sh").read_text())
    subprocess.run(["sed", "-i", expr, str(boot / "cmdline.txt")], check=True, timeout=30)
    assert (boot / "cmdline.txt").read_text() == CMDLINE.rstrip("\n") + " cfg80211.ieee80211_regdom=JP\n"
    # Not a Pi's command line, or more than one line: left alone.
    for bad in ("hello world\n", CMDLINE + "second line\n"):
        (boot / "cmdline.txt").write_text(bad)
        res = subprocess.run(patch, capture_output=True, text=True, timeout=30)
        assert res.returncode == 1 and (boot / "cmdline.txt").read_text() == bad


# --- secrets, manifest ------------------------------------------------------------------------------------------

def test_secret_files_are_private(trixie, bookworm, bus_trixie):
    assert _mode(trixie) == _mode(bookworm) == 0o700
    for out, secret, public in (
        (trixie, ["user-data", "network-config"], ["meta-data", "README.txt", "cityos/MANIFEST.json"]),
        (bookworm, ["firstrun.sh"], ["cmdline.txt.append", "cityos/patch-cmdline.sh", "README.txt"]),
        (bus_trixie, ["user-data"], ["network-config", "meta-data"]),
    ):
        for name in secret:
            assert _mode(out / name) == 0o600, (out, name)
        for name in public:
            assert _mode(out / name) == 0o644, (out, name)
        manifest = json.loads((out / "cityos/MANIFEST.json").read_text())
        assert {f["name"] for f in manifest["boot_files"] if f["secret"]} == set(secret)
        text = (out / "cityos/MANIFEST.json").read_text() + (out / "README.txt").read_text()
        assert "PRIVATE KEY" not in text and PSK not in text


def test_no_secret_is_printed(registry, wheelhouse, inputs, tmp_path, capfd, caplog):
    """The command prints where the bundle is, never the key, the config's secrets or the Wi-Fi passphrase; nor do
    its errors."""
    from cityos_cli.cli import main

    rc = main(["fleet", "--registry", str(registry.dir), "bundle", "gw-meter-01", "--image", "raspios-trixie",
               "--out", str(tmp_path / "out"), "--arch", HERE_ARCH, "--python", HERE_PY, "--wheelhouse",
               str(wheelhouse), "--ssh-key", str(inputs["ssh_key"]), "--wifi", f"{SSID},{inputs['psk']}"])
    bad_psk = tmp_path / "short"
    bad_psk.write_text("shh-42\n")
    rc_bad = main(["fleet", "--registry", str(registry.dir), "bundle", "gw-meter-01", "--image", "raspios-trixie",
                   "--out", str(tmp_path / "out2"), "--wheelhouse", str(wheelhouse), "--wifi", f"x,{bad_psk}"])
    printed = "".join(capfd.readouterr()) + caplog.text
    assert rc == 0 and rc_bad == 1
    assert "first-boot bundle for gw-meter-01" in printed
    assert "not a WPA passphrase" in printed and not (tmp_path / "out2").exists()
    key = registry.identity("gw-meter-01", issue=False).key_file.read_text()
    meter = registry.gateway("gw-meter-01").config["sources"][0]
    secrets = [ln for ln in key.splitlines() if len(ln) > 16] + ["PRIVATE KEY", PSK, "shh-42"]
    secrets += [v for k, v in meter.items() if k in ("rbid", "password")]  # if the config holds them inline
    for s in secrets:
        assert s not in printed
    # A config may hold secrets: it is 0640 root:cityos on the gateway, and only the user-data carries it.
    toml = _written(tmp_path / "out")[bundle.CONFIG]
    assert (toml["permissions"], toml["owner"]) == ("0640", "root:cityos")


def test_manifest_matches_the_bundle(trixie, registry):
    m = json.loads((trixie / "cityos/MANIFEST.json").read_text())
    rec = registry.gateway("gw-forest-01")
    assert (m["gateway_id"], m["family"], m["config_hash"]) == ("gw-forest-01", "forest", rec.config_hash)
    assert (m["image"], m["first_boot"], m["arch"], m["python"]) == ("raspios-trixie", "cloud-init", HERE_ARCH, HERE_PY)
    assert m["certificate"]["serial"] == f"{rec.cert_serial:x}"
    assert m["service_user"] == {"name": "cityos", "groups": ["dialout"]}
    wheels = sorted((trixie / "cityos/wheelhouse").glob("*.whl"))
    assert [w["file"] for w in m["wheels"]] == [w.name for w in wheels]
    for entry, w in zip(m["wheels"], wheels, strict=True):
        assert entry["sha256"] == hashlib.sha256(w.read_bytes()).hexdigest() and entry["size"] == w.stat().st_size
    assert {f["path"]: (f["mode"], f["owner"]) for f in m["gateway_files"]} == {
        p: (e["permissions"], e["owner"]) for p, e in _written(trixie).items()}
    names = {w.name.split("-")[0].lower() for w in wheels}
    assert {"cityos_telemetry", "pip", "paho_mqtt", "pyserial", "momonga", "pynmea2", "bleak", "pydantic", "msgspec"} <= names
    assert not names & {"httpx", "fastapi", "cryptography", "pymodbus", "numpy"}  # the gateway's install only


def test_the_bundle_refuses(registry, wheelhouse, inputs, tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    (out / "user-data").write_text("#cloud-config\n")
    with pytest.raises(FleetError, match="not an empty folder"):
        _build(registry, wheelhouse, out, "gw-forest-01", "raspios-trixie")
    with pytest.raises(FleetError, match="private key"):
        _build(registry, wheelhouse, tmp_path / "a", "gw-forest-01", "raspios-trixie",
               ssh_key=registry.identity("gw-forest-01", issue=False).key_file)
    with pytest.raises(FleetError, match="SSID,PSKFILE"):
        _build(registry, wheelhouse, tmp_path / "b", "gw-forest-01", "raspios-trixie", wifi="just-an-ssid")
    with pytest.raises(FleetError, match="no gateway"):
        _build(registry, wheelhouse, tmp_path / "c", "gw-nope-01", "raspios-trixie")
    reg = Registry.open_or_create(tmp_path / "fleet")
    reg.set_broker(BrokerSettings(host="mqtt.city.example.jp"))
    reg.add("gw-forest-07", "forest", Site(district="加茂"), read_toml(ROOT / "edge/sources/forest/sample.toml"))
    reg.revoke("gw-forest-07")
    with pytest.raises(FleetError, match="revoked"):
        _build(reg, wheelhouse, tmp_path / "d", "gw-forest-07", "raspios-trixie")
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_udev_rules_for_several_adapters_of_one_kind(registry):
    """Two Wi-SUN sticks on one gateway can only be told apart by their serials: the rules wait for them, and the
    technician is told."""
    rules, attention = bundle.udev_rules("gw-meter-01", registry.gateway("gw-meter-01").config)
    assert rules is not None
    active = [ln for ln in rules.splitlines() if ln.startswith("SUBSYSTEM")]
    waiting = [ln for ln in rules.splitlines() if ln.startswith("#SUBSYSTEM")]
    assert active == [] and len(waiting) == 2
    assert all('ATTRS{serial}=="REPLACE_ME"' in ln for ln in waiting)
    assert len(attention) == 2 and "/dev/wisun-hh-0002" in attention[1]
    one = {"sources": [{"type": "garbage_truck", "name": "t", "indicator_port": "/dev/ttyINDICATOR",
                        "gps_port": "/dev/ttyGPS"}, {"type": "x", "name": "k", "port": "/dev/ttyUSB3"}]}
    rules, attention = bundle.udev_rules("gw-truck-07", one)
    assert attention == [] and rules is not None
    assert 'ATTRS{idVendor}=="1546", ATTRS{idProduct}=="01a8", SYMLINK+="ttyGPS"' in rules
    assert 'ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", SYMLINK+="ttyINDICATOR"' in rules
    assert "ttyUSB3: a kernel name" in rules


@pytest.mark.parametrize("value", [1.5, -0.25, 7, 0,
    "plain", "yes", "0640", "", "a: b # c", "-lead", "* star", "'quoted'", '"double"', "tab\there", "日本語 加茂",
    "line\n", "two\nlines\n", "no final\nbreak", "trailing\n\n", " leading space\n", "\nleading break",
    "x\u2028y", "nel\x85z", "bell\x07", "del\x7f", "bom\ufeff", "emoji 🚌", "back\\slash", "trail space \nx\n"])
def test_yaml_reads_back(value):
    key = value if isinstance(value, str) and value else "other"
    data = {"k": value, key: [value, [value, 1, True, None]], "n": {"deep": {"list": [{"a": value}]}}}
    assert yaml.safe_load(bundle.to_yaml(data)) == data


# --- the install, offline, into a scratch root ------------------------------------------------------------------

@dataclass
class ScratchGateway:
    """The bundle installed as the first boot would, under ``root`` instead of ``/``: the agent in ``venv`` (from
    the bundle's wheelhouse, no package index, the first-boot script's own pip command), the bundle's files, and
    ``config``, the bundle's gateway.toml with every absolute path moved under ``root``. Each serial port the
    config names is a link to a pseudo-terminal (``ports``), for a simulated device to take over."""

    root: Path
    venv: Path
    config: Path
    bundle: Path
    ports: dict[str, Path] = field(default_factory=dict)
    fds: list[int] = field(default_factory=list)

    def cityos(self, *args: str, offline: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The installed ``cityos``; ``offline``: in a network namespace of its own (no loopback broker either)."""
        argv = [str(self.venv / "bin/cityos"), *args]
        return subprocess.run(_offline(argv) if offline else argv, capture_output=True, text=True,
                              timeout=timeout, env=_pip_env())

    def unit_command(self, key: str = "ExecStart") -> list[str]:
        """The bundle's unit's command line (``ExecStart`` or ``ExecStartPre``), on the scratch venv and config."""
        unit = _written(self.bundle)["/etc/systemd/system/cityos-gateway.service"]["content"]
        (line,) = [ln.split("=", 1)[1].lstrip("-") for ln in unit.splitlines() if ln.startswith(f"{key}=")]
        return [str(self.venv / "bin/cityos") if a == f"{bundle.VENV}/bin/cityos" else
                str(self.config) if a == bundle.CONFIG else a for a in line.split()]


def _under(root: Path, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _under(root, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_under(root, v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return str(root / value.lstrip("/"))
    return value


def first_boot(out: Path, root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """What the first boot does with the Trixie bundle in ``out``, under ``root`` instead of ``/``: its files
    written with their modes, and the agent installed into its venv from the bundle's wheelhouse with the
    first-boot script's own pip command and no network. Returns the venv and the bundle's files."""
    files = _written(out)
    for path, entry in files.items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(entry["content"])
        dest.chmod(int(entry["permissions"], 8))
    (root / "var/lib/cityos").mkdir(parents=True, exist_ok=True)
    manifest = json.loads((out / "cityos/MANIFEST.json").read_text())
    pip_wheel = next(w["file"] for w in manifest["wheels"] if w["file"].startswith("pip-"))
    version = next(w["file"] for w in manifest["wheels"] if w["file"].startswith("cityos_telemetry-")).split("-")[1]
    venv = root / bundle.VENV.lstrip("/")
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True, timeout=120)
    res = subprocess.run(_offline(bundle.install_argv(venv, out / "cityos/wheelhouse", pip_wheel, version)),
                         capture_output=True, text=True, timeout=300, env=_pip_env())
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = subprocess.run(bundle.compile_argv(venv), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPYCACHEPREFIX": str(_pycache(root)), "PYTHONDONTWRITEBYTECODE": ""})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return venv, files


def _pycache(root: Path) -> Path:
    return root / bundle.PYCACHE.lstrip("/")


@pytest.fixture(scope="session")
def scratch_gateway(trixie, tmp_path_factory) -> Iterator[ScratchGateway]:
    root = tmp_path_factory.mktemp("gateway-root")
    venv, files = first_boot(trixie, root)
    raw = tomllib.loads(files[bundle.CONFIG]["content"])
    gw = ScratchGateway(root, venv, root / "etc/cityos/gateway-scratch.toml", trixie)
    for _, _, _, dev in bundle.serial_ports(raw):
        master, slave = os.openpty()
        gw.fds += [master, slave]
        link = root / dev.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.ttyname(slave))
        gw.ports[dev] = link
    gw.config.write_text(dump_toml(_under(root, raw), "the bundle's gateway.toml, its paths under a scratch root"))
    try:
        yield gw
    finally:
        for fd in gw.fds:
            os.close(fd)


def test_installs_offline_from_the_wheelhouse_and_checks(scratch_gateway, trixie):
    gw = scratch_gateway
    assert gw.unit_command("ExecStartPre")[1:] == ["gateway", "check", "--config", str(gw.config)]
    assert gw.unit_command()[1:] == ["gateway", "run", "--config", str(gw.config)]
    res = gw.cityos(*gw.unit_command("ExecStartPre")[1:], "--json")
    # Offline (no network here, as on a gateway before it is on site): every line passes but the broker's name.
    failing = {line["name"] for line in json.loads(res.stdout) if not line["ok"]}
    assert failing <= {"broker address"}, res.stdout + res.stderr
    assert "gw-forest-01" in res.stdout
    # The venv holds exactly the wheelhouse (less pip, which installs from its own wheel), from the wheels.
    listing = subprocess.run(
        [str(gw.venv / "bin/python"), "-c", "import importlib.metadata as m, json; print(json.dumps(sorted("
         "(d.metadata['Name'].lower().replace('_', '-'), d.version) for d in m.distributions())))"],
        capture_output=True, text=True, check=True, timeout=60)
    installed = {tuple(x) for x in json.loads(listing.stdout)}
    wheels = set()
    for w in (trixie / "cityos/wheelhouse").glob("*.whl"):
        with zipfile.ZipFile(w) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        name = re.search(r"^Name: (.+)$", meta, re.M)[1].strip().lower().replace("_", "-")
        version = re.search(r"^Version: (.+)$", meta, re.M)[1].strip()
        if name != "pip":
            wheels.add((name, version))
    assert installed == wheels
    (own,) = (gw.venv / "lib").glob("python*/site-packages/cityos_telemetry-*.dist-info")
    assert not (own / "direct_url.json").exists()  # from the wheelhouse, not a link to this source tree
    # The wheel carries the bundle's templates (hatchling ships a package's data files): an installed
    # `cityos fleet bundle` renders the same files as this source tree.
    assert (own.parent / "fleet/templates/cityos-gateway.service").read_text() == (
        ROOT / "fleet/templates/cityos-gateway.service").read_text()


def test_the_agent_compiles_nothing_at_start(scratch_gateway, bus_trixie):
    """The unit runs the agent with -OO (PYTHONOPTIMIZE=2) and its bytecode in a cache the service cannot write: the
    first boot compiled every module the agent of any family imports (its venv's and the standard library's), so it
    loads them and compiles none at each start."""
    unit = _written(bus_trixie)["/etc/systemd/system/cityos-gateway.service"]["content"]
    env = dict(ln.removeprefix("Environment=").partition("=")[::2] for ln in unit.splitlines()
               if ln.startswith("Environment="))
    assert env["PYTHONOPTIMIZE"] == "2" and env["PYTHONPYCACHEPREFIX"] == bundle.PYCACHE
    gw = scratch_gateway
    code = ("import os, sys; import cityos_cli.cli, edge.agent, edge.check; from edge.sources.base import registry; "
            "registry(); import encodings.idna; "
            "print(sorted(n for n, m in list(sys.modules.items()) "
            "if getattr(m, '__cached__', None) and not os.path.exists(m.__cached__)))")
    res = subprocess.run([str(gw.venv / "bin/python"), "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=gw.root,
                         env={**os.environ, **env, "PYTHONPYCACHEPREFIX": str(_pycache(gw.root)),
                              "PYTHONDONTWRITEBYTECODE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_the_unit_as_systemd_reads_it(scratch_gateway, bus_trixie):
    """The unit with every drop-in the bundle can add, through systemd-analyze: no unknown setting, the commands
    exist (pointed at the scratch venv's cityos), and the hardening scores as it should."""
    analyze = _tool("systemd-analyze", "systemd")
    files = _written(bus_trixie)
    unit = files["/etc/systemd/system/cityos-gateway.service"]["content"]
    drops = [files[f"/etc/systemd/system/cityos-gateway.service.d/{n}"]["content"]
             for n in ("10-serial.conf", "20-bluetooth.conf")]
    text = "\n".join([unit, *drops]).replace("/opt/cityos/bin/cityos", str(scratch_gateway.venv / "bin/cityos"))
    path = scratch_gateway.root / "verify" / "cityos-gateway.service"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    res = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Unknown" not in out and "ignoring" not in out, out
    sec = subprocess.run([analyze, "security", "--offline=true", str(path)], capture_output=True, text=True,
                         timeout=60)
    score = re.search(r"Overall exposure level for cityos-gateway\.service: ([0-9.]+)", sec.stdout)
    assert score is not None, sec.stdout[-500:] + sec.stderr
    assert float(score[1]) <= 4.0, sec.stdout[-3000:]
    for name in ("User=cityos", "ProtectSystem=strict", "ReadWritePaths=/var/lib/cityos", "StateDirectory=cityos",
                 "NoNewPrivileges=true", "PrivateTmp=true", "ProtectHome=true", "Restart=always"):
        assert name in unit.splitlines()
    assert "ProtectClock" not in "".join(ln for ln in unit.splitlines() if not ln.startswith("#"))


def test_hardware_files_are_the_bundles(bus_trixie):
    """hardware/gateway/ links to the templates the bundle renders from: one copy of each file."""
    files = _written(bus_trixie)
    hw = ROOT / "hardware/gateway"
    for rel, path in (("cityos-gateway.service", "/etc/systemd/system/cityos-gateway.service"),
                      ("cityos-gateway.service.d/10-serial.conf",
                       "/etc/systemd/system/cityos-gateway.service.d/10-serial.conf"),
                      ("cityos-gateway.service.d/20-bluetooth.conf",
                       "/etc/systemd/system/cityos-gateway.service.d/20-bluetooth.conf"),
                      ("systemd-time-wait-sync.service.d/cityos.conf",
                       "/etc/systemd/system/systemd-time-wait-sync.service.d/cityos.conf")):
        assert (hw / rel).is_symlink() and (hw / rel).resolve().is_relative_to(ROOT / "fleet/templates")
        assert (hw / rel).read_text() == files[path]["content"], rel


# --- aarch64 for Trixie, from the package index -----------------------------------------------------------------

def test_aarch64_wheelhouse_for_trixie(registry, tmp_path):
    """The bundle a Pi 4/5 with Trixie gets: wheels for aarch64 and Python 3.13 (or pure ones) for the agent and
    every dependency of its edge extra, resolved for that machine (markers evaluated for it, not for this one)."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    out = bundle.build_bundle(registry, "gw-forest-01", image="raspios-trixie", out=tmp_path / "out")
    m = json.loads((out / "cityos/MANIFEST.json").read_text())
    assert (m["arch"], m["python"]) == ("aarch64", "3.13")
    wheels = {}
    for w in (out / "cityos/wheelhouse").glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(w.name)
        assert all(t.platform == "any" or t.platform.endswith("_aarch64") for t in tags), w.name
        assert all(t.interpreter in ("py3", "py2", "cp313") or t.abi == "abi3" for t in tags), w.name
        wheels[name] = (version, w)
    assert "aarch64" in "".join(w.name for _, w in wheels.values())  # pydantic-core, dbus-fast
    env = {"python_version": "3.13", "python_full_version": "3.13.5", "platform_machine": "aarch64",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    todo, seen = [(canonicalize_name("cityos-telemetry"), {"edge"})], set()
    while todo:
        name, extras = todo.pop()
        assert name in wheels, f"{name} is missing from the aarch64 wheelhouse"
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        with zipfile.ZipFile(wheels[name][1]) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        for line in re.findall(r"^Requires-Dist: (.+)$", meta, re.M):
            req = Requirement(line)
            if req.marker is not None and not any(
                    Marker(str(req.marker)).evaluate({**env, "extra": e}) for e in (extras or {""})):
                continue
            dep = canonicalize_name(req.name)
            assert dep in wheels, f"{name} needs {req} for aarch64/3.13: not in the wheelhouse"
            assert req.specifier.contains(wheels[dep][0], prereleases=True), f"{wheels[dep][1].name} vs {req}"
            todo.append((dep, set(req.extras)))
    print("aarch64 wheelhouse:", ", ".join(sorted(w.name for _, w in wheels.values())))
