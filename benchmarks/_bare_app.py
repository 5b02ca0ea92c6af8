"""Baseline for bench_http.py: a bare Litestar app with one `GET /agents` handler under embedded granian.

It is served with exactly the granian settings of src/specai/server/run.py (`granian_options`: ASGI, HTTP/1.1,
TLS 1.2+, header read timeout, backlog and backpressure from the default `[server]` settings, one embedded worker)
and answers a body the size of specai's /agents answer, so the difference from specai is what specai adds (auth,
request limits, security headers, error handling, request tracking).

Usage: python benchmarks/_bare_app.py PORT CERT_PEM KEY_PEM   (serves 127.0.0.1:PORT until SIGTERM)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from granian.server.embed import Server
from litestar import Litestar, get

from specai.config import ServerSettings
from specai.identity.tls import CertPaths
from specai.server.run import granian_options

AGENTS: dict[str, Any] = {
    "agents": [
        {
            "id": "default",
            "description": "",
            "provider": "mock",
            "model": "mock-model",
            "available": True,
            "default": True,
        }
    ]
}


@get("/agents", sync_to_thread=False)
def list_agents() -> dict[str, Any]:
    """The same JSON specai's /agents returns for its default configuration."""
    return AGENTS


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    """Readiness probe for the benchmark."""
    return {"status": "healthy"}


def main(port: int, cert: Path, key: Path) -> None:
    """Serve until the process is terminated."""
    options = granian_options(
        ServerSettings(), "127.0.0.1", port, CertPaths(cert=cert, key=key, generated=False)
    )
    server = Server(Litestar(route_handlers=[list_agents, health], debug=False), **options)
    asyncio.run(server.serve())


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
