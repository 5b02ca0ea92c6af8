"""A client for any A2A agent (a2a-sdk's own client), pinned like every specai connection: the agent's certificate
is checked before its card is fetched, and the JSON-RPC endpoint's before any token is sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from specai import __version__
from specai.client.errors import reason, transport_error
from specai.client.pinning import check_pin, fetch_cert, pinned_context
from specai.errors import ConnectionFailedError, RemoteError, SpecaiError, TrustError
from specai.identity.fingerprint import TLS_FINGERPRINT_EXTENSION, fingerprint_der, normalize_fingerprint
from specai.identity.trust import KnownServers, ServerAddress, ServerUrlError, parse_server

__all__ = [
    "CARD_PATH",
    "TLS_FINGERPRINT_EXTENSION",
    "A2AAgent",
    "AgentCardInfo",
    "Reply",
    "ReplyEvent",
    "fetch_card",
]

CARD_PATH = "/.well-known/agent-card.json"
JSONRPC = "JSONRPC"
TokenLookup = Callable[[str], "str | None"]  # an origin -> the bearer token to send there, or None
Confirm = Callable[[str, str], bool]


@dataclass(frozen=True)
class Interface:
    """One way to reach the agent, as its card lists it."""

    url: str
    binding: str
    version: str


@dataclass(frozen=True)
class AgentCardInfo:
    """An agent card fetched over a pinned connection: the JSON as served, the parsed card, and what it says."""

    raw: dict[str, Any]
    card: Any  # a2a.types.AgentCard
    card_url: str
    server: ServerAddress
    fingerprint: str  # of the certificate the card came over
    name: str
    description: str
    version: str
    skills: list[dict[str, str]]
    interfaces: list[Interface]
    streaming: bool
    security: list[str]  # each scheme, in words
    tls_fingerprint: str | None  # the fingerprint the card claims for its own server (specai's extension)
    tls_fingerprint_problem: str | None = None  # why the extension could not be read, when it is present
    der: bytes = field(default=b"", repr=False)  # the certificate the card came over

    @property
    def jsonrpc(self) -> Interface | None:
        """The JSON-RPC interface the client uses (protocol 1.0 preferred, then the first one)."""
        ones = [i for i in self.interfaces if i.binding.upper() == JSONRPC]
        return next((i for i in ones if i.version.startswith("1.")), ones[0] if ones else None)


@dataclass
class ReplyEvent:
    """One thing the agent sent while answering: a piece of text, and/or a state change."""

    text: str = ""  # a piece of the answer, to show as it comes
    note: str = ""  # a progress message (a status update's text), to show aside
    state: str | None = None  # the task state in words (completed, failed, ...), when it changed
    final: bool = False


@dataclass
class Reply:
    """The whole answer once the agent is done: text, the task's last state and ids, and the raw result."""

    text: str = ""
    state: str | None = None
    task_id: str | None = None
    context_id: str | None = None
    error: str = ""  # what the agent said when the task failed or was rejected
    raw: list[dict[str, Any]] = field(default_factory=list)


def _base_url(url: str) -> tuple[ServerAddress, str]:
    """The server address and the agent's base URL (origin plus any path), https only."""
    server = parse_server(url)
    path = urlsplit(url.strip() if "://" in url else f"https://{url.strip()}").path.rstrip("/")
    return server, f"{server.origin}{path}"


def _pin(
    server: ServerAddress,
    known: KnownServers | None,
    *,
    fingerprint: str | None,
    confirm: Confirm | None,
    timeout: float,
) -> bytes:
    """The server's certificate once it is trusted (nothing is sent before): TrustError otherwise."""
    der = fetch_cert(server, timeout=min(timeout, 10.0))
    check_pin(server, der, known, expected=fingerprint, confirm=confirm)
    return der


def _http(der: bytes, timeout: float, token: str | None = None) -> httpx.AsyncClient:
    headers = {"User-Agent": f"specai/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(
        verify=pinned_context(der), timeout=httpx.Timeout(timeout, read=None), headers=headers
    )


