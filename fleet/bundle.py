"""The first-boot bundle (`cityos fleet bundle`): what a technician copies onto the FAT boot partition of a freshly
flashed stock Raspberry Pi OS image, so that the gateway sets itself up on its first boot with no internet.

One plan, two renderings. :func:`plan` gathers what the gateway needs, the same for every image: its users (the
system user ``cityos``, an admin only with ``--ssh-key``), its files with their owners and modes (config, CA,
certificate and key, the systemd unit and its per-family drop-ins, the udev rules, the first-boot script), its
network and the wheels of the agent for the image's Python and CPU. The first-boot script
(``templates/cityos-firstboot.sh``) is where the commands live, so both images run the same ones:

* **raspios-trixie** (cloud-init, the first-boot mechanism of the images since October 2025): ``user-data``
  (users, ``write_files``, ``runcmd``), ``network-config`` (netplan v2), ``meta-data`` (instance-id, hostname);
* **raspios-bookworm**: ``firstrun.sh`` run by ``systemd.run=`` from ``cmdline.txt`` (as Raspberry Pi Imager does),
  with the same users, files and script, plus ``cmdline.txt.append`` and ``cityos/patch-cmdline.sh``.

Both carry ``cityos/wheelhouse/`` (the agent and every dependency of its ``edge`` extra, plus pip),
``cityos/MANIFEST.json`` and a ``README.txt`` for the technician. Why each piece is as it is:
docs/provisioning.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

from cityos.config import config_hash, dump_toml
from cityos.families import by_name
from fleet.pki import certificate_info, write_private
from fleet.registry import FleetError, GatewayRecord, Registry

__all__ = ["ADAPTERS", "IMAGES", "Image", "Plan", "Target", "Wifi", "build_bundle", "collect_wheels", "compile_argv",
           "firstrun_files", "install_argv", "parse_wifi", "plan", "serial_ports", "to_yaml", "udev_rules"]

log = logging.getLogger(__name__)

SERVICE_USER = "cityos"
ADMIN_USER = "cityos-admin"
VENV = "/opt/cityos"
#: The agent's bytecode for its unit's ``PYTHONOPTIMIZE=2`` (the unit's ``PYTHONPYCACHEPREFIX``): compiled at install
#: (:func:`compile_argv`), read-only to the service.
PYCACHE = f"{VENV}/pycache"
#: Where Raspberry Pi OS mounts the FAT boot partition (Bookworm and Trixie alike).
BOOT = "/boot/firmware"
WHEELHOUSE = f"{BOOT}/cityos/wheelhouse"
FIRSTBOOT = "/usr/local/sbin/cityos-firstboot"
RESULT = f"{BOOT}/cityos/FIRSTBOOT-RESULT.txt"
#: The gateway config, as the systemd unit names it.
CONFIG = "/etc/cityos/gateway.toml"
UNITS = "/etc/systemd/system"
COUNTRY = "JP"
TIMEZONE = "Asia/Tokyo"
#: How long the first boot (and every boot, through systemd-time-wait-sync) waits for NTP before the agent starts.
CLOCK_WAIT_S = 180
DIST = "cityos-telemetry"
#: The Bookworm first-run entry for cmdline.txt (Raspberry Pi Imager's own).
CMDLINE_APPEND = (f"systemd.run={BOOT}/firstrun.sh systemd.run_success_action=reboot "
                  "systemd.unit=kernel-command-line.target")


@dataclass(frozen=True)
class Image:
    name: str
    title: str
    #: The image's Python (MAJOR.MINOR) and glibc: which wheels run on it.
    python: str
    glibc: tuple[int, int]
    #: "cloud-init" or "firstrun".
    first_boot: str


IMAGES: dict[str, Image] = {
    "raspios-trixie": Image("raspios-trixie", "Raspberry Pi OS Trixie", "3.13", (2, 41), "cloud-init"),
    "raspios-bookworm": Image("raspios-bookworm", "Raspberry Pi OS Bookworm", "3.11", (2, 36), "firstrun"),
}

_ARCHES = ("aarch64", "armv7l", "x86_64")


@dataclass(frozen=True)
class Target:
    """The machine the wheels are for: CPU, Python MAJOR.MINOR, newest glibc (manylinux) it has."""

    arch: str
    python: str
    glibc: tuple[int, int] = (2, 36)

    def __post_init__(self) -> None:
        if self.arch not in _ARCHES:
            raise FleetError(f"--arch {self.arch}: one of {', '.join(_ARCHES)}")
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise FleetError(f"--python {self.python}: give the image's Python as MAJOR.MINOR, e.g. 3.13")

    def pip_args(self) -> list[str]:
        """``pip download`` options that select wheels for this target only (no source builds)."""
        low = 5 if self.arch == "x86_64" else 17
        platforms = [f"manylinux_2_{m}_{self.arch}" for m in range(self.glibc[1], low - 1, -1)]
        platforms.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            platforms += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        abi = "cp" + self.python.replace(".", "")
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python,
                "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for p in platforms:
            args += ["--platform", p]
        return args


@dataclass(frozen=True)
class Wifi:
    ssid: str
    psk: str = field(repr=False)


@dataclass(frozen=True)
class GatewayFile:
    """A file the first boot writes on the gateway."""

    path: str
    content: str = field(repr=False)
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    secret: bool = False


@dataclass
class Plan:
    """Everything the gateway needs at its first boot, whatever the image; the renderers only spell it."""

    record: GatewayRecord
    image: Image
    target: Target
    groups: list[str]
    admin_key: str | None
    wifi: Wifi | None
    files: list[GatewayFile]
    wheels: list[Path]
    attention: list[str]
    instance_id: str = ""

    @property
    def gateway_id(self) -> str:
        return self.record.id


# --- inputs ----------------------------------------------------------------------------------------------------

_PSK_HEX = re.compile(r"[0-9A-Fa-f]{64}")
_SSH_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
                      r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?")


def parse_wifi(spec: str) -> Wifi:
    """``SSID,PSKFILE``: the passphrase is read from the file (never from a command line) and never repeated in a
    message."""
    ssid, sep, psk_file = spec.rpartition(",")
    if not sep or not ssid or not psk_file:
        raise FleetError("--wifi: give SSID,PSKFILE (the passphrase in a file of its own, 0600)")
    if len(ssid.encode()) > 32 or any(ord(c) < 32 or ord(c) == 127 for c in ssid):
        raise FleetError(f"--wifi: {ssid!r} is not an SSID (at most 32 bytes, no control characters)")
    try:
        raw = Path(psk_file).read_bytes()
    except OSError as exc:
        raise FleetError(f"--wifi: cannot read the passphrase file {psk_file}: {exc.strerror or exc}") from None
    try:
        psk = raw.decode("ascii").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise FleetError(f"--wifi: the passphrase in {psk_file} is not ASCII (WPA2/WPA3-personal: 8-63 printable "
                         "ASCII characters, or 64 hex digits)") from None
    if not (_PSK_HEX.fullmatch(psk) or (8 <= len(psk) <= 63 and all(32 <= ord(c) < 127 for c in psk))):
        raise FleetError(f"--wifi: the passphrase in {psk_file} is not a WPA passphrase (8-63 printable ASCII "
                         f"characters, or 64 hex digits; it has {len(psk)} characters)")
    return Wifi(ssid, psk)


def _read_ssh_key(path: Path) -> str:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(f"--ssh-key: cannot read {path}: {exc}") from None
    if "PRIVATE KEY" in text:
        raise FleetError(f"--ssh-key: {path} is a private key; give the public one ({path}.pub)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or not _SSH_KEY.fullmatch(lines[0]):
        raise FleetError(f"--ssh-key: {path} is not one OpenSSH public key line (ssh-ed25519 AAAA... comment)")
    return lines[0]


# --- wheels ----------------------------------------------------------------------------------------------------

def _run(argv: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-12:])
        raise FleetError(f"{what} failed (exit {res.returncode}):\n{tail}")
    return res


def _project_root() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    try:
        meta = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if meta.get("project", {}).get("name") == DIST else None


def build_project_wheel(directory: Path) -> Path:
    """The agent's own wheel, built from this source tree with ``pip wheel`` (hatchling, fetched by pip)."""
    root = _project_root()
    if root is None:
        raise FleetError("no cityos-telemetry source tree here to build the agent's wheel from: pass --wheelhouse "
                         "with a folder that holds a cityos_telemetry-*.whl")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "--wheel-dir",
          str(directory), str(root)], "building the cityos-telemetry wheel (pip wheel; it needs the hatchling "
         "build backend from the package index, or pass --wheelhouse with a cityos_telemetry wheel)")
    found = sorted(directory.glob("cityos_telemetry-*.whl"))
    if not found:
        raise FleetError(f"pip wheel built no cityos_telemetry wheel in {directory}")
    return found[-1]


