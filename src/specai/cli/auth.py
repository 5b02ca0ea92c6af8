"""`specai auth ...`: users, roles and token revocation in the credentials file (no server needed), and API keys
(`auth token ...`, on a server you are logged in to)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from specai.cli import _prompt, _settings
from specai.cli._client import FingerprintOption, JsonOption, ServerOption, open_client
from specai.cli._console import USAGE, err, fail, handle_errors, out, print_json
from specai.config import DEFAULT_SERVER_URL

app = typer.Typer(help="Manage users, roles and tokens.", no_args_is_help=True)
token_app = typer.Typer(help="API keys for programs, on a server you are logged in to.", no_args_is_help=True)
app.add_typer(token_app, name="token")

CredentialsOption = Annotated[
    Optional[Path],
    typer.Option(
        "--credentials-file",
        help="Credentials file [default: [auth] credentials_file, or $SPECAI_HOME/credentials.json].",
    ),
]
RoleOption = Annotated[
    Optional[str],
    typer.Option(
        "--role",
        help="admin, user or mesh (a server account) [default: admin for the first user, else user].",
    ),
]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
]


def _path(ctx: typer.Context, credentials_file: Path | None) -> Path:
    return credentials_file.expanduser() if credentials_file else _settings.load(ctx).credentials_file


def _new_password(minimum: int, password_stdin: bool) -> str:
    """A new password of at least `minimum` characters (`[auth] min_password_length`): a short one on stdin is a
    usage error (exit 2), at a prompt it is asked for again. The password itself is never printed."""
    from specai.errors import InvalidRequestError
    from specai.users.directory import check_password_length

    while True:
        password = _prompt.read_password_stdin() if password_stdin else _prompt.ask_new_password()
        try:
            return check_password_length(password, minimum)
        except InvalidRequestError as exc:
            if password_stdin:
                fail(exc.message, USAGE)
            err.print(f"{exc.message}; try again", markup=False, highlight=False)


@app.command("add-user")
@handle_errors
def add_user(
    ctx: typer.Context,
    username: Annotated[
        Optional[str], typer.Argument(help="Name of the new user (asked when missing).")
    ] = None,
    password_stdin: PasswordStdin = False,
    role: RoleOption = None,
    credentials_file: CredentialsOption = None,
) -> None:
    """Add a user (argon2id hash, a new id) to the credentials file, creating it with mode 0600.

    The password needs at least [auth] min_password_length characters (default 8): a shorter one from
    --password-stdin exits 2; at the prompt it is asked for again.

    Examples:

      specai auth add-user                      # asks for name and password

      printf 'pw\\n' | specai auth add-user alice --password-stdin

      specai auth add-user mesh --role mesh     # the account servers of a mesh use
    """
    from specai.users import directory as users

    settings = _settings.load(ctx)
    path = credentials_file.expanduser() if credentials_file else settings.credentials_file
    chosen = users.check_role(role) if role else None
    name = users.check_username(username) if username else users.check_username(_prompt.ask_username())
    password = _new_password(settings.auth.min_password_length, password_stdin)
    user = users.add_user(path, name, password, chosen)
    out.print(f"added user '{name}' ({user.role}) to {path}")


@app.command("passwd")
@handle_errors
def passwd(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="User whose password changes.")],
    password_stdin: PasswordStdin = False,
    credentials_file: CredentialsOption = None,
) -> None:
    """Change a user's password; every earlier token of theirs is revoked.

    The new password needs at least [auth] min_password_length characters (default 8): a shorter one from
    --password-stdin exits 2; at the prompt it is asked for again.

    Example:

      specai auth passwd alice
    """
    from specai.users import directory as users

    settings = _settings.load(ctx)
    path = credentials_file.expanduser() if credentials_file else settings.credentials_file
    users.get_user(path, username)  # fail before asking for a password
    users.set_password(path, username, _new_password(settings.auth.min_password_length, password_stdin))
    out.print(f"changed the password of '{username}'; every earlier token of theirs is revoked")


@app.command("set-role")
@handle_errors
def set_role(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="User whose role changes.")],
    role: Annotated[str, typer.Argument(help="admin, user or mesh.")],
    credentials_file: CredentialsOption = None,
) -> None:
    """Change a user's role; their earlier tokens are revoked (API keys wider than the new role shrink to it).

    Example:

      specai auth set-role bob admin
    """
    from specai.users import directory as users

    users.set_role(_path(ctx, credentials_file), username, users.check_role(role))
    out.print(f"'{username}' is now {role}; every earlier token of theirs is revoked")


@app.command("revoke")
@handle_errors
def revoke(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="User whose tokens stop working.")],
    credentials_file: CredentialsOption = None,
) -> None:
    """Revoke every token issued to a user so far (a running server sees it at once; API keys: `auth token revoke`).

    Example:

      specai auth revoke alice
    """
    from specai.users import directory as users

    users.revoke_tokens(_path(ctx, credentials_file), username)
    out.print(f"revoked every token issued to '{username}' so far")


@app.command("remove-user")
@handle_errors
def remove_user(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="User to remove.")],
    credentials_file: CredentialsOption = None,
) -> None:
    """Remove a user; their tokens and keys stop working at once, and a new user of that name is someone else.

    Example:

      specai auth remove-user alice
    """
    from specai.users import directory as users

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
    """List users with their roles (never their hashes).

    Example:

      specai auth list-users --json
    """
    from specai.users import directory as users

    path = _path(ctx, credentials_file)
    entries = users.load_users(path) if path.exists() else []
    if json_output:
        print_json(
            {
                "credentials_file": str(path),
                "users": [
                    {"username": u.username, "role": u.role, "id": u.id, "hash_scheme": u.scheme}
                    for u in entries
                ],
            }
        )
        return
    if not entries:
        out.print(f"no users in {path}; add one with `specai auth add-user`")
        return
    table = Table("username", "role", "hash", title=str(path), title_justify="left")
    for user in entries:
        table.add_row(user.username, user.role, user.scheme)
    out.print(table)


@app.command("hash")
@handle_errors
def hash_password(ctx: typer.Context, password_stdin: PasswordStdin = False) -> None:
    """Print one argon2id hash of a password (for hand-edited credentials files).

    The password needs at least [auth] min_password_length characters (default 8), as for add-user.

    Example:

      printf 'pw\\n' | specai auth hash --password-stdin
    """
    from specai.auth import hash_password as argon2_hash

    password = _new_password(_settings.load(ctx).auth.min_password_length, password_stdin)
    print(argon2_hash(password))


def _expiry_days(expires: str) -> int | None:
    if expires == "never":
        return None
    if not (expires.isascii() and expires.isdigit()) or not 1 <= int(expires) <= 3650:
        fail(f"--expires must be a number of days (1-3650) or 'never', not {expires!r}", USAGE)
    return int(expires)


@token_app.command("create")
@handle_errors
def token_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for (shown in `auth token list`).")],
    expires: Annotated[str, typer.Option("--expires", help="Lifetime in days, or 'never'.")] = "90",
    scope: Annotated[
        str, typer.Option("--scope", help="read (GET only), write, mesh or admin; at most your role allows.")
    ] = "read",
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create an API key for a program and print it once (the server keeps only its hash).

    Use it like a token: `Authorization: Bearer <key>`, or `SPECAI_TOKEN=<key> specai ...`.

    Examples:

      specai auth token create --name ci --scope write --expires 30

      KEY=$(specai auth token create --name dashboard)     # read-only, 90 days
    """
    days = _expiry_days(expires)
    with open_client(server, fingerprint) as client:
        created = client.create_key(name, scope, days)
    if json_output:
        print_json(created)
        return
    print(created.key)
    until = created.expires_at or "never expires"
    err.print(f"key {created.id} '{name}' ({created.scope}, {until}); it is shown only this once")


@token_app.command("list")
@handle_errors
def token_list(
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """List your API keys (an admin sees every account's); never the keys themselves.

    Example:

      specai auth token list --json
    """
    with open_client(server, fingerprint) as client:
        keys = client.keys().keys
    if json_output:
        print_json({"keys": keys})
        return
    if not keys:
        out.print("no API keys; create one with `specai auth token create --name NAME`")
        return
    table = Table("id", "name", "owner", "scope", "created", "expires", "state")
    for key in keys:
        state = "revoked" if key.revoked_at else "active"
        table.add_row(
            key.id, key.name, key.owner, key.scope, key.created_at[:16], key.expires_at or "never", state
        )
    out.print(table)


@token_app.command("revoke")
@handle_errors
def token_revoke(
    key_id: Annotated[str, typer.Argument(help="Id of the key (from `auth token list`).")],
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
) -> None:
    """Revoke an API key: it stops working at once.

    Example:

      specai auth token revoke 3f9c2a7d51e04b6a
    """
    with open_client(server, fingerprint) as client:
        key = client.revoke_key(key_id)
    out.print(f"revoked key {key.id} '{key.name}'")
