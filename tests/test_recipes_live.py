"""The README's "Use it from other tools" recipes, run as written (only the server URL filled in) with the real
clients against a real server: a recipe that stops working fails here before a user finds out.

Each recipe is a fenced block right after `<!-- recipe: NAME -->`. The clients run in their own processes (litellm
and llm warn at import, and pytest turns warnings into errors), with a cleaned environment: no inherited
SSL_CERT_FILE or CA bundle, so a recipe passes only through its own trust step.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from live import ServerProcess, add_user, cli_env, cli_login, make_home, parse_sse, run_cli

from specai.identity.tls import create_self_signed
from specai.providers.mock import MOCK_REPLY

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
TITLE = "## Use it from other tools"
RECIPE = re.compile(r"<!-- recipe: ([a-z0-9-]+) -->\n```(\w+)\n(.*?)```", re.S)
FENCE = re.compile(r"^```", re.M)
NAMES = ("setup", "openai-python", "llm", "litellm", "curl", "curl-stream", "curl-pinnedpubkey")
PLACEHOLDER_URL = "https://127.0.0.1:3000"
BIN = Path(sys.executable).parent  # specai, llm, python: the test dependencies' entry points
TRUST_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "NIX_SSL_CERT_FILE")


def section() -> str:
    start = README.index(TITLE)
    end = README.find("\n## ", start + len(TITLE))
    return README[start : end if end >= 0 else len(README)]


def recipes() -> dict[str, tuple[str, str]]:
    """NAME -> (language, code) of every marked block of the section."""
    found: dict[str, tuple[str, str]] = {}
    for name, language, code in RECIPE.findall(section()):
        assert name not in found, f"two recipes named {name}"
        found[name] = (language, code)
    return found


# --- the section itself -------------------------------------------------------------------------------------------


def test_the_section_follows_the_tour_and_every_block_in_it_is_a_tested_recipe() -> None:
    assert README.index("## A 60-second tour") < README.index(TITLE)
    found = recipes()
    assert tuple(found) == NAMES
    assert len(FENCE.findall(section())) == 2 * len(found)  # no unmarked (untested) block
    assert {language for language, _ in found.values()} == {"sh", "python"}
    assert PLACEHOLDER_URL in found["setup"][1]
    for name, (_, code) in found.items():
        if name != "setup":
            assert "127.0.0.1" not in code, f"{name} should use $SPECAI_URL"


# --- running them -------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """A server with auth on, alice logged in through the CLI, and the setup recipe's outputs."""

    server: ServerProcess
    home: Path
    work: Path
    url: str = ""
    key: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        env = cli_env(self.home, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        for name in TRUST_ENV:
            env.pop(name, None)
        if self.url:
            env.update(SPECAI_URL=self.url, SPECAI_API_KEY=self.key)
        return env | extra

    def run(self, name: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run recipe `name` as written, in the work folder (where specai.pem is)."""
        language, code = recipes()[name]
        if language == "python":
            script = (
                self.work / f"recipe_{name.replace('-', '_')}.py"
            )  # not litellm.py: that would shadow litellm
            script.write_text(code)
            command = [sys.executable, str(script)]
        else:
            command = ["bash", "-euo", "pipefail", "-c", code]
        return subprocess.run(
            command,
            cwd=self.work,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    home = make_home(tmp_path_factory.mktemp("recipes"))
    add_user(home, "alice")
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    server = ServerProcess(home).start()
    try:
        cli_login(home, server)
        work = home.parent / "work"
        work.mkdir()
        yield Bench(server, home, work)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ready(bench: Bench) -> Bench:
    """The setup recipe has run: specai.pem is there, and its variables are known to the other recipes."""
    code = recipes()["setup"][1].replace(PLACEHOLDER_URL, bench.server.url)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code + 'printf "%s\\n" "$SPECAI_URL" "$SPECAI_API_KEY"\n'],
        cwd=bench.work,
        env=bench.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    bench.url, bench.key = done.stdout.split()
    assert bench.url == bench.server.url
    assert re.fullmatch(r"spk_[0-9a-f]{16}_\S{43}", bench.key)
    assert (bench.work / "specai.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    return bench


@pytest.mark.live
def test_setup_saves_the_served_certificate_and_a_write_key(ready: Bench) -> None:
    assert ssl.PEM_cert_to_DER_cert((ready.work / "specai.pem").read_text()) == ready.server.der()
    keys = run_cli(ready.home, "auth", "token", "list", "--server", ready.url, "--json")
    assert keys.returncode == 0, keys.stderr
    (key,) = json.loads(keys.stdout)["keys"]
    assert (key["name"], key["scope"], ready.key.startswith(f"spk_{key['id']}_")) == ("tools", "write", True)


@pytest.mark.live
def test_openai_sdk_recipe_lists_asks_and_streams(ready: Bench) -> None:
    done = ready.run("openai-python")
    assert done.returncode == 0, done.stderr
    models, whole, streamed = done.stdout.splitlines()
    assert models == "['default']"
    assert whole == MOCK_REPLY
    assert streamed == MOCK_REPLY


def llm_recipe(bench: Bench) -> subprocess.CompletedProcess[str]:
    """The llm recipe in a fresh llm home; LLM_OPENAI_SHOW_RESPONSES makes llm log the HTTP exchange on stderr
    (the proof that the reply came streamed)."""
    llm_home = bench.work / "llm"
    llm_home.mkdir()
    return bench.run("llm", LLM_USER_PATH=str(llm_home), LLM_OPENAI_SHOW_RESPONSES="1")


def llm_untrusting(bench: Bench) -> subprocess.CompletedProcess[str]:
    """llm set up as the recipe does, but run without its trust step (no SSL_CERT_FILE)."""
    llm_home = bench.work / "llm-untrusting"
    llm_home.mkdir()
    (llm_home / "extra-openai-models.yaml").write_text(
        f"- model_id: specai\n  model_name: default\n  api_base: {bench.url}/v1\n  api_key_name: specai\n"
    )
    (llm_home / "keys.json").write_text(json.dumps({"specai": bench.key}))
    return subprocess.run(
        [str(BIN / "llm"), "-m", "specai", "hello"],
        env=bench.env(LLM_USER_PATH=str(llm_home)),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def slow(ready: Bench) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """The clients that take seconds to import (llm, litellm), started together so the module stays short."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        yield {
            "llm": pool.submit(llm_recipe, ready),
            "llm-untrusting": pool.submit(llm_untrusting, ready),
            "litellm": pool.submit(ready.run, "litellm", 90),
        }


@pytest.mark.live
def test_llm_recipe_streams_a_reply(
    ready: Bench, slow: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    done = slow["llm"].result(timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == MOCK_REPLY
    assert '"stream": true' in done.stderr
    assert "content-type: text/event-stream" in done.stderr
    assert ready.key not in done.stdout + done.stderr  # llm redacts the header; the recipe echoes nothing
    assert (ready.work / "llm" / "extra-openai-models.yaml").exists()


@pytest.mark.live
def test_llm_without_the_trust_step_is_refused(
    slow: dict[str, Future[subprocess.CompletedProcess[str]]],
) -> None:
    """The certificate step is what makes llm work: without SSL_CERT_FILE the handshake fails."""
    done = slow["llm-untrusting"].result(timeout=120)
    assert done.returncode != 0
    assert MOCK_REPLY not in done.stdout
    assert "Connection error" in done.stderr, done.stderr


@pytest.mark.live
def test_litellm_recipe_streams_a_reply(slow: dict[str, Future[subprocess.CompletedProcess[str]]]) -> None:
    # stream=True and the text arriving through `chunk.choices[0].delta` is the streamed path: a whole JSON answer
    # would give no deltas, and SSE the SDK could not parse would raise
    done = slow["litellm"].result(timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == MOCK_REPLY


@pytest.mark.live
def test_curl_recipe_answers_at_once(ready: Bench) -> None:
    done = ready.run("curl")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == MOCK_REPLY


@pytest.mark.live
def test_curl_stream_recipe_streams_chunks(ready: Bench) -> None:
    done = ready.run("curl-stream")
    assert done.returncode == 0, done.stderr
    events = parse_sse(done.stdout)
    assert events[-1].data == "[DONE]"
    chunks = [e.data for e in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) > 1  # more than one piece: streamed, not one answer in an event
    assert "".join(pieces) == MOCK_REPLY


@pytest.mark.live
def test_curl_pinnedpubkey_recipe_lists_the_models(ready: Bench) -> None:
    done = ready.run("curl-pinnedpubkey")
    assert done.returncode == 0, done.stderr
    assert [model["id"] for model in json.loads(done.stdout)["data"]] == ["default"]


@pytest.mark.live
def test_curl_pinnedpubkey_refuses_another_key(ready: Bench, tmp_path: Path) -> None:
    """The pin, not -k, decides: a certificate with another key (here: another home's) is refused."""
    other = make_home(tmp_path, "other")
    (other / "tls").mkdir()
    (other / "tls" / "server.crt").write_bytes(create_self_signed("127.0.0.1")[0])
    code = recipes()["curl-pinnedpubkey"][1]
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=ready.work,
        env={**ready.env(), "SPECAI_HOME": str(other)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 90, done.stderr  # CURLE_SSL_PINNEDPUBKEYNOTMATCH
    assert done.stdout == ""


@pytest.mark.live
def test_a_login_token_from_specai_token_works_in_a_recipe_too(ready: Bench) -> None:
    token = run_cli(ready.home, "token", "--server", ready.url)
    assert token.returncode == 0, token.stderr
    assert not token.stdout.startswith("spk_")  # the login token, not the key
    done = ready.run("curl", SPECAI_API_KEY=token.stdout.strip())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == MOCK_REPLY
