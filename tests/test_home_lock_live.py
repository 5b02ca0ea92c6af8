"""One server per $SPECAI_HOME and per SQLite file (DESIGN §2), and security-relevant config typos refuse to start."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from live import ServerProcess, free_port, make_home, run_cli

pytestmark = pytest.mark.live


def second_server(home: Path, environ: dict[str, str] | None = None) -> tuple[int, str]:
    """Start `specai server` on `home` on a free port; it must exit on its own (a timeout fails the test)."""
    result = run_cli(home, "server", "--port", str(free_port()), timeout=30, environ=environ)
    return result.returncode, result.stderr


def test_a_second_server_on_the_same_home_refuses_to_start(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    first = ServerProcess(home).start()
    try:
        assert first.proc is not None
        code, stderr = second_server(home)
        assert code == 3, stderr
        assert f"SPECAI_HOME={home}" in stderr
        assert f"pid {first.proc.pid}" in stderr
        assert "SPECAI_HOME=/other/dir specai server" in stderr
        assert "Traceback" not in stderr
        with first.client() as client:  # the first one is untouched
            assert client.get("/health").status_code == 200
    finally:
        first.stop()
    again = ServerProcess(home).start()  # the lock went with the first server
    again.stop()


def test_the_lock_goes_with_a_killed_server(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    first = ServerProcess(home).start()
    first.stop(signal.SIGKILL)
    assert (home / "server.lock").exists()  # a stale file blocks nothing: the lock was the kernel's
    again = ServerProcess(home).start()
    again.stop()


def test_two_homes_sharing_one_sqlite_file_refuse_the_second(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "specai.db"
    homes = [make_home(tmp_path, name) for name in ("one", "two")]
    for home in homes:
        (home / "spec-ai.config.toml").write_text(f'[database]\npath = "{shared}"\n')
    first = ServerProcess(homes[0]).start()
    try:
        code, stderr = second_server(homes[1])
        assert code == 3, stderr
        assert f"SQLite database {shared}" in stderr
        assert "[database] path" in stderr
    finally:
        first.stop()


def test_a_misspelt_auth_key_refuses_to_start_naming_the_right_one(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    (home / "spec-ai.config.toml").write_text("[auth]\nenable = true\n")
    code, stderr = second_server(home)
    assert code == 1, stderr
    assert "unknown key 'enable' in [auth]; did you mean 'enabled'?" in stderr
    assert str(home / "spec-ai.config.toml") in stderr
    assert not (home / "tls").exists()  # refused before anything started
    assert not (home / "server.lock").exists()


def test_a_misspelt_auth_variable_refuses_to_start(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    code, stderr = second_server(home, {"SPECAI_AUTH_ENABLE": "true"})
    assert code == 1, stderr
    assert "SPECAI_AUTH_ENABLE" in stderr
    assert "did you mean 'SPECAI_AUTH_ENABLED'?" in stderr
