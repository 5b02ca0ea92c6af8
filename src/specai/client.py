"""SpecaiClient: the one HTTP client (httpx), pinned to the server's certificate before any secret is sent."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, connect_sse

from specai import __version__
from specai.errors import ConnectionFailedError, RemoteError, TrustError
from specai.fingerprint import fingerprint_der
from specai.tls import fetch_peer_cert, pinned_ssl_context
from specai.trust import KnownServers, ServerAddress, parse_server, verify_identity


class SpecaiClient:
    """Typed access to a specai server; every request goes over a TLS context that trusts only the pin."""

    def __init__(
        self, server: ServerAddress, der: bytes, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.server = server
        self.fingerprint = fingerprint_der(der)
        self.token = token
        self.http = httpx.Client(
            base_url=server.origin,
            verify=pinned_ssl_context(der),
            timeout=httpx.Timeout(timeout, read=None),
            headers={"User-Agent": f"specai/{__version__}"},
        )

    @classmethod
    def connect(
        cls,
        url: str,
        known: KnownServers,
        *,
        fingerprint: str | None = None,
        confirm: Callable[[str, str], bool] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> SpecaiClient:
        """Fetch the server's certificate (sending nothing), check it against the pin, then open the client."""
        server = parse_server(url)
        try:
            der = fetch_peer_cert(server.host, server.port, timeout=min(timeout, 10.0))
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailedError(f"cannot reach {server.origin}: {_reason(exc)}") from None
        verify_identity(server, fingerprint_der(der), known, expected=fingerprint, confirm=confirm)
        return cls(server, der, token=token, timeout=timeout)

    def __enter__(self) -> SpecaiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    # -- API ---------------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """GET /health."""
        return self._call("GET", "/health")

    def cert(self) -> dict[str, Any]:
        """GET /cert."""
        return self._call("GET", "/cert")

    def agents(self) -> dict[str, Any]:
        """GET /agents."""
        return self._call("GET", "/agents")

    def sessions(self, limit: int = 100) -> dict[str, Any]:
        """GET /sessions."""
        return self._call("GET", f"/sessions?limit={limit}")

    def session(self, session_id: str) -> dict[str, Any]:
        """GET /sessions/{id}: the session and its messages."""
        return self._call("GET", f"/sessions/{quote(session_id, safe='')}")

    def delete_session(self, session_id: str) -> None:
        """DELETE /sessions/{id}."""
        self._call("DELETE", f"/sessions/{quote(session_id, safe='')}")

    def login(self, username: str, password: str) -> dict[str, Any]:
        """POST /auth/token; remembers the token for later calls."""
        body = self._call("POST", "/auth/token", {"username": username, "password": password})
        self.token = body["token"]
        return body

    def query(self, message: str, **fields: Any) -> dict[str, Any]:
        """POST /query: the whole answer at once."""
        return self._call("POST", "/query", _query_body(message, fields))

    def stream(self, message: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """POST /stream: yield each StreamChunk as it arrives."""
        try:
            with connect_sse(
                self.http, "POST", "/stream", json=_query_body(message, fields), headers=self._auth()
            ) as source:
                if source.response.status_code != 200:
                    source.response.read()
                    raise _remote_error(source.response)
                for event in source.iter_sse():
                    if event.data:
                        yield json.loads(event.data)
        except SSEError as exc:
            raise ConnectionFailedError(f"the server did not answer with an event stream: {exc}") from None
        except httpx.HTTPError as exc:
            raise _transport_error(self.server, exc) from None

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, json=body, headers=self._auth())
        except httpx.HTTPError as exc:
            raise _transport_error(self.server, exc) from None
        if response.status_code >= 400:
            raise _remote_error(response)
        if response.status_code == 204:
            return {}
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise ConnectionFailedError(
                f"{self.server.origin}{path} answered with something that is not JSON"
            ) from None
        return data


def _query_body(message: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"message": message, **{k: v for k, v in fields.items() if v is not None}}


def _remote_error(response: httpx.Response) -> RemoteError:
    try:
        body = response.json()
        message, code, details = body["error"], body["code"], body.get("details")
    except (ValueError, KeyError, TypeError):
        message, code, details = f"HTTP {response.status_code}", "http_error", None
    if response.status_code == 401 and code in ("unauthorized",):
        message = f"{message}" if "login" in message else f"{message}; run `specai login`"
    return RemoteError(message, status=response.status_code, code=code, details=details)


def _transport_error(server: ServerAddress, exc: httpx.HTTPError) -> Exception:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TrustError(
                f"{server.origin} now presents a certificate that does not match the pin; refusing to continue"
            )
        cause = cause.__cause__ or cause.__context__
    return ConnectionFailedError(f"lost the connection to {server.origin}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.split("] ", 1)[-1] if text.startswith("[") else text
