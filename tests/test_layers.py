"""Layer direction of the package: which subpackage may import which (README "Package layout").

The imports are read from the source with :mod:`ast` (function-local imports included), so a
cycle hidden by a local import is found as well; only ``if TYPE_CHECKING:`` blocks (annotations,
no import at run time) are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "abz_dask"
ORCHESTRATION = {"pipeline", "commands", "cli"}


def _layer(module: str) -> str:
    """``abz_dask.geo.grid`` → ``geo``; ``abz_dask.cli`` → ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> dict[str, set[str]]:
    """Module (dotted) → the abz_dask modules it imports anywhere in its source."""
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        got: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", None) == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("abz_dask"):
                    got.add(node.module)
            elif isinstance(node, ast.Import):
                got.update(a.name for a in node.names if a.name.startswith("abz_dask"))
        out[name] = got
    return out


IMPORTS = _imports()


def test_only_twin_and_orchestration_import_the_twin() -> None:
    bad = sorted(f"{m} imports {i}" for m, deps in IMPORTS.items() for i in deps
                 if i.startswith("abz_dask.twin") and _layer(m) not in ORCHESTRATION | {"twin"})
    assert not bad, bad


def test_no_layer_imports_the_orchestration() -> None:
    bad = sorted(f"{m} imports {i}" for m, deps in IMPORTS.items() for i in deps
                 if _layer(i) in ORCHESTRATION and _layer(m) not in ORCHESTRATION)
    assert not bad, bad


def test_kernels_import_no_other_layer() -> None:
    bad = sorted(f"{m} imports {i}" for m, deps in IMPORTS.items() for i in deps
                 if _layer(m) == "kernels" and _layer(i) not in ("kernels", ""))
    assert not bad, bad


def test_no_cycles_between_subpackages() -> None:
    edges = {(_layer(m), _layer(i)) for m, deps in IMPORTS.items() for i in deps
             if _layer(i) and _layer(m) != _layer(i)}
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for n in graph.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a, b in edges if a in reach(b))
    assert not cycles, cycles


def test_readme_layout_table_matches_the_package() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Package layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`abz_dask/(\w+)(?:/|\.py)`", table))
    present = {p.name for p in PACKAGE.iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert listed == present, (sorted(present - listed), sorted(listed - present))


def test_every_import_resolves() -> None:
    def exists(mod: str) -> bool:
        base = PACKAGE.parent / mod.replace(".", "/")
        return base.with_suffix(".py").exists() or (base / "__init__.py").exists()

    missing = sorted(f"{m} imports {i}" for m, deps in IMPORTS.items() for i in deps
                     if not exists(i))
    assert not missing, missing
