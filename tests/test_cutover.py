"""Changing a partition count without a full stop, on the memory store with a
fake clock: member records name the declared families, placement gives a
family only to the nodes that declare it, the cut-over (request, seal, guard,
boundaries), the start-up check, forgetting the old count, and
``shoal partitions``. The real-process roll is tests/test_rolling_repartition.py."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import shoal
from shoal.cli.main import main
from shoal.errors import ConfigError, DutyLost, InvalidArgument
from shoal.primitives.membership import Member
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.cutover import NAMESPACE, Cutover, Seal
from shoal.runtime.workers import forget_partition_count
from shoal.store.protocol import KeyValue, Put
from shoal.store.sqlite import SqliteStore
from shoal.testing.cluster import SimCluster

OLD, NEW = 4, 8
CUT = Cutover("ingest", OLD, "ingest-v2")


class Cluster(SimCluster):
    def __init__(self, app: App | None = None, **defaults: Any) -> None:
        super().__init__(app, **{"ttl": 6, "grace": 1.0, "rebalance_delay": 1.0, **defaults})

    def family(self, name: str) -> dict[str, str]:
        return {d: n for d, n in self.owners().items() if d.startswith(name + "/")}


@pytest.fixture
def sim_cluster_class() -> type[SimCluster]:
    return Cluster


# -- the app of three releases: items are state docs items/<seq> = {"k": k} -----------
class Log:
    def __init__(self) -> None:
        self.handled: list[tuple[str, int]] = []  # (family, seq), in commit order
        self.contexts: dict[str, DutyContext] = {}


async def _progress(ctx: DutyContext) -> int:
    kv = await ctx.store.get(f"state/progress/{ctx.name}")
    return 0 if kv is None else int(json.loads(kv.value)["last"])


def _items(ctx: DutyContext, modulus: int, last: int,
           bounds: dict[int, Any] | None = None) -> list[tuple[int, int]]:
    """(seq, k) of this partition's items past ``last`` (and past the seal of
    their old partition, given ``bounds``), in order."""
    out = []
    for key, doc in ctx.state.items("items").items():
        seq, k = int(key), doc.value["k"]
        if k % modulus == ctx.partition and seq > max(last, bounds[k % OLD] if bounds else 0):
            out.append((seq, k))
    return sorted(out)


async def _handle(ctx: DutyContext, log: Log, family: str, seq: int, compares: list[Any]) -> bool:
    res = await ctx.txn(compares, [Put(f"state/progress/{ctx.name}",
                                       json.dumps({"last": seq}).encode())])
    if res.succeeded:
        log.handled.append((family, seq))
    return res.succeeded


def release(n: int, log: Log) -> App:
    app = App("t", version=str(n))

    async def ingest(ctx: DutyContext) -> None:
        log.contexts[ctx.name] = ctx
        last = await _progress(ctx)
        while not ctx.stopping:
            if CUT.sealed(ctx) is not None:
                break  # sealed by an earlier owner: nothing left to do
            if n >= 2 and CUT.requested(ctx):
                await CUT.seal(ctx, last)  # the items after `last` are the new family's
                break
            for seq, _ in _items(ctx, OLD, last):
                if not await _handle(ctx, log, "ingest", seq, [CUT.guard(ctx)]):
                    break
                last = seq
            await ctx.sleep(0.2)
        await ctx.stopping.wait()  # sealed: idle until handed over

    async def ingest_v2(ctx: DutyContext) -> None:
        log.contexts[ctx.name] = ctx
        bounds = await CUT.boundaries(ctx)
        if bounds is None:
            return
        last = await _progress(ctx)
        while not ctx.stopping:
            for seq, _ in _items(ctx, NEW, last, bounds):
                await _handle(ctx, log, "ingest-v2", seq, [])
                last = seq
            await ctx.sleep(0.2)

    if n <= 2:
        app.duty("ingest", partitions=OLD)(ingest)
    if n >= 2:
        app.duty("ingest-v2", partitions=NEW)(ingest_v2)
    return app


async def produce(c: Cluster, produced: dict[int, int], count: int) -> None:
    for _ in range(count):
        seq = len(produced) + 1
        k = (seq * 7919) % 1000
        await c.store.txn([], [Put(f"state/items/{seq}", json.dumps({"k": k}).encode())])
        produced[seq] = k
        await c.run(0.1)


# -- member records and placement --------------------------------------------------
def test_member_records_carry_the_declared_partitioned_families() -> None:
    me = Member("a", partitions=(("ingest", 64), ("ingest-v2", 128)))
    data = json.loads(me.encode())
    assert data["partitions"] == {"ingest": 64, "ingest-v2": 128}
    kv = KeyValue("nodes/a", me.encode(), 1, 1, 1, 0)
    assert Member.decode(kv).partitions == (("ingest", 64), ("ingest-v2", 128))
    legacy = json.dumps({"name": "old"}).encode()  # an older Shoal does not say
    assert Member.decode(KeyValue("nodes/old", legacy, 1, 1, 1, 0)).partitions is None
    assert json.loads(Member("b").encode())["partitions"] is None


async def test_a_family_is_placed_only_on_nodes_that_declare_it(cluster_factory: Any) -> None:
    log = Log()
    c = cluster_factory(release(1, log))
    a = await c.add("a")
    await c.run(2.0)
    b = await c.add("b", app=release(2, log))
    await c.run(10.0)
    assert set(c.family("ingest-v2").values()) == {"b"}  # a does not declare it
    assert len(c.family("ingest-v2")) == NEW
    assert Counter(c.family("ingest").values()) == {"a": 2, "b": 2}
    moved = a.counters["released"] + b.counters["released"]
    await c.run(20.0)  # stable: nothing handed back and forth
    assert a.counters["released"] + b.counters["released"] == moved
    assert set(c.family("ingest-v2").values()) == {"b"}


# -- the cut-over ------------------------------------------------------------------
async def test_rolling_cutover_handles_every_item_once(cluster_factory: Any) -> None:
    log = Log()
    produced: dict[int, int] = {}
    c = cluster_factory(release(1, log))
    await c.add("a")
    await c.add("b")
    await produce(c, produced, 20)
    await c.nodes.pop("a").aclose()  # roll a to release 2
    await c.add("a", app=release(2, log))
    await produce(c, produced, 20)
    with pytest.raises(ConfigError, match=r"do not declare 'ingest-v2' yet \(b\)"):
        await CUT.request(c.store)
    await c.nodes.pop("b").aclose()  # roll b to release 2
    await c.add("b", app=release(2, log))
    await produce(c, produced, 20)
    assert not [f for f, _ in log.handled if f == "ingest-v2"]  # nothing before the cut-over
    assert await CUT.request(c.store) is True
    assert await CUT.request(c.store) is False  # once
    await produce(c, produced, 20)
    seals = {int(k.rsplit("/", 1)[1]): json.loads(v.value)["last"]
             for k, v in c.store.snapshot(f"state/{NAMESPACE}/ingest/").items()}
    assert sorted(seals) == list(range(OLD))
    for name in ("a", "b"):  # release 3: the old family dropped
        await c.nodes.pop(name).aclose()
        await c.add(name, app=release(3, log))
        await produce(c, produced, 20)
    assert await forget_partition_count(c.store, "ingest")
    await c.run(5.0)
    families = {seq: [f for f, s in log.handled if s == seq] for seq in produced}
    assert all(len(f) == 1 for f in families.values()), families
    for seq, (family,) in families.items():
        assert (seq > seals[produced[seq] % OLD]) == (family == "ingest-v2"), (seq, family)
    counts = Counter(f for f, _ in log.handled)
    assert counts["ingest"] >= 40 and counts["ingest-v2"] >= 40, counts


async def test_a_seal_is_written_once_and_fences_the_old_partition(cluster_factory: Any) -> None:
    log = Log()
    c = cluster_factory(release(1, log))
    await c.add("a")
    await c.run(2.0)
    ctx = log.contexts["ingest/2"]
    assert CUT.sealed(ctx) is None and not CUT.requested(ctx)
    assert (await ctx.txn([CUT.guard(ctx)], [Put("state/x/1", b"1")])).succeeded
    assert await CUT.seal(ctx, 41) == Seal(41)
    assert await CUT.seal(ctx, 99) == Seal(41)  # written once: the first one stays
    await c.run(0.5)
    assert CUT.sealed(ctx) == Seal(41)
    res = await ctx.txn([CUT.guard(ctx)], [Put("state/x/2", b"2")])
    assert not res.succeeded  # nothing is committed past the seal
    assert await c.store.get("state/x/2") is None
    on_a = dict(log.contexts)
    await c.add("b")
    await c.run(10.0)  # half of the partitions move to b
    moved = sorted(d for d, n in c.family("ingest").items() if n == "b")
    assert moved
    with pytest.raises(DutyLost):  # a's context of a moved partition is stale
        await CUT.seal(on_a[moved[0]], 7)


async def test_boundaries_wait_for_every_seal_or_the_stop(cluster_factory: Any) -> None:
    log = Log()
    c = cluster_factory(release(2, log))
    await c.add("a")
    await c.run(2.0)
    waiting = asyncio.ensure_future(CUT.boundaries(log.contexts["ingest-v2/5"]))
    stopped = log.contexts["ingest-v2/6"]
    given_up = asyncio.ensure_future(CUT.boundaries(stopped))
    for i in range(OLD - 1):
        await CUT.seal(log.contexts[f"ingest/{i}"], 10 + i)
        await c.run(0.5)
        assert not waiting.done()  # one old partition is still open
    stopped.stopping.set("test")
    await c.run(0.5)
    assert given_up.done() and given_up.result() is None
    await CUT.seal(log.contexts[f"ingest/{OLD - 1}"], 99)
    await c.run(0.5)
    assert waiting.done() and waiting.result() == {0: 10, 1: 11, 2: 12, 3: 99}
    assert await CUT.boundaries(stopped) == {0: 10, 1: 11, 2: 12, 3: 99}  # ready wins


async def test_a_node_of_the_old_release_refuses_to_start_once_requested(
    cluster_factory: Any,
) -> None:
    log = Log()
    c = cluster_factory(release(2, log))
    await c.add("a")
    await c.run(2.0)
    with pytest.raises(ConfigError, match="roll them to the release"):
        await Cutover("ingest", OLD, "ingest-v3").request(c.store)
    assert await CUT.request(c.store)
    with pytest.raises(ConfigError) as info:
        await c.add("old", app=release(1, log))
    for part in ("'ingest' is being cut over to 'ingest-v2'", "does not declare 'ingest-v2'",
                 "docs/scaling.md"):
        assert part in str(info.value)
    assert await c.store.get("nodes/old") is None
    await c.add("new", app=release(3, log))  # the new family only: fine


def test_a_cutover_is_declared_between_two_families() -> None:
    with pytest.raises(InvalidArgument, match="must differ"):
        Cutover("ingest", 4, "ingest")
    with pytest.raises(InvalidArgument, match="old_partitions must be an int >= 1, got 0"):
        Cutover("ingest", 0, "ingest-v2")
    assert shoal.Cutover is Cutover


# -- forgetting the old count ------------------------------------------------------
async def test_forget_refuses_while_a_live_node_declares_the_family(cluster_factory: Any) -> None:
    log = Log()
    c = cluster_factory(release(2, log))
    await c.add("a")
    await c.add("b", app=release(3, log))
    with pytest.raises(ConfigError, match=r"while live nodes declare it \(a\)"):
        await forget_partition_count(c.store, "ingest")
    await c.nodes.pop("a").aclose()
    await c.store.txn([], [Put("nodes/legacy", json.dumps({"name": "legacy"}).encode())])
    with pytest.raises(ConfigError, match=r"\(legacy\)"):  # a record that does not say
        await forget_partition_count(c.store, "ingest")
    await c.store.txn([], [Put("nodes/legacy", json.dumps(
        {"name": "legacy", "partitions": {"ingest-v2": NEW}}).encode())])
    assert await forget_partition_count(c.store, "ingest")
    assert await c.store.get("meta/partitions/ingest") is None
    assert not await forget_partition_count(c.store, "ingest")  # nothing left


# -- shoal partitions ----------------------------------------------------------------
def test_shoal_partitions_list_cutover_and_forget(tmp_path: Path) -> None:
    db = tmp_path / "shoal.db"
    config = tmp_path / "node.yaml"
    config.write_text(json.dumps({"store": {"backend": "sqlite", "sqlite": {"path": str(db)}}}))
    live = Member("n1", partitions=(("ingest", 4), ("ingest-v2", 8)))

    async def seed() -> None:
        store = await SqliteStore.open(db)
        try:
            await store.txn([], [Put("meta/partitions/ingest", b"4"),
                                 Put("meta/partitions/ingest-v2", b"8"),
                                 Put("nodes/n1", live.encode()),
                                 Put(f"state/{NAMESPACE}/ingest/0", b'{"last":3}')])
        finally:
            await store.aclose()

    asyncio.run(seed())
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SHOAL__")}

    def cli(*args: str) -> Any:
        return CliRunner().invoke(main, ["partitions", *args, "-c", str(config)], env=env)

    done = cli("cutover", "ingest", "ingest-v2")
    assert done.exit_code == 0 and "cut-over ingest -> ingest-v2: requested" in done.output
    assert "already requested" in cli("cutover", "ingest", "ingest-v2").output
    missing = cli("cutover", "nope", "ingest-v2")
    assert missing.exit_code == 2 and "no partition count recorded for 'nope'" in missing.output
    rows = json.loads(cli("list", "--json").output)
    assert rows == [
        {"family": "ingest", "partitions": 4, "declared_by": ["n1"],
         "cutover_to": "ingest-v2", "sealed": 1},
        {"family": "ingest-v2", "partitions": 8, "declared_by": ["n1"],
         "cutover_to": None, "sealed": 0},
    ]
    table = cli("list").output
    assert "-> ingest-v2 (1/4 sealed)" in table and "FAMILY" in table
    refused = cli("forget", "ingest")
    assert refused.exit_code == 2 and "while live nodes declare it (n1)" in refused.output
