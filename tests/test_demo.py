"""``shoal demo`` end to end: 3 real node processes on sqlite, driven through the
demo's stdin (not a terminal), observed with ``shoal status --json`` and
``/cluster``; SIGINT must leave no process behind.

:class:`DemoRun` is also used by ``tests/test_browser.py``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.cli._procfs import pid_alive
from shoal.cli.status import NodeApiError, fetch_view

pytestmark = pytest.mark.slow

RESTRICTED = "demo-3"  # can_lead: false, rule-engine disabled
DUTIES = {
    "leader", "certificate-renewal", "rule-engine", "task-manager", "notification-manager",
    "nightly-report",
    *(f"{kind}:{engine}" for kind in ("import", "event-import", "history-cleanup")
      for engine in ("engine-a", "engine-b")),
}
FAILOVER_BOUND = 10.0  # seconds; the reaper makes it milliseconds on an idle machine



class DemoRun:
    """``shoal demo`` as a subprocess with a pipe for stdin; every process it
    started is killed by PID at :meth:`cleanup`."""

    def __init__(
        self, tmp: Path, *, nodes: int = 3, duration: float = 300, extra: tuple[str, ...] = (),
    ) -> None:
        self.workdir = tmp / "demo"
        self.out_path = tmp / "demo.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL__")}
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli.main", "demo", "--nodes", str(nodes),
                 "--workdir", str(self.workdir), "--duration", str(duration),
                 "--interval", "0.5", *extra],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                env={**env, "PYTHONUNBUFFERED": "1"},
            )
        self.seen_pids: set[int] = set()

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_for(self, pattern: str, *, since: int = 0, timeout: float = 90) -> re.Match[str]:
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output(), since)
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited ({self.proc.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in {timeout:g} s:\n{self.output()[-4000:]}")
            time.sleep(0.05)

    def send(self, line: str) -> int:
        """Type a command; returns the output offset before it."""
        mark = len(self.output())
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return mark

    def url(self, name: str) -> str:
        config = yaml.safe_load((self.workdir / f"{name}.yaml").read_text())
        return str(config["node"]["address"])

    def config(self, name: str) -> Path:
        return self.workdir / f"{name}.yaml"

    def pids(self) -> set[int]:
        """Every node and reaper PID the demo reported or its nodes logged."""
        text = self.output()
        found = {int(p) for p in re.findall(r"\bpid (\d+)", text)}
        for log in self.workdir.glob("*.log"):
            found |= {int(p) for p in re.findall(r"reaper pid (\d+)", log.read_text())}
        self.seen_pids |= found
        return set(self.seen_pids)

    def view(self, name: str) -> dict[str, Any]:
        return fetch_view(self.url(name), timeout=3)

    def cleanup(self) -> None:
        pids = self.pids()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def demo_run(tmp_path: Path) -> Iterator[DemoRun]:
    run = DemoRun(tmp_path)
    try:
        yield run
    finally:
        run.cleanup()


def status_json(*args: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "status", "--json", *args],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 0, res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (AssertionError, NodeApiError) as exc:
            last = exc
        else:
            if result is not None and result is not False:
                return result
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:g} s: {last}")


def owners(view: dict[str, Any]) -> dict[str, str | None]:
    return {d["name"]: d["owner"] for d in view["duties"]}


def running_everywhere(run: DemoRun, names: list[str]) -> dict[str, list[str]]:
    """duty -> the nodes whose runner for it is running (from each node's own view)."""
    where: dict[str, list[str]] = {}
    for name in names:
        for local in run.view(name)["local_duties"]:
            if local["status"] == "running":
                where.setdefault(local["name"], []).append(name)
    return where


def import_doc(run: DemoRun, name: str) -> dict[str, Any]:
    token = yaml.safe_load(run.config(name).read_text())["http"]["token"]
    req = urllib.request.Request(run.url(name) + "/state/imports/engine-a",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        doc: dict[str, Any] = json.loads(resp.read())["value"]
    return doc


def api(run: DemoRun, name: str, method: str, path: str, body: Any = None) -> Any:
    token = yaml.safe_load(run.config(name).read_text())["http"]["token"]
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(run.url(name) + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def check_placement(view: dict[str, Any], live: list[str]) -> None:
    own = owners(view)
    assert set(own) == DUTIES
    assert all(own[d] in live for d in DUTIES), own
    assert own["rule-engine"] != RESTRICTED
    assert own["leader"] != RESTRICTED and view["leader"] == own["leader"]
    assert own["certificate-renewal"] == own["leader"]
    for engine in ("engine-a", "engine-b"):  # co-located with the importer
        assert own[f"event-import:{engine}"] == own[f"import:{engine}"]
        assert own[f"history-cleanup:{engine}"] == own[f"import:{engine}"]


def test_demo_places_fails_over_and_stops_cleanly(demo_run: DemoRun) -> None:
    run = demo_run
    run.wait_for(r"all 12 duties owned and placed")
    names = ["demo-1", "demo-2", "demo-3"]
    for name in names:
        assert f"dashboard {run.url(name)}/" in run.output()

    view = status_json("--url", run.url("demo-1"))
    assert view["node_count"] == 3 and sorted(n["name"] for n in view["nodes"]) == names
    assert sum(1 for n in view["nodes"] if n["leader"]) == 1
    check_placement(view, names)
    restricted = next(n for n in view["nodes"] if n["name"] == RESTRICTED)
    assert restricted["can_lead"] is False and "rule-engine" in restricted["disabled"]
    # every duty runs on exactly one node, as each node itself reports it
    def once_each() -> dict[str, list[str]] | None:
        w = running_everywhere(run, names)
        return w if set(w) == DUTIES and all(len(v) == 1 for v in w.values()) else None

    where = eventually(once_each, 15, "each duty running exactly once")
    assert all(where[d] == [owners(view)[d]] for d in where), where
    # the same view found through the store named by a node's config
    assert status_json("--config", str(run.config("demo-2")))["node_count"] == 3

    # a data-driven duty: a document of namespace sites appears, so does site:shop
    api(run, "demo-1", "PUT", "/state/sites/shop", {"host": "shop.example"})
    eventually(lambda: owners(status_json("--url", run.url("demo-2"))).get("site:shop"),
               15, "site:shop owned")
    api(run, "demo-1", "DELETE", "/state/sites/shop")
    eventually(lambda: "site:shop" not in owners(status_json("--url", run.url("demo-2"))),
               15, "site:shop gone")
    # the schedule ran (once per slot) and can be run now through the management API
    ran = api(run, "demo-1", "POST", "/schedules/nightly-report/run")
    assert ran["status"] == "requested"

    # the importer's fenced document in replicated state, as a node's API serves it
    before = import_doc(run, "demo-1")

    # kill the importer of engine-a and watch its duties (co-located ones too) move
    victim = owners(view)["import:engine-a"]
    assert victim is not None
    moved = {d for d, o in owners(view).items() if o == victim}
    survivors = [n for n in names if n != victim]
    mark = run.send(f"kill {victim.split('-')[1]}")
    run.wait_for(rf"killed {victim} with SIGKILL", since=mark, timeout=15)
    failover = run.wait_for(rf"failover: all {len(moved)} duties of {victim} owned again "
                            r"([\d.]+) s", since=mark, timeout=FAILOVER_BOUND + 5)
    assert float(failover.group(1)) < FAILOVER_BOUND

    def moved_away() -> dict[str, Any] | None:
        v = status_json("--url", run.url(survivors[0]))
        return v if v["node_count"] == 2 and all(owners(v)[d] in survivors for d in moved) \
            else None

    after = eventually(moved_away, FAILOVER_BOUND, f"duties of {victim} moving")
    check_placement(after, survivors)
    # the new importer resumed from the position its predecessor wrote, with its own token
    new_owner = owners(after)["import:engine-a"]
    resumed = eventually(lambda: (d := import_doc(run, survivors[0]))["node"] == new_owner
                         and d, 10, "the new importer writing")
    assert resumed["token"] > before["token"] and resumed["position"] > before["position"]

    # stdin commands keep working: start the node again, it rejoins
    mark = run.send(f"start {victim.split('-')[1]}")
    run.wait_for(rf"{victim} joined the cluster \(3 nodes\)", since=mark, timeout=60)

    pids = run.pids()
    assert len(pids) >= 7  # 3 nodes + 3 reapers + the restarted node (and its reaper)
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(60) == 0, run.output()[-3000:]
    assert "every demo process has ended" in run.output()
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if pid_alive(p)], run.output()[-2000:]


def test_demo_rejects_bad_options() -> None:
    res = subprocess.run([sys.executable, "-m", "shoal.cli.main", "demo", "--store", "etcd"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: --store etcd needs --endpoints")
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.etcd
def test_demo_on_etcd_quits_on_command(tmp_path: Path, etcd_endpoints: list[str]) -> None:
    run = DemoRun(tmp_path, extra=("--store", "etcd", "--endpoints", ",".join(etcd_endpoints)))
    try:
        run.wait_for(r"all 12 duties owned and placed")
        assert "on etcd http://" in run.output()
        view = status_json("--config", str(run.config("demo-1")))
        assert view["node_count"] == 3
        check_placement(view, ["demo-1", "demo-2", "demo-3"])
        pids = run.pids()
        run.send("quit")
        assert run.proc.wait(60) == 0, run.output()[-3000:]
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if pid_alive(p)]
    finally:
        run.cleanup()


def test_demo_on_postgres_quits_on_command(tmp_path: Path, pg_dsn: str) -> None:
    run = DemoRun(tmp_path, extra=("--store", "postgres", "--dsn", pg_dsn))
    try:
        run.wait_for(r"all 12 duties owned and placed")
        assert "on postgres host=" in run.output() and " schema shoal_demo_" in run.output()
        assert "password" not in run.output()
        view = status_json("--config", str(run.config("demo-1")))
        assert view["node_count"] == 3
        check_placement(view, ["demo-1", "demo-2", "demo-3"])
        pids = run.pids()
        run.send("quit")
        assert run.proc.wait(60) == 0, run.output()[-3000:]
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if pid_alive(p)]
    finally:
        run.cleanup()
