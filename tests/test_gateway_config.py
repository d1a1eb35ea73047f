"""What a field technician sees when a gateway config is wrong: the field and the problem, nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cityos.config import ConfigError, config_hash, read_toml
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
    # A config that parses gets the whole checklist (its serial port does not exist on this machine: exit 1).
    assert ok.returncode == 1 and "✓ config:" in ok.stdout and ok.stderr == "", ok.stderr


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
path = "{outbox}"

[[sources]]
type = "smart_meter"
name = "meter0"
port = "/dev/ttyWISUN0"
device_id = "hh-0001"
rbid_file = "{rbid_file}"
password_file = "{password_file}"
"""

RBID, PASSWORD = "0000003900000000000000000000ABCD", "XXXXXXXXXXXX"


def _meter(
    tmp_path: Path, rbid: str = RBID, password: str = PASSWORD, *, password_mode: int = 0o600
) -> tuple[Path, Path, Path]:
    """A meter gateway's config whose B-route credentials are files (0600; the password's ``password_mode``):
    (config, rbid file, password file)."""
    files = []
    for name, secret, mode in (("broute-hh-0001.id", rbid, 0o600),
                               ("broute-hh-0001.password", password, password_mode)):  # fmt: skip
        f = tmp_path / name
        f.write_text(f"{secret}\n")
        f.chmod(mode)
        files.append(f)
    text = METER.format(outbox=tmp_path / "outbox.db", rbid_file=files[0], password_file=files[1])
    return _write(tmp_path, text), files[0], files[1]


def test_a_meter_config_holds_paths_not_secrets(tmp_path):
    p, rbid_file, password_file = _meter(tmp_path)
    cfg = load_config(p)
    assert (cfg.sources[0].rbid_file, cfg.sources[0].password_file) == (rbid_file, password_file)
    creds = cfg.sources[0].credentials()
    assert (creds.rbid.get_secret_value(), creds.password.get_secret_value()) == (RBID, PASSWORD)


def test_the_config_hash_input_holds_no_secret(tmp_path):
    """The agent reports config_hash(read_toml(config)) to the fleet view: its input (the raw TOML) holds the
    files' paths only, so a re-issued password changes nothing in it."""
    p, rbid_file, password_file = _meter(tmp_path)
    assert load_config(p).sources[0].type == "smart_meter"  # a whole meter config, without a secret in it
    raw = read_toml(p)
    blob = json.dumps(raw, sort_keys=True, default=str, ensure_ascii=False)  # what config_hash hashes
    assert RBID not in blob and RBID[-8:] not in blob and PASSWORD not in blob
    assert str(rbid_file) in blob and str(password_file) in blob
    before = config_hash(raw)
    password_file.write_text("REISSUED1234\n")
    assert config_hash(read_toml(p)) == before


@pytest.mark.parametrize(
    ("edit", "secret", "setting"),
    [
        # a password typed without quotes: pydantic's own error carries the number as its input
        (("[mqtt]", "[mqtt]\npassword = 98765432"), "98765432", "mqtt.password"),
        # the meter's secrets written into the config as before: unknown keys now, and still never shown
        (("password_file =", "password = 98765432\npassword_file ="), "98765432", "sources.0.password"),
        (("password_file =", 'password = "hunter2 with spaces"\npassword_file ='), "hunter2", "sources.0.password"),
        (("rbid_file =", "rbid = 39000000\nrbid_file ="), "39000000", "sources.0.rbid"),
        (("rbid_file =", 'rbid = "00000039000000000000ABCD"\nrbid_file ='), "39000000", "sources.0.rbid"),
    ],
)
def test_a_mistyped_secret_is_named_never_echoed(tmp_path, edit, secret, setting):
    p, _, _ = _meter(tmp_path)
    p.write_text(p.read_text().replace(*edit, 1))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert setting in str(ei.value)
    assert secret not in str(ei.value)
    r = _cli_check(p)
    assert r.returncode == 2 and setting in r.stderr
    assert secret not in r.stderr + r.stdout and "Traceback" not in r.stderr


def _cli_run(path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "cityos_cli", "gateway", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    return r, time.monotonic() - t0


@pytest.mark.parametrize(
    ("setting", "kw", "problem"),
    [
        ("password_file", {"password_mode": 0o644}, "(mode 0644); run `chmod 600"),
        ("password_file", {"password": "hunter2 with spaces"}, "does not hold a B-route password"),
        ("rbid_file", {"rbid": RBID[:24]}, "does not hold a B-route ID"),
        ("rbid_file", {"rbid": f"{RBID}\n{RBID}"}, "must hold the secret on one line"),
    ],
)
def test_a_bad_secret_file_stops_the_agent_at_start_naming_it_never_echoing_it(tmp_path, setting, kw, problem):
    """`cityos gateway run` reads the meter's credential files as it builds the source: a bad one is exit 2 with
    one line naming the setting and the file (systemd's journal shows it), before any thread runs."""
    p, rbid_file, password_file = _meter(tmp_path, **kw)
    r, took = _cli_run(p)
    assert r.returncode == 2, r.stderr
    assert took < 20
    lines = r.stderr.strip().splitlines()
    path = password_file if setting == "password_file" else rbid_file
    assert len(lines) == 1 and lines[0].startswith(f"sources[meter0].{setting}: {path} "), r.stderr
    assert problem in lines[0]
    for secret in (kw.get("password", PASSWORD), kw.get("rbid", RBID), RBID[-8:], "hunter2"):
        assert secret not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_a_missing_secret_file_stops_the_agent_at_start(tmp_path):
    p, rbid_file, _ = _meter(tmp_path)
    rbid_file.unlink()
    r, took = _cli_run(p)
    assert r.returncode == 2 and took < 20
    assert r.stderr.strip() == f"sources[meter0].rbid_file: {rbid_file} does not exist"


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
