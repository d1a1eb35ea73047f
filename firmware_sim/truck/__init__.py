"""A simulated garbage truck on its route: a weighing indicator and a GPS on pseudo-terminals (``sim``), and its
part of the simulated city (``city``)."""

__all__ = ["city", "sim"]
