"""Planning: a walked tree becomes Components, Documentation and ArchitecturePatterns around the Repository."""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from specai.graph.bootstrap.manifests import Manifest, parse_manifest
from specai.graph.bootstrap.rules import (
    BOOTSTRAP_SOURCE,
    CI_DIRS,
    CI_FILES,
    CLI_FRAMEWORKS,
    COMPONENT_EDGE,
    CONTAINER_DIRS,
    CONTAINER_FILE,
    DOC_CATEGORIES,
    DOC_DIRS,
    DOC_EDGE,
    DOC_EXTENSIONS,
    DOC_NAME,
    FIXTURE_DIRS,
    FRAMEWORKS,
    MAX_DOCS,
    MAX_ENTRIES,
    MAX_EVIDENCE,
    MAX_NODES,
    MONOREPO_DIRS,
    PATTERN_DIRS,
    PATTERN_EDGE,
    PATTERNS,
    ROOT_KEY,
    TEST_FILE,
    TITLE_BYTES,
    VCS_MARKERS,
    WEB_FRAMEWORKS,
    WORKSPACE_FILES,
    is_manifest,
    is_package_manifest,
    language,
)
from specai.graph.bootstrap.walk import (
    Tree,
    check_activation,
    depth_order,
    exists_real,
    in_docs,
    parent,
    parts,
    read_head,
    resolve_root,
    self_and_ancestors,
    walk,
)
from specai.graph.model import GraphPlan, PlannedEdge, PlannedNode

_MARKDOWN_HEADING = re.compile(r"#{1,6}\s+(.+?)\s*#*\s*")


def scan_repository(
    root: str | os.PathLike[str], *, max_entries: int = MAX_ENTRIES, max_nodes: int = MAX_NODES
) -> GraphPlan:
    """The bootstrap plan of the repository at `root`; blocking file I/O, so servers run it in a thread."""
    if max_nodes < 1:
        raise ValueError("max_nodes must be at least 1 (the Repository node)")
    path = resolve_root(root)
    check_activation(path)
    tree = walk(path, max_entries)
    return Planner(path, tree).plan(max_nodes)


