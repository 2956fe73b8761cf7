"""Scheduled duties on the memory store with a fake clock (shoal.testing.SimCluster)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from shoal.core.schedule import Record
from shoal.errors import ConfigError, DutyLost
from shoal.runtime.app import App
from shoal.runtime.schedule import (
    NAMESPACE,
    RunContext,
    _write,
    read_record,
    request_run,
)
from shoal.runtime.settings import NodeSettings
from shoal.testing.cluster import SimCluster

TTL = 6
EVERY = 60.0


@pytest.fixture
async def cluster_factory() -> AsyncIterator[Callable[[App], SimCluster]]:
    made: list[SimCluster] = []

    def make(app: App) -> SimCluster:
        c = SimCluster(app, ttl=TTL, grace=1.0)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


async def record(c: SimCluster, name: str = "job") -> Record:
    rec, _ = await read_record(c.store, name)
    assert rec is not None
    return rec


async def until_recorded(c: SimCluster, runs: int, name: str = "job") -> Record:
    """Wait (event-driven, bounded) until the record holds ``runs`` finished runs:
    a sync run ends in a thread, on the real clock, after the fake one moved
    (pytest's timeout bounds it)."""
    node = next(iter(c.nodes.values()))
    changes = node.state.subscribe(NAMESPACE)
    while True:
        doc = node.state.get(NAMESPACE, name)
        if doc is not None and len(doc.value["runs"]) >= runs:
            await changes.aclose()
            return Record.from_dict(doc.value)
        await anext(changes)


async def until_next_slot(c: SimCluster, every: float = EVERY) -> float:
    """Advance to just before the next slot; return that slot."""
    now = c.clock.time()
    slot = (now // every + 1) * every
    await c.run(slot - now - 0.5)
    return slot


async def test_each_slot_runs_once_across_three_nodes(cluster_factory: Any) -> None:
    runs: list[tuple[str, float | None, int]] = []
    app = App("t")

    @app.schedule("job", every=timedelta(seconds=EVERY))
    async def job(ctx: RunContext) -> None:
        assert ctx.slot is not None
        runs.append((ctx.node, ctx.slot.timestamp(), ctx.attempt))

    c = cluster_factory(app)
    for n in "abc":
        await c.add(n)
    await c.run(EVERY * 5 + 1, step=0.5)
    slots = [s for _, s, _ in runs]
    assert len(slots) >= 5 and len(set(slots)) == len(slots), runs
    assert all(s is not None and s % EVERY == 0 for s in slots)
    assert len({n for n, _, _ in runs}) == 1  # one owner while nothing moves
    rec = await record(c)
    assert rec.counts == {"ok": len(runs)} and rec.current is None
    assert rec.last_slot == slots[-1] and rec.lateness < 0.6  # fake clock steps of 0.5 s
    assert [r.slot for r in rec.runs] == slots


async def test_sync_function_runs_in_a_thread(cluster_factory: Any) -> None:
    threads: list[str] = []
    app = App("t")

    @app.schedule("job", cron="* * * * *")
    def job(ctx: RunContext) -> None:
        threads.append(threading.current_thread().name)

    c = cluster_factory(app)
    await c.add("a")
    await c.run(130, step=1.0)
    await until_recorded(c, 2)
    assert len(threads) == 2 and all(t != threading.main_thread().name for t in threads)


async def blocking_app(retry: bool, started: list[RunContext], release: asyncio.Event) -> App:
    app = App("t")

    @app.schedule("job", every=EVERY, retry=retry)
    async def job(ctx: RunContext) -> None:
        started.append(ctx)
        if len(started) == 1:
            await release.wait()  # the first run hangs until its node dies

    return app


@pytest.mark.parametrize("retry", [True, False])
async def test_owner_killed_mid_run_follows_the_retry_policy(
    cluster_factory: Any, retry: bool
) -> None:
    started: list[RunContext] = []
    c = cluster_factory(await blocking_app(retry, started, asyncio.Event()))
    await c.add("a")
    await c.run(1.0)
    await c.add("b")
    slot = await until_next_slot(c)
    await c.run(1.0)
    assert len(started) == 1 and started[0].slot is not None
    victim = started[0].node
    await c.nodes[victim].abandon()  # kill -9 without the reaper: the lease runs out
    await c.run(TTL + 3.0)
    rec = await record(c)
    assert rec.runs[0].slot == slot and rec.runs[0].outcome == "interrupted"
    if retry:
        assert len(started) == 2 and started[1].attempt == 2 and started[1].node != victim
        assert started[1].slot == started[0].slot
        assert [r.outcome for r in rec.runs] == ["interrupted", "ok"]
    else:
        assert len(started) == 1 and [r.outcome for r in rec.runs] == ["interrupted"]
    assert rec.current is None and rec.last_slot == slot
    await c.run(EVERY)  # the next slot runs once, on the survivor
    assert len(started) == (3 if retry else 2) and started[-1].attempt == 1


async def test_completed_slot_is_never_rerun_after_failover(cluster_factory: Any) -> None:
    runs: list[tuple[str, float]] = []
    app = App("t")

    @app.schedule("job", every=EVERY)
    async def job(ctx: RunContext) -> None:
        assert ctx.slot is not None
        runs.append((ctx.node, ctx.slot.timestamp()))

    c = cluster_factory(app)
    await c.add("a")
    await c.run(1.0)
    await c.add("b")
    await until_next_slot(c)
    await c.run(2.0)
    assert len(runs) == 1
    await c.nodes[runs[0][0]].abandon()
    await c.run(TTL + 3.0)  # the survivor owns it now, before the next slot
    await c.run(EVERY)
    assert len(runs) == 2 and runs[1][1] == runs[0][1] + EVERY and runs[1][0] != runs[0][0]


async def test_paused_owner_cannot_write_after_its_slot_was_taken_over(
    cluster_factory: Any,
) -> None:
    started: list[RunContext] = []
    gate = threading.Event()
    refused: list[BaseException] = []
    woke = asyncio.Event()
    loop = asyncio.get_running_loop()
    app = App("t")

    @app.schedule("job", every=EVERY, retry=True)
    def job(ctx: RunContext) -> None:  # a sync run that ignores ctx.stopping (stuck)
        started.append(ctx)
        if len(started) == 1:
            gate.wait(30)
            try:
                ctx.put_sync("out/x", ctx.node.encode())
            except DutyLost as exc:
                refused.append(exc)
            loop.call_soon_threadsafe(woke.set)
        else:
            ctx.put_sync("out/x", ctx.node.encode())

    c = cluster_factory(app)
    await c.add("a")
    await c.run(1.0)
    await c.add("b")
    await until_next_slot(c)
    await c.run(1.0)
    old = started[0]
    c.links[old.node].blackhole()  # the old owner is cut off while its run is stuck
    await c.run(TTL + 3.0)
    assert len(started) == 2 and started[1].node != old.node and started[1].token > old.token
    c.links[old.node].heal()
    gate.set()  # the paused run wakes up late
    await woke.wait()  # the thread's write went through the event loop
    assert refused, "the superseded run's fenced write went through"
    out = await c.store.get("out/x")
    assert out is not None and out.value == started[1].node.encode()
    await until_recorded(c, 2)
    rec, rev = await read_record(c.store, "job")
    assert rec is not None
    # nor touch the schedule's record, even through a node whose copy is current
    old.state = c.nodes[started[1].node].state
    with pytest.raises(DutyLost):
        await _write(old, Record(since=0), app.schedules["job"].timing, rev)
    assert [r.outcome for r in rec.runs] == ["interrupted", "ok"]


async def test_missed_slots_while_no_node_ran_follow_the_policy(cluster_factory: Any) -> None:
    for missed, expect_runs in (("run_once", 1), ("skip", 0)):
        runs: list[float] = []
        app = App("t")

        @app.schedule("job", every=EVERY, missed=missed, misfire_grace=5)
        async def job(ctx: RunContext, runs: list[float] = runs) -> None:
            assert ctx.slot is not None
            runs.append(ctx.slot.timestamp())

        c = cluster_factory(app)
        a = await c.add("a")
        await until_next_slot(c)
        await c.run(1.0)
        assert len(runs) == 1
        await a.abandon()
        await c.run(EVERY * 2 + 40)  # two slots pass with no node; the newest 40 s ago
        await c.add("b")
        await c.run(2.0)
        rec = await record(c)
        assert len(runs) == 1 + expect_runs, (missed, runs)
        assert rec.counts.get("skipped") == 2 - expect_runs
        await c.aclose()


async def test_manual_trigger_runs_once(cluster_factory: Any) -> None:
    runs: list[str] = []
    app = App("t")

    @app.schedule("job", cron="0 1 * * *")
    async def job(ctx: RunContext) -> None:
        runs.append(ctx.kind)

    c = cluster_factory(app)
    a = await c.add("a")
    await c.add("b")
    await c.run(2.0)
    await request_run(a.state, "job", by="test")
    await c.run(2.0)
    assert runs == ["manual"]
    await c.run(10.0)
    assert runs == ["manual"]
    rec = await record(c)
    assert rec.runs[-1].kind == "manual" and rec.runs[-1].slot is None


async def test_max_runtime_stops_a_run_and_records_timeout(cluster_factory: Any) -> None:
    app = App("t")

    @app.schedule("job", every=EVERY, max_runtime=timedelta(seconds=5))
    async def job(ctx: RunContext) -> None:
        await asyncio.sleep(3600)  # never checks ctx.stopping: cancelled

    c = cluster_factory(app)
    await c.add("a")
    await until_next_slot(c)
    await c.run(8.0)
    rec = await record(c)
    assert [r.outcome for r in rec.runs] == ["timeout"] and rec.current is None


async def test_failure_is_recorded_and_the_next_slot_still_runs(cluster_factory: Any) -> None:
    app = App("t")

    @app.schedule("job", every=EVERY)
    async def job(ctx: RunContext) -> None:
        raise RuntimeError("disk full")

    c = cluster_factory(app)
    await c.add("a")
    await c.run(EVERY * 2 + 1)
    rec = await record(c)
    assert [r.outcome for r in rec.runs] == ["failed", "failed"]
    assert rec.runs[0].error == "RuntimeError: disk full" and rec.counts == {"failed": 2}


async def test_config_override_replaces_the_timing(cluster_factory: Any) -> None:
    runs: list[float] = []
    app = App("t")

    @app.schedule("job", cron="0 1 * * *")
    async def job(ctx: RunContext) -> None:
        runs.append(ctx.clock.time())

    c = cluster_factory(app)
    await c.add("a", schedule_overrides={"job": (None, 30.0)})
    await c.run(61.0)
    assert len(runs) == 2
    doc = c.nodes["a"].state.get(NAMESPACE, "job")
    assert doc is not None and doc.value["timing"]["every"] == 30.0


def test_config_schedule_overrides_are_read(tmp_path: Any) -> None:
    from shoal.config import NodeConfig

    cfg = NodeConfig(duties={"job": {"every": 30}, "report:*": {"cron": "0 2 * * *"}},
                     store={"backend": "memory"})
    settings = NodeSettings.from_config(cfg)
    assert settings.schedule_overrides == {"job": (None, 30.0), "report:*": ("0 2 * * *", None)}
    with pytest.raises(ConfigError, match="bad cron expression"):
        NodeConfig(duties={"job": {"cron": "every day"}})


def test_declaration_errors_are_one_clear_line() -> None:
    app = App("t")
    with pytest.raises(ValueError, match="schedule 'x': a schedule needs exactly one"):
        app.schedule("x")
    with pytest.raises(ValueError, match="schedule 'x': bad cron expression"):
        app.schedule("x", cron="0 1 * *")
    with pytest.raises(ValueError, match="missed must be one of"):
        app.schedule("x", every=60, missed="later")


TOKEN = "s3cret-api-token-for-schedules-000"


async def test_http_lists_schedules_and_runs_one_once(cluster_factory: Any) -> None:
    import httpx2

    from shoal.cli.schedule_cmd import render
    from shoal.http._metrics import node_registry, render_metrics
    from shoal.http.api import create_app

    runs: list[str] = []
    app = App("t")

    @app.schedule("nightly", cron="0 1 * * *", tz="Europe/Berlin")
    async def nightly(ctx: RunContext) -> None:
        runs.append(ctx.kind)

    c = cluster_factory(app)
    a = await c.add("a")
    await c.add("b")
    await c.run(2.0)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(a, token=TOKEN)),
                              base_url="http://testserver")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http:
        assert (await http.post("/schedules/nightly/run")).status_code == 401
        missing = await http.post("/schedules/nope/run", headers=auth)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "schedule_not_found"
        res = await http.post("/schedules/nightly/run", headers=auth)
        assert res.status_code == 202 and res.json()["status"] == "requested"
        await c.run(2.0)
        assert runs == ["manual"]
        listing = (await http.get("/schedules", headers=auth)).json()["schedules"]
    [row] = listing
    assert row["name"] == "nightly" and row["owner"] in ("a", "b")
    assert row["cron"] == "0 1 * * *" and row["tz"] == "Europe/Berlin"
    assert row["last_run"]["outcome"] == "ok" and row["last_run"]["kind"] == "manual"
    assert row["next_run"] is not None and row["next_run"] > c.clock.time()
    text = render(listing, c.clock.time())
    assert "nightly" in text and "NEXT RUN" in text and row["owner"] in text
    owner = c.nodes[row["owner"]]
    from prometheus_client.parser import text_string_to_metric_families

    metrics = render_metrics(node_registry(owner.status, "v")).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics) for s in f.samples}
    ok = ("shoal_schedule_runs_total",
          (("node", owner.name), ("outcome", "ok"), ("schedule", "nightly")))
    assert samples[ok] == 1.0
    assert c.nodes["a"].state.get(NAMESPACE, "nightly") is not None
    from shoal.http._view import cluster_view

    [summary] = cluster_view(a.status())["schedules"]
    assert summary["last_outcome"] == "ok" and "error" not in summary
    assert "shoal_schedule_next_run_timestamp_seconds" in metrics


