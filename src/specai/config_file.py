"""How the config file and `SPECAI_*` variables become Settings: TOML read, types coerced, ranges checked.

Every error names the key and where it came from (file or environment variable). Unknown keys are warnings,
except where a typo would silently weaken security (`_STRICT`): there they are errors. Both suggest the nearest
valid key. Used by `specai.config.load_settings` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from specai.config import (
    KNOWN_PROVIDERS,
    A2ASettings,
    AgentSettings,
    AuthSettings,
    DatabaseSettings,
    GraphSettings,
    MCPSettings,
    MeshSettings,
    ModelSettings,
    ServerSettings,
    Settings,
    SyncSettings,
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


def _namespaces(value: list[dict[str, Any]]) -> str | None:
    for entry in value:
        if set(entry) - {"session_id", "graph_name"} or not isinstance(entry.get("session_id"), str):
            return 'each entry must be {session_id = "...", graph_name = "default"}'
        if entry.get("graph_name", "default") != "default":
            return "graph_name must be 'default' (a session holds one graph)"
    return None


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
    ("server", "workers"): lambda v: None if 1 <= v <= 64 else "must be from 1 to 64",
    ("database", "pool_size"): lambda v: None if 1 <= v <= 1000 else "must be from 1 to 1000",
    ("database", "max_overflow"): lambda v: None if 0 <= v <= 1000 else "must be from 0 to 1000",
    ("database", "leader_lease_secs"): lambda v: None if 2 <= v <= 3600 else "must be from 2 to 3600",
    ("auth", "token_expiry_secs"): _positive,
    ("auth", "max_failed_logins"): lambda v: None if 1 <= v <= 10 else "must be from 1 to 10",
    ("auth", "lockout_secs"): _positive,
    ("auth", "max_failed_logins_per_address"): lambda v: None if 1 <= v <= 1000 else "must be from 1 to 1000",
    ("auth", "max_failed_logins_per_user"): lambda v: None if 1 <= v <= 1000 else "must be from 1 to 1000",
    ("auth", "max_waiting_logins"): lambda v: None if 1 <= v <= 10_000 else "must be from 1 to 10000",
    ("auth", "hash_per_minute"): _positive,
    ("auth", "min_password_length"): lambda v: None if 1 <= v <= 1024 else "must be from 1 to 1024",
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
    ("a2a", "url"): lambda v: (
        None
        if v is None or (v.startswith("https://") and len(v) > len("https://"))
        else "must be an https:// URL"
    ),
    ("mesh", "message_retention_secs"): _positive,
    ("mesh", "max_members_per_account"): _positive,
    ("mesh", "max_queued_messages"): _positive,
    ("mesh", "max_inbox_bytes"): _positive,
    ("sync", "interval_secs"): lambda v: None if v >= 0.1 else "must be 0.1 or more",
    ("sync", "namespaces"): lambda v: _namespaces(v),
    ("sync", "max_concurrent_syncs"): _positive,
    ("sync", "max_clock_skew_secs"): _positive,
    ("sync", "page_size"): lambda v: None if 1 <= v <= 5000 else "must be from 1 to 5000",
    ("sync", "retry_interval_secs"): _positive,
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

# Where an unknown key is an error, not a warning: a typo there would leave something open (`[auth] enable = true`
# keeps auth off). A section maps to None when every key in it counts, else to the keys that do; an unknown key
# counts when its nearest valid key does (or it starts like one, `tls_`/`cors`). Top level: a misspelt strict
# section name (`[auht]`) is an error too.
_STRICT: dict[str, frozenset[str] | None] = {
    "auth": None,
    "mesh": None,  # the mesh password, where it may go, and which peers are trusted
    "server": frozenset(
        {
            "host",
            "enable_cors",
            "cors_origins",
            "tls_cert_path",
            "tls_key_path",
            "tls_san",
            "tls_validity_days",
        }
    ),
    "agents": frozenset({"allowed_tools", "denied_tools"}),  # the tool policy
}
_STRICT_PREFIXES = ("tls", "cors")

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


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
            "sync": SyncSettings,
            "a2a": A2ASettings,
            "mcp": MCPSettings,
        }
        known = {"default_agent", "agents", *sections}
        for key in raw:
            if key not in known:
                self.unknown(key, sorted(known), None, strict=_nearest(key, known) in _STRICT)
        self.unknown_env(sections)
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
        return Settings(
            home=home,
            config_path=path,
            default_agent=default_agent,
            agents=agents,
            warnings=tuple(self.warnings),
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
                self.unknown(key, list(fields), label, strict=_is_strict(name, key, list(fields)))
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

    def unknown(
        self,
        key: str,
        valid: list[str],
        label: str | None,
        *,
        strict: bool,
        variable: str = "",
        env_prefix: str = "",
    ) -> None:
        """An unknown key (from `variable` when it came from the environment): an error when `strict`, else a
        warning; both name the nearest valid key."""
        where = f"environment variable {variable}" if variable else self.source
        place = f" in [{label}]" if label else ""
        nearest = _nearest(key, valid)
        if nearest and env_prefix:
            nearest = env_prefix + nearest.upper()
        hint = f"; did you mean '{nearest}'?" if nearest else ""
        if strict:
            raise ConfigError(f"{where}: unknown key '{key}'{place}{hint}")
        self.warnings.append(f"{where}: unknown key '{key}'{place} ignored{hint}")

    def unknown_env(self, sections: Mapping[str, type]) -> None:
        """`SPECAI_<SECTION>_<KEY>` variables that name no key: the same rules as unknown keys in the file."""
        for name, cls in sections.items():
            prefix = f"SPECAI_{name.upper()}_"
            fields = [f.name for f in dataclasses.fields(cls)]
            for variable in sorted(v for v in self.env if v.startswith(prefix)):
                key = variable.removeprefix(prefix).lower()
                if key not in fields:
                    strict = _is_strict(name, key, fields)
                    self.unknown(key, fields, name, strict=strict, variable=variable, env_prefix=prefix)

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


def _nearest(key: str, valid: Any) -> str | None:
    """The valid key `key` was most likely meant to be, if any is close."""
    found = difflib.get_close_matches(key.lower(), list(valid), n=1, cutoff=0.6)
    return found[0] if found else None


def _is_strict(section: str, key: str, valid: list[str]) -> bool:
    """Whether an unknown `key` in `section` is an error (see `_STRICT`)."""
    if section not in _STRICT:
        return False
    keys = _STRICT[section]
    if keys is None:
        return True
    nearest = _nearest(key, valid)
    return (nearest is not None and nearest in keys) or key.lower().startswith(_STRICT_PREFIXES)
