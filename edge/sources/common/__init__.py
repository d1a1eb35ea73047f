"""What more than one family's source uses: a serial port that survives unplugging (``serialport``), a line
splitter for byte streams (``lines``), the NMEA 0183 GPS core (``nmea``), district polygons and distances
(``geo``) and the rate-limited log filter (``logs``)."""

__all__ = ["geo", "lines", "logs", "nmea", "serialport"]
