"""The bus gateway's footprint: CPU and resident memory at 300 Bluetooth advertisements/s, on this machine.

Issue 5's target: edge CPU at 300 advertisements/s ≤ 10 % of one core, resident memory ≤ 40 MB.

A real agent process (``cityos gateway run``) with one ``type = "bus"`` source reads the bus simulator
(``firmware_sim.bus.sim.BusSimLive``, played in this process): GPS NMEA on a pty link and every received
advertisement as a JSON line on a Unix socket (``[sources.ble] backend = "sim"``), with the loop's GTFS-JP
feed, and publishes to a private Mosquitto (``citylab.stack.Stack``), where a subscriber makes every PUBACK a
success. Agent and simulator share one ``cityos.simclock.ScaledClock`` (``[clock]``), so GPS time and the
agent's clock agree.

**The load is the simulated day's own content**, played faster. The default day (``scenarios/bus-day.toml``)
is a ~20 adverts/s bus at its morning peak. The rate ``R`` (simulated s per real s) is ``--adverts`` (300) /
the adverts per simulated second of the ``--busy`` window (07:30–09:00: 17.7, so R ≈ 17); the measuring window
is the stretch of it (R × ``--window`` simulated s) whose density is closest to the whole window's, and R is
then set by bisection on the day's advert times so that this stretch gives exactly ``--adverts`` per real
second (with ``--at HH:MM`` the window starts there instead). The GPS runs at the same rate (R fixes/s), so
the stop detector, the estimator and the position readings do their real work R times faster. The achieved
rate is measured from the agent's own counters (``source_health``'s ``adverts``, i.e. filed by the source
thread, and the scanner's ``ble_adverts``) in its retained status, published every second for this
(``status_interval_s = 1``; the field default is 60 s, and one status a second costs well under 0.1 % of a
core).

Measured over ``--window`` s after ``--warmup`` s with psutil (``edge_footprint.measure``): the agent's CPU
time / wall time (% of one core) and its RSS (median and max of 1 s samples). Each repetition starts a fresh
agent for each phase; medians over ``--repeat`` are reported. References from the same run:

* **idle**: the same agent with the simulator connected at real time (rate 1) at the start of the day, the bus
  at its depot: GPS at 1 Hz, (almost) no adverts;
* **real time**: rate 1 from the measuring window's start: the bus's real load at its peak (~20 adverts/s);
* **ceiling**: fresh agents at ``--steps`` adverts/s (short windows); the highest step where the source keeps
  up (filed ≥ 95 % of what the simulator sent, no ``queue_dropped``, no growing ``queue_depth``, under a
  second of adverts waiting at the end) is the ceiling;
* **floor**: a bare ``python -c`` importing what the bus gateway runs on (paho-mqtt and ssl, bleak's ``BLEDevice``
  and ``AdvertisementData``, pyserial, pynmea2, msgspec, pydantic, sqlite3) and sleeping:
  ``edge_footprint.floor_rss``.

The agent runs as deployed (``edge_footprint.agent_runtime``): from a venv as the bundle installs it, with the
environment of the gateway's systemd unit (``MALLOC_ARENA_MAX=2``, ``PYTHONOPTIMIZE=2``) and its bytecode compiled
for it as the first boot does; ``--interpreter checkout`` measures as before issue 13. ``--cprofile`` also plays
the measuring window in-process through the code the agent runs per advert (``decode_sim_line`` → ``Advert`` →
``BusCore.observe`` → ``add``, plus the GPS) under cProfile, to show where the CPU goes; ``--py-spy DIR`` records
the 300/s agent with py-spy when installed.

    python benchmarks/bus_edge_footprint.py [--adverts 300] [--window 60] [--repeat 3] [--json out.json]
        [--interpreter venv|checkout]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import edge_footprint
from edge_footprint import AgentRuntime, agent_runtime, measure

from citylab.stack import Stack, StackInfo, mqtt_client, mqtt_settings
from cityos import wire
from cityos.config import dump_toml
from cityos.simclock import ScaledClock
from firmware_sim.bus.sim import DEFAULT_SPEC_PATH, BusDay, BusDaySpec, BusSimLive, _hhmm_s

ROOT = Path(__file__).resolve().parent.parent
BUS_FLOOR_IMPORTS = (
    "import paho.mqtt.client, ssl, serial, pynmea2, sqlite3, msgspec; from bleak.backends.device import BLEDevice; "
    "from bleak.backends.scanner import AdvertisementData; from pydantic import BaseModel"
)
SOURCE = "bus"  # the source's name: its health counters are bus_<name> in the status


# --- the load -----------------------------------------------------------------------------------------------


def advert_times(day: BusDay) -> np.ndarray:
    """Every received advert's simulated time over the whole day (sorted)."""
    return np.fromiter((t for t, ev in day.stream() if not isinstance(ev, bytes)), dtype=np.float64)


