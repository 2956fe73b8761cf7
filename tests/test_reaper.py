"""The reaper process: revokes on parent death (EOF) only; never on exit or a pause.

Each test runs a small parent process that starts a Reaper watching a lease the
test granted (TTL 30 s, so only a revoke can make it vanish quickly)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import StoreUnavailable
from shoal.runtime.reaper import Reaper, revoke
from shoal.store.protocol import Store
from shoal.store.sqlite import SqliteStore

PARENT = """
import json, sys, time
from shoal.runtime.reaper import Reaper
reaper = Reaper.start(json.loads(sys.argv[1]))
reaper.watch_lease(int(sys.argv[2]))
if sys.argv[3] == "close":
    reaper.close()
elif sys.argv[3] == "forget":  # the node revoked its lease itself (a drain)
    reaper.forget_lease(int(sys.argv[2]) + 1)  # another lease: still watched
    reaper.forget_lease(int(sys.argv[2]))
print(reaper.pid, flush=True)
time.sleep(60)
"""


class Parent:
    def __init__(
        self, info: dict[str, Any], lease: int, mode: str, log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", PARENT, json.dumps(info), str(lease), mode],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env,
            )
        assert self.proc.stdout is not None
        self.reaper_pid = int(self.proc.stdout.readline() or 0)
        assert self.reaper_pid, log.read_text()

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def cleanup(self) -> None:
        for pid in (self.proc.pid, self.reaper_pid):
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _state(pid: int) -> str:
    """The process state letter from /proc (R, S, T stopped, Z zombie...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _pending(pid: int) -> int:
    """Signals pending for the process (thread and shared masks)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("SigPnd:")[1].split()[0], 16) | int(
        status.split("ShdPnd:")[1].split()[0], 16)


def _ignores_sigint(pid: int) -> bool:
    """True once the reaper's main() set SIGINT to ignored (SigIgn in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(status.split("SigIgn:")[1].split()[0], 16)
    return bool(mask & (1 << (signal.SIGINT - 1)))


async def _until(predicate: Callable[[], bool], limit: float, what: str) -> None:
    for _ in range(int(limit / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {limit} s: {what}")


@pytest.fixture
def parents() -> Iterator[list[Parent]]:
    made: list[Parent] = []
    yield made
    for parent in made:
        parent.cleanup()


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd), "postgres"])
async def store_and_info(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, dict[str, Any]]]:
    store: Store
    if request.param == "sqlite":
        path = tmp_path / "shoal.db"
        store = await SqliteStore.open(path)
        info: dict[str, Any] = {"backend": "sqlite", "path": str(path)}
    elif request.param == "postgres":
        from shoal.store.postgres import PostgresStore

        dsn = request.getfixturevalue("pg_dsn")
        schema = f"reaper_{uuid.uuid4().hex[:8]}"
        store = await PostgresStore.open(dsn, schema=schema)
        info = {"backend": "postgres", "dsn": dsn, "conninfo": {}, "schema": schema,
                "timeout": 2.0}  # fmt: skip
    else:
        from shoal.store.etcd import EtcdStore

        endpoints = request.getfixturevalue("etcd_endpoints")
        prefix = f"/reaper-{uuid.uuid4().hex[:8]}"
        store = await EtcdStore.open(endpoints, prefix=prefix)
        info = {"backend": "etcd", "endpoints": endpoints, "prefix": prefix, "timeout": 2.0}
    try:
        yield store, info
    finally:
        await store.aclose()


async def _granted(store: Store) -> int:
    lease = await store.grant(30)
    await store.put("nodes/x", b"{}", lease=lease.id)
    return lease.id


async def _wait_gone(store: Store, lease: int, limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await store.lease_ttl(lease) < 0:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"lease {lease} still alive after {limit} s")


