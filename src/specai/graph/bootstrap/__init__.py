"""Bootstrap: scan a repository (bounded, no symlinks followed) into a GraphPlan of components, docs and patterns."""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specai.errors import NotARepositoryError
from specai.graph.model import GraphPlan, PlannedEdge, PlannedNode

BOOTSTRAP_SOURCE = "universal-code-plugin"
ROOT_KEY = "repository"
MAX_ENTRIES = 50_000  # files and folders walked; beyond it the walk stops and the plan says `truncated`
MAX_NODES = 500  # nodes in a plan, the Repository included
MAX_DOCS = 100  # Documentation nodes
MAX_EVIDENCE = 10  # paths listed per ArchitecturePattern
MAX_MANIFEST_BYTES = 1_000_000  # bigger manifests are not parsed
TITLE_BYTES = 4096  # read from a doc to find its title

# (edge type, predicate, weight) of the edge from each kind of node to the Repository, as in the original.
COMPONENT_EDGE = ("PART_OF", "component_of", 0.95)
DOC_EDGE = ("RELATES_TO", "documents", 0.85)
PATTERN_EDGE = ("RELATES_TO", "implements", 0.90)

# Never entered: dependencies, virtualenvs and build output (hidden folders are skipped too).
SKIPPED_DIRS = frozenset(
    {
        "node_modules",
        "bower_components",
        ".venv",
        "venv",
        "target",
        "dist",
        "build",
        "__pycache__",
        ".tox",
        "vendor",
        "site-packages",
    }
)
VCS_MARKERS = (".git", ".hg")

# Files that make a folder a code repository (activation) and are listed as `manifests`.
MANIFESTS = frozenset(
    {
        "Cargo.toml",
        "package.json",
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "requirements.txt",
        "Pipfile",
        "go.mod",
        "go.work",
        "Makefile",
        "GNUmakefile",
        "CMakeLists.txt",
        "meson.build",
        "pom.xml",
        "build.gradle",
        "build.gradle.kts",
        "settings.gradle",
        "build.sbt",
        "Gemfile",
        "composer.json",
        "mix.exs",
        "Package.swift",
        "pubspec.yaml",
        "deno.json",
        "WORKSPACE",
        "BUILD.bazel",
        "stack.yaml",
        "dune-project",
    }
)
MANIFEST_SUFFIXES = (".csproj", ".fsproj", ".sln", ".cabal", ".gemspec")
# The manifests that make a sub-folder a package of its own (a Component).
PACKAGE_MANIFESTS = frozenset(
    {
        "Cargo.toml",
        "package.json",
        "pyproject.toml",
        "setup.py",
        "go.mod",
        "pom.xml",
        "build.gradle",
        "build.gradle.kts",
        "composer.json",
        "mix.exs",
        "Package.swift",
        "pubspec.yaml",
        "deno.json",
    }
)
PACKAGE_MANIFEST_SUFFIXES = (".csproj", ".fsproj", ".cabal", ".gemspec")

LANGUAGES = {
    "py": "Python",
    "pyi": "Python",
    "rs": "Rust",
    "go": "Go",
    "js": "JavaScript",
    "mjs": "JavaScript",
    "cjs": "JavaScript",
    "jsx": "JavaScript",
    "ts": "TypeScript",
    "mts": "TypeScript",
    "cts": "TypeScript",
    "tsx": "TypeScript",
    "java": "Java",
    "kt": "Kotlin",
    "kts": "Kotlin",
    "scala": "Scala",
    "rb": "Ruby",
    "php": "PHP",
    "c": "C",
    "h": "C",
    "cc": "C++",
    "cpp": "C++",
    "cxx": "C++",
    "hpp": "C++",
    "hh": "C++",
    "cs": "C#",
    "fs": "F#",
    "swift": "Swift",
    "m": "Objective-C",
    "mm": "Objective-C",
    "sh": "Shell",
    "bash": "Shell",
    "zsh": "Shell",
    "fish": "Shell",
    "lua": "Lua",
    "pl": "Perl",
    "r": "R",
    "jl": "Julia",
    "ex": "Elixir",
    "exs": "Elixir",
    "erl": "Erlang",
    "hs": "Haskell",
    "ml": "OCaml",
    "mli": "OCaml",
    "clj": "Clojure",
    "dart": "Dart",
    "zig": "Zig",
    "nim": "Nim",
    "vue": "Vue",
    "svelte": "Svelte",
}

