"""Bus ridership accuracy against the simulator's ground truth over whole service days.

The simulator (``firmware_sim/bus/sim.py``) plays a service day of the loop bus: GPS NMEA bytes and every received
Bluetooth advertisement (as the core's own :class:`~edge.sources.bus.ble_ids.Advert`), with passengers boarding
and alighting by a seeded schedule. They go through :class:`edge.sources.bus.source.BusCore`, exactly the code a
gateway runs behind its ports, and the readings it produces are compared with the ground truth:

boardings per stop visit (MAE), occupancy per segment (MAPE, MAE, by band, interval coverage) and app riders'
origin-destination pairs (exact), by :func:`firmware_sim.bus.score.score` (the simulated city's check uses it too).

Devices per passenger (mean and spread) are calibrated on one day (``--calibration-seed``) and the accuracy is
measured on other days (``--seeds``), as a city would calibrate against a manual count and then rely on it.

    python benchmarks/bus_accuracy.py [--seeds 2 3 4 5 6] [--calibration-seed 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cityos.wire import Reading
from edge.sources.bus.ble_ids import Advert
from edge.sources.bus.source import BusConfig, BusCore
from firmware_sim.bus.score import score
from firmware_sim.bus.sim import BusDay, BusDaySpec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = ROOT / "scenarios" / "bus-day.toml"


def bus_config(spec: BusDaySpec, **ridership: Any) -> BusConfig:
    return BusConfig.model_validate(
        {
            "type": "bus",
            "name": "bus",
            "vehicle_id": "bus-01",
            "gps_port": "/dev/null",
            "feed": str(spec.feed),
            "ble": {"backend": "sim", "sim_socket": "/dev/null"},
            "ridership": {"city_uuid": str(spec.city_uuid), **ridership},
        }
    )


def play(spec: BusDaySpec, cfg: BusConfig) -> tuple[list[Reading], BusDay, dict[str, float]]:
    """One service day through the gateway's code; returns its readings, the day (truth) and timings."""
    day = BusDay(spec)
    core = BusCore(cfg, day.start_s)
    out: list[Reading] = []
    adverts = 0
    t0 = time.perf_counter()
    for t, ev in day.stream():
        if isinstance(ev, bytes):
            out += core.on_gps(ev, t)
            pos = core.tick(t)
            if pos is not None:
                out.append(pos)
        else:
            adverts += 1
            advert = Advert(
                address=ev.address,
                rssi=ev.rssi,
                rx_s=t,
                manufacturer_data=ev.manufacturer_data,
                service_uuids=ev.service_uuids,
            )  # what the gateway's socket backend makes of the simulator's line
            core.add(core.observe(advert))
    wall = time.perf_counter() - t0
    return out, day, {"adverts": adverts, "wall_s": wall, **core.health()}


def _truth(day: BusDay, event: str) -> list[dict[str, Any]]:
    return [r for r in day.truth if r.get("event") == event]


def calibrate(readings: list[Reading], day: BusDay) -> tuple[float, float, float]:
    """Devices per passenger and the crowding factor from a day's segments, by least squares on
    N = D·(1 + k·D) / r (heard devices D, passengers N), and the spread σ from Var(D | N) = N·σ²."""
    truth = {(s["trip_id"], s["from_sequence"]): s["occupancy"] for s in _truth(day, "segment")}
    pairs = [
        (float(r.values["devices"]), float(truth[key]))
        for r in readings
        if r.kind == "bus_segment"
        and (key := (str(r.values["trip_id"]), int(r.values["from_sequence"]))) in truth
    ]
    # N ≈ a·D + b·D², no intercept (no devices heard, nobody aboard): the 2×2 normal equations.
    s2 = sum(d * d for d, _ in pairs)
    s3 = sum(d**3 for d, _ in pairs)
    s4 = sum(d**4 for d, _ in pairs)
    t1 = sum(d * n for d, n in pairs)
    t2 = sum(d * d * n for d, n in pairs)
    det = s2 * s4 - s3 * s3
    a, b = (t1 * s4 - t2 * s3) / det, (s2 * t2 - s3 * t1) / det
    b = max(0.0, b)
    if b == 0.0:
        a = t1 / s2
    r, k = 1 / a, b / a
    total_n = sum(n for _, n in pairs)
    sigma = math.sqrt(sum((d * (1 + k * d) - r * n) ** 2 for d, n in pairs) / total_n)
    return r, k, sigma


def evaluate(readings: list[Reading], day: BusDay) -> dict[str, Any]:
    """The day's readings scored against its truth (:func:`firmware_sim.bus.score.score`)."""

    def of(kind: str) -> list[dict[str, Any]]:
        return [dict(r.values) for r in readings if r.kind == kind]

    return score(day.truth, of("bus_stop_visit"), of("bus_segment"), of("bus_od"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    ap.add_argument("--calibration-seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)

    base = BusDaySpec.load(args.scenario)
    cal_spec = base.model_copy(update={"seed": args.calibration_seed})
    readings, day, perf = play(cal_spec, bus_config(cal_spec))
    r, k, sigma = calibrate(readings, day)
    print(f"calibration day (seed {args.calibration_seed}): {perf['adverts']:.0f} adverts in {perf['wall_s']:.0f} s")
    print(f"  devices per passenger: mean {r:.3f}, spread {sigma:.3f}; crowding k {k:.4f}")
    results: dict[str, Any] = {
        "calibration": {"seed": args.calibration_seed, "r": r, "k": k, "sigma": sigma, **perf}
    }
    for seed in args.seeds:
        spec = base.model_copy(update={"seed": seed})
        cfg = bus_config(spec, devices_per_passenger=r, devices_per_passenger_sd=sigma, crowding_k=k)
        readings, day, perf = play(spec, cfg)
        m = evaluate(readings, day)
        results[f"seed_{seed}"] = {**m, "adverts": perf["adverts"], "wall_s": perf["wall_s"]}
        print(
            f"seed {seed}: boardings MAE {m['boardings_mae']:.2f} (mean {m['boardings_mean_true']:.2f}/visit), "
            f"occupancy MAPE {100 * m['occupancy_mape']:.1f} % (MAE {m['occupancy_mae']:.2f}, "
            f"mean {m['occupancy_mean_true']:.1f}, max {m['occupancy_max_true']}), "
            f"interval coverage {100 * m['occupancy_interval_coverage']:.0f} %, "
            f"OD exact {m['od_exact']}/{m['od_truth']} (reported {m['od_reported']}), "
            f"visits complete {m['visits_complete']}/{m['visits_truth']}; "
            f"{perf['adverts']:.0f} adverts, {perf['wall_s']:.0f} s"
        )
        for band, (mape, n) in m["occupancy_mape_by_band"].items():
            print(f"    occupancy {band:>5}: MAPE {100 * mape:5.1f} % over {n} segments")
    keys = ["boardings_mae", "occupancy_mape", "occupancy_mae", "od_exact", "od_truth"]
    med = {k: statistics.median(results[f"seed_{s}"][k] for s in args.seeds) for k in keys}
    print(
        f"median over {len(args.seeds)} days: boardings MAE {med['boardings_mae']:.2f}, "
        f"occupancy MAPE {100 * med['occupancy_mape']:.1f} %, OD exact {med['od_exact']:.0f}/{med['od_truth']:.0f}"
    )
    results["median"] = med
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
