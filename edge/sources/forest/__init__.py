"""Forest sensor stations on RS-485 Modbus RTU (soil moisture, rain, tilt: landslide risk).

``codec``: the sans-I/O core (register bytes in, readings out); ``source``: the adapter the agent runs for
``type = "forest_station"`` (pyserial: the Modbus RTU master is the codec's, see source.py for why). Nothing is imported here, so a core can be used without
the adapter's libraries.
"""

__all__ = ["codec", "source"]
