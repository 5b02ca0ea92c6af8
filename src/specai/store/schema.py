"""The tables: the current schema queries use, and each version's frozen shapes that migrations build."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)

from specai.store.types import BigId, JSONText, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
MESSAGE_ROLES = ("system", "user", "assistant", "tool")

metadata = MetaData(naming_convention=NAMING_CONVENTION)

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)


def v1_session_tables(md: MetaData) -> tuple[Table, Table]:
    """`sessions` and `messages` as schema version 1 defines them (frozen: a later change gets its own step)."""
    sessions_table = Table(
        "sessions",
        md,
        Column("id", Text, primary_key=True),
        Column("owner", Text, nullable=False),
        Column("agent", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Index(None, "owner", "updated_at"),
    )
    messages_table = Table(
        "messages",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("session_id", Text, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        Column("role", Text, nullable=False),
        Column("content", Text, nullable=False),
        Column("tool_calls", JSONText, nullable=True),
        Column("tool_call_id", Text, nullable=True),
        Column("name", Text, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        CheckConstraint(f"role IN ({', '.join(repr(r) for r in MESSAGE_ROLES)})", name="role"),
        Index(None, "session_id", "id"),
    )
    return sessions_table, messages_table


CHANGE_OPERATIONS = ("create", "update", "delete")
ENTITY_KINDS = ("node", "edge")


def v2_graph_tables(md: MetaData) -> tuple[Table, Table, Table, Table]:
    """The knowledge graph as schema version 2 defines it (frozen: a later change gets its own step)."""
    nodes = Table(
        "graph_nodes",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("uid", Text, nullable=False, unique=True),
        Column("session_id", Text, nullable=False),
        Column("node_type", Text, nullable=False),
        Column("label", Text, nullable=False),
        Column("properties", JSONText, nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Index(None, "session_id", "id"),
        Index(None, "session_id", "node_type", "id"),
    )
    edges = Table(
        "graph_edges",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("uid", Text, nullable=False, unique=True),
        Column("session_id", Text, nullable=False),
        Column("source_id", BigId, ForeignKey("graph_nodes.id", ondelete="CASCADE"), nullable=False),
        Column("target_id", BigId, ForeignKey("graph_nodes.id", ondelete="CASCADE"), nullable=False),
        Column("edge_type", Text, nullable=False),
        Column("predicate", Text, nullable=True),
        Column("properties", JSONText, nullable=True),
        Column("weight", Double, nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        CheckConstraint("weight >= 0 AND weight <= 1", name="weight"),
        Index(None, "session_id", "id"),
        Index(None, "source_id"),
        Index(None, "target_id"),
    )
    changelog = Table(
        "graph_changelog",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("session_id", Text, nullable=False),
        Column("entity_type", Text, nullable=False),
        Column("entity_id", BigInteger, nullable=False),
        Column("entity_uid", Text, nullable=False),
        Column("operation", Text, nullable=False),
        Column("version", Integer, nullable=False),
        Column("data", JSONText, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        CheckConstraint(f"entity_type IN ({', '.join(repr(k) for k in ENTITY_KINDS)})", name="entity_type"),
        CheckConstraint(f"operation IN ({', '.join(repr(o) for o in CHANGE_OPERATIONS)})", name="operation"),
        Index(None, "session_id", "id"),
        Index(None, "created_at"),
        sqlite_autoincrement=True,  # ids are never reused, even after the newest rows are pruned
    )
    changelog_state = Table(
        "graph_changelog_state",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("pruned_through", BigInteger, nullable=False),
        CheckConstraint("id = 1", name="single_row"),
    )
    return nodes, edges, changelog, changelog_state


def v3_mesh_tables(md: MetaData) -> tuple[Table, Table, Table]:
    """Mesh members and their durable message queue as schema version 3 defines them (frozen)."""
    members = Table(
        "mesh_members",
        md,
        Column("instance_id", Text, primary_key=True),
        Column("hostname", Text, nullable=False),
        Column("port", Integer, nullable=False),
        Column("base_url", Text, nullable=False),
        Column("fingerprint", Text, nullable=True),
        Column("capabilities", JSONText, nullable=False),
        Column("agent_profiles", JSONText, nullable=False),
        Column("registered_at", UTCDateTime, nullable=False),
        Column("last_heartbeat", UTCDateTime, nullable=False),
    )
    return (members, *v3_queue_tables(md))


def v3_queue_tables(md: MetaData) -> tuple[Table, Table]:
    """The mesh message queue as schema version 3 defines it (frozen; unchanged since)."""
    mesh_messages = Table(
        "mesh_messages",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("message_id", Text, nullable=False, unique=True),
        Column("source_instance", Text, nullable=False),
        Column("target_instance", Text, nullable=True),
        Column("message_type", JSONText, nullable=False),
        Column("payload", JSONText, nullable=True),
        Column("correlation_id", Text, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Index(None, "created_at"),
    )
    deliveries = Table(
        "mesh_deliveries",
        md,
        Column("message_id", BigId, ForeignKey("mesh_messages.id", ondelete="CASCADE"), primary_key=True),
        Column("recipient", Text, primary_key=True),
        Index(None, "recipient", "message_id"),
    )
    return mesh_messages, deliveries


def v4_access_tables(md: MetaData) -> tuple[Table, Table, Table, Table]:
    """Who owns what, as schema version 4 defines it (frozen): API keys, revoked tokens, graph owners and shares."""
    api_keys = Table(
        "api_keys",
        md,
        Column("id", Text, primary_key=True),
        Column("owner_id", Text, nullable=False),
        Column("owner_name", Text, nullable=False),
        Column("name", Text, nullable=False),
        Column("key_hash", Text, nullable=False),
        Column("scope", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("expires_at", UTCDateTime, nullable=True),
        Column("revoked_at", UTCDateTime, nullable=True),
        Index(None, "owner_id"),
    )
    revoked_tokens = Table(
        "revoked_tokens",
        md,
        Column("jti", Text, primary_key=True),
        Column("owner_id", Text, nullable=False),
        Column("expires_at", UTCDateTime, nullable=False),
        Index(None, "expires_at"),
    )
    graph_sessions = Table(
        "graph_sessions",
        md,
        Column("session_id", Text, primary_key=True),
        Column("owner_id", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Index(None, "owner_id"),
    )
    graph_shares = Table(
        "graph_shares",
        md,
        Column(
            "session_id", Text, ForeignKey("graph_sessions.session_id", ondelete="CASCADE"), primary_key=True
        ),
        Column("user_id", Text, primary_key=True),
        Column("user_name", Text, nullable=False),
        Column("writable", Boolean, nullable=False),
        Index(None, "user_id"),
    )
    return api_keys, revoked_tokens, graph_sessions, graph_shares


def v4_mesh_members(md: MetaData) -> Table:
    """`mesh_members` since version 4: bound to the account (`owner_id`) that registered it; NULL = before v4."""
    return Table(
        "mesh_members",
        md,
        Column("instance_id", Text, primary_key=True),
        Column("hostname", Text, nullable=False),
        Column("port", Integer, nullable=False),
        Column("base_url", Text, nullable=False),
        Column("fingerprint", Text, nullable=True),
        Column("capabilities", JSONText, nullable=False),
        Column("agent_profiles", JSONText, nullable=False),
        Column("registered_at", UTCDateTime, nullable=False),
        Column("last_heartbeat", UTCDateTime, nullable=False),
        Column("owner_id", Text, nullable=True),
    )


SYNC_KINDS = ENTITY_KINDS


def v5_sync_tables(md: MetaData) -> tuple[Table, Table, Table, Table, Table, Table]:
    """Graph sync as schema version 5 defines it (frozen): configs, register state, per-origin log, heads,
    what each peer reported having, and the conflicts resolved here."""
    configs = Table(
        "graph_sync_configs",
        md,
        Column("session_id", Text, primary_key=True),
        Column("graph_name", Text, primary_key=True),
        Column("sync_enabled", Boolean, nullable=False),
        Column("conflict_resolution_strategy", Text, nullable=False),
        Column("sync_interval_seconds", Integer, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Column("last_sync_at", UTCDateTime, nullable=True),
    )
    entities = Table(
        "graph_sync_entities",
        md,
        Column("uid", Text, primary_key=True),
        Column("session_id", Text, nullable=False),
        Column("kind", Text, nullable=False),
        Column("source_uid", Text, nullable=True),
        Column("target_uid", Text, nullable=True),
        Column("alive", Boolean, nullable=False),
        Column("state", JSONText, nullable=False),
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in SYNC_KINDS)})", name="kind"),
        Index(None, "session_id", "kind"),
        Index(None, "source_uid"),
        Index(None, "target_uid"),
    )
    log = Table(
        "graph_sync_log",
        md,
        Column("session_id", Text, primary_key=True),
        Column("origin", Text, primary_key=True),
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("uid", Text, nullable=False),
        Column("body", JSONText, nullable=False),
        Index(None, "session_id", "uid"),
    )
    heads = Table(
        "graph_sync_heads",
        md,
        Column("session_id", Text, primary_key=True),
        Column("origin", Text, primary_key=True),
        Column("head", BigInteger, nullable=False),
    )
    peers = Table(
        "graph_sync_peers",
        md,
        Column("session_id", Text, primary_key=True),
        Column("peer", Text, primary_key=True),
        Column("their_vector", JSONText, nullable=False),
        Column("reported_at", UTCDateTime, nullable=True),
        Column("pulled_at", UTCDateTime, nullable=True),
    )
    conflicts = Table(
        "graph_sync_conflicts",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("session_id", Text, nullable=False),
        Column("graph_name", Text, nullable=False),
        Column("entity_type", Text, nullable=False),
        Column("uid", Text, nullable=False),
        Column("field", Text, nullable=False),
        Column("winner_stamp", Text, nullable=False),
        Column("loser_stamp", Text, nullable=False),
        Column("winner_value", JSONText, nullable=True),
        Column("loser_value", JSONText, nullable=True),
        Column("local_won", Boolean, nullable=False),
        Column("detected_at", UTCDateTime, nullable=False),
        Index(
            "ix_graph_sync_conflicts_pair",
            "session_id",
            "uid",
            "field",
            "winner_stamp",
            "loser_stamp",
            unique=True,
        ),
        Index(None, "session_id", "id"),
    )
    return configs, entities, log, heads, peers, conflicts


def v6_shared_tables(md: MetaData) -> tuple[Table, Table, Table, Table, Table, Table]:
    """What several processes on one PostgreSQL share, as schema version 6 defines it (frozen): users (the
    credentials file's entries, in the database), change counters that tell every process's caches to reload,
    login-throttle counters, the pairs that logged in, leases for the jobs only one process may run, and the
    token buckets of request rate limits."""
    users = Table(
        "users",
        md,
        Column("id", Text, primary_key=True),
        Column("username", Text, nullable=False, unique=True),
        Column("password_hash", Text, nullable=False),
        Column("role", Text, nullable=False),
        Column("token_generation", Integer, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    versions = Table(
        "shared_versions",
        md,
        Column("name", Text, primary_key=True),
        Column("version", BigInteger, nullable=False),
    )
    login_counters = Table(
        "login_counters",
        md,
        Column("budget", Text, primary_key=True),  # pair, address or user
        Column("key", Text, primary_key=True),
        Column("failures", Integer, nullable=False),
        Column("pending", Integer, nullable=False),  # reservations taken in window `pending_window`
        Column("pending_before", Integer, nullable=False),  # ... and in the window before it
        Column("pending_window", Integer, nullable=False),  # epoch seconds // the reservation lifetime
        Column("locked_until", Double, nullable=False),  # epoch seconds
        Column("last", Double, nullable=False),
        Index(None, "last"),
    )
    login_known = Table(
        "login_known",
        md,
        Column("username", Text, primary_key=True),
        Column("address", Text, primary_key=True),
        Column("last_success", Double, nullable=False),
        Index(None, "last_success"),
    )
    leases = Table(
        "leases",
        md,
        Column("name", Text, primary_key=True),
        Column("holder", Text, nullable=True),
        Column("epoch", BigInteger, nullable=False),
        Column("expires_at", UTCDateTime, nullable=False),
    )
    rate_buckets = Table(
        "rate_buckets",
        md,
        Column("key", Text, primary_key=True),  # "<limit>:<key>", e.g. "hash:<user id>"
        Column("tokens", Double, nullable=False),
        Column("at", Double, nullable=False),  # epoch seconds `tokens` was counted at
        Index(None, "at"),
    )
    return users, versions, login_counters, login_known, leases, rate_buckets


def v7_a2a_tables(md: MetaData) -> Table:
    """A2A tasks as schema version 7 defines them (frozen): each task whole as the protocol's JSON, owned by the
    account that sent its message, with the columns ListTasks filters and sorts on (`status_ns`: the status
    timestamp in nanoseconds since the epoch, NULL when the task has none)."""
    return Table(
        "a2a_tasks",
        md,
        Column("task_id", Text, primary_key=True),
        Column("owner_id", Text, nullable=False),
        Column("context_id", Text, nullable=False),
        Column("state", Text, nullable=False),
        Column("status_ns", BigInteger, nullable=True),
        Column("task", JSONText, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Index(None, "owner_id", "status_ns", "task_id"),
        Index(None, "owner_id", "context_id"),
    )


def v5_changelog(md: MetaData) -> Table:
    """`graph_changelog` since version 5: `origin` names the mesh member a synced change came from (NULL: here)."""
    return Table(
        "graph_changelog",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("session_id", Text, nullable=False),
        Column("entity_type", Text, nullable=False),
        Column("entity_id", BigInteger, nullable=False),
        Column("entity_uid", Text, nullable=False),
        Column("operation", Text, nullable=False),
        Column("version", Integer, nullable=False),
        Column("data", JSONText, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("origin", Text, nullable=True),
        CheckConstraint(f"entity_type IN ({', '.join(repr(k) for k in ENTITY_KINDS)})", name="entity_type"),
        CheckConstraint(f"operation IN ({', '.join(repr(o) for o in CHANGE_OPERATIONS)})", name="operation"),
        Index(None, "session_id", "id"),
        Index(None, "created_at"),
        sqlite_autoincrement=True,
    )


# The current schema; once a step alters one of these tables, define the new shape here separately.
sessions, messages = v1_session_tables(metadata)
graph_nodes, graph_edges, _v2_changelog, graph_changelog_state = v2_graph_tables(metadata)
metadata.remove(_v2_changelog)
graph_changelog = v5_changelog(metadata)
mesh_members = v4_mesh_members(metadata)
mesh_messages, mesh_deliveries = v3_queue_tables(metadata)
api_keys, revoked_tokens, graph_sessions, graph_shares = v4_access_tables(metadata)
(
    graph_sync_configs,
    graph_sync_entities,
    graph_sync_log,
    graph_sync_heads,
    graph_sync_peers,
    graph_sync_conflicts,
) = v5_sync_tables(metadata)
users, shared_versions, login_counters, login_known, leases, rate_buckets = v6_shared_tables(metadata)
a2a_tasks = v7_a2a_tables(metadata)
