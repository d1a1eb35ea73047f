"""ECHONET Lite frames (EDATA format 1), sans-I/O: bytes ↔ :class:`Frame`, and the smart meter's property codecs.

For the Wi-SUN module emulator (:mod:`firmware_sim.meter.sim`), which must answer momonga's requests as a
low-voltage smart meter would (Get → Get_Res/Get_SNA, SetC → Set_Res/SetC_SNA, INF of the fixed-time value). Written by hand because no maintained PyPI package builds *meter-side* frames: momonga and the other
B-route libraries implement the controller side only. Pure functions, no I/O; tested against the byte vectors of
``shared/reference/broute-echonet.md``.

Frame: ``EHD 10 81 | TID (2) | SEOJ (3) | DEOJ (3) | ESV (1) | OPC (1) | {EPC (1) PDC (1) EDT (PDC)} × OPC``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

EHD = b"\x10\x81"
CONTROLLER_EOJ = bytes.fromhex("05FF01")
SMART_METER_EOJ = bytes.fromhex("028801")

ESV_SETC = 0x61
ESV_SET_RES = 0x71
ESV_SETC_SNA = 0x51
ESV_GET = 0x62
ESV_GET_RES = 0x72
ESV_GET_SNA = 0x52
ESV_INF = 0x73
ESV_INFC = 0x74
ESV_INFC_RES = 0x7A

EPC_INSTANT_POWER = 0xE7
EPC_INSTANT_CURRENT = 0xE8
EPC_CUMULATIVE_NORMAL = 0xE0
EPC_CUMULATIVE_REVERSE = 0xE3
EPC_UNIT = 0xE1
EPC_COEFFICIENT = 0xD3
EPC_EFFECTIVE_DIGITS = 0xD7
EPC_FIXED_TIME_NORMAL = 0xEA
EPC_FIXED_TIME_REVERSE = 0xEB
EPC_OPERATION_STATUS = 0x80
EPC_HISTORY_1_NORMAL = 0xE2
EPC_HISTORY_1_REVERSE = 0xE4
EPC_HISTORY_1_DAY = 0xE5

#: E0/E3/E2/E4/EA/EB value meaning "no data" (e.g. a 30-min slot before the meter was installed, or in the future).
NO_DATA = 0xFFFFFFFE
#: Half-hour slots in one day of E2/E4 history.
SLOTS_PER_DAY = 48
#: E5 accepts 0 (today) .. 99 days back.
MAX_HISTORY_DAY = 99

#: E1 code → kWh per count.
UNITS_KWH: dict[int, float] = {
    0x00: 1.0, 0x01: 0.1, 0x02: 0.01, 0x03: 0.001, 0x04: 0.0001,
    0x0A: 10.0, 0x0B: 100.0, 0x0C: 1000.0, 0x0D: 10000.0,
}  # fmt: skip


class EchonetError(ValueError):
    """Bytes that are not a well-formed ECHONET Lite frame (format 1)."""


@dataclass(frozen=True)
class Frame:
    tid: int
    seoj: bytes
    deoj: bytes
    esv: int
    props: list[tuple[int, bytes]] = field(default_factory=list)  # (EPC, EDT); EDT empty in a Get

    def get(self, epc: int) -> bytes | None:
        return next((edt for e, edt in self.props if e == epc), None)


def encode(frame: Frame) -> bytes:
    if not 0 <= frame.tid <= 0xFFFF:
        raise EchonetError(f"TID out of range: {frame.tid}")
    if len(frame.seoj) != 3 or len(frame.deoj) != 3:
        raise EchonetError("EOJs are 3 bytes")
    if len(frame.props) > 0xFF:
        raise EchonetError("at most 255 properties")
    out = bytearray(EHD)
    out += frame.tid.to_bytes(2, "big") + frame.seoj + frame.deoj + bytes([frame.esv, len(frame.props)])
    for epc, edt in frame.props:
        if len(edt) > 0xFF:
            raise EchonetError(f"EDT of EPC {epc:02X} longer than 255 bytes")
        out += bytes([epc, len(edt)]) + edt
    return bytes(out)


def decode(data: bytes) -> Frame:
    if len(data) < 12:
        raise EchonetError(f"frame of {len(data)} bytes is shorter than a header (12)")
    if data[:2] != EHD:
        raise EchonetError(f"not ECHONET Lite format 1 (EHD {data[:2].hex().upper()})")
    tid = int.from_bytes(data[2:4], "big")
    seoj, deoj, esv, opc = data[4:7], data[7:10], data[10], data[11]
    props: list[tuple[int, bytes]] = []
    i = 12
    for _ in range(opc):
        if i + 2 > len(data):
            raise EchonetError(f"OPC says {opc} properties, the frame ends after {len(props)}")
        epc, pdc = data[i], data[i + 1]
        if i + 2 + pdc > len(data):
            raise EchonetError(f"EPC {epc:02X}: PDC {pdc} runs past the end of the frame")
        props.append((epc, bytes(data[i + 2 : i + 2 + pdc])))
        i += 2 + pdc
    if i != len(data):
        raise EchonetError(f"{len(data) - i} bytes after the last property")
    return Frame(tid, bytes(seoj), bytes(deoj), esv, props)


def get_request(tid: int, epcs: list[int], deoj: bytes = SMART_METER_EOJ) -> Frame:
    return Frame(tid, CONTROLLER_EOJ, deoj, ESV_GET, [(e, b"") for e in epcs])


def response(request: Frame, values: dict[int, bytes]) -> Frame:
    """The meter's answer to a Get: Get_Res when it has every property asked for, else Get_SNA (the standard
    says: the ones it has with their values, the others with PDC 0)."""
    props = [(epc, values.get(epc, b"")) for epc, _ in request.props]
    esv = ESV_GET_RES if all(epc in values for epc, _ in request.props) else ESV_GET_SNA
    return Frame(request.tid, request.deoj, request.seoj, esv, props)


def set_response(request: Frame, accepted: set[int]) -> Frame:
    """The meter's answer to a SetC: Set_Res (every EPC with PDC 0) when all were accepted, else SetC_SNA where
    the refused ones keep their EDT, as the standard says."""
    ok = all(epc in accepted for epc, _ in request.props)
    props = [(epc, b"" if epc in accepted else edt) for epc, edt in request.props]
    return Frame(request.tid, request.deoj, request.seoj, ESV_SET_RES if ok else ESV_SETC_SNA, props)


def notification(tid: int, props: list[tuple[int, bytes]], esv: int = ESV_INF) -> Frame:
    """An INF (or INFC) from the meter to the controller, e.g. the fixed-time value at :00/:30."""
    return Frame(tid, SMART_METER_EOJ, CONTROLLER_EOJ, esv, props)


# --- property values ----------------------------------------------------------------------------------------


def enc_instant_power(watts: int) -> bytes:
    return watts.to_bytes(4, "big", signed=True)


def dec_instant_power(edt: bytes) -> int:
    return int.from_bytes(edt, "big", signed=True)


def enc_cumulative(count: int) -> bytes:
    """E0/E3: unsigned 4 bytes (the meter wraps at its effective digits, D7)."""
    return (count % 100_000_000).to_bytes(4, "big")


def dec_cumulative(edt: bytes) -> int:
    return int.from_bytes(edt, "big")


def cumulative_kwh(count: int, unit_code: int, coefficient: int = 1) -> float:
    """kWh = E0 × D3 × unit(E1)."""
    try:
        return count * coefficient * UNITS_KWH[unit_code]
    except KeyError:
        raise EchonetError(f"unknown E1 unit code {unit_code:02X}") from None


def enc_fixed_time(when: dt.datetime, count: int) -> bytes:
    """EA/EB: year (2) month day hour minute second, then the cumulative count (4)."""
    return (
        when.year.to_bytes(2, "big")
        + bytes([when.month, when.day, when.hour, when.minute, when.second])
        + enc_cumulative(count)
    )


def dec_fixed_time(edt: bytes) -> tuple[dt.datetime, int]:
    if len(edt) != 11:
        raise EchonetError(f"EA/EB is 11 bytes, got {len(edt)}")
    when = dt.datetime(int.from_bytes(edt[:2], "big"), edt[2], edt[3], edt[4], edt[5], edt[6])
    return when, dec_cumulative(edt[7:])


def enc_history_1(day: int, counts: list[int | None]) -> bytes:
    """E2/E4: the day (2 bytes, as set by E5) then 48 half-hour cumulative counts from 00:00; None → no data."""
    if len(counts) != SLOTS_PER_DAY:
        raise EchonetError(f"E2/E4 carries {SLOTS_PER_DAY} slots, got {len(counts)}")
    return day.to_bytes(2, "big") + b"".join(
        NO_DATA.to_bytes(4, "big") if c is None else enc_cumulative(c) for c in counts
    )


def dec_history_1(edt: bytes) -> tuple[int, list[int | None]]:
    if len(edt) != 2 + 4 * SLOTS_PER_DAY:
        raise EchonetError(f"E2/E4 is {2 + 4 * SLOTS_PER_DAY} bytes, got {len(edt)}")
    raw = [int.from_bytes(edt[2 + 4 * i : 6 + 4 * i], "big") for i in range(SLOTS_PER_DAY)]
    return int.from_bytes(edt[:2], "big"), [None if v == NO_DATA else v for v in raw]


def enc_coefficient(coefficient: int) -> bytes:
    """D3: unsigned 4 bytes (1 to 999999)."""
    return coefficient.to_bytes(4, "big")


def enc_current(r_deciamps: int, t_deciamps: int) -> bytes:
    """E8: R phase then T phase, signed 2 bytes each, 0.1 A."""
    return r_deciamps.to_bytes(2, "big", signed=True) + t_deciamps.to_bytes(2, "big", signed=True)
