"""Shared fixtures: a REAL etcd and a REAL PostgreSQL (started once per test session,
stopped by PID)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shoal.testing.etcd_server import EtcdCluster
from shoal.testing.pg_server import PgServer


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
    return list(etcd_cluster.endpoints)


# -- PostgreSQL (self-contained: easy to move into the test-kit plugin) --------
@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server on 127.0.0.1 (free port) for the whole session."""
    with PgServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_dsn(pg_server: PgServer) -> str:
    return pg_server.dsn()
