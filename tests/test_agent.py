"""The gateway agent as a process: status on connect, last will on a crash, clean exit on SIGTERM."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid

import msgspec
import pytest

from citylab.pipeline import Proc
from citylab.stack import identity, mqtt_client
from cityos import wire
from firmware_sim.forest.sim import ForestStationSim, StationSpec

pytestmark = pytest.mark.timeout(90)


class StatusWatch:
    def __init__(self, info, gateway_id: str) -> None:
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.c = mqtt_client(info, "dev.tools")
        self.c.on_message = self._on
        self.c.on_connect = lambda cl, *_: cl.subscribe(wire.status_topic(gateway_id), qos=1)
        self.c.connect(info.mqtt_host, info.mqtt_port)
        self.c.loop_start()

    def _on(self, _c, _u, msg) -> None:
        with self.lock:
            self.seen.append(json.loads(msg.payload))

    def last(self) -> dict | None:
        with self.lock:
            return self.seen[-1] if self.seen else None

    def wait(self, pred, timeout: float = 30) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.last()
            if s and pred(s):
                return s
            time.sleep(0.05)
        raise AssertionError(f"no matching status; last: {self.last()}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _config(tmp_path, info, gw: str, port) -> str:
    p = tmp_path / "gateway.toml"
    ident = identity(info, gw)
    p.write_text(
        f"""
[gateway]
id = "{gw}"
[mqtt]
host = "{info.mqtt_host}"
port = {info.mqtt_port}
ca_file = "{info.ca_file}"
cert_file = "{ident.cert_file}"
key_file = "{ident.key_file}"
keepalive_s = 5
status_interval_s = 1.0
[outbox]
path = "{tmp_path / 'outbox.db'}"
[[sources]]
type = "forest_station"
name = "bus0"
port = "{port}"
[[sources.stations]]
device_id = "forest-01"
unit = 1
"""
    )
    return str(p)


def test_status_online_then_last_will_on_sigkill_then_clean_exit_on_sigterm(stack, tmp_path):
    info = stack.info()
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    watch = StatusWatch(info, gw)
    sim = ForestStationSim(
        [StationSpec("forest-01", 1, sample_interval_ds=5)], link_path=tmp_path / "tty0",
        ground_truth=tmp_path / "gt.jsonl",
    ).start()
    cfg = _config(tmp_path, info, gw, tmp_path / "tty0")
    agent = Proc("agent", [sys.executable, "-m", "cityos_cli", "gateway", "run", "--config", cfg], tmp_path / "a.log")
    try:
        agent.start()
        online = watch.wait(lambda s: s["state"] == "online" and s["counters"].get("bus0_readings", 0) >= 1)
        st = msgspec.convert(online, wire.GatewayStatus)
        assert st.agent_version and st.config_hash and st.backlog_depth is not None
        assert st.counters["bus0_clock_syncs"] >= 1

        agent.kill()  # a crash: no DISCONNECT, the broker publishes the last will after the keepalive lapses
        offline = watch.wait(lambda s: s["state"] == "offline", 30)
        assert offline["boot_id"] == online["boot_id"]

        agent.start()
        again = watch.wait(lambda s: s["state"] == "online" and s["boot_id"] != online["boot_id"])
        assert again["config_hash"] == online["config_hash"]
        assert agent.stop(timeout=20) == 0  # SIGTERM: clean exit
        final = watch.wait(lambda s: s["state"] == "offline")
        assert final["boot_id"] == again["boot_id"]
        assert "Traceback" not in agent.tail(200)
    finally:
        agent.kill()
        sim.stop()
        watch.close()
