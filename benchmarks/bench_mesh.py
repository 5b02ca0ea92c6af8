"""Mesh message-queue throughput of `specai server` (send -> fetch -> ack), against its own `/health`, in one run.

Why: the mesh issue adds a durable per-recipient queue: `POST /messages/send/{source}` stores a message and one
delivery row per recipient, `GET /messages/{id}` lists what a recipient has not acknowledged, and
`POST /messages/ack/{id}` deletes that recipient's delivery (and the message once nobody still owes it).
DESIGN.md §7 wants speed reported as ratios measured in one run, so this script starts ONE real `specai server`
(SQLite, the default database; auth off, as on loopback; throwaway SPECAI_HOME), which lists itself as a mesh
member, registers two more members (`bench-a`, `bench-b`) with `POST /registry/register`, and loads it over
keep-alive HTTP/1.1 + TLS with 1 and with 8 concurrent workers, one connection each, each running its requests
one after another. Before each measurement the script heartbeats bench-a and bench-b (nothing else does), so
they stay live members.

1. cycle: the worker sends a direct `Notification` from one member to another, fetches the recipient's inbox,
   finds its message there exactly once (with its payload, source, target and type intact) and acks it (204).
   Worker w uses ordered pair w mod 6 of the 3 members (there are only 6 ordered pairs, so with 8 workers two
   pairs are used twice), so every inbox holds at most a few unacknowledged messages.
2. broadcast: the worker broadcasts from member w mod 3 (no `target_instance`, so it is delivered to the two
   other members); each of them, in turn, fetches its inbox, finds the message and acks it.
3. health: `GET /health`, the same way; the bare request rate of this server on this machine.

The three are measured in rotating order (health, cycle, broadcast, then cycle, broadcast, health, ...) because a
2-core machine is noisy, and reported as medians. `cycle/health` and `broadcast/health` compare requests/s (3 per
cycle, 5 per broadcast) with the same number of workers: the share of the bare request rate left once every
request reads or writes the queue. Also shown: messages/s (cycles/s; deliveries/s = 2 per broadcast) and the
p50 latency of each kind of request (send, fetch, ack).

Checks: every response must have the expected status (200, or 204 for acks); every send answers a new message_id
and the right `delivered_to`; every sent message must be fetched exactly once by each recipient and acknowledged;
no fetch may return a message whose ack had already been answered; after every measurement (and at the end)
every member's inbox must be empty. Any error, lost, duplicated or leftover message fails the run.

Run:  . .venv/bin/activate && python benchmarks/bench_mesh.py [--duration 2] [--rounds 3] [--json]
Exits 1 when the server does not start, any request fails, or any message is lost, duplicated or left over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import HOST, BenchError, call, note, specai_env, start_specai_server

CONCURRENCY = (1, 8)
WARMUP_SECONDS = 0.5
BENCH_MEMBERS = ("bench-a", "bench-b")
KINDS = ("send", "fetch", "ack")
CHECKS = ("lost", "duplicates", "resurrected", "mismatched", "leftover")
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


# --- one keep-alive connection ---------------------------------------------------------------------------------


class RequestFailed(Exception):
    """A response had the wrong status or shape; the operation is abandoned, the connection stays usable."""


def parse_head(head: bytes) -> tuple[int, int]:
    """Status and body length of a response head (0 for 204/304); ValueError without a Content-Length."""
    status_line, *lines = head.split(b"\r\n")
    status = int(status_line.split()[1])
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value)
    if status in (204, 304):
        return status, 0
    raise ValueError(f"response without Content-Length: {status_line!r}")


class Connection:
    """One keep-alive HTTP/1.1 connection over TLS, requests strictly one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer = reader, writer
        self.host = f"{HOST}:{port}"

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx)
        return cls(reader, writer, port)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, float, float]:
        """Status, body, and when (perf_counter s) the request was sent and the response read."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: application/json\r\n"
        if body is None:
            data = f"{head}\r\n".encode()
        else:
            payload = json.dumps(body, separators=(",", ":")).encode()
            data = f"{head}Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            data += payload
        sent = time.perf_counter()
        self.writer.write(data)
        status, length = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
        answer = await self.reader.readexactly(length)
        return status, answer, sent, time.perf_counter()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


# --- what one measurement records ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the workers of one measurement did: completed operations, request latencies, errors, checks."""

    ops: int = 0
    requests: int = 0
    errors: int = 0
    first_error: str | None = None
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (*KINDS, "health")})
    sent: int = 0
    fetched: int = 0  # (message, recipient) pairs found exactly once in the recipient's inbox
    acked: int = 0
    checks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))

    def fail(self, message: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = message


@dataclass
class Ledger:
    """Every message id sent in the run, and when each (message, recipient) ack was answered."""

    ids: set[str] = field(default_factory=set)
    acked_at: dict[tuple[str, str], float] = field(default_factory=dict)


class Worker:
    """One worker's connection, its number, the members and the shared run state."""

    def __init__(
        self, conn: Connection, index: int, members: list[str], tally: Tally, ledger: Ledger
    ) -> None:
        self.conn, self.index, self.members, self.tally, self.ledger = conn, index, members, tally, ledger
        self.seq = 0

    async def timed(
        self, kind: str, method: str, path: str, expect: int, body: Any = None
    ) -> tuple[bytes, float]:
        """One request of `kind`; RequestFailed on any other status than `expect`. Returns body and send time."""
        status, answer, sent, done = await self.conn.request(method, path, body)
        self.tally.requests += 1
        if status != expect:
            raise RequestFailed(f"{method} {path} answered {status}: {answer[:300]!r}")
        self.tally.latencies[kind].append(done - sent)
        return answer, sent

    async def health(self) -> None:
        await self.timed("health", "GET", "/health", 200)
        self.tally.ops += 1

    async def send(
        self, source: str, target: str | None, recipients: list[str]
    ) -> tuple[str, dict[str, Any]]:
        """Send a Notification (a broadcast when `target` is None); check the answer; return id and payload."""
        self.seq += 1
        payload = {"worker": self.index, "seq": self.seq, "text": "bench"}
        body: dict[str, Any] = {"message_type": "Notification", "payload": payload}
        if target is not None:
            body["target_instance"] = target
        answer, _ = await self.timed("send", "POST", f"/messages/send/{source}", 200, body)
        data = json.loads(answer)
        message_id = data.get("message_id")
        if not isinstance(message_id, str) or data.get("delivered_to") != recipients:
            raise RequestFailed(f"send answered {data!r}; expected delivered_to {recipients}")
        if message_id in self.ledger.ids:
            self.tally.checks["duplicates"] += 1
            raise RequestFailed(f"send answered a message_id already used: {message_id}")
        self.ledger.ids.add(message_id)
        self.tally.sent += 1
        return message_id, payload

    async def receive(
        self, recipient: str, message_id: str, source: str, target: str | None, payload: dict[str, Any]
    ) -> None:
        """Fetch `recipient`'s inbox, find the message exactly once and intact, ack it."""
        answer, fetch_sent = await self.timed("fetch", "GET", f"/messages/{recipient}", 200)
        messages = json.loads(answer)["messages"]
        for other in messages:  # an ack answered before this fetch was sent must not come back
            acked = self.ledger.acked_at.get((other.get("message_id"), recipient))
            if acked is not None and acked < fetch_sent:
                self.tally.checks["resurrected"] += 1
        mine = [m for m in messages if m.get("message_id") == message_id]
        if not mine:
            self.tally.checks["lost"] += 1
            raise RequestFailed(f"message {message_id} is not in {recipient}'s inbox")
        if len(mine) > 1:
            self.tally.checks["duplicates"] += len(mine) - 1
        expected = (source, target, "Notification", payload)
        got = mine[0]
        if (got["source_instance"], got["target_instance"], got["message_type"], got["payload"]) != expected:
            self.tally.checks["mismatched"] += 1
        self.tally.fetched += 1
        await self.timed("ack", "POST", f"/messages/ack/{recipient}", 204, {"message_ids": [message_id]})
        self.ledger.acked_at[(message_id, recipient)] = time.perf_counter()
        self.tally.acked += 1

    async def cycle(self) -> None:
        """Direct message along this worker's ordered pair: send, fetch, ack."""
        pairs = list(itertools.permutations(self.members, 2))
        source, target = pairs[self.index % len(pairs)]
        message_id, payload = await self.send(source, target, [target])
        await self.receive(target, message_id, source, target, payload)
        self.tally.ops += 1

    async def broadcast(self) -> None:
        """Broadcast from this worker's member; each of the two others fetches and acks it."""
        source = self.members[self.index % len(self.members)]
        others = sorted(m for m in self.members if m != source)
        message_id, payload = await self.send(source, None, others)
        for recipient in others:
            await self.receive(recipient, message_id, source, None, payload)
        self.tally.ops += 1


# --- load ------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A workload: its operation, how many requests and deliveries one operation is, and its samples."""

    name: str
    op: Callable[[Worker], Awaitable[None]]
    requests_per_op: int
    deliveries_per_op: int
    samples: list[dict[str, Any]] = field(default_factory=list)


TARGETS = (
    ("health", Worker.health, 1, 0),
    ("cycle", Worker.cycle, 3, 1),
    ("broadcast", Worker.broadcast, 5, 2),
)


async def drive(worker: Worker, target: Target, deadline: float) -> None:
    """Run operations until `deadline`; a bad answer abandons one operation, a broken connection the worker."""
    try:
        while time.perf_counter() < deadline:
            try:
                await target.op(worker)
            except RequestFailed as exc:
                worker.tally.fail(f"{target.name}: {exc}")
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ) as exc:
        worker.tally.fail(f"{target.name}: {type(exc).__name__}: {exc}")  # unusable: the error fails the run


