"""The `cityos` command as an operator meets it, and what a gateway install pulls in."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "sub", [[], ["stack"], ["gateway"], ["ingest"], ["sim"], ["sim", "forest"], ["schema"], ["demo"]]
)
def test_every_subcommand_has_help(sub):
    r = subprocess.run(
        [sys.executable, "-m", "cityos_cli", *sub, "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_edge_extra_pulls_no_cloud_dependencies():
    """A gateway installs `.[edge]`: no FastAPI, no HTTP client, nothing of the ingest."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    edge = " ".join(meta["dependencies"] + meta["optional-dependencies"]["edge"]).lower()
    for pkg in ("fastapi", "httpx", "uvicorn", "influxdb"):
        assert pkg not in edge


def test_gateway_runs_without_cloud_packages(tmp_path):
    """The agent's import graph with httpx and fastapi made unimportable: still loads and validates a config."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('httpx', 'fastapi', 'ingest', 'cityos_api'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edge.agent, edge.sources.forest.source, cityos_cli.cli\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
