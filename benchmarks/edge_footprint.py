"""The edge agent's footprint: resident memory and CPU per 100 readings/s, on this machine.

A real agent process (``cityos gateway run``) reads simulated forest stations over a pty (Modbus RTU, the real
protocol) and publishes to a private Mosquitto, where a subscriber makes every PUBACK a success. Stations are set
to produce ``--rate`` readings/s in total (``--stations`` stations on ``--buses`` buses, each sampling every
``buses*stations/rate`` s); the gateway's defaults stand except the poll interval (it must be shorter than the
sample interval to see every sample live) and the health interval (60 s, the field default).

Measured over ``--window`` s after ``--warmup`` s, with psutil: the agent's CPU time / wall time (% of one core),
its RSS (median and max of 1 s samples), and readings acknowledged by the broker (the agent's outbox drains, so
the acked count is read from its retained status). Each repetition starts fresh; medians are reported.

Two reference points from the same run:

* **idle**: the same agent with its stations frozen (no new samples): the fixed cost of polling and the runtime;
* **floor**: a bare ``python -c`` that imports the libraries this forest gateway runs on (paho-mqtt, pyserial,
  sqlite3, pydantic's BaseModel; its Modbus master is its own, ``edge/sources/forest/codec.py``) and sleeps: the
  RSS no agent written in Python with them goes below.

The agent runs as deployed: with the systemd unit's environment (``MALLOC_ARENA_MAX=2``) and with its bytecode
compiled (as pip does at install).

    python benchmarks/edge_footprint.py [--rate 100] [--window 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from citylab.stack import Stack, StackInfo, mqtt_client, mqtt_settings
from cityos import wire
from cityos.config import dump_toml

ROOT = Path(__file__).resolve().parent.parent


def _unit_environment() -> dict[str, str]:
    """The agent runs with the environment the gateway's systemd unit gives it (MALLOC_ARENA_MAX)."""
    env = dict(os.environ)
    unit = ROOT / "hardware" / "gateway" / "cityos-gateway.service"
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").strip().strip('"').partition("=")
            env[key] = value
    return env


UNIT_ENV = _unit_environment()
FLOOR_IMPORTS = "import paho.mqtt.client, serial, sqlite3, ssl; from pydantic import BaseModel"


class Counter:
    def __init__(self, info: StackInfo, gw: str) -> None:
        self.n = 0
        self.lock = threading.Lock()
        self.c = mqtt_client(info, "dev.tools")
        self.c.on_message = self._on
        self.c.on_connect = lambda cl, *_: cl.subscribe(wire.telemetry_topic(gw), qos=1)
        self.c.connect(info.mqtt_host, info.mqtt_port)
        self.c.loop_start()

    def _on(self, _c: Any, _u: Any, msg: Any) -> None:
        n = sum(1 for r in json.loads(msg.payload)["readings"] if r["kind"] == "forest_station")
        with self.lock:
            self.n += n

    def value(self) -> int:
        with self.lock:
            return self.n

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _config(
    work: Path, info: StackInfo, gw: str, buses: list[tuple[Path, list[str]]], poll_s: float, synchronous: str
) -> Path:
    """The gateway's defaults but the poll interval and the outbox's synchronous mode (written with the project's
    one TOML writer)."""
    cfg = {
        "gateway": {"id": gw},
        "mqtt": mqtt_settings(info, gw),
        "outbox": {"path": work / "outbox.db", "synchronous": synchronous},
        "sources": [
            {"type": "forest_station", "name": f"bus{b}", "port": tty, "poll_interval_s": poll_s,
             "stations": [{"device_id": d, "unit": u} for u, d in enumerate(devs, start=1)]}
            for b, (tty, devs) in enumerate(buses)
        ],
    }
    p = work / "gateway.toml"
    p.write_text(dump_toml(cfg), encoding="utf-8")
    return p


def measure(proc: psutil.Process, window: float, counter: Counter | None) -> dict[str, float]:
    t = proc.cpu_times()
    cpu0, user0 = t.user + t.system, t.user
    n0 = counter.value() if counter else 0
    rss: list[float] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < window:
        rss.append(proc.memory_info().rss / 2**20)
        time.sleep(1.0)
    wall = time.monotonic() - t0
    t = proc.cpu_times()
    out = {
        "cpu_pct": 100 * (t.user + t.system - cpu0) / wall,
        "cpu_user_pct": 100 * (t.user - user0) / wall,
        "rss_mb_median": statistics.median(rss),
        "rss_mb_max": max(rss),
        "rss_mb_last": rss[-1],
    }
    if counter:
        out["readings_per_s"] = (counter.value() - n0) / wall
    return out


