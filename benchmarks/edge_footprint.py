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
* **floor**: a bare ``python -c`` that imports the libraries this forest gateway runs on (paho-mqtt and ssl,
  pyserial, sqlite3, msgspec, pydantic's BaseModel; its Modbus master is its own, ``edge/sources/forest/codec.py``)
  and sleeps: the RSS no agent written in Python with them goes below.

The agent runs as deployed (:func:`agent_runtime`): from a venv as the bundle installs it (no start-up hook of this
machine's site-packages), with the systemd unit's environment (``MALLOC_ARENA_MAX=2``, ``PYTHONOPTIMIZE=2``) and its
bytecode compiled for it as the first boot compiles it. ``--interpreter checkout`` measures as before issue 13 (this
interpreter, the checkout's bytecode, ``MALLOC_ARENA_MAX`` only).

    python benchmarks/edge_footprint.py [--rate 100] [--window 60] [--repeat 3] [--interpreter venv|checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import site
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from citylab.stack import Stack, StackInfo, mqtt_client, mqtt_settings
from cityos import wire
from cityos.config import dump_toml
from fleet.bundle import STDLIB_SKIP

ROOT = Path(__file__).resolve().parent.parent


def unit_environment() -> dict[str, str]:
    """The ``Environment=`` lines of the gateway's systemd unit (MALLOC_ARENA_MAX, PYTHONOPTIMIZE, ...)."""
    env: dict[str, str] = {}
    unit = ROOT / "hardware" / "gateway" / "cityos-gateway.service"
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").strip().strip('"').partition("=")
            env[key] = value
    return env


#: This interpreter's environment with the unit's (the bytecode cache aside: see :func:`agent_runtime`).
UNIT_ENV = {**os.environ, **unit_environment()}
FLOOR_IMPORTS = "import paho.mqtt.client, serial, sqlite3, ssl, msgspec; from pydantic import BaseModel"

#: Imports what an agent of any family imports (and IDNA, which connecting to a broker by name imports), then prints
#: the source files of the modules loaded (argument "files") or the modules whose bytecode is not cached ("missing").
_AGENT_MODULES = """
import json, os, sys
import cityos_cli.cli, edge.agent, edge.check
from edge.sources.base import registry
registry()
import encodings.idna
if sys.argv[1] == "files":
    print(json.dumps(sorted({f for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None) or "")
                             .endswith(".py")})))
else:
    print(json.dumps(sorted(n for n, m in list(sys.modules.items())
                            if getattr(m, "__cached__", None) and not os.path.exists(m.__cached__))))
"""
_COMPILE = (
    "import compileall, json, re, sys, sysconfig; skip, dirs, files = json.load(sys.stdin); "
    "ok = compileall.compile_dir(sysconfig.get_paths()['stdlib'], quiet=1, workers=0, rx=re.compile(skip)); "
    "ok = all([compileall.compile_dir(d, quiet=1, workers=0) for d in dirs]) and ok; "
    "ok = all([compileall.compile_file(f, quiet=1) for f in files]) and ok; sys.exit(0 if ok else 1)"
)


@dataclass(frozen=True)
class AgentRuntime:
    """The interpreter and the environment the benchmarks start the agent (and the floor) with."""

    python: str
    env: dict[str, str]
    how: str


def agent_runtime(work: Path, interpreter: str = "venv") -> AgentRuntime:
    """The agent's interpreter as the bundle installs it (``interpreter="venv"``, the default since issue 13):

    * a venv of its own (``python -m venv --without-pip``, as cityos-firstboot makes ``/opt/cityos``), which reaches
      this checkout and this interpreter's site-packages through path lines of a ``.pth``: the packages are the
      same, but no ``.pth`` start-up hook of this machine's site-packages runs in the agent (this sandbox has one that
      imports certifi, importlib.resources and zipfile into every Python process; a gateway's venv has none);
    * the unit's environment (``MALLOC_ARENA_MAX``, ``PYTHONOPTIMIZE``), its ``PYTHONPYCACHEPREFIX`` moved under
      ``work`` and filled at the unit's optimisation level as cityos-firstboot fills it (the standard library, and
      every module an agent imports), then only read (``PYTHONDONTWRITEBYTECODE``): nothing is compiled at start.

    ``interpreter="checkout"`` is the method before issue 13: this interpreter as it is, the checkout's bytecode
    compiled in place (as pip compiles a wheel's), the unit's environment without ``PYTHONOPTIMIZE`` and the cache.
    """
    unit = unit_environment()
    if interpreter == "checkout":
        for key in ("PYTHONOPTIMIZE", "PYTHONPYCACHEPREFIX"):
            unit.pop(key, None)
        subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / p) for p in ("cityos", "edge"))],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
        return AgentRuntime(sys.executable, {**os.environ, **unit},
                            "this interpreter, the checkout's bytecode (before issue 13)")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "cityos-benchmark.pth").write_text("\n".join([str(ROOT), *site.getsitepackages()]) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {**unit, "PYTHONDONTWRITEBYTECODE": "1"}
    if "PYTHONPYCACHEPREFIX" in unit:
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        listed = subprocess.run([python, "-c", _AGENT_MODULES, "files"], check=True, capture_output=True, text=True,
                                cwd=work, env={**env, "PYTHONOPTIMIZE": "0", "PYTHONPYCACHEPREFIX": str(work / "x")})
        files = json.loads(listed.stdout)
        todo = [STDLIB_SKIP, [str(ROOT / p) for p in ("cityos", "edge", "cityos_cli")], files]
        subprocess.run([python, "-c", _COMPILE], input=json.dumps(todo), text=True, check=True,
                       stdout=subprocess.DEVNULL, cwd=work, env={**env, "PYTHONDONTWRITEBYTECODE": ""})
        missing = subprocess.run([python, "-c", _AGENT_MODULES, "missing"], check=True, capture_output=True, text=True,
                                 cwd=work, env=env).stdout.strip()
        if missing != "[]":
            print(f"warning: modules without bytecode in the cache (compiled at each start): {missing}", flush=True)
    else:  # a unit without a cache of its own (before issue 13): the checkout's bytecode in place, as pip's
        subprocess.run([python, "-m", "compileall", "-q", *(str(ROOT / p) for p in ("cityos", "edge", "cityos_cli"))],
                       check=True, stdout=subprocess.DEVNULL, cwd=work, env={**env, "PYTHONDONTWRITEBYTECODE": ""})
    opt = unit.get("PYTHONOPTIMIZE", "0")
    return AgentRuntime(python, env, f"a venv as the bundle's, the unit's environment (PYTHONOPTIMIZE={opt})")


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


def run_once(info: StackInfo, work: Path, args: argparse.Namespace, runtime: AgentRuntime) -> dict[str, Any]:
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
    agent = subprocess.Popen([runtime.python, "-m", "cityos_cli", "gateway", "run", "--config", str(cfg)],
                             env=runtime.env, cwd=ROOT, stdout=(work / "agent.log").open("ab"), stderr=subprocess.STDOUT)
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


def floor_rss(runtime: AgentRuntime, imports: str = FLOOR_IMPORTS) -> float:
    """The resident memory of a bare ``python -c`` of ``imports`` (then sleeping), with the agent's interpreter."""
    p = subprocess.Popen([runtime.python, "-c", imports + "; import time; time.sleep(30)"], env=runtime.env, cwd=ROOT)
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
    ap.add_argument("--interpreter", choices=["venv", "checkout"], default="venv",
                    help="venv: as the bundle installs the agent (default); checkout: the method before issue 13")
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="cityos-edge-")
    # As deployed: with its bytecode compiled (a checkout run with PYTHONDONTWRITEBYTECODE, as this sandbox sets it,
    # would compile the agent's sources at every start, and the compiler's transient memory stays in the RSS).
    runtime = agent_runtime(Path(tmp.name), args.interpreter)
    print(f"agent: {runtime.how}", flush=True)
    stack = Stack(Path(tmp.name) / "stack")
    info = stack.up()
    runs = []
    try:
        for i in range(args.repeat):
            r = run_once(info, Path(tmp.name) / f"run{i}", args, runtime)
            runs.append(r)
            b, idle = r["busy"], r["idle"]
            print(f"run {i}: {b['readings_per_s']:.1f} readings/s, CPU {b['cpu_pct']:.2f}% of a core, "
                  f"(user {b['cpu_user_pct']:.2f}%), RSS median {b['rss_mb_median']:.1f} MB (max {b['rss_mb_max']:.1f}, "
                  f"at the end {b['rss_mb_last']:.1f}); idle CPU "
                  f"{idle['cpu_pct']:.2f}%, RSS {idle['rss_mb_median']:.1f} MB", flush=True)
        floor = floor_rss(runtime)
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
        "agent": runtime.how,
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
