"""The GTFS(-JP) loader: the committed simulation feed, and malformed feeds named by file, line and column."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from edge.sources.bus.gtfs import FeedError, load_feed, parse_time

FEED = Path(__file__).resolve().parent.parent / "scenarios" / "gtfs-tsuyama-loop"


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "feed"
    shutil.copytree(FEED, dst)
    return dst


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def test_committed_feed() -> None:
    feed = load_feed(FEED)
    assert feed.timezone == "Asia/Tokyo"
    assert len(feed.stops) == 19
    assert len(feed.routes) == 1
    assert len(feed.trips) == 14
    assert sum(len(v) for v in feed.stop_times.values()) == 14 * 20
    castle = feed.stop("1003")
    assert (castle.name, castle.lat, castle.lon) == ("津山城（鶴山公園）", 35.06356, 134.00552)
    station = feed.stop("1001")
    assert station.name == "津山駅"
    assert abs(station.lat - 35.0586) < 1e-4 and abs(station.lon - 134.0028) < 1e-4


def test_trip_is_a_loop_from_the_station() -> None:
    feed = load_feed(FEED)
    calls = feed.stop_times_of("wd-01")
    assert len(calls) == 20
    assert (calls[0].stop_id, calls[0].departure_s) == ("1001", parse_time("07:00:00"))
    assert (calls[-1].stop_id, calls[-1].arrival_s) == ("1001", parse_time("07:42:00"))
    assert [c.sequence for c in calls] == list(range(1, 21))
    assert len({c.stop_id for c in calls}) == 19


def test_trips_of_a_service_day() -> None:
    feed = load_feed(FEED)
    wed, sat = date(2026, 4, 1), date(2026, 4, 4)
    assert [t.id for t in feed.trips_on(wed)] == [f"wd-{k:02d}" for k in range(1, 11)]
    assert [t.id for t in feed.trips_on(sat)] == ["hd-01", "hd-02", "hd-03", "hd-04"]
    # 昭和の日 (a Wednesday) runs the holiday timetable (calendar_dates.txt).
    assert [t.id for t in feed.trips_on(date(2026, 4, 29))] == ["hd-01", "hd-02", "hd-03", "hd-04"]
    assert feed.trips_on(date(2025, 4, 1)) == []  # before the feed's calendar
    # Service day time zero in Tokyo is local midnight: 15:00 UTC the day before.
    assert feed.service_day_ms(wed) == round(datetime(2026, 3, 31, 15, tzinfo=UTC).timestamp() * 1000)
    assert feed.local_date(feed.service_day_ms(wed) + 1) == wed


def test_parse_time() -> None:
    assert parse_time("7:05:09") == 7 * 3600 + 5 * 60 + 9
    assert parse_time("25:10:00") == 25 * 3600 + 600  # after midnight, same service day
    for bad in ("07:60:00", "7:5:00", "07:00", "", "ab:cd:ef"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_bom_and_extra_columns_tolerated(copy: Path) -> None:
    p = copy / "stops.txt"
    lines = p.read_text(encoding="utf-8").splitlines()
    text = "\n".join([lines[0] + ",jp_extra"] + [line + ",x" for line in lines[1:]]) + "\n"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Excel saves "CSV UTF-8"
    feed = load_feed(copy)
    assert feed.stop("1001").name == "津山駅"


def test_missing_column(copy: Path) -> None:
    edit(copy / "stops.txt", "stop_lat,", "latitude,")
    with pytest.raises(FeedError) as err:
        load_feed(copy)
    assert (err.value.file, err.value.line) == ("stops.txt", 1)
    assert "stop_lat" in str(err.value) and str(err.value).startswith("stops.txt:1:")


def test_bad_time_names_file_line_column(copy: Path) -> None:
    # Line 4 of stop_times.txt is wd-01's third call (header is line 1).
    edit(copy / "stop_times.txt", "wd-01,07:02:00,07:02:00,1003", "wd-01,07:2:00,07:02:00,1003")
    with pytest.raises(FeedError) as err:
        load_feed(copy)
    e = err.value
    assert (e.file, e.line, e.column) == ("stop_times.txt", 4, "arrival_time")
    assert str(e).startswith("stop_times.txt:4: column 'arrival_time':")


def test_bad_number_and_unknown_reference(copy: Path) -> None:
    edit(copy / "stops.txt", "35.06356", "35,06356")  # a comma: one field too many on line 4
    with pytest.raises(FeedError, match=r"^stops\.txt:4: 14 fields"):
        load_feed(copy)
    shutil.copy(FEED / "stops.txt", copy / "stops.txt")
    edit(copy / "stops.txt", "35.06356", "north")
    with pytest.raises(FeedError, match=r"^stops\.txt:4: column 'stop_lat': 'north' is not a number"):
        load_feed(copy)
    shutil.copy(FEED / "stops.txt", copy / "stops.txt")
    edit(copy / "stop_times.txt", "wd-01,07:01:00,07:01:00,1002", "wd-01,07:01:00,07:01:00,9999")
    with pytest.raises(FeedError, match=r"^stop_times\.txt:3: column 'stop_id': unknown stop_id '9999'"):
        load_feed(copy)


def test_sequence_and_order_errors(copy: Path) -> None:
    edit(copy / "stop_times.txt", "1002,2,", "1002,1,")
    with pytest.raises(FeedError, match=r"^stop_times\.txt:3: column 'stop_sequence': .*repeats line 2"):
        load_feed(copy)
    shutil.copy(FEED / "stop_times.txt", copy / "stop_times.txt")
    edit(copy / "stop_times.txt", "wd-01,07:02:00,07:02:00", "wd-01,06:59:00,06:59:00")
    with pytest.raises(FeedError, match=r"^stop_times\.txt:4: .*backwards"):
        load_feed(copy)


def test_missing_file_and_bad_calendar(copy: Path) -> None:
    (copy / "calendar.txt").unlink()
    with pytest.raises(FeedError, match=r"^calendar\.txt: missing"):
        load_feed(copy)
    shutil.copy(FEED / "calendar.txt", copy / "calendar.txt")
    edit(copy / "calendar.txt", "weekday,1,1", "weekday,yes,1")
    with pytest.raises(FeedError, match=r"^calendar\.txt:2: column 'monday'"):
        load_feed(copy)


def test_empty_intermediate_times_interpolated(copy: Path) -> None:
    # wd-01: 1002 at 07:01, 1003 at 07:02 → blank 1002 and 1003 lie between 07:00 (1001) and 07:04 (1004).
    edit(copy / "stop_times.txt", "wd-01,07:01:00,07:01:00,1002,2,,0,0,,1", "wd-01,,,1002,2,,0,0,,0")
    edit(copy / "stop_times.txt", "wd-01,07:02:00,07:02:00,1003,3,,0,0,,1", "wd-01,,,1003,3,,0,0,,0")
    calls = load_feed(copy).stop_times_of("wd-01")
    assert [c.arrival_s - calls[0].departure_s for c in calls[:4]] == [0, 80, 160, 240]


def test_a_bus_config_runs_on_the_feed_it_validated(monkeypatch) -> None:
    """The feed is read once: the one validating the config read is the source's timetable (not read again)."""
    from edge.sources.bus import source

    reads: list[Path] = []

    def counting(path):
        reads.append(Path(path))
        return load_feed(path)

    monkeypatch.setattr(source, "load_feed", counting)
    cfg = source.BusConfig.model_validate(
        {"type": "bus", "name": "bus", "vehicle_id": "bus-01", "gps_port": "/dev/ttyGPS", "feed": str(FEED)}
    )
    assert len(cfg.timetable.trips) == 14
    assert reads == [FEED]
    assert cfg.model_copy().timetable is cfg.timetable


def test_stop_times_share_their_stops_ids() -> None:
    """A call holds its stop's own id string, not a copy per row (a city's feed has thousands of calls a stop)."""
    feed = load_feed(FEED)
    calls = [c for trip in feed.stop_times.values() for c in trip]
    assert all(c.stop_id is feed.stops[c.stop_id].id for c in calls)
    assert len({id(c.stop_id) for c in calls}) == len({c.stop_id for c in calls})
