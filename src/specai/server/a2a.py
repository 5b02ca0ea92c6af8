"""The A2A server: the agent card at `/.well-known/agent-card.json` (public) and a2a-sdk's JSON-RPC endpoint at
`/a2a` (protocol 1.0, and 0.3 on the same URL), mounted as the SDK's Starlette app behind specai's bearer auth.

The card advertises `[a2a] url` + `/a2a` when configured, else the origin the card was fetched at (its Host
header), else the configured host and port (a wildcard bind as 127.0.0.1). Tasks are stored in specai's database,
owned by the caller (`agents/a2a_tasks.py`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from litestar import Request, get
from litestar.handlers import BaseRouteHandler, asgi
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest

from specai import __version__
from specai.agents.a2a_tasks import (
    AGENT_METADATA_KEY,
    AgentTaskExecutor,
    RunContextBuilder,
    SpecaiUser,
    StoredTasks,
    TaskRequestHandler,
)
from specai.agents.runtime import AgentRuntime
from specai.identity.fingerprint import TLS_FINGERPRINT_EXTENSION
from specai.server.state import ServerState
from specai.users.access import LOCAL, Principal

CARD_PATH = AGENT_CARD_WELL_KNOWN_PATH  # /.well-known/agent-card.json
ENDPOINT = "/a2a"
BINDING = "JSONRPC"
PROTOCOL_VERSIONS = ("1.0", "0.3")  # 1.0 first: clients that speak both pick it
SCHEMES = (  # name, bearerFormat, description
    ("bearer", "JWT", "a specai login token: POST /auth/token, or `specai login` then `specai token`"),
    (
        "apiKey",
        "specai API key",
        "a specai API key (`specai auth token create --scope write`), sent as a bearer token",
    ),
)
CONTENT_TYPE_NOT_SUPPORTED = -32005  # A2A's JSON-RPC code for ContentTypeNotSupportedError
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")
_WILDCARDS = ("0.0.0.0", "::", "")


class PrincipalContextBuilder(DefaultServerCallContextBuilder):
    """The call context's user is the specai account the request gate authenticated (the local admin when auth
    is off), so every task is owned by its caller."""

    def build_user(self, request: StarletteRequest) -> SpecaiUser:
        """The account behind the request."""
        user = request.scope.get("user")
        return SpecaiUser(user if isinstance(user, Principal) else LOCAL)


def routes(state: ServerState) -> list[BaseRouteHandler]:
    """The agent card and the A2A endpoint for `state`'s agents (one request handler per app)."""
    template = agent_card(state, "https://127.0.0.1")
    handler = TaskRequestHandler(
        agent_executor=AgentTaskExecutor(state.stopping),
        task_store=StoredTasks(lambda: state.store),
        agent_card=template,
        request_context_builder=RunContextBuilder(state.runtime),
        stopping=state.stopping,
    )
    rpc = Starlette(
        routes=create_jsonrpc_routes(
            handler, "/", context_builder=PrincipalContextBuilder(), enable_v0_3_compat=True
        )
    )

    @get(
        [CARD_PATH, ENDPOINT + CARD_PATH],  # also beside the endpoint: clients given its URL look there
        sync_to_thread=False,
        include_in_schema=False,  # A2A's own document (the a2a-sdk's AgentCard), described in the README
        opt={"exclude_from_auth": True},
        media_type="application/json",
    )
    def card(request: Request[Any, Any, Any]) -> dict[str, Any]:
        """This server's A2A agent card (public): a skill per agent, the JSON-RPC endpoint, bearer auth, and the
        server certificate's SHA-256 fingerprint (extension `https://specai.dev/a2a/ext/tls-fingerprint/v1`)."""
        return agent_card_to_dict(agent_card(state, public_origin(state, request.headers.get("host"))))

    @asgi(ENDPOINT, is_mount=True, copy_scope=True, opt={"a2a": True})
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        """A2A JSON-RPC (a2a-sdk's dispatcher): bearer token required when auth is on."""
        if scope.get("method") == "POST" and not _json_content(scope):
            await _content_type_refused(send)
            return
        await rpc(scope, receive, send)  # type: ignore[arg-type]

    return [card, endpoint]


