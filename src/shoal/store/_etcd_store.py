"""The etcd v3 backend: the distributed engine of Shoal.

Design notes
------------
* One gRPC channel with the ``round_robin`` policy over every member (``ipv4:`` target,
  hostnames resolved at open): when a member dies its subchannel drops out and calls
  go to the others.
* Every key lives under ``prefix`` (``/shoal`` -> ``/shoal/nodes/a``); callers only
  ever see bare keys.
* Errors are translated at one boundary (:meth:`EtcdStore._call` /
  :func:`shoal.store._etcd_errors.translate`); no grpc exception escapes.
* Writes are never resent (``max_attempts=1``). When a txn/put may or may not have
  been applied, the keys of its Puts are re-read: if each holds exactly the written
  value and lease, at one revision newer than anything seen before sending, the write
  is reported as applied; otherwise :class:`~shoal.OutcomeUnknown` is raised.
* Reads, ``grant`` and ``keepalive`` are retried on transient errors within ``timeout``.
* ``skip_verify`` (TLS): gRPC cannot turn verification off, so the server certificate
  of every reachable member is fetched unverified at open and pinned as the trust root
  (trust on first use), with the target name taken from the certificate. Members
  unreachable at open, or certificates rotated later, are not trusted until re-open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc.aio
from etcd3aio.auth import AuthService
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService

from shoal.aio._outage import OutageLog
from shoal.aio._retry import Backoff
from shoal.errors import (
    Compacted,
    ConfigError,
    LeaseNotFound,
    NotRunning,
    OutcomeUnknown,
    StoreAuthError,
    StoreError,
    StoreUnavailable,
)
from shoal.store import _etcd_conn as conn
from shoal.store import _etcd_pb as pb
from shoal.store._etcd_codec import Codec, range_end
from shoal.store._etcd_errors import (
    NeedReauth,
    is_transient,
    never_sent,
    short_reason,
    status_of,
    translate,
)
from shoal.store._etcd_watch import WatchContext
from shoal.store._etcd_watch import watch as _watch
from shoal.store.protocol import (
    Compare,
    Event,
    Features,
    Get,
    KeyValue,
    Lease,
    Put,
    RangeResult,
    TxnOp,
    TxnResult,
)

__all__ = ["EtcdStore"]

_log = logging.getLogger("shoal.store.etcd")
T = TypeVar("T")

RANGE_PAGE = 1000  # keys per range request (1 KiB documents: ~1 MB per response)
RANGE_RESTARTS = 3  # a paged read whose snapshot got compacted starts again, this often


class EtcdStore:
    """A :class:`~shoal.store.Store` on etcd v3. Create it with :meth:`open`."""

    features = Features(name="etcd", multi_process=True, multi_machine=True, linearizable=True)

    def __init__(
        self,
        channel: Any,
        *,
        endpoints: list[str],
        prefix: str,
        timeout: float,
        username: str | None,
        password: str | None,
    ) -> None:
        self._channel = channel
        self._endpoints = endpoints
        self._codec = Codec(prefix)
        self._timeout = timeout
        self._username = username
        self._password = password
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._closed = False
        self._seen_revision = 0  # highest store revision any response showed
        self.range_page = RANGE_PAGE
        self._outage = OutageLog(logging.getLogger("shoal.store.etcd"), f"etcd ({prefix})")
        self._kv = KVService(channel, max_attempts=3)
        self._lease = LeaseService(channel, max_attempts=3)
        self._auth = AuthService(channel, max_attempts=1)
        self._lease_stub = pb.LeaseStub(channel)
        self._watch_stub = pb.WatchStub(channel)

    # -- construction -----------------------------------------------------------
    @classmethod
    async def open(
        cls,
        endpoints: Sequence[str],
        *,
        prefix: str = "/shoal",
        timeout: float = 5.0,  # noqa: ASYNC109 - a per-call bound kept for later calls
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        skip_verify: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> EtcdStore:
        """Connect to etcd and check it answers within ``timeout`` seconds.

        Raises ConfigError (bad endpoint, missing TLS file), StoreUnavailable (not
        reachable in time) or StoreAuthError (credentials refused).
        """
        if timeout <= 0:
            raise ConfigError(f"store.etcd.timeout must be > 0, got {timeout!r}")
        if (cert_file is None) != (key_file is None):
            raise ConfigError(
                "store.etcd.tls.cert and store.etcd.tls.key: a client certificate needs both "
                "the certificate and its key; set both or neither"
            )
        if password is not None and not username:
            raise ConfigError("store.etcd.password is set but store.etcd.username is not")
        eps = conn.parse_endpoints(endpoints)
        urls = ", ".join(e.url for e in eps)
        use_tls = eps[0].tls
        ca = conn.read_file(ca_file, "store.etcd.tls.ca")
        chain = conn.read_file(cert_file, "store.etcd.tls.cert")
        key = conn.read_file(key_file, "store.etcd.tls.key")
        if not use_tls and (ca or chain or skip_verify):
            raise ConfigError(
                f"{conn.ENDPOINTS_KEY}: TLS settings (store.etcd.tls) are given but the "
                "endpoints use http://; use https:// endpoints"
            )
        addrs = await conn.resolve(eps, timeout)
        tls: conn.TlsMaterial | None = None
        if use_tls:
            server_name: str | None = eps[0].host
            if skip_verify:
                pinned, server_name = await conn.fetch_server_certs(
                    eps, addrs, cert_file, key_file, timeout
                )
                ca = pinned + b"\n" + ca if ca else pinned
            tls = conn.TlsMaterial(ca, key, chain, server_name)
        store = cls(
            conn.make_channel(addrs, tls),
            endpoints=[e.url for e in eps],
            prefix=prefix,
            timeout=timeout,
            username=username,
            password=password,
        )
        try:
            await store._check_reachable(urls)
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _check_reachable(self, urls: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        last: BaseException | None = None
        backoff = Backoff(0.05, 0.5)
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    if self._username:
                        await self._authenticate(min(left, self._timeout))
                    resp = await self._kv.get(
                        self._codec.prefix.encode() or b"\x00",
                        count_only=True,
                        timeout=left,
                        max_attempts=1,
                    )
                    self._note(resp)
                    return
            except Exception as exc:
                if self._username and "authentication is not enabled" in status_of(exc)[1]:
                    _log.warning(
                        "etcd at %s has authentication disabled; store.etcd.username and "
                        "password are ignored",
                        urls,
                    )
                    self._username = None
                    continue
                err = translate(exc, "open", timeout=self._timeout)
                if not is_transient(exc) and not isinstance(err, StoreUnavailable):
                    raise err from None
                last = exc
            await backoff.sleep(limit=deadline - loop.time())
        reason = short_reason(last) if last is not None else "no response"
        if reason.startswith("TLS"):
            hint = "check store.etcd.tls (ca, cert, key, skip_verify)"
        elif reason.startswith("connection closed") and "https://" not in urls:
            hint = "does etcd expect https://? check store.etcd.endpoints"
        else:
            hint = "is etcd running? check store.etcd.endpoints"
        raise StoreUnavailable(
            f"etcd not reachable at {urls} within {self._timeout}s ({reason}) — {hint}"
        )

    # -- auth ---------------------------------------------------------------------
    async def _authenticate(self, limit: float) -> None:
        assert self._username is not None
        resp = await self._auth.authenticate(self._username, self._password or "", timeout=limit)
        self._set_token(str(resp.token))

    def _set_token(self, token: str | None) -> None:
        self._token = token
        for svc in (self._kv, self._lease):
            svc.set_token(token)

    async def _reauth(self, stale: str | None = None) -> None:
        async with self._auth_lock:
            if stale is not None and self._token != stale:
                return  # someone else already refreshed it
            _log.info("etcd auth token refused; authenticating again")
            try:
                await self._authenticate(self._timeout)
            except Exception as exc:
                err = translate(exc, "authenticate", timeout=self._timeout)
                raise (StoreAuthError(str(err)) if isinstance(err, NeedReauth) else err) from exc

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = (("hasleader", "true"),)
        return (*md, ("token", self._token)) if self._token else md

    # -- the boundary -------------------------------------------------------------
    async def _call(
        self,
        what: str,
        fn: Callable[[float], Awaitable[T]],
        *,
        write: bool = False,
        lease: int = 0,
    ) -> T:
        """Run one etcd call within ``timeout``; translate every failure into the Shoal
        error tree. ``fn(seconds_left)`` makes the call. It is called again only when
        the request provably never reached etcd: no member connected yet (grpc failed
        it before sending) or the token was refused (then after authenticating again).
        """
        if self._closed:
            raise NotRunning("the etcd store is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        reauthed = False
        backoff: Backoff | None = None  # made on the first retry only (hot path)
        while True:
            token = self._token
            try:
                return await fn(max(0.01, deadline - loop.time()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = translate(
                    exc,
                    what,
                    timeout=self._timeout,
                    write=write,
                    lease=lease,
                    closed=self._closed,
                    credentials=bool(self._username),
                )
                if isinstance(err, NeedReauth):
                    if reauthed:
                        raise StoreAuthError(f"etcd {what}: {err}") from exc
                    reauthed = True
                    await self._reauth(token)  # the request was refused: safe to resend
                    continue
                if never_sent(exc) and deadline - loop.time() > 0.1:
                    # reconnecting: wait for a member, then send
                    # (grpc needs ~0.1 s to settle after a member went away: the floor)
                    backoff = backoff or Backoff(0.1, 0.25, floor=0.1)
                    await backoff.sleep(limit=deadline - loop.time() - 0.1)
                    continue
                raise err from exc

    def _note(self, resp: Any) -> None:
        rev = int(resp.header.revision)
        if rev > self._seen_revision:
            self._seen_revision = rev

    # -- reads ----------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        resp = await self._call("get", lambda t: self._kv.get(self._codec.full(key), timeout=t))
        self._note(resp)
        return self._codec.kv(resp.kvs[0]) if resp.kvs else None

    async def range(self, prefix: str) -> RangeResult:
        """Read in pages of ``range_page`` keys, all at the first page's revision (one
        snapshot), so that a large load never holds the whole gRPC response next to
        the decoded records. If that revision is compacted between two pages, the
        read starts again at a newer one."""
        full = self._codec.full(prefix)
        end = range_end(full)
        for _ in range(RANGE_RESTARTS):
            with contextlib.suppress(Compacted):
                return await self._range_pages(full, end)
        return await self._range_pages(full, end)

    async def _range_pages(self, start: bytes, end: bytes) -> RangeResult:
        kvs: list[KeyValue] = []
        rev = 0  # the first page's revision; every later page reads at it
        while True:
            resp = await self._call("range", self._page(start, end, rev))
            self._note(resp)
            rev = rev or int(resp.header.revision)
            kvs.extend(self._codec.kv(kv) for kv in resp.kvs)  # etcd sorts them by key
            if not resp.more or not resp.kvs:
                return RangeResult(tuple(kvs), rev)
            start = bytes(resp.kvs[-1].key) + b"\x00"
            del resp

    def _page(self, start: bytes, end: bytes, rev: int) -> Callable[[float], Awaitable[Any]]:
        return lambda t: self._kv.get(
            start, range_end=end, revision=rev, limit=self.range_page, timeout=t
        )

    async def revision(self) -> int:
        resp = await self._call(
            "revision",
            lambda t: self._kv.get(
                self._codec.prefix.encode() or b"\x00", count_only=True, timeout=t
            ),
        )
        self._note(resp)
        return int(resp.header.revision)

    # -- writes ---------------------------------------------------------------------
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        seen = self._seen_revision
        try:
            resp = await self._call(
                "put",
                lambda t: self._kv.put(
                    self._codec.full(key),
                    bytes(value),
                    lease=lease,
                    timeout=t,
                    max_attempts=1,
                ),
                write=True,
                lease=lease,
            )
        except OutcomeUnknown as exc:
            settled = await self._settle([Put(key, value, lease)], seen, exc)
            return settled.revision
        self._note(resp)
        return int(resp.header.revision)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        full = self._codec.full(key)
        end = range_end(full) if prefix else None
        resp = await self._call(
            "delete",
            lambda t: self._kv.delete(full, range_end=end, timeout=t, max_attempts=1),
            write=True,
        )
        self._note(resp)
        return int(resp.deleted)

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        cmp = [self._codec.compare(c) for c in compares]
        succ = [self._codec.request(op) for op in on_success]
        fail = [self._codec.request(op) for op in on_failure]
        leases = [op.lease for op in (*on_success, *on_failure) if isinstance(op, Put) and op.lease]
        seen = self._seen_revision
        try:
            resp = await self._call(
                "txn",
                lambda t: self._kv.txn(cmp, succ, fail, timeout=t, max_attempts=1),
                write=True,
                lease=leases[0] if leases else 0,
            )
        except OutcomeUnknown as exc:
            return await self._settle(on_success, seen, exc)
        self._note(resp)
        branch = on_success if resp.succeeded else on_failure
        results = tuple(
            self._codec.result(op, r) for op, r in zip(branch, resp.responses, strict=True)
        )
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), results)

    async def _settle(self, ops: Sequence[TxnOp], seen: int, exc: OutcomeUnknown) -> TxnResult:
        """A write's reply was lost: decide from a re-read whether it was applied.

        Only a branch made of Puts can be settled: it was applied if every key now holds
        exactly the written value and lease, all at one revision newer than any revision
        seen before the write was sent. Never resends the write.
        """
        puts = [op for op in ops if isinstance(op, Put)]
        if not puts or len(puts) != len(ops):
            raise exc
        reads = [self._codec.request(Get(p.key)) for p in puts]
        try:
            resp = await self._call("re-read", lambda t: self._kv.txn([], reads, [], timeout=t))
        except StoreError:
            raise exc from None
        revisions: set[int] = set()
        for put, r in zip(puts, resp.responses, strict=True):
            kvs = list(r.response_range.kvs)
            if not kvs or bytes(kvs[0].value) != put.value or int(kvs[0].lease) != put.lease:
                raise exc
            revisions.add(int(kvs[0].mod_revision))
        if len(revisions) != 1 or min(revisions) <= seen:
            raise exc
        _log.info("etcd write outcome settled by re-read: applied at revision %d", *revisions)
        return TxnResult(True, revisions.pop(), tuple(None for _ in puts))

    # -- leases -----------------------------------------------------------------------
    async def grant(self, ttl: int) -> Lease:
        resp = await self._call("grant", lambda t: self._lease.grant(ttl, timeout=t))
        if getattr(resp, "error", ""):
            raise StoreError(f"etcd grant failed: {resp.error}")
        return Lease(int(resp.ID), int(resp.TTL))

    async def keepalive(self, lease: int) -> int:
        async def once(limit: float) -> Any:
            call = self._lease_stub.LeaseKeepAlive(metadata=self._metadata(), timeout=limit)
            try:
                with contextlib.suppress(asyncio.InvalidStateError):  # failed: read says why
                    await call.write(pb.LeaseKeepAliveRequest(ID=lease))
                    await call.done_writing()
                resp = await call.read()
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise StoreUnavailable("etcd keepalive: the stream closed without an answer")
            return resp

        async def retrying(limit: float) -> Any:  # idempotent: retried until the deadline
            backoff = Backoff(0.05, 0.5)
            async with asyncio.timeout(limit):
                while True:
                    try:
                        return await once(limit)
                    except Exception as exc:
                        if not is_transient(exc):
                            raise
                    await backoff.sleep()

        resp = await self._call("keepalive", retrying, lease=lease)
        ttl = int(resp.TTL)
        if ttl <= 0:
            raise LeaseNotFound(lease)
        return ttl

    async def revoke(self, lease: int) -> None:
        await self._call(
            "revoke",
            lambda t: self._lease.revoke(lease, timeout=t, max_attempts=1),
            write=True,
            lease=lease,
        )

    async def lease_ttl(self, lease: int) -> int:
        resp = await self._call(
            "lease_ttl", lambda t: self._lease.time_to_live(lease, timeout=t), lease=lease
        )
        ttl = int(resp.TTL)
        return ttl if ttl >= 0 else -1

    # -- watch / maintenance -------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int | None = None) -> AsyncGenerator[Event, None]:
        """Changes under ``prefix`` from ``start_revision`` on, exactly once, in order,
        across reconnects and member failures (see ``_etcd_watch``).

        ``None`` (or 0) means "from now": from the newest revision this client has seen
        + 1, so every write it already got an answer for is excluded and every later
        one included, however late the stream is established. Raises Compacted if
        ``start_revision`` is older than the compaction point; ends when the store is
        closed.
        """
        if self._closed:
            raise NotRunning("the etcd store is closed")
        full = self._codec.full(prefix)
        ctx = WatchContext(
            stub=self._watch_stub,
            metadata=self._metadata,
            event=self._codec.event,
            reauth=self._reauth,
            closed=lambda: self._closed,
            credentials=bool(self._username),
            timeout=self._timeout,
            outage=self._outage,
        )
        if start_revision is not None and start_revision > 0:
            return _watch(ctx, full, range_end(full), start_revision, from_now=False)
        # "From now": after every revision this client has seen (so after every write it
        # was told about), not from whenever the stream happens to be established.
        start = self._seen_revision + 1
        return _watch(ctx, full, range_end(full), start, from_now=True)

    async def compact(self, revision: int) -> None:
        try:
            await self._call(
                "compact",
                lambda t: self._kv.compact(revision, timeout=t, max_attempts=1),
                write=True,
            )
        except Compacted:
            raise Compacted(revision) from None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._channel.close()

    def __repr__(self) -> str:
        return f"EtcdStore({self._endpoints!r}, prefix={self._codec.prefix.rstrip('/')!r})"
