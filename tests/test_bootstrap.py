"""Bootstrap scans real folders into the original's graph: Repository, Components, Documentation, Patterns."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from specai.errors import NotARepositoryError
from specai.graph.bootstrap import BOOTSTRAP_SOURCE, MAX_DOCS, ROOT_KEY, scan_repository
from specai.graph.model import GraphPlan, PlannedNode
from specai.graph.store import GraphStore
from specai.store import Store

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write(root: Path, *files: str, content: str = "") -> None:
    """Create files (and their folders) under `root`."""
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def keys(plan: GraphPlan) -> set[str]:
    return {node.key for node in plan.nodes}


def node(plan: GraphPlan, key: str) -> PlannedNode:
    return next(n for n in plan.nodes if n.key == key)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small Python project with every kind of node."""
    root = tmp_path / "proj"
    write(
        root,
        "src/pkg/__init__.py",
        "src/pkg/core.py",
        "src/pkg/web/__init__.py",
        "src/pkg/web/routes.py",
        "src/pkg/data/schema.sql",
        "tests/test_core.py",
        "tools/gen.py",
        "docs/guide/intro.md",
        "LICENSE",
        ".github/workflows/ci.yml",
    )
    (root / "README.md").write_text("<!-- badge -->\n# Proj\n\nText.\n")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "proj"\ndependencies = ["litestar[standard]>=2", "Typer"]\n'
        '[project.scripts]\nproj = "pkg.cli:main"\n'
    )
    return root


# --- activation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker",
    [
        ".git/",
        ".git",  # a worktree's .git is a file
        ".hg/",
        "Cargo.toml",
        "package.json",
        "pyproject.toml",
        "setup.py",
        "requirements.txt",
        "go.mod",
        "Makefile",
        "pom.xml",
        "build.gradle",
        "Gemfile",
        "composer.json",
        "CMakeLists.txt",
        "App.csproj",
        "main.py",
        "lib.rs",
        "index.ts",
        "run.sh",
    ],
)
def test_activates_on_vcs_manifest_or_top_level_code(tmp_path: Path, marker: str) -> None:
    root = tmp_path / "r"
    root.mkdir()
    if marker.endswith("/"):
        (root / marker).mkdir()
    else:
        (root / marker).write_text("")
    plan = scan_repository(root)
    assert plan.root == ROOT_KEY == plan.nodes[0].key
    assert plan.source == BOOTSTRAP_SOURCE == "universal-code-plugin"


def test_folder_without_markers_is_not_a_repository(tmp_path: Path) -> None:
    write(tmp_path, "notes.txt", "photos/cat.jpg", "nested/deep/code.py", ".hidden.py")
    with pytest.raises(NotARepositoryError) as caught:
        scan_repository(tmp_path)
    assert caught.value.code == "not_a_repository"
    assert caught.value.message == (
        f"{tmp_path} does not appear to be a code repository (no .git, .hg, manifest such as "
        "pyproject.toml/package.json/Cargo.toml/go.mod/Makefile, or top-level source file)"
    )


def test_missing_folder_or_file_is_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(NotARepositoryError, match="does not exist") as missing:
        scan_repository(tmp_path / "nope")
    assert missing.value.code == "not_a_repository"
    (tmp_path / "main.py").write_text("")
    with pytest.raises(NotARepositoryError, match="is not a directory") as file:
        scan_repository(tmp_path / "main.py")
    assert file.value.code == "not_a_repository"


