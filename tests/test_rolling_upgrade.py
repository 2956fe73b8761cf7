"""A rolling upgrade of 3 real node processes (SQLite store) with
``node.prefer_newest_version``: each node is stopped (SIGTERM: drain) and
started again with the app at version 2.0. Every singleton leaves a live owner
at most once, and they all end on a 2.0 node."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shoal.cli.status import fetch_view
from shoal.testing.procs import ProcCluster

pytestmark = pytest.mark.slow
SINGLETONS = [f"s{i}" for i in range(6)]
APP = '''
import os
from shoal.runtime.app import App

app = App("upgrade", version=os.environ["UPGRADE_APP_VERSION"])


async def idle(ctx):
    await ctx.stopping.wait()


for i in range(6):
    app.duty(f"s{i}")(idle)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Watcher:
    """Polls one live node's view; counts moves away from a still-live owner."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self.last: dict[str, str] = {}
        self.voluntary: Counter[str] = Counter()
        self.view: dict[str, Any] = {}

    def poll(self) -> None:
        for url in list(self.urls.values()):
            try:
                view = fetch_view(url, timeout=2)
            except Exception:
                continue
            if view.get("phase") != "ACTIVE":
                continue
            live = {n["name"] for n in view["nodes"]}
            for duty in view["duties"]:
                name, owner = duty["name"], duty["owner"]
                if name not in SINGLETONS or not owner:
                    continue
                before = self.last.get(name)
                if before is not None and owner != before and before in live:
                    self.voluntary[name] += 1
                self.last[name] = owner
            for name, owner in list(self.last.items()):
                if owner not in live:
                    self.last[name] = "(gone)"  # its owner stopped: the next move is forced
            self.view = view
            return

    def settle(self, names: list[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        key, since = None, time.monotonic()
        while time.monotonic() < deadline:
            self.poll()
            view = self.view
            now = (sorted((n["name"], n.get("app_version")) for n in view.get("nodes", [])),
                   sorted((d["name"], d["owner"] or "") for d in view.get("duties", [])))
            if now != key:
                key, since = now, time.monotonic()
            owned = all(o for _, o in now[1])
            if ([n for n, _ in now[0]] == sorted(names) and owned
                    and time.monotonic() - since > 2.5):
                return view
            time.sleep(0.05)
        raise AssertionError(f"did not settle: {key}")


def test_rolling_upgrade_moves_each_singleton_at_most_once(tmp_path: Path) -> None:
    app_file = tmp_path / "upgrade_app.py"
    app_file.write_text(APP)
    base = {
        "cluster": "upgrade",
        "node": {"prefer_newest_version": True},
        "store": {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "shoal.db")}},
        "timings": {"preset": "local", "rebalance_delay": 1},
        "http": {"host": "127.0.0.1"},
        "reaper": {"enabled": True},
    }
    names = ["n1", "n2", "n3"]
    watcher = Watcher()
    with ProcCluster(tmp_path, base, app=f"{app_file}:app") as procs:

        def start(name: str, version: str) -> Any:
            port = free_port()
            proc = procs.node(name, http={"port": port})
            proc.env = {"UPGRADE_APP_VERSION": version}
            proc.start()
            proc.wait_for(r"joined cluster", timeout=60)
            watcher.urls[name] = f"http://127.0.0.1:{port}"
            return proc

        running = {name: start(name, "1.0") for name in names}
        watcher.settle(names)
        for i, name in enumerate(names):
            running[name].terminate()  # SIGTERM: drain, hand over, exit
            assert running[name].proc.wait(30) == 0
            del watcher.urls[name]
            watcher.settle([n for n in names if n != name])
            running[name] = start(name, "2.0")
            view = watcher.settle(names)
            versions = {n["name"]: n["app_version"] for n in view["nodes"]}
            assert versions[name] == "2.0"
            owners = {d["name"]: d["owner"] for d in view["duties"]}
            if i == 0:  # the first upgraded node draws every singleton
                assert {owners[s] for s in SINGLETONS} == {name}
            assert all(versions[owners[s]] == "2.0" for s in SINGLETONS)
    assert max(watcher.voluntary.values(), default=0) <= 1, watcher.voluntary
    assert sum(watcher.voluntary.values()) >= 1
