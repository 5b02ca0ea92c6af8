"""OpenAI-compatible API: `GET /v1/models[/{id}]` (agents as models), `POST /v1/chat/completions` (whole or streamed).

What a request may hold, and what becomes of it:
- honoured: model, messages (system, developer = system, user, assistant with tool_calls, tool), stream,
  stream_options.include_usage, temperature, max_tokens, max_completion_tokens, top_p, stop, seed,
  presence_penalty, frequency_penalty, response_format, tools (the client's functions) and tool_choice;
- ignored, being harmless: `IGNORED`, and any field specai does not know (as vLLM, Ollama and LiteLLM do);
- refused with a 400 whose `param` names it: `REFUSED`, and any parameter the agent's provider cannot honour.
Nothing is stored. Errors use OpenAI's body (`specai.server.errors`).
"""

import contextlib
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import ServerSentEvent

from specai.agents.runtime import ClientRequest, QueryInput, Run
from specai.errors import AgentNotFoundError, InvalidRequestError
from specai.providers import ChatMessage, ToolCall, ToolSpec
from specai.server.errors import openai_error, openai_error_responses
from specai.server.runs import finish
from specai.server.schemas.openai import (
    AssistantMessage,
    ChatCompletionIn,
    ChatCompletionOut,
    ChatMessageIn,
    ChoiceOut,
    FunctionCallOut,
    ModelListOut,
    ModelOut,
    ResponseFormatIn,
    ToolCallOut,
    UsageOut,
)
from specai.server.sse import (
    KEEPALIVE,
    KEEPALIVE_FRAME,
    STOPPING,
    EventStream,
    JsonOrEventStream,
    frame,
    relay_batches,
    shutting_down,
)
from specai.server.state import ServerState

