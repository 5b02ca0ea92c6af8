"""Server-sent events, as every stream sends them (`/stream`, `/graph/stream`, `/v1/chat/completions`)."""

from __future__ import annotations

import msgspec


class StreamEvent(msgspec.Struct, omit_defaults=True):
    """One event of a text/event-stream: its name (`message` when it has none), its `id`, and its `data` line
    (a JSON object, or `[DONE]` at the end of a chat completion). Comment lines keep silent streams alive."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None
