"""Pinning, for every client: fetch a server's certificate sending nothing, check it against the pin, and only
then open a TLS context that trusts that one certificate, so no secret ever reaches an impostor."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

from specai.client.errors import handshake_failure, timed_out, unreachable
from specai.errors import TlsError, TrustError
from specai.identity.fingerprint import fingerprint_der
from specai.identity.tls import pinned_ssl_context
from specai.identity.trust import KnownServers, ServerAddress, verify_identity

__all__ = ["check_pin", "fetch_cert", "fetch_cert_async", "pinned_context"]


def fetch_cert(server: ServerAddress, timeout: float) -> bytes:
    """The server's DER certificate from a handshake that verifies nothing and sends nothing else; a failure says
    which step failed (the connection, or the TLS handshake: plain HTTP on the port, or silence)."""
    try:
        sock = socket.create_connection((server.host, server.port), timeout=timeout)
    except TimeoutError:
        raise timed_out(server, timeout, connected=False) from None
    except OSError as exc:
        raise unreachable(server, exc) from None
    with sock:
        try:
            with _unverified().wrap_socket(sock, server_hostname=server.host) as tls:
                der = tls.getpeercert(True)
        except TimeoutError:
            raise timed_out(server, timeout, connected=True) from None
        except OSError as exc:  # ssl.SSLError included
            raise handshake_failure(server, exc) from None
    if not der:
        raise TlsError(f"{server.origin} presented no certificate")
    return der


async def fetch_cert_async(server: ServerAddress, handshake_secs: float) -> bytes:
    """`fetch_cert` for an event loop: a silent server costs a timer, not one of the few threads;
    `handshake_secs` bounds the connection and the handshake together."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(handshake_secs):
            _, writer = await asyncio.open_connection(server.host, server.port)
            await writer.start_tls(_unverified(), server_hostname=server.host)
        der = writer.get_extra_info("ssl_object").getpeercert(True)
    except TimeoutError:
        raise timed_out(server, handshake_secs, connected=writer is not None) from None
    except ssl.SSLError as exc:
        raise handshake_failure(server, exc) from None
    except OSError as exc:
        raise (unreachable(server, exc) if writer is None else handshake_failure(server, exc)) from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()
    if not der:
        raise TlsError(f"{server.origin} presented no certificate")
    return bytes(der)


def check_pin(
    server: ServerAddress,
    der: bytes,
    known: KnownServers | None,
    *,
    expected: str | None = None,
    trusted: frozenset[str] = frozenset(),
    confirm: Callable[[str, str], bool] | None = None,
) -> str:
    """The fingerprint of `der` once it is trusted, else TrustError.

    With `known` (a person's or an operator's pins): `expected`, else the pin in known_servers.json, else a
    fingerprint in `trusted`, else `confirm` decides (see `verify_identity`). Without `known` (a peer the registry
    vouched for): only `expected` is accepted.
    """
    presented = fingerprint_der(der)
    if known is None:
        if presented != expected:
            raise TrustError(
                f"{server.origin} presents certificate {presented}, not the pinned {expected}",
                fingerprint=presented,
            )
    elif expected is not None or presented not in trusted:
        verify_identity(server, presented, known, expected=expected, confirm=confirm)
    return presented


def pinned_context(der: bytes) -> ssl.SSLContext:
    """A TLS context whose only trust anchor is the checked certificate (the name is not the identity)."""
    return pinned_ssl_context(der)


def _unverified() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
