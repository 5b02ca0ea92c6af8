"""What every request passes before a route parses it (JSON depth, NUL), what every response carries, offline OpenAPI.

Why here: msgspec recurses once per nesting level and PostgreSQL refuses NUL in text, so a deep or NUL-carrying
body used to reach the decoder or the database and come back as a 500. These checks are exact but cost almost
nothing on ordinary requests: a body is scanned only when it holds more than `MAX_JSON_DEPTH` opening brackets,
and parsed for NUL only when it holds a `\\u0000` escape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator
from itertools import accumulate
from typing import Any

from litestar import MediaType, Response, Router
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from specai.errors import InvalidRequestError
from specai.server.security import BearerAuth

MAX_JSON_DEPTH = 64
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included (unrolled: linear time)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))
_NUL_ESCAPE = b"\\u0000"

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"strict-transport-security", b"max-age=31536000"),  # the server only ever speaks TLS
)
NO_STORE_PREFIX = "/auth"  # tokens, keys and hashes must never sit in a cache
_PREFIX_END = len(NO_STORE_PREFIX)
AUTH_HEADERS = (*SECURITY_HEADERS, (b"cache-control", b"no-store"))


def too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text `body` nests arrays/objects more than `limit` deep (brackets in strings ignored)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def has_nul(body: bytes) -> bool:
    """True when `body` holds a NUL byte, or is JSON with a NUL (`\\u0000`) in any key or string value."""
    if b"\x00" in body:
        return True
    if _NUL_ESCAPE not in body:
        return False
    try:
        value = json.loads(body)
    except ValueError:
        return False  # not JSON: the route's own decoder answers 400
    return any("\x00" in text for text in _strings(value))


def _strings(value: Any) -> Iterator[str]:
    """Every key and string in a decoded JSON value (depth is already bounded by `too_deep`)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def check_target(scope: Scope) -> None:
    """No NUL in the path or query; no non-ASCII digits in the path (Litestar's `{id:int}` uses `int()`)."""
    query: bytes = scope.get("query_string", b"")
    path: str = scope["path"]
    if "\x00" in path or (query and (b"%00" in query or b"\x00" in query)):
        raise InvalidRequestError("NUL characters are not allowed in the path or the query string")
    if not path.isascii() and any(char.isdigit() and not char.isascii() for char in path):
        raise InvalidRequestError("numbers in the path must be written with the digits 0-9")


def check_body(body: bytes) -> None:
    """Refuse bodies nested deeper than MAX_JSON_DEPTH or holding a NUL character."""
    if too_deep(body):
        raise InvalidRequestError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    if has_nul(body):
        raise InvalidRequestError("NUL characters (\\u0000) are not allowed in a request body")


class RequestGate:
    """ASGI middleware, the one layer every routed request passes: the bearer token (unless the route opts out),
    then the target, then the body (up to the body limit), read once, checked and replayed to the route.

    One plain ASGI class rather than one Litestar `ASGIMiddleware` per concern: it runs on every request, and
    each such layer costs more in its exclusion checks than these checks do. Auth comes first, so a request
    without a valid token gets its 401 before its body is read.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, auth: BearerAuth | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.auth = auth
        self._check: Callable[[Any, bytes | None], Awaitable[None]] | None = auth.check if auth else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # a plain str: an Enum comparison costs twice as much
            await self.app(scope, receive, send)
            return
        authorization, has_body = None, None
        for name, value in scope["headers"]:  # one pass: the token and whether a body follows
            if name == b"authorization":
                if authorization is None:
                    authorization = value
            elif has_body is None:
                if name == b"content-length":
                    has_body = value.strip() not in (b"", b"0")
                elif name == b"transfer-encoding":
                    has_body = True
        if self._check is not None:
            await self._check(scope, authorization)
        check_target(scope)
        if not has_body:
            await self.app(scope, receive, send)
            return
        messages, body, complete = await self._read(receive)
        if complete:
            check_body(body)
        await self.app(scope, _replay(messages, receive), send)

    async def _read(self, receive: Receive) -> tuple[list[ReceiveMessage], bytes, bool]:
        """The body's messages; `complete` is False when the client left or the body passed the limit."""
        messages: list[ReceiveMessage] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, b"", False
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                return messages, b"".join(chunks), True
            if size > self.max_body_bytes:
                return messages, b"", False  # Litestar answers 413 as it reads on


def request_gate(max_body_bytes: int, auth: BearerAuth | None) -> DefineMiddleware:
    """The middleware entry for `Litestar(middleware=[...])`; `auth` None when auth is off."""
    return DefineMiddleware(RequestGate, max_body_bytes=max_body_bytes, auth=auth)


def _replay(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()  # disconnects, and the rest of an over-limit body

    return replayed


async def security_headers(message: Message, scope: Scope) -> None:
    """`before_send` hook: nosniff and HSTS on every response, `Cache-Control: no-store` under /auth.

    Appended as raw pairs (no response of ours sets these itself): this runs for every response.
    """
    if message["type"] != "http.response.start":
        return
    path: str = scope.get("path", "")
    auth = path.startswith(NO_STORE_PREFIX) and path[_PREFIX_END : _PREFIX_END + 1] in ("", "/")
    message["headers"] = [*message.get("headers", ()), *(AUTH_HEADERS if auth else SECURITY_HEADERS)]


def offline_openapi(title: str, version: str) -> OpenAPIConfig:
    """OpenAPI as files only (`/schema`, `/schema/openapi.json`, `/schema/openapi.yaml`): the HTML UIs load CDN scripts.

    Any other `/schema/...` page is a JSON 404 instead of Litestar's HTML one.
    """
    router = Router(
        "/schema",
        route_handlers=[],
        include_in_schema=False,
        after_request=_json_not_found,
        opt={"exclude_from_auth": True},  # the API description is public
    )
    return OpenAPIConfig(
        title=title,
        version=version,
        path="/schema",
        render_plugins=[JsonRenderPlugin(path="/"), JsonRenderPlugin(), YamlRenderPlugin()],
        openapi_router=router,
    )


def _json_not_found(response: Response[Any]) -> Response[Any]:
    if response.status_code != 404:
        return response
    body = {
        "error": "no such schema page: only openapi.json and openapi.yaml are served",
        "code": "not_found",
    }
    return Response(body, status_code=404, media_type=MediaType.JSON)
