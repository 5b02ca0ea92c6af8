"""The versioned schema steps, oldest first: each builds its version's frozen table shapes, never today's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, MetaData

from specai.store.schema import (
    NAMING_CONVENTION,
    v1_session_tables,
    v2_graph_tables,
    v3_mesh_tables,
    v4_access_tables,
    v5_sync_tables,
    v6_shared_tables,
    v7_a2a_tables,
)


@dataclass(frozen=True)
class Migration:
    """One schema step: `apply` runs on a sync connection inside the step's own transaction."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_sessions(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    v1_session_tables(md)
    md.create_all(conn)


def _v2_graph(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    v2_graph_tables(md)
    md.create_all(conn)


def _v3_mesh(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    v3_mesh_tables(md)
    md.create_all(conn)


def _v4_access(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    v4_access_tables(md)
    md.create_all(conn)
    conn.exec_driver_sql("ALTER TABLE mesh_members ADD COLUMN owner_id TEXT")


def _v5_sync(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    v5_sync_tables(md)
    md.create_all(conn)
    conn.exec_driver_sql("ALTER TABLE graph_changelog ADD COLUMN origin TEXT")


def _v6_shared(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    v6_shared_tables(md)
    md.create_all(conn)
    if (
        conn.dialect.name == "postgresql"
    ):  # counters are rebuilt by failures: no need to write them to the WAL
        conn.exec_driver_sql("ALTER TABLE login_counters SET UNLOGGED")
        conn.exec_driver_sql("ALTER TABLE login_known SET UNLOGGED")
        conn.exec_driver_sql("ALTER TABLE rate_buckets SET UNLOGGED")


def _v7_a2a(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    v7_a2a_tables(md)
    md.create_all(conn)


# Append new steps at the end; never edit or reorder a released step (upgrade tests rely on them).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sessions and messages", _v1_sessions),
    Migration(2, "knowledge graph and its changelog", _v2_graph),
    Migration(3, "mesh members and message queue", _v3_mesh),
    Migration(
        4, "access model: API keys, revoked tokens, graph owners and shares, mesh member owners", _v4_access
    ),
    Migration(5, "graph sync: configs, register state, per-origin log, heads, peers, conflicts", _v5_sync),
    Migration(6, "shared state: users, change counters, login throttling, leases", _v6_shared),
    Migration(7, "A2A tasks, owned by the account that sent them", _v7_a2a),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
