"""The OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions`."""

from __future__ import annotations

from typing import Any

import msgspec


class ChatMessageIn(msgspec.Struct):
    """One OpenAI chat message (text content, or a list of text parts)."""

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionIn(msgspec.Struct):
    """The subset of the OpenAI request specai honours; other fields are accepted and ignored."""

    model: str
    messages: list[ChatMessageIn]
    stream: bool = False
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class ModelOut(msgspec.Struct):
    """An available agent, as an OpenAI model."""

    id: str
    object: str
    created: int
    owned_by: str


class ModelListOut(msgspec.Struct):
    """`GET /v1/models`."""

    object: str
    data: list[ModelOut]


class AssistantMessage(msgspec.Struct):
    """The reply of a completion."""

    role: str
    content: str


class ChoiceOut(msgspec.Struct):
    """The one choice specai gives."""

    index: int
    message: AssistantMessage
    finish_reason: str


class UsageOut(msgspec.Struct):
    """Token counts (0 when the vendor reported none)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionOut(msgspec.Struct):
    """`POST /v1/chat/completions` without `stream`."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut
