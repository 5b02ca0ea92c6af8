"""Reading manifests (pyproject, requirements, setup, package.json, Cargo, go.mod) for dependencies and commands."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specai.graph.bootstrap.rules import MAX_MANIFEST_BYTES
from specai.graph.bootstrap.walk import read_head

_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_GO_REQUIRE = re.compile(r"^\s*(?:require\s+)?([a-z0-9.-]+\.[a-z]{2,}/\S+)\s+v\S+", re.MULTILINE)
_GO_MAJOR = re.compile(r"/v\d+$")


@dataclass(frozen=True)
class Manifest:
    """What a manifest declares that bootstrap cares about."""

    dependencies: frozenset[str] = frozenset()
    scripts: bool = False  # declares commands (console scripts, package.json bin, Cargo [[bin]])
    workspace: bool = False  # declares workspace members


def parse_manifest(path: Path) -> Manifest:
    """Dependencies, commands and workspace of a pyproject/requirements/setup/package.json/Cargo/go.mod file."""
    data = read_head(path, MAX_MANIFEST_BYTES)
    if data is None or len(data) > MAX_MANIFEST_BYTES:
        return Manifest()
    text = data.decode("utf-8", errors="replace")
    try:
        if path.name == "pyproject.toml":
            return _pyproject(tomllib.loads(text))
        if path.name == "Cargo.toml":
            return _cargo(tomllib.loads(text))
        if path.name == "package.json":
            return _package_json(json.loads(text))
    except (ValueError, tomllib.TOMLDecodeError):
        return Manifest()  # a broken manifest just tells us nothing
    if path.name == "requirements.txt":
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return Manifest(frozenset(_python_names(line for line in lines if line and not line.startswith("-"))))
    if path.name in ("setup.py", "setup.cfg"):
        return Manifest(scripts="console_scripts" in text)
    if path.name == "go.mod":
        return Manifest(frozenset(_GO_MAJOR.sub("", m.group(1)) for m in _GO_REQUIRE.finditer(text)))
    return Manifest()


def _python_names(requirements: Iterable[Any]) -> set[str]:
    """Normalized (PEP 503) project names of requirement strings such as `litestar[standard]>=2`."""
    names = set()
    for requirement in requirements:
        if isinstance(requirement, str) and (match := _REQUIREMENT_NAME.match(requirement.strip())):
            names.add(re.sub(r"[-_.]+", "-", match.group(0)).lower())
    return names


def _pyproject(doc: Mapping[str, Any]) -> Manifest:
    """PEP 621 and Poetry dependencies and scripts, and a uv workspace."""
    project = _table(doc, "project")
    tool = _table(doc, "tool")
    poetry = _table(tool, "poetry")
    requirements: list[Any] = list(_list(project, "dependencies"))
    for extra in _table(project, "optional-dependencies").values():
        requirements.extend(extra if isinstance(extra, list) else [])
    names = _python_names(requirements) | _python_names(_table(poetry, "dependencies"))
    scripts = bool(_table(project, "scripts") or _table(poetry, "scripts"))
    return Manifest(frozenset(names), scripts, bool(_table(_table(tool, "uv"), "workspace")))


def _cargo(doc: Mapping[str, Any]) -> Manifest:
    """Cargo dependencies (own and workspace-wide), binaries and workspace."""
    workspace = _table(doc, "workspace")
    names: set[str] = set()
    for table in (doc, workspace):
        for section in ("dependencies", "dev-dependencies", "build-dependencies"):
            names.update(name.lower() for name in _table(table, section))
    return Manifest(frozenset(names), bool(_list(doc, "bin")), bool(workspace))


def _package_json(doc: Any) -> Manifest:
    """npm dependencies, bin and workspaces."""
    if not isinstance(doc, dict):
        return Manifest()
    names: set[str] = set()
    for section in ("dependencies", "devDependencies", "peerDependencies"):
        names.update(name.lower() for name in _table(doc, section))
    return Manifest(frozenset(names), bool(doc.get("bin")), bool(doc.get("workspaces")))


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A sub-table, or empty when missing or of another type."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    """A list value, or empty when missing or of another type."""
    value = doc.get(key)
    return value if isinstance(value, list) else []
