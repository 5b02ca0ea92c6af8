"""A lean OpenAI-compatible upstream for bench_stream.py and bench_relay.py: a fixed answer at a fixed pace.

`POST /v1/chat/completions` with `"stream": true` answers as OpenAI does (chunked SSE: a role chunk, one chunk
per token, a finish chunk, a usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`); token i
goes out `i * delay` after the first, on an absolute schedule so the pauses do not add up drift. Without
`"stream": true` it answers the whole text at once as one `chat.completion` object. Model `fake-model-short`
answers SHORT_TOKENS tokens without any pause (what bench_relay.py loads for requests/s); any other model gets
the TOKENS-token paced answer. `GET /v1/models` lists both. HTTP/1.1 keep-alive, asyncio, in a process of its
own so its pacing never competes with the measuring client for the GIL.

Run:  python benchmarks/_fake_openai.py TOKENS DELAY_MS [SHORT_TOKENS]   (SHORT_TOKENS defaults to 16)
It binds 127.0.0.1 on a free port, prints `listening on 127.0.0.1:PORT` and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

HOST = "127.0.0.1"
MODEL = "fake-model"
SHORT_MODEL = "fake-model-short"
SHORT_TOKENS = 16


def answer_tokens(count: int) -> list[str]:
    """The tokens of the fake's answer; bench_stream.py checks the relayed text against them."""
    return [f" w{i}" for i in range(count)]


def sse(payload: Any) -> bytes:
    """One SSE event as one HTTP chunk."""
    data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def completion_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [choice],
    }


def completion(text: str, model: str, completion_tokens: int) -> dict[str, Any]:
    """A whole (non-streamed) chat completion of `text`."""
    message = {"role": "assistant", "content": text, "refusal": None}
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 8,
            "completion_tokens": completion_tokens,
            "total_tokens": 8 + completion_tokens,
        },
    }


def json_response(status: str, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class Upstream:
    """Serves the chat answers; `tokens`, `delay` (seconds) and `short` are fixed for the process's life."""

    def __init__(self, tokens: list[str], delay: float, short: list[str]) -> None:
        self.tokens = tokens
        self.delay = delay
        self.short = short

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests on one keep-alive connection until the client closes it."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            while True:
                request_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in header_lines if line)
                }
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                method, path, _ = request_line.split(" ", 2)
                if method == "POST" and path == "/v1/chat/completions":
                    await self.chat(writer, json.loads(raw) if raw else {})
                elif method == "GET" and path == "/v1/models":
                    listing = {
                        "object": "list",
                        "data": [
                            {"id": name, "object": "model", "owned_by": "bench"}
                            for name in (MODEL, SHORT_MODEL)
                        ],
                    }
                    writer.write(json_response("200 OK", listing))
                else:
                    error = {"message": f"no route for {method} {path}", "type": "invalid_request_error"}
                    writer.write(json_response("404 Not Found", {"error": error}))
                await writer.drain()
        writer.close()

    async def chat(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        short = body.get("model") == SHORT_MODEL
        tokens, delay = (self.short, 0.0) if short else (self.tokens, self.delay)
        if not body.get("stream"):
            answer = completion("".join(tokens), str(body.get("model", MODEL)), len(tokens))
            writer.write(json_response("200 OK", answer))
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
        )
        writer.write(sse(completion_chunk({"role": "assistant", "content": ""})))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, token in enumerate(tokens):
            if index and delay:
                await asyncio.sleep(start + index * delay - loop.time())
            writer.write(sse(completion_chunk({"content": token})))
            await writer.drain()
        writer.write(sse(completion_chunk({}, "stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": 8,
                "completion_tokens": len(tokens),
                "total_tokens": 8 + len(tokens),
            }
            writer.write(sse({**completion_chunk({}), "choices": [], "usage": usage}))
        writer.write(sse(b"[DONE]") + b"0\r\n\r\n")


async def serve(tokens: int, delay_ms: float, short_tokens: int = SHORT_TOKENS) -> None:
    upstream = Upstream(answer_tokens(tokens), delay_ms / 1000, answer_tokens(short_tokens))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await asyncio.start_server(upstream.handle, HOST, 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {HOST}:{port}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    short_count = int(sys.argv[3]) if len(sys.argv) > 3 else SHORT_TOKENS
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]), short_count))
