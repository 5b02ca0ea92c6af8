"""HTTP throughput of `specai server` against a bare Litestar + granian app, and what each step of a request costs.

Why: DESIGN.md §7 wants speed reported as ratios measured in one run, and issue 10 wants every per-request step
(security headers, request limits, the token check with its user and revocation lookups, request tracking) to be
visible. The script starts the real `specai server` (auth on, throwaway SPECAI_HOME) and, with _steps_app.py,
one server per step, each adding one layer of specai to a bare Litestar handler that answers specai's own
/agents body, all under the granian settings of src/specai/server/run.py on specai's certificate:
  bare      Litestar, one handler (the baseline)
  +headers  + the `security_headers` before_send hook
  +limits   + the request gate without auth (NUL and digit checks on the target, body checks)
  +auth     + the bearer-token check in that gate (cached JWT, user lookup, revocation lookup, scope)
  +tracking + the request tracker the runner wraps the app in
  specai    the real server: every route, error handlers, OpenAPI, background tasks
It loads authenticated `GET /agents` on all of them, interleaved (forwards, then backwards, ...) because a 2-core
machine is noisy, reports medians, each step's cost in microseconds per request, and the ratio specai/bare.
It also times `POST /auth/token` (one argon2id verification per call).

Run:  . .venv/bin/activate && python benchmarks/bench_http.py [--duration 5] [--connections 32] [--json]
The load comes from `wrk` when it is on PATH, else from a built-in asyncio generator (keep-alive HTTP/1.1 over TLS).
Exits 1 when a server does not start or any request fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    HOST,
    BenchError,
    call,
    free_port,
    in_scratch,
    note,
    running,
    specai_command,
    specai_env,
    wait_ready,
)
from _steps_app import STEPS

USER, PASSWORD = "bench", "bench-password"
ROUNDS = 3  # measurements per target
WARMUP_SECONDS = 1.0
LOGINS = 5
TARGET_RATIO = 0.8
STEPS_APP = Path(__file__).with_name("_steps_app.py")  # serves STEPS; the real server is the last target


@dataclass
class Sample:
    """One measurement of one target."""

    rps: float
    p50_ms: float | None
    ok: int
    errors: int
    cpu_us: float | None = None  # the server's CPU time (all its threads) per answered request


@dataclass
class Target:
    """A server under load: where it is, how to reach it and what it measured."""

    name: str
    port: int
    ctx: ssl.SSLContext
    token: str
    pid: int
    samples: list[Sample] = field(default_factory=list)


Generator = Callable[[Target, float, int], Sample]


def login_times(port: int, ctx: ssl.SSLContext) -> tuple[str, list[float]]:
    """Log in LOGINS times, one connection each (like `specai login`); return a token and each call's ms."""
    body = json.dumps({"username": USER, "password": PASSWORD})
    token, times = "", []
    for _ in range(LOGINS):
        start = time.perf_counter()
        status, data = call(port, ctx, "POST", "/auth/token", {"Content-Type": "application/json"}, body)
        times.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise BenchError(f"POST /auth/token answered {status}: {data[:300]!r}")
        token = json.loads(data)["token"]
    return token, times


def request_bytes(target: Target) -> bytes:
    return (
        f"GET /agents HTTP/1.1\r\nHost: {HOST}:{target.port}\r\n"
        f"Authorization: Bearer {target.token}\r\nAccept: application/json\r\n\r\n"
    ).encode()


def parse_head(head: bytes) -> tuple[int, int]:
    """Status and Content-Length of a response head; ValueError when either is missing."""
    status_line, *lines = head.split(b"\r\n")
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(status_line.split()[1]), int(value)
    raise ValueError(f"response without Content-Length: {status_line!r}")


async def drive(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    request: bytes,
    deadline: float,
    latencies: list[float],
) -> int:
    """Send requests on one connection until `deadline`; record 200 latencies, return the error count."""
    reader, writer = conn
    errors = 0
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            status, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
            await reader.readexactly(length)
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        errors += 1  # the connection is unusable: stop it, the error fails the run
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return errors


