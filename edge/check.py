"""``cityos gateway check``: the commissioning checklist, on the gateway (issue 12, item 5).

Each line is ✓ or ✗ with what was found and, for a ✗, what a field technician does about it. The command exits 0
only if every line is ✓. ``--json`` prints the lines as a list of ``{"name", "ok", "detail", "hint"}`` for tools;
``name`` is stable (``device <id>`` for a device's line), the texts are for people. The lines, their failures and
their fixes are listed for technicians in docs/field-guide.md; keep the two in step.

What is checked, and the decisions behind it
--------------------------------------------
Offline (``check`` without ``--live``, and the first part of ``--live``): only what this machine can know alone.

* ``config``: the TOML parses and validates (:func:`edge.config.load_config`); else its error lines, and nothing
  more is checked.
* ``tls files``: the CA, certificate and key (and a broker password file) exist, are readable, the key is 0600,
  and they load as :meth:`cityos.credentials.MqttLogin.load_files` loads them at the agent's start. Beyond that:
  the certificate's CN is this gateway's id (the broker's ACL confines a gateway to the topics of its CN, so a
  certificate copied from another gateway's bundle would be refused) and it is valid now (an expired certificate,
  or a clock before its start). The CN and dates are read with the standard library's certificate decoder
  (``ssl._ssl._test_decode_cert``): the gateway does not install ``cryptography``; where that decoder is missing
  those two checks are left out, and the broker line still catches the result.
* ``tls settings``: the transport settings are coherent (the config model already refuses incoherent ones, so
  with a parsed config this line only says what was configured), and with TLS a client certificate is set: the
  city's broker requires one (a password login alone would be refused).
* ``broker address``: ``mqtt.host`` resolves (``getaddrinfo``, at most 10 s). A gateway flashed in the office has no
  network yet: the hint says to run again on site.
* ``serial ports``: every port setting of every source (the fields named ``port`` or ``*_port``: forest and meter
  ``port``, the truck's ``indicator_port`` and ``gps_port``, the bus's ``gps_port``) names a character device.
* ``ports not shared``: no device is named by two settings (compared by real path, so two udev links to one
  adapter are caught): two sources on one port would read each other's bytes.
* ``pseudonymous ids``: every device id starts with its family's ``device_prefix`` (:data:`cityos.families.FAMILIES`:
  ``forest-``, ``truck-``, ``bus-``) and a household meter's id is ``hh-`` and digits, nothing else: a meter id is
  a pseudonym (docs/privacy.md), so ``tanaka-hanako`` is refused. No id twice on one gateway (their series would
  merge in InfluxDB).
* ``bus ridership`` (only with a bus source): "a bus without ridership" is decided as (a) a GTFS feed without
  stops or without a trip with at least two stop times (no stop visit can ever be detected, so there is no
  ridership at all), or (b) an uncalibrated estimator: ``[sources.ridership]`` without ``devices_per_passenger``
  (its default 1.0 counts phones, not passengers; docs/bus.md, "Devices to passengers"). ``city_uuid`` (the app
  riders' origin-destination pairs) and ``capacity`` stay optional.
* ``secret files`` (only with sources that have secret files, today the meters' B-route ID and password): each
  file exists, is 0600 and holds what it should (the source's own ``credentials()``, as the agent reads them).
* ``outbox``: the outbox's directory exists or can be created (the check creates what is missing and removes it
  again: ``/proc/nope`` fails here), a file can be written in it (a real 4 KiB write, not ``access()``, which
  says yes to root on a full or odd filesystem; and, run as root where the service user ``cityos`` exists, the
  directory's mode lets that user write too), and the filesystem has room to spare: at least
  max(2 × the outbox's reserve, 64 MiB) free. With ``--live`` also: the agent can store (``outbox_disk_full`` 0).

Live (``--live``, on the gateway while its agent runs):

* ``agent``: read from the agent's local status file (``status.json`` beside the outbox, see :mod:`edge.agent`),
  never from the broker. The check verifies that the process it names is alive and is that agent (pid and process
  start time: a reused pid is not the agent), asks it for a fresh file (SIGUSR1; only sent to that verified
  process), and that the agent runs this very config (the config hash it reports = the hash of this file:
  otherwise the file was edited and the agent not restarted). Without a fresh file within 3 s the last one must
  be younger than 3 × ``mqtt.status_interval_s`` (by ``time.monotonic()`` and the kernel's boot id, immune to NTP
  steps). A stopped agent's file says ``offline`` and, if a thread died, its one line: the check shows it.
* ``device <id>``, one line per configured device, from the status file's ``devices`` (each source's
  ``devices()``): each forest station answers by its Modbus unit and has given a reading since the agent started;
  each meter's B-route session is online and a reading came (auth_failed, meter_not_found, a dead module and
  "still scanning" have their own hints); the truck's scale sends weight lines and its GPS has a fix; the bus's
  Bluetooth adapter is up and its GPS has a fix. The check waits up to ``--wait`` seconds (default 90) for every
  device to be ok, asking for a fresh status every second or so, and stops waiting early for what cannot change
  by waiting (a port that does not exist, a refused B-route password: the meter then waits an hour).
* ``clock``: synchronised and plausible. The source of truth is systemd's: ``timedatectl show -p NTPSynchronized
  --value`` (what ``timedatectl`` shows, from systemd-timesyncd or chrony) when it runs; where it is missing or
  cannot answer (no systemd, as in a container), the kernel's NTP state from adjtimex(2)
  (:func:`edge.clock.kernel_synced`, what the agent reports as ``gateway_clock_synced``). Tests put a
  ``timedatectl`` of their own first on ``PATH``: the command is an outside program whose answer is read, not our
  code, and the sandbox has no systemd to ask. Plausible = not before 2026-01-01 (:data:`edge.clock.MIN_PLAUSIBLE_EPOCH_S`).
* ``broker``: connect as the gateway, with the config's own TLS files (even when the tls files line found the
  certificate to be another gateway's: what the broker then says is the point), as client
  ``<id>-check-<random>``, and tell apart: unreachable (DNS, TCP refused or timed out), the broker's certificate
  not signed by ``mqtt.ca_file`` (or not for ``mqtt.host``), our certificate refused at the handshake (another CA,
  revoked, expired: by the broker's TLS alert), a refused login, and the ACL refusing this gateway (SUBACK or
  PUBACK 0x87). With TLS 1.3 the broker judges our certificate after the handshake and its alert arrives on the
  first read, in paho's network thread, which only logs it: the check reads paho's error log, and if the close
  came as a bare EOF it makes one more handshake of its own and only listens, to hear the alert. Seen with
  Mosquitto 2.0.11: after ``cityos fleet revoke`` and a reload (SIGHUP) a new connection of the revoked gateway is
  refused at the handshake (its CRL is read again too), so the check says "revoked"; the ACL's 0x87 is what a
  connection open before the reload gets, and what a certificate of another gateway gets (Mosquitto grants the
  subscription to a topic the ACL denies, and delivers nothing; the probe's PUBACK says 0x87).
* ``stored in influxdb``: a reading from this gateway proven stored, without any InfluxDB credential on the
  gateway. The round trip: subscribe to :func:`cityos.wire.receipt_topic` first, then publish at QoS 1 on
  :func:`cityos.wire.probe_topic` a :class:`~cityos.wire.TelemetryBatch` of one reading (device ``gateway``,
  kind ``gateway_probe``, value ``probe`` = 1) under a boot id unique to this run (``check-<hex>``); the ingest
  stores it like any telemetry and, after InfluxDB acknowledged the write, publishes a :class:`~cityos.wire.Receipt`
  with the same boot id and seq. The kind is in no family, so :func:`cityos.wire.measurement_for` maps it to a
  measurement of its own, ``gateway_probe`` (tags ``device=gateway``, ``gateway=<id>``): harmless (no dashboard
  or alert reads it) and a record of every commissioning run; :data:`cityos.wire.MEASUREMENTS` needs no entry.
  The round trip runs beside the device wait, so the check takes the longer of the two, not their sum.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cityos.config import ConfigError, config_hash, read_toml
from cityos.families import FAMILIES
from edge import clock
from edge.config import GatewayConfig, parse_config
from edge.health import field_name

__all__ = ["DEFAULT_CONFIG", "DEFAULT_WAIT_S", "Line", "render_json", "render_text", "run_check"]

#: Where the first-boot bundle installs the gateway's config.
DEFAULT_CONFIG = Path("/etc/cityos/gateway.toml")
DEFAULT_WAIT_S = 90.0
#: The systemd unit's service user (hardware/gateway/cityos-gateway.service).
SERVICE_USER = "cityos"
SERVICE = "cityos-gateway"
#: Room to spare beside the outbox: at least this, and at least twice its reserve.
MIN_FREE_BYTES = 64 * 1024 * 1024
#: The probe's reading: its own measurement in InfluxDB (see the module docstring).
PROBE_KIND = "gateway_probe"
PROBE_DEVICE = "gateway"
_DNS_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 10.0
_ACK_TIMEOUT_S = 10.0
#: How long the agent may take to answer SIGUSR1 with a fresh status file (its main loop ticks every second).
_POKE_TIMEOUT_S = 3.0
_POLL_S = 1.0
_NOT_AUTHORIZED = 0x87
_NO_SUBSCRIBERS = 0x10

HINT_AGENT = (
    f"the agent is not running: `sudo systemctl status {SERVICE}` and `sudo journalctl -u {SERVICE} -n 50` say "
    f"why; start it with `sudo systemctl restart {SERVICE}`"
)
HINT_SUDO = "run the check with sudo: the gateway's files belong to the service user cityos"
HINT_FLEET = "ask the fleet operator: `cityos fleet show {gw}`"


@dataclass
class Line:
    """One line of the checklist."""

    name: str
    ok: bool
    detail: str
    hint: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- running it -----------------------------------------------------------------------------------------------


def run_check(config_path: str | Path = DEFAULT_CONFIG, *, live: bool = False,
              wait_s: float = DEFAULT_WAIT_S) -> list[Line]:
    """The checklist for the config at ``config_path``: offline lines, and with ``live`` the live ones."""
    path = Path(config_path)
    try:
        raw = read_toml(path)
        cfg = parse_config(raw, str(path))
    except ConfigError as exc:
        return [Line("config", False, str(exc),
                     f"correct the settings named above in {path} (compare with the config the fleet registry "
                     "issued for this gateway, `cityos fleet show <id>`, or hardware/<family>/)")]
    lines = [Line("config", True, f"{path}: gateway {cfg.gateway.id}, {_sources_text(cfg)}")]
    lines += [_tls_files(cfg), _tls_settings(cfg), _broker_address(cfg), *_serial_ports(cfg),
              _pseudonymous_ids(cfg)]
    lines += [line for line in (_bus_ridership(cfg), _device_secrets(cfg)) if line is not None]
    outbox = _Outbox(cfg)
    lines.append(outbox.line())
    if live:
        lines += _live(cfg, config_hash(raw), lines, outbox, wait_s)
    return lines


def _sources_text(cfg: GatewayConfig) -> str:
    parts = ", ".join(f"{s.name} ({s.type})" for s in cfg.sources)
    return f"{len(cfg.sources)} source{'s' if len(cfg.sources) != 1 else ''}: {parts}"


def render_text(lines: list[Line]) -> str:
    out = []
    for line in lines:
        first, *rest = line.detail.splitlines() or [""]
        out.append(f"{'✓' if line.ok else '✗'} {line.name}: {first}")
        out += [f"      {r}" for r in rest]
        if not line.ok and line.hint:
            out.append(f"    → {line.hint}")
    failed = sum(not line.ok for line in lines)
    out.append(f"all {len(lines)} checks passed" if not failed else f"{failed} of {len(lines)} checks failed")
    return "\n".join(out)


def render_json(lines: list[Line]) -> str:
    return json.dumps([line.as_json() for line in lines], ensure_ascii=False, indent=2)


# --- offline ----------------------------------------------------------------------------------------------------


def _file_hint(message: str, gw: str) -> str:
    if "readable or writable by group/others" in message:
        return "make it private to the service user: `sudo chmod 600 FILE && sudo chown cityos: FILE`".replace(
            "FILE", _quoted_path(message))
    if "not readable by this user" in message:
        return HINT_SUDO
    if "does not exist" in message:
        return ("copy it from this gateway's bundle (`cityos fleet bundle`, docs/provisioning.md) to that path, "
                "or correct the path in the config")
    return f"the file is not what the setting expects: copy this gateway's own files from its bundle again ({HINT_FLEET.format(gw=gw)})"


def _quoted_path(message: str) -> str:
    m = re.search(r": (/\S+) ", message)
    return m.group(1) if m else "FILE"


def _tls_files(cfg: GatewayConfig) -> Line:
    m, gw = cfg.mqtt, cfg.gateway.id
    if not m.tls:
        return Line("tls files", True, "none (plaintext to a broker on this machine)")
    try:
        m.load_files("mqtt")
    except ConfigError as exc:
        return Line("tls files", False, str(exc), _file_hint(str(exc), gw))
    named = [f"{k} {getattr(m, k)}" for k in ("ca_file", "cert_file", "key_file") if getattr(m, k) is not None]
    problems: list[str] = []
    hints: list[str] = []
    cert = _decode_cert(m.cert_file) if m.cert_file is not None else None
    if cert is not None:
        cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), None)
        if cn is not None and cn != gw:
            problems.append(f"mqtt.cert_file {m.cert_file} is the certificate of {cn!r}, not of this gateway {gw!r}")
            hints.append(f"copy this gateway's own certificate and key from its bundle ({HINT_FLEET.format(gw=gw)})")
        now = time.time()
        with contextlib.suppress(KeyError, ValueError):
            if now > ssl.cert_time_to_seconds(cert["notAfter"]):
                problems.append(f"mqtt.cert_file {m.cert_file} expired on {cert['notAfter']}")
                hints.append(f"ask the fleet operator for a new one: `cityos fleet rotate {gw}`")
            elif now < ssl.cert_time_to_seconds(cert["notBefore"]):
                problems.append(f"mqtt.cert_file {m.cert_file} is not valid before {cert['notBefore']}: "
                                "this machine's clock is behind")
                hints.append("wait for the clock to synchronise (network and NTP; see the clock line), then run again")
    if problems:
        return Line("tls files", False, "\n".join(problems), "; ".join(hints))
    who = f", certificate of {gw}" if cert is not None else ""
    return Line("tls files", True, f"{'; '.join(named)} load{who}")


def _decode_cert(path: Path) -> dict[str, Any] | None:
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        return decode(str(path))
    except (OSError, ssl.SSLError, ValueError):
        return None


def _tls_settings(cfg: GatewayConfig) -> Line:
    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    if not m.tls:
        return Line("tls settings", True, f"plaintext MQTT to {where}, a broker on this machine (development only)")
    if m.cert_file is None and not m.username:
        return Line("tls settings", False, f"TLS to {where} without a client certificate: the city's broker "
                    "accepts none without one",
                    "set mqtt.cert_file and mqtt.key_file to this gateway's certificate and key (the bundle installs "
                    "them as /etc/cityos/gateway.crt and gateway.key)")
    login = "client certificate" + (f" and user {m.username!r}" if m.username else "") if m.cert_file else \
        f"user {m.username!r}"
    ca = f"CA {m.ca_file}" if m.ca_file else "the system's CAs"
    return Line("tls settings", True, f"TLS to {where}, server checked against {ca}, login by {login}")


def _broker_address(cfg: GatewayConfig) -> Line:
    host, port = cfg.mqtt.host, cfg.mqtt.port
    result: list[Any] = []

    def resolve() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            result.append(exc)

    t = threading.Thread(target=resolve, daemon=True)
    t.start()
    t.join(_DNS_TIMEOUT_S)
    hint = ("check the host name in mqtt.host and the network's DNS (`getent hosts HOST`); if this machine has no "
            "network yet, run the check again on site").replace("HOST", host)
    if not result:
        return Line("broker address", False, f"{host} did not resolve within {_DNS_TIMEOUT_S:.0f} s", hint)
    if isinstance(result[0], BaseException):
        exc = result[0]
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Line("broker address", False, f"{host} does not resolve: {why}", hint)
    addrs = sorted({a[4][0] for a in result[0]})
    return Line("broker address", True, f"{host} is {', '.join(addrs[:3])}")


def _port_settings(cfg: GatewayConfig) -> Iterator[tuple[str, str]]:
    """(setting, path) of every serial port a source names: fields ``port`` and ``*_port``."""
    for src in cfg.sources:
        for name in type(src).model_fields:
            if name == "port" or name.endswith("_port"):
                value = getattr(src, name)
                if isinstance(value, str | Path) and str(value):
                    yield f"sources[{src.name}].{name}", str(value)


def _port_problem(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist" if not os.path.islink(path) else f"is a link to {os.readlink(path)}, which does not exist"
    except OSError as exc:
        return f"cannot be looked at ({exc.strerror})"
    if not stat.S_ISCHR(st.st_mode):
        return "is not a serial device (not a character device)"
    return None


HINT_PORT = ("plug in the device's USB adapter and check the path: `ls -l /dev/serial/by-id/` lists the adapters; "
             "the udev rules (hardware/gateway/99-cityos-serial.rules) create the /dev/tty… links the config names")


def _serial_ports(cfg: GatewayConfig) -> list[Line]:
    ports = list(_port_settings(cfg))
    missing = [f"{setting}: {path} {why}" for setting, path in ports if (why := _port_problem(path))]
    first = Line("serial ports", not missing,
                 "\n".join(missing) if missing else ", ".join(f"{p}" for _, p in ports) + " exist",
                 HINT_PORT if missing else "")
    by_device: dict[str, list[str]] = {}
    for setting, path in ports:
        by_device.setdefault(os.path.realpath(path), []).append(f"{setting} ({path})")
    shared = [f"{' and '.join(who)} are the same device {dev}" for dev, who in by_device.items() if len(who) > 1]
    second = Line("ports not shared", not shared,
                  "\n".join(shared) if shared else "each port setting names a device of its own",
                  "each device needs a port of its own: two sources on one port read each other's bytes; find which "
                  "adapter is which (`ls -l /dev/serial/by-id/`, unplug one and look again) and correct the config"
                  if shared else "")
    return [first, second]


_FAMILY_BY_TYPE = {f.source_type: f for f in FAMILIES}
_HOUSEHOLD_RE = re.compile(r"^hh-[0-9]+$")


def _device_ids(src: Any) -> list[tuple[str, str]]:
    """(setting, id) of the devices a source reads."""
    out = []
    for name in ("device_id", "vehicle_id"):
        value = getattr(src, name, None)
        if isinstance(value, str):
            out.append((f"sources[{src.name}].{name}", value))
    for i, st in enumerate(getattr(src, "stations", None) or ()):
        out.append((f"sources[{src.name}].stations[{i}].device_id", st.device_id))
    return out


def _pseudonymous_ids(cfg: GatewayConfig) -> Line:
    problems, hints = [], []
    seen: dict[str, str] = {}
    for src in cfg.sources:
        fam = _FAMILY_BY_TYPE.get(src.type)
        for setting, dev in _device_ids(src):
            if dev in seen:
                problems.append(f"{setting} {dev!r} is also {seen[dev]}")
                hints.append("give every device its own id: two devices with one id become one series in InfluxDB")
            seen.setdefault(dev, setting)
            if fam is not None and fam.name == "meter" and not _HOUSEHOLD_RE.match(dev):
                problems.append(f"{setting} {dev!r} is not a household pseudonym (hh- and digits)")
                hints.append("a household is known only by the pseudonym the energy division assigned (hh-0001, …), "
                             "never by a name or an address: its readings are stored and shown under this id "
                             "(docs/privacy.md, \"Household smart meters\")")
            elif fam is not None and fam.device_prefix and not dev.startswith(fam.device_prefix):
                problems.append(f"{setting} {dev!r} does not start with {fam.device_prefix!r}")
                hints.append(f"{fam.title_en} are named {fam.device_prefix}<number> (the asset number), never after a "
                             "person or a private place")
    if problems:
        return Line("pseudonymous ids", False, "\n".join(problems), "; ".join(dict.fromkeys(hints)))
    return Line("pseudonymous ids", True, ", ".join(seen) or "no device ids")


def _bus_ridership(cfg: GatewayConfig) -> Line | None:
    buses = [s for s in cfg.sources if s.type == "bus"]
    if not buses:
        return None
    problems, hints = [], []
    for src in buses:
        feed = src.timetable
        served = [t for t in feed.trips if len(feed.stop_times.get(t, ())) >= 2]
        if not feed.stops or not served:
            what = "no stops" if not feed.stops else "no trip with two or more stop times"
            problems.append(f"sources[{src.name}].feed {src.feed}: {what}: no stop visit can be detected, so no "
                            "ridership")
            hints.append("install the operator's GTFS-JP feed for this route (stops.txt, trips.txt, stop_times.txt; "
                         "docs/bus.md) and point feed at its directory")
        rs = src.ridership
        if "ridership" not in src.model_fields_set or "devices_per_passenger" not in rs.model_fields_set:
            problems.append(f"sources[{src.name}].ridership: not calibrated (no devices_per_passenger): the counts "
                            "would be phones, not passengers")
            hints.append("add [sources.ridership] with devices_per_passenger and devices_per_passenger_sd from the "
                         "fleet's calibration (docs/bus.md, \"Devices to passengers\"; the sample config has them)")
    if problems:
        return Line("bus ridership", False, "\n".join(problems), "; ".join(dict.fromkeys(hints)))
    return Line("bus ridership", True, ", ".join(
        f"{s.name}: {len(s.timetable.stops)} stops, {len(s.timetable.trips)} trips, calibrated" for s in buses))


def _device_secrets(cfg: GatewayConfig) -> Line | None:
    with_secrets = [s for s in cfg.sources if callable(getattr(s, "credentials", None))]
    if not with_secrets:
        return None
    problems = []
    for src in with_secrets:
        try:
            src.credentials()
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        hint = ("the B-route ID and password come from the grid operator's letter: write each on one line into its "
                "file, then `sudo chmod 600 FILE && sudo chown cityos: FILE` (docs/meters.md)")
        if any("not readable by this user" in p for p in problems):
            hint = HINT_SUDO
        return Line("secret files", False, "\n".join(problems), hint)
    return Line("secret files", True, ", ".join(f"{s.name}: files present, private and well-formed"
                                                  for s in with_secrets))


class _Outbox:
    """The outbox directory: there (or can be made), writable, room to spare; live: the agent can store."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.dir = cfg.outbox.path.parent
        self.problem, self.hint, self.detail = self._look()
        self.agent_note = ""

    def line(self) -> Line:
        parts = [p for p in (self.agent_note, self.problem) if p]
        if parts:
            return Line("outbox", False, "\n".join(parts), self.hint or HINT_SPACE.format(dir=self.dir))
        return Line("outbox", True, self.detail)

    def live(self, status: dict[str, Any] | None) -> Line:
        counters = (status or {}).get("counters") or {}
        if counters.get("outbox_disk_full", 0) == 1:
            failed = int(counters.get("outbox_store_failed", 0))
            self.agent_note = (f"the agent cannot store readings: its outbox's filesystem is full (outbox_disk_full "
                               f"= 1; {failed} reading(s) not stored so far)")
        return self.line()

    def _look(self) -> tuple[str, str, str]:
        d = self.dir
        hint_path = ("outbox.path must be on the gateway's writable data partition: /var/lib/cityos/outbox.db, "
                     "which systemd creates for the service user (StateDirectory=cityos)")
        created: list[Path] = []
        try:
            missing: list[Path] = []
            p = d
            while not p.exists() and p != p.parent:
                missing.append(p)
                p = p.parent
            try:
                for m in reversed(missing):
                    m.mkdir()
                    created.append(m)
            except OSError as exc:
                return f"cannot create the outbox directory {d}: {exc.strerror or exc}", hint_path, ""
            if not d.is_dir():
                return f"{d} is not a directory", hint_path, ""
            if self.cfg.outbox.path.is_dir():
                return f"outbox.path {self.cfg.outbox.path} is a directory, not a database file", hint_path, ""
            if os.statvfs(d).f_flag & os.ST_RDONLY:
                return (f"the outbox directory {d} is on a read-only filesystem",
                        f"the outbox needs a writable filesystem: `findmnt -T {d}` shows how it is mounted; a "
                        "read-only SD card may be failing (replace it), or " + hint_path, "")
            why = _write_test(d)
            if why == "full":
                return (f"the outbox's filesystem is full ({free_mib(d)} MiB free at {d})",
                        HINT_SPACE.format(dir=d), "")
            if why:
                return f"cannot write in the outbox directory {d}: {why}", hint_path, ""
            user_problem = _service_user_cannot_write(d) if not created else None
            if user_problem:
                return user_problem, f"`sudo chown {SERVICE_USER}: {d}` (or use /var/lib/cityos)", ""
            free = _free_bytes(d)
            need = max(2 * _reserve_bytes(self.cfg, d), MIN_FREE_BYTES)
            if free < need:
                return (f"only {free // 2**20} MiB free at {d}; the outbox wants at least {need // 2**20} MiB to spare",
                        HINT_SPACE.format(dir=d), "")
            made = " (can be created)" if created else ""
            return "", "", f"{d}{made} is writable, {free // 2**20} MiB free"
        finally:
            for m in reversed(created):
                with contextlib.suppress(OSError):
                    m.rmdir()


