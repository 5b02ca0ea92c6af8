"""Agent profiles and the runtime that turns one query into a stream of events (start, chunk..., end | error)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from specai.config import AgentSettings, Settings
from specai.errors import AgentNotFoundError, InvalidRequestError, ProviderUnavailableError, SpecaiError
from specai.providers import ChatMessage, GenerationOptions, Provider, build_provider, default_model

DEFAULT_AGENT = "default"
_MAX_TRACKED_SESSIONS = 100_000


@dataclass(frozen=True)
class Agent:
    """A resolved agent: its profile merged with `[model]`, and whether its provider can run."""

    id: str
    description: str
    provider_name: str
    model: str
    temperature: float | None
    max_tokens: int | None
    memory_k: int
    allowed_tools: tuple[str, ...] | None
    denied_tools: tuple[str, ...] | None
    provider: Provider | None
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        """True when queries to this agent can run."""
        return self.provider is not None


@dataclass(frozen=True)
class QueryInput:
    """A query as the runtime sees it (wire-independent)."""

    message: str
    agent: str | None = None
    session_id: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass
class AgentEvent:
    """One step of a run, mirroring the wire's StreamChunk `type`."""

    type: str  # start | chunk | end | error
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The StreamChunk JSON object."""
        return {"type": self.type, **self.data}


@dataclass(frozen=True)
class Run:
    """A validated query bound to its agent and session; `events()` executes it."""

    agent: Agent
    session_id: str
    messages: tuple[ChatMessage, ...]
    options: GenerationOptions

    async def events(self) -> AsyncIterator[AgentEvent]:
        """Stream the run; errors from the provider end it with an `error` event instead of raising."""
        started = time.monotonic()
        run_id = f"run-{time.time_ns() // 1000}"
        yield AgentEvent("start", {"session_id": self.session_id, "agent": self.agent.id})
        assert self.agent.provider is not None
        try:
            async for text in self.agent.provider.stream(self.messages, self.options):
                if text:
                    yield AgentEvent("chunk", {"text": text})
        except SpecaiError as exc:
            yield AgentEvent("error", {"message": exc.message, "code": exc.code})
            return
        metadata = {
            "timestamp": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "model": self.options.model,
            "processing_time_ms": int((time.monotonic() - started) * 1000),
            "run_id": run_id,
        }
        yield AgentEvent("end", {"metadata": metadata})


class AgentRuntime:
    """Holds the agents built from settings and starts runs; one per server."""

    def __init__(self, settings: Settings) -> None:
        profiles = dict(settings.agents) or {DEFAULT_AGENT: AgentSettings()}
        mock_delay = settings.model.mock_delay_ms / 1000
        self.agents = {name: _resolve(name, p, settings, mock_delay) for name, p in sorted(profiles.items())}
        self.default_agent = settings.default_agent or (
            DEFAULT_AGENT if DEFAULT_AGENT in self.agents else None
        )
        if self.default_agent is None:
            self.default_agent = next(iter(self.agents))
        self.sessions: dict[str, None] = {}  # seen since start, oldest first (persisted sessions come later)

    def get(self, name: str | None) -> Agent:
        """The named agent, or the default one."""
        agent_id = name or self.default_agent
        assert agent_id is not None
        try:
            return self.agents[agent_id]
        except KeyError:
            raise AgentNotFoundError(
                f"agent '{agent_id}' not found; available: {', '.join(self.agents)}"
            ) from None

    def prepare(self, query: QueryInput) -> Run:
        """Validate a query and bind it to its agent; raises before anything is streamed."""
        if not query.message.strip():
            raise InvalidRequestError("message must not be empty")
        if query.temperature is not None and not 0 <= query.temperature <= 2:
            raise InvalidRequestError("temperature must be between 0 and 2")
        if query.max_tokens is not None and query.max_tokens <= 0:
            raise InvalidRequestError("max_tokens must be greater than 0")
        agent = self.get(query.agent)
        if agent.provider is None:
            raise ProviderUnavailableError(f"agent '{agent.id}' cannot run: {agent.unavailable_reason}")
        if query.session_id is not None and not 1 <= len(query.session_id) <= 128:
            raise InvalidRequestError("session_id must be 1 to 128 characters")
        session_id = query.session_id or str(uuid.uuid4())
        self.sessions[session_id] = None
        if len(self.sessions) > _MAX_TRACKED_SESSIONS:
            del self.sessions[next(iter(self.sessions))]
        messages = [ChatMessage("user", query.message)]
        if agent.description:
            messages.insert(0, ChatMessage("system", agent.description))
        options = GenerationOptions(
            model=agent.model,
            temperature=query.temperature if query.temperature is not None else agent.temperature,
            max_tokens=query.max_tokens if query.max_tokens is not None else agent.max_tokens,
        )
        return Run(agent, session_id, tuple(messages), options)


def _resolve(name: str, profile: AgentSettings, settings: Settings, mock_delay: float) -> Agent:
    provider_name = (profile.model_provider or settings.model.provider).lower()
    provider: Provider | None = None
    reason = None
    try:
        provider = build_provider(provider_name, mock_delay=mock_delay)
    except ProviderUnavailableError as exc:
        reason = exc.message
    return Agent(
        id=name,
        description=profile.prompt or "",
        provider_name=provider_name,
        model=profile.model_name or settings.model.model_name or default_model(provider_name),
        temperature=profile.temperature if profile.temperature is not None else settings.model.temperature,
        max_tokens=profile.max_tokens if profile.max_tokens is not None else settings.model.max_tokens,
        memory_k=profile.memory_k,
        allowed_tools=profile.allowed_tools,
        denied_tools=profile.denied_tools,
        provider=provider,
        unavailable_reason=reason,
    )
