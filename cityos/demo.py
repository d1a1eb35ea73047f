"""``cityos demo``: the whole path, live, on this machine, and a clean exit that stops everything it started."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cityos.pipeline import Pipeline
from cityos.stack import Stack, StackError


def _say(msg: str = "") -> None:
    """Print progress; a closed stdout (``| head``, a dropped SSH session) must not stop the clean-up."""
    try:
        print(msg, flush=True)
    except (BrokenPipeError, OSError):
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def run_demo(*, run_dir: Path, duration: float | None, stations: int, gateways: int) -> int:
    run_dir = run_dir.resolve()
    stack = Stack(run_dir / "stack")
    was_up = stack.status().get("up", False)
    try:
        info = stack.up()
    except StackError as exc:
        print(f"cityos demo: {exc}", file=sys.stderr)
        return 1
    _say(f"stack: mosquitto on {info.mqtt_host}:{info.mqtt_port}, InfluxDB on {info.influx_url} (db {info.influx_db})")
    # A fresh city each run (the InfluxDB data of earlier runs stays): its counts then describe this run.
    shutil.rmtree(run_dir / "city", ignore_errors=True)
    pipe = Pipeline(run_dir / "city", info, gateways=gateways, stations=stations, accel=600.0)
    stop = threading.Event()

    def _handler(_sig: int, _frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    try:
        pipe.start()
        pipe.watch_status()
        _say(
            f"started {gateways} gateway(s) × {stations} forest station(s) (scenario at 600× speed: a dry spell, "
            "then a storm), their agents and the ingest"
        )
        _say("logs: " + str(pipe.run_dir / "logs") + ("" if duration else "   — Ctrl-C to stop"))
        _say()
        _say(f"{'time':>6}  {'produced':>9}  {'published':>9}  {'written':>9}  {'backlog':>7}  {'dead-letter':>11}")
        t0 = time.monotonic()
        while not stop.is_set():
            elapsed = time.monotonic() - t0
            if duration is not None and elapsed >= duration:
                break
            _say(_progress_line(pipe, elapsed))
            stop.wait(2.0 if duration is None or duration - elapsed > 2 else max(0.0, duration - elapsed))
        dead = [p.name for p in pipe.procs() if not p.alive]
        _say("\nstations stop sampling; letting the gateways and the ingest deliver what they hold ...")
        pipe.settle(timeout=30)
        _say(_progress_line(pipe, time.monotonic() - t0))
        c = pipe.compare()
        verdict = "exact: every sample, every value, every timestamp" if c.exact else (
            f"NOT exact: {len(c.missing)} missing, {len(c.extra)} extra, {len(c.wrong)} differing"
        )
        _say(f"InfluxDB holds {c.stored} points for the {c.truth} samples the stations produced: {verdict}")
        if dead:
            _say(f"warning: these processes exited early: {', '.join(dead)} (see their logs)")
            rc = 1
    except (TimeoutError, StackError) as exc:
        print(f"cityos demo: {exc}", file=sys.stderr)
        rc = 1
    finally:
        try:
            _say("\nstopping agents, simulators and ingest ...")
            pipe.stop()
            _where(pipe, info)
        finally:  # whatever happened above (even a closed stdout), stop what this demo started
            if not was_up:
                stack.down()
                _say(f"stopped the stack (data kept in {stack.run_dir}; "
                     f"`cityos stack up --run-dir {stack.run_dir}` brings it back to query)")
            for s, h in old.items():
                signal.signal(s, h)
    return rc


def _progress_line(pipe: Pipeline, elapsed: float) -> str:
    produced = len(pipe.ground_truth())
    dead_n = int(pipe.ingest_health().get("dead_lettered_total", 0))
    written = pipe.influx_count()
    backlog = pipe.backlog()
    published = pipe.published()
    return f"{elapsed:6.0f}  {produced:9d}  {published:9d}  {written:9d}  {backlog:7d}  {dead_n:11d}"


def _where(pipe: Pipeline, info: Any) -> None:
    q = "SELECT mean(soil_moisture_pct), sum(rain_mm) FROM forest WHERE time > now() - 1h GROUP BY time(1m), device"
    _say()
    _say(f"the data: InfluxDB {info.influx_url}, database {pipe.db}, measurement `forest` "
         "(tags device, gateway; fields soil_moisture_pct, rain_mm, rain_tips, tilt_x_deg, tilt_y_deg, battery_v)")
    _say("query it (InfluxQL over the v1 HTTP API):")
    _say(f"  curl -sG -u {info.influx_username}:$(python3 -c \"import json;print(json.load(open('"
         f"{info.run_dir / 'stack.json'}'))['influx_password'])\") {info.influx_url}/query \\\n"
         f"    --data-urlencode db={pipe.db} --data-urlencode '{'q=' + q}'")
    _say(f"ground truth of every sample the simulated stations produced: {pipe.run_dir}/gw-*/ground-truth.jsonl")
    _say(f"dead-lettered messages: {pipe.ingest_dir}/deadletter.sqlite; ingest health: {pipe.ingest_dir}/health.json")
