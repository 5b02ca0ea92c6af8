"""The options and arguments `specai graph` commands share, and what `rm` and `show` act on."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Optional

import typer

DEFAULT_SESSION = "default"

SessionOption = Annotated[
    str, typer.Option("--session", help="Graph session id (every command defaults to 'default').")
]
LimitOption = Annotated[
    int, typer.Option("--limit", min=1, max=1000, help="Page size, newest first (1 to 1000).")
]
CursorOption = Annotated[
    Optional[str], typer.Option("--cursor", help="Continue after a previous page (its `next_cursor`).")
]
AllOption = Annotated[bool, typer.Option("--all", help="Follow the cursors and print every page.")]
PropertiesOption = Annotated[
    Optional[str], typer.Option("--properties", help="Properties as a JSON object, e.g. '{\"age\": 42}'.")
]


class Kind(StrEnum):
    """What `rm` and `show` act on."""

    node = "node"
    edge = "edge"


SessionArgument = Annotated[str, typer.Argument(help="Graph session id.")]
UserArgument = Annotated[str, typer.Argument(help="Username of an account on the server.")]
