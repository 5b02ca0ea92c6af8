"""OpenAI-compatible API: `GET /v1/models` (agents as models) and `POST /v1/chat/completions` (whole or streamed)."""

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage

from specai.agents.runtime import QueryInput, Run
from specai.errors import InvalidRequestError
from specai.providers import ChatMessage
from specai.server.errors import error_responses
from specai.server.runs import finish
from specai.server.schemas.openai import (
    AssistantMessage,
    ChatCompletionIn,
    ChatCompletionOut,
    ChoiceOut,
    ModelListOut,
    ModelOut,
    UsageOut,
)
from specai.server.sse import KEEPALIVE, STOPPING, JsonOrEventStream, keepalive_comment, relay, shutting_down
from specai.server.state import ServerState

_ROLES = ("system", "user", "assistant")
COMPLETION = (
    "The whole completion; with `stream: true`, server-sent events instead: `chat.completion.chunk` objects, "
    "an OpenAI error object if the run fails (code `shutting_down` when the server stops), then `[DONE]`"
)


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/v1/models` and `/v1/chat/completions`, bound to this server's state."""
    created = int(time.time())

    @get(
        "/v1/models",
        operation_id="ListModels",
        tags=["openai"],
        sync_to_thread=False,
        responses=error_responses(401),
    )
    def list_models() -> ModelListOut:
        """Every available agent as an OpenAI model."""
        data = [
            ModelOut(id=agent.id, object="model", created=created, owned_by="specai")
            for agent in server.runtime.agents.values()
            if agent.available
        ]
        return ModelListOut(object="list", data=data)

    @post(
        "/v1/chat/completions",
        operation_id="ChatCompletions",
        tags=["openai"],
        status_code=200,
        responses={
            200: ResponseSpec(ChatCompletionOut, description=COMPLETION, generate_examples=False),
            **error_responses(401, 403, 404, 413, 500, 502, 504),
        },
        operation_class=JsonOrEventStream,
    )
    async def chat_completions(
        data: JSONBody[ChatCompletionIn],
    ) -> Response[ChatCompletionOut] | ServerSentEvent:
        """Run the agent named by `model` over the given messages (nothing is stored)."""
        run = server.runtime.prepare_stateless(data.model, _messages(data), _query(data))
        if data.stream:
            keepalive = server.settings.server.sse_keepalive_secs
            return ServerSentEvent(_chunks(run, relay(run.events(), server.stopping, keepalive)))
        text, metadata = await finish(run)
        usage = metadata.get("usage") or {}
        body = ChatCompletionOut(
            id=run.session_id,
            object="chat.completion",
            created=int(time.time()),
            model=run.agent.id,
            choices=[ChoiceOut(0, AssistantMessage("assistant", text), "stop")],
            usage=UsageOut(
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
            ),
        )
        return Response(body, status_code=200)

    return [list_models, chat_completions]


def _query(data: ChatCompletionIn) -> QueryInput:
    return QueryInput(
        message="-", temperature=data.temperature, max_tokens=data.max_completion_tokens or data.max_tokens
    )


def _messages(data: ChatCompletionIn) -> list[ChatMessage]:
    messages = []
    for index, message in enumerate(data.messages):
        if message.role not in _ROLES:
            raise InvalidRequestError(f"messages[{index}].role must be one of {', '.join(_ROLES)}")
        content = message.content
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
        messages.append(ChatMessage(message.role, content or ""))  # type: ignore[arg-type]
    if not messages or messages[-1].role != "user":
        raise InvalidRequestError("messages must end with a user message")
    return messages


async def _chunks(run: Run, events: AsyncIterator[Any]) -> AsyncIterator[ServerSentEventMessage]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> ServerSentEventMessage:
        body = {
            "id": run.session_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": run.agent.id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return ServerSentEventMessage(data=json.dumps(body))

    yield chunk({"role": "assistant", "content": ""})
    async for event in events:
        if event is KEEPALIVE:
            yield keepalive_comment()
        elif event is STOPPING:
            yield shutting_down(_error)
            break
        elif event.type == "chunk":
            yield chunk({"content": event.data["text"]})
        elif event.type == "error":
            yield ServerSentEventMessage(data=json.dumps(_error(event.data["message"], event.data["code"])))
            break
        elif event.type == "end":
            yield chunk({}, "stop")
    yield ServerSentEventMessage(data="[DONE]")


def _error(message: str, code: str) -> dict[str, Any]:
    """An error in a completion stream, in OpenAI's shape (its SDKs raise it as an APIError)."""
    return {"error": {"message": message, "type": "upstream_error", "code": code}}
