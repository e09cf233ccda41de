"""Dependencies point one way (DESIGN.md): app -> core -> kernels; and no import circle
inside core/. Read from the source with `ast`, nothing is imported: every `import` counts,
at module level, inside functions (lazy imports) and under `if TYPE_CHECKING:` (a type-only
import is still a dependency a reader of the code has to follow)."""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOMS = ("bitsmith.app", "bitsmith.core", "bitsmith.kernels")

# Circles known to be removed by the branch being merged into main (the one-shape work on
# model, quant/checkpoint, search/* and jobkinds/*): each entry must disappear after that merge,
# and test_allowed_circles_are_still_there then says to delete it here.
ALLOWED_CIRCLES = {
    # model.load_model lazily imports quant.checkpoint.load_quantized_model, which lazily
    # imports model.check_safetensors / LoadedModel back.
    frozenset({"bitsmith.core.model", "bitsmith.core.quant.checkpoint"}),
    # jobkinds.search runs search.driver, which imports jobkinds.common / jobkinds.quantize
    # (and jobkinds.search's SearchSpec for its types) back.
    frozenset({"bitsmith.core.jobkinds.search", "bitsmith.core.search.driver"}),
    # the pre-flight estimate probes with the quantize job's options (jobkinds.quantize), whose
    # job runs the pre-flight check (jobkinds.common -> estimate): goes when the quantize spec
    # and its options move to core/quant (one shape for every job kind).
    frozenset({"bitsmith.core.estimate", "bitsmith.core.jobkinds.common", "bitsmith.core.jobkinds.quantize"}),
    # search.database builds its blocks with search.block_variants and lazily search.propagated;
    # both name database's settings type (type-only imports).
    frozenset({"bitsmith.core.search.block_variants", "bitsmith.core.search.database",
               "bitsmith.core.search.propagated"}),
    # search.cluster starts the database tasks of search.cluster_database, which takes the
    # cluster's connection type back.
    frozenset({"bitsmith.core.search.cluster", "bitsmith.core.search.cluster_database"}),
}


@dataclass(frozen=True)
class Module:
    name: str        # bitsmith.core.export.checks
    path: Path
    package: bool    # an __init__.py: relative imports resolve against the module itself


def _modules() -> dict[str, Module]:
    """Every .py file of the installed rooms, by dotted name (found by spec, not imported)."""
    out = {}
    for room in ROOMS:
        root = Path(importlib.util.find_spec(room).submodule_search_locations[0])
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            package = parts[-1] == "__init__"
            name = ".".join([room, *(parts[:-1] if package else parts)])
            out[name] = Module(name, path, package)
    return out


def _target(name: str, modules: dict[str, Module]) -> str | None:
    """The module `name` denotes: itself, or the package holding the attribute it names."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: Module, modules: dict[str, Module]) -> set[str]:
    """The project modules `module` imports anywhere in its body."""
    base = module.name if module.package else module.name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {t for a in node.names if (t := _target(a.name, modules))}
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                source = f"{anchor}.{source}" if source else anchor
            for alias in node.names:          # `from pkg import mod` imports the module pkg.mod
                full = f"{source}.{alias.name}"
                found |= {t for t in [full if full in modules else _target(source, modules)] if t}
    return found - {module.name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(m, modules) for name, m in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(frozenset(component))
    return out


def _edges(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    return sorted(f"{a} imports {b}" for a, deps in graph.items() if a.startswith(source + ".") or a == source
                  for b in deps if b == target or b.startswith(target + "."))


def test_core_never_imports_app(graph):
    assert _edges(graph, "bitsmith.core", "bitsmith.app") == []


def test_kernels_never_import_core_or_app(graph):
    assert _edges(graph, "bitsmith.kernels", "bitsmith.core") == []
    assert _edges(graph, "bitsmith.kernels", "bitsmith.app") == []


def test_no_import_circle_inside_core(graph):
    core = {n: {d for d in deps if d.startswith("bitsmith.core")} for n, deps in graph.items()
            if n.startswith("bitsmith.core")}
    circles = [sorted(c) for c in _circles(core) if c not in ALLOWED_CIRCLES]
    assert circles == [], "import circles (move the shared piece into a module both can import):\n" + \
        "\n".join(" <-> ".join(c) for c in circles)


def test_allowed_circles_are_still_there(graph):
    gone = [sorted(c) for c in ALLOWED_CIRCLES if c not in _circles(graph)]
    assert gone == [], f"these circles are gone: delete them from ALLOWED_CIRCLES: {gone}"


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _circles(graph) == [frozenset({"a", "b", "c"})]
