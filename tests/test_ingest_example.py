"""examples/ingest, for real: a redis-server, two ingest nodes and a frontend
(``shoal run``, one SQLite store), 2,000 messages, and a ``kill -9`` of an
ingest node in the middle of the stream. Afterwards: the stream has nothing
pending, every message is in exactly one ``processed:{p}`` set (none lost,
none counted twice), and the fenced aggregates in the replicated state add up
to the whole stream.

Every process is ended by PID (redis-server, the nodes and their reapers) and
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis  # in the [test] extra: never skipped
import yaml

from shoal.testing.procs import REPO, ProcCluster, deep_merge

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "ingest"
APP = f"{EXAMPLE / 'app.py'}:app"
N = 2000
P = 8
STREAM = "ingest:events"
GROUP = "ingest"

sys.path.insert(0, str(EXAMPLE))
from producer import produce, value_of  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:g} s (last: {last!r})")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:  # .ci/run installs it: never skip silently in CI
        pytest.fail("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        eventually(lambda: _pings(client), 15, "redis-server answering")
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def node_config(name: str, **overrides: Any) -> dict[str, Any]:
    config = yaml.safe_load((EXAMPLE / f"{name}.yaml").read_text())
    return deep_merge(config, overrides)


def state_aggregates(config_path: Path) -> dict[str, dict[str, Any]]:
    res = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "state", "get", "--config", str(config_path),
         "--namespace", "aggregates", "--documents-only"],
        cwd=str(REPO), capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 0, res.stderr
    snapshot = json.loads(res.stdout)
    return {d["key"]: d["value"] for d in snapshot["documents"]
            if d["namespace"] == "aggregates"}


def test_ingest_example(tmp_path: Path, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    params = {"redis_url": redis_url, "claim_idle_ms": 1000, "aggregate_interval": 0.3,
              "work_ms": 2}
    with ProcCluster(tmp_path, {}, app=APP) as cluster:
        nodes = {}
        for name in ("frontend", "ingest-1", "ingest-2"):
            extra: dict[str, Any] = {"params": params}
            if name == "frontend":
                extra["http"] = {"port": free_port()}
            config = node_config(name, **extra)
            node = cluster.node(config["node"]["name"], **config)
            node.start()
            # one after the other: the first creates the SQLite file
            node.wait_for(r"joined cluster", timeout=30)
            nodes[name] = node

        # every ingest worker connected (2 per ingest node) before producing
        for name in ("ingest-1", "ingest-2"):
            eventually(lambda n=name: nodes[n].output().count("reading ingest:events") >= 2, 30,
                       f"{name}'s two consumers")
        assert "reading ingest:events" not in nodes["frontend"].output()

        asyncio.run(produce(redis_url, N // 2))
        eventually(lambda: _processed(r) >= N // 4, 30, "a quarter of the messages processed")
        victim = nodes["ingest-1"]
        victim.kill9()  # in the middle: some of its messages are delivered, not acknowledged
        at_kill = _processed(r)
        orphaned = sum(c["pending"] for c in r.xinfo_consumers(STREAM, GROUP)
                       if c["name"].startswith("ingest-1-"))
        assert orphaned > 0, "the killed consumers held no pending message"
        asyncio.run(produce(redis_url, N - N // 2, start=N // 2))
        assert at_kill < N

        def drained() -> bool:
            pending = r.xpending(STREAM, GROUP)["pending"]
            return pending == 0 and _processed(r) == N and r.xlen(STREAM) == N

        eventually(drained, 45, "the stream drained (nothing pending, every message recorded)")
        assert "reclaimed" in nodes["ingest-2"].output()  # XAUTOCLAIM took the dead's messages

        # exactly once: every id in exactly one set, in the right one, sums as produced
        seen: dict[int, int] = {}
        for p in range(P):
            for member in r.smembers(f"processed:{p}"):
                mid = int(member)
                assert mid % P == p, f"message {mid} recorded in partition {p}"
                assert mid not in seen, f"message {mid} in processed:{seen[mid]} and :{p}"
                seen[mid] = p
        assert sorted(seen) == list(range(N)), "lost messages"
        for p in range(P):
            expected = sum(value_of(i) for i in range(p, N, P))
            assert int(r.get(f"sum:{p}") or 0) == expected, f"sum:{p} counted a message twice"

        # the fenced aggregates in the replicated state, once the owners settled
        config_path = nodes["frontend"].config_path

        def complete() -> dict[str, dict[str, Any]] | None:
            docs = state_aggregates(config_path)
            ok = (sorted(docs) == sorted(f"p{p}" for p in range(P))
                  and sum(d["count"] for d in docs.values()) == N)
            return docs if ok else None

        docs = eventually(complete, 20, "aggregates complete in the replicated state")
        for p in range(P):
            assert docs[f"p{p}"]["count"] == len(range(p, N, P))
            assert docs[f"p{p}"]["sum"] == int(r.get(f"sum:{p}"))
            assert docs[f"p{p}"]["node"] == "ingest-2"  # the only ingest node left
        redeliveries = sum(int(r.get(f"dup:{p}") or 0) for p in range(P))
        print(f"processed {N} messages; {at_kill} before the kill, {orphaned} orphaned; "
              f"{redeliveries} redeliveries absorbed by the processed sets")
        for node in cluster.nodes:
            if node.alive:
                with contextlib.suppress(Exception):
                    node.terminate()
    r.close()


def _processed(r: Any) -> int:
    return sum(int(r.scard(f"processed:{p}")) for p in range(P))
