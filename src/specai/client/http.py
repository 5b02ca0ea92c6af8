"""SpecaiClient: the blocking client the CLI uses, pinned to the server's certificate before any secret is sent."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
import msgspec
from httpx_sse import ServerSentEvent

from specai import __version__
from specai.client import sse
from specai.client.errors import response_error, transport_error
from specai.client.pinning import check_pin, fetch_cert, pinned_context
from specai.client.wire import body_of, decode
from specai.errors import RemoteError
from specai.identity.fingerprint import fingerprint_der
from specai.identity.trust import KnownServers, ServerAddress, parse_server
from specai.server.schemas.agents import AgentListOut, QueryIn, QueryOut
from specai.server.schemas.auth import (
    ApiKeyListOut,
    ApiKeyOut,
    KeyIn,
    NewApiKeyOut,
    TokenIn,
    TokenOut,
    WhoAmIOut,
)
from specai.server.schemas.graph import (
    BootstrapIn,
    BootstrapOut,
    EdgeDeletedOut,
    EdgeIn,
    EdgeOut,
    EdgePageOut,
    GraphSessionListOut,
    NodeDeletedOut,
    NodeIn,
    NodeOut,
    NodePageOut,
    SharedOut,
    ShareIn,
    SharesOut,
    UnsharedOut,
)
from specai.server.schemas.health import CertOut, HealthOut
from specai.server.schemas.mesh import AckIn, InboxOut, MembersOut, SendIn, SendOut
from specai.server.schemas.sessions import SessionDetailOut, SessionListOut

T = TypeVar("T")


class SpecaiClient:
    """Typed access to a specai server; every request goes over a TLS context that trusts only the pin."""

    def __init__(
        self, server: ServerAddress, der: bytes, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.server = server
        self.fingerprint = fingerprint_der(der)
        self.token = token
        self.http = httpx.Client(
            base_url=server.origin,
            verify=pinned_context(der),
            timeout=httpx.Timeout(timeout, read=None),
            headers={"User-Agent": f"specai/{__version__}"},
        )

    @classmethod
    def connect(
        cls,
        url: str,
        known: KnownServers,
        *,
        fingerprint: str | None = None,
        confirm: Callable[[str, str], bool] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> SpecaiClient:
        """Fetch the server's certificate (sending nothing), check it against the pin, then open the client."""
        server = parse_server(url)
        der = fetch_cert(server, timeout=min(timeout, 10.0))
        check_pin(server, der, known, expected=fingerprint, confirm=confirm)
        return cls(server, der, token=token, timeout=timeout)

    def __enter__(self) -> SpecaiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    # -- API ---------------------------------------------------------------------------------------------------

    def health(self) -> HealthOut:
        """GET /health."""
        return self._call("GET", "/health", HealthOut)

    def cert(self) -> CertOut:
        """GET /cert."""
        return self._call("GET", "/cert", CertOut)

    def agents(self) -> AgentListOut:
        """GET /agents."""
        return self._call("GET", "/agents", AgentListOut)

    def sessions(self, limit: int = 100) -> SessionListOut:
        """GET /sessions."""
        return self._call("GET", f"/sessions?limit={limit}", SessionListOut)

    def session(self, session_id: str) -> SessionDetailOut:
        """GET /sessions/{id}: the session and its messages."""
        return self._call("GET", f"/sessions/{quote(session_id, safe='')}", SessionDetailOut)

    def delete_session(self, session_id: str) -> None:
        """DELETE /sessions/{id}."""
        self._send("DELETE", f"/sessions/{quote(session_id, safe='')}")

    def login(self, username: str, password: str) -> TokenOut:
        """POST /auth/token; remembers the token for later calls."""
        body = self._call("POST", "/auth/token", TokenOut, TokenIn(username, password))
        self.token = body.token
        return body

    def logout(self) -> None:
        """Revoke the token this client carries, on the server."""
        self._send("POST", "/auth/logout")

    def whoami(self) -> WhoAmIOut:
        """The account, role and scope the server sees behind this client's token."""
        return self._call("GET", "/auth/whoami", WhoAmIOut)

    def create_key(self, name: str, scope: str, expires_days: int | None) -> NewApiKeyOut:
        """A new API key (its `key` is shown only in this answer)."""
        return self._call("POST", "/auth/keys", NewApiKeyOut, KeyIn(name, scope, expires_days))

    def keys(self) -> ApiKeyListOut:
        """The caller's API keys (an admin's: everyone's)."""
        return self._call("GET", "/auth/keys", ApiKeyListOut)

    def revoke_key(self, key_id: str) -> ApiKeyOut:
        """Revoke an API key; returns its record."""
        return self._call("DELETE", f"/auth/keys/{quote(key_id, safe='')}", ApiKeyOut)

    def query(
        self,
        message: str,
        *,
        agent: str | None = None,
        session_id: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> QueryOut:
        """POST /query: the whole answer at once. `system` is an extra system prompt for this query only (after
        the agent's own, not stored); None leaves the agent's choice (its session, prompt, temperature, limit)."""
        body = QueryIn(
            message, session_id, agent, temperature=temperature, max_tokens=max_tokens, system=system
        )
        return self._call("POST", "/query", QueryOut, body)

    def stream(
        self,
        message: str,
        *,
        agent: str | None = None,
        session_id: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """POST /stream: yield each StreamChunk as it arrives (the options as for `query`)."""
        body = QueryIn(
            message, session_id, agent, temperature=temperature, max_tokens=max_tokens, system=system
        )
        for event in self._events("POST", "/stream", json=body_of(body)):
            if event.data:
                yield json.loads(event.data)

    # -- knowledge graph ---------------------------------------------------------------------------------------

    def graph_nodes(
        self,
        session_id: str,
        *,
        node_type: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> NodePageOut:
        """GET /graph/nodes: one page, newest first (`next_cursor` fetches the next one)."""
        query = {"session_id": session_id, "node_type": node_type, "limit": limit, "cursor": cursor}
        return self._call("GET", _with_query("/graph/nodes", query), NodePageOut)

    def graph_edges(
        self,
        session_id: str,
        *,
        edge_type: str | None = None,
        source_id: int | None = None,
        target_id: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> EdgePageOut:
        """GET /graph/edges: one page, newest first, filtered by type, source and/or target."""
        query = {
            "session_id": session_id,
            "edge_type": edge_type,
            "source_id": source_id,
            "target_id": target_id,
            "limit": limit,
            "cursor": cursor,
        }
        return self._call("GET", _with_query("/graph/edges", query), EdgePageOut)

    def create_node(
        self, session_id: str, node_type: str, label: str, properties: dict[str, Any] | None = None
    ) -> NodeOut:
        """POST /graph/nodes: the created node."""
        return self._call("POST", "/graph/nodes", NodeOut, NodeIn(session_id, node_type, label, properties))

    def create_edge(
        self,
        session_id: str,
        source_id: int,
        target_id: int,
        edge_type: str,
        *,
        predicate: str | None = None,
        weight: float | None = None,
        properties: dict[str, Any] | None = None,
    ) -> EdgeOut:
        """POST /graph/edges: the created edge (the server's default weight is 1.0)."""
        body = EdgeIn(session_id, source_id, target_id, edge_type, predicate=predicate, properties=properties)
        if weight is not None:
            body.weight = weight
        return self._call("POST", "/graph/edges", EdgeOut, body)

    def get_node(self, node_id: int) -> NodeOut:
        """GET /graph/nodes/{id}."""
        return self._call("GET", f"/graph/nodes/{int(node_id)}", NodeOut)

    def get_edge(self, edge_id: int) -> EdgeOut:
        """GET /graph/edges/{id}."""
        return self._call("GET", f"/graph/edges/{int(edge_id)}", EdgeOut)

    def delete_node(self, node_id: int) -> NodeDeletedOut:
        """DELETE /graph/nodes/{id}: the id and how many edges went with it."""
        return self._call("DELETE", f"/graph/nodes/{int(node_id)}", NodeDeletedOut)

    def delete_edge(self, edge_id: int) -> EdgeDeletedOut:
        """DELETE /graph/edges/{id}."""
        return self._call("DELETE", f"/graph/edges/{int(edge_id)}", EdgeDeletedOut)

    def bootstrap(self, session_id: str | None = None) -> BootstrapOut:
        """POST /bootstrap: index the server's repository into a session's graph; returns the counts."""
        body = BootstrapIn() if session_id is None else BootstrapIn(session_id)
        return self._call("POST", "/bootstrap", BootstrapOut, body)

    def watch(
        self,
        session_id: str,
        last_event_id: str | int | None = None,
        *,
        since: int | None = None,
        idle_timeout: float = 60.0,
    ) -> Generator[sse.FeedEvent, None, None]:
        """GET /graph/stream: yield `(event_type, id, data)` for one connection, until the server ends it.

        The first item is `("open", cursor, None)`, where `cursor` is the changelog id the server resumes after
        (None when the server did not say). Then `("message", id, change)` per change, `("reset", None, body)`
        and `("error", None, body)` as the server sends them. `last_event_id` is sent as `Last-Event-ID`.
        `idle_timeout` bounds the silence between two reads; the server sends keep-alive comments every
        `sse_keepalive_secs` (15 s by default), so only a dead connection stays silent for long. Transport
        failures raise ConnectionFailedError (TrustError for a changed certificate); error answers RemoteError.
        """
        path, headers = sse.change_stream(session_id, last_event_id, since)
        timeout = httpx.Timeout(30.0, read=idle_timeout)
        for event in self._events("GET", path, headers=headers, timeout=timeout):
            yield sse.change_event(event)

    def follow(
        self, session_id: str, since: int | None = None, *, idle_timeout: float = 60.0
    ) -> Generator[sse.FeedItem, None, None]:
        """Follow a session's changes forever: `watch` again after every drop, resuming after the last change
        (see `sse.follow`), so none is missed or delivered twice."""
        return sse.follow(lambda last: self.watch(session_id, last, idle_timeout=idle_timeout), since)

    def graph_sessions(self) -> GraphSessionListOut:
        """GET /graph/sessions: the sessions the caller owns or that are shared with them."""
        return self._call("GET", "/graph/sessions", GraphSessionListOut)

    def graph_shares(self, session_id: str) -> SharesOut:
        """GET /graph/sessions/{id}/shares: the owner and who else may read or write."""
        return self._call("GET", f"/graph/sessions/{quote(session_id, safe='')}/shares", SharesOut)

    def share_graph(self, session_id: str, username: str, *, read_only: bool = False) -> SharedOut:
        """POST /graph/sessions/{id}/shares: the share as it now stands."""
        path = f"/graph/sessions/{quote(session_id, safe='')}/shares"
        return self._call("POST", path, SharedOut, ShareIn(username, read_only))

    def unshare_graph(self, session_id: str, username: str) -> UnsharedOut:
        """DELETE /graph/sessions/{id}/shares/{username}."""
        path = f"/graph/sessions/{quote(session_id, safe='')}/shares/{quote(username, safe='')}"
        return self._call("DELETE", path, UnsharedOut)

    # -- mesh -------------------------------------------------------------------------------------------------

    def mesh_members(self) -> MembersOut:
        """GET /registry/agents: every member, the leader and the server's own instance id."""
        return self._call("GET", "/registry/agents", MembersOut)

    def mesh_send(
        self,
        source: str,
        message_type: str | dict[str, str],
        payload: Any,
        target: str | None = None,
        correlation_id: str | None = None,
    ) -> SendOut:
        """POST /messages/send/{source}; no `target` broadcasts to every member but the source."""
        body = SendIn(message_type, payload, target, correlation_id)
        return self._call("POST", f"/messages/send/{quote(source, safe='')}", SendOut, body)

    def mesh_inbox(self, instance_id: str, *, limit: int | None = None, after: str | None = None) -> InboxOut:
        """GET /messages/{id}: one page not yet acknowledged by that member, oldest first; pass `cursor` as
        `after` for the next page."""
        path = _with_query(f"/messages/{quote(instance_id, safe='')}", {"limit": limit, "after": after})
        return self._call("GET", path, InboxOut)

    def mesh_ack(self, instance_id: str, message_ids: list[str]) -> None:
        """POST /messages/ack/{id}: removes the messages from that member's inbox only (204)."""
        self._send("POST", f"/messages/ack/{quote(instance_id, safe='')}", AckIn(list(message_ids)))

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _events(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **options: Any
    ) -> Generator[ServerSentEvent, None, None]:
        """The server-sent events of one request; error answers raise RemoteError, transport failures
        ConnectionFailedError (TrustError for a changed certificate)."""
        headers = {**self._auth(), **(headers or {})}
        return sse.iter_events(
            self.http, self.server, method, path, error=_remote_error, headers=headers, **options
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _call(self, method: str, path: str, shape: type[T], body: msgspec.Struct | None = None) -> T:
        """One request, its answer decoded as `shape` (UnexpectedAnswerError when it does not fit)."""
        response = self._send(method, path, body)
        return decode(response.content, shape, f"{self.server.origin}{path}")

    def _send(self, method: str, path: str, body: msgspec.Struct | None = None) -> httpx.Response:
        """One request with the caller's token; an error answer raises RemoteError."""
        try:
            response = self.http.request(
                method, path, json=None if body is None else body_of(body), headers=self._auth()
            )
        except httpx.HTTPError as exc:
            raise transport_error(self.server, exc) from None
        if response.status_code >= 400:
            raise _remote_error(response)
        return response


def _with_query(path: str, query: dict[str, Any]) -> str:
    present = {key: value for key, value in query.items() if value is not None}
    return f"{path}?{urlencode(present)}" if present else path


def _remote_error(response: httpx.Response) -> RemoteError:
    """The server's error, with the way out when a token is missing or expired."""
    error = response_error(response)
    if error.http_status != 401 or error.remote_code != "unauthorized" or "login" in error.message:
        return error
    return RemoteError(
        f"{error.message}; run `specai login`", status=401, code=error.remote_code, details=error.details
    )
