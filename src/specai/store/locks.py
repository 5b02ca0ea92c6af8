"""Every PostgreSQL advisory-lock key specai takes, in one place so no two features can pick the same one.

The one-key form `pg_advisory_xact_lock(bigint)` and the two-key form `pg_advisory_xact_lock(int, int)` are separate
lock spaces in PostgreSQL; a new key must still differ from every key below in its own form.
"""

from __future__ import annotations

# pg_advisory_xact_lock(MIGRATION_LOCK): one migrator at a time per database.
MIGRATION_LOCK = 0x5EC_A1
# pg_advisory_xact_lock(GRAPH_SESSION_LOCK, hashtext(session_id)): one session's graph writes, in order.
GRAPH_SESSION_LOCK = 0x5EC
