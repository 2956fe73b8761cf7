"""Schedule slots and the decision of what a schedule's owner does next.
Pure: no I/O, no clock reads (``now`` is always an argument).

A **slot** is the instant (epoch seconds, UTC) a run is scheduled for:

* ``every=S`` seconds: slots are the multiples of ``S`` since the Unix epoch,
  so every node computes the same slots whatever its start time (``every=600``
  runs at :00, :10, :20 ... UTC);
* ``cron="m h dom mon dow"`` in time zone ``tz``: the instants the cron
  expression names in that zone, computed with cronsim (Debian cron's rules).

**Daylight-saving policy** (Debian cron, as cronsim implements it): a job at a
fixed local time that does not exist (spring forward, ``30 2 * * *`` on the
night 02:00 jumps to 03:00) runs once at the first valid instant after it
(03:00); a fixed local time that happens twice (fall back) runs once, at its
first occurrence. Expressions with ``*`` in the minute or hour field follow
real elapsed time: ``*/15 * * * *`` runs every 15 minutes through both
transitions. ``every=`` schedules ignore time zones.

``jitter=J`` delays each slot's run by a deterministic offset in [0, J) drawn
from the schedule name and slot, so every owner agrees on it and many
schedules on one slot do not all start together.

:func:`decide` is the owner's rule book, given the schedule's record (see
:class:`Record`), the time, and the policy:

1. a record left ``running`` means its run was interrupted (its node died or
   lost the duty: a new owner exists only after the old one stopped, G1);
   with ``retry`` the slot is run again once (attempt 2) unless a later slot
   is already due; otherwise it is recorded as ``interrupted``;
2. due slots are those after ``last_slot`` (or after ``since``, when the
   schedule was first seen) whose run time has come. Only the NEWEST due slot
   can run; older ones were missed and are counted as skipped;
3. the newest due slot runs if it is on time (no more than ``misfire_grace``
   late); if it is late it runs anyway with ``missed="run_once"`` and is
   skipped with ``missed="skip"``;
4. nothing due: a pending manual trigger runs now; else wait for the next slot.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from shoal.errors import InvalidArgument

Missed = Literal["run_once", "skip"]
MISSED: tuple[str, ...] = ("run_once", "skip")
HISTORY = 20  # runs kept in a schedule's record
_MAX_DUE = 10_000  # due slots examined at most (a long outage of a fast schedule)


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule runs. Exactly one of ``cron`` and ``every`` is set."""

    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    jitter: float = 0.0
    misfire_grace: float = 60.0


def check_cron(expr: str, tz: str = "UTC") -> None:
    """Raise ValueError (one clear line) when ``expr`` or ``tz`` is not usable."""
    zone = _zone(tz)
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as exc:
        raise InvalidArgument(
            f"bad cron expression {expr!r}: {exc} — use five fields 'minute hour "
            "day-of-month month day-of-week', e.g. '0 1 * * *'"
        ) from None


def check(timing: Timing) -> Timing:
    """Validate ``timing`` (ValueError naming the bad value); returns it."""
    if (timing.cron is None) == (timing.every is None):
        raise InvalidArgument("a schedule needs exactly one of cron='m h dom mon dow' or every=...")
    if timing.every is not None:
        if not math.isfinite(timing.every) or timing.every < 1:
            raise InvalidArgument(f"every= must be at least 1 second, got {timing.every!r}")
        if timing.tz != "UTC":
            _zone(timing.tz)
    if timing.cron is not None:
        check_cron(timing.cron, timing.tz)
    if not math.isfinite(timing.jitter) or timing.jitter < 0:
        raise InvalidArgument(f"jitter= must be >= 0 seconds, got {timing.jitter!r}")
    if not math.isfinite(timing.misfire_grace) or timing.misfire_grace < 0:
        raise InvalidArgument(f"misfire_grace= must be >= 0 seconds, got {timing.misfire_grace!r}")
    return timing


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            f"unknown time zone {tz!r} — use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


def next_slot(timing: Timing, after: float) -> float:
    """The first slot strictly after ``after`` (epoch seconds)."""
    if timing.every is not None:
        return (math.floor(after / timing.every) + 1) * timing.every
    assert timing.cron is not None
    zone = _zone(timing.tz)
    start = datetime.fromtimestamp(math.floor(after), tz=zone)
    return next(CronSim(timing.cron, start)).timestamp()


