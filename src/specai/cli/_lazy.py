"""A command group that imports a command's module only when that command is used, so `specai --help` and
`specai cert fingerprint` start without loading every command and the libraries behind them.

Typer also builds a pydantic adapter (importing pydantic, about as long as importing Typer itself) for every
parameter it processes, even one left at its None default; `defer_coercion` keeps that for values actually given.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_group

__all__ = ["LazyCommand", "LazyGroup"]


@dataclass(frozen=True)
class LazyCommand:
    """A command known by name and summary until it runs; `target` is `module:attribute`, a command function or a
    Typer app (a command group). `summary` is the first paragraph of its help, as `--help` lists it."""

    name: str
    target: str
    summary: str

    def load(self, ctx: Any, rich_markup_mode: Any, suggest_commands: bool) -> Any:
        """The click command Typer builds for the target, as `app.command()` / `app.add_typer()` would."""
        module, _, attribute = self.target.partition(":")
        target = getattr(importlib.import_module(module), attribute)
        holder = typer.Typer(rich_markup_mode=rich_markup_mode, suggest_commands=suggest_commands)
        if isinstance(target, typer.Typer):
            holder.add_typer(target, name=self.name)
        else:
            holder.command(name=self.name)(target)
        command = get_group(holder).commands[self.name]
        defer_coercion(command, _child_context(command, self.name, ctx))
        return command


class _CoerceWhenGiven:
    """Answers None (or `()`) for a missing value as Typer's coercion does, and lets Typer build its real
    coercion for the first value given."""

    def coerce(self, value: Any, *, param: Any, ctx: Any) -> Any:
        if value is None:
            return () if param.multiple or param.nargs == -1 else None
        param._runtime_param = None
        return param.get_runtime_param().coerce(value, param=param, ctx=ctx)


def defer_coercion(command: Any, ctx: Any) -> None:
    """Defer Typer's coercion of every parameter of `command` and of its loaded subcommands, help options
    included, until a value is given; `ctx` is the context `command` runs in (None: leave help options be).

    Only parameters that build their coercion lazily (Typer's `get_runtime_param`) are touched, so a Typer
    without that mechanism is left as it is.
    """
    params = list(command.params)
    if ctx is not None and (help_option := command.get_help_option(ctx)) is not None:
        params.append(help_option)  # created now as it would be on parsing (and kept by the command)
    for param in params:
        if getattr(param, "_runtime_param", False) is None and hasattr(param, "get_runtime_param"):
            param._runtime_param = _CoerceWhenGiven()
    for name, sub in getattr(command, "commands", {}).items():
        if not isinstance(sub, _Placeholder):
            defer_coercion(sub, _child_context(sub, name, ctx))


def _child_context(command: Any, name: str, parent: Any) -> Any:
    """The context click will make for `command` under `parent` (only read for its help option names)."""
    if parent is None:
        return None
    return command.context_class(command, info_name=name, parent=parent, **command.context_settings)


class _Placeholder(TyperCommand):
    """Stands in for a lazy command in the group's listing; never invoked."""

    def __init__(self, entry: LazyCommand) -> None:
        super().__init__(entry.name, help=entry.summary)
        self.entry = entry


class LazyGroup(TyperGroup):
    """A TyperGroup whose `lazy` commands are imported when looked up to run or complete; the help listing shows
    their summaries without importing them. Subclasses set `lazy`, in the order `--help` lists them."""

    lazy: tuple[LazyCommand, ...] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._listing = False
        for entry in self.lazy:
            self.commands[entry.name] = _Placeholder(entry)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command, imported now unless only its summary is being listed."""
        command = self.commands.get(cmd_name)
        if isinstance(command, _Placeholder) and not self._listing:
            command = command.entry.load(ctx, self.rich_markup_mode, self.suggest_commands)
            self.commands[cmd_name] = command
        return command

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Parse the group's own options (Typer appends some after building it) with deferred coercion."""
        defer_coercion(self, ctx)
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """List every command by its summary, importing none."""
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False
