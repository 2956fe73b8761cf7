"""``shoal status`` and ``shoal node drain`` against real node processes.

``status --json`` must print exactly what ``GET /cluster`` answers for the same
node (fields that change every instant — the view's time and the answering
node's keep-alive ages — are masked), whether the node is given with ``--url``
or found through the store named by ``--config``."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.cli.status import fetch_view
from shoal.config import load_config
from shoal.runtime.app import App
from shoal.runtime.thread import NodeThread
from shoal.testing.procs import ProcCluster

pytestmark = pytest.mark.slow

TOKEN = "status-test-token-0123456789-abcdef"
VOLATILE_SESSION = ("last_ack_age", "remaining", "keepalive_latency")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


def masked(view: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(view)
    out.pop("time", None)
    for node in out.get("nodes", []):
        for key in VOLATILE_SESSION:
            (node.get("session") or {}).pop(key, None)
    return out


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
        node.wait_for(r"joined cluster", timeout=60)  # the first one creates the SQLite file

    def settled(self, names: list[str], timeout: float = 60) -> dict[str, Any]:
        """Wait until every node sees all of them, every duty owned, nothing moving."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            try:
                view = fetch_view(self.urls[names[0]], timeout=2)
            except Exception:
                time.sleep(0.1)
                continue
            key = (sorted(n["name"] for n in view["nodes"]),
                   sorted((d["name"], d["owner"]) for d in view["duties"]),
                   view["store"]["revision"])
            if key != last:
                last, since = key, time.monotonic()
            if (key[0] == sorted(names) and all(o for _, o in key[1])
                    and time.monotonic() - since > 1.5):
                return view
            time.sleep(0.1)
        raise AssertionError(f"cluster did not settle: {last}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    base = {
        "cluster": "status",
        "node": {"roles": ["ingest"]},
        "store": {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "shoal.db")}},
        "timings": {"preset": "local", "rebalance_delay": 1},
        "params": {"engines": ["e1"], "interval": 3600},  # one write per duty, then quiet
        "http": {"host": "127.0.0.1", "token": TOKEN},
        "reaper": {"enabled": True},
    }
    with ProcCluster(tmp_path, base, app="shoal.cli.demo_app:app") as procs:
        yield Cluster(procs)


def _agree(run: list[str], url: str) -> None:
    """status --json (with ``run`` options) == GET /cluster, retried while the view moves."""
    for _ in range(10):
        before = masked(fetch_view(url))
        res = shoal("status", "--json", *run)
        assert res.returncode == 0, res.stderr
        after = masked(fetch_view(url))
        if before == after:
            assert masked(json.loads(res.stdout)) == before
            return
    raise AssertionError("the cluster view never held still")


def test_status_json_is_get_cluster(cluster: Cluster) -> None:
    cluster.spawn("n1")
    cluster.spawn("n2")
    view = cluster.settled(["n1", "n2"])
    assert view["node_count"] == 2
    _agree(["--url", cluster.urls["n1"]], cluster.urls["n1"])
    _agree(["--url", cluster.urls["n2"] + "/"], cluster.urls["n2"])  # a dashboard URL works
    _agree(["--config", str(cluster.configs["n2"])], cluster.urls["n1"])  # first announced

    res = shoal("status", "--url", cluster.urls["n1"])
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert text.startswith("Cluster seen by n1 (ACTIVE, ready)")
    assert f"nodes 2 · leader {view['leader']} ·" in text
    for duty in view["duties"]:
        assert any(line.split()[:2] == [duty["name"], duty["owner"]]
                   for line in text.splitlines()), duty
    for name, url in cluster.urls.items():
        assert any(line.startswith(name) and url in line for line in text.splitlines())

    res = shoal("status", "--url", cluster.urls["n1"], "--watch", "--count", "2", "--json")
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and len(lines) == 2
    assert all(json.loads(line)["node_count"] == 2 for line in lines)


def test_node_drain_via_http_and_via_store(cluster: Cluster) -> None:
    for name in ("n1", "n2", "n3"):
        cluster.spawn(name)
    cluster.settled(["n1", "n2", "n3"])
    url = cluster.urls["n1"]

    refused = shoal("node", "drain", "n2", "--url", url)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    assert len(refused.stderr.strip().splitlines()) == 1

    res = shoal("node", "drain", "n2", "--url", url, "--token", TOKEN)
    assert res.returncode == 0, res.stderr
    assert "n2 left the cluster" in res.stdout
    view = cluster.settled(["n1", "n3"])
    assert all(d["owner"] in ("n1", "n3") for d in view["duties"])

    res = shoal("node", "drain", "n3", "--config", str(cluster.configs["n1"]))
    assert res.returncode == 0, res.stderr
    assert "control key written" in res.stdout and "n3 left the cluster" in res.stdout
    view = cluster.settled(["n1"])
    assert {d["owner"] for d in view["duties"]} == {"n1"}

    gone = shoal("node", "drain", "n3", "--config", str(cluster.configs["n1"]))
    assert gone.returncode == 1 and "no live node named 'n3'" in gone.stderr


def test_status_falls_back_to_the_store(tmp_path: Path) -> None:
    """No node serves HTTP: membership and owners are read from the store."""
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump({
        "cluster": "quiet", "node": {"name": "solo"}, "timings": {"preset": "local"},
        "store": {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "s.db")}},
        "reaper": {"enabled": False},
    }))
    app = App("quiet")

    @app.duty("chores")
    async def chores(ctx: Any) -> None:
        await ctx.stopping.wait()

    with NodeThread(app, load_config(config_file)) as node:
        deadline = time.monotonic() + 20
        while set(node.owners) != {"leader", "chores"} and time.monotonic() < deadline:
            time.sleep(0.05)
        res = shoal("status", "--json", "--config", str(config_file))
        assert res.returncode == 0, res.stderr
        view = json.loads(res.stdout)
        assert view["source"] == "store" and view["leader"] == "solo"
        assert view["node_count"] == 1 and view["nodes"][0]["duties"] == ["chores", "leader"]
        assert {d["name"]: d["owner"] for d in view["duties"]} == {"chores": "solo",
                                                                  "leader": "solo"}
        text = shoal("status", "--config", str(config_file)).stdout
        assert text.startswith("Cluster read from the store")
        assert "solo: lease expires in" in text


def test_status_errors_are_one_line(tmp_path: Path) -> None:
    results = []
    res = shoal("status")
    results.append(res)
    assert res.returncode == 2 and res.stderr.startswith("error: say where the cluster is")
    port = free_port()  # nothing listens there
    res = shoal("status", "--url", f"http://127.0.0.1:{port}")
    results.append(res)
    assert res.returncode == 1 and res.stderr.startswith(f"error: cannot reach http://127.0.0.1:{port}")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"store": {"sqlite": {"path": str(tmp_path / "no.db")}}}))
    res = shoal("status", "--config", str(missing))
    results.append(res)
    assert res.returncode == 2 and "does not exist" in res.stderr
    for r in results:  # every one: a single "error:" line, no traceback, nothing on stdout
        assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
        assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr and not r.stdout
    assert not (tmp_path / "no.db").exists()
