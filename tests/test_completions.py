"""Shell completions in completions/ are generated from the CLI; this fails when they are stale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECAI = Path(sys.executable).parent / "specai"
pytestmark = pytest.mark.live  # each test runs the CLI as a process

FILES = {"bash": "specai.bash", "zsh": "_specai", "fish": "specai.fish"}


def _generate(shell: str) -> str:
    env = {**os.environ, "_SPECAI_COMPLETE": f"source_{shell}"}
    return subprocess.run([str(SPECAI)], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("shell", sorted(FILES))
def test_completion_script_is_current(shell: str) -> None:
    committed = (ROOT / "completions" / FILES[shell]).read_text()
    assert committed == _generate(shell), f"completions/{FILES[shell]} is stale: run `make completions`"


def test_bash_completion_completes_commands() -> None:
    env = {**os.environ, "_SPECAI_COMPLETE": "complete_bash", "COMP_WORDS": "specai au", "COMP_CWORD": "1"}
    result = subprocess.run([str(SPECAI)], env=env, capture_output=True, text=True, check=True)
    assert "auth" in result.stdout.split()
