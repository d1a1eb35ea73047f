"""The kernel: what every floor of the house shares, and nothing else of the project.

* ``wire``: the wire contract (readings, batches, statuses, topics, JSON Schemas): the only thing the gateway and
  the cloud exchange;
* ``families``: the device families' descriptors and their registry (``FAMILIES``);
* ``config``: config loading (TOML → pydantic, errors that name the field) and the one TOML writer;
* ``simclock``: the scaled clock of the simulated city;
* ``landslide``: the forest stations' landslide thresholds and criteria (a reading's alert level), shared by the
  dashboards' alert rules and the API;
* ``privacy``: the k of every reader of household data (API and dashboards);
* ``credentials``: secret and TLS files as a config names them, and the one writer of private files;
* ``influx``: the one InfluxDB client (v1 HTTP API; cloud side only: it needs httpx, which a gateway does not
  install);
* ``rollups``: the pre-aggregated measurements the rollup service writes and the API reads, and the one
  computation of a household's half hour (cloud side).

Nothing is imported here, so a gateway that imports ``cityos.wire`` loads neither httpx nor the InfluxDB client.
"""

__all__ = ["config", "credentials", "families", "influx", "landslide", "privacy", "rollups", "simclock", "wire"]
