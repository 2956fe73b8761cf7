"""The PostgreSQL store: etcd's model on the database a team already runs.

(Its descriptor and configuration live in :mod:`shoal.store.postgres`.)

The shape of k3s's kine (tables: :mod:`shoal.store._pg_sql`):

* one store revision in ``meta``, advanced in the SAME transaction as the change
  it numbers; every write transaction first takes the row lock on it, so writers
  are serialised and revisions commit in order (row locks, not serializable
  isolation: every write touches that one row anyway, so serializable would only
  turn waiting into aborts and retries);
* leases expire by the database server's clock (``clock_timestamp()``), never a
  client's: the ``clock`` given to :meth:`PostgresStore.open` is ignored for leases;
* every store client sweeps expired leases every ``sweep_interval`` (<= 250 ms)
  under an advisory lock, so two clients never sweep at once; each expired
  lease's keys are deleted at one new revision, like etcd;
* a change log by revision feeds watches; ``LISTEN/NOTIFY`` only wakes the
  poller, which always reads the log by revision (see :mod:`._pg_watch`); the log
  is compacted like etcd (automatically after ``log_retention`` revisions, or by
  :meth:`compact`), and a watch from before the compaction point raises Compacted;
* tables are created on first use (idempotent, under an advisory lock) and carry
  a schema version checked at open; ``schema`` keeps clusters in one database apart.

How calls block: each call takes one connection from a small pool (``pool_size``)
and waits at most ``timeout`` seconds; a write also waits for the revision row
lock. Errors: see :mod:`._pg_conn` (the one boundary) and :mod:`._pg_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from shoal._clock import Clock
from shoal._errors import (
    Compacted,
    ConfigError,
    InvalidArgument,
    LeaseNotFound,
    NotRunning,
    ShoalError,
    UnsupportedBackend,
)
from shoal._retry import Backoff
from shoal.store._pg_conn import Conn, Conns
from shoal.store._pg_errors import translate
from shoal.store._pg_sql import SCHEMA_VERSION, Sql, span
from shoal.store._pg_watch import Watcher, batches, decode_events
from shoal.store.protocol import (
    Compare,
    Delete,
    Event,
    Features,
    KeyValue,
    Lease,
    OpResult,
    Put,
    RangeResult,
    TxnOp,
    TxnResult,
    check_compare,
    check_txn_ops,
)

__all__ = ["POSTGRES_EXTRA_HINT", "PostgresStore", "describe"]

T = TypeVar("T")
log = logging.getLogger(__name__)
POSTGRES_EXTRA_HINT = "the postgres backend needs the postgres extra: pip install 'shoal[postgres]'"
_FALLBACK_POLL = 1.0  # read the log at least this often even without a notification


def _kv(row: Sequence[Any]) -> KeyValue:
    key, value, create, mod, version, lease = row
    return KeyValue(bytes(key).decode(), bytes(value), create, mod, version, lease)


class _Tx:
    """One write transaction in progress: ``rev`` is the last revision closed,
    changes are written at ``rev + 1`` until :meth:`flush` closes it."""

    def __init__(self, sql: Sql, conn: Conn, rev: int) -> None:
        self.sql, self.conn, self.rev, self.dirty = sql, conn, rev, False

    async def fetch(self, query: str, params: Any = ()) -> list[Any]:
        return list(await (await self.conn.execute(query, params)).fetchall())

    def flush(self) -> None:
        if self.dirty:
            self.rev += 1
            self.dirty = False

    async def select(self, key: str, prefix: bool) -> list[KeyValue]:
        if not prefix:
            return [_kv(r) for r in await self.fetch(self.sql.get, (span(key, False)[0],))]
        lo, hi = span(key, True)
        if hi is None:
            return [_kv(r) for r in await self.fetch(self.sql.range_from, (lo,))]
        return [_kv(r) for r in await self.fetch(self.sql.range_span, (lo, hi))]

    async def put(self, key: str, value: bytes, lease: int) -> None:
        params = {"key": span(key, False)[0], "value": bytes(value), "rev": self.rev + 1,
                  "lease": lease}  # fmt: skip
        cur = await self.conn.execute(self.sql.put, params)
        if cur.rowcount < 1:  # the lease is gone: the transaction is rolled back
            raise LeaseNotFound(lease)
        self.dirty = True

    async def delete(self, key: str, prefix: bool) -> int:
        lo, hi = span(key, prefix)
        query = self.sql.delete_span if hi is not None else self.sql.delete_from
        if not prefix:
            query = self.sql.delete_key
        cur = await self.conn.execute(query, {"lo": lo, "hi": hi, "rev": self.rev + 1})
        count = max(0, int(cur.rowcount))
        self.dirty = self.dirty or count > 0
        return count

    async def drop_lease(self, lease: int) -> None:
        """Delete the lease and its keys, at one revision of their own."""
        self.flush()
        cur = await self.conn.execute(
            self.sql.delete_lease_keys, {"lease": lease, "rev": self.rev + 1}
        )
        self.dirty = cur.rowcount > 0
        await self.conn.execute(self.sql.delete_lease, (lease,))
        self.flush()


class PostgresStore:
    """A :class:`~shoal.store.Store` on PostgreSQL. Create it with :meth:`open`."""

    features = Features(name="postgres", multi_process=True, multi_machine=True, linearizable=True)

    def __init__(
        self, conns: Conns, sql: Sql, *, sweep_interval: float, log_retention: int
    ) -> None:
        self._conns = conns
        self._sql = sql
        self._where = conns.where
        self._sweep_interval = sweep_interval
        self._retention = max(1, log_retention)
        self._closed = False
        self._known = 0  # newest revision this client wrote or read
        self._seen = 0  # newest revision the poller has fanned out
        self._watchers: set[Watcher] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Conn | None = None

    @classmethod
    async def open(
        cls,
        dsn: str = "",
        *,
        schema: str = "shoal",
        timeout: float = 5.0,  # noqa: ASYNC109 - a per-call bound kept for later calls
        clock: Clock | None = None,
        sweep_interval: float = 0.25,
        log_retention: int = 10_000,
        pool_size: int = 4,
        **conninfo: Any,
    ) -> PostgresStore:
        """Connect, create or check the tables, start the watch poller and lease sweep.

        ``dsn``: a libpq connection string or URI; ``conninfo``: libpq keywords that
        override it (host, port, dbname, user, password, sslmode, sslrootcert, sslcert,
        sslkey...). ``timeout`` (seconds) bounds every call. ``clock`` is accepted for
        the common signature and ignored: leases follow the server's clock.

        Raises UnsupportedBackend without the extra, ConfigError for bad settings,
        StoreAuthError when login or CREATE is refused, StoreUnavailable when the
        server cannot be reached.
        """
        del clock
        try:
            from psycopg.conninfo import conninfo_to_dict, make_conninfo
        except ModuleNotFoundError as exc:
            raise UnsupportedBackend(POSTGRES_EXTRA_HINT) from exc
        if not 0 < sweep_interval <= 0.25:
            raise ConfigError(f"sweep_interval: {sweep_interval!r} must be in (0, 0.25] seconds")
        if timeout <= 0:
            raise ConfigError(f"store.postgres.timeout: {timeout!r} must be > 0 seconds")
        sql = Sql(schema)
        extra = {k: v for k, v in conninfo.items() if v is not None}
        extra.setdefault("connect_timeout", max(1, round(timeout)))
        extra.setdefault("application_name", "shoal")
        try:
            info = make_conninfo(dsn, **extra)
            params = conninfo_to_dict(info)
        except Exception as exc:  # psycopg.ProgrammingError: a malformed DSN
            raise ConfigError(f"store.postgres.dsn: cannot parse it ({exc})") from None
        where = describe(params, schema)
        self = cls(
            Conns(info, where, timeout, max(2, pool_size)),
            sql,
            sweep_interval=sweep_interval,
            log_retention=log_retention,
        )
        try:
            self._seen = self._known = await self._conns.read(self._prepare)
        except BaseException:
            await self._conns.aclose()
            raise
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name=f"shoal-pg-poll {where}"),
            asyncio.create_task(self._sweep_loop(), name=f"shoal-pg-sweep {where}"),
        ]
        return self

    async def _prepare(self, conn: Conn) -> int:
        """Create the tables if needed (idempotent) and check the schema version."""
        import psycopg

        try:
            row = await (await conn.execute(self._sql.version)).fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            async with conn.transaction():
                await conn.execute(self._sql.schema_lock)
                for statement in self._sql.create:
                    await conn.execute(statement)
            row = await (await conn.execute(self._sql.version)).fetchone()
        version = int(row[0]) if row else 0
        if version != SCHEMA_VERSION:
            raise UnsupportedBackend(
                f"{self._where}: the tables have schema version {version}, this Shoal "
                f"uses {SCHEMA_VERSION}; upgrade Shoal or use another store.postgres.schema"
            )
        row = await (await conn.execute(self._sql.rev)).fetchone()
        return int(row[0])

    # -- helpers ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise NotRunning(f"{self._where} is closed")

    async def _fetch(self, query: str, params: Any = ()) -> list[Any]:
        self._check_open()

        async def run(conn: Conn) -> list[Any]:
            return list(await (await conn.execute(query, params)).fetchall())

        return await self._conns.read(run)

    async def _write(
        self, body: Callable[[_Tx], Awaitable[T]], *, advisory: str | None = None
    ) -> tuple[T, int] | None:
        """``body`` in one write transaction: its result and the revision after it."""
        self._check_open()

        async def run(conn: Conn, rev: int) -> tuple[T, int, str]:
            tx = _Tx(self._sql, conn, rev)
            result = await body(tx)
            tx.flush()
            if tx.rev == rev:
                return result, rev, ""
            step = max(1, self._retention // 10)  # auto-compaction, in batches
            if tx.rev > self._retention and tx.rev // step != rev // step:
                await self._compact_to(conn, tx.rev - self._retention + 1)
            return result, tx.rev, self._sql.finish(tx.rev)

        done = await self._conns.write(self._sql.lock_rev, run, advisory=advisory)
        if done is not None:
            self._known = max(self._known, done[1])
        return done

    async def _must_write(self, body: Callable[[_Tx], Awaitable[T]]) -> tuple[T, int]:
        done = await self._write(body)
        assert done is not None
        return done

    async def _compact_to(self, conn: Conn, revision: int) -> None:
        await conn.execute(self._sql.drop_log, (revision,))
        await conn.execute(self._sql.set_compact, (revision,))

    # -- the Store API --------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        """The current record of ``key`` or None (one statement, never waits for writers)."""
        rows = await self._fetch(self._sql.get, (span(key, False)[0],))
        return _kv(rows[0]) if rows else None

    async def range(self, prefix: str) -> RangeResult:
        """Every key under ``prefix``, sorted, with the revision of the same snapshot."""
        lo, hi = span(prefix, True)
        rows = await self._fetch(self._sql.range_rev, (lo, hi, hi))
        rev = int(rows[0][0])
        self._known = max(self._known, rev)
        return RangeResult(tuple(_kv(r[1:]) for r in rows if r[1] is not None), rev)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the new revision. LeaseNotFound for a missing lease."""
        return (await self._must_write(lambda tx: tx.put(key, value, lease)))[1]

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or a prefix); returns how many keys were deleted."""
        return (await self._must_write(lambda tx: tx.delete(key, prefix)))[0]

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """Compares and the chosen branch in one database transaction."""
        check_txn_ops(on_success)
        check_txn_ops(on_failure)
        keys = sorted({span(c.key, False)[0] for c in compares})

        async def body(tx: _Tx) -> tuple[bool, tuple[OpResult, ...]]:
            current = {kv.key: kv for kv in map(_kv, await tx.fetch(tx.sql.get_many, (keys,)))}
            ok = all(check_compare(c, current.get(c.key)) for c in compares)
            results: list[OpResult] = []
            for op in on_success if ok else on_failure:
                if isinstance(op, Put):
                    await tx.put(op.key, op.value, op.lease)
                    results.append(None)
                elif isinstance(op, Delete):
                    results.append(await tx.delete(op.key, op.prefix))
                else:
                    results.append(await tx.select(op.key, op.prefix))
            return ok, tuple(results)

        (ok, results), rev = await self._must_write(body)
        return TxnResult(ok, rev, results)

    async def grant(self, ttl: int) -> Lease:
        """A new lease of ``ttl`` seconds, expiring by the server's clock."""
        if ttl < 1:
            raise InvalidArgument(f"lease TTL must be >= 1 second, got {ttl}")
        self._check_open()
        lease = secrets.randbits(62) + 1

        async def run(conn: Conn) -> None:
            await conn.execute(self._sql.grant, (lease, ttl, ttl))

        await self._conns.read(run)  # resent once after a lost reply: same id, same row
        return Lease(lease, ttl)

    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease`` from the server's clock; returns its TTL. LeaseNotFound."""
        rows = await self._fetch(self._sql.keepalive, (lease,))
        if not rows:
            raise LeaseNotFound(lease)
        return int(rows[0][0])

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease`` and delete its keys at one revision. LeaseNotFound."""

        async def body(tx: _Tx) -> None:
            if not await tx.fetch(tx.sql.lease_row, (lease,)):
                raise LeaseNotFound(lease)
            await tx.drop_lease(lease)

        await self._must_write(body)

    async def lease_ttl(self, lease: int) -> int:
        """Whole seconds left on ``lease`` by the server's clock; -1 when it is gone."""
        rows = await self._fetch(self._sql.lease_left, (lease,))
        return -1 if not rows else max(0, int(rows[0][0]))

    def watch(self, prefix: str, start_revision: int | None = None) -> AsyncGenerator[Event, None]:
        """Changes under ``prefix`` from ``start_revision`` (None or 0: from this call) on.

        Events arrive within one round trip after the server's NOTIFY (at most
        about 1 s if notifications are lost). Raises Compacted if the start is
        older than the compaction point (or the watch fell ``log_retention``
        revisions behind a compaction). Ends when the store closes."""
        self._check_open()
        start = start_revision if start_revision and start_revision > 0 else None
        now = max(self._seen, self._known) + 1
        watcher = Watcher(prefix, start or now, start is not None, self._retention)
        self._watchers.add(watcher)
        return self._stream(watcher)

    async def _history(self, prefix: str, start: int) -> tuple[list[list[Event]], int]:
        lo, hi = span(prefix, True)
        rows = await self._fetch(self._sql.history, (start, lo, hi, hi))
        compact, rev, events = decode_events(rows)
        if start < compact:
            raise Compacted(compact)
        return batches(events), rev

    async def _stream(self, w: Watcher) -> AsyncGenerator[Event, None]:
        try:
            while not (w.closed or self._closed):
                if w.resync:
                    w.resync = False
                    w.queue.clear()
                    found, rev = await self._history(w.prefix, w.next_rev)
                    w.next_rev = max(w.next_rev, rev + 1)
                elif w.queue:
                    found = [w.queue.popleft()]
                    if found[0][0].revision < w.next_rev:
                        continue
                    w.next_rev = found[0][0].revision + 1
                else:
                    w.wake.clear()
                    await w.wake.wait()
                    continue
                for batch in found:
                    for ev in batch:
                        yield ev
        finally:
            self._watchers.discard(w)

    async def revision(self) -> int:
        """The current store revision."""
        rev = int((await self._fetch(self._sql.rev))[0][0])
        self._known = max(self._known, rev)
        return rev

    async def compact(self, revision: int) -> None:
        """Drop watch history before ``revision``. Compacted if already that far;
        ValueError for a future revision."""

        async def body(tx: _Tx) -> None:
            point = int((await tx.fetch(tx.sql.compact_point))[0][0])
            if revision <= point:
                raise Compacted(point)
            if revision > tx.rev:
                raise InvalidArgument(f"cannot compact to future revision {revision} > {tx.rev}")
            await self._compact_to(tx.conn, revision)

        await self._must_write(body)

    async def aclose(self) -> None:
        """Stop the poller and the sweep, end open watches, close connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in list(self._watchers):
            w.closed = True
            w.wake.set()
        await self._close_listener()
        await self._conns.aclose()

    # -- background tasks -------------------------------------------------------------
    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _poll_once(self, wait: bool) -> None:
        """Wait for a notification (or the fallback), then fan out new log rows."""
        if self._listener is None:
            self._listener = await self._conns.connect()
            await self._listener.execute(self._sql.listen)
            wait = False  # (re)connected: notifications may have been missed
        conn = self._listener
        if wait:
            revision = ""
            async for note in conn.notifies(timeout=_FALLBACK_POLL, stop_after=1):
                revision = note.payload  # the revision that transaction committed
            if not self._watchers:  # nobody to tell: only remember where "now" is
                if revision.isdigit():
                    self._seen = max(self._seen, int(revision))
                return
        async with asyncio.timeout(self._conns.timeout):
            rows = await (await conn.execute(self._sql.events, (self._seen,))).fetchall()
        compact, rev, events = decode_events(rows)
        watchers = list(self._watchers)
        if compact > self._seen + 1:  # rows we never fetched were compacted away
            for w in watchers:
                w.lost()
        for batch in batches(events):
            for w in watchers:
                w.offer(batch)
        self._seen = max(self._seen, rev)

    async def _poll_loop(self) -> None:
        failing = False
        wait = True
        backoff = Backoff(0.05, 0.5)
        while not self._closed:
            try:
                await self._poll_once(wait)
                wait = True
                failing = False
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # watches wait; retried after a pause
                if not failing:
                    reason = translate(exc, self._where) if not isinstance(exc, ShoalError) else exc
                    log.warning("watch poll failed: %s", reason)
                failing = True
                await self._close_listener()
                await backoff.sleep()

    async def _sweep_once(self) -> bool:
        """Delete expired leases and their keys, if this client wins the sweep lock."""
        if not (await self._fetch(self._sql.any_due))[0][0]:
            return False

        async def body(tx: _Tx) -> bool:
            due = [r[0] for r in await tx.fetch(tx.sql.due)]
            for lease in due:
                await tx.drop_lease(lease)
            return bool(due)

        done = await self._write(body, advisory=self._sql.sweep_lock)
        return bool(done and done[0])

    async def _sweep_loop(self) -> None:
        failing = False
        while not self._closed:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self._sweep_once()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried next tick
                if not failing:
                    log.warning("lease expiry sweep failed: %s", exc)
                failing = True


def describe(params: dict[str, Any], schema: str) -> str:
    """A human 'where' for messages: never the password."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or 5432
    db = params.get("dbname") or params.get("user") or "postgres"
    return f"postgres at {host}:{port}/{db} (schema {schema})"
