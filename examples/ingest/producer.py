"""Publish messages to the ingest stream: ``{"id": i, "value": v}`` with XADD.

    python examples/ingest/producer.py --redis-url redis://127.0.0.1:6379/0 --count 2000

Message ``i`` has value ``value_of(i)`` (deterministic: the expected sums are
known) and partition ``i % 8``.
"""

from __future__ import annotations

import argparse
import asyncio

import redis.asyncio as aioredis

STREAM = "ingest:events"


def value_of(message_id: int) -> int:
    return message_id % 97 + 1


async def produce(url: str, count: int, start: int = 0, stream: str = STREAM,
                  rate: float = 0.0) -> int:
    """XADD ``count`` messages (ids ``start`` ..); ``rate`` > 0: messages per second."""
    r = aioredis.from_url(url, decode_responses=True)
    try:
        chunk = 100
        for first in range(start, start + count, chunk):
            ids = range(first, min(first + chunk, start + count))
            async with r.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.xadd(stream, {"id": i, "value": value_of(i)})
                await pipe.execute()
            if rate > 0:
                await asyncio.sleep(len(ids) / rate)
    finally:
        await r.aclose()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--start", type=int, default=0, help="first message id")
    parser.add_argument("--stream", default=STREAM)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s (0: all at once)")
    args = parser.parse_args()
    n = asyncio.run(produce(args.redis_url, args.count, args.start, args.stream, args.rate))
    print(f"produced {n} messages (ids {args.start}..{args.start + n - 1}) to {args.stream}")


if __name__ == "__main__":
    main()
