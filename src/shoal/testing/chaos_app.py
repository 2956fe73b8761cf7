"""The node application of the chaos run (``python -m shoal.testing.chaos``).

    SHOAL_HISTORY_DIR=/tmp/h shoal run shoal.testing.chaos_app:app -c node.yaml

Every node appends what it did to ``$SHOAL_HISTORY_DIR/<node>.jsonl`` (a
:class:`~shoal.testing.history.HistoryRecorder`; ``params.history_dir`` also works):

* ``doc:{key}``: one duty per document of ``chaos-docs`` (``for_each_doc``), the
  same function as the duties below; the driver adds and deletes documents;
* the schedule ``tick`` (every second, ``retry=False``) records ``slot_run`` as each
  slot starts (:mod:`shoal.testing.schedule_check`);
* duties ``alpha`` .. ``delta`` and the leader duty ``chief`` record ``duty_start``
  (with the fencing token) and ``duty_stop``, and every 50-100 ms write the document
  ``state/chaos/duty.<name>`` through the duty's context (``ctx.put``, fenced):
  ``write_ack`` with its revision, ``write_refused`` on DutyLost / StoreUnavailable /
  Conflict, ``write_refused`` with ``unknown`` when the write may have landed
  (OutcomeUnknown, or cancelled while in flight);
* a workload that is no duty (one per node, started by the worker pool
  ``chaos-load`` and then independent of it, so it keeps going while the node is
  cut off) uses the node's replicated state (``node.state``) in two loops: every
  100-200 ms a compare-and-set write of one of the node's own documents
  ``state/chaos/w-<node>-<i>``; and, independently (a write may hang), every
  100-200 ms a read of a random ``chaos`` document (recorded with ``stale`` and its
  age) and ``applied_revision`` whenever ``node.state.revision`` moved (at most
  every 0.5 s; every 0.1 s once stopping).

When the file ``$SHOAL_HISTORY_DIR/STOP`` exists nobody writes any more (duties keep
their ownership): the driver then measures convergence and the final state.

``SHOAL_CHAOS_LINK=1`` (the chaos run sets it for the sqlite store, which has no
network to cut) wraps the node's store in a :class:`~shoal.testing.faulty.FaultyStore`:
on SIGUSR1 the node reads ``$SHOAL_HISTORY_DIR/link-<node>`` (``cut``,
``blackhole`` or ``heal``) and applies it to its link to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shoal.clock import Clock
from shoal.config import NodeConfig, StoreSection
from shoal.errors import Conflict, DutyLost, OutcomeUnknown, ProcessError, StoreError
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.schedule import RunContext
from shoal.runtime.state import ReplicatedState
from shoal.store import factory
from shoal.store.protocol import Store
from shoal.testing.data_check import DOC_DUTY_PREFIX
from shoal.testing.faulty import FaultyStore
from shoal.testing.history import HistoryRecorder

__all__ = ["DOCS", "DUTIES", "LEADER_DUTY", "NAMESPACE", "STOP_FILE", "app", "history_dir"]

app = App("chaos")
DUTIES = ("alpha", "beta", "gamma", "delta")
LEADER_DUTY = "chief"
NAMESPACE = "chaos"
STOP_FILE = "STOP"
WORKLOAD_KEYS = 4

_recorders: dict[str, HistoryRecorder] = {}
_workloads: dict[str, asyncio.Task[None]] = {}


def history_dir(params: dict[str, Any] | None = None) -> Path:
    raw = os.environ.get("SHOAL_HISTORY_DIR") or (params or {}).get("history_dir")
    return Path(raw or "chaos-history")


def recorder(node: str, params: dict[str, Any]) -> HistoryRecorder:
    """The one recorder of ``node`` in this process (``<dir>/<node>.jsonl``, appended)."""
    rec = _recorders.get(node)
    if rec is None:
        rec = _recorders[node] = HistoryRecorder(history_dir(params) / f"{node}.jsonl", node)
    return rec


def stopping_writes(params: dict[str, Any]) -> bool:
    return (history_dir(params) / STOP_FILE).exists()


# -- duties: fenced writes ----------------------------------------------------------------
async def _fenced_write(ctx: DutyContext, rec: HistoryRecorder, seq: int) -> None:
    key = f"state/{NAMESPACE}/duty.{ctx.name}"
    value = {"node": ctx.node, "token": ctx.token, "seq": seq, "pid": os.getpid()}
    fields: dict[str, Any] = {"duty": ctx.name, "token": ctx.token}
    try:
        revision = await ctx.put(key, json.dumps(value, separators=(",", ":")).encode())
    except asyncio.CancelledError:
        rec.write_refused(key, value, reason="cancelled in flight", unknown=True, **fields)
        raise
    except DutyLost as exc:
        rec.write_refused(key, value, reason=f"DutyLost: {exc}", **fields)
        raise
    except OutcomeUnknown as exc:
        rec.write_refused(key, value, reason=f"OutcomeUnknown: {exc}", unknown=True, **fields)
    except StoreError as exc:  # StoreUnavailable: never sent, or refused before applying
        rec.write_refused(key, value, reason=f"{type(exc).__name__}: {exc}", **fields)
    else:
        rec.write_ack(key, value, revision, **fields)


async def _duty(ctx: DutyContext) -> None:
    rec = recorder(ctx.node, ctx.params)
    rec.duty_start(ctx.name, ctx.token)
    reason = "returned"
    try:
        seq = 0
        while True:
            if not stopping_writes(ctx.params):
                seq += 1
                await _fenced_write(ctx, rec, seq)
            if not await ctx.sleep(random.uniform(0.05, 0.1)):
                reason = f"stopping: {ctx.stopping.reason}"
                return
    except DutyLost:
        reason = "fenced write refused (DutyLost)"
    except asyncio.CancelledError:
        reason = f"cancelled: {ctx.stopping.reason or 'task cancelled'}"
        raise
    finally:
        rec.duty_stop(ctx.name, token=ctx.token, reason=reason)


for _name in DUTIES:
    app.duty(_name)(_duty)
app.leader_duty(LEADER_DUTY)(_duty)
DOCS = "chaos-docs"  # one duty doc:{key} per document (the driver adds and deletes them)
app.duty(DOC_DUTY_PREFIX + "{key}", for_each_doc=DOCS)(_duty)

TICK_EVERY = 1.0


@app.schedule("tick", every=TICK_EVERY, retry=False)
async def tick(ctx: RunContext) -> None:
    """A schedule: records ``slot_run`` when a slot starts (checked: once per slot)."""
    assert ctx.slot is not None
    recorder(ctx.node, ctx.params).record(
        "slot_run", schedule=ctx.name, slot=ctx.slot.timestamp(), token=ctx.token,
        attempt=ctx.attempt, every=TICK_EVERY,
    )


# -- the workload: the node's replicated state, independent of any duty -------------------
def node_state(ctx: DutyContext) -> ReplicatedState:
    """The node's ``node.state``: ``ctx.state`` when the runtime offers it, else the
    ReplicatedState that reads through this context's store (found by the gc)."""
    offered = getattr(ctx, "state", None)
    if isinstance(offered, ReplicatedState):
        return offered
    for obj in gc.get_objects():
        if isinstance(obj, ReplicatedState) and obj.store is ctx.store:
            return obj
    raise ProcessError("chaos_app: cannot find the node's replicated state")


