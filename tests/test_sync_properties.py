"""Graph sync converges: a Hypothesis state machine over 2-5 in-process SQLite replicas doing random writes and
imperfect exchanges, checked against a model of the registers; and the merge alone is commutative, associative
and idempotent."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sync_replicas import (
    SESSION,
    Crash,
    Replica,
    canonical,
    dump_of,
    migrated_template,
    projection_of,
    sqlite_copy,
)

import specai.graph.write
from specai.graph.sync.change import ABSENT, PROPERTY, EdgeEnds, Kind, Operation, SyncChange
from specai.graph.sync.engine import SyncNotEnabledError
from specai.graph.sync.hlc import ClockSkewError, Stamp
from specai.graph.sync.registers import State, empty, merge

T = TypeVar("T")

NODE_TYPES = ("entity", "concept", "fact")
LABELS = ("a", "b", "c", "")
KEYS = ("k", "m", "n")
# values Python's == conflates (1, 1.0, True; 0, False) must stay apart on every member
VALUES = st.sampled_from([0, 1, 1.0, True, False, "1", "x", [1], {"z": 1}])
EDGE_TYPES = ("RELATES_TO", "PART_OF")
WEIGHTS = st.sampled_from([0.0, 0.5, 1.0, 1])
PREDICATES = st.sampled_from([None, "p", "q"])
MAX_SKEW_MS = 60_000


# --- the model: per-register last writer by stamp, fed every change each member logged for its own writes --------


@dataclass
class Entity:
    """What the logged changes of one uid say, register by register."""

    kind: Kind
    ends: EdgeEnds | None = None
    exists: tuple[Stamp, bool] | None = None
    fields: dict[str, tuple[Stamp, Any]] = field(default_factory=dict)

    def live(self) -> bool:
        return self.exists is not None and self.exists[1]

    def values(self) -> dict[str, Any]:
        """A create sets the whole entity at its stamp: registers written before it are not its values."""
        assert self.exists is not None
        start = self.exists[0]
        return {n: v for n, (s, v) in self.fields.items() if s >= start and v is not ABSENT}


class Model:
    """Every change written anywhere, reduced to the newest write of each register (by stamp)."""

    def __init__(self) -> None:
        self.entities: dict[str, Entity] = {}

    def learn(self, change: SyncChange) -> None:
        entity = self.entities.setdefault(change.uid, Entity(change.kind))
        entity.ends = entity.ends or change.ends
        if change.operation != "update" and (entity.exists is None or change.stamp > entity.exists[0]):
            entity.exists = (change.stamp, change.operation == "create")
        for name, value in change.fields.items():
            if name not in entity.fields or change.stamp > entity.fields[name][0]:
                entity.fields[name] = (change.stamp, value)

    def deleted(self) -> set[str]:
        """Uids whose newest create/delete is a delete."""
        return {uid for uid, e in self.entities.items() if e.exists is not None and not e.exists[1]}

    def expected(self) -> dict[str, Any]:
        """The graph every member must show after a full exchange, in `Replica.dump()`'s shape."""
        nodes: dict[str, Any] = {}
        for uid, e in self.entities.items():
            if e.kind == "node" and e.live():
                got = e.values()
                nodes[uid] = (got["node_type"], got["label"], _props(got))
        edges: dict[str, Any] = {}
        for uid, e in self.entities.items():
            if e.kind != "edge" or not e.live():
                continue
            assert e.ends is not None
            if e.ends.source_uid in nodes and e.ends.target_uid in nodes:
                got = e.values()
                edges[uid] = (
                    e.ends.source_uid,
                    e.ends.target_uid,
                    e.ends.edge_type,
                    got.get("predicate"),
                    float(got.get("weight", 1.0)),
                    _props(got),
                )
        return {"nodes": nodes, "edges": edges}


def _props(got: dict[str, Any]) -> dict[str, Any]:
    return {name[len(PROPERTY) :]: value for name, value in got.items() if name.startswith(PROPERTY)}


# --- the state machine ------------------------------------------------------------------------------------------