def density(times: np.ndarray, a: float, b: float) -> float:
    """Adverts per simulated second in [a, b)."""
    return float(np.searchsorted(times, b) - np.searchsorted(times, a)) / (b - a)


def typical_start(times: np.ndarray, a: float, b: float, span: float) -> float:
    """The start (minute steps) of a ``span``-long stretch of [a, b) with the density closest to [a, b)'s."""
    want = density(times, a, b)
    starts = np.arange(a, max(a, b - span) + 1, 60.0)
    errs = [abs(density(times, s, s + span) - want) for s in starts]
    return float(starts[int(np.argmin(errs))])


def rate_for(times: np.ndarray, target: float, at_s: float, window: float, end_s: float) -> float:
    """The clock rate that gives ``target`` adverts per real second in the real ``window`` s from ``at_s`` on
    (bisection: the count grows with the rate); capped where the window would run past the day's end."""

    def per_s(rate: float) -> float:
        b = min(at_s + rate * window, end_s)
        return float(np.searchsorted(times, b) - np.searchsorted(times, at_s)) / window

    lo, hi = 1e-3, (end_s - at_s) / window
    if per_s(hi) < target:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        if per_s(mid) < target:
            lo = mid
        else:
            hi = mid
    return hi


# --- the agent ----------------------------------------------------------------------------------------------


