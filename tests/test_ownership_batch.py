"""Batched ownership: acquire_many / release_many on memory, sqlite, a REAL etcd and
a REAL PostgreSQL.

A race on one key never fails the batch; limits split the work into several
transactions; tokens fence like single acquisitions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.primitives import ownership
from shoal.primitives.ownership import DUTIES, acquire_many, guard, release_many
from shoal.store.etcd import EtcdStore
from shoal.store.memory import MemoryStore
from shoal.store.postgres import PostgresStore
from shoal.store.protocol import Put, Store
from shoal.store.sqlite import SqliteStore
from shoal.testing.clock import FakeClock

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "sqlite", "etcd", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore(FakeClock())
    elif request.param == "sqlite":
        s = await SqliteStore.open(tmp_path / "s.db")
    elif request.param == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        s = await PostgresStore.open(dsn, schema=f"batch{time.monotonic_ns()}")
    else:
        endpoints = request.getfixturevalue("etcd_endpoints")
        s = await EtcdStore.open(endpoints, prefix=f"/batch{time.monotonic_ns()}")
    try:
        yield s
    finally:
        await s.aclose()


async def test_acquire_many_skips_taken_keys_and_takes_the_rest(store: Store) -> None:
    lease = (await store.grant(30)).id
    other = (await store.grant(30)).id
    taken = await ownership.acquire(store, "d-007", "rival", other, 0.0)
    assert taken is not None
    names = [f"d-{i:03d}" for i in range(300)]
    tokens = await acquire_many(store, names, "me", lease, 1.0, limit=64)
    assert set(tokens) == set(names) - {"d-007"}  # the race on one key failed nothing else
    kv = await store.get(DUTIES + "d-007")
    assert kv is not None and kv.lease == other
    for name, token in tokens.items():
        kv = await store.get(DUTIES + name)
        assert kv is not None and kv.create_revision == token and kv.lease == lease
    assert len(set(tokens.values())) == 5  # 299 keys, 64 per transaction
    # a second batch over the same keys takes nothing
    assert await acquire_many(store, names, "again", lease, 2.0, limit=64) == {}


async def test_release_many_deletes_only_keys_still_held_by_their_token(store: Store) -> None:
    lease = (await store.grant(30)).id
    tokens = await acquire_many(store, [f"r{i}" for i in range(10)], "me", lease, 0.0, limit=4)
    await store.delete(DUTIES + "r3")  # lost it (e.g. lease expiry) ...
    other = (await store.grant(30)).id
    await ownership.acquire(store, "r3", "rival", other, 0.0)  # ... and someone took it
    done = await release_many(store, tokens, limit=4)
    assert set(done) == set(tokens) - {"r3"}
    assert [kv.key for kv in (await store.range(DUTIES)).kvs] == [DUTIES + "r3"]
    # the old token no longer fences anything
    res = await store.txn([guard("r0", tokens["r0"])], [Put("state/x", b"1")])
    assert not res.succeeded


async def test_a_full_batch_of_the_store_limit_fits_one_transaction(store: Store) -> None:
    lease = (await store.grant(30)).id
    names = [f"full-{i:03d}" for i in range(128)]  # etcd's default --max-txn-ops
    await ownership.acquire(store, "full-127", "rival", (await store.grant(30)).id, 0.0)
    tokens = await acquire_many(store, names, "me", lease, 0.0, limit=128)
    assert len(tokens) == 127 and len(set(tokens.values())) == 1  # failed once, then one txn
    done = await release_many(store, tokens, limit=128)
    assert set(done) == set(tokens) and len(set(done.values())) == 1
