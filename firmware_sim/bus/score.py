"""Bus ridership scored against the simulator's ground truth: one scorer for the benchmark and the city check.

Inputs are plain dicts of values, as a reading carries them (``Reading.values``) or as InfluxDB returns a point,
so the accuracy benchmark (readings straight from the gateway's code) and the simulated city (points read back
from InfluxDB) are scored by the same rules:

* **boardings per stop visit**: MAE over the visits reported complete (``boardings`` present), and per stop
  over the day (relative error of the day's total);
* **occupancy per segment**: MAPE over segments with at least one passenger aboard, MAE, by occupancy band, and
  how often the truth lies in the reported 90 % interval;
* **app riders' origin-destination pairs**: exact (same boarding and alighting trip and stop sequence), as a
  multiset (two riders may make the same trip).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

Values = Mapping[str, Any]


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def _band(n: float) -> str:
    return "1-5" if n <= 5 else "6-15" if n <= 15 else "16-25" if n <= 25 else "26+"


def score(
    truth: Iterable[Values], visits: Iterable[Values], segments: Iterable[Values], ods: Iterable[Values]
) -> dict[str, Any]:
    """Accuracy of a day's ``bus_stop_visit``, ``bus_segment`` and ``bus_od`` values against the truth records."""
    truth = list(truth)
    visits_t = {(v["trip_id"], v["stop_sequence"]): v for v in truth if v.get("event") == "stop_visit"}
    segs_t = {(s["trip_id"], s["from_sequence"]): s for s in truth if s.get("event") == "segment"}

    b_err: list[float] = []
    a_err: list[float] = []
    b_true: list[float] = []
    per_stop_est: dict[str, float] = defaultdict(float)
    per_stop_true: dict[str, float] = defaultdict(float)
    seen: Counter[tuple[str, int]] = Counter()
    extra = 0
    complete = 0
    for v in visits:
        key = (str(v["trip_id"]), int(v["stop_sequence"]))
        seen[key] += 1
        t = visits_t.get(key)
        if t is None:
            extra += 1
            continue
        if v.get("boardings") is None:
            continue
        complete += 1
        b_err.append(abs(float(v["boardings"]) - t["boardings"]))
        a_err.append(abs(float(v["alightings"]) - t["alightings"]))
        b_true.append(t["boardings"])
        per_stop_est[t["stop_id"]] += float(v["boardings"])
        per_stop_true[t["stop_id"]] += t["boardings"]

    ape: list[float] = []
    ae: list[float] = []
    inside = 0
    bands: dict[str, list[float]] = defaultdict(list)
    reported = 0
    for s in segments:
        t = segs_t.get((str(s["trip_id"]), int(s["from_sequence"])))
        if t is None:
            continue
        reported += 1
        est, lo, hi, n = float(s["occupancy"]), float(s["occupancy_lo"]), float(s["occupancy_hi"]), t["occupancy"]
        ae.append(abs(est - n))
        inside += lo <= n <= hi
        if n >= 1:
            ape.append(abs(est - n) / n)
            bands[_band(n)].append(abs(est - n) / n)

    riders_t = Counter(
        (a["board_trip_id"], a["board_sequence"], a["alight_trip_id"], a["alight_sequence"])
        for a in truth
        if a.get("event") == "app_rider"
    )
    od = Counter(
        (str(o["board_trip_id"]), int(o["board_sequence"]), str(o["alight_trip_id"]), int(o["alight_sequence"]))
        for o in ods
    )
    return {
        "visits_truth": len(visits_t),
        "visits_reported": sum(1 for k in seen if k in visits_t),
        "visits_doubled": sum(1 for n in seen.values() if n > 1),
        "visits_extra": extra,
        "visits_complete": complete,
        "boardings_mae": _mean(b_err),
        "alightings_mae": _mean(a_err),
        "boardings_mean_true": _mean(b_true),
        "boardings_per_stop_day_mape": _mean(
            [abs(per_stop_est[s] - per_stop_true[s]) / per_stop_true[s] for s in per_stop_true if per_stop_true[s]]
        ),
        "segments_truth": len(segs_t),
        "segments_reported": reported,
        "occupancy_mape": _mean(ape),
        "occupancy_mae": _mean(ae),
        "occupancy_mean_true": _mean([s["occupancy"] for s in segs_t.values()]),
        "occupancy_max_true": max((s["occupancy"] for s in segs_t.values()), default=0),
        "occupancy_interval_coverage": inside / reported if reported else math.nan,
        "occupancy_mape_by_band": {k: (_mean(v), len(v)) for k, v in sorted(bands.items())},
        "od_truth": riders_t.total(),
        "od_reported": od.total(),
        "od_exact": (od & riders_t).total(),
    }
