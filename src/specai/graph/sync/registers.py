"""The merge: an entity's state is a set of last-writer-wins registers plus an existence register.

State (as stored, JSON): `{"exists": reg, "fields": {name: reg}, "ends": {...}}`, a register being
`{"t": stamp, "q": seq, "c": context, "p": prev, "v": value}` (no `"v"`: a removed property). Each register keeps
the write with the highest stamp, so merging is commutative, associative and idempotent whatever the order of
arrival; an update never touches existence, so it never revives a deleted entity; only a newer create does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from specai.graph.sync.change import ABSENT, EdgeEnds, SyncChange
from specai.graph.sync.hlc import ZERO, Stamp

State = dict[str, Any]


@dataclass(frozen=True)
class Overwrite:
    """Two concurrent writes of one register met here: `winner` kept, `loser` overwritten or refused."""

    field: str
    winner: dict[str, Any]
    loser: dict[str, Any]
    local_won: bool


def empty() -> State:
    """The state of an entity nothing is known of yet."""
    return {"exists": None, "fields": {}, "ends": None}


def stamp_of(reg: dict[str, Any] | None) -> Stamp:
    """A register's stamp (ZERO for none)."""
    if reg is None:
        return ZERO
    t = reg["t"]
    return (t[0], t[1], t[2])


def newest(state: State) -> Stamp:
    """The highest stamp of any register of the entity."""
    stamps = [stamp_of(state.get("exists"))]
    stamps += [stamp_of(reg) for reg in state["fields"].values()]
    return max(stamps)


def alive(state: State) -> bool:
    """The existence register says created (and no later delete)."""
    reg = state.get("exists")
    return bool(reg is not None and reg["v"])


def values(state: State) -> dict[str, Any]:
    """Every register that holds a value (removed properties left out). A create sets the whole entity at its
    stamp, so a register written before the newest create (in an earlier life of the uid) is no value of it."""
    reg = state.get("exists")
    start = stamp_of(reg) if reg is not None and reg["v"] else ZERO
    return {name: r["v"] for name, r in state["fields"].items() if "v" in r and stamp_of(r) >= start}


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1, 1.0 and True differ (Python's == takes them for one, so a change between them
    would be neither logged nor shown)."""
    if a is ABSENT or b is ABSENT:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def ends(state: State) -> EdgeEnds | None:
    """An edge's fixed endpoints and type, once any change of it has been seen."""
    found = state.get("ends")
    return None if found is None else EdgeEnds(**found)


def _register(change: SyncChange, value: Any, prev: Stamp | None) -> dict[str, Any]:
    reg: dict[str, Any] = {"t": list(change.stamp), "q": change.seq, "c": change.context}
    if prev is not None:
        reg["p"] = list(prev)
    if value is not ABSENT:
        reg["v"] = value
    return reg


def saw(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Had the writer of `a` seen write `b` (so `a` overwrote it knowingly)?"""
    if a.get("p") is not None and list(a["p"]) == list(b["t"]):
        return True
    origin = b["t"][2]
    return int(a["c"].get(origin, 0)) >= int(b["q"]) or (a["t"][2] == origin and a["q"] > b["q"])


def merge(state: State, change: SyncChange) -> tuple[State, list[Overwrite]]:
    """The state after `change`, and the concurrent overwrites it caused (`state` is not modified)."""
    fields = dict(state["fields"])
    result: State = {"exists": state.get("exists"), "fields": fields, "ends": state.get("ends")}
    if change.ends is not None and result["ends"] is None:
        result["ends"] = {
            "source_uid": change.ends.source_uid,
            "target_uid": change.ends.target_uid,
            "edge_type": change.ends.edge_type,
        }
    if change.operation in ("create", "delete"):
        incoming = _register(change, change.operation == "create", None)
        if stamp_of(incoming) > stamp_of(result["exists"]):
            result["exists"] = incoming
    overwrites: list[Overwrite] = []
    for name, value in change.fields.items():
        incoming = _register(change, value, change.prev.get(name))
        local = fields.get(name)
        if local is None:
            fields[name] = incoming
            continue
        mine, theirs = stamp_of(local), stamp_of(incoming)
        if mine == theirs:
            continue
        concurrent = not saw(incoming, local) and not saw(local, incoming)
        if theirs > mine:
            fields[name] = incoming
            if concurrent:
                overwrites.append(Overwrite(name, incoming, local, local_won=False))
        elif concurrent:
            overwrites.append(Overwrite(name, local, incoming, local_won=True))
    return result, overwrites
