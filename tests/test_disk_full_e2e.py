"""A full disk on a real gateway, end to end (issue 12, "Must show"): the outbox on a small real filesystem (tmpfs),
the broker stopped until it fills. After the broker returns, everything the outbox kept reaches InfluxDB exactly
while the disk is still full; what could not be stored is counted; after space returns, new readings flow again
without a restart. Real forest simulator, agent process, Mosquitto (mutual TLS), ingest and InfluxDB. Six stations
sampling every second (six readings a second) build the backlog and the losses quickly; the test takes about 20 s."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_disk_full import fill, small_fs  # noqa: F401  (the tmpfs fixture)

from citylab.pipeline import Pipeline
from citylab.stack import Stack
from edge.outbox import Outbox, free_bytes

pytestmark = pytest.mark.timeout(240)


def test_a_full_disk_costs_only_what_could_not_be_stored(own_stack: Stack, small_fs, tmp_path: Path) -> None:  # noqa: F811
    info = own_stack.info()
    fs = small_fs("6m")
    pipe = Pipeline(tmp_path / "run", info, gateways=1, stations=6, ingest_client_id=f"ingest-{tmp_path.name[-8:]}")
    gw = pipe.gateways[0]
    gw.outbox_dir = fs
    pipe.start()
    pipe.watch_status()
    # The status subscriber is back within a second of the broker: paho's default backoff (1, 2, 4, 8 s, ...)
    # would keep it away for up to twice the outage, and the status waits below with it.
    pipe._status_client.reconnect_delay_set(min_delay=0.1, max_delay=1.0)
    agent = pipe.agents[gw.gateway_id]
    try:
        pipe.wait_for(lambda: pipe.influx_count() > 0, 60, "the first readings in InfluxDB")
        own_stack.stop_mqtt()
        pipe.wait_for(lambda: Outbox.depth_of(gw.outbox) >= 30, 60, "a backlog while the broker is down")
        filler = fill(fs)
        pipe.wait_for(lambda: "no room for new readings" in agent.tail(100), 60, "the agent to notice the full disk")
        time.sleep(1.5)  # readings keep coming and cannot be stored (about 9, as 3 s at three readings a second)
        held = Outbox.depth_of(gw.outbox)
        assert held >= 30

        own_stack.start_mqtt()
        # Everything the outbox kept is sent and deleted while the disk is still full.
        pipe.wait_for(lambda: Outbox.depth_of(gw.outbox) == 0, 90, "the backlog to drain on a full disk")
        assert filler.exists()
        status = _status(pipe, gw.gateway_id, lambda c: c.get("outbox_disk_full") == 1)
        failed = status["counters"]["bus0_store_failed"]
        assert failed > 0

        # Space returns: new readings are stored and flow again, no restart.
        boot_id = status["boot_id"]
        filler.unlink()
        assert free_bytes(fs) > 0
        n = pipe.influx_count()
        pipe.wait_for(lambda: pipe.influx_count() > n + 10, 60, "new readings after space returned")
        final = _status(pipe, gw.gateway_id, lambda c: c.get("outbox_disk_full") == 0)
        assert final["boot_id"] == boot_id and final["counters"]["source_restarts"] == 0
        # The stations stop sampling (the ground truth is final); wait until InfluxDB holds all of it but what the
        # agent counted as not stored (Pipeline.settle waits 30 s of stillness for the rest of the truth, which
        # never comes here). Twice, more than a sample interval apart: no sample came after the freeze.
        pipe.freeze_devices()
        lost = final["counters"]["bus0_store_failed"]
        _settled(pipe, gw.outbox, lambda: pipe.influx_count() == len(pipe.ground_truth()) - lost)
        assert agent.alive and "Traceback" not in agent.tail(400)

        # Exactly: nothing extra, wrong or doubled; missing = what the agent counted as not stored.
        cmp = pipe.compare()
        assert not cmp.extra and not cmp.wrong and not cmp.doubled, cmp
        assert len(cmp.missing) == final["counters"]["bus0_store_failed"], (len(cmp.missing), final["counters"])
        assert cmp.stored >= held
    finally:
        pipe.stop()


def _settled(pipe: Pipeline, outbox: Path, cond, timeout: float = 60.0) -> None:
    """Until the outbox is empty and ``cond`` holds on two checks 1.2 s apart (or ``timeout``: the comparison after
    says what is missing)."""
    end = time.monotonic() + timeout
    since: float | None = None
    while time.monotonic() < end:
        if Outbox.depth_of(outbox) == 0 and cond():
            since = since or time.monotonic()
            if time.monotonic() - since >= 1.2:
                return
        else:
            since = None
        time.sleep(0.2)


def _status(pipe: Pipeline, gateway_id: str, cond, timeout: float = 30.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = pipe.status.get(gateway_id)
        if st and st.get("state") == "online" and cond(st.get("counters", {})):
            return st
        time.sleep(0.2)
    raise AssertionError(f"no matching status for {gateway_id}: {pipe.status.get(gateway_id)}")
