"""The API's config (TOML, unknown keys rejected; ``cityos api serve --config api.toml``)::

    [influx]                     # the read-only InfluxDB user: the API never writes
    url = "http://127.0.0.1:8086"
    db = "cityos"
    username = "cityos_reader"
    password_file = "/etc/cityos/api/influx-cityos_reader.password"   # 0600, owned by the API's service user

    [rollup]                     # the rollups (`cityos rollup`, docs/api.md "Pre-aggregation"), read as the same user
    db = "cityos_rollup"         # default: [influx] db + "_rollup"

    [places]                     # names and shapes: districts (GeoJSON with name and name_en), the buses' GTFS-JP
    districts_file = "/etc/cityos/api/districts.geojson"
    gtfs_dir = "/etc/cityos/api/gtfs"

    [auth]
    tokens_file = "/etc/cityos/api/tokens.json"   # `cityos api token create/list/revoke` (0600, hashed)

    [cors]
    allow_origins = ["https://opendata.city.tsuyama.example"]        # browsers' cross-origin readers: none by default

    [rate_limit]
    open_per_minute = 120        # requests without a token, per client address (behind the proxy: its X-Forwarded-For)
    burst = 60

    [health]
    fresh_within_s = 300         # /healthz: data is fresh when a gateway reported this recently

    [gtfs_rt]
    max_age_s = 300              # vehicles with no position for this long are left out of the feed

    [open_data]
    min_count = 10               # k: counts from 1 to k - 1 are hidden (at least 2)
    publish_after_h = 48         # a day (month) is published this long after it ends, once late data is in
    energy_settle_h = 6          # energy per district: served for half hours / days that ended this long ago (must
                                 # equal the rollup service's [rollup] energy_settle_h, which freezes them then)
    license = "CC BY 4.0"
    license_url = "https://creativecommons.org/licenses/by/4.0/deed.ja"
    publisher = "津山市 (Tsuyama City)"
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cityos.config import HttpUrl, load_toml
from cityos.influx import InfluxSettings
from cityos.privacy import MIN_HOUSEHOLDS
from cityos.rollups import target_db
from cityos_api.gtfs_rt import DEFAULT_MAX_AGE_S
from cityos_api.opendata import DEFAULT_MIN_COUNT, Publication

__all__ = [
    "ApiSettings",
    "AuthSettings",
    "CorsSettings",
    "GtfsRtSettings",
    "HealthSettings",
    "InfluxSettings",
    "OpenDataSettings",
    "PlacesSettings",
    "RateLimitSettings",
    "RollupSettings",
    "load_settings",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GtfsRtSettings(_Section):
    max_age_s: float = Field(default=DEFAULT_MAX_AGE_S, gt=0)


class OpenDataSettings(_Section):
    min_count: int = Field(default=DEFAULT_MIN_COUNT, ge=2)
    #: Households per group below which energy is hidden (the kernel's k; never lower).
    min_households: int = Field(default=MIN_HOUSEHOLDS, ge=MIN_HOUSEHOLDS)
    publish_after_h: float = Field(default=48.0, ge=0)
    #: Energy per district is served for periods that ended this long ago (the meters' backfill is in by then).
    energy_settle_h: float = Field(default=6.0, ge=0)
    license: str = Field(default=Publication.license, min_length=1)
    license_url: HttpUrl = Publication.license_url
    publisher: str = Field(default=Publication.publisher, min_length=1)


class AuthSettings(_Section):
    #: The token store; without one, only ``open`` routes answer (every other is 401).
    tokens_file: Path | None = None


class CorsSettings(_Section):
    #: Origins whose browsers may read the API (exact ``scheme://host[:port]``); empty: none.
    allow_origins: list[Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")]] = Field(
        default_factory=list)


class RateLimitSettings(_Section):
    open_per_minute: float = Field(default=120.0, gt=0)
    burst: int = Field(default=60, ge=1)
    #: Client addresses remembered at once (the oldest forgotten first): bounded memory under a flood.
    max_clients: int = Field(default=100_000, ge=100)


class HealthSettings(_Section):
    fresh_within_s: float = Field(default=300.0, gt=0)


class PlacesSettings(_Section):
    #: The city's districts: a GeoJSON FeatureCollection whose features have ``id``, ``name`` (Japanese) and
    #: ``name_en`` properties and a polygon (the ids are the readings' ``district`` tags).
    districts_file: Path | None = None
    #: The buses' GTFS-JP feed (a directory with stops.txt, and translations.txt for English names).
    gtfs_dir: Path | None = None


class RollupSettings(_Section):
    #: The rollups' database (energy and waste per district: ``cityos.rollups``); None: ``[influx] db`` + ``_rollup``.
    db: str | None = Field(default=None, min_length=1)


class ApiSettings(_Section):
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    rollup: RollupSettings = Field(default_factory=RollupSettings)
    places: PlacesSettings = Field(default_factory=PlacesSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    gtfs_rt: GtfsRtSettings = Field(default_factory=GtfsRtSettings)
    open_data: OpenDataSettings = Field(default_factory=OpenDataSettings)

    @property
    def rollup_db(self) -> str:
        """The rollups' database the district routes of energy and waste read."""
        return self.rollup.db or target_db(self.influx.db)


def load_settings(path: str | Path) -> ApiSettings:
    """Load and validate the TOML config (:class:`cityos.config.ConfigError` names the field and problem)."""
    return load_toml(ApiSettings, path)
