"""TLS files and secrets as a config names them: every problem is a one-line error naming the setting, found at
start (never a thread dying later), and never showing what is in the file."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cityos.config import ConfigError
from cityos.credentials import MqttLogin, TlsFiles, read_secret
from edge.config import parse_config
from fleet.pki import CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(d / "ca", "test CA")
    ca.issue_client("gw-1").write(d / "gw-1.crt", d / "gw-1.key")
    ca.issue_client("gw-2").write(d / "gw-2.crt", d / "gw-2.key")
    return {"ca": ca.ca_file, "crt": d / "gw-1.crt", "key": d / "gw-1.key", "other_key": d / "gw-2.key"}


def _ctx(**files: Path | None) -> None:
    TlsFiles(**files).client_context("mqtt")


def test_good_files_load(pki) -> None:
    _ctx(ca_file=pki["ca"], cert_file=pki["crt"], key_file=pki["key"])


def test_the_named_ca_is_the_only_one_trusted(pki) -> None:
    """With ``ca_file`` the system's public CAs are not loaded: they must not vouch for the broker (and each would
    cost the gateway's memory); without it, the system's trust store is used."""
    ctx = TlsFiles(ca_file=pki["ca"], cert_file=pki["crt"], key_file=pki["key"]).client_context("mqtt")
    (only,) = ctx.get_ca_certs()
    assert (("commonName", "test CA"),) in only["subject"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    system = TlsFiles().client_context("mqtt")
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname
    assert system.minimum_version == ssl.TLSVersion.TLSv1_2


def test_each_bad_file_is_named(pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases = [
        (dict(ca_file=tmp_path / "missing.crt"), r"^mqtt\.ca_file: .*missing\.crt does not exist$"),
        (dict(ca_file=tmp_path), r"^mqtt\.ca_file: .* is not a regular file$"),
        (dict(ca_file=garbage), r"^mqtt\.ca_file: .* holds no usable PEM CA certificate"),
        (dict(ca_file=pki["ca"], cert_file=pki["crt"]), r"^mqtt\.key_file: required with mqtt\.cert_file"),
        (dict(ca_file=pki["ca"], cert_file=pki["crt"], key_file=pki["other_key"]),
         r"^mqtt\.key_file: .*gw-2\.key is not the key of mqtt\.cert_file"),
        (dict(ca_file=pki["ca"], cert_file=garbage, key_file=pki["key"]), r"^mqtt\.cert_file/key_file: cannot load"),
    ]
    for files, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            _ctx(**files)


def test_a_key_others_can_read_is_refused_with_the_fix(pki, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki["key"].read_bytes())
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mqtt\.key_file: .*mode 0644.*chmod 600") as ei:
        _ctx(ca_file=pki["ca"], cert_file=pki["crt"], key_file=loose)
    assert "PRIVATE KEY" not in str(ei.value)


def test_secret_files_are_read_but_never_shown(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("s3cr3t-value\n")
    f.chmod(0o600)
    assert read_secret(f, "influx.password_file") == "s3cr3t-value"
    f.chmod(0o640)
    with pytest.raises(ConfigError, match=r"influx\.password_file: .*mode 0640") as ei:
        read_secret(f, "influx.password_file")
    assert "s3cr3t" not in str(ei.value)
    f.write_text("two\nlines\n")
    f.chmod(0o600)
    with pytest.raises(ConfigError, match="one line") as ei:
        read_secret(f, "influx.password_file")
    assert "two" not in str(ei.value)


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ({"host": "mqtt.city.example", "tls": False, "port": 1883}, "would leave this machine"),
        ({"host": "127.0.0.1", "tls": False, "port": 8883}, "8883 is MQTT over TLS"),
        ({"host": "mqtt.city.example", "port": 1883}, "1883 is plaintext MQTT"),
        ({"host": "mqtt.city.example", "cert_file": "/x.crt"}, "key_file: required with cert_file"),
        ({"host": "mqtt.city.example", "password_file": "/pw"}, "username: required with password_file"),
    ],
)
def test_incoherent_transport_is_a_config_error(mqtt: dict, message: str) -> None:
    cfg = {"gateway": {"id": "gw-1"}, "mqtt": mqtt, "outbox": {"path": "/tmp/ob.db"},
           "sources": [{"type": "forest_station", "name": "bus0", "port": "/dev/ttyUSB0",
                        "stations": [{"device_id": "forest-01", "unit": 1}]}]}
    with pytest.raises(ConfigError, match=message) as ei:
        parse_config(cfg)
    assert str(ei.value).splitlines()[1:] == [line for line in str(ei.value).splitlines()[1:] if "mqtt" in line]
    cfg["mqtt"] = {"host": "mqtt.city.example"}
    parse_config(cfg)  # positive control: the same config with a coherent [mqtt] loads


def test_plaintext_to_loopback_is_allowed() -> None:
    MqttLogin(host="127.0.0.1", port=1883, tls=False)


def test_an_agent_with_a_missing_ca_file_exits_at_once_naming_it(pki, tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "gw-1"
[mqtt]
host = "127.0.0.1"
port = 8883
ca_file = "{tmp_path / 'no-such-ca.crt'}"
cert_file = "{pki['crt']}"
key_file = "{pki['key']}"
[outbox]
path = "{tmp_path / 'outbox.db'}"
[[sources]]
type = "forest_station"
name = "bus0"
port = "{tmp_path / 'tty'}"
[[sources.stations]]
device_id = "forest-01"
unit = 1
""")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "cityos_cli", "gateway", "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 20
    assert res.returncode != 0
    assert "mqtt.ca_file" in res.stderr and "no-such-ca.crt does not exist" in res.stderr
    assert "Traceback" not in res.stderr
