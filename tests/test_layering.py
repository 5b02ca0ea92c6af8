"""The core never imports the edges (DESIGN §6): no typer, rich, litestar, granian or httpx below cli/ and server/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "specai"
EDGES = {"cli", "server", "client", "__main__.py"}
FORBIDDEN = {
    "typer",
    "rich",
    "litestar",
    "granian",
    "httpx",
    "httpx_sse",
    "specai.cli",
    "specai.server",
    "specai.client",
}
CORE = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in EDGES)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_modules_exist() -> None:
    assert {p.name for p in CORE} >= {"config.py", "tls.py", "auth.py", "directory.py", "runtime.py"}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_does_not_import_edges(path: Path) -> None:
    bad = {name for name in _imports(path) if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_only_run_module_imports_granian() -> None:
    users = {p.name for p in PACKAGE.rglob("*.py") if any(n.startswith("granian") for n in _imports(p))}
    assert users == {"run.py"}
