"""Peer tokens: short-lived JWTs a registry signs with its TLS key, so members reach each other without passwords.

A member asks its registry for a token naming itself (`sub`) and the member it wants to call (`aud`); the callee
checks it against the registry certificate it pinned when joining and lets it act only for instance `sub`, and
only on the mesh routes. The mesh password never leaves for a peer the operator did not pin.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from specai.errors import TlsError, TokenError
from specai.users.access import Principal

PEER_TYP = "mesh-peer"
PEER_PREFIX = "peer:"  # user ids of peer principals; account names cannot contain ':'
TTL_SECS = (
    90  # between the 60 and 120 s the design allows: long enough for a heartbeat round, short if stolen
)
_LEEWAY = 5
_ALGORITHMS = ("ES256", "ES384", "RS256")


def load_signing_key(path: Path, cert_pem: str) -> PrivateKeyTypes:
    """The server's TLS private key (PEM), which signs the peer tokens it issues; it must match `cert_pem`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsError(f"cannot load the TLS key {path} to sign peer tokens: {exc}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    served = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    if key.public_key().public_bytes(*spki) != served.public_bytes(*spki):
        raise TlsError(f"the TLS key {path} does not match the certificate this server serves")
    return key


def algorithm(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """ES256 for P-256 keys (the generated certificates), ES384 for P-384, RS256 for RSA; others are refused."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        if isinstance(key.curve, ec.SECP384R1):
            return "ES384"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    raise TlsError("peer tokens need a P-256, P-384 or RSA TLS key")


def issue(
    key: PrivateKeyTypes, issuer: str, subject: str, audience: str, ttl: int = TTL_SECS
) -> tuple[str, int]:
    """Sign a token letting instance `subject` call instance `audience` for `ttl` seconds; returns (token, exp)."""
    exp = int(time.time()) + ttl
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": exp,
        "typ": PEER_TYP,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=algorithm(key)), exp  # type: ignore[arg-type]


def looks_like_peer_token(token: str) -> bool:
    """True for a JWT signed with a public-key algorithm (account tokens are HS256)."""
    try:
        return jwt.get_unverified_header(token).get("alg") in _ALGORITHMS
    except jwt.PyJWTError:
        return False


@dataclass(frozen=True)
class PeerClaims:
    """A verified peer token: who may act (`sub`) at which member (`aud`), signed by registry `iss`, until `exp`."""

    iss: str
    sub: str
    aud: str
    exp: int


class PeerTokenVerifier:
    """Checks peer tokens against the registry certificate this member pinned, for this member only."""

    def __init__(self, registry_cert_der: bytes, issuer: str, audience: str) -> None:
        self.public_key = x509.load_der_x509_certificate(registry_cert_der).public_key()
        self.algorithm = algorithm(self.public_key)
        self.issuer = issuer
        self.audience = audience

    def verify(self, token: str) -> PeerClaims:
        """The claims of a valid token for this member; TokenError (401) otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,  # type: ignore[arg-type]
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=_LEEWAY,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid peer token: {exc}") from None
        if claims.get("typ") != PEER_TYP or not isinstance(claims.get("sub"), str):
            raise TokenError("invalid peer token: not a mesh peer token")
        return PeerClaims(claims["iss"], claims["sub"], claims["aud"], int(claims["exp"]))


def peer_principal(instance_id: str) -> Principal:
    """The principal of a verified peer token: a mesh identity that may act only for `instance_id`."""
    return Principal(user_id=PEER_PREFIX + instance_id, name=instance_id, role="mesh", scope="mesh")


def bound_instance(principal: Principal) -> str | None:
    """The only instance id a peer principal may act for; None for an account."""
    return principal.user_id[len(PEER_PREFIX) :] if principal.user_id.startswith(PEER_PREFIX) else None
