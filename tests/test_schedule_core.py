"""The pure schedule rules (shoal.core.schedule): slots, DST, missed slots, retries."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core.schedule import (
    HISTORY,
    Claim,
    Record,
    Run,
    Settle,
    Timing,
    Wait,
    check,
    check_cron,
    decide,
    describe,
    due,
    next_slot,
    offset,
    run_at,
    slot_time,
)
from shoal.errors import InvalidArgument

BERLIN = ZoneInfo("Europe/Berlin")
T0 = 1_700_000_000.0
EVERY = Timing(every=600)


def local(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, BERLIN)


@given(st.floats(0, 4e9), st.integers(1, 100_000))
def test_every_slots_are_the_next_multiple(after: float, every: int) -> None:
    slot = next_slot(Timing(every=every), after)
    assert slot > after and slot - after <= every and slot % every == 0


@settings(max_examples=60, deadline=None)
@given(st.floats(T0, T0 + 3e8), st.sampled_from(["0 1 * * *", "*/15 * * * *", "30 2 * * 0"]))
def test_cron_next_slot_is_the_first_after(after: float, expr: str) -> None:
    t = Timing(cron=expr, tz="Europe/Berlin")
    slot = next_slot(t, after)
    assert slot > after
    # nothing in between: asking from any earlier point in the gap gives the same slot
    assert next_slot(t, (after + slot) / 2) == slot
    assert next_slot(t, slot - 0.5) == slot


def test_dst_spring_forward_runs_a_missing_local_time_once_at_the_jump() -> None:
    t = Timing(cron="30 2 * * *", tz="Europe/Berlin")
    slot = next_slot(t, datetime(2025, 3, 29, 12, tzinfo=BERLIN).timestamp())
    assert local(slot).isoformat() == "2025-03-30T03:00:00+02:00"  # 02:30 does not exist
    after = next_slot(t, slot)
    assert local(after).isoformat() == "2025-03-31T02:30:00+02:00"


def test_dst_fall_back_runs_a_repeated_local_time_once() -> None:
    t = Timing(cron="30 2 * * *", tz="Europe/Berlin")
    first = next_slot(t, datetime(2025, 10, 25, 12, tzinfo=BERLIN).timestamp())
    assert local(first).isoformat() == "2025-10-26T02:30:00+02:00"  # first occurrence
    second = next_slot(t, first)
    assert local(second).isoformat() == "2025-10-27T02:30:00+01:00"  # not again at +01:00


def test_dst_wildcard_hours_follow_elapsed_time() -> None:
    t = Timing(cron="*/15 * * * *", tz="Europe/Berlin")
    slot = datetime(2025, 10, 26, 1, 0, tzinfo=BERLIN).timestamp()
    gaps = set()
    for _ in range(20):  # through the repeated hour 02:00-03:00
        nxt = next_slot(t, slot)
        gaps.add(nxt - slot)
        slot = nxt
    assert gaps == {900.0}


def test_check_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="bad cron expression '61 \\* \\* \\* \\*'"):
        check(Timing(cron="61 * * * *"))
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        check(Timing(cron="0 1 * * *", tz="Mars/Base"))
    with pytest.raises(ValueError, match="exactly one of"):
        check(Timing(cron="0 1 * * *", every=60))
    with pytest.raises(ValueError, match="at least 1 second"):
        check(Timing(every=0.1))


@given(st.text(min_size=1, max_size=10), st.floats(0, 4e9), st.floats(0.001, 1e4))
def test_jitter_is_deterministic_and_bounded(name: str, slot: float, jitter: float) -> None:
    off = offset(name, slot, jitter)
    assert 0 <= off < jitter and off == offset(name, slot, jitter)


def test_due_counts_slots_and_names_the_newest() -> None:
    assert due("s", EVERY, 1200, 1799) == (0, None)
    assert due("s", EVERY, 1200, 1800) == (1, 1800)
    assert due("s", EVERY, 1200, 1200 + 600 * 1000 + 5) == (1000, 1200 + 600 * 1000)
    count, newest = due("s", Timing(cron="* * * * *"), T0, T0 + 86400 * 30)
    assert count >= 10_000 and newest is not None and T0 + 86400 * 30 - newest < 60


def test_steady_state_waits_then_claims_the_slot_on_time() -> None:
    rec = Record(since=1000, last_slot=1200)
    assert decide("s", EVERY, rec, 1500) == Wait(1800)
    d = decide("s", EVERY, rec, 1800.01)
    assert isinstance(d, Claim) and (d.slot, d.attempt, d.skipped) == (1800, 1, 0)


def test_a_new_schedule_never_runs_slots_before_it_was_seen() -> None:
    assert decide("s", EVERY, Record(since=1700), 1750) == Wait(1800)


def test_missed_run_once_runs_only_the_newest_missed_slot() -> None:
    d = decide("s", EVERY, Record(since=0, last_slot=1200), 1200 + 600 * 5 + 100)
    assert isinstance(d, Claim) and d.slot == 4200 and d.skipped == 4


def test_missed_skip_skips_late_slots_but_runs_one_on_time() -> None:
    rec = Record(since=0, last_slot=1200)
    late = decide("s", EVERY, rec, 1800 + 61, missed="skip")
    assert late == Settle(1800, 1, None)
    on_time = decide("s", EVERY, rec, 2400 + 10, missed="skip")
    assert isinstance(on_time, Claim) and on_time.slot == 2400 and on_time.skipped == 1


def interrupted(slot: float, attempt: int = 1) -> Record:
    cur = Run(slot, "a", slot + 0.1, None, "running", attempt=attempt, token=7)
    return Record(since=0, last_slot=slot, current=cur)


def test_interrupted_run_is_retried_once_with_retry() -> None:
    d = decide("s", EVERY, interrupted(1200), 1210, retry=True)
    assert isinstance(d, Claim) and (d.slot, d.attempt, d.kind) == (1200, 2, "retry")
    assert d.interrupted is not None and d.interrupted.outcome == "interrupted"
    again = decide("s", EVERY, interrupted(1200, attempt=2), 1210, retry=True)
    assert isinstance(again, Settle) and again.interrupted is not None


def test_interrupted_run_is_not_rerun_without_retry() -> None:
    d = decide("s", EVERY, interrupted(1200), 1210, retry=False)
    assert isinstance(d, Settle) and d.last_slot == 1200 and d.interrupted is not None
    settled = replace(interrupted(1200), current=None)
    assert decide("s", EVERY, settled, 1210, retry=False) == Wait(1800)


def test_a_later_due_slot_wins_over_a_retry() -> None:
    d = decide("s", EVERY, interrupted(1200), 1805, retry=True)
    assert isinstance(d, Claim) and d.slot == 1800 and d.attempt == 1
    assert d.interrupted is not None and d.interrupted.slot == 1200


def test_manual_trigger_runs_once() -> None:
    rec = Record(since=0, last_slot=1200)
    d = decide("s", EVERY, rec, 1300, trigger="t1")
    assert isinstance(d, Claim) and d.slot is None and d.kind == "manual" and d.trigger == "t1"
    done = replace(rec, trigger_done="t1")
    assert decide("s", EVERY, done, 1300, trigger="t1") == Wait(1800)


def test_record_keeps_the_last_runs_and_counts_them() -> None:
    rec = Record(since=0)
    for i in range(HISTORY + 5):
        rec = rec.with_run(Run(float(i), "a", i, i + 1, "ok" if i % 2 else "failed"))
    assert len(rec.runs) == HISTORY and rec.runs[-1].slot == HISTORY + 4
    assert rec.counts == {"ok": 12, "failed": 13}
    assert Record.from_dict(rec.as_dict()) == rec


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.1, 2000), min_size=1, max_size=30),
    st.sampled_from(["run_once", "skip"]),
    st.booleans(),
    st.floats(0, 300),
)
def test_no_slot_is_ever_claimed_twice(
    steps: list[float], missed: str, retry: bool, jitter: float
) -> None:
    """Follow decide() through time, crashing every third run: a slot is claimed
    at most once, plus one retry when ``retry``."""
    timing = Timing(every=600, jitter=jitter)
    rec, now = Record(since=T0), T0
    claims: dict[float | None, int] = {}
    for i, step in enumerate(steps):
        now += step
        d = decide("s", timing, rec, now, missed=missed, retry=retry)  # type: ignore[arg-type]
        if isinstance(d, Wait):
            assert d.until > now
            continue
        if isinstance(d, Settle):
            rec = replace(rec.with_skipped(d.skipped), last_slot=d.last_slot, current=None)
            continue
        assert d.slot is not None and run_at("s", timing, d.slot) <= now
        claims[d.slot] = claims.get(d.slot, 0) + 1
        run = Run(d.slot, "a", now, None, "running", attempt=d.attempt)
        rec = replace(rec, last_slot=d.slot, current=run)
        if i % 3 != 2:  # completes; else crashes and stays "running"
            rec = replace(rec, current=None).with_run(replace(run, outcome="ok"))
    assert all(n <= (2 if retry else 1) for n in claims.values()), claims


# -- the record's wire form, and what `shoal schedule list` shows (mutation run) --
FULL_RUN = Run(slot=1_700_000_060.0, node="n2", start=1_700_000_060.25,
               end=1_700_000_061.5, outcome="failed", error="boom", attempt=2,
               kind="retry", token=41)


def test_a_run_and_a_record_survive_their_wire_form_exactly() -> None:
    assert FULL_RUN.as_dict() == {
        "slot": 1_700_000_060.0, "node": "n2", "start": 1_700_000_060.25,
        "end": 1_700_000_061.5, "outcome": "failed", "error": "boom", "attempt": 2,
        "kind": "retry", "token": 41,
    }
    assert Run.from_dict(FULL_RUN.as_dict()) == FULL_RUN
    rec = Record(since=1_699_999_000.0, last_slot=1_700_000_060.0,
                 current=replace(FULL_RUN, outcome="running", end=None),
                 runs=(FULL_RUN, replace(FULL_RUN, outcome="ok")), trigger_done="t-7",
                 counts={"ok": 3, "failed": 1}, lateness=0.25)
    assert Record.from_dict(rec.as_dict()) == rec
    assert rec.as_dict()["current"] == replace(FULL_RUN, outcome="running", end=None).as_dict()
    assert rec.as_dict()["counts"] == {"ok": 3, "failed": 1}


def test_missing_fields_read_as_their_defaults() -> None:
    assert Run.from_dict({}) == Run(None, "", 0.0, None, "", "", 1, "scheduled", 0)
    assert Record.from_dict({}) == Record(since=0.0)
    # junk in the lists is skipped, numbers given as strings are read as numbers
    got = Record.from_dict({"since": "5", "runs": [FULL_RUN.as_dict(), "junk"],
                            "current": "junk", "counts": {"ok": "2"}, "lateness": "0.5"})
    assert got == Record(since=5.0, runs=(FULL_RUN,), counts={"ok": 2}, lateness=0.5)


def test_skipped_slots_are_counted_and_nothing_else_changes() -> None:
    rec = Record(since=1.0, counts={"ok": 1, "skipped": 2})
    assert rec.with_skipped(3) == replace(rec, counts={"ok": 1, "skipped": 5})
    assert rec.with_skipped(0) is rec and rec.with_skipped(-1) is rec
    assert Record(since=1.0).with_skipped(1).counts == {"skipped": 1}


def test_slot_times_for_humans() -> None:
    assert slot_time(None) == "manual"
    assert slot_time(0.0) == "1970-01-01T00:00:00+00:00"
    assert slot_time(1_700_000_000.0, "Europe/Berlin") == "2023-11-14T23:13:20+01:00"


def test_describe_shows_owner_next_and_last_run() -> None:
    rec = Record(since=1_700_000_000.0, last_slot=1_700_000_060.0,
                 current=replace(FULL_RUN, outcome="running", end=None),
                 runs=(FULL_RUN,), counts={"failed": 1}, lateness=0.25)
    data = {**rec.as_dict(), "timing": {"every": 60.0, "tz": "UTC"}}
    shown = describe("cleanup", data, "n2", now=1_700_000_070.0)
    assert shown == {
        "name": "cleanup", "owner": "n2", "cron": None, "every": 60.0, "tz": "UTC",
        "next_run": 1_700_000_100.0, "last_slot": 1_700_000_060.0,  # every 60 s from 0
        "last_run": FULL_RUN.as_dict(),
        "running": replace(FULL_RUN, outcome="running", end=None).as_dict(),
        "lateness": 0.25, "counts": {"failed": 1}, "runs": [FULL_RUN.as_dict()],
    }
    cron = describe("nightly", {**Record(since=1_700_000_000.0).as_dict(),
                                "timing": {"cron": "0 1 * * *"}}, None, now=1_700_000_000.0)
    assert cron["next_run"] == 1_700_010_000.0  # 2023-11-15 01:00 UTC
    assert (cron["owner"], cron["cron"], cron["last_run"], cron["running"]) == (
        None, "0 1 * * *", None, None)
    bad = describe("odd", {"since": 1.0, "timing": {}}, None, now=2.0)
    assert bad["next_run"] is None and bad["runs"] == [] and bad["counts"] == {}


def test_bad_timings_are_named_in_one_line() -> None:
    cases = [
        (Timing(), "exactly one of cron="),
        (Timing(cron="0 1 * * *", every=60.0), "exactly one of cron="),
        (Timing(every=0.5), "every= must be at least 1 second, got 0.5"),
        (Timing(every=float("nan")), "every= must be at least 1 second, got nan"),
        (Timing(every=60.0, jitter=-1.0), "jitter= must be >= 0 seconds, got -1.0"),
        (Timing(every=60.0, misfire_grace=float("inf")),
         "misfire_grace= must be >= 0 seconds, got inf"),
        (Timing(cron="0 25 * * *"), "bad cron expression '0 25 * * *'"),
    ]
    for timing, message in cases:
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            check(timing)
    assert check(Timing(every=1.0, jitter=0.0, misfire_grace=0.0)) == Timing(
        every=1.0, jitter=0.0, misfire_grace=0.0)
    with pytest.raises(InvalidArgument, match=re.escape("e.g. '0 1 * * *'")):
        check_cron("nope")


# -- exact decisions on every path (the mutation run showed fields unchecked) -----------
JIT = Timing(every=600, jitter=30, misfire_grace=60)


def at(slot: float, timing: Timing = JIT, name: str = "s") -> float:
    return slot + offset(name, slot, timing.jitter)


def running(slot: float | None, attempt: int = 1, kind: str = "scheduled") -> Record:
    # ``end`` is set on purpose: the interrupted copy must clear it
    cur = Run(slot, "a", 1250.0, 1251.0, "running", attempt=attempt, kind=kind, token=7)
    return Record(since=0, last_slot=1200, current=cur)


def cut(rec: Record) -> Run:
    assert rec.current is not None
    return replace(rec.current, outcome="interrupted", end=None)


def test_the_jitter_offset_depends_on_name_and_slot_and_spans_the_jitter() -> None:
    assert offset("s", 1800, 0) == 0.0
    assert 0 < offset("s", 1800, 0.5) < 0.5  # a jitter under a second still jitters
    assert offset("s", 1800, 30) != offset("t", 1800, 30)
    assert offset("s", 1800, 30) != offset("s", 2400, 30)
    spread = [offset("s", 600.0 * i, 1.0) for i in range(400)]
    assert all(0 <= x < 1 for x in spread) and max(spread) > 0.9 and min(spread) < 0.1
    assert run_at("s", JIT, 1800) == 1800 + offset("s", 1800, 30) != run_at("t", JIT, 1800)


def test_each_decision_is_exact() -> None:
    rec = Record(since=0, last_slot=1200)
    assert decide("s", JIT, rec, at(1800)) == Claim(1800, 1, "scheduled", at(1800), 0, None)
    assert decide("s", JIT, rec, at(1800) - 0.001) == Wait(at(1800))
    # a retry of an interrupted scheduled run: same slot, when it was due
    r = running(1200)
    assert decide("s", JIT, r, 1300) == Claim(1200, 2, "retry", at(1200), 0, cut(r))
    # retry is the default; so is running a late missed slot once
    assert decide("s", JIT, r, 1300) == decide("s", JIT, r, 1300, retry=True)
    late = at(1800) + 500
    assert decide("s", JIT, rec, late) == Claim(1800, 1, "scheduled", at(1800), 0, None)
    # an interrupted manual run is retried as a manual run, timed from its start
    m = running(None, kind="manual")
    assert decide("s", JIT, m, 1300) == Claim(None, 2, "manual", 1250.0, 0, cut(m))
    # the second attempt is not retried: settled with nothing skipped
    r2 = running(1200, attempt=2)
    assert decide("s", JIT, r2, 1300) == Settle(1200, 0, cut(r2))
    # a manual trigger, alone or after an interrupted run
    manual = Claim(None, 1, "manual", 1300, 0, None, "t1")
    assert decide("s", JIT, rec, 1300, trigger="t1") == manual
    assert decide("s", JIT, r2, 1300, trigger="t1") == Claim(
        None, 1, "manual", 1300, 0, cut(r2), "t1"
    )


def test_boundaries_of_retry_and_misfire() -> None:
    r = running(1200)
    # the next slot due exactly now wins over the retry
    now = at(1800)
    assert decide("s", JIT, r, now) == Claim(1800, 1, "scheduled", now, 0, cut(r))
    # skip: exactly misfire_grace late still runs; later is settled as skipped
    rec = Record(since=0, last_slot=1200)
    on_edge = at(1800) + JIT.misfire_grace
    assert decide("s", JIT, rec, on_edge, missed="skip") == Claim(
        1800, 1, "scheduled", at(1800), 0, None
    )
    r2 = running(1200, attempt=2)
    assert decide("s", JIT, r2, on_edge + 1, missed="skip") == Settle(1800, 1, cut(r2))


def test_due_counts_exactly_with_jitter_and_on_the_edge() -> None:
    assert due("s", EVERY, 1200, 2400) == (2, 2400)  # both run times are <= now
    assert due("s", JIT, 1200, at(2400)) == (2, 2400)
    assert due("s", JIT, 1200, at(2400) - 0.001) == (1, 1800)
    cron = Timing(cron="*/15 * * * *", jitter=40)
    after = T0
    slots = [next_slot(cron, after)]
    while len(slots) < 6:
        slots.append(next_slot(cron, slots[-1]))
    now = at(slots[4], cron)
    assert due("s", cron, after, now) == (5, slots[4])
    assert due("s", cron, after, now - 0.001) == (4, slots[3])
    assert due("t", cron, after, now)[0] in (4, 5, 6)  # another name, other offsets


def test_a_long_outage_of_a_fast_cron_jumps_to_the_newest_slot_in_its_zone() -> None:
    timing = Timing(cron="*/2 * * * *", tz="Europe/Berlin", jitter=20)
    now = T0 + 86400 * 40 + 37
    count, newest = due("s", timing, T0, now)
    # the true newest: the last slot whose run time is at or before now
    slot, best = next_slot(timing, now - 600), None
    while at(slot, timing) <= now:
        best, slot = slot, next_slot(timing, slot)
    assert count >= 10_000 and newest == best
    # a cron that only fires at a local time: the jump must use the zone
    local_cron = Timing(cron="* 3 * * *", tz="America/New_York")
    c, n = due("s", local_cron, T0, T0 + 86400 * 200)
    assert c >= 10_000 and n is not None and n <= T0 + 86400 * 200
    assert datetime.fromtimestamp(n, ZoneInfo("America/New_York")).hour == 3


def test_every_with_a_time_zone_checks_the_zone() -> None:
    with pytest.raises(InvalidArgument, match="Mars/Olympus"):
        check(Timing(every=60, tz="Mars/Olympus"))
    assert check(Timing(every=60, tz="Europe/Berlin")).tz == "Europe/Berlin"


def test_a_cron_is_checked_in_its_zone() -> None:
    with pytest.raises(InvalidArgument, match="Mars/Olympus"):
        check_cron("0 1 * * *", "Mars/Olympus")
    check_cron("30 2 * * *", "Europe/Berlin")  # a time that DST skips once a year is fine


def test_describe_reads_the_zone_the_newest_slot_and_bad_timings() -> None:
    berlin = describe("nightly", {**Record(since=1_700_000_000.0).as_dict(),
                                  "timing": {"cron": "0 1 * * *", "tz": "Europe/Berlin"}},
                      None, now=1_700_000_000.0)
    assert berlin["tz"] == "Europe/Berlin"
    assert berlin["next_run"] == 1_700_006_400.0  # 2023-11-15 01:00 in Berlin = 00:00 UTC
    # the next run counts from the last slot when that is ahead of now (a clock behind)
    ahead = describe("s", {**Record(since=0.0, last_slot=1200.0).as_dict(),
                           "timing": {"every": 600.0}}, None, now=100.0)
    assert ahead["next_run"] == 1800.0
    assert describe("s", {"since": 1.0}, None, now=2.0)["next_run"] is None  # no timing
    broken = describe("s", {"since": 1.0, "timing": {"cron": "61 * * * *"}}, None, now=2.0)
    assert broken["next_run"] is None and broken["cron"] == "61 * * * *"
    mars = describe("s", {"since": 1.0, "timing": {"cron": "0 1 * * *", "tz": "Mars/Olympus"}},
                    None, now=2.0)
    assert mars["next_run"] is None and mars["tz"] == "Mars/Olympus"
