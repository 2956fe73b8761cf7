"""The Store: the one etcd-shaped seam everything in Shoal is written on.

Semantics follow etcd v3 exactly (real etcd is the oracle of the conformance
suite in ``shoal.testing.conformance``):

* one store-wide ``revision`` that only grows; every write transaction that
  changes something bumps it by one, and every key it touches gets that
  revision as ``mod_revision``;
* a key's ``create_revision`` is the revision that created it (0 = absent),
  ``version`` counts writes since creation (0 = absent);
* a key may hang on a lease; when the lease expires or is revoked the key is
  deleted (a DELETE event at a new revision);
* ``watch(prefix, start_revision)`` yields every change under ``prefix`` with
  ``mod_revision >= start_revision`` in revision order, exactly once, and
  raises :class:`~shoal.Compacted` when ``start_revision`` is older than the
  compaction point.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from shoal.errors import InvalidArgumentType, InvalidTransaction


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored. ``lease`` is 0 when the key hangs on no lease."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class Target(enum.Enum):
    VALUE = "value"
    CREATE = "create_revision"
    MOD = "mod_revision"
    VERSION = "version"
    LEASE = "lease"


class Op(enum.Enum):
    EQUAL = "=="
    NOT_EQUAL = "!="
    GREATER = ">"
    LESS = "<"


@dataclass(frozen=True, slots=True)
class Compare:
    """A condition of a transaction: ``target(key) op operand``.

    An absent key has value ``b""`` is NOT matched for ``VALUE`` compares (etcd:
    a value compare on a missing key is false); its revisions, version and
    lease are 0.
    """

    key: str
    target: Target
    op: Op
    operand: bytes | int

    # -- constructors ---------------------------------------------------
    @staticmethod
    def value(key: str, op: Op, value: bytes) -> Compare:
        return Compare(key, Target.VALUE, op, value)

    @staticmethod
    def create_revision(key: str, op: Op, revision: int) -> Compare:
        return Compare(key, Target.CREATE, op, revision)

    @staticmethod
    def mod_revision(key: str, op: Op, revision: int) -> Compare:
        return Compare(key, Target.MOD, op, revision)

    @staticmethod
    def version(key: str, op: Op, version: int) -> Compare:
        return Compare(key, Target.VERSION, op, version)

    @staticmethod
    def lease(key: str, op: Op, lease: int) -> Compare:
        return Compare(key, Target.LEASE, op, lease)

    @staticmethod
    def absent(key: str) -> Compare:
        """True when ``key`` does not exist."""
        return Compare(key, Target.CREATE, Op.EQUAL, 0)

    @staticmethod
    def exists(key: str) -> Compare:
        """True when ``key`` exists."""
        return Compare(key, Target.CREATE, Op.GREATER, 0)


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key``; with ``prefix=True`` every key starting with ``key``."""

    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    """Read ``key``; with ``prefix=True`` every key starting with ``key``."""

    key: str
    prefix: bool = False


TxnOp = Put | Delete | Get

# What each op of the branch that ran returned, in order:
#   Put    -> None
#   Delete -> int (number of keys deleted)
#   Get    -> list[KeyValue] (sorted by key)
OpResult = None | int | list[KeyValue]


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # store revision after the transaction
    results: tuple[OpResult, ...] = ()


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int  # the store revision the read was made at


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int  # granted TTL in seconds (a store may round up)


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """One change. For DELETE, ``kv.value`` is empty, ``kv.mod_revision`` is the
    revision of the delete and the other counters are 0."""

    type: EventType
    kv: KeyValue

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class Features:
    """What a backend guarantees (checked at construction, never mid-run)."""

    name: str
    multi_process: bool  # several OS processes may share it
    multi_machine: bool  # several machines may share it
    linearizable: bool


