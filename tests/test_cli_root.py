"""The root command: help, version, and the documented command names."""

from __future__ import annotations

from pathlib import Path

import pytest
from live import run_cli

from specai import __version__

pytestmark = pytest.mark.live  # each test runs the CLI as a process

COMMANDS = (
    "server",
    "auth",
    "cert",
    "login",
    "logout",
    "token",
    "whoami",
    "servers",
    "query",
    "agents",
    "health",
)


def test_help_lists_every_command(home: Path) -> None:
    result = run_cli(home, "--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"  {command} " in result.stdout


def test_version(home: Path) -> None:
    result = run_cli(home, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"specai {__version__}"


def test_unknown_command_is_a_usage_error(home: Path) -> None:
    result = run_cli(home, "frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr


def test_subcommand_help_has_examples(home: Path) -> None:
    for args in (
        ("auth", "add-user"),
        ("query",),
        ("login",),
        ("cert", "show"),
        ("server",),
        ("token",),
        ("whoami",),
        ("servers",),
        ("servers", "forget"),
    ):
        result = run_cli(home, *args, "--help")
        assert result.returncode == 0, args
        assert "Example" in result.stdout, args


def test_read_commands_take_json(home: Path) -> None:
    for args in (
        ("auth", "list-users"),
        ("cert", "show"),
        ("agents",),
        ("health",),
        ("query",),
        ("whoami",),
        ("servers",),
    ):
        assert "--json" in run_cli(home, *args, "--help").stdout, args
