"""Local fake LLM upstreams on 127.0.0.1 speaking the OpenAI, Anthropic and Ollama wire formats over plain HTTP/1.1.

Each fake streams scripted turns token by token (chunked transfer, flushed per event), records every request,
fails on demand (HTTP status with the vendor's error body, hang, dropped connection) and notices when the client
goes away mid-stream.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self

DEFAULT_TOKENS = ("Hello", " from", " the", " fake", " upstream.")


@dataclass(frozen=True)
class FakeToolCall:
    """A tool call the fake model makes. A `str` for arguments is sent verbatim (e.g. malformed JSON).

    `id=None` lets the fake make one up; `id=""` streams the call without an id, as some OpenAI-compatible servers do.
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)

    def arguments_dict(self) -> dict[str, Any]:
        return json.loads(self.arguments) if isinstance(self.arguments, str) else self.arguments


@dataclass(frozen=True)
class Turn:
    """One scripted model answer: text tokens, tool calls, and (Anthropic) a thinking block before them.

    `reason` is sent as the vendor's own finish/stop/done reason instead of the one the turn implies.
    """

    tokens: Sequence[str] = ()
    tool_calls: Sequence[FakeToolCall] = ()
    thinking: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class _ClientGone(Exception):
    """The client closed the connection."""


class _Drop(Exception):
    """Scripted failure: cut the connection mid-stream."""


class _Stopping(Exception):
    """The fake is shutting down."""


