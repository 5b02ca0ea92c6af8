"""`specai auth ...`: manage the users in the credentials file (no server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from specai.cli import _prompt, _settings
from specai.cli._console import handle_errors, out, print_json

app = typer.Typer(help="Manage users in the credentials file.", no_args_is_help=True)

CredentialsOption = Annotated[
    Optional[Path],
    typer.Option(
        "--credentials-file",
        help="Credentials file [default: [auth] credentials_file, or $SPECAI_HOME/credentials.json].",
    ),
]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
]


def _path(ctx: typer.Context, credentials_file: Path | None) -> Path:
    return credentials_file.expanduser() if credentials_file else _settings.load(ctx).credentials_file


def _new_password(password_stdin: bool) -> str:
    return _prompt.read_password_stdin() if password_stdin else _prompt.ask_new_password()


@app.command("add-user")
@handle_errors
def add_user(
    ctx: typer.Context,
    username: Annotated[
        Optional[str], typer.Argument(help="Name of the new user (asked when missing).")
    ] = None,
    password_stdin: PasswordStdin = False,
    credentials_file: CredentialsOption = None,
) -> None:
    """Add a user (argon2id hash) to the credentials file, creating it with mode 0600.

    Examples:

      specai auth add-user                      # asks for name and password

      printf 'pw\\n' | specai auth add-user alice --password-stdin
    """
    from specai import users

    path = _path(ctx, credentials_file)
    name = users.check_username(username) if username else users.check_username(_prompt.ask_username())
    users.add_user(path, name, _new_password(password_stdin))
    out.print(f"added user '{name}' to {path}")


@app.command("passwd")
@handle_errors
def passwd(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="User whose password changes.")],
    password_stdin: PasswordStdin = False,
    credentials_file: CredentialsOption = None,
) -> None:
    """Change a user's password.

    Example:

      specai auth passwd alice
    """
    from specai import users

    path = _path(ctx, credentials_file)
    users.get_user(path, username)  # fail before asking for a password
    users.set_password(path, username, _new_password(password_stdin))
    out.print(f"changed the password of '{username}'")


@app.command("remove-user")
@handle_errors
def remove_user(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="User to remove.")],
    credentials_file: CredentialsOption = None,
) -> None:
    """Remove a user; their tokens stop working at once.

    Example:

      specai auth remove-user alice
    """
    from specai import users

    path = _path(ctx, credentials_file)
    users.remove_user(path, username)
    out.print(f"removed user '{username}'")


@app.command("list-users")
@handle_errors
def list_users(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    credentials_file: CredentialsOption = None,
) -> None:
    """List users (never their hashes).

    Example:

      specai auth list-users --json
    """
    from specai import users

    path = _path(ctx, credentials_file)
    entries = users.load_users(path) if path.exists() else []
    if json_output:
        print_json(
            {
                "credentials_file": str(path),
                "users": [{"username": u.username, "hash_scheme": u.scheme} for u in entries],
            }
        )
        return
    if not entries:
        out.print(f"no users in {path}; add one with `specai auth add-user`")
        return
    table = Table("username", "hash", title=str(path), title_justify="left")
    for user in entries:
        table.add_row(user.username, user.scheme)
    out.print(table)


@app.command("hash")
@handle_errors
def hash_password(password_stdin: PasswordStdin = False) -> None:
    """Print one argon2id hash of a password (for hand-edited credentials files).

    Example:

      printf 'pw\\n' | specai auth hash --password-stdin
    """
    from specai.auth import hash_password as argon2_hash

    password = _prompt.read_password_stdin() if password_stdin else _prompt.ask_new_password()
    print(argon2_hash(password))
