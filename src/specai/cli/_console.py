"""The CLI's output and failure conventions: one Rich console pair, named exit codes, one-line errors."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from specai.errors import (
    AuthError,
    ConfigError,
    RemoteError,
    SpecaiError,
    TrustError,
)
from specai.identity.trust import ServerUrlError

OK = 0
ERROR = 1
USAGE = 2
STARTUP_FAILURE = 3
AUTH_FAILURE = 4
UNTRUSTED_SERVER = 5

out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = ERROR) -> NoReturn:
    """Print one line to stderr and exit with `code`."""
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print a warning line to stderr."""
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False)


def exit_code_for(exc: SpecaiError) -> int:
    """Map an error to the documented exit code."""
    if isinstance(exc, TrustError):
        return UNTRUSTED_SERVER
    if isinstance(exc, ServerUrlError):  # a --server value, or SPECAI_SERVER, that is not https://HOST:PORT
        return USAGE
    if isinstance(exc, AuthError) or (isinstance(exc, RemoteError) and exc.http_status == 401):
        return AUTH_FAILURE
    return ERROR


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn SpecaiError into one stderr line and its exit code; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SpecaiError as exc:
            fail(exc.message, exit_code_for(exc))
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def print_json(value: Any) -> None:
    """Machine output: JSON on stdout, nothing else; wire Structs as the server sent them (same fields, order)."""
    sys.stdout.write(json.dumps(value, indent=2, default=_builtin) + "\n")
    sys.stdout.flush()


def _builtin(value: Any) -> Any:
    import msgspec  # only commands that print a server's answer have Structs to print

    return msgspec.to_builtins(value)


def print_warnings(warnings: tuple[str, ...]) -> None:
    """Show config or certificate warnings."""
    for message in warnings:
        warn(message)


__all__ = [
    "AUTH_FAILURE",
    "ERROR",
    "OK",
    "STARTUP_FAILURE",
    "UNTRUSTED_SERVER",
    "USAGE",
    "ConfigError",
    "err",
    "exit_code_for",
    "fail",
    "handle_errors",
    "out",
    "print_json",
    "print_warnings",
    "warn",
]
