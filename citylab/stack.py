"""A private Mosquitto + InfluxDB 1.x on free loopback ports, everything under one run directory.

Used by ``cityos stack up|status|down``, the demo and the test fixtures. Nothing here touches system
services or system-wide paths: config, data, logs and pid files all live under the run directory, so several
stacks (one per test session, one for the demo) can run side by side and ``rm -r`` of the run directory after
``down`` leaves no trace.

Layout of a run directory::

    stack.json            connection info (StackInfo + InfluxDB RPC port); written by up(), removed by down()
    credentials.json      the InfluxDB admin's password, generated once per run directory; survives down()
                          because the InfluxDB meta store keeps the admin user across restarts
    secrets/              the service users' InfluxDB passwords, one 0600 file each (what configs point at)
    fleet/                the stack's fleet registry (fleet/registry.py): its CA, the identities issued to the
                          ingest, the tools and every simulated gateway, the broker's certificate, ACL and CRL
    mosquitto/            mosquitto.conf, data/ (persistence), mosquitto.log, mosquitto.pid
    influxdb/             influxdb.conf, meta/, data/, wal/, influxd.log, influxd.pid

The stack is secured as a deployment is: the broker's only listener is mutual TLS (a client certificate from the
stack's CA or no connection; the certificate's CN is the identity its ACL applies to, gateways may publish only
under their own id), and InfluxDB has an admin that only the stack itself and the tests' assertions use, a
write-only user for the ingest, a read-only one for the API and the dashboards, and the rollup service's (READ on a
database, ALL on its rollups' database: every database is created with its ``<name>_rollup``, docs/api.md
"Pre-aggregation"). No path is tested without them.

The services are started as detached children (own session, output to their log file), so they outlive the
Python process that started them: ``cityos stack up`` returns and the stack keeps running until ``down``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cityos.influx import (
    InfluxClient,
    InfluxError,
    InfluxQueryError,
    InfluxUnreachable,
    query_results,
    quote_ident,
)
from cityos.rollups import target_db
from fleet.broker import tls_listener
from fleet.influxdb import READER as INFLUX_READER
from fleet.influxdb import ROLLUP as INFLUX_ROLLUP
from fleet.influxdb import WRITER as INFLUX_WRITER
from fleet.influxdb import ensure_database, ensure_rollup_database, ensure_user
from fleet.registry import BrokerSettings, Identity, Registry

__all__ = [
    "INFLUX_READER", "INFLUX_ROLLUP", "INFLUX_WRITER", "Stack", "StackError", "StackInfo", "deployed_influx_gogc",
    "find_binary", "identity", "influx_client", "influx_query", "influx_settings", "load_info", "mqtt_client",
    "mqtt_settings",
]

HOST = "127.0.0.1"
INFLUX_USERNAME = "cityos"
DEFAULT_DB = "cityos"

#: The systemd drop-in that sets influxd's ``GOGC`` where InfluxDB serves the City OS API (docs/operations.md): the
#: one place the number lives; a benchmark's stack runs InfluxDB so (:func:`deployed_influx_gogc`).
INFLUX_GOGC_DROP_IN = Path(__file__).resolve().parents[1] / "deploy" / "cloud" / "influxdb-gogc.conf"

#: Searched after $PATH: Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
EXTRA_BIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin", "/sbin")
#: Binary → Debian package that provides it, for the "not found" message.
PACKAGES: dict[str, str] = {"mosquitto": "mosquitto", "influxd": "influxdb"}

#: Graceful stop: SIGTERM, then SIGKILL if the process is still there after this long.
STOP_GRACE_S = 10.0

_STACK_JSON = "stack.json"
_CREDENTIALS_JSON = "credentials.json"

#: Children started by this Python process, so stop() can reap them (otherwise they linger as zombies and look
#: alive in /proc). Services started by another process (e.g. an earlier ``cityos stack up``) are not in here.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}



class StackError(RuntimeError):
    """A stack operation failed; the message is meant for the user (CLI prints it as is)."""


@dataclass(frozen=True)
class StackInfo:
    """Everything a client needs to reach the stack; persisted as run_dir/stack.json."""

    run_dir: Path
    mqtt_host: str
    #: The broker's mutual-TLS listener (its only one).
    mqtt_port: int
    #: The CA that signs the broker's certificate and every client's.
    ca_file: Path
    influx_url: str
    influx_db: str
    influx_username: str
    influx_password: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["ca_file"] = str(self.ca_file)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StackInfo:
        """Build from a stack.json dict; unknown keys (e.g. ``influx_rpc_port``) are ignored."""
        try:
            return cls(
                run_dir=Path(d["run_dir"]),
                mqtt_host=str(d["mqtt_host"]),
                mqtt_port=int(d["mqtt_port"]),
                ca_file=Path(d["ca_file"]),
                influx_url=str(d["influx_url"]),
                influx_db=str(d["influx_db"]),
                influx_username=str(d["influx_username"]),
                influx_password=str(d["influx_password"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StackError(f"malformed stack info ({e!r})") from e

    @property
    def influx_port(self) -> int:
        return int(urllib.parse.urlsplit(self.influx_url).port or 8086)

    @property
    def fleet_dir(self) -> Path:
        """The stack's fleet registry (`cityos fleet --registry` works on it)."""
        return self.run_dir / "fleet"

    def password_file(self, user: str) -> Path:
        """The 0600 file holding a service user's InfluxDB password."""
        return self.run_dir / "secrets" / f"influx-{user}.password"

    def reader_login(self) -> tuple[str, str]:
        """The read-only InfluxDB user and its password (what the dashboards' tools and Grafana read as)."""
        return INFLUX_READER, self.password_file(INFLUX_READER).read_text().strip()


