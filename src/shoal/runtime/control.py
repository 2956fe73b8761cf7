"""Control requests: ask another node to do something through the store.

Two requests exist: **drain** and **cordon**. Any node (the HTTP API's
``POST /nodes/{name}/drain``, a tool) writes ``control/drain/{name}``; the
named node sees it through :func:`watch_control` (started with the node) and
drains itself, exactly as ``node.drain()`` would. ``control/cordon/{name}``
(``shoal node cordon NAME``) makes the node keep serving and keep its duties
while it gets no new ones; deleting the key (``shoal node uncordon NAME``)
undoes it. The node publishes ``cordoned`` in its record, which placement reads.

The request key hangs on the TARGET node's lease, and the write compares that
the target's node record still hangs on that lease. So a request

* never reaches a later incarnation of the same name (a new lease),
* vanishes by itself when the target drains, dies or loses its lease,
* cannot be left behind for a node that is not live (the write fails).

Value: ``{"by": requester, "at": wall-clock seconds, "reason": text}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from shoal.core.node_state import Phase
from shoal.errors import LeaseNotFound, NodeNotLive, NotRunning, ShoalError
from shoal.primitives.membership import NODES
from shoal.primitives.mirror import Mirror
from shoal.store.protocol import Compare, Op, Put, Store

if TYPE_CHECKING:
    from shoal.runtime.node import Node

__all__ = [
    "CORDON", "DRAIN", "NodeNotLive", "drain_in_background", "drain_key", "request_cordon",
    "request_drain", "request_uncordon", "watch_control",
]

log = logging.getLogger("shoal.control")
DRAIN = "control/drain/"
CORDON = "control/cordon/"
_draining: set[asyncio.Task[None]] = set()  # strong references to running drains


def drain_key(name: str) -> str:
    return DRAIN + name


async def request_drain(
    store: Store, name: str, lease: int, *, by: str = "", reason: str = ""
) -> int:
    """Ask node ``name``, whose node record hangs on ``lease``, to drain.

    Returns the revision of the request. Raises :class:`NodeNotLive` when the
    node is gone (or rejoined with another lease), StoreError when the store
    cannot be reached."""
    return await _request(store, drain_key(name), name, lease, by=by, reason=reason)


async def request_cordon(
    store: Store, name: str, lease: int, *, by: str = "", reason: str = ""
) -> int:
    """Cordon node ``name`` (record on ``lease``): it keeps serving and keeps
    its duties, but gets no new ones. Raises like :func:`request_drain`."""
    return await _request(store, CORDON + name, name, lease, by=by, reason=reason)


async def request_uncordon(store: Store, name: str) -> bool:
    """Undo :func:`request_cordon`; False when the node was not cordoned."""
    return await store.delete(CORDON + name) > 0


async def _request(
    store: Store, key: str, name: str, lease: int, *, by: str, reason: str
) -> int:
    value = json.dumps({"by": by, "at": time.time(), "reason": reason}, sort_keys=True).encode()
    try:
        res = await store.txn(
            [Compare.lease(NODES + name, Op.EQUAL, lease)],
            [Put(key, value, lease)],
        )
    except LeaseNotFound:
        raise NodeNotLive(f"node {name!r} is not live (its lease {lease:#x} is gone)") from None
    if not res.succeeded:
        raise NodeNotLive(f"node {name!r} is not live (no node record on lease {lease:#x})")
    return res.revision


def _requested(node: Node, items: dict[str, Any]) -> dict[str, Any] | None:
    """The drain request addressed to this incarnation of ``node``, or None."""
    kv = items.get(node.name)
    session = node.session
    if kv is None or session is None or kv.lease != session.lease:
        return None
    try:
        data = json.loads(kv.value)
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def drain_in_background(node: Node) -> bool:
    """Start ``node.drain()`` in its own task (kept referenced until it ends).

    False when the node is already draining or stopped (nothing started)."""
    if node.draining or node.phase is Phase.STOPPED:
        return False
    task = asyncio.create_task(node.drain(), name=f"shoal-drain-{node.name}")
    _draining.add(task)
    task.add_done_callback(_drain_done)
    return True


def _drain_done(task: asyncio.Task[None]) -> None:
    _draining.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("requested drain failed: %r", task.exception())


async def watch_control(node: Node) -> None:
    """Follow ``control/drain/`` and drain ``node`` when a request names it.

    Runs as one of the node's background tasks (cancelled with it). The drain
    itself runs in its own task, so cancelling the watcher never cuts a drain
    short."""
    mirror = Mirror(node.store, DRAIN, node.clock)
    cordons = Mirror(node.store, CORDON, node.clock)
    seen = asyncio.Event()
    mirror.listen(lambda _events: seen.set())
    cordons.listen(lambda _events: seen.set())
    mirror.start()
    cordons.start()
    try:
        while True:
            await seen.wait()
            seen.clear()
            cordoned = _requested(node, cordons.items) is not None
            if cordoned != node.cordoned and not node.draining and node.phase is not Phase.STOPPED:
                log.warning("node %s: %s", node.name, "cordoned" if cordoned else "uncordoned")
                with contextlib.suppress(ShoalError):
                    await node.set_cordoned(cordoned)
            request = _requested(node, mirror.items)
            if request is None or node.draining or node.phase is Phase.STOPPED:
                continue
            log.warning(
                "node %s: drain requested by %s%s", node.name, request.get("by") or "?",
                f" ({request['reason']})" if request.get("reason") else "",
            )
            drain_in_background(node)
    finally:
        with contextlib.suppress(NotRunning):
            await mirror.aclose()
        with contextlib.suppress(NotRunning):
            await cordons.aclose()
