"""Model providers behind one small interface; `mock` is the offline default, real vendors plug in here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from specai.errors import ProviderUnavailableError

MOCK_REPLY = "This is a mock response from the test provider."
MOCK_MODEL = "mock-model"


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn sent to a model."""

    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class GenerationOptions:
    """Per-call sampling settings; None means the provider's default."""

    model: str
    temperature: float | None = None
    max_tokens: int | None = None


class Provider(Protocol):
    """What the agent runtime needs from a model vendor."""

    name: str

    def stream(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        """Yield text deltas as the model produces them."""
        ...


class MockProvider:
    """Offline provider: streams a fixed reply word by word, `delay` seconds apart."""

    name = "mock"

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay

    async def stream(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        words = MOCK_REPLY.split(" ")
        if options.max_tokens is not None:
            words = words[: options.max_tokens]
        for index, word in enumerate(words):
            if index:
                await asyncio.sleep(self.delay)
            yield word if index == len(words) - 1 else word + " "


def default_model(provider: str) -> str:
    """The model used when neither the agent nor `[model]` names one."""
    return {"mock": MOCK_MODEL, "openai": "gpt-4.1-mini", "anthropic": "claude-3-5-sonnet-latest"}.get(
        provider, "llama3"
    )


def build_provider(name: str, *, mock_delay: float = 0.02) -> Provider:
    """Create the provider called `name`, or raise ProviderUnavailableError saying why it cannot run."""
    if name == "mock":
        return MockProvider(delay=mock_delay)
    raise ProviderUnavailableError(
        f"provider '{name}' is not available in this version of specai; use provider = \"mock\""
    )
