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
        self.calls: Counter[str] = Counter()  # store operations made through this link

    def cut(self) -> None:
        self.mode = "cut"
        self._healed.clear()
        self._broken.set()

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self._healed.clear()
        self._broken.set()

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
        it = self.inner.watch(prefix, start_revision)
        nxt: asyncio.Future[Event] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(it.__anext__())
                broken = asyncio.ensure_future(self._broken.wait())
                try:
                    await asyncio.wait({nxt, broken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    broken.cancel()
                if not nxt.done():
                    raise StoreUnavailable("link cut by the test")
                try:
                    ev = nxt.result()
                except StopAsyncIteration:
                    return
                yield ev
        finally:
            if nxt is not None and not nxt.done():
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
            await it.aclose()

    async def aclose(self) -> None:
        """Closes only the link; the inner store belongs to the test."""
