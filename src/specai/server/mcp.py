"""The MCP server (the `mcp` SDK's Streamable HTTP app, mounted at /mcp): placeholder until issue 14's MCP work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.handlers import BaseRouteHandler

from specai.server.state import ServerState


def routes(state: ServerState) -> list[BaseRouteHandler]:
    """The `/mcp` mount for `state`."""
    return []


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Runs the MCP session manager while the app serves (Litestar `lifespan=[...]`)."""
    yield
