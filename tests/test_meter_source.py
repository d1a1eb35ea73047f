"""The smart-meter source (momonga, unmodified) against the Wi-SUN module emulator, over a real pseudo-terminal.

The emulator's ground truth says which fixed-time (:00/:30) values the gateway must emit; every test ends by
checking that the emitted slots are exactly the truth's — no gap, no duplicate, equal values — whatever fault was
injected in between. A scaled clock (one simulated hour per real second) makes half-hour boundaries pass every
0.5 s. The only test double is the outbox.
"""

from __future__ import annotations

import ast
import copy
import datetime as _dt
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import momonga
import pytest
from momonga import EchonetPropertyCode as EPC
from momonga.momonga_echonet_data import PARSER_MAP
from pydantic import ValidationError

from cityos.config import ConfigError
from cityos.simclock import ScaledClock
from cityos.wire import Reading, measurement_for
from edge import clock as edge_clock
from edge.sources.base import registry
from edge.sources.meter import core as mc
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


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    """A secret file as a technician installs it (one line, 0600 unless ``mode`` says otherwise)."""
    path.write_text(text)
    path.chmod(mode)
    return path


def credential_files(where: Path, rbid: str, password: str) -> dict[str, Path]:
    """The ``rbid_file`` / ``password_file`` settings of a source whose files hold ``rbid`` and ``password``."""
    return {"rbid_file": write_secret(where / "broute.id", f"{rbid}\n"),
            "password_file": write_secret(where / "broute.password", f"{password}\n")}  # fmt: skip


#: Where config() puts the credential files: the running test's own tmp_path (set by _secrets_in_tmp).
_secrets_dir: list[Path] = []


@pytest.fixture(autouse=True)
def _secrets_in_tmp(tmp_path: Path) -> Iterator[None]:
    _secrets_dir.append(tmp_path)
    yield
    _secrets_dir.clear()


