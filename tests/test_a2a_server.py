"""The A2A server in-process on both engines: the public card, the JSON-RPC endpoint behind bearer auth (a2a-sdk's
dispatcher, 1.0 and 0.3 method names), tasks stored per owner (Bob never sees Alice's), agent selection by
metadata, contexts continuing sessions, push notifications refused; and the task store itself."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from a2a.server.context import ServerCallContext
from a2a.types import ListTasksRequest, Task, TaskState
from databases import seed_users
from litestar.testing import TestClient

from helpers import assert_error
from specai.agents.a2a_tasks import SpecaiUser, StoredTasks
from specai.config import A2ASettings, AgentSettings, AuthSettings, ModelSettings, Settings
from specai.identity.fingerprint import TLS_FINGERPRINT_EXTENSION
from specai.identity.tls import ensure_server_cert, read_cert
from specai.server.app import create_app
from specai.store import Store
from specai.users import directory as users
from specai.users.access import Principal

SECRET = "a" * 40
PASSWORD = "pw-one-two"
MOCK_TEXT = "This is a mock response from the test provider."
POEM = "roses are red"
V1 = {"A2A-Version": "1.0"}
AGENTS = {
    "default": AgentSettings(),
    "poet": AgentSettings(prompt="secret prompt", mock_script=[{"text": POEM}]),
    "calc": AgentSettings(
        mock_script=[
            {"tool_call": {"name": "calculator", "arguments": {"expression": "6*7"}}},
            {"text": "42"},
        ]
    ),
}


def make_settings(db_settings: Settings, **changes: Any) -> Settings:
    path = db_settings.home / "credentials.json"
    for name in ("alice", "bob"):
        users.add_user(path, name, PASSWORD)
    settings = dataclasses.replace(
        db_settings,
        auth=AuthSettings(enabled=True, credentials_file=path, token_secret=SECRET),
        agents=AGENTS,
        **changes,
    )
    seed_users(settings)
    return settings


@pytest.fixture
def settings(db_settings: Settings) -> Settings:
    return make_settings(db_settings)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    app = create_app(settings, cert=read_cert(ensure_server_cert(settings).cert))
    with TestClient(app) as test_client:
        yield test_client


def login(client: TestClient[Any], name: str) -> dict[str, str]:
    response = client.post("/auth/token", json={"username": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}", **V1}


def message(text: str, **fields: Any) -> dict[str, Any]:
    return {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": text}], **fields}


def rpc(
    client: TestClient[Any], headers: dict[str, str], method: str, params: dict[str, Any]
) -> dict[str, Any]:
    """One JSON-RPC call; the whole response object (result or error)."""
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    response = client.post("/a2a", json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["jsonrpc"] == "2.0"
    assert answer["id"] == 7
    return answer


def send(client: TestClient[Any], headers: dict[str, str], text: str, **fields: Any) -> dict[str, Any]:
    """SendMessage; the task it made (completed)."""
    answer = rpc(client, headers, "SendMessage", {"message": message(text, **fields)})
    assert "result" in answer, answer
    task: dict[str, Any] = answer["result"]["task"]
    return task


def error_code(answer: dict[str, Any]) -> int:
    assert "error" in answer, answer
    assert isinstance(answer["error"]["message"], str)
    return int(answer["error"]["code"])


def answer_text(task: dict[str, Any]) -> str:
    return "".join(
        part.get("text", "") for artifact in task.get("artifacts", []) for part in artifact["parts"]
    )


# --- the card --------------------------------------------------------------------------------------------------


def test_card_is_public_and_describes_the_server(client: TestClient[Any], settings: Settings) -> None:
    response = client.get("/.well-known/agent-card.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    card = response.json()
    assert card["name"] == "specai"
    assert [s["id"] for s in card["skills"]] == ["calc", "default", "poet"]
    assert "default" in card["skills"][1]["tags"]
    assert "secret prompt" not in response.text  # the prompt is not published
    interfaces = card["supportedInterfaces"]
    assert [(i["protocolBinding"], i["protocolVersion"]) for i in interfaces] == [
        ("JSONRPC", "1.0"),
        ("JSONRPC", "0.3"),
    ]
    assert {i["url"] for i in interfaces} == {"https://testserver.local/a2a"}
    assert card["url"] == "https://testserver.local/a2a"  # the v0.3 fields too
    assert card["capabilities"]["streaming"] is True
    assert card["capabilities"]["pushNotifications"] is False
    cert = read_cert(ensure_server_cert(settings).cert)
    extension = card["capabilities"]["extensions"][0]
    assert extension["uri"] == TLS_FINGERPRINT_EXTENSION
    assert extension["params"] == {"sha256": cert.fingerprint}
    scheme = card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]
    assert scheme["scheme"] == "Bearer"
    assert scheme["bearerFormat"] == "JWT"
    key = card["securitySchemes"]["apiKey"]["httpAuthSecurityScheme"]  # API keys travel as bearer tokens too
    assert key["scheme"] == "Bearer"
    assert "API key" in key["description"]
    # either one will do (each requirement is an alternative)
    assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}, {"schemes": {"apiKey": {}}}]


def test_card_is_also_beside_the_endpoint(client: TestClient[Any]) -> None:
    response = client.get("/a2a/.well-known/agent-card.json")
    assert response.status_code == 200
    assert response.json() == client.get("/.well-known/agent-card.json").json()


def test_card_parses_with_the_sdk_and_follows_the_host(client: TestClient[Any]) -> None:
    from a2a.client.card_resolver import parse_agent_card

    response = client.get("/.well-known/agent-card.json", headers={"Host": "agents.example.net:8443"})
    card = parse_agent_card(response.json())
    assert card.supported_interfaces[0].url == "https://agents.example.net:8443/a2a"
    odd = client.get("/.well-known/agent-card.json", headers={"Host": "a_b@evil.example"})
    assert odd.status_code == 200, odd.text
    assert odd.json()["supportedInterfaces"][0]["url"] == "https://127.0.0.1:3000/a2a"  # not echoed


def test_card_uses_the_configured_url(db_settings: Settings) -> None:
    settings = make_settings(db_settings, a2a=A2ASettings(url="https://agents.example.com:3000/"))
    with TestClient(create_app(settings)) as client:
        card = client.get("/.well-known/agent-card.json").json()
    assert card["supportedInterfaces"][0]["url"] == "https://agents.example.com:3000/a2a"


def test_disabled_a2a_serves_neither(db_settings: Settings) -> None:
    settings = make_settings(db_settings, a2a=A2ASettings(enabled=False))
    with TestClient(create_app(settings)) as client:
        assert_error(client.get("/.well-known/agent-card.json"), 404, "not_found")
        headers = login(client, "alice")
        assert client.post("/a2a", json={}, headers=headers).status_code == 404


# --- the endpoint ------------------------------------------------------------------------------------------------


def test_endpoint_needs_a_token(client: TestClient[Any]) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message("hi")}}
    body_text = assert_error(client.post("/a2a", json=body, headers=V1), 401, "unauthorized")
    assert "bearer" in body_text["error"]
    bad = {"Authorization": "Bearer not-a-token", **V1}
    assert_error(client.post("/a2a", json=body, headers=bad), 401, "unauthorized")


def test_read_only_key_may_not_send(client: TestClient[Any]) -> None:
    headers = login(client, "alice")
    created = client.post("/auth/keys", json={"name": "ro", "scope": "read"}, headers=headers)
    assert created.status_code == 201, created.text
    read_only = {"Authorization": f"Bearer {created.json()['key']}", **V1}
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message("hi")}}
    assert_error(client.post("/a2a", json=body, headers=read_only), 403, "forbidden")


def test_malformed_requests_get_json_rpc_errors(client: TestClient[Any]) -> None:
    headers = {**login(client, "alice"), "Content-Type": "application/json"}
    parse = client.post("/a2a", content=b"{not json", headers=headers)
    assert parse.status_code == 200
    assert parse.json()["error"]["code"] == -32700
    assert parse.json()["id"] is None
    no_version = client.post("/a2a", json={"id": 1, "method": "GetTask", "params": {}}, headers=headers)
    assert no_version.json()["error"]["code"] == -32600
    assert error_code(rpc(client, headers, "NoSuchMethod", {})) == -32601
    bad_params = rpc(client, headers, "SendMessage", {"message": {"role": 12345, "parts": "x"}})
    assert error_code(bad_params) == -32602
    assert error_code(rpc(client, headers, "SendMessage", {"message": message("   ")})) == -32602


def test_parts_that_are_not_text_are_content_type_not_supported(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    raw = {
        "messageId": uuid.uuid4().hex,
        "role": "ROLE_USER",
        "parts": [{"raw": "dGNr", "mediaType": "image/png"}],
    }
    pdf = {
        "messageId": uuid.uuid4().hex,
        "role": "ROLE_USER",
        "parts": [{"text": "x", "mediaType": "application/pdf"}],
    }
    data = {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": "hi"}, {"data": {"a": 1}}]}
    for sent in (raw, pdf, data):
        answer = rpc(client, alice, "SendMessage", {"message": sent})
        assert error_code(answer) == -32005, answer
        assert "text parts" in answer["error"]["message"]
    assert (
        rpc(client, alice, "ListTasks", {})["result"].get("tasks", []) == []
    )  # refused before a task exists
    typed = {"text": "hi", "mediaType": "text/plain"}
    plain = {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [typed]}
    assert "result" in rpc(client, alice, "SendMessage", {"message": plain})


def test_a_body_that_is_not_json_is_content_type_not_supported(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message("hi")}}
    )
    refused = client.post("/a2a", content=body, headers={**alice, "Content-Type": "text/plain"})
    assert refused.status_code == 200
    assert refused.json()["error"]["code"] == -32005
    assert refused.json()["id"] is None
    typed = client.post(
        "/a2a", content=body, headers={**alice, "Content-Type": "application/json; charset=utf-8"}
    )
    assert "result" in typed.json(), typed.text
    no_token = client.post("/a2a", content=body, headers={"Content-Type": "text/plain"})
    assert no_token.status_code == 401  # the token is checked first


def test_send_get_list(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    task = send(client, alice, "hi")
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert answer_text(task) == MOCK_TEXT
    assert task["history"][0]["parts"] == [{"text": "hi"}]
    assert task["artifacts"][0]["parts"] == [
        {"text": MOCK_TEXT}
    ]  # the answer as one text, not a part per chunk
    meta = task["metadata"]["specai"]
    assert meta["agent"] == "default"
    assert meta["sessionId"] == task["contextId"]  # the protocol's JSON style: camelCase, UTC with a Z
    assert {"runId", "processingTimeMs", "model"} <= set(meta)
    assert not [key for key in meta if "_" in key]
    assert meta["timestamp"].endswith("Z")
    got = rpc(client, alice, "GetTask", {"id": task["id"]})["result"]
    assert got["id"] == task["id"]
    assert got["artifacts"][0]["parts"] == [{"text": MOCK_TEXT}]  # stored as one text, not a part per chunk
    listed = rpc(client, alice, "ListTasks", {})["result"]
    assert [t["id"] for t in listed["tasks"]] == [task["id"]]
    assert listed["totalSize"] == 1


def test_bob_never_sees_alices_tasks(client: TestClient[Any]) -> None:
    alice, bob = login(client, "alice"), login(client, "bob")
    task = send(client, alice, "my secret")
    assert error_code(rpc(client, bob, "GetTask", {"id": task["id"]})) == -32001
    assert error_code(rpc(client, bob, "CancelTask", {"id": task["id"]})) == -32001
    assert error_code(rpc(client, bob, "SubscribeToTask", {"id": task["id"]})) == -32001
    follow_up = rpc(client, bob, "SendMessage", {"message": message("more", taskId=task["id"])})
    assert error_code(follow_up) == -32001
    listed = rpc(client, bob, "ListTasks", {})["result"]
    assert listed["tasks"] == []
    assert listed["totalSize"] == 0
    # nor her conversation: the context is her session
    stolen = rpc(
        client, bob, "SendMessage", {"message": message("what did she say?", contextId=task["contextId"])}
    )
    assert error_code(stolen) == -32602
    assert "my secret" not in json.dumps(stolen)
    assert (
        rpc(client, alice, "GetTask", {"id": task["id"]})["result"]["status"]["state"]
        == "TASK_STATE_COMPLETED"
    )


def test_agent_named_by_metadata(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    task = send(client, alice, "a poem please", metadata={"agent": "poet"})
    assert answer_text(task) == POEM
    assert task["metadata"]["specai"]["agent"] == "poet"
    unknown = rpc(client, alice, "SendMessage", {"message": message("hi", metadata={"agent": "nobody"})})
    assert error_code(unknown) == -32602
    assert "nobody" in unknown["error"]["message"]


def test_a_context_continues_its_session(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    first = send(client, alice, "a poem please", metadata={"agent": "poet"})
    context = first["contextId"]
    second = send(client, alice, "another", contextId=context)
    assert second["contextId"] == context
    assert second["id"] != first["id"]
    assert second["metadata"]["specai"]["agent"] == "poet"  # the session's agent
    session = client.get(f"/sessions/{context}", headers=alice)
    assert session.status_code == 200, session.text
    contents = [m["content"] for m in session.json()["messages"]]
    assert contents == ["a poem please", POEM, "another", POEM]
    by_context = rpc(client, alice, "ListTasks", {"contextId": context})["result"]
    assert {t["id"] for t in by_context["tasks"]} == {first["id"], second["id"]}
    bad = rpc(client, alice, "SendMessage", {"message": message("hi", contextId="no spaces allowed")})
    assert error_code(bad) == -32602


def test_deleting_a_session_deletes_its_tasks(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    first, other = send(client, alice, "hi"), send(client, alice, "elsewhere")
    again = send(client, alice, "and again", contextId=first["contextId"])
    bob = login(client, "bob")
    assert client.delete(f"/sessions/{first['contextId']}", headers=bob).status_code == 404  # not his
    assert "result" in rpc(client, alice, "GetTask", {"id": first["id"]})
    assert client.delete(f"/sessions/{first['contextId']}", headers=alice).status_code == 204
    for gone in (first, again):  # they held copies of the conversation
        assert error_code(rpc(client, alice, "GetTask", {"id": gone["id"]})) == -32001
    listed = rpc(client, alice, "ListTasks", {})["result"]
    assert [task["id"] for task in listed["tasks"]] == [other["id"]]


def test_a_finished_task_takes_no_more_messages(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    task = send(client, alice, "hi")
    again = rpc(client, alice, "SendMessage", {"message": message("more", taskId=task["id"])})
    assert error_code(again) == -32004
    assert error_code(rpc(client, alice, "CancelTask", {"id": task["id"]})) == -32002


def test_push_notifications_are_not_supported(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    task = send(client, alice, "hi")
    config = {"taskId": task["id"], "url": "https://example.com/hook"}
    assert error_code(rpc(client, alice, "CreateTaskPushNotificationConfig", config)) == -32003
    assert (
        error_code(rpc(client, alice, "GetTaskPushNotificationConfig", {"taskId": task["id"], "id": "x"}))
        == -32003
    )
    assert error_code(rpc(client, alice, "ListTaskPushNotificationConfigs", {"taskId": task["id"]})) == -32003


def sse_results(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:])


def test_streaming_send(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    body = {"jsonrpc": "2.0", "id": 3, "method": "SendStreamingMessage", "params": {"message": message("hi")}}
    with client.stream("POST", "/a2a", json=body, headers=alice) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_results(response.iter_lines()))
    results = [e["result"] for e in events]
    kinds = [next(iter(r)) for r in results]
    assert kinds[0] == "task"
    # a word every 20 ms, an update at most every 50 ms: several updates, fewer than the words
    assert 2 <= kinds.count("artifactUpdate") < len(MOCK_TEXT.split())
    text = "".join(
        p["text"] for r in results if "artifactUpdate" in r for p in r["artifactUpdate"]["artifact"]["parts"]
    )
    assert text == MOCK_TEXT
    states = [r["statusUpdate"]["status"]["state"] for r in results if "statusUpdate" in r]
    assert states == ["TASK_STATE_WORKING", "TASK_STATE_COMPLETED"]
    assert kinds[-1] == "statusUpdate"


def test_a_tool_call_shows_as_a_working_status(client: TestClient[Any]) -> None:
    alice = login(client, "alice")
    body = {
        "jsonrpc": "2.0",
        "id": 4,
        "method": "SendStreamingMessage",
        "params": {"message": message("six times seven?", metadata={"agent": "calc"})},
    }
    with client.stream("POST", "/a2a", json=body, headers=alice) as response:
        results = [event["result"] for event in sse_results(response.iter_lines())]
    statuses = [r["statusUpdate"] for r in results if "statusUpdate" in r]
    calling = [
        s for s in statuses if s.get("metadata", {}).get("specai", {}).get("tool_call") == "calculator"
    ]
    assert len(calling) == 1
    assert calling[0]["status"]["message"]["parts"] == [{"text": "calling tool calculator"}]
    assert statuses[-1]["status"]["state"] == "TASK_STATE_COMPLETED"
    text = "".join(
        p["text"] for r in results if "artifactUpdate" in r for p in r["artifactUpdate"]["artifact"]["parts"]
    )
    assert text == "42"


def test_v03_method_names(client: TestClient[Any]) -> None:
    alice = {k: v for k, v in login(client, "alice").items() if k != "A2A-Version"}
    params = {
        "message": {
            "messageId": "m-1",
            "role": "user",
            "kind": "message",
            "parts": [{"kind": "text", "text": "hi"}],
        }
    }
    sent = rpc(client, alice, "message/send", params)
    assert "result" in sent, sent
    task = sent["result"]
    assert task["kind"] == "task"
    assert task["status"]["state"] == "completed"
    got = rpc(client, alice, "tasks/get", {"id": task["id"]})["result"]
    assert got["id"] == task["id"]
    text = "".join(p["text"] for a in got["artifacts"] for p in a["parts"])
    assert text == MOCK_TEXT
    bob = {k: v for k, v in login(client, "bob").items() if k != "A2A-Version"}
    assert error_code(rpc(client, bob, "tasks/get", {"id": task["id"]})) == -32001


def test_without_auth_tasks_belong_to_the_local_user(db_settings: Settings) -> None:
    settings = dataclasses.replace(db_settings, agents=AGENTS, model=ModelSettings())
    with TestClient(create_app(settings)) as client:
        card = client.get("/.well-known/agent-card.json").json()
        assert "securitySchemes" not in card
        task = send(client, V1, "hi")
        assert answer_text(task) == MOCK_TEXT
        assert rpc(client, V1, "GetTask", {"id": task["id"]})["result"]["id"] == task["id"]


# --- the task store ---------------------------------------------------------------------------------------------


def context_of(user_id: str) -> ServerCallContext:
    return ServerCallContext(user=SpecaiUser(Principal(user_id, user_id, "user", "write")))


def make_task(task_id: str, context_id: str = "ctx", seconds: int | None = None) -> Task:
    task = Task(id=task_id, context_id=context_id)
    task.status.state = TaskState.TASK_STATE_WORKING
    if seconds is not None:
        task.status.timestamp.FromSeconds(1_800_000_000 + seconds)
    return task


@pytest.mark.anyio
async def test_store_scopes_tasks_to_their_owner(store: Store) -> None:
    tasks = StoredTasks(lambda: store)
    alice, bob = context_of("u-alice"), context_of("u-bob")
    await tasks.save(make_task("t1", seconds=1), alice)
    found = await tasks.get("t1", alice)
    assert found is not None
    assert found.status.state == TaskState.TASK_STATE_WORKING
    assert await tasks.get("t1", bob) is None
    from a2a.utils.errors import InternalError

    with pytest.raises(InternalError):
        await tasks.save(make_task("t1"), bob)  # a task id is never taken over
    done = make_task("t1", seconds=2)
    done.status.state = TaskState.TASK_STATE_COMPLETED
    await tasks.save(done, alice)
    again = await tasks.get("t1", alice)
    assert again is not None
    assert again.status.state == TaskState.TASK_STATE_COMPLETED
    await tasks.save(done, alice)  # the same final state again: fine
    from a2a.server.cluster.task_store import ConcurrentTaskModificationError

    with pytest.raises(ConcurrentTaskModificationError):
        await tasks.save(make_task("t1", seconds=3), alice)  # a final state is never undone
    kept = await tasks.get("t1", alice)
    assert kept is not None
    assert kept.status.state == TaskState.TASK_STATE_COMPLETED
    await tasks.delete("t1", bob)
    assert await tasks.get("t1", alice) is not None
    await tasks.delete("t1", alice)
    assert await tasks.get("t1", alice) is None


@pytest.mark.anyio
async def test_store_lists_newest_first_in_pages(store: Store) -> None:
    tasks = StoredTasks(lambda: store)
    alice, bob = context_of("u-alice"), context_of("u-bob")
    for number in range(5):
        await tasks.save(make_task(f"t{number}", "even" if number % 2 == 0 else "odd", seconds=number), alice)
    await tasks.save(make_task("untimed"), alice)
    await tasks.save(make_task("bobs", seconds=99), bob)
    first = await tasks.list(ListTasksRequest(page_size=4), alice)
    assert [t.id for t in first.tasks] == ["t4", "t3", "t2", "t1"]
    assert first.total_size == 6
    assert first.next_page_token
    second = await tasks.list(ListTasksRequest(page_size=4, page_token=first.next_page_token), alice)
    assert [t.id for t in second.tasks] == ["t0", "untimed"]
    assert not second.next_page_token
    odd = await tasks.list(ListTasksRequest(context_id="odd"), alice)
    assert [t.id for t in odd.tasks] == ["t3", "t1"]
    after = ListTasksRequest()
    after.status_timestamp_after.FromSeconds(1_800_000_003)
    assert [t.id for t in (await tasks.list(after, alice)).tasks] == ["t4", "t3"]
    working = await tasks.list(ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED), alice)
    assert working.tasks == []
    from a2a.utils.errors import InvalidParamsError

    with pytest.raises(InvalidParamsError):
        await tasks.list(ListTasksRequest(page_token="garbage!"), alice)
