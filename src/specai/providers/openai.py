"""OpenAI chat completions, and any OpenAI-compatible server through `base_url`, via the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import openai

from specai.providers._upstream import (
    connection_error,
    display_url,
    json_int,
    json_object,
    json_str,
    new_call_id,
    one_line,
    parse_arguments,
    status_error,
    timeout_error,
    transport_failure,
)
from specai.providers.base import (
    FINISH_REASONS,
    BaseProvider,
    ChatMessage,
    Finished,
    ModelEvent,
    ModelRequest,
    ModelResponse,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    UpstreamError,
    Usage,
    unmet_tool_choice,
)

VENDOR = "openai"
# Calls go through the SDK's own request layer (`AsyncOpenAI.post`: auth, headers, timeouts, status errors, SSE
# decoding, error events) with `cast_to=object`, which hands back each chunk (or the whole completion) as the JSON
# object the server sent: no pydantic model per token, no walk of the params TypedDict per request.
COMPLETIONS = "/chat/completions"
# GenerationOptions sent as they are when set (OpenAI's names and shapes).
PASSED_OPTIONS = (
    "temperature",
    "max_tokens",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
)


def message_to_openai(message: ChatMessage) -> dict[str, Any]:
    """One ChatMessage as an OpenAI chat message dict."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content}


