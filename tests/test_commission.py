"""From `cityos fleet add` to a commissioned gateway, as a technician's day goes, in under two minutes (issue 12,
"Must show"): register it, build its first-boot bundle, "flash and boot" it (the bundle's files and the agent
installed from the bundle's own wheelhouse with no package index, under a scratch root), start the agent with the
bundle's unit's command line against a simulated forest bus, run `cityos gateway check --live` to all ✓ - the
probe proven stored in InfluxDB through the ingest's receipt - and find the stations' readings in InfluxDB exactly.
Real broker (mutual TLS, ACL), ingest and InfluxDB."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest
from helpers import influx_query
from ingest_helpers import ingest_config, running_ingest, wait_for
from test_bundle import HERE_ARCH, HERE_PY, _pip_env, _under, first_boot

from citylab.pipeline import Proc
from citylab.stack import Stack
from cityos.config import dump_toml
from firmware_sim.forest.sim import ForestStationSim, StationSpec
from fleet import bundle

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fleet's wheelhouse for this machine's CPU and Python: built once per fleet, not per gateway."""
    dest = tmp_path_factory.mktemp("wheelhouse")
    bundle.collect_wheels(dest, bundle.Target(HERE_ARCH, HERE_PY))
    return dest


def _cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "cityos_cli", *argv], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_from_fleet_add_to_a_commissioned_gateway_in_under_two_minutes(
    stack: Stack, influx_db: str, wheelhouse: Path, tmp_path: Path
) -> None:
    info = stack.info()
    gw = f"gw-forest-c{uuid.uuid4().hex[:4]}"
    stations = [StationSpec(f"forest-{gw[-4:]}-{u}", u, sample_interval_ds=5) for u in (1, 2)]
    wanted = tmp_path / "wanted.toml"
    wanted.write_text(dump_toml({
        "gateway": {"id": gw},
        "mqtt": {"status_interval_s": 2.0, "backoff_min_s": 0.2, "backoff_max_s": 2.0},
        "outbox": {"path": "/var/lib/cityos/outbox.db"},
        "health": {"interval_s": 5},
        "sources": [{"type": "forest_station", "name": "bus0", "port": "/dev/ttyFOREST0", "poll_interval_s": 0.5,
                     "stations": [{"device_id": s.device_id, "unit": s.unit} for s in stations]}],
    }))
    root = tmp_path / "root"
    with running_ingest(ingest_config(info, tmp_path, influx_db)):
        t0 = time.monotonic()
        # The operator, on the cloud side.
        _cli("fleet", "--registry", str(info.fleet_dir), "add", gw, "--family", "forest", "--district", "加茂",
             "--asset", "plot-7", "--config", str(wanted))
        out = tmp_path / "boot"
        _cli("fleet", "--registry", str(info.fleet_dir), "bundle", gw, "--image", "raspios-trixie", "--out", str(out),
             "--arch", HERE_ARCH, "--python", HERE_PY, "--wheelhouse", str(wheelhouse))

        # The first boot, under a scratch root: the bundle's files, then its own offline install.
        venv, files = first_boot(out, root)
        config = root / "etc/cityos/gateway-scratch.toml"
        config.write_text(dump_toml(_under(root, tomllib.loads(files[bundle.CONFIG]["content"]))))

        # Power on: the stations answer on the bus, the agent starts as its unit says.
        (root / "dev").mkdir(exist_ok=True)
        sim = ForestStationSim(stations, link_path=root / "dev/ttyFOREST0", ground_truth=tmp_path / "truth.jsonl")
        sim.start()
        unit = files["/etc/systemd/system/cityos-gateway.service"]["content"]
        (exec_start,) = [ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart=")]
        argv = [str(venv / "bin/cityos") if a == f"{bundle.VENV}/bin/cityos" else
                str(config) if a == bundle.CONFIG else a for a in exec_start.split()]
        agent = Proc("agent", argv, tmp_path / "agent.log")
        try:
            agent.start()
            wait_for(lambda: (root / "var/lib/cityos/status.json").exists() or not agent.alive, 30,
                     "the agent to start")
            # The technician: the checklist, with the gateway's own tools (the venv), all ✓.
            fakebin = tmp_path / "bin"
            fakebin.mkdir()
            (fakebin / "timedatectl").write_text("#!/bin/sh\necho yes\n")  # this machine's NTP state is not ours
            (fakebin / "timedatectl").chmod(0o755)
            check = subprocess.run(
                [str(venv / "bin/cityos"), "gateway", "check", "--live", "--json", "--config", str(config),
                 "--wait", "60"],
                capture_output=True, text=True, timeout=120, env={**_pip_env(), "PATH": f"{fakebin}:/usr/bin:/bin"})
            lines = json.loads(check.stdout)
            failing = [line for line in lines if not line["ok"]]
            assert check.returncode == 0 and not failing, f"{failing}\n{check.stderr}\n{agent.tail()}"
            commissioned = time.monotonic() - t0
            names = {line["name"] for line in lines}
            assert any("InfluxDB" in n or "stored" in n for n in names), names
            assert commissioned < 120, f"commissioning took {commissioned:.0f} s"

            # And the devices' readings are in InfluxDB exactly.
            sim.freeze()
            time.sleep(2.0)
            truth = {(json.loads(ln)["device_id"], json.loads(ln)["ts"]) for ln in
                     (tmp_path / "truth.jsonl").read_text().splitlines() if "sample_no" in json.loads(ln)}

            def stored() -> set[tuple[str, int]]:
                series = influx_query(info, influx_db,
                                      f"SELECT \"battery_v\" FROM \"forest\" WHERE \"gateway\" = '{gw}' GROUP BY \"device\"")
                return {(s["tags"]["device"], row[0]) for s in series for row in s["values"]}

            wait_for(lambda: stored() == truth, 60, "every reading of both stations in InfluxDB")
            assert len(truth) >= 4
        finally:
            agent.stop()
            sim.stop()
    assert "Traceback" not in agent.tail(300)