class Ticker:
    """A shared clock that moves 1 ms each time it is read, and uids counted from 1: a replayed run makes the
    same stamps and uids, so Hypothesis can shrink it (real time would pick other winners, uuid4 other orders)."""

    START = 1_767_225_600_000  # 2026-01-01

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ms = self.START
        self.uids = 0

    def __call__(self) -> int:
        self.ms += 1
        return self.ms

    def uuid4(self) -> uuid.UUID:
        self.uids += 1
        return uuid.UUID(int=self.uids)


TICKER = Ticker()  # reset by each run; graph.write's uuid module is replaced by it during the test


TWO_LIVE = precondition(lambda self: len(self.enabled()) >= 2)


class Replicas(RuleBasedStateMachine):
    """2-5 members writing concurrently and exchanging partially, twice, out of order, or crashing mid-apply."""

    template: ClassVar[Path]  # an empty migrated database, copied for each member

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="sync-machine-"))
        self.loop = asyncio.new_event_loop()
        self.replicas: list[Replica] = []
        self.disabled: set[str] = set()
        self.seen: dict[str, int] = {}
        self.model = Model()
        TICKER.reset()
        self.late: list[tuple[Replica, Replica, dict[str, Any]]] = []  # pages delivered again, later
        self.counts: dict[str, tuple[int, int, int]] = {}  # replica -> visible nodes, edges, dead uids
        self.touched: set[str] = set()  # replicas a step may have changed (the invariant reads only those)
        self.since_exchange = 0  # steps since the last full exchange

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @initialize(offsets=st.lists(st.integers(-3000, 3000), min_size=2, max_size=5))
    def start(self, offsets: list[int]) -> None:
        for i, offset in enumerate(offsets):
            name = f"r{i}"
            url = sqlite_copy(self.template, self.tmp, name)
            replica = self.run(
                Replica.open(name, url, offset_ms=offset, max_skew_ms=MAX_SKEW_MS, base=TICKER)
            )
            self.replicas.append(replica)
            self.run(replica.enable())
            self.seen[name] = 0
            self.touched.add(name)
        note(f"clock offsets {offsets}")

    def teardown(self) -> None:
        try:
            if self.replicas:
                self.converge(limit=1000)
        finally:
            for replica in self.replicas:
                self.run(replica.close())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- helpers ---

    def enabled(self) -> list[Replica]:
        return [r for r in self.replicas if r.name not in self.disabled]

    def learn(self, replica: Replica) -> None:
        """Feed the model what `replica` logged for its own writes since last time."""
        for change in self.run(replica.own_changes(self.seen[replica.name])):
            self.model.learn(change)
            self.seen[replica.name] = change.seq

    def pair(self, data: st.DataObject) -> tuple[Replica, Replica]:
        """A receiver and a sender, both synced (rules that call this are for two live members)."""
        live = self.enabled()
        receiver = data.draw(st.sampled_from(live), label="receiver")
        sender = data.draw(st.sampled_from([r for r in live if r is not receiver]), label="sender")
        self.touched.add(receiver.name)
        return receiver, sender

    def holding(self, data: st.DataObject, what: int, enabled: bool = False) -> Replica:
        """A replica that shows some nodes (`what` 0), edges (1), or holds deleted uids (2)."""
        pool = [r for r in (self.enabled() if enabled else self.replicas) if self.counts[r.name][what]]
        replica = data.draw(st.sampled_from(pool), label="replica")
        self.touched.add(replica.name)
        return replica

    def some_node(self, data: st.DataObject, replica: Replica) -> Any:
        nodes, _ = self.run(replica.visible())
        return data.draw(st.sampled_from(nodes), label="node")

    def some_edge(self, data: st.DataObject, replica: Replica) -> Any:
        _, edges = self.run(replica.visible())
        return data.draw(st.sampled_from(edges), label="edge")

    def converge(self, limit: int) -> None:
        """Full exchange: re-enable everyone, then pull around the ring (each from the one before) until every
        vector is the same, and check no member has anything left for any other; then every member shows the
        model's graph."""
        for replica in self.replicas:
            if replica.name in self.disabled:
                self.run(replica.enable())
                self.learn(replica)
        self.disabled.clear()
        self.touched.update(r.name for r in self.replicas)
        self.since_exchange = 0
        ring = list(zip(self.replicas, self.replicas[-1:] + self.replicas[:-1], strict=True))
        for _ in range(3):  # two rounds carry everything everywhere
            for receiver, sender in ring:
                self.run(receiver.pull(sender, limit=limit))
            if len({canonical(self.run(r.vector())) for r in self.replicas}) == 1:
                break  # the same vector everywhere: no member has anything left for another
        else:
            pytest.fail("the exchange never settled")
        for receiver, sender in itertools.permutations(self.replicas, 2):  # each also tells each its vector
            left = self.run(receiver.page(sender))
            assert left["nodes"] + left["edges"] + left["tombstones"] == []
            assert not left["more"]
        dumps = {r.name: self.run(r.canonical()) for r in self.replicas}
        vectors = {r.name: self.run(r.vector()) for r in self.replicas}
        assert len(set(dumps.values())) == 1, dumps
        assert len({canonical(v) for v in vectors.values()}) == 1, vectors
        shown = self.run(self.replicas[0].dump())
        expected = self.model.expected()
        for part in ("nodes", "edges"):
            for uid in sorted(set(shown[part]) | set(expected[part])):
                got, want = shown[part].get(uid), expected[part].get(uid)
                assert canonical(got) == canonical(want), f"{part[:-1]} {uid}: shown {got}, model {want}"
        for uid in self.model.deleted():
            assert uid not in shown["nodes"], f"{uid} resurrected"
            assert uid not in shown["edges"], f"{uid} resurrected"
        for source, target, *_ in shown["edges"].values():
            assert source in shown["nodes"]
            assert target in shown["nodes"]

    # --- local writes ---

    @rule(data=st.data())
    def create_node(self, data: st.DataObject) -> None:
        """(Hypothesis favours the first rule by argument count and name: create_edge, else this one.)"""
        replica = data.draw(st.sampled_from(self.replicas), label="replica")
        self.touched.add(replica.name)
        kind = data.draw(st.sampled_from(NODE_TYPES), label="type")
        label = data.draw(st.sampled_from(LABELS), label="label")
        props = data.draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=2), label="props")
        self.run(replica.graph.create_node(SESSION, kind, label, props))
        self.learn(replica)

    @precondition(lambda self: any(self.counts[r.name][0] for r in self.replicas))
    @rule(data=st.data())
    def create_edge(self, data: st.DataObject) -> None:
        """(The first rule Hypothesis favours once some member shows nodes; before, create_node.)"""
        replica = self.holding(data, 0)
        kind = data.draw(st.sampled_from(EDGE_TYPES), label="type")
        predicate = data.draw(PREDICATES, label="predicate")
        weight = data.draw(WEIGHTS, label="weight")
        source, target = self.some_node(data, replica), self.some_node(data, replica)
        props = data.draw(
            st.none() | st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=2), label="props"
        )
        self.run(replica.graph.create_edge(SESSION, source.id, target.id, kind, predicate, props, weight))
        self.learn(replica)

    @precondition(lambda self: any(self.counts[r.name][0] for r in self.replicas))
    @rule(data=st.data())
    def patch_node(self, data: st.DataObject) -> None:
        replica = self.holding(data, 0)
        node = self.some_node(data, replica)
        label = data.draw(st.none() | st.sampled_from(LABELS), label="label")
        patch = data.draw(
            st.none() | st.dictionaries(st.sampled_from(KEYS), st.none() | VALUES, max_size=2), label="patch"
        )
        self.run(replica.graph.patch_node(node.id, label=label, properties=patch))
        self.learn(replica)

    @precondition(lambda self: any(self.counts[r.name][0] for r in self.replicas))
    @rule(data=st.data())
    def replace_properties(self, data: st.DataObject) -> None:
        replica = self.holding(data, 0)
        node = self.some_node(data, replica)
        props = data.draw(
            st.dictionaries(st.sampled_from(KEYS), st.none() | VALUES, max_size=3), label="props"
        )
        self.run(replica.graph.replace_properties(node.id, props))
        self.learn(replica)

    @precondition(lambda self: any(self.counts[r.name][1] for r in self.replicas))
    @rule(data=st.data())
    def patch_edge(self, data: st.DataObject) -> None:
        replica = self.holding(data, 1)
        edge = self.some_edge(data, replica)
        predicate = data.draw(PREDICATES, label="predicate")
        weight = data.draw(st.none() | WEIGHTS, label="weight")
        patch = data.draw(
            st.none() | st.dictionaries(st.sampled_from(KEYS), st.none() | VALUES, max_size=2), label="patch"
        )
        self.run(replica.graph.patch_edge(edge.id, predicate=predicate, properties=patch, weight=weight))
        self.learn(replica)

    @precondition(lambda self: any(self.counts[r.name][0] for r in self.replicas))
    @rule(data=st.data())
    def delete_node(self, data: st.DataObject) -> None:
        replica = self.holding(data, 0)
        node = self.some_node(data, replica)
        self.run(replica.graph.delete_node(node.id))
        self.learn(replica)

    @precondition(lambda self: any(self.counts[r.name][1] for r in self.replicas))
    @rule(data=st.data())
    def delete_edge(self, data: st.DataObject) -> None:
        replica = self.holding(data, 1)
        edge = self.some_edge(data, replica)
        self.run(replica.graph.delete_edge(edge.id))
        self.learn(replica)

    @precondition(lambda self: any(self.counts[r.name][2] for r in self.enabled()))
    @rule(data=st.data())
    def recreate(self, data: st.DataObject) -> None:
        """A deleted entity created again under its uid."""
        replica = self.holding(data, 2, enabled=True)
        states = self.run(replica.states())
        dead = sorted(uid for uid, s in states.items() if s["exists"] is not None and not s["exists"]["v"])
        uid = data.draw(st.sampled_from(dead), label="uid")
        props = data.draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=2), label="props")
        fields: dict[str, Any] = {PROPERTY + k: v for k, v in props.items()}
        ends = states[uid].get("ends")
        if ends is None:
            fields.update(
                node_type=data.draw(st.sampled_from(NODE_TYPES), label="type"),
                label=data.draw(st.sampled_from(LABELS), label="label"),
            )
            self.run(replica.recreate("node", uid, fields))
        else:
            fields.update(
                predicate=data.draw(PREDICATES, label="predicate"),
                weight=float(data.draw(WEIGHTS, label="weight")),
            )
            self.run(replica.recreate("edge", uid, fields, EdgeEnds(**ends)))
        self.learn(replica)

    @rule(data=st.data())
    def toggle_sync(self, data: st.DataObject) -> None:
        """Sync off (writes meanwhile are not logged; exchanges are refused), or back on (reconciled)."""
        replica = data.draw(st.sampled_from(self.replicas), label="replica")
        self.touched.add(replica.name)
        if replica.name in self.disabled:
            self.run(replica.enable())
            self.disabled.discard(replica.name)
            self.learn(replica)
            return
        self.run(replica.sync.set_enabled(SESSION, None, False))
        self.disabled.add(replica.name)
        other = next((r for r in self.enabled()), None)
        if other is not None:
            with pytest.raises(SyncNotEnabledError):
                self.run(other.page(replica))
            wire = self.run(replica.page(other))
            with pytest.raises(SyncNotEnabledError):
                self.run(replica.apply(wire, other))

    # --- exchanges ---

    @TWO_LIVE
    @rule(data=st.data(), limit=st.integers(1, 4), pages=st.integers(1, 3))
    def partial_pull(self, data: st.DataObject, limit: int, pages: int) -> None:
        """Pull a few small pages and stop, `more` or not."""
        receiver, sender = self.pair(data)
        self.run(receiver.pull(sender, limit=limit, pages=pages))

    @TWO_LIVE
    @rule(data=st.data())
    def full_pull(self, data: st.DataObject) -> None:
        receiver, sender = self.pair(data)
        self.run(receiver.pull(sender))

    @TWO_LIVE
    @rule(data=st.data(), limit=st.integers(1, 6))
    def duplicated(self, data: st.DataObject, limit: int) -> None:
        """The same payload twice: the second changes nothing at all."""
        receiver, sender = self.pair(data)
        wire = self.run(receiver.page(sender, limit=limit))
        self.run(receiver.apply(wire, sender))
        once = self.run(receiver.snapshot())
        stats = self.run(receiver.apply(wire, sender))
        assert self.run(receiver.snapshot()) == once
        assert stats.duplicates == len(wire["nodes"]) + len(wire["edges"]) + len(wire["tombstones"])
        self.late.append((receiver, sender, wire))

    @TWO_LIVE
    @rule(data=st.data(), limit=st.integers(1, 3))
    def reordered(self, data: st.DataObject, limit: int) -> None:
        """Two consecutive pages, the later applied first."""
        receiver, sender = self.pair(data)
        vector = self.run(receiver.vector())
        first = self.run(receiver.page(sender, vector, limit))
        ahead = {**vector}
        for origin, seq in first["vector_clock"]["versions"].items():
            ahead[origin] = max(ahead.get(origin, 0), seq)
        second = self.run(receiver.page(sender, ahead, limit, report=False))  # we do not hold `ahead` yet
        self.run(receiver.apply(second, sender))
        self.run(receiver.apply(first, sender))
        self.late.append((receiver, sender, second))

    @TWO_LIVE
    @rule(data=st.data(), limit=st.integers(1, 5))
    def interleaved(self, data: st.DataObject, limit: int) -> None:
        """A page from each of several peers, applied in any order."""
        live = self.enabled()
        receiver = data.draw(st.sampled_from(live), label="receiver")
        self.touched.add(receiver.name)
        senders = [r for r in live if r is not receiver]
        pages = [(s, self.run(receiver.page(s, limit=limit))) for s in senders]
        for sender, wire in data.draw(st.permutations(pages), label="order"):
            self.run(receiver.apply(wire, sender))
            self.late.append((receiver, sender, wire))

    @precondition(lambda self: any(r.name not in self.disabled for r, _, _ in self.late))
    @rule(data=st.data())
    def late_delivery(self, data: st.DataObject) -> None:
        """A page seen before arrives again, after whatever happened since."""
        late = [(r, s, w) for r, s, w in self.late if r.name not in self.disabled]
        receiver, sender, wire = data.draw(st.sampled_from(late), label="late page")
        self.touched.add(receiver.name)
        self.run(receiver.apply(wire, sender))

    @TWO_LIVE
    @rule(data=st.data(), limit=st.integers(1, 6))
    def crash_before_commit(self, data: st.DataObject, limit: int) -> None:
        """An apply that dies after doing all its work, before commit, leaves no trace: not the changes, not the
        vector, not the graph or its changelog."""
        receiver, sender = self.pair(data)
        wire = self.run(receiver.page(sender, limit=limit))
        before = self.run(receiver.snapshot())
        with pytest.raises(Crash):
            self.run(self._crashing_apply(receiver, sender, wire))
        assert self.run(receiver.snapshot()) == before
        if data.draw(st.booleans(), label="retry"):
            self.run(receiver.apply(wire, sender))
        else:
            self.late.append((receiver, sender, wire))

    async def _crashing_apply(self, receiver: Replica, sender: Replica, wire: dict[str, Any]) -> None:
        async with receiver.crashing():
            await receiver.apply(wire, sender)

    @TWO_LIVE
    @rule(data=st.data(), ahead_s=st.integers(1, 3600))
    def skewed_change(self, data: st.DataObject, ahead_s: int) -> None:
        """A change stamped beyond the skew limit is refused with its whole payload; nothing changes."""
        receiver, sender = self.pair(data)
        wire = self.run(receiver.page(sender, limit=data.draw(st.integers(1, 5), label="limit")))
        stamp = (receiver.wall() + MAX_SKEW_MS + ahead_s * 1000, 0, sender.name)
        rogue = SyncChange(
            "node",
            "create",
            str(TICKER.uuid4()),
            sender.name,
            10**9,
            stamp,
            {},
            {"node_type": "entity", "label": "from the future"},
        )
        wire["nodes"].append(rogue.wire(SESSION))
        before = self.run(receiver.snapshot())
        with pytest.raises(ClockSkewError):
            self.run(receiver.apply(wire, sender))
        assert self.run(receiver.snapshot()) == before
        assert receiver.sync.clock.now()[0] < stamp[0]  # the refused stamp was not adopted

    @precondition(lambda self: bool(self.enabled()))
    @rule(data=st.data())
    def tombstone_gc(self, data: st.DataObject) -> None:
        """Tombstone collection forgets only what every member holds; nothing visible changes."""
        replica = data.draw(st.sampled_from(self.enabled()), label="replica")
        self.touched.add(replica.name)
        before = self.run(replica.canonical())
        gone = self.run(replica.sync.collect(SESSION, [r.name for r in self.replicas]))
        note(f"{replica.name} collected {gone}")
        assert self.run(replica.canonical()) == before

    @precondition(lambda self: self.since_exchange >= 10)
    @rule(limit=st.sampled_from([2, 1000]), collect=st.booleans())
    def full_exchange(self, limit: int, collect: bool) -> None:
        """Everything everywhere; then maybe every member collects the tombstones all hold (and shows the same)."""
        self.converge(limit)
        if collect:
            members = [r.name for r in self.replicas]
            for replica in self.replicas:
                before = self.run(replica.canonical())
                note(f"{replica.name} collected {self.run(replica.sync.collect(SESSION, members))}")
                assert self.run(replica.canonical()) == before

    # --- at every step ---

    @invariant()
    def shows_its_registers(self) -> None:
        """Each synced member shows exactly what its register state says (live nodes; live edges between live
        nodes; each register's value)."""
        self.since_exchange += 1
        for replica in [r for r in self.replicas if r.name in self.touched]:
            nodes, edges = self.run(replica.visible())
            states = self.run(replica.states())
            dead = sum(1 for s in states.values() if s["exists"] is not None and not s["exists"]["v"])
            self.counts[replica.name] = (len(nodes), len(edges), dead)
            if replica.name not in self.disabled:
                assert canonical(dump_of(nodes, edges)) == canonical(projection_of(states)), replica.name
        self.touched.clear()


