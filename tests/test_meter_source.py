"""The smart-meter source (momonga, unmodified) against the Wi-SUN module emulator, over a real pseudo-terminal.

The emulator's ground truth says which fixed-time (:00/:30) values the gateway must emit; every test ends by
checking that the emitted slots are exactly the truth's — no gap, no duplicate, equal values — whatever fault was
injected in between. A scaled clock (one simulated hour per real second) makes half-hour boundaries pass every
0.5 s. The only test double is the outbox.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from cityos.simclock import ScaledClock
from cityos.wire import Reading, measurement_for
from edge import clock as edge_clock
from edge.sources.base import registry
from edge.sources.meter import source as m
from firmware_sim.meter import sim as wm
from firmware_sim.meter.sim import MeterSpec, WiSunModuleSim

#: 2026-11-25 02:00 JST; a test would have to run 22 s to cross the meter's midnight.
SIM_START = 1795539600.0
SLOT_MS = 1_800_000


class Outbox:
    """In-memory stand-in for the durable outbox: readings and state, committed together."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state: dict[str, Any] = copy.deepcopy(state or {})
        self.readings: list[Reading] = []
        self._lock = threading.Lock()

    def emit(self, reading: Reading, state: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.readings.append(reading)
            if state is not None:
                self.state = copy.deepcopy(state)

    def fixed(self) -> list[Reading]:
        with self._lock:
            return [r for r in self.readings if "energy_fixed_kwh" in r.values]

    def live(self) -> list[Reading]:
        with self._lock:
            return [r for r in self.readings if "power_w" in r.values]


_running: list[Running] = []


class Running:
    """A source running in its own thread, as the agent runs it (stopped at teardown even if the test failed:
    a stray source would reopen its old pty path, which the kernel hands to the next test's emulator)."""

    def __init__(self, source: m.SmartMeterSource, outbox: Outbox) -> None:
        _running.append(self)
        self.source = source
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(outbox, self.stop_event), daemon=True)
        self.thread.start()

    def health(self) -> dict[str, float]:
        return self.source.health()

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "run() did not return after stop was set"
        return self.source.health()


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def state_is(run: Running, code: int) -> Callable[[], bool]:
    return lambda: run.health()["session_state"] == code


def config(sim: WiSunModuleSim, **kw: Any) -> m.SmartMeterConfig:
    base: dict[str, Any] = {
        "type": "smart_meter",
        "name": "meter-hh-0001",
        "port": sim.port,
        "device_id": sim.spec.device_id,
        "district": "kamo",
        "rbid": sim.spec.rbid,
        "password": sim.spec.password,
        "poll_interval_s": 0.1,
        "recv_timeout_s": 0.3,
        "xmit_retries": 5,
        "xmit_timeout_s": 5,
        "xmit_interval_s": 0.01,
        "join_retries": 1,
        "reconnect_backoff_min_s": 0.3,
        "reconnect_backoff_max_s": 1.0,
        "auth_failure_threshold": 2,
        "auth_backoff_s": 3.0,
    }
    base.update(kw)
    return m.SmartMeterConfig.model_validate(base)


def assert_exact(fixed: list[Reading], sim: WiSunModuleSim) -> None:
    """The emitted fixed-time slots are consecutive half hours, each once, each equal to the meter's truth."""
    slots = [r.ts for r in fixed]
    assert slots, "no fixed-time reading"
    assert len(set(slots)) == len(slots), f"duplicate slots: {slots}"
    assert slots == sorted(slots), "slots out of order"
    gaps = [b - a for a, b in itertools.pairwise(slots) if b - a != SLOT_MS]
    assert not gaps, f"gaps in the emitted slots: {gaps}"
    truth = sim.truth_fixed()
    for r in fixed:
        assert r.values["energy_fixed_kwh"] == truth[r.ts], r.ts  # exact: the same decimal value


@pytest.fixture(autouse=True)
def _stop_sources() -> Iterator[None]:
    yield
    while _running:
        run = _running.pop()
        run.stop_event.set()
        run.thread.join(timeout=10)


@pytest.fixture
def clock() -> Iterator[ScaledClock]:
    c = ScaledClock(sim_start=SIM_START, real_anchor=time.time(), rate=3600)
    edge_clock.use_scaled(c)
    yield c
    edge_clock.use_scaled(None)


@pytest.fixture
def make_sim(clock: ScaledClock, tmp_path) -> Iterator[Callable[..., WiSunModuleSim]]:
    sims: list[WiSunModuleSim] = []

    def make(**kw: Any) -> WiSunModuleSim:
        spec = kw.pop("spec", MeterSpec(device_id="hh-0001", seed=11))
        sim = WiSunModuleSim(spec, clock=clock, truth_path=tmp_path / "truth.jsonl", **kw)
        sim.start()
        sims.append(sim)
        return sim

    yield make
    for s in sims:
        s.stop()


