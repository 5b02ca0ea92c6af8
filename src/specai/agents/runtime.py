"""Agent profiles and the runtime that turns a query into events: start, chunk/tool_call/tool_result..., end | error."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from specai.agents.sessions import NewMessage, new_session_id
from specai.agents.tools import Tool, ToolContext, ToolPolicy, offered_tools, run_tool
from specai.config import AgentSettings, Settings
from specai.errors import (
    AgentNotFoundError,
    ConfigError,
    ExecutionError,
    InvalidRequestError,
    NotFoundError,
    ProviderUnavailableError,
    SpecaiError,
)
from specai.graph.store import GraphStore
from specai.ids import check_new_session_id, check_session_id
from specai.providers import (
    ChatMessage,
    Finished,
    GenerationOptions,
    ModelRequest,
    Provider,
    ProviderSpec,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolSpec,
    Usage,
    build_provider,
    default_model,
)
from specai.providers.base import ToolChoice
from specai.providers.mock import parse_script
from specai.users.access import LOCAL, Principal

if TYPE_CHECKING:
    from specai.agents.sessions import SessionStore, StoredMessage

log = logging.getLogger("specai.agents")
DEFAULT_AGENT = "default"
LOCAL_OWNER = "local"  # owner of sessions when auth is disabled


@dataclass(frozen=True)
class Agent:
    """A resolved agent: its profile merged with `[model]`, its tools, and whether its provider can run."""

    id: str
    description: str
    provider_name: str
    model: str
    base_url: str | None
    temperature: float | None
    max_tokens: int | None
    memory_k: int
    max_tool_iterations: int
    policy: ToolPolicy
    tools: tuple[Tool, ...]
    provider: Provider | None
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        """True when queries to this agent can run."""
        return self.provider is not None

    @property
    def allowed_tools(self) -> tuple[str, ...] | None:
        """The profile's allow-list patterns."""
        return self.policy.allowed

    @property
    def denied_tools(self) -> tuple[str, ...] | None:
        """The profile's deny-list patterns."""
        return self.policy.denied


@dataclass(frozen=True)
class QueryInput:
    """A query as the runtime sees it (wire-independent)."""

    message: str
    agent: str | None = None
    session_id: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None  # an extra system prompt for this query, after the agent's own


@dataclass(frozen=True)
class ClientRequest:
    """What an OpenAI-style request adds to a query: more sampling settings and, maybe, the client's own tools.

    With `tools` (even empty) the run offers those instead of the agent's and ends when the model calls one,
    returning the calls for the client to run; without, the agent runs its own tools on the server.
    """

    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    tools: tuple[ToolSpec, ...] | None = None
    tool_choice: ToolChoice | None = None