async def fetch_card(
    url: str,
    known: KnownServers,
    *,
    fingerprint: str | None = None,
    confirm: Confirm | None = None,
    timeout_secs: float = 30.0,
) -> AgentCardInfo:
    """Pin the agent's server, then GET <url>/.well-known/agent-card.json (public: no token is sent)."""
    server, base = _base_url(url)
    der = _pin(server, known, fingerprint=fingerprint, confirm=confirm, timeout=timeout_secs)
    card_url = base + CARD_PATH
    async with _http(der, timeout_secs) as http:
        try:
            response = await http.get(card_url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise transport_error(server, exc) from None
    if response.status_code != 200:
        raise RemoteError(
            f"{base} is not an A2A agent: GET {card_url} answered HTTP {response.status_code}",
            status=response.status_code,
            code="not_an_a2a_agent",
        )
    try:
        raw = response.json()
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise RemoteError(
            f"{base} is not an A2A agent: {card_url} is not a JSON object",
            status=502,
            code="not_an_a2a_agent",
        )
    return _card_info(raw, card_url, server, der)


def _card_info(raw: dict[str, Any], card_url: str, server: ServerAddress, der: bytes) -> AgentCardInfo:
    from a2a.client.card_resolver import parse_agent_card
    from google.protobuf.json_format import ParseError

    try:
        card = parse_agent_card(json.loads(json.dumps(raw)))  # it rewrites v0.3 fields in place: a copy
    except ParseError as exc:
        raise RemoteError(
            f"{card_url} is not a valid A2A agent card: {exc}", status=502, code="not_an_a2a_agent"
        ) from None
    if not card.name and not card.supported_interfaces:
        raise RemoteError(
            f"{card_url} is not an A2A agent card (no name, no interfaces)",
            status=502,
            code="not_an_a2a_agent",
        )
    claimed, problem = _claimed_fingerprint(card)
    return AgentCardInfo(
        raw=raw,
        card=card,
        card_url=card_url,
        server=server,
        fingerprint=fingerprint_der(der),
        name=card.name,
        description=card.description,
        version=card.version,
        skills=[{"id": s.id, "name": s.name, "description": s.description} for s in card.skills],
        interfaces=[
            Interface(i.url, i.protocol_binding, i.protocol_version) for i in card.supported_interfaces
        ],
        streaming=bool(card.capabilities.streaming),
        security=[_scheme_words(name, scheme) for name, scheme in card.security_schemes.items()],
        tls_fingerprint=claimed,
        tls_fingerprint_problem=problem,
        der=der,
    )


def _claimed_fingerprint(card: Any) -> tuple[str | None, str | None]:
    """The fingerprint in specai's TLS extension (params.sha256), normalised; or why it is unusable."""
    for extension in card.capabilities.extensions:
        if extension.uri != TLS_FINGERPRINT_EXTENSION:
            continue
        value = dict(extension.params.items()).get("sha256")
        if not isinstance(value, str):
            return None, "the TLS fingerprint extension has no params.sha256"
        try:
            return normalize_fingerprint(value), None
        except SpecaiError as exc:
            return None, f"the TLS fingerprint extension's params.sha256 is unusable: {exc.message}"
    return None, None


def _scheme_words(name: str, scheme: Any) -> str:
    kind = scheme.WhichOneof("scheme")
    if kind == "http_auth_security_scheme":
        http = scheme.http_auth_security_scheme
        fmt = f" ({http.bearer_format})" if http.bearer_format else ""
        return f"{name}: HTTP {http.scheme}{fmt}"
    if kind == "api_key_security_scheme":
        key = scheme.api_key_security_scheme
        return f"{name}: API key in {key.location} {key.name}".rstrip()
    if kind == "oauth2_security_scheme":
        return f"{name}: OAuth 2"
    if kind == "open_id_connect_security_scheme":
        return f"{name}: OpenID Connect {scheme.open_id_connect_security_scheme.open_id_connect_url}"
    if kind == "mtls_security_scheme":
        return f"{name}: mutual TLS"
    return f"{name}: unknown scheme"


class A2AAgent:
    """A connected A2A agent: its card, and an a2a-sdk client over a TLS connection pinned to its endpoint."""

    def __init__(
        self, info: AgentCardInfo, endpoint: ServerAddress, http: httpx.AsyncClient, streaming: bool
    ):
        from a2a.client import ClientConfig, ClientFactory

        self.info = info
        self.endpoint = endpoint
        self.http = http
        card = type(info.card)()
        card.CopyFrom(info.card)
        chosen = info.jsonrpc
        del card.supported_interfaces[:]  # only the interface that was pinned, so the SDK cannot pick another
        if chosen is not None:
            interface = card.supported_interfaces.add()
            interface.url, interface.protocol_binding, interface.protocol_version = (
                chosen.url,
                chosen.binding,
                chosen.version,
            )
        config = ClientConfig(streaming=streaming, httpx_client=http, supported_protocol_bindings=[JSONRPC])
        self.client = ClientFactory(config).create(card)

    @classmethod
    async def connect(
        cls,
        url: str,
        known: KnownServers,
        *,
        fingerprint: str | None = None,
        confirm: Confirm | None = None,
        token_for: TokenLookup = lambda origin: None,
        streaming: bool = True,
        timeout_secs: float = 30.0,
    ) -> A2AAgent:
        """Pin the agent's server and fetch its card; pin the card's JSON-RPC endpoint (same server: the same
        pin; another host:port: the fingerprint the card claims in specai's extension, else that server's own
        pin); only then attach the bearer token `token_for` gives for the endpoint's origin."""
        info = await fetch_card(
            url, known, fingerprint=fingerprint, confirm=confirm, timeout_secs=timeout_secs
        )
        interface = info.jsonrpc
        if interface is None:
            offered = ", ".join(sorted({i.binding for i in info.interfaces})) or "none"
            raise RemoteError(
                f"{info.card_url} lists no JSON-RPC interface (it offers: {offered})",
                status=502,
                code="no_jsonrpc_interface",
            )
        try:
            endpoint = parse_server(interface.url)
        except ServerUrlError as exc:
            raise TrustError(
                f"the card's JSON-RPC interface {interface.url} is not usable: {exc.message} "
                "(specai sends tokens over pinned TLS only)"
            ) from None
        if endpoint == info.server:
            der = info.der  # the same server: the connection is pinned to the certificate already checked
        elif info.tls_fingerprint is not None:
            der = _pin(endpoint, None, fingerprint=info.tls_fingerprint, confirm=None, timeout=timeout_secs)
        else:
            der = _pin(endpoint, known, fingerprint=None, confirm=confirm, timeout=timeout_secs)
        http = _http(der, timeout_secs, token_for(endpoint.origin))
        return cls(info, endpoint, http, streaming)

    async def __aenter__(self) -> A2AAgent:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        await self.http.aclose()

    async def ask(self, text: str, *, context_id: str | None = None, agent: str | None = None) -> Reply:
        """The whole answer, once the agent is done."""
        reply = Reply()
        async for _ in self.events(text, context_id=context_id, agent=agent, into=reply):
            pass
        return reply

    async def events(
        self, text: str, *, context_id: str | None, into: Reply, agent: str | None = None
    ) -> AsyncIterator[ReplyEvent]:
        """SendStreamingMessage (SendMessage when not streaming, or when the agent cannot): the answer as it
        comes, also collected into `into`; `agent` goes as message metadata `{"agent": ...}` (a specai server's
        skill; other agents ignore it). Failures raise SpecaiError: a 401 as RemoteError(401), a JSON-RPC error
        as RemoteError(code=a2a_error), a certificate other than the pin as TrustError."""
        from a2a.types import Message, Part, Role, SendMessageRequest
        from google.protobuf.json_format import MessageToDict

        message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])
        if context_id:
            message.context_id = context_id
        if agent:
            message.metadata.update({"agent": agent})
        request = SendMessageRequest(message=message)
        request.configuration.accepted_output_modes.append("text/plain")
        seen = _Seen()
        try:
            async for response in self.client.send_message(request):
                into.raw.append(MessageToDict(response))
                for event in seen.events(response, into):
                    yield event
        except SpecaiError:
            raise
        except Exception as exc:  # the SDK's errors, whatever their class
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> SpecaiError:
        """An SDK failure as one SpecaiError (a pin mismatch stays a TrustError)."""
        from a2a.utils.errors import A2AError

        status = _http_status(exc)
        origin = self.endpoint.origin
        if status == 401:
            has_token = "Authorization" in self.http.headers
            fix = "the token was refused" if has_token else "it needs a token"
            return RemoteError(
                f"{origin} answered 401: {fix}; run `specai login --server {origin}` or set SPECAI_TOKEN",
                status=401,
                code="unauthorized",
            )
        if status == 403:
            return RemoteError(
                f"{origin} answered 403: this account may not do that", status=403, code="forbidden"
            )
        transport = _http_error(exc)
        if transport is not None and status is None:
            return transport_error(self.endpoint, transport)
        if isinstance(exc, A2AError):
            name = type(exc).__name__.removesuffix("Error")
            text = exc.message if getattr(exc, "message", None) else reason(exc)
            kind = "HTTP error" if status is not None else f"JSON-RPC error ({name})"
            return RemoteError(
                f"the agent at {origin} answered with a {kind}: {text}", status=502, code="a2a_error"
            )
        return ConnectionFailedError(f"talking to the agent at {origin} failed: {reason(exc)}")


