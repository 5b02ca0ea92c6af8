"""Sessions on real SQLite and PostgreSQL: creation, history windows, ownership, listing, deletion, atomic appends."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from specai.agents.sessions import (
    NewMessage,
    Session,
    SessionStore,
    StoredMessage,
    check_session_id,
    new_session_id,
)
from specai.config import Settings
from specai.errors import InvalidRequestError, NotFoundError
from specai.store import Store
from specai.store.schema import messages as messages_table

# The engine fixtures of conftest.py: every test runs on SQLite and on PostgreSQL.

pytestmark = pytest.mark.anyio


@pytest.fixture
def sessions(store: Store) -> SessionStore:
    return SessionStore(store)


def turn(n: int, *, tool: bool = False) -> list[NewMessage]:
    """One exchange: the user's message, optionally a tool round trip, then the answer."""
    batch = [NewMessage("user", f"question {n}")]
    if tool:
        call = {"id": f"call-{n}", "name": "calculator", "arguments": {"expression": "6*7"}}
        batch += [
            NewMessage("assistant", "", tool_calls=[call]),
            NewMessage("tool", "42", tool_call_id=f"call-{n}", name="calculator"),
        ]
    return [*batch, NewMessage("assistant", f"answer {n}")]


def contents(found: list[StoredMessage]) -> list[str]:
    return [m.content for m in found]


def bypass_validation(message: NewMessage, **changes: object) -> NewMessage:
    """A message the database itself must reject (simulates a failure in the middle of an append)."""
    for key, value in changes.items():
        object.__setattr__(message, key, value)
    return message


async def stored_message_rows(store: Store, session_id: str) -> int:
    async with store.connect() as conn:
        query = (
            select(func.count()).select_from(messages_table).where(messages_table.c.session_id == session_id)
        )
        return int(await conn.scalar(query) or 0)


# --- append and read ------------------------------------------------------------------------------------------


async def test_append_creates_the_session(sessions: SessionStore) -> None:
    before = dt.datetime.now(dt.UTC)
    created = await sessions.append("s1", "alice", "coder", turn(1))
    assert isinstance(created, Session)
    assert (created.id, created.owner, created.agent, created.message_count) == ("s1", "alice", "coder", 2)
    assert created.created_at == created.updated_at
    assert before <= created.created_at <= dt.datetime.now(dt.UTC)
    assert await sessions.get("s1", "alice") == created
    assert await sessions.owner_of("s1") == "alice"


async def test_append_to_an_existing_session_adds_messages_and_bumps_updated_at(
    sessions: SessionStore,
) -> None:
    first = await sessions.append("s1", "alice", "coder", turn(1))
    second = await sessions.append("s1", "alice", "other-agent", turn(2, tool=True))
    assert second.message_count == 6
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert second.agent == "coder"  # the agent that started the session
    assert contents(await sessions.messages("s1", "alice")) == [
        "question 1",
        "answer 1",
        "question 2",
        "",
        "42",
        "answer 2",
    ]


async def test_messages_keep_every_field(sessions: SessionStore) -> None:
    await sessions.append("s1", "alice", "coder", turn(1, tool=True))
    found = await sessions.messages("s1", "alice")
    assert [m.role for m in found] == ["user", "assistant", "tool", "assistant"]
    call = found[1]
    assert call.tool_calls == [{"id": "call-1", "name": "calculator", "arguments": {"expression": "6*7"}}]
    assert (call.tool_call_id, call.name) == (None, None)
    result = found[2]
    assert (result.tool_calls, result.tool_call_id, result.name) == (None, "call-1", "calculator")
    assert all(m.session_id == "s1" for m in found)
    assert [m.id for m in found] == sorted(m.id for m in found)
    for message in found:
        assert message.created_at.tzinfo is not None
        assert message.created_at.utcoffset() == dt.timedelta(0)


async def test_append_with_no_messages_creates_an_empty_session(sessions: SessionStore) -> None:
    created = await sessions.append("empty", "alice", "coder", [])
    assert created.message_count == 0
    assert await sessions.messages("empty", "alice") == []


async def test_unicode_and_large_content_round_trip(sessions: SessionStore) -> None:
    text = "Grüße 👋 — " + "x" * 200_000
    await sessions.append("s1", "alice", "coder", [NewMessage("user", text)])
    assert contents(await sessions.messages("s1", "alice")) == [text]


# --- history windows -----------------------------------------------------------------------------------------


