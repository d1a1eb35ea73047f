"""The Wi-SUN module emulator against unmodified momonga, over a real pseudo-terminal.

momonga is the reference for the dialogue: if these tests pass, momonga's open() (ROPT, SKINFO dialect detection,
SKRESET, SKSREG, SKSETRBID/SKSETPWD, SKSCAN, SKLL64, SKJOIN), its SKSENDTO/ERXUDP request loop, its notification
path and its close() (SKTERM) all accept what the emulator sends.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator

import momonga
import pytest
from momonga import EchonetPropertyCode as EPC
from momonga.momonga_device import DeviceType
from momonga.momonga_echonet_data import EchonetDataParser, EchonetProperty
from momonga.momonga_echonet_enum import EchonetServiceCode

from cityos.simclock import ScaledClock
from firmware_sim.meter import echonet as el
from firmware_sim.meter import sim as wm
from firmware_sim.meter.sim import MeterSpec, WiSunModuleSim

GET_E7 = bytes.fromhex("1081000105FF010288016201E700")
GET_RES_E7 = bytes.fromhex("1081000102880105FF017201E704000004A5")
#: 2026-11-25 02:00 JST: a test never crosses the meter's midnight unless it runs 22 s at rate 3600.
SIM_START = 1795539600.0


def fast_momonga(sim: WiSunModuleSim, **kw: object) -> momonga.Momonga:
    mo = momonga.Momonga(kw.pop("rbid", sim.spec.rbid), kw.pop("pwd", sim.spec.password), sim.port, **kw)  # type: ignore[arg-type]
    mo.internal_xmit_interval = 0.02
    mo.recv_timeout = 0.4
    mo.xmit_timeout = 10
    return mo


@pytest.fixture
def clock() -> ScaledClock:
    return ScaledClock(sim_start=SIM_START, real_anchor=time.time(), rate=3600)


@pytest.fixture
def sim(clock: ScaledClock, tmp_path) -> Iterator[WiSunModuleSim]:
    s = WiSunModuleSim(
        MeterSpec(device_id="hh-0001", seed=3), clock=clock, truth_path=tmp_path / "truth.jsonl"
    )
    s.start()
    yield s
    s.stop()


def test_reference_vectors_mean_what_the_reference_says() -> None:
    # the request momonga builds is the reference vector, and the reference reply reads as 1189 W, both in our
    # codec and in momonga's parser
    mo = momonga.Momonga.__new__(momonga.Momonga)
    assert (
        mo._build_request_payload(1, EchonetServiceCode.get, [EchonetProperty(EPC.instantaneous_power)])
        == GET_E7
    )
    reply = el.decode(GET_RES_E7)
    assert el.dec_instant_power(reply.get(el.EPC_INSTANT_POWER)) == 1189
    assert EchonetDataParser.parse_instantaneous_power(reply.get(el.EPC_INSTANT_POWER)) == 1189


def test_meter_answers_the_reference_request_like_the_reference_reply() -> None:
    meter = wm._Meter(MeterSpec(), SIM_START)
    answer = el.decode(el.encode(el.response(el.decode(GET_E7), {0xE7: meter.properties(0xE7)})))
    assert (answer.tid, answer.esv, answer.seoj, answer.deoj) == (
        1,
        el.ESV_GET_RES,
        el.SMART_METER_EOJ,
        el.CONTROLLER_EOJ,
    )
    assert el.dec_instant_power(answer.get(0xE7)) == wm.household_power_w(MeterSpec(), SIM_START)


def test_history_and_set_frames_roundtrip() -> None:
    counts = [None] * 10 + list(range(38))
    day, back = el.dec_history_1(el.enc_history_1(3, counts))
    assert (day, back) == (3, counts)
    parsed = EchonetDataParser.parse_historical_cumulative_energy_1(el.enc_history_1(3, counts), 0.1, 1)
    assert parsed[9]["cumulative energy"] is None and parsed[47]["cumulative energy"] == pytest.approx(3.7)
    req = el.Frame(5, el.CONTROLLER_EOJ, el.SMART_METER_EOJ, el.ESV_SETC, [(0xE5, b"\x01"), (0xED, b"\x00")])
    res = el.set_response(req, {0xE5})
    assert res.esv == el.ESV_SETC_SNA and res.props == [(0xE5, b""), (0xED, b"\x00")]


def test_energy_is_integrated_exactly() -> None:
    spec = MeterSpec(seed=9, unit_code=0x02)
    meter = wm._Meter(spec, SIM_START)
    j0 = meter.joules
    meter.advance(SIM_START + 3 * 3600)
    expected = j0 + sum(wm.household_power_w(spec, SIM_START + 10 * k) * 10 for k in range(3 * 360))
    assert meter.joules == expected
    assert meter.slots[int(SIM_START) + 3 * 3600] == (expected // 36_000) % 10**6
    # the load curve has its evening peak: 19:30 JST draws far more than 03:00 JST
    assert wm.household_power_w(spec, SIM_START + 17.5 * 3600) > 2 * wm.household_power_w(
        spec, SIM_START + 3600
    )


def test_a_fresh_meter_has_no_fixed_time_value_until_its_first_boundary(tmp_path) -> None:
    no_data = bytes.fromhex("FFFFFFFFFFFFFFFFFFFFFE")  # date and time all 0xFF (year 65535), count FFFFFFFE
    spec = MeterSpec(seed=3)
    running = wm._Meter(spec, SIM_START)  # the default: a start on :00/:30 latches it (a meter that ran on)
    assert el.dec_fixed_time(running.properties(0xEA))[0] == dt.datetime(2026, 11, 25, 2, 0)
    fresh = wm._Meter(spec, SIM_START, fresh=True)  # just powered on at 02:00
    for t in (SIM_START, SIM_START + 1790):
        fresh.advance(t)
        assert fresh.properties(0xEA) == fresh.properties(0xEB) == no_data
        assert fresh.history(0, reverse=False) == [None] * el.SLOTS_PER_DAY
        assert el.dec_instant_power(fresh.properties(0xE7)) == wm.household_power_w(spec, fresh.t)
    fresh.advance(SIM_START + 1800)
    assert el.dec_fixed_time(fresh.properties(0xEA)) == (dt.datetime(2026, 11, 25, 2, 30), fresh.count)
    # unmodified momonga on the pty: the live value reads, the fixed-time value does not, and one Get of both
    # loses both (what a fresh gateway did until the meter's first :00/:30)
    clock = ScaledClock(sim_start=SIM_START, real_anchor=time.time(), rate=1)
    with WiSunModuleSim(spec, clock=clock, fresh=True, truth_path=tmp_path / "t.jsonl") as sim:
        with fast_momonga(sim) as mo:
            assert isinstance(mo.get_instantaneous_power(), int)
            with pytest.raises(momonga.MomongaResponseNotExpected, match="year 65535"):
                mo.get_cumulative_energy_measured_at_fixed_time()
            with pytest.raises(momonga.MomongaResponseNotExpected, match="EPC EA"):
                mo.request_to_get({EPC.instantaneous_power, EPC.cumulative_energy_measured_at_fixed_time})
        assert sim.truth_fixed() == {}


@pytest.mark.parametrize("dialect", ["bp35a1", "rl7023"])  # bp35c2: the full dialogue below
def test_momonga_opens_and_reads_each_dialect(clock: ScaledClock, dialect: str) -> None:
    with WiSunModuleSim(MeterSpec(seed=4, dialect=dialect), clock=clock) as sim:
        with fast_momonga(sim) as mo:
            expected = DeviceType.BP35C2 if dialect == "bp35c2" else DeviceType.BP35A1
            assert mo.session_manager.skw.device_type is expected
            before = clock.now()
            power = mo.get_instantaneous_power()
            after = clock.now()
            ticks = range(int(before // 10) - 1, int(after // 10) + 2)
            assert power in {wm.household_power_w(sim.spec, 10 * k) for k in ticks}
            assert (mo.energy_unit, mo.energy_coefficient) == (0.1, 1)
        assert sim.counters["terms"] == 1  # close() ended the PANA session with SKTERM
        assert not sim.session_up


def test_momonga_full_dialogue_against_ground_truth(
    sim: WiSunModuleSim, clock: ScaledClock, tmp_path
) -> None:
    with fast_momonga(sim) as mo:
        fixed = mo.get_cumulative_energy_measured_at_fixed_time()
        slot_ms = int((fixed["timestamp"] - dt.datetime(1970, 1, 1)).total_seconds() - 9 * 3600) * 1000
        assert fixed["cumulative energy"] == pytest.approx(sim.truth_fixed()[slot_ms])
        e0 = mo.get_measured_cumulative_energy()
        assert e0 >= fixed["cumulative energy"]
        assert mo.get_measured_cumulative_energy(reverse=True) == 0
        history = mo.get_historical_cumulative_energy_1(0)
        truth = sim.truth_fixed()
        midnight_ms = int(SIM_START - 2 * 3600) * 1000
        for i, entry in enumerate(history):
            expected = truth.get(midnight_ms + i * 1_800_000)
            got = entry["cumulative energy"]
            assert (got is None) if expected is None else got == pytest.approx(expected), i
        assert sum(e["cumulative energy"] is not None for e in history) >= 2
        # the meter announces each :00/:30 value on its own (INF), which momonga hands out as a notification
        note = mo.get_notification(timeout=5)
        assert note is not None and note["esv"] == EchonetServiceCode.inf
        announced = note["properties"][EPC.cumulative_energy_measured_at_fixed_time]
        a_ms = int((announced["timestamp"] - dt.datetime(1970, 1, 1)).total_seconds() - 9 * 3600) * 1000
        assert announced["cumulative energy"] == pytest.approx(sim.truth_fixed()[a_ms])
    lines = [json.loads(x) for x in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert {x["type"] for x in lines} >= {"fixed", "power", "event"}
    assert all(x["device_id"] == "hh-0001" for x in lines)


def test_garbled_lines_cost_retries_not_correctness(clock: ScaledClock) -> None:
    with WiSunModuleSim(MeterSpec(seed=5), clock=clock, garble=0.5) as sim:
        with fast_momonga(sim) as mo:
            mo.recv_timeout = 0.15
            for _ in range(8):
                fixed = mo.get_cumulative_energy_measured_at_fixed_time()
                slot_ms = (
                    int((fixed["timestamp"] - dt.datetime(1970, 1, 1)).total_seconds() - 9 * 3600) * 1000
                )
                assert fixed["cumulative energy"] == pytest.approx(sim.truth_fixed()[slot_ms])
        c = sim.counters
        assert c["junk_lines"] > 0 and c["corrupted_lines"] > 0
        assert c["sends"] > 8 + 2  # some replies were lost to corruption and asked for again


def test_wrong_password_fails_the_join_and_wrong_id_finds_no_meter(clock: ScaledClock) -> None:
    with WiSunModuleSim(MeterSpec(seed=6), clock=clock) as sim:
        mo = fast_momonga(sim, pwd="WRONGPASS123", join_retries=2)
        with pytest.raises(momonga.MomongaSkJoinFailure):
            mo.open()
        assert (sim.counters["joins"], sim.counters["joins_failed"]) == (2, 2)
        mo = fast_momonga(sim, rbid="F" * 32, scan_retries=1)
        with pytest.raises(momonga.MomongaSkScanFailure):
            mo.open()
        assert sim.counters["joins"] == 2  # no join without a PAN


def test_cli_runs_and_writes_truth(tmp_path) -> None:
    truth = tmp_path / "gt.jsonl"
    rc = wm.main(["--households", "hh-0001:1,hh-0002:2", "--link-dir", str(tmp_path / "dev"),
                  "--ground-truth", str(truth), "--rate", "3600", "--duration", "1.2"])  # fmt: skip
    assert rc == 0
    per_household = wm.read_truth(truth)
    assert set(per_household) == {"hh-0001", "hh-0002"}
    assert all(len(slots) >= 1 for slots in per_household.values())
