"""The store conformance suite on every backend: memory, sqlite, a REAL etcd and a REAL
PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.store.etcd import EtcdStore
from shoal.store.memory import MemoryStore
from shoal.store.postgres import PostgresStore
from shoal.store.protocol import Store
from shoal.store.sqlite import SqliteStore
from shoal.testing.clock import FakeClock
from shoal.testing.conformance import StoreConformance, StoreHarness


class TestConformance(StoreConformance):
    @pytest.fixture(params=["memory", "sqlite", "etcd", "postgres"])
    async def harness(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[StoreHarness]:
        backend = request.param
        if backend == "memory":
            clock = FakeClock()
            shared = MemoryStore(clock)

            async def open_memory() -> Store:
                return shared

            h = StoreHarness("memory", open_memory, clock=clock)
        elif backend == "sqlite":
            path = tmp_path / "store.db"

            async def open_sqlite() -> Store:
                return await SqliteStore.open(path)

            h = StoreHarness("sqlite", open_sqlite)
        elif backend == "postgres":
            dsn: str = request.getfixturevalue("pg_dsn")

            async def open_postgres() -> Store:
                return await PostgresStore.open(dsn, schema="conformance")

            h = StoreHarness("postgres", open_postgres)
        else:
            endpoints: list[str] = request.getfixturevalue("etcd_endpoints")

            async def open_etcd() -> Store:
                return await EtcdStore.open(endpoints, prefix="/conformance")

            h = StoreHarness("etcd", open_etcd)
        yield h
        await h.aclose()
