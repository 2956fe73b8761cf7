"""The etcd backend's watch: one gRPC Watch stream per watch, resumed without gaps.

etcd3aio's WatchService reconnects from ``header.revision + 1`` of the last response,
which can skip events that were committed but not yet delivered. This loop instead
remembers what it has *delivered* and resumes exactly there:

* ``resume`` is the revision of the last delivered event (or the first wanted one) and
  ``skip`` how many events of that revision were already delivered. A reconnect asks
  for ``start_revision=resume`` and drops the first ``skip`` events of ``resume``, so
  nothing is lost or repeated even if a revision had been split over two responses;
* ``start_revision=None`` means "from this call": the store passes the newest revision
  it has seen + 1 (every write it acknowledged is older, so none is replayed). Were
  that compacted already, the watch falls back to the server's "now" (the ``created``
  response's ``header.revision + 1``);
* ``compact_revision > 0`` raises :class:`~shoal.Compacted`; transient errors reconnect
  with jittered backoff through the round-robin channel (so through another member); a stale
  auth token re-authenticates once; closing the store ends the iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shoal.aio._outage import OutageLog
from shoal.aio._retry import Backoff
from shoal.errors import Compacted, StoreAuthError, StoreError
from shoal.store import _etcd_pb as pb
from shoal.store._etcd_errors import NeedReauth, is_transient, translate
from shoal.store.protocol import Event

_log = logging.getLogger("shoal.store.etcd")

_WATCH_IDS = itertools.count(1)
_BACKOFF_START = 0.05
_BACKOFF_MAX = 1.0
_AUTH_REASONS = ("permission denied", "invalid auth token", "auth store is old")


@dataclass
class WatchContext:
    """What the watch loop needs from the store (kept small to avoid a cycle)."""

    stub: Any  # WatchStub on the store's channel
    metadata: Callable[[], tuple[tuple[str, str], ...]]
    event: Callable[[Any], Event]  # protobuf Event -> Event with a bare key
    reauth: Callable[[], Awaitable[None]]
    closed: Callable[[], bool]
    credentials: bool
    timeout: float
    outage: OutageLog | None = None  # shared by the store's watches: rate-limited lines


async def watch(
    ctx: WatchContext, key: bytes, range_end: bytes, start_revision: int, *, from_now: bool
) -> AsyncGenerator[Event, None]:
    resume = start_revision  # 0: the server's current revision + 1
    who = f"watch {key!r} #{next(_WATCH_IDS)}"
    skip = 0
    delivered = False
    backoff = Backoff(_BACKOFF_START, _BACKOFF_MAX)
    reauthed = False
    while not ctx.closed():  # a closed store ends the watch, as in the other backends
        create = pb.WatchCreateRequest(key=key, range_end=range_end, start_revision=resume)
        call = ctx.stub.Watch(metadata=ctx.metadata())
        to_drop = skip  # events of revision ``resume`` already delivered
        try:
            with contextlib.suppress(asyncio.InvalidStateError):  # failed: reading says why
                await call.write(pb.WatchRequest(create_request=create))
            async for resp in call:
                if resp.compact_revision > 0:
                    if from_now and not delivered:
                        resume = 0
                        break
                    raise Compacted(int(resp.compact_revision))
                if resp.canceled:
                    reason = str(resp.cancel_reason)
                    if any(r in reason for r in _AUTH_REASONS):
                        if ctx.credentials and not reauthed:
                            raise NeedReauth(reason)
                        raise StoreAuthError(f"etcd watch refused: {reason}")
                    raise StoreError(f"etcd watch canceled by the server: {reason or 'no reason'}")
                if resp.created:
                    _log.debug(
                        "etcd watch created on member %x at revision %d (from %d)",
                        resp.header.member_id,
                        resp.header.revision,
                        resume,
                    )
                    if resume == 0:
                        resume = int(resp.header.revision) + 1
                    backoff.reset()
                    if ctx.outage is not None:
                        ctx.outage.recovered(who)
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
                    delivered = True
                    yield ctx.event(ev)
            else:
                # The server ended the stream (e.g. member shutting down): reconnect.
                _log.info("etcd watch stream ended; reconnecting from revision %d", resume)
        except NeedReauth:
            reauthed = True
            try:
                await ctx.reauth()
            except Exception as exc:
                raise translate(exc, "watch", timeout=ctx.timeout) from exc
            continue
        except (Compacted, StoreError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if ctx.closed():
                return
            err = translate(exc, "watch", timeout=ctx.timeout, credentials=ctx.credentials)
            if isinstance(err, NeedReauth) and not reauthed:
                reauthed = True
                await ctx.reauth()
                continue
            if not is_transient(exc):
                raise (
                    err if not isinstance(err, NeedReauth) else StoreAuthError(str(err))
                ) from exc
            if ctx.outage is not None:
                ctx.outage.failed(who, f"watch: {err}")
            else:
                _log.warning(
                    "etcd watch interrupted (%s); reconnecting from revision %d within %.2fs",
                    err, resume, backoff.ceiling(),
                )
        finally:
            call.cancel()
        await backoff.sleep()