async def _state_write(
    state: ReplicatedState, rec: HistoryRecorder, node: str, key: str, seq: int
) -> None:
    doc = state.get(NAMESPACE, key)
    full = f"state/{NAMESPACE}/{key}"
    value = {"node": node, "seq": seq, "pid": os.getpid()}
    expect = doc.revision if doc is not None else 0
    try:
        revision = await state.put(NAMESPACE, key, value, expect_revision=expect)
    except asyncio.CancelledError:
        rec.write_refused(full, value, reason="cancelled in flight", unknown=True)
        raise
    except OutcomeUnknown as exc:
        rec.write_refused(full, value, reason=f"OutcomeUnknown: {exc}", unknown=True)
    except (Conflict, StoreError) as exc:
        rec.write_refused(full, value, reason=f"{type(exc).__name__}: {exc}")
    else:
        rec.write_ack(full, value, revision, expect_revision=expect)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await state.wait_for(revision)  # read-your-writes for the next CAS


def _state_read(state: ReplicatedState, rec: HistoryRecorder, rng: random.Random) -> None:
    docs = state.items(NAMESPACE)
    if not docs:
        return
    key = rng.choice(sorted(docs))
    doc = docs[key]
    rec.read(f"state/{NAMESPACE}/{key}", doc.value, stale=state.stale,
             age=round(state.stale_for, 3), revision=doc.revision)  # fmt: skip


