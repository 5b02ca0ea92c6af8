"""The bounded walk of a repository and every file access bootstrap makes, none of which follows a symlink."""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from specai.errors import NotARepositoryError
from specai.graph.bootstrap.rules import DOC_DIRS, SKIPPED_DIRS, VCS_MARKERS, is_manifest, language


def resolve_root(root: str | os.PathLike[str]) -> Path:
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


def check_activation(root: Path) -> None:
    """Like the original plugin: .git/.hg, a known manifest, or a top-level code file makes a repository."""
    try:
        with os.scandir(root) as entries:
            top = [(entry.name, is_regular_file(entry)) for entry in entries]
    except OSError as exc:
        raise NotARepositoryError(f"cannot list {root}: {exc.strerror}") from None
    for name, is_file in top:
        code_file = is_file and not name.startswith(".") and language(name) is not None  # not ~/.pythonrc.py
        if name in VCS_MARKERS or is_manifest(name) or code_file:
            return
    raise NotARepositoryError(
        f"{root} does not appear to be a code repository (no .git, .hg, manifest such as "
        "pyproject.toml/package.json/Cargo.toml/go.mod/Makefile, or top-level source file)"
    )


def is_regular_file(entry: os.DirEntry[str]) -> bool:
    """A regular file itself, not through a symlink; False when it cannot be checked."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


@dataclass
class Tree:
    """What the bounded walk saw: the file names of each folder, by relative POSIX path ("" is the root)."""

    files: dict[str, list[str]] = field(default_factory=dict)
    truncated: bool = False


def walk(root: Path, max_entries: int) -> Tree:
    """Breadth-first, sorted (so deterministic, and a cap keeps the top levels); symlinks are never followed."""
    tree = Tree(files={"": []})
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
            if name.startswith(".") or not is_utf8(name) or entry.is_symlink():
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


def is_utf8(name: str) -> bool:
    """Names that are not valid UTF-8 cannot be stored as JSON text; such entries are skipped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_head(path: Path, limit: int) -> bytes | None:
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


def exists_real(root: Path, names: tuple[str, ...], kind: Callable[[int], bool]) -> bool:
    """Whether root/names exists as `kind` (stat.S_ISDIR/S_ISREG) with no symlink on the way."""
    path = root
    for index, part in enumerate(names):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return False
        if stat.S_ISLNK(mode) or not (kind(mode) if index == len(names) - 1 else stat.S_ISDIR(mode)):
            return False
    return True


def parts(path: str) -> list[str]:
    """The folder names of a relative path ("" has none)."""
    return path.split("/") if path else []


def parent(path: str) -> str:
    """The containing folder of a relative path ("" for a top-level one)."""
    return path.rpartition("/")[0]


def self_and_ancestors(path: str) -> list[str]:
    """A relative path and every folder above it, up to the root ("")."""
    names = parts(path)
    return ["/".join(names[:i]) for i in range(len(names), -1, -1)]


def in_docs(path: str) -> bool:
    """Whether a relative path is inside a top-level docs/ (or doc/) folder."""
    return path.partition("/")[0] in DOC_DIRS


def depth_order(path: str) -> tuple[int, str]:
    """Shallow paths first, then alphabetical: the order caps keep things in."""
    return (len(parts(path)), path)
