"""The cloud side installs as a deployment: its systemd units are valid and hardened, its example configs load,
`cityos ingest --check` finds a bad file before systemd starts the service, and `cityos fleet influxdb` sets up
the database, its retention, the rollups' database and the three least-privilege users on a real InfluxDB."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from citylab.pipeline import ingest_config
from citylab.stack import Stack, StackError, deployed_influx_gogc
from cityos_api.settings import load_settings
from ingest.config import load_config
from rollup import load_config as load_rollup_config

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "deploy" / "cloud").glob("*.service"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cityos_cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_cloud_units_verify_and_are_hardened(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text()
    for directive in ("User=", "ProtectSystem=strict", "NoNewPrivileges=true", "PrivateTmp=true",
                      "ProtectHome=true", "CapabilityBoundingSet=", "Restart=always", "UMask=0077"):
        assert directive in text, f"{unit.name} lacks {directive}"
    assert "User=root" not in text
    # systemd's own check, with the command pointed at this machine's cityos (the unit names /opt/cityos).
    exe = shutil.which("cityos") or ""
    if not exe:
        exe = str(tmp_path / "cityos")
        Path(exe).write_text(f"#!/bin/sh\nexec {sys.executable} -m cityos_cli \"$@\"\n")
        Path(exe).chmod(0o755)
    local = tmp_path / unit.name
    local.write_text(text.replace("/opt/cityos/bin/cityos", exe))
    res = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (res.stdout + res.stderr).splitlines() if unit.name in line]
    assert res.returncode == 0 and not problems, problems


def test_influxdb_drop_in_sets_a_gogc_the_benchmark_runs(tmp_path: Path) -> None:
    """deploy/cloud/influxdb-gogc.conf is a ``[Service]`` drop-in whose one setting is ``GOGC``, a value the
    benchmark's stack takes as it is (docs/operations.md, "InfluxDB")."""
    text = (ROOT / "deploy" / "cloud" / "influxdb-gogc.conf").read_text()
    settings = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert settings == ["[Service]", f"Environment=GOGC={deployed_influx_gogc()}"]
    assert Stack(tmp_path, influx_gogc=deployed_influx_gogc())._influx_env()["GOGC"] == "400"
    (tmp_path / "bad.conf").write_text("[Service]\nEnvironment=GOGC=off\n")
    with pytest.raises(StackError, match="GOGC"):
        deployed_influx_gogc(tmp_path / "bad.conf")


def test_example_configs_load() -> None:
    ingest = load_config(ROOT / "deploy" / "cloud" / "ingest.example.toml")
    assert ingest.mqtt.tls and ingest.mqtt.cert_file and ingest.influx.username == "cityos_ingest"
    api = load_settings(ROOT / "deploy" / "cloud" / "api.example.toml")
    assert api.influx.username == "cityos_reader" and api.influx.password_file
    rollup = load_rollup_config(ROOT / "deploy" / "cloud" / "rollup.example.toml")
    assert rollup.influx.username == "cityos_rollup" and rollup.influx.db == api.influx.db
    assert rollup.target == api.rollup_db == "cityos_rollup"
    assert rollup.rollup.energy_settle_h == api.open_data.energy_settle_h, "the rollup freezes what the API serves"


def test_ingest_check_names_a_missing_file_and_passes_a_good_config(stack: Stack, tmp_path: Path) -> None:
    res = _cli("ingest", "--config", str(ROOT / "deploy" / "cloud" / "ingest.example.toml"), "--check")
    assert res.returncode == 2 and "mqtt.ca_file" in res.stderr and "Traceback" not in res.stderr
    cfg = tmp_path / "ingest.toml"
    cfg.write_text(ingest_config(stack.info(), tmp_path / "data", "check-1").to_toml())
    res = _cli("ingest", "--config", str(cfg), "--check")
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


def test_fleet_influxdb_sets_up_least_privilege(own_stack: Stack, tmp_path: Path) -> None:
    info = own_stack.info()
    admin_pw = tmp_path / "admin.password"
    admin_pw.write_text(info.influx_password + "\n")
    admin_pw.chmod(0o600)
    secrets = tmp_path / "secrets"
    args = ("fleet", "influxdb", "--url", info.influx_url, "--db", "city_prod", "--admin-user",
            info.influx_username, "--admin-password-file", str(admin_pw), "--secrets-dir", str(secrets),
            "--retention", "90d")
    res = _cli(*args)
    assert res.returncode == 0, res.stderr
    files = sorted(secrets.iterdir())
    assert [f.name for f in files] == ["influx-cityos_ingest.password", "influx-cityos_reader.password",
                                       "influx-cityos_rollup.password"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    for f in files:
        assert f.read_text().strip() not in res.stdout + res.stderr  # never shown
    assert _cli(*args).returncode == 0  # idempotent: a second run keeps the files and the users

    writer = ("cityos_ingest", files[0].read_text().strip())
    reader = ("cityos_reader", files[1].read_text().strip())
    rollup = ("cityos_rollup", files[2].read_text().strip())
    admin = (info.influx_username, info.influx_password)
    url = info.influx_url

    def status(path: str, auth: tuple[str, str], **kw) -> int:
        return httpx.post(url + path, auth=auth, timeout=10, **kw).status_code

    assert status("/write", writer, params={"db": "city_prod"}, content=b"m v=1") == 204
    assert status("/write", reader, params={"db": "city_prod"}, content=b"m v=1") == 403
    assert status("/query", reader, params={"db": "city_prod", "q": "SELECT * FROM m"}) == 200
    assert status("/query", writer, params={"db": "city_prod", "q": "SELECT * FROM m"}) == 403
    # the rollups' database: the rollup user reads the city's and reads and writes its own; the readers read it;
    # the ingest has nothing on it
    assert status("/query", rollup, params={"db": "city_prod", "q": "SELECT * FROM m"}) == 200
    assert status("/write", rollup, params={"db": "city_prod"}, content=b"m v=1") == 403
    assert status("/write", rollup, params={"db": "city_prod_rollup"}, content=b"r v=1") == 204
    assert status("/query", rollup, params={"db": "city_prod_rollup", "q": "SELECT * FROM r"}) == 200
    assert status("/query", reader, params={"db": "city_prod_rollup", "q": "SELECT * FROM r"}) == 200
    assert status("/write", reader, params={"db": "city_prod_rollup"}, content=b"r v=1") == 403
    assert status("/write", writer, params={"db": "city_prod_rollup"}, content=b"r v=1") == 403
    assert status("/query", writer, params={"db": "city_prod_rollup", "q": "SELECT * FROM r"}) == 403
    for who in (rollup, reader):
        assert status("/query", who, params={"q": 'DROP DATABASE "city_prod_rollup"'}) == 403
    rps = httpx.get(url + "/query", auth=admin, params={"q": 'SHOW RETENTION POLICIES ON "city_prod"'}).json()
    rows = rps["results"][0]["series"][0]["values"]
    default = [r for r in rows if r[-1] is True]
    assert default and default[0][0] == "city" and re.match(r"^2160h", default[0][1])