def identity(info: StackInfo, name: str) -> Identity:
    """The certificate and key of ``name`` (a gateway id, ``svc.ingest``, ``dev.tools``...), issued on first use by
    the stack's CA. Any gateway id gets one: the broker's ACL patterns confine it to its own topics."""
    return Registry(info.fleet_dir).identity(name)


def mqtt_settings(info: StackInfo, name: str) -> dict[str, Any]:
    """The ``[mqtt]`` keys that connect ``name`` to this stack's broker (mutual TLS)."""
    return {"host": info.mqtt_host, "port": info.mqtt_port, **identity(info, name).mqtt_settings()}


def mqtt_client(info: StackInfo, name: str, *, client_id: str | None = None, **kw: Any) -> Any:
    """A paho MQTT v5 client that presents ``name``'s certificate (not yet connected): for tools and tests."""
    import uuid

    import paho.mqtt.client as mqtt

    from cityos.credentials import MqttLogin

    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{name}-{uuid.uuid4().hex[:8]}",
        protocol=kw.pop("protocol", mqtt.MQTTv5),
        **kw,
    )
    MqttLogin.model_validate(mqtt_settings(info, name)).configure(c)
    return c


def influx_settings(info: StackInfo, role: str, db: str | None = None) -> dict[str, Any]:
    """The ``[influx]`` keys of a service: ``role`` "writer" (the ingest), "reader" (API, dashboards) or "rollup"
    (the rollup service: ``db`` is its source, the rollups go to ``<db>_rollup``)."""
    user = {"writer": INFLUX_WRITER, "reader": INFLUX_READER, "rollup": INFLUX_ROLLUP}[role]
    return {"url": info.influx_url, "db": db or info.influx_db, "username": user,
            "password_file": str(info.password_file(user))}


# ------------------------------------------------------------------------------------------------------------
# helpers