async def test_revokes_on_kill9_and_ignores_sigint(
    store_and_info: tuple[Store, dict[str, Any]], parents: list[Parent], tmp_path: Path
) -> None:
    store, info = store_and_info
    lease = await _granted(store)
    # every process started with this env registers an atexit hook that leaves a
    # file: the interpreter's shutdown ran (the reaper must skip it: its CPU is
    # taken from the survivors that are taking over at that very moment)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import atexit, os, pathlib\n"
        f"atexit.register(lambda: pathlib.Path({str(tmp_path)!r}, "
        "f'shutdown-{os.getpid()}').touch())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(hooks), os.environ.get("PYTHONPATH")) if p)}
    parent = Parent(info, lease, "hold", tmp_path / "parent.log", env=env)
    parents.append(parent)
    await _until(lambda: _ignores_sigint(parent.reaper_pid), 5, "reaper ignores SIGINT")
    os.kill(parent.reaper_pid, signal.SIGINT)  # Ctrl-C is for the node, not the reaper
    # an ignored signal is discarded when sent: nothing pending, nothing to wait for
    assert _pending(parent.reaper_pid) == 0 and _alive(parent.reaper_pid)
    assert await store.lease_ttl(lease) > 0
    parent.kill9()
    took = await _wait_gone(store, lease, limit=3.0)
    print(f"\n{info['backend']}: lease revoked {took * 1000:.0f} ms after kill -9")
    assert took < 1.5
    assert await store.get("nodes/x") is None
    await _until(lambda: not _alive(parent.reaper_pid), 3, "reaper exits after revoking")
    assert "revoked" in (tmp_path / "parent.log").read_text()
    assert not (tmp_path / f"shutdown-{parent.reaper_pid}").exists(), "the reaper ran atexit"


async def test_exit_means_no_revoke(
    store_and_info: tuple[Store, dict[str, Any]], parents: list[Parent], tmp_path: Path
) -> None:
    store, info = store_and_info
    lease = await _granted(store)
    parent = Parent(info, lease, "close", tmp_path / "parent.log")
    parents.append(parent)
    assert not _alive(parent.reaper_pid)  # close() waited for it: nobody can revoke now
    parent.kill9()
    await _until(lambda: not _alive(parent.proc.pid), 5, "the parent is dead")
    assert await store.lease_ttl(lease) > 0
    assert "revoked" not in (tmp_path / "parent.log").read_text()


async def test_a_forgotten_lease_is_not_revoked_at_the_death(
    store_and_info: tuple[Store, dict[str, Any]], parents: list[Parent], tmp_path: Path
) -> None:
    """A drain revokes its lease itself and then waits for its takeover with the
    reaper still up: killed then, the node leaves nothing for the reaper to do
    (no failed revoke of a gone lease in the log)."""
    store, info = store_and_info
    lease = await _granted(store)
    parent = Parent(info, lease, "forget", tmp_path / "parent.log")
    parents.append(parent)
    parent.kill9()
    await _until(lambda: not _alive(parent.reaper_pid), 3, "reaper exits")
    assert await store.lease_ttl(lease) > 0  # left alone (here nobody revoked it)
    text = (tmp_path / "parent.log").read_text()
    assert "revoke" not in text, text


async def test_no_action_while_parent_is_stopped(
    tmp_path: Path, parents: list[Parent]
) -> None:
    store = await SqliteStore.open(tmp_path / "shoal.db")
    try:
        lease = await _granted(store)
        info = {"backend": "sqlite", "path": str(tmp_path / "shoal.db")}
        parent = Parent(info, lease, "hold", tmp_path / "parent.log")
        parents.append(parent)
        os.kill(parent.proc.pid, signal.SIGSTOP)
        # the reaper acts only on end-of-file, which a stopped process never causes: once
        # the kernel shows the parent stopped, a revoke can only come from a bug
        await _until(lambda: _state(parent.proc.pid) == "T", 5, "the parent is stopped")
        assert _alive(parent.reaper_pid)
        assert await store.lease_ttl(lease) > 0, "the reaper acted on a paused (live) parent"
        os.kill(parent.proc.pid, signal.SIGCONT)
        await _until(lambda: _state(parent.proc.pid) != "T", 5, "the parent runs again")
        assert await store.lease_ttl(lease) > 0
        parent.kill9()  # and it still works afterwards
        await _wait_gone(store, lease, limit=3.0)
    finally:
        await store.aclose()


async def test_respawns_a_dead_reaper_and_close_is_quiet(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "shoal.db")
    reaper = Reaper.start({"backend": "sqlite", "path": str(tmp_path / "shoal.db")})
    try:
        first = reaper.pid
        os.kill(first, signal.SIGKILL)
        await _until(lambda: not reaper.alive, 3, "killed reaper is gone")
        lease = await _granted(store)
        reaper.watch_lease(lease)
        assert reaper.alive and reaper.pid != first
        reaper.close()
        assert not reaper.alive
        assert await store.lease_ttl(lease) > 0
    finally:
        if reaper.alive:
            os.kill(reaper.pid, signal.SIGKILL)
        await store.aclose()


