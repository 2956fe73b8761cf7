"""Replicated state: turning state operations into one store transaction, and
explaining a refused one. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.errors import Conflict, DocumentTooLarge, DutyLost, InvalidDocument, StateError
from shoal.runtime._state_model import (
    CheckDoc,
    DeleteDoc,
    PutDoc,
    StateOp,
    check_names,
    encode_value,
    store_key,
)
from shoal.store.protocol import (
    Compare,
    Delete,
    Get,
    KeyValue,
    Op,
    OpResult,
    Put,
    TxnOp,
    check_compare,
)


@dataclass
class Prepared:
    """A checked transaction: compares, writes, and what to read if it fails."""

    compares: list[Compare] = field(default_factory=list)
    writes: list[TxnOp] = field(default_factory=list)
    checked: list[tuple[str, str, int]] = field(default_factory=list)  # ns, key, expected
    guard: Compare | None = None

    @property
    def on_failure(self) -> list[TxnOp]:
        reads: list[TxnOp] = [Get(store_key(ns, key)) for ns, key, _ in self.checked]
        if self.guard is not None:
            reads.append(Get(self.guard.key))
        return reads

    @property
    def all_compares(self) -> list[Compare]:
        return [*self.compares, self.guard] if self.guard is not None else self.compares


def prepare(
    ops: list[StateOp],
    guard: Compare | None,
    *,
    max_doc_bytes: int,
    max_txn_ops: int,
    max_txn_bytes: int,
) -> Prepared:
    """Check everything before any I/O: op types, names, values, sizes, duplicates."""
    if len(ops) > max_txn_ops:
        raise InvalidDocument(f"transaction has {len(ops)} operations; the limit is {max_txn_ops}")
    if guard is not None and not isinstance(guard, Compare):
        raise InvalidDocument(f"guard must be a Compare (e.g. ctx.guard()), not {guard!r}")
    out = Prepared(guard=guard)
    seen: set[tuple[str, str]] = set()
    total = 0
    for op in ops:
        if not isinstance(op, PutDoc | DeleteDoc | CheckDoc):
            raise InvalidDocument(
                f"not a state operation: {op!r} (use PutDoc, DeleteDoc or CheckDoc)"
            )
        ns, key = check_names(op.namespace, op.key)
        skey = store_key(ns, key)
        expect = op.revision if isinstance(op, CheckDoc) else op.expect_revision
        if expect is not None:
            if isinstance(expect, bool) or not isinstance(expect, int) or expect < 0:
                raise InvalidDocument(
                    f"{ns}/{key}: expected revision must be an int >= 0, not {expect!r}"
                )
            out.compares.append(Compare.mod_revision(skey, Op.EQUAL, expect))
            out.checked.append((ns, key, expect))
        if isinstance(op, CheckDoc):
            continue
        if (ns, key) in seen:
            raise InvalidDocument(f"{ns}/{key} is written twice in one transaction")
        seen.add((ns, key))
        if isinstance(op, PutDoc):
            data = encode_value(op.value, f"{ns}/{key}", max_doc_bytes)
            total += len(skey) + len(data)
            out.writes.append(Put(skey, data))
        else:
            total += len(skey)
            out.writes.append(Delete(skey))
    if total > max_txn_bytes:
        raise DocumentTooLarge("the transaction", total, max_txn_bytes)
    return out


def events_made(results: tuple[OpResult, ...]) -> int:
    """Change events a successful write made: one per Put, one per deleted key."""
    made = 0
    for r in results:
        made += 1 if r is None else r if isinstance(r, int) else 0
    return made


def refused(prepared: Prepared, results: tuple[OpResult, ...]) -> StateError | DutyLost:
    """Why a transaction's compares failed, from what its failure branch read."""
    kvs = [r[0] if isinstance(r, list) and r else None for r in results]
    guard = prepared.guard
    if guard is not None and not check_compare(guard, kvs[-1]):
        return DutyLost(
            f"state write refused: the guard on {guard.key} no longer holds "
            "(the duty was taken over)"
        )
    for (ns, key, expect), kv in zip(prepared.checked, kvs, strict=False):
        current = kv.mod_revision if isinstance(kv, KeyValue) else 0
        if current != expect:
            return Conflict(ns, key, expect, current)
    return StateError("state write refused: a compare failed, but the store did not say which")
