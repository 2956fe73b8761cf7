"""Changing a partition count without a full stop: the cut-over from one
partitioned family to its successor (``ingest``, 64 partitions, to
``ingest-v2``, 128), so that no item is handled under both counts and none is
lost.

Three releases, each rolled one node at a time (docs/scaling.md):

1. the app declares ``ingest`` (64);
2. it declares ``ingest`` *and* ``ingest-v2`` and one :class:`Cutover`. Placement
   gives a family's partitions only to nodes whose app declares it, so
   ``ingest-v2`` runs on the upgraded nodes only. Once every live node declares
   ``ingest-v2``, :meth:`Cutover.request` writes the request (one replicated
   document). Each old partition then *seals* itself: a fenced, write-once
   record of the last position it handled (:meth:`Cutover.seal`) — its own
   commits carry :meth:`Cutover.guard`, so none lands after the seal. Each new
   partition waits until every old partition is sealed
   (:meth:`Cutover.boundaries`) and then handles only the items past the seal
   of the old partition they belonged to;
3. the app declares ``ingest-v2`` only (still with the :class:`Cutover`, whose
   boundaries it reads); afterwards ``shoal partitions forget ingest`` removes
   the old count.

Once the cut-over is requested, a node whose app declares the old family but
not the new one refuses to start (:func:`check_cutovers`): rolling back to
release 1 needs a full stop. The documents live in replicated state, namespace
``shoal.cutover``: ``{old}`` = ``{"to": new, "partitions": N}`` and
``{old}/{i}`` = ``{"last": position}``. Positions are the app's own JSON
values (an offset, a sequence number); the library never compares them. They
must arrive in order within an old partition (an item never shows up below a
position that partition already committed): the new family skips what is at
or below the seal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from shoal.aio._tasks import next_unless_stopped
from shoal.errors import ConfigError, Conflict, InvalidArgument, WrongState
from shoal.primitives.membership import NODES, Member
from shoal.runtime._state_model import encode_value, store_key
from shoal.runtime.context import DutyContext
from shoal.store.protocol import Compare, Put, Store

__all__ = ["NAMESPACE", "Cutover", "Seal", "check_cutovers"]

NAMESPACE = "shoal.cutover"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Seal:
    """An old partition's seal: ``last`` is the last position it handled (its
    successor handles what comes after)."""

    last: Any


class Cutover:
    """The cut-over from partitioned family ``old`` (``old_partitions`` of them)
    to ``new``. Declare one in the release that runs both, and keep it in the
    release that runs ``new`` only (its boundaries stay needed)."""

    def __init__(self, old: str, old_partitions: int, new: str) -> None:
        if old == new:
            raise InvalidArgument(
                f"cut-over: the new family must differ from the old one ({old!r})")
        if not isinstance(old_partitions, int) or old_partitions < 1:
            raise InvalidArgument(f"cut-over {old!r}: old_partitions must be an int >= 1, "
                                  f"got {old_partitions!r}")
        self.old, self.old_partitions, self.new = old, old_partitions, new

    # -- the request (once every node runs both families) -------------------------
    async def lagging(self, store: Store) -> list[str]:
        """Live nodes whose app does not declare ``new`` (sorted names). A record
        that does not say (older Shoal) counts as lagging."""
        return sorted(m.name for m in await _members(store)
                      if m.partitions is None or self.new not in dict(m.partitions))

    async def request(self, store: Store) -> bool:
        """Request the cut-over: True if written now, False if already requested.
        Raises ConfigError (one line naming them) while a live node does not
        declare ``new`` — roll every node to the release with both families first."""
        lagging = await self.lagging(store)
        if lagging:
            raise ConfigError(
                f"cut-over {self.old!r} -> {self.new!r} refused: live nodes do not declare "
                f"{self.new!r} yet ({', '.join(lagging)}); roll them to the release that "
                "declares both families first"
            )
        key = store_key(NAMESPACE, self.old)
        value = encode_value({"to": self.new, "partitions": self.old_partitions}, key, 1 << 20)
        res = await store.txn([Compare.absent(key)], [Put(key, value)])
        return res.succeeded

    def requested(self, ctx: DutyContext) -> bool:
        """True once the cut-over is requested (a local read of replicated state)."""
        return ctx.state.get(NAMESPACE, self.old) is not None

    # -- the old family -----------------------------------------------------------
    def _seal_key(self, partition: int) -> str:
        return f"{self.old}/{partition}"

    def sealed(self, ctx: DutyContext) -> Seal | None:
        """This old partition's seal, or None (a local read)."""
        doc = ctx.state.get(NAMESPACE, self._seal_key(_partition(ctx)))
        return None if doc is None else Seal(doc.value["last"])

    def guard(self, ctx: DutyContext) -> Compare:
        """A compare for the old partition's own commits: it fails once the
        partition is sealed, so nothing is committed past the seal."""
        return Compare.absent(store_key(NAMESPACE, self._seal_key(_partition(ctx))))

    async def seal(self, ctx: DutyContext, last: Any) -> Seal:
        """Seal this old partition at ``last``, the last position it committed
        (fenced by the duty's token, written once). Returns the seal in force:
        an earlier one if the partition was already sealed."""
        try:
            await ctx.state.put(NAMESPACE, self._seal_key(_partition(ctx)), {"last": last},
                                expect_revision=0, guard=ctx.guard())
        except Conflict:
            key = store_key(NAMESPACE, self._seal_key(_partition(ctx)))
            kv = await ctx.store.get(key)
            if kv is None:
                raise WrongState(f"cut-over: the seal {key} was deleted while in use") from None
            return Seal(json.loads(kv.value)["last"])
        return Seal(last)

    # -- the new family -----------------------------------------------------------
    async def boundaries(self, ctx: DutyContext) -> dict[int, Any] | None:
        """Wait until every old partition is sealed; return ``{old partition:
        last position}``. None if the duty is stopping first. A new partition
        handles an item only if it is past the boundary of its old partition."""
        keys = [self._seal_key(i) for i in range(self.old_partitions)]

        def ready() -> dict[int, Any] | None:
            docs = ctx.state.items(NAMESPACE)
            if not all(k in docs for k in keys):
                return None
            return {i: docs[k].value["last"] for i, k in enumerate(keys)}

        return await _wait_for(ctx, ready)


