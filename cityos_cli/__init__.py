"""The ``cityos`` command (``python3 -m cityos_cli``): one entry for every piece, each subcommand importing its
code lazily, so a gateway with only the ``edge`` extra runs ``cityos gateway run``. Public: ``cli.main``."""

__all__ = ["cli"]
