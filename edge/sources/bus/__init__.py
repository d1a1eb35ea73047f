"""Buses: passengers from Bluetooth LE advertisements, GPS and the GTFS-JP timetable, private by design.

Sans-I/O cores: ``gtfs`` (the feed), ``stops`` (GPS fixes → stop events), ``ble_ids`` (the core's own ``Advert``
and the hashed ids made of it), ``ridership`` (stop events + observations → counts), ``readings`` (counts → wire
readings). Adapters: ``ble_scan`` (bleak over BlueZ, taken apart into ``Advert`` in one place, or the simulator's
socket) and ``source`` (what the agent runs for ``type = "bus"``; ``BusCore`` is the source without its ports).
``golden`` holds the byte-vector cases run through ``BusCore``. Nothing is imported here.
"""

__all__ = ["ble_ids", "ble_scan", "golden", "gtfs", "readings", "ridership", "source", "stops"]
