"""Attacks on `/auth/token` and `/auth/hash` against a real `specai server` (auth on, users alice, bob, mallory and
carol), from several loopback source addresses (Linux routes all of 127.0.0.0/8 to lo): concurrency cannot outrun
the count, an attacker elsewhere cannot lock a user out, a guessing address is locked for every username it has
not logged in as, many addresses guessing one username stop at its budget while her known address still works,
and hashing is limited per user."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from live import PASSWORD, ServerProcess, add_user, make_home

from helpers import assert_error
from specai.identity.tls import fetch_peer_cert, pinned_ssl_context

pytestmark = [pytest.mark.anyio, pytest.mark.live]
PAIR_LIMIT, ADDRESS_LIMIT, USER_LIMIT, HASH_PER_MINUTE = 5, 10, 20, 3
CONFIG = f"""[auth]
enabled = true
max_failed_logins = {PAIR_LIMIT}
max_failed_logins_per_address = {ADDRESS_LIMIT}
max_failed_logins_per_user = {USER_LIMIT}
hash_per_minute = {HASH_PER_MINUTE}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module; each test attacks from its own addresses, so their counters do not mix."""
    home = make_home(tmp_path_factory.mktemp("login-attack"))
    for name in ("alice", "bob", "mallory", "carol"):
        add_user(home, name)
    (home / "spec-ai.config.toml").write_text(CONFIG)
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def pin(server: ServerProcess) -> ssl.SSLContext:
    """A TLS context whose only trust anchor is the server's certificate."""
    return pinned_ssl_context(fetch_peer_cert("127.0.0.1", server.port))


@pytest.fixture
async def clients(server: ServerProcess, pin: ssl.SSLContext) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """`clients[address]`: an async client whose connections leave from that loopback address."""
    opened: dict[str, httpx.AsyncClient] = {}

    class FromAddress(dict[str, httpx.AsyncClient]):
        def __missing__(self, address: str) -> httpx.AsyncClient:
            transport = httpx.AsyncHTTPTransport(local_address=address, verify=pin)
            limits = httpx.Limits(max_connections=100)
            client = httpx.AsyncClient(base_url=server.url, transport=transport, timeout=60, limits=limits)
            self[address] = opened[address] = client
            return client

    yield FromAddress()
    for client in opened.values():
        await client.aclose()


