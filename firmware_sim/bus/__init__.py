"""A simulated loop bus's service day: GPS on a pseudo-terminal and Bluetooth adverts on a socket (``sim``), its
timetable (``timetable``), the scorer of ridership estimates against its truth (``score``) and its part of the
simulated city (``city``)."""

__all__ = ["city", "score", "sim", "timetable"]