# Top-level folders that hold packages: their sub-folders with code are Components (the folder itself only when
# it has code files directly, e.g. a crate's src/main.rs).
CONTAINER_DIRS = frozenset(
    {
        "src",
        "lib",
        "crates",
        "packages",
        "apps",
        "libs",
        "services",
        "cmd",
        "pkg",
        "internal",
        "modules",
        "plugins",
    }
)
DOC_DIRS = frozenset({"docs", "doc"})
DOC_EXTENSIONS = {
    "md": "markdown",
    "mdx": "markdown",
    "rst": "restructuredtext",
    "adoc": "asciidoc",
    "txt": "text",
}
# Manifests and Go files inside these folders are test data, not packages.
FIXTURE_DIRS = frozenset({"tests", "test", "testdata", "fixtures", "__fixtures__"})
# README, CHANGELOG, LICENSE and friends: documentation in the root and in every Component folder.
DOC_NAME = re.compile(
    r"(README|CHANGELOG|CHANGES|HISTORY|LICEN[CS]E|COPYING|CONTRIBUTING|SECURITY|CODE_OF_CONDUCT|NOTICE|AUTHORS)"
    r"([-_][\w-]*)?(\.(md|mdx|markdown|rst|adoc|txt))?",  # README.md, LICENSE-MIT; not security.py
    re.IGNORECASE,
)
DOC_CATEGORIES = {"CHANGES": "changelog", "HISTORY": "changelog", "LICENCE": "license", "COPYING": "license"}

PATTERNS = {
    "benchmarks": "Benchmarks",
    "ci": "Continuous integration",
    "cli": "Command-line interface",
    "containers": "Containerized deployment",
    "http-api": "HTTP API",
    "migrations": "Database migrations",
    "monorepo": "Monorepo / workspace",
    "test-suite": "Test suite",
}
# A folder with one of these names (outside docs/) is evidence of the pattern.
PATTERN_DIRS = {
    "cli": frozenset({"cli", "cmd", "commands"}),
    "http-api": frozenset({"server", "api", "routes", "handlers", "controllers", "endpoints"}),
    "test-suite": frozenset({"tests", "test", "__tests__", "spec", "specs"}),
    "benchmarks": frozenset({"benches", "benchmarks", "bench", "benchmark"}),
    "migrations": frozenset({"migrations", "alembic"}),
}
TEST_FILE = re.compile(r"test_.+\.py|.+_test\.(py|go)|.+\.(test|spec)\.[cm]?[jt]sx?")
CONTAINER_FILE = re.compile(r"Dockerfile(\..+)?|.+\.Dockerfile|Containerfile|(docker-)?compose(\..+)?\.ya?ml")
WORKSPACE_FILES = frozenset(
    {"go.work", "pnpm-workspace.yaml", "lerna.json", "nx.json", "turbo.json", "rush.json"}
)
MONOREPO_DIRS = frozenset({"crates", "packages", "apps", "libs", "services"})
CI_DIRS = ((".github", "workflows"), (".ci",), (".circleci",), (".buildkite",), (".gitlab",))
CI_FILES = frozenset(
    {".gitlab-ci.yml", ".travis.yml", "Jenkinsfile", "azure-pipelines.yml", "bitbucket-pipelines.yml"}
)

# Dependencies worth naming: web frameworks are evidence of an HTTP API, CLI frameworks of a command-line interface.
WEB_FRAMEWORKS = {
    "litestar": "Litestar",
    "fastapi": "FastAPI",
    "flask": "Flask",
    "django": "Django",
    "starlette": "Starlette",
    "aiohttp": "aiohttp",
    "sanic": "Sanic",
    "tornado": "Tornado",
    "express": "Express",
    "fastify": "Fastify",
    "koa": "Koa",
    "hono": "Hono",
    "@nestjs/core": "NestJS",
    "next": "Next.js",
    "axum": "axum",
    "actix-web": "Actix Web",
    "rocket": "Rocket",
    "warp": "warp",
    "poem": "Poem",
    "github.com/gin-gonic/gin": "Gin",
    "github.com/labstack/echo": "Echo",
    "github.com/gofiber/fiber": "Fiber",
    "github.com/go-chi/chi": "chi",
    "github.com/gorilla/mux": "gorilla/mux",
}
CLI_FRAMEWORKS = {
    "typer": "Typer",
    "click": "Click",
    "clap": "clap",
    "structopt": "StructOpt",
    "commander": "Commander.js",
    "yargs": "yargs",
    "github.com/spf13/cobra": "Cobra",
    "github.com/urfave/cli": "urfave/cli",
}
OTHER_FRAMEWORKS = {
    "react": "React",
    "vue": "Vue",
    "svelte": "Svelte",
    "@angular/core": "Angular",
    "sqlalchemy": "SQLAlchemy",
    "tokio": "Tokio",
    "pytest": "pytest",
    "jest": "Jest",
    "vitest": "Vitest",
}
FRAMEWORKS = {**WEB_FRAMEWORKS, **CLI_FRAMEWORKS, **OTHER_FRAMEWORKS}

