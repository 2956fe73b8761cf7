"""``shoal node cordon`` / ``uncordon`` against real node processes (SQLite store).

A cordoned node keeps serving and keeps the duties it owns, but gets no new
ones: when the other node drains, its duties stay free rather than land on the
cordoned node. Uncordoning lets them come."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.cli.status import fetch_view
from shoal.testing.procs import ProcCluster

pytestmark = pytest.mark.slow
ENGINES = [f"e{i}" for i in range(6)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


class Cluster:
    def __init__(self, procs: ProcCluster) -> None:
        self.procs = procs
        self.urls: dict[str, str] = {}
        self.configs: dict[str, Path] = {}

    def spawn(self, name: str) -> None:
        port = free_port()
        self.urls[name] = f"http://127.0.0.1:{port}"
        node = self.procs.spawn(name, node={"address": self.urls[name]}, http={"port": port})
        self.configs[name] = node.config_path
        node.wait_for(r"joined cluster", timeout=60)

    def settled(self, url: str, nodes: list[str], timeout: float = 60) -> dict[str, Any]:
        """The view once it shows exactly ``nodes`` and has not changed for 2 s."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            try:
                view = fetch_view(url, timeout=2)
            except Exception:
                time.sleep(0.1)
                continue
            key = (sorted((n["name"], n.get("cordoned")) for n in view["nodes"]),
                   sorted((d["name"], d["owner"] or "") for d in view["duties"]))
            if key != last:
                last, since = key, time.monotonic()
            if sorted(n for n, _ in key[0]) == sorted(nodes) and time.monotonic() - since > 2:
                return view
            time.sleep(0.1)
        raise AssertionError(f"cluster did not settle: {last}")


def imports(view: dict[str, Any]) -> dict[str, str | None]:
    return {d["name"]: d["owner"] for d in view["duties"] if d["name"].startswith("import:")}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    base = {
        "cluster": "cordon",
        "node": {"roles": ["ingest"]},
        "store": {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "shoal.db")}},
        "timings": {"preset": "local", "rebalance_delay": 1},
        "params": {"engines": ENGINES, "interval": 3600},
        "http": {"host": "127.0.0.1"},
        "reaper": {"enabled": True},
    }
    with ProcCluster(tmp_path, base, app="shoal.cli.demo_app:app") as procs:
        yield Cluster(procs)


def test_cordon_keeps_duties_takes_no_new_ones_and_uncordon_undoes_it(cluster: Cluster) -> None:
    cluster.spawn("n1")
    cluster.spawn("n2")
    before = imports(cluster.settled(cluster.urls["n1"], ["n1", "n2"]))
    held = {d for d, o in before.items() if o == "n2"}
    assert held and len(held) < len(ENGINES)  # balanced: both nodes own some

    res = shoal("node", "cordon", "n2", "--config", str(cluster.configs["n1"]))
    assert res.returncode == 0, res.stderr
    assert "cordon of n2: done" in res.stdout
    view = cluster.settled(cluster.urls["n2"], ["n1", "n2"])
    assert {n["name"]: n["cordoned"] for n in view["nodes"]} == {"n1": False, "n2": True}
    assert imports(view) == before  # nothing moved

    res = shoal("node", "drain", "n1", "--config", str(cluster.configs["n1"]))
    assert res.returncode == 0, res.stderr
    view = cluster.settled(cluster.urls["n2"], ["n2"])
    after = imports(view)
    assert {d for d, o in after.items() if o == "n2"} == held  # kept, nothing new
    assert all(after[d] is None for d in before if d not in held)  # free, not on n2
    assert view["phase"] == "ACTIVE"  # still serving

    res = shoal("node", "uncordon", "n2", "--config", str(cluster.configs["n2"]))
    assert res.returncode == 0, res.stderr
    assert "uncordon of n2: done" in res.stdout
    view = cluster.settled(cluster.urls["n2"], ["n2"])
    assert view["nodes"][0]["cordoned"] is False
    assert set(imports(view).values()) == {"n2"}  # it takes the free duties now
    again = shoal("node", "uncordon", "n2", "--config", str(cluster.configs["n2"]))
    assert "it was not cordoned" in again.stdout
    gone = shoal("node", "cordon", "nobody", "--config", str(cluster.configs["n2"]))
    assert gone.returncode == 1 and "no live node named 'nobody'" in gone.stderr
    assert "Traceback" not in gone.stderr