async def token_call(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/auth/token", json={"username": username, "password": password})


def assert_throttled(response: httpx.Response) -> None:
    assert_error(response, 429, "too_many_attempts")
    assert int(response.headers["Retry-After"]) > 0


def tally(responses: list[httpx.Response]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for response in responses:
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        if response.status_code == 429:
            assert_throttled(response)
        else:
            assert_error(response, 401, "invalid_credentials")
    return counts


async def assert_logs_in(client: httpx.AsyncClient, username: str) -> None:
    response = await token_call(client, username, PASSWORD)
    assert response.status_code == 200, response.text
    agents = await client.get("/agents", headers={"Authorization": f"Bearer {response.json()['token']}"})
    assert agents.status_code == 200, agents.text


async def test_forty_concurrent_wrong_passwords_get_429_and_alice_logs_in_meanwhile(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    attacker, alice = clients["127.0.0.2"], clients["127.0.0.1"]
    finished: list[float] = []

    async def guess() -> httpx.Response:
        response = await token_call(attacker, "alice", "wrong-password")
        finished.append(time.monotonic())
        return response

    attack = asyncio.gather(*(guess() for _ in range(40)))
    while not finished:  # noqa: ASYNC110 - the attack is under way once answers have started to come back
        await asyncio.sleep(0.005)
    alice_started = time.monotonic()
    await assert_logs_in(alice, "alice")
    counts = tally(await attack)
    assert counts.get(401, 0) <= PAIR_LIMIT, counts
    assert counts[429] >= 40 - PAIR_LIMIT, counts
    assert alice_started < max(finished)  # she logged in during the attack, not after it
    assert_throttled(await token_call(attacker, "alice", PASSWORD))  # no check runs from there, even if right
    await assert_logs_in(alice, "alice")


async def test_an_address_guessing_many_usernames_is_locked_for_all_of_them(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    """Three waves of 8 at once (fewer than the password-check queue admits from one address, so none is refused
    as busy): at most `max_failed_logins_per_address` checks, then the address is locked."""
    attacker = clients["127.0.0.3"]
    responses: list[httpx.Response] = []
    for wave in range(3):
        names = [f"guess-{wave}-{n}" for n in range(8)]
        responses += await asyncio.gather(*(token_call(attacker, name, "wrong") for name in names))
    counts = tally(responses)
    assert counts.get(401, 0) <= ADDRESS_LIMIT, counts
    assert_throttled(await token_call(attacker, "bob", PASSWORD))
    await assert_logs_in(clients["127.0.0.1"], "bob")


async def test_a_success_from_the_attackers_address_does_not_reset_its_count(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    """Mallory logs in as herself between guesses at other usernames: her address is locked all the same for
    names she never logged in as (her own known pair is held to its own budget only)."""
    mallory = clients["127.0.0.4"]
    for n in range(ADDRESS_LIMIT):
        assert_error(await token_call(mallory, f"guess-{n}", "wrong"), 401, "invalid_credentials")
        if n < ADDRESS_LIMIT - 1:
            await assert_logs_in(mallory, "mallory")
    assert_throttled(await token_call(mallory, "guess-x", "wrong"))
    assert_throttled(await token_call(mallory, "bob", PASSWORD))  # even the right password: no check runs
    await assert_logs_in(mallory, "mallory")


async def test_many_addresses_guessing_one_user_stop_at_her_budget(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    """One guess each from 30 addresses, in three waves: at most `max_failed_logins_per_user` are checked; then the username is
    refused from new addresses but carol's own (known) address still logs her in."""
    await assert_logs_in(clients["127.0.0.1"], "carol")
    responses: list[httpx.Response] = []
    for batch in range(
        3
    ):  # 10 at a time: fewer than the password-check queue holds, so none is refused as busy
        addresses = [f"127.0.1.{batch * 10 + n}" for n in range(1, 11)]
        responses += await asyncio.gather(*(token_call(clients[a], "carol", "wrong") for a in addresses))
    counts = tally(responses)
    assert counts.get(401, 0) <= USER_LIMIT, counts
    assert counts[429] >= 30 - USER_LIMIT, counts
    assert_throttled(await token_call(clients["127.0.1.200"], "carol", PASSWORD))  # a new address waits
    await assert_logs_in(clients["127.0.0.1"], "carol")
    await assert_logs_in(clients["127.0.1.201"], "bob")  # other usernames are unaffected


async def test_a_flood_from_fresh_addresses_is_refused_not_queued(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    """60 guesses at once from 60 new addresses: only the checks the queue admits run (unknown pairs get
    cores - 1 slots and 3/4 of `max_waiting_logins` = 16), the rest are 429 without a check; alice's known
    address is served meanwhile."""
    await assert_logs_in(clients["127.0.0.1"], "alice")
    names = [(f"127.0.3.{n}", f"nobody-{n}") for n in range(1, 61)]
    attack = asyncio.gather(*(token_call(clients[a], name, "wrong") for a, name in names))
    await asyncio.sleep(0.05)
    await assert_logs_in(clients["127.0.0.1"], "alice")
    counts = tally(list(await attack))
    admitted = max(1, (os.cpu_count() or 1) - 1) + 16 - 16 // 4
    assert counts.get(401, 0) <= admitted, counts
    assert counts[429] >= 60 - admitted, counts


async def test_auth_hash_is_rate_limited_per_user(clients: dict[str, httpx.AsyncClient]) -> None:
    client = clients["127.0.0.5"]
    tokens = {}
    for name in ("bob", "mallory"):
        response = await token_call(client, name, PASSWORD)
        assert response.status_code == 200, response.text
        tokens[name] = {"Authorization": f"Bearer {response.json()['token']}"}

    async def hash_as(name: str) -> httpx.Response:
        return await client.post("/auth/hash", json={"password": "pw-x-long-enough"}, headers=tokens[name])

    responses = await asyncio.gather(*(hash_as("bob") for _ in range(HASH_PER_MINUTE + 3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * HASH_PER_MINUTE + [429] * 3, statuses
    for response in responses:
        if response.status_code == 429:
            assert_throttled(response)
        else:
            assert response.json()["password_hash"].startswith("$argon2id$")
    assert (await hash_as("mallory")).status_code == 200  # per user
