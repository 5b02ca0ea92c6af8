"""SpecaiClient: the blocking client the CLI uses, pinned to the server's certificate before any secret is sent."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from httpx_sse import ServerSentEvent

from specai import __version__
from specai.client import sse
from specai.client.errors import response_error, transport_error
from specai.client.pinning import check_pin, fetch_cert, pinned_context
from specai.errors import ConnectionFailedError, RemoteError
from specai.identity.fingerprint import fingerprint_der
from specai.identity.trust import KnownServers, ServerAddress, parse_server


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

    def health(self) -> dict[str, Any]:
        """GET /health."""
        return self._call("GET", "/health")

    def cert(self) -> dict[str, Any]:
        """GET /cert."""
        return self._call("GET", "/cert")

    def agents(self) -> dict[str, Any]:
        """GET /agents."""
        return self._call("GET", "/agents")

    def sessions(self, limit: int = 100) -> dict[str, Any]:
        """GET /sessions."""
        return self._call("GET", f"/sessions?limit={limit}")

    def session(self, session_id: str) -> dict[str, Any]:
        """GET /sessions/{id}: the session and its messages."""
        return self._call("GET", f"/sessions/{quote(session_id, safe='')}")

    def delete_session(self, session_id: str) -> None:
        """DELETE /sessions/{id}."""
        self._call("DELETE", f"/sessions/{quote(session_id, safe='')}")

    def login(self, username: str, password: str) -> dict[str, Any]:
        """POST /auth/token; remembers the token for later calls."""
        body = self._call("POST", "/auth/token", {"username": username, "password": password})
        self.token = body["token"]
        return body

    def logout(self) -> None:
        """Revoke the token this client carries, on the server."""
        self._call("POST", "/auth/logout")

    def create_key(self, name: str, scope: str, expires_days: int | None) -> dict[str, Any]:
        """A new API key (its `key` is shown only in this answer)."""
        return self._call("POST", "/auth/keys", {"name": name, "scope": scope, "expires_days": expires_days})

    def keys(self) -> dict[str, Any]:
        """`{keys:[...]}`: the caller's API keys (an admin's: everyone's)."""
        return self._call("GET", "/auth/keys")

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke an API key; returns its record."""
        return self._call("DELETE", f"/auth/keys/{quote(key_id, safe='')}")

    def query(self, message: str, **fields: Any) -> dict[str, Any]:
        """POST /query: the whole answer at once."""
        return self._call("POST", "/query", _query_body(message, fields))

    def stream(self, message: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """POST /stream: yield each StreamChunk as it arrives."""
        for event in self._events("POST", "/stream", json=_query_body(message, fields)):
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
    ) -> dict[str, Any]:
        """GET /graph/nodes: one page, newest first (`next_cursor` fetches the next one)."""
        query = {"session_id": session_id, "node_type": node_type, "limit": limit, "cursor": cursor}
        return self._call("GET", _with_query("/graph/nodes", query))

    def graph_edges(
        self,
        session_id: str,
        *,
        edge_type: str | None = None,
        source_id: int | None = None,
        target_id: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """GET /graph/edges: one page, newest first, filtered by type, source and/or target."""
        query = {
            "session_id": session_id,
            "edge_type": edge_type,
            "source_id": source_id,
            "target_id": target_id,
            "limit": limit,
            "cursor": cursor,
        }
        return self._call("GET", _with_query("/graph/edges", query))

    def create_node(
        self, session_id: str, node_type: str, label: str, properties: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """POST /graph/nodes: the created node."""
        body: dict[str, Any] = {"session_id": session_id, "node_type": node_type, "label": label}
        if properties is not None:
            body["properties"] = properties
        return self._call("POST", "/graph/nodes", body)

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
    ) -> dict[str, Any]:
        """POST /graph/edges: the created edge (the server's default weight is 1.0)."""
        body: dict[str, Any] = {
            "session_id": session_id,
            "source_id": source_id,
            "target_id": target_id,
            "edge_type": edge_type,
        }
        optional = {"predicate": predicate, "weight": weight, "properties": properties}
        body.update({key: value for key, value in optional.items() if value is not None})
        return self._call("POST", "/graph/edges", body)

    def get_node(self, node_id: int) -> dict[str, Any]:
        """GET /graph/nodes/{id}."""
        return self._call("GET", f"/graph/nodes/{int(node_id)}")

    def get_edge(self, edge_id: int) -> dict[str, Any]:
        """GET /graph/edges/{id}."""
        return self._call("GET", f"/graph/edges/{int(edge_id)}")

    def delete_node(self, node_id: int) -> dict[str, Any]:
        """DELETE /graph/nodes/{id}: `{"deleted": "node", "id", "edges_deleted"}`."""
        return self._call("DELETE", f"/graph/nodes/{int(node_id)}")

    def delete_edge(self, edge_id: int) -> dict[str, Any]:
        """DELETE /graph/edges/{id}: `{"deleted": "edge", "id"}`."""
        return self._call("DELETE", f"/graph/edges/{int(edge_id)}")

    def bootstrap(self, session_id: str | None = None) -> dict[str, Any]:
        """POST /bootstrap: index the server's repository into a session's graph; returns the counts."""
        return self._call("POST", "/bootstrap", {} if session_id is None else {"session_id": session_id})

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

    def graph_sessions(self) -> dict[str, Any]:
        """GET /graph/sessions: `{sessions: [{session_id, owner, access}]}` the caller owns or is shared."""
        return self._call("GET", "/graph/sessions")

    def graph_shares(self, session_id: str) -> dict[str, Any]:
        """GET /graph/sessions/{id}/shares: `{session_id, owner, shares: [{username, access}]}`."""
        return self._call("GET", f"/graph/sessions/{quote(session_id, safe='')}/shares")

    def share_graph(self, session_id: str, username: str, *, read_only: bool = False) -> dict[str, Any]:
        """POST /graph/sessions/{id}/shares: `{session_id, username, access}`."""
        body = {"username": username, "read_only": read_only}
        return self._call("POST", f"/graph/sessions/{quote(session_id, safe='')}/shares", body)

    def unshare_graph(self, session_id: str, username: str) -> dict[str, Any]:
        """DELETE /graph/sessions/{id}/shares/{username}: `{session_id, unshared}`."""
        path = f"/graph/sessions/{quote(session_id, safe='')}/shares/{quote(username, safe='')}"
        return self._call("DELETE", path)

    # -- mesh -------------------------------------------------------------------------------------------------

    def mesh_members(self) -> dict[str, Any]:
        """GET /registry/agents: `{instances: [MeshInstance], leader_id, self_id}`."""
        return self._call("GET", "/registry/agents")

    def mesh_send(
        self,
        source: str,
        message_type: str | dict[str, str],
        payload: Any,
        target: str | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        """POST /messages/send/{source}: `{message_id, status, delivered_to}`; no `target` broadcasts to every
        member but the source."""
        body: dict[str, Any] = {"message_type": message_type, "payload": payload}
        if target is not None:
            body["target_instance"] = target
        if correlation_id is not None:
            body["correlation_id"] = correlation_id
        return self._call("POST", f"/messages/send/{quote(source, safe='')}", body)

    def mesh_inbox(
        self, instance_id: str, *, limit: int | None = None, after: str | None = None
    ) -> dict[str, Any]:
        """GET /messages/{id}: one page `{messages: [AgentMessage], more, cursor}` not yet acknowledged by that
        member, oldest first; pass `cursor` as `after` for the next page."""
        path = _with_query(f"/messages/{quote(instance_id, safe='')}", {"limit": limit, "after": after})
        return self._call("GET", path)

    def mesh_ack(self, instance_id: str, message_ids: list[str]) -> None:
        """POST /messages/ack/{id}: removes the messages from that member's inbox only (204)."""
        self._call("POST", f"/messages/ack/{quote(instance_id, safe='')}", {"message_ids": list(message_ids)})

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

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, json=body, headers=self._auth())
        except httpx.HTTPError as exc:
            raise transport_error(self.server, exc) from None
        if response.status_code >= 400:
            raise _remote_error(response)
        if response.status_code == 204:
            return {}
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise ConnectionFailedError(
                f"{self.server.origin}{path} answered with something that is not JSON"
            ) from None
        return data


def _with_query(path: str, query: dict[str, Any]) -> str:
    present = {key: value for key, value in query.items() if value is not None}
    return f"{path}?{urlencode(present)}" if present else path


def _query_body(message: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"message": message, **{k: v for k, v in fields.items() if v is not None}}


def _remote_error(response: httpx.Response) -> RemoteError:
    """The server's error, with the way out when a token is missing or expired."""
    error = response_error(response)
    if error.http_status != 401 or error.remote_code != "unauthorized" or "login" in error.message:
        return error
    return RemoteError(
        f"{error.message}; run `specai login`", status=401, code=error.remote_code, details=error.details
    )
