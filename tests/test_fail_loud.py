"""Fail loud (issue 12, item 6): a thread of the agent that dies ends the process non-zero with one line naming the
thread, the cause and the settings, so systemd restarts it; a bad outbox path is a one-line config error at
start (exit 2), never a traceback; no message repeats a secret of the config."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import SecretStr

from cityos.config import ConfigError, dump_toml
from edge.agent import Agent
from edge.config import parse_config
from edge.sources.base import SourceConfig, register

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(120)


# --- a stand-in source whose behaviour a test chooses -----------------------------------------------------------


class ScriptedConfig(SourceConfig):
    type: Literal["test_scripted"]
    #: "run" (emit until stopped), "crash" (raise an Exception each run), "exit" (raise SystemExit: escapes the
    #: supervisor's except Exception), "return" (return at once while it should run)
    behaviour: str = "run"
    password: SecretStr | None = None


class Scripted:
    def __init__(self, cfg: ScriptedConfig) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.runs = 0

    def run(self, ctx: Any, stop: threading.Event) -> None:
        from cityos.wire import Reading

        self.runs += 1
        how = self.cfg.behaviour
        if how == "crash":
            raise RuntimeError("device said no")
        if how == "exit":
            pw = self.cfg.password.get_secret_value() if self.cfg.password else ""
            raise SystemExit(f"login refused for password {pw}\nsecond line")
        if how == "return":
            return
        i = 0
        while not stop.wait(0.01):
            i += 1
            ctx.emit(Reading(device_id="dev-1", kind="forest_station", ts=1_790_000_000_000 + i, values={"x": 1.0}))

    def health(self) -> dict[str, float]:
        return {"runs": float(self.runs)}


register("test_scripted", ScriptedConfig, Scripted)


def _cfg(tmp_path: Path, *sources: dict[str, Any], outbox: str | None = None) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-loud-01"},
        # no broker on port 1: the uplink retries quietly (plaintext is allowed to loopback only)
        "mqtt": {"host": "127.0.0.1", "port": 1, "tls": False, "backoff_max_s": 1.0},
        "outbox": {"path": outbox or str(tmp_path / "data" / "outbox.db")},
        "health": {"interval_s": 1},
        "sources": list(sources) or [{"type": "test_scripted", "name": "src0"}],
    }


def _forest(tmp_path: Path) -> dict[str, Any]:
    """A real source type, for configs a subprocess runs (it does not know the test's source type)."""
    return {"type": "forest_station", "name": "bus0", "port": str(tmp_path / "no-tty"),
            "stations": [{"device_id": "forest-01", "unit": 1}]}


def _run_wait(agent: Agent, timeout: float = 20) -> int:
    """agent.wait() in a thread (it is the main loop), with a deadline."""
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(agent.wait()), daemon=True)
    agent.start()
    t.start()
    t.join(timeout)
    assert out, "the agent did not stop"
    return out[0]


# --- threads that die -------------------------------------------------------------------------------------------


def test_a_dying_uplink_ends_the_agent_with_status_1_and_one_line(tmp_path, caplog):
    agent = Agent(parse_config(_cfg(tmp_path)))

    def dies(stop: threading.Event) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/etc/cityos/ca.pem")

    agent.uplink.run = dies  # type: ignore[method-assign]
    started = time.monotonic()
    assert _run_wait(agent) == 1
    assert time.monotonic() - started < 15
    assert agent.failure == (
        "thread uplink died: FileNotFoundError: [Errno 2] No such file or directory: '/etc/cityos/ca.pem' "
        "(settings: [mqtt]); exiting with status 1"
    )
    critical = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert [r.getMessage() for r in critical] == [agent.failure]
    assert all(not t.is_alive() for t in agent._threads)  # shut down cleanly


def test_a_config_error_in_a_thread_is_told_as_it_is(tmp_path):
    agent = Agent(parse_config(_cfg(tmp_path)))

    def dies(stop: threading.Event) -> None:
        raise ConfigError("mqtt.key_file: /etc/cityos/gw.key is readable or writable by group/others")

    agent.uplink.run = dies  # type: ignore[method-assign]
    assert _run_wait(agent) == 1
    assert agent.failure == (
        "thread uplink died: mqtt.key_file: /etc/cityos/gw.key is readable or writable by group/others; "
        "exiting with status 1"
    )


def test_a_dying_health_thread_ends_the_agent(tmp_path):
    agent = Agent(parse_config(_cfg(tmp_path)))

    def broken() -> dict[str, float]:
        raise KeyError("uplink_connected")

    agent.gateway_counters = broken  # type: ignore[method-assign]
    assert _run_wait(agent) == 1
    assert agent.failure is not None
    assert agent.failure.startswith("thread health died: KeyError: 'uplink_connected' (settings: [health]")


