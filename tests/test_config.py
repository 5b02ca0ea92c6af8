"""Settings: config file lookup order, validation errors naming key and file, env overrides, no side effects."""

from __future__ import annotations

from pathlib import Path

import pytest

from specai.config import CONFIG_FILENAME, AgentSettings, Settings, home_dir, load_settings
from specai.errors import ConfigError


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and mtime, to prove nothing was written."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
    }


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An existing, empty $SPECAI_HOME."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An existing, empty working directory."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """An environment with only SPECAI_HOME set."""
    return {"SPECAI_HOME": str(home)}


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(text: str, tmp_path: Path, env: dict[str, str], cwd: Path) -> Settings:
    """Load `text` given as an explicit --config file."""
    path = write_config(tmp_path / "explicit" / CONFIG_FILENAME, text)
    return load_settings(path, env=env, cwd=cwd)


# --- lookup order -------------------------------------------------------------------------------------------


def test_defaults_when_no_config_file_exists(env: dict[str, str], home: Path, cwd: Path) -> None:
    settings = load_settings(env=env, cwd=cwd)
    assert settings.config_path is None
    assert settings.home == home
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 3000
    assert settings.server.enable_cors is True  # but CORS stays off: cors_origins is empty
    assert settings.server.cors_origins == ()
    assert settings.server.idle_timeout_secs == 10.0
    assert settings.server.max_connections == 4096
    assert settings.server.tls_san == ()
    assert settings.server.tls_validity_days == 365
    assert settings.auth.enabled is False
    assert settings.auth.token_expiry_secs == 86400
    assert settings.auth.token_secret is None
    assert settings.model.provider == "mock"
    assert settings.default_agent is None
    assert dict(settings.agents) == {}
    assert settings.warnings == ()


def test_lookup_order_prefers_explicit_then_env_then_cwd_then_home(
    tmp_path: Path, env: dict[str, str], home: Path, cwd: Path
) -> None:
    explicit = write_config(tmp_path / "explicit.toml", "[server]\nport = 1001\n")
    from_env = write_config(tmp_path / "from-env.toml", "[server]\nport = 1002\n")
    in_cwd = write_config(cwd / CONFIG_FILENAME, "[server]\nport = 1003\n")
    in_home = write_config(home / CONFIG_FILENAME, "[server]\nport = 1004\n")
    with_env = {**env, "SPECAI_CONFIG": str(from_env)}

    settings = load_settings(explicit, env=with_env, cwd=cwd)
    assert (settings.config_path, settings.server.port) == (explicit, 1001)

    settings = load_settings(env=with_env, cwd=cwd)
    assert (settings.config_path, settings.server.port) == (from_env, 1002)

    settings = load_settings(env=env, cwd=cwd)
    assert (settings.config_path, settings.server.port) == (in_cwd, 1003)

    in_cwd.unlink()
    settings = load_settings(env=env, cwd=cwd)
    assert (settings.config_path, settings.server.port) == (in_home, 1004)

    in_home.unlink()
    settings = load_settings(env=env, cwd=cwd)
    assert (settings.config_path, settings.server.port) == (None, 3000)


def test_lookup_ignores_empty_specai_config(env: dict[str, str], cwd: Path) -> None:
    in_cwd = write_config(cwd / CONFIG_FILENAME, "[server]\nport = 1003\n")
    settings = load_settings(env={**env, "SPECAI_CONFIG": ""}, cwd=cwd)
    assert settings.config_path == in_cwd


def test_missing_explicit_config_file_is_an_error_naming_it(
    tmp_path: Path, env: dict[str, str], cwd: Path
) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing, env=env, cwd=cwd)
    assert str(missing) in info.value.message
    assert "does not exist" in info.value.message
    assert info.value.code == "config_error"


def test_missing_specai_config_file_is_an_error_not_a_fallback(
    tmp_path: Path, env: dict[str, str], cwd: Path
) -> None:
    write_config(cwd / CONFIG_FILENAME, "[server]\nport = 1003\n")
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_settings(env={**env, "SPECAI_CONFIG": str(missing)}, cwd=cwd)
    assert str(missing) in info.value.message


