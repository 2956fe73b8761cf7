"""Serve a node's HTTP API with uvicorn inside the node's event loop (``shoal run``).

The socket is bound here, so a port in use is a clear :class:`ConfigError`
(uvicorn would ``sys.exit``), and uvicorn's own signal handlers are NOT
installed: ``shoal run`` keeps SIGTERM/SIGINT (drain first, then stop HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from shoal.errors import ConfigError
from shoal.http._events import EventFeed
from shoal.http._protocol import DEFAULT_HEADER_TIMEOUT, protocol_with_header_timeout
from shoal.http.api import create_app

if TYPE_CHECKING:
    from shoal.config import NodeConfig
    from shoal.runtime.node import Node
    from shoal.sessions import SessionManager

__all__ = ["HttpServer", "serve_http"]

log = logging.getLogger("shoal.http")
MAX_HEAD_BYTES = 16 * 1024  # request line and headers


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller owns the process's signals


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"http: cannot listen on {host}:{port}: {exc.strerror or exc} — choose a free "
            "http.port (or --http-port), or set http.host to an address of this machine"
        ) from None
    return sock


class HttpServer:
    """A running uvicorn server; :attr:`url` is the dashboard's address."""

    def __init__(
        self, server: _Server, task: asyncio.Task[None], url: str, feed: EventFeed
    ) -> None:
        self._server = server
        self._task = task
        self._feed = feed
        self.url = url

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """End the live streams, stop accepting, let open requests finish (bounded)."""
        self._feed.close()
        self._server.should_exit = True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def session_manager_for(config: NodeConfig, node: Node) -> SessionManager | None:
    """Accept shared sessions on the API when ``auth.secret`` is configured."""
    if config.auth.secret is None:
        return None
    from shoal.sessions import SessionManager, revoked_in

    return SessionManager.from_config(config, revoked=revoked_in(node.state))


async def serve_http(
    node: Node, config: NodeConfig, port: int | None = None, *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
) -> HttpServer:
    """Start serving ``create_app(node)`` on ``http.host``:``port`` (default
    ``http.port``; 0 = any free port). Raises ConfigError when it cannot listen.

    A connection must send a complete request head within ``header_timeout``
    seconds (else it is closed: slowloris guard); request heads are at most
    16 KiB; idle keep-alive connections close after 5 s."""
    host = config.http.host
    sock = _bind(host, config.http.port if port is None else port)
    bound_port = sock.getsockname()[1]
    manager = session_manager_for(config, node)
    if config.http.token is None and manager is None:
        log.warning("http: no http.token and no auth.secret: state writes and drain are refused")
    app = create_app(node, token=config.http.token, session_manager=manager,
                     management_role=node.app.management_role)
    uv_config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", server_header=False,
        timeout_graceful_shutdown=3, timeout_keep_alive=5,
        http=protocol_with_header_timeout(header_timeout),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    server = _Server(uv_config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="shoal-http")
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.01)
    if task.done():
        sock.close()
        why = "" if task.cancelled() or task.exception() is None else f": {task.exception()!r}"
        raise ConfigError(f"http: the server on {host}:{bound_port} stopped at start{why}")
    shown = f"[{host}]" if ":" in host else host
    return HttpServer(server, task, f"http://{shown}:{bound_port}/", app.state.shoal_events)