def test_readings_match_the_meter_and_secrets_stay_secret(make_sim, clock, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sim = make_sim()
    outbox = Outbox()
    cfg = config(sim)
    run = Running(m.SmartMeterSource(cfg), outbox)
    wait_for(lambda: len(outbox.fixed()) >= 4, "four fixed-time readings")
    assert run.health()["session_state"] == m.ONLINE
    health = run.stop()
    assert health["session_state"] == m.STOPPED
    assert health["sessions"] == 1 and health["rejoins"] == 0 and health["readings"] >= 4

    fixed = outbox.fixed()
    assert_exact(fixed, sim)
    assert outbox.state == {
        "v": 1,
        "last_slot_ms": fixed[-1].ts,
        "last_slot_kwh": fixed[-1].values["energy_fixed_kwh"],
    }
    assert all(not r.backfill for r in fixed)
    live = outbox.live()
    assert live and all(r.kind == "smart_meter" and r.tags == {"district": "kamo"} for r in live)
    assert measurement_for("smart_meter") == "energy"
    assert live[0].units == {"power_w": "W", "energy_kwh": "kWh", "energy_reverse_kwh": "kWh"}
    truth = sim.truth_fixed()
    for r in live:
        t = r.ts / 1000  # the tick the meter was in when asked: within a few ticks before the edge stamp
        assert r.values["power_w"] in {wm.household_power_w(sim.spec, t - 10 * k) for k in range(-1, 12)}
        before = max(v for s, v in truth.items() if s <= r.ts)
        after = [v for s, v in truth.items() if s > r.ts]
        assert before <= r.values["energy_kwh"] <= (after[0] if after else 1e12)
        assert r.values["energy_reverse_kwh"] == 0.0
    energies = [r.values["energy_kwh"] for r in live]
    assert energies == sorted(energies)

    # the B-route ID, its last 8 characters (the scan's PairID) and the password appear nowhere
    secrets = (sim.spec.rbid, sim.spec.rbid[-8:], sim.spec.password)
    text = caplog.text + repr(health) + repr(cfg) + cfg.model_dump_json() + repr(outbox.state)
    assert "Momonga" in caplog.text or "meter-hh-0001" in caplog.text  # the logs were captured at all
    for s in secrets:
        assert s not in text


def test_session_expiry_waits_for_reauthentication_and_momongas_rejoin(make_sim) -> None:
    sim = make_sim(reauth_delay_s=1.2)
    outbox = Outbox()
    run = Running(m.SmartMeterSource(config(sim)), outbox)
    wait_for(lambda: len(outbox.fixed()) >= 1, "a first fixed-time reading")
    sim.expire_session()  # the module re-authenticates by itself (EVENT 25)
    wait_for(state_is(run, m.SESSION_EXPIRED), "session_expired")
    wait_for(state_is(run, m.ONLINE), "online again")
    # nothing was sent into the expired session, but for at most the one poll in flight when EVENT 29 came
    assert sim.counters["send_refused"] <= 1
    n = len(outbox.fixed())
    sim.expire_session(reauth=False)  # re-authentication fails (EVENT 24): momonga runs SKJOIN itself
    wait_for(lambda: run.health()["session_expiries"] == 2, "second expiry")
    wait_for(lambda: run.health()["rejoins"] == 2 and run.health()["session_state"] == m.ONLINE, "rejoined")
    wait_for(lambda: len(outbox.fixed()) >= n + 2, "fixed-time readings after the rejoin")
    health = run.stop()
    assert health["join_failures"] == 1 and health["reopens"] == 0 and health["sessions"] == 1
    assert sim.counters["joins"] == 2 and sim.counters["reauths_ok"] == 1
    assert_exact(outbox.fixed(), sim)
    # the half hours that passed while the session was down came from the meter's history, marked as backfill
    assert health["recovered_slots"] >= 1
    assert sum(r.backfill for r in outbox.fixed()) == health["recovered_slots"]


def test_rate_limit_stops_sending_until_released(make_sim, clock) -> None:
    sim = make_sim()
    outbox = Outbox()
    run = Running(m.SmartMeterSource(config(sim)), outbox)
    wait_for(lambda: len(outbox.fixed()) >= 1, "a first fixed-time reading")
    sim.rate_limit()
    wait_for(state_is(run, m.RATE_LIMITED), "rate_limited")
    sends, slots = sim.counters["sends"] + sim.counters["send_refused"], len(sim.truth_fixed())
    wait_for(lambda: len(sim.truth_fixed()) >= slots + 3, "three half hours under the rate limit")
    assert sim.counters["sends"] + sim.counters["send_refused"] <= sends + 1  # at most one send was in flight
    assert run.health()["session_state"] == m.RATE_LIMITED
    sim.release_rate_limit()
    wait_for(state_is(run, m.ONLINE), "online after EVENT 33")
    # three boundaries passed under the limit after the last emitted slot: at least two came from the history
    wait_for(lambda: run.health()["recovered_slots"] >= 2, "the missed half hours recovered")
    health = run.stop()
    assert health["rate_limited"] == 1 and health["reopens"] == 0
    assert_exact(outbox.fixed(), sim)


def test_failed_joins_back_off_and_retry(make_sim) -> None:
    sim = make_sim()
    sim.fail_joins(1)
    outbox = Outbox()
    run = Running(m.SmartMeterSource(config(sim)), outbox)
    wait_for(state_is(run, m.JOIN_FAILED), "join_failed")
    assert run.health()["backoff_s"] > 0
    wait_for(state_is(run, m.ONLINE), "online after a failed join", timeout=30)
    wait_for(lambda: len(outbox.fixed()) >= 2, "fixed-time readings")
    health = run.stop()
    assert health["join_failures"] == 1 and health["auth_failures"] == 0 and health["sessions"] == 1
    assert sim.counters["joins"] == 2
    assert_exact(outbox.fixed(), sim)


def test_wrong_password_backs_off_long_and_resumes_without_gaps(make_sim) -> None:
    sim = make_sim(reauth_delay_s=0.1)
    outbox = Outbox()
    run = Running(m.SmartMeterSource(config(sim)), outbox)
    wait_for(lambda: len(outbox.fixed()) >= 1, "a first fixed-time reading")
    sim.set_meter_password("REISSUED9999")  # the household's password changed under the gateway
    sim.expire_session()
    wait_for(state_is(run, m.AUTH_FAILED), "auth_failed", timeout=30)
    health = run.health()
    assert health["auth_failures"] == 1 and health["backoff_s"] > 2
    failed_at = len(sim.join_times)
    sim.set_meter_password(sim.spec.password)  # e.g. the operator put the new password in the config
    wait_for(state_is(run, m.ONLINE), "online after the backoff", timeout=30)
    gap = sim.join_times[failed_at] - sim.join_times[failed_at - 1]
    assert gap >= 2.9, f"tried again after {gap:.1f} s: the meter is being hammered"
    wait_for(lambda: run.health()["recovered_slots"] >= 4, "the missed half hours recovered")
    health = run.stop()
    assert failed_at <= 3  # failed re-authentication, momonga's rejoin, one open: then the long wait
    assert_exact(outbox.fixed(), sim)


def test_garbled_lines_are_counted_and_change_nothing(make_sim) -> None:
    sim = make_sim(garble=0.2)
    outbox = Outbox()
    run = Running(m.SmartMeterSource(config(sim)), outbox)
    wait_for(lambda: len(outbox.fixed()) >= 5, "five fixed-time readings", timeout=30)
    wait_for(lambda: run.health()["garbled_lines"] >= 2, "garbled lines counted")
    health = run.stop()
    c = sim.counters
    assert health["garbled_lines"] <= c["junk_lines"] + c["corrupted_lines"]
    assert_exact(outbox.fixed(), sim)


def test_restart_with_saved_state_neither_reemits_nor_skips(make_sim) -> None:
    sim = make_sim()
    first = Outbox()
    run = Running(m.SmartMeterSource(config(sim)), first)
    wait_for(lambda: len(first.fixed()) >= 2, "two fixed-time readings")
    run.stop()
    slots = len(sim.truth_fixed())
    wait_for(lambda: len(sim.truth_fixed()) >= slots + 3, "three half hours with the agent down")
    second = Outbox(first.state)  # the agent restarts: the outbox hands the committed state back
    run = Running(m.SmartMeterSource(config(sim)), second)
    wait_for(
        lambda: any(not r.backfill for r in second.fixed()), "a live fixed-time reading after the restart"
    )
    health = run.stop()
    assert health["recovered_slots"] >= 3 and health["lost_slots"] == 0
    recovered = [r for r in second.fixed() if r.backfill]
    assert recovered and recovered[0].ts == first.fixed()[-1].ts + SLOT_MS
    assert_exact(first.fixed() + second.fixed(), sim)


def test_config_is_strict_and_never_echoes_secrets() -> None:
    assert registry()["smart_meter"].config_model is m.SmartMeterConfig
    good = {"type": "smart_meter", "name": "m", "port": "/dev/x", "device_id": "hh-0001",
            "rbid": "0123456789ABCDEF0123456789ABCDEF", "password": "ABCDEFGH1234"}  # fmt: skip
    with pytest.raises(ValidationError, match="extra"):
        m.SmartMeterConfig.model_validate({**good, "pasword": "x"})
    with pytest.raises(ValidationError) as err:
        m.SmartMeterConfig.model_validate({**good, "rbid": "SECRETSECRET"})
    assert "SECRETSECRET" not in str(err.value)
    with pytest.raises(ValidationError):
        m.SmartMeterConfig.model_validate({**good, "device_id": "Tanaka Household"})
    cfg = m.SmartMeterConfig.model_validate({**good, "rbid": "0123 4567 89AB CDEF 0123 4567 89AB CDEF"})
    assert cfg.rbid.get_secret_value() == good["rbid"]
    assert "ABCDEFGH1234" not in repr(cfg) and "0123456789ABCDEF" not in cfg.model_dump_json()
