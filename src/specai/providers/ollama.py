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
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    UpstreamError,
    Usage,
)

VENDOR = "ollama"


def message_to_ollama(message: ChatMessage) -> dict[str, Any]:
    """One ChatMessage as an Ollama chat message; tool results name their tool."""
    if message.role == "tool":
        return {"role": "tool", "content": message.content, "tool_name": message.name or ""}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": call.name, "arguments": call.arguments}} for call in message.tool_calls
        ]
    return out


def request_kwargs(request: ModelRequest) -> dict[str, Any]:
    """Keyword arguments of `AsyncClient.chat` for a streamed call; options only when set."""
    options: dict[str, Any] = {}
    if request.options.temperature is not None:
        options["temperature"] = request.options.temperature
    if request.options.max_tokens is not None:
        options["num_predict"] = request.options.max_tokens
    kwargs: dict[str, Any] = {
        "model": request.options.model,
        "messages": [message_to_ollama(m) for m in request.messages],
        "stream": True,
    }
    if options:
        kwargs["options"] = options
    if request.tools:
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
    """Streams from a local or remote Ollama server (`base_url` like `http://host:11434`)."""

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
                        reason = part.done_reason
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
        yield Finished(reason)

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
