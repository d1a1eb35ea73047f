"""The whole path as processes on this machine: simulated stations → gateway agents → broker → ingest → InfluxDB.

Used by ``cityos demo`` and by the end-to-end tests, which kill and restart its pieces. Every piece runs as its own
OS process started exactly as an operator would start it (``python3 -m cityos_cli gateway run --config ...``), so a
SIGKILL here is a real crash, not a simulated one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citylab.stack import StackInfo, influx_query, influx_settings, mqtt_client, mqtt_settings
from cityos.config import dump_toml
from edge.outbox import Outbox
from ingest.config import IngestConfig


class Proc:
    """One child process with its log file; stop() is SIGTERM then SIGKILL, kill() is SIGKILL at once."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        if self.popen is None:
            return None
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(5)

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class GatewaySpec:
    gateway_id: str
    stations: list[tuple[str, int]]  # (device_id, unit)
    fault: str = ""
    dir: Path = field(default_factory=Path)
    #: Where its outbox lives, if not in ``dir`` (a test puts it on a small filesystem of its own).
    outbox_dir: Path | None = None

    @property
    def tty(self) -> Path:
        return self.dir / "ttyFOREST0"

    @property
    def ground_truth(self) -> Path:
        return self.dir / "ground-truth.jsonl"

    @property
    def outbox(self) -> Path:
        return (self.outbox_dir or self.dir) / "outbox.db"

    @property
    def config(self) -> Path:
        return self.dir / "gateway.toml"


@dataclass
class Comparison:
    truth: int
    stored: int
    missing: list[tuple[str, str, int]]
    extra: list[tuple[str, str, int]]
    wrong: list[tuple[tuple[str, str, int], dict[str, Any], dict[str, Any]]]
    doubled: int

    @property
    def exact(self) -> bool:
        return self.truth > 0 and not (self.missing or self.extra or self.wrong or self.doubled)


def outbox_depth(paths: Iterable[Path], older_than_s: float = 0.0) -> int:
    """Readings waiting in these gateways' outboxes (read-only: the agents may be writing them)."""
    return sum(Outbox.depth_of(p, older_than_s) for p in paths)