HINT_SPACE = ("free space on the filesystem of {dir}: remove what is not needed (`sudo journalctl --vacuum-size=50M`, "
              "old files under /var/log and /home), or use a larger SD card; the agent stores again by itself once "
              "there is room")


def _free_bytes(d: Path) -> int:
    st = os.statvfs(d)
    return st.f_bavail * st.f_frsize


def free_mib(d: Path) -> int:
    return _free_bytes(d) // 2**20


def _reserve_bytes(cfg: GatewayConfig, d: Path) -> int:
    if cfg.outbox.reserve_bytes is not None:
        return cfg.outbox.reserve_bytes
    from edge.outbox import RESERVE_FRACTION, RESERVE_MAX_BYTES, RESERVE_MIN_BYTES

    st = os.statvfs(d)
    return min(RESERVE_MAX_BYTES, max(RESERVE_MIN_BYTES, st.f_blocks * st.f_frsize // RESERVE_FRACTION))


def _write_test(d: Path) -> str | None:
    """Write 4 KiB into a new file in ``d`` and remove it: None if that worked, "full", or why not."""
    path = d / f".cityos-check-{secrets.token_hex(4)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    except OSError as exc:
        return "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
    return None


def _service_user_cannot_write(d: Path) -> str | None:
    """Run as root: can the agent's user write ``d`` by its mode bits? None if so (or if there is no such user)."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pw = pwd.getpwnam(SERVICE_USER)
    except (ImportError, KeyError):
        return None
    st = d.stat()
    if st.st_uid == pw.pw_uid:
        bits = 0o300
    elif st.st_gid in os.getgrouplist(pw.pw_name, pw.pw_gid):
        bits = 0o030
    else:
        bits = 0o003
    if st.st_mode & bits == bits:
        return None
    return f"the outbox directory {d} is not writable by the service user {SERVICE_USER} (mode {stat.S_IMODE(st.st_mode):04o})"


# --- live -------------------------------------------------------------------------------------------------------


def _live(cfg: GatewayConfig, cfg_hash: str, offline: list[Line], outbox: _Outbox, wait_s: float) -> list[Line]:
    deadline = time.monotonic() + wait_s
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="check-broker") as pool:
        broker = pool.submit(_round_trip, cfg, wait_s)
        agent = _AgentStatus(cfg)
        status, agent_line = agent.check(cfg_hash)
        devices = _devices(cfg)
        if status is not None and agent_line.ok:
            status = _wait_for_devices(agent, devices, status, deadline)
            device_lines = [d.line(status) for d in devices]
        else:
            device_lines = [Line(d.name, False, "not checked (see the agent line)",
                                 "fix the agent line first") for d in devices]
        lines = [agent_line, *device_lines]
        idx = next(i for i, line in enumerate(offline) if line.name == "outbox")
        offline[idx] = outbox.live(status if agent_line.ok else None)
        lines.append(_clock_line())
        lines += broker.result()
    return lines


class _AgentStatus:
    """The agent's local status file (written by :mod:`edge.agent`)."""

    def __init__(self, cfg: GatewayConfig) -> None:
        from edge.agent import status_path

        self.cfg = cfg
        self.path = status_path(cfg)

    def read(self) -> dict[str, Any] | None:
        """The file's contents; None if there is none. A torn read (an in-place rewrite) is read again."""
        for _ in range(5):
            try:
                return json.loads(self.path.read_bytes())
            except FileNotFoundError:
                return None
            except ValueError:
                time.sleep(0.05)
        return None

    def _alive(self, st: dict[str, Any]) -> bool:
        from edge.agent import kernel_boot_id, process_start

        pid = st.get("pid")
        if not isinstance(pid, int) or st.get("kernel_boot_id", "") != kernel_boot_id():
            return False
        started = process_start(pid)
        return started is not None and started == st.get("process_start")

    def fresh(self, st: dict[str, Any]) -> dict[str, Any]:
        """Ask the agent of ``st`` (verified alive) for a fresh file; the freshest one within a few seconds."""
        asked = time.monotonic()
        try:
            os.kill(st["pid"], signal.SIGUSR1)
        except OSError:  # not ours to signal (run without sudo): the periodic file must do
            return st
        end = asked + _POKE_TIMEOUT_S
        while time.monotonic() < end:
            time.sleep(0.1)
            new = self.read()
            if new is not None and isinstance(new.get("mono"), int | float) and new["mono"] >= asked:
                return new
        return self.read() or st

    def check(self, cfg_hash: str) -> tuple[dict[str, Any] | None, Line]:
        gw = self.cfg.gateway.id
        try:
            st = self.read()
        except PermissionError:
            return None, Line("agent", False, f"cannot read {self.path} as uid {os.geteuid()}", HINT_SUDO)
        except OSError as exc:
            return None, Line("agent", False, f"cannot read {self.path}: {exc.strerror}", HINT_AGENT)
        if st is None:
            return None, Line("agent", False, f"no status file {self.path}: the agent has not run with this outbox",
                              HINT_AGENT)
        if st.get("gateway_id") != gw:
            return None, Line("agent", False, f"{self.path} is the status of gateway {st.get('gateway_id')!r}, not {gw!r}",
                              "another agent uses this outbox directory: give each gateway config its own outbox.path")
        if st.get("state") == "offline" or not self._alive(st):
            why = f"its last status is from {_local_time(st.get('ts'))}"
            if st.get("state") == "offline":
                why = f"it stopped at {_local_time(st.get('ts'))}"
            failure = st.get("failure")
            last = f"\nits last run ended with: {failure}" if failure else ""
            return None, Line("agent", False, f"the agent is not running ({why}){last}", HINT_AGENT)
        st = self.fresh(st)
        age = time.monotonic() - float(st.get("mono", 0))
        interval = float(st.get("interval_s", 60))
        if age > 3 * interval:
            return None, Line("agent", False, f"the agent (pid {st['pid']}) has not written its status for {age:.0f} s "
                              f"(every {interval:g} s normally): it hangs",
                              f"restart it: `sudo systemctl restart {SERVICE}`; `sudo journalctl -u {SERVICE} -n 50` "
                              "shows its last lines")
        if st.get("config_hash") != cfg_hash:
            return st, Line("agent", False, f"the agent (pid {st['pid']}) runs another version of the config "
                            f"(hash {st.get('config_hash')}, {self.cfg.gateway.id}'s file now: {cfg_hash}): the file "
                            "was changed after the agent started",
                            f"restart the agent so that it reads the file: `sudo systemctl restart {SERVICE}`")
        counters = st.get("counters") or {}
        link = "connected to the broker" if counters.get("uplink_connected") == 1 else "not connected to the broker yet"
        return st, Line("agent", True, f"running (pid {st['pid']}, version {st.get('agent_version')}), {link}, "
                        f"{int(counters.get('uplink_acked_readings', 0))} reading(s) delivered, "
                        f"backlog {st.get('backlog_depth', 0)}")


def _local_time(ts_ms: Any) -> str:
    if not isinstance(ts_ms, int | float):
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_ms / 1000))