_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_GO_REQUIRE = re.compile(r"^\s*(?:require\s+)?([a-z0-9.-]+\.[a-z]{2,}/\S+)\s+v\S+", re.MULTILINE)
_GO_MAJOR = re.compile(r"/v\d+$")
_MARKDOWN_HEADING = re.compile(r"#{1,6}\s+(.+?)\s*#*\s*")


def scan_repository(
    root: str | os.PathLike[str], *, max_entries: int = MAX_ENTRIES, max_nodes: int = MAX_NODES
) -> GraphPlan:
    """The bootstrap plan of the repository at `root`; blocking file I/O, so servers run it in a thread."""
    if max_nodes < 1:
        raise ValueError("max_nodes must be at least 1 (the Repository node)")
    path = _resolve_root(root)
    _check_activation(path)
    tree = _walk(path, max_entries)
    return _Planner(path, tree).plan(max_nodes)


# --- activation ---------------------------------------------------------------------------------------------------


def _resolve_root(root: str | os.PathLike[str]) -> Path:
    """The absolute, resolved root folder, or NotARepositoryError saying why it cannot be scanned."""
    try:
        path = Path(root).resolve(strict=True)
    except FileNotFoundError:
        raise NotARepositoryError(f"{root} does not exist") from None
    except (OSError, RuntimeError) as exc:
        raise NotARepositoryError(f"cannot open {root}: {exc}") from None
    if not path.is_dir():
        raise NotARepositoryError(f"{path} is not a directory")
    return path


def _check_activation(root: Path) -> None:
    """Like the original plugin: .git/.hg, a known manifest, or a top-level code file makes a repository."""
    try:
        with os.scandir(root) as entries:
            top = [(entry.name, _is_file(entry)) for entry in entries]
    except OSError as exc:
        raise NotARepositoryError(f"cannot list {root}: {exc.strerror}") from None
    for name, is_file in top:
        code_file = is_file and not name.startswith(".") and _language(name) is not None  # not ~/.pythonrc.py
        if name in VCS_MARKERS or _is_manifest(name) or code_file:
            return
    raise NotARepositoryError(
        f"{root} does not appear to be a code repository (no .git, .hg, manifest such as "
        "pyproject.toml/package.json/Cargo.toml/go.mod/Makefile, or top-level source file)"
    )


