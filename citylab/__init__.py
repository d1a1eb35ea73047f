"""The developer's floor: the private stack, the simulated city and the demo. Production code never imports it
(``tests/test_layers.py``).

* ``stack``: a private Mosquitto + InfluxDB on loopback ports (``cityos stack``);
* ``pipeline``: processes as an operator starts them (``Proc``), configs for the stack, the forest pipeline the
  end-to-end tests kill and restart;
* ``city``: the scenario and the simulated city's driver (devices and agents, faults, the families' parts);
* ``cityrun``: the city through the real stack and every family's check (``CityRun``);
* ``demo``: ``cityos demo``;
* ``load``: ``cityos sim load`` against a stack.
"""

__all__ = ["city", "cityrun", "demo", "load", "pipeline", "stack"]
