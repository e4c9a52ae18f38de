"""The package's layers, read from its imports (those inside functions too): no cycles, a model
library that imports no job, and no package that imports another's job module."""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "pipeline"
# What uses a trained model: the library below them must import none of them.
MODEL_USERS = ("pipeline.train", "pipeline.embed", "pipeline.zeroshot", "pipeline.cli")


def _module(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str) -> str:
    """The longest prefix of ``name`` that is a module or package of ours."""
    while name:
        rel = ROOT / name.replace(".", "/")
        if rel.with_suffix(".py").exists() or rel.is_dir():
            return name
        name = name.rpartition(".")[0]
    return ""


def _imports() -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: line}, every import statement counted."""
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for path in PKG.rglob("*.py"):
        mod = _module(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            for name in names:
                target = _resolve(name) if name.startswith("pipeline") else ""
                if target and target != mod:
                    found[mod].setdefault(target, node.lineno)
    return found


def _package(mod: str) -> str:
    """``pipeline.X`` for a module inside a sub-package or a top-level module ``X``."""
    return ".".join(mod.split(".")[:2])


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_package_imports_another_in_a_cycle() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    lines: dict[tuple[str, str], str] = {}
    for mod, targets in _imports().items():
        for target, line in targets.items():
            a, b = _package(mod), _package(target)
            if a != b and b != "pipeline":
                edges[a].add(b)
                lines.setdefault((a, b), f"{mod}:{line} imports {target}")
    cycles = _cycles(edges)
    where = [lines[(a, b)] for c in cycles for a in c for b in edges[a] if b in c]
    assert not cycles, f"package cycles {cycles}: {where}"


def test_the_model_library_imports_no_job_that_uses_it() -> None:
    bad = [
        f"{mod} imports {target}"
        for mod, targets in _imports().items()
        if mod.startswith("pipeline.fusion")
        for target in targets
        if target.startswith(MODEL_USERS)
    ]
    assert not bad, bad


def test_no_package_imports_another_packages_job_module() -> None:
    bad = [
        f"{mod} imports {target}"
        for mod, targets in _imports().items()
        for target in targets
        if target.count(".") == 2
        and target.endswith((".job", ".cli"))
        and _package(target) != _package(mod)
        and mod != "pipeline.cli"  # the command line: the one place that names every job
    ]
    assert not bad, bad
