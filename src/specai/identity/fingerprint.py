"""Certificate fingerprints: SHA-256 of the DER bytes, shown as uppercase colon-separated hex."""

from __future__ import annotations

import hashlib

from specai.errors import TlsError

# The A2A agent-card extension in which a specai server names its certificate (`params.sha256`, this format), so a
# client that fetched the card over a pinned connection can pin the card's endpoints by it.
TLS_FINGERPRINT_EXTENSION = "https://specai.dev/a2a/ext/tls-fingerprint/v1"


def format_fingerprint(digest: bytes) -> str:
    """Render a SHA-256 digest as uppercase colon-separated hex (AA:BB:...)."""
    return digest.hex(":").upper()


def fingerprint_der(der: bytes) -> str:
    """SHA-256 fingerprint of a DER certificate."""
    return format_fingerprint(hashlib.sha256(der).digest())


def normalize_fingerprint(text: str) -> str:
    """Accept a fingerprint with or without colons, any case, optional 'sha256:' prefix; return AA:BB form."""
    cleaned = text.strip().lower().removeprefix("sha256:").removeprefix("sha256 fingerprint=")
    hexdigits = cleaned.replace(":", "").replace(" ", "")
    try:
        raw = bytes.fromhex(hexdigits)
    except ValueError:
        raise TlsError(
            f"'{text}' is not a SHA-256 fingerprint (expected 64 hex digits, colons optional)"
        ) from None
    if len(raw) != 32:
        raise TlsError(f"'{text}' is not a SHA-256 fingerprint (expected 64 hex digits, colons optional)")
    return format_fingerprint(raw)
