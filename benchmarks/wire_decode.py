"""The wire contract's own cost, without a broker or a database: what the ingest pays per reading to validate a
telemetry message, and what a gateway pays per reading to build, validate and store it.

Ingest: ``wire.decode_batch`` over pre-built messages of forest-station readings (13 values and 12 units each,
as the forest family's golden case; compact JSON as a gateway's uplink splices it), all valid, in the time
window, on their own topic: the fast path, which is what a healthy city sends. Edge: ``wire.Reading(...)`` then
``wire.reading_body`` (what a source and the outbox do per reading: the contract is checked on the way in).
Each figure is the median of ``--repeat`` runs, in readings per second of one core.

    python benchmarks/wire_decode.py [--messages 1000] [--per-msg 200] [--repeat 5] [--json out.json]

The script uses only what every version of the contract has, so it can time an older checkout too:
``git worktree add /tmp/wire-before <commit>`` then ``PYTHONPATH=/tmp/wire-before python benchmarks/wire_decode.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cityos import wire

GATEWAY = "gw-forest-01"
UNITS = {
    "soil_moisture_pct": "%VWC", "soil_moisture_deep_pct": "%VWC", "rain_tips": "count", "rain_mm": "mm",
    "tilt_x_deg": "deg", "tilt_y_deg": "deg", "battery_v": "V", "water_level_m": "m",
    "rain_intensity_mm_h": "mm/h", "rain_cumulative_mm": "mm", "lat": "deg", "lon": "deg",
}


def _values(i: int) -> dict[str, float]:
    return {
        "soil_moisture_pct": 31.2 + (i % 50) / 10, "soil_moisture_deep_pct": 28.7, "rain_tips": float(i % 400),
        "rain_mm": 0.2 * (i % 3), "tilt_x_deg": 0.12, "tilt_y_deg": -0.1, "battery_v": 12.61 - (i % 9) / 100,
        "water_level_m": 1.234, "status": 0.0, "rain_intensity_mm_h": 0.0, "rain_cumulative_mm": 0.4,
        "lat": 35.1471, "lon": 133.9952,
    }


def _reading(i: int, ts: int) -> dict[str, Any]:
    return {"device_id": f"forest-{i % 6 + 1:02d}", "kind": "forest_station", "ts": ts, "values": _values(i),
            "units": UNITS}


def messages(n: int, per_msg: int, now_ms: int) -> list[bytes]:
    t0 = now_ms - 3_600_000
    out = []
    for m in range(n):
        readings = [_reading(i, t0 + m * per_msg + i) for i in range(per_msg)]
        out.append(json.dumps({"v": 1, "gateway_id": GATEWAY, "boot_id": "0123456789abcdef", "seq": m,
                               "sent_at": now_ms, "readings": readings}, separators=(",", ":")).encode())
    return out


def time_decode(payloads: list[bytes], now_ms: int) -> float:
    topic = wire.telemetry_topic(GATEWAY)
    t = time.perf_counter()
    for p in payloads:
        wire.decode_batch(topic, p, now_ms=now_ms)
    return time.perf_counter() - t


def time_edge(n: int, now_ms: int) -> float:
    args = [(f"forest-{i % 6 + 1:02d}", now_ms - n + i, _values(i)) for i in range(n)]
    t = time.perf_counter()
    for device, ts, values in args:
        wire.reading_body(wire.Reading(device_id=device, kind="forest_station", ts=ts, values=values, units=UNITS))
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--per-msg", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    now_ms = int(time.time() * 1000)
    payloads = messages(args.messages, args.per_msg, now_ms)
    n = args.messages * args.per_msg
    wire.decode_batch(wire.telemetry_topic(GATEWAY), payloads[0], now_ms=now_ms)  # warm up, and prove valid
    decode = [time_decode(payloads, now_ms) for _ in range(args.repeat)]
    edge = [time_edge(n // 10, now_ms) for _ in range(args.repeat)]
    result = {
        "contract": wire.__file__,
        "messages": args.messages,
        "readings_per_message": args.per_msg,
        "bytes_per_reading": round(sum(map(len, payloads)) / n, 1),
        "decode_batch_readings_per_s": round(n / statistics.median(decode)),
        "decode_batch_us_per_reading": round(statistics.median(decode) / n * 1e6, 3),
        "edge_reading_and_body_per_s": round(n // 10 / statistics.median(edge)),
        "edge_us_per_reading": round(statistics.median(edge) / (n // 10) * 1e6, 3),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