def _wheel_version(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in path.name.split("-")[1].split("."))
    except ValueError:
        return (0,)


def collect_wheels(dest: Path, target: Target, *, source: Path | None = None,
                   project_wheel: Path | None = None) -> list[Path]:
    """Fill ``dest`` with the agent's wheel, every wheel of its ``edge`` extra for ``target``, and pip's (the first
    boot installs with it, whether or not the image has ensurepip). ``pip download`` resolves for the target's tags
    and Python, from the package index, or from ``source`` only (offline). The agent's wheel comes from ``source``
    if it holds one, else it is built from this source tree."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cityos-wheel-") as tmp:
        if project_wheel is None and source is not None:
            own = sorted(Path(source).glob("cityos_telemetry-*.whl"), key=_wheel_version)
            project_wheel = own[-1] if own else None
        if project_wheel is None:
            project_wheel = build_project_wheel(Path(tmp))
        argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest", str(dest),
                *target.pip_args()]
        if source is not None:
            argv += ["--no-index", "--find-links", str(source)]
        argv += [f"{project_wheel}[edge]", "pip"]
        where = f"from {source} (offline)" if source is not None else "from the package index"
        _run(argv, f"pip download of the agent's wheels for {target.arch}, Python {target.python}, {where}")
    wheels = sorted(dest.glob("*.whl"))
    for name in ("cityos_telemetry-", "pip-"):
        if not any(w.name.startswith(name) for w in wheels):
            raise FleetError(f"the wheelhouse {dest} has no {name}*.whl")
    return wheels


def install_argv(venv: str | Path, wheelhouse: str | Path, pip_wheel: str, version: str) -> list[str]:
    """The install on the gateway: pip run from its own wheel in the wheelhouse, into the venv, from the wheelhouse
    only. Run it with ``PIP_CONFIG_FILE=/dev/null`` (no pip.conf of the image's, e.g. piwheels, takes part); the
    install test runs exactly this."""
    return [f"{venv}/bin/python", f"{wheelhouse}/{pip_wheel}/pip", "install", "--isolated", "--no-index",
            "--find-links", str(wheelhouse), "--only-binary=:all:", "--no-cache-dir", "--disable-pip-version-check",
            f"{DIST}[edge]=={version}"]


#: The standard library less what a gateway never imports (and the image's packages, which the venv does not see).
STDLIB_SKIP = r"/(site-packages|dist-packages|test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)/"
_COMPILE = (
    "import compileall, re, sys, sysconfig; p = sysconfig.get_paths(); "
    f"ok = compileall.compile_dir(p['stdlib'], quiet=1, workers=0, rx=re.compile({STDLIB_SKIP!r})); "
    "ok = compileall.compile_dir(p['purelib'], quiet=1, workers=0) and ok; "
    "sys.exit(0 if ok else 1)"
)


def compile_argv(venv: str | Path) -> list[str]:
    """The agent's bytecode for its unit (``PYTHONOPTIMIZE=2``: no docstrings, no asserts; 1.6 MB less resident
    memory): the venv's packages and the standard library, compiled with ``-OO``. Run it with
    ``PYTHONPYCACHEPREFIX`` = :data:`PYCACHE`, as the unit: the service cannot write there, so without this it would
    compile every module at each start. The install test runs exactly this."""
    return [f"{venv}/bin/python", "-OO", "-c", _COMPILE]


# --- the files of a gateway -------------------------------------------------------------------------------------

def _template(name: str) -> str:
    return (package_files("fleet") / "templates" / name).read_text(encoding="utf-8")


def _fill(text: str, **values: str) -> str:
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise AssertionError(f"template placeholders not filled: {left}")
    return text


@dataclass(frozen=True)
class Adapter:
    """A kind of USB serial adapter, as udev sees it."""

    what: str
    vendor: str
    product: str | None = None


FTDI_RS485 = Adapter("RS-485/RS-232 adapter (FTDI FT232R)", "0403", "6001")
WISUN_STICK = Adapter("Wi-SUN B-route stick (FTDI)", "0403")
UBLOX_GPS = Adapter("GPS receiver (u-blox, CDC-ACM)", "1546", "01a8")
#: (source type, config key) -> the adapter behind that port (hardware/<family>/README.md).
ADAPTERS: dict[tuple[str, str], Adapter] = {
    ("forest_station", "port"): FTDI_RS485,
    ("smart_meter", "port"): WISUN_STICK,
    ("garbage_truck", "indicator_port"): FTDI_RS485,
    ("garbage_truck", "gps_port"): UBLOX_GPS,
    ("bus", "gps_port"): UBLOX_GPS,
}
#: Names the kernel gives (no rule makes them): they may change with plug order, but need no udev rule.
_KERNEL_TTY = re.compile(r"/dev/(tty(USB|ACM|AMA|S)\d+|serial\d+|serial/by-(id|path)/.+)")


def serial_ports(config: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(source type, source name, key, device path) of every serial port the gateway config names."""
    out = []
    for src in config.get("sources", []):
        for key, value in src.items():
            if (key == "port" or key.endswith("_port")) and isinstance(value, str) and value.startswith("/dev/"):
                out.append((str(src.get("type")), str(src.get("name")), key, value))
    return out


