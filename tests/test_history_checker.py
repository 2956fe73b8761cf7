"""The history recorder and the invariant checker (shoal.testing.history), on hand-made
histories: each guarantee's violation is reported, its legal look-alike is not, and the
stats (failover p50/p99) are right."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import NotRunning
from shoal.testing.history import (
    HistoryRecorder,
    Record,
    Report,
    check,
    load_history,
    normalize,
    outage_windows,
    percentile,
)

pytestmark = pytest.mark.timeout(30)
KEY = "state/ticker"


def r(t: float, node: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"t": t, "mono": t, "node": node, "kind": kind, **fields}


def kinds(report: Report) -> list[str]:
    return [v.kind for v in report.violations]


def failover_run() -> list[dict[str, Any]]:
    """a owns ticker (token 5) and writes; a is killed at t=3; b takes over at 3.2."""
    return [
        r(1.0, "a", "duty_start", duty="ticker", token=5),
        r(1.5, "a", "write_ack", duty="ticker", token=5, key=KEY, value="a1", revision=6),
        r(2.0, "a", "write_ack", duty="ticker", token=5, key=KEY, value="a2", revision=7),
        r(2.0, "b", "applied_revision", revision=7),
        r(3.0, "harness", "fault", fault="kill9", target="a"),
        r(3.2, "b", "duty_start", duty="ticker", token=9),
        r(3.5, "b", "write_ack", duty="ticker", token=9, key=KEY, value="b1", revision=10),
        r(3.6, "b", "applied_revision", revision=10),
        r(3.6, "c", "applied_revision", revision=10),
    ]


def test_a_clean_history_has_no_violation_and_right_stats() -> None:
    report = check(
        failover_run(), final_state={KEY: "b1"}, final_revisions={"b": 10, "c": 10},
        bound_s=2.0, duties={"ticker"},
    )  # fmt: skip
    assert report.ok, report.summary()
    assert report.faults == {"kill9": 1}
    assert report.duties_moved == 1
    assert (report.writes_acknowledged, report.writes_refused, report.writes_lost) == (3, 0, 0)
    stats = report.failover["kill9"]
    assert stats.count == 1 and stats.missing == 0
    assert stats.p50 == stats.p99 == pytest.approx(0.2)
    assert report.owned_after == {"ticker": pytest.approx(0.2)}
    assert "failover kill9: n=1" in report.summary()


def paused_owner(old_writes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """a owns ticker, is paused at t=2, b takes over at 4.5 while a still believes it owns
    the duty; a wakes up, writes (``old_writes``), and stops at 5.5."""
    return [
        r(1.0, "a", "duty_start", duty="ticker", token=5),
        r(1.5, "a", "write_ack", duty="ticker", token=5, key=KEY, value="a1", revision=6),
        r(2.0, "harness", "fault", fault="sigstop", target="a"),
        r(4.5, "b", "duty_start", duty="ticker", token=9),
        r(4.6, "b", "write_ack", duty="ticker", token=9, key=KEY, value="b1", revision=10),
        r(5.0, "harness", "heal", fault="sigstop", target="a"),
        *old_writes,
        r(5.5, "a", "duty_stop", duty="ticker", token=5, reason="lease lost"),
    ]


def test_double_owner_with_an_acknowledged_old_owner_write_is_reported() -> None:
    hist = paused_owner([
        r(5.1, "a", "write_ack", duty="ticker", token=5, key=KEY, value="a2", revision=12),
    ])  # fmt: skip
    report = check(hist, bound_s=1.0, duties={"ticker"})
    assert kinds(report) == ["double_owner"]
    detail = report.violations[0].detail
    assert "'ticker'" in detail and "a (token 5)" in detail and "b (token 9)" in detail
    assert report.overlaps_fenced == 0
    # without a revision the store order is unknown: still a double owner
    hist = paused_owner([r(5.1, "a", "write_ack", duty="ticker", key=KEY, value="a2")])
    assert kinds(check(hist, bound_s=1.0)) == ["double_owner"]


def test_double_owner_whose_old_writes_were_all_refused_is_not_reported() -> None:
    hist = paused_owner([
        r(5.1, "a", "write_refused", duty="ticker", token=5, key=KEY, value="a2",
          reason="DutyLost"),
        r(5.2, "a", "write_refused", duty="ticker", token=5, key=KEY, value="a3",
          reason="DutyLost"),
    ])  # fmt: skip
    report = check(hist, final_state={KEY: "b1"}, bound_s=1.0, duties={"ticker"})
    assert report.ok, report.summary()
    assert report.overlaps_fenced == 1 and report.writes_refused == 2
    stats = report.failover["sigstop"]
    assert stats.samples == pytest.approx((2.5,))


def test_an_old_owner_ack_the_store_ordered_before_the_new_token_is_not_a_double_owner() -> None:
    # sent before the pause, acknowledged (recorded) only after it: revision 8 < token 9
    hist = paused_owner([
        r(5.1, "a", "write_ack", duty="ticker", token=5, key=KEY, value="a2", revision=8),
    ])  # fmt: skip
    report = check(hist, bound_s=1.0)
    assert report.ok, report.summary()


def test_an_ack_landing_after_a_newer_token_is_unfenced_even_without_wall_overlap() -> None:
    hist = [
        r(1.0, "a", "duty_start", duty="ticker", token=5),
        r(2.0, "a", "duty_stop", duty="ticker", token=5),
        r(2.1, "b", "duty_start", duty="ticker", token=9),
        # recorded late, but the store applied it at 11, after token 9 was issued
        r(1.9, "a", "write_ack", duty="ticker", token=5, key=KEY, value="a9", revision=11),
    ]
    report = check(hist, bound_s=1.0)
    assert kinds(report) == ["unfenced_write"]
    assert "token 5" in report.violations[0].detail and "token 9" in report.violations[0].detail


def test_a_killed_owner_does_not_count_as_a_double_owner() -> None:
    hist = failover_run()  # a never records a duty_stop: the kill9 fault ends its duties
    report = check(hist, bound_s=1.0, duties={"ticker"})
    assert report.ok and report.overlaps_fenced == 0


def test_a_lost_acknowledged_write_is_reported() -> None:
    report = check(failover_run(), final_state={KEY: "a2"}, bound_s=2.0)
    assert kinds(report) == ["lost_write"]
    assert report.writes_lost == 1
    assert "'b1'" in report.violations[0].detail and "revision 10" in report.violations[0].detail
    report = check(failover_run(), final_state={}, bound_s=2.0)  # the key is gone
    assert kinds(report) == ["lost_write"]


def test_later_writes_and_deletes_and_unknown_outcomes_are_not_losses() -> None:
    hist = [
        r(1.0, "a", "write_ack", key="k", value="v1", revision=10),
        r(1.1, "b", "write_ack", key="k", value="v0", revision=9),  # recorded late, older
        r(1.2, "a", "write_ack", key="gone", value="x", revision=11),
        r(1.3, "a", "write_ack", key="gone", value=None, revision=12),  # a delete
        r(1.4, "a", "write_ack", key="b", value=b"\xffraw", revision=13),  # bytes
        r(1.5, "a", "write_refused", key="k", value="v2", unknown=True, reason="timeout"),
    ]
    final = {"k": "v1", "b": b"\xffraw"}
    assert check(hist, final_state=final, bound_s=1.0).ok
    assert check(hist, final_state={**final, "k": "v2"}, bound_s=1.0).ok  # it landed
    report = check(hist, final_state={**final, "k": "v0"}, bound_s=1.0)
    assert kinds(report) == ["lost_write"]


def test_a_node_going_back_in_revision_is_reported() -> None:
    hist = [
        r(1.0, "a", "applied_revision", revision=5),
        r(2.0, "a", "applied_revision", revision=7),
        r(2.5, "b", "applied_revision", revision=3),  # another node: fine
        r(3.0, "a", "applied_revision", revision=6),
        r(4.0, "a", "applied_revision", revision=7),  # equal to the highest: fine
    ]
    report = check(hist, bound_s=1.0)
    assert kinds(report) == ["revision_regressed"]
    assert "revision 6" in report.violations[0].detail and "after 7" in report.violations[0].detail


def test_nodes_that_did_not_converge_are_reported() -> None:
    report = check(failover_run(), final_revisions={"b": 10, "c": 9}, bound_s=2.0)
    assert kinds(report) == ["not_converged"]
    assert "'c': 9" in report.violations[0].detail
    # the same revision everywhere, but below an acknowledged write
    report = check(failover_run(), final_revisions={"b": 9, "c": 9}, bound_s=2.0)
    assert kinds(report) == ["not_converged"]


def test_a_duty_unowned_past_its_bound_after_the_last_heal_is_reported() -> None:
    base = [
        r(1.0, "a", "duty_start", duty="importer", token=4),
        r(2.0, "harness", "fault", fault="partition", target="a"),
        r(2.5, "a", "duty_stop", duty="importer", token=4, reason="lease expiring"),
        r(6.0, "harness", "heal", fault="partition", target="a"),
    ]
    late = [*base, r(9.5, "b", "duty_start", duty="importer", token=20)]
    report = check(late, bound_s=3.0, duties={"importer", "never"})
    assert kinds(report) == ["unowned_duty", "unowned_duty"]
    by_duty = {v.detail.split("'")[1]: v.detail for v in report.violations}
    assert "3.500s after it" in by_duty["importer"] and "never" in by_duty["never"]
    assert report.owned_after["importer"] == pytest.approx(3.5)
    in_time = [*base, r(8.0, "b", "duty_start", duty="importer", token=20)]
    assert check(in_time, bound_s=3.0, duties={"importer"}).ok
    # owned again in time but stopped again before the bound: not owned at the bound
    flap = [*in_time, r(8.5, "b", "duty_stop", duty="importer", token=20)]
    assert kinds(check(flap, bound_s=3.0, duties={"importer"})) == ["unowned_duty"]


def test_outage_windows_need_stale_reads_and_no_acknowledged_write() -> None:
    hist = [
        r(10.0, "harness", "fault", fault="store_outage"),
        r(10.05, "a", "write_ack", key="k", value="v", revision=3),  # in flight: grace
        r(11.0, "a", "read", key="k", value="v", revision=3, stale=True, age=1.0),
        r(12.0, "a", "write_refused", key="k", value="w", reason="StoreUnavailable"),
        r(13.0, "b", "read", key="k", value="v", revision=3, stale=False),
        r(14.0, "b", "read", key="k", error="StoreUnavailable"),
        r(15.0, "b", "write_ack", key="k", value="w", revision=4),
        r(20.0, "harness", "heal", fault="store_outage"),
        r(21.0, "a", "read", key="k", value="w", revision=4, stale=False),
        r(21.0, "a", "write_ack", key="k", value="x", revision=5),
    ]
    windows = outage_windows(hist, "store_outage")
    assert windows == [(10.0, 20.0)]
    report = check(hist, bound_s=1.0, outage_windows=windows, outage_grace_s=0.2)
    assert kinds(report) == ["fresh_read_in_outage", "read_failed_in_outage", "ack_in_outage"]
    assert report.stale_reads == 1
    report = check(hist, bound_s=1.0, outage_windows=windows)  # no grace
    assert kinds(report)[0] == "ack_in_outage"


def test_outage_windows_pair_faults_with_heals() -> None:
    hist = [
        r(1.0, "h", "fault", fault="cut"),
        r(1.5, "h", "fault", fault="other"),
        r(2.0, "h", "heal", fault="cut"),
        r(3.0, "h", "heal", fault="cut"),  # a heal without a fault: ignored
        r(4.0, "h", "fault", fault="cut"),
    ]
    assert outage_windows(hist, "cut") == [(1.0, 2.0), (4.0, float("inf"))]


def test_failover_percentiles_per_fault_kind() -> None:
    hist: list[dict[str, Any]] = []
    token = 0
    owner = "a"
    gaps = [0.9, 0.1, 0.5, 0.3, 0.7, 1.0, 0.2, 0.8, 0.4, 0.6]  # kill9: ten, shuffled
    t = 0.0
    for gap in gaps:
        token += 1
        hist.append(r(t, owner, "duty_start", duty="d", token=token))
        hist.append(r(t + 1, "h", "fault", fault="kill9", target=owner))
        owner = "b" if owner == "a" else "a"
        t += 1 + gap
    for gap in (2.5, 2.0):  # sigstop: two, with the duty named in the fault record
        token += 1
        hist.append(r(t, owner, "duty_start", duty="d", token=token))
        hist.append(r(t + 1, "h", "fault", fault="sigstop", target=owner, duties=["d"]))
        hist.append(r(t + 1 + gap - 0.1, owner, "duty_stop", duty="d", token=token))
        owner = "b" if owner == "a" else "a"
        t += 1 + gap
    hist.append(r(t, owner, "duty_start", duty="d", token=token + 1))
    hist.append(r(t + 1, "h", "fault", fault="partition", target=owner))  # never replaced
    report = check(hist, bound_s=100.0, duties={"d"})
    kill9, sigstop, part = (report.failover[k] for k in ("kill9", "sigstop", "partition"))
    assert kill9.count == 10 and kill9.missing == 0
    assert kill9.p50 == pytest.approx(0.5)  # nearest rank: the 5th of 10
    assert kill9.p99 == pytest.approx(1.0)  # the 10th of 10
    assert sorted(kill9.samples) == pytest.approx(sorted(gaps))
    assert sigstop.count == 2
    assert (sigstop.p50, sigstop.p99) == pytest.approx((2.0, 2.5))
    assert part.count == 0 and part.missing == 1
    assert report.faults == {"kill9": 10, "sigstop": 2, "partition": 1}
    assert report.duties_moved == 12


def test_percentile_is_nearest_rank() -> None:
    samples = [float(i) for i in range(100, 0, -1)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_a_store_outage_fault_without_target_counts_any_node() -> None:
    hist = [
        r(1.0, "a", "duty_start", duty="d", token=1),
        r(2.0, "h", "fault", fault="store_outage", duties=["d"]),
        r(2.1, "a", "duty_stop", duty="d", token=1),
        r(3.0, "h", "heal", fault="store_outage"),
        r(3.4, "a", "duty_start", duty="d", token=7),
    ]
    report = check(hist, bound_s=1.0, duties={"d"})
    assert report.ok and report.failover["store_outage"].samples == pytest.approx((1.4,))


# -- the recorder and the loader --------------------------------------------------------------
def test_recorder_writes_json_lines_that_load_back_merged_and_ordered(tmp_path: Path) -> None:
    clock = iter([1.0, 3.0, 5.0])
    with HistoryRecorder(tmp_path / "h" / "a.jsonl", "a", clock=lambda: next(clock)) as a:
        a.duty_start("ticker", 5)
        a.write_ack(KEY, b"bytes\xff", 6, duty="ticker", token=5)
        a.duty_stop("ticker", token=5, reason=None)
    b = HistoryRecorder(tmp_path / "h" / "b.jsonl", "b", clock=lambda: 2.0)
    b.read(KEY, "v", revision=6, stale=True, age=0.5)
    b.applied_revision(6)
    b.fault("kill9", "a", duties=["ticker"])
    b.write_refused(KEY, "w", reason="DutyLost", unknown=True)
    b.heal("kill9")
    b.close()
    with pytest.raises(NotRunning, match="closed"):
        b.record("read")
    recs = load_history([tmp_path / "h"])
    assert [(x.t, x.node, x.kind) for x in recs] == [
        (1.0, "a", "duty_start"), (2.0, "b", "read"), (2.0, "b", "applied_revision"),
        (2.0, "b", "fault"), (2.0, "b", "write_refused"), (2.0, "b", "heal"),
        (3.0, "a", "write_ack"), (5.0, "a", "duty_stop"),
    ]  # fmt: skip
    ack = recs[6]
    assert (ack.duty, ack.token, ack.revision, ack.key) == ("ticker", 5, 6, KEY)
    assert ack.data["value"] == normalize(b"bytes\xff") and isinstance(ack.data["mono"], float)
    assert "reason" not in recs[7].data  # None fields are left out
    assert recs[3].data["duties"] == ["ticker"] and "target" not in recs[5].data
    first = load_history([tmp_path / "h" / "a.jsonl"])[0]
    assert first == Record(1.0, "a", "duty_start", "ticker", token=5)
    report = check(recs, final_state={KEY: b"bytes\xff"}, bound_s=1.0)
    assert report.ok, report.summary()


def test_loader_skips_a_torn_last_line_and_names_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    good = json.dumps(r(1.0, "n", "applied_revision", revision=1))
    path.write_text(good + "\n" + '{"t": 2.0, "node": "n", "ki')
    assert len(load_history([path])) == 1
    path.write_text(good + "\n{not json}\n" + good + "\n")
    with pytest.raises(ValueError, match=r"n\.jsonl:2"):
        load_history([path])


def test_recorder_is_safe_across_threads(tmp_path: Path) -> None:
    rec = HistoryRecorder(tmp_path / "t.jsonl", "t")

    def work(i: int) -> None:
        for n in range(300):
            rec.read(f"k{i}", "x" * 500, revision=n)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rec.close()
    assert len(load_history([tmp_path / "t.jsonl"])) == 1200


def test_checker_on_a_long_history() -> None:
    hist: list[dict[str, Any]] = []
    t, rev = 0.0, 0
    for epoch in range(200):
        node = "abc"[epoch % 3]
        rev += 1
        token = rev
        hist.append(r(t, node, "duty_start", duty="d", token=token))
        for _ in range(100):
            t += 0.01
            rev += 1
            ack = r(t, node, "write_ack", duty="d", token=token, key="k", value=rev, revision=rev)
            hist.append(ack)
            hist.append(r(t, node, "applied_revision", revision=rev))
        hist.append(r(t, "h", "fault", fault="kill9", target=node))
        t += 0.1
    report = check(hist, final_state={"k": rev}, bound_s=1.0)  # speed: benchmarks/unit_timings.py
    assert report.ok, report.summary()
    assert report.failover["kill9"].count == 199 and report.failover["kill9"].missing == 1


def slot(t: float, node: str, s: float, attempt: int = 1) -> dict[str, Any]:
    return r(t, node, "slot_run", schedule="tick", slot=s, token=5, attempt=attempt, every=1.0)


def test_a_schedule_slot_started_twice_is_reported() -> None:
    history = [slot(10.0, "a", 10.0), slot(11.0, "a", 11.0), slot(11.2, "b", 11.0),
               slot(12.0, "b", 12.0)]
    report = check(history, bound_s=1.0)
    assert kinds(report) == ["slot_twice"] and report.slots_run == 3
    retried = [slot(10.0, "a", 10.0), slot(13.0, "b", 10.0, attempt=2)]
    assert check(retried, bound_s=1.0).ok  # a retry (attempt 2) is not a second first run


def test_a_slot_missing_after_the_faults_is_reported_but_not_during_them() -> None:
    history = [
        r(9.5, "harness", "fault", fault="kill9", target="a"),
        slot(10.0, "a", 10.0),  # 11 and 12 fall in the failover window: allowed
        r(12.5, "harness", "heal", fault="kill9", target="a"),
        slot(13.0, "b", 13.0), slot(14.0, "b", 14.0), slot(16.0, "b", 16.0),
        slot(17.0, "b", 17.0),
    ]
    report = check(history, bound_s=0.4)
    assert kinds(report) == ["slot_missed"] and report.violations[0].t == 15.0


def test_a_data_duty_running_long_after_its_document_was_deleted_is_reported() -> None:
    base = [
        r(1.0, "driver", "doc_put", doc="d1"),
        r(1.1, "a", "duty_start", duty="doc:d1", token=5),
        r(5.0, "driver", "doc_delete", doc="d1"),
    ]
    stopped = [*base, r(5.3, "a", "duty_stop", duty="doc:d1", token=5)]
    assert check(stopped, bound_s=1.0).ok
    late = [*base, r(8.0, "a", "duty_stop", duty="doc:d1", token=5)]
    assert kinds(check(late, bound_s=1.0)) == ["data_duty_without_doc"]
    paused = [*base[:2], r(4.0, "h", "fault", fault="pause", target="a"), base[2],
              r(7.5, "h", "heal", fault="pause", target="a"),
              r(8.0, "a", "duty_stop", duty="doc:d1", token=5)]
    assert check(paused, bound_s=1.0).ok  # paused meanwhile: bound after it resumed
    early = [r(0.5, "a", "duty_start", duty="doc:d1", token=5), *base[:1],
             r(2.0, "a", "duty_stop", duty="doc:d1", token=5)]
    assert kinds(check(early, bound_s=1.0)) == ["data_duty_without_doc"]
