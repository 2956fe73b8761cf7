"""The etcd backend's watch: one gRPC Watch stream per watch, resumed without gaps.

etcd3aio's WatchService reconnects from ``header.revision + 1`` of the last response,
which can skip events that were committed but not yet delivered. This loop instead
remembers what it has *delivered* and resumes exactly there:

* ``resume`` is the revision of the last delivered event (or the first wanted one) and
  ``skip`` how many events of that revision were already delivered. A reconnect asks
  for ``start_revision=resume`` and drops the first ``skip`` events of ``resume``, so
  nothing is lost or repeated even if a revision had been split over two responses;
* with ``start_revision=None`` the ``created`` response's ``header.revision + 1`` is
  the first wanted revision;
* ``compact_revision > 0`` raises :class:`~shoal.Compacted`; transient errors reconnect
  with backoff through the round-robin channel (so through another member); a stale
  auth token re-authenticates once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from etcd3aio import _protobuf as pb

from shoal._errors import Compacted, NotRunning, StoreAuthError, StoreError
from shoal.store._etcd_errors import NeedReauth, is_transient, translate
from shoal.store.protocol import Event, EventType, KeyValue

_log = logging.getLogger("shoal.store.etcd")

_BACKOFF_START = 0.05
_BACKOFF_MAX = 1.0
_AUTH_REASONS = ("permission denied", "invalid auth token", "auth store is old")


@dataclass
class WatchContext:
    """What the watch loop needs from the store (kept small to avoid a cycle)."""

    stub: Any  # WatchStub on the store's channel
    metadata: Callable[[], tuple[tuple[str, str], ...]]
    strip: Callable[[bytes], str]
    reauth: Callable[[], Awaitable[None]]
    closed: Callable[[], bool]
    credentials: bool
    timeout: float


async def _requests(create: Any) -> AsyncIterator[Any]:
    yield pb.WatchRequest(create_request=create)
    await asyncio.Event().wait()  # keep the stream open; cancelled with the call


def _event(ev: Any, strip: Callable[[bytes], str]) -> Event:
    kv = ev.kv
    if ev.type == 1:  # DELETE
        record = KeyValue(strip(kv.key), b"", 0, int(kv.mod_revision), 0, 0)
        return Event(EventType.DELETE, record)
    record = KeyValue(
        strip(kv.key),
        bytes(kv.value),
        int(kv.create_revision),
        int(kv.mod_revision),
        int(kv.version),
        int(kv.lease),
    )
    return Event(EventType.PUT, record)


async def watch(
    ctx: WatchContext, key: bytes, range_end: bytes, start_revision: int | None
) -> AsyncIterator[Event]:
    resume = 0 if start_revision is None else max(1, start_revision)
    skip = 0
    backoff = _BACKOFF_START
    reauthed = False
    while True:
        if ctx.closed():
            raise NotRunning("the etcd store is closed")
        create = pb.WatchCreateRequest(key=key, range_end=range_end, start_revision=resume)
        call = ctx.stub.Watch(_requests(create), metadata=ctx.metadata())
        to_drop = skip  # events of revision ``resume`` already delivered
        try:
            async for resp in call:
                if resp.compact_revision > 0:
                    raise Compacted(int(resp.compact_revision))
                if resp.canceled:
                    reason = str(resp.cancel_reason)
                    if any(r in reason for r in _AUTH_REASONS):
                        if ctx.credentials and not reauthed:
                            raise NeedReauth(reason)
                        raise StoreAuthError(f"etcd watch refused: {reason}")
                    raise StoreError(f"etcd watch canceled by the server: {reason or 'no reason'}")
                if resp.created:
                    if resume == 0:
                        resume = int(resp.header.revision) + 1
                    backoff = _BACKOFF_START
                    reauthed = False
                for ev in resp.events:
                    rev = int(ev.kv.mod_revision)
                    if rev < resume:
                        continue
                    if rev == resume and to_drop > 0:
                        to_drop -= 1
                        continue
                    if rev == resume:
                        skip += 1
                    else:
                        resume, skip, to_drop = rev, 1, 0
                    yield _event(ev, ctx.strip)
            # The server ended the stream (e.g. member shutting down): reconnect.
            _log.info("etcd watch stream ended; reconnecting from revision %d", resume)
        except NeedReauth:
            reauthed = True
            try:
                await ctx.reauth()
            except Exception as exc:
                raise translate(exc, "watch", timeout=ctx.timeout) from exc
            continue
        except (Compacted, StoreError, NotRunning):
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if ctx.closed():
                raise NotRunning("the etcd store is closed") from None
            err = translate(exc, "watch", timeout=ctx.timeout, credentials=ctx.credentials)
            if isinstance(err, NeedReauth) and not reauthed:
                reauthed = True
                await ctx.reauth()
                continue
            if not is_transient(exc):
                raise (
                    err if not isinstance(err, NeedReauth) else StoreAuthError(str(err))
                ) from exc
            _log.warning(
                "etcd watch interrupted (%s); reconnecting from revision %d in %.2fs",
                err,
                resume,
                backoff,
            )
        finally:
            call.cancel()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _BACKOFF_MAX)