def _rule(a: Adapter, link: str, serial: str | None = None) -> str:
    match = [f'ATTRS{{idVendor}}=="{a.vendor}"']
    if a.product:
        match.append(f'ATTRS{{idProduct}}=="{a.product}"')
    if serial:
        match.append(f'ATTRS{{serial}}=="{serial}"')
    return f'SUBSYSTEM=="tty", {", ".join(match)}, SYMLINK+="{link}", GROUP="dialout", MODE="0660"'


def udev_rules(gateway_id: str, config: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The gateway's 99-cityos-serial.rules (stable names for the ports its config names) and what the technician
    must finish by hand: an adapter kind that appears twice on one gateway can only be told apart by its serial
    number, which nobody knows before it is plugged in."""
    ports = serial_ports(config)
    if not ports:
        return None, []
    kinds = Counter(ADAPTERS.get((t, k)) for t, _, k, p in ports if not _KERNEL_TTY.fullmatch(p))
    lines = [f"# Stable names for {gateway_id}'s serial adapters (written by `cityos fleet bundle`), so the config",
             "# never depends on plug order (/dev/ttyUSB0...). The adapters' group is dialout, the agent's group.", ""]
    attention = []
    for stype, name, key, path in ports:
        if _KERNEL_TTY.fullmatch(path):
            lines += [f"# {name}.{key} = {path}: a kernel name (no rule makes it; it may change with plug order)", ""]
            continue
        link = path.removeprefix("/dev/")
        a = ADAPTERS.get((stype, key))
        if a is None or kinds[a] > 1:
            a = a or Adapter("adapter", "REPLACE_ME")
            lines += [f"# {name}.{key} = {path} ({a.what}): this gateway has more than one such adapter, or an",
                      "# unknown one: set its serial (udevadm info -a -n /dev/ttyUSB0 | grep '{serial}') and remove",
                      "# the '#' in front of the rule.", "#" + _rule(a, link, serial="REPLACE_ME"), ""]
            attention.append(f"{path} ({name}.{key}): set the adapter's serial number in "
                             "/etc/udev/rules.d/99-cityos-serial.rules on the gateway (several adapters of one kind "
                             "can only be told apart by it), then `udevadm control --reload && udevadm trigger`")
        else:
            lines += [f"# {name}.{key} = {path}: {a.what}", _rule(a, link), ""]
    return "\n".join(lines).rstrip("\n") + "\n", attention


def _referenced_paths(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, path) of every absolute path in the sources that is neither a device nor made by the agent."""
    def walk(where: str, v: Any) -> Iterator[tuple[str, str]]:
        if isinstance(v, dict):
            for k, x in v.items():
                yield from walk(f"{where}.{k}", x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                yield from walk(f"{where}[{i}]", x)
        elif isinstance(v, str) and v.startswith("/") and not v.startswith("/dev/"):
            yield where, v

    for src in config.get("sources", []):
        yield from walk(f"sources[{src.get('name')}]", src)


def _unit_files(family: str, config: dict[str, Any]) -> tuple[list[GatewayFile], list[str]]:
    """The unit, its per-family drop-ins and the time-sync drop-in; the service user's groups."""
    out = [GatewayFile(f"{UNITS}/cityos-gateway.service", _template("cityos-gateway.service"))]
    groups = []
    if serial_ports(config):
        groups.append("dialout")
        out.append(GatewayFile(f"{UNITS}/cityos-gateway.service.d/10-serial.conf",
                               _template("cityos-gateway-serial.conf")))
    if family == "bus":
        groups.append("bluetooth")
        out.append(GatewayFile(f"{UNITS}/cityos-gateway.service.d/20-bluetooth.conf",
                               _template("cityos-gateway-bluetooth.conf")))
    out.append(GatewayFile(f"{UNITS}/systemd-time-wait-sync.service.d/cityos.conf", _template("time-wait-sync.conf")))
    return out, groups


def _tls_paths(rec: GatewayRecord) -> dict[str, str]:
    """Where the gateway's config expects its CA, certificate and key (the registry wrote them into it)."""
    mqtt = rec.config.get("mqtt", {})
    paths = {k: mqtt.get(k) for k in ("ca_file", "cert_file", "key_file")}
    bad = [k for k, v in paths.items() if not (isinstance(v, str) and v.startswith("/"))]
    if bad:
        raise FleetError(f"{rec.id}: its config has no absolute mqtt.{', mqtt.'.join(bad)}: the bundle installs the "
                         "gateway's identity where the config says (`cityos fleet add` writes them)")
    return {k: str(v) for k, v in paths.items()}


def _gateway_toml(rec: GatewayRecord) -> str:
    header = (f"{rec.id}: the config the fleet registry issued (hash {rec.config_hash}), written by its first-boot "
              f"bundle.\nIt may hold secrets: root:{SERVICE_USER} 0640. Changes show as config drift in "
              "`cityos fleet list`.")
    text = dump_toml(rec.config, header)
    if config_hash(tomllib.loads(text)) != rec.config_hash:
        raise FleetError(f"{rec.id}: the config does not read back as the one the registry hashed "
                         f"({rec.config_hash}); not writing a bundle that would show as drift")
    return text


def plan(registry: Registry, gateway_id: str, *, image: str, target: Target, wheels: list[Path],
         admin_key: str | None = None, wifi: Wifi | None = None) -> Plan:
    """What ``gateway_id`` needs at its first boot on ``image``, independent of how the image is told."""
    img = IMAGES[image]
    rec = registry.gateway(gateway_id)
    if rec.state != "active":
        raise FleetError(f"{gateway_id} is {rec.state}: no bundle for it (a revoked gateway is re-added under a "
                         "new id)")
    ident = registry.identity(gateway_id, issue=False)
    try:
        ca, cert, key = (ident.ca_file.read_text(), ident.cert_file.read_text(), ident.key_file.read_text())
    except OSError as exc:
        raise FleetError(f"{gateway_id}: cannot read its identity in {registry.dir}: {exc.strerror or exc}") from None
    info = certificate_info(cert.encode())
    serial = int(str(info["serial"]))
    if serial != rec.cert_serial:
        raise FleetError(f"{gateway_id}: its certificate file (serial {serial:x}) is not the one the "
                         f"registry holds (serial {rec.cert_serial:x})")
    attention = []
    not_after = info["not_after"]
    assert isinstance(not_after, dt.datetime)
    if not_after - dt.datetime.now(dt.UTC) < dt.timedelta(days=60):
        attention.append(f"its certificate expires on {not_after:%Y-%m-%d}: `cityos fleet rotate {gateway_id}` and "
                         "build the bundle again")
    tls = _tls_paths(rec)
    files = [
        GatewayFile(tls["ca_file"], ca),
        GatewayFile(tls["cert_file"], cert),
        GatewayFile(tls["key_file"], key, 0o600, SERVICE_USER, SERVICE_USER, secret=True),
        GatewayFile(CONFIG, _gateway_toml(rec), 0o640, "root", SERVICE_USER, secret=True),
    ]
    units, groups = _unit_files(rec.family, rec.config)
    files += units
    rules, more = udev_rules(gateway_id, rec.config)
    attention += more
    if rules is not None:
        files.append(GatewayFile("/etc/udev/rules.d/99-cityos-serial.rules", rules))
    if admin_key is not None:
        files.append(GatewayFile("/etc/ssh/sshd_config.d/cityos.conf", (
            f"# {gateway_id}: the admin logs in with a key only (written by the first-boot bundle).\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n"
            f"AllowUsers {ADMIN_USER}\n")))
    for where, path in _referenced_paths(rec.config):
        attention.append(f"{where} = {path}: the bundle does not deliver this file; put it on the gateway (owner "
                         f"root, readable by the group {SERVICE_USER}) or the source cannot start")
    pl = Plan(rec, img, target, groups, admin_key, wifi, files, wheels, attention)
    pl.files.append(GatewayFile(FIRSTBOOT, "", 0o700))  # placeholder: the script names the instance id
    pl.instance_id = f"{gateway_id}-{_digest(pl)[:12]}"
    pl.files[-1] = GatewayFile(FIRSTBOOT, _firstboot_script(pl), 0o700)
    return pl


def _digest(pl: Plan) -> str:
    """Hash of what the first boot applies (files, users, network, wheels): a new bundle is a new instance."""
    h = hashlib.sha256()
    blob = {"files": [(f.path, f.mode, f.owner, f.group, f.content) for f in pl.files], "groups": pl.groups,
            "admin": pl.admin_key, "wifi": [pl.wifi.ssid, pl.wifi.psk] if pl.wifi else None,
            "image": pl.image.name, "target": [pl.target.arch, pl.target.python],
            "wheels": [w.name for w in pl.wheels]}
    h.update(json.dumps(blob, sort_keys=True).encode())
    return h.hexdigest()


def _firstboot_script(pl: Plan) -> str:
    pip_wheel = next(w.name for w in pl.wheels if w.name.startswith("pip-"))
    own = next(w for w in pl.wheels if w.name.startswith("cityos_telemetry-"))
    version = own.name.split("-")[1]
    q = shlex.quote
    dirs = sorted({str(Path(p).parent) for p in (*_tls_paths(pl.record).values(), CONFIG)})
    perms = [f"chown root:{SERVICE_USER} {q(d)} && chmod 0750 {q(d)}" for d in dirs]
    for f in pl.files:
        if str(Path(f.path).parent) in dirs:
            perms.append(f"chown {f.owner}:{f.group} {q(f.path)} && chmod {f.mode:04o} {q(f.path)}")
    enable, start = [], []
    if pl.admin_key is not None:
        enable.append("systemctl enable ssh.service")
        start.append("systemctl start --no-block ssh.service")
    if pl.wifi is not None:
        enable += ["rfkill unblock wifi 2>/dev/null || true",
                   'for f in /var/lib/systemd/rfkill/*:wlan; do if [ -e "$f" ]; then echo 0 >"$f"; fi; done']
    return _fill(
        _template("cityos-firstboot.sh"), GATEWAY_ID=pl.gateway_id, FAMILY=pl.record.family,
        INSTANCE_ID=pl.instance_id, ARCH=pl.target.arch, PYTHON=pl.target.python, USER=SERVICE_USER, VENV=VENV,
        WHEELHOUSE=WHEELHOUSE, CONFIG=CONFIG, LOG="/var/log/cityos-firstboot.log", RESULT=RESULT,
        CLOCK_WAIT_S=str(CLOCK_WAIT_S), PERMISSIONS="\n".join(perms),
        INSTALL=shlex.join(install_argv(VENV, WHEELHOUSE, pip_wheel, version)),
        PYCACHE=PYCACHE, COMPILE=shlex.join(compile_argv(VENV)),
        ENABLE_EXTRAS="\n".join(enable) or ":", START_EXTRAS="\n    ".join(start) or ":")


# --- YAML, for cloud-init ---------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
#: Characters a YAML reader refuses, or reads as a line break, even inside quotes: written as \u escapes.
_YAML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]")
_BLOCK_SAFE = re.compile("[^\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]*")


def _quoted(s: str) -> str:
    # A JSON string is a YAML double-quoted scalar, once the characters YAML treats differently are escaped.
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(s, ensure_ascii=False))


