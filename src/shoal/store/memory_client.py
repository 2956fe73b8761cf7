"""MemoryClient: a separate client of one :class:`~shoal.store.memory.MemoryStore`.

Like a second connection to etcd: it reads and writes the same data, but it is
its own object with its own lifetime. Closing it ends the watches opened through
it and refuses its later calls with :class:`~shoal.NotRunning`; the store and its
other clients carry on. Leases are the store's, so closing a client does not
revoke them (etcd does the same). Get one with ``MemoryStore.client()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

from shoal.errors import NotRunning
from shoal.store.protocol import (
    Compare,
    Event,
    Features,
    KeyValue,
    Lease,
    RangeResult,
    TxnOp,
    TxnResult,
)

# Put on a watch queue to end that watch (shared with memory.py, which imports it
# from here: this module never imports memory.py at run time, so no cycle).
_CLOSED = object()

if TYPE_CHECKING:
    from shoal.store.memory import MemoryStore


class MemoryClient:
    """One client of a shared :class:`MemoryStore` (see the module docstring)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.features: Features = store.features
        self._closed = False
        self._watches: set[asyncio.Queue[object]] = set()

    def _check(self) -> None:
        if self._closed:
            raise NotRunning("store client is closed")

    async def get(self, key: str) -> KeyValue | None:
        self._check()
        return await self.store.get(key)

    async def range(self, prefix: str) -> RangeResult:
        self._check()
        return await self.store.range(prefix)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._check()
        return await self.store.put(key, value, lease=lease)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        self._check()
        return await self.store.delete(key, prefix=prefix)

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        self._check()
        return await self.store.txn(compares, on_success, on_failure)

    async def grant(self, ttl: int) -> Lease:
        self._check()
        return await self.store.grant(ttl)

    async def keepalive(self, lease: int) -> int:
        self._check()
        return await self.store.keepalive(lease)

    async def revoke(self, lease: int) -> None:
        self._check()
        await self.store.revoke(lease)

    async def lease_ttl(self, lease: int) -> int:
        self._check()
        return await self.store.lease_ttl(lease)

    async def revision(self) -> int:
        self._check()
        return await self.store.revision()

    async def compact(self, revision: int) -> None:
        self._check()
        await self.store.compact(revision)

    async def watch(
        self, prefix: str, start_revision: int | None = None
    ) -> AsyncGenerator[Event, None]:
        self._check()
        async for ev in self.store._watch(prefix, start_revision, self._watches):
            yield ev

    async def aclose(self) -> None:
        """End this client's watches; the store and other clients stay open."""
        if self._closed:
            return
        self._closed = True
        for queue in list(self._watches):
            queue.put_nowait(_CLOSED)