def test_a_source_crash_is_restarted_but_a_dying_supervisor_ends_the_agent(tmp_path, monkeypatch):
    import edge.agent

    monkeypatch.setattr(edge.agent, "_SOURCE_RESTART_S", 0.2)
    agent = Agent(parse_config(_cfg(
        tmp_path,
        {"type": "test_scripted", "name": "crashy", "behaviour": "crash"},
        {"type": "test_scripted", "name": "quitter", "behaviour": "return"},
        {"type": "test_scripted", "name": "fine"},
    )))
    agent.start()
    try:
        deadline = time.monotonic() + 10
        while agent.source_restarts["crashy"] < 3 or agent.source_restarts["quitter"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert agent.failure is None and not agent.stop.is_set()  # a source's crash is its supervisor's business
        assert agent.status_fields()["counters"]["source_restarts"] >= 6
    finally:
        agent.shutdown()

    agent = Agent(parse_config(_cfg(
        tmp_path,
        {"type": "test_scripted", "name": "fine"},
        {"type": "test_scripted", "name": "meter0", "behaviour": "exit", "password": "hunter2-B-route"},
    )))
    assert _run_wait(agent) == 1
    assert agent.failure == (
        "thread source-meter0 died: SystemExit: login refused for password *** second line "
        "(settings: [[sources]] name = 'meter0'); exiting with status 1"
    )


def _cli(config: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *extra, "-m", "cityos_cli", "gateway", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def test_the_process_exits_1_with_one_line_when_its_uplink_dies(tmp_path):
    """As systemd sees it: `cityos gateway run` ends, status 1, one line on stderr naming the cause."""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(dump_toml(_cfg(tmp_path, _forest(tmp_path))))
    code = (
        "import sys, ssl, edge.uplink\n"
        "def run(self, stop):\n"
        "    raise ssl.SSLError(185090050, '[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found')\n"
        "edge.uplink.Uplink.run = run\n"
        "from cityos_cli.cli import main\n"
        f"sys.exit(main(['gateway', 'run', '--config', {str(cfg)!r}]))\n"
    )
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - started < 30
    assert "Traceback" not in r.stderr
    died = [line for line in r.stderr.splitlines() if "died" in line]
    assert len(died) == 1
    assert "CRITICAL" in died[0] and "thread uplink died: SSLError:" in died[0]
    assert "NO_CERTIFICATE_OR_CRL_FOUND" in died[0] and "(settings: [mqtt])" in died[0]


# --- errors at start --------------------------------------------------------------------------------------------


def _not_sqlite(tmp_path: Path) -> str:
    p = tmp_path / "junk.db"
    p.write_bytes(b"this is no database\n" * 100)
    return str(p)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (lambda tmp: "/proc/nope/outbox.db", "outbox.path: cannot create the directory /proc/nope: "),
        (lambda tmp: str(tmp), "is a directory, not a database file"),
        (_not_sqlite, "as an SQLite database: file is not a database"),
        (lambda tmp: str(tmp / "file" / "outbox.db"), "a file of that name exists"),
    ],
    ids=["under-proc", "a-directory", "not-sqlite", "under-a-file"],
)
def test_an_outbox_path_that_cannot_work_is_a_one_line_config_error(tmp_path, path, expected):
    (tmp_path / "file").write_text("")
    outbox = path(tmp_path)
    with pytest.raises(ConfigError) as ei:
        Agent(parse_config(_cfg(tmp_path, outbox=outbox)))
    assert str(ei.value).startswith("outbox.path: ") and expected in str(ei.value)
    assert "\n" not in str(ei.value)

    cfg = tmp_path / "gateway.toml"
    cfg.write_text(dump_toml(_cfg(tmp_path, _forest(tmp_path), outbox=outbox)))
    r = _cli(cfg)
    assert r.returncode == 2
    assert r.stderr.strip() == str(ei.value)  # one line, no traceback


def test_an_outbox_on_a_read_only_filesystem_is_a_config_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        with pytest.raises(ConfigError, match=rf"^outbox\.path: the directory {ro} is a read-only filesystem"):
            Agent(parse_config(_cfg(tmp_path, outbox=str(ro / "outbox.db"))))
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_a_config_error_from_the_uplink_passes_through_untouched(tmp_path, monkeypatch):
    """A TLS file the uplink cannot load is its ConfigError, naming the setting: the agent adds nothing to it,
    and closes the outbox it had opened."""
    import edge.agent

    opened: list[Any] = []

    class Refusing:
        def __init__(self, _gw: str, outbox: Any, *_a: Any, **_k: Any) -> None:
            opened.append(outbox)
            raise ConfigError("mqtt.ca_file: /etc/cityos/ca.pem does not exist")

    monkeypatch.setattr(edge.agent, "Uplink", Refusing)
    with pytest.raises(ConfigError) as ei:
        Agent(parse_config(_cfg(tmp_path)))
    assert str(ei.value) == "mqtt.ca_file: /etc/cityos/ca.pem does not exist"
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].max_id()


def test_a_crash_line_never_shows_a_secret_a_source_read_from_a_file(tmp_path):
    """The meter's B-route ID and password are files, not config values: the agent still blanks them (and the
    ID's last eight characters, which a scan shows) out of the one line it logs when a thread dies."""
    rbid, password = "0123456789ABCDEF0123456789ABCDEF", "Pw0rdSecret9"
    files = {}
    for name, text in (("rbid_file", rbid), ("password_file", password)):
        path = tmp_path / name
        path.write_text(text + "\n")
        path.chmod(0o600)
        files[name] = str(path)
    meter = {"type": "smart_meter", "name": "meter0", "port": str(tmp_path / "no-tty"), "device_id": "hh-0001",
             **files}
    agent = Agent(parse_config(_cfg(tmp_path, meter)))
    try:
        agent._died("uplink", f"ValueError: join refused for {rbid} ({rbid[-8:]}) with {password}")
        assert agent.failure is not None
        assert rbid[-8:] not in agent.failure and password not in agent.failure
        assert agent.failure.count("***") == 3
    finally:
        agent.shutdown()
