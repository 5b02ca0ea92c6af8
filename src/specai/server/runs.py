"""Running an agent to its end, for the routes that answer with the whole reply (`/query`, chat completions)."""

from __future__ import annotations

from typing import Any

from specai.agents.runtime import Run
from specai.errors import ExecutionError


async def finish(run: Run) -> tuple[str, dict[str, Any]]:
    """Run to the end with non-streaming model calls; return the text and metadata, or raise the run's failure
    (502/504/500)."""
    parts: list[str] = []
    metadata: dict[str, Any] = {}
    async for event in run.events(stream=False):
        if event.type == "chunk":
            parts.append(event.data["text"])
        elif event.type == "end":
            metadata = event.data["metadata"]
    if run.failure is not None:
        raise run.failure
    if not metadata:
        raise ExecutionError("the agent ended without an answer")
    return "".join(parts), metadata
