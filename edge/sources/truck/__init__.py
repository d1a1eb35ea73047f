"""Garbage trucks: a weighing indicator on RS-232 and a GPS (NMEA 0183), pickups per district.

``weighing``: the sans-I/O core of the indicator's lines; ``source``: the collection tracker (fixes and weights
in, pickups and trips out) and the adapter the agent runs for ``type = "garbage_truck"``; ``golden``: byte-vector
cases. Nothing is imported here.
"""

__all__ = ["golden", "source", "weighing"]