def _is_file(entry: os.DirEntry[str]) -> bool:
    """A regular file itself, not through a symlink; False when it cannot be checked."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _is_manifest(name: str) -> bool:
    """Whether a file name is a build or package manifest."""
    return name in MANIFESTS or name.endswith(MANIFEST_SUFFIXES)


def _is_package_manifest(name: str) -> bool:
    """Whether a file name marks its folder as a package of its own."""
    return name in PACKAGE_MANIFESTS or name.endswith(PACKAGE_MANIFEST_SUFFIXES)


def _language(name: str) -> str | None:
    """The programming language of a file, by extension."""
    stem, dot, ext = name.rpartition(".")
    return LANGUAGES.get(ext.lower()) if dot and stem else None


# --- the walk -----------------------------------------------------------------------------------------------------


@dataclass
class _Tree:
    """What the bounded walk saw: the file names of each folder, by relative POSIX path ("" is the root)."""

    files: dict[str, list[str]] = field(default_factory=dict)
    truncated: bool = False


def _walk(root: Path, max_entries: int) -> _Tree:
    """Breadth-first, sorted (so deterministic, and a cap keeps the top levels); symlinks are never followed."""
    tree = _Tree(files={"": []})
    queue: deque[str] = deque([""])
    walked = 0
    while queue:
        folder = queue.popleft()
        try:
            with os.scandir(root / folder) as it:
                entries = sorted(it, key=lambda entry: entry.name)
        except OSError:
            continue  # unreadable folders are skipped, not fatal
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not _is_utf8(name) or entry.is_symlink():
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if (is_dir and name in SKIPPED_DIRS) or not (is_dir or is_file):
                continue
            if walked >= max_entries:
                tree.truncated = True
                return tree
            walked += 1
            child = f"{folder}/{name}" if folder else name
            if is_dir:
                tree.files[child] = []
                queue.append(child)
            else:
                tree.files[folder].append(name)
    return tree


def _is_utf8(name: str) -> bool:
    """Names that are not valid UTF-8 cannot be stored as JSON text; such entries are skipped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read(path: Path, limit: int) -> bytes | None:
    """Up to `limit + 1` bytes of a regular file, never through a symlink; None when it cannot be read."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0 and (chunk := os.read(fd, min(remaining, 65536))):
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _parts(path: str) -> list[str]:
    """The folder names of a relative path ("" has none)."""
    return path.split("/") if path else []


def _parent(path: str) -> str:
    """The containing folder of a relative path ("" for a top-level one)."""
    return path.rpartition("/")[0]


def _self_and_ancestors(path: str) -> list[str]:
    """A relative path and every folder above it, up to the root ("")."""
    parts = _parts(path)
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _in_docs(path: str) -> bool:
    """Whether a relative path is inside a top-level docs/ (or doc/) folder."""
    return path.partition("/")[0] in DOC_DIRS


def _depth_order(path: str) -> tuple[int, str]:
    """Shallow paths first, then alphabetical: the order caps keep things in."""
    return (len(_parts(path)), path)


# --- manifests ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Manifest:
    """What a manifest declares that bootstrap cares about."""

    dependencies: frozenset[str] = frozenset()
    scripts: bool = False  # declares commands (console scripts, package.json bin, Cargo [[bin]])
    workspace: bool = False  # declares workspace members


def _parse_manifest(path: Path) -> _Manifest:
    """Dependencies, commands and workspace of a pyproject/requirements/setup/package.json/Cargo/go.mod file."""
    data = _read(path, MAX_MANIFEST_BYTES)
    if data is None or len(data) > MAX_MANIFEST_BYTES:
        return _Manifest()
    text = data.decode("utf-8", errors="replace")
    try:
        if path.name == "pyproject.toml":
            return _pyproject(tomllib.loads(text))
        if path.name == "Cargo.toml":
            return _cargo(tomllib.loads(text))
        if path.name == "package.json":
            return _package_json(json.loads(text))
    except (ValueError, tomllib.TOMLDecodeError):
        return _Manifest()  # a broken manifest just tells us nothing
    if path.name == "requirements.txt":
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return _Manifest(
            frozenset(_python_names(line for line in lines if line and not line.startswith("-")))
        )
    if path.name in ("setup.py", "setup.cfg"):
        return _Manifest(scripts="console_scripts" in text)
    if path.name == "go.mod":
        return _Manifest(frozenset(_GO_MAJOR.sub("", m.group(1)) for m in _GO_REQUIRE.finditer(text)))
    return _Manifest()


def _python_names(requirements: Iterable[Any]) -> set[str]:
    """Normalized (PEP 503) project names of requirement strings such as `litestar[standard]>=2`."""
    names = set()
    for requirement in requirements:
        if isinstance(requirement, str) and (match := _REQUIREMENT_NAME.match(requirement.strip())):
            names.add(re.sub(r"[-_.]+", "-", match.group(0)).lower())
    return names


def _pyproject(doc: Mapping[str, Any]) -> _Manifest:
    """PEP 621 and Poetry dependencies and scripts, and a uv workspace."""
    project = _table(doc, "project")
    tool = _table(doc, "tool")
    poetry = _table(tool, "poetry")
    requirements: list[Any] = list(_list(project, "dependencies"))
    for extra in _table(project, "optional-dependencies").values():
        requirements.extend(extra if isinstance(extra, list) else [])
    names = _python_names(requirements) | _python_names(_table(poetry, "dependencies"))
    scripts = bool(_table(project, "scripts") or _table(poetry, "scripts"))
    return _Manifest(frozenset(names), scripts, bool(_table(_table(tool, "uv"), "workspace")))


def _cargo(doc: Mapping[str, Any]) -> _Manifest:
    """Cargo dependencies (own and workspace-wide), binaries and workspace."""
    workspace = _table(doc, "workspace")
    names: set[str] = set()
    for table in (doc, workspace):
        for section in ("dependencies", "dev-dependencies", "build-dependencies"):
            names.update(name.lower() for name in _table(table, section))
    return _Manifest(frozenset(names), bool(_list(doc, "bin")), bool(workspace))


def _package_json(doc: Any) -> _Manifest:
    """npm dependencies, bin and workspaces."""
    if not isinstance(doc, dict):
        return _Manifest()
    names: set[str] = set()
    for section in ("dependencies", "devDependencies", "peerDependencies"):
        names.update(name.lower() for name in _table(doc, section))
    return _Manifest(frozenset(names), bool(doc.get("bin")), bool(doc.get("workspaces")))


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A sub-table, or empty when missing or of another type."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    """A list value, or empty when missing or of another type."""
    value = doc.get(key)
    return value if isinstance(value, list) else []


# --- planning -----------------------------------------------------------------------------------------------------


class _Planner:
    """Turns a walked tree into nodes: Components, Documentation and ArchitecturePatterns around the Repository."""

    def __init__(self, root: Path, tree: _Tree) -> None:
        self.root = root
        self.tree = tree
        self.truncated = tree.truncated
        self.children: dict[str, list[str]] = {path: [] for path in tree.files}
        for path in sorted(tree.files):
            if path:
                self.children[_parent(path)].append(path)
        # Source files per language in each folder and everything below it.
        self.sources: dict[str, Counter[str]] = {path: Counter() for path in tree.files}
        for folder, names in tree.files.items():
            here = Counter(lang for name in names if (lang := _language(name)) is not None)
            if here:
                for ancestor in _self_and_ancestors(folder):
                    self.sources[ancestor].update(here)
        self.manifests: dict[str, _Manifest] = {}

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

        def add(path: str, reason: str) -> None:
            found.setdefault(path, set()).add(reason)

        # Top-level folders with code below them; containers (src/, crates/, ...) contribute their sub-folders.
        for top in self.children[""]:
            if top in DOC_DIRS or not self.sources[top]:
                continue
            if top not in CONTAINER_DIRS:
                add(top, "top-level source folder")
                continue
            if any(_language(name) for name in self.tree.files[top]):
                add(top, "source folder")
            for sub in self.children[top]:
                if self.sources[sub]:
                    add(sub, f"package in {top}/")
        # Immediate sub-packages of Python packages found so far (src/<pkg>/<sub>/__init__.py).
        for path in list(found):
            if "__init__.py" in self.tree.files[path]:
                for sub in self.children[path]:
                    if "__init__.py" in self.tree.files[sub]:
                        add(sub, "Python sub-package")
        # Any folder with its own package manifest (crates/*/Cargo.toml, packages/*/package.json, ...), and
        # every Go package (a folder of .go files), outside docs and test data.
        for folder, names in self.tree.files.items():
            parts = _parts(folder)
            if not parts or _in_docs(folder) or FIXTURE_DIRS.intersection(parts):
                continue
            if any(_is_package_manifest(name) for name in names):
                add(folder, "package manifest")
            if any(name.endswith(".go") for name in names):
                add(folder, "Go package")
        return {path: found[path] for path in sorted(found, key=_depth_order)}

    def _component_node(self, path: str, reasons: set[str], components: Mapping[str, Any]) -> PlannedNode:
        """A Component with its languages, manifests, frameworks and the component it sits in."""
        manifests = sorted(name for name in self.tree.files[path] if _is_manifest(name))
        parent = next((p for p in _self_and_ancestors(path)[1:] if p in components), None)
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
                "parent": f"component:{parent}" if parent is not None else ROOT_KEY,
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
        for folder in sorted(self.tree.files, key=_depth_order):
            if _in_docs(folder):
                for name in self.tree.files[folder]:
                    if name.rpartition(".")[2].lower() in DOC_EXTENSIONS:
                        paths.append((f"{folder}/{name}", "guide"))
        unique = dict(sorted(paths, key=lambda item: _depth_order(item[0])))
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
        data = _read(self.root / path, TITLE_BYTES)
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
        for folder, names in self.tree.files.items():
            parts = _parts(folder)
            if parts and not _in_docs(folder):
                for slug, dir_names in PATTERN_DIRS.items():
                    if parts[-1] in dir_names:
                        evidence[slug].add(folder + "/")
                if parts[-2:] == ["src", "bin"]:
                    evidence["cli"].add(folder + "/")
            for name in names:
                path = f"{folder}/{name}" if folder else name
                if name == "__main__.py" or (name == "main.rs" and parts[-1:] == ["src"]):
                    evidence["cli"].add(path)
                if TEST_FILE.fullmatch(name):
                    evidence["test-suite"].add(path)
                if CONTAINER_FILE.fullmatch(name):
                    evidence["containers"].add(path)
        for name in self.tree.files[""]:
            if name in WORKSPACE_FILES:
                evidence["monorepo"].add(name)
            if name in CI_FILES:
                evidence["ci"].add(name)
        # Hidden CI folders and files are not walked; look them up directly, without following symlinks.
        for ci_dir in CI_DIRS:
            if _real(self.root, ci_dir, stat.S_ISDIR):
                evidence["ci"].add("/".join(ci_dir) + "/")
        for name in CI_FILES:
            if name.startswith(".") and _real(self.root, (name,), stat.S_ISREG):
                evidence["ci"].add(name)
        for top in self.children[""]:
            if top in MONOREPO_DIRS and self.children[top]:
                evidence["monorepo"].add(top + "/")
        packages = [path for path, reasons in components.items() if "package manifest" in reasons]
        if len(packages) >= 2:
            evidence["monorepo"].update(path + "/" for path in packages)
        for folder in ["", *components]:
            for name, manifest in self._folder_manifests(folder):
                path = f"{folder}/{name}" if folder else name
                if manifest.scripts:
                    evidence["cli"].add(f"{path} declares commands")
                if manifest.workspace:
                    evidence["monorepo"].add(f"{path} declares a workspace")
                for dependency in sorted(manifest.dependencies):
                    if dependency in WEB_FRAMEWORKS:
                        evidence["http-api"].add(f"{path} depends on {WEB_FRAMEWORKS[dependency]}")
                    if dependency in CLI_FRAMEWORKS:
                        evidence["cli"].add(f"{path} depends on {CLI_FRAMEWORKS[dependency]}")
        return [
            PlannedNode(
                key=f"pattern:{slug}",
                node_type="concept",
                label=PATTERNS[slug],
                properties={
                    "kind": "ArchitecturePattern",
                    "name": PATTERNS[slug],
                    "pattern": slug,
                    "evidence": sorted(found)[:MAX_EVIDENCE],
                    "evidence_count": len(found),
                },
            )
            for slug, found in sorted(evidence.items())
            if found
        ]

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
                "manifests": sorted(name for name in self.tree.files[""] if _is_manifest(name)),
                "languages": dict(sorted(sources.items())),
                "primary_language": primary,
                "files": sum(len(names) for names in self.tree.files.values()),
                "source_files": sources.total(),
                "frameworks": self._frameworks(["", *components]),
                "truncated": self.truncated,
            },
        )

    def _folder_manifests(self, folder: str) -> list[tuple[str, _Manifest]]:
        """The parsed manifests of one folder (each parsed once)."""
        parsed = []
        for name in self.tree.files[folder]:
            if _is_manifest(name) or name == "requirements.txt":
                path = f"{folder}/{name}" if folder else name
                if path not in self.manifests:
                    self.manifests[path] = _parse_manifest(self.root / path)
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


def _real(root: Path, parts: tuple[str, ...], kind: Callable[[int], bool]) -> bool:
    """Whether root/parts exists as `kind` (stat.S_ISDIR/S_ISREG) with no symlink on the way."""
    path = root
    for index, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return False
        if stat.S_ISLNK(mode) or not (kind(mode) if index == len(parts) - 1 else stat.S_ISDIR(mode)):
            return False
    return True


def _edge_to_root(node: PlannedNode) -> PlannedEdge:
    """The edge tying a node to the Repository, typed by the node's kind."""
    kinds = {"Component": COMPONENT_EDGE, "Documentation": DOC_EDGE, "ArchitecturePattern": PATTERN_EDGE}
    edge_type, predicate, weight = kinds[node.properties["kind"]]
    return PlannedEdge(
        source=node.key, target=ROOT_KEY, edge_type=edge_type, predicate=predicate, weight=weight
    )