# --- devices ----------------------------------------------------------------------------------------------------


@dataclass
class _Verdict:
    ok: bool
    detail: str
    hint: str = ""
    final: bool = False  # waiting will not change it


class _Device:
    """One configured device and how to judge it from the agent's status."""

    def __init__(self, name: str, device_id: str, src: Any, judge: Callable[[_Device, dict[str, Any]], _Verdict],
                 **about: Any) -> None:
        self.name, self.device_id, self.src, self.judge, self.about = name, device_id, src, judge, about
        self.verdict = _Verdict(False, "not seen yet")

    def update(self, status: dict[str, Any]) -> None:
        if (status.get("devices") or {}).get(self.device_id) is None:
            self.verdict = _Verdict(False, f"{self.device_id} is not in the agent's status (devices)",
                                    HINT_AGENT_RESTART)
        else:
            self.verdict = self.judge(self, status)

    def line(self, status: dict[str, Any]) -> Line:
        return Line(self.name, self.verdict.ok, self.verdict.detail, "" if self.verdict.ok else self.verdict.hint)

    def health(self, status: dict[str, Any]) -> dict[str, float]:
        return status["devices"][self.device_id]

    def counter(self, status: dict[str, Any], key: str) -> float | None:
        return (status.get("counters") or {}).get(field_name(f"{self.src.name}_{key}"))


