"""Row lock vs serializable isolation for the postgres store's write transaction.

Every write of the postgres store moves the one store revision (``meta.rev``) in the
same transaction. Two ways to keep revisions in commit order:

* ``rowlock`` (what Shoal does): READ COMMITTED, ``SELECT ... FOR UPDATE`` on the
  revision row first; writers queue on that row;
* ``serializable``: SERIALIZABLE isolation, a plain read of the revision, and a retry
  of the whole transaction on a serialization failure (40001).

``--clients`` concurrent connections each run ``--ops`` compare-and-set transactions
(read the key, write it and a log row at revision+1, move the revision) on their own
key, so the only contention is the revision row itself, as in the store.

    python benchmarks/pg_isolation.py --clients 8 --ops 200
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import psycopg

from shoal.testing.pg_server import PgServer

SETUP = """
DROP SCHEMA IF EXISTS iso CASCADE;
CREATE SCHEMA iso;
CREATE TABLE iso.meta (k text PRIMARY KEY, v bigint NOT NULL);
INSERT INTO iso.meta VALUES ('rev', 1);
CREATE TABLE iso.kv (key text PRIMARY KEY, value bytea NOT NULL, mod bigint NOT NULL);
CREATE TABLE iso.log (id bigserial PRIMARY KEY, rev bigint NOT NULL, key text NOT NULL);
"""


async def one_txn(conn: Any, mode: str, key: str) -> int:
    """One CAS transaction; returns how many attempts it took."""
    attempts = 0
    while True:
        attempts += 1
        try:
            if mode == "rowlock":
                await conn.execute("BEGIN")
                cur = await conn.execute("SELECT v FROM iso.meta WHERE k = 'rev' FOR UPDATE")
            else:
                await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                cur = await conn.execute("SELECT v FROM iso.meta WHERE k = 'rev'")
            rev = int((await cur.fetchone())[0]) + 1
            await conn.execute("SELECT mod FROM iso.kv WHERE key = %s", (key,))
            await conn.execute(
                "INSERT INTO iso.kv VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE"
                " SET value = excluded.value, mod = excluded.mod", (key, b"x" * 128, rev))
            await conn.execute("INSERT INTO iso.log (rev, key) VALUES (%s, %s)", (rev, key))
            await conn.execute("UPDATE iso.meta SET v = %s WHERE k = 'rev'", (rev,))
            await conn.execute("COMMIT")
            return attempts
        except psycopg.errors.SerializationFailure:
            await conn.execute("ROLLBACK")


async def run(dsn: str, mode: str, clients: int, ops: int) -> dict[str, float]:
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(clients)]
    lat: list[float] = []
    retries = 0

    async def client(i: int) -> None:
        nonlocal retries
        for n in range(ops):
            t0 = time.perf_counter()
            retries += await one_txn(conns[i], mode, f"c{i}") - 1
            if n >= 10:
                lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    took = time.perf_counter() - t0
    for c in conns:
        await c.close()
    lat.sort()
    return {"txn/s": clients * ops / took, "p50 ms": lat[len(lat) // 2] * 1000,
            "p99 ms": lat[int(len(lat) * 0.99)] * 1000, "retries": retries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ops", type=int, default=200)
    args = parser.parse_args()
    with PgServer() as pg:
        print(f"{args.clients} clients x {args.ops} CAS txns, one revision row")
        print("| mode | txn/s | p50 ms | p99 ms | serialization retries |")
        print("|---|---|---|---|---|")
        for mode in ("rowlock", "serializable", "rowlock", "serializable"):
            pg.execute(SETUP)
            r = asyncio.run(run(pg.dsn(), mode, args.clients, args.ops))
            print(f"| {mode} | {r['txn/s']:.0f} | {r['p50 ms']:.2f} | {r['p99 ms']:.2f} "
                  f"| {r['retries']:.0f} |")


if __name__ == "__main__":
    main()
