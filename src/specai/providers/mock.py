"""Offline provider: a fixed reply streamed word by word, or a scripted sequence of replies and tool calls."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from specai.providers.base import (
    BaseProvider,
    Finished,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    Usage,
    forced_tool,
    unmet_tool_choice,
)

MOCK_REPLY = "This is a mock response from the test provider."
MOCK_MODEL = "mock-model"


@dataclass(frozen=True)
class MockStep:
    """One scripted model turn: some text, and/or tool calls."""

    text: str = ""
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()


def parse_script(raw: Sequence[Any], where: str) -> tuple[MockStep, ...]:
    """Validate `mock_script` entries: `{text = "..."}` and/or `{tool_call = {name, arguments}}`."""
    steps = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict) or not set(entry) <= {"text", "tool_call", "tool_calls"} or not entry:
            raise ValueError(f"{where}[{index}] must be a table with 'text' and/or 'tool_call'")
        calls = entry.get("tool_calls", [])
        if "tool_call" in entry:
            calls = [entry["tool_call"], *calls]
        parsed = []
        for call in calls:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError(
                    f"{where}[{index}]: a tool call needs a 'name' (and optional 'arguments' table)"
                )
            arguments = call.get("arguments", {})
            if not isinstance(arguments, dict):
                raise ValueError(f"{where}[{index}]: tool call 'arguments' must be a table")
            parsed.append((call["name"], arguments))
        text = entry.get("text", "")
        if not isinstance(text, str):
            raise ValueError(f"{where}[{index}]: 'text' must be a string")
        steps.append(MockStep(text=text, tool_calls=tuple(parsed)))
    return tuple(steps)


@dataclass(frozen=True)
class _Reply:
    """What one mock call answers after the request's options were applied."""

    words: list[str]
    tool_calls: tuple[tuple[str, dict[str, Any]], ...]
    reason: str


def as_json(text: str) -> str:
    """`text` as-is when it already is JSON, else `{"text": text}`: what a JSON response_format gets from the mock."""
    try:
        json.loads(text)
    except ValueError:
        return json.dumps({"text": text})
    return text


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    hits = [index for index in (text.find(s) for s in stop if s) if index >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class MockProvider(BaseProvider):
    """Streams words `delay` seconds apart. With a script, the n-th model call of a run plays step n.

    The step is chosen by counting assistant turns after the last user message, so a tool loop advances
    through the script; the last step repeats.

    Options act as a model's would on the fixed reply, and the finish reason says what happened:
    - `response_format` json_object/json_schema: the text as-is when it already parses as JSON, else
      `{"text": <text>}` (valid JSON, not fitted to the schema);
    - `stop`: the text ends before the earliest stop string ("stop"), and no tool calls follow it;
    - `max_tokens` counts words: more words are cut ("length"), and no tool calls follow a cut answer;
    - `tool_choice` "none" drops the step's tool calls; a named function keeps only calls of that tool;
      "required" or a named function that the step cannot satisfy (no such scripted call, or no such tool
      offered) is refused by `unsupported()` as "tool_choice": the mock never invents a call;
    - `temperature`, `top_p`, `seed` and the penalties are accepted and change nothing (the reply is fixed).
    Usage counts words, of the prompt and of what was sent.
    """

    name = "mock"

    def __init__(self, delay: float = 0.02, script: tuple[MockStep, ...] = ()) -> None:
        self.delay = delay
        self.script = script

    def _step(self, request: ModelRequest) -> MockStep:
        if not self.script:
            return MockStep(text=MOCK_REPLY)
        turns = 0
        for message in reversed(request.messages):
            if message.role == "user":
                break
            if message.role == "assistant":
                turns += 1
        return self.script[min(turns, len(self.script) - 1)]

    def unsupported(self, request: ModelRequest) -> str | None:
        if unmet_tool_choice(request):
            return "tool_choice"
        if request.tool_choice == "required" or forced_tool(request.tool_choice):
            return None if self._calls(self._step(request), request) else "tool_choice"
        return None

    @staticmethod
    def _calls(step: MockStep, request: ModelRequest) -> tuple[tuple[str, dict[str, Any]], ...]:
        """The step's tool calls that `tool_choice` lets through."""
        if request.tool_choice == "none":
            return ()
        name = forced_tool(request.tool_choice)
        return tuple(c for c in step.tool_calls if name is None or c[0] == name)

    def _reply(self, request: ModelRequest) -> _Reply:
        options = request.options
        step = self._step(request)
        text = step.text
        if options.response_format is not None:
            text = as_json(text)
        text, stopped = cut_at_stop(text, options.stop)
        words = text.split(" ") if text else []
        if options.max_tokens is not None and len(words) > options.max_tokens:
            return _Reply(words[: options.max_tokens], (), "length")
        calls = () if stopped else self._calls(step, request)
        return _Reply(words, calls, "tool_calls" if calls else "stop")

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        reply = self._reply(request)
        words = reply.words
        for index, word in enumerate(words):
            if index:
                await asyncio.sleep(self.delay)
            piece = word if index == len(words) - 1 else word + " "
            if piece:
                yield TextDelta(piece)
        for name, arguments in reply.tool_calls:
            yield ToolCallRequested(
                ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=name, arguments=arguments)
            )
        prompt = sum(len(m.content.split()) for m in request.messages)
        yield Usage(prompt_tokens=prompt, completion_tokens=len(" ".join(words).split()))
        yield Finished(reply.reason)

    async def list_models(self) -> list[str]:
        return [MOCK_MODEL]
