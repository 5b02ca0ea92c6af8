"""What bootstrap recognises: manifests, languages, folder roles, doc names, pattern evidence, frameworks, caps."""

from __future__ import annotations

import re

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


def is_manifest(name: str) -> bool:
    """Whether a file name is a build or package manifest."""
    return name in MANIFESTS or name.endswith(MANIFEST_SUFFIXES)


def is_package_manifest(name: str) -> bool:
    """Whether a file name marks its folder as a package of its own."""
    return name in PACKAGE_MANIFESTS or name.endswith(PACKAGE_MANIFEST_SUFFIXES)


def language(name: str) -> str | None:
    """The programming language of a file, by extension."""
    stem, dot, ext = name.rpartition(".")
    return LANGUAGES.get(ext.lower()) if dot and stem else None