async def builtin_load(target: Target, seconds: float, connections: int) -> Sample:
    """Open every connection first, then drive them all for `seconds`."""
    conns = await asyncio.gather(
        *(asyncio.open_connection(HOST, target.port, ssl=target.ctx) for _ in range(connections))
    )
    latencies: list[float] = []
    start = time.perf_counter()
    errors = await asyncio.gather(
        *(drive(c, request_bytes(target), start + seconds, latencies) for c in conns)
    )
    elapsed = time.perf_counter() - start
    p50 = statistics.median(latencies) * 1000 if latencies else None
    return Sample(len(latencies) / elapsed, p50, len(latencies), sum(errors))


def run_builtin(target: Target, seconds: float, connections: int) -> Sample:
    """The built-in generator: `connections` keep-alive HTTP/1.1 connections over TLS in one event loop."""
    return asyncio.run(builtin_load(target, seconds, connections))


def run_wrk(target: Target, seconds: float, connections: int) -> Sample:
    """wrk with one thread; its Non-2xx and socket errors count as errors."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{math.ceil(seconds)}s", "--latency"]
    argv += ["-H", f"Authorization: Bearer {target.token}", f"https://{HOST}:{target.port}/agents"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    out = done.stdout
    rps, total = re.search(r"Requests/sec:\s*([\d.]+)", out), re.search(r"(\d+) requests in", out)
    if done.returncode != 0 or rps is None or total is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{out}{done.stderr}")
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx[1]) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    p50_ms = float(p50[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50[2]] if p50 else None
    return Sample(float(rps[1]), p50_ms, int(total[1]) - (int(non_2xx[1]) if non_2xx else 0), errors)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(targets: list[Target], generate: Generator, seconds: float, connections: int) -> None:
    """Warm up every target, then measure ROUNDS times each, forwards then backwards."""
    for target in targets:
        generate(target, WARMUP_SECONDS, connections)
    for index in range(ROUNDS):
        for target in targets if index % 2 == 0 else targets[::-1]:
            before = cpu_seconds(target.pid)
            sample = generate(target, seconds, connections)
            after = cpu_seconds(target.pid)
            if before is not None and after is not None and sample.ok:
                sample.cpu_us = (after - before) / sample.ok * 1e6
            target.samples.append(sample)
            note(f"round {index + 1}: {target.name:10} {sample.rps:8.0f} req/s, {sample.errors} errors")


def summary(target: Target, body_bytes: int) -> dict[str, Any]:
    p50s = [s.p50_ms for s in target.samples if s.p50_ms is not None]
    rps = statistics.median(s.rps for s in target.samples)
    cpu = [s.cpu_us for s in target.samples if s.cpu_us is not None]
    return {
        "name": target.name,
        "rps_median": rps,
        "us_per_request": round(1e6 / rps, 1) if rps else None,
        "cpu_us_per_request": round(statistics.median(cpu), 1) if cpu else None,
        "rps_runs": [round(s.rps, 1) for s in target.samples],
        "p50_ms_median": statistics.median(p50s) if p50s else None,
        "requests_ok": sum(s.ok for s in target.samples),
        "errors": sum(s.errors for s in target.samples),
        "body_bytes": body_bytes,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"generator: {result['generator']}, {result['connections']} connections, "
        f"{result['rounds']} x {result['duration_s']:g} s per target (interleaved, medians)"
    )
    head = (
        f"{'target':10}{'req/s':>8}{'x bare':>7}{'us/req':>7}{'step':>6}{'cpu us':>7}{'step':>6}{'p50 ms':>7}"
    )
    print(f"{head}{'err':>4}  runs (req/s)")
    for row in result["targets"]:
        p50 = f"{row['p50_ms_median']:.2f}" if row["p50_ms_median"] is not None else "-"
        runs = " ".join(f"{r:.0f}" for r in row["rps_runs"])
        cpu = "-" if row["cpu_us_per_request"] is None else f"{row['cpu_us_per_request']:.1f}"
        print(
            f"{row['name']:10}{row['rps_median']:>8.0f}{row['ratio_to_bare']:>7.2f}{row['us_per_request']:>7.1f}"
            f"{_signed(row['step_us']):>6}{cpu:>7}{_signed(row['step_cpu_us']):>6}{p50:>7}{row['errors']:>4}  {runs}"
        )
    ratio = result["ratio_specai_baseline"]
    verdict = "PASS" if result["pass"] else "BELOW"
    print(f"ratio specai/bare: {ratio:.2f} (target >= {TARGET_RATIO}) {verdict}")
    print(
        "us/req: wall time per request (1/throughput); cpu us: the server's CPU time per request (steadier);"
    )
    print("step: what that target adds to the one above it, in microseconds per request")
    logins = ", ".join(f"{ms:.1f}" for ms in result["auth_token_ms_runs"])
    print(f"/auth/token (argon2id): median {result['auth_token_ms_median']:.1f} ms ({logins})")


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures on stdout")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.connections < 1:
        parser.error("--duration and --connections must be at least 1")
    return args


def start_specai(tmp: Path, stack: contextlib.ExitStack) -> tuple[int, ssl.SSLContext, int, Path]:
    """Add a user to a throwaway home with auth on and start `specai server`; return port, pin, pid and home."""
    home, config = tmp / "home", tmp / "bench.config.toml"
    home.mkdir()
    config.write_text("[auth]\nenabled = true\n")
    env = specai_env(home, config)
    add_user = [*specai_command(), "auth", "add-user", USER, "--password-stdin"]
    subprocess.run(add_user, input=f"{PASSWORD}\n", env=env, text=True, capture_output=True, check=True)
    port, log = free_port(), tmp / "specai.log"
    proc = stack.enter_context(running([*specai_command(), "server", "--port", str(port)], env, log))
    ctx = wait_ready(proc, port, log, marker="listening")
    note(f"specai server ready on {HOST}:{port}")
    return port, ctx, proc.pid, home


def start_step(
    step: str, home: Path, tmp: Path, stack: contextlib.ExitStack
) -> tuple[int, ssl.SSLContext, int]:
    """Serve one step (_steps_app.py) on specai's home, certificate and key; return port, pin and pid."""
    port, log = free_port(), tmp / f"step-{step.strip('+')}.log"
    argv = [sys.executable, str(STEPS_APP), step, str(port), str(home)]
    proc = stack.enter_context(running(argv, dict(os.environ), log))
    ctx = wait_ready(proc, port, log)
    note(f"step {step} ready on {HOST}:{port}")
    return port, ctx, proc.pid