class Planner:
    """Turns a walked tree into nodes: Components, Documentation and ArchitecturePatterns around the Repository."""

    def __init__(self, root: Path, tree: Tree) -> None:
        self.root = root
        self.tree = tree
        self.truncated = tree.truncated
        self.children: dict[str, list[str]] = {path: [] for path in tree.files}
        for path in sorted(tree.files):
            if path:
                self.children[parent(path)].append(path)
        # Source files per language in each folder and everything below it.
        self.sources: dict[str, Counter[str]] = {path: Counter() for path in tree.files}
        for folder, names in tree.files.items():
            here = Counter(lang for name in names if (lang := language(name)) is not None)
            if here:
                for ancestor in self_and_ancestors(folder):
                    self.sources[ancestor].update(here)
        self.manifests: dict[str, Manifest] = {}

    def plan(self, max_nodes: int) -> GraphPlan:
        """The whole plan; nodes beyond `max_nodes` are dropped by priority and the Repository says `truncated`."""
        components = self._components()
        docs = self._docs(components)
        patterns = self._patterns(components)
        # Priority when capping: patterns, root docs, components (shallow first), then the other docs.
        candidates = [
            *patterns,
            *(node for node in docs if "/" not in node.properties["path"]),
            *(self._component_node(path, reasons, components) for path, reasons in components.items()),
            *(node for node in docs if "/" in node.properties["path"]),
        ]
        if len(candidates) > max_nodes - 1:
            self.truncated = True
            candidates = candidates[: max_nodes - 1]
        nodes = [self._repository_node(components), *sorted(candidates, key=lambda node: node.key)]
        edges = [_edge_to_root(node) for node in nodes[1:]]
        return GraphPlan(root=ROOT_KEY, nodes=tuple(nodes), edges=tuple(edges), source=BOOTSTRAP_SOURCE)

    # --- components -----------------------------------------------------------------------------------------------

    def _components(self) -> dict[str, set[str]]:
        """Component folders (shallow first) with the rules that found them."""
        found: dict[str, set[str]] = {}
        for path, reason in self._top_level_components():
            found.setdefault(path, set()).add(reason)
        for path, reason in [*self._python_subpackages(list(found)), *self._package_folders()]:
            found.setdefault(path, set()).add(reason)
        return {path: found[path] for path in sorted(found, key=depth_order)}

    def _top_level_components(self) -> Iterator[tuple[str, str]]:
        """Top-level folders with code below them; containers (src/, crates/, ...) contribute their sub-folders."""
        for top in self.children[""]:
            if top in DOC_DIRS or not self.sources[top]:
                continue
            if top not in CONTAINER_DIRS:
                yield top, "top-level source folder"
                continue
            if any(language(name) for name in self.tree.files[top]):
                yield top, "source folder"
            for sub in self.children[top]:
                if self.sources[sub]:
                    yield sub, f"package in {top}/"

    def _python_subpackages(self, found: Iterable[str]) -> Iterator[tuple[str, str]]:
        """Immediate sub-packages of the Python packages found so far (src/<pkg>/<sub>/__init__.py)."""
        for path in found:
            if "__init__.py" in self.tree.files[path]:
                for sub in self.children[path]:
                    if "__init__.py" in self.tree.files[sub]:
                        yield sub, "Python sub-package"

    def _package_folders(self) -> Iterator[tuple[str, str]]:
        """Any folder with its own package manifest (crates/*/Cargo.toml, packages/*/package.json, ...), and
        every Go package (a folder of .go files), outside docs and test data."""
        for folder, names in self.tree.files.items():
            folder_names = parts(folder)
            if not folder_names or in_docs(folder) or FIXTURE_DIRS.intersection(folder_names):
                continue
            if any(is_package_manifest(name) for name in names):
                yield folder, "package manifest"
            if any(name.endswith(".go") for name in names):
                yield folder, "Go package"

    def _component_node(self, path: str, reasons: set[str], components: Mapping[str, Any]) -> PlannedNode:
        """A Component with its languages, manifests, frameworks and the component it sits in."""
        manifests = sorted(name for name in self.tree.files[path] if is_manifest(name))
        container = next((p for p in self_and_ancestors(path)[1:] if p in components), None)
        sources = self.sources[path]
        return PlannedNode(
            key=f"component:{path}",
            node_type="entity",
            label=path,
            properties={
                "kind": "Component",
                "name": path.rpartition("/")[2],
                "path": path,
                "languages": dict(sorted(sources.items())),
                "source_files": sources.total(),
                "manifests": manifests,
                "frameworks": self._frameworks([path]),
                "detected_by": sorted(reasons),
                "parent": f"component:{container}" if container is not None else ROOT_KEY,
            },
        )

    # --- documentation --------------------------------------------------------------------------------------------

    def _docs(self, components: Mapping[str, Any]) -> list[PlannedNode]:
        """README/CHANGELOG/LICENSE... in the root and component folders, and docs/**; at most MAX_DOCS."""
        paths: list[tuple[str, str]] = []  # (path, category)
        for folder in ["", *components]:
            for name in self.tree.files[folder]:
                if match := DOC_NAME.fullmatch(name):
                    word = match.group(1).upper()
                    category = DOC_CATEGORIES.get(word, word.lower())
                    paths.append((f"{folder}/{name}" if folder else name, category))
        for folder in sorted(self.tree.files, key=depth_order):
            if in_docs(folder):
                for name in self.tree.files[folder]:
                    if name.rpartition(".")[2].lower() in DOC_EXTENSIONS:
                        paths.append((f"{folder}/{name}", "guide"))
        unique = dict(sorted(paths, key=lambda item: depth_order(item[0])))
        if len(unique) > MAX_DOCS:
            self.truncated = True
        return [self._doc_node(path, category) for path, category in list(unique.items())[:MAX_DOCS]]

    def _doc_node(self, path: str, category: str) -> PlannedNode:
        """A Documentation fact with its format and (markdown) title."""
        ext = path.rpartition("/")[2].rpartition(".")[2].lower()
        fmt = DOC_EXTENSIONS.get(ext, "text")
        return PlannedNode(
            key=f"doc:{path}",
            node_type="fact",
            label=path,
            properties={
                "kind": "Documentation",
                "name": path.rpartition("/")[2],
                "path": path,
                "category": category,
                "format": fmt,
                "title": self._title(path) if fmt == "markdown" else None,
            },
        )

    def _title(self, path: str) -> str | None:
        """The first markdown heading in the head of the file."""
        data = read_head(self.root / path, TITLE_BYTES)
        if data is None:
            return None
        for line in data[:TITLE_BYTES].decode("utf-8", errors="replace").splitlines():
            if match := _MARKDOWN_HEADING.fullmatch(line.strip()):
                return match.group(1)[:200]
        return None

    # --- patterns ---------------------------------------------------------------------------------------------------

    def _patterns(self, components: Mapping[str, set[str]]) -> list[PlannedNode]:
        """ArchitecturePatterns with the evidence (paths, manifests, dependencies) that revealed them."""
        evidence: dict[str, set[str]] = {slug: set() for slug in PATTERNS}
        found = [
            *self._tree_evidence(),
            *self._root_evidence(components),
            *self._manifest_evidence(components),
        ]
        for slug, item in found:
            evidence[slug].add(item)
        return [
            PlannedNode(
                key=f"pattern:{slug}",
                node_type="concept",
                label=PATTERNS[slug],
                properties={
                    "kind": "ArchitecturePattern",
                    "name": PATTERNS[slug],
                    "pattern": slug,
                    "evidence": sorted(items)[:MAX_EVIDENCE],
                    "evidence_count": len(items),
                },
            )
            for slug, items in sorted(evidence.items())
            if items
        ]

    def _tree_evidence(self) -> Iterator[tuple[str, str]]:
        """(pattern, path) for the walked folders and files whose names reveal a pattern."""
        for folder, names in self.tree.files.items():
            folder_names = parts(folder)
            if folder_names and not in_docs(folder):
                for slug, dir_names in PATTERN_DIRS.items():
                    if folder_names[-1] in dir_names:
                        yield slug, folder + "/"
                if folder_names[-2:] == ["src", "bin"]:
                    yield "cli", folder + "/"
            for name in names:
                path = f"{folder}/{name}" if folder else name
                if name == "__main__.py" or (name == "main.rs" and folder_names[-1:] == ["src"]):
                    yield "cli", path
                if TEST_FILE.fullmatch(name):
                    yield "test-suite", path
                if CONTAINER_FILE.fullmatch(name):
                    yield "containers", path

    def _root_evidence(self, components: Mapping[str, set[str]]) -> Iterator[tuple[str, str]]:
        """(pattern, path) for workspace and CI files of the root, hidden CI folders, and monorepo layouts."""
        for name in self.tree.files[""]:
            if name in WORKSPACE_FILES:
                yield "monorepo", name
            if name in CI_FILES:
                yield "ci", name
        # Hidden CI folders and files are not walked; look them up directly, without following symlinks.
        for ci_dir in CI_DIRS:
            if exists_real(self.root, ci_dir, stat.S_ISDIR):
                yield "ci", "/".join(ci_dir) + "/"
        for name in CI_FILES:
            if name.startswith(".") and exists_real(self.root, (name,), stat.S_ISREG):
                yield "ci", name
        for top in self.children[""]:
            if top in MONOREPO_DIRS and self.children[top]:
                yield "monorepo", top + "/"
        packages = [path for path, reasons in components.items() if "package manifest" in reasons]
        if len(packages) >= 2:
            yield from (("monorepo", path + "/") for path in packages)

    def _manifest_evidence(self, components: Mapping[str, set[str]]) -> Iterator[tuple[str, str]]:
        """(pattern, what) for the commands, workspaces and framework dependencies the manifests declare."""
        for folder in ["", *components]:
            for name, manifest in self._folder_manifests(folder):
                path = f"{folder}/{name}" if folder else name
                if manifest.scripts:
                    yield "cli", f"{path} declares commands"
                if manifest.workspace:
                    yield "monorepo", f"{path} declares a workspace"
                for dependency in sorted(manifest.dependencies):
                    if dependency in WEB_FRAMEWORKS:
                        yield "http-api", f"{path} depends on {WEB_FRAMEWORKS[dependency]}"
                    if dependency in CLI_FRAMEWORKS:
                        yield "cli", f"{path} depends on {CLI_FRAMEWORKS[dependency]}"

    # --- the repository -------------------------------------------------------------------------------------------

    def _repository_node(self, components: Mapping[str, Any]) -> PlannedNode:
        """The root: name, VCS, root manifests, languages, frameworks and whether a cap was hit."""
        sources = self.sources[""]
        vcs = next((marker[1:] for marker in VCS_MARKERS if os.path.lexists(self.root / marker)), None)
        primary = min(sources.items(), key=lambda item: (-item[1], item[0]))[0] if sources else None
        return PlannedNode(
            key=ROOT_KEY,
            node_type="entity",
            label=self.root.name or str(self.root),
            properties={
                "kind": "Repository",
                "name": self.root.name or str(self.root),
                "path": ".",
                "vcs": vcs,
                "manifests": sorted(name for name in self.tree.files[""] if is_manifest(name)),
                "languages": dict(sorted(sources.items())),
                "primary_language": primary,
                "files": sum(len(names) for names in self.tree.files.values()),
                "source_files": sources.total(),
                "frameworks": self._frameworks(["", *components]),
                "truncated": self.truncated,
            },
        )

    def _folder_manifests(self, folder: str) -> list[tuple[str, Manifest]]:
        """The parsed manifests of one folder (each parsed once)."""
        parsed = []
        for name in self.tree.files[folder]:
            if is_manifest(name) or name == "requirements.txt":
                path = f"{folder}/{name}" if folder else name
                if path not in self.manifests:
                    self.manifests[path] = parse_manifest(self.root / path)
                parsed.append((name, self.manifests[path]))
        return parsed

    def _frameworks(self, folders: Iterable[str]) -> list[str]:
        """Display names of the known frameworks the folders' manifests depend on."""
        names = {
            FRAMEWORKS[dependency]
            for folder in folders
            for _, manifest in self._folder_manifests(folder)
            for dependency in manifest.dependencies
            if dependency in FRAMEWORKS
        }
        return sorted(names)


def _edge_to_root(node: PlannedNode) -> PlannedEdge:
    """The edge tying a node to the Repository, typed by the node's kind."""
    kinds = {"Component": COMPONENT_EDGE, "Documentation": DOC_EDGE, "ArchitecturePattern": PATTERN_EDGE}
    edge_type, predicate, weight = kinds[node.properties["kind"]]
    return PlannedEdge(
        source=node.key, target=ROOT_KEY, edge_type=edge_type, predicate=predicate, weight=weight
    )
