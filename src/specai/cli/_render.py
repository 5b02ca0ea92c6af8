"""Show a streamed answer: live Markdown on a terminal, plain text as it arrives when piped."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.live import Live
from rich.markdown import Markdown

from specai.cli._console import err, out


class StreamRenderer:
    """Receives chunks and tool events; renders them for a person or for a pipe."""

    def __init__(self, terminal: bool | None = None) -> None:
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.text = ""
        self.live: Live | None = None
        if self.terminal:
            self.live = Live(Markdown(""), console=out, refresh_per_second=12, vertical_overflow="visible")
            self.live.start()

    def chunk(self, text: str) -> None:
        """Append a piece of the answer."""
        self.text += text
        if self.live is not None:
            self.live.update(Markdown(self.text))
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def tool_call(self, name: str, arguments: Any) -> None:
        """Note that the agent called a tool."""
        err.print(f"[dim]tool {name}({json.dumps(arguments)})[/]", markup=True, highlight=False)

    def tool_result(self, name: str, result: dict[str, Any]) -> None:
        """Note what the tool answered."""
        shown = result.get("output") if result.get("success") else f"error: {result.get('error')}"
        err.print(f"[dim]  -> {shown}[/]", markup=True, highlight=False)

    def close(self) -> None:
        """Finish the output (a final newline when piped)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        elif self.text and not self.text.endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()
