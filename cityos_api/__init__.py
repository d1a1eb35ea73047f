"""The City OS API (FastAPI): ``app.create_app``/``app.load_settings`` (``cityos api``), the buses' GTFS-Realtime
feed (``gtfs_rt``) and open data with small counts suppressed (``opendata``). It reads InfluxDB through the
kernel's client (``cityos.influx``); nothing is imported here."""

__all__ = ["app", "gtfs_rt", "opendata"]