HINT_AGENT_RESTART = f"restart the agent (`sudo systemctl restart {SERVICE}`) and run the check again"
HINT_GPS = ("no GPS fix: the antenna needs a clear view of the sky (move the vehicle out of the garage, check the "
            "antenna cable), then wait a few minutes: a receiver without a fix sends status V")
HINT_BLE = ("the Bluetooth adapter is not up: `sudo systemctl status bluetooth`, `bluetoothctl show` (Powered: yes), "
            "`rfkill list` (not blocked); a USB adapter: plug it in")


def _port_verdict(dev: _Device, port: str, role: str) -> _Verdict | None:
    """A verdict if the device's port does not exist (final) or cannot be opened; None if it is open."""
    why = _port_problem(port)
    if why:
        return _Verdict(False, f"its {role} port {port} {why}", HINT_PORT, final=True)
    return None


def _judge_forest(dev: _Device, status: dict[str, Any]) -> _Verdict:
    h = dev.health(status)
    unit, port = dev.about["unit"], dev.src.port
    label = f"{dev.device_id} (unit {unit})"
    if h.get("ok") == 1 and h.get("readings", 0) >= 1:
        return _Verdict(True, f"{label} answers; {int(h['readings'])} reading(s) since the agent started")
    v = _port_verdict(dev, port, "RS-485")
    if v is not None:
        return v
    if dev.counter(status, "port_open") == 0:
        return _Verdict(False, f"{label}: the RS-485 port {port} cannot be opened",
                        f"is another program using it (`sudo lsof {port}`)? the service user needs the dialout group")
    if h.get("ok") == 1:
        return _Verdict(False, f"{label} answers but has given no reading yet",
                        "wait a sample interval and run again; the gateway sets the station's clock before its first "
                        "reading, and never from an unsynchronised clock (see the clock line)")
    stations = [d for d in (status.get("devices") or {}) if d in dev.about["bus"]]
    silent = [d for d in stations if (status["devices"][d].get("ok") != 1)]
    if len(stations) > 1 and len(silent) == len(stations):
        return _Verdict(False, f"{label} does not answer, nor does any station on {port}",
                        f"check the bus as a whole: the RS-485 wiring from the adapter (A/B not swapped, terminated at "
                        f"the far end), the line settings (baudrate {dev.src.baudrate}, parity {dev.src.parity}) and the "
                        "stations' power")
    return _Verdict(False, f"{label} does not answer",
                    f"check its Modbus address: the station must be set to unit {unit}, as the config says; then its "
                    "RS-485 wiring (A/B, the junction box) and its power (battery, solar panel)")


