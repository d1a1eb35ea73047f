"""The rollup service's config: pydantic models loaded from TOML (unknown keys rejected; a load error is a
:class:`~cityos.config.ConfigError` naming the field and the problem).

Example (``deploy/cloud/rollup.example.toml``)::

    [influx]                     # the SOURCE: the city's raw data, read as cityos_rollup (READ on it)
    url = "http://127.0.0.1:8086"
    db = "cityos"
    username = "cityos_rollup"   # READ on the source, READ and WRITE on the target (`cityos fleet influxdb`)
    password_file = "/etc/cityos/rollup/influx-cityos_rollup.password"   # 0600, owned by cityos-rollup

    [rollup]
    db = "cityos_rollup"         # the TARGET: the rollups (default: the source's name + "_rollup")
    interval_s = 300             # one pass every 5 minutes
    energy_settle_h = 6          # MUST equal the API's [open_data] energy_settle_h: a half hour is frozen this
                                 # long after it ends (the meters' backfill is in by then), never rewritten
    recompute_days = 3           # waste per district and day: a day is recomputed on every pass until this many
                                 # days after it ended (late pickups land), then left as it is; the forest's
                                 # late readings (a gateway's backlog) are looked for this far back
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cityos.config import load_toml
from cityos.influx import InfluxSettings
from cityos.rollups import target_db

__all__ = ["RollupConfig", "RollupSection", "load_config"]


class RollupSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The target database (the rollups); None: the source's name + ``_rollup``.
    db: str | None = Field(default=None, min_length=1)
    #: Seconds between the starts of two passes (``cityos rollup`` without ``--once``).
    interval_s: float = Field(default=300.0, gt=0, le=86_400)
    #: A half hour is frozen (written once, never again) this long after it ends. Must equal the API's
    #: ``[open_data] energy_settle_h``: the API serves a period from then on, and the rollup must have it by then.
    energy_settle_h: float = Field(default=6.0, ge=0, le=24 * 31)
    #: A waste day is recomputed on every pass until this many days after it ended; forest readings arriving
    #: late are looked for (and their station days rolled up again) this far back.
    recompute_days: int = Field(default=3, ge=0, le=400)


class RollupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    rollup: RollupSection = Field(default_factory=RollupSection)

    @property
    def target(self) -> str:
        """The target database's name."""
        return self.rollup.db or target_db(self.influx.db)


def load_config(path: str | Path) -> RollupConfig:
    """Load and validate the TOML config (:class:`cityos.config.ConfigError` names the field and the problem)."""
    return load_toml(RollupConfig, path)
