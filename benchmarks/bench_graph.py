"""Knowledge-graph write throughput and change-stream latency of `specai server`, on SQLite and PostgreSQL, in one run.

Why: the graph issue adds `POST /graph/nodes` (a write plus its changelog row in one transaction) and
`GET /graph/stream` (SSE of a session's changes, target: pushed within 100 ms of the commit). DESIGN.md §7 wants
speed reported as ratios measured in one run, so for each database this script starts its own real
`specai server` (auth off, as on loopback; throwaway SPECAI_HOME; for PostgreSQL a throwaway database
`specai_bench_<hex>` created with asyncpg and dropped at the end, even on failure) and measures, one backend at a
time so they do not compete for the two cores:

1. Node creates per second over keep-alive HTTP/1.1 + TLS with 1 and with 16 concurrent connections, against the
   same server's `GET /health` loaded the same way, interleaved (health, create, create, health, ...) and reported
   as medians. `create/health` is the share of the bare request rate left once a node and its changelog row are
   committed; every create must answer 201 and every health check 200, or the run fails.
2. Change-to-event latency: N watchers (default 100) follow one session over `GET /graph/stream`, then a writer
   creates nodes in it one at a time, ~20 ms apart. Latency is client-side: from just before the writer sends
   `POST /graph/nodes` to when a watcher's socket delivers the event (stamped in the protocol's
   `data_received`, before any JSON parsing), matched by `data.entity_id`. Every watcher must get every event
   exactly once, in order (the event `id:` is the changelog id); the counts are verified and reported. Also
   shown: the POST round trip (an upper bound on when the commit happened), the fastest and slowest watcher
   per write, and their spread (the fan-out cost of waking and serving N watchers).

Read: `req/s` rows per concurrency, the create/health ratio, then `p50/p99` of the latency against the 100 ms
target. Both sides run on this machine, so the client's own event loop is part of what is measured; a large
fan-out spread with a small fastest-watcher time means the cost is per watcher, not per commit.

Run:  . .venv/bin/activate && python benchmarks/bench_graph.py [--duration 2] [--rounds 3] [--watchers 100]
      [--writes 50] [--interval-ms 20] [--json]
PostgreSQL is expected at postgresql://postgres@127.0.0.1:5432/postgres (trust auth); SPECAI_BENCH_PG_URL overrides
that admin URL (the user must be allowed to create databases).
Exits 1 when a server or the database does not start, any request fails, or any watcher misses an event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from _common import HOST, BenchError, note, specai_env, start_specai_server
from bench_http import parse_head
from sqlalchemy.engine import make_url

PG_URL_ENV = "SPECAI_BENCH_PG_URL"
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgresql")
CONCURRENCY = (1, 16)
WARMUP_SECONDS = 0.5
TARGET_LATENCY_MS = 100.0
CONNECT_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 15.0  # after the last write, every watcher must have every event within this
DUPLICATE_GRACE = 0.3  # then listen this much longer so a duplicate would be seen
THROUGHPUT_SESSION = "bench-graph-throughput"


class WatchFailed(Exception):
    """A watcher could not subscribe."""


# --- throughput ------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One measurement of one target at one concurrency."""

    rps: float
    p50_ms: float | None
    ok: int
    errors: int
    first_error: str | None = None


@dataclass
class Target:
    """A request to load: how to build the i-th one and which status is a success."""

    name: str
    build: Callable[[int], bytes]
    status: int
    samples: list[Sample] = field(default_factory=list)


def health_request(port: int) -> Callable[[int], bytes]:
    request = f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: application/json\r\n\r\n".encode()
    return lambda _: request


def create_request(port: int, session_id: str) -> Callable[[int], bytes]:
    """`POST /graph/nodes` with label `n<i>` and properties `{"i": i}`."""
    head = f"POST /graph/nodes HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"

    def build(i: int) -> bytes:
        body = json.dumps(
            {"session_id": session_id, "node_type": "entity", "label": f"n{i}", "properties": {"i": i}}
        ).encode()
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    return build