def _key(k: str) -> str:
    return k if _PLAIN_KEY.fullmatch(k) and k.lower() not in _YAML11_WORDS else _quoted(k)


def _scalar(v: Any, indent: int) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    if isinstance(v, dict | list):
        return "{}" if isinstance(v, dict) else "[]"
    s = str(v)
    # Multi-line text as a literal block (readable PEM, TOML, scripts), when it can be one exactly: "|" keeps one
    # final line break, "|-" none; more than one, a leading space or line break, or odd characters: quoted.
    if "\n" in s and not s.endswith("\n\n") and not s.startswith((" ", "\n")) and _BLOCK_SAFE.fullmatch(s):
        chomp, body = ("", s[:-1]) if s.endswith("\n") else ("-", s)
        pad = " " * indent
        return f"|{chomp}\n" + "\n".join(pad + ln if ln else "" for ln in body.split("\n"))
    return _quoted(s)


def _yaml(v: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, dict | list) and x:
                out.append(f"{pad}{_key(k)}:")
                out += _yaml(x, indent + 2)
            else:
                out.append(f"{pad}{_key(k)}: {_scalar(x, indent + 2)}")
    else:
        for x in v:
            if isinstance(x, dict) and x:
                sub = _yaml(x, indent + 2)
                sub[0] = f"{pad}- {sub[0][indent + 2:]}"
                out += sub
            elif isinstance(x, list) and x and not any(isinstance(y, dict | list) for y in x):
                out.append(f"{pad}- [{', '.join(_scalar(y, 0) if not isinstance(y, str) else _quoted(y) for y in x)}]")
            elif isinstance(x, list) and x:
                out.append(f"{pad}-")
                out += _yaml(x, indent + 2)
            else:
                out.append(f"{pad}- {_scalar(x, indent + 2)}")
    return out


