"""Fixtures: an isolated SPECAI_HOME, a user, and real server processes (auth on or off)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ServerProcess, run_cli

PASSWORD = "pw-one-two"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty SPECAI_HOME for one test."""
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def auth_home(home: Path) -> Path:
    """A home with user alice and a config that enables auth."""
    result = run_cli(home, "auth", "add-user", "alice", "--password-stdin", input=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    return home


@pytest.fixture
def server(home: Path) -> Iterator[ServerProcess]:
    """A running server with auth disabled."""
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


@pytest.fixture
def auth_server(auth_home: Path) -> Iterator[ServerProcess]:
    """A running server with auth enabled and user alice."""
    proc = ServerProcess(auth_home).start()
    yield proc
    proc.stop()
