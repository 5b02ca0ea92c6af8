"""Ollama's native `/api/chat` (NDJSON streaming, tools, options) via the official `ollama` SDK."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import ollama

from specai.providers._upstream import (
    connection_error,
    display_url,
    new_call_id,
    one_line,
    status_error,
    timeout_error,
    transport_failure,
)
from specai.providers.base import (
    BaseProvider,
    ChatMessage,
    Finished,
    GenerationOptions,
    ModelEvent,
    ModelRequest,
    ModelResponse,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    UpstreamError,
    Usage,
    response_schema,
)

VENDOR = "ollama"
# (GenerationOptions field, Ollama option) sent when set.
_OPTION_NAMES = (
    ("temperature", "temperature"),
    ("max_tokens", "num_predict"),
    ("top_p", "top_p"),
    ("seed", "seed"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
)
# done_reason in OpenAI's words; others ("load", "unload") are None. A turn with tool calls is "tool_calls".
DONE_REASONS = {"stop": "stop", "length": "length"}


def message_to_ollama(message: ChatMessage, call_names: dict[str, str] | None = None) -> dict[str, Any]:
    """One ChatMessage as an Ollama chat message; tool results name their tool (found by call id when unnamed)."""
    if message.role == "tool":
        name = message.name or (call_names or {}).get(message.tool_call_id or "", "")
        return {"role": "tool", "content": message.content, "tool_name": name}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": call.name, "arguments": call.arguments}} for call in message.tool_calls
        ]
    return out


def model_options(options: GenerationOptions) -> dict[str, Any]:
    """The set GenerationOptions as Ollama's `options` (max_tokens is num_predict, the rest keep their names)."""
    out: dict[str, Any] = {}
    for name, ollama_name in _OPTION_NAMES:
        value = getattr(options, name)
        if value is not None:
            out[ollama_name] = value
    if options.stop:
        out["stop"] = list(options.stop)
    return out


def output_format(response_format: dict[str, Any] | None) -> str | dict[str, Any] | None:
    """Ollama's `format`: "json" for json_object (or a json_schema without a schema), else the schema itself."""
    if response_format is None:
        return None
    return response_schema(response_format) or "json"


def request_kwargs(request: ModelRequest, stream: bool = True) -> dict[str, Any]:
    """Keyword arguments of `AsyncClient.chat` for a streamed (or whole) call; options only when set."""
    options = model_options(request.options)
    # OpenAI clients send tool results with only the call's id; Ollama wants the tool's name
    call_names = {call.id: call.name for m in request.messages for call in m.tool_calls}
    kwargs: dict[str, Any] = {
        "model": request.options.model,
        "messages": [message_to_ollama(m, call_names) for m in request.messages],
        "stream": stream,
    }
    if options:
        kwargs["options"] = options
    form = output_format(request.options.response_format)
    if form is not None:
        kwargs["format"] = form
    if request.tools and request.tool_choice != "none":  # "none": the model is not shown the tools
        kwargs["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
    return kwargs


def _tool_calls(message: Any) -> list[ToolCall]:
    """Tool calls of one streamed message; Ollama sends whole calls with dict arguments and no ids (ids invented)."""
    return [
        ToolCall(id=new_call_id(), name=call.function.name, arguments=dict(call.function.arguments or {}))
        for call in message.tool_calls or ()
    ]


class OllamaProvider(BaseProvider):
    """Streams from a local or remote Ollama server (`base_url` like `http://host:11434`).

    Sampling options go in `options`, a JSON response_format in `format`; tool_choice "none" leaves the tools out.
    """

    name = "ollama"

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        self._api_key = api_key
        self._timeout = timeout
        self.base_url = display_url(base_url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = ollama.AsyncClient(host=base_url, timeout=timeout, headers=headers)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        calls: list[ToolCall] = []
        usage: Usage | None = None
        reason: str | None = None
        started = False
        try:
            parts = await self._client.chat(**request_kwargs(request))
            async with aclosing(parts):
                async for part in parts:
                    started = True
                    if part.message.content:
                        yield TextDelta(part.message.content)
                    calls.extend(_tool_calls(part.message))
                    if part.done:
                        reason = DONE_REASONS.get(part.done_reason or "")
                        if part.prompt_eval_count is not None or part.eval_count is not None:
                            usage = Usage(part.prompt_eval_count, part.eval_count)
        except Exception as exc:
            error = self._error(exc, started)
            if error is None:
                raise
            raise error from exc
        for call in calls:
            yield ToolCallRequested(call)
        if usage is not None:
            yield usage
        yield Finished("tool_calls" if calls else reason)

    async def generate(self, request: ModelRequest) -> ModelResponse:
        """One non-streamed call (`"stream": false`): the whole answer in one JSON object."""
        try:
            part = await self._client.chat(**request_kwargs(request, stream=False))
        except Exception as exc:
            error = self._error(exc, False)
            if error is None:
                raise
            raise error from exc
        calls = _tool_calls(part.message)
        response = ModelResponse(text=part.message.content or "", tool_calls=calls)
        if part.prompt_eval_count is not None or part.eval_count is not None:
            response.usage = Usage(part.prompt_eval_count, part.eval_count)
        response.finish_reason = "tool_calls" if calls else DONE_REASONS.get(part.done_reason or "")
        return response

    def unsupported(self, request: ModelRequest) -> str | None:
        """Ollama cannot force a tool call: "required" and a named function are refused."""
        if request.tool_choice == "required" or isinstance(request.tool_choice, dict):
            return "tool_choice"
        return None

    async def list_models(self) -> list[str]:
        try:
            listing = await self._client.list()
        except Exception as exc:
            error = self._error(exc, False)
            if error is None:
                raise
            raise error from exc
        return [m.model for m in listing.models if m.model]

    async def aclose(self) -> None:
        await self._client.close()

    def _error(self, exc: BaseException, started: bool) -> UpstreamError | None:
        """The UpstreamError for an SDK/transport exception, or None when `exc` is not an upstream failure."""
        kind = transport_failure(exc)
        if kind == "timeout":
            return timeout_error(VENDOR, self.base_url, self._timeout)
        if kind == "transport":
            return connection_error(self.base_url, exc, started)
        if isinstance(exc, ollama.ResponseError):
            return self._response_error(exc)
        if isinstance(exc, ConnectionError):  # the SDK's own "Failed to connect to Ollama"
            return connection_error(self.base_url, None, started)
        if isinstance(exc, ollama.RequestError | ValueError):  # bad request, or a malformed NDJSON line
            return UpstreamError(
                f"{VENDOR} at {self.base_url} sent an unusable answer: {one_line(exc, self._api_key)}"
            )
        return None

    def _response_error(self, exc: ollama.ResponseError) -> UpstreamError:
        if exc.status_code < 400:  # an {"error": ...} line inside a streamed answer
            return UpstreamError(
                f"{VENDOR} reported an error mid-answer: {one_line(exc.error, self._api_key)}"
            )
        error = status_error(VENDOR, self.base_url, exc.status_code, exc.error, self._api_key)
        if exc.status_code == 404 and "not found" in exc.error:
            return UpstreamError(
                f"{error.message}; pull the model with `ollama pull <model>`", details=error.details
            )
        return error