def to_yaml(data: dict[str, Any] | list[Any], header: str = "") -> str:
    """``data`` (dicts, lists, strings, numbers, booleans) as block YAML that PyYAML, and so cloud-init, reads back
    as ``data``. (The fleet's install has no YAML library; what cloud-init needs is this small.)"""
    return header + "\n".join(_yaml(data, 0)) + "\n"


# --- renderings -------------------------------------------------------------------------------------------------

def _cloud_init(pl: Plan) -> dict[str, tuple[str, bool]]:
    """user-data, network-config, meta-data: name -> (text, holds a secret)."""
    gw = pl.gateway_id
    users: list[dict[str, Any]] = [{
        "name": SERVICE_USER, "gecos": "cityos gateway agent", "system": True, "no_create_home": True,
        "homedir": "/var/lib/cityos", "shell": "/usr/sbin/nologin", "lock_passwd": True}]
    if pl.groups:
        users[0]["groups"] = ",".join(pl.groups)
    if pl.admin_key is not None:
        users.append({"name": ADMIN_USER, "gecos": "cityos technician", "groups": "adm,sudo", "shell": "/bin/bash",
                      "lock_passwd": True, "sudo": "ALL=(ALL) NOPASSWD:ALL", "ssh_authorized_keys": [pl.admin_key]})
    write_files = []
    for f in pl.files:
        entry: dict[str, Any] = {"path": f.path, "owner": f"{f.owner}:{f.group}", "permissions": f"{f.mode:04o}"}
        if (f.owner, f.group) != ("root", "root"):
            # cloud-init writes files before it creates users (write_files runs in the init stage, users_groups
            # after it): a file owned by cityos waits for the final stage, which runs it before runcmd.
            entry["defer"] = True
        entry["content"] = f.content
        write_files.append(entry)
    # The secrets go from the boot partition whatever cityos-firstboot says (they are in /etc/cityos now, or the
    # card is set up again); a stub user-data with the same meta-data keeps cloud-init's instance as it is. The
    # script's exit status is runcmd's: a failure shows in `cloud-init status` too.
    erase = [f"{BOOT}/user-data"] + ([f"{BOOT}/network-config"] if pl.wifi is not None else [])
    firstboot = (f"{FIRSTBOOT} --start; rc=$?; "
                 f"for f in {' '.join(erase)}; do if [ -f \"$f\" ]; then shred -u \"$f\" || rm -f \"$f\"; fi; done; "
                 f"printf '%s\\n' '#cloud-config' '# {gw}: provisioned by its cityos first-boot bundle; the secrets "
                 f"this file held were erased after the first boot.' >{BOOT}/user-data; exit $rc")
    user_data = {
        "hostname": gw, "manage_etc_hosts": True, "timezone": TIMEZONE,
        "ssh_pwauth": False, "disable_root": True,
        "users": users,
        "write_files": write_files,
        "runcmd": [["sh", "-c", firstboot]],
    }
    ud_header = (f"#cloud-config\n# {gw} ({pl.record.family}): first-boot config written by `cityos fleet bundle`, "
                 f"bundle {pl.instance_id}.\n# It holds the gateway's private key: keep the card safe until its "
                 "first boot, which erases it from here.\n")
    net: dict[str, Any] = {"version": 2, "renderer": "NetworkManager",
                           "ethernets": {"eth0": {"dhcp4": True, "optional": True}}}
    if pl.wifi is not None:
        net["wifis"] = {"wlan0": {"dhcp4": True, "optional": True, "regulatory-domain": COUNTRY,
                                  "access-points": {pl.wifi.ssid: {"password": pl.wifi.psk}}}}
    nc_header = f"# {gw}: netplan v2 (cloud-init network-config): Ethernet by DHCP" + (
        f", Wi-Fi {pl.wifi.ssid!r}.\n" if pl.wifi else ".\n")
    meta = {"instance-id": pl.instance_id, "local-hostname": gw}
    return {"user-data": (to_yaml(user_data, ud_header), True),
            "network-config": (to_yaml({"network": net}, nc_header), pl.wifi is not None),
            "meta-data": (to_yaml(meta), False)}


