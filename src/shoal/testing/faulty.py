"""FaultyStore: wrap any store and cut, blackhole or slow it down from a test."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, Sequence

from shoal._errors import StoreUnavailable
from shoal.store.protocol import (
    Compare,
    Event,
    KeyValue,
    Lease,
    RangeResult,
    Store,
    TxnOp,
    TxnResult,
)

_END = object()
_BROKEN = object()


class FaultyStore:
    """A store seen through a link the test controls (per node).

    * ``cut()``: every call fails at once with StoreUnavailable (a refused
      connection); open watches end with StoreUnavailable;
    * ``blackhole()``: every call hangs until healed (a dropped link);
    * ``heal()``: back to normal.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.features = inner.features
        self.mode = "ok"
        self._healed = asyncio.Event()
        self._healed.set()
        self._broken = asyncio.Event()
        self._watchers: set[asyncio.Queue[object]] = set()
        self.calls: Counter[str] = Counter()  # store operations made through this link

    def cut(self) -> None:
        self.mode = "cut"
        self._break()

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self._break()

    def _break(self) -> None:
        self._healed.clear()
        self._broken.set()
        for queue in self._watchers:
            queue.put_nowait(_BROKEN)

    def heal(self) -> None:
        self.mode = "ok"
        self._broken.clear()
        self._healed.set()

    async def _gate(self) -> None:
        if self.mode == "cut":
            raise StoreUnavailable("link cut by the test")
        if self.mode == "blackhole":
            await self._healed.wait()

    async def get(self, key: str) -> KeyValue | None:
        await self._gate()
        self.calls["get"] += 1
        return await self.inner.get(key)

    async def range(self, prefix: str) -> RangeResult:
        await self._gate()
        self.calls["range"] += 1
        return await self.inner.range(prefix)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        await self._gate()
        self.calls["put"] += 1
        return await self.inner.put(key, value, lease=lease)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        await self._gate()
        self.calls["delete"] += 1
        return await self.inner.delete(key, prefix=prefix)

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        await self._gate()
        self.calls["txn"] += 1
        return await self.inner.txn(compares, on_success, on_failure)

    async def grant(self, ttl: int) -> Lease:
        await self._gate()
        self.calls["grant"] += 1
        return await self.inner.grant(ttl)

    async def keepalive(self, lease: int) -> int:
        await self._gate()
        self.calls["keepalive"] += 1
        return await self.inner.keepalive(lease)

    async def revoke(self, lease: int) -> None:
        await self._gate()
        self.calls["revoke"] += 1
        await self.inner.revoke(lease)

    async def lease_ttl(self, lease: int) -> int:
        await self._gate()
        self.calls["lease_ttl"] += 1
        return await self.inner.lease_ttl(lease)

    async def revision(self) -> int:
        await self._gate()
        self.calls["revision"] += 1
        return await self.inner.revision()

    async def compact(self, revision: int) -> None:
        await self._gate()
        self.calls["compact"] += 1
        await self.inner.compact(revision)

    async def watch(
        self, prefix: str, start_revision: int | None = None
    ) -> AsyncGenerator[Event, None]:
        await self._gate()
        self.calls["watch"] += 1
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for ev in self.inner.watch(prefix, start_revision):
                    queue.put_nowait(ev)
                queue.put_nowait(_END)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                queue.put_nowait(exc)

        task = asyncio.create_task(pump())
        self._watchers.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if item is _BROKEN:
                    raise StoreUnavailable("link cut by the test")
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, Event)
                yield item
        finally:
            self._watchers.discard(queue)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self) -> None:
        """Closes only the link; the inner store belongs to the test."""
