"""Connections of the PostgreSQL backend: a small pool and the one error boundary.

Every call of the store goes through :meth:`Conns.read` or :meth:`Conns.write`,
and those are the only places where psycopg exceptions are caught and
translated (by :func:`shoal.store._pg_errors.translate`).

* A read is one statement in autocommit mode; on a connection failure it is
  retried once on a fresh connection (reads are idempotent).
* A write is one transaction in 2 + k round trips: ``BEGIN`` sent with the row
  lock on ``meta.rev`` (which also returns the transaction id), the k statements of
  the body, then the revision update and ``NOTIFY`` sent with ``COMMIT``. A
  failure BEFORE ``COMMIT`` was
  sent leaves nothing applied (the server aborts a transaction whose client is
  gone), so it is retried once on a fresh connection. A failure while ``COMMIT``
  is in flight is settled by asking the server ``pg_xact_status(xid)`` on a new
  connection: committed -> the result stands; aborted -> StoreUnavailable (nothing
  written); unknown or unreachable -> :class:`~shoal.OutcomeUnknown`. A write is
  never sent twice after its ``COMMIT`` left.
* A session idle inside a transaction for 1 s is ended by the server
  (:func:`session_settings`): a paused client cannot hold the revision lock,
  and with it every writer of the cluster, for longer.
* Cancelling a call closes its connection AT ONCE (the server then aborts what
  ran on it). psycopg's own reaction to a cancelled query -- connect to the
  server to send a cancel request, then wait for the query to end, up to 10 s
  -- would hold up the cancellation of a duty for as long as the store is
  unreachable, and a node must stop its duties before its lease expires (G1).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shoal.aio._retry import Backoff
from shoal.errors import NotRunning, OutcomeUnknown, ShoalError, StoreUnavailable
from shoal.store._pg_errors import is_connection_error, translate
from shoal.store._pg_sql import session_settings

T = TypeVar("T")
# Raised by the store's own code (a missing lease, a bad argument): passed on as they
# are, never translated; the connection stays usable.
_CALLER_ERRORS = (ShoalError, ValueError, TypeError)
Conn = Any  # psycopg.AsyncConnection[Any] (psycopg is imported lazily)
_conn_class: Any = None


def _connection_class() -> Any:
    """psycopg's AsyncConnection, except that a cancelled wait drops the connection."""
    global _conn_class
    if _conn_class is None:
        import psycopg
        from psycopg import waiting

        class _Connection(psycopg.AsyncConnection[Any]):
            async def wait(
                self, gen: Any, interval: float = 0.1, timeout: float | None = None  # noqa: ASYNC109
            ) -> Any:
                try:
                    return await waiting.wait_async(
                        gen, self.pgconn.socket, interval=interval, timeout=timeout
                    )
                except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                    if self.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                        self.pgconn.finish()  # never wait for a cancel request to get through
                    raise

        _conn_class = _Connection
    return _conn_class


