"""A recorded history of a cluster run, and a checker of the guarantees over it.

Each node process and the harness appends JSON lines to its own file (a
:class:`HistoryRecorder`): ``{"t": wall time, "mono": monotonic, "node": ..., "kind": ...}``
plus the fields of the kind -- ``duty_start`` / ``duty_stop`` (duty, token, reason),
``write_ack`` (key, value, revision; duty and token for a write through a duty; value
None is a delete), ``write_refused`` (key, value, reason, duty, token; ``unknown`` when
the write may have landed), ``read`` (key, value, revision, stale, age, error),
``applied_revision`` (revision), ``fault`` / ``heal`` (fault: its kind such as "kill9",
"sigstop" or "partition"; target: a node; duties: the duties hit, default the target's).
Other fields are kept and ignored. :func:`check` is pure (no clock, no file).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from shoal.errors import InvalidArgument, NotRunning
from shoal.testing.data_check import check_data_duties
from shoal.testing.schedule_check import check_slots

__all__ = ["DEATH_FAULTS", "FailoverStats", "HistoryRecorder", "Record", "Report", "Violation"]
__all__ += ["check", "load_history", "normalize", "outage_windows", "percentile"]

DEATH_FAULTS = frozenset({"kill9", "kill", "crash"})  # the target's duties end at the fault
_INF = math.inf


def normalize(value: Any) -> Any:
    """A value as recorded: bytes become text (utf-8; other bytes escaped)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value


@dataclass(frozen=True)
class Record:
    """One line of a history (all of it in ``data``); ``seq`` orders equal ``t``s."""

    t: float
    node: str
    kind: str
    duty: str | None = None
    key: str | None = None
    token: int | None = None
    revision: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    seq: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], seq: int = 0) -> Record:
        tok, rev = (None if raw.get(k) is None else int(raw[k]) for k in ("token", "revision"))
        return cls(float(raw["t"]), str(raw.get("node", "")), str(raw["kind"]), raw.get("duty"),
                   raw.get("key"), tok, rev, raw, seq)  # fmt: skip


History: TypeAlias = Iterable[Record | Mapping[str, Any]]  # records, or the dicts of them


