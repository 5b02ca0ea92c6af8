"""Start-up time of the `specai` CLI against `python -c "import typer, rich.console"`, measured in one run.

Why: issue 10 asks that `specai --help`, `specai --version` and `specai cert fingerprint` (the local certificate,
no --server) each take at most 1.5x the time of importing the two libraries every command needs, in the same
virtualenv (before: 2.5x, 2.5x and 3.9x, as every command module, httpx, cryptography and their friends were
imported eagerly). This script makes a throwaway SPECAI_HOME holding an empty config file and a self-signed
certificate where `specai server` would have put them (no SPECAI_CONFIG: the config is found in the home, as
for most users), then runs the baseline and the three commands one after the other, `--runs` times (rotating
which goes first, because a 2-core machine's load drifts), after `--warmup` untimed rounds that fill the page
and bytecode caches. Each run is a fresh process timed from spawn to exit; its output is checked (the help lists
the commands, the version is this one, the fingerprint is the certificate's).

Read: the median wall time of each, and its ratio to the baseline's median (target <= 1.5). Typer 0.29 validates
every option value that is given with pydantic, which costs about one more baseline: `--config FILE` (or
SPECAI_CONFIG) makes `cert fingerprint` pay it; options left at their defaults do not.

Run:  . .venv/bin/activate && python benchmarks/bench_cli.py [--runs 20] [--warmup 3] [--json]
Exits 1 when a command fails or prints something unexpected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import BenchError, in_scratch, specai_command, specai_env

from specai import __version__
from specai.identity.fingerprint import fingerprint_der
from specai.identity.tls import create_self_signed

TARGET_RATIO = 1.5
BASELINE = "baseline"


@dataclass(frozen=True)
class Case:
    """One command line and what its output must contain."""

    name: str
    argv: list[str]
    expect: str


def cases(fingerprint: str) -> list[Case]:
    specai = specai_command()
    return [
        Case(BASELINE, [sys.executable, "-c", "import typer, rich.console"], ""),
        Case("--help", [*specai, "--help"], "Commands:"),
        Case("--version", [*specai, "--version"], f"specai {__version__}"),
        Case("cert fingerprint", [*specai, "cert", "fingerprint"], fingerprint),
    ]


def time_once(case: Case, env: dict[str, str], cwd: Path) -> float:
    """Wall time in ms of one run, from spawn to exit; BenchError when it fails or prints the wrong thing."""
    start = time.perf_counter()
    done = subprocess.run(
        case.argv, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    ms = (time.perf_counter() - start) * 1000
    if done.returncode != 0 or case.expect not in done.stdout:
        raise BenchError(
            f"{' '.join(case.argv)} exited {done.returncode}, expected {case.expect!r} in its output:\n"
            f"{(done.stdout + done.stderr)[-1500:]}"
        )
    return ms


def make_home(tmp: Path) -> tuple[dict[str, str], str]:
    """A SPECAI_HOME with its config file and a certificate where `specai server` would have put them, as a user
    has them (no SPECAI_CONFIG); returns the environment and the certificate's fingerprint."""
    home = tmp / "home"
    (home / "tls").mkdir(parents=True)
    (home / "spec-ai.config.toml").write_text("")
    cert_pem, key_pem = create_self_signed("127.0.0.1")
    (home / "tls" / "server.crt").write_bytes(cert_pem)
    (home / "tls" / "server.key").write_bytes(key_pem)
    (home / "tls" / "server.key").chmod(0o600)
    fingerprint = fingerprint_der(ssl.PEM_cert_to_DER_cert(cert_pem.decode()))
    env = specai_env(home, home / "spec-ai.config.toml")
    del env[
        "SPECAI_CONFIG"
    ]  # found in SPECAI_HOME, as it is without one (an option value costs Typer's pydantic)
    return env, fingerprint


def run(args: argparse.Namespace, tmp: Path, _stack: contextlib.ExitStack) -> dict[str, Any]:
    """Time every case `args.runs` times, interleaved; return the medians and ratios."""
    env, fingerprint = make_home(tmp)
    todo = cases(fingerprint)
    timings: dict[str, list[float]] = {case.name: [] for case in todo}
    for round_no in range(args.warmup + args.runs):
        shift = round_no % len(todo)
        for case in todo[shift:] + todo[:shift]:
            ms = time_once(case, env, tmp)
            if round_no >= args.warmup:
                timings[case.name].append(ms)
    base = statistics.median(timings[BASELINE])
    commands: dict[str, Any] = {}
    for case in todo[1:]:
        median = statistics.median(timings[case.name])
        commands[case.name] = {
            "argv": case.argv[len(specai_command()) :],
            "ms_median": round(median, 1),
            "ms_runs": [round(ms, 1) for ms in timings[case.name]],
            "ratio": round(median / base, 2),
        }
    return {
        "runs": args.runs,
        "warmup": args.warmup,
        "baseline": {
            "argv": todo[0].argv[1:],
            "ms_median": round(base, 1),
            "ms_runs": [round(ms, 1) for ms in timings[BASELINE]],
        },
        "commands": commands,
        "ratios": {name: fig["ratio"] for name, fig in commands.items()},
        "target_ratio": TARGET_RATIO,
        "pass": all(fig["ratio"] <= TARGET_RATIO for fig in commands.values()),
    }


def print_table(result: dict[str, Any]) -> None:
    base = result["baseline"]
    print(
        f"CLI start-up: {result['runs']} runs each after {result['warmup']} untimed rounds, interleaved; "
        "medians of spawn-to-exit wall time"
    )
    print(f"{'command':<40}{'ms':>8}{'ratio':>8}")
    print(f"{'python -c ' + repr(base['argv'][-1]):<40}{base['ms_median']:>8.1f}{1:>8.2f}  (baseline)")
    for name, fig in result["commands"].items():
        verdict = "OK" if fig["ratio"] <= result["target_ratio"] else "ABOVE"
        print(f"{'specai ' + name:<40}{fig['ms_median']:>8.1f}{fig['ratio']:>8.2f}  {verdict}")
    print(f"target: each ratio <= {result['target_ratio']:g}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures on stdout")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 500 or not 0 <= args.warmup <= 50:
        parser.error("--runs from 1 to 500, --warmup from 0 to 50")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = in_scratch("bench_cli", lambda tmp, stack: run(args, tmp, stack))
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
