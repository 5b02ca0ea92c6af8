"""/schema/openapi.json tells the truth: every body is a named schema, every error is the body we send, the statuses
that can happen are listed, and streams are text/event-stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from specai.config import load_settings
from specai.server.app import create_app
from specai.users.directory import add_user

EVENT_STREAM = "text/event-stream"
STREAMS = {("post", "/stream"), ("get", "/graph/stream")}
PUBLIC = {("get", "/health"), ("get", "/cert"), ("post", "/auth/token")}
NO_BODY = ("get", "delete")


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The OpenAPI document of an app with auth on, as a client downloads it."""
    home: Path = tmp_path_factory.mktemp("home")
    (home / "spec-ai.config.toml").write_text('[auth]\nenabled = true\ntoken_secret = "' + "s" * 40 + '"\n')
    settings = load_settings(env={"SPECAI_HOME": str(home)}, cwd=home)
    add_user(settings.credentials_file, "alice", "pw-one-two")
    with TestClient(create_app(settings)) as client:
        response = client.get("/schema/openapi.json")
        assert response.status_code == 200
        yield response.json()


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "responses" in operation
    ]


def _component(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), ref
    found: dict[str, Any] = schema["components"]["schemas"][ref.removeprefix(prefix)]
    return found


def test_the_document_lists_every_route(schema: dict[str, Any]) -> None:
    labels = {(method, path) for method, path, _ in _operations(schema)}
    assert len(labels) >= 40, sorted(labels)
    assert {
        ("post", "/query"),
        ("post", "/v1/chat/completions"),
        ("post", "/messages/send/{source}"),
    } <= labels
    assert ("get", "/graph/sessions/{session_id}/shares") in labels


def test_the_error_body_is_the_one_the_server_sends(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["ErrorBody"]
    assert set(error["properties"]) == {"error", "code", "details"}
    assert sorted(error["required"]) == ["code", "error"]
    assert error["properties"]["error"]["type"] == error["properties"]["code"]["type"] == "string"


def test_the_openai_error_body_is_the_one_v1_sends(schema: dict[str, Any]) -> None:
    body = schema["components"]["schemas"]["OpenAIErrorBody"]
    assert body["required"] == ["error"]
    error = _component(schema, body["properties"]["error"]["$ref"])
    assert set(error["properties"]) == set(error["required"]) == {"message", "type", "param", "code"}


def test_every_error_response_references_the_error_body(schema: dict[str, Any]) -> None:
    """specai's body everywhere, OpenAI's under /v1/ (what each sends: tests/test_error_shape.py)."""
    for method, path, operation in _operations(schema):
        errors = {status: r for status, r in operation["responses"].items() if int(status) >= 400}
        assert {"400", "503"} <= set(errors), (method, path, sorted(errors))
        body = "OpenAIErrorBody" if path.startswith("/v1/") else "ErrorBody"
        for status, response in errors.items():
            content = response.get("content") or {}
            assert list(content) == ["application/json"], (method, path, status, content)
            ref = content["application/json"]["schema"].get("$ref", "")
            assert ref == f"#/components/schemas/{body}", (method, path, status, ref)
            assert response["description"], (method, path, status)


def _statuses(operation: dict[str, Any]) -> set[int]:
    return {int(status) for status in operation["responses"]}


def test_the_statuses_that_can_happen_are_listed(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        statuses, label = _statuses(operation), (method, path)
        if label not in PUBLIC:
            assert 401 in statuses, label  # the bearer token
        if "{" in path:
            assert 404 in statuses, label  # the thing in the path may not exist (or not be visible)
        if method not in NO_BODY and not path.startswith(("/auth/logout", "/registry/deregister")):
            assert 413 in statuses, label  # `[server] max_body_bytes`
        if method not in NO_BODY and label not in PUBLIC and path != "/auth/logout":
            assert 403 in statuses, label  # a read-only key may not write
        if path.startswith(("/registry/", "/messages/")):
            assert 403 in statuses, label  # `user` accounts
    by_label = {(method, path): _statuses(op) for method, path, op in _operations(schema)}
    assert 429 in by_label["post", "/auth/token"]
    assert 429 in by_label["post", "/auth/hash"]
    for label in [
        ("post", "/graph/nodes"),
        ("put", "/graph/nodes/{node_id}"),
        ("patch", "/graph/nodes/{node_id}"),
        ("post", "/graph/edges"),
        ("patch", "/graph/edges/{edge_id}"),
        ("post", "/messages/send/{source}"),
    ]:
        assert {409, 422} <= by_label[label], label  # version or quota; a bad type or value
    for label in [
        ("post", "/registry/register"),
        ("post", "/auth/keys"),
        ("delete", "/registry/deregister/{instance_id}"),
    ]:
        assert 409 in by_label[label], label
    for label in [("post", "/query"), ("post", "/stream"), ("post", "/v1/chat/completions")]:
        assert {404, 502, 504} <= by_label[label], label  # unknown agent; the model vendor failed


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_every_reference_resolves(schema: dict[str, Any]) -> None:
    refs = set(_refs(schema))
    assert refs
    for ref in refs:
        _component(schema, ref)


def test_every_success_body_is_a_named_schema(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        for status, response in operation["responses"].items():
            if int(status) >= 300 or (method, path) in STREAMS:
                continue
            content = response.get("content")
            if status == "204":
                assert not content, (method, path)
                continue
            body = content["application/json"]["schema"]
            assert "$ref" in body, (method, path, status, body)  # a Struct, not an anonymous `object`
            assert _component(schema, body["$ref"]).get("properties"), (method, path, status)


def test_streams_are_documented_as_event_streams(schema: dict[str, Any]) -> None:
    operations = {(method, path): op for method, path, op in _operations(schema)}
    for label in STREAMS:
        content = operations[label]["responses"]["200"]["content"]
        assert list(content) == [EVENT_STREAM], (label, content)
        assert "shutting_down" in operations[label]["responses"]["200"]["description"]
        assert content[EVENT_STREAM]["schema"]["$ref"] == "#/components/schemas/StreamEvent"
    event = schema["components"]["schemas"]["StreamEvent"]
    assert event["required"] == ["data"]
    assert {"event", "id", "data"} <= set(event["properties"])
    completions = operations["post", "/v1/chat/completions"]["responses"]["200"]["content"]
    assert set(completions) == {"application/json", EVENT_STREAM}
    assert completions["application/json"]["schema"]["$ref"].endswith("/ChatCompletionOut")
    assert completions[EVENT_STREAM]["schema"]["$ref"] == "#/components/schemas/StreamEvent"
    streaming = [
        label
        for label, op in operations.items()
        if any(EVENT_STREAM in (response.get("content") or {}) for response in op["responses"].values())
    ]
    assert sorted(streaming) == sorted({*STREAMS, ("post", "/v1/chat/completions")})


def test_stream_responses_are_sent_as_event_streams(tmp_path: Path) -> None:
    """What the document says is what the server sends: the streamed chat completion is text/event-stream too."""
    settings = load_settings(env={"SPECAI_HOME": str(tmp_path)}, cwd=tmp_path)
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(create_app(settings)) as client:
        whole = client.post("/v1/chat/completions", json=body)
        assert whole.headers["content-type"] == "application/json"
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.headers["content-type"].startswith(EVENT_STREAM)
        assert streamed.text.rstrip().endswith("data: [DONE]")
        assert client.post("/stream", json={"message": "hi"}).headers["content-type"].startswith(EVENT_STREAM)
