"""Helpers shared by the vendor providers: one-line upstream errors that never leak a key, tool-argument parsing."""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from specai.providers.base import UpstreamError, UpstreamTimeoutError

_HTTPX_MODULES = {"httpx", "httpx2"}
MAX_MESSAGE = 240
MIN_SECRET = 8  # shorter "keys" (placeholders like "x") are not masked: that would garble the message


def one_line(text: object, secret: str | None = None, limit: int = MAX_MESSAGE) -> str:
    """`text` squeezed onto one line, the secret masked, cut to `limit` characters."""
    line = " ".join(str(text).split())
    if secret and len(secret) >= MIN_SECRET:
        line = line.replace(secret, "***")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def display_url(url: str) -> str:
    """The URL to show in messages: no user:password, query or trailing slash."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def transport_failure(exc: BaseException) -> Literal["timeout", "transport"] | None:
    """Classify an httpx/httpx2 exception raised through an SDK without importing httpx here."""
    names = {cls.__name__ for cls in type(exc).__mro__ if cls.__module__.split(".")[0] in _HTTPX_MODULES}
    if "TimeoutException" in names:
        return "timeout"
    if "TransportError" in names or "RequestError" in names:
        return "transport"
    return None


def timeout_error(vendor: str, url: str, timeout: float) -> UpstreamTimeoutError:
    """The upstream stayed silent for longer than the request timeout."""
    return UpstreamTimeoutError(f"{vendor} at {url} did not answer within {timeout:g} s (request timeout)")


def connection_error(url: str, cause: BaseException | None, streaming: bool) -> UpstreamError:
    """The upstream could not be reached, or the connection broke mid-answer."""
    reason = f": {one_line(cause)}" if cause is not None and str(cause) else ""
    if streaming:
        return UpstreamError(f"lost the connection to {url} mid-answer{reason}")
    return UpstreamError(f"cannot reach {url}{reason}")


def status_error(vendor: str, url: str, status: int, message: str, secret: str | None) -> UpstreamError:
    """An HTTP error status from the upstream, as one clear line naming the fix where there is one."""
    detail = one_line(message, secret) or "no details"
    details = {"upstream_status": status}
    if status == 401:
        return UpstreamError(
            f"upstream rejected the API key ({vendor} at {url} answered HTTP 401); check api_key_source",
            details=details,
        )
    if status == 403:
        return UpstreamError(f"{vendor} refused access (HTTP 403): {detail}", details=details)
    if status == 429:
        return UpstreamError(
            f"{vendor} rate limit or quota exceeded (HTTP 429): {detail}; retry later", details=details
        )
    if status >= 500:
        return UpstreamError(f"{vendor} failed with HTTP {status}: {detail}", details=details)
    return UpstreamError(f"{vendor} rejected the request (HTTP {status}): {detail}", details=details)


def parse_arguments(raw: str) -> dict[str, Any]:
    """Tool-call arguments from their JSON text; anything that is not a JSON object comes back as `{"_raw": raw}`."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}


def new_call_id() -> str:
    """A unique id for a tool call whose upstream gave none (Ollama, some OpenAI-compatible servers)."""
    return f"call_{uuid.uuid4().hex[:12]}"


def json_object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (for reading what a server sent, which may be null or junk)."""
    return value if isinstance(value, dict) else {}


def json_str(value: Any) -> str | None:
    """`value` if it is a JSON string, else None."""
    return value if isinstance(value, str) else None


def json_int(value: Any) -> int | None:
    """`value` if it is a JSON integer, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
