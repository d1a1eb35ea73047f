"""The house's fence, module by module (docs/design.md, "The house").

Floors, from the ground up; a module may import its own package and the floors below as listed, never up:

* ``cityos``: the kernel (wire contract, config types, clock, the InfluxDB client, the family registry):
  nothing else of the project;
* production: ``edge`` (the gateway), ``ingest``, ``rollup``, ``cityos_api``, ``dashboards``, ``fleet`` (the cloud
  side): the kernel only.
  The gateway and the cloud share nothing but the kernel, and the gateway never loads the InfluxDB client or an
  HTTP stack (they are not in its install);
* ``firmware_sim``: the devices, simulated at the wire: the kernel only (a simulator shares no code with the
  gateway it tests);
* ``citylab``: the developer's stack and the simulated city: anything below;
* ``cityos_cli``: the ``cityos`` command: anything.

Every import counts, at any depth (a lazy import in a function is an arrow too), and the module graph has no circle.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cityos", "edge", "ingest", "rollup", "cityos_api", "dashboards", "fleet", "firmware_sim", "citylab",
            "cityos_cli")
KERNEL = {"cityos"}
#: package → the project packages its modules may import besides its own.
ALLOWED: dict[str, set[str]] = {
    "cityos": set(),
    "edge": KERNEL,
    "ingest": KERNEL,
    "rollup": KERNEL,
    "cityos_api": KERNEL,
    "dashboards": KERNEL,
    "fleet": KERNEL,
    "firmware_sim": KERNEL,
    "citylab": {"cityos", "edge", "ingest", "rollup", "cityos_api", "dashboards", "fleet", "firmware_sim"},
    "cityos_cli": {"cityos", "edge", "ingest", "rollup", "cityos_api", "dashboards", "fleet", "firmware_sim",
                   "citylab"},
}
#: Third-party (or kernel) modules a package must never load, with why.
FORBIDDEN_EXTERNAL: dict[str, dict[str, str]] = {
    "edge": {
        "httpx": "not in the gateway's install",
        "fastapi": "not in the gateway's install",
        "cityos.influx": "the InfluxDB client is cloud-side (httpx is not in the gateway's install)",
    },
}


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (root / pkg).rglob("*.py"):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def imports_of(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports (project modules resolved to the module file; others as written)."""
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in known else base)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports_of(p, m, known) for m, p in known.items()}


def violations(root: Path) -> list[str]:
    known = modules(root)
    g = graph(root)
    out = []
    for mod, deps in sorted(g.items()):
        pkg = mod.split(".")[0]
        for dep in sorted(deps):
            top = dep.split(".")[0]
            if top in PACKAGES and top != pkg and top not in ALLOWED[pkg]:
                out.append(f"{mod} imports {dep}: {pkg} may import only {sorted(ALLOWED[pkg]) or 'itself'}")
            for bad, why in FORBIDDEN_EXTERNAL.get(pkg, {}).items():
                if dep == bad or dep.startswith(bad + "."):
                    out.append(f"{mod} imports {dep}: {why}")
    # circles: project modules only, with the package itself standing for its __init__
    project = {m: {d for d in deps if d in known and d != m} for m, deps in g.items()}
    out += [f"circle: {' -> '.join(c)}" for c in _cycles(project)]
    return out


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return comps


def test_the_tree_keeps_its_floors_and_has_no_circle():
    assert violations(ROOT) == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the project's packages to break on purpose."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.mark.parametrize(
    ("where", "code", "expect"),
    [
        ("cityos/wire.py", "from citylab.stack import StackInfo\n", "cityos.wire imports citylab.stack"),
        ("cityos/simclock.py", "def f():\n    import edge.outbox\n", "cityos.simclock imports edge.outbox"),
        ("ingest/service.py", "from citylab import stack\n", "ingest.service imports citylab.stack"),
        ("rollup/energy.py", "from cityos_api.params import iso\n", "rollup.energy imports cityos_api.params"),
        ("cityos_api/app.py", "import firmware_sim.bus.sim\n", "cityos_api.app imports firmware_sim.bus.sim"),
        ("dashboards/queryrun.py", "from citylab.stack import StackInfo\n", "dashboards.queryrun imports citylab"),
        ("edge/agent.py", "from cityos.influx import InfluxClient\n", "the InfluxDB client is cloud-side"),
        ("edge/outbox.py", "import ingest.decode\n", "edge.outbox imports ingest.decode"),
        ("firmware_sim/pty.py", "from edge.outbox import Outbox\n", "firmware_sim.pty imports edge.outbox"),
        ("edge/sources/base.py", "def f():\n    import edge.config\n", "circle: edge.config -> edge.sources.base"),
    ],
)
def test_the_fence_catches_a_bad_import(tree: Path, where: str, code: str, expect: str):
    assert violations(tree) == []
    f = tree / where
    f.write_text(f.read_text(encoding="utf-8") + "\n" + code, encoding="utf-8")
    found = violations(tree)
    assert any(expect in v for v in found), found
