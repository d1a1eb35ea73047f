"""Simulated households' smart meters: a Wi-SUN module speaking SKSTACK-IP on a pseudo-terminal (``sim``) with the
meter's ECHONET Lite object behind it (``echonet``), and their part of the simulated city (``city``)."""

__all__ = ["city", "echonet", "sim"]
