"""Shoal's pytest plugin: shared fixtures for stores and fake-clock clusters.

Enable it in your ``conftest.py`` (Shoal's own tests do the same)::

    pytest_plugins = ["shoal.testing.pytest_plugin"]

It needs ``pytest-asyncio`` in auto mode (``asyncio_mode = "auto"``).

Fixtures (``function`` scope unless said otherwise):

``fake_clock``
    a fresh :class:`~shoal.testing.FakeClock`.
``memory_store`` / ``sqlite_store`` / ``etcd_store`` / ``postgres_store``
    an open store of that backend (sqlite in ``tmp_path``; etcd on the
    session's etcd under a fresh key prefix; postgres in a fresh schema),
    closed after the test.
``memory_harness`` / ``sqlite_harness`` / ``etcd_harness`` / ``postgres_harness``
    a :class:`~shoal.testing.conformance.StoreHarness` for that backend, the
    ``harness`` a :class:`~shoal.testing.StoreConformance` subclass needs.
``etcd_cluster`` / ``etcd_endpoints`` (session scope)
    ONE real single-member etcd on 127.0.0.1 (free ports) for the whole test
    session, started on first use and stopped by PID at the end.
``pg_server`` / ``pg_dsn`` (session scope)
    ONE real PostgreSQL server on 127.0.0.1 (free port), likewise;
    ``postgres_store`` / ``postgres_harness`` use it, each in a schema of its own.
``cluster_factory``
    ``cluster_factory(app, **defaults)`` builds a :class:`~shoal.testing.SimCluster`
    (or the class the ``sim_cluster_class`` fixture returns: override that
    fixture in a module to use a subclass with other defaults); every cluster
    made is closed after the test.
``fixed_jitter``
    pins every retry back-off to half its ceiling (deterministic waits).

Adding a backend: define ``<name>_store`` and ``<name>_harness`` fixtures
the same way (in a conftest or another plugin) and add ``<name>`` to the
parameters of the conformance test class.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from shoal.cli._etcd_server import EtcdCluster
from shoal.runtime.app import App
from shoal.store.memory import MemoryStore
from shoal.store.protocol import Store
from shoal.testing.clock import FakeClock, FixedRandom
from shoal.testing.cluster import SimCluster
from shoal.testing.conformance import StoreHarness

if TYPE_CHECKING:
    from shoal.testing.pg_server import PgServer

ClusterFactory = Callable[..., SimCluster]


# -- etcd (one per test session) ------------------------------------------------
@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """One single-member etcd on 127.0.0.1 (free ports) for the whole session."""
    cluster = EtcdCluster(members=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def etcd_endpoints(etcd_cluster: EtcdCluster) -> list[str]:
    """The client URLs of the session's etcd."""
    return list(etcd_cluster.endpoints)


# -- PostgreSQL (one per test session) ---------------------------------------------
@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server on 127.0.0.1 (free port) for the whole session."""
    from shoal.testing.pg_server import PgServer

    with PgServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_dsn(pg_server: PgServer) -> str:
    """The DSN of the session's PostgreSQL."""
    return pg_server.dsn()


def _pg_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


# -- stores ------------------------------------------------------------------------
@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def memory_store(fake_clock: FakeClock) -> AsyncIterator[MemoryStore]:
    """A :class:`MemoryStore` on ``fake_clock``."""
    store = MemoryStore(fake_clock)
    yield store
    await store.aclose()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A :class:`~shoal.store.sqlite.SqliteStore` on a new file in ``tmp_path``."""
    from shoal.store.sqlite import SqliteStore

    store = await SqliteStore.open(tmp_path / "store.db")
    yield store
    await store.aclose()


def _etcd_prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def etcd_store(etcd_endpoints: list[str]) -> AsyncIterator[Store]:
    """An :class:`~shoal.store.etcd.EtcdStore` on the session's etcd, under a
    key prefix of its own (tests do not see each other's keys)."""
    from shoal.store.etcd import EtcdStore

    store = await EtcdStore.open(etcd_endpoints, prefix=_etcd_prefix())
    yield store
    await store.aclose()


@pytest.fixture
async def postgres_store(pg_dsn: str) -> AsyncIterator[Store]:
    """A :class:`~shoal.store.postgres.PostgresStore` on the session's server,
    in a schema of its own."""
    from shoal.store.postgres import PostgresStore

    store = await PostgresStore.open(pg_dsn, schema=_pg_schema())
    yield store
    await store.aclose()


# -- conformance harnesses (one per backend) ----------------------------------------------
@pytest.fixture
async def memory_harness(fake_clock: FakeClock) -> AsyncIterator[StoreHarness]:
    shared = MemoryStore(fake_clock)

    async def open_memory() -> Store:
        return shared.client()  # a separate client object sharing the store's data

    harness = StoreHarness("memory", open_memory, clock=fake_clock)
    yield harness
    await harness.aclose()
    await shared.aclose()


@pytest.fixture
async def sqlite_harness(tmp_path: Path) -> AsyncIterator[StoreHarness]:
    from shoal.store.sqlite import SqliteStore

    path = tmp_path / "conformance.db"

    async def open_sqlite() -> Store:
        return await SqliteStore.open(path)

    harness = StoreHarness("sqlite", open_sqlite)
    yield harness
    await harness.aclose()


@pytest.fixture
async def etcd_harness(etcd_endpoints: list[str]) -> AsyncIterator[StoreHarness]:
    from shoal.store.etcd import EtcdStore

    prefix = _etcd_prefix()

    async def open_etcd() -> Store:
        return await EtcdStore.open(etcd_endpoints, prefix=prefix)

    harness = StoreHarness("etcd", open_etcd)
    yield harness
    await harness.aclose()


@pytest.fixture
async def postgres_harness(pg_dsn: str) -> AsyncIterator[StoreHarness]:
    from shoal.store.postgres import PostgresStore

    schema = _pg_schema()

    async def open_postgres() -> Store:
        return await PostgresStore.open(pg_dsn, schema=schema)

    harness = StoreHarness("postgres", open_postgres)
    yield harness
    await harness.aclose()


# -- fake-clock clusters --------------------------------------------------------------
@pytest.fixture
def sim_cluster_class() -> type[SimCluster]:
    """The class ``cluster_factory`` builds. Override in a test module::

    @pytest.fixture
    def sim_cluster_class() -> type[SimCluster]:
        return MyCluster          # a SimCluster subclass (other TTL, helpers)
    """
    return SimCluster


@pytest.fixture
async def cluster_factory(
    sim_cluster_class: type[SimCluster],
) -> AsyncIterator[ClusterFactory]:
    """``cluster_factory(app, **defaults)`` -> a new cluster, closed after the test."""
    made: list[SimCluster] = []

    def make(app: App, **defaults: Any) -> SimCluster:
        cluster = sim_cluster_class(app, **defaults)
        made.append(cluster)
        return cluster

    yield make
    for cluster in reversed(made):
        await cluster.aclose()


@pytest.fixture
def fixed_jitter(monkeypatch: pytest.MonkeyPatch) -> FixedRandom:
    """Every retry back-off waits exactly half its ceiling during the test."""
    source = FixedRandom(0.5)
    monkeypatch.setattr("shoal.aio._retry._random", source)
    return source
