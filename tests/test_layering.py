"""Layers point down only (DESIGN §6): the core never imports the edges, server never imports cli, routes stand alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "specai"
EDGES = {"cli", "server", "client", "__main__.py"}
EDGE_LIBRARIES = {"typer", "rich", "litestar", "granian", "httpx", "httpx_sse"}
FORBIDDEN = EDGE_LIBRARIES | {"specai.cli", "specai.server", "specai.client"}
CORE = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in EDGES)
SERVER = sorted((PACKAGE / "server").rglob("*.py"))
ROUTES = sorted((PACKAGE / "server" / "routes").glob("*.py"))
CLIENT = sorted((PACKAGE / "client").rglob("*.py"))


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Every module a file imports, relative imports resolved against the package."""
    names: set[str] = set()
    package = ".".join(("specai", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _hits(path: Path, forbidden: set[str], source: str | None = None) -> set[str]:
    return {n for n in _imports(path, source) if any(n == f or n.startswith(f + ".") for f in forbidden)}


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


def test_core_modules_exist() -> None:
    assert {p.name for p in CORE} >= {"config.py", "tls.py", "auth.py", "directory.py", "runtime.py"}
    assert ROUTES, "no route modules found"


@pytest.mark.parametrize("path", CORE, ids=_name)
def test_core_module_does_not_import_edges(path: Path) -> None:
    bad = _hits(path, FORBIDDEN)
    assert not bad, f"{_name(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", SERVER, ids=_name)
def test_server_never_imports_cli(path: Path) -> None:
    bad = _hits(path, {"specai.cli", "typer", "rich"})
    assert not bad, f"{_name(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", CLIENT, ids=_name)
def test_client_never_imports_cli_or_server_runtime(path: Path) -> None:
    bad = _hits(path, {"specai.cli", "typer", "rich", "litestar", "granian", "specai.server.app"})
    assert not bad, f"{_name(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", ROUTES, ids=_name)
def test_route_modules_never_import_each_other(path: Path) -> None:
    others = {f"specai.server.routes.{p.stem}" for p in ROUTES if p != path and p.stem != "__init__"}
    bad = _hits(path, others)
    assert not bad, f"{_name(path)} imports {sorted(bad)}"


def test_only_run_module_imports_granian() -> None:
    users = {_name(p) for p in PACKAGE.rglob("*.py") if any(n.startswith("granian") for n in _imports(p))}
    assert users == {"server/run.py"}


def test_the_layering_check_sees_a_violation() -> None:
    """The import scanner is not blind: a core file importing the CLI is caught, relative imports included."""
    probe = PACKAGE / "graph" / "probe.py"
    source = "from ..cli import main\nimport rich.console\nfrom specai.server.routes import graph\n"
    assert _hits(probe, FORBIDDEN, source) == {
        "specai.cli",
        "specai.cli.main",
        "rich.console",
        "specai.server.routes",
        "specai.server.routes.graph",
    }
