"""The sample service that ``shoal demo`` runs on every node.

Modelled on what OpenCTI and Camunda Optimize document for their clusters:

* ``import:{engine}`` — one importer per configured engine (``params.engines``);
  only one node may import from a given engine. It writes its position as a
  FENCED document ``imports/{engine}`` into replicated state; a new owner
  resumes from the position the previous one wrote (read from the store).
* ``event-import:{engine}`` and ``history-cleanup:{engine}`` run on the node
  that imports from that engine (``with_duty``); the cleanup is plain sync code
  (it runs in a thread).
* ``rule-engine``, ``task-manager``, ``notification-manager`` — managers spread
  over the nodes; a node may disable one (``duties: {rule-engine: false}``).
* ``certificate-renewal`` — leader work: runs on whichever node leads.
* ``nightly-report`` — a schedule: once per slot across the cluster (every 10 s
  here so the demo shows it; ``cron="0 1 * * *"`` in real life), fenced record.
* ``site:{key}`` — one duty per document of namespace ``sites`` (Statiko's
  sites), created and removed live: ``shoal state set sites.json --merge``.

Every write is fenced by the duty's token (the store refuses a superseded
owner's write): the importers write replicated-state documents with
``ctx.state.put(ns, key, value, guard=ctx.guard())``, the others write the
same kind of document with ``ctx.put("state/{ns}/{key}", json)``. Run it with::

    shoal run shoal.cli.demo_app:app --config node.yaml   # params: {engines: [a, b]}

``params.interval`` (seconds, default 1.0) sets how often each duty writes.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from shoal.errors import DutyLost
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.schedule import RunContext

__all__ = ["MANAGERS", "app"]

app = App("demo", version="1.0")  # the app's own version: in node records, status, dashboard

MANAGERS = ("rule-engine", "task-manager", "notification-manager")


def _interval(ctx: DutyContext) -> float:
    return float(ctx.params.get("interval", 1.0))


def _doc(ctx: DutyContext, **fields: Any) -> bytes:
    body = {"node": ctx.node, "token": ctx.token, "at": round(time.time(), 3), **fields}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


async def _previous(ctx: DutyContext, key: str, field: str) -> int:
    """``field`` of the document the previous owner left at ``key`` (0 if none)."""
    kv = await ctx.store.get(key)
    if kv is None:
        return 0
    try:
        value = json.loads(kv.value).get(field, 0)
    except (ValueError, AttributeError):
        return 0
    return int(value) if isinstance(value, int) else 0


async def _loop(ctx: DutyContext, step: Callable[[], Awaitable[None]]) -> None:
    """Call ``step`` every interval until stopped; a refused (fenced) write ends the duty."""
    try:
        while True:
            await step()
            if not await ctx.sleep(_interval(ctx)):
                return
    except DutyLost as exc:
        ctx.log.warning("fenced write refused, stopping: %s", exc)


@app.duty("import:{engine}", for_each="engines", roles=["ingest"])
async def importer(ctx: DutyContext) -> None:
    """Imports events from one engine; resumes where the previous owner stopped."""
    engine = str(ctx.item)
    position = await _previous(ctx, f"state/imports/{engine}", "position")
    ctx.log.info("importing from %s at position %d (token %d)", engine, position, ctx.token)

    async def step() -> None:
        nonlocal position
        position += random.randint(1, 25)
        doc = {"node": ctx.node, "token": ctx.token, "engine": engine, "position": position,
               "at": round(time.time(), 3)}
        # replicated state, fenced: refused (DutyLost) once another node owns this duty
        await ctx.state.put("imports", engine, doc, guard=ctx.guard())

    await _loop(ctx, step)


@app.duty("event-import:{engine}", for_each="engines", with_duty="import:{engine}")
async def event_import(ctx: DutyContext) -> None:
    """Runs next to the importer of the same engine (Optimize: event import)."""
    engine = str(ctx.item)
    key = f"state/events/{engine}"
    batches = await _previous(ctx, key, "batches")

    async def step() -> None:
        nonlocal batches
        batches += 1
        await ctx.put(key, _doc(ctx, engine=engine, batches=batches))

    await _loop(ctx, step)


@app.duty("history-cleanup:{engine}", for_each="engines", with_duty="import:{engine}")
def history_cleanup(ctx: DutyContext) -> None:
    """Sync code in a thread, only where that engine is imported (Optimize)."""
    engine = str(ctx.item)
    runs = 0
    while not ctx.stopping.is_set():
        runs += 1
        try:
            ctx.put_sync(f"state/cleanup/{engine}", _doc(ctx, engine=engine, runs=runs))
        except DutyLost as exc:
            ctx.log.warning("fenced write refused, stopping: %s", exc)
            return
        ctx.sleep_sync(_interval(ctx) * 3)


def _manager(name: str) -> Callable[[DutyContext], Awaitable[None]]:
    async def manager(ctx: DutyContext) -> None:
        ticks = 0

        async def step() -> None:
            nonlocal ticks
            ticks += 1
            await ctx.put(f"state/managers/{name}", _doc(ctx, manager=name, ticks=ticks))

        await _loop(ctx, step)

    manager.__name__ = manager.__qualname__ = name.replace("-", "_")
    return manager


for _name in MANAGERS:
    app.duty(_name)(_manager(_name))


@app.leader_duty("certificate-renewal")
async def certificate_renewal(ctx: DutyContext) -> None:
    """Leader work: renews the cluster certificate (pretend: a document)."""
    try:
        while True:
            now = time.time()
            await ctx.put("state/certificates/cluster",
                          _doc(ctx, renewed_at=round(now, 3), expires_at=round(now + 90 * 86400)))
            if not await ctx.sleep(_interval(ctx) * 5):
                return
    except DutyLost as exc:
        ctx.log.warning("fenced write refused, stopping: %s", exc)


@app.schedule("nightly-report", every=timedelta(seconds=10))
async def nightly_report(ctx: RunContext) -> None:
    """A schedule: each slot runs once across the cluster (``shoal schedule list``)."""
    slot = ctx.slot.isoformat() if ctx.slot else "manual"
    report = {"node": ctx.node, "token": ctx.token, "slot": slot, "attempt": ctx.attempt,
              "at": round(time.time(), 3)}
    await ctx.state.put("reports", "nightly", report, guard=ctx.guard())
    ctx.log.info("nightly report for slot %s", slot)


@app.duty("site:{key}", for_each_doc="sites")
async def serve_site(ctx: DutyContext) -> None:
    """One duty per document of ``sites``: follows its changes, ends with it."""
    key = ctx.name.split(":", 1)[1]

    async def served(value: Any) -> None:
        doc = {"node": ctx.node, "token": ctx.token, "config": value,
               "at": round(time.time(), 3)}
        await ctx.state.put("sites-served", key, doc, guard=ctx.guard())

    try:
        await served(ctx.item)
        async for value in ctx.changes():
            await served(value)
    except DutyLost as exc:
        ctx.log.warning("fenced write refused, stopping: %s", exc)
