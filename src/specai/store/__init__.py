"""The database every stateful feature shares: one async SQLAlchemy Core code path over SQLite and PostgreSQL."""

from specai.store.engine import Store

__all__ = ["Store"]
