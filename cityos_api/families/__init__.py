"""Each family's API routes, one module per family named as its folder on every side (``forest``, ``meter``,
``truck``, ``bus``): ``router(api)`` returns its :class:`fastapi.APIRouter`, routes under ``/v1/<family>/...``,
each declared with its scope through :meth:`cityos_api.core.Api.route`. The app finds them by the families'
names (:data:`cityos.families.FAMILIES`, :func:`cityos_api.core.family_parts`); adding a family's API is adding
its module here. A family's NGSI-LD entities are ``<name>_ngsi.py``'s ``provider(api)`` (docs/ngsi-ld.md)."""

__all__ = ["bus", "bus_ngsi", "forest", "forest_ngsi", "meter", "truck", "truck_ngsi"]
