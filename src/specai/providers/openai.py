"""OpenAI chat completions, and any OpenAI-compatible server through `base_url`, via the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

import openai

from specai.providers._upstream import (
    connection_error,
    display_url,
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


class ToolCallAccumulator:
    """Joins streamed tool-call fragments by their index into complete calls."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def add(self, fragment: Any) -> None:
        """Fold one `delta.tool_calls[i]` fragment in."""
        call = self._calls.setdefault(self._index(fragment), _PartialCall())
        if fragment.id:
            call.id = fragment.id
        function = fragment.function
        if function is not None:
            if function.name:
                call.name += function.name
            if function.arguments:
                call.arguments.append(function.arguments)

    def _index(self, fragment: Any) -> int:
        """The fragment's index; servers that omit it start a new call with each id."""
        if fragment.index is not None:
            return int(fragment.index)
        if fragment.id or not self._calls:
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


def _message_calls(calls: Iterable[Any]) -> list[ToolCall]:
    """The function calls of a whole (non-streamed) assistant message; missing ids are invented (unique)."""
    out = []
    for call in calls:
        function = getattr(call, "function", None)
        if function is None:  # a custom tool call: specai offers functions only
            continue
        arguments = parse_arguments(function.arguments or "")
        out.append(ToolCall(id=call.id or new_call_id(), name=function.name or "", arguments=arguments))
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
            stream = await self._client.chat.completions.create(**request_kwargs(request))
            started = True
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield TextDelta(choice.delta.content)
                        for fragment in choice.delta.tool_calls or ():
                            tool_calls.add(fragment)
                        reason = choice.finish_reason or reason
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
        """One non-streamed call: the SDK builds a single `ChatCompletion` instead of an object per token."""
        try:
            completion = await self._client.chat.completions.create(**request_kwargs(request, stream=False))
        except openai.OpenAIError as exc:
            raise self._error(exc, False) from exc
        except Exception as exc:  # transport errors the SDK let through
            if transport_failure(exc) is None:
                raise
            raise self._error(exc, False) from exc
        response = ModelResponse()
        reason: str | None = None
        for choice in completion.choices[:1]:
            response.text = choice.message.content or ""
            response.tool_calls = _message_calls(choice.message.tool_calls or ())
            reason = choice.finish_reason
        if completion.usage is not None:
            response.usage = Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
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
