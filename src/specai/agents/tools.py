"""Built-in safe tools (calculator, current_time, graph_search, graph_add) and the per-agent tool policy (deny wins)."""

from __future__ import annotations

import ast
import datetime as dt
import fnmatch
import json
import math
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from specai.errors import SpecaiError
from specai.graph.access import SessionNotFoundError
from specai.graph.model import EDGE_TYPES, NODE_TYPES
from specai.graph.store import GraphStore
from specai.providers.base import ToolSpec
from specai.users.access import Principal

_MAX_EXPRESSION = 200
_MAX_EXPONENT = 100
_MAX_MAGNITUDE = 1e100


class ToolFailure(Exception):
    """A tool could not do what was asked; the message goes back to the model."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may reach beyond its arguments: the run's session, the graph, and who the run acts for.

    Graph tools act as `principal` on the session's graph, under the same access rule as the HTTP routes.
    """

    session_id: str | None = None
    graph: GraphStore | None = None
    principal: Principal | None = None


@dataclass(frozen=True)
class Tool:
    """A tool the model may call: its spec and a quick function; graph tools need a stored session."""

    spec: ToolSpec
    run: Callable[[dict[str, Any], ToolContext], Awaitable[str]]
    needs_graph: bool = False

    def usable(self, context: ToolContext) -> bool:
        """False for graph tools in runs without a stored session (the stateless OpenAI-compatible API)."""
        return not self.needs_graph or (
            context.graph is not None and context.session_id is not None and context.principal is not None
        )


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call, as reported to the model and the client."""

    success: bool
    output: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """`{"success", "output"?, "error"?}` (absent fields omitted)."""
        data: dict[str, Any] = {"success": self.success}
        if self.output is not None:
            data["output"] = self.output
        if self.error is not None:
            data["error"] = self.error
        return data

    def for_model(self) -> str:
        """What the model reads back."""
        return self.output if self.success and self.output is not None else f"ERROR: {self.error}"


@dataclass(frozen=True)
class ToolPolicy:
    """`allowed_tools`/`denied_tools` as full-match glob patterns; deny wins; no allow-list allows all."""

    allowed: tuple[str, ...] | None = None
    denied: tuple[str, ...] | None = None

    def allows(self, name: str) -> bool:
        """True when the agent may call `name`."""
        if self.denied and any(fnmatch.fnmatchcase(name, pattern) for pattern in self.denied):
            return False
        if self.allowed is None:
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed)


_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic (+ - * / // % ** and parentheses) by walking the AST; nothing else is allowed."""
    if len(expression) > _MAX_EXPRESSION:
        raise ToolFailure(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ToolFailure(f"not an arithmetic expression: {expression!r}") from None
    return _evaluate(tree.body)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value  # type: ignore[return-value]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _checked(_OPERATORS[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ToolFailure(f"exponent larger than {_MAX_EXPONENT}")
        try:
            return _checked(_OPERATORS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolFailure("division by zero") from None
        except OverflowError:
            raise ToolFailure("result too large") from None
    raise ToolFailure("only numbers, + - * / // % ** and parentheses are allowed")


def _checked(value: Any) -> int | float:
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        raise ToolFailure("the result is not a real number")
    if abs(value) > _MAX_MAGNITUDE:
        raise ToolFailure("result too large")
    return value


async def _calculator(arguments: dict[str, Any], _: ToolContext) -> str:
    expression = arguments.get("expression")
    if not isinstance(expression, str):
        raise ToolFailure("argument 'expression' (a string such as \"6*7\") is required")
    result = calculate(expression)
    return json.dumps({"expression": expression, "result": result})


async def _current_time(arguments: dict[str, Any], _: ToolContext) -> str:
    zone_name = arguments.get("timezone") or "UTC"
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolFailure(
            f"unknown time zone {zone_name!r} (use an IANA name such as Europe/Paris)"
        ) from None
    now = dt.datetime.now(zone)
    return json.dumps(
        {"timezone": str(zone_name), "iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}
    )


_MAX_SEARCH = 20
_NO_GRAPH = "this conversation has no knowledge graph you may use"  # access denied: nothing more is said


def _failure(exc: SpecaiError) -> ToolFailure:
    """The model reads validation messages; a denied access says nothing about what is there."""
    return ToolFailure(_NO_GRAPH if isinstance(exc, SessionNotFoundError) else exc.message)


async def _graph_search(arguments: dict[str, Any], context: ToolContext) -> str:
    assert context.graph is not None
    assert context.session_id is not None
    words = arguments.get("query", "")
    limit = arguments.get("limit", 10)
    if not isinstance(words, str):
        raise ToolFailure("argument 'query' must be a string")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_SEARCH:
        raise ToolFailure(f"argument 'limit' must be a whole number from 1 to {_MAX_SEARCH}")
    who = context.principal
    try:
        nodes = await context.graph.search_nodes(
            context.session_id, words, arguments.get("node_type"), limit, who, claim=True
        )
        found = []
        for node in nodes:
            edges = await context.graph.list_edges(context.session_id, source_id=node.id, limit=10, who=who)
            found.append(
                {
                    "id": node.id,
                    "node_type": node.node_type,
                    "label": node.label,
                    "properties": node.properties,
                    "edges": [
                        {"edge_type": e.edge_type, "predicate": e.predicate, "target_id": e.target_id}
                        for e in edges.items
                    ],
                }
            )
    except SpecaiError as exc:
        raise _failure(exc) from None
    return json.dumps({"nodes": found, "count": len(found)})


async def _graph_add(arguments: dict[str, Any], context: ToolContext) -> str:
    assert context.graph is not None
    assert context.session_id is not None
    link_to = arguments.get("link_to")
    if link_to is not None and (isinstance(link_to, bool) or not isinstance(link_to, int)):
        raise ToolFailure("argument 'link_to' must be a node id (a whole number)")
    try:
        node = await context.graph.create_node(
            context.session_id,
            arguments.get("node_type", "entity"),
            arguments.get("label", ""),
            arguments.get("properties"),
            context.principal,
        )
        result: dict[str, Any] = {"node": {"id": node.id, "node_type": node.node_type, "label": node.label}}
        if link_to is not None:
            edge = await context.graph.create_edge(
                context.session_id,
                node.id,
                link_to,
                arguments.get("edge_type") or "RELATES_TO",
                arguments.get("predicate"),
                who=context.principal,
            )
            result["edge"] = {"id": edge.id, "edge_type": edge.edge_type, "target_id": edge.target_id}
    except SpecaiError as exc:
        raise _failure(exc) from None
    return json.dumps(result)


BUILTIN_TOOLS: dict[str, Tool] = {
    "calculator": Tool(
        ToolSpec(
            "calculator",
            "Evaluate an arithmetic expression exactly (numbers, + - * / // % ** and parentheses).",
            {
                "type": "object",
                "properties": {
                    "expression": {"type": "string", "description": "For example 6*7 or (2+3)**2"}
                },
                "required": ["expression"],
            },
        ),
        _calculator,
    ),
    "current_time": Tool(
        ToolSpec(
            "current_time",
            "The current date and time, in UTC or in an IANA time zone.",
            {
                "type": "object",
                "properties": {"timezone": {"type": "string", "description": "IANA zone, e.g. Europe/Paris"}},
            },
        ),
        _current_time,
    ),
    "graph_search": Tool(
        ToolSpec(
            "graph_search",
            "Search this conversation's knowledge graph: nodes whose label or properties contain the words, "
            "with their outgoing edges.",
            {
                "type": "object",
                "properties": {
                    "query": {
                        "type": "string",
                        "description": "Words to look for; empty lists the newest nodes",
                    },
                    "node_type": {"type": "string", "enum": list(NODE_TYPES)},
                    "limit": {"type": "integer", "minimum": 1, "maximum": _MAX_SEARCH},
                },
                "required": ["query"],
            },
        ),
        _graph_search,
        needs_graph=True,
    ),
    "graph_add": Tool(
        ToolSpec(
            "graph_add",
            "Add a node to this conversation's knowledge graph, optionally linked to an existing node.",
            {
                "type": "object",
                "properties": {
                    "node_type": {"type": "string", "enum": list(NODE_TYPES)},
                    "label": {"type": "string"},
                    "properties": {"type": "object"},
                    "link_to": {
                        "type": "integer",
                        "description": "id of an existing node to link the new one to",
                    },
                    "edge_type": {
                        "type": "string",
                        "description": f"one of {', '.join(EDGE_TYPES)} or a custom NAME",
                    },
                    "predicate": {"type": "string"},
                },
                "required": ["node_type", "label"],
            },
        ),
        _graph_add,
        needs_graph=True,
    ),
}


def offered_tools(policy: ToolPolicy) -> tuple[Tool, ...]:
    """The built-in tools this policy lets the model see."""
    return tuple(tool for name, tool in sorted(BUILTIN_TOOLS.items()) if policy.allows(name))


async def run_tool(
    name: str, arguments: dict[str, Any], policy: ToolPolicy, context: ToolContext | None = None
) -> ToolResult:
    """Run one tool call under the policy; refusals and failures become results the model can read."""
    context = context or ToolContext()
    tool = BUILTIN_TOOLS.get(name)
    if tool is None:
        return ToolResult(False, error=f"tool '{name}' does not exist")
    if not policy.allows(name):
        return ToolResult(False, error=f"tool '{name}' is not allowed for this agent")
    if not tool.usable(context):
        return ToolResult(False, error=f"tool '{name}' needs a stored session; it is not available here")
    try:
        return ToolResult(True, output=await tool.run(arguments, context))
    except ToolFailure as exc:
        return ToolResult(False, error=str(exc))