class _Out:
    """Writes one chunked streaming response, pausing between tokens, watching for a vanished client."""

    def __init__(self, handler: _Handler, fake: FakeUpstream) -> None:
        self.handler = handler
        self.fake = fake
        self.tokens_sent = 0

    def begin(self, content_type: str) -> None:
        self.handler.send_response(200)
        self.handler.send_header("Content-Type", content_type)
        self.handler.send_header("Transfer-Encoding", "chunked")
        self.handler.send_header("Cache-Control", "no-cache")
        self.handler.end_headers()
        self._flush()

    def send(self, frame: bytes) -> None:
        self._write(b"%x\r\n%s\r\n" % (len(frame), frame))

    def token(self, frame: bytes) -> None:
        """Send a token frame, `delay` seconds after the previous one; cut the stream if `drop_after` says so."""
        if self.tokens_sent:
            self.fake.pause(self.handler.connection, self.fake.delay)
        if self.fake.drop_after is not None and self.tokens_sent >= self.fake.drop_after:
            raise _Drop
        self.send(frame)
        self.tokens_sent += 1

    def end(self) -> None:
        self.fake.mark_completed()  # before the last chunk: a client that sees the end finds the fake done
        self._write(b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        try:
            self.handler.wfile.write(data)
        except OSError:
            raise _ClientGone from None
        self._flush()

    def _flush(self) -> None:
        try:
            self.handler.wfile.flush()
        except OSError:
            raise _ClientGone from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.fake.dispatch(self, "GET")

    def do_POST(self) -> None:
        self.server.fake.dispatch(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _Server(ThreadingHTTPServer):
    """A threading server that tracks its connections and worker threads so `stop()` can end and join them."""

    daemon_threads = True

    def __init__(self, fake: FakeUpstream) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self.workers: list[threading.Thread] = []
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        worker = threading.Thread(target=self._work, args=(request, client_address), daemon=True)
        with self.lock:
            self.connections.add(request)
            self.workers.append(worker)
        worker.start()

    def _work(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass
        finally:
            with self.lock:
                self.connections.discard(request)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None

    def close_connections(self) -> None:
        with self.lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class FakeUpstream:
    """Shared machinery; subclasses speak one vendor's wire format."""

    vendor: ClassVar[str] = "fake"
    chat_path: ClassVar[str] = ""
    url_suffix: ClassVar[str] = ""

    def __init__(
        self,
        tokens: Sequence[str] | None = None,
        *,
        turns: Sequence[Turn] | None = None,
        delay: float = 0.0,
        status: int | None = None,
        hang: bool = False,
        drop_after: int | None = None,
        models: Sequence[str] = ("fake-model",),
        prompt_tokens: int = 13,
        error_message: str | None = None,
        report_usage: bool = True,
    ) -> None:
        self.turns: list[Turn] = list(turns) if turns else [Turn(tokens=tuple(tokens or DEFAULT_TOKENS))]
        self.delay = delay
        self.status = status
        self.hang = hang
        self.drop_after = drop_after
        self.models = list(models)
        self.prompt_tokens = prompt_tokens
        self.error_message = error_message
        self.report_usage = report_usage
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self.disconnected = threading.Event()
        self.finished = threading.Event()
        self.completed = 0
        self._chats = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> Self:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        for worker in list(self._server.workers):
            worker.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.url_suffix}"

    # -- observations ----------------------------------------------------------------------------------------------

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path == self.chat_path]

    @property
    def last_body(self) -> dict[str, Any]:
        body = self.chat_requests[-1].body
        assert isinstance(body, dict)
        return body

    def wait_disconnect(self, timeout: float = 2.0) -> bool:
        return self.disconnected.wait(timeout)

    # -- request handling ------------------------------------------------------------------------------------------

    def dispatch(self, handler: _Handler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.requests.append(Recorded(method, path, headers, body))
        try:
            self._serve(handler, method, path, body)
        except _ClientGone:
            self._gone(handler)
        except _Drop:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
        except _Stopping:
            handler.close_connection = True

    def _serve(self, handler: _Handler, method: str, path: str, body: Any) -> None:
        if self.hang:
            self.pause(handler.connection, 3600)
            return
        if method == "POST" and path == self.chat_path:
            if self.status is not None:
                self.send_json(handler, self.status, self.error_body(self.status, self.error_message))
                return
            turn = self._next_turn()
            problem = self.invalid(body)
            if problem:
                with self._lock:
                    self.completed += 1  # answered, with the vendor's 400
                self.send_json(handler, 400, self.error_body(400, problem))
            elif self.wants_stream(body):
                self.stream(_Out(handler, self), turn, body)
            else:
                self._generate(handler, turn)
                answer = self.complete(turn, body)
                self.mark_completed()
                self.send_json(handler, 200, answer)
            return
        self.route_other(handler, method, path)

    def _generate(self, handler: _Handler, turn: Turn) -> None:
        """A whole answer takes as long as its stream would (`delay` per token after the first), the client watched
        meanwhile; `drop_after` cuts the connection once that many tokens would have been made."""
        count = len(turn.tokens)
        if self.drop_after is not None and count > self.drop_after:
            self.pause(handler.connection, self.delay * max(self.drop_after - 1, 0))
            raise _Drop
        if count > 1 and self.delay:
            self.pause(handler.connection, self.delay * (count - 1))

    def mark_completed(self) -> None:
        """Count a whole answer and set `finished`, before its last byte leaves (so no client outruns it)."""
        with self._lock:
            self.completed += 1
        self.finished.set()

    def route_other(self, handler: _Handler, method: str, path: str) -> None:
        self.send_json(handler, 404, self.error_body(404, f"no route for {method} {path}"))

    def _next_turn(self) -> Turn:
        with self._lock:
            index = self._chats
            self._chats += 1
        return self.turns[min(index, len(self.turns) - 1)]

    def _gone(self, handler: _Handler) -> None:
        handler.close_connection = True
        with self._lock:
            self.disconnects += 1
        self.disconnected.set()

    def pause(self, conn: socket.socket, seconds: float) -> None:
        """Sleep `seconds`, but notice at once when the client hangs up or the fake stops."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stopping.is_set():
                raise _Stopping
            try:
                readable, _, _ = select.select([conn], [], [], min(remaining, 0.05))
                if readable and conn.recv(1, socket.MSG_PEEK) == b"":
                    raise _ClientGone
            except (OSError, ValueError):
                raise _ClientGone from None
            if readable:  # the client sent more bytes (not expected); just wait the time out
                time.sleep(min(remaining, 0.05))

    @staticmethod
    def send_json(handler: _Handler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except OSError:
            raise _ClientGone from None

    @staticmethod
    def limited(turn: Turn, max_tokens: Any) -> tuple[list[str], bool]:
        """The turn's tokens cut to `max_tokens`, and whether they were cut."""
        tokens = list(turn.tokens)
        if isinstance(max_tokens, int) and len(tokens) > max_tokens:
            return tokens[:max_tokens], True
        return tokens, False

    # -- vendor hooks ----------------------------------------------------------------------------------------------

    def wants_stream(self, body: Any) -> bool:
        return bool(isinstance(body, dict) and body.get("stream"))

    def invalid(self, body: Any) -> str | None:
        return None if isinstance(body, dict) else "the body must be a JSON object"

    def error_body(self, status: int, message: str | None = None) -> Any:
        raise NotImplementedError

    def stream(self, out: _Out, turn: Turn, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def complete(self, turn: Turn, body: dict[str, Any]) -> Any:
        raise NotImplementedError


_MESSAGES = {
    400: "invalid request",
    401: "Incorrect API key provided",
    403: "forbidden",
    404: "not found",
    429: "Rate limit reached for requests",
    500: "The server had an error while processing your request",
    503: "The engine is currently overloaded",
}


def _message(status: int, message: str | None) -> str:
    return message or _MESSAGES.get(status, f"error {status}")


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {payload}\n\n".encode()


def _split(text: str, parts: int = 3) -> Iterator[str]:
    """`text` in up to `parts` fragments, as vendors stream tool-call JSON."""
    step = max(1, -(-len(text) // parts))
    for start in range(0, len(text), step):
        yield text[start : start + step]


class FakeOpenAI(FakeUpstream):
    """`POST /v1/chat/completions` (SSE chunks, `data: [DONE]`) and `GET /v1/models`."""

    vendor = "openai"
    chat_path = "/v1/chat/completions"
    url_suffix = "/v1"

    def error_body(self, status: int, message: str | None = None) -> Any:
        kind = {401: "invalid_request_error", 429: "requests", 400: "invalid_request_error"}.get(
            status, "server_error"
        )
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        return {"error": {"message": _message(status, message), "type": kind, "param": None, "code": code}}

    def route_other(self, handler: _Handler, method: str, path: str) -> None:
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
            self.send_json(handler, 200, {"object": "list", "data": data})
            return
        super().route_other(handler, method, path)

    def _chunk(self, body: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model", ""),
                "choices": [choice],
            }
        )

    def _usage(self, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def _finish(self, turn: Turn, cut: bool) -> str:
        if turn.reason is not None:
            return turn.reason
        return "tool_calls" if turn.tool_calls else "length" if cut else "stop"

    def invalid(self, body: Any) -> str | None:
        if isinstance(body, dict) and "tool_choice" in body and not body.get("tools"):
            return (
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."
            )
        return super().invalid(body)

    def stream(self, out: _Out, turn: Turn, body: dict[str, Any]) -> None:
        tokens, cut = self.limited(turn, body.get("max_tokens"))
        out.begin("text/event-stream")
        out.send(self._chunk(body, {"role": "assistant", "content": ""}))
        for token in tokens:
            out.token(self._chunk(body, {"content": token}))
        for index, call in enumerate(turn.tool_calls):
            head = {
                "index": index,
                "id": f"call_fake{index}" if call.id is None else call.id or None,
                "type": "function",
            }
            out.send(
                self._chunk(
                    body, {"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]}
                )
            )
            for fragment in _split(call.arguments_json()):
                out.send(
                    self._chunk(body, {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
                )
        out.send(self._chunk(body, {}, self._finish(turn, cut)))
        if self.report_usage and (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model"),
            }
            out.send(_sse({**usage, "choices": [], "usage": self._usage(len(tokens))}))
        out.send(_sse("[DONE]"))
        out.end()

    def complete(self, turn: Turn, body: dict[str, Any]) -> Any:
        tokens, cut = self.limited(turn, body.get("max_tokens"))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
        if turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_fake{i}" if call.id is None else call.id,  # "": no id, as in the stream
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json()},
                }
                for i, call in enumerate(turn.tool_calls)
            ]
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish(turn, cut)}
            ],
            **({"usage": self._usage(len(tokens))} if self.report_usage else {}),
        }


class FakeAnthropic(FakeUpstream):
    """`POST /v1/messages` (named SSE events) and `GET /v1/models`; rejects sampling parameters like the current API."""

    vendor = "anthropic"
    chat_path = "/v1/messages"

    def error_body(self, status: int, message: str | None = None) -> Any:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": _message(status, message)}}

    def invalid(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "the body must be a JSON object"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        for name in ("temperature", "top_p", "top_k"):
            if name in body:
                return f"{name}: Extra inputs are not permitted"
        if "tool_choice" in body and not body.get("tools"):
            return "tool_choice may only be specified while providing tools"
        return None

    def route_other(self, handler: _Handler, method: str, path: str) -> None:
        if method == "GET" and path == "/v1/models":
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in self.models
            ]
            page = {"data": data, "has_more": False, "first_id": self.models[0], "last_id": self.models[-1]}
            self.send_json(handler, 200, page)
            return
        super().route_other(handler, method, path)

    def _reason(self, turn: Turn, cut: bool) -> str:
        if turn.reason is not None:
            return turn.reason
        return "tool_use" if turn.tool_calls else "max_tokens" if cut else "end_turn"

    def _message(
        self, body: dict[str, Any], content: list[Any], reason: str | None, output: int
    ) -> dict[str, Any]:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": content,
            "stop_reason": reason,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": output},
        }

    def stream(self, out: _Out, turn: Turn, body: dict[str, Any]) -> None:
        tokens, cut = self.limited(turn, body.get("max_tokens"))
        out.begin("text/event-stream")
        out.send(
            _sse({"type": "message_start", "message": self._message(body, [], None, 1)}, "message_start")
        )
        index = 0
        if turn.thinking is not None:
            self._block(
                out,
                index,
                {"type": "thinking", "thinking": "", "signature": ""},
                [
                    {"type": "thinking_delta", "thinking": turn.thinking},
                    {"type": "signature_delta", "signature": "sig-fake"},
                ],
            )
            index += 1
        if tokens:
            out.send(
                _sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
            )
            out.send(_sse({"type": "ping"}, "ping"))
            for token in tokens:
                delta = {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": token},
                }
                out.token(_sse(delta, "content_block_delta"))
            out.send(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
            index += 1
        for n, call in enumerate(turn.tool_calls):
            start = {"type": "tool_use", "id": call.id or f"toolu_fake{n}", "name": call.name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in _split(call.arguments_json())]
            self._block(out, index, start, deltas)
            index += 1
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._reason(turn, cut), "stop_sequence": None},
            "usage": {"output_tokens": len(tokens)},
        }
        out.send(_sse(delta, "message_delta"))
        out.send(_sse({"type": "message_stop"}, "message_stop"))
        out.end()

    @staticmethod
    def _block(out: _Out, index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        out.send(
            _sse(
                {"type": "content_block_start", "index": index, "content_block": start}, "content_block_start"
            )
        )
        for delta in deltas:
            out.send(
                _sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta")
            )
        out.send(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))

    def complete(self, turn: Turn, body: dict[str, Any]) -> Any:
        tokens, cut = self.limited(turn, body.get("max_tokens"))
        content: list[dict[str, Any]] = []
        if turn.thinking is not None:
            content.append({"type": "thinking", "thinking": turn.thinking, "signature": "sig-fake"})
        if tokens:
            content.append({"type": "text", "text": "".join(tokens)})
        content.extend(
            {"type": "tool_use", "id": c.id or f"toolu_fake{n}", "name": c.name, "input": c.arguments_dict()}
            for n, c in enumerate(turn.tool_calls)
        )
        return self._message(body, content, self._reason(turn, cut), len(tokens))


