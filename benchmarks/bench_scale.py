"""Scale-out on PostgreSQL: authenticated requests/s and node creates/s of 1 instance, 2 instances, 2 workers.

Why: issue 13 lets several `specai server` processes share one PostgreSQL database and serve as one service:
two instances (own homes and ports, one database, one `[auth] token_secret`) or one instance with
`--workers 2` (two worker processes on one port). DESIGN.md §7 wants speed reported as ratios measured in one
run; the point here is as much that scaling out loses nothing: zero failed requests and every acknowledged write
stored. This script starts three set-ups side by side on this machine's PostgreSQL, each on its own throwaway
database `specai_bench_<hex>` (created with asyncpg, dropped at the end even on failure; one per set-up, so no
set-up pays for another's change notifications), auth on, the user created with the real
`specai auth add-user --password-stdin` in PG mode (so it lives in that database):
  1 instance             one `specai server` process
  2 instances            two `specai server` processes; the token from logging in on the first is used on both,
                         and connection i goes to instance i mod 2 (round robin)
  1 instance, 2 workers  `specai server --workers 2` (the kernel spreads the connections over the workers)
Each set-up is checked first (the token answers `GET /auth/whoami` on every instance; one node is created through
each). Then the same load hits each: `--connections` keep-alive HTTP/1.1 + TLS connections in one asyncio event
loop (the drivers of bench_graph.py), each sending its next request as soon as the answer arrives:
  whoami  `GET /auth/whoami` with the bearer token (token check, user and revocation lookups; no write)
  create  `POST /graph/nodes` with the bearer token (a node and its changelog row in one transaction); connection i
          writes graph session `bench-scale-<i>`, since on PostgreSQL the writes of one session are serialized by
          a per-session lock, and one session would measure that lock rather than the processes
After a warm-up of each, `--rounds` measurements of `--duration` s each, interleaved (every set-up and kind in one
order, then in the reverse order, ...) because a 2-core machine drifts; medians are reported. Every answer other
than 200 (whoami) or 201 (create), and every broken connection, is an error, warm-up included. At the end each
set-up's nodes are counted in its database: every node acknowledged with a 201 must be there, exactly once
(labels are distinct), and nothing else.

Read: req/s per set-up and request, then the ratios 2 instances / 1 and 2 workers / 1. `server cpu` is the CPU
time of every serving process (the workers, not their parent) per answered request: what scaling out costs per
request; `busiest` is the busiest process's part of that (50% = evenly spread over two); `client cpu` is the share
of one core the load generator used. On this 2-core machine expect modest gains or even losses: the client, the
servers and PostgreSQL compete for the same two cores, so one process already gets most of what is left, and a
second process adds its own work (e.g. waking on the other's change notifications); the ratios show what more
processes cost or gain here, not what they gain on more cores. The last line says whether there were zero errors
and no loss: that part must hold anywhere.

Run:  . .venv/bin/activate && python benchmarks/bench_scale.py [--duration 2] [--rounds 4] [--connections 16]
      [--json]
PostgreSQL is expected at postgresql://postgres@127.0.0.1:5432/postgres (trust auth); SPECAI_BENCH_PG_URL overrides
that admin URL (the user must be allowed to create databases). The three set-ups hold about 50 connections at the
peak (default pools); `max_connections` must allow that besides whatever else uses the server.
Exits 1 when a server or the database does not start, a check fails, any request fails, or a node is missing.
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
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from _common import (
    HOST,
    BenchError,
    call,
    in_scratch,
    launch_specai_server,
    note,
    specai_command,
    specai_env,
)
from bench_graph import Counter, Sample, Target, drive, pg_admin, pg_admin_url, throwaway_database
from bench_http import cpu_seconds

USER, PASSWORD = "bench", "bench-password-1"
SESSION = "bench-scale"  # sessions bench-scale-<connection> and bench-scale-check
WARMUP_SECONDS = 1.0
START_SECONDS = 90.0  # three set-ups start at once; a busy 2-core machine needs more than _common's 30 s
KINDS = ("whoami", "create")
STATUS = {"whoami": 200, "create": 201}


@dataclass(frozen=True)
class Endpoint:
    """One listening server: its port, a TLS context pinned to its certificate, and its process."""

    port: int
    ctx: ssl.SSLContext
    pid: int


@dataclass
class Round:
    """One measurement of one set-up and kind, and the CPU that client and servers used meanwhile."""

    sample: Sample
    client_cpu: float  # the load generator's CPU time / wall time (1.0 = one core)
    server_cpu_us: float | None  # every server process's CPU time per answered request
    busiest_share: float | None  # the busiest serving process's part of that (1/n = evenly spread over n)


@dataclass
class Setup:
    """One way of running specai on its own database, and what was measured on it."""

    name: str
    label: str
    instances: int
    workers: int
    database: str = ""
    token: str = ""
    endpoints: list[Endpoint] = field(default_factory=list)
    rounds: dict[str, list[Round]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    warmups: dict[str, list[Round]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    acknowledged: int = 0  # nodes answered 201: checks, warm-up and rounds

    @property
    def processes(self) -> int:
        return self.instances * self.workers


def setups() -> list[Setup]:
    return [
        Setup("one", "1 instance", instances=1, workers=1),
        Setup("two", "2 instances", instances=2, workers=1),
        Setup("workers2", "1 instance, 2 workers", instances=1, workers=2),
    ]


# --- requests and load -----------------------------------------------------------------------------------------


def whoami_request(port: int, token: str) -> Callable[[int], bytes]:
    request = (
        f"GET /auth/whoami HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    return lambda _: request


def create_request(port: int, token: str, session_id: str) -> Callable[[int], bytes]:
    """`POST /graph/nodes` with label `n<i>` (distinct: i comes from one Counter per set-up)."""
    head = (
        f"POST /graph/nodes HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
    )

    def build(i: int) -> bytes:
        body = json.dumps(
            {"session_id": session_id, "node_type": "entity", "label": f"n{i}", "properties": {"i": i}}
        ).encode()
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    return build


def placed(setup: Setup, kind: str, connections: int) -> list[tuple[Endpoint, Target]]:
    """Connection i goes to endpoint i mod n (round robin) and, for creates, writes graph session i."""
    result = []
    for i in range(connections):
        endpoint = setup.endpoints[i % len(setup.endpoints)]
        if kind == "whoami":
            build = whoami_request(endpoint.port, setup.token)
        else:
            build = create_request(endpoint.port, setup.token, f"{SESSION}-{i}")
        result.append((endpoint, Target(f"{setup.label} {kind}", build, STATUS[kind])))
    return result


async def load(setup: Setup, kind: str, counter: Counter, seconds: float, connections: int) -> Round:
    """Open `connections` over the set-up's endpoints, then drive them all for `seconds`."""
    placed_targets = placed(setup, kind, connections)
    conns = await asyncio.gather(
        *(asyncio.open_connection(HOST, e.port, ssl=e.ctx) for e, _ in placed_targets)
    )
    latencies: list[float] = []
    failures: list[str] = []
    pids = serving_pids(setup)
    before = {pid: cpu_seconds(pid) for pid in pids}
    cpu, start = time.process_time(), time.perf_counter()
    errors = await asyncio.gather(
        *(
            drive(conn, target, counter, start + seconds, latencies, failures)
            for conn, (_, target) in zip(conns, placed_targets, strict=True)
        )
    )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = {pid: cpu_seconds(pid) for pid in pids}
    p50 = statistics.median(latencies) * 1000 if latencies else None
    sample = Sample(
        len(latencies) / elapsed, p50, len(latencies), sum(errors), failures[0] if failures else None
    )
    if kind == "create":
        setup.acknowledged += sample.ok
    spent = [
        a - b for a, b in zip(after.values(), before.values(), strict=True) if a is not None and b is not None
    ]
    known = bool(sample.ok) and len(spent) == len(pids) and sum(spent) > 0
    return Round(
        sample,
        cpu / elapsed,
        sum(spent) / sample.ok * 1e6 if known else None,
        max(spent) / sum(spent) if known else None,
    )