def _judge_meter(dev: _Device, status: dict[str, Any]) -> _Verdict:
    from edge.sources.meter import source as meter

    h = dev.health(status)
    state = int(h.get("session_state", -1))
    name = meter.STATE_NAMES.get(state, f"state {state}")
    readings = dev.counter(status, "readings") or 0
    if state == meter.ONLINE and readings >= 1:
        return _Verdict(True, f"{dev.device_id}: B-route session online; {int(readings)} reading(s)")
    if state == meter.ONLINE:
        return _Verdict(False, f"{dev.device_id}: B-route session online, no reading yet",
                        f"wait one poll interval ({dev.src.poll_interval_s:g} s) and run again")
    if state == meter.AUTH_FAILED:
        return _Verdict(False, f"{dev.device_id}: the meter refuses the B-route password (auth_failed)",
                        "the grid operator's B-route ID/password is refused: re-enter both from the operator's letter "
                        f"into {dev.src.rbid_file} and {dev.src.password_file} (one line each, chmod 600), then "
                        f"`sudo systemctl restart {SERVICE}`", final=True)
    if state == meter.METER_NOT_FOUND:
        return _Verdict(False, f"{dev.device_id}: no meter answers the scan (meter_not_found)",
                        f"check the B-route ID in {dev.src.rbid_file} (a wrong ID finds no meter), that the operator "
                        "has started the B-route service for this household, and the module's distance to the meter")
    v = _port_verdict(dev, dev.src.port, "Wi-SUN module")
    if v is not None:
        return v
    if state == meter.PORT_ERROR:
        return _Verdict(False, f"{dev.device_id}: the Wi-SUN module on {dev.src.port} does not answer (port_error)",
                        "unplug the module and plug it in again; check the port path (udev link) in the config")
    return _Verdict(False, f"{dev.device_id}: B-route session not up yet ({name})",
                    "still scanning or joining: wait a minute and run again; if it stays so, move the Wi-SUN module "
                    "(or its USB extension) nearer the meter")


