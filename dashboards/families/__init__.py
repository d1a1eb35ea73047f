"""Each device family's dashboards section: ``dashboards/families/<family>.py`` (found by the family registry,
:attr:`cityos.families.Family.dashboards_module`) defines ``DASHBOARDS``, ``OVERVIEW_ROWS``, ``FLEET_PANELS`` and
``ALERT_RULES``; ``dashboards/catalog.py`` puts them together with the cross-family overview and fleet views."""
