"""Scheduled duties: a schedule is a duty whose function is this module's loop.

The owner of duty ``NAME`` (placed, fenced and moved like any duty) runs
:func:`schedule_loop`: it reads the schedule's record (replicated-state
document ``shoal.schedules/NAME``), asks :func:`shoal.core.schedule.decide`
what to do, and carries it out with **fenced compare-and-set writes** of the
record: each write carries the duty's guard (refused once a newer owner
exists, G2) and the record's expected revision (refused if anyone else wrote
it). A slot runs only after its claim was written (``current`` = the run,
``last_slot`` = the slot), so

* a slot runs at most once across the cluster: a later owner reads the claim
  and never claims the slot again (a claim left ``running`` is an interrupted
  run; ``retry`` decides whether it runs once more);
* a paused, superseded owner cannot record anything: its writes are refused.

A manual run (``shoal schedule run NAME``, ``POST /schedules/NAME/run``) is a
document ``shoal.schedule-triggers/NAME`` with a fresh id; the owner consumes
it in its claim (``trigger_done``), so each trigger runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from shoal.core.schedule import (
    MISSED,
    Claim,
    Missed,
    Record,
    Run,
    Settle,
    Timing,
    Wait,
    check,
    decide,
)
from shoal.errors import Conflict, DutyLost, InvalidArgument, StoreError, StoreUnavailable
from shoal.runtime._state_model import PREFIX, PutDoc, decode_value
from shoal.runtime.context import DutyContext

__all__ = [
    "NAMESPACE", "RESERVED_NAMESPACES", "TRIGGERS", "RunContext", "ScheduleSpec",
    "effective_timing", "make_schedule_fn", "read_record", "request_run", "schedule_spec",
]

log = logging.getLogger("shoal.schedule")
NAMESPACE = "shoal.schedules"
TRIGGERS = "shoal.schedule-triggers"
# Shoal's own namespaces: never writable through the generic state API
RESERVED_NAMESPACES = frozenset({NAMESPACE, TRIGGERS})
_RETRY = 0.5  # seconds between attempts while the store is unreachable
_LOG_EVERY = 30.0  # seconds between repeated "store unreachable" warnings


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule's declaration (see ``App.schedule``)."""

    timing: Timing
    missed: Missed = "run_once"
    retry: bool = True
    max_runtime: float | None = None


class RunContext(DutyContext):
    """What a scheduled function receives: a :class:`DutyContext` (same token,
    guard, fenced ``put``) plus the run's ``slot`` (an aware UTC datetime,
    None for a manual run), ``attempt`` (2 for a re-run after a crash) and
    ``kind`` (``scheduled``, ``retry`` or ``manual``). ``stopping`` is set when
    the duty must stop or ``max_runtime`` has passed."""

    slot: datetime | None
    attempt: int
    kind: str

    @classmethod
    def of(cls, ctx: DutyContext, claim: Claim) -> RunContext:
        run = cls(
            name=ctx.name, token=ctx.token, node=ctx.node, store=ctx.store, clock=ctx.clock,
            params=ctx.params, item=ctx.item, loop=ctx._loop, partition=ctx.partition,
            state=ctx.state, settings=ctx.settings,
        )
        run.slot = None if claim.slot is None else datetime.fromtimestamp(claim.slot, UTC)
        run.attempt = claim.attempt
        run.kind = claim.kind
        return run


def _seconds(value: timedelta | float) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"expected a timedelta or seconds, got {value!r}")
    return float(value)


def schedule_spec(
    name: str, *, cron: str | None, every: timedelta | float | None, tz: str, missed: str,
    retry: bool, max_runtime: timedelta | float | None, jitter: timedelta | float,
    misfire_grace: timedelta | float,
) -> ScheduleSpec:
    """The checked declaration of schedule ``name`` (ValueError: one clear line)."""
    if missed not in MISSED:
        raise InvalidArgument(f"schedule {name!r}: missed must be one of {MISSED}, got {missed!r}")
    try:
        timing = check(Timing(
            cron=cron, every=None if every is None else _seconds(every), tz=tz,
            jitter=_seconds(jitter), misfire_grace=_seconds(misfire_grace),
        ))
        limit = None if max_runtime is None else _seconds(max_runtime)
    except ValueError as exc:
        raise InvalidArgument(f"schedule {name!r}: {exc}") from None
    if limit is not None and limit <= 0:
        raise InvalidArgument(f"schedule {name!r}: max_runtime must be > 0, got {max_runtime!r}")
    return ScheduleSpec(timing, "skip" if missed == "skip" else "run_once", bool(retry), limit)


