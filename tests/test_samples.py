"""Every family's sample gateway config (``edge/sources/<family>/sample.toml``) is a config the gateway accepts:
what a technician copies is never stale. Files the sample names on a real gateway (the districts, the GTFS feed)
are pointed at the repository's copies here."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cityos.families import FAMILIES
from edge.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
ON_THE_GATEWAY = {
    "/etc/cityos/tsuyama-districts.geojson": ROOT / "scenarios" / "tsuyama-districts.geojson",
    "/var/lib/cityos/gtfs/gongo-loop": ROOT / "scenarios" / "gtfs-tsuyama-loop",
}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_the_sample_config_is_accepted(family):
    text = (ROOT / "edge" / "sources" / family.name / "sample.toml").read_text(encoding="utf-8")
    for field_path, here in ON_THE_GATEWAY.items():
        text = text.replace(f'"{field_path}"', f'"{here}"')
    cfg = parse_config(tomllib.loads(text), "sample.toml")
    assert [s.type for s in cfg.sources] == [family.source_type] * len(cfg.sources)
    assert cfg.gateway.id.startswith(family.gateway_prefix)
