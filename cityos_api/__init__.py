"""The City OS API (FastAPI; docs/api.md): ``app.create_app`` (``cityos api serve``), ``settings`` (its TOML
config), ``auth`` (scopes and the hashed token store: ``cityos api token``), ``core`` (what every route shares:
scope checks, rate limit, reading InfluxDB, formats, problem details, metrics), ``families`` (each family's
routes), ``gtfs_rt`` (the buses' GTFS-Realtime feed) and ``opendata`` (suppression of small counts). It reads
InfluxDB through the kernel's client (``cityos.influx``); nothing is imported here."""

__all__ = ["app", "auth", "core", "families", "gtfs_rt", "opendata", "settings"]
