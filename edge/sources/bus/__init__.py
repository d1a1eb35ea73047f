"""Buses: passengers from Bluetooth LE advertisements, GPS and the GTFS-JP timetable, private by design.

Sans-I/O cores: ``gtfs`` (the feed), ``stops`` (GPS fixes → stop events), ``ble_ids`` (adverts → hashed ids),
``ridership`` (stop events + observations → counts), ``readings`` (counts → wire readings). Adapters: ``ble_scan``
(bleak over BlueZ, or the simulator's socket) and ``source`` (what the agent runs for ``type = "bus"``). Nothing
is imported here.
"""

__all__ = ["ble_ids", "ble_scan", "gtfs", "readings", "ridership", "source", "stops"]
