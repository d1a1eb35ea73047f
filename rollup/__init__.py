"""The rollups: pre-aggregated rows the City OS API serves in milliseconds, written by a small cloud service of our
own through InfluxDB's v1 API (no continuous queries, no Flux: InfluxDB 3 and the clouds have neither), into a
database of their own (docs/api.md "Pre-aggregation", docs/operations.md "Rollups").

* ``energy``: energy per district and half hour, and per JST day, **frozen** once settled (never rewritten);
* ``waste``: waste per district and JST day, recomputed while late pickups may land;
* ``truck``: the trucks' cargo (the NGSI-LD Vehicle's ``cargoWeight``) per truck and hour and JST day, recomputed
  as the waste days are;
* ``bus``: the buses' speed, heading and occupancy (the NGSI-LD Vehicle's) per bus and hour and JST day, likewise;
* ``store``: the source and target through the kernel's client, a batch and its progress point per request;
* ``config``: ``RollupConfig``, ``load_config`` (``[influx]`` the source, ``[rollup]`` the target and timings);
* ``service``: ``run_once`` (one pass, from Python: tests, the demo, benchmarks) and ``main``
  (``cityos rollup --config rollup.toml [--once]``).

The measurements and the household half hour they share with the API are the kernel's (``cityos.rollups``).
"""

from rollup.config import RollupConfig, RollupSection, load_config
from rollup.report import JobReport, Report
from rollup.service import main, open_client, run_once
from rollup.store import RollupError

__all__ = ["JobReport", "Report", "RollupConfig", "RollupError", "RollupSection", "load_config", "main",
           "open_client", "run_once"]
