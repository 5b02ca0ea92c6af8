"""Translate every exception into the one error body, `ErrorBody` (`{"error", "code", "details"?}`), and say so in
the OpenAPI description of every operation (`error_responses`)."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec

from specai.errors import SpecaiError, ThrottledError
from specai.server.schemas.errors import ErrorBody

log = logging.getLogger("specai.server")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}

# What each status means on this server, and its codes: the descriptions of the documented error responses.
ERROR_STATUSES: dict[int, str] = {
    400: "The request is malformed: validation failed, bad JSON, a NUL character, a malformed id or cursor "
    "(`invalid_request`, `not_a_repository`)",
    401: "No valid credentials: a missing, malformed, expired or revoked token (`unauthorized`), or a wrong "
    "username or password (`invalid_credentials`)",
    403: "The caller may see this but not do it: role, token scope or a read-only share (`forbidden`)",
    404: "Not found, or not visible to the caller (`not_found`, `agent_not_found`, `unknown_instance`)",
    409: "A conflict: it changed since it was read (`version_conflict`), it is this server's own entry "
    "(`conflict`), or a quota is full (`quota_exceeded`)",
    413: "The request body is larger than `[server] max_body_bytes` (`payload_too_large`)",
    422: "Well-formed but not acceptable: an unknown type, a bad weight, properties that are not an object "
    "(`unprocessable`, `invalid_node_type`)",
    429: "Too many attempts: retry after `details.retry_after` seconds, also in `Retry-After` (`too_many_attempts`)",
    500: "A bug or a failed run (`internal_error`, `execution_error`)",
    502: "The model vendor failed (`upstream_error`)",
    503: "The server is shutting down (`shutting_down`), or auth, the database or the model provider is not "
    "available (`auth_disabled`, `database_unavailable`, `provider_unavailable`)",
    504: "The model vendor did not answer in time (`upstream_timeout`)",
}
_SPECS = {
    status: ResponseSpec(
        data_container=ErrorBody, description=text, media_type=MediaType.JSON, generate_examples=False
    )
    for status, text in ERROR_STATUSES.items()
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI `responses` of a handler that can fail with these statuses (400 and 503 always: any request
    can carry a NUL, and any can arrive while the server shuts down)."""
    return {status: _SPECS[status] for status in sorted({400, 503, *statuses})}


def error_response(
    status: int, message: str, code: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    """Build the canonical error response."""
    body = ErrorBody(error=message, code=code, details=details)
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def handle_specai_error(_: Request[Any, Any, Any], exc: SpecaiError) -> Response[ErrorBody]:
    """Domain errors carry their own status and code."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ThrottledError) else None
    return error_response(exc.status, exc.message, exc.code, exc.details, headers)


def handle_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    """Litestar's own errors (validation, routing, body size, auth middleware) in our shape."""
    status = exc.status_code
    code = _HTTP_CODES.get(status, "internal_error" if status >= 500 else "http_error")
    details = exc.extra if isinstance(exc, ValidationException) and exc.extra else None
    message = exc.detail
    headers = dict(exc.headers or {})
    if status == 413:
        message = "request body too large"
        headers["Connection"] = "close"  # the unread rest of the body makes the connection unusable
    return error_response(status, message, code, details, headers or None)


def handle_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """A bug: log it with its traceback, answer with a generic 500."""
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal server error", "internal_error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    SpecaiError: handle_specai_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
