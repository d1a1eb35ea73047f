"""NMEA 0183 decoding and the fix tracker: byte vectors in, fixes and counted errors out (no serial port)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge.sources.common.nmea import GgaFix, GpsTracker, NmeaDecoder, RmcFix


def sentence(body: str, *, checksum: int | None = None) -> bytes:
    cs = 0
    for ch in body:
        cs ^= ord(ch)
    return f"${body}*{cs if checksum is None else checksum:02X}\r\n".encode()


RMC = "GNRMC,083015.50,A,3503.60000,N,13400.30000,E,16.20,90.0,010426,,,A"
GGA = "GNGGA,083015.50,3503.60000,N,13400.30000,E,1,11,0.9,150.0,M,30.0,M,,"
RMC_V = "GNRMC,083016.00,V,,,,,,,010426,,,N"
GGA_0 = "GNGGA,083016.00,,,,,0,00,99.9,,M,,M,,"
T0_MS = round(datetime(2026, 4, 1, 8, 30, 15, 500_000, tzinfo=UTC).timestamp() * 1000)


def test_rmc_and_gga_fields() -> None:
    dec = NmeaDecoder()
    rmc, gga = dec.feed(sentence(RMC) + sentence(GGA))
    assert isinstance(rmc, RmcFix) and isinstance(gga, GgaFix)
    assert rmc.valid and rmc.time_ms == T0_MS
    assert rmc.lat == pytest.approx(35.06) and rmc.lon == pytest.approx(134.005)
    assert rmc.speed_kmh == pytest.approx(30.0024) and rmc.course_deg == 90.0
    assert (gga.quality, gga.satellites, gga.hdop, gga.altitude_m) == (1, 11, 0.9, 150.0)
    assert dec.counters.sentences == 2 and dec.counters.rmc == 1 and dec.counters.gga == 1


def test_southern_western_hemispheres_and_gp_talker() -> None:
    (rmc,) = NmeaDecoder().feed(sentence("GPRMC,000000,A,3330.00000,S,07030.00000,W,0.0,,311299,,"))
    assert rmc.lat == pytest.approx(-33.5) and rmc.lon == pytest.approx(-70.5)
    assert rmc.time_ms == round(datetime(2099, 12, 31, tzinfo=UTC).timestamp() * 1000)


def test_status_v_has_no_position() -> None:
    rmc, gga = NmeaDecoder().feed(sentence(RMC_V) + sentence(GGA_0))
    assert not rmc.valid and rmc.lat is None and rmc.lon is None
    assert gga.quality == 0 and gga.satellites == 0


def test_sentences_split_across_reads() -> None:
    data = sentence(RMC) + sentence(GGA)
    dec = NmeaDecoder()
    events = []
    for i in range(0, len(data), 7):
        events += dec.feed(data[i : i + 7])
    assert [type(e) for e in events] == [RmcFix, GgaFix]


def test_bad_checksum_truncated_garbage_and_other_types_are_counted() -> None:
    good = sentence(RMC)
    bad = sentence(RMC, checksum=int(good[-4:-2], 16) ^ 0x01)
    stream = (
        bad
        + b"$GNRMC,083015.50,A,3503.6\r\n"  # truncated: no checksum
        + b"$GNRMC,0830$GNGGA,083015.50,3503.60000,N,13400.30000,E,1,11,0.9,150.0,M,30.0,M,,*"  # cut by a new '$'
        + sentence(GGA)[-4:]
        + b"\xff\xfe noise \r\n"
        + sentence("GPGSV,1,1,01,01,40,083,46")
        + sentence(
            "GNRMC,083015.50,A,35x3.60000,N,13400.30000,E,16.20,90.0,010426,,,A"
        )  # checksum ok, bad field
        + sentence("GNRMC,2x3015.50,A,3503.60000,N,13400.30000,E,16.20,90.0,010426,,,A")  # bad time
        + b"X" * 300
        + b"\r\n"
        + good
    )
    dec = NmeaDecoder()
    events = dec.feed(stream)
    assert [type(e) for e in events] == [GgaFix, RmcFix]
    c = dec.counters
    assert c.bad_checksum == 1
    assert c.truncated == 2
    assert c.garbage == 1
    assert c.ignored == 1
    assert c.field_errors == 2
    assert c.overlong == 1


def test_tracker_fix_dropout_and_recovery() -> None:
    gps = GpsTracker(timeout_s=5.0)
    (pos,) = gps.feed(sentence(RMC) + sentence(GGA), now_s=100.0)
    assert gps.fix_ok and gps.current(100.5) == pos
    assert (gps.fix_quality, gps.satellites, gps.hdop) == (1, 11, 0.9)
    assert pos.time_ms == T0_MS and gps.gps_ms_at(102.0) == T0_MS + 2000 and gps.age_s(102.0) == 2.0
    # status V: the fix is lost at once, counted once, the last good position kept
    assert gps.feed(sentence(RMC_V) + sentence(GGA_0), now_s=101.0) == []
    assert not gps.fix_ok and gps.current(101.0) is None and gps.dropouts == 1
    assert gps.last == pos and gps.fix_quality == 0
    gps.feed(sentence(RMC_V), now_s=102.0)
    assert gps.dropouts == 1
    # back, then silence longer than the timeout: a second dropout
    gps.feed(sentence(RMC), now_s=103.0)
    assert gps.fix_ok
    assert gps.current(107.9) is not None
    assert gps.current(108.1) is None and gps.dropouts == 2


def test_tracker_hands_on_the_decoders_own_fix() -> None:
    """One fix type from the bytes to every consumer: the tracker returns the RmcFix the decoder made, as is
    (an empty speed field stays None: each consumer decides what an unknown speed means)."""
    gps = GpsTracker()
    (pos,) = gps.feed(sentence(RMC), now_s=5.0)
    assert type(pos) is RmcFix and pos == NmeaDecoder().feed(sentence(RMC))[0] and pos.usable
    (no_speed,) = gps.feed(sentence("GNRMC,083016.50,A,3503.60000,N,13400.30000,E,,,010426,,,A"), now_s=6.0)
    assert no_speed.speed_kmh is None and no_speed.course_deg is None and gps.last is no_speed
    (v,) = NmeaDecoder().feed(sentence(RMC_V))
    assert not v.usable
    with pytest.raises(ValueError):
        GpsTracker().gps_ms_at(0.0)  # no fix yet: no GPS time to extrapolate


def test_tracker_reset_counts_a_cut_sentence() -> None:
    gps = GpsTracker()
    gps.feed(b"$GNRMC,0830", now_s=0.0)
    gps.reset()
    assert gps.counters.truncated == 1
    assert len(gps.feed(sentence(RMC), now_s=1.0)) == 1
