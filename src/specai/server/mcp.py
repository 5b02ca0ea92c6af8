"""The MCP server: the `mcp` SDK's Streamable HTTP session manager, mounted at `/mcp`, serving specai's MCP catalog
(agents/mcp_tools.py) as the caller.

Bearer auth is the app's own (RequestGate checks the token before the mount is reached, so no token is a 401 in
specai's error shape). Here: the Origin rule (a browser page from anywhere but this server or `[mcp]
allowed_origins` gets 403; clients that send no Origin pass), and the caller's principal handed to the SDK as its
authenticated user, so each request's handlers act as that request's caller and a session created by one user
answers 404 to anyone else's token (the SDK binds a session to the credential that opened it).

The SDK's own DNS-rebinding check is off: it validates the Host header against a fixed list (421 for any other
name), which breaks every non-localhost deployment; the Origin check below is what protects browsers, and TLS
with a pinned certificate is what a rebinding attacker cannot fake.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import mcp_types as types
from litestar import Litestar, asgi
from litestar.handlers import BaseRouteHandler
from litestar.types import HTTPScope, Receive, Scope, Send
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from specai import __version__
from specai.agents.mcp_tools import GRAPH_URI, SESSIONS_URI, McpCatalog
from specai.errors import ForbiddenError, NotFoundError, SpecaiError
from specai.server.runs import finish
from specai.server.state import ServerState
from specai.users.access import LOCAL, Principal

log = logging.getLogger("specai.mcp")

PATH = "/mcp"
HANDLER_NAME = "specai-mcp"
_ENDPOINT = "mcp_endpoint"
_ISSUER = "specai"
INSTRUCTIONS = (
    "specai: ask its agents (ask_agent), search and grow your knowledge graphs (graph_*), and use its safe "
    "tools. Everything acts as the account of your token: graphs and conversations of other users are not found."
)


class Caller(AuthenticatedUser):
    """The request's specai principal as the SDK's authenticated user: the SDK binds sessions to its identity."""

    def __init__(self, principal: Principal) -> None:
        token = AccessToken(
            token="", client_id=principal.user_id, scopes=[principal.scope], subject=principal.user_id
        )
        super().__init__(token.model_copy(update={"claims": {"iss": _ISSUER}}))
        self.principal = principal


def own_origins(state: ServerState) -> frozenset[str]:
    """The Origins a browser sends for pages of this server: `https://<name>:<port>` for every name its
    certificate holds and its configured host (and advertised URL), plus `[mcp] allowed_origins`.

    `http://<name>:<port>` counts too: only this server listens on that port, so no page can have that origin
    but one it served (some clients send it for a loopback server); a rebinding attacker's name is never listed.
    """
    settings = state.settings
    port = settings.server.port
    names = {*state.cert.san, settings.server.host} - {"", "0.0.0.0", "::"}
    origins = set()
    for name, scheme in itertools.product(names, ("https", "http")):
        host = f"[{name}]" if ":" in name else name
        origins.add(f"{scheme}://{host}:{port}".lower())
        if port == 443 and scheme == "https":
            origins.add(f"https://{host}".lower())
    if settings.mesh.advertise_url:
        parts = urlsplit(settings.mesh.advertise_url)
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    origins.update(origin.rstrip("/").lower() for origin in settings.mcp.allowed_origins)
    return frozenset(origins)


class McpEndpoint:
    """The ASGI app behind `/mcp`: the Origin rule and the caller, then the SDK's session manager."""

    def __init__(self, state: ServerState) -> None:
        self.catalog = McpCatalog(state.runtime, state.graph, state.sessions, finish)
        self.origins = own_origins(state)
        self.stopping = state.stopping
        self.manager = StreamableHTTPSessionManager(
            build_server(self.catalog),
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            # sessions live in this process's memory: with several workers on the port, the next request of a
            # session may reach another process, so each request stands alone there
            stateless=state.settings.server.workers > 1,
            max_request_body_size=state.settings.server.max_body_bytes,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise NotFoundError(f"{PATH} speaks HTTP only")
        if scope["path"] not in ("", "/"):  # the mount hands over the path below /mcp
            raise NotFoundError(f"no route {PATH}{scope['path']} (the MCP endpoint is {PATH})")
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin is not None:
            text = origin.decode("latin-1").strip().rstrip("/").lower()
            if text not in self.origins:
                raise ForbiddenError(
                    f"Origin '{text}' may not use {PATH}: only this server's own origins and [mcp] "
                    "allowed_origins may (clients that are not browsers send no Origin)",
                    details={"origin": text},
                )
        user = scope.get("user")
        scope["user"] = Caller(user if isinstance(user, Principal) else LOCAL)
        if cast("HTTPScope", scope)["method"] != "GET":  # a POST ends with its answer (or the grace period)
            await self.manager.handle_request(scope, receive, send)  # type: ignore[arg-type]
            return
        # a GET stream stays open while the client listens: end it as soon as the server stops
        async with anyio.create_task_group() as group:

            async def end_at_stop() -> None:
                await self.stopping.wait()
                group.cancel_scope.cancel()

            group.start_soon(end_at_stop)
            await self.manager.handle_request(scope, receive, send)  # type: ignore[arg-type]
            group.cancel_scope.cancel()


def caller(ctx: ServerRequestContext[Any, Any]) -> Principal:
    """The principal of the HTTP request this MCP message came in (refused when there is none)."""
    request = ctx.request
    user = request.scope.get("user") if request is not None else None
    if not isinstance(user, Caller):
        raise MCPError(types.INVALID_REQUEST, "no authenticated caller for this request")
    return user.principal


def _error_result(code: str, message: str, details: Any = None) -> types.CallToolResult:
    """A tool error in specai's error shape (`{"error", "code", "details"?}`), never a traceback."""
    body: dict[str, Any] = {"error": message, "code": code}
    if details is not None:
        body["details"] = details
    return types.CallToolResult(
        content=[types.TextContent(text=f"{code}: {message}")], structured_content=body, is_error=True
    )


def build_server(catalog: McpCatalog) -> Server[Any]:
    """The SDK server: tools and resources of `catalog`, each request served as its caller."""
    listed = types.ListToolsResult(
        tools=[
            types.Tool(
                name=tool.name,
                description=tool.description,
                input_schema=tool.input_schema,
                annotations=types.ToolAnnotations(read_only_hint=tool.read_only, open_world_hint=False),
            )
            for tool in catalog.tools
        ]
    )

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller(ctx)
        return listed

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        who = caller(ctx)
        try:
            result = await catalog.call(params.name, dict(params.arguments or {}), who)
        except SpecaiError as exc:
            return _error_result(exc.code, exc.message, exc.details)
        except Exception:
            log.exception("MCP tool %s failed", params.name)
            return _error_result("internal_error", "the tool failed on the server (see its log)")
        text = json.dumps(result, ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=result)

    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        entries = await catalog.resources(caller(ctx))
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=e.uri, name=e.name, description=e.description, mime_type="application/json"
                )
                for e in entries
            ]
        )

    async def list_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        caller(ctx)
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    name="graph",
                    uri_template=GRAPH_URI + "{session_id}",
                    description="a knowledge graph session you own or that is shared with you: nodes and edges",
                    mime_type="application/json",
                ),
                types.ResourceTemplate(
                    name="conversation",
                    uri_template=SESSIONS_URI + "{session_id}",
                    description="one of your agent conversations and its messages",
                    mime_type="application/json",
                ),
            ]
        )

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        try:
            document = await catalog.read(uri, caller(ctx))
        except SpecaiError as exc:
            data = {"code": exc.code, "uri": uri}
            raise MCPError(types.INVALID_PARAMS, exc.message, data) from None
        text = json.dumps(document, ensure_ascii=False)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    return Server(
        "specai",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


def routes(state: ServerState) -> list[BaseRouteHandler]:
    """The `/mcp` mount for `state` (its session manager is run by `lifespan`)."""
    endpoint = McpEndpoint(state)

    @asgi(PATH, is_mount=True, copy_scope=True, name=HANDLER_NAME, opt={_ENDPOINT: endpoint})
    async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(scope, receive, send)

    return [mcp_endpoint]


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Runs the `/mcp` session manager while the app serves (Litestar `lifespan=[...]`): one per app."""
    index = app.get_handler_index_by_name(HANDLER_NAME)
    if index is None:  # no /mcp mount in this app
        yield
        return
    endpoint: McpEndpoint = index["handler"].opt[_ENDPOINT]
    async with endpoint.manager.run():
        yield
