"""The A2A server (a2a-sdk's JSON-RPC routes, mounted): placeholder until issue 14's A2A work lands."""

from __future__ import annotations

from litestar.handlers import BaseRouteHandler

from specai.server.state import ServerState


def routes(state: ServerState) -> list[BaseRouteHandler]:
    """The agent card and the A2A endpoint for `state`'s agents."""
    return []
