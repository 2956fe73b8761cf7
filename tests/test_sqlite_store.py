"""SqliteStore: what only the SQLite backend has to prove (the generic etcd
semantics are covered by ``shoal.testing.conformance``).

Several OS processes share one file; every child process is bounded in time
and killed by PID in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest

from shoal.errors import Compacted, ConfigError, NotRunning, StoreUnavailable
from shoal.store.protocol import Event, EventType, Put
from shoal.store.sqlite import SqliteStore

pytestmark = pytest.mark.timeout(30)

CHILD_PRELUDE = """
import asyncio, json, sys, time
from shoal.store.protocol import Compare, Put
from shoal.store.sqlite import SqliteStore
"""

CAS_CHILD = (
    CHILD_PRELUDE
    + """
async def main(path, name, rounds, t0):
    store = await SqliteStore.open(path)
    wins = []
    for r in range(int(rounds)):
        # every process fires round r at the same machine-wide monotonic instant
        await asyncio.sleep(max(0.0, float(t0) + r * 0.05 - time.monotonic()))
        res = await store.txn([Compare.absent(f"race/{r}")], [Put(f"race/{r}", name.encode())])
        wins.append(res.succeeded)
    await store.aclose()
    print(json.dumps(wins), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""
)

WRITER_CHILD = (
    CHILD_PRELUDE
    + """
async def main(path, count):
    store = await SqliteStore.open(path)
    acks = []
    for i in range(int(count)):
        rev = await store.put(f"lag/{i % 7}", str(i).encode())
        acks.append((rev, time.monotonic()))
        await asyncio.sleep(0.004)
    await store.aclose()
    print(json.dumps(acks), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""
)

LEASE_CHILD = (
    CHILD_PRELUDE
    + """
async def main(path):
    store = await SqliteStore.open(path)
    lease = await store.grant(1)
    await store.put("eph/a", b"1", lease=lease.id)
    rev = await store.put("eph/b", b"2", lease=lease.id)
    print(json.dumps({"lease": lease.id, "rev": rev, "t": time.monotonic()}), flush=True)
    await asyncio.sleep(60)  # never refreshes; the test kills us

asyncio.run(main(*sys.argv[1:]))
"""
)


@contextlib.asynccontextmanager
async def children() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Child processes started inside are killed by PID on the way out."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)


async def spawn(
    procs: list[asyncio.subprocess.Process], code: str, *args: str
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, stdout=asyncio.subprocess.PIPE
    )
    procs.append(proc)
    return proc


async def read_json(proc: asyncio.subprocess.Process, within: float = 15.0) -> object:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), within)
    assert line, f"child {proc.pid} exited without output (rc={proc.returncode})"
    return json.loads(line)


async def collect(it: AsyncIterator[Event], n: int, within: float = 10.0) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(within):
        async for ev in it:
            out.append(ev)
            if len(out) >= n:
                break
    return out


# -- several processes on one file ---------------------------------------------------
async def test_processes_racing_on_create_if_absent_have_one_winner(tmp_path: Path) -> None:
    path, rounds, n = tmp_path / "s.db", 8, 4
    store = await SqliteStore.open(path)  # create the file before the race
    try:
        async with children() as procs:
            t0 = time.monotonic() + 2.0  # time for the children to start
            for i in range(n):
                await spawn(procs, CAS_CHILD, str(path), f"p{i}", str(rounds), str(t0))
            results = [await read_json(p, within=20) for p in procs]
        assert all(isinstance(r, list) and len(r) == rounds for r in results)
        for r in range(rounds):
            winners = [i for i, wins in enumerate(results) if wins[r]]  # type: ignore[index]
            assert len(winners) == 1, (r, results)
            kv = await store.get(f"race/{r}")
            assert kv is not None and kv.version == 1 and kv.value == f"p{winners[0]}".encode()
    finally:
        await store.aclose()


async def test_watch_sees_other_process_writes_in_order(tmp_path: Path) -> None:
    path, count = tmp_path / "s.db", 200
    store = await SqliteStore.open(path)
    received: list[tuple[Event, float]] = []
    try:
        async with children() as procs, aclosing(store.watch("lag/")) as it:
            writer = await spawn(procs, WRITER_CHILD, str(path), str(count))
            async with asyncio.timeout(20):
                async for ev in it:
                    received.append((ev, time.monotonic()))
                    if len(received) == count:
                        break
            acks = await read_json(writer)
    finally:
        await store.aclose()
    assert isinstance(acks, list)
    assert [ev.revision for ev, _ in received] == [rev for rev, _ in acks]
    assert [ev.kv.value for ev, _ in received] == [str(i).encode() for i in range(count)]
    assert all(ev.type is EventType.PUT for ev, _ in received)
    lags = sorted(
        max(0.0, t - acked) * 1000 for (_, t), (_, acked) in zip(received, acks, strict=True)
    )
    p50, p99 = statistics.median(lags), lags[int(len(lags) * 0.99) - 1]
    print(
        f"\nwatch lag across processes over {count} writes: p50={p50:.1f} ms "
        f"p99={p99:.1f} ms max={lags[-1]:.1f} ms"
    )
    # the lag goal (p99 < 100 ms) is a benchmark: benchmarks/store.py --backends sqlite


ONE_PUT_CHILD = (
    CHILD_PRELUDE
    + """
async def main(path):
    store = await SqliteStore.open(path)
    rev = await store.put("wake/k", b"v")
    await store.aclose()
    print(json.dumps(rev), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""
)


async def test_other_process_write_wakes_the_watch_without_waiting_for_the_poll(
    tmp_path: Path,
) -> None:
    """Both fallback polls at 10 s: the event can only come through the wake-up
    channel (the child wakes our poller with a datagram after its commit)."""
    import socket

    from shoal.store._sqlite_wake import wake_dir

    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, poll_interval=10.0, wake_poll_interval=10.0)
    try:
        await store.put("wake/init", b"")
        await asyncio.sleep(0)  # let the poller take our own write and go back to sleep
        # a socket left by a dead process: the writer removes it
        dead = wake_dir(path) / "999999-dead.s"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(dead))
        sock.close()
        async with children() as procs, aclosing(store.watch("wake/k")) as it:
            writer = await spawn(procs, ONE_PUT_CHILD, str(path))
            (event,) = await collect(it, 1, within=8.0)  # < the 10 s poll
            assert event.revision == await read_json(writer)
        assert not dead.exists()
        assert oct(wake_dir(path).stat().st_mode & 0o777) == oct(0o700)
        (ours,) = wake_dir(path).iterdir()  # the child's socket went with it
        assert oct(ours.stat().st_mode & 0o777) == oct(0o600)
    finally:
        await store.aclose()
    assert list(wake_dir(path).iterdir()) == []  # our socket is gone too


