"""The fault proxy (shoal.testing.proxy): plain sockets through it, then a REAL etcd
through it (an EtcdStore on the proxy's endpoint: cut, blackhole, delay, heal)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from shoal.errors import StoreUnavailable
from shoal.store.etcd import EtcdStore
from shoal.store.protocol import Compare, Put
from shoal.testing.proxy import FaultProxy, Mode, ProxyThread, parse_target

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")


# -- a target: an echo server ------------------------------------------------------------
async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@pytest.fixture
async def proxy(echo: tuple[str, int]) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(echo) as p:
        yield p


_OPEN: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


async def _until(predicate: Callable[[], bool], within: float) -> None:
    """Wait (bounded) until ``predicate()`` holds, checking on every loop turn."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - a counter of the proxy, which has no event
            await asyncio.sleep(0.005)


async def _connect(p: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*p.listen_address)
    _OPEN.append(writer)
    return reader, writer


async def _roundtrip(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes, within: float = 2.0
) -> bytes:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(within):
        return await reader.readexactly(len(data))


async def _is_dead(reader: asyncio.StreamReader, within: float = 2.0) -> bool:
    """True when the connection ends (EOF or reset) within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            return await reader.read(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


# -- plain sockets -------------------------------------------------------------------------
def test_parse_target() -> None:
    assert parse_target("127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert parse_target("http://127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert parse_target("https://[::1]:2380/") == ("::1", 2380)
    assert parse_target(("h", 1)) == ("h", 1)
    with pytest.raises(ValueError, match="host:port"):
        parse_target("http://localhost")


async def test_forwards_bytes_both_ways_and_half_close(proxy: FaultProxy) -> None:
    assert proxy.endpoint == f"http://127.0.0.1:{proxy.listen_address[1]}"
    conn = await _connect(proxy)
    assert await _roundtrip(conn, b"hello") == b"hello"
    big = bytes(range(256)) * 8192  # 2 MiB, many chunks, back-pressure
    reader, writer = conn
    writer.write(big)
    writer.write_eof()  # half-close travels through; the echo answers EOF after the data
    async with asyncio.timeout(10):
        assert await reader.read() == big
    writer.close()
    assert proxy.accepted == 1
    assert proxy.bytes_up == proxy.bytes_down == len(big) + 5


async def test_cut_resets_open_and_new_connections_until_heal(proxy: FaultProxy) -> None:
    conn = await _connect(proxy)
    assert await _roundtrip(conn, b"x") == b"x"
    proxy.cut()
    assert proxy.mode is Mode.CUT
    assert await _is_dead(conn[0], within=1.0)
    t0 = time.monotonic()
    reader, _ = await _connect(proxy)  # accepted, then reset at once
    assert await _is_dead(reader, within=1.0)
    assert time.monotonic() - t0 < 0.5
    await _until(lambda: proxy.connections == 0, within=5)  # the reset one is counted out
    proxy.heal()
    assert await _roundtrip(await _connect(proxy), b"again") == b"again"


async def test_blackhole_holds_bytes_both_ways_then_delivers_them_on_heal(
    proxy: FaultProxy,
) -> None:
    old = await _connect(proxy)
    assert await _roundtrip(old, b"warm") == b"warm"
    proxy.blackhole()
    old[1].write(b"held")
    new = await _connect(proxy)  # accepted and held: the target is not even dialled
    new[1].write(b"new")
    for reader in (old[0], new[0]):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)
    assert proxy.connections == 2 and proxy.bytes_up == 4
    proxy.heal()
    async with asyncio.timeout(2):
        assert await old[0].readexactly(4) == b"held"
        assert await new[0].readexactly(3) == b"new"


async def test_blackhole_also_stops_the_answer_direction() -> None:
    dialled = asyncio.Event()

    async def talker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.set()
        await asyncio.sleep(0.1)  # speaks first, once the proxy is blackholed
        writer.write(b"late")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(talker, "127.0.0.1", 0)
    try:
        async with FaultProxy(("127.0.0.1", server.sockets[0].getsockname()[1])) as p:
            reader, writer = await _connect(p)
            async with asyncio.timeout(2):
                await dialled.wait()
            p.blackhole()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.4):
                    await reader.read(1)
            assert p.bytes_down == 0
            p.heal()
            async with asyncio.timeout(2):
                assert await reader.readexactly(4) == b"late"
            writer.close()
    finally:
        server.close()


async def test_delay_adds_latency_each_way(proxy: FaultProxy) -> None:
    conn = await _connect(proxy)
    await _roundtrip(conn, b"warm")
    proxy.delay(0.15)
    t0 = time.monotonic()
    assert await _roundtrip(conn, b"slow") == b"slow"
    assert 0.3 <= time.monotonic() - t0 < 1.0
    proxy.heal()
    assert proxy.latency == 0.0
    t0 = time.monotonic()
    await _roundtrip(conn, b"fast")
    assert time.monotonic() - t0 < 0.15
    with pytest.raises(ValueError):
        proxy.delay(-1)


async def test_target_down_resets_the_client() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens once closed
    async with FaultProxy(("127.0.0.1", port)) as p:
        reader, _ = await _connect(p)
        assert await _is_dead(reader)


async def test_aclose_resets_connections_and_can_restart_on_the_same_port(
    echo: tuple[str, int],
) -> None:
    p = await FaultProxy(echo).start()
    conn = await _connect(p)
    await _roundtrip(conn, b"a")
    port = p.listen_address[1]
    await p.aclose()
    assert await _is_dead(conn[0])
    async with FaultProxy(echo, port=port) as again:
        assert again.listen_address == ("127.0.0.1", port)
        assert await _roundtrip(await _connect(again), b"b") == b"b"


# -- the thread-backed wrapper, with blocking sockets ----------------------------------------
@pytest.fixture
def echo_thread() -> Iterator[tuple[str, int]]:
    """An echo server on its own thread (for the sync tests)."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(_echo, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", int(server.sockets[0].getsockname()[1])
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _sync_roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_proxy_thread_faults_with_blocking_sockets(echo_thread: tuple[str, int]) -> None:
    with ProxyThread(f"{echo_thread[0]}:{echo_thread[1]}") as p:
        sock = socket.create_connection(p.listen_address, timeout=2)
        with contextlib.closing(sock):
            assert _sync_roundtrip(sock, b"ping") == b"ping"
            p.blackhole()
            assert p.mode is Mode.BLACKHOLE
            sock.settimeout(0.3)
            sock.sendall(b"held")
            with pytest.raises(TimeoutError):
                sock.recv(1)
            sock.settimeout(2)
            p.heal()
            assert sock.recv(4) == b"held"
            p.cut()
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        p.heal()
        with contextlib.closing(socket.create_connection(p.listen_address, timeout=2)) as s2:
            assert _sync_roundtrip(s2, b"back") == b"back"
        assert p.accepted == 2 and p.endpoint.startswith("http://127.0.0.1:")
    p.close()  # idempotent
    with pytest.raises(RuntimeError, match="not started"):
        p.cut()


