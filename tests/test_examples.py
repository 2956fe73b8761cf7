"""The examples run, briefly and for real: every process bounded in time and
ended by PID (with its reaper and any other child).

* ``examples/fastapi_service`` — two FastAPI copies: a login on one is valid on
  the other, a logout on one is refused everywhere, the duty fails over;
* ``examples/sync_worker`` — two sync workers (NodeThread): kill -9 the one
  running the duty, the other takes it;
* ``examples/etcd_cluster`` — ``shoal etcd start --members 3`` and one frontend
  plus two ingest nodes on it: roles, leadership and worker pools as configured.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.cli._procfs import descendants, pid_alive
from shoal.sessions import generate_secret

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])




class Proc:
    """A process with its output in a log file; ended by PID (and its children)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL__")}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=str(REPO), env={**clean, "PYTHONUNBUFFERED": "1", **env},
            )
        self.children: set[int] = set()

    def output(self) -> str:
        self.children.update(descendants(self.proc.pid))
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, *, since: int = 0, timeout: float = 60) -> re.Match[str]:
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output(), since)
            if match:
                return match
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} (exit {self.proc.poll()}):\n"
                                     + self.output()[-3000:])
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        self.output()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        self.output()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 3  # a reaper revokes, then exits by itself
        for pid in sorted(self.children):
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw) if raw else None


def serving(url: str) -> bool:
    return http("GET", url + "/shoal/health")[0] == 200


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:g} s (last: {last!r})")


# -- FastAPI ------------------------------------------------------------------------------
def test_fastapi_service(tmp_path: Path, procs: list[Proc]) -> None:
    env = {"SHOAL__AUTH__SECRET": generate_secret(),
           "SHOAL__STORE__SQLITE__PATH": str(tmp_path / "shop.db"),
           "SHOAL__PARAMS__INTERVAL": "0.3"}
    urls = {}
    for name in ("api-1", "api-2"):
        port = free_port()
        urls[name] = f"http://127.0.0.1:{port}"
        procs.append(Proc([sys.executable, str(EXAMPLES / "fastapi_service" / "app.py"),
                           "--name", name, "--port", str(port)], tmp_path / f"{name}.log", env))
        # one after the other: the first creates the SQLite file
        eventually(functools.partial(serving, urls[name]), 60, f"{name} serving")

    def both_in_cluster() -> dict[str, Any] | None:
        status, view = http("GET", urls["api-1"] + "/shoal/cluster")
        ok = status == 200 and view["node_count"] == 2 and all(d["owner"] for d in view["duties"])
        return view if ok else None

    view = eventually(both_in_cluster, 60, "two copies in one cluster")
    owner = next(d["owner"] for d in view["duties"] if d["name"] == "report-mailer")

    status, body = http("POST", urls["api-1"] + "/login", {"username": "ada"})
    assert status == 200
    token = body["token"]
    assert http("GET", urls["api-2"] + "/me", token=token) == (
        200, {"user": "ada", "served_by": "api-2"})
    assert http("GET", urls["api-2"] + "/me")[0] == 401
    report = eventually(lambda: http("GET", urls["api-2"] + "/report")[1]["report"], 10,
                        "the report replicated to the other copy")
    assert report["sent_by"] == owner

    assert http("POST", urls["api-2"] + "/logout", token=token)[0] == 204
    eventually(lambda: http("GET", urls["api-1"] + "/me", token=token)[0] == 401, 10,
               "the logout reaching the other copy")

    # stop the copy running the duty: the other one takes it over
    leaving = procs[0] if owner == "api-1" else procs[1]
    other = "api-2" if owner == "api-1" else "api-1"
    # uvicorn shuts down gracefully (lifespan exit: the node drains), then re-raises SIGTERM
    assert leaving.stop() in (0, -signal.SIGTERM)
    assert "revoked" not in leaving.output()  # handed over, not reaped
    eventually(lambda: http("GET", urls[other] + "/report")[1]["report"]["sent_by"] == other,
               15, "report-mailer moving to the other copy")


