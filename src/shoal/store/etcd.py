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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from etcd3aio import _protobuf as pb
from etcd3aio.auth import AuthService
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService

from shoal._errors import (
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
from shoal.store._etcd_errors import NeedReauth, is_transient, short_reason, translate
from shoal.store._etcd_watch import WatchContext
from shoal.store._etcd_watch import watch as _watch
from shoal.store.protocol import (
    Compare,
    Delete,
    Event,
    Features,
    Get,
    KeyValue,
    Lease,
    Op,
    OpResult,
    Put,
    RangeResult,
    Target,
    TxnOp,
    TxnResult,
)

__all__ = ["EtcdStore"]

_log = logging.getLogger("shoal.store.etcd")
T = TypeVar("T")

_OPS = {Op.EQUAL: 0, Op.GREATER: 1, Op.LESS: 2, Op.NOT_EQUAL: 3}
_TARGETS = {
    Target.VERSION: (0, "version"),
    Target.CREATE: (1, "create_revision"),
    Target.MOD: (2, "mod_revision"),
    Target.VALUE: (3, "value"),
    Target.LEASE: (4, "lease"),
}


def _range_end(key: bytes) -> bytes:
    """etcd's range end for "every key starting with ``key``" (b"\\0" = all keys)."""
    raw = bytearray(key)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\x00"


class EtcdStore:
    """A :class:`~shoal.store.Store` on etcd v3. Create it with :meth:`open`."""

    features: ClassVar[Features] = Features(
        name="etcd", multi_process=True, multi_machine=True, linearizable=True
    )

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
        self._pfx = (prefix.rstrip("/") + "/") if prefix else ""
        self._timeout = timeout
        self._username = username
        self._password = password
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._closed = False
        self._seen_revision = 0  # highest store revision any response showed
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
                "store.etcd.cert_file and store.etcd.key_file must be given together "
                "(client certificate and its private key)"
            )
        if password is not None and not username:
            raise ConfigError("store.etcd.password is set but store.etcd.username is not")
        eps = conn.parse_endpoints(endpoints, tls_default=bool(ca_file or cert_file or skip_verify))
        urls = ", ".join(e.url for e in eps)
        use_tls = eps[0].tls
        ca = conn.read_file(ca_file, "store.etcd.ca_file")
        chain = conn.read_file(cert_file, "store.etcd.cert_file")
        key = conn.read_file(key_file, "store.etcd.key_file")
        if not use_tls and (ca or chain or skip_verify):
            raise ConfigError(
                f"{conn.ENDPOINTS_KEY}: TLS options are set but the endpoints use http://; "
                "use https:// endpoints"
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
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    if self._username:
                        await self._authenticate(min(left, self._timeout))
                    resp = await self._kv.get(
                        self._pfx.encode() or b"\x00",
                        count_only=True,
                        timeout=left,
                        max_attempts=1,
                    )
                    self._note(resp)
                    return
            except Exception as exc:
                err = translate(exc, "open", timeout=self._timeout)
                if not is_transient(exc) and not isinstance(err, StoreUnavailable):
                    raise err from None
                last = exc
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
        reason = short_reason(last) if last is not None else "no response"
        raise StoreUnavailable(
            f"etcd not reachable at {urls} within {self._timeout}s ({reason}) — "
            "is etcd running? check store.etcd.endpoints"
        )

    # -- auth ---------------------------------------------------------------------
    async def _authenticate(self, limit: float) -> None:
        assert self._username is not None
        resp = await self._auth.authenticate(self._username, self._password or "", timeout=limit)
        self._set_token(str(resp.token))

    def _set_token(self, token: str | None) -> None:
        self._token = token
        for svc in (self._kv, self._lease, self._auth):
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
        self, what: str, fn: Callable[[], Awaitable[T]], *, write: bool = False, lease: int = 0
    ) -> T:
        """Run one etcd call; translate every failure into the Shoal error tree."""
        if self._closed:
            raise NotRunning("the etcd store is closed")
        reauthed = False
        while True:
            token = self._token
            try:
                return await fn()
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
                raise err from exc

    def _note(self, resp: Any) -> None:
        rev = int(resp.header.revision)
        if rev > self._seen_revision:
            self._seen_revision = rev

    # -- keys -----------------------------------------------------------------------
    def _full(self, key: str) -> bytes:
        return (self._pfx + key).encode("utf-8", "surrogateescape")

    def _strip(self, key: bytes) -> str:
        text = key.decode("utf-8", "surrogateescape")
        return text[len(self._pfx) :] if text.startswith(self._pfx) else text

    def _kv_of(self, kv: Any) -> KeyValue:
        return KeyValue(
            self._strip(kv.key),
            bytes(kv.value),
            int(kv.create_revision),
            int(kv.mod_revision),
            int(kv.version),
            int(kv.lease),
        )

    # -- reads ----------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        resp = await self._call("get", lambda: self._kv.get(self._full(key), timeout=self._timeout))
        self._note(resp)
        return self._kv_of(resp.kvs[0]) if resp.kvs else None

    async def range(self, prefix: str) -> RangeResult:
        full = self._full(prefix)
        resp = await self._call(
            "range", lambda: self._kv.get(full, range_end=_range_end(full), timeout=self._timeout)
        )
        self._note(resp)
        kvs = tuple(self._kv_of(kv) for kv in resp.kvs)  # etcd returns them sorted by key
        return RangeResult(kvs, int(resp.header.revision))

    async def revision(self) -> int:
        resp = await self._call(
            "revision",
            lambda: self._kv.get(
                self._pfx.encode() or b"\x00", count_only=True, timeout=self._timeout
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
                lambda: self._kv.put(
                    self._full(key),
                    bytes(value),
                    lease=lease,
                    timeout=self._timeout,
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
        full = self._full(key)
        end = _range_end(full) if prefix else None
        resp = await self._call(
            "delete",
            lambda: self._kv.delete(full, range_end=end, timeout=self._timeout, max_attempts=1),
            write=True,
        )
        self._note(resp)
        return int(resp.deleted)

    def _compare(self, c: Compare) -> Any:
        target, field = _TARGETS[c.target]
        if (c.target is Target.VALUE) != isinstance(c.operand, bytes | bytearray):
            kind = "bytes" if c.target is Target.VALUE else "int"
            raise TypeError(f"compare on {c.target.value} needs a {kind} operand")
        operand = bytes(c.operand) if isinstance(c.operand, bytes | bytearray) else c.operand
        return pb.Compare(
            result=_OPS[c.op], target=target, key=self._full(c.key), **{field: operand}
        )

    def _request(self, op: TxnOp) -> Any:
        full = self._full(op.key)
        if isinstance(op, Put):
            return pb.RequestOp(
                request_put=pb.PutRequest(key=full, value=bytes(op.value), lease=op.lease)
            )
        end = _range_end(full) if op.prefix else b""
        if isinstance(op, Delete):
            return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=full, range_end=end))
        if isinstance(op, Get):
            return pb.RequestOp(request_range=pb.RangeRequest(key=full, range_end=end))
        raise TypeError(f"not a txn op: {op!r}")

    def _result(self, op: TxnOp, resp: Any) -> OpResult:
        if isinstance(op, Put):
            return None
        if isinstance(op, Delete):
            return int(resp.response_delete_range.deleted)
        return [self._kv_of(kv) for kv in resp.response_range.kvs]

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[TxnOp] = (),
        on_failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        cmp = [self._compare(c) for c in compares]
        succ = [self._request(op) for op in on_success]
        fail = [self._request(op) for op in on_failure]
        leases = [op.lease for op in (*on_success, *on_failure) if isinstance(op, Put) and op.lease]
        seen = self._seen_revision
        try:
            resp = await self._call(
                "txn",
                lambda: self._kv.txn(cmp, succ, fail, timeout=self._timeout, max_attempts=1),
                write=True,
                lease=leases[0] if leases else 0,
            )
        except OutcomeUnknown as exc:
            return await self._settle(on_success, seen, exc)
        self._note(resp)
        branch = on_success if resp.succeeded else on_failure
        results = tuple(self._result(op, r) for op, r in zip(branch, resp.responses, strict=True))
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
        reads = [self._request(Get(p.key)) for p in puts]
        try:
            resp = await self._call(
                "re-read", lambda: self._kv.txn([], reads, [], timeout=self._timeout)
            )
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
        resp = await self._call("grant", lambda: self._lease.grant(ttl, timeout=self._timeout))
        if getattr(resp, "error", ""):
            raise StoreError(f"etcd grant failed: {resp.error}")
        return Lease(int(resp.ID), int(resp.TTL))

    async def keepalive(self, lease: int) -> int:
        async def once() -> Any:
            async def requests() -> AsyncIterator[Any]:
                yield pb.LeaseKeepAliveRequest(ID=lease)

            call = self._lease_stub.LeaseKeepAlive(
                requests(), metadata=self._metadata(), timeout=self._timeout
            )
            try:
                async for resp in call:
                    return resp
            finally:
                call.cancel()
            raise StoreUnavailable("etcd keepalive: the stream closed without an answer")

        async def retrying() -> Any:
            delay = 0.05
            async with asyncio.timeout(self._timeout):
                while True:
                    try:
                        return await once()
                    except Exception as exc:
                        if not is_transient(exc):
                            raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)

        resp = await self._call("keepalive", retrying, lease=lease)
        ttl = int(resp.TTL)
        if ttl <= 0:
            raise LeaseNotFound(lease)
        return ttl

    async def revoke(self, lease: int) -> None:
        await self._call(
            "revoke",
            lambda: self._lease.revoke(lease, timeout=self._timeout, max_attempts=1),
            write=True,
            lease=lease,
        )

    async def lease_ttl(self, lease: int) -> int:
        resp = await self._call(
            "lease_ttl", lambda: self._lease.time_to_live(lease, timeout=self._timeout), lease=lease
        )
        ttl = int(resp.TTL)
        return ttl if ttl >= 0 else -1

    # -- watch / maintenance -------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int | None = None) -> AsyncIterator[Event]:
        if self._closed:
            raise NotRunning("the etcd store is closed")
        full = self._full(prefix)
        ctx = WatchContext(
            stub=self._watch_stub,
            metadata=self._metadata,
            strip=self._strip,
            reauth=self._reauth,
            closed=lambda: self._closed,
            credentials=bool(self._username),
            timeout=self._timeout,
        )
        return _watch(ctx, full, _range_end(full), start_revision)

    async def compact(self, revision: int) -> None:
        try:
            await self._call(
                "compact",
                lambda: self._kv.compact(revision, timeout=self._timeout, max_attempts=1),
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
        return f"EtcdStore({self._endpoints!r}, prefix={self._pfx.rstrip('/')!r})"
