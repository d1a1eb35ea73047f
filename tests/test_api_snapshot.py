"""The API's "current state kept fresh" (cityos_api/core.py ``Snapshot``) and its JSON answers (``Api.json``),
without InfluxDB: a fake clock, and a state function that counts its reads, fails or blocks when told."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from fastapi import HTTPException

from cityos_api.core import MAX_AGE_TTLS, Api, Snapshot
from cityos_api.settings import ApiSettings

TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class State:
    """``fn`` of a snapshot: answers ``v<n>`` on its n-th read; ``fail`` makes it raise InfluxDB's 503, ``gate``
    (unset) holds a read until it is set."""

    def __init__(self) -> None:
        self.reads = 0
        self.fail = False
        self.gate: threading.Event | None = None
        self.reading = threading.Event()

    def __call__(self) -> str:
        self.reads += 1
        n = self.reads
        self.reading.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise HTTPException(status_code=503, detail="InfluxDB unavailable: try again shortly")
        return f"v{n}"


def refreshed() -> bool:
    """No refresh of the test's snapshot is running (its thread is named after it)."""
    return not any(t.name == "snapshot test state" for t in threading.enumerate())


def until(cond: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


@pytest.fixture
def snap() -> tuple[Snapshot[str], State, Clock]:
    state, clock = State(), Clock()
    return Snapshot("test state", state, TTL, clock), state, clock


def test_the_kept_value_is_served_within_its_ttl(snap):
    s, state, clock = snap
    assert s.get() == "v1"  # the first request reads
    clock.now += TTL - 0.1
    assert [s.get() for _ in range(5)] == ["v1"] * 5
    assert state.reads == 1


def test_after_the_ttl_one_refresh_runs_in_the_background_and_requests_do_not_wait(snap):
    s, state, clock = snap
    s.get()
    state.gate, state.reading = threading.Event(), threading.Event()
    clock.now += TTL
    t0 = time.monotonic()
    assert s.get() == "v1"  # starts the refresh, answers the kept value
    assert state.reading.wait(5)  # the refresh is reading, held by the gate
    clock.now += TTL  # still within the maximum age
    assert [s.get() for _ in range(20)] == ["v1"] * 20
    assert time.monotonic() - t0 < 1.0  # no request waited for the held read
    assert state.reads == 2  # one refresh at a time
    state.gate.set()
    until(lambda: s.get() == "v2", "the refreshed value is served")


def test_requests_with_nothing_kept_share_one_read(snap):
    s, state, _ = snap
    state.gate = threading.Event()
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(s.get())) for _ in range(8)]
    for t in threads:
        t.start()
    assert state.reading.wait(5)
    time.sleep(0.05)  # the others are waiting for that read by now
    state.gate.set()
    for t in threads:
        t.join(5)
    assert got == ["v1"] * 8 and state.reads == 1


def test_a_failing_refresh_serves_the_kept_value_up_to_its_maximum_age_then_503(snap):
    s, state, clock = snap
    s.get()
    state.fail = True  # InfluxDB down
    clock.now += TTL
    assert s.get() == "v1"
    until(lambda: state.reads == 2 and refreshed(), "the failed refresh is over")
    clock.now = 1_000.0 + MAX_AGE_TTLS * TTL  # the oldest a value is served
    assert s.get() == "v1"
    until(lambda: state.reads == 3 and refreshed(), "the second failed refresh is over")
    clock.now += 0.5
    with pytest.raises(HTTPException) as err:
        s.get()  # too old: the request reads itself and fails as without a snapshot
    assert err.value.status_code == 503
    state.fail = False  # InfluxDB back: the next request reads, and its value is kept
    assert s.get() == f"v{state.reads}"
    assert s.get() == f"v{state.reads}"


def test_a_request_beyond_the_maximum_age_waits_for_the_refresh_under_way_and_shares_its_error(snap):
    s, state, clock = snap
    s.get()
    state.fail, state.gate, state.reading = True, threading.Event(), threading.Event()
    clock.now += TTL
    s.get()
    assert state.reading.wait(5)
    clock.now += MAX_AGE_TTLS * TTL
    errors: list[int] = []

    def request() -> None:
        try:
            s.get()
        except HTTPException as exc:
            errors.append(exc.status_code)

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.05)
    assert t.is_alive()  # waiting for the read under way, not starting a second one
    state.gate.set()
    t.join(5)
    assert errors == [503] and state.reads == 2


def test_a_clock_set_back_reads_again(snap):
    s, _, clock = snap
    s.get()
    clock.now -= 3600
    assert s.get() == "v2"


def test_api_snapshot_follows_the_apis_clock():
    api = Api(ApiSettings())
    state = State()
    s = api.snapshot("test state", state, TTL)
    api.clock = lambda: 5_000.0
    s.get()
    api.clock = lambda: 5_000.0 + MAX_AGE_TTLS * TTL + 1
    assert s.get() == "v2" and state.reads == 2
    api.close()


def test_reads_side_by_side_answer_in_order_at_the_same_time_and_fail_as_one():
    """``Api.read_side_by_side``: each read's answer in its place, the reads overlapping (each waits for all to have
    started), and InfluxDB failing in any of them the request's 503."""
    from cityos.influx import InfluxError

    api = Api(ApiSettings())
    started = threading.Barrier(3, timeout=5)

    def fetch(query: Any, db: str, x: int) -> int:
        started.wait()
        if x < 0:
            raise InfluxError("HTTP 401: authorization failed")
        return x * 10

    assert api.read_side_by_side([(fetch, 1), (fetch, 2), (fetch, 3)]) == [10, 20, 30]
    started.reset()
    with pytest.raises(HTTPException) as err:
        api.read_side_by_side([(fetch, 1), (fetch, -1), (fetch, 3)])
    assert err.value.status_code == 503 and "401" not in str(err.value.detail)
    api.close()


def test_a_refresh_behind_the_requests_reads_one_after_the_other():
    api = Api(ApiSettings())
    clock = [5_000.0]
    api.clock = lambda: clock[0]
    threads: list[set[str]] = []

    def fetch(query: Any, db: str, x: int) -> str:
        time.sleep(0.01)
        return threading.current_thread().name

    def state() -> int:
        threads.append(set(api.read_side_by_side([(fetch, 1), (fetch, 2), (fetch, 3)])))
        return len(threads)

    s = api.snapshot("test reads", state, TTL)
    assert s.get() == 1 and len(threads[0]) == 3  # a request waiting for it: side by side
    clock[0] += TTL + 1
    assert s.get() == 1
    for _ in range(100):
        if len(threads) == 2:
            break
        time.sleep(0.01)
    assert len(threads) == 2 and len(threads[1]) == 1 and next(iter(threads[1])).startswith("snapshot")
    api.close()


def test_json_answers_are_the_same_json_with_their_headers():
    doc = {"dataset": "x", "items": [{"district": "津山", "kwh": 12.5, "big": 1e30, "tiny": 1e-7, "none": None,
                                      "n": 123456789012345678, "ok": True}], "z": 1, "a": 2}
    resp = Api.respond("json", doc, [], [], "x", {"Link": '<https://x/?cursor=a>; rel="next"'})
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["link"] == '<https://x/?cursor=a>; rel="next"'
    assert json.loads(resp.body) == doc
    assert list(json.loads(resp.body)) == ["dataset", "items", "z", "a"]  # key order kept
    assert "津山".encode() in resp.body  # UTF-8, not \\u escapes
    ld = Api.json([1], status=206, media_type="application/ld+json")
    assert (ld.status_code, ld.headers["content-type"], ld.body) == (206, "application/ld+json", b"[1]")