def _json_content(scope: Scope) -> bool:
    """True unless the request names a Content-Type that is not JSON (none at all passes)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


async def _content_type_refused(send: Send) -> None:
    """JSON-RPC's ContentTypeNotSupportedError (-32005) for a body that is not JSON, as A2A maps it."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": CONTENT_TYPE_NOT_SUPPORTED,
                "message": "send the JSON-RPC request as application/json",
            },
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 200, "headers": headers}
    await send(start)
    done: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(done)


def public_origin(state: ServerState, host: str | None) -> str:
    """The https origin clients reach this server at: `[a2a] url`, else the request's Host, else the bind."""
    if state.settings.a2a.url:
        return state.settings.a2a.url.rstrip("/")
    if host and _HOST.fullmatch(host.strip()):
        return f"https://{host.strip()}"
    server = state.settings.server
    bound = "127.0.0.1" if server.host in _WILDCARDS else server.host
    shown = f"[{bound}]" if ":" in bound else bound
    return f"https://{shown}:{server.port}"


def agent_card(state: ServerState, origin: str) -> AgentCard:
    """The card for a client that reached this server at `origin`."""
    runtime = state.runtime
    url = origin + ENDPOINT
    auth = state.settings.auth.enabled
    how = (
        "Send 'Authorization: Bearer <token>' with a JWT from POST /auth/token (`specai login`) or an API key "
        "(`specai auth token create`, a write-scoped one to send messages). "
        if auth
        else "Auth is off on this server. "
    )
    card = AgentCard(
        name="specai",
        description=(
            f"specai's agents over A2A: one skill per agent; name one with message metadata "
            f'{{"{AGENT_METADATA_KEY}": "<skill id>"}} (default: \'{runtime.default_agent}\'). A task\'s contextId '
            f"is the specai session it continues. {how}"
            f"Pin the server certificate by the fingerprint in the {TLS_FINGERPRINT_EXTENSION} extension."
        ),
        version=__version__,
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding=BINDING, protocol_version=version)
            for version in PROTOCOL_VERSIONS
        ],
        capabilities=AgentCapabilities(
            streaming=True,
            push_notifications=False,
            extensions=[
                AgentExtension(
                    uri=TLS_FINGERPRINT_EXTENSION,
                    description="SHA-256 of the server's TLS certificate (DER), uppercase hex with colons",
                    required=False,
                    params={"sha256": state.cert.fingerprint},
                )
            ],
        ),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=_skills(runtime),
    )
    if auth:  # either scheme will do: both travel as `Authorization: Bearer ...`
        for name, token_format, about in SCHEMES:
            card.security_schemes[name].CopyFrom(
                SecurityScheme(
                    http_auth_security_scheme=HTTPAuthSecurityScheme(
                        scheme="Bearer", bearer_format=token_format, description=about
                    )
                )
            )
            card.security_requirements.append(SecurityRequirement(schemes={name: StringList()}))
    return card


def _skills(runtime: AgentRuntime) -> list[AgentSkill]:
    """A skill per agent; the prompt stays private (the card is public), the id is what metadata names."""
    skills = []
    for agent in runtime.agents.values():
        default = agent.id == runtime.default_agent
        tags = ["chat", "default"] if default else ["chat"]
        state = "" if agent.available else " (unavailable on this server right now)"
        skills.append(
            AgentSkill(
                id=agent.id,
                name=agent.id,
                description=(
                    f"Chat with specai agent '{agent.id}'{' (the default)' if default else ''}{state}; "
                    f'select it with message metadata {{"{AGENT_METADATA_KEY}": "{agent.id}"}}.'
                ),
                tags=tags,
                input_modes=["text/plain"],
                output_modes=["text/plain"],
            )
        )
    return skills