async def test_history_returns_the_last_exchanges_with_their_tool_messages(sessions: SessionStore) -> None:
    await sessions.append("s1", "alice", "coder", turn(1))
    await sessions.append("s1", "alice", "coder", turn(2, tool=True))
    await sessions.append("s1", "alice", "coder", turn(3))

    assert contents(await sessions.history("s1", "alice", 1)) == ["question 3", "answer 3"]
    assert contents(await sessions.history("s1", "alice", 2)) == [
        "question 2",
        "",
        "42",
        "answer 2",
        "question 3",
        "answer 3",
    ]
    everything = contents(await sessions.messages("s1", "alice"))
    assert contents(await sessions.history("s1", "alice", 3)) == everything
    assert contents(await sessions.history("s1", "alice", 10)) == everything


async def test_history_counts_user_turns_not_appends(sessions: SessionStore) -> None:
    await sessions.append("s1", "alice", "coder", [*turn(1), *turn(2)])
    assert contents(await sessions.history("s1", "alice", 1)) == ["question 2", "answer 2"]


async def test_history_edge_cases(sessions: SessionStore) -> None:
    await sessions.append("s1", "alice", "coder", turn(1))
    assert await sessions.history("s1", "alice", 0) == []
    assert await sessions.history("never-created", "alice", 5) == []
    with pytest.raises(InvalidRequestError, match="0 or more"):
        await sessions.history("s1", "alice", -1)


async def test_history_is_isolated_per_session(sessions: SessionStore) -> None:
    await sessions.append("a", "alice", "coder", turn(1))
    await sessions.append("b", "alice", "coder", turn(2))
    await sessions.append("a", "alice", "coder", turn(3))
    assert contents(await sessions.history("a", "alice", 5)) == [
        "question 1",
        "answer 1",
        "question 3",
        "answer 3",
    ]
    assert contents(await sessions.history("b", "alice", 5)) == ["question 2", "answer 2"]


# --- ownership ------------------------------------------------------------------------------------------------


async def test_another_owner_cannot_see_or_touch_a_session(sessions: SessionStore, store: Store) -> None:
    await sessions.append("s1", "alice", "coder", turn(1))
    with pytest.raises(NotFoundError) as missing:
        await sessions.get("nope", "bob")
    expected_shape = str(missing.value).replace("nope", "s1")

    for attempt in (
        sessions.get("s1", "bob"),
        sessions.messages("s1", "bob"),
        sessions.history("s1", "bob", 10),
        sessions.history("s1", "bob", 0),
        sessions.delete("s1", "bob"),
        sessions.append("s1", "bob", "coder", turn(9)),
    ):
        with pytest.raises(NotFoundError) as caught:
            await attempt
        assert str(caught.value) == expected_shape == "no session 's1'"  # same answer as a missing session
        assert caught.value.status == 404

    assert await sessions.list("bob") == []
    assert await sessions.owner_of("s1") == "alice"  # bob's attempts changed nothing
    still = await sessions.get("s1", "alice")
    assert still.message_count == 2
    assert await stored_message_rows(store, "s1") == 2


async def test_missing_session_is_not_found(sessions: SessionStore) -> None:
    for attempt in (
        sessions.get("ghost", "alice"),
        sessions.messages("ghost", "alice"),
        sessions.delete("ghost", "alice"),
    ):
        with pytest.raises(NotFoundError, match="no session 'ghost'"):
            await attempt
    assert await sessions.owner_of("ghost") is None


# --- list, delete, count ---------------------------------------------------------------------------------------


async def test_list_is_per_owner_and_newest_first(sessions: SessionStore) -> None:
    for name in ("one", "two", "three"):
        await sessions.append(name, "alice", "coder", turn(1))
    await sessions.append("bobs", "bob", "coder", turn(1))
    await sessions.append("one", "alice", "coder", turn(2))  # most recently used again

    listed = await sessions.list("alice")
    assert [s.id for s in listed] == ["one", "three", "two"]
    assert [s.message_count for s in listed] == [4, 2, 2]
    assert all(s.owner == "alice" for s in listed)
    assert [s.id for s in await sessions.list("alice", limit=2)] == ["one", "three"]
    assert [s.id for s in await sessions.list("bob")] == ["bobs"]
    assert await sessions.list("carol") == []
    with pytest.raises(InvalidRequestError, match="at least 1"):
        await sessions.list("alice", limit=0)


async def test_delete_removes_the_session_and_its_messages(sessions: SessionStore, store: Store) -> None:
    await sessions.append("gone", "alice", "coder", turn(1, tool=True))
    await sessions.append("kept", "alice", "coder", turn(2))
    await sessions.delete("gone", "alice")
    with pytest.raises(NotFoundError):
        await sessions.get("gone", "alice")
    assert await stored_message_rows(store, "gone") == 0
    assert await stored_message_rows(store, "kept") == 2
    assert await sessions.history("gone", "alice", 5) == []
    with pytest.raises(NotFoundError):
        await sessions.delete("gone", "alice")
    recreated = await sessions.append("gone", "bob", "coder", turn(3))  # the id is free again
    assert (recreated.owner, recreated.message_count) == ("bob", 2)


