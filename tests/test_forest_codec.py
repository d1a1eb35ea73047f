"""The forest station codec, with register and byte vectors (no serial port, no simulator)."""

from __future__ import annotations

import json
import random

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
)

from edge.sources.forest import codec as codec

pytestmark = pytest.mark.timeout(10)

T = 1_795_593_600  # 2026-11-25T04:40:00Z
#: A sample: time T.250, sample 65535, soil 23.4 %, deep probe not fitted, 65538 tips, tilt -1.00/-327.68 deg,
#: 3.712 V, no status bits, water level 1.234 m.
REGS = [0x6B06, 0x9580, 250, 0xFFFF, 234, 0xFFFF, 0x0001, 0x0002, 0xFF9C, 0x8000, 3712, 0, 1234]
#: The RTU reply of unit 1 to "read input registers 0..12" carrying REGS, written out byte by byte:
#: address, function, byte count, 13 big-endian registers, CRC-16/MODBUS low byte first.
FRAME = bytes.fromhex(
    "01 04 1a 6b 06 95 80 00 fa ff ff 00 ea ff ff 00 01 00 02 ff 9c 80 00 0e 80 00 00 04 d2 87 dd"
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
    # the request of the register map's worked example: 01 04 00 00 00 0D 31 CF
    assert crc16_modbus(bytes.fromhex("01040000000D")).to_bytes(2, "little") == bytes.fromhex("31CF")


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
    assert s.water_level_m == 1.234
    values, units = codec.reading_values(s, prev_tips=65530, res_x1000=200)
    assert values == {
        "soil_moisture_pct": 23.4,
        "rain_tips": 65538.0,
        "rain_mm": 1.6,
        "tilt_x_deg": -1.0,
        "tilt_y_deg": -327.68,
        "battery_v": 3.712,
        "water_level_m": 1.234,
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
        "water_level_m": "m",
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
    names = ["hi", "lo", "ms", "no", "soil", "deep", "tips_hi", "tips_lo", "tx", "ty", "batt", "status", "water"]
    base = dict(zip(names, [0x6B06, 0x9580, 0, 7, 312, 287, 0, 42, 12, 0xFFF6, 12610, 0, 0xFFFF], strict=True))
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
        ({"water": 0xFFFF}, {"water_level_m"}),
        ({"status": 0b0111}, {"rain_tips", "rain_mm", "tilt_x_deg", "tilt_y_deg", "soil_moisture_pct",
                              "soil_moisture_deep_pct"}),
    ],
)  # fmt: skip
def test_faulty_sensors_are_omitted(changes, missing):
    s = codec.decode_sample(_regs(**{"water": 1500, **changes}))  # a water-level sensor fitted: 1.5 m
    values, units = codec.reading_values(s, prev_tips=40, res_x1000=200)
    all_names = {"soil_moisture_pct", "soil_moisture_deep_pct", "rain_tips", "rain_mm", "tilt_x_deg",
                 "tilt_y_deg", "battery_v", "water_level_m", "status"}  # fmt: skip
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
        codec.decode_sample(REGS[:12])  # the old 12-register block
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
    size = codec.reply_size(4, 13)
    assert size == len(FRAME) == 31
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
    short = _frame(1, 4, bytes([4, 0, 1, 0, 2]))  # a good frame with 2 registers instead of 13
    assert codec.classify_reply(short, 1, 4, size) == codec.ReplyVerdict("ok", 0)
    write_echo = _frame(1, 0x10, bytes.fromhex("00000002"))
    assert codec.classify_reply(write_echo, 1, 0x10, codec.reply_size(0x10)) == codec.ReplyVerdict("ok", 0)


def test_crc16_is_the_reference_crc():
    rng = random.Random(3)
    for n in (0, 1, 2, 6, 29, 255):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert codec.crc16(data) == crc16_modbus(data)
    assert codec.crc_ok(FRAME)
    assert not codec.crc_ok(FRAME[:-1] + bytes([FRAME[-1] ^ 0x80]))
    assert not codec.crc_ok(FRAME[:3])


