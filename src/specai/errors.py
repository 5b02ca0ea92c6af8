"""Error hierarchy shared by the core, the server and the CLI; each error carries a stable `code`."""

from __future__ import annotations

from typing import Any, ClassVar


class SpecaiError(Exception):
    """Superclass of all specai errors. Never raised directly."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(SpecaiError):
    """The configuration file or an override is invalid."""

    code = "config_error"
    status = 500


class InvalidRequestError(SpecaiError):
    """The request is malformed or semantically invalid."""

    code = "invalid_request"
    status = 400


class NotFoundError(SpecaiError):
    """The named thing does not exist."""

    code = "not_found"
    status = 404


class ForbiddenError(SpecaiError):
    """The caller may see the thing but not do this to it (role, scope or read-only share)."""

    code = "forbidden"
    status = 403


class ConflictError(SpecaiError):
    """The thing already exists or changed underneath the caller."""

    code = "conflict"
    status = 409


class QuotaExceededError(ConflictError):
    """An account reached a configured limit (keys, members, queued messages, graph size)."""

    code = "quota_exceeded"


class UnprocessableError(SpecaiError):
    """The request is well-formed but a value is not acceptable (an unknown type, a weight out of range, ...)."""

    code = "unprocessable"
    status = 422


class InvalidNodeTypeError(UnprocessableError):
    """The node type is not one of the known types."""

    code = "invalid_node_type"


class VersionConflictError(ConflictError):
    """The caller's `version` is not the stored one: someone else changed the entity first."""

    code = "version_conflict"


class PayloadTooLargeError(SpecaiError):
    """A body or payload is larger than the configured limit."""

    code = "payload_too_large"
    status = 413


class UnknownInstanceError(NotFoundError):
    """No mesh member has that instance id (register it first)."""

    code = "unknown_instance"


class NotARepositoryError(InvalidRequestError):
    """Bootstrap was asked to index a folder that is not a code repository."""

    code = "not_a_repository"


class AuthError(SpecaiError):
    """Authentication failed."""

    code = "unauthorized"
    status = 401


class InvalidCredentialsError(AuthError):
    """Username or password is wrong."""

    code = "invalid_credentials"


class TokenError(AuthError):
    """A bearer token is missing, malformed, tampered with or expired."""

    code = "unauthorized"


class ThrottledError(SpecaiError):
    """Too many failed attempts; retry after `retry_after` seconds."""

    code = "too_many_attempts"
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after


class AuthDisabledError(SpecaiError):
    """Authentication is switched off on this server."""

    code = "auth_disabled"
    status = 503


class CredentialsError(SpecaiError):
    """The credentials file is missing, unreadable or malformed."""

    code = "credentials_error"
    status = 500


class CorruptFileError(SpecaiError):
    """A state file exists but cannot be read or parsed; it is left untouched."""

    code = "corrupt_file"


class DatabaseUnavailableError(SpecaiError):
    """The database cannot be opened or reached."""

    code = "database_unavailable"
    status = 503


class SchemaVersionError(ConfigError):
    """The database was written by a newer specai than this one."""

    code = "schema_too_new"


class TlsError(SpecaiError):
    """A certificate or key is missing, unreadable or mismatched."""

    code = "tls_error"
    status = 500


class TrustError(SpecaiError):
    """The server's certificate is not pinned, or differs from the pin."""

    code = "untrusted_server"
    status = 495

    def __init__(self, message: str, *, fingerprint: str | None = None) -> None:
        super().__init__(message, details={"fingerprint": fingerprint} if fingerprint else None)
        self.fingerprint = fingerprint


class StartupError(SpecaiError):
    """The server could not start listening."""

    code = "startup_failed"


class ConnectionFailedError(SpecaiError):
    """The server could not be reached."""

    code = "connection_failed"
    status = 502


class AgentNotFoundError(NotFoundError):
    """No agent profile has that name."""

    code = "agent_not_found"


class ProviderUnavailableError(SpecaiError):
    """The agent's model provider cannot serve requests."""

    code = "provider_unavailable"
    status = 503


class ExecutionError(SpecaiError):
    """The agent failed while producing its answer."""

    code = "execution_error"
    status = 500


class UpstreamError(SpecaiError):
    """The model vendor failed (5xx, 429, refused key, broken stream)."""

    code = "upstream_error"
    status = 502


class UpstreamTimeoutError(UpstreamError):
    """The model vendor did not answer within the request timeout."""

    code = "upstream_timeout"
    status = 504


class RemoteError(SpecaiError):
    """The server answered with an error body."""

    def __init__(self, message: str, *, status: int, code: str, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.http_status = status
        self.remote_code = code