class HistoryRecorder:
    """Appends the records of one node (or of the harness) to ``path``, each in one
    ``write(2)`` of one line (``O_APPEND``, no buffer): ``kill -9`` loses no recorded line
    and threads may share it. One file per process; :func:`load_history` merges them.
    The methods take the fields of their kind (module doc), drop None ones, return the
    record."""

    def __init__(
        self, path: str | Path, node: str, *, clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path, self.node, self._clock, self._monotonic = Path(path), node, clock, monotonic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        if self._fd is None:
            raise NotRunning(f"history recorder {self.path} is closed")
        rec = {"t": self._clock(), "mono": self._monotonic(), "node": self.node, "kind": kind}
        rec.update((k, normalize(v)) for k, v in fields.items() if v is not None)
        os.write(self._fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())
        return rec

    def duty_start(self, duty: str, token: int, **fields: Any) -> dict[str, Any]:
        return self.record("duty_start", duty=duty, token=token, **fields)
    def duty_stop(self, duty: str, **fields: Any) -> dict[str, Any]:
        return self.record("duty_stop", duty=duty, **fields)
    def write_ack(self, key: str, value: Any, revision: int, **fields: Any) -> dict[str, Any]:
        return self.record("write_ack", key=key, value=value, revision=revision, **fields)
    def write_refused(self, key: str, value: Any, **fields: Any) -> dict[str, Any]:
        return self.record("write_refused", key=key, value=value, **fields)
    def read(self, key: str, value: Any, *, stale: bool = False, **fields: Any) -> dict[str, Any]:
        return self.record("read", key=key, value=value, stale=stale, **fields)
    def applied_revision(self, revision: int, **fields: Any) -> dict[str, Any]:
        return self.record("applied_revision", revision=revision, **fields)
    def fault(self, fault: str, target: str | None = None, **fields: Any) -> dict[str, Any]:
        return self.record("fault", fault=fault, target=target, **fields)
    def heal(self, fault: str, target: str | None = None, **fields: Any) -> dict[str, Any]:
        return self.record("heal", fault=fault, target=target, **fields)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HistoryRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_history(paths: Iterable[str | Path]) -> list[Record]:
    """The records of the files (a directory: its ``*.jsonl``), by ``t``. A torn last
    line (killed mid-write) is skipped; another bad line is an error naming it."""
    records: list[Record] = []
    found = [sorted(p.glob("*.jsonl")) if p.is_dir() else [p] for p in map(Path, paths)]
    for path in itertools.chain.from_iterable(found):
        lines = path.read_text(errors="surrogateescape").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                if line.strip():
                    records.append(Record.from_dict(json.loads(line), len(records)))
            except (ValueError, KeyError, TypeError) as exc:
                if number < len(lines) or line.rstrip().endswith("}"):
                    raise InvalidArgument(f"{path}:{number}: bad history record: {exc}") from exc
    return sorted(records, key=lambda r: (r.t, r.seq))


def _records(history: History) -> list[Record]:
    recs = [h if isinstance(h, Record) else Record.from_dict(h, i) for i, h in enumerate(history)]
    return sorted(recs, key=lambda r: (r.t, r.seq))


def outage_windows(history: History, fault: str) -> list[tuple[float, float]]:
    """``(t of a fault of kind fault, t of its next heal)`` pairs (never healed: to inf)."""
    windows: list[tuple[float, float]] = []
    for rec in (r for r in _records(history) if r.data.get("fault") == fault):
        if rec.kind == "fault" and (not windows or windows[-1][1] < _INF):
            windows.append((rec.t, _INF))
        elif rec.kind == "heal" and windows and windows[-1][1] == _INF:
            windows[-1] = (windows[-1][0], rec.t)
    return windows


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest rank: the least sample with ``pct`` % of the samples at or below it."""
    if not samples:
        return math.nan
    return sorted(samples)[max(0, math.ceil(pct / 100 * len(samples)) - 1)]


@dataclass(frozen=True)
class Violation:
    kind: str  # see check()
    detail: str
    t: float | None = None


@dataclass(frozen=True)
class FailoverStats:
    """Seconds from a fault to the next start elsewhere of each duty it hit (or ``missing``)."""

    samples: tuple[float, ...]
    missing: int
    count: int
    p50: float
    p99: float


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)  # fault kind -> count
    failover: dict[str, FailoverStats] = field(default_factory=dict)  # by fault kind
    duties_moved: int = 0  # duty starts on a node other than the previous owner
    writes_acknowledged: int = 0
    writes_refused: int = 0
    writes_lost: int = 0
    overlaps_fenced: int = 0  # two owners at once, the older one's writes all refused
    stale_reads: int = 0
    owned_after: dict[str, float] = field(default_factory=dict)  # G3: s after the last mark
    slots_run: int = 0  # schedule slots started (shoal.testing.schedule_check)
    documents_written: int = 0  # documents of data duties (shoal.testing.data_check)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, kind: str, detail: str, t: float | None = None) -> None:
        self.violations.append(Violation(kind, detail, t))

    def summary(self) -> str:
        lines = [f"{k}: {v}" for k, v in vars(self).items() if k not in ("violations", "failover")]
        lines += [f"failover {k}: n={f.count} p50={f.p50:.3f}s p99={f.p99:.3f}s missing="
                  f"{f.missing}" for k, f in self.failover.items()]
        return "\n".join(lines + [f"VIOLATION {v.kind}: {v.detail}" for v in self.violations])


@dataclass(frozen=True)
class _Owned:
    node: str
    token: int | None
    start: float
    end: float  # its duty_stop, the node's death (a kill fault), its next start, or +inf


def _ownerships(recs: Sequence[Record]) -> dict[str, list[_Owned]]:
    """Per duty, every span of ownership by one node, sorted by start."""
    deaths: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        if r.kind == "fault" and (r.data.get("fault") in DEATH_FAULTS or r.data.get("dead")):
            deaths[str(r.data.get("target"))].append(r.t)
    started: dict[tuple[str, str], Record] = {}
    out: dict[str, list[_Owned]] = defaultdict(list)

    def close(start: Record, duty: str, end: float) -> None:
        died = deaths.get(start.node, [])
        i = bisect_left(died, start.t)
        out[duty].append(_Owned(start.node, start.token, start.t, min([end, *died[i : i + 1]])))

    for r in recs:
        if r.kind in ("duty_start", "duty_stop") and r.duty is not None:
            if (prev := started.pop((r.node, r.duty), None)) is not None:
                close(prev, r.duty, r.t)
            if r.kind == "duty_start":
                started[(r.node, r.duty)] = r
    for (_, duty), prev in started.items():
        close(prev, duty, _INF)
    for spans in out.values():
        spans.sort(key=lambda o: (o.start, o.token or 0))
    return out


def _owned_at(spans: Sequence[_Owned], t: float) -> list[_Owned]:
    return [o for o in spans if o.start <= t < o.end]


def _check_owners(recs: Sequence[Record], owned: Mapping[str, list[_Owned]], rep: Report) -> None:
    """G1/G2 (see :func:`check`)."""
    acks: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in recs:
        if r.kind == "write_ack" and r.duty is not None:
            acks[(r.node, r.duty)].append(r)
    flagged: set[int] = set()
    for duty, spans in owned.items():
        for i, old in enumerate(spans):
            for new in spans[i + 1 :]:
                if new.start >= old.end:
                    break  # sorted by start: no later span overlaps ``old`` either
                lo, hi = new.start, min(old.end, new.end)
                mine = acks.get((old.node, duty), [])
                times = [a.t for a in mine]
                bad = [a for a in mine[bisect_left(times, lo) : bisect_right(times, hi)]
                       if a.token in (None, old.token) and (a.revision or _INF) > (new.token or 0)]
                flagged.update(id(a) for a in bad)
                pair = f"duty {duty!r}: {old.node} (token {old.token}) and {new.node} (token "
                pair += f"{new.token}) both owned it from t={lo:.3f} to {hi:.3f}"
                if bad:
                    revs = [a.revision for a in bad]
                    rep.add("double_owner", f"{pair}; {old.node}'s writes acked then: {revs}", lo)
                else:
                    rep.overlaps_fenced += 1
    tokens = {d: sorted(o.token for o in s if o.token is not None) for d, s in owned.items()}
    for (node, duty), mine in acks.items():
        for a in mine:
            toks = tokens.get(duty, [])
            j = bisect_right(toks, a.token or 0)
            if id(a) in flagged or a.token is None or a.revision is None or j == len(toks):
                continue
            if toks[j] < a.revision:
                rep.add("unfenced_write", f"duty {duty!r}: {node}'s write of {a.key!r} "
                        f"with token {a.token} acked at revision {a.revision}, after token "
                        f"{toks[j]} went to a newer owner", a.t)


def _check_state(recs: Sequence[Record], final_state: Mapping[str, Any] | None,
                 final_revisions: Mapping[str, int] | None, rep: Report,
                 outages: Sequence[tuple[float, float]], grace: float) -> None:  # fmt: skip
    """G4 and G5 (see :func:`check`)."""
    by_key: dict[str, list[Record]] = defaultdict(list)
    unknown: dict[str, list[Record]] = defaultdict(list)
    applied: dict[str, Record] = {}
    for r in recs:
        if r.kind in ("write_ack", "read") and any(a + grace <= r.t <= b for a, b in outages):
            what = f"{r.node} at t={r.t:.3f} while the store was out: {r.key!r}"
            if r.kind == "write_ack":
                rep.add("ack_in_outage", f"{what} write acked (revision {r.revision})", r.t)
            elif r.data.get("error"):
                rep.add("read_failed_in_outage", f"{what} read failed: {r.data.get('error')}", r.t)
            elif not r.data.get("stale"):
                rep.add("fresh_read_in_outage", f"{what} read not marked stale", r.t)
        if r.kind == "write_ack" and r.key is not None:
            by_key[r.key].append(r)
        elif r.kind == "write_refused" and r.data.get("unknown") and r.key is not None:
            unknown[r.key].append(r)
        elif r.kind == "applied_revision" and r.revision is not None:
            last = applied.get(r.node)
            if last is not None and r.revision < (last.revision or 0):
                rep.add("revision_regressed", f"node {r.node} applied revision {r.revision} "
                        f"at t={r.t:.3f} after {last.revision} at t={last.t:.3f}", r.t)
            else:
                applied[r.node] = r
    for key, writes in by_key.items() if final_state is not None else ():
        if all(w.revision is not None for w in writes):  # else: in time order
            writes = sorted(writes, key=lambda w: (w.revision or 0, w.t))
        last_ack, final = writes[-1], normalize((final_state or {}).get(key))
        later = [u for u in unknown.get(key, []) if u.t >= last_ack.t]
        allowed = [normalize(w.data.get("value")) for w in (last_ack, *later)]
        if final not in allowed:
            rep.writes_lost += 1
            rep.add("lost_write", f"key {key!r}: {last_ack.node}'s write of "
                    f"{last_ack.data.get('value')!r} acked at revision {last_ack.revision} "
                    f"(t={last_ack.t:.3f}); the final value is {final!r}", last_ack.t)
    if final_revisions:
        revs = {n: int(r) for n, r in sorted(final_revisions.items())}
        top = max((w.revision or 0 for ws in by_key.values() for w in ws), default=0)
        if len(set(revs.values())) > 1 or min(revs.values()) < top:
            rep.add("not_converged", f"final revisions {revs}; last acked write revision {top}")


def _stats(recs: Sequence[Record], owned: Mapping[str, list[_Owned]], rep: Report) -> None:
    starts: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        if r.kind == "duty_start" and r.duty is not None:
            starts[r.duty].append(r)
        rep.writes_acknowledged += r.kind == "write_ack"
        rep.writes_refused += r.kind == "write_refused"
        rep.stale_reads += r.kind == "read" and bool(r.data.get("stale"))
    for seq in starts.values():
        rep.duties_moved += sum(a.node != b.node for a, b in itertools.pairwise(seq))
    times = {d: [s.t for s in seq] for d, seq in starts.items()}
    samples: dict[str, list[float]] = defaultdict(list)
    missing: Counter[str] = Counter()
    faults = [r for r in recs if r.kind == "fault"]
    rep.faults = dict(Counter(str(f.data.get("fault")) for f in faults))
    for f in faults:
        kind, target, hit = str(f.data.get("fault")), f.data.get("target"), f.data.get("duties")
        if hit is None:  # the target's duties when the fault hit (a death ends them at f.t)
            hit = [d for d, s in owned.items() if any(o.node == target and o.start <= f.t <= o.end
                                                      for o in s)]  # fmt: skip
        for duty in hit:
            later = starts.get(duty, [])[bisect_right(times.get(duty, []), f.t) :]
            nxt = next((s for s in later if s.node != target), None)
            if nxt is None:
                missing[kind] += 1
            else:
                samples[kind].append(nxt.t - f.t)
    for kind in sorted(set(samples) | set(missing)):
        got = samples[kind]
        rep.failover[kind] = FailoverStats(
            tuple(got), missing[kind], len(got), percentile(got, 50), percentile(got, 99)
        )


def check(
    history: History, *, final_state: Mapping[str, Any] | None = None,
    final_revisions: Mapping[str, int] | None = None, bound_s: float,
    duties: Iterable[str] = (), outage_windows: Sequence[tuple[float, float]] = (),
    outage_grace_s: float = 0.0,
) -> Report:
    """Check a history (records or their dicts) against G1-G5. Violation kinds:

    * G1/G2 ``double_owner``: two nodes owned a duty at overlapping wall times and the
      older one had a write acked in the overlap that the store did not order before the
      newer token (its revision is above it, or unknown); fenced overlaps are counted.
      ``unfenced_write``: a write of token T acked at a revision above a newer token.
    * G4 ``lost_write`` (given ``final_state``): a key's final value is neither its last
      acked value (by revision) nor that of a later write of unknown outcome;
      ``revision_regressed``: a node's applied revision went back; ``not_converged``
      (given ``final_revisions``): nodes at different revisions, or below an acked write.
    * G3 ``unowned_duty``: a duty of ``duties`` has no owner (a duty_start without a later
      duty_stop or death) ``bound_s`` after the last fault/heal record (else the first
      record); so keep nodes running past it. ``Report.owned_after``: first owned, s.
    * schedules (:mod:`shoal.testing.schedule_check`): ``slot_twice``, ``slot_missed``;
      data duties (:mod:`shoal.testing.data_check`): ``data_duty_without_doc``.
    * G5, for records in an ``outage_windows`` entry, ``outage_grace_s`` after its start:
      ``ack_in_outage``, ``read_failed_in_outage``, ``fresh_read_in_outage``.
    """
    recs = _records(history)
    rep = Report()
    owned = _ownerships(recs)
    _check_owners(recs, owned, rep)
    _check_state(recs, final_state, final_revisions, rep, outage_windows, outage_grace_s)
    _stats(recs, owned, rep)
    marks = [r.t for r in recs if r.kind in ("fault", "heal")]
    since = max(marks) if marks else (recs[0].t if recs else 0.0)
    rep.slots_run = check_slots(recs, since, bound_s, rep.add)
    rep.documents_written = check_data_duties(recs, owned, bound_s, rep.add)
    for duty in sorted(set(duties)):
        spans = owned.get(duty, [])
        first = min((max(o.start, since) for o in spans if o.end > since), default=_INF)
        rep.owned_after[duty] = first - since
        if not _owned_at(spans, since + bound_s):
            when = "never" if first == _INF else f"{first - since:.3f}s after it"
            rep.add("unowned_duty", f"duty {duty!r} has no owner {bound_s}s after the last "
                    f"fault/heal at t={since:.3f} (first owned: {when})", since)
    rep.violations.sort(key=lambda v: (v.t if v.t is not None else _INF, v.kind))
    return rep