def offset(name: str, slot: float, jitter: float) -> float:
    """The deterministic jitter delay of ``slot`` of schedule ``name``, in [0, jitter)."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{name}\0{slot!r}".encode(), digest_size=8).digest()
    return jitter * (int.from_bytes(digest, "big") / 2**64)


def run_at(name: str, timing: Timing, slot: float) -> float:
    """When ``slot`` runs: the slot plus its jitter offset."""
    return slot + offset(name, slot, timing.jitter)


def due(name: str, timing: Timing, after: float, now: float) -> tuple[int, float | None]:
    """How many slots after ``after`` have a run time at or before ``now``, and
    the newest of them (None when none is due)."""
    first = next_slot(timing, after)
    if run_at(name, timing, first) > now:
        return 0, None
    if timing.every is not None:
        every = timing.every
        last = math.floor(now / every) * every
        while last > first and run_at(name, timing, last) > now:
            last -= every
        return round((last - first) / every) + 1, last
    count, slot, newest = 0, first, first
    while run_at(name, timing, slot) <= now:
        count, newest = count + 1, slot
        if count >= _MAX_DUE:  # a long outage of a fast cron: jump to the newest
            assert timing.cron is not None
            end = datetime.fromtimestamp(math.floor(now - timing.jitter), tz=_zone(timing.tz))
            back = next(CronSim(timing.cron, end, reverse=True)).timestamp()
            return count, max(back, newest)
        slot = next_slot(timing, slot)
    return count, newest


@dataclass(frozen=True, slots=True)
class Run:
    """One run (or skipped / interrupted slot) as kept in the record."""

    slot: float | None  # None: a manual run
    node: str
    start: float
    end: float | None
    outcome: str  # ok | failed | timeout | interrupted | skipped | running
    error: str = ""
    attempt: int = 1
    kind: str = "scheduled"  # scheduled | retry | manual
    token: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot, "node": self.node, "start": self.start, "end": self.end,
            "outcome": self.outcome, "error": self.error, "attempt": self.attempt,
            "kind": self.kind, "token": self.token,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Run:
        return Run(
            data.get("slot"), str(data.get("node", "")), float(data.get("start", 0.0)),
            data.get("end"), str(data.get("outcome", "")), str(data.get("error", "")),
            int(data.get("attempt", 1)), str(data.get("kind", "scheduled")),
            int(data.get("token", 0)),
        )


@dataclass(frozen=True, slots=True)
class Record:
    """A schedule's replicated record (document ``shoal.schedules/{name}``)."""

    since: float  # when the schedule was first seen: slots before it never ran
    last_slot: float | None = None  # newest slot claimed (run, retried or skipped)
    current: Run | None = None  # the run in progress (outcome "running")
    runs: tuple[Run, ...] = ()  # newest last, at most HISTORY
    trigger_done: str = ""  # id of the last manual trigger consumed
    counts: dict[str, int] = field(default_factory=dict)  # ok/failed/timeout/...
    lateness: float = 0.0  # of the last run that started, seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since, "last_slot": self.last_slot,
            "current": None if self.current is None else self.current.as_dict(),
            "runs": [r.as_dict() for r in self.runs], "trigger_done": self.trigger_done,
            "counts": dict(self.counts), "lateness": self.lateness,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Record:
        cur = data.get("current")
        return Record(
            float(data.get("since", 0.0)), data.get("last_slot"),
            Run.from_dict(cur) if isinstance(cur, dict) else None,
            tuple(Run.from_dict(r) for r in data.get("runs", []) if isinstance(r, dict)),
            str(data.get("trigger_done", "")),
            {str(k): int(v) for k, v in dict(data.get("counts", {})).items()},
            float(data.get("lateness", 0.0)),
        )

    def with_run(self, run: Run) -> Record:
        """The record with ``run`` appended to the history and counted."""
        counts = dict(self.counts)
        counts[run.outcome] = counts.get(run.outcome, 0) + 1
        return replace(self, runs=(*self.runs, run)[-HISTORY:], counts=counts)

    def with_skipped(self, n: int) -> Record:
        if n <= 0:
            return self
        counts = dict(self.counts)
        counts["skipped"] = counts.get("skipped", 0) + n
        return replace(self, counts=counts)


