"""Gateway health travels as telemetry: the machine's own numbers and every source's device counters."""

from __future__ import annotations

import json
import socket
import time

from cityos.config import read_toml
from edge.agent import Agent
from edge.config import parse_config
from edge.health import HealthSampler, device_name, field_name
from edge.machine import Machine, release_free_memory
from firmware_sim.forest.sim import ForestStationSim, StationSpec


def test_sampler_reports_machine_and_per_source_counters(tmp_path):
    sampler = HealthSampler(tmp_path)
    sum(i * i for i in range(200_000))  # some CPU for the agent_cpu_pct window

    def broken() -> dict[str, float]:
        raise RuntimeError("bug in a source")

    gw, bus, meter = sampler.readings(
        {"backlog_depth": 12.0, "uplink_acked_readings": 3.0},
        [("Bus 0", "forest_station", lambda: {"crc_errors": 2, "Timeouts": 1.0}), ("meter", "smart_meter", broken)],
    )
    assert gw.kind == "gateway_health" and gw.device_id == "gateway"
    v = gw.values
    assert 5 < v["agent_rss_mb"] < 2000 and v["agent_cpu_pct"] >= 0 and 0 <= v["mem_used_pct"] <= 100
    assert v["disk_free_mb"] > 0 and v["backlog_depth"] == 12.0 and v["uplink_acked_readings"] == 3.0
    assert abs(gw.ts / 1000 - time.time()) < 5
    assert (bus.kind, bus.device_id, bus.tags) == ("source_health", "bus-0", {"family": "forest_station"})
    assert bus.values == {"crc_errors": 2.0, "timeouts": 1.0}
    assert meter.values == {"health_error": 1.0}  # a broken health() costs only its own numbers


def test_machine_numbers_agree_with_psutil(tmp_path):
    """edge/machine.py reads /proc itself (psutil costs the agent 0.8 MB); it must say what psutil says."""
    import psutil

    m = Machine(tmp_path)
    psutil.cpu_percent(None)
    me = psutil.Process()
    me.cpu_percent(None)
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:  # busy: both samplers see this process at ~100 % of one core
        pass
    agent, ps_agent = m.agent_cpu_pct(), me.cpu_percent(None)
    assert abs(agent - ps_agent) < 15 and agent > 50
    host, ps_host = m.cpu_pct(), psutil.cpu_percent(None) * psutil.cpu_count()
    assert abs(host - ps_host) < 25 and host >= 40
    assert m.cpu_count == psutil.cpu_count()
    assert abs(m.agent_rss_bytes() - me.memory_info().rss) < 2 * 2**20
    total, available = m.memory()
    vm = psutil.virtual_memory()
    assert total == vm.total and abs(available - vm.available) < 64 * 2**20
    assert abs(m.boot_time() - psutil.boot_time()) < 2
    free, pct = m.disk()
    du = psutil.disk_usage(str(tmp_path))
    assert abs(free - du.free) < 64 * 2**20 and abs(pct - du.percent) < 1


def test_temperature_prefers_the_soc_zone_and_is_absent_without_zones(tmp_path):
    for i, (kind, milli) in enumerate([("acpitz", "61000"), ("cpu-thermal", "48312"), ("gpu", "bad")]):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    assert Machine.temperature_c(str(tmp_path)) == 48.312  # the Pi's SoC, though another zone is hotter
    (tmp_path / "thermal_zone1" / "type").write_text("other\n")
    assert Machine.temperature_c(str(tmp_path)) == 61.0  # no known SoC zone: the hottest
    assert Machine.temperature_c(str(tmp_path / "none")) is None


def test_freed_heap_goes_back_to_the_kernel():
    """What a burst (a backlog drain, start-up) allocated and freed must not stay in the agent's resident memory:
    glibc alone keeps a fragmented heap resident; the agent trims it every minute."""
    blocks = [bytes(4000) for _ in range(20_000)]  # ~80 MB, freed below except every 32nd block
    keep = blocks[::32]
    del blocks
    before = Machine.agent_rss_bytes()
    release_free_memory()
    assert before - Machine.agent_rss_bytes() > 40 * 2**20
    assert len(keep) == 625


def test_names_become_valid_wire_ids():
    assert field_name("9lives-Count") == "c_9lives_count"
    assert device_name("--Meter #1--") == "meter--1"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_agent_writes_health_readings_to_the_outbox_while_offline(tmp_path):
    """With the broker unreachable the health readings wait in the outbox like data, so no gap appears later."""
    sim = ForestStationSim(
        [StationSpec("forest-01", 1, sample_interval_ds=5)], link_path=tmp_path / "tty0",
        ground_truth=tmp_path / "gt.jsonl",
    ).start()
    cfg_path = tmp_path / "gateway.toml"
    cfg_path.write_text(
        f"""
[gateway]
id = "gw-health"
[mqtt]
port = {_closed_port()}
[outbox]
path = "{tmp_path / 'outbox.db'}"
[health]
interval_s = 1
[[sources]]
type = "forest_station"
name = "bus0"
port = "{tmp_path / 'tty0'}"
[[sources.stations]]
device_id = "forest-01"
unit = 1
"""
    )
    agent = Agent(parse_config(read_toml(cfg_path)))
    agent.start()
    try:
        deadline = time.monotonic() + 30
        bodies: list[dict] = []
        while time.monotonic() < deadline:
            bodies = [json.loads(r.body) for r in agent.outbox.fetch(0, 10_000)]
            bus = [b for b in bodies if b["kind"] == "source_health" and b["values"].get("readings", 0) >= 2]
            if bus and any(b["kind"] == "gateway_health" for b in bodies):
                break
            time.sleep(0.2)
        gw = [b for b in bodies if b["kind"] == "gateway_health"]
        bus = [b for b in bodies if b["kind"] == "source_health"]
        assert gw and bus, bodies[-5:]
        assert gw[-1]["values"]["backlog_depth"] > 0  # readings are waiting for the broker
        assert gw[-1]["values"]["uplink_connected"] == 0.0 and gw[-1]["values"]["uplink_connect_failures"] >= 1
        assert bus[-1]["device_id"] == "bus0" and bus[-1]["tags"] == {"family": "forest_station"}
        assert bus[-1]["values"]["readings"] >= 2 and "crc_errors" in bus[-1]["values"]
    finally:
        agent.shutdown()
        sim.stop()