def _judge_truck(dev: _Device, status: dict[str, Any]) -> _Verdict:
    h, src = dev.health(status), dev.src
    if h.get("ok") == 1:
        return _Verdict(True, f"{dev.device_id}: the scale answers, GPS fix")
    problems, hints, final = [], [], False
    if h.get("scale_ok") != 1:
        v = _port_verdict(dev, src.indicator_port, "indicator")
        if v is not None:
            problems.append(v.detail)
            hints.append(v.hint)
            final = True
        elif h.get("indicator_port_open") != 1:
            problems.append(f"the indicator's port {src.indicator_port} cannot be opened")
            hints.append("is another program using it? the service user needs the dialout group")
        else:
            problems.append("the weighing indicator sends nothing")
            hints.append(f"check the indicator's power, its RS-232 cable and its baud rate (indicator_baud "
                         f"{src.indicator_baud}); the indicator must stream its weight (continuous output mode)")
    if h.get("gps_fix") != 1:
        final = _judge_gps(dev, h, problems, hints) or final
    return _Verdict(False, f"{dev.device_id}: " + "; ".join(problems), "; ".join(hints), final)


def _judge_gps(dev: _Device, h: dict[str, float], problems: list[str], hints: list[str]) -> bool:
    """Why a truck's or a bus's GPS has no fix; True if waiting cannot change it (the port is not there)."""
    v = _port_verdict(dev, dev.src.gps_port, "GPS")
    if v is not None:
        problems.append(v.detail)
        hints.append(v.hint)
        return True
    if h.get("gps_port_open") != 1:
        problems.append(f"the GPS port {dev.src.gps_port} cannot be opened")
        hints.append("is another program (gpsd?) using it? the service user needs the dialout group")
    else:
        problems.append("no GPS fix")
        hints.append(HINT_GPS)
    return False


def _judge_bus(dev: _Device, status: dict[str, Any]) -> _Verdict:
    h, src = dev.health(status), dev.src
    if h.get("ok") == 1:
        return _Verdict(True, f"{dev.device_id}: Bluetooth adapter up, GPS fix")
    problems, hints, final = [], [], False
    if h.get("ble_adapter_up") != 1:
        problems.append(f"the Bluetooth adapter ({src.ble.adapter}) is not up")
        hints.append(HINT_BLE)
    if h.get("gps_fix") != 1:
        final = _judge_gps(dev, h, problems, hints) or final
    return _Verdict(False, f"{dev.device_id}: " + "; ".join(problems), "; ".join(hints), final)