class Watcher:
    """Subscribes to the gateway's telemetry (so PUBACKs succeed; counts bus readings by kind) and its
    retained status (the latest counters and when they arrived)."""

    def __init__(self, info: StackInfo, gw: str) -> None:
        self.lock = threading.Lock()
        self.kinds: dict[str, int] = {}
        self.status: dict[str, float] = {}
        self.status_at = 0.0
        self.status_n = 0
        self.c = mqtt_client(info, "dev.tools")
        self.c.on_message = self._on
        self.c.on_connect = lambda cl, *_: cl.subscribe(
            [(wire.telemetry_topic(gw), 1), (wire.status_topic(gw), 1)]
        )
        self.c.connect(info.mqtt_host, info.mqtt_port)
        self.c.loop_start()

    def _on(self, _c: Any, _u: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/status"):
                if body.get("state") == "online":
                    self.status = body.get("counters", {})
                    self.status_at = time.monotonic()
                    self.status_n += 1
            else:
                for r in body["readings"]:
                    self.kinds[r["kind"]] = self.kinds.get(r["kind"], 0) + 1

    def fresh(self, timeout: float = 3.0) -> tuple[float, dict[str, float]]:
        """The next status to arrive (after this call), with its arrival time."""
        with self.lock:
            n = self.status_n
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.status_n > n:
                    return self.status_at, dict(self.status)
            time.sleep(0.01)
        with self.lock:
            return self.status_at, dict(self.status)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _config(
    work: Path, info: StackInfo, gw: str, clock: ScaledClock, gps: str, sock: Path, spec: BusDaySpec
) -> Path:
    """The gateway's defaults but a 1 s status and the scaled clock (written with the project's one TOML writer)."""
    cfg = {
        "gateway": {"id": gw},
        "mqtt": {**mqtt_settings(info, gw), "status_interval_s": 1},
        "outbox": {"path": work / "outbox.db"},
        "clock": {"sim_start": clock.sim_start, "real_anchor": clock.real_anchor, "rate": clock.rate},
        "sources": [{
            "type": "bus", "name": SOURCE, "vehicle_id": "bus-01", "gps_port": gps, "feed": spec.feed,
            "ble": {"backend": "sim", "sim_socket": sock},
            "ridership": {"city_uuid": str(spec.city_uuid)},
        }],
    }
    p = work / "gateway.toml"
    p.write_text(dump_toml(cfg), encoding="utf-8")
    return p


def _counter(status: dict[str, float], key: str) -> float:
    return float(status.get(f"{SOURCE}_{key}", 0.0))


def phase(
    info: StackInfo,
    work: Path,
    day: BusDay,
    spec: BusDaySpec,
    *,
    runtime: AgentRuntime,
    rate: float,
    at_s: float,
    warmup: float,
    window: float,
    py_spy: Path | None = None,
    times: np.ndarray | None = None,
) -> dict[str, Any]:
    """One fresh agent on the simulator at ``rate``; the measuring window starts at simulated ``at_s``."""
    work.mkdir(parents=True)
    gw = f"bench-bus-{uuid.uuid4().hex[:6]}"
    lead = 6.0  # real seconds for the agent to start and connect before the warm-up begins
    sim_start = max(day.start_s, at_s - rate * warmup)
    clock = ScaledClock(sim_start=sim_start, real_anchor=time.time() + lead, rate=rate)
    sock = work / "ble.sock"
    live = BusSimLive(day, clock=clock, gps_link=work / "ttyGPS0", ble_socket=sock)
    gps = live.start()
    watcher = Watcher(info, gw)
    cfg = _config(work, info, gw, clock, gps, sock, spec)
    agent = subprocess.Popen(
        [runtime.python, "-m", "cityos_cli", "gateway", "run", "--config", str(cfg)],
        env=runtime.env,
        cwd=ROOT,
        stdout=(work / "agent.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    me = psutil.Process()
    try:
        proc = psutil.Process(agent.pid)
        deadline = time.monotonic() + 30
        while live.counters["clients"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        late = max(0.0, time.time() - clock.real_anchor)  # > 0: the agent connected after the anchor
        time.sleep(max(0.0, clock.real_at(at_s) - time.time()))
        spy = None
        if py_spy is not None:
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--gil",
                    "--format",
                    "raw",
                    "-o",
                    str(py_spy),
                    "-r",
                    "200",
                    "-d",
                    str(int(window)),
                    "-p",
                    str(agent.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        t0, s0 = watcher.fresh()  # the agent's counters, and the simulator's at the same moment
        sim0 = clock.now()
        sent0, me0, m0 = live.counters["adverts_sent"], sum(me.cpu_times()[:2]), time.monotonic()
        m = measure(proc, window, None)
        me1, m1 = sum(me.cpu_times()[:2]), time.monotonic()
        t1, s1 = watcher.fresh()
        sim1 = clock.now()
        sent1 = live.counters["adverts_sent"]
        wall = time.monotonic() - t0 if t1 <= t0 else t1 - t0
        if spy is not None:
            spy.wait(30)
        out: dict[str, Any] = {
            **m,
            "rate": rate,
            "agent_late_s": round(late, 2),
            "sent_per_s": (sent1 - sent0) / wall,
            "planned_per_s": density(times, sim0, sim1) * rate if times is not None else None,
            "sim_window": [round(sim0 - day.day0), round(sim1 - day.day0)],
            "adverts_per_s": (_counter(s1, "adverts") - _counter(s0, "adverts")) / wall,
            "ble_adverts_per_s": (_counter(s1, "ble_adverts") - _counter(s0, "ble_adverts")) / wall,
            "gps_fixes_per_s": (_counter(s1, "nmea_sentences") - _counter(s0, "nmea_sentences")) / 2 / wall,
            "queue_dropped": _counter(s1, "queue_dropped"),
            "queue_depth_start": _counter(s0, "queue_depth"),
            "queue_depth_end": _counter(s1, "queue_depth"),
            "nmea_bad": _counter(s1, "nmea_bad") - _counter(s0, "nmea_bad"),
            "ble_callback_errors": _counter(s1, "ble_callback_errors"),
            "stops_matched": _counter(s1, "trips_matched"),
            "sim_cpu_pct": 100 * (me1 - me0) / (m1 - m0),
            "readings": dict(watcher.kinds),
        }
        out["backlog_end"] = sent1 - _counter(s1, "ble_adverts") + out["queue_depth_end"]
        return out
    finally:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        live.stop()
        watcher.close()


def sustained(r: dict[str, Any]) -> bool:
    """The source kept up: filed ≥ 95 % of what was sent, dropped nothing, its queue not growing, under a
    second of adverts waiting (in the socket and the queue) at the end."""
    return (
        r["adverts_per_s"] >= 0.95 * r["sent_per_s"]
        and r["queue_dropped"] == 0
        and r["queue_depth_end"] <= max(r["queue_depth_start"], r["sent_per_s"])
        and r["backlog_end"] <= max(r["sent_per_s"], 100.0)
    )


# --- in-process profile -------------------------------------------------------------------------------------


def profile_core(day: BusDay, spec: BusDaySpec, a: float, b: float, top: int) -> dict[str, Any]:
    """The agent's per-advert path in-process over [a, b): JSON line → Advert → hash → file; GPS → stop events →
    readings. Returns µs per advert for the stages and prints cProfile's top functions."""
    from bus_accuracy import bus_config

    from edge.sources.bus.ble_scan import decode_sim_line
    from edge.sources.bus.source import BusCore

    cfg = bus_config(spec)
    events = [(t, ev if isinstance(ev, bytes) else ev.to_json().encode()) for t, ev in day.stream(a, b)]
    lines = [(t, ev) for t, ev in events if not ev.startswith(b"$")]
    core = BusCore(cfg, a)

    def play() -> None:
        for t, ev in events:
            if ev.startswith(b"$"):
                core.on_gps(ev, t)
                core.tick(t)
            else:
                core.add(core.observe(decode_sim_line(ev, t)))

    t0 = time.perf_counter()
    play()
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = [decode_sim_line(ev, t) for t, ev in lines]
    t_decode = time.perf_counter() - t0
    core2 = BusCore(cfg, a)
    t0 = time.perf_counter()
    obs = [core2.observe(adv) for adv in decoded]
    t_observe = time.perf_counter() - t0
    t0 = time.perf_counter()
    for o in obs:
        core2.add(o)
    t_add = time.perf_counter() - t0
    n = len(lines)
    prof = cProfile.Profile()
    core = BusCore(cfg, a)
    prof.enable()
    play()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    print(buf.getvalue())
    return {
        "adverts": n,
        "gps_seconds": len(events) - n,
        "us_per_advert_all": 1e6 * total / n,
        "us_decode_sim_line": 1e6 * t_decode / n,
        "us_observe": 1e6 * t_observe / n,
        "us_add": 1e6 * t_add / n,
    }


# --- main ---------------------------------------------------------------------------------------------------


def _row(name: str, rs: list[dict[str, Any]], key: str, fmt: str = "{:.2f}") -> str:
    vals = [r[key] for r in rs]
    return (
        f"| {name} | "
        + ", ".join(fmt.format(v) for v in vals)
        + f" | **{fmt.format(statistics.median(vals))}** |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--spec", type=Path, default=DEFAULT_SPEC_PATH, help="the simulated day (BusDaySpec TOML)"
    )
    ap.add_argument("--adverts", type=float, default=300.0, help="adverts per real second to measure at")
    ap.add_argument("--busy", default="07:30-09:00", help="the peak window whose density sets the rate")
    ap.add_argument(
        "--at",
        help="HH:MM: start the window here, rate by bisection (default: a typical stretch "
        "of --busy, rate = adverts / its density)",
    )
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle-window", type=float, default=30.0)
    ap.add_argument("--no-realtime", action="store_true", help="skip the real-time (rate 1) reference")
    ap.add_argument(
        "--steps", default="300,1000,3000,5000,10000", help="adverts/s for the ceiling ('' to skip)"
    )
    ap.add_argument("--step-warmup", type=float, default=5.0)
    ap.add_argument("--step-window", type=float, default=20.0)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N", help="profile in-process, print top N")
    ap.add_argument("--py-spy", type=Path, metavar="DIR", help="py-spy the 300/s agent (if installed)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--interpreter", choices=["venv", "checkout"], default="venv",
                    help="venv: as the bundle installs the agent (default); checkout: the method before issue 13")
    args = ap.parse_args(argv)

    spec = BusDaySpec.load(args.spec)
    day = BusDay(spec)
    times = advert_times(day)
    b0, _, b1 = args.busy.partition("-")
    busy_a, busy_b = day.day0 + _hhmm_s(b0), day.day0 + _hhmm_s(b1)
    busy_density = density(times, busy_a, busy_b)
    if args.at is None:
        at_s = typical_start(times, busy_a, busy_b, args.adverts / busy_density * args.window)
        rate = rate_for(times, args.adverts, at_s, args.window, day.end_s)
    else:
        at_s = day.day0 + _hhmm_s(args.at)
        rate = rate_for(times, args.adverts, at_s, args.window, day.end_s)
    at_hhmm = time.strftime("%H:%M", time.gmtime(at_s - day.day0))
    print(
        f"day: {len(times)} adverts; {args.busy}: {busy_density:.2f} adverts per simulated s "
        f"(nominal rate {args.adverts / busy_density:.2f}); measuring from {at_hhmm} at rate {rate:.2f} "
        f"(window = {rate * args.window / 60:.1f} simulated min, "
        f"{density(times, at_s, at_s + rate * args.window):.2f} adverts per simulated s)",
        flush=True,
    )

    summary: dict[str, Any] = {
        "busy_window": args.busy,
        "busy_adverts_per_sim_s": round(busy_density, 2),
        "rate": round(rate, 3),
        "at": at_hhmm,
    }
    results: dict[str, Any] = {"runs": [], "steps": []}
    if args.cprofile:
        prof = profile_core(day, spec, at_s, at_s + rate * args.window, args.cprofile)
        print("in-process, per advert: " + ", ".join(f"{k} {v:.1f}" for k, v in prof.items()), flush=True)
        results["cprofile"] = summary["cprofile"] = prof

    py_spy = args.py_spy if args.py_spy and shutil.which("py-spy") else None
    if args.py_spy and py_spy is None:
        print("py-spy not installed: no profile", flush=True)
    if py_spy:
        py_spy.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="cityos-busedge-")
    runtime = agent_runtime(Path(tmp.name), args.interpreter)
    print(f"agent: {runtime.how}", flush=True)
    summary["agent"] = runtime.how
    stack = Stack(Path(tmp.name) / "stack")
    info = stack.up()
    runs: list[dict[str, Any]] = results["runs"]
    steps: list[dict[str, Any]] = results["steps"]
    try:
        for i in range(args.repeat):
            w = Path(tmp.name) / f"run{i}"
            r: dict[str, Any] = {
                "idle": phase(
                    info,
                    w / "idle",
                    day,
                    spec,
                    runtime=runtime,
                    rate=1.0,
                    at_s=day.start_s + args.warmup,
                    warmup=args.warmup,
                    window=args.idle_window,
                ),
            }
            if not args.no_realtime:
                r["realtime"] = phase(
                    info,
                    w / "rt",
                    day,
                    spec,
                    runtime=runtime,
                    rate=1.0,
                    at_s=at_s,
                    warmup=args.warmup,
                    window=args.idle_window,
                )
            r["busy"] = phase(
                info,
                w / "busy",
                day,
                spec,
                runtime=runtime,
                rate=rate,
                at_s=at_s,
                warmup=args.warmup,
                window=args.window,
                py_spy=py_spy / f"bus-agent-{i}.txt" if py_spy else None,
                times=times,
            )
            runs.append(r)
            b, idle = r["busy"], r["idle"]
            print(
                f"run {i}: {b['adverts_per_s']:.0f} adverts/s filed ({b['sent_per_s']:.0f} sent, "
                f"{b['gps_fixes_per_s']:.1f} GPS fixes/s), CPU {b['cpu_pct']:.2f}% of a core (user "
                f"{b['cpu_user_pct']:.2f}%), RSS median {b['rss_mb_median']:.1f} MiB "
                f"(max {b['rss_mb_max']:.1f}); "
                f"idle CPU {idle['cpu_pct']:.2f}%, RSS {idle['rss_mb_median']:.1f}"
                + (
                    f"; real time {r['realtime']['adverts_per_s']:.1f} adverts/s, CPU "
                    f"{r['realtime']['cpu_pct']:.2f}%, RSS {r['realtime']['rss_mb_median']:.1f}"
                    if "realtime" in r
                    else ""
                ),
                flush=True,
            )
        for target in [float(x) for x in args.steps.split(",") if x.strip()]:
            sr = rate_for(times, target, at_s, args.step_window, day.end_s)
            s = phase(
                info,
                Path(tmp.name) / f"step{int(target)}",
                day,
                spec,
                runtime=runtime,
                rate=sr,
                at_s=at_s,
                warmup=args.step_warmup,
                window=args.step_window,
            )
            s["target"] = target
            s["sustained"] = sustained(s)
            steps.append(s)
            print(
                f"step {target:.0f}/s (rate {sr:.1f}): sent {s['sent_per_s']:.0f}/s, "
                f"filed {s['adverts_per_s']:.0f}/s, "
                f"scanner {s['ble_adverts_per_s']:.0f}/s, queue dropped {s['queue_dropped']:.0f}, depth "
                f"{s['queue_depth_end']:.0f}, backlog {s['backlog_end']:.0f}, CPU {s['cpu_pct']:.1f}%, "
                f"RSS max {s['rss_mb_max']:.1f}, sim CPU {s['sim_cpu_pct']:.0f}%: "
                f"{'sustained' if s['sustained'] else 'NOT sustained'}",
                flush=True,
            )
        floor = edge_footprint.floor_rss(runtime, BUS_FLOOR_IMPORTS)
    finally:
        stack.down()
        tmp.cleanup()

    def med(part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in runs)

    ok = [s["adverts_per_s"] for s in steps if s["sustained"]]
    ceiling = max(ok) if ok else None
    adverts = med("busy", "adverts_per_s")
    summary |= {
        "adverts_per_s": round(adverts, 1),
        "cpu_pct_of_one_core": round(med("busy", "cpu_pct"), 2),
        "rss_mb_median": round(med("busy", "rss_mb_median"), 1),
        "rss_mb_max": round(med("busy", "rss_mb_max"), 1),
        "idle_cpu_pct": round(med("idle", "cpu_pct"), 2),
        "idle_rss_mb": round(med("idle", "rss_mb_median"), 1),
        "ceiling_adverts_per_s": round(ceiling, 0) if ceiling else None,
        "ceiling_is_lower_bound": bool(steps) and all(s["sustained"] for s in steps),
        "load_fraction_of_ceiling": round(adverts / ceiling, 3) if ceiling else None,
        "floor_rss_mb": round(floor, 1),
    }
    if runs and "realtime" in runs[0]:
        summary |= {
            "realtime_adverts_per_s": round(med("realtime", "adverts_per_s"), 1),
            "realtime_cpu_pct": round(med("realtime", "cpu_pct"), 2),
            "realtime_rss_mb": round(med("realtime", "rss_mb_median"), 1),
        }

    print()
    print("| measurement | runs | median |\n|---|---|---|")
    print(
        _row(
            f"adverts/s filed at {args.adverts:.0f}/s (rate {rate:.1f})",
            [r["busy"] for r in runs],
            "adverts_per_s",
            "{:.0f}",
        )
    )
    print(_row("CPU at that load, % of one core (target ≤ 10)", [r["busy"] for r in runs], "cpu_pct"))
    print(_row("RSS median, MiB (target ≤ 40)", [r["busy"] for r in runs], "rss_mb_median", "{:.1f}"))
    print(_row("RSS max, MiB", [r["busy"] for r in runs], "rss_mb_max", "{:.1f}"))
    if runs and "realtime" in runs[0]:
        print(
            _row(
                "real time (rate 1, peak): adverts/s",
                [r["realtime"] for r in runs],
                "adverts_per_s",
                "{:.1f}",
            )
        )
        print(_row("real time: CPU, %", [r["realtime"] for r in runs], "cpu_pct"))
        print(_row("real time: RSS median, MiB", [r["realtime"] for r in runs], "rss_mb_median", "{:.1f}"))
    print(_row("idle (depot, rate 1): CPU, %", [r["idle"] for r in runs], "cpu_pct"))
    print(_row("idle: RSS median, MiB", [r["idle"] for r in runs], "rss_mb_median", "{:.1f}"))
    print(f"| floor RSS (imports only), MiB | | {floor:.1f} |")
    for s in steps:
        print(
            f"| step {s['target']:.0f}/s: sent / filed adverts/s, CPU %, RSS max | {s['sent_per_s']:.0f} / "
            f"{s['adverts_per_s']:.0f}, {s['cpu_pct']:.1f} %, {s['rss_mb_max']:.1f} | "
            f"{'sustained' if s['sustained'] else 'not sustained'} |"
        )
    bound = "≥ " if summary["ceiling_is_lower_bound"] else ""
    print(f"| ceiling (highest sustained step), adverts/s | | {bound}{summary['ceiling_adverts_per_s']} |")
    print()
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({**results, "summary": summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
