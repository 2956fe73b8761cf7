"""The embedded SQLite backend: one machine, any number of processes, one file.

Tables: ``meta`` (revision, compaction point, boot id), ``kv`` (the keys),
``leases`` (deadlines on the machine-wide monotonic clock, valid for one boot
of the machine) and ``log`` (one row per change event: the watch history).

How calls block: every sqlite3 call runs on ONE worker thread owned by the
store, so no coroutine ever blocks the event loop, and calls of one store run
one after another. A write waits for the file's write lock (``BEGIN
IMMEDIATE``, tried again every 0.1-1 ms: :mod:`shoal.store._sqlite_lock`) up
to ``lock_timeout`` seconds, then raises
:class:`~shoal.StoreUnavailable`; a failed write never half-happens. Reads
never wait for the lock (WAL), only for this store's call in flight (which may
be a write waiting for it). Cancelling a call cancels the wait; a write that
already reached the worker thread still happens.

Background work while open: one poller checks ``PRAGMA data_version`` at once
after a local write, at once when another process's store on the same file
says it committed (a unix datagram, :mod:`shoal.store._sqlite_wake`), and
otherwise every ``poll_interval`` as the fallback (``wake_poll_interval`` while
the wake-up channel is up); it fetches new log rows and fans them out to every
watch; an expiry check every 100 ms deletes expired leases
and their keys (each lease's keys at one new revision, like etcd).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import secrets
import sqlite3
import time
import urllib.parse
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import field_validator

from shoal.aio._retry import Backoff
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import (
    Compacted,
    ConfigError,
    InvalidArgument,
    LeaseNotFound,
    NotRunning,
    StoreUnavailable,
)
from shoal.store._log_watch import Watcher as _Watcher
from shoal.store._log_watch import batches as _batches
from shoal.store._sqlite_lock import begin_immediate
from shoal.store._sqlite_wake import WakeChannel, open_channel, open_notifier
from shoal.store.protocol import (
    Compare,
    Delete,
    Event,
    EventType,
    Features,
    KeyValue,
    Lease,
    OpResult,
    Put,
    RangeResult,
    Store,
    TxnOp,
    TxnResult,
    check_compare,
    check_txn_ops,
)
from shoal.store.registry import Backend, Section

T = TypeVar("T")
log = logging.getLogger(__name__)

_EXPIRY_TICK = 0.1
_WAKE_POLL = 0.5  # fallback poll while the wake-up channel is up
_PUT, _DEL = 0, 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v)",
    "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL,"
    " create_rev INT NOT NULL, mod_rev INT NOT NULL, version INT NOT NULL, lease INT NOT NULL)"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease)",
    "CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INT NOT NULL,"
    " deadline REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS leases_deadline ON leases(deadline)",
    "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, rev INT NOT NULL, type INT NOT NULL,"
    " key BLOB NOT NULL, value BLOB NOT NULL, create_rev INT NOT NULL, version INT NOT NULL,"
    " lease INT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS log_rev ON log(rev)",
)
_KV_COLS = "key, value, create_rev, mod_rev, version, lease"
_LOG_COLS = "rev, type, key, value, create_rev, version, lease"
_LOG_INSERT = f"INSERT INTO log ({_LOG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _span(key: str, prefix: bool) -> tuple[str, tuple[bytes, ...]]:
    """A WHERE clause on the BLOB column ``key`` (byte order, like etcd)."""
    lo = key.encode()
    if not prefix:
        if not lo:
            raise InvalidArgument("key is empty")
        return "key = ?", (lo,)
    hi = lo.rstrip(b"\xff")
    if not hi:
        return "key >= ?", (lo,)
    return "key >= ? AND key < ?", (lo, hi[:-1] + bytes([hi[-1] + 1]))


def _event(row: Sequence[Any]) -> Event:
    rev, kind, key, value, create, version, lease = row
    kv = KeyValue(key.decode(), value, create, rev, version, lease)
    return Event(EventType.PUT if kind == _PUT else EventType.DELETE, kv)


class SqliteStore:
    """The Store on one SQLite file shared by the processes of one machine.

    Open with :meth:`open`; every method runs its SQL on the store's worker
    thread (see the module docstring for how calls block).
    """

    features = Features(name="sqlite", multi_process=True, multi_machine=False, linearizable=True)

    def __init__(
        self, path: Path, clock: Clock, poll_interval: float, log_retention: int, timeout: float
    ) -> None:
        self.path = path
        self._clock = clock
        self._poll_interval = poll_interval
        self._retention = max(1, log_retention)
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-sqlite")
        # worker-thread state
        self._db: sqlite3.Connection | None = None
        self._rev = self._start_rev = 0  # revision being written / at BEGIN
        self._dirty = False  # the revision being written has changes
        self._commits = 0  # local commits that moved the revision
        self._polled = (-1, -1)  # (data_version, _commits) at the last poll
        self._known = 0  # newest revision this instance wrote or read (read by the loop)
        # event-loop state
        self._seen = 0  # newest revision the poller has fanned out
        self._closed = False
        self._wake = asyncio.Event()
        self._watchers: weakref.WeakSet[_Watcher] = weakref.WeakSet()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: WakeChannel | None = None

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: Clock | None = None,
        poll_interval: float = 0.01,
        log_retention: int = 10_000,
        lock_timeout: float = 5.0,
        read_only: bool = False,
        wake_poll_interval: float = _WAKE_POLL,
        wake: bool = True,
    ) -> SqliteStore:
        """Open (creating if needed) the store in file ``path``; start its poller and
        expiry check. Waits off the loop up to ``lock_timeout`` s for the write lock.
        A new file is created 0600 (readable by its owner only).

        ``log_retention``: revisions of watch history kept. ``read_only``: open an
        existing file for reading only (backups of a read-only file): no expiry
        check, and every write fails. Raises ConfigError for a path that cannot
        hold a file, StoreUnavailable when the file cannot be opened.

        Other processes' changes wake the poller through a unix datagram channel;
        ``poll_interval`` is the fallback poll without that channel,
        ``wake_poll_interval`` (the larger of the two is used) with it. ``wake=False``
        (and ``read_only``): no channel (this store neither wakes others nor is
        woken; it polls).
        """
        self = cls(Path(path), clock or SYSTEM_CLOCK, poll_interval, log_retention, lock_timeout)
        try:
            opener = self._open_read_only if read_only else self._open_sync
            self._seen = await self._call(opener)
        except BaseException:
            await self.aclose()
            raise
        self._channel = open_channel(self.path) if wake and not read_only else None
        if self._channel is not None:
            self._channel.listen(self._wake.set)
            self._poll_interval = max(poll_interval, wake_poll_interval)
        self._tasks = [asyncio.create_task(self._poll_loop(), name=f"shoal-sqlite-poll {path}")]
        if not read_only:
            self._tasks.append(
                asyncio.create_task(self._expiry_loop(), name=f"shoal-sqlite-expiry {path}"))
        return self

    # -- the worker-thread boundary ------------------------------------------------
    async def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise NotRunning(f"sqlite store {self.path} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._guard, fn)

    async def _write(self, fn: Callable[[], T]) -> tuple[T, int]:
        """``fn`` in one write transaction: its result and the revision after it."""
        try:
            return await self._call(functools.partial(self._write_sync, fn))
        finally:
            self._wake.set()  # the poller delivers our own change at once

    def _guard(self, fn: Callable[[], T]) -> T:
        """The one place sqlite3 errors become Shoal errors (on the worker thread)."""
        try:
            return fn()
        except sqlite3.Error as exc:
            hint = " (another process holds the write lock)" if "locked" in str(exc) else ""
            raise StoreUnavailable(f"sqlite store {self.path}: {exc}{hint}") from exc
        finally:
            if self._db is not None and self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.rollback()

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise NotRunning(f"sqlite store {self.path} is closed")
        return self._db

    def _x(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._open_db().execute(sql, params)

    def _xmany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._open_db().executemany(sql, rows)

    def _meta(self, key: str) -> int:
        return int(self._x("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()[0])

    def _open_read_only(self) -> int:
        if not self.path.is_file():
            raise ConfigError(f"store path {str(self.path)!r}: no such file")
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, timeout=self._timeout, isolation_level=None)
        return self._read(lambda: self._meta("rev"))

    def _open_sync(self) -> int:
        if not self.path.parent.is_dir() or self.path.is_dir():
            raise ConfigError(f"store path {str(self.path)!r}: not a file in an existing directory")
        with contextlib.suppress(FileExistsError):  # new: owner only (-wal, -shm follow it)
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        # Switching a NEW file to WAL needs an exclusive lock and sqlite does not
        # call its busy handler for it: two processes opening the file at once
        # would see "database is locked". Retry until the lock timeout.
        deadline = time.monotonic() + self._timeout
        backoff = Backoff(0.01, 0.1)  # only its delays: this runs in a worker thread
        while True:
            try:
                self._x("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(backoff.next_delay())
        self._x("PRAGMA synchronous=FULL")
        self._begin_write()
        for statement in _SCHEMA:
            self._x(statement)
        self._x("INSERT OR IGNORE INTO meta VALUES ('rev', 1), ('compact', 0), ('boot', '')")
        self._x("COMMIT")
        return self._write_sync(self._check_boot)[1]

    def _check_boot(self) -> None:
        """After a reboot no stored monotonic deadline means anything: expire all leases."""
        boot = _boot_id()
        if self._x("SELECT v FROM meta WHERE k = 'boot'").fetchone()[0] != boot:
            for (lease,) in self._x("SELECT id FROM leases ORDER BY id").fetchall():
                self._drop_lease(lease)
            self._x("UPDATE meta SET v = ? WHERE k = 'boot'", (boot,))

    def _close_sync(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    # -- write transactions (worker thread) ------------------------------------------
    def _begin_write(self) -> None:
        begin_immediate(self._open_db(), self._timeout)

    def _write_sync(self, fn: Callable[[], T]) -> tuple[T, int]:
        self._begin_write()
        self._rev = self._start_rev = self._meta("rev")
        self._dirty = False
        self._expire_due()
        result = fn()
        self._flush()
        if self._rev != self._start_rev:
            self._x("UPDATE meta SET v = ? WHERE k = 'rev'", (self._rev,))
            keep_from = self._rev - self._retention + 1  # auto-compaction, in batches
            if keep_from - self._meta("compact") >= max(1, self._retention // 10):
                self._compact_to(keep_from)
        self._x("COMMIT")
        if self._rev != self._start_rev:
            self._commits += 1
            if self._channel is not None:  # wake the other processes' pollers, from here
                self._channel.notify()
        self._known = max(self._known, self._rev)
        return result, self._rev

    def _flush(self) -> None:
        """Close the revision being written, if it changed anything."""
        if self._dirty:
            self._rev += 1
            self._dirty = False

    def _due(self) -> bool:
        now = self._clock.monotonic()
        return bool(self._x("SELECT 1 FROM leases WHERE deadline <= ? LIMIT 1", (now,)).fetchone())

    def _expire_due(self) -> None:
        now = self._clock.monotonic()
        due = self._x("SELECT id FROM leases WHERE deadline <= ? ORDER BY deadline", (now,))
        for (lease,) in due.fetchall():
            self._drop_lease(lease)

    def _drop_lease(self, lease: int) -> None:
        """Delete the lease and its keys, at one revision of their own."""
        self._flush()
        keys = self._x("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,)).fetchall()
        if keys:  # in bulk, not two statements per key: the reaper runs this at a
            # node's death, on the cores the survivors need (200 keys: 2.6 -> 1.2-1.8 ms)
            self._x("DELETE FROM kv WHERE lease = ?", (lease,))
            rev = self._rev + 1
            self._xmany(_LOG_INSERT, [(rev, _DEL, key, b"", 0, 0, 0) for (key,) in keys])
            self._dirty = True
        self._x("DELETE FROM leases WHERE id = ?", (lease,))
        self._flush()

    def _lease(self, lease: int) -> int:
        """The TTL of ``lease``; LeaseNotFound when it does not exist."""
        row = self._x("SELECT ttl FROM leases WHERE id = ?", (lease,)).fetchone()
        if row is None:
            raise LeaseNotFound(lease)
        return int(row[0])

    def _log(self, kind: int, key: bytes, value: bytes, create: int, ver: int, lease: int) -> None:
        self._x(_LOG_INSERT, (self._rev + 1, kind, key, value, create, ver, lease))
        self._dirty = True

    def _remove(self, key: bytes) -> None:
        self._x("DELETE FROM kv WHERE key = ?", (key,))
        self._log(_DEL, key, b"", 0, 0, 0)

    def _select(self, key: str, prefix: bool) -> list[KeyValue]:
        where, params = _span(key, prefix)
        rows = self._x(f"SELECT {_KV_COLS} FROM kv WHERE {where} ORDER BY key", params)
        return [KeyValue(r[0].decode(), *r[1:]) for r in rows.fetchall()]

    def _put(self, key: str, value: bytes, lease: int) -> None:
        if lease:
            self._lease(lease)
        old = self._select(key, False)
        rev, raw, value = self._rev + 1, key.encode(), bytes(value)
        create, version = (old[0].create_revision, old[0].version + 1) if old else (rev, 1)
        sql = f"INSERT OR REPLACE INTO kv ({_KV_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
        self._x(sql, (raw, value, create, rev, version, lease))
        self._log(_PUT, raw, value, create, version, lease)

    def _delete(self, key: str, prefix: bool) -> int:
        where, params = _span(key, prefix)
        keys = self._x(f"SELECT key FROM kv WHERE {where} ORDER BY key", params).fetchall()
        for (raw,) in keys:
            self._remove(raw)
        return len(keys)

    def _compact_to(self, revision: int) -> None:
        self._x("DELETE FROM log WHERE rev < ?", (revision,))
        self._x("UPDATE meta SET v = ? WHERE k = 'compact'", (revision,))

    # -- reads (worker thread) -------------------------------------------------------
    def _read(self, fn: Callable[[], T]) -> T:
        """``fn`` on one snapshot (expired leases vanish at the next expiry tick or write)."""
        self._x("BEGIN")
        result = fn()
        self._known = max(self._known, self._meta("rev"))
        self._x("COMMIT")
        return result

    def _poll_sync(self, seen: int) -> tuple[int, int, list[Event]] | None:
        polled = (int(self._x("PRAGMA data_version").fetchone()[0]), self._commits)
        if polled == self._polled:
            return None  # nobody committed anything since the last poll
        result = self._read(lambda: self._events("rev > ?", (seen,)))
        self._polled = polled
        return result

    def _events(self, where: str, params: Sequence[Any]) -> tuple[int, int, list[Event]]:
        """The compaction point, the revision and the log rows matching ``where``."""
        rows = self._x(f"SELECT {_LOG_COLS} FROM log WHERE {where} ORDER BY rev, id", params)
        events = [_event(r) for r in rows.fetchall()]
        return self._meta("compact"), self._meta("rev"), events

    def _history(self, prefix: str, start: int) -> tuple[list[list[Event]], int]:
        where, params = _span(prefix, True)
        compact, rev, events = self._read(
            lambda: self._events(f"rev >= ? AND {where}", (start, *params))
        )
        if start < compact:
            raise Compacted(compact)
        return _batches(events), rev

    # -- the Store API ------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        """The current record of ``key`` or None. Never waits for writers."""
        kvs = await self._call(lambda: self._read(lambda: self._select(key, False)))
        return kvs[0] if kvs else None

    async def range(self, prefix: str) -> RangeResult:
        """Every key under ``prefix``, sorted, with the read revision. Never waits for writers."""

        def body() -> RangeResult:
            return RangeResult(tuple(self._select(prefix, True)), self._meta("rev"))

        return await self._call(lambda: self._read(body))

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the new revision. Waits for the write lock; LeaseNotFound."""
        return (await self._write(lambda: self._put(key, value, lease)))[1]

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or a prefix); returns the count. Waits for the write lock."""
        return (await self._write(lambda: self._delete(key, prefix)))[0]

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """Compares and the chosen branch in one write transaction (waits for the lock)."""
        check_txn_ops(on_success)
        check_txn_ops(on_failure)

        def body() -> tuple[bool, tuple[OpResult, ...]]:
            ok = all(
                check_compare(c, next(iter(self._select(c.key, False)), None)) for c in compares
            )
            results: list[OpResult] = []
            for op in on_success if ok else on_failure:
                if isinstance(op, Put):
                    self._put(op.key, op.value, op.lease)
                    results.append(None)
                elif isinstance(op, Delete):
                    results.append(self._delete(op.key, op.prefix))
                else:
                    results.append(self._select(op.key, op.prefix))
            return ok, tuple(results)

        (ok, results), rev = await self._write(body)
        return TxnResult(ok, rev, results)

    async def grant(self, ttl: int) -> Lease:
        """A new lease of ``ttl`` seconds (>= 1). Waits for the write lock."""
        if ttl < 1:
            raise InvalidArgument(f"lease TTL must be >= 1 second, got {ttl}")

        def body() -> int:
            lease = secrets.randbits(62) + 1
            deadline = self._clock.monotonic() + ttl
            self._x(
                "INSERT INTO leases (id, ttl, deadline) VALUES (?, ?, ?)", (lease, ttl, deadline)
            )
            return lease

        return Lease((await self._write(body))[0], ttl)

    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; returns its TTL. Waits for the write lock; LeaseNotFound."""

        def body() -> int:
            ttl = self._lease(lease)
            deadline = self._clock.monotonic() + ttl
            self._x("UPDATE leases SET deadline = ? WHERE id = ?", (deadline, lease))
            return ttl

        return (await self._write(body))[0]

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease`` and delete its keys. Waits for the write lock; LeaseNotFound."""

        def body() -> None:
            self._lease(lease)
            self._drop_lease(lease)

        await self._write(body)

    async def lease_ttl(self, lease: int) -> int:
        """Whole seconds left on ``lease`` (rounded up); -1 when it does not exist."""

        def body() -> int:
            row = self._x("SELECT deadline FROM leases WHERE id = ?", (lease,)).fetchone()
            return -1 if row is None else max(0, math.ceil(row[0] - self._clock.monotonic()))

        return await self._call(lambda: self._read(body))

    def watch(self, prefix: str, start_revision: int | None = None) -> AsyncGenerator[Event, None]:
        """Changes under ``prefix`` from ``start_revision`` (None or 0: from this call) on.

        Iterating waits for the shared poller: changes from other processes arrive
        within about ``poll_interval``. Raises Compacted on the first iteration if
        ``start_revision`` is older than the compaction point, or later when the watch
        falls ``log_retention`` revisions behind and the log has moved on. Ends
        (StopAsyncIteration) when the store closes. Close it with ``aclose()``.
        """
        if self._closed:
            raise NotRunning(f"sqlite store {self.path} is closed")
        start = start_revision if start_revision and start_revision > 0 else None
        now = max(self._seen, self._known) + 1
        watcher = _Watcher(prefix, start or now, start is not None, self._retention)
        self._watchers.add(watcher)  # weak: dropping the iterator drops the watcher
        return self._stream(watcher)

    async def _stream(self, w: _Watcher) -> AsyncGenerator[Event, None]:
        try:
            while not (w.closed or self._closed):
                if w.resync:
                    w.resync = False
                    w.queue.clear()
                    history = functools.partial(self._history, w.prefix, w.next_rev)
                    batches, rev = await self._call(history)
                    w.next_rev = max(w.next_rev, rev + 1)
                elif w.queue:
                    batches = [w.queue.popleft()]
                    if batches[0][0].revision < w.next_rev:
                        continue
                    w.next_rev = batches[0][0].revision + 1
                else:
                    w.wake.clear()
                    await w.wake.wait()
                    continue
                for batch in batches:
                    for ev in batch:
                        yield ev
        finally:
            self._watchers.discard(w)

    async def revision(self) -> int:
        """The current store revision. Never waits for writers."""
        return await self._call(lambda: self._read(lambda: self._meta("rev")))

    async def compact(self, revision: int) -> None:
        """Drop watch history before ``revision``. Waits for the write lock.

        Raises Compacted if already compacted that far, ValueError for a future revision."""

        def body() -> None:
            compact = self._meta("compact")
            if revision <= compact:
                raise Compacted(compact)
            if revision > self._rev:
                raise InvalidArgument(f"cannot compact to future revision {revision} > {self._rev}")
            self._compact_to(revision)

        await self._write(body)

    async def aclose(self) -> None:
        """Stop the poller and expiry check, end open watches, close the file.

        Idempotent. Waits for the worker thread to finish the call it is running."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in list(self._watchers):
            w.closed = True
            w.wake.set()
        if self._channel is not None:
            self._channel.close()
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close_sync)
        self._pool.shutdown(wait=False)

    # -- without an event loop (the reaper process) -----------------------------------
    @classmethod
    def open_blocking(cls, path: str | Path, *, lock_timeout: float = 5.0) -> SqliteStore:
        """Open the file for :meth:`revoke_blocking` in a process that runs no event
        loop (the reaper): no poller, no expiry check, no worker thread. Its commits
        still wake the pollers of the other processes (a send-only wake channel)."""
        self = cls(Path(path), SYSTEM_CLOCK, 0.01, 10_000, lock_timeout)
        try:
            self._guard(self._open_sync)
        except BaseException:
            self.close_blocking()
            raise
        self._channel = open_notifier(self.path)
        return self

    def revoke_blocking(self, lease: int) -> None:
        """:meth:`revoke`, on the calling thread (a store from :meth:`open_blocking`)."""

        def body() -> None:
            self._lease(lease)
            self._drop_lease(lease)

        self._guard(functools.partial(self._write_sync, body))

    def close_blocking(self) -> None:
        """Close a store from :meth:`open_blocking`. Idempotent."""
        self._closed = True
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._close_sync()
        self._pool.shutdown(wait=False)

    # -- background tasks (event loop) --------------------------------------------------
    async def _poll_loop(self) -> None:
        failing = False
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                got = await self._call(functools.partial(self._poll_sync, self._seen))
            except Exception as exc:  # watches wait; retried next interval
                if not failing:
                    log.warning("sqlite store %s: watch poll failed: %s", self.path, exc)
                failing = True
                continue
            failing = False
            if got is None:
                continue
            compact, rev, events = got
            watchers = list(self._watchers)
            if compact > self._seen + 1:  # rows we never fetched were compacted away
                for w in watchers:
                    w.lost()
            for batch in _batches(events):
                for w in watchers:
                    w.offer(batch)
            self._seen = max(self._seen, rev)

    async def _expiry_loop(self) -> None:
        def tick() -> bool:
            return self._due() and self._write_sync(lambda: True)[0]

        while not self._closed:
            await self._clock.sleep(_EXPIRY_TICK)
            try:
                if await self._call(tick):
                    self._wake.set()
            except Exception as exc:  # retried next tick
                log.warning("sqlite store %s: lease expiry failed: %s", self.path, exc)


# -- the backend's descriptor ------------------------------------------------------------
class SqliteSection(Section):
    path: str = "shoal.db"

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        if not path.strip():
            raise ValueError("bad value '' — give a file path, e.g. shoal.db")
        return os.path.expanduser(path)


async def _open_backend(section: SqliteSection, clock: Clock | None) -> Store:
    return await SqliteStore.open(section.path, clock=clock)


def _missing(section: SqliteSection) -> str | None:
    if Path(section.path).exists():
        return None
    return (f"store.sqlite.path: {section.path!r} does not exist — no cluster uses it; "
            "check the path (or --config)")


BACKEND = Backend(
    name="sqlite",
    summary="one SQLite file shared by the node processes of one machine (the default)",
    features=SqliteStore.features,
    open=_open_backend,
    section=SqliteSection,
    describe=lambda s: f"sqlite at {s.path}",
    identity=lambda s: {"backend": "sqlite", "path": str(Path(s.path).resolve())},
    reaper="shoal.store._sqlite_reaper",
    reaper_info=lambda s: {"path": str(s.path)},
    missing=_missing,
    path_keys=(("path",),),
)
