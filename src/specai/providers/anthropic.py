"""Anthropic Messages API via the official `anthropic` SDK: system prompt, tool_use/tool_result blocks, streaming."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic

from specai.providers._upstream import (
    connection_error,
    display_url,
    json_int,
    json_object,
    json_str,
    one_line,
    parse_arguments,
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
    ModelResponse,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolChoice,
    UpstreamError,
    Usage,
    collect,
    forced_tool,
    response_schema,
    unmet_tool_choice,
)

VENDOR = "anthropic"
# The API requires max_tokens. It is a ceiling, not a spend; thinking models count their thinking against it.
DEFAULT_MAX_TOKENS = 4096
# Above this max_tokens a whole-answer call could outlast 10 minutes: the SDK refuses it (and Anthropic advises
# streaming), so `generate` streams (the SDK's own rule: 60 min x max_tokens / 128,000 tokens > 10 min).
NONSTREAMING_MAX_TOKENS = 128_000 * 10 // 60
# Calls go through the SDK's own request layer (`AsyncAnthropic.post`: auth, headers, timeouts, status errors, SSE
# decoding, `error` events) with `cast_to=object`, which hands back each event (or the whole message) as the JSON
# object the server sent: no pydantic model per event.
MESSAGES = "/v1/messages"
# Thinking blocks kept (by the id of the tool call they led to) to be sent back with that assistant turn.
THINKING_CACHE_SIZE = 512

log = logging.getLogger(__name__)


def _assistant_blocks(message: ChatMessage, thinking: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = list(thinking)
    if message.content or not message.tool_calls:
        blocks.append({"type": "text", "text": message.content})
    blocks.extend(
        {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        for call in message.tool_calls
    )
    return blocks


def _turn(message: ChatMessage, thinking: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The role and content blocks of one non-system message."""
    if message.role == "tool":
        block = {"type": "tool_result", "tool_use_id": message.tool_call_id or "", "content": message.content}
        return "user", [block]
    if message.role == "assistant":
        return "assistant", _assistant_blocks(message, thinking)
    return "user", [{"type": "text", "text": message.content}]


