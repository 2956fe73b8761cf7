"""Scale-out runtime: the partition-count guard and per-node worker pools.

**Partitions.** ``@app.duty("ingest", partitions=64)`` declares 64 ordinary
singleton duties ``ingest/0`` .. ``ingest/63``, placed and fenced like any
duty. What a partition number *means* (which slice of the input) depends on
the count, so a running cluster must never mix two counts: the first node
writes ``meta/partitions/{name}`` = count (create-if-absent, no lease: it
outlives every node) and :func:`check_partitions` refuses to start a node
declaring another count. To change it without a stop, roll out a new family
beside it and cut over (:mod:`shoal.runtime.cutover`); or stop every node,
remove the key (:func:`forget_partition_count`, ``shoal partitions forget``),
start the nodes with the new count (docs/scaling.md).

**Worker pools.** ``@app.workers("ingest-worker", per_node=4)`` runs 4
concurrent copies on every eligible node (roles match, not disabled; the
count may be overridden per node with ``duties: {ingest-worker: {per_node: 2}}``).
Not singletons: no ownership key, no token. Each copy runs in a
:class:`~shoal.runtime.runner.DutyRunner` (async or sync function, restarted
with backoff when it raises, crashes counted) with a :class:`WorkerContext`.
:class:`WorkerPools` starts the copies when the node joins, stops them on
drain (gracefully) and when the node is LOST or closed (at once), and keeps
``workers: {pool: running}`` in the node's member record up to date, at most
one rewrite per ``publish_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn

from shoal.aio._tasks import cancel_and_wait, event_or_tick
from shoal.clock import Clock
from shoal.core.placement import DutySpec, NodeInfo, is_disabled
from shoal.errors import ConfigError, InvalidArgumentType, StoreError
from shoal.primitives.membership import NODES, Member
from shoal.runtime.app import PoolDecl
from shoal.runtime.context import DutyContext
from shoal.runtime.runner import DutyRunner
from shoal.runtime.settings import NodeSettings
from shoal.store.protocol import Compare, Delete, Get, KeyValue, Put, Store, TxnOp

__all__ = [
    "META_PARTITIONS",
    "WorkerContext",
    "WorkerPools",
    "check_partitions",
    "forget_partition_count",
    "pool_sizes",
]

log = logging.getLogger("shoal.workers")
META_PARTITIONS = "meta/partitions/"
PUBLISH_INTERVAL = 1.0  # seconds between two rewrites of the member record


# -- partitions ---------------------------------------------------------------------
def _count(kv: KeyValue) -> int | str:
    try:
        return int(kv.value.decode())
    except (UnicodeDecodeError, ValueError):
        return repr(kv.value)


async def check_partitions(store: Store, partitioned: Mapping[str, int]) -> None:
    """Record each partitioned duty's count (create-if-absent), or raise
    :class:`~shoal.ConfigError` when the cluster already runs another count."""
    for name, count in sorted(partitioned.items()):
        key = META_PARTITIONS + name
        res = await store.txn([Compare.absent(key)], [Put(key, str(count).encode())], [Get(key)])
        if res.succeeded:
            log.info("partitioned duty %s: recorded %d partitions", name, count)
            continue
        found = res.results[0] if res.results else []
        running = _count(found[0]) if isinstance(found, list) and found else "?"
        if running != count:
            raise ConfigError(
                f"duty {name!r} is declared with partitions={count}, but this cluster runs it "
                f"with {running} partitions (store key {key}). The partition count of a "
                "running cluster cannot change: declare a new family beside it and cut "
                "over (no stop), or stop every node, delete the key (shoal partitions "
                f"forget {name}) and start every node with the new count — see "
                "docs/scaling.md, 'Changing the partition count'."
            )


async def forget_partition_count(store: Store, name: str, *, force: bool = False) -> bool:
    """Delete ``meta/partitions/{name}`` so the next node to start records its
    own count. Refuses (ConfigError) while a live node's app declares ``name``
    (a record from an older Shoal, which does not say, counts as declaring it)
    unless ``force``: after a full stop, or once a rolling upgrade dropped the
    family (docs/scaling.md). Returns True if a key was deleted."""
    if not force:
        holders = []
        for kv in (await store.range(NODES)).kvs:
            member = Member.decode(kv)
            if member.partitions is None or name in dict(member.partitions):
                holders.append(member.name)
        if holders:
            raise ConfigError(
                f"cannot forget the partition count of {name!r} while live nodes declare "
                f"it ({', '.join(sorted(holders))}): stop them, or roll them to a release "
                "that no longer declares it, first"
            )
    res = await store.txn([], [Delete(META_PARTITIONS + name)])
    return bool(res.results and res.results[0])


# -- worker pools -------------------------------------------------------------------
class WorkerContext(DutyContext):
    """The context of one copy of a worker pool: ``worker_index`` (0 ..
    per_node-1), ``stopping``, ``sleep``/``sleep_sync``, ``params``, ``store``,
    ``log``. No fencing token (``token`` is 0): ``put``/``txn``/``guard``
    raise TypeError — write through ``ctx.store``, or use a partitioned duty
    when writes must be fenced."""

    def __init__(self, *, worker_index: int, **kwargs: Any) -> None:
        super().__init__(token=0, item=worker_index, **kwargs)
        self.worker_index = worker_index

    def _no_token(self) -> NoReturn:
        raise InvalidArgumentType(
            f"worker pool {self.name!r}: copies have no fencing token; write with ctx.store "
            "(or use a partitioned duty for fenced writes)"
        )

    def guard(self) -> Compare:
        self._no_token()

    async def txn(
        self,
        compares: Sequence[Compare] = (),
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> NoReturn:
        self._no_token()

    async def put(self, key: str, value: bytes) -> NoReturn:
        self._no_token()


def pool_sizes(pools: Sequence[PoolDecl], settings: NodeSettings) -> dict[str, int]:
    """Copies of each pool this node runs: pools whose roles match and that are
    not disabled here, at ``settings.per_node`` or else the declared count."""
    me = NodeInfo(settings.name, frozenset(settings.roles), disabled=frozenset(settings.disabled))
    out: dict[str, int] = {}
    for pool in pools:
        if pool.roles and pool.roles.isdisjoint(me.roles):
            continue
        if is_disabled(DutySpec(pool.name, pool.roles, family=pool.name), me):
            continue
        out[pool.name] = settings.per_node.get(pool.name, pool.per_node)
    return out


class WorkerPools:
    """Every worker pool of one node (see the module docstring).

    ``publish``: rewrites the node's member record (with :meth:`counts`);
    returns False when it could not (no live session). ``on_crash``: also
    told of every crash, as for duties."""

    def __init__(
        self,
        pools: Sequence[PoolDecl],
        settings: NodeSettings,
        *,
        store: Store,
        clock: Clock,
        publish: Callable[[], Awaitable[bool]],
        on_crash: Callable[[str, BaseException], None] | None = None,
        publish_interval: float = PUBLISH_INTERVAL,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.sizes = pool_sizes(pools, settings)
        self._fns = {p.name: p.fn for p in pools if p.name in self.sizes}
        self._need_store = {p.name for p in pools if p.needs_store}
        self._publish = publish
        self._on_crash = on_crash
        self.publish_interval = publish_interval
        self.copies: dict[str, list[DutyRunner]] = {}
        self.restarts = dict.fromkeys(self.sizes, 0)
        self._published: dict[str, int] | None = None
        self._dirty = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None

    # -- views -------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Pool -> copies running now, for every pool eligible on this node."""
        return {
            name: sum(r.status == "running" for r in self.copies.get(name, ()))
            for name in self.sizes
        }

    def status(self) -> dict[str, dict[str, int]]:
        """Pool -> {"running": n, "restarts": k} (k counts crashes since start)."""
        return {n: {"running": c, "restarts": self.restarts[n]} for n, c in self.counts().items()}

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start every pool's copies (after the node joined; idempotent)."""
        loop = asyncio.get_running_loop()
        s = self.settings
        for name, size in self.sizes.items():
            if self.copies.get(name):
                continue
            runners = []
            for index in range(size):
                ctx = WorkerContext(
                    worker_index=index, name=name, node=s.name, store=self.store,
                    clock=self.clock, params=s.params, loop=loop,
                )
                runner = DutyRunner(
                    self._fns[name], ctx, self.clock, backoff=s.crash_backoff,
                    backoff_max=s.crash_backoff_max, on_crash=self._crashed,
                )
                runner.start()
                runners.append(runner)
            self.copies[name] = runners
            log.info("node %s: started %d copies of worker pool %s", s.name, size, name)
        self._published = None  # the record was just (re)written: publish afresh
        if self.sizes and (self._publisher is None or self._publisher.done()):
            self._publisher = asyncio.create_task(
                self._publish_loop(), name=f"shoal-workers-{s.name}"
            )
        self._dirty.set()

    def stop_now(self, reason: str, *, store_lost: bool = False) -> None:
        """Cancel every copy at once (node closing). ``store_lost``: the lease
        was lost — only pools declared ``needs_store=True`` stop; the others
        keep consuming through the outage (they need no coordination)."""
        if store_lost:
            copies = {n: r for n, r in self.copies.items() if n in self._need_store}
            self.copies = {n: r for n, r in self.copies.items() if n not in self._need_store}
        else:
            copies, self.copies = self.copies, {}
        for runners in copies.values():
            for runner in runners:
                runner.cancel_now(reason)
        if copies:
            self._dirty.set()

    async def stop(self, reason: str, timeout: float) -> None:  # noqa: ASYNC109
        """Ask every copy to stop; wait up to ``timeout`` (in parallel), then cancel."""
        copies, self.copies = self.copies, {}
        runners = [r for rs in copies.values() for r in rs]
        async with asyncio.TaskGroup() as group:  # owns one stop per copy
            for runner in runners:
                group.create_task(runner.stop(reason, timeout))
        if copies:
            self._dirty.set()

    async def aclose(self) -> None:
        self.stop_now("node closed")
        if self._publisher is not None:
            await cancel_and_wait([self._publisher])
            self._publisher = None

    # -- internals ---------------------------------------------------------------
    def _crashed(self, name: str, exc: BaseException) -> None:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self._dirty.set()
        if self._on_crash is not None:
            self._on_crash(name, exc)

    async def _publish_loop(self) -> None:
        """Rewrite the member record when the counts changed: woken by starts,
        stops and crashes, and every ``publish_interval`` (a restarted copy is
        noticed by polling); at most one write per interval."""
        while True:
            await event_or_tick(self._dirty, self.clock, self.publish_interval)
            self._dirty.clear()
            counts = self.counts()
            if counts == self._published:
                continue
            with contextlib.suppress(StoreError):
                if await self._publish():
                    self._published = counts
            await self.clock.sleep(self.publish_interval)
