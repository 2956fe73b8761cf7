"""Membership: each node's record under ``nodes/{name}``, on the node's lease.

A record vanishes with its node's lease, so the live set is exactly the set of
records. :func:`register` refuses a name a live node already holds (G6).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from shoal.errors import NameTaken
from shoal.store.protocol import Compare, KeyValue, Op, Put, Store

NODES = "nodes/"


@dataclass(frozen=True, slots=True)
class Member:
    """What a node announces about itself."""

    name: str
    roles: tuple[str, ...] = ()
    weight: float = 1.0
    zone: str = ""
    address: str = ""
    version: str = ""
    started_at: float = 0.0  # wall clock, for display
    joined_at: float = 0.0  # wall clock just before this registration's txn was sent
    can_lead: bool = True
    disabled: tuple[str, ...] = ()  # duty names / families disabled on this node
    draining: bool = False
    app_version: str = ""  # the app's own version (shoal.App(name, version=...))
    cordoned: bool = False  # keeps serving, gets no new duties (shoal node cordon)
    prefers: tuple[str, ...] = ()  # duties / families this node is a preferred owner of
    workers: tuple[tuple[str, int], ...] = ()  # (pool, running copies); JSON: {pool: n}
    keys: tuple[str, ...] = ()  # key ids of the session secrets it accepts, current first
    # (family, count) of the partitioned duties its app declares; None: not told
    # (a record written by an older Shoal). JSON: {family: count} or null
    partitions: tuple[tuple[str, int], ...] | None = None
    lease: int = field(default=0, compare=False)
    revision: int = field(default=0, compare=False)

    def encode(self) -> bytes:
        data = asdict(self)
        data.pop("lease")
        data.pop("revision")
        data["workers"] = dict(self.workers)
        data["partitions"] = None if self.partitions is None else dict(self.partitions)
        return json.dumps(data, sort_keys=True).encode()

    @staticmethod
    def decode(kv: KeyValue) -> Member:
        data = json.loads(kv.value)
        data["roles"] = tuple(data.get("roles", ()))
        data["disabled"] = tuple(data.get("disabled", ()))
        data["keys"] = tuple(str(k) for k in data.get("keys", ()))
        data["prefers"] = tuple(data.get("prefers", ()))
        workers = data.get("workers", {})
        data["workers"] = tuple(sorted((str(k), int(v)) for k, v in workers.items()))
        parts = data.get("partitions")
        data["partitions"] = (None if not isinstance(parts, dict)
                              else tuple(sorted((str(k), int(v)) for k, v in parts.items())))
        known = set(Member.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in known}
        data["lease"] = kv.lease
        data["revision"] = kv.mod_revision
        return Member(**data)


async def register(store: Store, member: Member, lease: int) -> int:
    """Write ``member`` on ``lease`` unless a live node holds the name (G6).

    Returns the record's revision. Raises :class:`~shoal.NameTaken`."""
    key = NODES + member.name
    res = await store.txn(
        [Compare.absent(key)],
        [Put(key, member.encode(), lease)],
    )
    if res.succeeded:
        return res.revision
    holder = await store.get(key)
    left = await store.lease_ttl(holder.lease) if holder and holder.lease else -1
    hint = f"; its lease expires in {left}s if that node is dead" if left >= 0 else ""
    raise NameTaken(
        f"node name {member.name!r} is held by a live node (record revision "
        f"{holder.mod_revision if holder else '?'}){hint}. Give this node a unique "
        "node.name (or SHOAL__NODE__NAME), or stop the other node first."
    )


async def update(store: Store, member: Member, lease: int) -> int:
    """Rewrite our own record (same lease). Returns the new revision."""
    key = NODES + member.name
    res = await store.txn(
        [Compare.lease(key, Op.EQUAL, lease)],
        [Put(key, member.encode(), lease)],
    )
    return res.revision if res.succeeded else 0
