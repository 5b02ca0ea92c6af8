"""One server per `$SPECAI_HOME` and per SQLite file: OS locks the server process holds for its whole life.

Two servers on one home share its instance id and database and corrupt each other's mesh entry, so the second
refuses to start. The locks are `flock`s on small files (`server.lock` in the home, `<database>.lock` beside a
SQLite file), so the kernel drops them on any exit, `kill -9` included: a stale lock file never blocks a start.
With `--workers N` the worker processes inherit the open lock files, so the home stays locked until the last of
them is gone.
The holder's pid is written into each file, for the message the next server prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from specai.errors import StartupError
from specai.files import ensure_private_dir

HOME_LOCK = "server.lock"


class ServerLocks:
    """The locks one server holds; released when it exits (or by `release`, for tests and embedders)."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def hold(self, path: Path, refusal: str) -> None:
        """Take the lock on `path` (created 0600) or raise StartupError: `refusal` with `{pid}` filled in."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StartupError(refusal.format(pid=f"pid {holder}" if holder else "pid unknown")) from None
        except OSError as exc:
            os.close(fd)
            raise StartupError(f"cannot lock {path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fds.append(fd)

    @property
    def fds(self) -> tuple[int, ...]:
        """The open lock files: a child process given them (e.g. a server worker) keeps the locks while it lives."""
        return tuple(self._fds)

    def release(self) -> None:
        """Let another server start (the process exiting does the same)."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def lock_server(home: Path, sqlite_file: Path | None) -> ServerLocks:
    """Lock `home`, then the SQLite database file (None: PostgreSQL, which several instances may share later)."""
    locks = ServerLocks()
    ensure_private_dir(home)
    locks.hold(
        home / HOME_LOCK,
        f"another specai server is already using SPECAI_HOME={home} ({{pid}}): stop it, or give this one "
        f"its own home: SPECAI_HOME=/other/dir specai server ...",
    )
    if sqlite_file is not None:
        try:
            ensure_private_dir(sqlite_file.parent)
            locks.hold(
                sqlite_file.with_name(f"{sqlite_file.name}.lock"),
                f"another specai server is already using the SQLite database {sqlite_file} ({{pid}}): stop it, "
                "or give this one its own [database] path",
            )
        except BaseException:
            locks.release()
            raise
    return locks


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
