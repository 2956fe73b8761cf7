"""Ownership: who runs a duty, proven by a key and fenced by its revision.

``duties/{duty}`` holds the owner's record and hangs on the OWNER NODE's
lease (so a dead node frees all its duties at once, and keep-alive traffic
does not grow with the number of duties). The key's ``create_revision`` is
the duty's **fencing token**: a new owner always gets a larger one, and
:func:`guard` is a compare that fails as soon as the token is superseded
(G2). Put it in your own transaction::

    await store.txn([guard(duty, token)], [Put("state/x", b"...")])

Batches: :func:`acquire_many` and :func:`release_many` handle many duties in
one transaction per ``limit`` keys (the store's ``max_txn_ops``), chunks in
parallel. A transaction's compares are all-or-nothing, so the failure branch
reads every key of the batch: the keys found taken (or superseded) are dropped
and the rest retried at once. Each retry drops at least one key, so a race on
one key costs one more round trip, never the batch. The keys created by one
transaction share its revision as their token: a token is unique per duty, not
across duties.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shoal.errors import OutcomeUnknown
from shoal.store.protocol import Compare, Delete, Get, KeyValue, Op, Put, Store

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


def _chunks(items: list[str], limit: int) -> list[list[str]]:
    size = max(1, limit)
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _acquire_chunk(
    store: Store, duties: list[str], value: bytes, lease: int
) -> dict[str, int]:
    pending = list(duties)
    while pending:
        keys = [DUTIES + d for d in pending]
        try:
            res = await store.txn(
                [Compare.absent(k) for k in keys],
                [Put(k, value, lease) for k in keys],
                [Get(k) for k in keys],
            )
        except OutcomeUnknown:
            found = await asyncio.gather(*(store.get(k) for k in keys))
            return {
                d: kv.create_revision
                for d, kv in zip(pending, found, strict=True)
                if kv is not None and kv.lease == lease
            }
        if res.succeeded:
            return dict.fromkeys(pending, res.revision)
        taken = {d for d, got in zip(pending, res.results, strict=True) if got}
        pending = [d for d in pending if d not in taken]
    return {}


async def acquire_many(
    store: Store, duties: Iterable[str], node: str, lease: int, now: float, *, limit: int = 128
) -> dict[str, int]:
    """Create-if-absent the ownership keys of ``duties``: duty -> token for each
    one taken (the others were owned already). ``limit`` keys per transaction,
    transactions in parallel; a key taken by someone else is skipped, never
    failing the rest (see the module docstring)."""
    value = json.dumps({"node": node, "since": now}).encode()
    parts = await asyncio.gather(
        *(_acquire_chunk(store, c, value, lease) for c in _chunks(sorted(set(duties)), limit))
    )
    return {d: t for part in parts for d, t in part.items()}


async def _release_chunk(store: Store, tokens: Mapping[str, int]) -> dict[str, int]:
    pending = dict(tokens)
    while pending:
        names = list(pending)
        res = await store.txn(
            [guard(d, pending[d]) for d in names],
            [Delete(DUTIES + d) for d in names],
            [Get(DUTIES + d) for d in names],
        )
        if res.succeeded:
            return dict.fromkeys(names, res.revision)
        for d, got in zip(names, res.results, strict=True):
            if not isinstance(got, list) or not got or got[0].create_revision != pending[d]:
                del pending[d]  # gone already or superseded: not ours to delete
    return {}


async def release_many(
    store: Store, tokens: Mapping[str, int], *, limit: int = 128
) -> dict[str, int]:
    """Delete the ownership keys still held by their token (duty -> token):
    duty -> the delete's revision, for each one deleted. Batched like
    :func:`acquire_many`."""
    names = sorted(tokens)
    parts = await asyncio.gather(
        *(_release_chunk(store, {d: tokens[d] for d in c}) for c in _chunks(names, limit))
    )
    return {d: r for part in parts for d, r in part.items()}
