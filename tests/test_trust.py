"""Client-side trust: server addresses, pinned fingerprints (trust on first use, refuse changes), private files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from specai.errors import InvalidRequestError, SpecaiError, TlsError, TrustError
from specai.identity.trust import (
    KnownServers,
    LastSessions,
    SavedTokens,
    ServerAddress,
    ServerUrlError,
    parse_server,
    verify_identity,
)

FP_A = ":".join(["AA"] * 32)
FP_B = ":".join(["BB"] * 32)
SERVER = ServerAddress("127.0.0.1", 3000)
ORIGIN = "https://127.0.0.1:3000"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A $SPECAI_HOME that does not exist yet."""
    return tmp_path / "home"


@pytest.fixture
def known(home: Path) -> KnownServers:
    """An empty known_servers.json."""
    return KnownServers(home)


# --- parse_server ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "origin"),
    [
        ("https://127.0.0.1:3000", "127.0.0.1", 3000, "https://127.0.0.1:3000"),
        ("https://127.0.0.1", "127.0.0.1", 3000, "https://127.0.0.1:3000"),
        ("127.0.0.1", "127.0.0.1", 3000, "https://127.0.0.1:3000"),
        ("localhost:8443", "localhost", 8443, "https://localhost:8443"),
        ("  https://Example.COM:8443/  ", "example.com", 8443, "https://example.com:8443"),
        ("https://[::1]:4000", "::1", 4000, "https://[::1]:4000"),
        ("[::1]", "::1", 3000, "https://[::1]:3000"),
        ("https://[FE80::1]", "fe80::1", 3000, "https://[fe80::1]:3000"),
    ],
)
def test_parse_server_normalises_address(url: str, host: str, port: int, origin: str) -> None:
    server = parse_server(url)
    assert server == ServerAddress(host, port)
    assert server.origin == origin


@pytest.mark.parametrize("url", ["http://127.0.0.1:3000", "HTTP://example.com", "ftp://example.com"])
def test_parse_server_refuses_non_https(url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_server(url)
    assert "HTTPS only" in info.value.message
    assert "https://" in info.value.message
    assert info.value.code == "invalid_request"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://", "is not a server URL"),
        ("https://host:port", "invalid port"),
        ("https://host:70000", "invalid port"),
        ("https://host:0", "invalid port"),
    ],
)
def test_parse_server_rejects_malformed_urls(url: str, problem: str) -> None:
    with pytest.raises(InvalidRequestError, match=problem) as info:
        parse_server(url)
    assert url in info.value.message
    assert isinstance(info.value, ServerUrlError)  # the CLI's usage error (exit 2); same code on the wire
    assert info.value.code == "invalid_request"


def test_every_entry_is_listed_in_the_order_first_stored(home: Path) -> None:
    tokens = SavedTokens(home)
    assert tokens.all() == {}
    for origin in ("https://b:1", "https://a:1", "https://c:1"):
        tokens.set(origin, {"token": origin})
    tokens.set("https://b:1", {"token": "new"})  # replacing keeps the place
    assert tokens.remove("https://a:1") is True
    assert tokens.remove("https://a:1") is False
    assert list(tokens.all()) == ["https://b:1", "https://c:1"]
    assert tokens.all()["https://b:1"] == {"token": "new"}


# --- verify_identity ------------------------------------------------------------------------------------------


def test_expected_fingerprint_that_matches_is_pinned(known: KnownServers, home: Path) -> None:
    verify_identity(SERVER, FP_A, known, expected=FP_A)
    assert known.get(ORIGIN) == FP_A
    path = home / "known_servers.json"
    assert json.loads(path.read_text()) == {ORIGIN: FP_A}
    assert mode(path) == 0o600
    assert mode(home) == 0o700


def test_expected_fingerprint_is_normalised(known: KnownServers) -> None:
    verify_identity(SERVER, FP_A, known, expected=FP_A.replace(":", "").lower())
    assert known.get(ORIGIN) == FP_A


def test_expected_fingerprint_that_differs_is_refused(known: KnownServers, home: Path) -> None:
    with pytest.raises(TrustError) as info:
        verify_identity(SERVER, FP_A, known, expected=FP_B)
    error = info.value
    assert FP_A in error.message
    assert FP_B in error.message
    assert ORIGIN in error.message
    assert error.fingerprint == FP_A
    assert error.code == "untrusted_server"
    assert error.details == {"fingerprint": FP_A}
    assert not (home / "known_servers.json").exists()