class Counter:
    """Request numbers shared by every connection of a run, so every label is distinct."""

    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


async def drive(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    target: Target,
    counter: Counter,
    deadline: float,
    latencies: list[float],
    failures: list[str],
) -> int:
    """Send requests on one connection until `deadline`; record successes' latencies, return the error count."""
    reader, writer = conn
    errors = 0
    try:
        while time.perf_counter() < deadline:
            request = target.build(counter.next())
            start = time.perf_counter()
            writer.write(request)
            status, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
            body = await reader.readexactly(length)
            if status == target.status:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
                failures.append(f"{target.name} answered {status}: {body[:300]!r}")
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        errors += 1  # the connection is unusable: stop it, the error fails the run
        failures.append(f"{target.name}: {type(exc).__name__}: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return errors


async def load(
    port: int, ctx: ssl.SSLContext, target: Target, counter: Counter, seconds: float, connections: int
) -> Sample:
    """Open every connection first, then drive them all for `seconds` in this event loop."""
    conns = await asyncio.gather(*(asyncio.open_connection(HOST, port, ssl=ctx) for _ in range(connections)))
    latencies: list[float] = []
    failures: list[str] = []
    start = time.perf_counter()
    errors = await asyncio.gather(
        *(drive(c, target, counter, start + seconds, latencies, failures) for c in conns)
    )
    elapsed = time.perf_counter() - start
    p50 = statistics.median(latencies) * 1000 if latencies else None
    return Sample(
        len(latencies) / elapsed, p50, len(latencies), sum(errors), failures[0] if failures else None
    )


def target_summary(target: Target) -> dict[str, Any]:
    p50s = [s.p50_ms for s in target.samples if s.p50_ms is not None]
    first_error = next((s.first_error for s in target.samples if s.first_error), None)
    return {
        "rps_median": round(statistics.median(s.rps for s in target.samples), 1),
        "rps_runs": [round(s.rps, 1) for s in target.samples],
        "p50_ms_median": round(statistics.median(p50s), 3) if p50s else None,
        "requests_ok": sum(s.ok for s in target.samples),
        "errors": sum(s.errors for s in target.samples),
        "first_error": first_error,
    }


async def throughput(
    port: int, ctx: ssl.SSLContext, backend: str, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Health and create at each concurrency: a warm-up each, then `rounds` measurements each in ABBA order."""
    counter = Counter()
    results: dict[str, dict[str, Any]] = {}
    for connections in CONCURRENCY:
        targets = [
            Target("health", health_request(port), 200),
            Target("create", create_request(port, THROUGHPUT_SESSION), 201),
        ]
        for target in targets:
            await load(port, ctx, target, counter, WARMUP_SECONDS, connections)
        for index in range(args.rounds):
            for target in targets if index % 2 == 0 else targets[::-1]:
                sample = await load(port, ctx, target, counter, args.duration, connections)
                target.samples.append(sample)
                note(
                    f"{backend} c={connections} round {index + 1}: {target.name:6} "
                    f"{sample.rps:8.0f} req/s, {sample.errors} errors"
                )
        health, create = (target_summary(target) for target in targets)
        ratio = create["rps_median"] / health["rps_median"] if health["rps_median"] else 0.0
        results[str(connections)] = {
            "health": health,
            "create": create,
            "ratio_create_health": round(ratio, 3),
        }
    return results


# --- change-stream latency -------------------------------------------------------------------------------------


@dataclass
class Event:
    """One SSE event as it arrived: when (perf_counter seconds), its `id:`, `event:` and `data:`."""

    at: float
    id: str | None
    kind: str | None
    data: str


class Watcher(asyncio.Protocol):
    """One `GET /graph/stream` over TLS, parsed as bytes arrive: HTTP head, chunked body, SSE events.

    Each event is stamped in `data_received`, the first moment its bytes are in Python, so the time other
    watchers' events take to process in this event loop is not charged to it.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.events: list[Event] = []
        self.lost: str | None = None
        self._raw = bytearray()
        self._sse = bytearray()
        self._head_done = False
        self._chunked = False
        self._chunk_left = 0
        self._crlf_due = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self._fail(f"the stream closed before it started ({self.lost})")

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self._raw += data
        if not self._head_done and not self._read_head():
            return
        if self._chunked:
            self._dechunk()
        else:
            self._sse += self._raw
            self._raw.clear()
        self._events(now)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, message: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(WatchFailed(message))

    def _read_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._raw[:end]).decode("latin-1")
        del self._raw[: end + 4]
        status_line, *lines = head.split("\r\n")
        status = int(status_line.split()[1])
        if status != 200:
            self._fail(f"GET /graph/stream answered {status}")
            self.close()
            return False
        headers = {
            name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)
        }
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self._head_done = True
        return True

    def _dechunk(self) -> None:
        raw = self._raw
        while True:
            if self._chunk_left:
                piece = raw[: self._chunk_left]
                del raw[: len(piece)]
                self._sse += piece
                self._chunk_left -= len(piece)
                if self._chunk_left:
                    return
                self._crlf_due = True
            if self._crlf_due:
                if len(raw) < 2:
                    return
                del raw[:2]
                self._crlf_due = False
            end = raw.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(raw[:end]).split(b";")[0], 16)
            del raw[: end + 2]
            if size == 0:
                return
            self._chunk_left = size

    def _events(self, now: float) -> None:
        if self._sse.endswith(b"\r"):
            return  # maybe half of a CRLF: wait for the rest
        text = bytes(self._sse).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, rest = text.split(b"\n\n")
        self._sse = bytearray(rest)
        for block in blocks:
            fields: dict[str, list[str]] = {}
            for line in block.decode().split("\n"):
                if not line or line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
            if "data" not in fields:
                continue
            ids, kinds = fields.get("id"), fields.get("event")
            if kinds == ["open"]:  # the stream's first event says where it starts: our cursor is fixed
                if not self.subscribed.done():
                    self.subscribed.set_result(None)
                continue
            self.events.append(
                Event(now, ids[-1] if ids else None, kinds[-1] if kinds else None, "\n".join(fields["data"]))
            )


