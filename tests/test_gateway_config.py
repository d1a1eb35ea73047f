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
tls = false

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


# --- the config file itself, and secrets in messages ---------------------------------------------------------


def _cli_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityos_cli", "gateway", "check", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_a_directory_as_the_config_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a config file") as ei:
        load_config(tmp_path)
    assert str(tmp_path) in str(ei.value)
    r = _cli_check(tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == f"{tmp_path}: is a directory, not a config file"


def test_a_config_file_that_is_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "gateway.toml"
    p.write_bytes(GOOD.replace('name = "bus0"', 'name = "bus\xe9"').encode("latin-1"))
    line = GOOD.splitlines().index('name = "bus0"') + 1
    with pytest.raises(ConfigError, match=rf"not UTF-8 text \(line {line}\)"):
        load_config(p)
    r = _cli_check(p)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(p) in r.stderr


def test_an_unreadable_config_file_is_a_one_line_error(tmp_path):
    # /proc/self/mem: a file that exists and cannot be read (EIO), even by root
    with pytest.raises(ConfigError, match=r"^/proc/self/mem: cannot read the config file: Input/output error$"):
        load_config("/proc/self/mem")


def test_a_toml_syntax_error_names_the_file_and_the_line(tmp_path):
    p = _write(tmp_path, GOOD.replace("port = 1883", "port = 18 83"))
    line = GOOD.splitlines().index("port = 1883") + 1
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value).startswith(f"{p}: not valid TOML:")
    assert f"line {line}" in str(ei.value)


METER = """
[gateway]
id = "gw-meter-01"

[mqtt]
host = "127.0.0.1"
port = 1883
tls = false

[outbox]
path = "/tmp/outbox.db"

[[sources]]
type = "smart_meter"
name = "meter0"
port = "/dev/ttyWISUN0"
device_id = "hh-0001"
rbid = "0000003900000000000000000000ABCD"
password = "XXXXXXXXXXXX"
"""


@pytest.mark.parametrize(
    ("edit", "secret", "setting"),
    [
        # a password typed without quotes: pydantic's own error carries the number as its input
        (("[mqtt]", "[mqtt]\npassword = 98765432"), "98765432", "mqtt.password"),
        (('password = "XXXXXXXXXXXX"', "password = 98765432"), "98765432", "sources.0.password"),
        (('password = "XXXXXXXXXXXX"', 'password = "hunter2 with spaces"'), "hunter2", "sources.0.password"),
        (('rbid = "0000003900000000000000000000ABCD"', "rbid = 39000000"), "39000000", "sources.0.rbid"),
        (('rbid = "0000003900000000000000000000ABCD"', 'rbid = "00000039000000000000ABCD"'), "39000000",
         "sources.0.rbid"),
    ],
)
def test_a_mistyped_secret_is_named_never_echoed(tmp_path, edit, secret, setting):
    p = _write(tmp_path, METER.replace(*edit, 1))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert setting in str(ei.value)
    assert secret not in str(ei.value)
    r = _cli_check(p)
    assert r.returncode == 2 and setting in r.stderr
    assert secret not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_the_ingest_config_never_echoes_its_influx_password(tmp_path):
    from ingest.config import load_config as load_ingest_config

    p = tmp_path / "ingest.toml"
    p.write_text(f'[influx]\npassword = 98765432\n[ingest]\ndata_dir = "{tmp_path}"\n')
    with pytest.raises(ConfigError) as ei:
        load_ingest_config(p)
    assert "influx.password" in str(ei.value) and "98765432" not in str(ei.value)


def test_values_of_other_settings_are_still_shown(tmp_path):
    with pytest.raises(ConfigError, match=r"mqtt\.port: .*, got 70000"):
        load_config(_write(tmp_path, GOOD.replace("port = 1883", "port = 70000")))


def test_secret_fields_are_found_by_type_as_well_as_by_name():
    from pydantic import BaseModel, Field, SecretStr

    from cityos.config import validate

    class Login(BaseModel):
        user: str = "u"
        phrase: SecretStr | None = None
        hint: str | None = Field(default=None, repr=False)
        retries: int = 1

    class Conf(BaseModel):
        logins: list[Login] = []

    with pytest.raises(ConfigError) as ei:
        validate(Conf, {"logins": [{"phrase": 4242424242}, {"hint": 5151515151}, {"retries": "x7x7x7"}]}, "c.toml")
    text = str(ei.value)
    assert "logins.0.phrase: Input should be a valid string" in text and "4242424242" not in text
    assert "logins.1.hint: Input should be a valid string" in text and "5151515151" not in text
    assert "logins.2.retries" in text and "got 'x7x7x7'" in text  # not a secret: shown