# -- sync worker --------------------------------------------------------------------------
def test_sync_worker(tmp_path: Path, procs: list[Proc]) -> None:
    env = {"SHOAL__STORE__SQLITE__PATH": str(tmp_path / "billing.db"),
           "SHOAL__TIMINGS__REBALANCE_DELAY": "60"}  # move only because of the kill
    script = str(EXAMPLES / "sync_worker" / "worker.py")
    for name in ("w1", "w2"):  # one after the other: the first creates the SQLite file
        procs.append(Proc([sys.executable, script, "--name", name, "--seconds", "90"],
                          tmp_path / f"{name}.log", env))
        procs[-1].wait_for(r"joined; leader")

    def runner() -> Proc | None:
        running = [p for p in procs if "invoice batch" in p.output()]
        assert len(running) <= 1, "two workers ran the duty"
        return running[0] if running else None

    first = eventually(runner, 30, "a worker running invoice-batch")
    second = procs[1] if first is procs[0] else procs[0]
    token = int(first.wait_for(r"invoice batch \d+ \(token (\d+)\)").group(1))
    first.signal(signal.SIGKILL)  # a crash: the reaper frees the duty at once
    took_over = second.wait_for(r"invoice batch 1 \(token (\d+)\)", timeout=15)
    assert int(took_over.group(1)) > token
    assert second.stop() == 0
    assert re.search(r"^w\d stopped$", second.output(), re.M)


# -- etcd cluster -------------------------------------------------------------------------
@pytest.mark.etcd
def test_etcd_cluster(tmp_path: Path, procs: list[Proc]) -> None:
    data_dir = tmp_path / "etcd-data"
    etcd = Proc([sys.executable, "-m", "shoal.cli.main", "etcd", "start", "--members", "3",
                 "--data-dir", str(data_dir), "--json"], tmp_path / "etcd.log", {})
    procs.append(etcd)
    endpoints = json.loads(etcd.wait_for(r"^\{.*\}$", timeout=90).group(0))["endpoints"]
    assert len(endpoints) == 3
    prefix = f"/example-{uuid.uuid4().hex[:8]}"
    urls = {}
    for name in ("frontend", "ingest-1", "ingest-2"):
        port = free_port()
        urls[name] = f"http://127.0.0.1:{port}"
        env = {"SHOAL__STORE__ETCD__ENDPOINTS": ",".join(endpoints),
               "SHOAL__STORE__ETCD__PREFIX": prefix, "SHOAL__HTTP__PORT": str(port),
               "SHOAL__NODE__ADDRESS": urls[name]}
        procs.append(Proc([sys.executable, "-m", "shoal.cli.main", "run",
                           "examples/etcd_cluster/service.py:app", "--config",
                           f"examples/etcd_cluster/{name}.yaml"], tmp_path / f"{name}.log", env))

    def settled() -> dict[str, Any] | None:
        status, view = http("GET", urls["frontend"] + "/cluster")
        workers = {n["name"]: n["workers"] for n in view["nodes"]}
        ok = (status == 200 and view["node_count"] == 3
              and all(d["owner"] for d in view["duties"])
              and workers.get("ingest-1") == workers.get("ingest-2") == {"ingest-worker": 2})
        return view if ok else None

    view = eventually(settled, 90, "three nodes on etcd, every duty owned")
    owners = {d["name"]: d["owner"] for d in view["duties"]}
    assert owners["leader"] == owners["certificate-renewal"] == "web-1"
    ingest = {k: v for k, v in owners.items() if k.startswith("import:") or k == "search-indexer"}
    assert len(ingest) == 4 and set(ingest.values()) <= {"ingest-1", "ingest-2"}
    assert {n["name"]: n["workers"] for n in view["nodes"]}["web-1"] == {}

    # shoal status finds the frontend through etcd (node.address) and agrees with it
    env = {**os.environ, "SHOAL__STORE__ETCD__ENDPOINTS": ",".join(endpoints),
           "SHOAL__STORE__ETCD__PREFIX": prefix}
    res = subprocess.run([sys.executable, "-m", "shoal.cli.main", "status", "--config",
                          "examples/etcd_cluster/ingest-2.yaml"], cwd=str(REPO), env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "nodes 3 · leader web-1" in res.stdout

    for proc in procs[1:]:
        assert proc.stop() == 0, proc.output()[-2000:]
    etcd.signal(signal.SIGINT)
    assert etcd.proc.wait(30) == 0, etcd.output()
    assert "etcd stopped" in etcd.output()
    leftovers = [p for p in etcd.children if pid_alive(p)]
    assert not leftovers, f"etcd members still running: {leftovers}"
    assert (data_dir / "shoal-etcd.json").exists()
