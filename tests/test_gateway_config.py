"""What a field technician sees when a gateway config is wrong: the field and the problem, nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cityos.config import ConfigError
from edge.config import load_config

GOOD = """
[gateway]
id = "gw-forest-01"

[mqtt]
host = "127.0.0.1"
port = 1883

[outbox]
path = "/tmp/outbox.db"

[[sources]]
type = "forest_station"
name = "bus0"
port = "/dev/ttyFOREST0"

[[sources.stations]]
device_id = "forest-01"
unit = 1
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(text)
    return p


def test_good_config_loads(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.gateway.id == "gw-forest-01"
    assert cfg.sources[0].stations[0].unit == 1


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("port = 1883", 'port = "one"'), "mqtt.port: Input should be a valid integer"),
        (("[outbox]", "[outbox]\nmax_size = 10"), "outbox.max_size: unknown key"),
        (("unit = 1", 'unit = "first"'), "sources.0.stations.0.unit: Input should be a valid integer"),
        (("unit = 1", "unit = 300"), "sources.0.stations.0.unit: Input should be less than or equal to 247"),
        (('name = "bus0"', 'name = "bus0"\nbaud = 9600'), "sources.0.baud: unknown key"),
        (('type = "forest_station"', 'type = "forest"'), "sources.0.type: unknown source type 'forest'"),
        (('id = "gw-forest-01"', 'id = "GW 01"'), "gateway.id: String should match pattern"),
        (("[gateway]", "[gatway]"), "gateway: required setting is missing"),
        (('path = "/tmp/outbox.db"', ""), "outbox.path: required setting is missing"),
    ],
)
def test_bad_config_names_the_field(tmp_path, edit, expected):
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, GOOD.replace(*edit, 1)))
    assert expected in str(ei.value)
    assert str(tmp_path / "gateway.toml") in str(ei.value)


def test_broken_toml_says_where(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid TOML.*line"):
        load_config(_write(tmp_path, GOOD.replace("port = 1883", "port = ")))


def test_cli_check_exits_2_with_the_message_on_stderr(tmp_path):
    path = _write(tmp_path, GOOD.replace("port = 1883", "port = 70000"))
    r = subprocess.run(
        [sys.executable, "-m", "cityos_cli", "gateway", "check", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert "mqtt.port: Input should be less than or equal to 65535" in r.stderr
    assert "Traceback" not in r.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "cityos_cli", "gateway", "check", "--config", str(_write(tmp_path, GOOD))],
        capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr


def test_only_the_configured_source_types_are_imported(tmp_path):
    """A forest gateway must not pay the resident memory of momonga and pynmea2 (the Pi's RSS budget). It loads
    pyserial for its bus, and no longer pymodbus (the Modbus RTU master is the forest codec's)."""
    import subprocess
    import sys

    cfg = tmp_path / "g.toml"
    cfg.write_text(
        '[gateway]\nid = "gw-1"\n[outbox]\npath = "ob.db"\n'
        '[[sources]]\ntype = "forest_station"\nname = "bus0"\nport = "/dev/ttyUSB0"\n'
        '[[sources.stations]]\ndevice_id = "forest-01"\nunit = 1\n'
    )
    code = (
        "import sys; from edge.agent import Agent; from edge.config import load_config; "
        f"Agent(load_config({str(cfg)!r})); "
        "print(sorted(m for m in ('momonga', 'pynmea2', 'pymodbus', 'serial') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "['serial']"