def config(sim: WiSunModuleSim, **kw: Any) -> m.SmartMeterConfig:
    base: dict[str, Any] = {
        "type": "smart_meter",
        "name": "meter-hh-0001",
        "port": sim.port,
        "device_id": sim.spec.device_id,
        "district": "kamo",
        **credential_files(_secrets_dir[-1], sim.spec.rbid, sim.spec.password),
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
    text = (caplog.text + repr(health) + repr(cfg) + cfg.model_dump_json() + repr(outbox.state)
            + repr(vars(run.source)))  # fmt: skip
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
    sim.set_meter_password(sim.spec.password)  # the meter takes the password in the gateway's file again
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


#: 5 simulated minutes per real second: a meter powered on at 02:00 reaches its first :00/:30 six seconds later,
#: well after the session is up (an open takes 2 s or more: momonga waits for 2 s of silence on the port).
FRESH_RATE = 300.0


@pytest.fixture
def fresh_sim(tmp_path) -> Iterator[WiSunModuleSim]:
    """A meter powered on at 02:00 JST that has no fixed-time value until 02:30 (EA answers year 65535)."""
    c = ScaledClock(sim_start=SIM_START, real_anchor=time.time(), rate=FRESH_RATE)
    edge_clock.use_scaled(c)
    sim = WiSunModuleSim(
        MeterSpec(device_id="hh-0001", seed=11), clock=c, truth_path=tmp_path / "truth.jsonl", fresh=True
    )
    sim.start()
    yield sim
    sim.stop()
    edge_clock.use_scaled(None)


def test_fresh_meter_first_live_reading_within_one_poll_then_its_first_slot(fresh_sim, caplog) -> None:
    # issue 12, item 9: a new gateway on a meter with no half-hour value yet sent nothing until the next :00/:30
    caplog.set_level(logging.INFO, logger=m.__name__)
    sim, poll = fresh_sim, 0.5
    first_slot_ms = int(SIM_START) * 1000 + SLOT_MS  # 02:30 JST, the meter's first boundary
    outbox = Outbox()
    run = Running(m.SmartMeterSource(config(sim, poll_interval_s=poll)), outbox)
    wait_for(state_is(run, m.ONLINE), "the session")
    wait_for(lambda: bool(outbox.live()), "a live reading within one poll interval of the session", poll)
    first = outbox.live()[0]
    assert first.ts < first_slot_ms, "the session came up after the meter's first :00/:30: nothing was tested"
    assert first.values["power_w"] >= 0 and "energy_kwh" in first.values
    assert outbox.fixed() == [] and not sim.truth_fixed()  # the meter has no half-hour value, nor do we
    assert run.health()["no_fixed_value_yet"] >= 1

    wait_for(lambda: bool(outbox.fixed()), "the first half-hour value")
    wait_for(lambda: sum(r.ts > first_slot_ms for r in outbox.live()) >= 2, "live readings after 02:30")
    health = run.stop()
    (slot, *_) = outbox.fixed()
    assert slot.ts == first_slot_ms and not slot.backfill  # the meter's first slot, as a normal reading
    assert_exact(outbox.fixed(), sim)
    kwh = slot.values["energy_fixed_kwh"]
    assert outbox.state == {"v": 1, "last_slot_ms": first_slot_ms, "last_slot_kwh": kwh}
    # until the meter had its first value, every poll gave a live reading and nothing else
    before = outbox.readings[: outbox.readings.index(slot)]
    assert all(r.values.keys() == first.values.keys() for r in before)
    early = [r for r in before if r.ts < first_slot_ms]
    assert len(early) >= 2 and health["no_fixed_value_yet"] >= len(early)
    assert health["request_errors"] == 0 and health["lost_slots"] == 0 and health["recovered_slots"] == 0
    told = [r for r in caplog.records if "no half-hour" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.INFO  # logged once, not as an error


def test_config_is_strict_and_never_echoes_secrets(tmp_path: Path) -> None:
    assert registry()["smart_meter"].config_model is m.SmartMeterConfig
    good = {"type": "smart_meter", "name": "m", "port": "/dev/x", "device_id": "hh-0001",
            **credential_files(tmp_path, "0123456789ABCDEF0123456789ABCDEF", "ABCDEFGH1234")}  # fmt: skip
    with pytest.raises(ValidationError, match="extra"):
        m.SmartMeterConfig.model_validate({**good, "pasword_file": "x"})
    # the secrets themselves are no settings any more: an old config's inline values are unknown keys, not shown
    for key, secret in (("rbid", "0123456789ABCDEF0123456789ABCDEF"), ("password", "SECRETSECRET")):
        with pytest.raises(ValidationError) as err:
            m.SmartMeterConfig.model_validate({**good, key: secret})
        assert key in str(err.value) and "extra" in str(err.value) and secret not in str(err.value)
    with pytest.raises(ValidationError, match="rbid_file"):
        m.SmartMeterConfig.model_validate({k: v for k, v in good.items() if k != "rbid_file"})
    with pytest.raises(ValidationError):
        m.SmartMeterConfig.model_validate({**good, "device_id": "Tanaka Household"})
    # the ID as the letter prints it, in groups of four
    write_secret(good["rbid_file"], "0123 4567 89AB CDEF 0123 4567 89AB CDEF\n")
    cfg = m.SmartMeterConfig.model_validate(good)
    creds = cfg.credentials()
    assert creds.rbid.get_secret_value() == "0123456789ABCDEF0123456789ABCDEF"
    assert creds.password.get_secret_value() == "ABCDEFGH1234"
    src = m.SmartMeterSource(cfg)
    for text in (repr(cfg), cfg.model_dump_json(), repr(creds), repr(vars(src))):
        assert "ABCDEFGH1234" not in text and "0123456789ABCDEF" not in text and "0123 4567" not in text


RBID, PASSWORD = "0123456789ABCDEF0123456789ABCDEF", "Pw0rd!Secret"


@pytest.mark.parametrize(
    ("setting", "content", "mode", "problem"),
    [
        ("rbid_file", None, 0o600, "does not exist"),
        ("password_file", None, 0o600, "does not exist"),
        ("rbid_file", f"{RBID}\n", 0o644, "mode 0644"),
        ("password_file", f"{PASSWORD}\n", 0o644, "mode 0644"),
        ("password_file", f"{PASSWORD}\n", 0o640, "mode 0640"),
        ("password_file", f"{PASSWORD}\n", 0o000, "not readable by this user"),
        ("rbid_file", f"{RBID[:24]}\n", 0o600, "does not hold a B-route ID"),
        ("rbid_file", f"{RBID[:31]}_\n", 0o600, "does not hold a B-route ID"),
        ("rbid_file", "\n", 0o600, "on one line"),
        ("rbid_file", f"{RBID}\n{RBID}\n", 0o600, "on one line"),
        ("password_file", f"{PASSWORD} with spaces\n", 0o600, "does not hold a B-route password"),
        ("password_file", f"{PASSWORD * 3}\n", 0o600, "does not hold a B-route password"),
        ("password_file", "", 0o600, "on one line"),
    ],
)
def test_a_bad_credentials_file_stops_the_source_at_construction_naming_the_setting(
    tmp_path: Path, setting: str, content: str | None, mode: int, problem: str
) -> None:
    if mode == 0o000 and os.geteuid() == 0:
        pytest.skip("root reads any file")
    files = credential_files(tmp_path, RBID, PASSWORD)
    files[setting].unlink()
    if content is not None:
        write_secret(files[setting], content, mode)
    cfg = m.SmartMeterConfig.model_validate({"type": "smart_meter", "name": "meter-hh-0007", "port": "/dev/x",
                                             "device_id": "hh-0007", **files})  # fmt: skip
    with pytest.raises(ConfigError) as err:
        m.SmartMeterSource(cfg)
    msg = str(err.value)
    assert msg.startswith(f"sources[meter-hh-0007].{setting}: {files[setting]} ") and problem in msg, msg
    assert "\n" not in msg
    for secret in (RBID, RBID[:24], RBID[-8:], PASSWORD, "with spaces"):
        assert secret not in msg


# --- the sans-I/O core (edge/sources/meter/core.py): no emulator, no thread, no clock -----------------------

T0_MS = int(SIM_START) * 1000  # 2026-11-25 02:00 JST


#: EA before the meter's first :00/:30, as the meter sends it: date and time all 0xFF (year 65535), count
#: 0xFFFFFFFE. momonga cannot make a datetime of it, so the core gets these raw bytes.
NO_DATA_EA = bytes.fromhex("FFFF" "FFFFFFFFFF" "FFFFFFFE")


def _ea(local: str, kwh: float | None) -> dict[str, Any]:
    """EA as momonga decodes it."""
    return {"timestamp": _dt.datetime.fromisoformat(local), "cumulative energy": kwh}


def _committed(core: mc.MeterCore, step: mc.Step) -> list[Reading]:
    """What the adapter does with a step: emit each reading, then tell the core it was committed."""
    for e in step.emissions:
        core.committed(e)
    return step.readings


def test_core_is_sans_io() -> None:
    tree = ast.parse(Path(mc.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "datetime", "math", "collections", "dataclasses", "typing", "cityos"}


def test_core_resolution_rounds_to_the_meters_decimals() -> None:
    resolutions = [(0.1, 1), (0.01, 10), (1, 1), (10, 1), (0.0001, 1), (0.001, 1)]
    assert [mc.decimals_for(u, c) for u, c in resolutions] == [1, 1, 0, 0, 4, 3]
    assert mc.decimals_for(0, 1) == 3  # no resolution: the default
    core = mc.MeterCore("hh-0001")
    assert core.decimals == 3  # until the session read E1/D3
    core.set_resolution(0.01, 10)
    step = core.on_poll(T0_MS + 1000, {0xE7: 532, 0xE0: 98765 * 0.01 * 10, 0xE3: 3 * 0.01 * 10})
    (r,) = _committed(core, step)
    assert r.values == {"power_w": 532.0, "energy_kwh": 9876.5, "energy_reverse_kwh": 0.3}
    assert r.units == {"power_w": "W", "energy_kwh": "kWh", "energy_reverse_kwh": "kWh"}
    assert r.ts == T0_MS + 1000 and r.kind == "smart_meter" and r.tags == {} and not r.backfill
    assert step.counts == {"polls": 1} and step.history is None and not step.retry
    assert step.emissions[0].state is None and step.emissions[0].counter == "readings"


def test_core_live_reading_skips_missing_values_and_the_same_instant() -> None:
    core = mc.MeterCore("hh-0001", district="kamo")
    core.set_resolution(0.1)
    step = core.on_poll(T0_MS, {0xE7: None, 0xE0: None, 0xEA: _ea("2026-11-25T02:00:00", None)})
    assert step.emissions == [] and step.counts == {"polls": 1, "no_fixed_value_yet": 1}  # nothing: nothing
    (r,) = core.on_poll(T0_MS, {0xE7: -120, 0xE0: 123456 * 0.1}).readings  # the last time had no reading
    assert r.values == {"power_w": -120.0, "energy_kwh": 12345.6} and r.tags == {"district": "kamo"}
    for t in (T0_MS, T0_MS - 1):  # a clock that stood still or stepped back
        step = core.on_poll(t, {0xE7: 100, 0xE0: 123457 * 0.1})
        assert step.emissions == [] and step.counts == {"polls": 1, "same_instant_skips": 1}
    assert core.on_poll(T0_MS + 1, {0xE7: 100}).readings[0].values == {"power_w": 100.0}
    assert core.on_poll(T0_MS + 2, {0xE7: 1.5, 0xE0: "x"}).emissions == []  # not momonga's types: no values


def test_core_asks_for_e3_until_the_meter_refuses_it() -> None:
    core = mc.MeterCore("hh-0001")
    assert core.poll_properties() == {0xE7, 0xE0, 0xEA, 0xE3}
    assert core.get_refused() is True  # the first poll with E3 refused: the meter has none
    assert core.poll_properties() == {0xE7, 0xE0, 0xEA}
    assert core.get_refused() is False  # any later refusal is a refusal
    other = mc.MeterCore("hh-0002")
    other.on_poll(T0_MS, {0xE7: 1, 0xE0: 1.0, 0xE3: 0.0})
    assert other.get_refused() is False and mc.EPC_ENERGY_REVERSE in other.poll_properties()


def test_core_fixed_slot_once_with_its_state_committed() -> None:
    core = mc.MeterCore("hh-0001", district="kamo")
    core.set_resolution(0.1)
    ea = {0xEA: _ea("2026-11-25T02:00:00", 123450 * 0.1)}
    step = core.on_notification(ea)
    (e,) = step.emissions
    assert (
        e.reading.ts == T0_MS and e.reading.values == {"energy_fixed_kwh": 12345.0} and not e.reading.backfill
    )
    assert (
        e.state == {"v": 1, "last_slot_ms": T0_MS, "last_slot_kwh": 12345.0} and e.counter == "fixed_readings"
    )
    assert core.last_slot_ms is None  # not committed yet: the outbox may still refuse it
    assert len(core.on_notification(ea).emissions) == 1
    core.committed(e)
    assert core.state == e.state and core.last_slot_ms == T0_MS
    assert core.on_notification(ea).emissions == []  # never again, from an INF
    assert [r.values for r in core.on_poll(T0_MS + 60_000, {0xE7: 5, **ea}).readings] == [{"power_w": 5.0}]
    (nxt,) = _committed(core, core.on_notification({0xEA: _ea("2026-11-25T02:30:00", 123469 * 0.1)}))
    assert nxt.ts == T0_MS + SLOT_MS and nxt.values == {"energy_fixed_kwh": 12346.9}
    assert core.on_notification({0xEA: _ea("2026-11-25T02:00:00", 12345.0)}).emissions == []  # older: never


def test_core_rejects_what_is_not_a_fixed_time_value() -> None:
    core = mc.MeterCore("hh-0001")
    aware = _dt.datetime(2026, 11, 25, 2, tzinfo=_dt.UTC)
    for bad in (
        None,
        b"\x07\xea\x0b",  # the raw bytes momonga keeps for an INF it could not read
        {"timestamp": "2026-11-25T02:00:00", "cumulative energy": 1.0},
        {"timestamp": aware, "cumulative energy": 1.0},  # not the meter's local time
    ):
        step = core.on_notification({0xEA: bad})
        assert step.emissions == [] and step.counts == {}, bad
    for none_yet in (_ea("2026-11-25T02:00:00", None), NO_DATA_EA):  # the meter has no value yet
        step = core.on_notification({0xEA: none_yet})
        assert step.emissions == [] and step.counts == {"no_fixed_value_yet": 1}, none_yet
    for off_grid in ("2026-11-25T02:00:05", "2026-11-25T02:15:00"):
        step = core.on_notification({0xEA: _ea(off_grid, 1.0)})
        assert step.emissions == [] and step.counts == {"request_errors": 1}
    assert core.last_slot_ms is None


def test_core_no_data_slot_value_does_not_cost_the_live_reading() -> None:
    # issue 12, item 9: a meter before its first :00/:30 answers EA with year 65535; the live values of the
    # same reply are readings all the same, and the first half-hour value comes normally when the meter has it
    assert mc.no_fixed_value(NO_DATA_EA) and mc.no_fixed_value(_ea("2026-11-25T02:00:00", None))
    month_13 = bytes.fromhex("07EA0D19020000" "0001E240")  # unreadable, but not "no data"
    for value in (None, b"\x07\xea\x0b", month_13, _ea("2026-11-25T02:00:00", 1.0), NO_DATA_EA[:7]):
        assert not mc.no_fixed_value(value), value
    core = mc.MeterCore("hh-0001", district="kamo")
    core.set_resolution(0.1)
    step = core.on_poll(T0_MS + 60_000, {0xE7: 412, 0xE0: 123456 * 0.1, 0xE3: 0.0, 0xEA: NO_DATA_EA})
    (r,) = _committed(core, step)
    assert r.values == {"power_w": 412.0, "energy_kwh": 12345.6, "energy_reverse_kwh": 0.0}
    assert r.ts == T0_MS + 60_000 and not r.backfill
    assert step.counts == {"polls": 1, "no_fixed_value_yet": 1} and step.no_fixed_value
    assert step.unreadable == () and step.history is None and core.state == {"v": 1}
    # a value momonga could not read is an error of that value only: the rest of the poll is still a reading
    step = core.on_poll(T0_MS + 120_000, {0xE7: b"\x00\x01", 0xE0: 123457 * 0.1, 0xEA: NO_DATA_EA})
    assert [x.values for x in step.readings] == [{"energy_kwh": 12345.7}] and step.unreadable == (0xE7,)
    assert step.counts == {"polls": 1, "request_errors": 1, "no_fixed_value_yet": 1}
    step = core.on_poll(T0_MS + 180_000, {0xE7: 415, 0xEA: month_13})
    assert [x.values for x in step.readings] == [{"power_w": 415.0}] and step.unreadable == (0xEA,)
    assert step.counts == {"polls": 1, "request_errors": 1} and not step.no_fixed_value
    # the meter's first :00/:30: its value is the first slot, not a recovery (there is nothing before it)
    first = {0xEA: _ea("2026-11-25T02:30:00", 123470 * 0.1)}
    step = core.on_poll(T0_MS + SLOT_MS + 60_000, {0xE7: 420, **first})
    live, fixed = _committed(core, step)
    assert live.values == {"power_w": 420.0} and step.history is None and step.counts == {"polls": 1}
    assert fixed.ts == T0_MS + SLOT_MS and fixed.values == {"energy_fixed_kwh": 12347.0}
    assert not fixed.backfill
    assert core.state == {"v": 1, "last_slot_ms": T0_MS + SLOT_MS, "last_slot_kwh": 12347.0}


def test_the_meters_no_data_reply_bytes_still_give_the_live_reading() -> None:
    # the meter's Get_Res to E7 + E0 + EA before its first :00/:30, byte for byte: 412 W, 12345.6 kWh, "no data"
    reply = bytes.fromhex(
        "1081" "0001" "028801" "05FF01" "72" "03" "E704" "0000019C" "E004" "0001E240" "EA0B" + NO_DATA_EA.hex()
    )
    asked = [momonga.EchonetProperty(code) for code in (EPC.instantaneous_power,
             EPC.measured_cumulative_energy, EPC.cumulative_energy_measured_at_fixed_time)]  # fmt: skip
    properties = momonga.Momonga._extract_response_payload(reply, 1, asked)  # momonga's own frame check
    parse_ea = PARSER_MAP[EPC.cumulative_energy_measured_at_fixed_time]
    with pytest.raises(momonga.MomongaResponseNotExpected, match="year 65535"):  # request_to_get: all lost
        momonga.Momonga._parse_or_wrap(0xEA, NO_DATA_EA, parse_ea, 0.1, 1)
    props = m._decode_each(properties, 0.1, 1)
    assert props == {0xE7: 412, 0xE0: pytest.approx(12345.6), 0xEA: NO_DATA_EA}
    core = mc.MeterCore("hh-0001")
    core.set_resolution(0.1)
    step = core.on_poll(T0_MS, props)
    assert [r.values for r in step.readings] == [{"power_w": 412.0, "energy_kwh": 12345.6}]
    assert step.counts == {"polls": 1, "no_fixed_value_yet": 1}


def test_core_restores_only_its_own_state_version() -> None:
    old = {"v": 1, "last_slot_ms": T0_MS, "last_slot_kwh": 12345.0}  # as every agent so far committed it
    core = mc.MeterCore("hh-0001", state=old)
    assert core.state == old
    core.restore({})  # nothing committed: keep what we have
    core.restore({"v": 2, "last_slot_ms": T0_MS + SLOT_MS})
    assert core.state == old
    assert core.on_notification({0xEA: _ea("2026-11-25T02:00:00", 12345.0)}).emissions == []
    (r,) = _committed(core, core.on_notification({0xEA: _ea("2026-11-25T02:30:00", 12346.0)}))
    assert r.ts == T0_MS + SLOT_MS and not r.backfill
    assert mc.MeterCore("hh-0001", state={"v": 2, "last_slot_ms": 5}).last_slot_ms is None


def test_core_backfills_missed_slots_from_the_history_oldest_first() -> None:
    last = T0_MS - 6 * SLOT_MS  # 2026-11-24 23:00 JST
    core = mc.MeterCore("hh-0001", state={"v": 1, "last_slot_ms": last, "last_slot_kwh": 12300.4})
    core.set_resolution(0.1)
    now = _ea("2026-11-25T02:00:00", 123450 * 0.1)
    step = core.on_poll(T0_MS + 60_000, {0xE7: 410, 0xEA: now})
    assert [r.values for r in step.readings] == [{"power_w": 410.0}]  # the live reading goes out first
    req = step.history
    assert (
        req is not None and req.days == (1, 0) and req.after_slot_ms == last and req.current_slot_ms == T0_MS
    )
    assert req.wanted == ((last + SLOT_MS, 1, 47), *((last + (k + 2) * SLOT_MS, 0, k) for k in range(4)))
    _committed(core, step)
    day0 = (123102 * 0.1, None, 123250 * 0.1, 123399 * 0.1)  # 00:00 .. 01:30, 01:00 missing
    history = {
        1: [{"cumulative energy": None}] * 47 + [{"cumulative energy": 123031 * 0.1}],
        0: [{"cumulative energy": v} for v in day0],
    }
    done = core.on_history(req, history, now)
    assert [(r.ts, r.values["energy_fixed_kwh"], r.backfill) for r in done.readings] == [
        (last + SLOT_MS, 12303.1, True),
        (last + 2 * SLOT_MS, 12310.2, True),
        (last + 4 * SLOT_MS, 12325.0, True),
        (last + 5 * SLOT_MS, 12339.9, True),
        (T0_MS, 12345.0, False),
    ]
    assert [e.state["last_slot_ms"] for e in done.emissions if e.state] == [r.ts for r in done.readings]
    assert done.counts == {"recovered_slots": 4, "lost_slots": 1} and done.lost_slots == 1
    _committed(core, done)
    assert core.state == {"v": 1, "last_slot_ms": T0_MS, "last_slot_kwh": 12345.0}
    assert core.on_poll(T0_MS + 120_000, {0xEA: now}).history is None


def test_core_redoes_a_recovery_read_across_the_meters_midnight() -> None:
    last = T0_MS - 7 * SLOT_MS  # 22:30 JST
    core = mc.MeterCore("hh-0001", state={"v": 1, "last_slot_ms": last, "last_slot_kwh": 12290.1})
    req = core.on_notification({0xEA: _ea("2026-11-24T23:30:00", 12297.8)}).history
    assert req is not None and req.days == (0,) and req.wanted == ((last + SLOT_MS, 0, 46),)
    step = core.on_history(
        req, {0: [{"cumulative energy": 12294.0}] * 48}, _ea("2026-11-25T00:00:00", 12299.0)
    )
    assert step.retry and step.emissions == [] and step.counts == {}  # day 0 already meant the 25th
    assert core.on_history(req, {}, None).retry  # no EA after the history: no date to check against
    # the next EA starts over, from the meter's new date
    req2 = core.on_notification({0xEA: _ea("2026-11-25T00:00:00", 12299.0)}).history
    assert req2 is not None and req2.days == (1,) and [w[1:] for w in req2.wanted] == [(1, 46), (1, 47)]
    # meanwhile 23:00 came on its own (one slot after the committed one) and was committed: req2 is stale
    (e,) = core.on_notification({0xEA: _ea("2026-11-24T23:00:00", 12294.0)}).emissions
    core.committed(e)
    assert core.on_history(
        req2, {1: [{"cumulative energy": 12294.0}] * 48}, _ea("2026-11-25T00:00:00", 1)
    ).retry


def test_core_slots_beyond_the_history_are_lost() -> None:
    now = _dt.datetime(2026, 11, 25, 2, 0)
    last = mc.slot_ms(now - _dt.timedelta(days=100, hours=2, minutes=30), 9.0)  # 23:30, 101 days back
    core = mc.MeterCore("hh-0001", state={"v": 1, "last_slot_ms": last, "last_slot_kwh": 1.0})
    req = core.on_notification({0xEA: {"timestamp": now, "cumulative energy": 9.0}}).history
    assert req is not None and req.days == tuple(range(99, -1, -1))  # E5 reaches 99 days back
    assert req.wanted[0] == (last + 49 * SLOT_MS, 99, 0)  # the 48 slots of day 100 are not asked for
    assert len(req.wanted) == 99 * 48 + 4
    done = core.on_history(req, {}, {"timestamp": now, "cumulative energy": 9.0})  # and the meter had none
    assert [r.ts for r in done.readings] == [mc.slot_ms(now, 9.0)]
    assert (
        done.counts == {"recovered_slots": 0, "lost_slots": 100 * 48 + 4} and done.lost_slots == 100 * 48 + 4
    )


def test_core_slot_time_is_the_meters_local_time_in_utc() -> None:
    jst = _dt.datetime(2026, 11, 25, 2, 0)
    assert mc.slot_ms(jst, 9.0) == T0_MS and mc.local_time(T0_MS, 9.0) == jst
    assert mc.slot_ms(jst, 5.5) == T0_MS + int(3.5 * 3600_000)
    assert mc.local_time(mc.slot_ms(jst, -3.0), -3.0) == jst
    core = mc.MeterCore("hh-0001", utc_offset_h=0.0)
    (r,) = core.on_notification({0xEA: _ea("2026-11-25T02:00:00", 1.0)}).readings
    assert r.ts == T0_MS + 9 * 3600_000


def test_the_source_feeds_its_core(tmp_path: Path) -> None:
    good = {
        "type": "smart_meter",
        "name": "m",
        "port": "/dev/x",
        "device_id": "hh-0001",
        "district": "kamo",
        **credential_files(tmp_path, "0123456789ABCDEF0123456789ABCDEF", "ABCDEFGH1234"),
        "meter_utc_offset_h": 8,
    }
    src = m.SmartMeterSource(m.SmartMeterConfig.model_validate(good))
    core = src._core
    assert core.device_id == "hh-0001" and core.tags == {"district": "kamo"} and core.utc_offset_h == 8
    assert m.KIND == mc.KIND and m.SLOT_MS == mc.SLOT_MS == SLOT_MS and m.STATE_VERSION == mc.STATE_VERSION
    assert src.health()["last_fixed_slot_ms"] == 0.0 and src.health()["no_fixed_value_yet"] == 0.0