def agents_body_size(target: Target) -> int:
    """Check that the target answers GET /agents with 200; return the body's size."""
    status, body = call(
        target.port, target.ctx, "GET", "/agents", {"Authorization": f"Bearer {target.token}"}
    )
    if status != 200:
        raise BenchError(f"{target.name} GET /agents answered {status}: {body[:300]!r}")
    return len(body)


def run(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Start the real server and one server per step, time the logins, load every target; return every figure."""
    specai_port, specai_ctx, specai_pid, home = start_specai(tmp, stack)
    token, logins = login_times(specai_port, specai_ctx)
    targets = []
    for step in STEPS:
        port, ctx, pid = start_step(step, home, tmp, stack)
        targets.append(Target(step, port, ctx, token, pid))
    targets.append(Target("specai", specai_port, specai_ctx, token, specai_pid))
    sizes = [agents_body_size(target) for target in targets]
    if len(set(sizes)) != 1:
        raise BenchError(f"the targets' /agents bodies differ in size: {sizes}")
    wrk = shutil.which("wrk")
    generator = "wrk" if wrk else "builtin asyncio"
    note(f"load generator: {generator}")
    measure(targets, run_wrk if wrk else run_builtin, args.duration, args.connections)
    rows = [summary(target, size) for target, size in zip(targets, sizes, strict=True)]
    bare = rows[0]["rps_median"]
    for index, row in enumerate(rows):
        row["ratio_to_bare"] = round(row["rps_median"] / bare, 3) if bare else 0.0
        for key in ("us_per_request", "cpu_us_per_request"):
            mine, above = row[key], rows[index - 1][key] if index else None
            known = mine is not None and above is not None
            row["step_" + key.removesuffix("_per_request")] = round(mine - above, 1) if known else None
    ratio = rows[-1]["ratio_to_bare"]
    return {
        "generator": generator,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": ROUNDS,
        "targets": rows,
        "baseline": rows[0],
        "specai": rows[-1],
        "ratio_specai_baseline": ratio,
        "target_ratio": TARGET_RATIO,
        "pass": ratio >= TARGET_RATIO,
        "auth_token_ms_median": round(statistics.median(logins), 2),
        "auth_token_ms_runs": [round(ms, 2) for ms in logins],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = in_scratch("bench_http", lambda tmp, stack: run(args, tmp, stack))
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    errors = sum(row["errors"] for row in result["targets"])
    if errors:
        note(f"bench_http: {errors} requests failed; the figures are not valid")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
