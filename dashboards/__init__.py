"""Grafana dashboards and alert rules as code (docs/dashboards.md).

* ``catalog``: every dashboard and alert rule (``DASHBOARDS``, ``ALERT_RULES``), put together from each family's
  section (``families/<family>.py``) and the shared pieces (``common``), written in the types of ``model``;
* ``build``: the provisioning files (``cityos dashboards build``); ``push``: upload to a Grafana;
* ``preview``: PNG previews drawn from InfluxDB with the same queries (``queryrun`` runs them as Grafana would;
  ``macros`` expands Grafana's macros).
"""

__all__ = ["build", "catalog", "common", "families", "macros", "model", "preview", "push", "queryrun"]