class Conns:
    """At most ``size`` open connections to one server, handed out one call at a time."""

    def __init__(self, conninfo: str, where: str, timeout: float, size: int) -> None:
        self.conninfo = conninfo
        self.where = where
        self.timeout = timeout
        self._idle: list[Conn] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def connect(self) -> Conn:
        """A new autocommit connection; errors are translated."""
        import psycopg

        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await _connection_class().connect(self.conninfo, autocommit=True)
                await conn.execute(session_settings(self.timeout))
                return conn
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if conn is not None:
                _discard(conn)
            raise translate(exc, self.where, timeout=self.timeout) from None

    async def _take(self) -> Conn:
        while self._idle:
            conn = self._idle.pop()
            if not (conn.closed or conn.broken):
                return conn
        return await self.connect()

    def _give(self, conn: Conn, healthy: bool) -> None:
        from psycopg.pq import TransactionStatus

        idle = healthy and not (conn.closed or conn.broken)
        if idle and conn.info.transaction_status == TransactionStatus.IDLE and not self._closed:
            self._idle.append(conn)
        else:
            _discard(conn)

    async def read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn(conn)`` (autocommit statements), retried once after a connection failure."""
        for attempt in (0, 1):
            if self._closed:
                raise NotRunning(f"{self.where} is closed")
            async with self._slots:
                conn = await self._take()
                try:
                    async with asyncio.timeout(self.timeout):
                        result = await fn(conn)
                except _CALLER_ERRORS:
                    self._give(conn, True)
                    raise
                except BaseException as exc:
                    _discard(conn)
                    if attempt == 0 and is_connection_error(exc) and not _timed_out(exc):
                        continue
                    if isinstance(exc, Exception):
                        raise translate(exc, self.where, timeout=self.timeout) from None
                    raise
                self._give(conn, True)
                return result
        raise AssertionError("unreachable")

    async def write(
        self,
        lock: str,
        fn: Callable[[Conn, int, list[Any]], Awaitable[tuple[T, int, str]]],
        *,
        advisory: str | None = None,
        prefetch: str = "",
    ) -> tuple[T, int] | None:
        """``fn(conn, rev, rows)`` in one transaction after ``lock`` (the row lock on the
        revision, returning it and the transaction id; sent with ``BEGIN``, and with
        ``prefetch``, a query without parameters whose ``rows`` ``fn`` gets). ``fn``
        returns its result, the revision after it and the statements (no parameters)
        to send together with ``COMMIT``. With ``advisory`` (a try-lock query) None is
        returned when the lock is taken. Round trips: 2 + those of ``fn``."""
        for attempt in (0, 1):
            if self._closed:
                raise NotRunning(f"{self.where} is closed")
            async with self._slots:
                conn = await self._take()
                xid: str | None = None
                committing = False
                try:
                    async with asyncio.timeout(self.timeout):
                        if advisory is not None:
                            got = await _last(await conn.execute(f"BEGIN; {advisory}"))
                            if not got[0]:
                                await conn.execute("ROLLBACK")
                                self._give(conn, True)
                                return None
                            rev, xid = await (await conn.execute(lock)).fetchone()
                            rows: list[Any] = []
                        else:
                            cur = await conn.execute(
                                f"BEGIN; {lock}; {prefetch}" if prefetch else f"BEGIN; {lock}"
                            )
                            cur.nextset()  # past BEGIN
                            rev, xid = await cur.fetchone()
                            rows = list(await cur.fetchall()) if cur.nextset() else []
                        outcome, after, finish = await fn(conn, int(rev), rows)
                        committing = True
                        await conn.execute(f"{finish}; COMMIT" if finish else "COMMIT")
                except _CALLER_ERRORS:
                    await _rollback(conn)
                    self._give(conn, True)
                    raise
                except BaseException as exc:
                    _discard(conn)
                    cancelled = isinstance(exc, asyncio.CancelledError)
                    if committing and xid is not None and not cancelled:
                        await self._settle(xid)
                        return outcome, after
                    if attempt == 0 and is_connection_error(exc) and not _timed_out(exc):
                        continue  # never committed: nothing was applied
                    if isinstance(exc, Exception):
                        raise translate(exc, self.where, timeout=self.timeout) from None
                    raise
                self._give(conn, True)
                return outcome, after
        raise AssertionError("unreachable")

    async def _settle(self, xid: str) -> None:
        """Return when transaction ``xid`` committed; raise otherwise (see module doc)."""
        deadline = time.monotonic() + self.timeout
        status: str | None = None
        backoff = Backoff(0.02, 0.2)
        while time.monotonic() < deadline:
            try:
                conn = await self.connect()
            except ShoalError:
                await backoff.sleep(limit=deadline - time.monotonic())
                continue
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    cur = await conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,))
                    row = await cur.fetchone()
                status = row[0] if row else None
            except Exception:
                status = None
            finally:
                _discard(conn)
            if status == "committed":
                return
            if status == "aborted":
                raise StoreUnavailable(
                    f"{self.where}: the connection failed during commit; the server rolled "
                    "the transaction back (nothing was written)"
                ) from None
            if status is None:
                break
            # "in progress": the server is still finishing it
            await backoff.sleep(limit=deadline - time.monotonic())
        raise OutcomeUnknown(
            f"{self.where}: the connection failed during commit and the outcome could not be "
            "read back; re-read the keys before retrying"
        ) from None

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()


async def _last(cur: Any) -> Any:
    """The first row of the last result of a multi-statement ``execute``."""
    while cur.nextset():
        pass
    return await cur.fetchone()


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)


async def _rollback(conn: Conn) -> None:
    with contextlib.suppress(Exception):
        await conn.execute("ROLLBACK")


def _discard(conn: Conn) -> None:
    """Close a connection without waiting (its transaction, if any, is aborted)."""
    with contextlib.suppress(Exception):
        conn.pgconn.finish()
