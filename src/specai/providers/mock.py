"""Offline provider: a fixed reply streamed word by word, or a scripted sequence of replies and tool calls."""

from __future__ import annotations

import asyncio
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


class MockProvider(BaseProvider):
    """Streams words `delay` seconds apart. With a script, the n-th model call of a run plays step n.

    The step is chosen by counting assistant turns after the last user message, so a tool loop advances
    through the script; the last step repeats.
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

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        step = self._step(request)
        words = step.text.split(" ") if step.text else []
        if request.options.max_tokens is not None:
            words = words[: request.options.max_tokens]
        for index, word in enumerate(words):
            if index:
                await asyncio.sleep(self.delay)
            yield TextDelta(word if index == len(words) - 1 else word + " ")
        for name, arguments in step.tool_calls:
            yield ToolCallRequested(
                ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=name, arguments=arguments)
            )
        prompt = sum(len(m.content.split()) for m in request.messages)
        yield Usage(prompt_tokens=prompt, completion_tokens=len(words))
        yield Finished("tool_calls" if step.tool_calls else "stop")

    async def list_models(self) -> list[str]:
        return [MOCK_MODEL]
