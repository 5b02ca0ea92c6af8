"""`[auth] min_password_length` at a real terminal: a short password is refused and asked for again, never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from live import Terminal, make_home

from specai.users.directory import load_users

pytestmark = pytest.mark.live


def type_password_twice(term: Terminal, secret: str) -> None:
    for prompt in ("Password", "Repeat password"):
        term.expect(prompt)
        term.wait_echo_off()
        term.type_line(secret)


def test_a_short_password_at_the_prompt_is_asked_for_again(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    (home / "spec-ai.config.toml").write_text("[auth]\nmin_password_length = 10\n")
    with Terminal(home, "auth", "add-user", "bob") as term:
        type_password_twice(term, "Short-123")  # 9 characters
        term.expect("use at least 10 characters ([auth] min_password_length); try again")
        type_password_twice(term, "Long-enough-1")
        term.expect("added user 'bob'")
        code = term.finish()
    assert code == 0, term.text()
    assert b"Short-123" not in term.output
    assert b"Long-enough-1" not in term.output
    assert [user.username for user in load_users(home / "credentials.json")] == ["bob"]
