"""What the forest stations measure: a dry spell, then a storm. Deterministic from seed + scenario time.

Scenario time runs ``accel`` scenario seconds per real second (``accel=3600``: one hour per second), so a test
of a few seconds sees the dry spell turn into the storm. Every quantity is a pure function of
``(seed, unit, t)``:

* rain: cumulative rainfall is an integral of the rain rate (0 in the dry spell; a rise to a peak and a decay
  in the storm), so the tip counter derived from it never goes backwards;
* soil moisture rises with cumulative rain toward saturation (~47 %VWC), the 10 cm sensor first, the 30 cm one
  lagging, and dries slowly before the storm;
* tilt creeps slowly once the storm has soaked the slope;
* battery drains slowly (no solar in a storm);
* small sensor noise, seeded per (seed, unit, sample instant), is added to the analogue sensors.

The physical model is crude by design; it exists to give the gateway realistic, moving, checkable values.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class SensorState:
    soil10_pct: float
    soil30_pct: float
    rain_total_mm: float
    tilt_x_deg: float
    tilt_y_deg: float
    battery_v: float


@dataclass(frozen=True)
class Scenario:
    accel: float = 1.0
    dry_hours: float = 2.0
    storm_hours: float = 12.0
    peak_rain_mm_h: float = 30.0
    saturation_pct: float = 47.0
    noise_pct: float = 0.15
    noise_tilt_deg: float = 0.01

    # --- rain -----------------------------------------------------------------------------------------------
    def rain_rate_mm_h(self, t_s: float) -> float:
        """Rain rate at scenario time ``t_s``: a smooth bump (sin²) over the storm."""
        h = t_s / 3600 - self.dry_hours
        if h <= 0 or h >= self.storm_hours:
            return 0.0
        return self.peak_rain_mm_h * math.sin(math.pi * h / self.storm_hours) ** 2

    def rain_total_mm(self, t_s: float) -> float:
        """Integral of :meth:`rain_rate_mm_h` from 0 to ``t_s`` (closed form, monotone)."""
        h = min(max(t_s / 3600 - self.dry_hours, 0.0), self.storm_hours)
        d = self.storm_hours
        # ∫ sin²(πx/d) dx = x/2 - d/(4π)·sin(2πx/d)
        return self.peak_rain_mm_h * (h / 2 - d / (4 * math.pi) * math.sin(2 * math.pi * h / d))

    # --- per station ----------------------------------------------------------------------------------------
    def state(self, seed: int, unit: int, t_s: float) -> SensorState:
        site = random.Random(f"forest-site:{seed}:{unit}")  # fixed per station: where it stands
        rain_factor = site.uniform(0.85, 1.15)
        base10 = site.uniform(20.0, 26.0)
        base30 = site.uniform(26.0, 31.0)
        tilt_x0 = site.uniform(-1.5, 1.5)
        tilt_y0 = site.uniform(-1.5, 1.5)
        creep_x = site.uniform(-0.01, 0.01)
        creep_y = site.uniform(-0.01, 0.01)
        battery0 = site.uniform(3.85, 4.10)

        hours = t_s / 3600
        rain = self.rain_total_mm(t_s) * rain_factor
        dry = min(hours, self.dry_hours)
        top10 = base10 - 0.2 * dry  # slow drying before the storm
        top30 = base30 - 0.1 * dry
        soil10 = top10 + (self.saturation_pct - top10) * (1 - math.exp(-rain / 60.0))
        soil30 = top30 + (self.saturation_pct - 1.0 - top30) * (1 - math.exp(-max(0.0, rain - 25.0) / 90.0))
        soaked = max(0.0, rain - 40.0)  # the slope creeps once it is soaked
        tilt_x = tilt_x0 + creep_x * soaked
        tilt_y = tilt_y0 + creep_y * soaked
        battery = battery0 - 0.004 * hours

        noise = random.Random(f"forest-noise:{seed}:{unit}:{round(t_s * 1000)}")
        return SensorState(
            soil10_pct=soil10 + noise.gauss(0, self.noise_pct),
            soil30_pct=soil30 + noise.gauss(0, self.noise_pct),
            rain_total_mm=rain,
            tilt_x_deg=tilt_x + noise.gauss(0, self.noise_tilt_deg),
            tilt_y_deg=tilt_y + noise.gauss(0, self.noise_tilt_deg),
            battery_v=battery + noise.gauss(0, 0.002),
        )
