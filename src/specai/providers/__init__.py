"""Model providers behind one interface: `mock` (offline), `openai` (and compatible servers), `anthropic`, `ollama`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from specai.config import resolve_secret
from specai.errors import ConfigError, ProviderUnavailableError
from specai.providers.base import (
    BaseProvider,
    ChatMessage,
    Finished,
    GenerationOptions,
    ModelEvent,
    ModelRequest,
    ModelResponse,
    Provider,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolChoice,
    ToolSpec,
    UpstreamError,
    UpstreamTimeoutError,
    Usage,
    collect,
)
from specai.providers.mock import MOCK_MODEL, MOCK_REPLY, MockProvider, MockStep

__all__ = [
    "MOCK_MODEL",
    "MOCK_REPLY",
    "BaseProvider",
    "ChatMessage",
    "Finished",
    "GenerationOptions",
    "MockProvider",
    "MockStep",
    "ModelEvent",
    "ModelRequest",
    "ModelResponse",
    "Provider",
    "ProviderSpec",
    "TextDelta",
    "ToolCall",
    "ToolCallRequested",
    "ToolChoice",
    "ToolSpec",
    "UpstreamError",
    "UpstreamTimeoutError",
    "Usage",
    "build_provider",
    "collect",
    "default_model",
    "resolve_api_key",
]

_DEFAULT_MODELS = {
    "mock": MOCK_MODEL,
    "openai": "gpt-4.1-mini",
    "anthropic": "claude-sonnet-4-6",
    "ollama": "llama3.2",
}
_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


@dataclass(frozen=True)
class ProviderSpec:
    """How to build one provider instance (resolved from an agent profile and `[model]`)."""

    provider: str
    base_url: str | None = None
    api_key_source: str | None = None
    timeout: float = 120.0
    mock_delay: float = 0.02
    mock_script: tuple[MockStep, ...] = ()


def default_model(provider: str) -> str:
    """The model used when neither the agent nor `[model]` names one."""
    return _DEFAULT_MODELS.get(provider, MOCK_MODEL)


def resolve_api_key(source: str | None, provider: str, env: Mapping[str, str] = os.environ) -> str | None:
    """Resolve `env:VAR`, `file:PATH` (trimmed, `~` expanded) or a literal; None falls back to the vendor's env var."""
    if source is None:
        default_env = _DEFAULT_KEY_ENV.get(provider)
        return env.get(default_env) if default_env else None
    try:
        return resolve_secret(source, "api_key_source", env)
    except ConfigError as exc:
        raise ProviderUnavailableError(exc.message) from None


def build_provider(spec: ProviderSpec, env: Mapping[str, str] = os.environ) -> Provider:
    """Create the provider for `spec`, or raise ProviderUnavailableError saying what to fix."""
    name = spec.provider
    if spec.base_url is not None:
        parts = urlsplit(spec.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProviderUnavailableError(f"base_url '{spec.base_url}' is not an http(s) URL")
    if name == "mock":
        return MockProvider(delay=spec.mock_delay, script=spec.mock_script)
    key = resolve_api_key(spec.api_key_source, name, env)
    if name == "openai":
        from specai.providers.openai import OpenAIProvider

        if key is None and spec.base_url is None:
            raise ProviderUnavailableError(
                "no OpenAI API key: set OPENAI_API_KEY or api_key_source (or base_url for a local server)"
            )
        return OpenAIProvider(api_key=key or "not-needed", base_url=spec.base_url, timeout=spec.timeout)
    if name == "anthropic":
        from specai.providers.anthropic import AnthropicProvider

        if key is None:
            raise ProviderUnavailableError("no Anthropic API key: set ANTHROPIC_API_KEY or api_key_source")
        return AnthropicProvider(api_key=key, base_url=spec.base_url, timeout=spec.timeout)
    if name == "ollama":
        from specai.providers.ollama import OllamaProvider

        return OllamaProvider(
            base_url=spec.base_url or "http://127.0.0.1:11434", api_key=key, timeout=spec.timeout
        )
    raise ProviderUnavailableError(f"unknown provider '{name}'")