def _devices(cfg: GatewayConfig) -> list[_Device]:
    out: list[_Device] = []
    for src in cfg.sources:
        if src.type == "forest_station":
            bus = {st.device_id for st in src.stations}
            out += [_Device(f"device {st.device_id}", st.device_id, src, _judge_forest, unit=st.unit, bus=bus)
                    for st in src.stations]
        elif src.type == "smart_meter":
            out.append(_Device(f"device {src.device_id}", src.device_id, src, _judge_meter))
        elif src.type == "garbage_truck":
            out.append(_Device(f"device {src.device_id}", src.device_id, src, _judge_truck))
        elif src.type == "bus":
            out.append(_Device(f"device {src.vehicle_id}", src.vehicle_id, src, _judge_bus))
    return out


def _wait_for_devices(agent: _AgentStatus, devices: list[_Device], status: dict[str, Any],
                      deadline: float) -> dict[str, Any]:
    """Judge every device on fresh statuses until each is ok (or cannot become so by waiting) or time is up."""
    while True:
        for d in devices:
            d.update(status)
        if all(d.verdict.ok or d.verdict.final for d in devices) or time.monotonic() >= deadline:
            return status
        time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        latest = agent.read()
        if latest is None or latest.get("pid") != status.get("pid"):
            return status  # the agent went away meanwhile: the verdicts stand as they were
        status = agent.fresh(latest)


# --- clock --------------------------------------------------------------------------------------------------------


def clock_synced() -> tuple[bool | None, str]:
    """Whether the system clock is synchronised, and who says so (see the module docstring)."""
    exe = shutil.which("timedatectl")
    if exe is not None:
        try:
            r = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True,
                               timeout=10)
            answer = r.stdout.strip()
            if r.returncode == 0 and answer in ("yes", "no"):
                return answer == "yes", "timedatectl"
        except (OSError, subprocess.SubprocessError):
            pass
    return clock.kernel_synced(), "the kernel (adjtimex)"


def _clock_line() -> Line:
    synced, who = clock_synced()
    now = time.time()
    shown = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now))
    hint = ("the clock is not synchronised: the gateway needs its network and an NTP server "
            "(`timedatectl timesync-status`); check the network, and NTP= in /etc/systemd/timesyncd.conf if the site "
            "blocks the default servers; synchronising takes a minute or two once the network is up, then run again")
    if not clock.plausible(now):
        return Line("clock", False, f"the clock says {shown}: before 2026, certainly wrong", hint)
    if synced is None:
        return Line("clock", False, f"{shown}; whether it is synchronised cannot be asked here "
                    "(no timedatectl answer, no adjtimex)", "run the check on the gateway itself, with sudo")
    if not synced:
        return Line("clock", False, f"{shown}, not synchronised ({who})", hint)
    return Line("clock", True, f"{shown}, synchronised ({who})")


# --- the broker and the round trip to InfluxDB ----------------------------------------------------------------------


def _round_trip(cfg: GatewayConfig, wait_s: float) -> list[Line]:
    """Connect as the gateway, subscribe to its receipts, publish one probe, wait for the ingest's receipt."""
    import paho.mqtt.client as mqtt

    from cityos import wire

    m, gw = cfg.mqtt, cfg.gateway.id
    where = f"{m.host}:{m.port}"
    fleet = HINT_FLEET.format(gw=gw)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                    client_id=f"{gw}-check-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5)
    c.connect_timeout = _CONNECT_TIMEOUT_S
    c.on_connect = lambda _c, _u, _f, rc, _p: events.put(("connack", rc))
    c.on_disconnect = lambda _c, _u, _f, rc, _p: events.put(("disconnect", rc))
    c.on_subscribe = lambda _c, _u, _mid, rcs, _p: events.put(("suback", rcs))
    c.on_publish = lambda _c, _u, _mid, rc, _p: events.put(("puback", rc))
    c.on_message = lambda _c, _u, msg: events.put(("message", msg))
    # With TLS 1.3 the broker's verdict on our certificate comes after the handshake, as an alert on the first
    # read in paho's network thread, which only logs it: keep its error lines to tell why the connection closed.
    errors: list[str] = []
    c.on_log = lambda _c, _u, level, buf: errors.append(buf) if level == mqtt.MQTT_LOG_ERR else None

    def broker_fails(detail: str, hint: str) -> list[Line]:
        return [Line("broker", False, detail, hint),
                Line("stored in influxdb", False, "not tried: the broker refused the probe (see the broker line)",
                     "fix the broker line first")]

    def expect(kind: str, timeout: float) -> Any:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                what, value = events.get(timeout=left)
            except queue.Empty:
                break
            if what == kind:
                return value
            if what == "disconnect":
                return ("disconnect", value)
        return None

    try:
        m.configure(c, "mqtt")
    except ConfigError as exc:
        return [Line("broker", False, f"not tried: {exc}", "fix the tls files line first"),
                Line("stored in influxdb", False, "not tried: this gateway's TLS files cannot be used",
                     "fix the tls files line first")]
    try:
        c.connect(m.host, m.port, keepalive=30, clean_start=True)
    except ssl.SSLCertVerificationError as exc:
        return broker_fails(*_server_untrusted(exc, m, fleet))
    except ssl.SSLError as exc:
        return broker_fails(*_handshake_refused(str(getattr(exc, "reason", None) or exc), where, gw, fleet))
    except TimeoutError:
        return broker_fails(f"{where} does not answer (TCP connect timed out after {_CONNECT_TIMEOUT_S:.0f} s)",
                            HINT_UNREACHABLE.format(where=where))
    except OSError as exc:
        if isinstance(exc, socket.gaierror):
            return broker_fails(f"{m.host} does not resolve", "see the broker address line")
        return broker_fails(f"{where} is unreachable: {exc.strerror or exc}", HINT_UNREACHABLE.format(where=where))
    c.loop_start()
    try:
        rc = expect("connack", _CONNECT_TIMEOUT_S)
        if rc is None or isinstance(rc, tuple):
            alert = next((m.group(1) for e in errors if (m := re.search(r"\[SSL: ([A-Z0-9_]+)\]", e))), None)
            alert = alert or _tls_alert(cfg)
            if alert is not None:
                return broker_fails(*_handshake_refused(alert, where, gw, fleet))
            return broker_fails(f"{where} accepted the TLS handshake, then closed the connection before accepting the "
                                "login: it refuses this gateway's certificate (revoked, expired or of another CA)",
                                f"{fleet}; a revoked gateway needs a new certificate (`cityos fleet rotate {gw}`)")
        if rc.is_failure:
            return broker_fails(f"{where} refuses the login: {rc} (CONNACK 0x{rc.value:02x})",
                                f"{fleet}; the certificate (mqtt.cert_file) must be this gateway's own")
        receipt_topic = wire.receipt_topic(gw)
        c.subscribe(receipt_topic, qos=1)
        rcs = expect("suback", _ACK_TIMEOUT_S)
        if rcs is None or isinstance(rcs, tuple):
            return broker_fails(f"{where} did not answer the subscription to {receipt_topic}",
                                HINT_UNREACHABLE.format(where=where))
        if rcs[0].is_failure:
            return broker_fails(*_acl_refused(where, receipt_topic, "subscribe to", rcs[0].value, gw, fleet))
        boot_id = f"check-{secrets.token_hex(8)}"
        now_ms = int(time.time() * 1000)
        probe = wire.TelemetryBatch(gateway_id=gw, boot_id=boot_id, seq=1, sent_at=now_ms, readings=[wire.Reading(
            device_id=PROBE_DEVICE, kind=PROBE_KIND, ts=now_ms, values={"probe": 1.0})])
        sent = time.monotonic()
        c.publish(wire.probe_topic(gw), wire.encode_batch(probe), qos=1)
        rc = expect("puback", _ACK_TIMEOUT_S)
        if rc is None or isinstance(rc, tuple):
            return broker_fails(f"{where} did not acknowledge the probe (no PUBACK)", HINT_UNREACHABLE.format(where=where))
        if rc.is_failure:
            return broker_fails(*_acl_refused(where, wire.probe_topic(gw), "publish on", rc.value, gw, fleet))
        broker = Line("broker", True, f"{where} trusts this gateway's certificate and accepts its messages")
        if rc.value == _NO_SUBSCRIBERS:
            return [broker, Line("stored in influxdb", False, "the broker has no subscriber for probes: no ingest is "
                                 "connected to it", HINT_NO_RECEIPT.format(fleet=fleet))]
        end = sent + max(wait_s, _ACK_TIMEOUT_S)
        while (left := end - time.monotonic()) > 0:
            msg = expect("message", left)
            if msg is None or isinstance(msg, tuple):
                break
            try:
                r = wire.decode_receipt(msg.payload)
            except wire.ContractError:
                continue
            if r.gateway_id == gw and r.boot_id == boot_id and r.seq == 1:
                took = time.monotonic() - sent
                return [broker, Line("stored in influxdb", True,
                                     f"the ingest stored the probe ({r.points} point(s), measurement {PROBE_KIND}) "
                                     f"in InfluxDB {took:.1f} s after it was sent")]
        return [broker, Line("stored in influxdb", False,
                             f"no receipt from the ingest within {max(wait_s, _ACK_TIMEOUT_S):.0f} s: the broker "
                             "took the probe, nothing confirmed storing it", HINT_NO_RECEIPT.format(fleet=fleet))]
    finally:
        with contextlib.suppress(Exception):
            c.disconnect()
        c.loop_stop()