async def test_count_counts_every_owners_sessions(sessions: SessionStore) -> None:
    assert await sessions.count() == 0
    await sessions.append("a", "alice", "coder", turn(1))
    await sessions.append("a", "alice", "coder", turn(2))
    await sessions.append("b", "bob", "coder", turn(1))
    assert await sessions.count() == 2
    await sessions.delete("a", "alice")
    assert await sessions.count() == 1


# --- atomicity and validation ------------------------------------------------------------------------------------


async def test_failed_append_to_a_new_session_stores_nothing(sessions: SessionStore, store: Store) -> None:
    batch = [NewMessage("user", "question"), bypass_validation(NewMessage("assistant", "x"), role="robot")]
    with pytest.raises(IntegrityError):
        await sessions.append("s1", "alice", "coder", batch)
    assert await sessions.owner_of("s1") is None
    assert await sessions.count() == 0
    assert await stored_message_rows(store, "s1") == 0


async def test_failed_append_to_an_existing_session_changes_nothing(sessions: SessionStore) -> None:
    before = await sessions.append("s1", "alice", "coder", turn(1))
    bad = bypass_validation(NewMessage("assistant", "x"), content=None)
    with pytest.raises(IntegrityError):
        await sessions.append("s1", "alice", "coder", [NewMessage("user", "orphan?"), bad])
    assert await sessions.get("s1", "alice") == before
    assert "orphan?" not in contents(await sessions.messages("s1", "alice"))


async def test_refused_append_by_another_owner_stores_nothing(sessions: SessionStore, store: Store) -> None:
    before = await sessions.append("s1", "alice", "coder", turn(1))
    with pytest.raises(NotFoundError):
        await sessions.append("s1", "bob", "coder", turn(2))
    assert await sessions.get("s1", "alice") == before
    assert await stored_message_rows(store, "s1") == 2


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"role": "robot", "content": "x"}, "role 'robot' must be one of system, user, assistant, tool"),
        ({"role": "user", "content": None}, "content must be a string"),
        (
            {"role": "assistant", "content": "", "tool_calls": {"id": "1"}},
            "tool_calls must be a list of objects",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": ["call"]},
            "tool_calls must be a list of objects",
        ),
    ],
)
def test_new_message_refuses_bad_fields(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidRequestError, match=problem):
        NewMessage(**kwargs)  # type: ignore[arg-type]


async def test_append_refuses_bad_session_ids_and_non_messages(sessions: SessionStore) -> None:
    for bad_id in ("", "x" * 129):
        with pytest.raises(InvalidRequestError, match="1 to 128 characters"):
            await sessions.append(bad_id, "alice", "coder", turn(1))
    with pytest.raises(InvalidRequestError, match="NewMessage"):
        await sessions.append("s1", "alice", "coder", [{"role": "user", "content": "hi"}])  # type: ignore[list-item]
    assert await sessions.count() == 0
    longest = "x" * 128
    assert (await sessions.append(longest, "alice", "coder", turn(1))).id == longest


def test_session_id_helpers() -> None:
    first, second = new_session_id(), new_session_id()
    assert first != second
    assert check_session_id(first) == first
    assert len(first) == 36


# --- concurrency ------------------------------------------------------------------------------------------------


async def test_concurrent_appends_to_one_session_never_interleave(sessions: SessionStore) -> None:
    await asyncio.gather(
        *(sessions.append("shared", "alice", "coder", turn(n, tool=True)) for n in range(12))
    )
    found = contents(await sessions.messages("shared", "alice"))
    assert len(found) == 48
    for start in range(0, 48, 4):
        n = found[start].removeprefix("question ")
        assert found[start : start + 4] == [f"question {n}", "", "42", f"answer {n}"]
    assert (await sessions.get("shared", "alice")).message_count == 48


async def test_concurrent_first_appends_create_the_session_once(sessions: SessionStore) -> None:
    results = await asyncio.gather(
        *(sessions.append("race", "alice", "coder", turn(n)) for n in range(8)), return_exceptions=True
    )
    assert not [r for r in results if isinstance(r, BaseException)]
    assert await sessions.count() == 1
    assert (await sessions.get("race", "alice")).message_count == 16


async def test_two_stores_on_one_database_append_concurrently(store: Store, db_settings: Settings) -> None:
    async with await Store.open(db_settings) as other:
        here, there = SessionStore(store), SessionStore(other)
        await asyncio.gather(
            *(here.append(f"h{n}", "alice", "coder", turn(n)) for n in range(10)),
            *(there.append(f"t{n}", "alice", "coder", turn(n)) for n in range(10)),
        )
        assert await here.count() == 20
        assert len(await there.list("alice")) == 20
