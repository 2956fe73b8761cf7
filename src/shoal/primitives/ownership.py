"""Ownership: who runs a duty, proven by a key and fenced by its revision.

``duties/{duty}`` holds the owner's record and hangs on the OWNER NODE's
lease (so a dead node frees all its duties at once, and keep-alive traffic
does not grow with the number of duties). The key's ``create_revision`` is
the duty's **fencing token**: a new owner always gets a larger one, and
:func:`guard` is a compare that fails as soon as the token is superseded
(G2). Put it in your own transaction::

    await store.txn([guard(duty, token)], [Put("state/x", b"...")])
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from shoal._errors import OutcomeUnknown
from shoal.store.protocol import Compare, Delete, KeyValue, Op, Put, Store

DUTIES = "duties/"


@dataclass(frozen=True, slots=True)
class Owner:
    duty: str
    node: str
    token: int  # create revision of the ownership key
    since: float  # wall clock when acquired (display only)
    lease: int

    @staticmethod
    def decode(duty: str, kv: KeyValue) -> Owner:
        data = json.loads(kv.value)
        return Owner(duty, str(data["node"]), kv.create_revision, float(data["since"]), kv.lease)


def guard(duty: str, token: int) -> Compare:
    """A compare that holds only while ``token`` is the duty's current token."""
    return Compare.create_revision(DUTIES + duty, Op.EQUAL, token)


async def acquire(store: Store, duty: str, node: str, lease: int, now: float) -> int | None:
    """Create-if-absent the ownership key. Returns the token, or None if taken.

    The transaction is never resent; if its outcome is unknown the key is
    re-read and we own it only if it hangs on our lease."""
    key = DUTIES + duty
    value = json.dumps({"node": node, "since": now}).encode()
    try:
        res = await store.txn([Compare.absent(key)], [Put(key, value, lease)])
    except OutcomeUnknown:
        kv = await store.get(key)
        return kv.create_revision if kv is not None and kv.lease == lease else None
    return res.revision if res.succeeded else None


async def release(store: Store, duty: str, token: int) -> int:
    """Delete the ownership key if ``token`` still holds it; the delete's
    revision, or 0 when the token no longer held it."""
    res = await store.txn([guard(duty, token)], [Delete(DUTIES + duty)])
    return res.revision if res.succeeded else 0
