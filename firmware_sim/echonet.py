"""ECHONET Lite frames (EDATA format 1), sans-I/O: bytes ↔ :class:`Frame`, and the smart meter's property codecs.

For the Wi-SUN module emulator (issue 3), which must answer momonga's requests as a low-voltage smart meter
would. Written by hand because no maintained PyPI package builds *meter-side* frames: momonga and the other
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