_HEREDOC_END = "CITYOS_EOF"


def _nm_escape(s: str) -> str:
    """A GKeyFile string value (NetworkManager's keyfile)."""
    s = s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "\\s" + s[1:] if s.startswith(" ") else s


def _nmconnection(pl: Plan) -> GatewayFile:
    assert pl.wifi is not None
    ssid = pl.wifi.ssid
    ssid_value = (_nm_escape(ssid) if re.fullmatch(r"[^;\\\x00-\x1f]+", ssid) and not ssid.endswith(" ")
                  else "".join(f"{b};" for b in ssid.encode()))
    text = "\n".join([
        "[connection]", "id=cityos-wifi", f"uuid={uuid.uuid5(uuid.NAMESPACE_URL, f'cityos:{pl.gateway_id}:wifi')}",
        "type=wifi", "autoconnect=true", "", "[wifi]", "mode=infrastructure", f"ssid={ssid_value}", "",
        "[wifi-security]", "key-mgmt=wpa-psk", f"psk={_nm_escape(pl.wifi.psk)}", "",
        "[ipv4]", "method=auto", "", "[ipv6]", "addr-gen-mode=default", "method=auto", ""])
    return GatewayFile("/etc/NetworkManager/system-connections/cityos-wifi.nmconnection", text, 0o600, secret=True)


