"""The privacy rule every reader of household data follows (docs/privacy.md): the one place its number lives.

A value grouped over households (a district's energy, a percentile over households) is shown only where at least
:data:`MIN_HOUSEHOLDS` households report in that group and period; the API and the dashboards both read this
constant, so a dashboard can never show a smaller group than the API would. 10 is the MHLW NDB convention the open
data already uses (k = 10). Per-household values are internal (the energy division's scope) and never grouped
below it.
"""

from __future__ import annotations

__all__ = ["MIN_HOUSEHOLDS"]

#: k: a group of households is shown only when at least this many report in it.
MIN_HOUSEHOLDS = 10
