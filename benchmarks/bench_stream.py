"""Streaming latency of `specai /stream` against the upstream it relays, measured in one run.

Why: issue 3 makes `/stream` relay tokens as the model produces them; this script shows what the relay costs
(target: first-token overhead < 10 ms median, and 100 concurrent streams complete with no errors).
It starts a fake OpenAI-compatible upstream in its own process (benchmarks/_fake_openai.py: N tokens at a fixed
pace) and the real `specai server` (auth off, throwaway SPECAI_HOME, `[model] provider = "openai"` with
`base_url` at the fake). Then, in interleaved rounds (direct, specai, specai, direct, ...), it streams the same
answer straight from the upstream and through `POST /stream` over pinned TLS, timing the first token (the first
non-empty `delta.content`, or the first `chunk` event) and the end (`[DONE]`, or the `end` event). Both sides use
the same client (httpx + httpx-sse on a warm keep-alive connection) and every relayed text is checked against
the upstream's; the overhead is specai minus direct per round (pairs run back to back), as median and p95.
Last, N concurrent `/stream` requests, each on a new connection (TLS handshake included), must each end with
`end` after >= 10 chunks and the whole text.

Run:  . .venv/bin/activate && python benchmarks/bench_stream.py [--rounds 20] [--tokens 200]
      [--token-delay-ms 5] [--concurrency 100] [--json]
Exits 1 when a server does not start or any stream fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _common import HOST, BenchError, in_scratch, note, running, specai_env, start_specai_server, wait_until
from _fake_openai import MODEL, answer_tokens
from httpx_sse import SSEError, aconnect_sse

FAKE_UPSTREAM = Path(__file__).with_name("_fake_openai.py")
PROMPT = "Say something long."
MIN_CHUNKS = 10
TARGET_TTFT_OVERHEAD_MS = 10.0
STREAM_TIMEOUT = 60.0

# An SSE `data` field read as ("chunk", text), ("end", "") or ("skip", ""); raises StreamFailed on an error event.
Interpret = Callable[[str], tuple[str, str]]


class StreamFailed(Exception):
    """One stream did not deliver the whole answer."""


@dataclass
class Timing:
    """One stream, timed from just before the request is sent."""

    ttft_ms: float
    total_ms: float
    chunks: int


@dataclass
class Target:
    """Where to stream from and how to read what comes back."""

    name: str
    url: str
    body: dict[str, Any]
    interpret: Interpret


def upstream_event(data: str) -> tuple[str, str]:
    """An OpenAI chat-completion chunk: its text, or the end at `[DONE]`."""
    if data == "[DONE]":
        return "end", ""
    text = "".join(choice["delta"].get("content") or "" for choice in json.loads(data)["choices"])
    return ("chunk", text) if text else ("skip", "")


def specai_event(data: str) -> tuple[str, str]:
    """A specai StreamChunk: `chunk` text, `end`, or `error` (a failure)."""
    event = json.loads(data)
    if event["type"] == "chunk":
        return "chunk", event["text"]
    if event["type"] == "end":
        return "end", ""
    if event["type"] == "error":
        raise StreamFailed(f"error event {event.get('code')}: {event.get('message')}")
    return "skip", ""


async def timed_stream(client: httpx.AsyncClient, target: Target, expected: str) -> Timing:
    """Stream once; return its timing, or raise StreamFailed unless it ended with the whole expected text."""
    parts: list[str] = []
    first = end = 0.0
    start = time.perf_counter()
    try:
        async with aconnect_sse(client, "POST", target.url, json=target.body) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                raise StreamFailed(f"HTTP {source.response.status_code}: {source.response.text[:300]}")
            async for event in source.aiter_sse():
                kind, text = target.interpret(event.data)
                if kind == "chunk":
                    if not parts:
                        first = time.perf_counter()
                    parts.append(text)
                elif kind == "end" and not end:
                    end = (
                        time.perf_counter()
                    )  # read on to the end of the body: the connection stays in the pool
    except (httpx.HTTPError, SSEError, ValueError, KeyError, TypeError) as exc:
        raise StreamFailed(f"{type(exc).__name__}: {exc}") from None
    if not end:
        raise StreamFailed(f"the stream closed after {len(parts)} chunks without its end")
    if len(parts) < MIN_CHUNKS:
        raise StreamFailed(f"only {len(parts)} chunks (at least {MIN_CHUNKS} expected)")
    if "".join(parts) != expected:
        raise StreamFailed(
            f"the text differs from the upstream's ({len(''.join(parts))} vs {len(expected)} chars)"
        )
    return Timing((first - start) * 1000, (end - start) * 1000, len(parts))


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def spread(values: list[float]) -> dict[str, float]:
    """Median and p95, rounded for the report."""
    return {"p50": round(statistics.median(values), 2), "p95": round(p95(values), 2)}


def figures(timings: list[Timing]) -> dict[str, Any]:
    ttft, total = [t.ttft_ms for t in timings], [t.total_ms for t in timings]
    return {"ttft_ms": spread(ttft), "total_ms": spread(total), "chunks_min": min(t.chunks for t in timings)}


async def interleaved(
    targets: list[Target], count: int, ctx: ssl.SSLContext, expected: str
) -> dict[str, list[Timing]]:
    """One untimed warm-up stream per target, then `count` timed ones each in ABBA order on one warm client."""
    timings: dict[str, list[Timing]] = {target.name: [] for target in targets}
    async with httpx.AsyncClient(verify=ctx, timeout=STREAM_TIMEOUT) as client:
        for target in targets:
            await timed_stream(client, target, expected)
        for index in range(count):
            for target in targets if index % 2 == 0 else targets[::-1]:
                timings[target.name].append(await timed_stream(client, target, expected))
            direct, relayed = (timings[target.name][-1] for target in targets)
            note(
                f"round {index + 1}: first token {direct.ttft_ms:6.2f} / {relayed.ttft_ms:6.2f} ms, "
                f"total {direct.total_ms:7.1f} / {relayed.total_ms:7.1f} ms (direct / specai)"
            )
    return timings


async def concurrent(target: Target, streams: int, ctx: ssl.SSLContext, expected: str) -> dict[str, Any]:
    """`streams` simultaneous streams, each on its own new connection; count the failures."""
    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(verify=ctx, timeout=STREAM_TIMEOUT, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(timed_stream(client, target, expected) for _ in range(streams)), return_exceptions=True
        )
        wall = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, Timing)]
    failures = [f"{type(r).__name__}: {r}" for r in results if not isinstance(r, Timing)]
    for failure in sorted(set(failures))[:5]:
        note(f"concurrent stream failed: {failure}")
    summary: dict[str, Any] = {
        "streams": streams,
        "ok": len(ok),
        "errors": len(failures),
        "wall_s": round(wall, 3),
    }
    return summary | figures(ok) if ok else summary


def paired_overheads(direct: list[Timing], relayed: list[Timing]) -> dict[str, dict[str, float]]:
    """specai minus direct, round by round (each pair ran back to back), as median and p95."""
    pairs = list(zip(direct, relayed, strict=True))
    return {
        "ttft_ms": spread([r.ttft_ms - d.ttft_ms for d, r in pairs]),
        "total_ms": spread([r.total_ms - d.total_ms for d, r in pairs]),
    }


def start_upstream(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> int:
    """Start the fake upstream in its own process; return its port."""
    log = tmp / "upstream.log"
    argv = [sys.executable, str(FAKE_UPSTREAM), str(args.tokens), str(args.token_delay_ms)]
    proc = stack.enter_context(running(argv, dict(os.environ), log))

    def port(text: str) -> int | None:
        found = re.search(r"listening on [\d.]+:(\d+)", text)
        return int(found[1]) if found else None

    upstream_port = wait_until(proc, log, port)
    note(
        f"fake upstream ready on {HOST}:{upstream_port} ({args.tokens} tokens, {args.token_delay_ms:g} ms apart)"
    )
    return upstream_port


def start_specai(upstream_port: int, tmp: Path, stack: contextlib.ExitStack) -> tuple[int, ssl.SSLContext]:
    """Start `specai server` (auth off) with its default agent on the fake upstream; return port and pin."""
    home, config = tmp / "home", tmp / "bench.config.toml"
    home.mkdir()
    config.write_text(
        "[model]\n"
        'provider = "openai"\n'
        f'model_name = "{MODEL}"\n'
        f'base_url = "http://{HOST}:{upstream_port}/v1"\n'
        'api_key_source = "not-needed"\n'
    )
    return start_specai_server(specai_env(home, config), tmp / "specai.log", stack)


def run(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Start both servers, time the interleaved rounds, then the concurrent streams; return every figure."""
    upstream_port = start_upstream(args, tmp, stack)
    specai_port, ctx = start_specai(upstream_port, tmp, stack)
    expected = "".join(answer_tokens(args.tokens))
    direct = Target(
        "direct",
        f"http://{HOST}:{upstream_port}/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        upstream_event,
    )
    relayed = Target("specai", f"https://{HOST}:{specai_port}/stream", {"message": PROMPT}, specai_event)
    try:
        timings = asyncio.run(interleaved([direct, relayed], args.rounds, ctx, expected))
    except StreamFailed as exc:
        raise BenchError(f"a timed stream failed: {exc}") from None
    note(f"{args.concurrency} concurrent streams through /stream ...")
    crowd = asyncio.run(concurrent(relayed, args.concurrency, ctx, expected))
    base, spec = figures(timings["direct"]), figures(timings["specai"])
    overhead = paired_overheads(timings["direct"], timings["specai"])
    pass_ttft = overhead["ttft_ms"]["p50"] < TARGET_TTFT_OVERHEAD_MS
    pass_crowd = crowd["errors"] == 0
    return {
        "tokens": args.tokens,
        "token_delay_ms": args.token_delay_ms,
        "rounds": args.rounds,
        "direct": base,
        "specai": spec,
        "overhead_ms": overhead,
        "ratio_total_specai_direct": round(spec["total_ms"]["p50"] / base["total_ms"]["p50"], 3),
        "concurrency": crowd,
        "target_ttft_overhead_ms": TARGET_TTFT_OVERHEAD_MS,
        "pass_ttft_overhead": pass_ttft,
        "pass_concurrency": pass_crowd,
        "pass": pass_ttft and pass_crowd,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"upstream: {result['tokens']} tokens, {result['token_delay_ms']:g} ms apart; "
        f"{result['rounds']} rounds per target, interleaved; times in ms"
    )
    print(f"{'':22}{'TTFT p50':>10}{'TTFT p95':>10}{'total p50':>11}{'total p95':>11}")
    rows = [
        ("direct (upstream)", result["direct"]),
        ("specai /stream", result["specai"]),
        ("overhead (paired)", result["overhead_ms"]),
    ]
    for label, row in rows:
        ttft, total = row["ttft_ms"], row["total_ms"]
        print(f"{label:22}{ttft['p50']:>10.2f}{ttft['p95']:>10.2f}{total['p50']:>11.1f}{total['p95']:>11.1f}")
    print(f"ratio of totals specai/direct: {result['ratio_total_specai_direct']:.3f}")
    verdict = "PASS" if result["pass_ttft_overhead"] else "BELOW"
    print(
        f"first-token overhead median: {result['overhead_ms']['ttft_ms']['p50']:.2f} ms "
        f"(target < {result['target_ttft_overhead_ms']:g} ms) {verdict}"
    )
    crowd = result["concurrency"]
    line = (
        f"{crowd['streams']} concurrent /stream: {crowd['ok']} ok, {crowd['errors']} errors, "
        f"wall {crowd['wall_s']:.2f} s"
    )
    if crowd["ok"]:
        line += (
            f"; per stream TTFT p50/p95 {crowd['ttft_ms']['p50']:.1f}/{crowd['ttft_ms']['p95']:.1f} ms, "
            f"total p50/p95 {crowd['total_ms']['p50']:.0f}/{crowd['total_ms']['p95']:.0f} ms, "
            f"fewest chunks {crowd['chunks_min']}"
        )
    print(f"{line} {'PASS' if result['pass_concurrency'] else 'BELOW'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed streams per target (default 20)")
    parser.add_argument(
        "--tokens", type=int, default=200, help="tokens in the upstream's answer (default 200)"
    )
    parser.add_argument(
        "--token-delay-ms", type=float, default=5.0, help="pause between upstream tokens (default 5)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="simultaneous /stream requests (default 100)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures on stdout")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.concurrency < 1:
        parser.error("--rounds and --concurrency must be at least 1")
    if args.tokens < MIN_CHUNKS:
        parser.error(f"--tokens must be at least {MIN_CHUNKS}")
    if args.token_delay_ms < 0:
        parser.error("--token-delay-ms must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = in_scratch("bench_stream", lambda tmp, stack: run(args, tmp, stack))
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    errors = result["concurrency"]["errors"]
    if errors:
        note(f"bench_stream: {errors} of {args.concurrency} concurrent streams failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