def _heredoc_file(f: GatewayFile) -> str:
    if not f.content.endswith("\n") or f"\n{_HEREDOC_END}\n" in f"\n{f.content}":
        raise AssertionError(f"{f.path}: cannot be written as a here-document")
    return (f"    cityos_file {shlex.quote(f.path)} {f.mode:04o} {f.owner} {f.group} <<'{_HEREDOC_END}'\n"
            f"{f.content}{_HEREDOC_END}")


def firstrun_files(pl: Plan) -> list[GatewayFile]:
    """The files firstrun.sh writes: the plan's, and what cloud-init would have made from its own keys."""
    out = list(pl.files)
    if pl.admin_key is not None:
        home = f"/home/{ADMIN_USER}"
        out += [GatewayFile(f"{home}/.ssh/authorized_keys", pl.admin_key + "\n", 0o600, ADMIN_USER, ADMIN_USER),
                GatewayFile(f"/etc/sudoers.d/{ADMIN_USER}", f"{ADMIN_USER} ALL=(ALL) NOPASSWD:ALL\n", 0o440)]
    if pl.wifi is not None:
        out.append(_nmconnection(pl))
    return out


def _firstrun(pl: Plan) -> str:
    users = []
    for g in pl.groups:
        users.append(f"    getent group {g} >/dev/null || groupadd --system {g}")
    users.append(f"    id -u {SERVICE_USER} >/dev/null 2>&1 || useradd --system --user-group --no-create-home "
                 f"--home-dir /var/lib/cityos --shell /usr/sbin/nologin --comment 'cityos gateway agent' {SERVICE_USER}")
    if pl.groups:
        users.append(f"    usermod --append --groups {','.join(pl.groups)} {SERVICE_USER}")
    if pl.admin_key is not None:
        users += [f"    id -u {ADMIN_USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --groups adm,sudo "
                  f"--comment 'cityos technician' {ADMIN_USER}",
                  f"    passwd --lock {ADMIN_USER}",
                  f"    install -d -m 0700 -o {ADMIN_USER} -g {ADMIN_USER} /home/{ADMIN_USER}/.ssh"]
    network = ["    # Ethernet: DHCP, NetworkManager's default."]
    if pl.wifi is not None:
        network.append(f"    if command -v raspi-config >/dev/null; then raspi-config nonint do_wifi_country {COUNTRY} "
                       "|| true; fi")
    pattern = re.sub(r"([.\[\]*^$\\])", r"\\\1", CMDLINE_APPEND)  # a sed BRE for the entry, "|" delimited
    return _fill(
        _template("firstrun.sh"), GATEWAY_ID=pl.gateway_id, INSTANCE_ID=pl.instance_id, BOOT=BOOT,
        HOSTNAME=pl.gateway_id, TIMEZONE=TIMEZONE, USERS="\n".join(users),
        FILES="\n".join(_heredoc_file(f) for f in firstrun_files(pl)), NETWORK="\n".join(network),
        FIRSTBOOT=FIRSTBOOT, CMDLINE_RE=" *" + pattern)


