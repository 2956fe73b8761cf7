"""FaultyStore: wrap any store and cut, blackhole or slow it down from a test."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import InvalidArgument, StoreUnavailable
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
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LeaseAck:
    """A grant or keep-alive the store answered: ``sent`` when the node sent it,
    ``applied`` when it reached the store, ``answered`` when the node got the answer."""

    call: str
    lease: int
    sent: float
    applied: float
    answered: float


class FaultyStore:
    """A store seen through a link the test controls (per node).

    * ``cut()``: every call fails at once with StoreUnavailable (a refused
      connection); open watches end with StoreUnavailable;
    * ``blackhole()``: every call hangs until healed (a dropped link);
    * ``slow(seconds, calls=None)``: latency: each call (or each call named in
      ``calls``, e.g. ``{"keepalive"}``) waits ``seconds`` on the link before it
      reaches the store;
    * ``delay_acks(seconds)``: grants and keep-alives reach the store at once (the
      store refreshes the lease) but their answers come back ``seconds`` later;
    * ``drop_acks()``: as ``delay_acks`` with answers that never come: the call hangs
      until healed, then fails with StoreUnavailable (the answer was lost);
    * ``heal()``: back to normal (latency and acknowledgement faults included);
    * ``abort()``: cut for good, failing the calls hanging on the link (teardown).

    Delays are slept on ``clock`` (a FakeClock in tests). Every answered grant and
    keep-alive is recorded in :attr:`lease_acks` (send / store / answer times), so a test
    can check a node against "last acknowledged send + TTL - margin" (G1).
    """

    def __init__(self, inner: Store, clock: Clock | None = None) -> None:
        self.inner = inner
        self.clock = clock or SYSTEM_CLOCK
        self.features = inner.features
        self.mode = "ok"
        self.delay = 0.0  # latency before a call reaches the store (slow)
        self.delay_calls: frozenset[str] | None = None  # None: every call
        self.ack_delay = 0.0  # extra latency of grant / keep-alive answers
        self.acks_dropped = False
        self.lease_acks: list[LeaseAck] = []
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

    def slow(self, seconds: float, calls: Iterable[str] | None = None) -> None:
        if seconds < 0:
            raise InvalidArgument(f"delay: must be >= 0 s, got {seconds}")
        self.delay = seconds
        self.delay_calls = None if calls is None else frozenset(calls)

    def delay_acks(self, seconds: float) -> None:
        if seconds < 0:
            raise InvalidArgument(f"delay: must be >= 0 s, got {seconds}")
        self.ack_delay = seconds

    def drop_acks(self) -> None:
        self.acks_dropped = True
        self._healed.clear()

    def abort(self) -> None:
        """Cut the link for good and fail every call hanging on it (blackholed,
        answer dropped) with StoreUnavailable: for tearing a test down."""
        self.cut()
        self._healed.set()  # wake the hung calls; they see "cut" and raise

    async def _wait_healed(self) -> None:
        await self._healed.wait()
        if self.mode == "cut":
            raise StoreUnavailable("link cut by the test")

    def heal(self) -> None:
        self.mode = "ok"
        self.delay, self.delay_calls = 0.0, None
        self.ack_delay, self.acks_dropped = 0.0, False
        self._broken.clear()
        self._healed.set()

    async def _gate(self, call: str = "") -> None:
        if self.mode == "cut":
            raise StoreUnavailable("link cut by the test")
        if self.mode == "blackhole":
            await self._wait_healed()
        if self.delay > 0 and (self.delay_calls is None or call in self.delay_calls):
            await self.clock.sleep(self.delay)
            if self.mode != "ok":  # the link broke while the call was on its way
                await self._gate(call)

    async def _lease_call(self, call: str, lease: int, fn: Callable[[], Awaitable[_T]]) -> _T:
        sent = self.clock.monotonic()
        await self._gate(call)
        self.calls[call] += 1
        applied = self.clock.monotonic()
        result = await fn()
        if self.acks_dropped:
            await self._wait_healed()
            raise StoreUnavailable(f"{call} answer dropped by the test")
        if self.ack_delay > 0:
            await self.clock.sleep(self.ack_delay)
        if self.mode == "cut":
            raise StoreUnavailable("link cut by the test")
        if self.mode == "blackhole":
            await self._wait_healed()
        got = lease or getattr(result, "id", 0)
        self.lease_acks.append(LeaseAck(call, got, sent, applied, self.clock.monotonic()))
        return result

    async def get(self, key: str) -> KeyValue | None:
        await self._gate("get")
        self.calls["get"] += 1
        return await self.inner.get(key)

    async def range(self, prefix: str) -> RangeResult:
        await self._gate("range")
        self.calls["range"] += 1
        return await self.inner.range(prefix)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        await self._gate("put")
        self.calls["put"] += 1
        return await self.inner.put(key, value, lease=lease)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        await self._gate("delete")
        self.calls["delete"] += 1
        return await self.inner.delete(key, prefix=prefix)

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        await self._gate("txn")
        self.calls["txn"] += 1
        return await self.inner.txn(compares, on_success, on_failure)

    async def grant(self, ttl: int) -> Lease:
        return await self._lease_call("grant", 0, lambda: self.inner.grant(ttl))

    async def keepalive(self, lease: int) -> int:
        return await self._lease_call("keepalive", lease, lambda: self.inner.keepalive(lease))

    async def revoke(self, lease: int) -> None:
        await self._gate("revoke")
        self.calls["revoke"] += 1
        await self.inner.revoke(lease)

    async def lease_ttl(self, lease: int) -> int:
        await self._gate("lease_ttl")
        self.calls["lease_ttl"] += 1
        return await self.inner.lease_ttl(lease)

    async def revision(self) -> int:
        await self._gate("revision")
        self.calls["revision"] += 1
        return await self.inner.revision()

    async def compact(self, revision: int) -> None:
        await self._gate("compact")
        self.calls["compact"] += 1
        await self.inner.compact(revision)

    async def watch(
        self, prefix: str, start_revision: int | None = None
    ) -> AsyncGenerator[Event, None]:
        await self._gate("watch")
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
