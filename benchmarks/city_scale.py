"""City scale: 5,000 meters, 200 forest stations and 30 trucks at their real reporting rates, and the headroom.

On a private stack (temp dir), the ingest runs as its own process (``cityos ingest``, default config) and the load
generator (``firmware_sim.loadgen``, the same traffic as that many agents) in another. For each speed in
``--speeds`` (1 = the city's real rates; k = k times every rate) the generator publishes for ``--duration`` s;
then we wait until InfluxDB holds every reading the broker acknowledged. Measured per step, with psutil over the
publishing window: CPU of the ingest (process and its decode workers), InfluxDB, Mosquitto and the generator, in %
of one core; the machine has ``os.cpu_count()`` cores. "Keeps up" means every reading was stored within
``--settle`` s after publishing stopped, and the ingest's CPU did not saturate.

The ceiling in the same run is the highest speed that keeps up: headroom = that speed (× the city's real load).

Usage::

    python benchmarks/city_scale.py [--speeds 1,10,30,60] [--duration 60] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from citylab.pipeline import ingest_config
from citylab.stack import Stack, StackInfo, influx_query, mqtt_settings
from firmware_sim.loadgen import LoadProfile, build_gateways
from ingest.config import MqttConfig
from ingest.mqtt_in import discard_session


def _ingest_config(info: StackInfo, work: Path, db: str, client_id: str) -> Path:
    p = work / "ingest.toml"
    p.write_text(ingest_config(info, work / "ingest", client_id, db=db).to_toml())
    return p


def _tree_cpu(p: psutil.Process) -> float:
    """CPU seconds of a process and its children (the ingest's decode workers)."""
    total = 0.0
    for q in [p, *p.children(recursive=True)]:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _find(name: str, run_dir: Path) -> psutil.Process:
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if name in (p.info["name"] or "") and str(run_dir) in cmd:
            return p
    raise RuntimeError(f"no {name} process for {run_dir}")


def _count(info: StackInfo, db: str, measurement: str) -> int:
    series = influx_query(info, db, f'SELECT count(*) FROM "{measurement}"')
    return int(max(v for v in series[0]["values"][0][1:] if v is not None)) if series else 0


def run_step(
    info: StackInfo, run_dir: Path, work: Path, speed: float, duration: float, settle: float, profile: dict[str, Any]
) -> dict[str, Any]:
    db = f"bench_city_{uuid.uuid4().hex[:8]}"
    influx_query(info, "_internal", f'CREATE DATABASE "{db}"')
    client_id = f"bench-city-{uuid.uuid4().hex[:6]}"
    cfg = _ingest_config(info, work, db, client_id)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ingest = subprocess.Popen(
        [sys.executable, "-m", "cityos_cli", "ingest", "--config", str(cfg)],
        stdout=(work / "ingest.log").open("ab"), stderr=subprocess.STDOUT, env=env,
    )
    try:
        time.sleep(3.0)  # connected, subscribed, workers spawned
        procs = {
            "ingest": psutil.Process(ingest.pid),
            "influxd": _find("influxd", run_dir),
            "mosquitto": _find("mosquitto", run_dir),
        }
        args = [
            sys.executable, "-m", "cityos_cli", "sim", "load", "--run-dir", str(run_dir), "--json",
            "--duration", str(duration), "--speed", str(speed), "--prefix", f"b{uuid.uuid4().hex[:4]}",
        ]
        for k, v in profile.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        before = {k: _tree_cpu(p) for k, p in procs.items()}
        t0 = time.monotonic()
        gen = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
        window = time.monotonic() - t0
        after = {k: _tree_cpu(p) for k, p in procs.items()}
        if gen.returncode != 0:
            raise RuntimeError(f"load generator failed: {gen.stderr[-2000:]}")
        res = json.loads(gen.stdout.strip().splitlines()[-1])
        expected: dict[str, int] = res["by_measurement"]
        deadline = time.monotonic() + settle
        stored: dict[str, int] = {}
        while time.monotonic() < deadline:
            stored = {m: _count(info, db, m) for m in expected}
            if stored == expected:
                break
            time.sleep(1.0)
        keeps_up = stored == expected
        cpu = {k: round(100 * (after[k] - before[k]) / window, 1) for k in procs}
        return {
            "speed": speed,
            "window_s": round(window, 1),
            "readings": res["readings"],
            "readings_per_s": round(res["readings"] / res["duration_s"], 1),
            "messages_per_s": round(res["messages"] / res["duration_s"], 1),
            "gateways": res["gateways"],
            "generator_max_lag_s": res["max_lag_s"],
            "stored_all": keeps_up,
            "missing": {m: expected[m] - stored.get(m, 0) for m in expected if stored.get(m, 0) != expected[m]},
            "cpu_pct_of_one_core": cpu,
            "cloud_cpu_pct_of_one_core": round(sum(cpu.values()), 1),
        }
    finally:
        ingest.terminate()
        try:
            ingest.wait(30)
        except subprocess.TimeoutExpired:
            ingest.kill()
        # An offline durable session would queue every later step's messages (Mosquitto's CPU, not ours).
        discard_session(MqttConfig(**mqtt_settings(info, "svc.ingest"), client_id=client_id))
        influx_query(info, "_internal", f'DROP DATABASE "{db}"')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speeds", default="1,10,30,60")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--meters", type=int, default=5000)
    ap.add_argument("--stations", type=int, default=200)
    ap.add_argument("--trucks", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    profile = {"meters": args.meters, "stations": args.stations, "trucks": args.trucks}
    LoadProfile(**profile)
    n_gw = len(build_gateways(LoadProfile(**profile)))
    speeds = [float(s) for s in args.speeds.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="cityos-city-")
    run_dir = Path(tmp.name) / "stack"
    stack = Stack(run_dir)
    info = stack.up()
    work = Path(tmp.name) / "work"
    work.mkdir()
    rows: list[dict[str, Any]] = []
    try:
        print(f"{n_gw} virtual gateways; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
        for rep in range(args.repeat):
            for sp in speeds:
                r = run_step(info, run_dir, work, sp, args.duration, args.settle, profile)
                r["repeat"] = rep
                rows.append(r)
                print(
                    f"speed {sp:5g}x: {r['readings_per_s']:8.1f} readings/s {r['messages_per_s']:7.1f} msg/s  "
                    f"stored all: {r['stored_all']!s:5}  cloud CPU {r['cloud_cpu_pct_of_one_core']:6.1f}% of a core "
                    f"{r['cpu_pct_of_one_core']}  gen lag {r['generator_max_lag_s']} s",
                    flush=True,
                )
    finally:
        stack.down()
        tmp.cleanup()
    print("\nmedians over repeats:")
    summary = []
    for sp in speeds:
        rs = [r for r in rows if r["speed"] == sp]
        med = {
            "speed": sp,
            "readings_per_s": statistics.median(r["readings_per_s"] for r in rs),
            "cloud_cpu_pct_of_one_core": statistics.median(r["cloud_cpu_pct_of_one_core"] for r in rs),
            "ingest_cpu_pct": statistics.median(r["cpu_pct_of_one_core"]["ingest"] for r in rs),
            "influxd_cpu_pct": statistics.median(r["cpu_pct_of_one_core"]["influxd"] for r in rs),
            "mosquitto_cpu_pct": statistics.median(r["cpu_pct_of_one_core"]["mosquitto"] for r in rs),
            "stored_all": all(r["stored_all"] for r in rs),
        }
        summary.append(med)
        print(json.dumps(med))
    ok = [s["speed"] for s in summary if s["stored_all"]]
    print(f"highest speed with every reading stored: {max(ok) if ok else 'none'}x the city's real rates")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
