"""Built-in safe tools (calculator, current_time) and the per-agent tool policy (full-match globs, deny wins)."""

from __future__ import annotations

import ast
import datetime as dt
import fnmatch
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from specai.providers.base import ToolSpec

_MAX_EXPRESSION = 200
_MAX_EXPONENT = 100
_MAX_MAGNITUDE = 1e100


class ToolFailure(Exception):
    """A tool could not do what was asked; the message goes back to the model."""


@dataclass(frozen=True)
class Tool:
    """A tool the model may call: its spec and a quick, side-effect-free function."""

    spec: ToolSpec
    run: Callable[[dict[str, Any]], str]


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


def _calculator(arguments: dict[str, Any]) -> str:
    expression = arguments.get("expression")
    if not isinstance(expression, str):
        raise ToolFailure("argument 'expression' (a string such as \"6*7\") is required")
    result = calculate(expression)
    return json.dumps({"expression": expression, "result": result})


def _current_time(arguments: dict[str, Any]) -> str:
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
}


def offered_tools(policy: ToolPolicy) -> tuple[Tool, ...]:
    """The built-in tools this policy lets the model see."""
    return tuple(tool for name, tool in sorted(BUILTIN_TOOLS.items()) if policy.allows(name))


def run_tool(name: str, arguments: dict[str, Any], policy: ToolPolicy) -> ToolResult:
    """Run one tool call under the policy; refusals and failures become results the model can read."""
    tool = BUILTIN_TOOLS.get(name)
    if tool is None:
        return ToolResult(False, error=f"tool '{name}' does not exist")
    if not policy.allows(name):
        return ToolResult(False, error=f"tool '{name}' is not allowed for this agent")
    try:
        return ToolResult(True, output=tool.run(arguments))
    except ToolFailure as exc:
        return ToolResult(False, error=str(exc))
