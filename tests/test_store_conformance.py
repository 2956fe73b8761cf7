"""The store conformance suite on every backend: memory, sqlite, a REAL etcd and a REAL
PostgreSQL.

The harness of each backend is a fixture of shoal.testing.pytest_plugin
(``<backend>_harness``); a new backend adds its fixture and its name below."""

from __future__ import annotations

import pytest

from shoal.testing import StoreConformance, StoreHarness

BACKENDS = ["memory", "sqlite", "etcd", "postgres"]


class TestConformance(StoreConformance):
    @pytest.fixture(params=BACKENDS)
    def harness(self, request: pytest.FixtureRequest) -> StoreHarness:
        harness: StoreHarness = request.getfixturevalue(f"{request.param}_harness")
        return harness