MACHINE_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(900)  # a pass takes ~30 s; a failure is shrunk, which may take minutes
def test_replicas_converge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    template = asyncio.run(migrated_template(tmp_path / "template.db"))
    monkeypatch.setattr(specai.graph.write, "uuid", TICKER)
    monkeypatch.setattr(Replicas, "template", template, raising=False)
    run_state_machine_as_test(Replicas, settings=MACHINE_SETTINGS)


# --- the merge alone -------------------------------------------------------------------------------------------

ORIGINS = ("a", "b", "c")
OPERATIONS: tuple[Operation, ...] = ("create", "update", "delete")
UIDS = ("n1", "n2", "e1")
EDGE_ENDS = EdgeEnds("n1", "n2", "RELATES_TO")


@st.composite
def changes(draw: st.DrawFn) -> list[SyncChange]:
    """Writes of a few entities at a few origins: unique stamps, seqs counted per origin, random fields."""
    stamps = draw(
        st.lists(
            st.tuples(st.integers(0, 6), st.integers(0, 2), st.sampled_from(ORIGINS)),
            min_size=1,
            max_size=12,
            unique=True,
        )
    )
    seqs = dict.fromkeys(ORIGINS, 0)
    made: list[SyncChange] = []
    for stamp in sorted(stamps):  # seq order follows stamp order at each origin, as at a real member
        origin = stamp[2]
        seqs[origin] += 1
        uid = draw(st.sampled_from(UIDS))
        kind: Kind = "edge" if uid == "e1" else "node"
        operation: Operation = draw(st.sampled_from(OPERATIONS))
        names = ["label", PROPERTY + "k", PROPERTY + "m"] if kind == "node" else ["weight", PROPERTY + "k"]
        fields: dict[str, Any] = {}
        if operation != "delete":
            chosen = (
                names
                if operation == "create"
                else draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
            )
            for name in chosen:
                fields[name] = draw(st.sampled_from([1, True, 1.0, "x", ABSENT]) if "." in name else VALUES)
        context = {o: draw(st.integers(0, seqs[o])) for o in ORIGINS if o != origin}
        context[origin] = seqs[origin] - 1
        prev = {name: draw(st.sampled_from(stamps)) for name in fields if draw(st.booleans())}
        made.append(
            SyncChange(
                kind,
                operation,
                uid,
                origin,
                seqs[origin],
                stamp,
                context,
                fields,
                prev,
                EDGE_ENDS if kind == "edge" else None,
            )
        )
    return made


