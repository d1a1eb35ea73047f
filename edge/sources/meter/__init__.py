"""Household smart meters over B-route (Wi-SUN module, SKSTACK-IP, ECHONET Lite through momonga).

``source``: the adapter the agent runs for ``type = "smart_meter"``. Nothing is imported here.
"""

__all__ = ["source"]