def test_malformed_expected_fingerprint_is_a_tls_error(known: KnownServers) -> None:
    with pytest.raises(TlsError, match="is not a SHA-256 fingerprint"):
        verify_identity(SERVER, FP_A, known, expected="nonsense")


def test_expected_fingerprint_replaces_a_stale_pin(known: KnownServers) -> None:
    known.set(ORIGIN, FP_A)
    verify_identity(SERVER, FP_B, known, expected=FP_B)
    assert known.get(ORIGIN) == FP_B


def test_pinned_fingerprint_that_matches_passes_without_asking(known: KnownServers) -> None:
    known.set(ORIGIN, FP_A)

    def never(origin: str, fingerprint: str) -> bool:
        raise AssertionError("must not ask about a pinned server")

    verify_identity(SERVER, FP_A, known, confirm=never)
    assert known.get(ORIGIN) == FP_A


def test_changed_certificate_is_refused_loudly(known: KnownServers) -> None:
    known.set(ORIGIN, FP_A)
    asked: list[str] = []

    def confirm(origin: str, fp: str) -> bool:
        asked.append(fp)
        return True

    with pytest.raises(TrustError) as info:
        verify_identity(SERVER, FP_B, known, confirm=confirm)
    error = info.value
    assert "CHANGED" in error.message
    assert FP_A in error.message
    assert FP_B in error.message
    assert f"--fingerprint {FP_B}" in error.message
    assert error.fingerprint == FP_B
    assert asked == []  # never silently re-pinned, not even with a confirm callback
    assert known.get(ORIGIN) == FP_A


def test_unknown_server_without_confirm_is_refused_with_its_fingerprint(
    known: KnownServers, home: Path
) -> None:
    with pytest.raises(TrustError) as info:
        verify_identity(SERVER, FP_A, known)
    error = info.value
    assert "not a known server" in error.message
    assert FP_A in error.message
    assert f"--fingerprint {FP_A}" in error.message
    assert error.fingerprint == FP_A
    assert not (home / "known_servers.json").exists()


def test_unknown_server_declined_by_user_is_refused(known: KnownServers, home: Path) -> None:
    with pytest.raises(TrustError, match="not a known server"):
        verify_identity(SERVER, FP_A, known, confirm=lambda origin, fp: False)
    assert not (home / "known_servers.json").exists()


def test_unknown_server_confirmed_by_user_is_pinned(known: KnownServers, home: Path) -> None:
    asked: list[tuple[str, str]] = []

    def confirm(origin: str, fingerprint: str) -> bool:
        asked.append((origin, fingerprint))
        return True

    verify_identity(SERVER, FP_A, known, confirm=confirm)
    assert asked == [(ORIGIN, FP_A)]
    assert known.get(ORIGIN) == FP_A
    assert mode(home / "known_servers.json") == 0o600
    verify_identity(SERVER, FP_A, known)  # pinned now: no confirm needed


def test_pins_are_kept_per_server(known: KnownServers) -> None:
    other = ServerAddress("::1", 4000)
    verify_identity(SERVER, FP_A, known, expected=FP_A)
    verify_identity(other, FP_B, known, expected=FP_B)
    assert known.get(ORIGIN) == FP_A
    assert known.get("https://[::1]:4000") == FP_B
    with pytest.raises(TrustError, match="CHANGED"):
        verify_identity(other, FP_A, known)


# --- saved tokens and sessions --------------------------------------------------------------------------------


def test_saved_tokens_and_sessions_are_private_files(home: Path) -> None:
    tokens, sessions = SavedTokens(home), LastSessions(home)
    tokens.set(ORIGIN, "tok")
    sessions.set(ORIGIN, "sess")
    assert tokens.get(ORIGIN) == "tok"
    assert sessions.get(ORIGIN) == "sess"
    assert mode(home / "tokens.json") == 0o600
    assert mode(home / "last_sessions.json") == 0o600
    assert tokens.remove(ORIGIN) is True
    assert tokens.remove(ORIGIN) is False
    assert tokens.get(ORIGIN) is None
    assert mode(home / "tokens.json") == 0o600


@pytest.mark.parametrize("content", ["{not json", "[]", '"AA:BB"'])
def test_corrupt_known_servers_file_is_a_clear_error_and_kept(home: Path, content: str) -> None:
    home.mkdir()
    path = home / "known_servers.json"
    path.write_text(content)
    with pytest.raises(SpecaiError) as info:
        verify_identity(SERVER, FP_A, KnownServers(home), expected=FP_A)
    assert str(path) in info.value.message
    assert path.read_text() == content  # pins are never lost by overwriting a file we could not read
