"""``cityos``: one command for every piece. Subcommands import their code lazily, so a gateway that installed only
the ``edge`` extra can run ``cityos gateway run`` without the ingest's dependencies."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cityos.config import ConfigError

DEFAULT_RUN_DIR = os.environ.get("CITYOS_RUN_DIR", "run")


def _stack_cmd(args: argparse.Namespace) -> int:
    from cityos.stack import Stack, StackError

    stack = Stack(args.run_dir)
    try:
        if args.action == "up":
            info = stack.up()
            print(f"mosquitto  mqtt://{info.mqtt_host}:{info.mqtt_port}  (user {info.mqtt_username})")
            print(f"influxdb   {info.influx_url}  db={info.influx_db}  (user {info.influx_username})")
            print(f"endpoints and credentials: {Path(args.run_dir) / 'stack.json'}")
        elif args.action == "status":
            print(json.dumps(stack.status(), indent=2, default=str))
        else:
            stack.down()
            print(f"stopped the services started in {args.run_dir}")
    except StackError as exc:
        print(f"cityos stack {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _gateway_cmd(args: argparse.Namespace) -> int:
    if args.action == "check":
        from edge.config import load_config

        cfg = load_config(args.config)
        print(f"{args.config}: OK — gateway {cfg.gateway.id}, {len(cfg.sources)} source(s)")
        return 0
    from edge.agent import run

    return run(args.config)


def _ingest_cmd(args: argparse.Namespace) -> int:
    from ingest.service import main

    return main(["--config", str(args.config)])


#: ``cityos sim <device>`` → the module whose ``main(argv)`` runs it.
SIMULATORS = {
    "forest": "firmware_sim.forest_station",
    "meter": "firmware_sim.wisun_module",
    "truck": "firmware_sim.garbage_truck",
    "load": "firmware_sim.loadgen",
    "run": "firmware_sim.city",
}


def _sim_cmd(args: argparse.Namespace) -> int:
    import importlib

    return int(importlib.import_module(SIMULATORS[args.device]).main(args.sim_args) or 0)


def _schema_cmd(args: argparse.Namespace) -> int:
    from cityos.wire import json_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        print(out / name)
    return 0


def _demo_cmd(args: argparse.Namespace) -> int:
    from cityos.demo import run_demo

    return run_demo(run_dir=Path(args.run_dir), scenario=args.scenario, duration=args.duration, rate=args.rate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cityos", description="Tsuyama City OS telemetry: edge agent, ingest, tools")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("stack", help="start/stop a private Mosquitto + InfluxDB on loopback ports")
    s.add_argument("action", choices=["up", "status", "down"])
    s.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="data, logs and stack.json go here (default: %(default)s)")
    s.set_defaults(func=_stack_cmd)

    g = sub.add_parser("gateway", help="the edge agent that runs on a gateway")
    g.add_argument("action", choices=["run", "check"], help="run the agent, or only validate the config")
    g.add_argument("--config", required=True, type=Path, help="gateway TOML config")
    g.set_defaults(func=_gateway_cmd)

    i = sub.add_parser("ingest", help="the cloud ingest service: MQTT → InfluxDB")
    i.add_argument("--config", required=True, type=Path, help="ingest TOML config")
    i.set_defaults(func=_ingest_cmd)

    m = sub.add_parser(
        "sim", help="device simulators on pseudo-terminals, the simulated city, the city-scale load generator"
    )
    m.add_argument(
        "device",
        choices=list(SIMULATORS),
        help="forest|meter|truck: one device simulator; run SCENARIO: the simulated city; load: city-scale load",
    )
    m.add_argument("sim_args", nargs=argparse.REMAINDER, help="the simulator's own options (see --help after it)")
    m.set_defaults(func=_sim_cmd)

    c = sub.add_parser("schema", help="write the wire contract's JSON Schemas")
    c.add_argument("--out", default="docs/schema", help="output folder (default: %(default)s)")
    c.set_defaults(func=_schema_cmd)

    d = sub.add_parser(
        "demo", help="a simulated city day through the whole path: devices, agents, broker, ingest, InfluxDB"
    )
    d.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="(default: %(default)s)")
    d.add_argument(
        "--scenario", type=Path, default=Path("scenarios/tsuyama-day.toml"), help="(default: %(default)s)"
    )
    d.add_argument("--duration", type=float, default=None, help="stop the day after N real seconds (default: all)")
    d.add_argument("--rate", type=float, default=None, help="simulated seconds per real second (default: scenario's)")
    d.set_defaults(func=_demo_cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
