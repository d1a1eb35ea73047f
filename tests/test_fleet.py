"""`cityos fleet` as an operator uses it, on a real broker (mutual TLS, ACL) with the real ingest and a real agent
on a simulated forest bus: add → the fleet view knows it before it speaks → it runs the issued config (no drift) and
shows each station → rotate → revoke shuts it out at the reload while another gateway goes on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from helpers import influx_query
from ingest_helpers import ingest_config, running_ingest, wait_for

from citylab.pipeline import Proc, gateway_config
from citylab.stack import Stack
from cityos.config import config_hash, dump_toml
from dashboards.catalog import ALERT_RULES
from firmware_sim.forest.sim import ForestStationSim, StationSpec
from fleet.registry import Registry


def fleet(registry: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "cityos_cli", "fleet", "--registry", str(registry), *args],
                         capture_output=True, text=True, timeout=60)
    if check:
        assert res.returncode == 0, res.stderr + res.stdout
    return res


def fleet_json(registry: Path, *args: str) -> Any:
    return json.loads(fleet(registry, *args, "--json").stdout)


def _install(reg: Registry, gw: str, etc: Path) -> Path:
    """What the first-boot bundle does on the gateway: its identity files and the issued config, in place."""
    ident = reg.identity(gw, issue=False)
    etc.mkdir(parents=True, exist_ok=True)
    shutil.copy(ident.ca_file, etc / "ca.crt")
    shutil.copy(ident.cert_file, etc / "gateway.crt")
    shutil.copy(ident.key_file, etc / "gateway.key")
    (etc / "gateway.key").chmod(0o600)
    cfg = etc / "gateway.toml"
    cfg.write_text(dump_toml(reg.gateway(gw).config))
    return cfg


def test_add_view_rotate_revoke(own_stack: Stack, tmp_path: Path) -> None:
    info = own_stack.info()
    reg_dir = info.fleet_dir
    reg = Registry(reg_dir)
    etc = tmp_path / "etc"
    reg.set_broker(reg.broker().model_copy(update={"gateway_etc": etc}))
    gw = f"gw-forest-{uuid.uuid4().hex[:4]}"
    stations = [StationSpec(f"forest-{gw[-4:]}-{u}", u, sample_interval_ds=5) for u in (1, 2)]
    # The config it should run, written before it has an identity (the registry sets its id and TLS files).
    base = gateway_config(info, "gw-template", tmp_path / "var" / "outbox.db", [{
        "type": "forest_station", "name": "bus0", "port": str(tmp_path / "tty0"), "poll_interval_s": 0.5,
        "stations": [{"device_id": s.device_id, "unit": s.unit} for s in stations]}])
    (tmp_path / "wanted.toml").write_text(dump_toml(base))

    with running_ingest(ingest_config(info, tmp_path, info.influx_db)):
        out = fleet(reg_dir, "add", gw, "--family", "forest", "--district", "加茂", "--lat", "35.12", "--lon",
                    "133.95", "--asset", "plot-12", "--config", str(tmp_path / "wanted.toml")).stdout
        assert f"registered {gw}" in out
        rec = reg.gateway(gw)
        assert rec.config["mqtt"]["cert_file"] == str(etc / "gateway.crt") and rec.state == "active"
        assert rec.config["mqtt"]["host"] == info.mqtt_host and rec.config_hash == config_hash(rec.config)

        # Known before it ever spoke: in the fleet view, and to the offline alert (a gateway_status point).
        listed = {g["id"]: g for g in fleet_json(reg_dir, "list")["gateways"]}
        assert listed[gw]["link"] == "never seen" and listed[gw]["registry_state"] == "active"
        wait_for(lambda: influx_query(info, info.influx_db,
                                      f"SELECT \"state\" FROM \"gateway_status\" WHERE \"gateway\" = '{gw}'"),
                 20, "the registered status in InfluxDB")
        # The offline alert rule's own query now has a series for it: silent for 15 minutes, it alerts.
        rule = next(r for r in ALERT_RULES if r.uid == "cityos-gateway-offline")
        covered = {s_.get("tags", {}).get("gateway") for s_ in influx_query(info, info.influx_db, rule.query)}
        assert gw in covered

        cfg = _install(reg, gw, etc)
        sim = ForestStationSim(stations, link_path=tmp_path / "tty0", ground_truth=tmp_path / "gt.jsonl").start()
        agent = Proc("agent", [sys.executable, "-m", "cityos_cli", "gateway", "run", "--config", str(cfg)],
                     tmp_path / "agent.log")
        try:
            agent.start()

            def shown() -> dict[str, Any] | None:
                doc = fleet_json(reg_dir, "show", gw, "--timeout", "2")
                st = doc["status"]
                ok = st["link"] == "online" and all(d.get("ok") == 1 for d in st["devices"].values())
                return doc if ok and len(st["devices"]) == 2 else None

            doc = wait_for(shown, 60, "the gateway online with both stations answering", poll=1.0)
            st = doc["status"]
            assert st["drift"] is False and st["running_hash"] == rec.config_hash
            assert set(st["devices"]) == {s.device_id for s in stations}
            assert {d["unit"] for d in st["devices"].values()} == {1.0, 2.0}
            assert st["agent_version"] and st["backlog_depth"] is not None
            assert doc["certificate"]["identity"] == gw and doc["record"]["site"]["district"] == "加茂"
            human = fleet(reg_dir, "list").stdout
            assert gw in human and "online" in human

            # A config edited on the gateway is drift.
            edited = reg.gateway(gw).config | {"log_level": "DEBUG"}
            cfg.write_text(dump_toml(edited))
            agent.stop()
            agent.start()
            wait_for(lambda: fleet_json(reg_dir, "show", gw, "--timeout", "2")["status"]["drift"], 60,
                     "the fleet view to show drift", poll=1.0)

            # Rotation: a new certificate for the same identity; the gateway keeps working with the new one.
            old_serial = rec.cert_serial
            fleet(reg_dir, "rotate", gw)
            rotated = reg.gateway(gw)
            assert rotated.cert_serial != old_serial and old_serial in rotated.superseded
            _install(reg, gw, etc)
            agent.stop()
            agent.start()
            wait_for(lambda: fleet_json(reg_dir, "show", gw, "--timeout", "2")["status"]["link"] == "online"
                     and not fleet_json(reg_dir, "show", gw, "--timeout", "2")["status"]["drift"], 60,
                     "online again with the new certificate", poll=1.0)

            # Revocation: the ACL shuts it out at the reload the command does (the agent keeps its rows).
            out = fleet(reg_dir, "revoke", gw).stdout
            assert "SIGHUP" in out
            assert reg.gateway(gw).state == "revoked"
            time.sleep(1.0)
            before = _count(info, gw)
            wait_for(lambda: "Not authorized" in agent.tail(50), 30, "the broker to refuse the revoked gateway")
            time.sleep(2.0)
            assert _count(info, gw) == before
            assert fleet(reg_dir, "add", gw, "--family", "forest", "--district", "加茂", check=False).returncode == 1
        finally:
            agent.kill()
            sim.stop()


def _count(info: Any, gw: str) -> int:
    series = influx_query(info, info.influx_db, f"SELECT COUNT(*) FROM \"forest\" WHERE \"gateway\" = '{gw}'")
    return max((int(v) for s in series for row in s["values"] for v in row[1:] if v is not None), default=0)


def test_broker_config_for_a_deployment(tmp_path: Path) -> None:
    """`fleet init` + `broker-config`: one mutual-TLS listener, no plaintext one, and a revoke refreshes the
    installed ACL and CRL; mosquitto accepts the config (its own config test: it starts and listens)."""
    reg_dir, out = tmp_path / "fleet", tmp_path / "mosquitto"
    fleet(reg_dir, "init", "--broker-host", "localhost", "--broker-port", "18883", "--reload-command", "true")
    fleet(reg_dir, "broker-config", "--out", str(out), "--listen", "127.0.0.1")
    conf = (out / "cityos.conf").read_text()
    assert conf.count("listener ") == 1 and "require_certificate true" in conf and "use_identity_as_username true" in conf
    assert "allow_anonymous false" in conf and f"acl_file {out / 'acl'}" in conf
    assert (out / "server.key").stat().st_mode & 0o007 == 0
    reg = Registry(reg_dir)
    from fleet.registry import Site

    reg.add("gw-truck-01", "truck", Site(district="院庄", asset="truck-01"), {"gateway": {"id": "x"}})
    out_txt = fleet(reg_dir, "revoke", "gw-truck-01").stdout
    assert "ran true" in out_txt
    assert "user gw-truck-01\ntopic deny #" in (out / "acl").read_text()
    assert (out / "crl.pem").read_bytes() == reg.ca.crl_file.read_bytes()

    # mosquitto itself takes the generated config (as root it needs `user root` to read our tmp files).
    extra = tmp_path / "run.conf"
    extra.write_text(f"user root\ninclude_dir {tmp_path / 'inc'}\n")
    (tmp_path / "inc").mkdir()
    shutil.copy(out / "cityos.conf", tmp_path / "inc" / "cityos.conf")
    from citylab.stack import find_binary

    proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path)  # its persistence file goes there
    try:
        time.sleep(1.0)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_input_to_fleet_add_is_named_and_costs_nothing(tmp_path: Path) -> None:
    reg_dir = tmp_path / "fleet"
    fleet(reg_dir, "init", "--broker-host", "localhost", "--reload-command", "true")
    for args, named in ((("../etc", "--district", "加茂"), "gateway.id"),
                        (("svc.ingest", "--district", "加茂"), "gateway.id"),
                        (("gw-x1", "--district", ""), "district:"),
                        (("gw-x2", "--district", "加茂", "--lat", "200"), "lat:")):
        res = fleet(reg_dir, "add", args[0], "--family", "forest", *args[1:], check=False)
        assert res.returncode == 2 and named in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert Registry(reg_dir).gateways() == {}
    assert not (reg_dir / "identities").exists() or not any((reg_dir / "identities").iterdir())