def gateway_config(
    info: StackInfo, gateway_id: str, outbox_path: Path, sources: list[dict[str, Any]], **sections: dict[str, Any]
) -> dict[str, Any]:
    """A gateway's config on the private stack, as an installer would write it, with the short reconnect and
    status intervals a demo or a test watches; ``sections`` add or extend sections (``outbox={...}``,
    ``clock={...}``)."""
    cfg: dict[str, Any] = {
        "gateway": {"id": gateway_id},
        # The gateway's own certificate (CN = its id), issued by the stack's CA as `cityos fleet add` would.
        "mqtt": {**mqtt_settings(info, gateway_id), "backoff_min_s": 0.2, "backoff_max_s": 2.0,
                 "status_interval_s": 2.0},
        "outbox": {"path": outbox_path},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    cfg["sources"] = sources
    return cfg


def write_gateway_config(path: Path, cfg: dict[str, Any], header: str = "") -> None:
    path.write_text(dump_toml(cfg, header), encoding="utf-8")


def ingest_config(
    info: StackInfo,
    data_dir: str | Path,
    client_id: str = "cityos-ingest",
    *,
    db: str | None = None,
    mqtt: dict[str, Any] | None = None,
    influx: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> IngestConfig:
    """An ingest config for the private stack (the demo, the tests, the benchmarks); extra keys override."""
    data = {
        # Its own identities: svc.ingest on the broker, the write-only user in InfluxDB.
        "mqtt": {**mqtt_settings(info, "svc.ingest"), "client_id": client_id, **(mqtt or {})},
        "influx": {**influx_settings(info, "writer", db), **(influx or {})},
        "ingest": {"data_dir": str(data_dir), **(ingest or {})},
    }
    return IngestConfig.from_dict(data, "ingest_config")


def write_ingest_config(path: Path, info: StackInfo, *, db: str, data_dir: Path, client_id: str) -> None:
    """An ingest config file for the private stack, with short retry and stall times (a demo or a test watches)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = ingest_config(info, data_dir, client_id, db=db, mqtt={"reconnect_max_s": 2},
                        influx={"retry_max_s": 2.0}, ingest={"stall_after_s": 5})
    path.write_text(cfg.to_toml(), encoding="utf-8")


class Pipeline:
    def __init__(
        self,
        run_dir: Path,
        info: StackInfo,
        *,
        gateways: int = 2,
        stations: int = 3,
        db: str | None = None,
        ingest_client_id: str = "cityos-ingest",
        accel: float = 600.0,
        sample_interval: float = 1.0,
        fault: str = "",
        prefix: str = "gw-forest",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.info = info
        self.db = db or info.influx_db
        self.accel = accel
        self.sample_interval = sample_interval
        self.ingest_client_id = ingest_client_id
        self.gateways: list[GatewaySpec] = []
        for g in range(gateways):
            gid = f"{prefix}-{g + 1:02d}"
            st = [(f"forest-{g + 1:02d}-{s + 1:02d}", s + 1) for s in range(stations)]
            self.gateways.append(GatewaySpec(gid, st, fault, self.run_dir / gid))
        self.sims: dict[str, Proc] = {}
        self.agents: dict[str, Proc] = {}
        self.ingest: Proc | None = None
        self.ingest_dir = self.run_dir / "ingest"
        #: Latest retained status per gateway id, once watch_status() runs.
        self.status: dict[str, dict[str, Any]] = {}
        self._status_client: Any = None
        #: Observation covers this run only (an earlier demo's points may share the database).
        self.started_ms = 0

    # --- configs -------------------------------------------------------------------------------------------

    def write_configs(self) -> None:
        for gw in self.gateways:
            gw.dir.mkdir(parents=True, exist_ok=True)
            source = {"type": "forest_station", "name": "bus0", "port": gw.tty,
                      "stations": [{"device_id": dev, "unit": unit} for dev, unit in gw.stations]}
            write_gateway_config(gw.config, gateway_config(self.info, gw.gateway_id, gw.outbox, [source]))
        write_ingest_config(
            self.run_dir / "ingest.toml", self.info, db=self.db, data_dir=self.ingest_dir,
            client_id=self.ingest_client_id,
        )

    # --- processes -----------------------------------------------------------------------------------------

    def _py(self, *args: str) -> list[str]:
        return [sys.executable, "-m", *args]

    def start_ingest(self) -> None:
        self.ingest = Proc(
            "ingest", self._py("cityos_cli", "ingest", "--config", str(self.run_dir / "ingest.toml")),
            self.run_dir / "logs" / "ingest.log",
        )
        self.ingest.start()

    def start_sim(self, gw: GatewaySpec) -> None:
        stations = ",".join(f"{d}:{u}" for d, u in gw.stations)
        argv = self._py(
            "firmware_sim.forest.sim", "--stations", stations, "--link", str(gw.tty),
            "--ground-truth", str(gw.ground_truth), "--accel", str(self.accel),
            "--sample-interval", str(self.sample_interval), "--seed", str(zlib.crc32(gw.gateway_id.encode()) % 1000),
        )
        if gw.fault:
            argv += ["--fault", gw.fault]
        p = Proc(f"sim-{gw.gateway_id}", argv, self.run_dir / "logs" / f"sim-{gw.gateway_id}.log")
        p.start()
        self.sims[gw.gateway_id] = p

    def start_agent(self, gw: GatewaySpec) -> None:
        p = Proc(
            f"agent-{gw.gateway_id}", self._py("cityos_cli", "gateway", "run", "--config", str(gw.config)),
            self.run_dir / "logs" / f"agent-{gw.gateway_id}.log",
        )
        p.start()
        self.agents[gw.gateway_id] = p

    def start(self) -> None:
        """Ingest first (its durable session must exist before gateways publish), then devices, then agents."""
        self.started_ms = int(time.time() * 1000)
        self.write_configs()
        self.start_ingest()
        self.wait_for(lambda: self.ingest_health().get("connected") is True, 30, "ingest to connect")
        for gw in self.gateways:
            self.start_sim(gw)
        self.wait_for(lambda: all(gw.tty.exists() for gw in self.gateways), 30, "simulators' ptys")
        for gw in self.gateways:
            self.start_agent(gw)

    def freeze_devices(self) -> None:
        """Stations stop taking new samples but keep answering, so the agents can read everything produced."""
        for p in self.sims.values():
            p.signal(signal.SIGUSR1)

    def stop(self) -> None:
        c = self._status_client
        if c is not None:
            c.disconnect()
            c.loop_stop()
            self._status_client = None
        for p in [*self.agents.values(), *self.sims.values()]:
            p.stop()
        if self.ingest:
            self.ingest.stop()
            # The ingest's durable session would otherwise queue every later message for days on this broker.
            from ingest.mqtt_in import discard_session

            discard_session(IngestConfig.from_toml(self.run_dir / "ingest.toml").mqtt)
            self.ingest = None

    def procs(self) -> list[Proc]:
        return [*self.sims.values(), *self.agents.values(), *([self.ingest] if self.ingest else [])]

    # --- observation ---------------------------------------------------------------------------------------

    def wait_for(self, cond: Any, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.1)
        dead = [f"{p.name} exited {p.popen.returncode}:\n{p.tail()}" for p in self.procs() if p.popen and not p.alive]
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + ("\n" + "\n".join(dead)))

    def watch_status(self) -> None:
        """Follow the gateways' retained status messages (what a fleet view sees), for progress displays."""
        from cityos import wire

        c = mqtt_client(self.info, "svc.fleet")

        def _on_message(_c: Any, _u: Any, msg: Any) -> None:
            try:
                st = json.loads(msg.payload)
                self.status[st["gateway_id"]] = st
            except (ValueError, KeyError, TypeError):
                pass

        c.on_message = _on_message
        c.on_connect = lambda cl, *_: cl.subscribe(wire.STATUS_FILTER, qos=1)
        c.connect_async(self.info.mqtt_host, self.info.mqtt_port)
        c.loop_start()
        self._status_client = c

    def published(self) -> int:
        """Readings the gateways had handed to the broker (PUBACKed), from their latest status messages."""
        return sum(
            int(st.get("counters", {}).get("uplink_acked_readings", 0))
            for gid, st in self.status.items()
            if any(g.gateway_id == gid for g in self.gateways)
        )

    def ingest_health(self) -> dict[str, Any]:
        try:
            return json.loads((self.ingest_dir / "health.json").read_text())
        except (OSError, ValueError):
            return {}

    def ground_truth(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for gw in self.gateways:
            if gw.ground_truth.exists():
                for line in gw.ground_truth.read_text().splitlines():
                    d = json.loads(line)
                    if "sample_no" in d:
                        out.append({**d, "gateway_id": gw.gateway_id})
        return out

    def backlog(self) -> int:
        return outbox_depth(gw.outbox for gw in self.gateways)

    def query(self, q: str) -> list[dict[str, Any]]:
        return influx_query(self.info, self.db, q)

    def _since(self) -> str:
        # Station clocks are set from this machine's clock after start, so no sample of this run is older.
        return f"time >= {self.started_ms}ms"

    def influx_count(self, measurement: str = "forest") -> int:
        series = self.query(f'SELECT count("battery_v") FROM "{measurement}" WHERE {self._since()}')
        return int(series[0]["values"][0][1]) if series else 0

    def influx_points(self, measurement: str = "forest") -> list[dict[str, Any]]:
        out = []
        for s in self.query(f'SELECT * FROM "{measurement}" WHERE {self._since()} GROUP BY "device", "gateway"'):
            cols = s["columns"]
            for row in s["values"]:
                d = dict(zip(cols, row, strict=True))
                ts = d.pop("time")
                out.append({"ts": ts, **s["tags"], "values": {k: v for k, v in d.items() if v is not None}})
        return out

    def compare(self) -> Comparison:
        """InfluxDB against the ground truth, point by point: (gateway, device, timestamp) and every value.

        "Every value" includes the gateway's derived values (rain intensity, event rainfall, tilt rate): the
        simulators' truth carries them computed independently over the true sample stream, so an agent that was
        SIGKILLed and restarted must have carried its windows through its committed state to compare equal.
        """
        truth = {(t["gateway_id"], t["device_id"], t["ts"]): t["values"] for t in self.ground_truth()}
        stored: dict[tuple[str, str, int], dict[str, Any]] = {}
        doubled = 0
        for p in self.influx_points():
            key = (p["gateway"], p["device"], p["ts"])
            doubled += key in stored
            stored[key] = {k: v for k, v in p["values"].items() if k != "backfill"}
        return Comparison(
            truth=len(truth),
            stored=len(stored),
            missing=sorted(set(truth) - set(stored)),
            extra=sorted(set(stored) - set(truth)),
            wrong=[(k, truth[k], stored[k]) for k in truth if k in stored and truth[k] != stored[k]],
            doubled=doubled,
        )

    def settle(self, timeout: float = 120) -> None:
        """Freeze the stations, then wait until every sample is in InfluxDB or nothing moves any more."""
        self.freeze_devices()
        time.sleep(max(1.0, 3 * self.sample_interval))
        expected = len(self.ground_truth())
        last, still_since = -1, time.monotonic()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            n = self.influx_count()
            if n >= expected and self.backlog() == 0:
                return
            if n != last:
                last, still_since = n, time.monotonic()
            elif time.monotonic() - still_since > 30:
                return  # stuck: let the caller's comparison say what is missing
            time.sleep(0.5)
