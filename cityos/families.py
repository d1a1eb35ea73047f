"""The device families: one descriptor each, and the one registry every floor loops over.

A family is its own folder on each side (docs/design.md, "Adding a family"):

* ``edge/sources/<name>/``: its sans-I/O core, its source adapter (``source.py``, registered for the gateway config's
  ``type = "<source_type>"``), its config model, a sample config (``sample.toml``);
* ``firmware_sim/<name>/``: its simulator (``sim.py``, ``python -m firmware_sim.<name>``) and its part of the
  simulated city (``city.py``: scenario section, plan, faults, demo line, check against the ground truth);
* ``dashboards/families/<name>.py``: its dashboards and alert rules;

plus one line in :data:`FAMILIES` and one section in the scenario. The descriptor holds only facts every floor may
know: its measurements on the wire, its id prefixes, its titles. Each floor finds its own part of a family by the
family's name (:attr:`Family.edge_module` and the others), so the kernel imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["FAMILIES", "Family", "by_name"]


@dataclass(frozen=True)
class Family:
    #: Folder name on each side: ``edge/sources/<name>/``, ``firmware_sim/<name>/``.
    name: str
    title_ja: str
    title_en: str
    #: The gateway config's ``[[sources]] type`` that reads this family's devices.
    source_type: str
    #: Wire reading kinds → InfluxDB measurement (the wire contract's measurement list is built from these).
    measurements: Mapping[str, str] = field(default_factory=dict)
    #: Gateway ids are ``<gateway_prefix><nn>`` in the simulated city; device ids start with ``device_prefix``.
    gateway_prefix: str = ""
    device_prefix: str = ""
    #: The scenario file's section for this family (``[forest]``, ``[meters]``...).
    scenario_section: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "measurements", MappingProxyType(dict(self.measurements)))

    @property
    def edge_module(self) -> str:
        """The module that registers this family's source plug-in (imported only when a config uses it)."""
        return f"edge.sources.{self.name}.source"

    @property
    def sim_module(self) -> str:
        """The simulator whose ``main(argv)`` ``cityos sim <name>`` runs."""
        return f"firmware_sim.{self.name}.sim"

    @property
    def city_module(self) -> str:
        """The family's part of the simulated city (its ``FAMILY``: a ``firmware_sim.cityplugin.CityFamily``)."""
        return f"firmware_sim.{self.name}.city"

    @property
    def dashboards_module(self) -> str:
        """The family's dashboards and alert rules (``DASHBOARDS``, ``ALERT_RULES``, ``OVERVIEW``)."""
        return f"dashboards.families.{self.name}"


#: Every family, in the order the demo and the dashboards show them. Adding a family is one line here.
FAMILIES: tuple[Family, ...] = (
    Family(name="forest", title_ja="森林・土砂災害", title_en="forest stations", source_type="forest_station",
            measurements={"forest_station": "forest"}, gateway_prefix="gw-forest-", device_prefix="forest-",
            scenario_section="forest"),
    Family(name="meter", title_ja="電力使用量", title_en="household smart meters", source_type="smart_meter",
            measurements={"smart_meter": "energy"}, gateway_prefix="gw-meter-", device_prefix="hh-",
            scenario_section="meters"),
    # one point per pickup (tagged district) and one per trip: edge/sources/truck/, docs/trucks.md
    Family(name="truck", title_ja="ごみ収集", title_en="garbage trucks", source_type="garbage_truck",
            measurements={"truck_collection": "waste_collection", "truck_trip": "waste_trip"},
            gateway_prefix="gw-truck-", device_prefix="truck-", scenario_section="trucks"),
    # ridership per stop visit and per segment, consenting app riders' origin-destination pairs (a per-day keyed
    # hash, never a token), and the live position for GTFS-Realtime: edge/sources/bus/, docs/bus.md
    Family(name="bus", title_ja="路線バス", title_en="buses", source_type="bus",
            measurements={"bus_stop_visit": "bus_stop", "bus_segment": "bus_segment", "bus_od": "bus_od",
                          "bus_position": "bus_position"},
            gateway_prefix="gw-bus-", device_prefix="bus-", scenario_section="buses"),
)


def by_name(name: str) -> Family:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(f"no family {name!r} (known: {', '.join(f.name for f in FAMILIES)})")