class _Seen:
    """Turns StreamResponses into ReplyEvents, remembering what was already shown (a task's final state repeats
    the artifacts that were streamed)."""

    def __init__(self) -> None:
        self.shown = False

    def events(self, response: Any, into: Reply) -> list[ReplyEvent]:
        kind = response.WhichOneof("payload")
        if kind == "message":
            body = response.message
            into.context_id = body.context_id or into.context_id
            into.task_id = body.task_id or into.task_id
            return [self._text(_text_of(body.parts), into, final=True)]
        if kind == "artifact_update":
            update = response.artifact_update
            into.task_id, into.context_id = update.task_id, update.context_id
            return [self._text(_text_of(update.artifact.parts), into)]
        if kind == "status_update":
            update = response.status_update
            into.task_id, into.context_id = update.task_id, update.context_id
            return [self._status(update.status, into)]
        if kind == "task":
            task = response.task
            into.task_id, into.context_id = task.id, task.context_id
            found = [self._text(_text_of(a.parts), into) for a in task.artifacts] if not self.shown else []
            return [*found, self._status(task.status, into)]
        return []

    def _text(self, text: str, into: Reply, *, final: bool = False) -> ReplyEvent:
        if text:
            self.shown = True
            into.text += text
        return ReplyEvent(text=text, final=final)

    def _status(self, status: Any, into: Reply) -> ReplyEvent:
        state = _state_words(status.state)
        into.state = state
        text = _text_of(status.message.parts) if status.HasField("message") else ""
        final = state in {"completed", "failed", "canceled", "rejected", "input required", "auth required"}
        if state in {"failed", "rejected"}:
            into.error = text or into.error
            return ReplyEvent(state=state, final=True)
        if final and text and not self.shown:  # an answer carried in the final status
            event = self._text(text, into, final=True)
            event.state = state
            return event
        return ReplyEvent(note=text, state=state, final=final)


def _text_of(parts: Any) -> str:
    pieces = []
    for part in parts:
        kind = part.WhichOneof("content")
        if kind == "text":
            pieces.append(part.text)
        elif kind == "data":
            from google.protobuf.json_format import MessageToDict

            pieces.append(json.dumps(MessageToDict(part.data)))
        elif kind == "url":
            pieces.append(part.url)
    return "".join(pieces)


def _state_words(state: int) -> str:
    from a2a.types import TaskState

    return TaskState.Name(state).removeprefix("TASK_STATE_").replace("_", " ").lower()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in seen:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return seen


def _http_status(exc: BaseException) -> int | None:
    for cause in _chain(exc):
        if isinstance(cause, httpx.HTTPStatusError):
            return cause.response.status_code
    return None


def _http_error(exc: BaseException) -> httpx.HTTPError | None:
    return next((c for c in _chain(exc) if isinstance(c, httpx.HTTPError)), None)