def fold(batch: list[SyncChange], start: dict[str, State] | None = None) -> dict[str, State]:
    """Merge changes one by one into per-uid states."""
    states = dict(start or {})
    for change in batch:
        states[change.uid], _ = merge(states.get(change.uid) or empty(), change)
    return states


def as_changes(states: dict[str, State]) -> list[SyncChange]:
    """Each register of `states` as the one-register change that wrote it, so states can be merged as changes."""
    out: list[SyncChange] = []
    for uid, state in states.items():
        kind: Kind = "node" if state.get("ends") is None else "edge"
        ends = None if state.get("ends") is None else EdgeEnds(**state["ends"])
        registers = [(None, state["exists"])] if state.get("exists") else []
        registers += list(state["fields"].items())
        for name, reg in registers:
            t = reg["t"]
            stamp = (t[0], t[1], t[2])
            operation: Operation = "update"
            fields: dict[str, Any] = {}
            prev: dict[str, Stamp] = {}
            if name is None:
                operation = "create" if reg["v"] else "delete"
            else:
                fields = {name: reg.get("v", ABSENT)}
                if "p" in reg:
                    prev = {name: (reg["p"][0], reg["p"][1], reg["p"][2])}
            out.append(SyncChange(kind, operation, uid, t[2], reg["q"], stamp, reg["c"], fields, prev, ends))
    return out