def test_invalid_toml_is_an_error_naming_the_file(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    path = write_config(tmp_path / "bad.toml", "[server\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env, cwd=cwd)
    assert str(path) in info.value.message
    assert "invalid TOML" in info.value.message


def test_load_never_writes_a_file(tmp_path: Path, cwd: Path) -> None:
    write_config(cwd / CONFIG_FILENAME, "[server]\nport = 4444\n[auth]\nenabled = true\n")
    missing_home = tmp_path / "home-not-created"
    before = snapshot(tmp_path)
    settings = load_settings(env={"SPECAI_HOME": str(missing_home)}, cwd=cwd)
    assert settings.server.port == 4444
    assert settings.credentials_file == missing_home / "credentials.json"
    assert snapshot(tmp_path) == before
    assert not missing_home.exists()


def test_load_with_defaults_never_writes_a_file(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    before = snapshot(tmp_path)
    load_settings(env=env, cwd=cwd)
    assert snapshot(tmp_path) == before


# --- paths -----------------------------------------------------------------------------------------------------


def test_home_defaults_to_dot_spec_ai_in_user_home() -> None:
    assert home_dir({}) == Path.home() / ".spec-ai"
    assert home_dir({"SPECAI_HOME": ""}) == Path.home() / ".spec-ai"
    assert home_dir({"SPECAI_HOME": "/srv/specai"}) == Path("/srv/specai")


def test_tilde_is_expanded_in_specai_home_and_specai_config(cwd: Path) -> None:
    settings = load_settings(env={"SPECAI_HOME": "~/specai-test-home-does-not-exist"}, cwd=cwd)
    assert settings.home == Path.home() / "specai-test-home-does-not-exist"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"SPECAI_CONFIG": "~/specai-test-missing.toml", "SPECAI_HOME": str(cwd)}, cwd=cwd)
    assert str(Path.home() / "specai-test-missing.toml") in info.value.message


def test_tilde_is_expanded_in_every_configured_path(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    settings = load(
        """
[server]
tls_cert_path = "~/certs/server.crt"
tls_key_path = "~/certs/server.key"

[auth]
credentials_file = "~/creds/credentials.json"

[database]
path = "~/data/specai.db"
""",
        tmp_path,
        env,
        cwd,
    )
    assert settings.server.tls_cert_path == Path.home() / "certs/server.crt"
    assert settings.server.tls_key_path == Path.home() / "certs/server.key"
    assert settings.auth.credentials_file == Path.home() / "creds/credentials.json"
    assert settings.credentials_file == Path.home() / "creds/credentials.json"
    assert settings.database.path == Path.home() / "data/specai.db"


def test_tilde_is_expanded_in_explicit_config_path(env: dict[str, str], cwd: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(Path("~/specai-test-missing-explicit.toml"), env=env, cwd=cwd)
    assert str(Path.home() / "specai-test-missing-explicit.toml") in info.value.message


def test_credentials_file_defaults_under_home(env: dict[str, str], home: Path, cwd: Path) -> None:
    settings = load_settings(env=env, cwd=cwd)
    assert settings.auth.credentials_file is None
    assert settings.credentials_file == home / "credentials.json"
    assert settings.tls_dir == home / "tls"


# --- values ----------------------------------------------------------------------------------------------------


def test_full_config_is_parsed_into_typed_settings(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    settings = load(
        """
default_agent = "coder"

[server]
host = "0.0.0.0"
port = 8443
enable_cors = false
cors_origins = ["https://a.example", "https://b.example"]
tls_san = ["box.lan", "10.0.0.7"]
tls_validity_days = 30

[auth]
enabled = true
token_expiry_secs = 600
token_secret = "0123456789abcdef0123456789abcdef"

[database]
url = "postgresql://localhost/specai"

[model]
provider = "mock"
model_name = "m1"
temperature = 1

[agents.coder]
prompt = "You write code."
model_provider = "openai"
model_name = "gpt-x"
temperature = 0.2
max_tokens = 256
memory_k = 3
allowed_tools = ["read", "write"]
denied_tools = ["shell"]

[agents.helper]

[mesh]
heartbeat_interval_secs = 2
""",
        tmp_path,
        env,
        cwd,
    )
    assert settings.warnings == ()
    assert settings.default_agent == "coder"
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8443
    assert settings.server.enable_cors is False
    assert settings.server.cors_origins == ("https://a.example", "https://b.example")
    assert settings.server.tls_san == ("box.lan", "10.0.0.7")
    assert settings.server.tls_validity_days == 30
    assert settings.auth.enabled is True
    assert settings.auth.token_expiry_secs == 600
    assert settings.auth.token_secret == "0123456789abcdef0123456789abcdef"
    assert settings.database.url == "postgresql://localhost/specai"
    assert settings.model.model_name == "m1"
    assert settings.model.temperature == 1.0
    assert isinstance(settings.model.temperature, float)
    assert settings.agents["coder"] == AgentSettings(
        prompt="You write code.",
        model_provider="openai",
        model_name="gpt-x",
        temperature=0.2,
        max_tokens=256,
        memory_k=3,
        allowed_tools=("read", "write"),
        denied_tools=("shell",),
    )
    assert settings.agents["helper"] == AgentSettings()
    assert settings.agents["helper"].memory_k == 10
    assert settings.agents["helper"].allowed_tools is None
    assert settings.mesh.heartbeat_interval_secs == 2.0
    assert settings.mesh.leader_timeout_secs == 15.0


def test_unknown_top_level_key_warns_naming_it(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    settings = load('colour = "blue"\n[server]\nport = 3001\n', tmp_path, env, cwd)
    assert settings.server.port == 3001
    assert len(settings.warnings) == 1
    assert "'colour'" in settings.warnings[0]
    assert str(settings.config_path) in settings.warnings[0]


def test_unknown_key_in_section_warns_naming_key_and_section(
    tmp_path: Path, env: dict[str, str], cwd: Path
) -> None:
    settings = load("[server]\nprot = 3001\n[agents.a]\npromt = 'x'\n", tmp_path, env, cwd)
    assert settings.server.port == 3000
    assert len(settings.warnings) == 2
    server_warning, agent_warning = settings.warnings
    assert "'prot'" in server_warning
    assert "[server]" in server_warning
    assert "'promt'" in agent_warning
    assert "[agents.a]" in agent_warning


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ('[server]\nport = "abc"\n', "port", "expected an integer, got 'abc'"),
        ("[server]\nport = 70000\n", "port", "must be a port number from 1 to 65535"),
        ("[server]\nport = 0\n", "port", "must be a port number from 1 to 65535"),
        ("[server]\nport = true\n", "port", "expected an integer"),
        ("[server]\nport = 3000.5\n", "port", "expected an integer"),
        ('[server]\nenable_cors = "yes"\n', "enable_cors", "expected true or false"),
        ("[server]\nidle_timeout_secs = 0\n", "idle_timeout_secs", "must be from 0.5 to 3600"),
        ("[server]\nidle_timeout_secs = 4000\n", "idle_timeout_secs", "must be from 0.5 to 3600"),
        ('[server]\nidle_timeout_secs = "x"\n', "idle_timeout_secs", "expected a number"),
        ("[server]\nmax_connections = 8\n", "max_connections", "must be from 16 to 65536"),
        ("[server]\nmax_connections = 1.5\n", "max_connections", "expected an integer"),
        ('[server]\ntls_san = "x"\n', "tls_san", "expected a list of strings, got 'x'"),
        ("[server]\ntls_san = [1, 2]\n", "tls_san", "expected a list of strings"),
        ("[server]\ntls_validity_days = 0\n", "tls_validity_days", "must be greater than 0"),
        ("[server]\ntls_cert_path = 5\n", "tls_cert_path", "expected a string"),
        ("[auth]\nenabled = 1\n", "enabled", "expected true or false"),
        ("[auth]\ntoken_expiry_secs = -1\n", "token_expiry_secs", "must be greater than 0"),
        ("[model]\ntemperature = 3\n", "temperature", "must be between 0 and 2"),
        ("[model]\ntemperature = -0.5\n", "temperature", "must be between 0 and 2"),
        ('[model]\ntemperature = "hot"\n', "temperature", "expected a number"),
        ('[model]\nprovider = "nope"\n', "provider", "must be one of mock, openai, anthropic, ollama"),
        ("[agents.a]\ntemperature = 3\n", "temperature", "must be between 0 and 2"),
        ('[agents.a]\nmodel_provider = "nope"\n', "model_provider", "must be one of"),
        ("[agents.a]\nmax_tokens = 0\n", "max_tokens", "must be greater than 0"),
        ("[agents.a]\nmemory_k = -1\n", "memory_k", "must be 0 or more"),
    ],
)
def test_invalid_value_is_an_error_naming_key_and_file(
    tmp_path: Path, env: dict[str, str], cwd: Path, toml: str, key: str, problem: str
) -> None:
    path = write_config(tmp_path / CONFIG_FILENAME, toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env, cwd=cwd)
    message = info.value.message
    assert str(path) in message
    assert f"] {key}:" in message
    assert problem in message


def test_section_that_is_not_a_table_is_an_error(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    path = write_config(tmp_path / CONFIG_FILENAME, 'server = "x"\n')
    with pytest.raises(ConfigError, match=r"\[server\] must be a table") as info:
        load_settings(path, env=env, cwd=cwd)
    assert str(path) in info.value.message


def test_default_agent_must_be_a_configured_agent(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    path = write_config(tmp_path / CONFIG_FILENAME, 'default_agent = "ghost"\n[agents.a]\n[agents.b]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env, cwd=cwd)
    message = info.value.message
    assert str(path) in message
    assert "default_agent" in message
    assert "'ghost'" in message
    assert "configured: a, b" in message


def test_default_agent_without_agents_must_name_the_implicit_default(
    tmp_path: Path, env: dict[str, str], cwd: Path
) -> None:
    # With no [agents.*] tables the only agent is the implicit "default"; naming another one would make every
    # query without --agent fail at run time, so it is a config error up front.
    path = write_config(tmp_path / CONFIG_FILENAME, 'default_agent = "ghost"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env, cwd=cwd)
    assert str(path) in info.value.message
    assert "default_agent" in info.value.message
    assert "'ghost'" in info.value.message


def test_default_agent_default_without_agents_is_accepted(
    tmp_path: Path, env: dict[str, str], cwd: Path
) -> None:
    settings = load('default_agent = "default"\n', tmp_path, env, cwd)
    assert settings.default_agent == "default"


def test_default_agent_must_be_a_string(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    path = write_config(tmp_path / CONFIG_FILENAME, "default_agent = 3\n")
    with pytest.raises(ConfigError, match="default_agent: expected a string") as info:
        load_settings(path, env=env, cwd=cwd)
    assert str(path) in info.value.message


# --- environment overrides -------------------------------------------------------------------------------------


def test_env_overrides_config_file_values(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    overrides = {
        **env,
        "SPECAI_SERVER_PORT": "4000",
        "SPECAI_AUTH_ENABLED": "true",
        "SPECAI_SERVER_TLS_SAN": "a, b",
    }
    settings = load("[server]\nport = 3500\n[auth]\nenabled = false\n", tmp_path, overrides, cwd)
    assert settings.server.port == 4000
    assert settings.auth.enabled is True
    assert settings.server.tls_san == ("a", "b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("off", False),
    ],
)
def test_env_auth_enabled_accepts_boolean_words(
    env: dict[str, str], cwd: Path, text: str, expected: bool
) -> None:
    settings = load_settings(env={**env, "SPECAI_AUTH_ENABLED": text}, cwd=cwd)
    assert settings.auth.enabled is expected


def test_env_auth_enabled_false_overrides_file_true(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    settings = load("[auth]\nenabled = true\n", tmp_path, {**env, "SPECAI_AUTH_ENABLED": "false"}, cwd)
    assert settings.auth.enabled is False


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("SPECAI_SERVER_PORT", "abc", "expected an integer, got 'abc'"),
        ("SPECAI_SERVER_PORT", "70000", "must be a port number from 1 to 65535"),
        ("SPECAI_AUTH_ENABLED", "maybe", "expected true or false, got 'maybe'"),
        ("SPECAI_MODEL_TEMPERATURE", "warm", "expected a number, got 'warm'"),
    ],
)
def test_bad_env_value_is_an_error_naming_the_variable(
    env: dict[str, str], cwd: Path, name: str, value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={**env, name: value}, cwd=cwd)
    assert f"environment variable {name}" in info.value.message
    assert problem in info.value.message


def test_env_default_agent_overrides_file(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    settings = load(
        'default_agent = "a"\n[agents.a]\n[agents.b]\n', tmp_path, {**env, "SPECAI_DEFAULT_AGENT": "b"}, cwd
    )
    assert settings.default_agent == "b"


@pytest.mark.parametrize("key", ["heartbeat_interval_secs", "leader_timeout_secs"])
@pytest.mark.parametrize("value", ["0", "0.5", "-1"])
def test_mesh_timings_must_be_at_least_one_second(
    tmp_path: Path, env: dict[str, str], cwd: Path, key: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"\\[mesh\\] {key}: must be 1 or more"):
        load(f"[mesh]\n{key} = {value}\n", tmp_path, env, cwd)


def test_mesh_advertise_url_must_be_https(tmp_path: Path, env: dict[str, str], cwd: Path) -> None:
    with pytest.raises(ConfigError, match="advertise_url: must be an https:// URL"):
        load('[mesh]\nadvertise_url = "http://10.0.0.7:3000"\n', tmp_path, env, cwd)
    settings = load('[mesh]\nadvertise_url = "https://10.0.0.7:3000"\n', tmp_path, env, cwd)
    assert settings.mesh.advertise_url == "https://10.0.0.7:3000"


def test_graph_node_quota_defaults_to_100000_and_0_means_unlimited(
    tmp_path: Path, env: dict[str, str], cwd: Path
) -> None:
    assert load("", tmp_path, env, cwd).graph.max_nodes_per_account == 100_000
    assert load("[graph]\nmax_nodes_per_account = 0\n", tmp_path, env, cwd).graph.max_nodes_per_account == 0
    with pytest.raises(ConfigError, match=r"\[graph\] max_nodes_per_account: must be 0 or more"):
        load("[graph]\nmax_nodes_per_account = -1\n", tmp_path, env, cwd)
    with pytest.raises(ConfigError, match="max_nodes_per_account: expected an integer"):
        load('[graph]\nmax_nodes_per_account = "lots"\n', tmp_path, env, cwd)


# --- typos in security-relevant keys are errors, elsewhere warnings with a hint --------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[auth]\nenable = true\n", "unknown key 'enable' in [auth]; did you mean 'enabled'?"),
        (
            "[auth]\ntoken_secrets = 'x'\n",
            "unknown key 'token_secrets' in [auth]; did you mean 'token_secret'?",
        ),
        ("[auth]\nwhatever = 1\n", "unknown key 'whatever' in [auth]"),  # every [auth] key counts
        (
            "[server]\ntls_cert = 'a.pem'\n",
            "unknown key 'tls_cert' in [server]; did you mean 'tls_cert_path'?",
        ),
        (
            "[server]\ncors_origin = []\n",
            "unknown key 'cors_origin' in [server]; did you mean 'cors_origins'?",
        ),
        ("[server]\ntls_ca = 'x'\n", "unknown key 'tls_ca' in [server]"),
        ("[mesh]\ntrusted_fingerprint = []\n", "did you mean 'trusted_fingerprints'?"),
        (
            "[agents.a]\ndenied_tool = ['x']\n",
            "unknown key 'denied_tool' in [agents.a]; did you mean 'denied_tools'?",
        ),
        ("[auht]\nenabled = true\n", "unknown key 'auht'; did you mean 'auth'?"),
    ],
)
def test_unknown_security_relevant_key_is_an_error_naming_the_nearest_one(
    tmp_path: Path, env: dict[str, str], cwd: Path, toml: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(toml, tmp_path, env, cwd)
    assert message in info.value.message
    assert str(tmp_path / "explicit" / CONFIG_FILENAME) in info.value.message


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[model]\nprovidr = 'mock'\n", "unknown key 'providr' in [model] ignored; did you mean 'provider'?"),
        ("[server]\nprot = 3001\n", "unknown key 'prot' in [server] ignored; did you mean 'port'?"),
        ("[graph]\nzzz = 1\n", "unknown key 'zzz' in [graph] ignored"),
        ("[agents.a]\npromt = 'x'\n", "unknown key 'promt' in [agents.a] ignored; did you mean 'prompt'?"),
    ],
)
def test_unknown_key_elsewhere_is_a_warning_with_a_hint(
    tmp_path: Path, env: dict[str, str], cwd: Path, toml: str, message: str
) -> None:
    settings = load(toml, tmp_path, env, cwd)
    assert len(settings.warnings) == 1
    assert message in settings.warnings[0]


def test_unknown_security_relevant_variable_is_an_error(env: dict[str, str], cwd: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={**env, "SPECAI_AUTH_ENABLE": "true"}, cwd=cwd)
    assert info.value.message == (
        "environment variable SPECAI_AUTH_ENABLE: unknown key 'enable' in [auth]; did you mean 'SPECAI_AUTH_ENABLED'?"
    )


def test_unknown_variable_elsewhere_is_a_warning(env: dict[str, str], cwd: Path) -> None:
    settings = load_settings(
        None, env={**env, "SPECAI_MODEL_TEMPERATUR": "0.5", "SPECAI_SERVER": "x"}, cwd=cwd
    )
    assert settings.warnings == (
        "environment variable SPECAI_MODEL_TEMPERATUR: unknown key 'temperatur' in [model] ignored; "
        "did you mean 'SPECAI_MODEL_TEMPERATURE'?",
    )


def test_min_password_length_defaults_to_8_and_is_checked(
    tmp_path: Path, env: dict[str, str], cwd: Path
) -> None:
    assert load_settings(None, env=env, cwd=cwd).auth.min_password_length == 8
    assert load("[auth]\nmin_password_length = 12\n", tmp_path, env, cwd).auth.min_password_length == 12
    with pytest.raises(ConfigError, match="min_password_length: must be from 1 to 1024"):
        load("[auth]\nmin_password_length = 0\n", tmp_path, env, cwd)