def inboxes(port: int, ctx: ssl.SSLContext, members: list[str]) -> dict[str, int]:
    """How many messages each member still has waiting."""
    counts = {}
    for member in members:
        status, body = call(port, ctx, "GET", f"/messages/{member}", {"Accept": "application/json"})
        if status != 200:
            raise BenchError(f"GET /messages/{member} answered {status}: {body[:300]!r}")
        counts[member] = len(json.loads(body)["messages"])
    return counts


def heartbeat(port: int, ctx: ssl.SSLContext) -> None:
    """Keep bench-a and bench-b live members (nobody else heartbeats for them) so no eviction can drop them."""
    for name in BENCH_MEMBERS:
        status, body = call(port, ctx, "POST", f"/registry/heartbeat/{name}", JSON_HEADERS, "{}")
        if status != 200:
            raise BenchError(f"POST /registry/heartbeat/{name} answered {status}: {body[:300]!r}")


async def load(
    port: int,
    ctx: ssl.SSLContext,
    members: list[str],
    ledger: Ledger,
    target: Target,
    seconds: float,
    workers: int,
) -> dict[str, Any]:
    """Open every connection first, drive them all for `seconds`, then check every inbox is empty again."""
    tally = Tally()
    await asyncio.to_thread(heartbeat, port, ctx)
    conns = await asyncio.gather(*(Connection.open(port, ctx) for _ in range(workers)))
    try:
        start = time.perf_counter()
        await asyncio.gather(
            *(
                drive(Worker(c, i, members, tally, ledger), target, start + seconds)
                for i, c in enumerate(conns)
            )
        )
        elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            await conn.close()
    left = await asyncio.to_thread(inboxes, port, ctx, members)
    tally.checks["leftover"] = sum(left.values())
    p50 = {k: round(statistics.median(v) * 1000, 3) for k, v in tally.latencies.items() if v}
    return {
        "ops_per_s": tally.ops / elapsed,
        "rps": tally.ops * target.requests_per_op / elapsed,
        "deliveries_per_s": tally.ops * target.deliveries_per_op / elapsed,
        "p50_ms": p50,
        "ops": tally.ops,
        "requests": tally.requests,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "sent": tally.sent,
        "fetched": tally.fetched,
        "acked": tally.acked,
        **tally.checks,
    }