HINT_UNREACHABLE = ("check this gateway's network (the LTE router and its SIM, the cable, `ping 8.8.8.8`) and that "
                    "{where} (mqtt.host, mqtt.port) is the city's broker; a site firewall must let TCP to that port out")
HINT_NO_RECEIPT = ("the path from the broker to InfluxDB is not confirmed: is the ingest running and connected, and "
                   "InfluxDB up? ({fleet}; cloud side: `systemctl status cityos-ingest`). If the clock line failed, "
                   "fix it first: the ingest refuses readings stamped far from its own time")


def _tls_alert(cfg: GatewayConfig) -> str | None:
    """Why the broker closed the connection after the handshake, as its TLS alert (``SSLV3_ALERT_…``): a fresh
    handshake, then only listen. Sending nothing first keeps the alert from racing our CONNECT (paho may see the
    broker's close as a bare EOF instead)."""
    m = cfg.mqtt
    try:
        ctx = m.client_context("mqtt")
        with socket.create_connection((m.host, m.port), timeout=_CONNECT_TIMEOUT_S) as raw, \
                ctx.wrap_socket(raw, server_hostname=m.host) as tls:
            tls.settimeout(3.0)
            tls.recv(1)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None)
        return str(reason) if reason else None
    except (OSError, ConfigError):
        return None
    return None


def _server_untrusted(exc: ssl.SSLCertVerificationError, m: Any, fleet: str) -> tuple[str, str]:
    code, msg = getattr(exc, "verify_code", None), getattr(exc, "verify_message", "") or str(exc)
    where = f"{m.host}:{m.port}"
    if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        return (f"the broker's certificate at {where} is not for the name {m.host!r} ({msg})",
                f"mqtt.host must be the broker's name as its certificate says: {fleet}")
    if code in (9, 10):  # not yet valid / expired
        return (f"the broker's certificate at {where} is not valid now ({msg})",
                "check this gateway's clock (the clock line); if it is right, tell the fleet operator: the broker's "
                "certificate needs renewing")
    return (f"the broker's certificate at {where} is not signed by mqtt.ca_file {m.ca_file} ({msg})",
            f"mqtt.ca_file must be the city's fleet CA from this gateway's bundle (/etc/cityos/ca.crt); if it is, "
            f"{where} is not the city's broker: check mqtt.host ({fleet})")


def _handshake_refused(reason: str, where: str, gw: str, fleet: str) -> tuple[str, str]:
    up = reason.upper()
    if "REVOKED" in up:
        return (f"{where} refuses this gateway's certificate: it is revoked ({reason})",
                f"{fleet}; a gateway put back in service needs a new certificate (`cityos fleet rotate {gw}`)")
    if "EXPIRED" in up:
        return (f"{where} refuses this gateway's certificate: it has expired ({reason})",
                f"check the clock line first; else {fleet} (`cityos fleet rotate {gw}` issues a new one)")
    if "UNKNOWN_CA" in up or "BAD_CERTIFICATE" in up or "CERTIFICATE_REQUIRED" in up or "HANDSHAKE" in up:
        return (f"{where} refuses this gateway's certificate at the TLS handshake ({reason}): it is not one the "
                "city's fleet CA issued, or it was revoked",
                f"install this gateway's own certificate and key from its bundle; {fleet}")
    if "WRONG_VERSION" in up or "RECORD_LAYER" in up:
        return (f"{where} does not speak TLS ({reason}): a plaintext MQTT port?",
                "mqtt.port must be the broker's TLS port (8883)")
    return (f"TLS with {where} failed ({reason})", f"{fleet}; the certificate and key must be this gateway's own")


def _acl_refused(where: str, topic: str, action: str, code: int, gw: str, fleet: str) -> tuple[str, str]:
    what = "not authorized" if code == _NOT_AUTHORIZED else f"reason 0x{code:02x}"
    return (f"{where} accepts the certificate but refuses to let this gateway {action} {topic} ({what}): the gateway "
            "is revoked, or its certificate is another gateway's (see the tls files line)",
            f"{fleet}: a revoked gateway is shut out at the broker's next reload; to put it back in service it "
            f"needs a new certificate (`cityos fleet rotate {gw}`)")