COMPLETION = (
    "The whole completion; with `stream: true`, server-sent events instead: `chat.completion.chunk` objects "
    "(with `stream_options.include_usage`, a last one with `choices: []` and `usage`), an OpenAI error object "
    "if the run fails (code `shutting_down` when the server stops), then `[DONE]`"
)
# Accepted and ignored: they change nothing specai could do differently.
IGNORED = (
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "n (when 1)",
    "logprobs (when false)",
    "stream_options (other than include_usage)",
)
# Refused with a 400 naming the parameter: honouring them is beyond specai, and ignoring them would mislead.
REFUSED: tuple[tuple[str, Callable[[ChatCompletionIn], bool], str], ...] = (
    ("n", lambda d: d.n not in (None, 1), "n must be 1: specai returns one choice"),
    ("logprobs", lambda d: bool(d.logprobs), "logprobs are not supported"),
    ("top_logprobs", lambda d: d.top_logprobs is not None, "top_logprobs is not supported (no logprobs)"),
    ("logit_bias", lambda d: bool(d.logit_bias), "logit_bias is not supported"),
    ("audio", lambda d: d.audio is not None, "audio output is not supported"),
    (
        "modalities",
        lambda d: d.modalities is not None and d.modalities != ["text"],
        'modalities other than ["text"] are not supported',
    ),
    ("prediction", lambda d: d.prediction is not None, "prediction is not supported"),
    (
        "web_search_options",
        lambda d: d.web_search_options is not None,
        "web_search_options is not supported (no web search)",
    ),
    ("functions", lambda d: d.functions is not None, "functions is the legacy form: send tools instead"),
    (
        "function_call",
        lambda d: d.function_call is not None,
        "function_call is the legacy form: send tool_choice instead",
    ),
)
_ROLES = ("system", "user", "assistant", "tool")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOOL_CHOICES = ("auto", "none", "required")
_MAX_STOP = 4
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/v1/models`, `/v1/models/{model_id}` and `/v1/chat/completions`, bound to this server's state."""
    created = int(time.time())

    @get(
        "/v1/models",
        operation_id="ListModels",
        tags=["openai"],
        sync_to_thread=False,
        responses=openai_error_responses(401),
    )
    def list_models() -> ModelListOut:
        """Every available agent as an OpenAI model."""
        data = [
            ModelOut(id=agent.id, object="model", created=created, owned_by="specai")
            for agent in server.runtime.agents.values()
            if agent.available
        ]
        return ModelListOut(object="list", data=data)

    @get(
        "/v1/models/{model_id:str}",
        operation_id="RetrieveModel",
        tags=["openai"],
        sync_to_thread=False,
        responses=openai_error_responses(401, 404),
    )
    def retrieve_model(model_id: FromPath[str]) -> ModelOut:
        """One available agent as an OpenAI model (404 for an unknown or unavailable one)."""
        agent = server.runtime.agents.get(model_id)
        if agent is None or not agent.available:
            available = ", ".join(a.id for a in server.runtime.agents.values() if a.available)
            raise AgentNotFoundError(f"model '{model_id}' not found; available: {available}")
        return ModelOut(id=agent.id, object="model", created=created, owned_by="specai")

    @post(
        "/v1/chat/completions",
        operation_id="ChatCompletions",
        tags=["openai"],
        status_code=200,
        responses={
            200: ResponseSpec(ChatCompletionOut, description=COMPLETION, generate_examples=False),
            **openai_error_responses(401, 403, 404, 413, 500, 502, 504),
        },
        operation_class=JsonOrEventStream,
    )
    async def chat_completions(
        data: JSONBody[ChatCompletionIn], request: Request
    ) -> Response[ChatCompletionOut] | ServerSentEvent:
        """Run the agent named by `model` over the given messages (nothing is stored); with `tools`, the model may
        call the client's tools instead of the agent's, and the completion returns those calls."""
        _refuse(data)
        query, extra = _request(data)
        run = server.runtime.prepare_stateless(data.model, _messages(data), query, extra)
        if data.stream:
            keepalive = server.settings.server.sse_keepalive_secs
            usage = data.stream_options is not None and data.stream_options.include_usage
            batches = relay_batches(run.events(), server.stopping, keepalive)
            return EventStream(_chunks(run, batches, usage))
        text, metadata = await finish(run, request.receive)
        calls = [_call_out(call) for call in run.client_calls]
        usage_in = metadata.get("usage")
        body = ChatCompletionOut(
            id=run.session_id,
            object="chat.completion",
            created=int(time.time()),
            model=run.agent.id,
            choices=[
                ChoiceOut(
                    0,
                    AssistantMessage("assistant", text if text or not calls else None, calls or None),
                    run.finish_reason or "stop",
                )
            ],
            usage=msgspec.convert(usage_in, UsageOut) if usage_in else None,
        )
        return Response(body, status_code=200)

    return [list_models, retrieve_model, chat_completions]


def _invalid(param: str, message: str) -> InvalidRequestError:
    """A 400 whose OpenAI body names `param`."""
    return InvalidRequestError(message, details={"param": param})


def _refuse(data: ChatCompletionIn) -> None:
    for param, asked, message in REFUSED:
        if asked(data):
            raise _invalid(param, message)


def _request(data: ChatCompletionIn) -> tuple[QueryInput, ClientRequest]:
    """The sampling settings and client tools of a request, checked against OpenAI's ranges."""
    _in_range("temperature", data.temperature, 0, 2)
    _in_range("top_p", data.top_p, 0, 1)
    _in_range("presence_penalty", data.presence_penalty, -2, 2)
    _in_range("frequency_penalty", data.frequency_penalty, -2, 2)
    max_param = "max_completion_tokens" if data.max_completion_tokens is not None else "max_tokens"
    max_tokens = data.max_completion_tokens if data.max_completion_tokens is not None else data.max_tokens
    if max_tokens is not None and max_tokens <= 0:
        raise _invalid(max_param, f"{max_param} must be greater than 0")
    stop = (data.stop,) if isinstance(data.stop, str) else tuple(data.stop or ())
    if len(stop) > _MAX_STOP:
        raise _invalid("stop", f"stop takes at most {_MAX_STOP} sequences")
    tools = _tools(data)
    query = QueryInput(message="-", temperature=data.temperature, max_tokens=max_tokens)
    return query, ClientRequest(
        top_p=data.top_p,
        stop=tuple(s for s in stop if s),
        seed=data.seed,
        presence_penalty=data.presence_penalty,
        frequency_penalty=data.frequency_penalty,
        response_format=_response_format(data.response_format),
        tools=tools,
        tool_choice=_tool_choice(data.tool_choice, tools),
    )


def _in_range(param: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise _invalid(param, f"{param} must be between {low} and {high}")


def _response_format(given: ResponseFormatIn | None) -> dict[str, Any] | None:
    """None for text (the default); OpenAI's shape for json_object and json_schema."""
    if given is None or given.type == "text":
        return None
    if given.type == "json_object":
        return {"type": "json_object"}
    if given.type != "json_schema":
        raise _invalid(
            "response_format.type", "response_format.type must be text, json_object or json_schema"
        )
    if given.json_schema is None:
        raise _invalid("response_format.json_schema", "a json_schema response_format needs json_schema")
    return {"type": "json_schema", "json_schema": msgspec.to_builtins(given.json_schema)}


def _tools(data: ChatCompletionIn) -> tuple[ToolSpec, ...] | None:
    """The client's functions as tool specs; None when the request brings no tools (the agent's own run)."""
    if data.tools is None:
        return None
    specs = []
    for index, tool in enumerate(data.tools):
        if tool.type != "function":
            raise _invalid(f"tools[{index}].type", f"tools[{index}].type must be 'function'")
        name = tool.function.name
        if not _TOOL_NAME.fullmatch(name):
            raise _invalid(
                f"tools[{index}].function.name",
                f"tools[{index}].function.name must be 1 to 64 letters, digits, '_' or '-'",
            )
        specs.append(ToolSpec(name, tool.function.description, tool.function.parameters or _NO_PARAMETERS))
    return tuple(specs)


def _tool_choice(
    choice: str | dict[str, Any] | None, tools: tuple[ToolSpec, ...] | None
) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if tools is None:
        raise _invalid("tool_choice", "tool_choice is only allowed when tools are given")
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise _invalid(
                "tool_choice", f"tool_choice must be one of {', '.join(_TOOL_CHOICES)} or a function"
            )
        return choice
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise _invalid("tool_choice", 'tool_choice must be {"type": "function", "function": {"name": ...}}')
    if name not in {tool.name for tool in tools}:
        raise _invalid("tool_choice", f"tool_choice names '{name}', which is not one of the tools")
    return {"type": "function", "function": {"name": name}}


def _messages(data: ChatCompletionIn) -> list[ChatMessage]:
    """The conversation in specai's terms; it must end with the user's turn or a tool's result."""
    messages: list[ChatMessage] = []
    names: dict[str, str] = {}  # tool call id -> tool name, from the assistant turns so far
    for index, message in enumerate(data.messages):
        role = "system" if message.role == "developer" else message.role
        if role not in _ROLES:
            raise _invalid(
                f"messages[{index}].role",
                f"messages[{index}].role must be one of system, developer, user, assistant, tool",
            )
        content = _text(message, index)
        if role == "assistant":
            calls = _assistant_calls(message, index)
            names.update((call.id, call.name) for call in calls)
            messages.append(ChatMessage("assistant", content or "", tool_calls=calls))
            continue
        if content is None:
            raise _invalid(f"messages[{index}].content", f"messages[{index}].content is required")
        if role != "tool":
            messages.append(ChatMessage(role, content))  # type: ignore[arg-type]  # one of _ROLES
            continue
        if not message.tool_call_id:
            raise _invalid(f"messages[{index}].tool_call_id", f"messages[{index}].tool_call_id is required")
        name = names.get(message.tool_call_id)
        if name is None:
            raise _invalid(
                f"messages[{index}].tool_call_id",
                f"messages[{index}] answers tool call '{message.tool_call_id}', which no earlier assistant "
                "message made",
            )
        messages.append(ChatMessage("tool", content, tool_call_id=message.tool_call_id, name=name))
    if not messages or messages[-1].role not in ("user", "tool"):
        raise _invalid("messages", "messages must end with a user message or a tool result")
    return messages


def _text(message: ChatMessageIn, index: int) -> str | None:
    """A message's text: the string, or its text parts joined; other parts are refused, never dropped."""
    content = message.content
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type")
            raise _invalid(
                f"messages[{index}].content",
                f"messages[{index}].content: only text parts are supported, not {kind!r}",
            )
        parts.append(part["text"])
    return "".join(parts)


def _assistant_calls(message: ChatMessageIn, index: int) -> tuple[ToolCall, ...]:
    calls = []
    for number, call in enumerate(message.tool_calls or ()):
        where = f"messages[{index}].tool_calls[{number}]"
        if call.type != "function":
            raise _invalid(f"{where}.type", f"{where}.type must be 'function'")
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise _invalid(f"{where}.function.arguments", f"{where}.function.arguments must be a JSON object")
        calls.append(ToolCall(call.id, call.function.name, arguments))
    return tuple(calls)


def _call_out(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(call.id, "function", FunctionCallOut(call.name, json.dumps(call.arguments)))


async def _chunks(
    run: Run, batches: AsyncGenerator[list[Any], None], include_usage: bool
) -> AsyncIterator[bytes]:
    """The run as `chat.completion.chunk` SSE frames, those already waiting written together, then `[DONE]`."""
    created = int(time.time())
    head: dict[str, Any] = {
        "id": run.session_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": run.agent.id,
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return frame(json.dumps({**head, "choices": [choice], **extra}))

    # a text chunk is the same JSON every time but for its text: encoded once, the text spliced in
    before, after = chunk({"content": _MARK}).split(json.dumps(_MARK).encode())
    calls = 0

    def frames_of(event: Any, frames: list[bytes]) -> bool:
        """Append the frames of one relayed item; False when the stream ends with it."""
        nonlocal calls
        if event is KEEPALIVE:
            frames.append(KEEPALIVE_FRAME)
        elif event is STOPPING:
            frames.append(shutting_down(_stream_error).encode())
            return False
        elif event.type == "chunk":
            frames.append(before + json.dumps(event.data["text"]).encode() + after)
        elif event.type == "tool_call" and "id" in event.data:  # a client tool's call, for the client to run
            function = {"name": event.data["name"], "arguments": json.dumps(event.data["arguments"])}
            call = {"index": calls, "id": event.data["id"], "type": "function", "function": function}
            frames.append(chunk({"tool_calls": [call]}))
            calls += 1
        elif event.type == "error":
            status = run.failure.status if run.failure is not None else 500
            body = openai_error(event.data["message"], event.data["code"], status)
            frames.append(frame(msgspec.json.encode(body).decode()))
            return False
        elif event.type == "end":
            frames.append(chunk({}, run.finish_reason or "stop"))
            if include_usage:
                usage = event.data["metadata"].get("usage")
                frames.append(frame(json.dumps({**head, "choices": [], "usage": usage})))
        return True

    yield chunk({"role": "assistant", "content": ""})
    async with contextlib.aclosing(batches):
        async for batch in batches:
            frames: list[bytes] = []
            going = all(frames_of(event, frames) for event in batch)
            if not going:
                frames.append(DONE_FRAME)
                yield b"".join(frames)
                return
            yield b"".join(frames)
    yield DONE_FRAME


_MARK = "\x00text\x00"  # stands for a chunk's text in its pre-encoded frame (JSON escapes it as \u0000)
DONE_FRAME = frame("[DONE]")


def _stream_error(message: str, code: str) -> dict[str, Any]:
    """The error object of a stream the server stops (503), in OpenAI's shape."""
    return dict(msgspec.to_builtins(openai_error(message, code, 503)))
