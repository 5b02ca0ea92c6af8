"""How the config file and `SPECAI_*` variables become Settings: TOML read, types coerced, ranges checked.

Every error names the key and where it came from (file or environment variable); unknown keys are warnings.
Used by `specai.config.load_settings` only.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from specai.config import (
    KNOWN_PROVIDERS,
    AgentSettings,
    AuthSettings,
    DatabaseSettings,
    GraphSettings,
    MeshSettings,
    ModelSettings,
    ServerSettings,
    Settings,
)
from specai.errors import ConfigError


def read_settings(path: Path | None, env: Mapping[str, str], home: Path) -> Settings:
    """Settings from the TOML file at `path` (None: built-in defaults) and `env`, validated."""
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
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
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
