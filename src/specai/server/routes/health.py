"""Public, unauthenticated identity and liveness routes."""

import time

from litestar import get
from litestar.handlers import HTTPRouteHandler

from specai import __version__
from specai.server.errors import error_responses
from specai.server.schemas.health import CertOut, HealthOut
from specai.server.state import ServerState

PUBLIC = error_responses()


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/health` and `/cert`, bound to this server's state."""
    cert_out = CertOut(**server.cert.as_dict())  # type: ignore[arg-type]

    @get("/health", exclude_from_auth=True, operation_id="GetHealth", tags=["server"], responses=PUBLIC)
    async def health() -> HealthOut:
        """Liveness: status, version, uptime, the number of sessions used since start, and whether this process
        leads: runs the singleton jobs (retention pruning, mesh eviction, the sync coordinator) of the processes
        sharing its database (always true on SQLite), and which agent protocols it serves (A2A, MCP)."""
        leadership = server.leadership
        return HealthOut(
            status="healthy",
            version=__version__,
            uptime_seconds=int(time.monotonic() - server.started),
            active_sessions=await server.sessions().count(),
            leader=leadership is not None and leadership.leading,
            a2a=server.settings.a2a.enabled,
            mcp=server.settings.mcp.enabled,
        )

    @get(
        "/cert",
        exclude_from_auth=True,
        operation_id="GetCert",
        tags=["server"],
        sync_to_thread=False,
        responses=PUBLIC,
    )
    def cert() -> CertOut:
        """The certificate this server presents, so clients can verify its fingerprint."""
        return cert_out

    return [health, cert]
