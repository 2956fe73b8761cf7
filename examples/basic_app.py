"""A small Shoal application: run two or three copies and watch the duties move.

    shoal run examples/basic_app.py:app --config examples/node.yaml
    SHOAL__NODE__NAME=web-2 SHOAL__HTTP__PORT=8081 \
        shoal run examples/basic_app.py:app -c examples/node.yaml

Duties:

* ``ticker`` (async): every ``params.tick`` seconds (default 0.5) writes a
  FENCED document ``state/ticker`` = {node, token, seq, at}. Once another node
  owns the duty the store refuses these writes (DutyLost), even from a node
  that was paused and does not know yet that it lost its lease.
* ``sync-worker`` (a plain function: runs in a thread): the same with
  ``ctx.put_sync`` into ``state/sync-worker``; stops when ``ctx.stopping`` is set.
* ``janitor`` (leader duty): runs on whichever node is the leader.
"""

from __future__ import annotations

import json
import time

from shoal.errors import DutyLost
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext

app = App("basic")


def _doc(ctx: DutyContext, seq: int) -> bytes:
    doc = {"node": ctx.node, "token": ctx.token, "seq": seq, "at": time.time()}
    return json.dumps(doc).encode()


@app.duty("ticker")
async def ticker(ctx: DutyContext) -> None:
    tick = float(ctx.params.get("tick", 0.5))
    seq = 0
    ctx.log.info("ticker running on %s with token %d", ctx.node, ctx.token)
    while True:
        seq += 1
        try:
            await ctx.put("state/ticker", _doc(ctx, seq))
        except DutyLost as exc:
            ctx.log.warning("fenced write refused: %s", exc)
            return
        if not await ctx.sleep(tick):
            return


@app.duty("sync-worker")
def sync_worker(ctx: DutyContext) -> None:
    tick = float(ctx.params.get("tick", 0.5))
    seq = 0
    while not ctx.stopping.is_set():
        seq += 1
        try:
            ctx.put_sync("state/sync-worker", _doc(ctx, seq))
        except DutyLost as exc:
            ctx.log.warning("fenced write refused: %s", exc)
            return
        ctx.sleep_sync(tick)


@app.leader_duty("janitor")
async def janitor(ctx: DutyContext) -> None:
    ctx.log.info("janitor running on the leader %s", ctx.node)
    while await ctx.sleep(5.0):
        ctx.log.debug("janitor: nothing to clean")
