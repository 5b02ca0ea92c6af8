"""Private files and folders: atomic writes (temp file + rename) with owner-only permissions."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from specai.errors import CorruptFileError


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 when missing; leave an existing folder's mode alone."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    return path


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Atomically replace `path` with `data`, readable only by the owner; never leaves a partial file."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private_json(path: Path, value: Any) -> None:
    """Atomically write `value` as indented JSON with mode 0600."""
    write_private(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path, default: Any) -> Any:
    """Read a JSON file, or return `default` when it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc.strerror}") from None