def request_kwargs(request: ModelRequest, stream: bool = True) -> dict[str, Any]:
    """Keyword arguments of `chat.completions.create` for a streamed (or whole) call; unset options are left out."""
    options = request.options
    kwargs: dict[str, Any] = {
        "model": options.model,
        "messages": [message_to_openai(m) for m in request.messages],
    }
    if stream:
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
    for name in PASSED_OPTIONS:
        value = getattr(options, name)
        if value is not None:
            kwargs[name] = value
    if options.stop:
        kwargs["stop"] = list(options.stop)
    if request.tools:
        kwargs["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
        if request.tool_choice is not None:  # the API rejects tool_choice without tools
            kwargs["tool_choice"] = request.tool_choice
    return kwargs


def finish_reason(raw: str | None) -> str | None:
    """The stream's finish_reason; the legacy "function_call" is "tool_calls", words outside OpenAI's set are None."""
    if raw == "function_call":
        return "tool_calls"
    return raw if raw in FINISH_REASONS else None


def _final_reason(raw: str | None, calls: list[ToolCall]) -> str | None:
    """The call's finish reason; some compatible servers (llama.cpp, older Ollama) say "stop" or nothing after tool
    calls."""
    final = finish_reason(raw)
    return "tool_calls" if calls and final in ("stop", None) else final


@dataclass
class _PartialCall:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _usage(raw: Any) -> Usage | None:
    """A `usage` object's token counts; None when the server sent none."""
    if not isinstance(raw, dict):
        return None
    return Usage(json_int(raw.get("prompt_tokens")), json_int(raw.get("completion_tokens")))


class ToolCallAccumulator:
    """Joins streamed tool-call fragments (`delta.tool_calls[i]` JSON objects) by their index into complete calls."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def add(self, fragment: dict[str, Any]) -> None:
        """Fold one `delta.tool_calls[i]` fragment in."""
        call = self._calls.setdefault(self._index(fragment), _PartialCall())
        call_id = json_str(fragment.get("id"))
        if call_id:
            call.id = call_id
        function = fragment.get("function")
        if isinstance(function, dict):
            name = json_str(function.get("name"))
            if name:
                call.name += name
            arguments = json_str(function.get("arguments"))
            if arguments:
                call.arguments.append(arguments)

    def _index(self, fragment: dict[str, Any]) -> int:
        """The fragment's index; servers that omit it start a new call with each id."""
        index = fragment.get("index")
        if isinstance(index, int):
            return index
        if fragment.get("id") or not self._calls:
            return len(self._calls)
        return max(self._calls)

    def calls(self) -> list[ToolCall]:
        """The complete calls, in index order; missing ids are invented (unique)."""
        return [
            ToolCall(
                id=call.id or new_call_id(),
                name=call.name,
                arguments=parse_arguments("".join(call.arguments)),
            )
            for _, call in sorted(self._calls.items())
        ]


def _message_calls(calls: Any) -> list[ToolCall]:
    """The function calls of a whole (non-streamed) assistant message; missing ids are invented (unique)."""
    out = []
    for call in calls if isinstance(calls, list) else ():
        function = json_object(call).get("function")
        if not isinstance(function, dict):  # a custom tool call: specai offers functions only
            continue
        arguments = parse_arguments(json_str(function.get("arguments")) or "")
        call_id = json_str(call.get("id")) or new_call_id()
        out.append(ToolCall(id=call_id, name=json_str(function.get("name")) or "", arguments=arguments))
    return out


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message")
        return str(message) if message else json.dumps(body)
    return str(body) if body else exc.message


class OpenAIProvider(BaseProvider):
    """Streams chat completions from OpenAI or an OpenAI-compatible server (LM Studio, vLLM, llama.cpp, Ollama /v1).

    Every option goes through in OpenAI's own shape; a compatible server that lacks one answers with its own error.
    """

    name = "openai"

    def __init__(self, api_key: str, base_url: str | None = None, timeout: float = 120.0) -> None:
        self._api_key = api_key
        self._timeout = timeout
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self.base_url = display_url(str(self._client.base_url))

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        tool_calls = ToolCallAccumulator()
        usage: Usage | None = None
        reason: str | None = None
        started = False
        try:
            stream = await self._client.post(
                COMPLETIONS,
                body=request_kwargs(request),
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            started = True
            async with stream:
                async for chunk in stream:
                    data = json_object(chunk)
                    usage = _usage(data.get("usage")) or usage
                    for choice in data.get("choices") or ():
                        choice = json_object(choice)
                        delta = json_object(choice.get("delta"))
                        content = delta.get("content")
                        if content and isinstance(content, str):
                            yield TextDelta(content)
                        for fragment in delta.get("tool_calls") or ():
                            tool_calls.add(json_object(fragment))
                        reason = json_str(choice.get("finish_reason")) or reason
        except openai.OpenAIError as exc:
            raise self._error(exc, started) from exc
        except Exception as exc:  # transport errors the SDK let through
            if transport_failure(exc) is None:
                raise
            raise self._error(exc, started) from exc
        calls = tool_calls.calls()
        for call in calls:
            yield ToolCallRequested(call)
        if usage is not None:
            yield usage
        yield Finished(_final_reason(reason, calls))

    async def generate(self, request: ModelRequest) -> ModelResponse:
        """One non-streamed call: the whole completion in one JSON object."""
        try:
            completion = await self._client.post(
                COMPLETIONS, body=request_kwargs(request, stream=False), cast_to=object
            )
        except openai.OpenAIError as exc:
            raise self._error(exc, False) from exc
        except Exception as exc:  # transport errors the SDK let through
            if transport_failure(exc) is None:
                raise
            raise self._error(exc, False) from exc
        data = json_object(completion)
        response = ModelResponse(usage=_usage(data.get("usage")))
        reason: str | None = None
        for choice in (data.get("choices") or ())[:1]:
            message = json_object(json_object(choice).get("message"))
            response.text = json_str(message.get("content")) or ""
            response.tool_calls = _message_calls(message.get("tool_calls"))
            reason = json_str(json_object(choice).get("finish_reason"))
        response.finish_reason = _final_reason(reason, response.tool_calls)
        return response

    def unsupported(self, request: ModelRequest) -> str | None:
        """Everything is passed through; only a tool_choice that forces a tool nobody offered is refused."""
        return "tool_choice" if unmet_tool_choice(request) else None

    async def list_models(self) -> list[str]:
        try:
            return [model.id async for model in self._client.models.list()]
        except openai.OpenAIError as exc:
            raise self._error(exc, False) from exc

    async def aclose(self) -> None:
        await self._client.close()

    def _error(self, exc: BaseException, started: bool) -> UpstreamError:
        """One SDK (or transport) exception as an UpstreamError with a one-line message."""
        if isinstance(exc, openai.APITimeoutError) or transport_failure(exc) == "timeout":
            return timeout_error(VENDOR, self.base_url, self._timeout)
        if isinstance(exc, openai.APIStatusError):
            return status_error(VENDOR, self.base_url, exc.status_code, _status_message(exc), self._api_key)
        if isinstance(exc, openai.APIConnectionError):
            return connection_error(self.base_url, exc.__cause__, started)
        if transport_failure(exc) == "transport":
            return connection_error(self.base_url, exc, started)
        if isinstance(exc, openai.APIError):  # an error object inside a 200 stream
            return UpstreamError(
                f"{VENDOR} reported an error mid-answer: {one_line(exc.message, self._api_key)}"
            )
        return UpstreamError(f"{VENDOR} failed: {one_line(exc, self._api_key)}")
