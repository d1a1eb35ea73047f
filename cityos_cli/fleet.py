"""``cityos fleet``: the registry of gateways (init, add, list, show, revoke, rotate, bundle, broker-config).

The registry itself is ``fleet/`` (cloud side, kernel only); this is the command around it, which also validates
a gateway's config with the edge's own models (the CLI is the one floor that may import both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cityos.config import ConfigError, read_toml
from cityos.families import FAMILIES, by_name

DEFAULT_REGISTRY = "/var/lib/cityos-fleet"


def default_registry() -> str:
    """$CITYOS_FLEET_DIR, else the developer's stack's registry if there is one here, else the system one."""
    env = os.environ.get("CITYOS_FLEET_DIR")
    if env:
        return env
    run_dir = Path(os.environ.get("CITYOS_RUN_DIR", "run"))
    for d in (run_dir / "fleet", run_dir / "stack" / "fleet"):
        if (d / "ca").is_dir():
            return str(d)
    return DEFAULT_REGISTRY


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fleet", help="the fleet registry: gateways, their identities, the broker's ACL")
    f.add_argument("--registry", type=Path, default=None,
                   help=f"registry directory (default: $CITYOS_FLEET_DIR, ./run/fleet of a dev stack, "
                   f"{DEFAULT_REGISTRY})")
    acts = f.add_subparsers(dest="fleet_action", required=True, metavar="ACTION")

    i = acts.add_parser("init", help="create a registry: its CA, and where gateways reach the broker")
    i.add_argument("--broker-host", required=True, help="the broker's name as gateways reach it (in its certificate)")
    i.add_argument("--broker-port", type=int, default=8883)
    i.add_argument("--reload-command", default="systemctl reload mosquitto",
                   help="how to make the broker re-read its ACL (default: %(default)s)")

    a = acts.add_parser("add", help="register a gateway: issue its certificate, keep the config it should run")
    a.add_argument("gateway", help="gateway id, e.g. gw-forest-03")
    a.add_argument("--family", required=True, choices=[fam.name for fam in FAMILIES])
    a.add_argument("--district", required=True, help="district (地区) it serves")
    a.add_argument("--lat", type=float, default=None)
    a.add_argument("--lon", type=float, default=None)
    a.add_argument("--asset", default="", help="bus number, meter pseudonym (hh-0001), forest plot, truck number")
    a.add_argument("--config", type=Path, default=None,
                   help="the gateway config it should run (default: the family's sample, edge/sources/<family>/)")

    for name, text in (("list", "every gateway: online, last seen, version, config drift, backlog, clock"),
                       ("show", "one gateway in full, with the health of each device behind it")):
        p = acts.add_parser(name, help=text)
        if name == "show":
            p.add_argument("gateway")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker")

    r = acts.add_parser("revoke", help="shut a gateway out (ACL at the next broker reload, CRL at the next restart)")
    r.add_argument("gateway")
    r.add_argument("--no-reload", action="store_true", help="do not reload the broker now")

    o = acts.add_parser("rotate", help="a new key and certificate for a gateway (then a new bundle)")
    o.add_argument("gateway")
    o.add_argument("--revoke-old", action="store_true",
                   help="put the old certificate on the CRL now (else after the gateway runs with the new one)")

    b = acts.add_parser("bundle", help="the first-boot bundle for a freshly flashed Raspberry Pi OS image")
    b.add_argument("gateway")
    b.add_argument("--image", required=True, choices=["raspios-trixie", "raspios-bookworm"])
    b.add_argument("--out", type=Path, required=True, help="folder to write (copy its contents to the boot partition)")
    b.add_argument("--arch", default="aarch64", choices=["aarch64", "armv7l", "x86_64"],
                   help="the gateway's CPU (default: %(default)s, a Raspberry Pi 4/5 with 64-bit OS)")
    b.add_argument("--python", default=None,
                   help="the image's Python as MAJOR.MINOR (default: 3.13 for trixie, 3.11 for bookworm)")
    b.add_argument("--wheelhouse", type=Path, default=None,
                   help="take the wheels from this folder instead of downloading them (offline build)")
    b.add_argument("--ssh-key", type=Path, default=None, help="a technician's public key for the admin user")
    b.add_argument("--wifi", default=None, help="SSID,PSKFILE: Wi-Fi for a gateway without Ethernet")

    s_ = acts.add_parser("issue", help="a service's certificate and key (svc.ingest, svc.fleet) into a folder")
    s_.add_argument("name", choices=["svc.ingest", "svc.fleet"])
    s_.add_argument("--out", type=Path, required=True, help="folder for ca.crt, NAME.crt, NAME.key (0600)")

    x = acts.add_parser("influxdb", help="InfluxDB for a deployment: database, retention, the rollups' database, "
                        "the write-only, read-only and rollup service users (their passwords into 0600 files)")
    x.add_argument("--url", required=True, help="InfluxDB base URL (its v1 API)")
    x.add_argument("--db", default="cityos")
    x.add_argument("--admin-user", required=True)
    x.add_argument("--admin-password-file", type=Path, required=True, help="0600 file with the admin's password")
    x.add_argument("--secrets-dir", type=Path, required=True,
                   help="where the service users' password files go (created 0700; existing files are kept)")
    x.add_argument("--retention", default="1825d", help="default retention policy (default: %(default)s)")
    x.add_argument("--rollup-db", default=None,
                   help="the rollups' database (default: the database's name + _rollup, e.g. cityos_rollup)")

    c = acts.add_parser("broker-config", help="the production Mosquitto config, ACL and CRL from the registry")
    c.add_argument("--out", type=Path, required=True, help="folder for mosquitto.conf, acl, crl.pem, certificates")
    c.add_argument("--listen", default="0.0.0.0", help="address of the TLS listener (default: %(default)s)")
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fleet.registry import FleetError

    registry_dir = args.registry or Path(default_registry())
    try:
        return int(_ACTIONS[args.fleet_action](args, registry_dir) or 0)
    except FleetError as exc:
        print(f"cityos fleet {args.fleet_action}: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"cityos fleet {args.fleet_action}: {exc}", file=sys.stderr)
        return 3


def _init(args: argparse.Namespace, d: Path) -> int:
    from fleet.registry import BrokerSettings, Registry

    reg = Registry.open_or_create(d)
    reg.set_broker(BrokerSettings(host=args.broker_host, port=args.broker_port,
                                  reload_command=args.reload_command.split() if args.reload_command else []))
    reg.broker_files(args.broker_host)
    print(f"fleet registry in {d}: CA {reg.ca.ca_file}; gateways reach mqtts://{args.broker_host}:{args.broker_port}")
    print(f"next: `cityos fleet broker-config --out DIR`, then `cityos fleet add GATEWAY ...` (registry {d})")
    return 0


def _family_sample(family: str) -> dict[str, Any]:
    from importlib.resources import files

    return read_toml(Path(str(files(f"edge.sources.{family}") / "sample.toml")))


def _add(args: argparse.Namespace, d: Path) -> int:
    from pydantic import ValidationError

    from cityos.config import format_validation_error
    from edge.config import parse_config
    from fleet.registry import Registry, Site
    from fleet.status import post_registered

    reg = Registry(d)
    fam = by_name(args.family)
    assert fam is not None
    base = read_toml(args.config) if args.config else _family_sample(args.family)
    cfg = reg.field_config(args.gateway, base)
    parsed = parse_config(cfg, str(args.config or f"the {args.family} sample config"))
    types = {s.type for s in parsed.sources}
    if fam.source_type not in types:
        raise ConfigError(f"{args.config}: a {args.family} gateway needs a [[sources]] type = {fam.source_type!r} "
                          f"(this config has {sorted(types)})")
    try:
        site = Site(district=args.district, lat=args.lat, lon=args.lon, asset=args.asset)
    except ValidationError as exc:
        raise ConfigError("cityos fleet add: invalid site (--district, --lat, --lon, --asset)\n"
                          + format_validation_error(exc)) from None
    rec = reg.add(args.gateway, args.family, site, cfg)
    print(f"registered {rec.id} ({args.family}, {site.district}{', ' + site.asset if site.asset else ''}): "
          f"certificate serial {rec.cert_serial:x}, valid until {rec.cert_not_after:%Y-%m-%d}; "
          f"config hash {rec.config_hash}")
    try:
        post_registered(reg.login(), rec.id, rec.config_hash, timeout_s=5)
        print("the fleet view and the offline alert know it from now (status: never seen)")
    except ConnectionError as exc:
        print(f"warning: could not post its registered status ({exc}); `cityos fleet list` shows it anyway",
              file=sys.stderr)
    print(f"next: `cityos fleet bundle {rec.id} --image raspios-trixie --out DIR`")
    return 0


def _views(d: Path, timeout: float) -> tuple[list[Any], str]:
    from fleet.registry import Registry
    from fleet.status import read_statuses, view

    reg = Registry(d)
    note = ""
    try:
        statuses = read_statuses(reg.login(), timeout_s=timeout)
    except ConnectionError as exc:
        statuses, note = {}, f"broker unreachable ({exc}): registry only"
    return view(reg.gateways(), statuses), note


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit}"
    return f"{s:.0f}s"


def _list(args: argparse.Namespace, d: Path) -> int:
    views, note = _views(d, args.timeout)
    if args.json:
        print(json.dumps({"gateways": [v.as_dict() for v in views], "note": note}, indent=2, default=str,
                         ensure_ascii=False))
        return 0
    if note:
        print(note, file=sys.stderr)
    rows = [("GATEWAY", "FAMILY", "DISTRICT", "REGISTRY", "LINK", "SEEN", "VERSION", "CONFIG", "BACKLOG", "CLOCK")]
    for v in views:
        config = "drift" if v.drift else ("ok" if v.running_hash else "-")
        backlog = "-" if v.backlog_depth is None else f"{v.backlog_depth} ({_age(v.backlog_age_s)})"
        clock = {None: "-", True: "synced", False: "NOT synced"}[v.clock_synced]
        rows.append((v.id, v.family, v.district, v.registry_state, v.link, _age(v.last_seen_s), v.agent_version or "-",
                     config, backlog, clock))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _show(args: argparse.Namespace, d: Path) -> int:
    from fleet.registry import Registry

    reg = Registry(d)
    rec = reg.gateway(args.gateway)
    views, note = _views(d, args.timeout)
    v = next(x for x in views if x.id == rec.id)
    cert = reg.certificate(rec.id)
    doc = {"record": rec.model_dump(mode="json"), "status": v.as_dict(), "certificate": cert, "note": note}
    if args.json:
        print(json.dumps(doc, indent=2, default=str, ensure_ascii=False))
        return 0
    print(f"{rec.id}  {rec.family}  {rec.site.district}  {rec.site.asset}  registry: {rec.state}")
    where = f"{rec.site.lat}, {rec.site.lon}" if rec.site.lat is not None else "(no position)"
    print(f"  position      {where}")
    print(f"  certificate   serial {rec.cert_serial:x}, valid until {rec.cert_not_after:%Y-%m-%d}"
          + (f", rotated {rec.rotated_at:%Y-%m-%d}" if rec.rotated_at else ""))
    print(f"  link          {v.link}" + (f", last seen {_age(v.last_seen_s)} ago" if v.last_seen_s is not None else ""))
    print(f"  agent         {v.agent_version or '-'}")
    drift = " (DRIFT: not the config the registry issued)" if v.drift else ""
    print(f"  config        expected {rec.config_hash}, running {v.running_hash or '-'}{drift}")
    print(f"  backlog       {'-' if v.backlog_depth is None else v.backlog_depth} readings, "
          f"oldest {_age(v.backlog_age_s)}")
    print(f"  clock         {({None: '-', True: 'synchronised', False: 'NOT synchronised'})[v.clock_synced]}")
    if v.devices:
        print("  devices")
        for dev, health in sorted(v.devices.items()):
            ok = health.get("ok")
            state = "ok" if ok == 1 else ("FAILING" if ok == 0 else "?")
            extra = ", ".join(f"{k}={val:g}" for k, val in sorted(health.items()) if k != "ok")
            print(f"    {dev:<20} {state:<8} {extra}")
    if note:
        print(note, file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace, d: Path) -> int:
    from fleet.registry import Registry

    reg = Registry(d)
    rec = reg.revoke(args.gateway)
    print(f"revoked {rec.id}: denied in the ACL, certificate serial(s) on the CRL")
    if args.no_reload:
        print("the broker was not reloaded (--no-reload): the ACL applies from its next reload")
    else:
        print(reg.reload_broker())
    print("the CRL applies from the broker's next restart (Mosquitto 2.0 does not re-read it on reload)")
    return 0


def _rotate(args: argparse.Namespace, d: Path) -> int:
    from fleet.registry import Registry

    reg = Registry(d)
    rec = reg.rotate(args.gateway, revoke_old=args.revoke_old)
    print(f"{rec.id}: new certificate serial {rec.cert_serial:x}, valid until {rec.cert_not_after:%Y-%m-%d}")
    print(f"next: `cityos fleet bundle {rec.id} ...` (or copy identities/{rec.id}.crt/.key to /etc/cityos/ "
          "on the gateway), then `cityos fleet rotate` is done; the old certificate "
          + ("is on the CRL now" if args.revoke_old else "stays valid until you revoke it"))
    return 0


def _bundle(args: argparse.Namespace, d: Path) -> int:
    from fleet.bundle import build_bundle
    from fleet.registry import Registry

    t0 = time.monotonic()
    out = build_bundle(Registry(d), args.gateway, image=args.image, out=args.out, arch=args.arch,
                       python=args.python, wheelhouse=args.wheelhouse, ssh_key=args.ssh_key, wifi=args.wifi)
    print(f"first-boot bundle for {args.gateway} ({args.image}, {args.arch}) in {out} "
          f"({time.monotonic() - t0:.0f} s): copy its contents to the boot partition of the flashed card")
    return 0


def _broker_config(args: argparse.Namespace, d: Path) -> int:
    from fleet.broker import write_production_config
    from fleet.registry import Registry

    written = write_production_config(Registry(d), args.out, listen=args.listen)
    for p in written:
        print(p)
    return 0


def _issue(args: argparse.Namespace, d: Path) -> int:
    import shutil

    from fleet.pki import write_private
    from fleet.registry import Registry

    ident = Registry(d).identity(args.name)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ident.ca_file, args.out / "ca.crt")
    shutil.copyfile(ident.cert_file, args.out / f"{args.name}.crt")
    write_private(args.out / f"{args.name}.key", ident.key_file.read_bytes(), 0o600)
    print(f"{args.name}: {args.out / (args.name + '.crt')} and its key (0600: chown it to the service's user)")
    return 0


def _influxdb(args: argparse.Namespace, _d: Path) -> int:
    import secrets as pysecrets

    from cityos.credentials import read_secret
    from cityos.influx import InfluxClient, InfluxError
    from fleet.influxdb import READER, ROLLUP, WRITER, InfluxRoles, provision
    from fleet.pki import write_private

    admin_pw = read_secret(args.admin_password_file, "--admin-password-file")
    args.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwords = {}
    for user in (WRITER, READER, ROLLUP):
        f = args.secrets_dir / f"influx-{user}.password"
        if not f.exists():
            write_private(f, pysecrets.token_urlsafe(24) + "\n", 0o600)
        passwords[user] = read_secret(f, str(f))
    try:
        with InfluxClient(args.url, args.db, args.admin_user, admin_pw, timeout_s=30) as admin:
            target = provision(admin, args.db, InfluxRoles(passwords[WRITER], passwords[READER], passwords[ROLLUP]),
                               retention=args.retention, rollup_db=args.rollup_db)
    except InfluxError as exc:
        print(f"cityos fleet influxdb: {exc}", file=sys.stderr)
        return 1
    print(f"database {args.db} (default retention {args.retention}); users {WRITER} (WRITE), {READER} (READ), "
          f"{ROLLUP} (READ)")
    print(f"rollups' database {target}: {ROLLUP} (ALL: READ and WRITE), {READER} (READ), {WRITER} (nothing)")
    for user in (WRITER, READER, ROLLUP):
        print(f"  {user}: password in {args.secrets_dir / f'influx-{user}.password'} (0600: chown it to the service)")
    return 0


_ACTIONS = {"init": _init, "add": _add, "list": _list, "show": _show, "revoke": _revoke, "rotate": _rotate,
            "bundle": _bundle, "broker-config": _broker_config, "influxdb": _influxdb,
            "issue": _issue}
