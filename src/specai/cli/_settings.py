"""Load settings for a command: the root `--config` or the command's own, with warnings shown once."""

from __future__ import annotations

from pathlib import Path

import typer

from specai.cli._console import fail, print_warnings
from specai.config import Settings, load_settings
from specai.errors import ConfigError


def load(ctx: typer.Context, config: Path | None = None) -> Settings:
    """Settings for this invocation; a bad config file is one error line and exit 1."""
    root = ctx.find_root().params.get("config") if ctx else None
    try:
        settings = load_settings(config or root)
    except ConfigError as exc:
        fail(exc.message)
    print_warnings(settings.warnings)
    return settings