def to_anthropic(
    messages: Sequence[ChatMessage], thinking: dict[str, list[dict[str, Any]]] | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """The `system` prompt and the alternating user/assistant turns; tool results become user `tool_result` blocks."""
    system = [m.content for m in messages if m.role == "system" and m.content]
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        first_call = message.tool_calls[0].id if message.tool_calls else ""
        role, blocks = _turn(message, (thinking or {}).get(first_call, []))
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return ("\n\n".join(system) or None), turns


def request_kwargs(
    request: ModelRequest, thinking: dict[str, list[dict[str, Any]]] | None = None, stream: bool = True
) -> dict[str, Any]:
    """Keyword arguments of `messages.create` for a streamed (or whole) call."""
    options = request.options
    system, turns = to_anthropic(request.messages, thinking)
    kwargs: dict[str, Any] = {
        "model": options.model,
        "messages": turns,
        "max_tokens": max_tokens(options.max_tokens),
    }
    if stream:
        kwargs["stream"] = True
    if system is not None:
        kwargs["system"] = system
    if options.stop:
        kwargs["stop_sequences"] = list(options.stop)
    schema = response_schema(options.response_format)
    if schema is not None:
        kwargs["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if request.tools:
        kwargs["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        choice = tool_choice(request.tool_choice)
        if choice is not None:  # the API rejects tool_choice without tools
            kwargs["tool_choice"] = choice
    return kwargs


def max_tokens(asked: int | None) -> int:
    """The max_tokens sent: the request's, or the default ceiling (the API requires one)."""
    return asked if asked is not None else DEFAULT_MAX_TOKENS


def tool_choice(choice: ToolChoice | None) -> dict[str, Any] | None:
    """OpenAI's tool_choice in Anthropic's words: auto, any (required), none, or one named tool."""
    name = forced_tool(choice)
    if name is not None:
        return {"type": "tool", "name": name}
    kinds = {"auto": "auto", "required": "any", "none": "none"}
    return {"type": kinds[choice]} if isinstance(choice, str) and choice in kinds else None


# stop_reason in OpenAI's words. pause_turn (a server-tool turn the API paused, to be continued by resending it)
# has no OpenAI equivalent and specai offers no server tools to Anthropic, so it is None (unknown), as is any
# reason a newer API adds.
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def unsupported_option(request: ModelRequest) -> str | None:
    """The first option the Messages API this SDK speaks cannot take, or None."""
    options = request.options
    for name in ("top_p", "seed", "presence_penalty", "frequency_penalty"):
        if getattr(options, name) is not None:  # no such parameter in this API version
            return name
    if options.response_format is not None and response_schema(options.response_format) is None:
        return "response_format"  # structured output needs a schema: there is no bare JSON mode
    if unmet_tool_choice(request):
        return "tool_choice"
    return None


@dataclass
class _Block:
    """One content block being streamed."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    json_parts: list[str] = field(default_factory=list)


@dataclass
class _StreamState:
    """What the stream told us besides text."""

    blocks: dict[int, _Block] = field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None
    reason: str | None = None

    def start_block(self, index: int, block: dict[str, Any]) -> None:
        self.blocks[index] = _Block(kind=str(block.get("type")), data=dict(block))

    def delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self.blocks.setdefault(index, _Block(kind="unknown"))
        kind = delta.get("type")
        if kind == "input_json_delta":
            block.json_parts.append(json_str(delta.get("partial_json")) or "")
        elif kind == "thinking_delta":
            block.data["thinking"] = block.data.get("thinking", "") + (json_str(delta.get("thinking")) or "")
        elif kind == "signature_delta":
            block.data["signature"] = block.data.get("signature", "") + (
                json_str(delta.get("signature")) or ""
            )

    def tool_calls(self) -> list[ToolCall]:
        calls = []
        for block in (b for _, b in sorted(self.blocks.items()) if b.kind == "tool_use"):
            raw = "".join(block.json_parts)
            arguments = parse_arguments(raw) if raw else dict(block.data.get("input") or {})
            calls.append(
                ToolCall(id=str(block.data.get("id")), name=str(block.data.get("name")), arguments=arguments)
            )
        return calls

    def thinking_blocks(self) -> list[dict[str, Any]]:
        return [b.data for _, b in sorted(self.blocks.items()) if b.kind in ("thinking", "redacted_thinking")]

    def usage(self) -> Usage | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return Usage(prompt_tokens=self.input_tokens, completion_tokens=self.output_tokens)


def _status_message(exc: anthropic.APIStatusError) -> str:
    if exc.api_message:
        return exc.api_message
    return json.dumps(exc.body) if isinstance(exc.body, dict) else str(exc.body or exc.message)


class AnthropicProvider(BaseProvider):
    """Streams Claude messages; the options the Messages API cannot take are named by `unsupported()`.

    `temperature` is not sent (logged once): the API version this SDK speaks rejects sampling parameters. `top_p`,
    `seed`, the penalties and a schema-less JSON response_format cannot be sent at all and are refused; `stop`
    becomes stop_sequences and a json_schema response_format becomes output_config.format.
    """

    name = "anthropic"

    def __init__(self, api_key: str, base_url: str | None = None, timeout: float = 120.0) -> None:
        self._api_key = api_key
        self._timeout = timeout
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        self.base_url = display_url(str(self._client.base_url))
        self._thinking: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._warned_temperature = False

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        self._warn_temperature(request)
        state = _StreamState()
        started = False
        try:
            stream = await self._client.post(
                MESSAGES,
                body=request_kwargs(request, self._thinking),
                cast_to=object,
                stream=True,
                stream_cls=anthropic.AsyncStream[object],
            )
            started = True
            async with stream:
                async for event in stream:
                    text = self._apply(state, json_object(event))
                    if text:
                        yield TextDelta(text)
        except anthropic.AnthropicError as exc:
            raise self._error(exc, started) from exc
        except Exception as exc:  # transport errors the SDK let through mid-stream
            if transport_failure(exc) is None:
                raise
            raise self._error(exc, started) from exc
        calls = state.tool_calls()
        self._remember_thinking(calls, state.thinking_blocks())
        for call in calls:
            yield ToolCallRequested(call)
        usage = state.usage()
        if usage is not None:
            yield usage
        yield Finished(STOP_REASONS.get(state.reason or ""))

    async def generate(self, request: ModelRequest) -> ModelResponse:
        """One non-streamed call (the whole message in one JSON object); a call whose max_tokens could outlast the
        SDK's 10 minutes for a whole answer is streamed and collected instead."""
        if max_tokens(request.options.max_tokens) > NONSTREAMING_MAX_TOKENS:
            return await collect(self.stream(request))
        self._warn_temperature(request)
        try:
            message = await self._client.post(
                MESSAGES, body=request_kwargs(request, self._thinking, stream=False), cast_to=object
            )
        except anthropic.AnthropicError as exc:
            raise self._error(exc, False) from exc
        except Exception as exc:  # transport errors the SDK let through
            if transport_failure(exc) is None:
                raise
            raise self._error(exc, False) from exc
        data = json_object(message)
        response = ModelResponse()
        texts: list[str] = []
        thinking: list[dict[str, Any]] = []
        for block in data.get("content") or ():
            block = json_object(block)
            kind = block.get("type")
            if kind == "text":
                texts.append(json_str(block.get("text")) or "")
            elif kind == "tool_use":
                given = block.get("input")
                arguments = given if isinstance(given, dict) else {"_raw": json.dumps(given)}
                call_id, name = str(block.get("id")), str(block.get("name"))
                response.tool_calls.append(ToolCall(id=call_id, name=name, arguments=arguments))
            elif kind in ("thinking", "redacted_thinking"):
                thinking.append(block)
        self._remember_thinking(response.tool_calls, thinking)
        response.text = "".join(texts)
        usage = data.get("usage")
        if isinstance(usage, dict):
            response.usage = Usage(json_int(usage.get("input_tokens")), json_int(usage.get("output_tokens")))
        response.finish_reason = STOP_REASONS.get(json_str(data.get("stop_reason")) or "")
        return response

    def unsupported(self, request: ModelRequest) -> str | None:
        return unsupported_option(request)

    @staticmethod
    def _apply(state: _StreamState, event: dict[str, Any]) -> str | None:
        """Fold one stream event (its JSON object) into `state`; return its text, if it is a text delta."""
        kind = event.get("type")
        index = json_int(event.get("index")) or 0
        if kind == "content_block_delta":
            delta = json_object(event.get("delta"))
            if delta.get("type") == "text_delta":
                return json_str(delta.get("text"))
            state.delta(index, delta)
        elif kind == "message_start":
            usage = json_object(json_object(event.get("message")).get("usage"))
            state.input_tokens = json_int(usage.get("input_tokens"))
            state.output_tokens = json_int(usage.get("output_tokens"))
        elif kind == "content_block_start":
            state.start_block(index, json_object(event.get("content_block")))
        elif kind == "message_delta":
            state.reason = json_str(json_object(event.get("delta")).get("stop_reason")) or state.reason
            usage = json_object(event.get("usage"))
            state.output_tokens = json_int(usage.get("output_tokens"))
            if usage.get("input_tokens") is not None:
                state.input_tokens = json_int(usage.get("input_tokens"))
        return None

    def _remember_thinking(self, calls: list[ToolCall], thinking: list[dict[str, Any]]) -> None:
        """Keep thinking blocks that led to tool calls: the API wants them back with that assistant turn."""
        if not calls or not thinking:
            return
        self._thinking[calls[0].id] = thinking
        while len(self._thinking) > THINKING_CACHE_SIZE:
            self._thinking.popitem(last=False)

    def _warn_temperature(self, request: ModelRequest) -> None:
        if request.options.temperature is not None and not self._warned_temperature:
            self._warned_temperature = True
            log.warning(
                "anthropic: temperature is not sent; the Messages API version this SDK speaks rejects it"
            )

    async def list_models(self) -> list[str]:
        try:
            return [model.id async for model in self._client.models.list()]
        except anthropic.AnthropicError as exc:
            raise self._error(exc, False) from exc

    async def aclose(self) -> None:
        await self._client.close()

    def _error(self, exc: BaseException, started: bool) -> UpstreamError:
        """One SDK (or transport) exception as an UpstreamError with a one-line message."""
        if isinstance(exc, anthropic.APITimeoutError) or transport_failure(exc) == "timeout":
            return timeout_error(VENDOR, self.base_url, self._timeout)
        if isinstance(exc, anthropic.APIStatusError):
            if exc.status_code < 400:  # an `error` event inside a 200 stream
                kind = f" ({exc.type})" if exc.type else ""
                return UpstreamError(
                    f"{VENDOR} reported an error mid-answer{kind}: {one_line(_status_message(exc))}"
                )
            return status_error(VENDOR, self.base_url, exc.status_code, _status_message(exc), self._api_key)
        if isinstance(exc, anthropic.APIConnectionError):
            return connection_error(self.base_url, exc.__cause__, started)
        if transport_failure(exc) == "transport":
            return connection_error(self.base_url, exc, started)
        return UpstreamError(f"{VENDOR} failed: {one_line(exc, self._api_key)}")
