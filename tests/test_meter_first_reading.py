"""A freshly powered-on meter gateway's first live reading is in InfluxDB within one poll interval (issue 12, item 9):
a meter with no half-hour value yet (its fixed-time register answers year 65535) must not hold back the live
power reading until the next :00/:30. Real agent process, Wi-SUN module emulator on a pty, Mosquitto (mutual TLS),
the ingest and InfluxDB."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from helpers import influx_query
from ingest_helpers import ingest_config, running_ingest

from citylab.pipeline import Proc, gateway_config, write_gateway_config
from citylab.stack import Stack
from cityos.simclock import ScaledClock
from firmware_sim.meter.sim import MeterSpec, WiSunModuleSim

#: 02:00 JST; at 60 simulated seconds per real second the meter's first :00/:30 comes 30 real seconds later.
SIM_START = 1795539600.0
RATE = 60.0
SLOT_MS = 1_800_000
POLL_S = 15.0


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_a_fresh_meter_gateways_first_live_reading_is_stored_within_one_poll(
    stack: Stack, influx_db: str, tmp_path: Path
) -> None:
    info = stack.info()
    clock = ScaledClock(sim_start=SIM_START, real_anchor=time.time(), rate=RATE)
    spec = MeterSpec(device_id="hh-0901", seed=5)
    sim = WiSunModuleSim(spec, clock=clock, truth_path=tmp_path / "truth.jsonl", fresh=True)
    sim.start()
    source = {
        "type": "smart_meter", "name": "meter-hh-0901", "port": sim.port, "device_id": spec.device_id,
        "rbid_file": _secret(tmp_path / "broute.id", spec.rbid),
        "password_file": _secret(tmp_path / "broute.password", spec.password),
        "poll_interval_s": POLL_S, "recv_timeout_s": 0.5, "xmit_interval_s": 0.01, "join_retries": 1,
    }
    gw = "gw-meter-fresh"
    cfg = gateway_config(info, gw, tmp_path / "outbox.db", [source],
                         clock={"sim_start": clock.sim_start, "real_anchor": clock.real_anchor, "rate": RATE},
                         mqtt={"linger_s": 0})
    write_gateway_config(tmp_path / "gateway.toml", cfg)
    agent = Proc("agent", [sys.executable, "-m", "cityos_cli", "gateway", "run", "--config",
                           str(tmp_path / "gateway.toml")], tmp_path / "agent.log")
    first_slot_ms = int(SIM_START * 1000) + SLOT_MS
    with running_ingest(ingest_config(info, tmp_path, influx_db)):
        try:
            powered_on = time.monotonic()
            agent.start()
            q = f"SELECT \"power_w\" FROM \"energy\" WHERE \"device\" = '{spec.device_id}'"
            first = None
            while time.monotonic() - powered_on < POLL_S + 5:
                series = influx_query(info, influx_db, q)
                if series:
                    first = series[0]["values"][0]
                    break
                time.sleep(0.2)
            stored_after = time.monotonic() - powered_on
            assert first is not None, f"no live reading in InfluxDB {POLL_S + 5:.0f} s after power-on:\n{agent.tail()}"
            assert stored_after <= POLL_S, f"first live reading stored {stored_after:.1f} s after power-on"
            assert first[0] < first_slot_ms, "the first reading came after the meter's first :00/:30"
            assert first[1] is not None and first[1] >= 0
        finally:
            agent.stop()
            sim.stop()
    assert "Traceback" not in agent.tail(200)