@runtime_checkable
class Store(Protocol):
    """The store seam. All methods are coroutines and may raise
    :class:`~shoal.StoreUnavailable` when the store cannot be reached within
    the configured timeout. Cancelling a call cancels the wait, not necessarily
    the write (treat it like :class:`~shoal.OutcomeUnknown`)."""

    features: Features

    async def get(self, key: str) -> KeyValue | None:
        """The current record of ``key`` or None."""
        ...

    async def range(self, prefix: str) -> RangeResult:
        """Every key starting with ``prefix``, sorted by key, with the read revision."""
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the new store revision. Raises LeaseNotFound."""
        ...

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or a prefix); returns how many keys were deleted."""
        ...

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds run ``on_success`` else ``on_failure``.

        Never retried blindly: when the outcome cannot be known the backend
        re-reads, and raises OutcomeUnknown if that does not settle it."""
        ...

    async def grant(self, ttl: int) -> Lease:
        """A new lease of ``ttl`` seconds (>= 1; a store may grant more)."""
        ...

    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; returns its TTL. Raises LeaseNotFound if it is gone."""
        ...

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease`` now, deleting its keys. Raises LeaseNotFound if gone."""
        ...

    async def lease_ttl(self, lease: int) -> int:
        """Seconds left on ``lease``; -1 when it does not exist."""
        ...

    def watch(
        self, prefix: str, start_revision: int | None = None
    ) -> AsyncGenerator[Event, None]:
        """Changes under ``prefix`` from ``start_revision`` on (None: from now).

        Ordered by revision, no duplicates, no gaps, across reconnects. Raises
        Compacted if ``start_revision`` is older than the compaction point.
        Close it with ``aclose()`` (or ``contextlib.aclosing``)."""
        ...

    async def revision(self) -> int:
        """The current store revision."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (watches from older revisions fail)."""
        ...

    async def aclose(self) -> None:
        """Release connections and background tasks. Idempotent."""
        ...


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with ``prefix`` ("" = no end)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return raw.decode(errors="surrogateescape")
        raw.pop()
    return ""


def check_txn_ops(ops: Sequence[TxnOp]) -> None:
    """Refuse a branch that puts one key twice or puts a key it also deletes,
    as etcd does (order does not matter; a prefix delete covers its keys).

    Used by the in-process backends on BOTH branches before anything runs;
    etcd checks this itself."""
    puts: set[str] = set()
    for op in ops:
        if isinstance(op, Put):
            if op.key in puts:
                raise InvalidTransaction(
                    f"transaction refused: it puts {op.key!r} twice in one branch; "
                    "put each key at most once"
                )
            puts.add(op.key)
    for op in ops:
        if isinstance(op, Delete):
            hit = next(
                (k for k in sorted(puts) if k == op.key or (op.prefix and k.startswith(op.key))),
                None,
            )
            if hit is not None:
                raise InvalidTransaction(
                    f"transaction refused: it both puts and deletes {hit!r} in one branch; "
                    "do one or the other"
                )


def check_compare(compare: Compare, kv: KeyValue | None) -> bool:
    """Evaluate one compare against a key's record, with etcd's rules.

    Used by the in-process backends; etcd evaluates compares itself."""
    if kv is None:
        if compare.target is Target.VALUE:
            return False
        actual: bytes | int = 0
    elif compare.target is Target.VALUE:
        actual = kv.value
    elif compare.target is Target.CREATE:
        actual = kv.create_revision
    elif compare.target is Target.MOD:
        actual = kv.mod_revision
    elif compare.target is Target.VERSION:
        actual = kv.version
    else:
        actual = kv.lease
    operand = compare.operand
    if isinstance(actual, bytes) != isinstance(operand, bytes):
        raise InvalidArgumentType(
            f"compare on {compare.target.value} needs a {type(actual).__name__}"
        )
    if compare.op is Op.EQUAL:
        return actual == operand
    if compare.op is Op.NOT_EQUAL:
        return actual != operand
    if compare.op is Op.GREATER:
        return actual > operand  # type: ignore[operator]
    return actual < operand  # type: ignore[operator]
