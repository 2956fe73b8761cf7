"""A graceful leave waits for the next owners before it tears anything down.

A draining node stops its duties and revokes its lease: its ownership keys and
node record vanish in one revision, the other nodes' watches see it, and each
duty's next owner acquires it. Until those acquisitions are in, the leaving node
keeps its process, its reaper and its store connections as they are. Tearing
them down (its watches cancelled, its channel closed, the reaper process
exiting, the interpreter's shutdown) is work for the store and for the
machine's CPUs at the very moment the next owner needs both. On the 2-core VM of
``benchmarks/failover.py`` (graceful handover, etcd, 160 handovers per version,
alternating runs), a teardown held back past the takeover cut the handovers
over 10 ms from 7-33 to 1-3 in 160 (``docs/benchmarks.md``).

So the leave waits until every duty it held is owned by another node (then
``TAKEOVER_SETTLE`` seconds more, while those nodes start them), or no other
node could take one (none left that is neither draining nor cordoned), or
``TAKEOVER_WAIT`` seconds have passed, whichever comes first. This only delays
the leaving node's own exit; it changes nothing a guarantee rests on (the
duties were stopped and released before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping

from shoal.primitives.membership import Member
from shoal.primitives.ownership import Owner

__all__ = ["TAKEOVER_SETTLE", "TAKEOVER_WAIT", "await_takeover", "could_take", "untaken"]

log = logging.getLogger("shoal.node")

TAKEOVER_WAIT = 0.25  # seconds a leaving node waits for its duties' next owners, at most
TAKEOVER_SETTLE = 0.02  # seconds more once they hold them (their duties are starting)


def untaken(
    names: Collection[str], owner_of: Callable[[str], Owner | None], me: str
) -> list[str]:
    """The duties of ``names`` that no other node owns (yet). ``owner_of`` answers
    per duty (:meth:`OwnerTable.get`): no copy of every owner per event."""
    return [n for n in names if (o := owner_of(n)) is None or o.node == me]


def could_take(members: Mapping[str, Member], me: str) -> bool:
    """True if some other node may take duties (not draining, not cordoned)."""
    return any(m.name != me and not m.draining and not m.cordoned for m in members.values())


async def await_takeover(
    names: Collection[str], *, me: str, owner_of: Callable[[str], Owner | None],
    members: Callable[[], Mapping[str, Member]], moved: asyncio.Event,
    limit: float = TAKEOVER_WAIT,
) -> list[str]:
    """Wait until each duty of ``names`` is owned by another node, no other node
    could take one, or ``limit`` seconds pass. ``moved`` is set whenever the owners
    or the members change. Returns the duties still untaken.

    The bound is real time (the event loop's clock), as is the settle: what the
    wait is for is processes on CPUs, and a node's logical clock may be a test's
    fake one that nobody moves while the node closes."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + limit
    while True:
        left = untaken(names, owner_of, me)
        if not left:
            # the next owners start their duties just after their acquisition is
            # in: a little more keeps the teardown off that too
            await asyncio.sleep(TAKEOVER_SETTLE)
            log.debug("node %s: %d duties taken over %.1f ms after the revoke", me,
                      len(names), (loop.time() - start - TAKEOVER_SETTLE) * 1e3)
            return left
        remaining = deadline - loop.time()
        if remaining <= 0 or not could_take(members(), me):
            log.debug("node %s: leaves with %d duties not taken by another node yet "
                      "(%s ...)", me, len(left), ", ".join(left[:5]))
            return left
        moved.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(moved.wait(), remaining)
