"""Translate every exception into the one JSON error shape `{"error", "code", "details"?}`."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from specai.errors import SpecaiError, ThrottledError

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


def error_response(
    status: int, message: str, code: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response[dict[str, Any]]:
    """Build the canonical error response."""
    body: dict[str, Any] = {"error": message, "code": code}
    if details is not None:
        body["details"] = details
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def handle_specai_error(_: Request[Any, Any, Any], exc: SpecaiError) -> Response[dict[str, Any]]:
    """Domain errors carry their own status and code."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ThrottledError) else None
    return error_response(exc.status, exc.message, exc.code, exc.details, headers)


def handle_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
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


def handle_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A bug: log it with its traceback, answer with a generic 500."""
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal server error", "internal_error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    SpecaiError: handle_specai_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, for people"},
        "code": {"type": "string", "description": "a stable code, for programs"},
        "details": {"description": "more about it, when there is more (validation errors, retry_after)"},
    },
    "additionalProperties": False,
}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAPI schema whose 4xx/5xx responses all describe the `{"error", "code"}` body we send.

    Litestar documents its own `{"status_code", "detail"}` shape for the 400s it adds; our handlers never send it.
    """
    paths: dict[str, Any] = {}
    for path, item in schema.get("paths", {}).items():
        paths[path] = {
            method: _with_error_bodies(operation) if isinstance(operation, dict) else operation
            for method, operation in item.items()
        }
    components = dict(schema.get("components", {}))
    components["schemas"] = {**components.get("schemas", {}), "Error": ERROR_SCHEMA}
    return {**schema, "paths": paths, "components": components}


def _with_error_bodies(operation: dict[str, Any]) -> dict[str, Any]:
    responses = operation.get("responses")
    if not isinstance(responses, dict):
        return operation
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    fixed = {
        status: {**response, "content": error_body} if str(status)[:1] in "45" else response
        for status, response in responses.items()
    }
    return {**operation, "responses": fixed}
