"""The chaos run's own checks (shoal.testing.chaos_report), on hand-made histories: each
check flags its violation and lets its legal look-alike pass, so a check that always
passes (or always fails) is caught here and not in a 10-minute run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from shoal.testing.chaos_report import (
    ChaosResult,
    analyse,
    disagreeing,
    latest_applied,
    outage_reads,
    outage_recovery,
    unexplained_overlaps,
)
from shoal.testing.history import Record, Report

pytestmark = pytest.mark.timeout(30)


def r(t: float, node: str, kind: str, **fields: Any) -> Record:
    return Record.from_dict({"t": t, "mono": t, "node": node, "kind": kind, **fields})


def overlap(fault: str | None = None, target: str = "a", heal_at: float = 9.0) -> list[Record]:
    """a runs d (token 5) from 1 to 6; b runs it from 4 (token 9): 2 s together.
    ``fault`` (on ``target``) is injected at 2 and healed at ``heal_at``."""
    recs = [
        r(1.0, "a", "duty_start", duty="d", token=5),
        r(4.0, "b", "duty_start", duty="d", token=9),
        r(6.0, "a", "duty_stop", duty="d"),
    ]
    if fault is not None:
        recs += [r(2.0, "h", "fault", fault=fault, target=target),
                 r(heal_at, "h", "heal", fault=fault, target=target)]
    return sorted(recs, key=lambda x: x.t)


def test_an_overlap_of_an_unpaused_owner_is_a_g1_violation() -> None:
    (v,) = unexplained_overlaps(overlap())
    assert v.kind == "g1_overlap" and v.t == 4.0
    assert "'d'" in v.detail and "token 5" in v.detail and "token 9" in v.detail
    assert "2.000s together" in v.detail


def test_an_overlap_of_a_paused_owner_is_not() -> None:
    assert unexplained_overlaps(overlap("pause")) == []
    assert unexplained_overlaps(overlap("pause", heal_at=math.inf)) == []  # never healed


@pytest.mark.parametrize(
    ("fault", "target", "heal_at"),
    [
        ("partition", "a", 9.0),  # not a pause: G1 must hold through a partition
        ("pause", "b", 9.0),  # the newer owner was paused, not the older one
        ("pause", "a", 3.0),  # the pause ended before b started
    ],
)
def test_look_alikes_that_do_not_explain_an_overlap(
    fault: str, target: str, heal_at: float
) -> None:
    assert [v.kind for v in unexplained_overlaps(overlap(fault, target, heal_at))] == [
        "g1_overlap"]


def test_back_to_back_owners_and_a_killed_owner_are_no_overlap() -> None:
    handover = [
        r(1.0, "a", "duty_start", duty="d", token=5),
        r(4.0, "a", "duty_stop", duty="d"),
        r(4.0, "b", "duty_start", duty="d", token=9),
    ]
    assert unexplained_overlaps(handover) == []
    killed = [  # a never recorded its stop: kill -9 ends its span at the fault
        r(1.0, "a", "duty_start", duty="d", token=5),
        r(3.0, "h", "fault", fault="kill9", target="a"),
        r(3.1, "b", "duty_start", duty="d", token=9),
    ]
    assert unexplained_overlaps(killed) == []
    assert len(unexplained_overlaps(killed[:1] + killed[2:])) == 1  # not killed: overlap


def test_every_overlapping_pair_is_reported() -> None:
    recs = [
        r(1.0, "a", "duty_start", duty="d", token=5),
        r(2.0, "b", "duty_start", duty="d", token=7),
        r(3.0, "c", "duty_start", duty="d", token=9),
        r(4.0, "a", "duty_start", duty="e", token=11),
    ]
    found = unexplained_overlaps(recs)
    assert sorted((v.t, v.detail.split(":")[0]) for v in found) == [
        (2.0, "duty 'd'"), (3.0, "duty 'd'"), (3.0, "duty 'd'")]


def test_outage_recovery_counts_from_each_heal_to_the_next_start() -> None:
    recs = [
        r(1.0, "a", "duty_start", duty="d", token=1),
        r(2.0, "h", "fault", fault="store_outage"),
        r(5.0, "h", "heal", fault="store_outage"),
        r(5.5, "b", "duty_start", duty="d", token=3),
        r(6.0, "a", "duty_start", duty="e", token=4),
        r(7.0, "b", "duty_start", duty="d", token=5),  # not the first start after the heal
        r(8.0, "h", "heal", fault="partition"),  # not a store outage
        r(9.0, "a", "duty_start", duty="e", token=6),
    ]
    assert outage_recovery(recs, ["d", "e", "never"]) == [0.5, 1.0]
    assert outage_recovery(recs[:3], ["d"]) == []  # never started again: no sample


def test_outage_reads_counts_reads_past_the_grace_in_each_window() -> None:
    recs = [r(t, "a", "read", key="k", value=1, stale=True) for t in (1.0, 3.5, 4.0, 9.0, 12.0)]
    assert outage_reads(recs, [(2.0, 5.0), (8.0, 10.0), (11.0, 11.5)], grace=1.0) == [2, 1, 0]


def test_latest_applied_reads_each_node_tail(tmp_path: Path) -> None:
    lines = [{"t": i, "node": "a", "kind": "applied_revision", "revision": i} for i in (3, 9, 7)]
    padding = [{"t": 0, "node": "a", "kind": "read", "value": "x" * 200}] * 400  # > 64 KiB
    a = [json.dumps(x) for x in [{"kind": "applied_revision", "revision": 1}, *padding, *lines]]
    (tmp_path / "a.jsonl").write_text("\n".join(a) + '\n{"kind": "applied_revision", "rev')
    (tmp_path / "b.jsonl").write_text(json.dumps({"kind": "read", "value": 1}) + "\n")
    assert latest_applied(tmp_path, ["a", "b"]) == {"a": 7}  # the last one, torn line skipped


def run_records() -> list[Record]:
    """A short clean run: a crash with a failover, an outage with stale reads."""
    return [
        r(1.0, "a", "duty_start", duty="d", token=5),
        r(1.5, "a", "write_ack", duty="d", token=5, key="state/d", value="a1", revision=6),
        r(2.0, "h", "fault", fault="kill9", target="a"),
        r(2.1, "b", "duty_start", duty="d", token=8),
        r(3.0, "h", "fault", fault="store_outage"),
        r(4.5, "b", "read", key="state/d", value="a1", stale=True, age=1.0),
        r(5.0, "b", "write_refused", key="state/x", value=1, unknown=True),
        r(6.0, "h", "heal", fault="store_outage"),
        r(6.2, "b", "duty_start", duty="d", token=12),
        r(6.3, "b", "applied_revision", revision=12),
    ]


def analysed(recs: list[Record], **kw: Any) -> ChaosResult:
    return analyse(recs, final_state={"state/d": "a1"}, final_revisions={"b": 12},
                   duties=["d"], bound_s=2.0, outage_grace_s=1.0, command="test", **kw)


def test_analyse_sums_a_clean_run_up() -> None:
    res = analysed(run_records())
    assert res.ok and res.report.ok, res.text()
    assert res.reads == 1 and res.unknown_writes == 1
    assert res.recovery == [pytest.approx(0.2)] and res.outage_reads == [1]
    assert res.report.failover["kill9"].samples == (pytest.approx(0.1),)
    assert res.final_revisions == {"b": 12} and res.bound_s == 2.0
    assert "violations: 0" in res.text() and "command: test" in res.text()


def test_analyse_adds_g1_overlaps_to_the_checker_violations() -> None:
    recs = [x for x in run_records() if x.data.get("fault") != "kill9"]  # a never died
    res = analysed(recs)
    assert not res.ok
    # a ran d to the end; both of b's spans (from 2.1 and from 6.2) overlap it
    assert [(v.kind, v.t) for v in res.report.violations] == [
        ("g1_overlap", 2.1), ("g1_overlap", 6.2)]
    assert "VIOLATION g1_overlap" in res.text() and "until the end of the run" in res.text()


def test_analyse_reports_checker_violations_and_anomalies() -> None:
    fresh = [*run_records(), r(5.5, "b", "read", key="state/d", value="a1", stale=False)]
    res = analysed(sorted(fresh, key=lambda x: x.t))
    assert [v.kind for v in res.report.violations] == ["fresh_read_in_outage"]
    res = analysed(run_records(), anomalies=["node c exited by itself"])
    assert res.report.ok and not res.ok and "ANOMALY: node c exited" in res.text()


def test_chaos_result_ok_needs_both() -> None:
    assert ChaosResult(Report()).ok
    assert not ChaosResult(Report(), anomalies=["x"]).ok
    bad = Report()
    bad.add("lost_write", "k")
    assert not ChaosResult(bad).ok


def test_disagreeing_names_keys_the_members_number_differently() -> None:
    agree = {"state/a": 5, "state/b": 9}
    assert disagreeing([agree, dict(agree), dict(agree)]) == []
    shifted = {"state/a": 5, "state/b": 8}  # one member numbers a revision differently
    missing = {"state/b": 9}  # one member lacks a key
    assert disagreeing([agree, shifted, agree]) == ["state/b"]
    assert disagreeing([missing, agree, shifted]) == ["state/a", "state/b"]
