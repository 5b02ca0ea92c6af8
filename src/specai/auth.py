"""Passwords (argon2id, legacy spec-ai PBKDF2) and bearer tokens (JWT HS256). Pure: no HTTP, no files but the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from specai.config import Settings
from specai.errors import ConfigError, TokenError
from specai.files import write_private

ISSUER = "specai"
ALGORITHM = "HS256"
_LEGACY_ITERATIONS = 100_000
_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile


@dataclass(frozen=True)
class TokenClaims:
    """The verified claims of a bearer token."""

    sub: str
    iat: int
    exp: int
    jti: str
    uid: str  # the user's id: a later user of the same name has another one
    gen: int  # the user's token generation when issued: raising it revokes this token


def hash_password(password: str) -> str:
    """Hash a password as an argon2id PHC string."""
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Check a password against an argon2 PHC hash or a legacy spec-ai PBKDF2 hash."""
    if stored.startswith("$argon2"):
        try:
            return _hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    return _verify_legacy(stored, password)


def needs_rehash(stored: str) -> bool:
    """True when a stored hash is legacy or uses weaker argon2 parameters than today's."""
    if not stored.startswith("$argon2"):
        return True
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def is_valid_hash(stored: str) -> bool:
    """True when `stored` looks like a hash this module can verify."""
    if stored.startswith("$argon2"):
        parts = stored.split("$")
        return len(parts) == 6
    return _decode_legacy(stored) is not None


def legacy_hash(password: str, salt: bytes | None = None) -> str:
    """Make a spec-ai PBKDF2 hash (for tests and migration tooling; new users get argon2id)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _LEGACY_ITERATIONS, 32)
    return base64.urlsafe_b64encode(salt + digest).rstrip(b"=").decode()


_CLAIMS = ("sub", "iat", "exp", "jti", "uid", "gen")
# Every token this module signs starts with the same header segment: a cheap way to tell ours from others' JWTs.
TOKEN_PREFIX = jwt.encode({}, "0" * 32, algorithm=ALGORITHM).partition(".")[0] + "."


def issue_token(
    secret: str,
    subject: str,
    expiry_secs: int,
    now: int | None = None,
    *,
    user_id: str | None = None,
    generation: int = 0,
) -> tuple[str, TokenClaims]:
    """Sign a JWT for `subject` (user id `user_id`, default the name) that expires `expiry_secs` from now."""
    iat = int(time.time()) if now is None else now
    claims = TokenClaims(
        sub=subject,
        iat=iat,
        exp=iat + expiry_secs,
        jti=uuid.uuid4().hex,
        uid=user_id or subject,
        gen=generation,
    )
    payload = {name: getattr(claims, name) for name in _CLAIMS} | {"iss": ISSUER}
    return jwt.encode(payload, secret, algorithm=ALGORITHM), claims


def decode_token(secret: str, token: str) -> TokenClaims:
    """Verify signature, issuer and expiry; raise TokenError otherwise."""
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": [*_CLAIMS, "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired; run `specai login` again") from None
    except jwt.PyJWTError:
        raise TokenError("invalid token; run `specai login` again") from None
    if not all(isinstance(payload[name], str) for name in ("sub", "jti", "uid")) or not isinstance(
        payload["gen"], int
    ):
        raise TokenError("invalid token; run `specai login` again")
    return TokenClaims(**{name: payload[name] for name in _CLAIMS})


def load_token_secret(settings: Settings) -> str:
    """The signing secret: `[auth] token_secret`, else `$SPECAI_HOME/token_secret`, generated once (0600).

    On PostgreSQL with auth on it must be configured: every server sharing the database must accept the tokens
    the others issue, so none may make up a secret of its own."""
    if settings.auth.token_secret:
        if len(settings.auth.token_secret.encode()) < 32:
            raise ConfigError("[auth] token_secret must be at least 32 bytes long")
        return settings.auth.token_secret
    from specai.store.urls import shares_state  # the database URL: only needed when no secret is configured

    if settings.auth.enabled and shares_state(settings):
        raise ConfigError(
            "[auth] token_secret is not set, and [database] url is PostgreSQL: every server sharing the database "
            "must sign tokens with the same secret. Make one with "
            '`python -c "import secrets; print(secrets.token_urlsafe(48))"` and set it as [auth] token_secret '
            "(or SPECAI_AUTH_TOKEN_SECRET) on each of them"
        )
    path = settings.home / "token_secret"
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(64)
        write_private(path, (secret + "\n").encode())
        return secret
    except OSError as exc:
        raise ConfigError(f"cannot read token secret {path}: {exc.strerror}") from None
    if len(secret) < 32:
        raise ConfigError(
            f"token secret {path} is shorter than 32 characters; delete it to generate a new one"
        )
    return secret


def _decode_legacy(stored: str) -> tuple[bytes, bytes] | None:
    try:
        raw = base64.urlsafe_b64decode(stored + "=" * (-len(stored) % 4))
    except (ValueError, TypeError):
        return None
    if len(raw) != 48:
        return None
    return raw[:16], raw[16:]


def _verify_legacy(stored: str, password: str) -> bool:
    decoded = _decode_legacy(stored)
    if decoded is None:
        return False
    salt, expected = decoded
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _LEGACY_ITERATIONS, 32)
    return hmac.compare_digest(digest, expected)
