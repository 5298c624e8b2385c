"""The shape of the house (DEVELOPERS.md, "Layout and import direction"), checked on the source, not by convention.

Every ``import`` is read with :mod:`ast`, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("phenotyping/**/*.py"), *ROOT.glob("reports/**/*.py"), *ROOT.glob("pages/*.py"),
                  ROOT / "app.py"])

# Lower layers never import higher ones; packages of one layer do not import each other.
# ``agreement.stats`` is pure statistics (numpy/scipy only), so it sits at the bottom where evaluation may use it.
LAYERS: list[tuple[str, ...]] = [
    ("phenotyping", "phenotyping.errors", "phenotyping.schemas", "phenotyping.settings", "phenotyping._tv_shim",
     "phenotyping.agreement.stats"),
    ("phenotyping.ingest", "phenotyping.store", "phenotyping.models", "phenotyping.auth"),
    ("phenotyping.analysis",),
    ("phenotyping.training",),
    ("phenotyping.agreement",),
    ("phenotyping.jobs",),
    ("phenotyping.cli", "phenotyping.__main__"),
    ("reports",),
    ("pages",),
    ("app",),
]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Project modules (phenotyping, reports, pages) that ``path`` imports anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    known = {module_name(p) for p in SOURCES}
    return {m for m in found if m in known and m != here}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the owning entry of LAYERS) for a module: the longest entry that is a prefix of it."""
    best = None
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if (module == e or module.startswith(e + ".")) and (best is None or len(e) > len(best[1])):
                best = (i, e)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


GRAPH = {module_name(p): imports(p) for p in SOURCES}


def test_imports_point_down_the_layers():
    wrong = []
    for mod, deps in GRAPH.items():
        (i, owner) = layer_of(mod)
        for dep in deps:
            (j, dep_owner) = layer_of(dep)
            if dep_owner == owner or dep == "phenotyping":
                continue
            if j > i or (j == i and dep_owner != owner):
                wrong.append(f"{mod} (layer {i}, {owner}) imports {dep} (layer {j}, {dep_owner})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    """Tarjan's strongly connected components over module imports; any component of two or more is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            # A package's __init__ re-exporting its own private modules is not a cycle of behaviour.
            if v.startswith(w + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_third_party_imports_stay_in_their_rooms():
    rules = {"duckdb": ("phenotyping.store",), "litellm": ("reports",), "streamlit": ("pages", "app")}
    heavy_for_pages = {"torch", "timm", "duckdb", "litellm"}
    wrong = []
    for path in SOURCES:
        mod = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = (name or "").split(".")[0]
                allowed = rules.get(top)
                if allowed and not any(mod == a or mod.startswith(a + ".") for a in allowed):
                    wrong.append(f"{mod} imports {top}")
                if top in heavy_for_pages and (mod == "app" or mod.startswith("pages")):
                    wrong.append(f"{mod} imports {top}")
    assert not wrong, wrong


def test_stats_are_pure():
    """agreement.stats sits at the bottom of the house: it may import nothing of the project but itself."""
    for mod, deps in GRAPH.items():
        if mod.startswith("phenotyping.agreement.stats"):
            outside = {d for d in deps if not d.startswith("phenotyping.agreement.stats")} - {"phenotyping"}
            assert not outside, f"{mod} imports {outside}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text(encoding="utf-8")
    n = len(text.splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.name} has {n} lines (at most {MAX_MODULE_LINES}): split it by what it holds"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and "long because" not in (ast.get_docstring(node) or ""):
                long.append(f"{node.name} ({length} lines, line {node.lineno})")
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines without a reason in the docstring: {long}"


def test_every_package_names_its_public_api():
    missing = [str(p.relative_to(ROOT)) for p in ROOT.glob("phenotyping/**/__init__.py")
               if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert not missing, f"packages without a docstring saying what they hold: {missing}"


def test_layers_cover_every_module():
    owners = defaultdict(list)
    for mod in GRAPH:
        owners[layer_of(mod)[1]].append(mod)
    assert "phenotyping.analysis" in owners and "phenotyping.training" in owners and "phenotyping.store" in owners
