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
