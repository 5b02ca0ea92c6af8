"""The one checker per kind of graph input, so every route, tool and plan refuses a bad value the same way."""

from __future__ import annotations

import math
import re
from typing import Any

from specai.errors import InvalidNodeTypeError, InvalidRequestError, UnprocessableError, VersionConflictError
from specai.graph.model import EDGE_TYPES, NODE_TYPES, GraphPlan
from specai.ids import MAX_ID, is_ascii_number

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_LABEL_LENGTH = 10_000
MAX_EDGE_TYPE_LENGTH = 64
_EDGE_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")


def check_node_type(value: Any) -> str:
    """The lower-cased node type, or InvalidNodeTypeError naming the valid ones."""
    kind = value.strip().lower() if isinstance(value, str) else value
    if kind not in NODE_TYPES:
        raise InvalidNodeTypeError(
            f"unknown node_type {value!r}; valid types: {', '.join(NODE_TYPES)}",
            details={"valid": list(NODE_TYPES)},
        )
    return str(kind)


def check_edge_type(value: Any) -> str:
    """The upper-cased edge type: a built-in one or a custom NAME of letters, digits and underscores."""
    kind = value.strip().upper() if isinstance(value, str) else None
    if not kind or len(kind) > MAX_EDGE_TYPE_LENGTH or not _EDGE_TYPE.fullmatch(kind):
        raise UnprocessableError(
            f"edge_type {value!r} must be a built-in type ({', '.join(EDGE_TYPES)}) or a custom name of letters, "
            f"digits and underscores starting with a letter, at most {MAX_EDGE_TYPE_LENGTH} characters",
            details={"builtin": list(EDGE_TYPES)},
        )
    return kind


def check_properties(value: Any, *, nullable: bool = False) -> dict[str, Any] | None:
    """A JSON object (or None where allowed)."""
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise UnprocessableError(f"properties must be a JSON object, got {_json_kind(value)}")
    return value


def check_weight(value: Any) -> float:
    """A number from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnprocessableError(f"weight must be a number from 0 to 1, got {value!r}")
    if not 0 <= value <= 1:
        raise UnprocessableError(f"weight must be from 0 to 1, got {value!r}")
    return float(value)


def check_label(value: Any) -> str:
    """A string of at most MAX_LABEL_LENGTH characters (empty is allowed, as in the original)."""
    if len(check_text(value, "label")) > MAX_LABEL_LENGTH:
        raise UnprocessableError(f"label is longer than {MAX_LABEL_LENGTH} characters")
    return value


def check_text(value: Any, name: str) -> str:
    """A string without NUL characters (PostgreSQL text cannot hold them)."""
    if not isinstance(value, str):
        raise UnprocessableError(f"{name} must be a string, got {_json_kind(value)}")
    if "\x00" in value:
        raise UnprocessableError(f"{name} must not contain NUL characters")
    return value


def check_limit(limit: int) -> int:
    """1 to MAX_LIMIT."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be from 1 to {MAX_LIMIT}, got {limit}")
    return limit


def parse_cursor(cursor: str | None) -> int | None:
    """A cursor from a previous page (the id to continue below), or InvalidRequestError."""
    if cursor is None or cursor == "":
        return None
    if not is_ascii_number(cursor) or len(cursor) > 19 or int(cursor) > MAX_ID:  # isdigit() takes "1²"
        raise InvalidRequestError(f"cursor {cursor!r} is not one this server returned")
    return int(cursor)


def check_version(kind: str, entity_id: int, current: int, expected: int | None) -> None:
    """VersionConflictError when the caller's `expected` version is not the stored one (None: no check)."""
    if expected is not None and expected != current:
        raise VersionConflictError(
            f"{kind} {entity_id} is at version {current}, not {expected}: it changed since you read it; "
            "read it again and retry",
            details={"current_version": current},
        )


def check_plan(plan: GraphPlan) -> None:
    """A plan is built by code, not users: a bad one is a bug, reported before anything is written."""
    keys = [planned.key for planned in plan.nodes]
    if len(set(keys)) != len(keys):
        raise ValueError("graph plan: node keys must be unique")
    if plan.root not in keys:
        raise ValueError(f"graph plan: root {plan.root!r} is not one of its nodes")
    for planned in plan.nodes:
        check_node_type(planned.node_type)
        check_label(planned.label)
        check_properties(planned.properties)
    for edge in plan.edges:
        if edge.source not in keys or edge.target not in keys:
            raise ValueError(
                f"graph plan: edge {edge.source!r} -> {edge.target!r} names a node it does not have"
            )


def _json_kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
