"""The test harness keeps its promises: users keep full-cost hashing, no unmarked test starts a process, a taken
port does not fail a server start, and the SSE parser and wait-until behave as the live tests assume."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from live import ServerProcess, production_hash, sse_events, wait_until

from conftest import CHEAP_HASHER, PRODUCTION_HASHER
from specai import auth


def _cost(hasher: PasswordHasher) -> tuple[int, int, int, int, int]:
    return hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.hash_len, hasher.salt_len


def test_users_get_the_librarys_default_argon2_cost_and_only_this_process_is_cheap() -> None:
    assert _cost(PRODUCTION_HASHER) == _cost(PasswordHasher())  # what specai.auth uses outside the tests
    assert auth._hasher is CHEAP_HASHER
    assert auth.verify_password(production_hash("pw"), "pw")  # served homes get full-cost hashes
    assert f"m={PasswordHasher().memory_cost}," in production_hash("pw")


def test_a_test_not_marked_live_may_not_start_a_process() -> None:
    with pytest.raises(pytest.fail.Exception, match="not marked live"):
        subprocess.run(["true"], check=True)


@pytest.mark.live
def test_a_test_marked_live_may_start_one() -> None:
    assert subprocess.run(["true"], check=True).returncode == 0


@pytest.mark.live
def test_a_server_whose_port_was_taken_starts_on_another(home: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        proc = ServerProcess(home)
        proc.port = taken.getsockname()[1]  # as if someone took the free port between choosing and binding
        try:
            proc.start()
            assert proc.port != taken.getsockname()[1]
            with proc.client() as client:
                assert client.get("/health").status_code == 200
        finally:
            proc.stop()


def test_sse_events_keep_ids_types_comments_and_multiline_data() -> None:
    lines = [": keep-alive", "", "id: 7", "event: open", 'data: {"a": 1}', "", "data: one", "data: two", ""]
    comment, opened, text = sse_events(lines)
    assert comment.is_comment
    assert comment.comments == ["keep-alive"]
    assert (opened.id, opened.event, opened.data) == ("7", "open", {"a": 1})
    assert (text.event, text.data, text.is_comment) == ("message", "one\ntwo", False)


def test_wait_until_returns_the_value_or_says_what_it_waited_for() -> None:
    calls = iter([0, None, 3])
    assert wait_until(lambda: next(calls), timeout=5, every=0) == 3
    with pytest.raises(AssertionError, match="waiting for nothing"):
        wait_until(lambda: False, timeout=0.05, what="nothing")