async def check_cutovers(store: Store, partitioned: Mapping[str, int]) -> None:
    """At start: refuse (ConfigError) a node whose app declares a family that is
    being cut over but not its successor — it would not honour the seals."""
    for name in sorted(partitioned):
        kv = await store.get(store_key(NAMESPACE, name))
        if kv is None:
            continue
        try:
            new = str(json.loads(kv.value)["to"])
        except (ValueError, KeyError, TypeError):
            continue
        if new not in partitioned:
            raise ConfigError(
                f"duty {name!r} is being cut over to {new!r} (replicated state "
                f"{NAMESPACE}/{name}), but this node's app does not declare {new!r}: start "
                "it with the release that declares both, or the new family only — see "
                "docs/scaling.md, 'Changing the partition count'"
            )


async def _members(store: Store) -> list[Member]:
    return [Member.decode(kv) for kv in (await store.range(NODES)).kvs]


def _partition(ctx: DutyContext) -> int:
    if ctx.partition is None:
        raise InvalidArgument(f"cut-over: duty {ctx.name!r} is not a partitioned duty")
    return ctx.partition


async def _wait_for(ctx: DutyContext, ready: Callable[[], T | None]) -> T | None:
    """``ready()`` once it is not None, re-checked on each change of the
    namespace; None if the duty stops first."""
    subscription = ctx.state.subscribe(NAMESPACE)
    stop = asyncio.ensure_future(ctx.stopping.wait())
    try:
        while True:
            found = ready()
            if found is not None or ctx.stopping.is_set():
                return found
            try:
                more, _ = await next_unless_stopped(subscription, stop)
            except StopAsyncIteration:  # the state closed: one last look
                return ready()
            if not more:
                return None
    finally:
        stop.cancel()
        await subscription.aclose()