def join(a: dict[str, State], b: dict[str, State]) -> dict[str, State]:
    """Two members' states merged: `b`'s registers merged into `a`."""
    return fold(as_changes(b), a)


def same(a: dict[str, State], b: dict[str, State]) -> bool:
    return canonical(a) == canonical(b)


MERGE_SETTINGS = settings(max_examples=300, deadline=None)


@MERGE_SETTINGS
@given(batch=changes(), data=st.data())
def test_merge_is_commutative(batch: list[SyncChange], data: st.DataObject) -> None:
    """Any arrival order gives the same states, register for register."""
    shuffled = data.draw(st.permutations(batch))
    assert same(fold(batch), fold(shuffled))


@MERGE_SETTINGS
@given(batch=changes(), cuts=st.lists(st.integers(0, 12), min_size=2, max_size=2))
def test_merge_is_associative(batch: list[SyncChange], cuts: list[int]) -> None:
    """Merging three members' states in either grouping gives the same states, and the states of all the
    changes: (A ⊔ B) ⊔ C = A ⊔ (B ⊔ C) = fold(A + B + C)."""
    i, j = sorted(min(c, len(batch)) for c in cuts)
    a, b, c = fold(batch[:i]), fold(batch[i:j]), fold(batch[j:])
    left, right = join(join(a, b), c), join(a, join(b, c))
    assert same(left, right)
    assert same(left, fold(batch))


@MERGE_SETTINGS
@given(batch=changes(), data=st.data())
def test_merge_is_idempotent(batch: list[SyncChange], data: st.DataObject) -> None:
    """A change merged again changes nothing; a whole batch, or a state, merged again neither."""
    states = fold(batch)
    again = data.draw(st.sampled_from(batch))
    merged, _ = merge(states[again.uid], again)
    assert canonical(merged) == canonical(states[again.uid])
    assert same(fold(batch, states), states)
    assert same(join(states, states), states)