async def test_aclose_waits_without_blocking_the_loop_and_kills_a_stuck_reaper(
    tmp_path: Path,
) -> None:
    """A drain closes its reaper with ``aclose`` from the node's event loop: the
    loop keeps running while it waits, and a reaper that does not exit (here
    stopped) is killed by PID after the timeout, without revoking."""
    store = await SqliteStore.open(tmp_path / "shoal.db")
    info = {"backend": "sqlite", "path": str(tmp_path / "shoal.db")}
    quick, stuck = Reaper.start(info), Reaper.start(info)
    try:
        lease = await _granted(store)
        quick.watch_lease(lease)
        stuck.watch_lease(lease)
        await quick.aclose()
        assert not quick.alive
        await quick.aclose()  # once only
        os.kill(stuck.pid, signal.SIGSTOP)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await stuck.aclose(timeout=0.3)
        task.cancel()
        assert not stuck.alive and ticks >= 10, ticks
        assert await store.lease_ttl(lease) > 0
    finally:
        for r in (quick, stuck):
            if r.alive:
                os.kill(r.pid, signal.SIGKILL)
        await store.aclose()


def test_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, shoal.runtime.reaper\n"
        "heavy = ('grpc', 'pydantic', 'etcd3aio', 'shoal.store.etcd', 'yaml', 'click', 'asyncio')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == ""


@pytest.mark.etcd
def test_etcd_gateway_with_tls_and_auth() -> None:
    """The HTTP gateway path on etcd 3.5, over TLS with user/password."""
    from shoal.testing.etcd_server import EtcdCluster

    async def grant(cluster: EtcdCluster) -> int:
        from shoal.store.etcd import EtcdStore

        store = await EtcdStore.open(
            cluster.endpoints, prefix="/gw", ca_file=str(cluster.ca_file),
            username=cluster.username, password=cluster.password,
        )
        try:
            return (await store.grant(30)).id
        finally:
            await store.aclose()

    with EtcdCluster(tls=True, auth=True) as cluster:
        lease = asyncio.run(grant(cluster))
        info = {
            "backend": "etcd", "endpoints": ["http://127.0.0.1:1", *cluster.endpoints],
            "timeout": 2.0, "ca": str(cluster.ca_file), "username": cluster.username,
            "password": cluster.password,
        }
        with pytest.raises(StoreUnavailable, match="HTTP"):
            revoke({**info, "password": "wrong", "timeout": 0.3}, lease)
        assert revoke(info, lease).startswith("revoked via https://")
        assert revoke(info, lease).startswith("already gone")