def serving_pids(setup: Setup) -> list[int]:
    """The processes that answer requests: each instance's, or with --workers its worker processes."""
    pids = []
    for endpoint in setup.endpoints:
        pids += (child_pids(endpoint.pid) if setup.workers > 1 else []) or [endpoint.pid]
    return pids


def child_pids(parent: int) -> list[int]:
    """The live children of a process, from /proc (none where there is no /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


async def measure(all_setups: list[Setup], args: argparse.Namespace) -> None:
    """A warm-up of every set-up and kind, then `rounds` measurements of each, forwards then backwards."""
    counters = {setup.name: Counter() for setup in all_setups}
    sequence = [(setup, kind) for setup in all_setups for kind in KINDS]
    for setup, kind in sequence:
        warm = await load(setup, kind, counters[setup.name], WARMUP_SECONDS, args.connections)
        setup.warmups[kind].append(warm)
    for index in range(args.rounds):
        for setup, kind in sequence if index % 2 == 0 else sequence[::-1]:
            measured = await load(setup, kind, counters[setup.name], args.duration, args.connections)
            setup.rounds[kind].append(measured)
            note(
                f"round {index + 1}: {setup.label:22} {kind:6} {measured.sample.rps:7.0f} req/s, "
                f"{measured.sample.errors} errors"
            )


# --- set-ups ---------------------------------------------------------------------------------------------------


def start_setup(setup: Setup, tmp: Path, stack: contextlib.ExitStack) -> None:
    """Its database, config (PostgreSQL, auth on, one token secret), user, servers and token; then check it."""
    folder = tmp / setup.name
    folder.mkdir()
    setup.database = throwaway_database(stack)
    config = folder / "bench.config.toml"
    config.write_text(
        f'[database]\nurl = "{setup.database}"\n\n'
        f'[auth]\nenabled = true\ntoken_secret = "{secrets.token_hex(32)}"\n'
    )
    envs = []
    for index in range(setup.instances):
        home = folder / f"home-{index}"
        home.mkdir(mode=0o700)
        envs.append(specai_env(home, config))
    add_user = [*specai_command(), "auth", "add-user", USER, "--password-stdin"]
    subprocess.run(add_user, input=f"{PASSWORD}\n", env=envs[0], text=True, capture_output=True, check=True)
    extra = ["--workers", str(setup.workers)] if setup.workers > 1 else []
    for index, env in enumerate(envs):
        port, ctx, proc = launch_specai_server(
            env, folder / f"specai-{index}.log", stack, extra, START_SECONDS
        )
        setup.endpoints.append(Endpoint(port, ctx, proc.pid))
    setup.token = login(setup.endpoints[0])
    check(setup)
    note(f"{setup.label}: ready on port(s) {', '.join(str(e.port) for e in setup.endpoints)}")


def start_all(all_setups: list[Setup], tmp: Path, stack: contextlib.ExitStack) -> None:
    """Start the set-ups at once (each in a thread with a stack of its own, closed by `stack`); raise any failure.

    Starting them one after the other took most of the run on a busy machine: a start mostly waits.
    """
    stacks = [stack.enter_context(contextlib.ExitStack()) for _ in all_setups]
    with ThreadPoolExecutor(len(all_setups)) as pool:  # waits for every start, failed or not
        starts = [pool.submit(start_setup, s, tmp, own) for s, own in zip(all_setups, stacks, strict=True)]
    for start in starts:
        start.result()


def login(endpoint: Endpoint) -> str:
    body = json.dumps({"username": USER, "password": PASSWORD})
    status, data = call(
        endpoint.port, endpoint.ctx, "POST", "/auth/token", {"Content-Type": "application/json"}, body
    )
    if status != 200:
        raise BenchError(f"POST /auth/token answered {status}: {data[:300]!r}")
    return str(json.loads(data)["token"])


def check(setup: Setup) -> None:
    """The token works on every instance (it was issued by the first) and a node can be created through each."""
    auth = {"Authorization": f"Bearer {setup.token}"}
    for endpoint in setup.endpoints:
        status, data = call(endpoint.port, endpoint.ctx, "GET", "/auth/whoami", auth)
        if status != 200 or json.loads(data).get("username") != USER:
            raise BenchError(
                f"{setup.label}: GET /auth/whoami on port {endpoint.port} answered {status}: {data[:300]!r}"
            )
    for endpoint in setup.endpoints:
        body = json.dumps(
            {"session_id": f"{SESSION}-check", "node_type": "entity", "label": f"check-{endpoint.port}"}
        )
        headers = auth | {"Content-Type": "application/json"}
        status, data = call(endpoint.port, endpoint.ctx, "POST", "/graph/nodes", headers, body)
        if status != 201:
            raise BenchError(
                f"{setup.label}: POST /graph/nodes on port {endpoint.port} answered {status}: {data[:300]!r}"
            )
        setup.acknowledged += 1


async def stored_nodes(database: str) -> tuple[int, int]:
    """How many nodes the database holds (it is this set-up's alone), and how many distinct labels."""
    conn = await asyncpg.connect(database, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS nodes, count(DISTINCT label) AS labels FROM graph_nodes"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["nodes"]), int(row["labels"])


# --- figures ---------------------------------------------------------------------------------------------------


def kind_summary(setup: Setup, kind: str) -> dict[str, Any]:
    rounds, every = setup.rounds[kind], setup.rounds[kind] + setup.warmups[kind]
    p50s = [r.sample.p50_ms for r in rounds if r.sample.p50_ms is not None]
    return {
        "rps_median": round(statistics.median(r.sample.rps for r in rounds), 1),
        "rps_runs": [round(r.sample.rps, 1) for r in rounds],
        "p50_ms_median": round(statistics.median(p50s), 3) if p50s else None,
        "client_cpu_median": round(statistics.median(r.client_cpu for r in rounds), 3),
        "server_cpu_us_median": _median([r.server_cpu_us for r in rounds], 1),
        "busiest_process_share_median": _median([r.busiest_share for r in rounds], 3),
        "requests_ok": sum(r.sample.ok for r in rounds),
        "errors": sum(r.sample.errors for r in every),  # the warm-up's count too
        "first_error": next((r.sample.first_error for r in every if r.sample.first_error), None),
    }


def _median(values: list[float | None], digits: int) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), digits) if known else None


