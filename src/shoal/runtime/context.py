"""The context a duty function receives: its fencing token, guard and stop signal."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from shoal.aio._tasks import event_or_tick, next_unless_stopped
from shoal.clock import Clock
from shoal.errors import DutyLost, WrongState
from shoal.primitives.ownership import guard
from shoal.runtime._state_model import check_raw
from shoal.store.protocol import Compare, Put, Store, TxnOp, TxnResult


class StopSignal:
    """Set when the duty must stop. Usable from async code and from threads."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._thread_event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self._event.set()
        self._thread_event.set()

    def is_set(self) -> bool:
        return self._thread_event.is_set()

    def __bool__(self) -> bool:
        return self.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def wait_sync(self, timeout: float | None = None) -> bool:
        """Block a thread until stopped or ``timeout``; True if stopped."""
        return self._thread_event.wait(timeout)


class DutyContext:
    """What a running duty knows and may do.

    * ``token``: the fencing token (create revision of the ownership key);
    * ``guard()``: a compare to put in your own store transaction — it fails
      once a newer owner exists (G2);
    * ``put`` / ``txn``: fenced writes (raise :class:`~shoal.DutyLost` when the
      token is superseded);
    * ``stopping``: set when the duty must stop (handover, drain, lost lease);
    * ``sleep(s)``: sleeps, but wakes early and returns False when stopping;
    * ``partition``: for a partitioned duty (``partitions=N``) its number, else None.

    Sync duties (run in a thread) use ``put_sync``, ``sleep_sync`` and
    ``stopping.is_set()``.
    """

    def __init__(
        self,
        *,
        name: str,
        token: int,
        node: str,
        store: Store,
        clock: Clock,
        params: dict[str, Any],
        item: Any,
        loop: asyncio.AbstractEventLoop,
        partition: int | None = None,
        state: Any = None,
        settings: Any = None,
        doc: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        # the node's ReplicatedState (shoal.runtime.state): fenced writes with
        # ``await ctx.state.put(ns, key, value, guard=ctx.guard())``
        self.state = state
        self.settings = settings  # the node's NodeSettings (schedule overrides)
        self.doc = doc  # (namespace, key) of a for_each_doc duty's document
        self.token = token
        self.node = node
        self.store = store
        self.clock = clock
        self.params = params
        self.item = item
        self.partition = partition
        self.stopping = StopSignal()
        self.log = logging.getLogger(f"shoal.duty.{name}")
        self._loop = loop

    def guard(self) -> Compare:
        return guard(self.name, self.token)

    async def txn(
        self,
        compares: Sequence[Compare] = (),
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """A transaction that also requires this duty's token to be current.

        Raises DutyLost when the guard fails (another compare failing returns
        ``succeeded=False`` as usual)."""
        res = await self.store.txn([*compares, self.guard()], on_success, on_failure)
        if not res.succeeded:
            kv = await self.store.get(self.guard().key)
            if kv is None or kv.create_revision != self.token:
                raise DutyLost(
                    f"duty {self.name!r}: token {self.token} superseded; write refused"
                )
        return res

    async def put(self, key: str, value: bytes) -> int:
        """A fenced put. Returns the revision; raises DutyLost when superseded.
        A key under ``state/`` must get a valid document (JSON, at most 1 MiB and
        ``MAX_DEPTH`` levels deep), else InvalidDocument and nothing is written."""
        check_raw(key, value)
        res = await self.store.txn([self.guard()], [Put(key, value)])
        if not res.succeeded:
            raise DutyLost(f"duty {self.name!r}: token {self.token} superseded; write refused")
        return res.revision

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; return False early if the duty is stopping."""
        return not await event_or_tick(self.stopping, self.clock, seconds)

    async def changes(self) -> AsyncIterator[Any]:
        """For a ``for_each_doc`` duty: each new value of its document, as this
        node applies it (``ctx.item`` is updated too). Ends when the document
        is deleted or the duty is stopping."""
        if self.doc is None or self.state is None:
            raise WrongState(f"duty {self.name!r} does not follow a document (for_each_doc)")
        ns, key = self.doc
        subscription = self.state.subscribe(ns)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            while not self.stopping.is_set():
                try:
                    more, change = await next_unless_stopped(subscription, stop)
                except StopAsyncIteration:
                    return
                if not more or change is None:
                    return
                if change.kind == "reload" or change.key == key:
                    doc = self.state.get(ns, key)
                    if doc is None:
                        return
                    if doc.value != self.item:
                        self.item = doc.value
                        yield doc.value
        finally:
            stop.cancel()
            await subscription.aclose()

    # -- for sync duties running in a thread --------------------------------
    def put_sync(self, key: str, value: bytes, timeout: float = 30.0) -> int:
        return asyncio.run_coroutine_threadsafe(self.put(key, value), self._loop).result(timeout)

    def sleep_sync(self, seconds: float) -> bool:
        return not self.stopping.wait_sync(seconds)
