"""Replicated state: namespaced JSON documents that every node holds in memory.

    doc = node.state.get("config", "feature-x")          # local, no I/O
    rev = await node.state.put("config", "feature-x", {"on": True},
                               expect_revision=doc.revision if doc else 0)
    await node.state.wait_for(rev)                       # read-your-writes

Documents live at ``state/{namespace}/{key}``. A :class:`Mirror` of ``state/``
keeps every node's copy current (one range, then a watch; a full reload when
the store's history was compacted); each change is parsed once, when it is
applied, so reads are plain dictionary lookups. Changes are applied in
revision order and the copy never goes back (G4). Writes go to the store from
any node; their checks run before anything is sent. While the store is
unreachable reads keep answering from the copy, marked :attr:`stale` with its
age, and writes fail at once with :class:`~shoal.StoreUnavailable` (G5).
Consistency rules and the backup tool: ``docs/state.md``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import (
    Conflict,
    DocumentTooLarge,
    InvalidDocument,
    NotRunning,
    StateError,
    StoreUnavailable,
)
from shoal.runtime._state_model import (
    DEFAULT_MAX_DOC_BYTES,
    DEFAULT_MAX_TXN_BYTES,
    DEFAULT_MAX_TXN_OPS,
    KEY_RULE,
    NAMESPACE_RULE,
    PREFIX,
    Change,
    CheckDoc,
    DeleteDoc,
    Doc,
    PutDoc,
    StateOp,
    TooDeep,
    decode_value,
    split_key,
)
from shoal.runtime._state_txn import events_made, prepare, refused
from shoal.runtime._state_watch import QUEUE_LIMIT, StateMirror
from shoal.runtime.fanout import Fanout, Subscription
from shoal.store.protocol import Compare, Event, EventType, KeyValue, Store

if TYPE_CHECKING:
    from shoal.runtime.node import Node

__all__ = [
    "KEY_RULE",
    "NAMESPACE_RULE",
    "Change",
    "CheckDoc",
    "Conflict",
    "DeleteDoc",
    "Doc",
    "DocumentTooLarge",
    "InvalidDocument",
    "PutDoc",
    "ReplicatedState",
    "StateError",
    "StateOp",
]

log = logging.getLogger("shoal.state")
_EMPTY: dict[str, Doc] = {}

# Link health beyond the watch: None = fine, else the monotonic time since which
# the store has not been confirmed reachable (for a node: its last acked keep-alive).
LinkCheck = Callable[[], float | None]


class ReplicatedState:
    """Every document under ``state/``, held in memory and kept current.

    On a node it is ``node.state`` (started and closed with the node). On its
    own: ``state = ReplicatedState(store); state.start(); await state.wait_ready()``
    and ``await state.aclose()`` — it then only knows about store loss what its
    watch tells it (a node also uses its keep-alives).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock | None = None,
        *,
        max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        max_txn_bytes: int = DEFAULT_MAX_TXN_BYTES,
        link: LinkCheck | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or SYSTEM_CLOCK
        self.max_doc_bytes = max_doc_bytes
        self.max_txn_ops = max_txn_ops
        self.max_txn_bytes = max_txn_bytes
        self._link = link
        self._docs: dict[str, dict[str, Doc]] = {}
        self.revision = 0  # newest revision applied (G4: never goes back)
        self._count = 0  # events applied at ``revision`` (maxsize after a reload)
        self._expect: dict[int, int] = {}  # own writes: revision -> events it made
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._subs: Fanout[Change] = Fanout(maxsize=QUEUE_LIMIT, collapse=_reload)
        self.invalid: set[str] = set()  # keys under state/ that are not documents
        self._closed = False
        self._mirror = StateMirror(store, self.clock, self._changed)

    @classmethod
    def for_node(cls, node: Node, **kwargs: Any) -> ReplicatedState:
        """The state of ``node``: stale also while its keep-alives fail."""

        return cls(node.store, node.clock, link=node.link_down_since, **kwargs)

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        if self._closed:
            raise NotRunning("replicated state is closed")
        self._mirror.start()

    async def wait_ready(self) -> None:
        """Wait for the first full load and for the watch to be open."""
        await self._mirror.wait_ready()
        await self._mirror.up.wait()

    @property
    def ready(self) -> bool:
        return self._mirror.ready.is_set()

    async def aclose(self) -> None:
        """Stop following the store. Reads keep answering (stale). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._mirror.aclose()
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(NotRunning("replicated state closed"))
        self._waiters.clear()
        self._subs.close()

    # -- reads (local, no I/O) --------------------------------------------------------
    def get(self, namespace: str, key: str) -> Doc | None:
        """The document as this node last saw it, or None."""
        return self._docs.get(namespace, _EMPTY).get(key)

    def items(self, namespace: str) -> dict[str, Doc]:
        """Every document of ``namespace`` (a copy: key -> Doc)."""
        return dict(self._docs.get(namespace, _EMPTY))

    def namespaces(self) -> list[str]:
        """Namespaces holding at least one document, sorted."""
        return sorted(self._docs)

    @property
    def stale(self) -> bool:
        """True while the copy may be behind the store: not loaded yet, the watch
        is down, or (on a node) keep-alives are failing. Writes are refused then."""
        return self._stale_since() is not None

    @property
    def stale_for(self) -> float:
        """Seconds since the store was last known reachable (0.0 when not stale)."""
        since = self._stale_since()
        return 0.0 if since is None else max(0.0, self.clock.monotonic() - since)

    def _stale_since(self) -> float | None:
        since = self._mirror.down_since
        if self._closed and since is None:
            since = self.clock.monotonic()
        if self._link is not None:
            other = self._link()
            if other is not None:
                since = other if since is None else min(since, other)
        return since

    # -- read-your-writes ------------------------------------------------------------
    def _applied(self, revision: int) -> bool:
        if self.revision != revision:
            return self.revision > revision
        return self._count >= self._expect.get(revision, 1)

    async def wait_for(self, revision: int) -> None:
        """Return once this node's copy has applied ``revision`` (one returned by
        a write, or a Doc's revision). Wrap in ``asyncio.timeout`` to bound it."""
        if self._applied(revision):
            return
        if self._closed:
            raise NotRunning("replicated state closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._seq), fut))
        await fut

    def _wake(self) -> None:
        if self._expect:
            for rev in [r for r in self._expect if r < self.revision]:
                del self._expect[rev]
        while self._waiters and self._applied(self._waiters[0][0]):
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():
                fut.set_result(None)

    # -- subscriptions ----------------------------------------------------------------
    def subscribe(self, namespace: str | None = None) -> AsyncIterator[Change]:
        """Changes applied from now on, in revision order (all namespaces when None).
        A subscriber more than 10,000 changes behind gets one ``reload`` instead
        (the collapse policy of :mod:`shoal.runtime.fanout`)."""
        return aiter(self._subs.subscribe(topic=namespace))

    def _publish(self, change: Change) -> None:
        self._subs.publish(change, topic=change.namespace)

    # -- applying what the store says ---------------------------------------------------
    def _changed(self, events: list[Event] | None) -> None:
        if events is None:
            self._reload(self._mirror.items, self._mirror.revision)
        else:
            for ev in events:
                self._apply(ev)
        self._wake()

    def _reload(self, items: dict[str, KeyValue], revision: int) -> None:
        """Replace every document with ``items`` (consumed: each raw record is
        dropped once parsed, so the peak stays near one copy)."""
        old = self._docs
        docs: dict[str, dict[str, Doc]] = {}
        invalid: set[str] = set()
        while items:
            name, kv = items.popitem()
            parts = split_key(name)
            if parts is None:
                invalid.add(name)
                continue
            ns, key = parts
            prev = old.get(ns, _EMPTY).get(key)
            if prev is not None and prev.revision == kv.mod_revision:
                doc: Doc | None = prev
            else:
                doc = self._decode(name, kv)
            if doc is None:
                invalid.add(name)
            else:
                docs.setdefault(ns, {})[key] = doc
        self._docs = docs  # one swap: readers see the old copy or the new one
        self.invalid = invalid
        if revision < self.revision:
            log.warning("state reload at revision %d < applied %d", revision, self.revision)
        self.revision = max(self.revision, revision)
        self._count = sys.maxsize
        log.info("state loaded: %d documents at revision %d", self.size, revision)
        for sub in self._subs.subscriptions():
            sub.push(Change("reload", sub.topic, None, None, self.revision))

    def _decode(self, name: str, kv: KeyValue) -> Doc | None:
        try:
            value = decode_value(kv.value)
        except (ValueError, TooDeep) as exc:
            log.warning("state: %s%s is not a JSON document (%s); ignored", PREFIX, name, exc)
            return None
        rev, created = kv.mod_revision, kv.create_revision
        # One int object when they are equal (a document written once): 32 bytes less.
        return Doc(value, rev, kv.version, rev if created == rev else created)

    def _apply(self, ev: Event) -> None:
        rev = ev.revision
        if rev < self.revision:
            return  # never go back (G4)
        if rev == self.revision:
            self._count += 1
        else:
            self.revision, self._count = rev, 1
        name = ev.kv.key[len(PREFIX) :]
        parts = split_key(name)
        if parts is None:
            self.invalid.add(name)
            return
        ns, key = parts
        doc = self._decode(name, ev.kv) if ev.type is EventType.PUT else None
        if doc is not None:
            inner = self._docs.get(ns)
            if inner is None:
                inner = self._docs[ns] = {}
            inner[key] = doc
            self.invalid.discard(name)
        else:
            inner = self._docs.get(ns)
            if inner is not None and inner.pop(key, None) is not None and not inner:
                del self._docs[ns]
            if ev.type is EventType.PUT:
                self.invalid.add(name)
            else:
                self.invalid.discard(name)
        if self._subs:
            if doc is not None:
                self._publish(Change("put", ns, key, doc.value, rev))
            else:
                self._publish(Change("delete", ns, key, None, rev))

    @property
    def size(self) -> int:
        """How many documents this node holds."""
        return sum(len(inner) for inner in self._docs.values())

    # -- writes -----------------------------------------------------------------------
    async def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        expect_revision: int | None = None,
        guard: Compare | None = None,
    ) -> int:
        """Write a document; returns the store revision of the write.

        ``expect_revision``: only if the current revision is this (0 = create
        only), else :class:`~shoal.Conflict`. ``guard``: a compare that must hold
        too, e.g. ``ctx.guard()`` of a duty — :class:`~shoal.DutyLost` if not."""
        return await self.transaction([PutDoc(namespace, key, value, expect_revision)], guard=guard)

    async def delete(
        self,
        namespace: str,
        key: str,
        *,
        expect_revision: int | None = None,
        guard: Compare | None = None,
    ) -> int:
        """Delete a document; the revision of the delete, 0 if it did not exist."""
        return await self.transaction([DeleteDoc(namespace, key, expect_revision)], guard=guard)

    async def transaction(self, ops: Iterable[StateOp], *, guard: Compare | None = None) -> int:
        """Apply every op atomically, or none (Conflict / DutyLost).

        Returns the revision of the write, or 0 when nothing changed (only checks,
        or deletes of absent documents)."""
        prepared = prepare(
            list(ops), guard, max_doc_bytes=self.max_doc_bytes, max_txn_ops=self.max_txn_ops,
            max_txn_bytes=self.max_txn_bytes,
        )
        if self._closed:
            raise NotRunning("replicated state closed; write refused")
        if self.stale:
            raise StoreUnavailable(
                f"state: the store is unreachable (local copy stale for {self.stale_for:.1f} s); "
                "write refused — retry when the store is back"
            )
        res = await self.store.txn(prepared.all_compares, prepared.writes, prepared.on_failure)
        if not res.succeeded:
            raise refused(prepared, res.results)
        made = events_made(res.results)
        if made == 0:
            return 0
        if res.revision > self.revision or (res.revision == self.revision and self._count < made):
            self._expect[res.revision] = made  # wait_for(revision) waits for all of them
        return res.revision


def _reload(newest: Change, sub: Subscription[Change]) -> Change:
    """What a subscriber too far behind gets instead of its backlog: one ``reload``."""
    return Change("reload", sub.topic, None, None, newest.revision)
