"""What a pass did, per job and in all (``cityos rollup`` logs one line per pass)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["JobReport", "Report"]


@dataclass
class JobReport:
    job: str
    #: rows written: half hours (energy), district days (waste), station periods and alert readings (forest)
    rows: int = 0
    #: JST days written (energy: ``energy_district_1d`` rows; forest: days completed or recomputed)
    days: int = 0
    #: write requests (each a batch and its progress point)
    batches: int = 0
    #: stored points that could not be used (skipped and counted, never a crash)
    skipped: int = 0
    #: where the job stands: its next period's start (energy: the first half hour not frozen yet; waste: the
    #: first day still recomputed); None when there is nothing to roll up yet
    until_ms: int | None = None

    def summary(self) -> str:
        return (f"{self.job}: {self.rows} rows, {self.days} days, {self.batches} batches, {self.skipped} points "
                f"skipped, until {self.until_ms}")


@dataclass
class Report:
    energy: JobReport = field(default_factory=lambda: JobReport("energy"))
    waste: JobReport = field(default_factory=lambda: JobReport("waste"))
    forest: JobReport = field(default_factory=lambda: JobReport("forest"))
    truck: JobReport = field(default_factory=lambda: JobReport("truck_cargo"))
    bus: JobReport = field(default_factory=lambda: JobReport("bus_vehicle"))
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.energy.summary()}; {self.waste.summary()}; {self.truck.summary()}; {self.bus.summary()}; "
                f"{self.forest.summary()}; {self.seconds:.2f} s")