async def test_run_cut_short_by_a_drain_is_retried_by_the_next_owner(
    cluster_factory: Any,
) -> None:
    started: list[RunContext] = []
    app = App("t")

    @app.schedule("job", every=EVERY, retry=True)
    async def job(ctx: RunContext) -> None:
        started.append(ctx)
        if len(started) == 1:
            await ctx.stopping.wait()
            raise RuntimeError("stopped before finishing")

    c = cluster_factory(app)
    await c.add("a")
    await c.run(1.0)
    await c.add("b")
    await until_next_slot(c)
    await c.run(1.0)
    first = started[0]
    drain = asyncio.ensure_future(c.nodes[first.node].drain())
    await c.run(3.0)
    await drain
    assert len(started) == 2 and started[1].attempt == 2 and started[1].node != first.node
    rec = await record(c)
    assert [r.outcome for r in rec.runs] == ["interrupted", "ok"]


async def test_max_runtime_of_a_sync_run_waits_for_the_thread_to_stop(
    cluster_factory: Any,
) -> None:
    ended: list[str] = []
    app = App("t")

    @app.schedule("job", every=EVERY, max_runtime=5)
    def job(ctx: RunContext) -> None:
        ctx.stopping.wait_sync(60)  # a sync run that honours ctx.stopping
        ended.append(ctx.stopping.reason)

    c = cluster_factory(app)
    await c.add("a")
    await until_next_slot(c)
    await c.run(8.0)
    rec = await until_recorded(c, 1)
    assert ended == ["max_runtime"] and [r.outcome for r in rec.runs] == ["timeout"]


