"""Device sources, one folder per family (the family registry, ``cityos.families``, names them): each has its
sans-I/O core, its source adapter (``<family>/source.py``), a sample config and golden byte vectors. ``base``
is the plug-in interface (``Source``, ``SourceConfig``, ``SourceContext``, ``register``, ``plugin``); ``common``
holds what several families use."""

__all__ = ["base", "bus", "common", "forest", "meter", "truck"]
