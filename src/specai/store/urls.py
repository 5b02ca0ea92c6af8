"""Database URLs: `[database]` settings to an async SQLAlchemy URL, and the password-free form for messages."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from specai.config import Settings
from specai.errors import ConfigError

DB_FILENAME = "specai.db"
SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"
_POSTGRES_SCHEMES = {"postgresql", "postgres", POSTGRES_DRIVER}
_SQLITE_SCHEMES = {"sqlite", SQLITE_DRIVER}
_URL_HELP = "use postgresql://user@host:port/db or sqlite:///path/to/file.db"


def database_url(settings: Settings) -> URL:
    """The async SQLAlchemy URL for `[database]`: `url` when set, else SQLite at `path` or `$SPECAI_HOME/specai.db`."""
    db = settings.database
    if db.url:
        return _normalize(db.url, settings)
    path = Path(db.path).expanduser() if db.path else settings.home / DB_FILENAME
    return URL.create(SQLITE_DRIVER, database=str(path))


def is_postgres(url: URL) -> bool:
    """True for a PostgreSQL URL: the database several specai processes may share."""
    return url.get_backend_name() == "postgresql"


def shares_state(settings: Settings) -> bool:
    """True when `[database]` is PostgreSQL: users, throttles and leadership then live in the database."""
    return is_postgres(database_url(settings))


def redacted(url: URL) -> str:
    """The URL with any password masked, so it can go into messages and logs."""
    return url.render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    name = url.database or ""
    if name in ("", ":memory:") or name.startswith("file:"):
        return None
    return Path(name)


def _normalize(raw: str, settings: Settings) -> URL:
    where = f"{settings.config_path}: [database] url" if settings.config_path else "[database] url"
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise ConfigError(f"{where}: not a valid database URL; {_URL_HELP}") from None
    scheme = url.drivername.lower()
    if scheme in _POSTGRES_SCHEMES:
        return _asyncpg_url(url)
    if scheme in _SQLITE_SCHEMES:
        database = str(Path(url.database).expanduser()) if url.database else url.database
        return url.set(drivername=SQLITE_DRIVER, database=database)
    raise ConfigError(f"{where}: unsupported database '{scheme}' in {redacted(url)}; {_URL_HELP}")


def _asyncpg_url(url: URL) -> URL:
    """Switch to asyncpg and translate libpq's `sslmode` to asyncpg's `ssl`."""
    query = dict(url.query)
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    return url.set(drivername=POSTGRES_DRIVER, query=query)