def effective_timing(name: str, timing: Timing, overrides: Mapping[str, Any]) -> Timing:
    """``timing`` with the node's config override (``duties.NAME.cron`` /
    ``every``; exact name first, else the longest matching ``family:*``)."""
    over = overrides.get(name)
    if over is None:
        patterns = [k for k in overrides if k.endswith("*") and fnmatchcase(name, k)]
        over = overrides[max(patterns, key=len)] if patterns else None
    if over is None:
        return timing
    cron, every = over
    return replace(timing, cron=cron, every=every)


def make_schedule_fn(
    fn: Callable[..., Any], spec: ScheduleSpec
) -> Callable[[DutyContext], Awaitable[None]]:
    """The duty function that runs ``fn`` on ``spec``'s slots while owned."""

    async def schedule_duty(ctx: DutyContext) -> None:
        await schedule_loop(ctx, fn, spec)

    schedule_duty.__qualname__ = getattr(fn, "__qualname__", "schedule")
    return schedule_duty


def record_key(name: str) -> str:
    return f"{PREFIX}{NAMESPACE}/{name}"


async def read_record(store: Any, name: str) -> tuple[Record | None, int]:
    """The schedule's record as the store has it now, and its revision (0: none)."""
    kv = await store.get(record_key(name))
    if kv is None:
        return None, 0
    try:
        data = decode_value(kv.value)
        return Record.from_dict(data), kv.mod_revision
    except (ValueError, TypeError, KeyError):
        log.error("schedule %s: unreadable record; starting a new one", name)
        return Record(since=0.0), kv.mod_revision


async def request_run(state: Any, name: str, *, by: str = "") -> str:
    """Ask the owner of schedule ``name`` to run it once now; returns the trigger id."""
    trigger = uuid.uuid4().hex
    await state.put(TRIGGERS, name, {"id": trigger, "by": by})
    return trigger


def _trigger(ctx: DutyContext) -> str:
    doc = ctx.state.get(TRIGGERS, ctx.name) if ctx.state is not None else None
    if doc is None or not isinstance(doc.value, dict):
        return ""
    return str(doc.value.get("id", ""))


async def _write(ctx: DutyContext, rec: Record, timing: Timing, expect: int) -> int | None:
    """Fenced compare-and-set of the record; its new revision, None on Conflict.
    Raises DutyLost when a newer owner exists."""
    data = rec.as_dict()
    data["timing"] = {"cron": timing.cron, "every": timing.every, "tz": timing.tz}
    try:
        revision: int = await ctx.state.transaction(
            [PutDoc(NAMESPACE, ctx.name, data, expect)], guard=ctx.guard()
        )
        return revision
    except Conflict:
        return None


async def schedule_loop(ctx: DutyContext, fn: Callable[..., Any], spec: ScheduleSpec) -> None:
    """Run ``fn`` on every slot while this node owns the duty (see the module doc)."""
    overrides = getattr(ctx.settings, "schedule_overrides", None) or {}
    timing = effective_timing(ctx.name, spec.timing, overrides)
    wake = asyncio.Event()
    watcher = asyncio.create_task(_watch_triggers(ctx, wake))
    logged = -_LOG_EVERY
    try:
        while not ctx.stopping.is_set():
            try:
                await _step(ctx, fn, spec, timing, wake)
            except DutyLost:
                await ctx.stopping.wait()
            except (StoreUnavailable, StoreError) as exc:
                if ctx.clock.monotonic() - logged >= _LOG_EVERY:  # once, then every 30 s
                    logged = ctx.clock.monotonic()
                    log.warning("schedule %s: store unreachable (%s); retrying", ctx.name, exc)
                await ctx.sleep(_RETRY)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _watch_triggers(ctx: DutyContext, wake: asyncio.Event) -> None:
    if ctx.state is None:
        return
    async for change in ctx.state.subscribe(TRIGGERS):
        if change.key in (None, ctx.name):
            wake.set()


async def _step(
    ctx: DutyContext, fn: Callable[..., Any], spec: ScheduleSpec, timing: Timing,
    wake: asyncio.Event,
) -> None:
    rec, rev = await read_record(ctx.store, ctx.name)
    if rec is None:
        await _write(ctx, Record(since=ctx.clock.time()), timing, 0)
        return
    wake.clear()
    now = ctx.clock.time()
    d = decide(ctx.name, timing, rec, now, missed=spec.missed, retry=spec.retry,
               trigger=_trigger(ctx))
    if isinstance(d, Wait):
        await _wait(ctx, d.until - now, wake)
        return
    if isinstance(d, Settle):
        new = rec.with_skipped(d.skipped)
        if d.interrupted is not None:
            new = new.with_run(d.interrupted)
        await _write(ctx, replace(new, last_slot=d.last_slot, current=None), timing, rev)
        if d.skipped:
            log.warning("schedule %s: skipped %d missed slot(s)", ctx.name, d.skipped)
        return
    await _claim_and_run(ctx, fn, spec, timing, rec, rev, d)


