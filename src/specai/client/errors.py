"""What a failed call means to a caller: a specai error body becomes RemoteError, a broken transport a
ConnectionFailedError, and a certificate that no longer matches the pin a TrustError."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from specai.errors import ConnectionFailedError, RemoteError, SpecaiError, TrustError
from specai.identity.trust import ServerAddress


def remote_error(status: int, body: Any) -> RemoteError:
    """A decoded `{error, code, details}` body as RemoteError; anything else is `HTTP <status>` (`http_error`)."""
    try:
        message, code, details = body["error"], body["code"], body.get("details")
    except (KeyError, TypeError, AttributeError):
        message, code, details = f"HTTP {status}", "http_error", None
    return RemoteError(message, status=status, code=code, details=details)


def response_error(response: httpx.Response) -> RemoteError:
    """The error a (fully read) error answer stands for."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return remote_error(response.status_code, body)


def error_text(response: httpx.Response) -> str:
    """The `error` of a specai error answer, else its status: one phrase for a log line."""
    return response_error(response).message


def transport_error(server: ServerAddress, exc: httpx.HTTPError) -> SpecaiError:
    """TrustError when the handshake refused a certificate other than the pinned one, else ConnectionFailedError."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TrustError(
                f"{server.origin} now presents a certificate that does not match the pin; refusing to continue"
            )
        cause = cause.__cause__ or cause.__context__
    return ConnectionFailedError(f"lost the connection to {server.origin}: {reason(exc)}")


def reason(exc: BaseException) -> str:
    """An exception as a short phrase: a SpecaiError's message, an OS error without its `[Errno N]` prefix."""
    if isinstance(exc, SpecaiError):
        return exc.message
    text = str(exc) or type(exc).__name__
    return text.split("] ", 1)[-1] if text.startswith("[") else text
