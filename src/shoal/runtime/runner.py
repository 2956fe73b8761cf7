"""DutyRunner: runs one owned duty, restarts it with backoff when it crashes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from shoal.aio._retry import Backoff
from shoal.clock import Clock
from shoal.runtime.context import DutyContext

log = logging.getLogger("shoal.duties")


class DutyRunner:
    """Runs ``fn(ctx)`` while this node owns the duty.

    Async functions run as a task and are CANCELLED when the duty is lost;
    sync functions run in a thread and are asked to stop via
    ``ctx.stopping`` (a thread cannot be cancelled: fencing protects writes
    of a sync duty that does not stop in time). A function that raises is
    restarted after a random wait of up to ``backoff`` seconds (the bound
    doubling up to ``backoff_max``; full jitter, :mod:`shoal.aio._retry`) and
    the crash is counted and reported; one that returns is ``completed``.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None,
        ctx: DutyContext,
        clock: Clock,
        *,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        on_crash: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.fn = fn
        self.ctx = ctx
        self.clock = clock
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.on_crash = on_crash
        self.status = "starting"
        self.crashes = 0
        self.last_error = ""
        self.started_at = clock.time()
        self._task: asyncio.Task[None] | None = None

    @property
    def token(self) -> int:
        return self.ctx.token

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"shoal-duty-{self.ctx.name}")

    async def _call(self) -> None:
        assert self.fn is not None
        if inspect.iscoroutinefunction(self.fn):
            await self.fn(self.ctx)
            return
        result = await asyncio.to_thread(self.fn, self.ctx)
        if inspect.isawaitable(result):
            await result

    async def _run(self) -> None:
        if self.fn is None:  # an ownership-only duty (e.g. the leader)
            self.status = "running"
            await self.ctx.stopping.wait()
            return
        base = max(self.backoff, 0.001)
        backoff = Backoff(base, max(base, self.backoff_max), clock=self.clock)
        while not self.ctx.stopping.is_set():
            self.status = "running"
            try:
                await self._call()
                self.status = "completed"
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.crashes += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.status = "crashed"
                log.error(
                    "duty %s crashed (%d so far): %s; restarting within %.1fs",
                    self.ctx.name, self.crashes, self.last_error, backoff.ceiling(), exc_info=exc,
                )
                if self.on_crash is not None:
                    self.on_crash(self.ctx.name, exc)
                if not await backoff.sleep(self.ctx.stopping):
                    return

    async def stop(self, reason: str, timeout: float = 0.0) -> None:  # noqa: ASYNC109
        """Signal stop; wait up to ``timeout`` for a clean exit, then cancel."""
        self.ctx.stopping.set(reason)
        task = self._task
        if task is None:
            return
        if timeout > 0 and not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self.status = "stopped"

    def cancel_now(self, reason: str) -> None:
        """Stop at once without waiting (lost lease: G1 leaves no time)."""
        self.ctx.stopping.set(reason)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.status = "stopped"
