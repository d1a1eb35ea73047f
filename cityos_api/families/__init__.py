"""Each family's API routes, one module per family named as its folder on every side (``forest``, ``meter``,
``truck``, ``bus``): ``router(api)`` returns its :class:`fastapi.APIRouter`, routes under ``/v1/<family>/...``,
each declared with its scope through :meth:`cityos_api.core.Api.route`. The app finds them by the families'
names (:data:`cityos.families.FAMILIES`); adding a family's API is adding its module here."""

__all__ = ["bus", "meter"]
