"""``cityos``: one command for every piece. Subcommands import their code lazily, so a gateway that installed only
the ``edge`` extra can run ``cityos gateway run`` without the ingest's dependencies."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cityos.config import ConfigError
from cityos.families import FAMILIES
from cityos_cli import api as api_cli
from cityos_cli import fleet as fleet_cli

DEFAULT_RUN_DIR = os.environ.get("CITYOS_RUN_DIR", "run")


def _stack_cmd(args: argparse.Namespace) -> int:
    from citylab.stack import Stack, StackError

    stack = Stack(args.run_dir)
    try:
        if args.action == "up":
            info = stack.up()
            print(f"mosquitto  mqtts://{info.mqtt_host}:{info.mqtt_port}  (mutual TLS, CA {info.ca_file})")
            print(f"influxdb   {info.influx_url}  db={info.influx_db}  (admin {info.influx_username})")
            print(f"endpoints: {Path(args.run_dir) / 'stack.json'}; identities: {info.fleet_dir}")
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
        from edge.check import render_json, render_text, run_check

        lines = run_check(args.config, live=args.live, wait_s=args.wait)
        if lines[0].name == "config" and not lines[0].ok:
            # No config, no checklist: like every command, the ConfigError on stderr and exit 2 (and for tools,
            # the one line as JSON).
            if args.json:
                print(render_json(lines))
            print(lines[0].detail, file=sys.stderr)
            return 2
        print(render_json(lines) if args.json else render_text(lines))
        return 0 if all(line.ok for line in lines) else 1
    from edge.agent import run

    return run(args.config)


def _ingest_cmd(args: argparse.Namespace) -> int:
    if args.check:
        from cityos.credentials import read_secret
        from ingest.config import load_config

        cfg = load_config(args.config)
        cfg.mqtt.load_files("mqtt")
        if cfg.influx.password_file is not None:
            read_secret(cfg.influx.password_file, "influx.password_file")
        print(f"{args.config}: OK — broker {cfg.mqtt.host}:{cfg.mqtt.port} (TLS {'on' if cfg.mqtt.tls else 'off'}), "
              f"InfluxDB {cfg.influx.url} db={cfg.influx.db} as {cfg.influx.username or '(no user)'}")
        return 0
    from ingest.service import main

    return main(["--config", str(args.config)])


def _rollup_cmd(args: argparse.Namespace) -> int:
    from rollup.service import main

    return main(["--config", str(args.config), *(["--once"] if args.once else [])])


#: ``cityos sim <device>`` → the module whose ``main(argv)`` runs it.
SIMULATORS = {
    **{f.name: f.sim_module for f in FAMILIES},
    "load": "citylab.load",
    "run": "citylab.city",
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
    from citylab.demo import run_demo

    return run_demo(run_dir=Path(args.run_dir), scenario=args.scenario, duration=args.duration, rate=args.rate)


def _gtfs_rt_cmd(args: argparse.Namespace) -> int:
    import time

    from citylab.stack import StackError, load_info
    from cityos.influx import InfluxClient, InfluxError
    from cityos_api.gtfs_rt import build_feed, feed_json, latest_positions, query_fn

    try:
        info = load_info(args.stack)
        # As the API reads: the read-only user, never the admin.
        client = InfluxClient(info.influx_url, args.db or info.influx_db, *info.reader_login())
        now = time.time()
        positions = latest_positions(query_fn(client), client.db, args.max_age_s, now_ms=int(now * 1000))
        feed = build_feed(positions, now)
    except (StackError, InfluxError) as exc:
        print(f"cityos gtfs-rt: {exc}", file=sys.stderr)
        return 1
    if args.out is None:
        print(feed_json(feed))
    elif args.out.suffix == ".json":
        args.out.write_text(feed_json(feed) + "\n")
    else:
        args.out.write_bytes(feed.SerializeToString())
    if args.out is not None:
        print(f"{args.out}: {len(feed.entity)} vehicle(s)")
    return 0


def _dashboards_build_cmd(args: argparse.Namespace) -> int:
    from dashboards.build import cli_build

    return cli_build(lang=args.lang, out=args.out)


def _dashboards_parser(sub: argparse._SubParsersAction) -> None:
    """``cityos dashboards <action>``: dashboards and alert rules as code (dashboards/). One sub-parser per
    action, each dispatching to a function in dashboards/*.py imported only when run."""
    ds = sub.add_parser("dashboards", help="Grafana dashboards and alert rules from dashboards/catalog.py")
    actions = ds.add_subparsers(dest="dashboards_action", required=True, metavar="ACTION")

    b = actions.add_parser(
        "build", help="write the Grafana provisioning files (data source, dashboards, alert rules)"
    )
    b.add_argument("--lang", choices=["ja", "en"], default="ja", help="text language (default: %(default)s)")
    b.add_argument(
        "--out", type=Path, default=None,
        help="provisioning folder to write (default: dashboards/provisioning/, the committed Japanese build; "
        "--lang en needs --out)",
    )
    b.set_defaults(func=_dashboards_build_cmd)
    _dashboards_preview_parser(actions)
    _dashboards_push_parser(actions)


def _dashboards_push_cmd(args: argparse.Namespace) -> int:
    from cityos.credentials import read_secret
    from dashboards.push import PushError, push

    token = read_secret(args.token_file, "--token-file") if args.token_file else os.environ.get("GRAFANA_TOKEN")
    if not token:
        print("dashboards push: give --token-file FILE (0600) or set GRAFANA_TOKEN (a Grafana service-account "
              "token)", file=sys.stderr)
        return 2
    try:
        report = push(args.url, token)
    except PushError as exc:
        print(f"dashboards push: {exc}", file=sys.stderr)
        return 1
    for line in report.created:
        print(f"created {line}")
    for line in report.updated:
        print(f"updated {line}")
    print(f"dashboards push: {report.summary()} in {args.url}")
    return 0


def _dashboards_push_parser(actions: argparse._SubParsersAction) -> None:
    u = actions.add_parser(
        "push", help="upsert the data source, dashboards and alert rules into a running Grafana (grafana-client)"
    )
    u.add_argument("--url", required=True, help="Grafana base URL, e.g. https://grafana.city.example")
    u.add_argument("--token-file", type=Path, default=None,
                   help="0600 file holding the service-account token (default: $GRAFANA_TOKEN); never the token "
                   "itself on a command line")
    u.set_defaults(func=_dashboards_push_cmd)


def _dashboards_preview_cmd(args: argparse.Namespace) -> int:
    from dashboards.preview import cli_preview
    from dashboards.queryrun import InfluxSource, source_of

    if args.influx_url:
        if not args.db:
            print("cityos dashboards preview: --influx-url needs --db", file=sys.stderr)
            return 2
        from cityos.credentials import read_secret

        password = (read_secret(args.password_file, "--password-file") if args.password_file
                    else os.environ.get("INFLUXDB_PASSWORD", ""))
        src = InfluxSource(args.influx_url.rstrip("/"), args.db, args.user or os.environ.get("INFLUXDB_USER", ""),
                           password)
    else:
        from citylab.stack import StackError, load_info

        run_dir = args.stack or next((d for d in (Path(DEFAULT_RUN_DIR), Path(DEFAULT_RUN_DIR) / "stack")
                                      if (d / "stack.json").exists()), None)
        if run_dir is None:
            print(f"cityos dashboards preview: no stack in {DEFAULT_RUN_DIR}/ or {DEFAULT_RUN_DIR}/stack/: "
                  "give --stack RUN_DIR or --influx-url URL --db DB", file=sys.stderr)
            return 2
        try:
            src = source_of(load_info(run_dir), args.db)
        except StackError as exc:
            print(f"cityos dashboards preview: {exc}", file=sys.stderr)
            return 2
    return cli_preview(
        out=args.out, source=src, lang=args.lang, time_from=args.time_from, time_to=args.time_to,
        per_panel=args.per_panel, only=args.dashboard or (),
    )


def _dashboards_preview_parser(actions: argparse._SubParsersAction) -> None:
    v = actions.add_parser(
        "preview", help="PNG previews of the dashboards, drawn from InfluxDB with the queries Grafana would run"
    )
    v.add_argument("--out", type=Path, required=True, help="folder for <dashboard uid>.png")
    v.add_argument("--lang", choices=["ja", "en"], default="ja", help="text language (default: %(default)s)")
    v.add_argument("--stack", type=Path, default=None,
                   help=f"a `cityos stack` run directory (default: {DEFAULT_RUN_DIR}/ or {DEFAULT_RUN_DIR}/stack/)")
    v.add_argument("--influx-url", default=None, help="any InfluxDB 1.x instead of a stack (with --db)")
    v.add_argument("--db", default=None, help="database (default: the stack's)")
    v.add_argument("--user", default=None, help="InfluxDB user for --influx-url (default: $INFLUXDB_USER)")
    v.add_argument("--password-file", type=Path, default=None,
                   help="0600 file holding the InfluxDB password (default: $INFLUXDB_PASSWORD); never the password "
                   "itself on a command line, where `ps` and shell history show it")
    v.add_argument("--from", dest="time_from", default=None,
                   help="range start, ISO 8601 (no zone: Japan time); default: each dashboard's own range")
    v.add_argument("--to", dest="time_to", default=None, help="range end, ISO 8601; also pins now() (default: now)")
    v.add_argument("--dashboard", action="append", default=None, metavar="UID", help="only this one (repeatable)")
    v.add_argument("--per-panel", action="store_true", help="also one PNG per panel, in <out>/<uid>/")
    v.set_defaults(func=_dashboards_preview_cmd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cityos", description="Tsuyama City OS telemetry: edge agent, ingest, tools")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("stack", help="start/stop a private Mosquitto + InfluxDB on loopback ports")
    s.add_argument("action", choices=["up", "status", "down"])
    s.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="data, logs and stack.json go here (default: %(default)s)")
    s.set_defaults(func=_stack_cmd)

    g = sub.add_parser(
        "gateway", help="the edge agent that runs on a gateway",
        description="run: the agent. check: the commissioning checklist (docs/field-guide.md), each line ✓ or ✗ "
        "with what to do; exit status 0 only if all pass. Without --live what this machine can tell alone (config, "
        "TLS files, broker name, serial ports, ids, outbox); with --live, on the gateway while its agent runs, also "
        "each device, the clock, the broker and a probe reading proven stored in InfluxDB.",
    )
    g.add_argument("action", choices=["run", "check"], help="run the agent, or check the gateway")
    g.add_argument("--config", type=Path, default=Path("/etc/cityos/gateway.toml"),
                   help="gateway TOML config (default: %(default)s)")
    g.add_argument("--live", action="store_true",
                   help="check: also the running agent, every device, the clock, the broker and the round trip to "
                   "InfluxDB (run it with sudo on the gateway)")
    g.add_argument("--json", action="store_true", help="check: the lines as JSON (name, ok, detail, hint)")
    g.add_argument("--wait", type=float, default=90.0, metavar="SECONDS",
                   help="check --live: how long to wait for every device to answer and for the ingest's receipt "
                   "(default: %(default)s)")
    g.set_defaults(func=_gateway_cmd)

    i = sub.add_parser("ingest", help="the cloud ingest service: MQTT → InfluxDB")
    i.add_argument("--config", required=True, type=Path, help="ingest TOML config")
    i.add_argument("--check", action="store_true",
                   help="only validate the config and load its TLS and password files (exit 0 if usable)")
    i.set_defaults(func=_ingest_cmd)

    ru = sub.add_parser("rollup", help="the rollups the City OS API serves (energy and waste per district): "
                        "InfluxDB → InfluxDB, through the v1 API")
    ru.add_argument("--config", required=True, type=Path, help="rollup TOML config")
    ru.add_argument("--once", action="store_true", help="one pass, then exit (0; 1 if InfluxDB failed)")
    ru.set_defaults(func=_rollup_cmd)

    m = sub.add_parser(
        "sim", help="device simulators on pseudo-terminals, the simulated city, the city-scale load generator"
    )
    m.add_argument(
        "device",
        choices=list(SIMULATORS),
        help="forest|meter|truck|bus: one device simulator; run SCENARIO: the simulated city; load: city-scale load",
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

    api_cli.add_parser(sub)

    r = sub.add_parser("gtfs-rt", help="one GTFS-Realtime VehiclePositions snapshot from a `cityos stack`")
    r.add_argument("--stack", type=Path, default=Path(DEFAULT_RUN_DIR), help="stack run directory (default: %(default)s)")
    r.add_argument("--db", default=None, help="database (default: the stack's)")
    r.add_argument("--out", type=Path, default=None,
                   help="write the feed here (.json: as JSON, else protobuf); default: JSON on stdout")
    r.add_argument("--max-age-s", type=float, default=300.0,
                   help="leave out vehicles without a position this recent (default: %(default)s)")
    r.set_defaults(func=_gtfs_rt_cmd)

    _dashboards_parser(sub)
    fleet_cli.add_parser(sub)
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