def setup_figures(setup: Setup) -> dict[str, Any]:
    stored, labels = asyncio.run(stored_nodes(setup.database))
    return {
        "label": setup.label,
        "instances": setup.instances,
        "workers": setup.workers,
        "processes": setup.processes,
        **{kind: kind_summary(setup, kind) for kind in KINDS},
        "nodes": {
            "acknowledged": setup.acknowledged,
            "stored": stored,
            "distinct_labels": labels,
            "missing": max(0, setup.acknowledged - stored),
            # with no failed request every stored node was acknowledged: more means a duplicate or a ghost
            "extra": max(0, stored - setup.acknowledged),
        },
    }


def ratio(result: dict[str, Any], over: str, kind: str) -> float:
    base = result["setups"]["one"][kind]["rps_median"]
    return round(result["setups"][over][kind]["rps_median"] / base, 3) if base else 0.0


def run(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    asyncio.run(pg_admin(pg_admin_url(), "SELECT 1"))  # fail at once when PostgreSQL is not there
    all_setups = setups()
    start_all(all_setups, tmp, stack)
    asyncio.run(measure(all_setups, args))
    result: dict[str, Any] = {
        "database": "postgresql",
        "auth": True,
        "cores": os.cpu_count(),
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": WARMUP_SECONDS,
        "setups": {setup.name: setup_figures(setup) for setup in all_setups},
    }
    result["ratios"] = {
        f"{over}_over_one": {kind: ratio(result, over, kind) for kind in KINDS}
        for over in ("two", "workers2")
    }
    figures = result["setups"].values()
    result["errors"] = sum(f[kind]["errors"] for f in figures for kind in KINDS)
    result["nodes_missing"] = sum(f["nodes"]["missing"] for f in figures)
    result["nodes_duplicated"] = sum(f["nodes"]["stored"] - f["nodes"]["distinct_labels"] for f in figures)
    no_loss = result["nodes_missing"] == 0 and result["nodes_duplicated"] == 0
    exact = all(f["nodes"]["extra"] == 0 for f in figures)
    result["pass"] = result["errors"] == 0 and no_loss and exact
    return result


# --- report ----------------------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    print(
        f"scale-out on PostgreSQL: {result['connections']} keep-alive HTTP/1.1 + TLS connections, auth on, "
        f"{result['rounds']} x {result['duration_s']:g} s per figure (interleaved, medians); "
        f"{result['cores']} cores shared by the client, the servers and PostgreSQL"
    )
    print(
        f"{'set-up':23}{'procs':>6}  {'request':8}{'req/s':>8}{'p50 ms':>8}{'server cpu':>12}{'busiest':>9}"
        f"{'client cpu':>12}{'errors':>8}"
    )
    for figures in result["setups"].values():
        for index, kind in enumerate(KINDS):
            row = figures[kind]
            name, procs = (figures["label"], str(figures["processes"])) if index == 0 else ("", "")
            print(
                f"{name:23}{procs:>6}  {kind:8}{row['rps_median']:>8.0f}{_figure(row['p50_ms_median'], '.2f'):>8}"
                f"{_figure(row['server_cpu_us_median'], '.0f', ' us'):>12}"
                f"{_figure(row['busiest_process_share_median'], '.0%'):>9}"
                f"{row['client_cpu_median']:>12.0%}{row['errors']:>8}"
            )
    print(
        "server cpu: every serving process's CPU time per answered request; busiest: the busiest process's "
        "part of it (50% = evenly spread over 2); client cpu: of one core"
    )
    for key, label in (("two_over_one", "2 instances / 1"), ("workers2_over_one", "2 workers / 1")):
        r = result["ratios"][key]
        print(f"ratio {label:16} whoami {r['whoami']:.2f}  create {r['create']:.2f}")
    nodes = ", ".join(
        f"{f['label']} {f['nodes']['acknowledged']}/{f['nodes']['stored']}" for f in result["setups"].values()
    )
    print(f"nodes acknowledged/stored: {nodes}")
    verdict = "PASS" if result["pass"] else "FAIL"
    print(
        f"{verdict}: {result['errors']} failed requests, {result['nodes_missing']} acknowledged nodes missing, "
        f"{result['nodes_duplicated']} duplicated (on {result['cores']} cores expect ratios near 1, even below)"
    )


def _figure(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=4, help="measurements per figure (default 4)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures on stdout")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1:
        parser.error("--duration must be positive and --rounds, --connections at least 1")
    if args.duration > 30 or args.rounds > 20 or args.connections > 256:
        parser.error("keep it bounded: --duration <= 30, --rounds <= 20, --connections <= 256")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = in_scratch("bench_scale", lambda tmp, stack: run(args, tmp, stack))
    except asyncpg.PostgresError as exc:
        note(f"bench_scale: {type(exc).__name__}: {exc}")
        return 1
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    if result["errors"]:
        errors = [f[kind]["first_error"] for f in result["setups"].values() for kind in KINDS]
        first = next((error for error in errors if error), None)
        note(f"bench_scale: {result['errors']} requests failed (first: {first}); the figures are not valid")
    wrong = {
        f["label"]: f["nodes"]
        for f in result["setups"].values()
        if f["nodes"]["missing"]
        or f["nodes"]["extra"]
        or f["nodes"]["stored"] != f["nodes"]["distinct_labels"]
    }
    for label, nodes in wrong.items():
        note(f"bench_scale: {label}: the database does not hold exactly the acknowledged nodes: {nodes}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