@dataclass
class AgentEvent:
    """One step of a run, mirroring the wire's StreamChunk `type`."""

    # start | chunk | tool_call | tool_result | end | error; a client tool's tool_call also has the call's `id`
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The StreamChunk JSON object."""
        return {"type": self.type, **self.data}


@dataclass
class Run:
    """A validated query bound to its agent, history and session; `events()` executes it once."""

    agent: Agent
    session_id: str
    owner: str
    messages: list[ChatMessage]
    options: GenerationOptions
    sessions: SessionStore | None = None
    context: ToolContext = field(default_factory=ToolContext)
    failure: SpecaiError | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # the client's tools, offered instead of the agent's: the model's calls of them end the run, for the client
    client_tools: tuple[ToolSpec, ...] | None = None
    tool_choice: ToolChoice | None = None
    client_calls: list[ToolCall] = field(default_factory=list)
    # why the last model call ended, in OpenAI's words (stop, length, tool_calls, content_filter); set before `end`
    finish_reason: str | None = None
    # False: each model call asks for the whole answer at once (one `chunk` per call), for callers that only keep
    # the end result; set by `events(stream=False)`
    stream_upstream: bool = True

    async def events(self, *, stream: bool = True) -> AsyncIterator[AgentEvent]:
        """Stream the run; provider failures end it with an `error` event (and `failure` set) instead of raising.

        `stream=False` makes every model call a non-streaming one: same events, but each call's text arrives as one
        `chunk` when the model has finished (cheaper when nobody watches the text grow).
        """
        self.stream_upstream = stream
        started = time.monotonic()
        run_id = f"run-{time.time_ns() // 1000}"
        yield AgentEvent("start", {"session_id": self.session_id, "agent": self.agent.id})
        new_messages = [self.messages[-1]]  # the user turn; stored only if the run succeeds
        usage = [0, 0, False]
        try:
            async for event in self._loop(new_messages, usage):
                yield event
        except SpecaiError as exc:
            self.failure = exc
            yield AgentEvent("error", {"message": exc.message, "code": exc.code})
            return
        except Exception:
            log.exception("agent '%s' failed", self.agent.id)
            self.failure = ExecutionError("the agent failed unexpectedly; the server log has the details")
            yield AgentEvent("error", {"message": self.failure.message, "code": self.failure.code})
            return
        if self.sessions is not None:
            await self.sessions.append(
                self.session_id, self.owner, self.agent.id, [_to_new(m) for m in new_messages]
            )
        metadata: dict[str, Any] = {
            "timestamp": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "model": self.options.model,
            "processing_time_ms": int((time.monotonic() - started) * 1000),
            "run_id": run_id,
        }
        if usage[2]:
            metadata["usage"] = {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": usage[0] + usage[1],
            }
        yield AgentEvent("end", {"metadata": metadata})

    def first_request(self) -> ModelRequest:
        """The model request of the run's first round (what `Provider.unsupported` is asked about)."""
        if self.client_tools is not None:
            return ModelRequest(tuple(self.messages), self.options, self.client_tools, self.tool_choice)
        offer = self._specs() if self.agent.max_tool_iterations else ()
        return ModelRequest(tuple(self.messages), self.options, offer)

    def _specs(self) -> tuple[ToolSpec, ...]:
        return tuple(tool.spec for tool in self.agent.tools if tool.usable(self.context))

    async def _loop(self, new_messages: list[ChatMessage], usage: list[Any]) -> AsyncIterator[AgentEvent]:
        assert self.agent.provider is not None
        if self.client_tools is not None:
            async for event in self._client_round(usage):
                yield event
            return
        specs = self._specs()
        for round_number in range(self.agent.max_tool_iterations + 1):
            offer = specs if round_number < self.agent.max_tool_iterations else ()
            request = ModelRequest(tuple(self.messages), self.options, offer)
            text: list[str] = []
            calls: list[ToolCall] = []
            async for event in self._model_call(request, text, calls, usage):
                yield event
            reply = ChatMessage("assistant", "".join(text), tool_calls=tuple(calls))
            self.messages.append(reply)
            new_messages.append(reply)
            if not calls:
                self.finish_reason = self.finish_reason or "stop"
                return
            for call in calls:
                yield AgentEvent("tool_call", {"name": call.name, "arguments": call.arguments})
                result = await run_tool(call.name, call.arguments, self.agent.policy, self.context)
                self.tool_calls.append({"name": call.name, "arguments": call.arguments, **result.as_dict()})
                yield AgentEvent("tool_result", {"name": call.name, "result": result.as_dict()})
                answer = ChatMessage("tool", result.for_model(), tool_call_id=call.id, name=call.name)
                self.messages.append(answer)
                new_messages.append(answer)

    async def _client_round(self, usage: list[Any]) -> AsyncIterator[AgentEvent]:
        """One model call offering the client's tools; its tool calls end the run, for the client to run them."""
        request = ModelRequest(tuple(self.messages), self.options, self.client_tools or (), self.tool_choice)
        async for event in self._model_call(request, [], self.client_calls, usage):
            yield event
        for call in self.client_calls:
            yield AgentEvent("tool_call", {"id": call.id, "name": call.name, "arguments": call.arguments})
        if self.client_calls:
            self.finish_reason = "tool_calls"  # whatever the vendor called it (Ollama says "stop")
        else:
            self.finish_reason = self.finish_reason or "stop"

    async def _model_call(
        self, request: ModelRequest, text: list[str], calls: list[ToolCall], usage: list[Any]
    ) -> AsyncIterator[AgentEvent]:
        """One model call: text as `chunk` events (one, if not streamed); tool calls, usage and finish reason collected."""
        assert self.agent.provider is not None
        self.finish_reason = None
        if not self.stream_upstream:
            response = await self.agent.provider.generate(request)
            if response.text:
                text.append(response.text)
                yield AgentEvent("chunk", {"text": response.text})
            calls.extend(response.tool_calls)
            if response.usage is not None:
                usage[0] += response.usage.prompt_tokens or 0
                usage[1] += response.usage.completion_tokens or 0
                usage[2] = True
            self.finish_reason = response.finish_reason
            return
        async with contextlib.aclosing(self.agent.provider.stream(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta) and event.text:
                    text.append(event.text)
                    yield AgentEvent("chunk", {"text": event.text})
                elif isinstance(event, ToolCallRequested):
                    calls.append(event.call)
                elif isinstance(event, Usage):
                    usage[0] += event.prompt_tokens or 0
                    usage[1] += event.completion_tokens or 0
                    usage[2] = True
                elif isinstance(event, Finished):
                    self.finish_reason = event.reason


class AgentRuntime:
    """Holds the agents built from settings and starts runs; one per server."""

    def __init__(self, settings: Settings, sessions: SessionStore | None = None) -> None:
        profiles = dict(settings.agents) or {DEFAULT_AGENT: AgentSettings()}
        self.agents = {name: _resolve(name, p, settings) for name, p in sorted(profiles.items())}
        self.default_agent: str = settings.default_agent or (
            DEFAULT_AGENT if DEFAULT_AGENT in self.agents else next(iter(self.agents))
        )
        self.sessions = sessions
        self.graph: GraphStore | None = None

    def get(self, name: str | None) -> Agent:
        """The named agent, or the default one."""
        agent_id = name or self.default_agent
        try:
            return self.agents[agent_id]
        except KeyError:
            raise AgentNotFoundError(
                f"agent '{agent_id}' not found; available: {', '.join(self.agents)}"
            ) from None

    async def prepare(
        self, query: QueryInput, owner: str = LOCAL_OWNER, principal: Principal | None = None
    ) -> Run:
        """Validate a query, check session ownership and load its history; raises before anything is streamed.

        The run's graph tools act as `principal` (by default the owner as an ordinary user; LOCAL when auth is off).
        """
        agent = self._check(query)
        session_id = query.session_id or new_session_id()
        history: Sequence[StoredMessage] = ()
        if self.sessions is not None and query.session_id is not None:
            found = await self.sessions.owner_of(check_session_id(session_id))
            if found is None:
                check_new_session_id(session_id)  # refused before anything streams, not at the end
            if found is not None and found != owner:
                raise NotFoundError(f"no session '{session_id}'")
            if found is not None and query.agent is None:  # continuing: stay with the session's agent
                agent = self._check(replace(query, agent=(await self.sessions.get(session_id, owner)).agent))
            if agent.memory_k:
                history = await self.sessions.history(session_id, owner, agent.memory_k)
        messages = [ChatMessage("system", agent.description)] if agent.description else []
        if query.system:
            messages.append(ChatMessage("system", query.system))
        messages += [_from_stored(m) for m in history]
        messages.append(ChatMessage("user", query.message))
        if principal is None:
            principal = LOCAL if owner == LOCAL.user_id else Principal(owner, owner, "user", "write")
        context = ToolContext(session_id, self.graph, principal)
        return Run(agent, session_id, owner, messages, self._options(agent, query), self.sessions, context)

    def prepare_stateless(
        self,
        agent_id: str | None,
        messages: Sequence[ChatMessage],
        query: QueryInput,
        extra: ClientRequest | None = None,
    ) -> Run:
        """A run over a caller-supplied conversation that is not stored (the OpenAI-compatible API).

        Raises before anything is streamed when the agent's provider cannot honour a parameter (`details["param"]`
        names it), so a client never gets silently less than it asked for.
        """
        agent = self._check(
            QueryInput(
                message="-", agent=agent_id, temperature=query.temperature, max_tokens=query.max_tokens
            )
        )
        extra = extra or ClientRequest()
        prompt = [ChatMessage("system", agent.description)] if agent.description else []
        options = replace(
            self._options(agent, query),
            top_p=extra.top_p,
            stop=extra.stop,
            seed=extra.seed,
            presence_penalty=extra.presence_penalty,
            frequency_penalty=extra.frequency_penalty,
            response_format=extra.response_format,
        )
        run = Run(
            agent,
            f"chatcmpl-{uuid.uuid4().hex}",
            LOCAL_OWNER,
            [*prompt, *messages],
            options,
            None,
            client_tools=extra.tools,
            tool_choice=extra.tool_choice,
        )
        assert agent.provider is not None  # _check refused an agent without one
        param = agent.provider.unsupported(run.first_request())
        if param is not None:
            raise InvalidRequestError(
                f"{param} is not supported by agent '{agent.id}' (provider {agent.provider_name})",
                details={"param": param},
            )
        return run

    def _check(self, query: QueryInput) -> Agent:
        if not query.message.strip():
            raise InvalidRequestError("message must not be empty")
        if "\x00" in query.message:
            raise InvalidRequestError("message must not contain NUL characters")
        if query.system is not None and "\x00" in query.system:
            raise InvalidRequestError("system must not contain NUL characters")
        if query.temperature is not None and not 0 <= query.temperature <= 2:
            raise InvalidRequestError("temperature must be between 0 and 2")
        if query.max_tokens is not None and query.max_tokens <= 0:
            raise InvalidRequestError("max_tokens must be greater than 0")
        if query.session_id is not None and not 1 <= len(query.session_id) <= 128:
            raise InvalidRequestError("session_id must be 1 to 128 characters")
        agent = self.get(query.agent)
        if agent.provider is None:
            raise ProviderUnavailableError(f"agent '{agent.id}' cannot run: {agent.unavailable_reason}")
        return agent

    @staticmethod
    def _options(agent: Agent, query: QueryInput) -> GenerationOptions:
        return GenerationOptions(
            model=agent.model,
            temperature=query.temperature if query.temperature is not None else agent.temperature,
            max_tokens=query.max_tokens if query.max_tokens is not None else agent.max_tokens,
        )

    async def aclose(self) -> None:
        """Close every provider's connections."""
        for agent in self.agents.values():
            if agent.provider is not None:
                await agent.provider.aclose()


def _resolve(name: str, profile: AgentSettings, settings: Settings) -> Agent:
    model = settings.model
    provider_name = (profile.model_provider or model.provider).lower()
    base_url = profile.base_url or model.base_url
    try:
        script = parse_script(profile.mock_script or [], f"[agents.{name}] mock_script")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    provider: Provider | None = None
    reason = None
    try:
        spec = ProviderSpec(
            provider=provider_name,
            base_url=base_url,
            api_key_source=profile.api_key_source or model.api_key_source,
            timeout=model.request_timeout_secs,
            mock_delay=model.mock_delay_ms / 1000,
            mock_script=script,
        )
        provider = build_provider(spec)
    except ProviderUnavailableError as exc:
        reason = exc.message
    policy = ToolPolicy(profile.allowed_tools, profile.denied_tools)
    return Agent(
        id=name,
        description=profile.prompt or "",
        provider_name=provider_name,
        model=profile.model_name or model.model_name or default_model(provider_name),
        base_url=base_url,
        temperature=profile.temperature if profile.temperature is not None else model.temperature,
        max_tokens=profile.max_tokens if profile.max_tokens is not None else model.max_tokens,
        memory_k=profile.memory_k,
        max_tool_iterations=profile.max_tool_iterations,
        policy=policy,
        tools=offered_tools(policy),
        provider=provider,
        unavailable_reason=reason,
    )


def _from_stored(message: StoredMessage) -> ChatMessage:
    calls = tuple(ToolCall(c["id"], c["name"], c.get("arguments", {})) for c in message.tool_calls or ())
    return ChatMessage(message.role, message.content, calls, message.tool_call_id, message.name)  # type: ignore[arg-type]


def _to_new(message: ChatMessage) -> NewMessage:
    calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls] or None
    # PostgreSQL text cannot hold NUL: a model that emits one still gets its turn stored
    content = message.content.replace("\x00", "\ufffd")
    return NewMessage(message.role, content, calls, message.tool_call_id, message.name)