def run_once(info: StackInfo, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    gw = f"bench-edge-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    per_bus = args.stations // args.buses
    interval = args.buses * per_bus / args.rate
    sims, buses = [], []
    for b in range(args.buses):
        devs = [f"st-{b}-{s:02d}" for s in range(per_bus)]
        tty = work / f"tty{b}"
        sims.append(subprocess.Popen(
            [sys.executable, "-m", "firmware_sim.forest.sim", "--stations",
             ",".join(f"{d}:{u}" for u, d in enumerate(devs, start=1)), "--link", str(tty),
             "--ground-truth", str(work / f"gt{b}.jsonl"), "--sample-interval", str(interval)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        buses.append((tty, devs))
    deadline = time.monotonic() + 20
    while not all(t.exists() for t, _ in buses) and time.monotonic() < deadline:
        time.sleep(0.1)
    counter = Counter(info, gw)
    cfg = _config(work, info, gw, buses, min(0.05, interval / 3), args.synchronous)
    agent = subprocess.Popen([sys.executable, "-m", "cityos_cli", "gateway", "run", "--config", str(cfg)], env=UNIT_ENV,
                             stdout=(work / "agent.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        proc = psutil.Process(agent.pid)
        time.sleep(args.warmup)
        spy = None
        if args.py_spy:  # where the agent's CPU goes (collapsed stacks, all threads, idle frames dropped)
            spy = subprocess.Popen(["py-spy", "record", "--gil", "--format", "raw", "-o", str(args.py_spy), "-r", "200",
                                    "-d", str(int(args.window)), "-p", str(agent.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        busy = measure(proc, args.window, counter)
        if spy is not None:
            spy.wait(30)
        for s in sims:  # SIGUSR1 freezes the stations: they answer but take no new samples
            s.send_signal(signal.SIGUSR1)
        time.sleep(3)
        idle = measure(proc, min(args.window, 30), None)
    finally:
        agent.terminate()
        agent.wait(30)
        for s in sims:
            s.terminate()
            s.wait(10)
        counter.close()
    return {"busy": busy, "idle": idle}


def floor_rss(imports: str = FLOOR_IMPORTS) -> float:
    p = subprocess.Popen([sys.executable, "-c", imports + "; import time; time.sleep(30)"], env=UNIT_ENV)
    try:
        time.sleep(4)
        return psutil.Process(p.pid).memory_info().rss / 2**20
    finally:
        p.kill()
        p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=100.0, help="readings/s the stations produce in total")
    ap.add_argument("--stations", type=int, default=20)
    ap.add_argument("--buses", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL",
                    help="the outbox's durability (FULL, the default: survives power loss; NORMAL: a crash)")
    ap.add_argument("--py-spy", type=Path, help="also profile the agent with py-spy into this file")
    args = ap.parse_args(argv)
    # As deployed: pip compiles a wheel's bytecode at install time. A checkout run with PYTHONDONTWRITEBYTECODE
    # (this sandbox sets it) would compile the agent's sources at every start instead, and the compiler's
    # transient memory stays in the RSS (~0.7 MB).
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / p) for p in ("cityos", "edge"))],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    tmp = tempfile.TemporaryDirectory(prefix="cityos-edge-")
    stack = Stack(Path(tmp.name) / "stack")
    info = stack.up()
    runs = []
    try:
        for i in range(args.repeat):
            r = run_once(info, Path(tmp.name) / f"run{i}", args)
            runs.append(r)
            b, idle = r["busy"], r["idle"]
            print(f"run {i}: {b['readings_per_s']:.1f} readings/s, CPU {b['cpu_pct']:.2f}% of a core, "
                  f"(user {b['cpu_user_pct']:.2f}%), RSS median {b['rss_mb_median']:.1f} MB (max {b['rss_mb_max']:.1f}, "
                  f"at the end {b['rss_mb_last']:.1f}); idle CPU "
                  f"{idle['cpu_pct']:.2f}%, RSS {idle['rss_mb_median']:.1f} MB", flush=True)
        floor = floor_rss()
    finally:
        stack.down()
        tmp.cleanup()

    def med(part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in runs)

    rate = med("busy", "readings_per_s")
    cpu = med("busy", "cpu_pct")
    summary = {
        "readings_per_s": round(rate, 1),
        "cpu_pct_of_one_core": round(cpu, 2),
        "cpu_pct_per_100_readings_s": round(cpu * 100 / rate, 2) if rate else None,
        "idle_cpu_pct": round(med("idle", "cpu_pct"), 2),
        "rss_mb_median": round(med("busy", "rss_mb_median"), 1),
        "rss_mb_max": round(med("busy", "rss_mb_max"), 1),
        "floor_rss_mb": round(floor, 1),
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
