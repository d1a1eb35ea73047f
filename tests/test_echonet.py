"""ECHONET Lite codec against the byte vectors of shared/reference/broute-echonet.md."""

from __future__ import annotations

import datetime as dt

import pytest

from firmware_sim.meter import echonet as el

GET_E7 = bytes.fromhex("1081000105FF010288016201E700")
GET_RES_E7 = bytes.fromhex("1081000102880105FF017201E704000004A5")
GET_E0_E1_D3 = bytes.fromhex("1081000205FF010288016203E000E100D300")


def test_get_instantaneous_power_request_vector():
    assert el.encode(el.get_request(1, [el.EPC_INSTANT_POWER])) == GET_E7
    assert len(GET_E7) == 0x0E  # the SKSENDTO length field says 000E


def test_get_res_vector_parses_to_1189_watts():
    f = el.decode(GET_RES_E7)
    assert (f.tid, f.seoj, f.deoj, f.esv) == (1, el.SMART_METER_EOJ, el.CONTROLLER_EOJ, el.ESV_GET_RES)
    assert el.dec_instant_power(f.get(el.EPC_INSTANT_POWER)) == 1189


def test_meter_answer_to_the_request_is_the_reference_reply():
    req = el.decode(GET_E7)
    assert el.encode(el.response(req, {el.EPC_INSTANT_POWER: el.enc_instant_power(1189)})) == GET_RES_E7


def test_three_properties_in_one_get():
    req = el.get_request(2, [el.EPC_CUMULATIVE_NORMAL, el.EPC_UNIT, el.EPC_COEFFICIENT])
    assert el.encode(req) == GET_E0_E1_D3
    assert len(GET_E0_E1_D3) == 18


def test_missing_property_gives_get_sna_with_empty_edt():
    req = el.decode(GET_E0_E1_D3)
    res = el.response(req, {el.EPC_CUMULATIVE_NORMAL: el.enc_cumulative(123456), el.EPC_UNIT: b"\x01"})
    assert res.esv == el.ESV_GET_SNA
    assert res.props == [(0xE0, bytes.fromhex("0001E240")), (0xE1, b"\x01"), (0xD3, b"")]
    assert el.decode(el.encode(res)) == res


def test_cumulative_energy_formula():
    # kWh = E0 × D3 × unit(E1)
    assert el.cumulative_kwh(123456, 0x01) == pytest.approx(12345.6)
    assert el.cumulative_kwh(5, 0x0A, coefficient=3) == 150.0
    with pytest.raises(el.EchonetError, match="unit code 05"):
        el.cumulative_kwh(1, 0x05)


def test_negative_power_when_exporting():
    assert el.dec_instant_power(el.enc_instant_power(-250)) == -250
    assert el.enc_instant_power(-1) == b"\xff\xff\xff\xff"


def test_fixed_time_cumulative_roundtrip():
    when = dt.datetime(2026, 11, 25, 13, 30, 0)
    edt = el.enc_fixed_time(when, 98765)
    assert edt.hex().upper() == "07EA0B190D1E00" + "000181CD"
    assert el.dec_fixed_time(edt) == (when, 98765)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x10\x81\x00", "shorter than a header"),
        (bytes.fromhex("1082000105FF010288016201E700"), "EHD 1082"),
        (bytes.fromhex("1081000105FF010288016202E700"), "OPC says 2"),
        (bytes.fromhex("1081000102880105FF017201E704000004"), "runs past the end"),
        (GET_RES_E7 + b"\x00", "1 bytes after the last property"),
    ],
)
def test_malformed_frames_say_what_is_wrong(data, message):
    with pytest.raises(el.EchonetError, match=message):
        el.decode(data)
