"""Client-side trust: pinned server fingerprints (known_servers.json), saved tokens and last sessions (0600)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from specai.errors import CorruptFileError, InvalidRequestError, TrustError
from specai.files import read_json, write_private_json
from specai.identity.fingerprint import normalize_fingerprint


@dataclass(frozen=True)
class ServerAddress:
    """A normalised https server address."""

    host: str
    port: int

    @property
    def origin(self) -> str:
        """`https://host:port`, the key under which pins and tokens are stored."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


class ServerUrlError(InvalidRequestError):
    """A server URL that is not `https://HOST[:PORT]`: on the command line, a usage error."""


def parse_server(url: str) -> ServerAddress:
    """Parse `https://host[:port]` (scheme optional); plain http is refused (ServerUrlError)."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme.lower() != "https":
        raise ServerUrlError(f"specai servers speak HTTPS only; use https:// instead of {parts.scheme}://")
    if not parts.hostname:
        raise ServerUrlError(f"'{url}' is not a server URL (expected https://HOST:PORT)")
    try:
        port = 3000 if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ServerUrlError(f"'{url}' has an invalid port (expected a number from 1 to 65535)")
    return ServerAddress(parts.hostname.lower(), port)


class _JsonMap:
    """A small JSON object file keyed by server origin, rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        data = read_json(self.path, {})
        if not isinstance(data, dict):
            raise CorruptFileError(f"{self.path} should hold a JSON object; fix or remove it")
        return data

    def get(self, origin: str) -> Any:
        return self._read().get(origin)

    def all(self) -> dict[str, Any]:
        """Every entry, in the order they were first stored."""
        return self._read()

    def set(self, origin: str, value: Any) -> None:
        data = self._read()
        data[origin] = value
        write_private_json(self.path, data)

    def remove(self, origin: str) -> bool:
        data = self._read()
        if data.pop(origin, None) is None:
            return False
        write_private_json(self.path, data)
        return True


class KnownServers(_JsonMap):
    """Pinned fingerprints, like ssh's known_hosts."""

    def __init__(self, home: Path) -> None:
        super().__init__(home / "known_servers.json")


class SavedTokens(_JsonMap):
    """Bearer tokens from `specai login`, per server."""

    def __init__(self, home: Path) -> None:
        super().__init__(home / "tokens.json")


class LastSessions(_JsonMap):
    """The last session id used with each server, for `specai query --continue`."""

    def __init__(self, home: Path) -> None:
        super().__init__(home / "last_sessions.json")


def verify_identity(
    server: ServerAddress,
    presented: str,
    known: KnownServers,
    *,
    expected: str | None = None,
    confirm: Callable[[str, str], bool] | None = None,
) -> None:
    """Decide whether to trust the `presented` fingerprint; pin it when the user vouched for it."""
    pinned = known.get(server.origin)
    if expected is not None:
        wanted = normalize_fingerprint(expected)
        if presented != wanted:
            raise TrustError(
                f"{server.origin} presented fingerprint {presented}, not the expected {wanted}; refusing to connect",
                fingerprint=presented,
            )
        if pinned != presented:
            known.set(server.origin, presented)
        return
    if pinned is not None:
        if pinned != presented:
            raise TrustError(
                f"the certificate of {server.origin} CHANGED: pinned {pinned}, presented {presented}. "
                "This may be an attack. If the server really has a new certificate, check its fingerprint with "
                f"`specai cert fingerprint` on the server and pass --fingerprint {presented}",
                fingerprint=presented,
            )
        return
    if confirm is not None and confirm(server.origin, presented):
        known.set(server.origin, presented)
        return
    raise TrustError(
        f"{server.origin} is not a known server; its certificate fingerprint is {presented}. "
        f"Check it (`specai cert fingerprint` on the server) and pass --fingerprint {presented}",
        fingerprint=presented,
    )
