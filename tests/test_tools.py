"""Built-in tools and the tool policy: safe arithmetic without eval, time zones, full-match globs with deny winning."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from specai.agents.tools import (
    BUILTIN_TOOLS,
    ToolContext,
    ToolFailure,
    ToolPolicy,
    calculate,
    offered_tools,
    run_tool,
)
from specai.graph.store import GraphStore
from specai.store import Store
from specai.users.access import Principal


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("6*7", 42),
        ("(2+3)**2", 25),
        ("7/2", 3.5),
        ("7//2", 3),
        ("-7 % 3", 2),
        ("2**-1", 0.5),
        ("1.5e3+1", 1501.0),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, expected: float) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("__import__('os').system('id')", "only numbers"),
        ("open('/etc/passwd')", "only numbers"),
        ("x + 1", "only numbers"),
        ("[1, 2]", "only numbers"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("9**9**9", "exponent larger"),
        ("1/0", "division by zero"),
        ("10**99 * 10**99", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 201, "longer than"),
    ],
)
def test_calculator_refuses_anything_else(expression: str, problem: str) -> None:
    with pytest.raises(ToolFailure, match=problem):
        calculate(expression)


@pytest.mark.anyio
async def test_run_tool_calculator_result_is_json() -> None:
    result = await run_tool("calculator", {"expression": "6*7"}, ToolPolicy())
    assert result.success
    assert json.loads(result.output or "") == {"expression": "6*7", "result": 42}
    assert result.as_dict() == {"success": True, "output": result.output}


@pytest.mark.anyio
async def test_run_tool_reports_bad_arguments_to_the_model() -> None:
    result = await run_tool("calculator", {}, ToolPolicy())
    assert not result.success
    assert "expression" in (result.error or "")
    assert result.for_model().startswith("ERROR: ")


@pytest.mark.anyio
async def test_current_time_in_utc_and_a_zone() -> None:
    utc = json.loads((await run_tool("current_time", {}, ToolPolicy())).output or "")
    stamp = dt.datetime.fromisoformat(utc["iso"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 5
    paris = json.loads(
        (await run_tool("current_time", {"timezone": "Europe/Paris"}, ToolPolicy())).output or ""
    )
    assert paris["timezone"] == "Europe/Paris"
    bad = await run_tool("current_time", {"timezone": "Mars/Olympus"}, ToolPolicy())
    assert not bad.success
    assert "unknown time zone" in (bad.error or "")


@pytest.mark.anyio
async def test_unknown_tool_is_refused() -> None:
    result = await run_tool("shell", {"command": "id"}, ToolPolicy())
    assert result.as_dict() == {"success": False, "error": "tool 'shell' does not exist"}


@pytest.mark.parametrize(
    ("allowed", "denied", "name", "expected"),
    [
        (None, None, "calculator", True),
        (("calc*",), None, "calculator", True),
        (("calc",), None, "calculator", False),  # full match, not prefix
        (("*time",), None, "current_time", True),
        (("hello*world",), None, "xhello_world", False),  # the original's wildcard bug
        (("hello*world",), None, "hello_big_world", True),
        (None, ("current_*",), "current_time", False),
        (("*",), ("calculator",), "calculator", False),  # deny wins
        ((), None, "calculator", False),  # an empty allow-list allows nothing
    ],
)
def test_policy_full_match_globs_deny_wins(
    allowed: tuple[str, ...] | None, denied: tuple[str, ...] | None, name: str, expected: bool
) -> None:
    assert ToolPolicy(allowed, denied).allows(name) is expected


@pytest.mark.anyio
async def test_denied_tool_is_refused_and_not_offered() -> None:
    policy = ToolPolicy(denied=("calculator",))
    assert [tool.spec.name for tool in offered_tools(policy)] == ["current_time", "graph_add", "graph_search"]
    result = await run_tool("calculator", {"expression": "1+1"}, policy)
    assert result.as_dict() == {"success": False, "error": "tool 'calculator' is not allowed for this agent"}


def test_builtin_tools_are_only_the_safe_ones() -> None:
    assert set(BUILTIN_TOOLS) == {"calculator", "current_time", "graph_search", "graph_add"}
    for tool in BUILTIN_TOOLS.values():
        assert tool.spec.parameters["type"] == "object"


@pytest.mark.anyio
async def test_graph_tools_act_as_the_runs_user_on_the_runs_session(store: Store) -> None:
    graph = GraphStore(store)
    alice = Principal("u-alice", "alice", "user", "write")
    bob = Principal("u-bob", "bob", "user", "write")
    await graph.create_node("chat-1", "fact", "alice's note", who=alice)
    policy = ToolPolicy()
    for name, arguments in (
        ("graph_search", {"query": ""}),
        ("graph_add", {"node_type": "fact", "label": "x"}),
    ):
        denied = await run_tool(name, arguments, policy, ToolContext("chat-1", graph, bob))
        assert denied.as_dict() == {
            "success": False,
            "error": "this conversation has no knowledge graph you may use",
        }
    found = await run_tool("graph_search", {"query": "note"}, policy, ToolContext("chat-1", graph, alice))
    assert [n["label"] for n in json.loads(found.output or "")["nodes"]] == ["alice's note"]
    assert [n.label for n in (await graph.list_nodes("chat-1")).items] == [
        "alice's note"
    ]  # bob added nothing
    # a run without a principal gets no graph tools at all
    assert not BUILTIN_TOOLS["graph_add"].usable(ToolContext("chat-1", graph, None))
    # a new session is claimed for the run's user by its first graph tool call
    assert (await run_tool("graph_search", {"query": ""}, policy, ToolContext("chat-2", graph, bob))).success
    assert [(e.session_id, e.access) for e in await graph.sessions(bob)] == [("chat-2", "owner")]
