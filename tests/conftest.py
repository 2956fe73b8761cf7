"""Shared fixtures: a REAL etcd (started once per test session, stopped by PID)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shoal.testing.etcd_server import EtcdCluster


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
