"""Translate every exception into the one error body, `ErrorBody` (`{"error", "code", "details"?}`), and say so in
the OpenAPI description of every operation (`error_responses`).

Under `/v1/` (the OpenAI-compatible API) the same errors take OpenAI's body instead, `OpenAIErrorBody`
(`{"error": {"message", "type", "param", "code"}}`, code still specai's), because the OpenAI SDKs and the tools
built on them only show a message found there (`openai_error_responses` documents it).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec

from specai.errors import SpecaiError, ThrottledError
from specai.server.schemas.errors import ErrorBody
from specai.server.schemas.openai import OpenAIError, OpenAIErrorBody

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


_OPENAI_SPECS = {
    status: ResponseSpec(
        data_container=OpenAIErrorBody,
        description=f"{text}; in OpenAI's error body, `error.code` holding that code"
        + (" (`model_not_found` for `agent_not_found`)" if status == 404 else ""),
        media_type=MediaType.JSON,
        generate_examples=False,
    )
    for status, text in ERROR_STATUSES.items()
}

OPENAI_PREFIX = "/v1/"
# OpenAI's error `type` by status (what api.openai.com sends; the SDKs pick their exception class by status)
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
# specai codes OpenAI clients know by another name
_OPENAI_CODES = {"agent_not_found": "model_not_found"}
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI `responses` of a handler that can fail with these statuses (400 and 503 always: any request
    can carry a NUL, and any can arrive while the server shuts down)."""
    return {status: _SPECS[status] for status in sorted({400, 503, *statuses})}


def openai_error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """`error_responses` for the `/v1/*` handlers: the same statuses, in OpenAI's error body."""
    return {status: _OPENAI_SPECS[status] for status in sorted({400, 503, *statuses})}


def is_openai(path: str) -> bool:
    """True for the paths of the OpenAI-compatible API (their errors take OpenAI's body)."""
    return path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX[:-1]


def openai_error(message: str, code: str, status: int, param: str | None = None) -> OpenAIErrorBody:
    """OpenAI's error body for a specai error (also the error object of a failed completion stream)."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return OpenAIErrorBody(OpenAIError(message, kind, param, _OPENAI_CODES.get(code, code)))


def error_response(
    status: int,
    message: str,
    code: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    *,
    path: str = "",
    param: str | None = None,
) -> Response[Any]:
    """Build the canonical error response (OpenAI's body under `/v1/`, where `param` names the field at fault)."""
    body: ErrorBody | OpenAIErrorBody
    if is_openai(path):
        body = openai_error(message, code, status, param)
    else:
        body = ErrorBody(error=message, code=code, details=details)
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def handle_specai_error(request: Request[Any, Any, Any], exc: SpecaiError) -> Response[Any]:
    """Domain errors carry their own status and code (and, in `details["param"]`, the field at fault)."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ThrottledError) else None
    param = exc.details.get("param") if isinstance(exc.details, dict) else None
    path = request.scope["path"]
    return error_response(exc.status, exc.message, exc.code, exc.details, headers, path=path, param=param)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's own errors (validation, routing, body size, auth middleware) in our shape."""
    status = exc.status_code
    code = _HTTP_CODES.get(status, "internal_error" if status >= 500 else "http_error")
    details = exc.extra if isinstance(exc, ValidationException) and exc.extra else None
    message = exc.detail
    headers = dict(exc.headers or {})
    if status == 413:
        message = "request body too large"
        headers["Connection"] = "close"  # the unread rest of the body makes the connection unusable
    path = request.scope["path"]
    param = None
    if is_openai(path) and isinstance(details, list) and details:
        message, param = _validation_message(details)
    return error_response(status, message, code, details, headers or None, path=path, param=param)


def _validation_message(details: list[Any]) -> tuple[str, str | None]:
    """A validation failure as one message naming the field, and that field as OpenAI's `param`."""
    first = details[0] if isinstance(details[0], dict) else {}
    text = str(first.get("message", "invalid request"))
    key = str(first.get("key", ""))
    missing = _MISSING_FIELD.search(text)
    if missing:
        key = missing.group(1)
    if not key or key == "data":
        return f"invalid request body: {text}", None
    return f"{key}: {text}", key


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A bug: log it with its traceback, answer with a generic 500."""
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal server error", "internal_error", path=request.scope["path"])


EXCEPTION_HANDLERS: dict[Any, Any] = {
    SpecaiError: handle_specai_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
