"""Ask for usernames and passwords: Rich prompts on a terminal, or one line from stdin for scripts."""

from __future__ import annotations

import sys

from rich.prompt import Prompt

from specai.cli._console import USAGE, err, fail


def read_password_stdin() -> str:
    """Read the password from the first line of stdin (the trailing newline is dropped)."""
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        fail("no password on stdin (send it as the first line, e.g. printf 'secret\\n' | ...)", USAGE)
    return password


def ask_username() -> str:
    """Prompt for a username on the terminal."""
    _require_terminal("a username", "pass USERNAME as an argument")
    while True:
        name = Prompt.ask("Username", console=err).strip()
        if name:
            return name
        err.print("the username must not be empty")


def ask_new_password() -> str:
    """Prompt twice for a hidden password; re-ask on mismatch or when empty."""
    _require_terminal("a password", "use --password-stdin")
    while True:
        first = Prompt.ask("Password", password=True, console=err)
        if not first:
            err.print("the password must not be empty; try again")
            continue
        second = Prompt.ask("Repeat password", password=True, console=err)
        if first == second:
            return first
        err.print("the passwords do not match; try again")


def ask_password() -> str:
    """Prompt once for a hidden password (to log in)."""
    _require_terminal("a password", "use --password-stdin")
    while True:
        password = Prompt.ask("Password", password=True, console=err)
        if password:
            return password
        err.print("the password must not be empty")


def _require_terminal(what: str, alternative: str) -> None:
    if not sys.stdin.isatty():
        fail(f"no terminal to ask for {what}; {alternative}", USAGE)