async def _writer(state: ReplicatedState, rec: HistoryRecorder, node: str,
                  params: dict[str, Any], rng: random.Random) -> None:  # fmt: skip
    keys = [f"w-{node}-{i}" for i in range(WORKLOAD_KEYS)]
    seq = 0
    while True:
        if not stopping_writes(params):
            seq += 1
            await _state_write(state, rec, node, rng.choice(keys), seq)
        await asyncio.sleep(rng.uniform(0.1, 0.2))


async def _reader(state: ReplicatedState, rec: HistoryRecorder, params: dict[str, Any],
                  rng: random.Random) -> None:  # fmt: skip
    last_rev, last_at = -1, 0.0
    while True:
        stop = stopping_writes(params)
        if not stop:
            _state_read(state, rec, rng)
        now = time.monotonic()
        if state.revision != last_rev and now - last_at >= (0.1 if stop else 0.5):
            last_rev, last_at = state.revision, now
            rec.applied_revision(state.revision, stale=state.stale)
        await asyncio.sleep(rng.uniform(0.1, 0.2) if not stop else 0.05)


async def workload(state: ReplicatedState, rec: HistoryRecorder, node: str,
                   params: dict[str, Any]) -> None:  # fmt: skip
    """Reads and writes ``node``'s state until cancelled (see the module doc): the
    reader goes on while a write hangs (a blackholed link)."""
    rng = random.Random(f"{node}:{os.getpid()}")
    await asyncio.gather(_writer(state, rec, node, params, rng), _reader(state, rec, params, rng))


@app.workers("chaos-load", per_node=1)
async def load_starter(ctx: DutyContext) -> None:
    """Starts this node's workload once (a task of its own: it outlives this worker,
    which the node stops while it is cut off from the store)."""
    task = _workloads.get(ctx.node)
    if task is None or task.done():
        rec = recorder(ctx.node, ctx.params)
        coro = workload(node_state(ctx), rec, ctx.node, ctx.params)
        _workloads[ctx.node] = asyncio.get_running_loop().create_task(
            coro, name=f"chaos-workload-{ctx.node}"
        )
    await ctx.stopping.wait()


# -- an injectable link to the store (sqlite: no network to cut) --------------------------
class _Link(FaultyStore):
    """A FaultyStore that owns its inner store (the node closes it)."""

    async def aclose(self) -> None:
        await self.inner.aclose()


def _on_link_signal(link: _Link, control: Path) -> None:
    try:
        mode = control.read_text().strip()
    except OSError:
        return
    actions = {"cut": link.cut, "blackhole": link.blackhole, "heal": link.heal}
    if mode in actions:
        actions[mode]()


_real_open_store = factory.open_store


async def _open_store_with_link(
    config: NodeConfig | StoreSection, *, clock: Clock | None = None,
    require: Mapping[str, str] | tuple[str, ...] = (),
) -> Store:
    store = await _real_open_store(config, clock=clock, require=require)
    if not isinstance(config, NodeConfig):
        return store
    link = _Link(store)
    control = history_dir(dict(config.params)) / f"link-{config.node.name}"
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _on_link_signal, link, control)
    return link


if os.environ.get("SHOAL_CHAOS_LINK") == "1":
    factory.open_store = _open_store_with_link
