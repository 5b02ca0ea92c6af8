"""The one error body every route sends, whatever went wrong."""

from __future__ import annotations

from typing import Any

import msgspec


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """`{"error", "code", "details"?}`: a message for people, a stable code for programs, and more when there is more
    (validation errors, `retry_after`, the valid values)."""

    error: str
    code: str
    details: Any = None
