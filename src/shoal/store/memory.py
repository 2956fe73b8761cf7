"""In-process store with etcd semantics, driven by an injectable clock.

For unit tests (with ``shoal.testing.FakeClock`` leases expire when the test
advances time) and for a single process that needs no persistence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import Compacted, InvalidArgument, LeaseNotFound, NotRunning
from shoal.store.memory_client import _CLOSED, MemoryClient
from shoal.store.protocol import (
    Compare,
    Delete,
    Event,
    EventType,
    Features,
    Get,
    KeyValue,
    Lease,
    OpResult,
    Put,
    RangeResult,
    Store,
    TxnOp,
    TxnResult,
    check_compare,
    check_txn_ops,
)
from shoal.store.registry import Backend


@dataclass
class _Lease:
    id: int
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class MemoryStore:
    """The reference in-process backend. Every call completes without blocking.

    ``history_limit`` revisions of change history are kept for watches;
    older ones are compacted automatically.
    """

    features = Features("memory", multi_process=False, multi_machine=False, linearizable=True)

    def __init__(self, clock: Clock | None = None, *, history_limit: int = 100_000) -> None:
        self._clock = clock or SYSTEM_CLOCK
        self._data: dict[str, KeyValue] = {}
        self._rev = 1
        self._compact_rev = 0
        self._history: list[Event] = []
        self._history_limit = history_limit
        self._leases: dict[int, _Lease] = {}
        self._subs: set[tuple[str, asyncio.Queue[object]]] = set()
        self._ids = itertools.count(random.randrange(1 << 40, 1 << 48))
        self._closed = False
        self._ticker: asyncio.Task[None] | None = None
        self._unhook = None
        hook = getattr(self._clock, "on_advance", None)
        if hook is not None:
            self._unhook = hook(lambda _now: self._expire())
        self.unavailable = False  # tests may flip this to simulate an outage

    # -- helpers ------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise NotRunning("store is closed")
        if self.unavailable:
            from shoal.errors import StoreUnavailable

            raise StoreUnavailable("memory store marked unavailable (simulated outage)")
        self._expire()

    def _expire(self) -> None:
        now = self._clock.monotonic()
        for lease in [ls for ls in self._leases.values() if ls.deadline <= now]:
            self._drop_lease(lease)

    def _drop_lease(self, lease: _Lease) -> None:
        self._leases.pop(lease.id, None)
        events = [self._del(key) for key in sorted(lease.keys) if key in self._data]
        if events:
            self._commit([e for e in events if e is not None])

    def _del(self, key: str) -> Event | None:
        old = self._data.pop(key, None)
        if old is None:
            return None
        if old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        return Event(EventType.DELETE, KeyValue(key, b"", 0, self._rev + 1, 0, 0))

    def _put(self, key: str, value: bytes, lease: int) -> Event:
        old = self._data.get(key)
        rev = self._rev + 1
        if old is not None and old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        kv = KeyValue(
            key,
            bytes(value),
            old.create_revision if old else rev,
            rev,
            old.version + 1 if old else 1,
            lease,
        )
        self._data[key] = kv
        if lease:
            self._leases[lease].keys.add(key)
        return Event(EventType.PUT, kv)

    def _commit(self, events: list[Event]) -> None:
        self._rev += 1
        self._history.extend(events)
        if len(self._history) > self._history_limit:
            drop = len(self._history) - self._history_limit
            self._compact_rev = max(self._compact_rev, self._history[drop].revision)
            self._history = [e for e in self._history if e.revision >= self._compact_rev]
        for prefix, queue in self._subs:
            for ev in events:
                if ev.kv.key.startswith(prefix):
                    queue.put_nowait(ev)

    def _select(self, key: str, prefix: bool) -> list[KeyValue]:
        if not prefix:
            kv = self._data.get(key)
            return [kv] if kv else []
        return sorted((v for k, v in self._data.items() if k.startswith(key)), key=lambda v: v.key)

    def snapshot(self, prefix: str = "") -> dict[str, KeyValue]:
        """Every live key under ``prefix`` (key -> record), read at once without
        awaiting: for test harnesses and assertions. Unlike :meth:`range` it
        ignores a simulated outage (``unavailable``) and does not need a loop."""
        if not self._closed:
            self._expire()
        return {k: kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)}

    # -- Store API ----------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        self._check()
        return self._data.get(key)

    async def range(self, prefix: str) -> RangeResult:
        self._check()
        return RangeResult(tuple(self._select(prefix, True)), self._rev)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return (await self.txn((), (Put(key, value, lease),))).revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        result = await self.txn((), (Delete(key, prefix),))
        count = result.results[0]
        assert isinstance(count, int)
        return count

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        self._check()
        check_txn_ops(on_success)
        check_txn_ops(on_failure)
        ok = all(check_compare(c, self._data.get(c.key)) for c in compares)
        ops = on_success if ok else on_failure
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseNotFound(op.lease)
        events: list[Event] = []
        results: list[OpResult] = []
        for op in ops:
            if isinstance(op, Put):
                events.append(self._put(op.key, op.value, op.lease))
                results.append(None)
            elif isinstance(op, Delete):
                gone = [self._del(kv.key) for kv in self._select(op.key, op.prefix)]
                events.extend(e for e in gone if e is not None)
                results.append(len(gone))
            elif isinstance(op, Get):
                results.append(self._select(op.key, op.prefix))
        if events:
            self._commit(events)
        return TxnResult(ok, self._rev, tuple(results))

    async def grant(self, ttl: int) -> Lease:
        self._check()
        if ttl < 1:
            raise InvalidArgument(f"lease TTL must be >= 1 second, got {ttl}")
        lease = _Lease(next(self._ids), ttl, self._clock.monotonic() + ttl)
        self._leases[lease.id] = lease
        self._ensure_ticker()
        return Lease(lease.id, ttl)

    async def keepalive(self, lease: int) -> int:
        self._check()
        found = self._leases.get(lease)
        if found is None:
            raise LeaseNotFound(lease)
        found.deadline = self._clock.monotonic() + found.ttl
        return found.ttl

    async def revoke(self, lease: int) -> None:
        self._check()
        found = self._leases.get(lease)
        if found is None:
            raise LeaseNotFound(lease)
        self._drop_lease(found)

    async def lease_ttl(self, lease: int) -> int:
        self._check()
        found = self._leases.get(lease)
        if found is None:
            return -1
        return max(0, int(found.deadline - self._clock.monotonic() + 0.999))

    async def revision(self) -> int:
        self._check()
        return self._rev

    async def compact(self, revision: int) -> None:
        self._check()
        if revision > self._rev:
            raise InvalidArgument(f"cannot compact to future revision {revision} > {self._rev}")
        if revision <= self._compact_rev:
            raise Compacted(self._compact_rev)
        self._compact_rev = revision
        self._history = [e for e in self._history if e.revision >= revision]

    def client(self) -> MemoryClient:
        """A separate client of this store: its own object sharing this data,
        like a second connection to etcd. Closing it ends its own watches and
        refuses its later calls; the store and other clients carry on."""
        return MemoryClient(self)

    async def watch(
        self, prefix: str, start_revision: int | None = None
    ) -> AsyncGenerator[Event, None]:
        async for ev in self._watch(prefix, start_revision, None):
            yield ev

    async def _watch(
        self,
        prefix: str,
        start_revision: int | None,
        tracker: set[asyncio.Queue[object]] | None,
    ) -> AsyncGenerator[Event, None]:
        """``watch``; a client passes ``tracker`` to end its own watches on close."""
        self._check()
        if start_revision is not None and start_revision < self._compact_rev:
            raise Compacted(self._compact_rev)
        start = self._rev + 1 if start_revision is None else start_revision
        queue: asyncio.Queue[object] = asyncio.Queue()
        backlog = [e for e in self._history if e.revision >= start and e.kv.key.startswith(prefix)]
        sub = (prefix, queue)
        self._subs.add(sub)
        if tracker is not None:
            tracker.add(queue)
        try:
            for ev in backlog:
                yield ev
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                assert isinstance(item, Event)
                if item.revision >= start:
                    yield item
        finally:
            self._subs.discard(sub)
            if tracker is not None:
                tracker.discard(queue)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._unhook is not None:
            self._unhook()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for _, queue in self._subs:
            queue.put_nowait(_CLOSED)

    # -- lease expiry with a real clock ---------------------------------------
    def _ensure_ticker(self) -> None:
        if self._unhook is not None or self._ticker is not None:
            return
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while not self._closed:
            await self._clock.sleep(0.05)
            self._expire()


async def _open_backend(section: None, clock: Clock | None) -> Store:
    return MemoryStore(clock=clock)


BACKEND = Backend(
    name="memory",
    summary="in one process, with an injectable clock: unit tests and single-process use",
    features=MemoryStore.features,
    open=_open_backend,
    describe=lambda s: "memory",
    identity=lambda s: {"backend": "memory"},
)
