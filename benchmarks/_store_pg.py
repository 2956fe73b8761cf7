"""PostgreSQL side of benchmarks/store.py: the SAME statements through raw psycopg.

``RawPgBench`` issues, on one bare ``psycopg.AsyncConnection``, exactly the
statements Shoal's postgres store issues for each call (from
``shoal.store._pg_sql``), in the same messages: a put is ``BEGIN`` with the
revision row lock, the upsert-and-log statement, then the revision update,
``pg_notify`` and ``COMMIT`` (three round trips); a txn sends the compare read
with ``BEGIN`` (three round trips too); a
get is one ``SELECT``; a watcher is a second connection that ``LISTEN``s and reads
the log after each notification. So the
ratio "shoal postgres / raw psycopg" is the cost of Shoal's layer (pool, error
boundary, outcome tracking, watch fan-out), not of the schema.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from shoal.store._pg_sql import Sql

TIMEOUT = 5.0


class RawPgOps:
    """The operations of benchmarks/store.py's ``Bench`` on raw psycopg (mixed into a
    ``Bench`` subclass there, which provides ``value``, ``n_keys`` and ``_arrive``)."""

    name = "rawpg"
    value: bytes
    n_keys: int

    def setup_raw(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.sql = Sql(schema)
        self.conn: Any = None
        self._cas_rev = 0

    def _arrive(self, value: bytes) -> None:
        raise NotImplementedError

    async def connect(self) -> None:
        self.conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    def raw_key(self, i: int) -> bytes:
        return f"k/{i % self.n_keys:05d}".encode()

    async def _write(self, key: bytes, value: bytes, compare_rev: int | None = None) -> int:
        conn, sql = self.conn, self.sql
        listed = sql.get_listed([key]) if compare_rev is not None else ""
        cur = await conn.execute(f"BEGIN; {sql.lock_rev}; {listed}" if listed
                                 else f"BEGIN; {sql.lock_rev}")
        cur.nextset()
        rev = int((await cur.fetchone())[0])
        if compare_rev is not None:
            cur.nextset()
            rows = await cur.fetchall()
            if not rows or rows[0][3] != compare_rev:
                await conn.execute("ROLLBACK")
                raise RuntimeError("rawpg: compare-and-set failed")
        params = {"key": key, "value": value, "rev": rev + 1, "lease": 0}
        await conn.execute(sql.put, params)
        await conn.execute(f"{sql.finish(rev + 1)}; COMMIT")
        return rev + 1

    async def put(self, i: int) -> None:
        await self._write(self.raw_key(i), self.value)

    async def get(self, i: int) -> None:
        rows = await (await self.conn.execute(self.sql.get, (self.raw_key(i),))).fetchall()
        assert rows and len(rows[0][1]) == len(self.value)

    async def setup_cas(self) -> None:
        self._cas_rev = await self._write(b"cas", self.value)

    async def cas(self, i: int) -> None:
        self._cas_rev = await self._write(b"cas", self.value, self._cas_rev)

    async def watch_put(self, value: bytes) -> None:
        await self._write(b"w/x", value)

    async def open_watcher(self, ready: asyncio.Event) -> None:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        try:
            await conn.execute(self.sql.listen)
            seen = int((await (await conn.execute(self.sql.rev)).fetchone())[0])
            ready.set()
            while True:
                async for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass
                rows = await (await conn.execute(self.sql.events, (seen,))).fetchall()
                for row in rows:
                    seen = max(seen, int(row[1]))
                    if row[2] is not None and bytes(row[4]).startswith(b"w/"):
                        self._arrive(bytes(row[5]))
        finally:
            await conn.close()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
