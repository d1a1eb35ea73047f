"""``cityos demo``: the whole path, live, on this machine, and a clean exit that stops everything it started."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from citylab.stack import INFLUX_READER, Stack, StackError
from cityos import wire


def _say(msg: str = "") -> None:
    """Print progress; a closed stdout (``| head``, a dropped SSH session) must not stop the clean-up."""
    try:
        print(msg, flush=True)
    except (BrokenPipeError, OSError):
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def _previews(info: Any, run: Any, sc: Any, out: Path) -> None:
    """The dashboards as the environment division would see them for this day: every panel's Grafana query, run
    against the day in InfluxDB and drawn with matplotlib (dashboards/preview.py)."""
    from dashboards.preview import render

    _say("\ndashboard previews (each panel's Grafana query against the day in InfluxDB) ...")
    t0, t1 = int(run.city.sim_start * 1000), int(run.city.sim_end * 1000)
    try:
        res = render(info, out, lang="ja", time_from_ms=t0, time_to_ms=t1, now_ms=t1, geojson=sc.resolve(sc.districts))
    except Exception as exc:  # previews are a view of the result, not the result: report, don't fail the demo
        _say(f"  previews failed: {exc}")
        return
    empty = sum(1 for p in res.panels if not p.series and not p.error)
    _say(f"  {len(res.files)} dashboards drawn in {out}/ ({len(res.panels)} panels, {empty} without data in the "
         f"day's range{', ' + str(len(res.errors)) + ' query errors' if res.errors else ''})")
    for f in res.files:
        _say(f"    {f}")


def _api(info: Any, run: Any, sc: Any, run_dir: Path) -> list[str]:
    """The City OS API over this day: its config and a service token in ``run/api/``, three calls answered here
    in-process; returns the same three as lines a newcomer can paste once the API runs (docs/api.md), which the
    demo prints last."""
    import warnings
    from datetime import datetime, timedelta, timezone

    with warnings.catch_warnings():  # Starlette's note that it prefers httpx2: not the demo's business
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from citylab.stack import influx_settings
    from cityos.config import dump_toml
    from cityos.credentials import write_private
    from cityos_api.app import create_app
    from cityos_api.auth import SERVICE, TokenStore, parse_expiry
    from cityos_api.settings import load_settings
    from rollup import RollupConfig, run_once

    # the rollup service's pass over the day (in production `cityos rollup` runs every 5 minutes): energy and waste
    # per district are served from its frozen rows (docs/api.md, "Pre-aggregation")
    try:
        rep = run_once(RollupConfig.model_validate({"influx": influx_settings(info, "rollup", run.db)}))
        _say(f"\nrollups for the API: {rep.summary()}")
    except Exception as exc:  # a view of the result, not the result: report, don't fail the demo
        _say(f"\nrollups for the API failed: {type(exc).__name__}: {exc}")
    api_dir = run_dir / "api"
    api_dir.mkdir(parents=True, exist_ok=True)
    cfg = api_dir / "api.toml"
    bus_feed = sc.resolve("gtfs-tsuyama-loop")
    cfg.write_text(dump_toml({
        "influx": {"url": info.influx_url, "db": run.db, "username": INFLUX_READER,
                   "password_file": info.password_file(INFLUX_READER)},
        "places": {"districts_file": sc.resolve(sc.districts), "gtfs_dir": bus_feed if bus_feed.is_dir() else None},
        "auth": {"tokens_file": api_dir / "tokens.json"},
    }, header="The City OS API over the demo's day (cityos api serve --config this-file); written by cityos demo"))
    token_file = api_dir / "service.token"
    store = TokenStore(api_dir / "tokens.json")
    _rec, token = store.create("cityos demo", [SERVICE], parse_expiry("30d"))
    write_private(token_file, token + "\n")
    jst = timezone(timedelta(hours=9))
    day = datetime.fromtimestamp(run.city.sim_start, jst).date()
    calls = [
        (f"/v1/forest/alerts?from={day}&to={day + timedelta(days=1)}", False,
         lambda j: f"{len(j['items'])} landslide alert episodes" + "".join(
             f"; {e['station']} {e['level']} from {e['start'][11:16]}" for e in j["items"][:3])),
        (f"/v1/waste/districts/daily?from={day}&to={day + timedelta(days=1)}", False,
         lambda j: f"{len(j['items'])} districts, {sum(i['kg'] for i in j['items']):,.0f} kg"),
        ("/ngsi-ld/v1/entities?type=WeatherObserved&options=keyValues", True,
         lambda j: f"{len(j)} WeatherObserved entities (NGSI-LD, scope service)"),
    ]
    _say("\nthe City OS API over this day (docs/api.md; the whole contract at /docs):")
    try:
        with TestClient(create_app(load_settings(cfg))) as client:
            for path, auth, summary in calls:
                resp = client.get(path, headers={"Authorization": f"Bearer {token}"} if auth else {})
                ok = resp.status_code == 200
                _say(f"  {path}: HTTP {resp.status_code}" + (f", {summary(resp.json())}" if ok else ""))
    except Exception as exc:  # the API is a view of the result, not the result: report, don't fail the demo
        _say(f"  the API could not answer here: {type(exc).__name__}: {exc}")
    lines = ["", "try the City OS API yourself: start the stack and the API, then paste the calls:",
             f"  cityos stack up --run-dir {run_dir / 'stack'} && cityos api serve --config {cfg} &"]
    for path, auth, _summary in calls:
        header = f'-H "Authorization: Bearer $(cat {token_file})" ' if auth else ""
        lines.append(f"  curl -s {header}'http://127.0.0.1:8000{path}'")
    return lines


def run_demo(*, run_dir: Path, scenario: Path, duration: float | None, rate: float | None = None) -> int:
    """The simulated city's day through the real stack, then InfluxDB against the ground truth."""
    from citylab.city import load_scenario
    from citylab.cityrun import CityRun

    run_dir = run_dir.resolve()
    sc = load_scenario(scenario)
    if rate is not None:
        sc = sc.model_copy(update={"day": sc.day.model_copy(update={"rate": rate})})
    stack = Stack(run_dir / "stack")
    was_up = stack.status().get("up", False)
    try:
        info = stack.up()
    except StackError as exc:
        print(f"cityos demo: {exc}", file=sys.stderr)
        return 1
    _say(f"stack: mosquitto on {info.mqtt_host}:{info.mqtt_port}, InfluxDB on {info.influx_url} (db {info.influx_db})")
    shutil.rmtree(run_dir / "city", ignore_errors=True)
    run = CityRun(sc, run_dir / "city", info, say=_say)
    stop = threading.Event()

    def _handler(_sig: int, _frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    api_lines: list[str] = []
    try:
        run.start()
        city = run.city
        _say(f"{sc.name}: {sc.day.day()} {sc.day.start}–{sc.day.end} JST at {sc.day.rate:g}× "
             f"({(city.sim_end - city.sim_start) / sc.day.rate / 60:.1f} min)")
        _say("  " + "; ".join(f.describe() for f in city.families))
        _say(f"  {len(sc.faults)} scheduled faults; logs in {run.run_dir / 'logs'}" + ("" if duration else "; Ctrl-C stops"))
        city.on_fault = lambda ev, ok: _say(f"  fault at {ev.at}: {ev.fault} on {ev.target}" + ("" if ok else " (not applied)"))
        rep = run.run_day(stop, duration, on_over=lambda: _say(
            "\nthe day is over: devices stop, gateways and the ingest deliver what they hold ..."))
        _say(run.progress_line())
        _say("\nInfluxDB against the simulators' ground truth:")
        for c in rep.checks:
            _say("  " + c.line())
            for p in c.problems[:5]:
                _say("      " + p)
        for c in rep.checks:
            for k, v in c.summary.items():
                _say(f"  {c.name} {k}: {v}")
        if rep.dead:
            _say(f"warning: these processes exited early: {', '.join(rep.dead)} (see their logs)")
        if rep.dead_lettered:
            _say(f"warning: {rep.dead_lettered} message(s) dead-lettered")
        rc = 0 if rep.exact else 1
        _previews(info, run, sc, run_dir / "previews")
        api_lines = _api(info, run, sc, run_dir)
        if any(c.partial for c in rep.checks):
            _say("(stopped early by --duration: the checks cover the part of the day that was played)")
    except (TimeoutError, StackError) as exc:
        print(f"cityos demo: {exc}", file=sys.stderr)
        rc = 1
    finally:
        try:
            _say("\nstopping agents, simulators and ingest ...")
            run.stop()
            _where(run, info)
        finally:  # whatever happened above (even a closed stdout), stop what this demo started
            if not was_up:
                stack.down()
                _say(f"stopped the stack (data kept in {stack.run_dir}; "
                     f"`cityos stack up --run-dir {stack.run_dir}` brings it back to query)")
            for s, h in old.items():
                signal.signal(s, h)
    for line in api_lines:
        _say(line)
    return rc


def _where(run: Any, info: Any) -> None:
    q = 'SELECT sum("kg") FROM "waste_collection" GROUP BY "district"'
    _say()
    measurements = ", ".join(dict.fromkeys([*wire.MEASUREMENTS.values(), "source_health"]))
    _say(f"the data: InfluxDB {info.influx_url}, database {run.db}: measurements {measurements}")
    _say("query it (InfluxQL over the v1 HTTP API):")
    _say(f"  curl -sG -u {INFLUX_READER} {info.influx_url}/query \\\n"
         f"    --data-urlencode db={run.db} --data-urlencode '{'q=' + q}'")
    _say(f"  (curl asks for the read-only user's password: it is in {info.password_file(INFLUX_READER)})")
    _say(f"ground truth: {run.run_dir}/gw-*/truth*.jsonl; agent configs: {run.run_dir}/gw-*/gateway.toml")
