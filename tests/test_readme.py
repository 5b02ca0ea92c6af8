"""The README stays true: its config example parses cleanly and documents every key; its commands exist."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from specai.config import (
    AgentSettings,
    AuthSettings,
    DatabaseSettings,
    ModelSettings,
    ServerSettings,
    load_settings,
)

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _config_block() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", README, flags=re.S)
    assert len(blocks) == 1
    return str(blocks[0])


def test_readme_config_parses_without_warnings(tmp_path: Path) -> None:
    path = tmp_path / "spec-ai.config.toml"
    path.write_text(_config_block())
    settings = load_settings(path, env={"SPECAI_HOME": str(tmp_path)})
    assert settings.warnings == ()
    assert settings.agents["writer"].prompt


def test_readme_config_documents_every_key() -> None:
    block = _config_block()
    for cls in (ServerSettings, AuthSettings, DatabaseSettings, ModelSettings, AgentSettings):
        for field in dataclasses.fields(cls):
            assert re.search(rf"^#? ?{field.name} = ", block, flags=re.M), (
                f"{cls.__name__}.{field.name} missing"
            )


def test_readme_names_the_two_commands() -> None:
    assert "make serve" in README
    assert "make test" in README
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)
