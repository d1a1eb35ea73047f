"""The forest station codec, with register and byte vectors (no serial port, no simulator)."""

from __future__ import annotations

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadInputRegistersResponse

from edge.sources import forest_codec as codec

pytestmark = pytest.mark.timeout(10)

T = 1_795_593_600  # 2026-11-25T04:40:00Z
#: A sample: time T.250, sample 65535, soil 23.4 %, deep probe not fitted, 65538 tips, tilt -1.00/-327.68 deg,
#: 3.712 V, no status bits.
REGS = [0x6B06, 0x9580, 250, 0xFFFF, 234, 0xFFFF, 0x0001, 0x0002, 0xFF9C, 0x8000, 3712, 0]
#: The RTU reply of unit 1 to "read input registers 0..11" carrying REGS, written out byte by byte:
#: address, function, byte count, 12 big-endian registers, CRC-16/MODBUS low byte first.
FRAME = bytes.fromhex(
    "01 04 18 6b 06 95 80 00 fa ff ff 00 ea ff ff 00 01 00 02 ff 9c 80 00 0e 80 00 00 58 0d"
)


def crc16_modbus(data: bytes) -> int:
    """Bitwise CRC-16/MODBUS, written from the spec (poly 0xA001 reflected, init 0xFFFF) for the vectors."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_crc_reference_vector():
    # The classic example from the Modbus serial line guide: 01 03 00 00 00 0A → CRC bytes C5 CD.
    assert crc16_modbus(bytes.fromhex("01030000000A")).to_bytes(2, "little") == bytes.fromhex("C5CD")
    assert crc16_modbus(FRAME[:-2]).to_bytes(2, "little") == FRAME[-2:]


def test_full_rtu_frame_decodes_via_pymodbus_then_codec():
    framer = FramerRTU(DecodePDU(False))  # client side: decodes responses
    used, pdu = framer.handleFrame(FRAME, 1, 0)
    assert used == len(FRAME)
    assert isinstance(pdu, ReadInputRegistersResponse)
    assert pdu.dev_id == 1
    assert list(pdu.registers) == REGS

    s = codec.decode_sample(list(pdu.registers))
    assert s.seconds == T
    assert s.millis == 250
    assert s.ts_ms == T * 1000 + 250
    assert s.sample_no == 65535
    assert s.rain_tips == 65538  # hi word first: 0x0001_0002
    assert s.tilt_x_deg == -1.0
    assert s.tilt_y_deg == -327.68
    values, units = codec.reading_values(s, prev_tips=65530, res_x1000=200)
    assert values == {
        "soil_moisture_pct": 23.4,
        "rain_tips": 65538.0,
        "rain_mm": 1.6,
        "tilt_x_deg": -1.0,
        "tilt_y_deg": -327.68,
        "battery_v": 3.712,
        "status": 0.0,
    }
    assert "soil_moisture_deep_pct" not in values  # 0xFFFF: probe not fitted
    assert units == {
        "soil_moisture_pct": "%VWC",
        "rain_tips": "count",
        "rain_mm": "mm",
        "tilt_x_deg": "deg",
        "tilt_y_deg": "deg",
        "battery_v": "V",
    }


def test_pymodbus_builds_the_same_bytes():
    pdu = ReadInputRegistersResponse(registers=REGS, dev_id=1)
    assert FramerRTU(DecodePDU(True)).buildFrame(pdu) == FRAME


def test_corrupted_crc_is_not_decoded():
    bad = FRAME[:-1] + bytes([FRAME[-1] ^ 0x01])
    _, pdu = FramerRTU(DecodePDU(False)).handleFrame(bad, 1, 0)
    assert pdu is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [(0x0000, 0), (0x0001, 1), (0x7FFF, 32767), (0x8000, -32768), (0xFF9C, -100), (0xFFFF, -1)],
)
def test_int16(raw, value):
    assert codec.int16(raw) == value


def test_u32_and_encode_time_round_trip():
    assert codec.encode_time(T) == [0x6B06, 0x9580]
    assert codec.u32(*codec.encode_time(T)) == T
    assert codec.encode_time(0) == [0, 0]
    assert codec.encode_time(0xFFFFFFFF) == [0xFFFF, 0xFFFF]
    assert codec.u32(0xFFFF, 0x0000) == 0xFFFF0000  # the high word is the high word
    with pytest.raises(ValueError):
        codec.encode_time(-1)
    with pytest.raises(ValueError):
        codec.encode_time(1 << 32)


def _regs(**changes: int) -> list[int]:
    names = ["hi", "lo", "ms", "no", "soil", "deep", "tips_hi", "tips_lo", "tx", "ty", "batt", "status"]
    base = dict(zip(names, [0x6B06, 0x9580, 0, 7, 312, 287, 0, 42, 12, 0xFFF6, 12610, 0], strict=True))
    base.update(changes)
    return [base[n] for n in names]


def test_typical_sample_values():
    values, _ = codec.reading_values(codec.decode_sample(_regs()), prev_tips=40, res_x1000=200)
    assert values == {
        "soil_moisture_pct": 31.2,
        "soil_moisture_deep_pct": 28.7,
        "rain_tips": 42.0,
        "rain_mm": 0.4,
        "tilt_x_deg": 0.12,
        "tilt_y_deg": -0.1,
        "battery_v": 12.61,
        "status": 0.0,
    }


@pytest.mark.parametrize(
    ("changes", "missing"),
    [
        ({"status": codec.STATUS_RAIN_FAULT}, {"rain_tips", "rain_mm"}),
        ({"status": codec.STATUS_TILT_FAULT}, {"tilt_x_deg", "tilt_y_deg"}),
        ({"status": codec.STATUS_SOIL_FAULT}, {"soil_moisture_pct", "soil_moisture_deep_pct"}),
        ({"soil": 0xFFFF}, {"soil_moisture_pct"}),
        ({"deep": 0xFFFF}, {"soil_moisture_deep_pct"}),
        ({"status": 0b0111}, {"rain_tips", "rain_mm", "tilt_x_deg", "tilt_y_deg", "soil_moisture_pct",
                              "soil_moisture_deep_pct"}),
    ],
)  # fmt: skip
def test_faulty_sensors_are_omitted(changes, missing):
    s = codec.decode_sample(_regs(**changes))
    values, units = codec.reading_values(s, prev_tips=40, res_x1000=200)
    all_names = {"soil_moisture_pct", "soil_moisture_deep_pct", "rain_tips", "rain_mm", "tilt_x_deg",
                 "tilt_y_deg", "battery_v", "status"}  # fmt: skip
    assert set(values) == all_names - missing
    assert set(units) == set(values) - {"status"}
    assert values["status"] == float(s.status)


def test_clock_unset_bit():
    assert codec.decode_sample(_regs(status=codec.STATUS_CLOCK_UNSET)).clock_unset
    assert not codec.decode_sample(_regs()).clock_unset


@pytest.mark.parametrize(
    ("prev", "tips", "res", "mm"),
    [
        (None, 500, 200, 0.0),  # very first sample ever: no baseline
        (40, 42, 200, 0.4),
        (42, 42, 200, 0.0),
        (100, 3, 200, 0.6),  # counter went backwards (station power cycle): all of the new count
        (10, 13, 200, 0.6),  # 3 * 200 / 1000, not 3 * 0.2 (= 0.6000000000000001)
        (0, 7, 254, 1.778),
        (0xFFFFFFF0, 0xFFFFFFFF, 200, 3.0),
    ],
)
def test_rain_mm(prev, tips, res, mm):
    assert codec.rain_mm(prev, tips, res) == mm


def test_malformed_blocks_are_rejected():
    with pytest.raises(codec.CodecError):
        codec.decode_sample(REGS[:10])  # pymodbus accepts a short reply; the codec does not
    with pytest.raises(codec.CodecError):
        codec.decode_sample([*REGS, 0])
    with pytest.raises(codec.CodecError):
        codec.decode_sample(_regs(ms=1000))
    with pytest.raises(codec.CodecError):
        codec.decode_holding([0, 0, 10])
    with pytest.raises(codec.CodecError):
        codec.decode_holding([0, 0, 10, 0])


def test_holding_block():
    info = codec.decode_holding([0x6B06, 0x9580, 600, 200])
    assert info.rtc_seconds == T
    assert info.sample_interval_s == 60.0
    assert info.rain_res_x1000 == 200


@pytest.mark.parametrize(
    ("prev", "new", "elapsed", "interval", "missed"),
    [
        (7, 8, 1.0, 1.0, 0),
        (7, 7, 1.0, 1.0, 0),
        (7, 10, 3.0, 1.0, 2),
        (65535, 0, 1.0, 1.0, 0),  # wraps
        (65534, 1, 3.0, 1.0, 2),
        (500, 3, 60.0, 60.0, 0),  # went back: the station restarted, not a gap of 65038
        (500, 3, None, None, 0),
        (7, 20, None, None, 12),
    ],
)
def test_missed_samples(prev, new, elapsed, interval, missed):
    assert codec.missed_samples(prev, new, elapsed, interval) == missed


def _frame(unit: int, fc: int, payload: bytes) -> bytes:
    body = bytes([unit, fc]) + payload
    return body + crc16_modbus(body).to_bytes(2, "little")


def test_classify_reply_vectors():
    size = codec.reply_size(4, 12)
    assert size == len(FRAME) == 29
    assert codec.classify_reply(FRAME, 1, 4, size) == codec.ReplyVerdict("ok", 0)
    assert codec.classify_reply(b"\x8a\x00\x13" + FRAME, 1, 4, size) == codec.ReplyVerdict("ok", 3)
    assert codec.classify_reply(FRAME + b"\xff", 1, 4, size) == codec.ReplyVerdict("ok", 1)
    assert codec.classify_reply(b"", 1, 4, size) == codec.ReplyVerdict("timeout", 0)
    bad_crc = FRAME[:-2] + b"\x00\x00"
    assert codec.classify_reply(bad_crc, 1, 4, size) == codec.ReplyVerdict("crc", 0)
    assert codec.classify_reply(b"\x00\x01" + bad_crc, 1, 4, size) == codec.ReplyVerdict("crc", 2)
    assert codec.classify_reply(b"\x13\x37\x00", 1, 4, size) == codec.ReplyVerdict("framing", 3)
    assert codec.classify_reply(FRAME[:20], 1, 4, size) == codec.ReplyVerdict("framing", 20)
    exc = _frame(1, 0x84, b"\x02")
    assert codec.classify_reply(exc, 1, 4, size) == codec.ReplyVerdict("exception", 0)
    # another unit's reply is not ours
    assert codec.classify_reply(FRAME, 2, 4, size).kind == "framing"
    short = _frame(1, 4, bytes([4, 0, 1, 0, 2]))  # a good frame with 2 registers instead of 12
    assert codec.classify_reply(short, 1, 4, size) == codec.ReplyVerdict("ok", 0)
    write_echo = _frame(1, 0x10, bytes.fromhex("00000002"))
    assert codec.classify_reply(write_echo, 1, 0x10, codec.reply_size(0x10)) == codec.ReplyVerdict("ok", 0)