def summary(target: Target) -> dict[str, Any]:
    """Medians of the rates and of each kind's p50; sums of the counts."""
    samples = target.samples
    kinds = ("health",) if target.name == "health" else KINDS
    p50s = {k: [s["p50_ms"][k] for s in samples if k in s["p50_ms"]] for k in kinds}
    result: dict[str, Any] = {
        "ops_per_s_median": round(statistics.median(s["ops_per_s"] for s in samples), 1),
        "rps_median": round(statistics.median(s["rps"] for s in samples), 1),
        "rps_runs": [round(s["rps"], 1) for s in samples],
        "p50_ms": {k: round(statistics.median(v), 3) if v else None for k, v in p50s.items()},
    }
    if target.deliveries_per_op:
        result["deliveries_per_s_median"] = round(
            statistics.median(s["deliveries_per_s"] for s in samples), 1
        )
    for key in ("ops", "requests", "errors"):
        result[key] = sum(s[key] for s in samples)
    result["first_error"] = next((s["first_error"] for s in samples if s["first_error"]), None)
    if target.name != "health":
        for key in ("sent", "fetched", "acked", *CHECKS):
            result[key] = sum(s[key] for s in samples)
        want = result["sent"] * target.deliveries_per_op
        clean = not any(result[c] for c in CHECKS)
        result["integrity_ok"] = clean and result["fetched"] == result["acked"] == want
    return result


