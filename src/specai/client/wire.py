"""The wire shapes on the client side: request bodies built from the server's own request Structs, and answers
decoded into its response Structs, so a server and a client that drifted apart fail loudly, in one line."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from specai.errors import ConnectionFailedError

__all__ = ["UnexpectedAnswerError", "body_of", "decode"]

T = TypeVar("T")


class UnexpectedAnswerError(ConnectionFailedError):
    """The server answered with a body that is not the shape this client knows (another version, or not specai)."""

    code = "unexpected_answer"


def decode(content: bytes, shape: type[T], where: str) -> T:
    """`content` as `shape`, else UnexpectedAnswerError naming `where` (origin and path) and what did not fit."""
    try:
        return msgspec.json.decode(content, type=shape)
    except msgspec.ValidationError as exc:
        raise UnexpectedAnswerError(
            f"{where} answered with a body this client does not understand ({exc}); "
            "are the server and the client the same version?"
        ) from None
    except msgspec.DecodeError:
        raise UnexpectedAnswerError(f"{where} answered with something that is not JSON") from None


def body_of(request: msgspec.Struct) -> dict[str, Any]:
    """A request Struct as the JSON object to send, without the fields left at their default (the server fills
    those in from the same Struct), so only what the caller chose travels."""
    body: dict[str, Any] = {}
    for field in msgspec.structs.fields(request):
        value = getattr(request, field.name)
        if field.default is not msgspec.NODEFAULT and _same(value, field.default):
            continue
        if field.default_factory is not msgspec.NODEFAULT and _same(value, field.default_factory()):
            continue
        body[field.encode_name] = msgspec.to_builtins(value)
    return body


def _same(value: Any, default: Any) -> bool:
    return type(value) is type(default) and bool(value == default)