@dataclass(frozen=True, slots=True)
class Claim:
    """Run ``slot`` now (None: a manual run), as attempt ``attempt``."""

    slot: float | None
    attempt: int
    kind: str
    run_at: float  # when it was due (lateness = now - run_at)
    skipped: int  # older due slots given up
    interrupted: Run | None  # the interrupted run to record, if any
    trigger: str = ""  # manual trigger id consumed


@dataclass(frozen=True, slots=True)
class Settle:
    """Update the record without running: skipped slots, an interrupted run."""

    last_slot: float | None
    skipped: int
    interrupted: Run | None


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do before ``until`` (epoch seconds) unless triggered."""

    until: float


Decision = Claim | Settle | Wait


def decide(
    name: str,
    timing: Timing,
    record: Record,
    now: float,
    *,
    missed: Missed = "run_once",
    retry: bool = True,
    trigger: str = "",
) -> Decision:
    """What the owner of schedule ``name`` does next (see the module rules)."""
    interrupted: Run | None = None
    base = record.last_slot if record.last_slot is not None else record.since
    cur = record.current
    if cur is not None:
        interrupted = replace(cur, outcome="interrupted", end=None)
        if cur.slot is not None:
            base = max(base, cur.slot)
        later = run_at(name, timing, next_slot(timing, base)) <= now
        if retry and cur.attempt < 2 and not later:
            at = cur.start if cur.slot is None else run_at(name, timing, cur.slot)
            kind = "manual" if cur.kind == "manual" else "retry"
            return Claim(cur.slot, cur.attempt + 1, kind, at, 0, interrupted)
    count, newest = due(name, timing, base, now)
    if newest is not None:
        at = run_at(name, timing, newest)
        skipped = count - 1
        if missed == "skip" and now - at > timing.misfire_grace:
            return Settle(newest, skipped + 1, interrupted)
        return Claim(newest, 1, "scheduled", at, skipped, interrupted)
    if trigger and trigger != record.trigger_done:
        return Claim(None, 1, "manual", now, 0, interrupted, trigger)
    if interrupted is not None:
        return Settle(record.last_slot, 0, interrupted)
    return Wait(run_at(name, timing, next_slot(timing, base)))


def slot_time(slot: float | None, tz: str = "UTC") -> str:
    """A slot for humans: ISO 8601 in ``tz`` (``manual`` for a manual run)."""
    if slot is None:
        return "manual"
    return datetime.fromtimestamp(slot, tz=_zone(tz) if tz != "UTC" else UTC).isoformat()


def describe(name: str, data: dict[str, Any], owner: str | None, now: float) -> dict[str, Any]:
    """One schedule for ``shoal schedule list`` and ``GET /schedules``, from its
    record document (which carries its timing): owner, next run, last run,
    lateness, run in progress, counts. Plain JSON-safe data."""
    rec = Record.from_dict(data)
    raw = data.get("timing") if isinstance(data.get("timing"), dict) else {}
    assert isinstance(raw, dict)
    timing = Timing(cron=raw.get("cron"), every=raw.get("every"), tz=str(raw.get("tz", "UTC")))
    next_run: float | None = None
    if (timing.cron is None) != (timing.every is None):
        base = rec.last_slot if rec.last_slot is not None else rec.since
        try:
            next_run = next_slot(timing, max(base, now))
        except (ValueError, StopIteration, CronSimError, InvalidArgument):
            next_run = None  # a record written with a timing this version cannot read
    last = rec.runs[-1] if rec.runs else None
    return {
        "name": name,
        "owner": owner,
        "cron": timing.cron,
        "every": timing.every,
        "tz": timing.tz,
        "next_run": next_run,
        "last_slot": rec.last_slot,
        "last_run": None if last is None else last.as_dict(),
        "running": None if rec.current is None else rec.current.as_dict(),
        "lateness": rec.lateness,
        "counts": dict(rec.counts),
        "runs": [r.as_dict() for r in rec.runs],
    }
