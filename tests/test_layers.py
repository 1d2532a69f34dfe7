"""The import graph: packages import one way down the layers, no module cycle, and ``sim``
stays a plain-Python core (no torch, diffusers, plotly or numpy).

Read statically from the source with ``ast``, so an import inside a function or under
``if TYPE_CHECKING:`` counts the same as one at the top of a module: neither is a way around a
layer, and a cycle kept out of run time that way is still two modules that need each other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]

# A module may import only from its own layer or a lower one.
LAYERS = {"sim": 0, "reports": 1, "executor": 2, "profiles": 3, "validation": 4,
          "benchmarks": 4}
# The simulator's declared dependencies (pyproject's ``dependencies``): a planning host installs
# only these, so anything else imported by ``sim`` breaks ``pip install ditsim``.
SIM_THIRD_PARTY = {"simpy"}
# Optional extras ``sim`` may import inside a function, only when asked (the API's to_frame()
# tables: pyproject's ``api`` extra; torch for the speed probe of a CPU profile used on this
# machine's CPU, sim.cost.probe, which says so in a note when torch is missing); the
# import-time test below checks they stay unloaded.
SIM_OPTIONAL = {"pandas", "torch"}
# Heavy optional packages that must never be imported when ``sim`` is.
NOT_IN_SIM = ("torch", "diffusers", "plotly", "numpy", "pandas")


@dataclass(frozen=True)
class Import:
    """One import statement's target as seen from ``source``, at ``line`` of its file."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the layered packages."""
    out: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in ``path``, function-local ones included. ``from pkg import name`` targets
    ``pkg.name`` when that is a module of the project, else ``pkg``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend(Import(module, a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(module, sub if sub in known else base, node.lineno))
    return out


def project_imports() -> list[Import]:
    """Every import of every module of the layered packages."""
    files = module_files()
    known = set(files)
    return [imp for module, path in files.items() for imp in imports_of(module, path, known)]


def _top(module: str) -> str:
    return module.split(".")[0]


def test_layers_import_only_downwards() -> None:
    bad = [imp for imp in project_imports() if _top(imp.target) in LAYERS
           and LAYERS[_top(imp.target)] > LAYERS[_top(imp.source)]]
    assert not bad, ("imports from a higher layer (sim < reports < executor < profiles < "
                     "validation, benchmarks):\n" + "\n".join(map(str, bad)))


def module_graph() -> nx.DiGraph:
    """Module -> imported module of the project; each edge keeps the first line importing it."""
    known = set(module_files())
    graph = nx.DiGraph()
    for imp in sorted(project_imports(), key=lambda imp: -imp.line):
        if imp.target in known and imp.target != imp.source:
            graph.add_edge(imp.source, imp.target, line=imp.line)  # the last added: first line
    return graph


def shortest_cycles(graph: nx.DiGraph) -> list[list[tuple[str, str]]]:
    """For every edge on a cycle, the shortest cycle through it (as edges), each cycle once:
    a few short loops name the imports to cut, where listing every elementary cycle of a
    tangled component could run to thousands."""
    seen: set[frozenset[tuple[str, str]]] = set()
    out = []
    for component in nx.strongly_connected_components(graph):
        sub = graph.subgraph(component)
        for u, v in sub.edges:
            nodes = [u, *nx.shortest_path(sub, v, u)]
            edges = list(zip(nodes, nodes[1:]))
            if frozenset(edges) not in seen:
                seen.add(frozenset(edges))
                out.append(edges)
    return sorted(out, key=len)


def test_no_import_cycle_between_modules() -> None:
    graph = module_graph()
    cycles = shortest_cycles(graph)
    shown = 10  # the shortest loops: an import that closes many loops shows up in these
    text = "\n\n".join("\n".join(f"{u} -> {v} (line {graph.edges[u, v]['line']})"
                                 for u, v in cycle) for cycle in cycles[:shown])
    more = f"\n\n... and {len(cycles) - shown} longer loops" if len(cycles) > shown else ""
    assert not cycles, ("modules that import each other, directly or round a loop:\n"
                        f"{text}{more}")


def test_sim_imports_only_its_declared_dependencies() -> None:
    allowed = set(sys.stdlib_module_names) | SIM_THIRD_PARTY | SIM_OPTIONAL | set(LAYERS)
    bad = [imp for imp in project_imports()
           if _top(imp.source) == "sim" and _top(imp.target) not in allowed]
    assert not bad, ("sim imports beyond the standard library and simpy:\n"
                     + "\n".join(map(str, bad)))


def test_importing_every_sim_module_loads_no_torch_diffusers_plotly_or_numpy() -> None:
    modules = sorted(m for m in module_files() if _top(m) == "sim")
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            f"bad = [m for m in {NOT_IN_SIM!r} if m in sys.modules]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