# -- a real etcd behind the proxy ----------------------------------------------------------
async def _eventually(call: Callable[[], Awaitable[T]], within: float) -> T:
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
async def etcd_via_proxy(
    etcd_endpoints: list[str],
) -> AsyncIterator[tuple[FaultProxy, EtcdStore]]:
    async with FaultProxy(etcd_endpoints[0]) as p:
        store = await EtcdStore.open(
            [p.endpoint], prefix=f"/proxy-{uuid.uuid4().hex[:8]}", timeout=1.0
        )
        try:
            yield p, store
        finally:
            await store.aclose()


@pytest.mark.etcd
async def test_etcd_store_cut_fails_fast_and_heal_recovers(
    etcd_via_proxy: tuple[FaultProxy, EtcdStore],
) -> None:
    p, store = etcd_via_proxy
    rev = await store.put("k", b"v1")
    got = await store.get("k")
    assert got is not None and got.value == b"v1" and p.accepted >= 1
    p.cut()
    for call in (lambda: store.get("k"), lambda: store.put("k", b"v2")):
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        assert time.monotonic() - t0 < 1.0 + 0.5  # within the store's timeout
    p.heal()
    assert await _eventually(lambda: store.put("k", b"v3"), within=5) > rev
    got = await store.get("k")
    assert got is not None and got.value == b"v3"


@pytest.mark.etcd
async def test_etcd_store_blackhole_times_out_and_heal_recovers(
    etcd_via_proxy: tuple[FaultProxy, EtcdStore],
) -> None:
    p, store = etcd_via_proxy
    await store.put("k", b"v1")
    p.blackhole()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    took = time.monotonic() - t0
    assert 0.9 <= took < 3.5, took  # the call's own timeout, not a connection error
    p.heal()
    got = await _eventually(lambda: store.get("k"), within=5)
    assert got is not None and got.value == b"v1"


@pytest.mark.etcd
async def test_etcd_store_delay_slows_every_call(
    etcd_via_proxy: tuple[FaultProxy, EtcdStore],
) -> None:
    p, store = etcd_via_proxy
    await store.put("k", b"v")
    p.delay(0.1)
    calls = {
        "get": lambda: store.get("k"),
        "put": lambda: store.put("k", b"w"),
        "txn": lambda: store.txn([Compare.absent("nope")], [Put("k", b"x")]),
        "range": lambda: store.range("k"),
        "grant": lambda: store.grant(5),
    }
    for name, call in calls.items():
        t0 = time.monotonic()
        await call()
        assert time.monotonic() - t0 >= 0.2, f"{name} was not delayed both ways"
    p.heal()
    got = await store.get("k")
    assert got is not None and got.value == b"x"  # every delayed write landed, in order
