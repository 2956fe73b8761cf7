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
import logging
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from shoal.clock import Clock
from shoal.errors import (
    Compacted,
    ConfigError,
    InvalidArgument,
    LeaseNotFound,
    NotRunning,
    UnsupportedBackend,
)
from shoal.store._pg_conn import Conn, Conns
from shoal.store._pg_sql import SCHEMA_VERSION, Sql, span
from shoal.store._pg_tx import Tx, kv_of
from shoal.store._pg_watch import Watches
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
        self._watches = Watches(conns, sql, self._retention)
        self._tasks: list[asyncio.Task[None]] = []

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
            self._known = await self._conns.read(self._prepare)
            self._watches.seen = self._known
        except BaseException:
            await self._conns.aclose()
            raise
        self._tasks = [
            asyncio.create_task(self._watches.run(), name=f"shoal-pg-poll {where}"),
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
        self,
        body: Callable[[Tx], Awaitable[T]],
        *,
        advisory: str | None = None,
        prefetch: str = "",
    ) -> tuple[T, int] | None:
        """``body`` in one write transaction: its result and the revision after it.
        ``prefetch``: a query sent with BEGIN; its rows are ``tx.prefetched``."""
        self._check_open()

        async def run(conn: Conn, rev: int, rows: list[Any]) -> tuple[T, int, str]:
            tx = Tx(self._sql, conn, rev)
            tx.prefetched = rows
            result = await body(tx)
            tx.flush()
            if tx.rev == rev:
                return result, rev, ""
            step = max(1, self._retention // 10)  # auto-compaction, in batches
            if tx.rev > self._retention and tx.rev // step != rev // step:
                await self._compact_to(conn, tx.rev - self._retention + 1)
            return result, tx.rev, self._sql.finish(tx.rev)

        done = await self._conns.write(
            self._sql.lock_rev, run, advisory=advisory, prefetch=prefetch
        )
        if done is not None:
            self._known = max(self._known, done[1])
        return done

    async def _must_write(
        self, body: Callable[[Tx], Awaitable[T]], prefetch: str = ""
    ) -> tuple[T, int]:
        done = await self._write(body, prefetch=prefetch)
        assert done is not None
        return done

    async def _compact_to(self, conn: Conn, revision: int) -> None:
        await conn.execute(self._sql.drop_log, (revision,))
        await conn.execute(self._sql.set_compact, (revision,))

    # -- the Store API --------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        """The current record of ``key`` or None (one statement, never waits for writers)."""
        rows = await self._fetch(self._sql.get, (span(key, False)[0],))
        return kv_of(rows[0]) if rows else None

    async def range(self, prefix: str) -> RangeResult:
        """Every key under ``prefix``, sorted, with the revision of the same snapshot."""
        lo, hi = span(prefix, True)
        rows = await self._fetch(self._sql.range_rev, (lo, hi, hi))
        rev = int(rows[0][0])
        self._known = max(self._known, rev)
        return RangeResult(tuple(kv_of(r[1:]) for r in rows if r[1] is not None), rev)

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

        async def body(tx: Tx) -> tuple[bool, tuple[OpResult, ...]]:
            current = {kv.key: kv for kv in map(kv_of, tx.prefetched)}
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

        # the compared keys are read in the message that begins the transaction
        (ok, results), rev = await self._must_write(body, self._sql.get_listed(keys))
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

        async def body(tx: Tx) -> None:
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
        return self._watches.watch(prefix, start_revision, self._known)

    async def revision(self) -> int:
        """The current store revision."""
        rev = int((await self._fetch(self._sql.rev))[0][0])
        self._known = max(self._known, rev)
        return rev

    async def compact(self, revision: int) -> None:
        """Drop watch history before ``revision``. Compacted if already that far;
        InvalidArgument (a ValueError) for a future revision."""

        async def body(tx: Tx) -> None:
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
        await self._watches.aclose()
        await self._conns.aclose()

    # -- background task ---------------------------------------------------------------
    async def _sweep_once(self) -> bool:
        """Delete expired leases and their keys, if this client wins the sweep lock."""
        if not (await self._fetch(self._sql.any_due))[0][0]:
            return False

        async def body(tx: Tx) -> bool:
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