def test_symlinked_code_file_alone_does_not_activate(tmp_path: Path) -> None:
    (tmp_path / "outside.py").write_text("")
    root = tmp_path / "r"
    root.mkdir()
    (root / "link.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(NotARepositoryError):
        scan_repository(root)


# --- the graph ---------------------------------------------------------------------------------------------------


def test_node_and_edge_types_match_the_original(repo: Path) -> None:
    plan = scan_repository(repo)
    expected = {
        "Component": ("entity", "PART_OF", "component_of", 0.95),
        "Documentation": ("fact", "RELATES_TO", "documents", 0.85),
        "ArchitecturePattern": ("concept", "RELATES_TO", "implements", 0.90),
    }
    root = plan.nodes[0]
    assert (root.key, root.node_type, root.label, root.properties["kind"]) == (
        "repository",
        "entity",
        "proj",
        "Repository",
    )
    edges = {edge.source: edge for edge in plan.edges}
    assert len(edges) == len(plan.edges) == len(plan.nodes) - 1
    for planned in plan.nodes[1:]:
        node_type, edge_type, predicate, weight = expected[planned.properties["kind"]]
        edge = edges[planned.key]
        assert planned.node_type == node_type
        assert (edge.target, edge.edge_type, edge.predicate, edge.weight) == (
            ROOT_KEY,
            edge_type,
            predicate,
            weight,
        )
        assert "bootstrap_key" not in planned.properties
        assert "bootstrap_source" not in planned.properties
    assert {n.properties["kind"] for n in plan.nodes} == {"Repository", *expected}


def test_repository_components_docs_and_patterns(repo: Path) -> None:
    plan = scan_repository(repo)
    assert keys(plan) == {
        "repository",
        "component:src/pkg",
        "component:src/pkg/web",  # a Python sub-package; src/pkg/data has no __init__.py
        "component:tests",
        "component:tools",
        "doc:README.md",
        "doc:LICENSE",
        "doc:docs/guide/intro.md",
        "pattern:ci",
        "pattern:cli",
        "pattern:http-api",
        "pattern:test-suite",
    }
    root = node(plan, "repository").properties
    assert root["manifests"] == ["pyproject.toml"]
    assert root["languages"] == {"Python": 6}
    assert root["primary_language"] == "Python"
    assert root["frameworks"] == ["Litestar", "Typer"]
    assert root["truncated"] is False
    assert root["vcs"] is None
    pkg = node(plan, "component:src/pkg").properties
    assert pkg["languages"] == {"Python": 4}
    assert pkg["source_files"] == 4
    assert pkg["detected_by"] == ["package in src/"]
    assert pkg["parent"] == "repository"
    assert node(plan, "component:src/pkg/web").properties["parent"] == "component:src/pkg"
    readme = node(plan, "doc:README.md").properties
    assert (readme["category"], readme["format"], readme["title"]) == ("readme", "markdown", "Proj")
    assert node(plan, "doc:LICENSE").properties["category"] == "license"
    assert node(plan, "doc:docs/guide/intro.md").properties["category"] == "guide"
    cli = node(plan, "pattern:cli")
    assert cli.label == "Command-line interface"
    assert cli.properties["evidence"] == [
        "pyproject.toml declares commands",
        "pyproject.toml depends on Typer",
    ]
    assert node(plan, "pattern:ci").properties["evidence"] == [".github/workflows/"]
    assert "src/pkg/web/routes.py" not in str(
        node(plan, "pattern:http-api").properties
    )  # routes.py is a file


def test_workspaces_crates_packages_and_go(tmp_path: Path) -> None:
    write(
        tmp_path,
        "Cargo.toml",
        "crates/core/Cargo.toml",
        "crates/core/src/lib.rs",
        "crates/cli/Cargo.toml",
        "crates/cli/src/main.rs",
        "packages/web/package.json",
        "packages/web/index.ts",
        "go.mod",
        "cmd/tool/main.go",
        "internal/db/db.go",
        "internal/db/sqlite/sqlite.go",
        "tests/fixtures/pkg/package.json",
        "Dockerfile",
        "migrations/001.sql",
        "benches/speed.rs",
    )
    (tmp_path / "Cargo.toml").write_text(
        '[workspace]\nmembers = ["crates/*"]\n[workspace.dependencies]\naxum = "0.7"\n'
    )
    plan = scan_repository(tmp_path)
    components = {key for key in keys(plan) if key.startswith("component:")}
    assert components == {
        "component:benches",
        "component:cmd/tool",
        "component:crates/cli",
        "component:crates/core",
        "component:internal/db",
        "component:internal/db/sqlite",  # every Go folder is a package
        "component:packages/web",  # tests/fixtures/pkg is test data, not a package
    }
    assert node(plan, "component:crates/cli").properties["detected_by"] == [
        "package in crates/",
        "package manifest",
    ]
    assert node(plan, "component:crates/cli").properties["manifests"] == ["Cargo.toml"]
    patterns = {key for key in keys(plan) if key.startswith("pattern:")}
    assert patterns == {
        "pattern:benchmarks",
        "pattern:cli",
        "pattern:containers",
        "pattern:http-api",
        "pattern:migrations",
        "pattern:monorepo",
        "pattern:test-suite",
    }
    assert "Cargo.toml declares a workspace" in node(plan, "pattern:monorepo").properties["evidence"]
    assert node(plan, "repository").properties["frameworks"] == ["axum"]


def test_code_files_named_like_docs_are_not_docs(tmp_path: Path) -> None:
    write(tmp_path, "app/security.py", "app/README.rst", "app/notice.json", "LICENSE-MIT", "main.py")
    plan = scan_repository(tmp_path)
    docs = {key for key in keys(plan) if key.startswith("doc:")}
    assert docs == {"doc:LICENSE-MIT", "doc:app/README.rst"}


# --- determinism ---------------------------------------------------------------------------------------------------


def test_scanning_twice_gives_equal_plans(repo: Path) -> None:
    first = scan_repository(repo)
    assert scan_repository(repo) == first
    assert scan_repository(str(repo)) == first
    assert [n.key for n in first.nodes[1:]] == sorted(n.key for n in first.nodes[1:])


def test_scans_this_project() -> None:
    plan = scan_repository(PROJECT)
    assert plan == scan_repository(PROJECT)
    assert plan.nodes[0].key == "repository"
    assert plan.nodes[0].properties["kind"] == "Repository"
    assert "component:src/specai" in keys(plan)
    assert node(plan, "doc:README.md").properties["kind"] == "Documentation"
    assert {"pattern:cli", "pattern:http-api", "pattern:test-suite"} <= keys(plan)
    assert not any(".venv" in key or "__pycache__" in key for key in keys(plan))


# --- safety and bounds ---------------------------------------------------------------------------------------------


def test_skipped_and_hidden_folders_are_not_walked(tmp_path: Path) -> None:
    write(tmp_path, "main.py")
    skipped = ["node_modules", ".venv", "venv", "target", "dist", "build", "__pycache__", ".tox", ".hidden"]
    for name in skipped:
        write(tmp_path, f"{name}/pkg/mod.py", f"{name}/README.md", f"{name}/tests/test_x.py")
    plan = scan_repository(tmp_path)
    assert keys(plan) == {"repository"}
    assert node(plan, "repository").properties["files"] == 1


def test_symlinks_out_of_the_root_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret/mod.py", "README.md", "tests/test_secret.py")
    root = tmp_path / "r"
    write(root, "main.py")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "README.md").symlink_to(outside / "README.md")
    (root / "loop").symlink_to(root, target_is_directory=True)
    plan = scan_repository(root)
    assert keys(plan) == {"repository"}
    assert node(plan, "repository").properties["files"] == 1