def find_binary(name: str) -> str:
    """Path of ``name`` on $PATH or in :data:`EXTRA_BIN_DIRS`; else StackError naming the package."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *EXTRA_BIN_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        package = PACKAGES.get(name, name)
        raise StackError(
            f"{name} not found on PATH (or /usr/sbin): install it with `apt-get install {package}`"
        )
    return found


def load_info(run_dir: Path | str) -> StackInfo:
    """Connection info of the stack running in ``run_dir`` (StackError if it is not up)."""
    path = Path(run_dir) / _STACK_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StackError(
            f"no stack is up in {run_dir} (no {_STACK_JSON}): "
            f"start one with `cityos stack up --run-dir {run_dir}`"
        ) from None
    except (OSError, ValueError) as e:
        raise StackError(f"cannot read {path}: {e}") from e
    return StackInfo.from_json(data)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_bindable(port: int) -> bool:
    """Could a server listen on ``port`` now? SO_REUSEADDR like the servers: TIME_WAIT is ok."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _tcp_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an unreaped dead process still has a /proc entry)."""
    if pid in _CHILDREN:
        return _CHILDREN[pid].poll() is None  # reaps it if it died
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Format: "pid (comm) state ..."; comm may contain spaces/parentheses, so split after the last ')'.
    state = stat.rpartition(")")[2].split()[:1]
    return bool(state) and state[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by the owner only (it holds passwords), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def influx_client(info: StackInfo, db: str | None = None) -> InfluxClient:
    """The kernel's InfluxDB client for this stack, as its admin (one per stack and database, kept open)."""
    key = (info.influx_url, info.influx_username, info.influx_password, db or info.influx_db)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = InfluxClient(
            info.influx_url, db or info.influx_db, info.influx_username, info.influx_password, timeout_s=30.0
        )
    return client


_CLIENTS: dict[tuple[str, str, str, str], InfluxClient] = {}


def _forget_clients(influx_url: str) -> None:
    """Close the kept clients of a stack that went down (its port may be another stack's next time)."""
    for key in [k for k in _CLIENTS if k[0] == influx_url]:
        _CLIENTS.pop(key).close()


def influx_query(info: StackInfo, db: str, q: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """InfluxQL with ``epoch=ms``: the series of all statements (``{"name", "columns", "values", "tags"?}``).

    Raises :class:`StackError` on any HTTP or statement error (the developers' tools print it as is).
    """
    try:
        return influx_client(info, db).query(q)
    except InfluxError as exc:
        raise StackError(f"{q!r}: {exc}") from None


# ------------------------------------------------------------------------------------------------------------
# the stack


@dataclass(frozen=True)
class _Service:
    name: str  # key in status()
    binary: str
    dir_name: str
    conf_name: str
    log_name: str
    pid_name: str


_MQTT = _Service("mosquitto", "mosquitto", "mosquitto", "mosquitto.conf", "mosquitto.log", "mosquitto.pid")
_INFLUX = _Service("influxdb", "influxd", "influxdb", "influxdb.conf", "influxd.log", "influxd.pid")


def deployed_influx_gogc(drop_in: Path = INFLUX_GOGC_DROP_IN) -> int:
    """The ``GOGC`` the deployment's drop-in gives influxd (its ``Environment=GOGC=<percent>`` line)."""
    m = re.search(r"^Environment=GOGC=(\d{1,5})\s*$", drop_in.read_text(), re.MULTILINE)
    if m is None:
        raise StackError(f"{drop_in}: no Environment=GOGC=<percent> line")
    return int(m.group(1))


class Stack:
    """Mosquitto + InfluxDB 1.x under ``run_dir``; every method is safe to call twice."""

    def __init__(self, run_dir: Path | str, *, db: str = DEFAULT_DB, compact_cold_after: str | None = None,
                 influx_gogc: int | None = None) -> None:
        """``compact_cold_after``: InfluxDB's ``compact-full-write-cold-duration`` (a duration such as ``30s``;
        None: InfluxDB's 4 h), for a benchmark whose data must sit in shards compacted as a deployment's are.
        ``influx_gogc``: influxd's ``GOGC`` (Go's heap growth before a collection, in percent; None: Go's 100),
        for a benchmark running InfluxDB as docs/operations.md deploys it for the City OS API."""
        # Absolute and resolved: it ends up in the services' command lines, which is how we recognise them.
        self.run_dir = Path(run_dir).expanduser().resolve()
        self.db = db
        if compact_cold_after is not None and not re.fullmatch(r"\d{1,6}(ms|s|m|h)", compact_cold_after):
            raise StackError(f"compact_cold_after: a duration such as 30s, not {compact_cold_after!r}")
        self.compact_cold_after = compact_cold_after
        if influx_gogc is not None and (isinstance(influx_gogc, bool) or not isinstance(influx_gogc, int)
                                        or not 25 <= influx_gogc <= 10_000):
            raise StackError(f"influx_gogc: a percentage from 25 to 10000, not {influx_gogc!r}")
        self.influx_gogc = influx_gogc

    def __repr__(self) -> str:
        return f"Stack({str(self.run_dir)!r}, db={self.db!r})"

    # ---- paths

    def _dir(self, svc: _Service) -> Path:
        return self.run_dir / svc.dir_name

    def _conf(self, svc: _Service) -> Path:
        return self._dir(svc) / svc.conf_name

    def _log(self, svc: _Service) -> Path:
        return self._dir(svc) / svc.log_name

    def _pidfile(self, svc: _Service) -> Path:
        return self._dir(svc) / svc.pid_name

    # ---- public API

    def up(self, timeout: float = 30) -> StackInfo:
        """Start both services, wait until they serve, write stack.json; return existing info if up.

        A service that died (e.g. killed) is restarted on its recorded port if that port is still free.
        On failure, whatever this call started is stopped again so no half stack is left behind.
        """
        deadline = time.monotonic() + timeout
        for binary in ("mosquitto", "influxd"):
            find_binary(binary)  # fail before starting anything
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            state = self._read_state()
            mqtt_pid = self._running_pid(_MQTT)
            influx_pid = self._running_pid(_INFLUX)
            if state is not None and mqtt_pid and influx_pid:
                info = StackInfo.from_json(state)
                # a stack started by an older version may lack a service user (cityos_rollup): add it
                self._ensure_service_users(info, self._credentials())
                if info.influx_db != self.db:
                    self._ensure_database(info, self.db)
                    info = StackInfo(**{**asdict(info), "influx_db": self.db})
                    self._write_state(info, int(state["influx_rpc_port"]))
                return info

            if state is None and (mqtt_pid or influx_pid):
                # Running but stack.json is gone (deleted by hand?): its ports are unknown, start afresh.
                for svc in (_MQTT, _INFLUX):
                    self._stop(svc, kill=False)
                mqtt_pid = influx_pid = None
            creds = self._credentials()
            ports = self._choose_ports(state, mqtt_running=bool(mqtt_pid), influx_running=bool(influx_pid))
            mqtt_port, http_port, rpc_port = ports
            registry = Registry.open_or_create(self.run_dir / "fleet", f"cityos dev stack CA ({self.run_dir.name})")
            info = StackInfo(
                run_dir=self.run_dir,
                mqtt_host=HOST,
                mqtt_port=mqtt_port,
                ca_file=registry.ca.ca_file,
                influx_url=f"http://{HOST}:{http_port}",
                influx_db=self.db,
                influx_username=INFLUX_USERNAME,
                influx_password=creds["influx_password"],
            )
            started: list[_Service] = []
            try:
                if not mqtt_pid:
                    self._start_mqtt(info, deadline)
                    started.append(_MQTT)
                if not influx_pid:
                    self._start_influx(info, rpc_port, deadline)
                    started.append(_INFLUX)
                self._ensure_influx_admin(info)
                self._ensure_service_users(info, creds)
                self._ensure_database(info, info.influx_db)
            except BaseException:
                for svc in started:
                    with contextlib.suppress(StackError):
                        self._stop(svc, kill=False)
                raise
            self._write_state(info, rpc_port)
            return info

    def down(self) -> None:
        """Stop both services (only processes we started, recognised by their config path); remove stack.json.

        Both are attempted even if one fails, so ``down`` after one service crashed still stops the other.
        """
        if not self.run_dir.is_dir():
            return
        with self._lock():
            errors: list[str] = []
            for svc in (_MQTT, _INFLUX):
                try:
                    self._stop(svc, kill=False)
                except StackError as e:
                    errors.append(str(e))
            if errors:
                raise StackError("; ".join(errors))
            state = self._read_state()
            if state and "influx_url" in state:
                _forget_clients(state["influx_url"])
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / _STACK_JSON).unlink()

    def status(self) -> dict[str, Any]:
        """Liveness of both services, for ``cityos stack status`` and for tests."""
        state = self._read_state() or {}
        mqtt_pid = self._running_pid(_MQTT)
        influx_pid = self._running_pid(_INFLUX)
        influx_url = state.get("influx_url")
        ready = False
        if influx_pid and influx_url:
            with contextlib.suppress(StackError):
                ready = influx_client(StackInfo.from_json(state)).ping(timeout_s=2)
        http_port = urllib.parse.urlsplit(influx_url).port if influx_url else None
        return {
            "run_dir": str(self.run_dir),
            "up": bool(state) and bool(mqtt_pid) and ready,
            "mosquitto": {
                "running": mqtt_pid is not None,
                "pid": mqtt_pid,
                "port": state.get("mqtt_port"),
                "log": str(self._log(_MQTT)),
            },
            "influxdb": {
                "running": influx_pid is not None,
                "ready": ready,
                "pid": influx_pid,
                "port": http_port,
                "url": influx_url,
                "log": str(self._log(_INFLUX)),
            },
        }

    def info(self) -> StackInfo:
        """Connection info from stack.json (StackError if the stack is not up)."""
        return load_info(self.run_dir)

    def reload_mqtt(self) -> None:
        """SIGHUP the broker: it re-reads the ACL (a revoked identity is shut out, the others stay connected)."""
        with self._lock():
            pid = self._running_pid(_MQTT)
            if pid is None:
                raise StackError("mosquitto is not running")
            Registry(self.run_dir / "fleet").write_acl()
            os.kill(pid, signal.SIGHUP)

    def stop_mqtt(self, kill: bool = False) -> None:
        """Stop the broker (SIGKILL at once with ``kill=True``, to simulate a crash); stack.json stays."""
        with self._lock():
            self._stop(_MQTT, kill=kill)

    def start_mqtt(self, timeout: float = 30) -> None:
        """Restart the broker on its recorded port with the same persistence directory (no-op if running)."""
        with self._lock():
            info = self._require_state()[0]
            if self._running_pid(_MQTT) is None:
                self._start_mqtt(info, time.monotonic() + timeout)

    def stop_influx(self, kill: bool = False) -> None:
        """Stop InfluxDB (SIGKILL at once with ``kill=True``); stack.json stays."""
        with self._lock():
            self._stop(_INFLUX, kill=kill)

    def start_influx(self, timeout: float = 30) -> None:
        """Restart InfluxDB on its recorded ports with the same data directory (no-op if running)."""
        with self._lock():
            info, rpc_port = self._require_state()
            if self._running_pid(_INFLUX) is None:
                self._start_influx(info, rpc_port, time.monotonic() + timeout)

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` (idempotent in InfluxDB 1.x), and its rollups' database ``<name>_rollup``."""
        self._ensure_database(self.info(), name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE`` of it and its rollups' database (no error if they do not exist)."""
        self._influx_query(self.info(), f"DROP DATABASE {quote_ident(name)}")
        self._influx_query(self.info(), f"DROP DATABASE {quote_ident(target_db(name))}")

    # ---- state

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down/start/stop on one run directory across processes (two CLIs, test workers)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ".stack.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any] | None:
        path = self.run_dir / _STACK_JSON
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StackError(f"cannot read {path}: {e}") from e

    def _require_state(self) -> tuple[StackInfo, int]:
        state = self._read_state()
        if state is None:
            raise StackError(f"no stack is up in {self.run_dir}: call up() first")
        return StackInfo.from_json(state), int(state["influx_rpc_port"])

    def _write_state(self, info: StackInfo, rpc_port: int) -> None:
        _write_private(
            self.run_dir / _STACK_JSON,
            json.dumps({**info.to_json(), "influx_rpc_port": rpc_port}, indent=2) + "\n",
        )

    def _credentials(self) -> dict[str, str]:
        """Passwords for this run directory, generated on first use and kept across down/up.

        They must survive ``down``: the InfluxDB admin user lives in the meta store, which the next up reuses.
        """
        path = self.run_dir / _CREDENTIALS_JSON
        creds: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            creds = json.loads(path.read_text())
        wanted = ("influx_password", INFLUX_WRITER, INFLUX_READER, INFLUX_ROLLUP)
        if not isinstance(creds, dict) or not all(k in creds for k in wanted):
            # URL-safe alphabet: nothing to escape in InfluxQL string literals or URLs.
            creds = {k: creds.get(k) or secrets.token_urlsafe(18) for k in wanted} if isinstance(creds, dict) else {
                k: secrets.token_urlsafe(18) for k in wanted}
            _write_private(path, json.dumps(creds, indent=2) + "\n")
        (self.run_dir / "secrets").mkdir(mode=0o700, exist_ok=True)
        for user in (INFLUX_WRITER, INFLUX_READER, INFLUX_ROLLUP):
            _write_private(self.run_dir / "secrets" / f"influx-{user}.password", creds[user] + "\n")
        return creds

    def _choose_ports(
        self, state: dict[str, Any] | None, *, mqtt_running: bool, influx_running: bool
    ) -> tuple[int, int, int]:
        """(mqtt, influx http, influx rpc): the recorded ones where possible, fresh free ports otherwise."""
        fresh = iter(_free_ports(3))
        if state is None:
            return next(fresh), next(fresh), next(fresh)
        mqtt = int(state["mqtt_port"])
        http = StackInfo.from_json(state).influx_port
        rpc = int(state["influx_rpc_port"])
        if not mqtt_running and not _port_bindable(mqtt):
            mqtt = next(fresh)
        if not influx_running and not (_port_bindable(http) and _port_bindable(rpc)):
            http, rpc = next(fresh), next(fresh)
        return mqtt, http, rpc

    # ---- processes

    def _running_pid(self, svc: _Service) -> int | None:
        """Pid from the pid file if that process is alive *and* is ours (its command line names our config).

        A stale pid file after a SIGKILL or a reboot may name an unrelated process that reused the pid.
        """
        try:
            pid = int(self._pidfile(svc).read_text().strip())
        except (OSError, ValueError):
            return None
        if pid <= 0 or not _pid_alive(pid):
            return None
        if str(self._conf(svc)) not in _cmdline(pid):
            return None
        return pid

    def _spawn(
        self, svc: _Service, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a detached child (own session, output appended to its log) that outlives this process."""
        log = self._log(svc)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=self._dir(svc),
                env=env,
            )
        _CHILDREN[proc.pid] = proc
        # The services write it too (and remove it on a clean exit); writing it now closes the window before.
        self._pidfile(svc).write_text(f"{proc.pid}\n")
        return proc

    def _wait_ready(
        self,
        svc: _Service,
        proc: subprocess.Popen[bytes],
        port: int,
        deadline: float,
        probe: Callable[[], bool],
    ) -> None:
        """Poll ``probe()`` until it succeeds; StackError + log tail if the process dies/times out."""
        while True:
            if proc.poll() is not None:
                raise StackError(
                    f"{svc.binary} exited with status {proc.returncode} during startup; "
                    f"last lines of {self._log(svc)}:\n{_log_tail(self._log(svc))}"
                )
            if probe():
                # A foreign listener would also answer: make sure ours did not just die on "address in use".
                if proc.poll() is None:
                    return
                continue
            if time.monotonic() > deadline:
                with contextlib.suppress(StackError):
                    self._stop(svc, kill=True)
                raise StackError(
                    f"{svc.binary} not ready on port {port} in time; last lines of {self._log(svc)}:\n"
                    f"{_log_tail(self._log(svc))}"
                )
            time.sleep(0.05)

    def _stop(self, svc: _Service, *, kill: bool) -> None:
        """SIGTERM (or SIGKILL), wait for the process to be gone, SIGKILL after :data:`STOP_GRACE_S`."""
        pid = self._running_pid(svc)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
            if not self._wait_gone(pid, STOP_GRACE_S):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait_gone(pid, 5.0):
                    raise StackError(f"{svc.binary} (pid {pid}) did not exit after SIGKILL")
            _CHILDREN.pop(pid, None)
        # Clean exits remove it themselves; after a SIGKILL it is stale.
        with contextlib.suppress(FileNotFoundError):
            self._pidfile(svc).unlink()

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        proc = _CHILDREN.get(pid)
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # ---- mosquitto

    def _mosquitto_conf(self, port: int) -> str:
        d = self._dir(_MQTT)
        registry = Registry(self.run_dir / "fleet")
        files = registry.broker_files(HOST, ("localhost",), dev=True)
        # `cityos fleet --registry RUN/fleet` works on this stack: it reaches and reloads this broker.
        registry.set_broker(BrokerSettings(host=HOST, port=port, pid_file=self._pidfile(_MQTT)))
        lines = [
            "# Written by citylab.stack: regenerated on every start, edits are lost.",
            "per_listener_settings false",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to user "mosquitto", which cannot write our run directory.
            lines.append("user root")
        lines += [
            *tls_listener(port, HOST, **files),
            "persistence true",
            f"persistence_location {d / 'data'}/",
            # Save every second (by time, not change count) so a SIGKILLed broker loses as little as possible.
            "autosave_interval 1",
            "autosave_on_changes false",
            # Default 1000 silently drops messages for an offline durable session; default 20 in flight
            # throttles a batched ingest. max_packet_size unset (no limit): the wire contract has its own.
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 1000",
            f"log_dest file {self._log(_MQTT)}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            f"pid_file {self._pidfile(_MQTT)}",
        ]
        return "\n".join(lines) + "\n"

    def _start_mqtt(self, info: StackInfo, deadline: float) -> None:
        mosquitto = find_binary("mosquitto")
        d = self._dir(_MQTT)
        (d / "data").mkdir(parents=True, exist_ok=True)
        if not _port_bindable(info.mqtt_port):
            raise StackError(
                f"MQTT port {info.mqtt_port} is taken by another process; "
                "`cityos stack down` then `up` picks new ports"
            )
        conf = self._conf(_MQTT)
        conf.write_text(self._mosquitto_conf(info.mqtt_port))
        proc = self._spawn(_MQTT, [mosquitto, "-c", str(conf)])
        self._wait_ready(_MQTT, proc, info.mqtt_port, deadline, lambda: _tcp_open(info.mqtt_port))

    # ---- influxdb

    def _influxdb_conf(self, http_port: int, rpc_port: int) -> str:
        d = self._dir(_INFLUX)
        cold = "" if self.compact_cold_after is None else \
            f'\n  compact-full-write-cold-duration = "{self.compact_cold_after}"'
        return f"""\
# Written by citylab.stack: regenerated on every start, edits are lost.
reporting-disabled = true
# RPC (backup/restore) port: a free one, the default 8088 may clash with another InfluxDB.
bind-address = "{HOST}:{rpc_port}"

[meta]
  dir = "{d / "meta"}"

[data]
  dir = "{d / "data"}"{cold}
  wal-dir = "{d / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{HOST}:{http_port}"
  auth-enabled = true
  log-enabled = false
  max-row-limit = 0

[logging]
  suppress-logo = true

[continuous_queries]
  enabled = false
"""

    def _influx_env(self) -> dict[str, str]:
        """influxd's environment: ours without ``INFLUXDB_*`` (they would override the config file: keep ours
        authoritative), with ``GOGC`` when :attr:`influx_gogc` is set."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        if self.influx_gogc is not None:
            env["GOGC"] = str(self.influx_gogc)
        return env

    def _start_influx(self, info: StackInfo, rpc_port: int, deadline: float) -> None:
        influxd = find_binary("influxd")
        d = self._dir(_INFLUX)
        for sub in ("meta", "data", "wal"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for port in (info.influx_port, rpc_port):
            if not _port_bindable(port):
                raise StackError(
                    f"InfluxDB port {port} is taken by another process; "
                    "`cityos stack down` then `up` picks new ports"
                )
        conf = self._conf(_INFLUX)
        conf.write_text(self._influxdb_conf(info.influx_port, rpc_port))
        proc = self._spawn(
            _INFLUX, [influxd, "run", "-config", str(conf), "-pidfile", str(self._pidfile(_INFLUX))],
            env=self._influx_env(),
        )

        self._wait_ready(_INFLUX, proc, info.influx_port, deadline, influx_client(info).ping)

    def _influx_query(self, info: StackInfo, q: str, *, auth: bool = True) -> None:
        err = self._influx_error(info, q, auth=auth)
        if err is not None:
            shown = q.split(" WITH PASSWORD")[0].split(" = '")[0]  # never a password in a message
            raise StackError(f"InfluxDB query failed ({shown}): {err}")

    @staticmethod
    def _influx_error(info: StackInfo, q: str, *, auth: bool = True) -> str | None:
        """InfluxDB's error for ``q`` (HTTP-level or a statement's), or None if it succeeded."""
        try:
            query_results(*influx_client(info).request("/query", method="POST", form={"q": q}, auth=auth))
        except InfluxUnreachable as e:
            raise StackError(str(e)) from e
        except InfluxQueryError as e:
            return str(e)
        return None

    def _ensure_influx_admin(self, info: StackInfo) -> None:
        """Create the admin user on first start (allowed unauthenticated only while no user exists)."""
        login_error = self._influx_error(info, "SHOW DATABASES")
        if login_error is None:
            return
        q = (
            f"CREATE USER {quote_ident(info.influx_username)} WITH PASSWORD '{info.influx_password}' "
            "WITH ALL PRIVILEGES"
        )
        try:
            self._influx_query(info, q, auth=False)
        except StackError as e:
            raise StackError(
                f"cannot log in to InfluxDB in {self._dir(_INFLUX)} as {info.influx_username!r} "
                f"({login_error}) and cannot create that user ({e}); "
                f"was {self.run_dir / _CREDENTIALS_JSON} changed? Remove {self._dir(_INFLUX)} to start afresh"
            ) from e

    def _ensure_service_users(self, info: StackInfo, creds: dict[str, str]) -> None:
        """The ingest's write-only, the readers' read-only and the rollup users (their grants come per database)."""
        try:
            ensure_user(influx_client(info), INFLUX_WRITER, creds[INFLUX_WRITER])
            ensure_user(influx_client(info), INFLUX_READER, creds[INFLUX_READER])
            ensure_user(influx_client(info), INFLUX_ROLLUP, creds[INFLUX_ROLLUP])
        except InfluxError as exc:
            raise StackError(f"InfluxDB service users: {exc}") from None

    def _ensure_database(self, info: StackInfo, name: str) -> None:
        """The database and its rollups' database with the service users' grants, as a deployment has them
        (fleet/influxdb.py)."""
        try:
            ensure_database(influx_client(info), name)
            ensure_rollup_database(influx_client(info), target_db(name))
        except InfluxError as exc:
            raise StackError(f"InfluxDB database {name!r}: {exc}") from None
