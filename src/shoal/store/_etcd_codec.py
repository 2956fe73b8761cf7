"""Keys under the store prefix, and Shoal <-> etcd protobuf conversions."""

from __future__ import annotations

from typing import Any

from shoal.errors import InvalidArgumentType
from shoal.store import _etcd_pb as pb
from shoal.store.protocol import (
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    Op,
    OpResult,
    Put,
    Target,
    TxnOp,
)

_OPS = {Op.EQUAL: 0, Op.GREATER: 1, Op.LESS: 2, Op.NOT_EQUAL: 3}  # Compare.CompareResult
_TARGETS = {  # Compare.CompareTarget and the field of target_union that holds the operand
    Target.VERSION: (0, "version"),
    Target.CREATE: (1, "create_revision"),
    Target.MOD: (2, "mod_revision"),
    Target.VALUE: (3, "value"),
    Target.LEASE: (4, "lease"),
}


def range_end(key: bytes) -> bytes:
    """etcd's range end for "every key starting with ``key``" (b"\\0" = all keys)."""
    raw = bytearray(key)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\x00"


class Codec:
    """Maps bare keys to keys under ``prefix`` and back, and builds/reads protobufs."""

    def __init__(self, prefix: str) -> None:
        # "/shoal" and "/shoal/" both mean keys "/shoal/<key>"; "" means no prefix.
        self.prefix = (prefix.rstrip("/") + "/") if prefix else ""

    def full(self, key: str) -> bytes:
        return (self.prefix + key).encode("utf-8", "surrogateescape")

    def strip(self, key: bytes) -> str:
        text = key.decode("utf-8", "surrogateescape")
        return text[len(self.prefix) :] if text.startswith(self.prefix) else text

    def kv(self, kv: Any) -> KeyValue:
        return KeyValue(
            self.strip(kv.key),
            bytes(kv.value),
            int(kv.create_revision),
            int(kv.mod_revision),
            int(kv.version),
            int(kv.lease),
        )

    def event(self, ev: Any) -> Event:
        if ev.type == 1:  # mvccpb.Event.DELETE: only the key and the delete's revision
            return Event(
                EventType.DELETE,
                KeyValue(self.strip(ev.kv.key), b"", 0, int(ev.kv.mod_revision), 0, 0),
            )
        return Event(EventType.PUT, self.kv(ev.kv))

    def compare(self, c: Compare) -> Any:
        target, field = _TARGETS[c.target]
        if (c.target is Target.VALUE) != isinstance(c.operand, bytes | bytearray):
            kind = "bytes" if c.target is Target.VALUE else "int"
            raise InvalidArgumentType(f"compare on {c.target.value} needs a {kind} operand")
        operand = bytes(c.operand) if isinstance(c.operand, bytes | bytearray) else c.operand
        return pb.Compare(
            result=_OPS[c.op], target=target, key=self.full(c.key), **{field: operand}
        )

    def request(self, op: TxnOp) -> Any:
        full = self.full(op.key)
        if isinstance(op, Put):
            put = pb.PutRequest(key=full, value=bytes(op.value), lease=op.lease)
            return pb.RequestOp(request_put=put)
        end = range_end(full) if op.prefix else b""
        if isinstance(op, Delete):
            return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=full, range_end=end))
        if isinstance(op, Get):
            return pb.RequestOp(request_range=pb.RangeRequest(key=full, range_end=end))
        raise InvalidArgumentType(f"not a txn op: {op!r}")

    def result(self, op: TxnOp, resp: Any) -> OpResult:
        if isinstance(op, Put):
            return None
        if isinstance(op, Delete):
            return int(resp.response_delete_range.deleted)
        return [self.kv(kv) for kv in resp.response_range.kvs]  # etcd sorts them by key
