"""Ingest from Redis Streams: competing consumers plus fenced per-partition aggregates.

* ``ingest-worker`` (worker pool, 2 copies on every ``ingest`` node): consumers
  of one consumer group on the stream ``params.stream``. Each message carries an
  ``id`` and a ``value``; its partition is ``id % PARTITIONS``. A worker records
  the message idempotently (one Lua script: ``SADD processed:{p} id`` and, only
  if the id is new, ``INCRBY sum:{p} value``) and only THEN ``XACK``s it. A
  crash between the two leaves the message pending; it is delivered again (to
  another consumer, reclaimed with ``XAUTOCLAIM`` after ``params.claim_idle_ms``)
  and the second recording is a no-op: every message counts exactly once.
* ``aggregate`` (partitioned duty, ``PARTITIONS`` singletons on ``ingest``
  nodes): partition ``p`` periodically reads ``SCARD processed:{p}`` and
  ``sum:{p}`` and writes them into the replicated state, namespace
  ``aggregates``, key ``p{p}``, fenced with ``guard=ctx.guard()`` — a
  superseded owner's write is refused.

    shoal run examples/ingest/app.py:app --config examples/ingest/ingest-1.yaml

Walk-through: examples/ingest/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

import shoal
from shoal.runtime.workers import WorkerContext

PARTITIONS = 8
STREAM = "ingest:events"
GROUP = "ingest"

app = shoal.App("ingest")

# Recording a message: idempotent and atomic (a script runs as one command).
# KEYS: processed:{p}, sum:{p}, dup:{p}; ARGV: id, value. Returns 1 if new, 0 if seen.
RECORD = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
    redis.call('INCRBY', KEYS[2], ARGV[2])
    return 1
end
redis.call('INCR', KEYS[3])
return 0
"""


def partition_of(message_id: int) -> int:
    return message_id % PARTITIONS


def connect(params: dict[str, Any]) -> aioredis.Redis:
    url = params.get("redis_url", "redis://127.0.0.1:6379/0")
    return aioredis.from_url(url, decode_responses=True)


async def ensure_group(r: aioredis.Redis, stream: str) -> None:
    """Create the consumer group (from the start of the stream) unless it exists."""
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


@app.workers("ingest-worker", per_node=2, roles=["ingest"])
async def ingest_worker(ctx: WorkerContext) -> None:
    """One consumer of the group; ``ctx.node`` + index names it in Redis."""
    stream = str(ctx.params.get("stream", STREAM))
    claim_idle_ms = int(ctx.params.get("claim_idle_ms", 5000))
    batch = int(ctx.params.get("batch", 20))
    work_s = float(ctx.params.get("work_ms", 0)) / 1000
    consumer = f"{ctx.node}-{ctx.worker_index}"
    r = connect(ctx.params)
    record = r.register_script(RECORD)
    processed = 0
    try:
        await ensure_group(r, stream)
        ctx.log.info("consumer %s reading %s", consumer, stream)
        claim_from = "0-0"
        while not ctx.stopping:
            # 1. messages a dead (or stuck) consumer left pending for too long
            claim_from, claimed, _deleted = await r.xautoclaim(
                stream, GROUP, consumer, min_idle_time=claim_idle_ms,
                start_id=claim_from, count=batch)
            messages = list(claimed)
            if claimed:
                ctx.log.info("consumer %s reclaimed %d pending messages", consumer, len(claimed))
            # 2. new messages
            if not messages:
                reply = await r.xreadgroup(GROUP, consumer, {stream: ">"}, count=batch,
                                           block=200)
                for _name, entries in reply or []:
                    messages.extend(entries)
            for entry_id, fields in messages:
                if fields is None:  # trimmed away: nothing to do but acknowledge
                    await r.xack(stream, GROUP, entry_id)
                    continue
                message_id, value = int(fields["id"]), int(fields["value"])
                p = partition_of(message_id)
                if work_s:
                    await asyncio.sleep(work_s)  # the "processing"
                # record BEFORE acknowledging: a crash in between means a redelivery,
                # which the set turns into a no-op
                await record(keys=[f"processed:{p}", f"sum:{p}", f"dup:{p}"],
                             args=[message_id, value])
                await r.xack(stream, GROUP, entry_id)
                processed += 1
    finally:
        ctx.log.info("consumer %s stopping after %d messages", consumer, processed)
        with contextlib.suppress(Exception):
            await r.aclose()


@app.duty("aggregate", partitions=PARTITIONS, roles=["ingest"])
async def aggregate(ctx: shoal.DutyContext) -> None:
    """Partition ``ctx.partition``'s count and sum, into replicated state (fenced)."""
    p = ctx.partition
    interval = float(ctx.params.get("aggregate_interval", 1.0))
    r = connect(ctx.params)
    last: tuple[int, int] | None = None
    try:
        while True:
            count = int(await r.scard(f"processed:{p}"))
            total = int(await r.get(f"sum:{p}") or 0)
            if (count, total) != last:
                doc = {"partition": p, "count": count, "sum": total,
                       "node": ctx.node, "token": ctx.token}
                try:
                    await ctx.state.put("aggregates", f"p{p}", doc, guard=ctx.guard())
                except shoal.DutyLost:
                    ctx.log.info("aggregate/%s: superseded, stopping", p)
                    return
                last = (count, total)
            if not await ctx.sleep(interval):
                return
    finally:
        with contextlib.suppress(Exception):
            await r.aclose()