async def subscribe(port: int, ctx: ssl.SSLContext, session_id: str, gate: asyncio.Semaphore) -> Watcher:
    """Connect a watcher and wait for the stream's `open` event (a few at a time, so handshakes do not pile up)."""
    request = (
        f"GET /graph/stream?session_id={session_id} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    ).encode()
    async with gate:
        loop = asyncio.get_running_loop()
        _, watcher = await loop.create_connection(lambda: Watcher(request), HOST, port, ssl=ctx)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await watcher.subscribed
        except BaseException:
            watcher.close()
            raise
    return watcher


@dataclass
class Write:
    """One `POST /graph/nodes` of the latency phase."""

    node_id: int
    sent: float
    answered: float


async def writer(port: int, ctx: ssl.SSLContext, session_id: str, count: int, interval: float) -> list[Write]:
    """Create `count` nodes one at a time on one keep-alive connection, starting one every `interval` s."""
    reader, stream = await asyncio.open_connection(HOST, port, ssl=ctx)
    build = create_request(port, session_id)
    writes: list[Write] = []
    try:
        start = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
            request = build(i)
            sent = time.perf_counter()
            stream.write(request)
            status, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
            body = await reader.readexactly(length)
            answered = time.perf_counter()
            if status != 201:
                raise BenchError(f"POST /graph/nodes answered {status}: {body[:300]!r}")
            writes.append(Write(int(json.loads(body)["id"]), sent, answered))
    finally:
        stream.close()
        with contextlib.suppress(OSError):
            await stream.wait_closed()
    return writes


def percentile(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def spread(values: list[float]) -> dict[str, float]:
    """p50, p99 and max in ms, rounded for the report."""
    return {
        "p50": round(statistics.median(values), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
    }


def check_watcher(watcher: Watcher, writes: list[Write]) -> tuple[dict[str, int], dict[int, float]]:
    """Compare what one watcher got with what was written: problem counts, and arrival time per node id."""
    expected = [w.node_id for w in writes]
    wanted = set(expected)
    seen: list[int] = []
    arrivals: dict[int, float] = {}
    problems = {"missing": 0, "duplicates": 0, "out_of_order": 0, "unexpected": 0, "id_mismatch": 0}
    last_id = 0
    for event in watcher.events:
        try:
            data = json.loads(event.data)
            entity_id, change_id = int(data["entity_id"]), int(data["id"])
        except (ValueError, KeyError, TypeError):
            problems["unexpected"] += 1  # e.g. a `reset` or `error` event
            continue
        if event.kind is not None or entity_id not in wanted or data.get("operation") != "create":
            problems["unexpected"] += 1
            continue
        if event.id != str(change_id):
            problems["id_mismatch"] += 1
        if change_id <= last_id:
            problems["out_of_order"] += 1
        last_id = max(last_id, change_id)
        if entity_id in arrivals:
            problems["duplicates"] += 1
            continue
        arrivals[entity_id] = event.at
        seen.append(entity_id)
    problems["missing"] = len(wanted - set(seen))
    if seen != [node_id for node_id in expected if node_id in arrivals]:
        problems["out_of_order"] += 1
    return problems, arrivals


async def stream_latency(
    port: int, ctx: ssl.SSLContext, backend: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Subscribe the watchers, write, wait for every delivery, then verify and time them."""
    session_id = f"bench-graph-watch-{secrets.token_hex(4)}"
    gate = asyncio.Semaphore(16)
    results = await asyncio.gather(
        *(subscribe(port, ctx, session_id, gate) for _ in range(args.watchers)), return_exceptions=True
    )
    watchers = [r for r in results if isinstance(r, Watcher)]
    try:
        failed = [r for r in results if not isinstance(r, Watcher)]
        if failed:
            raise BenchError(f"{len(failed)} of {args.watchers} watchers did not subscribe: {failed[0]!r}")
        note(f"{backend}: {len(watchers)} watchers subscribed; writing {args.writes} nodes")
        await asyncio.sleep(0.3)  # let every stream reach its wait for the next commit
        writes = await writer(port, ctx, session_id, args.writes, args.interval_ms / 1000)
        deadline = time.perf_counter() + DELIVERY_TIMEOUT
        # watchers are plain lists filled by reader tasks: poll them until all are full or time is up
        while time.perf_counter() < deadline and any(len(w.events) < len(writes) for w in watchers):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(DUPLICATE_GRACE)
    finally:
        for watcher in watchers:
            watcher.close()
    totals = {"missing": 0, "duplicates": 0, "out_of_order": 0, "unexpected": 0, "id_mismatch": 0}
    exact = 0
    latencies: list[float] = []
    per_write: dict[int, list[float]] = {w.node_id: [] for w in writes}
    sent = {w.node_id: w.sent for w in writes}
    for watcher in watchers:
        problems, arrivals = check_watcher(watcher, writes)
        exact += not any(problems.values())
        for name, count in problems.items():
            totals[name] += count
        for node_id, at in arrivals.items():
            ms = (at - sent[node_id]) * 1000
            latencies.append(ms)
            per_write[node_id].append(ms)
    if not latencies:
        raise BenchError(f"{backend}: no watcher received any event")
    complete = [times for times in per_write.values() if times]
    firsts, lasts = [min(t) for t in complete], [max(t) for t in complete]
    figures: dict[str, Any] = {
        "watchers": len(watchers),
        "writes": len(writes),
        "events_expected": len(watchers) * len(writes),
        "events_received": sum(len(w.events) for w in watchers),
        "watchers_exact": exact,
        **totals,
        "latency_ms": spread(latencies),
        "fastest_watcher_ms": spread(firsts),
        "slowest_watcher_ms": spread(lasts),
        "fanout_spread_ms": spread([last - first for first, last in zip(firsts, lasts, strict=True)]),
        "post_rtt_ms": spread([(w.answered - w.sent) * 1000 for w in writes]),
    }
    figures["delivery_ok"] = exact == len(watchers) == args.watchers
    figures["pass_latency"] = figures["latency_ms"]["p99"] <= TARGET_LATENCY_MS
    note(
        f"{backend}: latency p50 {figures['latency_ms']['p50']:.1f} ms, p99 {figures['latency_ms']['p99']:.1f} ms;"
        f" {exact}/{len(watchers)} watchers got every event once, in order"
    )
    return figures


# --- databases and servers -------------------------------------------------------------------------------------


def pg_admin_url() -> str:
    """The maintenance database URL, in the plain postgresql:// form asyncpg wants."""
    raw = os.environ.get(PG_URL_ENV) or DEFAULT_PG_ADMIN_URL
    return make_url(raw).set(drivername="postgresql").render_as_string(hide_password=False)


async def pg_admin(url: str, sql: str) -> None:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise BenchError(f"PostgreSQL is not usable at {shown} (set {PG_URL_ENV}): {exc}") from None
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def throwaway_database(stack: contextlib.ExitStack) -> str:
    """Create `specai_bench_<hex>`, dropped when `stack` closes (after the server, which is entered later)."""
    admin = pg_admin_url()
    name = f"specai_bench_{secrets.token_hex(6)}"
    asyncio.run(pg_admin(admin, f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        try:
            asyncio.run(pg_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except (BenchError, asyncpg.PostgresError, OSError) as exc:
            note(f"bench_graph: could not drop database {name}; drop it by hand: {exc}")

    stack.callback(drop)
    note(f"created database {name}")
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


def measure_backend(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start a server on `backend` (and its database), measure it, stop it; return its figures."""
    with contextlib.ExitStack() as stack:
        home, config = tmp / backend / "home", tmp / backend / "bench.config.toml"
        home.mkdir(parents=True)
        config.write_text("")
        if backend == "postgresql":
            config.write_text(f'[database]\nurl = "{throwaway_database(stack)}"\n')
        port, ctx = start_specai_server(specai_env(home, config), tmp / backend / "specai.log", stack)
        rates = asyncio.run(throughput(port, ctx, backend, args))
        stream = asyncio.run(stream_latency(port, ctx, backend, args))
    return {"throughput": rates, "stream": stream}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "duration_s": args.duration,
        "rounds": args.rounds,
        "concurrency": list(CONCURRENCY),
        "watchers": args.watchers,
        "writes": args.writes,
        "interval_ms": args.interval_ms,
        "target_latency_ms": TARGET_LATENCY_MS,
        "auth": False,
    }
    asyncio.run(pg_admin(pg_admin_url(), "SELECT 1"))  # fail now rather than after the SQLite half
    for backend in BACKENDS:
        result[backend] = measure_backend(backend, args, tmp)
    result["ratio_create_postgresql_sqlite"] = {
        str(c): round(
            result["postgresql"]["throughput"][str(c)]["create"]["rps_median"]
            / result["sqlite"]["throughput"][str(c)]["create"]["rps_median"],
            3,
        )
        for c in CONCURRENCY
    }
    streams = [result[b]["stream"] for b in BACKENDS]
    result["pass_latency"] = all(s["pass_latency"] for s in streams)
    result["delivery_ok"] = all(s["delivery_ok"] for s in streams)
    result["errors"] = sum(
        result[b]["throughput"][str(c)][t]["errors"]
        for b in BACKENDS
        for c in CONCURRENCY
        for t in ("health", "create")
    )
    result["pass"] = result["pass_latency"] and result["delivery_ok"] and result["errors"] == 0
    return result


# --- report ----------------------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    print(
        f"node creates vs /health: keep-alive HTTP/1.1 over TLS, auth off, {result['rounds']} x "
        f"{result['duration_s']:g} s per figure (interleaved, medians)"
    )
    print(
        f"{'database':12}{'conns':>6}{'health req/s':>14}{'create req/s':>14}{'create/health':>15}{'create p50 ms':>15}"
    )
    for backend in BACKENDS:
        for c in CONCURRENCY:
            row = result[backend]["throughput"][str(c)]
            p50 = row["create"]["p50_ms_median"]
            print(
                f"{backend:12}{c:>6}{row['health']['rps_median']:>14.0f}{row['create']['rps_median']:>14.0f}"
                f"{row['ratio_create_health']:>15.3f}{p50 if p50 is not None else float('nan'):>15.2f}"
            )
    ratios = ", ".join(f"{c} conn {r:.3f}" for c, r in result["ratio_create_postgresql_sqlite"].items())
    print(f"create req/s postgresql/sqlite: {ratios}")
    print()
    print(
        f"change-to-event latency: {result['watchers']} watchers of /graph/stream, {result['writes']} creates "
        f"~{result['interval_ms']:g} ms apart; ms from just before the POST to the event at the watcher"
    )
    header = ("p50", "p99", "max")
    print(f"{'database':12}{'':22}" + "".join(f"{h:>9}" for h in header))
    labels = [
        ("latency_ms", "every watcher"),
        ("fastest_watcher_ms", "fastest per write"),
        ("slowest_watcher_ms", "slowest per write"),
        ("fanout_spread_ms", "fan-out spread"),
        ("post_rtt_ms", "POST round trip"),
    ]
    for backend in BACKENDS:
        stream = result[backend]["stream"]
        for key, label in labels:
            row = stream[key]
            print(f"{backend:12}{label:22}" + "".join(f"{row[h]:>9.1f}" for h in header))
        problems = ", ".join(
            f"{k} {stream[k]}" for k in ("missing", "duplicates", "out_of_order", "unexpected", "id_mismatch")
        )
        print(
            f"{backend:12}delivery: {stream['events_received']}/{stream['events_expected']} events, "
            f"{stream['watchers_exact']}/{stream['watchers']} watchers got every event once, in order ({problems})"
        )
    for backend in BACKENDS:
        stream = result[backend]["stream"]
        verdict = "PASS" if stream["pass_latency"] else "ABOVE"
        print(
            f"{backend}: latency p99 {stream['latency_ms']['p99']:.1f} ms "
            f"(target <= {result['target_latency_ms']:g} ms) {verdict}; "
            f"delivery {'OK' if stream['delivery_ok'] else 'FAILED'}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds per throughput figure (default 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements per throughput figure (default 3)"
    )
    parser.add_argument(
        "--watchers", type=int, default=100, help="concurrent /graph/stream clients (default 100)"
    )
    parser.add_argument("--writes", type=int, default=50, help="nodes created while they watch (default 50)")
    parser.add_argument(
        "--interval-ms", type=float, default=20.0, help="pause between those creates (default 20)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures on stdout")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1 or args.watchers < 1 or args.writes < 1:
        parser.error("--duration must be positive and --rounds, --watchers, --writes at least 1")
    if args.duration > 30 or args.rounds > 20 or args.watchers > 1000 or args.writes > 10000:
        parser.error(
            "keep it bounded: --duration <= 30, --rounds <= 20, --watchers <= 1000, --writes <= 10000"
        )
    if not 0 <= args.interval_ms <= 1000:
        parser.error("--interval-ms must be 0 to 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="specai-bench-") as tmp:
            result = run(args, Path(tmp))
    except (BenchError, OSError, asyncpg.PostgresError) as exc:
        note(f"bench_graph: {exc}")
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    failed = []
    if result["errors"]:
        first = next(
            result[b]["throughput"][str(c)][t]["first_error"]
            for b in BACKENDS
            for c in CONCURRENCY
            for t in ("health", "create")
            if result[b]["throughput"][str(c)][t]["first_error"]
        )
        failed.append(f"{result['errors']} requests failed (first: {first})")
    if not result["delivery_ok"]:
        failed.append("some watcher missed, repeated or reordered events")
    for message in failed:
        note(f"bench_graph: {message}; the figures are not valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
