"""A fault-injecting TCP proxy for tests: put it between a node and an etcd member.

    proxy = FaultProxy("http://127.0.0.1:2379")
    await proxy.start()                 # listens on 127.0.0.1, a free port
    store = await EtcdStore.open([proxy.endpoint])
    proxy.cut()                         # reset every connection, reset new ones at once
    proxy.blackhole()                   # accept, but move no byte in either direction
    proxy.delay(0.2)                    # every chunk arrives 0.2 s late (each direction)
    proxy.heal()                        # no fault, no delay
    await proxy.aclose()

It moves bytes only, so gRPC / HTTP/2 streams pass through untouched. The fault
modes model what a node sees of the network:

* ``cut`` -- the peer is gone: open connections are reset (RST, both sides) and every
  new connection is accepted and reset at once. The caller fails fast.
* ``blackhole`` -- a partition: connections stay open but no byte moves, either way;
  new connections are accepted and held (the upstream is dialled only after a heal).
  Bytes already read are kept, not dropped, and delivered after :meth:`heal` -- as TCP
  retransmission would. The caller only notices through its own timeouts.
* ``delay(s)`` -- latency: each chunk is delivered ``s`` seconds after it was read, in
  each direction (a request/response round trip gains ``2 * s``); it applies together
  with the modes above and :meth:`heal` resets it to 0.

The control methods of :class:`FaultProxy` are plain (non-async) calls that must run on
the proxy's event loop; they take effect before they return. :class:`ProxyThread` runs a
proxy on its own event loop thread, for sync tests and harnesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from shoal.errors import InvalidArgument, WrongState

__all__ = ["FaultProxy", "Mode", "ProxyThread", "parse_target"]

_CHUNK = 65536
_QUEUE = 64  # chunks in flight per direction (then the reader stops: back-pressure)
_HOST = "127.0.0.1"
T = TypeVar("T")


class Mode(enum.Enum):
    PASS = "pass"
    CUT = "cut"
    BLACKHOLE = "blackhole"


def parse_target(target: str | tuple[str, int]) -> tuple[str, int]:
    """``(host, port)`` from ``"host:port"``, ``"http://host:port"`` or a tuple."""
    if isinstance(target, tuple):
        return str(target[0]), int(target[1])
    text = target.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(
            f"proxy target must be host:port or a URL with a port, got {target!r}"
        )
    return host.strip("[]"), int(port)


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket with an RST (SO_LINGER 0), dropping unsent data."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One proxied connection: the client side, the upstream side, the handler task."""

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[Any] | None) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = task

    def reset(self, *, cancel: bool) -> None:
        _reset(self.client)
        _reset(self.upstream)
        if cancel and self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class FaultProxy:
    """An asyncio TCP proxy from ``127.0.0.1:<port>`` to ``target`` with faults on demand.

    ``port=0`` picks a free port; give the old port to restart a proxy on it.
    Counters: :attr:`accepted` (connections), :attr:`bytes_up` (client to target),
    :attr:`bytes_down` (target to client); :attr:`connections` is the number open now.
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        host: str = _HOST,
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = parse_target(target)
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._mode = Mode.PASS
        self._delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> FaultProxy:
        if self._server is not None:
            raise WrongState("proxy already started")
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def aclose(self) -> None:
        """Stop listening and reset every connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for conn in list(self._conns):
            conn.reset(cancel=True)
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- view -------------------------------------------------------------------------
    @property
    def listen_address(self) -> tuple[str, int]:
        if self._server is None and self._port == 0:
            raise WrongState("proxy not started")
        return self._host, self._port

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: give this to the client instead of the target."""
        host, port = self.listen_address
        return f"http://{host}:{port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def latency(self) -> float:
        return self._delay

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- faults (call on the proxy's loop) ----------------------------------------------
    def cut(self) -> None:
        """Reset every connection (both sides); new connections are reset at once."""
        self._mode = Mode.CUT
        self._flowing.clear()
        for conn in list(self._conns):
            conn.reset(cancel=True)

    def blackhole(self) -> None:
        """Stop moving bytes on every connection, both ways; hold new connections."""
        self._mode = Mode.BLACKHOLE
        self._flowing.clear()

    def delay(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` after it was read (each direction)."""
        if seconds < 0:
            raise InvalidArgument(f"delay must be >= 0, got {seconds!r}")
        self._delay = float(seconds)

    def heal(self) -> None:
        """No fault, no delay: held bytes and connections flow again."""
        self._mode = Mode.PASS
        self._delay = 0.0
        self._flowing.set()

    # -- forwarding -----------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = _Conn(writer, asyncio.current_task())
        if self._mode is Mode.CUT:
            conn.reset(cancel=False)
            return
        self._conns.add(conn)
        try:
            await self._flowing.wait()  # blackholed: hold the connection, dial nobody
            try:
                async with asyncio.timeout(self._connect_timeout):
                    up_reader, conn.upstream = await asyncio.open_connection(*self.target)
            except (OSError, TimeoutError):
                conn.reset(cancel=False)  # target down: the client sees a reset
                return
            await asyncio.gather(
                self._pipe(conn, reader, conn.upstream, up=True),
                self._pipe(conn, up_reader, writer, up=False),
            )
            for side in (writer, conn.upstream):
                side.close()
        except asyncio.CancelledError:
            conn.reset(cancel=False)  # cut() or aclose(): this connection ends here
        finally:
            self._conns.discard(conn)

    async def _pipe(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        *, up: bool,
    ) -> None:
        """Copy ``reader`` to ``writer`` chunk by chunk, honouring delay and blackhole.
        EOF is passed on as a half-close; a reset on either side resets both."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(_QUEUE)

        async def feed() -> None:
            while True:
                await self._flowing.wait()
                try:
                    data: bytes | None = await reader.read(_CHUNK)
                except OSError:
                    data = None  # the peer reset the connection
                await queue.put((loop.time() + self._delay, data))
                if not data:
                    return

        feeder = asyncio.create_task(feed())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if data is None:
                    conn.reset(cancel=False)
                    return
                if not data:
                    if writer.can_write_eof() and not writer.is_closing():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                writer.write(data)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                try:
                    await writer.drain()
                except OSError:
                    conn.reset(cancel=False)
                    return
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await feeder


class ProxyThread:
    """A :class:`FaultProxy` running on its own event-loop thread (a sync context manager).

    The control calls block until the fault is in effect::

        with ProxyThread(cluster.endpoint(0)) as proxy:
            node_config["store"]["etcd"]["endpoints"] = [proxy.endpoint]
            proxy.cut(); ...; proxy.heal()
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        host: str = _HOST,
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.proxy = FaultProxy(target, host=host, port=port, connect_timeout=connect_timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ProxyThread:
        if self._loop is not None:
            raise WrongState("proxy thread already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"shoal-proxy-{self.proxy.target[1]}", daemon=True
        )
        self._thread.start()
        try:
            self._run(self.proxy.start())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the proxy (every connection reset) and end the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._run(self.proxy.aclose())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        if self._loop is None:
            coro.close()
            raise WrongState("proxy thread not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _apply(self, action: Callable[[], None]) -> None:
        async def call() -> None:
            action()

        self._run(call())

    # -- faults ---------------------------------------------------------------------------
    def cut(self) -> None:
        self._apply(self.proxy.cut)

    def blackhole(self) -> None:
        self._apply(self.proxy.blackhole)

    def delay(self, seconds: float) -> None:
        self._apply(lambda: self.proxy.delay(seconds))

    def heal(self) -> None:
        self._apply(self.proxy.heal)

    # -- view -----------------------------------------------------------------------------
    @property
    def listen_address(self) -> tuple[str, int]:
        return self.proxy.listen_address

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    @property
    def mode(self) -> Mode:
        return self.proxy.mode

    @property
    def accepted(self) -> int:
        return self.proxy.accepted

    @property
    def connections(self) -> int:
        return self.proxy.connections