# --- the bundle -------------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _readme(pl: Plan, built_at: str) -> str:
    rec = pl.record
    fam = by_name(rec.family)
    site = " ".join(x for x in (rec.site.district, rec.site.asset) if x)
    attention = ("注意 / Attention:\n" + "".join(f"  * {a}\n" for a in pl.attention) + "\n") if pl.attention else ""
    ssh_ja = (f"SSH：{ADMIN_USER} で鍵認証のみ（パスワードなし）。 ssh {ADMIN_USER}@{rec.id}.local\n"
              if pl.admin_key else "SSH は無効（--ssh-key なしで作成）。\n")
    ssh_en = (f"SSH: {ADMIN_USER}, key only (no password): ssh {ADMIN_USER}@{rec.id}.local\n"
              if pl.admin_key else "SSH is off (built without --ssh-key).\n")
    wifi_ja = f"、または Wi-Fi「{pl.wifi.ssid}」" if pl.wifi else ""
    wifi_en = f", or Wi-Fi {pl.wifi.ssid!r}" if pl.wifi else ""
    name = "README-trixie.txt" if pl.image.first_boot == "cloud-init" else "README-bookworm.txt"
    values = dict(
        GATEWAY_ID=rec.id, FAMILY_LINE=f"{fam.title_ja} / {fam.title_en} · {site}", ARCH=pl.target.arch,
        PYTHON=pl.target.python, INSTANCE_ID=pl.instance_id, BUILT_AT=built_at, ATTENTION=attention,
        WIFI_JA=wifi_ja, WIFI_EN=wifi_en, SSH_JA=ssh_ja, SSH_EN=ssh_en)
    if name == "README-trixie.txt":
        values |= dict(CLOCK_WAIT_MIN=str(CLOCK_WAIT_S // 60), NETCFG_NOTE=", network-config" if pl.wifi else "")
    return _fill(_template(name), **values)


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FleetError(f"{out} exists and is not an empty folder: give a new one (a bundle never mixes with "
                         "another's files)")
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)


def build_bundle(registry: Registry, gateway_id: str, *, image: str, out: Path, arch: str = "aarch64",
                 python: str | None = None, wheelhouse: Path | None = None, ssh_key: Path | None = None,
                 wifi: str | None = None) -> Path:
    """Write ``gateway_id``'s first-boot bundle for ``image`` into ``out`` (a new or empty folder; secrets 0600)."""
    img = IMAGES.get(image)
    if img is None:
        raise FleetError(f"--image {image}: one of {', '.join(IMAGES)}")
    target = Target(arch, python or img.python, img.glibc)
    registry.gateway(gateway_id)  # fail before any download if there is no such gateway
    admin_key = _read_ssh_key(ssh_key) if ssh_key is not None else None
    wifi_ = parse_wifi(wifi) if wifi is not None else None
    out = Path(out)
    _prepare_out(out)
    try:
        wheels = collect_wheels(out / "cityos" / "wheelhouse", target, source=wheelhouse)
        pl = plan(registry, gateway_id, image=image, target=target, wheels=wheels, admin_key=admin_key, wifi=wifi_)
        _write(pl, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    for a in pl.attention:
        log.warning("%s: %s", gateway_id, a)
    return out


def _write(pl: Plan, out: Path) -> None:
    built_at = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    boot: dict[str, tuple[str, bool]]
    if pl.image.first_boot == "cloud-init":
        boot = _cloud_init(pl)
        gateway_files = pl.files
    else:
        patch = _template("patch-cmdline.sh")
        boot = {"firstrun.sh": (_firstrun(pl), True), "cmdline.txt.append": (CMDLINE_APPEND + "\n", False),
                "cityos/patch-cmdline.sh": (patch, False)}
        gateway_files = firstrun_files(pl)
    for name, (text, secret) in boot.items():
        write_private(out / name, text, 0o600 if secret else 0o644)
    write_private(out / "README.txt", _readme(pl, built_at), 0o644)
    rec = pl.record
    manifest = {
        "gateway_id": rec.id, "family": rec.family, "district": rec.site.district, "asset": rec.site.asset,
        "config_hash": rec.config_hash, "instance_id": pl.instance_id, "image": pl.image.name,
        "first_boot": pl.image.first_boot, "arch": pl.target.arch, "python": pl.target.python, "built_at": built_at,
        "certificate": {"serial": f"{rec.cert_serial:x}", "not_after": rec.cert_not_after.isoformat()},
        "boot_files": [{"name": n, "secret": s} for n, (_, s) in boot.items()],
        "gateway_files": [{"path": f.path, "mode": f"{f.mode:04o}", "owner": f"{f.owner}:{f.group}",
                           "secret": f.secret} for f in gateway_files],
        "service_user": {"name": SERVICE_USER, "groups": pl.groups},
        "admin_user": ADMIN_USER if pl.admin_key else None,
        "wifi_ssid": pl.wifi.ssid if pl.wifi else None,
        "wheels": [{"file": w.name, "sha256": _sha256(w), "size": w.stat().st_size} for w in pl.wheels],
        "attention": pl.attention,
    }
    write_private(out / "cityos" / "MANIFEST.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", 0o644)
