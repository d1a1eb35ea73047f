"""Node-RED as the ingest's peer: one headless Node-RED running ``flow.json`` against a private stack.

``benchmarks/ingest_throughput.py`` uses it; nothing in the product does. Node-RED and its InfluxDB nodes are
installed here with npm (``npm ci`` in this folder: ``package.json`` pins them, ``node_modules/`` is not committed).

Each :class:`NodeRed` has its own userDir (a private temp directory, mode 0700) holding what this module writes:

* ``settings.js``: headless (``httpAdminRoot: false``, ``httpNodeRoot: false``: no editor, no HTTP listener at
  all), ``credentialSecret: false`` so that the credentials file is plain JSON, no telemetry, no palette installs,
  info-level console log (the benchmark reads it for "Started flows" and "Connected to broker").
* ``flows.json``: ``flow.json`` from this folder, unchanged. What differs per run (broker host/port, the MQTT
  client id, the certificate files, InfluxDB's host/port/database) is in its properties as ``${CITYOS_...}``,
  which Node-RED substitutes from its environment when it builds the nodes.
* ``flows_cred.json`` (0600): the InfluxDB config node's username and password, the stack's write-only user
  (``citylab.stack.INFLUX_WRITER``) and its password read from the stack's secrets file. No secret is on a command
  line or in the environment.

The MQTT side presents a certificate from the stack's fleet CA: ``dev.tools`` by default (the developer stack's ACL
gives it ``readwrite cityos/v1/#``; a least-privilege ``read cityos/v1/+/telemetry`` identity of its own would need a
grant in ``fleet/broker.py``'s ``DEV_GRANTS``). The broker config node keeps a durable MQTT v5 session: fixed client
id, ``cleansession: false``, session expiry 86,400 s, ``autoUnsubscribe: false`` (so stopping Node-RED does not
unsubscribe), QoS 1 on ``cityos/v1/+/telemetry``. :meth:`NodeRed.discard_session` removes that session.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from citylab.stack import INFLUX_WRITER, StackInfo, identity, mqtt_settings

HERE = Path(__file__).resolve().parent
FLOW = HERE / "flow.json"
RED_JS = HERE / "node_modules" / "node-red" / "red.js"

SETTINGS_JS = """\
// Written by benchmarks/nodered/peer.py for one benchmark run (regenerated every time).
module.exports = {
    flowFile: "flows.json",
    flowFilePretty: true,
    // flows_cred.json is plain JSON (mode 0600) in this private userDir.
    credentialSecret: false,
    // Headless: no editor, no admin API, no HTTP endpoints, so no listener at all.
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    uiHost: "127.0.0.1",
    mqttReconnectTime: 1000,
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    externalModules: { autoInstall: false, palette: { allowInstall: false }, modules: { allowInstall: false } },
    functionExternalModules: false,
    exportGlobalContextKeys: false,
    logging: { console: { level: "info", metrics: false, audit: false } },
};
"""


class NodeRedError(RuntimeError):
    pass


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise NodeRedError("node not found on PATH (Node-RED 4 needs Node.js >= 18.5)")
    if not RED_JS.exists():
        raise NodeRedError(f"Node-RED is not installed: run `npm ci` in {HERE}")
    return node


def versions() -> dict[str, str]:
    """Node.js, node-red and node-red-contrib-influxdb as installed (for the results)."""
    out = {
        "node": subprocess.run([node_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    }
    for pkg in ("node-red", "node-red-contrib-influxdb"):
        with contextlib.suppress(OSError, ValueError):
            out[pkg] = json.loads((HERE / "node_modules" / pkg / "package.json").read_text())["version"]
    return out


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class NodeRed:
    """A headless Node-RED process running ``flow.json`` into InfluxDB database ``db`` of the stack ``info``."""

    def __init__(
        self,
        info: StackInfo,
        user_dir: Path,
        *,
        db: str,
        client_id: str | None = None,
        mqtt_identity: str = "dev.tools",
    ) -> None:
        self.info = info
        self.user_dir = Path(user_dir)
        self.db = db
        self.client_id = client_id or f"bench-nodered-{uuid.uuid4().hex[:8]}"
        self.mqtt_identity = mqtt_identity
        self.log_path = self.user_dir / "node-red.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._flows_started = threading.Event()
        self._connected = threading.Event()
        #: time.monotonic() when the last "Connected to broker" line was read (the MQTT CONNACK, within ~1 ms).
        self.connected_at: float | None = None
        #: Error lines of the current process (an InfluxDB write that failed is one each).
        self.error_lines: list[str] = []
        self._write_user_dir()

    # ---- files

    def _write_user_dir(self) -> None:
        self.user_dir.mkdir(parents=True, exist_ok=True)
        self.user_dir.chmod(0o700)
        (self.user_dir / "settings.js").write_text(SETTINGS_JS)
        flow = json.loads(FLOW.read_text())
        (self.user_dir / "flows.json").write_text(json.dumps(flow, indent=4) + "\n")
        influx_node = next(n for n in flow if n["type"] == "influxdb")
        password = self.info.password_file(INFLUX_WRITER).read_text().strip()
        creds = {influx_node["id"]: {"username": INFLUX_WRITER, "password": password}}
        _write_private(self.user_dir / "flows_cred.json", json.dumps(creds, indent=4) + "\n")

    def _env(self) -> dict[str, str]:
        ident = identity(self.info, self.mqtt_identity)
        influx = self.info.influx_url.removeprefix("http://").rstrip("/")
        host, _, port = influx.rpartition(":")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CITYOS_", "NODE_RED_"))}
        env.update(
            CITYOS_MQTT_HOST=self.info.mqtt_host,
            CITYOS_MQTT_PORT=str(self.info.mqtt_port),
            CITYOS_MQTT_CLIENT_ID=self.client_id,
            CITYOS_TLS_CA=str(ident.ca_file),
            CITYOS_TLS_CERT=str(ident.cert_file),
            CITYOS_TLS_KEY=str(ident.key_file),
            CITYOS_INFLUX_HOST=host,
            CITYOS_INFLUX_PORT=port,
            CITYOS_INFLUX_DB=self.db,
        )
        return env

    # ---- process

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive:
            return
        self._flows_started.clear()
        self._connected.clear()
        self.connected_at = None
        self.error_lines = []
        self.proc = subprocess.Popen(
            [
                node_binary(),
                str(RED_JS),
                "--userDir",
                str(self.user_dir),
                "--settings",
                str(self.user_dir / "settings.js"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.user_dir,
            env=self._env(),
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for raw in proc.stdout:
                now = time.monotonic()
                log.write(raw)
                line = raw.decode(errors="replace")
                if "Connected to broker" in line:
                    with self._lock:
                        self.connected_at = now
                    self._connected.set()
                elif "Started flows" in line:
                    self._flows_started.set()
                elif "[error]" in line:
                    with self._lock:
                        self.error_lines.append(line.rstrip())
            log.flush()

    def wait_running(self, timeout: float = 60) -> float:
        """Wait until the flows are started and the broker connection is up; returns when it came up."""
        deadline = time.monotonic() + timeout
        for ev, what in ((self._flows_started, "Started flows"), (self._connected, "Connected to broker")):
            while not ev.wait(0.05):
                if not self.alive:
                    raise NodeRedError(f"Node-RED exited before {what!r}:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise NodeRedError(f"Node-RED: no {what!r} within {timeout}s:\n{self.tail()}")
        assert self.connected_at is not None
        return self.connected_at

    def stop(self, timeout: float = 20) -> int | None:
        """SIGINT (Node-RED stops its flows: the MQTT client disconnects normally), SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def errors(self) -> int:
        with self._lock:
            return len(self.error_lines)

    # ---- MQTT session

    def discard_session(self, timeout_s: float = 10) -> bool:
        """Remove the broker's durable session of this client id (clean start, session expiry 0).

        Left behind, it would queue every later run's telemetry (subscribed to ``cityos/v1/+/telemetry``).
        """
        from ingest.config import MqttConfig
        from ingest.mqtt_in import discard_session

        cfg = MqttConfig(**mqtt_settings(self.info, self.mqtt_identity))
        return discard_session(cfg, timeout_s, client_id=self.client_id)
