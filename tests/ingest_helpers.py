"""Run the ingest inside a test process (a thread, stopped through its SIGTERM path); shared by ingest tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from citylab.pipeline import ingest_config as stack_ingest_config
from citylab.stack import StackInfo, mqtt_client
from cityos import wire
from ingest.config import IngestConfig
from ingest.mqtt_in import discard_session
from ingest.service import IngestService

REPO = Path(__file__).resolve().parent.parent


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_ingest_process(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m ingest.service`` as systemd runs it, in its own process group (killpg takes its workers)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ingest.service", "--config", str(config_path)],
            cwd=REPO,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def uid() -> str:
    return uuid.uuid4().hex[:8]


def ingest_config(
    info: StackInfo, tmp_path: Path, db: str, name: str = "ingest", **sections: Any
) -> IngestConfig:
    return stack_ingest_config(
        info,
        tmp_path / f"data-{name}",
        client_id=f"test-{name}-{uid()}",
        db=db,
        mqtt={"session_expiry_s": 600, "reconnect_max_s": 2, **sections.get("mqtt", {})},
        influx=sections.get("influx"),
        ingest={"log_every_s": 5, **sections.get("ingest", {})},
    )


@contextlib.contextmanager
def running_ingest(cfg: IngestConfig, *, discard: bool = True) -> Iterator[IngestService]:
    """The ingest in a thread of this process; stopped cleanly (SIGTERM path) at the end."""
    stop = threading.Event()
    svc = IngestService(cfg, stop)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            svc.run()
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    t = threading.Thread(target=target, name=f"ingest-{cfg.mqtt.client_id}", daemon=True)
    t.start()
    try:
        wait_for(lambda: svc.health.subscribed or errors, 30, "ingest to subscribe")
        yield svc
    finally:
        stop.set()
        t.join(60)
        assert not t.is_alive(), "ingest did not stop"
        if discard:
            discard_session(cfg.mqtt)
    assert not errors, errors


def retained_statuses(info: StackInfo) -> list[tuple[str, bytes]]:
    """Retained status messages already on the (shared) broker, e.g. left by the edge tests: the ingest will
    receive them too when it subscribes."""
    got: list[tuple[str, bytes]] = []
    done = threading.Event()
    c = mqtt_client(info, "dev.tools", client_id=f"probe-{uid()}")
    c.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload))) if m.retain else None
    c.on_subscribe = lambda *_a: done.set()
    c.connect(info.mqtt_host, info.mqtt_port)
    c.loop_start()
    c.subscribe(wire.STATUS_FILTER, qos=1)
    done.wait(10)
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    return [(t, p) for t, p in got if p]
