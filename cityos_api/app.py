"""The City OS API (FastAPI): for now the buses' GTFS-Realtime VehiclePositions feed.

``cityos api --config api.toml`` runs it with uvicorn. Config (TOML, unknown keys rejected)::

    [influx]
    url = "http://127.0.0.1:8086"
    db = "cityos"
    username = "cityos-api"      # a read-only InfluxDB user is enough
    password = "secret"

    [gtfs_rt]
    max_age_s = 300              # vehicles with no position for this long are left out of the feed

Each request reads InfluxDB once (one InfluxQL query for every vehicle): journey planners poll every 10-30 s,
which InfluxDB answers in milliseconds, so there is no cache to go stale.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from cityos.config import HttpUrl, load_toml
from cityos.stack import InfluxQueryError
from cityos_api.gtfs_rt import DEFAULT_MAX_AGE_S, build_feed, feed_json, http_query, latest_positions

__all__ = ["ApiSettings", "create_app", "load_settings"]

PROTOBUF = "application/x-protobuf"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InfluxSettings(_Section):
    url: HttpUrl = "http://127.0.0.1:8086"
    db: str = Field(default="cityos", min_length=1)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    timeout_s: float = Field(default=10.0, gt=0)



class GtfsRtSettings(_Section):
    max_age_s: float = Field(default=DEFAULT_MAX_AGE_S, gt=0)


class ApiSettings(_Section):
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    gtfs_rt: GtfsRtSettings = Field(default_factory=GtfsRtSettings)


def load_settings(path: str | Path) -> ApiSettings:
    """Load and validate the TOML config (:class:`cityos.config.ConfigError` names the field and problem)."""
    return load_toml(ApiSettings, path)


def create_app(settings: ApiSettings, *, transport: Any = None) -> FastAPI:
    """The API app; ``transport`` (an httpx transport) is for tests that stand in for InfluxDB."""
    client = httpx.Client(timeout=settings.influx.timeout_s, trust_env=False, transport=transport)
    query = http_query(settings.influx.url, settings.influx.username, settings.influx.password, client=client)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()

    app = FastAPI(title="CityOS API", summary="Tsuyama City OS: open data from the city's sensors",
                  lifespan=lifespan)

    def feed_now() -> Any:
        now = time.time()
        try:
            positions = latest_positions(query, settings.influx.db, settings.gtfs_rt.max_age_s,
                                         now_ms=int(now * 1000))
        except (InfluxQueryError, httpx.HTTPError) as exc:
            # a journey planner should keep its last feed rather than read an empty one as "no buses"
            raise HTTPException(status_code=503, detail=f"InfluxDB unavailable: {exc}") from None
        return build_feed(positions, now)

    @app.get("/gtfs-rt/vehicle-positions.pb", response_class=Response,
             responses={200: {"content": {PROTOBUF: {}}}})
    def vehicle_positions_pb() -> Response:
        """GTFS-Realtime VehiclePositions (protobuf), full dataset."""
        return Response(feed_now().SerializeToString(), media_type=PROTOBUF)

    @app.get("/gtfs-rt/vehicle-positions.json", response_class=Response,
             responses={200: {"content": {"application/json": {}}}})
    def vehicle_positions_json() -> Response:
        """The same feed as JSON (protobuf's JSON mapping), for people."""
        return Response(feed_json(feed_now()), media_type="application/json")

    return app