async def _wait(ctx: DutyContext, delay: float, wake: asyncio.Event) -> None:
    if delay <= 0:
        return
    tasks = {
        asyncio.ensure_future(ctx.clock.sleep(delay)),
        asyncio.ensure_future(wake.wait()),
        asyncio.ensure_future(ctx.stopping.wait()),
    }
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def _claim_and_run(
    ctx: DutyContext, fn: Callable[..., Any], spec: ScheduleSpec, timing: Timing,
    rec: Record, rev: int, claim: Claim,
) -> None:
    start = ctx.clock.time()
    run = Run(claim.slot, ctx.node, start, None, "running", "", claim.attempt, claim.kind,
              ctx.token)
    new = rec.with_skipped(claim.skipped)
    if claim.interrupted is not None:
        new = new.with_run(claim.interrupted)
    last = rec.last_slot if claim.slot is None else claim.slot
    new = replace(
        new, last_slot=last, current=run, lateness=max(0.0, start - claim.run_at),
        trigger_done=claim.trigger or rec.trigger_done,
    )
    claimed = await _write(ctx, new, timing, rev)
    if claimed is None:
        return  # someone wrote the record meanwhile: read it again
    if claim.skipped:
        log.warning("schedule %s: skipped %d missed slot(s)", ctx.name, claim.skipped)
    outcome, error = await _execute(ctx, fn, spec, claim)
    if outcome == "failed" and ctx.stopping.is_set():
        return  # cut short by a handover or drain: left "running", the next owner's
        # retry policy decides (as after a crash)
    done = replace(run, end=ctx.clock.time(), outcome=outcome, error=error)
    await _finish(ctx, timing, replace(new, current=None).with_run(done), claimed, run)


async def _finish(ctx: DutyContext, timing: Timing, rec: Record, expect: int, run: Run) -> None:
    """Record the end of ``run``; re-read and retry while the claim is still ours."""
    while True:
        if await _write(ctx, rec, timing, expect) is not None:
            return
        now_rec, expect = await read_record(ctx.store, ctx.name)
        if now_rec is None or now_rec.current != run:
            return  # no longer our run to finish
        rec = replace(now_rec, current=None).with_run(rec.runs[-1])


async def _execute(
    ctx: DutyContext, fn: Callable[..., Any], spec: ScheduleSpec, claim: Claim
) -> tuple[str, str]:
    """Run ``fn`` once; (outcome, error) with outcome ok / failed / timeout."""
    run_ctx = RunContext.of(ctx, claim)
    relay = asyncio.create_task(_relay_stop(ctx, run_ctx))
    threaded = not inspect.iscoroutinefunction(fn)
    if threaded:
        job: asyncio.Future[Any] = asyncio.ensure_future(asyncio.to_thread(fn, run_ctx))
    else:
        job = asyncio.ensure_future(fn(run_ctx))
    limit = None if spec.max_runtime is None else asyncio.ensure_future(
        ctx.clock.sleep(spec.max_runtime)
    )
    try:
        await asyncio.wait({job} if limit is None else {job, limit},
                           return_when=asyncio.FIRST_COMPLETED)
        if not job.done():
            run_ctx.stopping.set("max_runtime")
            if not threaded:
                job.cancel()
            # a thread cannot be cancelled: wait until it notices ctx.stopping, so
            # that two runs of the schedule never overlap on this node
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await job
            return "timeout", f"ran longer than max_runtime={spec.max_runtime}s"
        exc = job.exception()
        if exc is None:
            result = job.result()
            if inspect.isawaitable(result):
                await result
            return "ok", ""
        if isinstance(exc, DutyLost):
            raise exc
        log.error("schedule %s: run failed: %s", ctx.name, exc, exc_info=exc)
        return "failed", f"{type(exc).__name__}: {exc}"[:500]
    except asyncio.CancelledError:
        job.cancel()
        raise
    finally:
        relay.cancel()
        if limit is not None:
            limit.cancel()


async def _relay_stop(ctx: DutyContext, run_ctx: RunContext) -> None:
    await ctx.stopping.wait()
    run_ctx.stopping.set(ctx.stopping.reason)