class FakeOllama(FakeUpstream):
    """`POST /api/chat` (NDJSON, streaming unless `"stream": false`) and `GET /api/tags`."""

    vendor = "ollama"
    chat_path = "/api/chat"

    def error_body(self, status: int, message: str | None = None) -> Any:
        return {"error": _message(status, message)}

    def wants_stream(self, body: Any) -> bool:
        return not (isinstance(body, dict) and body.get("stream") is False)

    def route_other(self, handler: _Handler, method: str, path: str) -> None:
        if method == "GET" and path == "/api/tags":
            models = [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "2025-01-01T00:00:00Z",
                    "size": 1,
                    "digest": "0" * 64,
                    "details": {"format": "gguf", "family": "fake"},
                }
                for m in self.models
            ]
            self.send_json(handler, 200, {"models": models})
            return
        super().route_other(handler, method, path)

    def _line(self, body: dict[str, Any], message: dict[str, Any], done: bool, **extra: Any) -> bytes:
        line = {
            "model": body.get("model", ""),
            "created_at": "2025-01-01T00:00:00Z",
            "message": message,
            "done": done,
        }
        return (json.dumps({**line, **extra}) + "\n").encode()

    def _calls(self, turn: Turn) -> list[dict[str, Any]]:
        calls = []
        for call in turn.tool_calls:
            item: dict[str, Any] = {"function": {"name": call.name, "arguments": call.arguments_dict()}}
            if call.id:
                item["id"] = call.id
            calls.append(item)
        return calls

    def _final(self, turn: Turn, cut: bool, count: int) -> dict[str, Any]:
        final: dict[str, Any] = {
            "done_reason": turn.reason or ("length" if cut else "stop"),
            "total_duration": 1000,
        }
        if self.report_usage:
            final.update(prompt_eval_count=self.prompt_tokens, eval_count=count)
        return final

    def stream(self, out: _Out, turn: Turn, body: dict[str, Any]) -> None:
        tokens, cut = self.limited(turn, (body.get("options") or {}).get("num_predict"))
        out.begin("application/x-ndjson")
        for token in tokens:
            out.token(self._line(body, {"role": "assistant", "content": token}, False))
        if turn.tool_calls:
            out.send(
                self._line(body, {"role": "assistant", "content": "", "tool_calls": self._calls(turn)}, False)
            )
        out.send(
            self._line(
                body, {"role": "assistant", "content": ""}, True, **self._final(turn, cut, len(tokens))
            )
        )
        out.end()

    def complete(self, turn: Turn, body: dict[str, Any]) -> Any:
        tokens, cut = self.limited(turn, (body.get("options") or {}).get("num_predict"))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
        if turn.tool_calls:
            message["tool_calls"] = self._calls(turn)
        line = {
            "model": body.get("model", ""),
            "created_at": "2025-01-01T00:00:00Z",
            "message": message,
            "done": True,
        }
        return {**line, **self._final(turn, cut, len(tokens))}
