"""Shoal's public test kit.

* :class:`FakeClock` — a clock the test moves: a 30-second lease expires in
  microseconds (:class:`FixedRandom` pins the retry jitter);
* :class:`FaultyStore` — wraps any store; cut, blackhole or slow one link;
* :class:`SimCluster` — real nodes on one memory store and a fake clock;
* :class:`StoreConformance` / :class:`StoreHarness` — the store conformance
  suite: a third-party backend subclasses it to prove it behaves like etcd;
* :mod:`shoal.testing.pytest_plugin` — fixtures for all of the above
  (``pytest_plugins = ["shoal.testing.pytest_plugin"]`` in ``conftest.py``);
* :mod:`shoal.testing.etcd_server` — start and stop real etcd processes.

``StoreConformance`` and ``StoreHarness`` need pytest; they are imported on
first use, so ``import shoal.testing`` does not import pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.testing.clock import FakeClock, FixedRandom
from shoal.testing.cluster import SimCluster
from shoal.testing.faulty import FaultyStore

if TYPE_CHECKING:
    from shoal.testing.conformance import StoreConformance, StoreHarness

__all__ = [
    "FakeClock",
    "FaultyStore",
    "FixedRandom",
    "SimCluster",
    "StoreConformance",
    "StoreHarness",
]


def __getattr__(name: str) -> Any:
    if name in ("StoreConformance", "StoreHarness"):
        from shoal.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'shoal.testing' has no attribute {name!r}")