def test_unreadable_folders_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "main.py", "locked/mod.py", "open/mod.py")
    locked = tmp_path / "locked"
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        # chmod 0 does not stop root (CI may run as root): the OS refusal is simulated instead
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    plan = scan_repository(tmp_path)
    assert "component:open" in keys(plan)
    assert "component:locked" not in keys(plan)


def test_walk_cap_sets_truncated(tmp_path: Path) -> None:
    write(tmp_path, *(f"m{i:02}.py" for i in range(20)))
    full = scan_repository(tmp_path)
    assert full.nodes[0].properties["truncated"] is False
    capped = scan_repository(tmp_path, max_entries=5)
    assert capped.nodes[0].properties["truncated"] is True
    assert capped.nodes[0].properties["files"] == 5


def test_node_cap_sets_truncated_and_keeps_the_plan_consistent(repo: Path) -> None:
    plan = scan_repository(repo, max_nodes=3)
    assert len(plan.nodes) == 3
    assert plan.nodes[0].properties["truncated"] is True
    assert {e.source for e in plan.edges} == keys(plan) - {ROOT_KEY}
    only_root = scan_repository(repo, max_nodes=1)
    assert keys(only_root) == {"repository"}
    assert only_root.edges == ()
    with pytest.raises(ValueError, match="max_nodes must be at least 1"):
        scan_repository(repo, max_nodes=0)


def test_doc_cap_sets_truncated(tmp_path: Path) -> None:
    write(tmp_path, "main.py", *(f"docs/page{i:03}.md" for i in range(MAX_DOCS + 5)))
    plan = scan_repository(tmp_path)
    assert sum(key.startswith("doc:") for key in keys(plan)) == MAX_DOCS
    assert plan.nodes[0].properties["truncated"] is True


# --- applying to a store ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_applying_twice_is_idempotent_and_follows_tree_changes(repo: Path, tmp_path: Path) -> None:
    store = await Store.open_url(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    try:
        graph = GraphStore(store)

        async def counts() -> tuple[int, int]:
            nodes = await graph.list_nodes("s1", limit=1000)
            edges = await graph.list_edges("s1", limit=1000)
            return len(nodes.items), len(edges.items)

        plan = scan_repository(repo)
        first = await graph.apply_plan("s1", plan)
        assert (first.nodes_created, first.edges_created) == (len(plan.nodes), len(plan.edges))
        assert first.root_node_id is not None
        after_first = await counts()
        assert after_first == (len(plan.nodes), len(plan.edges))

        second = await graph.apply_plan("s1", scan_repository(repo))
        assert second.root_node_id == first.root_node_id
        assert (second.nodes_created, second.nodes_updated, second.nodes_removed) == (0, 0, 0)
        assert (second.edges_created, second.edges_removed) == (0, 0)
        assert await counts() == after_first

        write(repo, "CHANGELOG.md")
        shutil.rmtree(repo / "tools")
        third = await graph.apply_plan("s1", scan_repository(repo))
        assert (third.nodes_created, third.nodes_removed) == (1, 1)
        assert (third.edges_created, third.edges_removed) == (1, 1)
        assert third.nodes_updated == 1  # the Repository's file counts
        assert await counts() == after_first
        labels = {n.label for n in (await graph.list_nodes("s1", limit=1000)).items}
        assert "CHANGELOG.md" in labels
        assert "tools" not in labels
    finally:
        await store.close()
