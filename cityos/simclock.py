"""A scaled clock shared by the simulated city's devices and the gateways that read them.

A city day in a few minutes needs every party to agree on what time it is: the forest station's RTC, the meter's
:00/:30 fixed-time readings, the GPS receiver's RMC time and the gateway that stamps and forwards them. They all
compute the simulated time from the same three numbers, so separate processes (and a restarted one) agree without
talking to each other: ``sim = sim_start + (real_now - real_anchor) * rate``.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field


class ScaledClock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Simulated epoch seconds at ``real_anchor``.
    sim_start: float = Field(ge=0)
    #: Real epoch seconds at which the simulated clock reads ``sim_start``.
    real_anchor: float = Field(ge=0)
    #: Simulated seconds per real second (288 = a day in 5 minutes).
    rate: float = Field(default=1.0, gt=0, le=100_000)
    #: Simulated time stands still here: the simulated day ends, and the gateways deliver what they hold
    #: without their clocks running on into the real future (the ingest rejects readings from the future).
    until: float | None = None

    def now(self) -> float:
        t = self.sim_start + (time.time() - self.real_anchor) * self.rate
        return t if self.until is None or t < self.until else self.until

    def real_at(self, sim_s: float) -> float:
        """The real epoch time at which the simulated clock reads ``sim_s``."""
        return self.real_anchor + (sim_s - self.sim_start) / self.rate

    def real_delay(self, sim_seconds: float) -> float:
        """How long (real seconds) a simulated duration takes."""
        return sim_seconds / self.rate
