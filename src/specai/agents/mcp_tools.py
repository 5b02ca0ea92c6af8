"""What specai offers MCP hosts, protocol-free: the tools (agents, graph, safe built-ins) and the resources (graph and
agent sessions), every call made as the caller's principal under the same ownership rules as the HTTP routes.

The MCP server (server/mcp.py) only translates: it lists `TOOLS`, calls `McpCatalog.call` and turns a SpecaiError
into a tool error result (code and message, nothing more); it reads resources through `McpCatalog.read`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from specai.agents.runtime import AgentRuntime, QueryInput, Run
from specai.agents.sessions import SessionStore
from specai.agents.tools import BUILTIN_TOOLS, ToolPolicy, run_tool
from specai.errors import InvalidRequestError, NotFoundError
from specai.graph.access import missing
from specai.graph.model import EDGE_TYPES, NODE_TYPES
from specai.graph.store import GraphStore
from specai.ids import check_session_id
from specai.users.access import Principal

SAFE_TOOLS = ("calculator", "current_time")  # the built-ins that need nothing but their arguments
GRAPH_URI = "specai://graph/"
SESSIONS_URI = "specai://sessions/"
MAX_GRAPH_ITEMS = 200  # nodes (and edges) one graph_get or graph resource read returns, newest first
_MAX_SEARCH = 50

Finish = Callable[[Run], Awaitable[tuple[str, dict[str, Any]]]]


@dataclass(frozen=True)
class McpTool:
    """One tool as an MCP host sees it: name, description, JSON Schema of the arguments, and whether it writes."""

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool


@dataclass(frozen=True)
class ResourceEntry:
    """One readable resource: its URI, a short name and what it is."""

    uri: str
    name: str
    description: str


_SESSION = {"type": "string", "minLength": 1, "maxLength": 128, "description": "the graph's session id"}


def _graph_tools() -> tuple[McpTool, ...]:
    return (
        McpTool(
            "graph_search",
            "Search a knowledge graph session you own or that is shared with you: nodes whose label or "
            "properties contain the words (case-insensitive), newest first.",
            {
                "type": "object",
                "properties": {
                    "session_id": _SESSION,
                    "query": {
                        "type": "string",
                        "description": "words to look for; empty lists the newest nodes",
                    },
                    "node_type": {"type": "string", "enum": list(NODE_TYPES)},
                    "limit": {"type": "integer", "minimum": 1, "maximum": _MAX_SEARCH, "default": 20},
                },
                "required": ["session_id", "query"],
            },
            read_only=True,
        ),
        McpTool(
            "graph_get",
            "Read a knowledge graph session: its nodes and edges (newest first), or with node_id one node "
            "and its outgoing and incoming edges.",
            {
                "type": "object",
                "properties": {
                    "session_id": _SESSION,
                    "node_id": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "only this node and its edges",
                    },
                },
                "required": ["session_id"],
            },
            read_only=True,
        ),
        McpTool(
            "graph_add_node",
            "Add a node to a knowledge graph session; the first write to a new session makes you its owner.",
            {
                "type": "object",
                "properties": {
                    "session_id": _SESSION,
                    "node_type": {"type": "string", "enum": list(NODE_TYPES)},
                    "label": {"type": "string", "minLength": 1},
                    "properties": {"type": "object", "description": "any JSON object"},
                },
                "required": ["session_id", "node_type", "label"],
            },
            read_only=False,
        ),
        McpTool(
            "graph_add_edge",
            "Add an edge between two nodes of the same knowledge graph session.",
            {
                "type": "object",
                "properties": {
                    "session_id": _SESSION,
                    "source_id": {"type": "integer", "minimum": 1},
                    "target_id": {"type": "integer", "minimum": 1},
                    "edge_type": {
                        "type": "string",
                        "description": f"one of {', '.join(EDGE_TYPES)} or a custom NAME",
                    },
                    "predicate": {"type": "string"},
                    "properties": {"type": "object"},
                    "weight": {"type": "number"},
                },
                "required": ["session_id", "source_id", "target_id", "edge_type"],
            },
            read_only=False,
        ),
    )


def tools(runtime: AgentRuntime) -> tuple[McpTool, ...]:
    """Every tool: `ask_agent` (its `agent` enum the configured agents), the graph tools and the safe built-ins."""
    ask = McpTool(
        "ask_agent",
        "Ask one of this server's agents; it answers as you, in a stored conversation you can continue by "
        "passing back the session id it returns.",
        {
            "type": "object",
            "properties": {
                "agent": {"type": "string", "enum": sorted(runtime.agents), "description": "the agent's id"},
                "message": {"type": "string", "minLength": 1},
                "session": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 128,
                    "description": "continue this conversation (omit to start a new one)",
                },
            },
            "required": ["agent", "message"],
        },
        read_only=False,
    )
    safe = tuple(
        McpTool(spec.name, spec.description, dict(spec.parameters), read_only=True)
        for spec in (BUILTIN_TOOLS[name].spec for name in SAFE_TOOLS)
    )
    return (ask, *_graph_tools(), *safe)


class McpCatalog:
    """Runs the MCP tools and reads the resources as the caller; every failure is a SpecaiError with its code."""

    def __init__(
        self,
        runtime: AgentRuntime,
        graph: Callable[[], GraphStore],
        sessions: Callable[[], SessionStore],
        finish: Finish,
    ) -> None:
        self.runtime = runtime
        self.tools = tools(runtime)
        self._graph = graph
        self._sessions = sessions
        self._finish = finish
        self._calls: dict[str, Callable[[dict[str, Any], Principal], Awaitable[dict[str, Any]]]] = {
            "ask_agent": self._ask_agent,
            "graph_search": self._graph_search,
            "graph_get": self._graph_get,
            "graph_add_node": self._graph_add_node,
            "graph_add_edge": self._graph_add_edge,
            **{name: self._safe(name) for name in SAFE_TOOLS},
        }

    async def call(self, name: str, arguments: dict[str, Any], who: Principal) -> dict[str, Any]:
        """Run tool `name` as `who`: its JSON result, or a SpecaiError (not_found for an invisible session)."""
        call = self._calls.get(name)
        if call is None:
            raise InvalidRequestError(f"tool '{name}' does not exist; see tools/list")
        return await call(arguments, who)

    # --- tools -------------------------------------------------------------------------------------------------

    async def _ask_agent(self, arguments: dict[str, Any], who: Principal) -> dict[str, Any]:
        query = QueryInput(
            message=_text(arguments, "message"),
            agent=_text(arguments, "agent"),
            session_id=_optional_text(arguments, "session"),
        )
        run = await self.runtime.prepare(query, who.user_id, who)
        text, metadata = await self._finish(run)
        return {"response": text, "session_id": run.session_id, "agent": run.agent.id, "metadata": metadata}

    async def _graph_search(self, arguments: dict[str, Any], who: Principal) -> dict[str, Any]:
        session_id = _session_id(arguments)
        limit = _whole(arguments, "limit", 20, 1, _MAX_SEARCH)
        graph = self._graph()
        await _readable(graph, session_id, who)
        words = arguments.get("query", "")
        if not isinstance(words, str):
            raise InvalidRequestError("argument 'query' must be a string")
        nodes = await graph.search_nodes(
            session_id, words, _optional_text(arguments, "node_type"), limit, who
        )
        return {"session_id": session_id, "nodes": [n.as_dict() for n in nodes], "count": len(nodes)}

    async def _graph_get(self, arguments: dict[str, Any], who: Principal) -> dict[str, Any]:
        session_id = _session_id(arguments)
        if arguments.get("node_id") is None:
            return await self.graph_document(session_id, who)
        node_id = _whole(arguments, "node_id", None, 1, None)
        graph = self._graph()
        await _readable(graph, session_id, who)
        node = await graph.get_node(node_id, who)
        if node.session_id != session_id:
            raise NotFoundError(f"node {node_id} not found in graph session '{session_id}'")
        out = await graph.list_edges(session_id, source_id=node_id, limit=MAX_GRAPH_ITEMS, who=who)
        into = await graph.list_edges(session_id, target_id=node_id, limit=MAX_GRAPH_ITEMS, who=who)
        return {
            "session_id": session_id,
            "node": node.as_dict(),
            "outgoing": [e.as_dict() for e in out.items],
            "incoming": [e.as_dict() for e in into.items],
        }

    async def _graph_add_node(self, arguments: dict[str, Any], who: Principal) -> dict[str, Any]:
        node = await self._graph().create_node(
            _session_id(arguments),
            _text(arguments, "node_type"),
            _text(arguments, "label"),
            arguments.get("properties"),
            who,
        )
        return {"node": node.as_dict()}

    async def _graph_add_edge(self, arguments: dict[str, Any], who: Principal) -> dict[str, Any]:
        edge = await self._graph().create_edge(
            _session_id(arguments),
            _whole(arguments, "source_id", None, 1, None),
            _whole(arguments, "target_id", None, 1, None),
            _text(arguments, "edge_type"),
            _optional_text(arguments, "predicate"),
            arguments.get("properties"),
            arguments.get("weight", 1.0),
            who,
        )
        return {"edge": edge.as_dict()}

    def _safe(self, name: str) -> Callable[[dict[str, Any], Principal], Awaitable[dict[str, Any]]]:
        """A safe built-in, run by agents/tools.py exactly as an agent would run it."""

        async def call(arguments: dict[str, Any], _: Principal) -> dict[str, Any]:
            result = await run_tool(name, arguments, ToolPolicy())
            if not result.success or result.output is None:
                raise InvalidRequestError(result.error or f"tool '{name}' failed")
            output = json.loads(result.output)  # the built-ins answer with a JSON object
            return output if isinstance(output, dict) else {"result": output}

        return call

    # --- resources ---------------------------------------------------------------------------------------------

    async def resources(self, who: Principal) -> list[ResourceEntry]:
        """The graph sessions `who` owns or that are shared with them, then the agent sessions they own."""
        entries = [
            ResourceEntry(
                GRAPH_URI + quote(entry.session_id, safe=""),
                f"graph {entry.session_id}",
                "knowledge graph you own"
                if entry.access == "owner"
                else f"knowledge graph shared with you "
                f"({'read-write' if entry.access == 'write' else 'read-only'})",
            )
            for entry in await self._graph().sessions(who)
        ]
        entries += [
            ResourceEntry(
                SESSIONS_URI + quote(session.id, safe=""),
                f"conversation {session.id}",
                f"conversation with agent '{session.agent}' ({session.message_count} messages)",
            )
            for session in await self._sessions().list(who.user_id, limit=1000)
        ]
        return entries

    async def read(self, uri: str, who: Principal) -> dict[str, Any]:
        """The JSON document of a resource URI; NotFoundError for anything `who` may not see."""
        if uri.startswith(GRAPH_URI):
            return await self.graph_document(check_session_id(unquote(uri[len(GRAPH_URI) :])), who)
        if uri.startswith(SESSIONS_URI):
            return await self._conversation(check_session_id(unquote(uri[len(SESSIONS_URI) :])), who)
        raise NotFoundError(f"no resource '{uri}' (specai serves {GRAPH_URI}<id> and {SESSIONS_URI}<id>)")

    async def graph_document(self, session_id: str, who: Principal) -> dict[str, Any]:
        """A graph session's newest nodes and edges (at most MAX_GRAPH_ITEMS each), and the caller's access."""
        graph = self._graph()
        level = await _readable(graph, session_id, who)
        nodes = await graph.list_nodes(session_id, limit=MAX_GRAPH_ITEMS, who=who)
        edges = await graph.list_edges(session_id, limit=MAX_GRAPH_ITEMS, who=who)
        return {
            "session_id": session_id,
            "access": level,
            "nodes": [n.as_dict() for n in nodes.items],
            "edges": [e.as_dict() for e in edges.items],
            "truncated": nodes.next_cursor is not None or edges.next_cursor is not None,
        }

    async def _conversation(self, session_id: str, who: Principal) -> dict[str, Any]:
        sessions = self._sessions()
        session = await sessions.get(session_id, who.user_id)
        messages = await sessions.messages(session_id, who.user_id)
        return {
            "id": session.id,
            "agent": session.agent,
            "created_at": session.created_at.isoformat(),
            "updated_at": session.updated_at.isoformat(),
            "message_count": session.message_count,
            "messages": [
                {
                    "role": m.role,
                    "content": m.content,
                    "created_at": m.created_at.isoformat(),
                    **({"tool_calls": m.tool_calls} if m.tool_calls else {}),
                    **({"tool_call_id": m.tool_call_id} if m.tool_call_id else {}),
                    **({"name": m.name} if m.name else {}),
                }
                for m in messages
            ],
        }


async def _readable(graph: GraphStore, session_id: str, who: Principal) -> str:
    """`who`'s access to the session ("read" or "write"); a session they may not see (or nobody's) is not found."""
    grant = await graph.grant(session_id, who)
    if grant.level == "none":
        raise missing(session_id)
    return grant.level


def _session_id(arguments: dict[str, Any]) -> str:
    return check_session_id(_text(arguments, "session_id"))


def _text(arguments: dict[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str):
        raise InvalidRequestError(f"argument '{name}' (a string) is required")
    return value


def _optional_text(arguments: dict[str, Any], name: str) -> str | None:
    value = arguments.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"argument '{name}' must be a string")
    return value


def _whole(arguments: dict[str, Any], name: str, default: int | None, low: int, high: int | None) -> int:
    value = arguments.get(name, default)
    if value is None:
        raise InvalidRequestError(f"argument '{name}' (a whole number) is required")
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidRequestError(f"argument '{name}' must be a whole number {bound}")
    return value
