"""What a failed call means to a caller: a specai error body becomes RemoteError, a broken transport a
ConnectionFailedError, and a certificate that no longer matches the pin a TrustError."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import msgspec

from specai.errors import ConnectionFailedError, RemoteError, SpecaiError, TrustError
from specai.identity.trust import ServerAddress
from specai.server.schemas.errors import ErrorBody


def remote_error(status: int, body: Any) -> RemoteError:
    """A decoded `{error, code, details}` body as RemoteError; anything else is `HTTP <status>` (`http_error`)."""
    try:
        return _as_remote_error(status, msgspec.convert(body, ErrorBody))
    except msgspec.ValidationError:
        return RemoteError(f"HTTP {status}", status=status, code="http_error")


def response_error(response: httpx.Response) -> RemoteError:
    """The error a (fully read) error answer stands for."""
    try:
        return _as_remote_error(response.status_code, msgspec.json.decode(response.content, type=ErrorBody))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return RemoteError(f"HTTP {response.status_code}", status=response.status_code, code="http_error")


def _as_remote_error(status: int, body: ErrorBody) -> RemoteError:
    return RemoteError(body.error, status=status, code=body.code, details=body.details)


def error_text(response: httpx.Response) -> str:
    """The `error` of a specai error answer, else its status: one phrase for a log line."""
    return response_error(response).message


# What OpenSSL says when the first bytes back are not a TLS record, e.g. `HTTP/1.1 400 Bad Request`.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "HTTP_REQUEST"})


def transport_error(server: ServerAddress, exc: httpx.HTTPError) -> SpecaiError:
    """TrustError when the handshake refused a certificate other than the pinned one, else ConnectionFailedError."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TrustError(
                f"{server.origin} now presents a certificate that does not match the pin; refusing to continue"
            )
        if isinstance(cause, ssl.SSLError) and cause.reason in _NOT_TLS:
            return plain_http(server)
        cause = cause.__cause__ or cause.__context__
    return ConnectionFailedError(f"lost the connection to {server.origin}: {reason(exc)}")


def plain_http(server: ServerAddress) -> ConnectionFailedError:
    """The port answered a TLS hello with something else: most likely a plain HTTP server, or the wrong port."""
    return ConnectionFailedError(
        f"{server.origin} answered in plain HTTP, not TLS: is it a specai server (they always use TLS), "
        "or is the URL's port wrong?"
    )


def handshake_failure(server: ServerAddress, exc: OSError) -> ConnectionFailedError:
    """A TLS handshake that failed after the connection was made, in words."""
    if isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS:
        return plain_http(server)
    if isinstance(exc, ssl.SSLEOFError | ConnectionResetError):
        return ConnectionFailedError(
            f"{server.origin} closed the connection during the TLS handshake: is it a specai server, "
            "or is the URL's port wrong?"
        )
    return ConnectionFailedError(f"TLS handshake with {server.origin} failed: {reason(exc)}")


def timed_out(server: ServerAddress, seconds: float, *, connected: bool) -> ConnectionFailedError:
    """Silence, in words: no answer to the connection, or a connection whose TLS handshake never completed."""
    address = server.origin.removeprefix("https://")
    if connected:
        return ConnectionFailedError(
            f"TLS handshake with {address} timed out after {seconds:g} s: something accepts connections on that "
            "port but does not speak TLS"
        )
    return ConnectionFailedError(
        f"connecting to {address} timed out after {seconds:g} s: is the address right, or is a firewall "
        "dropping the connection?"
    )


def unreachable(server: ServerAddress, exc: OSError) -> ConnectionFailedError:
    """No connection at all: refused (nothing listens there), or the name or network is wrong."""
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailedError(
            f"cannot reach {server.origin}: connection refused (is the server running, and on that port?)"
        )
    return ConnectionFailedError(f"cannot reach {server.origin}: {reason(exc)}")


def reason(exc: BaseException) -> str:
    """An exception as a short phrase: a SpecaiError's message, an OS error without its `[Errno N]` prefix."""
    if isinstance(exc, SpecaiError):
        return exc.message
    text = str(exc) or type(exc).__name__
    return text.split("] ", 1)[-1] if text.startswith("[") else text
