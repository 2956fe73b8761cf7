"""One write transaction of the PostgreSQL store, and row decoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoal.errors import LeaseNotFound
from shoal.store._pg_conn import Conn
from shoal.store._pg_sql import Sql, span
from shoal.store.protocol import KeyValue

__all__ = ["Tx", "kv_of"]


def kv_of(row: Sequence[Any]) -> KeyValue:
    key, value, create, mod, version, lease = row
    return KeyValue(bytes(key).decode(), bytes(value), create, mod, version, lease)


class Tx:
    """One write transaction in progress: ``rev`` is the last revision closed,
    changes are written at ``rev + 1`` until :meth:`flush` closes it."""

    def __init__(self, sql: Sql, conn: Conn, rev: int) -> None:
        self.sql, self.conn, self.rev, self.dirty = sql, conn, rev, False
        self.prefetched: list[Any] = []  # rows of the query sent with BEGIN

    async def fetch(self, query: str, params: Any = ()) -> list[Any]:
        return list(await (await self.conn.execute(query, params)).fetchall())

    def flush(self) -> None:
        if self.dirty:
            self.rev += 1
            self.dirty = False

    async def select(self, key: str, prefix: bool) -> list[KeyValue]:
        if not prefix:
            return [kv_of(r) for r in await self.fetch(self.sql.get, (span(key, False)[0],))]
        lo, hi = span(key, True)
        if hi is None:
            return [kv_of(r) for r in await self.fetch(self.sql.range_from, (lo,))]
        return [kv_of(r) for r in await self.fetch(self.sql.range_span, (lo, hi))]

    async def put(self, key: str, value: bytes, lease: int) -> None:
        params = {"key": span(key, False)[0], "value": bytes(value), "rev": self.rev + 1,
                  "lease": lease}  # fmt: skip
        cur = await self.conn.execute(self.sql.put, params)
        if cur.rowcount < 1:  # the lease is gone: the transaction is rolled back
            raise LeaseNotFound(lease)
        self.dirty = True

    async def delete(self, key: str, prefix: bool) -> int:
        lo, hi = span(key, prefix)
        query = self.sql.delete_span if hi is not None else self.sql.delete_from
        if not prefix:
            query = self.sql.delete_key
        cur = await self.conn.execute(query, {"lo": lo, "hi": hi, "rev": self.rev + 1})
        count = max(0, int(cur.rowcount))
        self.dirty = self.dirty or count > 0
        return count

    async def drop_lease(self, lease: int) -> None:
        """Delete the lease and its keys, at one revision of their own."""
        self.flush()
        cur = await self.conn.execute(
            self.sql.delete_lease_keys, {"lease": lease, "rev": self.rev + 1}
        )
        self.dirty = cur.rowcount > 0
        await self.conn.execute(self.sql.delete_lease, (lease,))
        self.flush()
