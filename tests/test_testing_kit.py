"""The public test kit: shoal.testing exports and the pytest plugin's fixtures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shoal.testing
from shoal.aio._retry import Backoff
from shoal.errors import StoreUnavailable
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.store.memory import MemoryStore
from shoal.store.protocol import Store
from shoal.testing import FakeClock, FaultyStore, SimCluster, StoreConformance, StoreHarness
from shoal.testing.clock import FixedRandom


def test_the_kit_exports_what_its_docstrings_promise() -> None:
    assert set(shoal.testing.__all__) == {
        "FakeClock", "FaultyStore", "FixedRandom", "SimCluster", "StoreConformance",
        "StoreHarness",
    }
    for name in shoal.testing.__all__:
        assert getattr(shoal.testing, name).__name__ == name
    assert StoreConformance.__module__ == "shoal.testing.conformance"
    assert StoreHarness.__module__ == "shoal.testing.conformance"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = shoal.testing.Nope


def test_importing_the_kit_does_not_import_pytest() -> None:
    code = "import sys, shoal.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_production_code_reaches_the_etcd_launcher_outside_the_kit() -> None:
    from shoal.cli import _etcd_server
    from shoal.testing import etcd_server

    assert etcd_server.EtcdCluster is _etcd_server.EtcdCluster
    source = (_etcd_server.__file__ or "").replace("\\", "/")
    assert "/shoal/cli/" in source
    etcd_cmd = Path(sys.modules["shoal.cli"].__path__[0], "etcd_cmd.py").read_text()
    assert "shoal.testing" not in etcd_cmd


@pytest.fixture(params=["memory_store", "sqlite_store", "etcd_store", "postgres_store"])
def any_store(request: pytest.FixtureRequest) -> Store:
    store: Store = request.getfixturevalue(request.param)
    return store


async def test_store_fixtures_give_an_open_store(any_store: Store) -> None:
    store = any_store
    rev = await store.put("kit/a", b"1")
    kv = await store.get("kit/a")
    assert kv is not None and kv.value == b"1" and kv.mod_revision == rev
    assert [kv.key for kv in (await store.range("kit/")).kvs] == ["kit/a"]


async def test_memory_store_fixture_runs_on_the_fake_clock(
    memory_store: MemoryStore, fake_clock: FakeClock
) -> None:
    lease = await memory_store.grant(5)
    await memory_store.put("kit/e", b"1", lease=lease.id)
    await fake_clock.advance(4.9)
    assert "kit/e" in memory_store.snapshot("kit/")
    await fake_clock.advance(0.2)
    assert memory_store.snapshot("kit/") == {}


async def test_memory_snapshot_ignores_a_simulated_outage() -> None:
    store = MemoryStore(FakeClock())
    await store.put("a/1", b"x")
    await store.put("b/1", b"y")
    store.unavailable = True
    assert list(store.snapshot("a/")) == ["a/1"]
    assert list(store.snapshot()) == ["a/1", "b/1"]


async def test_cluster_factory_builds_and_closes_sim_clusters(cluster_factory: Any) -> None:
    app = App("kit")

    @app.duty("job")
    async def job(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    c = cluster_factory(app, ttl=4)
    assert type(c) is SimCluster and c.defaults["ttl"] == 4
    a = await c.add("a")
    assert isinstance(c.links["a"], FaultyStore)
    await c.run(1.0)
    assert c.owners() == {"job": "a", "leader": "a"}
    assert c.running() == {"job": ["a"], "leader": ["a"]}
    assert a.settings.ttl == 4


def test_fixed_jitter_pins_every_backoff(fixed_jitter: FixedRandom) -> None:
    assert fixed_jitter.random() == 0.5
    assert Backoff(1.0, 8.0).next_delay() == 0.5


@pytest.mark.parametrize("fault", ["blackhole", "drop_acks"])
async def test_sim_cluster_closes_with_a_link_still_broken(fault: str) -> None:
    app = App("sim")

    @app.duty("job")
    async def job(ctx: DutyContext) -> None:
        await ctx.stopping.wait()

    c = SimCluster(app)
    await c.add("a")
    await c.add("b")
    await c.run(3.0)
    getattr(c.links["a"], fault)()  # calls on a's link now hang until healed
    await c.run(1.0)
    async with asyncio.timeout(10):  # the old aclose waited forever on a's link
        await c.aclose()
    with pytest.raises(StoreUnavailable):  # the broken link was aborted, not healed
        await c.links["a"].get("nodes/a")
    assert c.links["b"].mode == "ok"  # the healthy node closed over a healthy link
