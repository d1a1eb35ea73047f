"""Weighing-indicator lines: byte vectors in, weight frames and counted errors out (no serial port)."""

from __future__ import annotations

import pytest

from edge.sources.common.lines import LineSplitter
from edge.sources.truck.weighing import (
    WeighingDecoder,
    WeighingFormatError,
    WeightFrame,
    parse_weight_line,
)


@pytest.mark.parametrize(
    ("line", "frame"),
    [
        (b"ST,GS,+00123.45kg", WeightFrame("ST", "GS", 123.45)),
        (b"US,NT,-00001.50kg", WeightFrame("US", "NT", -1.5)),
        (b"ST,NT,+0001230kg", WeightFrame("ST", "NT", 1230.0)),
        (b"ST,GS,+001.230 t", WeightFrame("ST", "GS", 1230.0)),  # tonnes, with the space some indicators send
        (b"ST,GS,+0000000kg", WeightFrame("ST", "GS", 0.0)),
        (b"ST,GS,-0000000kg", WeightFrame("ST", "GS", 0.0)),  # no -0.0
        (b"OL,GS,+9999999kg", WeightFrame("OL", "GS", None)),  # a full-scale number with OL is not a weight
        (b"OL,NT,+OL     kg", WeightFrame("OL", "NT", None)),
        (b"OL,GS,", WeightFrame("OL", "GS", None)),
    ],
)
def test_valid_lines(line: bytes, frame: WeightFrame) -> None:
    assert parse_weight_line(line) == frame


@pytest.mark.parametrize(
    "line",
    [
        b"ST,GS,+001",  # truncated
        b"ST,GS,+00123.45",  # no unit
        b"ST,GS,+00123.45lb",  # unknown unit
        b"XX,GS,+00123.45kg",  # unknown header
        b"ST,TR,+00123.45kg",  # unknown mode
        b"ST;GS;+00123.45kg",  # wrong separator
        b"ST,GS,00123.45kg",  # no sign
        b"ST,GS,+0012A.45kg",
        b"\x00\xff\x13ST",
        b"",
    ],
)
def test_bad_lines_raise(line: bytes) -> None:
    with pytest.raises(WeighingFormatError):
        parse_weight_line(line)


def test_splitter_handles_lines_split_across_reads() -> None:
    sp = LineSplitter(max_len=64)
    data = b"ST,GS,+00123.45kg\r\nUS,GS,+00124.00kg\r\nST,G"
    out: list[bytes] = []
    for i in range(len(data)):  # worst case: one byte per read
        out += sp.feed(data[i : i + 1])
    assert out == [b"ST,GS,+00123.45kg", b"US,GS,+00124.00kg"]
    assert sp.pending == 4
    assert sp.feed(b"S,+00001.00kg\r\n") == [b"ST,GS,+00001.00kg"]


def test_splitter_accepts_cr_lf_crlf_and_drops_empty_lines() -> None:
    sp = LineSplitter()
    assert sp.feed(b"a\r\nb\nc\r\r\n\nd\r") == [b"a", b"b", b"c", b"d"]


def test_splitter_bounds_an_overlong_line_and_resynchronises() -> None:
    sp = LineSplitter(max_len=20)
    out = sp.feed(b"X" * 15)
    out += sp.feed(b"X" * 15)  # now 30 > 20: discarded up to the next terminator
    out += sp.feed(b"XXXX\r\nST,GS,+00001.00kg\r\n")
    assert out == [b"ST,GS,+00001.00kg"]
    assert sp.overlong == 1
    assert sp.pending == 0


def test_splitter_reset_counts_a_partial_line() -> None:
    sp = LineSplitter()
    sp.feed(b"ST,GS,+0012")
    sp.reset()
    assert sp.partial == 1
    assert sp.feed(b"3.45kg\r\n") == [b"3.45kg"]  # what follows a reopen is a fresh (bad) line, not a splice


def test_decoder_counts_what_it_could_not_use() -> None:
    dec = WeighingDecoder()
    stream = (
        b"ST,GS,+00123.45kg\r\n"
        b"garbage\x00\xfe\r\n"
        b"US,GS,+00100.00kg\r\n"
        b"ST,GS,+001"  # partial, then a new line starts without a terminator: both spoiled
        b"ST,GS,+00123.45kg\r\n"
        b"OL,GS,+9999999kg\r\n" + b"Z" * 200 + b"\r\n"
        b"ST,NT,-00005.00kg\r\n"
    )
    frames = dec.feed(stream[:7]) + dec.feed(stream[7:50]) + dec.feed(stream[50:])
    assert frames == [
        WeightFrame("ST", "GS", 123.45),
        WeightFrame("US", "GS", 100.0),
        WeightFrame("OL", "GS", None),
        WeightFrame("ST", "NT", -5.0),
    ]
    c = dec.counters
    assert (c.lines, c.stable, c.unstable, c.overload) == (4, 2, 1, 1)
    assert c.bad_lines == 2 and c.overlong == 1
    dec.feed(b"ST,GS")
    dec.reset()
    assert dec.counters.partial == 1
