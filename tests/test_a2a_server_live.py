"""Issue 14's A2A acceptance against a real `specai server` process (TLS, auth on, users alice and bob) whose agent
talks to a fake OpenAI upstream on loopback: a2a-sdk's own client, pinned to the server's certificate, resolves
the card, sends (whole and streamed), gets and lists tasks and cancels a slow one (the upstream sees the request
go); no token is 401, Bob cannot get Alice's task, v0.3 method names work, and `specai query --a2a` gets an
answer from this server acting as an A2A agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.client.errors import A2AClientError
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError
from databases import pg_admin
from live import PASSWORD, ServerProcess, add_user, make_home, run_cli

from fakes import DEFAULT_TOKENS, FakeOpenAI, Turn
from specai.identity.fingerprint import TLS_FINGERPRINT_EXTENSION
from specai.identity.tls import pinned_ssl_context

pytestmark = [pytest.mark.live, pytest.mark.anyio]

REPLY = "".join(DEFAULT_TOKENS)
SLOW = tuple(f" w{i}" for i in range(200))
CONFIG = """\
default_agent = "oa"

[auth]
enabled = true

[agents.oa]
model_provider = "openai"
model_name = "gpt-fake"
base_url = "@OPENAI@"
api_key_source = "sk-test"

[agents.poet]
model_provider = "mock"
mock_script = [{text = "roses are red"}]
"""


@dataclass
class Live:
    proc: ServerProcess
    fake: FakeOpenAI
    tokens: dict[str, str]

    def script(
        self, tokens: Sequence[str] = DEFAULT_TOKENS, delay: float = 0.0, status: int | None = None
    ) -> FakeOpenAI:
        """A new script for the fake, and forget what it saw."""
        fake = self.fake
        fake.status = status
        with fake._lock:
            fake.turns = [Turn(tokens=tuple(tokens))]
            fake._chats = 0
            fake.requests.clear()
            fake.completed = 0
            fake.disconnects = 0
        fake.delay = delay
        fake.finished.clear()
        fake.disconnected.clear()
        return fake

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            verify=pinned_ssl_context(self.proc.der()), headers=headers, timeout=httpx.Timeout(30, read=None)
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    fake = FakeOpenAI().start()
    proc: ServerProcess | None = None
    try:
        proc = start_server(make_home(tmp_path_factory.mktemp("a2a-server")), fake)
        yield Live(proc, fake, {name: proc.login(name, PASSWORD) for name in ("alice", "bob")})
    finally:
        if proc is not None:
            proc.stop()
        fake.stop()
    assert "Traceback" not in proc.text(), proc.text()


def start_server(home: Path, fake: FakeOpenAI) -> ServerProcess:
    add_user(home, "alice")
    add_user(home, "bob")
    (home / "spec-ai.config.toml").write_text(CONFIG.replace("@OPENAI@", fake.base_url))
    proc = ServerProcess(home)
    proc.env.pop("OPENAI_API_KEY", None)
    return proc.start()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def resolve(live: Live) -> AgentCard:
    async with live.http() as http:  # the card is public: no token
        return await A2ACardResolver(http, live.proc.url).get_agent_card()


@asynccontextmanager
async def sdk_client(live: Live, user: str = "alice", *, streaming: bool = True) -> AsyncIterator[Client]:
    """a2a-sdk's client for the card this server serves, pinned, with `user`'s token."""
    card = await resolve(live)
    async with live.http(live.tokens[user]) as http:
        config = ClientConfig(streaming=streaming, httpx_client=http, supported_protocol_bindings=["JSONRPC"])
        client = ClientFactory(config).create(card)
        yield client


def request(text: str, **metadata: Any) -> SendMessageRequest:
    message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])
    if metadata:
        message.metadata.update(metadata)
    return SendMessageRequest(message=message)


def text_of(responses: list[StreamResponse]) -> str:
    pieces = []
    for response in responses:
        if response.HasField("artifact_update"):
            pieces += [p.text for p in response.artifact_update.artifact.parts]
    return "".join(pieces)


async def test_card_send_get_and_list(live: Live) -> None:
    live.script()
    card = await resolve(live)
    assert card.name == "specai"
    assert [s.id for s in card.skills] == ["oa", "poet"]
    assert card.supported_interfaces[0].url == f"{live.proc.url}/a2a"
    assert card.capabilities.streaming
    extension = next(e for e in card.capabilities.extensions if e.uri == TLS_FINGERPRINT_EXTENSION)
    assert dict(extension.params.items())["sha256"] == live.proc.fingerprint
    async with sdk_client(live, streaming=False) as client:
        responses = [r async for r in client.send_message(request("hi"))]
        assert len(responses) == 1
        task = responses[0].task
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert "".join(p.text for a in task.artifacts for p in a.parts) == REPLY
        assert live.fake.last_body["messages"][-1] == {"role": "user", "content": "hi"}
        got = await client.get_task(GetTaskRequest(id=task.id))
        assert got.id == task.id
        assert got.status.state == TaskState.TASK_STATE_COMPLETED
        listed = await client.list_tasks(ListTasksRequest())
        assert task.id in [t.id for t in listed.tasks]


async def test_streaming_send_yields_updates_before_the_end(live: Live) -> None:
    live.script(delay=0.05)
    async with sdk_client(live) as client:
        arrivals: list[tuple[float, StreamResponse]] = []
        async for response in client.send_message(request("stream please")):
            arrivals.append((time.monotonic(), response))
    responses = [r for _, r in arrivals]
    updates = [r for r in responses if r.HasField("artifact_update")]
    assert len(updates) >= 3  # a token every 50 ms: (about) an update each
    assert text_of(responses) == REPLY
    final = responses[-1]
    assert final.HasField("status_update")
    assert final.status_update.status.state == TaskState.TASK_STATE_COMPLETED
    spread = arrivals[-1][0] - next(t for t, r in arrivals if r.HasField("artifact_update"))
    assert spread >= 0.15  # the updates came as the tokens did, not all at once at the end


async def test_cancel_stops_the_upstream_call(live: Live) -> None:
    fake = live.script(SLOW, delay=0.05)  # 10 s unless cancelled
    async with sdk_client(live) as streaming, sdk_client(live, streaming=False) as other:
        seen: list[StreamResponse] = []
        task_id = ""
        canceled = None
        async for response in streaming.send_message(request("count slowly")):
            seen.append(response)
            if response.HasField("task"):
                task_id = response.task.id
            if len([r for r in seen if r.HasField("artifact_update")]) == 3 and canceled is None:
                canceled = await other.cancel_task(CancelTaskRequest(id=task_id))
        assert canceled is not None
        assert canceled.status.state == TaskState.TASK_STATE_CANCELED
        assert fake.wait_disconnect(3.0), "the upstream never saw the request being cancelled"
        assert not fake.finished.is_set()
        assert fake.completed == 0
        stored = await other.get_task(GetTaskRequest(id=task_id))
        assert stored.status.state == TaskState.TASK_STATE_CANCELED
        last = seen[-1]
        assert last.HasField("status_update")
        assert last.status_update.status.state == TaskState.TASK_STATE_CANCELED


async def test_subscribe_to_a_running_task(live: Live) -> None:
    tokens = tuple(f" t{i}" for i in range(20))
    live.script(tokens, delay=0.05)
    async with sdk_client(live) as sender, sdk_client(live) as watcher, sdk_client(live, "bob") as bob:
        sent: list[StreamResponse] = []
        watched: list[StreamResponse] = []
        subscribed = asyncio.Event()

        async def watch(task_id: str) -> None:
            async for response in watcher.subscribe(SubscribeToTaskRequest(id=task_id)):
                watched.append(response)
                subscribed.set()

        watching: asyncio.Task[None] | None = None
        async for response in sender.send_message(request("count")):
            sent.append(response)
            if response.HasField("artifact_update") and watching is None:
                task_id = response.artifact_update.task_id
                with pytest.raises(TaskNotFoundError):
                    async for _ in bob.subscribe(SubscribeToTaskRequest(id=task_id)):
                        pass
                watching = asyncio.ensure_future(watch(task_id))
                await asyncio.wait_for(subscribed.wait(), 5)
        assert watching is not None
        await asyncio.wait_for(watching, 10)
    assert text_of(sent) == "".join(tokens)
    assert watched[0].HasField("task")  # the task as it stood, then what came after
    snapshot = "".join(p.text for a in watched[0].task.artifacts for p in a.parts)
    rest, whole = text_of(watched[1:]), "".join(tokens)
    # nothing is missed at the seam (a chunk the snapshot already holds may come again: the SDK's own race)
    assert whole.startswith(snapshot)
    assert whole.endswith(rest)
    assert len(snapshot) + len(rest) >= len(whole)
    assert len([r for r in watched if r.HasField("artifact_update")]) >= 5
    last = watched[-1]
    assert last.HasField("status_update")
    assert last.status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_an_upstream_failure_fails_the_task(live: Live) -> None:
    live.script(status=500)
    try:
        async with sdk_client(live) as client:
            responses = [r async for r in client.send_message(request("hi"))]
    finally:
        live.script()
    final = responses[-1]
    assert final.HasField("status_update")
    status = final.status_update.status
    assert status.state == TaskState.TASK_STATE_FAILED
    assert status.message.metadata["code"] == "upstream_error"
    assert status.message.parts[0].text
    assert "sk-test" not in str(status)


async def test_no_token_is_401(live: Live) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {}}
    async with live.http() as http:
        response = await http.post(f"{live.proc.url}/a2a", json=body, headers={"A2A-Version": "1.0"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    card = await resolve(live)
    async with live.http() as http:
        config = ClientConfig(streaming=False, httpx_client=http, supported_protocol_bindings=["JSONRPC"])
        client = ClientFactory(config).create(card)
        with pytest.raises(A2AClientError, match="HTTP Error 401") as caught:
            [r async for r in client.send_message(request("hi"))]
    cause = caught.value.__cause__
    assert isinstance(cause, httpx.HTTPStatusError)
    assert cause.response.json()["code"] == "unauthorized"


async def test_bob_cannot_get_alices_task(live: Live) -> None:
    live.script()
    async with sdk_client(live, streaming=False) as alice:
        (sent,) = [r async for r in alice.send_message(request("mine"))]
        task = sent.task
    async with sdk_client(live, "bob", streaming=False) as bob:
        with pytest.raises(TaskNotFoundError):
            await bob.get_task(GetTaskRequest(id=task.id))
        with pytest.raises(TaskNotFoundError):
            await bob.cancel_task(CancelTaskRequest(id=task.id))
        listed = await bob.list_tasks(ListTasksRequest())
        assert task.id not in [t.id for t in listed.tasks]


async def test_v03_requests(live: Live) -> None:
    live.script()
    message = {
        "messageId": "old-1",
        "role": "user",
        "kind": "message",
        "parts": [{"kind": "text", "text": "hi"}],
    }
    async with live.http(live.tokens["alice"]) as http:
        sent = await http.post(
            f"{live.proc.url}/a2a",
            json={"jsonrpc": "2.0", "id": "a", "method": "message/send", "params": {"message": message}},
        )
        assert sent.status_code == 200, sent.text
        task = sent.json()["result"]
        assert task["kind"] == "task"
        assert task["status"]["state"] == "completed"
        got = await http.post(
            f"{live.proc.url}/a2a",
            json={"jsonrpc": "2.0", "id": "b", "method": "tasks/get", "params": {"id": task["id"]}},
        )
    result = got.json()["result"]
    assert "".join(p["text"] for a in result["artifacts"] for p in a["parts"]) == REPLY


async def test_specai_query_a2a_against_this_server(live: Live, tmp_path: Path) -> None:
    live.script()
    client_home = make_home(tmp_path, "client")
    result = await asyncio.to_thread(
        run_cli,
        client_home,
        *("query", "--a2a", live.proc.url, "hi there", "--fingerprint", live.proc.fingerprint),
        SPECAI_TOKEN=live.tokens["alice"],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == REPLY + "\n"
    assert live.fake.last_body["messages"][-1]["content"] == "hi there"
    pins = json.loads((client_home / "known_servers.json").read_text())
    assert pins[live.proc.url] == live.proc.fingerprint
    poet = await asyncio.to_thread(
        run_cli,
        client_home,
        *("query", "--a2a", live.proc.url, "a poem", "--agent", "poet", "--no-stream"),
        SPECAI_TOKEN=live.tokens["alice"],
    )
    assert poet.returncode == 0, poet.stderr
    assert (
        poet.stdout == "roses are red\n"
    )  # the skill named by --agent answered (metadata {"agent": "poet"})
    unknown = await asyncio.to_thread(
        run_cli,
        client_home,
        *("a2a", "send", live.proc.url, "hi", "--agent", "nobody"),
        SPECAI_TOKEN=live.tokens["alice"],
    )
    assert unknown.returncode == 1
    assert "nobody" in unknown.stderr


async def test_sigterm_ends_open_a2a_streams(tmp_path: Path) -> None:
    with FakeOpenAI(tokens=SLOW, delay=0.05) as fake:
        home = make_home(tmp_path)
        proc = start_server(home, fake)
        try:
            live = Live(proc, fake, {"alice": proc.login("alice", PASSWORD)})
            seen: list[StreamResponse] = []
            elapsed = None
            async with sdk_client(live) as client:
                with contextlib.suppress(A2AClientError):  # should the connection go before the last event
                    async for response in client.send_message(request("count slowly")):
                        seen.append(response)
                        chunks = [r for r in seen if r.HasField("artifact_update")]
                        if response.HasField("artifact_update") and len(chunks) == 3:
                            elapsed = await asyncio.to_thread(proc.stop)
            assert elapsed is not None
            assert elapsed < 5, f"the server took {elapsed:.1f} s to stop"
            assert fake.wait_disconnect(3.0)
            assert fake.completed == 0
            last = seen[-1]
            assert last.HasField("status_update"), last
            assert last.status_update.status.state == TaskState.TASK_STATE_FAILED
            assert last.status_update.status.message.metadata["code"] == "shutting_down"
            task_id = seen[0].task.id
            proc = ServerProcess(home).start()  # the task was stored as failed
            live = Live(proc, fake, {"alice": proc.login("alice", PASSWORD)})
            async with sdk_client(live, streaming=False) as again:
                stored = await again.get_task(GetTaskRequest(id=task_id))
            assert stored.status.state == TaskState.TASK_STATE_FAILED
            assert "".join(p.text for a in stored.artifacts for p in a.parts).startswith(" w0 w1 w2")
        finally:
            proc.stop()


async def test_cancel_from_another_server_on_one_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Two servers sharing one PostgreSQL database (as `--workers 2` or two hosts do): A runs the task, B cancels
    it; A stops the run (and its upstream call) at its next chunk, and its stream ends canceled."""
    await pg_admin(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    with FakeOpenAI(tokens=SLOW, delay=0.05) as fake:
        config = CONFIG.replace("@OPENAI@", fake.base_url) + f'\n[database]\nurl = "{pg_url}"\n'
        homes = [make_home(tmp_path, name) for name in ("a", "b")]
        for home in homes:
            (home / "spec-ai.config.toml").write_text(config)
        add_user(homes[0], "alice")
        servers = [ServerProcess(home).start() for home in homes]
        try:
            token = servers[0].login("alice", PASSWORD)
            a, b = (Live(server, fake, {"alice": token}) for server in servers)
            seen: list[StreamResponse] = []
            watched: list[StreamResponse] = []
            watching: asyncio.Task[None] | None = None
            async with (
                sdk_client(a) as streaming,
                sdk_client(b, streaming=False) as other,
                sdk_client(b) as watcher,
            ):

                async def watch(task_id: str) -> None:
                    async for response in watcher.subscribe(SubscribeToTaskRequest(id=task_id)):
                        watched.append(response)

                async for response in streaming.send_message(request("count slowly")):
                    seen.append(response)
                    chunks = [r for r in seen if r.HasField("artifact_update")]
                    if response.HasField("artifact_update") and len(chunks) == 1:
                        watching = asyncio.ensure_future(watch(response.artifact_update.task_id))
                        await asyncio.sleep(0.3)  # B sees the task running on A
                    if response.HasField("artifact_update") and len(chunks) == 3:
                        task_id = response.artifact_update.task_id
                        canceled = await other.cancel_task(CancelTaskRequest(id=task_id))
                        assert canceled.status.state == TaskState.TASK_STATE_CANCELED
                        at = time.monotonic()
                assert time.monotonic() - at < 2
                assert fake.wait_disconnect(3.0), "the upstream never saw the request being cancelled"
                assert fake.completed == 0
                final = seen[-1]
                state = (
                    final.task.status.state if final.HasField("task") else final.status_update.status.state
                )
                assert state == TaskState.TASK_STATE_CANCELED
                for client in (streaming, other):
                    stored = await client.get_task(GetTaskRequest(id=task_id))
                    assert stored.status.state == TaskState.TASK_STATE_CANCELED
                assert watching is not None
                await asyncio.wait_for(watching, 5)  # B's subscription to A's task ends with it
                assert watched[0].task.status.state == TaskState.TASK_STATE_WORKING
                assert watched[-1].task.status.state == TaskState.TASK_STATE_CANCELED
        finally:
            for server in servers:
                server.stop()
        for server in servers:
            assert "Traceback" not in server.text(), server.text()
