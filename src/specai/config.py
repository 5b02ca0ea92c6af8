"""Settings: the one place that reads the config file and `SPECAI_*` environment variables."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
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


@dataclass(frozen=True)
class DatabaseSettings:
    """`[database]`: where state is stored (used from the agents issue on)."""

    path: Path | None = None
    url: str | None = None


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
    sync: Mapping[str, Any] = field(default_factory=dict)
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
    home = home_dir(env)
    path = find_config(config_path, env, cwd or Path.cwd(), home)
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return _Parser(source, env).settings(raw, home, path)


# ---------------------------------------------------------------------------------------------------------------


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _is_sha256(text: str) -> bool:
    try:
        return len(bytes.fromhex(text.strip().lower().removeprefix("sha256:").replace(":", ""))) == 32
    except ValueError:
        return False


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port number from 1 to 65535"


def _temperature(value: float | None) -> str | None:
    return None if value is None or 0 <= value <= 2 else "must be between 0 and 2"


def _provider(value: str | None) -> str | None:
    if value is None or value.lower() in KNOWN_PROVIDERS:
        return None
    return f"must be one of {', '.join(KNOWN_PROVIDERS)}"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _optional_positive(value: int | None) -> str | None:
    return None if value is None else _positive(value)


_CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("server", "port"): _port,
    ("server", "tls_validity_days"): _positive,
    ("server", "max_body_bytes"): _positive,
    ("server", "idle_timeout_secs"): lambda v: None if 0.5 <= v <= 3600 else "must be from 0.5 to 3600",
    ("server", "max_connections"): lambda v: None if 16 <= v <= 65536 else "must be from 16 to 65536",
    ("auth", "token_expiry_secs"): _positive,
    ("auth", "max_failed_logins"): lambda v: None if 1 <= v <= 10 else "must be from 1 to 10",
    ("auth", "lockout_secs"): _positive,
    ("auth", "max_failed_logins_per_address"): lambda v: None if 1 <= v <= 1000 else "must be from 1 to 1000",
    ("auth", "max_failed_logins_per_user"): lambda v: None if 1 <= v <= 1000 else "must be from 1 to 1000",
    ("auth", "max_waiting_logins"): lambda v: None if 1 <= v <= 10_000 else "must be from 1 to 10000",
    ("auth", "hash_per_minute"): _positive,
    ("model", "provider"): _provider,
    ("model", "temperature"): _temperature,
    ("model", "max_tokens"): _optional_positive,
    ("model", "mock_delay_ms"): _non_negative,
    ("model", "request_timeout_secs"): _positive,
    ("server", "sse_keepalive_secs"): _positive,
    ("graph", "changelog_retention_days"): _non_negative,
    ("graph", "max_nodes_per_account"): _non_negative,
    ("mesh", "heartbeat_interval_secs"): lambda v: None if v >= 1 else "must be 1 or more",
    ("mesh", "leader_timeout_secs"): lambda v: None if v >= 1 else "must be 1 or more",
    ("mesh", "max_payload_bytes"): _positive,
    ("mesh", "advertise_url"): lambda v: (
        None
        if v is None or (v.startswith("https://") and len(v) > len("https://"))
        else "must be an https:// URL (peers only speak TLS)"
    ),
    ("mesh", "message_retention_secs"): _positive,
    ("mesh", "max_members_per_account"): _positive,
    ("mesh", "max_queued_messages"): _positive,
    ("mesh", "max_inbox_bytes"): _positive,
    ("mesh", "trusted_fingerprints"): lambda v: next(
        (f"{f!r} is not a SHA-256 fingerprint (64 hex digits)" for f in v if not _is_sha256(f)), None
    ),
    ("graph", "stream_poll_secs"): _positive,
    ("agents", "max_tool_iterations"): lambda v: None if 0 <= v <= 50 else "must be from 0 to 50",
    ("agents", "model_provider"): _provider,
    ("agents", "temperature"): _temperature,
    ("agents", "max_tokens"): _optional_positive,
    ("agents", "memory_k"): _non_negative,
}

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_FREE_SECTIONS = ("sync",)


class _Parser:
    """Turn raw TOML tables into typed, validated settings with errors naming key and file."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.warnings: list[str] = []

    def settings(self, raw: dict[str, Any], home: Path, path: Path | None) -> Settings:
        sections = {
            "server": ServerSettings,
            "auth": AuthSettings,
            "database": DatabaseSettings,
            "graph": GraphSettings,
            "mesh": MeshSettings,
            "model": ModelSettings,
        }
        known = {"default_agent", "agents", *sections, *_FREE_SECTIONS}
        for key in raw:
            if key not in known:
                self.warnings.append(f"{self.source}: unknown key '{key}' ignored")
        built: dict[str, Any] = {}
        for name, cls in sections.items():
            table = raw.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{self.source}: [{name}] must be a table")
            built[name] = self.section(name, cls, table, env_prefix=f"SPECAI_{name.upper()}_")
        agents_raw = raw.get("agents", {})
        if not isinstance(agents_raw, dict):
            raise ConfigError(f"{self.source}: [agents] must be a table of [agents.<name>] tables")
        agents: dict[str, AgentSettings] = {}
        for agent_name, table in agents_raw.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{self.source}: [agents.{agent_name}] must be a table")
            agents[agent_name] = self.section("agents", AgentSettings, table, label=f"agents.{agent_name}")
        default_agent = self.env.get("SPECAI_DEFAULT_AGENT") or raw.get("default_agent")
        if default_agent is not None and not isinstance(default_agent, str):
            raise ConfigError(f"{self.source}: default_agent: expected a string, got {default_agent!r}")
        if default_agent and default_agent not in (set(agents) or {"default"}):
            raise ConfigError(
                f"{self.source}: default_agent: '{default_agent}' is not a configured agent "
                f"(configured: {', '.join(sorted(agents or ['default']))})"
            )
        free: dict[str, dict[str, Any]] = {}
        for name in _FREE_SECTIONS:
            table = raw.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{self.source}: [{name}] must be a table")
            free[name] = dict(table)
        return Settings(
            home=home,
            config_path=path,
            default_agent=default_agent,
            agents=agents,
            warnings=tuple(self.warnings),
            sync=free["sync"],
            **built,
        )

    def section(
        self,
        name: str,
        cls: type,
        table: dict[str, Any],
        *,
        env_prefix: str | None = None,
        label: str | None = None,
    ) -> Any:
        label = label or name
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in table:
            if key not in fields:
                self.warnings.append(f"{self.source}: unknown key '{key}' in [{label}] ignored")
        values: dict[str, Any] = {}
        for key, fld in fields.items():
            where = f"{self.source}: [{label}] {key}"
            if env_prefix and (env_name := env_prefix + key.upper()) in self.env:
                where = f"environment variable {env_name}"
                values[key] = self.convert(fld.type, self.env[env_name], where, True)
            elif key in table:
                values[key] = self.convert(fld.type, table[key], where, False)
            else:
                continue
            check = _CHECKS.get((name, key))
            if check and (problem := check(values[key])):
                raise ConfigError(f"{where}: {problem}, got {values[key]!r}")
        return cls(**values)

    def convert(self, annotation: Any, value: Any, where: str, from_env: bool) -> Any:
        """Coerce one value to the field's declared type (annotations are strings under postponed evaluation)."""
        spec = str(annotation).replace(" ", "")
        optional = spec.endswith("|None")
        base = spec.removesuffix("|None")
        if from_env and optional and value == "":
            return None
        if base == "Path":
            return Path(self.expect(str, value, where, from_env)).expanduser()
        if base == "list[dict[str,Any]]":
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                raise ConfigError(f"{where}: expected a list of tables, got {value!r}")
            return value
        if base == "tuple[str,...]":
            if from_env:
                return tuple(part.strip() for part in value.split(",") if part.strip())
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
            return tuple(value)
        kinds = {"str": str, "int": int, "float": float, "bool": bool}
        return self.expect(kinds[base], value, where, from_env)

    def expect(self, kind: type, value: Any, where: str, from_env: bool) -> Any:
        if from_env and isinstance(value, str):
            value = self.parse_env(kind, value, where)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"{where}: expected {_TYPE_NAMES[kind]}, got {value!r}")
        return value

    @staticmethod
    def parse_env(kind: type, text: str, where: str) -> Any:
        try:
            if kind is bool:
                lowered = text.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if kind in (int, float):
                return kind(text)
        except ValueError:
            raise ConfigError(f"{where}: expected {_TYPE_NAMES[kind]}, got {text!r}") from None
        return text
