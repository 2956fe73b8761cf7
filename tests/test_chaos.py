"""Short seeded chaos runs (shoal.testing.chaos): real ``shoal run`` nodes on sqlite, on
a 3-member etcd and on PostgreSQL behind fault proxies; kill -9, SIGSTOP longer than the
TTL, node-store partitions, etcd member loss and whole-store outages; the recorded
history must show no violation of G1-G5 (see docs/guarantees.md, "How we test this")."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from shoal.testing.chaos import (
    QUOTA,
    STORE_DIVERGED,
    STORES,
    fault_kinds,
    quota_size,
    run_chaos,
)
from shoal.testing.chaos_report import ChaosResult
from shoal.testing.etcd_server import etcd_version

# etcd releases whose members can diverge after a kill -9 under load (etcd-io/etcd#13766)
DIVERGING_ETCD = ("3.5.0", "3.5.1", "3.5.2")

LONGEST_FAULT_S = 4.0  # pauses, partitions and outages last 2.5-4 s
SQLITE_MINIMUM = {"kill9": 3, "pause": 2, "partition": 2, "store_outage": 1}
ETCD_MINIMUM = {**SQLITE_MINIMUM, "member_kill": 1}


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_the_schedule_starts_with_the_quota(store: str, seed: int) -> None:
    first = list(itertools.islice(fault_kinds(store, seed), quota_size(store)))
    wanted = {k: n for k, n in QUOTA.items() if k != "member_kill" or store == "etcd3"}
    assert Counter(first) == wanted
    again = list(itertools.islice(fault_kinds(store, seed), 50))
    assert again == list(itertools.islice(fault_kinds(store, seed), 50))  # seeded
    assert set(again) == set(wanted)  # later kinds are drawn from the same ones


def _check(result: ChaosResult, minimum: dict[str, int]) -> None:
    print("\n" + result.text())
    report = result.report
    for kind, count in minimum.items():
        assert report.faults.get(kind, 0) >= count, (kind, report.faults)
    assert not report.violations, result.text()
    assert not result.anomalies, result.text()
    assert report.writes_lost == 0
    assert report.writes_acknowledged > 500  # the workload really ran
    assert report.slots_run > 10  # the schedule really ran (each slot once: no slot_twice)
    assert report.documents_written >= 5  # data duties came and went with their documents
    assert report.stale_reads > 0  # reads went on while cut off, marked stale (G5)
    assert report.failover["kill9"].p50 < 1.0  # the reaper: well under the 2 s TTL
    for kind, stats in report.failover.items():  # G3, per fault kind
        assert stats.missing == 0, f"{kind}: {stats.missing} duties hit were never moved"
        # from the fault: an outage counts from its start, so it adds its own length
        bound = result.bound_s + (LONGEST_FAULT_S if kind == "store_outage" else 0.0)
        assert max(stats.samples, default=0.0) <= bound, (kind, stats.samples, bound)
    # G5 was really checked: every whole-store outage window held reads (all stale)
    assert len(result.outage_reads) == report.faults["store_outage"]
    assert all(n > 0 for n in result.outage_reads), result.outage_reads
    revisions = set(result.final_revisions.values())
    assert len(revisions) == 1, result.final_revisions  # every node converged (G4)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_on_sqlite(tmp_path: Path) -> None:
    result = run_chaos("sqlite", nodes=5, duration=30, seed=11, workdir=tmp_path)
    _check(result, SQLITE_MINIMUM)


@pytest.mark.slow
@pytest.mark.etcd
@pytest.mark.timeout(240)
def test_chaos_on_a_three_member_etcd(tmp_path: Path) -> None:
    result = run_chaos("etcd3", nodes=5, duration=35, seed=12, workdir=tmp_path)
    version = etcd_version()
    if version in DIVERGING_ETCD and any(a.startswith(STORE_DIVERGED) for a in result.anomalies):
        # no client can agree with every member then; any other failure is Shoal's
        pytest.xfail(f"etcd {version}'s members diverged (etcd-io/etcd#13766, fixed in "
                     f"3.5.3):\n{result.text()}")  # fmt: skip
    _check(result, ETCD_MINIMUM)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_on_postgres(tmp_path: Path) -> None:
    result = run_chaos("postgres", nodes=5, duration=30, seed=14, workdir=tmp_path)
    _check(result, SQLITE_MINIMUM)
