"""Household smart meters over B-route (Wi-SUN module, SKSTACK-IP, ECHONET Lite through momonga).

``core``: the sans-I/O rules (``MeterCore``: the ECHONET values momonga decoded in, readings and the state to
commit out: each :00/:30 slot exactly once across restarts, missed slots recovered from the meter's history);
``source``: the adapter the agent runs for ``type = "smart_meter"`` (momonga, sessions, backoff, logging).
Nothing is imported here.
"""

__all__ = ["core", "source"]