# -- what reaper_prepare readies while the node lives -----------------------------------
async def test_sqlite_reaper_opens_the_file_before_the_death(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoke uses the file opened at start (no store opening at the node's death),
    and its commit wakes the other processes' watches at once (send-only wake channel)."""
    from shoal.store import _sqlite_reaper

    path = tmp_path / "shoal.db"
    # a watcher that, without a wake-up, would poll only every 60 s
    store = await SqliteStore.open(path, wake_poll_interval=60.0)
    try:
        lease = await _granted(store)
        events = store.watch("nodes/", start_revision=await store.revision() + 1)
        info = {"backend": "sqlite", "path": str(path)}
        reaper = ThreadPoolExecutor(max_workers=1)  # the reaper's one thread
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(reaper, _sqlite_reaper.reaper_prepare, info)
        assert _sqlite_reaper._store is not None

        def no_open(*args: object, **kwargs: object) -> SqliteStore:
            raise AssertionError("the revoke opened the store again")

        monkeypatch.setattr(SqliteStore, "open_blocking", no_open)
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.3)  # the watch has read the history and waits for the poller
        assert not waiting.done()
        assert (await loop.run_in_executor(reaper, revoke, info, lease)).startswith("revoked in")
        reaper.shutdown()
        assert _sqlite_reaper._store is None  # used once, then closed
        async with asyncio.timeout(10):  # far below the 60 s poll: woken by the datagram
            event = await waiting
        assert event.kv.key == "nodes/x" and event.type.name == "DELETE"
        await events.aclose()
        assert await store.lease_ttl(lease) < 0
    finally:
        await store.aclose()


def test_sqlite_reaper_without_a_prepared_file(tmp_path: Path) -> None:
    """A file that could not be opened at start is opened (or reported) at the revoke."""
    from shoal.errors import ConfigError
    from shoal.store import _sqlite_reaper

    missing = tmp_path / "no-such-dir" / "shoal.db"
    _sqlite_reaper.reaper_prepare({"path": str(missing)})  # does not raise
    assert _sqlite_reaper._store is None
    with pytest.raises(ConfigError, match="no-such-dir"):
        _sqlite_reaper.reaper_revoke({"path": str(missing)}, 1)
    assert _sqlite_reaper.reaper_revoke({"path": str(tmp_path / "new.db")}, 1) == "already gone"


@pytest.mark.etcd
async def test_etcd_gateway_warm_up_is_read_only_and_quick(etcd_endpoints: list[str]) -> None:
    """reaper_prepare sends one read-only request (the store's revision does not move),
    keeps its opener for the revoke, and does not wait on an endpoint that is down."""
    from shoal.store import _etcd_gateway
    from shoal.store.etcd import EtcdStore

    store = await EtcdStore.open(etcd_endpoints, prefix=f"/gw-{uuid.uuid4().hex[:8]}")
    try:
        lease = await _granted(store)
        before = await store.revision()
        saved = _etcd_gateway._prepared
        try:
            started = time.monotonic()
            _etcd_gateway.reaper_prepare({"endpoints": ["http://127.0.0.1:1"]})  # refused
            assert time.monotonic() - started < 1.0
            _etcd_gateway.reaper_prepare({"endpoints": etcd_endpoints})
            assert _etcd_gateway._prepared is not None
            assert await store.revision() == before  # nothing written by the warm-up
            info = {"backend": "etcd", "endpoints": etcd_endpoints, "timeout": 2.0}
            assert revoke(info, lease).startswith("revoked via")
        finally:
            _etcd_gateway._prepared = saved
        assert await store.get("nodes/x") is None
    finally:
        await store.aclose()


# -- readiness: a node registers once its reaper can revoke -------------------------------
async def test_ready_once_prepared_and_a_failed_prepare_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ready = Reaper.start({"backend": "sqlite", "path": str(tmp_path / "shoal.db")})
    broken = Reaper.start({"backend": "no-such-backend"})  # its prepare raises
    try:
        assert await ready.wait_ready(30) is True
        assert ready.alive  # ready, waiting for its lease
        assert await broken.wait_ready(30) is False
        await _until(lambda: not broken.alive, 5, "the broken reaper exits")
        assert "before it was ready" in caplog.text and str(broken.pid) in caplog.text
        assert await ready.wait_ready(1) is False  # asked twice: nothing left to wait for
    finally:
        for reaper in (ready, broken):
            reaper.close()
    assert not ready.alive


async def test_a_reaper_that_never_answers_is_waited_for_a_bounded_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The limit holds when the reaper neither says ready nor exits (a pipe that
    nobody writes to stands in for a reaper stuck in its start-up)."""
    reaper = Reaper({"backend": "sqlite", "path": "unused"})
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    reaper._ready_fd = read_end
    try:
        started = time.monotonic()
        async with asyncio.timeout(10):  # (a wait without its limit fails here, not hangs)
            assert await reaper.wait_ready(0.2) is False
        assert 0.2 <= time.monotonic() - started < 5
        assert "not ready after 0.2 s; the node joins anyway" in caplog.text
    finally:
        reaper._close_ready()
        os.close(write_end)


async def test_a_node_registers_only_once_its_reaper_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reaper's start-up (an interpreter) is over before other nodes see the
    join, and a crash right after the join is already covered."""
    from shoal.config import parse_config
    from shoal.runtime.app import App
    from shoal.runtime.node import Node

    seen: list[tuple[bool, bool, bool]] = []
    original = Reaper.wait_ready

    async def spy(self: Reaper, limit: float) -> bool:
        ok = await original(self, limit)
        seen.append((ok, self.alive, await node.store.get("nodes/a") is None))
        return ok

    monkeypatch.setattr(Reaper, "wait_ready", spy)
    config = parse_config({"node": {"name": "a"}, "reaper": {"enabled": True},
                           "store": {"sqlite": {"path": str(tmp_path / "shoal.db")}}})
    node = await Node.from_config(App("t"), config)
    await node.start()
    try:
        assert seen == [(True, True, True)]  # ready, alive, and not yet registered
        assert await node.store.get("nodes/a") is not None
    finally:
        await node.aclose()
