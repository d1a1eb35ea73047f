"""Ingest throughput against InfluxDB's raw write ceiling on this machine.

Two measurements on a private stack (``citylab.stack.Stack``), alternated ``--repeat`` times, each into a fresh
database:

1. **ceiling**: POST pre-generated, pre-gzipped line protocol straight to ``/write?precision=ms`` in batches of
   ``--ceiling-batch`` lines from one client; points/s.
2. **ingest**: the same readings as wire-contract telemetry messages (``--per-msg`` readings each, spread over
   ``--gateways`` gateways) are published at QoS 1 into the ingest's durable MQTT session while the ingest is
   stopped; then the ingest (``ingest.service.IngestService``, in this process, default config) is started and
   timed until every point is written (its ``points_written`` counter; verified with a COUNT afterwards);
   readings/s. The clock starts when its MQTT connection is up, so it covers the drain of the broker's queue,
   decode/validate, batching, gzip and the HTTP writes, not process start-up.

Usage::

    python benchmarks/ingest_throughput.py [--points 300000] [--repeat 3] [--run-dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from citylab.pipeline import ingest_config
from citylab.stack import Stack, StackInfo, mqtt_client
from cityos import wire
from ingest import lineproto
from ingest.mqtt_in import discard_session
from ingest.service import IngestService


def make_messages(
    n_points: int, per_msg: int, gateways: int, now_ms: int
) -> list[tuple[str, bytes, list[str]]]:
    """(topic, payload, lines) per message; forest-station-like readings, 4 float fields, 20 devices/gateway."""
    out = []
    n_msgs = -(-n_points // per_msg)
    base_ts = now_ms - 3_600_000
    for m in range(n_msgs):
        gw = f"bench-gw-{m % gateways:02d}"
        k = min(per_msg, n_points - m * per_msg)
        readings = [
            wire.Reading(
                device_id=f"st-{i % 20:02d}",
                kind="forest_station",
                ts=base_ts + (m // gateways) * per_msg + i,
                values={
                    "air_temp_c": 12.5 + (i % 50) / 10,
                    "humidity_pct": 60.0 + (m % 30),
                    "soil_moisture": 0.31 + (i % 7) / 100,
                    "battery_v": 3.7,
                },
                units={"air_temp_c": "C"},
            )
            for i in range(k)
        ]
        batch = wire.TelemetryBatch(
            gateway_id=gw, boot_id="bench-boot-0001", seq=m, sent_at=now_ms, readings=readings
        )
        out.append((wire.telemetry_topic(gw), wire.encode_batch(batch), lineproto.batch_to_lines(batch)))
    return out


def _client(info: StackInfo) -> httpx.Client:
    return httpx.Client(
        base_url=info.influx_url, auth=(info.influx_username, info.influx_password), timeout=60
    )


def count_points(info: StackInfo, db: str) -> int:
    with _client(info) as c:
        r = c.get("/query", params={"db": db, "q": 'SELECT COUNT("battery_v") FROM "forest"'})
        r.raise_for_status()
        series = r.json()["results"][0].get("series", [])
        return int(series[0]["values"][0][1]) if series else 0


def gzip1(raw: bytes) -> bytes:
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    return comp.compress(raw) + comp.flush()


def run_ceiling(stack: Stack, info: StackInfo, lines: list[str], batch: int, precompress: bool) -> float:
    """Points/s posting ``lines`` in ``batch``-line requests; gzip before the clock starts if ``precompress``."""
    db = f"bench_ceiling_{uuid.uuid4().hex[:8]}"
    stack.create_database(db)
    raws = ["\n".join(lines[i : i + batch]).encode() for i in range(0, len(lines), batch)]
    pre = [gzip1(r) for r in raws] if precompress else None
    with _client(info) as c:
        t0 = time.perf_counter()
        for k, raw in enumerate(raws):
            body = pre[k] if pre is not None else gzip1(raw)
            r = c.post(
                "/write",
                params={"db": db, "precision": "ms"},
                content=body,
                headers={"Content-Encoding": "gzip"},
            )
            if r.status_code != 204:
                raise RuntimeError(f"ceiling write failed: {r.status_code} {r.text[:200]}")
        elapsed = time.perf_counter() - t0
    n = count_points(info, db)
    if n != len(lines):
        raise RuntimeError(f"ceiling: {n} points stored, expected {len(lines)}")
    stack.drop_database(db)
    return len(lines) / elapsed


def publish_all(info: StackInfo, messages: list[tuple[str, bytes, list[str]]]) -> None:
    pub = mqtt_client(info, "dev.tools", client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
    pub.max_inflight_messages_set(200)
    pub.connect(info.mqtt_host, info.mqtt_port)
    pub.loop_start()
    try:
        infos = [pub.publish(topic, payload, qos=1) for topic, payload, _ in messages]
        for i in infos:
            i.wait_for_publish(120)
            if not i.is_published():
                raise RuntimeError("publish not acknowledged")
    finally:
        pub.disconnect()
        pub.loop_stop()


def run_ingest(
    stack: Stack,
    info: StackInfo,
    messages: list[tuple[str, bytes, list[str]]],
    n_points: int,
    work: Path,
    timeout_s: float = 300,
    ingest_overrides: dict | None = None,
    influx_overrides: dict | None = None,
) -> tuple[float, dict]:
    db = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    stack.create_database(db)
    client_id = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    cfg = ingest_config(
        info, work / client_id, client_id=client_id, db=db, ingest=ingest_overrides, influx=influx_overrides
    )

    # 1. create the durable session (subscribe once), then go away
    stop = threading.Event()
    svc = IngestService(cfg, stop)
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    _wait(lambda: svc.health.subscribed, 30, "first subscribe")
    stop.set()
    t.join(30)
    # 2. queue every message in the session while the ingest is down; let the broker's autosave settle
    publish_all(info, messages)
    time.sleep(2)
    # 3. start the ingest and time the drain
    stop = threading.Event()
    svc = IngestService(cfg, stop)
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    # The clock starts when the MQTT connection is up: from then on the broker streams the queued session.
    # (Process start-up, imports and worker spawn are not throughput.)
    _wait(lambda: svc.health.connected, 60, "ingest connect", poll=0.0005)
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    while svc.health.points_written < n_points:
        if time.monotonic() > deadline:
            stop.set()
            raise RuntimeError(
                f"ingest: only {svc.health.points_written}/{n_points} points after {timeout_s}s"
            )
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    snap = svc.health.snapshot()
    stop.set()
    t.join(30)
    # An offline durable session subscribed to the wildcard would queue every later run's messages: remove it.
    discard_session(cfg.mqtt)
    stored = count_points(info, db)
    if stored != n_points:
        raise RuntimeError(f"ingest: {stored} points stored, expected {n_points}")
    stack.drop_database(db)
    return n_points / elapsed, snap


def _wait(cond, timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--per-msg", type=int, default=200, help="readings per telemetry message")
    ap.add_argument("--gateways", type=int, default=8)
    ap.add_argument("--ceiling-batch", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--run-dir", type=Path, help="stack run directory (default: a temp dir, stack stopped after)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--decode-workers", type=int, help="override [ingest] decode_workers (default: the default)"
    )
    ap.add_argument("--batch-lines", type=int, help="override [influx] batch_lines (default: the default)")
    ap.add_argument("--writers", type=int, help="override [influx] writers (default: the default)")
    args = ap.parse_args(argv)
    overrides: dict = {}
    if args.decode_workers is not None:
        overrides["decode_workers"] = args.decode_workers
    influx_overrides: dict = {}
    if args.batch_lines is not None:
        influx_overrides["batch_lines"] = args.batch_lines
    if args.writers is not None:
        influx_overrides["writers"] = args.writers
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    tmp = None
    if args.run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cityos-bench-")
        run_dir = Path(tmp.name) / "stack"
    else:
        run_dir = args.run_dir
    stack = Stack(run_dir)
    info = stack.up()
    work = run_dir.parent / f"bench-ingest-{uuid.uuid4().hex[:6]}"
    results: dict[str, list[float]] = {"ceiling_precompressed": [], "ceiling_gzip_in_loop": [], "ingest": []}
    try:
        print(
            f"generating {args.points} readings ({args.per_msg}/message, {args.gateways} gateways)...",
            file=sys.stderr,
        )
        messages = make_messages(args.points, args.per_msg, args.gateways, int(time.time() * 1000))
        lines = [line for _, _, ls in messages for line in ls]
        for i in range(args.repeat):
            a = run_ceiling(stack, info, lines, args.ceiling_batch, precompress=True)
            b = run_ceiling(stack, info, lines, args.ceiling_batch, precompress=False)
            r, snap = run_ingest(
                stack,
                info,
                messages,
                len(lines),
                work,
                ingest_overrides=overrides,
                influx_overrides=influx_overrides,
            )
            results["ceiling_precompressed"].append(a)
            results["ceiling_gzip_in_loop"].append(b)
            results["ingest"].append(r)
            print(
                f"run {i + 1}: ceiling {a:,.0f} (pre-gzipped) / {b:,.0f} (gzip in loop) points/s; "
                f"ingest {r:,.0f} readings/s (write p95 {snap['write_latency_ms']['p95']} ms, "
                f"{snap['write_requests']} requests)",
                file=sys.stderr,
            )
    finally:
        if tmp is not None:
            stack.down()
            tmp.cleanup()
    med = {k: statistics.median(v) for k, v in results.items()}
    labels = {
        "ceiling_precompressed": f"InfluxDB ceiling: direct /write, {args.ceiling_batch}-line batches, gzipped beforehand",
        "ceiling_gzip_in_loop": f"InfluxDB ceiling: direct /write, {args.ceiling_batch}-line batches, gzip timed",
        "ingest": f"ingest: MQTT durable queue → decode/validate → InfluxDB ({args.per_msg} readings/msg)",
    }
    print()
    print("| measurement | runs (points/s) | median (points/s) |")
    print("|---|---|---|")
    for k, v in results.items():
        print(f"| {labels[k]} | {', '.join(f'{x:,.0f}' for x in v)} | {med[k]:,.0f} |")
    r1 = med["ingest"] / med["ceiling_precompressed"]
    r2 = med["ingest"] / med["ceiling_gzip_in_loop"]
    print(f"| **ingest / ceiling (pre-gzipped)** | | **{r1:.0%}** |")
    print(f"| **ingest / ceiling (gzip timed)** | | **{r2:.0%}** |")
    print(
        f"\n{args.points:,} points per run, {args.repeat} runs alternating, fresh database each; target ≥ 50%."
    )
    if args.json:
        doc = {
            "points": args.points,
            "per_msg": args.per_msg,
            "gateways": args.gateways,
            "ceiling_batch": args.ceiling_batch,
            "runs": results,
            "median": med,
            "ratio_vs_precompressed": r1,
            "ratio_vs_gzip_timed": r2,
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
