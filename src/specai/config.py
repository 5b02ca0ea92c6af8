"""Settings: what specai can be configured with, and `load_settings`, the one way in (parsed by `config_file`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specai.errors import ConfigError

CONFIG_FILENAME = "spec-ai.config.toml"
DEFAULT_SERVER_URL = "https://127.0.0.1:3000"
KNOWN_PROVIDERS = ("mock", "openai", "anthropic", "ollama")


@dataclass(frozen=True)
class ServerSettings:
    """`[server]`: where and how the HTTPS server listens."""

    host: str = "127.0.0.1"
    port: int = 3000
    enable_cors: bool = True
    cors_origins: tuple[str, ...] = ()
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    tls_san: tuple[str, ...] = ()
    tls_validity_days: int = 365
    max_body_bytes: int = 1_048_576
    sse_keepalive_secs: float = 15.0
    idle_timeout_secs: float = 10.0
    max_connections: int = 4096
    workers: int = 1  # server processes sharing the port; more than 1 needs PostgreSQL


@dataclass(frozen=True)
class AuthSettings:
    """`[auth]`: bearer-token authentication."""

    enabled: bool = False
    credentials_file: Path | None = None
    token_expiry_secs: int = 86400
    token_secret: str | None = None
    max_failed_logins: int = 5  # per (username, client address)
    max_failed_logins_per_address: int = 10
    max_failed_logins_per_user: int = 20  # from addresses that never logged in as that user
    lockout_secs: int = 30
    max_waiting_logins: int = 16  # password checks queued for a CPU; more get 429 at once
    hash_per_minute: int = 10  # POST /auth/hash per user
    min_password_length: int = 8  # `specai auth add-user`/`passwd` refuse shorter new passwords


@dataclass(frozen=True)
class DatabaseSettings:
    """`[database]`: where state is stored; on PostgreSQL, how many connections each process may hold."""

    path: Path | None = None
    url: str | None = None
    pool_size: int = 5  # PostgreSQL connections kept open per process
    max_overflow: int = 5  # more opened under load, closed when returned
    leader_lease_secs: float = (
        10.0  # a singleton job moves to another process this long after its holder dies
    )


@dataclass(frozen=True)
class GraphSettings:
    """`[graph]`: changelog retention, change-stream polling, the bootstrap root and the per-account node quota."""

    changelog_retention_days: int = 30
    stream_poll_secs: float = 1.0
    bootstrap_root: Path | None = None
    max_nodes_per_account: int = 100_000  # over the sessions an account owns; 0 = unlimited


@dataclass(frozen=True)
class MeshSettings:
    """`[mesh]`: how this server takes part in a mesh of specai servers."""

    heartbeat_interval_secs: float = 5.0
    leader_timeout_secs: float = 15.0
    username: str | None = None
    password_source: str | None = None
    advertise_url: str | None = None
    max_payload_bytes: int = 65_536
    message_retention_secs: int = 604_800
    trusted_fingerprints: tuple[str, ...] = ()  # peers besides the pinned registry that may get the password
    max_members_per_account: int = 16
    max_queued_messages: int = 10_000  # per recipient
    max_inbox_bytes: int = 1_048_576  # of payloads per inbox page


@dataclass(frozen=True)
class SyncSettings:
    """`[sync]`: graph sync between mesh members; the coordinator pulls from every live member each interval."""

    enabled: bool = False
    interval_secs: float = 60.0
    namespaces: list[dict[str, Any]] = field(
        default_factory=list
    )  # [{session_id, graph_name}] enabled at start
    max_concurrent_syncs: int = 3
    max_clock_skew_secs: float = 60.0  # remote stamps further ahead than this are refused
    page_size: int = 1000  # changes per /sync/request page
    retry_interval_secs: float = 300.0  # the longest backoff after a peer fails


@dataclass(frozen=True)
class A2ASettings:
    """`[a2a]`: serve the configured agents as A2A agents (card at `/.well-known/agent-card.json`, JSON-RPC)."""

    enabled: bool = True
    url: str | None = None  # the https URL the card advertises (default: the URL the card was fetched at)


@dataclass(frozen=True)
class MCPSettings:
    """`[mcp]`: serve the agents, the graph and the safe tools as an MCP server (Streamable HTTP at `/mcp`)."""

    enabled: bool = True
    allowed_origins: tuple[str, ...] = ()  # browser Origins allowed besides the server's own


@dataclass(frozen=True)
class ModelSettings:
    """`[model]`: the default model every agent falls back to."""

    provider: str = "mock"
    model_name: str | None = None
    base_url: str | None = None
    api_key_source: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    request_timeout_secs: float = 120.0
    mock_delay_ms: int = 20


@dataclass(frozen=True)
class AgentSettings:
    """`[agents.<name>]`: one agent profile; unset model keys fall back to `[model]`."""

    prompt: str | None = None
    model_provider: str | None = None
    model_name: str | None = None
    base_url: str | None = None
    api_key_source: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    memory_k: int = 10
    allowed_tools: tuple[str, ...] | None = None
    denied_tools: tuple[str, ...] | None = None
    max_tool_iterations: int = 5
    mock_script: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class JoinSettings:
    """`specai server --join URL [--join-fingerprint FP]`: the mesh registry to join once serving (CLI only)."""

    url: str
    fingerprint: str | None = None  # None: the registry's pin in known_servers.json


@dataclass(frozen=True)
class Settings:
    """Everything specai needs to run, resolved from defaults, the config file and the environment."""

    home: Path
    config_path: Path | None = None
    default_agent: str | None = None
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    graph: GraphSettings = field(default_factory=GraphSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    agents: Mapping[str, AgentSettings] = field(default_factory=dict)
    mesh: MeshSettings = field(default_factory=MeshSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    a2a: A2ASettings = field(default_factory=A2ASettings)
    mcp: MCPSettings = field(default_factory=MCPSettings)
    join: JoinSettings | None = None  # set by `specai server --join`, never by the file or the environment
    warnings: tuple[str, ...] = ()

    @property
    def credentials_file(self) -> Path:
        """The credentials file, defaulting to `$SPECAI_HOME/credentials.json`."""
        return self.auth.credentials_file or self.home / "credentials.json"

    @property
    def tls_dir(self) -> Path:
        """Where the generated certificate and key live."""
        return self.home / "tls"


def resolve_secret(source: str, key: str, env: Mapping[str, str] = os.environ) -> str:
    """The secret a `*_source` setting names: `env:VAR`, `file:PATH` (trimmed, `~` expanded) or the value itself.

    Raises ConfigError saying what to fix; `key` names the setting in messages (e.g. `api_key_source`).
    """
    if source.startswith("env:"):
        name = source[4:]
        value = env.get(name)
        if not value:
            raise ConfigError(f'environment variable {name} is not set ({key} = "{source}"); export it')
        return value
    if source.startswith("file:"):
        path = Path(source[5:]).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {path} ({key}): {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{path} ({key}) is empty")
        return value
    return source


def home_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Return `$SPECAI_HOME`, default `~/.spec-ai`."""
    return Path(env.get("SPECAI_HOME") or "~/.spec-ai").expanduser()


def find_config(explicit: Path | None, env: Mapping[str, str], cwd: Path, home: Path) -> Path | None:
    """Apply the lookup order: --config > $SPECAI_CONFIG > ./spec-ai.config.toml > $SPECAI_HOME/spec-ai.config.toml."""
    if explicit is not None:
        return explicit.expanduser()
    if env.get("SPECAI_CONFIG"):
        return Path(env["SPECAI_CONFIG"]).expanduser()
    for candidate in (cwd / CONFIG_FILENAME, home / CONFIG_FILENAME):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    config_path: Path | None = None, env: Mapping[str, str] = os.environ, cwd: Path | None = None
) -> Settings:
    """Load settings from the config file (if any) and `SPECAI_<SECTION>_<KEY>` overrides; validate them all."""
    from specai.config_file import read_settings  # it builds the classes above

    home = home_dir(env)
    return read_settings(find_config(config_path, env, cwd or Path.cwd(), home), env, home)
