"""Public, unauthenticated identity and liveness routes."""

import time

from litestar import get
from litestar.di import NamedDependency

from specai import __version__
from specai.server.schemas import CertOut, HealthOut
from specai.server.state import ServerState


@get("/health", exclude_from_auth=True, operation_id="GetHealth", tags=["server"], sync_to_thread=False)
def health(server: NamedDependency[ServerState]) -> HealthOut:
    """Liveness: status, version, uptime and the number of sessions used since start."""
    return HealthOut(
        status="healthy",
        version=__version__,
        uptime_seconds=int(time.monotonic() - server.started),
        active_sessions=len(server.runtime.sessions),
    )


@get("/cert", exclude_from_auth=True, operation_id="GetCert", tags=["server"], sync_to_thread=False)
def cert(server: NamedDependency[ServerState]) -> CertOut:
    """The certificate this server presents, so clients can verify its fingerprint."""
    info = server.cert.as_dict()
    return CertOut(**info)  # type: ignore[arg-type]