def test_cli_schedule_list_reads_the_store(tmp_path: Any) -> None:
    import json as _json

    import yaml
    from click.testing import CliRunner

    from shoal.cli.main import main
    from shoal.core.schedule import Run
    from shoal.store.protocol import Put
    from shoal.store.sqlite import SqliteStore

    db = tmp_path / "s.db"
    rec = Record(since=1_700_000_000.0, last_slot=1_700_000_040.0, lateness=0.004).with_run(
        Run(1_700_000_040.0, "a", 1_700_000_040.004, 1_700_000_041.0, "failed", "E: x"))
    data = {**rec.as_dict(), "timing": {"cron": None, "every": 60.0, "tz": "UTC"}}

    async def seed() -> None:
        store = await SqliteStore.open(db)
        try:
            await store.txn([], [Put(f"state/{NAMESPACE}/job", _json.dumps(data).encode())])
        finally:
            await store.aclose()

    asyncio.run(seed())
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"store": {"backend": "sqlite", "sqlite": {"path": str(db)}}}))
    res = CliRunner().invoke(main, ["schedule", "list", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "job" in res.output and "every 60s" in res.output and "failed" in res.output
    res = CliRunner().invoke(main, ["schedule", "list", "--config", str(cfg), "--json"])
    [row] = _json.loads(res.output)
    assert row["owner"] is None and row["counts"] == {"failed": 1}
    res = CliRunner().invoke(main, ["schedule", "list"])
    assert res.exit_code == 2 and "--url" in res.output


async def test_a_for_each_schedule_keeps_one_record_per_item(cluster_factory: Any) -> None:
    runs: list[tuple[str, Any]] = []
    app = App("t")

    @app.schedule("report:{engine}", every=EVERY, for_each="engines")
    async def report(ctx: RunContext) -> None:
        runs.append((ctx.name, ctx.item))

    c = cluster_factory(app)
    await c.add("a", params={"engines": ["x", "y"]})
    await c.add("b", params={"engines": ["x", "y"]})
    await c.run(EVERY + 2)
    assert sorted(runs) == [("report:x", "x"), ("report:y", "y")]
    for name in ("report:x", "report:y"):
        assert (await record(c, name)).counts == {"ok": 1}


async def test_a_leader_schedule_runs_on_the_leader(cluster_factory: Any) -> None:
    nodes: list[str] = []
    app = App("t")

    @app.schedule("cert-check", every=EVERY, with_duty="leader")
    async def check(ctx: RunContext) -> None:
        nodes.append(ctx.node)

    c = cluster_factory(app)
    a = await c.add("a")
    await c.add("b", can_lead=False)
    await c.run(EVERY * 2 + 2)
    assert len(nodes) == 2 and set(nodes) == {a.leader} == {"a"}
