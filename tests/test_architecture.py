"""The package's shape: no import cycles, the reference independent of the pipelines, one
registry that every method and model goes through, short modules, no benchmark tests shipped.

Imports are read from the source (every ``import``/``from … import`` statement, also those
inside functions, so a lazy import cannot hide a cycle).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder → installed package name (setup.py's package_dir).
PACKAGES = {"stop_fast": "stop_fast", "kernels": "stop_fast.kernels", "bench": "stop_fast.bench"}
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports (edges of the import graph)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = name if _is_package(path) else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" names a module; "from mod import name" the module itself.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph():
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A package's __init__ importing its own submodules is how packages are built; the
            # submodule importing a sibling through the package is not an edge back to __init__.
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _without_init_edges(graph):
    """Drop edges into a package __init__ from its own submodules (``from .. import x`` reads
    a sibling module; the __init__ re-exporting submodules is not a cycle with them)."""
    return {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}


def test_no_import_cycles():
    cycle = _cycle(_without_init_edges(_graph()))
    assert cycle is None, " -> ".join(cycle)


def test_cycle_detector_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]


def test_reference_imports_no_pipeline():
    deps = _graph()["stop_fast.reference"]
    assert not {d for d in deps if d.startswith(("stop_fast.pipelines", "stop_fast.integrations"))}


def test_every_registered_method_has_its_modules():
    from stop_fast.pipelines import METHODS, Options

    for name, spec in METHODS.items():
        assert issubclass(spec.options, Options) and spec.options.method == name
        assert callable(spec.fast) and callable(spec.twin)


def test_every_registered_model_has_its_module():
    from stop_fast.integrations import MODELS
    from stop_fast.integrations._common import ModelPatch

    import importlib
    for cls_name, path in MODELS.items():
        module, attr = path.split(":")
        patch = getattr(importlib.import_module(module, "stop_fast.integrations"), attr)
        assert issubclass(patch, ModelPatch) and patch.model_class == cls_name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_are_short(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it (limit {MAX_LINES})"


def test_no_test_modules_in_the_installed_package():
    shipped = [n for n in _modules() if n.rpartition(".")[2].startswith(("test_", "conftest"))]
    assert shipped == []
