"""The devices, simulated at the wire: one folder per family (``firmware_sim/<family>/``: its simulator ``sim``,
``python -m firmware_sim.<family>``, and its part of the simulated city, ``city``), what every simulator shares
(``device``: the lifecycle and the standalone main; ``pty``: the pseudo-terminal link; ``signals``), the
interface a family's part of the city implements (``cityplugin``) and the city-scale load generator (``loadgen``).
A simulator shares no code with the gateway it tests: it imports only the kernel."""

__all__ = ["bus", "cityplugin", "device", "forest", "loadgen", "meter", "pty", "signals", "truck"]
