"""`specai auth ...`: users, roles and token revocation in the credentials file, or with `[database] url` on
PostgreSQL in the database the servers share (no server needed either way), and API keys (`auth token ...`, on a
server you are logged in to)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer
from rich.table import Table

from specai.cli import _prompt, _settings
from specai.cli._client import FingerprintOption, JsonOption, ServerOption, open_client
from specai.cli._console import USAGE, err, fail, handle_errors, out, print_json
from specai.config import DEFAULT_SERVER_URL, Settings

if TYPE_CHECKING:
    from specai.store import Store

T = TypeVar("T")

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


@dataclass(frozen=True)
class _Users:
    """Where the user commands act: the credentials file, or the users table when `[database] url` is PostgreSQL
    and no --credentials-file was given."""

    settings: Settings
    path: Path | None  # None: the database
    database: str = ""  # the database URL with its password masked, for messages

    @property
    def where(self) -> str:
        return f"in database {self.database}" if self.path is None else f"in {self.path}"

    def run(self, work: Callable[[Store], Awaitable[T]]) -> T:
        """Run `work` on the open (and migrated) database."""
        from specai.store import Store

        async def run() -> T:
            store = await Store.open(self.settings)
            try:
                return await work(store)
            finally:
                await store.close()

        return asyncio.run(run())


def _users(ctx: typer.Context, credentials_file: Path | None) -> _Users:
    from specai.store.urls import shares_state

    settings = _settings.load(ctx)
    if credentials_file is not None:
        return _Users(settings, credentials_file.expanduser())
    if shares_state(settings):
        return _Users(settings, None, _shown_database(settings))
    return _Users(settings, settings.credentials_file)


def _shown_database(settings: Settings) -> str:
    from specai.store.urls import database_url, redacted

    return redacted(database_url(settings).set(drivername="postgresql"))


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
    """Add a user (argon2id hash, a new id) to the credentials file, creating it with mode 0600; with [database]
    url on PostgreSQL, to the database every server on it shares (they all see the user at once).

    The password needs at least [auth] min_password_length characters (default 8): a shorter one from
    --password-stdin exits 2; at the prompt it is asked for again.

    Examples:

      specai auth add-user                      # asks for name and password

      printf 'pw\\n' | specai auth add-user alice --password-stdin

      specai auth add-user mesh --role mesh     # the account servers of a mesh use
    """
    from specai.users import directory as users
    from specai.users import table

    target = _users(ctx, credentials_file)
    chosen = users.check_role(role) if role else None
    name = users.check_username(username) if username else users.check_username(_prompt.ask_username())
    password = _new_password(target.settings.auth.min_password_length, password_stdin)
    if target.path is None:
        user = target.run(lambda store: table.add_user(store, name, password, chosen))
        out.print(f"added user '{name}' ({user.role}) {target.where}", markup=False, highlight=False)
        return
    user = users.add_user(target.path, name, password, chosen)
    out.print(f"added user '{name}' ({user.role}) to {target.path}")


@app.command("passwd")
@handle_errors
def passwd(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="User whose password changes.")],
    password_stdin: PasswordStdin = False,
    credentials_file: CredentialsOption = None,
) -> None:
    """Change a user's password; every earlier token of theirs is revoked (on every server sharing the database).

    The new password needs at least [auth] min_password_length characters (default 8): a shorter one from
    --password-stdin exits 2; at the prompt it is asked for again.

    Example:

      specai auth passwd alice
    """
    from specai.users import directory as users
    from specai.users import table

    target = _users(ctx, credentials_file)
    minimum = target.settings.auth.min_password_length
    if target.path is None:
        target.run(lambda store: table.get_user(store, username))  # fail before asking for a password
        password = _new_password(minimum, password_stdin)
        target.run(lambda store: table.set_password(store, username, password))
        out.print(
            f"changed the password of '{username}' {target.where}; every earlier token of theirs is revoked",
            markup=False,
            highlight=False,
        )
        return
    users.get_user(target.path, username)  # fail before asking for a password
    users.set_password(target.path, username, _new_password(minimum, password_stdin))
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
    from specai.users import table

    target, chosen = _users(ctx, credentials_file), users.check_role(role)
    if target.path is None:
        target.run(lambda store: table.set_role(store, username, chosen))
    else:
        users.set_role(target.path, username, chosen)
    shown = f" {target.where}" if target.path is None else ""
    out.print(
        f"'{username}' is now {role}{shown}; every earlier token of theirs is revoked",
        markup=False,
        highlight=False,
    )


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
    from specai.users import table

    target = _users(ctx, credentials_file)
    if target.path is None:
        target.run(lambda store: table.revoke_tokens(store, username))
    else:
        users.revoke_tokens(target.path, username)
    shown = f" ({target.where})" if target.path is None else ""
    out.print(f"revoked every token issued to '{username}' so far{shown}", markup=False, highlight=False)


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
    from specai.users import table

    target = _users(ctx, credentials_file)
    if target.path is None:
        target.run(lambda store: table.remove_user(store, username))
    else:
        users.remove_user(target.path, username)
    shown = f" {target.where}" if target.path is None else ""
    out.print(f"removed user '{username}'{shown}", markup=False, highlight=False)


@app.command("list-users")
@handle_errors
def list_users(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    credentials_file: CredentialsOption = None,
) -> None:
    """List users with their roles (never their hashes): those of the credentials file, or with [database] url on
    PostgreSQL those of the database (JSON then names `database` instead of `credentials_file`).

    Example:

      specai auth list-users --json
    """
    from specai.users import directory as users
    from specai.users import table

    target = _users(ctx, credentials_file)
    if target.path is None:
        entries, title, source = target.run(table.list_users), target.database, {"database": target.database}
    else:
        path = target.path
        entries = users.load_users(path) if path.exists() else []
        title, source = str(path), {"credentials_file": str(path)}
    if json_output:
        print_json(
            source
            | {
                "users": [
                    {"username": u.username, "role": u.role, "id": u.id, "hash_scheme": u.scheme}
                    for u in entries
                ]
            }
        )
        return
    if not entries:
        hint = " or `specai auth import FILE`" if target.path is None else ""
        out.print(
            f"no users in {title}; add one with `specai auth add-user`{hint}", markup=False, highlight=False
        )
        return
    table_out = Table("username", "role", "hash", title=title, title_justify="left")
    for user in entries:
        table_out.add_row(user.username, user.role, user.scheme)
    out.print(table_out)


@app.command("import")
@handle_errors
def import_users(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="Credentials file to load (the seed format, roles and ids optional).")
    ],
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Update users already in the database (hash, role) and revoke their tokens."
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Load a credentials file's users into the database ([database] url on PostgreSQL), in one transaction.

    The file is checked exactly as a server checks its credentials file
    (`[{"username", "password_hash", "role"?, "id"?, "token_generation"?}]`; a file whose only entry has no role
    makes that user an admin). Ids are kept, so the tokens and the data of a server that used the file keep
    working. Names already in the database are skipped, and listed; with --replace they take the file's hash and
    role, and every earlier token of theirs is revoked. Nothing is imported when anything is wrong.

    Examples:

      specai auth import ~/.spec-ai/credentials.json

      specai auth import users.json --replace --json
    """
    from specai.store.urls import shares_state
    from specai.users import directory as users
    from specai.users import table

    settings = _settings.load(ctx)
    if not shares_state(settings):
        fail(
            "`specai auth import` loads users into a shared database: it needs [database] url on PostgreSQL "
            "(on SQLite the server reads the credentials file itself: see [auth] credentials_file)",
            USAGE,
        )
    target = _Users(settings, None, _shown_database(settings))
    entries = users.load_users(file.expanduser())
    done = target.run(lambda store: table.import_users(store, entries, replace_existing=replace))
    if json_output:
        print_json(
            {
                "database": target.database,
                "added": done.added,
                "replaced": done.replaced,
                "skipped": done.skipped,
            }
        )
        return
    parts = [f"added {len(done.added)}"]
    if replace:
        parts.append(f"replaced {len(done.replaced)}")
    out.print(f"imported {file} {target.where}: {', '.join(parts)}", markup=False, highlight=False)
    for verb, names in (("added", done.added), ("replaced", done.replaced)):
        if names:
            out.print(f"  {verb}: {', '.join(names)}", markup=False, highlight=False)
    if done.skipped:
        out.print(
            f"  skipped (already there; --replace updates them): {', '.join(done.skipped)}",
            markup=False,
            highlight=False,
        )


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