def test_requests_are_the_bytes_pymodbus_builds():
    """The master's request frames, against pymodbus (the simulator's framer) as an independent peer."""
    # the register map's worked example: unit 1, read input registers 0..12
    assert codec.read_registers(1, codec.FC_READ_INPUT, 0, 13).frame == bytes.fromhex("01040000000d31cf")
    peer = FramerRTU(DecodePDU(False))
    for unit, address, count in [(1, 0, 13), (247, 0x1FF0, 13), (3, 0, 4), (9, 0xFFFF, 1), (2, 100, 125)]:
        req = codec.read_registers(unit, codec.FC_READ_HOLDING, address, count)
        pdu = ReadHoldingRegistersRequest(address=address, count=count, dev_id=unit)
        assert req.frame == peer.buildFrame(pdu)
        assert (req.unit, req.function_code, req.reply_size) == (unit, 3, 5 + 2 * count)
        req = codec.read_registers(unit, codec.FC_READ_INPUT, address, count)
        pdu = ReadInputRegistersRequest(address=address, count=count, dev_id=unit)
        assert req.frame == peer.buildFrame(pdu)
    for values in ([0x6B06, 0x9580], [0], list(range(0xFF00, 0xFF00 + 123))):
        req = codec.write_registers(5, codec.HOLDING_RTC, values)
        pdu = WriteMultipleRegistersRequest(address=0, registers=values, dev_id=5)
        assert req.frame == peer.buildFrame(pdu)
        assert (req.function_code, req.reply_size) == (0x10, 8)
    bad = [
        lambda: codec.read_registers(0, 4, 0, 13),  # broadcast: no reply to wait for
        lambda: codec.read_registers(248, 4, 0, 13),
        lambda: codec.read_registers(1, 4, 0, 0),
        lambda: codec.read_registers(1, 4, 0, 126),
        lambda: codec.read_registers(1, 4, 0xFFFF, 2),
        lambda: codec.read_registers(1, 6, 0, 1),
        lambda: codec.write_registers(1, 0, []),
        lambda: codec.write_registers(1, 0, [0x10000]),
        lambda: codec.write_registers(1, 0, [0] * 124),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()


def test_reply_payloads_are_what_pymodbus_decodes():
    """Replies built by pymodbus (junk around them) parse into the payload pymodbus decodes from them."""
    rng = random.Random(4)
    peer = FramerRTU(DecodePDU(True))  # server side: builds responses
    for _ in range(200):
        unit = rng.randint(1, 247)
        regs = [rng.randrange(0x10000) for _ in range(rng.randint(1, 13))]
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        for fc, response in ((3, ReadHoldingRegistersResponse), (4, ReadInputRegistersResponse)):
            frame = peer.buildFrame(response(registers=regs, dev_id=unit))
            reply = codec.parse_reply(junk + frame, unit, fc, codec.reply_size(fc, len(regs)))
            if reply.garbage_bytes != len(junk):  # the junk happened to hold a good frame: not a vector
                continue
            assert (reply.kind, reply.registers, reply.problem) == ("ok", tuple(regs), None)
    echo = WriteMultipleRegistersResponse(address=0, count=2, dev_id=1)
    reply = codec.parse_reply(peer.buildFrame(echo), 1, 0x10, 8)
    assert (reply.kind, reply.echo, reply.registers) == ("ok", (0, 2), None)
    exc = ExceptionResponse(4, 2)
    exc.dev_id = 1
    reply = codec.parse_reply(peer.buildFrame(exc), 1, 4, 31)
    assert (reply.kind, reply.exception_code, reply.registers) == ("exception", 2, None)


def test_reply_vectors_with_payload():
    size = codec.reply_size(4, 13)
    reply = codec.parse_reply(b"\x8a\x00\x13" + FRAME + b"\xff", 1, 4, size)
    assert reply == codec.Reply("ok", 4, registers=tuple(REGS))
    assert reply.verdict == codec.ReplyVerdict("ok", 4)
    # a good frame with 2 registers instead of 13: ok, the registers as sent (the decoder rejects the count)
    short = _frame(1, 4, bytes([4, 0, 1, 0, 2]))
    assert codec.parse_reply(short, 1, 4, size) == codec.Reply("ok", registers=(1, 2))
    # a good CRC but an odd byte count: a whole frame whose data does not decode
    odd = codec.parse_reply(_frame(1, 4, bytes([3, 0, 1, 2])), 1, 4, size)
    assert (odd.kind, odd.registers) == ("ok", None) and "odd byte count 3" in (odd.problem or "")
    # a late reply: a good frame from the unit answering another function is garbage to this request, and said
    late = _frame(1, 3, bytes([8, 0x6B, 0x06, 0x95, 0x80, 0, 10, 0, 200]))
    assert codec.parse_reply(late, 1, 4, size) == codec.Reply("framing", len(late), late_function_code=3)
    assert codec.parse_reply(late + FRAME, 1, 4, size) == codec.Reply("ok", len(late), registers=tuple(REGS))
    assert codec.parse_reply(_frame(1, 0x83, b"\x02"), 1, 4, size).late_function_code == 0x83
    # ... but another unit's good frame is just junk
    assert codec.parse_reply(_frame(2, 3, bytes([2, 0, 1])), 1, 4, size) == codec.Reply("framing", 7)
    assert codec.parse_reply(b"", 1, 4, size) == codec.Reply("timeout")


def test_reply_reader_is_complete_at_the_first_good_frame():
    reader = codec.read_registers(1, codec.FC_READ_INPUT, 0, 13).reader()
    junk = b"\x01\x04\xff\x13"  # looks like a frame start: a 260-byte candidate that never completes
    for i, byte in enumerate(junk + FRAME):
        assert not reader.complete
        assert reader.feed(bytes([byte])) == (i == len(junk + FRAME) - 1)
    assert reader.reply() == codec.Reply("ok", len(junk), registers=tuple(REGS))
    # a damaged frame does not complete a reply: more may follow, so the adapter reads until its time is up
    reader = codec.read_registers(1, codec.FC_READ_INPUT, 0, 13).reader()
    assert not reader.feed(FRAME[:-1] + bytes([FRAME[-1] ^ 1]))
    assert reader.reply() == codec.Reply("crc", 0)
    # nor does an exception reply to another unit
    assert not reader.feed(_frame(2, 0x84, b"\x02"))
    assert reader.feed(_frame(1, 0x84, b"\x02"))
    assert reader.reply() == codec.Reply("exception", 31 + 5, exception_code=2)


def _classify_reference(raw: bytes, unit: int, fc: int, size: int) -> tuple[str, int]:
    """The counting rules as the gateway first wrote them (``classify_reply`` beside pymodbus' client), kept
    here as the specification of the one parser that replaced them."""
    if not raw:
        return "timeout", 0
    n = len(raw)

    def good(frame: bytes) -> bool:
        return len(frame) >= 4 and crc16_modbus(frame[:-2]).to_bytes(2, "little") == frame[-2:]

    for k in range(n - 1):
        if raw[k] != unit:
            continue
        got_fc = raw[k + 1]
        if got_fc == fc:
            got = raw[k + 2] + 5 if got_fc in (3, 4) and k + 2 < n else size
            if k + got <= n and good(raw[k : k + got]):
                return "ok", n - got
        elif got_fc == fc | 0x80 and k + 5 <= n and good(raw[k : k + 5]):
            return "exception", n - 5
    for k in range(n):
        if raw[k] == unit and k + 1 < n and raw[k + 1] == fc and k + size <= n:
            return "crc", n - size
    return "framing", n


def test_one_parse_keeps_the_counting_rules_however_the_bytes_arrive():
    """Random replies (good, damaged, truncated, late, another unit's, junk), fed whole and in random chunks
    until the reader is complete, as the adapter feeds it: the verdict is the reference rules' over the bytes
    read."""
    rng = random.Random(5)

    def frame(unit: int, fc: int, count: int) -> bytes:
        if rng.random() < 0.2:
            f = _frame(unit, fc | 0x80, bytes([rng.randint(1, 4)]))
        elif fc in (3, 4):
            f = _frame(unit, fc, bytes([2 * count]) + bytes(rng.randrange(256) for _ in range(2 * count)))
        else:
            f = _frame(unit, fc, bytes(rng.randrange(256) for _ in range(4)))
        if rng.random() < 0.2:
            i = rng.randrange(len(f))
            f = f[:i] + bytes([f[i] ^ 1 << rng.randrange(8)]) + f[i + 1 :]
        return f[: rng.randrange(len(f))] if rng.random() < 0.1 else f

    for _ in range(5000):
        unit, fc, count = rng.choice([1, 2]), rng.choice([3, 4, 16]), rng.choice([1, 4, 13])
        size = codec.reply_size(fc, count)
        raw = b"".join(
            frame(rng.choice([unit, unit, 3]), rng.choice([fc, fc, 3, 4, 16]), rng.choice([count, count, 2]))
            if rng.random() < 0.5
            else bytes(rng.choice([unit, fc, rng.randrange(256)]) for _ in range(rng.randint(1, 8)))
            for _ in range(rng.randrange(4))
        )
        want = codec.ReplyVerdict(*_classify_reference(raw, unit, fc, size))
        assert codec.classify_reply(raw, unit, fc, size) == want
        reader, i = codec.ReplyReader(unit, fc, size), 0
        while i < len(raw) and not reader.complete:
            j = min(len(raw), i + rng.randint(1, 12))
            reader.feed(raw[i:j])
            i = j
        got = reader.reply()
        assert got.verdict == codec.ReplyVerdict(*_classify_reference(raw[:i], unit, fc, size)), raw.hex()
        if got.kind == "ok" and fc in (3, 4) and got.problem is None:
            assert got.registers is not None


# --- derived values ------------------------------------------------------------------------------------------

T0_MS = 1_795_593_600_000 + 17_250  # a sample time 17.25 s into a minute
MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_GAP_MS = 24 * HOUR_MS


def _sample(no: int, ts: int, tips: int, tx: int = 0, ty: int = 0, status: int = 0) -> codec.Sample:
    return codec.Sample(
        seconds=ts // 1000, millis=ts % 1000, sample_no=no & 0xFFFF, soil_raw=300, soil_deep_raw=310,
        rain_tips=tips, tilt_x_raw=tx, tilt_y_raw=ty, battery_mv=3900, status=status, water_mm=1500,
    )  # fmt: skip


def _run(samples: list[codec.Sample], dry_gap_ms: int = DAY_GAP_MS, *, via_json: bool = False) -> list[dict]:
    """Feed samples through next_reading; ``via_json``: as if the agent restarted before every sample."""
    state, out = None, []
    for s in samples:
        if via_json and state is not None:
            state = codec.StationState.from_json(json.loads(json.dumps(state.to_json())))
        values, units, state = codec.next_reading(s, state, 200, dry_gap_ms)
        assert set(units) == set(values) - {"status"}
        out.append(values)
    return out


def _reference(samples: list[codec.Sample], dry_gap_ms: int = DAY_GAP_MS) -> list[dict]:
    """The definitions of docs/forest.md applied to the whole stream at once (no windows, no state)."""
    out = []
    rain = []  # (ts, µm) of every rain-ok sample
    prev_tips = None
    for i, s in enumerate(samples):
        v: dict[str, float] = {}
        ts, minute = s.ts_ms, s.ts_ms // MIN_MS
        if s.rain_ok:
            rain.append((ts, codec.rain_um(prev_tips, s.rain_tips, 200)))
            prev_tips = s.rain_tips
            v["rain_intensity_mm_h"] = sum(um for t, um in rain if minute - 59 <= t // MIN_MS <= minute) / 1000
            event, last = 0, None
            for t, um in rain:
                if last is not None and t - last >= dry_gap_ms:
                    event, last = 0, None
                if um:
                    event, last = event + um, t
            v["rain_cumulative_mm"] = event / 1000
        if s.tilt_ok:
            seen = [x for x in samples[: i + 1] if x.tilt_ok and x.ts_ms // MIN_MS >= minute - 60]
            ref = seen[0]  # the first tilt sample of the oldest minute in the window
            span = ts - ref.ts_ms
            if span >= 50 * MIN_MS:
                v["tilt_rate_x_deg_h"] = (s.tilt_x_raw - ref.tilt_x_raw) * 36_000 / span
                v["tilt_rate_y_deg_h"] = (s.tilt_y_raw - ref.tilt_y_raw) * 36_000 / span
        out.append(v)
    return out


DERIVED = ("rain_intensity_mm_h", "rain_cumulative_mm", "tilt_rate_x_deg_h", "tilt_rate_y_deg_h")


def _derived(values: list[dict]) -> list[dict]:
    return [{k: v[k] for k in DERIVED if k in v} for v in values]


def test_rain_intensity_is_the_rain_of_the_current_and_59_previous_minutes():
    # one sample a minute; 1 tip (0.2 mm) at each of the first 10 samples, then dry
    samples = [_sample(n, T0_MS + n * MIN_MS, min(n, 10)) for n in range(80)]
    got = _run(samples)
    assert got[0]["rain_intensity_mm_h"] == 0.0  # the first sample ever: no baseline
    assert got[10]["rain_intensity_mm_h"] == 2.0  # 10 tips × 0.2 mm
    # at one sample a minute the window is the last 60 samples (60 intervals): samples 1..60 at sample 60
    assert got[60]["rain_intensity_mm_h"] == 2.0  # sample 1 (the first rain) is 59 minutes back
    assert got[61]["rain_intensity_mm_h"] == 1.8  # ... and now 60: out of the window
    assert got[69]["rain_intensity_mm_h"] == 0.2  # sample 10, the last rain, 59 minutes back
    assert got[70]["rain_intensity_mm_h"] == 0.0
    assert all(v["rain_cumulative_mm"] == 2.0 for v in got[10:])  # the event goes on (not 24 h dry yet)
    assert _derived(got) == _reference(samples)


def test_intensity_sums_whole_minutes_at_a_fast_sample_rate():
    # a sample every 7 s with a tip each; the window is minutes, so it holds 59 whole minutes + the current one
    samples = [_sample(n, T0_MS + n * 7000, n) for n in range(1200)]
    got = _run(samples)
    assert _derived(got) == _reference(samples)
    last_min = samples[-1].ts_ms // MIN_MS
    in_window = sum(1 for s in samples[1:] if s.ts_ms // MIN_MS >= last_min - 59)
    assert got[-1]["rain_intensity_mm_h"] == in_window * 200 / 1000


def test_rain_event_ends_after_the_dry_gap():
    hour = HOUR_MS
    # tips: 5 in the first hour, dry until 30 h, then 2 more
    times = [0, hour // 2, hour, 12 * hour, hour + DAY_GAP_MS - 1, hour + DAY_GAP_MS, 30 * hour, 31 * hour]
    tips = [0, 3, 5, 5, 5, 5, 6, 7]
    samples = [_sample(n, T0_MS + t, k) for n, (t, k) in enumerate(zip(times, tips, strict=True))]
    got = [v["rain_cumulative_mm"] for v in _run(samples)]
    assert got == [0.0, 0.6, 1.0, 1.0, 1.0, 0.0, 0.2, 0.4]  # 24 h after the last rain: the event is over
    # configurable: with a 6 h gap the event is already over at 12 h
    got6 = [v["rain_cumulative_mm"] for v in _run(samples, dry_gap_ms=6 * hour)]
    assert got6 == [0.0, 0.6, 1.0, 0.0, 0.0, 0.0, 0.2, 0.4]
    assert _derived(_run(samples, 6 * hour)) == _reference(samples, 6 * hour)


def test_tilt_rate_over_the_trailing_hour():
    # tilt x rises 0.01° a minute (0.6 deg/h), y falls 0.02° a minute; a sample every 20 s, 3 a minute
    samples = [_sample(n, T0_MS + n * 20_000, 0, tx=n // 3, ty=-2 * (n // 3)) for n in range(300)]
    got = _run(samples)
    first_rate = next(i for i, v in enumerate(got) if "tilt_rate_x_deg_h" in v)
    assert samples[first_rate].ts_ms - samples[0].ts_ms >= 50 * MIN_MS  # omitted for the first 50 minutes
    assert samples[first_rate - 1].ts_ms - samples[0].ts_ms < 50 * MIN_MS
    late = got[-1]
    # the reference: the first sample of the minute 60 minutes back; tilt changes by one step a minute
    assert late["tilt_rate_x_deg_h"] == pytest.approx(0.6, abs=0.02)
    assert late["tilt_rate_y_deg_h"] == pytest.approx(-1.2, abs=0.04)
    ref = next(s for s in samples if s.ts_ms // MIN_MS == samples[-1].ts_ms // MIN_MS - 60)
    span = samples[-1].ts_ms - ref.ts_ms
    assert late["tilt_rate_x_deg_h"] == (samples[-1].tilt_x_raw - ref.tilt_x_raw) * 36_000 / span  # one division
    assert _derived(got) == _reference(samples)


def test_faults_omit_derived_values_and_the_windows_carry_on():
    samples = []
    for n in range(200):
        status = 0
        if 40 <= n < 60:
            status |= codec.STATUS_RAIN_FAULT
        if 90 <= n < 150:
            status |= codec.STATUS_TILT_FAULT
        samples.append(_sample(n, T0_MS + n * 30_000, n // 2, tx=n, ty=0, status=status))
    got = _run(samples)
    for n, v in enumerate(got):
        assert ("rain_intensity_mm_h" in v) == ("rain_cumulative_mm" in v) == (not 40 <= n < 60)
        if 90 <= n < 150:
            assert "tilt_rate_x_deg_h" not in v
    assert got[60]["rain_cumulative_mm"] == 30 * 200 / 1000  # the rain during the fault is in the next reading
    assert "tilt_rate_x_deg_h" in got[150]  # the window kept its older tilt samples through the fault
    assert _derived(got) == _reference(samples)


def test_state_round_trips_through_json_so_a_restart_changes_nothing():
    rng = random.Random(5)
    samples, tips, ts, tx, ty = [], 0, T0_MS, 0, 0
    for n in range(600):
        ts += rng.choice([20_000, 60_000, 60_000, 61_000, 300_000, 2 * HOUR_MS if n == 300 else 60_000])
        tips += rng.choice([0, 0, 1, 3, 8]) if 100 < n < 400 else 0
        tx, ty = tx + rng.choice([0, 1, 2]), ty + rng.choice([-1, 0, 0])
        status = codec.STATUS_TILT_FAULT if 200 < n < 205 else 0
        samples.append(_sample(n, ts, tips, tx, ty, status))
    uninterrupted = _run(samples, 6 * HOUR_MS)
    assert _run(samples, 6 * HOUR_MS, via_json=True) == uninterrupted
    assert _derived(uninterrupted) == _reference(samples, 6 * HOUR_MS)
    assert max(v["rain_intensity_mm_h"] for v in uninterrupted) > 30
    # the committed state stays compact: at most 60 rain minutes and 61 tilt minutes
    _, _, state = codec.next_reading(samples[0], None, 200, DAY_GAP_MS)
    for s in samples[1:]:
        _, _, state = codec.next_reading(s, state, 200, DAY_GAP_MS)
        assert len(state.rain_min) <= 60 and len(state.tilt_min) <= 61
    assert len(json.dumps(state.to_json())) < 3000


def test_v1_state_migrates_with_empty_windows():
    old = {"sample_no": 7, "ts": T0_MS, "tips": 40}
    st = codec.StationState.from_json(old)
    assert (st.sample_no, st.ts, st.tips, st.rain_min, st.tilt_min, st.event_um) == (7, T0_MS, 40, (), (), 0)
    values, _, new = codec.next_reading(_sample(8, T0_MS + MIN_MS, 42), st, 200, DAY_GAP_MS)
    assert values["rain_mm"] == 0.4 and values["rain_intensity_mm_h"] == 0.4 and values["rain_cumulative_mm"] == 0.4
    assert codec.StationState.from_json(new.to_json()) == new
