"""The provider interface: chat messages in, a stream of model events out (text deltas, tool calls, usage)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from specai.errors import UpstreamError, UpstreamTimeoutError  # noqa: F401 - re-exported for the providers

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A model's request to run one tool."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn: system/user/assistant text, an assistant turn with tool calls, or a tool result."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # role == "tool": which call this answers
    name: str | None = None  # role == "tool": the tool's name


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: name, description and JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class GenerationOptions:
    """Per-call sampling settings; None (or empty) means the provider's default."""

    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # OpenAI's shape, checked by the caller: {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}
    response_format: dict[str, Any] | None = None


# OpenAI's shape, checked by the caller: "auto" | "none" | "required" | {"type": "function", "function": {"name": N}}
ToolChoice = str | dict[str, Any]

# Finished.reason values (OpenAI's words); anything else a vendor says becomes None.
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})


@dataclass(frozen=True)
class ModelRequest:
    """Everything one model call needs."""

    messages: tuple[ChatMessage, ...]
    options: GenerationOptions
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None


def forced_tool(choice: ToolChoice | None) -> str | None:
    """The tool name a `{"type": "function", "function": {"name": N}}` choice forces, or None for the other choices."""
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def unmet_tool_choice(request: ModelRequest) -> bool:
    """Whether `tool_choice` forces a call no offered tool can satisfy ("required" with no tools, an unknown name)."""
    choice = request.tool_choice
    if choice == "required":
        return not request.tools
    if isinstance(choice, dict):
        name = forced_tool(choice)
        return name is None or name not in {tool.name for tool in request.tools}
    return False


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON Schema a `json_schema` response_format asks for; None for `json_object`, none, or no schema given."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, as soon as the model produced it."""

    text: str


@dataclass(frozen=True)
class ToolCallRequested:
    """A complete tool call (arguments fully received)."""

    call: ToolCall


@dataclass(frozen=True)
class Usage:
    """Token counts, when the vendor reports them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Finished:
    """The model call ended; `reason` in OpenAI's words (stop, length, tool_calls, content_filter), None if unknown."""

    reason: str | None = None


ModelEvent = TextDelta | ToolCallRequested | Usage | Finished


@dataclass
class ModelResponse:
    """A whole model answer, collected from its stream."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None


class Provider(Protocol):
    """What the agent runtime needs from a model vendor."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        """Yield events as the model produces them; raise UpstreamError/UpstreamTimeoutError on failure."""
        ...

    async def generate(self, request: ModelRequest) -> ModelResponse:
        """The whole answer at once."""
        ...

    def unsupported(self, request: ModelRequest) -> str | None:
        """The first request parameter this provider cannot honour (e.g. "seed", "tool_choice"), or None."""
        ...

    async def list_models(self) -> list[str]:
        """Model names the vendor offers."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class BaseProvider:
    """Shared behaviour: `generate` collects `stream`."""

    name = "base"

    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        raise NotImplementedError

    async def generate(self, request: ModelRequest) -> ModelResponse:
        """Collect the stream into one response."""
        return await collect(self.stream(request))

    def unsupported(self, request: ModelRequest) -> str | None:
        return None

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


async def collect(events: AsyncIterator[ModelEvent]) -> ModelResponse:
    """Fold a stream of model events into a ModelResponse."""
    response = ModelResponse()
    parts: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, ToolCallRequested):
            response.tool_calls.append(event.call)
        elif isinstance(event, Usage):
            response.usage = event
        elif isinstance(event, Finished):
            response.finish_reason = event.reason
    response.text = "".join(parts)
    return response
