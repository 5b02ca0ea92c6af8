"""Baseline for bench_http.py: a bare Litestar app with one `GET /agents` handler under embedded granian.

It is served with the same granian settings as src/specai/server/run.py (ASGI, TLS 1.2+, one embedded worker,
backlog 1024) and answers a body the size of specai's /agents answer, so the difference from specai is what
specai adds (auth, CORS, error handling, request tracking).

Usage: python benchmarks/_bare_app.py PORT CERT_PEM KEY_PEM   (serves 127.0.0.1:PORT until SIGTERM)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from granian.constants import Interfaces, SSLProtocols
from granian.log import LogLevels
from granian.server.embed import Server
from litestar import Litestar, get

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
    server = Server(
        Litestar(route_handlers=[list_agents, health], debug=False),
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        ssl_cert=cert,
        ssl_key=key,
        ssl_protocol_min=SSLProtocols.tls12,
        log_level=LogLevels.warning,
        backlog=1024,
    )
    asyncio.run(server.serve())


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
