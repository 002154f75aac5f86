"""The package's layering (docs/architecture.md), checked on the source: every import of a focusnfix module,
function-local ones included, goes to the importing folder itself or to a lower layer; no import circle
between folders; at most three modules flat in the package root; no file over 400 lines in src/ or
benchmarks/; the trainer readable in one sitting."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "src" / "focusnfix"

# Top to bottom. A room (a first-level folder or flat module) may import its own layer's rooms only
# where named in SIDEWAYS, and any room of a lower layer.
LAYERS = [
    {"cli"},
    {"report"},
    {"rating"},
    {"evaluation"},
    {"training"},
    {"methods"},
    {"world"},
    {"runs"},
    {"backbones"},
    {"sampling"},
    {"rewards"},
    {"prompts"},
    {"config"},
    {"errors", "devices", "images"},
]
SIDEWAYS = {("devices", "errors"), ("images", "errors")}
FACADE = {"__init__", "__main__"}  # the public API re-exports from every layer


def rank(room: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if room in layer)


def modules() -> dict[tuple[str, ...], Path]:
    return {f.relative_to(PKG).with_suffix("").parts: f for f in PKG.rglob("*.py")}


def imported(rel: tuple[str, ...], tree: ast.AST):
    """(line, target module parts) of every focusnfix import in a module, at any depth."""
    pkg = list(rel[:-1])  # the package a relative import starts from (also right for __init__)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "focusnfix":
                    yield node.lineno, parts[1:]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                mod = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "focusnfix":
                mod = node.module.split(".")[1:]
            else:
                continue
            if not mod:  # from focusnfix import x / from .. import x (x: a room)
                for a in node.names:
                    yield node.lineno, [a.name]
            else:
                yield node.lineno, mod


def edges():
    mods = modules()
    rooms = {k[0] for k in mods}
    out = []
    for rel, f in mods.items():
        src = rel[0]
        if src in FACADE:
            continue
        for line, target in imported(rel, ast.parse(f.read_text(encoding="utf-8"))):
            if target and target[0] in rooms and target[0] not in FACADE and target[0] != src:
                out.append((src, target[0], f"{f.relative_to(ROOT)}:{line}"))
    return out


def test_every_room_has_a_layer():
    rooms = {k[0] for k in modules()} - FACADE
    assert rooms <= set().union(*LAYERS), f"rooms without a layer: {sorted(rooms - set().union(*LAYERS))}"


def test_imports_point_down():
    bad = [f"{where}: {src} -> {dst}" for src, dst, where in edges()
           if rank(dst) < rank(src) or (rank(dst) == rank(src) and (src, dst) not in SIDEWAYS)]
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan)."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in list(graph):
        if v not in index:
            strong(v)
    return groups


def test_no_circle_between_rooms():
    graph: dict[str, set[str]] = {}
    for src, dst, _ in edges():
        graph.setdefault(src, set()).add(dst)
    assert not _cycles(graph)


def test_no_circle_between_benchmark_scripts():
    names = {f.stem for f in (ROOT / "benchmarks").glob("*.py")}
    graph = {}
    for f in (ROOT / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            found = []
            if isinstance(node, ast.Import):
                found = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found = [node.module.split(".")[0]]
            graph.setdefault(f.stem, set()).update(n for n in found if n in names and n != f.stem)
    assert not _cycles(graph)


def test_at_most_three_flat_modules():
    flat = sorted(k[0] for k in modules() if len(k) == 1 and k[0] not in FACADE)
    assert len(flat) <= 3, flat


@pytest.mark.parametrize("folder", ["src", "benchmarks"])
def test_no_file_over_400_lines(folder):
    long = {str(f.relative_to(ROOT)): n for f in (ROOT / folder).rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long


def test_trainer_reads_in_one_sitting():
    assert len((PKG / "training" / "trainer.py").read_text(encoding="utf-8").splitlines()) <= 300


@pytest.mark.parametrize("old", sorted(__import__("focusnfix")._MOVED))
def test_old_module_paths_import_with_a_warning(old):
    """Paths from before the layered layout keep working for one release, with a DeprecationWarning."""
    import importlib
    import sys

    import focusnfix

    sys.modules.pop(f"focusnfix.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"focusnfix.{old} moved to"):
        module = importlib.import_module(f"focusnfix.{old}")
    new = importlib.import_module(f"focusnfix.{focusnfix._MOVED[old]}")
    public = [k for k in vars(new) if not k.startswith("_")]
    assert public and all(getattr(module, k) is getattr(new, k) for k in public)


def test_ddim_sample_alias_warns():
    import focusnfix

    with pytest.warns(DeprecationWarning, match="ddim_sample"):
        assert focusnfix.ddim_sample is focusnfix.sample
