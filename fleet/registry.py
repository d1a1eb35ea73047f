"""The fleet registry: one directory on the cloud side that holds the fleet's CA, every identity it issued, and
the broker files generated from them (ACL, CRL, the broker's own certificate).

Layout::

    registry.toml         the fleet's broker as gateways reach it (host, port) and how to reload it
    gateways.json         one record per gateway: family, site, the config it should run and its hash, its
                          certificate (serial, expiry), its state (active / revoked)
    ca/                   the private CA (fleet/pki.py): ca.crt, ca.key (0600), crl.pem, revoked.json
    identities/<name>.crt/.key   the certificates and keys of gateways and services (svc.*); a gateway's key
                          leaves only in its first-boot bundle (`cityos fleet bundle`)
    broker/               acl, server.crt, server.key: what mosquitto.conf points at
    revoked.json          identities shut out (their ACL deny lines; their certificates are on the CRL too)

Every write is atomic and keys are 0600 from their first byte. A file lock serialises changes from several
processes (two technicians' `cityos fleet` commands, a test and the stack it started).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cityos.config import GatewayId, config_hash, dump_toml
from cityos.credentials import MqttLogin
from cityos.families import by_name
from fleet.broker import acl_text
from fleet.pki import CertificateAuthority, certificate_info, write_private

__all__ = ["IDENTITY_RE", "BrokerSettings", "FleetError", "GatewayRecord", "Identity", "Registry", "Site"]

#: Where a gateway's files live on the gateway itself (the first-boot bundle puts them there).
GATEWAY_ETC = Path("/etc/cityos")
#: The TLS files in a gateway's config, by name in its ``[mqtt]`` section, under its etc directory.
GATEWAY_FILES = {"ca_file": "ca.crt", "cert_file": "gateway.crt", "key_file": "gateway.key"}


class FleetError(RuntimeError):
    """A registry operation that cannot be done; the message is for the operator as it is."""


class Site(BaseModel):
    """Where a gateway stands and what it serves (no person's name: the asset of a meter is its pseudonym)."""

    model_config = ConfigDict(extra="forbid")

    district: str = Field(min_length=1, max_length=64)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    #: Bus number, meter pseudonym (hh-0001), forest plot, truck number.
    asset: str = Field(default="", max_length=64)


class GatewayRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: GatewayId
    family: str
    site: Site
    #: The gateway config it should run (the dict of its TOML) and that config's hash (drift check).
    config: dict[str, Any]
    config_hash: str
    state: Literal["active", "revoked"] = "active"
    cert_serial: int
    cert_not_after: dt.datetime
    added_at: dt.datetime
    rotated_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    #: Serials of earlier certificates (after a rotation), with whether they were revoked.
    superseded: list[int] = Field(default_factory=list)


class BrokerSettings(BaseModel):
    """``registry.toml``: the broker as the gateways reach it, and how the registry makes it re-read the ACL."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    #: A command that makes the broker reload (SIGHUP), e.g. ["systemctl", "reload", "mosquitto"] ...
    reload_command: list[str] = Field(default_factory=list)
    #: ... or the broker's pid file, signalled directly (the developer's stack).
    pid_file: Path | None = None
    #: Where `cityos fleet broker-config` installed the broker's files: the ACL and CRL are refreshed there too.
    config_dir: Path | None = None
    #: Where the gateways keep their config, certificate and key (the bundle installs them there).
    gateway_etc: Path = GATEWAY_ETC

#: A gateway id (the wire's pattern) or a dotted service/tool name (svc.ingest, dev.tools).
IDENTITY_RE = re.compile(r"^(?:[a-z0-9][a-z0-9_-]{0,62}|[a-z]{2,8}\.[a-z0-9][a-z0-9_-]{0,40})$")


@dataclass(frozen=True)
class Identity:
    """The files a client presents: the CA that signs the broker, its certificate and its key."""

    name: str
    ca_file: Path
    cert_file: Path
    key_file: Path

    def mqtt_settings(self) -> dict[str, str]:
        """The ``[mqtt]`` keys a config needs for this identity."""
        return {"ca_file": str(self.ca_file), "cert_file": str(self.cert_file), "key_file": str(self.key_file)}


class Registry:
    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        try:
            self.ca = CertificateAuthority(self.dir / "ca")
        except FileNotFoundError:
            raise FleetError(f"no fleet registry in {self.dir}: create one with `cityos fleet init`") from None

    @classmethod
    def open_or_create(cls, directory: Path | str, name: str = "cityos fleet CA") -> Registry:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        with _locked(d):
            CertificateAuthority.open_or_create(d / "ca", name)
        return cls(d)

    # --- identities ----------------------------------------------------------------------------------------

    def identity(self, name: str, *, issue: bool = True) -> Identity:
        """``name``'s certificate and key, issued now if there are none yet (and ``issue``)."""
        if not IDENTITY_RE.match(name):
            raise ValueError(f"{name!r} is not an identity: a gateway id or svc.<name>")
        ident = Identity(name, self.ca.ca_file, self.dir / "identities" / f"{name}.crt",
                         self.dir / "identities" / f"{name}.key")
        if not ident.cert_file.exists() and issue:
            with _locked(self.dir):
                if not ident.cert_file.exists():
                    self.ca.issue_client(name).write(ident.cert_file, ident.key_file)
        return ident

    # --- settings -------------------------------------------------------------------------------------------

    def broker(self) -> BrokerSettings:
        try:
            data = tomllib.loads((self.dir / "registry.toml").read_text())
        except FileNotFoundError:
            raise FleetError(f"{self.dir / 'registry.toml'} is missing: run `cityos fleet init`") from None
        return BrokerSettings.model_validate(data.get("broker", {}))

    def set_broker(self, settings: BrokerSettings) -> None:
        text = dump_toml({"broker": settings.model_dump(mode="json", exclude_none=True)},
                         "The fleet's broker, as gateways reach it (written by `cityos fleet init`).")
        write_private(self.dir / "registry.toml", text, 0o644)

    def login(self, name: str = "svc.fleet") -> MqttLogin:
        """How a cloud-side tool reaches the broker as ``name`` (the fleet view as ``svc.fleet``)."""
        b = self.broker()
        return MqttLogin(host=b.host, port=b.port, **self.identity(name).mqtt_settings())

    def reload_broker(self) -> str:
        """Make the broker re-read the ACL; returns what was done (for the operator)."""
        b = self.broker()
        if b.pid_file is not None:
            try:
                pid = int(b.pid_file.read_text().strip())
                os.kill(pid, signal.SIGHUP)
            except (OSError, ValueError) as exc:
                raise FleetError(f"cannot signal the broker from {b.pid_file}: {exc}") from None
            return f"sent SIGHUP to the broker (pid {pid})"
        if b.reload_command:
            res = subprocess.run(b.reload_command, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise FleetError(f"{' '.join(b.reload_command)} failed: {(res.stderr or res.stdout).strip()}")
            return f"ran {' '.join(b.reload_command)}"
        return "no reload configured: reload the broker yourself (SIGHUP) for the new ACL to apply"

    # --- gateways -----------------------------------------------------------------------------------------

    def gateways(self) -> dict[str, GatewayRecord]:
        try:
            raw = json.loads((self.dir / "gateways.json").read_text())
        except FileNotFoundError:
            return {}
        return {k: GatewayRecord.model_validate(v) for k, v in raw.items()}

    def gateway(self, gateway_id: str) -> GatewayRecord:
        rec = self.gateways().get(gateway_id)
        if rec is None:
            raise FleetError(f"no gateway {gateway_id!r} in the registry {self.dir}")
        return rec

    def _save(self, records: dict[str, GatewayRecord]) -> None:
        data = {k: v.model_dump(mode="json") for k, v in sorted(records.items())}
        write_private(self.dir / "gateways.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n", 0o600)

    def field_config(self, gateway_id: str, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` as the gateway will run it: its id, the fleet's broker, the bundle's TLS files."""
        b = self.broker()
        mqtt = {k: v for k, v in config.get("mqtt", {}).items()
                if k not in ("host", "port", "tls", "username", "password_file", *GATEWAY_FILES)}
        files = {k: str(b.gateway_etc / name) for k, name in GATEWAY_FILES.items()}
        return {**config, "gateway": {**config.get("gateway", {}), "id": gateway_id},
                "mqtt": {"host": b.host, "port": b.port, **files, **mqtt}}

    def add(self, gateway_id: str, family: str, site: Site, config: dict[str, Any]) -> GatewayRecord:
        """Register a gateway: issue its certificate, keep the config it should run and its hash."""
        if by_name(family) is None:
            raise FleetError(f"unknown family {family!r}")
        with _locked(self.dir):
            records = self.gateways()
            if gateway_id in records:
                raise FleetError(f"{gateway_id} is already registered (state {records[gateway_id].state}); "
                                 "`cityos fleet rotate` re-keys it")
            if (self.dir / "identities" / f"{gateway_id}.crt").exists():
                raise FleetError(f"an identity {gateway_id} was issued before: choose another gateway id")
            issued = self.ca.issue_client(gateway_id)
            ident = self.identity(gateway_id, issue=False)
            issued.write(ident.cert_file, ident.key_file)
            cfg = self.field_config(gateway_id, config)
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            rec = GatewayRecord(id=gateway_id, family=family, site=site, config=cfg, config_hash=config_hash(cfg),
                                cert_serial=issued.serial, cert_not_after=issued.not_after, added_at=now)
            records[gateway_id] = rec
            self._save(records)
        return rec

    def revoke(self, gateway_id: str) -> GatewayRecord:
        """Shut a gateway out: ACL deny from the next broker reload, its certificates on the CRL."""
        with _locked(self.dir):
            records = self.gateways()
            rec = records.get(gateway_id)
            if rec is None:
                raise FleetError(f"no gateway {gateway_id!r} in the registry {self.dir}")
            for serial in (rec.cert_serial, *rec.superseded):
                self.ca.revoke(serial)
            rec = rec.model_copy(update={"state": "revoked", "revoked_at": dt.datetime.now(dt.UTC)})
            records[gateway_id] = rec
            self._save(records)
        self.shut_out(gateway_id)
        return rec

    def rotate(self, gateway_id: str, *, revoke_old: bool = False) -> GatewayRecord:
        """A new key and certificate for the same identity. The old certificate stays valid until the gateway
        runs with the new one (``revoke_old``, or `cityos fleet revoke-old` then, puts it on the CRL)."""
        with _locked(self.dir):
            records = self.gateways()
            rec = records.get(gateway_id)
            if rec is None:
                raise FleetError(f"no gateway {gateway_id!r} in the registry {self.dir}")
            if rec.state != "active":
                raise FleetError(f"{gateway_id} is {rec.state}: a revoked gateway is re-added under a new id")
            issued = self.ca.issue_client(gateway_id)
            ident = self.identity(gateway_id, issue=False)
            issued.write(ident.cert_file, ident.key_file)
            if revoke_old:
                self.ca.revoke(rec.cert_serial)
            rec = rec.model_copy(update={
                "cert_serial": issued.serial, "cert_not_after": issued.not_after,
                "rotated_at": dt.datetime.now(dt.UTC).replace(microsecond=0),
                "superseded": [*rec.superseded, rec.cert_serial]})
            records[gateway_id] = rec
            self._save(records)
        return rec

    def certificate(self, name: str) -> dict[str, Any]:
        return certificate_info(self.identity(name, issue=False).cert_file.read_bytes())

    # --- the broker's files --------------------------------------------------------------------------------

    def revoked(self) -> list[str]:
        try:
            return sorted(json.loads((self.dir / "revoked.json").read_text()))
        except FileNotFoundError:
            return []

    def shut_out(self, name: str) -> None:
        """Deny ``name`` everything from the next broker reload; revoke its certificate (CRL, next restart)."""
        with _locked(self.dir):
            revoked = set(self.revoked()) | {name}
            write_private(self.dir / "revoked.json", json.dumps(sorted(revoked)) + "\n", 0o644)
            serials = json.loads((self.ca.dir / "serials.json").read_text()) if (
                self.ca.dir / "serials.json").exists() else {}
            for serial, who in serials.items():
                if who == name:
                    self.ca.revoke(int(serial))
        self.write_acl()

    def broker_files(self, host: str, sans: tuple[str, ...] = (), *, dev: bool = False) -> dict[str, Path]:
        """Write the broker's certificate (if missing), the ACL and a fresh CRL; their paths for mosquitto.conf."""
        b = self.dir / "broker"
        b.mkdir(parents=True, exist_ok=True)
        if dev:
            (b / "dev").write_text("this registry serves a developer's stack: its ACL has the dev.* grants\n")
        with _locked(self.dir):
            if not (b / "server.crt").exists():
                self.ca.issue_server(host, sans).write(b / "server.crt", b / "server.key")
            self.ca.write_crl()
        acl = self.write_acl()
        return {"ca_file": self.ca.ca_file, "cert_file": b / "server.crt", "key_file": b / "server.key",
                "crl_file": self.ca.crl_file, "acl_file": acl}

    def write_acl(self) -> Path:
        """The ACL from the registry; the dev grants only in a developer's stack's registry (``broker/dev``).
        Also refreshes the installed copies (ACL and CRL) where `broker-config` put them."""
        path = self.dir / "broker" / "acl"
        text = acl_text(self.revoked(), dev=(self.dir / "broker" / "dev").exists())
        write_private(path, text, 0o644)
        installed = self._installed_dir()
        if installed is not None:
            write_private(installed / "acl", text, 0o644)
            write_private(installed / "crl.pem", self.ca.crl_file.read_bytes(), 0o644)
        return path

    def _installed_dir(self) -> Path | None:
        try:
            return self.broker().config_dir
        except FleetError:
            return None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
