"""Run a node from synchronous code: the node lives on its own event loop in a
background (daemon) thread.

    with NodeThread(app, "node.yaml") as node:     # blocks until joined
        print(node.leader, sorted(node.members))
        serve_forever()
    # leaving the block drains (hands duties over) and closes

:meth:`NodeThread.start` raises the node's start error in the caller
(:class:`~shoal.NameTaken`, :class:`~shoal.StoreUnavailable`, ...). The
read-only views (:meth:`NodeThread.status`, and ``leader``, ``members``,
``owners``, ``running`` taken from it) read one ``NodeStatus`` snapshot taken on
the node's loop, never a torn read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from shoal.core.node_state import Phase
from shoal.errors import NotRunning, StartTimeout, WrongState

if TYPE_CHECKING:
    from shoal.config import NodeConfig
    from shoal.primitives.membership import Member
    from shoal.primitives.ownership import Owner
    from shoal.runtime.app import App
    from shoal.runtime.node import Node
    from shoal.runtime.status import NodeStatus

__all__ = ["NodeThread"]


class NodeThread:
    """A :class:`~shoal.runtime.node.Node` running in a background thread."""

    def __init__(self, app: App, config: NodeConfig | str | Path) -> None:
        if isinstance(config, str | Path):
            from shoal.config import load_config

            config = load_config(config)
        self.app = app
        self.config = config
        self.node: Node | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> NodeThread:
        """Start the thread and block until the node joined; re-raise its start error."""
        if self._thread is not None:
            raise WrongState("NodeThread.start() was already called")
        self._thread = threading.Thread(
            target=self._main, name=f"shoal-node-{self.config.node.name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop(timeout=5.0)
            raise StartTimeout(f"node did not join within {timeout} s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Drain (hand duties over), close the node and end the thread. Idempotent."""
        self._stopping = True
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> NodeThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() when not yet joined
            if not self._ready.is_set():
                self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from shoal.runtime.node import Node

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stopping:
            self._stop.set()
        node = await Node.from_config(self.app, self.config)
        self.node = node
        try:
            await node.start()
        except BaseException:
            await node.store.aclose()
            raise
        try:
            self._ready.set()
            await self._stop.wait()
        finally:
            await node.aclose()

    # -- read-only views (one NodeStatus snapshot, taken on the node's loop) -------------
    def status(self, timeout: float = 10.0) -> NodeStatus:
        """The node's :class:`~shoal.runtime.status.NodeStatus`, taken on its loop
        (a consistent snapshot, never a torn read). NotRunning when not running."""
        node, loop = self.node, self._loop
        if node is None or loop is None or loop.is_closed() or not self._ready.is_set():
            raise NotRunning("the node thread is not running")

        async def run() -> NodeStatus:
            return node.status()

        try:
            future = asyncio.run_coroutine_threadsafe(run(), loop)
        except RuntimeError:
            raise NotRunning("the node thread is not running") from None
        try:
            return future.result(timeout)
        except concurrent.futures.CancelledError:
            raise NotRunning("the node thread stopped") from None

    @property
    def phase(self) -> Phase:
        try:
            return self.status().phase
        except NotRunning:
            return Phase.STOPPED

    @property
    def leader(self) -> str | None:
        return self.status().leader

    @property
    def members(self) -> dict[str, Member]:
        return dict(self.status().members)

    @property
    def owners(self) -> dict[str, Owner]:
        """Duty owners; empty while the node is not ACTIVE (owners unknown)."""
        return dict(self.status().owners or {})

    @property
    def running(self) -> list[str]:
        """Duties running on this node now."""
        return list(self.status().running)