async def throughput(
    port: int, ctx: ssl.SSLContext, members: list[str], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Each workload at each concurrency: a warm-up each, then `rounds` measurements each, order rotating."""
    ledger = Ledger()
    results: dict[str, dict[str, Any]] = {}
    for workers in CONCURRENCY:
        targets = [Target(*spec) for spec in TARGETS]
        for target in targets:
            warm = await load(port, ctx, members, ledger, target, WARMUP_SECONDS, workers)
            if warm["errors"] or any(warm[c] for c in CHECKS):
                raise BenchError(f"warm-up of {target.name} with {workers} workers failed: {warm}")
        for index in range(args.rounds):
            shift = index % len(targets)
            for target in targets[shift:] + targets[:shift]:
                sample = await load(port, ctx, members, ledger, target, args.duration, workers)
                target.samples.append(sample)
                problems = sum(sample[c] for c in CHECKS)
                note(
                    f"c={workers} round {index + 1}: {target.name:9} {sample['ops_per_s']:8.0f} ops/s "
                    f"{sample['rps']:8.0f} req/s, {sample['errors']} errors, {problems} message problems"
                )
        health, cycle, broadcast = (summary(t) for t in targets)
        base = health["rps_median"]
        results[str(workers)] = {
            "health": health,
            "cycle": cycle,
            "broadcast": broadcast,
            "ratio_cycle_health": round(cycle["rps_median"] / base, 3) if base else 0.0,
            "ratio_broadcast_health": round(broadcast["rps_median"] / base, 3) if base else 0.0,
        }
    return results


# --- set-up and run --------------------------------------------------------------------------------------------


def set_up_mesh(port: int, ctx: ssl.SSLContext) -> list[str]:
    """Register bench-a and bench-b; return the 3 members (this server first), checked via /registry/agents."""
    for i, name in enumerate(BENCH_MEMBERS):
        body = {
            "instance_id": name,
            "hostname": HOST,
            "port": 4001 + i,
            "capabilities": ["query"],
            "agent_profiles": [],
        }
        status, answer = call(port, ctx, "POST", "/registry/register", JSON_HEADERS, json.dumps(body))
        if status != 200:
            raise BenchError(f"POST /registry/register ({name}) answered {status}: {answer[:300]!r}")
    status, answer = call(port, ctx, "GET", "/registry/agents", JSON_HEADERS)
    if status != 200:
        raise BenchError(f"GET /registry/agents answered {status}: {answer[:300]!r}")
    listing = json.loads(answer)
    self_id = listing["self_id"]
    members = [self_id, *BENCH_MEMBERS]
    listed = sorted(m["instance_id"] for m in listing["instances"])
    if listed != sorted(members):
        raise BenchError(f"/registry/agents lists {listed}; expected {sorted(members)}")
    note(f"mesh members: {', '.join(members)} (leader {listing['leader_id']})")
    return members


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "duration_s": args.duration,
        "rounds": args.rounds,
        "concurrency": list(CONCURRENCY),
        "database": "sqlite",
        "auth": False,
        "members": 3,
    }
    with contextlib.ExitStack() as stack:
        home, config = tmp / "home", tmp / "bench.config.toml"
        home.mkdir()
        config.write_text("")
        log = tmp / "specai.log"
        port, ctx = start_specai_server(specai_env(home, config), log, stack)
        try:
            members = set_up_mesh(port, ctx)
            result["throughput"] = asyncio.run(throughput(port, ctx, members, args))
            final = inboxes(port, ctx, members)
        except OSError as exc:  # e.g. the server died: show why
            raise BenchError(f"{exc}; the server's log ends with:\n{log.read_text()[-2000:]}") from None
    rows = [result["throughput"][str(c)] for c in CONCURRENCY]
    result["final_inboxes"] = final
    result["errors"] = sum(row[t]["errors"] for row in rows for t in ("health", "cycle", "broadcast"))
    result["integrity_ok"] = all(
        row[t]["integrity_ok"] for row in rows for t in ("cycle", "broadcast")
    ) and not any(final.values())
    result["pass"] = result["errors"] == 0 and result["integrity_ok"]
    return result


# --- report ----------------------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    print(
        f"mesh queue vs /health: one specai server (SQLite, auth off), 3 members, keep-alive HTTP/1.1 over TLS, "
        f"{result['rounds']} x {result['duration_s']:g} s per figure (rotating order, medians)"
    )
    print(f"{'workers':>7}  {'workload':10}{'ops/s':>9}{'msgs/s':>9}{'req/s':>9}{'/health':>9}   p50 ms")
    for c in CONCURRENCY:
        row = result["throughput"][str(c)]
        for name in ("health", "cycle", "broadcast"):
            fig = row[name]
            msgs = fig.get("deliveries_per_s_median")
            ratio = 1.0 if name == "health" else row[f"ratio_{name}_health"]
            p50 = " ".join(f"{k} {v:.2f}" for k, v in fig["p50_ms"].items() if v is not None)
            print(
                f"{c:>7}  {name:10}{fig['ops_per_s_median']:>9.0f}{'' if msgs is None else f'{msgs:.0f}':>9}"
                f"{fig['rps_median']:>9.0f}{ratio:>9.3f}   {p50}"
            )
    print("one op: a /health, a cycle (send + fetch + ack = 3 requests, 1 message) or a broadcast")
    print(
        "(send + 2 x (fetch + ack) = 5 requests, 2 deliveries); /health: req/s over /health req/s, same workers"
    )
    print()
    for c in CONCURRENCY:
        row = result["throughput"][str(c)]
        for name in ("cycle", "broadcast"):
            fig = row[name]
            problems = ", ".join(f"{k} {fig[k]}" for k in CHECKS)
            print(
                f"{c:>7}  {name:10}sent {fig['sent']}, fetched {fig['fetched']}, acked {fig['acked']}; "
                f"{problems}; errors {fig['errors']}: {'OK' if fig['integrity_ok'] else 'FAILED'}"
            )
    final = ", ".join(f"{k} {v}" for k, v in result["final_inboxes"].items())
    print(f"inboxes at the end: {final}")
    print(f"errors {result['errors']}; delivery {'OK' if result['integrity_ok'] else 'FAILED'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per figure (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures on stdout")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1:
        parser.error("--duration must be positive and --rounds at least 1")
    if args.duration > 30 or args.rounds > 20:
        parser.error("keep it bounded: --duration <= 30, --rounds <= 20")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="specai-bench-") as tmp:
            result = run(args, Path(tmp))
    except (BenchError, OSError) as exc:
        note(f"bench_mesh: {exc}")
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    failed = []
    rows = [result["throughput"][str(c)] for c in CONCURRENCY]
    if result["errors"]:
        first = next(
            row[t]["first_error"]
            for row in rows
            for t in ("health", "cycle", "broadcast")
            if row[t]["first_error"]
        )
        failed.append(f"{result['errors']} operations failed (first: {first})")
    if not result["integrity_ok"]:
        failed.append("some message was lost, duplicated, altered or left over")
    for message in failed:
        note(f"bench_mesh: {message}; the figures are not valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
