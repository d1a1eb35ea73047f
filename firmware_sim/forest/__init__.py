"""A bus of simulated forest stations: a Modbus RTU server on a pseudo-terminal (``sim``), its weather
(``scenario``) and its part of the simulated city (``city``)."""

__all__ = ["city", "scenario", "sim"]
