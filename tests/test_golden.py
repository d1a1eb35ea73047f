"""Every family's golden cases: bytes (or the core's own events) in, readings out, through its sans-I/O core.

Each family keeps its cases beside its code, in ``edge/sources/<family>/golden/``: JSON files ``{"description",
"input", "readings"}`` and a ``replay(case) -> list[dict]`` (in that folder's ``__init__.py``) that feeds ``input``
to the family's core, no port, no thread, no clock, and returns the readings it produced as
:func:`cityos.wire.reading_dict` (every field, checked against the contract). The cases are the protocol's contract in bytes: a change that alters what a
core makes of them fails here, family by family, whatever the adapters do.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from cityos.families import FAMILIES

ROOT = Path(__file__).resolve().parent.parent


def _cases() -> list[tuple[str, Path]]:
    out = []
    for f in FAMILIES:
        folder = ROOT / "edge" / "sources" / f.name / "golden"
        out += [(f.name, p) for p in sorted(folder.glob("*.json"))]
    return out


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_every_family_has_golden_cases(family: str):
    folder = ROOT / "edge" / "sources" / family / "golden"
    assert len(list(folder.glob("*.json"))) >= 2, f"edge/sources/{family}/golden/ needs its byte vectors"


@pytest.mark.parametrize(("family", "path"), _cases(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_golden_case(family: str, path: Path):
    case = json.loads(path.read_text(encoding="utf-8"))
    replay = importlib.import_module(f"edge.sources.{family}.golden").replay
    assert replay(case) == case["readings"], case.get("description", path.name)
