"""Soak (opt-in: ``pytest -m soak``): the throughput benchmark's drain, 50 times in a row, never stalls.

The drain is ``benchmarks/ingest_throughput.py``'s own (``Bench.drain_ingest``): 300,000 readings queued in the
ingest's durable MQTT session while it is down, then drained through the decode workers and two writers into a
fresh database, COUNT checked. This is what stalled for good in the fourth of five repetitions on 67bdb7b (the
decode pool's lock order; the quick regression test is tests/test_decode_pool.py). ``CITYOS_SOAK_DRAINS`` and
``CITYOS_SOAK_POINTS`` change the 50 and the 300,000.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from citylab.stack import Stack

pytestmark = pytest.mark.soak


@pytest.mark.timeout(0)
def test_fifty_drains_in_a_row_never_stall(stack: Stack, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import ingest_throughput as bench

    drains = int(os.environ.get("CITYOS_SOAK_DRAINS", "50"))
    points = int(os.environ.get("CITYOS_SOAK_POINTS", "300000"))
    args = bench.parser().parse_args(["--points", str(points), "--skip-nodered", "--stall-s", "30"])
    b = bench.Bench(stack, stack.info(), tmp_path, args)
    messages = bench.make_messages(points, args.per_msg, args.gateways, int(time.time() * 1000))
    rates = []
    for k in range(drains):
        d = b.drain_ingest(messages, points)
        print(f"drain {k + 1}/{drains}: {d.describe()}", flush=True)
        assert d.ok, f"drain {k + 1} of {drains}: {d.describe()} (no progress for 30 s: a stall)"
        rates.append(d.rate)
    median = sorted(rates)[len(rates) // 2]
    print(f"{drains} drains of {points:,} readings, none stalled; median {median:,.0f} readings/s")
