"""Clients of a specai server, pinned to its certificate: the CLI's blocking SpecaiClient and the asyncio Peer a
server uses for other servers, sharing one pinning, error-body and SSE-follow implementation."""

from specai.client.http import SpecaiClient

__all__ = ["SpecaiClient"]