async def test_lease_of_killed_process_expires_with_delete_events(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    try:
        async with children() as procs:
            holder = await spawn(procs, LEASE_CHILD, str(path))
            info = await read_json(holder)
            assert isinstance(info, dict)
            os.kill(holder.pid, signal.SIGKILL)
            await asyncio.wait_for(holder.wait(), 5)
        assert (await store.get("eph/a")) is not None  # 1 s TTL: not yet
        # no one writes: this instance's background expiry check must act
        async with aclosing(store.watch("eph/", info["rev"] + 1)) as it:
            events = await collect(it, 2, within=5)
        gone_after = time.monotonic() - info["t"]
        assert [(e.type, e.kv.key) for e in events] == [
            (EventType.DELETE, "eph/a"),
            (EventType.DELETE, "eph/b"),
        ]
        assert events[0].revision == events[1].revision == info["rev"] + 1
        assert 0.9 <= gone_after < 2.0, gone_after
        assert await store.lease_ttl(info["lease"]) == -1
        assert (await store.range("eph/")).kvs == ()
    finally:
        await store.aclose()


# -- history ---------------------------------------------------------------------
async def test_compaction_reported_to_early_watchers(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", log_retention=5)
    try:
        revs = [await store.put("c/k", str(i).encode()) for i in range(3)]
        await store.compact(revs[1])
        with pytest.raises(Compacted) as info:
            await collect(store.watch("c/", revs[0]), 1)
        assert info.value.compact_revision == revs[1]
        events = await collect(store.watch("c/", revs[1]), 2)  # from the point itself: allowed
        assert [e.kv.value for e in events] == [b"1", b"2"]
        with pytest.raises(Compacted):
            await store.compact(revs[1])
        # automatic: only the last log_retention revisions are kept
        for i in range(20):
            await store.put("c/k", str(i).encode())
        with pytest.raises(Compacted) as info:
            await collect(store.watch("c/", revs[1]), 1)
        assert info.value.compact_revision > await store.revision() - 10
        # a running watch that falls further behind than the log also learns it
        async with aclosing(store.watch("c/")) as it:
            for i in range(30):
                await store.put("c/k", str(i).encode())
            await asyncio.sleep(0.1)
            with pytest.raises(Compacted):
                await anext(it)
    finally:
        await store.aclose()


async def test_watch_whose_poller_falls_behind_the_log_gets_compacted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    slow = await SqliteStore.open(path, poll_interval=0.5, wake=False)  # polls rarely
    writer = await SqliteStore.open(path, log_retention=5)  # compacts as it writes
    try:
        async with aclosing(slow.watch("f/")) as it:
            for i in range(30):
                await writer.put("f/k", str(i).encode())
            with pytest.raises(Compacted) as info:
                await asyncio.wait_for(anext(it), 3)
        assert info.value.compact_revision > await writer.revision() - 10
    finally:
        await writer.aclose()
        await slow.aclose()


async def test_reopen_keeps_data_revision_and_leases(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    lease = await store.grant(30)
    await store.put("r/a", b"1", lease=lease.id)
    rev = await store.txn([], [Put("r/b", b"2"), Put("r/c", b"3")])
    await store.aclose()
    await store.aclose()  # idempotent
    store = await SqliteStore.open(path)
    try:
        assert await store.revision() == rev.revision
        assert [kv.key for kv in (await store.range("r/")).kvs] == ["r/a", "r/b", "r/c"]
        assert 0 < await store.lease_ttl(lease.id) <= 30
        assert await store.put("r/a", b"x", lease=lease.id) == rev.revision + 1
        events = await collect(store.watch("r/", rev.revision), 3)  # history survives too
        assert [e.kv.key for e in events] == ["r/b", "r/c", "r/a"]
    finally:
        await store.aclose()


async def test_reboot_expires_every_lease(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    lease = await store.grant(300)
    rev = await store.put("b/k", b"1", lease=lease.id)
    await store.aclose()
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("UPDATE meta SET v = 'another-boot' WHERE k = 'boot'")
    store = await SqliteStore.open(path)
    try:
        assert await store.lease_ttl(lease.id) == -1
        assert await store.get("b/k") is None
        events = await collect(store.watch("b/", rev + 1), 1)
        assert events[0].type is EventType.DELETE and events[0].revision == rev + 1
    finally:
        await store.aclose()


# -- the event loop and the file --------------------------------------------------------
async def test_event_loop_keeps_running_while_the_file_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")  # another writer holds the lock for 0.5 s
        put = asyncio.create_task(store.put("l/k", b"1"))
        await asyncio.sleep(0.5)
        assert not put.done()
        raw.execute("COMMIT")
        rev = await asyncio.wait_for(put, 5)
        await asyncio.gather(*(store.put(f"l/{i}", b"x") for i in range(100)))  # a burst
        assert await store.revision() == rev + 100
    finally:
        task.cancel()
        raw.close()
        await store.aclose()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    print(f"\nticker: {len(ticks)} ticks, longest gap {max(gaps) * 1000:.1f} ms")
    # the lock is held 0.5 s: a blocked loop would show a gap of >= 0.5 s; the
    # bound leaves room for a loaded 2-core machine (GIL hand-offs)
    assert len(ticks) > 40 and max(gaps) < 0.35


async def test_busy_file_and_bad_paths_raise_shoal_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, lock_timeout=0.2)
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match=str(path)):
            await store.put("k", b"1")
        raw.execute("ROLLBACK")
        assert await store.put("k", b"1") == 2
    finally:
        raw.close()
        await store.aclose()
    with pytest.raises(ConfigError):
        await SqliteStore.open(tmp_path / "missing" / "s.db")
    with pytest.raises(ConfigError):
        await SqliteStore.open(tmp_path)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreUnavailable, match=r"junk\.db"):
        await SqliteStore.open(tmp_path / "junk.db")


async def test_aclose_ends_watches_and_refuses_calls(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    it = store.watch("w/")
    pending = asyncio.ensure_future(collect(it, 1))
    await asyncio.sleep(0.05)
    await store.aclose()
    assert await asyncio.wait_for(pending, 2) == []
    with pytest.raises(NotRunning):
        await store.get("w/x")
    with pytest.raises(NotRunning):
        store.watch("w/")
