"""What the forest stations measure: a dry spell, then a storm. Deterministic from seed + scenario time.

Scenario time runs ``accel`` scenario seconds per second of the simulator's time base: real seconds, or simulated
seconds when the simulator runs on a :class:`cityos.simclock.ScaledClock` (then ``accel=1`` is the natural choice:
the storm takes its hours of simulated time). With ``accel=3600`` and no clock, one hour per real second, so a
test of a few seconds sees the dry spell turn into the storm. Every quantity is a pure function of
``(seed, unit, t)``:

* rain: cumulative rainfall is an integral of the rain rate (0 in the dry spell; a rise to a peak and a decay
  in the storm, sin²), so the tip counter derived from it never goes backwards;
* soil moisture rises with cumulative rain toward saturation (~47 %VWC), the 10 cm sensor first, the 30 cm one
  later and further behind (each responds to the rain of ``soil10_lag_hours`` / ``soil30_lag_hours`` earlier,
  and the deep one only once ~25 mm have soaked in), and dries slowly before the storm;
* groundwater (the optional water-level sensor, a piezometer in a borehole) rises with the rain of
  ``water_lag_hours`` earlier;
* tilt creeps slowly once the storm has soaked the slope. At the ``landslide_unit`` station (None: nowhere) the
  slope starts to move ``landslide_onset_hours`` into the storm: the tilt rate starts at ``creep_deg_h`` and
  doubles every ``creep_doubling_hours`` (creep accelerating toward failure, as in the tertiary-creep curves
  landslide monitoring watches for) up to ``creep_max_deg_h``, in a direction fixed per site;
* battery drains slowly (no solar in a storm);
* small sensor noise, seeded per (seed, unit, sample instant), is added to the analogue sensors.

:meth:`Scenario.heavy_rain` is the landslide-warning storm: hourly rain above 30 mm/h, an event total above
100 mm, both soil depths rising with a lag, and (at ``landslide_unit``) a tilt rate above 0.5 deg/h.

The physical model is crude by design; it exists to give the gateway realistic, moving, checkable values.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class SensorState:
    soil10_pct: float
    soil30_pct: float
    rain_total_mm: float
    tilt_x_deg: float
    tilt_y_deg: float
    battery_v: float
    water_level_m: float = 0.0


@dataclass(frozen=True)
class Scenario:
    accel: float = 1.0
    dry_hours: float = 2.0
    storm_hours: float = 12.0
    peak_rain_mm_h: float = 30.0
    saturation_pct: float = 47.0
    noise_pct: float = 0.15
    noise_tilt_deg: float = 0.01
    soil10_lag_hours: float = 0.2
    soil30_lag_hours: float = 1.0
    water_lag_hours: float = 0.5
    #: Scale of the slow creep of every soaked slope (deg per mm of rain beyond 40 mm: up to ±0.01 × this).
    soak_creep_factor: float = 1.0
    #: The station (unit id) whose slope starts to slide in the storm; None: none does.
    landslide_unit: int | None = None
    landslide_onset_hours: float = 2.0  # into the storm
    creep_deg_h: float = 0.05
    creep_doubling_hours: float = 0.5
    creep_max_deg_h: float = 5.0

    @classmethod
    def heavy_rain(cls, landslide_unit: int | None = 1, **overrides: Any) -> Scenario:
        """The landslide-warning case: a 6 h storm peaking at 70 mm/h (≈210 mm in all, ±15 % per site) after a
        1 h dry spell; unit ``landslide_unit``'s slope starts creeping 1.5 h into the storm and passes 0.5 deg/h
        about 1.7 h later (1 deg/h ≈ 2.2 h later). By 4 h into the storm every station has seen more than 30 mm/h
        and more than 100 mm; the other stations' soaked slopes creep at under 0.2 deg/h."""
        base = cls(
            dry_hours=1.0, storm_hours=6.0, peak_rain_mm_h=70.0, landslide_unit=landslide_unit,
            landslide_onset_hours=1.5, soak_creep_factor=0.2,
        )  # fmt: skip
        return replace(base, **overrides)

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

    # --- landslide ------------------------------------------------------------------------------------------
    def slide_deg(self, t_s: float) -> float:
        """Tilt the sliding slope has added by scenario time ``t_s`` (deg; closed form of the creep rate)."""
        tau = t_s / 3600 - self.dry_hours - self.landslide_onset_hours
        if tau <= 0:
            return 0.0
        v0, vmax, d = self.creep_deg_h, self.creep_max_deg_h, self.creep_doubling_hours
        k = math.log(2) / d
        tau_cap = math.log(vmax / v0) / k if vmax > v0 else 0.0  # when the rate reaches its cap
        if tau <= tau_cap:
            return v0 / k * math.expm1(k * tau)
        return v0 / k * math.expm1(k * tau_cap) + vmax * (tau - tau_cap)

    def slide_rate_deg_h(self, t_s: float) -> float:
        tau = t_s / 3600 - self.dry_hours - self.landslide_onset_hours
        if tau <= 0:
            return 0.0
        return min(self.creep_max_deg_h, self.creep_deg_h * 2 ** (tau / self.creep_doubling_hours))

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
        water0 = site.uniform(0.8, 2.0)  # groundwater above the piezometer, m
        downslope = site.uniform(0, 2 * math.pi)  # direction the slope would slide

        hours = t_s / 3600
        rain = self.rain_total_mm(t_s) * rain_factor
        rain10 = self.rain_total_mm(t_s - self.soil10_lag_hours * 3600) * rain_factor
        rain30 = self.rain_total_mm(t_s - self.soil30_lag_hours * 3600) * rain_factor
        rain_gw = self.rain_total_mm(t_s - self.water_lag_hours * 3600) * rain_factor
        dry = min(hours, self.dry_hours)
        top10 = base10 - 0.2 * dry  # slow drying before the storm
        top30 = base30 - 0.1 * dry
        soil10 = top10 + (self.saturation_pct - top10) * (1 - math.exp(-rain10 / 60.0))
        soil30 = top30 + (self.saturation_pct - 1.0 - top30) * (1 - math.exp(-max(0.0, rain30 - 25.0) / 90.0))
        water = water0 - 0.02 * dry + 3.0 * (1 - math.exp(-rain_gw / 120.0))
        soaked = max(0.0, rain - 40.0) * self.soak_creep_factor  # the slope creeps once it is soaked
        tilt_x = tilt_x0 + creep_x * soaked
        tilt_y = tilt_y0 + creep_y * soaked
        if unit == self.landslide_unit:
            slide = self.slide_deg(t_s)
            tilt_x += slide * math.cos(downslope)
            tilt_y += slide * math.sin(downslope)
        battery = battery0 - 0.004 * hours

        noise = random.Random(f"forest-noise:{seed}:{unit}:{round(t_s * 1000)}")
        return SensorState(
            soil10_pct=soil10 + noise.gauss(0, self.noise_pct),
            soil30_pct=soil30 + noise.gauss(0, self.noise_pct),
            rain_total_mm=rain,
            tilt_x_deg=tilt_x + noise.gauss(0, self.noise_tilt_deg),
            tilt_y_deg=tilt_y + noise.gauss(0, self.noise_tilt_deg),
            battery_v=battery + noise.gauss(0, 0.002),
            water_level_m=max(0.0, water + noise.gauss(0, 0.002)),
        )
