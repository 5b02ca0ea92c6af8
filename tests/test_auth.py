"""Passwords (argon2id and legacy spec-ai PBKDF2) and bearer tokens (JWT HS256)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
import uuid
from pathlib import Path

import jwt
import pytest

from specai import auth
from specai.config import AuthSettings, Settings
from specai.errors import ConfigError, TokenError

SECRET = "s" * 48
OTHER_SECRET = "t" * 48


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def independent_legacy_hash(password: str, salt: bytes) -> str:
    """The original spec-ai format, built without specai: b64url-nopad(salt16 + PBKDF2-HMAC-SHA256 x100000)."""
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000, 32)
    return base64.urlsafe_b64encode(salt + digest).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def argon_hash() -> str:
    """One argon2id hash of 'correct horse' (hashing is slow; share it)."""
    return auth.hash_password("correct horse")


# --- passwords ------------------------------------------------------------------------------------------------


def test_hash_password_is_argon2id_phc_string(argon_hash: str) -> None:
    parts = argon_hash.split("$")
    assert parts[0] == ""
    assert parts[1] == "argon2id"
    assert parts[2] == "v=19"
    assert parts[3].startswith("m=")
    assert ",t=" in parts[3]
    assert ",p=" in parts[3]
    assert len(parts) == 6
    assert "correct horse" not in argon_hash
    assert auth.is_valid_hash(argon_hash)
    assert auth.needs_rehash(argon_hash) is False


def test_verify_password_accepts_right_and_rejects_wrong(argon_hash: str) -> None:
    assert auth.verify_password(argon_hash, "correct horse") is True
    assert auth.verify_password(argon_hash, "correct horsE") is False


def test_verify_password_returns_false_for_malformed_hashes() -> None:
    assert auth.verify_password("$argon2id$garbage", "pw") is False
    assert auth.verify_password("not-a-hash", "pw") is False
    assert auth.verify_password("", "pw") is False


def test_legacy_hash_from_specai_verifies() -> None:
    stored = auth.legacy_hash("hunter2")
    assert auth.verify_password(stored, "hunter2") is True
    assert auth.verify_password(stored, "hunter3") is False
    assert auth.is_valid_hash(stored)
    assert auth.needs_rehash(stored) is True


def test_legacy_hash_built_independently_verifies() -> None:
    salt = os.urandom(16)
    stored = independent_legacy_hash("hunter2", salt)
    assert "=" not in stored
    assert len(base64.urlsafe_b64decode(stored + "==")) == 48
    assert auth.verify_password(stored, "hunter2") is True
    assert auth.verify_password(stored, "Hunter2") is False
    assert auth.needs_rehash(stored) is True
    assert auth.legacy_hash("hunter2", salt) == stored


def test_legacy_hash_with_url_safe_characters_verifies() -> None:
    # A salt whose encoding contains '-' and '_' proves the URL-safe alphabet is used on both sides.
    salt = bytes([0xFB, 0xFF, 0xBF] * 5 + [0xFF])
    stored = independent_legacy_hash("pw", salt)
    assert "-" in stored or "_" in stored
    assert auth.verify_password(stored, "pw") is True


def test_is_valid_hash_rejects_unknown_formats() -> None:
    assert auth.is_valid_hash("plaintext-password") is False
    assert auth.is_valid_hash(b64url(os.urandom(40))) is False
    assert auth.is_valid_hash("$argon2id$v=19$m=1") is False


# --- tokens ---------------------------------------------------------------------------------------------------


def test_issue_token_signs_hs256_with_the_contract_claims() -> None:
    token, claims = auth.issue_token(SECRET, "alice", 3600, user_id="u-1", generation=3)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], issuer="specai")
    assert set(payload) == {"sub", "iat", "exp", "jti", "iss", "uid", "gen"}
    assert payload["sub"] == "alice"
    assert (payload["uid"], payload["gen"]) == ("u-1", 3)
    assert payload["iss"] == "specai"
    assert payload["exp"] - payload["iat"] == 3600
    assert abs(payload["iat"] - time.time()) < 5
    assert uuid.UUID(hex=payload["jti"])
    assert claims == auth.TokenClaims(
        sub="alice", iat=payload["iat"], exp=payload["exp"], jti=payload["jti"], uid="u-1", gen=3
    )


def test_decode_token_returns_the_issued_claims() -> None:
    token, claims = auth.issue_token(SECRET, "alice", 60)
    assert auth.decode_token(SECRET, token) == claims


def test_issued_tokens_have_unique_ids() -> None:
    _, first = auth.issue_token(SECRET, "alice", 60, now=1_700_000_000)
    _, second = auth.issue_token(SECRET, "alice", 60, now=1_700_000_000)
    assert first.jti != second.jti


def test_expired_token_raises_token_error() -> None:
    token, _ = auth.issue_token(SECRET, "alice", 60, now=int(time.time()) - 3600)
    with pytest.raises(TokenError) as info:
        auth.decode_token(SECRET, token)
    assert "expired" in info.value.message
    assert "specai login" in info.value.message
    assert info.value.code == "unauthorized"
    assert info.value.status == 401


def test_tampered_token_raises_token_error() -> None:
    token, _ = auth.issue_token(SECRET, "alice", 3600)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    forged = ".".join([header, b64url(json.dumps(claims).encode()), signature])
    with pytest.raises(TokenError, match="invalid token"):
        auth.decode_token(SECRET, forged)


def test_token_signed_with_another_secret_raises_token_error() -> None:
    token, _ = auth.issue_token(OTHER_SECRET, "alice", 3600)
    with pytest.raises(TokenError, match="invalid token"):
        auth.decode_token(SECRET, token)


def test_token_with_alg_none_is_rejected() -> None:
    now = int(time.time())
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(
        json.dumps({"sub": "admin", "iat": now, "exp": now + 3600, "jti": "x", "iss": "specai"}).encode()
    )
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        with pytest.raises(TokenError, match="invalid token"):
            auth.decode_token(SECRET, token)


def test_token_with_other_algorithm_is_rejected() -> None:
    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 3600, "jti": "x", "iss": "specai"}
    long_secret = "u" * 64
    token = jwt.encode(claims, long_secret, algorithm="HS512")
    with pytest.raises(TokenError, match="invalid token"):
        auth.decode_token(long_secret, token)


@pytest.mark.parametrize("drop", ["sub", "iat", "exp", "jti", "iss", "uid", "gen"])
def test_token_missing_a_claim_is_rejected(drop: str) -> None:
    now = int(time.time())
    claims = {
        "sub": "alice",
        "iat": now,
        "exp": now + 3600,
        "jti": "x",
        "iss": "specai",
        "uid": "alice",
        "gen": 0,
    }
    del claims[drop]
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="invalid token"):
        auth.decode_token(SECRET, token)


def test_token_from_another_issuer_is_rejected() -> None:
    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 3600, "jti": "x", "iss": "someone-else"}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="invalid token"):
        auth.decode_token(SECRET, token)


def test_token_with_claims_of_the_wrong_type_is_rejected() -> None:
    now = int(time.time())
    claims = {
        "sub": "alice",
        "iat": now,
        "exp": now + 3600,
        "jti": "x",
        "iss": "specai",
        "uid": 7,
        "gen": "0",
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="invalid token"):
        auth.decode_token(SECRET, token)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "Bearer x"])
def test_malformed_token_is_rejected(garbage: str) -> None:
    with pytest.raises(TokenError, match="invalid token"):
        auth.decode_token(SECRET, garbage)


# --- token secret ---------------------------------------------------------------------------------------------


def test_load_token_secret_generates_once_and_reuses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    secret = auth.load_token_secret(settings)
    path = home / "token_secret"
    assert path.read_text().strip() == secret
    assert len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert auth.load_token_secret(settings) == secret
    assert auth.load_token_secret(Settings(home=home)) == secret


def test_generated_secrets_differ_between_homes(tmp_path: Path) -> None:
    first = auth.load_token_secret(Settings(home=tmp_path / "a"))
    second = auth.load_token_secret(Settings(home=tmp_path / "b"))
    assert first != second


def test_configured_token_secret_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    configured = "k" * 32
    home = tmp_path / "home"
    settings = Settings(home=home, auth=AuthSettings(token_secret=configured))
    assert auth.load_token_secret(settings) == configured
    assert not home.exists()


def test_short_configured_token_secret_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", auth=AuthSettings(token_secret="too-short"))
    with pytest.raises(ConfigError) as info:
        auth.load_token_secret(settings)
    assert "token_secret" in info.value.message
    assert "at least 32 bytes" in info.value.message
    assert "too-short" not in info.value.message  # never echo the secret
    assert not (tmp_path / "home").exists()


def test_short_saved_token_secret_is_a_config_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "token_secret").write_text("short\n")
    with pytest.raises(ConfigError) as info:
        auth.load_token_secret(Settings(home=home))
    assert str(home / "token_secret") in info.value.message
    assert (home / "token_secret").read_text() == "short\n"
