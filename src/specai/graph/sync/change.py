"""One synced write, `(origin, seq)`, and its wire forms: `SyncedNode`, `SyncedEdge` and `Tombstone`.

A change carries only the registers its write set (a create sets them all), each with the write's stamp; the
writer's version vector at the time (`context`) and the stamps it overwrote (`prev`) let a receiver tell a causal
overwrite from a concurrent one. Edges always carry their endpoints' uids, which never change.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from specai.errors import UnprocessableError
from specai.graph.model import NODE_TYPES
from specai.graph.sync.hlc import Stamp, parse_stamp
from specai.graph.validate import check_edge_type, check_label
from specai.ids import is_instance_id

Kind = Literal["node", "edge"]
Operation = Literal["create", "update", "delete"]
PROPERTY = "properties."  # register names of top-level property keys
NODE_FIELDS = ("node_type", "label")
EDGE_FIELDS = ("predicate", "weight")
MAX_UID = 128
MAX_CHANGED = 10_000


class Absent:
    """The value of a removed property register."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = Absent()


@dataclass(frozen=True)
class EdgeEnds:
    """What an edge is, fixed at its creation: its endpoints (by uid) and type."""

    source_uid: str
    target_uid: str
    edge_type: str


@dataclass(frozen=True)
class SyncChange:
    """One write of one entity at `origin`, number `seq` of that origin in its session."""

    kind: Kind
    operation: Operation
    uid: str
    origin: str
    seq: int
    stamp: Stamp
    context: dict[str, int]
    fields: dict[str, Any] = field(default_factory=dict)  # register -> value (ABSENT: removed)
    prev: dict[str, Stamp] = field(default_factory=dict)  # register -> the stamp it overwrote at the writer
    ends: EdgeEnds | None = None

    def wire(self, session_id: str) -> dict[str, Any]:
        """The change as a `SyncedNode`, `SyncedEdge` or `Tombstone` (the original's fields, plus ours)."""
        at = dt.datetime.fromtimestamp(self.stamp[0] / 1000, dt.UTC).isoformat()
        common: dict[str, Any] = {
            "uid": self.uid,
            "session_id": session_id,
            "origin": self.origin,
            "seq": self.seq,
            "stamp": list(self.stamp),
            "context": {"versions": dict(self.context)},
            "vector_clock": {"versions": {self.origin: self.seq}},
        }
        if self.ends is not None:
            common.update(
                source_uid=self.ends.source_uid,
                target_uid=self.ends.target_uid,
                edge_type=self.ends.edge_type,
            )
        if self.operation == "delete":
            return {**common, "entity_type": self.kind, "deleted_by": self.origin, "deleted_at": at}
        props = {
            name[len(PROPERTY) :]: value
            for name, value in self.fields.items()
            if name.startswith(PROPERTY) and value is not ABSENT
        }
        body = {
            **common,
            "operation": self.operation,
            "changed": sorted(self.fields),
            "prev": {name: list(stamp) for name, stamp in sorted(self.prev.items())},
            "properties": props,
            "last_modified_by": self.origin,
            "updated_at": at,
            "is_deleted": False,
            "sync_enabled": True,
        }
        for name in NODE_FIELDS if self.kind == "node" else EDGE_FIELDS:
            if name in self.fields:
                body[name] = self.fields[name]
        return body


def from_wire(kind: Kind, item: dict[str, Any], tombstone: bool = False) -> SyncChange:
    """A change from its wire form; UnprocessableError (422) naming what is wrong."""
    try:
        return _parse(kind, item, tombstone)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        what = "tombstone" if tombstone else kind
        raise UnprocessableError(f"invalid synced {what}: {exc}") from None


def _parse(kind: Kind, item: dict[str, Any], tombstone: bool) -> SyncChange:
    if tombstone:
        kind = item["entity_type"]
        if kind not in ("node", "edge"):
            raise ValueError("entity_type must be 'node' or 'edge'")
    uid = _uid(item["uid"], "uid")
    origin = item["origin"]
    if not isinstance(origin, str) or not is_instance_id(origin):
        raise ValueError("origin must be an instance id")
    seq = item["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError("seq must be a positive integer")
    stamp = parse_stamp(item["stamp"])
    if stamp[2] != origin:
        raise ValueError("a change's stamp must name its origin")
    context = _vector(item.get("context"))
    ends = None
    if kind == "edge":
        edge_type = check_edge_type(item["edge_type"])
        ends = EdgeEnds(
            _uid(item["source_uid"], "source_uid"),
            _uid(item["target_uid"], "target_uid"),
            edge_type,
        )
    if tombstone:
        return SyncChange(kind, "delete", uid, origin, seq, stamp, context, ends=ends)
    operation = item["operation"]
    if operation not in ("create", "update"):
        raise ValueError("operation must be 'create' or 'update'")
    prev = {str(name): parse_stamp(value) for name, value in (item.get("prev") or {}).items()}
    fields = _fields(kind, item)
    if operation == "create" and kind == "node" and not all(name in fields for name in NODE_FIELDS):
        raise ValueError("a node create sets node_type and label")
    return SyncChange(kind, operation, uid, origin, seq, stamp, context, fields, prev, ends)


def _fields(kind: Kind, item: dict[str, Any]) -> dict[str, Any]:
    """The registers a change sets, from `changed` and the values beside it (a property left out: removed)."""
    changed = item["changed"]
    if not isinstance(changed, list) or len(changed) > MAX_CHANGED:
        raise ValueError("changed must be a list of register names")
    props = item.get("properties") or {}
    if not isinstance(props, dict):
        raise ValueError("properties must be an object")
    fields: dict[str, Any] = {}
    allowed = NODE_FIELDS if kind == "node" else EDGE_FIELDS
    for name in changed:
        if not isinstance(name, str):
            raise ValueError("register names are strings")
        if name.startswith(PROPERTY):
            fields[name] = props.get(name[len(PROPERTY) :], ABSENT)
        elif name in allowed:
            fields[name] = _checked(kind, name, item[name])
        else:
            raise ValueError(f"unknown register {name!r} for a {kind}")
    return fields


def _checked(kind: Kind, name: str, value: Any) -> Any:
    if name == "node_type" and value not in NODE_TYPES:
        raise ValueError(f"unknown node_type {value!r}")
    if name == "label":
        value = check_label(value)
    if name == "predicate" and value is not None and not isinstance(value, str):
        raise ValueError("predicate must be a string or null")
    if name == "weight":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError("weight must be a number from 0 to 1")
        value = float(value)
    return value


def _uid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_UID or not value.isprintable():
        raise ValueError(f"{name} must be a printable string of 1 to {MAX_UID} characters")
    return value


def _vector(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    versions = value["versions"]
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in versions.items()
    ):
        raise ValueError('a version vector is {"versions": {instance_id: seq}}')
    return dict(versions)
